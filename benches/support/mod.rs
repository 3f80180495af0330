//! What the benchmarks share: child servers and their memory, dev
//! certificates, gateway configs, rustls clients, a real Redis (the tests'
//! own starter), and percentiles.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

#[path = "../../tests/common/mod.rs"]
mod common;

// Each bench uses some of these.
#[allow(unused_imports)]
pub use common::{Redis, client_config, rss_kib};

pub type Ws = tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>;

/// Dev certificates in a temporary directory, and a client that trusts them.
pub struct Setup {
    pub dir: tempfile::TempDir,
    pub written: wsgate::devcert::Written,
    pub connector: TlsConnector,
}

impl Setup {
    pub fn new() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let written = wsgate::devcert::generate(&["localhost".to_string()])
            .unwrap()
            .write(&dir.path().join("cert.pem"), &dir.path().join("key.pem"))
            .unwrap();
        let connector = TlsConnector::from(common::client_config(&written.ca));
        Setup {
            dir,
            written,
            connector,
        }
    }

    /// A `wsgate` child on 127.0.0.1:0 with these routes (TOML) and room
    /// for `connections`.
    pub fn gateway(&self, name: &str, connections: usize, routes: &str) -> Server {
        self.gateway_with(name, "", connections, "", routes)
    }

    /// [`Setup::gateway`] with more keys (TOML lines) in `[listen]` and in
    /// `[limits]`.
    pub fn gateway_with(
        &self,
        name: &str,
        listen: &str,
        connections: usize,
        limits: &str,
        routes: &str,
    ) -> Server {
        let path = self.dir.path().join(name);
        let config = format!(
            "[listen]\naddr = \"127.0.0.1:0\"\n{listen}[admin]\naddr = \"127.0.0.1:0\"\n\
             [tls]\ncert = {:?}\nkey = {:?}\n\
             [limits]\nmax_connections = {}\n{limits}{routes}",
            self.written.cert,
            self.written.key,
            connections + 100
        );
        std::fs::write(&path, config).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_wsgate"));
        cmd.arg("--config").arg(path);
        spawn(cmd)
    }

    /// This bench binary again, as a baseline server: `args` pick which.
    pub fn baseline(&self, args: &[&str]) -> Server {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args(args)
            .arg(&self.written.cert)
            .arg(&self.written.key);
        spawn(cmd)
    }

    pub async fn connect(&self, addr: SocketAddr, path: &str) -> Ws {
        let tcp = TcpStream::connect(addr).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        let tls = self
            .connector
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap();
        let url = format!("wss://localhost:{}{path}", addr.port());
        tokio_tungstenite::client_async(url, tls).await.unwrap().0
    }
}

/// A baseline server's TLS: the same dev certificate, default rustls settings.
pub fn acceptor(cert: &str, key: &str) -> TlsAcceptor {
    let chain: Vec<_> = CertificateDer::pem_file_iter(cert)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_file(key).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(wsgate::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    TlsAcceptor::from(Arc::new(config))
}

pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    /// The admin listener, where the line also names one (`admin=...`).
    pub admin: Option<SocketAddr>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start a child and read its listening address from the first stderr line
/// that names one (`addr=127.0.0.1:PORT`), and its admin address if that
/// line has one (`admin=127.0.0.1:PORT`).
pub fn spawn(mut cmd: Command) -> Server {
    let mut child = cmd
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "warn,wsgate=info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("server starts");
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let field = |line: &str, name: &str| {
        line.split(name)
            .nth(1)
            .map(|rest| rest.split_whitespace().next().unwrap().parse().unwrap())
    };
    let (addr, admin) = loop {
        let line = lines.next().expect("server printed its address").unwrap();
        if let Some(addr) = field(&line, "addr=") {
            break (addr, field(&line, " admin="));
        }
    };
    // Keep draining stderr so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Server { child, addr, admin }
}

/// Open `n` connections to `path`, 100 at a time.
pub async fn connect_many(
    setup: &Setup,
    addr: SocketAddr,
    path: impl Fn(usize) -> String,
    n: usize,
) -> Vec<Ws> {
    let mut out = Vec::with_capacity(n);
    let mut start = 0;
    while start < n {
        let end = (start + 100).min(n);
        let paths: Vec<String> = (start..end).map(&path).collect();
        let batch =
            futures_util::future::join_all(paths.iter().map(|p| setup.connect(addr, p))).await;
        out.extend(batch);
        start = end;
    }
    out
}

/// Resident memory per connection: (after - before) / n, in KiB.
pub fn kib_per(before: u64, after: u64, n: usize) -> f64 {
    after.saturating_sub(before) as f64 / n as f64
}

/// The sample at quantile `q` (0.5: the median) of samples sorted ascending.
pub fn percentile<T: Copy>(sorted: &[T], q: f64) -> T {
    sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)]
}
