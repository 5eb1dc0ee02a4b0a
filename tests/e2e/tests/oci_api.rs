//! The OCI distribution API (spec v1.1) over raw HTTP: pushes (monolithic,
//! chunked, mounted), manifests and indexes, discovery (tags, catalog,
//! referrers), deletion, error bodies, upload sessions that outlive a
//! restart, authentication, docker remotes pulling through a second server,
//! and a 1 GiB blob pushed and pulled in bounded memory.
//!
//! Every test holds `EXCLUSIVE` for reading; the memory test holds it for
//! writing, so it runs alone in this process and the peak it measures is
//! its own.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use artifactapi_e2e::{client, component, header, plugins_dir, Server};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::Router;
use bytes::Bytes;
use futures::StreamExt;
use reqwest::{Method, RequestBuilder, Response};
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256, Sha512};

const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const INDEX: &str = "application/vnd.oci.image.index.v1+json";
const CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
const EMPTY: &str = "application/vnd.oci.empty.v1+json";
const OCTETS: &str = "application/octet-stream";

/// Shared by every test, taken alone by the memory test.
static EXCLUSIVE: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// Two local docker repositories and a generic one.
const LOCAL: &str = "remotes:
  docker-local:
    type: local
    package: docker
  other-local:
    type: local
    package: docker
  uploads:
    type: local
    package: generic
";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(data)))
}

fn sha512(data: &[u8]) -> String {
    format!("sha512:{}", hex(&Sha512::digest(data)))
}

/// `len` bytes that differ from those of any other `seed`.
fn sample(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 8) as u8)
        .collect()
}

fn descriptor(media_type: &str, data: &[u8]) -> Value {
    json!({"mediaType": media_type, "digest": sha256(data), "size": data.len()})
}

/// An OCI image manifest with this config and these layers.
fn image_manifest(config: &[u8], layers: &[&[u8]]) -> Vec<u8> {
    let layers: Vec<Value> = layers.iter().map(|l| descriptor(LAYER, l)).collect();
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": descriptor(CONFIG, config),
        "layers": layers,
    }))
    .unwrap()
}

/// Sends a request and checks the API version header every `/v2`
/// response carries.
async fn send(request: RequestBuilder) -> Response {
    let response = request.send().await.unwrap();
    assert_eq!(
        header(response.headers(), "docker-distribution-api-version"),
        "registry/2.0",
        "{} {} lacks the API version header",
        response.status(),
        response.url()
    );
    response
}

/// Checks the status and returns the headers and body.
async fn expect(response: Response, status: u16) -> (HeaderMap, Bytes) {
    let got = response.status().as_u16();
    let url = response.url().to_string();
    let headers = response.headers().clone();
    let body = response.bytes().await.unwrap();
    assert_eq!(got, status, "{url}: {}", String::from_utf8_lossy(&body));
    (headers, body)
}

/// The error codes of an OCI error body, checking its shape.
fn error_codes(url: &str, body: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(body);
    let value: Value = serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("{url}: the error body is not JSON ({e}): {text}"));
    let errors = value["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("{url}: no `errors` array: {text}"));
    assert!(!errors.is_empty(), "{url}: empty `errors`: {text}");
    errors
        .iter()
        .map(|e| {
            assert!(
                e["message"].is_string(),
                "{url}: an error without a message: {text}"
            );
            e["code"].as_str().unwrap_or_default().to_string()
        })
        .collect()
}

/// Checks the status and that the OCI error body holds `code`; returns the
/// headers.
async fn expect_error(response: Response, status: u16, code: &str) -> HeaderMap {
    let url = response.url().to_string();
    let (headers, body) = expect(response, status).await;
    let codes = error_codes(&url, &body);
    assert!(
        codes.iter().any(|c| c == code),
        "{url}: expected {code}, got {codes:?}"
    );
    headers
}

/// The target of a `Link: <...>; rel="next"` header.
fn next_link(headers: &HeaderMap) -> Option<String> {
    let link = header(headers, "link");
    if link.is_empty() {
        return None;
    }
    assert!(link.contains("rel=\"next\""), "unexpected Link: {link}");
    let start = link.find('<').unwrap() + 1;
    let end = link.find('>').unwrap();
    Some(link[start..end].to_string())
}

/// `url` with `query` appended.
fn with_query(url: &str, query: &str) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}{query}")
}

#[derive(Clone)]
enum Credentials {
    Anonymous,
    Basic(String, String),
    Bearer(String),
}

/// A registry client speaking raw HTTP to one server.
#[derive(Clone)]
struct Registry {
    base: String,
    http: reqwest::Client,
    credentials: Credentials,
}

impl Registry {
    fn of(server: &Server) -> Registry {
        Registry::at_url(&server.url(""))
    }

    fn at_url(base: &str) -> Registry {
        Registry {
            base: base.to_string(),
            http: client(),
            credentials: Credentials::Anonymous,
        }
    }

    fn with(&self, credentials: Credentials) -> Registry {
        Registry {
            credentials,
            ..self.clone()
        }
    }

    /// A path, or a `Location` (relative or absolute) rebased on this
    /// server.
    fn url(&self, target: &str) -> String {
        let path = match target.split_once("://") {
            Some((_, rest)) => rest.find('/').map_or("/", |i| &rest[i..]),
            None => target,
        };
        format!("{}{path}", self.base)
    }

    fn req(&self, method: Method, target: &str) -> RequestBuilder {
        let request = self.http.request(method, self.url(target));
        match &self.credentials {
            Credentials::Anonymous => request,
            Credentials::Basic(user, password) => request.basic_auth(user, Some(password)),
            Credentials::Bearer(token) => request.bearer_auth(token),
        }
    }

    async fn call(&self, method: Method, target: &str) -> Response {
        send(self.req(method, target)).await
    }

    async fn get(&self, target: &str) -> Response {
        self.call(Method::GET, target).await
    }

    async fn head(&self, target: &str) -> Response {
        self.call(Method::HEAD, target).await
    }

    /// `GET` a manifest accepting both OCI manifest types.
    async fn get_manifest(&self, name: &str, reference: &str) -> Response {
        send(
            self.req(Method::GET, &format!("/v2/{name}/manifests/{reference}"))
                .header("accept", format!("{MANIFEST}, {INDEX}")),
        )
        .await
    }

    /// Monolithic `POST ?digest=` upload; returns the response.
    async fn post_blob(&self, name: &str, digest: &str, data: &[u8]) -> Response {
        send(
            self.req(
                Method::POST,
                &format!("/v2/{name}/blobs/uploads/?digest={digest}"),
            )
            .header("content-type", OCTETS)
            .body(data.to_vec()),
        )
        .await
    }

    /// Pushes a blob in one request; returns its sha256 digest.
    async fn push_blob(&self, name: &str, data: &[u8]) -> String {
        let digest = sha256(data);
        expect(self.post_blob(name, &digest, data).await, 201).await;
        digest
    }

    /// Opens an upload session; returns its `Location`.
    async fn start_upload(&self, name: &str) -> String {
        let response = self
            .call(Method::POST, &format!("/v2/{name}/blobs/uploads/"))
            .await;
        let (headers, _) = expect(response, 202).await;
        let location = header(&headers, "location");
        assert!(!location.is_empty(), "an upload session without Location");
        location
    }

    /// Sends one chunk at `start`.
    async fn patch(&self, location: &str, start: usize, chunk: &[u8]) -> Response {
        send(
            self.req(Method::PATCH, location)
                .header("content-type", OCTETS)
                .header(
                    "content-range",
                    format!("{start}-{}", start + chunk.len() - 1),
                )
                .body(chunk.to_vec()),
        )
        .await
    }

    /// Sends one chunk that must be accepted; returns the next `Location`.
    async fn patch_ok(&self, location: &str, start: usize, chunk: &[u8]) -> String {
        let (headers, _) = expect(self.patch(location, start, chunk).await, 202).await;
        assert_eq!(
            header(&headers, "range"),
            format!("0-{}", start + chunk.len() - 1)
        );
        let next = header(&headers, "location");
        assert!(!next.is_empty(), "a PATCH answer without Location");
        next
    }

