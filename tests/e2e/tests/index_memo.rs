//! Index documents at static-file speed: every form of every index format
//! carries a strong ETag, `If-None-Match` gets a 304, and a hit renders
//! nothing and asks the metadata database nothing; the memo of renderings
//! gives way to a new raw copy, a plugin swap and a configuration change.

use std::time::Duration;

use artifactapi_e2e::{
    client, component, eventually, fixtures_dir, header, install, plugins_dir, Server, Upstream,
};
use reqwest::StatusCode;

fn remotes(upstream: &Upstream, npm_extra: &str) -> String {
    let up = format!("{}/files", upstream.url());
    let mut text = String::from("remotes:\n");
    for (name, package) in [
        ("pypi", "pypi"),
        ("npm", "npm"),
        ("helm", "helm"),
        ("rpm", "rpm"),
        ("alpine", "alpine"),
        ("fx", "fixture"),
        ("files", "generic"),
    ] {
        text.push_str(&format!(
            "  {name}:\n    type: remote\n    package: {package}\n    base_url: \"{up}\"\n    \
             cache:\n      mutable_ttl: {ttl}\n",
            ttl = if name == "fx" { 1 } else { 600 }
        ));
        if name == "npm" {
            text.push_str(npm_extra);
        }
    }
    text.push_str("  uploads:\n    type: local\n    package: generic\n");
    text
}

async fn setup(upstream: &Upstream) -> Server {
    let plugins = plugins_dir();
    let names = ["pypi", "npm", "helm", "rpm", "alpine"].map(|name| format!("{name}.wasm"));
    let mut files: Vec<(std::path::PathBuf, String)> = names
        .iter()
        .map(|name| (component(&plugins, name), name.clone()))
        .collect();
    files.push((
        component(&fixtures_dir(), "misbehave-1.0.0.wasm"),
        "misbehave.wasm".into(),
    ));
    let listed: Vec<(&std::path::Path, &str)> = files
        .iter()
        .map(|(path, name)| (path.as_path(), name.as_str()))
        .collect();
    Server::start_with(&remotes(upstream, ""), &listed, Duration::from_secs(5)).await
}

fn rfc3339_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    artifactapi::util::rfc3339_secs(secs)
}

/// The upstream's documents, one per index format, under `files/`.
fn publish(upstream: &Upstream) {
    let up = format!("{}/files", upstream.url());
    let links: String = (0..40)
        .map(|i| {
            format!(
                "<a href=\"{up}/packages/demo-1.{i}.tar.gz#sha256={hash}\">demo-1.{i}.tar.gz</a><br/>\n",
                hash = format!("{i:02x}").repeat(32)
            )
        })
        .collect();
    upstream.put(
        "simple/demo/",
        format!("<!DOCTYPE html><html><body><h1>Links for demo</h1>\n{links}</body></html>\n"),
    );
    let version = |v: &str| {
        serde_json::json!({
            "name": "demo",
            "version": v,
            "description": "x".repeat(300),
            "dist": {
                "tarball": format!("{up}/demo/-/demo-{v}.tgz"),
                "shasum": "0".repeat(40),
            },
        })
    };
    let packument = serde_json::json!({
        "name": "demo",
        "dist-tags": { "latest": "2.0.0" },
        "versions": { "1.0.0": version("1.0.0"), "2.0.0": version("2.0.0") },
        "time": { "1.0.0": "2020-01-01T00:00:00.000Z", "2.0.0": rfc3339_now() },
    });
    upstream.put("demo", packument.to_string());
    let entries: String = (0..30)
        .map(|i| {
            format!(
                "  - name: demo\n    version: 1.{i}.0\n    created: \"2021-01-01T00:00:00Z\"\n    \
                 description: a chart\n    urls:\n    - charts/demo-1.{i}.0.tgz\n"
            )
        })
        .collect();
    upstream.put(
        "index.yaml",
        format!(
            "apiVersion: v1\nentries:\n  demo:\n{entries}generated: \"2024-01-01T00:00:00Z\"\n"
        ),
    );
    upstream.put(
        "repodata/repomd.xml",
        format!(
            "<?xml version=\"1.0\"?>\n<repomd>{}</repomd>\n",
            "<data type=\"primary\"><location href=\"repodata/p.xml.gz\"/></data>".repeat(30)
        ),
    );
    upstream.put("x86_64/APKINDEX.tar.gz", vec![0x1f, 0x8b, 8, 0, 1, 2, 3, 4]);
    upstream.put("a/index.txt", "first copy");
    upstream.put(
        "plain.json",
        format!("{{\"data\": \"{}\"}}", "y".repeat(4000)),
    );
}

