//! The namespaces of the shared TTL cache and lock table, in one place.
//!
//! Every key the server keeps in the [`TtlCache`](super::TtlCache) or takes
//! in [`Locks`](super::Locks) is built here, so two features can never
//! collide in one namespace and a shared backend (Redis) shows keys an
//! operator can read: `backoff/pypi/simple/flask/`.

use std::fmt;

/// A key of the TTL cache or the lock table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key<'a> {
    /// The upstream of `repo` failed for `key` lately: its stale copy is
    /// served without asking again until the entry expires.
    Backoff {
        /// The repository.
        repo: &'a str,
        /// The object's metadata key.
        key: &'a str,
    },
    /// The upstream of `repo` answered 404 for `key` lately.
    Negative {
        /// The repository.
        repo: &'a str,
        /// The object's metadata key.
        key: &'a str,
    },
    /// When the file at `path` was published, as an index told
    /// (quarantine).
    Published {
        /// The repository.
        repo: &'a str,
        /// The file's path as clients request it.
        path: &'a str,
    },
    /// A plugin's own cache entry.
    Plugin {
        /// The plugin's name.
        plugin: &'a str,
        /// The plugin's key.
        key: &'a str,
    },
    /// The lock held while one object of `repo` is fetched from upstream.
    Fill {
        /// The repository.
        repo: &'a str,
        /// The object's metadata key.
        key: &'a str,
    },
    /// The lock held while a request works on an OCI blob upload.
    Upload {
        /// The upload session's id.
        id: &'a str,
    },
    /// The lock held by the garbage collection running (one at a time in a
    /// cluster).
    Gc,
}

impl fmt::Display for Key<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Key::Backoff { repo, key } => write!(f, "backoff/{repo}/{key}"),
            Key::Negative { repo, key } => write!(f, "negative/{repo}/{key}"),
            Key::Published { repo, path } => write!(f, "published/{repo}/{path}"),
            Key::Plugin { plugin, key } => write!(f, "plugin/{plugin}/{key}"),
            Key::Fill { repo, key } => write!(f, "fill/{repo}/{key}"),
            Key::Upload { id } => write!(f, "upload/{id}"),
            Key::Gc => write!(f, "gc"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_are_distinct() {
        let keys = [
            Key::Backoff {
                repo: "r",
                key: "k",
            },
            Key::Negative {
                repo: "r",
                key: "k",
            },
            Key::Published {
                repo: "r",
                path: "k",
            },
            Key::Plugin {
                plugin: "r",
                key: "k",
            },
            Key::Fill {
                repo: "r",
                key: "k",
            },
            Key::Upload { id: "r/k" },
            Key::Gc,
        ];
        let rendered: std::collections::HashSet<String> =
            keys.iter().map(ToString::to_string).collect();
        assert_eq!(rendered.len(), keys.len());
        assert_eq!(keys[0].to_string(), "backoff/r/k");
    }
}
