//! Upstream routes against real backends: fidelity, handshake pass-through,
//! errors, pools and failover, close semantics, backpressure, wss upstreams.

mod common;

use std::time::Duration;

use common::backend::{Backend, Event, Options};
use common::{ClosedPort, Gateway, Route, Running, certs, next_close, next_data, path, within};
use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// A gateway with one upstream route `/app` to `backend`.
async fn gateway_to(backend: &Backend) -> Running {
    Gateway::builder()
        .route(Route::upstream("/app", [format!("ws://{}", backend.addr)]).name("app"))
        .start()
        .await
}

#[tokio::test]
async fn messages_pings_and_headers_pass_through() {
    within(30, async {
        let mut backend = Backend::plain().await;
        let member = format!("ws://{}/base", backend.addr);
        let gw = Gateway::builder()
            .route(Route::upstream("/app", [member]).name("app"))
            .start()
            .await;
        let (mut ws, response) = gw
            .ws_with(
                "/app/room?user=ann&x=1",
                &[
                    ("sec-websocket-protocol", "chat.v2, chat.v1"),
                    ("cookie", "session=abc"),
                    ("authorization", "Bearer t0k"),
                ],
            )
            .await;
        // The backend chose the last offered subprotocol; the client got it.
        assert_eq!(response.headers()["sec-websocket-protocol"], "chat.v1");
        let (path, headers) = backend.next_upgrade().await;
        assert_eq!(path, "/base/app/room?user=ann&x=1");
        assert_eq!(headers["cookie"], "session=abc");
        assert_eq!(headers["authorization"], "Bearer t0k");
        assert_eq!(headers["sec-websocket-protocol"], "chat.v2, chat.v1");
        assert_eq!(headers["x-forwarded-for"], "127.0.0.1");
        assert_eq!(headers["x-forwarded-proto"], "https");
        assert_eq!(
            headers["x-forwarded-host"],
            format!("localhost:{}", gw.addr.port())
        );
        assert_eq!(
            headers["forwarded"],
            format!(
                "for=127.0.0.1;host=\"localhost:{}\";proto=https",
                gw.addr.port()
            )
        );
        assert_eq!(headers["host"], backend.addr.to_string());
        assert!(headers.get("sec-websocket-extensions").is_none());

        let large: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
        let messages = vec![
            Message::text("hello through the relay"),
            Message::binary(vec![0u8, 1, 2, 255]),
            Message::text(""),
            Message::binary(Vec::new()),
            Message::binary(large),
        ];
        for m in &messages {
            ws.send(m.clone()).await.unwrap();
        }
        for m in messages {
            assert_eq!(next_data(&mut ws).await, m);
        }
        for i in 0..300 {
            ws.feed(Message::text(i.to_string())).await.unwrap();
        }
        ws.flush().await.unwrap();
        for i in 0..300 {
            assert_eq!(next_data(&mut ws).await, Message::text(i.to_string()));
        }

        // Client ping reaches the backend with its payload; the client gets a pong for it.
        ws.send(Message::Ping("from-client".into())).await.unwrap();
        loop {
            if let Event::Ping(p) = backend.next().await {
                assert_eq!(&p[..], b"from-client");
                break;
            }
        }
        loop {
            if let Message::Pong(p) = ws.next().await.unwrap().unwrap() {
                assert_eq!(&p[..], b"from-client");
                break;
            }
        }
        // Backend ping reaches the client; the client's pong reaches the backend.
        ws.send(Message::text("cmd:ping:from-backend"))
            .await
            .unwrap();
        loop {
            if let Message::Ping(p) = ws.next().await.unwrap().unwrap() {
                assert_eq!(&p[..], b"from-backend");
                break;
            }
        }
        ws.flush().await.unwrap(); // sends the queued pong
        loop {
            if let Event::Pong(p) = backend.next().await {
                assert_eq!(&p[..], b"from-backend");
                break;
            }
        }
    })
    .await
}

