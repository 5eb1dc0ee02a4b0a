//! Remote repositories: serve from the cache while fresh, otherwise fill it
//! from the upstream (one fetch per object) and stream the body through.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;

use super::{plugin_answer, quarantine, serve_record, Ctx, Decision, PLUGIN_HEADER, SOURCE_HEADER};
use crate::error::AppError;
use crate::fill::{negative_key, upstream_failure, Fill, FillError, FillJob, FillState};
use crate::storage::{Digest, ObjectRecord, Origin};
use crate::upstream_auth::{Credentials, Upstream};
use crate::util::now_secs;

/// How long a failing upstream is left alone while stale copies are served.
const STALE_BACKOFF: Duration = Duration::from_secs(10);

fn fresh(record: &ObjectRecord, now: i64) -> bool {
    record.expires_at.is_none_or(|at| at > now)
}

/// Refuses an immutable file still in quarantine (mutable indexes and tags
/// never are: their entries are filtered instead).
async fn quarantined(
    ctx: &Ctx,
    decision: &Decision,
    last_modified: Option<&str>,
) -> Result<(), AppError> {
    if decision.mutable || decision.rewrite {
        return Ok(());
    }
    quarantine::check(ctx, last_modified).await
}

fn backoff_key(repo: &str, key: &str) -> String {
    format!("backoff/{repo}/{key}")
}

/// What to do with a stored copy.
#[derive(PartialEq)]
enum Standing {
    /// Serve it: it is fresh.
    Fresh,
    /// Serve it as stale: it expired while its upstream is in back-off.
    Stale,
    /// Ask the upstream.
    Expired,
}

async fn standing(ctx: &Ctx, record: &ObjectRecord) -> Result<Standing, AppError> {
    if fresh(record, now_secs()) {
        return Ok(Standing::Fresh);
    }
    let key = backoff_key(&ctx.repo.name, &record.path);
    Ok(match ctx.app.storage.cache.get(&key).await? {
        Some(_) => Standing::Stale,
        None => Standing::Expired,
    })
}

/// Answers a GET or HEAD on a remote repository.
pub(super) async fn read_remote(ctx: &Ctx, decision: &Decision) -> Result<Response, AppError> {
    let mut existing = ctx
        .app
        .storage
        .meta
        .get(&ctx.repo.name, &decision.key)
        .await?;
    if let Some(record) = &existing {
        let standing = standing(ctx, record).await?;
        if ctx.is_head() || standing != Standing::Expired {
            quarantined(ctx, decision, record.upstream_last_modified.as_deref()).await?;
            match serve_record(ctx, decision, record, "cache").await? {
                Some(mut response) => {
                    if standing == Standing::Stale {
                        mark_stale(&mut response);
                    }
                    return Ok(response);
                }
                // The blob is gone: fetch it again rather than revalidate.
                None => existing = None,
            }
        }
    }
    if decision.rewrite {
        let (record, source, stale) = remote_record(ctx, decision).await?;
        let mut response = serve_record(ctx, decision, &record, source)
            .await?
            .ok_or_else(|| AppError::internal("object vanished after its fill"))?;
        if stale {
            mark_stale(&mut response);
        }
        return Ok(response);
    }
    if ctx.is_head() {
        refuse_if_missing_upstream(ctx, decision).await?;
        let (url, headers) = upstream_request(ctx, decision).await?;
        return head_upstream(ctx, decision, &url, &headers).await;
    }
    let fill = start_fill(ctx, decision, existing.as_ref()).await?;
    match fill.started().await {
        FillState::Streaming { .. } => {
            let head = fill.head().cloned();
            let modified = head.as_ref().and_then(|h| h.last_modified.as_deref());
            quarantined(ctx, decision, modified).await?;
            let content_type = head
                .as_ref()
                .and_then(|h| h.content_type.clone())
                .or_else(|| decision.content_type.clone())
                .unwrap_or_else(|| "application/octet-stream".into());
            let mut builder = Response::builder()
                .status(StatusCode::OK)
                .header(header::CONTENT_TYPE, content_type)
                .header(SOURCE_HEADER, "remote");
            if let Some(head) = head {
                if let Some(len) = head.content_length {
                    builder = builder.header(header::CONTENT_LENGTH, len);
                }
                if let Some(modified) = head.last_modified {
                    builder = builder.header(header::LAST_MODIFIED, modified);
                }
            }
            if let Some(plugin) = &decision.plugin {
                builder = builder.header(PLUGIN_HEADER, plugin.label());
            }
            builder
                .body(Body::from_stream(fill.body()))
                .map_err(AppError::internal)
        }
        FillState::Done { record } => {
            quarantined(ctx, decision, record.upstream_last_modified.as_deref()).await?;
            serve_record(ctx, decision, &record, source(existing.as_ref(), &record))
                .await?
                .ok_or_else(|| AppError::internal("object vanished after its fill"))
        }
        FillState::Failed(e) => match usable_stale(ctx, existing.as_ref(), &e) {
            Some(record) => {
                let mut response = serve_record(ctx, decision, record, "cache")
                    .await?
                    .ok_or_else(|| upstream_error(ctx, &e))?;
                mark_stale(&mut response);
                Ok(response)
            }
            None => Err(upstream_error(ctx, &e)),
        },
        FillState::Connecting => Err(AppError::internal("fill reported no progress")),
    }
}

