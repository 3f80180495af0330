//! The keys of a `kind = "upstream"` route: its pool of members, how to
//! balance and back off, TLS to `wss://` members, and an egress proxy.

use std::path::PathBuf;
use std::time::Duration;

use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};

use super::listen::CertPair;
use super::reader::Section;
use super::value::{self, show_duration, show_duration_or_off};
use crate::names::{HostPattern, ServerName, split_host_port};

pub const DEFAULT_UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_UPSTREAM_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_UPSTREAM_BACKOFF: Duration = Duration::from_secs(1);
pub const DEFAULT_UPSTREAM_BACKOFF_MAX: Duration = Duration::from_secs(30);
pub const DEFAULT_UPSTREAM_PING_INTERVAL: Duration = Duration::from_secs(30);
/// The port of an egress proxy URL without one (Squid's).
const DEFAULT_PROXY_PORT: u16 = 3128;

/// A `kind = "upstream"` route's pool and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UpstreamConfig {
    #[serde(rename = "upstreams")]
    pub members: Vec<UpstreamUrl>,
    /// Remove the route's path prefix before appending the request path to
    /// the member's path.
    pub strip_prefix: bool,
    pub balance: Balance,
    /// TCP connect to a member.
    #[serde(serialize_with = "show_duration")]
    pub connect_timeout: Duration,
    /// TLS handshake and the member's answer to the upgrade, together.
    #[serde(serialize_with = "show_duration")]
    pub handshake_timeout: Duration,
    /// A member that fails is skipped for `backoff`, doubling per failure up
    /// to `backoff_max` (each with up to 20 % jitter).
    #[serde(serialize_with = "show_duration")]
    pub backoff: Duration,
    #[serde(serialize_with = "show_duration")]
    pub backoff_max: Duration,
    /// Active check (TCP connect) of every member this often; `None`: off.
    #[serde(serialize_with = "show_duration_or_off")]
    pub health_check_interval: Option<Duration>,
    /// Ping the member this often in each session; a ping still unanswered
    /// (and nothing else heard) at the next ends the session; `None`: off.
    #[serde(serialize_with = "show_duration_or_off")]
    pub upstream_ping_interval: Option<Duration>,
    /// When permessage-deflate is offered to a member.
    pub upstream_compression: UpstreamCompression,
    #[serde(flatten)]
    pub tls: UpstreamTls,
    /// Dial members through this HTTP CONNECT proxy.
    #[serde(flatten)]
    pub proxy: Option<EgressProxy>,
}

/// `upstream_compression`: when a member is offered permessage-deflate
/// (without context takeover either way).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamCompression {
    /// When the client agreed it: where the member agrees too, compressed
    /// frames pass through untouched; where it does not, the gateway
    /// inflates and compresses on the client's side.
    Auto,
    /// Always, for a member across a costly link: a client without the
    /// extension gets what the member compressed inflated.
    Always,
    /// Never: the gateway takes compression off every client's messages
    /// (and checks them inflated) and speaks plain frames to members.
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    RoundRobin,
    LeastConnections,
}

/// TLS to `wss://` members.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct UpstreamTls {
    /// Trust these CAs (PEM) instead of the system roots.
    #[serde(rename = "tls_ca", skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// Name sent as SNI and verified, instead of the member's host.
    #[serde(rename = "tls_server_name", skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// Client certificate for mutual TLS.
    #[serde(flatten, serialize_with = "show_client_cert")]
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

/// An egress HTTP proxy for an upstream route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EgressProxy {
    /// As written, password hidden: for logs.
    #[serde(rename = "proxy")]
    pub display: String,
    #[serde(skip)]
    pub host: String,
    #[serde(skip)]
    pub port: u16,
    /// `Proxy-Authorization` value, if the URL carried user:password.
    #[serde(skip)]
    pub authorization: Option<String>,
    /// Members whose host matches one of these are dialled directly.
    pub no_proxy: Vec<HostPattern>,
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
        let host = split_host_port(authority.host()).0.to_owned();
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

impl Serialize for UpstreamUrl {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.url)
    }
}

