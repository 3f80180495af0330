//! WebSockets over HTTP/1.1 against WebSockets over HTTP/2 (RFC 8441) on
//! wsgate, in the same run: what an idle session costs the gateway in
//! memory, and how many new sessions a second it opens, at what CPU.
//!
//! Every measure starts a fresh wsgate child (the release build, as `cargo
//! bench` makes it) with one echo route and the same configuration whatever
//! the measure and the protocol: `[listen] http2 = true` (the HTTP/1.1
//! clients offer ALPN `http/1.1` only, so the protocol the client picks is
//! the one difference), `http2_max_streams` raised where a measure needs
//! more streams per connection than its default, `[limits] max_connections`
//! room for every session and connection of any measure, and
//! `handshake_rate` raised out of the way (the admission limiter would
//! otherwise be what is measured). The clients run in this
//! process, on 127.0.0.1, on the same cores as the gateway; every TCP socket
//! has TCP_NODELAY.
//!
//! - Memory per idle WebSocket: warm-up (100 sessions opened, one message
//!   each, closed, and gone from the gateway's `wsgate_sessions_open`), then
//!   the gateway's RSS once it settles ("before"); then N sessions, each
//!   exchanging one small message and then idle (a task per session reads,
//!   so the gateway's pings are answered), the RSS once it settles again
//!   ("after"); per session: (after - before) / sessions open. HTTP/1.1: one
//!   TLS connection per session. HTTP/2: C connections opened after
//!   "before" (so their cost is in the figure, as each HTTP/1.1 session's
//!   connection is), N streams spread evenly over them. The gateway's own
//!   gauges must show every session open (and, over HTTP/2, C connections).
//! - New sessions per second: W workers, each in a loop opening a session
//!   and dropping it once it is accepted. HTTP/1.1: a new TCP connection, a
//!   full TLS handshake (resumption off in the client) and the upgrade, up
//!   to the 101; dropped: the TCP connection closes, no close handshake.
//!   HTTP/2: the W workers spread over H HTTP/2 connections opened
//!   beforehand, each loop a new extended CONNECT stream, up to the 200;
//!   dropped: the client's h2 resets the stream (RST_STREAM CANCEL). After a
//!   warm-up, S seconds are measured: sessions accepted in the window, and
//!   the gateway's CPU (utime + stime from /proc/PID/stat, in CLK_TCK ticks
//!   from `getconf CLK_TCK`) over the window per session. Then every dropped
//!   session must be gone from the gateway's gauges, and its count of
//!   accepted handshakes must match the clients'.
//!
//! R repeats, HTTP/1.1 and HTTP/2 alternating within each; the table shows
//! medians with the (min-max) spread over the repeats. Every failure (a
//! session that did not open, closed while it should have been idle, or
//! stayed open at the gateway after the client dropped it, or a gateway
//! count that disagrees with the clients') is printed, and fails the run.
//!
//! Run: `cargo bench --bench http2` (`-- --quick` for a smoke run: N=500,
//! C=4, S=1, R=1). Flags after `--`: `--sessions N` (10000), `--conns C`
//! (10), `--workers W` (32), `--rate-conns H` (4), `--secs S` (4),
//! `--warmup SECS` (1), `--repeats R` (3). The descriptor soft limit is
//! raised to the hard limit at start; N and W must fit in it.

mod support;

use std::future::Future;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Method, Request, StatusCode};
use http_body_util::Empty;
use hyper::client::conn::http2::{Builder, SendRequest};
use hyper::ext::Protocol;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::ServerName;
use support::{Server, Setup};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, timeout};
use tokio_rustls::TlsConnector;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_util::sync::CancellationToken;

const PATH: &str = "/echo";
/// Sessions opened and closed before "before" in the memory measures.
const WARM_SESSIONS: usize = 100;
/// Sessions opened at once while the memory measures open theirs.
const OPEN_BATCH: usize = 100;
/// Descriptors beyond the sessions: standard streams, the runtime, the
/// warm-up, the admin scrapes.
const DESCRIPTOR_MARGIN: u64 = 256;
/// `http2_max_streams`' default (`src/config/listen.rs`).
const DEFAULT_MAX_STREAMS: usize = 128;
/// Bound on opening one session (connect, TLS, upgrade, one echo).
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on a close handshake, a connection's SETTINGS, one admin scrape.
const SHORT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the gateway may take to let go of sessions the clients dropped.
const DRAIN: Duration = Duration::from_secs(15);
/// The RSS settles: at least this long, then until two reads 250 ms apart
/// differ by at most 0.5 %, for at most `SETTLE_MAX`.
const SETTLE_MIN: Duration = Duration::from_secs(1);
const SETTLE_MAX: Duration = Duration::from_secs(15);
/// The clients' WebSocket read buffer (tokio-tungstenite's default, 128
/// KiB, is this process's memory only, but 10,000 of them add up).
const CLIENT_READ_BUFFER: usize = 4096;

