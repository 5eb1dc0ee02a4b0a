//! An in-process cache of object records in front of the metadata store.
//!
//! On the embedded database, which no other process writes, the cache
//! answers look-ups from memory, so a cache hit costs a map look-up instead
//! of a database round trip. It is correct under writes: every write
//! through this store drops the records it touches once the database has
//! them, and a read that raced a write never leaves the older record behind
//! (see [`RecordCache::get`]).
//!
//! On a database that replicas share, another replica's flush or delete must
//! be seen by the very next request, so every look-up asks the database and
//! the cache only keeps the last record read: it answers when the database
//! cannot (a cache hit keeps being served while PostgreSQL is down). A
//! record names its bytes by digest, so a record kept from before an outage
//! never yields a body that does not match it.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::meta::{MetaStore, ObjectQuery, ObjectRecord, StoredObject, Usage};

/// Bytes of records kept in memory, keys included.
const CAPACITY_BYTES: u64 = 16 << 20;

/// A [`MetaStore`] that answers record look-ups from memory.
pub struct RecordCache {
    inner: Arc<dyn MetaStore>,
    /// Other processes write to the database: memory answers only when
    /// the database fails.
    shared: bool,
    records: moka::sync::Cache<String, Arc<ObjectRecord>>,
    /// Bumped by every write, so a read that overlapped one does not keep
    /// what it read.
    writes: AtomicU64,
}

fn cache_key(repo: &str, path: &str) -> String {
    let mut key = String::with_capacity(repo.len() + path.len() + 1);
    key.push_str(repo);
    key.push('\0');
    key.push_str(path);
    key
}

impl RecordCache {
    /// The longest a record stays in memory without being read again from
    /// the database.
    pub const MAX_AGE: Duration = Duration::from_secs(30);
    /// The longest a record of a shared database is kept to answer while
    /// the database is unreachable.
    pub const FALLBACK_AGE: Duration = Duration::from_secs(600);

    /// Caches the records of `inner`; `shared`: other processes write to
    /// it too.
    pub fn new(inner: Arc<dyn MetaStore>, shared: bool) -> RecordCache {
        let records = moka::sync::Cache::builder()
            .max_capacity(CAPACITY_BYTES)
            .weigher(|key: &String, record: &Arc<ObjectRecord>| {
                let size = key.len()
                    + record.repo.len()
                    + record.path.len()
                    + record.digest.len()
                    + record.content_type.len()
                    + record.upstream_etag.as_ref().map_or(0, String::len)
                    + record
                        .upstream_last_modified
                        .as_ref()
                        .map_or(0, String::len)
                    + 128;
                u32::try_from(size).unwrap_or(u32::MAX)
            })
            .time_to_live(if shared {
                Self::FALLBACK_AGE
            } else {
                Self::MAX_AGE
            })
            .build();
        RecordCache {
            inner,
            shared,
            records,
            writes: AtomicU64::new(0),
        }
    }

    /// Forgets the record of `path` in `repo`.
    fn invalidate(&self, repo: &str, path: &str) {
        self.writes.fetch_add(1, Ordering::SeqCst);
        self.records.invalidate(&cache_key(repo, path));
    }
}

impl RecordCache {
    /// A look-up in a shared database, answered from memory only when the
    /// database fails.
    async fn get_shared(
        &self,
        key: String,
        repo: &str,
        path: &str,
    ) -> anyhow::Result<Option<ObjectRecord>> {
        let before = self.writes.load(Ordering::SeqCst);
        match self.inner.get(repo, path).await {
            Ok(Some(found)) => {
                if self.writes.load(Ordering::SeqCst) == before {
                    self.records.insert(key, Arc::new(found.clone()));
                }
                Ok(Some(found))
            }
            Ok(None) => {
                self.records.invalidate(&key);
                Ok(None)
            }
            Err(e) => match self.records.get(&key) {
                Some(record) => {
                    tracing::debug!(repo, path, error = %format!("{e:#}"), "database unavailable: serving the record read last");
                    Ok(Some((*record).clone()))
                }
                None => Err(e),
            },
        }
    }
}

#[async_trait]
impl MetaStore for RecordCache {
    /// A read that overlaps a write may have read the older record: it
    /// keeps it only if no write happened while it read, and drops it again
    /// if one started before it was kept (the writer's own drop may have
    /// come first).
    async fn get(&self, repo: &str, path: &str) -> anyhow::Result<Option<ObjectRecord>> {
        let key = cache_key(repo, path);
        if self.shared {
            return self.get_shared(key, repo, path).await;
        }
        if let Some(record) = self.records.get(&key) {
            return Ok(Some((*record).clone()));
        }
        let before = self.writes.load(Ordering::SeqCst);
        let record = self.inner.get(repo, path).await?;
        if let Some(found) = &record {
            if self.writes.load(Ordering::SeqCst) == before {
                self.records.insert(key.clone(), Arc::new(found.clone()));
                if self.writes.load(Ordering::SeqCst) != before {
                    self.records.invalidate(&key);
                }
            }
        }
        Ok(record)
    }