/// The stored record of a remote object, fetching it first unless a fresh
/// copy is stored: (record, `cache` or `remote`, whether it is a stale copy
/// served because the upstream failed).
pub(super) async fn remote_record(
    ctx: &Ctx,
    decision: &Decision,
) -> Result<(ObjectRecord, &'static str, bool), AppError> {
    let storage = &ctx.app.storage;
    let mut existing = storage.meta.get(&ctx.repo.name, &decision.key).await?;
    if let Some(record) = &existing {
        let present = match Digest::parse(&record.digest) {
            Some(digest) => storage.cas.size(&digest).await?.is_some(),
            None => false,
        };
        if !present {
            existing = None;
        } else {
            match standing(ctx, record).await? {
                Standing::Fresh => return Ok((record.clone(), "cache", false)),
                Standing::Stale => return Ok((record.clone(), "cache", true)),
                Standing::Expired => {}
            }
        }
    }
    let fill = start_fill(ctx, decision, existing.as_ref()).await?;
    match fill.finished().await {
        Ok(record) => {
            let source = source(existing.as_ref(), &record);
            Ok((record, source, false))
        }
        Err(e) => match usable_stale(ctx, existing.as_ref(), &e) {
            Some(record) => Ok((record.clone(), "cache", true)),
            None => Err(upstream_error(ctx, &e)),
        },
    }
}

/// `cache` when a fill only revalidated the copy already stored.
fn source(existing: Option<&ObjectRecord>, record: &ObjectRecord) -> &'static str {
    let same = existing
        .is_some_and(|old| old.digest == record.digest && old.stored_at == record.stored_at);
    if same {
        "cache"
    } else {
        "remote"
    }
}

/// 404 without asking the upstream when it said 404 for this object lately.
async fn refuse_if_missing_upstream(ctx: &Ctx, decision: &Decision) -> Result<(), AppError> {
    let key = negative_key(&ctx.repo.name, &decision.key);
    if ctx.app.storage.cache.get(&key).await?.is_some() {
        return Err(upstream_error(ctx, &FillError::Status(404)));
    }
    Ok(())
}

