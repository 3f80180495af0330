//! An upgraded WebSocket session: the task that owns it, the echo loop, and
//! what every session loop shares: keepalive pings, the idle deadline,
//! bounded writes, and a bounded close handshake at the end.

use std::sync::Arc;
use std::time::Duration;

use crate::admission::Ticket;
use futures_util::{FutureExt, SinkExt, StreamExt};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::time::{Instant, Interval, MissedTickBehavior, sleep_until, timeout};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_tungstenite::tungstenite::{Bytes, Message};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::close::{ClosePlan, SessionEnd, Side};
use crate::config::HubRoute;
use crate::config::Limits;
use crate::hub::{self, Registration};
use crate::metrics::RouteMetrics;
use crate::upstream::Dialed;
use crate::{RouteState, Shared, relay};

/// Payload of the gateway's own pings to clients; pongs carrying it are
/// consumed, not relayed.
pub(crate) const KEEPALIVE: &[u8] = b"wsgate-keepalive";

/// What a session's client is connected to, set up before the 101.
pub(crate) enum Peer {
    Echo,
    Upstream(Dialed),
    /// A registered hub client; `room` is its channel on a raw route.
    Hub {
        registration: Registration,
        route: Arc<HubRoute>,
        room: Option<String>,
    },
}

/// Run the session for an accepted upgrade. `permit` is the connection's
/// admission slot, released when this returns.
pub(crate) async fn run(
    on_upgrade: OnUpgrade,
    route: Arc<RouteState>,
    permit: Arc<Ticket>,
    shared: Arc<Shared>,
    peer: Peer,
) {
    let upgraded = match on_upgrade.await {
        Ok(upgraded) => upgraded,
        Err(e) => {
            debug!(error = %e, "upgrade did not complete");
            if let Peer::Upstream(mut dialed) = peer {
                let gone = SessionEnd::Gone(Side::Client).plan(Side::Upstream);
                finish(&mut dialed.ws, gone, shared.limits.close_timeout).await;
            }
            return;
        }
    };
    // Boxed: the steady-state task keeps only pointers in its future.
    let mut client = Box::new(
        WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(shared.ws))
            .await,
    );
    let metrics = &route.metrics;
    let limits = &shared.limits;
    let cancel = &shared.shutdown.token;
    let started = Instant::now();
    metrics.opened.increment(1);
    metrics.active.increment(1.0);

    let end = match peer {
        Peer::Echo => {
            let end = echo(&mut client, metrics, limits, cancel).await;
            finish(&mut client, end.plan(Side::Client), limits.close_timeout).await;
            end
        }
        Peer::Hub {
            registration,
            route: hub_route,
            room,
        } => {
            let hub = &shared.hub;
            let conn = &registration.conn;
            let end = hub::session::run(
                &mut client,
                hub,
                conn,
                &hub_route,
                room.as_deref(),
                metrics,
                limits,
                cancel,
            )
            .await;
            // Leave the hub (and tell presence listeners) before the close handshake.
            drop(registration);
            finish(&mut client, end.plan(Side::Client), limits.close_timeout).await;
            end
        }
        Peer::Upstream(mut dialed) => {
            let end = relay::run(&mut client, &mut dialed.ws, metrics, limits, cancel).await;
            futures_util::join!(
                finish(&mut client, end.plan(Side::Client), limits.close_timeout),
                finish(
                    &mut dialed.ws,
                    end.plan(Side::Upstream),
                    limits.close_timeout
                ),
            );
            end
        }
    };

    let elapsed = started.elapsed();
    metrics.session_ended(&end, elapsed.as_secs_f64());
    info!(end = end.label(), code = ?end.client_code(), duration_ms = elapsed.as_millis() as u64, "session ended");
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
    let mut timers = Timers::new(limits);
    loop {
        let first = tokio::select! {
            biased;
            _ = cancel.cancelled() => return SessionEnd::Shutdown,
            msg = ws.next() => msg,
            tick = timers.next() => {
                if let Err(end) = timers.handle(tick, ws, limits.send_timeout).await {
                    return end;
                }
                continue;
            }
        };
        // Feed this message and every one already readable, then flush once.
        let batch = async {
            let mut next = Some(first);
            while let Some(msg) = next {
                let msg = match msg {
                    None => return Err(SessionEnd::Gone(Side::Client)),
                    Some(Err(e)) => return Err(SessionEnd::from_ws_error(Side::Client, &e)),
                    Some(Ok(msg)) => msg,
                };
                match msg {
                    Message::Text(_) | Message::Binary(_) => {
                        let len = msg.len() as u64;
                        metrics.count(Side::Client, len);
                        ws.feed(msg)
                            .await
                            .map_err(|e| SessionEnd::from_ws_error(Side::Client, &e))?;
                        metrics.count(Side::Upstream, len);
                        timers.touch();
                    }
                    Message::Pong(_) => timers.pong(),
                    Message::Close(frame) => return Err(SessionEnd::Closed(Side::Client, frame)),
                    Message::Ping(_) | Message::Frame(_) => {}
                }
                next = ws.next().now_or_never();
            }
            ws.flush()
                .await
                .map_err(|e| SessionEnd::from_ws_error(Side::Client, &e))
        };
        if let Err(end) = bounded(Side::Client, limits.send_timeout, cancel, batch).await {
            return end;
        }
    }
}

