//! Terraform providers with the real client (terraform 1.11, on the PATH of
//! these machines; nothing can install it, so without it these tests fail
//! saying so) against the real binary listening with TLS:
//!
//! - `terraform init` through a remote repository whose upstream is a
//!   static provider registry signed with a throwaway key, then again with
//!   that upstream stopped;
//! - `terraform init` through the same repository as a network mirror;
//! - `terraform init` from a private local repository (found through
//!   service discovery, with a token) after uploading two versions:
//!   terraform verifies the server's own signature and fetches the archive
//!   through a presigned link, as it sends no token there;
//!
//! and the documents at the HTTP level: bad uploads refused with 400 and
//! nothing stored, virtual version lists merged.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use artifactapi::signing::Signer;
use artifactapi_e2e::cluster::Replica;
use artifactapi_e2e::tls::TestCa;
use artifactapi_e2e::tools::{run, which, StaticServer};
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};
use tokio::process::Command;

/// How long one terraform command may take.
const TERRAFORM_TIMEOUT: Duration = Duration::from_secs(180);

fn terraform() -> PathBuf {
    which(
        "terraform",
        "terraform 1.11 must be on the PATH: no package registry here has it, so no setup script can install it",
    )
}

/// A provider archive: a fake executable `terraform-provider-{type}_v{version}`
/// (`init` never runs it).
fn provider_zip(kind: &str, version: &str) -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .unix_permissions(0o755);
    zip.start_file(format!("terraform-provider-{kind}_v{version}"), options)
        .unwrap();
    zip.write_all(b"#!/bin/sh\necho fake provider\n").unwrap();
    zip.finish().unwrap().into_inner()
}

fn hex_sha256(data: &[u8]) -> String {
    format!("{:x}", Sha256::digest(data))
}

/// A static provider registry for `acme/widget` 1.0.0 on linux_amd64
/// under `root`, served from `origin`, signed by `signer`.
fn static_registry(root: &Path, signer: &Signer, origin: &str) {
    let zip_name = "terraform-provider-widget_1.0.0_linux_amd64.zip";
    let zip = provider_zip("widget", "1.0.0");
    let sums = format!("{}  {zip_name}\n", hex_sha256(&zip));
    let files = root.join("files");
    std::fs::create_dir_all(&files).unwrap();
    std::fs::write(files.join(zip_name), &zip).unwrap();
    std::fs::write(
        files.join("terraform-provider-widget_1.0.0_SHA256SUMS"),
        &sums,
    )
    .unwrap();
    std::fs::write(
        files.join("terraform-provider-widget_1.0.0_SHA256SUMS.sig"),
        signer.sign(sums.as_bytes()).unwrap(),
    )
    .unwrap();
    let provider = root.join("v1/providers/acme/widget");
    std::fs::create_dir_all(provider.join("1.0.0/download/linux")).unwrap();
    std::fs::write(
        provider.join("versions"),
        json!({"versions": [{"version": "1.0.0", "protocols": ["5.0"],
                             "platforms": [{"os": "linux", "arch": "amd64"}]}]})
        .to_string(),
    )
    .unwrap();
    std::fs::write(
        provider.join("1.0.0/download/linux/amd64"),
        json!({
            "protocols": ["5.0"],
            "os": "linux",
            "arch": "amd64",
            "filename": zip_name,
            // Absolute, root-relative and document-relative URLs alike.
            "download_url": format!("{origin}/files/{zip_name}"),
            "shasums_url": "/files/terraform-provider-widget_1.0.0_SHA256SUMS",
            "shasums_signature_url": "../../../../../../../files/terraform-provider-widget_1.0.0_SHA256SUMS.sig",
            "shasum": hex_sha256(&zip),
            "signing_keys": {"gpg_public_keys": [{
                "key_id": signer.key_id(),
                "ascii_armor": signer.armored_public_key(),
            }]},
        })
        .to_string(),
    )
    .unwrap();
}

/// `terraform init` in a fresh folder `dir` requiring `source` at
/// `version`, with the CLI configuration `cli_config`; returns the folder.
async fn terraform_init(dir: &Path, ca: &TestCa, cli_config: &str, source: &str, version: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("main.tf"),
        format!(
            "terraform {{\n  required_providers {{\n    widget = {{\n      source  = \"{source}\"\n      version = \"{version}\"\n    }}\n  }}\n}}\n"
        ),
    )
    .unwrap();
    let config = dir.join("cli.tfrc");
    std::fs::write(&config, cli_config).unwrap();
    let mut command = Command::new(terraform());
    command
        .args(["init", "-input=false", "-no-color"])
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", dir)
        .env("CHECKPOINT_DISABLE", "1")
        .env("TF_CLI_CONFIG_FILE", &config)
        .env("SSL_CERT_FILE", &ca.pem_path);
    let output = run(&mut command, TERRAFORM_TIMEOUT).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("Terraform has been successfully initialized"),
        "{stdout}"
    );
}

