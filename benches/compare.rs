//! The comparison with nginx: one load generator driving, in turn, nginx
//! (default proxy buffers, then 64k proxy buffers) and wsgate, each relaying
//! to the same plain-ws tokio-tungstenite echo backend, and a direct wss echo
//! backend (TLS terminated in the backend: the practical limit for a relay).
//! Prints one table with the medians of every measure, their spread and the
//! ratios to nginx.
//!
//! Then the hub (fan-out against the kernel floor, idle hub connections) and
//! compression (permessage-deflate agreed or not: a 1 KiB JSON echo, idle hub
//! connections, a 1 KiB JSON fan-out), each in a table of its own.
//!
//! Run it through `benches/compare.sh`, which builds wsgate, installs nginx if
//! missing, raises the descriptor limit, writes the certificate and stops
//! everything it started. This binary has three modes:
//!
//! - `compare run --wsgate BIN --nginx BIN --dir DIR [options]`: the comparison
//!   (DIR holds `ca.pem`, `cert.pem`, `key.pem` and receives configs, logs and
//!   `pids`, one line per process started, for the script's cleanup);
//! - `compare serve-ws PORT`: the plain ws echo backend;
//! - `compare serve-wss PORT CERT KEY`: the direct wss echo backend.
//!
//! Every server is its own process (its own process group), so the CPU and
//! memory figures are the measured gateway's alone: CPU from `utime + stime`
//! in `/proc/PID/stat`, memory from `VmRSS` in `/proc/PID/status`, each summed
//! over the process and its descendants (nginx's master and workers).

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use bytes::Bytes;
use futures_util::{FutureExt, SinkExt, StreamExt};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, sleep, timeout};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

type Ws = WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>;

/// Read buffer of the echo backends and of the load generator's clients
/// (tokio-tungstenite's default, 128 KiB, would dominate the direct backend's
/// memory per connection).
const READ_BUFFER: usize = 16 * 1024;
/// The larger message size measured.
const BIG: usize = 16 * 1024;
/// Upper bound on messages per connection in one throughput measure.
const MAX_MSGS_PER_CONN: u64 = 20_000_000;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("serve-ws") => serve(&args[1..], false),
        Some("serve-wss") => serve(&args[1..], true),
        Some("run") => Opts::parse(&args[1..]).and_then(run),
        Some("load") => load(&args[1..]),
        Some("floor-write") => floor_write(&args[1..]),
        Some("floor-read") => floor_read(&args[1..]),
        _ => Err(anyhow!(
            "usage: compare run --wsgate BIN --nginx BIN --dir DIR [--quick] [--repeats N] \
             [--sessions N] [--secs S]; compare serve-ws PORT; compare serve-wss PORT CERT KEY \
             (normally started by benches/compare.sh); \
             compare load CA URL CONNS IN_FLIGHT SIZE MESSAGES_PER_CONN PAUSE_SECS (for profiling); \
             compare floor-write PORT CONNS RATE SECS SIZE CLK_TCK OUT and \
             compare floor-read CONNS SECS PORT_FILE OUT (the kernel floor's two ends)"
        )),
    };
    if let Err(e) = result {
        eprintln!("compare: {e:#}");
        std::process::exit(1);
    }
}

fn runtime() -> tokio::runtime::Runtime {
    // TOKIO_WORKER_THREADS (set by the script) picks the worker count.
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

// ---------------------------------------------------------------- backends

/// An echo server: plain ws, or wss with this certificate. Each connection
/// echoes every data message; whatever is already readable is fed before one
/// flush.
fn serve(args: &[String], tls: bool) -> anyhow::Result<()> {
    let port: u16 = args.first().context("PORT")?.parse()?;
    let acceptor = if tls {
        let cert = args.get(1).context("CERT")?;
        let key = args.get(2).context("KEY")?;
        Some(acceptor(cert, key)?)
    } else {
        None
    };
    runtime().block_on(async move {
        let listener = TcpListener::bind(("127.0.0.1", port)).await?;
        loop {
            let (tcp, _) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(_) => {
                    // Out of descriptors or similar: back off, never spin.
                    sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let _ = tcp.set_nodelay(true);
                match acceptor {
                    Some(acceptor) => {
                        if let Ok(tls) = acceptor.accept(tcp).await {
                            echo(tls).await;
                        }
                    }
                    None => echo(tcp).await,
                }
            });
        }
    })
}

fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(READ_BUFFER)
}

async fn echo<S: AsyncRead + AsyncWrite + Unpin>(stream: S) {
    let Ok(mut ws) = tokio_tungstenite::accept_async_with_config(stream, Some(ws_config())).await
    else {
        return;
    };
    while let Some(Ok(msg)) = ws.next().await {
        if !echo_one(&mut ws, msg).await {
            return;
        }
        while let Some(Some(Ok(msg))) = ws.next().now_or_never() {
            if !echo_one(&mut ws, msg).await {
                return;
            }
        }
        if ws.flush().await.is_err() {
            return;
        }
    }
}

async fn echo_one<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
    msg: Message,
) -> bool {
    match msg {
        Message::Binary(_) | Message::Text(_) => ws.feed(msg).await.is_ok(),
        Message::Close(_) => false,
        _ => true,
    }
}

