//! What the request path decides about an object, in one place: the
//! plugin's classification (memoised), the repository's overrides and its
//! access rules. Plugin calls go through [`PluginCall`], which holds the
//! per-request context built once.

use std::sync::Arc;

use axum::http::{header, StatusCode};

use super::ctx::Ctx;
use super::memo::{call_key, KeyBuilder, MemoKey};
use crate::config::Repo;
use crate::error::AppError;
use crate::plugins::{
    CallFailure, CallScope, Classification, Document, Header, IndexOptions, LoadedPlugin,
    Mutability, ObjectInfo, PluginError, Plugins, Presigner, RepoContext, RequestInfo, Rewritten,
    Services, UpstreamRequest, PRESIGN_TTL_SECS,
};
use crate::storage::Digest;

/// Request headers never shown to plugins.
const PRIVATE_HEADERS: &[&str] = &["authorization", "cookie", "proxy-authorization"];

/// What the request path decided about an object.
pub(super) struct Decision {
    /// The metadata key: the plugin's dedup key or the path.
    pub key: String,
    pub mutable: bool,
    /// An index document the plugin renders for each client.
    pub rewrite: bool,
    /// A document the plugin makes from a local repository's contents.
    pub generated: bool,
    /// Stored under its own digest (an OCI blob or digest manifest): its
    /// bytes can never change, whatever kind of repository holds it.
    pub content_addressed: bool,
    pub content_type: Option<String>,
    /// The plugin serving the repository, with the request's context.
    pub plugin: Option<PluginCall>,
    /// The digest a fetched body must have, when the request names one.
    pub expected: Option<Digest>,
    /// Revalidate an expired copy with a HEAD comparing the upstream's
    /// `Docker-Content-Digest` (a registry tag) instead of a conditional GET.
    pub head_revalidate: bool,
    /// The name access patterns matched besides the path (a docker image).
    pub access_name: Option<String>,
    /// Send upstream credentials only when a challenge asks for them (a
    /// registry that may want a token instead).
    pub await_challenge: bool,
}

impl Decision {
    /// An immutable plain file at `key`, no plugin involved.
    pub fn plain(key: String) -> Decision {
        Decision {
            key,
            mutable: false,
            rewrite: false,
            generated: false,
            content_addressed: false,
            content_type: None,
            plugin: None,
            expected: None,
            head_revalidate: false,
            access_name: None,
            await_challenge: false,
        }
    }
}

/// Classifies the request and applies the repository's overrides and access
/// rules.
pub(super) async fn decide(ctx: &Ctx) -> Result<Decision, AppError> {
    let path = &ctx.target.path;
    let mut decision = match ctx.repo.package() {
        crate::config::GENERIC => Decision::plain(path.clone()),
        package => {
            let plugin = ctx.app.plugins.for_package(package).ok_or_else(|| {
                AppError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "PLUGIN_MISSING",
                    format!(
                        "no loaded plugin serves package type {package:?}: add its .wasm to {}",
                        ctx.app.plugins.dir().display()
                    ),
                )
            })?;
            let call = PluginCall::new(ctx, plugin);
            let Classification {
                mutability,
                rewrite,
                cache_key,
                access_name,
                content_type,
                generated,
            } = call.classify(&ctx.app.memos.classify).await?;
            Decision {
                key: cache_key.unwrap_or_else(|| path.clone()),
                mutable: mutability == Mutability::Mutable,
                rewrite,
                generated,
                content_type,
                access_name,
                plugin: Some(call),
                ..Decision::plain(String::new())
            }
        }
    };
    let repo = &ctx.repo;
    if repo.mutable.iter().any(|re| re.is_match(path)) {
        decision.mutable = true;
    } else if repo.immutable.iter().any(|re| re.is_match(path)) {
        decision.mutable = false;
    }
    let names: Vec<&str> = std::iter::once(path.as_str())
        .chain(decision.access_name.as_deref())
        .collect();
    if let Some(rule) = repo
        .block
        .iter()
        .find(|re| names.iter().any(|n| re.is_match(n)))
    {
        return Err(AppError::forbidden(format!(
            "{path} is blocked by the blocklist pattern {:?} of repository {}",
            rule.as_str(),
            repo.name
        )));
    }
    if !repo.allow.is_empty()
        && !repo
            .allow
            .iter()
            .any(|re| names.iter().any(|n| re.is_match(n)))
    {
        return Err(AppError::forbidden(format!(
            "{path} matches none of the include_patterns/patterns of repository {}",
            repo.name
        )));
    }
    Ok(decision)
}

