//! Which backends a server keeps its state in: the embedded defaults under
//! the data folder, or PostgreSQL, Redis and an S3 bucket that several
//! replicas share. Chosen by flags and environment variables; the earlier
//! system's variables (`DBHOST`…, `REDIS_URL`, `MINIO_…`) are understood
//! too, the explicit flags winning.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::prefix::PrefixStore;
use object_store::ObjectStore;
use serde_json::json;
use sqlx::postgres::PgConnectOptions;

use super::db::DatabaseConfig;

/// The default lease of a lock: a replica that dies holding one blocks the
/// others at most this long.
pub const DEFAULT_LOCK_LEASE: Duration = Duration::from_secs(30);

/// The default disk space for local copies of blobs kept in S3, in MiB.
pub const DEFAULT_S3_COPIES_MB: u64 = 2048;

/// Where the server keeps its state.
#[derive(Debug, Clone)]
pub struct Backends {
    /// Metadata.
    pub database: DatabaseConfig,
    /// The TTL cache and locks: Redis at this URL, or in-process.
    pub redis: Option<String>,
    /// Blob bytes.
    pub objects: ObjectStoreConfig,
    /// How long a lock is held without being renewed.
    pub lock_lease: Duration,
    /// Bytes of local copies of blobs kept in an S3 bucket (in the data
    /// folder); 0: none.
    pub local_copies: u64,
}

/// Where blob bytes live.
#[derive(Debug, Clone)]
pub enum ObjectStoreConfig {
    /// A local folder.
    Local(PathBuf),
    /// An S3 bucket.
    S3(S3Config),
}

/// An S3 bucket, and what the environment's `AWS_…` variables do not say.
#[derive(Debug, Clone, Default)]
pub struct S3Config {
    /// The bucket.
    pub bucket: String,
    /// A folder inside the bucket every key is placed under.
    pub prefix: Option<String>,
    /// The server's URL (an S3-compatible server); else `AWS_ENDPOINT_URL`.
    pub endpoint: Option<String>,
    /// Else `AWS_ACCESS_KEY_ID`.
    pub access_key_id: Option<String>,
    /// Else `AWS_SECRET_ACCESS_KEY`.
    pub secret_access_key: Option<String>,
    /// Else `AWS_REGION`.
    pub region: Option<String>,
}

impl S3Config {
    /// Parses `s3://BUCKET[/PREFIX]`.
    pub fn parse(url: &str) -> anyhow::Result<S3Config> {
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| anyhow::anyhow!("the object store must be s3://BUCKET[/PREFIX]"))?;
        let (bucket, prefix) = match rest.split_once('/') {
            Some((bucket, prefix)) => (bucket, Some(prefix.trim_matches('/'))),
            None => (rest, None),
        };
        anyhow::ensure!(
            !bucket.is_empty(),
            "the object store URL {url:?} names no bucket"
        );
        Ok(S3Config {
            bucket: bucket.to_string(),
            prefix: prefix.filter(|p| !p.is_empty()).map(str::to_string),
            ..S3Config::default()
        })
    }

    /// The bucket as an object store, with the environment's `AWS_…`
    /// settings under the explicit ones. An `http://` endpoint is allowed
    /// unless `AWS_ALLOW_HTTP` says otherwise; keys are addressed
    /// path-style unless `AWS_VIRTUAL_HOSTED_STYLE_REQUEST` says otherwise.
    pub fn build(&self) -> anyhow::Result<Arc<dyn ObjectStore>> {
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(&self.bucket);
        if let Some(endpoint) = &self.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        if let Some(key) = &self.access_key_id {
            builder = builder.with_access_key_id(key);
        }
        if let Some(secret) = &self.secret_access_key {
            builder = builder.with_secret_access_key(secret);
        }
        if let Some(region) = &self.region {
            builder = builder.with_region(region);
        }
        let plain_http = builder
            .get_config_value(&AmazonS3ConfigKey::Endpoint)
            .is_some_and(|e| e.starts_with("http://"));
        if plain_http && std::env::var_os("AWS_ALLOW_HTTP").is_none() {
            builder = builder.with_allow_http(true);
        }
        let store = builder
            .build()
            .map_err(|e| anyhow::anyhow!("cannot use the bucket {:?}: {e}", self.bucket))?;
        Ok(match &self.prefix {
            Some(prefix) => Arc::new(PrefixStore::new(store, prefix.as_str())),
            None => Arc::new(store),
        })
    }
}

impl Backends {
    /// The embedded defaults under `data`: SQLite, in-process cache and
    /// locks, blobs in a folder.
    pub fn embedded(data: &Path) -> Backends {
        Backends {
            database: DatabaseConfig::Sqlite(data.join("metadata.db")),
            redis: None,
            objects: ObjectStoreConfig::Local(data.join("cas")),
            lock_lease: DEFAULT_LOCK_LEASE,
            local_copies: DEFAULT_S3_COPIES_MB << 20,
        }
    }

