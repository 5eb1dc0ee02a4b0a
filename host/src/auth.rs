//! Who a request comes from and what it may do.
//!
//! Without an `auth:` section in remotes.yaml everything is open. With one,
//! writes need a user whose `write` list names the repository (or `"*"`),
//! and repositories with `anonymous_read: false` need an authenticated user
//! to read. Users authenticate with HTTP Basic credentials on every route,
//! or with a Bearer token from `/v2/token`. A token carries only its subject
//! and expiry, signed with HMAC-SHA256 under a key kept in the metadata
//! database, so a token issued by one replica is accepted by all;
//! permissions are looked up in the configuration serving at each request,
//! so a user removed from it loses access at once.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use axum::extract::{FromRequest as _, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Form, Json};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

use crate::config::{Auth, Config};
use crate::error::AppError;
use crate::server::App;
use crate::storage::Db;
use crate::util::{now_secs, rfc3339_secs};

/// How long a token from `/v2/token` is valid, in seconds.
pub const TOKEN_TTL_SECS: i64 = 300;
/// The `service` the token endpoint serves.
pub const SERVICE: &str = "artifactapi";
/// The challenge answered with a 401 outside the registry's `/v2/` routes.
pub const BASIC_CHALLENGE: &str = "Basic realm=\"artifactapi\"";
/// Length of the token signing key, in bytes.
const KEY_LEN: usize = 32;
/// The name of the token signing key among the shared secrets.
const TOKEN_KEY: &str = "token-signing-key";

type HmacSha256 = Hmac<Sha256>;

/// Who a request comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// No credentials, or an anonymous token.
    Anonymous,
    /// A user of the `auth:` section.
    User(String),
}

/// The query parameters of a presigned link.
const EXPIRES_PARAM: &str = "artifactapi-expires";
const SIGNATURE_PARAM: &str = "artifactapi-signature";

/// Checks credentials and issues and verifies tokens.
pub struct Authenticator {
    /// The signing key, ready to be cloned for each signature.
    mac: HmacSha256,
}

/// What a token says; nothing else is in it.
#[derive(Serialize, Deserialize)]
struct Claims {
    /// The user name; absent for an anonymous token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sub: Option<String>,
    /// Expiry, in seconds since the epoch.
    exp: i64,
}

/// Credentials as sent in `Authorization`.
enum Credentials {
    Basic { user: String, password: String },
    Bearer(String),
}

impl Authenticator {
    /// The token signing key every replica shares, kept in the metadata
    /// database and made at random by the first process that needs it. A
    /// key an earlier version kept in `{data_dir}/auth/token.key` is
    /// adopted, so tokens it issued stay valid.
    pub async fn shared(db: &Db, data_dir: &Path) -> anyhow::Result<Authenticator> {
        let legacy = data_dir.join("auth").join("token.key");
        let fresh = match std::fs::read(&legacy) {
            Ok(key) if key.len() == KEY_LEN => key,
            _ => {
                let mut key = vec![0u8; KEY_LEN];
                getrandom::fill(&mut key)
                    .map_err(|e| anyhow::anyhow!("cannot generate a token key: {e}"))?;
                key
            }
        };
        let key = db
            .secret(TOKEN_KEY, &fresh)
            .await
            .context("cannot read the token signing key")?;
        anyhow::ensure!(
            key.len() == KEY_LEN,
            "the token signing key in the database holds {} bytes instead of {KEY_LEN}",
            key.len()
        );
        Ok(Authenticator::with_key(&key))
    }

    fn with_key(key: &[u8]) -> Authenticator {
        Authenticator {
            mac: HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length"),
        }
    }

    /// Who the request is; Err(AppError 401 UNAUTHORIZED) for bad
    /// credentials or a bad/expired token. Without an `auth:` section
    /// everyone is anonymous and credentials are not looked at.
    pub fn identify(&self, config: &Config, headers: &HeaderMap) -> Result<Principal, AppError> {
        let Some(auth) = &config.auth else {
            return Ok(Principal::Anonymous);
        };
        match credentials(headers)? {
            None => Ok(Principal::Anonymous),
            Some(Credentials::Basic { user, password }) => {
                check_password(auth, &user, &password)?;
                Ok(Principal::User(user))
            }
            Some(Credentials::Bearer(token)) => self.verify(auth, &token, now_secs()),
        }
    }

