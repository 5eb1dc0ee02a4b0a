//! Unit tests of the plugin's exports, called natively.

use artifactapi_plugin_sdk::types::RepoKind;
use artifactapi_plugin_sdk::Format as _;

use super::*;

const BASE: &str = "https://registry.example.org";
const SHA256: &str = "sha256:3f1c9a7d2b6e4f8a0c5d1e9b7a3f6c2d8e4b0a9f1c7d3e5b2a8f6c4d0e9b1ae9";

fn sha512() -> String {
    format!("sha512:{}", "0123456789abcdef".repeat(8))
}

fn repo(settings: &str) -> RepoContext {
    RepoContext {
        name: "docker".into(),
        kind: RepoKind::Remote,
        base_url: BASE.into(),
        public_url: "http://proxy.example.org/v2/docker".into(),
        settings: settings.into(),
    }
}

fn request(path: &str, query: &str) -> RequestInfo {
    RequestInfo {
        method: "GET".into(),
        path: path.into(),
        query: query.into(),
        headers: Vec::new(),
    }
}

fn classify(path: &str, query: &str) -> Result<Classification, PluginError> {
    DockerPlugin::classify(repo("{}"), request(path, query))
}

fn upstream(settings: &str, path: &str, query: &str) -> Result<UpstreamRequest, PluginError> {
    DockerPlugin::prepare_upstream(repo(settings), request(path, query))
}

fn accept(value: &str) -> Vec<Header> {
    vec![Header {
        name: "accept".into(),
        value: value.into(),
    }]
}

fn assert_not_found(path: &str) {
    match classify(path, "") {
        Err(PluginError::NotFound(message)) => {
            assert!(message.starts_with("docker: "), "{path}: {message}")
        }
        other => panic!("{path}: expected NotFound, got {other:?}"),
    }
    assert!(
        matches!(upstream("{}", path, ""), Err(PluginError::NotFound(_))),
        "{path}"
    );
}

#[test]
fn manifest_by_tag_is_mutable_per_image() {
    let c = classify("library/nginx/manifests/latest", "").unwrap();
    assert_eq!(
        c,
        Classification {
            mutability: Mutability::Mutable,
            rewrite: false,
            cache_key: Some("library/nginx/manifests/latest".into()),
            access_name: Some("library/nginx".into()),
            content_type: None,
            generated: false,
        }
    );
    for (path, image, tag) in [
        ("nginx/manifests/1.27", "nginx", "1.27"),
        ("myorg/sub/img/manifests/v1", "myorg/sub/img", "v1"),
        ("a/b/c/d/manifests/_x-Y.z", "a/b/c/d", "_x-Y.z"),
        // Kind words are valid name components; the last segments decide.
        (
            "manifests/blobs/tags/manifests/list",
            "manifests/blobs/tags",
            "list",
        ),
    ] {
        let c = classify(path, "").unwrap();
        assert_eq!(c.mutability, Mutability::Mutable, "{path}");
        assert_eq!(
            c.cache_key,
            Some(format!("{image}/manifests/{tag}")),
            "{path}"
        );
        assert_eq!(c.access_name.as_deref(), Some(image), "{path}");
    }
    let longest = format!("img/manifests/{}", "a".repeat(128));
    assert!(classify(&longest, "").is_ok());
}

#[test]
fn manifest_by_digest_is_immutable_and_shared_by_images() {
    let c = classify(&format!("library/nginx/manifests/{SHA256}"), "").unwrap();
    assert_eq!(
        c,
        Classification {
            mutability: Mutability::Immutable,
            rewrite: false,
            cache_key: Some(format!("manifests/{SHA256}")),
            access_name: Some("library/nginx".into()),
            content_type: None,
            generated: false,
        }
    );
    let other = classify(&format!("myorg/sub/img/manifests/{SHA256}"), "").unwrap();
    assert_eq!(other.cache_key, c.cache_key);
    assert_eq!(other.access_name.as_deref(), Some("myorg/sub/img"));
    let c = classify(&format!("img/manifests/{}", sha512()), "").unwrap();
    assert_eq!(c.mutability, Mutability::Immutable);
    assert_eq!(c.cache_key, Some(format!("manifests/{}", sha512())));
}

