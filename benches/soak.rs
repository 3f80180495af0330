//! Soak: one wsgate under a steady mixed load for a chosen time, sampled at
//! a fixed interval, to show whether what it holds (memory, descriptors,
//! tasks, hub queues, sessions) stays flat once warmed up, or grows.
//!
//! One wsgate child (the release build, as `cargo bench` makes it) on
//! 127.0.0.1 with `[listen] connect_tunnel = true`, `[hub] api_tokens`, and
//! three routes: `/relay` (upstream: a plain-ws tokio-tungstenite echo server
//! this process runs on 127.0.0.1:0), `/hub` (a raw hub room, channel
//! `soak`, with `publish_rate` and `queue_messages` raised so a client of
//! this process falling behind shows as latency, not as a closed subscriber)
//! and `/echo`. The clients run here, on the same cores; every TCP socket has
//! TCP_NODELAY; every wait on the gateway is bounded (10 s a step).
//!
//! The load, all at once for the whole run:
//! - relay echo: 50 persistent sessions on `/relay`, each a round trip (send
//!   a small text, wait for its echo) every 50 ms (20/s each, 1,000/s in
//!   all); a session that fails is counted and opened again after 1 s;
//! - hub fan-out: 200 raw subscribers of the room and one raw publisher
//!   member sending `p N` 50 times a second, plus one publish a second
//!   (`a N`) through the HTTP API on the admin port (a fresh connection
//!   each); every subscriber checks it receives every `p` and every `a`, in
//!   order: a gap is lost messages, a number going back is reordered;
//! - churn: a new session every 50 ms (20/s, at most 64 in flight),
//!   alternately on `/echo` and `/relay`, each one round trip and then, in
//!   turn: a normal close handshake; the TCP connection dropped mid-message
//!   (a masked frame header announcing 1,000 bytes, 500 of them, then the
//!   socket dropped, no TLS close_notify); the TCP connection dropped without
//!   any close; a TLS close_notify (and FIN) without a WebSocket Close, after
//!   which the gateway must close the connection within 10 s;
//! - CONNECT tunnels: once a second, `CONNECT localhost:PORT` in plaintext
//!   to the gateway's port, 200 expected, then TLS, a WebSocket upgrade
//!   (alternately `/echo` and `/relay`), one round trip and a normal close,
//!   all inside the tunnel;
//! - reloads: SIGHUP every 60 s (15 s with `--quick`), the config file
//!   rewritten before each alternately as it was and with its routes in the
//!   reverse order (equivalent); `wsgate_config_reloads_total{result="ok"}`
//!   must rise within 10 s.
//!
//! Samples: one before the load (the gateway idle, just started), one every
//! `--sample-secs` during it, one after it: RSS (`VmRSS`) and open
//! descriptors (entries of `/proc/PID/fd`) of the child, and from its
//! `/metrics`: `wsgate_tasks`, `wsgate_hub_queued_messages`,
//! `wsgate_hub_queued_bytes`, sessions open (the sum of
//! `wsgate_connections_active`), with the load's counters. One line per
//! sample as it is taken; at the end a markdown table of them all, then the
//! flatness figures over the window after warm-up (the first 20 % of the run
//! skipped; with the default 30 minutes, the first 6): RSS, descriptors and
//! tasks as the mean of the window's last third against its middle third,
//! the least-squares slope per minute, min and max; and the idle gateway
//! before the load against the idle gateway after it. The verdict (flat or
//! growing, by the criteria printed with it) is reported, never a failure.
//!
//! After the load: the publishers stop, the subscribers read until they have
//! every message (at most 30 s), every persistent session closes normally,
//! and the gateway must be back to 0 sessions, and the echo server behind
//! it to 0 connections, within 30 s. The "after" sample is taken then.
//!
//! The run fails (exit 1) on any unexpected failure, each printed: a round
//! trip, session, tunnel or close that should work and did not; a hub
//! message lost or reordered, a subscriber closed; an API publish refused; a
//! reload not counted; a scrape that did not answer; sessions left open at
//! the gateway or its upstream once the load has stopped.
//!
//! Run: `cargo bench --bench soak` (30 minutes plus the build; `-- --quick`:
//! 1 minute, a sample and a reload every 15 s). Flags after `--`:
//! `--minutes M` (30), `--sample-secs S` (60; 15 with `--quick`),
//! `--quick`.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use futures_util::{SinkExt, StreamExt};
use rustls_pki_types::ServerName;
use support::{Server, Setup, Ws};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior, interval, sleep, sleep_until, timeout, timeout_at};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;

/// Persistent relay sessions, and the pace of each one's round trips.
const RELAY_SESSIONS: usize = 50;
const RELAY_PERIOD: Duration = Duration::from_millis(50);
/// Raw hub subscribers, the publisher member's pace, the API publisher's.
const HUB_SUBSCRIBERS: usize = 200;
const HUB_PERIOD: Duration = Duration::from_millis(20);
const API_PERIOD: Duration = Duration::from_secs(1);
/// A new churn session this often, at most this many in flight.
const CHURN_PERIOD: Duration = Duration::from_millis(50);
const CHURN_IN_FLIGHT: usize = 64;
/// A CONNECT tunnel this often.
const TUNNEL_PERIOD: Duration = Duration::from_secs(1);
/// Bound on one step against the gateway: a connect, a TLS handshake, an
/// upgrade, an echo, a close, a scrape, a reload being counted.
const STEP: Duration = Duration::from_secs(10);
/// Bound on one whole churn session or tunnel.
const WHOLE: Duration = Duration::from_secs(60);
/// After the load: how long subscribers may take to receive the last
/// messages, and the gateway and its upstream to let go of every session.
const DRAIN: Duration = Duration::from_secs(30);
/// A failed persistent session or publisher is opened again after this.
const RETRY: Duration = Duration::from_secs(1);
/// The declared length of the frame a churn client abandons half-way.
const MID_MESSAGE: usize = 1000;
/// The hub room, and the API token.
const CHANNEL: &str = "soak";
const TOKEN: &str = "soak-api-token-0123456789";
/// `max_connections` (plus the 100 `Setup` adds): far above what the load
/// holds (about 300 sessions and what is in flight).
const ROOM: usize = 1000;
/// The clients' WebSocket read buffer (tokio-tungstenite's default is 128
/// KiB; the messages here are small).
const CLIENT_READ_BUFFER: usize = 4096;
/// Failures printed as they happen, and kept for the end, per kind.
const EXAMPLES: usize = 3;

struct Params {
    quick: bool,
    /// Seconds of load.
    secs: u64,
    sample_secs: u64,
    reload_secs: u64,
}

