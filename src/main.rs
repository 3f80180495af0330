//! The `wsgate` binary: parse the command line, load the config (exit 64 if
//! it is bad), bind, run, drain, exit.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio::net::TcpListener;
use tracing::{error, info, warn};
use tracing_subscriber::EnvFilter;
use wsgate::{Config, ConfigSource, Listeners, devcert, shutdown};

/// Exit status for a configuration error (EX_CONFIG would be 78; 64 is EX_USAGE,
/// which init systems and wrappers treat as "do not restart").
const EXIT_CONFIG: u8 = 64;

#[derive(Debug, Parser)]
#[command(name = "wsgate", version, about = "TLS-terminating WebSocket gateway")]
struct Cli {
    /// Config file [default: config/wsgate.toml, else the built-in default]
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway (the default).
    Run,
    /// Validate the config (and its certificates) and print the effective config.
    CheckConfig,
    /// Probe an admin endpoint: exit 0 on 200, 1 otherwise (for container
    /// HEALTHCHECKs and exec probes in images without curl).
    Health {
        /// Plain http:// URL to GET.
        #[arg(long, default_value = "http://127.0.0.1:9090/healthz")]
        url: String,
    },
    /// Connect to a WebSocket URL: stdin lines become messages, messages
    /// received go to stdout, events to stderr.
    #[command(after_help = wsgate::client::EXIT_CODES_HELP)]
    Client(wsgate::client::ClientArgs),
    /// Write a development CA and a leaf certificate as PEM.
    GenCert {
        /// DNS name or IP address the certificate is for (repeatable).
        #[arg(long = "host", required = true)]
        hosts: Vec<String>,
        /// Output directory: ca.pem, cert.pem (leaf + CA), key.pem.
        #[arg(long, default_value = "certs")]
        out: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colour only for a person at a terminal, not for journald or a file.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let source = match &cli.config {
        Some(path) => ConfigSource::File(path),
        None => ConfigSource::Default,
    };
    match cli.command.unwrap_or(Command::Run) {
        Command::GenCert { hosts, out } => report(gen_cert(&hosts, &out)),
        Command::CheckConfig => check_config(source),
        Command::Health { url } => health(&url),
        Command::Client(args) => wsgate::client::main(args),
        Command::Run => {
            let config = match load(source) {
                Ok(config) => config,
                Err(code) => return code,
            };
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(e) => return report(Err(e.into())),
            };
            report(runtime.block_on(serve(config, cli.config.clone())))
        }
    }
}

fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Load and validate, and check the certificates too: everything that can
/// be wrong in a config is found before anything is bound.
fn load(source: ConfigSource<'_>) -> Result<Config, ExitCode> {
    let config = Config::load(source, None).map_err(|e| {
        eprintln!("{e}");
        ExitCode::from(EXIT_CONFIG)
    })?;
    if config.dev_cert_needed() {
        let (cert, key) = (&config.tls.default.cert, &config.tls.default.key);
        let made = devcert::generate(
            &devcert::DEFAULT_HOSTS
                .iter()
                .map(|h| h.to_string())
                .collect::<Vec<_>>(),
        )
        .map_err(anyhow::Error::from)
        .and_then(|c| {
            c.write(cert, key)
                .context("writing the development certificate")
        });
        match made {
            Ok(w) => warn!(
                cert = %w.cert.display(), key = %w.key.display(), ca = %w.ca.display(),
                "!!! GENERATED A SELF-SIGNED DEVELOPMENT CERTIFICATE (tls.self_signed_if_missing = true). \
                 Clients must trust the CA file to connect. Never use this in production !!!"
            ),
            Err(e) => {
                eprintln!("tls.cert: {e:#}");
                return Err(ExitCode::from(EXIT_CONFIG));
            }
        }
    }
    if let Err(e) = wsgate::preflight(&config) {
        eprintln!("{e}");
        return Err(ExitCode::from(EXIT_CONFIG));
    }
    Ok(config)
}

fn check_config(source: ConfigSource<'_>) -> ExitCode {
    let config = match Config::load(source, None) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if config.dev_cert_needed() {
        eprintln!(
            "note: tls.cert and tls.key are missing; a development certificate will be generated at start-up"
        );
    } else if let Err(e) = wsgate::preflight(&config) {
        eprintln!("{e}");
        return ExitCode::from(EXIT_CONFIG);
    }
    // A closed stdout (`| head`) is not an error worth a panic.
    let _ = write!(std::io::stdout(), "{config}");
    ExitCode::SUCCESS
}

