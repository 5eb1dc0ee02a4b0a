//! The plugin template (plugins/template) serves as it is: an upstream's
//! index led back through the proxy, a local repository's index generated
//! from its uploads (an upload of the index itself refused), and a virtual
//! repository merging both.

use std::time::Duration;

use artifactapi_e2e::{client, component, plugins_dir, Server, Upstream};
use serde_json::Value;

#[tokio::test]
async fn the_template_plugin_serves_remote_local_and_virtual_repositories() {
    let upstream = Upstream::start().await;
    upstream.put(
        "index.json",
        r#"{"files": [{"name": "tool-1.0.tgz", "url": "files/tool-1.0.tgz",
                      "published": "2024-01-02T03:04:05Z"}]}"#,
    );
    upstream.put("files/tool-1.0.tgz", "tool bytes");
    let remotes = format!(
        "remotes:\n  tools:\n    type: remote\n    package: template\n    base_url: \"{}/files\"\n  \
         tools-local:\n    type: local\n    package: template\n  \
         all-tools:\n    type: virtual\n    package: template\n    members: [tools-local, tools]\n",
        upstream.url()
    );
    let plugin = component(&plugins_dir(), "template.wasm");
    let server = Server::start_with(
        &remotes,
        &[(&plugin, "template.wasm")],
        Duration::from_secs(5),
    )
    .await;
    let json = |path: &str| {
        let url = server.url(path);
        async move {
            let response = client().get(url).send().await.unwrap();
            assert_eq!(response.status(), 200);
            response.json::<Value>().await.unwrap()
        }
    };

    let index = json("/api/v1/remote/tools/index.json").await;
    let url = index["files"][0]["url"].as_str().unwrap().to_string();
    assert_eq!(url, server.url("/api/v1/remote/tools/files/tool-1.0.tgz"));
    let file = client().get(&url).send().await.unwrap();
    assert_eq!(file.text().await.unwrap(), "tool bytes");

    let put = |path: &str, body: &'static str| {
        let url = server.url(path);
        async move { client().put(url).body(body).send().await.unwrap() }
    };
    assert_eq!(
        put("/api/v1/remote/tools-local/mine-2.0.tgz", "mine")
            .await
            .status(),
        201
    );
    let refused = put("/api/v1/remote/tools-local/index.json", "{}").await;
    assert_eq!(
        refused.status(),
        400,
        "the index of a local repository is generated"
    );
    let local = json("/api/v1/remote/tools-local/index.json").await;
    assert_eq!(local["files"].as_array().unwrap().len(), 1);
    assert_eq!(local["files"][0]["name"], "mine-2.0.tgz");

    let merged = json("/api/v1/virtual/all-tools/index.json").await;
    let names: Vec<_> = merged["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["mine-2.0.tgz", "tool-1.0.tgz"]);
}
