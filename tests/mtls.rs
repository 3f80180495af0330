//! TLS client certificates: required and optional on the listener, per SNI
//! name, a certificate from another CA, and the certificate's name as the
//! hub client's name.

mod common;

use common::{
    Certs, Gateway, Route, Running, certs, next_data, path, within, ws_connect,
    ws_connect_with_cert,
};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

/// A client certificate (CN `name`, clientAuth) and the CA that signed it.
fn client(name: &str) -> Certs {
    certs(&[name])
}

async fn with_cert(
    gw: &Running,
    host: &str,
    route: &str,
    who: &Certs,
) -> Result<common::Ws, String> {
    ws_connect_with_cert(gw.addr, host, route, &gw.certs.ca, (&who.cert, &who.key))
        .await
        .map_err(|e| e.to_string())
}

async fn without_cert(gw: &Running, host: &str, route: &str) -> Result<common::Ws, String> {
    ws_connect(gw.addr, host, route, &gw.certs.ca)
        .await
        .map_err(|e| e.to_string())
}

async fn welcome_name(ws: &mut common::Ws) -> Value {
    let Message::Text(text) = next_data(ws).await else {
        panic!("a text welcome");
    };
    serde_json::from_str::<Value>(&text).unwrap()["client"].clone()
}

#[tokio::test]
async fn required_client_certificates() {
    within(20, async {
        let alice = client("alice");
        let mallory = client("mallory");
        let gw = Gateway::builder()
            .tls(|t| {
                t.set("client_ca", path(&alice.ca))
                    .set("client_auth", "required")
            })
            .route(Route::hub("/hub").name("hub").key("client_cert", true))
            .start()
            .await;
        let mut ws = with_cert(&gw, "localhost", "/hub", &alice)
            .await
            .expect("alice's certificate is accepted");
        assert_eq!(
            welcome_name(&mut ws).await,
            json!("alice"),
            "the certificate names the client"
        );
        assert!(
            without_cert(&gw, "localhost", "/echo").await.is_err(),
            "no certificate, no TLS"
        );
        // Neither an incompatible client, nor a refusal of ours, nor an
        // EOF: what is left.
        let series = r#"wsgate_tls_handshake_failures_total{reason="error"}"#;
        loop {
            let (_, scrape) = gw.admin_get("/metrics").await;
            if common::metric(&scrape, series).is_some_and(|n| n >= 1.0) {
                break;
            }
            tokio::task::yield_now().await;
        }
        let other_ca = with_cert(&gw, "localhost", "/echo", &mallory).await;
        assert!(
            other_ca.is_err(),
            "a certificate from another CA is refused"
        );
    })
    .await;
}

#[tokio::test]
async fn optional_client_certificates_and_routes_that_require_one() {
    within(20, async {
        let alice = client("alice");
        let mallory = client("mallory");
        let gw = Gateway::builder()
            .tls(|t| {
                t.set("client_ca", path(&alice.ca))
                    .set("client_auth", "optional")
            })
            .route(Route::hub("/hub").name("hub").key("client_cert", true))
            .start()
            .await;
        assert!(
            without_cert(&gw, "localhost", "/echo").await.is_ok(),
            "optional: none is fine"
        );
        let refused = without_cert(&gw, "localhost", "/hub").await.unwrap_err();
        assert!(refused.contains("401"), "{refused}");
        let mut ws = with_cert(&gw, "localhost", "/hub", &alice).await.unwrap();
        assert_eq!(welcome_name(&mut ws).await, json!("alice"));
        assert!(
            with_cert(&gw, "localhost", "/echo", &mallory)
                .await
                .is_err(),
            "another CA"
        );
        let asked = with_cert(&gw, "localhost", "/hub?name=bob", &alice)
            .await
            .unwrap_err();
        assert!(
            asked.contains("403"),
            "the certificate names the client: {asked}"
        );
    })
    .await;
}

#[tokio::test]
async fn one_sni_name_requires_certificates() {
    within(20, async {
        let alice = client("alice");
        let secure = certs(&["secure.test"]);
        let gw = Gateway::builder()
            .sni_with("secure.test", &secure, |e| {
                e.set("client_ca", path(&alice.ca))
            })
            .start()
            .await;
        assert!(
            without_cert(&gw, "localhost", "/echo").await.is_ok(),
            "the listener asks for none"
        );
        let secure_ca = &secure.ca;
        let plain = ws_connect(gw.addr, "secure.test", "/echo", secure_ca).await;
        assert!(plain.is_err(), "secure.test requires a certificate");
        let chain = (alice.cert.as_path(), alice.key.as_path());
        let ok = ws_connect_with_cert(gw.addr, "secure.test", "/echo", secure_ca, chain).await;
        assert!(ok.is_ok(), "{:?}", ok.err());
    })
    .await;
}

/// The first certificate in a PEM file.
fn leaf_of(pem: &std::path::Path) -> Vec<u8> {
    use rustls_pki_types::pem::PemObject;
    let first = rustls_pki_types::CertificateDer::pem_file_iter(pem)
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    first.to_vec()
}

