//! Cross-node hub benchmark: one hub on two wsgate nodes sharing a real
//! Redis (`[hub.backplane] kind = "redis"`), against the same load on one
//! node with the in-process (memory) backplane, in the same run.
//!
//! Servers run as child processes: a `redis-server` on loopback (Debian's
//! package, started as the tests start theirs) and the wsgate nodes. The
//! clients run here, on the JSON protocol: one publisher on the first node,
//! N subscribers of one channel spread evenly over the nodes (node k % 2).
//! For each rate the publisher publishes at that rate for a bounded time,
//! every message carrying its send time; every subscriber must receive
//! every message once, in order.
//!
//! Prints, for one node and for two, per rate: deliveries per second,
//! publish-to-delivery latency p50 and p99 (and p99 by subscriber node on
//! two), the p99 difference, messages lost, duplicated and reordered (all
//! must be 0: otherwise the run fails), refused publishes, and Redis CPU per
//! publish (`INFO cpu` before and after).
//!
//! The route raises `publish_rate` and the subscribers' queues, so that a
//! client of this process falling behind shows as latency, not as a closed
//! subscriber.
//!
//! Run: `cargo bench --bench scale` (add `-- --quick` for a short run, and
//! `-- --one-node` to run the Redis setup on one node: the Redis round trip
//! alone, without a second node sharing the cores).

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use support::{Redis, Server, Setup, Ws};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Mutex, Notify};
use tokio::time::{Instant, sleep_until, timeout, timeout_at};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

struct Params {
    /// `--one-node`: the Redis setup on one node, to tell the Redis round
    /// trip from the cost of a second node on the same cores.
    one_node: bool,
    subscribers: usize,
    /// Publishes per second, one measure each.
    rates: Vec<u64>,
    /// Seconds of publishing per measure.
    secs: f64,
}

/// `data.i` of a warm-up publish.
const WARM: u64 = u64::MAX;
/// After the last publish, how long the last deliveries may take.
const DRAIN: Duration = Duration::from_secs(10);

const ROUTE: &str = "[[routes]]\npath = \"/bench\"\nkind = \"hub\"\n\
                     publish_rate = 1000000000\npublish_burst = 1000000000\n\
                     queue_messages = 100000\nqueue_bytes = \"64MiB\"\n";

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let one_node = std::env::args().any(|a| a == "--one-node");
    let params = if quick {
        Params {
            one_node,
            subscribers: 100,
            rates: vec![100, 1000],
            secs: 1.0,
        }
    } else {
        Params {
            one_node,
            subscribers: 1000,
            rates: vec![100, 1000],
            secs: 5.0,
        }
    };
    let ok = {
        // None: redis-server is not installed, and Redis::start said so.
        let Some(redis) = Redis::start() else {
            return;
        };
        tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(compare(params, &redis))
        // Redis and every node stop here, before the exit status.
    };
    if !ok {
        std::process::exit(1);
    }
}

/// One setup under load: its nodes, the publisher on the first, the
/// subscribers spread over all of them.
struct Topology {
    label: &'static str,
    nodes: Vec<Server>,
    redis_port: Option<u16>,
}

struct Measure {
    deliveries_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// p99 by the subscribers' node (index 0: the publisher's).
    p99_by_node_ms: Vec<f64>,
    expected: u64,
    lost: u64,
    duplicated: u64,
    reordered: u64,
    closed: u64,
    /// Publishes acknowledged and refused (error code and count).
    acked: u64,
    refused: Vec<(String, u64)>,
    redis_us_per_publish: Option<f64>,
    /// Redis's CPU over the measure (first publish to last delivery).
    redis_core_percent: Option<f64>,
}