/// A plugin and what its calls for one request are given: the repository's
/// context, the request as plugins see it, and the services the host
/// imports reach.
///
/// `classify`, `rewrite-index` and `merge-indexes` see the method, path,
/// query and `Accept` header only (the WIT contract names `accept` as what
/// picks a document's form): their answers are memoised under those inputs,
/// so nothing else may change them. `prepare-upstream` sees every header
/// but credentials.
#[derive(Clone)]
pub(super) struct PluginCall {
    pub plugin: Arc<LoadedPlugin>,
    pub repo: RepoContext,
    /// The request with only its `Accept` headers.
    pub request: RequestInfo,
    plugins: Arc<Plugins>,
    services: Services,
    /// The repository's configuration, for the scope of a call.
    config: Arc<Repo>,
    /// Signs links to the addressed repository when it needs credentials.
    presigner: Option<Presigner>,
}

impl PluginCall {
    fn new(ctx: &Ctx, plugin: Arc<LoadedPlugin>) -> PluginCall {
        let repo = &ctx.repo;
        PluginCall {
            plugin,
            repo: crate::plugins::repo_context(repo, ctx.public_url.clone()),
            request: RequestInfo {
                method: ctx.method.as_str().to_string(),
                path: ctx.target.path.clone(),
                query: ctx.target.query.clone(),
                headers: ctx.headers_named(&[header::ACCEPT.as_str()]),
            },
            presigner: presigner(ctx),
            plugins: ctx.app.plugins.clone(),
            services: Services {
                storage: ctx.app.storage.clone(),
                http: ctx.app.plugin_http.clone(),
                signer: ctx.app.signer.clone(),
            },
            config: repo.clone(),
        }
    }

