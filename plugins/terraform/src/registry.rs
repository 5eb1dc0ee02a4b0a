//! A remote repository: an upstream registry's documents led through the
//! proxy, and the network mirror protocol made from them.

use artifactapi_plugin_sdk::links::resolve_url;
use artifactapi_plugin_sdk::prelude::*;
use artifactapi_plugin_sdk::upstream;
use serde_json::{json, Map, Value};

use crate::paths::file_path;

/// The fields of a download document that name files.
const FILE_FIELDS: &[&str] = &["download_url", "shasums_url", "shasums_signature_url"];

fn parse(body: &[u8], what: &str) -> Result<Value, PluginError> {
    serde_json::from_slice(body)
        .map_err(|e| PluginError::InvalidDocument(format!("terraform: {what} is not JSON: {e}")))
}

fn to_bytes(value: &Value) -> Vec<u8> {
    value.to_string().into_bytes()
}

/// The query string that lets a client fetch a path below the repository
/// without credentials (`access.presign`; empty when none are needed).
pub type Presign<'a> = &'a dyn Fn(&str) -> String;

/// Where the client fetches the file an upstream document names at `url`
/// (absolute, or relative to `document_url`): through this repository.
pub fn proxied(
    repo: &RepoContext,
    (namespace, kind, version): (&str, &str, &str),
    document_url: &str,
    url: &str,
    presign: Presign<'_>,
) -> Option<String> {
    let absolute = resolve_url(document_url, url);
    let path = file_path(namespace, kind, version, &absolute)?;
    let original = absolute
        .split_once('?')
        .map(|(_, q)| q.split('#').next().unwrap_or_default().to_string());
    let query: Vec<String> = original
        .into_iter()
        .chain(Some(presign(&path)))
        .filter(|q| !q.is_empty())
        .collect();
    let public = repo.public_url.trim_end_matches('/');
    Some(if query.is_empty() {
        format!("{public}/{path}")
    } else {
        format!("{public}/{path}?{}", query.join("&"))
    })
}

/// A download document with its file URLs led through the repository;
/// `shasum`, `signing_keys` and the rest stay as the upstream wrote them.
pub fn rewrite_download(
    repo: &RepoContext,
    provider: (&str, &str, &str),
    path: &str,
    body: &[u8],
    presign: Presign<'_>,
) -> Result<Vec<u8>, PluginError> {
    let mut doc = parse(body, path)?;
    let document_url = upstream_url(&repo.base_url, path, "");
    for field in FILE_FIELDS {
        if let Some(url) = doc.get(*field).and_then(Value::as_str) {
            if let Some(through) = proxied(repo, provider, &document_url, url, presign) {
                doc[*field] = Value::String(through);
            }
        }
    }
    Ok(to_bytes(&doc))
}