async fn compare(p: Params, redis: &Redis) -> bool {
    let setup = Setup::new();
    let room = p.subscribers + 10;
    let backplane = format!(
        "[hub.backplane]\nkind = \"redis\"\nurl = \"{}\"\nprefix = \"bench\"\n",
        redis.url()
    );
    let redis_route = format!("{backplane}{ROUTE}");
    let single = Topology {
        label: "1 node (memory)",
        nodes: vec![setup.gateway("single.toml", room, ROUTE)],
        redis_port: None,
    };
    let pair = match p.one_node {
        true => Topology {
            label: "1 node (redis)",
            nodes: vec![setup.gateway("node-a.toml", room, &redis_route)],
            redis_port: Some(redis.port),
        },
        false => Topology {
            label: "2 nodes (redis)",
            nodes: vec![
                setup.gateway("node-a.toml", room, &redis_route),
                setup.gateway("node-b.toml", room, &redis_route),
            ],
            redis_port: Some(redis.port),
        },
    };
    let baseline = run(&setup, &single, &p).await;
    let scaled = run(&setup, &pair, &p).await;

    println!(
        "\ncross-node hub: {} vs {}, {} subscribers, one publisher, {} s per rate",
        pair.label, single.label, p.subscribers, p.secs
    );
    println!(
        "{:<54} {:>16} {:>16} {:>10}",
        "measure", single.label, pair.label, "2 - 1"
    );
    let row = |label: String, b: f64, s: f64, digits: usize| {
        println!(
            "{label:<54} {b:>16.digits$} {s:>16.digits$} {:>+10.digits$}",
            s - b
        )
    };
    let mut ok = true;
    for (i, rate) in p.rates.iter().enumerate() {
        let (b, s) = (&baseline[i], &scaled[i]);
        let at = format!("{rate}/s:");
        row(
            format!("{at} deliveries/s"),
            b.deliveries_per_sec,
            s.deliveries_per_sec,
            0,
        );
        row(
            format!("{at} publish-to-delivery p50 (ms)"),
            b.p50_ms,
            s.p50_ms,
            2,
        );
        row(
            format!("{at} publish-to-delivery p99 (ms)"),
            b.p99_ms,
            s.p99_ms,
            2,
        );
        for (node, p99) in s.p99_by_node_ms.iter().enumerate() {
            let whose = if node == 0 {
                "the publisher's node"
            } else {
                "the other node"
            };
            println!(
                "{:<54} {:>16} {p99:>16.2}",
                format!("{at}   p99 on {whose} (ms)"),
                "-"
            );
        }
        let of = format!("of {} deliveries", b.expected);
        let subscribers = format!("of {}", p.subscribers);
        for (what, whole, bv, sv) in [
            ("lost", &of, b.lost, s.lost),
            ("duplicated", &of, b.duplicated, s.duplicated),
            ("reordered", &of, b.reordered, s.reordered),
            ("subscribers closed", &subscribers, b.closed, s.closed),
        ] {
            println!("{:<54} {bv:>16} {sv:>16}", format!("{at} {what} ({whole})"));
            ok &= bv == 0 && sv == 0;
        }
        println!(
            "{:<54} {:>16} {:>16}",
            format!("{at} publishes acknowledged"),
            b.acked,
            s.acked
        );
        for (label, m) in [(single.label, b), (pair.label, s)] {
            for (code, n) in &m.refused {
                println!("{at} {label}: {n} publishes refused with {code:?}");
                ok = false;
            }
        }
        let redis = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.1}"));
        println!(
            "{:<54} {:>16} {:>16}",
            format!("{at} Redis CPU per publish (us)"),
            "-",
            redis(s.redis_us_per_publish)
        );
        println!(
            "{:<54} {:>16} {:>16}",
            format!("{at} Redis CPU (% of one core)"),
            "-",
            redis(s.redis_core_percent)
        );
    }
    println!(
        "\n(TLS on loopback; subscribers k on node k % 2; Redis {}; every client in this process)",
        redis.url()
    );
    if !ok {
        println!("FAILED: a message was lost, duplicated or reordered, or a publish refused");
    }
    ok
}

/// Every rate on one topology: its subscribers and publisher connect once.
async fn run(setup: &Setup, top: &Topology, p: &Params) -> Vec<Measure> {
    eprintln!("measuring {}", top.label);
    let nodes = top.nodes.len();
    let mut subs = Vec::with_capacity(p.subscribers);
    for (node, server) in top.nodes.iter().enumerate() {
        let count = (node..p.subscribers).step_by(nodes).count();
        let conns = support::connect_many(
            setup,
            server.addr,
            |k| format!("/bench?name=s{node}-{k}"),
            count,
        )
        .await;
        subs.extend(conns.into_iter().map(|ws| (node, ws)));
    }
    timeout(
        Duration::from_secs(120),
        futures_util::future::join_all(subs.iter_mut().map(|(_, ws)| subscribe(ws))),
    )
    .await
    .expect("every subscriber subscribed within 120 s");
    let publisher = Publisher::connect(setup, &top.nodes[0]).await;
    let mut out = Vec::new();
    for (phase, &rate) in p.rates.iter().enumerate() {
        let (back, m) = measure(
            std::mem::take(&mut subs),
            &publisher,
            phase as u64,
            rate,
            p.secs,
            top.redis_port,
            nodes,
        )
        .await;
        subs = back;
        out.push(m);
    }
    out
}

