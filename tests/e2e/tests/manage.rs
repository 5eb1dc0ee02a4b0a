//! The management API end to end: repositories and their objects, eviction,
//! cache flushes, traffic statistics, and garbage collection of blobs while
//! cache fills are in flight.

use std::time::{Duration, SystemTime};

use artifactapi::gc::{collect, schedule, GcOptions, GcReport};
use artifactapi_e2e::{client, eventually, get_json, header, Server, Upstream};
use serde_json::Value;

fn remotes(upstream: &Upstream) -> String {
    format!(
        r#"
remotes:
  files:
    type: remote
    package: generic
    base_url: "{}"
    description: cached downloads
    mutable_patterns: ["latest"]
    cache:
      mutable_ttl: 600
      negative_ttl: 5
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

async fn get_bytes(url: &str) -> (String, Vec<u8>) {
    let response = client().get(url).send().await.unwrap();
    assert_eq!(response.status(), 200, "{url}");
    let source = header(response.headers(), "x-artifact-source");
    (source, response.bytes().await.unwrap().to_vec())
}

async fn upload(server: &Server, path: &str, body: Vec<u8>) {
    let url = server.url(&format!("/api/v1/remote/uploads/{path}"));
    let response = client().put(&url).body(body).send().await.unwrap();
    assert_eq!(response.status(), 201, "{path}");
}

/// The status and JSON body of a request.
async fn call(method: reqwest::Method, url: &str) -> (u16, Value) {
    let response = client().request(method, url).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

fn error_code(body: &Value) -> &str {
    body["errors"][0]["code"].as_str().unwrap_or("")
}

#[tokio::test]
async fn repositories_are_listed_with_what_they_hold() {
    let (upstream, server) = setup().await;
    upstream.put("tool.tar.gz", vec![1u8; 5000]);
    get_bytes(&server.url("/api/v1/remote/files/files/tool.tar.gz")).await;
    upload(&server, "team/a.zip", vec![2u8; 300]).await;
    upload(&server, "team/b.zip", vec![3u8; 200]).await;

    let all = get_json(&server.url("/api/v2/remotes")).await;
    let remotes = all["remotes"].as_array().unwrap();
    let names: Vec<&str> = remotes
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["both", "files", "uploads"]);
    let files = &remotes[1];
    assert_eq!(files["type"], "remote");
    assert_eq!(files["package"], "generic");
    assert_eq!(files["base_url"], upstream.url());
    assert_eq!(files["description"], "cached downloads");
    assert_eq!(files["cache"]["mutable_ttl"], 600);
    assert_eq!(files["cache"]["immutable_ttl"], 0);
    assert_eq!(files["cache"]["negative_ttl"], 5);
    assert_eq!(
        (files["objects"].as_u64(), files["bytes"].as_u64()),
        (Some(1), Some(5000))
    );
    assert_eq!(remotes[2]["objects"], 2);
    assert_eq!(remotes[2]["bytes"], 500);
    assert_eq!(
        remotes[0]["members"],
        serde_json::json!(["uploads", "files"])
    );
    assert_eq!(remotes[0]["objects"], 0);

    let one = get_json(&server.url("/api/v2/remotes/uploads")).await;
    assert_eq!(one["type"], "local");
    assert_eq!(one["objects"], 2);
    assert!(one["base_url"].is_null());

    let (status, body) = call(reqwest::Method::GET, &server.url("/api/v2/remotes/nope")).await;
    assert_eq!(status, 404);
    assert_eq!(error_code(&body), "REPOSITORY_NOT_FOUND");
    let post = client()
        .post(server.url("/api/v2/remotes"))
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 405);
    assert_eq!(header(post.headers(), "allow"), "GET");
    assert_eq!(
        error_code(&post.json().await.unwrap()),
        "METHOD_NOT_ALLOWED"
    );
}

#[tokio::test]
async fn objects_are_browsed_page_by_page_and_evicted() {
    let (upstream, server) = setup().await;
    let mut expected = Vec::new();
    for name in [
        "team/c.zip",
        "team/a.zip",
        "other/x.bin",
        "team/b.zip",
        "other/y.bin",
    ] {
        upload(&server, name, name.as_bytes().to_vec()).await;
        expected.push(name.to_string());
    }
    expected.sort();

    let mut seen = Vec::new();
    let mut url = server.url("/api/v2/remotes/uploads/objects?limit=2");
    let mut pages = 0;
    loop {
        let page = get_json(&url).await;
        pages += 1;
        let objects = page["objects"].as_array().unwrap();
        assert!(objects.len() <= 2);
        seen.extend(
            objects
                .iter()
                .map(|o| o["path"].as_str().unwrap().to_string()),
        );
        match page["next"].as_str() {
            Some(cursor) => {
                url = server.url(&format!(
                    "/api/v2/remotes/uploads/objects?limit=2&cursor={cursor}"
                ))
            }
            None => break,
        }
    }
    assert_eq!(seen, expected, "every object once, in path order");
    assert_eq!(pages, 3);

    let team = get_json(&server.url("/api/v2/remotes/uploads/objects?prefix=team/")).await;
    let team = team["objects"].as_array().unwrap();
    assert_eq!(team.len(), 3);
    let a = &team[0];
    assert_eq!(a["path"], "team/a.zip");
    assert_eq!(a["size"], 10);
    assert_eq!(a["origin"], "local");
    assert_eq!(a["class"], "file");
    assert_eq!(a["mutable"], false);
    assert_eq!(a["hits"], 0);
    assert!(a["expires_at"].is_null());
    assert_eq!(a["digest"].as_str().unwrap().len(), "sha256:".len() + 64);
    let stored_at = a["stored_at"].as_str().unwrap();
    assert!(
        stored_at.len() == 20 && stored_at.ends_with('Z'),
        "{stored_at}"
    );

    upstream.put("latest.json", "{}");
    get_bytes(&server.url("/api/v1/remote/files/files/latest.json")).await;
    let cached = get_json(&server.url("/api/v2/remotes/files/objects")).await;
    let latest = &cached["objects"][0];
    assert_eq!(latest["path"], "files/latest.json");
    assert_eq!(latest["origin"], "remote");
    assert_eq!(latest["class"], "index");
    assert_eq!(latest["expired"], false);
    assert!(latest["expires_at"].as_str().unwrap().ends_with('Z'));

    for bad in ["limit=0", "limit=5000", "limit=many", "cursor=%%%"] {
        let (status, body) = call(
            reqwest::Method::GET,
            &server.url(&format!("/api/v2/remotes/uploads/objects?{bad}")),
        )
        .await;
        assert_eq!(status, 400, "{bad}");
        assert_eq!(error_code(&body), "BAD_REQUEST", "{bad}");
    }

    let objects = server.url("/api/v2/remotes/uploads/objects");
    let (status, body) = call(
        reqwest::Method::DELETE,
        &format!("{objects}?path=team/a.zip"),
    )
    .await;
    assert_eq!((status, body["evicted"].as_u64()), (200, Some(1)));
    let gone = client()
        .get(server.url("/api/v1/remote/uploads/team/a.zip"))
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), 404);
    let (status, body) = call(
        reqwest::Method::DELETE,
        &format!("{objects}?path=team/a.zip"),
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(error_code(&body), "NOT_FOUND");

    let (status, body) = call(
        reqwest::Method::DELETE,
        &format!("{objects}?pattern=^other/"),
    )
    .await;
    assert_eq!((status, body["evicted"].as_u64()), (200, Some(2)));
    let (status, body) = call(reqwest::Method::DELETE, &format!("{objects}?pattern=(")).await;
    assert_eq!(status, 400);
    assert_eq!(error_code(&body), "INVALID_PATTERN");
    let (status, _) = call(reqwest::Method::DELETE, &objects).await;
    assert_eq!(status, 400, "a path or a pattern is required");
    let left = get_json(&objects).await;
    assert_eq!(left["objects"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn flush_removes_cached_records_and_keeps_uploads() {
    let (upstream, server) = setup().await;
    upstream.put("a.bin", vec![4u8; 1000]);
    upstream.put("b.bin", vec![5u8; 1000]);
    upstream.put("latest.txt", "v1");
    let a = server.url("/api/v1/remote/files/files/a.bin");
    let b = server.url("/api/v1/remote/files/files/b.bin");
    let latest = server.url("/api/v1/remote/files/files/latest.txt");
    for url in [&a, &b, &latest] {
        get_bytes(url).await;
    }
    upload(&server, "files/a.bin", vec![6u8; 10]).await;
    let flush = |query: &str| {
        let url = server.url(&format!("/cache/flush{query}"));
        async move { call(reqwest::Method::PUT, &url).await }
    };

    upstream.put("latest.txt", "v2");
    let (status, body) = flush("?mutable_only=true").await;
    assert_eq!((status, body["flushed"].as_u64()), (200, Some(1)));
    assert_eq!(get_bytes(&latest).await, ("remote".into(), b"v2".to_vec()));
    assert_eq!(get_bytes(&a).await.0, "cache", "immutable objects stay");

    let (_, body) = flush("?repo=files&pattern=a%5C.bin$").await;
    assert_eq!(body["flushed"], 1);
    assert_eq!(get_bytes(&a).await.0, "remote");
    assert_eq!(get_bytes(&b).await.0, "cache");
    assert_eq!(upstream.hits("files/a.bin"), 2);

    let (_, body) = flush("?repo=both").await;
    assert_eq!(
        body["flushed"], 3,
        "a virtual repository flushes its members"
    );
    let (_, body) = flush("").await;
    assert_eq!(body["flushed"], 0);
    assert_eq!(get_bytes(&b).await.0, "remote");
    let (_, body) = flush("?repo=uploads").await;
    assert_eq!(body["flushed"], 0, "uploads are never flushed");
    let (source, bytes) = get_bytes(&server.url("/api/v1/remote/uploads/files/a.bin")).await;
    assert_eq!((source.as_str(), bytes), ("local", vec![6u8; 10]));

    let (status, body) = flush("?pattern=(").await;
    assert_eq!(status, 400);
    assert_eq!(error_code(&body), "INVALID_PATTERN");
    let (status, body) = flush("?repo=nope").await;
    assert_eq!(status, 404);
    assert_eq!(error_code(&body), "REPOSITORY_NOT_FOUND");
    let (status, _) = flush("?mutable_only=maybe").await;
    assert_eq!(status, 400);
    let get = client()
        .get(server.url("/cache/flush"))
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), 405);
    assert_eq!(header(get.headers(), "allow"), "PUT");
}

#[tokio::test]
async fn stats_count_hits_misses_and_bytes() {
    let (upstream, server) = setup().await;
    upstream.put("tool.bin", vec![8u8; 40_000]);
    let url = server.url("/api/v1/remote/files/files/tool.bin");
    for expected in ["remote", "cache", "cache"] {
        assert_eq!(get_bytes(&url).await.0, expected);
    }
    upload(&server, "doc.txt", vec![9u8; 100]).await;
    get_bytes(&server.url("/api/v1/remote/uploads/doc.txt")).await;
    get_bytes(&server.url("/api/v1/virtual/both/doc.txt")).await;
    let head = client().head(&url).send().await.unwrap();
    assert_eq!(head.status(), 200);
    let missing = client()
        .get(server.url("/api/v1/remote/files/status/404"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);

    let stats = get_json(&server.url("/api/v2/stats")).await;
    let files = &stats["repositories"]["files"];
    assert_eq!(files["misses"], 1);
    assert_eq!(
        files["hits"], 3,
        "two GETs and a HEAD from the cache; errors are not counted"
    );
    assert_eq!(files["bytes_served"], 120_000);
    assert_eq!(files["objects"], 1);
    assert_eq!(files["bytes_stored"], 40_000);
    let uploads = &stats["repositories"]["uploads"];
    assert_eq!(
        (uploads["hits"].as_u64(), uploads["bytes_served"].as_u64()),
        (Some(1), Some(100))
    );
    assert_eq!(
        stats["repositories"]["both"]["hits"], 1,
        "counted where the client asked"
    );
    assert_eq!(stats["total"]["hits"], 5);
    assert_eq!(stats["total"]["misses"], 1);
    assert_eq!(stats["total"]["bytes_served"], 120_200);
    assert_eq!(stats["total"]["objects"], 2);
    assert_eq!(stats["total"]["bytes_stored"], 40_100);
    assert!(stats["total"]["bytes_fetched"].is_u64());
    assert!(stats["since"].as_str().unwrap().ends_with('Z'));
}

fn options(grace: Duration) -> GcOptions {
    GcOptions {
        grace,
        upload_expiry: Duration::from_secs(86400),
        dry_run: false,
    }
}

async fn gc(server: &Server, grace: Duration) -> GcReport {
    collect(&server.running.app.storage, &options(grace))
        .await
        .unwrap()
}

fn plant_spool_file(server: &Server, name: &str, age: Duration) {
    let path = server.dir.path().join("data/cas/staging").join(name);
    std::fs::write(&path, b"half a download").unwrap();
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(SystemTime::now() - age)
        .unwrap();
}

#[tokio::test]
async fn gc_reaps_only_old_unreferenced_blobs_while_fills_run() {
    let (upstream, server) = setup().await;
    let orphan = vec![1u8; 12_345];
    upload(&server, "orphan.bin", orphan.clone()).await;
    upload(&server, "kept.bin", vec![2u8; 500]).await;
    upstream.put("cached.bin", vec![3u8; 700]);
    get_bytes(&server.url("/api/v1/remote/files/files/cached.bin")).await;
    let (status, _) = call(
        reqwest::Method::DELETE,
        &server.url("/api/v2/remotes/uploads/objects?path=orphan.bin"),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(server.blob_count(), 3, "evicting leaves the blob to the gc");
    plant_spool_file(&server, "crash-leftover", Duration::from_secs(7200));
    plant_spool_file(&server, "recent", Duration::ZERO);

    let slow: Vec<(String, Vec<u8>)> = (0..4u8)
        .map(|i| {
            let data: Vec<u8> = (0..1_000_000u32).map(|n| (n % 249) as u8 ^ i).collect();
            (format!("slow-{i}.bin"), data)
        })
        .collect();
    let mut fills = Vec::new();
    for (name, data) in &slow {
        upstream.put(name, data.clone());
        let url = server.url(&format!("/api/v1/remote/files/drip/{name}"));
        fills.push(tokio::spawn(async move { get_bytes(&url).await }));
    }
    let streaming = eventually(Duration::from_secs(10), || async {
        server.spool_count() == 2 + slow.len()
    })
    .await;
    assert!(streaming, "every fill is writing its spool file");

    let hour = Duration::from_secs(3600);
    let cautious = gc(&server, hour).await;
    assert_eq!(cautious.blobs_scanned, 3);
    assert_eq!(
        cautious.blobs_removed, 0,
        "nothing younger than the grace period goes"
    );
    assert_eq!(cautious.blobs_young, 1);
    assert_eq!(cautious.spool_files_removed, 1, "the crash leftover goes");

    let eager = gc(&server, Duration::ZERO).await;
    assert_eq!(
        (eager.blobs_removed, eager.bytes_removed),
        (1, orphan.len() as u64),
        "only the unreferenced blob goes"
    );
    assert_eq!(eager.spool_files_removed, 0, "young spool files stay");
    assert_eq!(
        server.running.app.fills.len(),
        slow.len(),
        "the collections ran while every fill was in flight"
    );
    assert_eq!(server.blob_count(), 2);

    for (fill, (_, data)) in fills.into_iter().zip(&slow) {
        let (source, body) = fill.await.unwrap();
        assert_eq!(source, "remote");
        assert!(body == *data, "a fill in flight completes intact");
    }
    for (name, data) in &slow {
        let (source, body) =
            get_bytes(&server.url(&format!("/api/v1/remote/files/drip/{name}"))).await;
        assert_eq!(source, "cache");
        assert!(body == *data, "{name} is served from the cache intact");
        assert_eq!(upstream.hits(&format!("drip/{name}")), 1);
    }
    let (source, body) = get_bytes(&server.url("/api/v1/remote/uploads/kept.bin")).await;
    assert_eq!((source.as_str(), body), ("local", vec![2u8; 500]));
    assert_eq!(
        get_bytes(&server.url("/api/v1/remote/files/files/cached.bin"))
            .await
            .0,
        "cache"
    );
    assert_eq!(server.blob_count(), 2 + slow.len());
    let settled = gc(&server, Duration::ZERO).await;
    assert_eq!((settled.blobs_removed, settled.blobs_young), (0, 0));

    let deleted = client()
        .delete(server.url("/api/v1/remote/uploads/kept.bin"))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    let scheduled = schedule(
        server.running.app.storage.clone(),
        Duration::from_millis(100),
        Duration::ZERO,
        Duration::from_secs(86400),
    );
    let reaped = eventually(Duration::from_secs(10), || async {
        server.blob_count() == 1 + slow.len()
    })
    .await;
    scheduled.abort();
    assert!(
        reaped,
        "the scheduled collection reaped the deleted upload's blob"
    );
}
