//! Authentication against upstreams: HTTP Basic credentials, and the Bearer
//! token flow of container registries.
//!
//! A registry answers a request without a token with `401` and a challenge
//! such as `WWW-Authenticate: Bearer realm="https://auth.example.org/token",
//! service="registry.example.org",scope="repository:library/nginx:pull"`.
//! [`UpstreamAuth::send`] then asks the realm (the token service) for a token,
//! with the repository's credentials as HTTP Basic when it has any, and sends
//! the request again with `Authorization: Bearer <token>`. Challenges are
//! remembered per scope key and tokens are cached until shortly before they
//! expire, so later requests go out with a token straight away.
//!
//! Passwords and tokens are never logged, and a password never goes in clear
//! text to a token service on another host.

use std::error::Error as _;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, WWW_AUTHENTICATE};
use reqwest::{Method, Response, StatusCode, Url};
use serde::Deserialize;

/// Most scope keys whose challenge is remembered.
const MAX_CHALLENGES: u64 = 10_000;
/// A remembered challenge unused for this long is forgotten.
const CHALLENGE_IDLE: Duration = Duration::from_secs(24 * 3600);
/// Most tokens cached.
const MAX_TOKENS: u64 = 10_000;
/// A cached token is dropped this long before it expires.
const EXPIRY_MARGIN: Duration = Duration::from_secs(30);
/// The lifetime of a token whose answer has no `expires_in`, in seconds.
const DEFAULT_LIFETIME: f64 = 60.0;
/// The longest lifetime taken from a token answer, in seconds.
const MAX_LIFETIME: f64 = 365.0 * 24.0 * 3600.0;
/// The largest token-service answer read.
const MAX_TOKEN_ANSWER: usize = 1 << 20;
/// The time limit of one token request.
const TOKEN_TIMEOUT: Duration = Duration::from_secs(30);

/// Upstream credentials of a repository.
#[derive(Clone)]
pub struct Credentials {
    /// The user name.
    pub username: String,
    /// The password (or an access token used as one).
    pub password: String,
}

impl Credentials {
    /// The `Authorization: Basic` value for these credentials.
    fn basic(&self) -> HeaderValue {
        let encoded = base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", self.username, self.password));
        let mut value = HeaderValue::try_from(format!("Basic {encoded}"))
            .expect("base64 text is a valid header value");
        value.set_sensitive(true);
        value
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"********")
            .finish()
    }
}

/// Why [`UpstreamAuth::send`] has no response to give.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamAuthError {
    /// The upstream could not be reached, or the request could not be sent.
    #[error(transparent)]
    Unreachable(#[from] reqwest::Error),
    /// The upstream demanded a Bearer token and its token service gave none.
    #[error("upstream answered {status} and the token service {realm} gave no token: {reason}")]
    Token {
        /// The upstream's status (401).
        status: u16,
        /// The token service named by the upstream's challenge.
        realm: String,
        /// What went wrong with the token service.
        reason: String,
    },
}

impl UpstreamAuthError {
    /// The upstream's status behind the error, when it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            UpstreamAuthError::Unreachable(_) => None,
            UpstreamAuthError::Token { status, .. } => Some(*status),
        }
    }
}

/// Bearer tokens and challenges learnt from upstreams, shared by all requests.
pub struct UpstreamAuth {
    /// The last Bearer challenge per scope key.
    challenges: moka::future::Cache<String, BearerChallenge>,
    /// Tokens per challenge and user, dropped [`EXPIRY_MARGIN`] before they expire.
    tokens: moka::future::Cache<TokenKey, Token>,
    /// Scope keys whose upstream asked for Basic credentials, so requests
    /// that wait for a challenge send them at once next time.
    wants_basic: moka::future::Cache<String, ()>,
}

impl Default for UpstreamAuth {
    fn default() -> Self {
        UpstreamAuth::new()
    }
}

impl UpstreamAuth {
    /// Empty caches.
    pub fn new() -> UpstreamAuth {
        UpstreamAuth {
            challenges: moka::future::Cache::builder()
                .max_capacity(MAX_CHALLENGES)
                .time_to_idle(CHALLENGE_IDLE)
                .build(),
            tokens: moka::future::Cache::builder()
                .max_capacity(MAX_TOKENS)
                .expire_after(TokenExpiry)
                .build(),
            wants_basic: moka::future::Cache::builder()
                .max_capacity(MAX_CHALLENGES)
                .time_to_idle(CHALLENGE_IDLE)
                .build(),
        }
    }

    /// Sends `method url` with `headers`, authenticating as needed:
    /// - with a Bearer challenge remembered for `scope_key`: sends
    ///   `Authorization: Bearer` with a token for it (cached or fetched);
    /// - else with `credentials`: sends `Authorization: Basic` preemptively;
    /// - on a 401 with a Bearer challenge: remembers the challenge under
    ///   `scope_key` (e.g. `"<repo>/<image>"`), gets a token for it (cached
    ///   per realm, service, scope and user until 30 s before it expires;
    ///   concurrent requests for the same token make one token request) and
    ///   sends the request once more;
    /// - on a 401 with a Basic challenge, when `credentials` were not sent
    ///   yet: sends the request once more with them;
    /// - otherwise returns the response as it is.
    ///
    /// An `Authorization` in `headers` is replaced whenever credentials or a
    /// token go along. When the upstream demands a token and its token
    /// service fails (unreachable, not 200, no token in the answer), the
    /// answer is [`UpstreamAuthError::Token`] with the upstream's status.
    pub async fn send(
        &self,
        client: &reqwest::Client,
        method: Method,
        url: &str,
        headers: &[(String, String)],
        credentials: Option<&Credentials>,
        scope_key: &str,
    ) -> Result<Response, UpstreamAuthError> {
        self.send_with(client, method, url, headers, credentials, scope_key, true)
            .await
    }

