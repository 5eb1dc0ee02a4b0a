//! Metadata: what each repository holds, behind a trait so the embedded
//! SQLite store and a shared PostgreSQL store serve the same code above it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{QueryBuilder, Row, Sqlite, SqlitePool};

/// Most values bound in one statement by the batch methods.
pub const BATCH: usize = 500;
/// How often hits counted in memory are written to the database.
const HIT_FLUSH_EVERY: Duration = Duration::from_secs(2);

/// Where an object came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Fetched from an upstream and cached.
    Remote,
    /// Uploaded to a local repository.
    Local,
}

impl Origin {
    /// `remote` or `local`, as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Remote => "remote",
            Origin::Local => "local",
        }
    }

    fn parse(text: &str) -> Origin {
        if text == "local" {
            Origin::Local
        } else {
            Origin::Remote
        }
    }
}

/// One object a repository holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectRecord {
    /// The repository.
    pub repo: String,
    /// The path below the repository.
    pub path: String,
    /// Lower-case hex sha256 of the bytes.
    pub digest: String,
    /// Length in bytes.
    pub size: u64,
    /// Media type served to clients.
    pub content_type: String,
    /// Cached or uploaded.
    pub origin: Origin,
    /// Whether the object was classified mutable.
    pub mutable: bool,
    /// When it was stored, seconds since the epoch.
    pub stored_at: i64,
    /// When it stops being fresh; None: never.
    pub expires_at: Option<i64>,
    /// The upstream's ETag, for revalidation.
    pub upstream_etag: Option<String>,
    /// The upstream's Last-Modified, for revalidation and quarantine.
    pub upstream_last_modified: Option<String>,
}

/// An object as the management API lists it: its record and how often it
/// was served from storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredObject {
    /// The record.
    pub record: ObjectRecord,
    /// Times it was served from storage (written in batches, see
    /// [`MetaStore::record_hit`]).
    pub hits: u64,
}

/// Which objects of one repository [`MetaStore::list`] returns: those
/// matching every filter that is set, in path order, at most `limit`.
#[derive(Debug, Clone, Default)]
pub struct ObjectQuery {
    /// Only paths after this one (keyset pagination).
    pub after: Option<String>,
    /// Only paths starting with this.
    pub prefix: Option<String>,
    /// Only objects of this origin.
    pub origin: Option<Origin>,
    /// Only mutable (true) or immutable (false) objects.
    pub mutable: Option<bool>,
    /// The most objects returned.
    pub limit: u32,
}

/// What a repository holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Objects recorded.
    pub objects: u64,
    /// The sum of their sizes (blobs shared between paths count each time).
    pub bytes: u64,
}

/// The metadata store.
#[async_trait]
pub trait MetaStore: Send + Sync {
    /// The object at `path` of `repo`.
    async fn get(&self, repo: &str, path: &str) -> anyhow::Result<Option<ObjectRecord>>;
    /// Inserts or replaces an object; the hits counted for its path stay.
    async fn put(&self, record: &ObjectRecord) -> anyhow::Result<()>;
    /// Removes an object and returns what was removed.
    async fn delete(&self, repo: &str, path: &str) -> anyhow::Result<Option<ObjectRecord>>;
    /// Removes these paths of `repo` (any number) and returns how many
    /// objects were removed.
    async fn delete_paths(&self, repo: &str, paths: &[String]) -> anyhow::Result<u64>;
    /// A page of `repo`'s objects in path order.
    async fn list(&self, repo: &str, query: &ObjectQuery) -> anyhow::Result<Vec<StoredObject>>;
    /// Objects and bytes held per repository: every repository holding
    /// something, or only `repo`.
    async fn usage(&self, repo: Option<&str>) -> anyhow::Result<BTreeMap<String, Usage>>;
    /// Which of `digests` (lower-case hex, any number) some object
    /// references; the garbage collector asks in batches.
    async fn referenced(&self, digests: &[String]) -> anyhow::Result<HashSet<String>>;
    /// Counts one serve of an object from storage. Cheap enough for every
    /// request: it only bumps a counter in memory; counts reach the
    /// database in batches every few seconds and on [`MetaStore::flush_hits`].
    fn record_hit(&self, repo: &str, path: &str);
    /// Writes the hits counted in memory so far.
    async fn flush_hits(&self) -> anyhow::Result<()>;
    /// Statements sent to the database for the store's callers since it
    /// was opened (the batched hit-count writes in the background aside).
    fn queries(&self) -> u64;
}