struct Params {
    quick: bool,
    /// N: idle sessions per memory measure.
    sessions: usize,
    /// C: HTTP/2 connections carrying them.
    conns: usize,
    /// W: concurrent workers in the rate measures.
    workers: usize,
    /// H: HTTP/2 connections the workers share in the rate measure.
    rate_conns: usize,
    /// S: measured seconds per rate measure, after `warmup` seconds.
    secs: f64,
    warmup: f64,
    /// R.
    repeats: usize,
    clk_tck: f64,
}

impl Params {
    fn parse() -> anyhow::Result<Params> {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let quick = args.iter().any(|a| a == "--quick");
        let mut p = Params {
            quick,
            sessions: if quick { 500 } else { 10_000 },
            conns: if quick { 4 } else { 10 },
            workers: 32,
            rate_conns: 4,
            secs: if quick { 1.0 } else { 4.0 },
            warmup: if quick { 0.5 } else { 1.0 },
            repeats: if quick { 1 } else { 3 },
            clk_tck: clk_tck(),
        };
        let mut i = 0;
        while i < args.len() {
            let flag = args[i].as_str();
            match flag {
                // `cargo bench` appends `--bench`.
                "--quick" | "--bench" => {}
                "--sessions" | "--conns" | "--workers" | "--rate-conns" | "--repeats"
                | "--secs" | "--warmup" => {
                    let value = args
                        .get(i + 1)
                        .with_context(|| format!("{flag} needs a value"))?;
                    let whole = || -> anyhow::Result<usize> {
                        value
                            .parse::<usize>()
                            .ok()
                            .filter(|&n| n > 0)
                            .with_context(|| format!("{flag} {value}: a whole number above 0"))
                    };
                    let secs = || -> anyhow::Result<f64> {
                        value
                            .parse::<f64>()
                            .ok()
                            .filter(|s| *s > 0.0 && *s <= 600.0)
                            .with_context(|| {
                                format!("{flag} {value}: seconds, above 0, at most 600")
                            })
                    };
                    match flag {
                        "--sessions" => p.sessions = whole()?,
                        "--conns" => p.conns = whole()?,
                        "--workers" => p.workers = whole()?,
                        "--rate-conns" => p.rate_conns = whole()?,
                        "--repeats" => p.repeats = whole()?,
                        "--secs" => p.secs = secs()?,
                        _ => p.warmup = secs()?,
                    }
                    i += 1;
                }
                other => bail!(
                    "unexpected argument {other:?}; flags: --quick, --sessions N, --conns C, \
                     --workers W, --rate-conns H, --secs S, --warmup SECS, --repeats R"
                ),
            }
            i += 1;
        }
        if p.conns > p.sessions {
            bail!("--conns {} is more than --sessions {}", p.conns, p.sessions);
        }
        if p.repeats > 100 || p.sessions > 1_000_000 || p.workers > 10_000 {
            bail!("--repeats is at most 100, --sessions 1000000, --workers 10000");
        }
        Ok(p)
    }
}

/// `getconf CLK_TCK`, or 100.
fn clk_tck() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|&t| t > 0.0)
        .unwrap_or(100.0)
}

/// Raise the descriptor soft limit to the hard one (the gateway child
/// inherits it); the limit, or why N and W cannot fit.
fn descriptors(p: &Params) -> anyhow::Result<u64> {
    let limit = rlimit::increase_nofile_limit(u64::MAX).context("raising RLIMIT_NOFILE")?;
    let need = p.sessions.max(p.workers) as u64 + DESCRIPTOR_MARGIN;
    if need > limit {
        let (_, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap_or((limit, limit));
        bail!(
            "{} sessions (or {} workers) need about {need} open files in this process and in \
             the gateway, but the limit is {limit} (hard limit {hard}): raise the hard limit \
             (`ulimit -Hn`, LimitNOFILE) or lower --sessions",
            p.sessions,
            p.workers
        );
    }
    Ok(limit)
}

fn main() {
    let p = match Params::parse() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("http2 bench: {e:#}");
            std::process::exit(2);
        }
    };
    let nofile = match descriptors(&p) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("http2 bench: {e:#}");
            std::process::exit(1);
        }
    };
    let ok = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(compare(&p, nofile));
    if !ok {
        std::process::exit(1);
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Proto {
    H1,
    H2,
}

impl Proto {
    fn label(self) -> &'static str {
        match self {
            Proto::H1 => "HTTP/1.1",
            Proto::H2 => "HTTP/2",
        }
    }

    /// The `protocol` label of the gateway's metrics.
    fn metric(self) -> &'static str {
        match self {
            Proto::H1 => "http1",
            Proto::H2 => "http2",
        }
    }
}