impl Params {
    fn parse() -> anyhow::Result<Params> {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let quick = args.iter().any(|a| a == "--quick");
        let mut minutes: f64 = if quick { 1.0 } else { 30.0 };
        let mut sample_secs: u64 = if quick { 15 } else { 60 };
        let mut i = 0;
        while i < args.len() {
            match args[i].as_str() {
                // `cargo bench` appends `--bench`.
                "--quick" | "--bench" => {}
                flag @ ("--minutes" | "--sample-secs") => {
                    let value = args
                        .get(i + 1)
                        .with_context(|| format!("{flag} needs a value"))?;
                    if flag == "--minutes" {
                        minutes = value
                            .parse::<f64>()
                            .ok()
                            .filter(|m| *m > 0.0 && *m <= 24.0 * 60.0)
                            .with_context(|| format!("--minutes {value}: above 0, at most 1440"))?;
                    } else {
                        sample_secs = value
                            .parse::<u64>()
                            .ok()
                            .filter(|s| (1..=3600).contains(s))
                            .with_context(|| {
                                format!("--sample-secs {value}: a whole number, 1 to 3600")
                            })?;
                    }
                    i += 1;
                }
                other => bail!(
                    "unexpected argument {other:?}; flags: --minutes M, --sample-secs S, --quick"
                ),
            }
            i += 1;
        }
        Ok(Params {
            quick,
            secs: ((minutes * 60.0).round() as u64).max(1),
            sample_secs,
            reload_secs: if quick { 15 } else { 60 },
        })
    }
}

fn main() {
    let p = match Params::parse() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("soak bench: {e:#}");
            std::process::exit(2);
        }
    };
    // Room for every client here and every session in the gateway (which
    // inherits the limit): about 600 descriptors each at steady state.
    if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
        eprintln!("soak bench: raising RLIMIT_NOFILE: {e}");
    }
    let ok = tokio::runtime::Runtime::new().unwrap().block_on(soak(&p));
    // The gateway child was killed when `soak` returned.
    if !ok {
        std::process::exit(1);
    }
}

// ---------------------------------------------------------------- counters

/// What the load did, as it goes: read by the sampler.
struct Load {
    t0: Instant,
    relay_round_trips: AtomicU64,
    /// `p N` frames the publisher member sent.
    hub_published: AtomicU64,
    /// `a N` API publishes answered 200 (the highest N + 1).
    api_published: AtomicU64,
    /// Messages received by all subscribers.
    hub_received: AtomicU64,
    /// Churn sessions done, by how they ended (`End` as index).
    churn: [AtomicU64; 4],
    tunnels: AtomicU64,
    /// Reloads sent and seen counted as `ok`.
    reloads: AtomicU64,
    failures: Mutex<BTreeMap<&'static str, Failures>>,
}

#[derive(Default)]
struct Failures {
    count: u64,
    first: Vec<String>,
}

impl Load {
    fn new() -> Load {
        Load {
            t0: Instant::now(),
            relay_round_trips: AtomicU64::new(0),
            hub_published: AtomicU64::new(0),
            api_published: AtomicU64::new(0),
            hub_received: AtomicU64::new(0),
            churn: Default::default(),
            tunnels: AtomicU64::new(0),
            reloads: AtomicU64::new(0),
            failures: Mutex::default(),
        }
    }

    /// Count a failure of `kind`; the first few are printed and kept.
    fn fail(&self, kind: &'static str, what: String) {
        let at = self.t0.elapsed().as_secs_f64();
        let mut failures = self.failures.lock().unwrap();
        let f = failures.entry(kind).or_default();
        f.count += 1;
        if f.first.len() < EXAMPLES {
            eprintln!("  FAILURE at {at:.1} s ({kind}): {what}");
            f.first.push(format!("at {at:.1} s: {what}"));
        }
    }

    fn failed(&self) -> u64 {
        self.failures
            .lock()
            .unwrap()
            .values()
            .map(|f| f.count)
            .sum()
    }

    fn churned(&self) -> u64 {
        self.churn.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }
}

// ---------------------------------------------------------------- backend

/// The plain-ws echo server behind `/relay`, in this process: every data
/// message back as it came. Counts its connections, to check the gateway
/// lets go of its upstream side too.
struct Backend {
    addr: SocketAddr,
    open: Arc<AtomicI64>,
    accepted: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn backend() -> Backend {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let open = Arc::new(AtomicI64::new(0));
    let accepted = Arc::new(AtomicU64::new(0));
    let (o, a) = (open.clone(), accepted.clone());
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                // Out of descriptors or similar: back off, never spin.
                sleep(Duration::from_millis(10)).await;
                continue;
            };
            a.fetch_add(1, Ordering::Relaxed);
            o.fetch_add(1, Ordering::Relaxed);
            let o = o.clone();
            tokio::spawn(async move {
                echo_connection(tcp).await;
                o.fetch_sub(1, Ordering::Relaxed);
            });
        }
    });
    Backend {
        addr,
        open,
        accepted,
        task,
    }
}

async fn echo_connection(tcp: TcpStream) {
    let _ = tcp.set_nodelay(true);
    let config = WebSocketConfig::default().read_buffer_size(CLIENT_READ_BUFFER);
    let Ok(Ok(mut ws)) = timeout(
        STEP,
        tokio_tungstenite::accept_async_with_config(tcp, Some(config)),
    )
    .await
    else {
        return;
    };
    // Until the gateway closes (tungstenite answers its Close) or drops it.
    while let Some(Ok(msg)) = ws.next().await {
        if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
            return;
        }
    }
}

// ---------------------------------------------------------------- gateway

/// The routes, each one TOML block; the second form lists them in reverse.
fn routes(backend: SocketAddr, reversed: bool) -> String {
    let mut blocks = [
        format!(
            "[[routes]]\npath = \"/relay\"\nkind = \"upstream\"\nupstreams = [\"ws://{backend}\"]\n"
        ),
        format!(
            "[[routes]]\npath = \"/hub\"\nkind = \"hub\"\nprotocol = \"raw\"\nchannel = \"{CHANNEL}\"\n\
             publish_rate = 1000\npublish_burst = 2000\nqueue_messages = 10000\n"
        ),
        "[[routes]]\npath = \"/echo\"\nkind = \"echo\"\n".to_owned(),
    ];
    if reversed {
        blocks.reverse();
    }
    format!("[hub]\napi_tokens = [\"{TOKEN}\"]\n{}", blocks.concat())
}

// ---------------------------------------------------------------- clients

/// Open a session: TCP (no delay), TLS, the upgrade, each bounded.
/// A session to `path`, opened again every `RETRY` while it fails (each
/// failure counted under `what`); `None` once the load stops.
async fn reopen(
    setup: &Setup,
    addr: SocketAddr,
    path: &str,
    load: &Load,
    what: &'static str,
    stop: &CancellationToken,
) -> Option<Ws> {
    while !stop.is_cancelled() {
        match open(setup, addr, path).await {
            Ok(ws) => return Some(ws),
            Err(e) => {
                load.fail(what, format!("{path}: open: {e:#}"));
                pause(RETRY, stop).await;
            }
        }
    }
    None
}

async fn open(setup: &Setup, addr: SocketAddr, path: &str) -> anyhow::Result<Ws> {
    let tcp = timeout(STEP, TcpStream::connect(addr))
        .await
        .map_err(|_| anyhow!("TCP connect timed out"))?
        .context("TCP connect")?;
    tcp.set_nodelay(true)?;
    ws_over(setup, tcp, addr.port(), path).await
}

/// TLS and the upgrade over a TCP stream already open (directly, or a
/// CONNECT tunnel).
async fn ws_over(setup: &Setup, tcp: TcpStream, port: u16, path: &str) -> anyhow::Result<Ws> {
    let tls = timeout(
        STEP,
        setup
            .connector
            .connect(ServerName::try_from("localhost").unwrap(), tcp),
    )
    .await
    .map_err(|_| anyhow!("TLS handshake timed out"))?
    .context("TLS handshake")?;
    let url = format!("wss://localhost:{port}{path}");
    let config = WebSocketConfig::default().read_buffer_size(CLIENT_READ_BUFFER);
    let (ws, _) = timeout(
        STEP,
        tokio_tungstenite::client_async_with_config(url, tls, Some(config)),
    )
    .await
    .map_err(|_| anyhow!("upgrade timed out"))?
    .context("upgrade")?;
    Ok(ws)
}

