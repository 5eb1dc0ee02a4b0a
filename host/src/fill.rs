//! Filling the cache from an upstream: one fetch per object however many
//! clients ask at once, streamed to every client and to storage together.
//!
//! A fill runs as its own task, so a client that disconnects does not abort
//! it. The body is written to a spool file as it arrives; every client (the
//! one that started the fill and any that joined later) reads the spool from
//! the start, waiting at its end for more. Only when the whole body arrived
//! and its length and digest check out is it committed to storage and
//! recorded; a body cut short is thrown away and every reader sees the error.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use reqwest::header::{
    HeaderMap, CONTENT_LENGTH, CONTENT_TYPE, ETAG, IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED,
};
use tokio::sync::watch;

use crate::storage::cas::{read_at, READ_CHUNK};
use crate::storage::{Digest, Key, ObjectRecord, Storage};
use crate::upstream_auth::{Upstream, UpstreamAuthError};
use crate::util::now_secs;

/// Why a fill produced no object.
#[derive(Debug, Clone)]
pub enum FillError {
    /// The upstream answered with a status other than 200.
    Status(u16),
    /// The upstream could not be reached or did not answer in time.
    Unreachable(String),
    /// The body broke off, had the wrong length or digest, or could not be stored.
    Broken(String),
}

impl std::fmt::Display for FillError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FillError::Status(status) => write!(f, "upstream answered {status}"),
            FillError::Unreachable(e) => write!(f, "upstream unreachable: {e}"),
            FillError::Broken(e) => write!(f, "upstream body failed: {e}"),
        }
    }
}

/// Where a fill is.
#[derive(Debug, Clone)]
pub enum FillState {
    /// Waiting for the upstream's response headers.
    Connecting,
    /// The body is arriving; `written` bytes are readable in the spool.
    Streaming {
        /// Bytes readable so far.
        written: u64,
    },
    /// The object is stored.
    Done {
        /// The stored record.
        record: Box<ObjectRecord>,
    },
    /// No object will come of this fill.
    Failed(FillError),
}

/// What the upstream said about the body.
#[derive(Debug, Clone)]
pub struct FillHead {
    /// Content-Type, if sent and more telling than `application/octet-stream`.
    pub content_type: Option<String>,
    /// Content-Length, if sent.
    pub content_length: Option<u64>,
    /// Last-Modified, if sent.
    pub last_modified: Option<String>,
}

/// One fill in flight.
pub struct Fill {
    state: watch::Sender<FillState>,
    head: OnceLock<FillHead>,
    spool: OnceLock<Arc<std::fs::File>>,
}

impl Fill {
    /// Waits until the body starts arriving, or the fill ends.
    pub async fn started(&self) -> FillState {
        let mut rx = self.state.subscribe();
        let state = rx
            .wait_for(|s| !matches!(s, FillState::Connecting))
            .await
            .map(|s| s.clone());
        state.unwrap_or_else(|_| FillState::Failed(FillError::Broken("fill task ended".into())))
    }

    /// Waits until the fill ends.
    pub async fn finished(&self) -> Result<ObjectRecord, FillError> {
        let mut rx = self.state.subscribe();
        let state = rx
            .wait_for(|s| matches!(s, FillState::Done { .. } | FillState::Failed(_)))
            .await
            .map(|s| s.clone());
        match state {
            Ok(FillState::Done { record }) => Ok(*record),
            Ok(FillState::Failed(e)) => Err(e),
            _ => Err(FillError::Broken("fill task ended".into())),
        }
    }

    /// The upstream's headers, once streaming.
    pub fn head(&self) -> Option<&FillHead> {
        self.head.get()
    }

