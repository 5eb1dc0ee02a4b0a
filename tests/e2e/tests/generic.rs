//! Generic repositories end to end: remote caching against a real upstream on
//! loopback, local uploads, virtual lookups and error answers.

use std::time::Duration;

use artifactapi_e2e::{client, get_json, header, raw_get, Server, Upstream};
use futures::StreamExt;

fn remotes(upstream: &Upstream) -> String {
    format!(
        r#"
remotes:
  files:
    type: remote
    package: generic
    base_url: "{}"
    password: hunter2
    username: ci
    mutable_patterns: ["latest"]
    cache:
      immutable_ttl: 0
      mutable_ttl: 2
  uploads:
    type: local
    package: generic
  both:
    type: virtual
    package: generic
    members: [uploads, files]
"#,
        upstream.url()
    )
}

async fn setup() -> (Upstream, Server) {
    let upstream = Upstream::start().await;
    let server = Server::start(&remotes(&upstream)).await;
    (upstream, server)
}

#[tokio::test]
async fn miss_then_hit_then_upstream_down() {
    let (upstream, server) = setup().await;
    upstream.put("tool-1.0.tar.gz", vec![7u8; 300_000]);
    let url = server.url("/api/v1/remote/files/files/tool-1.0.tar.gz");
    let first = client().get(&url).send().await.unwrap();
    assert_eq!(first.status(), 200);
    assert_eq!(header(first.headers(), "x-artifact-source"), "remote");
    assert_eq!(header(first.headers(), "content-length"), "300000");
    assert_eq!(first.bytes().await.unwrap(), vec![7u8; 300_000]);

    let second = client().get(&url).send().await.unwrap();
    assert_eq!(header(second.headers(), "x-artifact-source"), "cache");
    assert!(header(second.headers(), "etag").starts_with("\"sha256:"));
    assert_eq!(second.bytes().await.unwrap(), vec![7u8; 300_000]);
    assert_eq!(upstream.hits("files/tool-1.0.tar.gz"), 1);

    let head = client().head(&url).send().await.unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(header(head.headers(), "content-length"), "300000");

    upstream.stop();
    let third = client().get(&url).send().await.unwrap();
    assert_eq!(third.status(), 200);
    assert_eq!(header(third.headers(), "x-artifact-source"), "cache");
}

