//! What every session loop (echo, relay, hub) shares, so that none of them
//! holds a tool the others borrow: the session's context, keepalive pings,
//! the idle deadline, bounded writes, and the bounded close handshake at the
//! end. A leaf: it knows nothing of the loops that use it, nor of how the
//! session was set up.

use std::time::Duration;

use tokio::time::{Instant, Interval, MissedTickBehavior, sleep_until, timeout};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_util::sync::CancellationToken;

use crate::auth::Expiry;
use crate::close::{ClosePlan, SessionEnd, Side};
use crate::config::Limits;
use crate::frame::ControlFrame;
use crate::metrics::RouteMetrics;

/// What every session loop is handed, one per session: where its traffic is
/// counted, the limits that bound it, and the signal to stop.
pub(crate) struct SessionCtx<'a> {
    /// The route's series: messages and bytes each way.
    pub(crate) metrics: &'a RouteMetrics,
    /// Send, ping, idle and close deadlines, as configured.
    pub(crate) limits: &'a Limits,
    /// The gateway's shutdown, or this session's token expiry: the loop
    /// ends with [`SessionCtx::stopped`].
    pub(crate) cancel: &'a CancellationToken,
    /// Set when the session's token can run out.
    pub(crate) expiry: Option<&'a Expiry>,
}

impl SessionCtx<'_> {
    /// Why `cancel` fired: the token ran out, or the gateway drains.
    pub(crate) fn stopped(&self) -> SessionEnd {
        match self.expiry {
            Some(expiry) if expiry.expired() => SessionEnd::TokenExpired,
            _ => SessionEnd::Shutdown,
        }
    }

    /// Run a write batch to `to` under `send_timeout`, giving way to
    /// shutdown: a peer that stops reading holds a session for at most that
    /// long, and never delays a drain.
    pub(crate) async fn bounded(
        &self,
        to: Side,
        work: impl Future<Output = Result<(), SessionEnd>>,
    ) -> Result<(), SessionEnd> {
        tokio::select! {
            written = self.timed(to, work) => written,
            _ = self.cancel.cancelled() => Err(self.stopped()),
        }
    }

    /// [`SessionCtx::bounded`] for a caller that gives way to shutdown
    /// itself: `send_timeout` alone.
    pub(crate) async fn timed(
        &self,
        to: Side,
        work: impl Future<Output = Result<(), SessionEnd>>,
    ) -> Result<(), SessionEnd> {
        let written = timeout(self.limits.send_timeout, work).await;
        written.unwrap_or(Err(SessionEnd::SendTimeout(to)))
    }
}

/// A keepalive ping with `payload`, framed (built when due, so a waiting
/// session task does not hold it).
pub(crate) fn keepalive_ping(payload: &[u8]) -> bytes::Bytes {
    let ping = crate::frame::ControlFrame::new(crate::frame::OpCode::Ping, payload, None);
    bytes::Bytes::copy_from_slice(ping.as_bytes())
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

    /// What a tick asks for: `Ok(true)`, a keepalive ping (with
    /// [`Timers::ping_payload`]) to send to the client now; an error, the session's end
    /// (the last ping went unanswered, or the session is idle).
    pub(crate) fn due(&mut self, tick: Tick) -> Result<bool, SessionEnd> {
        match tick {
            Tick::Ping => self.keepalive.due().map(|()| true),
            Tick::Idle if self.idle.check() => Err(SessionEnd::Idle),
            Tick::Idle => Ok(false),
        }
    }

    /// A data message went through.
    pub(crate) fn touch(&mut self) {
        self.idle.touch();
    }

    /// A data message went through at `at` (seen by another loop).
    pub(crate) fn touched_at(&mut self, at: Instant) {
        self.idle.last = self.idle.last.max(at);
    }

    /// A pong came from the client.
    pub(crate) fn pong(&mut self) {
        self.keepalive.pong();
    }

    /// The payload of this session's pings to the client: its pongs with
    /// it are the gateway's own, not relayed.
    pub(crate) fn ping_payload(&self) -> &[u8] {
        self.keepalive.payload()
    }

    /// [`Timers::ping_payload`], by value.
    pub(crate) fn ping_token(&self) -> [u8; 8] {
        self.keepalive.token()
    }
}

/// Pings to a peer: a ping still unanswered when the next is due ends the
/// session.
pub(crate) struct Keepalive {
    interval: Option<Interval>,
    awaiting_pong: bool,
    /// The pings' payload, random per session: a gateway in front of
    /// another tells its own pongs from those to the other's pings.
    token: [u8; 8],
}

impl Keepalive {
    pub(crate) fn new(period: Option<Duration>) -> Self {
        let interval = period.map(|p| {
            let mut i = tokio::time::interval_at(Instant::now() + p, p);
            i.set_missed_tick_behavior(MissedTickBehavior::Delay);
            i
        });
        Keepalive {
            interval,
            awaiting_pong: false,
            token: rand::random(),
        }
    }

    /// What the pings carry.
    pub(crate) fn payload(&self) -> &[u8] {
        &self.token
    }

    /// [`Keepalive::payload`], by value.
    pub(crate) fn token(&self) -> [u8; 8] {
        self.token
    }

    pub(crate) async fn tick(&mut self) {
        match &mut self.interval {
            Some(i) => {
                i.tick().await;
            }
            None => std::future::pending().await,
        }
    }

    /// After a tick: end the session if the last ping went unanswered;
    /// else a ping is to be sent, and its pong awaited.
    pub(crate) fn due(&mut self) -> Result<(), SessionEnd> {
        if self.awaiting_pong {
            return Err(SessionEnd::PingTimeout);
        }
        self.awaiting_pong = true;
        Ok(())
    }

    /// Any pong shows the peer is alive.
    pub(crate) fn pong(&mut self) {
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

/// What one side sends to end a session by `plan`: the Close frame (masked
/// with `mask` toward an upstream), and whether to wait for the peer's
/// Close after it (not when it answers theirs, with their own code).
pub(crate) fn close_to_send(
    plan: ClosePlan,
    end: &SessionEnd,
    mask: Option<[u8; 4]>,
) -> Option<(ControlFrame, bool)> {
    let close_of = |frame: Option<&CloseFrame>| match frame {
        Some(f) => ControlFrame::close(Some(f.code.into()), &f.reason, mask),
        None => ControlFrame::close(None, "", mask),
    };
    match plan {
        ClosePlan::Send(code, reason) => {
            Some((ControlFrame::close(Some(code.into()), reason, mask), true))
        }
        ClosePlan::Forward(frame) => Some((close_of(frame.as_ref()), true)),
        ClosePlan::Reply => match end {
            SessionEnd::Closed(_, frame) => Some((close_of(frame.as_ref()), false)),
            _ => None,
        },
        ClosePlan::Nothing => None,
    }
}

/// A Close frame's code and reason as read (see `frame::rules::parse_close`).
pub(crate) fn close_frame((code, reason): (u16, &str)) -> CloseFrame {
    CloseFrame {
        code: code.into(),
        reason: reason.into(),
    }
}
