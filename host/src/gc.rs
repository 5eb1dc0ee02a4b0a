//! Garbage collection: blobs no metadata record references are removed, and
//! so are spool files a crash left behind.
//!
//! Writers commit a blob to the content-addressable store before they write
//! the record that references it (a cache fill, an upload), and committing
//! content that is already stored renews the blob's last-modified time. So
//! an unreferenced blob is only removed once it is older than a grace
//! period: a young one may be about to be referenced. Each candidate's age
//! is checked again just before it is removed. Spool files are removed once
//! untouched for the grace period and at least [`SPOOL_MIN_AGE`], since a
//! write in progress may leave its spool file alone for a while.
//!
//! Replicas sharing one bucket collect one at a time (a cluster lock), and
//! the grace period protects what another replica is committing: its
//! fills and uploads spool locally and commit (renewing the blob's age)
//! before they write the record.

use std::time::{Duration, SystemTime};

use futures::StreamExt;

use crate::storage::cas::StoredBlob;
use crate::storage::meta::BATCH;
use crate::storage::registry::discard;
use crate::storage::{Key, Storage};

/// Spool files younger than this are never removed, whatever the grace
/// period: a slow upload or fill writes to its spool file only now and then.
pub const SPOOL_MIN_AGE: Duration = Duration::from_secs(3600);

/// How to collect.
#[derive(Debug, Clone)]
pub struct GcOptions {
    /// Unreferenced blobs younger than this are kept.
    pub grace: Duration,
    /// Blob uploads that received nothing for this long are abandoned.
    pub upload_expiry: Duration,
    /// Report what would be removed, remove nothing.
    pub dry_run: bool,
}

/// What a collection found and removed (or, in a dry run, would remove).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Whether nothing was removed on purpose.
    pub dry_run: bool,
    /// Blobs in the store.
    pub blobs_scanned: u64,
    /// Unreferenced blobs removed.
    pub blobs_removed: u64,
    /// Their bytes.
    pub bytes_removed: u64,
    /// Unreferenced blobs kept because they are younger than the grace period.
    pub blobs_young: u64,
    /// Stale spool files removed.
    pub spool_files_removed: u64,
    /// Their bytes.
    pub spool_bytes_removed: u64,
    /// Abandoned blob uploads removed with their staged data.
    pub uploads_removed: u64,
    /// Their bytes.
    pub upload_bytes_removed: u64,
}

impl std::fmt::Display for GcReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let removed = if self.dry_run {
            "would be removed"
        } else {
            "removed"
        };
        writeln!(f, "blobs scanned: {}", self.blobs_scanned)?;
        writeln!(
            f,
            "unreferenced blobs {removed}: {} ({} bytes)",
            self.blobs_removed, self.bytes_removed
        )?;
        writeln!(
            f,
            "unreferenced blobs kept, younger than the grace period: {}",
            self.blobs_young
        )?;
        writeln!(
            f,
            "stale spool files {removed}: {} ({} bytes)",
            self.spool_files_removed, self.spool_bytes_removed
        )?;
        write!(
            f,
            "abandoned uploads {removed}: {} ({} bytes)",
            self.uploads_removed, self.upload_bytes_removed
        )
    }
}