#[test]
fn blob_is_immutable_and_shared_by_images() {
    let c = classify(&format!("library/nginx/blobs/{SHA256}"), "").unwrap();
    assert_eq!(
        c,
        Classification {
            mutability: Mutability::Immutable,
            rewrite: false,
            cache_key: Some(format!("blobs/{SHA256}")),
            access_name: Some("library/nginx".into()),
            content_type: Some("application/octet-stream".into()),
            generated: false,
        }
    );
    let other = classify(&format!("a/b/c/blobs/{SHA256}"), "").unwrap();
    assert_eq!(other.cache_key, c.cache_key);
    assert_eq!(other.access_name.as_deref(), Some("a/b/c"));
    let c = classify(&format!("img/blobs/{}", sha512()), "").unwrap();
    assert_eq!(c.cache_key, Some(format!("blobs/{}", sha512())));
    // Another algorithm of the general grammar is accepted as it is.
    let c = classify(
        "img/blobs/multihash+base58:QmRZxt2b1FVZPNqd8hsiykDL3TdBDeTSPX9Kv46HmX4Gx8",
        "",
    )
    .unwrap();
    assert_eq!(
        c.cache_key.as_deref(),
        Some("blobs/multihash+base58:QmRZxt2b1FVZPNqd8hsiykDL3TdBDeTSPX9Kv46HmX4Gx8")
    );
}

#[test]
fn tag_list_is_mutable_and_keyed_by_query() {
    let c = classify("library/nginx/tags/list", "").unwrap();
    assert_eq!(
        c,
        Classification {
            mutability: Mutability::Mutable,
            rewrite: false,
            cache_key: Some("library/nginx/tags/list".into()),
            access_name: Some("library/nginx".into()),
            content_type: Some("application/json".into()),
            generated: false,
        }
    );
    let c = classify("library/nginx/tags/list", "n=10&last=x").unwrap();
    assert_eq!(
        c.cache_key.as_deref(),
        Some("library/nginx/tags/list?n=10&last=x")
    );
    let c = classify("myorg/sub/img/tags/list", "n=5").unwrap();
    assert_eq!(c.cache_key.as_deref(), Some("myorg/sub/img/tags/list?n=5"));
    assert_eq!(c.access_name.as_deref(), Some("myorg/sub/img"));
}

#[test]
fn invalid_image_names_are_not_found() {
    for image in [
        "Library/nginx",
        "nginx_",
        "-nginx",
        "ngi..nx",
        "ngi___nx",
        "ngi._nx",
        "my org/img",
        "img/",
        "/img",
        "a//b",
        "_catalog",
        "imäge",
    ] {
        assert_not_found(&format!("{image}/manifests/latest"));
        assert_not_found(&format!("{image}/blobs/{SHA256}"));
        assert_not_found(&format!("{image}/tags/list"));
    }
    // Separators the grammar allows.
    for image in ["my.org/img", "a_b", "a__b", "a-b", "a---b", "0/9"] {
        assert!(
            classify(&format!("{image}/tags/list"), "").is_ok(),
            "{image}"
        );
    }
}

#[test]
fn a_path_without_an_image_is_not_found() {
    assert_not_found("manifests/latest");
    assert_not_found(&format!("blobs/{SHA256}"));
    assert_not_found("tags/list");
    assert_not_found("");
    assert_not_found("nginx");
}

#[test]
fn invalid_tags_are_not_found() {
    for tag in [
        "",
        ".hidden",
        "-rc",
        "a/b",
        "tag+meta",
        "spaced tag",
        &"a".repeat(129),
    ] {
        assert_not_found(&format!("library/nginx/manifests/{tag}"));
    }
}

