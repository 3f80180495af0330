//! The access keys of a route: which web origins may open it
//! (`origins`, `allow_no_origin`) and, in its `jwt` table, which tokens
//! let a client in and what of their claims the session carries.
//!
//! Only what is written is kept here; key files are read when the route
//! table is built (`auth::RouteAuth::new`), so a reload (SIGHUP) reads them
//! again.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Serialize, Serializer};

use super::reader::Section;
use super::value::{self, show_duration};
use crate::names::ServerName;

/// How far `exp` and `nbf` may be off before a token is refused.
pub const DEFAULT_JWT_LEEWAY: Duration = Duration::from_secs(30);
/// The query parameter a browser puts its token in.
pub const DEFAULT_JWT_QUERY: &str = "token";

/// Who may open a route.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct Access {
    /// Web origins allowed to open the route; empty: any.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub origins: Vec<OriginPattern>,
    /// With `origins` set: whether a request without `Origin` (a
    /// non-browser client) is let in.
    pub allow_no_origin: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwt: Option<JwtConfig>,
    /// A verified TLS client certificate is required; its subject CN (or
    /// first SAN) names the client when no token does.
    pub client_cert: bool,
}

impl Access {
    /// No access keys at all: a static route's.
    pub fn is_none(&self) -> bool {
        *self == Access::default()
    }
}

/// Whether the TLS front asks clients for a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuthMode {
    Off,
    /// A client without a certificate is let in; one with a certificate
    /// not signed by `client_ca` is not.
    Optional,
    /// No certificate signed by `client_ca`, no TLS.
    Required,
}

/// `client_ca` and `client_auth` of `[tls]` or a `[[tls.sni]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClientAuth {
    #[serde(rename = "client_auth")]
    pub mode: ClientAuthMode,
    #[serde(rename = "client_ca", skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
}

/// The client-certificate keys of a TLS section; `None` when neither is
/// written. `client_ca` alone means `client_auth = "required"`.
pub(super) fn read_client_auth(s: &mut Section<'_>) -> Option<ClientAuth> {
    if !s.has("client_auth") && !s.has("client_ca") {
        return None;
    }
    let ca = s
        .string("client_ca")
        .filter(|c| !c.is_empty())
        .map(PathBuf::from);
    let default = match ca {
        Some(_) => ClientAuthMode::Required,
        None => ClientAuthMode::Off,
    };
    let mode = s.get("client_auth", default, value::choice);
    if mode != ClientAuthMode::Off && ca.is_none() {
        s.issue(
            "client_ca",
            format!("is required with client_auth = {mode:?}"),
        );
    }
    if let Some(ca) = &ca {
        s.readable("client_ca", ca);
    }
    Some(ClientAuth { mode, ca })
}

/// `https://app.example.com`, `https://*.example.com`, `http://localhost:3000`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginPattern {
    scheme: String,
    host: ServerName,
    port: Option<u16>,
}

impl OriginPattern {
    pub fn parse(s: &str) -> Result<OriginPattern, String> {
        let (scheme, rest) = s
            .split_once("://")
            .ok_or("expected scheme://host[:port], e.g. https://app.example.com")?;
        let scheme = scheme.to_ascii_lowercase();
        if scheme != "https" && scheme != "http" {
            return Err("the scheme must be https or http".into());
        }
        let (host, port) = match rest.rsplit_once(':') {
            Some((host, port)) => {
                let port = port.parse().map_err(|_| "the port is not a number")?;
                (host, Some(port))
            }
            None => (rest, None),
        };
        let host = ServerName::parse(host)?;
        Ok(OriginPattern { scheme, host, port })
    }

    /// Does an `Origin` header value match? (`null` and malformed never do.)
    pub fn matches(&self, origin: &str) -> bool {
        let Some((scheme, rest)) = origin.split_once("://") else {
            return false;
        };
        let (host, port) = match rest.rsplit_once(':') {
            Some((host, port)) => match port.parse::<u16>() {
                Ok(port) => (host, Some(port)),
                Err(_) => return false,
            },
            None => (rest, None),
        };
        scheme.eq_ignore_ascii_case(&self.scheme)
            && port == self.port
            && self.host.matches(&host.to_ascii_lowercase())
    }
}

impl std::fmt::Display for OriginPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}", self.scheme, self.host)?;
        match self.port {
            Some(port) => write!(f, ":{port}"),
            None => Ok(()),
        }
    }
}

impl Serialize for OriginPattern {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The signing algorithm a route accepts: one, pinned, so a token cannot
/// pick its own (no `none`, no HS256 made with an RSA public key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
pub enum JwtAlgorithm {
    HS256,
    HS384,
    HS512,
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
}

impl JwtAlgorithm {
    pub fn is_hmac(self) -> bool {
        matches!(
            self,
            JwtAlgorithm::HS256 | JwtAlgorithm::HS384 | JwtAlgorithm::HS512
        )
    }
}

/// Where the verification key comes from.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JwtKey {
    /// An HMAC secret in a file (its bytes, one trailing newline dropped).
    SecretFile(PathBuf),
    /// An HMAC secret in an environment variable (named here).
    SecretEnv(String),
    /// A PEM public key (RSA, EC or Ed25519).
    PublicKey(PathBuf),
    /// A JWKS file; the token's `kid` picks the key. Read again on reload.
    Jwks(PathBuf),
}

