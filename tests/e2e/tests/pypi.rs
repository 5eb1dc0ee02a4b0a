//! Python package indexes with real clients: pip and uv (installed by
//! tests/setup/pypi.sh) install a package and its dependency through a pypi
//! remote whose upstream is pypiserver, download an sdist, and do it all
//! again from the cache once pypiserver is gone. Simple pages follow PEP 691
//! content negotiation; a JSON index on one host can list files of another;
//! a virtual repository resolves a dependency found in another member.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use artifactapi_e2e::tools::run;
use artifactapi_e2e::{client, component, header, plugins_dir, tools_dir, Server, Upstream};
use serde_json::{json, Value};
use tokio::process::{Child, Command};

/// How long one client or build command may take.
const STEP: Duration = Duration::from_secs(180);

/// What pip and uv send to ask for PEP 691 JSON.
const JSON_ACCEPT: &str = "application/vnd.pypi.simple.v1+json, \
     application/vnd.pypi.simple.v1+html;q=0.2, text/html;q=0.01";

const LIB_WHEEL: &str = "demo_lib-0.1.0-py3-none-any.whl";
const LIB_SDIST: &str = "demo_lib-0.1.0.tar.gz";
const APP_WHEEL: &str = "demo_app-0.1.0-py3-none-any.whl";

/// The programs of the venv tests/setup/pypi.sh installs.
fn program(name: &str) -> PathBuf {
    let path = tools_dir().join("pypi/bin").join(name);
    assert!(
        path.is_file(),
        "{} is missing: run tests/setup/pypi.sh (make test does)",
        path.display()
    );
    path
}

/// A command of the tools venv, with none of the machine's pip or uv
/// settings (it sets a global wheel folder, among others).
fn command(name: &str) -> Command {
    let mut command = Command::new(program(name));
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("PIP_") || key.starts_with("UV_") {
            command.env_remove(key.as_ref());
        }
    }
    command
        .env("PIP_CONFIG_FILE", "/dev/null")
        .env("PIP_DISABLE_PIP_VERSION_CHECK", "1")
        .env("UV_NO_CONFIG", "1")
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost")
        .env_remove("VIRTUAL_ENV");
    command
}

/// Writes a setuptools project `name` (module `module`) under `dir`.
fn write_project(dir: &Path, name: &str, module: &str, dependencies: &str, code: &str) -> PathBuf {
    let root = dir.join(name);
    std::fs::create_dir_all(root.join(module)).unwrap();
    std::fs::write(
        root.join("pyproject.toml"),
        format!(
            "[build-system]\nrequires = [\"setuptools\"]\nbuild-backend = \"setuptools.build_meta\"\n\n\
             [project]\nname = \"{name}\"\nversion = \"0.1.0\"\nrequires-python = \">=3.8\"\n\
             dependencies = [{dependencies}]\n\n[tool.setuptools]\npackages = [\"{module}\"]\n"
        ),
    )
    .unwrap();
    std::fs::write(root.join(module).join("__init__.py"), code).unwrap();
    root
}

