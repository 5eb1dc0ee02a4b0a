//! What the native OCI registry keeps besides objects: blob uploads in
//! progress and the referrers index.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use sqlx::QueryBuilder;

use super::db::{on_db, Db, SqlRow};
use super::meta::SqlMeta;
use super::Storage;

/// One staged part of an upload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadPart {
    /// Where the part's bytes are staged in object storage.
    pub key: String,
    /// Its length in bytes.
    pub size: u64,
    /// Lower-case hex sha256 of its bytes.
    pub sha256: String,
}

/// A blob upload in progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadSession {
    /// The session id clients see in the upload URL.
    pub id: String,
    /// The repository uploaded to.
    pub repo: String,
    /// The image name below the repository.
    pub image: String,
    /// Bytes received so far (the sum of the parts).
    pub size: u64,
    /// The parts in order.
    pub parts: Vec<UploadPart>,
    /// When the session started, seconds since the epoch.
    pub created_at: i64,
    /// When a part last arrived.
    pub updated_at: i64,
}

/// A manifest whose `subject` is another manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Referrer {
    /// The repository.
    pub repo: String,
    /// The image name below the repository.
    pub image: String,
    /// The digest of the manifest referred to.
    pub subject: String,
    /// The referring manifest's digest.
    pub digest: String,
    /// Its media type.
    pub media_type: String,
    /// Its artifact type (`artifactType`, else its config's media type).
    pub artifact_type: Option<String>,
    /// Its size in bytes.
    pub size: u64,
    /// Its annotations as a JSON object text.
    pub annotations: Option<String>,
}

/// Storage of upload sessions and referrers.
#[async_trait]
pub trait RegistryStore: Send + Sync {
    /// The upload session `id`.
    async fn upload(&self, id: &str) -> anyhow::Result<Option<UploadSession>>;
    /// Inserts or replaces an upload session.
    async fn put_upload(&self, session: &UploadSession) -> anyhow::Result<()>;
    /// Removes an upload session (not its staged parts).
    async fn delete_upload(&self, id: &str) -> anyhow::Result<()>;
    /// Sessions that received nothing since `before` (seconds since the epoch).
    async fn idle_uploads(&self, before: i64) -> anyhow::Result<Vec<UploadSession>>;
    /// Records a referrer.
    async fn put_referrer(&self, referrer: &Referrer) -> anyhow::Result<()>;
    /// The referrers of `subject` in one image.
    async fn referrers(
        &self,
        repo: &str,
        image: &str,
        subject: &str,
    ) -> anyhow::Result<Vec<Referrer>>;
    /// Forgets the manifest `digest` as a referrer.
    async fn delete_referrer(&self, repo: &str, image: &str, digest: &str) -> anyhow::Result<()>;
    /// Image names holding at least one manifest, per repository, in order.
    async fn images(&self, repos: &[String]) -> anyhow::Result<Vec<(String, String)>>;
}

/// Removes an upload session and its staged parts (a session without an
/// id, a monolithic upload, has only parts).
pub async fn discard(storage: &Storage, session: &UploadSession) {
    for part in &session.parts {
        if let Err(e) = storage.cas.delete_key(&part.key).await {
            tracing::warn!(key = %part.key, error = %format!("{e:#}"), "cannot remove a staged upload part");
        }
    }
    if !session.id.is_empty() {
        if let Err(e) = storage.registry.delete_upload(&session.id).await {
            tracing::warn!(id = %session.id, error = %format!("{e:#}"), "cannot remove an upload session");
        }
    }
}

fn session_from_row(row: &impl SqlRow) -> anyhow::Result<UploadSession> {
    Ok(UploadSession {
        id: row.text("id")?,
        repo: row.text("repo")?,
        image: row.text("image")?,
        size: row.count("size")?,
        parts: serde_json::from_str(&row.text("parts")?)?,
        created_at: row.int("created_at")?,
        updated_at: row.int("updated_at")?,
    })
}

fn referrer_from_row(row: &impl SqlRow) -> anyhow::Result<Referrer> {
    Ok(Referrer {
        repo: row.text("repo")?,
        image: row.text("image")?,
        subject: row.text("subject")?,
        digest: row.text("digest")?,
        media_type: row.text("media_type")?,
        artifact_type: row.text_opt("artifact_type")?,
        size: row.count("size")?,
        annotations: row.text_opt("annotations")?,
    })
}

const UPLOAD_COLUMNS: &str = "id, repo, image, size, parts, created_at, updated_at";

#[async_trait]
impl RegistryStore for SqlMeta {
    async fn upload(&self, id: &str) -> anyhow::Result<Option<UploadSession>> {
        on_db!(self.db(), pool, DB => {
            let row = sqlx::query(&format!(
                "SELECT {UPLOAD_COLUMNS} FROM oci_uploads WHERE id = $1"
            ))
            .bind(id)
            .fetch_optional(pool)
            .await?;
            row.as_ref().map(session_from_row).transpose()
        })
    }