/// One memory measure.
struct Memory {
    kib_per: f64,
    opened: usize,
    problems: Vec<String>,
}

/// One rate measure.
struct Rate {
    per_sec: f64,
    cpu_us: f64,
    /// The gateway's CPU over the window, in cores.
    cores: f64,
    problems: Vec<String>,
}

/// The measures of one protocol over the repeats.
#[derive(Default)]
struct Series {
    kib: Vec<f64>,
    rate: Vec<f64>,
    cpu: Vec<f64>,
    cores: Vec<f64>,
}

async fn compare(p: &Params, nofile: u64) -> bool {
    let setup = Setup::new();
    let clients = Clients::new(&setup);
    let load = loadavg();
    let (mut h1, mut h2) = (Series::default(), Series::default());
    let mut problems = Vec::new();
    for r in 0..p.repeats {
        eprintln!("repeat {} of {}", r + 1, p.repeats);
        for proto in [Proto::H1, Proto::H2] {
            let into = if proto == Proto::H1 { &mut h1 } else { &mut h2 };
            let m = memory(&setup, &clients, p, proto).await;
            eprintln!(
                "  {} memory: {:.2} KiB per idle session ({} open)",
                proto.label(),
                m.kib_per,
                m.opened
            );
            into.kib.push(m.kib_per);
            problems.extend(
                m.problems
                    .into_iter()
                    .map(|e| format!("repeat {}, {} memory: {e}", r + 1, proto.label())),
            );
        }
        for proto in [Proto::H1, Proto::H2] {
            let into = if proto == Proto::H1 { &mut h1 } else { &mut h2 };
            let m = rate(&setup, &clients, p, proto).await;
            eprintln!(
                "  {} new sessions: {:.0}/s, {:.0} us gateway CPU each",
                proto.label(),
                m.per_sec,
                m.cpu_us
            );
            into.rate.push(m.per_sec);
            into.cpu.push(m.cpu_us);
            into.cores.push(m.cores);
            problems.extend(
                m.problems
                    .into_iter()
                    .map(|e| format!("repeat {}, {} new sessions: {e}", r + 1, proto.label())),
            );
        }
    }

    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "\nWebSockets over HTTP/1.1 and over HTTP/2 (RFC 8441) on one wsgate, echo route; \
         medians of {} repeat{} (min-max){}\n",
        p.repeats,
        if p.repeats == 1 { "" } else { "s" },
        if p.quick {
            "; QUICK MODE: too short and too small to mean much, it checks that everything runs"
        } else {
            ""
        }
    );
    println!("| measure | HTTP/1.1 | HTTP/2 | HTTP/2 / HTTP/1.1 |");
    println!("|---|---:|---:|---:|");
    let rows = [
        (
            format!(
                "RSS KiB per idle WebSocket ({} sessions; HTTP/2 over {} connections)",
                p.sessions, p.conns
            ),
            &h1.kib,
            &h2.kib,
            1,
        ),
        (
            format!(
                "new sessions per second ({} concurrent; HTTP/2 over {} connections)",
                p.workers, p.rate_conns
            ),
            &h1.rate,
            &h2.rate,
            0,
        ),
        (
            "gateway CPU µs per new session".to_owned(),
            &h1.cpu,
            &h2.cpu,
            1,
        ),
    ];
    for (label, a, b, digits) in rows {
        println!(
            "| {label} | {} | {} | {} |",
            spread(a, digits),
            spread(b, digits),
            ratio(median(a), median(b))
        );
    }
    println!(
        "\ngateway CPU during the new-session windows: HTTP/1.1 {} %, HTTP/2 {} % of one core \
         (medians; the clients, in this process, ran on the same {nproc} cores)",
        spread(&h1.cores.iter().map(|c| c * 100.0).collect::<Vec<_>>(), 0),
        spread(&h2.cores.iter().map(|c| c * 100.0).collect::<Vec<_>>(), 0),
    );
    println!(
        "parameters: N = {} idle sessions per memory measure (HTTP/2: C = {} connections); \
         W = {} workers (HTTP/2: over H = {} connections); {} s measured after {} s of \
         warm-up; R = {} repeats; {} warm-up sessions before each memory \"before\"; a \
         fresh gateway per measure, every one with http2 = true, http2_max_streams = {}, \
         max_connections = {}, handshake_rate = 1e9.",
        p.sessions,
        p.conns,
        p.workers,
        p.rate_conns,
        p.secs,
        p.warmup,
        p.repeats,
        WARM_SESSIONS,
        max_streams(p),
        room(p) + 100
    );
    println!(
        "machine: nproc {nproc}, CLK_TCK {}, open-file limit {nofile}, load average {} at \
         the start and {} at the end (this run's own load included).",
        p.clk_tck,
        load,
        loadavg()
    );
    println!(
        "TLS: full handshakes (client resumption off), {}, the dev certificate (ECDSA P-256).",
        clients
            .negotiated
            .get()
            .map_or("no handshake", String::as_str)
    );
    if problems.is_empty() {
        println!(
            "failures: none (every session opened, stayed open while idle, and closed at the gateway once dropped)"
        );
        true
    } else {
        println!("FAILED: {} problem(s):", problems.len());
        for e in &problems {
            println!("  - {e}");
        }
        false
    }
}

