//! Answers with a stored file: validators, freshness for clients and
//! caches in front, byte ranges, and gzip for compressible types.

use std::io::Write as _;

use async_compression::tokio::bufread::GzipEncoder;
use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use tokio_util::io::{ReaderStream, StreamReader};

use super::ctx::Ctx;
use super::decision::Decision;
use super::outcome::{Outcome, PLUGIN_HEADER};
use crate::config::RepoKind;
use crate::error::AppError;
use crate::storage::{Digest, ObjectRecord};
use crate::util::now_secs;

/// Bodies smaller than this are sent as they are.
pub(super) const GZIP_MIN: u64 = 1024;
/// Files up to this size are gzipped once and the result kept; larger
/// ones are gzipped as they stream.
const GZIP_KEPT_MAX: u64 = 64 * 1024;
/// A year: how long clients may keep what can never change.
const IMMUTABLE_MAX_AGE: i64 = 31_536_000;

/// Serves a stored file. None when its blob is missing from storage (the
/// caller fetches it again).
pub(super) async fn file(
    ctx: &Ctx,
    decision: &Decision,
    record: &ObjectRecord,
    outcome: Outcome,
) -> Result<Option<Response>, AppError> {
    let digest = Digest::parse(&record.digest)
        .ok_or_else(|| AppError::internal(format!("bad digest in metadata: {}", record.digest)))?;
    if outcome != Outcome::Miss {
        ctx.app.storage.meta.record_hit(&record.repo, &record.path);
    }
    // Registry clients check a manifest's bytes against its digest and its
    // announced length: docker repositories send what they store as it is.
    let compress = !ctx.repo.is_docker() && compressible(&record.content_type, &record.path);
    let gzip = compress
        && !ctx.is_head()
        && !ctx.headers.contains_key(header::RANGE)
        && record.size >= GZIP_MIN
        && accepts_gzip(&ctx.headers);
    let etag = if gzip {
        format!("\"sha256:{}-gzip\"", record.digest)
    } else {
        format!("\"sha256:{}\"", record.digest)
    };
    let last_modified = record
        .upstream_last_modified
        .clone()
        .unwrap_or_else(|| httpdate::fmt_http_date(system_time(record.stored_at)));
    let fresh_for_client = not_modified(&ctx.headers, &etag, &last_modified);
    let mut builder = Response::builder()
        .header(header::CONTENT_TYPE, &record.content_type)
        .header(header::ETAG, &etag)
        .header(header::LAST_MODIFIED, last_modified)
        .header(
            header::CACHE_CONTROL,
            cache_control(ctx, decision, record, outcome),
        );
    if compress {
        builder = builder.header(header::VARY, "Accept-Encoding");
    }
    if let Some(plugin) = &decision.plugin {
        builder = builder.header(PLUGIN_HEADER, plugin.label());
    }
    let marked = |builder: axum::http::response::Builder, body: Body| {
        let mut response = builder.body(body).map_err(AppError::internal)?;
        outcome.mark(&mut response);
        Ok(Some(response))
    };
    if fresh_for_client {
        return marked(builder.status(StatusCode::NOT_MODIFIED), Body::empty());
    }
    builder = builder.header(header::ACCEPT_RANGES, "bytes");
    let range = match requested_range(&ctx.headers, &etag, record.size) {
        Ok(range) => range,
        Err(()) => {
            let builder = builder
                .status(StatusCode::RANGE_NOT_SATISFIABLE)
                .header(header::CONTENT_RANGE, format!("bytes */{}", record.size));
            return marked(builder, Body::empty());
        }
    };
    if gzip && record.size <= GZIP_KEPT_MAX {
        let Some(gzipped) = gzipped(ctx, &digest).await? else {
            return Ok(None);
        };
        let builder = builder
            .status(StatusCode::OK)
            .header(header::CONTENT_ENCODING, "gzip")
            .header(header::CONTENT_LENGTH, gzipped.len());
        return marked(builder, Body::from(gzipped));
    }
    builder = match &range {
        Some(range) => builder
            .status(StatusCode::PARTIAL_CONTENT)
            .header(
                header::CONTENT_RANGE,
                format!("bytes {}-{}/{}", range.start, range.end - 1, record.size),
            )
            .header(header::CONTENT_LENGTH, range.end - range.start),
        None if gzip => builder
            .status(StatusCode::OK)
            .header(header::CONTENT_ENCODING, "gzip"),
        None => builder
            .status(StatusCode::OK)
            .header(header::CONTENT_LENGTH, record.size),
    };
    if ctx.is_head() {
        if ctx.app.storage.cas.size(&digest).await?.is_none() {
            return Ok(None);
        }
        return marked(builder, Body::empty());
    }
    let Some(body) = ctx.app.storage.cas.open(&digest, range).await? else {
        tracing::warn!(repo = %record.repo, path = %record.path, digest = %digest, "recorded blob is missing; fetching again");
        return Ok(None);
    };
    let body = if gzip {
        let reader = StreamReader::new(body.into_stream());
        Body::from_stream(ReaderStream::new(GzipEncoder::with_quality(
            reader,
            async_compression::Level::Fastest,
        )))
    } else {
        match body {
            crate::storage::cas::BlobBody::Bytes(bytes) => Body::from(bytes),
            other => Body::from_stream(other.into_stream()),
        }
    };
    marked(builder, body)
}

