//! `index.yaml`: chart URLs through the proxy, quarantine, and merging.
//!
//! An index is a mapping with `apiVersion`, `generated` and `entries`, a map
//! from chart name to a list of chart versions; each version lists the URLs
//! of its archive under `urls`, absolute or relative to the index. Only
//! `urls` and, for quarantine, whole versions are touched: every other field
//! is kept as the upstream wrote it (numbers such as `version: 1.10` keep
//! their spelling).

use std::collections::{HashMap, HashSet};

use artifactapi_plugin_sdk::types::{
    Document, IndexOptions, PluginError, Publication, RepoContext, Rewritten,
};
use yaml_rust2::yaml::Hash;
use yaml_rust2::{Yaml, YamlEmitter, YamlLoader};

use artifactapi_plugin_sdk::links::Links;
use artifactapi_plugin_sdk::time::{format_rfc3339, parse_rfc3339};

/// The media type of the index documents the plugin returns.
pub const INDEX_CONTENT_TYPE: &str = "application/x-yaml";

/// Rewrites the `index.yaml` at `path` (below the repository) for a client:
/// every chart URL that leads into the repository's upstream, absolute or
/// relative, becomes `{public-url}/{path below base-url}`; a relative URL that
/// leads elsewhere becomes absolute; URLs on other hosts are left alone.
/// With `hide-published-after`, chart versions `created` after it are left
/// out (versions without a `created` time stay). The publish time of every
/// chart file served through the proxy is returned, hidden ones included.
///
/// A repository without a `base-url` (a local one) resolves relative URLs
/// against its `public-url`.
pub fn rewrite_index(
    repo: &RepoContext,
    path: &str,
    body: &[u8],
    options: &IndexOptions,
) -> Result<Rewritten, PluginError> {
    let mut doc = parse(body)?;
    let links = Links::new(repo, path)?;
    let hide_after = options
        .hide_published_after
        .map(|t| i64::try_from(t).unwrap_or(i64::MAX));
    let keys = Keys::new();
    let mut published = Vec::new();
    if let Some(entries) = entries_mut(&mut doc, &keys)? {
        let mut emptied = Vec::new();
        for (name, versions) in entries.iter_mut() {
            let Yaml::Array(list) = versions else {
                continue;
            };
            let listed = list.len();
            list.retain_mut(|version| {
                let Yaml::Hash(version) = version else {
                    return true;
                };
                let created = version
                    .get(&keys.created)
                    .and_then(Yaml::as_str)
                    .and_then(parse_rfc3339)
                    .map(|t| t.secs);
                if let Some(Yaml::Array(urls)) = version.get_mut(&keys.urls) {
                    for url in urls.iter_mut() {
                        let Yaml::String(text) = url else {
                            continue;
                        };
                        let Some(link) = links.rewrite(text) else {
                            continue;
                        };
                        if let (Some(path), Some(at)) = (link.path, created) {
                            if let Ok(published_at) = u64::try_from(at) {
                                published.push(Publication { path, published_at });
                            }
                        }
                        *text = link.url;
                    }
                }
                !matches!((created, hide_after), (Some(c), Some(h)) if c > h)
            });
            if listed > 0 && list.is_empty() {
                emptied.push(name.clone());
            }
        }
        for name in &emptied {
            entries.remove(name);
        }
    }
    Ok(Rewritten {
        document: emit(&doc)?,
        published,
    })
}

/// Merges the (already rewritten) indexes of a virtual repository's members,
/// given in member order: the union of their charts and, per chart, of their
/// versions; when two members list the same version of a chart, the earlier
/// one wins. The result has `apiVersion: v1` and `generated` set to
/// `now` (seconds since the epoch).
pub fn merge_indexes(documents: &[&[u8]], now: i64) -> Result<Document, PluginError> {
    let keys = Keys::new();
    let mut merged = Hash::new();
    let mut seen: HashMap<Yaml, HashSet<String>> = HashMap::new();
    for body in documents {
        let mut doc = parse(body)?;
        let Some(entries) = entries_mut(&mut doc, &keys)? else {
            continue;
        };
        for (name, versions) in std::mem::take(entries) {
            let Yaml::Array(versions) = versions else {
                continue;
            };
            // `entry` would move a chart listed before to the end.
            if !merged.contains_key(&name) {
                merged.insert(name.clone(), Yaml::Array(Vec::new()));
            }
            let Some(Yaml::Array(list)) = merged.get_mut(&name) else {
                continue;
            };
            let known = seen.entry(name).or_default();
            for version in versions {
                let new = version_key(&version, &keys).is_none_or(|key| known.insert(key));
                if new {
                    list.push(version);
                }
            }
        }
    }
    let mut index = Hash::new();
    index.insert(string("apiVersion"), string("v1"));
    index.insert(keys.entries, Yaml::Hash(merged));
    index.insert(string("generated"), Yaml::String(format_rfc3339(now)));
    emit(&Yaml::Hash(index))
}

