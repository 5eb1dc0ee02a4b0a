//! Local repositories: reads, uploads and deletes.

use axum::body::Body;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde_json::json;

use super::ctx::Ctx;
use super::decision::{decide, Decision};
use super::outcome::Outcome;
use super::{index, respond};
use crate::error::AppError;
use crate::plugins::ObjectInfo;
use crate::storage::{Digest, ObjectRecord, Origin};
use crate::util::now_secs;

/// Request header carrying the sha256 an upload must have.
const CHECKSUM_HEADER: &str = "x-checksum-sha256";

/// `GET`/`HEAD`: a stored file, or an index document rendered for the
/// client.
pub(super) async fn read(ctx: &Ctx, decision: &Decision) -> Result<Response, AppError> {
    if let (true, Some(call)) = (decision.generated, &decision.plugin) {
        let document = call.generate().await?;
        let rendered = index::finish(document, None).await?;
        return index::respond(ctx, call, &rendered, Outcome::Local, None);
    }
    let record = ctx
        .app
        .storage
        .meta
        .get(&ctx.repo.name, &decision.key)
        .await?
        .ok_or_else(|| {
            AppError::not_found(format!(
                "{} is not in repository {}",
                ctx.target.path, ctx.repo.name
            ))
        })?;
    let missing = || AppError::internal(format!("blob {} is missing", record.digest));
    if let (true, Some(call)) = (decision.rewrite, &decision.plugin) {
        let rendered = index::rendered(ctx, call, &record)
            .await?
            .ok_or_else(missing)?;
        return index::respond_stored(ctx, call, &record, &rendered, Outcome::Local);
    }
    respond::file(ctx, decision, &record, Outcome::Local)
        .await?
        .ok_or_else(missing)
}

/// `PUT`: stores the body under the path, verifying `X-Checksum-Sha256` and
/// `Content-Length` when sent.
pub(super) async fn upload(ctx: &Ctx, body: Body) -> Result<Response, AppError> {
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
    let mut spool = storage.cas.spool().await.map_err(AppError::storage)?;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            AppError::new(
                StatusCode::BAD_REQUEST,
                "UPLOAD_INCOMPLETE",
                format!("the upload broke off: {e}"),
            )
        })?;
        spool.append(&chunk).await.map_err(AppError::storage)?;
    }
    let finished = spool.finish().await.map_err(AppError::storage)?;
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
    let sent = ctx
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .filter(|t| respond::meaningful(t));
    let content_type = respond::content_type_for(path, sent.or(decision.content_type.as_deref()));
    // A refused upload leaves an unreferenced blob for the garbage
    // collector; the repository records nothing.
    if let Some(call) = &decision.plugin {
        call.check_upload(ObjectInfo {
            path: decision.key.clone(),
            digest: digest.to_string(),
            size,
            content_type: content_type.clone(),
            stored_at: now_secs().max(0) as u64,
            expires_at: None,
        })
        .await?;
    }
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
pub(super) async fn delete(ctx: &Ctx) -> Result<Response, AppError> {
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