/// Joins the fill of this object, or starts one; `existing` is an expired
/// copy to revalidate.
async fn start_fill(
    ctx: &Ctx,
    decision: &Decision,
    existing: Option<&ObjectRecord>,
) -> Result<Arc<Fill>, AppError> {
    refuse_if_missing_upstream(ctx, decision).await?;
    let (url, headers) = upstream_request(ctx, decision).await?;
    let cache = &ctx.repo.entry.cache;
    let revalidate = existing
        .filter(|_| ctx.repo.entry.check_mutable_updates != Some(false))
        .filter(|old| {
            decision.head_revalidate
                || old.upstream_etag.is_some()
                || old.upstream_last_modified.is_some()
        })
        .cloned();
    let ttl = if decision.mutable {
        Some(cache.mutable_ttl)
    } else {
        Some(cache.immutable_ttl).filter(|ttl| *ttl > 0)
    };
    let job = FillJob {
        storage: ctx.app.storage.clone(),
        upstream: upstream(ctx, decision),
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
        revalidate,
        fetched: ctx.app.stats.repo(&ctx.repo.name),
        negative_ttl: Some(Duration::from_secs(cache.negative_ttl)).filter(|t| !t.is_zero()),
        expected: decision.expected.clone(),
        head_revalidate: decision.head_revalidate,
    };
    Ok(ctx
        .app
        .fills
        .join_or_start(format!("{}/{}", ctx.repo.name, decision.key), job))
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
    let (url, headers) = match &decision.plugin {
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
    Ok((url, headers))
}

/// The repository's upstream with its credentials; challenges are
/// remembered per repository and access name (a docker image).
fn upstream(ctx: &Ctx, decision: &Decision) -> Upstream {
    let entry = &ctx.repo.entry;
    let credentials = match (&entry.username, &entry.password) {
        (Some(username), Some(password)) => Some(Credentials {
            username: username.clone(),
            password: password.clone(),
        }),
        _ => None,
    };
    Upstream {
        client: ctx.app.http.clone(),
        auth: ctx.app.upstream_auth.clone(),
        credentials,
        scope_key: format!(
            "{}/{}",
            ctx.repo.name,
            decision.access_name.as_deref().unwrap_or("")
        ),
        preemptive: !decision.await_challenge,
    }
}

/// A HEAD for an object not in the cache: asks the upstream, stores nothing.
async fn head_upstream(
    ctx: &Ctx,
    decision: &Decision,
    url: &str,
    headers: &[(String, String)],
) -> Result<Response, AppError> {
    let upstream = upstream(ctx, decision)
        .send(reqwest::Method::HEAD, url, headers)
        .await
        .map_err(|e| upstream_error(ctx, &upstream_failure(e)))?;
    let status = upstream.status().as_u16();
    if status != 200 {
        return Err(upstream_error(ctx, &FillError::Status(status)));
    }
    let modified = upstream
        .headers()
        .get(header::LAST_MODIFIED)
        .and_then(|v| v.to_str().ok());
    quarantined(ctx, decision, modified).await?;
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

/// The stored copy to serve after a failed fill: only when the upstream is
/// down (unreachable, 5xx, 429), never for a 404 or a broken body.
fn usable_stale<'a>(
    ctx: &Ctx,
    existing: Option<&'a ObjectRecord>,
    error: &FillError,
) -> Option<&'a ObjectRecord> {
    let upstream_down = match error {
        FillError::Unreachable(_) => true,
        FillError::Status(status) => *status == 429 || *status >= 500,
        FillError::Broken(_) => false,
    };
    let record = existing.filter(|_| upstream_down)?;
    let backoff = backoff_key(&ctx.repo.name, &record.path);
    let cache = ctx.app.storage.cache.clone();
    tokio::spawn(async move {
        if let Err(e) = cache
            .set(&backoff, bytes::Bytes::new(), STALE_BACKOFF)
            .await
        {
            tracing::warn!(error = %e, "cannot record an upstream back-off");
        }
    });
    tracing::warn!(
        repo = %ctx.repo.name,
        path = %ctx.target.path,
        error = %error,
        "serving a stale copy: the upstream is failing"
    );
    Some(record)
}

pub(super) fn mark_stale(response: &mut Response) {
    response.headers_mut().insert(
        header::WARNING,
        HeaderValue::from_static("110 artifactapi \"Response is Stale\""),
    );
}
