//! Subprotocols on echo and hub routes: the client's first offer that the
//! route lists is answered; an offer naming none is refused with 400 (the
//! body naming the route's list) or, by the route's setting, accepted
//! without one; hub routes answer their own protocol's name by default.

mod common;

use common::*;
use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::Message;

fn protocol_header(offer: &str) -> String {
    format!("Sec-WebSocket-Protocol: {offer}\r\n")
}

async fn gateway() -> Running {
    Gateway::builder()
        .route(Route::echo("/strict").key("subprotocols", vec!["chat", "superchat"]))
        .route(
            Route::echo("/lax")
                .key("subprotocols", vec!["chat"])
                .key("unknown_subprotocol", "accept"),
        )
        .route(Route::hub("/hub"))
        .route(Route::hub("/room").key("protocol", "raw"))
        .start()
        .await
}

#[tokio::test]
async fn first_listed_offer_is_selected_and_the_route_works() {
    within(20, async {
        let gw = gateway().await;
        let (mut ws, response) = gw
            .ws_with(
                "/strict",
                &[("sec-websocket-protocol", "v9, superchat, chat")],
            )
            .await;
        assert_eq!(response.headers()["sec-websocket-protocol"], "superchat");
        ws.send(Message::text("hello")).await.unwrap();
        assert_eq!(next_data(&mut ws).await, Message::text("hello"));
        // No offer: no answer, and the session works as before.
        let mut plain = gw.ws("/strict").await;
        plain.send(Message::binary(vec![1u8, 2])).await.unwrap();
        assert_eq!(next_data(&mut plain).await, Message::binary(vec![1u8, 2]));
    })
    .await;
}

#[tokio::test]
async fn unlisted_offer_is_refused_naming_the_list() {
    within(20, async {
        let gw = gateway().await;
        let answer = gw
            .raw(upgrade_request("/strict", &protocol_header("v1.json")).as_bytes())
            .await;
        assert_eq!(status_of(&answer), 400, "{answer}");
        assert!(
            answer.contains("offered: v1.json; this route serves: chat, superchat"),
            "{answer}"
        );
        // The default echo route lists nothing: an offer is refused, not
        // silently answered without the header a browser needs.
        let answer = gw
            .raw(upgrade_request("/echo", &protocol_header("chat")).as_bytes())
            .await;
        assert_eq!(status_of(&answer), 400, "{answer}");
        // Counted by reason (the recorder is shared by this file's tests).
        let scrape = gw.admin_get("/metrics").await.1;
        let counted = metric(
            &scrape,
            "wsgate_handshake_failures_total{reason=\"subprotocol\"}",
        );
        assert!(counted >= Some(2.0), "{counted:?}");
    })
    .await;
}

#[tokio::test]
async fn accept_setting_answers_without_a_subprotocol() {
    within(20, async {
        let gw = gateway().await;
        let head = gw
            .raw_head(upgrade_request("/lax", &protocol_header("v1.json")).as_bytes())
            .await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        assert!(
            !head.to_ascii_lowercase().contains("sec-websocket-protocol"),
            "{head}"
        );
    })
    .await;
}

#[tokio::test]
async fn hub_routes_answer_their_own_protocol_names() {
    within(20, async {
        let gw = gateway().await;
        let (mut ws, response) = gw
            .ws_with(
                "/hub?name=ann",
                &[("sec-websocket-protocol", "wsgate.json")],
            )
            .await;
        assert_eq!(response.headers()["sec-websocket-protocol"], "wsgate.json");
        let welcome = next_data(&mut ws).await;
        assert!(
            welcome.to_text().unwrap().contains("welcome"),
            "{welcome:?}"
        );
        let (_raw, response) = gw
            .ws_with(
                "/room?name=bob",
                &[("sec-websocket-protocol", "x, wsgate.raw")],
            )
            .await;
        assert_eq!(response.headers()["sec-websocket-protocol"], "wsgate.raw");
        let answer = gw
            .raw(upgrade_request("/hub?name=cy", &protocol_header("wsgate.raw")).as_bytes())
            .await;
        assert_eq!(status_of(&answer), 400, "{answer}");
        assert!(
            answer.contains("this route serves: wsgate.json"),
            "{answer}"
        );
        close(ws).await;
    })
    .await;
}
