//! Every metric name, its description, and small typed helpers. Per-route
//! series are registered once (at start-up) as handles, so the message path
//! updates an atomic and never looks a name up.

use std::sync::OnceLock;

use metrics::{
    Counter, Gauge, Histogram, Unit, counter, describe_counter, describe_gauge, describe_histogram,
    gauge, histogram,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::close::{
    AuthFailure, EarlyFailure, HubDrop, Rejection, Reload, SessionEnd, Shed, Side, TunnelOutcome,
};
use crate::config::Route;

pub const CONNECTIONS_TOTAL: &str = "wsgate_connections_total";
pub const CONNECTIONS_ACTIVE: &str = "wsgate_connections_active";
pub const CONNECTIONS_REJECTED_TOTAL: &str = "wsgate_connections_rejected_total";
pub const MESSAGES_TOTAL: &str = "wsgate_messages_total";
pub const BYTES_TOTAL: &str = "wsgate_bytes_total";
pub const HANDSHAKE_FAILURES_TOTAL: &str = "wsgate_handshake_failures_total";
pub const TLS_HANDSHAKE_FAILURES_TOTAL: &str = "wsgate_tls_handshake_failures_total";
pub const AUTH_FAILURES_TOTAL: &str = "wsgate_auth_failures_total";
pub const SESSIONS_ENDED_TOTAL: &str = "wsgate_sessions_ended_total";
pub const SESSION_DURATION_SECONDS: &str = "wsgate_session_duration_seconds";
pub const UPSTREAM_CONNECT_SECONDS: &str = "wsgate_upstream_connect_seconds";
pub const UPSTREAM_ERRORS_TOTAL: &str = "wsgate_upstream_errors_total";
pub const UPSTREAM_HEALTHY: &str = "wsgate_upstream_healthy";
pub const BUILD_INFO: &str = "wsgate_build_info";
pub const TLS_CERT_NOT_AFTER_SECONDS: &str = "wsgate_tls_cert_not_after_seconds";
pub const CONFIG_RELOADS_TOTAL: &str = "wsgate_config_reloads_total";
pub const TUNNELS_TOTAL: &str = "wsgate_tunnels_total";
pub const TUNNEL_BYTES_TOTAL: &str = "wsgate_tunnel_bytes_total";
pub const COMPRESSION_BYTES_TOTAL: &str = "wsgate_compression_bytes_total";
pub const COMPRESSION_CONTEXTS: &str = "wsgate_compression_contexts";
pub const WEBSOCKET_HANDSHAKES_TOTAL: &str = "wsgate_websocket_handshakes_total";
pub const SESSIONS_OPEN: &str = "wsgate_sessions_open";
pub const HTTP2_CONNECTIONS_TOTAL: &str = "wsgate_http2_connections_total";
pub const HTTP2_CONNECTIONS_OPEN: &str = "wsgate_http2_connections_open";
pub const HTTP2_STREAMS_OPEN: &str = "wsgate_http2_streams_open";
pub const HTTP2_STREAMS_PER_CONNECTION: &str = "wsgate_http2_streams_per_connection";
pub const TASKS: &str = "wsgate_tasks";
pub const HUB_QUEUED_MESSAGES: &str = "wsgate_hub_queued_messages";
pub const HUB_QUEUED_BYTES: &str = "wsgate_hub_queued_bytes";
pub const HUB_CLIENTS: &str = "wsgate_hub_clients";
pub const HUB_CHANNELS: &str = "wsgate_hub_channels";
pub const HUB_SUBSCRIPTIONS: &str = "wsgate_hub_subscriptions";
pub const HUB_PUBLISHED_TOTAL: &str = "wsgate_hub_published_total";
pub const HUB_DIRECT_TOTAL: &str = "wsgate_hub_direct_total";
pub const HUB_DELIVERED_TOTAL: &str = "wsgate_hub_delivered_total";
pub const HUB_DROPPED_TOTAL: &str = "wsgate_hub_dropped_total";
pub const HUB_API_REQUESTS_TOTAL: &str = "wsgate_hub_api_requests_total";
pub const STATIC_REQUESTS_TOTAL: &str = "wsgate_static_requests_total";
pub const BACKPLANE_UP: &str = "wsgate_backplane_up";
pub const BACKPLANE_PUBLISHES_TOTAL: &str = "wsgate_backplane_publishes_total";
pub const BACKPLANE_RECEIVED_TOTAL: &str = "wsgate_backplane_received_total";
pub const BACKPLANE_RECONNECTS_TOTAL: &str = "wsgate_backplane_reconnects_total";
pub const BACKPLANE_RTT_SECONDS: &str = "wsgate_backplane_rtt_seconds";
pub const BACKPLANE_LAG_SECONDS: &str = "wsgate_backplane_lag_seconds";
pub const BACKPLANE_DROPPED_TOTAL: &str = "wsgate_backplane_dropped_total";

/// Every metric name wsgate exports besides the standard `process_*` ones
/// (which `metrics-process` provides). Dashboards and alert rules may use
/// only these; a test checks that they do.
pub const ALL: &[&str] = &[
    CONNECTIONS_TOTAL,
    CONNECTIONS_ACTIVE,
    CONNECTIONS_REJECTED_TOTAL,
    MESSAGES_TOTAL,
    BYTES_TOTAL,
    HANDSHAKE_FAILURES_TOTAL,
    TLS_HANDSHAKE_FAILURES_TOTAL,
    AUTH_FAILURES_TOTAL,
    SESSIONS_ENDED_TOTAL,
    SESSION_DURATION_SECONDS,
    UPSTREAM_CONNECT_SECONDS,
    UPSTREAM_ERRORS_TOTAL,
    UPSTREAM_HEALTHY,
    BUILD_INFO,
    TLS_CERT_NOT_AFTER_SECONDS,
    CONFIG_RELOADS_TOTAL,
    TUNNELS_TOTAL,
    TUNNEL_BYTES_TOTAL,
    COMPRESSION_BYTES_TOTAL,
    COMPRESSION_CONTEXTS,
    WEBSOCKET_HANDSHAKES_TOTAL,
    SESSIONS_OPEN,
    HTTP2_CONNECTIONS_TOTAL,
    HTTP2_CONNECTIONS_OPEN,
    HTTP2_STREAMS_OPEN,
    HTTP2_STREAMS_PER_CONNECTION,
    TASKS,
    HUB_QUEUED_MESSAGES,
    HUB_QUEUED_BYTES,
    HUB_CLIENTS,
    HUB_CHANNELS,
    HUB_SUBSCRIPTIONS,
    HUB_PUBLISHED_TOTAL,
    HUB_DIRECT_TOTAL,
    HUB_DELIVERED_TOTAL,
    HUB_DROPPED_TOTAL,
    HUB_API_REQUESTS_TOTAL,
    STATIC_REQUESTS_TOTAL,
    BACKPLANE_UP,
    BACKPLANE_PUBLISHES_TOTAL,
    BACKPLANE_RECEIVED_TOTAL,
    BACKPLANE_RECONNECTS_TOTAL,
    BACKPLANE_RTT_SECONDS,
    BACKPLANE_LAG_SECONDS,
    BACKPLANE_DROPPED_TOTAL,
];

/// Direction labels. For an echo route the echo itself plays the upstream.
pub const CLIENT_TO_UPSTREAM: &str = "client_to_upstream";
pub const UPSTREAM_TO_CLIENT: &str = "upstream_to_client";

const DURATION_BUCKETS: &[f64] = &[
    0.1, 1.0, 10.0, 60.0, 300.0, 1800.0, 3600.0, 14400.0, 86400.0,
];
/// Redis round trips and cross-node lag: sub-millisecond on a LAN.
const BACKPLANE_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];
/// Streams an HTTP/2 connection carried in its life.
const STREAM_COUNT_BUCKETS: &[f64] = &[1.0, 2.0, 5.0, 10.0, 100.0, 1000.0, 10000.0];
const CONNECT_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Install the Prometheus recorder for this process (once; later calls
/// return the same handle) and describe every metric.
pub fn install() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full(SESSION_DURATION_SECONDS.into()),
                    DURATION_BUCKETS,
                )
                .expect("bucket list is not empty")
                .set_buckets_for_metric(
                    Matcher::Full(HTTP2_STREAMS_PER_CONNECTION.into()),
                    STREAM_COUNT_BUCKETS,
                )
                .expect("bucket list is not empty")
                .set_buckets_for_metric(
                    Matcher::Full(UPSTREAM_CONNECT_SECONDS.into()),
                    CONNECT_BUCKETS,
                )
                .expect("bucket list is not empty")
                .set_buckets_for_metric(
                    Matcher::Full(BACKPLANE_RTT_SECONDS.into()),
                    BACKPLANE_BUCKETS,
                )
                .expect("bucket list is not empty")
                .set_buckets_for_metric(
                    Matcher::Full(BACKPLANE_LAG_SECONDS.into()),
                    BACKPLANE_BUCKETS,
                )
                .expect("bucket list is not empty")
                .build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder was installed first (a test
            // harness); the handle still renders what this recorder sees.
            let _ = metrics::set_global_recorder(recorder);
            describe();
            gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
            process().describe();
            handle
        })
        .clone()
}

