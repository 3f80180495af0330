//! `[tunnel]`: HTTP `CONNECT` into the gateway: which names mean the
//! gateway itself, which other targets may be reached, and who may ask.

use std::fmt;
use std::time::Duration;

use serde::{Serialize, Serializer};

use super::reader::Section;
use super::value::{self, show_duration};
use crate::names::{HostPattern, ServerName};

pub const DEFAULT_TUNNEL_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_TUNNEL_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TunnelConfig {
    /// Extra names that mean this gateway (besides `localhost`, loopback and
    /// listen addresses, and the `[[tls.sni]]` hosts).
    pub names: Vec<ServerName>,
    /// Targets other than the gateway itself that may be tunnelled to.
    pub allow: Vec<AllowRule>,
    /// `Proxy-Authorization: Basic` credentials; empty: none required.
    #[serde(serialize_with = "show_users")]
    pub users: Vec<(String, String)>,
    #[serde(serialize_with = "show_duration")]
    pub connect_timeout: Duration,
    #[serde(serialize_with = "show_duration")]
    pub idle_timeout: Duration,
}

/// `host:port`, `*.suffix:port`, `10.1.0.0/16:port`; the port may be `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowRule {
    pub host: HostPattern,
    /// `None`: any port.
    pub port: Option<u16>,
}

impl AllowRule {
    pub fn parse(s: &str) -> Result<AllowRule, String> {
        let (host, port) = s.rsplit_once(':').ok_or("expected host:port")?;
        let port = match port {
            "*" => None,
            p => Some(p.parse::<u16>().map_err(|_| "bad port")?),
        };
        Ok(AllowRule {
            host: HostPattern::parse(host)?,
            port,
        })
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

impl TunnelConfig {
    pub(super) fn read(mut s: Section<'_>) -> Self {
        TunnelConfig {
            names: s.list("names", ServerName::parse),
            allow: s.list("allow", AllowRule::parse),
            users: s.list("users", |user| match user.split_once(':') {
                Some((u, p)) if !u.is_empty() && !p.is_empty() => Ok((u.to_owned(), p.to_owned())),
                _ => Err("expected \"user:password\"".to_owned()),
            }),
            connect_timeout: s.get(
                "connect_timeout",
                DEFAULT_TUNNEL_CONNECT_TIMEOUT,
                value::duration,
            ),
            idle_timeout: s.get("idle_timeout", DEFAULT_TUNNEL_IDLE_TIMEOUT, value::duration),
        }
    }
}

impl Serialize for AllowRule {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// `user:(hidden)`: passwords are never printed.
fn show_users<S: Serializer>(v: &[(String, String)], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(|(u, _)| format!("{u}:(hidden)")))
}

#[cfg(test)]
mod tests {
    use super::*;

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
    }
}
