//! The SQL database under the metadata stores: an embedded SQLite file, or
//! a PostgreSQL server that several replicas share.
//!
//! The stores write their statements once, in SQL both databases speak
//! (`$1` placeholders, `ON CONFLICT`, `RETURNING`), and run them through
//! [`on_db!`], which compiles the statement for each database's driver.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context as _;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{ColumnIndex, Decode, Row, SqlitePool, Type};

/// How long a request waits for a database connection before it is told
/// the database is unavailable (a server that went away answers 503 within
/// this, rather than after a long pool wait).
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// Which database, and where.
#[derive(Debug, Clone)]
pub enum DatabaseConfig {
    /// A SQLite file, created when missing.
    Sqlite(std::path::PathBuf),
    /// A PostgreSQL server; the database is created when missing.
    Postgres(Box<PgConnectOptions>),
}

impl DatabaseConfig {
    /// Parses a `sqlite://PATH` or `postgres://…` URL.
    pub fn parse(url: &str) -> anyhow::Result<DatabaseConfig> {
        if let Some(path) = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
        {
            anyhow::ensure!(!path.is_empty(), "the database URL {url:?} names no file");
            return Ok(DatabaseConfig::Sqlite(path.into()));
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let options = PgConnectOptions::from_str(url)
                .map_err(|e| anyhow::anyhow!("invalid PostgreSQL URL: {e}"))?;
            return Ok(DatabaseConfig::Postgres(Box::new(options)));
        }
        anyhow::bail!("the database URL must start with sqlite:// or postgres://")
    }

    /// The configuration as `/config` shows it: no password.
    pub fn redacted(&self) -> String {
        match self {
            DatabaseConfig::Sqlite(path) => format!("sqlite://{}", path.display()),
            DatabaseConfig::Postgres(options) => format!(
                "postgres://{}@{}:{}/{}",
                options.get_username(),
                options.get_host(),
                options.get_port(),
                options.get_database().unwrap_or(options.get_username())
            ),
        }
    }
}

/// An open database.
#[derive(Clone)]
pub enum Db {
    /// The embedded file.
    Sqlite(SqlitePool),
    /// A shared server.
    Postgres(PgPool),
}

/// Runs `$body` with `$pool` bound to the database's pool and `$DB` naming
/// its sqlx database type, compiled once per database.
macro_rules! on_db {
    ($db:expr, $pool:ident, $DB:ident => $body:expr) => {
        match $db {
            $crate::storage::db::Db::Sqlite($pool) => {
                #[allow(dead_code)]
                type $DB = sqlx::Sqlite;
                $body
            }
            $crate::storage::db::Db::Postgres($pool) => {
                #[allow(dead_code)]
                type $DB = sqlx::Postgres;
                $body
            }
        }
    };
}
pub(crate) use on_db;

impl Db {
    /// Opens the database and brings its schema up to date. Several
    /// processes opening one PostgreSQL database at once are safe: one
    /// migrates while the others wait on its lock.
    pub async fn open(config: &DatabaseConfig) -> anyhow::Result<Db> {
        match config {
            DatabaseConfig::Sqlite(path) => Db::open_sqlite(path).await,
            DatabaseConfig::Postgres(options) => Db::open_postgres(options).await,
        }
    }