    /// [`UpstreamAuth::send`], but with `preemptive` false credentials go
    /// only where a challenge asks for them: a registry that issues tokens
    /// never sees the password, only its token service does. An upstream
    /// that asked for Basic once gets it at once afterwards.
    #[allow(clippy::too_many_arguments)]
    pub async fn send_with(
        &self,
        client: &reqwest::Client,
        method: Method,
        url: &str,
        headers: &[(String, String)],
        credentials: Option<&Credentials>,
        scope_key: &str,
        preemptive: bool,
    ) -> Result<Response, UpstreamAuthError> {
        let upstream = Url::parse(url).ok();
        let preemptive = preemptive || self.wants_basic.contains_key(scope_key);
        let basic_or_anonymous = || {
            credentials
                .filter(|_| preemptive)
                .map_or(Sent::Anonymous, Sent::Basic)
        };
        let mut failed = None;
        let sent = match self.challenges.get(scope_key).await {
            Some(challenge) => {
                match self
                    .token(client, &challenge, upstream.as_ref(), credentials)
                    .await
                {
                    Ok((key, token)) => Sent::Bearer(key, token),
                    Err(reason) => {
                        failed = Some((challenge, reason));
                        basic_or_anonymous()
                    }
                }
            }
            None => basic_or_anonymous(),
        };
        let response = attempt(client, &method, url, headers, &sent).await?;
        if response.status() != StatusCode::UNAUTHORIZED {
            return Ok(response);
        }
        let status = response.status().as_u16();
        let offered = challenges(response.headers());
        if let Some(challenge) = offered.iter().find_map(BearerChallenge::from_challenge) {
            self.challenges
                .insert(scope_key.to_string(), challenge.clone())
                .await;
            if let Sent::Bearer(key, token) = &sent {
                if key.challenge == challenge {
                    self.forget(key, token).await;
                }
            }
            if let Some((_, reason)) = failed.filter(|(earlier, _)| *earlier == challenge) {
                return Err(UpstreamAuthError::Token {
                    status,
                    realm: challenge.realm,
                    reason,
                });
            }
            drop(response);
            return match self
                .token(client, &challenge, upstream.as_ref(), credentials)
                .await
            {
                Ok((key, token)) => {
                    Ok(attempt(client, &method, url, headers, &Sent::Bearer(key, token)).await?)
                }
                Err(reason) => Err(UpstreamAuthError::Token {
                    status,
                    realm: challenge.realm,
                    reason,
                }),
            };
        }
        if !offered.iter().any(|c| c.scheme == "basic") {
            return Ok(response);
        }
        self.challenges.invalidate(scope_key).await;
        match credentials {
            Some(credentials) if !matches!(sent, Sent::Basic(_)) => {
                drop(response);
                self.wants_basic.insert(scope_key.to_string(), ()).await;
                Ok(attempt(client, &method, url, headers, &Sent::Basic(credentials)).await?)
            }
            _ => Ok(response),
        }
    }

    /// A token for `challenge`: the cached one, or a new one from its realm.
    async fn token(
        &self,
        client: &reqwest::Client,
        challenge: &BearerChallenge,
        upstream: Option<&Url>,
        credentials: Option<&Credentials>,
    ) -> Result<(TokenKey, Token), String> {
        let realm = challenge.token_url()?;
        let withheld = credentials.is_some() && !may_send_credentials(&realm, upstream);
        let credentials = credentials.filter(|_| !withheld);
        let key = TokenKey {
            challenge: challenge.clone(),
            username: credentials.map(|c| c.username.clone()),
        };
        let fetch = async {
            if withheld {
                tracing::warn!(
                    realm = %challenge.realm,
                    upstream = upstream.and_then(Url::host_str).unwrap_or(""),
                    "not sending credentials in clear text to a token service on another host; asking for an anonymous token"
                );
            }
            tracing::debug!(
                realm = %challenge.realm,
                service = challenge.service.as_deref().unwrap_or(""),
                scope = challenge.scope.as_deref().unwrap_or(""),
                username = credentials.map_or("", |c| c.username.as_str()),
                "fetching an upstream token"
            );
            fetch_token(client, realm, credentials).await
        };
        let token = self
            .tokens
            .try_get_with(key.clone(), fetch)
            .await
            .map_err(|e| e.to_string())?;
        Ok((key, token))
    }

    /// Drops the cached token under `key` if it is still `token`, which the
    /// upstream has just refused.
    async fn forget(&self, key: &TokenKey, token: &Token) {
        let cached = self.tokens.get(key).await;
        if cached.is_some_and(|c| c.authorization == token.authorization) {
            self.tokens.invalidate(key).await;
        }
    }
}

/// What a request carries to authenticate.
enum Sent<'a> {
    /// Nothing.
    Anonymous,
    /// HTTP Basic credentials.
    Basic(&'a Credentials),
    /// A Bearer token, and where it is cached.
    Bearer(TokenKey, Token),
}

