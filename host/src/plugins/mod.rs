//! Format plugins: loading, hot reload and the calls the request path makes.

pub mod bindings;
pub mod host;
pub mod runtime;
mod v0_1;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use serde::Serialize;
use sha2::{Digest as _, Sha256};

use crate::config::{Config, Repo};

pub use host::{object_info, CallScope, Presigner, Services, PRESIGN_TTL_SECS};
pub use runtime::{CallFailure, Limits, Runtime};

use runtime::Instance;
use v0_1::Up as _;

pub use bindings::artifactapi::plugin::types::{
    Classification, Document, Header, IndexOptions, Mutability, ObjectInfo, PluginError,
    RepoContext, RepoKind, RequestInfo, Rewritten, UpstreamRequest,
};
pub use bindings::exports::artifactapi::plugin::format::{self, PluginInfo};

/// What plugins are told about a repository; `public_url` is where the
/// current client reaches it (empty outside a request).
pub fn repo_context(repo: &Repo, public_url: String) -> RepoContext {
    RepoContext {
        name: repo.name.clone(),
        kind: match repo.kind() {
            crate::config::RepoKind::Local => RepoKind::Local,
            crate::config::RepoKind::Remote => RepoKind::Remote,
            crate::config::RepoKind::Virtual => RepoKind::Virtual,
        },
        base_url: repo.base_url.clone().unwrap_or_default(),
        public_url,
        settings: repo.settings_json.clone(),
    }
}

/// A plugin that loaded and answered `describe`.
pub struct LoadedPlugin {
    /// What `describe` returned.
    pub info: PluginInfo,
    /// The file it came from.
    pub file: PathBuf,
    /// The file's sha256, hex.
    pub sha256: String,
    /// When it was loaded.
    pub loaded_at: SystemTime,
    compiled: runtime::Compiled,
}

impl LoadedPlugin {
    /// `name@version`, as responses and logs show it.
    pub fn label(&self) -> String {
        format!("{}@{}", self.info.name, self.info.version)
    }
}

/// The state of one `.wasm` file in the plugins folder.
#[derive(Clone)]
struct FileState {
    /// The version serving (possibly an older one than the file holds).
    plugin: Option<Arc<LoadedPlugin>>,
    /// Why the file's current content is not serving.
    error: Option<String>,
    /// The sha256 of the content last tried.
    tried: String,
}

#[derive(Default)]
struct Registry {
    files: BTreeMap<PathBuf, FileState>,
    by_type: HashMap<String, Arc<LoadedPlugin>>,
}

/// One row of `GET /api/v2/plugins`.
#[derive(Serialize)]
pub struct PluginStatus {
    /// The file in the plugins folder.
    pub file: String,
    /// The plugin's name (absent if it never loaded).
    pub name: Option<String>,
    /// The plugin's version.
    pub version: Option<String>,
    /// The package type it serves.
    pub package_type: Option<String>,
    /// The WIT contract version it was loaded under.
    pub wit_version: Option<&'static str>,
    /// One line for people.
    pub description: Option<String>,
    /// Environment variables the plugin reads.
    pub environment: Vec<String>,
    /// Built-in mutable path patterns.
    pub mutable_patterns: Vec<String>,
    /// Built-in immutable path patterns.
    pub immutable_patterns: Vec<String>,
    /// sha256 of the file content that is serving.
    pub sha256: Option<String>,
    /// When the serving version was loaded (RFC 3339).
    pub loaded_at: Option<String>,
    /// Whether it serves requests.
    pub active: bool,
    /// Why the file's current content is not serving, if it is not.
    pub last_error: Option<String>,
}

/// The loaded plugins and the folder they come from.
pub struct Plugins {
    runtime: Arc<Runtime>,
    dir: PathBuf,
    registry: ArcSwap<Registry>,
    reload_lock: tokio::sync::Mutex<()>,
}

/// The answer of a plugin call: the guest's own answer, typed error
/// included, or a failure to get one.
pub type CallResult<T> = Result<Result<T, PluginError>, CallFailure>;

impl Plugins {
    /// Plugins from `dir` (created if missing), run by `runtime`. Call
    /// [`Plugins::reload`] to load them.
    pub fn new(runtime: Runtime, dir: &Path) -> anyhow::Result<Plugins> {
        std::fs::create_dir_all(dir)?;
        Ok(Plugins {
            runtime: Arc::new(runtime),
            dir: dir.to_path_buf(),
            registry: ArcSwap::from_pointee(Registry::default()),
            reload_lock: tokio::sync::Mutex::new(()),
        })
    }

