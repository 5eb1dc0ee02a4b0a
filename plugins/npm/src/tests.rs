//! Unit tests of the plugin's exports, called natively.

use artifactapi_plugin_sdk::types::RepoKind;
use artifactapi_plugin_sdk::Format as _;
use serde_json::{json, Value};

use super::*;

const BASE: &str = "https://npm.example.org";
const PUBLIC: &str = "http://proxy.example.org/api/v1/remote/npm";

fn repo() -> RepoContext {
    RepoContext {
        name: "npm".into(),
        kind: RepoKind::Remote,
        base_url: BASE.into(),
        public_url: PUBLIC.into(),
        settings: "{}".into(),
    }
}

fn request(path: &str, accept: Option<&str>) -> RequestInfo {
    RequestInfo {
        method: "GET".into(),
        path: path.into(),
        query: String::new(),
        headers: accept
            .map(|value| Header {
                name: "accept".into(),
                value: value.into(),
            })
            .into_iter()
            .collect(),
    }
}

fn document(value: &Value) -> Document {
    Document {
        content_type: "application/json; charset=utf-8".into(),
        body: serde_json::to_vec(value).unwrap(),
    }
}

fn no_quarantine() -> IndexOptions {
    IndexOptions {
        hide_published_after: None,
    }
}

fn version(name: &str, version: &str, tarball: &str) -> Value {
    json!({
        "name": name,
        "version": version,
        "description": "a demo",
        "main": "index.js",
        "scripts": {"test": "exit 1"},
        "dependencies": {"dep": "^1.0.0"},
        "_id": format!("{name}@{version}"),
        "_npmUser": {"name": "someone"},
        "dist": {
            "integrity": format!("sha512-{version}"),
            "shasum": "0123456789abcdef",
            "tarball": tarball,
        },
    })
}

/// `demo` with three releases and a prerelease published a month apart, one
/// of them stored on another host.
fn packument() -> Value {
    json!({
        "_id": "demo",
        "_rev": "7-abc",
        "name": "demo",
        "dist-tags": {"latest": "1.2.0", "next": "2.0.0-beta.1", "legacy": "1.0.0"},
        "versions": {
            "1.0.0": version("demo", "1.0.0", &format!("{BASE}/demo/-/demo-1.0.0.tgz")),
            "1.1.0": version("demo", "1.1.0", "https://cdn.example.net/demo-1.1.0.tgz"),
            "2.0.0-beta.1": version("demo", "2.0.0-beta.1", &format!("{BASE}/demo/-/demo-2.0.0-beta.1.tgz")),
            "1.2.0": version("demo", "1.2.0", &format!("{BASE}/demo/-/demo-1.2.0.tgz")),
        },
        "time": {
            "created": "2020-01-01T00:00:00.000Z",
            "1.0.0": "2020-01-01T00:00:00.000Z",
            "1.1.0": "2020-02-01T00:00:00.000Z",
            "2.0.0-beta.1": "2020-03-01T00:00:00.000Z",
            "1.2.0": "2020-04-01T00:00:00.000Z",
            "modified": "2020-04-01T00:00:00.000Z",
        },
        "readme": "# demo\n",
        "users": {},
    })
}

fn rewrite_json(path: &str, accept: Option<&str>, doc: &Value, hide: Option<u64>) -> Rewritten {
    let options = IndexOptions {
        hide_published_after: hide,
    };
    NpmPlugin::rewrite_index(repo(), request(path, accept), document(doc), options).unwrap()
}

fn body(rewritten: &Rewritten) -> Value {
    serde_json::from_slice(&rewritten.document.body).unwrap()
}

fn keys(value: &Value) -> Vec<&str> {
    value
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect()
}

const FEB_15_2020: u64 = 1_581_724_800;

#[test]
fn describe_names_the_package_type() {
    let info = NpmPlugin::describe();
    assert_eq!(info.name, "npm");
    assert_eq!(info.package_type, "npm");
    assert_eq!(info.version, env!("CARGO_PKG_VERSION"));
}

#[test]
fn package_documents_are_mutable_rewritten_and_keyed_by_name() {
    for (path, key) in [
        ("lodash", "lodash"),
        ("@demo/util", "@demo/util"),
        ("@demo%2futil", "@demo/util"),
        ("@demo%2Futil", "@demo/util"),
    ] {
        let c = NpmPlugin::classify(repo(), request(path, None)).unwrap();
        assert_eq!(c.mutability, Mutability::Mutable, "{path}");
        assert!(c.rewrite, "{path}");
        assert_eq!(c.cache_key.as_deref(), Some(key), "{path}");
        assert_eq!(c.access_name.as_deref(), Some(key), "{path}");
        assert_eq!(c.content_type.as_deref(), Some("application/json"));
    }
    let c = classify_request(&request("@demo/util/1.0.0", None));
    assert_eq!(c.mutability, Mutability::Mutable);
    assert!(c.rewrite);
    assert_eq!(c.cache_key.as_deref(), Some("@demo/util/1.0.0"));
}