/// Carry out one side's part of the end, within `limit`: send our Close (or
/// pass the other side's on, or flush the reply to theirs), wait for the
/// peer's Close, then close TLS and TCP.
pub(crate) async fn finish<S>(ws: &mut WebSocketStream<S>, plan: ClosePlan, limit: Duration)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let _ = timeout(limit, async {
        let sent = match plan {
            ClosePlan::Send(code, reason) => {
                ws.close(Some(CloseFrame {
                    code,
                    reason: reason.into(),
                }))
                .await
            }
            ClosePlan::Forward(frame) => ws.close(frame).await,
            ClosePlan::Reply => ws.flush().await,
            ClosePlan::Nothing => return,
        };
        if sent.is_ok() {
            while let Some(Ok(_)) = ws.next().await {}
        }
        let _ = ws.get_mut().shutdown().await;
    })
    .await;
}

/// Run a write batch to `to` under `send_timeout`, giving way to shutdown:
/// a peer that stops reading holds a session for at most that long, and
/// never delays a drain.
pub(crate) async fn bounded(
    to: Side,
    limit: Duration,
    cancel: &CancellationToken,
    work: impl Future<Output = Result<(), SessionEnd>>,
) -> Result<(), SessionEnd> {
    tokio::select! {
        written = timeout(limit, work) => written.unwrap_or(Err(SessionEnd::SendTimeout(to))),
        _ = cancel.cancelled() => Err(SessionEnd::Shutdown),
    }
}

/// The session's clocks: keepalive pings to the client and the idle deadline.
pub(crate) struct Timers {
    keepalive: Keepalive,
    idle: IdleTimer,
}

/// Which clock fired.
pub(crate) enum Tick {
    Ping,
    Idle,
}

impl Timers {
    pub(crate) fn new(limits: &Limits) -> Self {
        Timers {
            keepalive: Keepalive::new(limits.ping_interval),
            idle: IdleTimer::new(limits.idle_timeout),
        }
    }

    /// Wait for the next tick; a `select!` arm beside the stream reads.
    pub(crate) async fn next(&mut self) -> Tick {
        tokio::select! {
            _ = self.keepalive.tick() => Tick::Ping,
            _ = self.idle.expired() => Tick::Idle,
        }
    }

    /// Act on a tick: ping the client (or end the session if the last ping
    /// went unanswered), or end an idle session.
    pub(crate) async fn handle<S>(
        &mut self,
        tick: Tick,
        client: &mut WebSocketStream<S>,
        limit: Duration,
    ) -> Result<(), SessionEnd>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        match tick {
            Tick::Ping => self.keepalive.ping(client, limit).await,
            Tick::Idle if self.idle.check() => Err(SessionEnd::Idle),
            Tick::Idle => Ok(()),
        }
    }

    /// A data message went through.
    pub(crate) fn touch(&mut self) {
        self.idle.touch();
    }

    /// A pong came from the client.
    pub(crate) fn pong(&mut self) {
        self.keepalive.pong();
    }
}

/// Server pings to the client: a ping still unanswered when the next is due
/// ends the session.
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

    /// After a tick: end the session if the last ping went unanswered, else ping.
    async fn ping<S>(
        &mut self,
        ws: &mut WebSocketStream<S>,
        limit: Duration,
    ) -> Result<(), SessionEnd>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        if self.awaiting_pong {
            return Err(SessionEnd::PingTimeout);
        }
        self.awaiting_pong = true;
        let ping = ws.send(Message::Ping(Bytes::from_static(KEEPALIVE)));
        match timeout(limit, ping).await {
            Ok(sent) => sent.map_err(|e| SessionEnd::from_ws_error(Side::Client, &e)),
            Err(_) => Err(SessionEnd::SendTimeout(Side::Client)),
        }
    }

    /// Any pong from the client shows it is alive.
    fn pong(&mut self) {
        self.awaiting_pong = false;
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