    /// Closes a session with `PUT ?digest=`, with an optional last chunk.
    async fn close(&self, location: &str, digest: &str, last: Option<(usize, &[u8])>) -> Response {
        let request = self
            .req(
                Method::PUT,
                &with_query(location, &format!("digest={digest}")),
            )
            .header("content-type", OCTETS);
        let request = match last {
            Some((start, chunk)) => request
                .header(
                    "content-range",
                    format!("{start}-{}", start + chunk.len() - 1),
                )
                .body(chunk.to_vec()),
            None => request.header("content-length", "0"),
        };
        send(request).await
    }

    async fn put_manifest(
        &self,
        name: &str,
        reference: &str,
        media_type: &str,
        body: &[u8],
    ) -> Response {
        send(
            self.req(Method::PUT, &format!("/v2/{name}/manifests/{reference}"))
                .header("content-type", media_type)
                .body(body.to_vec()),
        )
        .await
    }

    /// Pushes the blobs and an image manifest tagged `tag`; returns the
    /// manifest's digest and bytes.
    async fn push_image(
        &self,
        name: &str,
        tag: &str,
        config: &[u8],
        layers: &[&[u8]],
    ) -> (String, Vec<u8>) {
        self.push_blob(name, config).await;
        for layer in layers {
            self.push_blob(name, layer).await;
        }
        let manifest = image_manifest(config, layers);
        let response = self.put_manifest(name, tag, MANIFEST, &manifest).await;
        let (headers, _) = expect(response, 201).await;
        let digest = sha256(&manifest);
        assert_eq!(header(&headers, "docker-content-digest"), digest);
        (digest, manifest)
    }

    /// The body of a `GET` that must answer 200.
    async fn fetch(&self, target: &str) -> Bytes {
        expect(self.get(target).await, 200).await.1
    }

    /// The tags of a `tags/list` page and its next link.
    async fn tags_page(&self, target: &str) -> (Vec<String>, Option<String>) {
        let (headers, body) = expect(self.get(target).await, 200).await;
        let value: Value = serde_json::from_slice(&body).unwrap();
        let tags = value["tags"]
            .as_array()
            .map(|tags| {
                tags.iter()
                    .map(|t| t.as_str().unwrap().to_string())
                    .collect()
            })
            .unwrap_or_default();
        (tags, next_link(&headers))
    }
}

#[tokio::test]
async fn the_base_endpoint_answers_with_the_api_version() {
    let _shared = EXCLUSIVE.read().await;
    let server = Server::start(LOCAL).await;
    let registry = Registry::of(&server);
    let (_, body) = expect(registry.get("/v2/").await, 200).await;
    assert_eq!(serde_json::from_slice::<Value>(&body).unwrap(), json!({}));
    expect(registry.head("/v2/").await, 200).await;
}

#[tokio::test]
async fn monolithic_uploads_store_blobs() {
    let _shared = EXCLUSIVE.read().await;
    let server = Server::start(LOCAL).await;
    let registry = Registry::of(&server);
    let name = "docker-local/mono";

    let data = sample(1, 40_000);
    let digest = sha256(&data);
    let (headers, _) = expect(registry.post_blob(name, &digest, &data).await, 201).await;
    assert!(
        header(&headers, "location").ends_with(&format!("/v2/{name}/blobs/{digest}")),
        "Location: {}",
        header(&headers, "location")
    );
    assert_eq!(header(&headers, "docker-content-digest"), digest);

    let blob = format!("/v2/{name}/blobs/{digest}");
    let (headers, body) = expect(registry.get(&blob).await, 200).await;
    assert_eq!(body, data);
    assert_eq!(header(&headers, "docker-content-digest"), digest);
    assert_eq!(header(&headers, "content-length"), "40000");
    let (headers, body) = expect(registry.head(&blob).await, 200).await;
    assert!(body.is_empty());
    assert_eq!(header(&headers, "docker-content-digest"), digest);
    assert_eq!(header(&headers, "content-length"), "40000");

    // POST opens a session, PUT ?digest= brings the whole blob.
    let data = sample(2, 25_000);
    let digest = sha256(&data);
    let location = registry.start_upload(name).await;
    let response = send(
        registry
            .req(
                Method::PUT,
                &with_query(&location, &format!("digest={digest}")),
            )
            .header("content-type", OCTETS)
            .body(data.clone()),
    )
    .await;
    let (headers, _) = expect(response, 201).await;
    assert!(header(&headers, "location").ends_with(&format!("/blobs/{digest}")));
    assert_eq!(
        registry.fetch(&format!("/v2/{name}/blobs/{digest}")).await,
        data
    );
}

#[tokio::test]
async fn chunked_uploads_append_in_order() {
    let _shared = EXCLUSIVE.read().await;
    let server = Server::start(LOCAL).await;
    let registry = Registry::of(&server);
    let name = "docker-local/chunked";
    let data = sample(3, 3000);
    let digest = sha256(&data);

    let location = registry.start_upload(name).await;
    let (headers, _) = expect(registry.get(&location).await, 204).await;
    let uuid = header(&headers, "docker-upload-uuid");
    assert!(!uuid.is_empty(), "no Docker-Upload-UUID");
    assert!(header(&headers, "location").contains(&uuid));

    let location = registry.patch_ok(&location, 0, &data[..1000]).await;
    let (headers, _) = expect(registry.get(&location).await, 204).await;
    assert_eq!(header(&headers, "range"), "0-999");
    assert_eq!(header(&headers, "docker-upload-uuid"), uuid);
    assert!(header(&headers, "location").contains(&uuid));

    let location = registry.patch_ok(&location, 1000, &data[1000..2000]).await;
    let location = registry.patch_ok(&location, 2000, &data[2000..]).await;
    let (headers, _) = expect(registry.close(&location, &digest, None).await, 201).await;
    assert!(header(&headers, "location").ends_with(&format!("/v2/{name}/blobs/{digest}")));
    assert_eq!(header(&headers, "docker-content-digest"), digest);
    assert_eq!(
        registry.fetch(&format!("/v2/{name}/blobs/{digest}")).await,
        data
    );

    // The closing PUT may carry the last chunk.
    let data = sample(4, 3000);
    let digest = sha256(&data);
    let location = registry.start_upload(name).await;
    let location = registry.patch_ok(&location, 0, &data[..1000]).await;
    let response = registry
        .close(&location, &digest, Some((1000, &data[1000..])))
        .await;
    expect(response, 201).await;
    assert_eq!(
        registry.fetch(&format!("/v2/{name}/blobs/{digest}")).await,
        data
    );
}

#[tokio::test]
async fn an_out_of_order_chunk_is_refused_with_416() {
    let _shared = EXCLUSIVE.read().await;
    let server = Server::start(LOCAL).await;
    let registry = Registry::of(&server);
    let name = "docker-local/ordered";
    let data = sample(5, 3000);

    let location = registry.start_upload(name).await;
    let location = registry.patch_ok(&location, 0, &data[..1000]).await;
    expect(registry.patch(&location, 2000, &data[2000..]).await, 416).await;
    expect(registry.patch(&location, 500, &data[500..1500]).await, 416).await;
    let (headers, _) = expect(registry.get(&location).await, 204).await;
    assert_eq!(header(&headers, "range"), "0-999");

    let location = registry.patch_ok(&location, 1000, &data[1000..]).await;
    let digest = sha256(&data);
    expect(registry.close(&location, &digest, None).await, 201).await;
    assert_eq!(
        registry.fetch(&format!("/v2/{name}/blobs/{digest}")).await,
        data
    );
}

#[tokio::test]
async fn a_cancelled_upload_is_gone() {
    let _shared = EXCLUSIVE.read().await;
    let server = Server::start(LOCAL).await;
    let registry = Registry::of(&server);
    let data = sample(6, 2000);
    let location = registry.start_upload("docker-local/cancel").await;
    let location = registry.patch_ok(&location, 0, &data[..1000]).await;
    expect(registry.call(Method::DELETE, &location).await, 204).await;
    expect_error(registry.get(&location).await, 404, "BLOB_UPLOAD_UNKNOWN").await;
    let response = registry.patch(&location, 1000, &data[1000..]).await;
    expect_error(response, 404, "BLOB_UPLOAD_UNKNOWN").await;
    let response = registry.close(&location, &sha256(&data), None).await;
    expect_error(response, 404, "BLOB_UPLOAD_UNKNOWN").await;
}

