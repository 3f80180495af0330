//! Configuration: one TOML file plus `WSGATE__SECTION__KEY` environment
//! overrides, read as raw serde structs and turned into a validated, typed
//! [`Config`].
//!
//! Raw values are read as strings and parsed here, so that one pass reports
//! every problem at once, each naming its key (`limits.idle_timeout: ...`).
//! Unknown keys are collected the same way instead of stopping at the first.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Where `wsgate` looks for its config when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "config/wsgate.toml";
/// The shipped `config/wsgate.toml`, compiled in: used when the default path
/// does not exist, so the binary runs from any directory.
pub const EMBEDDED_DEFAULT: &str = include_str!("../config/wsgate.toml");
/// Prefix of environment overrides: `WSGATE__LIMITS__IDLE_TIMEOUT=60s`.
pub const ENV_PREFIX: &str = "WSGATE";

pub const DEFAULT_LISTEN_ADDR: &str = "0.0.0.0:8443";
pub const DEFAULT_ADMIN_ADDR: &str = "127.0.0.1:9090";
pub const DEFAULT_MAX_CONNECTIONS: usize = 100_000;
pub const DEFAULT_HANDSHAKE_RATE: f64 = 10_000.0;
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(30);
pub const DEFAULT_SEND_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 16 << 20;
pub const DEFAULT_MAX_FRAME_SIZE: usize = 16 << 20;
pub const DEFAULT_MAX_HEADER_SIZE: usize = 16 << 10;
pub const DEFAULT_MAX_HEADERS: usize = 100;

/// The validated configuration the gateway runs on.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: ListenConfig,
    pub tls: TlsConfig,
    pub admin: AdminConfig,
    pub limits: Limits,
    pub hub: HubConfig,
    pub tunnel: TunnelConfig,
    pub routes: Vec<Route>,
}

/// Settings of the pub/sub hub shared by every hub route: channels are one
/// namespace across routes and the HTTP API.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Bearer tokens accepted by the HTTP API; empty: the API is off.
    pub api_tokens: Vec<String>,
    /// Messages a channel keeps for `since` resume.
    pub history_size: usize,
    /// How long a kept message stays resumable.
    pub history_ttl: Duration,
    /// Most channels at once (subscribed or holding history).
    pub max_channels: usize,
}

pub const DEFAULT_HUB_HISTORY_SIZE: usize = 100;
pub const DEFAULT_HUB_HISTORY_TTL: Duration = Duration::from_secs(300);
pub const DEFAULT_HUB_MAX_CHANNELS: usize = 10_000;

#[derive(Debug, Clone)]
pub struct ListenConfig {
    /// Public `wss://` listener.
    pub addr: SocketAddr,
    /// Accept HTTP `CONNECT` on the same port, in plaintext and inside TLS.
    pub connect_tunnel: bool,
}

/// HTTP `CONNECT` into the gateway (`[tunnel]`).
#[derive(Debug, Clone)]
pub struct TunnelConfig {
    /// Extra names that mean this gateway (besides `localhost`, loopback and
    /// listen addresses, and the `[[tls.sni]]` hosts).
    pub names: Vec<String>,
    /// Targets other than the gateway itself that may be tunnelled to.
    pub allow: Vec<AllowRule>,
    /// `Proxy-Authorization: Basic` credentials; empty: none required.
    pub users: Vec<(String, String)>,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
}

/// `host:port`, `*.suffix:port`, `10.1.0.0/16:port`; the port may be `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowRule {
    pub host: HostPattern,
    /// `None`: any port.
    pub port: Option<u16>,
}

/// A host name, a `*.suffix` wildcard (one or more labels), or an IP network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    Name(String),
    Suffix(String),
    Net(IpAddr, u8),
}

impl HostPattern {
    pub fn parse(s: &str) -> Result<HostPattern, String> {
        let s = s
            .trim()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        if let Some((ip, len)) = s.split_once('/') {
            let ip: IpAddr = ip
                .parse()
                .map_err(|_| format!("{s:?}: not an IP network"))?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            let len: u8 = len
                .parse()
                .ok()
                .filter(|l| *l <= max)
                .ok_or(format!("{s:?}: bad prefix length"))?;
            return Ok(HostPattern::Net(ip, len));
        }
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(HostPattern::Net(ip, if ip.is_ipv4() { 32 } else { 128 }));
        }
        match s.strip_prefix("*.") {
            Some(suffix) => {
                check_host_pattern(suffix).map(|_| HostPattern::Suffix(suffix.to_owned()))
            }
            None => check_host_pattern(&s).map(|_| HostPattern::Name(s.clone())),
        }
    }

    /// Does the name (as asked for) match?
    pub fn matches_name(&self, host: &str) -> bool {
        match self {
            HostPattern::Name(n) => n == host,
            HostPattern::Suffix(suffix) => host
                .strip_suffix(suffix.as_str())
                .is_some_and(|rest| rest.ends_with('.')),
            HostPattern::Net(..) => host.parse::<IpAddr>().is_ok_and(|ip| self.matches_ip(ip)),
        }
    }

    pub fn matches_ip(&self, ip: IpAddr) -> bool {
        let HostPattern::Net(net, len) = self else {
            return false;
        };
        match (net, canonical(ip)) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(*len)).unwrap_or(0);
                u32::from(*n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(*len)).unwrap_or(0);
                u128::from(*n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

impl AllowRule {
    pub fn parse(s: &str) -> Result<AllowRule, String> {
        let (host, port) = s
            .rsplit_once(':')
            .ok_or(format!("{s:?}: expected host:port"))?;
        let port = match port {
            "*" => None,
            p => Some(p.parse::<u16>().map_err(|_| format!("{s:?}: bad port"))?),
        };
        Ok(AllowRule {
            host: HostPattern::parse(host)?,
            port,
        })
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Name(n) => f.write_str(n),
            HostPattern::Suffix(s) => write!(f, "*.{s}"),
            HostPattern::Net(IpAddr::V4(ip), len) => write!(f, "{ip}/{len}"),
            HostPattern::Net(IpAddr::V6(ip), len) => write!(f, "[{ip}/{len}]"),
        }
    }
}

impl fmt::Display for AllowRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.port {
            Some(port) => write!(f, "{}:{port}", self.host),
            None => write!(f, "{}:*", self.host),
        }
    }
}

pub const DEFAULT_TUNNEL_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_TUNNEL_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// An egress HTTP proxy for an upstream route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressProxy {
    /// As written, password hidden: for logs.
    pub display: String,
    pub host: String,
    pub port: u16,
    /// `Proxy-Authorization` value, if the URL carried user:password.
    pub authorization: Option<String>,
    /// Members whose host matches one of these are dialled directly.
    pub no_proxy: Vec<HostPattern>,
}

impl EgressProxy {
    pub fn parse(url: &str, no_proxy: &[String]) -> Result<EgressProxy, String> {
        let uri: http::Uri = url.parse().map_err(|e| format!("not a URL: {e}"))?;
        if uri.scheme_str() != Some("http") {
            return Err("must be an http:// proxy URL".into());
        }
        let authority = uri.authority().ok_or("has no host")?;
        let (userinfo, hostport) = match authority.as_str().rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority.as_str()),
        };
        let hostport: http::uri::Authority = hostport.parse().map_err(|_| "bad host")?;
        let authorization = userinfo.map(|u| {
            use base64::Engine;
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(u)
            )
        });
        let host = hostport
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = hostport.port_u16().unwrap_or(3128);
        let no_proxy = no_proxy
            .iter()
            .map(|p| HostPattern::parse(p))
            .collect::<Result<_, _>>()?;
        Ok(EgressProxy {
            display: format!("http://{}:{port}", hostport.host()),
            host,
            port,
            authorization,
            no_proxy,
        })
    }

    /// Should `host` be reached through this proxy?
    pub fn applies_to(&self, host: &str) -> bool {
        !self.no_proxy.iter().any(|p| p.matches_name(host))
    }
}

