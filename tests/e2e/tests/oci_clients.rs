//! The OCI registry with real clients: skopeo pushes an image built offline
//! with umoci to a local docker repository (with credentials, in both
//! manifest formats) and pulls it back byte for byte; copies it to other
//! images without uploading its layers again; deletes a tag; podman pulls,
//! retags and pushes it; docker remotes proxy the CNCF registry (htpasswd)
//! and a second artifactapi that demands Bearer tokens, and keep serving
//! once their upstream is gone; banned tags and names outside the allowlist
//! are refused. The tools come from tests/setup/oci.sh.

use std::path::Path;
use std::time::Duration;

use artifactapi_e2e::oci::{
    push, skopeo, skopeo_fails, test_image, CncfRegistry, Podman, TestImage,
};
use artifactapi_e2e::{client, component, get_json, header, plugins_dir, Server};

/// The docker plugin's file name.
const PLUGIN: &str = "docker.wasm";

/// The password of user `ci` in every test.
const PASSWORD: &str = "s3cret-ci-password";

async fn start_server(remotes: String) -> Server {
    let plugin = component(&plugins_dir(), PLUGIN);
    Server::start_with(&remotes, &[(&plugin, PLUGIN)], Duration::from_secs(5)).await
}

/// remotes.yaml with the local docker repository `docker-local`, writable
/// by user `ci` whose password is put in the environment variable `env`
/// (one per test), readable anonymously unless `anonymous_read` is false.
fn local_config(env: &str, anonymous_read: bool) -> String {
    std::env::set_var(env, PASSWORD);
    format!(
        "auth:\n  users:\n    ci:\n      password_env: {env}\n      write: [docker-local]\n\
         remotes:\n  docker-local:\n    type: local\n    package: docker\n    \
         anonymous_read: {anonymous_read}\n"
    )
}

fn creds() -> String {
    format!("ci:{PASSWORD}")
}

/// `skopeo copy` from `source` (`host:port/name:tag` or `…@digest`) to
/// `dest` (`dir:DIR`, `oci:DIR:TAG`) without credentials.
async fn pull(source: &str, dest: &str) {
    skopeo(&[
        "copy",
        "--src-tls-verify=false",
        &format!("docker://{source}"),
        dest,
    ])
    .await;
}

/// Pulls `source` into a new OCI layout under `work` and checks that it is
/// the test image unchanged.
async fn pull_unchanged(image: &TestImage, source: &str, work: &Path, name: &str) {
    let out = work.join(name);
    pull(source, &format!("oci:{}:v1", out.display())).await;
    image.assert_oci_copy(&out, "v1");
}

/// `skopeo inspect` of `reference` without credentials, parsed.
async fn inspect(reference: &str) -> serde_json::Value {
    let output = skopeo(&[
        "inspect",
        "--tls-verify=false",
        &format!("docker://{reference}"),
    ])
    .await;
    serde_json::from_slice(&output.stdout).unwrap()
}

/// `skopeo inspect --raw` of `reference` without credentials: the manifest
/// bytes as served.
async fn raw_manifest(reference: &str) -> Vec<u8> {
    skopeo(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{reference}"),
    ])
    .await
    .stdout
}

/// The tags `skopeo list-tags` reports for `repository`, sorted.
async fn list_tags(repository: &str) -> Vec<String> {
    let output = skopeo(&[
        "list-tags",
        "--tls-verify=false",
        &format!("docker://{repository}"),
    ])
    .await;
    let listing: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let mut tags: Vec<String> = listing["Tags"]
        .as_array()
        .unwrap_or_else(|| panic!("no Tags in {listing}"))
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect();
    tags.sort();
    tags
}

fn layers_of(manifest: &[u8]) -> Vec<String> {
    let manifest: serde_json::Value = serde_json::from_slice(manifest).unwrap();
    manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect()
}

fn assert_unauthorized(stderr: &str) {
    let lower = stderr.to_lowercase();
    assert!(
        lower.contains("unauthorized") || lower.contains("401"),
        "expected an authentication failure: {stderr}"
    );
}

/// The `errors[0].message` of a refused manifest GET, after checking its
/// status and code.
async fn refusal(url: &str, status: u16, code: &str) -> String {
    let response = client().get(url).send().await.unwrap();
    assert_eq!(response.status().as_u16(), status, "{url}");
    assert_eq!(
        header(response.headers(), "docker-distribution-api-version"),
        "registry/2.0"
    );
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], code, "{url}: {body}");
    let message = body["errors"][0]["message"].as_str().unwrap().to_string();
    assert!(!message.is_empty(), "{url}: {body}");
    message
}

