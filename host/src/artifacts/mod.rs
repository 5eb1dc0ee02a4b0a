//! `/api/v1/remote/{repo}/{path}`: reading from every kind of repository,
//! uploading to and deleting from local ones.

mod index;
mod local;
pub mod oci;
mod quarantine;
mod remote;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::Response;
use percent_encoding::percent_decode_str;

use crate::config::{Config, Repo, RepoKind};
use crate::error::AppError;
use crate::plugins::{
    CallFailure, CallScope, Classification, Header, LoadedPlugin, Mutability, PluginError,
    RepoContext, RequestInfo,
};
use crate::server::App;
use crate::storage::{Digest, ObjectRecord};

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
    /// The repository the client addressed (a virtual one while its members
    /// are consulted): links in index documents lead back to it.
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
    /// The digest a fetched body must have, when the request names one.
    expected: Option<Digest>,
    /// Revalidate an expired copy with a HEAD comparing the upstream's
    /// `Docker-Content-Digest` (a registry tag) instead of a conditional GET.
    head_revalidate: bool,
    /// The name access patterns matched besides the path (a docker image).
    access_name: Option<String>,
    /// Send upstream credentials only when a challenge asks for them (a
    /// registry that may want a token instead).
    await_challenge: bool,
}

/// Answers one request under `/api/v1/remote/` or `/api/v1/virtual/`.
pub async fn handle(app: Arc<App>, request: Request) -> Result<Response, AppError> {
    let (parts, body) = request.into_parts();
    let target = parse_target(&parts.uri)?;
    let config = app.config.load_full();
    let principal = app.auth.identify(&config, &parts.headers)?;
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
    if ctx.repo.package() == "docker" {
        // The registry protocol (digests, tag bans, manifest checks) lives
        // on /v2; a raw path here would bypass it.
        return Err(AppError::new(
            StatusCode::NOT_FOUND,
            "USE_REGISTRY_API",
            format!(
                "{} is a docker repository: use the registry API at /v2/{}/<image>/…",
                ctx.repo.name, ctx.repo.name
            ),
        ));
    }
    let (config, name) = (&ctx.config, &ctx.repo.name);
    match (ctx.repo.kind(), &ctx.method) {
        (_, &Method::GET | &Method::HEAD) => {
            crate::auth::require_read(config, &principal, name)?;
            read(&ctx).await
        }
        (RepoKind::Local, &Method::PUT) => {
            crate::auth::require_write(config, &principal, name)?;
            local::upload(&ctx, body).await
        }
        (RepoKind::Local, &Method::DELETE) => {
            crate::auth::require_write(config, &principal, name)?;
            local::delete(&ctx).await
        }
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
                repo: self.target.repo.clone(),
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
        format!("{scheme}://{host}/api/v1/remote/{}", self.target.repo)
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
            expected: None,
            head_revalidate: false,
            access_name: None,
            await_challenge: false,
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
            expected: None,
            head_revalidate: false,
            access_name: access_name.clone(),
            await_challenge: false,
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
            remote::read_remote(ctx, &decision).await
        }
        RepoKind::Virtual => read_virtual(ctx).await,
    }
}

