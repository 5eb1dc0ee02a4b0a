//! `/api/v1/remote/{repo}/{path}`: reading from every kind of repository,
//! uploading to and deleting from local ones.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use percent_encoding::percent_decode_str;
use serde_json::json;

use crate::config::{Config, Repo, RepoKind};
use crate::error::AppError;
use crate::fill::{FillError, FillJob, FillState};
use crate::plugins::{
    CallFailure, CallScope, Classification, Document, Header, IndexOptions, LoadedPlugin,
    Mutability, PluginError, RepoContext, RequestInfo,
};
use crate::server::App;
use crate::storage::{Digest, ObjectRecord, Origin};
use crate::util::now_secs;

/// Response header naming where the bytes came from.
pub const SOURCE_HEADER: &str = "x-artifact-source";
/// Response header naming the plugin that classified the request.
pub const PLUGIN_HEADER: &str = "x-artifact-plugin";
/// Request header carrying the sha256 an upload must have.
const CHECKSUM_HEADER: &str = "x-checksum-sha256";
/// Request headers never shown to plugins.
const PRIVATE_HEADERS: &[&str] = &["authorization", "cookie", "proxy-authorization"];

/// The repository and path a request addresses.
struct Target {
    repo: String,
    /// Percent-decoded path below the repository.
    path: String,
    /// The path as the client sent it, for generic upstream URLs.
    raw_path: String,
    query: String,
}

fn parse_target(uri: &axum::http::Uri) -> Result<Target, AppError> {
    let full = uri.path();
    let rest = full
        .strip_prefix("/api/v1/remote/")
        .or_else(|| full.strip_prefix("/api/v1/virtual/"))
        .ok_or_else(|| AppError::not_found("unknown route"))?;
    let (repo_raw, raw_path) = rest.split_once('/').unwrap_or((rest, ""));
    let decode = |text: &str| {
        percent_decode_str(text)
            .decode_utf8()
            .map(|s| s.into_owned())
            .map_err(|_| AppError::bad_request("the path is not valid UTF-8"))
    };
    let repo = decode(repo_raw)?;
    let path = decode(raw_path)?;
    let bad_segment = |p: &str| {
        p.split(['/', '\\'])
            .any(|segment| segment == ".." || segment == ".")
            || p.contains('\0')
    };
    if bad_segment(raw_path) || bad_segment(&path) || bad_segment(&repo) {
        return Err(AppError::new(
            StatusCode::BAD_REQUEST,
            "PATH_TRAVERSAL",
            "'.' and '..' path segments are not allowed",
        ));
    }
    Ok(Target {
        repo,
        path,
        raw_path: raw_path.to_string(),
        query: uri.query().unwrap_or("").to_string(),
    })
}

/// One request against one repository.
struct Ctx {
    app: Arc<App>,
    config: Arc<Config>,
    repo: Arc<Repo>,
    method: Method,
    headers: HeaderMap,
    target: Target,
}

/// What the request path decided about an object.
struct Decision {
    /// The metadata key: the plugin's dedup key or the path.
    key: String,
    mutable: bool,
    rewrite: bool,
    content_type: Option<String>,
    plugin: Option<Arc<LoadedPlugin>>,
}

/// Answers one request under `/api/v1/remote/` or `/api/v1/virtual/`.
pub async fn handle(app: Arc<App>, request: Request) -> Result<Response, AppError> {
    let (parts, body) = request.into_parts();
    let target = parse_target(&parts.uri)?;
    let config = app.config.load_full();
    let repo = config.repo(&target.repo).cloned().ok_or_else(|| {
        AppError::new(
            StatusCode::NOT_FOUND,
            "REPOSITORY_NOT_FOUND",
            format!("no repository named {:?}", target.repo),
        )
    })?;
    let ctx = Ctx {
        app,
        config,
        repo,
        method: parts.method,
        headers: parts.headers,
        target,
    };
    match (ctx.repo.kind(), &ctx.method) {
        (_, &Method::GET | &Method::HEAD) => read(&ctx).await,
        (RepoKind::Local, &Method::PUT) => upload(&ctx, body).await,
        (RepoKind::Local, &Method::DELETE) => delete(&ctx).await,
        (RepoKind::Local, method) => Err(AppError::method_not_allowed(
            "GET, HEAD, PUT, DELETE",
            format!("{method} is not allowed on a local repository"),
        )),
        (kind, method) => Err(AppError::method_not_allowed(
            "GET, HEAD",
            format!("{method} is not allowed on a {} repository", kind.as_str()),
        )),
    }
}