#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// The default certificate: served when no `[[tls.sni]]` entry matches.
    pub default: CertPair,
    /// Extra certificates chosen by the client's SNI name.
    pub sni: Vec<SniCert>,
    /// Generate a self-signed development certificate at start-up when both
    /// default files are missing.
    pub self_signed_if_missing: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertPair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone)]
pub struct SniCert {
    /// `api.example.com` or `*.example.com`, lower case.
    pub host: String,
    pub files: CertPair,
}

#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// Plain-HTTP admin listener: `/metrics`, `/healthz`, `/readyz`.
    pub addr: SocketAddr,
}

/// Every bound and deadline the gateway enforces.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_connections: usize,
    /// Connections open per client address (IPv6: per /64); `None`: off.
    pub max_connections_per_ip: Option<usize>,
    /// New connections per second, over all clients (burst: one second's worth).
    pub handshake_rate: f64,
    /// New connections per second per client address (IPv6: per /64); `None`: off.
    pub handshake_rate_per_ip: Option<f64>,
    /// TLS handshake and HTTP request head together.
    pub handshake_timeout: Duration,
    /// No data message either way for this long closes the session; `None`: off.
    pub idle_timeout: Option<Duration>,
    /// Server ping period; a ping unanswered by the next one closes; `None`: off.
    pub ping_interval: Option<Duration>,
    /// A write to a client that makes no progress for this long closes it.
    pub send_timeout: Duration,
    /// How long to wait for the peer's Close reply (and TLS close) at the end.
    pub close_timeout: Duration,
    /// How long shutdown waits for sessions after sending them 1001.
    pub drain_timeout: Duration,
    pub max_message_size: usize,
    /// Never larger than `max_message_size` (clamped), so an oversize message
    /// in one frame is refused from its header, before it is buffered.
    pub max_frame_size: usize,
    pub max_header_size: usize,
    pub max_headers: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    /// Metric label and log field; defaults to the path.
    pub name: String,
    /// Lower-case host (`example.com` or `*.example.com`); `None` matches any.
    pub host: Option<String>,
    /// Path prefix, starting with `/`.
    pub path: String,
    pub kind: RouteKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum RouteKind {
    /// Every text and binary message comes back as it is.
    Echo,
    /// Each session is bridged to a member of an upstream pool.
    Upstream(Box<UpstreamConfig>),
    /// wsgate itself serves pub/sub: channels, direct messages, presence.
    Hub(Box<HubRoute>),
}

impl RouteKind {
    const NAMES: &'static [&'static str] = &["echo", "upstream", "hub"];

    pub fn as_str(&self) -> &'static str {
        match self {
            RouteKind::Echo => "echo",
            RouteKind::Upstream(_) => "upstream",
            RouteKind::Hub(_) => "hub",
        }
    }
}

/// A `kind = "hub"` route: how its clients speak and what bounds them.
#[derive(Debug, Clone, PartialEq)]
pub struct HubRoute {
    pub protocol: HubProtocol,
    /// raw: the channel every client of the route is in (default: the route name).
    pub channel: String,
    /// raw: the channel is the path below the route's prefix (`/chat/{room}`).
    pub channel_from_path: bool,
    /// raw: the sender gets its own frames too.
    pub echo: bool,
    /// raw: a text frame that is a JSON object with this string field goes
    /// only to the client(s) of that name.
    pub direct_field: Option<String>,
    pub names: NamePolicy,
    /// Send this route's clients join/leave events for their channels.
    pub presence_events: bool,
    pub max_channels_per_client: usize,
    /// Outbound queue bound per connection, in messages and bytes.
    pub queue_messages: usize,
    pub queue_bytes: usize,
    pub slow_consumer: SlowConsumer,
    /// Token bucket per connection for publish/send: messages per second
    /// and burst.
    pub publish_rate: f64,
    pub publish_burst: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HubProtocol {
    /// Frames go to the room unchanged.
    Raw,
    /// The JSON envelope protocol.
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NamePolicy {
    /// A name connected anywhere cannot connect again (409).
    Unique,
    /// Several connections may share a name; direct messages reach them all.
    Shared,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlowConsumer {
    /// Close the connection with 1008 "slow consumer".
    Close,
    /// Drop the oldest queued messages and tell the client (`lagged`).
    DropOldest,
}

pub const DEFAULT_HUB_MAX_CHANNELS_PER_CLIENT: usize = 64;
pub const DEFAULT_HUB_QUEUE_MESSAGES: usize = 1024;
pub const DEFAULT_HUB_QUEUE_BYTES: usize = 4 << 20;
pub const DEFAULT_HUB_PUBLISH_RATE: f64 = 100.0;
pub const DEFAULT_HUB_PUBLISH_BURST: u32 = 200;

/// A `kind = "upstream"` route's pool and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamConfig {
    pub members: Vec<UpstreamUrl>,
    /// Remove the route's path prefix before appending the request path to
    /// the member's path.
    pub strip_prefix: bool,
    pub balance: Balance,
    /// TCP connect to a member.
    pub connect_timeout: Duration,
    /// TLS handshake and the member's answer to the upgrade, together.
    pub handshake_timeout: Duration,
    /// A member that fails is skipped for `backoff`, doubling per failure up
    /// to `backoff_max` (each with up to 20 % jitter).
    pub backoff: Duration,
    pub backoff_max: Duration,
    /// Active check (TCP connect) of every member this often; `None`: off.
    pub health_check_interval: Option<Duration>,
    pub tls: UpstreamTls,
    /// Dial members through this HTTP CONNECT proxy.
    pub proxy: Option<EgressProxy>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    RoundRobin,
    LeastConnections,
}

impl Balance {
    const NAMES: &'static [(&'static str, Balance)] = &[
        ("round_robin", Balance::RoundRobin),
        ("least_connections", Balance::LeastConnections),
    ];
}

impl HubProtocol {
    const NAMES: &'static [(&'static str, HubProtocol)] =
        &[("json", HubProtocol::Json), ("raw", HubProtocol::Raw)];
}

impl NamePolicy {
    const NAMES: &'static [(&'static str, NamePolicy)] = &[
        ("unique", NamePolicy::Unique),
        ("shared", NamePolicy::Shared),
    ];
}

impl SlowConsumer {
    const NAMES: &'static [(&'static str, SlowConsumer)] = &[
        ("close", SlowConsumer::Close),
        ("drop_oldest", SlowConsumer::DropOldest),
    ];
}

/// A parser for one of a fixed set of names.
fn choice<T: Copy>(names: &'static [(&'static str, T)]) -> impl Fn(&str) -> Result<T, String> {
    move |s| {
        names
            .iter()
            .find(|(name, _)| *name == s)
            .map(|(_, v)| *v)
            .ok_or_else(|| {
                let all: Vec<&str> = names.iter().map(|(name, _)| *name).collect();
                format!("expected one of {all:?}")
            })
    }
}

/// The config name of `value` in its table.
fn name_of<T: PartialEq>(names: &'static [(&'static str, T)], value: &T) -> &'static str {
    names
        .iter()
        .find(|(_, v)| v == value)
        .map_or("?", |(name, _)| *name)
}

/// TLS to `wss://` members.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UpstreamTls {
    /// Trust these CAs (PEM) instead of the system roots.
    pub ca: Option<PathBuf>,
    /// Name sent as SNI and verified, instead of the member's host.
    pub server_name: Option<String>,
    /// Client certificate for mutual TLS.
    pub client_cert: Option<CertPair>,
}

/// `ws://host:port/path?query` or `wss://...`, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamUrl {
    /// As written in the config; the metric label.
    pub url: String,
    pub secure: bool,
    /// Host without brackets (`::1`, `10.0.0.5`, `api.internal`).
    pub host: String,
    pub port: u16,
    /// `Host` header value: host, plus the port when not the default.
    pub authority: String,
    /// Path without a trailing `/` (empty for the root).
    pub path: String,
    pub query: Option<String>,
}

