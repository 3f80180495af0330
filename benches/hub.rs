//! Hub fan-out benchmark: wsgate's hub (a raw room) against a baseline
//! measured in the same run: the hand-written broadcast server the hub
//! replaces (tokio-tungstenite's example pattern: every peer's unbounded
//! sender in an `Arc<Mutex<HashMap>>`, a writer task per peer). Both serve
//! the same thing: a frame from one member goes to every other member.
//! Servers run as child processes (memory read from /proc); the clients, one
//! publisher and N subscribers, run here.
//!
//! Prints, for each server and as a ratio wsgate / baseline:
//! - resident memory per idle member connection;
//! - for N = 1,000 and 10,000 subscribers: deliveries per second (N x M
//!   messages from one publisher, from the first send to the last receipt),
//!   and publish-to-delivery latency p50 and p99.
//!
//! Run: `cargo bench --bench hub` (add `-- --quick` for a short run).

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use support::{Server, Setup, rss_kib};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{Bytes, Message};

struct Params {
    idle: usize,
    /// (subscribers, messages)
    fanouts: Vec<(usize, usize)>,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--baseline-hub") {
        return baseline_hub(&args[i + 1], &args[i + 2]);
    }
    let params = if args.iter().any(|a| a == "--quick") {
        Params {
            idle: 500,
            fanouts: vec![(1000, 50)],
        }
    } else {
        Params {
            idle: 4000,
            fanouts: vec![(1000, 200), (10_000, 20)],
        }
    };
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(compare(params));
}

struct Fanout {
    deliveries_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
}

struct Measured {
    idle_kib: f64,
    fanouts: Vec<Fanout>,
}

const ROUTE: &str = "[[routes]]\npath = \"/bench\"\nkind = \"hub\"\nprotocol = \"raw\"\nchannel = \"bench\"\n\
                     publish_rate = 1000000000\npublish_burst = 1000000000\n";

async fn compare(p: Params) {
    let setup = Setup::new();
    let most = p.fanouts.iter().map(|f| f.0).max().unwrap_or(0).max(p.idle) + 10;
    let baseline = measure(
        "baseline broadcast server",
        &setup,
        &setup.baseline(&["--baseline-hub"]),
        &p,
    )
    .await;
    let hub = measure(
        "wsgate hub",
        &setup,
        &setup.gateway("hub.toml", most, ROUTE),
        &p,
    )
    .await;

    println!("\nhub fan-out: wsgate raw room vs a hand-written broadcast server");
    println!(
        "{:<46} {:>14} {:>14} {:>8}",
        "measure", "baseline", "wsgate hub", "ratio"
    );
    let row =
        |label: &str, b: f64, w: f64| println!("{label:<46} {b:>14.1} {w:>14.1} {:>8.2}", w / b);
    row(
        "KiB per idle member connection",
        baseline.idle_kib,
        hub.idle_kib,
    );
    for (i, (n, m)) in p.fanouts.iter().enumerate() {
        let (b, w) = (&baseline.fanouts[i], &hub.fanouts[i]);
        row(
            &format!("{n} subscribers x {m}: deliveries/s"),
            b.deliveries_per_sec,
            w.deliveries_per_sec,
        );
        row(
            &format!("{n} subscribers: publish-to-delivery p50 (ms)"),
            b.p50_ms,
            w.p50_ms,
        );
        row(
            &format!("{n} subscribers: publish-to-delivery p99 (ms)"),
            b.p99_ms,
            w.p99_ms,
        );
    }
    println!(
        "\n({} idle connections; one publisher; 64-byte binary messages)",
        p.idle
    );
}

async fn measure(name: &str, setup: &Setup, server: &Server, p: &Params) -> Measured {
    eprintln!("measuring {name} at {}", server.addr);
    let pid = server.child.id();
    let warm = setup.connect(server.addr, "/bench").await;
    let before = rss_kib(pid);
    let idle = support::connect_many(
        setup,
        server.addr,
        |i| format!("/bench?name=idle{i}"),
        p.idle,
    )
    .await;
    // A fresh connection's round trip through the room: every earlier
    // member is set up.
    let mut probe = setup.connect(server.addr, "/bench").await;
    let mut warm = warm;
    probe.send(Message::binary(vec![0u8; 8])).await.unwrap();
    while !matches!(warm.next().await, Some(Ok(Message::Binary(_)))) {}
    let idle_kib = support::kib_per(before, rss_kib(pid), p.idle);
    drop((idle, probe, warm));

    let mut fanouts = Vec::new();
    for &(n, m) in &p.fanouts {
        fanouts.push(fanout(setup, server, n, m).await);
    }
    Measured { idle_kib, fanouts }
}

