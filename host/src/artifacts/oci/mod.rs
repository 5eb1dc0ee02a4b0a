//! `/v2/`: the OCI distribution API. Local docker repositories are a
//! registry of their own (push, pull, discovery, deletion); remote ones pull
//! through the docker plugin and the shared cache.
//!
//! The first path component after `/v2/` names the repository from
//! remotes.yaml, the rest up to the endpoint is the image name:
//! `/v2/docker-local/team/app/manifests/v1`.

mod digest;
mod local;
mod manifest;
mod remote;
mod upload;

use std::sync::Arc;

use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use percent_encoding::percent_decode_str;

use super::ctx::{public_base, Ctx, Target};
use crate::auth::{self, Principal};
use crate::config::{Config, Repo, RepoKind};
use crate::error::AppError;
use crate::server::App;

pub use digest::OciDigest;

/// The API version header every `/v2` response carries.
const API_VERSION: (&str, &str) = ("docker-distribution-api-version", "registry/2.0");
/// The header naming a manifest's or blob's digest.
const CONTENT_DIGEST: &str = "docker-content-digest";

/// What a `/v2/{repo}/{image}/...` path addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Endpoint {
    Manifest(String),
    Blob(String),
    UploadStart,
    Upload(String),
    Tags,
    Referrers(String),
}

/// A parsed `/v2/` request path.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    Base,
    Catalog,
    Repo {
        repo: String,
        image: String,
        endpoint: Endpoint,
    },
}

