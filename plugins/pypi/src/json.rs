//! The PEP 691 JSON form of simple pages (with the PEP 700 additions).

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};
use url::Url;

use crate::model::{
    check_api_version, normalize, resolve, CoreMetadata, DistFile, ProjectPage, RootPage,
};

/// The file keys this plugin reads; any other key is kept as it is.
const KNOWN_FILE_KEYS: &[&str] = &[
    "filename",
    "url",
    "hashes",
    "requires-python",
    "core-metadata",
    "dist-info-metadata",
    "data-dist-info-metadata",
    "gpg-sig",
    "yanked",
    "size",
    "upload-time",
    "provenance",
];

fn object(body: &[u8]) -> Result<Map<String, Value>, String> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| format!("the JSON page does not parse: {e}"))?;
    let Value::Object(map) = value else {
        return Err("the JSON page is not an object".into());
    };
    let version = map
        .get("meta")
        .and_then(|meta| meta.get("api-version"))
        .and_then(Value::as_str);
    check_api_version(version)?;
    Ok(map)
}

/// Reads a project page; relative file URLs are resolved against
/// `page_url`. `name` (normalised) is used when the page names none.
pub fn parse_project(body: &[u8], page_url: &Url, name: &str) -> Result<ProjectPage, String> {
    let map = object(body)?;
    let files = map
        .get("files")
        .and_then(Value::as_array)
        .ok_or("the JSON page has no \"files\" list")?
        .iter()
        .map(|file| parse_file(file, page_url))
        .collect::<Result<Vec<_>, _>>()?;
    let versions = map.get("versions").and_then(Value::as_array).map(|list| {
        list.iter()
            .filter_map(Value::as_str)
            .map(String::from)
            .collect()
    });
    Ok(ProjectPage {
        name: map
            .get("name")
            .and_then(Value::as_str)
            .map_or_else(|| name.to_string(), normalize),
        files,
        versions,
    })
}

fn parse_file(value: &Value, page_url: &Url) -> Result<DistFile, String> {
    let Value::Object(map) = value else {
        return Err("a file of the JSON page is not an object".into());
    };
    let text = |key: &str| map.get(key).and_then(Value::as_str).map(String::from);
    let url = text("url").ok_or("a file of the JSON page has no \"url\"")?;
    let filename = text("filename").ok_or("a file of the JSON page has no \"filename\"")?;
    let core_metadata = [
        "core-metadata",
        "dist-info-metadata",
        "data-dist-info-metadata",
    ]
    .iter()
    .find_map(|key| map.get(*key))
    .and_then(core_metadata);
    let yanked = match map.get("yanked") {
        Some(Value::Bool(true)) => Some(String::new()),
        Some(Value::String(reason)) => Some(reason.clone()),
        _ => None,
    };
    Ok(DistFile {
        filename,
        url: resolve(page_url, &url),
        hashes: map.get("hashes").map(string_map).unwrap_or_default(),
        requires_python: text("requires-python").filter(|v| !v.trim().is_empty()),
        core_metadata,
        gpg_sig: map.get("gpg-sig").and_then(Value::as_bool),
        yanked,
        size: map.get("size").and_then(Value::as_u64),
        upload_time: text("upload-time"),
        provenance: text("provenance").map(|v| resolve(page_url, &v)),
        extra: map
            .iter()
            .filter(|(key, _)| !KNOWN_FILE_KEYS.contains(&key.as_str()))
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect(),
    })
}

