//! Faults survived, and the drain sequence on the real binary: after each
//! fault the gateway still serves fresh clients, its gauges return to zero,
//! and (for the connection storm) its memory returns near its baseline.

mod common;

use std::process::Command;
use std::time::Duration;

use common::backend::Backend;
use common::{Gateway, Route, certs, wait_for_metric, within};
use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

fn signal(pid: u32, sig: &str) {
    assert!(
        Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
}

async fn round_trip(ws: &mut common::Ws, text: &str) {
    ws.send(Message::text(text)).await.unwrap();
    loop {
        match ws.next().await.unwrap().unwrap() {
            Message::Text(t) => return assert_eq!(t.as_str(), text),
            _ => continue,
        }
    }
}

#[tokio::test]
async fn sigterm_drains_then_exits_and_a_second_sigterm_exits_at_once() {
    within(30, async {
        let dir = tempfile::tempdir().unwrap();
        let gateway = Gateway::builder()
            .with_certs(certs(&["localhost"]))
            .limits(|l| l.set("drain_timeout", "3s").set("close_timeout", "10s"));
        let path = gateway.write_binary_config(dir.path().join("wsgate.toml"));
        let certs = gateway.certs();
        let (mut child, addr, admin, _logs) = common::start_binary(&path);
        assert_eq!(common::http_get(admin, "/readyz").await.0, 200);
        let mut ws = common::ws_connect(addr, "localhost", "/echo", &certs.ca)
            .await
            .unwrap();
        // A session that never answers its Close keeps the drain waiting.
        let running = common::Running::attach(addr, admin, certs);
        let _stuck = running.raw_upgrade("/echo").await;

        let started = Instant::now();
        signal(child.id(), "-TERM");
        match ws.next().await {
            Some(Ok(Message::Close(Some(frame)))) => assert_eq!(frame.code, CloseCode::Away),
            other => panic!("expected Close 1001, got {other:?}"),
        }
        // Not ready while draining; the listener refuses new connections.
        assert_eq!(common::http_get(admin, "/readyz").await.0, 503);
        let refused = TcpStream::connect(addr).await;
        assert!(
            refused.is_err(),
            "new connections are refused while draining"
        );
        let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
            .await
            .unwrap();
        assert!(status.success(), "{status:?}");
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(2900) && took < Duration::from_secs(8),
            "drained in {took:?}"
        );

        // A second SIGTERM does not wait for the drain.
        let (mut child, addr, _admin, logs) = common::start_binary(&path);
        let running = common::Running::attach(addr, _admin, certs);
        let _stuck = running.raw_upgrade("/echo").await;
        let started = Instant::now();
        signal(child.id(), "-TERM");
        while !logs.recv().unwrap().contains("draining") {}
        signal(child.id(), "-TERM");
        let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
            .await
            .unwrap();
        assert_eq!(status.code(), Some(1));
        assert!(started.elapsed() < Duration::from_secs(2));
    })
    .await
}

#[tokio::test]
async fn a_backend_killed_and_restarted_is_used_again() {
    within(20, async {
        let mut backend = Backend::plain().await;
        let gw = Gateway::builder()
            .route(
                Route::upstream("/app", [format!("ws://{}", backend.addr)])
                    .name("restarted")
                    .key("backoff", "50ms")
                    .key("backoff_max", "100ms"),
            )
            .start()
            .await;
        let mut ws = gw.ws("/app").await;
        round_trip(&mut ws, "before").await;
        backend.kill();
        match ws.next().await {
            Some(Ok(Message::Close(Some(frame)))) => assert_eq!(frame.code, CloseCode::Error),
            other => panic!("expected 1011, got {other:?}"),
        }
        // Back on the same port (the killed backend held it): once its
        // backoff passes, sessions work again.
        backend.restart();
        let mut served = None;
        for _ in 0..2000 {
            if let Ok(ws) = gw.try_ws("/app").await {
                served = Some(ws);
                break;
            }
            tokio::task::yield_now().await;
        }
        round_trip(
            served.as_mut().expect("the restarted backend serves"),
            "after",
        )
        .await;
        drop(served);
        wait_for_metric(
            &gw,
            "wsgate_connections_active{route=\"restarted\",kind=\"upstream\"}",
            0.0,
        )
        .await;
    })
    .await
}

#[tokio::test]
async fn a_client_reset_mid_frame_ends_only_its_session() {
    within(20, async {
        let gw = Gateway::builder()
            .route(Route::echo("/reset").name("reset"))
            .start()
            .await;
        let mut bystander = gw.ws("/reset").await;
        let mut tls = gw.raw_upgrade("/reset").await;
        // Half a masked frame header, then a reset (linger 0).
        tls.write_all(&[0x82, 0xFE]).await.unwrap();
        tls.flush().await.unwrap();
        let (tcp, _) = tls.into_inner();
        tcp.set_zero_linger().unwrap();
        drop(tcp);
        wait_for_metric(
            &gw,
            "wsgate_connections_active{route=\"reset\",kind=\"echo\"}",
            1.0,
        )
        .await;
        round_trip(&mut bystander, "unaffected").await;
        let mut fresh = gw.ws("/reset").await;
        round_trip(&mut fresh, "fresh").await;
    })
    .await
}

