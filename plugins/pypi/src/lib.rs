//! artifactapi format plugin for Python package indexes: the simple
//! repository API, as PEP 503 HTML and PEP 691 JSON.
//!
//! - `simple/` and `simple/{project}/` are index pages: mutable, and
//!   rewritten on every serve so that file links lead back through the
//!   proxy. Project names are normalised (PEP 503), so `Demo_Lib` and
//!   `demo-lib` share one cached page. The page is fetched once, asking the
//!   upstream for JSON first, and served in the form the client's `Accept`
//!   header prefers (PEP 691 content negotiation), whatever form the
//!   upstream sent.
//! - Every other path is a file (`.whl`, `.tar.gz`, `.whl.metadata`, ...):
//!   immutable, fetched from `{base_url}/{path}`.
//!
//! `base_url` is where files come from. The pages come from the optional
//! `settings.index_url` (the index root, under which `simple/` lives) and by
//! default from `base_url` too, which suits self-hosted indexes.

mod accept;
mod html;
mod json;
mod model;

use artifactapi_plugin_sdk::types::{
    Classification, Document, Header, IndexOptions, Mutability, PluginError, Publication,
    RepoContext, RequestInfo, Rewritten, UpstreamRequest,
};
use artifactapi_plugin_sdk::{direct_upstream_request, header};
use artifactapi_plugin_sdk::{Format, PluginInfo};
use url::Url;

use accept::{preferred, Form};
use model::{
    hide_published_after, is_valid_name, merge_projects, merge_roots, normalize, LinkRewriter,
    ProjectPage, RootPage,
};

/// The PyPI format plugin.
pub struct PypiPlugin;

artifactapi_plugin_sdk::export!(PypiPlugin);

/// What the plugin asks an index for: JSON first, so that one raw page
/// serves clients of either form.
pub const UPSTREAM_ACCEPT: &str = "application/vnd.pypi.simple.v1+json, \
     application/vnd.pypi.simple.v1+html;q=0.2, text/html;q=0.01";

/// What a request path names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `simple/`: the list of projects.
    Root,
    /// `simple/{project}/`: one project's files; the name is normalised.
    Project(String),
    /// Anything else: a file of `base_url`.
    File,
}

impl Target {
    /// Reads a request path (percent-decoded, no leading slash).
    pub fn of(path: &str) -> Result<Target, PluginError> {
        if path == "simple" || path == "simple/" {
            return Ok(Target::Root);
        }
        let Some(rest) = path.strip_prefix("simple/") else {
            return Ok(Target::File);
        };
        let name = rest.strip_suffix('/').unwrap_or(rest);
        if name.contains('/') {
            return Ok(Target::File);
        }
        if !is_valid_name(name) {
            return Err(PluginError::NotFound(format!(
                "{name:?} is not a valid Python project name"
            )));
        }
        Ok(Target::Project(normalize(name)))
    }

    /// The path of the page below the index root: `simple/` or
    /// `simple/{name}/`. Also the key the raw page is cached under.
    fn page_path(&self) -> Option<String> {
        match self {
            Target::Root => Some("simple/".into()),
            Target::Project(name) => Some(format!("simple/{name}/")),
            Target::File => None,
        }
    }
}

/// The verdict on a path below a PyPI repository.
pub fn classify_path(path: &str) -> Result<Classification, PluginError> {
    let target = Target::of(path)?;
    let classification = match target.page_path() {
        Some(key) => Classification {
            mutability: Mutability::Mutable,
            rewrite: true,
            cache_key: Some(key),
            access_name: None,
            content_type: Some("text/html".into()),
            generated: false,
        },
        // A folder is a listing that changes, not a file.
        None if path.is_empty() || path.ends_with('/') => Classification {
            mutability: Mutability::Mutable,
            rewrite: false,
            cache_key: None,
            access_name: None,
            content_type: None,
            generated: false,
        },
        None => Classification {
            mutability: Mutability::Immutable,
            rewrite: false,
            cache_key: None,
            access_name: None,
            content_type: Some(file_content_type(path).into()),
            generated: false,
        },
    };
    Ok(classification)
}