/// A GET of `path` with `accept` and, when `gzip`, `Accept-Encoding: gzip`,
/// and `If-None-Match: etag` when given.
async fn get(
    server: &Server,
    path: &str,
    accept: &str,
    gzip: bool,
    etag: Option<&str>,
) -> reqwest::Response {
    let client = reqwest::Client::builder()
        .no_gzip()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let mut request = client
        .get(server.url(&format!("/api/v1/remote/{path}")))
        .header("accept", accept);
    if gzip {
        request = request.header("accept-encoding", "gzip");
    }
    if let Some(etag) = etag {
        request = request.header("if-none-match", etag);
    }
    request.send().await.unwrap()
}

const FORMS: &[(&str, &str)] = &[
    ("pypi/simple/demo/", "text/html"),
    ("pypi/simple/demo/", "application/vnd.pypi.simple.v1+json"),
    ("npm/demo", "application/json"),
    ("npm/demo", "application/vnd.npm.install-v1+json"),
    ("helm/index.yaml", "*/*"),
    ("rpm/repodata/repomd.xml", "*/*"),
    ("alpine/x86_64/APKINDEX.tar.gz", "*/*"),
    ("files/plain.json", "*/*"),
];

#[tokio::test]
async fn every_index_form_revalidates_with_its_etag_and_hits_render_nothing_and_ask_no_database() {
    let upstream = Upstream::start().await;
    publish(&upstream);
    let server = setup(&upstream).await;
    let app = &server.running.app;
    let upload = client()
        .put(server.url("/api/v1/remote/uploads/notes.txt"))
        .body("a note ".repeat(500))
        .send()
        .await
        .unwrap();
    assert_eq!(upload.status(), StatusCode::CREATED);

    let mut etags = std::collections::HashSet::new();
    let mut representations = std::collections::HashSet::new();
    let mut hits = Vec::new();
    for (path, accept) in FORMS {
        for gzip in [false, true] {
            let what = format!("{path} ({accept}, gzip: {gzip})");
            let first = get(&server, path, accept, gzip, None).await;
            assert_eq!(first.status(), StatusCode::OK, "{what}");
            first.bytes().await.unwrap();
            let warm = get(&server, path, accept, gzip, None).await;
            assert_eq!(warm.status(), StatusCode::OK, "{what}");
            assert_eq!(
                header(warm.headers(), "x-artifact-source"),
                "cache",
                "{what}"
            );
            let etag = header(warm.headers(), "etag");
            assert!(
                etag.starts_with('"') && etag.ends_with('"'),
                "{what}: a strong ETag, not {etag:?}"
            );
            assert!(
                !header(warm.headers(), "cache-control").is_empty(),
                "{what}: no Cache-Control"
            );
            let encoding = header(warm.headers(), "content-encoding");
            representations.insert((path, accept, encoding));
            let body = warm.bytes().await.unwrap();
            etags.insert(etag.clone());
            hits.push((path, accept, gzip, etag, body));
        }
    }
    // HTML and JSON, full and abbreviated, identity and gzip: each
    // representation its own ETag (APKINDEX is never gzipped again, and a
    // document under 1 KiB is sent as it is).
    assert_eq!(etags.len(), representations.len(), "{etags:?}");
    assert!(
        representations.len() >= FORMS.len() + 5,
        "{representations:?}"
    );

    let notes = server.url("/api/v1/remote/uploads/notes.txt");
    assert_eq!(
        client().get(&notes).send().await.unwrap().status(),
        StatusCode::OK
    );
    let calls = app.plugins.calls();
    let queries = app.storage.meta.queries();
    for (path, accept, gzip, etag, body) in &hits {
        let what = format!("{path} ({accept}, gzip: {gzip})");
        let again = get(&server, path, accept, *gzip, Some(etag)).await;
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED, "{what}");
        assert_eq!(&header(again.headers(), "etag"), etag, "{what}");
        assert!(again.bytes().await.unwrap().is_empty(), "{what}");
        let full = get(&server, path, accept, *gzip, Some("\"something else\"")).await;
        assert_eq!(full.status(), StatusCode::OK, "{what}");
        assert_eq!(&full.bytes().await.unwrap(), body, "{what}: the same bytes");
    }
    for _ in 0..5 {
        let local = client().get(&notes).send().await.unwrap();
        assert_eq!(header(local.headers(), "x-artifact-source"), "local");
    }
    assert_eq!(app.plugins.calls(), calls, "a hit calls no plugin");
    assert_eq!(
        app.storage.meta.queries(),
        queries,
        "a hit sends no statement to the metadata database"
    );
}