    /// The backends as `/config` shows them: no password, no key.
    pub fn redacted(&self) -> serde_json::Value {
        let objects = match &self.objects {
            ObjectStoreConfig::Local(dir) => json!({ "type": "local", "path": dir }),
            ObjectStoreConfig::S3(s3) => {
                let env = |name: &str| std::env::var(name).ok();
                json!({
                    "type": "s3",
                    "bucket": s3.bucket,
                    "prefix": s3.prefix,
                    "endpoint": s3.endpoint.clone().or_else(|| env("AWS_ENDPOINT_URL")),
                    "region": s3.region.clone().or_else(|| env("AWS_REGION")),
                    "access_key_id": (s3.access_key_id.is_some() || env("AWS_ACCESS_KEY_ID").is_some()).then_some("***"),
                    "secret_access_key": (s3.secret_access_key.is_some() || env("AWS_SECRET_ACCESS_KEY").is_some()).then_some("***"),
                })
            }
        };
        json!({
            "database": self.database.redacted(),
            "redis": self.redis.as_deref().map(redact_url),
            "object_store": objects,
            "lock_lease_seconds": self.lock_lease.as_secs(),
            "s3_copies_mb": self.local_copies >> 20,
        })
    }
}

/// A URL with its password, if it has one, replaced by `***`.
fn redact_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        Ok(_) => url.to_string(),
        Err(_) => "***".to_string(),
    }
}

/// The backend flags of `serve` and `gc`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct BackendArgs {
    /// The metadata database: `sqlite://PATH` (default: metadata.db in the
    /// data folder) or `postgres://USER:PASSWORD@HOST:PORT/DATABASE`. Without
    /// it, `DBHOST` (with `DBPORT`, `DBUSER`, `DBPASS`, `DBNAME`) selects
    /// PostgreSQL.
    #[arg(long, env = "ARTIFACTAPI_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Redis for the TTL cache, locks and counters shared by replicas
    /// (`redis://[:PASSWORD@]HOST:PORT[/DB]`); default `REDIS_URL`, else
    /// in-process.
    #[arg(long, env = "ARTIFACTAPI_REDIS_URL")]
    pub redis_url: Option<String>,
    /// Blob storage: `s3://BUCKET[/PREFIX]`, configured by the standard
    /// `AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and
    /// `AWS_REGION`; default `MINIO_ENDPOINT` and `MINIO_…`, else the cas
    /// folder in the data folder.
    #[arg(long, env = "ARTIFACTAPI_OBJECT_STORE")]
    pub object_store: Option<String>,
    /// Seconds a lock (one upstream fetch, one upload step) is held without
    /// renewal: its holder renews it while it works; a replica that dies
    /// holding one blocks the others this long at most.
    #[arg(long, env = "ARTIFACTAPI_LOCK_LEASE_SECONDS", default_value_t = DEFAULT_LOCK_LEASE.as_secs())]
    pub lock_lease_seconds: u64,
    /// Disk space, in MiB, for copies of the blobs kept in S3 that this
    /// replica reads or writes (in s3-copies/ of the data folder, emptied
    /// at start; the least recently used are removed beyond it); 0: none.
    #[arg(long, env = "ARTIFACTAPI_S3_COPIES_MB", default_value_t = DEFAULT_S3_COPIES_MB)]
    pub s3_copies_mb: u64,
}

impl BackendArgs {
    /// The backends these flags and the process environment select.
    pub fn resolve(&self, data: &Path) -> anyhow::Result<Backends> {
        self.resolve_with(data, |name| {
            std::env::var(name).ok().filter(|v| !v.is_empty())
        })
    }

