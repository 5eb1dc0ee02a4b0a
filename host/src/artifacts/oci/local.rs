//! Local docker repositories: a registry of their own.
//!
//! Objects are recorded like every other stored object, under paths that
//! keep the OCI model: `blobs/{digest}` (blobs belong to the repository, so
//! every image in it shares them), `{image}/manifests/{digest}` and
//! `{image}/manifests/{tag}` (a tag record carries the bytes of the manifest
//! it points at). Blob and manifest bytes live in the content-addressable
//! store, so a blob pushed to several repositories is stored once.

use axum::body::{Body, Bytes};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde_json::{json, Value};

use super::manifest::{self, OCI_INDEX};
use super::{
    local_docker_repos, query_param, set_header, upload, valid_tag, Endpoint, OciDigest, Req,
    CONTENT_DIGEST,
};
use crate::artifacts::decision::Decision;
use crate::artifacts::{respond, Outcome};
use crate::config::Config;
use crate::error::AppError;
use crate::server::App;
use crate::storage::meta::{ObjectQuery, StoredObject};
use crate::storage::registry::Referrer;
use crate::storage::{ObjectRecord, Origin};
use crate::util::now_secs;

/// Tags or catalog entries returned when the client gives no `n`.
const DEFAULT_PAGE: usize = 1000;

pub(super) fn blob_key(digest: &OciDigest) -> String {
    format!("blobs/{digest}")
}

fn manifest_key(image: &str, reference: &str) -> String {
    format!("{image}/manifests/{reference}")
}

/// A tag (`mutable`) or what is addressed by its digest.
fn decision(key: String, mutable: bool) -> Decision {
    Decision {
        mutable,
        content_addressed: !mutable,
        ..Decision::plain(key)
    }
}

fn not_allowed(allow: &'static str, req: &Req) -> AppError {
    AppError::method_not_allowed(
        allow,
        format!(
            "{} is not allowed on {}",
            req.ctx.method, req.ctx.target.path
        ),
    )
}

/// Answers a request to a local docker repository.
pub(super) async fn handle(req: &Req, body: Body) -> Result<Response, AppError> {
    let method = req.ctx.method.clone();
    let write = !matches!(method, Method::GET | Method::HEAD);
    req.authorize(write).await?;
    match (&req.endpoint, method) {
        (Endpoint::Manifest(r), Method::GET | Method::HEAD) => get_manifest(req, r).await,
        (Endpoint::Manifest(r), Method::PUT) => put_manifest(req, r, body).await,
        (Endpoint::Manifest(r), Method::DELETE) => delete_manifest(req, r).await,
        (Endpoint::Manifest(_), _) => Err(not_allowed("GET, HEAD, PUT, DELETE", req)),
        (Endpoint::Blob(d), Method::GET | Method::HEAD) => get_blob(req, d).await,
        (Endpoint::Blob(d), Method::DELETE) => delete_blob(req, d).await,
        (Endpoint::Blob(_), _) => Err(not_allowed("GET, HEAD, DELETE", req)),
        (Endpoint::UploadStart, Method::POST) => upload::start(req, body).await,
        (Endpoint::UploadStart, _) => Err(not_allowed("POST", req)),
        (Endpoint::Upload(id), Method::GET) => upload::status(req, id).await,
        (Endpoint::Upload(id), Method::PATCH) => upload::patch(req, id, body).await,
        (Endpoint::Upload(id), Method::PUT) => upload::finish(req, id, body).await,
        (Endpoint::Upload(id), Method::DELETE) => upload::cancel(req, id).await,
        (Endpoint::Upload(_), _) => Err(not_allowed("GET, PATCH, PUT, DELETE", req)),
        (Endpoint::Tags, Method::GET) => tags(req).await,
        (Endpoint::Tags, _) => Err(not_allowed("GET", req)),
        (Endpoint::Referrers(d), Method::GET) => referrers(req, d).await,
        (Endpoint::Referrers(_), _) => Err(not_allowed("GET", req)),
    }
}

fn reference_key(req: &Req, reference: &str) -> Result<(String, bool), AppError> {
    if reference.contains(':') {
        let digest = OciDigest::from_client(reference)?;
        Ok((manifest_key(&req.image, &digest.to_string()), false))
    } else if valid_tag(reference) {
        Ok((manifest_key(&req.image, reference), true))
    } else {
        Err(AppError::new(
            StatusCode::BAD_REQUEST,
            "MANIFEST_INVALID",
            format!("{reference:?} is neither a tag nor a digest"),
        ))
    }
}

