//! Quarantine of newly published artifacts: by the upstream's
//! Last-Modified for generic files, and by the npm `time` field, where a real
//! npm client resolves to the older version instead of failing.

use std::path::Path;
use std::time::Duration;

use artifactapi_e2e::tools::run;
use artifactapi_e2e::{client, component, get_json, plugins_dir, Server, Upstream};
use serde_json::json;
use tokio::process::Command;

#[tokio::test]
async fn files_younger_than_the_window_are_refused_by_last_modified() {
    let upstream = Upstream::start().await;
    // The test upstream dates every file Tue, 03 Nov 2026 10:00:00 GMT.
    let published = 1_793_700_000_i64;
    let age_days = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
        - published)
        / 86_400;
    let remotes = format!(
        "remotes:\n  strict:\n    type: remote\n    package: generic\n    base_url: \"{up}\"\n    \
         quarantine_new: true\n    quarantine_days: {strict}\n  \
         lenient:\n    type: remote\n    package: generic\n    base_url: \"{up}\"\n    \
         quarantine_new: true\n    quarantine_days: {lenient}\n",
        up = upstream.url(),
        strict = age_days + 2,
        lenient = (age_days - 1).max(1),
    );
    let server = Server::start(&remotes).await;
    upstream.put("tool.tar.gz", "bytes");

    let refused = client()
        .get(server.url("/api/v1/remote/strict/files/tool.tar.gz"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 404);
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "QUARANTINED");
    assert!(body["errors"][0]["message"]
        .as_str()
        .unwrap()
        .contains("quarantined until"));
    let again = client()
        .head(server.url("/api/v1/remote/strict/files/tool.tar.gz"))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 404, "refused from the cache too");

    let allowed = client()
        .get(server.url("/api/v1/remote/lenient/files/tool.tar.gz"))
        .send()
        .await
        .unwrap();
    assert_eq!(allowed.status(), 200);
    assert_eq!(allowed.text().await.unwrap(), "bytes");
}

/// Packs an npm package `name@version` in `dir` and returns the tarball's
/// bytes and its `sha512-…` integrity.
async fn pack(dir: &Path, name: &str, version: &str) -> (Vec<u8>, String) {
    let source = dir.join(format!("{name}-{version}"));
    std::fs::create_dir_all(&source).unwrap();
    let manifest = json!({"name": name, "version": version, "main": "index.js"});
    std::fs::write(source.join("package.json"), manifest.to_string()).unwrap();
    std::fs::write(
        source.join("index.js"),
        format!("module.exports = {version:?};\n"),
    )
    .unwrap();
    run(
        Command::new("npm")
            .args(["pack", "--silent", "--pack-destination"])
            .arg(dir)
            .current_dir(&source),
        Duration::from_secs(120),
    )
    .await;
    let tarball = std::fs::read(dir.join(format!("{name}-{version}.tgz"))).unwrap();
    let script = "const c=require('crypto');const d=require('fs').readFileSync(process.argv[1]);\
                  process.stdout.write('sha512-'+c.createHash('sha512').update(d).digest('base64'))";
    let output = run(
        Command::new("node")
            .args(["-e", script])
            .arg(dir.join(format!("{name}-{version}.tgz"))),
        Duration::from_secs(60),
    )
    .await;
    (tarball, String::from_utf8(output.stdout).unwrap())
}

#[tokio::test]
async fn npm_resolves_to_the_older_version_while_the_newest_is_quarantined() {
    let upstream = Upstream::start().await;
    let work = tempfile::tempdir().unwrap();
    let (old, old_integrity) = pack(work.path(), "demo-q", "1.0.0").await;
    let (new, new_integrity) = pack(work.path(), "demo-q", "1.1.0").await;
    upstream.put("demo-q/-/demo-q-1.0.0.tgz", old);
    upstream.put("demo-q/-/demo-q-1.1.0.tgz", new);
    let base = format!("{}/files", upstream.url());
    let version = |v: &str, integrity: &str| {
        json!({
            "name": "demo-q",
            "version": v,
            "main": "index.js",
            "dist": {
                "tarball": format!("{base}/demo-q/-/demo-q-{v}.tgz"),
                "integrity": integrity,
            },
        })
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let packument = json!({
        "name": "demo-q",
        "dist-tags": {"latest": "1.1.0"},
        "versions": {
            "1.0.0": version("1.0.0", &old_integrity),
            "1.1.0": version("1.1.0", &new_integrity),
        },
        "time": {
            "1.0.0": artifactapi::util::rfc3339_secs(now - 30 * 86_400),
            "1.1.0": artifactapi::util::rfc3339_secs(now - 3_600),
        },
    });
    upstream.put("demo-q", packument.to_string());

    let npm_plugin = component(&plugins_dir(), "npm.wasm");
    let remotes = format!(
        "remotes:\n  npm:\n    type: remote\n    package: npm\n    base_url: \"{base}\"\n    \
         quarantine_new: true\n    quarantine_days: 3\n"
    );
    let server = Server::start_with(
        &remotes,
        &[(&npm_plugin, "npm.wasm")],
        Duration::from_secs(10),
    )
    .await;

    let document = get_json(&server.url("/api/v1/remote/npm/demo-q")).await;
    assert_eq!(document["dist-tags"]["latest"], "1.0.0");
    assert!(document["versions"].get("1.1.0").is_none());

    let project = work.path().join("project");
    std::fs::create_dir_all(&project).unwrap();
    std::fs::write(
        project.join("package.json"),
        json!({"name": "q-consumer", "version": "1.0.0", "dependencies": {"demo-q": "^1.0.0"}})
            .to_string(),
    )
    .unwrap();
    let npmrc = project.join(".npmrc");
    std::fs::write(
        &npmrc,
        format!("registry={}/\n", server.url("/api/v1/remote/npm")),
    )
    .unwrap();
    let mut install = Command::new("npm");
    install
        .args(["install", "--no-audit", "--no-fund", "--userconfig"])
        .arg(&npmrc)
        .arg("--cache")
        .arg(work.path().join("cache"))
        .current_dir(&project)
        .env("npm_config_registry", server.url("/api/v1/remote/npm/"))
        .env("NO_PROXY", "127.0.0.1")
        .env_remove("HTTP_PROXY")
        .env_remove("HTTPS_PROXY")
        .env_remove("http_proxy")
        .env_remove("https_proxy");
    run(&mut install, Duration::from_secs(180)).await;
    let installed: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(project.join("node_modules/demo-q/package.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        installed["version"], "1.0.0",
        "npm picked the older version"
    );

    let direct = client()
        .get(server.url("/api/v1/remote/npm/demo-q/-/demo-q-1.1.0.tgz"))
        .send()
        .await
        .unwrap();
    assert_eq!(direct.status(), 404, "the quarantined tarball is refused");
    let body: serde_json::Value = direct.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "QUARANTINED");
}