/// The gzipped bytes of a small stored file, compressed once; None when
/// its blob is missing.
async fn gzipped(ctx: &Ctx, digest: &Digest) -> Result<Option<Bytes>, AppError> {
    let memo = &ctx.app.memos.gzipped;
    if let Some(bytes) = memo.get(digest) {
        return Ok(Some(bytes));
    }
    let Some(plain) = ctx
        .app
        .storage
        .cas
        .read_capped(digest, GZIP_KEPT_MAX)
        .await?
    else {
        return Ok(None);
    };
    let compressed = tokio::task::spawn_blocking(move || gzip_fast(&plain))
        .await
        .map_err(AppError::internal)?
        .map_err(AppError::internal)?;
    let compressed = Bytes::from(compressed);
    memo.insert(digest.clone(), compressed.clone());
    Ok(Some(compressed))
}

/// `data` gzipped at the fast level: what is gzipped once and kept.
/// Blocking: call off the async workers.
pub(super) fn gzip_fast(data: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(data)?;
    encoder.finish()
}

/// `Cache-Control` for a stored object: what can never change is kept for a
/// year, a cached copy for as long as it stays fresh here, anything else
/// (an upload that may be replaced, a stale copy) revalidated each time.
fn cache_control(
    ctx: &Ctx,
    decision: &Decision,
    record: &ObjectRecord,
    outcome: Outcome,
) -> String {
    if outcome == Outcome::Stale {
        return "no-cache".into();
    }
    let never_changes =
        !decision.mutable && (decision.content_addressed || ctx.repo.kind() == RepoKind::Remote);
    match record.expires_at {
        None if never_changes => format!("public, max-age={IMMUTABLE_MAX_AGE}, immutable"),
        Some(at) if ctx.repo.kind() == RepoKind::Remote => {
            format!("public, max-age={}", (at - now_secs()).max(0))
        }
        _ => "no-cache".into(),
    }
}

/// Whether a body of this type and name gains from gzip: text, JSON, XML,
/// YAML and scripts, never what is already compressed.
pub(super) fn compressible(content_type: &str, path: &str) -> bool {
    const PACKED: &[&str] = &[
        ".gz", ".tgz", ".zip", ".whl", ".xz", ".bz2", ".zst", ".7z", ".jar", ".rpm", ".apk",
        ".deb", ".br",
    ];
    let name = path.rsplit('/').next().unwrap_or(path).to_ascii_lowercase();
    if PACKED.iter().any(|ext| name.ends_with(ext)) {
        return false;
    }
    let media = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    media.starts_with("text/")
        || media.ends_with("+json")
        || media.ends_with("+xml")
        || matches!(
            media.as_str(),
            "application/json"
                | "application/xml"
                | "application/javascript"
                | "application/x-javascript"
                | "application/yaml"
                | "application/x-yaml"
                | "application/toml"
                | "image/svg+xml"
        )
}

/// Whether the client takes gzip.
pub(super) fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|coding| {
            let mut parts = coding.split(';');
            let name = parts.next().unwrap_or("").trim();
            let refused = parts.any(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    == Some(0.0)
            });
            (name.eq_ignore_ascii_case("gzip") || name == "*") && !refused
        })
}

/// Whether a media type a client sent says something about the file: not
/// empty, and not what an HTTP client sends by default for any body
/// (curl's `application/x-www-form-urlencoded`).
pub(super) fn meaningful(content_type: &str) -> bool {
    const MEANINGLESS: &[&str] = &["application/x-www-form-urlencoded", "multipart/form-data"];
    let media = content_type.split(';').next().unwrap_or("").trim();
    !media.is_empty() && !MEANINGLESS.iter().any(|m| media.eq_ignore_ascii_case(m))
}

/// The media type to record for a file: `explicit` when it says something,
/// else a guess from the file name.
pub(super) fn content_type_for(path: &str, explicit: Option<&str>) -> String {
    match explicit.map(str::trim).filter(|t| meaningful(t)) {
        Some(explicit) => explicit.to_string(),
        None => mime_guess::from_path(path)
            .first_raw()
            .unwrap_or("application/octet-stream")
            .to_string(),
    }
}

/// Whether the client's copy is current: `If-None-Match` decides when sent,
/// else `If-Modified-Since` against `last_modified`.
pub(super) fn not_modified(headers: &HeaderMap, etag: &str, last_modified: &str) -> bool {
    let text = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    if let Some(tags) = text(header::IF_NONE_MATCH) {
        return if_none_match(tags, etag);
    }
    let since = text(header::IF_MODIFIED_SINCE).and_then(|v| httpdate::parse_http_date(v).ok());
    let modified = httpdate::parse_http_date(last_modified).ok();
    matches!((since, modified), (Some(since), Some(modified)) if modified <= since)
}

