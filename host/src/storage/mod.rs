//! Everything that keeps state, each behind a seam with an embedded default.

pub mod backends;
pub mod cas;
pub mod copies;
pub mod db;
pub mod keys;
pub mod kv;
pub mod meta;
pub mod records;
pub mod redis;
pub mod registry;

use std::path::Path;
use std::sync::Arc;

pub use backends::{BackendArgs, Backends, ObjectStoreConfig};
pub use cas::{Cas, Digest};
pub use db::{DatabaseConfig, Db};
pub use keys::Key;
pub use kv::{Locks, MemoryCache, MemoryLocks, TtlCache};
pub use meta::{MetaStore, ObjectRecord, Origin, SqlMeta};
pub use registry::RegistryStore;

/// The storage a server runs on.
#[derive(Clone)]
pub struct Storage {
    /// Blob bytes by digest.
    pub cas: Arc<Cas>,
    /// What each repository holds, its records cached in memory.
    pub meta: Arc<dyn MetaStore>,
    /// Upload sessions and referrers of the OCI registry.
    pub registry: Arc<dyn RegistryStore>,
    /// Short-lived keys (plugin cache, tokens).
    pub cache: Arc<dyn TtlCache>,
    /// Named locks (one upstream fetch per object).
    pub locks: Arc<dyn Locks>,
    /// The SQL database, for the secrets every replica shares.
    pub db: Db,
    /// Redis, when the cache and locks are shared through it.
    pub redis: Option<Arc<redis::Redis>>,
}

impl Storage {
    /// The embedded defaults under `data_dir`: local files, SQLite, memory.
    pub async fn embedded(data_dir: &Path) -> anyhow::Result<Storage> {
        Storage::open(&Backends::embedded(data_dir), data_dir).await
    }

    /// The storage `backends` select; `data_dir` holds what stays per
    /// process (the spool of writes in progress).
    pub async fn open(backends: &Backends, data_dir: &Path) -> anyhow::Result<Storage> {
        std::fs::create_dir_all(data_dir)?;
        let meta = Arc::new(SqlMeta::open(&backends.database).await?);
        let db = meta.database().clone();
        let cas = match &backends.objects {
            ObjectStoreConfig::Local(dir) => Cas::local(dir)?,
            ObjectStoreConfig::S3(s3) => {
                let copies = (backends.local_copies > 0)
                    .then(|| {
                        copies::LocalCopies::new(&data_dir.join("s3-copies"), backends.local_copies)
                    })
                    .transpose()?;
                Cas::remote(s3.build()?, &data_dir.join("spool"), copies)?
            }
        };
        let (cache, locks, redis): (Arc<dyn TtlCache>, Arc<dyn Locks>, _) = match &backends.redis {
            Some(url) => {
                let redis = redis::Redis::new(url)?;
                (
                    Arc::new(redis::RedisCache::new(redis.clone())),
                    Arc::new(redis::RedisLocks::new(redis.clone(), backends.lock_lease)),
                    Some(redis),
                )
            }
            None => (
                Arc::new(MemoryCache::new(64 << 20)),
                Arc::new(MemoryLocks::default()),
                None,
            ),
        };
        Ok(Storage {
            cas: Arc::new(cas),
            meta: Arc::new(records::RecordCache::new(meta.clone(), db.shared())),
            registry: meta,
            cache,
            locks,
            db,
            redis,
        })
    }

    /// A number that changes whenever the shared TTL cache lost its keys:
    /// memoised answers derived from its entries include it in their keys,
    /// so they are made again (and their entries written again).
    pub fn cache_epoch(&self) -> u64 {
        self.redis.as_ref().map_or(0, |redis| redis.resets())
    }

    /// What keeps the storage from working fully now, if anything: the
    /// server keeps serving what it can, and reports it in `/health`.
    pub async fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Some(redis) = &self.redis {
            if !redis.ping().await {
                problems.extend(redis.problem());
            }
        }
        if let Err(e) = self.db.ping().await {
            problems.push(format!(
                "the {} database is unreachable: {e:#}",
                self.db.kind()
            ));
        }
        problems
    }
}
