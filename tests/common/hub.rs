//! The hub's JSON protocol from a client's side, and its HTTP API: one
//! helper per request, for the hub tests on one node and on many.

use std::time::Duration;

use bytes::Bytes;
use futures_util::SinkExt;
use http_body_util::Full;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use super::{Running, Ws, next_data, request};

/// The next message, a JSON text frame, parsed.
pub async fn next_json(ws: &mut Ws) -> Value {
    match next_data(ws).await {
        Message::Text(t) => serde_json::from_str(&t).unwrap_or_else(|e| panic!("{e}: {t}")),
        other => panic!("expected a JSON text frame, got {other:?}"),
    }
}

/// The next JSON message if one comes within `wait`.
pub async fn next_json_within(ws: &mut Ws, wait: Duration) -> Option<Value> {
    tokio::time::timeout(wait, next_json(ws)).await.ok()
}

pub async fn send_json(ws: &mut Ws, v: Value) {
    ws.send(Message::text(v.to_string())).await.unwrap();
}

/// A JSON-route client, past its welcome.
pub async fn json_client(gw: &Running, path: &str, name: &str) -> Ws {
    let mut ws = gw.ws(&format!("{path}?name={name}")).await;
    assert_eq!(
        next_json(&mut ws).await,
        json!({"type": "welcome", "client": name})
    );
    ws
}

/// Take the `epoch` out of a message, ack or gap (to compare the rest),
/// checking its form: 16 hex digits.
pub fn epoch_of(v: &mut Value) -> String {
    let epoch = v
        .as_object_mut()
        .and_then(|o| o.remove("epoch"))
        .unwrap_or_else(|| panic!("no epoch in {v}"));
    let epoch = epoch.as_str().expect("an epoch is a string").to_owned();
    assert!(
        epoch.len() == 16 && epoch.bytes().all(|b| b.is_ascii_hexdigit()),
        "{epoch:?}"
    );
    epoch
}

/// Subscribe to `channel`; returns the answer.
pub async fn subscribe(ws: &mut Ws, channel: &str, id: u64) -> Value {
    send_json(
        ws,
        json!({"type": "subscribe", "channel": channel, "id": id}),
    )
    .await;
    next_json(ws).await
}

/// A request to the hub's HTTP API on the admin listener; returns (status, body).
pub async fn api(
    gw: &Running,
    method: &str,
    path: &str,
    token: Option<&str>,
    content_type: &str,
    body: &[u8],
) -> (u16, String) {
    let mut request =
        request(method.parse().unwrap(), gw.admin_addr, path).header("content-type", content_type);
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    gw.admin_request(
        request
            .body(Full::new(Bytes::copy_from_slice(body)))
            .unwrap(),
    )
    .await
}

/// Publish JSON `data` to `channel` through `gw`'s HTTP API with `token`;
/// the answer, which must be a 200.
pub async fn api_publish(gw: &Running, token: &str, channel: &str, data: &Value) -> Value {
    let (status, body) = api(
        gw,
        "POST",
        &format!("/api/channels/{channel}/publish"),
        Some(token),
        "application/json",
        data.to_string().as_bytes(),
    )
    .await;
    assert_eq!(status, 200, "API publish to {channel}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
}
