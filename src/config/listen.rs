//! `[listen]`, `[admin]` and `[tls]`: where the gateway listens and with
//! which certificates.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use super::auth::{ClientAuth, read_client_auth};
use super::reader::Section;
use super::value;
use crate::names::ServerName;

pub const DEFAULT_LISTEN_ADDR: &str = "0.0.0.0:8443";
pub const DEFAULT_ADMIN_ADDR: &str = "127.0.0.1:9090";
pub const DEFAULT_HTTP2_MAX_STREAMS: u32 = 128;
pub const DEFAULT_HTTP2_STREAM_WINDOW: u32 = 64 << 10;
pub const DEFAULT_HTTP2_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// A stream's window: at least one HTTP/2 frame (16 KiB), at most 16 MiB
/// (HTTP/2 allows 2^31-1; more buffers more and gains nothing).
const HTTP2_WINDOW: std::ops::RangeInclusive<u32> = (16 << 10)..=(1 << 24);
const DEFAULT_CERT: &str = "certs/cert.pem";
const DEFAULT_KEY: &str = "certs/key.pem";

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ListenConfig {
    /// Public `wss://` listener.
    pub addr: SocketAddr,
    /// Accept HTTP `CONNECT` on the same port, in plaintext and inside TLS.
    pub connect_tunnel: bool,
    /// Offer HTTP/2 (ALPN `h2`) beside HTTP/1.1, with WebSockets over it
    /// (RFC 8441 extended CONNECT).
    pub http2: bool,
    /// Streams one HTTP/2 connection may have open at once (its
    /// `SETTINGS_MAX_CONCURRENT_STREAMS`).
    pub http2_max_streams: u32,
    /// Bytes one stream may have received and not yet read (its flow-control
    /// window). The connection's window is this times `http2_max_streams`,
    /// so a stream that stops reading never holds up its siblings.
    pub http2_stream_window: u32,
    /// How long an HTTP/2 connection stays open with no stream (after its
    /// first; the first must come within `limits.handshake_timeout`).
    #[serde(serialize_with = "value::show_duration")]
    pub http2_idle_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AdminConfig {
    /// Plain-HTTP admin listener: `/metrics`, `/healthz`, `/readyz`.
    pub addr: SocketAddr,
}

#[derive(Debug, Clone, Serialize)]
pub struct TlsConfig {
    /// The default certificate: served when no `[[tls.sni]]` entry matches.
    #[serde(flatten)]
    pub default: CertPair,
    /// Generate a self-signed development certificate at start-up when both
    /// default files are missing.
    pub self_signed_if_missing: bool,
    /// Extra certificates chosen by the client's SNI name.
    pub sni: Vec<SniCert>,
    /// `client_ca`, `client_auth`: TLS client certificates (`config/auth.rs`).
    #[serde(flatten)]
    pub client_auth: Option<ClientAuth>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertPair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, Serialize)]
pub struct SniCert {
    /// `api.example.com`, or `*.example.com` for one label.
    pub host: ServerName,
    #[serde(flatten)]
    pub files: CertPair,
    /// This name's own client-certificate rule; `None`: the listener's.
    #[serde(flatten)]
    pub client_auth: Option<ClientAuth>,
}

fn default_addr(s: &str) -> SocketAddr {
    s.parse().expect("default address constants parse")
}

impl ListenConfig {
    pub(super) fn read(mut s: Section<'_>) -> Self {
        ListenConfig {
            addr: s.get("addr", default_addr(DEFAULT_LISTEN_ADDR), value::addr),
            connect_tunnel: s.get("connect_tunnel", false, value::boolean),
            http2: s.get("http2", false, value::boolean),
            http2_max_streams: s.get(
                "http2_max_streams",
                DEFAULT_HTTP2_MAX_STREAMS,
                value::positive_u32,
            ),
            http2_stream_window: s.get("http2_stream_window", DEFAULT_HTTP2_STREAM_WINDOW, |v| {
                let size = value::size(v)?;
                u32::try_from(size)
                    .ok()
                    .filter(|size| HTTP2_WINDOW.contains(size))
                    .ok_or_else(|| "must be between 16KiB and 16MiB".to_owned())
            }),
            http2_idle_timeout: s.get(
                "http2_idle_timeout",
                DEFAULT_HTTP2_IDLE_TIMEOUT,
                value::duration,
            ),
        }
    }

    /// The HTTP/2 connection's flow-control window: room for every stream's.
    pub fn http2_connection_window(&self) -> u32 {
        let window = u64::from(self.http2_stream_window) * u64::from(self.http2_max_streams);
        u32::try_from(window).map_or(i32::MAX as u32, |w| w.min(i32::MAX as u32))
    }
}

impl AdminConfig {
    pub(super) fn read(mut s: Section<'_>) -> Self {
        AdminConfig {
            addr: s.get("addr", default_addr(DEFAULT_ADMIN_ADDR), value::addr),
        }
    }
}

impl TlsConfig {
    pub(super) fn read(mut s: Section<'_>) -> Self {
        let self_signed = s.get("self_signed_if_missing", false, value::boolean);
        let cert = PathBuf::from(s.string("cert").unwrap_or_else(|| DEFAULT_CERT.into()));
        let key = PathBuf::from(s.string("key").unwrap_or_else(|| DEFAULT_KEY.into()));
        if !(self_signed && !cert.exists() && !key.exists()) {
            s.readable("cert", &cert);
            s.readable("key", &key);
        }
        let mut sni: Vec<SniCert> = Vec::new();
        let mut seen = HashMap::new();
        s.each_table("sni", |mut entry| {
            let host = entry.required("host").and_then(|h| {
                ServerName::parse(&h)
                    .map_err(|problem| entry.issue("host", problem))
                    .ok()
            });
            if let Some(host) = &host
                && let Some(first) = seen.insert(host.clone(), entry.prefix().to_owned())
            {
                entry.issue("host", format!("\"{host}\" is already used by {first}"));
            }
            let files = CertPair::read(&mut entry, "cert", "key");
            let client_auth = read_client_auth(&mut entry);
            if let (Some(host), Some(files)) = (host, files) {
                sni.push(SniCert {
                    host,
                    files,
                    client_auth,
                });
            }
        });
        TlsConfig {
            default: CertPair { cert, key },
            self_signed_if_missing: self_signed,
            sni,
            client_auth: read_client_auth(&mut s),
        }
    }
}

impl CertPair {
    /// Both files, required and readable, under the keys `cert` and `key`
    /// (`tls_client_cert` and `tls_client_key` for an upstream).
    pub(super) fn read(s: &mut Section<'_>, cert: &str, key: &str) -> Option<CertPair> {
        let cert_path = s.required(cert).map(PathBuf::from);
        let key_path = s.required(key).map(PathBuf::from);
        let pair = CertPair {
            cert: cert_path?,
            key: key_path?,
        };
        s.readable(cert, &pair.cert);
        s.readable(key, &pair.key);
        Some(pair)
    }
}
