//! Links in upstream documents, led back through the proxy.
//!
//! An index fetched from `{base-url}/{path}` names files by absolute URLs or
//! by URLs relative to itself. A link into the repository's upstream becomes
//! `{public-url}/{path below base-url}`, so the client fetches it through
//! the proxy; a relative link elsewhere becomes absolute (it would now
//! resolve against the proxy); an absolute link elsewhere stays.

use percent_encoding::percent_decode_str;
use url::Url;

use crate::types::{PluginError, RepoContext};
use crate::upstream_url;

/// Rewrites the links of one document.
#[derive(Debug, Clone)]
pub struct Links {
    /// The repository's upstream root, ending in `/`.
    root: Url,
    /// The document's own upstream URL, which relative links resolve
    /// against.
    document: Url,
    /// The repository's public URL without a trailing slash.
    public: String,
}

/// A link after rewriting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// The URL to write into the document.
    pub url: String,
    /// The file's path below the repository, percent-decoded, when the URL
    /// leads through the proxy (the path quarantine and publish times name).
    pub path: Option<String>,
}

impl Links {
    /// The links of the document at `path` below the repository. A
    /// repository without a `base-url` (a local one) resolves relative links
    /// against its `public-url`.
    pub fn new(repo: &RepoContext, path: &str) -> Result<Links, PluginError> {
        let base = if repo.base_url.is_empty() {
            &repo.public_url
        } else {
            &repo.base_url
        };
        let root = Url::parse(&format!("{}/", base.trim_end_matches('/'))).map_err(|e| {
            PluginError::InvalidSettings(format!("`{base}` is not a base URL: {e}"))
        })?;
        let document = Url::parse(&upstream_url(root.as_str(), path, "")).map_err(|e| {
            PluginError::InvalidRequest(format!("`{path}` makes no document URL: {e}"))
        })?;
        Ok(Links {
            root,
            document,
            public: repo.public_url.trim_end_matches('/').to_string(),
        })
    }

    /// The new form of a link; none when it stays as it is.
    pub fn rewrite(&self, link: &str) -> Option<Link> {
        let resolved = self.document.join(link.trim()).ok()?;
        if let Some(rest) = resolved.as_str().strip_prefix(self.root.as_str()) {
            let file = rest.split(['?', '#']).next().unwrap_or_default();
            let path = percent_decode_str(file)
                .decode_utf8()
                .ok()
                .map(|p| p.into_owned());
            return Some(Link {
                url: format!("{}/{rest}", self.public),
                path,
            });
        }
        if Url::parse(link.trim()).is_ok() {
            None
        } else {
            Some(Link {
                url: resolved.into(),
                path: None,
            })
        }
    }

    /// The link as it must be written: rewritten, or as it was.
    pub fn rewritten(&self, link: &str) -> String {
        self.rewrite(link)
            .map_or_else(|| link.to_string(), |l| l.url)
    }
}

/// `reference` resolved against `base` (an absolute URL); `reference` as
/// it is when either cannot be parsed.
pub fn resolve_url(base: &str, reference: &str) -> String {
    Url::parse(base)
        .and_then(|base| base.join(reference.trim()))
        .map_or_else(|_| reference.to_string(), String::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::RepoKind;

    const PUBLIC: &str = "http://proxy.example.org/api/v1/remote/charts";

    fn links(base_url: &str, path: &str) -> Links {
        let repo = RepoContext {
            name: "charts".into(),
            kind: RepoKind::Remote,
            base_url: base_url.into(),
            public_url: PUBLIC.into(),
            settings: "{}".into(),
        };
        Links::new(&repo, path).unwrap()
    }

    #[test]
    fn links_into_the_upstream_lead_through_the_proxy() {
        let links = links("https://charts.example.org/stable", "sub/index.yaml");
        let want = |url: &str, path: &str| {
            Some(Link {
                url: url.into(),
                path: Some(path.into()),
            })
        };
        assert_eq!(
            links.rewrite("a-1.0.tgz"),
            want(&format!("{PUBLIC}/sub/a-1.0.tgz"), "sub/a-1.0.tgz")
        );
        assert_eq!(
            links.rewrite("../b%20c-1.0.tgz?x=1"),
            want(&format!("{PUBLIC}/b%20c-1.0.tgz?x=1"), "b c-1.0.tgz")
        );
        assert_eq!(
            links.rewrite("https://charts.example.org/stable/d.tgz"),
            want(&format!("{PUBLIC}/d.tgz"), "d.tgz")
        );
    }

    #[test]
    fn links_elsewhere_stay_or_become_absolute() {
        let links = links("https://charts.example.org/stable", "index.yaml");
        assert_eq!(links.rewrite("https://files.example.org/e.tgz"), None);
        assert_eq!(
            links.rewritten("https://files.example.org/e.tgz"),
            "https://files.example.org/e.tgz"
        );
        assert_eq!(
            links.rewrite("/other/f.tgz"),
            Some(Link {
                url: "https://charts.example.org/other/f.tgz".into(),
                path: None,
            })
        );
    }

    #[test]
    fn resolves_relative_references() {
        let page = "http://127.0.0.1:8080/simple/demo-lib/";
        assert_eq!(
            resolve_url(page, "../../packages/x.whl#sha256=ab"),
            "http://127.0.0.1:8080/packages/x.whl#sha256=ab"
        );
        assert_eq!(
            resolve_url(page, " x.whl"),
            "http://127.0.0.1:8080/simple/demo-lib/x.whl"
        );
        assert_eq!(resolve_url("not a url", "x.whl"), "x.whl");
    }
}
