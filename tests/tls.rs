//! TLS: certificates from gen-cert, SNI selection, verification failures,
//! key formats, protocol versions and ALPN.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use common::{Certs, Gateway, certs, within};
use futures_util::{SinkExt, StreamExt};
use rustls_pki_types::ServerName;
use rustls_pki_types::pem::PemObject;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::Message;

async fn echo_once(ws: &mut common::Ws) {
    ws.send(Message::text("ping?")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("ping?"));
}

#[tokio::test]
async fn sni_picks_the_certificate_and_a_wrong_ca_fails() {
    within(20, async {
        let a = certs(&["a.test"]);
        let b = certs(&["b.test"]);
        let w = certs(&["x.w.test"]);
        let (b_ca, w_ca) = (b.ca.clone(), w.ca.clone());
        let gw = Gateway::builder()
            .with_certs(a)
            .sni("b.test", &b)
            .sni("*.w.test", &w)
            .start()
            .await;
        let a_ca = gw.certs.ca.clone();

        // Each name gets its own certificate: only that certificate's CA verifies it.
        echo_once(
            &mut common::ws_connect(gw.addr, "b.test", "/echo", &b_ca)
                .await
                .unwrap(),
        )
        .await;
        echo_once(
            &mut common::ws_connect(gw.addr, "a.test", "/echo", &a_ca)
                .await
                .unwrap(),
        )
        .await;
        echo_once(
            &mut common::ws_connect(gw.addr, "x.w.test", "/echo", &w_ca)
                .await
                .unwrap(),
        )
        .await;

        // The wrong CA fails verification.
        let err = common::tls_connect(gw.addr, "b.test", &a_ca)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("certificate"), "{err}");
        let err = common::tls_connect(gw.addr, "a.test", &b_ca)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("certificate"), "{err}");
        // Counted as the client refusing the certificate (rustls says so
        // with an alert: decrypt_error, the chain's signature), and a
        // connection that ends mid-handshake as such.
        let series = r#"wsgate_tls_handshake_failures_total{reason="bad_certificate"}"#;
        common::wait_for_metric(&gw, series, 2.0).await;
        let mut tcp = TcpStream::connect(gw.addr).await.unwrap();
        // The start of a ClientHello record, then nothing.
        tokio::io::AsyncWriteExt::write_all(&mut tcp, &[0x16, 0x03, 0x01, 0x00, 0x80, 0x01])
            .await
            .unwrap();
        drop(tcp);
        let series = r#"wsgate_tls_handshake_failures_total{reason="eof"}"#;
        common::wait_for_metric(&gw, series, 1.0).await;
        // A client with nothing in common (OpenSSL offering TLS 1.2 with a
        // static-RSA cipher suite only, which rustls never serves).
        let refused = tokio::process::Command::new("openssl")
            .args([
                "s_client",
                "-tls1_2",
                "-cipher",
                "AES128-SHA",
                "-servername",
                "a.test",
            ])
            .args(["-connect", &gw.addr.to_string()])
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .expect("openssl runs (scripts/test installs it)");
        assert!(!refused.status.success(), "the handshake should fail");
        let series = r#"wsgate_tls_handshake_failures_total{reason="incompatible"}"#;
        common::wait_for_metric(&gw, series, 1.0).await;
    })
    .await
}

#[tokio::test]
async fn gen_cert_output_works_by_name_and_by_ip() {
    within(30, async {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_wsgate"))
            .args([
                "gen-cert",
                "--host",
                "localhost",
                "--host",
                "127.0.0.1",
                "--out",
            ])
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let chain = std::fs::read_to_string(dir.path().join("cert.pem")).unwrap();
        assert_eq!(chain.matches("BEGIN CERTIFICATE").count(), 2, "leaf + CA");
        let c = Certs {
            ca: dir.path().join("ca.pem"),
            cert: dir.path().join("cert.pem"),
            key: dir.path().join("key.pem"),
            dir,
        };
        let gw = Gateway::builder().with_certs(c).start().await;
        for name in ["localhost", "127.0.0.1"] {
            let mut ws = common::ws_connect(gw.addr, name, "/echo", &gw.certs.ca)
                .await
                .unwrap();
            echo_once(&mut ws).await;
        }
    })
    .await
}

