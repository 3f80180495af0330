//! The relay: one task carries a client session and its upstream session.
//! Each message read from one side is fed to the other, together with every
//! message already readable, then flushed once; nothing more is read until
//! that write is done, so each side is read only as fast as the other side
//! takes it (memory per session stays within the configured message and
//! buffer sizes whatever the peers do).
//!
//! Text stays text, binary stays binary, messages keep their boundaries and
//! order; pings are passed on with their payloads both ways, and every ping
//! gets exactly one pong (see [`Pings`]); a Close passes through with its
//! code and reason.

use std::collections::VecDeque;

use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::{Bytes, Error as WsError, Message};

use crate::close::{SessionEnd, Side};
use crate::metrics::RouteMetrics;
use crate::session::{KEEPALIVE, SessionCtx, Timers};

type Next = Option<Result<Message, WsError>>;

/// Carry messages between `client` and `upstream` until either side ends,
/// a clock runs out, or the gateway drains; return how it ended.
pub(crate) async fn run<C, U>(
    client: &mut WebSocketStream<C>,
    upstream: &mut WebSocketStream<U>,
    ctx: &SessionCtx<'_>,
) -> SessionEnd
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let mut timers = Timers::new(ctx.limits);
    let mut pings = Pings::default();
    loop {
        // Unbiased between the two sides, so neither can starve the other.
        let (from, first) = tokio::select! {
            msg = client.next() => (Side::Client, msg),
            msg = upstream.next() => (Side::Upstream, msg),
            _ = ctx.cancel.cancelled() => return SessionEnd::Shutdown,
            tick = timers.next() => {
                if let Err(end) = timers.handle(tick, client, ctx.limits.send_timeout).await {
                    return end;
                }
                continue;
            }
        };
        let written = match from {
            Side::Client => {
                let batch = pump(
                    Side::Client,
                    client,
                    upstream,
                    first,
                    ctx.metrics,
                    &mut timers,
                    &mut pings,
                );
                ctx.bounded(Side::Upstream, batch).await
            }
            Side::Upstream => {
                let batch = pump(
                    Side::Upstream,
                    upstream,
                    client,
                    first,
                    ctx.metrics,
                    &mut timers,
                    &mut pings,
                );
                ctx.bounded(Side::Client, batch).await
            }
        };
        if let Err(end) = written {
            return end;
        }
    }
}

/// Forward `first` and every message `src` already has ready to `dst`,
/// then flush `dst` once.
async fn pump<S, D>(
    from: Side,
    src: &mut WebSocketStream<S>,
    dst: &mut WebSocketStream<D>,
    first: Next,
    metrics: &RouteMetrics,
    timers: &mut Timers,
    pings: &mut Pings,
) -> Result<(), SessionEnd>
where
    S: AsyncRead + AsyncWrite + Unpin,
    D: AsyncRead + AsyncWrite + Unpin,
{
    let to = match from {
        Side::Client => Side::Upstream,
        Side::Upstream => Side::Client,
    };
    let write_err = |e: WsError| SessionEnd::from_ws_error(to, &e);
    let mut next = Some(first);
    while let Some(msg) = next {
        let msg = match msg {
            None => return Err(SessionEnd::Gone(from)),
            Some(Err(e)) => return Err(SessionEnd::from_ws_error(from, &e)),
            Some(Ok(msg)) => msg,
        };
        match msg {
            Message::Text(_) | Message::Binary(_) => {
                metrics.count(from, msg.len() as u64);
                timers.touch();
                dst.feed(msg).await.map_err(write_err)?;
            }
            Message::Ping(ref payload) => {
                pings.forwarded(to, payload);
                dst.feed(msg).await.map_err(write_err)?;
            }
            Message::Pong(ref payload) => {
                if from == Side::Client {
                    timers.pong();
                }
                let ours = from == Side::Client && payload.as_ref() == KEEPALIVE;
                if !ours && !pings.answered(from, payload) {
                    dst.feed(msg).await.map_err(write_err)?;
                }
            }
            Message::Close(frame) => return Err(SessionEnd::Closed(from, frame)),
            Message::Frame(_) => {}
        }
        next = src.next().now_or_never();
    }
    dst.flush().await.map_err(write_err)
}

/// Pings forwarded to each side and not yet answered by it. tungstenite
/// answers every ping it reads at once (and cannot be told not to), so the
/// sender already has its pong with the same payload; the far side's own
/// pong to a forwarded ping is dropped instead of delivered as a second one.
/// Pongs that answer no forwarded ping (unsolicited, heartbeats) pass through.
#[derive(Default)]
struct Pings {
    to_client: VecDeque<Bytes>,
    to_upstream: VecDeque<Bytes>,
}

impl Pings {
    /// At most this many outstanding pings are remembered per side; older
    /// ones are forgotten (their late pongs then pass through).
    const MAX: usize = 16;

    fn side(&mut self, side: Side) -> &mut VecDeque<Bytes> {
        match side {
            Side::Client => &mut self.to_client,
            Side::Upstream => &mut self.to_upstream,
        }
    }

    fn forwarded(&mut self, to: Side, payload: &Bytes) {
        let pending = self.side(to);
        if pending.len() == Self::MAX {
            pending.pop_front();
        }
        pending.push_back(payload.clone());
    }

    /// Is this pong from `from` the answer to a ping forwarded to it?
    fn answered(&mut self, from: Side, payload: &Bytes) -> bool {
        let pending = self.side(from);
        match pending.iter().position(|p| p == payload) {
            Some(i) => {
                // A pong answers the latest ping; earlier ones are settled too.
                pending.drain(..=i);
                true
            }
            None => false,
        }
    }
}
