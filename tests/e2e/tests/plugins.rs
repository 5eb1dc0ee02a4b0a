//! The plugin runtime with real components built from plugins/ and the
//! misbehaving fixture: isolation, deadlines, memory caps, host imports,
//! the compile cache and hot reload.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use artifactapi::plugins::{CallScope, RepoContext, RepoKind, RequestInfo, Services};
use artifactapi_e2e::{
    client, component, eventually, fixtures_dir, get_json, get_status, header, install,
    plugins_dir, Server, Upstream,
};

fn remotes(upstream: &Upstream) -> String {
    format!(
        r#"
remotes:
  fx:
    type: remote
    package: fixture
    base_url: "{up}"
  alpine:
    type: remote
    package: alpine
    base_url: "{up}"
    cache:
      mutable_ttl: 600
  rpm:
    type: remote
    package: rpm
    base_url: "{up}"
  helm:
    type: remote
    package: helm
    base_url: "{up}"
"#,
        up = upstream.url()
    )
}

async fn setup(deadline: Duration) -> (Upstream, Server) {
    let upstream = Upstream::start().await;
    let plugins = plugins_dir();
    let fixtures = fixtures_dir();
    let alpine = component(&plugins, "alpine.wasm");
    let rpm = component(&plugins, "rpm.wasm");
    let fixture = component(&fixtures, "misbehave-1.0.0.wasm");
    let server = Server::start_with(
        &remotes(&upstream),
        &[
            (&alpine, "alpine.wasm"),
            (&rpm, "rpm.wasm"),
            (&fixture, "misbehave.wasm"),
        ],
        deadline,
    )
    .await;
    (upstream, server)
}