/// The mapping keys the plugin looks up, built once per call.
struct Keys {
    entries: Yaml,
    urls: Yaml,
    created: Yaml,
    version: Yaml,
}

impl Keys {
    fn new() -> Keys {
        Keys {
            entries: string("entries"),
            urls: string("urls"),
            created: string("created"),
            version: string("version"),
        }
    }
}

fn string(text: &str) -> Yaml {
    Yaml::String(text.into())
}

/// Parses an index document: UTF-8 YAML whose first document is a mapping.
fn parse(body: &[u8]) -> Result<Yaml, PluginError> {
    let text = std::str::from_utf8(body)
        .map_err(|e| PluginError::InvalidDocument(format!("helm: index.yaml is not UTF-8: {e}")))?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let docs = YamlLoader::load_from_str(text)
        .map_err(|e| PluginError::InvalidDocument(format!("helm: index.yaml is not YAML: {e}")))?;
    match docs.into_iter().next() {
        Some(doc @ Yaml::Hash(_)) => Ok(doc),
        _ => Err(PluginError::InvalidDocument(
            "helm: index.yaml is not a mapping".into(),
        )),
    }
}

/// The `entries` map of an index; none when the index has no entries.
fn entries_mut<'a>(doc: &'a mut Yaml, keys: &Keys) -> Result<Option<&'a mut Hash>, PluginError> {
    let Yaml::Hash(index) = doc else {
        return Ok(None);
    };
    match index.get_mut(&keys.entries) {
        None | Some(Yaml::Null) => Ok(None),
        Some(Yaml::Hash(entries)) => Ok(Some(entries)),
        Some(_) => Err(PluginError::InvalidDocument(
            "helm: `entries` of index.yaml is not a mapping".into(),
        )),
    }
}

/// The `version` of a chart version entry as written, whatever its YAML type.
fn version_key(version: &Yaml, keys: &Keys) -> Option<String> {
    let Yaml::Hash(version) = version else {
        return None;
    };
    match version.get(&keys.version)? {
        Yaml::String(text) | Yaml::Real(text) => Some(text.clone()),
        Yaml::Integer(number) => Some(number.to_string()),
        _ => None,
    }
}

