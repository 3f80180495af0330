//! Echo benchmark: the real `wsgate` binary against a baseline measured in
//! the same run: a plain tokio-tungstenite wss echo server with default
//! settings (what a hand-written server looks like). Both run as child
//! processes so their memory can be read from /proc; the clients run here.
//!
//! Prints, for each server and as a ratio wsgate / baseline:
//! - resident memory per idle connection, after the handshake and after one
//!   100-byte message each;
//! - round-trip latency (one connection, sequential) p50 and p99;
//! - throughput: many connections echoing small messages, pipelined.
//!
//! Run: `cargo bench --bench echo` (add `-- --quick` for a short run).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

#[path = "../tests/common/mod.rs"]
mod common;

use futures_util::{SinkExt, StreamExt};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_tungstenite::tungstenite::Message;

type Ws = tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>;

struct Params {
    idle_connections: usize,
    latency_round_trips: usize,
    throughput_connections: usize,
    throughput_messages: usize,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--baseline-server") {
        return baseline_server(Some((&args[i + 1], &args[i + 2])));
    }
    if args.iter().any(|a| a == "--baseline-server-plain") {
        return baseline_server(None);
    }
    let quick = args.iter().any(|a| a == "--quick");
    let params = if quick {
        Params {
            idle_connections: 500,
            latency_round_trips: 1000,
            throughput_connections: 8,
            throughput_messages: 2000,
        }
    } else {
        Params {
            idle_connections: 4000,
            latency_round_trips: 5000,
            throughput_connections: 32,
            throughput_messages: 5000,
        }
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(compare(params));
}

struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start a child and read its listening address from the first stderr line
/// that names one (`addr=127.0.0.1:PORT`).
fn spawn(mut cmd: Command) -> Server {
    let mut child = cmd
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "warn,wsgate=info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("server starts");
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let addr = loop {
        let line = lines.next().expect("server printed its address").unwrap();
        if let Some(rest) = line.split("addr=").nth(1) {
            break rest.split_whitespace().next().unwrap().parse().unwrap();
        }
    };
    // Keep draining stderr so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Server { child, addr }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

struct Measured {
    idle_kib: f64,
    after_message_kib: f64,
    p50_us: f64,
    p99_us: f64,
    msgs_per_sec: f64,
}

async fn compare(p: Params) {
    let dir = tempfile::tempdir().unwrap();
    let hosts = vec!["localhost".to_string()];
    let written = wsgate::devcert::generate(&hosts)
        .unwrap()
        .write(&dir.path().join("cert.pem"), &dir.path().join("key.pem"))
        .unwrap();
    let connector = connector(&written.ca);
    let gateway_config = |name: &str, routes: &str| {
        let path = dir.path().join(name);
        std::fs::write(
            &path,
            format!(
                "[listen]\naddr = \"127.0.0.1:0\"\n[admin]\naddr = \"127.0.0.1:0\"\n[tls]\ncert = {:?}\nkey = {:?}\n\
                 [limits]\nmax_connections = {}\n{routes}",
                written.cert,
                written.key,
                p.idle_connections + 100
            ),
        )
        .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_wsgate"));
        cmd.arg("--config").arg(path);
        cmd
    };
    let baseline_cmd = |plain: bool| {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        if plain {
            cmd.arg("--baseline-server-plain");
        } else {
            cmd.arg("--baseline-server")
                .arg(&written.cert)
                .arg(&written.key);
        }
        cmd
    };

    // 1. Direct: clients to the baseline server over wss.
    let direct = measure(
        "baseline (direct)",
        &spawn(baseline_cmd(false)),
        "/",
        &connector,
        &p,
    )
    .await;
    // 2. wsgate's echo route.
    let echo_gw = spawn(gateway_config(
        "echo.toml",
        "[[routes]]\npath = \"/echo\"\nkind = \"echo\"\n",
    ));
    let echo = measure("wsgate echo", &echo_gw, "/echo", &connector, &p).await;
    drop(echo_gw);
    // 3. Relay: clients to wsgate over wss, wsgate to a plain-ws baseline
    //    backend (its own process, so wsgate's RSS is wsgate's alone).
    let backend = spawn(baseline_cmd(true));
    let relay_routes = format!(
        "[[routes]]\npath = \"/relay\"\nkind = \"upstream\"\nupstreams = [\"ws://{}\"]\n",
        backend.addr
    );
    let relay = measure(
        "wsgate relay",
        &spawn(gateway_config("relay.toml", &relay_routes)),
        "/relay",
        &connector,
        &p,
    )
    .await;
    drop(backend);

    let table = |title: &str, base_name: &str, base: &Measured, name: &str, other: &Measured| {
        println!("\n{title}");
        println!(
            "{:<40} {:>14} {:>14} {:>8}",
            "measure", base_name, name, "ratio"
        );
        let row = |label: &str, b: f64, w: f64| {
            println!("{label:<40} {b:>14.1} {w:>14.1} {:>8.2}", w / b)
        };
        row("KiB per idle connection", base.idle_kib, other.idle_kib);
        row(
            "KiB per connection after one 100 B msg",
            base.after_message_kib,
            other.after_message_kib,
        );
        row("round trip p50 (us)", base.p50_us, other.p50_us);
        row("round trip p99 (us)", base.p99_us, other.p99_us);
        row(
            "echo throughput (msgs/s)",
            base.msgs_per_sec,
            other.msgs_per_sec,
        );
    };
    table(
        "echo: wsgate vs a plain tokio-tungstenite server",
        "baseline",
        &direct,
        "wsgate echo",
        &echo,
    );
    table(
        "relay: client -> wsgate -> backend vs client -> backend",
        "direct",
        &direct,
        "via wsgate",
        &relay,
    );
    println!(
        "\n({} idle connections; {} sequential round trips; {} connections x {} messages of 128 B; \
         relay memory is wsgate's alone, per relayed session)",
        p.idle_connections, p.latency_round_trips, p.throughput_connections, p.throughput_messages
    );
}

fn connector(ca: &std::path::Path) -> TlsConnector {
    TlsConnector::from(common::client_config(ca))
}

async fn connect(addr: SocketAddr, connector: &TlsConnector, path: &str) -> Ws {
    let tcp = TcpStream::connect(addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let url = format!("wss://localhost:{}{path}", addr.port());
    tokio_tungstenite::client_async(url, tls).await.unwrap().0
}

async fn measure(
    name: &str,
    server: &Server,
    path: &str,
    connector: &TlsConnector,
    p: &Params,
) -> Measured {
    eprintln!("measuring {name} at {}", server.addr);
    let pid = server.child.id();
    // Warm up allocator and runtime with one connection, then take the baseline.
    let mut warm = connect(server.addr, connector, path).await;
    round_trip(&mut warm, 100).await;
    let before = rss_kib(pid);

    let mut idle = Vec::with_capacity(p.idle_connections);
    for chunk in 0..p.idle_connections.div_ceil(100) {
        let n = 100.min(p.idle_connections - chunk * 100);
        let batch =
            futures_util::future::join_all((0..n).map(|_| connect(server.addr, connector, path)))
                .await;
        idle.extend(batch);
    }
    // One round trip on a fresh connection: every earlier session is set up.
    let mut last = connect(server.addr, connector, path).await;
    round_trip(&mut last, 1).await;
    let idle_kib = (rss_kib(pid) - before) as f64 / p.idle_connections as f64;
    futures_util::future::join_all(idle.iter_mut().map(|ws| round_trip(ws, 100))).await;
    let after_message_kib = (rss_kib(pid) - before) as f64 / p.idle_connections as f64;
    drop(idle);

    let mut samples = Vec::with_capacity(p.latency_round_trips);
    for _ in 0..p.latency_round_trips {
        let t = Instant::now();
        round_trip(&mut warm, 32).await;
        samples.push(t.elapsed());
    }
    samples.sort();
    let pct = |q: f64| {
        samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)].as_secs_f64() * 1e6
    };

    let mut conns = Vec::new();
    for _ in 0..p.throughput_connections {
        conns.push(connect(server.addr, connector, path).await);
    }
    let started = Instant::now();
    futures_util::future::join_all(
        conns
            .iter_mut()
            .map(|ws| pipelined(ws, p.throughput_messages)),
    )
    .await;
    let msgs_per_sec =
        (p.throughput_connections * p.throughput_messages) as f64 / started.elapsed().as_secs_f64();
    Measured {
        idle_kib,
        after_message_kib,
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        msgs_per_sec,
    }
}