/// Subscribe to the channel and wait for the ack (after the welcome).
async fn subscribe(ws: &mut Ws) {
    ws.send(Message::text(
        r#"{"type":"subscribe","channel":"bench","id":1}"#,
    ))
    .await
    .unwrap();
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => {
                let m: Incoming<'_> = serde_json::from_str(&t).unwrap();
                match m.kind {
                    "ack" if m.id == Some(1) => return,
                    "error" => panic!("subscribe refused: {t}"),
                    _ => {}
                }
            }
            Some(Ok(_)) => {}
            other => panic!("subscriber gone before its ack: {other:?}"),
        }
    }
}

/// What this bench reads of the hub's envelopes.
#[derive(Deserialize)]
struct Incoming<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(default)]
    seq: u64,
    id: Option<u64>,
    #[serde(borrow)]
    code: Option<&'a str>,
    data: Option<Stamp>,
}

/// A publish's data: measure (phase), index, send time (ns since `base`).
#[derive(Deserialize)]
struct Stamp {
    p: u64,
    i: u64,
    t: u64,
}

/// The publisher's sending half, and what its reading half counted.
struct Publisher {
    sink: Mutex<futures_util::stream::SplitSink<Ws, Message>>,
    acked: Arc<AtomicU64>,
    refused: Arc<std::sync::Mutex<Vec<(String, u64)>>>,
}

impl Publisher {
    async fn connect(setup: &Setup, node: &Server) -> Publisher {
        let ws = setup.connect(node.addr, "/bench?name=publisher").await;
        let (sink, mut stream) = ws.split();
        let acked = Arc::new(AtomicU64::new(0));
        let refused = Arc::new(std::sync::Mutex::new(Vec::<(String, u64)>::new()));
        let (a, r) = (acked.clone(), refused.clone());
        // Reads acks and errors until the connection ends (with the bench).
        tokio::spawn(async move {
            while let Some(Ok(msg)) = stream.next().await {
                let Message::Text(t) = msg else { continue };
                let Ok(m) = serde_json::from_str::<Incoming<'_>>(&t) else {
                    continue;
                };
                match (m.kind, m.code) {
                    // Warm-ups are not counted.
                    ("ack", _) | ("error", _) if m.id == Some(WARM) => {}
                    ("ack", _) => {
                        a.fetch_add(1, Ordering::Relaxed);
                    }
                    ("error", Some(code)) => {
                        let mut r = r.lock().unwrap();
                        match r.iter_mut().find(|(c, _)| c == code) {
                            Some((_, n)) => *n += 1,
                            None => r.push((code.to_owned(), 1)),
                        }
                    }
                    _ => {}
                }
            }
        });
        Publisher {
            sink: Mutex::new(sink),
            acked,
            refused,
        }
    }

    async fn publish(&self, phase: u64, i: u64, base: Instant) {
        let t = base.elapsed().as_nanos() as u64;
        let text = format!(
            r#"{{"type":"publish","channel":"bench","id":{i},"data":{{"p":{phase},"i":{i},"t":{t}}}}}"#
        );
        self.sink
            .lock()
            .await
            .send(Message::text(text))
            .await
            .expect("publisher connected");
    }
}

/// What the subscribers of one measure share.
struct Shared {
    phase: u64,
    base: Instant,
    publishes: u64,
    subscribers: u64,
    warmed: AtomicU64,
    all_warmed: Notify,
    stop: CancellationToken,
}

#[derive(Default)]
struct SubStats {
    node: usize,
    received: u64,
    duplicated: u64,
    reordered: u64,
    closed: bool,
    /// Publish-to-delivery, µs.
    samples: Vec<u32>,
    /// When the last measured message came (ns since `base`).
    last_ns: u64,
}

