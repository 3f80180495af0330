//! HTTP CONNECT: into the gateway (plaintext and inside TLS), refused and
//! allowed targets, proxy authentication, malformed requests, and egress to
//! upstreams through a CONNECT proxy.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::backend::Backend;
use common::{Gateway, Route, Running, Section, within};
use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::Message;

/// A gateway with CONNECT tunnels on and these `[tunnel]` keys.
async fn tunnel_gateway(tunnel: impl FnOnce(Section) -> Section) -> Running {
    Gateway::builder().tunnel(tunnel).start().await
}

/// Send a request head and read the answer's head.
async fn ask<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, request: &str) -> String {
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read_u8().await {
            Ok(b) => head.push(b),
            Err(_) => break,
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// A CONNECT as Qt sends it: `Host` without the port, Proxy-Connection.
fn connect(target: &str, extra: &str) -> String {
    let host = target.rsplit_once(':').map_or(target, |(h, _)| h);
    format!(
        "CONNECT {target} HTTP/1.1\r\nHost: {host}\r\nProxy-Connection: keep-alive\r\n{extra}\r\n"
    )
}

/// wss to the echo route over `stream`, then one echo.
async fn wss_echo<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(gw: &Running, stream: S) {
    let tls = common::tls_over(stream, "localhost", &gw.certs.ca)
        .await
        .unwrap();
    let url = format!("wss://localhost:{}/echo", gw.addr.port());
    let (mut ws, _) = tokio_tungstenite::client_async(url, tls).await.unwrap();
    ws.send(Message::text("through the tunnel")).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::text("through the tunnel")
    );
}

#[tokio::test]
async fn connect_to_the_gateway_itself_in_plaintext_and_inside_tls() {
    within(20, async {
        let gw = tunnel_gateway(|t| t).await;
        let port = gw.addr.port();
        // Plaintext CONNECT (a client configured with wsgate as its proxy), by IP and by name.
        for target in [format!("127.0.0.1:{port}"), format!("localhost:{port}")] {
            let mut tcp = TcpStream::connect(gw.addr).await.unwrap();
            let answer = ask(&mut tcp, &connect(&target, "")).await;
            assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
            wss_echo(&gw, tcp).await;
        }
        // Inside TLS (wsgate as an HTTPS proxy), then TLS again in the tunnel.
        let mut tls = gw.tls().await.unwrap();
        let answer = ask(&mut tls, &connect(&format!("localhost:{port}"), "")).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        // Tunnels do not nest: CONNECT is refused inside a tunnel's TLS.
        let inner = common::tls_over(tls, "localhost", &gw.certs.ca)
            .await
            .unwrap();
        let mut inner = inner;
        let answer = ask(&mut inner, &connect(&format!("localhost:{port}"), "")).await;
        assert!(answer.starts_with("HTTP/1.1 405"), "{answer}");
        let mut tls = gw.tls().await.unwrap();
        assert!(
            ask(&mut tls, &connect(&format!("localhost:{port}"), ""))
                .await
                .starts_with("HTTP/1.1 200")
        );
        wss_echo(&gw, tls).await;
        // Plain HTTP other than CONNECT on the TLS port: a clear 400.
        let mut tcp = TcpStream::connect(gw.addr).await.unwrap();
        let answer = ask(&mut tcp, "GET /echo HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    })
    .await
}

#[tokio::test]
async fn targets_are_refused_before_any_dial_unless_allowed() {
    within(20, async {
        // Listeners that would see a connection if one were dialled.
        let watched = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let watched_port = watched.local_addr().unwrap().port();
        let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let echo_addr = echo.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = echo.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        // Allowed: the echo server, explicitly (and an unrelated network).
        let gw = tunnel_gateway(|t| {
            t.set(
                "allow",
                vec![
                    format!("127.0.0.1:{}", echo_addr.port()),
                    "10.9.9.9/32:*".into(),
                ],
            )
        })
        .await;
        let refused = [
            "127.0.0.1:22".to_owned(),
            "169.254.169.254:80".to_owned(),
            format!("127.0.0.1:{watched_port}"),
            format!("localhost:{watched_port}"),
            format!("0x7f.0.0.1:{watched_port}"),
            format!("2130706433:{watched_port}"),
            format!("[::ffff:127.0.0.1]:{watched_port}"),
            format!("{}", gw.admin_addr),
            "10.1.2.3:80".to_owned(),
        ];
        for target in &refused {
            let mut tcp = TcpStream::connect(gw.addr).await.unwrap();
            let answer = ask(&mut tcp, &connect(target, "")).await;
            assert!(
                answer.starts_with("HTTP/1.1 403") || answer.starts_with("HTTP/1.1 502"),
                "{target}: {answer}"
            );
            assert!(!answer.starts_with("HTTP/1.1 200"));
        }
        // Nothing reached the watched listener.
        assert!(
            watched.accept().now_or_never().is_none(),
            "a refused target was dialled"
        );

        // The admin listener stays refused even where all of loopback is allowed.
        let open = tunnel_gateway(|t| t.set("allow", vec!["127.0.0.0/8:*"])).await;
        let mut tcp = TcpStream::connect(open.addr).await.unwrap();
        let answer = ask(&mut tcp, &connect(&open.admin_addr.to_string(), "")).await;
        assert!(answer.starts_with("HTTP/1.1 403"), "admin: {answer}");

        // The allowed target gets spliced bytes both ways.
        let mut tcp = TcpStream::connect(gw.addr).await.unwrap();
        let answer = ask(&mut tcp, &connect(&echo_addr.to_string(), "")).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        let payload = vec![7u8; 100_000];
        let writer = async {
            tcp.write_all(&payload).await.unwrap();
            let mut back = vec![0u8; payload.len()];
            tcp.read_exact(&mut back).await.unwrap();
            back
        };
        assert_eq!(writer.await, payload);

        let (_, scrape) = gw.admin_get("/metrics").await;
        assert!(
            common::metric(&scrape, "wsgate_tunnels_total{result=\"spliced\"}").unwrap_or(0.0)
                >= 1.0,
            "{scrape}"
        );
        assert!(
            common::metric(&scrape, "wsgate_tunnels_total{result=\"denied\"}").unwrap_or(0.0)
                >= 1.0
        );
        assert!(
            common::metric(
                &scrape,
                "wsgate_tunnel_bytes_total{direction=\"client_to_target\"}"
            )
            .unwrap_or(0.0)
                >= 100_000.0
        );
    })
    .await
}

#[tokio::test]
async fn proxy_authentication_and_malformed_requests() {
    within(20, async {
        let gw = tunnel_gateway(|t| t.set("users", vec!["ann:s3cret"])).await;
        let target = format!("127.0.0.1:{}", gw.addr.port());
        let mut tcp = TcpStream::connect(gw.addr).await.unwrap();
        let answer = ask(&mut tcp, &connect(&target, "")).await;
        assert!(answer.starts_with("HTTP/1.1 407"), "{answer}");
        assert!(answer.to_ascii_lowercase().contains("proxy-authenticate: basic realm=\"wsgate\""), "{answer}");
        let mut tcp = TcpStream::connect(gw.addr).await.unwrap();
        // ann:wrong
        let answer = ask(&mut tcp, &connect(&target, "Proxy-Authorization: Basic YW5uOndyb25n\r\n")).await;
        assert!(answer.starts_with("HTTP/1.1 407"), "{answer}");
        let mut tcp = TcpStream::connect(gw.addr).await.unwrap();
        // ann:s3cret
        let answer = ask(&mut tcp, &connect(&target, "Proxy-Authorization: Basic YW5uOnMzY3JldA==\r\n")).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        wss_echo(&gw, tcp).await;

        let auth = "Proxy-Authorization: Basic YW5uOnMzY3JldA==\r\n";
        for bad in [
            format!("CONNECT 127.0.0.1 HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}\r\n"),
            format!("CONNECT {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5\r\n{auth}\r\nhello"),
            format!("CONNECT :{} HTTP/1.1\r\n{auth}\r\n", gw.addr.port()),
        ] {
            let mut tcp = TcpStream::connect(gw.addr).await.unwrap();
            let answer = ask(&mut tcp, &bad).await;
            assert!(answer.starts_with("HTTP/1.1 400"), "{bad:?}: {answer}");
        }
    })
    .await
}

/// A CONNECT proxy for the egress tests: records each target; answers
/// `status` (and splices when it is 200).
async fn egress_proxy(status: u16) -> (SocketAddr, Arc<Mutex<Vec<String>>>, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let connections = Arc::new(AtomicUsize::new(0));
    let (seen_task, connections_task) = (seen.clone(), connections.clone());
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            connections_task.fetch_add(1, Ordering::SeqCst);
            let seen = seen_task.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                while !head.ends_with(b"\r\n\r\n") {
                    head.push(client.read_u8().await.unwrap());
                }
                let head = String::from_utf8(head).unwrap();
                let target = head.split(' ').nth(1).unwrap().to_owned();
                assert!(head.starts_with("CONNECT "));
                seen.lock().await.push(target.clone());
                if status != 200 {
                    let _ = client
                        .write_all(
                            format!("HTTP/1.1 {status} Nope\r\nContent-Length: 0\r\n\r\n")
                                .as_bytes(),
                        )
                        .await;
                    return;
                }
                let mut upstream = TcpStream::connect(&target).await.unwrap();
                client
                    .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    .await
                    .unwrap();
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            });
        }
    });
    (addr, seen, connections)
}