impl UpstreamUrl {
    pub fn parse(url: &str) -> Result<UpstreamUrl, String> {
        let uri: http::Uri = url.parse().map_err(|e| format!("not a URL: {e}"))?;
        let secure = match uri.scheme_str() {
            Some("ws") => false,
            Some("wss") => true,
            _ => return Err("must start with ws:// or wss://".into()),
        };
        let authority = uri.authority().ok_or("has no host")?;
        if authority.as_str().contains('@') {
            return Err("must not carry user:password".into());
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        if host.is_empty() {
            return Err("has no host".into());
        }
        let default_port = if secure { 443 } else { 80 };
        let port = authority.port_u16().unwrap_or(default_port);
        let authority = if port == default_port {
            authority.host().to_owned()
        } else {
            format!("{}:{port}", authority.host())
        };
        Ok(UpstreamUrl {
            url: url.to_owned(),
            secure,
            host,
            port,
            authority,
            path: uri.path().trim_end_matches('/').to_owned(),
            query: uri.query().map(str::to_owned),
        })
    }
}

pub const DEFAULT_UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_UPSTREAM_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_UPSTREAM_BACKOFF: Duration = Duration::from_secs(1);
pub const DEFAULT_UPSTREAM_BACKOFF_MAX: Duration = Duration::from_secs(30);

/// One problem in a config: the key and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    pub key: String,
    pub problem: String,
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.problem)
    }
}

/// Every problem found in a config, in file order as far as possible.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigError {
    pub source_name: String,
    pub issues: Vec<ConfigIssue>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid config {}:", self.source_name)?;
        for issue in &self.issues {
            write!(f, "\n  {issue}")?;
        }
        Ok(())
    }
}

impl ConfigError {
    pub fn single(source_name: &str, key: &str, problem: impl Into<String>) -> Self {
        ConfigError {
            source_name: source_name.to_owned(),
            issues: vec![ConfigIssue {
                key: key.to_owned(),
                problem: problem.into(),
            }],
        }
    }
}

/// Where the config text comes from.
#[derive(Debug, Clone)]
pub enum ConfigSource<'a> {
    /// A file that must exist.
    File(&'a Path),
    /// `config/wsgate.toml` if present, else the compiled-in copy of it.
    Default,
    /// Text given directly (tests, tools).
    Text(&'a str),
}

impl Config {
    /// Read, override from the environment, and validate.
    ///
    /// `env` replaces the process environment as the source of
    /// `WSGATE__*` overrides when given (tests pass a map; nobody mutates
    /// the process environment).
    pub fn load(
        source: ConfigSource<'_>,
        env: Option<HashMap<String, String>>,
    ) -> Result<Config, ConfigError> {
        let (name, text) = match source {
            ConfigSource::File(path) => {
                let name = path.display().to_string();
                let text = std::fs::read_to_string(path).map_err(|e| {
                    ConfigError::single(&name, "(file)", format!("cannot read: {e}"))
                })?;
                (name, text)
            }
            ConfigSource::Default => match std::fs::read_to_string(DEFAULT_CONFIG_PATH) {
                Ok(text) => (DEFAULT_CONFIG_PATH.to_owned(), text),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    ("(embedded default)".to_owned(), EMBEDDED_DEFAULT.to_owned())
                }
                Err(e) => {
                    return Err(ConfigError::single(
                        DEFAULT_CONFIG_PATH,
                        "(file)",
                        format!("cannot read: {e}"),
                    ));
                }
            },
            ConfigSource::Text(text) => ("(inline)".to_owned(), text.to_owned()),
        };
        Self::from_toml(&name, &text, env)
    }

    fn from_toml(
        name: &str,
        text: &str,
        env: Option<HashMap<String, String>>,
    ) -> Result<Config, ConfigError> {
        let env = ::config::Environment::with_prefix(ENV_PREFIX)
            .separator("__")
            .source(env);
        let merged = ::config::Config::builder()
            .add_source(::config::File::from_str(text, ::config::FileFormat::Toml))
            .add_source(env)
            .build()
            .map_err(|e| ConfigError::single(name, "(syntax)", e.to_string()))?;

        let mut unknown = Vec::new();
        let raw: RawConfig = serde_ignored::deserialize(merged, |path| {
            unknown.push(path.to_string());
        })
        .map_err(|e| ConfigError::single(name, "(structure)", e.to_string()))?;

        let mut v = Validator::default();
        for key in unknown {
            v.issue(&key, "unknown key");
        }
        let config = v.config(raw);
        match config {
            Some(config) if v.issues.is_empty() => Ok(config),
            _ => Err(ConfigError {
                source_name: name.to_owned(),
                issues: v.issues,
            }),
        }
    }

    /// True when start-up must generate a development certificate:
    /// `tls.self_signed_if_missing` is on and both default files are missing.
    pub fn dev_cert_needed(&self) -> bool {
        self.tls.self_signed_if_missing
            && !self.tls.default.cert.exists()
            && !self.tls.default.key.exists()
    }
}