fn file_content_type(path: &str) -> &'static str {
    let name = path.rsplit('/').next().unwrap_or(path);
    if name.ends_with(".whl") || name.ends_with(".zip") || name.ends_with(".egg") {
        "application/zip"
    } else if name.ends_with(".tar.gz") || name.ends_with(".tgz") {
        "application/gzip"
    } else if name.ends_with(".metadata") {
        "text/plain; charset=utf-8"
    } else if name.ends_with(".asc") {
        "application/pgp-signature"
    } else {
        "application/octet-stream"
    }
}

/// The repository's `settings:` this plugin reads.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// The index root the `simple/` pages come from; none: `base_url`.
    pub index_url: Option<String>,
}

impl Settings {
    /// Reads the settings JSON; an unknown key or an `index_url` that is no
    /// http(s) URL is an error, so that a typo never goes unnoticed.
    pub fn parse(text: &str) -> Result<Settings, PluginError> {
        let invalid = |m: String| PluginError::InvalidSettings(format!("pypi: {m}"));
        if text.trim().is_empty() {
            return Ok(Settings::default());
        }
        let value: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| invalid(format!("settings are not JSON: {e}")))?;
        let Some(map) = value.as_object() else {
            return Err(invalid("settings must be a map".into()));
        };
        let mut settings = Settings::default();
        for (key, value) in map {
            match key.as_str() {
                "index_url" => {
                    let url = value
                        .as_str()
                        .ok_or_else(|| invalid("index_url must be a string".into()))?;
                    match Url::parse(url) {
                        Ok(parsed) if matches!(parsed.scheme(), "http" | "https") => {}
                        _ => {
                            return Err(invalid(format!("index_url {url:?} is not an http(s) URL")))
                        }
                    }
                    settings.index_url = Some(url.trim_end_matches('/').to_string());
                }
                other => {
                    return Err(invalid(format!(
                        "unknown setting {other:?} (known: index_url)"
                    )))
                }
            }
        }
        Ok(settings)
    }
}

/// The upstream URL of an index page: `{index root}/{page path}`.
fn page_url(repo: &RepoContext, page_path: &str) -> Result<String, PluginError> {
    let settings = Settings::parse(&repo.settings)?;
    let root = settings
        .index_url
        .unwrap_or_else(|| repo.base_url.trim_end_matches('/').to_string());
    if root.is_empty() {
        return Err(PluginError::InvalidSettings(format!(
            "pypi: repository {} has neither base_url nor settings.index_url",
            repo.name
        )));
    }
    Ok(format!("{root}/{page_path}"))
}

/// Builds the upstream request for a path.
pub fn upstream_request(
    repo: &RepoContext,
    request: &RequestInfo,
) -> Result<UpstreamRequest, PluginError> {
    match Target::of(&request.path)?.page_path() {
        Some(page) => Ok(UpstreamRequest {
            url: page_url(repo, &page)?,
            headers: vec![Header {
                name: "accept".into(),
                value: UPSTREAM_ACCEPT.into(),
            }],
        }),
        None => Ok(direct_upstream_request(repo, request)),
    }
}

/// The two kinds of page.
enum Page {
    Root(RootPage),
    Project(ProjectPage),
}

/// Whether a document is JSON: by its media type, else by its first byte.
fn is_json(document: &Document) -> bool {
    let media = document.content_type.to_ascii_lowercase();
    if media.contains("json") {
        return true;
    }
    if media.contains("html") {
        return false;
    }
    document
        .body
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| *b == b'{')
}

/// Reads a page of either form; relative links resolve against `page_url`.
fn parse_page(target: &Target, document: &Document, page_url: &Url) -> Result<Page, PluginError> {
    let json = is_json(document);
    let parsed = match target {
        Target::Root if json => json::parse_root(&document.body).map(Page::Root),
        Target::Root => html::parse_root(&document.body).map(Page::Root),
        Target::Project(name) if json => {
            json::parse_project(&document.body, page_url, name).map(Page::Project)
        }
        Target::Project(name) => {
            html::parse_project(&document.body, page_url, name).map(Page::Project)
        }
        Target::File => return Err(not_an_index()),
    };
    parsed.map_err(|m| PluginError::InvalidDocument(format!("pypi: {m}")))
}

