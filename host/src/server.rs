//! The HTTP application: shared state, routes and the management endpoints.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::{Json, Router};
use serde_json::json;

use crate::config::Config;
use crate::error::AppError;
use crate::fill::Fills;
use crate::plugins::Plugins;
use crate::stats::Stats;
use crate::storage::Storage;

/// Everything a request may need.
pub struct App {
    /// The configuration serving now.
    pub config: ArcSwap<Config>,
    /// Where the configuration is read from, for reloads.
    pub config_path: Option<PathBuf>,
    /// Why the last reload of the configuration was refused, if it was.
    pub config_error: ArcSwap<Option<String>>,
    /// Blobs, metadata, cache and locks.
    pub storage: Storage,
    /// The loaded format plugins.
    pub plugins: Arc<Plugins>,
    /// The client for upstreams.
    pub http: reqwest::Client,
    /// The client for plugins' upstream requests: it follows no redirect.
    pub plugin_http: reqwest::Client,
    /// Cache fills in flight.
    pub fills: Arc<Fills>,
    /// Traffic counters since the server started.
    pub stats: Arc<Stats>,
    /// When the server started.
    pub started: SystemTime,
    /// Tokens and challenges of upstreams that authenticate.
    pub upstream_auth: Arc<crate::upstream_auth::UpstreamAuth>,
    /// Checks credentials; signs and verifies tokens.
    pub auth: Arc<crate::auth::Authenticator>,
    /// Memoised plugin answers: classifications and rendered indexes.
    pub memos: crate::artifacts::memo::Memos,
    /// The backends the storage was opened on, for `/config`.
    pub backends: crate::storage::Backends,
    /// The OpenPGP key plugins sign with.
    pub signer: Arc<crate::signing::Signer>,
}

impl App {
    /// Reads the configuration file again; an invalid file, or one with
    /// settings a plugin refuses, is refused and the current configuration
    /// keeps serving.
    pub async fn reload_config(&self) -> Result<(), String> {
        let Some(path) = &self.config_path else {
            return Ok(());
        };
        let loaded = match Config::load(path) {
            Ok(config) => match self.plugins.validate(&config).await {
                Ok(()) => Ok(config),
                Err(e) => Err(format!("{}: {e}", path.display())),
            },
            Err(e) => Err(e.to_string()),
        };
        match loaded {
            Ok(config) => {
                tracing::info!(
                    file = %path.display(),
                    repositories = config.repos.len(),
                    "configuration reloaded"
                );
                self.config.store(Arc::new(config));
                self.config_error.store(Arc::new(None));
                Ok(())
            }
            Err(message) => {
                tracing::error!(error = %message, "configuration refused; the previous one keeps serving");
                self.config_error.store(Arc::new(Some(message.clone())));
                Err(message)
            }
        }
    }
}

/// The upstream HTTP client: the platform's trust store (honouring
/// `SSL_CERT_FILE`/`SSL_CERT_DIR`), `HTTPS_PROXY`/`NO_PROXY` from the
/// environment, and timeouts that bound silence rather than transfer length.
/// With `follow_redirects` false it answers redirects as they are (plugins'
/// requests, whose every hop is checked against the repository's upstreams).
pub fn http_client(follow_redirects: bool) -> anyhow::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .user_agent(concat!("artifactapi/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(10))
        .read_timeout(Duration::from_secs(60));
    if !follow_redirects {
        builder = builder.redirect(reqwest::redirect::Policy::none());
    }
    Ok(builder.build()?)
}

/// The router, without a socket, so tests can drive it directly.
pub fn app(state: Arc<App>) -> Router {
    Router::new()
        .route("/", get(root))
        .route("/health", get(health))
        .route("/config", get(config))
        .route("/api/v2/plugins", get(plugins))
        .route("/.well-known/{name}", get(well_known))
        .route("/v2/token", any(crate::auth::token))
        .route("/v2", any(registry))
        .route("/v2/", any(registry))
        .route("/v2/{*rest}", any(registry))
        .route("/api/v1/remote/{*rest}", any(artifact))
        .route("/api/v1/virtual/{*rest}", any(artifact))
        .merge(crate::manage::routes())
        .fallback(not_found)
        .layer(axum::middleware::from_fn(crate::auth::basic_challenge))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}

/// A document a plugin serves at the host's root (a registry's service
/// discovery).
async fn well_known(
    State(app): State<Arc<App>>,
    axum::extract::Path(name): axum::extract::Path<String>,
) -> Response {
    match app.plugins.well_known(&name) {
        Some(document) => (
            [(axum::http::header::CONTENT_TYPE, document.content_type)],
            document.body,
        )
            .into_response(),
        None => AppError::not_found(format!("no loaded plugin serves /.well-known/{name}"))
            .into_response(),
    }
}

async fn artifact(State(app): State<Arc<App>>, request: Request) -> Response {
    let path = request.uri().path().to_string();
    let response = match crate::artifacts::handle(app.clone(), request).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    };
    observed(&app, &path, response)
}

