//! One HTTP/2 connection (ALPN `h2`, `[listen] http2`): hyper's server with
//! extended CONNECT (RFC 8441) advertised, so each WebSocket is a stream and
//! `handshake` serves each request as it does over HTTP/1.1.
//!
//! Bounds, by construction:
//! - `http2_max_streams` streams at once (`SETTINGS_MAX_CONCURRENT_STREAMS`);
//! - each stream may hold `http2_stream_window` bytes unread, and the
//!   connection's window is that times the stream cap: a stream whose
//!   session stops reading holds only its own window, never its siblings';
//! - writes wait for the stream's window (hyper hands a stream's writer
//!   one write at a time), so a client that stops reading one stream stalls
//!   that session's sends, which `send_timeout` bounds as over HTTP/1.1;
//! - the first request must arrive by the handshake deadline; later, a
//!   connection with no stream open is closed after `http2_idle_timeout`;
//! - at a drain, GOAWAY, then the streams' own close handshakes.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::rt::Executor;
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio::time::{Instant, timeout, timeout_at};
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info_span};

use crate::admission::Ticket;
use crate::config::{Limits, ListenConfig};
use crate::handshake::Front;
use crate::{Shared, handshake, metrics};

/// hyper's per-stream tasks, spawned on the shutdown tracker so a drain
/// waits for them too.
#[derive(Clone)]
pub(crate) struct Exec(TaskTracker);

impl<F> Executor<F> for Exec
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        self.0.spawn(fut);
    }
}

/// The HTTP/2 settings every connection gets, built once.
pub(crate) struct Http2 {
    builder: http2::Builder<Exec>,
    idle_timeout: Duration,
}

impl Http2 {
    pub(crate) fn new(listen: &ListenConfig, limits: &Limits, tracker: TaskTracker) -> Self {
        let mut builder = http2::Builder::new(Exec(tracker));
        builder
            .timer(TokioTimer::new())
            .enable_connect_protocol()
            .max_concurrent_streams(listen.http2_max_streams)
            .initial_stream_window_size(listen.http2_stream_window)
            .initial_connection_window_size(listen.http2_connection_window())
            .adaptive_window(false)
            .max_header_list_size(u32::try_from(limits.max_header_size).unwrap_or(u32::MAX));
        Http2 {
            builder,
            idle_timeout: listen.http2_idle_timeout,
        }
    }
}

/// The streams of one connection: a guard per stream, held by its request
/// and then by its session.
#[derive(Debug)]
pub(crate) struct Streams(watch::Sender<Activity>);

/// Streams open now, and every stream the connection carried (so a stream
/// that opened and closed between two looks is still seen).
#[derive(Debug, Clone, Copy, Default)]
struct Activity {
    open: usize,
    total: u64,
}

/// One open stream; dropping it closes it in the count.
pub(crate) struct StreamGuard(Arc<Streams>);

impl Streams {
    pub(crate) fn open(self: &Arc<Self>) -> StreamGuard {
        self.0.send_modify(|a| {
            a.open += 1;
            a.total += 1;
        });
        metrics::http2_stream(1.0);
        StreamGuard(self.clone())
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.0.send_modify(|a| a.open -= 1);
        metrics::http2_stream(-1.0);
    }
}

/// Resolves when the connection has had no stream open for its limit: until
/// `first` for the first stream, then `idle` after each last one closes.
async fn idle(mut activity: watch::Receiver<Activity>, first: Instant, idle: Duration) {
    loop {
        let now = *activity.borrow_and_update();
        if now.open > 0 {
            if activity.wait_for(|a| a.open == 0).await.is_err() {
                return;
            }
            continue;
        }
        let until = if now.total == 0 {
            first
        } else {
            Instant::now() + idle
        };
        match timeout_at(until, activity.wait_for(|a| a.total != now.total)).await {
            Ok(Ok(_)) => continue,
            Ok(Err(_)) | Err(_) => return,
        }
    }
}

/// Serve HTTP/2 on `io` until the client goes, the connection has been idle
/// too long, or a drain ends it. `deadline`: the first request's.
pub(crate) async fn serve<IO>(
    io: IO,
    front: Front,
    permit: Arc<Ticket>,
    shared: Arc<Shared>,
    http2: &Http2,
    deadline: Instant,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (activity, watch) = watch::channel(Activity::default());
    let streams = Arc::new(Streams(activity));
    let service_shared = shared.clone();
    let counted = streams.clone();
    let service = service_fn(move |req| {
        let (shared, permit, front) = (service_shared.clone(), permit.clone(), front.clone());
        // Counted here, as hyper takes the stream (in this task, before the
        // idle deadline can look again), not when its task first runs.
        let stream = Some(counted.open());
        let span = info_span!("stream", route = tracing::field::Empty);
        async move {
            let response = handshake::handle(req, shared, permit, front, stream).await;
            Ok::<_, std::convert::Infallible>(response)
        }
        .instrument(span)
    });
    metrics::http2_connection(1.0, None);
    let conn = http2.builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let idle = idle(watch, deadline, http2.idle_timeout);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        _ = shared.shutdown.token.cancelled() => {
            // Sessions close themselves (1001) on the same signal; GOAWAY
            // refuses new streams and the connection ends with its last.
            conn.as_mut().graceful_shutdown();
            timeout(shared.limits.drain_timeout, conn.as_mut()).await.unwrap_or(Ok(()))
        }
        () = idle => {
            debug!("http2 connection idle; closing");
            conn.as_mut().graceful_shutdown();
            timeout(shared.limits.close_timeout, conn.as_mut()).await.unwrap_or(Ok(()))
        }
    };
    if let Err(e) = result {
        debug!(error = %e, "http2 connection ended with an error");
    }
    let carried = streams.0.borrow().total;
    metrics::http2_connection(-1.0, Some(carried));
}
