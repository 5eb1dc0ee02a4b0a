//! An in-process cache of object records in front of the metadata store, so
//! a cache hit costs a map look-up instead of a database round trip.
//!
//! Correct under writes: every write through this store drops the records
//! it touches once the database has them, and a read that raced a write
//! never leaves the older record behind (see [`RecordCache::get`]). Records
//! written by another process sharing the database are seen after at most
//! [`RecordCache::MAX_AGE`]: a record names its bytes by digest, so a
//! record that is older than the database's costs at worst a revalidation
//! of a mutable object (its expiry is in the record), never a body that
//! does not match its record. Replicas that share a database and want
//! every write seen at once call [`RecordCache::invalidate`] from an
//! invalidation channel.

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

    /// Caches the records of `inner`.
    pub fn new(inner: Arc<dyn MetaStore>) -> RecordCache {
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
            .time_to_live(Self::MAX_AGE)
            .build();
        RecordCache {
            inner,
            records,
            writes: AtomicU64::new(0),
        }
    }

    /// Forgets the record of `path` in `repo`, written elsewhere.
    pub fn invalidate(&self, repo: &str, path: &str) {
        self.writes.fetch_add(1, Ordering::SeqCst);
        self.records.invalidate(&cache_key(repo, path));
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
    use crate::storage::meta::{Origin, SqliteMeta};

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
        let db = Arc::new(SqliteMeta::open(&dir.path().join("m.db")).await.unwrap());
        let cache = RecordCache::new(db.clone());
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
    async fn a_write_elsewhere_is_seen_after_invalidation() {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(SqliteMeta::open(&dir.path().join("m.db")).await.unwrap());
        let cache = RecordCache::new(db.clone());
        cache.put(&record("a", "1")).await.unwrap();
        cache.get("files", "a").await.unwrap();
        db.put(&record("a", "2")).await.unwrap();
        assert_eq!(cache.get("files", "a").await.unwrap().unwrap().digest, "1");
        cache.invalidate("files", "a");
        assert_eq!(cache.get("files", "a").await.unwrap().unwrap().digest, "2");
    }
}
