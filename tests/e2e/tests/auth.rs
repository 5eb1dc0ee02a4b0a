//! Write access control end to end: the `auth:` section, Basic credentials,
//! Bearer tokens from `/v2/token`, private repositories, and hot reloads
//! that change who may do what.

use artifactapi::config::Config;
use artifactapi_e2e::{client, eventually, get_json, header, Server, Upstream};
use reqwest::{Method, RequestBuilder, Response};
use serde_json::Value;
use std::time::Duration;

/// A configuration with users `ci` (writes `uploads` and `files`), `reader`
/// (writes nothing) and `admin` (writes everything), whose passwords are in
/// environment variables named after `prefix`.
fn secured(prefix: &str, upstream: &Upstream) -> String {
    std::env::set_var(format!("{prefix}_CI"), "ci-secret");
    std::env::set_var(format!("{prefix}_READER"), "reader-secret");
    std::env::set_var(format!("{prefix}_ADMIN"), "admin-secret");
    format!(
        r#"
auth:
  users:
    ci:
      password_env: {prefix}_CI
      write: [uploads, files]
    reader:
      password_env: {prefix}_READER
    admin:
      password_env: {prefix}_ADMIN
      write: ["*"]
remotes:
  uploads:
    type: local
    package: generic
  other:
    type: local
    package: generic
  private:
    type: local
    package: generic
    anonymous_read: false
  files:
    type: remote
    package: generic
    base_url: "{}"
  hidden-view:
    type: virtual
    package: generic
    anonymous_read: false
    members: [uploads]
  public-view:
    type: virtual
    package: generic
    members: [private]
"#,
        upstream.url()
    )
}

async fn setup(prefix: &str) -> (Upstream, Server) {
    let upstream = Upstream::start().await;
    let server = Server::start(&secured(prefix, &upstream)).await;
    (upstream, server)
}

fn request(server: &Server, method: Method, path: &str) -> RequestBuilder {
    client().request(method, server.url(path))
}

async fn send(builder: RequestBuilder) -> (u16, Response) {
    let response = builder.send().await.unwrap();
    (response.status().as_u16(), response)
}

/// The status and the error code of the JSON error body ("" when none).
async fn outcome(builder: RequestBuilder) -> (u16, String) {
    let (status, response) = send(builder).await;
    let body: Value = response.json().await.unwrap_or(Value::Null);
    let code = body["errors"][0]["code"].as_str().unwrap_or("").to_string();
    (status, code)
}

async fn put_as(server: &Server, path: &str, user: Option<(&str, &str)>) -> (u16, String) {
    let mut builder = request(server, Method::PUT, path).body("payload");
    if let Some((name, password)) = user {
        builder = builder.basic_auth(name, Some(password));
    }
    outcome(builder).await
}

async fn token(server: &Server, user: Option<(&str, &str)>) -> (u16, Value) {
    let mut builder = request(
        server,
        Method::GET,
        "/v2/token?service=artifactapi&scope=repository:uploads/img:pull,push",
    );
    if let Some((name, password)) = user {
        builder = builder.basic_auth(name, Some(password));
    }
    let (status, response) = send(builder).await;
    (status, response.json().await.unwrap_or(Value::Null))
}

const CI: Option<(&str, &str)> = Some(("ci", "ci-secret"));
const READER: Option<(&str, &str)> = Some(("reader", "reader-secret"));
const ADMIN: Option<(&str, &str)> = Some(("admin", "admin-secret"));

#[tokio::test]
async fn without_an_auth_section_everything_is_open() {
    let upstream = Upstream::start().await;
    let server = Server::start(&format!(
        "remotes:\n  uploads:\n    type: local\n    package: generic\n    anonymous_read: false\n  \
         files:\n    type: remote\n    package: generic\n    base_url: \"{}\"\n",
        upstream.url()
    ))
    .await;
    assert_eq!(
        put_as(&server, "/api/v1/remote/uploads/a.txt", None)
            .await
            .0,
        201
    );
    assert_eq!(
        put_as(
            &server,
            "/api/v1/remote/uploads/b.txt",
            Some(("nobody", "x"))
        )
        .await
        .0,
        201
    );
    let (status, _) = send(request(
        &server,
        Method::GET,
        "/api/v1/remote/uploads/a.txt",
    ))
    .await;
    assert_eq!(status, 200);
    let (status, _) = outcome(request(&server, Method::PUT, "/cache/flush")).await;
    assert_eq!(status, 200);
    let (status, _) = outcome(request(
        &server,
        Method::DELETE,
        "/api/v1/remote/uploads/a.txt",
    ))
    .await;
    assert_eq!(status, 204);
    let (status, body) = token(&server, None).await;
    assert_eq!(status, 200);
    assert!(body["token"].is_string(), "{body}");
}