fn acceptor(cert: &str, key: &str) -> anyhow::Result<TlsAcceptor> {
    let chain = CertificateDer::pem_file_iter(cert)?.collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(key)?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// A bounded load for profiling a gateway: open `CONNS` sessions to `URL`
/// (wss://localhost:PORT/path), print "connected", wait `PAUSE_SECS`, echo
/// exactly `MESSAGES_PER_CONN` messages of `SIZE` bytes on each with
/// `IN_FLIGHT` outstanding, print "done" and the rate, wait `PAUSE_SECS`,
/// close. The pauses leave time to switch a profiler's collection on and off.
fn load(args: &[String]) -> anyhow::Result<()> {
    let arg = |i: usize, name: &str| args.get(i).with_context(|| name.to_string());
    let ca = PathBuf::from(arg(0, "CA")?);
    let url = arg(1, "URL")?;
    let rest = url
        .strip_prefix("wss://localhost:")
        .context("URL: wss://localhost:PORT/path")?;
    let (port, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let addr = SocketAddr::from(([127, 0, 0, 1], port.parse::<u16>()?));
    let num = |i: usize, name: &str| -> anyhow::Result<u64> { Ok(arg(i, name)?.parse()?) };
    let conns = num(2, "CONNS")? as usize;
    let in_flight = num(3, "IN_FLIGHT")? as usize;
    let size = num(4, "SIZE")? as usize;
    let messages = num(5, "MESSAGES_PER_CONN")?;
    let pause = Duration::from_secs(num(6, "PAUSE_SECS")?);
    let path = if path.is_empty() { "/" } else { path };
    let client = Client::new(&ca, addr, path)?;
    runtime().block_on(async move {
        let (streams, failed) = client.connect_many(conns).await;
        if failed > 0 {
            bail!("{failed} of {conns} connections failed");
        }
        println!("connected");
        sleep(pause).await;
        let shared = Arc::new(Shared::default());
        let payload = Bytes::from(vec![0x5a; size]);
        let started = Instant::now();
        let tasks = streams.into_iter().map(|ws| {
            tokio::spawn(pipeline(
                ws,
                shared.clone(),
                payload.clone(),
                in_flight,
                messages,
            ))
        });
        let joined = timeout(
            Duration::from_secs(3600),
            futures_util::future::join_all(tasks),
        )
        .await
        .context("load did not finish within an hour")?;
        let mut streams = Vec::new();
        for r in joined {
            streams.push(r??.0);
        }
        let n = shared.received.load(Ordering::Relaxed);
        println!(
            "done: {n} echoes in {:.2} s ({:.0}/s)",
            started.elapsed().as_secs_f64(),
            n as f64 / started.elapsed().as_secs_f64()
        );
        sleep(pause).await;
        close_all(streams).await;
        Ok(())
    })
}

// ---------------------------------------------------------------- options

struct Opts {
    wsgate: PathBuf,
    nginx: PathBuf,
    dir: PathBuf,
    quick: bool,
    repeats: usize,
    /// Idle relayed sessions opened for the memory measures.
    sessions: usize,
    /// Measured seconds per throughput measure (after a warm-up).
    secs: f64,
    warmup: f64,
    clk_tck: f64,
    workers: usize,
    /// Subscriber counts of the hub fan-out measures, ascending.
    hub_subs: Vec<usize>,
    /// Seconds of publishing per fan-out measure.
    hub_secs: f64,
    /// Idle hub connections for the hub memory measure.
    hub_idle: usize,
    /// Measure the hub only (no relay table).
    hub_only: bool,
    /// The memory measures only (no load: for a busy machine).
    memory_only: bool,
    /// The compression table only.
    deflate_only: bool,
}

impl Opts {
    fn parse(args: &[String]) -> anyhow::Result<Opts> {
        let mut flags = BTreeMap::new();
        let (mut quick, mut hub_only, mut memory_only) = (false, false, false);
        let mut deflate_only = false;
        let mut i = 0;
        while i < args.len() {
            match args[i].as_str() {
                "--quick" => quick = true,
                "--hub-only" => hub_only = true,
                "--memory-only" => memory_only = true,
                "--deflate-only" => deflate_only = true,
                // `cargo bench` appends this.
                "--bench" => {}
                flag if flag.starts_with("--") => {
                    let value = args
                        .get(i + 1)
                        .with_context(|| format!("{flag} needs a value"))?;
                    flags.insert(flag.trim_start_matches("--").to_string(), value.clone());
                    i += 1;
                }
                other => bail!("unexpected argument {other:?}"),
            }
            i += 1;
        }
        let get = |name: &str| flags.get(name).cloned();
        let num = |name: &str, default: f64| -> anyhow::Result<f64> {
            match get(name) {
                Some(v) => v.parse().with_context(|| format!("--{name} {v}")),
                None => Ok(default),
            }
        };
        let opts = Opts {
            wsgate: get("wsgate").context("--wsgate BIN")?.into(),
            nginx: get("nginx").context("--nginx BIN")?.into(),
            dir: get("dir").context("--dir DIR")?.into(),
            quick,
            repeats: num("repeats", if quick { 1.0 } else { 3.0 })? as usize,
            sessions: num("sessions", if quick { 100.0 } else { 2000.0 })? as usize,
            secs: num("secs", if quick { 1.0 } else { 4.0 })?,
            warmup: num("warmup", if quick { 0.3 } else { 1.0 })?,
            clk_tck: num("clk-tck", 100.0)?,
            workers: num("workers", 2.0)? as usize,
            hub_subs: match get("hub-subs") {
                Some(list) => list
                    .split(',')
                    .map(|n| n.trim().parse::<usize>())
                    .collect::<Result<Vec<_>, _>>()
                    .with_context(|| format!("--hub-subs {list}"))?,
                None if quick => vec![100],
                None => vec![1000, 5000, 10_000],
            },
            hub_secs: num("hub-secs", if quick { 1.0 } else { 4.0 })?,
            hub_idle: num("hub-idle", if quick { 100.0 } else { 2000.0 })? as usize,
            hub_only,
            memory_only,
            deflate_only,
        };
        let mut opts = opts;
        opts.hub_subs.sort_unstable();
        opts.hub_subs.dedup();
        if opts.repeats == 0 || opts.sessions == 0 || opts.secs <= 0.0 {
            bail!("--repeats, --sessions and --secs must be positive");
        }
        if opts.hub_subs.contains(&0) || opts.hub_secs <= 0.0 || opts.hub_idle == 0 {
            bail!("--hub-subs, --hub-secs and --hub-idle must be positive");
        }
        if opts.hub_only && opts.deflate_only {
            bail!("--hub-only and --deflate-only exclude each other");
        }
        if opts.hub_secs > 600.0 || opts.hub_subs.iter().any(|&n| n > 100_000) {
            bail!("--hub-secs is at most 600 and --hub-subs at most 100000");
        }
        Ok(opts)
    }
}

// ---------------------------------------------------------------- targets

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Target {
    Nginx,
    Nginx64k,
    Wsgate,
    Direct,
}

const TARGETS: [Target; 4] = [
    Target::Nginx,
    Target::Nginx64k,
    Target::Wsgate,
    Target::Direct,
];

impl Target {
    fn label(self) -> &'static str {
        match self {
            Target::Nginx => "nginx",
            Target::Nginx64k => "nginx 64k buf",
            Target::Wsgate => "wsgate",
            Target::Direct => "direct wss",
        }
    }
}

/// A child process in its own process group, listed in `DIR/pids`. Dropping
/// it stops the group: SIGTERM, then SIGKILL after two seconds.
struct Proc {
    child: Child,
    name: String,
}

impl Proc {
    fn spawn(opts: &Opts, name: &str, mut cmd: Command) -> anyhow::Result<Proc> {
        use std::os::unix::process::CommandExt;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(opts.dir.join(format!("{name}.log")))?;
        cmd.process_group(0)
            .env("TOKIO_WORKER_THREADS", opts.workers.to_string())
            .env("RUST_LOG", "warn")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = cmd.spawn().with_context(|| format!("starting {name}"))?;
        let mut pids = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(opts.dir.join("pids"))?;
        writeln!(pids, "{}", child.id())?;
        Ok(Proc {
            child,
            name: name.to_string(),
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill")
            .args(["-TERM", "--", &group])
            .stderr(Stdio::null())
            .status();
        for _ in 0..40 {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if let Ok(None) = self.child.try_wait() {
            eprintln!("  {} did not stop on SIGTERM; killing it", self.name);
        }
        let _ = Command::new("kill")
            .args(["-KILL", "--", &group])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What runs for one target: `procs` in start order (dropped in reverse:
/// the front end before the backend), the address clients dial, the path,
/// and the process whose tree is measured.
struct Stack {
    procs: Vec<Proc>,
    addr: SocketAddr,
    path: &'static str,
    measured: u32,
}

impl Drop for Stack {
    fn drop(&mut self) {
        while let Some(p) = self.procs.pop() {
            drop(p);
        }
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Wait (at most 10 s) until something listens on `port`.
fn wait_listening(port: u16, proc: &mut Proc) -> anyhow::Result<()> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    for _ in 0..200 {
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if let Ok(Some(status)) = proc.child.try_wait() {
            bail!("{} exited ({status}); see its log", proc.name);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("{} is not listening on {port} after 10 s", proc.name)
}

fn start(opts: &Opts, target: Target) -> anyhow::Result<Stack> {
    let me = std::env::current_exe()?;
    let cert = opts.dir.join("cert.pem");
    let key = opts.dir.join("key.pem");
    let mut procs = Vec::new();
    let port = free_port()?;
    if target == Target::Direct {
        let mut cmd = Command::new(&me);
        cmd.arg("serve-wss")
            .arg(port.to_string())
            .arg(&cert)
            .arg(&key);
        let mut p = Proc::spawn(opts, "direct", cmd)?;
        wait_listening(port, &mut p)?;
        let measured = p.pid();
        procs.push(p);
        return Ok(Stack {
            procs,
            addr: ([127, 0, 0, 1], port).into(),
            path: "/",
            measured,
        });
    }
    let backend_port = free_port()?;
    let mut cmd = Command::new(&me);
    cmd.arg("serve-ws").arg(backend_port.to_string());
    let mut backend = Proc::spawn(opts, "backend", cmd)?;
    wait_listening(backend_port, &mut backend)?;
    procs.push(backend);
    let (mut front, path) = match target {
        Target::Wsgate => {
            let config = opts.dir.join("wsgate.toml");
            std::fs::write(
                &config,
                format!(
                    "[listen]\naddr = \"127.0.0.1:{port}\"\n\n[admin]\naddr = \"127.0.0.1:0\"\n\n\
                     [tls]\ncert = {cert:?}\nkey = {key:?}\n\n[limits]\nmax_connections = {}\n\n\
                     [[routes]]\npath = \"/relay\"\nkind = \"upstream\"\n\
                     upstreams = [\"ws://127.0.0.1:{backend_port}\"]\n",
                    opts.sessions * 2 + 1000
                ),
            )?;
            let mut cmd = Command::new(&opts.wsgate);
            cmd.arg("--config").arg(&config);
            (Proc::spawn(opts, "wsgate", cmd)?, "/relay")
        }
        _ => {
            let big = target == Target::Nginx64k;
            let prefix = opts
                .dir
                .join(if big { "nginx-64k" } else { "nginx-default" });
            std::fs::create_dir_all(prefix.join("logs"))?;
            let conf = prefix.join("nginx.conf");
            std::fs::write(&conf, nginx_conf(opts, &prefix, port, backend_port, big))?;
            let mut cmd = Command::new(&opts.nginx);
            cmd.arg("-p")
                .arg(&prefix)
                .arg("-e")
                .arg(prefix.join("logs/error.log"))
                .arg("-c")
                .arg(&conf)
                .args(["-g", "daemon off;"]);
            let name = if big { "nginx-64k" } else { "nginx" };
            (Proc::spawn(opts, name, cmd)?, "/relay")
        }
    };
    wait_listening(port, &mut front)?;
    let measured = front.pid();
    procs.push(front);
    Ok(Stack {
        procs,
        addr: ([127, 0, 0, 1], port).into(),
        path,
        measured,
    })
}

fn nginx_conf(opts: &Opts, prefix: &Path, port: u16, backend: u16, big: bool) -> String {
    let p = prefix.display();
    let cert = opts.dir.join("cert.pem");
    let key = opts.dir.join("key.pem");
    let buffers = if big {
        "      proxy_buffer_size 64k;\n      proxy_buffers 8 64k;\n"
    } else {
        ""
    };
    format!(
        "worker_processes {workers};\n\
         pid {p}/nginx.pid;\n\
         error_log {p}/logs/error.log warn;\n\
         worker_rlimit_nofile {nofile};\n\
         events {{ worker_connections {connections}; }}\n\
         http {{\n\
           access_log off;\n\
           client_body_temp_path {p}/client_body;\n\
           proxy_temp_path {p}/proxy;\n\
           fastcgi_temp_path {p}/fastcgi;\n\
           uwsgi_temp_path {p}/uwsgi;\n\
           scgi_temp_path {p}/scgi;\n\
           upstream backend {{ server 127.0.0.1:{backend}; }}\n\
           server {{\n\
             listen 127.0.0.1:{port} ssl;\n\
             ssl_certificate {cert};\n\
             ssl_certificate_key {key};\n\
             ssl_protocols TLSv1.2 TLSv1.3;\n\
             location / {{\n\
               proxy_pass http://backend;\n\
               proxy_http_version 1.1;\n\
               proxy_set_header Upgrade $http_upgrade;\n\
               proxy_set_header Connection \"upgrade\";\n\
               proxy_set_header Host $host;\n\
               proxy_read_timeout 1h;\n\
               proxy_send_timeout 1h;\n\
         {buffers}\
             }}\n\
           }}\n\
         }}\n",
        workers = opts.workers,
        nofile = nofile(),
        connections = nofile() / 2,
        cert = cert.display(),
        key = key.display(),
    )
}

// ---------------------------------------------------------------- /proc

/// This process's descriptor limit (soft), which its children inherit.
fn nofile() -> u64 {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|limits| {
            limits
                .lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(1024)
}

/// The process and all its descendants.
fn tree(root: u32) -> Vec<u32> {
    let mut parent = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some(fields) = stat_fields(pid)
                && let Some(ppid) = fields.get(1).and_then(|s| s.parse::<u32>().ok())
            {
                parent.push((pid, ppid));
            }
        }
    }
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() && i < 10_000 {
        let p = out[i];
        out.extend(parent.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    out
}

/// Fields of /proc/PID/stat after the command name: index 0 is the state
/// (field 3), so utime (field 14) is index 11 and stime index 12.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// CPU seconds (user + system) of the process tree.
fn cpu_secs(root: u32, clk_tck: f64) -> f64 {
    let (user, system) = cpu_split(root, clk_tck);
    user + system
}

/// CPU seconds of the process tree: (user, system).
/// One measured window of a load: messages received, and the CPU seconds
/// (user, system) of the process tree at `pid`.
struct Window {
    count: u64,
    user: f64,
    system: f64,
    elapsed: Duration,
}

/// After the warm-up, `opts.secs` of load: what `received` counted and
/// what `pid` spent meanwhile; `recording` (if any) is set for as long.
async fn measure(
    opts: &Opts,
    received: &AtomicU64,
    pid: u32,
    recording: Option<&AtomicBool>,
) -> Window {
    sleep(Duration::from_secs_f64(opts.warmup)).await;
    let (c0, (user0, sys0), t0) = (
        received.load(Ordering::Relaxed),
        cpu_split(pid, opts.clk_tck),
        Instant::now(),
    );
    recording.inspect(|r| r.store(true, Ordering::Relaxed));
    sleep(Duration::from_secs_f64(opts.secs)).await;
    recording.inspect(|r| r.store(false, Ordering::Relaxed));
    let (c1, (user1, sys1), elapsed) = (
        received.load(Ordering::Relaxed),
        cpu_split(pid, opts.clk_tck),
        t0.elapsed(),
    );
    Window {
        count: c1 - c0,
        user: user1 - user0,
        system: sys1 - sys0,
        elapsed,
    }
}

fn cpu_split(root: u32, clk_tck: f64) -> (f64, f64) {
    let (mut user, mut system) = (0u64, 0u64);
    for f in tree(root).into_iter().filter_map(stat_fields) {
        let n = |i: usize| f.get(i).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
        user += n(11);
        system += n(12);
    }
    (user as f64 / clk_tck, system as f64 / clk_tck)
}

/// Resident KiB of the process tree.
fn rss_kib(root: u32) -> u64 {
    tree(root)
        .into_iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
        .filter_map(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .sum()
}

// ---------------------------------------------------------------- clients

#[derive(Clone)]
struct Client {
    connector: TlsConnector,
    addr: SocketAddr,
    url: String,
    path: String,
    read_buffer: usize,
}

impl Client {
    fn new(ca: &Path, addr: SocketAddr, path: &str) -> anyhow::Result<Client> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(ca)? {
            roots.add(cert?)?;
        }
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
        // Every handshake is a full one, for every target alike.
        config.resumption = rustls::client::Resumption::disabled();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Client {
            connector: TlsConnector::from(Arc::new(config)),
            addr,
            url: format!("wss://localhost:{}{path}", addr.port()),
            path: path.to_string(),
            read_buffer: READ_BUFFER,
        })
    }

    /// The same client with this WebSocket read buffer.
    fn with_read_buffer(mut self, bytes: usize) -> Client {
        self.read_buffer = bytes;
        self
    }

    async fn connect(&self) -> anyhow::Result<Ws> {
        let fut = async {
            let tcp = TcpStream::connect(self.addr).await?;
            tcp.set_nodelay(true)?;
            let tls = self
                .connector
                .connect(ServerName::try_from("localhost")?, tcp)
                .await?;
            let (ws, _) = tokio_tungstenite::client_async_with_config(
                self.url.as_str(),
                tls,
                Some(WebSocketConfig::default().read_buffer_size(self.read_buffer)),
            )
            .await?;
            anyhow::Ok(ws)
        };
        timeout(Duration::from_secs(10), fut)
            .await
            .context("connect timed out")?
    }

    /// Open `n` sessions, 64 handshakes at a time; returns the sessions and
    /// how many failed.
    async fn connect_many(&self, n: usize) -> (Vec<Ws>, usize) {
        let mut out = Vec::with_capacity(n);
        let mut failed = 0;
        let mut start = 0;
        while start < n {
            let end = (start + 64).min(n);
            let batch = futures_util::future::join_all((start..end).map(|_| self.connect())).await;
            for r in batch {
                match r {
                    Ok(ws) => out.push(ws),
                    Err(_) => failed += 1,
                }
            }
            start = end;
        }
        (out, failed)
    }
}

async fn round_trip(ws: &mut Ws, payload: Bytes) -> anyhow::Result<()> {
    let len = payload.len();
    ws.send(Message::Binary(payload)).await?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Binary(b))) if b.len() == len => return Ok(()),
            Some(Ok(Message::Binary(b))) => bail!("echo of {len} bytes came back as {}", b.len()),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
            None => bail!("closed"),
        }
    }
}

// ---------------------------------------------------------------- measures

#[derive(Default)]
struct Shared {
    received: AtomicU64,
    recording: AtomicBool,
    stop: AtomicBool,
}

struct Echo {
    msgs_per_sec: f64,
    cpu_us_per_msg: f64,
    system_us_per_msg: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// `conns` connections, each keeping `in_flight` messages of `size` bytes
/// outstanding; after the warm-up, count echoes and the gateway's CPU for
/// `secs`.
async fn echo_load(
    opts: &Opts,
    client: &Client,
    measured: u32,
    conns: usize,
    in_flight: usize,
    size: usize,
) -> anyhow::Result<Echo> {
    let (streams, failed) = client.connect_many(conns).await;
    if failed > 0 {
        bail!("{failed} of {conns} connections failed");
    }
    let shared = Arc::new(Shared::default());
    let payload = Bytes::from(vec![0x5a; size]);
    let tasks: Vec<_> = streams
        .into_iter()
        .map(|ws| {
            tokio::spawn(pipeline(
                ws,
                shared.clone(),
                payload.clone(),
                in_flight,
                MAX_MSGS_PER_CONN,
            ))
        })
        .collect();
    let window = measure(opts, &shared.received, measured, Some(&shared.recording)).await;
    shared.stop.store(true, Ordering::Relaxed);
    let mut samples = Vec::new();
    let joined = timeout(
        Duration::from_secs(20),
        futures_util::future::join_all(tasks),
    )
    .await
    .context("connections did not finish within 20 s of the stop")?;
    let mut streams = Vec::with_capacity(joined.len());
    for r in joined {
        let (ws, s) = r??;
        samples.extend(s);
        streams.push(ws);
    }
    close_all(streams).await;
    let n = window.count;
    if n == 0 || samples.is_empty() {
        bail!("no echoes in the measured window");
    }
    samples.sort_unstable();
    let pct = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    Ok(Echo {
        msgs_per_sec: n as f64 / window.elapsed.as_secs_f64(),
        cpu_us_per_msg: (window.user + window.system) * 1e6 / n as f64,
        system_us_per_msg: window.system * 1e6 / n as f64,
        p50_ms: pct(0.50) as f64 / 1000.0,
        p99_ms: pct(0.99) as f64 / 1000.0,
    })
}

/// One connection's part of `echo_load`: returns the connection and the
/// round-trip times in µs of the echoes received while recording.
async fn pipeline(
    mut ws: Ws,
    shared: Arc<Shared>,
    payload: Bytes,
    in_flight: usize,
    max: u64,
) -> anyhow::Result<(Ws, Vec<u32>)> {
    let mut sent_at: VecDeque<Instant> = VecDeque::with_capacity(in_flight);
    let mut samples = Vec::new();
    let mut sent = 0u64;
    let len = payload.len();
    loop {
        let stopping = shared.stop.load(Ordering::Relaxed) || sent >= max;
        if stopping && sent_at.is_empty() {
            break;
        }
        if !stopping {
            while sent_at.len() < in_flight && sent < max {
                ws.feed(Message::Binary(payload.clone())).await?;
                sent_at.push_back(Instant::now());
                sent += 1;
            }
        }
        ws.flush().await?;
        let mut next = Some(
            timeout(Duration::from_secs(10), ws.next())
                .await
                .context("no echo for 10 s")?,
        );
        while let Some(msg) = next {
            match msg {
                Some(Ok(Message::Binary(b))) if b.len() == len => {
                    let at = sent_at.pop_front().context("an echo nobody sent")?;
                    shared.received.fetch_add(1, Ordering::Relaxed);
                    if shared.recording.load(Ordering::Relaxed) {
                        samples.push(at.elapsed().as_micros().min(u32::MAX as u128) as u32);
                    }
                }
                Some(Ok(Message::Binary(b))) => {
                    bail!("echo of {len} bytes came back as {}", b.len())
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
                None => bail!("closed by the server"),
            }
            // Take every echo that is already here before sending more.
            next = ws.next().now_or_never();
        }
    }
    Ok((ws, samples))
}

/// Close handshakes on every connection, at most 5 s in all.
async fn close_all(mut streams: Vec<Ws>) {
    let _ = timeout(
        Duration::from_secs(5),
        futures_util::future::join_all(streams.iter_mut().map(|ws| ws.close(None))),
    )
    .await;
}

struct Handshakes {
    per_sec: f64,
    cpu_us_per_handshake: f64,
    failed: u64,
}

/// `concurrency` loops, each connecting (TCP, TLS, WebSocket upgrade) and
/// dropping the connection again, for `secs` after the warm-up.
async fn handshake_load(
    opts: &Opts,
    client: &Client,
    measured: u32,
    concurrency: usize,
) -> anyhow::Result<Handshakes> {
    let shared = Arc::new(Shared::default());
    let failed = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (client, shared, failed) = (client.clone(), shared.clone(), failed.clone());
            tokio::spawn(async move {
                let mut n = 0u64;
                while !shared.stop.load(Ordering::Relaxed) && n < MAX_MSGS_PER_CONN {
                    match client.connect().await {
                        Ok(ws) => {
                            shared.received.fetch_add(1, Ordering::Relaxed);
                            drop(ws);
                        }
                        Err(_) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            sleep(Duration::from_millis(10)).await;
                        }
                    }
                    n += 1;
                }
            })
        })
        .collect();
    sleep(Duration::from_secs_f64(opts.warmup)).await;
    let (c0, f0, cpu0, t0) = (
        shared.received.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
        cpu_secs(measured, opts.clk_tck),
        Instant::now(),
    );
    sleep(Duration::from_secs_f64(opts.secs)).await;
    let (c1, f1, cpu1, elapsed) = (
        shared.received.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
        cpu_secs(measured, opts.clk_tck),
        t0.elapsed(),
    );
    shared.stop.store(true, Ordering::Relaxed);
    timeout(
        Duration::from_secs(20),
        futures_util::future::join_all(tasks),
    )
    .await
    .context("handshake loops did not finish within 20 s of the stop")?;
    let n = c1 - c0;
    if n == 0 {
        bail!("no handshake completed in the measured window");
    }
    Ok(Handshakes {
        per_sec: n as f64 / elapsed.as_secs_f64(),
        cpu_us_per_handshake: (cpu1 - cpu0) * 1e6 / n as f64,
        failed: f1 - f0,
    })
}

struct Memory {
    idle_kib: f64,
    after_kib: f64,
    opened: usize,
    failed: usize,
}

/// RSS of the measured tree per open session: idle, then after every
/// session has carried one 16 KiB message each way.
async fn memory(opts: &Opts, client: &Client, measured: u32) -> anyhow::Result<Memory> {
    let before = rss_kib(measured);
    let (mut sessions, failed) = client.connect_many(opts.sessions).await;
    if sessions.is_empty() {
        bail!("no session opened");
    }
    // A fresh session's round trip: everything before it is set up.
    let mut probe = client.connect().await?;
    round_trip(&mut probe, Bytes::from_static(b"probe")).await?;
    sleep(Duration::from_millis(300)).await;
    let opened = sessions.len();
    let idle = rss_kib(measured);
    let payload = Bytes::from(vec![0x42; BIG]);
    let mut errors = 0;
    for chunk in sessions.chunks_mut(256) {
        let results = timeout(
            Duration::from_secs(60),
            futures_util::future::join_all(
                chunk.iter_mut().map(|ws| round_trip(ws, payload.clone())),
            ),
        )
        .await
        .context("16 KiB round trips did not finish in 60 s")?;
        errors += results.iter().filter(|r| r.is_err()).count();
    }
    if errors > 0 {
        bail!("{errors} of {opened} sessions failed their 16 KiB round trip");
    }
    sleep(Duration::from_millis(300)).await;
    let after = rss_kib(measured);
    drop(sessions);
    drop(probe);
    let per = |rss: u64| rss.saturating_sub(before) as f64 / opened as f64;
    Ok(Memory {
        idle_kib: per(idle),
        after_kib: per(after),
        opened,
        failed,
    })
}

// ---------------------------------------------------------------- the run

/// Measures in table order.
const MEASURES: [&str; 12] = [
    "relay echo 64 B, 64 conns x 16 in flight: msg/s",
    "  same: gateway CPU us per message",
    "  same: round trip p50 ms",
    "  same: round trip p99 ms",
    "relay echo 16 KiB, 16 conns x 4 in flight: msg/s",
    "  same: gateway CPU us per message",
    "TLS + WebSocket handshakes/s, 32 concurrent",
    "  same: gateway CPU us per handshake",
    "RSS KiB per idle session",
    "RSS KiB per session after 16 KiB each way",
    "sessions opened per run (failed handshakes in all runs)",
    "  same: of which system (kernel) CPU us",
];

/// Display order of the measures.
const ORDER: [usize; 12] = [0, 1, 11, 2, 3, 4, 5, 6, 7, 8, 9, 10];

/// Decimal places per measure.
const DIGITS: [usize; 12] = [0, 2, 2, 2, 0, 1, 0, 0, 1, 1, 0, 2];

type Results = BTreeMap<(Target, usize), Vec<f64>>;

fn run(opts: Opts) -> anyhow::Result<()> {
    let started = Instant::now();
    // A relayed session holds two descriptors in the gateway.
    if (opts.sessions as u64) * 2 + 200 > nofile() {
        eprintln!(
            "warning: {} sessions need about {} descriptors per gateway; the limit is {}",
            opts.sessions,
            opts.sessions * 2 + 200,
            nofile()
        );
    }
    if (opts.hub_idle.max(*opts.hub_subs.last().unwrap_or(&0)) as u64) + 200 > nofile() {
        eprintln!(
            "warning: {} hub connections need about as many descriptors in the load generator \
             and in wsgate; the limit is {}",
            opts.hub_idle.max(*opts.hub_subs.last().unwrap_or(&0)),
            nofile()
        );
    }
    let ca = opts.dir.join("ca.pem");
    let mut hub_results = HubResults::default();
    let mut deflate_results = HubResults::default();
    let mut results: Results = BTreeMap::new();
    let mut failures: Vec<String> = Vec::new();
    let mut handshake_failures: BTreeMap<Target, u64> = BTreeMap::new();
    let rt = runtime();
    for repeat in 0..opts.repeats {
        let relay_targets = if opts.hub_only || opts.deflate_only {
            &[][..]
        } else {
            &TARGETS[..]
        };
        for &target in relay_targets {
            eprintln!(
                "[{:>5.1}s] repeat {}/{}: {}",
                started.elapsed().as_secs_f64(),
                repeat + 1,
                opts.repeats,
                target.label()
            );
            let stack = match start(&opts, target) {
                Ok(s) => s,
                Err(e) => {
                    failures.push(format!(
                        "{} (repeat {}): start: {e:#}",
                        target.label(),
                        repeat + 1
                    ));
                    continue;
                }
            };
            let client = Client::new(&ca, stack.addr, stack.path)?;
            let outcome = rt.block_on(measure_target(
                &opts,
                &client,
                &stack,
                target,
                &mut results,
                &mut handshake_failures,
            ));
            for e in outcome {
                failures.push(format!("{} (repeat {}): {e:#}", target.label(), repeat + 1));
            }
            drop(stack);
        }
        if !opts.deflate_only {
            eprintln!(
                "[{:>5.1}s] repeat {}/{}: kernel floor and wsgate hub",
                started.elapsed().as_secs_f64(),
                repeat + 1,
                opts.repeats,
            );
            for e in rt.block_on(measure_hub(&opts, &ca, &mut hub_results)) {
                failures.push(format!("hub (repeat {}): {e:#}", repeat + 1));
            }
        }
        if !opts.hub_only {
            eprintln!(
                "[{:>5.1}s] repeat {}/{}: wsgate with and without compression",
                started.elapsed().as_secs_f64(),
                repeat + 1,
                opts.repeats,
            );
            for e in rt.block_on(measure_deflate(&opts, &ca, repeat, &mut deflate_results)) {
                failures.push(format!("compression (repeat {}): {e:#}", repeat + 1));
            }
        }
    }
    rt.shutdown_timeout(Duration::from_secs(2));
    if !opts.hub_only && !opts.deflate_only {
        print_table(&opts, &results, &handshake_failures);
    }
    if !opts.deflate_only {
        print_hub_table(&opts, &hub_results);
    }
    if !opts.hub_only {
        print_deflate_table(&opts, &deflate_results);
    }
    if !failures.is_empty() {
        println!("\nFailed measures (missing from the table):");
        for f in &failures {
            println!("- {f}");
        }
    }
    println!("\n(run took {:.0} s)", started.elapsed().as_secs_f64());
    Ok(())
}

/// Every measure on one freshly started target; the errors of those that
/// failed.
async fn measure_target(
    opts: &Opts,
    client: &Client,
    stack: &Stack,
    target: Target,
    results: &mut Results,
    handshake_failures: &mut BTreeMap<Target, u64>,
) -> Vec<anyhow::Error> {
    let mut errors = Vec::new();
    let pid = stack.measured;
    // Warm up (retrying while an upstream member comes up).
    let mut warm = None;
    for _ in 0..50 {
        if let Ok(mut ws) = client.connect().await
            && round_trip(&mut ws, Bytes::from_static(b"warm"))
                .await
                .is_ok()
        {
            warm = Some(ws);
            break;
        }
        sleep(Duration::from_millis(100)).await;
    }
    let Some(mut warm) = warm else {
        errors.push(anyhow!("no echo through the target within 5 s"));
        return errors;
    };
    for _ in 0..100 {
        if let Err(e) = round_trip(&mut warm, Bytes::from_static(&[7; 64])).await {
            errors.push(e);
            return errors;
        }
    }
    let mut put = |i: usize, v: f64| results.entry((target, i)).or_default().push(v);
    // Memory first, on a fresh process.
    match memory(opts, client, pid).await {
        Ok(m) => {
            put(8, m.idle_kib);
            put(9, m.after_kib);
            put(10, m.opened as f64);
            *handshake_failures.entry(target).or_default() += m.failed as u64;
        }
        Err(e) => errors.push(e.context("memory")),
    }
    if opts.memory_only {
        return errors;
    }
    sleep(Duration::from_millis(500)).await;
    match echo_load(opts, client, pid, 64, 16, 64).await {
        Ok(e) => {
            put(0, e.msgs_per_sec);
            put(1, e.cpu_us_per_msg);
            put(11, e.system_us_per_msg);
            put(2, e.p50_ms);
            put(3, e.p99_ms);
        }
        Err(e) => errors.push(e.context("64 B echo")),
    }
    sleep(Duration::from_millis(300)).await;
    match echo_load(opts, client, pid, 16, 4, BIG).await {
        Ok(e) => {
            put(4, e.msgs_per_sec);
            put(5, e.cpu_us_per_msg);
        }
        Err(e) => errors.push(e.context("16 KiB echo")),
    }
    sleep(Duration::from_millis(300)).await;
    match handshake_load(opts, client, pid, 32).await {
        Ok(h) => {
            put(6, h.per_sec);
            put(7, h.cpu_us_per_handshake);
            *handshake_failures.entry(target).or_default() += h.failed;
        }
        Err(e) => errors.push(e.context("handshakes")),
    }
    drop(warm);
    errors
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

fn fmt_num(v: f64, digits: usize) -> String {
    let s = format!("{v:.digits$}");
    if digits > 0 || v.abs() < 10_000.0 {
        return s;
    }
    // Thousands separators for large integers.
    let (sign, digits_only) = s.strip_prefix('-').map_or(("", s.as_str()), |d| ("-", d));
    let mut out = String::new();
    for (i, c) in digits_only.chars().enumerate() {
        if i > 0 && (digits_only.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    format!("{sign}{out}")
}

fn print_table(opts: &Opts, results: &Results, handshake_failures: &BTreeMap<Target, u64>) {
    let cell = |t: Target, i: usize| -> Option<(f64, String)> {
        let v = results.get(&(t, i)).filter(|v| !v.is_empty())?;
        let m = median(v);
        let d = DIGITS[i];
        let mut s = fmt_num(m, d);
        if v.len() > 1 && i != 10 {
            let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let _ = write!(s, " ({}–{})", fmt_num(lo, d), fmt_num(hi, d));
        }
        Some((m, s))
    };
    let ratio = |a: Option<&(f64, String)>, b: Option<&(f64, String)>| match (a, b) {
        (Some((a, _)), Some((b, _))) if *b != 0.0 => format!("{:.2}", a / b),
        _ => "–".to_string(),
    };
    println!();
    println!(
        "| measure | nginx | nginx 64k buf | wsgate | direct wss | wsgate / nginx | wsgate / nginx 64k | direct / nginx |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    for i in ORDER {
        let label = MEASURES[i];
        let cells: Vec<_> = TARGETS.iter().map(|t| cell(*t, i)).collect();
        let mut row = format!("| {} |", label.trim_start());
        for (t, c) in TARGETS.iter().zip(&cells) {
            let mut text = c.as_ref().map_or("–".to_string(), |c| c.1.clone());
            if i == 10 {
                let _ = write!(
                    text,
                    " ({})",
                    handshake_failures.get(t).copied().unwrap_or(0)
                );
            }
            let _ = write!(row, " {text} |");
        }
        if i == 10 {
            row.push_str(" | | |");
        } else {
            let _ = write!(
                row,
                " {} | {} | {} |",
                ratio(cells[2].as_ref(), cells[0].as_ref()),
                ratio(cells[2].as_ref(), cells[1].as_ref()),
                ratio(cells[3].as_ref(), cells[0].as_ref()),
            );
        }
        println!("{row}");
    }
    println!(
        "\nMedians of {} run(s), (min–max) when repeated. 127.0.0.1, {} cores; gateway = nginx \
         (master + {} workers) / wsgate ({} tokio workers) / the direct wss backend itself, each \
         relaying to a plain-ws tokio-tungstenite echo backend in its own process (its CPU and \
         memory are excluded). A message is one echo round trip (relayed once each way); CPU is \
         utime+stime of the gateway's processes over the measured {} s after {} s of warm-up. \
         Memory: {} sessions opened on a fresh process; RSS delta / sessions. Full handshakes \
         (no resumption), TLS 1.3, X25519, the ECDSA P-256 certificate from `wsgate gen-cert`.{}",
        opts.repeats,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        opts.workers,
        opts.workers,
        opts.secs,
        opts.warmup,
        opts.sessions,
        if opts.quick {
            " QUICK MODE: too short and too small to mean much; it checks that every target runs."
        } else {
            ""
        }
    );
}

// ---------------------------------------------------------------- the hub

/// Publishes per second in the fan-out measures.
const HUB_RATE: f64 = 100.0;
/// Payload of one publish.
const HUB_PAYLOAD: usize = 256;
/// Bytes of one write in the kernel floor: about what one 256-byte publish
/// costs on the wire (WebSocket header, TLS record header and tag).
const FLOOR_WRITE: usize = 290;
/// The sequence number of warm-up publishes.
const WARM: u64 = u64::MAX;
/// WebSocket read buffer of the load generator's hub clients.
const HUB_READ_BUFFER: usize = 4096;

/// The kernel floor's writer (a child process): connect `CONNS` TCP sockets
/// to 127.0.0.1:PORT, then `RATE` times a second for `SECS` seconds write
/// `SIZE` bytes to each with a plain blocking write (stopping after `SECS`
/// seconds if it cannot keep that rate); write to OUT the writes done, this
/// process's user and system CPU seconds over the loop (from
/// /proc/self/stat), the loop's seconds, and how many ticks started late.
fn floor_write(args: &[String]) -> anyhow::Result<()> {
    use std::io::Write;
    let arg = |i: usize, name: &str| args.get(i).with_context(|| name.to_string());
    let num = |i: usize, name: &str| -> anyhow::Result<f64> {
        arg(i, name)?
            .parse::<f64>()
            .with_context(|| name.to_string())
    };
    let port = num(0, "PORT")? as u16;
    let conns = num(1, "CONNS")? as usize;
    let rate = num(2, "RATE")?;
    let secs = num(3, "SECS")?;
    let size = num(4, "SIZE")? as usize;
    let clk_tck = num(5, "CLK_TCK")?;
    let out = PathBuf::from(arg(6, "OUT")?);
    if rate <= 0.0 || rate > 10_000.0 || secs <= 0.0 || secs > 600.0 {
        bail!("RATE must be in (0, 10000] and SECS in (0, 600]");
    }
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut socks = Vec::with_capacity(conns);
    let connecting = Instant::now();
    for _ in 0..conns {
        let s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        s.set_nodelay(true)?;
        // A reader that stops cannot hold the loop for long.
        s.set_write_timeout(Some(Duration::from_secs(5)))?;
        socks.push(s);
    }
    eprintln!(
        "floor-write: {conns} connected in {:.2} s",
        connecting.elapsed().as_secs_f64()
    );
    std::thread::sleep(Duration::from_millis(200));
    let payload = vec![0x5au8; size];
    let ticks = (rate * secs).round().max(1.0) as u64;
    let period = Duration::from_secs_f64(1.0 / rate);
    let me = std::process::id();
    let (user0, sys0) = proc_cpu(me, clk_tck);
    let t0 = Instant::now();
    let end = t0 + Duration::from_secs_f64(secs);
    let (mut writes, mut late) = (0u64, 0u64);
    for tick in 0..ticks {
        let due = t0 + period.mul_f64(tick as f64);
        let now = Instant::now();
        if now >= end {
            break;
        }
        if due > now {
            std::thread::sleep(due - now);
        } else if tick > 0 {
            late += 1;
        }
        for s in &mut socks {
            s.write_all(&payload)?;
            writes += 1;
        }
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let (user1, sys1) = proc_cpu(me, clk_tck);
    std::fs::write(
        &out,
        format!(
            "{writes} {} {} {elapsed} {late}\n",
            user1 - user0,
            sys1 - sys0
        ),
    )?;
    Ok(())
}

/// CPU seconds of one process (not its children): (user, system).
fn proc_cpu(pid: u32, clk_tck: f64) -> (f64, f64) {
    let f = stat_fields(pid).unwrap_or_default();
    let n = |i: usize| f.get(i).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
    (n(11) as f64 / clk_tck, n(12) as f64 / clk_tck)
}

struct Floor {
    writes_per_sec: f64,
    cpu_us_per_write: f64,
    system_us_per_write: f64,
    late_ticks: u64,
}

/// The kernel floor for `conns` sockets: the writer is a child process, the
/// far ends are read and discarded here.
async fn floor(opts: &Opts, conns: usize) -> anyhow::Result<Floor> {
    let me = std::env::current_exe()?;
    // The far ends: a reader process of its own, which writes its port, and
    // when every connection has closed, the bytes it read.
    let port_file = opts.dir.join(format!("floor-read-{conns}.port"));
    let read_file = opts.dir.join(format!("floor-read-{conns}.out"));
    let _ = std::fs::remove_file(&port_file);
    let _ = std::fs::remove_file(&read_file);
    let mut cmd = Command::new(&me);
    cmd.arg("floor-read")
        .arg(conns.to_string())
        .arg((opts.hub_secs + 60.0).to_string())
        .arg(&port_file)
        .arg(&read_file);
    let mut reader = Proc::spawn(opts, "floor-read", cmd)?;
    let mut port = None;
    for _ in 0..200 {
        if let Some(p) = std::fs::read_to_string(&port_file)
            .ok()
            .and_then(|t| t.trim().parse::<u16>().ok())
        {
            port = Some(p);
            break;
        }
        if let Ok(Some(status)) = reader.child.try_wait() {
            bail!("the floor's reader exited ({status}); see floor-read.log");
        }
        sleep(Duration::from_millis(50)).await;
    }
    let port = port.context("the floor's reader gave no port in 10 s")?;
    let out = opts.dir.join(format!("floor-{conns}.out"));
    let _ = std::fs::remove_file(&out);
    let mut cmd = Command::new(&me);
    cmd.arg("floor-write")
        .arg(port.to_string())
        .arg(conns.to_string())
        .arg(HUB_RATE.to_string())
        .arg(opts.hub_secs.to_string())
        .arg(FLOOR_WRITE.to_string())
        .arg(opts.clk_tck.to_string())
        .arg(&out);
    let mut writer = Proc::spawn(opts, "floor", cmd)?;
    let deadline = Instant::now() + Duration::from_secs_f64(opts.hub_secs + 60.0);
    let status = loop {
        if let Some(status) = writer.child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            bail!("the floor's writer did not finish in time; see floor.log");
        }
        sleep(Duration::from_millis(20)).await;
    };
    drop(writer);
    let result = async {
        if !status.success() {
            bail!("the floor's writer failed ({status}); see floor.log");
        }
        let text = std::fs::read_to_string(&out)?;
        let f: Vec<f64> = text
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<_, _>>()?;
        let [writes, user, system, elapsed, late] = f[..] else {
            bail!("the floor's writer wrote {text:?}");
        };
        // Everything written was read: the reader ends when every
        // connection has closed.
        let expected = writes as u64 * FLOOR_WRITE as u64;
        let until = Instant::now() + Duration::from_secs(10);
        while reader.child.try_wait()?.is_none() && Instant::now() < until {
            sleep(Duration::from_millis(10)).await;
        }
        let got: u64 = std::fs::read_to_string(&read_file)
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .context("the floor's reader did not finish; see floor-read.log")?;
        if got != expected {
            bail!("the floor's readers got {got} of {expected} bytes");
        }
        if writes == 0.0 {
            bail!("the floor's writer wrote nothing");
        }
        Ok(Floor {
            writes_per_sec: writes / elapsed.max(1e-9),
            cpu_us_per_write: (user + system) * 1e6 / writes,
            system_us_per_write: system * 1e6 / writes,
            late_ticks: late as u64,
        })
    }
    .await;
    drop(reader);
    result
}

/// The kernel floor's reader (a child process): listen on 127.0.0.1:0 and
/// write the port to PORT_FILE; accept `CONNS` connections and read and
/// discard until each has closed, or for at most `SECS` seconds; then write
/// the bytes read to OUT.
fn floor_read(args: &[String]) -> anyhow::Result<()> {
    use tokio::io::AsyncReadExt;
    let arg = |i: usize, name: &str| args.get(i).with_context(|| name.to_string());
    let conns: usize = arg(0, "CONNS")?.parse()?;
    let secs: f64 = arg(1, "SECS")?.parse()?;
    let port_file = PathBuf::from(arg(2, "PORT_FILE")?);
    let out = PathBuf::from(arg(3, "OUT")?);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        let listener = socket.listen(4096)?;
        std::fs::write(&port_file, listener.local_addr()?.port().to_string())?;
        let read = Arc::new(AtomicU64::new(0));
        let mut readers = tokio::task::JoinSet::new();
        let work = async {
            let mut accepted = 0;
            while accepted < conns {
                match listener.accept().await {
                    Ok((mut tcp, _)) => {
                        accepted += 1;
                        let read = read.clone();
                        readers.spawn(async move {
                            let mut buf = vec![0u8; 2048];
                            while let Ok(n @ 1..) = tcp.read(&mut buf).await {
                                read.fetch_add(n as u64, Ordering::Relaxed);
                            }
                        });
                    }
                    Err(e) => {
                        eprintln!("floor-read: accept: {e}");
                        sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            while readers.join_next().await.is_some() {}
        };
        if timeout(Duration::from_secs_f64(secs), work).await.is_err() {
            eprintln!("floor-read: gave up after {secs} s");
        }
        std::fs::write(&out, read.load(Ordering::Relaxed).to_string())?;
        anyhow::Ok(())
    })
}

/// wsgate with three raw hub routes: `/hub` (the fan-out room), `/idle` (the
/// idle connections' room) and `/probe`; with `compression`, permessage-deflate
/// on all three (defaults: 256 B minimum, level 1) and an echo route `/echo`
/// with it too.
fn start_hub(opts: &Opts, compression: bool) -> anyhow::Result<Stack> {
    let port = free_port()?;
    let cert = opts.dir.join("cert.pem");
    let key = opts.dir.join("key.pem");
    let most = opts.hub_idle.max(*opts.hub_subs.last().unwrap_or(&0));
    let deflate = if compression {
        "compression = \"on\"\n"
    } else {
        ""
    };
    let route = |path: &str| {
        format!(
            "[[routes]]\npath = \"/{path}\"\nkind = \"hub\"\nprotocol = \"raw\"\n\
             channel = \"{path}\"\npublish_rate = 1000000000\npublish_burst = 1000000000\n\
             {deflate}\n"
        )
    };
    let echo = if compression {
        "[[routes]]\npath = \"/echo\"\nkind = \"echo\"\ncompression = \"on\"\n"
    } else {
        ""
    };
    let config = opts.dir.join("wsgate-hub.toml");
    std::fs::write(
        &config,
        format!(
            "[listen]\naddr = \"127.0.0.1:{port}\"\n\n[admin]\naddr = \"127.0.0.1:0\"\n\n\
             [tls]\ncert = {cert:?}\nkey = {key:?}\n\n[limits]\nmax_connections = {}\n\n{}{}{}{echo}",
            most + 1000,
            route("hub"),
            route("idle"),
            route("probe"),
        ),
    )?;
    let mut cmd = Command::new(&opts.wsgate);
    cmd.arg("--config").arg(&config);
    let mut p = Proc::spawn(opts, "wsgate-hub", cmd)?;
    wait_listening(port, &mut p)?;
    let measured = p.pid();
    Ok(Stack {
        procs: vec![p],
        addr: ([127, 0, 0, 1], port).into(),
        path: "/hub",
        measured,
    })
}

/// The table's cells: (row key, column) to the value of each repeat.
/// Column 0 is the floor, column 1 the hub.
#[derive(Default)]
struct HubResults {
    values: BTreeMap<(String, usize), Vec<f64>>,
}

impl HubResults {
    fn put(&mut self, key: String, col: usize, v: f64) {
        self.values.entry((key, col)).or_default().push(v);
    }
}

/// The floor for every subscriber count, then on one fresh wsgate: the idle
/// hub connections' memory, then the fan-out to every subscriber count (the
/// subscribers of one count stay for the next). The errors of the measures
/// that failed.
async fn measure_hub(opts: &Opts, ca: &Path, results: &mut HubResults) -> Vec<anyhow::Error> {
    let mut errors = Vec::new();
    let floors = if opts.memory_only {
        &[][..]
    } else {
        &opts.hub_subs[..]
    };
    for &n in floors {
        match floor(opts, n).await {
            Ok(f) => {
                results.put(format!("{n}:cpu"), 0, f.cpu_us_per_write);
                results.put(format!("{n}:sys"), 0, f.system_us_per_write);
                results.put(format!("{n}:rate"), 0, f.writes_per_sec);
                if f.late_ticks > 0 {
                    eprintln!(
                        "  floor, {n} sockets: {} ticks started late ({:.0} writes/s)",
                        f.late_ticks, f.writes_per_sec
                    );
                }
            }
            Err(e) => errors.push(e.context(format!("kernel floor, {n} sockets"))),
        }
    }
    let stack = match start_hub(opts, false) {
        Ok(s) => s,
        Err(e) => {
            errors.push(e.context("start wsgate with hub routes"));
            return errors;
        }
    };
    let pid = stack.measured;
    let client = |path: &str| -> anyhow::Result<Client> {
        Ok(Client::new(ca, stack.addr, path)?.with_read_buffer(HUB_READ_BUFFER))
    };
    let (hub, idle, probe) = match (client("/hub"), client("/idle"), client("/probe")) {
        (Ok(h), Ok(i), Ok(p)) => (h, i, p),
        _ => {
            errors.push(anyhow!("hub clients"));
            return errors;
        }
    };
    eprintln!("  hub: {} idle connections", opts.hub_idle);
    match hub_idle(opts, &idle, &probe, pid).await {
        Ok(m) => {
            results.put("idle:kib".into(), 1, m.kib);
            results.put("idle:opened".into(), 1, m.opened as f64);
            results.put("idle:failed".into(), 1, m.failed as f64);
        }
        Err(e) => errors.push(e.context("idle hub connections")),
    }
    if opts.memory_only {
        return errors;
    }
    // The idle connections are gone (dropped); let wsgate notice.
    sleep(Duration::from_millis(500)).await;
    let mut publisher = match hub.connect().await {
        Ok(ws) => ws,
        Err(e) => {
            errors.push(e.context("publisher"));
            return errors;
        }
    };
    let mut subs: Vec<Ws> = Vec::new();
    for &n in &opts.hub_subs {
        eprintln!("  hub fan-out to {n} subscribers");
        let (more, failed) = hub.connect_many(n - subs.len()).await;
        subs.extend(more);
        if failed > 0 {
            errors.push(anyhow!(
                "fan-out to {n}: {failed} subscribers failed to connect"
            ));
            break;
        }
        let (back, outcome) = fanout(opts, subs, &mut publisher, pid).await;
        subs = back;
        match outcome {
            Ok(f) => {
                results.put(format!("{n}:cpu"), 1, f.cpu_us_per_delivery);
                results.put(format!("{n}:sys"), 1, f.system_us_per_delivery);
                results.put(format!("{n}:rate"), 1, f.deliveries_per_sec);
                results.put(format!("{n}:p50"), 1, f.p50_ms);
                results.put(format!("{n}:p99"), 1, f.p99_ms);
                results.put(format!("{n}:lost"), 1, f.lost as f64);
                results.put(format!("{n}:reordered"), 1, f.reordered as f64);
                results.put(format!("{n}:expected"), 1, f.expected as f64);
                results.put(format!("{n}:closed"), 1, f.closed as f64);
                if f.closed > 0 {
                    errors.push(anyhow!(
                        "fan-out to {n}: {} subscribers were closed by the gateway",
                        f.closed
                    ));
                    break;
                }
            }
            Err(e) => {
                errors.push(e.context(format!("fan-out to {n}")));
                break;
            }
        }
        sleep(Duration::from_millis(300)).await;
    }
    drop(subs);
    drop(publisher);
    drop(stack);
    errors
}

struct HubIdle {
    kib: f64,
    opened: usize,
    failed: usize,
}

/// RSS per idle connection once the memory has settled: `opened`
/// connections since `before` (KiB).
async fn settled(pid: u32, before: u64, opened: usize, failed: usize) -> HubIdle {
    sleep(Duration::from_millis(300)).await;
    let after = rss_kib(pid);
    HubIdle {
        kib: after.saturating_sub(before) as f64 / opened as f64,
        opened,
        failed,
    }
}

/// RSS of wsgate per idle hub connection: `hub_idle` connections opened to a
/// raw room (none sends anything), then a round trip through another room
/// from a fresh connection (everything before it is set up).
async fn hub_idle(opts: &Opts, idle: &Client, probe: &Client, pid: u32) -> anyhow::Result<HubIdle> {
    let before = rss_kib(pid);
    let (conns, failed) = idle.connect_many(opts.hub_idle).await;
    if conns.is_empty() {
        bail!("no idle hub connection opened ({failed} failed)");
    }
    let mut a = probe.connect().await?;
    let mut b = probe.connect().await?;
    a.send(Message::Binary(Bytes::from_static(b"probe")))
        .await?;
    timeout(Duration::from_secs(10), async {
        loop {
            match b.next().await {
                Some(Ok(Message::Binary(_))) => return Ok(()),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(anyhow::Error::from(e)),
                None => bail!("probe closed"),
            }
        }
    })
    .await
    .context("no probe through the hub in 10 s")??;
    let idle = settled(pid, before, conns.len(), failed).await;
    drop((conns, a, b));
    Ok(idle)
}

struct Fanout {
    deliveries_per_sec: f64,
    cpu_us_per_delivery: f64,
    system_us_per_delivery: f64,
    p50_ms: f64,
    p99_ms: f64,
    expected: u64,
    lost: u64,
    reordered: u64,
    closed: u64,
}

/// What the subscribers of a fan-out measure counted.
struct Delivered {
    received: u64,
    expected: u64,
    reordered: u64,
    closed: u64,
}

impl Fanout {
    /// The figures of a fan-out measure: its deliveries, their latency
    /// `samples` (µs), and the gateway's CPU seconds (user, system) over
    /// `elapsed`.
    fn new<T: Copy + Into<f64> + Ord>(
        samples: &mut [T],
        delivered: Delivered,
        (cpu, system): (f64, f64),
        elapsed: Duration,
    ) -> Fanout {
        samples.sort_unstable();
        let pct = |q: f64| {
            samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)].into() / 1000.0
        };
        let received = delivered.received;
        Fanout {
            deliveries_per_sec: received as f64 / elapsed.as_secs_f64(),
            cpu_us_per_delivery: cpu * 1e6 / received as f64,
            system_us_per_delivery: system * 1e6 / received as f64,
            p50_ms: pct(0.50),
            p99_ms: pct(0.99),
            expected: delivered.expected,
            lost: delivered.expected.saturating_sub(received),
            reordered: delivered.reordered,
            closed: delivered.closed,
        }
    }
}

#[derive(Default)]
struct FanCtl {
    /// Subscribers that have seen a warm-up publish.
    ready: AtomicU64,
    /// Measured publishes delivered, over all subscribers.
    delivered: AtomicU64,
    stop: AtomicBool,
}

struct SubStats {
    received: u64,
    reordered: u64,
    /// Publish-to-delivery, µs.
    samples: Vec<u32>,
}

/// One subscriber: reads until it has every measured publish or is told to
/// stop; the connection back (none if the gateway closed it).
async fn subscriber(
    mut ws: Ws,
    ctl: Arc<FanCtl>,
    base: Instant,
    publishes: u64,
) -> (Option<Ws>, SubStats) {
    let mut stats = SubStats {
        received: 0,
        reordered: 0,
        samples: Vec::with_capacity(publishes as usize),
    };
    let (mut warmed, mut next) = (false, 0u64);
    // Bounded: at most every publish, and the stop flag is looked at every
    // 200 ms.
    while stats.received < publishes && !ctl.stop.load(Ordering::Relaxed) {
        // A frame already here is taken without arming a timer.
        let msg = match ws.next().now_or_never() {
            Some(msg) => msg,
            None => match timeout(Duration::from_millis(200), ws.next()).await {
                Ok(msg) => msg,
                Err(_) => continue,
            },
        };
        match msg {
            Some(Ok(Message::Binary(b))) if b.len() >= 16 => {
                let now = base.elapsed().as_nanos() as u64;
                let seq = u64::from_le_bytes(b[..8].try_into().expect("8 bytes"));
                let sent = u64::from_le_bytes(b[8..16].try_into().expect("8 bytes"));
                if seq == WARM {
                    if !warmed {
                        warmed = true;
                        ctl.ready.fetch_add(1, Ordering::Relaxed);
                    }
                    continue;
                }
                if seq < next {
                    stats.reordered += 1;
                } else {
                    next = seq + 1;
                }
                stats.received += 1;
                ctl.delivered.fetch_add(1, Ordering::Relaxed);
                stats
                    .samples
                    .push((now.saturating_sub(sent) / 1000).min(u32::MAX as u64) as u32);
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return (None, stats),
        }
    }
    (Some(ws), stats)
}

/// One publisher sends `HUB_RATE` publishes a second of `HUB_PAYLOAD` bytes
/// for `hub_secs` into the room of `subs`; every subscriber should get every
/// publish, in order. The gateway's CPU is taken from the first publish to
/// the last delivery.
async fn fanout(
    opts: &Opts,
    subs: Vec<Ws>,
    publisher: &mut Ws,
    pid: u32,
) -> (Vec<Ws>, anyhow::Result<Fanout>) {
    let n = subs.len() as u64;
    let publishes = (HUB_RATE * opts.hub_secs).round().max(1.0) as u64;
    let ctl = Arc::new(FanCtl::default());
    let base = Instant::now();
    let tasks: Vec<_> = subs
        .into_iter()
        .map(|ws| tokio::spawn(subscriber(ws, ctl.clone(), base, publishes)))
        .collect();
    let stamp = |seq: u64| {
        let mut payload = vec![0x5au8; HUB_PAYLOAD];
        payload[..8].copy_from_slice(&seq.to_le_bytes());
        payload[8..16].copy_from_slice(&(base.elapsed().as_nanos() as u64).to_le_bytes());
        Message::Binary(Bytes::from(payload))
    };
    let outcome = async {
        // Every subscriber is in the room: warm-up publishes until each has
        // seen one (at most 30 s).
        let until = Instant::now() + Duration::from_secs(30);
        while ctl.ready.load(Ordering::Relaxed) < n {
            if Instant::now() > until {
                bail!(
                    "only {} of {n} subscribers got a warm-up publish in 30 s",
                    ctl.ready.load(Ordering::Relaxed)
                );
            }
            publisher.send(stamp(WARM)).await?;
            sleep(Duration::from_millis(200)).await;
        }
        sleep(Duration::from_millis(300)).await;
        let (user0, sys0) = cpu_split(pid, opts.clk_tck);
        let t0 = Instant::now();
        let period = Duration::from_secs_f64(1.0 / HUB_RATE);
        for seq in 0..publishes {
            tokio::time::sleep_until(t0 + period.mul_f64(seq as f64)).await;
            publisher.send(stamp(seq)).await?;
        }
        // Every delivery, or 10 s after the last publish.
        let expected = n * publishes;
        let until = Instant::now() + Duration::from_secs(10);
        while ctl.delivered.load(Ordering::Relaxed) < expected && Instant::now() < until {
            sleep(Duration::from_millis(5)).await;
        }
        let (user1, sys1) = cpu_split(pid, opts.clk_tck);
        Ok((
            user1 + sys1 - user0 - sys0,
            sys1 - sys0,
            expected,
            t0.elapsed(),
        ))
    }
    .await;
    ctl.stop.store(true, Ordering::Relaxed);
    let mut back = Vec::with_capacity(tasks.len());
    let mut samples: Vec<u32> = Vec::new();
    let (mut received, mut reordered, mut closed) = (0u64, 0u64, 0u64);
    let joined = timeout(
        Duration::from_secs(20),
        futures_util::future::join_all(tasks),
    )
    .await;
    let Ok(joined) = joined else {
        return (back, Err(anyhow!("subscribers did not stop within 20 s")));
    };
    for (ws, stats) in joined.into_iter().flatten() {
        match ws {
            Some(ws) => back.push(ws),
            None => closed += 1,
        }
        received += stats.received;
        reordered += stats.reordered;
        samples.extend(stats.samples);
    }
    let result = outcome.and_then(|(cpu, system, expected, elapsed)| {
        if received == 0 {
            bail!("no publish was delivered");
        }
        let delivered = Delivered {
            received,
            expected,
            reordered,
            closed,
        };
        Ok(Fanout::new(&mut samples, delivered, (cpu, system), elapsed))
    });
    (back, result)
}

impl HubResults {
    /// The measures of `key` in column `col`, if any were taken.
    fn values(&self, key: &str, col: usize) -> Option<&Vec<f64>> {
        self.values
            .get(&(key.to_string(), col))
            .filter(|v| !v.is_empty())
    }

    /// Their median, and as printed: with the spread when there are several.
    fn cell(&self, key: &str, col: usize, digits: usize) -> (Option<f64>, String) {
        let Some(v) = self.values(key, col) else {
            return (None, "–".to_string());
        };
        let m = median(v);
        let mut s = fmt_num(m, digits);
        if v.len() > 1 {
            let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let _ = write!(s, " ({}–{})", fmt_num(lo, digits), fmt_num(hi, digits));
        }
        (Some(m), s)
    }

    /// Their sum over the repeats.
    fn sum(&self, key: &str, col: usize) -> Option<f64> {
        self.values(key, col).map(|v| v.iter().sum::<f64>())
    }
}

fn print_hub_table(opts: &Opts, results: &HubResults) {
    let (values, cell, sum) = (
        |key: &str, col: usize| results.values(key, col),
        |key: &str, col: usize, digits: usize| results.cell(key, col, digits),
        |key: &str, col: usize| results.sum(key, col),
    );
    println!();
    println!("| hub measure | kernel floor | wsgate hub | wsgate / floor |");
    println!("| --- | --- | --- | --- |");
    for &n in &opts.hub_subs {
        let rows = [
            (
                format!(
                    "hub fan-out, {} subscribers x {HUB_RATE} publishes/s x {HUB_PAYLOAD} B: \
                     CPU us per delivery (floor: per {FLOOR_WRITE} B write)",
                    fmt_num(n as f64, 0)
                ),
                "cpu",
                2,
                true,
            ),
            (
                "  same: of which system (kernel) CPU us".to_string(),
                "sys",
                2,
                true,
            ),
            (
                "  same: writes / deliveries per second achieved".to_string(),
                "rate",
                0,
                false,
            ),
            (
                "  same: publish-to-delivery p50 ms".to_string(),
                "p50",
                2,
                false,
            ),
            (
                "  same: publish-to-delivery p99 ms".to_string(),
                "p99",
                2,
                false,
            ),
        ];
        for (label, what, digits, ratio) in rows {
            let key = format!("{n}:{what}");
            let (f, ftext) = cell(&key, 0, digits);
            let (h, htext) = cell(&key, 1, digits);
            let r = match (h, f) {
                (Some(h), Some(f)) if ratio && f != 0.0 => format!("{:.2}", h / f),
                _ => "–".to_string(),
            };
            println!("| {} | {ftext} | {htext} | {r} |", label.trim_start());
        }
        let lost = match (
            sum(&format!("{n}:lost"), 1),
            sum(&format!("{n}:reordered"), 1),
            sum(&format!("{n}:expected"), 1),
        ) {
            (Some(l), Some(r), Some(e)) => {
                format!("{} / {} of {}", fmt_num(l, 0), fmt_num(r, 0), fmt_num(e, 0))
            }
            _ => "–".to_string(),
        };
        println!("| same: deliveries lost / reordered, all runs | | {lost} | |");
    }
    let (_, kib) = cell("idle:kib", 1, 1);
    println!(
        "| RSS KiB per idle hub connection ({} per run) | | {kib} | |",
        fmt_num(opts.hub_idle as f64, 0)
    );
    let opened = values("idle:opened", 1).map_or("–".to_string(), |v| {
        v.iter()
            .map(|x| fmt_num(*x, 0))
            .collect::<Vec<_>>()
            .join(", ")
    });
    let failed = sum("idle:failed", 1).map_or("–".to_string(), |f| fmt_num(f, 0));
    println!(
        "| idle hub connections opened per run (failed in all runs) | | {opened} ({failed}) | |"
    );
    println!(
        "\nidle hub connections: {opened} opened of {} per run, {failed} failed in all runs.",
        fmt_num(opts.hub_idle as f64, 0)
    );
    println!(
        "\nHub: medians of {} run(s), (min–max) when repeated. Kernel floor = a plain blocking \
         loop in its own process writing one {FLOOR_WRITE}-byte write to each of N loopback TCP \
         sockets {HUB_RATE} times a second for {} s (the far ends read and discard in a reader process \
         of their own); its utime+stime per write. wsgate hub = a fresh wsgate ({} tokio workers) \
         with a raw hub room; N subscribers over wss and one publisher in the load generator; \
         {HUB_RATE} publishes/s of {HUB_PAYLOAD} B (send time stamped in the payload) for {} s; \
         wsgate's utime+stime from the first publish to the last delivery / deliveries (N x \
         publishes; lost = not delivered within 10 s of the last publish; reordered = a publish \
         older than one already delivered to that subscriber). The rates achieved show whether \
         the machine kept up: where the floor could not write 100 x N a second it ran for the \
         same seconds at the rate it could; where wsgate could not, frames queued and left in \
         fewer, larger writes, so its CPU per delivery can fall below the floor's one write per \
         delivery. Each subscriber count is measured on the same process, subscribers added \
         from one count to the next. Idle: RSS delta of a fresh wsgate / idle connections \
         opened to a raw room that never sends.{}",
        opts.repeats,
        opts.hub_secs,
        opts.workers,
        opts.hub_secs,
        if opts.quick {
            " QUICK MODE: too short and too small to mean much."
        } else {
            ""
        }
    );
}

// ---------------------------------------------------------------- compression

/// What a sender strips from a flushed deflate block and the receiver puts
/// back (RFC 7692 §7.2.1).
const DEFLATE_TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];
/// What browsers offer.
const DEFLATE_OFFER: &str = "permessage-deflate; client_max_window_bits";
/// Connections and messages in flight on each of the compression echo measure.
const DEFLATE_ECHO: (usize, usize) = (16, 8);
/// Publishes per second in the compression fan-out: a tenth of the hub
/// table's, so that the two cores keep up with 1 KiB publishes to the
/// largest subscriber count (and with its TLS readers in the load generator),
/// with and without compression; at 100/s neither run kept up with 10,000
/// subscribers, and CPU per delivery at saturation measures batching.
const DEFLATE_HUB_RATE: f64 = 10.0;
/// Replies inflated and compared: the first, then one in this many.
const INFLATE_EVERY: u64 = 32;

/// A WebSocket client of the load generator's own, frames written and read
/// here: tokio-tungstenite knows no permessage-deflate (nor RSV1), and the
/// compression measures count the bytes of every frame. Both sides of a
/// comparison use it, with and without the offer.
struct RawWs {
    io: tokio_rustls::client::TlsStream<TcpStream>,
    read: bytes::BytesMut,
    out: Vec<u8>,
    /// permessage-deflate agreed.
    deflate: bool,
    mask: u32,
    /// WebSocket bytes (frame headers and payloads) written and read.
    wire_out: u64,
    wire_in: u64,
}

/// A data frame as it came: RSV1 (compressed), the payload (not inflated),
/// and its bytes on the wire.
struct RawFrame {
    opcode: u8,
    rsv1: bool,
    payload: Bytes,
    wire: usize,
}

impl Client {
    /// A session over this client's TLS, through a handshake of our own:
    /// offering permessage-deflate as browsers do if `offer`. Fails when an
    /// offer was not agreed, or the 101 names an extension not offered.
    async fn connect_raw(&self, offer: bool) -> anyhow::Result<RawWs> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let fut = async {
            let tcp = TcpStream::connect(self.addr).await?;
            tcp.set_nodelay(true)?;
            let mut io = self
                .connector
                .connect(ServerName::try_from("localhost")?, tcp)
                .await?;
            let extension = if offer {
                format!("Sec-WebSocket-Extensions: {DEFLATE_OFFER}\r\n")
            } else {
                String::new()
            };
            let request = format!(
                "GET {} HTTP/1.1\r\nHost: localhost:{}\r\nUpgrade: websocket\r\n\
                 Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                 Sec-WebSocket-Version: 13\r\n{extension}\r\n",
                self.path,
                self.addr.port()
            );
            io.write_all(request.as_bytes()).await?;
            io.flush().await?;
            let mut read = bytes::BytesMut::with_capacity(self.read_buffer);
            let end = loop {
                if let Some(at) = read.windows(4).position(|w| w == b"\r\n\r\n") {
                    break at + 4;
                }
                if read.len() > 16 * 1024 || io.read_buf(&mut read).await? == 0 {
                    bail!("no complete 101 response");
                }
            };
            let head = read.split_to(end);
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut response = httparse::Response::new(&mut headers);
            response.parse(&head)?;
            if response.code != Some(101) {
                bail!("handshake answered {:?}", response.code);
            }
            let agreed: Vec<String> = response
                .headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case("sec-websocket-extensions"))
                .map(|h| String::from_utf8_lossy(h.value).into_owned())
                .collect();
            let deflate = agreed
                .iter()
                .any(|v| v.trim_start().starts_with("permessage-deflate"));
            if offer && !deflate {
                bail!("permessage-deflate offered and not agreed (101 extensions: {agreed:?})");
            }
            if !offer && !agreed.is_empty() {
                bail!("no extension offered, and the 101 names {agreed:?}");
            }
            anyhow::Ok(RawWs {
                io,
                read,
                out: Vec::new(),
                deflate,
                mask: 0x9e37_79b9,
                wire_out: 0,
                wire_in: 0,
            })
        };
        timeout(Duration::from_secs(10), fut)
            .await
            .context("connect timed out")?
    }

    /// `connect_raw`, `n` times, 64 handshakes at a time; the sessions and
    /// the errors (the first one kept).
    async fn connect_many_raw(
        &self,
        n: usize,
        offer: bool,
    ) -> (Vec<RawWs>, usize, Option<anyhow::Error>) {
        let mut out = Vec::with_capacity(n);
        let (mut failed, mut first) = (0, None);
        let mut start = 0;
        while start < n {
            let end = (start + 64).min(n);
            let batch =
                futures_util::future::join_all((start..end).map(|_| self.connect_raw(offer))).await;
            for r in batch {
                match r {
                    Ok(ws) => out.push(ws),
                    Err(e) => {
                        failed += 1;
                        first.get_or_insert(e);
                    }
                }
            }
            start = end;
        }
        (out, failed, first)
    }
}

impl RawWs {
    /// Queue one masked client frame (FIN set; RSV1 when `rsv1`).
    fn queue(&mut self, opcode: u8, rsv1: bool, payload: &[u8]) {
        let start = self.out.len();
        self.out
            .push(0x80 | if rsv1 { 0x40 } else { 0 } | (opcode & 0x0f));
        let len = payload.len();
        if len < 126 {
            self.out.push(0x80 | len as u8);
        } else if len <= 0xffff {
            self.out.push(0x80 | 126);
            self.out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            self.out.push(0x80 | 127);
            self.out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        self.mask = self
            .mask
            .wrapping_mul(1_664_525)
            .wrapping_add(1_013_904_223);
        let key = self.mask.to_be_bytes();
        self.out.extend_from_slice(&key);
        self.out
            .extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i & 3]));
        self.wire_out += (self.out.len() - start) as u64;
    }

    /// Write out what is queued.
    async fn flush(&mut self) -> anyhow::Result<()> {
        use tokio::io::AsyncWriteExt;
        if !self.out.is_empty() {
            self.io.write_all(&self.out).await?;
            self.out.clear();
        }
        self.io.flush().await?;
        Ok(())
    }

    /// A whole frame from what has been read, if there is one; pings are
    /// answered (queued), pongs skipped, a Close or a fragment fails.
    fn parse(&mut self) -> anyhow::Result<Option<RawFrame>> {
        loop {
            let b = &self.read[..];
            if b.len() < 2 {
                return Ok(None);
            }
            if b[1] & 0x80 != 0 {
                bail!("a masked server frame");
            }
            let (len, at) = match b[1] & 0x7f {
                126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
                127 if b.len() >= 10 => (
                    u64::from_be_bytes(b[2..10].try_into().expect("8 bytes")) as usize,
                    10,
                ),
                126 | 127 => return Ok(None),
                n => (n as usize, 2),
            };
            if b.len() - at < len {
                return Ok(None);
            }
            let (first, wire) = (b[0], at + len);
            let mut frame = self.read.split_to(wire);
            self.wire_in += wire as u64;
            let payload = frame.split_off(at).freeze();
            let opcode = first & 0x0f;
            match opcode {
                0x9 => self.queue(0xa, false, &payload),
                0xa => {}
                0x8 => {
                    let code = payload.get(..2).map(|c| u16::from_be_bytes([c[0], c[1]]));
                    bail!("closed by the server ({code:?})");
                }
                _ if first & 0x80 == 0 || opcode == 0 => {
                    bail!("a fragmented message (not expected from wsgate here)")
                }
                _ => {
                    let rsv1 = first & 0x40 != 0;
                    if rsv1 && !self.deflate {
                        bail!("RSV1 without permessage-deflate agreed");
                    }
                    return Ok(Some(RawFrame {
                        opcode,
                        rsv1,
                        payload,
                        wire,
                    }));
                }
            }
        }
    }

    /// The next data frame (cancel-safe: only reads wait).
    async fn next(&mut self) -> anyhow::Result<RawFrame> {
        use tokio::io::AsyncReadExt;
        loop {
            if let Some(frame) = self.parse()? {
                return Ok(frame);
            }
            if self.io.read_buf(&mut self.read).await? == 0 {
                bail!("closed by the server (no Close)");
            }
        }
    }
}

/// `message` compressed as a browser compresses one without context (raw
/// deflate, zlib's default level, sync flush, the tail stripped).
fn deflate_message(message: &[u8]) -> Vec<u8> {
    let mut c = flate2::Compress::new(flate2::Compression::default(), false);
    let mut out = Vec::with_capacity(message.len() + 64);
    loop {
        let input = &message[c.total_in() as usize..];
        c.compress_vec(input, &mut out, flate2::FlushCompress::Sync)
            .expect("deflate");
        if c.total_in() as usize == message.len() && out.len() < out.capacity() {
            break;
        }
        out.reserve(1024);
    }
    assert!(
        out.ends_with(&DEFLATE_TAIL),
        "a sync flush ends with its tail"
    );
    out.truncate(out.len() - DEFLATE_TAIL.len());
    out
}

thread_local! {
    /// One inflater per load generator thread (a miniz_oxide inflater holds
    /// about 40 KiB: one per subscriber would be 400 MB at 10,000).
    static INFLATER: std::cell::RefCell<flate2::Decompress> =
        std::cell::RefCell::new(flate2::Decompress::new(false));
}

/// A compressed message inflated (the tail put back).
fn inflate_message(compressed: &[u8]) -> anyhow::Result<Vec<u8>> {
    INFLATER.with(|d| inflate_with(&mut d.borrow_mut(), compressed))
}

fn inflate_with(d: &mut flate2::Decompress, compressed: &[u8]) -> anyhow::Result<Vec<u8>> {
    d.reset(false);
    let mut input = Vec::with_capacity(compressed.len() + DEFLATE_TAIL.len());
    input.extend_from_slice(compressed);
    input.extend_from_slice(&DEFLATE_TAIL);
    let mut out = Vec::with_capacity(compressed.len() * 4 + 64);
    loop {
        let (in0, out0) = (d.total_in(), out.len());
        let status = d.decompress_vec(
            &input[d.total_in() as usize..],
            &mut out,
            flate2::FlushDecompress::Sync,
        )?;
        let done = d.total_in() as usize == input.len();
        if status == flate2::Status::StreamEnd || (done && out.len() < out.capacity()) {
            return Ok(out);
        }
        if out.len() == out.capacity() {
            out.reserve(4096);
        } else if d.total_in() == in0 && out.len() == out0 {
            bail!("the compressed message does not inflate");
        }
    }
}

/// The start (about `max` bytes) of a compressed message: enough to read a
/// field near the start without inflating all of it.
fn inflate_prefix(compressed: &[u8], max: usize) -> anyhow::Result<Vec<u8>> {
    INFLATER.with(|d| {
        let mut d = d.borrow_mut();
        d.reset(false);
        let mut out = Vec::with_capacity(max);
        d.decompress_vec(compressed, &mut out, flate2::FlushDecompress::None)?;
        Ok(out)
    })
}

/// A deterministic JSON document of about `size` bytes, `{"items":[...]}`
/// after `head` (which carries its own opening): trade-like objects with
/// repeated keys, varied numbers and short strings.
fn json_message(head: &str, size: usize) -> String {
    const SYMS: [&str; 8] = [
        "AAPL", "MSFT", "NVDA", "AMZN", "GOOG", "META", "TSLA", "AVGO",
    ];
    const VENUES: [&str; 4] = ["XNAS", "XNYS", "BATS", "ARCX"];
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut rand = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut s = format!("{head}\"type\":\"trades\",\"items\":[");
    let mut first = true;
    while s.len() + 120 < size {
        if !first {
            s.push(',');
        }
        first = false;
        let r = rand();
        let _ = write!(
            s,
            "{{\"id\":{},\"sym\":\"{}\",\"px\":{}.{:02},\"qty\":{},\"side\":\"{}\",\
             \"venue\":\"{}\",\"ts\":{}}}",
            1_000_000 + r % 9_000_000,
            SYMS[(r >> 24) as usize % SYMS.len()],
            50 + (r >> 28) % 400,
            (r >> 40) % 100,
            (1 + (r >> 44) % 50) * 100,
            if (r >> 50) & 1 == 0 { "buy" } else { "sell" },
            VENUES[(r >> 52) as usize % VENUES.len()],
            1_700_000_000_000u64 + (r >> 20) % 10_000_000,
        );
    }
    s.push_str("]}");
    s
}

/// The echo measure's message: about 1 KiB of JSON.
fn echo_json() -> String {
    json_message("{", 1024)
}

struct DeflateEcho {
    msgs_per_sec: f64,
    cpu_us_per_msg: f64,
    system_us_per_msg: f64,
    /// WebSocket bytes per message, client to server and back.
    out_per_msg: f64,
    in_per_msg: f64,
    /// Replies received, and of them compressed (RSV1).
    replies: u64,
    compressed: u64,
}

/// Counts of one connection's part of `deflate_echo`.
#[derive(Default)]
struct EchoCounts {
    sent: u64,
    received: u64,
    compressed: u64,
    wire_out: u64,
    wire_in: u64,
}

/// `DEFLATE_ECHO` connections to `/echo` (compression on), offering
/// permessage-deflate or not, each keeping messages of `echo_json` in
/// flight; after the warm-up, count echoes and wsgate's CPU for `secs`.
async fn deflate_echo(
    opts: &Opts,
    client: &Client,
    pid: u32,
    offer: bool,
) -> anyhow::Result<DeflateEcho> {
    let (conns, in_flight) = DEFLATE_ECHO;
    let (streams, failed, first) = client.connect_many_raw(conns, offer).await;
    if let Some(e) = first {
        return Err(e.context(format!("{failed} of {conns} connections failed")));
    }
    let message = Arc::new(echo_json().into_bytes());
    let compressed = Arc::new(deflate_message(&message));
    let shared = Arc::new(Shared::default());
    let tasks: Vec<_> = streams
        .into_iter()
        .map(|ws| {
            tokio::spawn(raw_pipeline(
                ws,
                shared.clone(),
                message.clone(),
                compressed.clone(),
                in_flight,
            ))
        })
        .collect();
    let window = measure(opts, &shared.received, pid, None).await;
    shared.stop.store(true, Ordering::Relaxed);
    let joined = timeout(
        Duration::from_secs(20),
        futures_util::future::join_all(tasks),
    )
    .await
    .context("connections did not finish within 20 s of the stop")?;
    let mut all = EchoCounts::default();
    for r in joined {
        let c = r??;
        all.sent += c.sent;
        all.received += c.received;
        all.compressed += c.compressed;
        all.wire_out += c.wire_out;
        all.wire_in += c.wire_in;
    }
    let n = window.count;
    if n == 0 || all.received == 0 {
        bail!("no echoes in the measured window");
    }
    if offer && all.compressed == 0 {
        bail!("permessage-deflate agreed, and no reply came compressed");
    }
    Ok(DeflateEcho {
        msgs_per_sec: n as f64 / window.elapsed.as_secs_f64(),
        cpu_us_per_msg: (window.user + window.system) * 1e6 / n as f64,
        system_us_per_msg: window.system * 1e6 / n as f64,
        out_per_msg: all.wire_out as f64 / all.sent as f64,
        in_per_msg: all.wire_in as f64 / all.received as f64,
        replies: all.received,
        compressed: all.compressed,
    })
}

/// One connection's part of `deflate_echo`: sends `message` as a text frame,
/// compressed (`compressed`, RSV1) where the extension was agreed, and
/// checks every reply: a plain one is the message, a compressed one (RSV1)
/// inflates to it (the first and one in `INFLATE_EVERY` inflated).
async fn raw_pipeline(
    mut ws: RawWs,
    shared: Arc<Shared>,
    message: Arc<Vec<u8>>,
    compressed: Arc<Vec<u8>>,
    in_flight: usize,
) -> anyhow::Result<EchoCounts> {
    let (mut sent, mut received, mut in_compressed) = (0u64, 0u64, 0u64);
    loop {
        let stopping = shared.stop.load(Ordering::Relaxed) || sent >= MAX_MSGS_PER_CONN;
        if stopping && sent == received {
            break;
        }
        if !stopping {
            while sent - received < in_flight as u64 {
                match ws.deflate {
                    true => ws.queue(0x1, true, &compressed),
                    false => ws.queue(0x1, false, &message),
                }
                sent += 1;
            }
        }
        ws.flush().await?;
        let mut frame = Some(
            timeout(Duration::from_secs(10), ws.next())
                .await
                .context("no echo for 10 s")??,
        );
        while let Some(f) = frame {
            if f.opcode != 0x1 {
                bail!("a reply of opcode {} to a text message", f.opcode);
            }
            if sent == received {
                bail!("an echo nobody sent");
            }
            if f.rsv1 {
                if received.is_multiple_of(INFLATE_EVERY) {
                    let inflated = inflate_message(&f.payload)?;
                    if inflated != message[..] {
                        bail!(
                            "a compressed echo inflated to {} bytes, not the {} sent",
                            inflated.len(),
                            message.len()
                        );
                    }
                }
                in_compressed += 1;
            } else if f.payload[..] != message[..] {
                bail!(
                    "an echo of {} bytes came back as {} other bytes",
                    message.len(),
                    f.payload.len()
                );
            }
            received += 1;
            shared.received.fetch_add(1, Ordering::Relaxed);
            // Take every echo already read before sending more.
            frame = ws.parse()?;
        }
    }
    Ok(EchoCounts {
        sent,
        received,
        compressed: in_compressed,
        wire_out: ws.wire_out,
        wire_in: ws.wire_in,
    })
}

/// RSS of wsgate per idle hub connection, as `hub_idle` measures it, with
/// clients of our own that offer permessage-deflate or not.
async fn deflate_idle(
    opts: &Opts,
    idle: &Client,
    probe: &Client,
    pid: u32,
    offer: bool,
) -> anyhow::Result<HubIdle> {
    let before = rss_kib(pid);
    let (conns, failed, first) = idle.connect_many_raw(opts.hub_idle, offer).await;
    if conns.is_empty() {
        let e = first.unwrap_or_else(|| anyhow!("none asked for"));
        return Err(e.context(format!("no idle connection opened ({failed} failed)")));
    }
    if let Some(e) = first.filter(|_| offer) {
        // An offer not agreed fails the measure; a full descriptor table
        // only shortens it (as in `hub_idle`).
        if format!("{e:#}").contains("not agreed") {
            return Err(e);
        }
    }
    let mut a = probe.connect_raw(offer).await?;
    let mut b = probe.connect_raw(offer).await?;
    a.queue(0x2, false, b"probe");
    a.flush().await?;
    timeout(Duration::from_secs(10), b.next())
        .await
        .context("no probe through the hub in 10 s")??;
    let idle = settled(pid, before, conns.len(), failed).await;
    drop((conns, a, b));
    Ok(idle)
}

/// Offsets of the fixed-width hex fields in a fan-out publish:
/// `{"seq":"<16 hex>","sent":"<16 hex>",...`.
const SEQ_AT: usize = 8;
const SENT_AT: usize = 34;

/// A fan-out publish: about 1 KiB of JSON, its sequence number and send
/// time (ns since `base`) in fixed-width hex fields at its start.
fn publish_json(body: &str, seq: u64, sent: u64) -> Vec<u8> {
    let mut text = format!("{{\"seq\":\"{seq:016x}\",\"sent\":\"{sent:016x}\",").into_bytes();
    debug_assert_eq!(&text[SEQ_AT - 1..SEQ_AT], b"\"");
    text.extend_from_slice(body.as_bytes());
    text
}

/// (seq, sent) of a publish.
fn publish_stamp(text: &[u8]) -> anyhow::Result<(u64, u64)> {
    let field = |at: usize| -> anyhow::Result<u64> {
        let hex = text.get(at..at + 16).context("a publish too short")?;
        Ok(u64::from_str_radix(std::str::from_utf8(hex)?, 16)?)
    };
    Ok((field(SEQ_AT)?, field(SENT_AT)?))
}

/// What one compression fan-out subscriber saw.
struct RawSubStats {
    stats: SubStats,
    /// Measured deliveries that came compressed (RSV1), and their wire bytes.
    compressed: u64,
    wire: u64,
}

/// One subscriber of `deflate_fanout`: `subscriber` with our own client.
/// Of a compressed publish only the start is inflated (its stamp); the
/// first measured publish and one in `INFLATE_EVERY` after it are inflated
/// whole and compared with what was published.
async fn raw_subscriber(
    mut ws: RawWs,
    ctl: Arc<FanCtl>,
    base: Instant,
    publishes: u64,
    body: Arc<String>,
) -> (Option<RawWs>, anyhow::Result<RawSubStats>) {
    let mut out = RawSubStats {
        stats: SubStats {
            received: 0,
            reordered: 0,
            samples: Vec::with_capacity(publishes as usize),
        },
        compressed: 0,
        wire: 0,
    };
    let (mut warmed, mut next) = (false, 0u64);
    while out.stats.received < publishes && !ctl.stop.load(Ordering::Relaxed) {
        let frame = match ws.parse() {
            Ok(Some(f)) => f,
            Ok(None) => match timeout(Duration::from_millis(200), ws.next()).await {
                Ok(Ok(f)) => f,
                Ok(Err(_)) => return (None, Ok(out)),
                Err(_) => {
                    // Pongs to pings the server sent, if any.
                    if ws.flush().await.is_err() {
                        return (None, Ok(out));
                    }
                    continue;
                }
            },
            Err(_) => return (None, Ok(out)),
        };
        let now = base.elapsed().as_nanos() as u64;
        let stamp = if frame.rsv1 {
            inflate_prefix(&frame.payload, 64).and_then(|t| publish_stamp(&t))
        } else {
            publish_stamp(&frame.payload)
        };
        let (seq, sent) = match stamp {
            Ok(s) => s,
            Err(e) => return (Some(ws), Err(e.context("a publish that does not read"))),
        };
        if seq != WARM && out.stats.received.is_multiple_of(INFLATE_EVERY) {
            let whole = match frame.rsv1 {
                true => inflate_message(&frame.payload),
                false => Ok(frame.payload.to_vec()),
            };
            match whole {
                Ok(w) if w == publish_json(&body, seq, sent) => {}
                Ok(w) => {
                    let e = anyhow!("publish {seq} came as {} other bytes", w.len());
                    return (Some(ws), Err(e));
                }
                Err(e) => return (Some(ws), Err(e.context("a publish that does not inflate"))),
            }
        }
        if seq == WARM {
            if !warmed {
                warmed = true;
                ctl.ready.fetch_add(1, Ordering::Relaxed);
            }
            continue;
        }
        if seq < next {
            out.stats.reordered += 1;
        } else {
            next = seq + 1;
        }
        out.stats.received += 1;
        out.compressed += frame.rsv1 as u64;
        out.wire += frame.wire as u64;
        ctl.delivered.fetch_add(1, Ordering::Relaxed);
        out.stats
            .samples
            .push((now.saturating_sub(sent) / 1000).min(u32::MAX as u64) as u32);
    }
    (Some(ws), Ok(out))
}

struct DeflateFanout {
    fan: Fanout,
    /// The load generator's own CPU per delivery (its TLS readers and
    /// inflaters share the two cores with wsgate).
    client_us_per_delivery: f64,
    /// Measured deliveries that came compressed.
    compressed: u64,
    wire_per_delivery: f64,
}

/// `fanout` with subscribers of our own (offering permessage-deflate or
/// not, as they were connected) and a plain publisher, publishing about
/// 1 KiB of JSON as text.
async fn deflate_fanout(
    opts: &Opts,
    subs: Vec<RawWs>,
    publisher: &mut RawWs,
    pid: u32,
) -> anyhow::Result<DeflateFanout> {
    let n = subs.len() as u64;
    let publishes = (DEFLATE_HUB_RATE * opts.hub_secs).round().max(1.0) as u64;
    let ctl = Arc::new(FanCtl::default());
    let base = Instant::now();
    let body = Arc::new(json_message("", 1024 - 52));
    let tasks: Vec<_> = subs
        .into_iter()
        .map(|ws| {
            tokio::spawn(raw_subscriber(
                ws,
                ctl.clone(),
                base,
                publishes,
                body.clone(),
            ))
        })
        .collect();
    let publish = |ws: &mut RawWs, seq: u64| {
        let text = publish_json(&body, seq, base.elapsed().as_nanos() as u64);
        ws.queue(0x1, false, &text);
    };
    let outcome = async {
        let until = Instant::now() + Duration::from_secs(30);
        while ctl.ready.load(Ordering::Relaxed) < n {
            if Instant::now() > until {
                bail!(
                    "only {} of {n} subscribers got a warm-up publish in 30 s",
                    ctl.ready.load(Ordering::Relaxed)
                );
            }
            publish(publisher, WARM);
            publisher.flush().await?;
            sleep(Duration::from_millis(200)).await;
        }
        sleep(Duration::from_millis(300)).await;
        let (user0, sys0) = cpu_split(pid, opts.clk_tck);
        let (me0, mes0) = proc_cpu(std::process::id(), opts.clk_tck);
        let t0 = Instant::now();
        let period = Duration::from_secs_f64(1.0 / DEFLATE_HUB_RATE);
        for seq in 0..publishes {
            tokio::time::sleep_until(t0 + period.mul_f64(seq as f64)).await;
            publish(publisher, seq);
            publisher.flush().await?;
        }
        let expected = n * publishes;
        let until = Instant::now() + Duration::from_secs(10);
        while ctl.delivered.load(Ordering::Relaxed) < expected && Instant::now() < until {
            sleep(Duration::from_millis(5)).await;
        }
        let (user1, sys1) = cpu_split(pid, opts.clk_tck);
        let (me1, mes1) = proc_cpu(std::process::id(), opts.clk_tck);
        Ok((
            user1 + sys1 - user0 - sys0,
            sys1 - sys0,
            expected,
            t0.elapsed(),
            me1 + mes1 - me0 - mes0,
        ))
    }
    .await;
    ctl.stop.store(true, Ordering::Relaxed);
    let joined = timeout(
        Duration::from_secs(20),
        futures_util::future::join_all(tasks),
    )
    .await
    .map_err(|_| anyhow!("subscribers did not stop within 20 s"))?;
    let (cpu, system, expected, elapsed, client_cpu) = outcome?;
    let mut samples: Vec<u32> = Vec::new();
    let (mut received, mut reordered, mut closed) = (0u64, 0u64, 0u64);
    let (mut compressed, mut wire) = (0u64, 0u64);
    for r in joined {
        let (ws, stats) = r?;
        let stats = stats?;
        closed += ws.is_none() as u64;
        received += stats.stats.received;
        reordered += stats.stats.reordered;
        compressed += stats.compressed;
        wire += stats.wire;
        samples.extend(stats.stats.samples);
    }
    if received == 0 {
        bail!("no publish was delivered");
    }
    if closed > 0 {
        bail!("{closed} subscribers were closed by the gateway");
    }
    let delivered = Delivered {
        received,
        expected,
        reordered,
        closed,
    };
    Ok(DeflateFanout {
        fan: Fanout::new(&mut samples, delivered, (cpu, system), elapsed),
        compressed,
        wire_per_delivery: wire as f64 / received as f64,
        client_us_per_delivery: client_cpu * 1e6 / received as f64,
    })
}

/// The compression table's measures, column 0 without the extension and 1
/// with it: the idle memory of hub connections, each on a fresh wsgate with
/// compression on; then on the first of the two, the 1 KiB JSON echo and the
/// fan-out to the largest subscriber count (which of the two goes first
/// alternates from one repeat to the next). The errors of the measures that
/// failed.
async fn measure_deflate(
    opts: &Opts,
    ca: &Path,
    repeat: usize,
    results: &mut HubResults,
) -> Vec<anyhow::Error> {
    let mut errors = Vec::new();
    let mut kept = None;
    for (col, offer) in [(0, false), (1, true)] {
        let what = if offer { "with" } else { "without" };
        let stack = match start_hub(opts, true) {
            Ok(s) => s,
            Err(e) => {
                errors.push(e.context("start wsgate with compression on"));
                return errors;
            }
        };
        let client = |path: &str| -> anyhow::Result<Client> {
            Ok(Client::new(ca, stack.addr, path)?.with_read_buffer(HUB_READ_BUFFER))
        };
        let (idle, probe) = match (client("/idle"), client("/probe")) {
            (Ok(i), Ok(p)) => (i, p),
            _ => {
                errors.push(anyhow!("hub clients"));
                return errors;
            }
        };
        eprintln!(
            "  compression: {} idle connections {what} permessage-deflate",
            opts.hub_idle
        );
        match deflate_idle(opts, &idle, &probe, stack.measured, offer).await {
            Ok(m) => {
                results.put("idle:kib".into(), col, m.kib);
                results.put("idle:opened".into(), col, m.opened as f64);
                results.put("idle:failed".into(), col, m.failed as f64);
            }
            Err(e) => errors.push(e.context(format!("idle connections {what} compression"))),
        }
        if kept.is_none() {
            kept = Some(stack);
        }
    }
    if let (Some(a), Some(b)) = (
        results.values.get(&("idle:kib".to_string(), 0)),
        results.values.get(&("idle:kib".to_string(), 1)),
    ) && a.len() == b.len()
        && let (Some(a), Some(b)) = (a.last(), b.last())
    {
        results.put("idle:diff".into(), 1, b - a);
    }
    let Some(stack) = kept else {
        return errors;
    };
    if opts.memory_only {
        return errors;
    }
    sleep(Duration::from_millis(500)).await;
    let pid = stack.measured;
    let client = |path: &str| -> anyhow::Result<Client> {
        Ok(Client::new(ca, stack.addr, path)?.with_read_buffer(HUB_READ_BUFFER))
    };
    let (echo, hub) = match (client("/echo"), client("/hub")) {
        (Ok(e), Ok(h)) => (e, h),
        _ => {
            errors.push(anyhow!("compression clients"));
            return errors;
        }
    };
    for (col, offer) in [(0, false), (1, true)] {
        let what = if offer { "with" } else { "without" };
        eprintln!("  compression: 1 KiB JSON echo {what} permessage-deflate");
        match deflate_echo(opts, &echo, pid, offer).await {
            Ok(e) => {
                results.put("echo:rate".into(), col, e.msgs_per_sec);
                results.put("echo:cpu".into(), col, e.cpu_us_per_msg);
                results.put("echo:sys".into(), col, e.system_us_per_msg);
                results.put("echo:out".into(), col, e.out_per_msg);
                results.put("echo:in".into(), col, e.in_per_msg);
                results.put("echo:replies".into(), col, e.replies as f64);
                results.put("echo:compressed".into(), col, e.compressed as f64);
            }
            Err(e) => errors.push(e.context(format!("1 KiB JSON echo {what} compression"))),
        }
        sleep(Duration::from_millis(300)).await;
    }
    let n = *opts.hub_subs.last().unwrap_or(&1);
    let order = match repeat % 2 {
        0 => [(0, false), (1, true)],
        _ => [(1, true), (0, false)],
    };
    for (col, offer) in order {
        let what = if offer { "with" } else { "without" };
        eprintln!("  compression: hub fan-out to {n} subscribers {what} permessage-deflate");
        let (subs, failed, first) = hub.connect_many_raw(n, offer).await;
        if let Some(e) = first {
            errors.push(e.context(format!(
                "fan-out {what} compression: {failed} of {n} subscribers failed to connect"
            )));
            continue;
        }
        let mut publisher = match hub.connect_raw(false).await {
            Ok(ws) => ws,
            Err(e) => {
                errors.push(e.context("publisher"));
                continue;
            }
        };
        match deflate_fanout(opts, subs, &mut publisher, pid).await {
            Ok(f) if offer && f.compressed != f.fan.expected - f.fan.lost => {
                errors.push(anyhow!(
                    "fan-out with compression: {} of {} deliveries came compressed (RSV1)",
                    f.compressed,
                    f.fan.expected - f.fan.lost
                ));
            }
            Ok(f) => {
                let key = |what: &str| format!("fan:{what}");
                results.put(key("cpu"), col, f.fan.cpu_us_per_delivery);
                results.put(key("sys"), col, f.fan.system_us_per_delivery);
                results.put(key("rate"), col, f.fan.deliveries_per_sec);
                results.put(key("wire"), col, f.wire_per_delivery);
                results.put(key("client"), col, f.client_us_per_delivery);
                results.put(key("p50"), col, f.fan.p50_ms);
                results.put(key("p99"), col, f.fan.p99_ms);
                results.put(key("lost"), col, f.fan.lost as f64);
                results.put(key("reordered"), col, f.fan.reordered as f64);
                results.put(key("expected"), col, f.fan.expected as f64);
            }
            Err(e) => errors.push(e.context(format!("fan-out to {n} {what} compression"))),
        }
        drop(publisher);
        sleep(Duration::from_millis(500)).await;
    }
    drop(stack);
    errors
}

fn print_deflate_table(opts: &Opts, results: &HubResults) {
    let (values, cell, sum) = (
        |key: &str, col: usize| results.values(key, col),
        |key: &str, col: usize, digits: usize| results.cell(key, col, digits),
        |key: &str, col: usize| results.sum(key, col),
    );
    let n = *opts.hub_subs.last().unwrap_or(&1);
    let (conns, in_flight) = DEFLATE_ECHO;
    let echo_len = echo_json().len();
    let pub_len = publish_json(&json_message("", 1024 - 52), 0, 0).len();
    println!();
    println!("| compression measure | plain | permessage-deflate | deflate / plain |");
    println!("| --- | --- | --- | --- |");
    let rows = [
        (
            format!("echo {echo_len} B JSON text, {conns} conns x {in_flight} in flight: msg/s"),
            "echo:rate",
            0,
        ),
        (
            "  same: wsgate CPU us per message".to_string(),
            "echo:cpu",
            2,
        ),
        (
            "  same: of which system (kernel) CPU us".to_string(),
            "echo:sys",
            2,
        ),
        (
            "  same: WebSocket bytes per message, client to wsgate".to_string(),
            "echo:out",
            0,
        ),
        (
            "  same: WebSocket bytes per message, wsgate to client".to_string(),
            "echo:in",
            0,
        ),
        (
            format!(
                "RSS KiB per idle hub connection ({} per run, fresh wsgate each)",
                fmt_num(opts.hub_idle as f64, 0)
            ),
            "idle:kib",
            1,
        ),
        (
            format!(
                "hub fan-out, {} subscribers x {DEFLATE_HUB_RATE} publishes/s x {pub_len} B JSON text: \
                 CPU us per delivery",
                fmt_num(n as f64, 0)
            ),
            "fan:cpu",
            2,
        ),
        (
            "  same: of which system (kernel) CPU us".to_string(),
            "fan:sys",
            2,
        ),
        (
            "  same: deliveries per second achieved".to_string(),
            "fan:rate",
            0,
        ),
        (
            "  same: WebSocket bytes per delivery".to_string(),
            "fan:wire",
            0,
        ),
        (
            "  same: load generator CPU us per delivery (not wsgate's)".to_string(),
            "fan:client",
            2,
        ),
        (
            "  same: publish-to-delivery p50 ms".to_string(),
            "fan:p50",
            2,
        ),
        (
            "  same: publish-to-delivery p99 ms".to_string(),
            "fan:p99",
            2,
        ),
    ];
    for (label, key, digits) in rows {
        let (p, ptext) = cell(key, 0, digits);
        let (d, dtext) = cell(key, 1, digits);
        let r = match (d, p) {
            (Some(d), Some(p)) if p != 0.0 => format!("{:.2}", d / p),
            _ => "–".to_string(),
        };
        println!("| {} | {ptext} | {dtext} | {r} |", label.trim_start());
        if key == "echo:in" {
            let share = |col: usize| match (sum("echo:compressed", col), sum("echo:replies", col)) {
                (Some(c), Some(r)) => format!("{} of {}", fmt_num(c, 0), fmt_num(r, 0)),
                _ => "–".to_string(),
            };
            println!(
                "| same: replies compressed (RSV1), all runs | {} | {} | |",
                share(0),
                share(1)
            );
        }
        if key == "idle:kib" {
            let (_, diff) = cell("idle:diff", 1, 1);
            println!("| same: with minus without the extension, KiB | | {diff} | |");
            let opened = |col: usize| {
                let opened = values("idle:opened", col).map_or("–".to_string(), |v| {
                    v.iter()
                        .map(|x| fmt_num(*x, 0))
                        .collect::<Vec<_>>()
                        .join(", ")
                });
                let failed = sum("idle:failed", col).map_or("–".to_string(), |f| fmt_num(f, 0));
                format!("{opened} ({failed})")
            };
            println!(
                "| idle connections opened per run (failed in all runs) | {} | {} | |",
                opened(0),
                opened(1)
            );
        }
    }
    let lost = |col: usize| match (
        sum("fan:lost", col),
        sum("fan:reordered", col),
        sum("fan:expected", col),
    ) {
        (Some(l), Some(r), Some(e)) => {
            format!("{} / {} of {}", fmt_num(l, 0), fmt_num(r, 0), fmt_num(e, 0))
        }
        _ => "–".to_string(),
    };
    println!(
        "| same: deliveries lost / reordered, all runs | {} | {} | |",
        lost(0),
        lost(1)
    );
    println!(
        "\nCompression: medians of {} run(s), (min–max) when repeated. wsgate ({} tokio workers) \
         with `compression = \"on\"` (defaults: level 1, 256 B minimum) on an echo route and on \
         raw hub rooms; the load generator's own WebSocket client (rustls) either offers \
         `{DEFLATE_OFFER}` (as browsers do; the 101 must agree it) or offers nothing. Echo: one \
         deterministic JSON document (an array of trade-like objects) sent as text, compressed \
         by the client where agreed (raw deflate, zlib's default level, no context, RSV1); \
         every plain reply compared, compressed replies checked for RSV1 and one in \
         {INFLATE_EVERY} inflated and compared; CPU is wsgate's utime+stime over the measured {} s \
         after {} s of warm-up; bytes are WebSocket frame headers + payloads as sent and received \
         (TLS not counted). Idle: RSS delta of a fresh wsgate / idle connections opened to a raw \
         room that never sends (a second fresh wsgate for the other column). Fan-out: one plain \
         publisher, {DEFLATE_HUB_RATE} JSON publishes/s (sequence and send time in fixed-width fields) \
         for {} s to N subscribers that offered the extension or not, on one wsgate after the \
         echo (which of the two goes first alternates between repeats); with it, every delivery must come compressed (RSV1) and is inflated by its \
         subscriber; CPU from the first publish to the last delivery / deliveries. Targets \
         (the goals): the idle difference within 1 KiB; fan-out CPU per delivery with \
         compression <= 1.5x without.{}",
        opts.repeats,
        opts.workers,
        opts.secs,
        opts.warmup,
        opts.hub_secs,
        if opts.quick {
            " QUICK MODE: too short and too small to mean much."
        } else {
            ""
        }
    );
}
