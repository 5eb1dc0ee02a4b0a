//! artifactapi format plugin for OCI / Docker registries (distribution API v2).
//!
//! The host serves `/v2/{repo}/...` and hands this plugin the path after the
//! repository: `{image}/manifests/{reference}`, `{image}/blobs/{digest}` or
//! `{image}/tags/list`, where `{image}` is one or more `/`-separated name
//! components. A manifest by tag and a tag list change as images are pushed,
//! so they are mutable; a manifest or blob by digest is content-addressed and
//! immutable, and is cached once per digest for every image of the
//! repository. Uploads, `_catalog` and `referrers` are not served.
//!
//! Settings (the repository's `settings:` map):
//!
//! - `library_prefix` (boolean, default `false`): send a one-component image
//!   name `nginx` upstream as `library/nginx`, as registries that keep their
//!   official images under `library/` expect. Cache keys and access names
//!   keep the name the client sent.

use artifactapi_plugin_sdk::types::{
    Classification, Document, Header, IndexOptions, Mutability, PluginError, RepoContext,
    RequestInfo, Rewritten, UpstreamRequest,
};
use artifactapi_plugin_sdk::upstream_url;
use artifactapi_plugin_sdk::{Format, PluginInfo};

/// The Docker / OCI format plugin.
pub struct DockerPlugin;

artifactapi_plugin_sdk::export!(DockerPlugin);

/// The manifest media types asked of the upstream, indexes first so that a
/// multi-platform image is answered with its index.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.v2+json";

/// The longest tag the OCI distribution specification allows.
const MAX_TAG_LEN: usize = 128;

