//! What an artifactapi format plugin is built on.
//!
//! A plugin implements [`Format`]: `describe` and `classify` are required,
//! everything else has a default that suits a format with nothing to say
//! there (upstream requests go to `{base-url}/{path}`, documents pass
//! through unchanged, settings and uploads are accepted). Then it exports
//! itself:
//!
//! ```ignore
//! use artifactapi_plugin_sdk::prelude::*;
//!
//! pub struct MyFormat;
//!
//! impl Format for MyFormat {
//!     fn describe() -> PluginInfo { /* ... */ }
//!     fn classify(repo: RepoContext, request: RequestInfo)
//!         -> Result<Classification, PluginError> { /* ... */ }
//! }
//!
//! artifactapi_plugin_sdk::export!(MyFormat);
//! ```
//!
//! `export!` emits the component exports only when building for
//! `wasm32-wasip2`: their symbol names (`artifactapi:plugin/format@0.2.0#classify`)
//! cannot be exported from a native library. Everything else compiles
//! natively, where calling a host import panics, so a plugin's format logic
//! is unit-tested with a plain `cargo test`.
//!
//! The helpers formats share live here once: [`upstream_url`] and
//! [`direct_upstream_request`], [`header`], [`file_name`], [`time`] (RFC 3339
//! publish times), [`links`] (leading an upstream document's links back
//! through the proxy) and [`classification`].

pub mod links;
pub mod time;

/// The generated bindings of `artifactapi:plugin@0.2.0`; use the
/// re-exports instead.
#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit/since_v0.2.0",
        world: "plugin",
        pub_export_macro: true,
        export_macro_name: "export_plugin",
        default_bindings_module: "artifactapi_plugin_sdk::bindings",
        additional_derives: [PartialEq, Eq],
    });
}

pub use bindings::artifactapi::plugin::{
    access, cache, cas, log, metadata, signing, store_types, types, upstream,
};
#[doc(hidden)]
pub use bindings::export_plugin;
pub use bindings::exports::artifactapi::plugin::format::{self, PluginInfo, WellKnown};

use std::fmt::Write as _;

use types::{
    Classification, Document, Header, IndexOptions, Mutability, ObjectInfo, PluginError,
    RepoContext, RequestInfo, Rewritten, UpstreamRequest,
};

/// What a plugin author usually needs in scope.
pub mod prelude {
    pub use crate::links::{Link, Links};
    pub use crate::types::{
        Classification, Document, Header, IndexOptions, Mutability, ObjectInfo, PluginError,
        Publication, RepoContext, RepoKind, RequestInfo, Rewritten, UpstreamRequest,
    };
    pub use crate::{
        classification, direct_upstream_request, file_name, header, upstream_url, Format,
        PluginInfo, WellKnown,
    };
}

/// A package format: the contract's `format` interface with defaults.
///
/// Every function is called on a fresh instance: keep nothing in statics
/// between calls (use the `cache` import). The host documents each call in
/// `wit/since_v0.2.0/plugin.wit`.
pub trait Format {
    /// Who the plugin is; called once when it loads.
    fn describe() -> PluginInfo;

    /// Checks a repository's settings when the configuration loads. Default:
    /// any settings are accepted.
    fn validate_settings(repo: RepoContext) -> Result<(), PluginError> {
        let _ = repo;
        Ok(())
    }

    /// Classifies a request path; called for every request, keep it cheap.
    fn classify(repo: RepoContext, request: RequestInfo) -> Result<Classification, PluginError>;

    /// The upstream request for a path of a remote repository. Default:
    /// GET `{base-url}/{path}?{query}` with no headers of the plugin's own.
    fn prepare_upstream(
        repo: RepoContext,
        request: RequestInfo,
    ) -> Result<UpstreamRequest, PluginError> {
        Ok(direct_upstream_request(&repo, &request))
    }