impl Ctx {
    /// The same request against another repository (a virtual's member).
    fn for_member(&self, repo: Arc<Repo>) -> Ctx {
        Ctx {
            app: self.app.clone(),
            config: self.config.clone(),
            repo,
            method: self.method.clone(),
            headers: self.headers.clone(),
            target: Target {
                repo: String::new(),
                path: self.target.path.clone(),
                raw_path: self.target.raw_path.clone(),
                query: self.target.query.clone(),
            },
        }
    }

    fn is_head(&self) -> bool {
        self.method == Method::HEAD
    }

    fn public_url(&self) -> String {
        let header = |name: &str| self.headers.get(name).and_then(|v| v.to_str().ok());
        let scheme = header("x-forwarded-proto").unwrap_or("http");
        let host = header("x-forwarded-host")
            .or_else(|| header("host"))
            .unwrap_or("localhost");
        format!("{scheme}://{host}/api/v1/remote/{}", self.repo.name)
    }

    fn repo_context(&self) -> RepoContext {
        RepoContext {
            name: self.repo.name.clone(),
            kind: match self.repo.kind() {
                RepoKind::Local => crate::plugins::RepoKind::Local,
                RepoKind::Remote => crate::plugins::RepoKind::Remote,
                RepoKind::Virtual => crate::plugins::RepoKind::Virtual,
            },
            base_url: self.repo.base_url.clone().unwrap_or_default(),
            public_url: self.public_url(),
            settings: self.repo.settings_json.clone(),
        }
    }

    fn request_info(&self) -> RequestInfo {
        RequestInfo {
            method: self.method.as_str().to_string(),
            path: self.target.path.clone(),
            query: self.target.query.clone(),
            headers: self
                .headers
                .iter()
                .filter(|(name, _)| !PRIVATE_HEADERS.contains(&name.as_str()))
                .filter_map(|(name, value)| {
                    Some(Header {
                        name: name.as_str().to_string(),
                        value: value.to_str().ok()?.to_string(),
                    })
                })
                .collect(),
        }
    }

    fn scope(&self, plugin: &LoadedPlugin) -> CallScope {
        let mut repos = vec![self.repo.name.clone()];
        repos.extend(self.repo.entry.members.iter().cloned());
        CallScope {
            plugin: plugin.info.name.clone(),
            repo: self.repo.name.clone(),
            services: Some((self.app.storage.clone(), self.app.http.clone())),
            origins: self.repo.upstream_origins(),
            repos,
            cap: self.app.plugins.limits().index_size,
        }
    }
}

/// Turns a plugin call's outcome into the answer or a client error.
fn plugin_answer<T>(
    plugin: &LoadedPlugin,
    outcome: Result<Result<T, PluginError>, CallFailure>,
) -> Result<T, AppError> {
    match outcome {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(plugin_error(plugin, e)),
        Err(failure) => {
            tracing::error!(plugin = %plugin.label(), error = %failure, "plugin call failed");
            Err(AppError::new(
                StatusCode::BAD_GATEWAY,
                "PLUGIN_FAILED",
                failure.to_string(),
            ))
        }
    }
}

fn plugin_error(plugin: &LoadedPlugin, error: PluginError) -> AppError {
    let name = &plugin.info.name;
    match error {
        PluginError::NotFound(m) => AppError::not_found(m),
        PluginError::InvalidRequest(m) => AppError::bad_request(m),
        PluginError::InvalidSettings(m) => AppError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INVALID_SETTINGS",
            format!("plugin {name}: the repository's settings are invalid: {m}"),
        ),
        PluginError::InvalidDocument(m) => AppError::new(
            StatusCode::BAD_GATEWAY,
            "INVALID_UPSTREAM_DOCUMENT",
            format!("plugin {name}: {m}"),
        ),
        PluginError::Unsupported(m) => AppError::new(
            StatusCode::NOT_IMPLEMENTED,
            "UNSUPPORTED",
            format!("plugin {name}: {m}"),
        ),
        PluginError::UpstreamFailed(m) => AppError::new(
            StatusCode::BAD_GATEWAY,
            "UPSTREAM_ERROR",
            format!("plugin {name}: {m}"),
        ),
    }
}

