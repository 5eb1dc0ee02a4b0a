//! Remote repositories: serve from the cache while fresh, otherwise fill it
//! from the upstream (one fetch per object) and stream the body through.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;

use super::ctx::Ctx;
use super::decision::Decision;
use super::outcome::{Outcome, PLUGIN_HEADER};
use super::{index, quarantine, respond};
use crate::error::AppError;
use crate::fill::{upstream_failure, Fill, FillError, FillJob, FillState};
use crate::storage::{Key, ObjectRecord, Origin};
use crate::upstream_auth::{Credentials, Upstream};
use crate::util::now_secs;

/// How long a failing upstream is left alone while stale copies are served.
const STALE_BACKOFF: Duration = Duration::from_secs(10);

/// The stored copy of an object and what it is good for.
enum Freshness {
    /// Fresh: serve it.
    Fresh(ObjectRecord),
    /// Expired while its upstream is in back-off: serve it as stale.
    Stale(ObjectRecord),
    /// Expired: ask the upstream (revalidating it).
    Expired(ObjectRecord),
    /// Not stored.
    Missing,
}

/// Where the stored copy of the decided object stands.
async fn freshness(ctx: &Ctx, decision: &Decision) -> Result<Freshness, AppError> {
    let storage = &ctx.app.storage;
    let Some(record) = storage.meta.get(&ctx.repo.name, &decision.key).await? else {
        return Ok(Freshness::Missing);
    };
    if record.expires_at.is_none_or(|at| at > now_secs()) {
        return Ok(Freshness::Fresh(record));
    }
    let backoff = Key::Backoff {
        repo: &ctx.repo.name,
        key: &record.path,
    };
    Ok(match storage.cache.get(&backoff.to_string()).await? {
        Some(_) => Freshness::Stale(record),
        None => Freshness::Expired(record),
    })
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

/// Answers a GET or HEAD on a remote repository.
pub(super) async fn read(ctx: &Ctx, decision: &Decision) -> Result<Response, AppError> {
    if let (true, Some(call)) = (decision.rewrite, &decision.plugin) {
        let (record, outcome) = stored(ctx, decision, false).await?;
        let (record, outcome, rendered) = match index::rendered(ctx, call, &record).await? {
            Some(rendered) => (record, outcome, rendered),
            None => {
                let (record, outcome) = stored(ctx, decision, true).await?;
                let rendered = index::rendered(ctx, call, &record)
                    .await?
                    .ok_or_else(|| AppError::internal("index document vanished after its fill"))?;
                (record, outcome, rendered)
            }
        };
        return index::respond_stored(ctx, call, &record, &rendered, outcome);
    }
    let existing = match freshness(ctx, decision).await? {
        Freshness::Fresh(record) => serve_copy(ctx, decision, record, Outcome::Hit).await?,
        Freshness::Stale(record) => serve_copy(ctx, decision, record, Outcome::Stale).await?,
        Freshness::Expired(record) if ctx.is_head() => {
            serve_copy(ctx, decision, record, Outcome::Hit).await?
        }
        Freshness::Expired(record) => Err(Some(record)),
        Freshness::Missing => Err(None),
    };
    let existing = match existing {
        Ok(response) => return Ok(response),
        Err(existing) => existing,
    };
    if ctx.is_head() {
        refuse_if_missing_upstream(ctx, decision).await?;
        return head_upstream(ctx, decision).await;
    }
    let fill = start_fill(ctx, decision, existing.as_ref()).await?;
    match fill.started().await {
        FillState::Streaming { .. } => stream_fill(ctx, decision, &fill).await,
        FillState::Done { record } => {
            quarantined(ctx, decision, record.upstream_last_modified.as_deref()).await?;
            respond::file(ctx, decision, &record, filled(existing.as_ref(), &record))
                .await?
                .ok_or_else(|| AppError::internal("object vanished after its fill"))
        }
        FillState::Failed(e) => match usable_stale(ctx, existing.as_ref(), &e) {
            Some(record) => respond::file(ctx, decision, record, Outcome::Stale)
                .await?
                .ok_or_else(|| upstream_error(ctx, &e)),
            None => Err(upstream_error(ctx, &e)),
        },
        FillState::Connecting => Err(AppError::internal("fill reported no progress")),
    }
}

/// Serves a stored copy of a file: Ok with the answer, or Err with the
/// copy to revalidate (None when its blob is gone and it must be fetched
/// again).
async fn serve_copy(
    ctx: &Ctx,
    decision: &Decision,
    record: ObjectRecord,
    outcome: Outcome,
) -> Result<Result<Response, Option<ObjectRecord>>, AppError> {
    quarantined(ctx, decision, record.upstream_last_modified.as_deref()).await?;
    Ok(
        match respond::file(ctx, decision, &record, outcome).await? {
            Some(response) => Ok(response),
            None => Err(None),
        },
    )
}

/// Streams a fill's body to the client as it arrives.
async fn stream_fill(
    ctx: &Ctx,
    decision: &Decision,
    fill: &Arc<Fill>,
) -> Result<Response, AppError> {
    let head = fill.head().cloned();
    let modified = head.as_ref().and_then(|h| h.last_modified.as_deref());
    quarantined(ctx, decision, modified).await?;
    let content_type = head
        .as_ref()
        .and_then(|h| h.content_type.clone())
        .unwrap_or_else(|| fill_content_type(ctx, decision));
    let mut builder = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, content_type);
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
    let mut response = builder
        .body(Body::from_stream(fill.body()))
        .map_err(AppError::internal)?;
    Outcome::Miss.mark(&mut response);
    Ok(response)
}

