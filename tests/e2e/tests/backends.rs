//! One suite for each storage seam, run against every backend: the metadata
//! store against SQLite and a real PostgreSQL, the TTL cache and locks
//! against the in-process ones and a real Redis.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use artifactapi::storage::kv::{Locks, MemoryCache, MemoryLocks, TtlCache};
use artifactapi::storage::meta::{ObjectQuery, StoredObject, Usage};
use artifactapi::storage::redis::{Redis, RedisCache, RedisLocks};
use artifactapi::storage::registry::{Referrer, RegistryStore, UploadPart, UploadSession};
use artifactapi::storage::{DatabaseConfig, MetaStore, ObjectRecord, Origin, SqlMeta};
use artifactapi_e2e::backends::{Postgres, RedisServer};
use artifactapi_e2e::eventually;
use artifactapi_e2e::tools::{run, which};
use bytes::Bytes;
use tokio::process::Command;
use tokio::sync::OnceCell;

/// One PostgreSQL server for this file's tests; each test has a database
/// of its own.
async fn postgres() -> &'static Postgres {
    static SERVER: OnceCell<Postgres> = OnceCell::const_new();
    SERVER.get_or_init(Postgres::start).await
}

/// Both stores, each fresh: SQLite in `dir` and a new PostgreSQL database.
async fn stores(dir: &std::path::Path, name: &str) -> Vec<(&'static str, SqlMeta)> {
    let sqlite = SqlMeta::sqlite(&dir.join("meta.db")).await.unwrap();
    let url = postgres().await.url(name);
    let pg = SqlMeta::open(&DatabaseConfig::parse(&url).unwrap())
        .await
        .unwrap();
    vec![("sqlite", sqlite), ("postgres", pg)]
}

fn sample() -> ObjectRecord {
    ObjectRecord {
        repo: "files".into(),
        path: "a/b.tar.gz".into(),
        digest: "ab".repeat(32),
        size: 42,
        content_type: "application/gzip".into(),
        origin: Origin::Remote,
        mutable: false,
        stored_at: 1_700_000_000,
        expires_at: None,
        upstream_etag: Some("\"x\"".into()),
        upstream_last_modified: None,
    }
}

fn at(repo: &str, path: &str, digest: &str, origin: Origin, mutable: bool) -> ObjectRecord {
    ObjectRecord {
        repo: repo.into(),
        path: path.into(),
        digest: digest.repeat(64),
        size: 10,
        origin,
        mutable,
        ..sample()
    }
}

async fn put_get_delete(meta: &SqlMeta) {
    let record = sample();
    meta.put(&record).await.unwrap();
    assert_eq!(
        meta.get("files", "a/b.tar.gz").await.unwrap(),
        Some(record.clone())
    );
    let mut newer = record.clone();
    newer.origin = Origin::Local;
    newer.mutable = true;
    newer.expires_at = Some(5);
    meta.put(&newer).await.unwrap();
    assert_eq!(
        meta.get("files", "a/b.tar.gz").await.unwrap(),
        Some(newer.clone())
    );
    assert_eq!(
        meta.delete("files", "a/b.tar.gz").await.unwrap(),
        Some(newer)
    );
    assert_eq!(meta.get("files", "a/b.tar.gz").await.unwrap(), None);
    assert_eq!(meta.delete("files", "a/b.tar.gz").await.unwrap(), None);
}

