//! Virtual repositories: a file from the first member that has it, an index
//! merged from every member that has one.

use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::Response;

use super::ctx::Ctx;
use super::decision::{decide, Decision, PluginCall};
use super::memo::{MemoKey, Rendered};
use super::outcome::Outcome;
use super::{index, local, remote};
use crate::config::RepoKind;
use crate::error::AppError;
use crate::plugins::Document;
use crate::storage::ObjectRecord;
use crate::util::now_secs;

/// Answers a GET or HEAD on a virtual repository.
pub(super) async fn read(ctx: &Ctx, decision: &Decision) -> Result<Response, AppError> {
    if let (true, Some(call)) = (decision.rewrite, &decision.plugin) {
        return merged(ctx, call).await;
    }
    let mut last = AppError::not_found(format!(
        "{} is in no member of repository {}",
        ctx.target.path, ctx.repo.name
    ));
    for name in &ctx.repo.entry.members {
        let Some(member) = ctx.config.repo(name).cloned() else {
            continue;
        };
        let member = ctx.for_member(member);
        let answer = match decide(&member).await {
            Ok(decision) if member.repo.kind() == RepoKind::Local => {
                local::read(&member, &decision).await
            }
            Ok(decision) => remote::read(&member, &decision).await,
            Err(e) => Err(e),
        };
        match answer {
            Ok(response) => return Ok(response),
            Err(e)
                if matches!(
                    e.status,
                    StatusCode::NOT_FOUND | StatusCode::GONE | StatusCode::FORBIDDEN
                ) =>
            {
                last = e;
            }
            Err(e) => return Err(e),
        }
    }
    Err(last)
}

/// One member's index document.
struct MemberIndex {
    ctx: Ctx,
    call: PluginCall,
    document: MemberDocument,
}

/// Where a member's index document comes from.
enum MemberDocument {
    /// A stored document (cached or uploaded), rendered for the virtual
    /// repository.
    Stored {
        record: ObjectRecord,
        outcome: Outcome,
    },
    /// A document the plugin generated from a local member's contents.
    Generated(Arc<Rendered>),
}

impl MemberIndex {
    fn outcome(&self) -> Outcome {
        match &self.document {
            MemberDocument::Stored { outcome, .. } => *outcome,
            MemberDocument::Generated(_) => Outcome::Local,
        }
    }

    /// When the member's copy stops being fresh; None: now.
    fn expires_at(&self) -> Option<i64> {
        match &self.document {
            MemberDocument::Stored { record, .. } => record.expires_at,
            MemberDocument::Generated(_) => None,
        }
    }

    /// The key of the member's rendering, part of the merged one's.
    fn key(&self) -> Vec<u8> {
        match &self.document {
            MemberDocument::Stored { record, .. } => {
                index::render_key(&self.ctx, &self.call, &record.digest)
                    .as_bytes()
                    .to_vec()
            }
            MemberDocument::Generated(rendered) => rendered.etag.as_bytes().to_vec(),
        }
    }

    /// The member's document rendered for the virtual repository; None
    /// when its stored blob went missing.
    async fn rendered(&self) -> Result<Option<Arc<Rendered>>, AppError> {
        match &self.document {
            MemberDocument::Stored { record, .. } => {
                index::rendered(&self.ctx, &self.call, record).await
            }
            MemberDocument::Generated(rendered) => Ok(Some(rendered.clone())),
        }
    }
}