/// Sends one request, with the `Authorization` that `sent` calls for.
async fn attempt(
    client: &reqwest::Client,
    method: &Method,
    url: &str,
    headers: &[(String, String)],
    sent: &Sent<'_>,
) -> Result<Response, reqwest::Error> {
    let authorization = match sent {
        Sent::Anonymous => None,
        Sent::Basic(credentials) => Some(credentials.basic()),
        Sent::Bearer(_, token) => Some(token.authorization.clone()),
    };
    let mut request = client.request(method.clone(), url);
    for (name, value) in headers {
        if authorization.is_some() && name.eq_ignore_ascii_case(AUTHORIZATION.as_str()) {
            continue;
        }
        request = request.header(name, value);
    }
    if let Some(authorization) = authorization {
        request = request.header(AUTHORIZATION, authorization);
    }
    request.send().await
}

/// A cached token.
#[derive(Clone)]
struct Token {
    /// `Bearer <token>`, marked sensitive.
    authorization: HeaderValue,
    /// How long the cache keeps it.
    fresh_for: Duration,
}

/// What a token is cached under.
#[derive(Clone, PartialEq, Eq, Hash)]
struct TokenKey {
    /// The challenge it answers.
    challenge: BearerChallenge,
    /// The user it was issued to; None: anonymous.
    username: Option<String>,
}

/// Gives every cached token its own lifetime.
struct TokenExpiry;

impl moka::Expiry<TokenKey, Token> for TokenExpiry {
    fn expire_after_create(
        &self,
        _key: &TokenKey,
        token: &Token,
        _now: Instant,
    ) -> Option<Duration> {
        Some(token.fresh_for)
    }
}

/// A token service's answer. Its `issued_at` is not read: the token was
/// issued for this very request, so its lifetime counts from when the answer
/// arrives, by this host's clock, whatever the service's clock says.
#[derive(Deserialize)]
struct TokenAnswer {
    token: Option<String>,
    access_token: Option<String>,
    expires_in: Option<f64>,
}

/// Asks the token service at `url` (the realm with service and scopes) for a
/// token, as the user of `credentials` or anonymously.
async fn fetch_token(
    client: &reqwest::Client,
    url: Url,
    credentials: Option<&Credentials>,
) -> Result<Token, String> {
    let mut request = client.get(url).timeout(TOKEN_TIMEOUT);
    if let Some(credentials) = credentials {
        request = request.header(AUTHORIZATION, credentials.basic());
    }
    let mut response = request
        .send()
        .await
        .map_err(|e| format!("token service unreachable: {}", chain(&e)))?;
    if response.status() != StatusCode::OK {
        return Err(format!(
            "token service answered {}",
            response.status().as_u16()
        ));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| format!("token service answer broke off: {}", chain(&e)))?
    {
        if body.len() + chunk.len() > MAX_TOKEN_ANSWER {
            return Err(format!(
                "token service answer is larger than {MAX_TOKEN_ANSWER} bytes"
            ));
        }
        body.extend_from_slice(&chunk);
    }
    let answer: TokenAnswer = serde_json::from_slice(&body)
        .map_err(|e| format!("token service answer is not a token document: {e}"))?;
    let secret = answer
        .token
        .filter(|t| !t.is_empty())
        .or(answer.access_token.filter(|t| !t.is_empty()))
        .ok_or("token service answer holds no token")?;
    let mut authorization = HeaderValue::try_from(format!("Bearer {secret}"))
        .map_err(|_| "token service answered a token that cannot go in a header")?;
    authorization.set_sensitive(true);
    let lifetime = answer
        .expires_in
        .filter(|s| s.is_finite() && *s > 0.0)
        .unwrap_or(DEFAULT_LIFETIME)
        .min(MAX_LIFETIME);
    Ok(Token {
        authorization,
        fresh_for: Duration::from_secs_f64(lifetime).saturating_sub(EXPIRY_MARGIN),
    })
}

/// An error and its causes, on one line.
fn chain(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Whether credentials may go to the token service at `realm`: over https,
/// or to a loopback address, or to the upstream's own host.
fn may_send_credentials(realm: &Url, upstream: Option<&Url>) -> bool {
    if realm.scheme() == "https" {
        return true;
    }
    let Some(host) = realm.host_str() else {
        return false;
    };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = match bare.parse::<IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => bare.eq_ignore_ascii_case("localhost"),
    };
    loopback || upstream.and_then(Url::host_str) == Some(host)
}

/// A Bearer challenge: where to get a token, and for what.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct BearerChallenge {
    /// The token service's URL.
    realm: String,
    /// The `service` to ask a token for.
    service: Option<String>,
    /// The scopes to ask a token for, separated by single spaces.
    scope: Option<String>,
}

impl BearerChallenge {
    /// The Bearer challenge in `challenge`, if it is one and names a realm.
    fn from_challenge(challenge: &Challenge) -> Option<BearerChallenge> {
        if challenge.scheme != "bearer" {
            return None;
        }
        let non_empty = |name| challenge.param(name).filter(|v| !v.is_empty());
        let scope = non_empty("scope")
            .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
            .filter(|s| !s.is_empty());
        Some(BearerChallenge {
            realm: non_empty("realm")?.to_string(),
            service: non_empty("service").map(str::to_string),
            scope,
        })
    }