    /// Rewrites an index document for a client. Default: unchanged, no
    /// publish times.
    fn rewrite_index(
        repo: RepoContext,
        request: RequestInfo,
        document: Document,
        options: IndexOptions,
    ) -> Result<Rewritten, PluginError> {
        let _ = (repo, request, options);
        Ok(Rewritten {
            document,
            published: Vec::new(),
        })
    }

    /// Merges a virtual repository's member documents, earlier members
    /// first. Default: unsupported (the request fails with 501).
    fn merge_indexes(
        repo: RepoContext,
        request: RequestInfo,
        documents: Vec<Document>,
    ) -> Result<Document, PluginError> {
        let _ = (repo, documents);
        Err(PluginError::Unsupported(format!(
            "merging {} of several repositories",
            request.path
        )))
    }

    /// Makes a `generated` document of a local repository. Default: not
    /// found (a plugin that generates nothing never classifies a path so).
    fn generate_document(repo: RepoContext, request: RequestInfo) -> Result<Document, PluginError> {
        Err(PluginError::NotFound(format!(
            "{} is not in repository {}",
            request.path, repo.name
        )))
    }

    /// Checks an upload to a local repository before it is recorded.
    /// Default: accepted.
    fn check_upload(
        repo: RepoContext,
        request: RequestInfo,
        object: ObjectInfo,
    ) -> Result<(), PluginError> {
        let _ = (repo, request, object);
        Ok(())
    }
}

impl<T: Format> format::Guest for T {
    fn describe() -> PluginInfo {
        T::describe()
    }

    fn validate_settings(repo: RepoContext) -> Result<(), PluginError> {
        T::validate_settings(repo)
    }

    fn classify(repo: RepoContext, request: RequestInfo) -> Result<Classification, PluginError> {
        T::classify(repo, request)
    }

    fn prepare_upstream(
        repo: RepoContext,
        request: RequestInfo,
    ) -> Result<UpstreamRequest, PluginError> {
        T::prepare_upstream(repo, request)
    }

    fn rewrite_index(
        repo: RepoContext,
        request: RequestInfo,
        document: Document,
        options: IndexOptions,
    ) -> Result<Rewritten, PluginError> {
        T::rewrite_index(repo, request, document, options)
    }

    fn merge_indexes(
        repo: RepoContext,
        request: RequestInfo,
        documents: Vec<Document>,
    ) -> Result<Document, PluginError> {
        T::merge_indexes(repo, request, documents)
    }

    fn generate_document(repo: RepoContext, request: RequestInfo) -> Result<Document, PluginError> {
        T::generate_document(repo, request)
    }

    fn check_upload(
        repo: RepoContext,
        request: RequestInfo,
        object: ObjectInfo,
    ) -> Result<(), PluginError> {
        T::check_upload(repo, request, object)
    }
}

/// Exports a [`Format`] as the component's `format` interface (on
/// `wasm32` only; see the crate documentation).
#[macro_export]
macro_rules! export {
    ($format:ident) => {
        #[cfg(target_arch = "wasm32")]
        $crate::export_plugin!($format);
    };
}

/// A classification with every optional field empty.
pub fn classification(mutability: Mutability, rewrite: bool) -> Classification {
    Classification {
        mutability,
        rewrite,
        cache_key: None,
        access_name: None,
        content_type: None,
        generated: false,
    }
}

/// Builds an upstream URL: `base_url` and `path` joined by exactly one `/`,
/// then `?query` when `query` is not empty.
///
/// `path` is the host's percent-decoded request path, so the characters that
/// cannot stand literally in a URL path (`%`, `?`, `#`, spaces, controls and
/// non-ASCII bytes, among others) are percent-encoded again. `query` is
/// already raw and is appended as it is.
pub fn upstream_url(base_url: &str, path: &str, query: &str) -> String {
    let base = base_url.trim_end_matches('/');
    let path = path.trim_start_matches('/');
    let mut url = String::with_capacity(base.len() + path.len() + query.len() + 2);
    url.push_str(base);
    url.push('/');
    for byte in path.bytes() {
        if is_path_byte(byte) {
            url.push(char::from(byte));
        } else {
            // Writing to a String cannot fail.
            let _ = write!(url, "%{byte:02X}");
        }
    }
    if !query.is_empty() {
        url.push('?');
        url.push_str(query);
    }
    url
}

