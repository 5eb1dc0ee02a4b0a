//! Three replicas of the release binary on one PostgreSQL, one Redis and
//! one S3 bucket (s3s-fs), behind nginx balancing request by request: they
//! behave as one server.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use artifactapi_e2e::backends::{files_below, SharedBackends};
use artifactapi_e2e::cluster::{Balancer, Replica};
use artifactapi_e2e::oci::{push, skopeo, test_image};
use artifactapi_e2e::{client, eventually, generated, get_json, header, Upstream};
use futures::StreamExt as _;
use sha2::{Digest as _, Sha256};

const PASSWORD: &str = "cluster-password";

fn remotes(upstream: &Upstream) -> String {
    format!(
        r#"
auth:
  users:
    ci:
      password_env: CLUSTER_PASSWORD
      write: ["*"]
remotes:
  files:
    type: remote
    package: generic
    base_url: "{}"
  uploads:
    type: local
    package: generic
  docker-local:
    type: local
    package: docker
"#,
        upstream.url()
    )
}

struct Cluster {
    upstream: Upstream,
    shared: SharedBackends,
    replicas: Vec<Replica>,
    balancer: Balancer,
}

async fn cluster() -> Cluster {
    let upstream = Upstream::start().await;
    let shared = SharedBackends::start().await;
    let config = remotes(&upstream);
    let env = [("CLUSTER_PASSWORD", PASSWORD)];
    // Started together on an empty database: one migrates, the others wait.
    let (a, b, c) = tokio::join!(
        Replica::start(&config, &shared, &env),
        Replica::start(&config, &shared, &env),
        Replica::start(&config, &shared, &env),
    );
    let replicas = vec![a, b, c];
    let ports: Vec<u16> = replicas.iter().map(|r| r.port).collect();
    let balancer = Balancer::start(&ports).await;
    Cluster {
        upstream,
        shared,
        replicas,
        balancer,
    }
}

