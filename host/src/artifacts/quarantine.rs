//! Quarantine of newly published artifacts (`quarantine_new`,
//! `quarantine_days`): immutable files published within the window are
//! refused, and index documents leave them out so resolvers pick an older
//! version instead of failing.
//!
//! A file's publish time comes from the format's own metadata when the
//! plugin reads it from an index (PyPI `upload-time`, npm `time`, Helm
//! `created`); those times are kept in the TTL cache for as long as they
//! matter, the rest of the file's quarantine. Otherwise the upstream's
//! `Last-Modified` stands in. With neither, the file is let through.

use std::time::Duration;

use axum::http::StatusCode;
use bytes::Bytes;

use super::ctx::Ctx;
use crate::error::AppError;
use crate::plugins::bindings::artifactapi::plugin::types::Publication;
use crate::storage::Key;
use crate::util::{now_secs, rfc3339_secs};

/// Window length when `quarantine_new` is set without `quarantine_days`.
const DEFAULT_DAYS: u32 = 7;

/// How long new publications stay in quarantine, in seconds, if the
/// repository quarantines at all.
pub(super) fn window(ctx: &Ctx) -> Option<i64> {
    let entry = &ctx.repo.entry;
    entry
        .quarantine_new
        .then(|| i64::from(entry.quarantine_days.unwrap_or(DEFAULT_DAYS)) * 86_400)
}

/// The instant before which publications are out of quarantine, if the
/// repository quarantines at all.
pub(super) fn cutoff(ctx: &Ctx) -> Option<i64> {
    window(ctx).map(|window| now_secs() - window)
}

fn key(repo: &str, path: &str) -> String {
    Key::Published { repo, path }.to_string()
}

/// Remembers the publish times a plugin read from an index, for the files
/// still in quarantine.
pub(super) async fn remember(ctx: &Ctx, publications: &[Publication]) {
    let Some(cutoff) = cutoff(ctx) else {
        return;
    };
    for publication in publications {
        let published = publication.published_at as i64;
        let remaining = published - cutoff;
        if remaining <= 0 {
            continue;
        }
        let key = key(&ctx.repo.name, &publication.path);
        let value = Bytes::from(published.to_string());
        let ttl = Duration::from_secs(remaining as u64);
        if let Err(e) = ctx.app.storage.cache.set(&key, value, ttl).await {
            tracing::warn!(error = %e, "cannot remember a publish time");
        }
    }
}

/// Refuses a file published inside the quarantine window. `last_modified`
/// is the upstream's header, used when no index told the publish time.
pub(super) async fn check(ctx: &Ctx, last_modified: Option<&str>) -> Result<(), AppError> {
    let Some(cutoff) = cutoff(ctx) else {
        return Ok(());
    };
    let path = &ctx.target.path;
    let remembered = ctx
        .app
        .storage
        .cache
        .get(&key(&ctx.repo.name, path))
        .await?
        .and_then(|v| std::str::from_utf8(&v).ok()?.parse::<i64>().ok());
    let from_header = || {
        let parsed = httpdate::parse_http_date(last_modified?).ok()?;
        let secs = parsed.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs();
        i64::try_from(secs).ok()
    };
    let Some(published) = remembered.or_else(from_header) else {
        tracing::info!(repo = %ctx.repo.name, path = %path, "no publish time known; let through");
        return Ok(());
    };
    if published <= cutoff {
        return Ok(());
    }
    Err(refusal(ctx, published, cutoff))
}

/// The refusal of the requested path, published at `published`, inside
/// the window that ends at `cutoff`.
pub(super) fn refusal(ctx: &Ctx, published: i64, cutoff: i64) -> AppError {
    let path = &ctx.target.path;
    let until = published + (now_secs() - cutoff);
    tracing::warn!(repo = %ctx.repo.name, path = %path, published = %rfc3339_secs(published), "quarantined");
    AppError::new(
        StatusCode::NOT_FOUND,
        "QUARANTINED",
        format!(
            "{path} was published at {} and is quarantined until {} by repository {}",
            rfc3339_secs(published),
            rfc3339_secs(until),
            ctx.repo.name
        ),
    )
}
