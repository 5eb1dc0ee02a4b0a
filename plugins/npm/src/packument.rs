//! Rewriting and merging npm package documents ("packuments").
//!
//! A packument can be tens of megabytes, nearly all of it version objects
//! and readmes that pass through untouched. So the document is never parsed
//! into a `serde_json::Value` tree: the top level, the `versions` map and
//! each version object are split into borrowed [`RawValue`] slices of the
//! input, only the small parts that change (`dist`, `dist-tags`, `time`) are
//! parsed, and each version object is re-parsed and written straight into
//! the output as it is serialized. Memory stays near the input plus the
//! output.

use std::collections::HashSet;

use indexmap::IndexMap;
use serde::ser::SerializeMap as _;
use serde::{Serialize, Serializer};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::path::percent_decode;
use artifactapi_plugin_sdk::time::parse_rfc3339;

/// A JSON object split into its members, in document order, with each value
/// left as a slice of the input.
type RawMap<'a> = IndexMap<String, &'a RawValue>;

/// The fields of a version object that the abbreviated form keeps: the
/// registry's documented install fields plus those current clients read
/// (platform filters, install-script and funding hints, the license).
const ABBREVIATED_FIELDS: &[&str] = &[
    "name",
    "version",
    "deprecated",
    "dependencies",
    "optionalDependencies",
    "devDependencies",
    "bundleDependencies",
    "bundledDependencies",
    "peerDependencies",
    "peerDependenciesMeta",
    "acceptDependencies",
    "bin",
    "directories",
    "dist",
    "engines",
    "cpu",
    "os",
    "libc",
    "_hasShrinkwrap",
    "hasInstallScript",
    "funding",
    "license",
];

/// The lifecycle scripts that make `hasInstallScript` true.
const INSTALL_SCRIPTS: &[&str] = &["preinstall", "install", "postinstall"];

/// Which form of a package document a client gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// The whole document (`application/json`).
    Full,
    /// The install subset (`application/vnd.npm.install-v1+json`).
    Abbreviated,
}

/// Where tarball links lead: the upstream's base URL and the URL under which
/// clients reach the same paths through the proxy.
#[derive(Debug, Clone, Copy)]
pub struct Links<'a> {
    /// The upstream base URL (no trailing slash needed); empty for none.
    pub base_url: &'a str,
    /// The repository's public URL.
    pub public_url: &'a str,
}

impl Links<'_> {
    /// The part of `url` below the upstream base URL (path, query and
    /// fragment), when `url` is under it. Scheme and host compare
    /// case-insensitively and default ports are ignored.
    pub fn relative<'u>(&self, url: &'u str) -> Option<&'u str> {
        let base = self.base_url.trim_end_matches('/');
        let (base_origin, base_path) = split_origin(base)?;
        let (origin, rest) = split_origin(url)?;
        if base_origin != origin {
            return None;
        }
        rest.strip_prefix(base_path)?
            .strip_prefix('/')
            .filter(|rel| !rel.is_empty())
    }

    /// `url` moved from under the base URL to under the public URL; none
    /// when it is not under the base URL.
    pub fn rewrite(&self, url: &str) -> Option<String> {
        let rel = self.relative(url)?;
        Some(format!("{}/{rel}", self.public_url.trim_end_matches('/')))
    }

    /// The path below the repository that clients request for a tarball
    /// URL (percent-decoded, without query), when it is under the base URL.
    fn proxied_path(&self, url: &str) -> Option<String> {
        let rel = self.relative(url)?;
        let rel = rel.split(['?', '#']).next().unwrap_or(rel);
        Some(percent_decode(rel))
    }
}

/// An origin in a comparable form: lower-case scheme and authority without
/// the scheme's default port.
#[derive(Debug, PartialEq, Eq)]
struct Origin {
    scheme: String,
    authority: String,
}

/// Splits an absolute URL into its origin and the rest (path, query,
/// fragment).
fn split_origin(url: &str) -> Option<(Origin, &str)> {
    let (scheme, rest) = url.split_once("://")?;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, rest) = rest.split_at(end);
    if scheme.is_empty() || authority.is_empty() {
        return None;
    }
    let scheme = scheme.to_ascii_lowercase();
    let mut authority = authority.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "http" => Some(":80"),
        "https" => Some(":443"),
        _ => None,
    };
    if let Some(port) = default_port {
        if authority.ends_with(port) {
            authority.truncate(authority.len() - port.len());
        }
    }
    Some((Origin { scheme, authority }, rest))
}

/// A tarball's publish time, as the packument's `time` map records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The tarball's path below the repository, as clients request it
    /// through the proxy.
    pub path: String,
    /// Seconds since the epoch.
    pub at: u64,
}