    /// The token request's URL: the realm, with `service` and one `scope`
    /// per scope added to its query.
    fn token_url(&self) -> Result<Url, String> {
        let mut url = Url::parse(&self.realm)
            .map_err(|e| format!("token realm {:?} is not a URL: {e}", self.realm))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!(
                "token realm {:?} is not an http or https URL",
                self.realm
            ));
        }
        if self.service.is_some() || self.scope.is_some() {
            let mut query = url.query_pairs_mut();
            if let Some(service) = &self.service {
                query.append_pair("service", service);
            }
            for scope in self.scope.iter().flat_map(|s| s.split(' ')) {
                query.append_pair("scope", scope);
            }
        }
        Ok(url)
    }
}

/// One challenge of a `WWW-Authenticate` header.
#[derive(Debug, PartialEq, Eq)]
struct Challenge {
    /// The scheme, lower-cased.
    scheme: String,
    /// The parameters in header order, names lower-cased; the first of a
    /// repeated name only.
    params: Vec<(String, String)>,
}

impl Challenge {
    /// The value of parameter `name` (lower case).
    fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Every challenge of every `WWW-Authenticate` header, in order.
fn challenges(headers: &HeaderMap) -> Vec<Challenge> {
    headers
        .get_all(WWW_AUTHENTICATE)
        .iter()
        .flat_map(|value| parse_challenges(&String::from_utf8_lossy(value.as_bytes())))
        .collect()
}

/// The challenges of one `WWW-Authenticate` value (RFC 9110 section 11.6.1):
/// comma-separated, each a scheme followed by a token68 (skipped) or by
/// comma-separated `name=value` parameters, values plain or quoted with
/// backslash escapes. What cannot be read is skipped.
fn parse_challenges(value: &str) -> Vec<Challenge> {
    let mut cursor = Cursor {
        text: value,
        pos: 0,
    };
    let mut found = Vec::new();
    loop {
        cursor.skip_separators();
        if cursor.peek().is_none() {
            break;
        }
        let scheme = cursor.token();
        if scheme.is_empty() {
            cursor.pos += value[cursor.pos..].chars().next().map_or(1, char::len_utf8);
            continue;
        }
        let mut challenge = Challenge {
            scheme: scheme.to_ascii_lowercase(),
            params: Vec::new(),
        };
        cursor.skip_spaces();
        if !cursor.skip_token68() {
            while let Some((name, value)) = cursor.param() {
                let name = name.to_ascii_lowercase();
                if challenge.param(&name).is_none() {
                    challenge.params.push((name, value));
                }
            }
        }
        found.push(challenge);
    }
    found
}

/// A reading position in a header value.
struct Cursor<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.pos).copied()
    }

    fn skip_while(&mut self, keep: impl Fn(u8) -> bool) {
        while self.peek().is_some_and(&keep) {
            self.pos += 1;
        }
    }

    fn skip_spaces(&mut self) {
        self.skip_while(|b| b == b' ' || b == b'\t');
    }

    fn skip_separators(&mut self) {
        self.skip_while(|b| b == b' ' || b == b'\t' || b == b',');
    }

    /// Reads a token (RFC 9110 `tchar`s); empty if there is none here.
    fn token(&mut self) -> &'a str {
        let start = self.pos;
        self.skip_while(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        &self.text[start..self.pos]
    }

    /// Skips a token68 and the spaces after it when one stands here alone
    /// (followed by a comma or the end); says whether it did.
    fn skip_token68(&mut self) -> bool {
        let start = self.pos;
        self.skip_while(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b));
        if self.pos > start {
            self.skip_while(|b| b == b'=');
            self.skip_spaces();
            if matches!(self.peek(), None | Some(b',')) {
                return true;
            }
        }
        self.pos = start;
        false
    }

    /// Reads the next `name=value` parameter of the current challenge; None,
    /// with nothing consumed, when what follows is not one.
    fn param(&mut self) -> Option<(&'a str, String)> {
        let start = self.pos;
        self.skip_separators();
        let name = self.token();
        self.skip_spaces();
        if name.is_empty() || self.peek() != Some(b'=') {
            self.pos = start;
            return None;
        }
        self.pos += 1;
        self.skip_spaces();
        let value = if self.peek() == Some(b'"') {
            self.quoted()
        } else {
            self.token().to_string()
        };
        Some((name, value))
    }

    /// Reads a quoted string starting here, unescaping `\x`; an unterminated
    /// one runs to the end.
    fn quoted(&mut self) -> String {
        self.pos += 1;
        let mut value = String::new();
        let mut chars = self.text[self.pos..].char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => {
                    self.pos += i + 1;
                    return value;
                }
                '\\' => value.extend(chars.next().map(|(_, escaped)| escaped)),
                c => value.push(c),
            }
        }
        self.pos = self.text.len();
        value
    }
}

/// Everything needed to send requests to one repository's upstream with
/// its credentials.
#[derive(Clone)]
pub struct Upstream {
    /// The HTTP client.
    pub client: reqwest::Client,
    /// Shared challenges and tokens.
    pub auth: Arc<UpstreamAuth>,
    /// The repository's upstream credentials.
    pub credentials: Option<Credentials>,
    /// Which challenge applies: the repository and the name asked for.
    pub scope_key: String,
    /// Send credentials before any challenge asks for them.
    pub preemptive: bool,
}