async fn registry(State(app): State<Arc<App>>, request: Request) -> Response {
    let path = request.uri().path().to_string();
    let response = crate::artifacts::oci::handle(app.clone(), request).await;
    observed(&app, &path, response)
}

/// Counts and logs an artifact response by its outcome.
fn observed(app: &App, path: &str, response: Response) -> Response {
    if let Some(outcome) = crate::artifacts::Outcome::of(&response) {
        tracing::debug!(
            path,
            status = response.status().as_u16(),
            outcome = outcome.as_str(),
            "artifact served"
        );
    }
    app.stats.observe(path, response)
}

async fn not_found(request: Request) -> AppError {
    AppError::not_found(format!("no route for {}", request.uri().path()))
}

async fn root(State(app): State<Arc<App>>) -> Json<serde_json::Value> {
    let config = app.config.load();
    let repositories: Vec<_> = config
        .repos
        .values()
        .map(|repo| {
            json!({
                "name": repo.name,
                "type": repo.kind().as_str(),
                "package": repo.package(),
                "description": repo.entry.description,
                "url": if repo.is_docker() {
                    format!("/v2/{}/", repo.name)
                } else {
                    format!("/api/v1/remote/{}/", repo.name)
                },
            })
        })
        .collect();
    Json(json!({
        "name": "artifactapi",
        "version": env!("CARGO_PKG_VERSION"),
        "repositories": repositories,
        "endpoints": {
            "artifacts": "/api/v1/remote/{repo}/{path}",
            "health": "/health",
            "config": "/config",
            "plugins": "/api/v2/plugins",
            "remotes": "/api/v2/remotes",
            "objects": "/api/v2/remotes/{repo}/objects",
            "stats": "/api/v2/stats",
            "flush": "/cache/flush",
        },
    }))
}

/// 200 whenever the server answers: `"status": "degraded"` with the reasons
/// when a backend is unreachable and the server carries on without it.
async fn health(State(app): State<Arc<App>>) -> Json<serde_json::Value> {
    let plugins = app.plugins.status();
    let config_error = app.config_error.load();
    let problems = app.storage.problems().await;
    Json(json!({
        "status": if problems.is_empty() { "ok" } else { "degraded" },
        "problems": problems,
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": app.started.elapsed().map(|d| d.as_secs()).unwrap_or(0),
        "repositories": app.config.load().repos.len(),
        "plugins": plugins.iter().filter(|p| p.active).count(),
        "plugin_errors": plugins.iter().filter(|p| p.last_error.is_some()).count(),
        "config_error": config_error.as_ref(),
        "fills_in_flight": app.fills.len(),
    }))
}

/// The configuration serving now and the backends, secrets redacted.
async fn config(State(app): State<Arc<App>>) -> Json<serde_json::Value> {
    let mut shown = app.config.load().redacted();
    if let Some(map) = shown.as_object_mut() {
        map.insert("backends".into(), app.backends.redacted());
    }
    Json(shown)
}

