//! Traffic counters per repository: hits, misses, bytes served to clients
//! and bytes fetched from upstreams; since the server started, or, for
//! replicas sharing Redis, the cluster's sums (each replica adds what it
//! counted every few seconds and before it answers `/api/v2/stats`).
//!
//! Hits, misses and bytes served are counted where artifact responses leave
//! the server (see [`Stats::observe`]), from the [`Outcome`] the artifact
//! handlers mark them with: copies from storage are hits, bytes fetched for
//! the request a miss.
//! Bytes fetched are counted by the cache fill as the body arrives, through
//! [`RepoStats::add_fetched`] (or [`Stats::fetched`]).

use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::body::{Body, Bytes, HttpBody};
use axum::response::Response;
use percent_encoding::percent_decode_str;

use crate::artifacts::Outcome;
use crate::storage::redis::Redis;

/// How often a replica adds its counts to the cluster's.
const SHARE_EVERY: Duration = Duration::from_secs(2);
/// The counters, as fields of the shared hash are named after them.
const FIELDS: [&str; 4] = ["hits", "misses", "bytes_served", "bytes_fetched"];

/// One repository's counters.
#[derive(Debug, Default)]
pub struct RepoStats {
    hits: AtomicU64,
    misses: AtomicU64,
    bytes_served: AtomicU64,
    bytes_fetched: AtomicU64,
}

impl RepoStats {
    /// Counts `bytes` received from the repository's upstream.
    pub fn add_fetched(&self, bytes: u64) {
        self.bytes_fetched.fetch_add(bytes, Ordering::Relaxed);
    }

    fn snapshot(&self) -> Counts {
        Counts {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            bytes_served: self.bytes_served.load(Ordering::Relaxed),
            bytes_fetched: self.bytes_fetched.load(Ordering::Relaxed),
        }
    }
}

/// The counters' values at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Requests answered from storage (cached copies and uploads).
    pub hits: u64,
    /// Requests answered with bytes fetched from the upstream now.
    pub misses: u64,
    /// Body bytes sent to clients.
    pub bytes_served: u64,
    /// Body bytes received from upstreams.
    pub bytes_fetched: u64,
}

impl Counts {
    fn values(&self) -> [u64; 4] {
        [
            self.hits,
            self.misses,
            self.bytes_served,
            self.bytes_fetched,
        ]
    }

    fn set(&mut self, field: &str, value: u64) {
        match field {
            "hits" => self.hits = value,
            "misses" => self.misses = value,
            "bytes_served" => self.bytes_served = value,
            "bytes_fetched" => self.bytes_fetched = value,
            _ => {}
        }
    }

    /// Adds another repository's counts to these.
    pub fn add(&mut self, other: &Counts) {
        self.hits += other.hits;
        self.misses += other.misses;
        self.bytes_served += other.bytes_served;
        self.bytes_fetched += other.bytes_fetched;
    }
}

/// Every repository's counters: read without a lock, the map copied only
/// when a repository is counted for the first time.
#[derive(Default)]
pub struct Stats {
    repos: ArcSwap<HashMap<String, Arc<RepoStats>>>,
    shared: Option<Shared>,
}

/// The cluster's counters in Redis, and how much of ours they hold.
struct Shared {
    redis: Arc<Redis>,
    added: tokio::sync::Mutex<BTreeMap<String, Counts>>,
}

impl Stats {
    /// Counters whose sums over the cluster are kept in `redis`; this
    /// process adds its counts every few seconds until it is dropped.
    pub fn shared(redis: Arc<Redis>) -> Arc<Stats> {
        let stats = Arc::new(Stats {
            repos: ArcSwap::default(),
            shared: Some(Shared {
                redis,
                added: tokio::sync::Mutex::default(),
            }),
        });
        tokio::spawn(share_regularly(Arc::downgrade(&stats)));
        stats
    }

    /// Adds to the cluster's counters what this process counted since it
    /// last did; what cannot be added now is added next time.
    pub async fn share(&self) -> anyhow::Result<()> {
        let Some(shared) = &self.shared else {
            return Ok(());
        };
        let mut added = shared.added.lock().await;
        let now = self.snapshot();
        let mut amounts = Vec::new();
        for (repo, counts) in &now {
            let before = added.get(repo).copied().unwrap_or_default();
            for ((field, value), old) in FIELDS.iter().zip(counts.values()).zip(before.values()) {
                if value > old {
                    amounts.push((format!("{repo}/{field}"), value - old));
                }
            }
        }
        shared.redis.add_counters(&amounts).await?;
        *added = now;
        Ok(())
    }