    /// The backends these flags and the variables `env` answers select.
    pub fn resolve_with(
        &self,
        data: &Path,
        env: impl Fn(&str) -> Option<String>,
    ) -> anyhow::Result<Backends> {
        let mut backends = Backends::embedded(data);
        if let Some(url) = &self.database_url {
            backends.database = DatabaseConfig::parse(url)?;
        } else if let Some(host) = env("DBHOST") {
            let port = match env("DBPORT") {
                Some(port) => port
                    .parse()
                    .map_err(|_| anyhow::anyhow!("DBPORT {port:?} is not a port number"))?,
                None => 5432,
            };
            let mut options = PgConnectOptions::new_without_pgpass()
                .host(&host)
                .port(port)
                .username(&env("DBUSER").unwrap_or_else(|| "artifacts".into()))
                .database(&env("DBNAME").unwrap_or_else(|| "artifacts".into()));
            if let Some(password) = env("DBPASS") {
                options = options.password(&password);
            }
            backends.database = DatabaseConfig::Postgres(Box::new(options));
        }
        backends.redis = self.redis_url.clone().or_else(|| env("REDIS_URL"));
        if let Some(url) = &self.object_store {
            backends.objects = ObjectStoreConfig::S3(S3Config::parse(url)?);
        } else if let Some(endpoint) = env("MINIO_ENDPOINT") {
            let secure = env("MINIO_SECURE").is_some_and(|v| v.eq_ignore_ascii_case("true"));
            let scheme = if secure { "https" } else { "http" };
            let endpoint = if endpoint.contains("://") {
                endpoint
            } else {
                format!("{scheme}://{endpoint}")
            };
            backends.objects = ObjectStoreConfig::S3(S3Config {
                bucket: env("MINIO_BUCKET").unwrap_or_else(|| "artifacts".into()),
                prefix: None,
                endpoint: Some(endpoint),
                access_key_id: env("MINIO_ACCESS_KEY"),
                secret_access_key: env("MINIO_SECRET_KEY"),
                region: env("MINIO_REGION"),
            });
        }
        anyhow::ensure!(
            self.lock_lease_seconds > 0,
            "--lock-lease-seconds must be at least 1"
        );
        backends.lock_lease = Duration::from_secs(self.lock_lease_seconds);
        backends.local_copies = self.s3_copies_mb << 20;
        Ok(backends)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn resolve(args: BackendArgs, vars: &[(&str, &str)]) -> Backends {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        args.resolve_with(Path::new("/data"), |name| vars.get(name).cloned())
            .unwrap()
    }

    fn args() -> BackendArgs {
        BackendArgs {
            lock_lease_seconds: 30,
            s3_copies_mb: DEFAULT_S3_COPIES_MB,
            ..BackendArgs::default()
        }
    }

    #[test]
    fn embedded_by_default() {
        let backends = resolve(args(), &[]);
        assert!(
            matches!(&backends.database, DatabaseConfig::Sqlite(p) if p == Path::new("/data/metadata.db"))
        );
        assert!(backends.redis.is_none());
        assert!(
            matches!(&backends.objects, ObjectStoreConfig::Local(p) if p == Path::new("/data/cas"))
        );
    }

    #[test]
    fn the_earlier_variables_map_and_flags_win() {
        let legacy = [
            ("DBHOST", "db.internal"),
            ("DBPORT", "6543"),
            ("DBUSER", "u"),
            ("DBPASS", "db-password-value"),
            ("DBNAME", "meta"),
            ("REDIS_URL", "redis://:pw@cache:6379/2"),
            ("MINIO_ENDPOINT", "minio:9000"),
            ("MINIO_ACCESS_KEY", "ak"),
            ("MINIO_SECRET_KEY", "sk"),
            ("MINIO_BUCKET", "blobs"),
            ("MINIO_REGION", "eu-1"),
        ];
        let backends = resolve(args(), &legacy);
        assert_eq!(
            backends.database.redacted(),
            "postgres://u@db.internal:6543/meta"
        );
        let ObjectStoreConfig::S3(s3) = &backends.objects else {
            panic!("MINIO_ENDPOINT selects S3");
        };
        assert_eq!(s3.endpoint.as_deref(), Some("http://minio:9000"));
        assert_eq!(s3.bucket, "blobs");
        assert_eq!(s3.secret_access_key.as_deref(), Some("sk"));
        let shown = backends.redacted().to_string();
        assert!(
            !shown.contains("db-password-value")
                && !shown.contains(":pw@")
                && !shown.contains("\"sk\"")
                && !shown.contains("\"ak\""),
            "{shown}"
        );
        assert!(shown.contains("redis://:***@cache:6379/2"), "{shown}");

        let explicit = BackendArgs {
            database_url: Some("postgres://a:b@h/d".into()),
            redis_url: Some("redis://127.0.0.1:7000".into()),
            object_store: Some("s3://bucket/some/prefix/".into()),
            lock_lease_seconds: 5,
            s3_copies_mb: 0,
        };
        let backends = resolve(explicit, &legacy);
        assert_eq!(backends.database.redacted(), "postgres://a@h:5432/d");
        assert_eq!(backends.redis.as_deref(), Some("redis://127.0.0.1:7000"));
        let ObjectStoreConfig::S3(s3) = &backends.objects else {
            panic!("s3:// selects S3");
        };
        assert_eq!(
            (
                s3.bucket.as_str(),
                s3.prefix.as_deref(),
                s3.endpoint.as_deref()
            ),
            ("bucket", Some("some/prefix"), None)
        );
        assert_eq!(backends.lock_lease, Duration::from_secs(5));
    }

    #[test]
    fn bad_urls_are_refused() {
        assert!(DatabaseConfig::parse("mysql://x").is_err());
        assert!(S3Config::parse("s3://").is_err());
        assert!(S3Config::parse("gs://b").is_err());
    }
}