/// Serves an index merged from the members, or a file from the first
/// member that has it.
async fn read_virtual(ctx: &Ctx) -> Result<Response, AppError> {
    let decision = decide(ctx).await?;
    if decision.rewrite {
        return index::merged(ctx, &decision).await;
    }
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

fn etag(record: &ObjectRecord) -> String {
    format!("\"sha256:{}\"", record.digest)
}

/// Whether the client's copy is current: `If-None-Match` decides when sent,
/// else `If-Modified-Since` against `last_modified`.
fn not_modified(headers: &HeaderMap, etag: &str, last_modified: &str) -> bool {
    let text = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    if let Some(tags) = text(header::IF_NONE_MATCH) {
        return tags.split(',').any(|t| t.trim() == etag || t.trim() == "*");
    }
    let since = text(header::IF_MODIFIED_SINCE).and_then(|v| httpdate::parse_http_date(v).ok());
    let modified = httpdate::parse_http_date(last_modified).ok();
    matches!((since, modified), (Some(since), Some(modified)) if modified <= since)
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
    if source != "remote" {
        ctx.app.storage.meta.record_hit(&record.repo, &record.path);
    }
    if decision.rewrite {
        if let Some(plugin) = &decision.plugin {
            return match index::rewrite_document(ctx, plugin, record).await? {
                Some(document) => index::document_response(ctx, plugin, document, source)
                    .await
                    .map(Some),
                None => Ok(None),
            };
        }
    }
    let etag = etag(record);
    let last_modified = record
        .upstream_last_modified
        .clone()
        .unwrap_or_else(|| httpdate::fmt_http_date(system_time(record.stored_at)));
    let fresh_for_client = not_modified(&ctx.headers, &etag, &last_modified);
    let mut builder = Response::builder()
        .header(header::CONTENT_TYPE, &record.content_type)
        .header(header::ETAG, &etag)
        .header(header::LAST_MODIFIED, last_modified)
        .header(SOURCE_HEADER, source);
    if let Some(plugin) = &decision.plugin {
        builder = builder.header(PLUGIN_HEADER, plugin.label());
    }
    if fresh_for_client {
        return builder
            .status(StatusCode::NOT_MODIFIED)
            .body(Body::empty())
            .map(Some)
            .map_err(AppError::internal);
    }
    builder = builder.header(header::ACCEPT_RANGES, "bytes");
    let range = match requested_range(&ctx.headers, &etag, record.size) {
        Ok(range) => range,
        Err(()) => {
            return builder
                .status(StatusCode::RANGE_NOT_SATISFIABLE)
                .header(header::CONTENT_RANGE, format!("bytes */{}", record.size))
                .body(Body::empty())
                .map(Some)
                .map_err(AppError::internal);
        }
    };
    builder = match &range {
        Some(range) => builder
            .status(StatusCode::PARTIAL_CONTENT)
            .header(
                header::CONTENT_RANGE,
                format!("bytes {}-{}/{}", range.start, range.end - 1, record.size),
            )
            .header(header::CONTENT_LENGTH, range.end - range.start),
        None => builder
            .status(StatusCode::OK)
            .header(header::CONTENT_LENGTH, record.size),
    };
    if ctx.is_head() {
        if ctx.app.storage.cas.size(&digest).await?.is_none() {
            return Ok(None);
        }
        return builder
            .body(Body::empty())
            .map(Some)
            .map_err(AppError::internal);
    }
    let Some(body) = ctx.app.storage.cas.open(&digest, range).await? else {
        tracing::warn!(repo = %record.repo, path = %record.path, digest = %digest, "recorded blob is missing; fetching again");
        return Ok(None);
    };
    builder
        .body(Body::from_stream(body.into_stream()))
        .map(Some)
        .map_err(AppError::internal)
}

/// The byte range a `Range` header asks of an object of `size` bytes: None
/// for the whole object (no header, several ranges, another unit, or an
/// `If-Range` that no longer matches), Err when nothing of it can be sent.
fn requested_range(
    headers: &HeaderMap,
    etag: &str,
    size: u64,
) -> Result<Option<std::ops::Range<u64>>, ()> {
    let Some(value) = headers.get(header::RANGE).and_then(|v| v.to_str().ok()) else {
        return Ok(None);
    };
    if let Some(if_range) = headers.get(header::IF_RANGE).and_then(|v| v.to_str().ok()) {
        if if_range.trim() != etag {
            return Ok(None);
        }
    }
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let Some((first, last)) = spec.split_once('-') else {
        return Ok(None);
    };
    let (first, last) = (first.trim(), last.trim());
    let range = if first.is_empty() {
        let Ok(suffix) = last.parse::<u64>() else {
            return Ok(None);
        };
        if suffix == 0 {
            return Err(());
        }
        size.saturating_sub(suffix)..size
    } else {
        let Ok(start) = first.parse::<u64>() else {
            return Ok(None);
        };
        let end = if last.is_empty() {
            size
        } else {
            match last.parse::<u64>() {
                Ok(last) if last >= start => (last + 1).min(size),
                _ => return Ok(None),
            }
        };
        start..end
    };
    if range.start >= size {
        return Err(());
    }
    Ok(Some(range))
}

fn system_time(secs: i64) -> std::time::SystemTime {
    std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs.max(0) as u64)
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
    fn ranges() {
        let ask = |range: &str, if_range: Option<&str>| {
            let mut headers = HeaderMap::new();
            headers.insert(header::RANGE, range.parse().unwrap());
            if let Some(tag) = if_range {
                headers.insert(header::IF_RANGE, tag.parse().unwrap());
            }
            requested_range(&headers, "\"sha256:x\"", 100)
        };
        assert_eq!(ask("bytes=0-9", None), Ok(Some(0..10)));
        assert_eq!(ask("bytes=90-", None), Ok(Some(90..100)));
        assert_eq!(ask("bytes=-5", None), Ok(Some(95..100)));
        assert_eq!(ask("bytes=50-500", None), Ok(Some(50..100)));
        assert_eq!(ask("bytes=100-", None), Err(()));
        assert_eq!(ask("bytes=0-1,5-6", None), Ok(None));
        assert_eq!(ask("items=0-1", None), Ok(None));
        assert_eq!(ask("bytes=5-1", None), Ok(None));
        assert_eq!(ask("bytes=0-9", Some("\"other\"")), Ok(None));
        assert_eq!(ask("bytes=0-9", Some("\"sha256:x\"")), Ok(Some(0..10)));
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
