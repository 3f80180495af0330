//! Every metric name, its description, and small typed helpers. Per-route
//! series are registered once (at start-up) as handles, so the message path
//! updates an atomic and never looks a name up.

use std::sync::OnceLock;

use metrics::{
    Counter, Gauge, Histogram, Unit, counter, describe_counter, describe_gauge, describe_histogram,
    gauge, histogram,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::close::{EarlyFailure, Rejection, SessionEnd};
use crate::config::Route;

pub const CONNECTIONS_TOTAL: &str = "wsgate_connections_total";
pub const CONNECTIONS_ACTIVE: &str = "wsgate_connections_active";
pub const CONNECTIONS_REJECTED_TOTAL: &str = "wsgate_connections_rejected_total";
pub const MESSAGES_TOTAL: &str = "wsgate_messages_total";
pub const BYTES_TOTAL: &str = "wsgate_bytes_total";
pub const HANDSHAKE_FAILURES_TOTAL: &str = "wsgate_handshake_failures_total";
pub const TLS_HANDSHAKE_FAILURES_TOTAL: &str = "wsgate_tls_handshake_failures_total";
pub const SESSIONS_ENDED_TOTAL: &str = "wsgate_sessions_ended_total";
pub const SESSION_DURATION_SECONDS: &str = "wsgate_session_duration_seconds";

/// Direction labels. For an echo route the echo itself plays the upstream.
pub const CLIENT_TO_UPSTREAM: &str = "client_to_upstream";
pub const UPSTREAM_TO_CLIENT: &str = "upstream_to_client";

const DURATION_BUCKETS: &[f64] = &[
    0.1, 1.0, 10.0, 60.0, 300.0, 1800.0, 3600.0, 14400.0, 86400.0,
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
                .build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder was installed first (a test
            // harness); the handle still renders what this recorder sees.
            let _ = metrics::set_global_recorder(recorder);
            describe();
            handle
        })
        .clone()
}

fn describe() {
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
        HANDSHAKE_FAILURES_TOTAL,
        "HTTP requests not upgraded, by reason"
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
    pub duration: Histogram,
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
            duration: histogram!(SESSION_DURATION_SECONDS, "route" => name.clone()),
            route: name,
        }
    }

    pub fn session_ended(&self, end: &SessionEnd, seconds: f64) {
        self.active.decrement(1.0);
        self.duration.record(seconds);
        counter!(SESSIONS_ENDED_TOTAL, "route" => self.route.clone(), "reason" => end.label())
            .increment(1);
    }
}

pub fn connection_rejected(reason: &'static str) {
    counter!(CONNECTIONS_REJECTED_TOTAL, "reason" => reason).increment(1);
}

pub fn handshake_rejected(rejection: Rejection) {
    counter!(HANDSHAKE_FAILURES_TOTAL, "reason" => rejection.label()).increment(1);
}

pub fn early_failure(failure: EarlyFailure) {
    let name = if failure.is_tls() {
        TLS_HANDSHAKE_FAILURES_TOTAL
    } else {
        HANDSHAKE_FAILURES_TOTAL
    };
    counter!(name, "reason" => failure.label()).increment(1);
}
