//! artifactapi format plugin for Go module proxies (the GOPROXY protocol).
//!
//! Below a repository: `{module}/@v/list` and `{module}/@latest` change as
//! versions are published; `{module}/@v/{version}.info`, `.mod` and `.zip`
//! of an exact (semver) version never change, while an `.info` asked for by
//! a branch or commit (`master.info`) is a query and changes. Module paths
//! and versions arrive case-encoded (`!x` for `X`) and are passed through
//! as they are. `sumdb/{name}/…` proxies the checksum database through the
//! upstream proxy, so `GOSUMDB` works through the repository too.
//!
//! Quarantine reads an exact version's `Time` from its `.info`: the host
//! refuses a version published inside the window (404: `go` then looks
//! elsewhere or reports it), its `.mod` and `.zip` with it. Virtual repositories
//! merge `@v/list` of their members. A local repository serves uploaded
//! files and generates `@v/list` from the versions it holds.

use artifactapi_plugin_sdk::metadata;
use artifactapi_plugin_sdk::prelude::*;
use artifactapi_plugin_sdk::time::parse_rfc3339;

/// The goproxy format plugin.
pub struct GoproxyPlugin;

artifactapi_plugin_sdk::export!(GoproxyPlugin);

const JSON: &str = "application/json";
const TEXT: &str = "text/plain; charset=utf-8";

/// What a path below a goproxy repository addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target<'a> {
    /// `{module}/@v/list`.
    List { module: &'a str },
    /// `{module}/@latest`.
    Latest { module: &'a str },
    /// `{module}/@v/{version}.{info|mod|zip}`.
    File {
        module: &'a str,
        version: &'a str,
        kind: FileKind,
    },
    /// `sumdb/{name}/{rest}`.
    Sumdb { rest: &'a str },
}

/// The files of one module version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Info,
    Mod,
    Zip,
}

impl FileKind {
    const ALL: [FileKind; 3] = [FileKind::Info, FileKind::Mod, FileKind::Zip];

    fn extension(self) -> &'static str {
        match self {
            FileKind::Info => "info",
            FileKind::Mod => "mod",
            FileKind::Zip => "zip",
        }
    }
}

/// Parses a path below the repository; none when it is not one the
/// protocol has.
pub fn parse(path: &str) -> Option<Target<'_>> {
    if let Some(rest) = path.strip_prefix("sumdb/") {
        let (name, rest) = rest.split_once('/')?;
        return (!name.is_empty() && !rest.is_empty()).then_some(Target::Sumdb { rest });
    }
    if let Some(module) = path.strip_suffix("/@latest") {
        return is_module_path(module).then_some(Target::Latest { module });
    }
    let (module, file) = path.rsplit_once("/@v/")?;
    if !is_module_path(module) {
        return None;
    }
    if file == "list" {
        return Some(Target::List { module });
    }
    let (version, extension) = file.rsplit_once('.')?;
    let kind = FileKind::ALL
        .into_iter()
        .find(|k| k.extension() == extension)?;
    is_version(version).then_some(Target::File {
        module,
        version,
        kind,
    })
}

/// A case-encoded module path: `/`-separated non-empty elements of lower
/// case letters, digits, `-._~` and `!` escapes.
fn is_module_path(path: &str) -> bool {
    !path.is_empty()
        && path.split('/').all(|element| {
            !element.is_empty()
                && element
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._~!".contains(&b))
        })
}

/// A case-encoded version or version query (`v1.2.3`, `master`).
fn is_version(version: &str) -> bool {
    !version.is_empty()
        && version
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._~!+".contains(&b))
}

/// Whether `version` is an exact semantic version (`v1.2.3`,
/// `v0.0.0-20240101000000-abcdef123456`, `v2.0.0+incompatible`), which
/// names the same content forever; anything else is a query.
pub fn is_exact(version: &str) -> bool {
    let Some(rest) = version.strip_prefix('v') else {
        return false;
    };
    let (core, _build) = rest.split_once('+').unwrap_or((rest, ""));
    let (core, prerelease) = match core.split_once('-') {
        Some((core, pre)) => (core, Some(pre)),
        None => (core, None),
    };
    let numbers: Vec<&str> = core.split('.').collect();
    numbers.len() == 3
        && numbers.iter().all(|n| {
            !n.is_empty()
                && n.bytes().all(|b| b.is_ascii_digit())
                && (n.len() == 1 || !n.starts_with('0'))
        })
        && prerelease.is_none_or(|p| !p.is_empty() && p.split('.').all(|id| !id.is_empty()))
}