/// Classifies the request and applies the repository's overrides and access
/// rules.
async fn decide(ctx: &Ctx) -> Result<Decision, AppError> {
    let path = &ctx.target.path;
    let (mut decision, access_name) = if ctx.repo.package() == "generic" {
        let decision = Decision {
            key: path.clone(),
            mutable: false,
            rewrite: false,
            content_type: None,
            plugin: None,
        };
        (decision, None)
    } else {
        let plugin = ctx
            .app
            .plugins
            .for_package(ctx.repo.package())
            .ok_or_else(|| {
                AppError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "PLUGIN_MISSING",
                    format!(
                        "no loaded plugin serves package type {:?}: add its .wasm to {}",
                        ctx.repo.package(),
                        ctx.app.plugins.dir().display()
                    ),
                )
            })?;
        let outcome = ctx
            .app
            .plugins
            .classify(
                &plugin,
                ctx.scope(&plugin),
                ctx.repo_context(),
                ctx.request_info(),
            )
            .await;
        let Classification {
            mutability,
            rewrite,
            cache_key,
            access_name,
            content_type,
        } = plugin_answer(&plugin, outcome)?;
        let decision = Decision {
            key: cache_key.unwrap_or_else(|| path.clone()),
            mutable: mutability == Mutability::Mutable,
            rewrite,
            content_type,
            plugin: Some(plugin),
        };
        (decision, access_name)
    };
    let repo = &ctx.repo;
    if repo.mutable.iter().any(|re| re.is_match(path)) {
        decision.mutable = true;
    } else if repo.immutable.iter().any(|re| re.is_match(path)) {
        decision.mutable = false;
    }
    let names: Vec<&str> = std::iter::once(path.as_str())
        .chain(access_name.as_deref())
        .collect();
    if let Some(rule) = repo
        .block
        .iter()
        .find(|re| names.iter().any(|n| re.is_match(n)))
    {
        return Err(AppError::forbidden(format!(
            "{path} is blocked by the blocklist pattern {:?} of repository {}",
            rule.as_str(),
            repo.name
        )));
    }
    if !repo.allow.is_empty()
        && !repo
            .allow
            .iter()
            .any(|re| names.iter().any(|n| re.is_match(n)))
    {
        return Err(AppError::forbidden(format!(
            "{path} matches none of the include_patterns/patterns of repository {}",
            repo.name
        )));
    }
    Ok(decision)
}

async fn read(ctx: &Ctx) -> Result<Response, AppError> {
    match ctx.repo.kind() {
        RepoKind::Local => {
            let decision = decide(ctx).await?;
            let record = ctx
                .app
                .storage
                .meta
                .get(&ctx.repo.name, &decision.key)
                .await?;
            let Some(record) = record else {
                return Err(AppError::not_found(format!(
                    "{} is not in repository {}",
                    ctx.target.path, ctx.repo.name
                )));
            };
            serve_record(ctx, &decision, &record, "local")
                .await?
                .ok_or_else(|| AppError::internal(format!("blob {} is missing", record.digest)))
        }
        RepoKind::Remote => {
            let decision = decide(ctx).await?;
            read_remote(ctx, &decision).await
        }
        RepoKind::Virtual => read_virtual(ctx).await,
    }
}

/// Serves from the first member that has the path.
async fn read_virtual(ctx: &Ctx) -> Result<Response, AppError> {
    let mut last = AppError::not_found(format!(
        "{} is in no member of repository {}",
        ctx.target.path, ctx.repo.name
    ));
    for name in &ctx.repo.entry.members {
        let Some(member) = ctx.config.repo(name).cloned() else {
            continue;
        };
        let member_ctx = ctx.for_member(member);
        match Box::pin(read(&member_ctx)).await {
            Ok(response) => return Ok(response),
            Err(e) if matches!(e.status, StatusCode::NOT_FOUND | StatusCode::FORBIDDEN) => {
                last = e;
            }
            Err(e) => return Err(e),
        }
    }
    Err(last)
}