/// Removes (or counts, in a dry run) blobs no record references that are
/// older than the grace period, and stale spool files. One collection runs
/// at a time among the processes sharing the storage.
pub async fn collect(storage: &Storage, options: &GcOptions) -> anyhow::Result<GcReport> {
    let _one_at_a_time = storage.locks.lock(&Key::Gc.to_string()).await?;
    let now = SystemTime::now();
    let cutoff = now
        .checked_sub(options.grace)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let mut report = GcReport {
        dry_run: options.dry_run,
        ..GcReport::default()
    };
    let mut blobs = storage.cas.blobs();
    let mut batch = Vec::with_capacity(BATCH);
    while let Some(blob) = blobs.next().await {
        let blob = blob?;
        report.blobs_scanned += 1;
        batch.push(blob);
        if batch.len() == BATCH {
            sweep(storage, options, cutoff, &mut batch, &mut report).await?;
        }
    }
    sweep(storage, options, cutoff, &mut batch, &mut report).await?;

    let spool_cutoff = now
        .checked_sub(options.grace.max(SPOOL_MIN_AGE))
        .unwrap_or(SystemTime::UNIX_EPOCH);
    for file in storage.cas.spool_files().await? {
        if file.modified > spool_cutoff {
            continue;
        }
        if !options.dry_run {
            storage.cas.remove_spool_file(&file).await?;
            tracing::info!(file = %file.path.display(), size = file.size, "gc removed a stale spool file");
        }
        report.spool_files_removed += 1;
        report.spool_bytes_removed += file.size;
    }

    let idle_since = now
        .checked_sub(options.upload_expiry)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let idle_since = idle_since
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    for session in storage.registry.idle_uploads(idle_since).await? {
        if !options.dry_run {
            discard(storage, &session).await;
            tracing::info!(id = %session.id, repo = %session.repo, image = %session.image, size = session.size, "gc removed an abandoned upload");
        }
        report.uploads_removed += 1;
        report.upload_bytes_removed += session.size;
    }
    Ok(report)
}

/// Removes the blobs of `batch` no record references and older than
/// `cutoff`, emptying the batch.
async fn sweep(
    storage: &Storage,
    options: &GcOptions,
    cutoff: SystemTime,
    batch: &mut Vec<StoredBlob>,
    report: &mut GcReport,
) -> anyhow::Result<()> {
    let hexes: Vec<String> = batch.iter().map(|b| b.digest.hex()).collect();
    let referenced = storage.meta.referenced(&hexes).await?;
    for (blob, hex) in batch.drain(..).zip(hexes) {
        if referenced.contains(&hex) {
            continue;
        }
        if blob.modified > cutoff {
            report.blobs_young += 1;
            continue;
        }
        if !options.dry_run {
            // A commit of the same content since the listing renewed it.
            match storage.cas.modified(&blob.digest).await? {
                Some(modified) if modified <= cutoff => {}
                Some(_) => {
                    report.blobs_young += 1;
                    continue;
                }
                None => continue,
            }
            storage.cas.delete(&blob.digest).await?;
            tracing::debug!(digest = %blob.digest, size = blob.size, "gc removed a blob");
        }
        report.blobs_removed += 1;
        report.bytes_removed += blob.size;
    }
    Ok(())
}