/// Send `text` and wait for it to come back (pings and pongs skipped).
async fn round_trip(ws: &mut Ws, text: String) -> anyhow::Result<()> {
    timeout(STEP, ws.send(Message::text(text.clone())))
        .await
        .map_err(|_| anyhow!("send timed out"))?
        .context("send")?;
    let until = Instant::now() + STEP;
    loop {
        match timeout_at(until, ws.next()).await {
            Err(_) => bail!("no echo of {text:?} within {} s", STEP.as_secs()),
            Ok(None) => bail!("closed before the echo of {text:?}"),
            Ok(Some(Err(e))) => bail!("before the echo of {text:?}: {e}"),
            Ok(Some(Ok(Message::Text(t)))) if t.as_str() == text => return Ok(()),
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => {}
            Ok(Some(Ok(other))) => bail!("expected the echo of {text:?}, got {other:?}"),
        }
    }
}

/// The close handshake from the client's side, until the gateway's Close.
async fn close(mut ws: Ws) -> anyhow::Result<()> {
    let run = async {
        ws.close(None).await.context("sending Close")?;
        while let Some(msg) = ws.next().await {
            msg.context("reading up to the gateway's Close")?;
        }
        anyhow::Ok(())
    };
    timeout(STEP, run)
        .await
        .map_err(|_| anyhow!("close handshake not done within {} s", STEP.as_secs()))?
}

/// Sleep `d`, or less if told to stop.
async fn pause(d: Duration, stop: &CancellationToken) {
    tokio::select! {
        _ = sleep(d) => {}
        _ = stop.cancelled() => {}
    }
}

fn ticker(period: Duration) -> tokio::time::Interval {
    let mut tick = interval(period);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    tick
}

// ---------------------------------------------------------------- relay echo

/// One persistent relay session: a round trip every `RELAY_PERIOD` until
/// told to stop, then a normal close. Opened again after a failure.
async fn relay_session(
    i: usize,
    setup: Arc<Setup>,
    addr: SocketAddr,
    load: Arc<Load>,
    stop: CancellationToken,
) {
    // Spread the sessions over the period rather than all at once.
    pause(RELAY_PERIOD * i as u32 / RELAY_SESSIONS as u32, &stop).await;
    let path = format!("/relay/s{i}");
    let mut n = 0u64;
    'session: while !stop.is_cancelled() {
        let Some(mut ws) = reopen(&setup, addr, &path, &load, "relay", &stop).await else {
            break;
        };
        let mut tick = ticker(RELAY_PERIOD);
        loop {
            tokio::select! {
                _ = stop.cancelled() => {
                    if let Err(e) = close(ws).await {
                        load.fail("relay", format!("session {i}: close: {e:#}"));
                    }
                    break 'session;
                }
                _ = tick.tick() => {}
            }
            match round_trip(&mut ws, format!("relay {i} {n}")).await {
                Ok(()) => {
                    n += 1;
                    load.relay_round_trips.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    load.fail("relay", format!("session {i}, round trip {n}: {e:#}"));
                    pause(RETRY, &stop).await;
                    continue 'session;
                }
            }
        }
    }
}

// ---------------------------------------------------------------- hub

/// What one subscriber saw.
#[derive(Default)]
struct Tally {
    received: u64,
    /// Messages missing: gaps in a sequence, and what never came at the end.
    lost: u64,
    /// Messages whose number went back (duplicated or out of order).
    reordered: u64,
    closed: bool,
}

/// One raw subscriber: reads the room until `stop`, then until it has every
/// message published (at most `DRAIN`), then closes normally.
async fn subscriber(i: usize, mut ws: Ws, load: Arc<Load>, stop: CancellationToken) -> Tally {
    let mut t = Tally::default();
    // The next number expected from the publisher member and from the API.
    let (mut next_p, mut next_a) = (0u64, 0u64);
    let mut draining: Option<Instant> = None;
    loop {
        if draining.is_some()
            && next_p >= load.hub_published.load(Ordering::Relaxed)
            && next_a >= load.api_published.load(Ordering::Relaxed)
        {
            break;
        }
        let msg = tokio::select! {
            biased;
            _ = stop.cancelled(), if draining.is_none() => {
                draining = Some(Instant::now() + DRAIN);
                continue;
            }
            _ = sleep_until(draining.unwrap_or_else(Instant::now)), if draining.is_some() => break,
            msg = ws.next() => msg,
        };
        let text = match msg {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(other)) => {
                load.fail(
                    "hub subscriber",
                    format!("subscriber {i}: unexpected {other:?}"),
                );
                continue;
            }
            Some(Err(e)) => {
                load.fail("hub subscriber", format!("subscriber {i} closed: {e}"));
                t.closed = true;
                return t;
            }
            None => {
                load.fail(
                    "hub subscriber",
                    format!("subscriber {i} closed by the gateway"),
                );
                t.closed = true;
                return t;
            }
        };
        let text = text.as_str();
        let parsed = text
            .split_once(' ')
            .and_then(|(kind, n)| Some((kind, n.parse::<u64>().ok()?)));
        let (next, n) = match parsed {
            Some(("p", n)) => (&mut next_p, n),
            Some(("a", n)) => (&mut next_a, n),
            _ => {
                load.fail(
                    "hub subscriber",
                    format!("subscriber {i}: unexpected {text:?}"),
                );
                continue;
            }
        };
        t.received += 1;
        load.hub_received.fetch_add(1, Ordering::Relaxed);
        if n < *next {
            t.reordered += 1;
            load.fail(
                "hub order",
                format!("subscriber {i}: {text:?} after {} of its kind", *next),
            );
            continue;
        }
        if n > *next {
            t.lost += n - *next;
            load.fail(
                "hub loss",
                format!("subscriber {i}: {text:?}, expected number {}", *next),
            );
        }
        *next = n + 1;
    }
    // What never came.
    let missing = load
        .hub_published
        .load(Ordering::Relaxed)
        .saturating_sub(next_p)
        + load
            .api_published
            .load(Ordering::Relaxed)
            .saturating_sub(next_a);
    if missing > 0 {
        t.lost += missing;
        load.fail(
            "hub loss",
            format!(
                "subscriber {i}: {missing} messages never came within {} s of the last publish",
                DRAIN.as_secs()
            ),
        );
    }
    if let Err(e) = close(ws).await {
        load.fail("hub subscriber", format!("subscriber {i}: close: {e:#}"));
    }
    t
}