    /// The query string (`artifactapi-expires=…&artifactapi-signature=…`)
    /// that lets anyone read `path` of repository `repo` until `expires`
    /// (seconds since the epoch) without credentials: links in documents
    /// for clients that send their credentials only to some requests
    /// (terraform fetches archives without its token).
    pub fn presign(&self, repo: &str, path: &str, expires: i64) -> String {
        let signature =
            URL_SAFE_NO_PAD.encode(self.link_mac(repo, path, expires).finalize().into_bytes());
        format!("{EXPIRES_PARAM}={expires}&{SIGNATURE_PARAM}={signature}")
    }

    /// Whether `query` carries a presigned link to `path` of `repo` that
    /// has not expired; the query without those parameters. A query
    /// without them (nearly every request) is handed back as it is.
    pub fn presigned(&self, repo: &str, path: &str, query: String, now: i64) -> (bool, String) {
        if !query.contains(SIGNATURE_PARAM) && !query.contains(EXPIRES_PARAM) {
            return (false, query);
        }
        let mut expires = None;
        let mut signature = None;
        let mut rest = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some((EXPIRES_PARAM, value)) => expires = value.parse::<i64>().ok(),
                Some((SIGNATURE_PARAM, value)) => signature = URL_SAFE_NO_PAD.decode(value).ok(),
                _ => rest.push(pair),
            }
        }
        let valid = match (expires, signature) {
            (Some(expires), Some(signature)) if expires > now => self
                .link_mac(repo, path, expires)
                .verify_slice(&signature)
                .is_ok(),
            _ => false,
        };
        (valid, rest.join("&"))
    }

    fn link_mac(&self, repo: &str, path: &str, expires: i64) -> HmacSha256 {
        let mut mac = self.mac.clone();
        mac.update(format!("presigned link\n{repo}\n{path}\n{expires}").as_bytes());
        mac
    }

    /// A token for `principal` valid until `now + TOKEN_TTL_SECS`.
    fn issue(&self, principal: &Principal, now: i64) -> String {
        let claims = Claims {
            sub: match principal {
                Principal::Anonymous => None,
                Principal::User(name) => Some(name.clone()),
            },
            exp: now + TOKEN_TTL_SECS,
        };
        let payload = URL_SAFE_NO_PAD.encode(json!(claims).to_string());
        let mut mac = self.mac.clone();
        mac.update(payload.as_bytes());
        let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("{payload}.{signature}")
    }

    /// The principal a token names, if its signature holds, it has not
    /// expired and its user still exists.
    fn verify(&self, auth: &Auth, token: &str, now: i64) -> Result<Principal, AppError> {
        let invalid = || {
            tracing::info!("authentication failed: invalid bearer token");
            unauthorized("invalid bearer token")
        };
        let (payload, signature) = token.split_once('.').ok_or_else(invalid)?;
        let signature = URL_SAFE_NO_PAD.decode(signature).map_err(|_| invalid())?;
        let mut mac = self.mac.clone();
        mac.update(payload.as_bytes());
        mac.verify_slice(&signature).map_err(|_| invalid())?;
        let claims: Claims = URL_SAFE_NO_PAD
            .decode(payload)
            .ok()
            .and_then(|json| serde_json::from_slice(&json).ok())
            .ok_or_else(invalid)?;
        if claims.exp <= now {
            return Err(unauthorized("the bearer token has expired; get a new one"));
        }
        match claims.sub {
            None => Ok(Principal::Anonymous),
            Some(user) if auth.users.contains_key(&user) => Ok(Principal::User(user)),
            Some(user) => {
                tracing::info!(user = ?user, "authentication failed: token of a user no longer configured");
                Err(unauthorized(format!("user {user:?} no longer exists")))
            }
        }
    }
}