/// The median of the samples (the mean of the middle two for an even count).
fn median(samples: &[f64]) -> f64 {
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

/// "median (min-max)", or the one sample.
fn spread(samples: &[f64], digits: usize) -> String {
    let min = samples.iter().copied().fold(f64::INFINITY, f64::min);
    let max = samples.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let m = median(samples);
    if samples.len() < 2 {
        format!("{m:.digits$}")
    } else {
        format!("{m:.digits$} ({min:.digits$}–{max:.digits$})")
    }
}

fn ratio(a: f64, b: f64) -> String {
    if a > 0.0 && a.is_finite() && b.is_finite() {
        format!("{:.2}×", b / a)
    } else {
        "-".to_owned()
    }
}

/// `/proc/loadavg`'s first three fields.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "?".to_owned())
}

/// `http2_max_streams`: the most streams one connection carries in any
/// measure (N / C, W / H), at least its default.
fn max_streams(p: &Params) -> usize {
    p.sessions
        .div_ceil(p.conns)
        .max(p.workers.div_ceil(p.rate_conns))
        .max(DEFAULT_MAX_STREAMS)
}

/// `max_connections` (less the 100 `Setup` adds): room for every session and
/// connection of any measure at once, whether or not the gateway admits an
/// HTTP/2 stream as a connection of its own.
fn room(p: &Params) -> usize {
    p.sessions + p.conns + p.workers + p.rate_conns + WARM_SESSIONS
}

/// A fresh gateway, configured alike for every measure: the echo route,
/// HTTP/2 on, `max_streams`, `room`, and the handshake rate out of the way.
fn gateway(setup: &Setup, p: &Params, name: &str) -> Server {
    let gw = setup.gateway_with(
        name,
        &format!("http2 = true\nhttp2_max_streams = {}\n", max_streams(p)),
        room(p),
        "handshake_rate = 1000000000\n",
        &format!("[[routes]]\npath = \"{PATH}\"\nkind = \"echo\"\n"),
    );
    assert!(gw.admin.is_some(), "the gateway named its admin address");
    gw
}

// ---------------------------------------------------------------- clients

/// The TLS clients: full handshakes only, ALPN `http/1.1` or `h2`.
#[derive(Clone)]
struct Clients {
    h1: TlsConnector,
    h2: TlsConnector,
    ws: WebSocketConfig,
    /// What the first handshake negotiated, for the printout.
    negotiated: Arc<std::sync::OnceLock<String>>,
}

impl Clients {
    fn new(setup: &Setup) -> Clients {
        let connector = |alpn: &[u8]| {
            let mut config = (*support::client_config(&setup.written.ca)).clone();
            config.resumption = rustls::client::Resumption::disabled();
            config.alpn_protocols = vec![alpn.to_vec()];
            TlsConnector::from(Arc::new(config))
        };
        Clients {
            h1: connector(b"http/1.1"),
            h2: connector(b"h2"),
            ws: WebSocketConfig::default().read_buffer_size(CLIENT_READ_BUFFER),
            negotiated: Arc::default(),
        }
    }

