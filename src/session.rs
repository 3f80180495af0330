//! An upgraded WebSocket session: one task, one `select!` loop with named
//! arms (cancel, client frame, keepalive ping, idle deadline), every write
//! bounded by `send_timeout`, and a bounded close handshake at the end.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{FutureExt, SinkExt, StreamExt};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Instant, Interval, MissedTickBehavior, sleep_until, timeout};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::close::SessionEnd;
use crate::config::{Limits, RouteKind};
use crate::metrics::RouteMetrics;
use crate::{RouteState, Shared};

/// Run the session for an accepted upgrade. `permit` is the connection's
/// admission slot; it is released when this returns.
pub(crate) async fn run(
    on_upgrade: OnUpgrade,
    route: Arc<RouteState>,
    permit: Arc<OwnedSemaphorePermit>,
    shared: Arc<Shared>,
) {
    let upgraded = match on_upgrade.await {
        Ok(upgraded) => upgraded,
        Err(e) => {
            debug!(error = %e, "upgrade did not complete");
            return;
        }
    };
    // Boxed: the steady-state task keeps only a pointer in its future.
    let mut ws = Box::new(
        WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(shared.ws))
            .await,
    );
    let metrics = &route.metrics;
    let started = Instant::now();
    metrics.opened.increment(1);
    metrics.active.increment(1.0);

    let end = match route.kind {
        RouteKind::Echo => echo(&mut ws, metrics, &shared.limits, &shared.shutdown.token).await,
    };
    finish(&mut ws, &end, shared.limits.close_timeout).await;

    let elapsed = started.elapsed();
    metrics.session_ended(&end, elapsed.as_secs_f64());
    info!(end = end.label(), code = ?end.close_code().map(u16::from), duration_ms = elapsed.as_millis() as u64, "session ended");
    drop(permit);
}

/// Echo every text and binary message back; answer pings (tungstenite
/// queues the pong, the flush sends it); return how the session ended.
async fn echo<S>(
    ws: &mut WebSocketStream<S>,
    metrics: &RouteMetrics,
    limits: &Limits,
    cancel: &CancellationToken,
) -> SessionEnd
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut keepalive = Keepalive::new(limits.ping_interval);
    let mut idle = IdleTimer::new(limits.idle_timeout);
    loop {
        let first = tokio::select! {
            biased;
            _ = cancel.cancelled() => return SessionEnd::Shutdown,
            msg = ws.next() => msg,
            _ = keepalive.tick() => {
                if keepalive.awaiting_pong {
                    return SessionEnd::PingTimeout;
                }
                keepalive.awaiting_pong = true;
                if let Err(end) = bounded(limits.send_timeout, ws.send(Message::Ping(Default::default()))).await {
                    return end;
                }
                continue;
            }
            _ = idle.expired() => {
                if idle.check() {
                    return SessionEnd::Idle;
                }
                continue;
            }
        };
        // Feed this message and every one already readable, then flush once.
        let batch = async {
            let mut next = Some(first);
            while let Some(msg) = next {
                let echo = match msg {
                    None => return Err(SessionEnd::ClientGone),
                    Some(Err(e)) => return Err(SessionEnd::from_ws_error(&e)),
                    Some(Ok(msg)) => msg,
                };
                match echo {
                    Message::Text(_) | Message::Binary(_) => {
                        let len = echo.len() as u64;
                        metrics.messages_in.increment(1);
                        metrics.bytes_in.increment(len);
                        ws.feed(echo)
                            .await
                            .map_err(|e| SessionEnd::from_ws_error(&e))?;
                        metrics.messages_out.increment(1);
                        metrics.bytes_out.increment(len);
                        idle.touch();
                    }
                    Message::Pong(_) => keepalive.awaiting_pong = false,
                    Message::Close(frame) => {
                        return Err(SessionEnd::ClientClosed(frame.map(|f| u16::from(f.code))));
                    }
                    Message::Ping(_) | Message::Frame(_) => {}
                }
                next = ws.next().now_or_never();
            }
            ws.flush().await.map_err(|e| SessionEnd::from_ws_error(&e))
        };
        // A client that stops reading holds this for at most send_timeout,
        // and never delays a drain.
        let written = tokio::select! {
            written = bounded_result(limits.send_timeout, batch) => written,
            _ = cancel.cancelled() => Err(SessionEnd::Shutdown),
        };
        if let Err(end) = written {
            return end;
        }
    }
}

/// Send our Close (or the reply tungstenite queued for the client's), wait a
/// bounded time for the peer's Close, then close TLS and TCP.
async fn finish<S>(ws: &mut WebSocketStream<S>, end: &SessionEnd, close_timeout: Duration)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let _ = timeout(close_timeout, async {
        let sent = match end.close_code() {
            Some(code) => {
                let frame = CloseFrame {
                    code,
                    reason: end.reason().into(),
                };
                ws.close(Some(frame)).await
            }
            None if matches!(end, SessionEnd::ClientClosed(_)) => ws.flush().await,
            None => return,
        };
        if sent.is_ok() {
            while let Some(Ok(_)) = ws.next().await {}
        }
        let _ = ws.get_mut().shutdown().await;
    })
    .await;
}

async fn bounded(
    limit: Duration,
    write: impl Future<Output = Result<(), WsError>>,
) -> Result<(), SessionEnd> {
    bounded_result(limit, async {
        write.await.map_err(|e| SessionEnd::from_ws_error(&e))
    })
    .await
}

async fn bounded_result(
    limit: Duration,
    work: impl Future<Output = Result<(), SessionEnd>>,
) -> Result<(), SessionEnd> {
    timeout(limit, work)
        .await
        .unwrap_or(Err(SessionEnd::SendTimeout))
}

/// Server pings: a ping still unanswered when the next is due ends the session.
struct Keepalive {
    interval: Option<Interval>,
    awaiting_pong: bool,
}

impl Keepalive {
    fn new(period: Option<Duration>) -> Self {
        let interval = period.map(|p| {
            let mut i = tokio::time::interval_at(Instant::now() + p, p);
            i.set_missed_tick_behavior(MissedTickBehavior::Delay);
            i
        });
        Keepalive {
            interval,
            awaiting_pong: false,
        }
    }

    async fn tick(&mut self) {
        match &mut self.interval {
            Some(i) => {
                i.tick().await;
            }
            None => std::future::pending().await,
        }
    }
}

/// Idle deadline without a timer reset per message: activity only records
/// the time; when the timer fires it is re-armed from the last activity.
struct IdleTimer {
    limit: Option<Duration>,
    last: Instant,
    deadline: Instant,
}

impl IdleTimer {
    fn new(limit: Option<Duration>) -> Self {
        let now = Instant::now();
        IdleTimer {
            limit,
            last: now,
            deadline: now + limit.unwrap_or_default(),
        }
    }

    fn touch(&mut self) {
        self.last = Instant::now();
    }

    async fn expired(&self) {
        match self.limit {
            Some(_) => sleep_until(self.deadline).await,
            None => std::future::pending().await,
        }
    }

    /// After the timer fired: true if really idle, else re-armed.
    fn check(&mut self) -> bool {
        let Some(limit) = self.limit else {
            return false;
        };
        let due = self.last + limit;
        if due <= Instant::now() {
            return true;
        }
        self.deadline = due;
        false
    }
}