/// Process metrics (`process_resident_memory_bytes`, `process_open_fds`,
/// `process_cpu_seconds_total`, ...), read at each scrape.
fn process() -> &'static metrics_process::Collector {
    static COLLECTOR: OnceLock<metrics_process::Collector> = OnceLock::new();
    COLLECTOR.get_or_init(metrics_process::Collector::default)
}

/// Refresh the process metrics; the admin listener calls this per scrape.
pub fn collect_process() {
    process().collect();
}

/// What a scrape reads of the gateway itself: its tracked tasks
/// (connections, sessions, tunnels, HTTP/2 streams) and what waits in hub
/// queues.
pub fn collect_gateway(tasks: usize, (queued_messages, queued_bytes): (usize, usize)) {
    gauge!(TASKS).set(tasks as f64);
    gauge!(HUB_QUEUED_MESSAGES).set(queued_messages as f64);
    gauge!(HUB_QUEUED_BYTES).set(queued_bytes as f64);
}

/// The expiry of a served certificate, as a Unix time.
pub fn cert_not_after(sni: &str, unix_seconds: i64) {
    gauge!(TLS_CERT_NOT_AFTER_SECONDS, "sni" => sni.to_owned()).set(unix_seconds as f64);
}

fn describe() {
    describe_sessions();
    describe_upstreams_and_tunnels();
    describe_hub();
}