/// The upstream request most formats need: GET `{base-url}/{path}` (plus
/// `?query`) of the repository, with no headers of the plugin's own.
pub fn direct_upstream_request(repo: &RepoContext, request: &RequestInfo) -> UpstreamRequest {
    UpstreamRequest {
        url: upstream_url(&repo.base_url, &request.path, &request.query),
        headers: Vec::new(),
    }
}

/// Whether `byte` may stand unencoded in a URL path: unreserved characters,
/// sub-delimiters, `:`, `@` and the `/` separator (RFC 3986).
fn is_path_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/".contains(&byte)
}

/// The value of the first header named `name`, compared case-insensitively.
pub fn header<'a>(headers: &'a [Header], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value.as_str())
}

/// The last segment of a `/`-separated path; empty when the path ends in `/`.
pub fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_url_joins_with_one_slash() {
        let base = "https://alpine.example.org/alpine";
        let want = "https://alpine.example.org/alpine/v3.20/main/x86_64/APKINDEX.tar.gz";
        assert_eq!(
            upstream_url(base, "v3.20/main/x86_64/APKINDEX.tar.gz", ""),
            want
        );
        let slashed = "https://alpine.example.org/alpine/";
        assert_eq!(
            upstream_url(slashed, "/v3.20/main/x86_64/APKINDEX.tar.gz", ""),
            want
        );
        assert_eq!(
            upstream_url(base, "", ""),
            "https://alpine.example.org/alpine/"
        );
    }

    #[test]
    fn upstream_url_appends_query() {
        assert_eq!(
            upstream_url("https://rpm.example.org", "repodata/repomd.xml", "a=1&b=2"),
            "https://rpm.example.org/repodata/repomd.xml?a=1&b=2"
        );
    }

    #[test]
    fn upstream_url_reencodes_the_decoded_path() {
        assert_eq!(
            upstream_url(
                "https://rpm.example.org",
                "a b/100%/c?d#e/é/libstdc++-1:2.rpm",
                ""
            ),
            "https://rpm.example.org/a%20b/100%25/c%3Fd%23e/%C3%A9/libstdc++-1:2.rpm"
        );
    }

    #[test]
    fn direct_upstream_request_uses_base_url_path_and_query() {
        let repo = RepoContext {
            name: "alpine".into(),
            kind: types::RepoKind::Remote,
            base_url: "https://alpine.example.org/alpine".into(),
            public_url: "http://proxy.example.org/api/v1/remote/alpine".into(),
            settings: "{}".into(),
        };
        let request = RequestInfo {
            method: "GET".into(),
            path: "v3.20/main/x86_64/APKINDEX.tar.gz".into(),
            query: "x=1".into(),
            headers: Vec::new(),
        };
        assert_eq!(
            direct_upstream_request(&repo, &request),
            UpstreamRequest {
                url: "https://alpine.example.org/alpine/v3.20/main/x86_64/APKINDEX.tar.gz?x=1"
                    .into(),
                headers: Vec::new(),
            }
        );
    }

    #[test]
    fn header_is_case_insensitive_and_takes_the_first() {
        let headers = vec![
            Header {
                name: "accept".into(),
                value: "text/html".into(),
            },
            Header {
                name: "Accept".into(),
                value: "application/json".into(),
            },
        ];
        assert_eq!(header(&headers, "ACCEPT"), Some("text/html"));
        assert_eq!(header(&headers, "authorization"), None);
    }

    #[test]
    fn file_name_is_the_last_segment() {
        assert_eq!(
            file_name("v3.20/main/x86_64/APKINDEX.tar.gz"),
            "APKINDEX.tar.gz"
        );
        assert_eq!(file_name("busybox.apk"), "busybox.apk");
        assert_eq!(file_name("repodata/"), "");
        assert_eq!(file_name(""), "");
    }
}