impl Upstream {
    /// Sends `method url` with `headers`, authenticating as the upstream asks.
    pub async fn send(
        &self,
        method: Method,
        url: &str,
        headers: &[(String, String)],
    ) -> Result<Response, UpstreamAuthError> {
        self.auth
            .send_with(
                &self.client,
                method,
                url,
                headers,
                self.credentials.as_ref(),
                &self.scope_key,
                self.preemptive,
            )
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    use axum::extract::{Path, Query, State};
    use axum::http::{HeaderMap as AxumHeaders, StatusCode as AxumStatus};
    use axum::response::{IntoResponse, Response as AxumResponse};
    use axum::routing::{any, get};
    use axum::{Json, Router};

    const USER: &str = "alice";
    const PASSWORD: &str = "s3cret";

    /// A registry (`/v2/...`, Bearer tokens from `/token`), a token service
    /// that fails (`/broken-token`, for `/v2/broken/...`) and a file server
    /// that wants Basic credentials (`/files/...`), all on one loopback port.
    struct Upstream {
        addr: SocketAddr,
        /// `expires_in` of the tokens handed out; None: left out.
        expires_in: Option<u64>,
        /// How long the token service takes to answer.
        token_delay: Duration,
        /// The field the token goes in.
        token_field: &'static str,
        /// Tokens the registry accepts.
        issued: Mutex<HashSet<String>>,
        token_calls: AtomicUsize,
        broken_token_calls: AtomicUsize,
        registry_calls: AtomicUsize,
        file_calls: AtomicUsize,
        /// The query of the last token request.
        last_query: Mutex<Vec<(String, String)>>,
    }

    struct Options {
        expires_in: Option<u64>,
        token_delay: Duration,
        token_field: &'static str,
    }

    impl Default for Options {
        fn default() -> Self {
            Options {
                expires_in: None,
                token_delay: Duration::ZERO,
                token_field: "token",
            }
        }
    }

    async fn start(options: Options) -> Arc<Upstream> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream = Arc::new(Upstream {
            addr: listener.local_addr().unwrap(),
            expires_in: options.expires_in,
            token_delay: options.token_delay,
            token_field: options.token_field,
            issued: Mutex::default(),
            token_calls: AtomicUsize::new(0),
            broken_token_calls: AtomicUsize::new(0),
            registry_calls: AtomicUsize::new(0),
            file_calls: AtomicUsize::new(0),
            last_query: Mutex::default(),
        });
        let router = Router::new()
            .route("/token", get(token))
            .route("/broken-token", get(broken_token))
            .route("/v2/{*path}", any(registry))
            .route("/files/{*path}", any(files))
            .with_state(upstream.clone());
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        upstream
    }

    impl Upstream {
        fn url(&self, path: &str) -> String {
            format!("http://{}{path}", self.addr)
        }
    }

    fn basic_of(headers: &AxumHeaders) -> Option<String> {
        let value = headers.get("authorization")?.to_str().ok()?;
        let encoded = value.strip_prefix("Basic ")?;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .ok()?;
        String::from_utf8(decoded).ok()
    }

    async fn token(
        State(upstream): State<Arc<Upstream>>,
        Query(query): Query<Vec<(String, String)>>,
        headers: AxumHeaders,
    ) -> AxumResponse {
        let n = upstream.token_calls.fetch_add(1, Ordering::SeqCst);
        *upstream.last_query.lock().unwrap() = query;
        tokio::time::sleep(upstream.token_delay).await;
        let user = match (headers.get("authorization"), basic_of(&headers)) {
            (None, _) => "anonymous",
            (Some(_), Some(pair)) if pair == format!("{USER}:{PASSWORD}") => USER,
            _ => return AxumStatus::UNAUTHORIZED.into_response(),
        };
        let secret = format!("{user}-{n}");
        upstream.issued.lock().unwrap().insert(secret.clone());
        let mut answer = serde_json::json!({ upstream.token_field: secret });
        if let Some(expires_in) = upstream.expires_in {
            answer["expires_in"] = expires_in.into();
        }
        Json(answer).into_response()
    }

    async fn broken_token(State(upstream): State<Arc<Upstream>>) -> AxumStatus {
        upstream.broken_token_calls.fetch_add(1, Ordering::SeqCst);
        AxumStatus::INTERNAL_SERVER_ERROR
    }

    /// `/v2/public/...` takes any token, `/v2/private/...` only alice's;
    /// `/v2/broken/...` sends clients to the failing token service.
    async fn registry(
        State(upstream): State<Arc<Upstream>>,
        Path(path): Path<String>,
        headers: AxumHeaders,
    ) -> AxumResponse {
        upstream.registry_calls.fetch_add(1, Ordering::SeqCst);
        let name = path.split('/').take(2).collect::<Vec<_>>().join("/");
        let realm = if name.starts_with("broken/") {
            "broken-token"
        } else {
            "token"
        };
        let challenge = format!(
            r#"Bearer realm="http://{}/{realm}",service="registry.test",scope="repository:{name}:pull""#,
            upstream.addr
        );
        let token = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .filter(|t| upstream.issued.lock().unwrap().contains(*t))
            .filter(|t| !name.starts_with("private/") || t.starts_with(USER));
        match token {
            Some(_) => "manifest".into_response(),
            None => (
                AxumStatus::UNAUTHORIZED,
                [("www-authenticate", challenge)],
                "unauthorized",
            )
                .into_response(),
        }
    }

