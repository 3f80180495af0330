//! The `wsgate` binary: parse the command line, load the config (exit 64 if
//! it is bad), bind, run, drain, exit.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio::net::TcpListener;
use tracing::{error, warn};
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
        Command::Run => {
            let config = match load(source) {
                Ok(config) => config,
                Err(code) => return code,
            };
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(e) => return report(Err(e.into())),
            };
            report(runtime.block_on(serve(config)))
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

async fn serve(config: Config) -> anyhow::Result<()> {
    let public = TcpListener::bind(config.listen.addr)
        .await
        .with_context(|| format!("listen.addr: cannot bind {}", config.listen.addr))?;
    let admin = TcpListener::bind(config.admin.addr)
        .await
        .with_context(|| format!("admin.addr: cannot bind {}", config.admin.addr))?;
    let metrics = wsgate::metrics::install();

    // First signal: drain. Second signal: exit at once.
    let (first, drained) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        shutdown::signal().await;
        let _ = first.send(());
        shutdown::signal().await;
        warn!("second signal: exiting without waiting for sessions");
        std::process::exit(1);
    });
    wsgate::run(Listeners { public, admin }, config, metrics, async {
        let _ = drained.await;
    })
    .await?;
    Ok(())
}