#[tokio::test]
async fn writes_need_a_user_allowed_to_write_the_repository() {
    let (_upstream, server) = setup("ARTIFACTAPI_E2E_AUTH_WRITES").await;
    let path = "/api/v1/remote/uploads/team/tool.tar.gz";

    let (status, response) = send(request(&server, Method::PUT, path).body("payload")).await;
    assert_eq!(status, 401);
    assert_eq!(
        header(response.headers(), "www-authenticate"),
        "Basic realm=\"artifactapi\""
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "UNAUTHORIZED", "{body}");
    assert_eq!(body["errors"][0]["status"], 401, "{body}");

    assert_eq!(
        put_as(&server, path, Some(("ci", "wrong"))).await,
        (401, "UNAUTHORIZED".into())
    );
    assert_eq!(
        put_as(&server, path, Some(("ghost", "ci-secret"))).await,
        (401, "UNAUTHORIZED".into())
    );
    assert_eq!(put_as(&server, path, CI).await.0, 201);
    assert_eq!(
        put_as(&server, "/api/v1/remote/other/x", CI).await,
        (403, "DENIED".into())
    );
    assert_eq!(put_as(&server, path, READER).await, (403, "DENIED".into()));
    assert_eq!(
        put_as(&server, "/api/v1/remote/other/x", ADMIN).await.0,
        201
    );

    let (status, response) = send(request(&server, Method::GET, path)).await;
    assert_eq!(status, 200, "anonymous reads stay open");
    assert_eq!(response.text().await.unwrap(), "payload");
    let (status, _) =
        send(request(&server, Method::GET, path).basic_auth("ci", Some("wrong"))).await;
    assert_eq!(status, 401, "wrong credentials are refused even for reads");

    let delete = || request(&server, Method::DELETE, path);
    assert_eq!(outcome(delete()).await, (401, "UNAUTHORIZED".into()));
    let as_reader = delete().basic_auth("reader", Some("reader-secret"));
    assert_eq!(outcome(as_reader).await, (403, "DENIED".into()));
    assert_eq!(
        outcome(delete().basic_auth("ci", Some("ci-secret")))
            .await
            .0,
        204
    );

    let shown = get_json(&server.url("/config")).await.to_string();
    assert!(shown.contains("ARTIFACTAPI_E2E_AUTH_WRITES_CI"), "{shown}");
    assert!(!shown.contains("ci-secret"), "{shown}");
}

#[tokio::test]
async fn private_repositories_need_a_user_to_read() {
    let (_upstream, server) = setup("ARTIFACTAPI_E2E_AUTH_PRIVATE").await;
    assert_eq!(
        put_as(&server, "/api/v1/remote/private/secret.txt", ADMIN)
            .await
            .0,
        201
    );
    assert_eq!(
        put_as(&server, "/api/v1/remote/uploads/open.txt", CI)
            .await
            .0,
        201
    );
    let get = |path: &str| request(&server, Method::GET, path);

    let (status, response) = send(get("/api/v1/remote/private/secret.txt")).await;
    assert_eq!(status, 401);
    assert_eq!(
        header(response.headers(), "www-authenticate"),
        "Basic realm=\"artifactapi\""
    );
    let (status, response) =
        send(get("/api/v1/remote/private/secret.txt").basic_auth("reader", Some("reader-secret")))
            .await;
    assert_eq!(status, 200, "any user may read");
    assert_eq!(response.text().await.unwrap(), "payload");
    let (status, _) =
        send(get("/api/v1/remote/private/secret.txt").basic_auth("reader", Some("nope"))).await;
    assert_eq!(status, 401);

    let (status, _) = send(get("/api/v2/remotes/private/objects")).await;
    assert_eq!(status, 401, "listing a private repository is reading it");
    let (status, _) =
        send(get("/api/v2/remotes/private/objects").basic_auth("reader", Some("reader-secret")))
            .await;
    assert_eq!(status, 200);

    // A virtual repository is governed by its own setting, not its members'.
    assert_eq!(send(get("/api/v1/remote/uploads/open.txt")).await.0, 200);
    assert_eq!(
        send(get("/api/v1/remote/hidden-view/open.txt")).await.0,
        401
    );
    assert_eq!(
        send(get("/api/v1/remote/hidden-view/open.txt").basic_auth("ci", Some("ci-secret")))
            .await
            .0,
        200
    );
    assert_eq!(
        send(get("/api/v1/remote/public-view/secret.txt")).await.0,
        200
    );
}

