//! Several artifactapi processes (the release binary) sharing PostgreSQL,
//! Redis and an S3 bucket, and nginx balancing requests over them round
//! robin, request by request.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use crate::backends::{free_port, SharedBackends};
use crate::tools::which;

/// The server binary `make build` makes.
pub fn server_binary() -> PathBuf {
    let path = crate::workspace().join("target/release/artifactapi");
    assert!(
        path.is_file(),
        "{} is missing: run `make build` first",
        path.display()
    );
    path
}

/// One replica: a server process with its own data folder (spool, plugin
/// compile cache) and its own copy of remotes.yaml.
pub struct Replica {
    /// Its port.
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl Replica {
    /// Starts a replica serving `remotes` on `shared`, with `env` added to
    /// its environment, and waits until it answers.
    pub async fn start(remotes: &str, shared: &SharedBackends, env: &[(&str, &str)]) -> Replica {
        let (flags, backend_env) = shared.flags();
        let mut env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        env.extend(
            backend_env
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        Replica::spawn(remotes, &flags, &env).await
    }

    /// Starts a server process on its own embedded backends, with `args`
    /// added to `serve`'s and `env` to its environment, and waits until it
    /// listens.
    pub async fn start_embedded(remotes: &str, args: &[&str], env: &[(&str, &str)]) -> Replica {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Replica::spawn(remotes, &args, &env).await
    }

    async fn spawn(remotes: &str, flags: &[String], env: &[(String, String)]) -> Replica {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("remotes.yaml");
        std::fs::write(&config, remotes).unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("server.log")).unwrap();
        let child = Command::new(server_binary())
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data")
            .arg(dir.path().join("data"))
            .arg("--plugins")
            .arg(crate::plugins_dir())
            .args(["--gc-interval-minutes", "0"])
            .args(flags)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("RUST_LOG", "info,artifactapi=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("cannot start the server binary");
        let replica = Replica {
            port,
            child: Some(child),
            dir,
        };
        replica.wait_ready().await;
        replica
    }

    /// Waits until the process logs that it serves (it has bound its
    /// port by then), over plain HTTP or TLS alike.
    async fn wait_ready(&self) {
        for _ in 0..300 {
            if self.log().contains("artifactapi serving") {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "replica on port {} did not become ready; its log:\n{}",
            self.port,
            self.log()
        );
    }

    /// `http://127.0.0.1:PORT` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// What the replica logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// Kills the process at once (SIGKILL): nothing it holds is released.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.unwrap();
        }
    }

    /// Files left in its spool.
    pub fn spool_files(&self) -> usize {
        crate::backends::files_below(&self.dir.path().join("data/spool")).len()
    }
}

/// nginx in front of the replicas, passing each request to the next one.
pub struct Balancer {
    /// Its port.
    pub port: u16,
    _child: Child,
    _dir: tempfile::TempDir,
}

impl Balancer {
    /// Starts nginx balancing over `ports`.
    pub async fn start(ports: &[u16]) -> Balancer {
        let nginx = which("nginx", "run tests/setup/scaleout.sh (make e2e-tools)");
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let servers: String = ports
            .iter()
            .map(|p| format!("    server 127.0.0.1:{p};\n"))
            .collect();
        let prefix = dir.path().display();
        let conf = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {prefix}/nginx.pid;\n\
             error_log {prefix}/error.log warn;\nevents {{ worker_connections 1024; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {prefix}/body;\n\
             proxy_temp_path {prefix}/proxy;\n  fastcgi_temp_path {prefix}/fastcgi;\n\
             uwsgi_temp_path {prefix}/uwsgi;\n  scgi_temp_path {prefix}/scgi;\n\
             upstream replicas {{\n{servers}    keepalive 16;\n  }}\n\
             server {{\n    listen 127.0.0.1:{port};\n    client_max_body_size 0;\n\
             proxy_request_buffering off;\n    proxy_buffering off;\n\
             proxy_http_version 1.1;\n    proxy_set_header Connection \"\";\n\
             proxy_set_header Host $http_host;\n    proxy_read_timeout 300s;\n\
             location / {{ proxy_pass http://replicas; }}\n  }}\n}}\n"
        );
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let child = Command::new(nginx)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("cannot start nginx");
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return Balancer {
                    port,
                    _child: child,
                    _dir: dir,
                };
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "nginx did not start: {}",
            std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default()
        );
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `http://127.0.0.1:PORT` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}