fn string_map(value: &Value) -> BTreeMap<String, String> {
    value
        .as_object()
        .map(|map| {
            map.iter()
                .filter_map(|(k, v)| Some((k.to_ascii_lowercase(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

fn core_metadata(value: &Value) -> Option<CoreMetadata> {
    match value {
        Value::Bool(true) => Some(CoreMetadata::Available),
        Value::Object(_) => Some(CoreMetadata::Hashes(string_map(value))),
        _ => None,
    }
}

/// Reads the root page's project names.
pub fn parse_root(body: &[u8]) -> Result<RootPage, String> {
    let map = object(body)?;
    let projects = map
        .get("projects")
        .and_then(Value::as_array)
        .ok_or("the JSON page has no \"projects\" list")?
        .iter()
        .filter_map(|project| project.get("name").and_then(Value::as_str))
        .map(String::from)
        .collect();
    Ok(RootPage { projects })
}

/// Writes a project page as PEP 691 JSON: API version 1.1 (with
/// `versions`) when every file's size is known, else 1.0.
pub fn render_project(page: &ProjectPage) -> Vec<u8> {
    let version = page.api_version();
    let files: Vec<Value> = page.files.iter().map(render_file).collect();
    let mut out = json!({
        "meta": {"api-version": version},
        "name": page.name,
        "files": files,
    });
    if let (Some(versions), "1.1") = (&page.versions, version) {
        out["versions"] = json!(versions);
    }
    serde_json::to_vec(&out).unwrap_or_default()
}

fn render_file(file: &DistFile) -> Value {
    let mut map = file.extra.clone();
    map.insert("filename".into(), json!(file.filename));
    map.insert("url".into(), json!(file.url));
    map.insert("hashes".into(), json!(file.hashes));
    if let Some(requires) = &file.requires_python {
        map.insert("requires-python".into(), json!(requires));
    }
    if let Some(metadata) = &file.core_metadata {
        let value = match metadata {
            CoreMetadata::Available => json!(true),
            CoreMetadata::Hashes(hashes) => json!(hashes),
        };
        map.insert("core-metadata".into(), value.clone());
        map.insert("dist-info-metadata".into(), value);
    }
    if let Some(gpg) = file.gpg_sig {
        map.insert("gpg-sig".into(), json!(gpg));
    }
    if let Some(reason) = &file.yanked {
        let value = if reason.is_empty() {
            json!(true)
        } else {
            json!(reason)
        };
        map.insert("yanked".into(), value);
    }
    if let Some(size) = file.size {
        map.insert("size".into(), json!(size));
    }
    if let Some(time) = &file.upload_time {
        map.insert("upload-time".into(), json!(time));
    }
    if let Some(provenance) = &file.provenance {
        map.insert("provenance".into(), json!(provenance));
    }
    Value::Object(map)
}

/// Writes the root page as PEP 691 JSON.
pub fn render_root(page: &RootPage) -> Vec<u8> {
    let projects: Vec<Value> = page
        .projects
        .iter()
        .map(|name| json!({"name": name}))
        .collect();
    serde_json::to_vec(&json!({
        "meta": {"api-version": "1.0"},
        "projects": projects,
    }))
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page_url() -> Url {
        Url::parse("https://index.example.org/simple/demo-lib/").unwrap()
    }

    const PAGE: &str = r#"{
        "meta": {"_last-serial": 7, "api-version": "1.1"},
        "name": "demo-lib",
        "files": [
            {"filename": "demo_lib-1.0.tar.gz",
             "url": "https://files.example.org/packages/ab/demo_lib-1.0.tar.gz",
             "hashes": {"sha256": "aa", "blake2b_256": "bb"},
             "requires-python": ">=3.8",
             "core-metadata": {"sha256": "cc"},
             "data-dist-info-metadata": {"sha256": "cc"},
             "gpg-sig": false,
             "yanked": "broken",
             "size": 1234,
             "upload-time": "2024-01-01T00:00:00.000000Z",
             "provenance": null,
             "x-custom": [1]},
            {"filename": "demo_lib-0.9-py3-none-any.whl",
             "url": "../../packages/demo_lib-0.9-py3-none-any.whl",
             "hashes": {},
             "yanked": true,
             "core-metadata": true,
             "size": 10}
        ],
        "versions": ["0.9", "1.0"]
    }"#;

    #[test]
    fn reads_every_key() {
        let page = parse_project(PAGE.as_bytes(), &page_url(), "fallback").unwrap();
        assert_eq!(page.name, "demo-lib");
        assert_eq!(page.versions, Some(vec!["0.9".into(), "1.0".into()]));
        let first = &page.files[0];
        assert_eq!(first.filename, "demo_lib-1.0.tar.gz");
        assert_eq!(first.hashes["sha256"], "aa");
        assert_eq!(first.hashes["blake2b_256"], "bb");
        assert_eq!(first.requires_python.as_deref(), Some(">=3.8"));
        assert_eq!(
            first.core_metadata,
            Some(CoreMetadata::Hashes(BTreeMap::from([(
                "sha256".into(),
                "cc".into()
            )])))
        );
        assert_eq!(first.gpg_sig, Some(false));
        assert_eq!(first.yanked.as_deref(), Some("broken"));
        assert_eq!(first.size, Some(1234));
        assert_eq!(
            first.upload_time.as_deref(),
            Some("2024-01-01T00:00:00.000000Z")
        );
        assert_eq!(first.provenance, None);
        assert_eq!(first.extra.get("x-custom"), Some(&json!([1])));
        let second = &page.files[1];
        assert_eq!(
            second.url,
            "https://index.example.org/packages/demo_lib-0.9-py3-none-any.whl"
        );
        assert_eq!(second.yanked.as_deref(), Some(""));
        assert_eq!(second.core_metadata, Some(CoreMetadata::Available));
        assert_eq!(page.api_version(), "1.1");
    }

    #[test]
    fn writes_what_it_reads() {
        let page = parse_project(PAGE.as_bytes(), &page_url(), "x").unwrap();
        let out: Value = serde_json::from_slice(&render_project(&page)).unwrap();
        assert_eq!(out["meta"]["api-version"], "1.1");
        assert_eq!(out["versions"], json!(["0.9", "1.0"]));
        let first = &out["files"][0];
        assert_eq!(first["yanked"], "broken");
        assert_eq!(first["core-metadata"], json!({"sha256": "cc"}));
        assert_eq!(first["dist-info-metadata"], json!({"sha256": "cc"}));
        assert_eq!(first["upload-time"], "2024-01-01T00:00:00.000000Z");
        assert_eq!(first["size"], 1234);
        assert_eq!(first["x-custom"], json!([1]));
        assert_eq!(out["files"][1]["yanked"], true);
        assert_eq!(out["files"][1]["hashes"], json!({}));
        let again = parse_project(&render_project(&page), &page_url(), "x").unwrap();
        assert_eq!(again, page);
    }

    #[test]
    fn api_1_0_without_sizes_drops_versions() {
        let mut page = parse_project(PAGE.as_bytes(), &page_url(), "x").unwrap();
        page.files[1].size = None;
        let out: Value = serde_json::from_slice(&render_project(&page)).unwrap();
        assert_eq!(out["meta"]["api-version"], "1.0");
        assert!(out.get("versions").is_none());
    }

    #[test]
    fn refuses_broken_pages() {
        for body in [
            "not json",
            "[]",
            r#"{"meta": {"api-version": "2.0"}, "files": []}"#,
            r#"{"meta": {"api-version": "1.0"}}"#,
            r#"{"files": [{"url": "x"}]}"#,
            r#"{"files": [{"filename": "x"}]}"#,
        ] {
            assert!(
                parse_project(body.as_bytes(), &page_url(), "x").is_err(),
                "{body}"
            );
        }
        assert!(parse_root(br#"{"meta": {"api-version": "1.0"}}"#).is_err());
    }

    #[test]
    fn reads_and_writes_the_root_page() {
        let page = parse_root(
            br#"{"meta": {"api-version": "1.0"}, "projects": [{"name": "Demo_Lib"}, {"name": "b"}]}"#,
        )
        .unwrap();
        assert_eq!(page.projects, ["Demo_Lib", "b"]);
        let out: Value = serde_json::from_slice(&render_root(&page)).unwrap();
        assert_eq!(
            out,
            json!({"meta": {"api-version": "1.0"}, "projects": [{"name": "Demo_Lib"}, {"name": "b"}]})
        );
    }
}
