//! The PEP 503 HTML form of simple pages, read with a real HTML parser
//! (`lol_html`) and written with every attribute escaped.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt::Write as _;

use html_escape::{decode_html_entities, encode_double_quoted_attribute, encode_text};
use lol_html::html_content::{Element, TextChunk};
use lol_html::{element, text, HtmlRewriter, Settings};
use url::Url;

use crate::model::{
    check_api_version, normalize, resolve, split_hash_fragment, CoreMetadata, DistFile,
    ProjectPage, RootPage,
};

/// One `<a>` of a page: its attributes (names lower-case, values still
/// entity-encoded) and its text.
#[derive(Default)]
struct Anchor {
    attributes: BTreeMap<String, String>,
    text: String,
}

impl Anchor {
    /// An attribute's value with its character references decoded.
    fn attribute(&self, name: &str) -> Option<String> {
        self.attributes
            .get(name)
            .map(|value| decode_html_entities(value).into_owned())
    }

    fn text(&self) -> String {
        decode_html_entities(&self.text).trim().to_string()
    }
}

/// What a simple HTML page holds for this plugin.
#[derive(Default)]
struct Scan {
    anchors: Vec<Anchor>,
    /// The first `<base href>`.
    base: Option<String>,
    /// PEP 629 `<meta name="pypi:repository-version">`.
    repository_version: Option<String>,
}

fn scan(body: &[u8]) -> Result<Scan, String> {
    let found = RefCell::new(Scan::default());
    {
        let on_anchor = |el: &mut Element| {
            let attributes = el
                .attributes()
                .iter()
                .map(|a| (a.name(), a.value()))
                .collect();
            found.borrow_mut().anchors.push(Anchor {
                attributes,
                text: String::new(),
            });
            Ok(())
        };
        let on_anchor_text = |chunk: &mut TextChunk| {
            if let Some(last) = found.borrow_mut().anchors.last_mut() {
                last.text.push_str(chunk.as_str());
            }
            Ok(())
        };
        let on_base = |el: &mut Element| {
            let mut found = found.borrow_mut();
            if found.base.is_none() {
                found.base = el.get_attribute("href");
            }
            Ok(())
        };
        let on_meta = |el: &mut Element| {
            let name = el.get_attribute("name").unwrap_or_default();
            if name.eq_ignore_ascii_case("pypi:repository-version") {
                found.borrow_mut().repository_version = el.get_attribute("content");
            }
            Ok(())
        };
        let settings = Settings::new()
            .with_strict(false)
            .append_element_content_handler(element!("a", on_anchor))
            .append_element_content_handler(text!("a", on_anchor_text))
            .append_element_content_handler(element!("base[href]", on_base))
            .append_element_content_handler(element!("meta[name]", on_meta));
        let mut parser = HtmlRewriter::new(settings, |_: &[u8]| {});
        parser.write(body).map_err(|e| e.to_string())?;
        parser.end().map_err(|e| e.to_string())?;
    }
    Ok(found.into_inner())
}

/// Reads a project page. Links are resolved against `page_url` (or the
/// page's `<base href>`); `name` is the normalised project name.
pub fn parse_project(body: &[u8], page_url: &Url, name: &str) -> Result<ProjectPage, String> {
    let scan = scan(body)?;
    check_api_version(scan.repository_version.as_deref())?;
    let page_url = page_base(page_url, scan.base.as_deref());
    let files = scan
        .anchors
        .iter()
        .filter_map(|anchor| {
            let href = anchor.attribute("href")?;
            let (url, hash) = split_hash_fragment(&resolve(&page_url, &href));
            let filename = match anchor.text() {
                text if !text.is_empty() => text,
                _ => last_segment(&url),
            };
            let core_metadata = anchor
                .attribute("data-core-metadata")
                .or_else(|| anchor.attribute("data-dist-info-metadata"))
                .and_then(|value| core_metadata(&value));
            Some(DistFile {
                filename,
                url,
                hashes: hash.into_iter().collect(),
                requires_python: anchor
                    .attribute("data-requires-python")
                    .filter(|v| !v.trim().is_empty()),
                core_metadata,
                gpg_sig: anchor
                    .attribute("data-gpg-sig")
                    .map(|v| v.eq_ignore_ascii_case("true")),
                yanked: anchor.attribute("data-yanked"),
                provenance: anchor
                    .attribute("data-provenance")
                    .map(|v| resolve(&page_url, &v)),
                ..DistFile::default()
            })
        })
        .collect();
    Ok(ProjectPage {
        name: name.to_string(),
        files,
        versions: None,
    })
}

