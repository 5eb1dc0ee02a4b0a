//! Alpine repositories through an alpine remote. No apk client runs on these
//! machines, so the test builds what apk would fetch: `.apk` packages (gzip
//! streams of a control and a data tarball) and a signed-style
//! `APKINDEX.tar.gz` (a signature stream, then the index stream) whose
//! `APKINDEX` lists them in apk's `P:`/`V:`/`C:`... format. A static HTTP
//! server publishes them; an HTTP client fetches them through the proxy.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use artifactapi_e2e::tools::{run, which, StaticServer};
use artifactapi_e2e::{client, component, header, plugins_dir, Server};
use tokio::process::Command;

const REPO_DIR: &str = "v3.20/main/x86_64";

/// A built package and what the index says about it.
struct Apk {
    name: &'static str,
    version: &'static str,
    bytes: Vec<u8>,
    /// `Q1` + base64 of the SHA-1 of the control stream.
    checksum: String,
    installed_size: u64,
}

impl Apk {
    fn file_name(&self) -> String {
        format!("{}-{}.apk", self.name, self.version)
    }

    /// The package's paragraph in `APKINDEX`.
    fn index_entry(&self) -> String {
        format!(
            "C:{}\nP:{}\nV:{}\nA:x86_64\nS:{}\nI:{}\nT:{} for the artifactapi tests\n\
             U:https://apk.example.org/{}\nL:Apache-2.0\no:{}\nm:Tests <tests@example.org>\n\
             t:1700000000\n\n",
            self.checksum,
            self.name,
            self.version,
            self.bytes.len(),
            self.installed_size,
            self.name,
            self.name,
            self.name
        )
    }
}

/// A gzip'd tarball of `files` (relative to `dir`), as its bytes.
async fn tar_gz(dir: &Path, files: &[&str]) -> Vec<u8> {
    let out = dir.join("out.tar.gz");
    run(
        Command::new("tar")
            .args(["--format=ustar", "--owner=0", "--group=0", "-czf"])
            .arg(&out)
            .arg("-C")
            .arg(dir)
            .args(files),
        Duration::from_secs(30),
    )
    .await;
    let bytes = std::fs::read(&out).unwrap();
    std::fs::remove_file(&out).unwrap();
    bytes
}

/// Builds package `name`-`version` with one file under `/usr/share/name`.
async fn build_apk(work: &Path, name: &'static str, version: &'static str) -> Apk {
    let root = work.join(format!("build-{name}-{version}"));
    let (control, data) = (root.join("control"), root.join("data"));
    let file = data.join("usr/share").join(name).join("README");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::create_dir_all(&control).unwrap();
    let content = format!("{name} {version}\n");
    std::fs::write(&file, &content).unwrap();
    std::fs::write(
        control.join(".PKGINFO"),
        format!(
            "pkgname = {name}\npkgver = {version}\npkgdesc = {name} for the artifactapi tests\n\
             url = https://apk.example.org/{name}\nbuilddate = 1700000000\nsize = {}\n\
             arch = x86_64\nlicense = Apache-2.0\norigin = {name}\n",
            content.len()
        ),
    )
    .unwrap();
    let control_gz = tar_gz(&control, &[".PKGINFO"]).await;
    let data_gz = tar_gz(&data, &["usr"]).await;
    let control_path = root.join("control.tar.gz");
    std::fs::write(&control_path, &control_gz).unwrap();
    let sha1 = run(
        Command::new("bash")
            .args(["-c", "openssl dgst -sha1 -binary \"$1\" | base64 -w0", "-"])
            .arg(&control_path),
        Duration::from_secs(30),
    )
    .await;
    Apk {
        name,
        version,
        bytes: [control_gz, data_gz].concat(),
        checksum: format!("Q1{}", String::from_utf8(sha1.stdout).unwrap().trim()),
        installed_size: content.len() as u64,
    }
}

/// `APKINDEX.tar.gz` for `packages`: a signature stream, then a stream
/// holding `DESCRIPTION` and `APKINDEX`.
async fn build_index(work: &Path, packages: &[&Apk]) -> Vec<u8> {
    let dir = tempfile::tempdir_in(work).unwrap();
    let (sign, index) = (dir.path().join("sign"), dir.path().join("index"));
    std::fs::create_dir_all(&sign).unwrap();
    std::fs::create_dir_all(&index).unwrap();
    let key = ".SIGN.RSA.tests@example.org-00000000.rsa.pub";
    std::fs::write(sign.join(key), [0x5a; 256]).unwrap();
    std::fs::write(index.join("DESCRIPTION"), "v3.20.0-test\n").unwrap();
    let entries: String = packages.iter().map(|p| p.index_entry()).collect();
    std::fs::write(index.join("APKINDEX"), entries).unwrap();
    let signature = tar_gz(&sign, &[key]).await;
    let body = tar_gz(&index, &["DESCRIPTION", "APKINDEX"]).await;
    [signature, body].concat()
}

/// Writes `bytes` to `path` the way a mirror would: aside, then renamed in.
fn publish(path: &Path, bytes: &[u8]) {
    let aside = path.with_extension("part");
    std::fs::write(&aside, bytes).unwrap();
    std::fs::rename(&aside, path).unwrap();
}

