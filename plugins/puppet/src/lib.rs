//! artifactapi format plugin for Puppet Forge repositories (the v3 API).
//!
//! `v3/modules/{slug}`, `v3/releases?module=…` (paginated) and
//! `v3/releases/{slug}` describe what is published and change; they are
//! rewritten so that the paths in them (`file_uri`, `pagination.next`, …),
//! which the client appends to its `--module_repository`, lead through the
//! repository, and an upstream's absolute URLs become such paths.
//! `v3/files/{file}.tar.gz` never changes. Checksums (`file_sha256`,
//! `file_md5`) are left as they are.
//!
//! Quarantine reads each release's `created_at`: releases published inside
//! the window leave the release lists, and their tarballs are refused. The
//! upstream is always asked for `created_at` (puppet asks the Forge to leave
//! it out); a client that asked so gets it left out again. Virtual
//! repositories merge their members' release lists.

use artifactapi_plugin_sdk::prelude::*;
use artifactapi_plugin_sdk::time::parse_rfc3339;
use artifactapi_plugin_sdk::upstream_url;
use percent_encoding::{percent_decode_str, utf8_percent_encode, NON_ALPHANUMERIC};
use serde_json::{Map, Value};

/// The Puppet Forge plugin.
pub struct PuppetPlugin;

artifactapi_plugin_sdk::export!(PuppetPlugin);

const JSON: &str = "application/json";

/// Fields holding a path or URL the client follows.
const LINK_FIELDS: &[&str] = &["file_uri", "uri", "first", "previous", "current", "next"];

/// What a path below a Forge repository addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// `v3/releases` with a query: a page of releases.
    Releases,
    /// `v3/releases/{slug}` or `v3/modules/{slug}`: one document.
    Entity,
    /// `v3/files/{file}`: a release tarball.
    File,
    /// Any other `v3/` endpoint (searches, users): passed through.
    Other,
}

/// Parses a path below the repository.
pub fn parse(path: &str) -> Option<Target> {
    let rest = path.strip_prefix("v3/")?;
    Some(match rest.split_once('/') {
        None if rest == "releases" => Target::Releases,
        Some(("files", file)) if !file.is_empty() && !file.contains('/') => Target::File,
        Some(("releases" | "modules", slug)) if !slug.is_empty() && !slug.contains('/') => {
            Target::Entity
        }
        _ => Target::Other,
    })
}

/// The verdict on a request.
pub fn classify_request(request: &RequestInfo) -> Result<Classification, PluginError> {
    let target = parse(&request.path)
        .ok_or_else(|| PluginError::NotFound(format!("{} is not a Forge v3 path", request.path)))?;
    // Pages of the same endpoint differ only in their query.
    let keyed = |c: Classification| Classification {
        cache_key: (!request.query.is_empty())
            .then(|| format!("{}?{}", request.path, request.query)),
        content_type: Some(JSON.into()),
        ..c
    };
    Ok(match target {
        Target::File => Classification {
            content_type: Some("application/gzip".into()),
            ..classification(Mutability::Immutable, false)
        },
        Target::Releases | Target::Entity => keyed(classification(Mutability::Mutable, true)),
        Target::Other => keyed(classification(Mutability::Mutable, false)),
    })
}

