//! Manifest validation: what a pushed manifest must be and what it refers to.

use axum::http::StatusCode;
use serde_json::Value;

use super::OciDigest;
use crate::error::AppError;

/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker image manifest, schema 2.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list.
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// The largest manifest accepted, as the spec suggests.
pub const MAX_MANIFEST: usize = 4 << 20;

/// What a manifest says that the registry acts on.
#[derive(Debug, PartialEq, Eq)]
pub struct Parsed {
    /// Its media type.
    pub media_type: String,
    /// Blobs it needs (config and layers) for an image manifest.
    pub blobs: Vec<OciDigest>,
    /// Manifests it needs, for an index.
    pub manifests: Vec<OciDigest>,
    /// The manifest it refers to (`subject`).
    pub subject: Option<OciDigest>,
    /// `artifactType`, else the config's media type (image manifests).
    pub artifact_type: Option<String>,
    /// `annotations` as JSON text.
    pub annotations: Option<String>,
}

fn invalid(message: impl Into<String>) -> AppError {
    AppError::new(StatusCode::BAD_REQUEST, "MANIFEST_INVALID", message)
}

fn descriptor_digest(value: &Value, what: &str) -> Result<OciDigest, AppError> {
    let text = value
        .get("digest")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid(format!("{what} has no digest")))?;
    OciDigest::parse(text).ok_or_else(|| invalid(format!("{what} has a bad digest {text:?}")))
}

/// Checks a pushed manifest's shape. `content_type` is the request's
/// Content-Type, which must agree with the manifest's `mediaType` when both
/// are given.
pub fn parse(body: &[u8], content_type: Option<&str>) -> Result<Parsed, AppError> {
    let json: Value = serde_json::from_slice(body)
        .map_err(|e| invalid(format!("the manifest is not JSON: {e}")))?;
    if !json.is_object() {
        return Err(invalid("the manifest is not a JSON object"));
    }
    let declared = json.get("mediaType").and_then(Value::as_str);
    let header = content_type
        .map(|t| t.split(';').next().unwrap_or("").trim())
        .filter(|t| !t.is_empty() && *t != "application/json" && *t != "application/octet-stream");
    let media_type = match (header, declared) {
        (Some(h), Some(d)) if h != d => {
            return Err(invalid(format!(
                "Content-Type {h} does not match the manifest's mediaType {d}"
            )))
        }
        (Some(t), _) | (None, Some(t)) => t.to_string(),
        (None, None) if json.get("manifests").is_some() => OCI_INDEX.to_string(),
        (None, None) if json.get("config").is_some() => OCI_MANIFEST.to_string(),
        (None, None) => return Err(invalid("the manifest has no media type")),
    };
    if json.get("schemaVersion").and_then(Value::as_i64) != Some(2) {
        return Err(invalid("only schemaVersion 2 manifests are accepted"));
    }
    let mut parsed = Parsed {
        media_type: media_type.clone(),
        blobs: Vec::new(),
        manifests: Vec::new(),
        subject: json
            .get("subject")
            .map(|s| descriptor_digest(s, "subject"))
            .transpose()?,
        artifact_type: json
            .get("artifactType")
            .and_then(Value::as_str)
            .map(str::to_string),
        annotations: json
            .get("annotations")
            .filter(|a| a.is_object())
            .map(Value::to_string),
    };
    match media_type.as_str() {
        OCI_MANIFEST | DOCKER_MANIFEST => {
            let config = json
                .get("config")
                .ok_or_else(|| invalid("an image manifest needs a config"))?;
            parsed.blobs.push(descriptor_digest(config, "config")?);
            if parsed.artifact_type.is_none() {
                parsed.artifact_type = config
                    .get("mediaType")
                    .and_then(Value::as_str)
                    .map(str::to_string);
            }
            let layers = json
                .get("layers")
                .and_then(Value::as_array)
                .ok_or_else(|| invalid("an image manifest needs a layers list"))?;
            for (i, layer) in layers.iter().enumerate() {
                // Foreign layers live elsewhere (`urls`): not pushed here.
                if layer.get("urls").is_some_and(|u| u.is_array()) {
                    continue;
                }
                parsed
                    .blobs
                    .push(descriptor_digest(layer, &format!("layer {i}"))?);
            }
        }
        OCI_INDEX | DOCKER_LIST => {
            let manifests = json
                .get("manifests")
                .and_then(Value::as_array)
                .ok_or_else(|| invalid("an index needs a manifests list"))?;
            for (i, child) in manifests.iter().enumerate() {
                parsed
                    .manifests
                    .push(descriptor_digest(child, &format!("manifest {i}"))?);
            }
        }
        other => {
            return Err(invalid(format!(
                "unsupported manifest media type {other}; expected an OCI or docker schema 2 \
                 manifest or index"
            )))
        }
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    #[test]
    fn image_manifest() {
        let body = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest('a'), "size": 1},
            "layers": [
                {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest('b'), "size": 1},
                {"mediaType": "foreign", "digest": digest('c'), "size": 1, "urls": ["https://files.example.org/x"]}
            ],
            "subject": {"mediaType": OCI_MANIFEST, "digest": digest('d'), "size": 1}
        })
        .to_string();
        let parsed = parse(body.as_bytes(), Some(OCI_MANIFEST)).unwrap();
        assert_eq!(parsed.blobs.len(), 2);
        assert_eq!(parsed.subject.unwrap().to_string(), digest('d'));
        assert_eq!(
            parsed.artifact_type.as_deref(),
            Some("application/vnd.oci.image.config.v1+json")
        );
        let err = parse(body.as_bytes(), Some(DOCKER_MANIFEST)).unwrap_err();
        assert_eq!(err.code, "MANIFEST_INVALID");
    }

    #[test]
    fn index_and_errors() {
        let body = serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{"mediaType": OCI_MANIFEST, "digest": digest('e'), "size": 1}]
        })
        .to_string();
        let parsed = parse(body.as_bytes(), Some(OCI_INDEX)).unwrap();
        assert_eq!(parsed.manifests.len(), 1);
        assert_eq!(parse(body.as_bytes(), None).unwrap().media_type, OCI_INDEX);
        for bad in [
            "not json",
            "[]",
            r#"{"schemaVersion": 1, "mediaType": "application/vnd.oci.image.manifest.v1+json"}"#,
            r#"{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", "layers": []}"#,
            r#"{"schemaVersion": 2, "mediaType": "text/plain"}"#,
        ] {
            assert_eq!(
                parse(bad.as_bytes(), None).unwrap_err().code,
                "MANIFEST_INVALID",
                "{bad}"
            );
        }
    }
}