/// Whether `name` fits the OCI repository name grammar:
/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*`.
fn valid_image(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name.split('/').all(|component| {
            let bytes = component.as_bytes();
            let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
            if bytes.is_empty() || !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
                return false;
            }
            let mut i = 0;
            while i < bytes.len() {
                if alnum(bytes[i]) {
                    i += 1;
                    continue;
                }
                let start = i;
                while i < bytes.len() && !alnum(bytes[i]) {
                    i += 1;
                }
                let separator = &component[start..i];
                let ok =
                    matches!(separator, "." | "_" | "__") || separator.bytes().all(|b| b == b'-');
                if !ok {
                    return false;
                }
            }
            true
        })
}

/// Whether `tag` fits `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`.
fn valid_tag(tag: &str) -> bool {
    let bytes = tag.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 128
        && (bytes[0].is_ascii_alphanumeric() || bytes[0] == b'_')
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

fn name_invalid(message: impl Into<String>) -> AppError {
    AppError::new(StatusCode::BAD_REQUEST, "NAME_INVALID", message)
}

fn parse_route(path: &str) -> Result<Route, AppError> {
    let rest = path.strip_prefix("/v2").unwrap_or(path);
    let rest = rest.strip_prefix('/').unwrap_or(rest);
    if rest.is_empty() {
        return Ok(Route::Base);
    }
    if rest == "_catalog" {
        return Ok(Route::Catalog);
    }
    let trimmed = rest.strip_suffix('/').unwrap_or(rest);
    let segments = trimmed
        .split('/')
        .map(|s| {
            percent_decode_str(s)
                .decode_utf8()
                .map(|s| s.into_owned())
                .map_err(|_| name_invalid("the path is not valid UTF-8"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let n = segments.len();
    let at = |i: usize| segments.get(i).map(String::as_str).unwrap_or("");
    let (endpoint, name_len) = if n >= 2 && at(n - 2) == "tags" && at(n - 1) == "list" {
        (Endpoint::Tags, n - 2)
    } else if n >= 2 && at(n - 2) == "blobs" && at(n - 1) == "uploads" {
        (Endpoint::UploadStart, n - 2)
    } else if n >= 3 && at(n - 3) == "blobs" && at(n - 2) == "uploads" {
        (Endpoint::Upload(at(n - 1).to_string()), n - 3)
    } else if n >= 2 && at(n - 2) == "manifests" {
        (Endpoint::Manifest(at(n - 1).to_string()), n - 2)
    } else if n >= 2 && at(n - 2) == "blobs" {
        (Endpoint::Blob(at(n - 1).to_string()), n - 2)
    } else if n >= 2 && at(n - 2) == "referrers" {
        (Endpoint::Referrers(at(n - 1).to_string()), n - 2)
    } else {
        return Err(AppError::not_found(format!("no OCI endpoint at {path}")));
    };
    if name_len < 2 {
        return Err(name_invalid(
            "expected /v2/{repository}/{image}/...: the repository and an image name",
        ));
    }
    let repo = segments[0].clone();
    let image = segments[1..name_len].join("/");
    if !valid_image(&image) {
        return Err(name_invalid(format!(
            "{image:?} is not a valid image name (lower-case letters, digits and separators)"
        )));
    }
    Ok(Route::Repo {
        repo,
        image,
        endpoint,
    })
}

/// One request to an image of a repository.
struct Req {
    ctx: Ctx,
    image: String,
    endpoint: Endpoint,
}

impl Req {
    fn repo(&self) -> &Repo {
        &self.ctx.repo
    }

    fn query(&self, name: &str) -> Option<String> {
        query_param(&self.ctx.target.query, name)
    }

    /// Refuses the request unless its client may read (or, `write`, write)
    /// this repository: 401 for the anonymous (with a token challenge),
    /// 403 `DENIED` for a user without the right.
    async fn authorize(&self, write: bool) -> Result<(), AppError> {
        let config = &self.ctx.config;
        let principal = principal(&self.ctx.app, config, &self.ctx.headers)?;
        let repo = &self.ctx.repo.name;
        if write {
            auth::require_write(config, &principal, repo)
        } else {
            auth::require_read(config, &principal, repo)
        }
    }

    /// Whether the client may read repository `repo`.
    fn may_read(&self, repo: &str) -> Result<bool, AppError> {
        let principal = principal(&self.ctx.app, &self.ctx.config, &self.ctx.headers)?;
        Ok(may_read(&self.ctx.config, &principal, repo))
    }

    /// `/v2/{repo}/{image}`, the prefix of this image's URLs.
    fn base(&self) -> String {
        format!("/v2/{}/{}", self.ctx.repo.name, self.image)
    }
}

fn query_param(query: &str, name: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes())
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.into_owned())
}

fn principal(app: &App, config: &Config, headers: &HeaderMap) -> Result<Principal, AppError> {
    app.auth.identify(config, headers)
}

fn may_read(config: &Config, principal: &Principal, repo: &str) -> bool {
    auth::can_read(config, principal, repo)
}

/// The token scope a request needs, for the challenge of a 401.
fn scope(route: &Result<Route, AppError>, method: &Method) -> Option<String> {
    let Ok(Route::Repo { repo, image, .. }) = route else {
        return None;
    };
    let actions = if matches!(*method, Method::GET | Method::HEAD) {
        "pull"
    } else {
        "pull,push"
    };
    Some(format!("repository:{repo}/{image}:{actions}"))
}

/// Answers a request under `/v2`.
pub async fn handle(app: Arc<App>, request: Request) -> Response {
    let path = request.uri().path().to_string();
    let route = parse_route(&path);
    let endpoint = match &route {
        Ok(Route::Repo { endpoint, .. }) => Some(endpoint.clone()),
        _ => None,
    };
    let challenge = auth::bearer_challenge(
        &public_base(request.headers()),
        scope(&route, request.method()).as_deref(),
    );
    let mut response = match route {
        Ok(route) => match dispatch(app, route, request).await {
            Ok(response) => response,
            Err(e) => oci_error(e, endpoint.as_ref()).into_response(),
        },
        Err(e) => oci_error(e, None).into_response(),
    };
    if response.status() == StatusCode::UNAUTHORIZED {
        set_header(&mut response, "www-authenticate", &challenge);
    }
    response
        .headers_mut()
        .insert(API_VERSION.0, HeaderValue::from_static(API_VERSION.1));
    response
}

async fn dispatch(app: Arc<App>, route: Route, request: Request) -> Result<Response, AppError> {
    let config = app.config.load_full();
    match route {
        Route::Base => base(&app, &config, &request),
        Route::Catalog => {
            let (parts, _) = request.into_parts();
            local::catalog(&app, &config, &parts).await
        }
        Route::Repo {
            repo,
            image,
            endpoint,
        } => {
            let repo_entry = config.repo(&repo).cloned().ok_or_else(|| {
                AppError::new(
                    StatusCode::NOT_FOUND,
                    "NAME_UNKNOWN",
                    format!("no repository named {repo:?}"),
                )
            })?;
            if !repo_entry.is_docker() {
                return Err(AppError::new(
                    StatusCode::NOT_FOUND,
                    "NAME_UNKNOWN",
                    format!(
                        "repository {repo} holds {} packages, not docker images",
                        repo_entry.package()
                    ),
                ));
            }
            let (parts, body) = request.into_parts();
            let rest = match &endpoint {
                Endpoint::Manifest(r) => format!("{image}/manifests/{r}"),
                Endpoint::Blob(d) => format!("{image}/blobs/{d}"),
                Endpoint::UploadStart => format!("{image}/blobs/uploads/"),
                Endpoint::Upload(id) => format!("{image}/blobs/uploads/{id}"),
                Endpoint::Tags => format!("{image}/tags/list"),
                Endpoint::Referrers(d) => format!("{image}/referrers/{d}"),
            };
            let target = Target {
                repo,
                path: rest.clone(),
                raw_path: rest,
                query: parts.uri.query().unwrap_or("").to_string(),
            };
            let ctx = Ctx::new(app, config, repo_entry, parts.method, parts.headers, target);
            let req = Req {
                ctx,
                image,
                endpoint,
            };
            match req.repo().kind() {
                RepoKind::Local => local::handle(&req, body).await,
                RepoKind::Remote => remote::handle(&req).await,
                RepoKind::Virtual => Err(AppError::new(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "UNSUPPORTED",
                    format!(
                        "{} is a virtual repository; pull from one of its members",
                        req.repo().name
                    ),
                )),
            }
        }
    }
}

/// `GET /v2/`: the version check clients make first.
fn base(app: &App, config: &Config, request: &Request) -> Result<Response, AppError> {
    if !matches!(*request.method(), Method::GET | Method::HEAD) {
        return Err(AppError::method_not_allowed(
            "GET, HEAD",
            format!("{} is not allowed on /v2/", request.method()),
        ));
    }
    let principal = principal(app, config, request.headers())?;
    if auth::enabled(config) && principal == Principal::Anonymous {
        return Err(auth::unauthorized(
            "this registry authenticates its clients: log in, or get an anonymous token",
        ));
    }
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        if request.method() == Method::HEAD {
            ""
        } else {
            "{}"
        },
    )
        .into_response())
}

/// Gives an error the OCI code clients expect for the endpoint.
fn oci_error(mut e: AppError, endpoint: Option<&Endpoint>) -> AppError {
    e.code = match (e.code, endpoint) {
        ("NOT_FOUND", Some(Endpoint::Manifest(_))) => "MANIFEST_UNKNOWN",
        ("NOT_FOUND", Some(Endpoint::Blob(_))) => "BLOB_UNKNOWN",
        ("NOT_FOUND", Some(Endpoint::Upload(_) | Endpoint::UploadStart)) => "BLOB_UPLOAD_UNKNOWN",
        ("NOT_FOUND" | "REPOSITORY_NOT_FOUND", _) => "NAME_UNKNOWN",
        ("FORBIDDEN" | "QUARANTINED", _) => "DENIED",
        ("METHOD_NOT_ALLOWED", _) => "UNSUPPORTED",
        ("PATH_TRAVERSAL", _) => "NAME_INVALID",
        (code, _) => code,
    };
    e
}

/// A response header value from text known to be a valid header value.
fn header_value(text: &str) -> HeaderValue {
    HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

fn set_header(response: &mut Response, name: &'static str, value: &str) {
    response.headers_mut().insert(name, header_value(value));
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

fn local_docker_repos(config: &Config) -> Vec<Arc<Repo>> {
    config
        .repos
        .values()
        .filter(|r| r.kind() == RepoKind::Local && r.is_docker())
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo_route(path: &str) -> (String, String, Endpoint) {
        match parse_route(path).unwrap() {
            Route::Repo {
                repo,
                image,
                endpoint,
            } => (repo, image, endpoint),
            other => panic!("{path}: {other:?}"),
        }
    }

    #[test]
    fn routes() {
        assert_eq!(parse_route("/v2/").unwrap(), Route::Base);
        assert_eq!(parse_route("/v2/_catalog").unwrap(), Route::Catalog);
        assert_eq!(
            repo_route("/v2/docker/team/app/manifests/v1"),
            (
                "docker".into(),
                "team/app".into(),
                Endpoint::Manifest("v1".into())
            )
        );
        assert_eq!(
            repo_route("/v2/docker/app/blobs/uploads/"),
            ("docker".into(), "app".into(), Endpoint::UploadStart)
        );
        assert_eq!(
            repo_route("/v2/docker/app/blobs/uploads/abc"),
            (
                "docker".into(),
                "app".into(),
                Endpoint::Upload("abc".into())
            )
        );
        assert_eq!(
            repo_route("/v2/docker/a/b/c/tags/list"),
            ("docker".into(), "a/b/c".into(), Endpoint::Tags)
        );
        assert_eq!(
            repo_route("/v2/docker/app/blobs/sha256%3Aab"),
            (
                "docker".into(),
                "app".into(),
                Endpoint::Blob("sha256:ab".into())
            )
        );
        assert_eq!(
            repo_route("/v2/docker/app/referrers/sha256:ab"),
            (
                "docker".into(),
                "app".into(),
                Endpoint::Referrers("sha256:ab".into())
            )
        );
        assert!(parse_route("/v2/docker/manifests/v1").is_err());
        assert!(parse_route("/v2/docker/App/manifests/v1").is_err());
        assert!(parse_route("/v2/docker/app/other").is_err());
    }

    #[test]
    fn names_and_tags() {
        for good in ["a", "library/nginx", "a.b_c__d---e/f0", "x/y/z"] {
            assert!(valid_image(good), "{good}");
        }
        for bad in ["", "A", "a/", "/a", "a..b", "-a", "a-", "a/../b", "a_._b"] {
            assert!(!valid_image(bad), "{bad}");
        }
        assert!(valid_tag("v1.2-rc_3"));
        assert!(valid_tag("_x"));
        assert!(!valid_tag(".x"));
        assert!(!valid_tag("a:b"));
        assert!(!valid_tag(&"a".repeat(129)));
    }
}
