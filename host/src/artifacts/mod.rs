//! `/api/v1/remote/{repo}/{path}`: reading from every kind of repository,
//! uploading to and deleting from local ones.

mod ctx;
mod decision;
mod index;
mod local;
pub mod memo;
pub mod oci;
mod outcome;
mod quarantine;
mod remote;
mod respond;
mod virtual_repo;

use std::sync::Arc;

use axum::extract::Request;
use axum::http::{Method, StatusCode};
use axum::response::Response;

use crate::config::RepoKind;
use crate::error::AppError;
use crate::server::App;

use ctx::{parse_target, Ctx};
pub use outcome::{Outcome, PLUGIN_HEADER, SOURCE_HEADER};

/// Answers one request under `/api/v1/remote/` or `/api/v1/virtual/`.
pub async fn handle(app: Arc<App>, request: Request) -> Result<Response, AppError> {
    let (parts, body) = request.into_parts();
    let mut target = parse_target(&parts.uri)?;
    let config = app.config.load_full();
    let principal = app.auth.identify(&config, &parts.headers)?;
    // A presigned link reads without credentials; its parameters are not
    // the upstream's business.
    let query = std::mem::take(&mut target.query);
    let (presigned, query) =
        app.auth
            .presigned(&target.repo, &target.path, query, crate::util::now_secs());
    target.query = query;
    let repo = config.repo(&target.repo).cloned().ok_or_else(|| {
        AppError::new(
            StatusCode::NOT_FOUND,
            "REPOSITORY_NOT_FOUND",
            format!("no repository named {:?}", target.repo),
        )
    })?;
    if repo.is_docker() {
        // The registry protocol (digests, tag bans, manifest checks) lives
        // on /v2; a raw path here would bypass it.
        return Err(AppError::new(
            StatusCode::NOT_FOUND,
            "USE_REGISTRY_API",
            format!(
                "{} is a docker repository: use the registry API at /v2/{}/<image>/…",
                repo.name, repo.name
            ),
        ));
    }
    let ctx = Ctx::new(app, config, repo, parts.method, parts.headers, target);
    let (config, name) = (&ctx.config, &ctx.repo.name);
    match (ctx.repo.kind(), &ctx.method) {
        (_, &Method::GET | &Method::HEAD) => {
            if !presigned {
                crate::auth::require_read(config, &principal, name)?;
            }
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

/// A GET or HEAD: decided once, then answered by the repository's kind.
async fn read(ctx: &Ctx) -> Result<Response, AppError> {
    let decision = decision::decide(ctx).await?;
    match ctx.repo.kind() {
        RepoKind::Local => local::read(ctx, &decision).await,
        RepoKind::Remote => remote::read(ctx, &decision).await,
        RepoKind::Virtual => virtual_repo::read(ctx, &decision).await,
    }
}