    async fn tls(
        &self,
        connector: &TlsConnector,
        addr: std::net::SocketAddr,
    ) -> anyhow::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(addr).await.context("connect")?;
        tcp.set_nodelay(true)?;
        let tls = connector
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .context("TLS handshake")?;
        self.negotiated.get_or_init(|| {
            let c = tls.get_ref().1;
            let show = |v: Option<String>| v.unwrap_or_else(|| "?".to_owned());
            format!(
                "{}, {}, {}",
                show(c.protocol_version().map(|v| format!("{v:?}"))),
                show(
                    c.negotiated_cipher_suite()
                        .map(|s| format!("{:?}", s.suite()))
                ),
                show(
                    c.negotiated_key_exchange_group()
                        .map(|g| format!("{:?}", g.name()))
                )
            )
        });
        Ok(tls)
    }

    /// A new HTTP/1.1 WebSocket: TCP, TLS, upgrade, up to the 101.
    async fn h1(
        &self,
        addr: std::net::SocketAddr,
    ) -> anyhow::Result<WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>> {
        let tls = self.tls(&self.h1, addr).await?;
        let alpn = tls.get_ref().1.alpn_protocol();
        if alpn.is_some_and(|a| a != b"http/1.1") {
            bail!("ALPN chose {:?}", String::from_utf8_lossy(alpn.unwrap()));
        }
        let url = format!("wss://localhost:{}{PATH}", addr.port());
        let (ws, _) = tokio_tungstenite::client_async_with_config(url, tls, Some(self.ws))
            .await
            .context("upgrade")?;
        Ok(ws)
    }

    /// A new HTTP/2 connection, once the gateway's SETTINGS allow extended
    /// CONNECT.
    async fn h2_conn(&self, addr: std::net::SocketAddr) -> anyhow::Result<H2Conn> {
        let tls = self.tls(&self.h2, addr).await?;
        if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
            bail!("ALPN did not choose h2");
        }
        let (sender, mut conn) = Builder::new(TokioExecutor::new())
            .handshake::<_, Empty<Bytes>>(TokioIo::new(tls))
            .await
            .context("HTTP/2 handshake")?;
        // As in tests/common/h2.rs: hyper reads SETTINGS on a task of its
        // own, which does not wake this one, so until they allow extended
        // CONNECT this task looks again each turn.
        let (enabled, mut extended) = watch::channel(false);
        let task = tokio::spawn(std::future::poll_fn(move |cx| {
            use std::future::Future;
            let polled = std::pin::Pin::new(&mut conn).poll(cx);
            if conn.is_extended_connect_protocol_enabled() {
                enabled.send_replace(true);
            } else if polled.is_pending() {
                cx.waker().wake_by_ref();
            }
            polled
        }));
        let conn = H2Conn {
            sender,
            uri: format!("https://localhost:{}{PATH}", addr.port()),
            task,
        };
        timeout(SHORT_TIMEOUT, extended.wait_for(|&on| on))
            .await
            .context("no SETTINGS within 5 s")?
            .context("the connection ended before its SETTINGS allowed extended CONNECT")?;
        Ok(conn)
    }

    /// A new WebSocket on a new stream of `sender`'s connection, up to the 200.
    async fn h2(
        &self,
        sender: &mut SendRequest<Empty<Bytes>>,
        uri: &str,
    ) -> anyhow::Result<WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>> {
        sender.ready().await.context("connection not ready")?;
        let request = Request::builder()
            .method(Method::CONNECT)
            .uri(uri)
            .extension(Protocol::from_static("websocket"))
            .header("sec-websocket-version", "13")
            .body(Empty::new())?;
        let response = sender
            .send_request(request)
            .await
            .context("extended CONNECT")?;
        if response.status() != StatusCode::OK {
            bail!("extended CONNECT answered {}", response.status());
        }
        let upgraded = hyper::upgrade::on(response)
            .await
            .context("stream upgrade")?;
        Ok(
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Client, Some(self.ws))
                .await,
        )
    }
}

/// One client HTTP/2 connection: its sender and the task driving it
/// (stopped when this is dropped).
struct H2Conn {
    sender: SendRequest<Empty<Bytes>>,
    uri: String,
    task: JoinHandle<hyper::Result<()>>,
}

impl Drop for H2Conn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One small message there and back.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
) -> anyhow::Result<()> {
    ws.send(Message::text("hello")).await?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) if t.as_str() == "hello" => return Ok(()),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            other => bail!("no echo: {other:?}"),
        }
    }
}

/// A close handshake, bounded.
async fn close<S: AsyncRead + AsyncWrite + Unpin>(mut ws: WebSocketStream<S>) {
    let _ = timeout(SHORT_TIMEOUT, async {
        let _ = ws.close(None).await;
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}

/// What the holders of idle sessions share: when to stop, and how.
#[derive(Default)]
struct Hold {
    stop: CancellationToken,
    /// At the stop, close with a close handshake (else just drop).
    graceful: AtomicBool,
    /// Sessions that ended before the stop.
    ended: AtomicU64,
}

/// An idle session, read (so the gateway's pings get their pongs) until the
/// stop.
fn hold<S>(mut ws: WebSocketStream<S>, h: Arc<Hold>) -> JoinHandle<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        tokio::select! {
            _ = h.stop.cancelled() => {
                if h.graceful.load(Ordering::Relaxed) {
                    close(ws).await;
                }
            }
            _ = async { while let Some(Ok(_)) = ws.next().await {} } => {
                h.ended.fetch_add(1, Ordering::Relaxed);
            }
        }
    })
}

// ---------------------------------------------------------------- gateway

