//! Drain: readiness turns 503 first, open sessions get Close 1001, and
//! `run()` returns within the drain deadline even if a client never answers.

mod common;

use std::time::Duration;

use common::{Gateway, Route, within};
use futures_util::StreamExt;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

#[tokio::test]
async fn sessions_get_1001_and_run_returns_within_the_drain_deadline() {
    within(20, async {
        let mut gw = Gateway::builder()
            .limits(|l| l.set("drain_timeout", "1500ms").set("close_timeout", "10s"))
            .start()
            .await;
        assert_eq!(gw.admin_get("/readyz").await.0, 200);
        let mut a = gw.ws("/echo").await;
        let mut b = gw.ws("/echo").await;
        // A raw client that completes the upgrade and then never answers, so
        // the drain has something to wait for.
        let _stuck = gw.raw_upgrade("/echo").await;

        let started = Instant::now();
        gw.stop();
        for ws in [&mut a, &mut b] {
            match ws.next().await {
                Some(Ok(Message::Close(Some(frame)))) => {
                    assert_eq!(frame.code, CloseCode::Away);
                    assert_eq!(frame.reason.as_str(), "server shutting down");
                }
                other => panic!("expected Close 1001, got {other:?}"),
            }
        }
        // Draining: not ready, still alive.
        assert_eq!(gw.admin_get("/readyz").await.0, 503);
        assert_eq!(gw.admin_get("/healthz").await.0, 200);

        let result = (&mut gw.join).await.expect("run() did not panic");
        assert!(result.is_ok());
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(1400),
            "waited for the stuck session: {took:?}"
        );
        assert!(
            took < Duration::from_secs(5),
            "returned within the drain deadline: {took:?}"
        );
    })
    .await
}

#[tokio::test]
async fn a_cooperative_client_lets_shutdown_finish_at_once() {
    within(10, async {
        let mut gw = Gateway::builder()
            .limits(|l| l.set("drain_timeout", "30s"))
            .start()
            .await;
        let mut ws = gw.ws("/echo").await;
        let started = Instant::now();
        gw.stop();
        // The client answers the server's Close as a normal client does.
        while let Some(Ok(_)) = ws.next().await {}
        (&mut gw.join).await.unwrap().unwrap();
        assert!(started.elapsed() < Duration::from_secs(5));
    })
    .await
}

#[tokio::test]
async fn a_client_that_stops_reading_does_not_hold_up_the_drain() {
    within(30, async {
        let mut gw = Gateway::builder()
            .limits(|l| {
                l.set("send_timeout", "60s")
                    .set("drain_timeout", "30s")
                    .set("close_timeout", "500ms")
            })
            .route(Route::echo("/flood").name("flood"))
            .start()
            .await;
        // Never reads; a small, fixed receive buffer.
        let mut ws = gw.ws_small_rcvbuf("/flood").await;
        let sending = tokio::spawn(async move {
            use futures_util::SinkExt;
            let _ = ws.send(Message::binary(vec![0u8; 6 << 20])).await;
            ws // never read from
        });
        // Wait until the gateway has the whole message: it is now writing
        // the echo to a client that does not read.
        let series = "wsgate_messages_total{route=\"flood\",direction=\"client_to_upstream\"}";
        common::wait_for_metric(&gw, series, 1.0).await;
        let started = Instant::now();
        gw.stop();
        (&mut gw.join).await.unwrap().unwrap();
        let took = started.elapsed();
        assert!(
            took < Duration::from_secs(5),
            "drain took {took:?}; send_timeout is 60s"
        );
        drop(sending);
    })
    .await
}
