//! The simple repository API independent of its two forms (PEP 503 HTML
//! and PEP 691 JSON): what a page says, where its links lead, which files
//! quarantine hides, and how the pages of a virtual repository's members
//! merge.

use std::collections::{BTreeMap, HashSet};

use percent_encoding::percent_decode_str;
use serde_json::{Map, Value};
use url::Url;

use artifactapi_plugin_sdk::time::{parse_rfc3339, Instant};

/// The list of projects, `simple/`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RootPage {
    /// Project names as the index spells them.
    pub projects: Vec<String>,
}

/// The files of one project, `simple/{project}/`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProjectPage {
    /// The project's name, normalised.
    pub name: String,
    /// The files, in the index's order.
    pub files: Vec<DistFile>,
    /// Every version of the project (PEP 700), when the index said.
    pub versions: Option<Vec<String>>,
}

/// Whether a file's core metadata (PEP 658/714) is served next to it at
/// `{url}.metadata`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CoreMetadata {
    /// It is, with no hash given.
    Available,
    /// It is, with these hashes (`sha256` → hex digest).
    Hashes(BTreeMap<String, String>),
}

/// One file of a project.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DistFile {
    /// The file name, e.g. `demo_lib-0.1.0-py3-none-any.whl`.
    pub filename: String,
    /// An absolute URL, without the hash fragment.
    pub url: String,
    /// Hash name → hex digest.
    pub hashes: BTreeMap<String, String>,
    /// The `Requires-Python` specifier, unescaped.
    pub requires_python: Option<String>,
    /// PEP 658/714 core metadata.
    pub core_metadata: Option<CoreMetadata>,
    /// Whether a `.asc` signature sits next to the file.
    pub gpg_sig: Option<bool>,
    /// PEP 592: none when not yanked, else the reason (possibly empty).
    pub yanked: Option<String>,
    /// PEP 700 size in bytes.
    pub size: Option<u64>,
    /// PEP 700 upload time, RFC 3339.
    pub upload_time: Option<String>,
    /// PEP 740 provenance URL.
    pub provenance: Option<String>,
    /// JSON keys this plugin does not know, passed on in the JSON form.
    pub extra: Map<String, Value>,
}

impl ProjectPage {
    /// The PEP 691/700 API version the page can honestly claim: 1.1 needs
    /// the list of versions and every file's size.
    pub fn api_version(&self) -> &'static str {
        if self.versions.is_some() && self.files.iter().all(|f| f.size.is_some()) {
            "1.1"
        } else {
            "1.0"
        }
    }
}

/// Checks the API version a page declares (PEP 629 HTML meta tag, PEP 691
/// JSON `meta.api-version`): major version 1 is understood.
pub fn check_api_version(version: Option<&str>) -> Result<(), String> {
    match version.map(str::trim) {
        None => Ok(()),
        Some(v) if v == "1" || v.starts_with("1.") => Ok(()),
        Some(v) => Err(format!(
            "the index speaks simple API version {v}, this plugin version 1"
        )),
    }
}

/// Project name normalisation (PEP 503): lower case, every run of `-`, `_`
/// and `.` becomes one `-`.
pub fn normalize(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut in_run = false;
    for c in name.chars() {
        if matches!(c, '-' | '_' | '.') {
            if !in_run {
                out.push('-');
            }
            in_run = true;
        } else {
            out.extend(c.to_lowercase());
            in_run = false;
        }
    }
    out
}

/// Whether `name` is a valid project name (PEP 508): ASCII letters, digits,
/// `-`, `_` and `.`, starting and ending with a letter or digit.
pub fn is_valid_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    match (bytes.first(), bytes.last()) {
        (Some(first), Some(last)) => {
            first.is_ascii_alphanumeric()
                && last.is_ascii_alphanumeric()
                && bytes
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        }
        _ => false,
    }
}

/// Resolves a link of a page against the page's URL; a link that does not
/// resolve is kept as written.
pub fn resolve(page: &Url, href: &str) -> String {
    page.join(href.trim())
        .map_or_else(|_| href.to_string(), String::from)
}

/// The hash names of Python's `hashlib` that PEP 503 fragments may use.
const HASH_NAMES: &[&str] = &[
    "md5", "sha1", "sha224", "sha256", "sha384", "sha512", "sha3_224", "sha3_256", "sha3_384",
    "sha3_512", "blake2b", "blake2s",
];