/// The network mirror's version list from the registry's.
pub fn mirror_index(body: &[u8]) -> Result<Vec<u8>, PluginError> {
    let doc = parse(body, "a version list")?;
    let versions: Map<String, Value> = doc["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v["version"].as_str())
        .map(|v| (v.to_string(), json!({})))
        .collect();
    Ok(to_bytes(&json!({ "versions": versions })))
}

/// The network mirror's archives of one version: each platform's
/// download document fetched from the registry, its archive led through
/// the repository with the archive's `zh:` hash.
pub fn mirror_version(
    repo: &RepoContext,
    (namespace, kind, version): (&str, &str, &str),
    body: &[u8],
    presign: Presign<'_>,
) -> Result<Vec<u8>, PluginError> {
    let doc = parse(body, "a version list")?;
    let entry = doc["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["version"] == version)
        .ok_or_else(|| {
            PluginError::NotFound(format!("{namespace}/{kind} has no version {version}"))
        })?;
    let mut archives = Map::new();
    for platform in entry["platforms"].as_array().into_iter().flatten() {
        let (Some(os), Some(arch)) = (platform["os"].as_str(), platform["arch"].as_str()) else {
            continue;
        };
        let path = format!("v1/providers/{namespace}/{kind}/{version}/download/{os}/{arch}");
        let url = upstream_url(&repo.base_url, &path, "");
        let response = upstream::fetch(&upstream::Request {
            method: "GET".into(),
            url: url.clone(),
            headers: Vec::new(),
        })
        .map_err(|e| PluginError::UpstreamFailed(format!("terraform: {url}: {e:?}")))?;
        if response.status != 200 {
            return Err(PluginError::UpstreamFailed(format!(
                "terraform: {url} answered {}",
                response.status
            )));
        }
        let download = parse(&response.body, &path)?;
        let Some(archive) = download["download_url"].as_str() else {
            continue;
        };
        let Some(through) = proxied(repo, (namespace, kind, version), &url, archive, presign)
        else {
            continue;
        };
        let hashes: Vec<String> = download["shasum"]
            .as_str()
            .map(|sum| format!("zh:{sum}"))
            .into_iter()
            .collect();
        archives.insert(
            format!("{os}_{arch}"),
            json!({ "url": through, "hashes": hashes }),
        );
    }
    Ok(to_bytes(&json!({ "archives": archives })))
}

/// Version lists of several members: each version once, the earlier
/// member's entry.
pub fn merge_versions(documents: &[Document]) -> Result<Document, PluginError> {
    let mut seen = std::collections::HashSet::new();
    let mut versions = Vec::new();
    for document in documents {
        let doc = parse(&document.body, "a version list")?;
        for entry in doc["versions"].as_array().into_iter().flatten() {
            if seen.insert(entry["version"].as_str().unwrap_or_default().to_string()) {
                versions.push(entry.clone());
            }
        }
    }
    Ok(Document {
        content_type: "application/json".into(),
        body: to_bytes(&json!({ "versions": versions })),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo() -> RepoContext {
        RepoContext {
            name: "tf".into(),
            kind: RepoKind::Remote,
            base_url: "https://registry.example.org".into(),
            public_url: "http://proxy.example.org/api/v1/remote/tf".into(),
            settings: "{}".into(),
        }
    }

    #[test]
    fn download_documents_lead_files_through_the_repository() {
        let path = "v1/providers/acme/widget/1.0.0/download/linux/amd64";
        let body = json!({
            "protocols": ["5.0"],
            "os": "linux",
            "arch": "amd64",
            "filename": "terraform-provider-widget_1.0.0_linux_amd64.zip",
            "download_url": "https://releases.example.org/widget/1.0.0/terraform-provider-widget_1.0.0_linux_amd64.zip",
            "shasums_url": "SHA256SUMS?x=1",
            "shasums_signature_url": "/files/SHA256SUMS.sig",
            "shasum": "ab".repeat(32),
            "signing_keys": {"gpg_public_keys": [{"key_id": "K", "ascii_armor": "A"}]},
        });
        let out = rewrite_download(
            &repo(),
            ("acme", "widget", "1.0.0"),
            path,
            &to_bytes(&body),
            &|_| String::new(),
        )
        .unwrap();
        let out: Value = serde_json::from_slice(&out).unwrap();
        let base = "http://proxy.example.org/api/v1/remote/tf/v1/providers/acme/widget/1.0.0/files";
        assert_eq!(
            out["download_url"],
            format!("{base}/https/releases.example.org/widget/1.0.0/terraform-provider-widget_1.0.0_linux_amd64.zip")
        );
        assert_eq!(
            out["shasums_url"],
            format!("{base}/https/registry.example.org/v1/providers/acme/widget/1.0.0/download/linux/SHA256SUMS?x=1")
        );
        assert_eq!(
            out["shasums_signature_url"],
            format!("{base}/https/registry.example.org/files/SHA256SUMS.sig")
        );
        assert_eq!(out["shasum"], body["shasum"]);
        assert_eq!(out["signing_keys"], body["signing_keys"]);

        let presign = |path: &str| format!("sig={}", path.rsplit('/').next().unwrap());
        let out = rewrite_download(
            &repo(),
            ("acme", "widget", "1.0.0"),
            path,
            &to_bytes(&body),
            &presign,
        )
        .unwrap();
        let out: Value = serde_json::from_slice(&out).unwrap();
        let sums = out["shasums_url"].as_str().unwrap();
        assert!(sums.ends_with("/SHA256SUMS?x=1&sig=SHA256SUMS"), "{sums}");
        let archive = out["download_url"].as_str().unwrap();
        assert!(
            archive.ends_with(".zip?sig=terraform-provider-widget_1.0.0_linux_amd64.zip"),
            "{archive}"
        );
    }

    #[test]
    fn the_mirror_index_lists_versions() {
        let body = json!({"versions": [{"version": "1.0.0"}, {"version": "2.0.0"}]});
        let out: Value = serde_json::from_slice(&mirror_index(&to_bytes(&body)).unwrap()).unwrap();
        assert_eq!(out, json!({"versions": {"1.0.0": {}, "2.0.0": {}}}));
    }

    #[test]
    fn version_lists_merge_each_version_once() {
        let doc = |v: Value| Document {
            content_type: "application/json".into(),
            body: to_bytes(&v),
        };
        let merged = merge_versions(&[
            doc(json!({"versions": [{"version": "1.0.0", "from": "a"}]})),
            doc(json!({"versions": [{"version": "1.0.0", "from": "b"}, {"version": "1.1.0"}]})),
        ])
        .unwrap();
        let out: Value = serde_json::from_slice(&merged.body).unwrap();
        assert_eq!(
            out,
            json!({"versions": [{"version": "1.0.0", "from": "a"}, {"version": "1.1.0"}]})
        );
    }
}