    async fn put(&self, record: &ObjectRecord) -> anyhow::Result<()> {
        let result = self.inner.put(record).await;
        self.invalidate(&record.repo, &record.path);
        result
    }

    async fn delete(&self, repo: &str, path: &str) -> anyhow::Result<Option<ObjectRecord>> {
        let result = self.inner.delete(repo, path).await;
        self.invalidate(repo, path);
        result
    }

    async fn delete_paths(&self, repo: &str, paths: &[String]) -> anyhow::Result<u64> {
        let result = self.inner.delete_paths(repo, paths).await;
        self.writes.fetch_add(1, Ordering::SeqCst);
        for path in paths {
            self.records.invalidate(&cache_key(repo, path));
        }
        result
    }

    async fn list(&self, repo: &str, query: &ObjectQuery) -> anyhow::Result<Vec<StoredObject>> {
        self.inner.list(repo, query).await
    }

    async fn usage(&self, repo: Option<&str>) -> anyhow::Result<BTreeMap<String, Usage>> {
        self.inner.usage(repo).await
    }

    async fn referenced(&self, digests: &[String]) -> anyhow::Result<HashSet<String>> {
        self.inner.referenced(digests).await
    }

    fn record_hit(&self, repo: &str, path: &str) {
        self.inner.record_hit(repo, path);
    }

    async fn flush_hits(&self) -> anyhow::Result<()> {
        self.inner.flush_hits().await
    }

    fn queries(&self) -> u64 {
        self.inner.queries()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::meta::{Origin, SqlMeta};

    fn record(path: &str, digest: &str) -> ObjectRecord {
        ObjectRecord {
            repo: "files".into(),
            path: path.into(),
            digest: digest.into(),
            size: 3,
            content_type: "text/plain".into(),
            origin: Origin::Local,
            mutable: false,
            stored_at: 1,
            expires_at: None,
            upstream_etag: None,
            upstream_last_modified: None,
        }
    }

    #[tokio::test]
    async fn hits_skip_the_database_and_writes_are_seen() {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(SqlMeta::sqlite(&dir.path().join("m.db")).await.unwrap());
        let cache = RecordCache::new(db.clone(), false);
        cache.put(&record("a", "1")).await.unwrap();
        assert_eq!(cache.get("files", "a").await.unwrap().unwrap().digest, "1");
        let queries = cache.queries();
        for _ in 0..10 {
            assert_eq!(cache.get("files", "a").await.unwrap().unwrap().digest, "1");
        }
        assert_eq!(cache.queries(), queries, "hits ask the database nothing");

        cache.put(&record("a", "2")).await.unwrap();
        assert_eq!(cache.get("files", "a").await.unwrap().unwrap().digest, "2");
        cache.delete("files", "a").await.unwrap();
        assert_eq!(cache.get("files", "a").await.unwrap(), None);

        cache.put(&record("b", "3")).await.unwrap();
        assert!(cache.get("files", "b").await.unwrap().is_some());
        cache.delete_paths("files", &["b".into()]).await.unwrap();
        assert_eq!(cache.get("files", "b").await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_shared_database_is_asked_every_time_and_covered_when_down() {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(SqlMeta::sqlite(&dir.path().join("m.db")).await.unwrap());
        let cache = RecordCache::new(db.clone(), true);
        cache.put(&record("a", "1")).await.unwrap();
        assert_eq!(cache.get("files", "a").await.unwrap().unwrap().digest, "1");
        db.put(&record("a", "2")).await.unwrap();
        assert_eq!(
            cache.get("files", "a").await.unwrap().unwrap().digest,
            "2",
            "a write by another process is seen at once"
        );
        db.put(&record("b", "3")).await.unwrap();
        cache.get("files", "b").await.unwrap();
        db.delete("files", "b").await.unwrap();
        assert_eq!(cache.get("files", "b").await.unwrap(), None);

        db.database().close().await;
        assert_eq!(
            cache.get("files", "a").await.unwrap().unwrap().digest,
            "2",
            "the record read last answers while the database is down"
        );
        assert!(cache.get("files", "b").await.is_err());
    }
}
