//! The paths below a terraform repository.
//!
//! A remote repository mirrors its upstream registry's paths
//! (`v1/providers/{ns}/{type}/…`), serves the archives those documents name
//! under `v1/providers/{ns}/{type}/{version}/files/{scheme}/{host}/{path}`
//! (the original URL, spelled as a path), and answers the network mirror
//! protocol under `mirror/{hostname}/{ns}/{type}/…`. A local repository is a
//! registry whose namespace is its own name: `{type}/versions`,
//! `{type}/{version}/download/{os}/{arch}`, `{type}/{version}/SHA256SUMS`
//! and `.sig`, and the uploaded zips at `{repo}/{type}/{file}`.

/// What a path addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target<'a> {
    /// A provider's version list (`…/{ns}/{type}/versions`).
    Versions { namespace: &'a str, kind: &'a str },
    /// A version's download document for one platform.
    Download {
        namespace: &'a str,
        kind: &'a str,
        version: &'a str,
        os: &'a str,
        arch: &'a str,
    },
    /// A file an upstream document names, proxied: its original URL.
    File { url: String },
    /// Network mirror: `mirror/{host}/{ns}/{type}/index.json`.
    MirrorIndex { namespace: &'a str, kind: &'a str },
    /// Network mirror: `mirror/{host}/{ns}/{type}/{version}.json`.
    MirrorVersion {
        namespace: &'a str,
        kind: &'a str,
        version: &'a str,
    },
    /// A local registry's `SHA256SUMS` (or its `.sig`) of one version.
    Sums {
        kind: &'a str,
        version: &'a str,
        signature: bool,
    },
    /// An uploaded provider archive of a local registry.
    Archive(ArchiveName<'a>),
}

/// `terraform-provider-{type}_{version}_{os}_{arch}.zip`, split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArchiveName<'a> {
    pub kind: &'a str,
    pub version: &'a str,
    pub os: &'a str,
    pub arch: &'a str,
}

/// Splits a provider archive's file name.
pub fn archive_name(file: &str) -> Option<ArchiveName<'_>> {
    let stem = file
        .strip_prefix("terraform-provider-")?
        .strip_suffix(".zip")?;
    let mut parts = stem.split('_');
    let name = ArchiveName {
        kind: parts.next()?,
        version: parts.next()?,
        os: parts.next()?,
        arch: parts.next()?,
    };
    let fine = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-.+".contains(&b))
    };
    (parts.next().is_none()
        && [name.kind, name.version, name.os, name.arch]
            .iter()
            .all(|s| fine(s)))
    .then_some(name)
}

/// A remote repository's path.
pub fn remote(path: &str) -> Option<Target<'_>> {
    if let Some(rest) = path.strip_prefix("mirror/") {
        let segments: Vec<&str> = rest.split('/').collect();
        return match segments[..] {
            [_host, namespace, kind, "index.json"] => Some(Target::MirrorIndex { namespace, kind }),
            [_host, namespace, kind, file] => Some(Target::MirrorVersion {
                namespace,
                kind,
                version: file.strip_suffix(".json").filter(|v| !v.is_empty())?,
            }),
            _ => None,
        };
    }
    let rest = path.strip_prefix("v1/providers/")?;
    let segments: Vec<&str> = rest.splitn(6, '/').collect();
    match segments[..] {
        [namespace, kind, "versions"] => Some(Target::Versions { namespace, kind }),
        [namespace, kind, version, "download", os, arch] if !arch.contains('/') => {
            Some(Target::Download {
                namespace,
                kind,
                version,
                os,
                arch,
            })
        }
        [_, _, _, "files", scheme @ ("http" | "https"), rest] => Some(Target::File {
            url: format!("{scheme}://{rest}"),
        }),
        _ => None,
    }
}

