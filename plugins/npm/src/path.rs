//! The paths of an npm registry and how they map to upstream URLs.

use std::fmt::Write as _;

/// What a path below an npm repository names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NpmPath {
    /// A package document (a "packument"): `name` or `@scope/name`
    /// (`@scope%2fname` on the wire).
    Package {
        /// The package name; scoped names are `@scope/name`.
        name: String,
    },
    /// The document of one version or dist-tag: `name/1.0.0`,
    /// `@scope/name/latest`.
    Version {
        /// The package name.
        name: String,
        /// The version or dist-tag.
        version: String,
    },
    /// A package tarball: `name/-/name-1.0.0.tgz`,
    /// `@scope/name/-/name-1.0.0.tgz`.
    Tarball {
        /// The package name.
        name: String,
        /// The file name below `-/`.
        file: String,
    },
    /// Anything else: the registry root and its `-/` endpoints (`-/ping`,
    /// `-/v1/search`, ...), passed through as they are.
    Endpoint,
}

impl NpmPath {
    /// Parses a percent-decoded request path (with or without a leading
    /// slash). A scoped name still written `@scope%2fname` is understood too.
    pub fn parse(path: &str) -> NpmPath {
        let path = path.trim_start_matches('/');
        if path.is_empty() || path == "-" || path.starts_with("-/") {
            return NpmPath::Endpoint;
        }
        let (name, rest) = if path.starts_with('@') {
            let first = path.split('/').next().unwrap_or(path);
            let (scope, rest) = match find_encoded_slash(first) {
                Some(at) => (&path[..at], Some(&path[at + 3..])),
                None => match path.split_once('/') {
                    Some((scope, rest)) => (scope, Some(rest)),
                    None => (path, None),
                },
            };
            let Some(rest) = rest else {
                return NpmPath::Endpoint;
            };
            let (bare, rest) = split_first(rest);
            if scope.len() < 2 || bare.is_empty() {
                return NpmPath::Endpoint;
            }
            (format!("{scope}/{bare}"), rest)
        } else {
            let (bare, rest) = split_first(path);
            (bare.to_string(), rest)
        };
        let Some(rest) = rest else {
            return NpmPath::Package { name };
        };
        match rest.split_once('/') {
            None if !rest.is_empty() => NpmPath::Version {
                name,
                version: rest.to_string(),
            },
            Some(("-", file)) if file.ends_with(".tgz") && !file.contains('/') => {
                NpmPath::Tarball {
                    name,
                    file: file.to_string(),
                }
            }
            _ => NpmPath::Endpoint,
        }
    }

    /// The package name, when the path names a package.
    pub fn package_name(&self) -> Option<&str> {
        match self {
            NpmPath::Package { name }
            | NpmPath::Version { name, .. }
            | NpmPath::Tarball { name, .. } => Some(name),
            NpmPath::Endpoint => None,
        }
    }

    /// The canonical path below the repository: `@scope/name`,
    /// `name/1.0.0`, `name/-/name-1.0.0.tgz`; none for endpoints.
    pub fn canonical(&self) -> Option<String> {
        match self {
            NpmPath::Package { name } => Some(name.clone()),
            NpmPath::Version { name, version } => Some(format!("{name}/{version}")),
            NpmPath::Tarball { name, file } => Some(format!("{name}/-/{file}")),
            NpmPath::Endpoint => None,
        }
    }

    /// The path to request from an npm registry, percent-encoded: scoped
    /// package names are sent as `@scope%2fname`, the way registries expect
    /// document requests; tarballs keep their `/`.
    pub fn upstream_path(&self) -> Option<String> {
        let mut out = String::new();
        match self {
            NpmPath::Package { name } => encode_name(name, &mut out),
            NpmPath::Version { name, version } => {
                encode_name(name, &mut out);
                out.push('/');
                encode_segment(version, &mut out);
            }
            NpmPath::Tarball { name, file } => {
                for (i, part) in name.split('/').enumerate() {
                    if i > 0 {
                        out.push('/');
                    }
                    encode_segment(part, &mut out);
                }
                out.push_str("/-/");
                encode_segment(file, &mut out);
            }
            NpmPath::Endpoint => return None,
        }
        Some(out)
    }
}

/// The first segment of `path` and what follows its `/`, if anything.
fn split_first(path: &str) -> (&str, Option<&str>) {
    match path.split_once('/') {
        Some((first, rest)) => (first, Some(rest)),
        None => (path, None),
    }
}

/// The byte offset of a `%2f` (any case) in `segment`.
fn find_encoded_slash(segment: &str) -> Option<usize> {
    segment
        .as_bytes()
        .windows(3)
        .position(|w| w[0] == b'%' && w[1] == b'2' && (w[2] == b'f' || w[2] == b'F'))
}

