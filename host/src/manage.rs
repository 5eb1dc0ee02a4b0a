//! The management API: repositories and what they hold, eviction, cache
//! flushes and traffic statistics.
//!
//! | method | path |
//! |---|---|
//! | GET | `/api/v2/remotes`, `/api/v2/remotes/{name}` |
//! | GET, DELETE | `/api/v2/remotes/{name}/objects` |
//! | GET | `/api/v2/stats` |
//! | PUT | `/cache/flush` |
//!
//! With an `auth:` section, eviction and flushes need write permission on
//! the repository (a flush of every repository needs `"*"`), and listing
//! the objects of a repository with `anonymous_read: false` needs a user.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::routing::{get, put, MethodRouter};
use axum::{Json, Router};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use regex::Regex;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::{require_read, require_write, Principal};
use crate::config::{Config, Repo, RepoKind};
use crate::error::AppError;
use crate::server::App;
use crate::stats::Counts;
use crate::storage::meta::{ObjectQuery, StoredObject, Usage};
use crate::storage::{MetaStore, Origin};
use crate::util::{now_secs, rfc3339, rfc3339_secs};

/// Objects per page when no `limit` is given.
const DEFAULT_LIMIT: u32 = 100;
/// The largest `limit` accepted.
const MAX_LIMIT: u32 = 1000;
/// Records read per step while a flush or an eviction scans a repository.
const SCAN_PAGE: u32 = 1000;

/// The management routes.
pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/api/v2/remotes", only("GET", get(list_remotes)))
        .route("/api/v2/remotes/{name}", only("GET", get(show_remote)))
        .route(
            "/api/v2/remotes/{name}/objects",
            only("GET, DELETE", get(list_objects).delete(evict_objects)),
        )
        .route("/api/v2/stats", only("GET", get(stats)))
        .route("/cache/flush", only("PUT", put(flush)))
}

/// Answers other methods than `allow` with a JSON 405.
fn only(allow: &'static str, router: MethodRouter<Arc<App>>) -> MethodRouter<Arc<App>> {
    router.fallback(move |method: Method| async move {
        AppError::method_not_allowed(allow, format!("{method} is not allowed here; use {allow}"))
    })
}

/// Query parameters; a malformed query is a JSON 400.
struct ApiQuery<T>(T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, AppError> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(value)) => Ok(ApiQuery(value)),
            Err(rejection) => Err(AppError::bad_request(rejection.body_text())),
        }
    }
}

/// The `{name}` path segment; a malformed one is a JSON 400.
struct RepoName(String);

impl<S: Send + Sync> FromRequestParts<S> for RepoName {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, AppError> {
        match Path::<String>::from_request_parts(parts, state).await {
            Ok(Path(name)) => Ok(RepoName(name)),
            Err(rejection) => Err(AppError::bad_request(rejection.body_text())),
        }
    }
}

fn repo_not_found(name: &str) -> AppError {
    AppError::new(
        StatusCode::NOT_FOUND,
        "REPOSITORY_NOT_FOUND",
        format!("no repository named {name:?}"),
    )
}

/// The configured repository `name`.
fn configured(app: &App, name: &str) -> Result<Arc<Repo>, AppError> {
    app.config
        .load()
        .repo(name)
        .cloned()
        .ok_or_else(|| repo_not_found(name))
}

/// The configuration serving now and who the request comes from (401 for
/// bad credentials).
fn caller(app: &App, headers: &HeaderMap) -> Result<(Arc<Config>, Principal), AppError> {
    let config = app.config.load_full();
    let principal = app.auth.identify(&config, headers)?;
    Ok((config, principal))
}

fn compile(pattern: &str) -> Result<Regex, AppError> {
    Regex::new(pattern).map_err(|e| {
        AppError::new(
            StatusCode::BAD_REQUEST,
            "INVALID_PATTERN",
            format!("invalid regular expression {pattern:?}: {e}"),
        )
    })
}

fn remote_json(repo: &Repo, usage: Usage) -> Value {
    let cache = &repo.entry.cache;
    json!({
        "name": repo.name,
        "type": repo.kind().as_str(),
        "package": repo.package(),
        "description": repo.entry.description,
        "base_url": repo.base_url,
        "url": format!("/api/v1/remote/{}/", repo.name),
        "cache": {
            "immutable_ttl": cache.immutable_ttl,
            "mutable_ttl": cache.mutable_ttl,
            "negative_ttl": cache.negative_ttl,
        },
        "members": repo.entry.members,
        "objects": usage.objects,
        "bytes": usage.bytes,
    })
}

