//! OCI tooling for the end-to-end tests: a test image built offline with
//! umoci, the CNCF registry as an upstream, and skopeo and podman run with a
//! deadline. The tools come from tests/setup/oci.sh.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use tokio::process::{Child, Command};
use tokio::sync::OnceCell;

use crate::tools::{run, which};

/// How long one skopeo, podman or umoci call may take.
pub const TOOL_TIMEOUT: Duration = Duration::from_secs(120);

/// The tag of the test image in its OCI layout.
pub const IMAGE_TAG: &str = "v1";

/// Size of the test image's layer of random bytes.
const RANDOM_LAYER_BYTES: usize = 4 << 20;

/// An OCI tool, installed by tests/setup/oci.sh.
pub fn require(tool: &str) -> PathBuf {
    which(tool, "run tests/setup/oci.sh (make test does)")
}

/// A small image (three layers, one of them 4 MiB of random bytes) held in
/// memory as the OCI layout umoci built: every file of the layout by its
/// relative path.
pub struct TestImage {
    files: BTreeMap<PathBuf, Vec<u8>>,
    /// The digest of the image manifest (`sha256:…`).
    pub manifest_digest: String,
    /// The digest of the image configuration.
    pub config_digest: String,
    /// The layer digests, bottom first.
    pub layers: Vec<String>,
}

impl TestImage {
    /// Writes the OCI layout to `dir` (created) and returns the skopeo
    /// reference `oci:DIR:v1` of the image in it.
    pub fn write_layout(&self, dir: &Path) -> String {
        for (path, data) in &self.files {
            let target = dir.join(path);
            std::fs::create_dir_all(target.parent().unwrap()).unwrap();
            std::fs::write(target, data).unwrap();
        }
        format!("oci:{}:{IMAGE_TAG}", dir.display())
    }

    /// The bytes of the blob (layer, configuration or manifest) `digest`.
    pub fn blob(&self, digest: &str) -> &[u8] {
        self.files
            .get(&blob_path(digest))
            .unwrap_or_else(|| panic!("the test image has no blob {digest}"))
    }

    /// The configuration and the layers: the blobs every copy of the
    /// image shares whatever its manifest format.
    pub fn shared_blobs(&self) -> Vec<&str> {
        std::iter::once(self.config_digest.as_str())
            .chain(self.layers.iter().map(String::as_str))
            .collect()
    }

    /// Asserts that `dir`, written by `skopeo copy … dir:DIR`, holds the
    /// manifest `manifest_digest` and every shared blob byte for byte.
    pub async fn assert_dir_copy(&self, dir: &Path, manifest_digest: &str) {
        assert_eq!(
            manifest_digest_of(&dir.join("manifest.json")).await,
            manifest_digest,
            "manifest of {}",
            dir.display()
        );
        for digest in self.shared_blobs() {
            let hex = digest.strip_prefix("sha256:").unwrap();
            let copied = std::fs::read(dir.join(hex))
                .unwrap_or_else(|e| panic!("{digest} missing in {}: {e}", dir.display()));
            assert!(copied == self.blob(digest), "{digest} differs");
        }
    }

    /// Asserts that the OCI layout `dir`, written by `skopeo copy …
    /// oci:DIR:TAG`, holds this image unchanged under `tag`: the same
    /// manifest and every blob byte for byte.
    pub fn assert_oci_copy(&self, dir: &Path, tag: &str) {
        let (manifest, _) = layout_manifest(dir, tag);
        assert_eq!(
            manifest,
            self.manifest_digest,
            "manifest of {}",
            dir.display()
        );
        let digests = std::iter::once(manifest.as_str()).chain(self.shared_blobs());
        for digest in digests {
            let copied = std::fs::read(dir.join(blob_path(digest)))
                .unwrap_or_else(|e| panic!("{digest} missing in {}: {e}", dir.display()));
            assert!(copied == self.blob(digest), "{digest} differs");
        }
    }
}

fn blob_path(digest: &str) -> PathBuf {
    let (algorithm, hex) = digest
        .split_once(':')
        .unwrap_or_else(|| panic!("not a digest: {digest}"));
    Path::new("blobs").join(algorithm).join(hex)
}

/// The manifest digest tagged `tag` in the OCI layout `dir`, and the
/// manifest parsed.
fn layout_manifest(dir: &Path, tag: &str) -> (String, serde_json::Value) {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    let entry = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .unwrap_or_else(|| panic!("no tag {tag} in {}: {index}", dir.display()));
    let digest = entry["digest"].as_str().unwrap().to_string();
    let manifest =
        serde_json::from_slice(&std::fs::read(dir.join(blob_path(&digest))).unwrap()).unwrap();
    (digest, manifest)
}

