//! artifactapi format plugin for Terraform providers.
//!
//! - A **remote** repository is a caching mirror of a provider registry
//!   (`providers.v1`): version lists are revalidated; a version's download
//!   documents are kept, with `download_url`, `shasums_url` and
//!   `shasums_signature_url` led through the repository; the archives and
//!   checksum files they name are kept for good. The same repository speaks
//!   the provider **network mirror** protocol under `mirror/`.
//! - A **local** repository is a provider registry of its own: archives are
//!   uploaded to `{repo}/{type}/terraform-provider-{type}_{version}_{os}_{arch}.zip`
//!   (the registry namespace is the repository's name), and the version
//!   list, download documents and a `SHA256SUMS` signed with the host's key
//!   are generated from them. Service discovery (`/.well-known/terraform.json`)
//!   points terraform at `/api/v1/remote/`, so `HOST/{repo}/{type}` is a
//!   source address.
//! - A **virtual** repository merges its members' version lists.
//!
//! Terraform sends its token to version lists and download documents only:
//! in a repository that needs credentials to read, the links to archives
//! and checksums carry a presigned query (`access.presign`).

mod local;
mod paths;
mod registry;
mod zip;

use artifactapi_plugin_sdk::prelude::*;
use artifactapi_plugin_sdk::{access, cas};

use paths::Target;

/// The Terraform plugin.
pub struct TerraformPlugin;

artifactapi_plugin_sdk::export!(TerraformPlugin);

const JSON: &str = "application/json";

/// The verdict on a remote (or virtual) repository's path.
pub fn classify_remote(path: &str) -> Result<Classification, PluginError> {
    let target = paths::remote(path)
        .ok_or_else(|| PluginError::NotFound(format!("{path} is not a provider registry path")))?;
    let json = |c: Classification| Classification {
        content_type: Some(JSON.into()),
        ..c
    };
    Ok(match target {
        Target::Versions { .. } | Target::MirrorIndex { .. } | Target::MirrorVersion { .. } => {
            json(classification(Mutability::Mutable, true))
        }
        Target::Download { .. } => json(classification(Mutability::Immutable, true)),
        Target::File { url } => Classification {
            content_type: Some(
                if url.ends_with(".zip") {
                    "application/zip"
                } else {
                    "application/octet-stream"
                }
                .into(),
            ),
            ..classification(Mutability::Immutable, false)
        },
        _ => {
            return Err(PluginError::NotFound(format!(
                "{path} is not a provider registry path"
            )))
        }
    })
}

/// The verdict on a local registry's path; an upload must be a provider
/// archive in the repository's own namespace.
pub fn classify_local(repo: &str, request: &RequestInfo) -> Result<Classification, PluginError> {
    let path = &request.path;
    let target = paths::local(repo, path);
    if request.method == "PUT" && !matches!(target, Some(Target::Archive(_))) {
        let segments: Vec<&str> = path.split('/').collect();
        return Err(PluginError::InvalidRequest(match segments[..] {
            [namespace, _, _] if namespace != repo => format!(
                "the registry namespace of repository {repo} is {repo:?}, not {namespace:?}: \
                 upload to {repo}/{{type}}/terraform-provider-{{type}}_{{version}}_{{os}}_{{arch}}.zip"
            ),
            _ => format!(
                "{path} is not {repo}/{{type}}/terraform-provider-{{type}}_{{version}}_{{os}}_{{arch}}.zip"
            ),
        }));
    }
    Ok(match target {
        Some(Target::Archive(_)) => Classification {
            content_type: Some("application/zip".into()),
            ..classification(Mutability::Immutable, false)
        },
        Some(Target::Sums { signature, .. }) => Classification {
            content_type: Some(
                if signature {
                    "application/pgp-signature"
                } else {
                    "text/plain"
                }
                .into(),
            ),
            generated: true,
            ..classification(Mutability::Mutable, false)
        },
        Some(_) => Classification {
            content_type: Some(JSON.into()),
            generated: true,
            ..classification(Mutability::Mutable, false)
        },
        None => {
            return Err(PluginError::NotFound(format!(
                "{path} is not in repository {repo}"
            )))
        }
    })
}

/// The path below `repo.base_url` to fetch for a remote path; None for a
/// proxied file, which is fetched from its own URL.
fn upstream_path(path: &str) -> Result<Option<String>, PluginError> {
    Ok(match paths::remote(path) {
        Some(
            Target::MirrorIndex { namespace, kind }
            | Target::MirrorVersion {
                namespace, kind, ..
            },
        ) => Some(format!("v1/providers/{namespace}/{kind}/versions")),
        Some(Target::File { .. }) => None,
        Some(_) => Some(path.to_string()),
        None => {
            return Err(PluginError::NotFound(format!(
                "{path} is not a provider registry path"
            )))
        }
    })
}

