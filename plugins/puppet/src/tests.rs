use super::*;
use serde_json::json;

fn repo(base_url: &str) -> RepoContext {
    RepoContext {
        name: "forge".into(),
        kind: RepoKind::Remote,
        base_url: base_url.into(),
        public_url: "http://proxy.example.org/api/v1/remote/forge".into(),
        settings: "{}".into(),
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

fn release(slug: &str, created_at: &str, file_uri: &str) -> Value {
    json!({
        "slug": slug,
        "version": slug.rsplit('-').next().unwrap(),
        "file_uri": file_uri,
        "file_sha256": "ab".repeat(32),
        "file_md5": "cd".repeat(16),
        "created_at": created_at,
        "metadata": {"name": "acme-app"},
    })
}

fn page(results: Vec<Value>, next: Option<&str>) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "pagination": {
            "limit": 2,
            "offset": 0,
            "first": "/v3/releases?module=acme-app&limit=2&offset=0",
            "previous": null,
            "current": "/v3/releases?module=acme-app&limit=2&offset=0",
            "next": next,
            "total": 3,
        },
        "results": results,
    }))
    .unwrap()
}

#[test]
fn paths_are_classified() {
    let c = classify_request(&request("v3/files/acme-app-1.0.0.tar.gz", "")).unwrap();
    assert_eq!((c.mutability, c.rewrite), (Mutability::Immutable, false));
    let c = classify_request(&request("v3/releases", "module=acme-app&offset=2")).unwrap();
    assert_eq!((c.mutability, c.rewrite), (Mutability::Mutable, true));
    assert_eq!(
        c.cache_key.as_deref(),
        Some("v3/releases?module=acme-app&offset=2")
    );
    let c = classify_request(&request("v3/modules/acme-app", "")).unwrap();
    assert_eq!(
        (c.mutability, c.rewrite, c.cache_key),
        (Mutability::Mutable, true, None)
    );
    let c = classify_request(&request("v3/releases/acme-app-1.0.0", "")).unwrap();
    assert!(c.rewrite);
    let c = classify_request(&request("v3/users/acme", "")).unwrap();
    assert_eq!((c.mutability, c.rewrite), (Mutability::Mutable, false));
    assert!(matches!(
        classify_request(&request("index.html", "")),
        Err(PluginError::NotFound(_))
    ));
}

#[test]
fn the_upstream_is_asked_for_publish_times() {
    assert_eq!(
        upstream_query("module=acme-app&exclude_fields=readme%20created_at%20license"),
        "module=acme-app&exclude_fields=readme%20license"
    );
    assert_eq!(
        upstream_query("exclude_fields=created_at&module=x"),
        "module=x"
    );
    assert_eq!(upstream_query("module=x"), "module=x");
    assert_eq!(upstream_query(""), "");
}

#[test]
fn forge_times_parse() {
    let at = parse_forge_time("2013-05-13 08:31:19 -0700").unwrap();
    assert_eq!(at.secs, parse_rfc3339("2013-05-13T15:31:19Z").unwrap().secs);
    assert!(parse_forge_time("2013-05-13T15:31:19Z").is_some());
    assert!(parse_forge_time("yesterday").is_none());
}

#[test]
fn links_lead_through_the_repository_and_absolute_urls_become_paths() {
    let body = page(
        vec![
            release(
                "acme-app-1.0.0",
                "2020-01-01 00:00:00 +0000",
                "/v3/files/acme-app-1.0.0.tar.gz",
            ),
            release(
                "acme-app-1.1.0",
                "2020-02-01 00:00:00 +0000",
                "https://forge.example.org/v3/files/acme-app-1.1.0.tar.gz",
            ),
        ],
        Some("https://forge.example.org/v3/releases?module=acme-app&limit=2&offset=2"),
    );
    let (out, published) = rewrite_document(
        &repo("https://forge.example.org"),
        &request("v3/releases", "module=acme-app"),
        &body,
        None,
    )
    .unwrap();
    let out: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(
        out["results"][0]["file_uri"],
        "/v3/files/acme-app-1.0.0.tar.gz"
    );
    assert_eq!(
        out["results"][1]["file_uri"],
        "/v3/files/acme-app-1.1.0.tar.gz"
    );
    assert_eq!(
        out["pagination"]["next"],
        "/v3/releases?module=acme-app&limit=2&offset=2"
    );
    assert_eq!(out["results"][0]["file_sha256"], "ab".repeat(32));
    let paths: Vec<_> = published.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "v3/files/acme-app-1.0.0.tar.gz",
            "v3/files/acme-app-1.1.0.tar.gz"
        ]
    );
}