    /// The body from its first byte, following the fill as it grows. Ends
    /// with an error if the fill fails, so the client sees a cut response
    /// rather than a short one that looks complete. The last byte is held
    /// back until the object is stored, so a client that has the whole body
    /// finds the object in the cache on its next request.
    pub fn body(self: &Arc<Self>) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
        let rx = self.state.subscribe();
        let file = self.spool.get().cloned();
        let hold_back = self
            .head()
            .and_then(|h| h.content_length)
            .map_or(u64::MAX, |len| len.saturating_sub(1));
        futures::stream::try_unfold((rx, file, 0u64), move |(mut rx, file, offset)| async move {
            loop {
                let state = rx.borrow_and_update().clone();
                let (available, done) = match &state {
                    FillState::Connecting => (0, false),
                    FillState::Streaming { written } => ((*written).min(hold_back), false),
                    FillState::Done { record } => (record.size, true),
                    FillState::Failed(e) => return Err(io::Error::other(e.to_string())),
                };
                if offset < available {
                    let Some(file) = file.clone() else {
                        return Err(io::Error::other("fill has no spool"));
                    };
                    let len = (available - offset).min(READ_CHUNK as u64) as usize;
                    let chunk = read_at(file.clone(), offset, len).await?;
                    return Ok(Some((chunk, (rx, Some(file), offset + len as u64))));
                }
                if done {
                    return Ok(None);
                }
                if rx.changed().await.is_err() {
                    return Err(io::Error::other("fill task ended"));
                }
            }
        })
    }
}

/// The fills in flight in this process, by key.
#[derive(Default)]
pub struct Fills {
    inflight: Mutex<HashMap<String, Arc<Fill>>>,
}

/// Everything a fill needs to fetch and record one object.
pub struct FillJob {
    /// Storage to write to.
    pub storage: Storage,
    /// The upstream, with the repository's credentials.
    pub upstream: Upstream,
    /// The upstream URL.
    pub url: String,
    /// Extra request headers.
    pub headers: Vec<(String, String)>,
    /// The record to write; digest, size, times and upstream validators
    /// are filled in here. Its `stored_at` is when the request began: a
    /// record another fill stored since then (or a fresh one other than
    /// `revalidate`, by a fill that began before) is taken as it is.
    pub record: ObjectRecord,
    /// Seconds the object stays fresh once stored; None: forever.
    pub ttl: Option<u64>,
    /// An expired copy to revalidate: its validators go upstream as
    /// `If-None-Match`/`If-Modified-Since`, and a 304 refreshes it.
    pub revalidate: Option<ObjectRecord>,
    /// How long an upstream 404 is remembered; None: not at all.
    pub negative_ttl: Option<Duration>,
    /// Where the bytes fetched from the upstream are counted.
    pub fetched: Arc<crate::stats::RepoStats>,
    /// A digest the body must have, when the path names one.
    pub expected: Option<Digest>,
    /// Revalidate with a HEAD whose `Docker-Content-Digest` is compared with
    /// the stored copy's digest (a registry tag), before any GET.
    pub head_revalidate: bool,
    /// Record the upstream's Content-Type even when it is only
    /// `application/octet-stream` (an index document: its plugin reads the
    /// type as sent, and tells JSON from HTML by the bytes when it says
    /// nothing).
    pub upstream_type_as_sent: bool,
}

impl Fills {
    /// Joins the fill for `key`, or starts `job` as a new one.
    pub fn join_or_start(self: &Arc<Self>, key: String, job: FillJob) -> Arc<Fill> {
        let mut inflight = self.inflight.lock().expect("fill table poisoned");
        if let Some(fill) = inflight.get(&key) {
            return fill.clone();
        }
        let fill = Arc::new(Fill {
            state: watch::Sender::new(FillState::Connecting),
            head: OnceLock::new(),
            spool: OnceLock::new(),
        });
        inflight.insert(key.clone(), fill.clone());
        drop(inflight);
        let entry = Entry {
            fills: self.clone(),
            key,
        };
        let task_fill = fill.clone();
        tokio::spawn(async move {
            let _entry = entry;
            let outcome = run(&job, &task_fill).await;
            match outcome {
                Ok(record) => {
                    task_fill.state.send_replace(FillState::Done {
                        record: Box::new(record),
                    });
                }
                Err(e) => {
                    tracing::warn!(url = %job.url, error = %e, "cache fill failed; nothing stored");
                    task_fill.state.send_replace(FillState::Failed(e));
                }
            }
        });
        fill
    }