/// Connections, sessions, handshakes and what they carry.
fn describe_sessions() {
    describe_counter!(
        CONNECTIONS_TOTAL,
        "WebSocket sessions opened, by route and kind"
    );
    describe_gauge!(
        CONNECTIONS_ACTIVE,
        "WebSocket sessions open now, by route and kind"
    );
    describe_counter!(
        CONNECTIONS_REJECTED_TOTAL,
        "TCP connections closed at accept, by reason"
    );
    describe_counter!(
        MESSAGES_TOTAL,
        "WebSocket data messages relayed, by route and direction"
    );
    describe_counter!(
        BYTES_TOTAL,
        Unit::Bytes,
        "WebSocket payload bytes relayed, by route and direction"
    );
    describe_counter!(
        COMPRESSION_BYTES_TOTAL,
        Unit::Bytes,
        "Payload bytes of the messages wsgate compressed or inflated itself \
         (permessage-deflate), compressed and uncompressed, by route and direction"
    );
    describe_gauge!(
        COMPRESSION_CONTEXTS,
        "Connections keeping permessage-deflate context now (at most [limits] compression_contexts)"
    );
    describe_counter!(
        AUTH_FAILURES_TOTAL,
        "Upgrades refused by a route's origin or token rules, by route and reason"
    );
    describe_counter!(
        HANDSHAKE_FAILURES_TOTAL,
        "HTTP requests not upgraded, by reason"
    );
    describe_counter!(
        WEBSOCKET_HANDSHAKES_TOTAL,
        "WebSocket upgrade requests, by protocol (http1: GET + Upgrade, http2: \
         extended CONNECT) and result (accepted or refused)"
    );
    describe_gauge!(
        SESSIONS_OPEN,
        "WebSocket sessions open now, by the protocol the client came over"
    );
    describe_counter!(HTTP2_CONNECTIONS_TOTAL, "HTTP/2 connections served");
    describe_gauge!(HTTP2_CONNECTIONS_OPEN, "HTTP/2 connections open now");
    describe_gauge!(
        HTTP2_STREAMS_OPEN,
        "HTTP/2 streams open now (requests in progress and WebSocket sessions)"
    );
    describe_histogram!(
        HTTP2_STREAMS_PER_CONNECTION,
        "Streams each HTTP/2 connection carried, observed when it closes"
    );
    describe_counter!(
        STATIC_REQUESTS_TOTAL,
        "Requests to static (files) routes, by result: ok, not_modified or the refusal"
    );
    describe_counter!(
        TLS_HANDSHAKE_FAILURES_TOTAL,
        "TLS handshakes that failed, by reason"
    );
    describe_counter!(
        SESSIONS_ENDED_TOTAL,
        "WebSocket sessions ended, by route and how they ended"
    );
    describe_histogram!(
        SESSION_DURATION_SECONDS,
        Unit::Seconds,
        "WebSocket session lifetime, by route"
    );
}