/// Whether an `If-None-Match` list names `etag` (weakly, as the header is
/// compared) or is `*`.
pub(super) fn if_none_match(tags: &str, etag: &str) -> bool {
    tags.split(',').any(|t| {
        let t = t.trim();
        t == "*" || t.strip_prefix("W/").unwrap_or(t) == etag
    })
}

/// The byte range a `Range` header asks of an object of `size` bytes: None
/// for the whole object (no header, several ranges, another unit, or an
/// `If-Range` that no longer matches), Err when nothing of it can be sent.
fn requested_range(
    headers: &HeaderMap,
    etag: &str,
    size: u64,
) -> Result<Option<std::ops::Range<u64>>, ()> {
    let Some(value) = headers.get(header::RANGE).and_then(|v| v.to_str().ok()) else {
        return Ok(None);
    };
    if let Some(if_range) = headers.get(header::IF_RANGE).and_then(|v| v.to_str().ok()) {
        if if_range.trim() != etag {
            return Ok(None);
        }
    }
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let Some((first, last)) = spec.split_once('-') else {
        return Ok(None);
    };
    let (first, last) = (first.trim(), last.trim());
    let range = if first.is_empty() {
        let Ok(suffix) = last.parse::<u64>() else {
            return Ok(None);
        };
        if suffix == 0 {
            return Err(());
        }
        size.saturating_sub(suffix)..size
    } else {
        let Ok(start) = first.parse::<u64>() else {
            return Ok(None);
        };
        let end = if last.is_empty() {
            size
        } else {
            match last.parse::<u64>() {
                Ok(last) if last >= start => (last + 1).min(size),
                _ => return Ok(None),
            }
        };
        start..end
    };
    if range.start >= size {
        return Err(());
    }
    Ok(Some(range))
}

fn system_time(secs: i64) -> std::time::SystemTime {
    std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs.max(0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        let ask = |range: &str, if_range: Option<&str>| {
            let mut headers = HeaderMap::new();
            headers.insert(header::RANGE, range.parse().unwrap());
            if let Some(tag) = if_range {
                headers.insert(header::IF_RANGE, tag.parse().unwrap());
            }
            requested_range(&headers, "\"sha256:x\"", 100)
        };
        assert_eq!(ask("bytes=0-9", None), Ok(Some(0..10)));
        assert_eq!(ask("bytes=90-", None), Ok(Some(90..100)));
        assert_eq!(ask("bytes=-5", None), Ok(Some(95..100)));
        assert_eq!(ask("bytes=50-500", None), Ok(Some(50..100)));
        assert_eq!(ask("bytes=100-", None), Err(()));
        assert_eq!(ask("bytes=0-1,5-6", None), Ok(None));
        assert_eq!(ask("items=0-1", None), Ok(None));
        assert_eq!(ask("bytes=5-1", None), Ok(None));
        assert_eq!(ask("bytes=0-9", Some("\"other\"")), Ok(None));
        assert_eq!(ask("bytes=0-9", Some("\"sha256:x\"")), Ok(Some(0..10)));
    }

    fn with(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT_ENCODING, value.parse().unwrap());
        headers
    }

    #[test]
    fn gzip_negotiation() {
        assert!(accepts_gzip(&with("gzip, deflate, br")));
        assert!(accepts_gzip(&with("br;q=1.0, gzip;q=0.8")));
        assert!(accepts_gzip(&with("*")));
        assert!(!accepts_gzip(&with("gzip;q=0")));
        assert!(!accepts_gzip(&with("identity")));
        assert!(!accepts_gzip(&HeaderMap::new()));
    }

    #[test]
    fn what_is_compressed() {
        assert!(compressible("text/plain; charset=utf-8", "notes.txt"));
        assert!(compressible("application/json", "a/b.json"));
        assert!(compressible("application/vnd.npm.install-v1+json", "x"));
        assert!(!compressible("application/gzip", "x.tgz"));
        assert!(!compressible("text/plain", "logs.txt.gz"));
        assert!(!compressible("application/octet-stream", "x.bin"));
        assert!(!compressible("application/zip", "x.whl"));
    }

    #[test]
    fn content_types() {
        assert_eq!(content_type_for("a/b.json", None), "application/json");
        assert_eq!(
            content_type_for("notes.txt", Some("application/x-www-form-urlencoded")),
            "text/plain"
        );
        assert_eq!(
            content_type_for("x.bin", Some("application/vnd.custom")),
            "application/vnd.custom"
        );
        assert_eq!(content_type_for("noext", None), "application/octet-stream");
    }

    #[test]
    fn etags_match_weakly_or_by_star() {
        assert!(if_none_match("\"a\", \"b\"", "\"b\""));
        assert!(if_none_match("W/\"b\"", "\"b\""));
        assert!(if_none_match("*", "\"b\""));
        assert!(!if_none_match("\"a\"", "\"b\""));
    }
}
