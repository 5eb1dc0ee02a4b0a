//! Short-lived shared state: a TTL key-value cache and named locks.
//!
//! Both are traits so that one process keeps them in memory and a fleet of
//! replicas shares them through Redis.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;

/// A key-value cache whose entries expire.
#[async_trait]
pub trait TtlCache: Send + Sync {
    /// The value under `key`, if present and not expired.
    async fn get(&self, key: &str) -> anyhow::Result<Option<Bytes>>;
    /// Stores `value` under `key` for `ttl`.
    async fn set(&self, key: &str, value: Bytes, ttl: Duration) -> anyhow::Result<()>;
    /// Removes `key`.
    async fn delete(&self, key: &str) -> anyhow::Result<()>;
}

/// What a held lock is, for its implementation.
#[async_trait]
pub trait Held: Send + Sync {
    /// Whether no other holder has taken the lock over.
    async fn still_held(&self) -> bool;
}

/// A held lock; dropping it releases the lock.
pub struct LockGuard {
    inner: Box<dyn Held>,
}

impl LockGuard {
    /// Wraps what an implementation holds.
    pub fn new(inner: Box<dyn Held>) -> LockGuard {
        LockGuard { inner }
    }

    /// Whether the lock is still this holder's: false once its lease lapsed
    /// (say the process stalled) and another holder took it. A holder
    /// checks before it commits, so it never writes over a newer holder.
    pub async fn still_held(&self) -> bool {
        self.inner.still_held().await
    }
}

/// Named mutual exclusion, e.g. one upstream fetch per cache key.
#[async_trait]
pub trait Locks: Send + Sync {
    /// Waits for and takes the lock `key`. A shared implementation keeps
    /// it while the holder lives and releases it a lease after the holder
    /// died.
    async fn lock(&self, key: &str) -> anyhow::Result<LockGuard>;
}

#[derive(Clone)]
struct Entry {
    value: Bytes,
    expires: Instant,
}

struct EntryExpiry;

impl moka::Expiry<String, Entry> for EntryExpiry {
    fn expire_after_create(&self, _: &String, entry: &Entry, now: Instant) -> Option<Duration> {
        Some(entry.expires.saturating_duration_since(now))
    }

    fn expire_after_update(
        &self,
        _: &String,
        entry: &Entry,
        now: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(entry.expires.saturating_duration_since(now))
    }
}

/// The in-process TTL cache, bounded in bytes.
pub struct MemoryCache {
    cache: moka::future::Cache<String, Entry>,
}

impl MemoryCache {
    /// A cache holding at most `max_bytes` of keys and values.
    pub fn new(max_bytes: u64) -> MemoryCache {
        let cache = moka::future::Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|k: &String, v: &Entry| {
                (k.len() + v.value.len()).try_into().unwrap_or(u32::MAX)
            })
            .expire_after(EntryExpiry)
            .build();
        MemoryCache { cache }
    }
}

#[async_trait]
impl TtlCache for MemoryCache {
    async fn get(&self, key: &str) -> anyhow::Result<Option<Bytes>> {
        Ok(self
            .cache
            .get(key)
            .await
            .filter(|e| e.expires > Instant::now())
            .map(|e| e.value))
    }

    async fn set(&self, key: &str, value: Bytes, ttl: Duration) -> anyhow::Result<()> {
        let entry = Entry {
            value,
            expires: Instant::now() + ttl,
        };
        self.cache.insert(key.to_string(), entry).await;
        Ok(())
    }

    async fn delete(&self, key: &str) -> anyhow::Result<()> {
        self.cache.invalidate(key).await;
        Ok(())
    }
}

/// In-process named locks; a lock's entry goes away with its last user.
#[derive(Default)]
pub struct MemoryLocks {
    locks: Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>,
}

/// An in-process lock: nobody can take it over.
struct LocalHeld {
    _guard: tokio::sync::OwnedMutexGuard<()>,
}

#[async_trait]
impl Held for LocalHeld {
    async fn still_held(&self) -> bool {
        true
    }
}

#[async_trait]
impl Locks for MemoryLocks {
    async fn lock(&self, key: &str) -> anyhow::Result<LockGuard> {
        let mutex = {
            let mut locks = self.locks.lock().expect("lock table poisoned");
            locks.retain(|_, weak| weak.strong_count() > 0);
            match locks.get(key).and_then(Weak::upgrade) {
                Some(mutex) => mutex,
                None => {
                    let mutex = Arc::new(tokio::sync::Mutex::new(()));
                    locks.insert(key.to_string(), Arc::downgrade(&mutex));
                    mutex
                }
            }
        };
        let guard = mutex.lock_owned().await;
        Ok(LockGuard::new(Box::new(LocalHeld { _guard: guard })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn entries_expire() {
        let cache = MemoryCache::new(1 << 20);
        cache
            .set("k", Bytes::from_static(b"v"), Duration::from_millis(50))
            .await
            .unwrap();
        assert_eq!(cache.get("k").await.unwrap().as_deref(), Some(&b"v"[..]));
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert_eq!(cache.get("k").await.unwrap(), None);
    }

    #[tokio::test]
    async fn locks_exclude() {
        let locks = Arc::new(MemoryLocks::default());
        let guard = locks.lock("a").await.unwrap();
        let other = locks.clone();
        let waiter = tokio::spawn(async move { other.lock("a").await.map(|_| ()) });
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(!waiter.is_finished());
        drop(guard);
        waiter.await.unwrap().unwrap();
    }
}