// ---------------------------------------------------------------------------
// Raw, as written. Every scalar is a string so that parsing, and so every
// error, happens in one place below.

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawConfig {
    listen: RawListen,
    tls: RawTls,
    admin: RawAdmin,
    limits: RawLimits,
    hub: RawHub,
    tunnel: RawTunnel,
    routes: Vec<RawRoute>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawHub {
    api_tokens: Vec<String>,
    history_size: Option<String>,
    history_ttl: Option<String>,
    max_channels: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawListen {
    addr: Option<String>,
    connect_tunnel: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawTunnel {
    names: Vec<String>,
    allow: Vec<String>,
    users: Vec<String>,
    connect_timeout: Option<String>,
    idle_timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawTls {
    cert: Option<String>,
    key: Option<String>,
    self_signed_if_missing: Option<String>,
    sni: Vec<RawSni>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawSni {
    host: Option<String>,
    cert: Option<String>,
    key: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawAdmin {
    addr: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawLimits {
    max_connections: Option<String>,
    max_connections_per_ip: Option<String>,
    handshake_rate: Option<String>,
    handshake_rate_per_ip: Option<String>,
    handshake_timeout: Option<String>,
    idle_timeout: Option<String>,
    ping_interval: Option<String>,
    send_timeout: Option<String>,
    close_timeout: Option<String>,
    drain_timeout: Option<String>,
    max_message_size: Option<String>,
    max_frame_size: Option<String>,
    max_header_size: Option<String>,
    max_headers: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawRoute {
    name: Option<String>,
    host: Option<String>,
    path: Option<String>,
    kind: Option<String>,
    // kind = "upstream"
    upstreams: Option<Vec<String>>,
    strip_prefix: Option<String>,
    balance: Option<String>,
    connect_timeout: Option<String>,
    handshake_timeout: Option<String>,
    backoff: Option<String>,
    backoff_max: Option<String>,
    health_check_interval: Option<String>,
    tls_ca: Option<String>,
    tls_server_name: Option<String>,
    tls_client_cert: Option<String>,
    tls_client_key: Option<String>,
    proxy: Option<String>,
    no_proxy: Vec<String>,
    // kind = "hub"
    protocol: Option<String>,
    channel: Option<String>,
    channel_from_path: Option<String>,
    echo: Option<String>,
    direct_field: Option<String>,
    names: Option<String>,
    presence_events: Option<String>,
    max_channels_per_client: Option<String>,
    queue_messages: Option<String>,
    queue_bytes: Option<String>,
    slow_consumer: Option<String>,
    publish_rate: Option<String>,
    publish_burst: Option<String>,
}

// ---------------------------------------------------------------------------
// Validation: raw → typed, collecting every issue.

#[derive(Default)]
struct Validator {
    issues: Vec<ConfigIssue>,
}

impl Validator {
    fn issue(&mut self, key: &str, problem: impl Into<String>) {
        self.issues.push(ConfigIssue {
            key: key.to_owned(),
            problem: problem.into(),
        });
    }

    /// Parse `raw` (or `default` when absent) with `parse`; record an issue on error.
    fn field<T>(
        &mut self,
        key: &str,
        raw: Option<String>,
        default: T,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        match raw {
            None => Some(default),
            Some(s) => match parse(s.trim()) {
                Ok(v) => Some(v),
                Err(problem) => {
                    self.issue(key, format!("{problem} (got {s:?})"));
                    None
                }
            },
        }
    }

    fn config(&mut self, raw: RawConfig) -> Option<Config> {
        let listen = self.field(
            "listen.addr",
            raw.listen.addr,
            default_addr(DEFAULT_LISTEN_ADDR),
            parse_addr,
        );
        let admin = self.field(
            "admin.addr",
            raw.admin.addr,
            default_addr(DEFAULT_ADMIN_ADDR),
            parse_addr,
        );
        if let (Some(l), Some(a)) = (listen, admin)
            && l == a
            && l.port() != 0
        {
            self.issue("admin.addr", "must differ from listen.addr");
        }
        let tls = self.tls(raw.tls);
        let limits = self.limits(raw.limits);
        let hub = self.hub(raw.hub);
        let connect_tunnel = self.field(
            "listen.connect_tunnel",
            raw.listen.connect_tunnel,
            false,
            parse_bool,
        );
        let tunnel = self.tunnel(raw.tunnel);
        let routes = self.routes(raw.routes);
        Some(Config {
            listen: ListenConfig {
                addr: listen?,
                connect_tunnel: connect_tunnel?,
            },
            tls: tls?,
            admin: AdminConfig { addr: admin? },
            limits: limits?,
            hub: hub?,
            tunnel: tunnel?,
            routes: routes?,
        })
    }

    fn tls(&mut self, raw: RawTls) -> Option<TlsConfig> {
        let self_signed = self.field(
            "tls.self_signed_if_missing",
            raw.self_signed_if_missing,
            false,
            parse_bool,
        )?;
        let cert = PathBuf::from(raw.cert.unwrap_or_else(|| "certs/cert.pem".into()));
        let key = PathBuf::from(raw.key.unwrap_or_else(|| "certs/key.pem".into()));
        let generate = self_signed && !cert.exists() && !key.exists();
        if !generate {
            self.readable("tls.cert", &cert);
            self.readable("tls.key", &key);
        }
        let mut sni = Vec::new();
        let mut seen = HashMap::new();
        for (i, entry) in raw.sni.into_iter().enumerate() {
            let prefix = format!("tls.sni[{i}]");
            let Some(host) = self.required(&format!("{prefix}.host"), entry.host) else {
                continue;
            };
            let host = host.to_ascii_lowercase();
            if let Err(problem) = check_host_pattern(&host) {
                self.issue(&format!("{prefix}.host"), problem);
            }
            if let Some(first) = seen.insert(host.clone(), i) {
                self.issue(
                    &format!("{prefix}.host"),
                    format!("{host:?} is already used by tls.sni[{first}]"),
                );
            }
            let cert = self
                .required(&format!("{prefix}.cert"), entry.cert)
                .map(PathBuf::from);
            let key = self
                .required(&format!("{prefix}.key"), entry.key)
                .map(PathBuf::from);
            if let (Some(cert), Some(key)) = (cert, key) {
                self.readable(&format!("{prefix}.cert"), &cert);
                self.readable(&format!("{prefix}.key"), &key);
                sni.push(SniCert {
                    host,
                    files: CertPair { cert, key },
                });
            }
        }
        Some(TlsConfig {
            default: CertPair { cert, key },
            sni,
            self_signed_if_missing: self_signed,
        })
    }

    fn required(&mut self, key: &str, value: Option<String>) -> Option<String> {
        match value {
            Some(v) if !v.trim().is_empty() => Some(v),
            _ => {
                self.issue(key, "is required");
                None
            }
        }
    }

    fn readable(&mut self, key: &str, path: &Path) {
        if let Err(e) = std::fs::File::open(path) {
            self.issue(key, format!("cannot open {}: {e}", path.display()));
        }
    }

    fn limits(&mut self, raw: RawLimits) -> Option<Limits> {
        let max_connections = self.field(
            "limits.max_connections",
            raw.max_connections,
            DEFAULT_MAX_CONNECTIONS,
            parse_positive,
        );
        let max_connections_per_ip = self.field(
            "limits.max_connections_per_ip",
            raw.max_connections_per_ip,
            None,
            |s| off_or(s, parse_positive),
        );
        let handshake_rate = self.field(
            "limits.handshake_rate",
            raw.handshake_rate,
            DEFAULT_HANDSHAKE_RATE,
            parse_rate,
        );
        let handshake_rate_per_ip = self.field(
            "limits.handshake_rate_per_ip",
            raw.handshake_rate_per_ip,
            None,
            |s| off_or(s, parse_rate),
        );
        let handshake_timeout = self.field(
            "limits.handshake_timeout",
            raw.handshake_timeout,
            DEFAULT_HANDSHAKE_TIMEOUT,
            parse_duration,
        );
        let idle_timeout = self.field(
            "limits.idle_timeout",
            raw.idle_timeout,
            Some(DEFAULT_IDLE_TIMEOUT),
            parse_optional_duration,
        );
        let ping_interval = self.field(
            "limits.ping_interval",
            raw.ping_interval,
            Some(DEFAULT_PING_INTERVAL),
            parse_optional_duration,
        );
        let send_timeout = self.field(
            "limits.send_timeout",
            raw.send_timeout,
            DEFAULT_SEND_TIMEOUT,
            parse_duration,
        );
        let close_timeout = self.field(
            "limits.close_timeout",
            raw.close_timeout,
            DEFAULT_CLOSE_TIMEOUT,
            parse_duration,
        );
        let drain_timeout = self.field(
            "limits.drain_timeout",
            raw.drain_timeout,
            DEFAULT_DRAIN_TIMEOUT,
            parse_duration,
        );
        let max_message_size = self.field(
            "limits.max_message_size",
            raw.max_message_size,
            DEFAULT_MAX_MESSAGE_SIZE,
            parse_size,
        );
        let max_frame_size = self.field(
            "limits.max_frame_size",
            raw.max_frame_size,
            DEFAULT_MAX_FRAME_SIZE,
            parse_size,
        );
        let max_header_size = self.field(
            "limits.max_header_size",
            raw.max_header_size,
            DEFAULT_MAX_HEADER_SIZE,
            parse_size,
        );
        let max_headers = self.field(
            "limits.max_headers",
            raw.max_headers,
            DEFAULT_MAX_HEADERS,
            parse_positive,
        );
        if max_header_size.is_some_and(|size| size < 1024) {
            self.issue("limits.max_header_size", "must be at least 1KiB");
        }
        let max_message_size = max_message_size?;
        Some(Limits {
            max_connections: max_connections?,
            max_connections_per_ip: max_connections_per_ip?,
            handshake_rate: handshake_rate?,
            handshake_rate_per_ip: handshake_rate_per_ip?,
            handshake_timeout: handshake_timeout?,
            idle_timeout: idle_timeout?,
            ping_interval: ping_interval?,
            send_timeout: send_timeout?,
            close_timeout: close_timeout?,
            drain_timeout: drain_timeout?,
            max_message_size,
            max_frame_size: max_frame_size?.min(max_message_size),
            max_header_size: max_header_size?,
            max_headers: max_headers?,
        })
    }

    fn routes(&mut self, raw: Vec<RawRoute>) -> Option<Vec<Route>> {
        if raw.is_empty() {
            self.issue("routes", "at least one [[routes]] entry is required");
            return None;
        }
        let mut routes: Vec<Route> = Vec::with_capacity(raw.len());
        let before = self.issues.len();
        for (i, r) in raw.into_iter().enumerate() {
            let prefix = format!("routes[{i}]");
            let name = r.name.clone();
            let path = self.required(&format!("{prefix}.path"), r.path.clone());
            if let Some(p) = &path {
                if !p.starts_with('/') {
                    self.issue(
                        &format!("{prefix}.path"),
                        format!("must start with '/' (got {p:?})"),
                    );
                } else if p.contains(['?', '#'])
                    || p.chars().any(|c| c.is_whitespace() || c.is_control())
                {
                    self.issue(
                        &format!("{prefix}.path"),
                        format!("must be a plain path prefix (got {p:?})"),
                    );
                }
            }
            let host = r.host.clone().map(|h| h.to_ascii_lowercase());
            if let Some(h) = &host
                && let Err(problem) = check_host_pattern(h)
            {
                self.issue(&format!("{prefix}.host"), problem);
            }
            let kind = match self
                .required(&format!("{prefix}.kind"), r.kind.clone())
                .as_deref()
            {
                Some("echo") => {
                    self.foreign_keys(&prefix, &r, "echo");
                    Some(RouteKind::Echo)
                }
                Some("upstream") => {
                    self.foreign_keys(&prefix, &r, "upstream");
                    self.upstream(&prefix, r)
                        .map(|u| RouteKind::Upstream(Box::new(u)))
                }
                Some("hub") => {
                    self.foreign_keys(&prefix, &r, "hub");
                    let name = name
                        .clone()
                        .unwrap_or_else(|| path.clone().unwrap_or_default());
                    self.hub_route(&prefix, r, &name)
                        .map(|h| RouteKind::Hub(Box::new(h)))
                }
                Some(other) => {
                    self.issue(
                        &format!("{prefix}.kind"),
                        format!(
                            "unknown kind {other:?}; expected one of {:?}",
                            RouteKind::NAMES
                        ),
                    );
                    None
                }
                None => None,
            };
            let (Some(path), Some(kind)) = (path, kind) else {
                continue;
            };
            let name = name.unwrap_or_else(|| path.clone());
            if name.is_empty() || name.len() > 64 || !name.chars().all(|c| c.is_ascii_graphic()) {
                self.issue(
                    &format!("{prefix}.name"),
                    "must be 1-64 printable ASCII characters",
                );
            }
            if let Some(j) = routes.iter().position(|o| o.name == name) {
                self.issue(
                    &format!("{prefix}.name"),
                    format!("{name:?} is already used by routes[{j}] (names label metrics)"),
                );
            }
            if let Some(j) = routes.iter().position(|o| o.host == host && o.path == path) {
                self.issue(
                    &format!("{prefix}.path"),
                    format!("same host and path as routes[{j}]"),
                );
            }
            routes.push(Route {
                name,
                host,
                path,
                kind,
            });
        }
        (self.issues.len() == before).then_some(routes)
    }
}

impl Validator {
    /// Report keys that belong to another route kind than `kind`.
    fn foreign_keys(&mut self, prefix: &str, r: &RawRoute, kind: &str) {
        let keys = [
            ("upstreams", r.upstreams.is_some(), "upstream"),
            ("strip_prefix", r.strip_prefix.is_some(), "upstream"),
            ("balance", r.balance.is_some(), "upstream"),
            ("connect_timeout", r.connect_timeout.is_some(), "upstream"),
            (
                "handshake_timeout",
                r.handshake_timeout.is_some(),
                "upstream",
            ),
            ("backoff", r.backoff.is_some(), "upstream"),
            ("backoff_max", r.backoff_max.is_some(), "upstream"),
            (
                "health_check_interval",
                r.health_check_interval.is_some(),
                "upstream",
            ),
            ("tls_ca", r.tls_ca.is_some(), "upstream"),
            ("tls_server_name", r.tls_server_name.is_some(), "upstream"),
            ("tls_client_cert", r.tls_client_cert.is_some(), "upstream"),
            ("tls_client_key", r.tls_client_key.is_some(), "upstream"),
            ("proxy", r.proxy.is_some(), "upstream"),
            ("no_proxy", !r.no_proxy.is_empty(), "upstream"),
            ("protocol", r.protocol.is_some(), "hub"),
            ("channel", r.channel.is_some(), "hub"),
            ("channel_from_path", r.channel_from_path.is_some(), "hub"),
            ("echo", r.echo.is_some(), "hub"),
            ("direct_field", r.direct_field.is_some(), "hub"),
            ("names", r.names.is_some(), "hub"),
            ("presence_events", r.presence_events.is_some(), "hub"),
            (
                "max_channels_per_client",
                r.max_channels_per_client.is_some(),
                "hub",
            ),
            ("queue_messages", r.queue_messages.is_some(), "hub"),
            ("queue_bytes", r.queue_bytes.is_some(), "hub"),
            ("slow_consumer", r.slow_consumer.is_some(), "hub"),
            ("publish_rate", r.publish_rate.is_some(), "hub"),
            ("publish_burst", r.publish_burst.is_some(), "hub"),
        ];
        for (key, present, owner) in keys {
            if present && owner != kind {
                self.issue(
                    &format!("{prefix}.{key}"),
                    format!("only applies to kind = \"{owner}\""),
                );
            }
        }
    }

    fn tunnel(&mut self, raw: RawTunnel) -> Option<TunnelConfig> {
        let mut names = Vec::new();
        for (i, name) in raw.names.iter().enumerate() {
            match check_host_pattern(&name.to_ascii_lowercase()) {
                Ok(()) => names.push(name.to_ascii_lowercase()),
                Err(problem) => self.issue(&format!("tunnel.names[{i}]"), problem),
            }
        }
        let mut allow = Vec::new();
        for (i, rule) in raw.allow.iter().enumerate() {
            match AllowRule::parse(rule) {
                Ok(rule) => allow.push(rule),
                Err(problem) => self.issue(&format!("tunnel.allow[{i}]"), problem),
            }
        }
        let mut users = Vec::new();
        for (i, user) in raw.users.iter().enumerate() {
            match user.split_once(':') {
                Some((u, p)) if !u.is_empty() && !p.is_empty() => {
                    users.push((u.to_owned(), p.to_owned()))
                }
                _ => self.issue(&format!("tunnel.users[{i}]"), "expected \"user:password\""),
            }
        }
        let connect_timeout = self.field(
            "tunnel.connect_timeout",
            raw.connect_timeout,
            DEFAULT_TUNNEL_CONNECT_TIMEOUT,
            parse_duration,
        );
        let idle_timeout = self.field(
            "tunnel.idle_timeout",
            raw.idle_timeout,
            DEFAULT_TUNNEL_IDLE_TIMEOUT,
            parse_duration,
        );
        Some(TunnelConfig {
            names,
            allow,
            users,
            connect_timeout: connect_timeout?,
            idle_timeout: idle_timeout?,
        })
    }

    fn hub(&mut self, raw: RawHub) -> Option<HubConfig> {
        let history_size = self.field(
            "hub.history_size",
            raw.history_size,
            DEFAULT_HUB_HISTORY_SIZE,
            |s| {
                s.parse::<usize>()
                    .map_err(|_| "not a whole number".to_owned())
            },
        );
        let history_ttl = self.field(
            "hub.history_ttl",
            raw.history_ttl,
            DEFAULT_HUB_HISTORY_TTL,
            parse_duration,
        );
        let max_channels = self.field(
            "hub.max_channels",
            raw.max_channels,
            DEFAULT_HUB_MAX_CHANNELS,
            parse_positive,
        );
        for (i, token) in raw.api_tokens.iter().enumerate() {
            if token.len() < 16 || !token.chars().all(|c| c.is_ascii_graphic()) {
                self.issue(
                    &format!("hub.api_tokens[{i}]"),
                    "must be at least 16 printable ASCII characters",
                );
            }
        }
        Some(HubConfig {
            api_tokens: raw.api_tokens,
            history_size: history_size?,
            history_ttl: history_ttl?,
            max_channels: max_channels?,
        })
    }

    fn hub_route(&mut self, prefix: &str, r: RawRoute, route_name: &str) -> Option<HubRoute> {
        let key = |k: &str| format!("{prefix}.{k}");
        let before = self.issues.len();
        let protocol = self.field(
            &key("protocol"),
            r.protocol,
            HubProtocol::Json,
            choice(HubProtocol::NAMES),
        );
        let channel = r
            .channel
            .unwrap_or_else(|| route_name.trim_start_matches('/').to_owned());
        if let Err(problem) = check_channel_name(&channel) {
            self.issue(&key("channel"), problem);
        }
        let channel_from_path = self.field(
            &key("channel_from_path"),
            r.channel_from_path,
            false,
            parse_bool,
        );
        let echo = self.field(&key("echo"), r.echo, false, parse_bool);
        let direct_field = r.direct_field;
        if protocol == Some(HubProtocol::Json) {
            for (k, set) in [
                ("channel_from_path", channel_from_path == Some(true)),
                ("echo", echo == Some(true)),
                ("direct_field", direct_field.is_some()),
            ] {
                if set {
                    self.issue(&key(k), "only applies to protocol = \"raw\"");
                }
            }
        }
        let names = self.field(
            &key("names"),
            r.names,
            NamePolicy::Shared,
            choice(NamePolicy::NAMES),
        );
        let presence_events = self.field(
            &key("presence_events"),
            r.presence_events,
            false,
            parse_bool,
        );
        let max_channels_per_client = self.field(
            &key("max_channels_per_client"),
            r.max_channels_per_client,
            DEFAULT_HUB_MAX_CHANNELS_PER_CLIENT,
            parse_positive,
        );
        let queue_messages = self.field(
            &key("queue_messages"),
            r.queue_messages,
            DEFAULT_HUB_QUEUE_MESSAGES,
            parse_positive,
        );
        let queue_bytes = self.field(
            &key("queue_bytes"),
            r.queue_bytes,
            DEFAULT_HUB_QUEUE_BYTES,
            parse_size,
        );
        let slow_consumer = self.field(
            &key("slow_consumer"),
            r.slow_consumer,
            SlowConsumer::Close,
            choice(SlowConsumer::NAMES),
        );
        let publish_rate = self.field(
            &key("publish_rate"),
            r.publish_rate,
            DEFAULT_HUB_PUBLISH_RATE,
            |s| match s.parse::<f64>() {
                Ok(v) if v > 0.0 && v.is_finite() => Ok(v),
                _ => Err("must be a number of messages per second greater than 0".to_owned()),
            },
        );
        let publish_burst = self.field(
            &key("publish_burst"),
            r.publish_burst,
            DEFAULT_HUB_PUBLISH_BURST,
            |s| match s.parse::<u32>() {
                Ok(v) if v > 0 => Ok(v),
                _ => Err("must be a whole number greater than 0".to_owned()),
            },
        );
        if self.issues.len() != before {
            return None;
        }
        Some(HubRoute {
            protocol: protocol?,
            channel,
            channel_from_path: channel_from_path?,
            echo: echo?,
            direct_field,
            names: names?,
            presence_events: presence_events?,
            max_channels_per_client: max_channels_per_client?,
            queue_messages: queue_messages?,
            queue_bytes: queue_bytes?,
            slow_consumer: slow_consumer?,
            publish_rate: publish_rate?,
            publish_burst: publish_burst?,
        })
    }

    fn upstream(&mut self, prefix: &str, r: RawRoute) -> Option<UpstreamConfig> {
        let key = |k: &str| format!("{prefix}.{k}");
        let before = self.issues.len();
        let mut members = Vec::new();
        match r.upstreams {
            Some(urls) if !urls.is_empty() => {
                for (j, url) in urls.iter().enumerate() {
                    match UpstreamUrl::parse(url.trim()) {
                        Ok(u) => members.push(u),
                        Err(problem) => self.issue(
                            &format!("{prefix}.upstreams[{j}]"),
                            format!("{problem} (got {url:?})"),
                        ),
                    }
                }
            }
            _ => self.issue(
                &key("upstreams"),
                "a list of at least one ws:// or wss:// URL is required",
            ),
        }
        let strip_prefix = self.field(&key("strip_prefix"), r.strip_prefix, false, parse_bool);
        let balance = self.field(
            &key("balance"),
            r.balance,
            Balance::RoundRobin,
            choice(Balance::NAMES),
        );
        let connect_timeout = self.field(
            &key("connect_timeout"),
            r.connect_timeout,
            DEFAULT_UPSTREAM_CONNECT_TIMEOUT,
            parse_duration,
        );
        let handshake_timeout = self.field(
            &key("handshake_timeout"),
            r.handshake_timeout,
            DEFAULT_UPSTREAM_HANDSHAKE_TIMEOUT,
            parse_duration,
        );
        let backoff = self.field(
            &key("backoff"),
            r.backoff,
            DEFAULT_UPSTREAM_BACKOFF,
            parse_duration,
        );
        let backoff_max = self.field(
            &key("backoff_max"),
            r.backoff_max,
            DEFAULT_UPSTREAM_BACKOFF_MAX,
            parse_duration,
        );
        if let (Some(b), Some(m)) = (backoff, backoff_max)
            && m < b
        {
            self.issue(&key("backoff_max"), "must not be less than backoff");
        }
        let health_check_interval = self.field(
            &key("health_check_interval"),
            r.health_check_interval,
            None,
            parse_optional_duration,
        );
        let ca = r.tls_ca.map(PathBuf::from);
        if let Some(ca) = &ca {
            self.readable(&key("tls_ca"), ca);
        }
        let server_name = r.tls_server_name.map(|n| n.to_ascii_lowercase());
        if let Some(name) = &server_name
            && name.parse::<std::net::IpAddr>().is_err()
            && let Err(problem) = check_host_pattern(name)
        {
            self.issue(&key("tls_server_name"), problem);
        }
        let client_cert = match (r.tls_client_cert, r.tls_client_key) {
            (Some(cert), Some(key_path)) => {
                let pair = CertPair {
                    cert: cert.into(),
                    key: key_path.into(),
                };
                self.readable(&key("tls_client_cert"), &pair.cert);
                self.readable(&key("tls_client_key"), &pair.key);
                Some(pair)
            }
            (None, None) => None,
            (Some(_), None) => {
                self.issue(&key("tls_client_key"), "is required with tls_client_cert");
                None
            }
            (None, Some(_)) => {
                self.issue(&key("tls_client_cert"), "is required with tls_client_key");
                None
            }
        };
        let proxy = match (r.proxy, r.no_proxy.is_empty()) {
            (Some(url), _) => match EgressProxy::parse(&url, &r.no_proxy) {
                Ok(proxy) => Some(proxy),
                Err(problem) => {
                    self.issue(&key("proxy"), problem);
                    None
                }
            },
            (None, false) => {
                self.issue(&key("no_proxy"), "only applies with proxy");
                None
            }
            (None, true) => None,
        };
        if self.issues.len() != before {
            return None;
        }
        Some(UpstreamConfig {
            members,
            strip_prefix: strip_prefix?,
            balance: balance?,
            connect_timeout: connect_timeout?,
            handshake_timeout: handshake_timeout?,
            backoff: backoff?,
            backoff_max: backoff_max?,
            health_check_interval: health_check_interval?,
            tls: UpstreamTls {
                ca,
                server_name,
                client_cert,
            },
            proxy,
        })
    }
}

fn default_addr(s: &str) -> SocketAddr {
    s.parse().expect("default address constants parse")
}

fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse()
        .map_err(|_| "not an IP:port socket address".to_owned())
}

fn parse_bool(s: &str) -> Result<bool, String> {
    match s {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err("expected true or false".to_owned()),
    }
}

fn parse_positive(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be greater than 0".to_owned()),
        Ok(n) => Ok(n),
        Err(_) => Err("not a whole number".to_owned()),
    }
}

/// `"off"` → `None`, else `parse`.
fn off_or<T>(s: &str, parse: impl Fn(&str) -> Result<T, String>) -> Result<Option<T>, String> {
    if s == "off" {
        Ok(None)
    } else {
        parse(s).map(Some).map_err(|e| format!("{e} (or \"off\")"))
    }
}

/// A rate per second: a number greater than 0 (fractions allowed).
fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() => Ok(v),
        _ => Err("must be a number per second greater than 0".to_owned()),
    }
}

/// `"10s"`, `"1m 30s"`, `"250ms"`; must be greater than zero.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    match humantime::parse_duration(s) {
        Ok(d) if d.is_zero() => Err("must be greater than 0".to_owned()),
        Ok(d) => Ok(d),
        Err(e) => Err(format!("not a duration like \"10s\" or \"250ms\": {e}")),
    }
}

/// Like [`parse_duration`], but `"0s"` (or `"off"`) turns the feature off.
fn parse_optional_duration(s: &str) -> Result<Option<Duration>, String> {
    if s == "off" {
        return Ok(None);
    }
    match humantime::parse_duration(s) {
        Ok(d) => Ok((!d.is_zero()).then_some(d)),
        Err(e) => Err(format!("not a duration like \"30s\" (or \"off\"): {e}")),
    }
}

/// `"16MiB"`, `"64 KiB"`, `"1000"`, `"1MB"` (decimal units are powers of 1000).
pub fn parse_size(s: &str) -> Result<usize, String> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| "not a size like \"16MiB\" or \"4096\"".to_owned())?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "kib" | "k" => 1 << 10,
        "mb" => 1_000_000,
        "mib" | "m" => 1 << 20,
        "gb" => 1_000_000_000,
        "gib" | "g" => 1 << 30,
        other => {
            return Err(format!(
                "unknown size unit {other:?}; use B, KiB, MiB, GiB, KB, MB or GB"
            ));
        }
    };
    match n.checked_mul(mult).and_then(|v| usize::try_from(v).ok()) {
        Some(0) => Err("must be greater than 0".to_owned()),
        Some(v) => Ok(v),
        None => Err("too large".to_owned()),
    }
}