#[tokio::test]
async fn a_storm_of_connections_opened_and_dropped_leaves_nothing_behind() {
    within(120, async {
        let dir = tempfile::tempdir().unwrap();
        let gateway = Gateway::builder().with_certs(certs(&["localhost"]));
        let path = gateway.write_binary_config(dir.path().join("wsgate.toml"));
        let (mut child, addr, admin, _logs) = common::start_binary(&path);
        let pid = child.id();
        let running = common::Running::attach(addr, admin, gateway.certs());
        // Warm up, then take the baseline.
        for _ in 0..50 {
            let mut ws = running.ws("/echo").await;
            round_trip(&mut ws, "warm").await;
        }
        wait_for_metric(
            &running,
            "wsgate_connections_active{route=\"/echo\",kind=\"echo\"}",
            0.0,
        )
        .await;
        let baseline = common::rss_kib(pid);

        // 2,000 connections at once: 1,500 bare TCP, 500 full sessions with
        // a message; all dropped at once without closing handshakes. The
        // allocator keeps freed memory for reuse (RSS does not fall back by
        // itself, and the first storms fill one arena per worker thread), so
        // the check is that it stops growing: four storms, and the last ends
        // near where the second did. A leak of what a storm holds grows RSS
        // by about `storm` per storm (2x between the second and the fourth);
        // glibc's arenas, filled in a different order when the machine is
        // loaded, move it by up to a quarter of that.
        let mut after = Vec::new();
        for _ in 0..4 {
            let bare =
                futures_util::future::join_all((0..1500).map(|_| TcpStream::connect(addr))).await;
            let mut sessions = Vec::new();
            for _ in 0..5 {
                let batch =
                    futures_util::future::join_all((0..100).map(|_| running.ws("/echo"))).await;
                sessions.extend(batch);
            }
            futures_util::future::join_all(sessions.iter_mut().map(|ws| round_trip(ws, "storm")))
                .await;
            drop(bare);
            drop(sessions);
            wait_for_metric(
                &running,
                "wsgate_connections_active{route=\"/echo\",kind=\"echo\"}",
                0.0,
            )
            .await;
            let mut ws = running.ws("/echo").await;
            round_trip(&mut ws, "still serving").await;
            drop(ws);
            wait_for_metric(
                &running,
                "wsgate_connections_active{route=\"/echo\",kind=\"echo\"}",
                0.0,
            )
            .await;
            after.push(common::rss_kib(pid));
        }
        println!("RSS KiB: baseline {baseline}, after each storm {after:?}");
        let storm = after[0].saturating_sub(baseline);
        assert!(
            after[3] <= after[1] + storm / 2 + 1024,
            "memory grows storm after storm: {baseline} then {after:?}"
        );
        let _ = child.kill();
        let _ = child.wait();
    })
    .await
}

#[tokio::test]
async fn a_new_gateway_starts_on_the_same_port_while_the_old_one_drains() {
    within(30, async {
        let dir = tempfile::tempdir().unwrap();
        let gateway = Gateway::builder()
            .with_certs(certs(&["localhost"]))
            .limits(|l| l.set("drain_timeout", "2s"));
        let path = gateway.write_binary_config(dir.path().join("wsgate.toml"));
        let (mut old, addr, _admin, _old_logs) = common::start_binary(&path);
        let mut session = common::ws_connect(addr, "localhost", "/echo", &gateway.certs().ca)
            .await
            .unwrap();
        // The new one binds the very same address (SO_REUSEPORT on both).
        let gateway = gateway.listen(|l| l.set("addr", addr.to_string()));
        let same_port = gateway.write_binary_config(dir.path().join("same.toml"));
        let certs = gateway.certs();
        let (mut new, new_addr, _new_admin, _new_logs) = common::start_binary(&same_port);
        assert_eq!(new_addr, addr);
        // The old one drains: its session gets 1001 and it exits...
        signal(old.id(), "-TERM");
        match session.next().await {
            Some(Ok(Message::Close(Some(frame)))) => assert_eq!(frame.code, CloseCode::Away),
            other => panic!("expected 1001, got {other:?}"),
        }
        let status = tokio::task::spawn_blocking(move || old.wait().unwrap())
            .await
            .unwrap();
        assert!(status.success());
        // ...and the port keeps answering, now served by the new one.
        for _ in 0..20 {
            let mut ws = common::ws_connect(addr, "localhost", "/echo", &certs.ca)
                .await
                .unwrap();
            round_trip(&mut ws, "new process").await;
        }
        let _ = new.kill();
        let _ = new.wait();
    })
    .await
}

#[tokio::test]
async fn a_client_that_vanishes_is_gone_with_or_without_close_notify() {
    within(30, async {
        let mut backend = Backend::plain().await;
        let gw = Gateway::builder()
            .route(Route::upstream("/app", [format!("ws://{}", backend.addr)]).name("app"))
            .route(Route::echo("/e").name("e"))
            .start()
            .await;
        let request = |path: &str| common::upgrade_request(path, "");
        // Without close_notify: the TCP connection just ends (QWebSocket's
        // abort()); with it: TLS says goodbye, no WebSocket Close either way.
        for (polite, n) in [(false, 1.0), (true, 2.0)] {
            for path in ["/app", "/e"] {
                let (head, mut tls) = gw.raw_upgrade_with(request(path).as_bytes()).await;
                assert!(head.starts_with("HTTP/1.1 101"), "{head}");
                if polite {
                    tls.shutdown().await.unwrap();
                }
                drop(tls);
            }
            for route in ["app", "e"] {
                let series = format!(
                    r#"wsgate_sessions_ended_total{{route="{route}",reason="client_gone"}}"#
                );
                wait_for_metric(&gw, &series, n).await;
            }
        }
        // The member was told: 1001 "client gone".
        let close = backend.next_close().await.expect("a close code");
        assert_eq!(u16::from(close.code), 1001);
    })
    .await
}