/// Upstream pools, CONNECT tunnels, and the process as operated.
fn describe_upstreams_and_tunnels() {
    describe_histogram!(
        UPSTREAM_CONNECT_SECONDS,
        Unit::Seconds,
        "Time to an upstream's 101 (TCP, TLS, upgrade), by route"
    );
    describe_counter!(
        UPSTREAM_ERRORS_TOTAL,
        "Failed dials to upstream members, by route and reason"
    );
    describe_gauge!(
        UPSTREAM_HEALTHY,
        "1 if the upstream member is in service, 0 while in failure backoff"
    );
    describe_gauge!(
        BUILD_INFO,
        "Always 1; the version label says which wsgate is running"
    );
    describe_gauge!(
        TLS_CERT_NOT_AFTER_SECONDS,
        Unit::Seconds,
        "When a served certificate expires (Unix time), by SNI name (default: the fallback certificate)"
    );
    describe_counter!(
        CONFIG_RELOADS_TOTAL,
        "Config reloads (SIGHUP), by result (ok, failed, invalid)"
    );
    describe_counter!(
        TUNNELS_TOTAL,
        "HTTP CONNECT requests, by result (gateway, spliced, denied, unauthorized, bad_request, ...)"
    );
    describe_counter!(
        TUNNEL_BYTES_TOTAL,
        Unit::Bytes,
        "Bytes spliced through CONNECT tunnels, by direction"
    );
}

fn describe_hub() {
    describe_gauge!(HUB_CLIENTS, "Hub connections open now");
    describe_gauge!(
        HUB_QUEUED_MESSAGES,
        "Messages waiting in hub client queues, read at each scrape"
    );
    describe_gauge!(
        HUB_QUEUED_BYTES,
        Unit::Bytes,
        "Bytes waiting in hub client queues, read at each scrape"
    );
    describe_gauge!(
        TASKS,
        "Tasks the gateway tracks for its drain (connections, sessions, tunnels, HTTP/2 streams), read at each scrape"
    );
    describe_gauge!(
        HUB_CHANNELS,
        "Hub channels that exist now (subscribed or holding history)"
    );
    describe_gauge!(
        HUB_SUBSCRIPTIONS,
        "Hub channel subscriptions now, over all connections"
    );
    describe_counter!(HUB_PUBLISHED_TOTAL, "Messages published to hub channels");
    describe_counter!(
        HUB_DIRECT_TOTAL,
        "Direct messages sent to named hub clients"
    );
    describe_counter!(
        HUB_DELIVERED_TOTAL,
        "Hub messages queued to a recipient connection"
    );
    describe_counter!(
        HUB_DROPPED_TOTAL,
        "Hub messages not delivered, by reason (slow_consumer, lagged, no_recipient)"
    );
    describe_counter!(HUB_API_REQUESTS_TOTAL, "Hub HTTP API requests, by status");
    describe_gauge!(
        BACKPLANE_UP,
        "1 while the Redis backplane is connected, 0 while the hub serves this node alone"
    );
    describe_counter!(
        BACKPLANE_PUBLISHES_TOTAL,
        "Hub publishes by how they were sequenced: ok (in Redis), failed (Redis did not confirm), local (Redis down)"
    );
    describe_counter!(
        BACKPLANE_RECEIVED_TOTAL,
        "Channel and direct messages received from Redis"
    );
    describe_counter!(
        BACKPLANE_RECONNECTS_TOTAL,
        "Connections to Redis lost and attempted again"
    );
    describe_histogram!(
        BACKPLANE_RTT_SECONDS,
        Unit::Seconds,
        "Round trip of one batch of commands to Redis"
    );
    describe_histogram!(
        BACKPLANE_LAG_SECONDS,
        Unit::Seconds,
        "From a publish on one node to its arrival from Redis on this one"
    );
    describe_counter!(
        BACKPLANE_DROPPED_TOTAL,
        "Backplane work dropped: its queue was full, or Redis refused it"
    );
}