/// What a request path names below an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource<'a> {
    /// `manifests/{tag}`.
    ManifestByTag(&'a str),
    /// `manifests/{digest}`.
    ManifestByDigest(&'a str),
    /// `blobs/{digest}`.
    Blob(&'a str),
    /// `tags/list`.
    TagList,
}

/// A request path split into the image name and what it asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImagePath<'a> {
    /// The image name as the client sent it, e.g. `library/nginx`.
    pub image: &'a str,
    /// What the path asks for.
    pub resource: Resource<'a>,
}

impl<'a> ImagePath<'a> {
    /// Parses a path below the repository. The last segments decide the kind
    /// of resource and everything before them is the image name; a path that
    /// is no manifest, blob or tag list of a valid image is `NotFound`.
    pub fn parse(path: &'a str) -> Result<ImagePath<'a>, PluginError> {
        let not_found = || {
            PluginError::NotFound(format!(
                "docker: {path:?} is not a manifest, blob or tag list path \
                 ({{image}}/manifests/{{reference}}, {{image}}/blobs/{{digest}}, {{image}}/tags/list)"
            ))
        };
        let (rest, last) = path.rsplit_once('/').ok_or_else(not_found)?;
        let (image, kind) = rest.rsplit_once('/').unwrap_or(("", rest));
        let resource = match (kind, last) {
            ("tags", "list") => Resource::TagList,
            ("manifests", reference) if reference.contains(':') => {
                check_digest(reference)?;
                Resource::ManifestByDigest(reference)
            }
            ("manifests", tag) => {
                if !is_tag(tag) {
                    return Err(PluginError::NotFound(format!(
                        "docker: {tag:?} is not a valid tag \
                         (a letter, digit or `_`, then up to 127 letters, digits, `.`, `_` or `-`)"
                    )));
                }
                Resource::ManifestByTag(tag)
            }
            ("blobs", digest) => {
                check_digest(digest)?;
                Resource::Blob(digest)
            }
            _ => return Err(not_found()),
        };
        if image.is_empty() {
            return Err(PluginError::NotFound(format!(
                "docker: {path:?} names no image"
            )));
        }
        if !image.split('/').all(is_name_component) {
            return Err(PluginError::NotFound(format!(
                "docker: {image:?} is not a valid image name \
                 (`/`-separated components of lower-case letters and digits, \
                 joined inside by `.`, `_`, `__` or dashes)"
            )));
        }
        Ok(ImagePath { image, resource })
    }

    /// The path after the image name, e.g. `manifests/latest`.
    fn suffix(&self) -> String {
        match self.resource {
            Resource::ManifestByTag(reference) | Resource::ManifestByDigest(reference) => {
                format!("manifests/{reference}")
            }
            Resource::Blob(digest) => format!("blobs/{digest}"),
            Resource::TagList => "tags/list".into(),
        }
    }
}

/// Whether `component` matches the OCI name component grammar
/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`.
fn is_name_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if !bytes.first().is_some_and(alnum) || !bytes.last().is_some_and(alnum) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(&bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(&bytes[i]) {
            i += 1;
        }
        // Both ends are ASCII alphanumerics, so these are char boundaries.
        let separator = &component[start..i];
        if !matches!(separator, "." | "_" | "__") && !separator.bytes().all(|b| b == b'-') {
            return false;
        }
    }
    true
}

/// Whether `tag` matches `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`.
fn is_tag(tag: &str) -> bool {
    let bytes = tag.as_bytes();
    let Some((first, rest)) = bytes.split_first() else {
        return false;
    };
    bytes.len() <= MAX_TAG_LEN
        && (first.is_ascii_alphanumeric() || *first == b'_')
        && rest
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Checks a digest against the OCI grammar `algorithm ":" encoded`, where
/// `algorithm` is `[a-z0-9]+` components joined by one of `+._-` and
/// `encoded` is `[a-zA-Z0-9=_-]+`; `sha256` and `sha512` must carry 64 and
/// 128 lower-case hex digits.
fn check_digest(digest: &str) -> Result<(), PluginError> {
    let invalid = |why: &str| {
        Err(PluginError::NotFound(format!(
            "docker: {digest:?} is not a valid digest: {why}"
        )))
    };
    let Some((algorithm, encoded)) = digest.split_once(':') else {
        return invalid("expected algorithm:encoded, e.g. sha256:<64 hex digits>");
    };
    let algorithm_ok = algorithm.split(['+', '.', '_', '-']).all(|component| {
        !component.is_empty()
            && component
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    });
    if !algorithm_ok {
        return invalid(
            "the algorithm must be lower-case letters and digits, joined by +, ., _ or -",
        );
    }
    if encoded.is_empty()
        || !encoded
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'=' | b'_' | b'-'))
    {
        return invalid("the encoded part must be letters, digits, =, _ or -");
    }
    let hex_len = match algorithm {
        "sha256" => Some(64),
        "sha512" => Some(128),
        _ => None,
    };
    if let Some(len) = hex_len {
        let lower_hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
        if encoded.len() != len || !encoded.bytes().all(lower_hex) {
            return Err(PluginError::NotFound(format!(
                "docker: {digest:?} is not a valid digest: {algorithm} takes {len} lower-case hex digits"
            )));
        }
    }
    Ok(())
}

/// The repository's `settings:` this plugin reads.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Send one-component image names upstream under `library/`.
    pub library_prefix: bool,
}

impl Settings {
    /// Reads the settings JSON; an unknown key or a value of the wrong type
    /// is an error, so that a typo never goes unnoticed.
    pub fn parse(text: &str) -> Result<Settings, PluginError> {
        let invalid = |m: String| PluginError::InvalidSettings(format!("docker: {m}"));
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
                "library_prefix" => {
                    settings.library_prefix = value.as_bool().ok_or_else(|| {
                        invalid(format!("library_prefix must be true or false, not {value}"))
                    })?;
                }
                other => {
                    return Err(invalid(format!(
                        "unknown setting {other:?} (known: library_prefix)"
                    )))
                }
            }
        }
        Ok(settings)
    }

    /// The image name to use upstream for the name a client sent.
    pub fn upstream_image(&self, image: &str) -> String {
        if self.library_prefix && !image.contains('/') {
            format!("library/{image}")
        } else {
            image.to_string()
        }
    }
}

/// The verdict on a request path with its raw query.
pub fn classify_path(path: &str, query: &str) -> Result<Classification, PluginError> {
    let parsed = ImagePath::parse(path)?;
    let image = parsed.image;
    let (mutability, cache_key, content_type) = match parsed.resource {
        Resource::ManifestByTag(tag) => (
            Mutability::Mutable,
            format!("{image}/manifests/{tag}"),
            None,
        ),
        Resource::ManifestByDigest(digest) => {
            (Mutability::Immutable, format!("manifests/{digest}"), None)
        }
        Resource::Blob(digest) => (
            Mutability::Immutable,
            format!("blobs/{digest}"),
            Some("application/octet-stream"),
        ),
        Resource::TagList => {
            let mut key = format!("{image}/tags/list");
            if !query.is_empty() {
                key.push('?');
                key.push_str(query);
            }
            (Mutability::Mutable, key, Some("application/json"))
        }
    };
    Ok(Classification {
        mutability,
        rewrite: false,
        cache_key: Some(cache_key),
        access_name: Some(image.to_string()),
        content_type: content_type.map(String::from),
        generated: false,
    })
}

/// Builds the upstream request for a path: `{base_url}/v2/{image}/...` with
/// the `accept` header the resource needs.
pub fn upstream_request(
    repo: &RepoContext,
    request: &RequestInfo,
) -> Result<UpstreamRequest, PluginError> {
    let settings = Settings::parse(&repo.settings)?;
    let parsed = ImagePath::parse(&request.path)?;
    if repo.base_url.is_empty() {
        return Err(PluginError::InvalidSettings(format!(
            "docker: repository {} has no base_url to fetch from",
            repo.name
        )));
    }
    let (query, accept) = match parsed.resource {
        Resource::ManifestByTag(_) | Resource::ManifestByDigest(_) => ("", Some(MANIFEST_ACCEPT)),
        Resource::Blob(_) => ("", None),
        Resource::TagList => (request.query.as_str(), Some("application/json")),
    };
    let path = format!(
        "v2/{}/{}",
        settings.upstream_image(parsed.image),
        parsed.suffix()
    );
    Ok(UpstreamRequest {
        url: upstream_url(&repo.base_url, &path, query),
        headers: accept
            .map(|value| Header {
                name: "accept".into(),
                value: value.into(),
            })
            .into_iter()
            .collect(),
    })
}

impl Format for DockerPlugin {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "docker".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            package_type: "docker".into(),
            description: "OCI / Docker registries: manifests by tag and tag lists are revalidated, manifests and blobs by digest are cached for good, once per digest".into(),
            mutable_patterns: vec![
                "/manifests/[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$".into(),
                "/tags/list$".into(),
            ],
            immutable_patterns: vec![
                "/manifests/[a-z0-9]+([+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$".into(),
                "/blobs/[a-z0-9]+([+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$".into(),
            ],
            environment: Vec::new(),
            well_known: Vec::new(),
        }
    }

    fn validate_settings(repo: RepoContext) -> Result<(), PluginError> {
        Settings::parse(&repo.settings).map(drop)
    }

    fn classify(_repo: RepoContext, request: RequestInfo) -> Result<Classification, PluginError> {
        classify_path(&request.path, &request.query)
    }

    fn prepare_upstream(
        repo: RepoContext,
        request: RequestInfo,
    ) -> Result<UpstreamRequest, PluginError> {
        upstream_request(&repo, &request)
    }

    fn rewrite_index(
        _repo: RepoContext,
        _request: RequestInfo,
        _document: Document,
        _options: IndexOptions,
    ) -> Result<Rewritten, PluginError> {
        Err(PluginError::Unsupported(
            "docker: manifests and tag lists are served as the upstream sent them; they are never rewritten".into(),
        ))
    }

    fn merge_indexes(
        _repo: RepoContext,
        _request: RequestInfo,
        _documents: Vec<Document>,
    ) -> Result<Document, PluginError> {
        Err(PluginError::Unsupported(
            "docker: tag lists of virtual repositories are not merged".into(),
        ))
    }
}

#[cfg(test)]
mod tests;