async fn listing_usage_references_and_hits(meta: &SqlMeta) {
    for (path, digest, origin, mutable) in [
        ("a/1", "a", Origin::Remote, false),
        ("a/2", "b", Origin::Remote, true),
        ("a/3", "a", Origin::Local, false),
        ("b/1", "c", Origin::Remote, false),
        ("a\u{10FFFF}", "d", Origin::Remote, false),
        ("A/upper", "e", Origin::Remote, false),
    ] {
        meta.put(&at("files", path, digest, origin, mutable))
            .await
            .unwrap();
    }
    meta.put(&at("other", "x", "e", Origin::Local, false))
        .await
        .unwrap();

    let paths = |objects: Vec<StoredObject>| -> Vec<String> {
        objects.into_iter().map(|o| o.record.path).collect()
    };
    let page = |after: Option<&str>, prefix: Option<&str>| ObjectQuery {
        after: after.map(str::to_string),
        prefix: prefix.map(str::to_string),
        limit: 2,
        ..ObjectQuery::default()
    };
    let first = meta.list("files", &page(None, Some("a/"))).await.unwrap();
    assert_eq!(paths(first), ["a/1", "a/2"]);
    let second = meta
        .list("files", &page(Some("a/2"), Some("a/")))
        .await
        .unwrap();
    assert_eq!(paths(second), ["a/3"]);
    let filtered = ObjectQuery {
        origin: Some(Origin::Remote),
        mutable: Some(false),
        limit: 10,
        ..ObjectQuery::default()
    };
    assert_eq!(
        paths(meta.list("files", &filtered).await.unwrap()),
        ["A/upper", "a/1", "a\u{10FFFF}", "b/1"],
        "paths sort byte-wise"
    );

    let usage = meta.usage(None).await.unwrap();
    assert_eq!(
        usage["files"],
        Usage {
            objects: 6,
            bytes: 60
        }
    );
    assert_eq!(usage["other"].objects, 1);
    assert_eq!(meta.usage(Some("other")).await.unwrap().len(), 1);

    let asked = ["a", "c", "f"].map(|d| d.repeat(64)).to_vec();
    let found = meta.referenced(&asked).await.unwrap();
    assert_eq!(found, HashSet::from(["a".repeat(64), "c".repeat(64)]));
    let many: Vec<String> = (0..1200).map(|i| format!("{i:064}")).collect();
    assert!(meta.referenced(&many).await.unwrap().is_empty());

    for _ in 0..3 {
        meta.record_hit("files", "a/1");
    }
    meta.record_hit("files", "gone");
    meta.flush_hits().await.unwrap();
    meta.put(&at("files", "a/1", "f", Origin::Remote, false))
        .await
        .unwrap();
    let listed = meta.list("files", &page(None, Some("a/1"))).await.unwrap();
    assert_eq!(listed[0].hits, 3, "hits survive a refreshed record");
    assert_eq!(listed[0].record.digest, "f".repeat(64));

    let removed = meta
        .delete_paths("files", &["a/1".into(), "b/1".into(), "none".into()])
        .await
        .unwrap();
    assert_eq!(removed, 2);
    assert_eq!(meta.usage(Some("files")).await.unwrap()["files"].objects, 4);
}

async fn sessions_referrers_and_images(meta: &SqlMeta) {
    let mut session = UploadSession {
        id: "u1".into(),
        repo: "docker".into(),
        image: "app".into(),
        size: 0,
        parts: Vec::new(),
        created_at: 10,
        updated_at: 10,
    };
    meta.put_upload(&session).await.unwrap();
    session.parts.push(UploadPart {
        key: "uploads/u1/0".into(),
        size: 5,
        sha256: "ab".repeat(32),
    });
    session.size = 5;
    session.updated_at = 20;
    meta.put_upload(&session).await.unwrap();
    assert_eq!(meta.upload("u1").await.unwrap(), Some(session.clone()));
    assert!(meta.idle_uploads(20).await.unwrap().is_empty());
    assert_eq!(meta.idle_uploads(21).await.unwrap(), vec![session]);
    meta.delete_upload("u1").await.unwrap();
    assert_eq!(meta.upload("u1").await.unwrap(), None);

    let referrer = Referrer {
        repo: "docker".into(),
        image: "app".into(),
        subject: "sha256:aa".into(),
        digest: "sha256:bb".into(),
        media_type: "application/vnd.oci.image.manifest.v1+json".into(),
        artifact_type: Some("application/example".into()),
        size: 3,
        annotations: None,
    };
    meta.put_referrer(&referrer).await.unwrap();
    meta.put_referrer(&referrer).await.unwrap();
    assert_eq!(
        meta.referrers("docker", "app", "sha256:aa").await.unwrap(),
        vec![referrer]
    );
    meta.delete_referrer("docker", "app", "sha256:bb")
        .await
        .unwrap();
    assert!(meta
        .referrers("docker", "app", "sha256:aa")
        .await
        .unwrap()
        .is_empty());

    for (repo, path) in [
        ("docker", "app/manifests/latest"),
        ("docker", "app/blobs/sha256:aa"),
        ("docker", "org/tool/manifests/1.0"),
        ("docker", "org/tool/manifests/2.0"),
        ("other", "x/manifests/1"),
        ("unlisted", "y/manifests/1"),
    ] {
        meta.put(&at(repo, path, "a", Origin::Local, false))
            .await
            .unwrap();
    }
    let images = meta
        .images(&["docker".into(), "other".into()])
        .await
        .unwrap();
    let expected: Vec<(String, String)> =
        [("docker", "app"), ("docker", "org/tool"), ("other", "x")]
            .iter()
            .map(|(r, i)| (r.to_string(), i.to_string()))
            .collect();
    assert_eq!(images, expected);
}