/// Runs a collection every `every`, the first one `every` after the call,
/// logging what each removed; a failed run is logged and the next one runs
/// on time.
pub fn schedule(
    storage: Storage,
    every: Duration,
    grace: Duration,
    upload_expiry: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let options = GcOptions {
            grace,
            upload_expiry,
            dry_run: false,
        };
        loop {
            ticks.tick().await;
            match collect(&storage, &options).await {
                Ok(report) => tracing::info!(
                    blobs_scanned = report.blobs_scanned,
                    blobs_removed = report.blobs_removed,
                    bytes_removed = report.bytes_removed,
                    blobs_young = report.blobs_young,
                    spool_files_removed = report.spool_files_removed,
                    uploads_removed = report.uploads_removed,
                    "garbage collection done"
                ),
                Err(e) => tracing::error!(error = %format!("{e:#}"), "garbage collection failed"),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{Digest, ObjectRecord, Origin};
    use bytes::Bytes;

    fn record(path: &str, digest: &Digest) -> ObjectRecord {
        ObjectRecord {
            repo: "r".into(),
            path: path.into(),
            digest: digest.hex(),
            size: 3,
            content_type: "text/plain".into(),
            origin: Origin::Local,
            mutable: false,
            stored_at: 0,
            expires_at: None,
            upstream_etag: None,
            upstream_last_modified: None,
        }
    }

    fn options(grace: Duration, dry_run: bool) -> GcOptions {
        GcOptions {
            grace,
            upload_expiry: Duration::from_secs(86400),
            dry_run,
        }
    }

    #[tokio::test]
    async fn only_old_unreferenced_blobs_and_stale_spools_go() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::embedded(dir.path()).await.unwrap();
        let kept = storage.cas.put_bytes(Bytes::from("abc")).await.unwrap();
        let orphan = storage.cas.put_bytes(Bytes::from("xyz")).await.unwrap();
        storage.meta.put(&record("kept", &kept)).await.unwrap();
        let stale = dir.path().join("cas/staging/stale");
        std::fs::write(&stale, b"left by a crash").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&stale)
            .unwrap()
            .set_modified(SystemTime::now() - Duration::from_secs(7200))
            .unwrap();
        let live = storage.cas.spool().await.unwrap();

        let hour = Duration::from_secs(3600);
        let young = collect(&storage, &options(hour, false)).await.unwrap();
        assert_eq!(young.blobs_scanned, 2);
        assert_eq!(young.blobs_removed, 0);
        assert_eq!(young.blobs_young, 1);
        assert_eq!(young.spool_files_removed, 1, "the crash leftover is old");
        assert!(!stale.exists());

        let dry = collect(&storage, &options(Duration::ZERO, true))
            .await
            .unwrap();
        assert_eq!((dry.blobs_removed, dry.bytes_removed), (1, 3));
        assert!(storage.cas.size(&orphan).await.unwrap().is_some());

        let done = collect(&storage, &options(Duration::ZERO, false))
            .await
            .unwrap();
        assert_eq!((done.blobs_removed, done.bytes_removed), (1, 3));
        assert_eq!(done.spool_files_removed, 0, "a live spool is young");
        assert_eq!(storage.cas.size(&orphan).await.unwrap(), None);
        assert_eq!(storage.cas.size(&kept).await.unwrap(), Some(3));
        drop(live);
    }

    #[tokio::test]
    async fn committing_stored_content_again_renews_it() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::embedded(dir.path()).await.unwrap();
        let digest = storage.cas.put_bytes(Bytes::from("abc")).await.unwrap();
        let blob = dir
            .path()
            .join("cas/blobs/sha256")
            .join(&digest.hex()[..2])
            .join(digest.hex());
        let old = SystemTime::now() - Duration::from_secs(7200);
        std::fs::File::options()
            .write(true)
            .open(&blob)
            .unwrap()
            .set_modified(old)
            .unwrap();
        let mut spool = storage.cas.spool().await.unwrap();
        spool.append(b"abc").await.unwrap();
        let again = storage
            .cas
            .commit(spool.finish().await.unwrap())
            .await
            .unwrap();
        assert_eq!(again, digest);
        let report = collect(&storage, &options(Duration::from_secs(3600), false))
            .await
            .unwrap();
        assert_eq!(report.blobs_removed, 0);
        assert_eq!(report.blobs_young, 1);
    }

    #[tokio::test]
    async fn abandoned_uploads_go_with_their_staged_parts() {
        use crate::storage::registry::{UploadPart, UploadSession};
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::embedded(dir.path()).await.unwrap();
        let now = crate::util::now_secs();
        let mut sessions = Vec::new();
        for (id, idle) in [("old", 7200), ("fresh", 0)] {
            let mut spool = storage.cas.spool().await.unwrap();
            spool.append(b"part").await.unwrap();
            let finished = spool.finish().await.unwrap();
            let key = format!("uploads/{id}/000000");
            let sha256 = finished.digest.hex();
            storage.cas.commit_as(finished, &key).await.unwrap();
            let session = UploadSession {
                id: id.into(),
                repo: "docker".into(),
                image: "app".into(),
                size: 4,
                parts: vec![UploadPart {
                    key,
                    size: 4,
                    sha256,
                }],
                created_at: now - idle,
                updated_at: now - idle,
            };
            storage.registry.put_upload(&session).await.unwrap();
            sessions.push(session);
        }
        let options = GcOptions {
            grace: Duration::from_secs(3600),
            upload_expiry: Duration::from_secs(3600),
            dry_run: false,
        };
        let report = collect(&storage, &options).await.unwrap();
        assert_eq!(
            (report.uploads_removed, report.upload_bytes_removed),
            (1, 4)
        );
        assert_eq!(storage.registry.upload("old").await.unwrap(), None);
        assert!(storage
            .cas
            .open_key(&sessions[0].parts[0].key)
            .await
            .unwrap()
            .is_none());
        assert!(storage.registry.upload("fresh").await.unwrap().is_some());
        assert!(storage
            .cas
            .open_key(&sessions[1].parts[0].key)
            .await
            .unwrap()
            .is_some());
    }
}