    async fn put_upload(&self, s: &UploadSession) -> anyhow::Result<()> {
        let parts = serde_json::to_string(&s.parts)?;
        on_db!(self.db(), pool, DB => {
            sqlx::query(&format!(
                "INSERT INTO oci_uploads ({UPLOAD_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7) \
                 ON CONFLICT (id) DO UPDATE SET repo = excluded.repo, image = excluded.image, \
                 size = excluded.size, parts = excluded.parts, \
                 created_at = excluded.created_at, updated_at = excluded.updated_at"
            ))
            .bind(&s.id)
            .bind(&s.repo)
            .bind(&s.image)
            .bind(s.size as i64)
            .bind(&parts)
            .bind(s.created_at)
            .bind(s.updated_at)
            .execute(pool)
            .await?;
            Ok(())
        })
    }

    async fn delete_upload(&self, id: &str) -> anyhow::Result<()> {
        on_db!(self.db(), pool, DB => {
            sqlx::query("DELETE FROM oci_uploads WHERE id = $1")
                .bind(id)
                .execute(pool)
                .await?;
            Ok(())
        })
    }

    async fn idle_uploads(&self, before: i64) -> anyhow::Result<Vec<UploadSession>> {
        on_db!(self.db(), pool, DB => {
            let rows = sqlx::query(&format!(
                "SELECT {UPLOAD_COLUMNS} FROM oci_uploads WHERE updated_at < $1 ORDER BY updated_at"
            ))
            .bind(before)
            .fetch_all(pool)
            .await?;
            rows.iter().map(session_from_row).collect()
        })
    }

    async fn put_referrer(&self, r: &Referrer) -> anyhow::Result<()> {
        on_db!(self.db(), pool, DB => {
            sqlx::query(
                "INSERT INTO oci_referrers (repo, image, subject, digest, media_type, \
                 artifact_type, size, annotations) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
                 ON CONFLICT (repo, image, subject, digest) DO UPDATE SET \
                 media_type = excluded.media_type, artifact_type = excluded.artifact_type, \
                 size = excluded.size, annotations = excluded.annotations",
            )
            .bind(&r.repo)
            .bind(&r.image)
            .bind(&r.subject)
            .bind(&r.digest)
            .bind(&r.media_type)
            .bind(&r.artifact_type)
            .bind(r.size as i64)
            .bind(&r.annotations)
            .execute(pool)
            .await?;
            Ok(())
        })
    }

    async fn referrers(
        &self,
        repo: &str,
        image: &str,
        subject: &str,
    ) -> anyhow::Result<Vec<Referrer>> {
        on_db!(self.db(), pool, DB => {
            let rows = sqlx::query(
                "SELECT repo, image, subject, digest, media_type, artifact_type, size, annotations \
                 FROM oci_referrers WHERE repo = $1 AND image = $2 AND subject = $3 ORDER BY digest",
            )
            .bind(repo)
            .bind(image)
            .bind(subject)
            .fetch_all(pool)
            .await?;
            rows.iter().map(referrer_from_row).collect()
        })
    }

    async fn delete_referrer(&self, repo: &str, image: &str, digest: &str) -> anyhow::Result<()> {
        on_db!(self.db(), pool, DB => {
            sqlx::query("DELETE FROM oci_referrers WHERE repo = $1 AND image = $2 AND digest = $3")
                .bind(repo)
                .bind(image)
                .bind(digest)
                .execute(pool)
                .await?;
            Ok(())
        })
    }

    async fn images(&self, repos: &[String]) -> anyhow::Result<Vec<(String, String)>> {
        if repos.is_empty() {
            return Ok(Vec::new());
        }
        const MARKER: &str = "/manifests/";
        let db = self.db();
        // Where a string first occurs in another: spelled differently by
        // each database, with the same arguments.
        let find = match db {
            Db::Sqlite(_) => "instr",
            Db::Postgres(_) => "strpos",
        };
        on_db!(db, pool, DB => {
            let mut query = QueryBuilder::<DB>::new(format!(
                "SELECT DISTINCT repo, substr(path, 1, {find}(path, "
            ));
            query
                .push_bind(MARKER)
                .push(format!(") - 1) AS image FROM objects WHERE {find}(path, "))
                .push_bind(MARKER)
                .push(") > 1 AND repo IN (");
            let mut list = query.separated(", ");
            for repo in repos {
                list.push_bind(repo);
            }
            query.push(") ORDER BY repo, image");
            let rows = query.build().fetch_all(pool).await?;
            rows.iter()
                .map(|row| Ok((row.text("repo")?, row.text("image")?)))
                .collect()
        })
    }
}
