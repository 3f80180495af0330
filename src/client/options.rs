//! The command line of `wsgate client`, and what it builds.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use http::{HeaderName, HeaderValue};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use super::dial::{Dialer, Failure, tls_config};
use super::exit::Exit;
use crate::config::EgressProxy;
use crate::names::HostPattern;

/// `wsgate client URL [OPTIONS]`.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// ws:// or wss:// URL to connect to.
    pub url: String,
    /// Send each stdin line as a binary message (default: text).
    #[arg(long)]
    pub binary: bool,
    /// Reconnect after a drop or a failed attempt, first after DELAY
    /// (default 3s when given without a value).
    #[arg(long, value_name = "DELAY", num_args = 0..=1, default_missing_value = "3s", value_parser = duration)]
    pub reconnect: Option<Duration>,
    /// With --reconnect: double the delay after each failed attempt, with
    /// jitter, up to --backoff-max.
    #[arg(long, requires = "reconnect")]
    pub backoff: bool,
    /// The longest delay --backoff reaches.
    #[arg(long, value_name = "DELAY", default_value = "60s", value_parser = duration)]
    pub backoff_max: Duration,
    /// HTTP proxy to tunnel through with CONNECT: http://[user:pass@]host:port
    /// [default: $HTTPS_PROXY for wss://, $HTTP_PROXY for ws://, minus $NO_PROXY]
    #[arg(long, value_name = "URL")]
    pub proxy: Option<String>,
    /// Ignore HTTPS_PROXY, HTTP_PROXY and NO_PROXY.
    #[arg(long)]
    pub no_env_proxy: bool,
    /// Trust the CA certificates in this PEM file (instead of the system's).
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Do not verify the server's certificate (testing only).
    #[arg(long)]
    pub insecure: bool,
    /// Extra request header, "Name: value" (repeatable).
    #[arg(long = "header", short = 'H', value_name = "K:V")]
    pub headers: Vec<String>,
    /// Offer this subprotocol (repeatable, in order of preference).
    #[arg(long = "subprotocol", value_name = "NAME")]
    pub subprotocols: Vec<String>,
    /// Origin header to send.
    #[arg(long)]
    pub origin: Option<String>,
    /// Send a ping this often; no pong by the next one ends the session.
    #[arg(long, value_name = "INTERVAL", value_parser = duration)]
    pub ping: Option<Duration>,
    /// Close (1000) and exit after receiving N messages.
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    /// Close and exit after the first message received (--count 1).
    #[arg(long, conflicts_with = "count")]
    pub once: bool,
    /// Deadline for TCP, proxy, TLS and the WebSocket handshake together.
    #[arg(long, value_name = "DELAY", default_value = "10s", value_parser = duration)]
    pub connect_timeout: Duration,
    /// Largest message accepted from the server.
    #[arg(long, value_name = "SIZE", default_value = "16MiB", value_parser = crate::config::parse_size)]
    pub max_message_size: usize,
}

fn duration(s: &str) -> Result<Duration, String> {
    crate::config::parse_duration(s)
}

impl ClientArgs {
    pub(crate) fn count(&self) -> Option<u64> {
        if self.once { Some(1) } else { self.count }
    }

    /// A person at a terminal on both ends: keep incoming lines apart from
    /// what is being typed.
    pub(crate) fn interactive(&self) -> bool {
        std::io::stdin().is_terminal() && std::io::stdout().is_terminal()
    }

    pub(crate) fn reconnect_delay(&self) -> Option<Duration> {
        self.reconnect
    }

    pub(crate) fn next_delay(&self, delay: Duration) -> Duration {
        match self.backoff {
            true => (delay * 2).min(self.backoff_max.max(delay)),
            false => delay,
        }
    }

    /// With --backoff, a random wait in [delay/2, delay] (so clients that
    /// dropped together do not come back together); else the delay itself.
    pub(crate) fn jittered(&self, delay: Duration) -> Duration {
        match self.backoff {
            true => delay.mul_f64(0.5 + rand::random::<f64>() * 0.5),
            false => delay,
        }
    }

    pub(crate) fn dialer(&self) -> Result<Dialer, Failure> {
        let (mut request, host, port, tls) = Dialer::request(&self.url)?;
        let headers = request.headers_mut();
        for line in &self.headers {
            let (name, value) = header(line)?;
            headers.append(name, value);
        }
        if let Some(origin) = &self.origin {
            headers.insert(http::header::ORIGIN, value(origin)?);
        }
        if !self.subprotocols.is_empty() {
            let offer = value(&self.subprotocols.join(", "))?;
            headers.insert(http::header::SEC_WEBSOCKET_PROTOCOL, offer);
        }
        let tls = match tls {
            true => Some(tls_config(self.ca.as_deref(), self.insecure)?),
            false => None,
        };
        let ws = WebSocketConfig::default()
            .max_message_size(Some(self.max_message_size))
            .max_frame_size(Some(self.max_message_size));
        Ok(Dialer {
            request,
            proxy: self.proxy(tls.is_some())?,
            host,
            port,
            tls,
            timeout: self.connect_timeout,
            ws,
        })
    }

