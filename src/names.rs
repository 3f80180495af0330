//! What names mean: hosts as clients and configs write them, the two kinds
//! of host pattern, and the names clients and channels may take.
//!
//! A leaf module: the config validates with these, and the route table, the
//! certificate resolver, the CONNECT tunnel and the hub match with the same
//! code, so a pattern means one thing wherever it is written.
//!
//! Two wildcard rules exist on purpose, each as its own type:
//! - [`ServerName`] (`[[routes]] host`, `[[tls.sni]] host`, `[tunnel]
//!   names`): `*.example.com` matches exactly one label, as a certificate's
//!   wildcard does (RFC 6125 §6.4.3).
//! - [`HostPattern`] (`[tunnel] allow`, an upstream's `no_proxy`):
//!   `*.example.com` matches names at any depth below `example.com`, as
//!   `NO_PROXY` does in curl, and IP networks are allowed.

use std::fmt;
use std::net::IpAddr;

use serde::{Serialize, Serializer};

/// An IPv4-mapped IPv6 address as the IPv4 address it is.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Split `host`, `host:port`, `[v6]` or `[v6]:port` into the host without
/// brackets and the port text, if any. A bare IPv6 address (`::1`) is a host
/// without a port.
pub fn split_host_port(s: &str) -> (&str, Option<&str>) {
    if let Some(rest) = s.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((host, tail)) => (host, tail.strip_prefix(':')),
            None => (rest, None),
        };
    }
    match s.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => (host, Some(port)),
        _ => (s, None),
    }
}

/// A `Host` header or SNI name as a lookup key: no port, no brackets, no
/// trailing dot, lower case (`Example.COM.:8443` → `example.com`).
pub fn normalize_host(host: &str) -> String {
    split_host_port(host)
        .0
        .trim_end_matches('.')
        .to_ascii_lowercase()
}

/// An SNI name as a lookup key for the TLS configs and certificates:
/// one trailing dot trimmed (a fully qualified name is the same name),
/// lower case (`Secure.Test.` → `secure.test`). Every SNI lookup goes
/// through here, so the config that verifies a client certificate and the
/// name that certificate is bound to never disagree.
pub fn normalize_sni(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

/// Is `name` a DNS name: dot-separated labels of `A-Z a-z 0-9 -`, each
/// 1-63 bytes, 253 in all?
fn is_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

/// A server name as certificates use them: `api.example.com`, or
/// `*.example.com` for any one label in front of `example.com`. Lower case.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ServerName {
    Exact(String),
    /// The suffix after `*.`: matches `label.suffix` for one label.
    Wildcard(String),
}

impl ServerName {
    pub fn parse(s: &str) -> Result<ServerName, String> {
        let lower = s.trim().to_ascii_lowercase();
        let (name, wildcard) = match lower.strip_prefix("*.") {
            Some(suffix) => (suffix, true),
            None => (lower.as_str(), false),
        };
        if !is_dns_name(name) {
            return Err(format!("not a host name or *.wildcard (got {s:?})"));
        }
        Ok(if wildcard {
            ServerName::Wildcard(name.to_owned())
        } else {
            ServerName::Exact(name.to_owned())
        })
    }

    /// Does `host` (already normalized: lower case, no port) match?
    pub fn matches(&self, host: &str) -> bool {
        match self {
            ServerName::Exact(name) => name == host,
            ServerName::Wildcard(suffix) => host
                .split_once('.')
                .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix),
        }
    }
}

impl fmt::Display for ServerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerName::Exact(name) => f.write_str(name),
            ServerName::Wildcard(suffix) => write!(f, "*.{suffix}"),
        }
    }
}

impl Serialize for ServerName {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A host rule as proxies write them: a name, `*.suffix` for any name at any
/// depth below `suffix`, or an IP network (`10.0.0.0/8`, `[fd00::/8]`, a
/// single address).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    Name(String),
    Suffix(String),
    Net(IpAddr, u8),
}