impl EgressProxy {
    pub fn parse(url: &str, no_proxy: Vec<HostPattern>) -> Result<EgressProxy, String> {
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
        let port = hostport.port_u16().unwrap_or(DEFAULT_PROXY_PORT);
        Ok(EgressProxy {
            display: format!("http://{}:{port}", hostport.host()),
            host: split_host_port(hostport.host()).0.to_owned(),
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

impl UpstreamConfig {
    pub(super) fn read(s: &mut Section<'_>) -> Self {
        if s.count("upstreams") == 0 {
            s.issue(
                "upstreams",
                "a list of at least one ws:// or wss:// URL is required",
            );
        }
        let config = UpstreamConfig {
            members: s.list("upstreams", UpstreamUrl::parse),
            strip_prefix: s.get("strip_prefix", false, value::boolean),
            balance: s.get("balance", Balance::RoundRobin, value::choice),
            connect_timeout: s.get(
                "connect_timeout",
                DEFAULT_UPSTREAM_CONNECT_TIMEOUT,
                value::duration,
            ),
            handshake_timeout: s.get(
                "handshake_timeout",
                DEFAULT_UPSTREAM_HANDSHAKE_TIMEOUT,
                value::duration,
            ),
            backoff: s.get("backoff", DEFAULT_UPSTREAM_BACKOFF, value::duration),
            backoff_max: s.get("backoff_max", DEFAULT_UPSTREAM_BACKOFF_MAX, value::duration),
            health_check_interval: s.get("health_check_interval", None, value::duration_or_off),
            upstream_ping_interval: s.get(
                "upstream_ping_interval",
                Some(DEFAULT_UPSTREAM_PING_INTERVAL),
                value::duration_or_off,
            ),
            upstream_compression: s.get(
                "upstream_compression",
                UpstreamCompression::Auto,
                value::choice,
            ),
            tls: UpstreamTls::read(s),
            proxy: EgressProxy::read(s),
        };
        if config.backoff_max < config.backoff {
            s.issue("backoff_max", "must not be less than backoff");
        }
        config
    }
}

impl UpstreamTls {
    fn read(s: &mut Section<'_>) -> Self {
        let ca = s.string("tls_ca").map(PathBuf::from);
        if let Some(ca) = &ca {
            s.readable("tls_ca", ca);
        }
        let server_name = s.opt("tls_server_name", |name| {
            let name = name.to_ascii_lowercase();
            if name.parse::<std::net::IpAddr>().is_err() {
                ServerName::parse(&name)?;
            }
            Ok(name)
        });
        let client_cert = match (s.has("tls_client_cert"), s.has("tls_client_key")) {
            (false, false) => None,
            _ => CertPair::read(s, "tls_client_cert", "tls_client_key"),
        };
        UpstreamTls {
            ca,
            server_name,
            client_cert,
        }
    }
}

impl EgressProxy {
    fn read(s: &mut Section<'_>) -> Option<Self> {
        let no_proxy_given = s.has("no_proxy");
        let no_proxy = s.list("no_proxy", HostPattern::parse);
        let Some(url) = s.string("proxy") else {
            if no_proxy_given {
                s.issue("no_proxy", "only applies with proxy");
            }
            return None;
        };
        EgressProxy::parse(&url, no_proxy)
            .map_err(|problem| s.issue("proxy", problem))
            .ok()
    }
}

fn show_client_cert<S: Serializer>(pair: &Option<CertPair>, s: S) -> Result<S::Ok, S::Error> {
    let mut map = s.serialize_map(None)?;
    if let Some(pair) = pair {
        map.serialize_entry("tls_client_cert", &pair.cert)?;
        map.serialize_entry("tls_client_key", &pair.key)?;
    }
    map.end()
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn egress_proxies_parse() {
        let no_proxy = ["*.internal", "10.0.0.0/8"]
            .iter()
            .map(|p| HostPattern::parse(p).unwrap())
            .collect();
        let p = EgressProxy::parse("http://u:p@proxy.corp:3128", no_proxy).unwrap();
        assert_eq!(
            (p.host.as_str(), p.port, p.authorization.as_deref()),
            ("proxy.corp", 3128, Some("Basic dTpw"))
        );
        assert!(
            !p.applies_to("api.internal")
                && !p.applies_to("10.3.4.5")
                && p.applies_to("example.com")
        );
        assert!(EgressProxy::parse("socks5://x:1", Vec::new()).is_err());
    }
}
