//! Components built against `artifactapi:plugin@0.1.0` keep serving: their
//! exports are called with the host's (0.2) values converted down, their
//! answers converted up, and their imports answered by the 0.2 host
//! functions. What 0.1 lacks has the behaviour 0.2 documents for a plugin
//! that does nothing there: settings are accepted, uploads are not checked,
//! nothing is `generated`.

use super::bindings::v0_1::artifactapi::plugin as old;
use super::bindings::v0_1::exports::artifactapi::plugin::format as old_format;
use super::bindings::v0_2::artifactapi::plugin as new;
use super::bindings::v0_2::exports::artifactapi::plugin::format as new_format;
use super::runtime::HostState;

fn headers_down(headers: &[new::types::Header]) -> Vec<old::types::Header> {
    headers
        .iter()
        .map(|h| old::types::Header {
            name: h.name.clone(),
            value: h.value.clone(),
        })
        .collect()
}

fn headers_up(headers: Vec<old::types::Header>) -> Vec<new::types::Header> {
    headers
        .into_iter()
        .map(|h| new::types::Header {
            name: h.name,
            value: h.value,
        })
        .collect()
}

pub(super) fn repo(repo: &new::types::RepoContext) -> old::types::RepoContext {
    old::types::RepoContext {
        name: repo.name.clone(),
        kind: match repo.kind {
            new::types::RepoKind::Local => old::types::RepoKind::Local,
            new::types::RepoKind::Remote => old::types::RepoKind::Remote,
            new::types::RepoKind::Virtual => old::types::RepoKind::Virtual,
        },
        base_url: repo.base_url.clone(),
        public_url: repo.public_url.clone(),
        settings: repo.settings.clone(),
    }
}

pub(super) fn request(request: &new::types::RequestInfo) -> old::types::RequestInfo {
    old::types::RequestInfo {
        method: request.method.clone(),
        path: request.path.clone(),
        query: request.query.clone(),
        headers: headers_down(&request.headers),
    }
}

pub(super) fn document(document: &new::types::Document) -> old::types::Document {
    old::types::Document {
        content_type: document.content_type.clone(),
        body: document.body.clone(),
    }
}

pub(super) fn options(options: new::types::IndexOptions) -> old::types::IndexOptions {
    old::types::IndexOptions {
        hide_published_after: options.hide_published_after,
    }
}

fn document_up(document: old::types::Document) -> new::types::Document {
    new::types::Document {
        content_type: document.content_type,
        body: document.body,
    }
}

/// A 0.1 answer in the host's types.
pub(super) trait Up {
    type New;
    fn up(self) -> Self::New;
}

impl<T: Up> Up for Result<T, old::types::PluginError> {
    type New = Result<T::New, new::types::PluginError>;
    fn up(self) -> Self::New {
        use new::types::PluginError as N;
        use old::types::PluginError as O;
        self.map(Up::up).map_err(|e| match e {
            O::NotFound(m) => N::NotFound(m),
            O::InvalidRequest(m) => N::InvalidRequest(m),
            O::InvalidSettings(m) => N::InvalidSettings(m),
            O::InvalidDocument(m) => N::InvalidDocument(m),
            O::Unsupported(m) => N::Unsupported(m),
            O::UpstreamFailed(m) => N::UpstreamFailed(m),
        })
    }
}

impl Up for old::types::Classification {
    type New = new::types::Classification;
    fn up(self) -> Self::New {
        new::types::Classification {
            mutability: match self.mutability {
                old::types::Mutability::Immutable => new::types::Mutability::Immutable,
                old::types::Mutability::Mutable => new::types::Mutability::Mutable,
            },
            rewrite: self.rewrite,
            cache_key: self.cache_key,
            access_name: self.access_name,
            content_type: self.content_type,
            generated: false,
        }
    }
}

impl Up for old::types::UpstreamRequest {
    type New = new::types::UpstreamRequest;
    fn up(self) -> Self::New {
        new::types::UpstreamRequest {
            url: self.url,
            headers: headers_up(self.headers),
        }
    }
}

impl Up for old::types::Document {
    type New = new::types::Document;
    fn up(self) -> Self::New {
        document_up(self)
    }
}

impl Up for old::types::Rewritten {
    type New = new::types::Rewritten;
    fn up(self) -> Self::New {
        new::types::Rewritten {
            document: document_up(self.document),
            published: self
                .published
                .into_iter()
                .map(|p| new::types::Publication {
                    path: p.path,
                    published_at: p.published_at,
                })
                .collect(),
        }
    }
}