/// A trailing dot (`secure.test.`, a fully qualified name) is the same
/// SNI name: its entry's certificate and its entry's client CA, never the
/// listener's. (Before, it missed the entry: the listener's CA verified the
/// certificate, which then counted for `secure.test`'s routes.)
#[tokio::test]
async fn a_trailing_dot_is_the_same_sni_name() {
    within(20, async {
        let alice = client("alice");
        let secure = certs(&["secure.test", "*.wild.test"]);
        let gw = Gateway::builder()
            .sni_with("secure.test", &secure, |e| {
                e.set("client_ca", path(&alice.ca))
                    .set("client_auth", "required")
            })
            .sni_with("*.wild.test", &secure, |e| {
                e.set("client_ca", path(&alice.ca))
                    .set("client_auth", "required")
            })
            .start()
            .await;
        const CERTIFICATE_REQUEST: u8 = 13;
        for sni in [
            "secure.test",
            "secure.test.",
            "Secure.Test.",
            "a.wild.test",
            "a.wild.test.",
        ] {
            let (types, leaf) = tls12_flight(&gw, sni).await;
            assert!(
                leaf == leaf_of(&secure.cert),
                "{sni}: the entry's certificate"
            );
            assert!(
                types.contains(&CERTIFICATE_REQUEST),
                "{sni}: the entry's client_auth: {types:?}"
            );
        }
        for sni in ["localhost", "localhost.", "other.test."] {
            let (types, leaf) = tls12_flight(&gw, sni).await;
            assert!(
                leaf == leaf_of(&gw.certs.cert),
                "{sni}: the default certificate"
            );
            assert!(
                !types.contains(&CERTIFICATE_REQUEST),
                "{sni}: the listener asks for none: {types:?}"
            );
        }
    })
    .await;
}

/// The server's first flight (its handshake message types and its leaf
/// certificate) for a TLS 1.2 ClientHello naming `sni` verbatim. rustls'
/// client trims a trailing dot from the SNI name (RFC 6066), so its hello
/// is rewritten here to carry exactly `sni`; other clients (`openssl
/// s_client -servername secure.test.`) send the dot. TLS 1.2 shows the
/// Certificate and CertificateRequest in the clear, which is all this
/// needs: the handshake is not completed.
async fn tls12_flight(gw: &Running, sni: &str) -> (Vec<u8>, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let config = rustls::ClientConfig::builder_with_provider(wsgate::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let placeholder = rustls_pki_types::ServerName::try_from("placeholder.test").unwrap();
    let mut client = rustls::ClientConnection::new(config.into(), placeholder).unwrap();
    let mut hello = Vec::new();
    client.write_tls(&mut hello).unwrap();
    let hello = with_sni(&hello, b"placeholder.test", sni.as_bytes());

    let mut tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    tcp.write_all(&hello).await.unwrap();
    let (mut handshake, mut types, mut leaf) = (Vec::new(), Vec::new(), Vec::new());
    while !types.contains(&14) {
        let mut header = [0u8; 5];
        tcp.read_exact(&mut header).await.unwrap();
        assert_eq!(header[0], 0x16, "a handshake record, not an alert");
        let mut body = vec![0u8; usize::from(u16::from_be_bytes([header[3], header[4]]))];
        tcp.read_exact(&mut body).await.unwrap();
        handshake.extend_from_slice(&body);
        while handshake.len() >= 4 {
            let len = u24(&handshake[1..4]);
            if handshake.len() < 4 + len {
                break;
            }
            let message: Vec<u8> = handshake.drain(..4 + len).collect();
            types.push(message[0]);
            if message[0] == 11 {
                // Certificate: the list's length, then the first one's.
                let first = u24(&message[7..10]);
                leaf = message[10..10 + first].to_vec();
            }
        }
    }
    (types, leaf)
}

fn u24(b: &[u8]) -> usize {
    (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2])
}

/// `hello` (one record, one ClientHello) with the SNI name `old` replaced
/// by `new`, every length on the way adjusted.
fn with_sni(hello: &[u8], old: &[u8], new: &[u8]) -> Vec<u8> {
    let at = hello
        .windows(old.len())
        .position(|w| w == old)
        .expect("the SNI name in the hello");
    let grow = new.len() as isize - old.len() as isize;
    let mut out = [&hello[..at], new, &hello[at + old.len()..]].concat();
    let add = |out: &mut Vec<u8>, at: usize, width: usize| {
        let mut v = 0isize;
        for b in &out[at..at + width] {
            v = (v << 8) | isize::from(*b);
        }
        let v = (v + grow) as usize;
        for i in 0..width {
            out[at + i] = (v >> (8 * (width - 1 - i))) as u8;
        }
    };
    add(&mut out, 3, 2); // record
    add(&mut out, 6, 3); // ClientHello
    // Session id, cipher suites, compression methods, then the extensions.
    let mut p = 9 + 2 + 32;
    p += 1 + usize::from(out[p]);
    p += 2 + usize::from(u16::from_be_bytes([out[p], out[p + 1]]));
    p += 1 + usize::from(out[p]);
    add(&mut out, p, 2); // all extensions
    // server_name: type 0, length, list length, name type 0, name length.
    let (name_len, list_len, ext_len) = (at - 2, at - 5, at - 7);
    assert_eq!(
        &out[ext_len - 2..ext_len],
        &[0, 0],
        "the server_name extension"
    );
    for field in [ext_len, list_len, name_len] {
        add(&mut out, field, 2);
    }
    out
}
