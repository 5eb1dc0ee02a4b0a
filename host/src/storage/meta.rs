//! Metadata: what each repository holds, behind a trait so the embedded
//! SQLite store and a shared PostgreSQL store serve the same code above it.

use std::path::Path;
use std::str::FromStr;

use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};

/// Where an object came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Fetched from an upstream and cached.
    Remote,
    /// Uploaded to a local repository.
    Local,
}

impl Origin {
    fn as_str(self) -> &'static str {
        match self {
            Origin::Remote => "remote",
            Origin::Local => "local",
        }
    }

    fn parse(text: &str) -> Origin {
        if text == "local" {
            Origin::Local
        } else {
            Origin::Remote
        }
    }
}

/// One object a repository holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectRecord {
    /// The repository.
    pub repo: String,
    /// The path below the repository.
    pub path: String,
    /// Lower-case hex sha256 of the bytes.
    pub digest: String,
    /// Length in bytes.
    pub size: u64,
    /// Media type served to clients.
    pub content_type: String,
    /// Cached or uploaded.
    pub origin: Origin,
    /// Whether the object was classified mutable.
    pub mutable: bool,
    /// When it was stored, seconds since the epoch.
    pub stored_at: i64,
    /// When it stops being fresh; None: never.
    pub expires_at: Option<i64>,
    /// The upstream's ETag, for revalidation.
    pub upstream_etag: Option<String>,
    /// The upstream's Last-Modified, for revalidation and quarantine.
    pub upstream_last_modified: Option<String>,
}

/// The metadata store.
#[async_trait]
pub trait MetaStore: Send + Sync {
    /// The object at `path` of `repo`.
    async fn get(&self, repo: &str, path: &str) -> anyhow::Result<Option<ObjectRecord>>;
    /// Inserts or replaces an object.
    async fn put(&self, record: &ObjectRecord) -> anyhow::Result<()>;
    /// Removes an object and returns what was removed.
    async fn delete(&self, repo: &str, path: &str) -> anyhow::Result<Option<ObjectRecord>>;
}

/// The embedded store: one SQLite file.
pub struct SqliteMeta {
    pool: SqlitePool,
}

impl SqliteMeta {
    /// Opens (creating if needed) the database at `path` and migrates it.
    pub async fn open(path: &Path) -> anyhow::Result<SqliteMeta> {
        let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(std::time::Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(options)
            .await?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        Ok(SqliteMeta { pool })
    }
}

fn record_from_row(row: &sqlx::sqlite::SqliteRow) -> anyhow::Result<ObjectRecord> {
    Ok(ObjectRecord {
        repo: row.try_get("repo")?,
        path: row.try_get("path")?,
        digest: row.try_get("digest")?,
        size: row.try_get::<i64, _>("size")? as u64,
        content_type: row.try_get("content_type")?,
        origin: Origin::parse(row.try_get::<&str, _>("origin")?),
        mutable: row.try_get::<i64, _>("mutable")? != 0,
        stored_at: row.try_get("stored_at")?,
        expires_at: row.try_get("expires_at")?,
        upstream_etag: row.try_get("upstream_etag")?,
        upstream_last_modified: row.try_get("upstream_last_modified")?,
    })
}

const COLUMNS: &str = "repo, path, digest, size, content_type, origin, mutable, stored_at, \
                       expires_at, upstream_etag, upstream_last_modified";

#[async_trait]
impl MetaStore for SqliteMeta {
    async fn get(&self, repo: &str, path: &str) -> anyhow::Result<Option<ObjectRecord>> {
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM objects WHERE repo = ? AND path = ?"
        ))
        .bind(repo)
        .bind(path)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(record_from_row).transpose()
    }

    async fn put(&self, r: &ObjectRecord) -> anyhow::Result<()> {
        sqlx::query(&format!(
            "INSERT OR REPLACE INTO objects ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        ))
        .bind(&r.repo)
        .bind(&r.path)
        .bind(&r.digest)
        .bind(r.size as i64)
        .bind(&r.content_type)
        .bind(r.origin.as_str())
        .bind(r.mutable as i64)
        .bind(r.stored_at)
        .bind(r.expires_at)
        .bind(&r.upstream_etag)
        .bind(&r.upstream_last_modified)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn delete(&self, repo: &str, path: &str) -> anyhow::Result<Option<ObjectRecord>> {
        let row = sqlx::query(&format!(
            "DELETE FROM objects WHERE repo = ? AND path = ? RETURNING {COLUMNS}"
        ))
        .bind(repo)
        .bind(path)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(record_from_row).transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ObjectRecord {
        ObjectRecord {
            repo: "files".into(),
            path: "a/b.tar.gz".into(),
            digest: "ab".repeat(32),
            size: 42,
            content_type: "application/gzip".into(),
            origin: Origin::Remote,
            mutable: false,
            stored_at: 1_700_000_000,
            expires_at: None,
            upstream_etag: Some("\"x\"".into()),
            upstream_last_modified: None,
        }
    }

    #[tokio::test]
    async fn put_get_delete() {
        let dir = tempfile::tempdir().unwrap();
        let meta = SqliteMeta::open(&dir.path().join("meta.db")).await.unwrap();
        let record = sample();
        meta.put(&record).await.unwrap();
        assert_eq!(
            meta.get("files", "a/b.tar.gz").await.unwrap(),
            Some(record.clone())
        );
        let mut newer = record.clone();
        newer.origin = Origin::Local;
        newer.expires_at = Some(5);
        meta.put(&newer).await.unwrap();
        assert_eq!(
            meta.get("files", "a/b.tar.gz").await.unwrap(),
            Some(newer.clone())
        );
        assert_eq!(
            meta.delete("files", "a/b.tar.gz").await.unwrap(),
            Some(newer)
        );
        assert_eq!(meta.get("files", "a/b.tar.gz").await.unwrap(), None);
    }
}
