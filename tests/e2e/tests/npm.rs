//! npm registries with real clients: verdaccio (installed by
//! tests/setup/npm.sh) is the upstream that the tests publish to with npm;
//! npm and pnpm install a package with a scoped transitive dependency
//! through an npm remote, `npm ci` checks the lockfile's integrity, and a
//! second install succeeds from the cache once verdaccio is gone. A virtual
//! repository merges the package documents of two registries, and a
//! packument of megabytes passes through the real plugin under the test
//! server's memory cap.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use artifactapi_e2e::tools::run;
use artifactapi_e2e::{
    client, component, eventually, header, plugins_dir, tools_dir, Server, Upstream,
};
use serde_json::{json, Value};
use tokio::process::{Child, Command};

/// How long one client command may take.
const STEP: Duration = Duration::from_secs(180);

/// The abbreviated package document's media type.
const ABBREVIATED: &str = "application/vnd.npm.install-v1+json";

/// What npm sends when it resolves dependencies.
const NPM_ACCEPT: &str = "application/vnd.npm.install-v1+json; q=1.0, application/json; q=0.8, */*";

/// A program that tests/setup/npm.sh installed.
fn program(name: &str) -> PathBuf {
    let path = tools_dir().join("node/node_modules/.bin").join(name);
    assert!(
        path.exists(),
        "{} is missing: run tests/setup/npm.sh (make test does)",
        path.display()
    );
    path
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A client command (`npm`, `pnpm`, `node`) run in `dir` that reads no
/// configuration of the machine's: its home is `home`, its user config is
/// `npmrc`, no proxy is used, and `npm_config_*` variables of the caller are
/// dropped.
fn client_command(program: impl AsRef<OsStr>, dir: &Path, home: &Path, npmrc: &Path) -> Command {
    let mut command = Command::new(program);
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        let lower = key.to_ascii_lowercase();
        if lower.starts_with("npm_config_")
            || lower.starts_with("pnpm_")
            || lower.ends_with("_proxy")
        {
            command.env_remove(key.as_ref());
        }
    }
    std::fs::create_dir_all(home).unwrap();
    command
        .current_dir(dir)
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .env("XDG_CACHE_HOME", home.join(".cache"))
        .env("XDG_DATA_HOME", home.join(".local/share"))
        .env("XDG_STATE_HOME", home.join(".local/state"))
        .env("npm_config_userconfig", npmrc)
        .env("npm_config_globalconfig", home.join("global-npmrc"))
        .env("npm_config_update_notifier", "false")
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost");
    command
}

/// verdaccio on a loopback port, without uplinks, with htpasswd users who
/// may publish; killed when stopped or dropped.
struct Verdaccio {
    /// Killed on drop (`kill_on_drop`).
    child: Child,
    port: u16,
}

