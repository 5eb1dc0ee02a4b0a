//! The host interfaces plugins import: log, cache, cas, metadata, upstream,
//! signing. Each call is scoped to the repository it is made for; a plugin
//! reaches nothing beyond that scope.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;

use super::bindings::artifactapi::plugin::{
    access, cache, cas, log, metadata, signing, store_types, types, upstream,
};
use super::runtime::HostState;
use crate::signing::Signer;
use crate::storage::meta::ObjectQuery;
use crate::storage::{Digest, ObjectRecord, Storage};

/// Largest value a plugin may keep in the cache.
const CACHE_VALUE_LIMIT: u64 = 1 << 20;
/// Longest a plugin cache entry may live.
const CACHE_TTL_LIMIT: u32 = 86_400;
/// Longest an upstream request from a plugin may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(30);
/// Redirects a plugin's upstream request may follow.
const MAX_REDIRECTS: usize = 10;
/// Most objects one `metadata.list` call returns.
const LIST_LIMIT: u32 = 1000;

/// What the host imports reach besides the plugin's own scope.
#[derive(Clone)]
pub struct Services {
    /// Blobs, metadata and the cache.
    pub storage: Storage,
    /// HTTP for upstream requests: a client that follows no redirect.
    pub http: reqwest::Client,
    /// The key `signing` signs with.
    pub signer: Arc<Signer>,
}

/// How long a presigned link stays valid.
pub const PRESIGN_TTL_SECS: i64 = 2 * 3600;

/// What `access.presign` signs with, for a repository that needs
/// credentials to read.
#[derive(Clone)]
pub struct Presigner {
    /// Signs the links.
    pub auth: Arc<crate::auth::Authenticator>,
    /// The repository the client addressed (links lead to it).
    pub repo: String,
    /// When the links expire, seconds since the epoch.
    pub expires: i64,
    /// Set once a call presigned a link: its answer expires with them.
    pub used: Arc<std::sync::atomic::AtomicBool>,
}

/// What one plugin call may touch.
pub struct CallScope {
    /// The plugin's name, for logs and the cache namespace.
    pub plugin: String,
    /// The repository the call is for; empty for `describe`.
    pub repo: String,
    /// Storage, HTTP and the signing key; None while a plugin is being
    /// checked.
    pub services: Option<Services>,
    /// Origins the upstream import may reach.
    pub origins: Vec<String>,
    /// Repositories the metadata import may read.
    pub repos: Vec<String>,
    /// Largest document through cas and upstream, in bytes.
    pub cap: u64,
    /// Signs links for `access.presign`; None: links need no signature.
    pub presigner: Option<Presigner>,
}

impl CallScope {
    /// A scope with no services: imports answer `unavailable`.
    pub fn bare() -> CallScope {
        CallScope {
            plugin: String::new(),
            repo: String::new(),
            services: None,
            origins: Vec::new(),
            repos: Vec::new(),
            cap: 0,
            presigner: None,
        }
    }

    /// The namespaced cache key and the storage, or why the call cannot go on.
    fn cache_target(&self, key: &str) -> Result<(String, &Storage), store_types::StoreError> {
        if key.is_empty() || key.len() > 512 {
            return Err(store_types::StoreError::Invalid(
                "keys are 1 to 512 bytes".into(),
            ));
        }
        let key = crate::storage::Key::Plugin {
            plugin: &self.plugin,
            key,
        };
        Ok((key.to_string(), self.storage()?))
    }

    fn storage(&self) -> Result<&Storage, store_types::StoreError> {
        self.services
            .as_ref()
            .map(|services| &services.storage)
            .ok_or_else(|| store_types::StoreError::Unavailable("no storage while loading".into()))
    }

    /// Refuses a repository outside the call's scope.
    fn check_repo(&self, repo: &str) -> Result<(), store_types::StoreError> {
        if self.repos.iter().any(|r| r == repo) {
            Ok(())
        } else {
            Err(store_types::StoreError::Invalid(format!(
                "repository {repo:?} is outside this call's scope"
            )))
        }
    }
}

