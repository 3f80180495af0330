//! The chat page in a real browser: headless Chromium (Debian's package)
//! driven by playwright-core (`tests/browser/chat.cjs`) against the real
//! binary, with the test CA trusted through an NSS database. Two pages chat
//! and see each other's presence, a private message reaches only its
//! target, the echo panel answers, the raw room carries Qt-style frames,
//! subprotocols behave as a browser needs, and after the gateway restarts
//! the pages reconnect by themselves and chat again. Screenshots are kept in
//! `target/browser/` for a person to look at.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;

use common::*;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/browser")
}

/// What the test needs, installed by scripts/test.
fn prerequisites() -> PathBuf {
    let playwright = browser_dir().join("node_modules/playwright-core");
    for (what, path) in [
        ("chromium", Path::new("/usr/bin/chromium")),
        ("certutil (libnss3-tools)", Path::new("/usr/bin/certutil")),
        ("playwright-core", playwright.as_path()),
    ] {
        assert!(
            path.exists(),
            "{what} is not installed: run scripts/test, which installs it"
        );
    }
    playwright
}

/// A profile whose NSS database trusts `ca` (Chromium on Linux reads
/// `$HOME/.pki/nssdb`).
fn trusting_profile(ca: &Path) -> tempfile::TempDir {
    let profile = tempfile::tempdir().unwrap();
    let db = profile.path().join(".pki/nssdb");
    std::fs::create_dir_all(&db).unwrap();
    let db = format!("sql:{}", db.display());
    let certutil = |args: &[&str]| {
        let out = std::process::Command::new("certutil")
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "certutil {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    certutil(&["-d", &db, "-N", "--empty-password"]);
    let ca = ca.to_str().unwrap();
    certutil(&[
        "-d",
        &db,
        "-A",
        "-t",
        "C,,",
        "-n",
        "wsgate test CA",
        "-i",
        ca,
    ]);
    profile
}

/// The gateway the page talks to, as the shipped config has it (plus an
/// echo route that accepts unknown subprotocols without one).
fn gateway(certs: &Certs, addr: Option<std::net::SocketAddr>) -> Gateway {
    let mut gw = Gateway::builder()
        .tls_files(&certs.cert, &certs.key)
        .route(Route::new_kind("static", "/").name("page"))
        .route(Route::echo("/echo").key("subprotocols", vec!["chat", "echo"]))
        .route(
            Route::echo("/lax")
                .key("subprotocols", vec!["chat"])
                .key("unknown_subprotocol", "accept"),
        )
        .route(Route::hub("/chat").key("presence_events", true))
        .route(
            Route::hub("/room")
                .key("protocol", "raw")
                .key("channel_from_path", true)
                .key("direct_field", "dst"),
        );
    if let Some(addr) = addr {
        gw = gw.listen(|l| l.set("addr", addr.to_string()));
    }
    gw
}

#[tokio::test]
async fn two_pages_chat_privately_echo_and_reconnect_after_a_restart() {
    let playwright = prerequisites();
    within(180, async {
        let certs = certs(&["localhost", "127.0.0.1"]);
        let profile = trusting_profile(&certs.ca);
        let dir = tempfile::tempdir().unwrap();
        let first = gateway(&certs, None).write_binary_config(dir.path().join("first.toml"));
        let (mut binary, addr, _, _logs) = start_binary(&first);
        let again = gateway(&certs, Some(addr)).write_binary_config(dir.path().join("again.toml"));
        std::fs::create_dir_all(browser_dir()).unwrap();
        let mut node = tokio::process::Command::new("node")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/chat.cjs"))
            .env("WSGATE_URL", format!("https://localhost:{}", addr.port()))
            .env("WSGATE_PLAYWRIGHT", &playwright)
            .env("WSGATE_PROFILE", profile.path())
            .env("WSGATE_SHOTS", browser_dir())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("node runs");
        let mut answer = node.stdin.take().unwrap();
        let mut asks = BufReader::new(node.stdout.take().unwrap()).lines();
        let mut passed = false;
        let mut restarted = None;
        while let Some(line) = asks.next_line().await.unwrap() {
            match line.as_str() {
                "stop-gateway" => {
                    binary.kill().unwrap();
                    binary.wait().unwrap();
                    answer.write_all(b"stopped\n").await.unwrap();
                }
                "start-gateway" => {
                    let config = again.clone();
                    let started = tokio::task::spawn_blocking(move || start_binary(&config));
                    let (b, new_addr, _, logs) = started.await.unwrap();
                    assert_eq!(new_addr, addr);
                    restarted = Some((b, logs));
                    answer.write_all(b"started\n").await.unwrap();
                }
                "ok" => passed = true,
                other => panic!("unexpected from the browser script: {other}"),
            }
        }
        let status = node.wait().await.unwrap();
        assert!(
            status.success() && passed,
            "the browser script failed (its steps are above)"
        );
        assert!(restarted.is_some(), "the gateway was restarted");
        assert!(browser_dir().join("chat.png").exists());
    })
    .await;
}

#[tokio::test]
async fn a_page_over_http2_opens_its_websockets_as_http2_streams() {
    let playwright = prerequisites();
    within(120, async {
        let certs = certs(&["localhost", "127.0.0.1"]);
        let profile = trusting_profile(&certs.ca);
        let dir = tempfile::tempdir().unwrap();
        let config = gateway(&certs, None)
            .listen(|l| l.set("http2", true))
            .write_binary_config(dir.path().join("http2.toml"));
        let (_binary, addr, admin, _logs) = start_binary(&config);
        let node = tokio::process::Command::new("node")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/http2.cjs"))
            .env("WSGATE_URL", format!("https://localhost:{}", addr.port()))
            .env("WSGATE_PLAYWRIGHT", &playwright)
            .env("WSGATE_PROFILE", profile.path())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .output()
            .await
            .expect("node runs");
        let said = String::from_utf8_lossy(&node.stdout);
        assert!(
            node.status.success() && said.lines().any(|l| l == "ok"),
            "the browser script failed (its steps are above): {said}"
        );
        // The gateway saw the page's WebSockets arrive as HTTP/2 streams,
        // and none over HTTP/1.1.
        let (_, scrape) = http_get(admin, "/metrics").await;
        let h2 = r#"wsgate_websocket_handshakes_total{protocol="http2",result="accepted"}"#;
        let h1 = r#"wsgate_websocket_handshakes_total{protocol="http1",result="accepted"}"#;
        assert!(
            metric(&scrape, h2).unwrap_or(0.0) >= 2.0,
            "{h2} in\n{scrape}"
        );
        assert_eq!(metric(&scrape, h1), None, "{scrape}");
        assert!(metric(&scrape, "wsgate_http2_connections_total").unwrap_or(0.0) >= 1.0);
    })
    .await;
}