/// The verdict on a path.
pub fn classify_path(kind: RepoKind, path: &str) -> Result<Classification, PluginError> {
    let target = parse(path)
        .ok_or_else(|| PluginError::NotFound(format!("{path} is not a GOPROXY path")))?;
    let (mutability, rewrite, content_type) = match target {
        Target::List { .. } => (Mutability::Mutable, true, TEXT),
        Target::Latest { .. } => (Mutability::Mutable, false, JSON),
        Target::File { version, kind, .. } => match kind {
            FileKind::Info if is_exact(version) => (Mutability::Immutable, true, JSON),
            FileKind::Info => (Mutability::Mutable, false, JSON),
            FileKind::Mod => (Mutability::Immutable, false, TEXT),
            FileKind::Zip => (Mutability::Immutable, false, "application/zip"),
        },
        Target::Sumdb { rest } => {
            let fixed = rest.starts_with("lookup/") || rest.starts_with("tile/");
            let mutability = if fixed {
                Mutability::Immutable
            } else {
                Mutability::Mutable
            };
            (mutability, false, TEXT)
        }
    };
    let generated = kind == RepoKind::Local && matches!(target, Target::List { .. });
    Ok(Classification {
        content_type: Some(content_type.to_string()),
        generated,
        ..classification(mutability, rewrite && !generated)
    })
}

/// The publish times an exact version's `.info` records
/// (`{"Version": "v1.2.3", "Time": "2024-01-02T03:04:05Z"}`) for its
/// `.info`, `.mod` and `.zip`: the host refuses them while they are in
/// quarantine, this document included.
pub fn rewrite_info(
    module: &str,
    version: &str,
    document: Document,
) -> Result<Rewritten, PluginError> {
    let info: serde_json::Value = serde_json::from_slice(&document.body).map_err(|e| {
        PluginError::InvalidDocument(format!("goproxy: {module}@{version}.info is not JSON: {e}"))
    })?;
    let time = info
        .get("Time")
        .and_then(|t| t.as_str())
        .and_then(parse_rfc3339);
    let published = time
        .into_iter()
        .flat_map(|time| {
            FileKind::ALL.into_iter().map(move |kind| Publication {
                path: format!("{module}/@v/{version}.{}", kind.extension()),
                published_at: time.epoch_secs(),
            })
        })
        .collect();
    Ok(Rewritten {
        document,
        published,
    })
}

/// The versions of several `@v/list` documents, each once, in the order
/// they first appear.
pub fn merge_lists(documents: &[Document]) -> Document {
    let mut seen = std::collections::HashSet::new();
    let mut body = String::new();
    for document in documents {
        for line in String::from_utf8_lossy(&document.body).lines() {
            let version = line.trim();
            if !version.is_empty() && seen.insert(version.to_string()) {
                body.push_str(version);
                body.push('\n');
            }
        }
    }
    Document {
        content_type: TEXT.into(),
        body: body.into_bytes(),
    }
}

/// The versions a local repository holds for `module`, from the names of
/// its stored `.info`, `.mod` and `.zip` files.
fn stored_versions(repo: &str, module: &str) -> Result<Vec<String>, PluginError> {
    let prefix = format!("{module}/@v/");
    let mut versions = Vec::new();
    let mut after = String::new();
    loop {
        let page = metadata::list_objects(repo, &prefix, &after, 1000).map_err(|e| {
            PluginError::UpstreamFailed(format!("goproxy: listing {prefix}: {e:?}"))
        })?;
        let Some(last) = page.last() else {
            break;
        };
        after = last.path.clone();
        for object in &page {
            if let Some(Target::File { version, .. }) = parse(&object.path) {
                if is_exact(version) && !versions.iter().any(|v| v == version) {
                    versions.push(version.to_string());
                }
            }
        }
    }
    Ok(versions)
}