#[tokio::test]
async fn docker_repositories_are_not_reachable_around_the_registry_api() {
    let _shared = EXCLUSIVE.read().await;
    let server = Server::start(LOCAL).await;
    let client = client();
    let data = sample(9, 100);
    let digest = sha256(&data);
    let raw = server.url(&format!("/api/v1/remote/docker-local/blobs/{digest}"));
    let put = client.put(&raw).body(data.clone()).send().await.unwrap();
    assert_eq!(put.status().as_u16(), 404);
    let body: Value = put.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "USE_REGISTRY_API");
    assert_eq!(
        client.get(&raw).send().await.unwrap().status().as_u16(),
        404
    );
    assert_eq!(server.blob_count(), 0, "nothing was stored");
}

#[tokio::test]
async fn a_wrong_digest_is_refused_and_nothing_is_stored() {
    let _shared = EXCLUSIVE.read().await;
    let server = Server::start(LOCAL).await;
    let registry = Registry::of(&server);
    let name = "docker-local/wrong";
    let data = sample(7, 5000);
    let claimed = sha256(b"something else entirely");
    let before = server.blob_count();

    let response = registry.post_blob(name, &claimed, &data).await;
    expect_error(response, 400, "DIGEST_INVALID").await;
    assert_eq!(server.blob_count(), before, "a refused blob was stored");

    let location = registry.start_upload(name).await;
    let location = registry.patch_ok(&location, 0, &data).await;
    let response = registry.close(&location, &claimed, None).await;
    expect_error(response, 400, "DIGEST_INVALID").await;

    for digest in [&claimed, &sha256(&data)] {
        let blob = format!("/v2/{name}/blobs/{digest}");
        expect(registry.head(&blob).await, 404).await;
        expect_error(registry.get(&blob).await, 404, "BLOB_UNKNOWN").await;
    }
}

#[tokio::test]
async fn sha512_digests_push_and_pull() {
    let _shared = EXCLUSIVE.read().await;
    let server = Server::start(LOCAL).await;
    let registry = Registry::of(&server);
    let name = "docker-local/sha512";

    let data = sample(8, 9000);
    let digest = sha512(&data);
    let (headers, _) = expect(registry.post_blob(name, &digest, &data).await, 201).await;
    assert_eq!(header(&headers, "docker-content-digest"), digest);
    let blob = format!("/v2/{name}/blobs/{digest}");
    let (headers, body) = expect(registry.get(&blob).await, 200).await;
    assert_eq!(body, data);
    assert_eq!(header(&headers, "docker-content-digest"), digest);
    let (headers, _) = expect(registry.head(&blob).await, 200).await;
    assert_eq!(header(&headers, "content-length"), "9000");

    let data = sample(9, 9000);
    let digest = sha512(&data);
    let location = registry.start_upload(name).await;
    let location = registry.patch_ok(&location, 0, &data[..4000]).await;
    let location = registry.patch_ok(&location, 4000, &data[4000..]).await;
    expect(registry.close(&location, &digest, None).await, 201).await;
    assert_eq!(
        registry.fetch(&format!("/v2/{name}/blobs/{digest}")).await,
        data
    );

    let wrong = sha512(b"not these bytes");
    let response = registry.post_blob(name, &wrong, &data).await;
    expect_error(response, 400, "DIGEST_INVALID").await;
}

#[tokio::test]
async fn blobs_mount_from_another_image() {
    let _shared = EXCLUSIVE.read().await;
    let server = Server::start(LOCAL).await;
    let registry = Registry::of(&server);
    let data = sample(10, 7000);
    let digest = registry.push_blob("docker-local/source", &data).await;

    let response = registry
        .call(
            Method::POST,
            &format!(
                "/v2/docker-local/target/blobs/uploads/?mount={digest}&from=docker-local/source"
            ),
        )
        .await;
    let (headers, _) = expect(response, 201).await;
    assert!(
        header(&headers, "location").ends_with(&format!("/v2/docker-local/target/blobs/{digest}")),
        "Location: {}",
        header(&headers, "location")
    );
    assert_eq!(
        registry
            .fetch(&format!("/v2/docker-local/target/blobs/{digest}"))
            .await,
        data
    );

    // Without `from`: from any local repository the client may read.
    let response = registry
        .call(
            Method::POST,
            &format!("/v2/other-local/anonymous/blobs/uploads/?mount={digest}"),
        )
        .await;
    let (headers, _) = expect(response, 201).await;
    assert_eq!(header(&headers, "docker-content-digest"), digest);
    assert_eq!(
        registry
            .fetch(&format!("/v2/other-local/anonymous/blobs/{digest}"))
            .await,
        data
    );

    // Absent from the source: a new session, usable as any other.
    let missing = sha256(b"never pushed anywhere");
    let response = registry
        .call(
            Method::POST,
            &format!(
                "/v2/docker-local/target/blobs/uploads/?mount={missing}&from=docker-local/source"
            ),
        )
        .await;
    let (headers, _) = expect(response, 202).await;
    let location = header(&headers, "location");
    assert!(!location.is_empty(), "a 202 mount answer without Location");
    let payload = sample(11, 3000);
    let digest = sha256(&payload);
    let location = registry.patch_ok(&location, 0, &payload).await;
    expect(registry.close(&location, &digest, None).await, 201).await;
    assert_eq!(
        registry
            .fetch(&format!("/v2/docker-local/target/blobs/{digest}"))
            .await,
        payload
    );
}

#[tokio::test]
async fn manifests_push_by_tag_and_digest_and_read_back() {
    let _shared = EXCLUSIVE.read().await;
    let server = Server::start(LOCAL).await;
    let registry = Registry::of(&server);
    let name = "docker-local/team/app";
    let config = br#"{"architecture":"amd64","os":"linux"}"#;
    let arm_config = br#"{"architecture":"arm64","os":"linux"}"#;
    let layer = sample(12, 5000);
    let arm_layer = sample(13, 5000);

    let (digest, manifest) = registry.push_image(name, "v1", config, &[&layer]).await;
    for reference in ["v1", digest.as_str()] {
        let (headers, body) = expect(registry.get_manifest(name, reference).await, 200).await;
        assert_eq!(body, manifest);
        assert_eq!(header(&headers, "content-type"), MANIFEST);
        assert_eq!(header(&headers, "docker-content-digest"), digest);
        assert_eq!(
            header(&headers, "content-length"),
            manifest.len().to_string()
        );
        let target = format!("/v2/{name}/manifests/{reference}");
        let (headers, body) = expect(registry.head(&target).await, 200).await;
        assert!(body.is_empty());
        assert_eq!(header(&headers, "content-type"), MANIFEST);
        assert_eq!(header(&headers, "docker-content-digest"), digest);
        assert_eq!(
            header(&headers, "content-length"),
            manifest.len().to_string()
        );
    }

    // By digest, without a tag.
    registry.push_blob(name, arm_config).await;
    registry.push_blob(name, &arm_layer).await;
    let arm = image_manifest(arm_config, &[&arm_layer]);
    let arm_digest = sha256(&arm);
    let response = registry
        .put_manifest(name, &arm_digest, MANIFEST, &arm)
        .await;
    let (headers, _) = expect(response, 201).await;
    assert_eq!(header(&headers, "docker-content-digest"), arm_digest);
    assert!(!header(&headers, "location").is_empty());
    assert_eq!(
        registry
            .fetch(&format!("/v2/{name}/manifests/{arm_digest}"))
            .await,
        arm
    );

    // An index of both.
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": INDEX,
        "manifests": [
            {"mediaType": MANIFEST, "digest": digest, "size": manifest.len(),
             "platform": {"architecture": "amd64", "os": "linux"}},
            {"mediaType": MANIFEST, "digest": arm_digest, "size": arm.len(),
             "platform": {"architecture": "arm64", "os": "linux"}},
        ],
    }))
    .unwrap();
    let index_digest = sha256(&index);
    let response = registry.put_manifest(name, "multi", INDEX, &index).await;
    let (headers, _) = expect(response, 201).await;
    assert_eq!(header(&headers, "docker-content-digest"), index_digest);
    for reference in ["multi", index_digest.as_str()] {
        let (headers, body) = expect(registry.get_manifest(name, reference).await, 200).await;
        assert_eq!(body, index);
        assert_eq!(header(&headers, "content-type"), INDEX);
        assert_eq!(header(&headers, "docker-content-digest"), index_digest);
    }
}