/// The publisher, a member of the room: `p N` every `HUB_PERIOD`. It reads
/// too (the API's publishes reach every member, itself included).
async fn publisher(setup: Arc<Setup>, addr: SocketAddr, load: Arc<Load>, stop: CancellationToken) {
    let mut n = 0u64;
    while !stop.is_cancelled() {
        let path = "/hub?name=publisher";
        let Some(mut ws) = reopen(&setup, addr, path, &load, "hub publisher", &stop).await else {
            break;
        };
        let mut tick = ticker(HUB_PERIOD);
        let broke = loop {
            tokio::select! {
                _ = stop.cancelled() => break None,
                _ = tick.tick() => {
                    match timeout(STEP, ws.send(Message::text(format!("p {n}")))).await {
                        Ok(Ok(())) => {
                            n += 1;
                            load.hub_published.store(n, Ordering::Relaxed);
                        }
                        Ok(Err(e)) => break Some(format!("send: {e}")),
                        Err(_) => break Some("send timed out".to_owned()),
                    }
                }
                msg = ws.next() => match msg {
                    Some(Ok(_)) => {}
                    Some(Err(e)) => break Some(format!("{e}")),
                    None => break Some("closed by the gateway".to_owned()),
                },
            }
        };
        match broke {
            None => {
                if let Err(e) = close(ws).await {
                    load.fail("hub publisher", format!("close: {e:#}"));
                }
                return;
            }
            Some(e) => {
                load.fail("hub publisher", format!("after {n} publishes: {e}"));
                pause(RETRY, &stop).await;
            }
        }
    }
}

/// `a N` through the HTTP API once a second, a fresh connection each.
async fn api_publisher(admin: SocketAddr, load: Arc<Load>, stop: CancellationToken) {
    let mut tick = ticker(API_PERIOD);
    let mut n = 0u64;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let body = format!("a {n}");
        let request = format!(
            "POST /api/channels/{CHANNEL}/publish HTTP/1.1\r\nHost: 127.0.0.1\r\n\
             Authorization: Bearer {TOKEN}\r\nContent-Type: text/plain\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        match http(admin, &request).await {
            Ok(answer) if answer.starts_with("HTTP/1.1 200") => {
                load.api_published.store(n + 1, Ordering::Relaxed);
            }
            Ok(answer) => load.fail(
                "hub api",
                format!("publish {n}: {:?}", answer.lines().next().unwrap_or("")),
            ),
            Err(e) => load.fail("hub api", format!("publish {n}: {e:#}")),
        }
        // A number is never reused: a publish that failed may have gone out.
        n += 1;
    }
}

/// One request to the admin listener (`Connection: close`); the answer.
async fn http(admin: SocketAddr, request: &str) -> anyhow::Result<String> {
    let run = async {
        let mut tcp = TcpStream::connect(admin).await.context("connect")?;
        tcp.set_nodelay(true)?;
        tcp.write_all(request.as_bytes()).await?;
        let mut answer = Vec::new();
        tcp.read_to_end(&mut answer).await?;
        anyhow::Ok(String::from_utf8_lossy(&answer).into_owned())
    };
    timeout(STEP, run)
        .await
        .map_err(|_| anyhow!("no answer within {} s", STEP.as_secs()))?
}

// ---------------------------------------------------------------- churn

/// How a churn session ends.
#[derive(Clone, Copy, Debug)]
enum End {
    /// The close handshake.
    Close,
    /// Half a frame, then the TCP connection dropped.
    MidMessage,
    /// The TCP connection dropped, no Close, no close_notify.
    Drop,
    /// TLS close_notify and FIN, no WebSocket Close.
    TlsClose,
}

const ENDS: [End; 4] = [End::Close, End::MidMessage, End::Drop, End::TlsClose];

impl End {
    fn label(self) -> &'static str {
        match self {
            End::Close => "close handshake",
            End::MidMessage => "dropped mid-message",
            End::Drop => "dropped without a close",
            End::TlsClose => "TLS close, no WebSocket close",
        }
    }
}

/// A new session every `CHURN_PERIOD` (at most `CHURN_IN_FLIGHT` at once)
/// until told to stop; then wait for those in flight.
async fn churn(setup: Arc<Setup>, addr: SocketAddr, load: Arc<Load>, stop: CancellationToken) {
    let slots = Arc::new(Semaphore::new(CHURN_IN_FLIGHT));
    let mut tick = ticker(CHURN_PERIOD);
    let mut k = 0usize;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let permit = tokio::select! {
            _ = stop.cancelled() => break,
            p = slots.clone().acquire_owned() => p.expect("the semaphore stays open"),
        };
        let path = if k.is_multiple_of(2) {
            "/echo"
        } else {
            "/relay/churn"
        };
        let end = ENDS[(k / 2) % ENDS.len()];
        let (setup, load) = (setup.clone(), load.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let result = timeout(WHOLE, churn_one(&setup, addr, path, end, k))
                .await
                .unwrap_or_else(|_| Err(anyhow!("not done within {} s", WHOLE.as_secs())));
            match result {
                Ok(()) => {
                    load.churn[end as usize].fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => load.fail("churn", format!("{path}, {}: {e:#}", end.label())),
            }
        });
        k += 1;
    }
    // Those in flight end on their own, each within `WHOLE`.
    let _ = timeout(WHOLE + STEP, slots.acquire_many(CHURN_IN_FLIGHT as u32)).await;
}

async fn churn_one(
    setup: &Setup,
    addr: SocketAddr,
    path: &str,
    end: End,
    k: usize,
) -> anyhow::Result<()> {
    let mut ws = open(setup, addr, path).await?;
    round_trip(&mut ws, format!("churn {k}")).await?;
    match end {
        End::Close => close(ws).await,
        End::MidMessage => {
            // FIN + binary, masked, 16-bit length; then half the payload.
            let mut frame = vec![
                0x82,
                0x80 | 126,
                (MID_MESSAGE >> 8) as u8,
                MID_MESSAGE as u8,
                0x11,
                0x22,
                0x33,
                0x44,
            ];
            frame.resize(frame.len() + MID_MESSAGE / 2, 0x5a);
            let io = ws.get_mut();
            timeout(STEP, async {
                io.write_all(&frame).await?;
                io.flush().await
            })
            .await
            .map_err(|_| anyhow!("writing half a frame timed out"))?
            .context("writing half a frame")?;
            // Dropping the TLS stream closes the socket, no close_notify.
            drop(ws);
            Ok(())
        }
        End::Drop => {
            drop(ws);
            Ok(())
        }
        End::TlsClose => {
            let io = ws.get_mut();
            timeout(STEP, io.shutdown())
                .await
                .map_err(|_| anyhow!("TLS close timed out"))?
                .context("TLS close")?;
            // The gateway must let the connection go: EOF (or a reset).
            let mut buf = [0u8; 1024];
            let gone = timeout(STEP, async {
                loop {
                    match io.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                }
            })
            .await;
            if gone.is_err() {
                bail!(
                    "the gateway still held the connection {} s after the client's TLS close",
                    STEP.as_secs()
                );
            }
            Ok(())
        }
    }
}

// ---------------------------------------------------------------- tunnels

/// A CONNECT tunnel every `TUNNEL_PERIOD`, one at a time.
async fn tunnels(setup: Arc<Setup>, addr: SocketAddr, load: Arc<Load>, stop: CancellationToken) {
    let mut tick = ticker(TUNNEL_PERIOD);
    let mut k = 0u64;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let path = if k.is_multiple_of(2) {
            "/echo"
        } else {
            "/relay/tunnel"
        };
        let result = timeout(WHOLE, tunnel_one(&setup, addr, path, k))
            .await
            .unwrap_or_else(|_| Err(anyhow!("not done within {} s", WHOLE.as_secs())));
        match result {
            Ok(()) => {
                load.tunnels.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => load.fail("tunnel", format!("{path}: {e:#}")),
        }
        k += 1;
    }
}