/// Handles for one route's series, created once.
#[derive(Debug)]
pub struct RouteMetrics {
    pub route: String,
    pub opened: Counter,
    pub active: Gauge,
    pub messages_in: Counter,
    pub messages_out: Counter,
    pub bytes_in: Counter,
    pub bytes_out: Counter,
    pub compression_in: CompressionBytes,
    pub compression_out: CompressionBytes,
    pub duration: Histogram,
}

/// One more (`1.0`) or one fewer (`-1.0`) connection keeps compression
/// context.
pub fn compression_contexts(change: f64) {
    gauge!(COMPRESSION_CONTEXTS).increment(change);
}

/// The payload bytes of messages wsgate compressed or inflated itself, in
/// one direction: as they went on the wire (`form="compressed"`) and as
/// they were or became (`form="uncompressed"`). Their ratio is what
/// compression saves.
#[derive(Debug, Clone)]
pub struct CompressionBytes {
    compressed: Counter,
    uncompressed: Counter,
}

impl CompressionBytes {
    fn new(route: &str, direction: &'static str) -> Self {
        let series = |form: &'static str| counter!(COMPRESSION_BYTES_TOTAL, "route" => route.to_owned(), "direction" => direction, "form" => form);
        CompressionBytes {
            compressed: series("compressed"),
            uncompressed: series("uncompressed"),
        }
    }

    pub fn count(&self, compressed: u64, uncompressed: u64) {
        self.compressed.increment(compressed);
        self.uncompressed.increment(uncompressed);
    }
}

impl RouteMetrics {
    pub fn new(route: &Route) -> Self {
        let name = route.name.clone();
        let kind = route.kind.as_str();
        RouteMetrics {
            opened: counter!(CONNECTIONS_TOTAL, "route" => name.clone(), "kind" => kind),
            active: gauge!(CONNECTIONS_ACTIVE, "route" => name.clone(), "kind" => kind),
            messages_in: counter!(MESSAGES_TOTAL, "route" => name.clone(), "direction" => CLIENT_TO_UPSTREAM),
            messages_out: counter!(MESSAGES_TOTAL, "route" => name.clone(), "direction" => UPSTREAM_TO_CLIENT),
            bytes_in: counter!(BYTES_TOTAL, "route" => name.clone(), "direction" => CLIENT_TO_UPSTREAM),
            bytes_out: counter!(BYTES_TOTAL, "route" => name.clone(), "direction" => UPSTREAM_TO_CLIENT),
            compression_in: CompressionBytes::new(&name, CLIENT_TO_UPSTREAM),
            compression_out: CompressionBytes::new(&name, UPSTREAM_TO_CLIENT),
            duration: histogram!(SESSION_DURATION_SECONDS, "route" => name.clone()),
            route: name,
        }
    }

    /// One data message of `len` bytes read from `from` (for an echo route,
    /// `Side::Upstream` is the echo coming back).
    pub fn count(&self, from: Side, len: u64) {
        self.counted(from, 1, len);
    }