impl Verdaccio {
    /// Starts it over a fresh storage folder under `dir` and waits until it
    /// answers.
    async fn start(dir: &Path) -> Verdaccio {
        std::fs::create_dir_all(dir).unwrap();
        let config = dir.join("config.yaml");
        std::fs::write(
            &config,
            format!(
                "storage: {storage}\n\
                 auth:\n  htpasswd:\n    file: {htpasswd}\n    max_users: 100\n\
                 packages:\n  '**':\n    access: $all\n    publish: $authenticated\n\
                 web:\n  enable: false\n\
                 log: {{ type: stdout, format: pretty, level: warn }}\n",
                storage = dir.join("storage").display(),
                htpasswd = dir.join("htpasswd").display(),
            ),
        )
        .unwrap();
        let port = free_port();
        let log = dir.join("verdaccio.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(program("verdaccio"))
            .arg("--config")
            .arg(&config)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .kill_on_drop(true)
            .spawn()
            .expect("cannot start verdaccio");
        let verdaccio = Verdaccio { child, port };
        let ping = format!("{}/-/ping", verdaccio.url());
        let ready = eventually(Duration::from_secs(60), || async {
            match client().get(&ping).send().await {
                Ok(response) => response.status().is_success(),
                Err(_) => false,
            }
        })
        .await;
        assert!(
            ready,
            "verdaccio did not start:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        verdaccio
    }

    /// `http://127.0.0.1:port`.
    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Creates a user and returns its token.
    async fn add_user(&self, name: &str) -> String {
        let response = client()
            .put(format!("{}/-/user/org.couchdb.user:{name}", self.url()))
            .json(&json!({"name": name, "password": "e2e-secret-1", "type": "user"}))
            .send()
            .await
            .unwrap();
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        assert_eq!(status, 201, "adding user {name}: {body}");
        body["token"].as_str().unwrap().to_string()
    }

    /// Kills it and waits until it is gone, so that its port refuses
    /// connections.
    async fn stop(&mut self) {
        self.child.kill().await.unwrap();
    }
}

/// A package to publish: its name, version, dependencies and `index.js`.
struct Package {
    name: &'static str,
    version: &'static str,
    dependencies: Value,
    code: &'static str,
}

/// The three demo packages: demo-app needs demo-lib, which needs the scoped
/// @demo/util.
fn demo_packages() -> Vec<Package> {
    vec![
        Package {
            name: "@demo/util",
            version: "1.0.0",
            dependencies: json!({}),
            code: "exports.shout = (text) => text.toUpperCase() + '!';\n",
        },
        Package {
            name: "demo-lib",
            version: "1.0.0",
            dependencies: json!({"@demo/util": "^1.0.0"}),
            code: "const { shout } = require('@demo/util');\n\
                   module.exports = (name) => shout('hello ' + name);\n",
        },
        Package {
            name: "demo-app",
            version: "1.0.0",
            dependencies: json!({"demo-lib": "^1.0.0"}),
            code: "console.log(require('demo-lib')('world'));\n",
        },
    ]
}

/// Publishes `packages` to `verdaccio` with `npm publish`, as a new user.
async fn publish(verdaccio: &Verdaccio, work: &Path, packages: &[Package]) {
    let token = verdaccio.add_user("publisher").await;
    let dir = work.join(format!("publish-{}", verdaccio.port));
    let npmrc = dir.join("npmrc");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        &npmrc,
        format!(
            "registry={url}/\n//127.0.0.1:{port}/:_authToken={token}\n",
            url = verdaccio.url(),
            port = verdaccio.port
        ),
    )
    .unwrap();
    for package in packages {
        let root = dir.join(package.name.replace('/', "+"));
        std::fs::create_dir_all(&root).unwrap();
        let manifest = json!({
            "name": package.name,
            "version": package.version,
            "description": format!("{} for the artifactapi end-to-end tests", package.name),
            "main": "index.js",
            "license": "MIT",
            "dependencies": package.dependencies,
        });
        std::fs::write(root.join("package.json"), manifest.to_string()).unwrap();
        std::fs::write(root.join("index.js"), package.code).unwrap();
        run(
            client_command("npm", &root, &dir.join("home"), &npmrc)
                .args(["publish", "--access", "public", "--registry"])
                .arg(format!("{}/", verdaccio.url())),
            STEP,
        )
        .await;
    }
}

/// A fresh project folder `dir` whose `.npmrc` points at `registry`.
fn project(dir: &Path, registry: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("package.json"),
        json!({"name": "consumer", "version": "1.0.0", "private": true}).to_string(),
    )
    .unwrap();
    let npmrc = dir.join(".npmrc");
    std::fs::write(&npmrc, format!("registry={registry}\n")).unwrap();
    npmrc
}

/// npm in the project `dir` against `registry`, with its cache at `cache`
/// and its home beside `dir`.
fn npm(dir: &Path, registry: &str, cache: &Path) -> Command {
    let home = dir.parent().unwrap().join("home");
    let mut command = client_command("npm", dir, &home, &dir.join(".npmrc"));
    command
        .env("npm_config_registry", registry)
        .arg("--cache")
        .arg(cache);
    command
}

/// Runs `node_modules/{main}/index.js` in `dir` and checks what it prints.
async fn assert_runs(dir: &Path, main: &str, printed: &str) {
    let output = run(
        Command::new("node")
            .arg(format!("node_modules/{main}/index.js"))
            .current_dir(dir),
        STEP,
    )
    .await;
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), printed);
}

/// `npm install {package}` into a fresh project at `dir` with a fresh cache
/// beside it; returns the lockfile.
async fn npm_install(dir: &Path, registry: &str, package: &str) -> Value {
    project(dir, registry);
    run(
        npm(dir, registry, &dir.parent().unwrap().join("npm-cache")).args([
            "install",
            "--no-audit",
            "--no-fund",
            package,
        ]),
        STEP,
    )
    .await;
    let lock = std::fs::read_to_string(dir.join("package-lock.json")).unwrap();
    serde_json::from_str(&lock).unwrap()
}

