//! The shared backends of a scale-out deployment, each a real server on a
//! loopback port of its own that the test starts and stops: PostgreSQL,
//! Redis and an S3 server (s3s-fs), all installed by
//! `tests/setup/scaleout.sh`.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use artifactapi::storage::backends::{Backends, ObjectStoreConfig, S3Config};
use artifactapi::storage::DatabaseConfig;
use tokio::process::{Child, Command};

use crate::tools::{run, which};

const SETUP: &str = "run tests/setup/scaleout.sh (make e2e-tools)";
/// The credentials the S3 server checks.
pub const S3_ACCESS_KEY: &str = "artifactapi-test";
/// The credentials the S3 server checks.
pub const S3_SECRET_KEY: &str = "artifactapi-test-secret";

/// A loopback port nothing listens on now, for a server about to start.
///
/// Ports come from a range below the kernel's ephemeral ones, each handed
/// out once per process: two servers starting at once in concurrent tests
/// never get the same port (a port the kernel picks for `:0` is free only
/// until someone else binds it), nor one an outgoing connection holds.
pub fn free_port() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = 20000 + (std::process::id() % 100) as u16 * 100;
    loop {
        let offset = NEXT.fetch_add(1, Ordering::Relaxed) % 10000;
        let port = 20000 + (base - 20000 + offset) % 10000;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Waits until something accepts connections on `port`.
async fn wait_for_port(port: u16, what: &str) {
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what} did not start listening on port {port}");
}