    /// Whether an answer of this call's plugin holds presigned links (it
    /// must be rendered again before they expire).
    pub fn presigned(&self) -> bool {
        self.presigner
            .as_ref()
            .is_some_and(|p| p.used.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// `name@version`.
    pub fn label(&self) -> String {
        self.plugin.label()
    }

    /// A memo key of everything this call's answers depend on; callers add
    /// what else goes in (a document's digest).
    pub fn memo_key(&self, kind: &str) -> KeyBuilder {
        let mut key = call_key(kind, &self.plugin.sha256, &self.repo, &self.request);
        // Whether links are presigned changes the answer too.
        key.field([u8::from(self.presigner.is_some())]);
        key
    }

    fn scope(&self) -> CallScope {
        CallScope {
            plugin: self.plugin.info.name.clone(),
            repo: self.repo.name.clone(),
            services: Some(self.services.clone()),
            origins: self.config.origins.clone(),
            repos: self.config.scope_repos.clone(),
            cap: self.plugins.limits().index_size,
            presigner: self.presigner.clone(),
        }
    }

    /// `classify`, memoised.
    async fn classify(
        &self,
        memo: &moka::sync::Cache<MemoKey, Classification>,
    ) -> Result<Classification, AppError> {
        let key = self.memo_key("classify").finish();
        if let Some(classification) = memo.get(&key) {
            return Ok(classification);
        }
        let outcome = self
            .plugins
            .classify(
                &self.plugin,
                self.scope(),
                self.repo.clone(),
                self.request.clone(),
            )
            .await;
        let classification = self.answer(outcome)?;
        memo.insert(key, classification.clone());
        Ok(classification)
    }

    /// `prepare-upstream`, given the client's headers but credentials.
    pub async fn prepare_upstream(
        &self,
        headers: Vec<Header>,
    ) -> Result<UpstreamRequest, AppError> {
        let request = RequestInfo {
            headers,
            ..self.request.clone()
        };
        let outcome = self
            .plugins
            .prepare_upstream(&self.plugin, self.scope(), self.repo.clone(), request)
            .await;
        self.answer(outcome)
    }

    /// `rewrite-index` of one document.
    pub async fn rewrite(
        &self,
        document: Document,
        options: IndexOptions,
    ) -> Result<Rewritten, AppError> {
        let outcome = self
            .plugins
            .rewrite_index(
                &self.plugin,
                self.scope(),
                self.repo.clone(),
                self.request.clone(),
                document,
                options,
            )
            .await;
        self.answer(outcome)
    }

    /// `merge-indexes` of the members' documents.
    pub async fn merge(&self, documents: Vec<Document>) -> Result<Document, AppError> {
        let outcome = self
            .plugins
            .merge_indexes(
                &self.plugin,
                self.scope(),
                self.repo.clone(),
                self.request.clone(),
                documents,
            )
            .await;
        self.answer(outcome)
    }

    /// `generate-document` of a local repository's path.
    pub async fn generate(&self) -> Result<Document, AppError> {
        let outcome = self
            .plugins
            .generate_document(
                &self.plugin,
                self.scope(),
                self.repo.clone(),
                self.request.clone(),
            )
            .await;
        self.answer(outcome)
    }

    /// `check-upload` of a stored upload, before it is recorded.
    pub async fn check_upload(&self, object: ObjectInfo) -> Result<(), AppError> {
        let outcome = self
            .plugins
            .check_upload(
                &self.plugin,
                self.scope(),
                self.repo.clone(),
                self.request.clone(),
                object,
            )
            .await;
        self.answer(outcome)
    }

    /// Turns a call's outcome into the answer or a client error.
    fn answer<T>(
        &self,
        outcome: Result<Result<T, PluginError>, CallFailure>,
    ) -> Result<T, AppError> {
        match outcome {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(plugin_error(&self.plugin, e)),
            Err(failure) => {
                tracing::error!(plugin = %self.label(), error = %failure, "plugin call failed");
                Err(AppError::new(
                    StatusCode::BAD_GATEWAY,
                    "PLUGIN_FAILED",
                    failure.to_string(),
                ))
            }
        }
    }
}

/// A presigner for links to the repository the client addressed, when
/// reading it needs credentials.
fn presigner(ctx: &Ctx) -> Option<Presigner> {
    let addressed = ctx.config.repo(&ctx.target.repo)?;
    (crate::auth::enabled(&ctx.config) && !addressed.anonymous_read()).then(|| Presigner {
        auth: ctx.app.auth.clone(),
        repo: addressed.name.clone(),
        expires: crate::util::now_secs() + PRESIGN_TTL_SECS,
        used: Default::default(),
    })
}

fn plugin_error(plugin: &LoadedPlugin, error: PluginError) -> AppError {
    let name = &plugin.info.name;
    match error {
        PluginError::NotFound(m) => AppError::not_found(m),
        PluginError::InvalidRequest(m) => AppError::bad_request(m),
        PluginError::InvalidSettings(m) => AppError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INVALID_SETTINGS",
            format!("plugin {name}: the repository's settings are invalid: {m}"),
        ),
        PluginError::InvalidDocument(m) => AppError::new(
            StatusCode::BAD_GATEWAY,
            "INVALID_UPSTREAM_DOCUMENT",
            format!("plugin {name}: {m}"),
        ),
        PluginError::Unsupported(m) => AppError::new(
            StatusCode::NOT_IMPLEMENTED,
            "UNSUPPORTED",
            format!("plugin {name}: {m}"),
        ),
        PluginError::UpstreamFailed(m) => AppError::new(
            StatusCode::BAD_GATEWAY,
            "UPSTREAM_ERROR",
            format!("plugin {name}: {m}"),
        ),
    }
}

impl Ctx {
    /// The request's headers with these names, as plugins see headers.
    fn headers_named(&self, names: &[&str]) -> Vec<Header> {
        names
            .iter()
            .flat_map(|name| {
                self.headers.get_all(*name).iter().filter_map(move |value| {
                    Some(Header {
                        name: (*name).to_string(),
                        value: value.to_str().ok()?.to_string(),
                    })
                })
            })
            .collect()
    }

    /// Every request header but credentials, as plugins see headers.
    pub(super) fn public_headers(&self) -> Vec<Header> {
        self.headers
            .iter()
            .filter(|(name, _)| !PRIVATE_HEADERS.contains(&name.as_str()))
            .filter_map(|(name, value)| {
                Some(Header {
                    name: name.as_str().to_string(),
                    value: value.to_str().ok()?.to_string(),
                })
            })
            .collect()
    }
}
