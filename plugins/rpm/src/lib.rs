//! artifactapi format plugin for RPM (yum/dnf) repositories.
//!
//! `repodata/repomd.xml` (and its signature and key) names the current
//! metadata files and changes with every publish, so it is mutable. createrepo
//! gives metadata files unique names that start with their checksum
//! (`repodata/<sha256>-primary.xml.gz`); those are content-addressed and
//! immutable, while plain metadata names are mutable. Packages (`.rpm`,
//! `.drpm`) never change; anything else (`.treeinfo`, `mirrorlist`,
//! `RPM-GPG-KEY-*`, ...) is mutable so it gets revalidated.

use artifactapi_plugin_sdk::prelude::*;

/// The RPM format plugin.
pub struct RpmPlugin;

artifactapi_plugin_sdk::export!(RpmPlugin);

/// The shortest checksum prefix taken as a content address (MD5's length).
const MIN_CHECKSUM_HEX: usize = 32;

/// The verdict on a path below an RPM repository.
pub fn classify_path(path: &str) -> Classification {
    let name = file_name(path);
    // repomd.xml and its signature carry no checksum prefix, so they are
    // mutable like every other plainly named metadata file.
    let immutable = if in_repodata(path) {
        has_checksum_prefix(name)
    } else {
        name.ends_with(".rpm") || name.ends_with(".drpm")
    };
    let mutability = if immutable {
        Mutability::Immutable
    } else {
        Mutability::Mutable
    };
    Classification {
        mutability,
        rewrite: false,
        cache_key: None,
        access_name: None,
        content_type: content_type(name).map(String::from),
        generated: false,
    }
}

/// Whether the file sits directly in a `repodata/` directory.
fn in_repodata(path: &str) -> bool {
    let mut segments = path.rsplit('/');
    segments.next();
    segments.next() == Some("repodata")
}

/// Whether `name` is `<at least 32 hex digits>-<rest>`, createrepo's unique
/// metadata file name.
fn has_checksum_prefix(name: &str) -> bool {
    name.split_once('-').is_some_and(|(prefix, _)| {
        prefix.len() >= MIN_CHECKSUM_HEX && prefix.bytes().all(|b| b.is_ascii_hexdigit())
    })
}

/// The media type of a file name's last extension, when the format knows one.
fn content_type(name: &str) -> Option<&'static str> {
    let (_, extension) = name.rsplit_once('.')?;
    Some(match extension {
        "xml" => "application/xml",
        "gz" => "application/gzip",
        "rpm" => "application/x-rpm",
        "zst" => "application/zstd",
        "xz" => "application/x-xz",
        "bz2" => "application/x-bzip2",
        "asc" => "application/pgp-signature",
        _ => return None,
    })
}