async fn tunnel_one(setup: &Setup, addr: SocketAddr, path: &str, k: u64) -> anyhow::Result<()> {
    let mut tcp = timeout(STEP, TcpStream::connect(addr))
        .await
        .map_err(|_| anyhow!("TCP connect timed out"))?
        .context("TCP connect")?;
    tcp.set_nodelay(true)?;
    let port = addr.port();
    let request = format!("CONNECT localhost:{port} HTTP/1.1\r\nHost: localhost:{port}\r\n\r\n");
    let head = timeout(STEP, async {
        tcp.write_all(request.as_bytes()).await?;
        // Byte by byte: nothing past the head may be taken from the tunnel.
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            if head.len() > 8192 {
                bail!("an answer head over 8 KiB");
            }
            head.push(tcp.read_u8().await.context("reading the answer")?);
        }
        anyhow::Ok(String::from_utf8_lossy(&head).into_owned())
    })
    .await
    .map_err(|_| anyhow!("no answer to CONNECT within {} s", STEP.as_secs()))??;
    if !head.starts_with("HTTP/1.1 200") {
        bail!("CONNECT answered {:?}", head.lines().next().unwrap_or(""));
    }
    let mut ws = ws_over(setup, tcp, port, path)
        .await
        .context("inside the tunnel")?;
    round_trip(&mut ws, format!("tunnel {k}")).await?;
    close(ws).await
}

// ---------------------------------------------------------------- reloads

/// Reload results so far: (ok, failed, invalid).
fn reload_counts(scrape: &str) -> (f64, f64, f64) {
    let r = |result: &str| {
        metric(
            scrape,
            &format!("wsgate_config_reloads_total{{result=\"{result}\"}}"),
        )
        .unwrap_or(0.0)
    };
    (r("ok"), r("failed"), r("invalid"))
}

/// SIGHUP every `every`, the file rewritten before each, alternately in
/// its two equivalent forms; each must be counted `ok` within `STEP`.
async fn reloader(
    gw: GatewayRef,
    forms: [String; 2],
    every: Duration,
    load: Arc<Load>,
    stop: CancellationToken,
) {
    let mut k = 0usize;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = sleep(every) => {}
        }
        k += 1;
        let before = match scrape(gw.admin).await {
            Ok(s) => reload_counts(&s),
            Err(e) => {
                load.fail("reload", format!("reload {k}: scrape before: {e:#}"));
                continue;
            }
        };
        if let Err(e) = std::fs::write(&gw.config, &forms[k % 2]) {
            load.fail("reload", format!("reload {k}: writing the config: {e}"));
            continue;
        }
        let sent = Command::new("kill")
            .args(["-HUP", &gw.pid.to_string()])
            .status();
        if !sent.as_ref().is_ok_and(|s| s.success()) {
            load.fail("reload", format!("reload {k}: kill -HUP: {sent:?}"));
            continue;
        }
        let until = Instant::now() + STEP;
        loop {
            sleep(Duration::from_millis(200)).await;
            if let Ok(s) = scrape(gw.admin).await {
                let now = reload_counts(&s);
                if now.0 > before.0 {
                    load.reloads.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                if now.1 > before.1 || now.2 > before.2 {
                    load.fail(
                        "reload",
                        format!(
                            "reload {k} refused: failed {} -> {}, invalid {} -> {}",
                            before.1, now.1, before.2, now.2
                        ),
                    );
                    break;
                }
            }
            if Instant::now() >= until {
                load.fail(
                    "reload",
                    format!(
                        "reload {k}: wsgate_config_reloads_total{{result=\"ok\"}} still {} {} s \
                         after SIGHUP",
                        before.0,
                        STEP.as_secs()
                    ),
                );
                break;
            }
        }
    }
}

// ---------------------------------------------------------------- samples

/// What the load's tasks need of the gateway.
#[derive(Clone)]
struct GatewayRef {
    pid: u32,
    addr: SocketAddr,
    admin: SocketAddr,
    config: PathBuf,
}

/// One scrape of the admin listener's `/metrics`.
async fn scrape(admin: SocketAddr) -> anyhow::Result<String> {
    let answer = http(
        admin,
        "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
    )
    .await?;
    if !answer.starts_with("HTTP/1.1 200") {
        bail!(
            "/metrics answered {:?}",
            answer.lines().next().unwrap_or("")
        );
    }
    Ok(answer)
}

/// One series' value in a scrape.
fn metric(scrape: &str, series: &str) -> Option<f64> {
    scrape.lines().find_map(|line| {
        line.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// The sum of every series of `name` with labels.
fn sum(scrape: &str, name: &str) -> f64 {
    let prefix = format!("{name}{{");
    scrape
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .filter_map(|l| l.rsplit_once(' ')?.1.trim().parse::<f64>().ok())
        .sum()
}

/// Non-zero series of `name` (with labels), as `labels value` lines.
fn series(scrape: &str, name: &str) -> Vec<String> {
    let prefix = format!("{name}{{");
    scrape
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .filter_map(|rest| {
            let (labels, value) = rest.rsplit_once(' ')?;
            let v: f64 = value.trim().parse().ok()?;
            (v != 0.0).then(|| format!("{{{labels} {v}"))
        })
        .collect()
}

/// Resident memory (KiB) and open descriptors of a process, from /proc.
fn proc_figures(pid: u32) -> anyhow::Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .context("the gateway's /proc/PID/status")?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("VmRSS")?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .context("the gateway's /proc/PID/fd")?
        .count() as u64;
    Ok((rss, fds))
}

/// A process's descriptors by kind: a TCP socket by its state (and, when
/// listening, its address), from `/proc/PID/net/tcp` and `tcp6`; anything
/// else by its link with the inode number dropped (`pipe`, `anon_inode:...`).
fn descriptor_kinds(pid: u32) -> BTreeMap<String, u64> {
    const STATES: [&str; 12] = [
        "?",
        "ESTABLISHED",
        "SYN_SENT",
        "SYN_RECV",
        "FIN_WAIT1",
        "FIN_WAIT2",
        "TIME_WAIT",
        "CLOSE",
        "CLOSE_WAIT",
        "LAST_ACK",
        "LISTEN",
        "CLOSING",
    ];
    // inode -> "tcp STATE" (with the local port when listening).
    let mut tcp = BTreeMap::new();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 {
                continue;
            }
            let state = usize::from_str_radix(f[3], 16).unwrap_or(0);
            let name = STATES.get(state).copied().unwrap_or("?");
            let what = match name {
                "LISTEN" => {
                    let port = f[1]
                        .rsplit_once(':')
                        .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
                        .unwrap_or(0);
                    format!("{table} LISTEN :{port}")
                }
                _ => format!("{table} {name}"),
            };
            tcp.insert(f[9].to_owned(), what);
        }
    }
    let mut kinds = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return kinds;
    };
    for entry in dir.flatten() {
        let link = std::fs::read_link(entry.path())
            .map(|l| l.to_string_lossy().into_owned())
            .unwrap_or_else(|_| "?".to_owned());
        let kind = match link.strip_prefix("socket:[") {
            Some(inode) => tcp
                .get(inode.trim_end_matches(']'))
                .cloned()
                .unwrap_or_else(|| "socket (not TCP)".to_owned()),
            None => match link.split_once(":[") {
                Some((kind, _)) => kind.to_owned(),
                None => link,
            },
        };
        *kinds.entry(kind).or_insert(0) += 1;
    }
    kinds
}