fn manifest_unknown(req: &Req, reference: &str) -> AppError {
    AppError::new(
        StatusCode::NOT_FOUND,
        "MANIFEST_UNKNOWN",
        format!(
            "manifest {reference} of {} is not in repository {}",
            req.image,
            req.repo().name
        ),
    )
}

fn blob_unknown(req: &Req, digest: &str) -> AppError {
    AppError::new(
        StatusCode::NOT_FOUND,
        "BLOB_UNKNOWN",
        format!("blob {digest} is not in repository {}", req.repo().name),
    )
}

async fn get_manifest(req: &Req, reference: &str) -> Result<Response, AppError> {
    let (key, is_tag) = reference_key(req, reference)?;
    let meta = &req.ctx.app.storage.meta;
    let record = meta
        .get(&req.repo().name, &key)
        .await?
        .ok_or_else(|| manifest_unknown(req, reference))?;
    let digest = if is_tag {
        format!("sha256:{}", record.digest)
    } else {
        reference.to_string()
    };
    let mut response = respond::file(&req.ctx, &decision(key, is_tag), &record, Outcome::Local)
        .await?
        .ok_or_else(|| AppError::internal(format!("manifest blob {} is missing", record.digest)))?;
    set_header(&mut response, CONTENT_DIGEST, &digest);
    Ok(response)
}

async fn read_body(body: Body, cap: usize) -> Result<Bytes, AppError> {
    let mut stream = body.into_data_stream();
    let mut data = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            AppError::new(
                StatusCode::BAD_REQUEST,
                "MANIFEST_INVALID",
                format!("the upload broke off: {e}"),
            )
        })?;
        if data.len() + chunk.len() > cap {
            return Err(AppError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "SIZE_INVALID",
                format!("manifests are limited to {cap} bytes"),
            ));
        }
        data.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(data))
}

async fn put_manifest(req: &Req, reference: &str, body: Body) -> Result<Response, AppError> {
    let (_, is_tag) = reference_key(req, reference)?;
    let data = read_body(body, manifest::MAX_MANIFEST).await?;
    let digest = if is_tag {
        OciDigest::sha256_of(&data)
    } else {
        let wanted = OciDigest::from_client(reference)?;
        let actual = wanted.same_kind_of(&data);
        if actual != wanted {
            return Err(AppError::new(
                StatusCode::BAD_REQUEST,
                "DIGEST_INVALID",
                format!("the manifest's digest is {actual}, not {wanted}"),
            ));
        }
        wanted
    };
    let content_type = req
        .ctx
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let parsed = manifest::parse(&data, content_type)?;
    let repo = &req.repo().name;
    let storage = &req.ctx.app.storage;
    for blob in &parsed.blobs {
        if storage.meta.get(repo, &blob_key(blob)).await?.is_none() {
            return Err(AppError::new(
                StatusCode::BAD_REQUEST,
                "MANIFEST_BLOB_UNKNOWN",
                format!("blob {blob} is not in repository {repo}: push it first"),
            ));
        }
    }
    for child in &parsed.manifests {
        let key = manifest_key(&req.image, &child.to_string());
        if storage.meta.get(repo, &key).await?.is_none() {
            return Err(AppError::new(
                StatusCode::BAD_REQUEST,
                "MANIFEST_BLOB_UNKNOWN",
                format!("manifest {child} is not in {}: push it first", req.image),
            ));
        }
    }
    let size = data.len() as u64;
    let stored = storage.cas.put_bytes(data).await?;
    let record = |path: String, mutable: bool| ObjectRecord {
        repo: repo.clone(),
        path,
        digest: stored.hex(),
        size,
        content_type: parsed.media_type.clone(),
        origin: Origin::Local,
        mutable,
        stored_at: now_secs(),
        expires_at: None,
        upstream_etag: None,
        upstream_last_modified: None,
    };
    storage
        .meta
        .put(&record(
            manifest_key(&req.image, &digest.to_string()),
            false,
        ))
        .await?;
    if is_tag {
        storage
            .meta
            .put(&record(manifest_key(&req.image, reference), true))
            .await?;
    }
    if let Some(subject) = &parsed.subject {
        storage
            .registry
            .put_referrer(&Referrer {
                repo: repo.clone(),
                image: req.image.clone(),
                subject: subject.to_string(),
                digest: digest.to_string(),
                media_type: parsed.media_type.clone(),
                artifact_type: parsed.artifact_type.clone(),
                size,
                annotations: parsed.annotations.clone(),
            })
            .await?;
    }
    tracing::info!(repo = %repo, image = %req.image, reference, digest = %digest, "manifest pushed");
    let mut response = StatusCode::CREATED.into_response();
    set_header(
        &mut response,
        "location",
        &format!("{}/manifests/{digest}", req.base()),
    );
    set_header(&mut response, CONTENT_DIGEST, &digest.to_string());
    if let Some(subject) = &parsed.subject {
        set_header(&mut response, "oci-subject", &subject.to_string());
    }
    Ok(response)
}