/// Appends a package name, encoding the scope's `/` as `%2f`.
fn encode_name(name: &str, out: &mut String) {
    match name.split_once('/') {
        Some((scope, bare)) => {
            encode_segment(scope, out);
            out.push_str("%2f");
            encode_segment(bare, out);
        }
        None => encode_segment(name, out),
    }
}

/// Appends one path segment, percent-encoding every byte that may not stand
/// literally in it (RFC 3986 `pchar`).
pub fn encode_segment(segment: &str, out: &mut String) {
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@".contains(&byte) {
            out.push(char::from(byte));
        } else {
            // Writing to a String cannot fail.
            let _ = write!(out, "%{byte:02X}");
        }
    }
}

/// Decodes `%XX` escapes; invalid escapes and non-UTF-8 results are kept
/// as written.
pub fn percent_decode(text: &str) -> String {
    if !text.contains('%') {
        return text.to_string();
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(hi), Some(lo)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((hi * 16 + lo) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap_or_else(|_| text.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn package(name: &str) -> NpmPath {
        NpmPath::Package { name: name.into() }
    }

    #[test]
    fn package_documents() {
        assert_eq!(NpmPath::parse("lodash"), package("lodash"));
        assert_eq!(NpmPath::parse("/lodash"), package("lodash"));
        assert_eq!(NpmPath::parse("@demo/util"), package("@demo/util"));
        assert_eq!(NpmPath::parse("@demo%2futil"), package("@demo/util"));
        assert_eq!(NpmPath::parse("@demo%2Futil"), package("@demo/util"));
    }

    #[test]
    fn version_documents() {
        assert_eq!(
            NpmPath::parse("lodash/4.17.21"),
            NpmPath::Version {
                name: "lodash".into(),
                version: "4.17.21".into()
            }
        );
        assert_eq!(
            NpmPath::parse("@demo%2futil/latest"),
            NpmPath::Version {
                name: "@demo/util".into(),
                version: "latest".into()
            }
        );
    }

    #[test]
    fn tarballs() {
        assert_eq!(
            NpmPath::parse("lodash/-/lodash-4.17.21.tgz"),
            NpmPath::Tarball {
                name: "lodash".into(),
                file: "lodash-4.17.21.tgz".into()
            }
        );
        let scoped = NpmPath::Tarball {
            name: "@demo/util".into(),
            file: "util-1.0.0.tgz".into(),
        };
        assert_eq!(NpmPath::parse("@demo/util/-/util-1.0.0.tgz"), scoped);
        assert_eq!(NpmPath::parse("@demo%2futil/-/util-1.0.0.tgz"), scoped);
    }

    #[test]
    fn endpoints() {
        for path in [
            "",
            "/",
            "-",
            "-/ping",
            "-/v1/search",
            "-/package/lodash/dist-tags",
            "@demo",
            "@/x",
            "@demo/",
            "lodash/",
            "lodash/-/lodash-1.0.0.zip",
            "lodash/-/a/b.tgz",
            "lodash/1.0.0/extra",
        ] {
            assert_eq!(NpmPath::parse(path), NpmPath::Endpoint, "{path:?}");
        }
    }

    #[test]
    fn upstream_paths() {
        let path = |p: &str| NpmPath::parse(p).upstream_path();
        assert_eq!(path("lodash").as_deref(), Some("lodash"));
        assert_eq!(path("@demo/util").as_deref(), Some("@demo%2futil"));
        assert_eq!(
            path("@demo/util/1.0.0").as_deref(),
            Some("@demo%2futil/1.0.0")
        );
        assert_eq!(
            path("@demo/util/-/util-1.0.0.tgz").as_deref(),
            Some("@demo/util/-/util-1.0.0.tgz")
        );
        assert_eq!(path("odd name").as_deref(), Some("odd%20name"));
        assert_eq!(path("-/ping"), None);
    }

    #[test]
    fn canonical_paths_and_names() {
        let tarball = NpmPath::parse("@demo%2futil/-/util-1.0.0.tgz");
        assert_eq!(
            tarball.canonical().as_deref(),
            Some("@demo/util/-/util-1.0.0.tgz")
        );
        assert_eq!(tarball.package_name(), Some("@demo/util"));
        assert_eq!(NpmPath::Endpoint.canonical(), None);
        assert_eq!(NpmPath::Endpoint.package_name(), None);
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(
            percent_decode("@demo%2futil/-/a%20b.tgz"),
            "@demo/util/-/a b.tgz"
        );
        assert_eq!(percent_decode("plain"), "plain");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert_eq!(percent_decode("%C3%A9"), "é");
        assert_eq!(percent_decode("%FF"), "%FF");
    }
}