    /// `messages` data messages ended and `bytes` payload bytes passed,
    /// read from `from` (a relay counts a batch of frames at once).
    pub fn counted(&self, from: Side, messages: u64, bytes: u64) {
        let (message_counter, byte_counter) = match from {
            Side::Client => (&self.messages_in, &self.bytes_in),
            Side::Upstream => (&self.messages_out, &self.bytes_out),
        };
        message_counter.increment(messages);
        byte_counter.increment(bytes);
    }

    /// Messages read from `from` that wsgate compressed or inflated:
    /// their payload bytes compressed and not.
    pub fn compressed(&self, from: Side, compressed: u64, uncompressed: u64) {
        match from {
            Side::Client => self.compression_in.count(compressed, uncompressed),
            Side::Upstream => self.compression_out.count(compressed, uncompressed),
        }
    }

    pub fn session_ended(&self, end: &SessionEnd, seconds: f64) {
        self.active.decrement(1.0);
        self.duration.record(seconds);
        counter!(SESSIONS_ENDED_TOTAL, "route" => self.route.clone(), "reason" => end.label())
            .increment(1);
    }
}

/// A connection shed at accept.
pub fn connection_rejected(reason: Shed) {
    counter!(CONNECTIONS_REJECTED_TOTAL, "reason" => reason.label()).increment(1);
}

/// The HTTP version a request came over: one label for handshakes and
/// sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1: `GET` with `Upgrade: websocket`, answered 101.
    Http1,
    /// HTTP/2: extended CONNECT (RFC 8441), answered 200.
    Http2,
}

impl Protocol {
    pub fn label(self) -> &'static str {
        match self {
            Protocol::Http1 => "http1",
            Protocol::Http2 => "http2",
        }
    }
}

/// A WebSocket upgrade request, accepted or refused.
pub fn websocket_handshake(protocol: Protocol, accepted: bool) {
    let result = if accepted { "accepted" } else { "refused" };
    counter!(WEBSOCKET_HANDSHAKES_TOTAL, "protocol" => protocol.label(), "result" => result)
        .increment(1);
}

/// Sessions open now over `protocol`.
pub fn sessions_open(protocol: Protocol) -> Gauge {
    gauge!(SESSIONS_OPEN, "protocol" => protocol.label())
}

/// An HTTP/2 connection began (`1.0`) or ended (`-1.0`, with the streams it
/// carried).
pub fn http2_connection(change: f64, streams: Option<u64>) {
    if change > 0.0 {
        counter!(HTTP2_CONNECTIONS_TOTAL).increment(1);
    }
    gauge!(HTTP2_CONNECTIONS_OPEN).increment(change);
    if let Some(streams) = streams {
        histogram!(HTTP2_STREAMS_PER_CONNECTION).record(streams as f64);
    }
}

/// One more (`1.0`) or one fewer (`-1.0`) HTTP/2 stream open.
pub fn http2_stream(change: f64) {
    gauge!(HTTP2_STREAMS_OPEN).increment(change);
}

/// A request not upgraded.
pub fn handshake_failed(rejection: Rejection) {
    counter!(HANDSHAKE_FAILURES_TOTAL, "reason" => rejection.label()).increment(1);
}

/// One request to a static route: `Ok(status)` served, or refused.
pub fn static_request(result: Result<bool, crate::close::FileRefusal>) {
    let label = match result {
        Ok(true) => "ok",
        Ok(false) => "not_modified",
        Err(refusal) => refusal.label(),
    };
    counter!(STATIC_REQUESTS_TOTAL, "result" => label).increment(1);
}

/// An upgrade refused by `route`'s access rules (also counted as a
/// handshake failure, reason `auth`).
pub fn auth_failed(route: &str, failure: AuthFailure) {
    counter!(AUTH_FAILURES_TOTAL, "route" => route.to_owned(), "reason" => failure.label())
        .increment(1);
}

pub fn early_failure(failure: EarlyFailure) {
    let name = if failure.is_tls() {
        TLS_HANDSHAKE_FAILURES_TOTAL
    } else {
        HANDSHAKE_FAILURES_TOTAL
    };
    counter!(name, "reason" => failure.label()).increment(1);
}