fn fresh(record: &ObjectRecord, now: i64) -> bool {
    record.expires_at.is_none_or(|at| at > now)
}

async fn read_remote(ctx: &Ctx, decision: &Decision) -> Result<Response, AppError> {
    let storage = &ctx.app.storage;
    let existing = storage.meta.get(&ctx.repo.name, &decision.key).await?;
    if let Some(record) = &existing {
        if fresh(record, now_secs()) || ctx.is_head() {
            if let Some(response) = serve_record(ctx, decision, record, "cache").await? {
                return Ok(response);
            }
        }
    }
    let (url, headers) = upstream_request(ctx, decision).await?;
    if ctx.is_head() && !decision.rewrite {
        return head_upstream(ctx, decision, &url, &headers).await;
    }
    let ttl = if decision.mutable {
        Some(ctx.repo.entry.cache.mutable_ttl)
    } else {
        Some(ctx.repo.entry.cache.immutable_ttl).filter(|ttl| *ttl > 0)
    };
    let job = FillJob {
        storage: storage.clone(),
        client: ctx.app.http.clone(),
        url,
        headers,
        record: ObjectRecord {
            repo: ctx.repo.name.clone(),
            path: decision.key.clone(),
            digest: String::new(),
            size: 0,
            content_type: decision
                .content_type
                .clone()
                .unwrap_or_else(|| "application/octet-stream".into()),
            origin: Origin::Remote,
            mutable: decision.mutable,
            stored_at: now_secs(),
            expires_at: None,
            upstream_etag: None,
            upstream_last_modified: None,
        },
        ttl,
        expected: None,
    };
    let fill = ctx
        .app
        .fills
        .join_or_start(format!("{}/{}", ctx.repo.name, decision.key), job);
    if decision.rewrite {
        return match fill.finished().await {
            Ok(record) => serve_record(ctx, decision, &record, "remote")
                .await?
                .ok_or_else(|| AppError::internal("object vanished after its fill")),
            Err(e) => stale_or_error(ctx, decision, existing.as_ref(), e).await,
        };
    }
    match fill.started().await {
        FillState::Streaming { .. } => {
            let head = fill.head().cloned();
            let content_type = head
                .as_ref()
                .and_then(|h| h.content_type.clone())
                .or_else(|| decision.content_type.clone())
                .unwrap_or_else(|| "application/octet-stream".into());
            let mut builder = Response::builder()
                .status(StatusCode::OK)
                .header(header::CONTENT_TYPE, content_type)
                .header(SOURCE_HEADER, "remote");
            if let Some(len) = head.and_then(|h| h.content_length) {
                builder = builder.header(header::CONTENT_LENGTH, len);
            }
            if let Some(plugin) = &decision.plugin {
                builder = builder.header(PLUGIN_HEADER, plugin.label());
            }
            builder
                .body(Body::from_stream(fill.body()))
                .map_err(AppError::internal)
        }
        FillState::Done { record } => serve_record(ctx, decision, &record, "remote")
            .await?
            .ok_or_else(|| AppError::internal("object vanished after its fill")),
        FillState::Failed(e) => stale_or_error(ctx, decision, existing.as_ref(), e).await,
        FillState::Connecting => Err(AppError::internal("fill reported no progress")),
    }
}

/// The upstream URL and headers for a request: the plugin's, or
/// `base_url/path` for generic repositories.
async fn upstream_request(
    ctx: &Ctx,
    decision: &Decision,
) -> Result<(String, Vec<(String, String)>), AppError> {
    let base = ctx
        .repo
        .base_url
        .as_deref()
        .ok_or_else(|| AppError::internal("remote repository without base_url"))?;
    let (url, mut headers) = match &decision.plugin {
        None => {
            let mut url = format!("{base}/{}", ctx.target.raw_path);
            if !ctx.target.query.is_empty() {
                url.push('?');
                url.push_str(&ctx.target.query);
            }
            (url, Vec::new())
        }
        Some(plugin) => {
            let outcome = ctx
                .app
                .plugins
                .prepare_upstream(
                    plugin,
                    ctx.scope(plugin),
                    ctx.repo_context(),
                    ctx.request_info(),
                )
                .await;
            let request = plugin_answer(plugin, outcome)?;
            let allowed = crate::config::origin_of(&request.url)
                .is_some_and(|origin| ctx.repo.upstream_origins().contains(&origin));
            if !allowed {
                return Err(AppError::new(
                    StatusCode::BAD_GATEWAY,
                    "PLUGIN_FAILED",
                    format!(
                        "plugin {} asked for {:?}, which is not an upstream of repository {}",
                        plugin.label(),
                        request.url,
                        ctx.repo.name
                    ),
                ));
            }
            let headers = request
                .headers
                .into_iter()
                .map(|h| (h.name, h.value))
                .collect();
            (request.url, headers)
        }
    };
    if let (Some(user), Some(password)) = (&ctx.repo.entry.username, &ctx.repo.entry.password) {
        use base64::Engine as _;
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        headers.push(("authorization".into(), format!("Basic {token}")));
    }
    Ok((url, headers))
}