#[derive(Clone)]
struct Sample {
    label: String,
    /// Seconds since the load started: when it was due (while the load
    /// ran), when it was taken (before and after).
    t: f64,
    /// Taken while the load ran (these are the ones judged for flatness).
    loaded: bool,
    rss_kib: u64,
    fds: u64,
    tasks: f64,
    queued_messages: f64,
    queued_bytes: f64,
    sessions: f64,
    hub_clients: f64,
    relay: u64,
    published: u64,
    received: u64,
    churn: u64,
    tunnels: u64,
    reloads: u64,
    failures: u64,
    /// The descriptors by kind (the idle samples only).
    kinds: Option<BTreeMap<String, u64>>,
}

async fn take_sample(
    gw: &GatewayRef,
    load: &Load,
    label: String,
    at: Option<Duration>,
) -> anyhow::Result<Sample> {
    let (t, loaded) = match at {
        Some(at) => (at.as_secs_f64(), true),
        None => (load.t0.elapsed().as_secs_f64(), false),
    };
    let (rss_kib, fds) = proc_figures(gw.pid)?;
    let kinds = (!loaded).then(|| descriptor_kinds(gw.pid));
    let s = scrape(gw.admin).await.context("scrape")?;
    let m = |name: &str| metric(&s, name).unwrap_or(0.0);
    Ok(Sample {
        label,
        t,
        loaded,
        rss_kib,
        fds,
        tasks: m("wsgate_tasks"),
        queued_messages: m("wsgate_hub_queued_messages"),
        queued_bytes: m("wsgate_hub_queued_bytes"),
        sessions: sum(&s, "wsgate_connections_active"),
        hub_clients: m("wsgate_hub_clients"),
        relay: load.relay_round_trips.load(Ordering::Relaxed),
        published: load.hub_published.load(Ordering::Relaxed)
            + load.api_published.load(Ordering::Relaxed),
        received: load.hub_received.load(Ordering::Relaxed),
        churn: load.churned(),
        tunnels: load.tunnels.load(Ordering::Relaxed),
        reloads: load.reloads.load(Ordering::Relaxed),
        failures: load.failed(),
        kinds,
    })
}

fn print_line(s: &Sample) {
    println!(
        "[{:>8}] RSS {} KiB | fds {} | tasks {} | hub queued {} msgs / {} B | sessions {} \
         (hub clients {}) | relay {} round trips | hub {} published, {} received | churn {} | \
         tunnels {} | reloads {} | failures {}",
        s.label,
        thousands(s.rss_kib),
        s.fds,
        s.tasks,
        s.queued_messages,
        thousands(s.queued_bytes as u64),
        s.sessions,
        s.hub_clients,
        thousands(s.relay),
        thousands(s.published),
        thousands(s.received),
        thousands(s.churn),
        thousands(s.tunnels),
        s.reloads,
        s.failures
    );
}

fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

// ---------------------------------------------------------------- the run

async fn soak(p: &Params) -> bool {
    let setup = Arc::new(Setup::new());
    let backend = backend().await;
    let server: Server = setup.gateway_with(
        "soak.toml",
        "connect_tunnel = true\n",
        ROOM,
        "",
        &routes(backend.addr, false),
    );
    let Some(admin) = server.admin else {
        println!("FAILED: the gateway did not name its admin address");
        return false;
    };
    let config = setup.dir.path().join("soak.toml");
    let written = std::fs::read_to_string(&config).expect("the config Setup wrote");
    let forms = [
        written.clone(),
        written.replace(&routes(backend.addr, false), &routes(backend.addr, true)),
    ];
    assert_ne!(forms[0], forms[1], "the routes are the end of the config");
    let gw = GatewayRef {
        pid: server.child.id(),
        addr: server.addr,
        admin,
        config,
    };
    // Its clock starts with the idle sample, a moment before the load.
    let load = Arc::new(Load::new());
    let load_avg = loadavg();
    eprintln!(
        "soak: wsgate pid {} on {}, admin {}, echo backend on {}; {} s of load, a sample every \
         {} s, a reload every {} s",
        gw.pid, gw.addr, gw.admin, backend.addr, p.secs, p.sample_secs, p.reload_secs
    );

    let mut samples = Vec::new();
    match take_sample(&gw, &load, "before".to_owned(), None).await {
        Ok(s) => {
            print_line(&s);
            samples.push(s);
        }
        Err(e) => load.fail("scrape", format!("before the load: {e:#}")),
    }

    // The load; warm-up includes opening the sessions.
    let stop = CancellationToken::new();
    let stop_subscribers = CancellationToken::new();
    let relay: Vec<_> = (0..RELAY_SESSIONS)
        .map(|i| {
            tokio::spawn(relay_session(
                i,
                setup.clone(),
                gw.addr,
                load.clone(),
                stop.clone(),
            ))
        })
        .collect();
    let mut subscribers = Vec::with_capacity(HUB_SUBSCRIBERS);
    for batch in (0..HUB_SUBSCRIBERS).collect::<Vec<_>>().chunks(50) {
        let opened = futures_util::future::join_all(batch.iter().map(|&i| {
            let setup = setup.clone();
            async move {
                (
                    i,
                    open(&setup, gw.addr, &format!("/hub?name=sub-{i}")).await,
                )
            }
        }))
        .await;
        for (i, ws) in opened {
            match ws {
                Ok(ws) => subscribers.push(tokio::spawn(subscriber(
                    i,
                    ws,
                    load.clone(),
                    stop_subscribers.clone(),
                ))),
                Err(e) => load.fail("hub subscriber", format!("subscriber {i}: open: {e:#}")),
            }
        }
    }
    // The subscribers are members (a raw client joins at its upgrade)
    // before the first publish.
    let publishers = vec![
        tokio::spawn(publisher(
            setup.clone(),
            gw.addr,
            load.clone(),
            stop.clone(),
        )),
        tokio::spawn(api_publisher(gw.admin, load.clone(), stop.clone())),
    ];
    let others = vec![
        tokio::spawn(churn(setup.clone(), gw.addr, load.clone(), stop.clone())),
        tokio::spawn(tunnels(setup.clone(), gw.addr, load.clone(), stop.clone())),
        tokio::spawn(reloader(
            gw.clone(),
            forms,
            Duration::from_secs(p.reload_secs),
            load.clone(),
            stop.clone(),
        )),
    ];

    // Samples while the load runs.
    let run = Duration::from_secs(p.secs);
    let every = Duration::from_secs(p.sample_secs);
    let mut at = every.min(run);
    loop {
        sleep_until(load.t0 + at).await;
        let label = format!("{} s", at.as_secs());
        match take_sample(&gw, &load, label, Some(at)).await {
            Ok(s) => {
                print_line(&s);
                samples.push(s);
            }
            Err(e) => {
                load.fail("scrape", format!("sample at {} s: {e:#}", at.as_secs()));
                if proc_figures(gw.pid).is_err() {
                    println!("FAILED: the gateway is gone");
                    break;
                }
            }
        }
        if at >= run {
            break;
        }
        at = (at + every).min(run);
    }
    let load_end = load.t0.elapsed().as_secs_f64();

    // Stop: the publishers first, so that their counts are final when the
    // subscribers check they have everything; then everything else.
    eprintln!("soak: stopping the load");
    stop.cancel();
    if !joined(publishers, STEP * 3).await {
        load.fail(
            "bench",
            "the hub publishers did not stop in time".to_owned(),
        );
    }
    stop_subscribers.cancel();
    let tallies = match timeout(
        DRAIN + STEP * 2,
        futures_util::future::join_all(subscribers),
    )
    .await
    {
        Ok(t) => t.into_iter().filter_map(Result::ok).collect::<Vec<_>>(),
        Err(_) => {
            load.fail(
                "bench",
                "the hub subscribers did not stop in time".to_owned(),
            );
            Vec::new()
        }
    };
    if !joined(relay, STEP * 3).await {
        load.fail(
            "bench",
            "the relay sessions did not stop in time".to_owned(),
        );
    }
    if !joined(others, WHOLE * 2).await {
        load.fail(
            "bench",
            "churn, tunnels or reloads did not stop in time".to_owned(),
        );
    }

    let clients_done = load.t0.elapsed().as_secs_f64() - load_end;

    // The gateway lets go of every session, and of the upstream side of
    // every relayed one; its tasks go back to what the idle gateway had.
    let idle_tasks = samples.first().filter(|s| !s.loaded).map(|s| s.tasks);
    let until = Instant::now() + DRAIN;
    let mut quiet_after = None;
    // The last look: sessions (by route), tasks, upstream connections.
    let mut last: Option<(f64, String, f64, i64)> = None;
    loop {
        let backend_open = backend.open.load(Ordering::Relaxed);
        match scrape(gw.admin).await {
            Ok(s) => {
                let sessions = sum(&s, "wsgate_connections_active");
                let tasks = metric(&s, "wsgate_tasks").unwrap_or(0.0);
                if sessions == 0.0
                    && backend_open == 0
                    && idle_tasks.is_none_or(|idle| tasks <= idle)
                {
                    quiet_after = Some(load.t0.elapsed().as_secs_f64() - load_end);
                    break;
                }
                let routes = series(&s, "wsgate_connections_active").join(", ");
                last = Some((sessions, routes, tasks, backend_open));
            }
            Err(e) => load.fail("scrape", format!("after the load: {e:#}")),
        }
        if Instant::now() >= until {
            break;
        }
        sleep(Duration::from_millis(250)).await;
    }
    if let (None, Some((sessions, routes, tasks, backend_open))) = (quiet_after, last) {
        let what = format!(
            "{} s after the load stopped: {sessions} sessions open at the gateway ({routes}), \
             {tasks} tasks (idle before the load: {}), {backend_open} connections open at the \
             echo server behind /relay",
            DRAIN.as_secs(),
            idle_tasks.map_or("?".to_owned(), |t| t.to_string())
        );
        // Sessions or upstream connections left are failures; tasks above
        // the idle count alone are reported with the flatness figures.
        if sessions > 0.0 || backend_open > 0 {
            load.fail("drain", what);
        } else {
            eprintln!("soak: {what}");
        }
    }
    // Let the allocator settle a moment, then the idle gateway again.
    sleep(Duration::from_secs(2)).await;
    match take_sample(&gw, &load, "after".to_owned(), None).await {
        Ok(s) => {
            print_line(&s);
            samples.push(s);
        }
        Err(e) => load.fail("scrape", format!("after the load: {e:#}")),
    }
    // After the sample: its connection must not be one the sample counts.
    let final_scrape = scrape(gw.admin).await.ok();

    report(
        p,
        &samples,
        &load,
        &tallies,
        &backend,
        final_scrape.as_deref(),
        (clients_done, quiet_after),
        &load_avg,
    )
}

