//! The Redis backplane's connection: TLS with the operator's own CA, an
//! ACL user with a password, a database number; the password never in
//! what wsgate prints.

mod common;

use common::{Gateway, Redis, Route, Ws, next_data, wait_for_readyz, within};
use futures_util::SinkExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

async fn next_json(ws: &mut Ws) -> Value {
    match next_data(ws).await {
        Message::Text(t) => serde_json::from_str(&t).unwrap_or_else(|e| panic!("{e}: {t}")),
        other => panic!("expected a JSON text frame, got {other:?}"),
    }
}

async fn send_json(ws: &mut Ws, v: Value) {
    ws.send(Message::text(v.to_string())).await.unwrap();
}

/// A node on the TLS Redis as user `app` in database 3.
fn node(url: &str, ca: &std::path::Path) -> Gateway {
    let mut backplane = toml::Table::new();
    backplane.insert("kind".into(), "redis".into());
    backplane.insert("url".into(), url.into());
    backplane.insert("tls_ca".into(), ca.display().to_string().into());
    Gateway::builder()
        .hub(|h| h.set("backplane", toml::Value::Table(backplane)))
        .route(Route::hub("/hub").name("hub"))
}

#[tokio::test]
async fn nodes_share_a_hub_over_tls_as_an_acl_user_in_a_numbered_database() {
    within(60, async {
        let certs = common::certs(&["localhost"]);
        let tls =
            |flag: &str, path: &std::path::Path| [flag.to_owned(), path.display().to_string()];
        let mut args: Vec<String> = [
            "--port",
            "0",
            "--tls-port",
            "{port}",
            "--tls-auth-clients",
            "no",
        ]
        .map(str::to_owned)
        .to_vec();
        args.extend(tls("--tls-cert-file", &certs.cert));
        args.extend(tls("--tls-key-file", &certs.key));
        args.extend(tls("--tls-ca-cert-file", &certs.ca));
        args.extend(["--user", "default", "off"].map(str::to_owned));
        args.extend(["--user", "app", "on", ">s3cret", "~*", "&*", "+@all"].map(str::to_owned));
        let Some(redis) = Redis::start_with(args) else {
            return;
        };
        let url = format!("rediss://app:s3cret@localhost:{}/3", redis.port);
        let (a, b) = (
            node(&url, &certs.ca).start().await,
            node(&url, &certs.ca).start().await,
        );
        wait_for_readyz(&a, "ready").await;
        wait_for_readyz(&b, "ready").await;

        let mut bob = b.ws("/hub?name=bob").await;
        next_json(&mut bob).await;
        send_json(
            &mut bob,
            json!({"type": "subscribe", "channel": "c", "id": 1}),
        )
        .await;
        assert_eq!(next_json(&mut bob).await["type"], "ack");
        let mut ann = a.ws("/hub?name=ann").await;
        next_json(&mut ann).await;
        send_json(
            &mut ann,
            json!({"type": "publish", "channel": "c", "id": 2, "data": "hi"}),
        )
        .await;
        let ack = next_json(&mut ann).await;
        assert_eq!(
            (ack["type"].as_str(), ack["seq"].as_u64()),
            (Some("ack"), Some(1))
        );
        let msg = next_json(&mut bob).await;
        assert_eq!(
            (msg["data"].as_str(), msg["from"].as_str()),
            (Some("hi"), Some("ann"))
        );

        // The wrong password: the node serves alone, and says so.
        let wrong = format!("rediss://app:wrong@localhost:{}/3", redis.port);
        let c = node(&wrong, &certs.ca).start().await;
        let (status, body) = c.admin_get("/readyz").await;
        assert_eq!(status, 200);
        assert!(body.starts_with("degraded"), "{body}");
        // It keeps trying, and keeps saying why.
        let (_, scrape) = c.admin_get("/metrics").await;
        assert!(
            scrape.contains("wsgate_backplane_reconnects_total"),
            "{scrape}"
        );
    })
    .await
}
