//! The template of an artifactapi format plugin: copy this folder, rename
//! the crate and the package type, and replace the format knowledge.
//!
//! The format it serves is deliberately small. A repository has an index
//! at `index.json`:
//!
//! ```json
//! {"files": [{"name": "tool-1.0.tar.gz", "url": "files/tool-1.0.tar.gz",
//!             "published": "2024-01-02T03:04:05Z"}]}
//! ```
//!
//! The index changes as files are published, so it is mutable and
//! rewritten: each `url` (absolute, or relative to the index) is led back
//! through the proxy, files published inside a quarantine window are left
//! out, and virtual repositories merge their members' indexes. Every other
//! path is a file that never changes. A local repository generates its
//! index from the files uploaded to it.
//!
//! See docs/plugins.md for the contract and how to build and test a plugin.

use artifactapi_plugin_sdk::metadata;
use artifactapi_plugin_sdk::prelude::*;
use artifactapi_plugin_sdk::time::{format_rfc3339, parse_rfc3339};
use serde_json::{json, Value};

/// The plugin.
pub struct TemplatePlugin;

artifactapi_plugin_sdk::export!(TemplatePlugin);

const INDEX: &str = "index.json";

impl Format for TemplatePlugin {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "template".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            package_type: "template".into(),
            description: "The plugin template: a JSON index of links, and the files it names"
                .into(),
            mutable_patterns: vec!["^index\\.json$".into()],
            immutable_patterns: vec![".".into()],
            environment: Vec::new(),
            well_known: Vec::new(),
        }
    }

    fn classify(repo: RepoContext, request: RequestInfo) -> Result<Classification, PluginError> {
        if request.path != INDEX {
            return Ok(classification(Mutability::Immutable, false));
        }
        let generated = repo.kind == RepoKind::Local;
        Ok(Classification {
            content_type: Some("application/json".into()),
            generated,
            ..classification(Mutability::Mutable, !generated)
        })
    }

    fn rewrite_index(
        repo: RepoContext,
        request: RequestInfo,
        document: Document,
        options: IndexOptions,
    ) -> Result<Rewritten, PluginError> {
        let links = Links::new(&repo, &request.path)?;
        let mut index: Value = serde_json::from_slice(&document.body)
            .map_err(|e| PluginError::InvalidDocument(format!("index.json: {e}")))?;
        let files = index
            .get_mut("files")
            .and_then(Value::as_array_mut)
            .ok_or_else(|| PluginError::InvalidDocument("index.json has no `files` list".into()))?;
        let mut published = Vec::new();
        files.retain_mut(|file| {
            let time = file["published"].as_str().and_then(parse_rfc3339);
            if let Some(link) = file["url"].as_str().and_then(|url| links.rewrite(url)) {
                if let (Some(path), Some(time)) = (&link.path, time) {
                    published.push(Publication {
                        path: path.clone(),
                        published_at: time.epoch_secs(),
                    });
                }
                file["url"] = Value::String(link.url);
            }
            let hidden = options.hide_published_after;
            !matches!((time, hidden), (Some(time), Some(after)) if time.is_after(after))
        });
        Ok(Rewritten {
            document: json_document(&index),
            published,
        })
    }

    fn merge_indexes(
        _repo: RepoContext,
        _request: RequestInfo,
        documents: Vec<Document>,
    ) -> Result<Document, PluginError> {
        let mut names = std::collections::HashSet::new();
        let mut merged = Vec::new();
        for document in &documents {
            let index: Value = serde_json::from_slice(&document.body)
                .map_err(|e| PluginError::InvalidDocument(format!("index.json: {e}")))?;
            for file in index["files"].as_array().into_iter().flatten() {
                let name = file["name"].as_str().unwrap_or_default().to_string();
                if names.insert(name) {
                    merged.push(file.clone());
                }
            }
        }
        Ok(json_document(&json!({ "files": merged })))
    }

    fn check_upload(
        repo: RepoContext,
        request: RequestInfo,
        _object: ObjectInfo,
    ) -> Result<(), PluginError> {
        if request.path == INDEX {
            return Err(PluginError::InvalidRequest(format!(
                "{INDEX} of repository {} is generated from its files; upload files instead",
                repo.name
            )));
        }
        Ok(())
    }

    fn generate_document(
        repo: RepoContext,
        _request: RequestInfo,
    ) -> Result<Document, PluginError> {
        let mut files = Vec::new();
        let mut after = String::new();
        loop {
            let page = metadata::list_objects(&repo.name, "", &after, 1000)
                .map_err(|e| PluginError::UpstreamFailed(format!("listing files: {e:?}")))?;
            let Some(last) = page.last() else {
                break;
            };
            after = last.path.clone();
            files.extend(page.iter().map(|object| {
                json!({
                    "name": file_name(&object.path),
                    "url": format!("{}/{}", repo.public_url, object.path),
                    "published": format_rfc3339(object.stored_at as i64),
                })
            }));
        }
        Ok(json_document(&json!({ "files": files })))
    }
}

