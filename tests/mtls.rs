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
