//! `/api/v1/remote/{repo}/{path}`: reading from every kind of repository,
//! uploading to and deleting from local ones.

mod decision;
mod index;
mod local;
mod memo;
pub mod oci;
mod outcome;
mod quarantine;
mod remote;
mod respond;
mod virtual_repo;

use std::sync::Arc;

use axum::extract::Request;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::Response;
use percent_encoding::percent_decode_str;

use crate::config::{Config, Repo, RepoKind};
use crate::error::AppError;
use crate::server::App;

pub use memo::Memos;
pub use outcome::{Outcome, SOURCE_HEADER};

/// Response header naming the plugin that classified the request.
pub const PLUGIN_HEADER: &str = "x-artifact-plugin";
/// Request header carrying the sha256 an upload must have.
const CHECKSUM_HEADER: &str = "x-checksum-sha256";

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

/// One request against one repository, with what is derived from it once.
struct Ctx {
    app: Arc<App>,
    config: Arc<Config>,
    repo: Arc<Repo>,
    method: Method,
    headers: HeaderMap,
    target: Target,
    /// The URL under which the client reaches the addressed repository.
    public_url: String,
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

/// A GET or HEAD: decided once, then answered by the repository's kind.
async fn read(ctx: &Ctx) -> Result<Response, AppError> {
    let decision = decision::decide(ctx).await?;
    match ctx.repo.kind() {
        RepoKind::Local => local::read(ctx, &decision).await,
        RepoKind::Remote => remote::read(ctx, &decision).await,
        RepoKind::Virtual => virtual_repo::read(ctx, &decision).await,
    }
}

impl Ctx {
    fn new(
        app: Arc<App>,
        config: Arc<Config>,
        repo: Arc<Repo>,
        method: Method,
        headers: HeaderMap,
        target: Target,
    ) -> Ctx {
        let public_url = format!("{}/api/v1/remote/{}", public_base(&headers), target.repo);
        Ctx {
            app,
            config,
            repo,
            method,
            headers,
            target,
            public_url,
        }
    }

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
            public_url: self.public_url.clone(),
        }
    }

    fn is_head(&self) -> bool {
        self.method == Method::HEAD
    }
}

/// `scheme://host` as the client reached the server, through a proxy that
/// says so in `X-Forwarded-Proto`/`X-Forwarded-Host`.
fn public_base(headers: &HeaderMap) -> String {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let scheme = header("x-forwarded-proto").unwrap_or("http");
    let host = header("x-forwarded-host")
        .or_else(|| header("host"))
        .unwrap_or("localhost");
    format!("{scheme}://{host}")
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
    fn paths_are_decoded() {
        let t = target("/api/v1/remote/npm/@scope%2fname?x=1").unwrap();
        assert_eq!(t.repo, "npm");
        assert_eq!(t.path, "@scope/name");
        assert_eq!(t.raw_path, "@scope%2fname");
        assert_eq!(t.query, "x=1");
    }
}