/// One publisher sends `m` messages into the room of `n` subscribers.
async fn fanout(setup: &Setup, server: &Server, n: usize, m: usize) -> Fanout {
    let subscribers =
        support::connect_many(setup, server.addr, |i| format!("/bench?name=s{i}"), n).await;
    let mut publisher = setup.connect(server.addr, "/bench?name=publisher").await;
    // Let every member's session settle: one message through, to everyone.
    let base = Instant::now();
    let (done_tx, mut done_rx) = mpsc::channel::<Vec<u64>>(n);
    let ready = Arc::new(AtomicU64::new(0));
    let (ready_tx, mut ready_rx) = mpsc::channel::<()>(1);
    for mut ws in subscribers {
        let (done_tx, ready, ready_tx) = (done_tx.clone(), ready.clone(), ready_tx.clone());
        tokio::spawn(async move {
            // The first message is the warm-up.
            while !matches!(ws.next().await, Some(Ok(Message::Binary(_)))) {}
            if ready.fetch_add(1, Ordering::Relaxed) + 1 == n as u64 {
                let _ = ready_tx.send(()).await;
            }
            let mut latencies = Vec::with_capacity(m);
            while latencies.len() < m {
                match ws.next().await {
                    Some(Ok(Message::Binary(b))) => {
                        let sent = u64::from_le_bytes(b[..8].try_into().unwrap());
                        latencies.push(base.elapsed().as_nanos() as u64 - sent);
                    }
                    Some(Ok(_)) => {}
                    _ => break,
                }
            }
            let _ = done_tx.send(latencies).await;
            ws
        });
    }
    drop(done_tx);
    publisher
        .send(Message::binary(vec![0u8; 64]))
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(120), ready_rx.recv())
        .await
        .expect("warm-up reached everyone");

    let started = Instant::now();
    for i in 0..m {
        let mut payload = vec![0u8; 64];
        payload[..8].copy_from_slice(&(base.elapsed().as_nanos() as u64).to_le_bytes());
        payload[8..16].copy_from_slice(&(i as u64).to_le_bytes());
        publisher
            .feed(Message::Binary(Bytes::from(payload)))
            .await
            .unwrap();
        if i % 16 == 15 {
            publisher.flush().await.unwrap();
        }
    }
    publisher.flush().await.unwrap();
    let mut all = Vec::with_capacity(n * m);
    while let Some(latencies) = done_rx.recv().await {
        all.extend(latencies);
    }
    let elapsed = started.elapsed();
    assert_eq!(all.len(), n * m, "every subscriber got every message");
    all.sort_unstable();
    let pct = |q: f64| support::percentile(&all, q) as f64 / 1e6;
    Fanout {
        deliveries_per_sec: all.len() as f64 / elapsed.as_secs_f64(),
        p50_ms: pct(0.5),
        p99_ms: pct(0.99),
    }
}

/// The baseline: accept, register an unbounded sender, TLS, handshake; a
/// writer task per peer; every frame a peer sends goes to every other peer.
fn baseline_hub(cert: &str, key: &str) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let acceptor = support::acceptor(cert, key);
        let peers: Arc<Mutex<HashMap<u64, mpsc::UnboundedSender<Message>>>> = Arc::default();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        eprintln!("baseline serving addr={}", listener.local_addr().unwrap());
        let mut next_id = 0u64;
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            next_id += 1;
            let id = next_id;
            // Registered before the handshake, so nothing sent after a
            // client's 101 can miss it.
            let (tx, mut rx) = mpsc::unbounded_channel();
            peers.lock().unwrap().insert(id, tx);
            let (acceptor, peers) = (acceptor.clone(), peers.clone());
            tokio::spawn(async move {
                let _ = tcp.set_nodelay(true);
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(ws) = tokio_tungstenite::accept_async(tls).await else {
                    return;
                };
                let (mut sink, mut stream) = ws.split();
                tokio::spawn(async move {
                    while let Some(msg) = rx.recv().await {
                        if sink.send(msg).await.is_err() {
                            return;
                        }
                    }
                });
                while let Some(Ok(msg)) = stream.next().await {
                    if msg.is_binary() || msg.is_text() {
                        for (peer, tx) in peers.lock().unwrap().iter() {
                            if *peer != id {
                                let _ = tx.send(msg.clone());
                            }
                        }
                    }
                }
                peers.lock().unwrap().remove(&id);
            });
        }
    });
}
