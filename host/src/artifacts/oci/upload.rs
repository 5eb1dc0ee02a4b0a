//! Blob uploads: monolithic, `POST` + `PUT`, chunked `POST` + `PATCH`… +
//! `PUT`, and cross-repository mounts.
//!
//! A session is a row in the metadata store; every chunk is spooled (hashed
//! on the way) and staged in object storage as a numbered part. Nothing of
//! an upload lives only in this process, so a restart between two chunks
//! loses nothing, and the parts are assembled into one blob, verified
//! against the digest the client names, only at the end.

use axum::body::Body;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;

use super::digest::ExtraHash;
use super::local::blob_key;
use super::{content_length, local_docker_repos, set_header, OciDigest, Req, CONTENT_DIGEST};
use crate::config::RepoKind;
use crate::error::AppError;
use crate::storage::kv::LockGuard;
use crate::storage::registry::{discard, UploadPart, UploadSession};
use crate::storage::{Key, ObjectRecord, Origin, Storage};
use crate::util::now_secs;

fn upload_unknown(id: &str) -> AppError {
    AppError::new(
        StatusCode::NOT_FOUND,
        "BLOB_UPLOAD_UNKNOWN",
        format!("no upload {id:?} in progress"),
    )
}

fn upload_invalid(message: impl Into<String>) -> AppError {
    AppError::new(StatusCode::BAD_REQUEST, "BLOB_UPLOAD_INVALID", message)
}

fn staged_key(id: &str, index: usize) -> String {
    format!("uploads/{id}/{index:06}")
}

/// `Range: 0-{last byte}` as registries report upload progress.
fn progress(size: u64) -> String {
    format!("0-{}", size.saturating_sub(1))
}

fn session_response(req: &Req, session: &UploadSession, status: StatusCode) -> Response {
    let mut response = status.into_response();
    set_header(
        &mut response,
        "location",
        &format!("{}/blobs/uploads/{}", req.base(), session.id),
    );
    set_header(&mut response, "range", &progress(session.size));
    set_header(&mut response, "docker-upload-uuid", &session.id);
    response
        .headers_mut()
        .insert(header::CONTENT_LENGTH, 0.into());
    response
}

fn created(req: &Req, digest: &OciDigest) -> Response {
    let mut response = StatusCode::CREATED.into_response();
    set_header(
        &mut response,
        "location",
        &format!("{}/blobs/{digest}", req.base()),
    );
    set_header(&mut response, CONTENT_DIGEST, &digest.to_string());
    response
}

/// `POST /blobs/uploads/`: a mount, a monolithic upload (`?digest=`), or a
/// new session.
pub(super) async fn start(req: &Req, body: Body) -> Result<Response, AppError> {
    if let Some(digest) = req.query("mount") {
        let digest = OciDigest::from_client(&digest)?;
        if mount(req, &digest, req.query("from").as_deref()).await? {
            return Ok(created(req, &digest));
        }
    } else if let Some(digest) = req.query("digest") {
        let digest = OciDigest::from_client(&digest)?;
        let mut session = new_session(req);
        session.id = String::new();
        let part = stage(req, &session, body, None).await?;
        session.size = part.as_ref().map_or(0, |p| p.size);
        session.parts.extend(part);
        let staged = session.clone();
        let outcome = complete(req, session, &digest).await;
        if outcome.is_err() {
            discard(&req.ctx.app.storage, &staged).await;
        }
        return outcome;
    }
    let session = new_session(req);
    req.ctx.app.storage.registry.put_upload(&session).await?;
    Ok(session_response(req, &session, StatusCode::ACCEPTED))
}

fn new_session(req: &Req) -> UploadSession {
    let now = now_secs();
    UploadSession {
        id: uuid::Uuid::new_v4().simple().to_string(),
        repo: req.repo().name.clone(),
        image: req.image.clone(),
        size: 0,
        parts: Vec::new(),
        created_at: now,
        updated_at: now,
    }
}

