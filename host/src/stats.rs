//! Traffic counters per repository since the server started: hits, misses,
//! bytes served to clients and bytes fetched from upstreams.
//!
//! Hits, misses and bytes served are counted where artifact responses leave
//! the server (see [`Stats::observe`]), from the `X-Artifact-Source` header
//! the artifact handlers set: `cache` and `local` are hits, `remote` a miss.
//! Bytes fetched are counted by the cache fill as the body arrives, through
//! [`RepoStats::add_fetched`] (or [`Stats::fetched`]).

use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use axum::body::{Body, Bytes, HttpBody};
use axum::response::Response;
use percent_encoding::percent_decode_str;

use crate::artifacts::SOURCE_HEADER;

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
    /// Adds another repository's counts to these.
    pub fn add(&mut self, other: &Counts) {
        self.hits += other.hits;
        self.misses += other.misses;
        self.bytes_served += other.bytes_served;
        self.bytes_fetched += other.bytes_fetched;
    }
}

/// Every repository's counters.
#[derive(Debug, Default)]
pub struct Stats {
    repos: Mutex<HashMap<String, Arc<RepoStats>>>,
}

impl Stats {
    /// The counters of `repo`, created at zero on first use.
    pub fn repo(&self, repo: &str) -> Arc<RepoStats> {
        let mut repos = self.repos.lock().expect("stats poisoned");
        if let Some(stats) = repos.get(repo) {
            return stats.clone();
        }
        let stats = Arc::new(RepoStats::default());
        repos.insert(repo.to_string(), stats.clone());
        stats
    }

    /// Counts `bytes` received from an upstream of `repo`.
    pub fn fetched(&self, repo: &str, bytes: u64) {
        self.repo(repo).add_fetched(bytes);
    }

    /// Every repository's counts now, by name.
    pub fn snapshot(&self) -> BTreeMap<String, Counts> {
        let repos = self.repos.lock().expect("stats poisoned");
        repos
            .iter()
            .map(|(name, stats)| (name.clone(), stats.snapshot()))
            .collect()
    }

    /// Counts an artifact response to a request for `path` (the request's
    /// URL path): a hit or a miss by its `X-Artifact-Source`, and its body
    /// bytes as they are sent. Responses without that header (errors) are
    /// not counted.
    pub fn observe(&self, path: &str, response: Response) -> Response {
        let Some(repo) = repo_of(path) else {
            return response;
        };
        let source = response
            .headers()
            .get(SOURCE_HEADER)
            .and_then(|v| v.to_str().ok());
        let stats = match source {
            Some("cache" | "local") => {
                let stats = self.repo(&repo);
                stats.hits.fetch_add(1, Ordering::Relaxed);
                stats
            }
            Some("remote") => {
                let stats = self.repo(&repo);
                stats.misses.fetch_add(1, Ordering::Relaxed);
                stats
            }
            _ => return response,
        };
        response.map(|body| Body::new(CountedBody { inner: body, stats }))
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
        let response = Response::builder()
            .status(StatusCode::OK)
            .header(SOURCE_HEADER, "cache")
            .body(Body::from(vec![1u8; 1000]))
            .unwrap();
        let response = stats.observe("/api/v1/remote/files/x", response);
        assert_eq!(response.body().size_hint().exact(), Some(1000));
        let mut body = response.into_body().into_data_stream();
        while let Some(chunk) = body.next().await {
            chunk.unwrap();
        }
        let miss = Response::builder()
            .header(SOURCE_HEADER, "remote")
            .body(Body::empty())
            .unwrap();
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