/// Builds, offline, demo-lib (wheel and sdist) into `{work}/libs` and
/// demo-app (a wheel that needs demo-lib) into `{work}/apps`.
async fn build_packages(work: &Path) -> (PathBuf, PathBuf) {
    let lib = write_project(work, "demo-lib", "demo_lib", "", "VALUE = 42\n");
    let app = write_project(
        work,
        "demo-app",
        "demo_app",
        "\"demo-lib>=0.1\"",
        "import demo_lib\n\n\ndef answer():\n    return demo_lib.VALUE\n",
    );
    let (libs, apps) = (work.join("libs"), work.join("apps"));
    let mut build_lib = command("python");
    build_lib
        .args([
            "-m",
            "build",
            "--no-isolation",
            "--sdist",
            "--wheel",
            "--outdir",
        ])
        .arg(&libs)
        .arg(&lib);
    let mut build_app = command("python");
    build_app
        .args(["-m", "build", "--no-isolation", "--wheel", "--outdir"])
        .arg(&apps)
        .arg(&app);
    tokio::join!(run(&mut build_lib, STEP), run(&mut build_app, STEP));
    for file in [
        libs.join(LIB_WHEEL),
        libs.join(LIB_SDIST),
        apps.join(APP_WHEEL),
    ] {
        assert!(file.is_file(), "{} was not built", file.display());
    }
    (libs, apps)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// pypiserver over package folders on a loopback port; killed when stopped
/// or dropped.
struct PypiServer {
    /// Killed on drop (`kill_on_drop`).
    child: Child,
    port: u16,
}

impl PypiServer {
    /// Starts it without authentication and without falling back to the
    /// public index, and waits until it answers.
    async fn start(dirs: &[&Path], log: &Path) -> PypiServer {
        let port = free_port();
        let child = command("pypi-server")
            .args(["run", "-i", "127.0.0.1", "-p", &port.to_string()])
            .args(["-a", ".", "-P", ".", "--disable-fallback"])
            .args(dirs)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .kill_on_drop(true)
            .spawn()
            .expect("cannot start pypi-server");
        let server = PypiServer { child, port };
        let ready = artifactapi_e2e::eventually(Duration::from_secs(30), || async {
            match client()
                .get(format!("{}/simple/", server.url()))
                .send()
                .await
            {
                Ok(response) => response.status().is_success(),
                Err(_) => false,
            }
        })
        .await;
        assert!(
            ready,
            "pypi-server did not start:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        server
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Kills it and waits until it is gone, so that its port refuses
    /// connections.
    async fn stop(&mut self) {
        self.child.kill().await.unwrap();
    }
}

async fn start_server(remotes: &str) -> Server {
    let pypi = component(&plugins_dir(), "pypi.wasm");
    Server::start_with(remotes, &[(&pypi, "pypi.wasm")], Duration::from_secs(10)).await
}

/// A fresh venv without pip; the tools venv's pip and uv install into it.
async fn fresh_venv(dir: &Path) -> PathBuf {
    run(
        command("python")
            .args(["-m", "venv", "--without-pip"])
            .arg(dir),
        STEP,
    )
    .await;
    dir.join("bin/python")
}

/// Checks that `python` imports demo_app and, through it, demo_lib.
async fn assert_demo_app_works(python: &Path) {
    let output = run(
        Command::new(python).args(["-c", "import demo_app; print(demo_app.answer())"]),
        STEP,
    )
    .await;
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "42");
}

/// `pip install demo-app` from `index` into a fresh venv at `dir`.
async fn pip_install(index: &str, dir: &Path) {
    let python = fresh_venv(dir).await;
    run(
        command("python")
            .args(["-m", "pip", "--python"])
            .arg(&python)
            .args([
                "install",
                "--no-cache-dir",
                "--index-url",
                index,
                "demo-app",
            ]),
        STEP,
    )
    .await;
    assert_demo_app_works(&python).await;
}

/// `uv pip install demo-app` from `index` into a fresh venv at `dir`.
async fn uv_install(index: &str, dir: &Path) {
    let python = fresh_venv(dir).await;
    run(
        command("uv")
            .args(["pip", "install", "--no-cache", "--python"])
            .arg(&python)
            .args(["--index-url", index, "demo-app"]),
        STEP,
    )
    .await;
    assert_demo_app_works(&python).await;
}

/// `pip download` of demo-lib's sdist from `index` into `dir`.
async fn pip_download_sdist(index: &str, dir: &Path) {
    run(
        command("python")
            .args(["-m", "pip", "download", "--no-cache-dir", "--no-deps"])
            .args(["--no-binary", ":all:", "--no-build-isolation", "--dest"])
            .arg(dir)
            .args(["--index-url", index, "demo-lib"]),
        STEP,
    )
    .await;
    assert!(
        dir.join(LIB_SDIST).is_file(),
        "pip download left no {LIB_SDIST} in {}",
        dir.display()
    );
}

/// GETs `url` with an `Accept` header; returns the status, the content type,
/// `x-artifact-source` and the body.
async fn get(url: &str, accept: Option<&str>) -> (u16, String, String, String) {
    let mut request = client().get(url);
    if let Some(accept) = accept {
        request = request.header("accept", accept);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let content_type = header(response.headers(), "content-type");
    let source = header(response.headers(), "x-artifact-source");
    (status, content_type, source, response.text().await.unwrap())
}

/// The files of a PEP 691 JSON page: (filename, url).
fn json_files(page: &Value) -> Vec<(String, String)> {
    page["files"]
        .as_array()
        .unwrap_or_else(|| panic!("no files in {page}"))
        .iter()
        .map(|f| {
            (
                f["filename"].as_str().unwrap().to_string(),
                f["url"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn pip_and_uv_install_through_the_proxy_and_from_the_cache_once_the_upstream_is_gone() {
    let work = tempfile::tempdir().unwrap();
    let (libs, apps) = build_packages(work.path()).await;
    let mut pypiserver =
        PypiServer::start(&[&libs, &apps], &work.path().join("pypiserver.log")).await;
    let server = start_server(&format!(
        "remotes:\n  pypi:\n    type: remote\n    package: pypi\n    base_url: \"{}\"\n",
        pypiserver.url()
    ))
    .await;
    let repo = server.url("/api/v1/remote/pypi");
    let index = format!("{repo}/simple");

    for round in ["online", "offline"] {
        let dir = work.path().join(round);
        pip_install(&index, &dir.join("pip-venv")).await;
        uv_install(&index, &dir.join("uv-venv")).await;
        pip_download_sdist(&index, &dir.join("sdist")).await;
        if round == "online" {
            pypiserver.stop().await;
        }
    }
    assert!(
        client()
            .get(format!("{}/simple/", pypiserver.url()))
            .send()
            .await
            .is_err(),
        "pypiserver is still up"
    );

    for file in [LIB_WHEEL, LIB_SDIST, APP_WHEEL] {
        let (status, _, source, _) = get(&format!("{repo}/packages/{file}"), None).await;
        assert_eq!((status, source.as_str()), (200, "cache"), "{file}");
    }
    let (status, _, source, page) = get(&format!("{index}/demo-app/"), None).await;
    assert_eq!((status, source.as_str()), (200, "cache"));
    assert!(
        page.contains(&format!("{repo}/packages/{APP_WHEEL}#sha256=")),
        "{page}"
    );
}

#[tokio::test]
async fn simple_pages_follow_pep_691_content_negotiation() {
    let work = tempfile::tempdir().unwrap();
    let (libs, apps) = build_packages(work.path()).await;
    let pypiserver = PypiServer::start(&[&libs, &apps], &work.path().join("pypiserver.log")).await;
    let server = start_server(&format!(
        "remotes:\n  pypi:\n    type: remote\n    package: pypi\n    base_url: \"{}\"\n",
        pypiserver.url()
    ))
    .await;
    let repo = server.url("/api/v1/remote/pypi");

    let (status, content_type, _, body) =
        get(&format!("{repo}/simple/demo-lib/"), Some(JSON_ACCEPT)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(content_type, "application/vnd.pypi.simple.v1+json");
    let page: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(page["meta"]["api-version"], "1.0");
    assert_eq!(page["name"], "demo-lib");
    let mut files = json_files(&page);
    files.sort();
    assert_eq!(
        files,
        [
            (
                LIB_WHEEL.to_string(),
                format!("{repo}/packages/{LIB_WHEEL}")
            ),
            (
                LIB_SDIST.to_string(),
                format!("{repo}/packages/{LIB_SDIST}")
            ),
        ]
    );
    for file in page["files"].as_array().unwrap() {
        assert_eq!(
            file["hashes"]["sha256"].as_str().unwrap().len(),
            64,
            "{file}"
        );
    }

    // Another spelling of the name, without the slash: the same cached page,
    // as HTML for a client that asks for nothing in particular.
    for accept in [Some("text/html"), None] {
        let (status, content_type, source, html) =
            get(&format!("{repo}/simple/Demo_Lib"), accept).await;
        assert_eq!((status, source.as_str()), (200, "cache"), "{html}");
        assert!(content_type.starts_with("text/html"), "{content_type}");
        assert!(
            html.contains(&format!("<a href=\"{repo}/packages/{LIB_SDIST}#sha256=")),
            "{html}"
        );
        assert!(!html.contains(&pypiserver.url()), "{html}");
    }

    let (_, content_type, _, body) = get(&format!("{repo}/simple/"), Some(JSON_ACCEPT)).await;
    assert_eq!(content_type, "application/vnd.pypi.simple.v1+json");
    let root: Value = serde_json::from_str(&body).unwrap();
    let mut names: Vec<&str> = root["projects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["demo-app", "demo-lib"]);
    let (_, _, _, html) = get(&format!("{repo}/simple/"), Some("text/html")).await;
    assert!(
        html.contains(&format!("<a href=\"{repo}/simple/demo-app/\">demo-app</a>")),
        "{html}"
    );

    let (status, _, _, _) = get(&format!("{repo}/simple/no-such-project/"), None).await;
    assert_eq!(status, 404);
}

/// sha256 of a file, by the tools venv's Python.
async fn sha256(path: &Path) -> String {
    let output = run(
        command("python")
            .args([
                "-c",
                "import hashlib, sys; print(hashlib.sha256(open(sys.argv[1], 'rb').read()).hexdigest())",
            ])
            .arg(path),
        STEP,
    )
    .await;
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

#[tokio::test]
async fn a_json_index_on_one_host_lists_files_of_base_url() {
    let work = tempfile::tempdir().unwrap();
    let (libs, _apps) = build_packages(work.path()).await;
    let files_host = PypiServer::start(&[&libs], &work.path().join("pypiserver.log")).await;
    // The index host answers PEP 691 JSON (with PEP 700 sizes and upload
    // times) whose absolute links lead to the files host.
    let index_host = Upstream::start().await;
    let mut files = Vec::new();
    for (name, uploaded) in [
        (LIB_WHEEL, "2024-01-01T00:00:00Z"),
        (LIB_SDIST, "2024-01-02T00:00:00.5Z"),
    ] {
        let path = libs.join(name);
        files.push(json!({
            "filename": name,
            "url": format!("{}/packages/{name}", files_host.url()),
            "hashes": {"sha256": sha256(&path).await},
            "requires-python": ">=3.8",
            "size": std::fs::metadata(&path).unwrap().len(),
            "upload-time": uploaded,
        }));
    }
    let page = json!({
        "meta": {"api-version": "1.1"},
        "name": "demo-lib",
        "files": files,
        "versions": ["0.1.0"],
    });
    index_host.put("simple/demo-lib/", serde_json::to_vec(&page).unwrap());
    let server = start_server(&format!(
        "remotes:\n  split:\n    type: remote\n    package: pypi\n    base_url: \"{}\"\n    settings:\n      index_url: \"{}/files\"\n",
        files_host.url(),
        index_host.url()
    ))
    .await;
    let repo = server.url("/api/v1/remote/split");

    let (status, _, _, body) = get(&format!("{repo}/simple/demo-lib/"), Some(JSON_ACCEPT)).await;
    assert_eq!(status, 200, "{body}");
    let served: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(served["meta"]["api-version"], "1.1");
    assert_eq!(served["versions"], json!(["0.1.0"]));
    assert_eq!(served["files"][1]["upload-time"], "2024-01-02T00:00:00.5Z");
    assert_eq!(
        served["files"][1]["url"],
        format!("{repo}/packages/{LIB_SDIST}")
    );
    let (_, _, _, html) = get(&format!("{repo}/simple/demo-lib/"), Some("text/html")).await;
    assert!(
        html.contains(&format!(
            "<a href=\"{repo}/packages/{LIB_WHEEL}#sha256={}\" data-requires-python=\"&gt;=3.8\">{LIB_WHEEL}</a>",
            served["files"][0]["hashes"]["sha256"].as_str().unwrap()
        )),
        "{html}"
    );

    let target = work.path().join("sdist");
    pip_download_sdist(&format!("{repo}/simple"), &target).await;
    assert_eq!(index_host.hits("files/simple/demo-lib/"), 1);
}

#[tokio::test]
async fn a_virtual_repository_resolves_across_its_members() {
    let work = tempfile::tempdir().unwrap();
    let (libs, apps) = build_packages(work.path()).await;
    let libs_server = PypiServer::start(&[&libs], &work.path().join("libs.log")).await;
    let apps_server = PypiServer::start(&[&apps], &work.path().join("apps.log")).await;
    let server = start_server(&format!(
        "remotes:
  libs:
    type: remote
    package: pypi
    base_url: \"{}\"
  apps:
    type: remote
    package: pypi
    base_url: \"{}\"
  all:
    type: virtual
    package: pypi
    members: [libs, apps]
",
        libs_server.url(),
        apps_server.url()
    ))
    .await;
    let all = server.url("/api/v1/remote/all");

    pip_install(&format!("{all}/simple"), &work.path().join("venv")).await;

    let (status, _, _, body) = get(&format!("{all}/simple/demo-lib/"), Some(JSON_ACCEPT)).await;
    assert_eq!(status, 200, "{body}");
    let page: Value = serde_json::from_str(&body).unwrap();
    let mut files = json_files(&page);
    files.sort();
    assert_eq!(
        files,
        [
            (LIB_WHEEL.to_string(), format!("{all}/packages/{LIB_WHEEL}")),
            (LIB_SDIST.to_string(), format!("{all}/packages/{LIB_SDIST}")),
        ]
    );
    let (_, _, _, html) = get(&format!("{all}/simple/"), None).await;
    for name in ["demo-lib", "demo-app"] {
        assert!(
            html.contains(&format!("<a href=\"{all}/simple/{name}/\">{name}</a>")),
            "{html}"
        );
    }
}
