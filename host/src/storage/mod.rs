//! Everything that keeps state, each behind a seam with an embedded default.

pub mod cas;
pub mod keys;
pub mod kv;
pub mod meta;
pub mod records;
pub mod registry;

use std::path::Path;
use std::sync::Arc;

pub use cas::{Cas, Digest};
pub use keys::Key;
pub use kv::{Locks, MemoryCache, MemoryLocks, TtlCache};
pub use meta::{MetaStore, ObjectRecord, Origin, SqliteMeta};
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
}

impl Storage {
    /// The embedded defaults under `data_dir`: local files, SQLite, memory.
    pub async fn embedded(data_dir: &Path) -> anyhow::Result<Storage> {
        std::fs::create_dir_all(data_dir)?;
        let meta = Arc::new(SqliteMeta::open(&data_dir.join("metadata.db")).await?);
        Ok(Storage {
            cas: Arc::new(Cas::local(&data_dir.join("cas"))?),
            meta: Arc::new(records::RecordCache::new(meta.clone())),
            registry: meta,
            cache: Arc::new(MemoryCache::new(64 << 20)),
            locks: Arc::new(MemoryLocks::default()),
        })
    }
}