async fn plugins(State(app): State<Arc<App>>) -> Json<serde_json::Value> {
    Json(json!({
        "directory": app.plugins.dir().display().to_string(),
        "wit_versions": crate::plugins::runtime::WIT_VERSIONS,
        "plugins": app.plugins.status(),
    }))
}

/// How to run a server.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// remotes.yaml.
    pub config: PathBuf,
    /// What stays per process: the spool of writes in progress, the plugin
    /// compile cache, and the embedded backends' files.
    pub data: PathBuf,
    /// Where metadata, blobs, the cache and locks are kept.
    pub backends: crate::storage::Backends,
    /// The plugins folder.
    pub plugins: PathBuf,
    /// Limits on plugin calls.
    pub limits: crate::plugins::Limits,
    /// Bytes of rendered index documents kept in memory.
    pub index_memo_bytes: u64,
    /// The operator's armored OpenPGP private key; None: the cluster's
    /// generated one.
    pub signing_key: Option<PathBuf>,
    /// The passphrase of `signing_key`.
    pub signing_key_passphrase: Option<String>,
}

/// A running application with its file watches.
pub struct Running {
    /// The application state.
    pub app: Arc<App>,
    _watchers: Vec<notify::RecommendedWatcher>,
}

/// Opens storage, loads the configuration and the plugins, and starts
/// watching both for changes.
pub async fn start(options: &ServeOptions) -> anyhow::Result<Running> {
    let config = Config::load(&options.config)?;
    let storage = Storage::open(&options.backends, &options.data).await?;
    let auth = Arc::new(crate::auth::Authenticator::shared(&storage.db, &options.data).await?);
    let stats = match &storage.redis {
        Some(redis) => Stats::shared(redis.clone()),
        None => Arc::new(Stats::default()),
    };
    let runtime =
        crate::plugins::Runtime::new(&options.data.join("plugin-cache"), options.limits.clone())?;
    let plugins = Arc::new(Plugins::new(runtime, &options.plugins)?);
    plugins.reload(None).await;
    plugins
        .validate(&config)
        .await
        .map_err(|e| anyhow::anyhow!("invalid configuration {}: {e}", options.config.display()))?;
    let signer = crate::signing::Signer::open(
        &storage.db,
        options.signing_key.as_deref(),
        options.signing_key_passphrase.as_deref(),
    )
    .await?;
    let app = Arc::new(App {
        config: ArcSwap::from_pointee(config),
        config_path: Some(options.config.clone()),
        config_error: ArcSwap::from_pointee(None),
        storage,
        plugins: plugins.clone(),
        http: http_client(true)?,
        plugin_http: http_client(false)?,
        fills: Arc::new(Fills::default()),
        stats,
        started: SystemTime::now(),
        upstream_auth: Arc::new(crate::upstream_auth::UpstreamAuth::new()),
        auth,
        backends: options.backends.clone(),
        memos: crate::artifacts::memo::Memos::new(options.index_memo_bytes),
        signer: Arc::new(signer),
    });
    let plugin_app = app.clone();
    let plugin_watch = crate::watch::watch(
        &options.plugins,
        |p| p.extension().is_some_and(|e| e == "wasm"),
        move || {
            let app = plugin_app.clone();
            async move { app.plugins.reload(Some(&app.config.load())).await }
        },
    )?;
    let config_dir = options
        .config
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."))
        .to_path_buf();
    let reload_app = app.clone();
    let config_watch = crate::watch::watch(
        &config_dir,
        crate::watch::file_named(&options.config),
        move || {
            let app = reload_app.clone();
            async move {
                let _ = app.reload_config().await;
            }
        },
    )?;
    Ok(Running {
        app,
        _watchers: vec![plugin_watch, config_watch],
    })
}