/// `GET /api/v2/remotes`: every repository with what it holds.
async fn list_remotes(State(app): State<Arc<App>>) -> Result<Json<Value>, AppError> {
    let usage = app.storage.meta.usage(None).await?;
    let config = app.config.load();
    let remotes: Vec<Value> = config
        .repos
        .values()
        .map(|repo| remote_json(repo, usage.get(&repo.name).copied().unwrap_or_default()))
        .collect();
    Ok(Json(json!({ "remotes": remotes })))
}

/// `GET /api/v2/remotes/{name}`: one repository with what it holds.
async fn show_remote(
    State(app): State<Arc<App>>,
    RepoName(name): RepoName,
) -> Result<Json<Value>, AppError> {
    let repo = configured(&app, &name)?;
    let usage = app.storage.meta.usage(Some(&name)).await?;
    Ok(Json(remote_json(
        &repo,
        usage.get(&name).copied().unwrap_or_default(),
    )))
}

/// Query of `GET /api/v2/remotes/{name}/objects`.
#[derive(Deserialize)]
struct ListParams {
    limit: Option<u32>,
    cursor: Option<String>,
    prefix: Option<String>,
}

fn object_json(object: &StoredObject, now: i64) -> Value {
    let r = &object.record;
    json!({
        "path": r.path,
        "size": r.size,
        "digest": format!("sha256:{}", r.digest),
        "content_type": r.content_type,
        "origin": r.origin.as_str(),
        "mutable": r.mutable,
        "class": if r.mutable { "index" } else { "file" },
        "stored_at": rfc3339_secs(r.stored_at),
        "expires_at": r.expires_at.map(rfc3339_secs),
        "expired": r.expires_at.is_some_and(|at| at <= now),
        "hits": object.hits,
    })
}

/// `GET /api/v2/remotes/{name}/objects`: the stored objects in path order,
/// `limit` per page; `next` is the cursor of the following page.
async fn list_objects(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    RepoName(name): RepoName,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Json<Value>, AppError> {
    let (config, principal) = caller(&app, &headers)?;
    configured(&app, &name)?;
    require_read(&config, &principal, &name)?;
    let limit = params.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(AppError::bad_request(format!(
            "limit must be between 1 and {MAX_LIMIT}"
        )));
    }
    let after = params
        .cursor
        .as_deref()
        .map(|cursor| {
            URL_SAFE_NO_PAD
                .decode(cursor)
                .ok()
                .and_then(|bytes| String::from_utf8(bytes).ok())
                .ok_or_else(|| AppError::bad_request("invalid cursor"))
        })
        .transpose()?;
    let meta = &app.storage.meta;
    if let Err(e) = meta.flush_hits().await {
        tracing::warn!(error = %format!("{e:#}"), "cannot record hits before listing");
    }
    let mut objects = meta
        .list(
            &name,
            &ObjectQuery {
                after,
                prefix: params.prefix,
                limit: limit + 1,
                ..ObjectQuery::default()
            },
        )
        .await?;
    let next = if objects.len() > limit as usize {
        objects.truncate(limit as usize);
        objects
            .last()
            .map(|o| URL_SAFE_NO_PAD.encode(o.record.path.as_bytes()))
    } else {
        None
    };
    let now = now_secs();
    let listed: Vec<Value> = objects.iter().map(|o| object_json(o, now)).collect();
    Ok(Json(json!({
        "repo": name,
        "objects": listed,
        "next": next,
    })))
}

/// Query of `DELETE /api/v2/remotes/{name}/objects`.
#[derive(Deserialize)]
struct EvictParams {
    path: Option<String>,
    pattern: Option<String>,
}

/// `DELETE /api/v2/remotes/{name}/objects?path=P` or `?pattern=REGEX`:
/// removes the records (cached or uploaded); their blobs go at the next
/// garbage collection.
async fn evict_objects(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    RepoName(name): RepoName,
    ApiQuery(params): ApiQuery<EvictParams>,
) -> Result<Json<Value>, AppError> {
    let (config, principal) = caller(&app, &headers)?;
    configured(&app, &name)?;
    require_write(&config, &principal, &name)?;
    let meta = app.storage.meta.as_ref();
    let evicted = match (params.path, params.pattern) {
        (Some(path), None) => u64::from(meta.delete(&name, &path).await?.is_some()),
        (None, Some(pattern)) => {
            let pattern = compile(&pattern)?;
            remove_matching(meta, &name, None, None, Some(&pattern)).await?
        }
        _ => {
            return Err(AppError::bad_request(
                "give exactly one of the query parameters path and pattern",
            ))
        }
    };
    if evicted == 0 {
        return Err(AppError::not_found(format!(
            "no object of repository {name} matched"
        )));
    }
    tracing::info!(repo = %name, evicted, "objects evicted");
    Ok(Json(json!({ "evicted": evicted })))
}