/// A rewritten package document.
#[derive(Debug)]
pub struct Rewritten {
    /// The JSON document.
    pub body: Vec<u8>,
    /// The publish time of every version whose tarball is served through
    /// the proxy and whose time is known, hidden ones included.
    pub published: Vec<Published>,
}

/// Rewrites a full packument for a client: tarball links lead through the
/// proxy, versions published after `hide_after` (seconds since the epoch)
/// are left out together with their `time` entries, dist-tags that pointed
/// at them fall back to an older release, and `form` picks the full or the
/// abbreviated document.
pub fn rewrite_packument(
    text: &str,
    links: Links<'_>,
    form: Form,
    hide_after: Option<u64>,
) -> Result<Rewritten, String> {
    let top = parse_object(text)
        .map_err(|e| format!("the package document is not a JSON object: {e}"))?;
    let versions = match top.get("versions") {
        Some(raw) => {
            parse_object(raw.get()).map_err(|e| format!("`versions` is not a JSON object: {e}"))?
        }
        None => RawMap::new(),
    };
    let mut time = top.get("time").and_then(|raw| parse_map(raw));
    let mut dist_tags = top.get("dist-tags").and_then(|raw| parse_map(raw));

    let mut hidden = HashSet::new();
    let mut published = Vec::new();
    if let Some(time) = &time {
        for (version, raw) in &versions {
            let Some(at) = time
                .get(version)
                .and_then(Value::as_str)
                .and_then(parse_rfc3339)
            else {
                continue;
            };
            if hide_after.is_some_and(|limit| at.is_after(limit)) {
                hidden.insert(version.as_str());
            }
            if let Some(path) = tarball_url(raw).and_then(|url| links.proxied_path(&url)) {
                published.push(Published {
                    path,
                    at: at.epoch_secs(),
                });
            }
        }
    }
    if !hidden.is_empty() {
        if let Some(tags) = &mut dist_tags {
            repair_dist_tags(tags, &versions, &hidden);
        }
        if let Some(time) = &mut time {
            time.retain(|key, _| !hidden.contains(key.as_str()));
        }
    }

    let growth = links.public_url.len().saturating_sub(links.base_url.len());
    let mut body = Vec::with_capacity(text.len() + versions.len() * growth + 64);
    let versions = Versions {
        versions: &versions,
        hidden: &hidden,
        links,
        form,
    };
    let mut serializer = serde_json::Serializer::new(&mut body);
    let mut map = serializer.serialize_map(None).map_err(write_error)?;
    match form {
        Form::Full => {
            for (key, raw) in &top {
                match (key.as_str(), &time, &dist_tags) {
                    ("versions", _, _) => map.serialize_entry(key, &versions),
                    ("time", Some(time), _) => map.serialize_entry(key, time),
                    ("dist-tags", _, Some(tags)) => map.serialize_entry(key, tags),
                    _ => map.serialize_entry(key, raw),
                }
                .map_err(write_error)?;
            }
        }
        Form::Abbreviated => {
            if let Some(name) = top.get("name") {
                map.serialize_entry("name", name).map_err(write_error)?;
            }
            if let Some(modified) = top.get("modified") {
                map.serialize_entry("modified", modified)
                    .map_err(write_error)?;
            } else if let Some(modified) = time.as_ref().and_then(|t| t.get("modified")) {
                map.serialize_entry("modified", modified)
                    .map_err(write_error)?;
            }
            match (&dist_tags, top.get("dist-tags")) {
                (Some(tags), _) => map.serialize_entry("dist-tags", tags),
                (None, Some(raw)) => map.serialize_entry("dist-tags", raw),
                (None, None) => Ok(()),
            }
            .map_err(write_error)?;
            map.serialize_entry("versions", &versions)
                .map_err(write_error)?;
        }
    }
    map.end().map_err(write_error)?;
    Ok(Rewritten { body, published })
}

/// Rewrites the document of one version (`GET /name/1.0.0`): its tarball
/// link leads through the proxy.
pub fn rewrite_version(text: &str, links: Links<'_>) -> Result<Vec<u8>, String> {
    let raw: &RawValue =
        serde_json::from_str(text).map_err(|e| format!("the version document is not JSON: {e}"))?;
    let version = Version {
        raw,
        links,
        form: Form::Full,
    };
    serde_json::to_vec(&version).map_err(write_error)
}

