//! Puppet Forge repositories with the real client (Debian's puppet,
//! installed by tests/setup/puppet.sh): `puppet module install` resolves a
//! module and its dependency through a puppet remote whose upstream is a
//! loopback Forge stand-in (the v3 releases endpoint, paginated one release
//! per page, and tarballs), then again into an empty folder with the
//! stand-in stopped. Quarantine and a virtual repository at the HTTP level.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use artifactapi_e2e::tools::{run, which};
use artifactapi_e2e::{client, component, header, plugins_dir, Server};
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};
use tokio::process::Command;

/// How long one puppet command may take.
const PUPPET_TIMEOUT: Duration = Duration::from_secs(180);

/// One module release the stand-in serves.
struct Release {
    module: &'static str,
    version: &'static str,
    created_at: String,
    dependencies: Vec<Value>,
}

/// What the stand-in serves: releases by module, and tarballs by name.
struct Forge {
    releases: HashMap<String, Vec<Value>>,
    files: HashMap<String, Vec<u8>>,
}

/// A module tarball: `owner-name-version/` with `metadata.json` and a
/// manifest.
fn tarball(metadata: &Value, top: &str) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    let name = metadata["name"].as_str().unwrap().replace('-', "_");
    for (path, body) in [
        ("metadata.json".to_string(), metadata.to_string()),
        (
            "manifests/init.pp".to_string(),
            format!("class {} {{}}\n", name.split('_').nth(1).unwrap()),
        ),
    ] {
        let mut header = tar::Header::new_gnu();
        header.set_size(body.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, format!("{top}/{path}"), body.as_bytes())
            .unwrap();
    }
    tar.into_inner().unwrap().finish().unwrap()
}

impl Forge {
    fn new(releases: &[Release]) -> Forge {
        let mut forge = Forge {
            releases: HashMap::new(),
            files: HashMap::new(),
        };
        for release in releases {
            let slug = format!("{}-{}", release.module, release.version);
            let metadata = json!({
                "name": release.module,
                "version": release.version,
                "author": "acme",
                "summary": "A test module",
                "license": "Apache-2.0",
                "source": "https://example.org/acme",
                "dependencies": release.dependencies,
            });
            let file = format!("{slug}.tar.gz");
            let bytes = tarball(&metadata, &slug);
            let sha256 = format!("{:x}", Sha256::digest(&bytes));
            let (owner, name) = release.module.split_once('-').unwrap();
            forge
                .releases
                .entry(release.module.to_string())
                .or_default()
                .push(json!({
                    "uri": format!("/v3/releases/{slug}"),
                    "slug": slug,
                    "module": {
                        "uri": format!("/v3/modules/{}", release.module),
                        "slug": release.module,
                        "name": name,
                        "owner": {"uri": format!("/v3/users/{owner}"), "slug": owner, "username": owner},
                    },
                    "version": release.version,
                    "metadata": metadata,
                    "file_uri": format!("/v3/files/{file}"),
                    "file_size": bytes.len(),
                    "file_sha256": sha256,
                    "created_at": release.created_at,
                    "deleted_at": null,
                }));
            forge.files.insert(file, bytes);
        }
        forge
    }
}

/// `GET /v3/releases?module=…&offset=…`: one release per page, newest
/// first, linked by `pagination.next`.
async fn releases(
    State(forge): State<Arc<Forge>>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let module = query.get("module").cloned().unwrap_or_default();
    let Some(all) = forge.releases.get(&module) else {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({"errors": ["no such module"]})),
        )
            .into_response();
    };
    let mut all = all.clone();
    all.reverse();
    let offset: usize = query
        .get("offset")
        .and_then(|o| o.parse().ok())
        .unwrap_or(0);
    let page = |offset: usize| format!("/v3/releases?module={module}&limit=1&offset={offset}");
    Json(json!({
        "pagination": {
            "limit": 1,
            "offset": offset,
            "first": page(0),
            "previous": (offset > 0).then(|| page(offset - 1)),
            "current": page(offset),
            "next": (offset + 1 < all.len()).then(|| page(offset + 1)),
            "total": all.len(),
        },
        "results": all.get(offset).cloned().into_iter().collect::<Vec<_>>(),
    }))
    .into_response()
}

async fn files(State(forge): State<Arc<Forge>>, UrlPath(file): UrlPath<String>) -> Response {
    match forge.files.get(&file) {
        Some(bytes) => bytes.clone().into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// Serves the stand-in on loopback; abort the task to stop it.
async fn start_forge(forge: Forge) -> (String, tokio::task::JoinHandle<()>) {
    let router = Router::new()
        .route("/v3/releases", get(releases))
        .route("/v3/files/{file}", get(files))
        .with_state(Arc::new(forge));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        axum::serve(listener, router).await.unwrap();
    });
    (url, task)
}