#[tokio::test]
async fn invalid_manifests_are_refused() {
    let _shared = EXCLUSIVE.read().await;
    let server = Server::start(LOCAL).await;
    let registry = Registry::of(&server);
    let name = "docker-local/invalid";
    let config = br#"{"architecture":"amd64","os":"linux"}"#;
    let layer = sample(14, 3000);
    registry.push_blob(name, config).await;

    let response = registry
        .put_manifest(name, "broken", MANIFEST, b"{not json")
        .await;
    expect_error(response, 400, "MANIFEST_INVALID").await;
    let response = registry
        .put_manifest(
            name,
            "broken",
            MANIFEST,
            br#"{"mediaType":"application/vnd.oci.image.manifest.v1+json"}"#,
        )
        .await;
    expect_error(response, 400, "MANIFEST_INVALID").await;

    let missing_layer = image_manifest(config, &[&layer]);
    let response = registry
        .put_manifest(name, "broken", MANIFEST, &missing_layer)
        .await;
    expect_error(response, 400, "MANIFEST_BLOB_UNKNOWN").await;

    registry.push_blob(name, &layer).await;
    let missing_config = image_manifest(b"{\"unpushed\":true}", &[&layer]);
    let response = registry
        .put_manifest(name, "broken", MANIFEST, &missing_config)
        .await;
    expect_error(response, 400, "MANIFEST_BLOB_UNKNOWN").await;

    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": INDEX,
        "manifests": [{"mediaType": MANIFEST, "digest": sha256(&missing_layer), "size": missing_layer.len()}],
    }))
    .unwrap();
    let response = registry.put_manifest(name, "broken", INDEX, &index).await;
    expect_error(response, 400, "MANIFEST_BLOB_UNKNOWN").await;

    // A digest reference must match the body.
    let good = image_manifest(config, &[&layer]);
    let response = registry
        .put_manifest(name, &sha256(b"other bytes"), MANIFEST, &good)
        .await;
    let url = response.url().to_string();
    let (_, body) = expect(response, 400).await;
    let codes = error_codes(&url, &body);
    assert!(
        codes
            .iter()
            .any(|c| c == "DIGEST_INVALID" || c == "MANIFEST_INVALID"),
        "{url}: {codes:?}"
    );

    expect_error(
        registry.get_manifest(name, "broken").await,
        404,
        "MANIFEST_UNKNOWN",
    )
    .await;
}

#[tokio::test]
async fn blob_ranges_answer_206() {
    let _shared = EXCLUSIVE.read().await;
    let server = Server::start(LOCAL).await;
    let registry = Registry::of(&server);
    let data = sample(15, 1000);
    let digest = registry.push_blob("docker-local/ranges", &data).await;
    let blob = format!("/v2/docker-local/ranges/blobs/{digest}");

    let response = send(
        registry
            .req(Method::GET, &blob)
            .header("range", "bytes=10-19"),
    )
    .await;
    let (headers, body) = expect(response, 206).await;
    assert_eq!(body, data[10..20]);
    assert_eq!(header(&headers, "content-range"), "bytes 10-19/1000");
    assert_eq!(header(&headers, "content-length"), "10");

    let response = send(
        registry
            .req(Method::GET, &blob)
            .header("range", "bytes=990-"),
    )
    .await;
    let (_, body) = expect(response, 206).await;
    assert_eq!(body, data[990..]);

    let response = send(
        registry
            .req(Method::HEAD, &blob)
            .header("range", "bytes=10-19"),
    )
    .await;
    let (headers, _) = expect(response, 206).await;
    assert_eq!(header(&headers, "content-range"), "bytes 10-19/1000");
}

#[tokio::test]
async fn tags_list_paginates_with_link() {
    let _shared = EXCLUSIVE.read().await;
    let server = Server::start(LOCAL).await;
    let registry = Registry::of(&server);
    let name = "docker-local/tagged";
    let config = br#"{"architecture":"amd64","os":"linux"}"#;
    let layer = sample(16, 1000);
    let (_, manifest) = registry.push_image(name, "e5", config, &[&layer]).await;
    for tag in ["a1", "c3", "b2", "d4"] {
        let response = registry.put_manifest(name, tag, MANIFEST, &manifest).await;
        expect(response, 201).await;
    }

    let (headers, body) = expect(registry.get(&format!("/v2/{name}/tags/list")).await, 200).await;
    let value: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(value["name"], name);
    assert_eq!(value["tags"], json!(["a1", "b2", "c3", "d4", "e5"]));
    assert!(next_link(&headers).is_none());

    let (tags, next) = registry
        .tags_page(&format!("/v2/{name}/tags/list?n=2"))
        .await;
    assert_eq!(tags, ["a1", "b2"]);
    let next = next.expect("a Link to the next page");
    assert!(
        next.starts_with(&format!("/v2/{name}/tags/list?")),
        "Link: {next}"
    );
    assert!(
        next.contains("n=2") && next.contains("last=b2"),
        "Link: {next}"
    );
    let (tags, next) = registry.tags_page(&next).await;
    assert_eq!(tags, ["c3", "d4"]);
    let (tags, next) = registry
        .tags_page(&next.expect("a Link to the last page"))
        .await;
    assert_eq!(tags, ["e5"]);
    assert!(next.is_none(), "a Link after the last page: {next:?}");

    let (tags, _) = registry
        .tags_page(&format!("/v2/{name}/tags/list?n=2&last=b2"))
        .await;
    assert_eq!(tags, ["c3", "d4"]);
    let (tags, _) = registry
        .tags_page(&format!("/v2/{name}/tags/list?last=c3"))
        .await;
    assert_eq!(tags, ["d4", "e5"]);
}

#[tokio::test]
async fn the_catalog_lists_local_docker_images() {
    let _shared = EXCLUSIVE.read().await;
    let server = Server::start(LOCAL).await;
    let registry = Registry::of(&server);
    let config = br#"{"architecture":"amd64","os":"linux"}"#;
    let layer = sample(17, 1000);
    for name in [
        "other-local/cat-c",
        "docker-local/cat-b",
        "docker-local/team/cat-a",
    ] {
        registry.push_image(name, "v1", config, &[&layer]).await;
    }
    let response = client()
        .put(server.url("/api/v1/remote/uploads/not-an-image.txt"))
        .body("generic")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);

    let all = [
        "docker-local/cat-b",
        "docker-local/team/cat-a",
        "other-local/cat-c",
    ];
    let (headers, body) = expect(registry.get("/v2/_catalog").await, 200).await;
    let value: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(value["repositories"], json!(all));
    assert!(next_link(&headers).is_none());

    let mut seen = Vec::new();
    let mut target = Some("/v2/_catalog?n=1".to_string());
    while let Some(page) = target {
        let (headers, body) = expect(registry.get(&page).await, 200).await;
        let value: Value = serde_json::from_slice(&body).unwrap();
        let names = value["repositories"].as_array().unwrap();
        assert!(names.len() <= 1, "{page}: {value}");
        seen.extend(names.iter().map(|n| n.as_str().unwrap().to_string()));
        target = next_link(&headers);
        assert!(
            seen.len() <= all.len(),
            "the catalog does not end: {seen:?}"
        );
    }
    assert_eq!(seen, all);

    let (_, body) = expect(
        registry
            .get("/v2/_catalog?n=2&last=docker-local/cat-b")
            .await,
        200,
    )
    .await;
    let value: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        value["repositories"],
        json!(["docker-local/team/cat-a", "other-local/cat-c"])
    );
}