fn sha256(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Every blob in the bucket holds the bytes its name says.
fn assert_no_partial_blob(shared: &SharedBackends) {
    for file in files_below(&shared.blobs_dir()) {
        let name = file.file_name().unwrap().to_string_lossy().to_string();
        let bytes = std::fs::read(&file).unwrap();
        assert_eq!(
            sha256(&bytes),
            name,
            "{} is not its digest's bytes",
            file.display()
        );
    }
}

/// A GET's status, `X-Artifact-Source` and body.
async fn fetch(url: &str) -> (u16, String, Vec<u8>) {
    let response = client().get(url).send().await.unwrap();
    let status = response.status().as_u16();
    let source = header(response.headers(), "x-artifact-source");
    (status, source, response.bytes().await.unwrap().to_vec())
}

/// Starts a blob upload to image `image` of `docker-local` on `replica`
/// and returns its path (with query) for any replica.
async fn start_upload(replica: &Replica, image: &str) -> String {
    let started = client()
        .post(replica.url(&format!("/v2/docker-local/{image}/blobs/uploads/")))
        .basic_auth("ci", Some(PASSWORD))
        .send()
        .await
        .unwrap();
    assert_eq!(started.status(), 202);
    let location = header(started.headers(), "location");
    location
        .strip_prefix(&format!("http://{}", replica.host()))
        .unwrap_or(&location)
        .to_string()
}

/// GETs `url` and returns the time to the first body byte, and the body's
/// sha256 and length.
async fn timed_fetch(url: String) -> (Duration, String, usize) {
    let started = Instant::now();
    let response = client().get(&url).send().await.unwrap();
    assert_eq!(response.status(), 200, "{url}");
    let mut body = response.bytes_stream();
    let mut first = None;
    let mut hasher = Sha256::new();
    let mut len = 0;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.unwrap();
        if first.is_none() && !chunk.is_empty() {
            first = Some(started.elapsed());
        }
        len += chunk.len();
        hasher.update(&chunk);
    }
    (first.unwrap_or_default(), hex(&hasher.finalize()), len)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_on_shared_backends_serve_as_one() {
    let c = cluster().await;
    let client = client();
    let creds = format!("ci:{PASSWORD}");

    // skopeo pushes a multi-layer image through the balancer: its requests
    // (token, POST, PATCH, PUT, manifest) land on different replicas, and a
    // token one replica issued is honoured by the others.
    let image = test_image().await;
    let work = tempfile::tempdir().unwrap();
    let source = image.write_layout(&work.path().join("layout"));
    let pushed = push(
        &source,
        &format!("{}/docker-local/img:v1", c.balancer.host()),
        &creds,
        "oci",
        work.path(),
    )
    .await;
    assert_eq!(pushed, image.manifest_digest);
    for (i, replica) in c.replicas.iter().enumerate() {
        let out = work.path().join(format!("pulled-{i}"));
        skopeo(&[
            "copy",
            "--src-tls-verify=false",
            &format!("docker://{}/docker-local/img:v1", replica.host()),
            &format!("oci:{}:v1", out.display()),
        ])
        .await;
        image.assert_oci_copy(&out, "v1");
    }

    // A blob pushed in three Content-Range chunks: POST, the PATCHes and
    // the PUT each on another replica.
    let blob: Vec<u8> = (0..3 * 1024 * 1024 + 17).map(|i| (i % 253) as u8).collect();
    let digest = format!("sha256:{}", sha256(&blob));
    let [r0, r1, r2] = [&c.replicas[0], &c.replicas[1], &c.replicas[2]];
    let path = start_upload(r0, "chunked").await;
    let chunks: Vec<&[u8]> = blob.chunks(1024 * 1024 + 5).collect();
    let mut offset = 0;
    for (i, chunk) in chunks[..chunks.len() - 1].iter().enumerate() {
        let replica = &c.replicas[1 + i % 2];
        let end = offset + chunk.len() - 1;
        let response = client
            .patch(replica.url(&path))
            .basic_auth("ci", Some(PASSWORD))
            .header("content-type", "application/octet-stream")
            .header("content-range", format!("{offset}-{end}"))
            .body(chunk.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202, "PATCH {i} on replica {}", 1 + i % 2);
        assert_eq!(header(response.headers(), "range"), format!("0-{end}"));
        offset = end + 1;
    }
    let last = chunks[chunks.len() - 1];
    let separator = if path.contains('?') { '&' } else { '?' };
    let done = client
        .put(r2.url(&format!("{path}{separator}digest={digest}")))
        .basic_auth("ci", Some(PASSWORD))
        .header("content-type", "application/octet-stream")
        .header(
            "content-range",
            format!("{offset}-{}", offset + last.len() - 1),
        )
        .body(last.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), 201, "{}", done.text().await.unwrap());
    for replica in [r0, r1, r2] {
        let (status, _, body) =
            fetch(&replica.url(&format!("/v2/docker-local/chunked/blobs/{digest}"))).await;
        assert_eq!(status, 200);
        assert!(
            body == blob,
            "the chunked blob differs on replica {}",
            replica.port
        );
    }

    // 30 clients spread over the replicas miss one 64 MiB file, half of
    // them at once, half while the fill is under way (seconds after it
    // began): one upstream GET, 30 complete and correct bodies.
    let len = 64 << 20;
    let expected = sha256(&generated(len));
    let path = format!("slow/{len}/3");
    let urls: Vec<String> = (0..30)
        .map(|i| c.replicas[i % 3].url(&format!("/api/v1/remote/files/{path}")))
        .collect();
    let results =
        futures::future::join_all(urls.into_iter().enumerate().map(|(i, url)| async move {
            if i >= 15 {
                tokio::time::sleep(Duration::from_millis(2500)).await;
            }
            timed_fetch(url).await
        }))
        .await;
    assert_eq!(
        c.upstream.hits(&path),
        1,
        "concurrent misses over the cluster fetched more than once"
    );
    let mut first_bytes: Vec<(usize, Duration)> = Vec::new();
    for (i, (first, digest, got)) in results.iter().enumerate() {
        assert_eq!(
            (*got, digest.as_str()),
            (len, expected.as_str()),
            "client {i}"
        );
        first_bytes.push((i % 3, *first));
    }
    eprintln!("first-byte times over 30 clients (replica, time): {first_bytes:?}");

    // A flush on one replica is seen by the next request on any other.
    c.upstream.put("doc.txt", "version 1");
    for replica in &c.replicas {
        let (status, _, body) = fetch(&replica.url("/api/v1/remote/files/files/doc.txt")).await;
        assert_eq!((status, body.as_slice()), (200, &b"version 1"[..]));
    }
    let (_, source, _) = fetch(&r1.url("/api/v1/remote/files/files/doc.txt")).await;
    assert_eq!(source, "cache");
    c.upstream.put("doc.txt", "version 2");
    let flushed = client
        .put(r0.url("/cache/flush?repo=files&pattern=doc"))
        .basic_auth("ci", Some(PASSWORD))
        .send()
        .await
        .unwrap();
    assert_eq!(flushed.status(), 200);
    for replica in [r1, r2] {
        let (_, _, body) = fetch(&replica.url("/api/v1/remote/files/files/doc.txt")).await;
        assert_eq!(
            body, b"version 2",
            "replica {} served a flushed copy",
            replica.port
        );
    }

    // An upload deleted on one replica is gone from the others at once.
    let uploaded = client
        .put(r0.url("/api/v1/remote/uploads/notes/a.txt"))
        .basic_auth("ci", Some(PASSWORD))
        .body("uploaded")
        .send()
        .await
        .unwrap();
    assert!(uploaded.status().is_success());
    assert_eq!(
        fetch(&r2.url("/api/v1/remote/uploads/notes/a.txt")).await.2,
        b"uploaded"
    );
    let deleted = client
        .delete(r1.url("/api/v1/remote/uploads/notes/a.txt"))
        .basic_auth("ci", Some(PASSWORD))
        .send()
        .await
        .unwrap();
    assert!(deleted.status().is_success(), "{}", deleted.status());
    assert_eq!(
        fetch(&r2.url("/api/v1/remote/uploads/notes/a.txt")).await.0,
        404
    );
    assert_eq!(
        fetch(&r0.url("/api/v1/remote/uploads/notes/a.txt")).await.0,
        404
    );

    // A tag deleted on one replica is gone from the others at once.
    let tag = r0.url("/v2/docker-local/img/manifests/v1");
    let manifest = client
        .get(&tag)
        .header("accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .await
        .unwrap();
    assert_eq!(manifest.status(), 200);
    let removed = client
        .delete(&tag)
        .basic_auth("ci", Some(PASSWORD))
        .send()
        .await
        .unwrap();
    assert_eq!(removed.status(), 202, "{}", removed.text().await.unwrap());
    for replica in [r1, r2] {
        let status = client
            .get(replica.url("/v2/docker-local/img/manifests/v1"))
            .header("accept", "application/vnd.oci.image.manifest.v1+json")
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(
            status, 404,
            "replica {} still serves a deleted tag",
            replica.port
        );
    }

    // Statistics are the cluster's: each replica counted some of the 10
    // hits of doc.txt (4 above, 6 now) and of the 32 misses (the 30 clients
    // of the big file, doc.txt's first fetch and its fetch after the flush).
    for replica in &c.replicas {
        for _ in 0..2 {
            fetch(&replica.url("/api/v1/remote/files/files/doc.txt")).await;
        }
    }
    let summed = eventually(Duration::from_secs(10), || async {
        let stats = get_json(&r2.url("/api/v2/stats")).await;
        let files = &stats["repositories"]["files"];
        (files["hits"].as_u64(), files["misses"].as_u64()) == (Some(10), Some(32))
    })
    .await;
    assert!(
        summed,
        "stats are not summed: {}",
        get_json(&r2.url("/api/v2/stats")).await
    );
    let stats = get_json(&r0.url("/api/v2/stats")).await;
    let shown = stats["repositories"]["files"]["bytes_fetched"]
        .as_u64()
        .unwrap();
    assert!(shown >= len as u64, "bytes fetched {shown}");

    assert_no_partial_blob(&c.shared);
    let config = get_json(&r0.url("/config")).await.to_string();
    assert!(
        config.contains("\"postgres://postgres@127.0.0.1"),
        "{config}"
    );
    assert!(!config.contains(artifactapi_e2e::backends::S3_SECRET_KEY));
    assert!(!config.contains(PASSWORD));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_mid_fill_and_mid_upload_leaves_nothing_partial_and_others_complete_them()
{
    let mut c = cluster().await;
    let client = client();
    let len = 48 << 20;
    let path = format!("slow/{len}/10");
    let urls: Vec<String> = c
        .replicas
        .iter()
        .map(|r| r.url(&format!("/api/v1/remote/files/{path}")))
        .collect();
    let leader_url = urls[0].clone();
    let received = Arc::new(AtomicUsize::new(0));
    let leader_received = received.clone();
    let leader = tokio::spawn(async move {
        let response = artifactapi_e2e::client()
            .get(&leader_url)
            .send()
            .await
            .unwrap();
        let mut body = response.bytes_stream();
        while let Some(chunk) = body.next().await {
            match chunk {
                Ok(chunk) => leader_received.fetch_add(chunk.len(), Ordering::SeqCst),
                Err(_) => return,
            };
        }
    });

    // An upload started on replica 1 whose PATCH streams slowly into
    // replica 0.
    let blob: Vec<u8> = (0..8 * 1024 * 1024).map(|i| (i % 241) as u8).collect();
    let digest = format!("sha256:{}", sha256(&blob));
    let upload = start_upload(&c.replicas[1], "killed").await;
    let slow_chunks: Vec<bytes::Bytes> = blob
        .chunks(256 * 1024)
        .map(bytes::Bytes::copy_from_slice)
        .collect();
    let sent = Arc::new(AtomicUsize::new(0));
    let body_sent = sent.clone();
    let slow_body = futures::stream::iter(slow_chunks).then(move |chunk| {
        let sent = body_sent.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            sent.fetch_add(chunk.len(), Ordering::SeqCst);
            Ok::<_, std::io::Error>(chunk)
        }
    });
    let patch_url = c.replicas[0].url(&upload);
    let patch = tokio::spawn(async move {
        let _ = artifactapi_e2e::client()
            .patch(&patch_url)
            .basic_auth("ci", Some(PASSWORD))
            .header("content-type", "application/octet-stream")
            .body(reqwest::Body::wrap_stream(slow_body))
            .send()
            .await;
    });

    // Kill the replica once both are well under way.
    let under_way = eventually(Duration::from_secs(20), || async {
        received.load(Ordering::SeqCst) >= 4 << 20 && sent.load(Ordering::SeqCst) >= 1 << 20
    })
    .await;
    assert!(under_way, "the fill and the upload did not get going");
    assert_eq!(c.upstream.hits(&path), 1);
    c.replicas[0].kill().await;
    let _ = leader.await;
    let _ = patch.await;
    assert_no_partial_blob(&c.shared);

    // A client retrying the fill on another replica waits out the dead
    // leader's lease at most, then gets the whole body.
    let retried = Instant::now();
    let (_, got_digest, got) = timed_fetch(urls[1].clone()).await;
    assert_eq!((got, got_digest), (len, sha256(&generated(len))));
    assert_eq!(c.upstream.hits(&path), 2);
    assert!(
        retried.elapsed() < Duration::from_secs(30),
        "the retry took {:?}",
        retried.elapsed()
    );
    let (_, source, _) = fetch(&urls[2]).await;
    assert_eq!(source, "cache");

    // The upload goes on where the dead replica left it: nothing of the
    // interrupted PATCH counts, the whole blob is sent again and completed.
    let status = client
        .get(c.replicas[2].url(&upload))
        .basic_auth("ci", Some(PASSWORD))
        .send()
        .await
        .unwrap();
    assert_eq!(status.status(), 204);
    assert_eq!(
        header(status.headers(), "range"),
        "0-0",
        "an interrupted chunk was kept"
    );
    let separator = if upload.contains('?') { '&' } else { '?' };
    let done = client
        .put(c.replicas[1].url(&format!("{upload}{separator}digest={digest}")))
        .basic_auth("ci", Some(PASSWORD))
        .header("content-type", "application/octet-stream")
        .body(blob.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), 201, "{}", done.text().await.unwrap());
    let (status, _, body) =
        fetch(&c.replicas[2].url(&format!("/v2/docker-local/killed/blobs/{digest}"))).await;
    assert_eq!(status, 200);
    assert!(body == blob, "the resumed upload's blob differs");
    assert_no_partial_blob(&c.shared);
    assert_eq!(c.replicas[1].spool_files(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hits_are_served_while_redis_is_down_and_it_is_used_again_when_back() {
    let mut c = cluster().await;
    c.upstream.put("a.txt", "cached before the outage");
    let a = |i: usize| c.replicas[i].url("/api/v1/remote/files/files/a.txt");
    assert_eq!(fetch(&a(0)).await.0, 200);
    let health = get_json(&c.replicas[1].url("/health")).await;
    assert_eq!(health["status"], "ok", "{health}");

    c.shared.redis.stop().await;
    for i in 0..3 {
        let (status, source, body) = fetch(&a(i)).await;
        assert_eq!((status, source.as_str()), (200, "cache"));
        assert_eq!(body, b"cached before the outage");
    }
    c.upstream.put("b.txt", "fetched during the outage");
    let b = c.replicas[2].url("/api/v1/remote/files/files/b.txt");
    assert_eq!(fetch(&b).await.2, b"fetched during the outage");
    let health = get_json(&c.replicas[1].url("/health")).await;
    assert_eq!(health["status"], "degraded", "{health}");
    assert!(health["problems"].to_string().contains("Redis"), "{health}");

    c.shared.redis.resume().await;
    let recovered = eventually(Duration::from_secs(10), || async {
        get_json(&c.replicas[1].url("/health")).await["status"] == "ok"
    })
    .await;
    assert!(recovered, "the replica did not use Redis again");
    // Redis came back empty; nothing served is wrong for it.
    for i in 0..3 {
        assert_eq!(fetch(&a(i)).await.2, b"cached before the outage");
    }
    assert_eq!(fetch(&b).await.2, b"fetched during the outage");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_postgres_gets_a_clear_503_fast_and_the_cluster_recovers() {
    let mut c = cluster().await;
    c.upstream.put("a.txt", "cached");
    let a = c.replicas[0].url("/api/v1/remote/files/files/a.txt");
    assert_eq!(fetch(&a).await.0, 200);
    assert_eq!(fetch(&a).await.1, "cache");

    c.shared.postgres.stop().await;
    c.upstream.put("new.txt", "needs the database");
    let new = c.replicas[1].url("/api/v1/remote/files/files/new.txt");
    let started = Instant::now();
    let response = client().get(&new).send().await.unwrap();
    let waited = started.elapsed();
    assert_eq!(response.status(), 503);
    assert!(!header(response.headers(), "retry-after").is_empty());
    let body: serde_json::Value = response.json().await.unwrap();
    assert!(body.to_string().contains("STORAGE_UNAVAILABLE"), "{body}");
    assert!(
        waited < Duration::from_secs(10),
        "answered after {waited:?}"
    );
    let (status, source, body) = fetch(&a).await;
    assert_eq!(
        (status, source.as_str(), body.as_slice()),
        (200, "cache", &b"cached"[..]),
        "a cache hit is served while PostgreSQL is down"
    );
    let health = get_json(&c.replicas[2].url("/health")).await;
    assert_eq!(health["status"], "degraded", "{health}");

    c.shared.postgres.resume().await;
    let recovered = eventually(Duration::from_secs(20), || async {
        fetch(&new).await.0 == 200
    })
    .await;
    assert!(
        recovered,
        "the cluster did not recover once PostgreSQL was back"
    );
    assert_eq!(fetch(&new).await.2, b"needs the database");
    assert_eq!(
        get_json(&c.replicas[2].url("/health")).await["status"],
        "ok"
    );
}