/// A HEAD for an object not in the cache: asks the upstream, stores nothing.
async fn head_upstream(
    ctx: &Ctx,
    decision: &Decision,
    url: &str,
    headers: &[(String, String)],
) -> Result<Response, AppError> {
    let mut request = ctx.app.http.head(url);
    for (name, value) in headers {
        request = request.header(name, value);
    }
    let upstream = request
        .send()
        .await
        .map_err(|e| upstream_error(ctx, &FillError::Unreachable(e.to_string())))?;
    let status = upstream.status().as_u16();
    if status != 200 {
        return Err(upstream_error(ctx, &FillError::Status(status)));
    }
    let mut builder = Response::builder()
        .status(StatusCode::OK)
        .header(SOURCE_HEADER, "remote");
    let content_type = upstream
        .headers()
        .get(header::CONTENT_TYPE)
        .cloned()
        .or_else(|| {
            decision
                .content_type
                .as_deref()
                .and_then(|t| HeaderValue::from_str(t).ok())
        })
        .unwrap_or(HeaderValue::from_static("application/octet-stream"));
    builder = builder.header(header::CONTENT_TYPE, content_type);
    for name in [header::CONTENT_LENGTH, header::LAST_MODIFIED] {
        if let Some(value) = upstream.headers().get(&name) {
            builder = builder.header(name, value);
        }
    }
    if let Some(plugin) = &decision.plugin {
        builder = builder.header(PLUGIN_HEADER, plugin.label());
    }
    builder.body(Body::empty()).map_err(AppError::internal)
}

fn upstream_error(ctx: &Ctx, error: &FillError) -> AppError {
    let repo = &ctx.repo.name;
    let path = &ctx.target.path;
    match error {
        FillError::Status(404 | 410) => AppError::not_found(format!(
            "{path} was not found upstream of repository {repo}"
        )),
        FillError::Status(status) => AppError::new(
            StatusCode::BAD_GATEWAY,
            "UPSTREAM_ERROR",
            format!("the upstream of repository {repo} answered {status} for {path}"),
        ),
        FillError::Unreachable(e) => AppError::new(
            StatusCode::BAD_GATEWAY,
            "UPSTREAM_UNREACHABLE",
            format!("the upstream of repository {repo} is unreachable: {e}"),
        ),
        FillError::Broken(e) => AppError::new(
            StatusCode::BAD_GATEWAY,
            "UPSTREAM_ERROR",
            format!("fetching {path} for repository {repo} failed: {e}"),
        ),
    }
}

/// After a failed fill: the stale copy if the upstream is down, else the error.
async fn stale_or_error(
    ctx: &Ctx,
    decision: &Decision,
    existing: Option<&ObjectRecord>,
    error: FillError,
) -> Result<Response, AppError> {
    let upstream_down = match &error {
        FillError::Unreachable(_) => true,
        FillError::Status(status) => *status == 429 || *status >= 500,
        FillError::Broken(_) => false,
    };
    if let (true, Some(record)) = (upstream_down, existing) {
        tracing::warn!(
            repo = %ctx.repo.name,
            path = %ctx.target.path,
            error = %error,
            "serving a stale copy: the upstream is failing"
        );
        if let Some(mut response) = serve_record(ctx, decision, record, "cache").await? {
            response.headers_mut().insert(
                header::WARNING,
                HeaderValue::from_static("110 artifactapi \"Response is Stale\""),
            );
            return Ok(response);
        }
    }
    Err(upstream_error(ctx, &error))
}

