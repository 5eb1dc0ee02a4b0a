//! How a request for an artifact was answered, as one type that the
//! `X-Artifact-Source` header, the traffic counters and the logs all read.

use axum::http::HeaderValue;
use axum::response::Response;

/// Response header naming where the bytes came from.
pub const SOURCE_HEADER: &str = "x-artifact-source";
/// Response header naming the plugin that classified the request.
pub const PLUGIN_HEADER: &str = "x-artifact-plugin";

/// How an artifact request was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A fresh cached copy.
    Hit,
    /// Bytes fetched from the upstream for this request.
    Miss,
    /// An expired cached copy, served because its upstream is failing.
    Stale,
    /// An expired cached copy that the upstream confirmed unchanged.
    Revalidated,
    /// A 404 the upstream gave lately, remembered: the upstream was not asked.
    Negative,
    /// An object uploaded to a local repository.
    Local,
}

impl Outcome {
    /// The outcome's name in logs: `hit`, `miss`, `stale`, `revalidated`,
    /// `negative`, `local`.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Hit => "hit",
            Outcome::Miss => "miss",
            Outcome::Stale => "stale",
            Outcome::Revalidated => "revalidated",
            Outcome::Negative => "negative",
            Outcome::Local => "local",
        }
    }

    /// The `X-Artifact-Source` value: `cache`, `remote` or `local`.
    pub fn source(self) -> &'static str {
        match self {
            Outcome::Hit | Outcome::Stale | Outcome::Revalidated => "cache",
            Outcome::Miss | Outcome::Negative => "remote",
            Outcome::Local => "local",
        }
    }

    /// Whether the bytes came from storage (a hit in the traffic counters).
    pub fn from_storage(self) -> bool {
        !matches!(self, Outcome::Miss | Outcome::Negative)
    }

    /// Marks a response: the typed outcome for the counters and logs, and
    /// `X-Artifact-Source` (and a `Warning` for a stale copy) for clients.
    pub fn mark(self, response: &mut Response) {
        if self != Outcome::Negative {
            response
                .headers_mut()
                .insert(SOURCE_HEADER, HeaderValue::from_static(self.source()));
        }
        if self == Outcome::Stale {
            response.headers_mut().insert(
                axum::http::header::WARNING,
                HeaderValue::from_static("110 artifactapi \"Response is Stale\""),
            );
        }
        response.extensions_mut().insert(self);
    }

    /// The outcome a response was marked with.
    pub fn of(response: &Response) -> Option<Outcome> {
        response.extensions().get::<Outcome>().copied()
    }
}