/// Reads the root page: the text of each link is a project name.
pub fn parse_root(body: &[u8]) -> Result<RootPage, String> {
    let scan = scan(body)?;
    check_api_version(scan.repository_version.as_deref())?;
    let projects = scan
        .anchors
        .iter()
        .filter(|anchor| anchor.attributes.contains_key("href"))
        .filter_map(|anchor| {
            let text = anchor.text();
            if !text.is_empty() {
                return Some(text);
            }
            let href = anchor.attribute("href")?;
            let name = href.trim_end_matches('/').rsplit('/').next()?.to_string();
            (!name.is_empty()).then_some(name)
        })
        .collect();
    Ok(RootPage { projects })
}

fn page_base(page_url: &Url, base: Option<&str>) -> Url {
    base.and_then(|href| page_url.join(&decode_html_entities(href)).ok())
        .unwrap_or_else(|| page_url.clone())
}

/// The file name at the end of a URL's path, percent-decoded.
fn last_segment(url: &str) -> String {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    let segment = path.rsplit('/').next().unwrap_or(path);
    percent_encoding::percent_decode_str(segment)
        .decode_utf8_lossy()
        .into_owned()
}

/// PEP 658/714 attribute values: `true` or `<hash name>=<hex digest>`.
fn core_metadata(value: &str) -> Option<CoreMetadata> {
    let value = value.trim();
    if value.eq_ignore_ascii_case("false") {
        return None;
    }
    match value.split_once('=') {
        Some((name, digest)) if !name.is_empty() && !digest.is_empty() => {
            Some(CoreMetadata::Hashes(BTreeMap::from([(
                name.to_ascii_lowercase(),
                digest.to_string(),
            )])))
        }
        _ => Some(CoreMetadata::Available),
    }
}

/// The attribute value for core metadata: `true`, or the preferred hash as
/// `<name>=<digest>`.
fn core_metadata_value(metadata: &CoreMetadata) -> String {
    match metadata {
        CoreMetadata::Available => "true".to_string(),
        CoreMetadata::Hashes(hashes) => match preferred_hash(hashes) {
            Some((name, digest)) => format!("{name}={digest}"),
            None => "true".to_string(),
        },
    }
}

/// sha256 when given, else the first hash by name.
fn preferred_hash(hashes: &BTreeMap<String, String>) -> Option<(&String, &String)> {
    hashes
        .get_key_value("sha256")
        .or_else(|| hashes.iter().next())
}

fn document(title: &str, body: &str, api_version: &str) -> Vec<u8> {
    let title = encode_text(title);
    format!(
        "<!DOCTYPE html>\n<html>\n  <head>\n    <meta name=\"pypi:repository-version\" content=\"{api_version}\">\n    <title>{title}</title>\n  </head>\n  <body>\n    <h1>{title}</h1>\n{body}  </body>\n</html>\n"
    )
    .into_bytes()
}

/// Writes a project page as PEP 503 HTML with the PEP 592/658/714/740
/// attributes.
pub fn render_project(page: &ProjectPage) -> Vec<u8> {
    let mut body = String::new();
    for file in &page.files {
        let mut href = file.url.clone();
        if let Some((name, digest)) = preferred_hash(&file.hashes) {
            // Writing to a String cannot fail.
            let _ = write!(href, "#{name}={digest}");
        }
        let _ = write!(
            body,
            "    <a href=\"{}\"",
            encode_double_quoted_attribute(&href)
        );
        let mut attribute = |name: &str, value: &str| {
            let _ = write!(
                body,
                " {name}=\"{}\"",
                encode_double_quoted_attribute(value)
            );
        };
        if let Some(requires) = &file.requires_python {
            attribute("data-requires-python", requires);
        }
        if let Some(metadata) = &file.core_metadata {
            let value = core_metadata_value(metadata);
            attribute("data-dist-info-metadata", &value);
            attribute("data-core-metadata", &value);
        }
        if let Some(gpg) = file.gpg_sig {
            attribute("data-gpg-sig", if gpg { "true" } else { "false" });
        }
        if let Some(reason) = &file.yanked {
            attribute("data-yanked", reason);
        }
        if let Some(provenance) = &file.provenance {
            attribute("data-provenance", provenance);
        }
        let _ = writeln!(body, ">{}</a><br>", encode_text(&file.filename));
    }
    document(
        &format!("Links for {}", page.name),
        &body,
        page.api_version(),
    )
}