/// Removes the records of `repo` with this origin and mutability (when
/// given) whose paths match `pattern` (when given); returns how many.
async fn remove_matching(
    meta: &dyn MetaStore,
    repo: &str,
    origin: Option<Origin>,
    mutable: Option<bool>,
    pattern: Option<&Regex>,
) -> anyhow::Result<u64> {
    let mut removed = 0;
    let mut after = None;
    loop {
        let query = ObjectQuery {
            after: after.take(),
            prefix: None,
            origin,
            mutable,
            limit: SCAN_PAGE,
        };
        let page = meta.list(repo, &query).await?;
        let matched: Vec<String> = page
            .iter()
            .map(|o| &o.record.path)
            .filter(|path| pattern.is_none_or(|re| re.is_match(path)))
            .cloned()
            .collect();
        removed += meta.delete_paths(repo, &matched).await?;
        match page.last() {
            Some(last) if page.len() == SCAN_PAGE as usize => {
                after = Some(last.record.path.clone())
            }
            _ => return Ok(removed),
        }
    }
}

/// Query of `PUT /cache/flush`.
#[derive(Deserialize)]
struct FlushParams {
    repo: Option<String>,
    pattern: Option<String>,
    #[serde(default)]
    mutable_only: bool,
}

/// `PUT /cache/flush`: removes cached (never uploaded) records so they are
/// fetched again: of one repository (a virtual one's members) or all, only
/// paths matching `pattern`, only mutable ones with `mutable_only=true`.
async fn flush(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    ApiQuery(params): ApiQuery<FlushParams>,
) -> Result<Json<Value>, AppError> {
    let (config, principal) = caller(&app, &headers)?;
    let pattern = params.pattern.as_deref().map(compile).transpose()?;
    let meta = app.storage.meta.as_ref();
    let repos: Vec<String> = match &params.repo {
        Some(name) => {
            let repo = configured(&app, name)?;
            require_write(&config, &principal, name)?;
            match repo.kind() {
                RepoKind::Virtual => repo.entry.members.clone(),
                _ => vec![repo.name.clone()],
            }
        }
        None => {
            require_write(&config, &principal, "*")?;
            meta.usage(None).await?.into_keys().collect()
        }
    };
    let mutable = params.mutable_only.then_some(true);
    let mut flushed = 0;
    for repo in &repos {
        flushed +=
            remove_matching(meta, repo, Some(Origin::Remote), mutable, pattern.as_ref()).await?;
    }
    tracing::info!(
        repo = params.repo.as_deref().unwrap_or("*"),
        pattern = params.pattern.as_deref().unwrap_or(""),
        mutable_only = params.mutable_only,
        flushed,
        "cache flushed"
    );
    Ok(Json(json!({ "flushed": flushed })))
}

fn stats_json(counts: &Counts, usage: &Usage) -> Value {
    json!({
        "hits": counts.hits,
        "misses": counts.misses,
        "bytes_served": counts.bytes_served,
        "bytes_fetched": counts.bytes_fetched,
        "objects": usage.objects,
        "bytes_stored": usage.bytes,
    })
}

/// `GET /api/v2/stats`: traffic (since the server started, or the
/// cluster's when replicas share Redis) and what is stored, per repository
/// and in total.
async fn stats(State(app): State<Arc<App>>) -> Result<Json<Value>, AppError> {
    let usage = app.storage.meta.usage(None).await?;
    let traffic = app.stats.totals().await;
    let config = app.config.load();
    let mut names: Vec<&String> = config
        .repos
        .keys()
        .chain(usage.keys())
        .chain(traffic.keys())
        .collect();
    names.sort();
    names.dedup();
    let mut total_counts = Counts::default();
    let mut total_usage = Usage::default();
    let mut repositories = BTreeMap::new();
    for name in names {
        let counts = traffic.get(name).copied().unwrap_or_default();
        let stored = usage.get(name).copied().unwrap_or_default();
        total_counts.add(&counts);
        total_usage.objects += stored.objects;
        total_usage.bytes += stored.bytes;
        repositories.insert(name.clone(), stats_json(&counts, &stored));
    }
    Ok(Json(json!({
        "since": rfc3339(app.started),
        "uptime_seconds": app.started.elapsed().map(|d| d.as_secs()).unwrap_or(0),
        "total": stats_json(&total_counts, &total_usage),
        "repositories": repositories,
    })))
}