/// A digest a plugin passed, or why it is refused.
fn parse_digest(text: &str) -> Result<Digest, store_types::StoreError> {
    Digest::parse(text)
        .ok_or_else(|| store_types::StoreError::Invalid(format!("not a sha256 digest: {text:?}")))
}

fn unavailable(e: impl std::fmt::Display) -> store_types::StoreError {
    store_types::StoreError::Unavailable(e.to_string())
}

/// Refuses a URL outside the scope's upstream origins; `from` is the URL
/// that redirected to it, if one did.
fn check_origin(
    scope: &CallScope,
    url: &reqwest::Url,
    from: Option<&reqwest::Url>,
) -> Result<(), upstream::FetchError> {
    let origin = crate::config::origin_of(url.as_str()).ok_or_else(|| {
        upstream::FetchError::InvalidRequest(format!("not an http(s) URL: {:?}", url.as_str()))
    })?;
    if scope.origins.contains(&origin) {
        return Ok(());
    }
    let message = match from {
        Some(from) => {
            tracing::warn!(
                plugin = %scope.plugin,
                repo = %scope.repo,
                from = %from,
                to = %url,
                "refused a redirect out of the repository's upstreams"
            );
            format!(
                "{from} redirects to {origin}, which is not an upstream of repository {}",
                scope.repo
            )
        }
        None => format!("{origin} is not an upstream of repository {}", scope.repo),
    };
    Err(upstream::FetchError::Forbidden(message))
}

impl types::Host for HostState {}
impl store_types::Host for HostState {}

impl log::Host for HostState {
    async fn log(&mut self, level: log::Level, message: String) -> wasmtime::Result<()> {
        let plugin = &self.scope.plugin;
        let repo = &self.scope.repo;
        match level {
            log::Level::Trace => tracing::trace!(plugin, repo, "{message}"),
            log::Level::Debug => tracing::debug!(plugin, repo, "{message}"),
            log::Level::Info => tracing::info!(plugin, repo, "{message}"),
            log::Level::Warn => tracing::warn!(plugin, repo, "{message}"),
            log::Level::Error => tracing::error!(plugin, repo, "{message}"),
        }
        Ok(())
    }
}