fn health(url: &str) -> ExitCode {
    let probe = async {
        let uri: http::Uri = url.parse().context("not a URL")?;
        let authority = uri
            .authority()
            .context("the URL has no host")?
            .as_str()
            .to_owned();
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let mut tcp = tokio::net::TcpStream::connect(&authority).await?;
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
        tokio::io::AsyncWriteExt::write_all(&mut tcp, request.as_bytes()).await?;
        let mut head = [0u8; 12];
        tokio::io::AsyncReadExt::read_exact(&mut tcp, &mut head).await?;
        anyhow::Ok(head.starts_with(b"HTTP/1.1 200") || head.starts_with(b"HTTP/1.0 200"))
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let healthy = runtime.map_err(anyhow::Error::from).and_then(|rt| {
        rt.block_on(async { tokio::time::timeout(std::time::Duration::from_secs(3), probe).await })
            .unwrap_or_else(|_| Err(anyhow::anyhow!("timed out")))
    });
    match healthy {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("{url}: not 200");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("{url}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn gen_cert(hosts: &[String], out: &std::path::Path) -> anyhow::Result<()> {
    let cert = devcert::generate(hosts)?;
    let written = cert.write(&out.join("cert.pem"), &out.join("key.pem"))?;
    println!(
        "wrote {} (trust this), {} (leaf + CA), {}",
        written.ca.display(),
        written.cert.display(),
        written.key.display()
    );
    Ok(())
}

/// Raise the soft limit on open files to the hard limit and say what it
/// allows: a relayed session holds two descriptors (client and upstream).
fn descriptor_budget(max_connections: usize) {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => {
            let sessions = limit.saturating_sub(64) / 2;
            info!(
                limit,
                relayed_sessions = sessions,
                "open-file limit (a relayed session needs two descriptors)"
            );
            if (max_connections as u64) > sessions {
                warn!(
                    limit,
                    max_connections,
                    "limits.max_connections cannot be met for relayed sessions: raise the open-file hard limit (LimitNOFILE, ulimit -Hn)"
                );
            }
        }
        Err(e) => warn!(error = %e, "cannot read or raise the open-file limit"),
    }
}

async fn serve(config: Config, source: Option<PathBuf>) -> anyhow::Result<()> {
    descriptor_budget(config.limits.max_connections);
    let public = bind(config.listen.addr)
        .with_context(|| format!("listen.addr: cannot bind {}", config.listen.addr))?;
    let admin = bind(config.admin.addr)
        .with_context(|| format!("admin.addr: cannot bind {}", config.admin.addr))?;
    let metrics = wsgate::metrics::install();

    // First SIGTERM/SIGINT: drain. Second: exit at once.
    let (first, drained) = tokio::sync::oneshot::channel::<()>();
    let mut signals = shutdown::Signals::default();
    tokio::spawn(async move {
        signals.next().await;
        let _ = first.send(());
        signals.next().await;
        warn!("second signal: exiting without waiting for sessions");
        std::process::exit(1);
    });
    // SIGHUP: read the config file again and hand it over to be applied.
    let (reload, reloads) = tokio::sync::mpsc::channel(1);
    #[cfg(unix)]
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hangups) = signal(SignalKind::hangup()) else {
            return;
        };
        while hangups.recv().await.is_some() {
            let source = match &source {
                Some(path) => ConfigSource::File(path),
                None => ConfigSource::Default,
            };
            match Config::load(source, None) {
                Ok(config) => {
                    let _ = reload.send(config).await;
                }
                Err(e) => {
                    wsgate::metrics::config_reload(wsgate::close::Reload::Invalid);
                    error!("reload refused, keeping the running configuration: {e}");
                }
            }
        }
    });
    wsgate::run_with_reload(
        Listeners { public, admin },
        config,
        metrics,
        async {
            let _ = drained.await;
        },
        reloads,
    )
    .await?;
    Ok(())
}

/// Bind with `SO_REUSEADDR` and `SO_REUSEPORT`: a new wsgate can start on
/// the same port while the old one drains (graceful restart).
fn bind(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    #[cfg(unix)]
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}