#[test]
fn tarballs_are_immutable_files() {
    for (path, key, name) in [
        (
            "lodash/-/lodash-4.17.21.tgz",
            "lodash/-/lodash-4.17.21.tgz",
            "lodash",
        ),
        (
            "@demo/util/-/util-1.0.0.tgz",
            "@demo/util/-/util-1.0.0.tgz",
            "@demo/util",
        ),
        (
            "@demo%2futil/-/util-1.0.0.tgz",
            "@demo/util/-/util-1.0.0.tgz",
            "@demo/util",
        ),
    ] {
        let c = classify_request(&request(path, None));
        assert_eq!(c.mutability, Mutability::Immutable, "{path}");
        assert!(!c.rewrite, "{path}");
        assert_eq!(c.cache_key.as_deref(), Some(key), "{path}");
        assert_eq!(c.access_name.as_deref(), Some(name), "{path}");
        assert_eq!(c.content_type.as_deref(), Some("application/octet-stream"));
    }
}

#[test]
fn endpoints_are_mutable_pass_through_keyed_by_query() {
    for path in ["-/ping", "-/v1/search", "-/package/demo/dist-tags", ""] {
        let c = classify_request(&request(path, None));
        assert_eq!(c.mutability, Mutability::Mutable, "{path}");
        assert!(!c.rewrite, "{path}");
        assert_eq!(c.cache_key, None, "{path}");
        assert_eq!(c.access_name, None, "{path}");
    }
    let mut search = request("-/v1/search", None);
    search.query = "text=demo&size=20".into();
    let c = classify_request(&search);
    assert_eq!(
        c.cache_key.as_deref(),
        Some("-/v1/search?text=demo&size=20")
    );
}

#[test]
fn upstream_requests() {
    let up = |path: &str| NpmPlugin::prepare_upstream(repo(), request(path, None)).unwrap();
    let accept_json = vec![Header {
        name: "accept".into(),
        value: "application/json".into(),
    }];
    let scoped = up("@demo/util");
    assert_eq!(scoped.url, format!("{BASE}/@demo%2futil"));
    assert_eq!(scoped.headers, accept_json);
    assert_eq!(up("@demo%2futil").url, format!("{BASE}/@demo%2futil"));
    assert_eq!(up("lodash").url, format!("{BASE}/lodash"));
    assert_eq!(up("lodash/latest").url, format!("{BASE}/lodash/latest"));
    let tarball = up("@demo/util/-/util-1.0.0.tgz");
    assert_eq!(tarball.url, format!("{BASE}/@demo/util/-/util-1.0.0.tgz"));
    assert!(tarball.headers.is_empty());

    let mut search = request("-/v1/search", None);
    search.query = "text=a%20b".into();
    let search = NpmPlugin::prepare_upstream(repo(), search).unwrap();
    assert_eq!(search.url, format!("{BASE}/-/v1/search?text=a%20b"));
    assert!(search.headers.is_empty());

    let mut slashed = repo();
    slashed.base_url = format!("{BASE}/registry/");
    let url = upstream_request(&slashed, &request("@demo/util", None)).url;
    assert_eq!(url, format!("{BASE}/registry/@demo%2futil"));
}

#[test]
fn accept_header_picks_the_form() {
    let form = |accept: Option<&str>| preferred_form(&request("x", accept).headers);
    assert_eq!(form(None), Form::Full);
    assert_eq!(form(Some("application/json")), Form::Full);
    assert_eq!(form(Some("*/*")), Form::Full);
    assert_eq!(form(Some(ABBREVIATED_TYPE)), Form::Abbreviated);
    assert_eq!(
        form(Some(
            "application/vnd.npm.install-v1+json; q=1.0, application/json; q=0.8, */*"
        )),
        Form::Abbreviated
    );
    assert_eq!(
        form(Some(
            "application/json, application/vnd.npm.install-v1+json;q=0.5"
        )),
        Form::Full
    );
    assert_eq!(
        form(Some("Application/Vnd.Npm.Install-V1+JSON;q=0")),
        Form::Full
    );
}