/// Merges packuments of a virtual repository's members, given in member
/// order and already rewritten: the union of `versions` and `time` and of
/// the `dist-tags` (the earlier member wins each), the other top-level
/// fields from the first member that has the package. Empty documents and
/// documents without `versions` are skipped. Returns the position of the
/// first document used and the merged JSON, or none when no document has
/// the package.
pub fn merge_packuments(texts: &[&str]) -> Result<Option<(usize, Vec<u8>)>, String> {
    let mut members = Vec::new();
    for (position, text) in texts.iter().enumerate() {
        if text.trim().is_empty() {
            continue;
        }
        let top = parse_object(text).map_err(|e| {
            format!(
                "the package document of member {} is not a JSON object: {e}",
                position + 1
            )
        })?;
        let Some(raw) = top.get("versions") else {
            continue;
        };
        let versions = parse_object(raw.get()).map_err(|e| {
            format!(
                "`versions` of member {} is not a JSON object: {e}",
                position + 1
            )
        })?;
        members.push((position, top, versions));
    }
    let Some((first_position, first, _)) = members.first() else {
        return Ok(None);
    };

    let mut versions = RawMap::new();
    let mut time: Option<Map<String, Value>> = None;
    let mut dist_tags: Option<Map<String, Value>> = None;
    for (_, top, member_versions) in &members {
        for (version, raw) in member_versions {
            versions.entry(version.clone()).or_insert(raw);
        }
        for (field, merged) in [("time", &mut time), ("dist-tags", &mut dist_tags)] {
            if let Some(map) = top.get(field).and_then(|raw| parse_map(raw)) {
                let merged = merged.get_or_insert_with(Map::new);
                for (key, value) in map {
                    merged.entry(key).or_insert(value);
                }
            }
        }
    }

    let capacity = texts.iter().map(|t| t.len()).sum::<usize>();
    let mut body = Vec::with_capacity(capacity);
    let mut serializer = serde_json::Serializer::new(&mut body);
    let mut map = serializer.serialize_map(None).map_err(write_error)?;
    for (key, raw) in first {
        match (key.as_str(), &time, &dist_tags) {
            ("versions", _, _) => map.serialize_entry(key, &versions),
            ("time", Some(time), _) => map.serialize_entry(key, time),
            ("dist-tags", _, Some(tags)) => map.serialize_entry(key, tags),
            _ => map.serialize_entry(key, raw),
        }
        .map_err(write_error)?;
    }
    if !first.contains_key("dist-tags") {
        if let Some(tags) = &dist_tags {
            map.serialize_entry("dist-tags", tags)
                .map_err(write_error)?;
        }
    }
    if !first.contains_key("time") {
        if let Some(time) = &time {
            map.serialize_entry("time", time).map_err(write_error)?;
        }
    }
    map.end().map_err(write_error)?;
    Ok(Some((*first_position, body)))
}

/// Points every dist-tag whose version is hidden at the highest remaining
/// release (a valid semver version without prerelease) below it, or drops
/// the tag when there is none.
fn repair_dist_tags(tags: &mut Map<String, Value>, versions: &RawMap<'_>, hidden: &HashSet<&str>) {
    let releases: Vec<(semver::Version, &str)> = versions
        .keys()
        .filter(|v| !hidden.contains(v.as_str()))
        .filter_map(|v| Some((semver::Version::parse(v).ok()?, v.as_str())))
        .filter(|(parsed, _)| parsed.pre.is_empty())
        .collect();
    tags.retain(|_, target| {
        let Some(version) = target.as_str().filter(|v| hidden.contains(v)) else {
            return true;
        };
        let ceiling = semver::Version::parse(version).ok();
        let fallback = releases
            .iter()
            .filter(|(parsed, _)| ceiling.as_ref().is_none_or(|top| parsed < top))
            .max_by(|a, b| a.0.cmp(&b.0));
        match fallback {
            Some((_, version)) => {
                *target = Value::String((*version).to_string());
                true
            }
            None => false,
        }
    });
}

/// The `dist.tarball` of a version object.
fn tarball_url(version: &RawValue) -> Option<String> {
    let fields = parse_object(version.get()).ok()?;
    let dist = parse_map(fields.get("dist")?)?;
    match dist.get("tarball")? {
        Value::String(url) => Some(url.clone()),
        _ => None,
    }
}

/// The `dist` object with its tarball link leading through the proxy; none
/// when nothing changes.
fn rewrite_dist(dist: &RawValue, links: Links<'_>) -> Option<Map<String, Value>> {
    let mut dist = parse_map(dist)?;
    let url = dist.get("tarball")?.as_str()?;
    let rewritten = links.rewrite(url)?;
    dist.insert("tarball".into(), Value::String(rewritten));
    Some(dist)
}