#[tokio::test]
async fn referrers_list_the_manifests_of_a_subject() {
    let _shared = EXCLUSIVE.read().await;
    let server = Server::start(LOCAL).await;
    let registry = Registry::of(&server);
    let name = "docker-local/signed";
    let config = br#"{"architecture":"amd64","os":"linux"}"#;
    let layer = sample(18, 2000);
    let (subject, subject_manifest) = registry.push_image(name, "v1", config, &[&layer]).await;
    let subject_descriptor =
        json!({"mediaType": MANIFEST, "digest": subject, "size": subject_manifest.len()});

    let empty = b"{}";
    let empty_digest = registry.push_blob(name, empty).await;
    assert_eq!(
        empty_digest,
        "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
    );
    let sbom_layer = b"sbom: demo".to_vec();
    registry.push_blob(name, &sbom_layer).await;
    let sbom = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "artifactType": "application/vnd.example.sbom.v1",
        "config": descriptor(EMPTY, empty),
        "layers": [descriptor("application/vnd.example.sbom.layer.v1", &sbom_layer)],
        "subject": subject_descriptor,
        "annotations": {"org.example.kind": "sbom"},
    }))
    .unwrap();
    let sbom_digest = sha256(&sbom);
    let response = registry
        .put_manifest(name, &sbom_digest, MANIFEST, &sbom)
        .await;
    let (headers, _) = expect(response, 201).await;
    assert_eq!(header(&headers, "oci-subject"), subject);

    // Without artifactType, the config's media type stands for it.
    let signature_config = br#"{"signed":true}"#;
    let signature_type = "application/vnd.example.signature.config.v1+json";
    let signature_layer = b"signature bytes".to_vec();
    registry.push_blob(name, signature_config).await;
    registry.push_blob(name, &signature_layer).await;
    let signature = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": descriptor(signature_type, signature_config),
        "layers": [descriptor("application/vnd.example.signature.v1", &signature_layer)],
        "subject": subject_descriptor,
    }))
    .unwrap();
    let signature_digest = sha256(&signature);
    let response = registry
        .put_manifest(name, &signature_digest, MANIFEST, &signature)
        .await;
    let (headers, _) = expect(response, 201).await;
    assert_eq!(header(&headers, "oci-subject"), subject);

    let (headers, body) = expect(
        registry
            .get(&format!("/v2/{name}/referrers/{subject}"))
            .await,
        200,
    )
    .await;
    assert_eq!(header(&headers, "content-type"), INDEX);
    let index: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(index["schemaVersion"], 2);
    assert_eq!(index["mediaType"], INDEX);
    let manifests = index["manifests"].as_array().unwrap();
    assert_eq!(manifests.len(), 2, "{index}");
    let find = |digest: &str| {
        manifests
            .iter()
            .find(|m| m["digest"] == digest)
            .unwrap_or_else(|| panic!("{digest} is not listed: {index}"))
            .clone()
    };
    let listed = find(&sbom_digest);
    assert_eq!(listed["mediaType"], MANIFEST);
    assert_eq!(listed["size"], sbom.len());
    assert_eq!(listed["artifactType"], "application/vnd.example.sbom.v1");
    assert_eq!(listed["annotations"]["org.example.kind"], "sbom");
    let listed = find(&signature_digest);
    assert_eq!(listed["size"], signature.len());
    assert_eq!(listed["artifactType"], signature_type);

    let (headers, body) = expect(
        registry
            .get(&format!(
                "/v2/{name}/referrers/{subject}?artifactType=application/vnd.example.sbom.v1"
            ))
            .await,
        200,
    )
    .await;
    assert_eq!(header(&headers, "oci-filters-applied"), "artifactType");
    let filtered: Value = serde_json::from_slice(&body).unwrap();
    let manifests = filtered["manifests"].as_array().unwrap();
    assert_eq!(manifests.len(), 1, "{filtered}");
    assert_eq!(manifests[0]["digest"], sbom_digest);

    let unknown = sha256(b"no such subject");
    let (headers, body) = expect(
        registry
            .get(&format!("/v2/{name}/referrers/{unknown}"))
            .await,
        200,
    )
    .await;
    assert_eq!(header(&headers, "content-type"), INDEX);
    let empty_index: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(empty_index["schemaVersion"], 2);
    assert_eq!(empty_index["manifests"], json!([]));
}

#[tokio::test]
async fn deleting_a_tag_keeps_the_manifest_and_deleting_a_digest_removes_its_tags() {
    let _shared = EXCLUSIVE.read().await;
    let server = Server::start(LOCAL).await;
    let registry = Registry::of(&server);
    let name = "docker-local/deleted";
    let config = br#"{"architecture":"amd64","os":"linux"}"#;
    let layer = sample(19, 1000);
    let (digest, manifest) = registry.push_image(name, "v1", config, &[&layer]).await;
    expect(
        registry.put_manifest(name, "v2", MANIFEST, &manifest).await,
        201,
    )
    .await;

    let v1 = format!("/v2/{name}/manifests/v1");
    expect(registry.call(Method::DELETE, &v1).await, 202).await;
    expect_error(
        registry.get_manifest(name, "v1").await,
        404,
        "MANIFEST_UNKNOWN",
    )
    .await;
    expect(registry.get_manifest(name, "v2").await, 200).await;
    expect(registry.get_manifest(name, &digest).await, 200).await;
    let (tags, _) = registry.tags_page(&format!("/v2/{name}/tags/list")).await;
    assert_eq!(tags, ["v2"]);

    let by_digest = format!("/v2/{name}/manifests/{digest}");
    expect(registry.call(Method::DELETE, &by_digest).await, 202).await;
    expect_error(
        registry.get_manifest(name, &digest).await,
        404,
        "MANIFEST_UNKNOWN",
    )
    .await;
    expect_error(
        registry.get_manifest(name, "v2").await,
        404,
        "MANIFEST_UNKNOWN",
    )
    .await;
    expect(registry.head(&by_digest).await, 404).await;
    let response = registry.get(&format!("/v2/{name}/tags/list")).await;
    if response.status() == 404 {
        expect_error(response, 404, "NAME_UNKNOWN").await;
    } else {
        let (_, body) = expect(response, 200).await;
        let value: Value = serde_json::from_slice(&body).unwrap();
        assert!(
            value["tags"].as_array().is_none_or(|t| t.is_empty()),
            "tags left after the manifest went: {value}"
        );
    }
    let response = registry.call(Method::DELETE, &by_digest).await;
    expect_error(response, 404, "MANIFEST_UNKNOWN").await;
}

#[tokio::test]
async fn deleted_blobs_are_gone() {
    let _shared = EXCLUSIVE.read().await;
    let server = Server::start(LOCAL).await;
    let registry = Registry::of(&server);
    let data = sample(20, 1000);
    let digest = registry.push_blob("docker-local/blobs", &data).await;
    let blob = format!("/v2/docker-local/blobs/blobs/{digest}");
    expect(registry.call(Method::DELETE, &blob).await, 202).await;
    expect(registry.head(&blob).await, 404).await;
    expect_error(registry.get(&blob).await, 404, "BLOB_UNKNOWN").await;
    expect_error(
        registry.call(Method::DELETE, &blob).await,
        404,
        "BLOB_UNKNOWN",
    )
    .await;
}

#[tokio::test]
async fn errors_are_oci_json_with_the_spec_codes() {
    let _shared = EXCLUSIVE.read().await;
    let server = Server::start(LOCAL).await;
    let registry = Registry::of(&server);
    let config = br#"{"architecture":"amd64","os":"linux"}"#;
    let layer = sample(21, 1000);
    registry
        .push_image("docker-local/known", "v1", config, &[&layer])
        .await;
    let unknown = sha256(b"unknown blob");

    for target in [
        "/v2/nosuch/img/manifests/v1".to_string(),
        format!("/v2/nosuch/img/blobs/{unknown}"),
        "/v2/nosuch/img/tags/list".to_string(),
        "/v2/docker-local/never-pushed/tags/list".to_string(),
    ] {
        expect_error(registry.get(&target).await, 404, "NAME_UNKNOWN").await;
    }
    expect_error(
        registry
            .get(&format!("/v2/docker-local/known/blobs/{unknown}"))
            .await,
        404,
        "BLOB_UNKNOWN",
    )
    .await;
    expect(
        registry
            .head(&format!("/v2/docker-local/known/blobs/{unknown}"))
            .await,
        404,
    )
    .await;
    expect_error(
        registry.get_manifest("docker-local/known", "nosuch").await,
        404,
        "MANIFEST_UNKNOWN",
    )
    .await;
    expect(
        registry
            .head("/v2/docker-local/known/manifests/nosuch")
            .await,
        404,
    )
    .await;
    expect_error(
        registry
            .get("/v2/docker-local/known/blobs/uploads/0b5e1c8e-5c7a-4c43-9a53-1f7e0e1c2d3f")
            .await,
        404,
        "BLOB_UPLOAD_UNKNOWN",
    )
    .await;
    expect_error(
        registry
            .call(Method::POST, "/v2/docker-local/Bad_Name/blobs/uploads/")
            .await,
        400,
        "NAME_INVALID",
    )
    .await;
    expect_error(
        registry
            .call(Method::PATCH, "/v2/docker-local/known/manifests/v1")
            .await,
        405,
        "UNSUPPORTED",
    )
    .await;
}

