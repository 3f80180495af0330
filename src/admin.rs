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
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::hub::{self, Hub};
use crate::shutdown::Readiness;
use crate::{Shared, metrics};
use std::sync::Arc;

const UPKEEP_PERIOD: Duration = Duration::from_secs(5);
const ADMIN_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

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
}

pub(crate) async fn serve(listener: TcpListener, ctx: Context, stop: CancellationToken) {
    let mut upkeep = tokio::time::interval(UPKEEP_PERIOD);
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(ADMIN_HEADER_TIMEOUT);
    loop {
        let tcp = tokio::select! {
            _ = stop.cancelled() => return,
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
        let (ctx, stop, http) = (ctx.clone(), stop.clone(), http.clone());
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let ctx = ctx.clone();
                async move {
                    let response = if req.uri().path().starts_with("/api/") {
                        hub::api::handle(req, &ctx.hub, ctx.max_body).await
                    } else {
                        respond(&req, &ctx)
                    };
                    Ok::<_, Infallible>(response)
                }
            });
            let conn = http.serve_connection(TokioIo::new(tcp), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stop.cancelled() => conn.as_mut().graceful_shutdown(),
            }
        });
    }
}

fn respond<B>(req: &Request<B>, ctx: &Context) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
    }
    match req.uri().path() {
        "/metrics" => {
            metrics::collect_process();
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
        // Still 200: every node losing Redis must not empty the balancer.
        "/readyz" => match ctx.hub.degraded() {
            Some(why) => text(StatusCode::OK, why),
            None => text(StatusCode::OK, "ready\n"),
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
