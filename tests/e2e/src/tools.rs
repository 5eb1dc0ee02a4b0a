//! External programs the end-to-end tests drive: commands with a deadline,
//! and a static HTTP server over a folder standing in for a public
//! repository.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};

/// The first `tool` on `PATH`, or a panic naming `setup`, the script that
/// installs it.
pub fn which(tool: &str, setup: &str) -> PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(tool))
        .find(|path| path.is_file())
        .unwrap_or_else(|| panic!("{tool} is missing: {setup}"))
}

/// Runs `command` to completion within `timeout` and returns its output;
/// panics, printing its stdout and stderr, when it cannot start, runs too
/// long (it is killed) or exits unsuccessfully.
///
/// The command runs beside the test's own servers on the same runtime, so
/// it never blocks them.
pub async fn run(command: &mut Command, timeout: Duration) -> Output {
    let shown = format!("{:?}", command.as_std());
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {shown}: {e}"));
    let output = match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(output) => output.unwrap_or_else(|e| panic!("{shown}: {e}")),
        Err(_) => panic!("{shown} did not finish within {timeout:?}"),
    };
    assert!(
        output.status.success(),
        "{shown} failed with {}\n--- stdout\n{}\n--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// A static HTTP server (Python's `http.server`) over a folder, on a
/// loopback port the system picks. It is killed when stopped or dropped.
pub struct StaticServer {
    /// Killed on drop.
    child: Child,
    port: u16,
}

impl StaticServer {
    /// Serves `dir` with the `python` interpreter given; its request log
    /// goes to `log`.
    pub async fn start(python: &Path, dir: &Path, log: &Path) -> StaticServer {
        let log = std::fs::File::create(log).unwrap();
        let mut child = Command::new(python)
            .args([
                "-u",
                "-m",
                "http.server",
                "0",
                "--bind",
                "127.0.0.1",
                "--directory",
            ])
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", python.display()));
        // "Serving HTTP on 127.0.0.1 port 40123 (http://127.0.0.1:40123/) ..."
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        let read = stdout.read_line(&mut line);
        tokio::time::timeout(Duration::from_secs(20), read)
            .await
            .expect("http.server did not start within 20 s")
            .unwrap();
        let port = line
            .split_once(" port ")
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .and_then(|port| port.parse().ok())
            .unwrap_or_else(|| panic!("unexpected http.server banner: {line:?}"));
        StaticServer { child, port }
    }

    /// `http://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Kills the server and waits until it is gone, so that its port
    /// refuses connections.
    pub async fn stop(&mut self) {
        self.child.kill().await.unwrap();
    }
}