impl Format for GoproxyPlugin {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "goproxy".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            package_type: "goproxy".into(),
            description: "Go module proxies (GOPROXY): version lists are revalidated, .info/.mod/.zip of exact versions cached for good, the checksum database proxied".into(),
            mutable_patterns: vec!["/@v/list$".into(), "/@latest$".into()],
            immutable_patterns: vec![
                "/@v/v[0-9]+\\.[0-9]+\\.[0-9]+[^/]*\\.(info|mod|zip)$".into(),
                "^sumdb/[^/]+/(lookup|tile)/".into(),
            ],
            environment: Vec::new(),
            well_known: Vec::new(),
        }
    }

    fn validate_settings(repo: RepoContext) -> Result<(), PluginError> {
        let settings: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&repo.settings).map_err(|e| {
                PluginError::InvalidSettings(format!("goproxy: settings are not an object: {e}"))
            })?;
        match settings.keys().next() {
            Some(key) => Err(PluginError::InvalidSettings(format!(
                "goproxy takes no settings; unknown setting `{key}`"
            ))),
            None => Ok(()),
        }
    }

    fn classify(repo: RepoContext, request: RequestInfo) -> Result<Classification, PluginError> {
        classify_path(repo.kind, &request.path)
    }

    fn rewrite_index(
        _repo: RepoContext,
        request: RequestInfo,
        document: Document,
        _options: IndexOptions,
    ) -> Result<Rewritten, PluginError> {
        match parse(&request.path) {
            Some(Target::File {
                module,
                version,
                kind: FileKind::Info,
            }) => rewrite_info(module, version, document),
            _ => Ok(Rewritten {
                document,
                published: Vec::new(),
            }),
        }
    }

    fn merge_indexes(
        _repo: RepoContext,
        request: RequestInfo,
        documents: Vec<Document>,
    ) -> Result<Document, PluginError> {
        match parse(&request.path) {
            Some(Target::List { .. }) => Ok(merge_lists(&documents)),
            // One version's .info is the same everywhere: the first member's.
            _ => documents
                .into_iter()
                .next()
                .ok_or_else(|| PluginError::NotFound(format!("{} is in no member", request.path))),
        }
    }

    fn check_upload(
        repo: RepoContext,
        request: RequestInfo,
        _object: ObjectInfo,
    ) -> Result<(), PluginError> {
        match parse(&request.path) {
            Some(Target::File { .. }) => Ok(()),
            _ => Err(PluginError::InvalidRequest(format!(
                "repository {} takes {{module}}/@v/{{version}}.info, .mod and .zip uploads; \
                 its @v/list is generated from them",
                repo.name
            ))),
        }
    }

    fn generate_document(repo: RepoContext, request: RequestInfo) -> Result<Document, PluginError> {
        let Some(Target::List { module }) = parse(&request.path) else {
            return Err(PluginError::NotFound(format!(
                "{} is not in repository {}",
                request.path, repo.name
            )));
        };
        let versions = stored_versions(&repo.name, module)?;
        if versions.is_empty() {
            return Err(PluginError::NotFound(format!(
                "repository {} holds no version of {module}",
                repo.name
            )));
        }
        let mut body = versions.join("\n");
        body.push('\n');
        Ok(Document {
            content_type: TEXT.into(),
            body: body.into_bytes(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(path: &str) -> (Mutability, bool) {
        let c = classify_path(RepoKind::Remote, path).unwrap();
        (c.mutability, c.rewrite)
    }

    #[test]
    fn lists_and_latest_are_mutable() {
        assert_eq!(
            verdict("example.org/lib/@v/list"),
            (Mutability::Mutable, true)
        );
        assert_eq!(
            verdict("example.org/lib/@latest"),
            (Mutability::Mutable, false)
        );
        assert_eq!(
            verdict("example.org/!azure/sdk/@v/list"),
            (Mutability::Mutable, true)
        );
    }

    #[test]
    fn exact_versions_are_immutable_and_queries_are_not() {
        assert_eq!(
            verdict("example.org/lib/@v/v1.2.3.info"),
            (Mutability::Immutable, true)
        );
        assert_eq!(
            verdict("example.org/lib/@v/v1.2.3.mod"),
            (Mutability::Immutable, false)
        );
        assert_eq!(
            verdict("example.org/lib/@v/v1.2.3.zip"),
            (Mutability::Immutable, false)
        );
        assert_eq!(
            verdict("example.org/lib/@v/v0.0.0-20240102030405-abcdef123456.info"),
            (Mutability::Immutable, true)
        );
        assert_eq!(
            verdict("example.org/lib/@v/v2.0.0+incompatible.zip"),
            (Mutability::Immutable, false)
        );
        assert_eq!(
            verdict("example.org/lib/@v/master.info"),
            (Mutability::Mutable, false)
        );
        assert_eq!(
            verdict("example.org/lib/@v/v1.2.info"),
            (Mutability::Mutable, false)
        );
        let zip = classify_path(RepoKind::Remote, "example.org/lib/@v/v1.0.0.zip").unwrap();
        assert_eq!(zip.content_type.as_deref(), Some("application/zip"));
    }

    #[test]
    fn checksum_database_paths() {
        assert_eq!(
            verdict("sumdb/sum.example.org/supported"),
            (Mutability::Mutable, false)
        );
        assert_eq!(
            verdict("sumdb/sum.example.org/latest"),
            (Mutability::Mutable, false)
        );
        assert_eq!(
            verdict("sumdb/sum.example.org/lookup/example.org/lib@v1.0.0"),
            (Mutability::Immutable, false)
        );
        assert_eq!(
            verdict("sumdb/sum.example.org/tile/8/0/x001/234.p/5"),
            (Mutability::Immutable, false)
        );
    }

    #[test]
    fn what_is_not_the_protocol_is_not_found() {
        for path in [
            "",
            "example.org/lib",
            "example.org/lib/@v/",
            "example.org/lib/@v/v1.0.0.tar.gz",
            "Example.org/lib/@v/list",
            "example.org//lib/@v/list",
            "example.org/lib/@v/v1.0.0/x.zip",
            "sumdb/",
            "sumdb/name",
        ] {
            assert!(
                matches!(
                    classify_path(RepoKind::Remote, path),
                    Err(PluginError::NotFound(_))
                ),
                "{path:?}"
            );
        }
    }

    #[test]
    fn a_local_list_is_generated() {
        let c = classify_path(RepoKind::Local, "example.org/lib/@v/list").unwrap();
        assert!(c.generated);
        assert!(!c.rewrite);
        let file = classify_path(RepoKind::Local, "example.org/lib/@v/v1.0.0.zip").unwrap();
        assert!(!file.generated);
    }

    #[test]
    fn exactness() {
        for exact in [
            "v0.0.1",
            "v1.22.333",
            "v1.0.0-rc.1",
            "v1.0.0-!r!c1",
            "v2.1.0+incompatible",
        ] {
            assert!(is_exact(exact), "{exact}");
        }
        for query in [
            "master", "v1", "v1.2", "v01.2.3", "1.2.3", "v1.2.3-", "latest", "v1.2.3.4",
        ] {
            assert!(!is_exact(query), "{query}");
        }
    }

    fn info(time: &str) -> Document {
        Document {
            content_type: JSON.into(),
            body: format!(r#"{{"Version":"v1.0.0","Time":"{time}"}}"#).into_bytes(),
        }
    }

    #[test]
    fn info_times_are_the_publications_of_the_version() {
        let rewritten =
            rewrite_info("example.org/lib", "v1.0.0", info("2024-01-02T03:04:05Z")).unwrap();
        assert_eq!(rewritten.document, info("2024-01-02T03:04:05Z"));
        let paths: Vec<_> = rewritten
            .published
            .iter()
            .map(|p| p.path.as_str())
            .collect();
        assert_eq!(
            paths,
            [
                "example.org/lib/@v/v1.0.0.info",
                "example.org/lib/@v/v1.0.0.mod",
                "example.org/lib/@v/v1.0.0.zip"
            ]
        );
        assert!(rewritten
            .published
            .iter()
            .all(|p| p.published_at == 1_704_164_645));
        let timeless = Document {
            content_type: JSON.into(),
            body: br#"{"Version":"v1.0.0"}"#.to_vec(),
        };
        assert!(rewrite_info("example.org/lib", "v1.0.0", timeless)
            .unwrap()
            .published
            .is_empty());
        let broken = Document {
            content_type: JSON.into(),
            body: b"not json".to_vec(),
        };
        assert!(matches!(
            rewrite_info("example.org/lib", "v1.0.0", broken),
            Err(PluginError::InvalidDocument(_))
        ));
    }

    #[test]
    fn lists_merge_in_member_order_without_repeats() {
        let list = |text: &str| Document {
            content_type: TEXT.into(),
            body: text.as_bytes().to_vec(),
        };
        let merged = merge_lists(&[list("v1.0.0\nv1.1.0\n"), list("v1.1.0\nv0.9.0"), list("")]);
        assert_eq!(merged.body, b"v1.0.0\nv1.1.0\nv0.9.0\n");
    }

    #[test]
    fn settings_are_refused_by_name() {
        let repo = |settings: &str| RepoContext {
            name: "go".into(),
            kind: RepoKind::Remote,
            base_url: "https://proxy.example.org".into(),
            public_url: String::new(),
            settings: settings.into(),
        };
        assert!(GoproxyPlugin::validate_settings(repo("{}")).is_ok());
        let Err(PluginError::InvalidSettings(message)) =
            GoproxyPlugin::validate_settings(repo(r#"{"sumdb": "x"}"#))
        else {
            panic!("accepted");
        };
        assert!(message.contains("`sumdb`"), "{message}");
    }
}