#[tokio::test]
async fn tokens_are_issued_and_accepted_as_bearer_credentials() {
    let (_upstream, server) = setup("ARTIFACTAPI_E2E_AUTH_TOKENS").await;
    let path = "/api/v1/remote/uploads/by-token.txt";

    let (status, anonymous) = token(&server, None).await;
    assert_eq!(status, 200, "anonymous clients get an anonymous token");
    assert_eq!(anonymous["token"], anonymous["access_token"]);
    assert_eq!(anonymous["expires_in"], 300);
    assert!(anonymous["issued_at"].as_str().unwrap().ends_with('Z'));
    let anonymous = anonymous["token"].as_str().unwrap().to_string();
    let (status, code) = outcome(
        request(&server, Method::PUT, path)
            .bearer_auth(&anonymous)
            .body("x"),
    )
    .await;
    assert_eq!((status, code.as_str()), (401, "UNAUTHORIZED"));
    let (status, _) =
        send(request(&server, Method::GET, "/api/v1/remote/private/none").bearer_auth(&anonymous))
            .await;
    assert_eq!(
        status, 401,
        "an anonymous token reads only public repositories"
    );

    let (status, response) = send(
        request(&server, Method::GET, "/v2/token?service=artifactapi")
            .basic_auth("ci", Some("wrong")),
    )
    .await;
    assert_eq!(status, 401);
    assert!(header(response.headers(), "www-authenticate").starts_with("Basic "));

    let (status, issued) = token(&server, CI).await;
    assert_eq!(status, 200);
    let ci_token = issued["token"].as_str().unwrap().to_string();
    let (status, _) = outcome(
        request(&server, Method::PUT, path)
            .bearer_auth(&ci_token)
            .body("x"),
    )
    .await;
    assert_eq!(status, 201, "a user's token writes what the user may write");
    let (status, code) = outcome(
        request(&server, Method::PUT, "/api/v1/remote/other/x")
            .bearer_auth(&ci_token)
            .body("x"),
    )
    .await;
    assert_eq!((status, code.as_str()), (403, "DENIED"));
    let mut forged = ci_token.clone();
    forged.insert(3, 'x');
    let (status, _) = outcome(
        request(&server, Method::PUT, path)
            .bearer_auth(&forged)
            .body("x"),
    )
    .await;
    assert_eq!(status, 401);

    let form = |body: &str| {
        request(&server, Method::POST, "/v2/token")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body.to_string())
    };
    let (status, response) = send(form(
        "grant_type=password&username=admin&password=admin-secret&service=artifactapi&scope=repository%3Aother%2Fimg%3Apush&client_id=test",
    ))
    .await;
    assert_eq!(status, 200);
    let oauth: Value = response.json().await.unwrap();
    assert_eq!(oauth["expires_in"], 300);
    assert_eq!(oauth["scope"], "repository:other/img:push");
    assert!(oauth["issued_at"].is_string());
    let admin_token = oauth["access_token"].as_str().unwrap();
    let (status, _) = outcome(
        request(&server, Method::PUT, "/api/v1/remote/other/x")
            .bearer_auth(admin_token)
            .body("x"),
    )
    .await;
    assert_eq!(status, 201);
    let (status, _) = send(form(
        "grant_type=password&username=admin&password=wrong&service=artifactapi",
    ))
    .await;
    assert_eq!(status, 401);
    let (status, code) = outcome(form("grant_type=refresh_token&refresh_token=abc")).await;
    assert_eq!((status, code.as_str()), (400, "UNSUPPORTED_GRANT_TYPE"));

    let (status, response) = send(request(&server, Method::DELETE, "/v2/token")).await;
    assert_eq!(status, 405);
    assert_eq!(header(response.headers(), "allow"), "GET, POST");
}