    async fn open_sqlite(path: &Path) -> anyhow::Result<Db> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await
            .with_context(|| format!("cannot open {}", path.display()))?;
        sqlx::migrate!("./migrations/sqlite")
            .run(&pool)
            .await
            .context("cannot migrate the metadata database")?;
        Ok(Db::Sqlite(pool))
    }

    async fn open_postgres(options: &PgConnectOptions) -> anyhow::Result<Db> {
        let options = options.clone().application_name("artifactapi");
        create_database(&options).await?;
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options.clone())
            .await
            .with_context(|| unreachable(&options))?;
        sqlx::migrate!("./migrations/postgres")
            .run(&pool)
            .await
            .context("cannot migrate the metadata database")?;
        Ok(Db::Postgres(pool))
    }

    /// Sends the database a trivial statement.
    pub async fn ping(&self) -> anyhow::Result<()> {
        on_db!(self, pool, DB => {
            sqlx::query("SELECT 1").execute(pool).await?;
        });
        Ok(())
    }

    /// Closes every connection; later statements fail.
    pub async fn close(&self) {
        on_db!(self, pool, DB => pool.close().await)
    }

    /// `sqlite` or `postgres`.
    pub fn kind(&self) -> &'static str {
        match self {
            Db::Sqlite(_) => "sqlite",
            Db::Postgres(_) => "postgres",
        }
    }

    /// Whether other processes may write to this database (a server
    /// several replicas share), so that what one process read may already
    /// be out of date.
    pub fn shared(&self) -> bool {
        matches!(self, Db::Postgres(_))
    }

    /// The value of the shared secret `name`, made from `fresh` by whichever
    /// process asks first.
    pub async fn secret(&self, name: &str, fresh: &[u8]) -> anyhow::Result<Vec<u8>> {
        on_db!(self, pool, DB => {
            sqlx::query("INSERT INTO secrets (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING")
                .bind(name)
                .bind(fresh)
                .execute(pool)
                .await?;
            let value: Vec<u8> = sqlx::query_scalar("SELECT value FROM secrets WHERE name = $1")
                .bind(name)
                .fetch_one(pool)
                .await?;
            Ok(value)
        })
    }
}

fn unreachable(options: &PgConnectOptions) -> String {
    format!(
        "cannot connect to PostgreSQL at {}:{}",
        options.get_host(),
        options.get_port()
    )
}

/// Creates the configured database when the server has none of that name
/// (a replica started against a fresh server); another replica creating it
/// at the same moment is fine.
async fn create_database(options: &PgConnectOptions) -> anyhow::Result<()> {
    use sqlx::ConnectOptions as _;
    let Some(name) = options.get_database().map(str::to_string) else {
        return Ok(());
    };
    let mut admin = options
        .clone()
        .database("postgres")
        .connect()
        .await
        .with_context(|| unreachable(options))?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&mut admin)
            .await?;
    if !exists {
        let quoted = format!("\"{}\"", name.replace('"', "\"\""));
        if let Err(e) = sqlx::query(&format!("CREATE DATABASE {quoted}"))
            .execute(&mut admin)
            .await
        {
            let raced = e
                .as_database_error()
                .and_then(|d| d.code())
                .is_some_and(|code| code == "42P04" || code == "23505");
            if !raced {
                return Err(e).with_context(|| format!("cannot create the database {name:?}"));
            }
        }
    }
    Ok(())
}

/// Column reads both databases' rows answer, so a row is mapped to a record
/// once for both.
pub trait SqlRow {
    /// A text column.
    fn text(&self, column: &str) -> anyhow::Result<String>;
    /// A nullable text column.
    fn text_opt(&self, column: &str) -> anyhow::Result<Option<String>>;
    /// An integer column.
    fn int(&self, column: &str) -> anyhow::Result<i64>;
    /// A nullable integer column.
    fn int_opt(&self, column: &str) -> anyhow::Result<Option<i64>>;
    /// A boolean column.
    fn flag(&self, column: &str) -> anyhow::Result<bool>;
    /// A non-negative count or size column.
    fn count(&self, column: &str) -> anyhow::Result<u64> {
        Ok(self.int(column)?.max(0) as u64)
    }
}

impl<R> SqlRow for R
where
    R: Row,
    for<'a> &'a str: ColumnIndex<R>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> bool: Decode<'r, R::Database> + Type<R::Database>,
{
    fn text(&self, column: &str) -> anyhow::Result<String> {
        Ok(self.try_get(column)?)
    }

    fn text_opt(&self, column: &str) -> anyhow::Result<Option<String>> {
        Ok(self.try_get(column)?)
    }

    fn int(&self, column: &str) -> anyhow::Result<i64> {
        Ok(self.try_get(column)?)
    }

    fn int_opt(&self, column: &str) -> anyhow::Result<Option<i64>> {
        Ok(self.try_get(column)?)
    }

    fn flag(&self, column: &str) -> anyhow::Result<bool> {
        Ok(self.try_get(column)?)
    }
}