impl cache::Host for HostState {
    async fn get(
        &mut self,
        key: String,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, store_types::StoreError>> {
        let scope = &self.scope;
        Ok(async {
            let (key, storage) = scope.cache_target(&key)?;
            let value = storage.cache.get(&key).await.map_err(unavailable)?;
            Ok(value.map(|b| b.to_vec()))
        }
        .await)
    }

    async fn set(
        &mut self,
        key: String,
        value: Vec<u8>,
        ttl_seconds: u32,
    ) -> wasmtime::Result<Result<(), store_types::StoreError>> {
        let scope = &self.scope;
        Ok(async {
            if value.len() as u64 > CACHE_VALUE_LIMIT {
                return Err(store_types::StoreError::TooLarge(CACHE_VALUE_LIMIT));
            }
            let (key, storage) = scope.cache_target(&key)?;
            let ttl = Duration::from_secs(ttl_seconds.clamp(1, CACHE_TTL_LIMIT).into());
            storage
                .cache
                .set(&key, Bytes::from(value), ttl)
                .await
                .map_err(unavailable)
        }
        .await)
    }

    async fn delete(
        &mut self,
        key: String,
    ) -> wasmtime::Result<Result<(), store_types::StoreError>> {
        let scope = &self.scope;
        Ok(async {
            let (key, storage) = scope.cache_target(&key)?;
            storage.cache.delete(&key).await.map_err(unavailable)
        }
        .await)
    }
}

impl cas::Host for HostState {
    async fn read(
        &mut self,
        digest: String,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, store_types::StoreError>> {
        let scope = &self.scope;
        Ok(async {
            let digest = parse_digest(&digest)?;
            let cap = scope.cap;
            let storage = scope.storage()?;
            match storage.cas.size(&digest).await.map_err(unavailable)? {
                Some(size) if size > cap => return Err(store_types::StoreError::TooLarge(cap)),
                None => return Ok(None),
                Some(_) => {}
            }
            let bytes = storage
                .cas
                .read_capped(&digest, cap)
                .await
                .map_err(unavailable)?;
            Ok(bytes.map(|b| b.to_vec()))
        }
        .await)
    }

    async fn read_range(
        &mut self,
        digest: String,
        offset: u64,
        length: u64,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, store_types::StoreError>> {
        let scope = &self.scope;
        Ok(async {
            let digest = parse_digest(&digest)?;
            let storage = scope.storage()?;
            let Some(size) = storage.cas.size(&digest).await.map_err(unavailable)? else {
                return Ok(None);
            };
            if offset >= size {
                return Ok(Some(Vec::new()));
            }
            let length = length.min(scope.cap).min(size - offset);
            let bytes = storage
                .cas
                .read_range(&digest, offset, length)
                .await
                .map_err(unavailable)?;
            Ok(bytes.map(|b| b.to_vec()))
        }
        .await)
    }

    async fn write(
        &mut self,
        data: Vec<u8>,
    ) -> wasmtime::Result<Result<String, store_types::StoreError>> {
        let scope = &self.scope;
        Ok(async {
            let cap = scope.cap;
            if data.len() as u64 > cap {
                return Err(store_types::StoreError::TooLarge(cap));
            }
            let storage = scope.storage()?;
            let digest = storage
                .cas
                .put_bytes(Bytes::from(data))
                .await
                .map_err(unavailable)?;
            Ok(digest.to_string())
        }
        .await)
    }
}

impl metadata::Host for HostState {
    async fn lookup(
        &mut self,
        repo: String,
        path: String,
    ) -> wasmtime::Result<Result<Option<metadata::ObjectInfo>, store_types::StoreError>> {
        let scope = &self.scope;
        Ok(async {
            scope.check_repo(&repo)?;
            let storage = scope.storage()?;
            let record = storage.meta.get(&repo, &path).await.map_err(unavailable)?;
            Ok(record.map(object_info))
        }
        .await)
    }

    async fn list_objects(
        &mut self,
        repo: String,
        prefix: String,
        after: String,
        limit: u32,
    ) -> wasmtime::Result<Result<Vec<types::ObjectInfo>, store_types::StoreError>> {
        let scope = &self.scope;
        Ok(async {
            scope.check_repo(&repo)?;
            let storage = scope.storage()?;
            let query = ObjectQuery {
                after: Some(after).filter(|a| !a.is_empty()),
                prefix: Some(prefix).filter(|p| !p.is_empty()),
                limit: limit.min(LIST_LIMIT),
                ..ObjectQuery::default()
            };
            let objects = storage
                .meta
                .list(&repo, &query)
                .await
                .map_err(unavailable)?;
            Ok(objects.into_iter().map(|o| object_info(o.record)).collect())
        }
        .await)
    }
}

/// A stored record as plugins see it.
pub fn object_info(r: ObjectRecord) -> types::ObjectInfo {
    types::ObjectInfo {
        path: r.path,
        digest: format!("sha256:{}", r.digest),
        size: r.size,
        content_type: r.content_type,
        stored_at: r.stored_at.max(0) as u64,
        expires_at: r.expires_at.map(|t| t.max(0) as u64),
    }
}

impl signing::Host for HostState {
    async fn public_key(
        &mut self,
    ) -> wasmtime::Result<Result<signing::SigningKey, store_types::StoreError>> {
        Ok(self.scope.signer().map(|signer| signing::SigningKey {
            key_id: signer.key_id().to_string(),
            armored_public_key: signer.armored_public_key().to_string(),
        }))
    }

    async fn sign(
        &mut self,
        data: Vec<u8>,
    ) -> wasmtime::Result<Result<Vec<u8>, store_types::StoreError>> {
        let scope = &self.scope;
        Ok((|| {
            if data.len() as u64 > scope.cap {
                return Err(store_types::StoreError::TooLarge(scope.cap));
            }
            scope.signer()?.sign(&data).map_err(unavailable)
        })())
    }
}

impl access::Host for HostState {
    async fn presign(&mut self, path: String) -> wasmtime::Result<String> {
        Ok(match &self.scope.presigner {
            Some(presigner) => {
                presigner
                    .used
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                presigner
                    .auth
                    .presign(&presigner.repo, &path, presigner.expires)
            }
            None => String::new(),
        })
    }
}

impl CallScope {
    fn signer(&self) -> Result<&Signer, store_types::StoreError> {
        self.services
            .as_ref()
            .map(|services| services.signer.as_ref())
            .ok_or_else(|| {
                store_types::StoreError::Unavailable("no signing key while loading".into())
            })
    }
}

impl upstream::Host for HostState {
    async fn fetch(
        &mut self,
        request: upstream::Request,
    ) -> wasmtime::Result<Result<upstream::Response, upstream::FetchError>> {
        Ok(fetch_checked(&self.scope, request).await)
    }
}

/// Sends a plugin's upstream request if its origin is one of the scope's,
/// following redirects itself so that every hop is checked the same way (the
/// client it is given must not follow them).
async fn fetch_checked(
    scope: &CallScope,
    request: upstream::Request,
) -> Result<upstream::Response, upstream::FetchError> {
    use upstream::FetchError;
    let method = match request.method.as_str() {
        "GET" => reqwest::Method::GET,
        "HEAD" => reqwest::Method::HEAD,
        other => {
            return Err(FetchError::InvalidRequest(format!(
                "method {other} is not allowed"
            )))
        }
    };
    let mut url = reqwest::Url::parse(&request.url).map_err(|_| {
        FetchError::InvalidRequest(format!("not an http(s) URL: {:?}", request.url))
    })?;
    check_origin(scope, &url, None)?;
    let Some(Services { http: client, .. }) = &scope.services else {
        return Err(FetchError::Unreachable("no network while loading".into()));
    };
    let mut hops = 0;
    let response = loop {
        let mut builder = client
            .request(method.clone(), url.clone())
            .timeout(FETCH_TIMEOUT);
        for header in &request.headers {
            builder = builder.header(&header.name, &header.value);
        }
        let response = builder.send().await.map_err(|e| {
            if e.is_timeout() {
                FetchError::Timeout
            } else {
                FetchError::Unreachable(e.to_string())
            }
        })?;
        let location = response
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .filter(|_| response.status().is_redirection());
        let Some(location) = location else {
            break response;
        };
        hops += 1;
        if hops > MAX_REDIRECTS {
            return Err(FetchError::Unreachable(format!(
                "more than {MAX_REDIRECTS} redirects from {}",
                request.url
            )));
        }
        let next = url.join(location).map_err(|_| {
            FetchError::Unreachable(format!("{url} redirects to an invalid URL {location:?}"))
        })?;
        check_origin(scope, &next, Some(&url))?;
        url = next;
    };
    let cap = scope.cap;
    if response.content_length().is_some_and(|len| len > cap) {
        return Err(FetchError::TooLarge(cap));
    }
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .filter_map(|(name, value)| {
            Some(types::Header {
                name: name.as_str().to_string(),
                value: value.to_str().ok()?.to_string(),
            })
        })
        .collect();
    let mut body = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            if e.is_timeout() {
                FetchError::Timeout
            } else {
                FetchError::Unreachable(e.to_string())
            }
        })?;
        if body.len() as u64 + chunk.len() as u64 > cap {
            return Err(FetchError::TooLarge(cap));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(upstream::Response {
        status,
        headers,
        body,
    })
}
