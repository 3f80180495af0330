//! The `echo` route's session loop, on the frame layer (as a hub member's):
//! every text and binary message goes back to the client as it came,
//! compressed where permessage-deflate was agreed. The echo plays the
//! upstream, so its traffic is counted both ways like a relayed session's;
//! there is no second socket.

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::close::{SessionEnd, Side};
use crate::config::Deflate;
use crate::deflate::{self, Agreed};
use crate::frame::OpCode;
use crate::hub::member::{Data, Event, Member, MemberDeflate, payload_len};
use crate::session::{SessionCtx, Timers, keepalive_ping};

/// Run an echo session and its close handshake; return how it ended.
pub(crate) async fn serve<S>(io: Box<S>, ctx: &SessionCtx<'_>, agreed: Option<Agreed>) -> SessionEnd
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let deflate = agreed.as_ref().map(|a| MemberDeflate::new(a, ctx));
    let mut member = Member::new(io, ctx.limits, deflate);
    // Without a context of the connection's own, each echo is compressed
    // here; with one, the member compresses what it sends.
    let compress = agreed.as_ref().and_then(Agreed::shared_compress);
    let end = run(&mut member, ctx, compress).await;
    member.finish(&end, ctx.limits.close_timeout).await;
    end
}

async fn run<S>(
    member: &mut Member<S>,
    ctx: &SessionCtx<'_>,
    compress: Option<Deflate>,
) -> SessionEnd
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut timers = Timers::new(ctx.limits);
    loop {
        let step = tokio::select! {
            biased;
            _ = ctx.cancel.cancelled() => Err(ctx.stopped()),
            read = member.read() => match read {
                Ok(()) => echo(member, ctx, &mut timers, compress).await,
                Err(end) => Err(end),
            },
            tick = timers.next() => match timers.due(tick) {
                Ok(true) => {
                    member.queue(keepalive_ping(timers.ping_payload()));
                    write(member, ctx).await
                }
                Ok(false) => Ok(()),
                Err(end) => Err(end),
            },
        };
        if let Err(end) = step {
            return end;
        }
    }
}

/// Send back every message that was read (and the pongs its pings asked
/// for), then write them out with one flush.
async fn echo<S>(
    member: &mut Member<S>,
    ctx: &SessionCtx<'_>,
    timers: &mut Timers,
    compress: Option<Deflate>,
) -> Result<(), SessionEnd>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        match member.event() {
            Ok(Some(Event::Message(data))) => {
                let len = data.len() as u64;
                ctx.metrics.count(Side::Client, len);
                let (opcode, payload) = match &data {
                    Data::Text(t) => (OpCode::Text, t.as_bytes()),
                    Data::Binary(b) => (OpCode::Binary, &b[..]),
                };
                let frame = deflate::frame(opcode, payload, compress);
                if frame.first().is_some_and(|b| b & 0x40 != 0) {
                    ctx.metrics
                        .compressed(Side::Upstream, payload_len(&frame) as u64, len);
                }
                member.queue(Bytes::from(frame));
                ctx.metrics.count(Side::Upstream, len);
                timers.touch();
            }
            Ok(Some(Event::Pong)) => timers.pong(),
            Ok(None) => break,
            Err(end) => {
                // What was echoed before a Close or a broken rule still goes.
                let _ = write(member, ctx).await;
                return Err(end);
            }
        }
    }
    match member.has_output() {
        true => write(member, ctx).await,
        false => Ok(()),
    }
}

/// Write out what is queued and flush, under `send_timeout`.
async fn write<S>(member: &mut Member<S>, ctx: &SessionCtx<'_>) -> Result<(), SessionEnd>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let work = async {
        member.write_out().await?;
        member.flush().await
    };
    ctx.bounded(Side::Client, work).await
}
