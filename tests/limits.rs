//! Admission: past `max_connections` a connection is refused at once and
//! counted; the slot comes back when a session ends.

mod common;

use std::time::Duration;

use common::{Gateway, within};
use futures_util::{SinkExt, StreamExt};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn the_connection_limit_sheds_fast_and_counts() {
    within(20, async {
        let gw = Gateway::builder()
            .limits(|l| l.set("max_connections", 1))
            .start()
            .await;
        let mut first = gw.ws("/echo").await;
        first.send(Message::text("one")).await.unwrap();
        assert_eq!(first.next().await.unwrap().unwrap(), Message::text("one"));

        let started = Instant::now();
        let refused = gw.try_ws("/echo").await;
        assert!(refused.is_err(), "second connection must be refused");
        let waited = started.elapsed();
        assert!(waited < Duration::from_secs(2), "refused after {waited:?}");

        let (_, scrape) = gw.admin_get("/metrics").await;
        let series = "wsgate_connections_rejected_total{reason=\"capacity\"}";
        assert_eq!(common::metric(&scrape, series), Some(1.0), "{scrape}");

        // The admitted session is untouched.
        first.send(Message::text("two")).await.unwrap();
        assert_eq!(first.next().await.unwrap().unwrap(), Message::text("two"));

        // Its slot is released when it ends: after the close handshake a new
        // connection is admitted (the release follows the server's TCP close
        // by a moment, so a few attempts are allowed).
        first.close(None).await.unwrap();
        while first.next().await.is_some() {}
        let mut admitted = None;
        for _ in 0..100 {
            if let Ok(ws) = gw.try_ws("/echo").await {
                admitted = Some(ws);
                break;
            }
            tokio::task::yield_now().await;
        }
        let mut again = admitted.expect("slot released after the session ended");
        again.send(Message::text("three")).await.unwrap();
        assert_eq!(again.next().await.unwrap().unwrap(), Message::text("three"));
    })
    .await
}

#[tokio::test]
async fn per_address_connections_and_handshake_rate_are_limited() {
    within(20, async {
        let gw = Gateway::builder()
            .limits(|l| l.set("max_connections_per_ip", 2))
            .start()
            .await;
        let first = gw.ws("/echo").await;
        let _second = gw.ws("/echo").await;
        let started = Instant::now();
        assert!(gw.try_ws("/echo").await.is_err());
        assert!(started.elapsed() < Duration::from_secs(2));
        let (_, scrape) = gw.admin_get("/metrics").await;
        let series = "wsgate_connections_rejected_total{reason=\"per_ip\"}";
        assert_eq!(common::metric(&scrape, series), Some(1.0), "{scrape}");
        drop(first);

        // One new connection a second from one address: the next one, right
        // after, is refused whatever else is free.
        let gw = Gateway::builder()
            .limits(|l| l.set("handshake_rate_per_ip", 1))
            .start()
            .await;
        let _only = gw.ws("/echo").await;
        assert!(gw.try_ws("/echo").await.is_err());
        let (_, scrape) = gw.admin_get("/metrics").await;
        let series = "wsgate_connections_rejected_total{reason=\"rate_per_ip\"}";
        assert_eq!(common::metric(&scrape, series), Some(1.0), "{scrape}");
    })
    .await
}