    /// Fills in flight now.
    pub fn len(&self) -> usize {
        self.inflight.lock().expect("fill table poisoned").len()
    }

    /// Whether no fill is in flight.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A fill's place in the table, given up when its task ends however it ends.
struct Entry {
    fills: Arc<Fills>,
    key: String,
}

impl Drop for Entry {
    fn drop(&mut self) {
        if let Ok(mut inflight) = self.fills.inflight.lock() {
            inflight.remove(&self.key);
        }
    }
}

fn header_str(headers: &HeaderMap, name: reqwest::header::HeaderName) -> Option<String> {
    headers.get(name)?.to_str().ok().map(str::to_string)
}

/// The upstream's Content-Type, unless it says only "some bytes"
/// (`application/octet-stream`, what static servers send for a name they do
/// not know) and `as_sent` is false: then the format's or the file name's
/// type is recorded.
fn telling_type(headers: &HeaderMap, as_sent: bool) -> Option<String> {
    header_str(headers, CONTENT_TYPE).filter(|t| {
        let media = t.split(';').next().unwrap_or("").trim();
        as_sent || (!media.is_empty() && !media.eq_ignore_ascii_case("application/octet-stream"))
    })
}

/// A request that got no usable answer: unreachable, or refused because
/// the upstream's token service failed.
pub fn upstream_failure(error: UpstreamAuthError) -> FillError {
    match error.status() {
        Some(status) => {
            tracing::warn!(error = %error, "upstream authentication failed");
            FillError::Status(status)
        }
        None => FillError::Unreachable(error.to_string()),
    }
}

/// The header registries name a manifest's digest in.
const CONTENT_DIGEST: &str = "docker-content-digest";

/// Asks the upstream with a HEAD whether the stored copy is still current:
/// the refreshed record when its digest is unchanged, None when the body
/// must be fetched, an error when the upstream is failing (so a stale copy
/// is served).
async fn revalidate_by_digest(
    job: &FillJob,
    stale: &ObjectRecord,
    started: i64,
) -> Result<Option<ObjectRecord>, FillError> {
    let response = job
        .upstream
        .send(reqwest::Method::HEAD, &job.url, &job.headers)
        .await
        .map_err(upstream_failure)?;
    let status = response.status().as_u16();
    if status == 429 || status >= 500 {
        return Err(FillError::Status(status));
    }
    let current = format!("sha256:{}", stale.digest);
    let unchanged = status == 200
        && response
            .headers()
            .get(CONTENT_DIGEST)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|digest| digest.trim() == current);
    if !unchanged {
        return Ok(None);
    }
    let refreshed = ObjectRecord {
        expires_at: job.ttl.map(|ttl| started + ttl as i64),
        ..stale.clone()
    };
    job.storage
        .meta
        .put(&refreshed)
        .await
        .map_err(|e| FillError::Broken(format!("metadata: {e:#}")))?;
    Ok(Some(refreshed))
}

/// Whether `record`, found once the fill's lock was taken, is what another
/// fill (on this replica or another, which held the lock meanwhile) stored
/// for this request: stored since the request began, or a fresh record
/// other than the copy this fill came to replace.
fn filled_meanwhile(job: &FillJob, record: &ObjectRecord, now: i64) -> bool {
    if record.stored_at >= job.record.stored_at {
        return true;
    }
    let fresh = record.expires_at.is_none_or(|at| at > now);
    fresh && job.revalidate.as_ref().is_none_or(|stale| record != stale)
}