/// One subscriber through one measure: until it has every publish of this
/// measure, or is told to stop. The connection back, unless it closed.
async fn subscriber(node: usize, mut ws: Ws, sh: Arc<Shared>) -> (Option<(usize, Ws)>, SubStats) {
    let mut st = SubStats {
        node,
        samples: Vec::with_capacity(sh.publishes as usize),
        ..SubStats::default()
    };
    let mut seen = vec![0u64; (sh.publishes as usize).div_ceil(64)];
    let (mut warmed, mut next, mut last_seq) = (false, 0u64, 0u64);
    // Bounded by the publishes (each counts once) and by the stop token.
    while st.received < sh.publishes {
        let msg = tokio::select! {
            biased;
            msg = ws.next() => msg,
            _ = sh.stop.cancelled() => break,
        };
        let text = match msg {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => {
                st.closed = true;
                return (None, st);
            }
        };
        let now = sh.base.elapsed().as_nanos() as u64;
        let m: Incoming<'_> = serde_json::from_str(&text).expect("a JSON envelope");
        let Some(stamp) = m.data.filter(|d| m.kind == "message" && d.p == sh.phase) else {
            continue;
        };
        if stamp.i == WARM {
            if !warmed {
                warmed = true;
                if sh.warmed.fetch_add(1, Ordering::Relaxed) + 1 == sh.subscribers {
                    sh.all_warmed.notify_one();
                }
            }
            last_seq = m.seq;
            continue;
        }
        let (word, bit) = ((stamp.i / 64) as usize, 1u64 << (stamp.i % 64));
        if stamp.i >= sh.publishes || seen[word] & bit != 0 {
            st.duplicated += 1;
            continue;
        }
        seen[word] |= bit;
        if stamp.i < next || m.seq <= last_seq {
            st.reordered += 1;
        }
        next = next.max(stamp.i + 1);
        last_seq = last_seq.max(m.seq);
        st.received += 1;
        st.last_ns = now;
        st.samples
            .push((now.saturating_sub(stamp.t) / 1000).min(u32::MAX as u64) as u32);
    }
    (Some((node, ws)), st)
}