fn installed(dir: &Path, host: &str, namespace: &str, version: &str) -> bool {
    dir.join(format!(
        ".terraform/providers/{host}/{namespace}/widget/{version}/linux_amd64/terraform-provider-widget_v{version}"
    ))
    .is_file()
}

#[tokio::test]
async fn terraform_installs_through_a_remote_a_network_mirror_and_a_local_registry() {
    let work = tempfile::tempdir().unwrap();
    let ca = TestCa::new(work.path());
    let (cert, key) = ca.issue(work.path(), "server");
    let site = work.path().join("site");
    let python = which("python3", "python3 is part of the base system");
    std::fs::create_dir_all(&site).unwrap();
    let mut upstream = StaticServer::start(&python, &site, &work.path().join("http.log")).await;
    let upstream_signer = Signer::fresh().unwrap();
    static_registry(&site, &upstream_signer, &upstream.url());
    // The local registry is private: terraform authenticates to its
    // documents, and fetches the archives they name through presigned links.
    let server = Replica::start_embedded(
        &format!(
            "auth:\n  users:\n    ci:\n      password_env: TF_TEST_CI_PASSWORD\n      write: [tflocal]\n\
             remotes:\n  tfr:\n    type: remote\n    package: terraform\n    base_url: \"{}\"\n  \
             tflocal:\n    type: local\n    package: terraform\n    anonymous_read: false\n",
            upstream.url()
        ),
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
        &[("TF_TEST_CI_PASSWORD", "ci-secret")],
    )
    .await;
    let port = server.port;
    let https = |path: &str| format!("https://127.0.0.1:{port}{path}");
    let client = ca.client();
    let remote_config = format!(
        "host \"tf.local\" {{\n  services = {{\n    \"providers.v1\" = \"{}\"\n  }}\n}}\n",
        https("/api/v1/remote/tfr/v1/providers/")
    );

    let first = work.path().join("remote");
    terraform_init(&first, &ca, &remote_config, "tf.local/acme/widget", "1.0.0").await;
    assert!(installed(&first, "tf.local", "acme", "1.0.0"));

    let mirror_config = format!(
        "provider_installation {{\n  network_mirror {{\n    url = \"{}\"\n  }}\n}}\n",
        https("/api/v1/remote/tfr/mirror/")
    );
    let mirrored = work.path().join("mirror");
    terraform_init(
        &mirrored,
        &ca,
        &mirror_config,
        "tf.local/acme/widget",
        "1.0.0",
    )
    .await;
    assert!(installed(&mirrored, "tf.local", "acme", "1.0.0"));
    let version: Value = client
        .get(https(
            "/api/v1/remote/tfr/mirror/tf.local/acme/widget/1.0.0.json",
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let zip = provider_zip("widget", "1.0.0");
    assert_eq!(
        version["archives"]["linux_amd64"]["hashes"],
        json!([format!("zh:{}", hex_sha256(&zip))])
    );

    upstream.stop().await;
    let again = work.path().join("remote-again");
    terraform_init(&again, &ca, &remote_config, "tf.local/acme/widget", "1.0.0").await;
    assert!(
        installed(&again, "tf.local", "acme", "1.0.0"),
        "from the cache"
    );

    for version in ["1.0.0", "1.1.0"] {
        let file = format!("terraform-provider-widget_{version}_linux_amd64.zip");
        let put = client
            .put(https(&format!(
                "/api/v1/remote/tflocal/tflocal/widget/{file}"
            )))
            .basic_auth("ci", Some("ci-secret"))
            .body(provider_zip("widget", version))
            .send()
            .await
            .unwrap();
        assert_eq!(put.status(), 201, "{}", put.text().await.unwrap());
    }
    let discovery: Value = client
        .get(https("/.well-known/terraform.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(discovery, json!({"providers.v1": "/api/v1/remote/"}));
    let anonymous = client
        .get(https("/api/v1/remote/tflocal/widget/versions"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    let archive = https(
        "/api/v1/remote/tflocal/tflocal/widget/terraform-provider-widget_1.1.0_linux_amd64.zip",
    );
    let unsigned = client.get(&archive).send().await.unwrap();
    assert_eq!(
        unsigned.status(),
        401,
        "an archive needs credentials or a presigned link"
    );
    let token: Value = client
        .get(https("/v2/token"))
        .basic_auth("ci", Some("ci-secret"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = token["token"].as_str().unwrap();
    let download: Value = client
        .get(https(
            "/api/v1/remote/tflocal/widget/1.1.0/download/linux/amd64",
        ))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let presigned = download["download_url"].as_str().unwrap();
    assert!(
        presigned.starts_with(&archive) && presigned.contains("artifactapi-signature="),
        "{presigned}"
    );
    let signed = client.get(presigned).send().await.unwrap();
    assert_eq!(
        signed.status(),
        200,
        "a presigned link reads without credentials"
    );
    let tampered = presigned.replace("1.1.0_linux", "1.0.0_linux");
    assert_eq!(client.get(&tampered).send().await.unwrap().status(), 401);

    let local = work.path().join("local");
    let source = format!("localhost:{port}/tflocal/widget");
    let credentials = format!("credentials \"localhost:{port}\" {{\n  token = \"{token}\"\n}}\n");
    terraform_init(&local, &ca, &credentials, &source, ">= 1.0.0").await;
    assert!(
        installed(&local, &format!("localhost:{port}"), "tflocal", "1.1.0"),
        "the newest uploaded version, its signature verified"
    );
}

#[tokio::test]
async fn local_uploads_are_checked_and_virtual_version_lists_merge() {
    let work = tempfile::tempdir().unwrap();
    let site = work.path().join("site");
    std::fs::create_dir_all(&site).unwrap();
    let python = which("python3", "python3 is part of the base system");
    let upstream = StaticServer::start(&python, &site, &work.path().join("http.log")).await;
    static_registry(&site, &Signer::fresh().unwrap(), &upstream.url());
    let server = Replica::start_embedded(
        &format!(
            "remotes:\n  tfr:\n    type: remote\n    package: terraform\n    base_url: \"{}\"\n  \
             tflocal:\n    type: local\n    package: terraform\n  \
             tfall:\n    type: virtual\n    package: terraform\n    members: [tflocal, tfr]\n",
            upstream.url()
        ),
        &[],
        &[],
    )
    .await;
    let client = artifactapi_e2e::client();
    let put = |path: String, body: Vec<u8>| {
        let url = server.url(&format!("/api/v1/remote/tflocal/{path}"));
        let client = client.clone();
        async move {
            let response = client.put(url).body(body).send().await.unwrap();
            (response.status().as_u16(), response.text().await.unwrap())
        }
    };
    let zip = provider_zip("widget", "2.0.0");
    let (status, message) = put(
        "acme/widget/terraform-provider-widget_2.0.0_linux_amd64.zip".into(),
        zip.clone(),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        message.contains("namespace of repository tflocal"),
        "{message}"
    );
    let (status, _) = put("tflocal/widget/widget.zip".into(), zip.clone()).await;
    assert_eq!(status, 400);
    let (status, message) = put(
        "tflocal/widget/terraform-provider-widget_2.0.0_linux_amd64.zip".into(),
        b"not a zip at all".to_vec(),
    )
    .await;
    assert_eq!(status, 400);
    assert!(message.contains("not a zip archive"), "{message}");
    let (status, message) = put(
        "tflocal/widget/terraform-provider-widget_2.0.0_linux_amd64.zip".into(),
        provider_zip("gadget", "2.0.0"),
    )
    .await;
    assert_eq!(status, 400, "an archive without the provider's executable");
    assert!(message.contains("terraform-provider-widget"), "{message}");
    let none = client
        .get(server.url("/api/v1/remote/tflocal/widget/versions"))
        .send()
        .await
        .unwrap();
    assert_eq!(none.status(), 404, "nothing was stored");

    let (status, _) = put(
        "tflocal/widget/terraform-provider-widget_2.0.0_linux_amd64.zip".into(),
        zip.clone(),
    )
    .await;
    assert_eq!(status, 201);
    let sums = client
        .get(server.url("/api/v1/remote/tflocal/widget/2.0.0/SHA256SUMS"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        sums,
        format!(
            "{}  terraform-provider-widget_2.0.0_linux_amd64.zip\n",
            hex_sha256(&zip)
        )
    );
    let download: Value = client
        .get(server.url("/api/v1/remote/tflocal/widget/2.0.0/download/linux/amd64"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(download["shasum"], hex_sha256(&zip));
    assert_eq!(
        download["download_url"],
        server.url(
            "/api/v1/remote/tflocal/tflocal/widget/terraform-provider-widget_2.0.0_linux_amd64.zip"
        )
    );
    assert_eq!(download["protocols"], json!(["5.0", "6.0"]));
    let key_id = download["signing_keys"]["gpg_public_keys"][0]["key_id"]
        .as_str()
        .unwrap();
    assert_eq!(key_id.len(), 16);

    let merged: Value = client
        .get(server.url("/api/v1/virtual/tfall/v1/providers/acme/widget/versions"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let versions: Vec<_> = merged["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(versions, ["1.0.0"], "the remote member's list");
}