impl Up for old_format::PluginInfo {
    type New = new_format::PluginInfo;
    fn up(self) -> Self::New {
        new_format::PluginInfo {
            name: self.name,
            version: self.version,
            package_type: self.package_type,
            description: self.description,
            mutable_patterns: self.mutable_patterns,
            immutable_patterns: self.immutable_patterns,
            environment: Vec::new(),
            well_known: Vec::new(),
        }
    }
}

fn store_error_down(error: new::store_types::StoreError) -> old::store_types::StoreError {
    use new::store_types::StoreError as N;
    use old::store_types::StoreError as O;
    match error {
        N::TooLarge(limit) => O::TooLarge(limit),
        N::Invalid(m) => O::Invalid(m),
        N::Unavailable(m) => O::Unavailable(m),
    }
}

impl old::types::Host for HostState {}
impl old::store_types::Host for HostState {}

impl old::log::Host for HostState {
    async fn log(&mut self, level: old::log::Level, message: String) -> wasmtime::Result<()> {
        use new::log::Level as N;
        use old::log::Level as O;
        let level = match level {
            O::Trace => N::Trace,
            O::Debug => N::Debug,
            O::Info => N::Info,
            O::Warn => N::Warn,
            O::Error => N::Error,
        };
        new::log::Host::log(self, level, message).await
    }
}

impl old::cache::Host for HostState {
    async fn get(
        &mut self,
        key: String,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, old::store_types::StoreError>> {
        Ok(new::cache::Host::get(self, key)
            .await?
            .map_err(store_error_down))
    }

    async fn set(
        &mut self,
        key: String,
        value: Vec<u8>,
        ttl_seconds: u32,
    ) -> wasmtime::Result<Result<(), old::store_types::StoreError>> {
        Ok(new::cache::Host::set(self, key, value, ttl_seconds)
            .await?
            .map_err(store_error_down))
    }

    async fn delete(
        &mut self,
        key: String,
    ) -> wasmtime::Result<Result<(), old::store_types::StoreError>> {
        Ok(new::cache::Host::delete(self, key)
            .await?
            .map_err(store_error_down))
    }
}

impl old::cas::Host for HostState {
    async fn read(
        &mut self,
        digest: String,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, old::store_types::StoreError>> {
        Ok(new::cas::Host::read(self, digest)
            .await?
            .map_err(store_error_down))
    }

    async fn write(
        &mut self,
        data: Vec<u8>,
    ) -> wasmtime::Result<Result<String, old::store_types::StoreError>> {
        Ok(new::cas::Host::write(self, data)
            .await?
            .map_err(store_error_down))
    }
}

impl old::metadata::Host for HostState {
    async fn lookup(
        &mut self,
        repo: String,
        path: String,
    ) -> wasmtime::Result<Result<Option<old::metadata::ObjectInfo>, old::store_types::StoreError>>
    {
        let found = new::metadata::Host::lookup(self, repo, path).await?;
        Ok(found
            .map(|info| {
                info.map(|i| old::metadata::ObjectInfo {
                    path: i.path,
                    digest: i.digest,
                    size: i.size,
                    content_type: i.content_type,
                    stored_at: i.stored_at,
                    expires_at: i.expires_at,
                })
            })
            .map_err(store_error_down))
    }
}

impl old::upstream::Host for HostState {
    async fn fetch(
        &mut self,
        request: old::upstream::Request,
    ) -> wasmtime::Result<Result<old::upstream::Response, old::upstream::FetchError>> {
        use new::upstream::FetchError as N;
        use old::upstream::FetchError as O;
        let request = new::upstream::Request {
            method: request.method,
            url: request.url,
            headers: headers_up(request.headers),
        };
        let answer = new::upstream::Host::fetch(self, request).await?;
        Ok(answer
            .map(|r| old::upstream::Response {
                status: r.status,
                headers: headers_down(&r.headers),
                body: r.body,
            })
            .map_err(|e| match e {
                N::Forbidden(m) => O::Forbidden(m),
                N::InvalidRequest(m) => O::InvalidRequest(m),
                N::TooLarge(limit) => O::TooLarge(limit),
                N::Unreachable(m) => O::Unreachable(m),
                N::Timeout => O::Timeout,
            }))
    }
}
