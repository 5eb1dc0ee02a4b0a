//! Guest bindings and small helpers for artifactapi format plugins.
//!
//! The bindings of the `artifactapi:plugin@0.1.0` world are generated here
//! once. A plugin implements [`format::Guest`] and exports it with
//!
//! ```ignore
//! struct MyPlugin;
//! impl artifactapi_plugin_sdk::format::Guest for MyPlugin { /* ... */ }
//! #[cfg(target_arch = "wasm32")]
//! artifactapi_plugin_sdk::export_plugin!(MyPlugin);
//! ```
//!
//! The `cfg` keeps the component exports out of native builds: their symbol
//! names (`artifactapi:plugin/format@0.1.0#classify`) cannot be exported from
//! a native shared library. The rest of the bindings compile natively, where
//! calling an import panics, so a plugin's pure logic can be unit-tested with
//! `cargo test`.

/// The generated bindings; use the re-exports below instead.
#[doc(hidden)]
pub mod bindings {
    // Generates `artifactapi::plugin::*` (the host's imports and the shared
    // types), `exports::artifactapi::plugin::format` (what a plugin
    // implements) and the `export_plugin!` macro.
    wit_bindgen::generate!({
        path: "../../wit/since_v0.1.0",
        world: "plugin",
        pub_export_macro: true,
        export_macro_name: "export_plugin",
        default_bindings_module: "artifactapi_plugin_sdk::bindings",
        additional_derives: [PartialEq, Eq],
    });
}

pub use bindings::artifactapi::plugin::{cache, cas, log, metadata, store_types, types, upstream};
pub use bindings::export_plugin;
pub use bindings::exports::artifactapi::plugin::format;

use std::fmt::Write as _;

use types::{Header, RepoContext, RequestInfo, UpstreamRequest};

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