    /// The folder watched for plugins.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The runtime's limits.
    pub fn limits(&self) -> &Limits {
        &self.runtime.limits
    }

    /// Calls made into plugins since the server started.
    pub fn calls(&self) -> u64 {
        self.runtime.calls()
    }

    /// The plugin serving a package type.
    pub fn for_package(&self, package_type: &str) -> Option<Arc<LoadedPlugin>> {
        self.registry.load().by_type.get(package_type).cloned()
    }

    /// Scans the folder and loads, swaps or unloads plugins to match it.
    /// A file that fails to load leaves its previous version serving, as
    /// does a new version that refuses the settings of a repository of
    /// `config` (the serving configuration, on a hot reload).
    pub async fn reload(&self, config: Option<&Config>) {
        let _guard = self.reload_lock.lock().await;
        let old = self.registry.load_full();
        let mut files = BTreeMap::new();
        for path in wasm_files(&self.dir) {
            let previous = old.files.get(&path).cloned();
            let state = self.load_file(&path, previous, config).await;
            files.insert(path, state);
        }
        for path in old.files.keys().filter(|p| !files.contains_key(*p)) {
            tracing::info!(file = %path.display(), "plugin file removed; unloaded");
        }
        let mut by_type: HashMap<String, Arc<LoadedPlugin>> = HashMap::new();
        for (path, state) in files.iter_mut() {
            let Some(plugin) = &state.plugin else {
                continue;
            };
            let package_type = plugin.info.package_type.clone();
            if let Some(other) = by_type.get(&package_type) {
                let message = format!(
                    "package type {package_type:?} is already served by {}",
                    other.file.display()
                );
                tracing::error!(file = %path.display(), "{message}");
                state.error = Some(message);
                state.plugin = None;
                continue;
            }
            by_type.insert(package_type, plugin.clone());
        }
        self.registry.store(Arc::new(Registry { files, by_type }));
    }

    async fn load_file(
        &self,
        path: &Path,
        previous: Option<FileState>,
        config: Option<&Config>,
    ) -> FileState {
        let bytes = match tokio::fs::read(path).await {
            Ok(bytes) => bytes,
            Err(e) => {
                return FileState {
                    plugin: previous.and_then(|p| p.plugin),
                    error: Some(format!("cannot read: {e}")),
                    tried: String::new(),
                }
            }
        };
        let sha256 = hex::encode(Sha256::digest(&bytes));
        if let Some(previous) = previous.as_ref().filter(|p| p.tried == sha256) {
            return previous.clone();
        }
        let file = path.display().to_string();
        let runtime = self.runtime.clone();
        let compiled = tokio::task::spawn_blocking(move || runtime.compile(&bytes)).await;
        let loaded = match compiled {
            Ok(Ok(mut compiled)) => match self.runtime.describe(&compiled, &file).await {
                Ok(info) => {
                    compiled.environment = info
                        .environment
                        .iter()
                        .filter_map(|name| Some((name.clone(), std::env::var(name).ok()?)))
                        .collect();
                    Ok(Arc::new(LoadedPlugin {
                        info,
                        file: path.to_path_buf(),
                        sha256: compiled.sha256.clone(),
                        loaded_at: SystemTime::now(),
                        compiled,
                    }))
                }
                Err(e) => Err(format!("{e:#}")),
            },
            Ok(Err(e)) => Err(format!("{e:#}")),
            Err(e) => Err(format!("compilation panicked: {e}")),
        };
        let loaded = match (loaded, config) {
            (Ok(plugin), Some(config)) => match self.validate_repos(&plugin, config).await {
                Ok(()) => Ok(plugin),
                Err(e) => Err(format!("refuses the serving configuration: {e}")),
            },
            (loaded, _) => loaded,
        };
        match loaded {
            Ok(plugin) => {
                tracing::info!(
                    file = %file,
                    plugin = %plugin.label(),
                    package_type = %plugin.info.package_type,
                    sha256 = %plugin.sha256,
                    "plugin loaded"
                );
                FileState {
                    plugin: Some(plugin),
                    error: None,
                    tried: sha256,
                }
            }
            Err(error) => {
                let kept = previous.and_then(|p| p.plugin);
                tracing::error!(
                    file = %file,
                    error = %error,
                    serving = kept.as_ref().map(|p| p.label()).unwrap_or_default(),
                    "plugin failed to load"
                );
                FileState {
                    plugin: kept,
                    error: Some(error),
                    tried: sha256,
                }
            }
        }
    }