#[test]
fn full_form_rewrites_tarballs_under_the_base_url_only() {
    let rewritten = rewrite_json("demo", Some("application/json"), &packument(), None);
    assert_eq!(rewritten.document.content_type, "application/json");
    let doc = body(&rewritten);
    assert_eq!(
        doc["versions"]["1.0.0"]["dist"]["tarball"],
        format!("{PUBLIC}/demo/-/demo-1.0.0.tgz")
    );
    assert_eq!(
        doc["versions"]["1.1.0"]["dist"]["tarball"],
        "https://cdn.example.net/demo-1.1.0.tgz"
    );
    assert_eq!(
        doc["versions"]["1.0.0"]["dist"]["integrity"],
        "sha512-1.0.0"
    );
    assert_eq!(
        doc["versions"]["1.0.0"]["dist"]["shasum"],
        "0123456789abcdef"
    );
    // Everything else is as it was, in the same order.
    let mut want = packument();
    want["versions"]["1.0.0"]["dist"]["tarball"] = json!(format!("{PUBLIC}/demo/-/demo-1.0.0.tgz"));
    want["versions"]["2.0.0-beta.1"]["dist"]["tarball"] =
        json!(format!("{PUBLIC}/demo/-/demo-2.0.0-beta.1.tgz"));
    want["versions"]["1.2.0"]["dist"]["tarball"] = json!(format!("{PUBLIC}/demo/-/demo-1.2.0.tgz"));
    assert_eq!(doc, want);
    assert_eq!(keys(&doc), keys(&want));
    assert_eq!(
        keys(&doc["versions"]["1.0.0"]),
        keys(&want["versions"]["1.0.0"])
    );
    assert_eq!(
        keys(&doc["versions"]["1.0.0"]["dist"]),
        ["integrity", "shasum", "tarball"]
    );
}