/// The settings a repository may have: `download_origins`, the hosts a
/// registry's download documents send archives to (a list of URLs; the
/// host lets the repository fetch from them).
pub fn validate_settings(settings: &str) -> Result<(), PluginError> {
    let invalid = |m: String| PluginError::InvalidSettings(format!("terraform: {m}"));
    let settings: serde_json::Map<String, serde_json::Value> = serde_json::from_str(settings)
        .map_err(|e| invalid(format!("settings are not a map: {e}")))?;
    for (key, value) in &settings {
        if key != "download_origins" {
            return Err(invalid(format!(
                "unknown setting `{key}` (the one setting is `download_origins`)"
            )));
        }
        let urls = value
            .as_array()
            .ok_or_else(|| invalid("`download_origins` is a list of URLs".into()))?;
        for url in urls {
            let fine = url
                .as_str()
                .is_some_and(|u| u.starts_with("https://") || u.starts_with("http://"));
            if !fine {
                return Err(invalid(format!(
                    "`download_origins`: {url} is not an http(s) URL"
                )));
            }
        }
    }
    Ok(())
}

/// The stored object's bytes by range, for the zip check.
struct Stored<'a>(&'a str);

impl zip::Ranges for Stored<'_> {
    fn read(&self, offset: u64, length: u64) -> Result<Vec<u8>, String> {
        cas::read_range(self.0, offset, length)
            .map_err(|e| format!("{e:?}"))?
            .ok_or_else(|| "the upload is gone".to_string())
    }
}