    /// Checks the settings of every repository of `config` with the plugin
    /// serving its package type.
    pub async fn validate(&self, config: &Config) -> Result<(), String> {
        for plugin in self.registry.load().by_type.values() {
            self.validate_repos(plugin, config).await?;
        }
        Ok(())
    }

    /// Checks the settings of the repositories of `config` that `plugin`
    /// serves.
    async fn validate_repos(&self, plugin: &LoadedPlugin, config: &Config) -> Result<(), String> {
        let served = config
            .repos
            .values()
            .filter(|repo| repo.package() == plugin.info.package_type);
        for repo in served {
            let refused = match self
                .validate_settings(plugin, repo_context(repo, String::new()))
                .await
            {
                Ok(Ok(())) => continue,
                Ok(Err(PluginError::InvalidSettings(m))) => m,
                Ok(Err(other)) => format!("{other:?}"),
                Err(failure) => failure.to_string(),
            };
            return Err(format!(
                "repository {}: plugin {} refuses its settings: {refused}",
                repo.name,
                plugin.label()
            ));
        }
        Ok(())
    }

    /// The document a loaded plugin serves at `/.well-known/{name}`.
    pub fn well_known(&self, name: &str) -> Option<format::WellKnown> {
        let registry = self.registry.load();
        let mut plugins: Vec<_> = registry.by_type.values().collect();
        plugins.sort_by(|a, b| a.info.package_type.cmp(&b.info.package_type));
        plugins
            .into_iter()
            .find_map(|p| p.info.well_known.iter().find(|w| w.name == name).cloned())
    }

    /// Every file in the folder with its plugin and last error.
    pub fn status(&self) -> Vec<PluginStatus> {
        let registry = self.registry.load();
        registry
            .files
            .iter()
            .map(|(path, state)| {
                let plugin = state.plugin.as_ref();
                PluginStatus {
                    file: path
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                    name: plugin.map(|p| p.info.name.clone()),
                    version: plugin.map(|p| p.info.version.clone()),
                    package_type: plugin.map(|p| p.info.package_type.clone()),
                    wit_version: plugin.map(|p| p.compiled.wit_version()),
                    environment: plugin
                        .map(|p| p.info.environment.clone())
                        .unwrap_or_default(),
                    description: plugin.map(|p| p.info.description.clone()),
                    mutable_patterns: plugin
                        .map(|p| p.info.mutable_patterns.clone())
                        .unwrap_or_default(),
                    immutable_patterns: plugin
                        .map(|p| p.info.immutable_patterns.clone())
                        .unwrap_or_default(),
                    sha256: plugin.map(|p| p.sha256.clone()),
                    loaded_at: plugin.map(|p| crate::util::rfc3339(p.loaded_at)),
                    active: plugin.is_some_and(|p| {
                        registry
                            .by_type
                            .get(&p.info.package_type)
                            .is_some_and(|active| Arc::ptr_eq(active, p))
                    }),
                    last_error: state.error.clone(),
                }
            })
            .collect()
    }

    /// `validate-settings` of a repository (0.1 plugins accept any).
    pub async fn validate_settings(
        &self,
        plugin: &LoadedPlugin,
        repo: RepoContext,
    ) -> CallResult<()> {
        self.call(plugin, CallScope::bare(), move |instance, store| {
            Box::pin(async move {
                match instance {
                    Instance::V0_2(p) => {
                        p.artifactapi_plugin_format()
                            .call_validate_settings(store, &repo)
                            .await
                    }
                    Instance::V0_1(_) => Ok(Ok(())),
                }
            })
        })
        .await
    }

    /// `classify` for a request.
    pub async fn classify(
        &self,
        plugin: &LoadedPlugin,
        scope: CallScope,
        repo: RepoContext,
        request: RequestInfo,
    ) -> CallResult<Classification> {
        self.call(plugin, scope, move |instance, store| {
            Box::pin(async move {
                match instance {
                    Instance::V0_2(p) => {
                        p.artifactapi_plugin_format()
                            .call_classify(store, &repo, &request)
                            .await
                    }
                    Instance::V0_1(p) => Ok(p
                        .artifactapi_plugin_format()
                        .call_classify(store, &v0_1::repo(&repo), &v0_1::request(&request))
                        .await?
                        .up()),
                }
            })
        })
        .await
    }