async fn secrets_are_made_once(meta: &SqlMeta) {
    let db = meta.database();
    let first = db.secret("key", b"one").await.unwrap();
    let second = db.secret("key", b"two").await.unwrap();
    assert_eq!(
        (first.as_slice(), second.as_slice()),
        (&b"one"[..], &b"one"[..])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metadata_suite_passes_on_sqlite_and_postgres() {
    let dir = tempfile::tempdir().unwrap();
    for (kind, meta) in stores(dir.path(), "suite").await {
        eprintln!("metadata suite on {kind}");
        put_get_delete(&meta).await;
        listing_usage_references_and_hits(&meta).await;
        sessions_referrers_and_images(&meta).await;
        secrets_are_made_once(&meta).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_opening_one_fresh_database_together_migrate_it_once() {
    let url = postgres().await.url("together");
    let config = DatabaseConfig::parse(&url).unwrap();
    let opened = futures::future::join_all((0..4).map(|_| SqlMeta::open(&config))).await;
    let stores: Vec<SqlMeta> = opened.into_iter().map(Result::unwrap).collect();
    stores[0].put(&sample()).await.unwrap();
    for store in &stores {
        assert_eq!(
            store.get("files", "a/b.tar.gz").await.unwrap(),
            Some(sample())
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_postgres_fails_fast_and_is_used_again_when_back() {
    let mut server = Postgres::start().await;
    let config = DatabaseConfig::parse(&server.url("outage")).unwrap();
    let meta = SqlMeta::open(&config).await.unwrap();
    meta.put(&sample()).await.unwrap();
    server.stop().await;
    let started = Instant::now();
    assert!(meta.get("files", "a/b.tar.gz").await.is_err());
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "a request waited {:?} for a database that is down",
        started.elapsed()
    );
    server.resume().await;
    let back = eventually(Duration::from_secs(10), || async {
        meta.get("files", "a/b.tar.gz").await.is_ok()
    })
    .await;
    assert!(back, "the store did not recover once PostgreSQL was back");
    assert_eq!(
        meta.get("files", "a/b.tar.gz").await.unwrap(),
        Some(sample())
    );
}

/// The cache suite: set, get, expiry, delete.
async fn cache_suite(cache: &dyn TtlCache) {
    cache
        .set("k", Bytes::from_static(b"v"), Duration::from_millis(300))
        .await
        .unwrap();
    cache
        .set("long", Bytes::from_static(b"w"), Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(cache.get("k").await.unwrap().as_deref(), Some(&b"v"[..]));
    assert_eq!(cache.get("missing").await.unwrap(), None);
    let expired = eventually(Duration::from_secs(2), || async {
        cache.get("k").await.unwrap().is_none()
    })
    .await;
    assert!(expired, "the entry expired");
    cache.delete("long").await.unwrap();
    assert_eq!(cache.get("long").await.unwrap(), None);
}

/// The lock suite for any implementation: exclusion, release on drop, and
/// a holder working longer than the lease keeps its lock.
async fn locks_suite(locks: Arc<dyn Locks>, lease: Duration) {
    let guard = locks.lock("a").await.unwrap();
    let other = locks.clone();
    let waiter = tokio::spawn(async move {
        let guard = other.lock("a").await.unwrap();
        (Instant::now(), guard.still_held().await)
    });
    let hold = lease * 3;
    tokio::time::sleep(hold).await;
    assert!(
        !waiter.is_finished(),
        "a lock held (and renewed) for three leases was taken over"
    );
    assert!(guard.still_held().await);
    let released = Instant::now();
    drop(guard);
    let (taken, held) = waiter.await.unwrap();
    assert!(held);
    assert!(
        taken.duration_since(released) < Duration::from_secs(1),
        "a released lock was taken only after {:?}",
        taken.duration_since(released)
    );
    let unrelated = tokio::time::timeout(Duration::from_secs(1), locks.lock("b")).await;
    assert!(unrelated.is_ok(), "locks of other names do not wait");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_and_lock_suites_pass_in_process_and_on_redis() {
    let server = RedisServer::start().await;
    let redis = Redis::new(&server.url()).unwrap();
    let lease = Duration::from_secs(1);
    eprintln!("cache and lock suites in process");
    cache_suite(&MemoryCache::new(1 << 20)).await;
    locks_suite(Arc::new(MemoryLocks::default()), lease).await;
    eprintln!("cache and lock suites on Redis");
    cache_suite(&RedisCache::new(redis.clone())).await;
    locks_suite(Arc::new(RedisLocks::new(redis.clone(), lease)), lease).await;
}

async fn redis_cli(server: &RedisServer, args: &[&str]) -> String {
    let output = run(
        Command::new(which("redis-cli", "apt-get install redis-tools"))
            .args(["-p", &server.port.to_string()])
            .args(args),
        Duration::from_secs(10),
    )
    .await;
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_holders_lock_lapses_and_a_stale_holder_is_refused() {
    let server = RedisServer::start().await;
    let redis = Redis::new(&server.url()).unwrap();
    let locks = RedisLocks::new(redis.clone(), Duration::from_secs(1));

    // A holder that died: its key stays until its lease lapses.
    redis_cli(
        &server,
        &["SET", "artifactapi/dead", "gone-token", "PX", "1500"],
    )
    .await;
    let started = Instant::now();
    let guard = locks.lock("dead").await.unwrap();
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1200) && waited < Duration::from_secs(4),
        "a dead holder's lock was taken over after {waited:?}"
    );
    assert!(guard.still_held().await);
    drop(guard);

    // A holder whose lease lapsed while another took the lock over.
    let stale = locks.lock("stale").await.unwrap();
    redis_cli(
        &server,
        &["SET", "artifactapi/stale", "newer", "PX", "60000"],
    )
    .await;
    assert!(
        !stale.still_held().await,
        "a stale holder believes it holds the lock"
    );
    drop(stale);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        redis_cli(&server, &["GET", "artifactapi/stale"]).await,
        "newer",
        "a stale holder removed the newer holder's lock"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_the_cache_and_locks_carry_on_in_process_and_use_it_again_when_back() {
    let mut server = RedisServer::start().await;
    let redis = Redis::new(&server.url()).unwrap();
    let cache = RedisCache::new(redis.clone());
    let locks: Arc<dyn Locks> = Arc::new(RedisLocks::new(redis.clone(), Duration::from_secs(1)));
    cache
        .set("shared", Bytes::from_static(b"1"), Duration::from_secs(60))
        .await
        .unwrap();
    assert!(redis.problem().is_none());

    server.stop().await;
    let started = Instant::now();
    cache
        .set("alone", Bytes::from_static(b"2"), Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(
        cache.get("alone").await.unwrap().as_deref(),
        Some(&b"2"[..])
    );
    locks_suite(locks.clone(), Duration::from_millis(200)).await;
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(!redis.ping().await);
    assert!(redis.problem().is_some(), "the outage is reported");

    server.resume().await;
    let back = eventually(Duration::from_secs(5), || redis.ping()).await;
    assert!(back, "Redis was not used again once it was back");
    assert!(redis.problem().is_none());
    assert_eq!(
        redis.resets(),
        1,
        "the restart with every key lost is noticed"
    );
    assert_eq!(
        cache.get("shared").await.unwrap(),
        None,
        "Redis came back empty"
    );
    cache
        .set("again", Bytes::from_static(b"3"), Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(redis_cli(&server, &["GET", "artifactapi/again"]).await, "3");
}