async fn delete_manifest(req: &Req, reference: &str) -> Result<Response, AppError> {
    let (key, is_tag) = reference_key(req, reference)?;
    let repo = &req.repo().name;
    let storage = &req.ctx.app.storage;
    let removed = storage
        .meta
        .delete(repo, &key)
        .await?
        .ok_or_else(|| manifest_unknown(req, reference))?;
    if !is_tag {
        let prefix = manifest_key(&req.image, "");
        let mut after = None;
        let mut tags = Vec::new();
        loop {
            let page = manifest_page(req, &prefix, after.clone()).await?;
            let Some(last) = page.last() else { break };
            after = Some(last.record.path.clone());
            tags.extend(
                page.into_iter()
                    .filter(|o| o.record.mutable && o.record.digest == removed.digest)
                    .map(|o| o.record.path),
            );
        }
        storage.meta.delete_paths(repo, &tags).await?;
        storage
            .registry
            .delete_referrer(repo, &req.image, reference)
            .await?;
    }
    tracing::info!(repo = %repo, image = %req.image, reference, "manifest deleted");
    Ok(StatusCode::ACCEPTED.into_response())
}

async fn get_blob(req: &Req, digest: &str) -> Result<Response, AppError> {
    let parsed = OciDigest::from_client(digest)?;
    let key = blob_key(&parsed);
    let record = req
        .ctx
        .app
        .storage
        .meta
        .get(&req.repo().name, &key)
        .await?
        .ok_or_else(|| blob_unknown(req, digest))?;
    let mut response = respond::file(&req.ctx, &decision(key, false), &record, Outcome::Local)
        .await?
        .ok_or_else(|| AppError::internal(format!("blob {} is missing", record.digest)))?;
    set_header(&mut response, CONTENT_DIGEST, digest);
    Ok(response)
}

async fn delete_blob(req: &Req, digest: &str) -> Result<Response, AppError> {
    let parsed = OciDigest::from_client(digest)?;
    req.ctx
        .app
        .storage
        .meta
        .delete(&req.repo().name, &blob_key(&parsed))
        .await?
        .ok_or_else(|| blob_unknown(req, digest))?;
    tracing::info!(repo = %req.repo().name, digest, "blob deleted");
    Ok(StatusCode::ACCEPTED.into_response())
}

/// Reads `n` (a page size) from the query: at most `DEFAULT_PAGE` when absent.
fn page_size(query: &str) -> Result<usize, AppError> {
    match query_param(query, "n") {
        None => Ok(DEFAULT_PAGE),
        Some(n) => n.parse().map_err(|_| {
            AppError::new(
                StatusCode::BAD_REQUEST,
                "PAGINATION_NUMBER_INVALID",
                format!("n={n:?} is not a number"),
            )
        }),
    }
}

fn next_link(path: &str, n: usize, last: &str) -> String {
    let query: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("n", &n.to_string())
        .append_pair("last", last)
        .finish();
    format!("<{path}?{query}>; rel=\"next\"")
}

/// The next page of an image's manifest and tag records, after `after`.
async fn manifest_page(
    req: &Req,
    prefix: &str,
    after: Option<String>,
) -> Result<Vec<StoredObject>, AppError> {
    let query = ObjectQuery {
        prefix: Some(prefix.to_string()),
        after,
        limit: 1000,
        ..Default::default()
    };
    Ok(req
        .ctx
        .app
        .storage
        .meta
        .list(&req.repo().name, &query)
        .await?)
}