/// The credentials of `Authorization`, if there are any.
fn credentials(headers: &HeaderMap) -> Result<Option<Credentials>, AppError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .map_err(|_| unauthorized("the Authorization header is not valid text"))?;
    let (scheme, rest) = value.trim().split_once(' ').unwrap_or((value, ""));
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = STANDARD
            .decode(rest)
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .ok_or_else(|| unauthorized("malformed Basic credentials"))?;
        let (user, password) = decoded
            .split_once(':')
            .ok_or_else(|| unauthorized("malformed Basic credentials"))?;
        Ok(Some(Credentials::Basic {
            user: user.to_string(),
            password: password.to_string(),
        }))
    } else if scheme.eq_ignore_ascii_case("bearer") {
        Ok(Some(Credentials::Bearer(rest.to_string())))
    } else {
        Err(unauthorized(format!(
            "unsupported authorization scheme {scheme:?}; use Basic or Bearer"
        )))
    }
}

/// Checks a user's password, comparing sha256 digests in constant time.
fn check_password(auth: &Auth, user: &str, password: &str) -> Result<(), AppError> {
    let presented: [u8; 32] = Sha256::digest(password.as_bytes()).into();
    let (expected, known) = match auth.users.get(user) {
        Some(entry) => (entry.password_sha256, true),
        None => ([0u8; 32], false),
    };
    let matches: bool = presented.ct_eq(&expected).into();
    if matches && known {
        return Ok(());
    }
    let reason = if known {
        "wrong password"
    } else {
        "unknown user"
    };
    tracing::info!(user = ?user, reason, "authentication failed");
    Err(unauthorized("wrong user name or password"))
}

/// 401 UNAUTHORIZED.
pub fn unauthorized(message: impl Into<String>) -> AppError {
    AppError::new(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", message)
}

/// Whether auth is on at all (an `auth:` section exists).
pub fn enabled(config: &Config) -> bool {
    config.auth.is_some()
}

/// Whether the principal is a user the configuration knows.
fn known_user<'a>(config: &'a Config, principal: &Principal) -> Option<&'a crate::config::User> {
    match principal {
        Principal::Anonymous => None,
        Principal::User(name) => config.auth.as_ref()?.users.get(name),
    }
}

/// Whether `principal` may read repository `repo`.
pub fn can_read(config: &Config, principal: &Principal, repo: &str) -> bool {
    !enabled(config)
        || config.repo(repo).is_none_or(|r| r.anonymous_read())
        || known_user(config, principal).is_some()
}

/// Whether `principal` may write repository `repo`; `"*"` asks for every
/// repository at once (a flush of them all).
pub fn can_write(config: &Config, principal: &Principal, repo: &str) -> bool {
    !enabled(config) || known_user(config, principal).is_some_and(|user| user.may_write(repo))
}

/// `can_read` as an error: 401 for the anonymous, 403 DENIED for a user.
pub fn require_read(config: &Config, principal: &Principal, repo: &str) -> Result<(), AppError> {
    if can_read(config, principal, repo) {
        return Ok(());
    }
    Err(refusal(principal, "read", repo))
}

/// `can_write` as an error: 401 for the anonymous, 403 DENIED for a user.
pub fn require_write(config: &Config, principal: &Principal, repo: &str) -> Result<(), AppError> {
    if can_write(config, principal, repo) {
        return Ok(());
    }
    Err(refusal(principal, "write", repo))
}

fn refusal(principal: &Principal, action: &str, repo: &str) -> AppError {
    let what = match repo {
        "*" => "every repository".to_string(),
        name => format!("repository {name}"),
    };
    match principal {
        Principal::Anonymous => unauthorized(format!("credentials are needed to {action} {what}")),
        Principal::User(user) => AppError::new(
            StatusCode::FORBIDDEN,
            "DENIED",
            format!("user {user} may not {action} {what}"),
        ),
    }
}