impl HostPattern {
    pub fn parse(s: &str) -> Result<HostPattern, String> {
        let s = s.trim();
        let s = s
            .strip_prefix('[')
            .and_then(|r| r.strip_suffix(']'))
            .unwrap_or(s)
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
        // Written like a server name; only the wildcard's reach differs.
        Ok(match ServerName::parse(&s)? {
            ServerName::Exact(name) => HostPattern::Name(name),
            ServerName::Wildcard(suffix) => HostPattern::Suffix(suffix),
        })
    }

    /// Does the name (as asked for) match? An address written as a name
    /// matches an IP network that covers it.
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

impl Serialize for HostPattern {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Channel names: 1-128 characters from `A-Z a-z 0-9 _ - . : /` (no other
/// bytes, so a name is safe in a URL path segment, a log line and JSON).
pub fn check_channel_name(name: &str) -> Result<(), String> {
    check_chars(name, 128, "_-.:/", "channel")
}

/// Client names: 1-64 characters from `A-Z a-z 0-9 _ - . @`.
pub fn check_client_name(name: &str) -> Result<(), String> {
    check_chars(name, 64, "_-.@", "client")
}

fn check_chars(name: &str, max: usize, extra: &str, what: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= max
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || extra.contains(c));
    if ok {
        Ok(())
    } else {
        let extra: Vec<String> = extra.chars().map(String::from).collect();
        Err(format!(
            "not a {what} name: 1-{max} of A-Z a-z 0-9 {} (got {name:?})",
            extra.join(" ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_split_and_normalize() {
        assert_eq!(split_host_port("a.test:80"), ("a.test", Some("80")));
        assert_eq!(split_host_port("[::1]:8443"), ("::1", Some("8443")));
        assert_eq!(split_host_port("[::1]"), ("::1", None));
        assert_eq!(split_host_port("::1"), ("::1", None));
        assert_eq!(split_host_port("a.test"), ("a.test", None));
        assert_eq!(normalize_host("API.Example.com.:443"), "api.example.com");
        assert_eq!(normalize_sni("Secure.Test."), "secure.test");
        assert_eq!(normalize_sni("secure.test"), "secure.test");
        assert_eq!(normalize_sni("a.test.."), "a.test.");
    }

    #[test]
    fn server_names_match_one_label() {
        let w = ServerName::parse("*.Example.com").unwrap();
        assert_eq!(w.to_string(), "*.example.com");
        assert!(w.matches("a.example.com"));
        assert!(!w.matches("a.b.example.com") && !w.matches("example.com"));
        let e = ServerName::parse("api.example.com").unwrap();
        assert!(e.matches("api.example.com") && !e.matches("x.api.example.com"));
        for bad in ["", "a..b", "*.", "bad host", "a.*.b"] {
            assert!(ServerName::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn host_patterns_match_any_depth_and_networks() {
        let s = HostPattern::parse("*.internal").unwrap();
        assert!(s.matches_name("db.eu.internal") && !s.matches_name("internal"));
        let n = HostPattern::parse("10.1.0.0/16").unwrap();
        assert!(n.matches_ip("::ffff:10.1.0.9".parse().unwrap()));
        assert!(n.matches_name("10.1.2.3") && !n.matches_name("10.2.0.1"));
        assert_eq!(
            HostPattern::parse("[fd00::/8]").unwrap().to_string(),
            "[fd00::/8]"
        );
    }

    #[test]
    fn names_are_checked() {
        assert!(check_client_name("alice@x.y").is_ok());
        assert!(check_client_name("a b").is_err());
        assert!(check_channel_name("prices/eu:1").is_ok());
        assert_eq!(
            check_channel_name("").unwrap_err(),
            "not a channel name: 1-128 of A-Z a-z 0-9 _ - . : / (got \"\")"
        );
    }
}
