//! Helm chart repositories with the real Helm client: Helm v4 as a library
//! (helm-python-sdk, installed by tests/setup/helm.sh) packages a chart,
//! indexes it with a relative chart URL, and pulls it through a helm remote
//! whose upstream is a static HTTP server; then again once that server is
//! gone, from the cache. A virtual repository merges two remotes' indexes.

use std::path::{Path, PathBuf};
use std::time::Duration;

use artifactapi_e2e::tools::{run, StaticServer};
use artifactapi_e2e::{client, component, header, plugins_dir, tools_dir, Server};
use tokio::process::Command;

/// How long one Helm call may take.
const HELM_TIMEOUT: Duration = Duration::from_secs(120);

/// The venv Python that imports `helm_python`.
fn helm_python() -> PathBuf {
    let python = tools_dir().join("helm/bin/python");
    assert!(
        python.is_file(),
        "{} is missing: run tests/setup/helm.sh (make test does)",
        python.display()
    );
    python
}

/// Runs a Python snippet with the Helm library, `args` in `sys.argv[1:]`,
/// with Helm's cache, config and data folders under `home`; returns stdout.
async fn helm(home: &Path, script: &str, args: &[&str]) -> String {
    let mut command = Command::new(helm_python());
    command
        .arg("-c")
        .arg(format!(
            "import sys, json\nimport helm_python as helm\n{script}"
        ))
        .args(args)
        .env("HOME", home)
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"));
    let output = run(&mut command, HELM_TIMEOUT).await;
    String::from_utf8(output.stdout).unwrap()
}