fn etag(record: &ObjectRecord) -> String {
    format!("\"sha256:{}\"", record.digest)
}

fn not_modified(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"))
}

/// Serves a stored object, through the plugin's rewrite if it is an index.
/// None when the blob is missing from storage (the caller fetches again).
async fn serve_record(
    ctx: &Ctx,
    decision: &Decision,
    record: &ObjectRecord,
    source: &'static str,
) -> Result<Option<Response>, AppError> {
    let digest = Digest::parse(&record.digest)
        .ok_or_else(|| AppError::internal(format!("bad digest in metadata: {}", record.digest)))?;
    if decision.rewrite {
        if let Some(plugin) = &decision.plugin {
            return rewrite(ctx, plugin, record, &digest, source).await;
        }
    }
    let etag = etag(record);
    let last_modified = record
        .upstream_last_modified
        .clone()
        .unwrap_or_else(|| httpdate::fmt_http_date(system_time(record.stored_at)));
    let mut builder = Response::builder()
        .header(header::CONTENT_TYPE, &record.content_type)
        .header(header::ETAG, &etag)
        .header(header::LAST_MODIFIED, last_modified)
        .header(SOURCE_HEADER, source);
    if let Some(plugin) = &decision.plugin {
        builder = builder.header(PLUGIN_HEADER, plugin.label());
    }
    if not_modified(&ctx.headers, &etag) {
        return builder
            .status(StatusCode::NOT_MODIFIED)
            .body(Body::empty())
            .map(Some)
            .map_err(AppError::internal);
    }
    builder = builder
        .status(StatusCode::OK)
        .header(header::CONTENT_LENGTH, record.size);
    if ctx.is_head() {
        if ctx.app.storage.cas.size(&digest).await?.is_none() {
            return Ok(None);
        }
        return builder
            .body(Body::empty())
            .map(Some)
            .map_err(AppError::internal);
    }
    let Some(body) = ctx.app.storage.cas.open(&digest, None).await? else {
        tracing::warn!(repo = %record.repo, path = %record.path, digest = %digest, "recorded blob is missing; fetching again");
        return Ok(None);
    };
    builder
        .body(Body::from_stream(body.into_stream()))
        .map(Some)
        .map_err(AppError::internal)
}

async fn rewrite(
    ctx: &Ctx,
    plugin: &Arc<LoadedPlugin>,
    record: &ObjectRecord,
    digest: &Digest,
    source: &'static str,
) -> Result<Option<Response>, AppError> {
    let cap = ctx.app.plugins.limits().index_size;
    if record.size > cap {
        return Err(AppError::new(
            StatusCode::BAD_GATEWAY,
            "INDEX_TOO_LARGE",
            format!(
                "the index document is {} bytes, over the {cap} byte limit",
                record.size
            ),
        ));
    }
    let Some(bytes) = ctx.app.storage.cas.read_capped(digest, cap).await? else {
        return Ok(None);
    };
    let document = Document {
        content_type: record.content_type.clone(),
        body: bytes.to_vec(),
    };
    let outcome = ctx
        .app
        .plugins
        .rewrite_index(
            plugin,
            ctx.scope(plugin),
            ctx.repo_context(),
            ctx.request_info(),
            document,
            IndexOptions {
                hide_published_after: None,
            },
        )
        .await;
    let rewritten = plugin_answer(plugin, outcome)?;
    let body = rewritten.document.body;
    let mut response = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, rewritten.document.content_type)
        .header(header::CONTENT_LENGTH, body.len())
        .header(SOURCE_HEADER, source)
        .header(PLUGIN_HEADER, plugin.label());
    if ctx.is_head() {
        return response
            .body(Body::empty())
            .map(Some)
            .map_err(AppError::internal);
    }
    response = response.header(header::CACHE_CONTROL, "no-cache");
    response
        .body(Body::from(body))
        .map(Some)
        .map_err(AppError::internal)
}

fn system_time(secs: i64) -> std::time::SystemTime {
    std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs.max(0) as u64)
}