fn json_document(value: &Value) -> Document {
    Document {
        content_type: "application/json".into(),
        body: value.to_string().into_bytes(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo(kind: RepoKind) -> RepoContext {
        RepoContext {
            name: "tools".into(),
            kind,
            base_url: "https://tools.example.org/dist".into(),
            public_url: "http://proxy.example.org/api/v1/remote/tools".into(),
            settings: "{}".into(),
        }
    }

    fn request(path: &str) -> RequestInfo {
        RequestInfo {
            method: "GET".into(),
            path: path.into(),
            query: String::new(),
            headers: Vec::new(),
        }
    }

    #[test]
    fn the_index_is_mutable_and_files_are_not() {
        let index = TemplatePlugin::classify(repo(RepoKind::Remote), request(INDEX)).unwrap();
        assert_eq!(
            (index.mutability, index.rewrite, index.generated),
            (Mutability::Mutable, true, false)
        );
        let local = TemplatePlugin::classify(repo(RepoKind::Local), request(INDEX)).unwrap();
        assert!(local.generated && !local.rewrite);
        let file =
            TemplatePlugin::classify(repo(RepoKind::Remote), request("files/a.tgz")).unwrap();
        assert_eq!(file.mutability, Mutability::Immutable);
    }

    #[test]
    fn links_lead_through_the_proxy_and_new_files_are_hidden() {
        let index = json!({"files": [
            {"name": "old.tgz", "url": "files/old.tgz", "published": "2024-01-02T03:04:05Z"},
            {"name": "new.tgz", "url": "https://tools.example.org/dist/files/new.tgz",
             "published": "2024-06-01T00:00:00Z"},
            {"name": "elsewhere.tgz", "url": "https://cdn.example.org/elsewhere.tgz"}
        ]});
        let options = IndexOptions {
            hide_published_after: Some(1_704_164_645),
        };
        let rewritten = TemplatePlugin::rewrite_index(
            repo(RepoKind::Remote),
            request(INDEX),
            json_document(&index),
            options,
        )
        .unwrap();
        let out: Value = serde_json::from_slice(&rewritten.document.body).unwrap();
        let urls: Vec<_> = out["files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["url"].as_str().unwrap())
            .collect();
        assert_eq!(
            urls,
            [
                "http://proxy.example.org/api/v1/remote/tools/files/old.tgz",
                "https://cdn.example.org/elsewhere.tgz"
            ]
        );
        let paths: Vec<_> = rewritten
            .published
            .iter()
            .map(|p| p.path.as_str())
            .collect();
        assert_eq!(paths, ["files/old.tgz", "files/new.tgz"]);
    }

    #[test]
    fn merging_keeps_the_first_member_of_each_name() {
        let a = json_document(&json!({"files": [{"name": "x", "url": "a/x"}]}));
        let b = json_document(
            &json!({"files": [{"name": "x", "url": "b/x"}, {"name": "y", "url": "b/y"}]}),
        );
        let merged =
            TemplatePlugin::merge_indexes(repo(RepoKind::Virtual), request(INDEX), vec![a, b])
                .unwrap();
        let out: Value = serde_json::from_slice(&merged.body).unwrap();
        assert_eq!(
            out,
            json!({"files": [{"name": "x", "url": "a/x"}, {"name": "y", "url": "b/y"}]})
        );
    }
}
