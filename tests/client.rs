//! `wsgate client`, the real binary, against a real gateway: stdin lines
//! to messages and back to stdout (text and binary), subprotocols, a
//! reconnect across a gateway restart, CONNECT through the gateway itself
//! and through an egress proxy with credentials, and the exit status of
//! each kind of failure.

mod common;

use std::process::Stdio;

use common::*;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStderr, ChildStdout, Command};

/// `wsgate client` with `args`, stdin/stdout/stderr piped, no proxy from
/// the environment unless a test sets one.
fn client(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wsgate"));
    cmd.arg("client")
        .args(args)
        .env_remove("HTTPS_PROXY")
        .env_remove("https_proxy")
        .env_remove("HTTP_PROXY")
        .env_remove("http_proxy")
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

fn url(gw: &Running, path: &str) -> String {
    format!("wss://localhost:{}{path}", gw.addr.port())
}

/// Run to the end with `input` on stdin: (exit code, stdout, stderr).
async fn run(mut cmd: Command, input: &[u8]) -> (i32, Vec<u8>, String) {
    let mut child = cmd.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input).await.unwrap();
    drop(stdin);
    let out = child.wait_with_output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.code().unwrap_or(-1), out.stdout, stderr)
}

#[tokio::test]
async fn text_and_binary_lines_round_trip_through_echo() {
    within(30, async {
        let gw = Gateway::builder().start().await;
        let ca = gw.certs.ca.to_str().unwrap();
        let cmd = client(&[&url(&gw, "/echo"), "--ca", ca]);
        let (code, stdout, stderr) = run(cmd, b"hello\nw\xc3\xb6rld\n").await;
        assert_eq!(code, 0, "{stderr}");
        assert_eq!(stdout, "hello\nwörld\n".as_bytes());
        assert!(stderr.contains("connected to wss://localhost"), "{stderr}");
        // --insecure: no --ca, no verification.
        let cmd = client(&[&url(&gw, "/echo"), "--insecure", "--once"]);
        let (code, stdout, stderr) = run(cmd, b"unverified\n").await;
        assert_eq!(
            (code, stdout.as_slice()),
            (0, &b"unverified\n"[..]),
            "{stderr}"
        );
        let cmd = client(&[&url(&gw, "/echo"), "--ca", ca, "--binary"]);
        let (code, stdout, stderr) = run(cmd, b"\x00\x01\xff\nbin\n").await;
        assert_eq!(code, 0, "{stderr}");
        assert_eq!(stdout, b"\x00\x01\xff\nbin\n");
    })
    .await;
}