/// CPU seconds (utime + stime) of `pid`: fields 14 and 15 of
/// /proc/PID/stat, after the command name.
fn cpu_secs(pid: u32, clk_tck: f64) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("the gateway runs");
    let rest = &stat[stat.rfind(')').expect("a stat line") + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields[i].parse::<u64>().expect("a tick count");
    (ticks(11) + ticks(12)) as f64 / clk_tck
}

/// The gateway's RSS once it settles (see `SETTLE_MIN`), and whether it did.
async fn settled_rss(pid: u32) -> (u64, bool) {
    sleep(SETTLE_MIN).await;
    let until = Instant::now() + SETTLE_MAX;
    let mut last = support::rss_kib(pid);
    while Instant::now() < until {
        sleep(Duration::from_millis(250)).await;
        let now = support::rss_kib(pid);
        if now.abs_diff(last) * 200 <= last {
            return (now, true);
        }
        last = now;
    }
    (last, false)
}

/// One scrape of the admin listener's `/metrics`.
async fn scrape(gw: &Server) -> anyhow::Result<String> {
    let admin = gw.admin.context("no admin address")?;
    let read = async {
        let mut tcp = TcpStream::connect(admin).await?;
        tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await?;
        let mut body = String::new();
        tcp.read_to_string(&mut body).await?;
        anyhow::Ok(body)
    };
    timeout(SHORT_TIMEOUT, read)
        .await
        .map_err(|_| anyhow!("no /metrics within 5 s"))?
}