#[tokio::test]
async fn tls12_clients_and_alpn() {
    within(20, async {
        let gw = Gateway::builder().start().await;
        let mut roots = rustls::RootCertStore::empty();
        roots.add_parsable_certificates(
            rustls_pki_types::CertificateDer::pem_file_iter(&gw.certs.ca)
                .unwrap()
                .map(Result::unwrap),
        );
        for (versions, alpn) in [
            (
                &[&rustls::version::TLS12][..],
                vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            ),
            (&[&rustls::version::TLS13][..], vec![]),
        ] {
            let mut config = rustls::ClientConfig::builder_with_provider(wsgate::tls::provider())
                .with_protocol_versions(versions)
                .unwrap()
                .with_root_certificates(roots.clone())
                .with_no_client_auth();
            config.alpn_protocols = alpn.clone();
            let tcp = TcpStream::connect(gw.addr).await.unwrap();
            let tls = TlsConnector::from(Arc::new(config))
                .connect(ServerName::try_from("localhost").unwrap(), tcp)
                .await
                .unwrap();
            let negotiated = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
            assert_eq!(negotiated, (!alpn.is_empty()).then(|| b"http/1.1".to_vec()));
            let url = format!("wss://localhost:{}/echo", gw.addr.port());
            let (mut ws, _) = tokio_tungstenite::client_async(url, tls).await.unwrap();
            echo_once(&mut ws).await;
        }
    })
    .await
}

fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Start-up's checks (`wsgate::preflight`) on a config whose default
/// certificate is `cert` and `key`: each issue names its key.
fn server_config(cert: &Path, key: &Path) -> Result<(), wsgate::Error> {
    wsgate::preflight(&Gateway::builder().tls_files(cert, key).config())
}

#[test]
fn key_formats_and_mismatches() {
    let c = certs(&["localhost"]);
    let d = c.dir.path();
    let p = |name: &str| d.join(name).to_str().unwrap().to_owned();
    // SEC1 EC key, converted from the PKCS#8 one rcgen wrote.
    openssl(&["ec", "-in", &p("key.pem"), "-out", &p("sec1.pem")]);
    assert!(
        std::fs::read_to_string(d.join("sec1.pem"))
            .unwrap()
            .contains("BEGIN EC PRIVATE KEY")
    );
    assert!(server_config(&c.cert, &d.join("sec1.pem")).is_ok());
    // PKCS#1 RSA key with its own certificate.
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        &p("rsa8.pem"),
        "-out",
        &p("rsa.crt"),
        "-days",
        "2",
        "-subj",
        "/CN=localhost",
    ]);
    openssl(&[
        "rsa",
        "-in",
        &p("rsa8.pem"),
        "-traditional",
        "-out",
        &p("rsa1.pem"),
    ]);
    assert!(
        std::fs::read_to_string(d.join("rsa1.pem"))
            .unwrap()
            .contains("BEGIN RSA PRIVATE KEY")
    );
    assert!(server_config(&d.join("rsa.crt"), &d.join("rsa1.pem")).is_ok());
    // A key that does not belong to the certificate is refused, naming tls.key.
    let wsgate::Error::Config(err) = server_config(&c.cert, &d.join("rsa1.pem")).unwrap_err();
    assert_eq!(err[0].key, "tls.key", "{err:?}");
    // A file with no certificate in it names tls.cert.
    let wsgate::Error::Config(err) = server_config(&c.key, &c.key).unwrap_err();
    assert_eq!(err[0].key, "tls.cert", "{err:?}");
}