/// Shards of the hit counts: requests for different objects rarely wait
/// on one another to count.
const HIT_SHARDS: usize = 16;

/// Hits counted in memory, by repository and path, in shards chosen by
/// the pair's hash.
#[derive(Default)]
struct PendingHits {
    shards: [Mutex<HashMap<String, HashMap<String, u64>>>; HIT_SHARDS],
}

impl PendingHits {
    fn count(&self, repo: &str, path: &str) {
        let shard = &self.shards[shard_of(repo, path)];
        let mut counts = shard.lock().expect("hit counts poisoned");
        match counts.get_mut(repo) {
            Some(paths) => match paths.get_mut(path) {
                Some(count) => *count += 1,
                None => {
                    paths.insert(path.to_string(), 1);
                }
            },
            None => {
                counts.insert(repo.to_string(), HashMap::from([(path.to_string(), 1)]));
            }
        }
    }

    /// Takes every count, leaving zero.
    fn take(&self) -> HashMap<String, HashMap<String, u64>> {
        let mut all: HashMap<String, HashMap<String, u64>> = HashMap::new();
        for shard in &self.shards {
            let taken = std::mem::take(&mut *shard.lock().expect("hit counts poisoned"));
            for (repo, paths) in taken {
                all.entry(repo).or_default().extend(paths);
            }
        }
        all
    }

    /// Puts counts that could not be written back, to be written next time.
    fn restore(&self, batch: HashMap<String, HashMap<String, u64>>) {
        for (repo, paths) in batch {
            for (path, count) in paths {
                let shard = &self.shards[shard_of(&repo, &path)];
                let mut counts = shard.lock().expect("hit counts poisoned");
                *counts
                    .entry(repo.clone())
                    .or_default()
                    .entry(path)
                    .or_default() += count;
            }
        }
    }
}

