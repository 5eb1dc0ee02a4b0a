//! Local copies of blobs kept in a remote object store (S3), so a replica
//! serves the blobs it reads often from its own disk at local-file speed.
//!
//! Blobs are content-addressed, so a copy is never out of date: a copy is
//! made from a blob this replica committed (its verified spool file is kept
//! instead of removed) or, after a read from the remote store, downloaded
//! in the background and kept only if its digest matches. The least
//! recently used copies are removed beyond the configured size; the folder
//! is emptied when the process starts (what is in it is not accounted for).

use std::collections::HashSet;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use futures::StreamExt as _;
use object_store::path::Path as StorePath;
use object_store::ObjectStore;
use sha2::{Digest as _, Sha256};

use super::cas::Digest;

/// Blobs kept on local disk, by digest.
pub struct LocalCopies {
    dir: PathBuf,
    /// Copies present, weighed in KiB; dropping an entry removes its file.
    index: moka::sync::Cache<Digest, u64>,
    /// Downloads in progress.
    pending: Mutex<HashSet<Digest>>,
}

impl LocalCopies {
    /// Copies in `dir` (emptied now), at most `max_bytes` of them.
    pub fn new(dir: &Path, max_bytes: u64) -> io::Result<Arc<LocalCopies>> {
        if dir.exists() {
            std::fs::remove_dir_all(dir)?;
        }
        std::fs::create_dir_all(dir)?;
        let files = dir.to_path_buf();
        let index = moka::sync::Cache::builder()
            .max_capacity((max_bytes / 1024).max(1))
            .weigher(|_: &Digest, size: &u64| u32::try_from(size / 1024 + 1).unwrap_or(u32::MAX))
            .eviction_listener(move |digest: Arc<Digest>, _, cause| {
                if cause != moka::notification::RemovalCause::Replaced {
                    let _ = std::fs::remove_file(files.join(digest.hex()));
                }
            })
            .build();
        Ok(Arc::new(LocalCopies {
            dir: dir.to_path_buf(),
            index,
            pending: Mutex::new(HashSet::new()),
        }))
    }

    /// Where the copy of `digest` is, if there is one.
    pub fn find(&self, digest: &Digest) -> Option<PathBuf> {
        self.index.get(digest).map(|_| self.path(digest))
    }

    fn path(&self, digest: &Digest) -> PathBuf {
        self.dir.join(digest.hex())
    }

    /// Forgets the copy of `digest` (removing its file).
    pub fn remove(&self, digest: &Digest) {
        self.index.invalidate(digest);
    }

    /// Takes a verified file of `digest`'s bytes as its copy (moved, on the
    /// same file system); on failure the file is removed.
    pub fn adopt(&self, file: &Path, digest: &Digest, size: u64) {
        match std::fs::rename(file, self.path(digest)) {
            Ok(()) => self.index.insert(digest.clone(), size),
            Err(e) => {
                tracing::debug!(error = %e, "cannot keep a local copy of a blob");
                let _ = std::fs::remove_file(file);
            }
        }
    }

    /// Downloads `key` (the blob `digest`) into a copy in the background,
    /// unless a copy exists or is on its way.
    pub fn fetch(self: &Arc<Self>, store: Arc<dyn ObjectStore>, key: StorePath, digest: Digest) {
        if self.index.contains_key(&digest) {
            return;
        }
        if !self
            .pending
            .lock()
            .expect("copies poisoned")
            .insert(digest.clone())
        {
            return;
        }
        let copies = self.clone();
        tokio::spawn(async move {
            if let Err(e) = copies.download(store.as_ref(), &key, &digest).await {
                tracing::debug!(digest = %digest, error = %format!("{e:#}"), "cannot make a local copy of a blob");
            }
            copies
                .pending
                .lock()
                .expect("copies poisoned")
                .remove(&digest);
        });
    }

    async fn download(
        &self,
        store: &dyn ObjectStore,
        key: &StorePath,
        digest: &Digest,
    ) -> anyhow::Result<()> {
        let partial = self.dir.join(format!(".{}.part", uuid::Uuid::new_v4()));
        let result = async {
            let mut stream = store.get(key).await?.into_stream();
            let mut file = std::fs::File::create(&partial)?;
            let mut hasher = Sha256::new();
            let mut size = 0u64;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk?;
                size += chunk.len() as u64;
                hasher.update(&chunk);
                file = tokio::task::spawn_blocking(move || {
                    file.write_all(&chunk)?;
                    Ok::<_, io::Error>(file)
                })
                .await??;
            }
            let got = hex::encode(hasher.finalize());
            anyhow::ensure!(got == digest.hex(), "the store's bytes have digest {got}");
            Ok::<_, anyhow::Error>(size)
        }
        .await;
        match result {
            Ok(size) => {
                self.adopt(&partial, digest, size);
                Ok(())
            }
            Err(e) => {
                let _ = std::fs::remove_file(&partial);
                Err(e)
            }
        }
    }
}