#[tokio::test]
async fn an_upload_survives_a_restart() {
    let _shared = EXCLUSIVE.read().await;
    let server = Server::start(LOCAL).await;
    let name = "docker-local/resumed";
    let data = sample(22, (2 << 20) + 123);
    let digest = sha256(&data);
    let half = data.len() / 2;

    let registry = Registry::of(&server);
    let location = registry.start_upload(name).await;
    let location = registry.patch_ok(&location, 0, &data[..half]).await;

    let server = server.restart().await;
    let registry = Registry::of(&server);
    let (headers, _) = expect(registry.get(&location).await, 204).await;
    assert_eq!(header(&headers, "range"), format!("0-{}", half - 1));
    let location = registry.patch_ok(&location, half, &data[half..]).await;
    expect(registry.close(&location, &digest, None).await, 201).await;
    let body = registry.fetch(&format!("/v2/{name}/blobs/{digest}")).await;
    assert_eq!(body.len(), data.len());
    assert!(body == data, "the resumed blob differs");
}

/// A configuration with user `ci` (password from `password_env`) who may
/// write `docker-local` and `docker-private`; the latter refuses anonymous
/// reads.
fn auth_yaml(password_env: &str) -> String {
    format!(
        "auth:
  users:
    ci:
      password_env: {password_env}
      write: [docker-local, docker-private]
remotes:
  docker-local:
    type: local
    package: docker
  docker-private:
    type: local
    package: docker
    anonymous_read: false
"
    )
}

/// A token from `/v2/token` for `scope`; the API version header of that
/// answer is checked by `the_token_endpoint_answers_like_the_rest_of_v2`.
async fn token(registry: &Registry, scope: &str) -> String {
    let response = registry
        .req(
            Method::GET,
            &format!("/v2/token?service=artifactapi&scope={scope}"),
        )
        .send()
        .await
        .unwrap();
    let (_, body) = expect(response, 200).await;
    let value: Value = serde_json::from_slice(&body).unwrap();
    let token = value["token"]
        .as_str()
        .or(value["access_token"].as_str())
        .unwrap_or_else(|| panic!("no token in {value}"));
    assert!(!token.is_empty());
    token.to_string()
}

#[tokio::test]
async fn the_token_endpoint_answers_like_the_rest_of_v2() {
    let _shared = EXCLUSIVE.read().await;
    std::env::set_var("OCI_API_TEST_TOKEN_PASSWORD", "token-s3cret");
    let server = Server::start(&auth_yaml("OCI_API_TEST_TOKEN_PASSWORD")).await;
    let basic = Registry::of(&server).with(Credentials::Basic("ci".into(), "token-s3cret".into()));
    let target = "/v2/token?service=artifactapi&scope=repository:docker-local/app:pull";
    expect(basic.get(target).await, 200).await;
    let wrong = basic.with(Credentials::Basic("ci".into(), "wrong".into()));
    expect_error(wrong.get(target).await, 401, "UNAUTHORIZED").await;
}

#[tokio::test]
async fn anonymous_clients_are_challenged_and_tokens_allow_pushes() {
    let _shared = EXCLUSIVE.read().await;
    std::env::set_var("OCI_API_TEST_PUSH_PASSWORD", "push-s3cret");
    let server = Server::start(&auth_yaml("OCI_API_TEST_PUSH_PASSWORD")).await;
    let anonymous = Registry::of(&server);
    let challenge = format!(
        "Bearer realm=\"{}\",service=\"artifactapi\"",
        server.url("/v2/token")
    );

    let headers = expect_error(anonymous.get("/v2/").await, 401, "UNAUTHORIZED").await;
    assert_eq!(header(&headers, "www-authenticate"), challenge);
    let basic = anonymous.with(Credentials::Basic("ci".into(), "push-s3cret".into()));
    expect(basic.get("/v2/").await, 200).await;
    let wrong = anonymous.with(Credentials::Basic("ci".into(), "wrong".into()));
    expect_error(wrong.get("/v2/").await, 401, "UNAUTHORIZED").await;

    let config = br#"{"architecture":"amd64","os":"linux"}"#;
    let layer = sample(23, 1000);
    let response = anonymous
        .post_blob("docker-local/app", &sha256(config), config)
        .await;
    let headers = expect_error(response, 401, "UNAUTHORIZED").await;
    assert!(
        header(&headers, "www-authenticate")
            .starts_with(&format!("Bearer realm=\"{}\"", server.url("/v2/token"))),
        "challenge: {}",
        header(&headers, "www-authenticate")
    );

    let bearer = anonymous.with(Credentials::Bearer(
        token(&basic, "repository:docker-local/app:push,pull").await,
    ));
    let (digest, manifest) = bearer
        .push_image("docker-local/app", "v1", config, &[&layer])
        .await;
    let extra = sample(24, 500);
    basic.push_blob("docker-local/app", &extra).await;

    let (headers, body) = expect(anonymous.get_manifest("docker-local/app", "v1").await, 200).await;
    assert_eq!(body, manifest);
    assert_eq!(header(&headers, "docker-content-digest"), digest);
    assert_eq!(
        anonymous
            .fetch(&format!("/v2/docker-local/app/blobs/{}", sha256(&layer)))
            .await,
        layer
    );
}

#[tokio::test]
async fn private_repositories_refuse_anonymous_reads() {
    let _shared = EXCLUSIVE.read().await;
    std::env::set_var("OCI_API_TEST_PRIVATE_PASSWORD", "private-s3cret");
    let server = Server::start(&auth_yaml("OCI_API_TEST_PRIVATE_PASSWORD")).await;
    let anonymous = Registry::of(&server);
    let basic = anonymous.with(Credentials::Basic("ci".into(), "private-s3cret".into()));
    let config = br#"{"architecture":"amd64","os":"linux"}"#;
    let layer = sample(25, 1000);
    let (digest, _) = basic
        .push_image("docker-private/app", "v1", config, &[&layer])
        .await;

    let headers = expect_error(
        anonymous.get_manifest("docker-private/app", "v1").await,
        401,
        "UNAUTHORIZED",
    )
    .await;
    assert!(header(&headers, "www-authenticate").starts_with("Bearer realm="));
    let blob = format!("/v2/docker-private/app/blobs/{}", sha256(&layer));
    expect_error(anonymous.get(&blob).await, 401, "UNAUTHORIZED").await;

    let (headers, _) = expect(basic.get_manifest("docker-private/app", "v1").await, 200).await;
    assert_eq!(header(&headers, "docker-content-digest"), digest);
    let bearer = anonymous.with(Credentials::Bearer(
        token(&basic, "repository:docker-private/app:pull").await,
    ));
    assert_eq!(bearer.fetch(&blob).await, layer);
}

/// A recording relay in front of an upstream registry: counts requests by
/// method and path, and can be stopped.
struct Relay {
    url: String,
    state: Arc<RelayState>,
    task: tokio::task::JoinHandle<()>,
}

struct RelayState {
    target: String,
    http: reqwest::Client,
    down: AtomicBool,
    seen: Mutex<Vec<(Method, String)>>,
}

impl Relay {
    async fn start(target: &str) -> Relay {
        let state = Arc::new(RelayState {
            target: target.to_string(),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            down: AtomicBool::new(false),
            seen: Mutex::new(Vec::new()),
        });
        let router = Router::new().fallback(relay).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            axum::serve(listener, router).await.unwrap();
        });
        Relay { url, state, task }
    }

    /// Requests with this method whose path starts with `prefix`.
    fn count(&self, method: Method, prefix: &str) -> usize {
        self.state
            .seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(m, p)| *m == method && p.starts_with(prefix))
            .count()
    }

    /// New connections are refused, open ones answer 503.
    fn stop(&self) {
        self.state.down.store(true, Ordering::SeqCst);
        self.task.abort();
    }
}

async fn relay(State(state): State<Arc<RelayState>>, request: Request) -> axum::response::Response {
    let (parts, body) = request.into_parts();
    let target = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    state
        .seen
        .lock()
        .unwrap()
        .push((parts.method.clone(), parts.uri.path().to_string()));
    if state.down.load(Ordering::SeqCst) {
        return axum::response::Response::builder()
            .status(503)
            .body(Body::empty())
            .unwrap();
    }
    let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    let mut request = state
        .http
        .request(parts.method, format!("{}{target}", state.target));
    for (name, value) in &parts.headers {
        if !matches!(
            name.as_str(),
            "host" | "content-length" | "connection" | "transfer-encoding"
        ) {
            request = request.header(name, value);
        }
    }
    let upstream = request.body(body).send().await.unwrap();
    let mut response = axum::response::Response::builder().status(upstream.status());
    for (name, value) in upstream.headers() {
        if !matches!(name.as_str(), "connection" | "transfer-encoding") {
            response = response.header(name, value);
        }
    }
    response
        .body(Body::from_stream(upstream.bytes_stream()))
        .unwrap()
}