/// Serialises an index as a YAML document.
fn emit(doc: &Yaml) -> Result<Document, PluginError> {
    let mut text = String::new();
    YamlEmitter::new(&mut text)
        .dump(doc)
        .map_err(|e| PluginError::InvalidDocument(format!("helm: cannot write index.yaml: {e}")))?;
    text.push('\n');
    Ok(Document {
        content_type: INDEX_CONTENT_TYPE.into(),
        body: text.into_bytes(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use artifactapi_plugin_sdk::types::RepoKind;

    const PUBLIC: &str = "http://proxy.example.org/api/v1/remote/charts";

    fn repo(base_url: &str) -> RepoContext {
        RepoContext {
            name: "charts".into(),
            kind: RepoKind::Remote,
            base_url: base_url.into(),
            public_url: PUBLIC.into(),
            settings: "{}".into(),
        }
    }

    fn no_options() -> IndexOptions {
        IndexOptions {
            hide_published_after: None,
        }
    }

    fn load(document: &Document) -> Yaml {
        assert_eq!(document.content_type, "application/x-yaml");
        let text = std::str::from_utf8(&document.body).unwrap();
        YamlLoader::load_from_str(text).unwrap().remove(0)
    }

    fn urls(index: &Yaml, chart: &str) -> Vec<String> {
        index["entries"][chart]
            .as_vec()
            .unwrap()
            .iter()
            .flat_map(|v| v["urls"].as_vec().unwrap().iter())
            .map(|u| u.as_str().unwrap().to_string())
            .collect()
    }

    fn versions(index: &Yaml, chart: &str) -> Vec<String> {
        let keys = Keys::new();
        index["entries"][chart]
            .as_vec()
            .unwrap()
            .iter()
            .map(|v| version_key(v, &keys).unwrap())
            .collect()
    }

    const ABSOLUTE: &str = r#"apiVersion: v1
entries:
  nginx:
  - apiVersion: v2
    appVersion: 1.25.3
    created: "2024-01-02T03:04:05.123456789Z"
    description: "Web server: fast"
    digest: 2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a
    name: nginx
    urls:
    - https://charts.example.org/stable/nginx-15.1.0.tgz
    - https://mirror.example.net/stable/nginx-15.1.0.tgz
    version: 15.1.0
    maintainers:
    - name: Someone
      email: someone@example.org
    annotations:
      category: Infrastructure
  - name: nginx
    created: 2023-05-06T07:08:09Z
    urls:
    - HTTPS://Charts.Example.org:443/stable/sub/nginx-1.10.tgz?token=a%20b
    version: 1.10
generated: "2024-01-02T03:04:06Z"
serverInfo:
  contextPath: /stable
"#;

    #[test]
    fn absolute_urls_under_base_url_lead_through_the_proxy() {
        let out = rewrite_index(
            &repo("https://charts.example.org/stable"),
            "index.yaml",
            ABSOLUTE.as_bytes(),
            &no_options(),
        )
        .unwrap();
        let index = load(&out.document);
        assert_eq!(
            urls(&index, "nginx"),
            [
                format!("{PUBLIC}/nginx-15.1.0.tgz"),
                "https://mirror.example.net/stable/nginx-15.1.0.tgz".into(),
                format!("{PUBLIC}/sub/nginx-1.10.tgz?token=a%20b"),
            ]
        );
        assert_eq!(
            out.published,
            [
                Publication {
                    path: "nginx-15.1.0.tgz".into(),
                    published_at: 1_704_164_645,
                },
                Publication {
                    path: "sub/nginx-1.10.tgz".into(),
                    published_at: 1_683_356_889,
                },
            ]
        );
    }

    #[test]
    fn every_other_field_is_kept() {
        let out = rewrite_index(
            &repo("https://charts.example.org/stable"),
            "index.yaml",
            ABSOLUTE.as_bytes(),
            &no_options(),
        )
        .unwrap();
        let mut index = load(&out.document);
        let mut original = YamlLoader::load_from_str(ABSOLUTE).unwrap().remove(0);
        // Only the URLs differ.
        for doc in [&mut index, &mut original] {
            let Yaml::Hash(top) = doc else { panic!() };
            let Some(Yaml::Hash(entries)) = top.get_mut(&string("entries")) else {
                panic!()
            };
            let Some(Yaml::Array(list)) = entries.get_mut(&string("nginx")) else {
                panic!()
            };
            for version in list {
                let Yaml::Hash(version) = version else {
                    panic!()
                };
                version.remove(&string("urls"));
            }
        }
        assert_eq!(index, original);
        // The version `1.10` is still spelt `1.10`, not the float 1.1.
        let text = String::from_utf8(out.document.body).unwrap();
        assert!(text.contains("version: 1.10\n"), "{text}");
        assert_eq!(index["entries"]["nginx"][1]["version"].as_f64(), Some(1.1));
    }

    #[test]
    fn relative_urls_resolve_against_the_index() {
        let doc = r#"apiVersion: v1
entries:
  demo:
  - name: demo
    version: 0.1.0
    urls:
    - demo-0.1.0.tgz
    - charts/demo-0.1.0.tgz
    - ./demo%20x-0.1.0.tgz
    - /stable/demo-0.1.0.tgz
    - ../other/demo-0.1.0.tgz
    - //charts.example.org/stable/demo-0.1.0.tgz
    - //elsewhere.example.net/demo-0.1.0.tgz
"#;
        let out = rewrite_index(
            &repo("https://charts.example.org/stable"),
            "team/index.yaml",
            doc.as_bytes(),
            &no_options(),
        )
        .unwrap();
        assert_eq!(
            urls(&load(&out.document), "demo"),
            [
                format!("{PUBLIC}/team/demo-0.1.0.tgz"),
                format!("{PUBLIC}/team/charts/demo-0.1.0.tgz"),
                format!("{PUBLIC}/team/demo%20x-0.1.0.tgz"),
                format!("{PUBLIC}/demo-0.1.0.tgz"),
                format!("{PUBLIC}/other/demo-0.1.0.tgz"),
                format!("{PUBLIC}/demo-0.1.0.tgz"),
                "https://elsewhere.example.net/demo-0.1.0.tgz".into(),
            ]
        );
        // No `created`: nothing to report.
        assert!(out.published.is_empty());
    }

    #[test]
    fn relative_urls_outside_the_upstream_become_absolute() {
        let doc =
            "entries:\n  demo:\n  - version: 0.1.0\n    urls: [../../elsewhere/demo-0.1.0.tgz]\n";
        let out = rewrite_index(
            &repo("https://charts.example.org/stable"),
            "index.yaml",
            doc.as_bytes(),
            &no_options(),
        )
        .unwrap();
        assert_eq!(
            urls(&load(&out.document), "demo"),
            ["https://charts.example.org/elsewhere/demo-0.1.0.tgz"]
        );
    }

    #[test]
    fn foreign_and_look_alike_urls_are_untouched() {
        let doc = r#"entries:
  demo:
  - version: 0.1.0
    urls:
    - https://other.example.net/stable/demo-0.1.0.tgz
    - http://charts.example.org/stable/demo-0.1.0.tgz
    - https://charts.example.org:8443/stable/demo-0.1.0.tgz
    - https://charts.example.org/stable-old/demo-0.1.0.tgz
    - oci://charts.example.org/stable/demo
"#;
        let out = rewrite_index(
            &repo("https://charts.example.org/stable"),
            "index.yaml",
            doc.as_bytes(),
            &no_options(),
        )
        .unwrap();
        assert_eq!(
            urls(&load(&out.document), "demo"),
            [
                "https://other.example.net/stable/demo-0.1.0.tgz",
                "http://charts.example.org/stable/demo-0.1.0.tgz",
                "https://charts.example.org:8443/stable/demo-0.1.0.tgz",
                "https://charts.example.org/stable-old/demo-0.1.0.tgz",
                "oci://charts.example.org/stable/demo",
            ]
        );
    }

    #[test]
    fn a_base_url_at_the_host_root_works() {
        let doc = "entries:\n  demo:\n  - version: 1.0.0\n    urls: [demo-1.0.0.tgz, 'http://127.0.0.1:8080/demo-1.0.0.tgz']\n";
        let out = rewrite_index(
            &repo("http://127.0.0.1:8080"),
            "index.yaml",
            doc.as_bytes(),
            &no_options(),
        )
        .unwrap();
        assert_eq!(
            urls(&load(&out.document), "demo"),
            [
                format!("{PUBLIC}/demo-1.0.0.tgz"),
                format!("{PUBLIC}/demo-1.0.0.tgz")
            ]
        );
    }

    #[test]
    fn a_local_repository_resolves_against_its_public_url() {
        let doc = "entries:\n  demo:\n  - version: 1.0.0\n    urls: [charts/demo-1.0.0.tgz]\n";
        let mut local = repo("");
        local.kind = RepoKind::Local;
        let out = rewrite_index(&local, "index.yaml", doc.as_bytes(), &no_options()).unwrap();
        assert_eq!(
            urls(&load(&out.document), "demo"),
            [format!("{PUBLIC}/charts/demo-1.0.0.tgz")]
        );
    }

    const DATED: &str = r#"apiVersion: v1
entries:
  demo:
  - version: 3.0.0
    created: "2024-03-01T00:00:00Z"
    urls: [demo-3.0.0.tgz]
  - version: 2.0.0
    created: "2024-02-01T00:00:00Z"
    urls: [demo-2.0.0.tgz]
  - version: 1.0.0
    urls: [demo-1.0.0.tgz]
  fresh:
  - version: 0.1.0
    created: "2024-03-02T00:00:00+01:00"
    urls: [fresh-0.1.0.tgz]
  empty: []
generated: "2024-03-02T00:00:00Z"
"#;

    #[test]
    fn quarantine_hides_versions_created_after_the_instant() {
        let feb_15 = 1_707_955_200;
        let out = rewrite_index(
            &repo("https://charts.example.org"),
            "index.yaml",
            DATED.as_bytes(),
            &IndexOptions {
                hide_published_after: Some(feb_15),
            },
        )
        .unwrap();
        let index = load(&out.document);
        assert_eq!(versions(&index, "demo"), ["2.0.0", "1.0.0"]);
        // A chart with nothing left disappears; one that was empty stays.
        assert!(index["entries"]["fresh"].is_badvalue());
        assert_eq!(index["entries"]["empty"].as_vec().map(Vec::len), Some(0));
        assert_eq!(index["generated"].as_str(), Some("2024-03-02T00:00:00Z"));
        // Hidden files are reported too, so the host can refuse them.
        let published: Vec<(&str, u64)> = out
            .published
            .iter()
            .map(|p| (p.path.as_str(), p.published_at))
            .collect();
        assert_eq!(
            published,
            [
                ("demo-3.0.0.tgz", 1_709_251_200),
                ("demo-2.0.0.tgz", 1_706_745_600),
                ("fresh-0.1.0.tgz", 1_709_334_000),
            ]
        );
    }

    #[test]
    fn quarantine_at_or_after_every_creation_hides_nothing() {
        for after in [1_709_334_000, u64::MAX] {
            let out = rewrite_index(
                &repo("https://charts.example.org"),
                "index.yaml",
                DATED.as_bytes(),
                &IndexOptions {
                    hide_published_after: Some(after),
                },
            )
            .unwrap();
            let index = load(&out.document);
            assert_eq!(versions(&index, "demo"), ["3.0.0", "2.0.0", "1.0.0"]);
            assert_eq!(versions(&index, "fresh"), ["0.1.0"]);
        }
    }

    #[test]
    fn documents_that_are_no_index_are_refused() {
        for body in [
            &b"\xff\xfe"[..],
            b"",
            b"entries: [unclosed",
            b"- just\n- a list\n",
            b"entries: [1, 2]\n",
        ] {
            let result = rewrite_index(
                &repo("https://charts.example.org"),
                "index.yaml",
                body,
                &no_options(),
            );
            assert!(
                matches!(result, Err(PluginError::InvalidDocument(_))),
                "{body:?}"
            );
        }
        let settings = rewrite_index(&repo("not a url"), "index.yaml", b"{}", &no_options());
        assert!(matches!(settings, Err(PluginError::InvalidSettings(_))));
    }

    #[test]
    fn an_index_without_entries_is_served_as_it_is() {
        let out = rewrite_index(
            &repo("https://charts.example.org"),
            "index.yaml",
            "\u{feff}apiVersion: v1\nentries:\n".as_bytes(),
            &no_options(),
        )
        .unwrap();
        let index = load(&out.document);
        assert_eq!(index["apiVersion"].as_str(), Some("v1"));
        assert!(index["entries"].is_null());
    }

    #[test]
    fn merge_unions_charts_and_versions_and_the_first_member_wins() {
        let first = r#"apiVersion: v1
entries:
  demo:
  - version: 2.0.0
    description: from the first
    urls: [http://proxy.example.org/api/v1/virtual/all/a/demo-2.0.0.tgz]
  - version: 1.10
    urls: [http://proxy.example.org/api/v1/virtual/all/a/demo-1.10.tgz]
  only-first:
  - version: 1.0.0
generated: "2020-01-01T00:00:00Z"
serverInfo: {contextPath: /a}
"#;
        let second = r#"apiVersion: v1
entries:
  demo:
  - version: 2.0.0
    description: from the second
  - version: 1.1
  - version: 1.10
  only-second:
  - version: 0.1.0
generated: "2021-01-01T00:00:00Z"
"#;
        let out = merge_indexes(&[first.as_bytes(), second.as_bytes()], 1_704_164_645).unwrap();
        let index = load(&out);
        let Yaml::Hash(top) = &index else { panic!() };
        let keys: Vec<&str> = top.keys().map(|k| k.as_str().unwrap()).collect();
        assert_eq!(keys, ["apiVersion", "entries", "generated"]);
        assert_eq!(index["apiVersion"].as_str(), Some("v1"));
        assert_eq!(index["generated"].as_str(), Some("2024-01-02T03:04:05Z"));
        assert_eq!(versions(&index, "demo"), ["2.0.0", "1.10", "1.1"]);
        assert_eq!(
            index["entries"]["demo"][0]["description"].as_str(),
            Some("from the first")
        );
        assert_eq!(versions(&index, "only-first"), ["1.0.0"]);
        assert_eq!(versions(&index, "only-second"), ["0.1.0"]);
        let Yaml::Hash(entries) = &index["entries"] else {
            panic!()
        };
        let charts: Vec<&str> = entries.keys().map(|k| k.as_str().unwrap()).collect();
        assert_eq!(charts, ["demo", "only-first", "only-second"]);
    }

    #[test]
    fn merging_nothing_gives_an_empty_index() {
        let index = load(&merge_indexes(&[], 0).unwrap());
        assert_eq!(index["apiVersion"].as_str(), Some("v1"));
        assert_eq!(index["entries"].as_hash().map(Hash::len), Some(0));
        let bad = merge_indexes(&[b"apiVersion: v1\n", b"[]"], 0);
        assert!(matches!(bad, Err(PluginError::InvalidDocument(_))));
    }
}
