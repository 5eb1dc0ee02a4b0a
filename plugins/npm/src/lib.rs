//! artifactapi format plugin for npm registries (npm, pnpm, yarn clients).
//!
//! - A package document (`name`, `@scope/name`) is mutable. The host caches
//!   the full document once per package, fetched with `accept:
//!   application/json`; every serve rewrites it for the client: tarball
//!   links lead back through the proxy, versions under quarantine are left
//!   out, and clients asking for `application/vnd.npm.install-v1+json` get
//!   the abbreviated form built from the full one.
//! - A tarball (`name/-/name-1.0.0.tgz`) never changes once published.
//! - Other registry endpoints (`-/ping`, `-/v1/search`, ...) are mutable and
//!   passed through as they are.

pub mod packument;
pub mod path;

#[cfg(test)]
mod tests;

use artifactapi_plugin_sdk::types::{
    Classification, Document, Header, IndexOptions, Mutability, PluginError, Publication,
    RepoContext, RequestInfo, Rewritten, UpstreamRequest,
};
use artifactapi_plugin_sdk::{direct_upstream_request, header};
use artifactapi_plugin_sdk::{Format, PluginInfo};

use packument::{Form, Links};
use path::NpmPath;

/// The media type of the full package document.
pub const FULL_TYPE: &str = "application/json";
/// The media type of the abbreviated ("corgi") package document.
pub const ABBREVIATED_TYPE: &str = "application/vnd.npm.install-v1+json";

/// The npm format plugin.
pub struct NpmPlugin;

artifactapi_plugin_sdk::export!(NpmPlugin);

/// The verdict on a request below an npm repository.
pub fn classify_request(request: &RequestInfo) -> Classification {
    let parsed = NpmPath::parse(&request.path);
    let (mutability, rewrite, content_type) = match &parsed {
        NpmPath::Package { .. } | NpmPath::Version { .. } => (Mutability::Mutable, true, FULL_TYPE),
        NpmPath::Tarball { .. } => (Mutability::Immutable, false, "application/octet-stream"),
        NpmPath::Endpoint => (Mutability::Mutable, false, FULL_TYPE),
    };
    // Both spellings of a scoped name share one cache entry; endpoints such
    // as `-/v1/search?text=x` differ by their query.
    let cache_key = match parsed.canonical() {
        Some(canonical) => Some(canonical),
        None if !request.query.is_empty() => Some(format!("{}?{}", request.path, request.query)),
        None => None,
    };
    Classification {
        mutability,
        rewrite,
        cache_key,
        access_name: parsed.package_name().map(String::from),
        content_type: Some(content_type.into()),
        generated: false,
    }
}

/// The upstream request for a path: package and version documents are
/// always fetched in full (`accept: application/json`), scoped names as
/// `@scope%2fname`; tarballs and endpoints go to `{base-url}/{path}`.
pub fn upstream_request(repo: &RepoContext, request: &RequestInfo) -> UpstreamRequest {
    let parsed = NpmPath::parse(&request.path);
    let Some(path) = parsed.upstream_path() else {
        return direct_upstream_request(repo, request);
    };
    let url = format!("{}/{path}", repo.base_url.trim_end_matches('/'));
    let headers = match parsed {
        NpmPath::Package { .. } | NpmPath::Version { .. } => vec![Header {
            name: "accept".into(),
            value: FULL_TYPE.into(),
        }],
        NpmPath::Tarball { .. } | NpmPath::Endpoint => Vec::new(),
    };
    UpstreamRequest { url, headers }
}