/// One measure: warm-up publishes until every subscriber has one (all are
/// subscribed everywhere), then `rate` publishes a second for `secs`.
async fn measure(
    subs: Vec<(usize, Ws)>,
    publisher: &Publisher,
    phase: u64,
    rate: u64,
    secs: f64,
    redis_port: Option<u16>,
    nodes: usize,
) -> (Vec<(usize, Ws)>, Measure) {
    eprintln!("  {rate} publishes/s for {secs} s");
    let publishes = ((rate as f64 * secs).round() as u64).max(1);
    let sh = Arc::new(Shared {
        phase,
        base: Instant::now(),
        publishes,
        subscribers: subs.len() as u64,
        warmed: AtomicU64::new(0),
        all_warmed: Notify::new(),
        stop: CancellationToken::new(),
    });
    let tasks: Vec<_> = subs
        .into_iter()
        .map(|(node, ws)| tokio::spawn(subscriber(node, ws, sh.clone())))
        .collect();

    // A warm-up publish every 100 ms (at most 300: 30 s) until every
    // subscriber has seen one.
    let mut tries = 0;
    while sh.warmed.load(Ordering::Relaxed) < sh.subscribers {
        assert!(
            tries < 300,
            "only {} of {} subscribers got a warm-up publish in 30 s",
            sh.warmed.load(Ordering::Relaxed),
            sh.subscribers
        );
        tries += 1;
        publisher.publish(phase, WARM, sh.base).await;
        let _ = timeout(Duration::from_millis(100), sh.all_warmed.notified()).await;
    }
    let acked0 = publisher.acked.load(Ordering::Relaxed);
    let refused0 = publisher.refused.lock().unwrap().clone();
    let cpu0 = match redis_port {
        Some(port) => Some(redis_cpu_secs(port).await),
        None => None,
    };

    let t0 = Instant::now();
    let t0_ns = t0.duration_since(sh.base).as_nanos() as u64;
    let period = Duration::from_secs_f64(1.0 / rate as f64);
    for i in 0..publishes {
        sleep_until(t0 + period.mul_f64(i as f64)).await;
        publisher.publish(phase, i, sh.base).await;
    }
    // Every delivery, or stop DRAIN after the last publish.
    let mut joined = std::pin::pin!(futures_util::future::join_all(tasks));
    let results = match timeout_at(Instant::now() + DRAIN, &mut joined).await {
        Ok(r) => r,
        Err(_) => {
            sh.stop.cancel();
            timeout(Duration::from_secs(10), joined)
                .await
                .expect("subscribers stop when told")
        }
    };
    let cpu1 = match redis_port {
        Some(port) => Some(redis_cpu_secs(port).await),
        None => None,
    };
    // Acks still in flight for the last publishes are not waited for.
    let acked = publisher.acked.load(Ordering::Relaxed) - acked0;
    let refused: Vec<(String, u64)> = publisher
        .refused
        .lock()
        .unwrap()
        .iter()
        .map(|(code, n)| {
            let before = refused0.iter().find(|(c, _)| c == code).map_or(0, |x| x.1);
            (code.clone(), n - before)
        })
        .filter(|(_, n)| *n > 0)
        .collect();

    let mut back = Vec::new();
    let (mut all, mut by_node) = (Vec::new(), vec![Vec::new(); nodes]);
    let mut m = Measure {
        deliveries_per_sec: 0.0,
        p50_ms: 0.0,
        p99_ms: 0.0,
        p99_by_node_ms: Vec::new(),
        expected: publishes * sh.subscribers,
        lost: 0,
        duplicated: 0,
        reordered: 0,
        closed: 0,
        acked,
        refused,
        redis_us_per_publish: cpu0
            .zip(cpu1)
            .map(|(a, b)| (b - a) * 1e6 / publishes as f64),
        redis_core_percent: cpu0
            .zip(cpu1)
            .map(|(a, b)| (b - a) * 100.0 / t0.elapsed().as_secs_f64()),
    };
    let (mut received, mut last_ns) = (0u64, t0_ns);
    for r in results {
        let (ws, st) = r.expect("subscriber task");
        back.extend(ws);
        m.duplicated += st.duplicated;
        m.reordered += st.reordered;
        m.closed += st.closed as u64;
        received += st.received;
        last_ns = last_ns.max(st.last_ns);
        by_node[st.node].extend_from_slice(&st.samples);
        all.extend(st.samples);
    }
    m.lost = m.expected - received;
    if !all.is_empty() {
        all.sort_unstable();
        m.p50_ms = support::percentile(&all, 0.5) as f64 / 1e3;
        m.p99_ms = support::percentile(&all, 0.99) as f64 / 1e3;
        m.deliveries_per_sec = received as f64 / ((last_ns - t0_ns) as f64 / 1e9);
    }
    if nodes > 1 {
        for samples in &mut by_node {
            samples.sort_unstable();
            m.p99_by_node_ms.push(if samples.is_empty() {
                0.0
            } else {
                support::percentile(samples, 0.99) as f64 / 1e3
            });
        }
    }
    (back, m)
}

/// Redis's own CPU so far, user + system seconds (`INFO cpu`), over a
/// plain connection: one inline command, one bulk reply.
async fn redis_cpu_secs(port: u16) -> f64 {
    let read = async {
        let mut tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        tcp.write_all(b"INFO cpu\r\n").await.unwrap();
        let mut reply = Vec::new();
        let mut buf = [0u8; 4096];
        // `$LEN\r\n` + LEN bytes + `\r\n`.
        loop {
            let n = tcp.read(&mut buf).await.unwrap();
            assert!(n > 0, "Redis closed the connection");
            reply.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&reply);
            if let Some((head, body)) = text.split_once("\r\n") {
                let len: usize = head.trim_start_matches('$').parse().expect("a bulk reply");
                if body.len() >= len {
                    return body[..len].to_owned();
                }
            }
        }
    };
    let info = timeout(Duration::from_secs(5), read)
        .await
        .expect("Redis answers INFO");
    ["used_cpu_sys:", "used_cpu_user:"]
        .iter()
        .map(|key| {
            info.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .unwrap_or_else(|| panic!("{key} in INFO cpu"))
        })
        .sum()
}