/// Splits the fragment off a link: the URL without it, and the hash when the
/// fragment is a PEP 503 `#<hash name>=<hex digest>`. Other fragments
/// (`#egg=...`) are dropped.
pub fn split_hash_fragment(url: &str) -> (String, Option<(String, String)>) {
    match url.split_once('#') {
        Some((before, fragment)) => {
            let hash = fragment
                .split_once('=')
                .map(|(name, value)| (name.to_ascii_lowercase(), value))
                .filter(|(name, value)| {
                    HASH_NAMES.contains(&name.as_str())
                        && !value.is_empty()
                        && value.bytes().all(|b| b.is_ascii_hexdigit())
                })
                .map(|(name, value)| (name, value.to_ascii_lowercase()));
            (before.to_string(), hash)
        }
        None => (url.to_string(), None),
    }
}

/// Leads links to the files of the upstream's `base_url` through the proxy.
pub struct LinkRewriter {
    base: Option<Url>,
    public_url: String,
}

impl LinkRewriter {
    /// Links under `base_url` will lead to `public_url`; a `base_url` that
    /// is empty or no URL rewrites nothing.
    pub fn new(base_url: &str, public_url: &str) -> LinkRewriter {
        LinkRewriter {
            base: Url::parse(base_url).ok(),
            public_url: public_url.trim_end_matches('/').to_string(),
        }
    }

    /// An absolute URL under `base_url` (same scheme, host and port, path
    /// below its path) as `{public_url}/{path below base_url}` (query kept),
    /// with the path the client will request through the proxy,
    /// percent-decoded; any other URL as it is, with no path.
    pub fn rewrite(&self, url: &str) -> (String, Option<String>) {
        let unchanged = || (url.to_string(), None);
        let (Some(base), Ok(link)) = (&self.base, Url::parse(url)) else {
            return unchanged();
        };
        if link.scheme() != base.scheme()
            || link.host_str() != base.host_str()
            || link.port_or_known_default() != base.port_or_known_default()
        {
            return unchanged();
        }
        let prefix = base.path().trim_end_matches('/');
        let Some(relative) = link
            .path()
            .strip_prefix(prefix)
            .and_then(|rest| rest.strip_prefix('/'))
            .filter(|rest| !rest.is_empty())
        else {
            return unchanged();
        };
        let mut rewritten = format!("{}/{relative}", self.public_url);
        if let Some(query) = link.query() {
            rewritten.push('?');
            rewritten.push_str(query);
        }
        let path = percent_decode_str(relative)
            .decode_utf8_lossy()
            .into_owned();
        (rewritten, Some(path))
    }

    /// Rewrites every file link of `page`, and returns the publish time of
    /// each file that now leads through the proxy and has a known upload
    /// time: (path below the repository, seconds since the epoch).
    pub fn rewrite_page(&self, page: &mut ProjectPage) -> Vec<(String, u64)> {
        let mut published = Vec::new();
        for file in &mut page.files {
            let (url, path) = self.rewrite(&file.url);
            file.url = url;
            let time = file
                .upload_time
                .as_deref()
                .and_then(parse_rfc3339)
                .map(Instant::epoch_secs);
            if let (Some(path), Some(time)) = (path, time) {
                published.push((path, time));
            }
        }
        published
    }
}

/// Quarantine: drops the files uploaded after `limit` (seconds since the
/// epoch). Files with no known upload time stay.
pub fn hide_published_after(page: &mut ProjectPage, limit: u64) {
    page.files.retain(|file| {
        file.upload_time
            .as_deref()
            .and_then(parse_rfc3339)
            .is_none_or(|time| !time.is_after(limit))
    });
}

/// The union of the members' project lists, in member order; the first
/// spelling of a name wins.
pub fn merge_roots(pages: Vec<RootPage>) -> RootPage {
    let mut seen = HashSet::new();
    let projects = pages
        .into_iter()
        .flat_map(|page| page.projects)
        .filter(|name| seen.insert(normalize(name)))
        .collect();
    RootPage { projects }
}