/// A sample of a scrape (0 where the series is absent: not yet recorded).
fn sample(scrape: &str, series: &str) -> f64 {
    scrape
        .lines()
        .find_map(|line| {
            line.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

fn sessions_open(scrape: &str, proto: Proto) -> f64 {
    sample(
        scrape,
        &format!("wsgate_sessions_open{{protocol=\"{}\"}}", proto.metric()),
    )
}

/// Wait (at most `DRAIN`) until the gateway has no session of `proto` and
/// no HTTP/2 connection open beyond `h2_conns`; what is left otherwise.
async fn wait_drained(gw: &Server, proto: Proto, h2_conns: usize) -> Option<String> {
    let until = Instant::now() + DRAIN;
    loop {
        let left = match scrape(gw).await {
            Ok(s) => {
                let sessions = sessions_open(&s, proto);
                let streams = sample(&s, "wsgate_http2_streams_open");
                let conns = sample(&s, "wsgate_http2_connections_open");
                if sessions == 0.0 && streams == 0.0 && conns <= h2_conns as f64 {
                    return None;
                }
                format!(
                    "{sessions} sessions, {streams} HTTP/2 streams and {conns} HTTP/2 \
                     connections (of {h2_conns} still open by the client) open at the gateway"
                )
            }
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() >= until {
            return Some(format!(
                "{} s after the clients let go: {left}",
                DRAIN.as_secs()
            ));
        }
        sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------- memory

/// Idle sessions the clients hold, whatever their protocol.
struct Held {
    tasks: Vec<JoinHandle<()>>,
    hold: Arc<Hold>,
    /// The HTTP/2 connections carrying them (empty over HTTP/1.1).
    conns: Vec<H2Conn>,
}

async fn memory(setup: &Setup, clients: &Clients, p: &Params, proto: Proto) -> Memory {
    let name = match proto {
        Proto::H1 => "memory-h1.toml",
        Proto::H2 => "memory-h2.toml",
    };
    let gw = gateway(setup, p, name);
    let pid = gw.child.id();
    let mut problems = Vec::new();

    // Warm-up: sessions opened, used, closed, gone.
    let warm = open_idle(clients, &gw, proto, WARM_SESSIONS, 1).await;
    problems.extend(warm.1.iter().map(|e| format!("warm-up: {e}")));
    release(warm.0, true).await;
    if let Some(left) = wait_drained(&gw, proto, 0).await {
        problems.push(format!("warm-up: {left}"));
    }
    let (before, settled) = settled_rss(pid).await;
    if !settled {
        problems.push(format!(
            "RSS before did not settle in {} s",
            SETTLE_MAX.as_secs()
        ));
    }

    let (held, errors) = open_idle(clients, &gw, proto, p.sessions, p.conns).await;
    let opened = held.tasks.len();
    if !errors.is_empty() {
        problems.push(format!(
            "{} of {} sessions did not open; the first: {}",
            errors.len(),
            p.sessions,
            errors[0]
        ));
    }
    let (after, settled) = settled_rss(pid).await;
    if !settled {
        problems.push(format!(
            "RSS after did not settle in {} s",
            SETTLE_MAX.as_secs()
        ));
    }
    // The gateway must count every session as open, and nothing more.
    match scrape(&gw).await {
        Ok(s) => {
            let open = sessions_open(&s, proto);
            if open != opened as f64 {
                problems.push(format!(
                    "the gateway counts {open} {} sessions open; the client holds {opened}",
                    proto.metric()
                ));
            }
            let conns = sample(&s, "wsgate_http2_connections_open");
            if conns != held.conns.len() as f64 {
                problems.push(format!(
                    "the gateway counts {conns} HTTP/2 connections open; the client holds {}",
                    held.conns.len()
                ));
            }
        }
        Err(e) => problems.push(format!("scrape: {e:#}")),
    }
    let ended = held.hold.ended.load(Ordering::Relaxed);
    if ended > 0 {
        problems.push(format!("{ended} idle sessions ended during the measure"));
    }
    // The gateway goes first, so the clients' goodbyes cost it nothing.
    drop(gw);
    release(held, false).await;
    Memory {
        kib_per: if opened == 0 {
            f64::NAN
        } else {
            support::kib_per(before, after, opened)
        },
        opened,
        problems,
    }
}

/// Open `n` sessions (HTTP/2: spread over `conns` connections), one message
/// each, `OPEN_BATCH` at a time, and hold them; and what failed.
async fn open_idle(
    clients: &Clients,
    gw: &Server,
    proto: Proto,
    n: usize,
    conns: usize,
) -> (Held, Vec<String>) {
    let mut held = Held {
        tasks: Vec::with_capacity(n),
        hold: Arc::default(),
        conns: Vec::new(),
    };
    let mut errors = Vec::new();
    if proto == Proto::H2 {
        for _ in 0..conns {
            match timeout(OPEN_TIMEOUT, clients.h2_conn(gw.addr)).await {
                Ok(Ok(c)) => held.conns.push(c),
                Ok(Err(e)) => errors.push(format!("HTTP/2 connection: {e:#}")),
                Err(_) => errors.push("HTTP/2 connection: timed out".to_owned()),
            }
        }
        if held.conns.is_empty() {
            errors.push(format!("no HTTP/2 connection, so none of {n} sessions"));
            return (held, errors);
        }
    }
    let mut start = 0;
    while start < n {
        let end = (start + OPEN_BATCH).min(n);
        match proto {
            Proto::H1 => {
                let opened = open_batch((start..end).map(|_| clients.h1(gw.addr))).await;
                keep(&mut held, &mut errors, opened);
            }
            Proto::H2 => {
                let opens = (start..end).map(|k| {
                    let c = &held.conns[k % held.conns.len()];
                    let (mut sender, uri) = (c.sender.clone(), c.uri.as_str());
                    async move { clients.h2(&mut sender, uri).await }
                });
                let opened = open_batch(opens).await;
                keep(&mut held, &mut errors, opened);
            }
        }
        start = end;
    }
    (held, errors)
}

/// Open sessions at once, each with one message exchanged, each within
/// `OPEN_TIMEOUT`.
async fn open_batch<S, F>(opens: impl Iterator<Item = F>) -> Vec<anyhow::Result<WebSocketStream<S>>>
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: Future<Output = anyhow::Result<WebSocketStream<S>>>,
{
    let opened = opens.map(|open| async {
        let open = async {
            let mut ws = open.await?;
            exchange(&mut ws).await?;
            anyhow::Ok(ws)
        };
        timeout(OPEN_TIMEOUT, open)
            .await
            .unwrap_or_else(|_| Err(anyhow!("timed out")))
    });
    futures_util::future::join_all(opened).await
}

/// Hold the sessions that opened; note why the others did not.
fn keep<S>(
    held: &mut Held,
    errors: &mut Vec<String>,
    opened: Vec<anyhow::Result<WebSocketStream<S>>>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    for r in opened {
        match r {
            Ok(ws) => held.tasks.push(hold(ws, held.hold.clone())),
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
}

/// Let the held sessions go: with close handshakes (`graceful`), or dropped.
async fn release(held: Held, graceful: bool) {
    held.hold.graceful.store(graceful, Ordering::Relaxed);
    held.hold.stop.cancel();
    let _ = timeout(
        Duration::from_secs(30),
        futures_util::future::join_all(held.tasks),
    )
    .await;
    drop(held.conns);
}

// ---------------------------------------------------------------- new sessions

/// What the workers count.
#[derive(Default)]
struct Counts {
    opened: AtomicU64,
    failed: AtomicU64,
    /// The first failure's error.
    first_error: std::sync::Mutex<Option<String>>,
}

impl Counts {
    fn count(&self, result: anyhow::Result<()>) -> bool {
        match result {
            Ok(()) => {
                self.opened.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(e) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                self.first_error
                    .lock()
                    .unwrap()
                    .get_or_insert_with(|| format!("{e:#}"));
                false
            }
        }
    }
}

async fn rate(setup: &Setup, clients: &Clients, p: &Params, proto: Proto) -> Rate {
    let name = match proto {
        Proto::H1 => "rate-h1.toml",
        Proto::H2 => "rate-h2.toml",
    };
    let gw = gateway(setup, p, name);
    let pid = gw.child.id();
    let mut problems = Vec::new();
    let counts = Arc::new(Counts::default());
    let stop = CancellationToken::new();

    let mut conns = Vec::new();
    if proto == Proto::H2 {
        for _ in 0..p.rate_conns {
            match timeout(OPEN_TIMEOUT, clients.h2_conn(gw.addr)).await {
                Ok(Ok(c)) => conns.push(c),
                Ok(Err(e)) => problems.push(format!("HTTP/2 connection: {e:#}")),
                Err(_) => problems.push("HTTP/2 connection: timed out".to_owned()),
            }
        }
        if conns.is_empty() {
            return Rate {
                per_sec: f64::NAN,
                cpu_us: f64::NAN,
                cores: f64::NAN,
                problems,
            };
        }
    }
    let clients = Arc::new(clients.clone());
    let workers: Vec<_> = (0..p.workers)
        .map(|i| {
            let (clients, counts, stop, addr) =
                (clients.clone(), counts.clone(), stop.clone(), gw.addr);
            let h2 = conns
                .get(i % conns.len().max(1))
                .map(|c| (c.sender.clone(), c.uri.clone()));
            tokio::spawn(async move {
                let mut h2 = h2;
                while !stop.is_cancelled() {
                    let open = async {
                        match &mut h2 {
                            None => drop(clients.h1(addr).await?),
                            Some((sender, uri)) => drop(clients.h2(sender, uri).await?),
                        }
                        anyhow::Ok(())
                    };
                    let result = tokio::select! {
                        _ = stop.cancelled() => break,
                        r = timeout(OPEN_TIMEOUT, open) => {
                            r.unwrap_or_else(|_| Err(anyhow!("timed out")))
                        }
                    };
                    if !counts.count(result) {
                        // Never spin on a failure.
                        sleep(Duration::from_millis(10)).await;
                    }
                }
            })
        })
        .collect();

    sleep(Duration::from_secs_f64(p.warmup)).await;
    let (n0, cpu0, t0) = (
        counts.opened.load(Ordering::Relaxed),
        cpu_secs(pid, p.clk_tck),
        Instant::now(),
    );
    sleep(Duration::from_secs_f64(p.secs)).await;
    let (n1, cpu1, elapsed) = (
        counts.opened.load(Ordering::Relaxed),
        cpu_secs(pid, p.clk_tck),
        t0.elapsed(),
    );
    stop.cancel();
    if timeout(
        Duration::from_secs(10),
        futures_util::future::join_all(workers),
    )
    .await
    .is_err()
    {
        problems.push("the workers did not stop within 10 s".to_owned());
    }

    let failed = counts.failed.load(Ordering::Relaxed);
    if failed > 0 {
        problems.push(format!(
            "{failed} sessions failed to open (warm-up and window; {} opened); the first: {}",
            counts.opened.load(Ordering::Relaxed),
            counts.first_error.lock().unwrap().as_deref().unwrap_or("?")
        ));
    }
    // Every dropped session must be gone from the gateway (its connections,
    // still open here, aside).
    if let Some(left) = wait_drained(&gw, proto, conns.len()).await {
        problems.push(left);
    }
    // The gateway accepted every session the clients saw accepted (and at
    // most one more per worker: one it accepted as the worker stopped).
    let opened = counts.opened.load(Ordering::Relaxed);
    match scrape(&gw).await {
        Ok(s) => {
            let accepted = sample(
                &s,
                &format!(
                    "wsgate_websocket_handshakes_total{{protocol=\"{}\",result=\"accepted\"}}",
                    proto.metric()
                ),
            );
            if accepted < opened as f64 || accepted > (opened + p.workers as u64) as f64 {
                problems.push(format!(
                    "the gateway counts {accepted} {} handshakes accepted; the clients opened {opened}",
                    proto.metric()
                ));
            }
        }
        Err(e) => problems.push(format!("scrape: {e:#}")),
    }
    drop(conns);
    let sessions = n1 - n0;
    Rate {
        per_sec: sessions as f64 / elapsed.as_secs_f64(),
        cpu_us: if sessions == 0 {
            f64::NAN
        } else {
            (cpu1 - cpu0) * 1e6 / sessions as f64
        },
        cores: (cpu1 - cpu0) / elapsed.as_secs_f64(),
        problems,
    }
}