/// `Bearer realm="{public_base}/v2/token",service="artifactapi"` plus
/// `,scope="{scope}"` when given.
pub fn bearer_challenge(public_base: &str, scope: Option<&str>) -> String {
    let mut challenge = format!(
        "Bearer realm=\"{}/v2/token\",service=\"{SERVICE}\"",
        public_base.trim_end_matches('/')
    );
    if let Some(scope) = scope {
        challenge.push_str(&format!(",scope=\"{scope}\""));
    }
    challenge
}

/// Middleware: a 401 outside the registry's `/v2` routes gets
/// `WWW-Authenticate: Basic realm="artifactapi"`, so clients send Basic
/// credentials.
pub async fn basic_challenge(request: Request, next: Next) -> Response {
    let path = request.uri().path();
    let registry = path == "/v2" || path.starts_with("/v2/");
    let mut response = next.run(request).await;
    if !registry
        && response.status() == StatusCode::UNAUTHORIZED
        && !response.headers().contains_key(header::WWW_AUTHENTICATE)
    {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(BASIC_CHALLENGE),
        );
    }
    response
}

/// Form body of `POST /v2/token` (OAuth2).
#[derive(Deserialize)]
struct TokenForm {
    grant_type: String,
    username: Option<String>,
    password: Option<String>,
    scope: Option<String>,
}

/// The axum handler for GET and POST /v2/token.
pub async fn token(State(app): State<Arc<App>>, request: Request) -> Response {
    let outcome = match request.method().clone() {
        Method::GET => token_get(&app, request),
        Method::POST => token_post(&app, request).await,
        method => Err(AppError::method_not_allowed(
            "GET, POST",
            format!("{method} is not allowed here; use GET or POST"),
        )),
    };
    let mut response = match outcome {
        Ok(response) => response,
        Err(e) => {
            let challenge = e.status == StatusCode::UNAUTHORIZED;
            let mut response = e.into_response();
            if challenge {
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(BASIC_CHALLENGE),
                );
            }
            response
        }
    };
    response.headers_mut().insert(
        "docker-distribution-api-version",
        HeaderValue::from_static("registry/2.0"),
    );
    response
}

/// `GET /v2/token?service=..&scope=..`: a token for the Basic credentials
/// sent, or an anonymous one without them.
fn token_get(app: &App, request: Request) -> Result<Response, AppError> {
    // Clients repeat `scope` when one operation spans repositories (a
    // cross-repository mount asks for push on one and pull on another).
    let scopes: Vec<String> =
        form_urlencoded::parse(request.uri().query().unwrap_or("").as_bytes())
            .filter(|(key, _)| key == "scope")
            .map(|(_, value)| value.into_owned())
            .collect();
    let config = app.config.load();
    let principal = match (&config.auth, credentials(request.headers())?) {
        (Some(auth), Some(Credentials::Basic { user, password })) => {
            check_password(auth, &user, &password)?;
            Principal::User(user)
        }
        (Some(_), Some(Credentials::Bearer(_))) => {
            return Err(unauthorized(
                "the token endpoint takes Basic credentials, not a token",
            ))
        }
        _ => Principal::Anonymous,
    };
    let now = now_secs();
    let token = app.auth.issue(&principal, now);
    tracing::debug!(principal = ?principal, scope = ?scopes, "token issued");
    Ok(token_response(json!({
        "token": token,
        "access_token": token,
        "expires_in": TOKEN_TTL_SECS,
        "issued_at": rfc3339_secs(now),
    })))
}