#[tokio::test]
async fn strip_prefix_and_member_query() {
    within(10, async {
        let mut backend = Backend::plain().await;
        let member = format!("ws://{}/v2?tenant=7", backend.addr);
        let gw = Gateway::builder()
            .route(
                Route::upstream("/api", [member])
                    .name("api")
                    .key("strip_prefix", true),
            )
            .start()
            .await;
        let _ws = gw.ws("/api/stream?since=5").await;
        assert_eq!(
            backend.next_upgrade().await.0,
            "/v2/stream?tenant=7&since=5"
        );
        let _ws = gw.ws("/api").await;
        assert_eq!(backend.next_upgrade().await.0, "/v2?tenant=7");
    })
    .await
}

#[tokio::test]
async fn close_codes_pass_both_ways_and_vanishing_sides_are_reported() {
    within(20, async {
        let mut backend = Backend::plain().await;
        let gw = gateway_to(&backend).await;

        // Backend closes 4001 "bye": the client sees exactly that.
        let mut ws = gw.ws("/app").await;
        ws.send(Message::text("cmd:close:4001:bye")).await.unwrap();
        let frame = next_close(&mut ws).await.unwrap();
        assert_eq!(
            (frame.code, frame.reason.as_str()),
            (CloseCode::Library(4001), "bye")
        );
        // The backend's close handshake completes: it gets its own code back.
        assert_eq!(
            backend.next_close().await.unwrap().code,
            CloseCode::Library(4001)
        );

        // Client closes 4000 "later": the backend sees exactly that.
        let mut ws = gw.ws("/app").await;
        ws.close(Some(CloseFrame {
            code: CloseCode::Library(4000),
            reason: "later".into(),
        }))
        .await
        .unwrap();
        let frame = backend.next_close().await.unwrap();
        assert_eq!(
            (frame.code, frame.reason.as_str()),
            (CloseCode::Library(4000), "later")
        );
        assert_eq!(
            next_close(&mut ws).await.unwrap().code,
            CloseCode::Library(4000)
        );

        // A Qt-style client: sends Close and drops the connection at once.
        let mut tls = gw.raw_upgrade("/app").await;
        // Masked close frame, code 1000, reason "qt".
        tls.write_all(&[0x88, 0x84, 0, 0, 0, 0, 0x03, 0xE8, b'q', b't'])
            .await
            .unwrap();
        drop(tls);
        let frame = backend.next_close().await.unwrap();
        assert_eq!(
            (frame.code, frame.reason.as_str()),
            (CloseCode::Normal, "qt")
        );

        // A client that vanishes without a Close: the backend gets 1001.
        let ws = gw.ws("/app").await;
        drop(ws);
        assert_eq!(backend.next_close().await.unwrap().code, CloseCode::Away);
    })
    .await
}

#[tokio::test]
async fn a_killed_backend_closes_the_client_with_1011() {
    within(10, async {
        let mut backend = Backend::plain().await;
        let gw = gateway_to(&backend).await;
        let mut ws = gw.ws("/app").await;
        ws.send(Message::text("alive?")).await.unwrap();
        assert_eq!(next_data(&mut ws).await, Message::text("alive?"));
        backend.kill();
        let frame = next_close(&mut ws).await.unwrap();
        assert_eq!(
            (frame.code, frame.reason.as_str()),
            (CloseCode::Error, "upstream gone")
        );
    })
    .await
}