    /// --proxy, else the environment's proxy for this scheme (unless
    /// --no-env-proxy), minus NO_PROXY.
    fn proxy(&self, tls: bool) -> Result<Option<EgressProxy>, Failure> {
        let env = |names: &[&str]| {
            names
                .iter()
                .find_map(|n| std::env::var(n).ok().filter(|v| !v.trim().is_empty()))
        };
        let (url, from_env) = match (&self.proxy, self.no_env_proxy) {
            (Some(url), _) => (url.clone(), false),
            (None, true) => return Ok(None),
            (None, false) => {
                let names: &[&str] = match tls {
                    true => &["HTTPS_PROXY", "https_proxy"],
                    false => &["HTTP_PROXY", "http_proxy"],
                };
                match env(names) {
                    Some(url) => (url, true),
                    None => return Ok(None),
                }
            }
        };
        let no_proxy = match self.no_env_proxy {
            true => Vec::new(),
            false => no_proxy(&env(&["NO_PROXY", "no_proxy"]).unwrap_or_default()),
        };
        if !self.no_env_proxy && from_env_star() {
            return Ok(None);
        }
        let what = if from_env {
            "the proxy from the environment"
        } else {
            "--proxy"
        };
        EgressProxy::parse(url.trim(), no_proxy)
            .map(Some)
            .map_err(|e| Failure::new(Exit::Other, format!("{what} {url:?}: {e}")))
    }
}

/// NO_PROXY=* bypasses the proxy for every host.
fn from_env_star() -> bool {
    ["NO_PROXY", "no_proxy"]
        .iter()
        .filter_map(|n| std::env::var(n).ok())
        .any(|v| v.split(',').any(|e| e.trim() == "*"))
}

/// NO_PROXY as curl reads it: comma-separated names (each also covering
/// the names below it, with or without a leading dot), addresses, networks.
fn no_proxy(list: &str) -> Vec<HostPattern> {
    let mut out = Vec::new();
    for entry in list
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty() && *e != "*")
    {
        let name = entry.trim_start_matches("*.").trim_start_matches('.');
        if let Ok(p) = HostPattern::parse(name) {
            let is_name = matches!(p, HostPattern::Name(_));
            out.push(p);
            if is_name && let Ok(below) = HostPattern::parse(&format!("*.{name}")) {
                out.push(below);
            }
        }
    }
    out
}

fn header(line: &str) -> Result<(HeaderName, HeaderValue), Failure> {
    let bad = || {
        Failure::new(
            Exit::Other,
            format!("--header {line:?}: expected \"Name: value\""),
        )
    };
    let (name, v) = line.split_once(':').ok_or_else(bad)?;
    let name = HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| bad())?;
    Ok((name, value(v.trim())?))
}

fn value(v: &str) -> Result<HeaderValue, Failure> {
    HeaderValue::from_str(v)
        .map_err(|_| Failure::new(Exit::Other, format!("{v:?}: not a valid header value")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_proxy_covers_names_below_and_networks() {
        let list = no_proxy("localhost, .corp.example, 10.0.0.0/8, *");
        let hit = |h: &str| list.iter().any(|p| p.matches_name(h));
        assert!(hit("localhost"));
        assert!(hit("corp.example") && hit("a.b.corp.example"));
        assert!(hit("10.1.2.3"));
        assert!(!hit("example.com") && !hit("xcorp.example"));
    }

    #[test]
    fn backoff_doubles_to_its_cap_with_jitter_below_the_delay() {
        let mut args = ClientArgs {
            url: "wss://h/".into(),
            binary: false,
            reconnect: Some(Duration::from_secs(1)),
            backoff: true,
            backoff_max: Duration::from_secs(5),
            proxy: None,
            no_env_proxy: true,
            ca: None,
            insecure: false,
            headers: vec![],
            subprotocols: vec![],
            origin: None,
            ping: None,
            count: None,
            once: false,
            connect_timeout: Duration::from_secs(1),
            max_message_size: 1 << 20,
        };
        let delays: Vec<u64> =
            std::iter::successors(Some(Duration::from_secs(1)), |d| Some(args.next_delay(*d)))
                .take(5)
                .map(|d| d.as_secs())
                .collect();
        assert_eq!(delays, [1, 2, 4, 5, 5]);
        for _ in 0..100 {
            let j = args.jittered(Duration::from_secs(4));
            assert!(
                j >= Duration::from_secs(2) && j <= Duration::from_secs(4),
                "{j:?}"
            );
        }
        args.backoff = false;
        assert_eq!(
            args.next_delay(Duration::from_secs(3)),
            Duration::from_secs(3)
        );
        assert_eq!(
            args.jittered(Duration::from_secs(3)),
            Duration::from_secs(3)
        );
    }
}