static IMAGE: OnceCell<TestImage> = OnceCell::const_new();

/// The test image, built on first use and shared by every test of the
/// process.
pub async fn test_image() -> &'static TestImage {
    IMAGE.get_or_init(build_image).await
}

/// Builds the image with umoci in a temporary folder and reads it into
/// memory: `/etc/greeting` (text), `/data/random.bin` (4 MiB of random
/// bytes) and `/bin/tool` (an executable script), one layer each.
async fn build_image() -> TestImage {
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("layout");
    let image = format!("{}:{IMAGE_TAG}", layout.display());
    umoci(&["init", "--layout", layout.to_str().unwrap()]).await;
    umoci(&["new", "--image", &image]).await;

    let greeting = work.path().join("etc");
    std::fs::create_dir_all(&greeting).unwrap();
    std::fs::write(greeting.join("greeting"), "hello from artifactapi\n").unwrap();
    let data = work.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("random.bin"), random_bytes(RANDOM_LAYER_BYTES)).unwrap();
    let bin = work.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::write(bin.join("tool"), "#!/bin/sh\necho tool\n").unwrap();
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(bin.join("tool"), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    for (source, target) in [(&greeting, "/etc"), (&data, "/data"), (&bin, "/bin")] {
        umoci(&[
            "insert",
            "--image",
            &image,
            source.to_str().unwrap(),
            target,
        ])
        .await;
    }
    umoci(&[
        "config",
        "--image",
        &image,
        "--author",
        "artifactapi e2e",
        "--config.cmd",
        "/bin/tool",
        "--config.label",
        "org.example.test=oci-clients",
    ])
    .await;
    umoci(&["gc", "--layout", layout.to_str().unwrap()]).await;

    let (manifest_digest, manifest) = layout_manifest(&layout, IMAGE_TAG);
    let config_digest = manifest["config"]["digest"].as_str().unwrap().to_string();
    let layers: Vec<String> = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(layers.len(), 3, "{manifest}");
    let mut files = BTreeMap::new();
    read_tree(&layout, &layout, &mut files);
    TestImage {
        files,
        manifest_digest,
        config_digest,
        layers,
    }
}

fn read_tree(root: &Path, dir: &Path, files: &mut BTreeMap<PathBuf, Vec<u8>>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            read_tree(root, &path, files);
        } else {
            let relative = path.strip_prefix(root).unwrap().to_path_buf();
            files.insert(relative, std::fs::read(&path).unwrap());
        }
    }
}