#[tokio::test]
async fn each_way_a_side_goes_has_its_end_reason() {
    within(20, async {
        let mut backend = Backend::plain().await;
        let gw = Gateway::builder()
            .route(Route::upstream("/ends", [format!("ws://{}", backend.addr)]).name("ends"))
            .start()
            .await;
        let ended = |reason: &str| {
            format!(r#"wsgate_sessions_ended_total{{route="ends",reason="{reason}"}}"#)
        };

        // A client whose TCP connection is reset (SO_LINGER 0): gone, as
        // one that closes it without a Close.
        let tls = gw.raw_upgrade("/ends").await;
        tls.get_ref().0.set_zero_linger().unwrap();
        drop(tls);
        common::wait_for_metric(&gw, &ended("client_gone"), 1.0).await;

        // A client that sends a TLS record that is not one of the session's
        // (bad MAC): a transport error, not a client that went away.
        let mut tls = gw.raw_upgrade("/ends").await;
        let mut record = vec![0x17, 0x03, 0x03, 0x00, 0x20];
        record.extend_from_slice(&[0x5a; 0x20]);
        tls.get_mut().0.write_all(&record).await.unwrap();
        common::wait_for_metric(&gw, &ended("client_io_error"), 1.0).await;
        drop(tls);

        // A member that vanishes without a Close.
        let mut ws = gw.ws("/ends").await;
        ws.send(Message::text("alive?")).await.unwrap();
        assert_eq!(next_data(&mut ws).await, Message::text("alive?"));
        backend.kill();
        assert_eq!(next_close(&mut ws).await.unwrap().code, CloseCode::Error);
        // Our Close in answer goes out as the stream is read to its end.
        assert!(ws.next().await.is_none());
        common::wait_for_metric(&gw, &ended("upstream_gone"), 1.0).await;
    })
    .await
}

#[tokio::test]
async fn upstream_failures_have_their_statuses() {
    within(20, async {
        let backend = Backend::start(
            TcpListener::bind("127.0.0.1:0").await.unwrap(),
            Options {
                forbid: true,
                ..Options::default()
            },
        );
        // A member that accepts TCP and never answers the upgrade.
        let hang = TcpListener::bind("127.0.0.1:0").await.unwrap();
        // Held for the whole test, never listening: connections are refused.
        let closed = ClosedPort::new();
        let dead = closed.addr;
        let gw = Gateway::builder()
            .route(Route::upstream("/ok", [format!("ws://{}", backend.addr)]).name("ok"))
            .route(
                Route::upstream("/hang", [format!("ws://{}", hang.local_addr().unwrap())])
                    .name("hang")
                    .key("handshake_timeout", "300ms"),
            )
            .route(
                Route::upstream(
                    "/dead",
                    [format!("ws://{dead}"), format!("ws://{dead}/again")],
                )
                .name("dead"),
            )
            .start()
            .await;

        let (status, forbidden) = gw.upgrade("/ok/forbidden").await;
        assert_eq!(status, 403, "{forbidden}");
        assert!(
            forbidden.ends_with("no entry for you"),
            "the backend's body passes through: {forbidden}"
        );

        let (status, hung) = gw.upgrade("/hang").await;
        assert_eq!(status, 504, "{hung}");

        // Both members refuse: 502, and both go into backoff...
        let (status, refused) = gw.upgrade("/dead").await;
        assert_eq!(status, 502, "{refused}");
        // ...so the next request finds every member down: 503, nothing dialled.
        let (status, down) = gw.upgrade("/dead").await;
        assert_eq!(status, 503, "{down}");

        let (_, scrape) = gw.admin_get("/metrics").await;
        for (series, at_least) in [
            (
                "wsgate_handshake_failures_total{reason=\"upstream_status\"}",
                1.0,
            ),
            (
                "wsgate_handshake_failures_total{reason=\"upstream_timeout\"}",
                1.0,
            ),
            (
                "wsgate_handshake_failures_total{reason=\"upstream_unreachable\"}",
                1.0,
            ),
            (
                "wsgate_handshake_failures_total{reason=\"upstreams_down\"}",
                1.0,
            ),
            (
                "wsgate_upstream_errors_total{route=\"dead\",reason=\"unreachable\"}",
                2.0,
            ),
        ] {
            assert!(
                common::metric(&scrape, series).unwrap_or(0.0) >= at_least,
                "{series} in\n{scrape}"
            );
        }
        drop(hang);
    })
    .await
}

#[tokio::test]
async fn failover_and_recovery_after_backoff() {
    within(20, async {
        // Member 1's port is held, not listening: it refuses connections.
        let first = ClosedPort::new();
        let first_addr = first.addr;
        let mut second = Backend::plain().await;
        let members = [
            format!("ws://{first_addr}"),
            format!("ws://{}", second.addr),
        ];
        let gw = Gateway::builder()
            .route(
                Route::upstream("/pool", members)
                    .name("pool")
                    .key("backoff", "100ms")
                    .key("backoff_max", "200ms"),
            )
            .start()
            .await;

        // Every session is served (by member 2) while member 1 is down.
        for _ in 0..4 {
            let mut ws = gw.ws("/pool").await;
            ws.send(Message::text("x")).await.unwrap();
            assert_eq!(next_data(&mut ws).await, Message::text("x"));
            second.next_upgrade().await;
        }
        let (_, scrape) = gw.admin_get("/metrics").await;
        let health =
            format!("wsgate_upstream_healthy{{route=\"pool\",upstream=\"ws://{first_addr}\"}}");
        assert_eq!(common::metric(&scrape, &health), Some(0.0), "{scrape}");

        // Member 1 comes back on its port (the held socket starts listening);
        // once its backoff has passed it is tried again and serves. Each
        // attempt is a real session.
        let mut first = Backend::start(first.listen(), Options::default());
        let mut served_by_first = false;
        for _ in 0..2000 {
            let _ws = gw.ws("/pool").await;
            if let Ok(Event::Upgrade { .. }) = first.events.try_recv() {
                served_by_first = true;
                break;
            }
            tokio::task::yield_now().await;
        }
        assert!(served_by_first, "member 1 was never retried");
        let (_, scrape) = gw.admin_get("/metrics").await;
        assert_eq!(common::metric(&scrape, &health), Some(1.0), "{scrape}");
    })
    .await
}

#[tokio::test]
async fn least_connections_prefers_the_idler_member() {
    within(10, async {
        let mut a = Backend::plain().await;
        let mut b = Backend::plain().await;
        let members = [format!("ws://{}", a.addr), format!("ws://{}", b.addr)];
        let gw = Gateway::builder()
            .route(
                Route::upstream("/lc", members)
                    .name("lc")
                    .key("balance", "least_connections"),
            )
            .start()
            .await;
        // Three sessions: whichever member took the first, the second goes to
        // the other (0 < 1 open), and the third to either; hold them open.
        let _s1 = gw.ws("/lc").await;
        let _s2 = gw.ws("/lc").await;
        let (mut on_a, mut on_b) = (0, 0);
        for _ in 0..2 {
            tokio::select! {
                _ = a.next_upgrade() => on_a += 1,
                _ = b.next_upgrade() => on_b += 1,
            }
        }
        assert_eq!((on_a, on_b), (1, 1));
    })
    .await
}

#[tokio::test]
async fn wss_upstreams_with_ca_sni_override_and_client_certificates() {
    within(20, async {
        // The backend's certificate names "backend.internal"; we dial 127.0.0.1.
        let backend_certs = certs(&["backend.internal"]);
        let mut plain_tls = Backend::tls(&backend_certs).await;
        // A second backend that requires a client certificate from a CA it trusts.
        let client_certs = certs(&["wsgate-client"]);
        let mut mtls = Backend::start(
            TcpListener::bind("127.0.0.1:0").await.unwrap(),
            Options {
                tls: Some((backend_certs.cert.clone(), backend_certs.key.clone())),
                client_ca: Some(client_certs.ca.clone()),
                ..Options::default()
            },
        );
        let tls_keys = |route: Route| {
            route
                .key("tls_ca", path(&backend_certs.ca))
                .key("tls_server_name", "backend.internal")
        };
        let gw = Gateway::builder()
            .route(tls_keys(
                Route::upstream("/tls", [format!("wss://{}", plain_tls.addr)]).name("tls"),
            ))
            .route(
                tls_keys(Route::upstream("/mtls", [format!("wss://{}", mtls.addr)]).name("mtls"))
                    .key("tls_client_cert", path(&client_certs.cert))
                    .key("tls_client_key", path(&client_certs.key)),
            )
            // Same backend, no client certificate: its TLS refuses us.
            .route(tls_keys(
                Route::upstream("/nocert", [format!("wss://{}", mtls.addr)]).name("nocert"),
            ))
            // Wrong name: verification fails.
            .route(
                Route::upstream("/badname", [format!("wss://{}", plain_tls.addr)])
                    .name("badname")
                    .key("tls_ca", path(&backend_certs.ca)),
            )
            .start()
            .await;
        for (path, backend) in [("/tls", &mut plain_tls), ("/mtls", &mut mtls)] {
            let mut ws = gw.ws(path).await;
            ws.send(Message::text(path)).await.unwrap();
            assert_eq!(next_data(&mut ws).await, Message::text(path));
            backend.next_upgrade().await;
        }
        for path in ["/nocert", "/badname"] {
            let (status, answer) = gw.upgrade(path).await;
            assert_eq!(status, 502, "{path}: {answer}");
        }
    })
    .await
}

#[tokio::test]
async fn a_client_that_never_reads_does_not_make_the_gateway_buffer() {
    within(60, async {
        let mut backend = Backend::plain().await;
        let gw = Gateway::builder()
            .route(Route::upstream("/flood", [format!("ws://{}", backend.addr)]).name("flood"))
            .start()
            .await;
        // Never reads; a small, fixed receive buffer.
        let mut ws = gw.ws_small_rcvbuf("/flood").await;
        // 64 MiB in 256 KiB messages: far more than every socket buffer on
        // the way (4 MiB send, 32 MiB receive at most here) can hold.
        const COUNT: usize = 256;
        const SIZE: usize = 256 << 10;
        ws.send(Message::text(format!("cmd:flood:{COUNT}:{SIZE}")))
            .await
            .unwrap();

        // The backend cannot finish: the gateway reads from it only as fast
        // as the client takes. Give it ample time to show otherwise.
        let mut sent = 0;
        let stalled = tokio::time::timeout(Duration::from_secs(3), async {
            loop {
                if let Event::Flooded(n) = backend.next().await {
                    sent = n;
                    if n == COUNT {
                        break;
                    }
                }
            }
        })
        .await
        .is_err();
        assert!(
            stalled,
            "the backend sent all {COUNT} messages to a client that reads nothing"
        );

        // What the gateway took from the backend and forwarded is bounded by
        // what the client side can hold, not by what the backend sent.
        let (_, scrape) = gw.admin_get("/metrics").await;
        let series = "wsgate_bytes_total{route=\"flood\",direction=\"upstream_to_client\"}";
        let forwarded = common::metric(&scrape, series).unwrap_or(0.0);
        assert!(
            forwarded <= (12 << 20) as f64,
            "gateway took {forwarded} bytes from the backend"
        );
        assert!(sent < COUNT);

        // Nothing was lost: once the client reads, every message arrives.
        for _ in 0..COUNT {
            match next_data(&mut ws).await {
                Message::Binary(b) => assert_eq!(b.len(), SIZE),
                other => panic!("{other:?}"),
            }
        }
    })
    .await
}

#[tokio::test]
async fn both_directions_flow_at_once_through_a_member_that_writes_before_it_reads() {
    within(60, async {
        // More each way than every socket buffer on the way can hold. The
        // member sends all of it before it reads anything (as a server that
        // answers each message before it reads the next does, writ large);
        // the client sends and reads at once. The gateway must carry the
        // member's bytes down while the client's wait to go up.
        let (r, w) = socket_buffers_max();
        let volume = 2 * (r + w) + (16 << 20);
        let member = member_that_writes_first(volume).await;
        let gw = Gateway::builder()
            .limits(|l| l.set("send_timeout", "5s"))
            .route(Route::upstream("/duplex", [format!("ws://{member}")]).name("duplex"))
            .start()
            .await;
        let (mut tx, mut rx) = gw.ws("/duplex").await.split();
        let writer = tokio::spawn(async move {
            for _ in 0..volume / CHUNK {
                tx.send(Message::binary(vec![7; CHUNK])).await.unwrap();
            }
            tx
        });
        let mut received = 0;
        while received < volume {
            match rx.next().await.expect("open").expect("no error") {
                Message::Binary(b) => received += b.len(),
                Message::Ping(_) | Message::Pong(_) => {}
                other => panic!("after {received} bytes: {other:?}"),
            }
        }
        assert_eq!(received, volume / CHUNK * CHUNK);
        let _tx = writer.await.unwrap();
    })
    .await
}

#[tokio::test]
async fn a_member_held_up_behind_a_slow_client_is_not_judged_silent() {
    within(60, async {
        let mut backend = Backend::plain().await;
        let gw = Gateway::builder()
            .route(
                Route::upstream("/held", [format!("ws://{}", backend.addr)])
                    .name("held")
                    .key("upstream_ping_interval", "100ms"),
            )
            .start()
            .await;
        let mut ws = gw.ws_small_rcvbuf("/held").await;
        // More than the socket buffers between the member and the client
        // hold (the member's send buffer, the gateway's two, the client's).
        const SIZE: usize = 256 << 10;
        let (r, w) = socket_buffers_max();
        let count = (r + 2 * w + (16 << 20)) / SIZE;
        ws.send(Message::text(format!("cmd:flood:{count}:{SIZE}")))
            .await
            .unwrap();
        // The client reads nothing for 1.5 s, fifteen ping intervals: the
        // member, busy sending, answers no ping, and the gateway reads
        // nothing from it while the client takes nothing.
        let finished = tokio::time::timeout(Duration::from_millis(1500), async {
            while !matches!(backend.next().await, Event::Flooded(n) if n == count) {}
        })
        .await;
        assert!(
            finished.is_err(),
            "the flood went through to a client that reads nothing"
        );
        // Its silence was the client's doing: the session goes on.
        for _ in 0..count {
            match next_data(&mut ws).await {
                Message::Binary(b) => assert_eq!(b.len(), SIZE),
                other => panic!("{other:?}"),
            }
        }
        ws.send(Message::text("still here")).await.unwrap();
        assert_eq!(next_data(&mut ws).await, Message::text("still here"));
    })
    .await
}

#[tokio::test]
async fn the_active_check_marks_members_down_and_up_without_traffic() {
    within(20, async {
        // Held, not listening: the member is down until the test listens.
        let port = ClosedPort::new();
        let member = format!("ws://{}", port.addr);
        let gw = Gateway::builder()
            .route(
                Route::upstream("/checked", [&member])
                    .name("checked")
                    .key("health_check_interval", "50ms")
                    .key("backoff", "30s"),
            )
            .start()
            .await;
        let series = format!("wsgate_upstream_healthy{{route=\"checked\",upstream=\"{member}\"}}");
        common::wait_for_metric(&gw, &series, 0.0).await;
        let (status, refused) = gw.upgrade("/checked").await;
        assert_eq!(status, 503, "in backoff: {refused}");
        // The member comes back; the check (not a 30 s backoff) puts it in service.
        let mut backend = Backend::start(port.listen(), Options::default());
        common::wait_for_metric(&gw, &series, 1.0).await;
        let _ws = gw.ws("/checked").await;
        backend.next_upgrade().await;
    })
    .await
}

#[tokio::test]
async fn frames_sent_with_the_101_come_first_and_fragments_pass_as_they_are() {
    use tokio::io::AsyncReadExt;
    use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
    within(30, async {
        // A member that sends its first frames in the same write as its 101.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let member = format!("ws://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                tcp.read_exact(&mut byte).await.unwrap();
                head.push(byte[0]);
            }
            let head = String::from_utf8(head).unwrap();
            let key = head
                .lines()
                .find_map(|l| l.strip_prefix("sec-websocket-key: "))
                .expect("the upgrade carries a key");
            let mut out = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                 Connection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
                derive_accept_key(key.trim().as_bytes())
            )
            .into_bytes();
            out.extend_from_slice(b"\x81\x05hello");
            // A text message in two fragments.
            out.extend_from_slice(b"\x01\x04frag\x80\x05ments");
            tcp.write_all(&out).await.unwrap();
            // The client's Close arrives masked; answer it.
            let mut frame = [0u8; 64];
            let n = tcp.read(&mut frame).await.unwrap();
            assert!(
                n >= 2 && frame[0] == 0x88 && frame[1] & 0x80 != 0,
                "a masked Close"
            );
            tcp.write_all(b"\x88\x02\x03\xe8").await.unwrap();
        });
        let gw = Gateway::builder()
            .route(Route::upstream("/app", [member]).name("app"))
            .start()
            .await;
        let mut ws = gw.ws("/app").await;
        assert_eq!(next_data(&mut ws).await, Message::text("hello"));
        assert_eq!(next_data(&mut ws).await, Message::text("fragments"));
        ws.close(None).await.unwrap();
        server.await.unwrap();
    })
    .await;
}

