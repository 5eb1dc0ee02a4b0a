//! Go module proxies with the real Go client (Debian's Go, installed by
//! tests/setup/go.sh): `go mod download` of a small module graph through a
//! goproxy remote whose upstream is a static GOPROXY file tree, then again
//! with that upstream stopped and an empty module cache. Then the protocol
//! at the HTTP level: 404 and 410 kept apart, a virtual repository merging
//! `@v/list` of a remote and a local member (whose list is generated from
//! its uploads), quarantine from `.info` times, and settings the plugin
//! refuses when the configuration loads.

use std::io::Write as _;
use std::path::Path;
use std::time::Duration;

use artifactapi_e2e::tools::{run, which, StaticServer};
use artifactapi_e2e::{client, component, header, plugins_dir, Server, Upstream};
use tokio::process::Command;

/// How long one go command may take.
const GO_TIMEOUT: Duration = Duration::from_secs(180);

async fn start_server(remotes: &str) -> Server {
    let plugin = component(&plugins_dir(), "goproxy.wasm");
    Server::start_with(
        remotes,
        &[(&plugin, "goproxy.wasm")],
        Duration::from_secs(5),
    )
    .await
}

/// A module zip as the protocol has it: every entry under `module@version/`.
fn module_zip(module: &str, version: &str, files: &[(&str, &str)]) -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, text) in files {
        zip.start_file(format!("{module}@{version}/{name}"), options)
            .unwrap();
        zip.write_all(text.as_bytes()).unwrap();
    }
    zip.finish().unwrap().into_inner()
}