/// Channel names: 1-128 characters from `A-Z a-z 0-9 _ - . : /` (no other
/// bytes, so a name is safe in a URL path segment, a log line and JSON).
pub fn check_channel_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.:/".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "not a channel name: 1-128 of A-Z a-z 0-9 _ - . : / (got {name:?})"
        ))
    }
}

/// Client names: 1-64 characters from `A-Z a-z 0-9 _ - . @`.
pub fn check_client_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.@".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "not a client name: 1-64 of A-Z a-z 0-9 _ - . @ (got {name:?})"
        ))
    }
}

/// A host name or `*.suffix` wildcard, as routes and SNI entries use.
fn check_host_pattern(host: &str) -> Result<(), String> {
    let name = host.strip_prefix("*.").unwrap_or(host);
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    if ok {
        Ok(())
    } else {
        Err(format!("not a host name or *.wildcard (got {host:?})"))
    }
}

// ---------------------------------------------------------------------------
// `check-config` prints the effective config in the file's own shape.

impl fmt::Display for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn dur(d: Duration) -> String {
            humantime::format_duration(d).to_string()
        }
        fn opt_dur(d: Option<Duration>) -> String {
            d.map_or_else(|| "off".to_owned(), dur)
        }
        let l = &self.limits;
        let tls = [
            ("cert", self.tls.default.cert.display().to_string()),
            ("key", self.tls.default.key.display().to_string()),
        ];
        let limits = [
            ("handshake_timeout", dur(l.handshake_timeout)),
            ("idle_timeout", opt_dur(l.idle_timeout)),
            ("ping_interval", opt_dur(l.ping_interval)),
            ("send_timeout", dur(l.send_timeout)),
            ("close_timeout", dur(l.close_timeout)),
            ("drain_timeout", dur(l.drain_timeout)),
        ];
        writeln!(
            f,
            "[listen]\naddr = \"{}\"\nconnect_tunnel = {}\n",
            self.listen.addr, self.listen.connect_tunnel
        )?;
        writeln!(f, "[tls]")?;
        for (k, v) in tls {
            writeln!(f, "{k} = {v:?}")?;
        }
        writeln!(
            f,
            "self_signed_if_missing = {}\n",
            self.tls.self_signed_if_missing
        )?;
        for s in &self.tls.sni {
            writeln!(
                f,
                "[[tls.sni]]\nhost = {:?}\ncert = {:?}\nkey = {:?}\n",
                s.host, s.files.cert, s.files.key
            )?;
        }
        writeln!(f, "[admin]\naddr = \"{}\"\n", self.admin.addr)?;
        let t = &self.tunnel;
        let allow: Vec<String> = t.allow.iter().map(ToString::to_string).collect();
        let users: Vec<String> = t
            .users
            .iter()
            .map(|(u, _)| format!("{u}:(hidden)"))
            .collect();
        writeln!(
            f,
            "[tunnel]\nnames = {:?}\nallow = {allow:?}\nusers = {users:?}\nconnect_timeout = {:?}\nidle_timeout = {:?}\n",
            t.names,
            dur(t.connect_timeout),
            dur(t.idle_timeout)
        )?;
        let tokens: Vec<&str> = self.hub.api_tokens.iter().map(|_| "(set)").collect();
        writeln!(
            f,
            "[hub]\napi_tokens = {tokens:?}\nhistory_size = {}\nhistory_ttl = {:?}\nmax_channels = {}\n",
            self.hub.history_size,
            dur(self.hub.history_ttl),
            self.hub.max_channels
        )?;
        writeln!(f, "[limits]\nmax_connections = {}", l.max_connections)?;
        writeln!(
            f,
            "max_connections_per_ip = {:?}
handshake_rate = {}
handshake_rate_per_ip = {:?}",
            l.max_connections_per_ip
                .map_or("off".to_owned(), |n| n.to_string()),
            l.handshake_rate,
            l.handshake_rate_per_ip
                .map_or("off".to_owned(), |n| n.to_string())
        )?;
        for (k, v) in limits {
            writeln!(f, "{k} = {v:?}")?;
        }
        for (k, v) in [
            ("max_message_size", l.max_message_size),
            ("max_frame_size", l.max_frame_size),
            ("max_header_size", l.max_header_size),
            ("max_headers", l.max_headers),
        ] {
            writeln!(f, "{k} = {v}")?;
        }
        writeln!(f)?;
        for r in &self.routes {
            writeln!(f, "[[routes]]\nname = {:?}", r.name)?;
            if let Some(h) = &r.host {
                writeln!(f, "host = {h:?}")?;
            }
            writeln!(f, "path = {:?}\nkind = {:?}", r.path, r.kind.as_str())?;
            if let RouteKind::Upstream(u) = &r.kind {
                let urls: Vec<&str> = u.members.iter().map(|m| m.url.as_str()).collect();
                writeln!(f, "upstreams = {urls:?}\nstrip_prefix = {}", u.strip_prefix)?;
                writeln!(f, "balance = {:?}", name_of(Balance::NAMES, &u.balance))?;
                for (k, v) in [
                    ("connect_timeout", dur(u.connect_timeout)),
                    ("handshake_timeout", dur(u.handshake_timeout)),
                    ("backoff", dur(u.backoff)),
                    ("backoff_max", dur(u.backoff_max)),
                    ("health_check_interval", opt_dur(u.health_check_interval)),
                ] {
                    writeln!(f, "{k} = {v:?}")?;
                }
                if let Some(ca) = &u.tls.ca {
                    writeln!(f, "tls_ca = {ca:?}")?;
                }
                if let Some(name) = &u.tls.server_name {
                    writeln!(f, "tls_server_name = {name:?}")?;
                }
                if let Some(proxy) = &u.proxy {
                    writeln!(f, "proxy = {:?}", proxy.display)?;
                    let no_proxy: Vec<String> =
                        proxy.no_proxy.iter().map(ToString::to_string).collect();
                    writeln!(f, "no_proxy = {no_proxy:?}")?;
                }
                if let Some(pair) = &u.tls.client_cert {
                    writeln!(
                        f,
                        "tls_client_cert = {:?}\ntls_client_key = {:?}",
                        pair.cert, pair.key
                    )?;
                }
            }
            if let RouteKind::Hub(h) = &r.kind {
                let protocol = name_of(HubProtocol::NAMES, &h.protocol);
                writeln!(f, "protocol = {protocol:?}")?;
                if h.protocol == HubProtocol::Raw {
                    writeln!(
                        f,
                        "channel = {:?}\nchannel_from_path = {}\necho = {}",
                        h.channel, h.channel_from_path, h.echo
                    )?;
                    if let Some(field) = &h.direct_field {
                        writeln!(f, "direct_field = {field:?}")?;
                    }
                }
                let names = name_of(NamePolicy::NAMES, &h.names);
                let slow = name_of(SlowConsumer::NAMES, &h.slow_consumer);
                writeln!(
                    f,
                    "names = {names:?}\npresence_events = {}\nmax_channels_per_client = {}\nqueue_messages = {}\n\
                     queue_bytes = {}\nslow_consumer = {slow:?}\npublish_rate = {}\npublish_burst = {}",
                    h.presence_events,
                    h.max_channels_per_client,
                    h.queue_messages,
                    h.queue_bytes,
                    h.publish_rate,
                    h.publish_burst
                )?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::load(ConfigSource::Text(text), Some(env))
    }

    const MINIMAL: &str = r#"
        [tls]
        self_signed_if_missing = true
        cert = "/nonexistent/wsgate-test/cert.pem"
        key = "/nonexistent/wsgate-test/key.pem"
        [[routes]]
        path = "/echo"
        kind = "echo"
    "#;

    #[test]
    fn defaults_apply() {
        let c = load(MINIMAL, &[]).unwrap();
        assert_eq!(c.listen.addr, DEFAULT_LISTEN_ADDR.parse().unwrap());
        assert_eq!(c.limits.max_connections, DEFAULT_MAX_CONNECTIONS);
        assert_eq!(c.limits.idle_timeout, Some(DEFAULT_IDLE_TIMEOUT));
        assert_eq!(c.routes[0].name, "/echo");
        assert!(c.dev_cert_needed());
    }

    #[test]
    fn env_overrides_file() {
        let c = load(
            MINIMAL,
            &[
                ("WSGATE__LIMITS__MAX_CONNECTIONS", "7"),
                ("WSGATE__LISTEN__ADDR", "127.0.0.1:1"),
            ],
        )
        .unwrap();
        assert_eq!(c.limits.max_connections, 7);
        assert_eq!(c.listen.addr, "127.0.0.1:1".parse().unwrap());
    }

    #[test]
    fn every_problem_is_listed_with_its_key() {
        let text = r#"
            [listen]
            addr = "nowhere"
            bogus = 1
            [tls]
            cert = "/nonexistent/a.pem"
            key = "/nonexistent/b.pem"
            [limits]
            idle_timeout = "soon"
            max_message_size = "12 parsecs"
            max_connections = 0
            [[routes]]
            path = "echo"
            kind = "teleport"
        "#;
        let err = load(text, &[]).unwrap_err();
        let keys: Vec<&str> = err.issues.iter().map(|i| i.key.as_str()).collect();
        for key in [
            "listen.bogus",
            "listen.addr",
            "tls.cert",
            "tls.key",
            "limits.idle_timeout",
            "limits.max_message_size",
            "limits.max_connections",
            "routes[0].path",
            "routes[0].kind",
        ] {
            assert!(keys.contains(&key), "{key} missing from {keys:?}");
        }
    }

    #[test]
    fn frame_size_is_clamped_to_message_size() {
        let text = format!("{MINIMAL}\n[limits]\nmax_message_size = \"1KiB\"\n");
        let c = load(&text, &[]).unwrap();
        assert_eq!(c.limits.max_frame_size, 1024);
    }

    #[test]
    fn duplicate_routes_are_refused() {
        let text =
            format!("{MINIMAL}\n[[routes]]\npath = \"/echo\"\nkind = \"echo\"\nname = \"other\"\n");
        let err = load(&text, &[]).unwrap_err();
        assert_eq!(err.issues[0].key, "routes[1].path");
    }

    #[test]
    fn upstream_routes_validate_every_key() {
        let text = r#"
            [tls]
            self_signed_if_missing = true
            cert = "/nonexistent/wsgate-test/cert.pem"
            key = "/nonexistent/wsgate-test/key.pem"
            [[routes]]
            path = "/echo"
            kind = "echo"
            strip_prefix = true
            [[routes]]
            path = "/app"
            kind = "upstream"
            upstreams = ["http://x:1/", "ws://user:pw@x:1/", "wss://api.internal/ws"]
            balance = "random"
            backoff = "10s"
            backoff_max = "1s"
            tls_client_cert = "/nonexistent/c.pem"
            [[routes]]
            path = "/none"
            kind = "upstream"
        "#;
        let err = load(text, &[]).unwrap_err();
        let keys: Vec<&str> = err.issues.iter().map(|i| i.key.as_str()).collect();
        for key in [
            "routes[0].strip_prefix",
            "routes[1].upstreams[0]",
            "routes[1].upstreams[1]",
            "routes[1].balance",
            "routes[1].backoff_max",
            "routes[1].tls_client_key",
            "routes[2].upstreams",
        ] {
            assert!(keys.contains(&key), "{key} missing from {keys:?}");
        }
        assert!(
            !keys.contains(&"routes[1].upstreams[2]"),
            "wss://api.internal/ws is valid"
        );
    }

    #[test]
    fn allow_rules_parse_and_match() {
        let r = AllowRule::parse("10.1.0.0/16:8443").unwrap();
        assert!(r.host.matches_ip("10.1.200.3".parse().unwrap()));
        assert!(!r.host.matches_ip("10.2.0.1".parse().unwrap()));
        assert!(
            r.host.matches_ip("::ffff:10.1.0.9".parse().unwrap()),
            "IPv4-mapped counts as IPv4"
        );
        assert_eq!(r.port, Some(8443));
        let r = AllowRule::parse("*.internal:*").unwrap();
        assert!(
            r.host.matches_name("db.eu.internal")
                && !r.host.matches_name("internal")
                && r.port.is_none()
        );
        let r = AllowRule::parse("[fd00::/8]:443").unwrap();
        assert!(r.host.matches_ip("fd12::1".parse().unwrap()));
        assert_eq!(r.to_string(), "[fd00::/8]:443");
        for bad in ["nohost", "x:port", "10.0.0.0/40:1", "bad host:1"] {
            assert!(AllowRule::parse(bad).is_err(), "{bad}");
        }
        let p = EgressProxy::parse(
            "http://u:p@proxy.corp:3128",
            &["*.internal".into(), "10.0.0.0/8".into()],
        )
        .unwrap();
        assert_eq!(
            (p.host.as_str(), p.port, p.authorization.as_deref()),
            ("proxy.corp", 3128, Some("Basic dTpw"))
        );
        assert!(
            !p.applies_to("api.internal")
                && !p.applies_to("10.3.4.5")
                && p.applies_to("example.com")
        );
        assert!(EgressProxy::parse("socks5://x:1", &[]).is_err());
    }

    #[test]
    fn upstream_urls_parse() {
        let u = UpstreamUrl::parse("wss://[::1]:9443/ws/?a=b").unwrap();
        assert_eq!((u.secure, u.host.as_str(), u.port), (true, "::1", 9443));
        assert_eq!(
            (u.authority.as_str(), u.path.as_str(), u.query.as_deref()),
            ("[::1]:9443", "/ws", Some("a=b"))
        );
        let u = UpstreamUrl::parse("ws://backend").unwrap();
        assert_eq!(
            (u.port, u.authority.as_str(), u.path.as_str()),
            (80, "backend", "")
        );
        assert!(UpstreamUrl::parse("tcp://x:1").is_err());
    }

    #[test]
    fn sizes_and_durations_parse() {
        assert_eq!(parse_size("16MiB"), Ok(16 << 20));
        assert_eq!(parse_size("64 KiB"), Ok(64 << 10));
        assert_eq!(parse_size("1MB"), Ok(1_000_000));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("0").is_err());
        assert!(parse_size("1 parsec").is_err());
        assert!(parse_size("99999999999999999999").is_err());
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("0s").is_err());
        assert_eq!(parse_optional_duration("0s"), Ok(None));
        assert_eq!(parse_optional_duration("off"), Ok(None));
    }

    #[test]
    fn shipped_config_is_valid_and_prints_back() {
        let c = Config::load(ConfigSource::Text(EMBEDDED_DEFAULT), Some(HashMap::new()))
            .expect("shipped config validates");
        let printed = c.to_string();
        // The printed form is itself a valid config with the same meaning
        // (cert paths aside, which may not exist in a test checkout).
        let again = load(
            &printed.replace(
                "self_signed_if_missing = false",
                "self_signed_if_missing = true",
            ),
            &[],
        );
        let again = again.expect("printed config parses");
        assert_eq!(again.routes, c.routes);
        assert_eq!(again.limits.max_message_size, c.limits.max_message_size);
    }
}
