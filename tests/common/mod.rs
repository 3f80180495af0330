//! Test harness: a real gateway on 127.0.0.1:0 built with
//! `Gateway::builder()`, certificates made in the test, real rustls +
//! tokio-tungstenite clients and hyper's HTTP client, one helper per action.
#![allow(dead_code, unused_imports)]

pub mod backend;
mod client;
mod gateway;
pub mod h2;
pub mod hub;
mod ports;
mod redis;

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use wsgate::devcert;

pub use client::{
    Ws, client_config, close, http_get, http_over, next_close, next_data, request, tls_connect,
    tls_over, try_http, ws_connect, ws_connect_with_cert,
};
pub use gateway::{Gateway, Route, Running, Section, path};
pub use ports::ClosedPort;
pub use redis::Redis;

/// Every test body runs under this bound, so a hang fails fast.
pub async fn within<F: Future>(secs: u64, fut: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(secs), fut)
        .await
        .expect("test timed out")
}

/// A dev CA and leaf written to a temporary directory.
pub struct Certs {
    pub dir: tempfile::TempDir,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

pub fn certs(hosts: &[&str]) -> Certs {
    let dir = tempfile::tempdir().unwrap();
    certs_in(dir, hosts)
}

fn certs_in(dir: tempfile::TempDir, hosts: &[&str]) -> Certs {
    let hosts: Vec<String> = hosts.iter().map(|h| h.to_string()).collect();
    let made = devcert::generate(&hosts).unwrap();
    let w = made
        .write(&dir.path().join("cert.pem"), &dir.path().join("key.pem"))
        .unwrap();
    Certs {
        ca: w.ca,
        cert: w.cert,
        key: w.key,
        dir,
    }
}

/// The value of one sample in a Prometheus text scrape, e.g.
/// `metric(&body, "wsgate_connections_rejected_total{reason=\"capacity\"}")`.
pub fn metric(scrape: &str, series: &str) -> Option<f64> {
    scrape.lines().find_map(|line| {
        let rest = line.strip_prefix(series)?;
        rest.strip_prefix(' ')?.trim().parse().ok()
    })
}

/// Status line of a raw HTTP response.
pub fn status_of(response: &str) -> u16 {
    response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// A valid upgrade request for `path`, with `extra` header lines.
pub fn upgrade_request(path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n"
    )
}

/// Read one server frame (unmasked, payload under 126 bytes: control frames
/// and the small messages these tests use); returns (opcode, payload).
pub async fn read_small_frame(tls: &mut TlsStream<TcpStream>) -> (u8, Vec<u8>) {
    let b0 = tls.read_u8().await.unwrap();
    let len = tls.read_u8().await.unwrap() & 0x7f;
    assert!(len < 126, "frame too large for this helper");
    let mut payload = vec![0u8; len as usize];
    tls.read_exact(&mut payload).await.unwrap();
    (b0 & 0x0f, payload)
}

/// Read frames until a Close; returns its code.
pub async fn read_until_close(tls: &mut TlsStream<TcpStream>) -> (Vec<u8>, u16) {
    let mut opcodes = Vec::new();
    loop {
        let (opcode, payload) = read_small_frame(tls).await;
        opcodes.push(opcode);
        if opcode == 0x8 {
            return (opcodes, u16::from_be_bytes([payload[0], payload[1]]));
        }
    }
}

/// Scrape the admin listener until `series` has `value` (each scrape is a
/// real request; the caller's `within` bounds the wait).
pub async fn wait_for_metric(gw: &Running, series: &str, value: f64) {
    loop {
        let (_, scrape) = gw.admin_get("/metrics").await;
        if metric(&scrape, series) == Some(value) {
            return;
        }
        tokio::task::yield_now().await;
    }
}

/// Ask `/readyz` until its body starts with `state` (`ready`, `degraded`);
/// the caller's `within` bounds the wait.
pub async fn wait_for_readyz(gw: &Running, state: &str) {
    loop {
        let (status, body) = gw.admin_get("/readyz").await;
        if status == 200 && body.starts_with(state) {
            return;
        }
        tokio::task::yield_now().await;
    }
}

/// The real binary, running: killed when dropped, so a test that fails
/// half-way leaves no gateway behind.
pub struct Binary(std::process::Child);

impl std::ops::Deref for Binary {
    type Target = std::process::Child;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Binary {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Start the real binary on `config_path`; returns it and its addresses
/// (read from its "serving" log line).
pub fn start_binary(
    config_path: &std::path::Path,
) -> (
    Binary,
    std::net::SocketAddr,
    std::net::SocketAddr,
    std::sync::mpsc::Receiver<String>,
) {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_wsgate"))
        .arg("--config")
        .arg(config_path)
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(child.stderr.take().unwrap()));
    let (addr, admin) = loop {
        let line = lines
            .next()
            .expect("the gateway logs that it serves")
            .unwrap();
        if line.contains("serving") {
            let field = |name: &str| {
                line.split(&format!(" {name}="))
                    .nth(1)
                    .unwrap()
                    .split_whitespace()
                    .next()
                    .unwrap()
                    .parse()
                    .unwrap()
            };
            break (field("addr"), field("admin"));
        }
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    (Binary(child), addr, admin, rx)
}

/// Resident memory of a process, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}