/// `POST /v2/token` with an OAuth2 password grant.
async fn token_post(app: &App, request: Request) -> Result<Response, AppError> {
    let Form(form) = Form::<TokenForm>::from_request(request, &())
        .await
        .map_err(|e| AppError::bad_request(e.body_text()))?;
    if form.grant_type != "password" {
        return Err(AppError::new(
            StatusCode::BAD_REQUEST,
            "UNSUPPORTED_GRANT_TYPE",
            format!(
                "grant_type {:?} is not supported; use password (no refresh tokens are issued)",
                form.grant_type
            ),
        ));
    }
    let (Some(user), Some(password)) = (form.username, form.password) else {
        return Err(AppError::bad_request(
            "the password grant needs username and password",
        ));
    };
    let config = app.config.load();
    let principal = match &config.auth {
        Some(auth) => {
            check_password(auth, &user, &password)?;
            Principal::User(user)
        }
        None => Principal::Anonymous,
    };
    let now = now_secs();
    let token = app.auth.issue(&principal, now);
    Ok(token_response(json!({
        "access_token": token,
        "expires_in": TOKEN_TTL_SECS,
        "scope": form.scope.unwrap_or_default(),
        "issued_at": rfc3339_secs(now),
    })))
}

fn token_response(body: serde_json::Value) -> Response {
    (
        [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
        Json(body),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presigned_links_open_one_path_until_they_expire() {
        let auth = Authenticator::with_key(&[7u8; KEY_LEN]);
        let query = auth.presign("tf", "tf/w/x.zip", 1_000);
        assert_eq!(
            auth.presigned("tf", "tf/w/x.zip", format!("a=1&{query}"), 999),
            (true, "a=1".to_string())
        );
        assert!(
            !auth.presigned("tf", "tf/w/x.zip", query.clone(), 1_000).0,
            "expired"
        );
        assert!(
            !auth.presigned("tf", "tf/w/y.zip", query.clone(), 999).0,
            "another path"
        );
        assert!(
            !auth.presigned("other", "tf/w/x.zip", query.clone(), 999).0,
            "another repository"
        );
        let later = query.replace("1000", "2000");
        assert!(
            !auth.presigned("tf", "tf/w/x.zip", later, 999).0,
            "a changed expiry"
        );
        assert_eq!(
            auth.presigned("tf", "p", "a=1".into(), 0),
            (false, "a=1".to_string())
        );
    }

    fn config(extra_user: &str) -> Config {
        std::env::set_var("ARTIFACTAPI_TEST_AUTH_CI", "ci-password");
        std::env::set_var("ARTIFACTAPI_TEST_AUTH_ADMIN", "admin:password");
        let text = format!(
            "auth:\n  users:\n    ci:\n      password_env: ARTIFACTAPI_TEST_AUTH_CI\n      write: [up]\n{extra_user}remotes:\n  up:\n    type: local\n    package: generic\n  private:\n    type: local\n    package: generic\n    anonymous_read: false\n"
        );
        Config::parse(&text, "test").unwrap()
    }

    fn with_admin() -> Config {
        config(
            "    admin:\n      password_env: ARTIFACTAPI_TEST_AUTH_ADMIN\n      write: [\"*\"]\n",
        )
    }

    fn open() -> Config {
        Config::parse(
            "remotes:\n  up:\n    type: local\n    package: generic\n    anonymous_read: false\n",
            "test",
        )
        .unwrap()
    }

    fn auth(config: &Config) -> &Auth {
        config.auth.as_ref().unwrap()
    }

    fn headers(authorization: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, authorization.parse().unwrap());
        headers
    }

    fn basic(user: &str, password: &str) -> HeaderMap {
        headers(&format!(
            "Basic {}",
            STANDARD.encode(format!("{user}:{password}"))
        ))
    }

    fn user(name: &str) -> Principal {
        Principal::User(name.to_string())
    }

    #[test]
    fn tokens_round_trip() {
        let config = with_admin();
        let authenticator = Authenticator::with_key(&[7; KEY_LEN]);
        let now = now_secs();
        for principal in [Principal::Anonymous, user("ci"), user("admin")] {
            let token = authenticator.issue(&principal, now);
            assert_eq!(
                authenticator.verify(auth(&config), &token, now).unwrap(),
                principal
            );
            let sent = headers(&format!("Bearer {token}"));
            assert_eq!(authenticator.identify(&config, &sent).unwrap(), principal);
        }
    }

    #[test]
    fn tokens_expire() {
        let config = with_admin();
        let authenticator = Authenticator::with_key(&[7; KEY_LEN]);
        let token = authenticator.issue(&user("ci"), 1_000);
        assert!(authenticator
            .verify(auth(&config), &token, 1_000 + TOKEN_TTL_SECS - 1)
            .is_ok());
        let err = authenticator
            .verify(auth(&config), &token, 1_000 + TOKEN_TTL_SECS)
            .unwrap_err();
        assert_eq!(err.status, StatusCode::UNAUTHORIZED);
        assert!(err.message.contains("expired"), "{}", err.message);
    }

    #[test]
    fn tampered_tokens_are_refused() {
        let config = with_admin();
        let authenticator = Authenticator::with_key(&[7; KEY_LEN]);
        let now = now_secs();
        let token = authenticator.issue(&user("ci"), now);
        let (_, signature) = token.split_once('.').unwrap();
        let forged_claims = URL_SAFE_NO_PAD.encode(
            json!(Claims {
                sub: Some("admin".into()),
                exp: now + 1_000_000,
            })
            .to_string(),
        );
        let mut flipped = token.clone().into_bytes();
        let inside = token.find('.').unwrap() + 5;
        flipped[inside] = if flipped[inside] == b'A' { b'B' } else { b'A' };
        let other_key = Authenticator::with_key(&[8; KEY_LEN]).issue(&user("ci"), now);
        for bad in [
            format!("{forged_claims}.{signature}"),
            String::from_utf8(flipped).unwrap(),
            other_key,
            "garbage".to_string(),
            String::new(),
            ".".to_string(),
        ] {
            let err = authenticator.verify(auth(&config), &bad, now).unwrap_err();
            assert_eq!(err.status, StatusCode::UNAUTHORIZED, "{bad}");
            assert_eq!(err.code, "UNAUTHORIZED");
        }
    }

    #[test]
    fn tokens_of_removed_users_are_refused() {
        let authenticator = Authenticator::with_key(&[7; KEY_LEN]);
        let now = now_secs();
        let token = authenticator.issue(&user("admin"), now);
        assert!(authenticator
            .verify(auth(&with_admin()), &token, now)
            .is_ok());
        let without_admin = config("");
        let err = authenticator
            .verify(auth(&without_admin), &token, now)
            .unwrap_err();
        assert_eq!(err.status, StatusCode::UNAUTHORIZED);
        let ghost = authenticator.issue(&user("ghost"), now);
        assert!(authenticator
            .verify(auth(&with_admin()), &ghost, now)
            .is_err());
    }

    #[test]
    fn passwords_are_checked() {
        let config = with_admin();
        let authenticator = Authenticator::with_key(&[7; KEY_LEN]);
        let id = |h: HeaderMap| authenticator.identify(&config, &h);
        assert_eq!(id(basic("ci", "ci-password")).unwrap(), user("ci"));
        assert_eq!(id(basic("admin", "admin:password")).unwrap(), user("admin"));
        let lower = headers(&format!("basic {}", STANDARD.encode("ci:ci-password")));
        assert_eq!(id(lower).unwrap(), user("ci"));
        assert_eq!(id(HeaderMap::new()).unwrap(), Principal::Anonymous);
        for bad in [
            basic("ci", "wrong"),
            basic("ci", ""),
            basic("ci", "ci-password "),
            basic("ghost", "ci-password"),
            basic("admin", "ci-password"),
            headers("Basic !!!"),
            headers(&format!("Basic {}", STANDARD.encode("no-colon"))),
            headers("Digest username=ci"),
        ] {
            let err = id(bad).unwrap_err();
            assert_eq!(err.status, StatusCode::UNAUTHORIZED);
            assert!(!err.message.contains("ci-password"), "{}", err.message);
        }
    }

    #[test]
    fn password_digests_are_compared_with_ct_eq() {
        let config = with_admin();
        let auth = auth(&config);
        assert!(check_password(auth, "ci", "ci-password").is_ok());
        let ci = &auth.users["ci"];
        let same: [u8; 32] = Sha256::digest(b"ci-password").into();
        let mut near = same;
        near[31] ^= 1;
        assert!(bool::from(same.ct_eq(&ci.password_sha256)));
        assert!(!bool::from(near.ct_eq(&ci.password_sha256)));
        assert!(check_password(auth, "ci", "ci-passwore").is_err());
    }

    #[test]
    fn open_configurations_allow_everything() {
        let config = open();
        assert!(!enabled(&config));
        let authenticator = Authenticator::with_key(&[7; KEY_LEN]);
        let anyone = authenticator
            .identify(&config, &basic("nobody", "nothing"))
            .unwrap();
        assert_eq!(anyone, Principal::Anonymous);
        assert!(can_read(&config, &anyone, "up"));
        assert!(can_write(&config, &anyone, "up"));
        assert!(can_write(&config, &anyone, "*"));
    }

    #[test]
    fn permissions_follow_the_configuration() {
        let config = with_admin();
        assert!(enabled(&config));
        let anonymous = Principal::Anonymous;
        assert!(can_read(&config, &anonymous, "up"));
        assert!(!can_read(&config, &anonymous, "private"));
        assert!(can_read(&config, &user("ci"), "private"));
        assert!(!can_write(&config, &anonymous, "up"));
        assert!(can_write(&config, &user("ci"), "up"));
        assert!(!can_write(&config, &user("ci"), "private"));
        assert!(!can_write(&config, &user("ci"), "*"));
        assert!(can_write(&config, &user("admin"), "private"));
        assert!(can_write(&config, &user("admin"), "*"));
        assert!(!can_write(&config, &user("ghost"), "up"));
        assert!(!can_read(&config, &user("ghost"), "private"));
        let err = require_write(&config, &anonymous, "up").unwrap_err();
        assert_eq!(
            (err.status, err.code),
            (StatusCode::UNAUTHORIZED, "UNAUTHORIZED")
        );
        let err = require_write(&config, &user("ci"), "private").unwrap_err();
        assert_eq!((err.status, err.code), (StatusCode::FORBIDDEN, "DENIED"));
        assert!(require_read(&config, &user("ci"), "private").is_ok());
    }

    #[test]
    fn challenges() {
        assert_eq!(
            bearer_challenge("https://artifacts.example.com/", None),
            "Bearer realm=\"https://artifacts.example.com/v2/token\",service=\"artifactapi\""
        );
        assert_eq!(
            bearer_challenge(
                "http://127.0.0.1:8000",
                Some("repository:docker-local/img:pull,push")
            ),
            "Bearer realm=\"http://127.0.0.1:8000/v2/token\",service=\"artifactapi\",scope=\"repository:docker-local/img:pull,push\""
        );
    }

    #[tokio::test]
    async fn the_key_is_made_once_and_shared() {
        let dir = tempfile::tempdir().unwrap();
        let storage = crate::storage::Storage::embedded(dir.path()).await.unwrap();
        let first = Authenticator::shared(&storage.db, dir.path())
            .await
            .unwrap();
        let second = Authenticator::shared(&storage.db, dir.path())
            .await
            .unwrap();
        let config = with_admin();
        let now = now_secs();
        let token = first.issue(&user("ci"), now);
        assert_eq!(
            second.verify(auth(&config), &token, now).unwrap(),
            user("ci")
        );
    }

    #[tokio::test]
    async fn an_earlier_key_file_is_adopted() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("auth")).unwrap();
        let key = [7u8; KEY_LEN];
        std::fs::write(dir.path().join("auth/token.key"), key).unwrap();
        let storage = crate::storage::Storage::embedded(dir.path()).await.unwrap();
        let adopted = Authenticator::shared(&storage.db, dir.path())
            .await
            .unwrap();
        let now = now_secs();
        let token = Authenticator::with_key(&key).issue(&user("ci"), now);
        assert_eq!(
            adopted.verify(auth(&with_admin()), &token, now).unwrap(),
            user("ci")
        );
    }
}