/// The form of package document the client's `accept` header prefers: the
/// abbreviated one when it names `application/vnd.npm.install-v1+json` with
/// a quality no lower than that of `application/json`.
pub fn preferred_form(headers: &[Header]) -> Form {
    let Some(accept) = header(headers, "accept") else {
        return Form::Full;
    };
    let mut abbreviated: Option<f32> = None;
    let mut full: Option<f32> = None;
    for range in accept.split(',') {
        let mut params = range.split(';');
        let media = params.next().unwrap_or("").trim();
        let quality = params
            .filter_map(|p| p.trim().strip_prefix("q="))
            .find_map(|q| q.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        let slot = if media.eq_ignore_ascii_case(ABBREVIATED_TYPE) {
            &mut abbreviated
        } else if media.eq_ignore_ascii_case(FULL_TYPE) {
            &mut full
        } else {
            continue;
        };
        *slot = Some(slot.map_or(quality, |q| q.max(quality)));
    }
    match abbreviated {
        Some(q) if q > 0.0 && q >= full.unwrap_or(0.0) => Form::Abbreviated,
        _ => Form::Full,
    }
}

/// Rewrites a package or version document for the client (see
/// [`packument::rewrite_packument`]).
pub fn rewrite(
    repo: &RepoContext,
    request: &RequestInfo,
    document: &Document,
    options: &IndexOptions,
) -> Result<Rewritten, PluginError> {
    let parsed = NpmPath::parse(&request.path);
    let text = std::str::from_utf8(&document.body).map_err(|e| {
        PluginError::InvalidDocument(format!("npm: {}: not UTF-8: {e}", request.path))
    })?;
    let links = Links {
        base_url: &repo.base_url,
        public_url: &repo.public_url,
    };
    let invalid = |e: String| PluginError::InvalidDocument(format!("npm: {}: {e}", request.path));
    match parsed {
        NpmPath::Package { .. } => {
            let form = preferred_form(&request.headers);
            let rewritten =
                packument::rewrite_packument(text, links, form, options.hide_published_after)
                    .map_err(invalid)?;
            let content_type = match form {
                Form::Full => FULL_TYPE,
                Form::Abbreviated => ABBREVIATED_TYPE,
            };
            Ok(Rewritten {
                document: Document {
                    content_type: content_type.into(),
                    body: rewritten.body,
                },
                published: rewritten
                    .published
                    .into_iter()
                    .map(|p| Publication {
                        path: p.path,
                        published_at: p.at,
                    })
                    .collect(),
            })
        }
        NpmPath::Version { .. } => Ok(Rewritten {
            document: Document {
                content_type: FULL_TYPE.into(),
                body: packument::rewrite_version(text, links).map_err(invalid)?,
            },
            published: Vec::new(),
        }),
        NpmPath::Tarball { .. } | NpmPath::Endpoint => Err(PluginError::InvalidRequest(format!(
            "npm: {} is not a package document",
            request.path
        ))),
    }
}

/// Merges the documents of a virtual repository's members (see
/// [`packument::merge_packuments`]); for a version document the first
/// member that has one wins.
pub fn merge(request: &RequestInfo, documents: Vec<Document>) -> Result<Document, PluginError> {
    let not_found = || PluginError::NotFound(format!("npm: no member has {}", request.path));
    match NpmPath::parse(&request.path) {
        NpmPath::Package { .. } => {
            let texts = documents
                .iter()
                .map(|d| std::str::from_utf8(&d.body))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| PluginError::InvalidDocument(format!("npm: not UTF-8: {e}")))?;
            let (position, body) = packument::merge_packuments(&texts)
                .map_err(|e| PluginError::InvalidDocument(format!("npm: {}: {e}", request.path)))?
                .ok_or_else(not_found)?;
            Ok(Document {
                content_type: documents[position].content_type.clone(),
                body,
            })
        }
        NpmPath::Version { .. } => documents
            .into_iter()
            .find(|d| !d.body.trim_ascii().is_empty())
            .ok_or_else(not_found),
        NpmPath::Tarball { .. } | NpmPath::Endpoint => Err(PluginError::InvalidRequest(format!(
            "npm: {} is not a package document",
            request.path
        ))),
    }
}

impl Format for NpmPlugin {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "npm".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            package_type: "npm".into(),
            description: "npm registries: package documents are revalidated and rewritten to route tarballs through the proxy, tarballs are cached for good".into(),
            mutable_patterns: vec![
                "^(@[^/]+/)?[^/@-][^/]*$".into(),
                "^(@[^/]+/)?[^/@-][^/]*/[^/-][^/]*$".into(),
                "^-/".into(),
            ],
            immutable_patterns: vec!["^(@[^/]+/)?[^/]+/-/[^/]+\\.tgz$".into()],
            environment: Vec::new(),
            well_known: Vec::new(),
        }
    }

    fn classify(_repo: RepoContext, request: RequestInfo) -> Result<Classification, PluginError> {
        Ok(classify_request(&request))
    }

    fn prepare_upstream(
        repo: RepoContext,
        request: RequestInfo,
    ) -> Result<UpstreamRequest, PluginError> {
        Ok(upstream_request(&repo, &request))
    }

    fn rewrite_index(
        repo: RepoContext,
        request: RequestInfo,
        document: Document,
        options: IndexOptions,
    ) -> Result<Rewritten, PluginError> {
        rewrite(&repo, &request, &document, &options)
    }

    fn merge_indexes(
        _repo: RepoContext,
        request: RequestInfo,
        documents: Vec<Document>,
    ) -> Result<Document, PluginError> {
        merge(&request, documents)
    }
}