/// Docker remotes on `base_url`: `hub` with tags fresh for a second, and
/// `limited` allowing only `docker-local/allowed` and banning `latest`.
fn remote_yaml(base_url: &str) -> String {
    format!(
        "remotes:
  hub:
    type: remote
    package: docker
    base_url: \"{base_url}\"
    cache:
      mutable_ttl: 1
  limited:
    type: remote
    package: docker
    base_url: \"{base_url}\"
    include_patterns: [\"docker-local/allowed\"]
    ban_tags: [latest]
"
    )
}

/// An upstream registry, a relay in front of it and a server whose docker
/// remotes point at the relay.
async fn remote_setup() -> (Server, Relay, Server) {
    let upstream = Server::start(LOCAL).await;
    let relay = Relay::start(&upstream.url("")).await;
    let plugin = component(&plugins_dir(), "docker.wasm");
    let server = Server::start_with(
        &remote_yaml(&relay.url),
        &[(&plugin, "docker.wasm")],
        Duration::from_secs(5),
    )
    .await;
    (upstream, relay, server)
}

/// Files in the server's blob store exactly `len` bytes long.
fn stored_blobs_of_len(server: &Server, len: u64) -> usize {
    fn walk(dir: &Path, len: u64) -> usize {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return 0;
        };
        entries
            .flatten()
            .map(|entry| {
                let path = entry.path();
                if path.is_dir() {
                    walk(&path, len)
                } else {
                    usize::from(entry.metadata().is_ok_and(|m| m.len() == len))
                }
            })
            .sum()
    }
    walk(&server.dir.path().join("data/cas/blobs"), len)
}

/// Pulls an image through `registry` as a client would: the manifest by
/// tag, then its config and layers; checks them against the upstream.
async fn pull_through(registry: &Registry, upstream: &Registry, image: &str, tag: &str) {
    let (up_headers, up_body) = expect(upstream.get_manifest(image, tag).await, 200).await;
    let (headers, body) = expect(
        registry.get_manifest(&format!("hub/{image}"), tag).await,
        200,
    )
    .await;
    assert_eq!(body, up_body);
    for name in ["docker-content-digest", "content-type"] {
        assert_eq!(header(&headers, name), header(&up_headers, name), "{name}");
    }
    let manifest: Value = serde_json::from_slice(&body).unwrap();
    let mut blobs = vec![manifest["config"].clone()];
    blobs.extend(manifest["layers"].as_array().unwrap().iter().cloned());
    for blob in blobs {
        let digest = blob["digest"].as_str().unwrap();
        let path = format!("/v2/hub/{image}/blobs/{digest}");
        let (headers, body) = expect(registry.get(&path).await, 200).await;
        assert_eq!(sha256(&body), digest);
        assert_eq!(header(&headers, "docker-content-digest"), digest);
        let (headers, _) = expect(registry.head(&path).await, 200).await;
        assert_eq!(header(&headers, "content-length"), blob["size"].to_string());
    }
}

#[tokio::test]
async fn remote_pulls_match_the_upstream_and_store_shared_layers_once() {
    let _shared = EXCLUSIVE.read().await;
    let (upstream, _relay, server) = remote_setup().await;
    let origin = Registry::of(&upstream);
    let registry = Registry::of(&server);
    let shared = sample(26, 300_001);
    let only_a = sample(27, 20_000);
    let only_b = sample(28, 20_000);
    origin
        .push_image(
            "docker-local/a",
            "v1",
            br#"{"image":"a"}"#,
            &[&shared, &only_a],
        )
        .await;
    origin
        .push_image(
            "docker-local/b",
            "v1",
            br#"{"image":"b"}"#,
            &[&shared, &only_b],
        )
        .await;

    let before = server.blob_count();
    pull_through(&registry, &origin, "docker-local/a", "v1").await;
    let after_a = server.blob_count();
    pull_through(&registry, &origin, "docker-local/b", "v1").await;
    let after_b = server.blob_count();
    assert_eq!(
        after_b - after_a,
        after_a - before - 1,
        "the shared layer was stored again (blobs: {before}, {after_a}, {after_b})"
    );
    assert_eq!(stored_blobs_of_len(&server, shared.len() as u64), 1);
    pull_through(&registry, &origin, "docker-local/a", "v1").await;
    pull_through(&registry, &origin, "docker-local/b", "v1").await;
    assert_eq!(server.blob_count(), after_b);
}