/// Links a blob another local docker repository (or this one) holds into
/// this repository; false when it cannot (the client then uploads). `from`
/// (`{repository}/{image}`) names where the blob is; without it (an
/// anonymous mount) this repository and then every local docker
/// repository the client may read are looked in.
async fn mount(req: &Req, digest: &OciDigest, from: Option<&str>) -> Result<bool, AppError> {
    let candidates: Vec<String> = match from {
        Some(from) => match from.split_once('/') {
            Some((source, _image)) => vec![source.to_string()],
            None => return Ok(false),
        },
        None => std::iter::once(req.repo().name.clone())
            .chain(
                local_docker_repos(&req.ctx.config)
                    .iter()
                    .map(|r| r.name.clone()),
            )
            .collect(),
    };
    for source in &candidates {
        if link_blob(req, digest, source).await? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Links the blob `digest` of local docker repository `source` into this
/// repository, if `source` holds it and the client may read it.
async fn link_blob(req: &Req, digest: &OciDigest, source: &str) -> Result<bool, AppError> {
    let config = &req.ctx.config;
    let Some(source_repo) = config.repo(source) else {
        return Ok(false);
    };
    if source_repo.kind() != RepoKind::Local || !source_repo.is_docker() {
        return Ok(false);
    }
    if !req.may_read(source)? {
        return Ok(false);
    }
    let meta = &req.ctx.app.storage.meta;
    let Some(record) = meta.get(source, &blob_key(digest)).await? else {
        return Ok(false);
    };
    if source != req.repo().name {
        meta.put(&ObjectRecord {
            repo: req.repo().name.clone(),
            stored_at: now_secs(),
            ..record
        })
        .await?;
        tracing::info!(from = %source, to = %req.repo().name, digest = %digest, "blob mounted");
    }
    Ok(true)
}

/// Loads a session of this image, holding its lock.
async fn session(req: &Req, id: &str) -> Result<(UploadSession, LockGuard), AppError> {
    let storage = &req.ctx.app.storage;
    let lock = storage.locks.lock(&Key::Upload { id }.to_string()).await?;
    let session = storage
        .registry
        .upload(id)
        .await?
        .filter(|s| s.repo == req.repo().name && s.image == req.image)
        .ok_or_else(|| upload_unknown(id))?;
    Ok((session, lock))
}

/// `GET /blobs/uploads/{id}`: how much has arrived.
pub(super) async fn status(req: &Req, id: &str) -> Result<Response, AppError> {
    let session = req
        .ctx
        .app
        .storage
        .registry
        .upload(id)
        .await?
        .filter(|s| s.repo == req.repo().name && s.image == req.image)
        .ok_or_else(|| upload_unknown(id))?;
    Ok(session_response(req, &session, StatusCode::NO_CONTENT))
}

/// Parses `Content-Range: {first}-{last}` (also with a `bytes ` prefix and a
/// `/{total}` suffix).
fn content_range(req: &Req) -> Result<Option<(u64, u64)>, AppError> {
    let Some(value) = req.ctx.headers.get(header::CONTENT_RANGE) else {
        return Ok(None);
    };
    let text = value
        .to_str()
        .map_err(|_| upload_invalid("Content-Range is not text"))?;
    let text = text.trim().trim_start_matches("bytes").trim();
    let text = text.split('/').next().unwrap_or("");
    let parsed = text
        .split_once('-')
        .and_then(|(a, b)| Some((a.trim().parse().ok()?, b.trim().parse().ok()?)))
        .filter(|(a, b): &(u64, u64)| a <= b);
    parsed
        .map(Some)
        .ok_or_else(|| upload_invalid(format!("Content-Range {text:?} is not first-last")))
}

fn out_of_order(req: &Req, session: &UploadSession, first: u64) -> Response {
    let message = format!(
        "this chunk starts at byte {first}, but {} bytes have arrived",
        session.size
    );
    let mut response = AppError::new(
        StatusCode::RANGE_NOT_SATISFIABLE,
        "BLOB_UPLOAD_INVALID",
        message,
    )
    .into_response();
    set_header(
        &mut response,
        "location",
        &format!("{}/blobs/uploads/{}", req.base(), session.id),
    );
    set_header(&mut response, "range", &progress(session.size));
    set_header(&mut response, "docker-upload-uuid", &session.id);
    response
}

/// Spools a request body and stages it as the session's next part; None
/// when the body is empty. `range` is the chunk's `Content-Range`, which
/// the body's length must fill.
async fn stage(
    req: &Req,
    session: &UploadSession,
    body: Body,
    range: Option<(u64, u64)>,
) -> Result<Option<UploadPart>, AppError> {
    let storage = &req.ctx.app.storage;
    let declared = content_length(&req.ctx.headers);
    let mut spool = storage.cas.spool().await.map_err(AppError::storage)?;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| upload_invalid(format!("the upload broke off: {e}")))?;
        spool.append(&chunk).await.map_err(AppError::storage)?;
    }
    let finished = spool.finish().await.map_err(AppError::storage)?;
    if let Some(declared) = declared.filter(|d| *d != finished.size) {
        return Err(upload_invalid(format!(
            "received {} of {declared} bytes",
            finished.size
        )));
    }
    if let Some((first, last)) = range {
        if last - first + 1 != finished.size {
            return Err(AppError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "BLOB_UPLOAD_INVALID",
                format!(
                    "Content-Range {first}-{last} announces {} bytes, the body has {}",
                    last - first + 1,
                    finished.size
                ),
            ));
        }
    }
    if finished.size == 0 {
        return Ok(None);
    }
    let key = if session.id.is_empty() {
        format!("uploads/{}/{:06}", uuid::Uuid::new_v4().simple(), 0)
    } else {
        staged_key(&session.id, session.parts.len())
    };
    let part = UploadPart {
        key: key.clone(),
        size: finished.size,
        sha256: finished.digest.hex(),
    };
    storage.cas.commit_as(finished, &key).await?;
    Ok(Some(part))
}

/// Where a chunk went: appended to its session (held locked), or refused
/// as out of order with the answer to send.
enum Chunk {
    Appended(UploadSession, LockGuard),
    OutOfOrder(Response),
}

