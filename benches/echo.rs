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

mod support;

use futures_util::{SinkExt, StreamExt};
use support::{Server, Setup, Ws, rss_kib};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

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

struct Measured {
    idle_kib: f64,
    after_message_kib: f64,
    p50_us: f64,
    p99_us: f64,
    msgs_per_sec: f64,
}

async fn compare(p: Params) {
    let setup = Setup::new();
    let n = p.idle_connections;
    // 1. Direct: clients to the baseline server over wss.
    let direct = measure(
        "baseline (direct)",
        &setup,
        &setup.baseline(&["--baseline-server"]),
        "/",
        &p,
    )
    .await;
    // 2. wsgate's echo route.
    let echo_gw = setup.gateway(
        "echo.toml",
        n,
        "[[routes]]\npath = \"/echo\"\nkind = \"echo\"\n",
    );
    let echo = measure("wsgate echo", &setup, &echo_gw, "/echo", &p).await;
    drop(echo_gw);
    // 3. Relay: clients to wsgate over wss, wsgate to a plain-ws baseline
    //    backend (its own process, so wsgate's RSS is wsgate's alone).
    let backend = setup.baseline(&["--baseline-server-plain"]);
    let routes = format!(
        "[[routes]]\npath = \"/relay\"\nkind = \"upstream\"\nupstreams = [\"ws://{}\"]\n",
        backend.addr
    );
    let relay = measure(
        "wsgate relay",
        &setup,
        &setup.gateway("relay.toml", n, &routes),
        "/relay",
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

async fn measure(name: &str, setup: &Setup, server: &Server, path: &str, p: &Params) -> Measured {
    eprintln!("measuring {name} at {}", server.addr);
    let pid = server.child.id();
    // Warm up allocator and runtime with one connection, then take the baseline.
    let mut warm = setup.connect(server.addr, path).await;
    round_trip(&mut warm, 100).await;
    let before = rss_kib(pid);

    let mut idle =
        support::connect_many(setup, server.addr, |_| path.to_owned(), p.idle_connections).await;
    // One round trip on a fresh connection: every earlier session is set up.
    let mut last = setup.connect(server.addr, path).await;
    round_trip(&mut last, 1).await;
    let idle_kib = support::kib_per(before, rss_kib(pid), p.idle_connections);
    futures_util::future::join_all(idle.iter_mut().map(|ws| round_trip(ws, 100))).await;
    let after_message_kib = support::kib_per(before, rss_kib(pid), p.idle_connections);
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

    let mut conns = support::connect_many(
        setup,
        server.addr,
        |_| path.to_owned(),
        p.throughput_connections,
    )
    .await;
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
        let acceptor = tls.map(|(cert, key)| support::acceptor(cert, key));
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