/// `PUT`: stores the body under the path, verifying `X-Checksum-Sha256` and
/// `Content-Length` when sent.
async fn upload(ctx: &Ctx, body: Body) -> Result<Response, AppError> {
    let path = &ctx.target.path;
    if path.is_empty() || path.ends_with('/') {
        return Err(AppError::bad_request("a file path is required"));
    }
    let decision = decide(ctx).await?;
    let expected =
        match ctx.headers.get(CHECKSUM_HEADER) {
            Some(value) => Some(value.to_str().ok().and_then(Digest::parse).ok_or_else(|| {
                AppError::bad_request(format!("{CHECKSUM_HEADER} is not a sha256"))
            })?),
            None => None,
        };
    let declared: Option<u64> = ctx
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let storage = &ctx.app.storage;
    let mut spool = storage.cas.spool().await.map_err(AppError::internal)?;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            AppError::new(
                StatusCode::BAD_REQUEST,
                "UPLOAD_INCOMPLETE",
                format!("the upload broke off: {e}"),
            )
        })?;
        spool.append(&chunk).await.map_err(AppError::internal)?;
    }
    let finished = spool.finish().await.map_err(AppError::internal)?;
    if let Some(declared) = declared.filter(|d| *d != finished.size) {
        return Err(AppError::new(
            StatusCode::BAD_REQUEST,
            "UPLOAD_INCOMPLETE",
            format!("received {} of {declared} bytes", finished.size),
        ));
    }
    if let Some(expected) = expected.filter(|d| *d != finished.digest) {
        return Err(AppError::new(
            StatusCode::BAD_REQUEST,
            "DIGEST_MISMATCH",
            format!("the body's digest is {}, not {expected}", finished.digest),
        ));
    }
    let size = finished.size;
    let digest = storage.cas.commit(finished).await?;
    let content_type = ctx
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or(decision.content_type)
        .unwrap_or_else(|| "application/octet-stream".into());
    let record = ObjectRecord {
        repo: ctx.repo.name.clone(),
        path: decision.key,
        digest: digest.hex(),
        size,
        content_type,
        origin: Origin::Local,
        mutable: decision.mutable,
        stored_at: now_secs(),
        expires_at: None,
        upstream_etag: None,
        upstream_last_modified: None,
    };
    storage.meta.put(&record).await?;
    tracing::info!(repo = %record.repo, path = %record.path, digest = %digest, size, "stored upload");
    let body = json!({
        "repo": record.repo,
        "path": record.path,
        "sha256": digest.hex(),
        "digest": digest.to_string(),
        "size": size,
    });
    Ok((StatusCode::CREATED, axum::Json(body)).into_response())
}

/// `DELETE`: removes the path from a local repository.
async fn delete(ctx: &Ctx) -> Result<Response, AppError> {
    let decision = decide(ctx).await?;
    match ctx
        .app
        .storage
        .meta
        .delete(&ctx.repo.name, &decision.key)
        .await?
    {
        Some(record) => {
            tracing::info!(repo = %record.repo, path = %record.path, "deleted");
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        None => Err(AppError::not_found(format!(
            "{} is not in repository {}",
            ctx.target.path, ctx.repo.name
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(path: &str) -> Result<Target, AppError> {
        parse_target(&path.parse().unwrap())
    }

    #[test]
    fn traversal_is_refused_encoded_or_not() {
        for bad in [
            "/api/v1/remote/r/a/../b",
            "/api/v1/remote/r/a/%2e%2e/b",
            "/api/v1/remote/r/a/%2E%2E%2Fb",
            "/api/v1/remote/r/..",
            "/api/v1/remote/r/a/..%5cb",
            "/api/v1/remote/r/a%2f..%2fb",
        ] {
            let err = target(bad)
                .err()
                .unwrap_or_else(|| panic!("{bad} accepted"));
            assert_eq!(err.status, StatusCode::BAD_REQUEST, "{bad}");
        }
    }

    #[test]
    fn paths_are_decoded() {
        let t = target("/api/v1/remote/npm/@scope%2fname?x=1").unwrap();
        assert_eq!(t.repo, "npm");
        assert_eq!(t.path, "@scope/name");
        assert_eq!(t.raw_path, "@scope%2fname");
        assert_eq!(t.query, "x=1");
    }
}