    async fn files(State(upstream): State<Arc<Upstream>>, headers: AxumHeaders) -> AxumResponse {
        upstream.file_calls.fetch_add(1, Ordering::SeqCst);
        if basic_of(&headers) == Some(format!("{USER}:{PASSWORD}")) {
            "file".into_response()
        } else {
            (
                AxumStatus::UNAUTHORIZED,
                [(
                    "www-authenticate",
                    r#"Basic realm="files", charset="UTF-8""#,
                )],
            )
                .into_response()
        }
    }

    fn client() -> reqwest::Client {
        reqwest::Client::builder().no_proxy().build().unwrap()
    }

    fn alice() -> Credentials {
        Credentials {
            username: USER.into(),
            password: PASSWORD.into(),
        }
    }

    async fn get_text(
        auth: &UpstreamAuth,
        url: &str,
        credentials: Option<&Credentials>,
        scope_key: &str,
    ) -> (u16, String) {
        let response = auth
            .send(&client(), Method::GET, url, &[], credentials, scope_key)
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.text().await.unwrap())
    }

    fn calls(counter: &AtomicUsize) -> usize {
        counter.load(Ordering::SeqCst)
    }

    #[tokio::test]
    async fn a_token_is_fetched_on_a_401_and_reused_afterwards() {
        let upstream = start(Options::default()).await;
        let auth = UpstreamAuth::new();
        let url = upstream.url("/v2/private/app/manifests/1.0");
        let first = get_text(&auth, &url, Some(&alice()), "hub/private/app").await;
        assert_eq!(first, (200, "manifest".to_string()));
        assert_eq!(calls(&upstream.token_calls), 1);
        assert_eq!(calls(&upstream.registry_calls), 2);
        assert_eq!(
            *upstream.last_query.lock().unwrap(),
            vec![
                ("service".to_string(), "registry.test".to_string()),
                (
                    "scope".to_string(),
                    "repository:private/app:pull".to_string()
                ),
            ]
        );
        let second = get_text(&auth, &url, Some(&alice()), "hub/private/app").await;
        assert_eq!(second.0, 200);
        assert_eq!(calls(&upstream.token_calls), 1, "the token is reused");
        assert_eq!(
            calls(&upstream.registry_calls),
            3,
            "the remembered challenge sends the token straight away"
        );
    }

    #[tokio::test]
    async fn concurrent_requests_share_one_token_request() {
        let upstream = start(Options {
            token_delay: Duration::from_millis(200),
            ..Options::default()
        })
        .await;
        let auth = UpstreamAuth::new();
        let url = upstream.url("/v2/private/app/blobs/sha256:00");
        let credentials = alice();
        let requests = (0..8).map(|_| get_text(&auth, &url, Some(&credentials), "hub/private/app"));
        for (status, _) in futures::future::join_all(requests).await {
            assert_eq!(status, 200);
        }
        assert_eq!(calls(&upstream.token_calls), 1);
    }

    #[tokio::test]
    async fn an_expiring_token_is_replaced() {
        let upstream = start(Options {
            expires_in: Some(31),
            ..Options::default()
        })
        .await;
        let auth = UpstreamAuth::new();
        let url = upstream.url("/v2/private/app/manifests/1.0");
        assert_eq!(get_text(&auth, &url, Some(&alice()), "k").await.0, 200);
        assert_eq!(get_text(&auth, &url, Some(&alice()), "k").await.0, 200);
        assert_eq!(calls(&upstream.token_calls), 1);
        tokio::time::sleep(Duration::from_millis(1200)).await;
        assert_eq!(get_text(&auth, &url, Some(&alice()), "k").await.0, 200);
        assert_eq!(
            calls(&upstream.token_calls),
            2,
            "a token 30 s from expiry is not used"
        );
        assert_eq!(calls(&upstream.registry_calls), 4);
    }

    #[tokio::test]
    async fn a_refused_token_is_replaced() {
        let upstream = start(Options::default()).await;
        let auth = UpstreamAuth::new();
        let url = upstream.url("/v2/private/app/manifests/1.0");
        assert_eq!(get_text(&auth, &url, Some(&alice()), "k").await.0, 200);
        upstream.issued.lock().unwrap().clear();
        assert_eq!(get_text(&auth, &url, Some(&alice()), "k").await.0, 200);
        assert_eq!(calls(&upstream.token_calls), 2);
        assert_eq!(get_text(&auth, &url, Some(&alice()), "k").await.0, 200);
        assert_eq!(calls(&upstream.token_calls), 2);
    }

    #[tokio::test]
    async fn without_credentials_the_token_is_anonymous() {
        let upstream = start(Options {
            token_field: "access_token",
            ..Options::default()
        })
        .await;
        let auth = UpstreamAuth::new();
        let public = upstream.url("/v2/public/app/manifests/1.0");
        assert_eq!(
            get_text(&auth, &public, None, "hub/public/app").await.0,
            200
        );
        let issued = upstream.issued.lock().unwrap().clone();
        assert_eq!(issued, HashSet::from(["anonymous-0".to_string()]));
        let private = upstream.url("/v2/private/app/manifests/1.0");
        let (status, body) = get_text(&auth, &private, None, "hub/private/app").await;
        assert_eq!((status, body.as_str()), (401, "unauthorized"));
    }

    #[tokio::test]
    async fn tokens_are_kept_apart_per_user() {
        let upstream = start(Options::default()).await;
        let auth = UpstreamAuth::new();
        let url = upstream.url("/v2/private/app/manifests/1.0");
        assert_eq!(get_text(&auth, &url, None, "anon/private/app").await.0, 401);
        assert_eq!(
            get_text(&auth, &url, Some(&alice()), "alice/private/app")
                .await
                .0,
            200
        );
        assert_eq!(calls(&upstream.token_calls), 2);
    }

    #[tokio::test]
    async fn a_failing_token_service_is_an_error() {
        let upstream = start(Options::default()).await;
        let auth = UpstreamAuth::new();
        let url = upstream.url("/v2/broken/app/manifests/1.0");
        for expected_calls in [1, 2] {
            let error = auth
                .send(&client(), Method::GET, &url, &[], Some(&alice()), "k")
                .await
                .unwrap_err();
            assert_eq!(error.status(), Some(401));
            let message = error.to_string();
            assert!(message.contains("answered 500"), "{message}");
            assert!(!message.contains(PASSWORD), "{message}");
            assert_eq!(calls(&upstream.broken_token_calls), expected_calls);
        }
    }

    #[tokio::test]
    async fn refused_credentials_are_an_error() {
        let upstream = start(Options::default()).await;
        let auth = UpstreamAuth::new();
        let url = upstream.url("/v2/private/app/manifests/1.0");
        let wrong = Credentials {
            username: USER.into(),
            password: "wrong".into(),
        };
        let error = auth
            .send(&client(), Method::GET, &url, &[], Some(&wrong), "k")
            .await
            .unwrap_err();
        assert!(matches!(
            error,
            UpstreamAuthError::Token { status: 401, .. }
        ));
        assert!(
            error.to_string().contains("token service answered 401"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn an_unreachable_upstream_is_an_error() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let error = UpstreamAuth::new()
            .send(
                &client(),
                Method::GET,
                &format!("http://{addr}/x"),
                &[],
                None,
                "k",
            )
            .await
            .unwrap_err();
        assert!(matches!(error, UpstreamAuthError::Unreachable(_)));
        assert_eq!(error.status(), None);
    }

    #[tokio::test]
    async fn basic_upstreams_get_credentials() {
        let upstream = start(Options::default()).await;
        let auth = UpstreamAuth::new();
        let url = upstream.url("/files/a.tar.gz");
        assert_eq!(get_text(&auth, &url, Some(&alice()), "files").await.0, 200);
        assert_eq!(calls(&upstream.file_calls), 1, "Basic goes preemptively");
        let response = auth
            .send(&client(), Method::HEAD, &url, &[], None, "files")
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }

    #[tokio::test]
    async fn without_preemption_credentials_wait_for_a_challenge() {
        let upstream = start(Options::default()).await;
        let auth = UpstreamAuth::new();
        let send = |url: String| {
            let auth = &auth;
            async move {
                let credentials = alice();
                auth.send_with(
                    &client(),
                    Method::GET,
                    &url,
                    &[],
                    Some(&credentials),
                    "files",
                    false,
                )
                .await
                .unwrap()
                .status()
            }
        };
        let files = upstream.url("/files/a.tar.gz");
        assert_eq!(send(files.clone()).await, StatusCode::OK);
        assert_eq!(calls(&upstream.file_calls), 2, "a 401, then Basic");
        assert_eq!(send(files).await, StatusCode::OK);
        assert_eq!(
            calls(&upstream.file_calls),
            3,
            "an upstream that asked for Basic gets it at once"
        );
    }

    #[tokio::test]
    async fn a_basic_challenge_after_a_token_gets_credentials() {
        let upstream = start(Options::default()).await;
        let auth = UpstreamAuth::new();
        let registry = upstream.url("/v2/private/app/manifests/1.0");
        assert_eq!(get_text(&auth, &registry, Some(&alice()), "k").await.0, 200);
        let files = upstream.url("/files/a.tar.gz");
        let headers = [(
            "Authorization".to_string(),
            "Basic bm9ib2R5Og==".to_string(),
        )];
        let response = auth
            .send(
                &client(),
                Method::GET,
                &files,
                &headers,
                Some(&alice()),
                "k",
            )
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(calls(&upstream.file_calls), 2, "a token, then credentials");
        assert_eq!(get_text(&auth, &files, Some(&alice()), "k").await.0, 200);
        assert_eq!(calls(&upstream.file_calls), 3, "the challenge is forgotten");
    }

    #[test]
    fn challenges_are_parsed() {
        let parsed = parse_challenges(
            r#"Bearer realm="https://auth.example.org/token",service="registry.example.org",scope="repository:library/nginx:pull""#,
        );
        assert_eq!(
            parsed,
            vec![Challenge {
                scheme: "bearer".into(),
                params: vec![
                    ("realm".into(), "https://auth.example.org/token".into()),
                    ("service".into(), "registry.example.org".into()),
                    ("scope".into(), "repository:library/nginx:pull".into()),
                ],
            }]
        );
        let parsed = parse_challenges(
            r#"bEaReR REALM = "https://a.example.org/t?x=1,2", Scope="repository:a/b:pull,push", error="say \"no\", twice""#,
        );
        assert_eq!(parsed.len(), 1);
        assert_eq!(parsed[0].scheme, "bearer");
        assert_eq!(
            parsed[0].param("realm"),
            Some("https://a.example.org/t?x=1,2")
        );
        assert_eq!(parsed[0].param("scope"), Some("repository:a/b:pull,push"));
        assert_eq!(parsed[0].param("error"), Some(r#"say "no", twice"#));
    }

    #[test]
    fn several_challenges_are_told_apart() {
        let parsed = parse_challenges(
            r#"Newauth realm="apps", type=1, title="Login to \"apps\"", Basic realm="simple""#,
        );
        let schemes: Vec<_> = parsed.iter().map(|c| c.scheme.as_str()).collect();
        assert_eq!(schemes, ["newauth", "basic"]);
        assert_eq!(parsed[0].param("type"), Some("1"));
        assert_eq!(parsed[0].param("title"), Some(r#"Login to "apps""#));
        assert_eq!(parsed[1].param("realm"), Some("simple"));

        let parsed = parse_challenges(r#"Negotiate, NTLM abc+/12==, Basic realm="x",, Bearer"#);
        let schemes: Vec<_> = parsed.iter().map(|c| c.scheme.as_str()).collect();
        assert_eq!(schemes, ["negotiate", "ntlm", "basic", "bearer"]);
        assert!(parsed[1].params.is_empty());
        assert_eq!(parsed[2].param("realm"), Some("x"));

        let mut headers = HeaderMap::new();
        headers.append(
            WWW_AUTHENTICATE,
            HeaderValue::from_static(r#"Basic realm="a""#),
        );
        headers.append(
            WWW_AUTHENTICATE,
            HeaderValue::from_static(r#"Bearer realm="https://a.example.org/t""#),
        );
        let bearer = challenges(&headers)
            .iter()
            .find_map(BearerChallenge::from_challenge)
            .unwrap();
        assert_eq!(bearer.realm, "https://a.example.org/t");
        assert_eq!((bearer.service, bearer.scope), (None, None));
    }

    #[test]
    fn broken_challenges_do_not_stop_the_parser() {
        for value in [
            "",
            ",,, ",
            "\"",
            "=",
            "Bearer realm=",
            "Bearer realm=\"unterminated",
            "Bearer realm=\"trailing backslash\\",
            "Bearer =x, réalm=\"ü\", ü",
            "Basic realm=\"a\" junk \"b\", Bearer realm=\"c\"",
        ] {
            parse_challenges(value);
        }
        let parsed = parse_challenges("Bearer realm=\"unterminated, service=\"s");
        assert_eq!(parsed[0].param("realm"), Some("unterminated, service="));
        let parsed = parse_challenges("Basic realm=\"a\" junk \"b\", Bearer realm=\"c\"");
        assert_eq!(parsed.last().unwrap().param("realm"), Some("c"));
        let none = Challenge {
            scheme: "bearer".into(),
            params: vec![("realm".into(), String::new())],
        };
        assert_eq!(BearerChallenge::from_challenge(&none), None);
    }

    #[test]
    fn token_urls_carry_service_and_scopes() {
        let parsed = parse_challenges(
            r#"Bearer realm="https://auth.example.org/token?client=x",service="registry.example.org",scope=" repository:a:pull  repository:b c:pull ""#,
        );
        let bearer = BearerChallenge::from_challenge(&parsed[0]).unwrap();
        assert_eq!(
            bearer.scope.as_deref(),
            Some("repository:a:pull repository:b c:pull")
        );
        assert_eq!(
            bearer.token_url().unwrap().as_str(),
            "https://auth.example.org/token?client=x&service=registry.example.org&scope=repository%3Aa%3Apull&scope=repository%3Ab&scope=c%3Apull"
        );
        let bare = BearerChallenge {
            realm: "http://127.0.0.1:5001/token".into(),
            service: None,
            scope: None,
        };
        assert_eq!(
            bare.token_url().unwrap().as_str(),
            "http://127.0.0.1:5001/token"
        );
        for realm in [
            "ftp://auth.example.org/token",
            "/token",
            "file:///etc/passwd",
        ] {
            let challenge = BearerChallenge {
                realm: realm.into(),
                ..bare.clone()
            };
            assert!(challenge.token_url().is_err(), "{realm}");
        }
    }

    #[test]
    fn credentials_stay_off_clear_text_links_to_other_hosts() {
        let upstream = Url::parse("http://registry.example.org/v2/a/manifests/1").unwrap();
        let allowed =
            |realm: &str| may_send_credentials(&Url::parse(realm).unwrap(), Some(&upstream));
        assert!(allowed("https://auth.example.net/token"));
        assert!(allowed("http://registry.example.org:5001/token"));
        assert!(allowed("http://127.0.0.1:5001/token"));
        assert!(allowed("http://127.8.0.1/token"));
        assert!(allowed("http://[::1]:5001/token"));
        assert!(allowed("http://LOCALHOST/token"));
        assert!(!allowed("http://auth.example.net/token"));
        assert!(!allowed("http://10.0.0.1/token"));
        assert!(!allowed("http://registry.example.org.evil.example/token"));
        assert!(!may_send_credentials(
            &Url::parse("http://auth.example.net/token").unwrap(),
            None
        ));
    }

    #[test]
    fn passwords_stay_out_of_debug_output() {
        let shown = format!("{:?}", alice());
        assert!(shown.contains(USER) && !shown.contains(PASSWORD), "{shown}");
    }
}
