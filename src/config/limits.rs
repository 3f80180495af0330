//! `[limits]`: every bound and deadline the gateway enforces, with their
//! defaults.

use std::time::Duration;

use serde::Serialize;

use super::reader::Section;
use super::value::{self, show_duration, show_duration_or_off, show_or_off};

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
/// At most about 90 MiB of codecs (about 350 KiB per connection).
pub const DEFAULT_COMPRESSION_CONTEXTS: usize = 256;

/// Every bound and deadline the gateway enforces.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Limits {
    pub max_connections: usize,
    /// Connections open per client address (IPv6: per /64); `None`: off.
    #[serde(serialize_with = "show_or_off")]
    pub max_connections_per_ip: Option<usize>,
    /// New connections per second, over all clients (burst: one second's worth).
    pub handshake_rate: f64,
    /// New connections per second per client address (IPv6: per /64); `None`: off.
    #[serde(serialize_with = "show_or_off")]
    pub handshake_rate_per_ip: Option<f64>,
    /// TLS handshake and HTTP request head together.
    #[serde(serialize_with = "show_duration")]
    pub handshake_timeout: Duration,
    /// No data message either way for this long closes the session; `None`: off.
    #[serde(serialize_with = "show_duration_or_off")]
    pub idle_timeout: Option<Duration>,
    /// Server ping period; a ping unanswered by the next one closes; `None`: off.
    #[serde(serialize_with = "show_duration_or_off")]
    pub ping_interval: Option<Duration>,
    /// A write to a client that makes no progress for this long closes it.
    #[serde(serialize_with = "show_duration")]
    pub send_timeout: Duration,
    /// How long to wait for the peer's Close reply (and TLS close) at the end.
    #[serde(serialize_with = "show_duration")]
    pub close_timeout: Duration,
    /// How long shutdown waits for sessions after sending them 1001.
    #[serde(serialize_with = "show_duration")]
    pub drain_timeout: Duration,
    pub max_message_size: usize,
    /// Never larger than `max_message_size` (clamped), so an oversize message
    /// in one frame is refused from its header, before it is buffered.
    pub max_frame_size: usize,
    pub max_header_size: usize,
    pub max_headers: usize,
    /// Connections that may keep permessage-deflate context at once (on
    /// routes with `compression_context_takeover`).
    pub compression_contexts: usize,
}

impl Limits {
    pub(super) fn read(mut s: Section<'_>) -> Self {
        let per_ip = value::off_or(value::positive);
        let rate_per_ip = value::off_or(value::rate);
        let limits = Limits {
            max_connections: s.get("max_connections", DEFAULT_MAX_CONNECTIONS, value::positive),
            max_connections_per_ip: s.get("max_connections_per_ip", None, per_ip),
            handshake_rate: s.get("handshake_rate", DEFAULT_HANDSHAKE_RATE, value::rate),
            handshake_rate_per_ip: s.get("handshake_rate_per_ip", None, rate_per_ip),
            handshake_timeout: s.get(
                "handshake_timeout",
                DEFAULT_HANDSHAKE_TIMEOUT,
                value::duration,
            ),
            idle_timeout: s.get(
                "idle_timeout",
                Some(DEFAULT_IDLE_TIMEOUT),
                value::duration_or_off,
            ),
            ping_interval: s.get(
                "ping_interval",
                Some(DEFAULT_PING_INTERVAL),
                value::duration_or_off,
            ),
            send_timeout: s.get("send_timeout", DEFAULT_SEND_TIMEOUT, value::duration),
            close_timeout: s.get("close_timeout", DEFAULT_CLOSE_TIMEOUT, value::duration),
            drain_timeout: s.get("drain_timeout", DEFAULT_DRAIN_TIMEOUT, value::duration),
            max_message_size: s.get("max_message_size", DEFAULT_MAX_MESSAGE_SIZE, value::size),
            max_frame_size: s.get("max_frame_size", DEFAULT_MAX_FRAME_SIZE, value::size),
            max_header_size: s.get("max_header_size", DEFAULT_MAX_HEADER_SIZE, value::size),
            max_headers: s.get("max_headers", DEFAULT_MAX_HEADERS, value::positive),
            compression_contexts: s.get(
                "compression_contexts",
                DEFAULT_COMPRESSION_CONTEXTS,
                value::whole,
            ),
        };
        if limits.max_header_size < 1024 {
            s.issue("max_header_size", "must be at least 1KiB");
        }
        Limits {
            max_frame_size: limits.max_frame_size.min(limits.max_message_size),
            ..limits
        }
    }
}