#[tokio::test]
async fn remote_tags_are_revalidated_after_their_ttl() {
    let _shared = EXCLUSIVE.read().await;
    let (upstream, relay, server) = remote_setup().await;
    let origin = Registry::of(&upstream);
    let registry = Registry::of(&server);
    let image = "docker-local/moving";
    let manifests = format!("/v2/{image}/manifests/");
    let (first, _) = origin
        .push_image(image, "v1", br#"{"build":1}"#, &[&sample(29, 5000)])
        .await;

    let (headers, _) = expect(
        registry.get_manifest(&format!("hub/{image}"), "v1").await,
        200,
    )
    .await;
    assert_eq!(header(&headers, "docker-content-digest"), first);
    let gets = relay.count(Method::GET, &manifests);
    let heads = relay.count(Method::HEAD, &manifests);

    tokio::time::sleep(Duration::from_millis(1600)).await;
    let (headers, _) = expect(
        registry.get_manifest(&format!("hub/{image}"), "v1").await,
        200,
    )
    .await;
    assert_eq!(header(&headers, "docker-content-digest"), first);
    assert!(
        relay.count(Method::HEAD, &manifests) > heads,
        "the expired tag was not revalidated"
    );
    assert_eq!(
        relay.count(Method::GET, &manifests),
        gets,
        "an unchanged tag was downloaded again"
    );

    let (second, second_manifest) = origin
        .push_image(image, "v1", br#"{"build":2}"#, &[&sample(30, 5000)])
        .await;
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let (headers, body) = expect(
        registry.get_manifest(&format!("hub/{image}"), "v1").await,
        200,
    )
    .await;
    assert_eq!(header(&headers, "docker-content-digest"), second);
    assert_eq!(body, second_manifest);
}

#[tokio::test]
async fn remote_patterns_and_banned_tags_are_denied() {
    let _shared = EXCLUSIVE.read().await;
    let (upstream, _relay, server) = remote_setup().await;
    let origin = Registry::of(&upstream);
    let registry = Registry::of(&server);
    let config = br#"{"architecture":"amd64","os":"linux"}"#;
    let layer = sample(31, 1000);
    let (digest, _) = origin
        .push_image("docker-local/allowed", "v1", config, &[&layer])
        .await;
    let (_, manifest) = origin
        .push_image("docker-local/other", "v1", config, &[&layer])
        .await;
    expect(
        origin
            .put_manifest("docker-local/allowed", "latest", MANIFEST, &manifest)
            .await,
        201,
    )
    .await;

    let (headers, _) = expect(
        registry
            .get_manifest("limited/docker-local/allowed", "v1")
            .await,
        200,
    )
    .await;
    assert_eq!(header(&headers, "docker-content-digest"), digest);
    expect_error(
        registry
            .get_manifest("limited/docker-local/allowed", "latest")
            .await,
        403,
        "DENIED",
    )
    .await;
    expect_error(
        registry
            .get_manifest("limited/docker-local/other", "v1")
            .await,
        403,
        "DENIED",
    )
    .await;
    expect_error(
        registry
            .get(&format!(
                "/v2/limited/docker-local/other/blobs/{}",
                sha256(&layer)
            ))
            .await,
        403,
        "DENIED",
    )
    .await;
}

#[tokio::test]
async fn remote_tags_are_served_from_the_cache_when_the_upstream_is_down() {
    let _shared = EXCLUSIVE.read().await;
    let (upstream, relay, server) = remote_setup().await;
    let origin = Registry::of(&upstream);
    let registry = Registry::of(&server);
    let layer = sample(32, 8000);
    let (digest, manifest) = origin
        .push_image("docker-local/kept", "v1", br#"{"kept":true}"#, &[&layer])
        .await;
    pull_through(&registry, &origin, "docker-local/kept", "v1").await;

    relay.stop();
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let (headers, body) = expect(
        registry.get_manifest("hub/docker-local/kept", "v1").await,
        200,
    )
    .await;
    assert_eq!(body, manifest);
    assert_eq!(header(&headers, "docker-content-digest"), digest);
    assert_eq!(
        registry
            .fetch(&format!(
                "/v2/hub/docker-local/kept/blobs/{}",
                sha256(&layer)
            ))
            .await,
        layer
    );
}

#[tokio::test]
async fn remote_repositories_refuse_writes() {
    let _shared = EXCLUSIVE.read().await;
    let (_upstream, _relay, server) = remote_setup().await;
    let registry = Registry::of(&server);
    let data = sample(33, 100);
    let attempts = [
        registry
            .post_blob("hub/docker-local/img", &sha256(&data), &data)
            .await,
        registry
            .call(Method::POST, "/v2/hub/docker-local/img/blobs/uploads/")
            .await,
        registry
            .put_manifest(
                "hub/docker-local/img",
                "v1",
                MANIFEST,
                &image_manifest(b"{}", &[]),
            )
            .await,
        registry
            .call(Method::DELETE, "/v2/hub/docker-local/img/manifests/v1")
            .await,
    ];
    for response in attempts {
        let url = response.url().to_string();
        let (_, body) = expect(response, 405).await;
        error_codes(&url, &body);
    }
}

#[tokio::test]
async fn remotes_authenticate_to_a_private_upstream() {
    let _shared = EXCLUSIVE.read().await;
    std::env::set_var("OCI_API_TEST_UPSTREAM_PASSWORD", "upstream-s3cret");
    let upstream = Server::start(&auth_yaml("OCI_API_TEST_UPSTREAM_PASSWORD")).await;
    let origin =
        Registry::of(&upstream).with(Credentials::Basic("ci".into(), "upstream-s3cret".into()));
    let layer = sample(34, 4000);
    let (digest, manifest) = origin
        .push_image(
            "docker-private/app",
            "v1",
            br#"{"private":true}"#,
            &[&layer],
        )
        .await;
    let plugin = component(&plugins_dir(), "docker.wasm");
    let yaml = format!(
        "remotes:
  hub:
    type: remote
    package: docker
    base_url: \"{}\"
    username: ci
    password: upstream-s3cret
",
        upstream.url("")
    );
    let server =
        Server::start_with(&yaml, &[(&plugin, "docker.wasm")], Duration::from_secs(5)).await;
    let registry = Registry::of(&server);
    let (headers, body) = expect(
        registry.get_manifest("hub/docker-private/app", "v1").await,
        200,
    )
    .await;
    assert_eq!(body, manifest);
    assert_eq!(header(&headers, "docker-content-digest"), digest);
    assert_eq!(
        registry
            .fetch(&format!(
                "/v2/hub/docker-private/app/blobs/{}",
                sha256(&layer)
            ))
            .await,
        layer
    );
}

/// The 1 GiB blob: `PIECE`-sized pseudo-random pieces, each derived from
/// its index alone, so the same bytes can be produced twice without being
/// kept.
const BIG_LEN: u64 = 1 << 30;
const PIECE: usize = 1 << 20;
const CHUNK: u64 = 64 << 20;

fn piece(index: u64) -> Bytes {
    let mut state = index.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(PIECE);
    for _ in 0..PIECE / 8 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    Bytes::from(out)
}

/// The pieces covering `len` bytes from `start` (both multiples of `PIECE`).
fn pieces(start: u64, len: u64) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> {
    let first = start / PIECE as u64;
    let count = len / PIECE as u64;
    futures::stream::iter((first..first + count).map(|i| Ok(piece(i))))
}

/// The process's peak resident memory while a piece of work runs: VmHWM
/// after resetting it through `/proc/self/clear_refs`, or VmRSS sampled
/// every 50 ms where that file cannot be written.
struct PeakMemory {
    baseline_kib: u64,
    sampler: Option<(Arc<AtomicBool>, Arc<AtomicU64>, std::thread::JoinHandle<()>)>,
}

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

impl PeakMemory {
    fn start() -> PeakMemory {
        if std::fs::write("/proc/self/clear_refs", "5").is_ok() {
            return PeakMemory {
                baseline_kib: status_kib("VmHWM:"),
                sampler: None,
            };
        }
        let baseline_kib = status_kib("VmRSS:");
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(baseline_kib));
        let (thread_stop, thread_peak) = (stop.clone(), peak.clone());
        let thread = std::thread::spawn(move || {
            while !thread_stop.load(Ordering::SeqCst) {
                thread_peak.fetch_max(status_kib("VmRSS:"), Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        PeakMemory {
            baseline_kib,
            sampler: Some((stop, peak, thread)),
        }
    }

    /// How far the peak rose above the baseline, in MiB.
    fn growth_mib(self) -> u64 {
        let peak_kib = match self.sampler {
            None => status_kib("VmHWM:"),
            Some((stop, peak, thread)) => {
                stop.store(true, Ordering::SeqCst);
                thread.join().unwrap();
                peak.load(Ordering::SeqCst).max(status_kib("VmRSS:"))
            }
        };
        peak_kib.saturating_sub(self.baseline_kib) / 1024
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_1_gib_blob_is_pushed_in_chunks_and_pulled_in_bounded_memory() {
    let _alone = EXCLUSIVE.write().await;
    let server = Server::start(LOCAL).await;
    let registry = Registry {
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(900))
            .build()
            .unwrap(),
        ..Registry::of(&server)
    };
    let name = "docker-local/big";
    let mut hasher = Sha256::new();
    let mut generated = pieces(0, BIG_LEN);
    while let Some(piece) = generated.next().await {
        hasher.update(piece.unwrap());
    }
    let digest = format!("sha256:{}", hex(&hasher.finalize()));

    let meter = PeakMemory::start();
    let mut location = registry.start_upload(name).await;
    for start in (0..BIG_LEN).step_by(CHUNK as usize) {
        let response = send(
            registry
                .req(Method::PATCH, &location)
                .header("content-type", OCTETS)
                .header("content-length", CHUNK)
                .header("content-range", format!("{start}-{}", start + CHUNK - 1))
                .body(reqwest::Body::wrap_stream(pieces(start, CHUNK))),
        )
        .await;
        let (headers, _) = expect(response, 202).await;
        assert_eq!(
            header(&headers, "range"),
            format!("0-{}", start + CHUNK - 1)
        );
        location = header(&headers, "location");
    }
    let (headers, _) = expect(registry.close(&location, &digest, None).await, 201).await;
    assert_eq!(header(&headers, "docker-content-digest"), digest);

    let response = registry.get(&format!("/v2/{name}/blobs/{digest}")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        header(response.headers(), "content-length"),
        BIG_LEN.to_string()
    );
    let mut hasher = Sha256::new();
    let mut total = 0u64;
    let mut body = response.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.unwrap();
        total += chunk.len() as u64;
        hasher.update(&chunk);
    }
    assert_eq!(total, BIG_LEN);
    assert_eq!(format!("sha256:{}", hex(&hasher.finalize())), digest);

    let growth_mib = meter.growth_mib();
    eprintln!(
        "oci 1 GiB blob: {} chunked PATCHes of {} MiB, PUT, streamed GET; peak memory grew by {growth_mib} MiB",
        BIG_LEN / CHUNK,
        CHUNK >> 20
    );
    assert!(
        growth_mib < 192,
        "peak memory grew by {growth_mib} MiB for a 1 GiB push and pull"
    );
}

#[tokio::test]
async fn the_root_listing_gives_docker_repositories_their_registry_address() {
    let _shared = EXCLUSIVE.read().await;
    let server = Server::start(LOCAL).await;
    let root = artifactapi_e2e::get_json(&server.url("/")).await;
    let url = |name: &str| {
        root["repositories"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .map(|r| r["url"].as_str().unwrap().to_string())
            .unwrap()
    };
    assert_eq!(url("docker-local"), "/v2/docker-local/");
    assert_eq!(url("uploads"), "/api/v1/remote/uploads/");
}