/// The union of the members' files by file name; on a clash the earlier
/// member's file wins. The list of versions is kept only when every member
/// gave one.
pub fn merge_projects(name: &str, pages: Vec<ProjectPage>) -> ProjectPage {
    let mut seen = HashSet::new();
    let mut versions: Option<Vec<String>> = Some(Vec::new());
    let mut files = Vec::new();
    for page in pages {
        versions = match (versions, page.versions) {
            (Some(mut all), Some(more)) => {
                for version in more {
                    if !all.contains(&version) {
                        all.push(version);
                    }
                }
                Some(all)
            }
            _ => None,
        };
        files.extend(
            page.files
                .into_iter()
                .filter(|file| seen.insert(file.filename.clone())),
        );
    }
    ProjectPage {
        name: name.to_string(),
        files,
        versions,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, url: &str) -> DistFile {
        DistFile {
            filename: name.into(),
            url: url.into(),
            ..DistFile::default()
        }
    }

    #[test]
    fn normalizes_names() {
        assert_eq!(normalize("Demo_Lib"), "demo-lib");
        assert_eq!(normalize("zope.interface"), "zope-interface");
        assert_eq!(normalize("a-_.-b"), "a-b");
        assert_eq!(normalize("Friendly-Bard"), "friendly-bard");
        assert_eq!(normalize("FRIENDLY._.BARD"), "friendly-bard");
        assert_eq!(normalize("requests"), "requests");
    }

    #[test]
    fn validates_names() {
        for good in ["a", "demo-lib", "Demo_Lib", "zope.interface", "x1"] {
            assert!(is_valid_name(good), "{good}");
        }
        for bad in ["", "-a", "a-", "a b", "a/b", "é", ".a"] {
            assert!(!is_valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn resolves_relative_links() {
        let page = Url::parse("http://127.0.0.1:8080/simple/demo-lib/").unwrap();
        assert_eq!(
            resolve(&page, "../../packages/x.whl#sha256=ab"),
            "http://127.0.0.1:8080/packages/x.whl#sha256=ab"
        );
        assert_eq!(
            resolve(&page, "/packages/x.whl"),
            "http://127.0.0.1:8080/packages/x.whl"
        );
        assert_eq!(
            resolve(&page, "x.whl"),
            "http://127.0.0.1:8080/simple/demo-lib/x.whl"
        );
        assert_eq!(
            resolve(&page, "https://files.example.org/a/x.whl"),
            "https://files.example.org/a/x.whl"
        );
    }

    #[test]
    fn splits_hash_fragments() {
        assert_eq!(
            split_hash_fragment("http://h/x.whl#SHA256=ab12"),
            (
                "http://h/x.whl".into(),
                Some(("sha256".into(), "ab12".into()))
            )
        );
        assert_eq!(
            split_hash_fragment("http://h/x.whl#egg=abc"),
            ("http://h/x.whl".into(), None)
        );
        assert_eq!(
            split_hash_fragment("http://h/x.whl#sha256=not-hex"),
            ("http://h/x.whl".into(), None)
        );
        assert_eq!(
            split_hash_fragment("http://h/x.whl#"),
            ("http://h/x.whl".into(), None)
        );
        assert_eq!(
            split_hash_fragment("http://h/x.whl"),
            ("http://h/x.whl".into(), None)
        );
    }

    #[test]
    fn rewrites_links_under_base_url_only() {
        let links = LinkRewriter::new(
            "https://files.example.org/pypi",
            "http://127.0.0.1:8000/api/v1/remote/pypi",
        );
        assert_eq!(
            links.rewrite("https://files.example.org/pypi/packages/ab/cd/x-1.0.tar.gz"),
            (
                "http://127.0.0.1:8000/api/v1/remote/pypi/packages/ab/cd/x-1.0.tar.gz".into(),
                Some("packages/ab/cd/x-1.0.tar.gz".into())
            )
        );
        assert_eq!(
            links.rewrite("https://FILES.example.org:443/pypi/packages/x%2B1.whl?a=1"),
            (
                "http://127.0.0.1:8000/api/v1/remote/pypi/packages/x%2B1.whl?a=1".into(),
                Some("packages/x+1.whl".into())
            )
        );
        for other in [
            "https://other.example.org/pypi/packages/x.whl",
            "http://files.example.org/pypi/packages/x.whl",
            "https://files.example.org:8443/pypi/packages/x.whl",
            "https://files.example.org/pypix/packages/x.whl",
            "https://files.example.org/packages/x.whl",
            "https://files.example.org/pypi/",
            "not a url",
        ] {
            assert_eq!(links.rewrite(other), (other.to_string(), None), "{other}");
        }
    }

    #[test]
    fn a_root_base_url_covers_the_whole_host() {
        let links = LinkRewriter::new("http://127.0.0.1:9000", "http://proxy/api/v1/remote/p/");
        assert_eq!(
            links.rewrite("http://127.0.0.1:9000/packages/x.whl"),
            (
                "http://proxy/api/v1/remote/p/packages/x.whl".into(),
                Some("packages/x.whl".into())
            )
        );
        let none = LinkRewriter::new("", "http://proxy/api/v1/remote/p");
        assert_eq!(none.rewrite("http://127.0.0.1:9000/packages/x.whl").1, None);
    }

    #[test]
    fn rewrite_page_reports_upload_times_of_proxied_files() {
        let links = LinkRewriter::new("http://up", "http://proxy/r");
        let mut page = ProjectPage {
            name: "x".into(),
            files: vec![
                DistFile {
                    upload_time: Some("2024-01-01T00:00:00Z".into()),
                    ..file("a.whl", "http://up/packages/a.whl")
                },
                DistFile {
                    upload_time: Some("2024-01-01T00:00:00Z".into()),
                    ..file("b.whl", "http://elsewhere/packages/b.whl")
                },
                file("c.whl", "http://up/packages/c.whl"),
            ],
            versions: None,
        };
        let published = links.rewrite_page(&mut page);
        assert_eq!(
            published,
            vec![("packages/a.whl".to_string(), 1_704_067_200)]
        );
        assert_eq!(page.files[0].url, "http://proxy/r/packages/a.whl");
        assert_eq!(page.files[1].url, "http://elsewhere/packages/b.whl");
        assert_eq!(page.files[2].url, "http://proxy/r/packages/c.whl");
    }

    #[test]
    fn quarantine_hides_newer_files_and_keeps_undated_ones() {
        let mut page = ProjectPage {
            name: "x".into(),
            files: vec![
                DistFile {
                    upload_time: Some("2024-01-01T00:00:00Z".into()),
                    ..file("old.whl", "u")
                },
                DistFile {
                    upload_time: Some("2024-01-01T00:00:01Z".into()),
                    ..file("new.whl", "u")
                },
                file("undated.whl", "u"),
                DistFile {
                    upload_time: Some("garbage".into()),
                    ..file("unreadable.whl", "u")
                },
            ],
            versions: None,
        };
        hide_published_after(&mut page, 1_704_067_200);
        let names: Vec<&str> = page.files.iter().map(|f| f.filename.as_str()).collect();
        assert_eq!(names, ["old.whl", "undated.whl", "unreadable.whl"]);
    }

    #[test]
    fn merges_roots_by_normalized_name() {
        let merged = merge_roots(vec![
            RootPage {
                projects: vec!["Demo_Lib".into(), "a".into()],
            },
            RootPage {
                projects: vec!["demo-lib".into(), "b".into()],
            },
        ]);
        assert_eq!(merged.projects, ["Demo_Lib", "a", "b"]);
    }

    #[test]
    fn merges_projects_by_file_name_first_member_wins() {
        let first = ProjectPage {
            name: "x".into(),
            files: vec![file("x-1.whl", "first/x-1.whl")],
            versions: Some(vec!["1".into()]),
        };
        let second = ProjectPage {
            name: "x".into(),
            files: vec![
                file("x-1.whl", "second/x-1.whl"),
                file("x-2.whl", "second/x-2.whl"),
            ],
            versions: Some(vec!["1".into(), "2".into()]),
        };
        let merged = merge_projects("x", vec![first.clone(), second]);
        let urls: Vec<&str> = merged.files.iter().map(|f| f.url.as_str()).collect();
        assert_eq!(urls, ["first/x-1.whl", "second/x-2.whl"]);
        assert_eq!(merged.versions, Some(vec!["1".into(), "2".into()]));

        let unversioned = ProjectPage {
            versions: None,
            ..first.clone()
        };
        assert_eq!(merge_projects("x", vec![first, unversioned]).versions, None);
    }

    #[test]
    fn api_version_follows_what_is_known() {
        let mut page = ProjectPage {
            name: "x".into(),
            files: vec![DistFile {
                size: Some(3),
                ..file("x.whl", "u")
            }],
            versions: Some(vec!["1".into()]),
        };
        assert_eq!(page.api_version(), "1.1");
        page.files.push(file("y.whl", "u"));
        assert_eq!(page.api_version(), "1.0");
        page.files.pop();
        page.versions = None;
        assert_eq!(page.api_version(), "1.0");
    }
}