/// Writes the root page as PEP 503 HTML, each project linking to
/// `{public_url}/simple/{normalised name}/`.
pub fn render_root(page: &RootPage, public_url: &str) -> Vec<u8> {
    let mut body = String::new();
    for name in &page.projects {
        let href = format!(
            "{}/simple/{}/",
            public_url.trim_end_matches('/'),
            normalize(name)
        );
        // Writing to a String cannot fail.
        let _ = writeln!(
            body,
            "    <a href=\"{}\">{}</a><br>",
            encode_double_quoted_attribute(&href),
            encode_text(name)
        );
    }
    document("Simple index", &body, "1.0")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page_url() -> Url {
        Url::parse("http://127.0.0.1:8080/simple/demo-lib/").unwrap()
    }

    const PYPISERVER: &str = r#"<!DOCTYPE html>
<html lang="en">
    <head>
        <meta charset="utf-8">
        <title>Links for demo-lib</title>
    </head>
    <body>
        <h1>Links for demo-lib</h1>
            <a href="../../packages/demo_lib-0.1.0-py3-none-any.whl#sha256=15e259fb">demo_lib-0.1.0-py3-none-any.whl</a><br>
            <a href="/packages/demo_lib-0.1.0.tar.gz#sha256=ca88c81e">demo_lib-0.1.0.tar.gz</a><br>
    </body>
</html>"#;

    #[test]
    fn reads_pypiserver_pages() {
        let page = parse_project(PYPISERVER.as_bytes(), &page_url(), "demo-lib").unwrap();
        assert_eq!(page.name, "demo-lib");
        assert_eq!(page.files.len(), 2);
        let wheel = &page.files[0];
        assert_eq!(wheel.filename, "demo_lib-0.1.0-py3-none-any.whl");
        assert_eq!(
            wheel.url,
            "http://127.0.0.1:8080/packages/demo_lib-0.1.0-py3-none-any.whl"
        );
        assert_eq!(wheel.hashes["sha256"], "15e259fb");
        assert_eq!(wheel.requires_python, None);
        assert_eq!(wheel.yanked, None);
        assert_eq!(
            page.files[1].url,
            "http://127.0.0.1:8080/packages/demo_lib-0.1.0.tar.gz"
        );
    }

    #[test]
    fn reads_every_attribute_and_decodes_entities() {
        let html = r#"<html><head><meta name="pypi:repository-version" content="1.1"></head><body>
            <a href="https://files.example.org/p/x-1.0.whl#sha256=aa" data-requires-python="&gt;=3.8,&lt;4"
               data-dist-info-metadata="sha256=bb" data-core-metadata="sha256=cc"
               data-gpg-sig="true" data-yanked="broken &amp; bad" data-provenance="/integrity/x">x-1.0.whl</a>
            <a href="x-0.9.tar.gz" data-yanked data-core-metadata="true">x-0.9.tar.gz</a>
            <a href="x-0.8.zip?a=1&amp;b=2">  </a>
            <a name="no-href">ignored</a>
        </body></html>"#;
        let page = parse_project(html.as_bytes(), &page_url(), "x").unwrap();
        assert_eq!(page.files.len(), 3);
        let first = &page.files[0];
        assert_eq!(first.url, "https://files.example.org/p/x-1.0.whl");
        assert_eq!(first.requires_python.as_deref(), Some(">=3.8,<4"));
        assert_eq!(
            first.core_metadata,
            Some(CoreMetadata::Hashes(BTreeMap::from([(
                "sha256".into(),
                "cc".into()
            )])))
        );
        assert_eq!(first.gpg_sig, Some(true));
        assert_eq!(first.yanked.as_deref(), Some("broken & bad"));
        assert_eq!(
            first.provenance.as_deref(),
            Some("http://127.0.0.1:8080/integrity/x")
        );
        let second = &page.files[1];
        assert_eq!(
            second.url,
            "http://127.0.0.1:8080/simple/demo-lib/x-0.9.tar.gz"
        );
        assert_eq!(second.yanked.as_deref(), Some(""));
        assert_eq!(second.core_metadata, Some(CoreMetadata::Available));
        assert!(second.hashes.is_empty());
        let third = &page.files[2];
        assert_eq!(third.filename, "x-0.8.zip", "named after the URL");
        assert_eq!(
            third.url,
            "http://127.0.0.1:8080/simple/demo-lib/x-0.8.zip?a=1&b=2"
        );
    }

    #[test]
    fn honours_base_href() {
        let html = r#"<html><head><base href="https://mirror.example.org/root/"></head>
            <body><a href="x-1.0.tar.gz">x-1.0.tar.gz</a></body></html>"#;
        let page = parse_project(html.as_bytes(), &page_url(), "x").unwrap();
        assert_eq!(
            page.files[0].url,
            "https://mirror.example.org/root/x-1.0.tar.gz"
        );
    }

    #[test]
    fn refuses_a_future_api_version() {
        let html =
            r#"<meta name="pypi:repository-version" content="2.0"><a href="x.whl">x.whl</a>"#;
        let error = parse_project(html.as_bytes(), &page_url(), "x").unwrap_err();
        assert!(error.contains("2.0"), "{error}");
        assert!(parse_root(html.as_bytes()).is_err());
    }

    #[test]
    fn reads_the_root_page() {
        let html = r#"<html><body><a href="demo-lib/">demo-lib</a><br>
            <a href="/simple/Demo.App/">Demo.App</a><a href="/simple/other/"></a><a>none</a></body></html>"#;
        let page = parse_root(html.as_bytes()).unwrap();
        assert_eq!(page.projects, ["demo-lib", "Demo.App", "other"]);
    }

    #[test]
    fn writes_escaped_attributes() {
        let page = ProjectPage {
            name: "x".into(),
            files: vec![DistFile {
                filename: "x-1.0.whl".into(),
                url: "http://proxy/r/packages/x-1.0.whl?a=1&b=\"2\"".into(),
                hashes: BTreeMap::from([
                    ("md5".into(), "00".into()),
                    ("sha256".into(), "aa".into()),
                ]),
                requires_python: Some(">=3.8,<4".into()),
                core_metadata: Some(CoreMetadata::Hashes(BTreeMap::from([(
                    "sha256".into(),
                    "bb".into(),
                )]))),
                gpg_sig: Some(false),
                yanked: Some("use <2>".into()),
                provenance: Some("https://index.example.org/integrity/x".into()),
                ..DistFile::default()
            }],
            versions: None,
        };
        let html = String::from_utf8(render_project(&page)).unwrap();
        assert!(html.contains(r#"<meta name="pypi:repository-version" content="1.0">"#));
        assert!(html.contains("<title>Links for x</title>"));
        let anchor = html.lines().find(|l| l.contains("<a ")).unwrap().trim();
        assert_eq!(
            anchor,
            "<a href=\"http://proxy/r/packages/x-1.0.whl?a=1&amp;b=&quot;2&quot;#sha256=aa\" \
             data-requires-python=\"&gt;=3.8,&lt;4\" data-dist-info-metadata=\"sha256=bb\" \
             data-core-metadata=\"sha256=bb\" data-gpg-sig=\"false\" data-yanked=\"use &lt;2&gt;\" \
             data-provenance=\"https://index.example.org/integrity/x\">x-1.0.whl</a><br>"
        );
        // What is written reads back the same.
        let again = parse_project(html.as_bytes(), &page_url(), "x").unwrap();
        assert_eq!(again.files[0].requires_python.as_deref(), Some(">=3.8,<4"));
        assert_eq!(again.files[0].yanked.as_deref(), Some("use <2>"));
        assert_eq!(
            again.files[0].url,
            "http://proxy/r/packages/x-1.0.whl?a=1&b=%222%22"
        );
    }

    #[test]
    fn writes_the_root_page() {
        let page = RootPage {
            projects: vec!["Demo_Lib".into(), "a&b".into()],
        };
        let html = String::from_utf8(render_root(&page, "http://proxy/r/")).unwrap();
        assert!(html.contains(r#"<a href="http://proxy/r/simple/demo-lib/">Demo_Lib</a><br>"#));
        assert!(html.contains(r#"<a href="http://proxy/r/simple/a&amp;b/">a&amp;b</a><br>"#));
        assert_eq!(parse_root(html.as_bytes()).unwrap(), page);
    }
}