/// `len` bytes that do not compress (xorshift64*, seeded from the clock).
fn random_bytes(len: usize) -> Vec<u8> {
    let mut state = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

async fn umoci(args: &[&str]) {
    run(Command::new(require("umoci")).args(args), TOOL_TIMEOUT).await;
}

/// Runs skopeo with `args`; panics with its output unless it succeeds.
pub async fn skopeo(args: &[&str]) -> Output {
    run(Command::new(require("skopeo")).args(args), TOOL_TIMEOUT).await
}

/// Runs skopeo with `args`, expecting it to fail; returns its stderr.
pub async fn skopeo_fails(args: &[&str]) -> String {
    let mut command = Command::new(require("skopeo"));
    command.args(args);
    let output = output_of(&mut command).await;
    assert!(
        !output.status.success(),
        "skopeo {args:?} succeeded\n--- stdout\n{}\n--- stderr\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Runs `command` to completion within [`TOOL_TIMEOUT`], whatever its exit
/// status.
async fn output_of(command: &mut Command) -> Output {
    let shown = format!("{:?}", command.as_std());
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {shown}: {e}"));
    match tokio::time::timeout(TOOL_TIMEOUT, child.wait_with_output()).await {
        Ok(output) => output.unwrap_or_else(|e| panic!("{shown}: {e}")),
        Err(_) => panic!("{shown} did not finish within {TOOL_TIMEOUT:?}"),
    }
}

/// The digest of the manifest in `file`, as registries compute it.
pub async fn manifest_digest_of(file: &Path) -> String {
    let output = skopeo(&["manifest-digest", file.to_str().unwrap()]).await;
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

/// Pushes the test image from its layout `source` (see
/// [`TestImage::write_layout`]) to `dest` (`host:port/name:tag`) with
/// credentials `creds` (`user:password`) in manifest `format` (`v2s2` or
/// `oci`); returns the digest of the manifest pushed.
pub async fn push(source: &str, dest: &str, creds: &str, format: &str, work: &Path) -> String {
    let digest_file = tempfile::NamedTempFile::new_in(work).unwrap();
    skopeo(&[
        "copy",
        "--dest-tls-verify=false",
        "--dest-creds",
        creds,
        "--format",
        format,
        "--digestfile",
        digest_file.path().to_str().unwrap(),
        source,
        &format!("docker://{dest}"),
    ])
    .await;
    std::fs::read_to_string(digest_file.path())
        .unwrap()
        .trim()
        .to_string()
}

/// Podman with its own storage (vfs) and state under `root`, so that it
/// needs no daemon and shares nothing with other runs.
pub struct Podman {
    root: PathBuf,
}

impl Podman {
    /// Podman keeping everything under `root` (created).
    pub fn new(root: &Path) -> Podman {
        std::fs::create_dir_all(root).unwrap();
        Podman {
            root: root.to_path_buf(),
        }
    }

    /// Runs `podman ARGS` with this storage; panics with its output unless
    /// it succeeds.
    pub async fn run(&self, args: &[&str]) -> Output {
        let mut command = Command::new(require("podman"));
        command
            .args(["--storage-driver", "vfs", "--root"])
            .arg(self.root.join("storage"))
            .arg("--runroot")
            .arg(self.root.join("run"))
            .arg("--tmpdir")
            .arg(self.root.join("tmp"))
            .args(["--events-backend", "file", "--cgroup-manager", "cgroupfs"])
            .args(args);
        run(&mut command, TOOL_TIMEOUT).await
    }
}

/// The CNCF reference registry (`docker-registry`) on a loopback port,
/// with htpasswd (bcrypt) authentication and deletes enabled. It is killed
/// when stopped or dropped.
pub struct CncfRegistry {
    child: Child,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl CncfRegistry {
    /// Starts a registry accepting the one user `user` with `password`.
    pub async fn start(user: &str, password: &str) -> CncfRegistry {
        let dir = tempfile::tempdir().unwrap();
        let htpasswd = run(
            Command::new(require("htpasswd")).args(["-B", "-b", "-n", user, password]),
            TOOL_TIMEOUT,
        )
        .await;
        let htpasswd_file = dir.path().join("htpasswd");
        std::fs::write(&htpasswd_file, htpasswd.stdout).unwrap();
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    \
                 rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  \
                 addr: 127.0.0.1:0\nauth:\n  htpasswd:\n    realm: artifactapi-e2e\n    \
                 path: {}\n",
                dir.path().join("storage").display(),
                htpasswd_file.display()
            ),
        )
        .unwrap();
        // Its messages go to stderr, its access log to stdout: one file.
        let log = dir.path().join("registry.log");
        let log_file = std::fs::File::create(&log).unwrap();
        let mut command = Command::new(require("docker-registry"));
        command.arg("serve").arg(&config);
        // The registry reads REGISTRY_* variables as configuration.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("REGISTRY_") {
                command.env_remove(name);
            }
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start docker-registry: {e}"));
        // "... level=info msg=\"listening on 127.0.0.1:40123\" ..."
        let end = tokio::time::Instant::now() + Duration::from_secs(20);
        let port = loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let port = text
                .split_once("listening on 127.0.0.1:")
                .and_then(|(_, rest)| rest.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|port| port.parse().ok());
            if let Some(port) = port {
                break port;
            }
            if let Some(status) = child.try_wait().unwrap() {
                panic!("docker-registry exited with {status}:\n{text}");
            }
            assert!(
                tokio::time::Instant::now() < end,
                "docker-registry did not start within 20 s:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        CncfRegistry {
            child,
            port,
            log,
            _dir: dir,
        }
    }

    /// `127.0.0.1:port`, the registry part of an image reference.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `http://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("http://{}", self.host())
    }

    /// How many requests whose line starts with `request` (`"GET
    /// /v2/name/blobs/"`) the registry has answered, from its access log.
    pub fn requests(&self, request: &str) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .matches(&format!("\"{request}"))
            .count()
    }

    /// Kills the registry and waits until it is gone, so that its port
    /// refuses connections.
    pub async fn stop(&mut self) {
        self.child.kill().await.unwrap();
    }
}