#[tokio::test(flavor = "multi_thread")]
async fn skopeo_pushes_both_formats_with_credentials_and_pulls_back_identical_bytes() {
    let image = test_image().await;
    let work = tempfile::tempdir().unwrap();
    let source = image.write_layout(&work.path().join("layout"));
    let server = start_server(local_config("OCI_CLIENTS_PUSH_PASSWORD", true)).await;
    let repo = format!("{}/docker-local/img", server.addr);

    // No credentials, or wrong ones: refused before anything is stored.
    let stderr = skopeo_fails(&[
        "copy",
        "--dest-tls-verify=false",
        &source,
        &format!("docker://{repo}:anonymous"),
    ])
    .await;
    assert_unauthorized(&stderr);
    let stderr = skopeo_fails(&[
        "copy",
        "--dest-tls-verify=false",
        "--dest-creds",
        "ci:wrong-password",
        &source,
        &format!("docker://{repo}:wrong"),
    ])
    .await;
    assert_unauthorized(&stderr);
    let response = client()
        .post(server.url("/v2/docker-local/img/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let challenge = header(response.headers(), "www-authenticate");
    assert!(
        challenge.starts_with(&format!("Bearer realm=\"http://{}/v2/token\"", server.addr))
            && challenge.contains("service=\"artifactapi\""),
        "{challenge}"
    );

    let v2s2 = push(
        &source,
        &format!("{repo}:v1"),
        &creds(),
        "v2s2",
        work.path(),
    )
    .await;
    let oci = push(
        &source,
        &format!("{repo}:v1-oci"),
        &creds(),
        "oci",
        work.path(),
    )
    .await;
    // The OCI manifest goes up unchanged; the Docker one is a conversion.
    assert_eq!(oci, image.manifest_digest);
    assert_ne!(v2s2, oci);
    assert_eq!(list_tags(&repo).await, ["v1", "v1-oci"]);

    // Anonymous reads: the manifests as pushed.
    let raw = raw_manifest(&format!("{repo}:v1")).await;
    let raw_file = work.path().join("v1.json");
    std::fs::write(&raw_file, &raw).unwrap();
    assert_eq!(
        artifactapi_e2e::oci::manifest_digest_of(&raw_file).await,
        v2s2
    );
    assert_eq!(layers_of(&raw), image.layers);
    assert!(raw_manifest(&format!("{repo}:v1-oci")).await == image.blob(&image.manifest_digest));
    let inspected = inspect(&format!("{repo}:v1")).await;
    assert_eq!(inspected["Digest"], v2s2.as_str());
    assert_eq!(inspected["Layers"], serde_json::json!(image.layers));
    assert_eq!(inspected["Labels"]["org.example.test"], "oci-clients");

    // Pulls by tag and by digest: every blob byte for byte.
    let by_tag = work.path().join("by-tag");
    pull(&format!("{repo}:v1"), &format!("dir:{}", by_tag.display())).await;
    image.assert_dir_copy(&by_tag, &v2s2).await;
    let by_digest = work.path().join("by-digest");
    pull(
        &format!("{repo}@{v2s2}"),
        &format!("dir:{}", by_digest.display()),
    )
    .await;
    image.assert_dir_copy(&by_digest, &v2s2).await;
    pull_unchanged(
        image,
        &format!("{repo}@{oci}"),
        work.path(),
        "oci-by-digest",
    )
    .await;
    pull_unchanged(image, &format!("{repo}:v1-oci"), work.path(), "oci-by-tag").await;

    // The refused pushes left no tags behind.
    assert_eq!(list_tags(&repo).await, ["v1", "v1-oci"]);
}

/// `skopeo copy` from `source` to `dest` (both `host:port/name:tag`) with
/// credentials for `dest`; returns skopeo's debug log, which names every
/// request it sends.
async fn copy_logged(source: &str, dest: &str) -> String {
    let output = skopeo(&[
        "--debug",
        "copy",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        "--dest-creds",
        &creds(),
        &format!("docker://{source}"),
        &format!("docker://{dest}"),
    ])
    .await;
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Asserts from skopeo's debug `log` that no layer was uploaded and that
/// each was mounted (or, unless `must_mount`, found present already).
fn assert_layers_reused(image: &TestImage, log: &str, must_mount: bool) {
    for layer in &image.layers {
        let encoded = layer.replace(':', "%3A");
        let mounted = log.contains(&format!("mount={encoded}"));
        let present = log.contains(&format!("Skipping blob {layer} (already present)"));
        assert!(
            mounted || (present && !must_mount),
            "{layer} was not mounted:\n{log}"
        );
        assert!(
            !log.contains(&format!("digest={encoded}")),
            "{layer} was uploaded again:\n{log}"
        );
    }
    if must_mount {
        assert!(
            log.matches("mount OK").count() >= image.layers.len(),
            "mounts failed:\n{log}"
        );
    }
}

/// Asserts that the blobs of the test image are served under `name` in
/// `repo`, byte for byte.
async fn assert_blobs_served(server: &Server, image: &TestImage, repo: &str, name: &str) {
    for digest in image.shared_blobs() {
        let url = server.url(&format!("/v2/{repo}/{name}/blobs/{digest}"));
        let response = client().get(&url).send().await.unwrap();
        assert_eq!(response.status(), 200, "{url}");
        assert!(
            response.bytes().await.unwrap() == image.blob(digest),
            "{url}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn skopeo_copies_between_images_by_mounting_layers() {
    let image = test_image().await;
    let work = tempfile::tempdir().unwrap();
    let source = image.write_layout(&work.path().join("layout"));
    std::env::set_var("OCI_CLIENTS_MOUNT_PASSWORD", PASSWORD);
    let server = start_server(
        "auth:\n  users:\n    ci:\n      password_env: OCI_CLIENTS_MOUNT_PASSWORD\n      \
         write: [docker-local, docker-team]\n\
         remotes:\n  docker-local:\n    type: local\n    package: docker\n  \
         docker-team:\n    type: local\n    package: docker\n"
            .to_string(),
    )
    .await;
    let a = format!("{}/docker-local/a:v1", server.addr);
    let b = format!("{}/docker-local/b:v1", server.addr);
    let c = format!("{}/docker-team/c:v1", server.addr);
    let digest = push(&source, &a, &creds(), "oci", work.path()).await;
    let blobs = server.blob_count();

    // Into another image of the same repository.
    let log = copy_logged(&a, &b).await;
    assert_layers_reused(image, &log, false);
    assert!(raw_manifest(&b).await == image.blob(&digest));
    assert_blobs_served(&server, image, "docker-local", "b").await;
    pull_unchanged(image, &b, work.path(), "b").await;

    // Into another repository: the layers are not there yet, so skopeo
    // mounts them with `POST …/blobs/uploads/?mount=&from=docker-local/…`.
    let log = copy_logged(&a, &c).await;
    assert_layers_reused(image, &log, true);
    assert!(raw_manifest(&c).await == image.blob(&digest));
    assert_blobs_served(&server, image, "docker-team", "c").await;
    pull_unchanged(image, &c, work.path(), "c").await;

    assert_eq!(server.blob_count(), blobs, "the copies stored new blobs");
}

#[tokio::test(flavor = "multi_thread")]
async fn skopeo_deletes_a_tag_and_leaves_other_content_alone() {
    let image = test_image().await;
    let work = tempfile::tempdir().unwrap();
    let source = image.write_layout(&work.path().join("layout"));
    let server = start_server(local_config("OCI_CLIENTS_DELETE_PASSWORD", true)).await;
    let repo = format!("{}/docker-local/img", server.addr);
    let docker = push(
        &source,
        &format!("{repo}:v1"),
        &creds(),
        "v2s2",
        work.path(),
    )
    .await;
    let oci = push(&source, &format!("{repo}:v2"), &creds(), "oci", work.path()).await;
    assert_ne!(docker, oci);
    assert_eq!(list_tags(&repo).await, ["v1", "v2"]);

    let stderr = skopeo_fails(&[
        "delete",
        "--tls-verify=false",
        &format!("docker://{repo}:v1"),
    ])
    .await;
    assert_unauthorized(&stderr);
    assert_eq!(list_tags(&repo).await, ["v1", "v2"]);

    skopeo(&[
        "delete",
        "--tls-verify=false",
        "--creds",
        &creds(),
        &format!("docker://{repo}:v1"),
    ])
    .await;
    let stderr = skopeo_fails(&[
        "inspect",
        "--tls-verify=false",
        &format!("docker://{repo}:v1"),
    ])
    .await;
    assert!(
        stderr.to_lowercase().contains("manifest unknown"),
        "{stderr}"
    );
    skopeo_fails(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{repo}@{docker}"),
    ])
    .await;
    assert_eq!(list_tags(&repo).await, ["v2"]);

    // The other manifest and the layers it shares are still served.
    assert_eq!(inspect(&format!("{repo}:v2")).await["Digest"], oci.as_str());
    pull_unchanged(image, &format!("{repo}:v2"), work.path(), "v2").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn podman_pulls_retags_and_pushes_back() {
    let image = test_image().await;
    let work = tempfile::tempdir().unwrap();
    let source = image.write_layout(&work.path().join("layout"));
    let server = start_server(local_config("OCI_CLIENTS_PODMAN_PASSWORD", true)).await;
    let pushed = format!("{}/docker-local/img:v1", server.addr);
    let renamed = format!("{}/docker-local/renamed:v2", server.addr);
    push(&source, &pushed, &creds(), "v2s2", work.path()).await;

    let podman = Podman::new(&work.path().join("podman"));
    let output = podman
        .run(&["pull", "--tls-verify=false", "--creds", &creds(), &pushed])
        .await;
    // podman prints the image ID: the configuration's digest.
    let id = String::from_utf8_lossy(&output.stdout).trim().to_string();
    assert_eq!(
        format!("sha256:{id}"),
        image.config_digest,
        "podman pull printed {id}"
    );
    podman.run(&["tag", &pushed, &renamed]).await;
    podman
        .run(&["push", "--tls-verify=false", "--creds", &creds(), &renamed])
        .await;

    let inspected = inspect(&renamed).await;
    assert_eq!(inspected["Labels"]["org.example.test"], "oci-clients");
    assert_eq!(
        inspected["Layers"].as_array().unwrap().len(),
        3,
        "{inspected}"
    );
    let raw = raw_manifest(&renamed).await;
    let manifest: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(manifest["config"]["digest"], image.config_digest.as_str());
    for digest in layers_of(&raw) {
        let url = server.url(&format!("/v2/docker-local/renamed/blobs/{digest}"));
        assert_eq!(
            client().head(&url).send().await.unwrap().status(),
            200,
            "{url}"
        );
    }
    assert_eq!(
        list_tags(&format!("{}/docker-local/renamed", server.addr)).await,
        ["v2"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_remote_proxies_the_cncf_registry_with_htpasswd_and_serves_its_cache_once_it_is_gone() {
    let image = test_image().await;
    let work = tempfile::tempdir().unwrap();
    let source = image.write_layout(&work.path().join("layout"));
    let mut upstream = CncfRegistry::start("u", "p").await;
    let digest = push(
        &source,
        &format!("{}/team/img:v1", upstream.host()),
        "u:p",
        "oci",
        work.path(),
    )
    .await;
    assert_eq!(digest, image.manifest_digest);

    let server = start_server(format!(
        "remotes:\n  hub:\n    type: remote\n    package: docker\n    base_url: \"{}\"\n    \
         username: u\n    password: p\n    cache:\n      mutable_ttl: 600\n",
        upstream.url()
    ))
    .await;
    let proxied = format!("{}/hub/team/img", server.addr);
    pull_unchanged(image, &format!("{proxied}:v1"), work.path(), "first").await;
    let blob_gets = upstream.requests("GET /v2/team/img/blobs/");
    assert!(blob_gets >= image.layers.len(), "{blob_gets} blob fetches");
    let manifest_gets = upstream.requests("GET /v2/team/img/manifests/");
    assert!(manifest_gets >= 1, "no manifest fetched");

    // Again: from the cache, nothing fetched from the registry.
    let before = get_json(&server.url("/api/v2/stats")).await["repositories"]["hub"].clone();
    pull_unchanged(image, &format!("{proxied}:v1"), work.path(), "second").await;
    let after = get_json(&server.url("/api/v2/stats")).await["repositories"]["hub"].clone();
    assert_eq!(upstream.requests("GET /v2/team/img/blobs/"), blob_gets);
    assert_eq!(
        upstream.requests("GET /v2/team/img/manifests/"),
        manifest_gets
    );
    assert_eq!(
        after["bytes_fetched"], before["bytes_fetched"],
        "fetched again: {before} then {after}"
    );
    pull_unchanged(
        image,
        &format!("{proxied}@{digest}"),
        work.path(),
        "by-digest",
    )
    .await;
    assert_eq!(upstream.requests("GET /v2/team/img/blobs/"), blob_gets);

    // The registry goes away: tag, digest and blobs still come from the cache.
    upstream.stop().await;
    pull_unchanged(image, &format!("{proxied}:v1"), work.path(), "offline-tag").await;
    pull_unchanged(
        image,
        &format!("{proxied}@{digest}"),
        work.path(),
        "offline-digest",
    )
    .await;
}

/// A server on a runtime of its own, so that stopping it also ends every
/// connection it holds open (other servers' pooled keep-alive ones too).
struct Isolated {
    server: Option<Server>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Isolated {
    async fn start(remotes: String) -> Isolated {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let server = runtime.spawn(start_server(remotes)).await.unwrap();
        Isolated {
            server: Some(server),
            runtime: Some(runtime),
        }
    }

    fn server(&self) -> &Server {
        self.server.as_ref().unwrap()
    }
}

impl Drop for Isolated {
    fn drop(&mut self) {
        drop(self.server.take());
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_remote_proxies_another_artifactapi_that_demands_bearer_tokens() {
    let image = test_image().await;
    let work = tempfile::tempdir().unwrap();
    let source = image.write_layout(&work.path().join("layout"));
    let a = Isolated::start(local_config("OCI_CLIENTS_UPSTREAM_PASSWORD", false)).await;
    let private = format!("{}/docker-local/img", a.server().addr);
    let digest = push(
        &source,
        &format!("{private}:v1"),
        &creds(),
        "oci",
        work.path(),
    )
    .await;
    assert_eq!(digest, image.manifest_digest);
    // A lets nobody read without credentials.
    let stderr = skopeo_fails(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{private}:v1"),
    ])
    .await;
    assert_unauthorized(&stderr);

    let b = start_server(format!(
        "remotes:\n  up:\n    type: remote\n    package: docker\n    base_url: \"http://{}\"\n    \
         username: ci\n    password: \"{PASSWORD}\"\n",
        a.server().addr
    ))
    .await;
    let proxied = format!("{}/up/docker-local/img", b.addr);
    pull_unchanged(image, &format!("{proxied}:v1"), work.path(), "first").await;
    pull_unchanged(image, &format!("{proxied}:v1"), work.path(), "second").await;
    pull_unchanged(
        image,
        &format!("{proxied}@{digest}"),
        work.path(),
        "by-digest",
    )
    .await;

    drop(a);
    pull_unchanged(image, &format!("{proxied}:v1"), work.path(), "offline-tag").await;
    pull_unchanged(
        image,
        &format!("{proxied}@{digest}"),
        work.path(),
        "offline-digest",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn banned_tags_and_names_outside_the_allowlist_are_refused_to_skopeo() {
    let image = test_image().await;
    let work = tempfile::tempdir().unwrap();
    let source = image.write_layout(&work.path().join("layout"));
    let upstream = start_server(local_config("OCI_CLIENTS_POLICY_PASSWORD", true)).await;
    for reference in ["allowed:v1", "allowed:latest", "other:v1"] {
        let dest = format!("{}/docker-local/{reference}", upstream.addr);
        push(&source, &dest, &creds(), "oci", work.path()).await;
    }
    let server = start_server(format!(
        "remotes:\n  hub:\n    type: remote\n    package: docker\n    base_url: \"{}\"\n    \
         include_patterns: [\"docker-local/allowed\"]\n    ban_tags: [latest]\n",
        upstream.url("")
    ))
    .await;
    let proxied = format!("{}/hub/docker-local", server.addr);
    pull_unchanged(image, &format!("{proxied}/allowed:v1"), work.path(), "v1").await;

    let out = format!("oci:{}:v1", work.path().join("refused").display());
    let banned = refusal(
        &server.url("/v2/hub/docker-local/allowed/manifests/latest"),
        403,
        "DENIED",
    )
    .await;
    let stderr = skopeo_fails(&[
        "copy",
        "--src-tls-verify=false",
        &format!("docker://{proxied}/allowed:latest"),
        &out,
    ])
    .await;
    assert!(stderr.contains(&banned), "{banned:?} not in {stderr}");

    let outside = refusal(
        &server.url("/v2/hub/docker-local/other/manifests/v1"),
        403,
        "DENIED",
    )
    .await;
    let stderr = skopeo_fails(&[
        "copy",
        "--src-tls-verify=false",
        &format!("docker://{proxied}/other:v1"),
        &out,
    ])
    .await;
    assert!(stderr.contains(&outside), "{outside:?} not in {stderr}");
}
