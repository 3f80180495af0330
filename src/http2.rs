//! One HTTP/2 connection (ALPN `h2`, `[listen] http2`): hyper's server with
//! extended CONNECT (RFC 8441) advertised, so each WebSocket is a stream and
//! `handshake` serves each request as it does over HTTP/1.1.
//!
//! Bounds, by construction:
//! - `http2_max_streams` streams at once (`SETTINGS_MAX_CONCURRENT_STREAMS`);
//! - each stream may hold `http2_stream_window` bytes unread, and the
//!   connection's window is that times the stream cap: a stream whose
//!   session stops reading holds only its own window, never its siblings';
//! - a session writes to its stream in pieces of at most [`MAX_WRITE`]
//!   (hyper holds up to three of them, and h2 buffers at most a window
//!   more), so a client that stops reading one stream stalls that session's
//!   writes, which `send_timeout` bounds as over HTTP/1.1;
//! - a session that ends with its stream still blocked keeps its place and
//!   its admission while the stream is shut down in the background; if
//!   that makes no headway within the send timeout, the connection goes,
//!   as a stalled HTTP/1.1 client loses its TCP connection: a stream never
//!   outlives its session holding memory unaccounted;
//! - at most [`MAX_RESPONSES`] plain requests (the page, a refusal) are in
//!   progress at once, each until its body has been taken in pieces as h2
//!   has room; a request waits at most the handshake timeout for a place
//!   (then 503);
//! - the first request must arrive by the handshake deadline; later, a
//!   connection with no stream open is closed after `http2_idle_timeout`;
//! - at a drain, GOAWAY, then the streams' own close handshakes.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use std::io::IoSlice;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use hyper::rt::Executor;
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper::upgrade::Upgraded;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::{Instant, timeout, timeout_at};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info_span};

use crate::admission::Ticket;
use crate::close::Rejection;
use crate::config::{Limits, ListenConfig};
use crate::handshake::Front;
use crate::{Body, Shared, handshake, metrics};

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
            .max_send_buf_size(listen.http2_stream_window as usize)
            .max_header_list_size(u32::try_from(limits.max_header_size).unwrap_or(u32::MAX));
        Http2 {
            builder,
            idle_timeout: listen.http2_idle_timeout,
        }
    }
}

/// Largest write a session hands its HTTP/2 stream at once.
pub(crate) const MAX_WRITE: usize = 16 << 10;
/// Plain requests (not WebSockets) in progress at once on one connection,
/// each until its response body has been handed to h2 (in [`MAX_WRITE`]
/// pieces, each when h2 has room for it).
pub(crate) const MAX_RESPONSES: usize = 4;

/// The streams of one connection: a guard per stream, held by its request,
/// its response body and its session.
#[derive(Debug)]
pub(crate) struct Streams {
    activity: watch::Sender<Activity>,
    /// Cancelled when a session ends with its stream blocked: the
    /// connection closes.
    abort: CancellationToken,
    responses: Arc<Semaphore>,
}

/// Streams open now, and every stream the connection carried (so a stream
/// that opened and closed between two looks is still seen).
#[derive(Debug, Clone, Copy, Default)]
struct Activity {
    open: usize,
    total: u64,
}

/// One open stream; the last of its clones to go closes it in the count.
#[derive(Debug)]
pub(crate) struct StreamGuard(Arc<Streams>);

/// What a request's handler and its session get of their stream.
#[derive(Debug, Clone)]
pub(crate) struct StreamHandle(Arc<StreamGuard>);

impl StreamHandle {
    /// The connection's abort signal (see [`ClientIo`]).
    pub(crate) fn abort(&self) -> CancellationToken {
        self.0.0.abort.clone()
    }
}

impl Streams {
    fn open(self: &Arc<Self>) -> StreamHandle {
        self.activity.send_modify(|a| {
            a.open += 1;
            a.total += 1;
        });
        metrics::http2_stream(1.0);
        StreamHandle(Arc::new(StreamGuard(self.clone())))
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.activity.send_modify(|a| a.open -= 1);
        metrics::http2_stream(-1.0);
    }
}

/// A response body that holds its stream open, and its place among the
/// connection's responses, until hyper has taken the last of it. It gives
/// its bytes in [`MAX_WRITE`] pieces, and hyper takes the next only when h2
/// has room for it (its send buffer is one stream window): a client that
/// stops reading keeps its response here, counted, not in h2's buffers.
pub(crate) struct Held {
    body: Body,
    /// Taken from `body`, not yet given to hyper.
    rest: Bytes,
    _stream: Option<StreamHandle>,
    _place: Option<OwnedSemaphorePermit>,
}

impl Held {
    fn new(body: Body, stream: Option<StreamHandle>, place: Option<OwnedSemaphorePermit>) -> Self {
        Held {
            body,
            rest: Bytes::new(),
            _stream: stream,
            _place: place,
        }
    }
}

impl HttpBody for Held {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.rest.is_empty() {
            match Pin::new(&mut self.body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => self.rest = data,
                    Err(frame) => return Poll::Ready(Some(Ok(frame))),
                },
                other => return other,
            }
        }
        let piece = self.rest.len().min(MAX_WRITE);
        Poll::Ready(Some(Ok(Frame::data(self.rest.split_to(piece)))))
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty() && self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let mut hint = self.body.size_hint();
        let rest = self.rest.len() as u64;
        hint.set_lower(hint.lower() + rest);
        if let Some(upper) = hint.upper() {
            hint.set_upper(upper + rest);
        }
        hint
    }
}

/// What a WebSocket session over HTTP/2 holds of its stream, until the
/// stream has ended: its place in the count and its admission ticket.
pub(crate) struct StreamHold {
    pub(crate) stream: StreamHandle,
    pub(crate) ticket: Option<Ticket>,
}