/// Loads session `id` and appends the request's body (when not empty) as
/// its next part, checking `Content-Range` against what has arrived.
async fn append(req: &Req, id: &str, body: Body) -> Result<Chunk, AppError> {
    let (mut session, lock) = session(req, id).await?;
    let range = content_range(req)?;
    if let Some((first, _)) = range.filter(|(first, _)| *first != session.size) {
        return Ok(Chunk::OutOfOrder(out_of_order(req, &session, first)));
    }
    if let Some(part) = stage(req, &session, body, range).await? {
        session.size += part.size;
        session.parts.push(part);
        session.updated_at = now_secs();
        if !lock.still_held().await {
            return Err(AppError::new(
                StatusCode::CONFLICT,
                "BLOB_UPLOAD_INVALID",
                "another request took this upload over while the chunk arrived; ask for the upload's offset and send it again",
            ));
        }
        req.ctx.app.storage.registry.put_upload(&session).await?;
    }
    Ok(Chunk::Appended(session, lock))
}

/// `PATCH /blobs/uploads/{id}`: the next chunk.
pub(super) async fn patch(req: &Req, id: &str, body: Body) -> Result<Response, AppError> {
    match append(req, id, body).await? {
        Chunk::Appended(session, _lock) => {
            Ok(session_response(req, &session, StatusCode::ACCEPTED))
        }
        Chunk::OutOfOrder(response) => Ok(response),
    }
}

/// `PUT /blobs/uploads/{id}?digest=`: the last chunk (optional), then the
/// blob is assembled, verified and stored.
pub(super) async fn finish(req: &Req, id: &str, body: Body) -> Result<Response, AppError> {
    let digest = req.query("digest").ok_or_else(|| {
        AppError::new(
            StatusCode::BAD_REQUEST,
            "DIGEST_INVALID",
            "completing an upload needs ?digest=",
        )
    })?;
    let digest = OciDigest::from_client(&digest)?;
    match append(req, id, body).await? {
        Chunk::Appended(session, _lock) => complete(req, session, &digest).await,
        Chunk::OutOfOrder(response) => Ok(response),
    }
}

/// Turns a session's parts into the blob `digest` names, or refuses with
/// `DIGEST_INVALID` (the session stays, nothing is stored).
async fn complete(
    req: &Req,
    session: UploadSession,
    digest: &OciDigest,
) -> Result<Response, AppError> {
    let storage = &req.ctx.app.storage;
    let stored = match session.parts.as_slice() {
        [only] if digest.as_storage().is_some() => {
            if only.sha256 != digest.hex {
                return Err(digest_mismatch(digest, &format!("sha256:{}", only.sha256)));
            }
            let stored = digest.as_storage().expect("checked above");
            storage.cas.promote(&only.key, &stored).await?;
            stored
        }
        parts => assemble(storage, parts, digest).await?,
    };
    let record = ObjectRecord {
        repo: req.repo().name.clone(),
        path: blob_key(digest),
        digest: stored.hex(),
        size: session.size,
        content_type: "application/octet-stream".into(),
        origin: Origin::Local,
        mutable: false,
        stored_at: now_secs(),
        expires_at: None,
        upstream_etag: None,
        upstream_last_modified: None,
    };
    storage.meta.put(&record).await?;
    discard(storage, &session).await;
    tracing::info!(repo = %record.repo, image = %req.image, digest = %digest, size = record.size, "blob pushed");
    Ok(created(req, digest))
}

fn digest_mismatch(wanted: &OciDigest, actual: &str) -> AppError {
    AppError::new(
        StatusCode::BAD_REQUEST,
        "DIGEST_INVALID",
        format!("the uploaded content's digest is {actual}, not {wanted}"),
    )
}

/// Concatenates staged parts into one stored blob, checking the digest.
async fn assemble(
    storage: &Storage,
    parts: &[UploadPart],
    digest: &OciDigest,
) -> Result<crate::storage::Digest, AppError> {
    let mut spool = storage.cas.spool().await.map_err(AppError::storage)?;
    let mut extra = ExtraHash::for_digest(digest);
    for part in parts {
        let mut stream = storage.cas.open_key(&part.key).await?.ok_or_else(|| {
            AppError::internal(format!("staged upload part {} is missing", part.key))
        })?;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(AppError::internal)?;
            extra.update(&chunk);
            spool.append(&chunk).await.map_err(AppError::storage)?;
        }
    }
    let finished = spool.finish().await.map_err(AppError::storage)?;
    let actual = extra.finish(&finished.digest);
    if actual != *digest {
        return Err(digest_mismatch(digest, &actual.to_string()));
    }
    Ok(storage.cas.commit(finished).await?)
}

/// `DELETE /blobs/uploads/{id}`: abandons an upload.
pub(super) async fn cancel(req: &Req, id: &str) -> Result<Response, AppError> {
    let (session, _lock) = session(req, id).await?;
    discard(&req.ctx.app.storage, &session).await;
    Ok(StatusCode::NO_CONTENT.into_response())
}