async fn tags(req: &Req) -> Result<Response, AppError> {
    let n = page_size(&req.ctx.target.query)?;
    let last = req.query("last");
    let repo = &req.repo().name;
    let prefix = manifest_key(&req.image, "");
    let mut after = Some(format!("{prefix}{}", last.clone().unwrap_or_default()));
    let mut tags = Vec::new();
    let mut more = false;
    let mut any_manifest = last.is_some();
    'pages: loop {
        let page = manifest_page(req, &prefix, after.clone()).await?;
        let Some(end) = page.last() else { break };
        after = Some(end.record.path.clone());
        for object in page {
            any_manifest = true;
            let name = &object.record.path[prefix.len()..];
            if name.contains(':') {
                continue;
            }
            if tags.len() == n {
                more = true;
                break 'pages;
            }
            tags.push(name.to_string());
        }
    }
    if !any_manifest {
        return Err(AppError::new(
            StatusCode::NOT_FOUND,
            "NAME_UNKNOWN",
            format!("repository {repo} has no image {}", req.image),
        ));
    }
    let mut response = axum::Json(json!({
        "name": format!("{repo}/{}", req.image),
        "tags": tags,
    }))
    .into_response();
    if more {
        if let Some(last) = tags.last() {
            set_header(
                &mut response,
                "link",
                &next_link(&format!("{}/tags/list", req.base()), n, last),
            );
        }
    }
    Ok(response)
}

async fn referrers(req: &Req, digest: &str) -> Result<Response, AppError> {
    let subject = OciDigest::from_client(digest)?;
    let filter = req.query("artifactType");
    let found = req
        .ctx
        .app
        .storage
        .registry
        .referrers(&req.repo().name, &req.image, &subject.to_string())
        .await?;
    let manifests: Vec<Value> = found
        .into_iter()
        .filter(|r| filter.is_none() || r.artifact_type == filter)
        .map(|r| {
            let mut descriptor = json!({
                "mediaType": r.media_type,
                "digest": r.digest,
                "size": r.size,
            });
            if let Some(kind) = r.artifact_type {
                descriptor["artifactType"] = Value::String(kind);
            }
            if let Some(annotations) = r
                .annotations
                .and_then(|a| serde_json::from_str::<Value>(&a).ok())
            {
                descriptor["annotations"] = annotations;
            }
            descriptor
        })
        .collect();
    let body = json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": manifests,
    });
    let mut response = (
        [(header::CONTENT_TYPE, HeaderValue::from_static(OCI_INDEX))],
        body.to_string(),
    )
        .into_response();
    if filter.is_some() {
        set_header(&mut response, "oci-filters-applied", "artifactType");
    }
    Ok(response)
}

/// `GET /v2/_catalog`: the images of every local docker repository the
/// client may read, as `{repository}/{image}`.
pub(super) async fn catalog(
    app: &App,
    config: &Config,
    request: &Parts,
) -> Result<Response, AppError> {
    if request.method != Method::GET {
        return Err(AppError::method_not_allowed(
            "GET",
            format!("{} is not allowed on /v2/_catalog", request.method),
        ));
    }
    let query = request.uri.query().unwrap_or("");
    let n = page_size(query)?;
    let last = query_param(query, "last");
    let principal = super::principal(app, config, &request.headers)?;
    let repos: Vec<String> = local_docker_repos(config)
        .into_iter()
        .filter(|r| super::may_read(config, &principal, &r.name))
        .map(|r| r.name.clone())
        .collect();
    let mut names: Vec<String> = app
        .storage
        .registry
        .images(&repos)
        .await?
        .into_iter()
        .map(|(repo, image)| format!("{repo}/{image}"))
        .filter(|name| last.as_ref().is_none_or(|last| name > last))
        .collect();
    names.sort();
    let more = names.len() > n;
    names.truncate(n);
    let mut response = axum::Json(json!({ "repositories": names })).into_response();
    if more {
        if let Some(last) = names.last() {
            set_header(&mut response, "link", &next_link("/v2/_catalog", n, last));
        }
    }
    Ok(response)
}