/// A session's client connection: hyper's upgraded stream. Over HTTP/2
/// (`stream` set) writes go in pieces of at most [`MAX_WRITE`], and a
/// stream dropped before its shutdown completed (the session's end cut
/// short, its writes maybe still blocked on the client) is shut down in the
/// background, still counted and admitted: if that makes no headway within
/// the send timeout either, the client is not reading it, and the
/// connection is aborted.
pub(crate) struct ClientIo {
    /// `None` only once dropped.
    io: Option<TokioIo<Upgraded>>,
    /// Over HTTP/2: the stream's hold, and the send timeout.
    stream: Option<(Box<StreamHold>, Duration)>,
}

impl ClientIo {
    pub(crate) fn new(upgraded: Upgraded, stream: Option<(Box<StreamHold>, Duration)>) -> Self {
        ClientIo {
            io: Some(TokioIo::new(upgraded)),
            stream,
        }
    }

    fn io(&mut self) -> Pin<&mut TokioIo<Upgraded>> {
        Pin::new(self.io.as_mut().expect("present until dropped"))
    }
}

impl Drop for ClientIo {
    fn drop(&mut self) {
        let (Some(mut io), Some((hold, limit))) = (self.io.take(), self.stream.take()) else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            if timeout(limit, tokio::io::AsyncWriteExt::shutdown(&mut io))
                .await
                .is_err()
            {
                debug!(
                    "a stream's writes stayed blocked after its session; closing the connection"
                );
                hold.stream.abort().cancel();
            }
            drop(hold);
        });
    }
}

impl AsyncRead for ClientIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.io().poll_read(cx, buf)
    }
}

impl AsyncWrite for ClientIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let len = match self.stream {
            Some(_) => buf.len().min(MAX_WRITE),
            None => buf.len(),
        };
        self.io().poll_write(cx, &buf[..len])
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        if self.stream.is_none() {
            return self.io().poll_write_vectored(cx, bufs);
        }
        let first = bufs
            .iter()
            .find(|b| !b.is_empty())
            .map_or(&[][..], |b| &b[..]);
        self.poll_write(cx, first)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_none() && self.io.as_ref().is_some_and(|io| io.is_write_vectored())
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.io().poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let shut = self.io().poll_shutdown(cx);
        if shut.is_ready() {
            // Everything written has gone to hyper and the stream has ended
            // (or was reset): nothing is left blocked.
            self.stream = None;
        }
        shut
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

/// Resolves once no stream has been open for `quiet`.
async fn idle_for(mut activity: watch::Receiver<Activity>, quiet: Duration) {
    loop {
        if activity.wait_for(|a| a.open == 0).await.is_err() {
            return;
        }
        if timeout(quiet, activity.wait_for(|a| a.open > 0))
            .await
            .is_err()
        {
            return;
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
    let streams = Arc::new(Streams {
        activity,
        abort: CancellationToken::new(),
        responses: Arc::new(Semaphore::new(MAX_RESPONSES)),
    });
    let service_shared = shared.clone();
    let counted = streams.clone();
    let service = service_fn(move |req| {
        let (shared, permit, front) = (service_shared.clone(), permit.clone(), front.clone());
        // Counted here, as hyper takes the stream (in this task, before the
        // idle deadline can look again), not when its task first runs.
        let stream = counted.open();
        let responses = counted.responses.clone();
        let wait = shared.limits.handshake_timeout;
        let span = info_span!("stream", route = tracing::field::Empty);
        async move {
            // WebSockets are bounded by admission; other requests take a
            // place among the connection's responses, waiting at most the
            // handshake timeout for one.
            let place = match handshake::asks_for_websocket(&req) {
                true => None,
                false => match timeout(wait, responses.acquire_owned()).await {
                    Ok(Ok(place)) => Some(place),
                    Ok(Err(_)) | Err(_) => {
                        let busy = handshake::refuse(Rejection::Busy, req.uri().path());
                        return Ok(busy.map(|body| Held::new(body, None, None)));
                    }
                },
            };
            let response =
                handshake::handle(req, shared, permit, front, Some(stream.clone())).await;
            Ok::<_, std::convert::Infallible>(
                response.map(|body| Held::new(body, Some(stream), place)),
            )
        }
        .instrument(span)
    });
    metrics::http2_connection(1.0, None);
    let conn = http2.builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let quiet = streams.activity.subscribe();
    let idle = idle(watch, deadline, http2.idle_timeout);
    let token = &shared.shutdown.token;
    let drain = async {
        token.cancelled().await;
        // Sessions close themselves (1001) on the same signal.
        shared.limits.drain_timeout
    };
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = streams.abort.cancelled() => Ok(()),
        limit = drain => {
            // GOAWAY refuses new streams; the connection ends with its last.
            conn.as_mut().graceful_shutdown();
            timeout(limit, conn.as_mut()).await.unwrap_or(Ok(()))
        }
        () = idle => {
            debug!("http2 connection idle; closing");
            conn.as_mut().graceful_shutdown();
            // A stream the client opened before it saw the GOAWAY is
            // served to its end, like any other, until a drain.
            let quiet = idle_for(quiet, shared.limits.close_timeout);
            tokio::select! {
                result = conn.as_mut() => result,
                () = quiet => Ok(()),
                () = streams.abort.cancelled() => Ok(()),
                () = token.cancelled() => {
                    timeout(shared.limits.drain_timeout, conn.as_mut()).await.unwrap_or(Ok(()))
                }
            }
        }
    };
    if let Err(e) = result {
        debug!(error = %e, "http2 connection ended with an error");
    }
    let carried = streams.activity.borrow().total;
    metrics::http2_connection(-1.0, Some(carried));
}
