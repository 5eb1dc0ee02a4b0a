//! Metadata: what each repository holds, behind a trait so the embedded
//! SQLite store and a shared PostgreSQL store serve the same code above it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use sqlx::QueryBuilder;

use super::db::{on_db, DatabaseConfig, Db, SqlRow};

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

/// The metadata store on a SQL database: the embedded SQLite file or a
/// shared PostgreSQL server.
pub struct SqlMeta {
    db: Db,
    hits: Arc<PendingHits>,
    queries: AtomicU64,
}

impl SqlMeta {
    /// Opens (creating if needed) the database and migrates it.
    pub async fn open(config: &DatabaseConfig) -> anyhow::Result<SqlMeta> {
        let db = Db::open(config).await?;
        let hits = Arc::new(PendingHits::default());
        tokio::spawn(flush_hits_regularly(db.clone(), Arc::downgrade(&hits)));
        Ok(SqlMeta {
            db,
            hits,
            queries: AtomicU64::new(0),
        })
    }

    /// Opens the embedded SQLite file at `path`.
    pub async fn sqlite(path: &Path) -> anyhow::Result<SqlMeta> {
        SqlMeta::open(&DatabaseConfig::Sqlite(path.to_path_buf())).await
    }

    /// The database, counting the statement about to be sent.
    pub(super) fn db(&self) -> &Db {
        self.queries.fetch_add(1, Ordering::Relaxed);
        &self.db
    }

    /// The database, for what the stores share besides records (secrets).
    pub fn database(&self) -> &Db {
        &self.db
    }
}

/// Writes pending hits every [`HIT_FLUSH_EVERY`] until the store is dropped.
async fn flush_hits_regularly(db: Db, hits: Weak<PendingHits>) {
    loop {
        tokio::time::sleep(HIT_FLUSH_EVERY).await;
        let Some(hits) = hits.upgrade() else {
            return;
        };
        if let Err(e) = write_hits(&db, &hits).await {
            tracing::warn!(error = %format!("{e:#}"), "cannot record hits; will retry");
        }
    }
}