impl Format for RpmPlugin {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "rpm".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            package_type: "rpm".into(),
            description: "RPM (yum/dnf) repositories: repomd.xml is revalidated, checksum-named metadata and packages are cached for good".into(),
            mutable_patterns: vec!["(^|/)repodata/repomd\\.xml(\\.asc|\\.key)?$".into()],
            immutable_patterns: vec![
                "(^|/)repodata/[0-9a-fA-F]{32,}-[^/]+$".into(),
                "\\.d?rpm$".into(),
            ],
            environment: Vec::new(),
            well_known: Vec::new(),
        }
    }

    fn classify(_repo: RepoContext, request: RequestInfo) -> Result<Classification, PluginError> {
        Ok(classify_path(&request.path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA256: &str = "3f1c9a7d2b6e4f8a0c5d1e9b7a3f6c2d8e4b0a9f1c7d3e5b2a8f6c4d0e9b1ae9";

    fn mutability(path: &str) -> Mutability {
        classify_path(path).mutability
    }

    fn content(path: &str) -> Option<String> {
        classify_path(path).content_type
    }

    #[test]
    fn repomd_and_its_signature_are_mutable() {
        let base = "releases/40/Everything/x86_64/os/repodata/";
        for name in ["repomd.xml", "repomd.xml.asc", "repomd.xml.key"] {
            let c = classify_path(&format!("{base}{name}"));
            assert_eq!(c.mutability, Mutability::Mutable, "{name}");
            assert!(!c.rewrite);
            assert_eq!(c.cache_key, None);
            assert_eq!(c.access_name, None);
        }
        assert_eq!(mutability("repodata/repomd.xml"), Mutability::Mutable);
        assert_eq!(
            content("repodata/repomd.xml").as_deref(),
            Some("application/xml")
        );
    }

    #[test]
    fn checksum_named_metadata_is_immutable() {
        for name in [
            "primary.xml.gz",
            "filelists.xml.zst",
            "other.sqlite.bz2",
            "updateinfo.xml.xz",
            "comps-Everything.x86_64.xml",
        ] {
            let path = format!("os/repodata/{SHA256}-{name}");
            assert_eq!(mutability(&path), Mutability::Immutable, "{path}");
        }
        // An MD5-length prefix is enough.
        let md5 = &SHA256[..32];
        assert_eq!(
            mutability(&format!("repodata/{md5}-primary.xml.gz")),
            Mutability::Immutable
        );
    }

    #[test]
    fn other_metadata_is_mutable() {
        assert_eq!(
            mutability("os/repodata/primary.xml.gz"),
            Mutability::Mutable
        );
        assert_eq!(mutability("os/repodata/comps.xml"), Mutability::Mutable);
        // Too short to be a checksum.
        assert_eq!(
            mutability("os/repodata/deadbeef-comps.xml"),
            Mutability::Mutable
        );
        // Not hex.
        let not_hex = format!("os/repodata/{}-primary.xml.gz", "z".repeat(64));
        assert_eq!(mutability(&not_hex), Mutability::Mutable);
        // A checksum-named file outside repodata/ is not metadata.
        assert_eq!(
            mutability(&format!("os/{SHA256}-primary.xml.gz")),
            Mutability::Mutable
        );
        // Below a subdirectory of repodata/ is not createrepo's layout either.
        assert_eq!(
            mutability(&format!("os/repodata/x/{SHA256}-primary.xml.gz")),
            Mutability::Mutable
        );
    }

    #[test]
    fn packages_are_immutable() {
        let rpm = "os/Packages/b/bash-5.2.26-3.fc40.x86_64.rpm";
        assert_eq!(mutability(rpm), Mutability::Immutable);
        assert_eq!(content(rpm).as_deref(), Some("application/x-rpm"));
        let drpm = "os/drpms/bash-5.2.26-1.fc40_5.2.26-3.fc40.x86_64.drpm";
        assert_eq!(mutability(drpm), Mutability::Immutable);
        assert_eq!(
            mutability("Packages/libstdc++-14.1.1-5.fc40.src.rpm"),
            Mutability::Immutable
        );
    }

    #[test]
    fn anything_else_is_mutable() {
        for path in [
            "releases/40/Everything/x86_64/os/.treeinfo",
            "mirrorlist",
            "RPM-GPG-KEY-fedora-40-primary",
            "os/images/install.img",
            "",
        ] {
            assert_eq!(mutability(path), Mutability::Mutable, "{path}");
        }
    }

    #[test]
    fn content_types_follow_the_extension() {
        let cases = [
            ("repodata/comps.xml", Some("application/xml")),
            ("repodata/primary.xml.gz", Some("application/gzip")),
            ("repodata/primary.xml.zst", Some("application/zstd")),
            ("repodata/primary.sqlite.xz", Some("application/x-xz")),
            ("repodata/primary.sqlite.bz2", Some("application/x-bzip2")),
            ("repodata/repomd.xml.asc", Some("application/pgp-signature")),
            ("repodata/repomd.xml.key", None),
            (".treeinfo", None),
            ("mirrorlist", None),
        ];
        for (path, want) in cases {
            assert_eq!(content(path).as_deref(), want, "{path}");
        }
    }

    #[test]
    fn describe_names_the_package_type() {
        let info = RpmPlugin::describe();
        assert_eq!(info.name, "rpm");
        assert_eq!(info.package_type, "rpm");
        assert_eq!(info.version, env!("CARGO_PKG_VERSION"));
    }
}