fn not_an_index() -> PluginError {
    PluginError::InvalidRequest("pypi: only simple/ pages are index documents".into())
}

/// Writes a page in the client's preferred form.
fn render(page: &Page, form: Form, public_url: &str) -> Document {
    let body = match (page, form) {
        (Page::Root(root), Form::Json) => json::render_root(root),
        (Page::Root(root), _) => html::render_root(root, public_url),
        (Page::Project(project), Form::Json) => json::render_project(project),
        (Page::Project(project), _) => html::render_project(project),
    };
    Document {
        content_type: form.content_type().into(),
        body,
    }
}

/// The form the request's `Accept` header prefers.
fn client_form(request: &RequestInfo) -> Form {
    preferred(header(&request.headers, "accept"))
}

/// Rewrites an upstream page for the client: links to files of `base_url`
/// lead through `repo.public_url`, files uploaded after the quarantine limit
/// are left out, and the page comes in the client's preferred form.
pub fn rewrite(
    repo: &RepoContext,
    request: &RequestInfo,
    document: &Document,
    options: &IndexOptions,
) -> Result<Rewritten, PluginError> {
    let target = Target::of(&request.path)?;
    let page_path = target.page_path().ok_or_else(not_an_index)?;
    let upstream_page = page_url(repo, &page_path)?;
    let upstream_page = Url::parse(&upstream_page).map_err(|e| {
        PluginError::InvalidSettings(format!("pypi: page URL {upstream_page:?}: {e}"))
    })?;
    let mut page = parse_page(&target, document, &upstream_page)?;
    let mut published = Vec::new();
    if let Page::Project(project) = &mut page {
        let links = LinkRewriter::new(&repo.base_url, &repo.public_url);
        published = links
            .rewrite_page(project)
            .into_iter()
            .map(|(path, published_at)| Publication { path, published_at })
            .collect();
        if let Some(limit) = options.hide_published_after {
            hide_published_after(project, limit);
        }
    }
    Ok(Rewritten {
        document: render(&page, client_form(request), &repo.public_url),
        published,
    })
}

/// Merges the members' pages, already rewritten for the virtual repository:
/// the union of projects, or of files by file name with the earlier member
/// winning a clash; written in the client's preferred form.
pub fn merge(
    repo: &RepoContext,
    request: &RequestInfo,
    documents: &[Document],
) -> Result<Document, PluginError> {
    let target = Target::of(&request.path)?;
    let page_path = target.page_path().ok_or_else(not_an_index)?;
    let own_page = format!("{}/{page_path}", repo.public_url.trim_end_matches('/'));
    let own_page = Url::parse(&own_page)
        .map_err(|e| PluginError::InvalidRequest(format!("pypi: page URL {own_page:?}: {e}")))?;
    let pages = documents
        .iter()
        .map(|document| parse_page(&target, document, &own_page))
        .collect::<Result<Vec<_>, _>>()?;
    let merged = match target {
        Target::Root => Page::Root(merge_roots(
            pages
                .into_iter()
                .filter_map(|page| match page {
                    Page::Root(root) => Some(root),
                    Page::Project(_) => None,
                })
                .collect(),
        )),
        Target::Project(name) => Page::Project(merge_projects(
            &name,
            pages
                .into_iter()
                .filter_map(|page| match page {
                    Page::Project(project) => Some(project),
                    Page::Root(_) => None,
                })
                .collect(),
        )),
        Target::File => return Err(not_an_index()),
    };
    Ok(render(&merged, client_form(request), &repo.public_url))
}