pub fn upstream_healthy(route: &str, upstream: &str) -> Gauge {
    gauge!(UPSTREAM_HEALTHY, "route" => route.to_owned(), "upstream" => upstream.to_owned())
}

pub fn upstream_connect_seconds(route: &str) -> Histogram {
    histogram!(UPSTREAM_CONNECT_SECONDS, "route" => route.to_owned())
}

pub fn upstream_error(route: &str, reason: &'static str) {
    counter!(UPSTREAM_ERRORS_TOTAL, "route" => route.to_owned(), "reason" => reason).increment(1);
}

/// The hub's series, registered once.
pub struct HubMetrics {
    pub clients: Gauge,
    pub channels: Gauge,
    pub subscriptions: Gauge,
    pub published: Counter,
    pub direct: Counter,
    pub delivered: Counter,
    pub dropped_slow: Counter,
    pub dropped_lagged: Counter,
    pub dropped_no_recipient: Counter,
}

impl HubMetrics {
    pub fn new() -> Self {
        HubMetrics {
            clients: gauge!(HUB_CLIENTS),
            channels: gauge!(HUB_CHANNELS),
            subscriptions: gauge!(HUB_SUBSCRIPTIONS),
            published: counter!(HUB_PUBLISHED_TOTAL),
            direct: counter!(HUB_DIRECT_TOTAL),
            delivered: counter!(HUB_DELIVERED_TOTAL),
            dropped_slow: hub_dropped(HubDrop::SlowConsumer),
            dropped_lagged: hub_dropped(HubDrop::Lagged),
            dropped_no_recipient: hub_dropped(HubDrop::NoRecipient),
        }
    }

    pub fn api_request(&self, status: http::StatusCode) {
        counter!(HUB_API_REQUESTS_TOTAL, "status" => status.as_str().to_owned()).increment(1);
    }
}

/// The Redis backplane's series.
pub struct BackplaneMetrics {
    pub up: Gauge,
    pub published_ok: Counter,
    pub published_failed: Counter,
    pub published_local: Counter,
    pub received: Counter,
    pub reconnects: Counter,
    pub rtt: Histogram,
    pub lag: Histogram,
    pub dropped: Counter,
}

impl BackplaneMetrics {
    pub fn new() -> Self {
        let published =
            |result: &'static str| counter!(BACKPLANE_PUBLISHES_TOTAL, "result" => result);
        BackplaneMetrics {
            up: gauge!(BACKPLANE_UP),
            published_ok: published("ok"),
            published_failed: published("failed"),
            published_local: published("local"),
            received: counter!(BACKPLANE_RECEIVED_TOTAL),
            reconnects: counter!(BACKPLANE_RECONNECTS_TOTAL),
            rtt: histogram!(BACKPLANE_RTT_SECONDS),
            lag: histogram!(BACKPLANE_LAG_SECONDS),
            dropped: counter!(BACKPLANE_DROPPED_TOTAL),
        }
    }
}

impl Default for BackplaneMetrics {
    fn default() -> Self {
        Self::new()
    }
}

fn hub_dropped(reason: HubDrop) -> Counter {
    counter!(HUB_DROPPED_TOTAL, "reason" => reason.label())
}

impl Default for HubMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// A CONNECT request's result.
pub fn tunnel(result: TunnelOutcome) {
    counter!(TUNNELS_TOTAL, "result" => result.label()).increment(1);
}

/// Bytes through a spliced tunnel; the two series are registered once.
pub fn tunnel_bytes(client_to_target: bool, n: u64) {
    static COUNTERS: OnceLock<(Counter, Counter)> = OnceLock::new();
    let (up, down) = COUNTERS.get_or_init(|| {
        (
            counter!(TUNNEL_BYTES_TOTAL, "direction" => "client_to_target"),
            counter!(TUNNEL_BYTES_TOTAL, "direction" => "target_to_client"),
        )
    });
    if client_to_target {
        up.increment(n)
    } else {
        down.increment(n)
    }
}

/// A reload's result.
pub fn config_reload(result: Reload) {
    counter!(CONFIG_RELOADS_TOTAL, "result" => result.label()).increment(1);
}
