//! WebSockets over HTTP/2 (RFC 8441, `[listen] http2 = true`): many sessions
//! on one connection to every route kind, the HTTP/1.1 answers to bad
//! requests, flow control per stream, the stream cap, resets, the idle
//! deadline, the drain, and HTTP/1.1 clients on the same port.

mod common;

use bytes::Bytes;
use common::backend::Backend;
use common::h2::{H2, tls_alpn};
use common::{Gateway, Route, Running, next_close, next_data, within};
use futures_util::{SinkExt, StreamExt};
use http::{Method, Request};
use http_body_util::Empty;
use hyper::ext::Protocol;
use tokio_tungstenite::tungstenite::Message;

fn http2_gateway() -> Gateway {
    Gateway::builder().listen(|l| l.set("http2", true))
}

async fn scrape(gw: &Running) -> String {
    gw.admin_get("/metrics").await.1
}

fn at_least(scrape: &str, series: &str, n: f64) {
    let value = common::metric(scrape, series).unwrap_or(0.0);
    assert!(value >= n, "{series} = {value}, want >= {n}");
}

#[tokio::test]
async fn one_connection_carries_websockets_to_echo_hub_and_upstream() {
    within(20, async {
        let mut backend = Backend::plain().await;
        let mut gw = http2_gateway()
            .route(Route::echo("/echo").name("h2_echo"))
            .route(
                Route::hub("/room")
                    .name("h2_room")
                    .key("protocol", "raw")
                    .key("channel", "lobby"),
            )
            .route(Route::upstream("/up", [format!("ws://{}", backend.addr)]).name("h2_up"))
            .start()
            .await;
        let mut h2 = H2::connect(&gw).await;

        let mut echo = h2.ws("/echo").await;
        echo.send(Message::text("over h2")).await.unwrap();
        assert_eq!(next_data(&mut echo).await, Message::text("over h2"));

        let mut ann = h2.ws("/room?name=ann").await;
        let mut bob = h2.ws("/room?name=bob").await;
        ann.send(Message::text("hi bob")).await.unwrap();
        assert_eq!(next_data(&mut bob).await, Message::text("hi bob"));

        // The member gets an HTTP/1.1 upgrade with the client's host as
        // forwarded, from `:authority`.
        let mut up = h2.ws("/up?x=1").await;
        let (path, headers) = backend.next_upgrade().await;
        assert_eq!(path, "/up?x=1");
        let port = gw.addr.port();
        assert_eq!(headers["x-forwarded-host"], format!("localhost:{port}"));
        up.send(Message::binary(vec![7u8; 70_000])).await.unwrap();
        assert_eq!(next_data(&mut up).await, Message::binary(vec![7u8; 70_000]));

        // An HTTP/1.1 client on the same port, as before.
        let mut h1 = gw.ws("/echo").await;
        h1.send(Message::text("over h1")).await.unwrap();
        assert_eq!(next_data(&mut h1).await, Message::text("over h1"));

        let scrape = scrape(&gw).await;
        for (series, n) in [
            (
                r#"wsgate_connections_total{route="h2_echo",kind="echo"}"#,
                2.0,
            ),
            (
                r#"wsgate_connections_total{route="h2_room",kind="hub"}"#,
                2.0,
            ),
            (
                r#"wsgate_connections_total{route="h2_up",kind="upstream"}"#,
                1.0,
            ),
        ] {
            assert_eq!(common::metric(&scrape, series), Some(n), "{series}");
        }
        let accepted = r#"wsgate_websocket_handshakes_total{protocol="http2",result="accepted"}"#;
        at_least(&scrape, accepted, 4.0);
        let accepted = r#"wsgate_websocket_handshakes_total{protocol="http1",result="accepted"}"#;
        at_least(&scrape, accepted, 1.0);
        at_least(&scrape, r#"wsgate_sessions_open{protocol="http2"}"#, 4.0);
        at_least(&scrape, "wsgate_http2_connections_open", 1.0);
        at_least(&scrape, "wsgate_http2_streams_open", 4.0);

        // A normal close ends one stream; the others go on.
        echo.close(None).await.unwrap();
        while let Some(Ok(_)) = echo.next().await {}
        bob.send(Message::text("still here")).await.unwrap();
        assert_eq!(next_data(&mut ann).await, Message::text("still here"));

        // The drain: every session gets 1001, the connection ends.
        gw.stop();
        for ws in [&mut ann, &mut bob, &mut up] {
            assert_eq!(next_close(ws).await.map(|f| u16::from(f.code)), Some(1001));
            // The reply goes out, and the stream ends.
            while let Some(Ok(_)) = ws.next().await {}
        }
        assert_eq!(
            next_close(&mut h1).await.map(|f| u16::from(f.code)),
            Some(1001)
        );
        while let Some(Ok(_)) = h1.next().await {}
        h2.conn.await.unwrap().unwrap();
        gw.join.await.unwrap().unwrap();
    })
    .await
}

#[tokio::test]
async fn a_bad_request_gets_the_status_it_gets_over_http1() {
    within(20, async {
        let gw = http2_gateway()
            .listen(|l| l.set("http2", true).set("connect_tunnel", true))
            .route(Route::echo("/echo"))
            .start()
            .await;
        let mut h2 = H2::connect(&gw).await;
        let connect = |h2: &H2, path: &str| h2.connect_request(path).body(Empty::new()).unwrap();

        let no_route = connect(&h2, "/nowhere");
        assert_eq!(h2.status(no_route).await.0, 404);
        let mut no_version = connect(&h2, "/echo");
        no_version.headers_mut().remove("sec-websocket-version");
        assert_eq!(h2.status(no_version).await.0, 426);
        let mut v8 = connect(&h2, "/echo");
        v8.headers_mut()
            .insert("sec-websocket-version", "8".parse().unwrap());
        assert_eq!(h2.status(v8).await.0, 426);
        let mut other_host = connect(&h2, "/echo");
        other_host
            .headers_mut()
            .insert("host", "elsewhere.test".parse().unwrap());
        assert_eq!(h2.status(other_host).await.0, 400);
        let mut chat = connect(&h2, "/echo");
        chat.extensions_mut().insert(Protocol::from_static("chat"));
        assert_eq!(h2.status(chat).await.0, 426);

        // Not WebSocket requests: a GET is 426 as over HTTP/1.1; a CONNECT
        // tunnel is HTTP/1.1's only, even where tunnels are on.
        let get = Request::get(format!("https://localhost:{}/echo", gw.addr.port()))
            .body(Empty::new())
            .unwrap();
        assert_eq!(h2.status(get).await.0, 426);
        let tunnel = Request::builder()
            .method(Method::CONNECT)
            .uri(format!("localhost:{}", gw.addr.port()))
            .body(Empty::<Bytes>::new())
            .unwrap();
        assert_eq!(h2.status(tunnel).await.0, 405);

        // The WebSocket attempts among them (the first four) were counted by
        // protocol and reason, and the connection still serves.
        let scrape = scrape(&gw).await;
        let refused = r#"wsgate_websocket_handshakes_total{protocol="http2",result="refused"}"#;
        at_least(&scrape, refused, 4.0);
        at_least(
            &scrape,
            r#"wsgate_handshake_failures_total{reason="version"}"#,
            2.0,
        );
        let mut ws = h2.ws("/echo").await;
        ws.send(Message::text("after")).await.unwrap();
        assert_eq!(next_data(&mut ws).await, Message::text("after"));
    })
    .await
}

#[tokio::test]
async fn a_stream_that_stops_reading_never_stalls_its_siblings() {
    within(30, async {
        let gw = http2_gateway().route(Route::echo("/echo")).start().await;
        // The client's windows: small per stream, so the stalled stream's
        // echoes stop at the gateway; large for the connection, so the
        // client itself does not stall the other stream.
        let mut h2 = H2::connect_with(&gw, |b| {
            b.initial_stream_window_size(16 << 10)
                .initial_connection_window_size(8 << 20);
        })
        .await;
        let stalled = h2.ws("/echo").await;
        let mut flowing = h2.ws("/echo").await;
        let (mut stalled_tx, mut stalled_rx) = stalled.split();
        // 2 MiB into a stream nobody reads: far more than every window and
        // buffer on the way, so the writer must stop.
        const STALLED: usize = 128;
        let writer = tokio::spawn(async move {
            for i in 0..STALLED {
                let message = Message::binary(vec![i as u8; 16 << 10]);
                stalled_tx.send(message).await.unwrap();
            }
            stalled_tx
        });
        // Meanwhile its sibling moves 4 MiB each way.
        for i in 0..256u32 {
            let message = Message::binary(vec![i as u8; 16 << 10]);
            flowing.send(message.clone()).await.unwrap();
            assert_eq!(next_data(&mut flowing).await, message);
        }
        assert!(
            !writer.is_finished(),
            "the stalled stream's writer was never held back"
        );
        // Read the stalled stream: everything arrives, in order.
        for i in 0..STALLED {
            match stalled_rx.next().await {
                Some(Ok(Message::Binary(b))) => {
                    assert_eq!((b.len(), b[0]), (16 << 10, i as u8));
                }
                other => panic!("message {i}: {other:?}"),
            }
        }
        drop(writer.await.unwrap());
    })
    .await
}

/// A WebSocket on a stream of the `h2` crate's client, where the test needs
/// what hyper's does not expose (the server's settings, resets).
async fn raw_stream(
    client: &h2::client::SendRequest<Bytes>,
    port: u16,
    path: &str,
) -> (h2::SendStream<Bytes>, h2::RecvStream) {
    let request = Request::builder()
        .method(Method::CONNECT)
        .uri(format!("https://localhost:{port}{path}"))
        .extension(h2::ext::Protocol::from_static("websocket"))
        .header("sec-websocket-version", "13")
        .body(())
        .unwrap();
    let mut client = client.clone().ready().await.unwrap();
    let (response, send) = client.send_request(request, false).unwrap();
    let response = response.await.unwrap();
    assert_eq!(response.status(), 200);
    (send, response.into_body())
}

/// One masked text frame, and the echo's unmasked frame read back.
async fn raw_echo(send: &mut h2::SendStream<Bytes>, recv: &mut h2::RecvStream, text: &str) {
    let mask = [1u8, 2, 3, 4];
    let mut frame = vec![0x81, 0x80 | text.len() as u8];
    frame.extend(mask);
    frame.extend(text.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    send.send_data(frame.into(), false).unwrap();
    let mut got = Vec::new();
    while got.len() < 2 + text.len() {
        let data = recv.data().await.expect("an echo").unwrap();
        let _ = recv.flow_control().release_capacity(data.len());
        got.extend_from_slice(&data);
    }
    assert_eq!(&got[..2], &[0x81, text.len() as u8]);
    assert_eq!(&got[2..], text.as_bytes());
}

#[tokio::test]
async fn streams_are_capped_and_a_reset_ends_only_its_session() {
    within(20, async {
        let gw = http2_gateway()
            .listen(|l| l.set("http2", true).set("http2_max_streams", 2))
            .route(Route::echo("/echo").name("h2_reset"))
            .start()
            .await;
        let port = gw.addr.port();
        let tls = tls_alpn(&gw, &[b"h2"]).await;
        let (client, conn) = h2::client::handshake(tls).await.unwrap();
        tokio::spawn(conn);
        let (mut a_send, _a_recv) = raw_stream(&client, port, "/echo").await;
        let (mut b_send, mut b_recv) = raw_stream(&client, port, "/echo").await;
        // The cap is the gateway's advertised setting.
        assert_eq!(client.current_max_send_streams(), 2);
        raw_echo(&mut b_send, &mut b_recv, "before").await;

        // A reset ends its own session, as a client gone; its sibling
        // goes on, and its place is free for a new stream.
        a_send.send_reset(h2::Reason::CANCEL);
        let series = r#"wsgate_sessions_ended_total{route="h2_reset",reason="client_gone"}"#;
        common::wait_for_metric(&gw, series, 1.0).await;
        raw_echo(&mut b_send, &mut b_recv, "after").await;
        let (mut c_send, mut c_recv) = raw_stream(&client, port, "/echo").await;
        raw_echo(&mut c_send, &mut c_recv, "third").await;
    })
    .await
}

#[tokio::test]
async fn each_websocket_stream_counts_as_a_connection() {
    within(20, async {
        let gw = http2_gateway()
            .limits(|l| l.set("max_connections_per_ip", 3))
            .route(Route::echo("/echo").name("h2_admitted"))
            .start()
            .await;
        // The connection is one, each WebSocket on it one more.
        let mut h2 = H2::connect(&gw).await;
        let mut first = h2.ws("/echo").await;
        let _second = h2.ws("/echo").await;
        let third = h2.connect_request("/echo").body(Empty::new()).unwrap();
        let (status, body) = h2.status(third).await;
        assert_eq!(
            (status, body.as_str()),
            (503, "503 too many connections, try again later\n")
        );
        let scrape = scrape(&gw).await;
        at_least(
            &scrape,
            r#"wsgate_handshake_failures_total{reason="per_ip"}"#,
            1.0,
        );
        first.close(None).await.unwrap();
        while let Some(Ok(_)) = first.next().await {}
        // A session that ends gives its place back (once the gateway has
        // seen the end).
        let series = r#"wsgate_sessions_ended_total{route="h2_admitted",reason="client_closed"}"#;
        common::wait_for_metric(&gw, series, 1.0).await;
        let mut again = h2.ws("/echo").await;
        again.send(Message::text("in its place")).await.unwrap();
        assert_eq!(next_data(&mut again).await, Message::text("in its place"));
    })
    .await
}

#[tokio::test]
async fn the_request_reaches_a_member_as_http1_would_carry_it() {
    within(20, async {
        let mut backend = Backend::plain().await;
        let gw = http2_gateway()
            .limits(|l| l.set("handshake_rate", 5))
            .route(Route::upstream("/up", [format!("ws://{}", backend.addr)]))
            .route(Route::echo("/echo"))
            .start()
            .await;
        let mut h2 = H2::connect(&gw).await;
        // A browser's cookie crumbs (separate fields over HTTP/2) reach the
        // member as one Cookie header (RFC 9113 section 8.2.3).
        let mut request = h2.connect_request("/up").body(Empty::new()).unwrap();
        request
            .headers_mut()
            .append("cookie", "a=1".parse().unwrap());
        request
            .headers_mut()
            .append("cookie", "b=2".parse().unwrap());
        let (_up, _) = h2.ws_with(request).await;
        let (_, headers) = backend.next_upgrade().await;
        let cookies: Vec<_> = headers.get_all("cookie").iter().collect();
        assert_eq!(cookies, ["a=1; b=2"]);

        // A request for a host other than the connection's SNI name: 421,
        // so a browser that reuses a connection asks again on its own.
        let other = Request::builder()
            .method(Method::CONNECT)
            .uri(format!("https://other.test:{}/echo", gw.addr.port()))
            .extension(Protocol::from_static("websocket"))
            .header("sec-websocket-version", "13")
            .body(Empty::new())
            .unwrap();
        assert_eq!(h2.status(other).await.0, 421);

        // Streams do not spend the global handshake rate (5/s here), which
        // paces new connections: one client's streams never use it up.
        let mut streams = Vec::new();
        for _ in 0..12 {
            streams.push(h2.ws("/echo").await);
        }
        let mut h1 = gw.ws("/echo").await;
        h1.send(Message::text("still admitted")).await.unwrap();
        assert_eq!(next_data(&mut h1).await, Message::text("still admitted"));
    })
    .await
}

#[tokio::test]
async fn a_stream_left_unread_ends_its_session_and_then_its_connection() {
    within(30, async {
        let gw = http2_gateway()
            .limits(|l| {
                l.set("send_timeout", "1s")
                    .set("close_timeout", "1s")
                    .set("ping_interval", "off")
            })
            .route(Route::echo("/echo").name("h2_stalled"))
            .start()
            .await;
        // The client's window per stream is small and never given back on
        // the stalled stream: the echo's writes to it block.
        let mut h2 = H2::connect_with(&gw, |b| {
            b.initial_stream_window_size(16 << 10)
                .initial_connection_window_size(8 << 20);
        })
        .await;
        let stalled = h2.ws("/echo").await;
        let (mut stalled_tx, _stalled_rx) = stalled.split();
        let writer = tokio::spawn(async move {
            for _ in 0..64 {
                if stalled_tx
                    .send(Message::binary(vec![1u8; 32 << 10]))
                    .await
                    .is_err()
                {
                    break;
                }
            }
            stalled_tx
        });
        // The session ends by the send timeout, counted as such; its writes
        // still blocked a send timeout later, the connection is closed
        // (as a stalled HTTP/1.1 client loses its TCP connection), so the
        // stream never outlives its session holding memory.
        let series =
            r#"wsgate_sessions_ended_total{route="h2_stalled",reason="client_send_timeout"}"#;
        common::wait_for_metric(&gw, series, 1.0).await;
        let _ = h2.conn.await.unwrap();
        drop(writer);
    })
    .await
}

#[tokio::test]
async fn a_session_whose_client_never_answers_its_close_leaves_the_connection_up() {
    within(30, async {
        let gw = http2_gateway()
            .limits(|l| {
                l.set("idle_timeout", "1s")
                    .set("close_timeout", "1s")
                    .set("send_timeout", "1s")
                    .set("ping_interval", "off")
            })
            .route(Route::echo("/echo").name("h2_unanswered"))
            .start()
            .await;
        let mut h2 = H2::connect(&gw).await;
        // Never read: its Close goes unanswered, but its writes drained.
        let _silent = h2.ws("/echo").await;
        let series = r#"wsgate_sessions_ended_total{route="h2_unanswered",reason="idle_timeout"}"#;
        common::wait_for_metric(&gw, series, 1.0).await;
        // Longer than the send timeout the stream had to end in: the
        // connection stays, and a new session on it works.
        let stayed =
            tokio::time::timeout(std::time::Duration::from_millis(2500), &mut h2.conn).await;
        assert!(stayed.is_err(), "the connection was closed: {stayed:?}");
        let mut ws = h2.ws("/echo").await;
        ws.send(Message::text("still up")).await.unwrap();
        assert_eq!(next_data(&mut ws).await, Message::text("still up"));
    })
    .await
}

#[tokio::test]
async fn an_idle_connection_lives_while_a_stream_is_open_and_closes_after() {
    within(20, async {
        let gw = http2_gateway()
            .listen(|l| l.set("http2", true).set("http2_idle_timeout", "1s"))
            .route(Route::echo("/echo"))
            .start()
            .await;
        let mut h2 = H2::connect(&gw).await;
        let mut ws = h2.ws("/echo").await;
        // Open longer than the idle timeout: the connection stays.
        let stayed =
            tokio::time::timeout(std::time::Duration::from_millis(2500), &mut h2.conn).await;
        assert!(stayed.is_err(), "closed with a session open: {stayed:?}");
        ws.send(Message::text("still here")).await.unwrap();
        assert_eq!(next_data(&mut ws).await, Message::text("still here"));
        // Its last stream closed, the connection is closed after the idle
        // timeout.
        ws.close(None).await.unwrap();
        while let Some(Ok(_)) = ws.next().await {}
        h2.conn.await.unwrap().unwrap();
    })
    .await
}

#[tokio::test]
async fn a_connection_without_streams_is_closed_and_http2_off_is_not_offered() {
    within(20, async {
        let gw = http2_gateway()
            .limits(|l| l.set("handshake_timeout", "1s"))
            .route(Route::echo("/echo"))
            .start()
            .await;
        // No request by the handshake deadline: GOAWAY, and the connection
        // ends.
        let idle = H2::connect(&gw).await;
        idle.conn.await.unwrap().unwrap();

        // With http2 off (the default), ALPN never picks h2.
        let plain = Gateway::builder().route(Route::echo("/echo")).start().await;
        let tls = tls_alpn(&plain, &[b"h2", b"http/1.1"]).await;
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    })
    .await
}