impl Format for TerraformPlugin {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "terraform".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            package_type: "terraform".into(),
            description: "Terraform providers: a caching registry mirror with the network mirror protocol, and local provider registries with signed SHA256SUMS".into(),
            mutable_patterns: vec!["/versions$".into(), "^mirror/".into()],
            immutable_patterns: vec!["/download/[^/]+/[^/]+$".into(), "/files/".into(), "\\.zip$".into()],
            environment: vec!["TF_PROVIDER_PROTOCOLS".into()],
            well_known: vec![WellKnown {
                name: "terraform.json".into(),
                content_type: JSON.into(),
                body: r#"{"providers.v1":"/api/v1/remote/"}"#.into(),
            }],
        }
    }

    fn validate_settings(repo: RepoContext) -> Result<(), PluginError> {
        validate_settings(&repo.settings)
    }

    fn classify(repo: RepoContext, request: RequestInfo) -> Result<Classification, PluginError> {
        match repo.kind {
            RepoKind::Local => classify_local(&repo.name, &request),
            _ => classify_remote(&request.path),
        }
    }

    fn prepare_upstream(
        repo: RepoContext,
        request: RequestInfo,
    ) -> Result<UpstreamRequest, PluginError> {
        let url = match paths::remote(&request.path) {
            Some(Target::File { url }) => match request.query.as_str() {
                "" => url,
                query => format!("{url}?{query}"),
            },
            _ => {
                let path = upstream_path(&request.path)?.unwrap_or_default();
                upstream_url(&repo.base_url, &path, &request.query)
            }
        };
        Ok(UpstreamRequest {
            url,
            headers: Vec::new(),
        })
    }

    fn rewrite_index(
        repo: RepoContext,
        request: RequestInfo,
        document: Document,
        _options: IndexOptions,
    ) -> Result<Rewritten, PluginError> {
        let body = match paths::remote(&request.path) {
            Some(Target::Download {
                namespace,
                kind,
                version,
                ..
            }) => registry::rewrite_download(
                &repo,
                (namespace, kind, version),
                &request.path,
                &document.body,
                &access::presign,
            )?,
            Some(Target::MirrorIndex { .. }) => registry::mirror_index(&document.body)?,
            Some(Target::MirrorVersion {
                namespace,
                kind,
                version,
            }) => registry::mirror_version(
                &repo,
                (namespace, kind, version),
                &document.body,
                &access::presign,
            )?,
            _ => document.body,
        };
        Ok(Rewritten {
            document: Document {
                content_type: JSON.into(),
                body,
            },
            published: Vec::new(),
        })
    }

    fn merge_indexes(
        _repo: RepoContext,
        request: RequestInfo,
        documents: Vec<Document>,
    ) -> Result<Document, PluginError> {
        match paths::remote(&request.path) {
            Some(Target::Versions { .. }) => registry::merge_versions(&documents),
            // One version's documents are the same in every member that
            // has it: the first member's.
            _ => documents
                .into_iter()
                .next()
                .ok_or_else(|| PluginError::NotFound(format!("{} is in no member", request.path))),
        }
    }

    fn generate_document(repo: RepoContext, request: RequestInfo) -> Result<Document, PluginError> {
        local::generate(&repo, &request.path, &access::presign)
    }

    fn check_upload(
        repo: RepoContext,
        request: RequestInfo,
        object: ObjectInfo,
    ) -> Result<(), PluginError> {
        let Some(Target::Archive(name)) = paths::local(&repo.name, &request.path) else {
            return Ok(());
        };
        let names = zip::entry_names(&Stored(&object.digest), object.size)
            .map_err(|e| PluginError::InvalidRequest(format!("{}: {e}", request.path)))?;
        let executable = format!("terraform-provider-{}", name.kind);
        if names.iter().any(|n| n.starts_with(&executable)) {
            Ok(())
        } else {
            Err(PluginError::InvalidRequest(format!(
                "{}: the archive holds no {executable}* executable",
                request.path
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: &str, path: &str) -> RequestInfo {
        RequestInfo {
            method: method.into(),
            path: path.into(),
            query: String::new(),
            headers: Vec::new(),
        }
    }

    #[test]
    fn remote_paths_are_classified() {
        let c = classify_remote("v1/providers/acme/widget/versions").unwrap();
        assert_eq!((c.mutability, c.rewrite), (Mutability::Mutable, true));
        let c = classify_remote("v1/providers/acme/widget/1.0.0/download/linux/amd64").unwrap();
        assert_eq!((c.mutability, c.rewrite), (Mutability::Immutable, true));
        let c = classify_remote("v1/providers/acme/widget/1.0.0/files/https/r.example.org/x.zip")
            .unwrap();
        assert_eq!((c.mutability, c.rewrite), (Mutability::Immutable, false));
        assert_eq!(c.content_type.as_deref(), Some("application/zip"));
        assert!(
            classify_remote("mirror/r.example.org/acme/widget/index.json")
                .unwrap()
                .rewrite
        );
        assert!(classify_remote("v2/other").is_err());
    }

    #[test]
    fn local_uploads_must_be_archives_in_the_repository_namespace() {
        let ok = classify_local(
            "tf",
            &request(
                "PUT",
                "tf/widget/terraform-provider-widget_1.0.0_linux_amd64.zip",
            ),
        );
        assert_eq!(ok.unwrap().mutability, Mutability::Immutable);
        let Err(PluginError::InvalidRequest(message)) = classify_local(
            "tf",
            &request(
                "PUT",
                "acme/widget/terraform-provider-widget_1.0.0_linux_amd64.zip",
            ),
        ) else {
            panic!("accepted");
        };
        assert!(
            message.contains("namespace of repository tf is \"tf\""),
            "{message}"
        );
        assert!(matches!(
            classify_local("tf", &request("PUT", "tf/widget/widget.zip")),
            Err(PluginError::InvalidRequest(_))
        ));
        let versions = classify_local("tf", &request("GET", "widget/versions")).unwrap();
        assert!(versions.generated);
        let sig = classify_local("tf", &request("GET", "widget/1.0.0/SHA256SUMS.sig")).unwrap();
        assert!(sig.generated);
    }

    #[test]
    fn settings_name_download_origins_only() {
        assert!(validate_settings("{}").is_ok());
        assert!(
            validate_settings(r#"{"download_origins": ["https://releases.example.org"]}"#).is_ok()
        );
        for bad in [
            r#"{"download_origin": ["https://releases.example.org"]}"#,
            r#"{"download_origins": "https://releases.example.org"}"#,
            r#"{"download_origins": ["releases.example.org"]}"#,
        ] {
            assert!(
                matches!(validate_settings(bad), Err(PluginError::InvalidSettings(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn mirror_paths_fetch_the_version_list() {
        assert_eq!(
            upstream_path("mirror/r.example.org/acme/widget/1.0.0.json")
                .unwrap()
                .as_deref(),
            Some("v1/providers/acme/widget/versions")
        );
        assert_eq!(
            upstream_path("v1/providers/acme/widget/versions")
                .unwrap()
                .as_deref(),
            Some("v1/providers/acme/widget/versions")
        );
    }
}