/// Wait for `tasks` to end, at most `within`; whether they did.
async fn joined(tasks: Vec<JoinHandle<()>>, within: Duration) -> bool {
    timeout(within, futures_util::future::join_all(tasks))
        .await
        .is_ok()
}

/// `/proc/loadavg`'s first three fields.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "?".to_owned())
}

// ---------------------------------------------------------------- report

#[allow(clippy::too_many_arguments)]
fn report(
    p: &Params,
    samples: &[Sample],
    load: &Load,
    tallies: &[Tally],
    backend: &Backend,
    final_scrape: Option<&str>,
    (clients_done, quiet_after): (f64, Option<f64>),
    load_avg: &str,
) -> bool {
    println!(
        "\nsoak: {} of mixed load on one wsgate{}; a sample every {} s\n",
        duration(p.secs),
        if p.quick {
            " (QUICK MODE: too short to judge flatness, it checks that everything runs)"
        } else {
            ""
        },
        p.sample_secs
    );
    println!(
        "| sample | RSS KiB | fds | tasks | hub queued msgs | hub queued bytes | sessions open | \
         relay round trips | hub published | hub received | churn sessions | tunnels | reloads | \
         failures |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for s in samples {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            s.label,
            thousands(s.rss_kib),
            s.fds,
            s.tasks,
            s.queued_messages,
            thousands(s.queued_bytes as u64),
            s.sessions,
            thousands(s.relay),
            thousands(s.published),
            thousands(s.received),
            thousands(s.churn),
            thousands(s.tunnels),
            s.reloads,
            s.failures
        );
    }

    // The load, in figures.
    let secs = samples
        .iter()
        .filter(|s| s.loaded)
        .map(|s| s.t)
        .fold(0.0, f64::max)
        .max(1.0);
    let published_p = load.hub_published.load(Ordering::Relaxed);
    let published_a = load.api_published.load(Ordering::Relaxed);
    let received: u64 = tallies.iter().map(|t| t.received).sum();
    let lost: u64 = tallies.iter().map(|t| t.lost).sum();
    let reordered: u64 = tallies.iter().map(|t| t.reordered).sum();
    let closed = tallies.iter().filter(|t| t.closed).count();
    println!("\nthe load:");
    println!(
        "- relay echo: {} round trips on {RELAY_SESSIONS} sessions ({:.0}/s)",
        thousands(load.relay_round_trips.load(Ordering::Relaxed)),
        load.relay_round_trips.load(Ordering::Relaxed) as f64 / secs
    );
    println!(
        "- hub: {} published by the member ({:.1}/s) and {} through the API, to {} \
         subscribers: {} received of {} expected; lost {lost}, reordered {reordered}, \
         subscribers closed {closed}",
        thousands(published_p),
        published_p as f64 / secs,
        published_a,
        tallies.len(),
        thousands(received),
        thousands((published_p + published_a) * tallies.len() as u64),
    );
    println!(
        "- churn: {} sessions ({:.1}/s): {}",
        thousands(load.churned()),
        load.churned() as f64 / secs,
        ENDS.iter()
            .map(|e| format!(
                "{} {}",
                thousands(load.churn[*e as usize].load(Ordering::Relaxed)),
                e.label()
            ))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "- CONNECT tunnels: {}; reloads counted ok: {}; echo server behind /relay: {} \
         connections accepted, {} open at the end",
        thousands(load.tunnels.load(Ordering::Relaxed)),
        load.reloads.load(Ordering::Relaxed),
        thousands(backend.accepted.load(Ordering::Relaxed)),
        backend.open.load(Ordering::Relaxed)
    );
    match quiet_after {
        Some(s) => println!(
            "- after the load: every client done {clients_done:.2} s after the load stopped; \
             0 sessions at the gateway and its upstream, and tasks back to the idle count, \
             {s:.2} s after it"
        ),
        None => println!(
            "- after the load: every client done {clients_done:.2} s after the load stopped; \
             the gateway not quiet within {} s more (see the failures, or the tasks below)",
            DRAIN.as_secs()
        ),
    }
    if let Some(s) = final_scrape {
        println!("\nthe gateway's counters at the end (non-zero series):");
        for name in [
            "wsgate_sessions_ended_total",
            "wsgate_tunnels_total",
            "wsgate_config_reloads_total",
            "wsgate_handshake_failures_total",
            "wsgate_tls_handshake_failures_total",
            "wsgate_connections_rejected_total",
            "wsgate_upstream_errors_total",
            "wsgate_hub_dropped_total",
        ] {
            for line in series(s, name) {
                println!("  {name}{line}");
            }
        }
    }

    flatness(p, samples);

    println!(
        "\nmachine: nproc {}, load average {load_avg} at the start and {} at the end (this \
         run's own load included; the clients ran in this process, on the same cores)",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        loadavg()
    );
    let failures = load.failures.lock().unwrap();
    if failures.is_empty() {
        println!(
            "failures: none (every round trip, session, tunnel and close worked, every hub \
             message arrived in order, every reload was counted, and the gateway let go of \
             every session)"
        );
        true
    } else {
        let total: u64 = failures.values().map(|f| f.count).sum();
        println!("FAILED: {total} failure(s):");
        for (kind, f) in failures.iter() {
            println!("  - {kind}: {} (first {}):", f.count, f.first.len());
            for e in &f.first {
                println!("      {e}");
            }
        }
        false
    }
}

