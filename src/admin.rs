//! The admin listener (plain HTTP, separate address): `/metrics`,
//! `/healthz` (200 while the process lives), `/readyz` (200 only while
//! serving; 503 while starting, from the moment draining begins, and while
//! no route can serve), and the
//! hub's HTTP API under `/api/`.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

use crate::close::Shed;
use crate::hub::api::BodyLimit;
use crate::hub::{self, Hub};
use crate::shutdown::Readiness;
use crate::{Shared, metrics};
use std::sync::Arc;

const UPKEEP_PERIOD: Duration = Duration::from_secs(5);
/// Admin connections open at once; more are closed at accept.
pub(crate) const ADMIN_MAX_CONNECTIONS: usize = 64;
/// How long an admin connection may live: a scraper's keep-alive
/// connection is closed (between requests) and opened again.
const ADMIN_CONNECTION_LIFETIME: Duration = Duration::from_secs(120);
/// How long the connections still open at exit get to finish.
const ADMIN_CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// What the admin listener serves from.
#[derive(Clone)]
pub(crate) struct Context {
    pub(crate) metrics: PrometheusHandle,
    pub(crate) ready: Readiness,
    /// For `/readyz`: is any route able to serve?
    pub(crate) shared: Arc<Shared>,
    pub(crate) hub: Hub,
    /// Largest API request body (`limits.max_message_size`).
    pub(crate) max_body: usize,
    /// The deadline of each request's head, and of its body
    /// (`limits.handshake_timeout`).
    pub(crate) request_timeout: Duration,
}

/// Serve admin requests until `stop`: at most [`ADMIN_MAX_CONNECTIONS`]
/// connections, each tracked, with a deadline for every request head and
/// body and a bounded life; at `stop` they finish what they are answering.
pub(crate) async fn serve(listener: TcpListener, ctx: Context, stop: CancellationToken) {
    let mut upkeep = tokio::time::interval(UPKEEP_PERIOD);
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(ctx.request_timeout);
    let open = Arc::new(Semaphore::new(ADMIN_MAX_CONNECTIONS));
    let tracker = TaskTracker::new();
    loop {
        let tcp = tokio::select! {
            _ = stop.cancelled() => break,
            _ = upkeep.tick() => {
                ctx.metrics.run_upkeep();
                continue;
            }
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    debug!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = open.clone().try_acquire_owned() else {
            metrics::connection_rejected(Shed::AdminCapacity);
            drop(tcp);
            continue;
        };
        let (ctx, stop, http) = (ctx.clone(), stop.clone(), http.clone());
        let deadline = ctx.request_timeout;
        tracker.spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let ctx = ctx.clone();
                async move {
                    let response = if req.uri().path().starts_with("/api/") {
                        let body = BodyLimit {
                            max: ctx.max_body,
                            within: ctx.request_timeout,
                        };
                        hub::api::handle(req, &ctx.hub, body).await
                    } else {
                        respond(&req, &ctx)
                    };
                    Ok::<_, Infallible>(response)
                }
            });
            let conn = http.serve_connection(TokioIo::new(tcp), service);
            tokio::pin!(conn);
            let finished = tokio::select! {
                _ = conn.as_mut() => true,
                _ = stop.cancelled() => false,
                _ = tokio::time::sleep(ADMIN_CONNECTION_LIFETIME) => false,
            };
            if !finished {
                // The request in hand is answered, within its deadline (at
                // exit, within the second the listener waits).
                conn.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(deadline, conn).await;
            }
            drop(permit);
        });
    }
    tracker.close();
    let _ = tokio::time::timeout(ADMIN_CLOSE_TIMEOUT, tracker.wait()).await;
}

fn respond<B>(req: &Request<B>, ctx: &Context) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
    }
    match req.uri().path() {
        "/metrics" => {
            metrics::collect_process();
            metrics::collect_gateway(ctx.shared.shutdown.tracker.len(), ctx.hub.queued());
            let mut r = Response::new(Full::new(Bytes::from(ctx.metrics.render())));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" if !ctx.ready.get() => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: starting or draining\n",
        ),
        "/readyz" if !ctx.shared.can_serve() => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: no route can serve (every upstream member down)\n",
        ),
        "/readyz" => match ctx.hub.readiness() {
            hub::Readiness::Ready => text(StatusCode::OK, "ready\n"),
            hub::Readiness::Starting => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: connecting to the Redis backplane\n",
            ),
            // Still 200: every node losing Redis must not empty the balancer.
            hub::Readiness::Degraded => text(
                StatusCode::OK,
                "degraded: the Redis backplane is unreachable; serving this node's clients alone\n",
            ),
        },
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}