/// One version of a module in a GOPROXY file tree under `root`: `.info`,
/// `.mod` and `.zip`; the module path comes with its case-encoded form. A
/// module whose `go` line is older than 1.17 has its whole requirement
/// graph loaded (no pruning), so go fetches the `.mod` of every version it
/// names.
fn publish(
    root: &Path,
    (module, encoded): (&str, &str),
    version: &str,
    go: &str,
    requires: &[(&str, &str)],
) {
    let dir = root.join(encoded).join("@v");
    std::fs::create_dir_all(&dir).unwrap();
    let mut go_mod = format!("module {module}\n\ngo {go}\n");
    for (dependency, at) in requires {
        go_mod.push_str(&format!("\nrequire {dependency} {at}\n"));
    }
    let package = module.rsplit('/').next().unwrap().to_lowercase();
    let source = format!(
        "package {package}\n\n// Version is the module's version.\nconst Version = \"{version}\"\n"
    );
    std::fs::write(
        dir.join(format!("{version}.info")),
        format!(r#"{{"Version":"{version}","Time":"2024-01-02T03:04:05Z"}}"#),
    )
    .unwrap();
    std::fs::write(dir.join(format!("{version}.mod")), &go_mod).unwrap();
    std::fs::write(
        dir.join(format!("{version}.zip")),
        module_zip(
            module,
            version,
            &[("go.mod", &go_mod), (&format!("{package}.go"), &source)],
        ),
    )
    .unwrap();
    let list = dir.join("list");
    let mut versions = std::fs::read_to_string(&list).unwrap_or_default();
    versions.push_str(version);
    versions.push('\n');
    std::fs::write(list, versions).unwrap();
}

/// `go mod download` in `app` through `proxy`, with a fresh module cache
/// under `home`; returns the module cache.
async fn go_mod_download(app: &Path, home: &Path, proxy: &str) -> std::path::PathBuf {
    let go = which("go", "run tests/setup/go.sh (make test does)");
    std::fs::create_dir_all(home).unwrap();
    let modcache = home.join("modcache");
    let mut command = Command::new(go);
    command
        .args(["mod", "download", "-x", "all"])
        .current_dir(app)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("GOPATH", home.join("gopath"))
        .env("GOMODCACHE", &modcache)
        .env("GOCACHE", home.join("gocache"))
        .env("GOPROXY", proxy)
        .env("GOSUMDB", "off")
        .env("GOFLAGS", "-mod=mod")
        .env("GO111MODULE", "on")
        .env("GOTOOLCHAIN", "local");
    run(&mut command, GO_TIMEOUT).await;
    modcache
}

#[tokio::test]
async fn go_downloads_a_module_graph_through_a_remote_and_later_from_the_cache() {
    let work = tempfile::tempdir().unwrap();
    let site = work.path().join("site");
    // app needs liba v1.0.0 and Libb v0.2.0; liba needs Libb v0.1.0, so
    // Libb is in the graph at two versions (its path travels case-encoded).
    let libb = ("example.org/Libb", "example.org/!libb");
    publish(&site, libb, "v0.1.0", "1.19", &[]);
    publish(&site, libb, "v0.2.0", "1.19", &[]);
    publish(
        &site,
        ("example.org/liba", "example.org/liba"),
        "v1.0.0",
        "1.16",
        &[("example.org/Libb", "v0.1.0")],
    );
    let app = work.path().join("app");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::write(
        app.join("go.mod"),
        "module example.org/app\n\ngo 1.19\n\nrequire (\n\texample.org/Libb v0.2.0\n\texample.org/liba v1.0.0\n)\n",
    )
    .unwrap();
    std::fs::write(
        app.join("main.go"),
        "package main\n\nimport (\n\t\"example.org/Libb\"\n\t\"example.org/liba\"\n)\n\nfunc main() { println(liba.Version, libb.Version) }\n",
    )
    .unwrap();

    let python = which("python3", "python3 is part of the base system");
    let mut upstream = StaticServer::start(&python, &site, &work.path().join("http.log")).await;
    let server = start_server(&format!(
        "remotes:\n  go:\n    type: remote\n    package: goproxy\n    base_url: \"{}\"\n",
        upstream.url()
    ))
    .await;
    let proxy = server.url("/api/v1/remote/go");

    let modcache = go_mod_download(&app, &work.path().join("first"), &proxy).await;
    let downloaded = modcache.join("cache/download/example.org");
    for file in [
        "liba/@v/v1.0.0.zip",
        "liba/@v/v1.0.0.mod",
        "!libb/@v/v0.2.0.zip",
        "!libb/@v/v0.1.0.mod",
    ] {
        assert!(downloaded.join(file).is_file(), "{file} was not downloaded");
    }
    let zip = client()
        .get(format!("{proxy}/example.org/!libb/@v/v0.2.0.zip"))
        .send()
        .await
        .unwrap();
    assert_eq!(header(zip.headers(), "x-artifact-source"), "cache");
    assert_eq!(header(zip.headers(), "content-type"), "application/zip");

    upstream.stop().await;
    let again = go_mod_download(&app, &work.path().join("second"), &proxy).await;
    assert!(
        again
            .join("cache/download/example.org/!libb/@v/v0.2.0.zip")
            .is_file(),
        "the second download came from the proxy's cache"
    );
}

#[tokio::test]
async fn the_protocol_keeps_404_and_410_merges_lists_quarantines_and_checks_settings() {
    let upstream = Upstream::start().await;
    let gone = Upstream::start().await;
    gone.fail(410);
    let now = artifactapi::util::rfc3339_secs(artifactapi::util::now_secs());
    upstream.put("example.org/lib/@v/list", "v1.0.0\nv1.1.0\n");
    upstream.put(
        "example.org/lib/@v/v1.0.0.info",
        r#"{"Version":"v1.0.0","Time":"2020-01-02T03:04:05Z"}"#,
    );
    upstream.put(
        "example.org/lib/@v/v1.1.0.info",
        format!(r#"{{"Version":"v1.1.0","Time":"{now}"}}"#),
    );
    upstream.put("example.org/lib/@v/v1.1.0.zip", "zip bytes");
    let remotes = format!(
        r#"
remotes:
  go:
    type: remote
    package: goproxy
    base_url: "{up}/files"
  go-new:
    type: remote
    package: goproxy
    base_url: "{up}/files"
    quarantine_new: true
  go-gone:
    type: remote
    package: goproxy
    base_url: "{gone}"
  go-local:
    type: local
    package: goproxy
  go-all:
    type: virtual
    package: goproxy
    members: [go-local, go]
"#,
        up = upstream.url(),
        gone = gone.url(),
    );
    let server = start_server(&remotes).await;
    let get = |path: String| {
        let url = server.url(&path);
        async move { client().get(url).send().await.unwrap() }
    };

    let missing = get("/api/v1/remote/go/example.org/none/@v/list".into()).await;
    assert_eq!(missing.status(), 404);
    let gone_file = get("/api/v1/remote/go-gone/example.org/lib/@v/v1.0.0.mod".into()).await;
    assert_eq!(
        gone_file.status(),
        410,
        "a 410 stays a 410 for GOPROXY fallbacks"
    );
    let not_protocol = get("/api/v1/remote/go/example.org/lib/readme".into()).await;
    assert_eq!(not_protocol.status(), 404);

    for (version, body) in [("v1.2.0", "mod 1.2.0"), ("v1.0.0", "mod 1.0.0")] {
        let put = client()
            .put(server.url(&format!(
                "/api/v1/remote/go-local/example.org/lib/@v/{version}.mod"
            )))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(put.status(), 201);
    }
    let list_upload = client()
        .put(server.url("/api/v1/remote/go-local/example.org/lib/@v/list"))
        .body("v9.9.9\n")
        .send()
        .await
        .unwrap();
    assert_eq!(list_upload.status(), 400, "the list is generated");
    let local = get("/api/v1/remote/go-local/example.org/lib/@v/list".into()).await;
    assert_eq!(local.status(), 200);
    assert_eq!(local.text().await.unwrap(), "v1.0.0\nv1.2.0\n");
    let merged = get("/api/v1/virtual/go-all/example.org/lib/@v/list".into()).await;
    assert_eq!(merged.status(), 200);
    assert_eq!(
        merged.text().await.unwrap(),
        "v1.0.0\nv1.2.0\nv1.1.0\n",
        "members in order, each version once"
    );

    let old = get("/api/v1/remote/go-new/example.org/lib/@v/v1.0.0.info".into()).await;
    assert_eq!(old.status(), 200);
    let fresh = get("/api/v1/remote/go-new/example.org/lib/@v/v1.1.0.info".into()).await;
    assert_eq!(
        fresh.status(),
        404,
        "a version published now is quarantined"
    );
    let fresh_zip = get("/api/v1/remote/go-new/example.org/lib/@v/v1.1.0.zip".into()).await;
    assert_eq!(fresh_zip.status(), 404, "and its zip with it");
    let plain = get("/api/v1/remote/go/example.org/lib/@v/v1.1.0.zip".into()).await;
    assert_eq!(
        plain.status(),
        200,
        "a repository without quarantine serves it"
    );

    let refused = remotes.replace(
        "  go-local:\n    type: local\n    package: goproxy\n",
        "  go-local:\n    type: local\n    package: goproxy\n    settings:\n      bogus: 1\n",
    );
    std::fs::write(server.config_path(), refused).unwrap();
    let error = server.running.app.reload_config().await.unwrap_err();
    assert!(
        error.contains("go-local") && error.contains("`bogus`"),
        "the plugin's message names the repository and the setting: {error}"
    );
    assert!(server.running.app.config.load().repo("go-all").is_some());
}