    /// `prepare-upstream` for a request.
    pub async fn prepare_upstream(
        &self,
        plugin: &LoadedPlugin,
        scope: CallScope,
        repo: RepoContext,
        request: RequestInfo,
    ) -> CallResult<UpstreamRequest> {
        self.call(plugin, scope, move |instance, store| {
            Box::pin(async move {
                match instance {
                    Instance::V0_2(p) => {
                        p.artifactapi_plugin_format()
                            .call_prepare_upstream(store, &repo, &request)
                            .await
                    }
                    Instance::V0_1(p) => Ok(p
                        .artifactapi_plugin_format()
                        .call_prepare_upstream(store, &v0_1::repo(&repo), &v0_1::request(&request))
                        .await?
                        .up()),
                }
            })
        })
        .await
    }

    /// `rewrite-index` for an index document.
    pub async fn rewrite_index(
        &self,
        plugin: &LoadedPlugin,
        scope: CallScope,
        repo: RepoContext,
        request: RequestInfo,
        document: Document,
        options: IndexOptions,
    ) -> CallResult<Rewritten> {
        self.call(plugin, scope, move |instance, store| {
            Box::pin(async move {
                match instance {
                    Instance::V0_2(p) => {
                        p.artifactapi_plugin_format()
                            .call_rewrite_index(store, &repo, &request, &document, options)
                            .await
                    }
                    Instance::V0_1(p) => Ok(p
                        .artifactapi_plugin_format()
                        .call_rewrite_index(
                            store,
                            &v0_1::repo(&repo),
                            &v0_1::request(&request),
                            &v0_1::document(&document),
                            v0_1::options(options),
                        )
                        .await?
                        .up()),
                }
            })
        })
        .await
    }

    /// `merge-indexes` for a virtual repository.
    pub async fn merge_indexes(
        &self,
        plugin: &LoadedPlugin,
        scope: CallScope,
        repo: RepoContext,
        request: RequestInfo,
        documents: Vec<Document>,
    ) -> CallResult<Document> {
        self.call(plugin, scope, move |instance, store| {
            Box::pin(async move {
                match instance {
                    Instance::V0_2(p) => {
                        p.artifactapi_plugin_format()
                            .call_merge_indexes(store, &repo, &request, &documents)
                            .await
                    }
                    Instance::V0_1(p) => {
                        let documents: Vec<_> = documents.iter().map(v0_1::document).collect();
                        Ok(p.artifactapi_plugin_format()
                            .call_merge_indexes(
                                store,
                                &v0_1::repo(&repo),
                                &v0_1::request(&request),
                                &documents,
                            )
                            .await?
                            .up())
                    }
                }
            })
        })
        .await
    }

    /// `generate-document` for a path of a local repository (0.1 plugins
    /// classify nothing as generated).
    pub async fn generate_document(
        &self,
        plugin: &LoadedPlugin,
        scope: CallScope,
        repo: RepoContext,
        request: RequestInfo,
    ) -> CallResult<Document> {
        self.call(plugin, scope, move |instance, store| {
            Box::pin(async move {
                match instance {
                    Instance::V0_2(p) => {
                        p.artifactapi_plugin_format()
                            .call_generate_document(store, &repo, &request)
                            .await
                    }
                    Instance::V0_1(_) => Ok(Err(PluginError::Unsupported(
                        "a 0.1.0 plugin generates no documents".into(),
                    ))),
                }
            })
        })
        .await
    }

    /// `check-upload` of a stored upload (0.1 plugins check nothing).
    pub async fn check_upload(
        &self,
        plugin: &LoadedPlugin,
        scope: CallScope,
        repo: RepoContext,
        request: RequestInfo,
        object: ObjectInfo,
    ) -> CallResult<()> {
        self.call(plugin, scope, move |instance, store| {
            Box::pin(async move {
                match instance {
                    Instance::V0_2(p) => {
                        p.artifactapi_plugin_format()
                            .call_check_upload(store, &repo, &request, &object)
                            .await
                    }
                    Instance::V0_1(_) => Ok(Ok(())),
                }
            })
        })
        .await
    }

    async fn call<R, F>(
        &self,
        plugin: &LoadedPlugin,
        scope: CallScope,
        f: F,
    ) -> Result<R, CallFailure>
    where
        F: for<'a> FnOnce(
            &'a Instance,
            &'a mut wasmtime::Store<runtime::HostState>,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = wasmtime::Result<R>> + Send + 'a>,
        >,
        R: Send,
    {
        self.runtime
            .call(&plugin.compiled, &plugin.info.name, scope, f)
            .await
    }
}

/// The `.wasm` files directly in `dir`, sorted.
fn wasm_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "wasm") && p.is_file())
        .collect();
    files.sort();
    files
}
