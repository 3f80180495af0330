//! Test harness: a real gateway on 127.0.0.1:0 with certificates made in the
//! test, and real rustls + tokio-tungstenite clients.
#![allow(dead_code)]

pub mod backend;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use wsgate::{Config, ConfigSource, Listeners, devcert};

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

/// The config text a test gateway starts with: the default cert, an echo
/// route, and whatever `extra` adds (extra `[limits]` keys go in `limits`).
pub fn config_text(certs: &Certs, limits: &str, extra: &str) -> String {
    format!(
        "[tls]\ncert = {:?}\nkey = {:?}\n\n[limits]\n{limits}\n\n{extra}\n[[routes]]\npath = \"/echo\"\nkind = \"echo\"\n",
        certs.cert, certs.key
    )
}

pub struct Running {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub certs: Certs,
    stop: Option<oneshot::Sender<()>>,
    /// Hand the running gateway a new config (as SIGHUP does).
    pub reload: tokio::sync::mpsc::Sender<Config>,
    pub join: JoinHandle<Result<(), wsgate::Error>>,
}

/// Start a gateway on the echo config plus `limits`.
pub async fn start(limits: &str) -> Running {
    let certs = certs(&["localhost", "127.0.0.1"]);
    let text = config_text(&certs, limits, "");
    start_with(certs, &text).await
}

pub async fn start_with(certs: Certs, text: &str) -> Running {
    let config =
        Config::load(ConfigSource::Text(text), Some(HashMap::new())).expect("test config is valid");
    let public = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (addr, admin_addr) = (public.local_addr().unwrap(), admin.local_addr().unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    let metrics = wsgate::metrics::install();
    let (reload, reloads) = tokio::sync::mpsc::channel(1);
    let stopped = async {
        let _ = stopped.await;
    };
    let join = tokio::spawn(wsgate::run_with_reload(
        Listeners { public, admin },
        config,
        metrics,
        stopped,
        reloads,
    ));
    Running {
        addr,
        admin: admin_addr,
        certs,
        stop: Some(stop),
        reload,
        join,
    }
}

impl Running {
    /// A handle on a gateway running elsewhere (the real binary), for the
    /// same client helpers. It cannot be stopped or reloaded through this.
    pub fn attach(addr: SocketAddr, admin: SocketAddr, certs: &Certs) -> Running {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::copy(&certs.ca, &ca).unwrap();
        let (reload, _) = tokio::sync::mpsc::channel(1);
        let certs = Certs {
            ca,
            cert: certs.cert.clone(),
            key: certs.key.clone(),
            dir,
        };
        Running {
            addr,
            admin,
            certs,
            stop: None,
            reload,
            join: tokio::spawn(async { Ok(()) }),
        }
    }

    /// Trigger shutdown (as SIGTERM does) without waiting.
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    pub async fn ws(&self, path: &str) -> Ws {
        ws_connect(self.addr, "localhost", path, &self.certs.ca)
            .await
            .expect("websocket connects")
    }

    /// Send raw bytes over TLS and return everything the server sends back
    /// until it closes the connection.
    pub async fn raw(&self, request: &[u8]) -> String {
        let mut tls = tls_connect(self.addr, "localhost", &self.certs.ca)
            .await
            .unwrap();
        tls.write_all(request).await.unwrap();
        let mut out = Vec::new();
        let _ = tls.read_to_end(&mut out).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Send raw bytes over TLS and return the response head only (for a
    /// 101, after which the connection stays open).
    pub async fn raw_head(&self, request: &[u8]) -> String {
        self.raw_upgrade_with(request).await.0
    }

    /// Complete a valid upgrade to `path` by hand; returns the open stream,
    /// for tests that play a misbehaving client at the frame level.
    pub async fn raw_upgrade(&self, path: &str) -> TlsStream<TcpStream> {
        let (head, tls) = self
            .raw_upgrade_with(upgrade_request(path, "").as_bytes())
            .await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        tls
    }

    async fn raw_upgrade_with(&self, request: &[u8]) -> (String, TlsStream<TcpStream>) {
        let mut tls = tls_connect(self.addr, "localhost", &self.certs.ca)
            .await
            .unwrap();
        tls.write_all(request).await.unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            head.push(tls.read_u8().await.unwrap());
        }
        (String::from_utf8_lossy(&head).into_owned(), tls)
    }

    /// GET a path on the admin listener; returns (status, body).
    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        http_get(self.admin, path).await
    }
}

pub type Ws = WebSocketStream<TlsStream<TcpStream>>;

pub fn client_config(ca: &std::path::Path) -> Arc<rustls::ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(wsgate::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

pub async fn tls_connect(
    addr: SocketAddr,
    name: &str,
    ca: &std::path::Path,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(name.to_owned()).unwrap();
    TlsConnector::from(client_config(ca))
        .connect(name, tcp)
        .await
}

pub async fn ws_connect(
    addr: SocketAddr,
    name: &str,
    path: &str,
    ca: &std::path::Path,
) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
    let tls = tls_connect(addr, name, ca).await?;
    let url = format!("wss://{name}:{}{path}", addr.port());
    let (ws, _response) = tokio_tungstenite::client_async(url, tls).await?;
    Ok(ws)
}

/// A minimal HTTP/1.1 GET over plain TCP; returns (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tcp.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
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

/// A client whose receive buffer is small and fixed (so the kernel cannot
/// absorb much on its behalf), connected over wss to `path`. Tests that
/// never read from it see the gateway's backpressure.
pub async fn ws_small_rcvbuf(gw: &Running, path: &str) -> Ws {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(16 << 10).unwrap();
    let tcp = socket.connect(gw.addr).await.unwrap();
    let tls = TlsConnector::from(client_config(&gw.certs.ca))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let url = format!("wss://localhost:{}{path}", gw.addr.port());
    tokio_tungstenite::client_async(url, tls).await.unwrap().0
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

/// Start the real binary on `config_path`; returns it and its addresses
/// (read from its "serving" log line).
pub fn start_binary(
    config_path: &std::path::Path,
) -> (
    std::process::Child,
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
    (child, addr, admin, rx)
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

/// A config file for the real binary: loopback, port 0 for both listeners.
pub fn binary_config(
    dir: &std::path::Path,
    certs: &Certs,
    limits: &str,
    extra: &str,
) -> std::path::PathBuf {
    let path = dir.join("wsgate.toml");
    let text = format!(
        "[listen]\naddr = \"127.0.0.1:0\"\n[admin]\naddr = \"127.0.0.1:0\"\n{}",
        config_text(certs, limits, extra)
    );
    std::fs::write(&path, text).unwrap();
    path
}
