//! artifactapi format plugin for Alpine Linux apk repositories.
//!
//! `APKINDEX.tar.gz` is a signed index that changes as packages are added, so
//! it is mutable and served as it is; `.apk` files never change once
//! published. Everything else (`last-updated`, `MIRRORS.txt`, ...) is treated
//! as mutable so it gets revalidated.

use artifactapi_plugin_sdk::prelude::*;

/// The Alpine format plugin.
pub struct AlpinePlugin;

artifactapi_plugin_sdk::export!(AlpinePlugin);

/// The verdict on a path below an Alpine repository.
pub fn classify_path(path: &str) -> Classification {
    let name = file_name(path);
    let (mutability, content_type) = if name == "APKINDEX.tar.gz" {
        (Mutability::Mutable, Some("application/gzip"))
    } else if name.ends_with(".apk") {
        (Mutability::Immutable, Some("application/octet-stream"))
    } else {
        (Mutability::Mutable, None)
    };
    Classification {
        content_type: content_type.map(String::from),
        ..classification(mutability, false)
    }
}

impl Format for AlpinePlugin {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "alpine".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            package_type: "alpine".into(),
            description: "Alpine Linux apk repositories: APKINDEX is revalidated, .apk files are cached for good".into(),
            mutable_patterns: vec!["APKINDEX\\.tar\\.gz$".into()],
            immutable_patterns: vec!["\\.apk$".into()],
            environment: Vec::new(),
            well_known: Vec::new(),
        }
    }

    fn classify(_repo: RepoContext, request: RequestInfo) -> Result<Classification, PluginError> {
        Ok(classify_path(&request.path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mutability(path: &str) -> Mutability {
        classify_path(path).mutability
    }

    #[test]
    fn apkindex_is_a_mutable_gzip() {
        let c = classify_path("v3.20/main/x86_64/APKINDEX.tar.gz");
        assert_eq!(c.mutability, Mutability::Mutable);
        assert!(!c.rewrite);
        assert_eq!(c.content_type.as_deref(), Some("application/gzip"));
        assert_eq!(c.cache_key, None);
        assert_eq!(c.access_name, None);
        assert_eq!(
            mutability("edge/community/aarch64/APKINDEX.tar.gz"),
            Mutability::Mutable
        );
        assert_eq!(mutability("APKINDEX.tar.gz"), Mutability::Mutable);
    }

    #[test]
    fn apk_files_are_immutable() {
        let c = classify_path("v3.20/main/x86_64/busybox-1.36.1-r29.apk");
        assert_eq!(c.mutability, Mutability::Immutable);
        assert!(!c.rewrite);
        assert_eq!(c.content_type.as_deref(), Some("application/octet-stream"));
        assert_eq!(
            mutability("edge/testing/x86_64/py3-foo-1.0-r0.apk"),
            Mutability::Immutable
        );
    }

    #[test]
    fn anything_else_is_mutable() {
        for path in [
            "last-updated",
            "MIRRORS.txt",
            "v3.20/releases/x86_64/latest-releases.yaml",
            "v3.20/main/x86_64/",
            "",
        ] {
            let c = classify_path(path);
            assert_eq!(c.mutability, Mutability::Mutable, "{path}");
            assert_eq!(c.content_type, None, "{path}");
        }
        // Only the exact file name counts.
        assert_eq!(
            mutability("v3.20/main/x86_64/APKINDEX.tar.gz.sig"),
            Mutability::Mutable
        );
        assert_eq!(
            mutability("v3.20/main/x86_64/foo.apk.sha256"),
            Mutability::Mutable
        );
    }

    #[test]
    fn describe_names_the_package_type() {
        let info = AlpinePlugin::describe();
        assert_eq!(info.name, "alpine");
        assert_eq!(info.package_type, "alpine");
        assert_eq!(info.version, env!("CARGO_PKG_VERSION"));
    }

    #[test]
    fn index_operations_are_unsupported() {
        let repo = RepoContext {
            name: "alpine".into(),
            kind: artifactapi_plugin_sdk::types::RepoKind::Virtual,
            base_url: String::new(),
            public_url: "http://proxy.example.org/api/v1/virtual/alpine".into(),
            settings: "{}".into(),
        };
        let request = RequestInfo {
            method: "GET".into(),
            path: "v3.20/main/x86_64/APKINDEX.tar.gz".into(),
            query: String::new(),
            headers: Vec::new(),
        };
        assert!(matches!(
            AlpinePlugin::merge_indexes(repo, request, Vec::new()),
            Err(PluginError::Unsupported(_))
        ));
    }
}
