//! What the native OCI registry keeps besides objects: blob uploads in
//! progress and the referrers index.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use sqlx::{QueryBuilder, Row, Sqlite};

use super::meta::SqliteMeta;
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

fn session_from_row(row: &sqlx::sqlite::SqliteRow) -> anyhow::Result<UploadSession> {
    Ok(UploadSession {
        id: row.try_get("id")?,
        repo: row.try_get("repo")?,
        image: row.try_get("image")?,
        size: row.try_get::<i64, _>("size")?.max(0) as u64,
        parts: serde_json::from_str(row.try_get::<&str, _>("parts")?)?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

const UPLOAD_COLUMNS: &str = "id, repo, image, size, parts, created_at, updated_at";

#[async_trait]
impl RegistryStore for SqliteMeta {
    async fn upload(&self, id: &str) -> anyhow::Result<Option<UploadSession>> {
        let row = sqlx::query(&format!(
            "SELECT {UPLOAD_COLUMNS} FROM oci_uploads WHERE id = ?"
        ))
        .bind(id)
        .fetch_optional(self.db())
        .await?;
        row.as_ref().map(session_from_row).transpose()
    }

    async fn put_upload(&self, s: &UploadSession) -> anyhow::Result<()> {
        sqlx::query(&format!(
            "INSERT OR REPLACE INTO oci_uploads ({UPLOAD_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)"
        ))
        .bind(&s.id)
        .bind(&s.repo)
        .bind(&s.image)
        .bind(s.size as i64)
        .bind(serde_json::to_string(&s.parts)?)
        .bind(s.created_at)
        .bind(s.updated_at)
        .execute(self.db())
        .await?;
        Ok(())
    }

    async fn delete_upload(&self, id: &str) -> anyhow::Result<()> {
        sqlx::query("DELETE FROM oci_uploads WHERE id = ?")
            .bind(id)
            .execute(self.db())
            .await?;
        Ok(())
    }

    async fn idle_uploads(&self, before: i64) -> anyhow::Result<Vec<UploadSession>> {
        let rows = sqlx::query(&format!(
            "SELECT {UPLOAD_COLUMNS} FROM oci_uploads WHERE updated_at < ? ORDER BY updated_at"
        ))
        .bind(before)
        .fetch_all(self.db())
        .await?;
        rows.iter().map(session_from_row).collect()
    }

    async fn put_referrer(&self, r: &Referrer) -> anyhow::Result<()> {
        sqlx::query(
            "INSERT OR REPLACE INTO oci_referrers (repo, image, subject, digest, media_type, \
             artifact_type, size, annotations) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&r.repo)
        .bind(&r.image)
        .bind(&r.subject)
        .bind(&r.digest)
        .bind(&r.media_type)
        .bind(&r.artifact_type)
        .bind(r.size as i64)
        .bind(&r.annotations)
        .execute(self.db())
        .await?;
        Ok(())
    }

    async fn referrers(
        &self,
        repo: &str,
        image: &str,
        subject: &str,
    ) -> anyhow::Result<Vec<Referrer>> {
        let rows = sqlx::query(
            "SELECT repo, image, subject, digest, media_type, artifact_type, size, annotations \
             FROM oci_referrers WHERE repo = ? AND image = ? AND subject = ? ORDER BY digest",
        )
        .bind(repo)
        .bind(image)
        .bind(subject)
        .fetch_all(self.db())
        .await?;
        rows.iter()
            .map(|row| {
                Ok(Referrer {
                    repo: row.try_get("repo")?,
                    image: row.try_get("image")?,
                    subject: row.try_get("subject")?,
                    digest: row.try_get("digest")?,
                    media_type: row.try_get("media_type")?,
                    artifact_type: row.try_get("artifact_type")?,
                    size: row.try_get::<i64, _>("size")?.max(0) as u64,
                    annotations: row.try_get("annotations")?,
                })
            })
            .collect()
    }

    async fn delete_referrer(&self, repo: &str, image: &str, digest: &str) -> anyhow::Result<()> {
        sqlx::query("DELETE FROM oci_referrers WHERE repo = ? AND image = ? AND digest = ?")
            .bind(repo)
            .bind(image)
            .bind(digest)
            .execute(self.db())
            .await?;
        Ok(())
    }

    async fn images(&self, repos: &[String]) -> anyhow::Result<Vec<(String, String)>> {
        if repos.is_empty() {
            return Ok(Vec::new());
        }
        let mut query = QueryBuilder::<Sqlite>::new(
            "SELECT DISTINCT repo, substr(path, 1, instr(path, '/manifests/') - 1) AS image \
             FROM objects WHERE instr(path, '/manifests/') > 1 AND repo IN (",
        );
        let mut list = query.separated(", ");
        for repo in repos {
            list.push_bind(repo);
        }
        query.push(") ORDER BY repo, image");
        let rows = query.build().fetch_all(self.db()).await?;
        rows.iter()
            .map(|row| Ok((row.try_get("repo")?, row.try_get("image")?)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sessions_and_referrers_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let meta = SqliteMeta::open(&dir.path().join("m.db")).await.unwrap();
        let mut session = UploadSession {
            id: "u1".into(),
            repo: "docker".into(),
            image: "app".into(),
            size: 0,
            parts: Vec::new(),
            created_at: 10,
            updated_at: 10,
        };
        meta.put_upload(&session).await.unwrap();
        session.parts.push(UploadPart {
            key: "uploads/u1/0".into(),
            size: 5,
            sha256: "ab".repeat(32),
        });
        session.size = 5;
        session.updated_at = 20;
        meta.put_upload(&session).await.unwrap();
        assert_eq!(meta.upload("u1").await.unwrap(), Some(session.clone()));
        assert!(meta.idle_uploads(20).await.unwrap().is_empty());
        assert_eq!(meta.idle_uploads(21).await.unwrap(), vec![session]);
        meta.delete_upload("u1").await.unwrap();
        assert_eq!(meta.upload("u1").await.unwrap(), None);

        let referrer = Referrer {
            repo: "docker".into(),
            image: "app".into(),
            subject: "sha256:aa".into(),
            digest: "sha256:bb".into(),
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            artifact_type: Some("application/example".into()),
            size: 3,
            annotations: None,
        };
        meta.put_referrer(&referrer).await.unwrap();
        assert_eq!(
            meta.referrers("docker", "app", "sha256:aa").await.unwrap(),
            vec![referrer]
        );
        meta.delete_referrer("docker", "app", "sha256:bb")
            .await
            .unwrap();
        assert!(meta
            .referrers("docker", "app", "sha256:aa")
            .await
            .unwrap()
            .is_empty());
    }
}