fn duration(secs: u64) -> String {
    match secs {
        s if s.is_multiple_of(60) => format!("{} min", s / 60),
        s => format!("{s} s"),
    }
}

/// The mean of the values.
fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

/// Least-squares slope of `ys` over `xs` (per unit of x).
fn slope(xs: &[f64], ys: &[f64]) -> f64 {
    let (mx, my) = (mean(xs), mean(ys));
    let num: f64 = xs.iter().zip(ys).map(|(x, y)| (x - mx) * (y - my)).sum();
    let den: f64 = xs.iter().map(|x| (x - mx) * (x - mx)).sum();
    if den == 0.0 { 0.0 } else { num / den }
}

/// The window after warm-up, in thirds; RSS, descriptors and tasks judged;
/// the idle gateway before and after the load compared.
fn flatness(p: &Params, samples: &[Sample]) {
    let warmup = p.secs as f64 * 0.2;
    let window: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.loaded && s.t > warmup)
        .collect();
    println!(
        "\nflatness after warm-up (the first {:.0} s, 20 % of the run, skipped):",
        warmup
    );
    if window.len() < 3 {
        println!(
            "  {} samples after warm-up: too few to judge (3 or more needed: run longer, or \
             sample more often)",
            window.len()
        );
    } else {
        let n = window.len();
        let (a, b) = (n / 3, 2 * n / 3);
        println!(
            "  {n} samples, {:.0} s to {:.0} s; middle third: samples {}-{}, last third: \
             samples {}-{} of the window",
            window[0].t,
            window[n - 1].t,
            a + 1,
            b,
            b + 1,
            n
        );
        let xs: Vec<f64> = window.iter().map(|s| s.t / 60.0).collect();
        let judge = |name: &str, unit: &str, ys: Vec<f64>, tolerance: &dyn Fn(f64) -> f64| {
            let (mid, last) = (mean(&ys[a..b]), mean(&ys[b..]));
            let min = ys.iter().copied().fold(f64::INFINITY, f64::min);
            let max = ys.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let allowed = tolerance(mid);
            let verdict = if last - mid <= allowed {
                "flat"
            } else {
                "GROWING"
            };
            println!(
                "  {name}: {verdict}: last third {last:.1}{unit} against middle third \
                 {mid:.1}{unit} (ratio {:.4}, {:+.1}{unit}; flat: at most {allowed:.1}{unit} \
                 more); slope {:+.2}{unit}/min; min {min:.0}, max {max:.0} (max - min {:.0})",
                if mid > 0.0 { last / mid } else { f64::NAN },
                last - mid,
                slope(&xs, &ys),
                max - min
            );
        };
        judge(
            "RSS",
            " KiB",
            window.iter().map(|s| s.rss_kib as f64).collect(),
            &|mid| (mid * 0.02).max(1024.0),
        );
        judge(
            "open descriptors",
            "",
            window.iter().map(|s| s.fds as f64).collect(),
            &|mid| (mid * 0.05).max(5.0),
        );
        judge(
            "tasks",
            "",
            window.iter().map(|s| s.tasks).collect(),
            &|mid| (mid * 0.05).max(5.0),
        );
        let most = |f: &dyn Fn(&Sample) -> f64| {
            window
                .iter()
                .map(|s| f(s))
                .fold(f64::NEG_INFINITY, f64::max)
        };
        let least =
            |f: &dyn Fn(&Sample) -> f64| window.iter().map(|s| f(s)).fold(f64::INFINITY, f64::min);
        println!(
            "  hub queues: at most {} messages / {} bytes waiting at a sample; sessions open: \
             {} to {}",
            most(&|s| s.queued_messages),
            thousands(most(&|s| s.queued_bytes) as u64),
            least(&|s| s.sessions),
            most(&|s| s.sessions)
        );
    }
    let before = samples.iter().find(|s| s.label == "before");
    let after = samples.iter().find(|s| s.label == "after");
    if let (Some(b), Some(a)) = (before, after) {
        println!(
            "  the idle gateway, before the load and after it: RSS {} -> {} KiB ({:+}), \
             descriptors {} -> {} ({:+}), tasks {} -> {} ({:+}), sessions {} -> {}",
            thousands(b.rss_kib),
            thousands(a.rss_kib),
            a.rss_kib as i64 - b.rss_kib as i64,
            b.fds,
            a.fds,
            a.fds as i64 - b.fds as i64,
            b.tasks,
            a.tasks,
            a.tasks - b.tasks,
            b.sessions,
            a.sessions
        );
        if a.fds > b.fds || a.tasks > b.tasks {
            println!(
                "  LEFT BEHIND: the idle gateway after the load holds {} more descriptors and \
                 {} more tasks than before it",
                a.fds as i64 - b.fds as i64,
                a.tasks - b.tasks
            );
        }
        if let (Some(kb), Some(ka)) = (&b.kinds, &a.kinds)
            && kb != ka
        {
            let mut names: Vec<&String> = kb.keys().chain(ka.keys()).collect();
            names.sort();
            names.dedup();
            let changed: Vec<String> = names
                .into_iter()
                .filter_map(|k| {
                    let (x, y) = (kb.get(k).unwrap_or(&0), ka.get(k).unwrap_or(&0));
                    (x != y).then(|| format!("{k} {x} -> {y}"))
                })
                .collect();
            println!(
                "  descriptors by kind, before -> after (those that differ): {}",
                changed.join(", ")
            );
        }
    }
}