impl Format for PypiPlugin {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "pypi".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            package_type: "pypi".into(),
            description: "Python package indexes (PEP 503/691 simple API): simple/ pages are \
                          rewritten to lead through the proxy and served as HTML or JSON; \
                          every other path is a file, cached for good"
                .into(),
            mutable_patterns: vec!["^simple/?$".into(), "^simple/[^/]+/?$".into()],
            immutable_patterns: vec!["[^/]$".into()],
            environment: Vec::new(),
            well_known: Vec::new(),
        }
    }

    fn validate_settings(repo: RepoContext) -> Result<(), PluginError> {
        Settings::parse(&repo.settings).map(drop)
    }

    fn classify(_repo: RepoContext, request: RequestInfo) -> Result<Classification, PluginError> {
        classify_path(&request.path)
    }

    fn prepare_upstream(
        repo: RepoContext,
        request: RequestInfo,
    ) -> Result<UpstreamRequest, PluginError> {
        upstream_request(&repo, &request)
    }

    fn rewrite_index(
        repo: RepoContext,
        request: RequestInfo,
        document: Document,
        options: IndexOptions,
    ) -> Result<Rewritten, PluginError> {
        rewrite(&repo, &request, &document, &options)
    }

    fn merge_indexes(
        repo: RepoContext,
        request: RequestInfo,
        documents: Vec<Document>,
    ) -> Result<Document, PluginError> {
        merge(&repo, &request, &documents)
    }
}

#[cfg(test)]
mod tests {
    use artifactapi_plugin_sdk::types::RepoKind;
    use serde_json::{json, Value};

    use super::*;

    const JSON_ACCEPT: &str = "application/vnd.pypi.simple.v1+json, \
         application/vnd.pypi.simple.v1+html;q=0.2, text/html;q=0.01";

    fn repo(base_url: &str, settings: &str) -> RepoContext {
        RepoContext {
            name: "pypi".into(),
            kind: RepoKind::Remote,
            base_url: base_url.into(),
            public_url: "http://127.0.0.1:8000/api/v1/remote/pypi".into(),
            settings: settings.into(),
        }
    }

    fn request(path: &str, accept: Option<&str>) -> RequestInfo {
        RequestInfo {
            method: "GET".into(),
            path: path.into(),
            query: String::new(),
            headers: accept
                .map(|value| Header {
                    name: "accept".into(),
                    value: value.into(),
                })
                .into_iter()
                .collect(),
        }
    }

    fn document(content_type: &str, body: &str) -> Document {
        Document {
            content_type: content_type.into(),
            body: body.as_bytes().to_vec(),
        }
    }

    fn no_options() -> IndexOptions {
        IndexOptions {
            hide_published_after: None,
        }
    }

    fn as_json(document: &Document) -> Value {
        assert_eq!(document.content_type, "application/vnd.pypi.simple.v1+json");
        serde_json::from_slice(&document.body).unwrap()
    }

    fn as_html(document: &Document) -> String {
        assert!(document.content_type.starts_with("text/html"));
        String::from_utf8(document.body.clone()).unwrap()
    }

    #[test]
    fn classifies_index_pages_with_normalized_keys() {
        for (path, key) in [
            ("simple", "simple/"),
            ("simple/", "simple/"),
            ("simple/demo-lib/", "simple/demo-lib/"),
            ("simple/Demo_Lib", "simple/demo-lib/"),
            ("simple/zope.interface/", "simple/zope-interface/"),
        ] {
            let c = classify_path(path).unwrap();
            assert_eq!(c.mutability, Mutability::Mutable, "{path}");
            assert!(c.rewrite, "{path}");
            assert_eq!(c.cache_key.as_deref(), Some(key), "{path}");
            assert_eq!(c.content_type.as_deref(), Some("text/html"));
        }
        assert!(matches!(
            classify_path("simple/-bad-/"),
            Err(PluginError::NotFound(_))
        ));
    }

