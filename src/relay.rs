//! The relay: one task carries a client session and its upstream session.
//! Each message read from one side is fed to the other, together with every
//! message already readable, then flushed once; nothing more is read until
//! that write is done, so each side is read only as fast as the other side
//! takes it (memory per session stays within the configured message and
//! buffer sizes whatever the peers do).
//!
//! Text stays text, binary stays binary, messages keep their boundaries and
//! order; pings and pongs are passed on with their payloads (tungstenite also
//! answers each ping itself, so a ping may see two pongs: RFC 6455 allows
//! unsolicited pongs); a Close passes through with its code and reason.

use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_util::sync::CancellationToken;

use crate::close::{SessionEnd, Side};
use crate::config::Limits;
use crate::metrics::RouteMetrics;
use crate::session::{KEEPALIVE, Timers, bounded};

type Next = Option<Result<Message, WsError>>;

pub(crate) async fn run<C, U>(
    client: &mut WebSocketStream<C>,
    upstream: &mut WebSocketStream<U>,
    metrics: &RouteMetrics,
    limits: &Limits,
    cancel: &CancellationToken,
) -> SessionEnd
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let mut timers = Timers::new(limits);
    loop {
        // Unbiased between the two sides, so neither can starve the other.
        let (from, first) = tokio::select! {
            msg = client.next() => (Side::Client, msg),
            msg = upstream.next() => (Side::Upstream, msg),
            _ = cancel.cancelled() => return SessionEnd::Shutdown,
            tick = timers.next() => {
                if let Err(end) = timers.handle(tick, client, limits.send_timeout).await {
                    return end;
                }
                continue;
            }
        };
        let written = match from {
            Side::Client => {
                let batch = pump(Side::Client, client, upstream, first, metrics, &mut timers);
                bounded(Side::Upstream, limits.send_timeout, cancel, batch).await
            }
            Side::Upstream => {
                let batch = pump(
                    Side::Upstream,
                    upstream,
                    client,
                    first,
                    metrics,
                    &mut timers,
                );
                bounded(Side::Client, limits.send_timeout, cancel, batch).await
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
            Message::Pong(ref payload) if from == Side::Client => {
                timers.pong();
                if payload.as_ref() != KEEPALIVE {
                    dst.feed(msg).await.map_err(write_err)?;
                }
            }
            Message::Ping(_) | Message::Pong(_) => dst.feed(msg).await.map_err(write_err)?,
            Message::Close(frame) => return Err(SessionEnd::Closed(from, frame)),
            Message::Frame(_) => {}
        }
        next = src.next().now_or_never();
    }
    dst.flush().await.map_err(write_err)
}