#[tokio::test]
async fn upstreams_are_reached_through_an_egress_proxy() {
    within(20, async {
        let mut backend = Backend::plain().await;
        let (proxy, seen, _) = egress_proxy(200).await;
        let (refusing, refused_seen, _) = egress_proxy(403).await;
        let (unused, _, unused_connections) = egress_proxy(200).await;
        let to_backend = |path: &str, proxy: SocketAddr| {
            Route::upstream(path, [format!("ws://{}", backend.addr)])
                .key("proxy", format!("http://{proxy}"))
        };
        let gw = Gateway::builder()
            .tunnel(|t| t)
            .route(to_backend("/via", proxy).name("via"))
            .route(to_backend("/refused", refusing).name("refused"))
            .route(
                to_backend("/direct", unused)
                    .name("direct")
                    .key("no_proxy", vec!["127.0.0.0/8"]),
            )
            .start()
            .await;

        let mut ws = gw.ws("/via/room").await;
        ws.send(Message::text("via the proxy")).await.unwrap();
        assert_eq!(
            ws.next().await.unwrap().unwrap(),
            Message::text("via the proxy")
        );
        assert_eq!(backend.next_upgrade().await.0, "/via/room");
        assert_eq!(
            *seen.lock().await,
            vec![backend.addr.to_string()],
            "exactly one CONNECT, to the backend"
        );

        let (status, answer) = gw.upgrade("/refused").await;
        assert_eq!(status, 502, "{answer}");
        assert_eq!(refused_seen.lock().await.len(), 1);

        let _ws = gw.ws("/direct").await;
        backend.next_upgrade().await;
        assert_eq!(
            unused_connections.load(Ordering::SeqCst),
            0,
            "no_proxy hosts are dialled directly"
        );
    })
    .await
}