async fn plugin_versions(server: &Server) -> Vec<(String, String)> {
    let listing: serde_json::Value = get_json(&server.url("/api/v2/plugins")).await;
    listing["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["active"] == true)
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_string(),
                p["version"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn real_plugins_load_and_classify() {
    let (upstream, server) = setup(Duration::from_secs(5)).await;
    let listing: serde_json::Value = get_json(&server.url("/api/v2/plugins")).await;
    let alpine = listing["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "alpine")
        .unwrap();
    assert_eq!(alpine["package_type"], "alpine");
    assert_eq!(alpine["wit_version"], "0.2.0");
    let fixture = listing["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "misbehave")
        .unwrap();
    assert_eq!(
        fixture["wit_version"], "0.1.0",
        "a component built against the frozen 0.1.0 contract serves beside 0.2.0 ones"
    );
    assert_eq!(fixture["active"], true);
    assert_eq!(alpine["sha256"].as_str().unwrap().len(), 64);
    assert!(alpine["loaded_at"].as_str().unwrap().ends_with('Z'));

    upstream.put("pkg.apk", "apk bytes");
    let apk = server.url("/api/v1/remote/alpine/files/pkg.apk");
    let first = client().get(&apk).send().await.unwrap();
    assert_eq!(header(first.headers(), "x-artifact-plugin"), "alpine@0.1.0");
    assert_eq!(first.text().await.unwrap(), "apk bytes");
    let second = client().get(&apk).send().await.unwrap();
    assert_eq!(header(second.headers(), "x-artifact-source"), "cache");

    let index = server.url("/api/v1/remote/rpm/v1/repodata/repomd.xml");
    let body = client()
        .get(&index)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(body, "content of v1/repodata/repomd.xml");

    let missing = client()
        .get(server.url("/api/v1/remote/helm/index.yaml"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 503);
    let error: serde_json::Value = missing.json().await.unwrap();
    assert!(error["errors"][0]["message"]
        .as_str()
        .unwrap()
        .contains("\"helm\""));
}

#[tokio::test]
async fn traps_timeouts_and_runaway_memory_become_502_and_the_server_keeps_serving() {
    let (_upstream, server) = setup(Duration::from_millis(400)).await;
    for (path, expect) in [
        ("trap/x", "misbehave"),
        ("loop/x", "deadline"),
        ("alloc/x", "misbehave"),
    ] {
        let response = client()
            .get(server.url(&format!("/api/v1/remote/fx/{path}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 502, "{path}");
        let body: serde_json::Value = response.json().await.unwrap();
        let message = body["errors"][0]["message"].as_str().unwrap();
        assert!(message.contains(expect), "{path}: {message}");
        let fine = client()
            .get(server.url("/api/v1/remote/fx/ok/file.txt"))
            .send()
            .await
            .unwrap();
        assert_eq!(fine.status(), 200, "after {path}");
        assert_eq!(fine.text().await.unwrap(), "content of ok/file.txt");
    }
    let refused = client()
        .get(server.url("/api/v1/remote/fx/bad/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        refused.status(),
        400,
        "a typed plugin error keeps its meaning"
    );
}

fn scope(server: &Server, upstream: &Upstream) -> CallScope {
    let app = &server.running.app;
    CallScope {
        plugin: "misbehave".into(),
        repo: "fx".into(),
        services: Some(Services {
            storage: app.storage.clone(),
            http: app.plugin_http.clone(),
            signer: app.signer.clone(),
        }),
        origins: vec![format!("http://127.0.0.1:{}", upstream.addr.port())],
        repos: vec!["fx".into()],
        cap: 1 << 20,
        presigner: None,
    }
}

async fn classify_note(server: &Server, upstream: &Upstream, path: &str, query: &str) -> String {
    let app = &server.running.app;
    let plugin = app.plugins.for_package("fixture").unwrap();
    let repo = RepoContext {
        name: "fx".into(),
        kind: RepoKind::Remote,
        base_url: upstream.url(),
        public_url: "http://proxy.example.org/api/v1/remote/fx".into(),
        settings: "{}".into(),
    };
    let request = RequestInfo {
        method: "GET".into(),
        path: path.into(),
        query: query.into(),
        headers: vec![],
    };
    let classification = app
        .plugins
        .classify(&plugin, scope(server, upstream), repo, request)
        .await
        .unwrap()
        .unwrap();
    classification.content_type.unwrap_or_default()
}

#[tokio::test]
async fn host_imports_are_scoped_to_the_repository() {
    let (upstream, server) = setup(Duration::from_secs(5)).await;
    let other = Upstream::start().await;
    upstream.put("a.txt", "a");
    let allowed = format!("{}/files/a.txt", upstream.url());
    assert_eq!(
        classify_note(&server, &upstream, "probe", &allowed).await,
        "status:200"
    );
    let elsewhere = format!("{}/files/a.txt", other.url());
    assert_eq!(
        classify_note(&server, &upstream, "probe", &elsewhere).await,
        "error:forbidden"
    );
    // Every hop of a redirect is checked like the first.
    let hop = |port: u16| format!("{}/redirect/{port}/files/a.txt", upstream.url());
    assert_eq!(
        classify_note(&server, &upstream, "probe", &hop(upstream.addr.port())).await,
        "status:200"
    );
    assert_eq!(
        classify_note(&server, &upstream, "probe", &hop(other.addr.port())).await,
        "error:forbidden"
    );
    assert_eq!(other.hits("files/a.txt"), 0);

    assert_eq!(
        classify_note(&server, &upstream, "cache/k1", "").await,
        "miss"
    );
    assert_eq!(
        classify_note(&server, &upstream, "cache/k1", "").await,
        "hit:stored"
    );

    let cas = classify_note(&server, &upstream, "cas/", "").await;
    assert!(
        cas.starts_with("cas:sha256:") && cas.ends_with(":11"),
        "{cas}"
    );
}

#[tokio::test]
async fn compiled_components_are_cached_on_disk() {
    let (_upstream, server) = setup(Duration::from_secs(5)).await;
    let cache = server.dir.path().join("data/plugin-cache");
    let compiled: Vec<_> = std::fs::read_dir(&cache)
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "cwasm"))
        .collect();
    assert_eq!(compiled.len(), 3, "one precompiled file per plugin");
    let before: Vec<_> = compiled
        .iter()
        .map(|e| e.metadata().unwrap().modified().unwrap())
        .collect();
    server.running.app.plugins.reload(None).await;
    std::fs::write(server.plugin_dir().join("touch.txt"), "x").unwrap();
    let plugins = artifactapi::plugins::Plugins::new(
        artifactapi::plugins::Runtime::new(&cache, Default::default()).unwrap(),
        &server.plugin_dir(),
    )
    .unwrap();
    plugins.reload(None).await;
    assert!(plugins.for_package("alpine").is_some());
    let after: Vec<_> = compiled
        .iter()
        .map(|e| e.metadata().unwrap().modified().unwrap())
        .collect();
    assert_eq!(before, after, "a second start loads the cached compilation");
}

#[tokio::test]
async fn a_broken_file_is_reported_and_the_old_version_keeps_serving() {
    let (upstream, server) = setup(Duration::from_secs(5)).await;
    upstream.put("x.apk", "x");
    let garbage = server.dir.path().join("garbage.wasm");
    std::fs::write(&garbage, b"\0asm this is not a component").unwrap();
    install(&garbage, &server.plugin_dir(), "alpine.wasm");
    install(&garbage, &server.plugin_dir(), "new.wasm");
    let reported = eventually(Duration::from_secs(10), || async {
        let listing: serde_json::Value = get_json(&server.url("/api/v2/plugins")).await;
        let rows = listing["plugins"].as_array().unwrap().clone();
        let errors = rows.iter().filter(|p| !p["last_error"].is_null()).count();
        errors == 2
    })
    .await;
    assert!(reported, "both broken files are reported");
    let response = client()
        .get(server.url("/api/v1/remote/alpine/files/x.apk"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        header(response.headers(), "x-artifact-plugin"),
        "alpine@0.1.0"
    );
}

// The server runs on a multi-threaded runtime; so does this test, so that a
// plugin call busy for seconds holds one worker, not the whole server.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hot_swap_under_load_fails_no_request_and_in_flight_calls_finish_on_the_old_version() {
    let (_upstream, server) = setup(Duration::from_secs(5)).await;
    assert!(plugin_versions(&server)
        .await
        .contains(&("misbehave".into(), "1.0.0".into())));

    let slow = tokio::spawn({
        let url = server.url("/api/v1/remote/fx/slow/4000/in-flight.txt");
        async move {
            let response = client().get(&url).send().await.unwrap();
            let plugin = header(response.headers(), "x-artifact-plugin");
            (response.status(), plugin, tokio::time::Instant::now())
        }
    });

    let served = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load: Vec<_> = (0..8)
        .map(|worker| {
            let served = served.clone();
            let stop = stop.clone();
            let base = server.url("/api/v1/remote/fx/slow/20");
            tokio::spawn(async move {
                let mut versions = Vec::new();
                let mut n = 0;
                while !stop.load(Ordering::SeqCst) {
                    let url = format!("{base}/w{worker}-{n}.txt");
                    let response = client().get(&url).send().await.unwrap();
                    assert_eq!(response.status(), 200, "{url}");
                    versions.push(header(response.headers(), "x-artifact-plugin"));
                    served.fetch_add(1, Ordering::SeqCst);
                    n += 1;
                }
                versions
            })
        })
        .collect();

    tokio::time::sleep(Duration::from_millis(300)).await;
    let v2 = component(&fixtures_dir(), "misbehave-2.0.0.wasm");
    install(&v2, &server.plugin_dir(), "misbehave.wasm");
    let swapped = eventually(Duration::from_secs(10), || async {
        plugin_versions(&server)
            .await
            .contains(&("misbehave".into(), "2.0.0".into()))
    })
    .await;
    assert!(swapped, "the new version is serving");
    let swapped_at = tokio::time::Instant::now();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);

    let mut all = Vec::new();
    for worker in load {
        all.extend(worker.await.unwrap());
    }
    assert!(all.iter().any(|v| v == "misbehave@1.0.0"));
    assert!(all.iter().any(|v| v == "misbehave@2.0.0"));
    assert_eq!(all.len(), served.load(Ordering::SeqCst));

    let (status, plugin, finished_at) = slow.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        plugin, "misbehave@1.0.0",
        "the call in flight finished on the old version"
    );
    assert!(
        finished_at > swapped_at,
        "the old version served while the new one was active"
    );

    std::fs::remove_file(server.plugin_dir().join("misbehave.wasm")).unwrap();
    let unloaded = eventually(Duration::from_secs(10), || async {
        get_status(&server.url("/api/v1/remote/fx/ok/after-removal.txt")).await == 503
    })
    .await;
    assert!(unloaded, "removing the file unloads the plugin");
}

#[tokio::test]
async fn remotes_yaml_is_reloaded_and_a_bad_edit_is_refused() {
    let (upstream, server) = setup(Duration::from_secs(5)).await;
    let mut text = remotes(&upstream);
    text.push_str("  extra:\n    type: local\n    package: generic\n");
    std::fs::write(server.config_path(), &text).unwrap();
    let added = eventually(Duration::from_secs(10), || async {
        get_status(&server.url("/api/v1/remote/extra/none")).await == 404
            && server.running.app.config.load().repo("extra").is_some()
    })
    .await;
    assert!(added, "the new repository is served");

    let bad = text.replace("package: generic", "package: generic\n    mutable_tll: 5");
    std::fs::write(server.config_path(), bad).unwrap();
    let refused = eventually(Duration::from_secs(10), || async {
        let health: serde_json::Value = get_json(&server.url("/health")).await;
        health["config_error"]
            .as_str()
            .is_some_and(|e| e.contains("mutable_tll"))
    })
    .await;
    assert!(refused, "the error names the unknown field");
    assert!(server.running.app.config.load().repo("extra").is_some());
}

#[tokio::test]
async fn index_documents_are_rewritten_per_client_and_merged_for_virtual_repositories() {
    let first = Upstream::start().await;
    let second = Upstream::start().await;
    let fixture = component(&fixtures_dir(), "misbehave-1.0.0.wasm");
    let remotes = format!(
        "remotes:\n  fx-a:\n    type: remote\n    package: fixture\n    base_url: \"{}\"\n  \
         fx-b:\n    type: remote\n    package: fixture\n    base_url: \"{}\"\n  \
         fx-all:\n    type: virtual\n    package: fixture\n    members: [fx-a, fx-b]\n",
        first.url(),
        second.url()
    );
    let server = Server::start_with(
        &remotes,
        &[(&fixture, "misbehave.wasm")],
        Duration::from_secs(5),
    )
    .await;
    let marker = |repo: &str, host: &str| {
        format!("\n<!-- rewritten by misbehave 1.0.0 for http://{host}/api/v1/remote/{repo} -->")
    };
    let local = server.addr.to_string();

    let direct = client()
        .get(server.url("/api/v1/remote/fx-a/misc/index.txt"))
        .send()
        .await
        .unwrap();
    assert_eq!(header(direct.headers(), "x-artifact-source"), "remote");
    let body = direct.text().await.unwrap();
    assert_eq!(
        body,
        format!("content of misc/index.txt{}", marker("fx-a", &local))
    );

    let proxied = client()
        .get(server.url("/api/v1/remote/fx-a/misc/index.txt"))
        .header("x-forwarded-host", "proxy.example.org")
        .send()
        .await
        .unwrap();
    assert_eq!(header(proxied.headers(), "x-artifact-source"), "cache");
    let body = proxied.text().await.unwrap();
    assert_eq!(
        body,
        format!(
            "content of misc/index.txt{}",
            marker("fx-a", "proxy.example.org")
        ),
        "the cached upstream document is rewritten for each client's URL"
    );

    let merged = client()
        .get(server.url("/api/v1/remote/fx-all/misc/index.txt"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let member = format!("content of misc/index.txt{}", marker("fx-all", &local));
    assert_eq!(merged, format!("{member}\n{member}"));
    assert_eq!(second.hits("misc/index.txt"), 1);

    second.stop();
    let partial = client()
        .get(server.url("/api/v1/remote/fx-all/other/index.txt"))
        .send()
        .await
        .unwrap();
    assert_eq!(partial.status(), 200, "a failing member is left out");
    assert_eq!(
        partial.text().await.unwrap(),
        format!("content of other/index.txt{}", marker("fx-all", &local))
    );

    first.put("big/index.txt", "x".repeat(8192));
    let zipped = client()
        .get(server.url("/api/v1/remote/fx-a/files/big/index.txt"))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(header(zipped.headers(), "content-encoding"), "gzip");
    let mut text = String::new();
    std::io::Read::read_to_string(
        &mut flate2::read::GzDecoder::new(&zipped.bytes().await.unwrap()[..]),
        &mut text,
    )
    .unwrap();
    assert!(text.starts_with(&"x".repeat(8192)), "{}", &text[..40]);
}