/// A local repository's path.
pub fn local<'a>(repo: &str, path: &'a str) -> Option<Target<'a>> {
    let segments: Vec<&str> = path.split('/').collect();
    match segments[..] {
        [kind, "versions"] => Some(Target::Versions {
            namespace: "",
            kind,
        }),
        [kind, version, "download", os, arch] => Some(Target::Download {
            namespace: "",
            kind,
            version,
            os,
            arch,
        }),
        [kind, version, "SHA256SUMS"] => Some(Target::Sums {
            kind,
            version,
            signature: false,
        }),
        [kind, version, "SHA256SUMS.sig"] => Some(Target::Sums {
            kind,
            version,
            signature: true,
        }),
        [namespace, kind, file] if namespace == repo => archive_name(file)
            .filter(|name| name.kind == kind)
            .map(Target::Archive),
        _ => None,
    }
}

/// The path below the repository under which the file at `url` is
/// proxied for a provider version.
pub fn file_path(namespace: &str, kind: &str, version: &str, url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let rest = rest.split(['?', '#']).next()?;
    matches!(scheme, "http" | "https")
        .then(|| format!("v1/providers/{namespace}/{kind}/{version}/files/{scheme}/{rest}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_names() {
        assert_eq!(
            archive_name("terraform-provider-widget_1.2.0-beta.1_linux_amd64.zip"),
            Some(ArchiveName {
                kind: "widget",
                version: "1.2.0-beta.1",
                os: "linux",
                arch: "amd64"
            })
        );
        for bad in [
            "terraform-provider-widget_1.0.0_linux.zip",
            "terraform-provider-widget_1.0.0_linux_amd64_x.zip",
            "widget_1.0.0_linux_amd64.zip",
            "terraform-provider-widget_1.0.0_linux_amd64.tar.gz",
            "terraform-provider-_1.0.0_linux_amd64.zip",
        ] {
            assert_eq!(archive_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn remote_paths() {
        assert_eq!(
            remote("v1/providers/acme/widget/versions"),
            Some(Target::Versions {
                namespace: "acme",
                kind: "widget"
            })
        );
        assert_eq!(
            remote("v1/providers/acme/widget/1.0.0/download/linux/amd64"),
            Some(Target::Download {
                namespace: "acme",
                kind: "widget",
                version: "1.0.0",
                os: "linux",
                arch: "amd64"
            })
        );
        assert_eq!(
            remote("v1/providers/acme/widget/1.0.0/files/https/releases.example.org/w/x.zip"),
            Some(Target::File {
                url: "https://releases.example.org/w/x.zip".into()
            })
        );
        assert_eq!(
            remote("mirror/registry.example.org/acme/widget/index.json"),
            Some(Target::MirrorIndex {
                namespace: "acme",
                kind: "widget"
            })
        );
        assert_eq!(
            remote("mirror/registry.example.org/acme/widget/1.0.0.json"),
            Some(Target::MirrorVersion {
                namespace: "acme",
                kind: "widget",
                version: "1.0.0"
            })
        );
        assert_eq!(remote("v1/providers/acme/widget"), None);
        assert_eq!(remote("v1/providers/acme/widget/1.0.0/files/ftp/x/y"), None);
        assert_eq!(
            file_path(
                "acme",
                "widget",
                "1.0.0",
                "https://releases.example.org/w/x.zip?sig=1"
            ),
            Some("v1/providers/acme/widget/1.0.0/files/https/releases.example.org/w/x.zip".into())
        );
    }

    #[test]
    fn local_paths() {
        assert!(matches!(
            local("tf", "widget/versions"),
            Some(Target::Versions { .. })
        ));
        assert!(matches!(
            local("tf", "widget/1.0.0/download/linux/amd64"),
            Some(Target::Download { .. })
        ));
        assert_eq!(
            local("tf", "widget/1.0.0/SHA256SUMS.sig"),
            Some(Target::Sums {
                kind: "widget",
                version: "1.0.0",
                signature: true
            })
        );
        assert!(matches!(
            local(
                "tf",
                "tf/widget/terraform-provider-widget_1.0.0_linux_amd64.zip"
            ),
            Some(Target::Archive(_))
        ));
        assert_eq!(
            local(
                "tf",
                "other/widget/terraform-provider-widget_1.0.0_linux_amd64.zip"
            ),
            None
        );
        assert_eq!(
            local(
                "tf",
                "tf/gadget/terraform-provider-widget_1.0.0_linux_amd64.zip"
            ),
            None
        );
    }
}