    #[test]
    fn classifies_everything_else_as_immutable_files() {
        for (path, content_type) in [
            (
                "packages/demo_lib-0.1.0-py3-none-any.whl",
                "application/zip",
            ),
            ("packages/ab/cd/demo_lib-0.1.0.tar.gz", "application/gzip"),
            ("packages/demo_lib-0.1.0.zip", "application/zip"),
            (
                "packages/demo_lib-0.1.0-py3-none-any.whl.metadata",
                "text/plain; charset=utf-8",
            ),
            (
                "packages/demo_lib-0.1.0.tar.gz.asc",
                "application/pgp-signature",
            ),
            ("simple/demo-lib/demo_lib-0.1.0.tar.gz", "application/gzip"),
            ("other", "application/octet-stream"),
        ] {
            let c = classify_path(path).unwrap();
            assert_eq!(c.mutability, Mutability::Immutable, "{path}");
            assert!(!c.rewrite, "{path}");
            assert_eq!(c.cache_key, None, "{path}");
            assert_eq!(c.content_type.as_deref(), Some(content_type), "{path}");
        }
        for folder in ["", "packages/"] {
            let c = classify_path(folder).unwrap();
            assert_eq!(c.mutability, Mutability::Mutable, "{folder:?}");
            assert!(!c.rewrite);
        }
    }