/// The stored record of a remote object served whole from storage (an
/// index document, a manifest, a tag list), filling it first unless a fresh
/// copy is stored; `refetch` ignores the stored copy (its blob is gone).
pub(super) async fn stored(
    ctx: &Ctx,
    decision: &Decision,
    refetch: bool,
) -> Result<(ObjectRecord, Outcome), AppError> {
    let state = if refetch {
        Freshness::Missing
    } else {
        freshness(ctx, decision).await?
    };
    let existing = match state {
        Freshness::Fresh(record) => return Ok((record, Outcome::Hit)),
        Freshness::Stale(record) => return Ok((record, Outcome::Stale)),
        Freshness::Expired(record) => Some(record),
        Freshness::Missing => None,
    };
    let fill = start_fill(ctx, decision, existing.as_ref()).await?;
    match fill.finished().await {
        Ok(record) => {
            let outcome = filled(existing.as_ref(), &record);
            Ok((record, outcome))
        }
        Err(e) => match usable_stale(ctx, existing.as_ref(), &e) {
            Some(record) => Ok((record.clone(), Outcome::Stale)),
            None => Err(upstream_error(ctx, &e)),
        },
    }
}

/// Serves a remote object whole from storage through [`stored`], fetching
/// it again if its blob went missing: the answer, the record and how it
/// was got.
pub(super) async fn serve_stored(
    ctx: &Ctx,
    decision: &Decision,
) -> Result<(Response, ObjectRecord, Outcome), AppError> {
    let (record, outcome) = stored(ctx, decision, false).await?;
    if let Some(response) = respond::file(ctx, decision, &record, outcome).await? {
        return Ok((response, record, outcome));
    }
    let (record, outcome) = stored(ctx, decision, true).await?;
    let response = respond::file(ctx, decision, &record, outcome)
        .await?
        .ok_or_else(|| AppError::internal("object vanished after its fill"))?;
    Ok((response, record, outcome))
}

/// How a finished fill was got: a revalidation when it kept the copy
/// already stored, else a fetch.
fn filled(existing: Option<&ObjectRecord>, record: &ObjectRecord) -> Outcome {
    let same = existing
        .is_some_and(|old| old.digest == record.digest && old.stored_at == record.stored_at);
    if same {
        Outcome::Revalidated
    } else {
        Outcome::Miss
    }
}

/// 404 (or 410) without asking the upstream when it said so for this
/// object lately.
async fn refuse_if_missing_upstream(ctx: &Ctx, decision: &Decision) -> Result<(), AppError> {
    let key = Key::Negative {
        repo: &ctx.repo.name,
        key: &decision.key,
    };
    if let Some(remembered) = ctx.app.storage.cache.get(&key.to_string()).await? {
        // The value is the status the upstream gave (404 or 410).
        let status = std::str::from_utf8(&remembered)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(404);
        return Err(upstream_error(ctx, &FillError::Status(status)).with_outcome(Outcome::Negative));
    }
    Ok(())
}

/// The media type recorded when the upstream sends none.
fn fill_content_type(ctx: &Ctx, decision: &Decision) -> String {
    match &decision.content_type {
        Some(content_type) => content_type.clone(),
        None => respond::content_type_for(&ctx.target.path, None),
    }
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
            content_type: fill_content_type(ctx, decision),
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
        upstream_type_as_sent: decision.rewrite,
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
    let Some(call) = &decision.plugin else {
        let mut url = format!("{base}/{}", ctx.target.raw_path);
        if !ctx.target.query.is_empty() {
            url.push('?');
            url.push_str(&ctx.target.query);
        }
        return Ok((url, Vec::new()));
    };
    let request = call.prepare_upstream(ctx.public_headers()).await?;
    let allowed = crate::config::origin_of(&request.url)
        .is_some_and(|origin| ctx.repo.origins.contains(&origin));
    if !allowed {
        return Err(AppError::new(
            StatusCode::BAD_GATEWAY,
            "PLUGIN_FAILED",
            format!(
                "plugin {} asked for {:?}, which is not an upstream of repository {}",
                call.label(),
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
    Ok((request.url, headers))
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
async fn head_upstream(ctx: &Ctx, decision: &Decision) -> Result<Response, AppError> {
    let (url, headers) = upstream_request(ctx, decision).await?;
    let upstream = upstream(ctx, decision)
        .send(reqwest::Method::HEAD, &url, &headers)
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
    let content_type = match upstream.headers().get(header::CONTENT_TYPE) {
        Some(value) => value.clone(),
        None => HeaderValue::from_str(&fill_content_type(ctx, decision))
            .unwrap_or(HeaderValue::from_static("application/octet-stream")),
    };
    let mut builder = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, content_type);
    for name in [header::CONTENT_LENGTH, header::LAST_MODIFIED] {
        if let Some(value) = upstream.headers().get(&name) {
            builder = builder.header(name, value);
        }
    }
    if let Some(plugin) = &decision.plugin {
        builder = builder.header(PLUGIN_HEADER, plugin.label());
    }
    let mut response = builder.body(Body::empty()).map_err(AppError::internal)?;
    Outcome::Miss.mark(&mut response);
    Ok(response)
}

fn upstream_error(ctx: &Ctx, error: &FillError) -> AppError {
    let repo = &ctx.repo.name;
    let path = &ctx.target.path;
    match error {
        FillError::Status(404) => AppError::not_found(format!(
            "{path} was not found upstream of repository {repo}"
        )),
        // Kept apart from 404: clients such as go tell them apart.
        FillError::Status(410) => AppError::new(
            StatusCode::GONE,
            "GONE",
            format!("{path} is gone from the upstream of repository {repo}"),
        ),
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
    let backoff = Key::Backoff {
        repo: &ctx.repo.name,
        key: &record.path,
    }
    .to_string();
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
