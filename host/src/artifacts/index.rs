//! Index documents: rendered by the plugin for each client's form (links
//! lead back through the proxy the client used), memoised with their gzip
//! form and a strong ETag, so a hit renders nothing and a client holding
//! the current bytes gets a 304.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use sha2::{Digest as _, Sha256};

use super::ctx::Ctx;
use super::decision::PluginCall;
use super::memo::{MemoKey, Rendered};
use super::outcome::{Outcome, PLUGIN_HEADER};
use super::quarantine;
use super::respond::{accepts_gzip, gzip_fast, if_none_match, GZIP_MIN};
use crate::error::AppError;
use crate::plugins::{Document, IndexOptions};
use crate::storage::{Digest, ObjectRecord};
use crate::util::now_secs;

/// Why no rendering came of a memo miss.
enum RenderError {
    /// The raw document's blob is missing from storage.
    Missing,
    /// The rendering failed.
    Failed(AppError),
}

/// The key of `call`'s rendering of the raw document `digest`. A rendering
/// writes the publish times of files in quarantine to the shared cache, so
/// one made before that cache lost its keys is made again.
pub(super) fn render_key(ctx: &Ctx, call: &PluginCall, digest: &str) -> MemoKey {
    let mut key = call.memo_key("render");
    key.field(digest)
        .field(quarantine::window(ctx).unwrap_or(0).to_le_bytes())
        .field(ctx.app.storage.cache_epoch().to_le_bytes());
    key.finish()
}

/// Looks a rendering up; one that quarantine made out of date is dropped.
pub(super) async fn memoised(ctx: &Ctx, key: &MemoKey) -> Option<Arc<Rendered>> {
    let memo = &ctx.app.memos.rendered;
    let found = memo.get(key).await?;
    if found.current(now_secs()) {
        return Some(found);
    }
    memo.invalidate(key).await;
    None
}

/// The stored index document `record` rendered for this request's client:
/// from the memo, or rendered now (concurrent requests share one
/// rendering). None when the raw document's blob is missing.
pub(super) async fn rendered(
    ctx: &Ctx,
    call: &PluginCall,
    record: &ObjectRecord,
) -> Result<Option<Arc<Rendered>>, AppError> {
    let key = render_key(ctx, call, &record.digest);
    if let Some(found) = memoised(ctx, &key).await {
        return Ok(Some(found));
    }
    let outcome = ctx
        .app
        .memos
        .rendered
        .try_get_with(key, render(ctx, call, record))
        .await;
    match outcome {
        Ok(rendered) => Ok(Some(rendered)),
        Err(e) => match &*e {
            RenderError::Missing => Ok(None),
            RenderError::Failed(e) => Err(e.duplicate()),
        },
    }
}

async fn render(
    ctx: &Ctx,
    call: &PluginCall,
    record: &ObjectRecord,
) -> Result<Arc<Rendered>, RenderError> {
    let cap = ctx.app.plugins.limits().index_size;
    if record.size > cap {
        return Err(RenderError::Failed(AppError::new(
            StatusCode::BAD_GATEWAY,
            "INDEX_TOO_LARGE",
            format!(
                "the index document is {} bytes, over the {cap} byte limit",
                record.size
            ),
        )));
    }
    let digest = Digest::parse(&record.digest).ok_or_else(|| {
        RenderError::Failed(AppError::internal(format!(
            "bad digest in metadata: {}",
            record.digest
        )))
    })?;
    let bytes = ctx
        .app
        .storage
        .cas
        .read_capped(&digest, cap)
        .await
        .map_err(|e| RenderError::Failed(e.into()))?
        .ok_or(RenderError::Missing)?;
    let document = Document {
        content_type: record.content_type.clone(),
        body: bytes.to_vec(),
    };
    let cutoff = quarantine::cutoff(ctx);
    let options = IndexOptions {
        hide_published_after: cutoff.map(|t| t.max(0) as u64),
    };
    let task = call.clone();
    let rewritten = off_workers(async move { task.rewrite(document, options).await })
        .await
        .map_err(RenderError::Failed)?;
    quarantine::remember(ctx, &rewritten.published).await;
    // A document that is itself a publication (one version's metadata)
    // cannot leave itself out: it is refused while in quarantine.
    if let Some(cutoff) = cutoff {
        let own = rewritten
            .published
            .iter()
            .map(|p| (p.path.as_str(), p.published_at as i64))
            .find(|(path, at)| *path == ctx.target.path && *at > cutoff);
        if let Some((_, published)) = own {
            return Err(RenderError::Failed(quarantine::refusal(
                ctx, published, cutoff,
            )));
        }
    }
    let quarantine_stale_at = cutoff.and_then(|cutoff| {
        let window = quarantine::window(ctx)?;
        rewritten
            .published
            .iter()
            .map(|p| p.published_at as i64)
            .filter(|at| *at > cutoff)
            .min()
            .map(|at| at + window)
    });
    // Presigned links are renewed while they have half their life left.
    let links_stale_at = call
        .presigned()
        .then(|| now_secs() + crate::plugins::PRESIGN_TTL_SECS / 2);
    let stale_at = match (quarantine_stale_at, links_stale_at) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    finish(rewritten.document, stale_at)
        .await
        .map_err(RenderError::Failed)
}