#[test]
fn an_upstream_below_a_path_keeps_paths_below_the_repository() {
    let body = page(
        vec![release(
            "acme-app-1.0.0",
            "2020-01-01 00:00:00 +0000",
            "/mirror/v3/files/acme-app-1.0.0.tar.gz",
        )],
        None,
    );
    let (out, _) = rewrite_document(
        &repo("https://forge.example.org/mirror"),
        &request("v3/releases", "module=acme-app"),
        &body,
        None,
    )
    .unwrap();
    let out: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(
        out["results"][0]["file_uri"],
        "/v3/files/acme-app-1.0.0.tar.gz"
    );
}

#[test]
fn quarantine_hides_new_releases_and_times_asked_away_stay_away() {
    let body = page(
        vec![
            release(
                "acme-app-1.0.0",
                "2020-01-01 00:00:00 +0000",
                "/v3/files/acme-app-1.0.0.tar.gz",
            ),
            release(
                "acme-app-2.0.0",
                "2024-01-01 00:00:00 +0000",
                "/v3/files/acme-app-2.0.0.tar.gz",
            ),
        ],
        None,
    );
    let cutoff = parse_rfc3339("2022-01-01T00:00:00Z").unwrap().epoch_secs();
    let (out, published) = rewrite_document(
        &repo("https://forge.example.org"),
        &request(
            "v3/releases",
            "module=acme-app&exclude_fields=readme%20created_at",
        ),
        &body,
        Some(cutoff),
    )
    .unwrap();
    let out: Value = serde_json::from_slice(&out).unwrap();
    let slugs: Vec<_> = out["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["slug"].clone())
        .collect();
    assert_eq!(slugs, [json!("acme-app-1.0.0")]);
    assert!(out["results"][0].get("created_at").is_none());
    assert_eq!(
        published.len(),
        2,
        "the hidden release's tarball is reported too"
    );
}

#[test]
fn a_single_release_reports_itself() {
    let body = serde_json::to_vec(&release(
        "acme-app-2.0.0",
        "2024-01-01 00:00:00 +0000",
        "/v3/files/acme-app-2.0.0.tar.gz",
    ))
    .unwrap();
    let (_, published) = rewrite_document(
        &repo("https://forge.example.org"),
        &request("v3/releases/acme-app-2.0.0", ""),
        &body,
        None,
    )
    .unwrap();
    let paths: Vec<_> = published.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "v3/releases/acme-app-2.0.0",
            "v3/files/acme-app-2.0.0.tar.gz"
        ]
    );
}

#[test]
fn release_lists_merge_in_member_order() {
    let doc = |body: Vec<u8>| Document {
        content_type: JSON.into(),
        body,
    };
    let a = page(
        vec![release("acme-app-1.0.0", "2020-01-01 00:00:00 +0000", "/a")],
        None,
    );
    let b = page(
        vec![
            release("acme-app-1.0.0", "2020-01-01 00:00:00 +0000", "/b"),
            release("acme-app-1.1.0", "2020-01-01 00:00:00 +0000", "/b2"),
        ],
        Some("/v3/releases?module=acme-app&offset=2"),
    );
    let merged = merge_documents(&[doc(a), doc(b)]).unwrap();
    let merged: Value = serde_json::from_slice(&merged.body).unwrap();
    let uris: Vec<_> = merged["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["file_uri"].clone())
        .collect();
    assert_eq!(uris, [json!("/a"), json!("/b2")]);
    assert_eq!(
        merged["pagination"]["next"],
        "/v3/releases?module=acme-app&offset=2"
    );
}