    #[test]
    fn reads_settings() {
        assert_eq!(Settings::parse("").unwrap(), Settings::default());
        assert_eq!(Settings::parse("{}").unwrap(), Settings::default());
        assert_eq!(
            Settings::parse(r#"{"index_url": "https://pypi.example.org/"}"#).unwrap(),
            Settings {
                index_url: Some("https://pypi.example.org".into())
            }
        );
        for bad in [
            r#"{"index_url": "pypi.example.org"}"#,
            r#"{"index_url": "ftp://pypi.example.org"}"#,
            r#"{"index_url": 3}"#,
            r#"{"index-url": "https://pypi.example.org"}"#,
            "[]",
            "{",
        ] {
            assert!(
                matches!(Settings::parse(bad), Err(PluginError::InvalidSettings(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn index_pages_come_from_index_url_and_files_from_base_url() {
        let split = repo(
            "https://files.example.org",
            r#"{"index_url": "https://pypi.example.org"}"#,
        );
        let page = upstream_request(&split, &request("simple/Demo_Lib", None)).unwrap();
        assert_eq!(page.url, "https://pypi.example.org/simple/demo-lib/");
        assert_eq!(
            page.headers,
            vec![Header {
                name: "accept".into(),
                value: UPSTREAM_ACCEPT.into()
            }]
        );
        let root = upstream_request(&split, &request("simple/", None)).unwrap();
        assert_eq!(root.url, "https://pypi.example.org/simple/");
        let file = upstream_request(
            &split,
            &request("packages/ab/cd/demo_lib-0.1.0.tar.gz", None),
        )
        .unwrap();
        assert_eq!(
            file.url,
            "https://files.example.org/packages/ab/cd/demo_lib-0.1.0.tar.gz"
        );
        assert!(file.headers.is_empty());

        let together = repo("http://127.0.0.1:9000/", "{}");
        let page = upstream_request(&together, &request("simple/demo_lib/", None)).unwrap();
        assert_eq!(page.url, "http://127.0.0.1:9000/simple/demo-lib/");

        let nowhere = repo("", "{}");
        assert!(matches!(
            upstream_request(&nowhere, &request("simple/x/", None)),
            Err(PluginError::InvalidSettings(_))
        ));
    }

    const PYPISERVER_PAGE: &str = r#"<!DOCTYPE html>
<html lang="en"><head><title>Links for demo-lib</title></head><body>
<h1>Links for demo-lib</h1>
<a href="../../packages/demo_lib-0.1.0-py3-none-any.whl#sha256=15e259fb" data-requires-python="&gt;=3.8">demo_lib-0.1.0-py3-none-any.whl</a><br>
<a href="/packages/demo_lib-0.1.0.tar.gz#sha256=ca88c81e">demo_lib-0.1.0.tar.gz</a><br>
<a href="https://mirror.example.net/demo_lib-0.0.1.tar.gz#sha256=0123">demo_lib-0.0.1.tar.gz</a><br>
</body></html>"#;

    #[test]
    fn rewrites_pypiserver_html_to_json_for_json_clients() {
        let repo = repo("http://127.0.0.1:9000", "{}");
        let out = rewrite(
            &repo,
            &request("simple/demo-lib/", Some(JSON_ACCEPT)),
            &document("text/html; charset=UTF-8", PYPISERVER_PAGE),
            &no_options(),
        )
        .unwrap();
        assert!(out.published.is_empty(), "HTML carries no upload times");
        let page = as_json(&out.document);
        assert_eq!(page["meta"]["api-version"], "1.0");
        assert_eq!(page["name"], "demo-lib");
        assert_eq!(
            page["files"][0],
            json!({
                "filename": "demo_lib-0.1.0-py3-none-any.whl",
                "url": "http://127.0.0.1:8000/api/v1/remote/pypi/packages/demo_lib-0.1.0-py3-none-any.whl",
                "hashes": {"sha256": "15e259fb"},
                "requires-python": ">=3.8",
            })
        );
        assert_eq!(
            page["files"][1]["url"],
            "http://127.0.0.1:8000/api/v1/remote/pypi/packages/demo_lib-0.1.0.tar.gz"
        );
        assert_eq!(
            page["files"][2]["url"], "https://mirror.example.net/demo_lib-0.0.1.tar.gz",
            "links to other hosts stay"
        );
    }

    #[test]
    fn rewrites_html_to_html_for_html_clients() {
        let repo = repo("http://127.0.0.1:9000", "{}");
        for accept in [None, Some("text/html"), Some("*/*")] {
            let out = rewrite(
                &repo,
                &request("simple/demo-lib/", accept),
                &document("text/html", PYPISERVER_PAGE),
                &no_options(),
            )
            .unwrap();
            let html = as_html(&out.document);
            assert!(html.contains(
                r#"<a href="http://127.0.0.1:8000/api/v1/remote/pypi/packages/demo_lib-0.1.0-py3-none-any.whl#sha256=15e259fb" data-requires-python="&gt;=3.8">demo_lib-0.1.0-py3-none-any.whl</a>"#
            ), "{html}");
            assert!(html.contains(
                r#"<a href="https://mirror.example.net/demo_lib-0.0.1.tar.gz#sha256=0123">"#
            ));
            assert!(!html.contains("127.0.0.1:9000"));
        }
        let v1 = rewrite(
            &repo,
            &request(
                "simple/demo-lib/",
                Some("application/vnd.pypi.simple.v1+html"),
            ),
            &document("text/html", PYPISERVER_PAGE),
            &no_options(),
        )
        .unwrap();
        assert_eq!(
            v1.document.content_type,
            "application/vnd.pypi.simple.v1+html"
        );
    }

    const INDEX_JSON: &str = r#"{
        "meta": {"api-version": "1.1"},
        "name": "demo-lib",
        "files": [
            {"filename": "demo_lib-0.1.0.tar.gz",
             "url": "https://files.example.org/packages/aa/bb/demo_lib-0.1.0.tar.gz",
             "hashes": {"sha256": "0a"}, "requires-python": ">=3.8",
             "core-metadata": false, "yanked": false,
             "size": 100, "upload-time": "2024-01-01T00:00:00.000000Z"},
            {"filename": "demo_lib-0.2.0-py3-none-any.whl",
             "url": "https://files.example.org/packages/cc/dd/demo_lib-0.2.0-py3-none-any.whl",
             "hashes": {"sha256": "0b"}, "core-metadata": {"sha256": "0c"},
             "size": 200, "upload-time": "2024-06-01T00:00:00.000000Z"}
        ],
        "versions": ["0.1.0", "0.2.0"]
    }"#;

    #[test]
    fn rewrites_json_from_a_separate_index_host_to_html() {
        let repo = repo(
            "https://files.example.org",
            r#"{"index_url": "https://pypi.example.org"}"#,
        );
        let out = rewrite(
            &repo,
            &request("simple/demo-lib/", Some("text/html")),
            &document("application/vnd.pypi.simple.v1+json", INDEX_JSON),
            &no_options(),
        )
        .unwrap();
        let html = as_html(&out.document);
        assert!(html.contains(
            r#"<a href="http://127.0.0.1:8000/api/v1/remote/pypi/packages/aa/bb/demo_lib-0.1.0.tar.gz#sha256=0a" data-requires-python="&gt;=3.8">demo_lib-0.1.0.tar.gz</a>"#
        ), "{html}");
        assert!(html.contains(
            r#"<a href="http://127.0.0.1:8000/api/v1/remote/pypi/packages/cc/dd/demo_lib-0.2.0-py3-none-any.whl#sha256=0b" data-dist-info-metadata="sha256=0c" data-core-metadata="sha256=0c">"#
        ), "{html}");
        assert_eq!(
            out.published,
            vec![
                Publication {
                    path: "packages/aa/bb/demo_lib-0.1.0.tar.gz".into(),
                    published_at: 1_704_067_200,
                },
                Publication {
                    path: "packages/cc/dd/demo_lib-0.2.0-py3-none-any.whl".into(),
                    published_at: 1_717_200_000,
                },
            ]
        );
    }

    #[test]
    fn quarantine_hides_files_uploaded_after_the_limit() {
        let repo = repo("https://files.example.org", "{}");
        let out = rewrite(
            &repo,
            &request("simple/demo-lib/", Some(JSON_ACCEPT)),
            &document("application/vnd.pypi.simple.v1+json", INDEX_JSON),
            &IndexOptions {
                hide_published_after: Some(1_710_000_000),
            },
        )
        .unwrap();
        let page = as_json(&out.document);
        let files = page["files"].as_array().unwrap();
        assert_eq!(files.len(), 1);
        assert_eq!(files[0]["filename"], "demo_lib-0.1.0.tar.gz");
        assert_eq!(files[0]["upload-time"], "2024-01-01T00:00:00.000000Z");
        assert_eq!(page["meta"]["api-version"], "1.1");
        assert_eq!(out.published.len(), 2, "hidden files are reported too");
    }

    #[test]
    fn rewrites_the_root_page() {
        let repo = repo("http://127.0.0.1:9000", "{}");
        let upstream = r#"<html><body><a href="demo-lib/">demo-lib</a><br><a href="Demo_App/">Demo_App</a></body></html>"#;
        let out = rewrite(
            &repo,
            &request("simple/", None),
            &document("text/html", upstream),
            &no_options(),
        )
        .unwrap();
        let html = as_html(&out.document);
        assert!(html.contains(
            r#"<a href="http://127.0.0.1:8000/api/v1/remote/pypi/simple/demo-lib/">demo-lib</a>"#
        ));
        assert!(html.contains(
            r#"<a href="http://127.0.0.1:8000/api/v1/remote/pypi/simple/demo-app/">Demo_App</a>"#
        ));
        let out = rewrite(
            &repo,
            &request("simple", Some(JSON_ACCEPT)),
            &document("text/html", upstream),
            &no_options(),
        )
        .unwrap();
        assert_eq!(
            as_json(&out.document)["projects"],
            json!([{"name": "demo-lib"}, {"name": "Demo_App"}])
        );
    }

    #[test]
    fn refuses_files_and_broken_documents() {
        let repo = repo("http://127.0.0.1:9000", "{}");
        assert!(matches!(
            rewrite(
                &repo,
                &request("packages/x.whl", None),
                &document("text/html", ""),
                &no_options()
            ),
            Err(PluginError::InvalidRequest(_))
        ));
        assert!(matches!(
            rewrite(
                &repo,
                &request("simple/x/", None),
                &document("application/vnd.pypi.simple.v1+json", "{"),
                &no_options()
            ),
            Err(PluginError::InvalidDocument(_))
        ));
    }

    #[test]
    fn sniffs_json_without_a_content_type() {
        let repo = repo("https://files.example.org", "{}");
        let out = rewrite(
            &repo,
            &request("simple/demo-lib/", Some(JSON_ACCEPT)),
            &document("", INDEX_JSON),
            &no_options(),
        )
        .unwrap();
        assert_eq!(as_json(&out.document)["files"].as_array().unwrap().len(), 2);
    }

    fn virtual_repo() -> RepoContext {
        RepoContext {
            name: "all".into(),
            kind: RepoKind::Virtual,
            base_url: String::new(),
            public_url: "http://127.0.0.1:8000/api/v1/remote/all".into(),
            settings: "{}".into(),
        }
    }

    #[test]
    fn merges_project_pages_first_member_wins() {
        let first = r#"{"meta": {"api-version": "1.0"}, "name": "demo-lib", "files": [
            {"filename": "demo_lib-0.1.0.tar.gz", "url": "http://127.0.0.1:8000/api/v1/remote/all/packages/first.tar.gz", "hashes": {"sha256": "01"}}]}"#;
        let second = r#"<html><body>
            <a href="http://127.0.0.1:8000/api/v1/remote/all/packages/second.tar.gz#sha256=02">demo_lib-0.1.0.tar.gz</a>
            <a href="http://127.0.0.1:8000/api/v1/remote/all/packages/demo_lib-0.2.0.tar.gz#sha256=03">demo_lib-0.2.0.tar.gz</a>
        </body></html>"#;
        let documents = [
            document("application/vnd.pypi.simple.v1+json", first),
            document("text/html", second),
        ];
        let merged = merge(
            &virtual_repo(),
            &request("simple/Demo-Lib/", Some(JSON_ACCEPT)),
            &documents,
        )
        .unwrap();
        let page = as_json(&merged);
        assert_eq!(page["name"], "demo-lib");
        let files: Vec<(&str, &str)> = page["files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| (f["filename"].as_str().unwrap(), f["url"].as_str().unwrap()))
            .collect();
        assert_eq!(
            files,
            [
                (
                    "demo_lib-0.1.0.tar.gz",
                    "http://127.0.0.1:8000/api/v1/remote/all/packages/first.tar.gz"
                ),
                (
                    "demo_lib-0.2.0.tar.gz",
                    "http://127.0.0.1:8000/api/v1/remote/all/packages/demo_lib-0.2.0.tar.gz"
                ),
            ]
        );
        let html = as_html(
            &merge(
                &virtual_repo(),
                &request("simple/demo-lib/", None),
                &documents,
            )
            .unwrap(),
        );
        assert_eq!(html.matches("<a ").count(), 2);
    }

    #[test]
    fn merges_root_pages() {
        let documents = [
            document(
                "application/vnd.pypi.simple.v1+json",
                r#"{"meta": {"api-version": "1.0"}, "projects": [{"name": "demo-lib"}]}"#,
            ),
            document(
                "text/html",
                r#"<a href="x/demo-app/">demo-app</a><a href="x/demo_lib/">demo_lib</a>"#,
            ),
        ];
        let merged = merge(&virtual_repo(), &request("simple/", None), &documents).unwrap();
        let html = as_html(&merged);
        assert!(html.contains(
            r#"<a href="http://127.0.0.1:8000/api/v1/remote/all/simple/demo-lib/">demo-lib</a>"#
        ));
        assert!(html.contains(
            r#"<a href="http://127.0.0.1:8000/api/v1/remote/all/simple/demo-app/">demo-app</a>"#
        ));
        assert_eq!(html.matches("<a ").count(), 2);
        assert!(matches!(
            merge(
                &virtual_repo(),
                &request("packages/x.whl", None),
                &documents
            ),
            Err(PluginError::InvalidRequest(_))
        ));
    }

    #[test]
    fn describe_names_the_package_type() {
        let info = PypiPlugin::describe();
        assert_eq!(info.name, "pypi");
        assert_eq!(info.package_type, "pypi");
        assert_eq!(info.version, env!("CARGO_PKG_VERSION"));
    }
}
