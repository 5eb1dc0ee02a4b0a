//! Remote docker repositories: pulls through the docker plugin and the
//! shared cache. Blobs and digest manifests are kept for good (stored once
//! per digest whichever image pulls them); tag manifests and tag lists for
//! `cache.mutable_ttl`, then revalidated with a HEAD that compares the
//! upstream's digest, so an unchanged tag costs no download.

use axum::http::{Method, StatusCode};
use axum::response::Response;

use super::{set_header, valid_tag, Endpoint, OciDigest, Req, CONTENT_DIGEST};
use crate::artifacts::decision::decide;
use crate::artifacts::{remote, Outcome};
use crate::error::AppError;
use crate::storage::ObjectRecord;

/// Answers a pull from a remote docker repository.
pub(super) async fn handle(req: &Req) -> Result<Response, AppError> {
    if !matches!(req.ctx.method, Method::GET | Method::HEAD) {
        return Err(AppError::method_not_allowed(
            "GET, HEAD",
            format!(
                "{} is a remote repository: it can only be pulled from",
                req.repo().name
            ),
        ));
    }
    req.authorize(false).await?;
    match &req.endpoint {
        Endpoint::Manifest(reference) => manifest(req, reference).await,
        Endpoint::Blob(digest) => blob(req, digest).await,
        Endpoint::Tags => {
            let mut decision = decide(&req.ctx).await?;
            decision.await_challenge = true;
            let (response, _, _) = remote::serve_stored(&req.ctx, &decision).await?;
            Ok(response)
        }
        Endpoint::Referrers(_) | Endpoint::UploadStart | Endpoint::Upload(_) => Err(AppError::new(
            StatusCode::NOT_FOUND,
            "UNSUPPORTED",
            format!(
                "{} is a remote repository: it serves manifests, blobs and tag lists",
                req.repo().name
            ),
        )),
    }
}

async fn manifest(req: &Req, reference: &str) -> Result<Response, AppError> {
    let by_digest = match OciDigest::parse(reference) {
        Some(digest) => Some(digest),
        None if valid_tag(reference) => None,
        None => {
            return Err(AppError::new(
                StatusCode::BAD_REQUEST,
                "MANIFEST_INVALID",
                format!("{reference:?} is neither a tag nor a digest"),
            ))
        }
    };
    if by_digest.is_none() && req.repo().entry.ban_tags.iter().any(|t| t == reference) {
        return Err(AppError::new(
            StatusCode::FORBIDDEN,
            "DENIED",
            format!(
                "tag {reference} is banned in repository {}: pull a specific version or digest",
                req.repo().name
            ),
        ));
    }
    let mut decision = decide(&req.ctx).await?;
    decision.expected = by_digest.as_ref().and_then(OciDigest::as_storage);
    decision.content_addressed = by_digest.is_some();
    decision.head_revalidate = by_digest.is_none();
    decision.await_challenge = true;
    let (mut response, record, outcome) = remote::serve_stored(&req.ctx, &decision).await?;
    if by_digest.is_none() && outcome == Outcome::Miss {
        keep_by_digest(req, &record).await?;
    }
    let digest = match by_digest {
        Some(digest) => digest.to_string(),
        None => format!("sha256:{}", record.digest),
    };
    set_header(&mut response, CONTENT_DIGEST, &digest);
    Ok(response)
}

/// Records a manifest fetched by tag under its digest too, so a later pull
/// by digest (what clients do after resolving the tag) is served from the
/// cache even while the upstream is down.
async fn keep_by_digest(req: &Req, record: &ObjectRecord) -> Result<(), AppError> {
    let key = format!("manifests/sha256:{}", record.digest);
    let meta = &req.ctx.app.storage.meta;
    if meta.get(&req.repo().name, &key).await?.is_none() {
        let ttl = req.repo().entry.cache.immutable_ttl;
        meta.put(&ObjectRecord {
            path: key,
            mutable: false,
            expires_at: (ttl > 0).then(|| record.stored_at + ttl as i64),
            ..record.clone()
        })
        .await?;
    }
    Ok(())
}

async fn blob(req: &Req, digest: &str) -> Result<Response, AppError> {
    let parsed = OciDigest::from_client(digest)?;
    let mut decision = decide(&req.ctx).await?;
    decision.expected = parsed.as_storage();
    decision.content_addressed = true;
    decision.await_challenge = true;
    let mut response = remote::read(&req.ctx, &decision).await?;
    set_header(&mut response, CONTENT_DIGEST, digest);
    Ok(response)
}
