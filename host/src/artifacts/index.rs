//! Index documents: rewritten by the plugin on every serve (links lead back
//! through the proxy the client used), merged across a virtual repository's
//! members, and gzipped for clients that accept it.

use std::io::Write as _;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;

use super::quarantine;
use super::remote::remote_record;
use super::{decide, plugin_answer, Ctx, Decision, PLUGIN_HEADER, SOURCE_HEADER};
use crate::config::RepoKind;
use crate::error::AppError;
use crate::plugins::{Document, IndexOptions, LoadedPlugin};
use crate::storage::{Digest, ObjectRecord};

/// Documents smaller than this are sent as they are.
const GZIP_MIN: usize = 1024;

/// Rewrites a stored index document for this request's client; None when
/// the blob is missing from storage.
pub(super) async fn rewrite_document(
    ctx: &Ctx,
    plugin: &Arc<LoadedPlugin>,
    record: &ObjectRecord,
) -> Result<Option<Document>, AppError> {
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
    let digest = Digest::parse(&record.digest)
        .ok_or_else(|| AppError::internal(format!("bad digest in metadata: {}", record.digest)))?;
    let Some(bytes) = ctx.app.storage.cas.read_capped(&digest, cap).await? else {
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
                hide_published_after: quarantine::cutoff(ctx).map(|t| t.max(0) as u64),
            },
        )
        .await;
    let rewritten = plugin_answer(plugin, outcome)?;
    quarantine::remember(ctx, &rewritten.published).await;
    Ok(Some(rewritten.document))
}

/// A virtual repository's index: each member's document rewritten for the
/// virtual repository's URL, then merged by the plugin in member order.
/// Members without the document, or refusing it, are left out; a member
/// whose upstream fails is left out with a warning.
pub(super) async fn merged(ctx: &Ctx, decision: &Decision) -> Result<Response, AppError> {
    let plugin = decision
        .plugin
        .clone()
        .ok_or_else(|| AppError::internal("index merge without a plugin"))?;
    let mut documents = Vec::new();
    let mut last_error = None;
    for name in &ctx.repo.entry.members {
        let Some(member) = ctx.config.repo(name).cloned() else {
            continue;
        };
        let member_ctx = ctx.for_member(member);
        match member_document(&member_ctx).await {
            Ok(Some(document)) => documents.push(document),
            Ok(None) => {}
            Err(e) => {
                if !matches!(e.status, StatusCode::NOT_FOUND | StatusCode::FORBIDDEN) {
                    tracing::warn!(
                        repo = %ctx.repo.name,
                        member = %name,
                        path = %ctx.target.path,
                        error = %e.message,
                        "member left out of the merged index"
                    );
                }
                last_error = Some(e);
            }
        }
    }
    if documents.is_empty() {
        return Err(last_error.unwrap_or_else(|| {
            AppError::not_found(format!(
                "{} is in no member of repository {}",
                ctx.target.path, ctx.repo.name
            ))
        }));
    }
    let outcome = ctx
        .app
        .plugins
        .merge_indexes(
            &plugin,
            ctx.scope(&plugin),
            ctx.repo_context(),
            ctx.request_info(),
            documents,
        )
        .await;
    let document = plugin_answer(&plugin, outcome)?;
    document_response(ctx, &plugin, document, "remote").await
}

/// One member's index document, rewritten for the virtual repository.
async fn member_document(ctx: &Ctx) -> Result<Option<Document>, AppError> {
    let decision = decide(ctx).await?;
    let Some(plugin) = decision.plugin.clone().filter(|_| decision.rewrite) else {
        return Ok(None);
    };
    let record = match ctx.repo.kind() {
        RepoKind::Remote => Some(remote_record(ctx, &decision).await?.0),
        _ => {
            ctx.app
                .storage
                .meta
                .get(&ctx.repo.name, &decision.key)
                .await?
        }
    };
    match record {
        Some(record) => rewrite_document(ctx, &plugin, &record).await,
        None => Ok(None),
    }
}

fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|coding| {
            let mut parts = coding.split(';');
            let name = parts.next().unwrap_or("").trim();
            let refused = parts.any(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    == Some(0.0)
            });
            (name.eq_ignore_ascii_case("gzip") || name == "*") && !refused
        })
}

/// Answers with an index document, gzipped when the client accepts it.
pub(super) async fn document_response(
    ctx: &Ctx,
    plugin: &LoadedPlugin,
    document: Document,
    source: &'static str,
) -> Result<Response, AppError> {
    let mut builder = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, document.content_type)
        .header(header::CACHE_CONTROL, "no-cache")
        .header(header::VARY, "Accept, Accept-Encoding")
        .header(SOURCE_HEADER, source)
        .header(PLUGIN_HEADER, plugin.label());
    let mut body = document.body;
    if !ctx.is_head() && body.len() >= GZIP_MIN && accepts_gzip(&ctx.headers) {
        body = tokio::task::spawn_blocking(move || {
            let mut encoder =
                flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            encoder.write_all(&body)?;
            encoder.finish()
        })
        .await
        .map_err(AppError::internal)?
        .map_err(AppError::internal)?;
        builder = builder.header(header::CONTENT_ENCODING, "gzip");
    }
    builder = builder.header(header::CONTENT_LENGTH, body.len());
    let body = if ctx.is_head() {
        Body::empty()
    } else {
        Body::from(body)
    };
    builder.body(body).map_err(AppError::internal)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT_ENCODING, value.parse().unwrap());
        headers
    }

    #[test]
    fn gzip_negotiation() {
        assert!(accepts_gzip(&with("gzip, deflate, br")));
        assert!(accepts_gzip(&with("br;q=1.0, gzip;q=0.8")));
        assert!(accepts_gzip(&with("*")));
        assert!(!accepts_gzip(&with("gzip;q=0")));
        assert!(!accepts_gzip(&with("identity")));
        assert!(!accepts_gzip(&HeaderMap::new()));
    }
}