/// A member that answers the upgrade and then neither reads nor writes (a
/// host gone, a half-open connection).
async fn silent_member() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut tcp, _)) = listener.accept().await {
            answer_upgrade(&mut tcp).await;
            held.push(tcp);
        }
    });
    addr
}

/// Messages of the full-duplex test: 1 MiB.
const CHUNK: usize = 1 << 20;

/// A member that, once upgraded, sends `volume` bytes in binary messages of
/// [`CHUNK`] before it reads anything, then reads (and drops) what comes.
async fn member_that_writes_first(volume: usize) -> std::net::SocketAddr {
    use tokio::io::AsyncReadExt;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.unwrap();
        answer_upgrade(&mut tcp).await;
        let mut header = vec![0x82, 127];
        header.extend_from_slice(&(CHUNK as u64).to_be_bytes());
        let payload = vec![7u8; CHUNK];
        for _ in 0..volume / CHUNK {
            if tcp.write_all(&header).await.is_err() || tcp.write_all(&payload).await.is_err() {
                return;
            }
        }
        let mut sink = vec![0; 64 << 10];
        while matches!(tcp.read(&mut sink).await, Ok(n) if n > 0) {}
    });
    addr
}

/// Read an upgrade request by hand and answer it 101.
async fn answer_upgrade(tcp: &mut tokio::net::TcpStream) {
    use tokio::io::AsyncReadExt;
    use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(tcp.read_u8().await.unwrap());
    }
    let head = String::from_utf8(head).unwrap();
    let key = head
        .lines()
        .find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case("sec-websocket-key")
                .then(|| v.trim().to_owned())
        })
        .unwrap();
    let answer = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n\r\n",
        derive_accept_key(key.as_bytes())
    );
    tcp.write_all(answer.as_bytes()).await.unwrap();
}