/// Runs a plugin rendering on the blocking pool: a large document takes
/// milliseconds that the async workers owe to other requests.
pub(super) async fn off_workers<T: Send + 'static>(
    task: impl std::future::Future<Output = Result<T, AppError>> + Send + 'static,
) -> Result<T, AppError> {
    let handle = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || handle.block_on(task))
        .await
        .map_err(AppError::internal)?
}

/// A rendered document with its gzip form and ETags, computed once.
pub(super) async fn finish(
    document: Document,
    stale_at: Option<i64>,
) -> Result<Arc<Rendered>, AppError> {
    let content_type = HeaderValue::from_str(&document.content_type).map_err(|_| {
        AppError::new(
            StatusCode::BAD_GATEWAY,
            "PLUGIN_FAILED",
            format!("invalid content type {:?}", document.content_type),
        )
    })?;
    tokio::task::spawn_blocking(move || {
        let identity = Bytes::from(document.body);
        let hash = hex::encode(&Sha256::digest(&identity)[..16]);
        let gzip = if identity.len() as u64 >= GZIP_MIN {
            Some(Bytes::from(gzip_fast(&identity)?))
        } else {
            None
        };
        let etag = |text: String| HeaderValue::from_str(&text).map_err(std::io::Error::other);
        Ok::<_, std::io::Error>(Arc::new(Rendered {
            content_type,
            identity,
            gzip,
            etag: etag(format!("\"{hash}\""))?,
            gzip_etag: etag(format!("\"{hash}-gzip\""))?,
            stale_at,
        }))
    })
    .await
    .map_err(AppError::internal)?
    .map_err(AppError::internal)
}

/// Answers with the rendering of a stored document, counting a hit of the
/// stored object when it came from storage; it stays fresh for clients as
/// long as the stored copy does here.
pub(super) fn respond_stored(
    ctx: &Ctx,
    call: &PluginCall,
    record: &ObjectRecord,
    rendered: &Rendered,
    outcome: Outcome,
) -> Result<Response, AppError> {
    if outcome.from_storage() {
        ctx.app.storage.meta.record_hit(&record.repo, &record.path);
    }
    respond(ctx, call, rendered, outcome, record.expires_at)
}

/// Answers with a rendered document: gzipped when the client accepts it,
/// 304 when the client holds these bytes. `fresh_until` is when the copy
/// behind it stops being fresh here (None: it is revalidated on every use).
pub(super) fn respond(
    ctx: &Ctx,
    call: &PluginCall,
    rendered: &Rendered,
    outcome: Outcome,
    fresh_until: Option<i64>,
) -> Result<Response, AppError> {
    let gzip = rendered
        .gzip
        .as_ref()
        .filter(|_| accepts_gzip(&ctx.headers));
    let etag = if gzip.is_some() {
        &rendered.gzip_etag
    } else {
        &rendered.etag
    };
    let now = now_secs();
    let cache_control = match fresh_until.filter(|_| outcome != Outcome::Stale) {
        Some(until) => {
            let until = rendered.stale_at.map_or(until, |at| at.min(until));
            format!("public, max-age={}", (until - now).max(0))
        }
        None => "no-cache".to_string(),
    };
    let builder = Response::builder()
        .header(header::CONTENT_TYPE, rendered.content_type.clone())
        .header(header::ETAG, etag.clone())
        .header(header::CACHE_CONTROL, cache_control)
        .header(header::VARY, "Accept, Accept-Encoding")
        .header(PLUGIN_HEADER, call.label());
    let client_has_it = ctx
        .headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|tags| if_none_match(tags, etag.to_str().unwrap_or_default()));
    let (builder, body) = if client_has_it {
        (builder.status(StatusCode::NOT_MODIFIED), Body::empty())
    } else {
        let bytes = gzip.unwrap_or(&rendered.identity).clone();
        let mut builder = builder
            .status(StatusCode::OK)
            .header(header::CONTENT_LENGTH, bytes.len());
        if gzip.is_some() {
            builder = builder.header(header::CONTENT_ENCODING, "gzip");
        }
        let body = if ctx.is_head() {
            Body::empty()
        } else {
            Body::from(bytes)
        };
        (builder, body)
    };
    let mut response = builder.body(body).map_err(AppError::internal)?;
    outcome.mark(&mut response);
    Ok(response)
}