/// Adds the pending hits to the database in one transaction; on failure
/// they are put back to be written next time.
async fn write_hits(db: &Db, hits: &PendingHits) -> anyhow::Result<()> {
    let batch = hits.take();
    if batch.is_empty() {
        return Ok(());
    }
    let result = on_db!(db, pool, DB => async {
        let mut tx = pool.begin().await?;
        for (repo, paths) in &batch {
            for (path, count) in paths {
                sqlx::query("UPDATE objects SET hits = hits + $1 WHERE repo = $2 AND path = $3")
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
    .await);
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

fn record_from_row(row: &impl SqlRow) -> anyhow::Result<ObjectRecord> {
    Ok(ObjectRecord {
        repo: row.text("repo")?,
        path: row.text("path")?,
        digest: row.text("digest")?,
        size: row.count("size")?,
        content_type: row.text("content_type")?,
        origin: Origin::parse(&row.text("origin")?),
        mutable: row.flag("mutable")?,
        stored_at: row.int("stored_at")?,
        expires_at: row.int_opt("expires_at")?,
        upstream_etag: row.text_opt("upstream_etag")?,
        upstream_last_modified: row.text_opt("upstream_last_modified")?,
    })
}

const COLUMNS: &str = "repo, path, digest, size, content_type, origin, mutable, stored_at, \
                       expires_at, upstream_etag, upstream_last_modified";

#[async_trait]
impl MetaStore for SqlMeta {
    async fn get(&self, repo: &str, path: &str) -> anyhow::Result<Option<ObjectRecord>> {
        on_db!(self.db(), pool, DB => {
            let row = sqlx::query(&format!(
                "SELECT {COLUMNS} FROM objects WHERE repo = $1 AND path = $2"
            ))
            .bind(repo)
            .bind(path)
            .fetch_optional(pool)
            .await?;
            row.as_ref().map(record_from_row).transpose()
        })
    }

    async fn put(&self, r: &ObjectRecord) -> anyhow::Result<()> {
        on_db!(self.db(), pool, DB => {
            sqlx::query(&format!(
                "INSERT INTO objects ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
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
            .bind(r.mutable)
            .bind(r.stored_at)
            .bind(r.expires_at)
            .bind(&r.upstream_etag)
            .bind(&r.upstream_last_modified)
            .execute(pool)
            .await?;
            Ok(())
        })
    }

    async fn delete(&self, repo: &str, path: &str) -> anyhow::Result<Option<ObjectRecord>> {
        on_db!(self.db(), pool, DB => {
            let row = sqlx::query(&format!(
                "DELETE FROM objects WHERE repo = $1 AND path = $2 RETURNING {COLUMNS}"
            ))
            .bind(repo)
            .bind(path)
            .fetch_optional(pool)
            .await?;
            row.as_ref().map(record_from_row).transpose()
        })
    }

    async fn delete_paths(&self, repo: &str, paths: &[String]) -> anyhow::Result<u64> {
        let mut removed = 0;
        for batch in paths.chunks(BATCH) {
            removed += on_db!(self.db(), pool, DB => {
                let mut query = QueryBuilder::<DB>::new("DELETE FROM objects WHERE repo = ");
                query.push_bind(repo).push(" AND path IN (");
                let mut list = query.separated(", ");
                for path in batch {
                    list.push_bind(path);
                }
                query.push(")");
                query.build().execute(pool).await?.rows_affected()
            });
        }
        Ok(removed)
    }

    async fn list(&self, repo: &str, q: &ObjectQuery) -> anyhow::Result<Vec<StoredObject>> {
        on_db!(self.db(), pool, DB => {
            let mut query = QueryBuilder::<DB>::new(format!(
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
                query.push(" AND mutable = ").push_bind(mutable);
            }
            query
                .push(" ORDER BY path LIMIT ")
                .push_bind(i64::from(q.limit));
            let rows = query.build().fetch_all(pool).await?;
            rows.iter()
                .map(|row| {
                    Ok(StoredObject {
                        record: record_from_row(row)?,
                        hits: row.count("hits")?,
                    })
                })
                .collect()
        })
    }

    async fn usage(&self, repo: Option<&str>) -> anyhow::Result<BTreeMap<String, Usage>> {
        on_db!(self.db(), pool, DB => {
            let mut query = QueryBuilder::<DB>::new(
                "SELECT repo, COUNT(*) AS objects, \
                 CAST(COALESCE(SUM(size), 0) AS BIGINT) AS bytes FROM objects",
            );
            if let Some(repo) = repo {
                query.push(" WHERE repo = ").push_bind(repo);
            }
            query.push(" GROUP BY repo");
            let rows = query.build().fetch_all(pool).await?;
            rows.iter()
                .map(|row| {
                    let usage = Usage {
                        objects: row.count("objects")?,
                        bytes: row.count("bytes")?,
                    };
                    Ok((row.text("repo")?, usage))
                })
                .collect()
        })
    }

    async fn referenced(&self, digests: &[String]) -> anyhow::Result<HashSet<String>> {
        let mut found = HashSet::new();
        for batch in digests.chunks(BATCH) {
            let rows = on_db!(self.db(), pool, DB => {
                let mut query = QueryBuilder::<DB>::new(
                    "SELECT DISTINCT digest FROM objects WHERE digest IN (",
                );
                let mut list = query.separated(", ");
                for digest in batch {
                    list.push_bind(digest);
                }
                query.push(")");
                query
                    .build()
                    .fetch_all(pool)
                    .await?
                    .iter()
                    .map(|row| row.text("digest"))
                    .collect::<anyhow::Result<Vec<String>>>()?
            });
            found.extend(rows);
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

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end("a/").as_deref(), Some("a0"));
        assert_eq!(prefix_end("a\u{D7FF}").as_deref(), Some("a\u{E000}"));
        assert_eq!(prefix_end("a\u{10FFFF}").as_deref(), Some("b"));
        assert_eq!(prefix_end("\u{10FFFF}"), None);
    }
}