/// Whether a version object declares an install-time lifecycle script.
fn has_install_script(fields: &RawMap<'_>) -> bool {
    fields
        .get("scripts")
        .and_then(|raw| parse_map(raw))
        .is_some_and(|scripts| {
            INSTALL_SCRIPTS
                .iter()
                .any(|name| scripts.get(*name).is_some_and(Value::is_string))
        })
}

fn parse_object(text: &str) -> serde_json::Result<RawMap<'_>> {
    serde_json::from_str(text)
}

/// A small JSON object parsed in full; none when the value is no object.
fn parse_map(raw: &RawValue) -> Option<Map<String, Value>> {
    serde_json::from_str(raw.get()).ok()
}

fn write_error(error: serde_json::Error) -> String {
    format!("could not write the document: {error}")
}

/// The `versions` map as written for the client: hidden versions left out,
/// each version rewritten as it is serialized.
struct Versions<'a, 'b> {
    versions: &'b RawMap<'a>,
    hidden: &'b HashSet<&'b str>,
    links: Links<'b>,
    form: Form,
}

impl Serialize for Versions<'_, '_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        for (key, raw) in self.versions {
            if self.hidden.contains(key.as_str()) {
                continue;
            }
            let version = Version {
                raw,
                links: self.links,
                form: self.form,
            };
            map.serialize_entry(key, &version)?;
        }
        map.end()
    }
}

/// One version object as written for the client. A version that is not an
/// object is passed on as it is.
struct Version<'a, 'b> {
    raw: &'a RawValue,
    links: Links<'b>,
    form: Form,
}

impl Serialize for Version<'_, '_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let Ok(fields) = parse_object(self.raw.get()) else {
            return self.raw.serialize(serializer);
        };
        let abbreviated = self.form == Form::Abbreviated;
        let mut map = serializer.serialize_map(None)?;
        for (key, raw) in &fields {
            if abbreviated && !ABBREVIATED_FIELDS.contains(&key.as_str()) {
                continue;
            }
            let dist = (key == "dist")
                .then(|| rewrite_dist(raw, self.links))
                .flatten();
            match dist {
                Some(dist) => map.serialize_entry(key, &dist)?,
                None => map.serialize_entry(key, raw)?,
            }
        }
        if abbreviated && !fields.contains_key("hasInstallScript") && has_install_script(&fields) {
            map.serialize_entry("hasInstallScript", &true)?;
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn links(base_url: &'static str) -> Links<'static> {
        Links {
            base_url,
            public_url: "http://proxy.example.org/api/v1/remote/npm",
        }
    }

    #[test]
    fn urls_under_the_base_url_are_relative() {
        let root = links("https://npm.example.org");
        assert_eq!(
            root.relative("https://npm.example.org/a/-/a-1.0.0.tgz"),
            Some("a/-/a-1.0.0.tgz")
        );
        assert_eq!(
            root.relative("HTTPS://Npm.Example.Org:443/a/-/a-1.0.0.tgz"),
            Some("a/-/a-1.0.0.tgz")
        );
        assert_eq!(
            root.relative("http://npm.example.org/a/-/a-1.0.0.tgz"),
            None
        );
        assert_eq!(root.relative("https://npm.example.org:8443/a.tgz"), None);
        assert_eq!(root.relative("https://npm.example.org.evil/a.tgz"), None);
        assert_eq!(root.relative("https://npm.example.org"), None);
        assert_eq!(root.relative("https://npm.example.org/"), None);
        assert_eq!(root.relative("/a/-/a-1.0.0.tgz"), None);
        assert_eq!(root.relative("not a url"), None);

        let nested = links("http://127.0.0.1:4873/registry/");
        assert_eq!(
            nested.relative("http://127.0.0.1:4873/registry/@s/a/-/a-1.tgz"),
            Some("@s/a/-/a-1.tgz")
        );
        assert_eq!(
            nested.relative("http://127.0.0.1:4873/registryx/a.tgz"),
            None
        );
        assert_eq!(nested.relative("http://127.0.0.1:4873/other/a.tgz"), None);
        assert_eq!(
            nested
                .rewrite("http://127.0.0.1:4873/registry/a/-/a-1.tgz")
                .as_deref(),
            Some("http://proxy.example.org/api/v1/remote/npm/a/-/a-1.tgz")
        );

        let none = links("");
        assert_eq!(none.relative("https://npm.example.org/a.tgz"), None);
    }

    #[test]
    fn proxied_paths_are_decoded_without_query() {
        let root = links("https://npm.example.org");
        assert_eq!(
            root.proxied_path("https://npm.example.org/@s%2fa/-/a-1.tgz?sig=1#x")
                .as_deref(),
            Some("@s/a/-/a-1.tgz")
        );
    }
}