fn releases_of_the_test() -> Vec<Release> {
    let old = "2020-01-02 03:04:05 +0000".to_string();
    vec![
        Release {
            module: "acme-base",
            version: "1.0.0",
            created_at: old.clone(),
            dependencies: vec![],
        },
        Release {
            module: "acme-base",
            version: "1.1.0",
            created_at: old.clone(),
            dependencies: vec![],
        },
        Release {
            module: "acme-app",
            version: "1.0.0",
            created_at: old,
            dependencies: vec![
                json!({"name": "acme/base", "version_requirement": ">= 1.0.0 < 2.0.0"}),
            ],
        },
    ]
}

/// `puppet module install acme-app` into a fresh folder under `work`.
async fn module_install(work: &Path, name: &str, repository: &str) -> std::path::PathBuf {
    let puppet = which("puppet", "run tests/setup/puppet.sh (make test does)");
    let root = work.join(name);
    let modules = root.join("modules");
    std::fs::create_dir_all(&modules).unwrap();
    let mut command = Command::new(puppet);
    command
        .args([
            "module",
            "install",
            "acme-app",
            "--module_repository",
            repository,
        ])
        .arg("--target-dir")
        .arg(&modules)
        .arg("--modulepath")
        .arg(&modules)
        .arg("--confdir")
        .arg(root.join("conf"))
        .arg("--vardir")
        .arg(root.join("var"))
        .arg("--codedir")
        .arg(root.join("code"))
        .arg("--logdir")
        .arg(root.join("log"))
        .arg("--rundir")
        .arg(root.join("run"))
        .env("HOME", &root);
    run(&mut command, PUPPET_TIMEOUT).await;
    modules
}

fn installed_version(modules: &Path, name: &str) -> String {
    let metadata: Value =
        serde_json::from_slice(&std::fs::read(modules.join(name).join("metadata.json")).unwrap())
            .unwrap();
    metadata["version"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn puppet_installs_a_module_with_its_dependency_through_a_remote_and_later_from_the_cache() {
    let work = tempfile::tempdir().unwrap();
    let (forge_url, forge) = start_forge(Forge::new(&releases_of_the_test())).await;
    let plugin = component(&plugins_dir(), "puppet.wasm");
    let server = Server::start_with(
        &format!(
            "remotes:\n  forge:\n    type: remote\n    package: puppet\n    base_url: \"{forge_url}\"\n"
        ),
        &[(&plugin, "puppet.wasm")],
        Duration::from_secs(5),
    )
    .await;
    let repository = server.url("/api/v1/remote/forge");

    let modules = module_install(work.path(), "first", &repository).await;
    assert_eq!(installed_version(&modules, "app"), "1.0.0");
    assert_eq!(
        installed_version(&modules, "base"),
        "1.1.0",
        "the newest base on the second page"
    );
    let tarball = client()
        .get(format!("{repository}/v3/files/acme-base-1.1.0.tar.gz"))
        .send()
        .await
        .unwrap();
    assert_eq!(header(tarball.headers(), "x-artifact-source"), "cache");

    forge.abort();
    let _ = forge.await;
    let again = module_install(work.path(), "second", &repository).await;
    assert_eq!(installed_version(&again, "base"), "1.1.0");
}

#[tokio::test]
async fn quarantine_hides_new_releases_and_a_virtual_repository_merges_pages() {
    let mut releases = releases_of_the_test();
    releases.push(Release {
        module: "acme-base",
        version: "1.2.0",
        created_at: artifactapi::util::rfc3339_secs(artifactapi::util::now_secs()),
        dependencies: vec![],
    });
    let (forge_url, _forge) = start_forge(Forge::new(&releases)).await;
    let plugin = component(&plugins_dir(), "puppet.wasm");
    let server = Server::start_with(
        &format!(
            "remotes:\n  forge:\n    type: remote\n    package: puppet\n    base_url: \"{forge_url}\"\n  \
             forge-new:\n    type: remote\n    package: puppet\n    base_url: \"{forge_url}\"\n    quarantine_new: true\n  \
             forge-all:\n    type: virtual\n    package: puppet\n    members: [forge-new, forge]\n"
        ),
        &[(&plugin, "puppet.wasm")],
        Duration::from_secs(5),
    )
    .await;
    let page = |repo: &str| {
        let url = server.url(&format!("{repo}/v3/releases?module=acme-base&offset=0"));
        async move {
            let response = client().get(url).send().await.unwrap();
            assert_eq!(response.status(), 200);
            response.json::<Value>().await.unwrap()
        }
    };
    let plain = page("/api/v1/remote/forge").await;
    assert_eq!(plain["results"][0]["slug"], "acme-base-1.2.0");
    let quarantined = page("/api/v1/remote/forge-new").await;
    assert_eq!(
        quarantined["results"].as_array().unwrap().len(),
        0,
        "the newest release is left out"
    );
    let refused = client()
        .get(server.url("/api/v1/remote/forge-new/v3/files/acme-base-1.2.0.tar.gz"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 404, "its tarball is refused");
    let merged = page("/api/v1/virtual/forge-all").await;
    assert_eq!(merged["results"][0]["slug"], "acme-base-1.2.0");
    assert_eq!(
        merged["pagination"]["next"],
        "/v3/releases?module=acme-base&limit=1&offset=1"
    );
}
