//! The `echo` route's session loop: every text and binary message goes back
//! to the client as it came. The echo plays the upstream, so its traffic is
//! counted both ways like a relayed session's; there is no second socket.

use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

use crate::close::{SessionEnd, Side};
use crate::session::{SessionCtx, Timers};

/// Echo every text and binary message back; answer pings (tungstenite
/// queues the pong, the flush sends it); return how the session ended.
pub(crate) async fn run<S>(ws: &mut WebSocketStream<S>, ctx: &SessionCtx<'_>) -> SessionEnd
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut timers = Timers::new(ctx.limits);
    loop {
        let first = tokio::select! {
            biased;
            _ = ctx.cancel.cancelled() => return ctx.stopped(),
            msg = ws.next() => msg,
            tick = timers.next() => {
                if let Err(end) = timers.handle(tick, ws, ctx.limits.send_timeout).await {
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
                        ctx.metrics.count(Side::Client, len);
                        ws.feed(msg)
                            .await
                            .map_err(|e| SessionEnd::from_ws_error(Side::Client, &e))?;
                        ctx.metrics.count(Side::Upstream, len);
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
        if let Err(end) = ctx.bounded(Side::Client, batch).await {
            return end;
        }
    }
}