#[tokio::test]
async fn mutable_paths_expire_and_are_fetched_again() {
    let (upstream, server) = setup().await;
    upstream.put("latest.txt", "v1");
    let url = server.url("/api/v1/remote/files/files/latest.txt");
    assert_eq!(
        client()
            .get(&url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "v1"
    );
    upstream.put("latest.txt", "v2");
    let cached = client().get(&url).send().await.unwrap();
    assert_eq!(header(cached.headers(), "x-artifact-source"), "cache");
    assert_eq!(cached.text().await.unwrap(), "v1");
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let refreshed = client().get(&url).send().await.unwrap();
    assert_eq!(header(refreshed.headers(), "x-artifact-source"), "remote");
    assert_eq!(refreshed.text().await.unwrap(), "v2");
    assert_eq!(upstream.hits("files/latest.txt"), 2);

    upstream.stop();
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let stale = client().get(&url).send().await.unwrap();
    assert_eq!(
        stale.status(),
        200,
        "an expired copy is served while the upstream is down"
    );
    assert!(header(stale.headers(), "warning").contains("Stale"));
    assert_eq!(stale.text().await.unwrap(), "v2");
}

#[tokio::test]
async fn concurrent_misses_make_one_upstream_request() {
    let (upstream, server) = setup().await;
    let data: Vec<u8> = (0..2_000_000u32).map(|i| (i % 253) as u8).collect();
    upstream.put("big.bin", data.clone());
    let url = server.url("/api/v1/remote/files/drip/big.bin");
    let requests = (0..6).map(|_| {
        let url = url.clone();
        tokio::spawn(async move {
            let response = client().get(&url).send().await.unwrap();
            assert_eq!(response.status(), 200);
            response.bytes().await.unwrap()
        })
    });
    for body in futures::future::join_all(requests).await {
        assert_eq!(body.unwrap(), data);
    }
    assert_eq!(upstream.hits("drip/big.bin"), 1);
    let again = client().get(&url).send().await.unwrap();
    assert_eq!(header(again.headers(), "x-artifact-source"), "cache");
}

#[tokio::test]
async fn a_client_that_disconnects_does_not_abort_the_fill() {
    let (upstream, server) = setup().await;
    upstream.put("pkg.tar", vec![3u8; 800_000]);
    let url = server.url("/api/v1/remote/files/drip/pkg.tar");
    let response = client().get(&url).send().await.unwrap();
    let mut stream = response.bytes_stream();
    let _first = stream.next().await;
    drop(stream);
    let stored = artifactapi_e2e::eventually(Duration::from_secs(10), || {
        let url = url.clone();
        async move {
            let response = client().head(&url).send().await.unwrap();
            header(response.headers(), "x-artifact-source") == "cache"
        }
    })
    .await;
    assert!(stored, "the fill finished without its client");
    let body = client()
        .get(&url)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(body, vec![3u8; 800_000]);
    assert_eq!(upstream.hits("drip/pkg.tar"), 1);
}

#[tokio::test]
async fn an_upstream_reset_mid_body_caches_nothing() {
    let (upstream, server) = setup().await;
    upstream.put("cut.bin", vec![9u8; 1_000_000]);
    let url = server.url("/api/v1/remote/files/reset/cut.bin");
    let response = client().get(&url).send().await.unwrap();
    assert!(
        response.bytes().await.is_err(),
        "the client sees a broken body, not a short complete one"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(server.blob_count(), 0);
    assert_eq!(server.spool_count(), 0);
    let again = client().get(&url).send().await.unwrap();
    assert!(again.bytes().await.is_err());
    assert_eq!(upstream.hits("reset/cut.bin"), 2, "nothing was cached");
}

#[tokio::test]
async fn upstream_errors_are_json() {
    let (_upstream, server) = setup().await;
    let missing = client()
        .get(server.url("/api/v1/remote/files/files/none.txt"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let body: serde_json::Value = missing.json().await.unwrap();
    assert_eq!(body["errors"][0]["status"], 404);
    let failing = client()
        .get(server.url("/api/v1/remote/files/status/503"))
        .send()
        .await
        .unwrap();
    assert_eq!(failing.status(), 502);
    let head_missing = client()
        .head(server.url("/api/v1/remote/files/files/none.txt"))
        .send()
        .await
        .unwrap();
    assert_eq!(head_missing.status(), 404);
}

#[tokio::test]
async fn local_put_get_head_delete_and_dedup() {
    let (_upstream, server) = setup().await;
    let c = client();
    let url = server.url("/api/v1/remote/uploads/team/app-1.0.zip");
    let put = c.put(&url).body(vec![5u8; 70_000]).send().await.unwrap();
    assert_eq!(put.status(), 201);
    let stored: serde_json::Value = put.json().await.unwrap();
    let sha = stored["sha256"].as_str().unwrap().to_string();
    assert_eq!(sha.len(), 64);

    let copy = server.url("/api/v1/remote/uploads/team/copy.zip");
    assert_eq!(
        c.put(&copy)
            .body(vec![5u8; 70_000])
            .send()
            .await
            .unwrap()
            .status(),
        201
    );
    assert_eq!(server.blob_count(), 1, "the same content is stored once");

    let get = c.get(&url).send().await.unwrap();
    assert_eq!(get.status(), 200);
    assert_eq!(header(get.headers(), "x-artifact-source"), "local");
    assert_eq!(get.bytes().await.unwrap(), vec![5u8; 70_000]);
    let head = c.head(&url).send().await.unwrap();
    assert_eq!(header(head.headers(), "content-length"), "70000");

    let wrong = c
        .put(server.url("/api/v1/remote/uploads/team/bad.zip"))
        .header("x-checksum-sha256", "0".repeat(64))
        .body("data")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 400);
    let missing = c
        .get(server.url("/api/v1/remote/uploads/team/bad.zip"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404, "a refused upload stores nothing");

    assert_eq!(c.delete(&url).send().await.unwrap().status(), 204);
    assert_eq!(c.get(&url).send().await.unwrap().status(), 404);
    assert_eq!(c.delete(&url).send().await.unwrap().status(), 404);
    assert_eq!(c.get(&copy).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn virtual_serves_from_the_first_member_that_has_the_path() {
    let (upstream, server) = setup().await;
    upstream.put("shared.txt", "from upstream");
    let c = client();
    c.put(server.url("/api/v1/remote/uploads/files/shared.txt"))
        .body("from uploads")
        .send()
        .await
        .unwrap();
    let first = c
        .get(server.url("/api/v1/remote/both/files/shared.txt"))
        .send()
        .await
        .unwrap();
    assert_eq!(first.text().await.unwrap(), "from uploads");
    let alias = c
        .get(server.url("/api/v1/virtual/both/misc/other.txt"))
        .send()
        .await
        .unwrap();
    assert_eq!(alias.text().await.unwrap(), "content of misc/other.txt");
    assert_eq!(
        c.put(server.url("/api/v1/remote/both/x"))
            .body("x")
            .send()
            .await
            .unwrap()
            .status(),
        405
    );
}

#[tokio::test]
async fn bad_requests_get_json_errors() {
    let (_upstream, server) = setup().await;
    let c = client();
    let unknown = c
        .get(server.url("/api/v1/remote/nope/a"))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    let body: serde_json::Value = unknown.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "REPOSITORY_NOT_FOUND");

    let post = c
        .post(server.url("/api/v1/remote/files/a"))
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 405);
    assert_eq!(header(post.headers(), "allow"), "GET, HEAD");
    assert!(post.json::<serde_json::Value>().await.is_ok());

    for target in [
        "/api/v1/remote/files/a/../../etc/passwd",
        "/api/v1/remote/files/a/%2e%2e/%2e%2e/etc/passwd",
        "/api/v1/remote/files/a%2F..%2Fb",
        "/api/v1/remote/uploads/..%5c..%5cb",
    ] {
        let (status, body) = raw_get(server.addr, target).await;
        assert_eq!(status, 400, "{target}");
        assert!(body.contains("PATH_TRAVERSAL"), "{target}: {body}");
    }
}

#[tokio::test]
async fn management_endpoints() {
    let (_upstream, server) = setup().await;
    let c = client();
    let health = get_json(&server.url("/health")).await;
    assert_eq!(health["status"], "ok");
    let config = c
        .get(server.url("/config"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        config.contains("files") && !config.contains("hunter2"),
        "{config}"
    );
    let root = get_json(&server.url("/")).await;
    let names: Vec<&str> = root["repositories"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["both", "files", "uploads"]);
}

#[tokio::test]
async fn expired_copies_are_revalidated_with_conditional_requests() {
    let (upstream, server) = setup().await;
    upstream.put("latest.json", "v1");
    let url = server.url("/api/v1/remote/files/etag/latest.json");
    let first = client().get(&url).send().await.unwrap();
    assert_eq!(header(first.headers(), "x-artifact-source"), "remote");
    assert_eq!(first.text().await.unwrap(), "v1");
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let revalidated = client().get(&url).send().await.unwrap();
    assert_eq!(
        header(revalidated.headers(), "x-artifact-source"),
        "cache",
        "a 304 refreshes the stored copy"
    );
    assert_eq!(revalidated.text().await.unwrap(), "v1");
    assert_eq!(upstream.hits("etag/latest.json"), 2);
    let fresh = client().get(&url).send().await.unwrap();
    assert_eq!(header(fresh.headers(), "x-artifact-source"), "cache");
    assert_eq!(
        upstream.hits("etag/latest.json"),
        2,
        "fresh again after the 304"
    );

    upstream.put("latest.json", "v2");
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let changed = client().get(&url).send().await.unwrap();
    assert_eq!(header(changed.headers(), "x-artifact-source"), "remote");
    assert_eq!(changed.text().await.unwrap(), "v2");
}

#[tokio::test]
async fn upstream_404s_are_remembered_for_a_while() {
    let (upstream, server) = setup().await;
    let url = server.url("/api/v1/remote/files/files/missing.whl");
    for _ in 0..3 {
        assert_eq!(client().get(&url).send().await.unwrap().status(), 404);
    }
    assert_eq!(upstream.hits("files/missing.whl"), 1);
}

#[tokio::test]
async fn ranges_and_resumed_downloads() {
    let (upstream, server) = setup().await;
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 241) as u8).collect();
    upstream.put("blob.bin", data.clone());
    let url = server.url("/api/v1/remote/files/files/blob.bin");
    client()
        .get(&url)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();

    let part = client()
        .get(&url)
        .header("range", "bytes=10-19")
        .send()
        .await
        .unwrap();
    assert_eq!(part.status(), 206);
    assert_eq!(
        header(part.headers(), "content-range"),
        "bytes 10-19/100000"
    );
    assert_eq!(part.bytes().await.unwrap(), data[10..20]);
    let tail = client()
        .get(&url)
        .header("range", "bytes=-5")
        .send()
        .await
        .unwrap();
    assert_eq!(tail.bytes().await.unwrap(), data[99_995..]);
    let beyond = client()
        .get(&url)
        .header("range", "bytes=100000-")
        .send()
        .await
        .unwrap();
    assert_eq!(beyond.status(), 416);
    assert_eq!(header(beyond.headers(), "content-range"), "bytes */100000");

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("blob.bin");
    std::fs::write(&out, &data[..30_000]).unwrap();
    let status = tokio::process::Command::new("curl")
        .args(["-sS", "-f", "-C", "-", "-o"])
        .arg(&out)
        .arg(&url)
        .status()
        .await
        .expect("curl runs");
    assert!(status.success());
    assert_eq!(
        std::fs::read(&out).unwrap(),
        data,
        "curl -C - resumed the download"
    );
}

#[tokio::test]
async fn a_rate_limiting_upstream_gets_a_back_off_while_stale_copies_are_served() {
    let (upstream, server) = setup().await;
    upstream.put("latest.txt", "v1");
    let url = server.url("/api/v1/remote/files/files/latest.txt");
    let first = client().get(&url).send().await.unwrap();
    let modified = header(first.headers(), "last-modified");
    assert_eq!(first.text().await.unwrap(), "v1");
    let unchanged = client()
        .get(&url)
        .header("if-modified-since", &modified)
        .send()
        .await
        .unwrap();
    assert_eq!(unchanged.status(), 304);

    tokio::time::sleep(Duration::from_millis(3100)).await;
    upstream.fail(429);
    for _ in 0..3 {
        let stale = client().get(&url).send().await.unwrap();
        assert_eq!(stale.status(), 200);
        assert!(header(stale.headers(), "warning").contains("Stale"));
        assert_eq!(stale.text().await.unwrap(), "v1");
    }
    assert_eq!(upstream.hits("down"), 1, "asked once, then left alone");
}

#[tokio::test]
async fn the_blocklist_is_checked_before_the_allowlist() {
    let upstream = Upstream::start().await;
    let remotes = format!(
        "remotes:\n  guarded:\n    type: remote\n    package: generic\n    base_url: \"{}\"\n    \
         patterns: [\"\\\\.tar\\\\.gz$\"]\n    blocklist: [\"evil\"]\n",
        upstream.url()
    );
    let server = Server::start(&remotes).await;
    let fetch = |path: &str| {
        let url = server.url(&format!("/api/v1/remote/guarded/{path}"));
        async move { client().get(&url).send().await.unwrap() }
    };
    assert_eq!(fetch("misc/good.tar.gz").await.status(), 200);
    let blocked = fetch("misc/evil.tar.gz").await;
    assert_eq!(blocked.status(), 403);
    let body: serde_json::Value = blocked.json().await.unwrap();
    assert!(body["errors"][0]["message"]
        .as_str()
        .unwrap()
        .contains("blocklist pattern \"evil\""));
    let outside = fetch("misc/tool.zip").await;
    assert_eq!(outside.status(), 403);
    let body: serde_json::Value = outside.json().await.unwrap();
    assert!(body["errors"][0]["message"]
        .as_str()
        .unwrap()
        .contains("include_patterns"));
    assert_eq!(upstream.hits("misc/evil.tar.gz"), 0);
    assert_eq!(upstream.hits("misc/tool.zip"), 0);
}

#[tokio::test]
async fn types_freshness_and_compression_for_clients_and_caches_in_front() {
    let (upstream, server) = setup().await;
    let plain = reqwest::Client::builder().no_gzip().build().unwrap();

    // curl's default type says nothing about the file: the name does.
    let notes = server.url("/api/v1/remote/uploads/docs/notes.json");
    let text = format!("{{\"notes\": \"{}\"}}", "n".repeat(5000));
    let put = plain
        .put(&notes)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(text.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 201);
    let got = plain.get(&notes).send().await.unwrap();
    assert_eq!(header(got.headers(), "content-type"), "application/json");
    assert_eq!(
        header(got.headers(), "cache-control"),
        "no-cache",
        "an upload may be replaced"
    );
    let identity_etag = header(got.headers(), "etag");
    assert_eq!(got.text().await.unwrap(), text);

    // Text goes gzipped to a client that takes it, under its own ETag.
    let zipped = plain
        .get(&notes)
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(header(zipped.headers(), "content-encoding"), "gzip");
    assert_eq!(header(zipped.headers(), "vary"), "Accept-Encoding");
    let zipped_etag = header(zipped.headers(), "etag");
    assert_ne!(zipped_etag, identity_etag);
    let mut unzipped = String::new();
    std::io::Read::read_to_string(
        &mut flate2::read::GzDecoder::new(&zipped.bytes().await.unwrap()[..]),
        &mut unzipped,
    )
    .unwrap();
    assert_eq!(unzipped, text);
    let again = plain
        .get(&notes)
        .header("accept-encoding", "gzip")
        .header("if-none-match", &zipped_etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);

    // What is compressed already is sent as it is.
    upstream.put("pkg-1.0.tgz", vec![3u8; 4000]);
    let archive = server.url("/api/v1/remote/files/files/pkg-1.0.tgz");
    let first = plain.get(&archive).send().await.unwrap();
    first.bytes().await.unwrap();
    let cached = plain
        .get(&archive)
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(header(cached.headers(), "x-artifact-source"), "cache");
    assert_eq!(header(cached.headers(), "content-encoding"), "");
    assert_ne!(
        header(cached.headers(), "content-type"),
        "application/octet-stream",
        "an upstream that says only octet-stream gets a type from the name"
    );
    assert_eq!(
        header(cached.headers(), "cache-control"),
        "public, max-age=31536000, immutable",
        "an immutable cached file is kept by clients and caches in front"
    );
    assert_eq!(cached.bytes().await.unwrap(), vec![3u8; 4000]);

    // A mutable cached file is fresh for what is left of its TTL.
    let latest = server.url("/api/v1/remote/files/files/latest");
    upstream.put("latest", "v9");
    plain
        .get(&latest)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let cached = plain.get(&latest).send().await.unwrap();
    let control = header(cached.headers(), "cache-control");
    let max_age: i64 = control
        .strip_prefix("public, max-age=")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("Cache-Control: {control}"));
    assert!((0..=2).contains(&max_age), "{control}");
}
