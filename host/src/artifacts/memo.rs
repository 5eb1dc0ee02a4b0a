//! Memoised plugin answers: classifications and rendered index documents.
//!
//! A plugin's `classify`, `rewrite-index` and `merge-indexes` are pure
//! functions of what the host hands them, so their answers are kept under a
//! key made of exactly those inputs (the plugin's sha256 among them). A new
//! raw copy, a plugin swap or a configuration change yields new keys; old
//! entries are simply never asked for again and age out of the bounded
//! caches.

use std::sync::Arc;

use axum::http::HeaderValue;
use bytes::Bytes;
use sha2::{Digest as _, Sha256};

use crate::plugins::{Classification, RepoContext, RequestInfo};
use crate::storage::Digest;

/// Classifications kept; each is a few hundred bytes.
const CLASSIFICATIONS: u64 = 50_000;
/// Memory for gzipped copies of small stored files, in bytes.
const GZIPPED_BYTES: u64 = 16 << 20;

/// A memo key: the sha256 of the inputs, each length-prefixed.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct MemoKey([u8; 32]);

impl MemoKey {
    /// The key's bytes, to build a key from keys.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// Builds a [`MemoKey`] from fields in a fixed order.
pub struct KeyBuilder(Sha256);

impl KeyBuilder {
    /// A key for `kind` of answer (`classify`, `render`, `merge`).
    pub fn new(kind: &str) -> KeyBuilder {
        let mut builder = KeyBuilder(Sha256::new());
        builder.field(kind);
        builder
    }

    /// Adds one field.
    pub fn field(&mut self, value: impl AsRef<[u8]>) -> &mut KeyBuilder {
        let value = value.as_ref();
        self.0.update((value.len() as u64).to_le_bytes());
        self.0.update(value);
        self
    }

    /// The key.
    pub fn finish(self) -> MemoKey {
        MemoKey(self.0.finalize().into())
    }
}

/// The key of a plugin call's answer: everything the call is handed (the
/// plugin's sha256, the repository's context, the request as plugins see
/// it); callers add what else goes in, such as a document's digest.
pub fn call_key(
    kind: &str,
    plugin_sha256: &str,
    repo: &RepoContext,
    request: &RequestInfo,
) -> KeyBuilder {
    let mut key = KeyBuilder::new(kind);
    key.field(plugin_sha256)
        .field(&repo.name)
        .field([repo.kind as u8])
        .field(&repo.base_url)
        .field(&repo.public_url)
        .field(&repo.settings)
        .field(&request.method)
        .field(&request.path)
        .field(&request.query);
    for header in &request.headers {
        key.field(&header.name).field(&header.value);
    }
    key
}

/// An index document rendered for one form, ready to send.
pub struct Rendered {
    /// Its media type.
    pub content_type: HeaderValue,
    /// The bytes.
    pub identity: Bytes,
    /// The bytes gzipped, when worth it.
    pub gzip: Option<Bytes>,
    /// The strong ETag of `identity`.
    pub etag: HeaderValue,
    /// The strong ETag of `gzip`.
    pub gzip_etag: HeaderValue,
    /// When the first entry the rendering left out as quarantined leaves
    /// quarantine (seconds since the epoch): from then on the rendering is
    /// out of date.
    pub stale_at: Option<i64>,
}

impl Rendered {
    /// Whether the rendering still holds at `now`.
    pub fn current(&self, now: i64) -> bool {
        self.stale_at.is_none_or(|at| now < at)
    }

    /// Bytes held in memory.
    fn weight(&self) -> u32 {
        let bytes = self.identity.len() + self.gzip.as_ref().map_or(0, Bytes::len) + 256;
        u32::try_from(bytes).unwrap_or(u32::MAX)
    }
}

/// The memoised answers, bounded.
pub struct Memos {
    /// Classifications by inputs.
    pub classify: moka::sync::Cache<MemoKey, Classification>,
    /// Rendered and merged index documents by inputs.
    pub rendered: moka::future::Cache<MemoKey, Arc<Rendered>>,
    /// Gzipped copies of small stored files, by the digest of the original.
    pub gzipped: moka::sync::Cache<Digest, Bytes>,
}

impl Memos {
    /// Memos holding at most `rendered_bytes` of rendered documents.
    pub fn new(rendered_bytes: u64) -> Memos {
        Memos {
            classify: moka::sync::Cache::new(CLASSIFICATIONS),
            rendered: moka::future::Cache::builder()
                .max_capacity(rendered_bytes)
                .weigher(|_: &MemoKey, rendered: &Arc<Rendered>| rendered.weight())
                .build(),
            gzipped: moka::sync::Cache::builder()
                .max_capacity(GZIPPED_BYTES)
                .weigher(|_: &Digest, bytes: &Bytes| {
                    u32::try_from(bytes.len() + 64).unwrap_or(u32::MAX)
                })
                .build(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_delimited() {
        let key = |fields: &[&str]| {
            let mut builder = KeyBuilder::new("t");
            for field in fields {
                builder.field(field);
            }
            builder.finish()
        };
        assert!(key(&["ab", "c"]) != key(&["a", "bc"]));
        assert!(key(&["a"]) == key(&["a"]));
    }

    #[test]
    fn quarantine_ends_a_rendering() {
        let rendered = Rendered {
            content_type: HeaderValue::from_static("text/html"),
            identity: Bytes::new(),
            gzip: None,
            etag: HeaderValue::from_static("\"a\""),
            gzip_etag: HeaderValue::from_static("\"a-gzip\""),
            stale_at: Some(100),
        };
        assert!(rendered.current(99));
        assert!(!rendered.current(100));
    }
}