/// The shard of a repository's path: FNV-1a over both.
fn shard_of(repo: &str, path: &str) -> usize {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in repo.bytes().chain([0]).chain(path.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    (hash % HIT_SHARDS as u64) as usize
}

/// The embedded store: one SQLite file.
pub struct SqliteMeta {
    pool: SqlitePool,
    hits: Arc<PendingHits>,
    queries: AtomicU64,
}

impl SqliteMeta {
    /// Opens (creating if needed) the database at `path` and migrates it.
    pub async fn open(path: &Path) -> anyhow::Result<SqliteMeta> {
        let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(std::time::Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(options)
            .await?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        let hits = Arc::new(PendingHits::default());
        tokio::spawn(flush_hits_regularly(pool.clone(), Arc::downgrade(&hits)));
        Ok(SqliteMeta {
            pool,
            hits,
            queries: AtomicU64::new(0),
        })
    }

    /// The pool, counting the statement about to be sent.
    pub(super) fn db(&self) -> &SqlitePool {
        self.queries.fetch_add(1, Ordering::Relaxed);
        &self.pool
    }
}

/// Writes pending hits every [`HIT_FLUSH_EVERY`] until the store is dropped.
async fn flush_hits_regularly(pool: SqlitePool, hits: Weak<PendingHits>) {
    loop {
        tokio::time::sleep(HIT_FLUSH_EVERY).await;
        let Some(hits) = hits.upgrade() else {
            return;
        };
        if let Err(e) = write_hits(&pool, &hits).await {
            tracing::warn!(error = %format!("{e:#}"), "cannot record hits; will retry");
        }
    }
}

/// Adds the pending hits to the database in one transaction; on failure
/// they are put back to be written next time.
async fn write_hits(pool: &SqlitePool, hits: &PendingHits) -> anyhow::Result<()> {
    let batch = hits.take();
    if batch.is_empty() {
        return Ok(());
    }
    let result = async {
        let mut tx = pool.begin().await?;
        for (repo, paths) in &batch {
            for (path, count) in paths {
                sqlx::query("UPDATE objects SET hits = hits + ? WHERE repo = ? AND path = ?")
                    .bind(*count as i64)
                    .bind(repo)
                    .bind(path)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        tx.commit().await?;
        Ok::<_, anyhow::Error>(())
    }
    .await;
    if result.is_err() {
        hits.restore(batch);
    }
    result
}

/// The smallest string above every string that starts with `prefix`, or
/// None when there is none (the prefix is all `char::MAX`).
fn prefix_end(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let next = match last {
            '\u{D7FF}' => Some('\u{E000}'),
            c => char::from_u32(c as u32 + 1),
        };
        if let Some(next) = next {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

fn record_from_row(row: &sqlx::sqlite::SqliteRow) -> anyhow::Result<ObjectRecord> {
    Ok(ObjectRecord {
        repo: row.try_get("repo")?,
        path: row.try_get("path")?,
        digest: row.try_get("digest")?,
        size: row.try_get::<i64, _>("size")? as u64,
        content_type: row.try_get("content_type")?,
        origin: Origin::parse(row.try_get::<&str, _>("origin")?),
        mutable: row.try_get::<i64, _>("mutable")? != 0,
        stored_at: row.try_get("stored_at")?,
        expires_at: row.try_get("expires_at")?,
        upstream_etag: row.try_get("upstream_etag")?,
        upstream_last_modified: row.try_get("upstream_last_modified")?,
    })
}

const COLUMNS: &str = "repo, path, digest, size, content_type, origin, mutable, stored_at, \
                       expires_at, upstream_etag, upstream_last_modified";

#[async_trait]
impl MetaStore for SqliteMeta {
    async fn get(&self, repo: &str, path: &str) -> anyhow::Result<Option<ObjectRecord>> {
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM objects WHERE repo = ? AND path = ?"
        ))
        .bind(repo)
        .bind(path)
        .fetch_optional(self.db())
        .await?;
        row.as_ref().map(record_from_row).transpose()
    }

    async fn put(&self, r: &ObjectRecord) -> anyhow::Result<()> {
        sqlx::query(&format!(
            "INSERT INTO objects ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT (repo, path) DO UPDATE SET digest = excluded.digest, \
             size = excluded.size, content_type = excluded.content_type, \
             origin = excluded.origin, mutable = excluded.mutable, \
             stored_at = excluded.stored_at, expires_at = excluded.expires_at, \
             upstream_etag = excluded.upstream_etag, \
             upstream_last_modified = excluded.upstream_last_modified"
        ))
        .bind(&r.repo)
        .bind(&r.path)
        .bind(&r.digest)
        .bind(r.size as i64)
        .bind(&r.content_type)
        .bind(r.origin.as_str())
        .bind(r.mutable as i64)
        .bind(r.stored_at)
        .bind(r.expires_at)
        .bind(&r.upstream_etag)
        .bind(&r.upstream_last_modified)
        .execute(self.db())
        .await?;
        Ok(())
    }

    async fn delete(&self, repo: &str, path: &str) -> anyhow::Result<Option<ObjectRecord>> {
        let row = sqlx::query(&format!(
            "DELETE FROM objects WHERE repo = ? AND path = ? RETURNING {COLUMNS}"
        ))
        .bind(repo)
        .bind(path)
        .fetch_optional(self.db())
        .await?;
        row.as_ref().map(record_from_row).transpose()
    }

    async fn delete_paths(&self, repo: &str, paths: &[String]) -> anyhow::Result<u64> {
        let mut removed = 0;
        for batch in paths.chunks(BATCH) {
            let mut query = QueryBuilder::<Sqlite>::new("DELETE FROM objects WHERE repo = ");
            query.push_bind(repo).push(" AND path IN (");
            let mut list = query.separated(", ");
            for path in batch {
                list.push_bind(path);
            }
            query.push(")");
            removed += query.build().execute(self.db()).await?.rows_affected();
        }
        Ok(removed)
    }

    async fn list(&self, repo: &str, q: &ObjectQuery) -> anyhow::Result<Vec<StoredObject>> {
        let mut query = QueryBuilder::<Sqlite>::new(format!(
            "SELECT {COLUMNS}, hits FROM objects WHERE repo = "
        ));
        query.push_bind(repo);
        if let Some(after) = &q.after {
            query.push(" AND path > ").push_bind(after);
        }
        if let Some(prefix) = q.prefix.as_ref().filter(|p| !p.is_empty()) {
            query.push(" AND path >= ").push_bind(prefix);
            if let Some(end) = prefix_end(prefix) {
                query.push(" AND path < ").push_bind(end);
            }
        }
        if let Some(origin) = q.origin {
            query.push(" AND origin = ").push_bind(origin.as_str());
        }
        if let Some(mutable) = q.mutable {
            query.push(" AND mutable = ").push_bind(mutable as i64);
        }
        query
            .push(" ORDER BY path LIMIT ")
            .push_bind(i64::from(q.limit));
        let rows = query.build().fetch_all(self.db()).await?;
        rows.iter()
            .map(|row| {
                Ok(StoredObject {
                    record: record_from_row(row)?,
                    hits: row.try_get::<i64, _>("hits")?.max(0) as u64,
                })
            })
            .collect()
    }

    async fn usage(&self, repo: Option<&str>) -> anyhow::Result<BTreeMap<String, Usage>> {
        let mut query = QueryBuilder::<Sqlite>::new(
            "SELECT repo, COUNT(*) AS objects, COALESCE(SUM(size), 0) AS bytes FROM objects",
        );
        if let Some(repo) = repo {
            query.push(" WHERE repo = ").push_bind(repo);
        }
        query.push(" GROUP BY repo");
        let rows = query.build().fetch_all(self.db()).await?;
        rows.iter()
            .map(|row| {
                let usage = Usage {
                    objects: row.try_get::<i64, _>("objects")?.max(0) as u64,
                    bytes: row.try_get::<i64, _>("bytes")?.max(0) as u64,
                };
                Ok((row.try_get("repo")?, usage))
            })
            .collect()
    }

    async fn referenced(&self, digests: &[String]) -> anyhow::Result<HashSet<String>> {
        let mut found = HashSet::new();
        for batch in digests.chunks(BATCH) {
            let mut query = QueryBuilder::<Sqlite>::new(
                "SELECT DISTINCT digest FROM objects WHERE digest IN (",
            );
            let mut list = query.separated(", ");
            for digest in batch {
                list.push_bind(digest);
            }
            query.push(")");
            for row in query.build().fetch_all(self.db()).await? {
                found.insert(row.try_get("digest")?);
            }
        }
        Ok(found)
    }

    fn record_hit(&self, repo: &str, path: &str) {
        self.hits.count(repo, path);
    }

    async fn flush_hits(&self) -> anyhow::Result<()> {
        write_hits(self.db(), &self.hits).await
    }

    fn queries(&self) -> u64 {
        self.queries.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[tokio::test]
    async fn put_get_delete() {
        let dir = tempfile::tempdir().unwrap();
        let meta = SqliteMeta::open(&dir.path().join("meta.db")).await.unwrap();
        let record = sample();
        meta.put(&record).await.unwrap();
        assert_eq!(
            meta.get("files", "a/b.tar.gz").await.unwrap(),
            Some(record.clone())
        );
        let mut newer = record.clone();
        newer.origin = Origin::Local;
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

    #[tokio::test]
    async fn listing_usage_references_and_hits() {
        let dir = tempfile::tempdir().unwrap();
        let meta = SqliteMeta::open(&dir.path().join("meta.db")).await.unwrap();
        for (path, digest, origin, mutable) in [
            ("a/1", "a", Origin::Remote, false),
            ("a/2", "b", Origin::Remote, true),
            ("a/3", "a", Origin::Local, false),
            ("b/1", "c", Origin::Remote, false),
            ("a\u{10FFFF}", "d", Origin::Remote, false),
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
            ["a/1", "a\u{10FFFF}", "b/1"]
        );

        let usage = meta.usage(None).await.unwrap();
        assert_eq!(
            usage["files"],
            Usage {
                objects: 5,
                bytes: 50
            }
        );
        assert_eq!(usage["other"].objects, 1);
        assert_eq!(meta.usage(Some("other")).await.unwrap().len(), 1);

        let asked = ["a", "c", "f"].map(|d| d.repeat(64)).to_vec();
        let found = meta.referenced(&asked).await.unwrap();
        assert_eq!(found, HashSet::from(["a".repeat(64), "c".repeat(64)]));

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
        assert_eq!(meta.usage(Some("files")).await.unwrap()["files"].objects, 3);
    }

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end("a/").as_deref(), Some("a0"));
        assert_eq!(prefix_end("a\u{D7FF}").as_deref(), Some("a\u{E000}"));
        assert_eq!(prefix_end("a\u{10FFFF}").as_deref(), Some("b"));
        assert_eq!(prefix_end("\u{10FFFF}"), None);
    }
}