/// A virtual repository's index: each member's document rewritten for the
/// virtual repository's URL, then merged by the plugin in member order,
/// memoised under the members' renderings. Members are asked at once;
/// those without the document, or refusing it, are left out, and a member
/// whose upstream fails is left out with a warning.
async fn merged(ctx: &Ctx, call: &PluginCall) -> Result<Response, AppError> {
    let members = ctx
        .repo
        .entry
        .members
        .iter()
        .filter_map(|name| ctx.config.repo(name).cloned())
        .map(|member| member_index(ctx.for_member(member)));
    let mut found = Vec::new();
    let mut last_error = None;
    for (name, result) in ctx
        .repo
        .entry
        .members
        .iter()
        .zip(futures::future::join_all(members).await)
    {
        match result {
            Ok(Some(member)) => found.push(member),
            Ok(None) => {}
            Err(e) => {
                if !matches!(
                    e.status,
                    StatusCode::NOT_FOUND | StatusCode::GONE | StatusCode::FORBIDDEN
                ) {
                    tracing::warn!(
                        repo = %ctx.repo.name,
                        member = %name,
                        path = %ctx.target.path,
                        error = %e.message,
                        "member left out of the merged index"
                    );
                }
                last_error = Some(e);
            }
        }
    }
    if found.is_empty() {
        return Err(last_error.unwrap_or_else(|| {
            AppError::not_found(format!(
                "{} is in no member of repository {}",
                ctx.target.path, ctx.repo.name
            ))
        }));
    }
    let outcome = if found.iter().any(|m| m.outcome() == Outcome::Miss) {
        Outcome::Miss
    } else if found.iter().any(|m| m.outcome() == Outcome::Stale) {
        Outcome::Stale
    } else {
        Outcome::Hit
    };
    let fresh_until = found
        .iter()
        .map(MemberIndex::expires_at)
        .try_fold(i64::MAX, |soonest, at| at.map(|at| soonest.min(at)));
    let mut key = call.memo_key("merge");
    for member in &found {
        key.field(member.key());
    }
    let key = key.finish();
    let rendered = match index::memoised(ctx, &key).await {
        Some(rendered) => rendered,
        None => merge(ctx, call, &found, key).await?,
    };
    index::respond(ctx, call, &rendered, outcome, fresh_until)
}

/// Renders every member's document and merges them.
async fn merge(
    ctx: &Ctx,
    call: &PluginCall,
    members: &[MemberIndex],
    key: MemoKey,
) -> Result<Arc<Rendered>, AppError> {
    let renderings = members.iter().map(MemberIndex::rendered);
    let mut documents = Vec::new();
    let mut stale_at: Option<i64> = None;
    for rendering in futures::future::join_all(renderings).await {
        let Some(rendered) = rendering? else {
            continue;
        };
        stale_at = match (stale_at, rendered.stale_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        documents.push(Document {
            content_type: rendered
                .content_type
                .to_str()
                .unwrap_or_default()
                .to_string(),
            body: rendered.identity.to_vec(),
        });
    }
    // A member whose stored blob went missing is left out of this answer,
    // not of the memo (its key names that member's document).
    let complete = documents.len() == members.len();
    let task = call.clone();
    let document = index::off_workers(async move { task.merge(documents).await }).await?;
    let rendered = index::finish(document, stale_at).await?;
    if complete && rendered.current(now_secs()) {
        ctx.app.memos.rendered.insert(key, rendered.clone()).await;
    }
    Ok(rendered)
}

/// A member's index document: stored (filled first if need be) or
/// generated; None when the member does not take the path as an index.
async fn member_index(ctx: Ctx) -> Result<Option<MemberIndex>, AppError> {
    let decision = decide(&ctx).await?;
    let generated = decision.generated && ctx.repo.kind() == RepoKind::Local;
    let Some(call) = decision
        .plugin
        .clone()
        .filter(|_| decision.rewrite || generated)
    else {
        return Ok(None);
    };
    if generated {
        let rendered = index::finish(call.generate().await?, None).await?;
        return Ok(Some(MemberIndex {
            ctx,
            call,
            document: MemberDocument::Generated(rendered),
        }));
    }
    let (record, outcome) = match ctx.repo.kind() {
        RepoKind::Remote => remote::stored(&ctx, &decision, false).await?,
        _ => {
            let record = ctx
                .app
                .storage
                .meta
                .get(&ctx.repo.name, &decision.key)
                .await?;
            match record {
                Some(record) => (record, Outcome::Local),
                None => return Ok(None),
            }
        }
    };
    Ok(Some(MemberIndex {
        ctx,
        call,
        document: MemberDocument::Stored { record, outcome },
    }))
}
