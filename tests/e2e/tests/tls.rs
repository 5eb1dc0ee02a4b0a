//! The TLS listener of the real binary (`--tls-cert`/`--tls-key`): it
//! serves over TLS, a client that opens a connection and says nothing holds
//! up no one, and renewed certificate files are picked up without a
//! restart (a broken pair is refused and the current one keeps serving).

use std::net::SocketAddr;
use std::time::Duration;

use artifactapi_e2e::cluster::Replica;
use artifactapi_e2e::eventually;
use artifactapi_e2e::tls::TestCa;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::CertificateDer;

fn der(path: &std::path::Path) -> CertificateDer<'static> {
    CertificateDer::from_pem_file(path).unwrap()
}

#[tokio::test]
async fn the_server_listens_with_tls_and_picks_up_renewed_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path());
    let live = dir.path().join("live");
    std::fs::create_dir_all(&live).unwrap();
    let (first_cert, first_key) = ca.issue(dir.path(), "first");
    let (cert, key) = (live.join("server.crt"), live.join("server.key"));
    std::fs::copy(&first_cert, &cert).unwrap();
    std::fs::copy(&first_key, &key).unwrap();
    let server = Replica::start_embedded(
        "remotes:\n  files:\n    type: local\n    package: generic\n",
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
        &[],
    )
    .await;
    let addr: SocketAddr = server.host().parse().unwrap();
    let url = format!("https://{}/api/v1/remote/files/a.txt", server.host());
    let client = ca.client();

    // A connection that never starts its handshake blocks nobody.
    let _silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    let put = client.put(&url).body("hello").send().await.unwrap();
    assert_eq!(put.status(), 201);
    let got = client.get(&url).send().await.unwrap();
    assert_eq!(got.text().await.unwrap(), "hello");
    assert_eq!(ca.presented(addr).await, der(&first_cert));

    // A renewal: the new pair is written beside and renamed into place,
    // the key first, so for a moment the pair does not match.
    let (second_cert, second_key) = ca.issue(dir.path(), "second");
    std::fs::copy(&second_key, live.join(".key.tmp")).unwrap();
    std::fs::rename(live.join(".key.tmp"), &key).unwrap();
    std::fs::copy(&second_cert, live.join(".crt.tmp")).unwrap();
    std::fs::rename(live.join(".crt.tmp"), &cert).unwrap();
    let renewed = eventually(Duration::from_secs(10), || async {
        ca.presented(addr).await == der(&second_cert)
    })
    .await;
    assert!(
        renewed,
        "the renewed certificate is presented; log:\n{}",
        server.log()
    );

    std::fs::write(&cert, "not a certificate").unwrap();
    let refused = eventually(Duration::from_secs(10), || async {
        server.log().contains("TLS certificate files refused")
    })
    .await;
    assert!(
        refused,
        "the broken file is refused; log:\n{}",
        server.log()
    );
    assert_eq!(ca.presented(addr).await, der(&second_cert));
    let got = client.get(&url).send().await.unwrap();
    assert_eq!(got.status(), 200, "a broken file leaves the server serving");
}