#[test]
fn invalid_digests_are_not_found() {
    let hex64 = &SHA256["sha256:".len()..];
    for digest in [
        format!("sha256:{}", &hex64[1..]),
        format!("sha256:{hex64}0"),
        format!("sha256:{}", hex64.to_uppercase()),
        format!("sha256:{}g", &hex64[1..]),
        format!("sha512:{hex64}"),
        format!("SHA256:{hex64}"),
        format!(":{hex64}"),
        "sha256:".into(),
        "sha256".into(),
        format!("sha256::{hex64}"),
        format!("sha+256+:{hex64}"),
        "md5:abc/def".into(),
        "md5:ab.c".into(),
    ] {
        assert_not_found(&format!("library/nginx/blobs/{digest}"));
        if digest.contains(':') {
            assert_not_found(&format!("library/nginx/manifests/{digest}"));
        }
    }
}

#[test]
fn other_endpoints_are_not_found() {
    for path in [
        "_catalog".to_string(),
        "library/nginx/blobs/uploads/".into(),
        "library/nginx/blobs/uploads".into(),
        "library/nginx/blobs/uploads/3f1c9a7d-2b6e".into(),
        format!("library/nginx/referrers/{SHA256}"),
        "library/nginx/tags/list/".into(),
        "library/nginx/tags".into(),
        "library/nginx/manifests/".into(),
        "library/nginx/manifests".into(),
        "library/nginx".into(),
        "library/nginx/layers/latest".into(),
    ] {
        assert_not_found(&path);
    }
}

#[test]
fn manifests_ask_upstream_for_every_manifest_type() {
    let want = accept(
        "application/vnd.oci.image.index.v1+json, \
         application/vnd.docker.distribution.manifest.list.v2+json, \
         application/vnd.oci.image.manifest.v1+json, \
         application/vnd.docker.distribution.manifest.v2+json",
    );
    assert_eq!(
        upstream("{}", "library/nginx/manifests/latest", "").unwrap(),
        UpstreamRequest {
            url: format!("{BASE}/v2/library/nginx/manifests/latest"),
            headers: want.clone(),
        }
    );
    assert_eq!(
        upstream("{}", &format!("myorg/sub/img/manifests/{SHA256}"), "").unwrap(),
        UpstreamRequest {
            url: format!("{BASE}/v2/myorg/sub/img/manifests/{SHA256}"),
            headers: want,
        }
    );
}

#[test]
fn blobs_go_upstream_without_headers() {
    assert_eq!(
        upstream("{}", &format!("library/nginx/blobs/{}", sha512()), "").unwrap(),
        UpstreamRequest {
            url: format!("{BASE}/v2/library/nginx/blobs/{}", sha512()),
            headers: Vec::new(),
        }
    );
}

#[test]
fn tag_lists_keep_their_query_upstream() {
    assert_eq!(
        upstream("{}", "library/nginx/tags/list", "n=10&last=x").unwrap(),
        UpstreamRequest {
            url: format!("{BASE}/v2/library/nginx/tags/list?n=10&last=x"),
            headers: accept("application/json"),
        }
    );
    assert_eq!(
        upstream("{}", "library/nginx/tags/list", "").unwrap().url,
        format!("{BASE}/v2/library/nginx/tags/list")
    );
    // Only the tag list takes a query.
    assert_eq!(
        upstream("{}", "nginx/manifests/latest", "x=1").unwrap().url,
        format!("{BASE}/v2/nginx/manifests/latest")
    );
}

#[test]
fn upstream_url_joins_a_base_url_with_a_path() {
    let mut with_path = repo("{}");
    with_path.base_url = "https://registry.example.org/mirror/".into();
    assert_eq!(
        DockerPlugin::prepare_upstream(with_path, request("nginx/tags/list", ""))
            .unwrap()
            .url,
        "https://registry.example.org/mirror/v2/nginx/tags/list"
    );
    let mut local = repo("{}");
    local.base_url = String::new();
    assert!(matches!(
        DockerPlugin::prepare_upstream(local, request("nginx/tags/list", "")),
        Err(PluginError::InvalidSettings(_))
    ));
}

