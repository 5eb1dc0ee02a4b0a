//! RPM repositories with the real client: rpmbuild makes a small package,
//! createrepo_c indexes it, a static HTTP server publishes it, and dnf
//! installs it through an rpm remote into a throwaway installroot; then
//! again into a fresh installroot once the repository server is gone, from
//! the proxy's cache. The tools come from tests/setup/rpm.sh.

use std::path::{Path, PathBuf};
use std::time::Duration;

use artifactapi_e2e::tools::{run, which, StaticServer};
use artifactapi_e2e::{client, component, header, plugins_dir, Server};
use tokio::process::Command;

const SPEC: &str = r#"Name: demo
Version: 1.0
Release: 1
Summary: Demo package for the artifactapi end-to-end tests
License: Apache-2.0
BuildArch: noarch

%description
One file in /usr/share/demo.

%install
mkdir -p %{buildroot}/usr/share/demo
echo 'hello from artifactapi' > %{buildroot}/usr/share/demo/hello.txt

%files
/usr/share/demo/hello.txt
"#;

const RPM: &str = "demo-1.0-1.noarch.rpm";

/// An RPM tool, installed by tests/setup/rpm.sh.
fn require(tool: &str) -> PathBuf {
    which(tool, "run tests/setup/rpm.sh (make test does)")
}

/// Builds the demo package and a createrepo_c repository around it in
/// `work/repo`; returns that folder.
async fn build_repository(work: &Path) -> PathBuf {
    let spec = work.join("demo.spec");
    std::fs::write(&spec, SPEC).unwrap();
    let top = work.join("rpmbuild");
    run(
        Command::new(require("rpmbuild"))
            .arg("--define")
            .arg(format!("_topdir {}", top.display()))
            .args(["-bb", "--quiet"])
            .arg(&spec),
        Duration::from_secs(120),
    )
    .await;
    let repo = work.join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    std::fs::copy(top.join("RPMS/noarch").join(RPM), repo.join(RPM)).unwrap();
    run(
        Command::new(require("createrepo_c")).arg(&repo),
        Duration::from_secs(120),
    )
    .await;
    repo
}

/// `dnf install demo` from the repository at `url` into `root`, a new
/// installroot that sees no other repository.
async fn dnf_install(root: &Path, url: &str) {
    run(
        Command::new(require("dnf"))
            .arg(format!("--installroot={}", root.display()))
            .args([
                "--releasever=1",
                "--setopt=reposdir=/dev/null",
                "--setopt=install_weak_deps=False",
                "--nogpgcheck",
            ])
            .arg(format!("--repofrompath=r,{url}"))
            .args(["--repo=r", "install", "-y", "demo"]),
        Duration::from_secs(300),
    )
    .await;
    let installed = root.join("usr/share/demo/hello.txt");
    assert_eq!(
        std::fs::read_to_string(&installed).unwrap(),
        "hello from artifactapi\n",
        "{}",
        installed.display()
    );
}

#[tokio::test]
async fn dnf_installs_through_an_rpm_remote_and_later_from_the_cache() {
    let work = tempfile::tempdir().unwrap();
    let repo = build_repository(work.path()).await;
    let python = which("python3", "install python3");
    let mut upstream = StaticServer::start(&python, &repo, &work.path().join("http.log")).await;
    let plugin = component(&plugins_dir(), "rpm.wasm");
    let server = Server::start_with(
        &format!(
            "remotes:\n  rpm:\n    type: remote\n    package: rpm\n    base_url: \"{}\"\n",
            upstream.url()
        ),
        &[(&plugin, "rpm.wasm")],
        Duration::from_secs(5),
    )
    .await;
    let url = server.url("/api/v1/remote/rpm");

    dnf_install(&work.path().join("root1"), &url).await;
    let log = std::fs::read_to_string(work.path().join("http.log")).unwrap();
    assert!(log.contains("GET /repodata/repomd.xml "), "{log}");
    assert!(log.contains(&format!("GET /{RPM} ")), "{log}");

    // The repository server goes away; a new machine still installs.
    upstream.stop().await;
    dnf_install(&work.path().join("root2"), &url).await;

    let package = client().get(format!("{url}/{RPM}")).send().await.unwrap();
    assert_eq!(package.status(), 200);
    assert_eq!(header(package.headers(), "x-artifact-source"), "cache");
    assert_eq!(header(package.headers(), "x-artifact-plugin"), "rpm@0.1.0");
    assert_eq!(
        package.bytes().await.unwrap(),
        std::fs::read(repo.join(RPM)).unwrap()
    );
}
