//! A local repository as a provider registry: its documents generated from
//! the uploaded archives, `SHA256SUMS` signed with the host's key.

use std::collections::BTreeMap;

use artifactapi_plugin_sdk::prelude::*;
use artifactapi_plugin_sdk::{metadata, signing};
use serde_json::{json, Value};

use crate::paths::{archive_name, ArchiveName};
use crate::registry::Presign;

/// The plugin protocols advertised when `TF_PROVIDER_PROTOCOLS` is unset.
const DEFAULT_PROTOCOLS: &str = "5.0,6.0";

/// One uploaded archive.
pub struct Archive {
    pub file: String,
    pub version: String,
    pub os: String,
    pub arch: String,
    /// Hex sha256.
    pub sha256: String,
}

fn store_error(e: artifactapi_plugin_sdk::store_types::StoreError) -> PluginError {
    PluginError::UpstreamFailed(format!("terraform: {e:?}"))
}

/// The archives of provider `kind` uploaded to `repo`, in file name order.
pub fn archives(repo: &str, kind: &str) -> Result<Vec<Archive>, PluginError> {
    let prefix = format!("{repo}/{kind}/terraform-provider-{kind}_");
    let mut found = Vec::new();
    let mut after = String::new();
    loop {
        let page = metadata::list_objects(repo, &prefix, &after, 1000).map_err(store_error)?;
        let Some(last) = page.last() else {
            break;
        };
        after = last.path.clone();
        for object in &page {
            let file = artifactapi_plugin_sdk::file_name(&object.path);
            if let Some(ArchiveName {
                version, os, arch, ..
            }) = archive_name(file)
            {
                found.push(Archive {
                    file: file.to_string(),
                    version: version.to_string(),
                    os: os.to_string(),
                    arch: arch.to_string(),
                    sha256: object.digest.trim_start_matches("sha256:").to_string(),
                });
            }
        }
    }
    Ok(found)
}

/// `TF_PROVIDER_PROTOCOLS` (`5.0,6.0` when unset).
pub fn protocols() -> Vec<String> {
    std::env::var("TF_PROVIDER_PROTOCOLS")
        .ok()
        .filter(|p| !p.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_PROTOCOLS.to_string())
        .split(',')
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect()
}

fn not_found(what: String) -> PluginError {
    PluginError::NotFound(what)
}

/// `{type}/versions`: every uploaded version with its platforms.
pub fn versions(archives: &[Archive], protocols: &[String]) -> Value {
    let mut by_version: BTreeMap<&str, Vec<Value>> = BTreeMap::new();
    for archive in archives {
        by_version
            .entry(&archive.version)
            .or_default()
            .push(json!({"os": archive.os, "arch": archive.arch}));
    }
    let versions: Vec<Value> = by_version
        .into_iter()
        .map(|(version, platforms)| {
            json!({"version": version, "protocols": protocols, "platforms": platforms})
        })
        .collect();
    json!({ "versions": versions })
}

/// `SHA256SUMS` of one version: every platform's archive.
pub fn sums(archives: &[Archive], version: &str) -> String {
    archives
        .iter()
        .filter(|a| a.version == version)
        .map(|a| format!("{}  {}\n", a.sha256, a.file))
        .collect()
}

/// The documents of a local registry; links carry `presign`'s query.
pub fn generate(
    repo: &RepoContext,
    path: &str,
    presign: Presign<'_>,
) -> Result<Document, PluginError> {
    use crate::paths::Target;
    let json_document = |value: Value| Document {
        content_type: "application/json".into(),
        body: value.to_string().into_bytes(),
    };
    let missing = || not_found(format!("{path} is not in repository {}", repo.name));
    match crate::paths::local(&repo.name, path).ok_or_else(missing)? {
        Target::Versions { kind, .. } => {
            let archives = archives(&repo.name, kind)?;
            if archives.is_empty() {
                return Err(not_found(format!(
                    "repository {} has no provider {kind}",
                    repo.name
                )));
            }
            Ok(json_document(versions(&archives, &protocols())))
        }
        Target::Download {
            kind,
            version,
            os,
            arch,
            ..
        } => {
            let archives = archives(&repo.name, kind)?;
            let archive = archives
                .iter()
                .find(|a| a.version == version && a.os == os && a.arch == arch)
                .ok_or_else(|| {
                    not_found(format!(
                        "repository {} has no {kind} {version} for {os}_{arch}",
                        repo.name
                    ))
                })?;
            let key = signing::public_key().map_err(store_error)?;
            let public = repo.public_url.trim_end_matches('/');
            let link = |path: String| match presign(&path) {
                query if query.is_empty() => format!("{public}/{path}"),
                query => format!("{public}/{path}?{query}"),
            };
            Ok(json_document(json!({
                "protocols": protocols(),
                "os": os,
                "arch": arch,
                "filename": archive.file,
                "download_url": link(format!("{}/{kind}/{}", repo.name, archive.file)),
                "shasums_url": link(format!("{kind}/{version}/SHA256SUMS")),
                "shasums_signature_url": link(format!("{kind}/{version}/SHA256SUMS.sig")),
                "shasum": archive.sha256,
                "signing_keys": {"gpg_public_keys": [{
                    "key_id": key.key_id,
                    "ascii_armor": key.armored_public_key,
                }]},
            })))
        }
        Target::Sums {
            kind,
            version,
            signature,
        } => {
            let sums = sums(&archives(&repo.name, kind)?, version);
            if sums.is_empty() {
                return Err(missing());
            }
            if signature {
                Ok(Document {
                    content_type: "application/pgp-signature".into(),
                    body: signing::sign(sums.as_bytes()).map_err(store_error)?,
                })
            } else {
                Ok(Document {
                    content_type: "text/plain; charset=utf-8".into(),
                    body: sums.into_bytes(),
                })
            }
        }
        _ => Err(missing()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive(version: &str, os: &str, sha: char) -> Archive {
        Archive {
            file: format!("terraform-provider-widget_{version}_{os}_amd64.zip"),
            version: version.into(),
            os: os.into(),
            arch: "amd64".into(),
            sha256: sha.to_string().repeat(64),
        }
    }

    #[test]
    fn versions_group_platforms() {
        let archives = [
            archive("1.0.0", "darwin", 'a'),
            archive("1.0.0", "linux", 'b'),
            archive("1.1.0", "linux", 'c'),
        ];
        let doc = versions(&archives, &["5.0".to_string()]);
        assert_eq!(
            doc,
            json!({"versions": [
                {"version": "1.0.0", "protocols": ["5.0"], "platforms": [
                    {"os": "darwin", "arch": "amd64"}, {"os": "linux", "arch": "amd64"}]},
                {"version": "1.1.0", "protocols": ["5.0"], "platforms": [{"os": "linux", "arch": "amd64"}]},
            ]})
        );
    }

    #[test]
    fn sums_list_one_version() {
        let archives = [
            archive("1.0.0", "darwin", 'a'),
            archive("1.1.0", "linux", 'c'),
        ];
        assert_eq!(
            sums(&archives, "1.0.0"),
            format!(
                "{}  terraform-provider-widget_1.0.0_darwin_amd64.zip\n",
                "a".repeat(64)
            )
        );
        assert_eq!(sums(&archives, "2.0.0"), "");
    }
}