    /// Every repository's counts: the cluster's sums when they are shared
    /// (this process's own if Redis cannot be reached), else this
    /// process's since it started.
    pub async fn totals(&self) -> BTreeMap<String, Counts> {
        let Some(shared) = &self.shared else {
            return self.snapshot();
        };
        let summed = async {
            self.share().await?;
            let mut totals: BTreeMap<String, Counts> = BTreeMap::new();
            for (field, value) in shared.redis.counters().await? {
                if let Some((repo, counter)) = field.rsplit_once('/') {
                    totals
                        .entry(repo.to_string())
                        .or_default()
                        .set(counter, value);
                }
            }
            Ok::<_, anyhow::Error>(totals)
        };
        match summed.await {
            Ok(totals) => totals,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "cannot read the cluster's counters; showing this replica's");
                self.snapshot()
            }
        }
    }

    /// The counters of `repo`, created at zero on first use.
    pub fn repo(&self, repo: &str) -> Arc<RepoStats> {
        if let Some(stats) = self.repos.load().get(repo) {
            return stats.clone();
        }
        let mut created = None;
        self.repos.rcu(|repos| {
            let mut repos = HashMap::clone(repos);
            let stats = repos
                .entry(repo.to_string())
                .or_insert_with(|| Arc::new(RepoStats::default()))
                .clone();
            created = Some(stats);
            repos
        });
        created.unwrap_or_default()
    }

    /// Counts `bytes` received from an upstream of `repo`.
    pub fn fetched(&self, repo: &str, bytes: u64) {
        self.repo(repo).add_fetched(bytes);
    }

    /// Every repository's counts now, by name.
    pub fn snapshot(&self) -> BTreeMap<String, Counts> {
        self.repos
            .load()
            .iter()
            .map(|(name, stats)| (name.clone(), stats.snapshot()))
            .collect()
    }

    /// Counts an artifact response to a request for `path` (the request's
    /// URL path): a hit or a miss by its [`Outcome`], and its body bytes as
    /// they are sent. Responses without an outcome (errors) and remembered
    /// upstream 404s are not counted.
    pub fn observe(&self, path: &str, response: Response) -> Response {
        let Some(outcome) = Outcome::of(&response).filter(|o| *o != Outcome::Negative) else {
            return response;
        };
        let Some(repo) = repo_of(path) else {
            return response;
        };
        let stats = self.repo(&repo);
        let counter = if outcome.from_storage() {
            &stats.hits
        } else {
            &stats.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        response.map(|body| Body::new(CountedBody { inner: body, stats }))
    }
}

/// Adds this process's counts to the cluster's every [`SHARE_EVERY`] until
/// the counters are dropped.
async fn share_regularly(stats: Weak<Stats>) {
    loop {
        tokio::time::sleep(SHARE_EVERY).await;
        let Some(stats) = stats.upgrade() else {
            return;
        };
        if let Err(e) = stats.share().await {
            tracing::debug!(error = %format!("{e:#}"), "cannot add to the cluster's counters; will retry");
        }
    }
}

/// The repository a request path under `/api/v1/remote/`,
/// `/api/v1/virtual/` or `/v2/` (the OCI registry) addresses,
/// percent-decoded.
fn repo_of(path: &str) -> Option<String> {
    let rest = path
        .strip_prefix("/api/v1/remote/")
        .or_else(|| path.strip_prefix("/api/v1/virtual/"))
        .or_else(|| path.strip_prefix("/v2/"))?;
    let segment = rest.split('/').next().filter(|s| !s.is_empty())?;
    percent_decode_str(segment)
        .decode_utf8()
        .ok()
        .map(|s| s.into_owned())
}

/// A response body that adds the bytes it yields to a repository's
/// `bytes_served`.
struct CountedBody {
    inner: Body,
    stats: Arc<RepoStats>,
}

impl HttpBody for CountedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                self.stats
                    .bytes_served
                    .fetch_add(data.len() as u64, Ordering::Relaxed);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;
    use futures::StreamExt;

    #[test]
    fn repositories_are_taken_from_artifact_paths() {
        assert_eq!(
            repo_of("/api/v1/remote/files/a/b").as_deref(),
            Some("files")
        );
        assert_eq!(
            repo_of("/api/v1/virtual/all%2Dx/a").as_deref(),
            Some("all-x")
        );
        assert_eq!(repo_of("/api/v1/remote/"), None);
        assert_eq!(
            repo_of("/v2/docker/library/nginx/blobs/sha256:ab").as_deref(),
            Some("docker")
        );
        assert_eq!(repo_of("/health"), None);
    }

    #[tokio::test]
    async fn bodies_are_counted_as_they_are_sent() {
        let stats = Stats::default();
        let mut response = Response::builder()
            .status(StatusCode::OK)
            .body(Body::from(vec![1u8; 1000]))
            .unwrap();
        Outcome::Hit.mark(&mut response);
        let response = stats.observe("/api/v1/remote/files/x", response);
        assert_eq!(response.body().size_hint().exact(), Some(1000));
        let mut body = response.into_body().into_data_stream();
        while let Some(chunk) = body.next().await {
            chunk.unwrap();
        }
        let mut miss = Response::builder().body(Body::empty()).unwrap();
        Outcome::Miss.mark(&mut miss);
        drop(stats.observe("/api/v1/remote/files/y", miss));
        let error = Response::builder().status(404).body(Body::empty()).unwrap();
        drop(stats.observe("/api/v1/remote/files/z", error));
        stats.fetched("files", 70);
        let snapshot = stats.snapshot();
        assert_eq!(
            snapshot["files"],
            Counts {
                hits: 1,
                misses: 1,
                bytes_served: 1000,
                bytes_fetched: 70,
            }
        );
    }
}