async fn run(job: &FillJob, fill: &Fill) -> Result<ObjectRecord, FillError> {
    let lock_key = Key::Fill {
        repo: &job.record.repo,
        key: &job.record.path,
    }
    .to_string();
    let lock = job
        .storage
        .locks
        .lock(&lock_key)
        .await
        .map_err(|e| FillError::Unreachable(format!("lock: {e:#}")))?;
    let started = now_secs();
    if let Ok(Some(record)) = job
        .storage
        .meta
        .get(&job.record.repo, &job.record.path)
        .await
    {
        if filled_meanwhile(job, &record, started) {
            return Ok(record);
        }
    }
    if let (true, Some(stale)) = (job.head_revalidate, &job.revalidate) {
        if let Some(record) = revalidate_by_digest(job, stale, started).await? {
            return Ok(record);
        }
    }
    let mut headers = job.headers.clone();
    if let Some(stale) = &job.revalidate {
        if let Some(etag) = &stale.upstream_etag {
            headers.push((IF_NONE_MATCH.to_string(), etag.clone()));
        }
        if let Some(modified) = &stale.upstream_last_modified {
            headers.push((IF_MODIFIED_SINCE.to_string(), modified.clone()));
        }
    }
    let response = job
        .upstream
        .send(reqwest::Method::GET, &job.url, &headers)
        .await
        .map_err(upstream_failure)?;
    let status = response.status().as_u16();
    if let (304, Some(stale)) = (status, &job.revalidate) {
        let refreshed = ObjectRecord {
            expires_at: job.ttl.map(|ttl| started + ttl as i64),
            ..stale.clone()
        };
        job.storage
            .meta
            .put(&refreshed)
            .await
            .map_err(|e| FillError::Broken(format!("metadata: {e:#}")))?;
        return Ok(refreshed);
    }
    if status != 200 {
        if let (404 | 410, Some(ttl)) = (status, job.negative_ttl) {
            let key = Key::Negative {
                repo: &job.record.repo,
                key: &job.record.path,
            }
            .to_string();
            let value = Bytes::from(status.to_string());
            if let Err(e) = job.storage.cache.set(&key, value, ttl).await {
                tracing::warn!(error = %e, "cannot remember an upstream 404");
            }
        }
        return Err(FillError::Status(status));
    }
    let headers = response.headers().clone();
    let content_length = header_str(&headers, CONTENT_LENGTH).and_then(|v| v.parse().ok());
    let _ = fill.head.set(FillHead {
        content_type: telling_type(&headers, job.upstream_type_as_sent),
        content_length,
        last_modified: header_str(&headers, LAST_MODIFIED),
    });
    let mut spool = job
        .storage
        .cas
        .spool()
        .await
        .map_err(|e| FillError::Broken(format!("spool: {e}")))?;
    let _ = fill.spool.set(spool.file());
    fill.state.send_replace(FillState::Streaming { written: 0 });
    let mut body = response.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| FillError::Broken(e.to_string()))?;
        job.fetched.add_fetched(chunk.len() as u64);
        let grew = spool
            .append(&chunk)
            .await
            .map_err(|e| FillError::Broken(format!("spool: {e}")))?;
        if grew {
            fill.state.send_replace(FillState::Streaming {
                written: spool.written(),
            });
        }
    }
    let finished = spool
        .finish()
        .await
        .map_err(|e| FillError::Broken(format!("spool: {e}")))?;
    if !lock.still_held().await {
        return Err(FillError::Broken(
            "the fill lock's lease lapsed and another replica took it over".into(),
        ));
    }
    if let Some(expected) = content_length.filter(|len| *len != finished.size) {
        return Err(FillError::Broken(format!(
            "got {} of {expected} bytes",
            finished.size
        )));
    }
    if let Some(expected) = job.expected.as_ref().filter(|d| **d != finished.digest) {
        return Err(FillError::Broken(format!(
            "digest {} does not match {expected}",
            finished.digest
        )));
    }
    let size = finished.size;
    let digest = job
        .storage
        .cas
        .commit(finished)
        .await
        .map_err(|e| FillError::Broken(format!("commit: {e:#}")))?;
    let record = ObjectRecord {
        digest: digest.hex(),
        size,
        content_type: telling_type(&headers, job.upstream_type_as_sent)
            .unwrap_or_else(|| job.record.content_type.clone()),
        stored_at: started,
        expires_at: job.ttl.map(|ttl| started + ttl as i64),
        upstream_etag: header_str(&headers, ETAG),
        upstream_last_modified: header_str(&headers, LAST_MODIFIED),
        ..job.record.clone()
    };
    job.storage
        .meta
        .put(&record)
        .await
        .map_err(|e| FillError::Broken(format!("metadata: {e:#}")))?;
    Ok(record)
}