#[tokio::test]
async fn flush_and_eviction_need_write_permission() {
    let (upstream, server) = setup("ARTIFACTAPI_E2E_AUTH_FLUSH").await;
    upstream.put("tool.bin", vec![5u8; 100]);
    let (status, _) = send(request(
        &server,
        Method::GET,
        "/api/v1/remote/files/files/tool.bin",
    ))
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        put_as(&server, "/api/v1/remote/other/o.txt", ADMIN).await.0,
        201
    );

    let flush = |query: &str| request(&server, Method::PUT, &format!("/cache/flush{query}"));
    let (status, response) = send(flush("?repo=files")).await;
    assert_eq!(status, 401);
    assert_eq!(
        header(response.headers(), "www-authenticate"),
        "Basic realm=\"artifactapi\""
    );
    assert_eq!(
        outcome(flush("?repo=other").basic_auth("ci", Some("ci-secret"))).await,
        (403, "DENIED".into())
    );
    assert_eq!(
        outcome(flush("").basic_auth("ci", Some("ci-secret"))).await,
        (403, "DENIED".into()),
        "flushing every repository needs \"*\""
    );
    let (status, response) = send(flush("?repo=files").basic_auth("ci", Some("ci-secret"))).await;
    assert_eq!(status, 200);
    let flushed: Value = response.json().await.unwrap();
    assert_eq!(flushed["flushed"], 1);
    assert_eq!(
        outcome(flush("").basic_auth("admin", Some("admin-secret")))
            .await
            .0,
        200
    );

    let evict = |repo: &str| {
        request(
            &server,
            Method::DELETE,
            &format!("/api/v2/remotes/{repo}/objects?pattern=."),
        )
    };
    assert_eq!(outcome(evict("other")).await, (401, "UNAUTHORIZED".into()));
    assert_eq!(
        outcome(evict("other").basic_auth("ci", Some("ci-secret"))).await,
        (403, "DENIED".into())
    );
    let (status, response) = send(evict("other").basic_auth("admin", Some("admin-secret"))).await;
    assert_eq!(status, 200);
    let evicted: Value = response.json().await.unwrap();
    assert_eq!(evicted["evicted"], 1);
}

#[tokio::test]
async fn a_reload_that_removes_a_user_refuses_their_token() {
    let (upstream, server) = setup("ARTIFACTAPI_E2E_AUTH_RELOAD").await;
    let (_, issued) = token(&server, CI).await;
    let ci_token = issued["token"].as_str().unwrap().to_string();
    let put = || {
        request(&server, Method::PUT, "/api/v1/remote/uploads/r.txt")
            .bearer_auth(&ci_token)
            .body("x")
    };
    assert_eq!(outcome(put()).await.0, 201);

    let text = secured("ARTIFACTAPI_E2E_AUTH_RELOAD", &upstream).replace(
        "    ci:\n      password_env: ARTIFACTAPI_E2E_AUTH_RELOAD_CI\n      write: [uploads, files]\n",
        "",
    );
    std::fs::write(server.config_path(), &text).unwrap();
    server.running.app.reload_config().await.unwrap();
    let config = server.running.app.config.load();
    assert!(!config.auth.as_ref().unwrap().users.contains_key("ci"));
    assert_eq!(outcome(put()).await, (401, "UNAUTHORIZED".into()));
    assert_eq!(
        put_as(&server, "/api/v1/remote/uploads/r.txt", CI).await,
        (401, "UNAUTHORIZED".into())
    );
}

#[tokio::test]
async fn an_unset_password_variable_refuses_the_configuration() {
    let (upstream, server) = setup("ARTIFACTAPI_E2E_AUTH_UNSET").await;
    let unset = "ARTIFACTAPI_E2E_AUTH_UNSET_NEVER_SET";
    std::env::remove_var(unset);
    let text = secured("ARTIFACTAPI_E2E_AUTH_UNSET", &upstream).replace(
        "password_env: ARTIFACTAPI_E2E_AUTH_UNSET_READER",
        &format!("password_env: {unset}"),
    );
    let err = Config::parse(&text, "remotes.yaml")
        .unwrap_err()
        .to_string();
    assert!(err.contains("auth.users.reader.password_env"), "{err}");
    assert!(err.contains(unset), "{err}");

    std::fs::write(server.config_path(), &text).unwrap();
    let refused = eventually(Duration::from_secs(10), || async {
        let health = get_json(&server.url("/health")).await;
        health["config_error"]
            .as_str()
            .is_some_and(|e| e.contains("auth.users.reader.password_env"))
    })
    .await;
    assert!(refused, "the reload is refused naming the field");
    assert_eq!(
        put_as(&server, "/api/v1/remote/uploads/still.txt", READER).await,
        (403, "DENIED".into()),
        "the previous configuration keeps serving"
    );
    assert_eq!(
        put_as(&server, "/api/v1/remote/uploads/still.txt", CI)
            .await
            .0,
        201
    );
}