#[test]
fn rewriting_keeps_whitespace_inside_untouched_values_and_handles_scoped_urls() {
    let text = r#"{ "name" : "@demo/util",
      "versions" : { "1.0.0" : { "name": "@demo/util", "version": "1.0.0",
        "readme": "line\nbreak \u00e9", "engines" : { "node" : ">=8" },
        "dist" : { "tarball" : "https://NPM.example.org:443/@demo%2futil/-/util-1.0.0.tgz?x=1" } } } }"#;
    let doc = Document {
        content_type: "application/json".into(),
        body: text.as_bytes().to_vec(),
    };
    let rewritten = rewrite(
        &repo(),
        &request("@demo/util", None),
        &doc,
        &no_quarantine(),
    )
    .unwrap();
    let out = String::from_utf8(rewritten.document.body).unwrap();
    assert!(out.contains(r#""readme":"line\nbreak \u00e9""#), "{out}");
    assert!(out.contains(r#""engines":{ "node" : ">=8" }"#), "{out}");
    let doc: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        doc["versions"]["1.0.0"]["dist"]["tarball"],
        format!("{PUBLIC}/@demo%2futil/-/util-1.0.0.tgz?x=1")
    );
    // No time map: nothing is published.
    assert!(rewritten.published.is_empty());
}

#[test]
fn abbreviated_form_keeps_the_install_fields() {
    let mut doc = packument();
    doc["versions"]["1.0.0"]["scripts"] = json!({"postinstall": "node setup.js"});
    doc["versions"]["1.0.0"]["os"] = json!(["linux"]);
    doc["versions"]["1.0.0"]["peerDependenciesMeta"] = json!({"p": {"optional": true}});
    doc["versions"]["1.1.0"]["deprecated"] = json!("use 1.2");
    doc["versions"]["1.1.0"]["_hasShrinkwrap"] = json!(false);
    let accept = "application/vnd.npm.install-v1+json; q=1.0, application/json; q=0.8, */*";
    let rewritten = rewrite_json("demo", Some(accept), &doc, None);
    assert_eq!(rewritten.document.content_type, ABBREVIATED_TYPE);
    let out = body(&rewritten);
    assert_eq!(keys(&out), ["name", "modified", "dist-tags", "versions"]);
    assert_eq!(out["modified"], "2020-04-01T00:00:00.000Z");
    assert_eq!(out["dist-tags"], doc["dist-tags"]);
    assert_eq!(
        out["versions"]["1.0.0"],
        json!({
            "name": "demo",
            "version": "1.0.0",
            "dependencies": {"dep": "^1.0.0"},
            "dist": {
                "integrity": "sha512-1.0.0",
                "shasum": "0123456789abcdef",
                "tarball": format!("{PUBLIC}/demo/-/demo-1.0.0.tgz"),
            },
            "os": ["linux"],
            "peerDependenciesMeta": {"p": {"optional": true}},
            "hasInstallScript": true,
        })
    );
    assert_eq!(out["versions"]["1.1.0"]["deprecated"], "use 1.2");
    assert_eq!(out["versions"]["1.1.0"]["_hasShrinkwrap"], false);
    assert_eq!(out["versions"]["1.1.0"].get("hasInstallScript"), None);
    assert_eq!(out["versions"]["1.1.0"].get("scripts"), None);
    assert_eq!(
        keys(&out["versions"]),
        ["1.0.0", "1.1.0", "2.0.0-beta.1", "1.2.0"]
    );
}

#[test]
fn publish_times_are_reported_for_tarballs_served_through_the_proxy() {
    let rewritten = rewrite_json("demo", None, &packument(), None);
    let published: Vec<(&str, u64)> = rewritten
        .published
        .iter()
        .map(|p| (p.path.as_str(), p.published_at))
        .collect();
    assert_eq!(
        published,
        [
            ("demo/-/demo-1.0.0.tgz", 1_577_836_800),
            ("demo/-/demo-2.0.0-beta.1.tgz", 1_583_020_800),
            ("demo/-/demo-1.2.0.tgz", 1_585_699_200),
        ]
    );
}

#[test]
fn quarantine_hides_new_versions_and_repairs_dist_tags() {
    let rewritten = rewrite_json("demo", None, &packument(), Some(FEB_15_2020));
    let doc = body(&rewritten);
    assert_eq!(keys(&doc["versions"]), ["1.0.0", "1.1.0"]);
    assert_eq!(
        doc["dist-tags"],
        json!({"latest": "1.1.0", "next": "1.1.0", "legacy": "1.0.0"})
    );
    assert_eq!(
        keys(&doc["time"]),
        ["created", "1.0.0", "1.1.0", "modified"]
    );
    // Hidden versions are still reported, so their tarballs can be refused.
    assert_eq!(rewritten.published.len(), 3);

    let abbreviated = rewrite_json(
        "demo",
        Some(ABBREVIATED_TYPE),
        &packument(),
        Some(FEB_15_2020),
    );
    let doc = body(&abbreviated);
    assert_eq!(keys(&doc["versions"]), ["1.0.0", "1.1.0"]);
    assert_eq!(doc["dist-tags"]["latest"], "1.1.0");
}

#[test]
fn quarantine_drops_tags_with_no_older_release() {
    let mut doc = packument();
    doc["dist-tags"]["old"] = json!("0.9.0");
    doc["versions"]["0.9.0-rc.1"] = version("demo", "0.9.0-rc.1", "x");
    doc["time"]["0.9.0-rc.1"] = json!("2019-01-01T00:00:00Z");
    // Everything but the prerelease is hidden.
    let rewritten = rewrite_json("demo", None, &doc, Some(1_546_300_800 + 60));
    let out = body(&rewritten);
    assert_eq!(keys(&out["versions"]), ["0.9.0-rc.1"]);
    // A tag at a version that is not hidden (even a missing one) stays.
    assert_eq!(out["dist-tags"], json!({"old": "0.9.0"}));

    // A tag at a hidden release picks the highest release below it, not a
    // newer line that happens to be older in time.
    let mut doc = packument();
    doc["versions"]["3.0.0"] = version("demo", "3.0.0", "x");
    doc["time"]["3.0.0"] = json!("2019-06-01T00:00:00Z");
    let out = body(&rewrite_json("demo", None, &doc, Some(FEB_15_2020)));
    assert_eq!(out["dist-tags"]["latest"], "1.1.0");
}

#[test]
fn version_documents_are_rewritten() {
    let doc = version("demo", "1.0.0", &format!("{BASE}/demo/-/demo-1.0.0.tgz"));
    let rewritten = rewrite_json("demo/1.0.0", Some(ABBREVIATED_TYPE), &doc, None);
    assert_eq!(rewritten.document.content_type, "application/json");
    let out = body(&rewritten);
    assert_eq!(
        out["dist"]["tarball"],
        format!("{PUBLIC}/demo/-/demo-1.0.0.tgz")
    );
    assert_eq!(out["_npmUser"], doc["_npmUser"]);
}

#[test]
fn malformed_documents_are_invalid() {
    for text in ["", "not json", "[1,2]", r#"{"versions": 3}"#] {
        let doc = Document {
            content_type: "application/json".into(),
            body: text.as_bytes().to_vec(),
        };
        let result = NpmPlugin::rewrite_index(repo(), request("demo", None), doc, no_quarantine());
        assert!(
            matches!(result, Err(PluginError::InvalidDocument(_))),
            "{text:?}: {result:?}"
        );
    }
    let tarball = NpmPlugin::rewrite_index(
        repo(),
        request("demo/-/demo-1.0.0.tgz", None),
        document(&json!({})),
        no_quarantine(),
    );
    assert!(matches!(tarball, Err(PluginError::InvalidRequest(_))));
}

#[test]
fn merge_unions_versions_time_and_tags_with_the_first_member_winning() {
    let first = json!({
        "name": "demo",
        "description": "first",
        "dist-tags": {"latest": "1.1.0"},
        "versions": {
            "1.0.0": version("demo", "1.0.0", "a"),
            "1.1.0": version("demo", "1.1.0", "a"),
        },
        "time": {"1.0.0": "2020-01-01T00:00:00Z", "1.1.0": "2020-02-01T00:00:00Z"},
    });
    let second = json!({
        "name": "demo",
        "description": "second",
        "homepage": "https://demo.example.org",
        "dist-tags": {"latest": "2.0.0", "beta": "2.0.0"},
        "versions": {
            "1.1.0": version("demo", "1.1.0", "b"),
            "2.0.0": version("demo", "2.0.0", "b"),
        },
        "time": {"1.1.0": "2021-01-01T00:00:00Z", "2.0.0": "2021-02-01T00:00:00Z"},
    });
    let empty = Document {
        content_type: "application/json".into(),
        body: Vec::new(),
    };
    let missing = document(&json!({"error": "not found"}));
    let mut first_doc = document(&first);
    first_doc.content_type = ABBREVIATED_TYPE.into();
    let merged = NpmPlugin::merge_indexes(
        repo(),
        request("demo", None),
        vec![empty, missing, first_doc, document(&second)],
    )
    .unwrap();
    assert_eq!(merged.content_type, ABBREVIATED_TYPE);
    let out: Value = serde_json::from_slice(&merged.body).unwrap();
    assert_eq!(
        keys(&out),
        ["name", "description", "dist-tags", "versions", "time"]
    );
    assert_eq!(out["description"], "first");
    assert_eq!(out.get("homepage"), None);
    assert_eq!(
        out["dist-tags"],
        json!({"latest": "1.1.0", "beta": "2.0.0"})
    );
    assert_eq!(keys(&out["versions"]), ["1.0.0", "1.1.0", "2.0.0"]);
    assert_eq!(out["versions"]["1.1.0"]["dist"]["tarball"], "a");
    assert_eq!(out["versions"]["2.0.0"]["dist"]["tarball"], "b");
    assert_eq!(
        out["time"],
        json!({
            "1.0.0": "2020-01-01T00:00:00Z",
            "1.1.0": "2020-02-01T00:00:00Z",
            "2.0.0": "2021-02-01T00:00:00Z",
        })
    );
}

#[test]
fn merge_adds_fields_the_first_member_lacks_and_reports_no_package() {
    let first = json!({"name": "demo", "versions": {"1.0.0": version("demo", "1.0.0", "a")}});
    let second = json!({
        "name": "demo",
        "dist-tags": {"latest": "1.0.0"},
        "versions": {},
        "time": {"1.0.0": "2020-01-01T00:00:00Z"},
    });
    let merged = merge(
        &request("demo", None),
        vec![document(&first), document(&second)],
    )
    .unwrap();
    let out: Value = serde_json::from_slice(&merged.body).unwrap();
    assert_eq!(keys(&out), ["name", "versions", "dist-tags", "time"]);

    let none = merge(
        &request("demo", None),
        vec![document(&json!({"error": "x"}))],
    );
    assert!(matches!(none, Err(PluginError::NotFound(_))));
    let bad = merge(
        &request("demo", None),
        vec![Document {
            content_type: "application/json".into(),
            body: b"<html>".to_vec(),
        }],
    );
    assert!(matches!(bad, Err(PluginError::InvalidDocument(_))));
}

#[test]
fn merge_of_version_documents_takes_the_first_member_that_has_one() {
    let empty = Document {
        content_type: "application/json".into(),
        body: b" ".to_vec(),
    };
    let one = document(&json!({"version": "1.0.0"}));
    let two = document(&json!({"version": "2.0.0"}));
    let merged = merge(&request("demo/latest", None), vec![empty, one.clone(), two]).unwrap();
    assert_eq!(merged, one);
    let tarball = merge(&request("demo/-/demo-1.0.0.tgz", None), vec![one]);
    assert!(matches!(tarball, Err(PluginError::InvalidRequest(_))));
}
