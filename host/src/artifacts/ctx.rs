//! One request against one repository, with what is derived from it once.

use std::sync::Arc;

use axum::http::{HeaderMap, Method, StatusCode};
use percent_encoding::percent_decode_str;

use crate::config::{Config, Repo};
use crate::error::AppError;
use crate::server::App;

/// The repository and path a request addresses.
pub(super) struct Target {
    /// The repository the client addressed (a virtual one while its members
    /// are consulted): links in index documents lead back to it.
    pub(super) repo: String,
    /// Percent-decoded path below the repository.
    pub(super) path: String,
    /// The path as the client sent it, for generic upstream URLs.
    pub(super) raw_path: String,
    pub(super) query: String,
}

pub(super) fn parse_target(uri: &axum::http::Uri) -> Result<Target, AppError> {
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
pub(super) struct Ctx {
    pub(super) app: Arc<App>,
    pub(super) config: Arc<Config>,
    pub(super) repo: Arc<Repo>,
    pub(super) method: Method,
    pub(super) headers: HeaderMap,
    pub(super) target: Target,
    /// The URL under which the client reaches the addressed repository.
    pub(super) public_url: String,
}

impl Ctx {
    pub(super) fn new(
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
    pub(super) fn for_member(&self, repo: Arc<Repo>) -> Ctx {
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

    pub(super) fn is_head(&self) -> bool {
        self.method == Method::HEAD
    }
}

/// `scheme://host` as the client reached the server, through a proxy that
/// says so in `X-Forwarded-Proto`/`X-Forwarded-Host`.
pub(super) fn public_base(headers: &HeaderMap) -> String {
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
