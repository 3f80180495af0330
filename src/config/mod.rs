//! Configuration: one TOML file plus `WSGATE__SECTION__KEY` environment
//! overrides, turned into a validated, typed [`Config`].
//!
//! Each section's file owns its type, its defaults and its validation:
//! `listen.rs` (`[listen]`, `[admin]`, `[tls]`), `limits.rs`, `hub.rs`,
//! `tunnel.rs`, `route.rs` (with `upstream.rs` and the hub keys of a route).
//! `reader.rs` hands each section its keys and collects every problem with
//! its key, so one pass reports all of them; `value.rs` reads and prints
//! one value. `check-config` prints the effective config through serde and
//! the `toml` crate, in the file's own shape.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

mod auth;
mod files;
mod hub;
mod limits;
mod listen;
mod reader;
mod route;
mod subprotocol;
mod tunnel;
mod upstream;
mod value;

pub use auth::{
    Access, ClientAuth, ClientAuthMode, DEFAULT_JWT_LEEWAY, JwtAlgorithm, JwtConfig, JwtKey,
    OriginPattern,
};
pub use files::StaticRoute;
pub use hub::*;
pub use limits::*;
pub use listen::{
    AdminConfig, CertPair, DEFAULT_ADMIN_ADDR, DEFAULT_LISTEN_ADDR, ListenConfig, SniCert,
    TlsConfig,
};
pub use route::{
    Compression, DEFAULT_COMPRESSION_LEVEL, DEFAULT_COMPRESSION_MIN_SIZE, Deflate, Route, RouteKind,
};
pub use subprotocol::{
    HUB_JSON_SUBPROTOCOL, HUB_RAW_SUBPROTOCOL, Subprotocols, UnknownSubprotocol,
};
pub use tunnel::{
    AllowRule, DEFAULT_TUNNEL_CONNECT_TIMEOUT, DEFAULT_TUNNEL_IDLE_TIMEOUT, TunnelConfig,
};
pub use upstream::{
    Balance, DEFAULT_UPSTREAM_BACKOFF, DEFAULT_UPSTREAM_BACKOFF_MAX,
    DEFAULT_UPSTREAM_CONNECT_TIMEOUT, DEFAULT_UPSTREAM_HANDSHAKE_TIMEOUT, EgressProxy,
    UpstreamCompression, UpstreamConfig, UpstreamTls, UpstreamUrl,
};
pub use value::{duration as parse_duration, size as parse_size};

use reader::{Issues, Raw, Section};

/// Where `wsgate` looks for its config when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "config/wsgate.toml";
/// The shipped `config/wsgate.toml`, compiled in: used when the default path
/// does not exist, so the binary runs from any directory.
pub const EMBEDDED_DEFAULT: &str = include_str!("../../config/wsgate.toml");
/// Prefix of environment overrides: `WSGATE__LIMITS__IDLE_TIMEOUT=60s`.
pub const ENV_PREFIX: &str = "WSGATE";

/// The validated configuration the gateway runs on.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    pub listen: ListenConfig,
    pub tls: TlsConfig,
    pub admin: AdminConfig,
    pub limits: Limits,
    pub hub: HubConfig,
    pub tunnel: TunnelConfig,
    pub routes: Vec<Route>,
}

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

/// Every problem found in a config, section by section.
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
        let keys = BTreeMap::<String, Raw>::deserialize(merged)
            .map_err(|e| ConfigError::single(name, "(structure)", e.to_string()))?;
        let mut issues = Issues::default();
        let config = Config::read(Section::new(&mut issues, String::new(), keys));
        match issues.0.is_empty() {
            true => Ok(config),
            false => Err(ConfigError {
                source_name: name.to_owned(),
                issues: issues.0,
            }),
        }
    }

    /// Every section; problems go to the issues behind `s`.
    fn read(mut s: Section<'_>) -> Config {
        let listen = ListenConfig::read(s.section("listen"));
        let admin = AdminConfig::read(s.section("admin"));
        if listen.addr == admin.addr && listen.addr.port() != 0 {
            s.issue("admin.addr", "must differ from listen.addr");
        }
        Config {
            listen,
            admin,
            tls: TlsConfig::read(s.section("tls")),
            limits: Limits::read(s.section("limits")),
            hub: HubConfig::read(s.section("hub")),
            tunnel: TunnelConfig::read(s.section("tunnel")),
            routes: route::read_all(&mut s),
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

/// The effective config in the file's own shape (`check-config`). Secrets
/// are shown as `(set)` or `user:(hidden)`.
impl fmt::Display for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = toml::to_string(self).map_err(|_| fmt::Error)?;
        f.write_str(&text)
    }
}

#[cfg(test)]
mod tests;