#[tokio::test]
async fn renderings_give_way_to_a_new_copy_a_plugin_swap_and_a_config_change() {
    let upstream = Upstream::start().await;
    publish(&upstream);
    let server = setup(&upstream).await;
    let text = |response: reqwest::Response| async move {
        let etag = header(response.headers(), "etag");
        (etag, response.text().await.unwrap())
    };

    // A new raw copy: the fixture's index expires after a second.
    let (first_etag, first) = text(get(&server, "fx/a/index.txt", "*/*", false, None).await).await;
    assert!(first.starts_with("first copy"), "{first}");
    assert!(first.contains("misbehave 1.0.0"), "{first}");
    upstream.put("a/index.txt", "second copy");
    let renewed = eventually(Duration::from_secs(10), || async {
        let (_, body) = text(get(&server, "fx/a/index.txt", "*/*", false, None).await).await;
        body.starts_with("second copy")
    })
    .await;
    assert!(renewed, "the new upstream copy is rendered");
    let changed = get(&server, "fx/a/index.txt", "*/*", false, Some(&first_etag)).await;
    assert_eq!(
        changed.status(),
        StatusCode::OK,
        "the old ETag no longer matches"
    );
    assert_ne!(header(changed.headers(), "etag"), first_etag);

    // A plugin swap: the new version renders the same raw copy anew.
    let second = component(&fixtures_dir(), "misbehave-2.0.0.wasm");
    install(&second, &server.plugin_dir(), "misbehave.wasm");
    let swapped = eventually(Duration::from_secs(10), || async {
        let (_, body) = text(get(&server, "fx/a/index.txt", "*/*", false, None).await).await;
        body.contains("misbehave 2.0.0")
    })
    .await;
    assert!(swapped, "the swapped plugin's rendering is served");

    // A configuration change: quarantine hides the version published now.
    let abbreviated = "application/vnd.npm.install-v1+json";
    let (open_etag, open) = text(get(&server, "npm/demo", abbreviated, false, None).await).await;
    assert!(open.contains("\"2.0.0\""), "{open}");
    std::fs::write(
        server.config_path(),
        remotes(&upstream, "    quarantine_new: true\n"),
    )
    .unwrap();
    let hidden = eventually(Duration::from_secs(10), || async {
        let (_, body) = text(get(&server, "npm/demo", abbreviated, false, None).await).await;
        !body.contains("\"2.0.0\"")
    })
    .await;
    assert!(hidden, "the reloaded configuration renders anew");
    let (etag, _) = text(get(&server, "npm/demo", abbreviated, false, None).await).await;
    assert_ne!(etag, open_etag);
}