#[test]
fn library_prefix_applies_upstream_to_one_component_names_only() {
    let on = r#"{"library_prefix": true}"#;
    assert_eq!(
        upstream(on, "nginx/manifests/latest", "").unwrap().url,
        format!("{BASE}/v2/library/nginx/manifests/latest")
    );
    assert_eq!(
        upstream(on, &format!("nginx/blobs/{SHA256}"), "")
            .unwrap()
            .url,
        format!("{BASE}/v2/library/nginx/blobs/{SHA256}")
    );
    assert_eq!(
        upstream(on, "nginx/tags/list", "n=1").unwrap().url,
        format!("{BASE}/v2/library/nginx/tags/list?n=1")
    );
    assert_eq!(
        upstream(on, "myorg/img/manifests/v1", "").unwrap().url,
        format!("{BASE}/v2/myorg/img/manifests/v1")
    );
    assert_eq!(
        upstream(on, "library/nginx/manifests/v1", "").unwrap().url,
        format!("{BASE}/v2/library/nginx/manifests/v1")
    );
    let off = r#"{"library_prefix": false}"#;
    assert_eq!(
        upstream(off, "nginx/manifests/latest", "").unwrap().url,
        format!("{BASE}/v2/nginx/manifests/latest")
    );
    // Classification keeps the name the client sent.
    let c = DockerPlugin::classify(repo(on), request("nginx/manifests/latest", "")).unwrap();
    assert_eq!(c.cache_key.as_deref(), Some("nginx/manifests/latest"));
    assert_eq!(c.access_name.as_deref(), Some("nginx"));
}

#[test]
fn reads_settings() {
    assert_eq!(Settings::parse("").unwrap(), Settings::default());
    assert_eq!(Settings::parse("{}").unwrap(), Settings::default());
    assert_eq!(
        Settings::parse(r#"{"library_prefix": true}"#).unwrap(),
        Settings {
            library_prefix: true
        }
    );
    for bad in [
        r#"{"library_prefix": "yes"}"#,
        r#"{"library_prefix": null}"#,
        r#"{"libraryprefix": true}"#,
        r#"{"library_prefix": true, "mirror": "x"}"#,
        "[]",
        "{",
    ] {
        assert!(
            matches!(Settings::parse(bad), Err(PluginError::InvalidSettings(_))),
            "{bad}"
        );
        assert!(
            matches!(
                DockerPlugin::validate_settings(repo(bad)),
                Err(PluginError::InvalidSettings(_))
            ),
            "{bad}"
        );
        assert!(
            matches!(
                upstream(bad, "nginx/tags/list", ""),
                Err(PluginError::InvalidSettings(_))
            ),
            "{bad}"
        );
    }
}

#[test]
fn describe_names_the_package_type() {
    let info = DockerPlugin::describe();
    assert_eq!(info.name, "docker");
    assert_eq!(info.package_type, "docker");
    assert_eq!(info.version, env!("CARGO_PKG_VERSION"));
    assert!(!info.description.is_empty());
    let matches = |patterns: &[String], path: &str| {
        patterns
            .iter()
            .any(|p| regex::Regex::new(p).unwrap().is_match(path))
    };
    for path in [
        "library/nginx/manifests/latest".to_string(),
        "myorg/sub/img/tags/list".into(),
    ] {
        assert!(matches(&info.mutable_patterns, &path), "{path}");
        assert!(!matches(&info.immutable_patterns, &path), "{path}");
    }
    for path in [
        format!("library/nginx/manifests/{SHA256}"),
        format!("myorg/sub/img/blobs/{}", sha512()),
    ] {
        assert!(matches(&info.immutable_patterns, &path), "{path}");
        assert!(!matches(&info.mutable_patterns, &path), "{path}");
    }
}

#[test]
fn index_operations_are_unsupported() {
    let path = "library/nginx/tags/list";
    let document = Document {
        content_type: "application/json".into(),
        body: b"{}".to_vec(),
    };
    assert!(matches!(
        DockerPlugin::rewrite_index(
            repo("{}"),
            request(path, ""),
            document.clone(),
            IndexOptions {
                hide_published_after: None
            }
        ),
        Err(PluginError::Unsupported(_))
    ));
    let mut virtual_repo = repo("{}");
    virtual_repo.kind = RepoKind::Virtual;
    assert!(matches!(
        DockerPlugin::merge_indexes(virtual_repo, request(path, ""), vec![document]),
        Err(PluginError::Unsupported(_))
    ));
}