#[tokio::test]
async fn subprotocols_are_offered_selected_and_refused() {
    within(30, async {
        let gw = Gateway::builder()
            .route(Route::echo("/chat").key("subprotocols", vec!["chat", "v2"]))
            .route(
                Route::echo("/lax")
                    .key("subprotocols", vec!["chat"])
                    .key("unknown_subprotocol", "accept"),
            )
            .start()
            .await;
        let ca = gw.certs.ca.to_str().unwrap();
        let offer = |path: &str, protocols: &[&str]| {
            let mut args = vec![url(&gw, path), "--ca".into(), ca.into(), "--once".into()];
            for p in protocols {
                args.extend(["--subprotocol".to_owned(), p.to_string()]);
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            client(&args)
        };
        let (code, stdout, stderr) = run(offer("/chat", &["v9", "v2", "chat"]), b"hi\n").await;
        assert_eq!((code, stdout.as_slice()), (0, &b"hi\n"[..]), "{stderr}");
        assert!(stderr.contains("(subprotocol v2)"), "{stderr}");
        let (code, _, stderr) = run(offer("/chat", &["v1.json"]), b"").await;
        assert_eq!(code, 3, "{stderr}");
        assert!(
            stderr.contains("400") && stderr.contains("this route serves: chat, v2"),
            "{stderr}"
        );
        // Accepted without one: the 101 has no Sec-WebSocket-Protocol, which
        // a client that offered one must refuse (as browsers do).
        let (code, _, stderr) = run(offer("/lax", &["v1.json"]), b"").await;
        assert_eq!(code, 3, "{stderr}");
        assert!(stderr.to_lowercase().contains("subprotocol"), "{stderr}");
    })
    .await;
}

#[tokio::test]
async fn each_failure_has_its_exit_status() {
    within(60, async {
        let mut gw = Gateway::builder().tunnel(|t| t).start().await;
        let ca = gw.certs.ca.to_str().unwrap().to_owned();
        let closed = ClosedPort::new();
        // 3: the upgrade refused (no route).
        let (code, _, stderr) = run(client(&[&url(&gw, "/nowhere"), "--ca", &ca]), b"").await;
        assert_eq!(code, 3, "{stderr}");
        assert!(stderr.contains("404"), "{stderr}");
        // 4: a certificate the system does not trust.
        let (code, _, stderr) = run(client(&[&url(&gw, "/echo")]), b"").await;
        assert_eq!(code, 4, "{stderr}");
        // 5: a proxy that is not there, and one that refuses the CONNECT
        // (the gateway allows no CONNECT to other targets).
        let proxy = format!("http://{}", closed.addr);
        let (code, _, stderr) = run(
            client(&[&url(&gw, "/echo"), "--ca", &ca, "--proxy", &proxy]),
            b"",
        )
        .await;
        assert_eq!(code, 5, "{stderr}");
        let proxy = format!("http://{}", gw.addr);
        let elsewhere = format!("wss://localhost:{}/echo", closed.addr.port());
        let (code, _, stderr) =
            run(client(&[&elsewhere, "--ca", &ca, "--proxy", &proxy]), b"").await;
        assert_eq!(code, 5, "{stderr}");
        assert!(stderr.contains("403"), "{stderr}");
        // 7: nothing listening.
        let (code, _, stderr) = run(client(&[&elsewhere, "--ca", &ca]), b"").await;
        assert_eq!(code, 7, "{stderr}");
        // 2: a bad command line; 1: a bad URL.
        let (code, _, _) = run(client(&[&url(&gw, "/echo"), "--count", "x"]), b"").await;
        assert_eq!(code, 2);
        let (code, _, stderr) = run(client(&["https://localhost/"]), b"").await;
        assert_eq!(code, 1, "{stderr}");
        // 6: the gateway shuts down under a session (Close 1001).
        let mut session = client(&[&url(&gw, "/echo"), "--ca", &ca]).spawn().unwrap();
        let mut stdin = session.stdin.take().unwrap();
        let mut out = lines(session.stdout.take().unwrap());
        stdin.write_all(b"up?\n").await.unwrap();
        assert_eq!(out.next_line().await.unwrap().as_deref(), Some("up?"));
        gw.stop();
        let status = session.wait().await.unwrap();
        assert_eq!(status.code(), Some(6));
    })
    .await;
}

fn lines<R: tokio::io::AsyncRead + Unpin>(r: R) -> Lines<BufReader<R>> {
    BufReader::new(r).lines()
}

/// Read stderr lines until one contains `what`.
async fn wait_for(stderr: &mut Lines<BufReader<ChildStderr>>, what: &str) {
    while let Some(line) = stderr.next_line().await.unwrap() {
        if line.contains(what) {
            return;
        }
    }
    panic!("stderr ended before {what:?}");
}

async fn next(out: &mut Lines<BufReader<ChildStdout>>) -> Option<String> {
    out.next_line().await.unwrap()
}

struct Session {
    child: Child,
    stdin: tokio::process::ChildStdin,
    out: Lines<BufReader<ChildStdout>>,
    err: Lines<BufReader<ChildStderr>>,
}

fn session(mut cmd: Command) -> Session {
    let mut child = cmd.spawn().unwrap();
    Session {
        stdin: child.stdin.take().unwrap(),
        out: lines(child.stdout.take().unwrap()),
        err: lines(child.stderr.take().unwrap()),
        child,
    }
}

#[tokio::test]
async fn reconnects_after_the_gateway_restarts() {
    within(60, async {
        let builder = || Gateway::builder();
        let mut gw = builder().start().await;
        let ca = gw.certs.ca.to_str().unwrap().to_owned();
        let mut s = session(client(&[
            &url(&gw, "/echo"),
            "--ca",
            &ca,
            "--reconnect",
            "200ms",
        ]));
        s.stdin.write_all(b"one\n").await.unwrap();
        assert_eq!(next(&mut s.out).await.as_deref(), Some("one"));
        let addr = gw.addr;
        let certs = gw.certs.dir.path().to_owned();
        gw.stop();
        wait_for(&mut s.err, "1001").await;
        wait_for(&mut s.err, "reconnecting in 200ms").await;
        (&mut gw.join).await.unwrap().unwrap();
        // The same port and certificate again; the line typed while down
        // waits for the new connection.
        s.stdin.write_all(b"two\n").await.unwrap();
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let again = builder()
            .tls_files(&certs.join("cert.pem"), &certs.join("key.pem"))
            .start_on(listener)
            .await;
        wait_for(&mut s.err, "connected to").await;
        assert_eq!(next(&mut s.out).await.as_deref(), Some("two"));
        drop(s.stdin);
        assert_eq!(s.child.wait().await.unwrap().code(), Some(0));
        drop(again);
    })
    .await;
}

#[tokio::test]
async fn proxies_the_gateway_itself_and_an_egress_proxy_with_credentials() {
    within(60, async {
        let gw = Gateway::builder().tunnel(|t| t).start().await;
        let ca = gw.certs.ca.to_str().unwrap().to_owned();
        // CONNECT to the gateway itself, served in process.
        let own = format!("http://{}", gw.addr);
        let cmd = client(&[&url(&gw, "/echo"), "--ca", &ca, "--proxy", &own]);
        let (code, stdout, stderr) = run(cmd, b"via itself\n").await;
        assert_eq!(
            (code, stdout.as_slice()),
            (0, &b"via itself\n"[..]),
            "{stderr}"
        );
        // A second gateway as the egress proxy: Basic credentials, and
        // loopback targets allowed.
        let proxy = Gateway::builder()
            .tunnel(|t| {
                t.set("users", vec!["ann:s3cret"])
                    .set("allow", vec!["127.0.0.0/8:*"])
            })
            .start()
            .await;
        let with = format!("http://ann:s3cret@{}", proxy.addr);
        let cmd = client(&[&url(&gw, "/echo"), "--ca", &ca, "--proxy", &with]);
        let (code, stdout, stderr) = run(cmd, b"via egress\n").await;
        assert_eq!(
            (code, stdout.as_slice()),
            (0, &b"via egress\n"[..]),
            "{stderr}"
        );
        let wrong = format!("http://ann:nope@{}", proxy.addr);
        let cmd = client(&[&url(&gw, "/echo"), "--ca", &ca, "--proxy", &wrong]);
        let (code, _, stderr) = run(cmd, b"").await;
        assert_eq!(code, 5, "{stderr}");
        assert!(stderr.contains("407"), "{stderr}");
        // HTTPS_PROXY from the environment, and NO_PROXY around it.
        let mut cmd = client(&[&url(&gw, "/echo"), "--ca", &ca]);
        cmd.env("HTTPS_PROXY", &with);
        let (code, stdout, stderr) = run(cmd, b"env\n").await;
        assert_eq!((code, stdout.as_slice()), (0, &b"env\n"[..]), "{stderr}");
        let mut cmd = client(&[&url(&gw, "/echo"), "--ca", &ca]);
        cmd.env("HTTPS_PROXY", &wrong)
            .env("NO_PROXY", "example.com,localhost");
        let (code, _, stderr) = run(cmd, b"direct\n").await;
        assert_eq!(code, 0, "NO_PROXY bypasses the proxy: {stderr}");
        let mut cmd = client(&[&url(&gw, "/echo"), "--ca", &ca, "--no-env-proxy"]);
        cmd.env("HTTPS_PROXY", &wrong);
        let (code, _, stderr) = run(cmd, b"ignored\n").await;
        assert_eq!(code, 0, "--no-env-proxy: {stderr}");
    })
    .await;
}

#[tokio::test]
async fn headers_origin_and_pings_reach_a_plain_ws_server() {
    within(30, async {
        let mut backend = backend::Backend::plain().await;
        let target = format!("ws://127.0.0.1:{}/app?x=1", backend.addr.port());
        let cmd = client(&[
            &target,
            "-H",
            "X-Team: blue",
            "--header",
            "Authorization: Bearer abc",
            "--origin",
            "https://app.example",
            "--ping",
            "20ms",
        ]);
        let mut s = session(cmd);
        let (path, headers) = backend.next_upgrade().await;
        assert_eq!(path, "/app?x=1");
        assert_eq!(headers["x-team"], "blue");
        assert_eq!(headers["authorization"], "Bearer abc");
        assert_eq!(headers["origin"], "https://app.example");
        // Pings go out every 20 ms (the backend counts what it sees).
        loop {
            if let backend::Event::Ping(_) = backend.next().await {
                break;
            }
        }
        s.stdin.write_all(b"still here\n").await.unwrap();
        assert_eq!(next(&mut s.out).await.as_deref(), Some("still here"));
        drop(s.stdin);
        assert_eq!(s.child.wait().await.unwrap().code(), Some(0));
    })
    .await;
}

/// A plain ws:// server on loopback that accepts one client and hands its
/// stream to `then`.
async fn one_client_server<F, Fut>(then: F) -> String
where
    F: FnOnce(tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
        then(ws).await;
    });
    url
}

#[tokio::test]
async fn a_server_that_stops_answering_ends_the_client_on_time() {
    within(30, async {
        // Pings without pongs: the connection is dead (exit 6).
        let (hold, held) = tokio::sync::oneshot::channel::<()>();
        let silent = one_client_server(|ws| async move {
            let _ = held.await;
            drop(ws);
        })
        .await;
        let mut s = session(client(&[&silent, "--ping", "50ms"]));
        wait_for(&mut s.err, "no pong").await;
        assert_eq!(s.child.wait().await.unwrap().code(), Some(6));
        drop(hold);

        // The server closes cleanly but keeps the socket open: once both
        // Closes went, the client ends the connection itself (exit 0).
        let (hold, held) = tokio::sync::oneshot::channel::<()>();
        let lingering = one_client_server(|mut ws| async move {
            let normal = tokio_tungstenite::tungstenite::protocol::CloseFrame {
                code: tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode::Normal,
                reason: "".into(),
            };
            let _ = ws.close(Some(normal)).await;
            let _ = held.await;
            drop(ws);
        })
        .await;
        let mut s = session(client(&[&lingering]));
        assert_eq!(s.child.wait().await.unwrap().code(), Some(0));
        drop((hold, s.stdin));
    })
    .await;
}