async fn round_trip(ws: &mut Ws, size: usize) {
    ws.send(Message::binary(vec![b'x'; size])).await.unwrap();
    loop {
        if let Message::Binary(b) = ws.next().await.unwrap().unwrap() {
            assert_eq!(b.len(), size);
            return;
        }
    }
}

/// Send `count` 128-byte messages with up to 64 in flight; wait for all echoes.
async fn pipelined(ws: &mut Ws, count: usize) {
    let payload = bytes::Bytes::from(vec![b'y'; 128]);
    let (mut sent, mut received) = (0, 0);
    while received < count {
        while sent < count && sent - received < 64 {
            ws.feed(Message::Binary(payload.clone())).await.unwrap();
            sent += 1;
        }
        ws.flush().await.unwrap();
        if let Message::Binary(_) = ws.next().await.unwrap().unwrap() {
            received += 1;
        }
    }
}

/// The baseline: accept, TLS (unless plain), tungstenite handshake, echo;
/// default settings.
fn baseline_server(tls: Option<(&str, &str)>) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let acceptor = tls.map(|(cert, key)| {
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
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        eprintln!("baseline serving addr={}", listener.local_addr().unwrap());
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let _ = tcp.set_nodelay(true);
                match acceptor {
                    Some(acceptor) => {
                        let Ok(tls) = acceptor.accept(tcp).await else {
                            return;
                        };
                        echo(tls).await;
                    }
                    None => echo(tcp).await,
                }
            });
        }
    });
}

async fn echo<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(io: S) {
    let Ok(mut ws) = tokio_tungstenite::accept_async(io).await else {
        return;
    };
    while let Some(Ok(msg)) = ws.next().await {
        if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
            return;
        }
    }
}