/// The `resolved` URL and `integrity` the lockfile records for a package.
fn locked(lock: &Value, name: &str) -> (String, String) {
    let entry = &lock["packages"][format!("node_modules/{name}")];
    let field = |key: &str| {
        entry[key]
            .as_str()
            .unwrap_or_else(|| panic!("no {key} for {name} in {lock}"))
            .to_string()
    };
    (field("resolved"), field("integrity"))
}

/// The `dist.integrity` of `name@version` as the upstream registry has it.
async fn upstream_integrity(registry: &str, name: &str, version: &str) -> String {
    let doc: Value = client()
        .get(format!("{registry}/{}", name.replace('/', "%2f")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    doc["versions"][version]["dist"]["integrity"]
        .as_str()
        .unwrap_or_else(|| panic!("no integrity for {name}@{version} in {doc}"))
        .to_string()
}

/// GETs `url` with an `accept` header; returns the status, the headers and
/// the body.
async fn get(url: &str, accept: &str) -> (u16, reqwest::header::HeaderMap, String) {
    let response = client()
        .get(url)
        .header("accept", accept)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (status, headers, response.text().await.unwrap())
}

async fn start_server(remotes: &str) -> Server {
    let npm = component(&plugins_dir(), "npm.wasm");
    Server::start_with(remotes, &[(&npm, "npm.wasm")], Duration::from_secs(10)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn npm_and_pnpm_install_through_the_proxy_and_from_the_cache_once_the_upstream_is_gone() {
    let work = tempfile::tempdir().unwrap();
    let work = work.path();
    let mut verdaccio = Verdaccio::start(&work.join("verdaccio")).await;
    publish(&verdaccio, work, &demo_packages()).await;
    let server = start_server(&format!(
        "remotes:\n  npm:\n    type: remote\n    package: npm\n    base_url: \"{}\"\n",
        verdaccio.url()
    ))
    .await;
    let repo = server.url("/api/v1/remote/npm");
    let registry = format!("{repo}/");

    // npm: the lockfile points at the proxy and keeps the upstream's
    // integrity; `npm ci` with an empty cache downloads and checks it again.
    let npm_dir = work.join("npm/project");
    let lock = npm_install(&npm_dir, &registry, "demo-app").await;
    assert_runs(&npm_dir, "demo-app", "HELLO WORLD!").await;
    for (name, file) in [
        ("demo-app", "demo-app/-/demo-app-1.0.0.tgz"),
        ("demo-lib", "demo-lib/-/demo-lib-1.0.0.tgz"),
        ("@demo/util", "@demo/util/-/util-1.0.0.tgz"),
    ] {
        let (resolved, integrity) = locked(&lock, name);
        assert_eq!(resolved, format!("{repo}/{file}"), "{name}");
        assert!(integrity.starts_with("sha512-"), "{name}: {integrity}");
        assert_eq!(
            integrity,
            upstream_integrity(&verdaccio.url(), name, "1.0.0").await,
            "{name}"
        );
    }
    std::fs::remove_dir_all(npm_dir.join("node_modules")).unwrap();
    run(
        npm(&npm_dir, &registry, &work.join("npm/ci-cache")).args([
            "ci",
            "--no-audit",
            "--no-fund",
        ]),
        STEP,
    )
    .await;
    assert_runs(&npm_dir, "demo-app", "HELLO WORLD!").await;
    // `-/` endpoints pass through to the upstream.
    run(
        npm(&npm_dir, &registry, &work.join("npm/ci-cache")).arg("ping"),
        STEP,
    )
    .await;

    // pnpm, with a store of its own.
    let pnpm_dir = work.join("pnpm/project");
    let npmrc = project(&pnpm_dir, &registry);
    run(
        client_command(program("pnpm"), &pnpm_dir, &work.join("pnpm/home"), &npmrc)
            .env("npm_config_registry", &registry)
            .args([
                "add",
                "demo-app",
                "--reporter",
                "append-only",
                "--store-dir",
            ])
            .arg(work.join("pnpm/store")),
        STEP,
    )
    .await;
    assert_runs(&pnpm_dir, "demo-app", "HELLO WORLD!").await;
    let pnpm_lock = std::fs::read_to_string(pnpm_dir.join("pnpm-lock.yaml")).unwrap();
    for name in ["demo-app", "demo-lib", "@demo/util"] {
        let integrity = upstream_integrity(&verdaccio.url(), name, "1.0.0").await;
        assert!(pnpm_lock.contains(&integrity), "{name}:\n{pnpm_lock}");
    }
    assert!(!pnpm_lock.contains(&verdaccio.url()), "{pnpm_lock}");

    // The package documents: the abbreviated form for installers, the full
    // one otherwise; both spellings of a scoped name are the same document.
    let (status, headers, body) = get(&format!("{repo}/demo-lib"), NPM_ACCEPT).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(header(&headers, "content-type"), ABBREVIATED);
    assert_eq!(header(&headers, "x-artifact-plugin"), "npm@0.1.0");
    let doc: Value = serde_json::from_str(&body).unwrap();
    let fields: Vec<&str> = doc
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(fields, ["name", "modified", "dist-tags", "versions"]);
    let version = &doc["versions"]["1.0.0"];
    assert_eq!(version["dependencies"], json!({"@demo/util": "^1.0.0"}));
    assert_eq!(
        version["dist"]["tarball"],
        format!("{repo}/demo-lib/-/demo-lib-1.0.0.tgz")
    );
    assert_eq!(version.get("description"), None);
    assert_eq!(version.get("_id"), None);

    let mut scoped = Vec::new();
    for path in ["@demo%2futil", "@demo/util", "@demo%2Futil"] {
        let (status, headers, body) = get(&format!("{repo}/{path}"), "application/json").await;
        assert_eq!(status, 200, "{path}: {body}");
        assert_eq!(
            header(&headers, "content-type"),
            "application/json",
            "{path}"
        );
        let doc: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(doc["name"], "@demo/util", "{path}");
        assert!(doc["time"]["1.0.0"].is_string(), "{path}: {doc}");
        assert_eq!(
            doc["versions"]["1.0.0"]["dist"]["tarball"],
            format!("{repo}/@demo/util/-/util-1.0.0.tgz"),
            "{path}"
        );
        scoped.push(doc);
    }
    assert!(scoped.windows(2).all(|w| w[0] == w[1]));
    let (status, headers, _) = get(&format!("{repo}/@demo%2futil"), ABBREVIATED).await;
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "content-type"), ABBREVIATED);

    // Without the upstream: everything comes from the cache.
    verdaccio.stop().await;
    assert!(
        client()
            .get(format!("{}/-/ping", verdaccio.url()))
            .send()
            .await
            .is_err(),
        "verdaccio is still up"
    );
    let offline_dir = work.join("offline/project");
    let lock = npm_install(&offline_dir, &registry, "demo-app").await;
    assert_runs(&offline_dir, "demo-app", "HELLO WORLD!").await;
    for name in ["demo-app", "demo-lib", "@demo/util"] {
        let (resolved, _) = locked(&lock, name);
        let response = client().get(&resolved).send().await.unwrap();
        assert_eq!(response.status(), 200, "{resolved}");
        assert_eq!(
            header(response.headers(), "x-artifact-source"),
            "cache",
            "{resolved}"
        );
        let content_type = header(response.headers(), "content-type");
        assert!(
            content_type.starts_with("application/octet-stream"),
            "{resolved}: {content_type}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_virtual_repository_merges_the_package_documents_of_its_members() {
    let work = tempfile::tempdir().unwrap();
    let work = work.path();
    let (first_dir, second_dir) = (work.join("first"), work.join("second"));
    let (first, second) = tokio::join!(Verdaccio::start(&first_dir), Verdaccio::start(&second_dir));
    // demo-lib 1.1.0 and demo-tool exist only in the second registry.
    let extra = [
        Package {
            name: "demo-lib",
            version: "1.1.0",
            dependencies: json!({"@demo/util": "^1.0.0"}),
            code: "const { shout } = require('@demo/util');\n\
                   module.exports = (name) => shout('hi ' + name);\n",
        },
        Package {
            name: "demo-tool",
            version: "1.0.0",
            dependencies: json!({"demo-lib": "^1.1.0"}),
            code: "console.log(require('demo-lib')('tool'));\n",
        },
    ];
    let demo = demo_packages();
    tokio::join!(publish(&first, work, &demo), publish(&second, work, &extra));
    let server = start_server(&format!(
        "remotes:
  first:
    type: remote
    package: npm
    base_url: \"{first}\"
  second:
    type: remote
    package: npm
    base_url: \"{second}\"
  all:
    type: virtual
    package: npm
    members: [first, second]
",
        first = first.url(),
        second = second.url(),
    ))
    .await;
    let repo = server.url("/api/v1/remote/all");

    let (status, headers, body) = get(&format!("{repo}/demo-lib"), "application/json").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(header(&headers, "content-type"), "application/json");
    let doc: Value = serde_json::from_str(&body).unwrap();
    let versions: Vec<&str> = doc["versions"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(versions, ["1.0.0", "1.1.0"]);
    assert_eq!(doc["dist-tags"]["latest"], "1.0.0");
    for version in versions {
        assert_eq!(
            doc["versions"][version]["dist"]["tarball"],
            format!("{repo}/demo-lib/-/demo-lib-{version}.tgz")
        );
    }
    assert!(doc["time"]["1.0.0"].is_string(), "{doc}");
    assert!(doc["time"]["1.1.0"].is_string(), "{doc}");

    // npm resolves demo-tool (second member only), its demo-lib ^1.1.0 from
    // the merged document, and @demo/util from the first member.
    let registry = format!("{repo}/");
    let dir = work.join("virtual/project");
    let lock = npm_install(&dir, &registry, "demo-tool").await;
    assert_runs(&dir, "demo-tool", "HI TOOL!").await;
    for (name, file) in [
        ("demo-tool", "demo-tool/-/demo-tool-1.0.0.tgz"),
        ("demo-lib", "demo-lib/-/demo-lib-1.1.0.tgz"),
        ("@demo/util", "@demo/util/-/util-1.0.0.tgz"),
    ] {
        let (resolved, _) = locked(&lock, name);
        assert_eq!(resolved, format!("{repo}/{file}"), "{name}");
    }
}

/// A packument of about 12 MB: 3,000 versions with a readme each.
fn big_packument(base: &str) -> String {
    let mut versions = Vec::new();
    let mut times = Vec::new();
    for i in 0..3_000 {
        let version = format!("1.{}.{}", i / 100, i % 100);
        versions.push(format!(
            r#""{version}":{{"name":"big","version":"{version}","readme":"{readme}","dependencies":{{"left-pad":"^1.0.0"}},"dist":{{"shasum":"abc","tarball":"{base}/big/-/big-{version}.tgz"}}}}"#,
            readme = "Lots to say. ".repeat(300),
        ));
        times.push(format!(r#""{version}":"2020-01-01T00:00:00.000Z""#));
    }
    format!(
        r#"{{"name":"big","dist-tags":{{"latest":"1.29.99"}},"versions":{{{}}},"time":{{{}}}}}"#,
        versions.join(","),
        times.join(",")
    )
}

#[tokio::test]
async fn a_packument_of_megabytes_is_rewritten_within_the_plugin_memory_cap() {
    let upstream = Upstream::start().await;
    let base = format!("{}/files", upstream.url());
    let doc = big_packument(&base);
    assert!(doc.len() > 11 << 20, "{} bytes", doc.len());
    upstream.put("big", doc.clone());
    let server = start_server(&format!(
        "remotes:\n  npm:\n    type: remote\n    package: npm\n    base_url: \"{base}\"\n"
    ))
    .await;
    let repo = server.url("/api/v1/remote/npm");

    for accept in ["application/json", NPM_ACCEPT] {
        let (status, headers, body) = get(&format!("{repo}/big"), accept).await;
        assert_eq!(status, 200, "{accept}: {body}");
        let doc: Value = serde_json::from_str(&body).unwrap();
        let versions = doc["versions"].as_object().unwrap();
        assert_eq!(versions.len(), 3_000, "{accept}");
        assert_eq!(
            versions["1.29.99"]["dist"]["tarball"],
            format!("{repo}/big/-/big-1.29.99.tgz")
        );
        let abbreviated = header(&headers, "content-type") == ABBREVIATED;
        assert_eq!(abbreviated, accept == NPM_ACCEPT);
        assert_eq!(versions["1.0.0"].get("readme").is_some(), !abbreviated);
    }
    assert_eq!(upstream.hits("files/big"), 1);
}