/// Writes a minimal chart `demo` at `version` under `dir`, packages it into
/// `repo` and returns the archive's bytes.
async fn package_chart(dir: &Path, repo: &Path, version: &str, description: &str) -> Vec<u8> {
    let chart = dir.join(format!("demo-{version}"));
    std::fs::create_dir_all(chart.join("templates")).unwrap();
    std::fs::create_dir_all(repo).unwrap();
    std::fs::write(
        chart.join("Chart.yaml"),
        format!(
            "apiVersion: v2\nname: demo\ndescription: {description}\ntype: application\n\
             version: {version}\nappVersion: \"1.0\"\n"
        ),
    )
    .unwrap();
    std::fs::write(chart.join("values.yaml"), "message: hello\n").unwrap();
    std::fs::write(
        chart.join("templates/configmap.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-demo\n\
         data:\n  message: {{ .Values.message | quote }}\n",
    )
    .unwrap();
    let archive = helm(
        dir,
        "print(helm.package(sys.argv[1], destination=sys.argv[2]))",
        &[chart.to_str().unwrap(), repo.to_str().unwrap()],
    )
    .await;
    std::fs::read(archive.trim()).unwrap()
}

/// Writes `repo/index.yaml` for the archives in `repo`, with chart URLs
/// relative to the index (`helm repo index` without `--url`).
async fn index_repo(dir: &Path, repo: &Path) {
    helm(
        dir,
        "helm.repo_index_generate(sys.argv[1])",
        &[repo.to_str().unwrap()],
    )
    .await;
    let index = std::fs::read_to_string(repo.join("index.yaml")).unwrap();
    assert!(index.contains("- demo-"), "relative URLs expected: {index}");
    assert!(!index.contains("http"), "relative URLs expected: {index}");
}

/// Pulls chart `demo` at `version` from the repository at `repo_url` with a
/// fresh Helm home, and returns the archive's bytes.
async fn pull(work: &Path, repo_url: &str, version: &str) -> Vec<u8> {
    let home = tempfile::tempdir_in(work).unwrap();
    let dest = home.path().join("out");
    std::fs::create_dir_all(&dest).unwrap();
    helm(
        home.path(),
        "helm.pull('demo', repo_url=sys.argv[1], version=sys.argv[2], destination=sys.argv[3])",
        &[repo_url, version, dest.to_str().unwrap()],
    )
    .await;
    std::fs::read(dest.join(format!("demo-{version}.tgz"))).unwrap()
}

/// The repository index as Helm reads it from `repo_url`.
async fn helm_index(work: &Path, repo_url: &str) -> serde_json::Value {
    let home = tempfile::tempdir_in(work).unwrap();
    let json = helm(
        home.path(),
        "print(json.dumps(helm.repo_index(sys.argv[1])))",
        &[repo_url],
    )
    .await;
    serde_json::from_str(&json).unwrap()
}

async fn start_server(remotes: &str) -> Server {
    let plugin = component(&plugins_dir(), "helm.wasm");
    Server::start_with(remotes, &[(&plugin, "helm.wasm")], Duration::from_secs(5)).await
}

#[tokio::test]
async fn helm_pulls_a_chart_through_a_remote_and_later_from_the_cache() {
    let work = tempfile::tempdir().unwrap();
    let repo = work.path().join("repo");
    let original = package_chart(work.path(), &repo, "0.1.0", "A tiny chart").await;
    index_repo(work.path(), &repo).await;

    let mut upstream =
        StaticServer::start(&helm_python(), &repo, &work.path().join("http.log")).await;
    let server = start_server(&format!(
        "remotes:\n  charts:\n    type: remote\n    package: helm\n    base_url: \"{}\"\n",
        upstream.url()
    ))
    .await;
    let repo_url = server.url("/api/v1/remote/charts");

    // Helm sees the chart URL through the proxy, the rest as published.
    let index = helm_index(work.path(), &repo_url).await;
    let entry = &index["entries"]["demo"][0];
    assert_eq!(entry["urls"][0], format!("{repo_url}/demo-0.1.0.tgz"));
    assert_eq!(entry["version"], "0.1.0");
    assert_eq!(entry["description"], "A tiny chart");
    let published = std::fs::read_to_string(repo.join("index.yaml")).unwrap();
    let digest = entry["digest"].as_str().unwrap();
    assert!(published.contains(digest), "{digest} not in {published}");

    assert_eq!(pull(work.path(), &repo_url, "0.1.0").await, original);

    // The chart repository goes away; the proxy still has everything.
    upstream.stop().await;
    assert_eq!(pull(work.path(), &repo_url, "0.1.0").await, original);
    let chart = client()
        .get(format!("{repo_url}/demo-0.1.0.tgz"))
        .send()
        .await
        .unwrap();
    assert_eq!(chart.status(), 200);
    assert_eq!(header(chart.headers(), "x-artifact-source"), "cache");
    assert_eq!(header(chart.headers(), "x-artifact-plugin"), "helm@0.1.0");
    assert_eq!(chart.bytes().await.unwrap(), original);
}

#[tokio::test]
async fn a_virtual_repository_merges_its_members_and_the_first_one_wins() {
    let work = tempfile::tempdir().unwrap();
    let site = work.path().join("site");
    let (a, b) = (site.join("a"), site.join("b"));
    let first = package_chart(&work.path().join("a-src"), &a, "0.1.0", "From a").await;
    index_repo(work.path(), &a).await;
    let shadowed = package_chart(&work.path().join("b-src"), &b, "0.1.0", "From b").await;
    let only_b = package_chart(&work.path().join("b-src"), &b, "0.2.0", "Only b").await;
    index_repo(work.path(), &b).await;
    assert_ne!(first, shadowed);

    let upstream = StaticServer::start(&helm_python(), &site, &work.path().join("http.log")).await;
    let server = start_server(&format!(
        r#"
remotes:
  a:
    type: remote
    package: helm
    base_url: "{up}/a"
  b:
    type: remote
    package: helm
    base_url: "{up}/b"
  all:
    type: virtual
    package: helm
    members: [a, b]
"#,
        up = upstream.url()
    ))
    .await;
    let all = server.url("/api/v1/remote/all");

    let index = helm_index(work.path(), &all).await;
    assert_eq!(index["apiVersion"], "v1");
    let mut versions: Vec<(String, String, String)> = index["entries"]["demo"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["version"].as_str().unwrap().to_string(),
                v["description"].as_str().unwrap().to_string(),
                v["urls"][0].as_str().unwrap().to_string(),
            )
        })
        .collect();
    versions.sort();
    assert_eq!(
        versions,
        [
            (
                "0.1.0".into(),
                "From a".into(),
                format!("{all}/demo-0.1.0.tgz")
            ),
            (
                "0.2.0".into(),
                "Only b".into(),
                format!("{all}/demo-0.2.0.tgz")
            ),
        ]
    );
    assert_eq!(pull(work.path(), &all, "0.1.0").await, first);
    assert_eq!(pull(work.path(), &all, "0.2.0").await, only_b);
}
