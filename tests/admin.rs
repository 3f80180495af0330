//! The admin listener under abuse: a cap on its connections, and one
//! deadline for each request head and body (`limits.handshake_timeout`),
//! so a slow or idle admin client cannot hold a task for long.

mod common;

use std::time::Duration;

use common::{Gateway, metric, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

const TOKEN: &str = "admin-test-token-of-enough-length";

/// Read until the server closes; what it sent.
async fn until_closed(tcp: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let _ = tcp.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn slow_heads_and_bodies_are_cut_at_the_deadline() {
    within(30, async {
        let gw = Gateway::builder()
            .limits(|l| l.set("handshake_timeout", "1s"))
            .hub(|h| h.set("api_tokens", vec![TOKEN]))
            .start()
            .await;
        // A connection that sends nothing, and one idle after a request.
        for first in [&b""[..], b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"] {
            let started = Instant::now();
            let mut tcp = TcpStream::connect(gw.admin_addr).await.unwrap();
            tcp.write_all(first).await.unwrap();
            until_closed(&mut tcp).await;
            let took = started.elapsed();
            assert!(took < Duration::from_secs(5), "{took:?}");
        }
        // A head that never ends.
        let started = Instant::now();
        let mut tcp = TcpStream::connect(gw.admin_addr).await.unwrap();
        tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        until_closed(&mut tcp).await;
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(5), "{took:?}");
        // A body that never ends: 408, and the connection closed.
        let started = Instant::now();
        let mut tcp = TcpStream::connect(gw.admin_addr).await.unwrap();
        let head = format!(
            "POST /api/channels/news/publish HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\
             Content-Type: text/plain\r\nContent-Length: 100\r\n\r\nonly ten b"
        );
        tcp.write_all(head.as_bytes()).await.unwrap();
        let answer = until_closed(&mut tcp).await;
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains(r#""error":"timeout""#), "{answer}");
        assert!(started.elapsed() < Duration::from_secs(5));
        // The listener still answers.
        assert_eq!(gw.admin_get("/healthz").await.0, 200);
    })
    .await
}

#[tokio::test]
async fn admin_connections_are_capped() {
    within(30, async {
        let gw = Gateway::builder().start().await;
        let mut held = Vec::new();
        for _ in 0..64 {
            let mut tcp = TcpStream::connect(gw.admin_addr).await.unwrap();
            // A request answered: the connection is being served.
            tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .unwrap();
            let mut answer = [0; 12];
            tcp.read_exact(&mut answer).await.unwrap();
            assert_eq!(&answer, b"HTTP/1.1 200");
            held.push(tcp);
        }
        // One more is closed at once, without an answer.
        let mut extra = TcpStream::connect(gw.admin_addr).await.unwrap();
        let _ = extra
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await;
        assert_eq!(until_closed(&mut extra).await, "");
        // Once one goes, there is room again, and the refusal was counted.
        held.pop();
        let scrape = loop {
            let mut tcp = TcpStream::connect(gw.admin_addr).await.unwrap();
            let _ = tcp
                .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .await;
            let answer = until_closed(&mut tcp).await;
            if answer.starts_with("HTTP/1.1 200") {
                break answer;
            }
            tokio::task::yield_now().await;
        };
        let refused = metric(
            &scrape,
            r#"wsgate_connections_rejected_total{reason="admin_capacity"}"#,
        );
        assert!(refused.is_some_and(|n| n >= 1.0), "{scrape}");
    })
    .await
}
