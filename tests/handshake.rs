//! Every refused handshake gets its exact status, and slow clients are cut
//! at the handshake deadline.

mod common;

use std::time::Duration;

use common::{Gateway, status_of, upgrade_request, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

#[tokio::test]
async fn each_rejection_has_its_status() {
    within(20, async {
        let gw = Gateway::builder()
            .limits(|l| l.set("max_header_size", "4KiB").set("max_headers", 20))
            .start()
            .await;
        let ok = gw.raw_head(upgrade_request("/echo", "").as_bytes()).await;
        assert_eq!(status_of(&ok), 101, "{ok}");
        assert!(
            ok.contains("connection: Upgrade\r\n"),
            "exactly Upgrade, as Qt requires: {ok}"
        );

        let plain = gw
            .raw(b"GET /echo HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await;
        assert_eq!(status_of(&plain), 426, "{plain}");
        assert!(
            plain
                .to_ascii_lowercase()
                .contains("sec-websocket-version: 13"),
            "{plain}"
        );

        let unknown = gw
            .raw(b"GET /nowhere HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await;
        assert_eq!(status_of(&unknown), 404, "{unknown}");
        let unknown_upgrade = gw.raw(upgrade_request("/nowhere", "").as_bytes()).await;
        assert_eq!(status_of(&unknown_upgrade), 404);

        let v8 = upgrade_request("/echo", "").replace("Version: 13", "Version: 8");
        let v8 = gw.raw(v8.as_bytes()).await;
        assert_eq!(status_of(&v8), 426, "{v8}");
        assert!(
            v8.to_ascii_lowercase()
                .contains("sec-websocket-version: 13"),
            "{v8}"
        );

        let bad_key = upgrade_request("/echo", "").replace("dGhlIHNhbXBsZSBub25jZQ==", "c2hvcnQ=");
        assert_eq!(status_of(&gw.raw(bad_key.as_bytes()).await), 400);
        let two_keys = upgrade_request("/echo", "Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\n");
        assert_eq!(status_of(&gw.raw(two_keys.as_bytes()).await), 400);
        let no_connection = upgrade_request("/echo", "").replace("Connection: Upgrade\r\n", "");
        assert_eq!(status_of(&gw.raw(no_connection.as_bytes()).await), 400);
        let post = upgrade_request("/echo", "").replace("GET ", "POST ");
        let post = gw.raw(post.as_bytes()).await;
        assert_eq!(status_of(&post), 405, "{post}");
        let http10 = upgrade_request("/echo", "").replace("HTTP/1.1", "HTTP/1.0");
        assert_eq!(status_of(&gw.raw(http10.as_bytes()).await), 400);
        let with_body = upgrade_request("/echo", "Content-Length: 3\r\n") + "abc";
        assert_eq!(status_of(&gw.raw(with_body.as_bytes()).await), 400);

        let huge = upgrade_request("/echo", &format!("X-Big: {}\r\n", "a".repeat(8 << 10)));
        assert_eq!(status_of(&gw.raw(huge.as_bytes()).await), 431);
        let many: String = (0..40).map(|i| format!("X-H{i}: v\r\n")).collect();
        assert_eq!(
            status_of(&gw.raw(upgrade_request("/echo", &many).as_bytes()).await),
            431
        );

        let garbage = gw.raw(b"\x01\x02 not http at all\r\n\r\n").await;
        assert_eq!(status_of(&garbage), 400, "{garbage}");

        // The refusals are counted by reason.
        let (_, scrape) = gw.admin_get("/metrics").await;
        for reason in [
            "not_websocket",
            "no_route",
            "version",
            "bad_request",
            "method",
            "head_too_large",
        ] {
            let series = format!("wsgate_handshake_failures_total{{reason=\"{reason}\"}}");
            assert!(
                common::metric(&scrape, &series).unwrap_or(0.0) >= 1.0,
                "{series} in\n{scrape}"
            );
        }
    })
    .await
}

#[tokio::test]
async fn half_a_request_head_is_cut_at_the_deadline() {
    within(10, async {
        let gw = Gateway::builder()
            .limits(|l| l.set("handshake_timeout", "300ms"))
            .start()
            .await;
        let mut tls = gw.tls().await.unwrap();
        let started = Instant::now();
        tls.write_all(b"GET /echo HTTP/1.1\r\nHost: localhost\r\n")
            .await
            .unwrap();
        let mut out = Vec::new();
        let _ = tls.read_to_end(&mut out).await;
        let waited = started.elapsed();
        assert!(waited < Duration::from_secs(3), "cut after {waited:?}");
        assert!(
            !String::from_utf8_lossy(&out).contains(" 101 "),
            "no upgrade"
        );
    })
    .await
}

#[tokio::test]
async fn a_silent_tcp_client_is_cut_at_the_deadline() {
    within(10, async {
        let gw = Gateway::builder()
            .limits(|l| l.set("handshake_timeout", "300ms"))
            .start()
            .await;
        let mut tcp = TcpStream::connect(gw.addr).await.unwrap();
        let started = Instant::now();
        let mut out = Vec::new();
        let _ = tcp.read_to_end(&mut out).await;
        assert!(started.elapsed() < Duration::from_secs(3));
        assert!(out.is_empty());
        let (_, scrape) = gw.admin_get("/metrics").await;
        let series = "wsgate_tls_handshake_failures_total{reason=\"timeout\"}";
        assert!(
            common::metric(&scrape, series).unwrap_or(0.0) >= 1.0,
            "{scrape}"
        );
    })
    .await
}