/// The `P:` → `(V:, S:)` pairs of the `APKINDEX` inside an
/// `APKINDEX.tar.gz`, read back with tar the way apk reads it (through the
/// end of the first stream's archive).
async fn index_entries(work: &Path, index: &[u8]) -> BTreeMap<String, (String, String)> {
    let dir = tempfile::tempdir_in(work).unwrap();
    let file = dir.path().join("APKINDEX.tar.gz");
    std::fs::write(&file, index).unwrap();
    run(
        Command::new("tar")
            .args(["--ignore-zeros", "-xzf"])
            .arg(&file)
            .arg("-C")
            .arg(dir.path()),
        Duration::from_secs(30),
    )
    .await;
    let text = std::fs::read_to_string(dir.path().join("APKINDEX")).unwrap();
    text.split("\n\n")
        .filter(|paragraph| !paragraph.trim().is_empty())
        .map(|paragraph| {
            let field = |name: &str| {
                paragraph
                    .lines()
                    .find_map(|line| line.strip_prefix(name))
                    .unwrap_or_default()
                    .to_string()
            };
            (field("P:"), (field("V:"), field("S:")))
        })
        .collect()
}

#[tokio::test]
async fn apks_stay_cached_and_apkindex_is_fetched_again_once_stale() {
    let work = tempfile::tempdir().unwrap();
    let site = work.path().join("site");
    let dir = site.join(REPO_DIR);
    std::fs::create_dir_all(&dir).unwrap();
    let hello = build_apk(work.path(), "hello", "1.0-r0").await;
    let world = build_apk(work.path(), "world", "2.0-r1").await;
    for apk in [&hello, &world] {
        publish(&dir.join(apk.file_name()), &apk.bytes);
    }
    let index = build_index(work.path(), &[&hello, &world]).await;
    publish(&dir.join("APKINDEX.tar.gz"), &index);

    let mut upstream = StaticServer::start(
        &which("python3", "install python3"),
        &site,
        &work.path().join("http.log"),
    )
    .await;
    let plugin = component(&plugins_dir(), "alpine.wasm");
    let server = Server::start_with(
        &format!(
            "remotes:\n  alpine:\n    type: remote\n    package: alpine\n    base_url: \"{}\"\n    \
             cache:\n      mutable_ttl: 1\n",
            upstream.url()
        ),
        &[(&plugin, "alpine.wasm")],
        Duration::from_secs(5),
    )
    .await;
    let base = server.url(&format!("/api/v1/remote/alpine/{REPO_DIR}"));
    let apkindex = format!("{base}/APKINDEX.tar.gz");

    // The index comes through byte for byte, and lists the packages.
    let response = client().get(&apkindex).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(header(response.headers(), "x-artifact-source"), "remote");
    assert_eq!(
        header(response.headers(), "x-artifact-plugin"),
        "alpine@0.1.0"
    );
    let fetched = response.bytes().await.unwrap();
    assert_eq!(fetched, index);
    let entries = index_entries(work.path(), &fetched).await;
    let expected: BTreeMap<String, (String, String)> = [&hello, &world]
        .iter()
        .map(|apk| {
            (
                apk.name.to_string(),
                (apk.version.to_string(), apk.bytes.len().to_string()),
            )
        })
        .collect();
    assert_eq!(entries, expected);

    // Packages are immutable: fetched once, then served from the cache.
    for apk in [&hello, &world] {
        let url = format!("{base}/{}", apk.file_name());
        for source in ["remote", "cache"] {
            let response = client().get(&url).send().await.unwrap();
            assert_eq!(response.status(), 200, "{url}");
            assert_eq!(header(response.headers(), "x-artifact-source"), source);
            assert_eq!(response.bytes().await.unwrap(), apk.bytes);
        }
    }

    // A package is published and the index changes; once the cached index
    // is past its one-second lifetime, the new one is fetched.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let extra = build_apk(work.path(), "extra", "0.1-r0").await;
    publish(&dir.join(extra.file_name()), &extra.bytes);
    let newer = build_index(work.path(), &[&hello, &world, &extra]).await;
    publish(&dir.join("APKINDEX.tar.gz"), &newer);
    let response = client().get(&apkindex).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(header(response.headers(), "x-artifact-source"), "remote");
    let fetched = response.bytes().await.unwrap();
    assert_eq!(fetched, newer);
    assert_eq!(index_entries(work.path(), &fetched).await.len(), 3);

    // The mirror goes away: packages still come from the cache, and the
    // stale index is still served, with a warning.
    upstream.stop().await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let response = client()
        .get(format!("{base}/{}", hello.file_name()))
        .send()
        .await
        .unwrap();
    assert_eq!(header(response.headers(), "x-artifact-source"), "cache");
    assert_eq!(response.bytes().await.unwrap(), hello.bytes);
    let response = client().get(&apkindex).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(!header(response.headers(), "warning").is_empty());
    assert_eq!(response.bytes().await.unwrap(), newer);
}