fn output(program: &str, args: &[&str]) -> String {
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A PostgreSQL server of its own, in a throwaway data folder. Run as the
/// `postgres` user when the tests run as root (initdb refuses root).
pub struct Postgres {
    /// Its port.
    pub port: u16,
    dir: tempfile::TempDir,
    bin: PathBuf,
    running: bool,
}

impl Postgres {
    /// Creates a cluster and starts its server.
    pub async fn start() -> Postgres {
        which("pg_config", SETUP);
        let bin = PathBuf::from(output("pg_config", &["--bindir"]));
        assert!(
            bin.join("initdb").is_file(),
            "PostgreSQL is missing: {SETUP}"
        );
        let dir = tempfile::tempdir().unwrap();
        if as_root() {
            let uid: u32 = output("id", &["-u", "postgres"]).parse().unwrap();
            let gid: u32 = output("id", &["-g", "postgres"]).parse().unwrap();
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
        }
        let mut postgres = Postgres {
            port: free_port(),
            dir,
            bin,
            running: false,
        };
        let data = postgres.data();
        run(
            &mut postgres.command(
                "initdb",
                &[
                    "-D",
                    &data,
                    "--no-sync",
                    "-A",
                    "trust",
                    "-U",
                    "postgres",
                    "-E",
                    "UTF8",
                    "--locale=C",
                ],
            ),
            Duration::from_secs(120),
        )
        .await;
        postgres.resume().await;
        postgres
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn command(&self, tool: &str, args: &[&str]) -> Command {
        let program = self.bin.join(tool);
        let mut command = if as_root() {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        } else {
            Command::new(program)
        };
        command.args(args);
        command
    }

    /// `postgres://postgres@127.0.0.1:PORT/DATABASE`.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Stops the server (its data stays).
    pub async fn stop(&mut self) {
        let data = self.data();
        run(
            &mut self.command("pg_ctl", &["-D", &data, "-m", "fast", "-w", "stop"]),
            Duration::from_secs(60),
        )
        .await;
        self.running = false;
    }

    /// Starts the server again on the same port and data.
    pub async fn resume(&mut self) {
        let data = self.data();
        let log = self.dir.path().join("server.log").display().to_string();
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200",
            self.port,
            self.dir.path().display()
        );
        run(
            &mut self.command(
                "pg_ctl",
                &["-D", &data, "-o", &options, "-l", &log, "-w", "start"],
            ),
            Duration::from_secs(60),
        )
        .await;
        self.running = true;
        wait_for_port(self.port, "PostgreSQL").await;
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if !self.running {
            return;
        }
        let data = self.data();
        let program = self.bin.join("pg_ctl");
        let mut command = if as_root() {
            let mut command = std::process::Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        } else {
            std::process::Command::new(program)
        };
        let _ = command
            .args(["-D", &data, "-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn as_root() -> bool {
    output("id", &["-u"]) == "0"
}

/// A Redis server of its own, keeping nothing on disk.
pub struct RedisServer {
    /// Its port.
    pub port: u16,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a server.
    pub async fn start() -> RedisServer {
        let mut redis = RedisServer {
            port: free_port(),
            child: None,
        };
        redis.resume().await;
        redis
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server: everything it held is lost.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// Starts a new, empty server on the same port.
    pub async fn resume(&mut self) {
        let program = which("redis-server", SETUP);
        let child = Command::new(program)
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("cannot start redis-server");
        self.child = Some(child);
        wait_for_port(self.port, "redis-server").await;
    }
}

/// An S3 server (s3s-fs) over a folder of its own; each bucket is a folder.
pub struct S3Server {
    /// Its port.
    pub port: u16,
    root: tempfile::TempDir,
    _child: Child,
}

impl S3Server {
    /// Starts a server.
    pub async fn start() -> S3Server {
        let program = crate::tools_dir().join("bin/s3s-fs");
        assert!(program.is_file(), "s3s-fs is missing: {SETUP}");
        let root = tempfile::tempdir().unwrap();
        let port = free_port();
        let child = Command::new(program)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", S3_ACCESS_KEY, "--secret-key", S3_SECRET_KEY])
            .arg(root.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("cannot start s3s-fs");
        wait_for_port(port, "s3s-fs").await;
        S3Server {
            port,
            root,
            _child: child,
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Creates a bucket and returns its folder.
    pub fn bucket(&self, name: &str) -> PathBuf {
        let dir = self.root.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// The bucket `name` as an object store configuration (its folder
    /// created).
    pub fn config(&self, name: &str) -> S3Config {
        self.bucket(name);
        S3Config {
            bucket: name.to_string(),
            prefix: None,
            endpoint: Some(self.endpoint()),
            access_key_id: Some(S3_ACCESS_KEY.into()),
            secret_access_key: Some(S3_SECRET_KEY.into()),
            region: Some("us-east-1".into()),
        }
    }
}

/// PostgreSQL, Redis and an S3 server together, as replicas share them.
pub struct SharedBackends {
    /// The metadata database's server.
    pub postgres: Postgres,
    /// The cache and locks.
    pub redis: RedisServer,
    /// The blobs' server.
    pub s3: S3Server,
}

/// The database and bucket the replicas of one [`SharedBackends`] use.
const NAME: &str = "artifacts";

impl SharedBackends {
    /// Starts all three.
    pub async fn start() -> SharedBackends {
        let (postgres, redis, s3) =
            tokio::join!(Postgres::start(), RedisServer::start(), S3Server::start());
        SharedBackends {
            postgres,
            redis,
            s3,
        }
    }

    /// The backends a replica is configured with.
    pub fn backends(&self) -> Backends {
        Backends {
            database: DatabaseConfig::parse(&self.postgres.url(NAME)).unwrap(),
            redis: Some(self.redis.url()),
            objects: ObjectStoreConfig::S3(self.s3.config(NAME)),
            lock_lease: Duration::from_secs(3),
            local_copies: 64 << 20,
        }
    }

    /// The command-line flags and environment that select these backends.
    pub fn flags(&self) -> (Vec<String>, Vec<(&'static str, String)>) {
        self.s3.bucket(NAME);
        let flags = vec![
            "--database-url".into(),
            self.postgres.url(NAME),
            "--redis-url".into(),
            self.redis.url(),
            "--object-store".into(),
            format!("s3://{NAME}"),
            "--lock-lease-seconds".into(),
            "3".into(),
        ];
        let env = vec![
            ("AWS_ENDPOINT_URL", self.s3.endpoint()),
            ("AWS_ACCESS_KEY_ID", S3_ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY", S3_SECRET_KEY.into()),
            ("AWS_REGION", "us-east-1".into()),
        ];
        (flags, env)
    }

    /// The folder holding the bucket's blobs.
    pub fn blobs_dir(&self) -> PathBuf {
        self.s3.bucket(NAME).join("blobs")
    }

    /// The bucket's folder.
    pub fn bucket_dir(&self) -> PathBuf {
        self.s3.bucket(NAME)
    }
}

/// Every file below `dir`.
pub fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_below(&path));
        } else {
            out.push(path);
        }
    }
    out
}