/// `[routes.jwt]`: a token is required on this route.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JwtConfig {
    pub algorithm: JwtAlgorithm,
    #[serde(flatten)]
    pub key: JwtKey,
    /// Accepted `aud` values; empty: `aud` is not checked.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub audience: Vec<String>,
    /// Accepted `iss` values; empty: `iss` is not checked.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub issuer: Vec<String>,
    #[serde(serialize_with = "show_duration")]
    pub leeway: Duration,
    /// How long a session may outlive its token's `exp` before it is
    /// closed with 1008 `token expired`.
    #[serde(serialize_with = "show_duration")]
    pub expiry_grace: Duration,
    /// A cookie that may carry the token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
    /// The query parameter that may carry the token (removed before the
    /// path is logged or forwarded).
    pub query: String,
    /// Upstream routes: the header that carries the token's `sub`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject_header: Option<String>,
    /// Upstream routes: `claim = "Header-Name"`, each claim to a header.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub claim_headers: Vec<(String, String)>,
}

/// The access keys of one route.
pub(super) fn read(s: &mut Section<'_>) -> Access {
    let origins = s.list("origins", OriginPattern::parse);
    let allow_no_origin = s.get("allow_no_origin", true, value::boolean);
    let client_cert = s.get("client_cert", false, value::boolean);
    let jwt = if s.has("jwt") {
        read_jwt(&mut s.section("jwt"))
    } else {
        None
    };
    Access {
        origins,
        allow_no_origin,
        jwt,
        client_cert,
    }
}

fn read_jwt(s: &mut Section<'_>) -> Option<JwtConfig> {
    let algorithm = s.required("algorithm").and_then(|a| {
        value::choice::<JwtAlgorithm>(a.trim())
            .map_err(|_| {
                s.issue(
                    "algorithm",
                    format!("unknown algorithm {a:?}; expected HS256, RS256, ES256, EdDSA, ..."),
                )
            })
            .ok()
    });
    let key = read_key(s, algorithm);
    let header_name = |v: &str| {
        http::HeaderName::from_bytes(v.as_bytes())
            .map(|_| v.to_ascii_lowercase())
            .map_err(|_| "not a header name".to_owned())
    };
    let claim_headers = s.list("claim_headers", |entry| {
        let (claim, header) = entry
            .split_once('=')
            .ok_or("expected \"claim=Header-Name\"")?;
        Ok((claim.trim().to_owned(), header_name(header.trim())?))
    });
    let config = JwtConfig {
        algorithm: algorithm?,
        key: key?,
        audience: s.list("audience", |v| Ok(v.to_owned())),
        issuer: s.list("issuer", |v| Ok(v.to_owned())),
        leeway: s.get("leeway", DEFAULT_JWT_LEEWAY, |v| {
            value::duration_or_off(v).map(Option::unwrap_or_default)
        }),
        expiry_grace: s.get("expiry_grace", Duration::ZERO, |v| {
            value::duration_or_off(v).map(Option::unwrap_or_default)
        }),
        cookie: s.string("cookie").filter(|c| !c.is_empty()),
        query: s.get("query", DEFAULT_JWT_QUERY.to_owned(), |v| Ok(v.to_owned())),
        subject_header: s.opt("subject_header", header_name),
        claim_headers,
    };
    Some(config)
}

/// Exactly one key source, of the algorithm's family.
fn read_key(s: &mut Section<'_>, algorithm: Option<JwtAlgorithm>) -> Option<JwtKey> {
    let mut keys = Vec::new();
    if let Some(p) = s.string("secret_file") {
        keys.push(("secret_file", JwtKey::SecretFile(p.into())));
    }
    if let Some(v) = s.string("secret_env") {
        keys.push(("secret_env", JwtKey::SecretEnv(v)));
    }
    if let Some(p) = s.string("public_key") {
        keys.push(("public_key", JwtKey::PublicKey(p.into())));
    }
    if let Some(p) = s.string("jwks") {
        keys.push(("jwks", JwtKey::Jwks(p.into())));
    }
    if keys.len() != 1 {
        let problem = "exactly one of secret_file, secret_env, public_key, jwks is required";
        s.issue("secret_file", problem);
        return None;
    }
    let (name, key) = keys.pop()?;
    let hmac_key = matches!(key, JwtKey::SecretFile(_) | JwtKey::SecretEnv(_));
    match algorithm {
        Some(alg) if alg.is_hmac() != hmac_key => {
            let problem = if hmac_key {
                format!("{alg:?} verifies with a public key (public_key or jwks)")
            } else {
                format!("{alg:?} verifies with a secret (secret_file or secret_env)")
            };
            s.issue(name, problem);
            None
        }
        _ => Some(key),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_match_exactly_or_one_label() {
        let exact = OriginPattern::parse("https://app.example.com").unwrap();
        assert!(exact.matches("https://app.example.com"));
        assert!(exact.matches("HTTPS://App.Example.com"));
        assert!(!exact.matches("http://app.example.com"));
        assert!(!exact.matches("https://app.example.com:8443"));
        assert!(!exact.matches("https://app.example.com.evil.net"));
        assert!(!exact.matches("null"));
        let wild = OriginPattern::parse("https://*.example.com").unwrap();
        assert!(wild.matches("https://chat.example.com"));
        assert!(!wild.matches("https://example.com"));
        assert!(!wild.matches("https://a.b.example.com"));
        assert!(!wild.matches("https://evilexample.com"));
        let port = OriginPattern::parse("http://localhost:3000").unwrap();
        assert!(port.matches("http://localhost:3000"));
        assert!(!port.matches("http://localhost"));
        for bad in [
            "app.example.com",
            "ftp://x.com",
            "https://",
            "https://x.com:http",
        ] {
            assert!(OriginPattern::parse(bad).is_err(), "{bad}");
        }
    }
}