/// The most a TCP socket's receive and send buffers may grow to here
/// (`tcp_rmem` and `tcp_wmem` maxima; 32 and 4 MiB if they cannot be read).
fn socket_buffers_max() -> (usize, usize) {
    let max = |name: &str| {
        std::fs::read_to_string(format!("/proc/sys/net/ipv4/{name}"))
            .ok()
            .and_then(|s| s.split_whitespace().nth(2)?.parse::<usize>().ok())
    };
    (
        max("tcp_rmem").unwrap_or(32 << 20),
        max("tcp_wmem").unwrap_or(4 << 20),
    )
}

#[tokio::test]
async fn a_member_that_goes_silent_is_found_by_its_pings() {
    within(30, async {
        let silent = silent_member().await;
        let mut live = Backend::plain().await;
        let gw = Gateway::builder()
            .route(
                Route::upstream("/silent", [format!("ws://{silent}")])
                    .name("silent")
                    .key("upstream_ping_interval", "200ms"),
            )
            .route(
                Route::upstream("/live", [format!("ws://{}", live.addr)])
                    .name("live")
                    .key("upstream_ping_interval", "100ms"),
            )
            .start()
            .await;
        // Unanswered, and nothing else heard: 1011 to the client.
        let mut ws = gw.ws("/silent").await;
        let close = next_close(&mut ws).await.expect("a close code");
        assert_eq!(
            (u16::from(close.code), close.reason.as_str()),
            (1011, "upstream not answering")
        );
        drop(ws);
        let series =
            r#"wsgate_sessions_ended_total{route="silent",reason="upstream_ping_timeout"}"#;
        common::wait_for_metric(&gw, series, 1.0).await;

        // A member that answers is pinged with the session's own payload
        // (8 random bytes, the same for each ping), and its pongs are not
        // passed on to the client.
        let mut ws = gw.ws("/live").await;
        let mut payloads = Vec::new();
        while payloads.len() < 3 {
            if let Event::Ping(p) = live.next().await {
                payloads.push(p);
            }
        }
        assert_eq!(payloads[0].len(), 8);
        assert!(payloads.iter().all(|p| *p == payloads[0]));
        ws.send(Message::text("still here")).await.unwrap();
        assert_eq!(
            ws.next().await.unwrap().unwrap(),
            Message::text("still here")
        );
    })
    .await
}
