//! Streaming: a large upstream file passes through without being held in
//! memory. Alone in its own test binary, so the process's peak memory is
//! this test's.

use artifactapi_e2e::{client, header, Server, Upstream};
use futures::StreamExt;

#[tokio::test]
async fn a_large_file_streams_without_being_held_in_memory() {
    let upstream = Upstream::start().await;
    let server = Server::start(&format!(
        "remotes:\n  files:\n    type: remote\n    package: generic\n    base_url: \"{}\"\n",
        upstream.url()
    ))
    .await;
    let len: usize = 512 << 20;
    let url = server.url(&format!("/api/v1/remote/files/gen/{len}"));
    let before = peak_rss_kib();
    let response = client().get(&url).send().await.unwrap();
    assert_eq!(
        header(response.headers(), "content-length"),
        len.to_string()
    );
    let mut stream = response.bytes_stream();
    let mut total = 0usize;
    while let Some(chunk) = stream.next().await {
        total += chunk.unwrap().len();
    }
    assert_eq!(total, len);
    let growth_mib = (peak_rss_kib().saturating_sub(before)) / 1024;
    assert!(
        growth_mib < 128,
        "peak memory grew by {growth_mib} MiB for a {} MiB transfer",
        len >> 20
    );
}

fn peak_rss_kib() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}
