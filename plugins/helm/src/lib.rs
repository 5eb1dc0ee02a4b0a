//! artifactapi format plugin for Helm chart repositories.
//!
//! A chart repository is an `index.yaml` listing every chart version with the
//! URLs of its archive, plus the archives (`<name>-<version>.tgz`) and their
//! provenance files (`.tgz.prov`). The index changes with every publish, so it
//! is mutable and rewritten on the way out: chart URLs that lead to the
//! upstream (absolute, or relative to the index) are turned into URLs through
//! the proxy, so `helm pull` downloads the archives through the cache too.
//! Archives and provenance files never change once published. Anything else
//! is mutable and served as it is.
//!
//! Virtual repositories merge their members' indexes: the union of the chart
//! versions, the earlier member winning when two list the same version.

mod index;

use artifactapi_plugin_sdk::file_name;
use artifactapi_plugin_sdk::types::{
    Classification, Document, IndexOptions, Mutability, PluginError, RepoContext, RequestInfo,
    Rewritten,
};
use artifactapi_plugin_sdk::{Format, PluginInfo};

pub use index::{merge_indexes, rewrite_index, INDEX_CONTENT_TYPE};

/// The Helm format plugin.
pub struct HelmPlugin;

artifactapi_plugin_sdk::export!(HelmPlugin);

/// The verdict on a path below a Helm chart repository.
pub fn classify_path(path: &str) -> Classification {
    let name = file_name(path);
    let (mutability, rewrite, content_type) = if name == "index.yaml" {
        (Mutability::Mutable, true, Some(INDEX_CONTENT_TYPE))
    } else if name.ends_with(".tgz") {
        (Mutability::Immutable, false, Some("application/gzip"))
    } else if name.ends_with(".tgz.prov") {
        (
            Mutability::Immutable,
            false,
            Some("text/plain; charset=utf-8"),
        )
    } else {
        (Mutability::Mutable, false, None)
    };
    Classification {
        mutability,
        rewrite,
        cache_key: None,
        access_name: None,
        content_type: content_type.map(String::from),
        generated: false,
    }
}

impl Format for HelmPlugin {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "helm".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            package_type: "helm".into(),
            description: "Helm chart repositories: index.yaml is revalidated and its chart URLs lead through the proxy, chart archives are cached for good".into(),
            mutable_patterns: vec!["(^|/)index\\.yaml$".into()],
            immutable_patterns: vec!["\\.tgz$".into(), "\\.tgz\\.prov$".into()],
            environment: Vec::new(),
            well_known: Vec::new(),
        }
    }

    fn classify(_repo: RepoContext, request: RequestInfo) -> Result<Classification, PluginError> {
        Ok(classify_path(&request.path))
    }

    fn rewrite_index(
        repo: RepoContext,
        request: RequestInfo,
        document: Document,
        options: IndexOptions,
    ) -> Result<Rewritten, PluginError> {
        rewrite_index(&repo, &request.path, &document.body, &options)
    }

    fn merge_indexes(
        _repo: RepoContext,
        _request: RequestInfo,
        documents: Vec<Document>,
    ) -> Result<Document, PluginError> {
        let bodies: Vec<&[u8]> = documents.iter().map(|d| d.body.as_slice()).collect();
        merge_indexes(&bodies, artifactapi_plugin_sdk::time::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_yaml_is_a_mutable_rewritten_index_at_any_depth() {
        for path in ["index.yaml", "stable/index.yaml", "a/b/c/index.yaml"] {
            let c = classify_path(path);
            assert_eq!(c.mutability, Mutability::Mutable, "{path}");
            assert!(c.rewrite, "{path}");
            assert_eq!(c.content_type.as_deref(), Some("application/x-yaml"));
            assert_eq!(c.cache_key, None);
            assert_eq!(c.access_name, None);
        }
    }

    #[test]
    fn charts_and_provenance_files_are_immutable() {
        let chart = classify_path("charts/nginx-15.1.0.tgz");
        assert_eq!(chart.mutability, Mutability::Immutable);
        assert!(!chart.rewrite);
        assert_eq!(chart.content_type.as_deref(), Some("application/gzip"));
        let prov = classify_path("nginx-15.1.0.tgz.prov");
        assert_eq!(prov.mutability, Mutability::Immutable);
        assert!(!prov.rewrite);
    }

    #[test]
    fn anything_else_is_mutable_and_served_as_it_is() {
        for path in [
            "",
            "index.yaml.bak",
            "myindex.yaml",
            "index.json",
            "charts/",
            "README.md",
            "nginx-15.1.0.tgz.sha256",
        ] {
            let c = classify_path(path);
            assert_eq!(c.mutability, Mutability::Mutable, "{path}");
            assert!(!c.rewrite, "{path}");
            assert_eq!(c.content_type, None, "{path}");
        }
    }

    #[test]
    fn describe_names_the_package_type() {
        let info = HelmPlugin::describe();
        assert_eq!(info.name, "helm");
        assert_eq!(info.package_type, "helm");
        assert_eq!(info.version, env!("CARGO_PKG_VERSION"));
    }

    #[test]
    fn upstream_request_is_base_url_and_path() {
        let repo = RepoContext {
            name: "charts".into(),
            kind: artifactapi_plugin_sdk::types::RepoKind::Remote,
            base_url: "https://charts.example.org/stable".into(),
            public_url: "http://proxy.example.org/api/v1/remote/charts".into(),
            settings: "{}".into(),
        };
        let request = RequestInfo {
            method: "GET".into(),
            path: "nginx-1.0.0.tgz".into(),
            query: String::new(),
            headers: Vec::new(),
        };
        let upstream = HelmPlugin::prepare_upstream(repo, request).unwrap();
        assert_eq!(
            upstream.url,
            "https://charts.example.org/stable/nginx-1.0.0.tgz"
        );
        assert!(upstream.headers.is_empty());
    }
}