/// The query with `created_at` taken out of `exclude_fields`, so the
/// stored document always has the publish times quarantine needs.
pub fn upstream_query(query: &str) -> String {
    query
        .split('&')
        .filter_map(|pair| match pair.split_once('=') {
            Some(("exclude_fields", value)) => {
                let decoded = percent_decode_str(&value.replace('+', " "))
                    .decode_utf8_lossy()
                    .into_owned();
                let kept: Vec<&str> = decoded
                    .split([' ', ','])
                    .filter(|f| !f.is_empty() && *f != "created_at")
                    .collect();
                (!kept.is_empty()).then(|| {
                    format!(
                        "exclude_fields={}",
                        utf8_percent_encode(&kept.join(" "), NON_ALPHANUMERIC)
                    )
                })
            }
            _ => Some(pair.to_string()),
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// Whether the client asked the Forge to leave `created_at` out.
fn excludes_created_at(query: &str) -> bool {
    query.split('&').any(|pair| {
        pair.split_once('=').is_some_and(|(key, value)| {
            key == "exclude_fields"
                && percent_decode_str(&value.replace('+', " "))
                    .decode_utf8_lossy()
                    .split([' ', ','])
                    .any(|f| f == "created_at")
        })
    })
}

/// A Forge timestamp: `2013-05-13 08:31:19 -0700`, or RFC 3339.
pub fn parse_forge_time(text: &str) -> Option<artifactapi_plugin_sdk::time::Instant> {
    parse_rfc3339(text).or_else(|| {
        let b = text.trim().as_bytes();
        if b.len() != 25 || b[19] != b' ' || !matches!(b[20], b'+' | b'-') {
            return None;
        }
        let text = std::str::from_utf8(b).ok()?;
        parse_rfc3339(&format!("{}{}:{}", &text[..19], &text[20..23], &text[23..]))
    })
}

/// Rewrites the links of a Forge document for the client, leaving out
/// releases published after `hide_after`, and returns the publish times of
/// the tarballs (and of a single release's own path) it read.
pub fn rewrite_document(
    repo: &RepoContext,
    request: &RequestInfo,
    body: &[u8],
    hide_after: Option<u64>,
) -> Result<(Vec<u8>, Vec<Publication>), PluginError> {
    let mut doc: Value = serde_json::from_slice(body).map_err(|e| {
        PluginError::InvalidDocument(format!("puppet: {} is not JSON: {e}", request.path))
    })?;
    let rewriter = Rewriter {
        links: Links::new(repo, &request.path)?,
        public: repo.public_url.trim_end_matches('/').to_string(),
    };
    let mut published = Vec::new();
    let strip_times = excludes_created_at(&request.query);
    // A release list (a page, or a module's `releases`) loses the releases
    // in quarantine; one release reports its own path too, so the host
    // refuses it while it is new.
    if let Some(results) = doc.get_mut("results").and_then(Value::as_array_mut) {
        retain_published(results, &rewriter, hide_after, &mut published);
    }
    if let Some(releases) = doc.get_mut("releases").and_then(Value::as_array_mut) {
        retain_published(releases, &rewriter, hide_after, &mut published);
    }
    if request.path.starts_with("v3/releases/") {
        if let Some(at) = release_time(&doc) {
            published.push(Publication {
                path: request.path.clone(),
                published_at: at,
            });
            if let Some(file) = tarball_path(&doc, &rewriter) {
                published.push(Publication {
                    path: file,
                    published_at: at,
                });
            }
        }
    }
    rewriter.walk(&mut doc);
    if strip_times {
        remove_created_at(&mut doc);
    }
    let body = serde_json::to_vec(&doc)
        .map_err(|e| PluginError::InvalidDocument(format!("puppet: {e}")))?;
    Ok((body, published))
}

fn release_time(release: &Value) -> Option<u64> {
    release
        .get("created_at")
        .and_then(Value::as_str)
        .and_then(parse_forge_time)
        .map(|t| t.epoch_secs())
}

fn tarball_path(release: &Value, rewriter: &Rewriter) -> Option<String> {
    let uri = release.get("file_uri")?.as_str()?;
    rewriter.links.rewrite(uri)?.path
}

fn retain_published(
    releases: &mut Vec<Value>,
    rewriter: &Rewriter,
    hide_after: Option<u64>,
    published: &mut Vec<Publication>,
) {
    releases.retain(|release| {
        let Some(at) = release_time(release) else {
            return true;
        };
        if let Some(path) = tarball_path(release, rewriter) {
            published.push(Publication {
                path,
                published_at: at,
            });
        }
        hide_after.is_none_or(|cutoff| at <= cutoff)
    });
}

fn remove_created_at(value: &mut Value) {
    match value {
        Value::Object(map) => {
            map.remove("created_at");
            map.values_mut().for_each(remove_created_at);
        }
        Value::Array(items) => items.iter_mut().for_each(remove_created_at),
        _ => {}
    }
}

/// Leads the links of a document through the repository.
struct Rewriter {
    links: Links,
    public: String,
}

impl Rewriter {
    fn walk(&self, value: &mut Value) {
        match value {
            Value::Object(map) => self.walk_object(map),
            Value::Array(items) => items.iter_mut().for_each(|v| self.walk(v)),
            _ => {}
        }
    }

    fn walk_object(&self, map: &mut Map<String, Value>) {
        for (key, value) in map.iter_mut() {
            match value {
                Value::String(text) if LINK_FIELDS.contains(&key.as_str()) => {
                    if let Some(path) = self.client_path(text) {
                        *text = path;
                    }
                }
                other => self.walk(other),
            }
        }
    }

    /// The path the client appends to the repository's URL for a link
    /// into the upstream: `/v3/files/x.tar.gz`.
    fn client_path(&self, link: &str) -> Option<String> {
        if !(link.starts_with('/') || link.starts_with("http://") || link.starts_with("https://")) {
            return None;
        }
        let url = self.links.rewrite(link)?.url;
        url.strip_prefix(&self.public).map(str::to_string)
    }
}

/// Release lists of several members: each release once (the earlier
/// member's), the first member's pagination with the first `next` any
/// member has.
pub fn merge_documents(documents: &[Document]) -> Result<Document, PluginError> {
    let mut parsed = Vec::new();
    for document in documents {
        let value: Value = serde_json::from_slice(&document.body)
            .map_err(|e| PluginError::InvalidDocument(format!("puppet: {e}")))?;
        parsed.push(value);
    }
    let mut merged = parsed
        .first()
        .cloned()
        .ok_or_else(|| PluginError::NotFound("no member has it".into()))?;
    if merged.get("results").is_some() {
        let mut seen = std::collections::HashSet::new();
        let results: Vec<Value> = parsed
            .iter()
            .flat_map(|doc| doc["results"].as_array().cloned().unwrap_or_default())
            .filter(|release| seen.insert(release["slug"].as_str().unwrap_or_default().to_string()))
            .collect();
        let next = parsed
            .iter()
            .find_map(|doc| doc["pagination"]["next"].as_str().map(str::to_string));
        merged["results"] = Value::Array(results);
        if let Some(pagination) = merged.get_mut("pagination").and_then(Value::as_object_mut) {
            pagination.insert("next".into(), next.map_or(Value::Null, Value::String));
        }
    }
    let body = serde_json::to_vec(&merged)
        .map_err(|e| PluginError::InvalidDocument(format!("puppet: {e}")))?;
    Ok(Document {
        content_type: JSON.into(),
        body,
    })
}

impl Format for PuppetPlugin {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "puppet".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            package_type: "puppet".into(),
            description: "Puppet Forge (v3): module and release documents are revalidated and led through the proxy, release tarballs cached for good".into(),
            mutable_patterns: vec!["^v3/modules/".into(), "^v3/releases".into()],
            immutable_patterns: vec!["^v3/files/".into()],
            environment: Vec::new(),
            well_known: Vec::new(),
        }
    }

    fn classify(_repo: RepoContext, request: RequestInfo) -> Result<Classification, PluginError> {
        classify_request(&request)
    }

    fn prepare_upstream(
        repo: RepoContext,
        request: RequestInfo,
    ) -> Result<UpstreamRequest, PluginError> {
        Ok(UpstreamRequest {
            url: upstream_url(
                &repo.base_url,
                &request.path,
                &upstream_query(&request.query),
            ),
            headers: Vec::new(),
        })
    }

    fn rewrite_index(
        repo: RepoContext,
        request: RequestInfo,
        document: Document,
        options: IndexOptions,
    ) -> Result<Rewritten, PluginError> {
        let (body, published) = rewrite_document(
            &repo,
            &request,
            &document.body,
            options.hide_published_after,
        )?;
        Ok(Rewritten {
            document: Document {
                content_type: JSON.into(),
                body,
            },
            published,
        })
    }

    fn merge_indexes(
        _repo: RepoContext,
        _request: RequestInfo,
        documents: Vec<Document>,
    ) -> Result<Document, PluginError> {
        merge_documents(&documents)
    }
}

#[cfg(test)]
mod tests;
