//! The relay: one task carries a client session and its upstream session,
//! frame by frame. What is read from one side is checked by the frame layer
//! (`frame::Inbound`: RFC 6455 rules, limits from the header, UTF-8 of text
//! across fragments) and written to the other side as it came: client
//! frames keep their mask on the way up, nothing is reassembled, so a
//! session holds two small read buffers whatever the message sizes.
//! Nothing more is read from a side until what it sent is written, so each
//! side is read only as fast as the other takes it; the two directions run
//! at once, so a side slow to read holds up only what goes to it.
//!
//! Text stays text, binary stays binary, messages keep their boundaries and
//! order. Pings and pongs pass through both ways untouched, so every ping
//! is answered exactly once, by the far side; only pongs to the gateway's
//! own keepalive pings are kept back. A Close passes through with its code
//! and reason, and the close handshake is completed with both sides.
//!
//! Compressed frames (permessage-deflate) pass the same way where both
//! sides agreed the extension; where only one did, the direction's codec
//! (`relay/codec.rs`) inflates or compresses its messages on the way.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::Poll;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::time::{Instant, timeout};

use crate::close::{ClosePlan, Fault, SessionEnd, Side};
use crate::config::Limits;
use crate::deflate::{Agreed, ContextSlot, UpstreamAgreed};
use crate::frame::{
    self, ControlFrame, Inbound, OpCode, ReadBuffer, Rules, Sender, Step, apply_mask, parse_close,
};
use crate::hub::member::payload_len;
use crate::session::{Keepalive, SessionCtx, Tick, Timers, close_frame, close_to_send};

mod codec;

use codec::{Codec, Deflating, Inflating};

/// What an inflating direction gathers before it writes.
const FLUSH: usize = 64 << 10;

/// permessage-deflate on each side of a session, as the two handshakes
/// agreed it.
#[derive(Debug, Default)]
pub(crate) struct Compression {
    /// With the client (its place in the context budget held while the
    /// session needs it).
    pub(crate) client: Option<Agreed>,
    /// With the upstream member, on the terms of `deflate::upstream_offer`.
    pub(crate) upstream: Option<UpstreamAgreed>,
}

impl Compression {
    /// What each direction does: (client to upstream, upstream to client).
    /// Compressed frames pass where both sides agreed on terms that suit
    /// each other; otherwise the gateway inflates, or compresses toward
    /// the client.
    fn codecs(&self, limits: &Limits) -> (Codec, Codec) {
        let max = limits.max_message_size;
        let up = match (&self.client, &self.upstream) {
            // A client that keeps context, to a member that will not.
            (Some(c), Some(u)) if c.client_context && u.client_no_context => {
                Codec::Inflate(Box::new(Inflating::new(true, max, true)))
            }
            (Some(_), Some(_)) | (None, _) => Codec::Pass,
            (Some(c), None) => {
                Codec::Inflate(Box::new(Inflating::new(true, max, c.client_context)))
            }
        };
        let down = match (&self.client, &self.upstream) {
            // The member did not settle the window the client asked for.
            (Some(_), Some(u)) if u.window_unsettled => {
                Codec::Inflate(Box::new(Inflating::new(false, max, !u.server_no_context)))
            }
            // The member was offered the client's terms.
            (Some(_), Some(_)) | (None, None) => Codec::Pass,
            // Offered without context (`upstream_compression = "always"`).
            (None, Some(_)) => Codec::Inflate(Box::new(Inflating::new(false, max, false))),
            (Some(c), None) => match c.compress {
                Some(config) => Codec::Deflate(Box::new(Deflating::new(
                    config,
                    c.server_context,
                    limits.max_frame_size.min(frame::MAX_READ),
                ))),
                None => Codec::Pass,
            },
        };
        (up, down)
    }
}

/// What one side sends, as it is read: its buffer, its frames' rules, and
/// what becomes of its data on the way.
struct Inflow {
    buf: ReadBuffer,
    frames: Inbound,
    codec: Codec,
    /// This side sent a Close (valid or not): it will send no other, so
    /// the end does not wait for one.
    sent_close: bool,
    /// A write to the other side was cut short (timed out, failed or given
    /// up at a drain): it may have part of a frame.
    cut: bool,
    /// A pass was dropped half-way: what was read and what was parsed
    /// disagree, so nothing more is read from this side.
    passing: bool,
}

impl Inflow {
    /// `deflate`: the sender agreed permessage-deflate (RSV1 marks its
    /// compressed messages).
    fn new(sender: Sender, limits: &Limits, deflate: bool, codec: Codec) -> Self {
        let rules = Rules::new(sender, limits.max_frame_size, limits.max_message_size);
        let rules = if deflate { rules.with_deflate() } else { rules };
        Inflow {
            buf: ReadBuffer::default(),
            frames: Inbound::new(rules),
            codec,
            sent_close: false,
            cut: false,
            passing: false,
        }
    }

    /// Is the other side in the middle of a frame from this one? (Then
    /// nothing else may be written to it.) Inflated frames go on whole.
    fn mid_frame(&self) -> bool {
        self.cut
            || match self.codec {
                Codec::Inflate(_) => self.frames.in_frame() && !self.frames.compressed(),
                Codec::Pass | Codec::Deflate(_) => self.frames.in_frame(),
            }
    }
}

/// Relay between `client` and `upstream` until either side closes, breaks
/// a rule or goes away, or the gateway drains; then close both sides.
/// `early` is what the upstream sent right after its 101. The session
/// keeps of `compression` only its codecs and, while one of them keeps
/// context, its place in the budget.
pub(crate) fn run<'r, C, U>(
    client: &'r mut C,
    upstream: &'r mut U,
    early: Vec<u8>,
    compression: Compression,
    ping_interval: Option<Duration>,
    ctx: &'r SessionCtx<'_>,
) -> impl Future<Output = SessionEnd> + 'r
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let (up, down) = compression.codecs(ctx.limits);
    let slot = match up.keeps_context() || down.keeps_context() {
        true => compression.client.as_ref().and_then(|c| c.slot.clone()),
        false => None,
    };
    let agreed = (compression.client.is_some(), compression.upstream.is_some());
    let keepalive = Keepalive::new(ping_interval);
    relay_with(
        client,
        upstream,
        early,
        (up, down),
        agreed,
        (slot, keepalive),
        ctx,
    )
}

/// [`run`], with what the session keeps of its compression: each
/// direction's codec, whether each side agreed, and the budget's place.
async fn relay_with<C, U>(
    client: &mut C,
    upstream: &mut U,
    early: Vec<u8>,
    (up, down): (Codec, Codec),
    (client_agreed, upstream_agreed): (bool, bool),
    (_slot, keepalive): (Option<Arc<ContextSlot>>, Keepalive),
    ctx: &SessionCtx<'_>,
) -> SessionEnd
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    // Built here, not passed in: a moved argument would be held twice.
    let limits = ctx.limits;
    let mut relay = Relay {
        client,
        upstream,
        up: Inflow::new(Sender::Client, limits, client_agreed, up),
        down: Inflow::new(Sender::Server, limits, upstream_agreed, down),
        ctx,
    };
    let end = relay.relay(early, keepalive).await;
    relay.close_both(&end).await;
    end
}

/// A session's two ends and what each of them sends.
struct Relay<'r, 'c, C, U> {
    client: &'r mut C,
    upstream: &'r mut U,
    /// What the client sends: frames on their way up.
    up: Inflow,
    /// What the upstream sends: frames on their way down.
    down: Inflow,
    ctx: &'r SessionCtx<'c>,
}

impl<C, U> Relay<'_, '_, C, U>
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    /// Both directions at once, each at its own pace: a side that is slow
    /// to read holds up only what goes to it, never what comes from it (a
    /// member that answers each message before it reads the next would
    /// otherwise wait on the gateway while the gateway waits on it). The
    /// first direction to end ends the session; the other stops where it
    /// reads next, a write in progress given `close_timeout` to finish.
    /// `pings`: the gateway's pings to the upstream member.
    async fn relay(&mut self, early: Vec<u8>, pings: Keepalive) -> SessionEnd {
        let Relay {
            client,
            upstream,
            up,
            down,
            ctx,
        } = self;
        let timers = Timers::new(ctx.limits);
        let heard = Heard::new();
        let tokens = (timers.ping_token(), pings.token());
        // What the member sent with its 101 goes first.
        if !early.is_empty() {
            down.buf.preload(&early);
            let sent = pass(Side::Upstream, down, *client, ctx, &heard, &tokens.1);
            let sent = tokio::select! {
                biased;
                sent = sent => sent,
                _ = ctx.cancel.cancelled() => Err(ctx.stopped()),
            };
            if let Err(end) = sent {
                return end;
            }
        }
        let (client_in, mut client_out) = tokio::io::split(&mut **client);
        let (upstream_in, mut upstream_out) = tokio::io::split(&mut **upstream);
        {
            let both = async {
                let upward = upward(
                    client_in,
                    &mut upstream_out,
                    up,
                    ctx,
                    &heard,
                    pings,
                    &tokens.0,
                );
                let downward = downward(
                    upstream_in,
                    &mut client_out,
                    down,
                    ctx,
                    &heard,
                    timers,
                    &tokens.1,
                );
                tokio::pin!(upward, downward);
                // The first to end says how the session ended. The other
                // stops where it reads next; a write of its still under way
                // gets `close_timeout`, then is dropped (its side marked
                // mid-frame).
                let (end, upward_ended) = tokio::select! {
                    end = &mut upward => (end, true),
                    end = &mut downward => (end, false),
                };
                if let Some(end) = end {
                    heard.stop(end);
                }
                let limit = ctx.limits.close_timeout;
                let _ = match upward_ended {
                    true => timeout(limit, &mut downward).await.map(drop),
                    false => timeout(limit, &mut upward).await.map(drop),
                };
            };
            // A drain (or the token's expiry) drops both where they are,
            // unless one had already ended the session.
            tokio::select! {
                biased;
                () = both => {}
                _ = ctx.cancel.cancelled() => {}
            }
        }
        heard.first.into_inner().unwrap_or_else(|| ctx.stopped())
    }

    /// Both sides' part of the end, at once. A side in the middle of a
    /// frame from the other cannot be sent a Close: its bytes would be read
    /// as that frame's payload.
    async fn close_both(&mut self, end: &SessionEnd) {
        let limit = self.ctx.limits.close_timeout;
        let plan = |side: Side, mid_frame: bool| match mid_frame {
            true => ClosePlan::Nothing,
            false => end.plan(side),
        };
        let to_client = plan(Side::Client, self.down.mid_frame());
        let to_upstream = plan(Side::Upstream, self.up.mid_frame());
        let mask = Some(rand::random());
        tokio::join!(
            close(self.client, &mut self.up, to_client, end, None, limit),
            close(self.upstream, &mut self.down, to_upstream, end, mask, limit),
        );
    }
}

/// Client to upstream, and the gateway's pings to the member (written
/// here, between the client's frames); `None` once the other direction
/// ended.
async fn upward<R, W>(
    mut client: R,
    upstream: &mut W,
    up: &mut Inflow,
    ctx: &SessionCtx<'_>,
    heard: &Heard,
    mut pings: Keepalive,
    client_token: &[u8],
) -> Option<SessionEnd>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    loop {
        let read = tokio::select! {
            biased;
            _ = heard.stopped() => return None,
            _ = pings.tick() => {
                // Nothing may be written into a frame on its way up.
                if up.mid_frame() {
                    continue;
                }
                // Anything the member sent shows it is alive; while what
                // it sends waits on the client, its silence shows nothing.
                if heard.upstream.swap(false, Ordering::Relaxed)
                    || heard.upstream_held.load(Ordering::Relaxed)
                {
                    pings.pong();
                }
                if pings.due().is_err() {
                    return Some(SessionEnd::UpstreamPingTimeout);
                }
                let ping = ControlFrame::new(OpCode::Ping, pings.payload(), Some(rand::random()));
                // Nothing is read from the client meanwhile.
                let held = Holding::new(heard.held(Side::Client));
                let sent = whole(upstream, ping.as_bytes(), Side::Upstream, &mut up.cut, ctx).await;
                drop(held);
                if let Err(end) = sent {
                    return Some(end);
                }
                continue;
            }
            read = up.buf.read_from(&mut client) => read,
        };
        let carried = carry(Side::Client, read, up, upstream, ctx, heard, client_token);
        if let Err(end) = carried.await {
            return Some(end);
        }
    }
}

/// Upstream to client, and the client's clocks: the gateway's pings to the
/// client (written here, between the member's frames) and the idle
/// deadline; `None` once the other direction ended.
async fn downward<R, W>(
    mut upstream: R,
    client: &mut W,
    down: &mut Inflow,
    ctx: &SessionCtx<'_>,
    heard: &Heard,
    mut timers: Timers,
    upstream_token: &[u8],
) -> Option<SessionEnd>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    loop {
        let read = tokio::select! {
            biased;
            _ = heard.stopped() => return None,
            tick = timers.next() => {
                // Nothing may be written into a frame on its way down.
                if matches!(tick, Tick::Ping) && down.mid_frame() {
                    continue;
                }
                // The same for the client's pongs, behind the member.
                if heard.client_pong.swap(false, Ordering::Relaxed)
                    || heard.client_held.load(Ordering::Relaxed)
                {
                    timers.pong();
                }
                if let Some(at) = heard.last_data() {
                    timers.touched_at(at);
                }
                match timers.due(tick) {
                    Ok(true) => {
                        let ping = ControlFrame::new(OpCode::Ping, timers.ping_payload(), None);
                        // Nothing is read from the member meanwhile.
                        let held = Holding::new(heard.held(Side::Upstream));
                        let sent = whole(client, ping.as_bytes(), Side::Client, &mut down.cut, ctx).await;
                        drop(held);
                        if let Err(end) = sent {
                            return Some(end);
                        }
                    }
                    Ok(false) => {}
                    Err(end) => return Some(end),
                }
                continue;
            }
            read = down.buf.read_from(&mut upstream) => read,
        };
        let carried = carry(
            Side::Upstream,
            read,
            down,
            client,
            ctx,
            heard,
            upstream_token,
        );
        if let Err(end) = carried.await {
            return Some(end);
        }
    }
}

/// After a read from `from`: its end if it ended, else its frames passed
/// on to `dst`, with `from` held meanwhile.
async fn carry<D>(
    from: Side,
    read: std::io::Result<usize>,
    inflow: &mut Inflow,
    dst: &mut D,
    ctx: &SessionCtx<'_>,
    heard: &Heard,
    ours: &[u8],
) -> Result<(), SessionEnd>
where
    D: AsyncWrite + Unpin,
{
    match read {
        Ok(0) => return Err(SessionEnd::Gone(from)),
        Err(e) => return Err(SessionEnd::io(from, &e)),
        // Anything the member sends shows it is alive.
        Ok(_) if from == Side::Upstream => heard.upstream.store(true, Ordering::Relaxed),
        Ok(_) => {}
    }
    let _held = Holding::new(heard.held(from));
    pass(from, inflow, dst, ctx, heard, ours).await
}

/// `held` set while it lives: nothing is read from that side meanwhile
/// (a write to the other side is under way).
struct Holding<'a>(&'a AtomicBool);

impl<'a> Holding<'a> {
    fn new(held: &'a AtomicBool) -> Self {
        held.store(true, Ordering::Relaxed);
        Holding(held)
    }
}

impl Drop for Holding<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Relaxed);
    }
}

/// What one direction tells the other: the loop that writes to a side
/// pings it and keeps its clocks, the loop that reads it hears the
/// answers. Both run in the session's task, one at a time.
struct Heard {
    /// A pong from the client since its ping clock last looked.
    client_pong: AtomicBool,
    /// Anything from the member since its ping clock last looked.
    upstream: AtomicBool,
    /// What the client sent is being written to the member, and what the
    /// member sent to the client: nothing more is read from that side
    /// meanwhile, so its pings are not judged.
    client_held: AtomicBool,
    upstream_held: AtomicBool,
    /// When a data message last went through, in ms after `since` (0: none).
    data_ms: AtomicU64,
    since: Instant,
    /// How the session ended, as the first direction to end said.
    first: OnceLock<SessionEnd>,
}

impl Heard {
    /// Set while nothing is read from `side`.
    fn held(&self, side: Side) -> &AtomicBool {
        match side {
            Side::Client => &self.client_held,
            Side::Upstream => &self.upstream_held,
        }
    }

    fn new() -> Self {
        Heard {
            client_pong: AtomicBool::new(false),
            upstream: AtomicBool::new(false),
            client_held: AtomicBool::new(false),
            upstream_held: AtomicBool::new(false),
            data_ms: AtomicU64::new(0),
            since: Instant::now(),
            first: OnceLock::new(),
        }
    }

    fn data(&self) {
        let ms = self.since.elapsed().as_millis() as u64 + 1;
        self.data_ms.fetch_max(ms, Ordering::Relaxed);
    }

    fn last_data(&self) -> Option<Instant> {
        match self.data_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(self.since + Duration::from_millis(ms - 1)),
        }
    }

    /// A direction ended the session so.
    fn stop(&self, end: SessionEnd) {
        let _ = self.first.set(end);
    }

    /// Ready once a direction has ended. It registers no waker: the other
    /// direction is polled again as soon as one has ended (both are polled
    /// by the same task).
    fn stopped(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(|_| match self.first.get() {
            Some(_) => Poll::Ready(()),
            None => Poll::Pending,
        })
    }
}

/// Check what `from` sent and is held in `inflow`, write what passes to
/// `dst` in one go, and keep an incomplete frame's start for the next read.
/// The frames before a Close or a broken rule still go through. Frames
/// pass as they came, or shrink in place (compressed); where they may grow
/// (inflated, or compressed with context) they are gathered apart, and
/// inflated ones written every [`FLUSH`] bytes.
async fn pass<D>(
    from: Side,
    inflow: &mut Inflow,
    dst: &mut D,
    ctx: &SessionCtx<'_>,
    heard: &Heard,
    ours: &[u8],
) -> Result<(), SessionEnd>
where
    D: AsyncWrite + Unpin,
{
    let to = other(from);
    let Inflow {
        buf,
        frames,
        codec,
        sent_close,
        cut,
        passing,
    } = inflow;
    *passing = true;
    let data = buf.data();
    // `data[..out]` is what goes on; `data[at..]` is not looked at yet.
    let (mut at, mut out) = (0, 0);
    // What goes on, when it does not fit over what was read (inflated, or
    // compressed with context).
    let in_place = codec.in_place();
    let mut grown = Vec::new();
    let (mut messages, mut bytes) = (0, 0);
    // Payload bytes compressed here: after and before.
    let mut deflated = (0, 0);
    let mut ended = None;
    let mut wait = None;
    'frames: while at < data.len() {
        if let Codec::Deflate(deflating) = codec {
            wait = deflating.wait_for(&data[at..], frames);
            if wait.is_some() {
                break;
            }
        }
        let fresh = !frames.in_message();
        let (len, keep) = match frames.next(&mut data[at..]) {
            Err(violation) => {
                ended = Some(SessionEnd::Broken(from, Fault::from(violation)));
                break;
            }
            Ok(Step::Need) => break,
            Ok(Step::Data { len, payload, end }) => {
                bytes += payload as u64;
                messages += u64::from(end);
                let piece = at + len - payload..at + len;
                match codec {
                    Codec::Pass => (len, true),
                    Codec::Deflate(deflating) => {
                        let whole = fresh && end;
                        match whole.then(|| deflating.compress(frames.text(), &data[piece])) {
                            Some(Some(frame)) => {
                                deflated.0 += payload_len(&frame) as u64;
                                deflated.1 += payload as u64;
                                if in_place {
                                    debug_assert!(frame.len() <= len);
                                    data[out..out + frame.len()].copy_from_slice(&frame);
                                    out += frame.len();
                                } else {
                                    grown.extend_from_slice(&frame);
                                }
                                (len, false)
                            }
                            _ => (len, true),
                        }
                    }
                    // Sent plain: it goes on as it came.
                    Codec::Inflate(_) if !frames.compressed() => (len, true),
                    Codec::Inflate(inflating) => {
                        let piece = &mut data[piece];
                        if let Some((key, offset)) = frames.mask() {
                            apply_mask(piece, key, offset);
                        }
                        let mut input = &piece[..];
                        loop {
                            let text = frames.text();
                            match inflating.feed(text, &mut input, end, &mut grown, FLUSH) {
                                Ok(true) => break,
                                Ok(false) => {
                                    // Boxed: only a large inflated message waits here.
                                    let written = Box::pin(whole(dst, &grown, to, cut, ctx)).await;
                                    grown.clear();
                                    if let Err(end) = written {
                                        ended = Some(end);
                                        at += len;
                                        break 'frames;
                                    }
                                }
                                Err(violation) => {
                                    ended = Some(SessionEnd::Broken(from, Fault::from(violation)));
                                    at += len;
                                    break 'frames;
                                }
                            }
                        }
                        (len, false)
                    }
                }
            }
            Ok(Step::Control {
                len,
                opcode: OpCode::Close,
            }) => {
                *sent_close = true;
                let close = match parse_close(frames.control()) {
                    Ok(close) => SessionEnd::Closed(from, close.map(close_frame)),
                    Err(violation) => SessionEnd::Broken(from, Fault::from(violation)),
                };
                ended = Some(close);
                at += len;
                break;
            }
            Ok(Step::Control { len, opcode }) => {
                // Pongs to the gateway's own pings stop here; any pong
                // shows the client is alive.
                let pong = opcode == OpCode::Pong;
                if pong && from == Side::Client {
                    heard.client_pong.store(true, Ordering::Relaxed);
                }
                (len, !(pong && frames.control() == ours))
            }
        };
        if keep {
            if !in_place {
                grown.extend_from_slice(&data[at..at + len]);
            } else if out != at {
                // Only after a dropped or shrunk frame do the bytes that go
                // on move up.
                data.copy_within(at..at + len, out);
                out += len;
            } else {
                out += len;
            }
        }
        at += len;
    }
    if bytes > 0 || messages > 0 {
        ctx.metrics.counted(from, messages, bytes);
    }
    if let Codec::Inflate(inflating) = codec {
        deflated = inflating.take_counts();
    }
    if deflated != (0, 0) {
        ctx.metrics.compressed(from, deflated.0, deflated.1);
    }
    let written = match (out, grown.is_empty()) {
        (0, true) => Ok(()),
        (0, false) => whole(dst, &grown, to, cut, ctx).await,
        _ => whole(dst, &data[..out], to, cut, ctx).await,
    };
    buf.consume(at);
    if let Some(size) = wait {
        buf.expect(size);
    }
    *passing = false;
    written?;
    if messages > 0 || bytes > 0 {
        heard.data();
    }
    ended.map_or(Ok(()), Err)
}

/// [`write`] under `send_timeout`, with `cut` set while it is under way: a
/// write that fails, times out or is dropped at a drain leaves `to` inside
/// a frame, where no Close may follow.
async fn whole<D>(
    dst: &mut D,
    bytes: &[u8],
    to: Side,
    cut: &mut bool,
    ctx: &SessionCtx<'_>,
) -> Result<(), SessionEnd>
where
    D: AsyncWrite + Unpin,
{
    *cut = true;
    // A drain drops the whole relay, this write with it.
    let written = ctx.timed(to, write(dst, bytes, to)).await;
    *cut = written.is_err();
    written
}

/// Write all of `bytes` to `side` and flush.
async fn write<D>(dst: &mut D, bytes: &[u8], side: Side) -> Result<(), SessionEnd>
where
    D: AsyncWrite + Unpin,
{
    let broken = |e| SessionEnd::io(side, &e);
    dst.write_all(bytes).await.map_err(broken)?;
    dst.flush().await.map_err(broken)
}

/// Carry out one side's part of the end, within `limit`: send our Close
/// (masked with `mask` to the upstream), or pass the other side's on, or
/// answer theirs; wait for their Close when we spoke first; then close
/// TLS and TCP.
async fn close<S>(
    io: &mut S,
    inflow: &mut Inflow,
    plan: ClosePlan,
    end: &SessionEnd,
    mask: Option<[u8; 4]>,
    limit: std::time::Duration,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let _ = timeout(limit, async {
        if let Some((frame, wait)) = close_to_send(plan, end, mask) {
            let sent = io.write_all(frame.as_bytes()).await.and(io.flush().await);
            if sent.is_ok() && wait && !inflow.sent_close && !inflow.passing {
                await_close(io, inflow).await;
            }
        }
        let _ = io.shutdown().await;
    })
    .await;
}

/// Read (and drop) what the peer still sends until its Close, the end of
/// its stream, or a frame that breaks the rules.
async fn await_close<S>(io: &mut S, inflow: &mut Inflow)
where
    S: AsyncRead + Unpin,
{
    loop {
        while !inflow.buf.is_empty() {
            match inflow.frames.next(inflow.buf.data()) {
                Ok(Step::Control {
                    opcode: OpCode::Close,
                    ..
                })
                | Err(_) => return,
                Ok(Step::Need) => break,
                Ok(Step::Data { len, .. } | Step::Control { len, .. }) => inflow.buf.consume(len),
            }
        }
        if !matches!(inflow.buf.read_from(io).await, Ok(n) if n > 0) {
            return;
        }
    }
}

fn other(side: Side) -> Side {
    match side {
        Side::Client => Side::Upstream,
        Side::Upstream => Side::Client,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::config::{Config, ConfigSource};
    use crate::metrics::RouteMetrics;

    /// Every open session holds its relay future, idle or not: what it
    /// weighs is memory per session, which the comparison with nginx
    /// measures. Guarded here so it does not creep up unnoticed.
    #[tokio::test]
    async fn a_relayed_session_future_stays_small() {
        let config = Config::load(
            ConfigSource::Text(
                r#"
                [tls]
                self_signed_if_missing = true
                cert = "/nonexistent/wsgate-test/cert.pem"
                key = "/nonexistent/wsgate-test/key.pem"
                [[routes]]
                path = "/r"
                kind = "upstream"
                upstreams = ["ws://127.0.0.1:9"]
                "#,
            ),
            Some(HashMap::new()),
        )
        .unwrap();
        let metrics = RouteMetrics::new(&config.routes[0]);
        let cancel = CancellationToken::new();
        let ctx = SessionCtx {
            metrics: &metrics,
            limits: &config.limits,
            cancel: &cancel,
            expiry: None,
        };
        let (mut client, mut upstream) = tokio::io::duplex(64);
        let session = run(
            &mut client,
            &mut upstream,
            Vec::new(),
            Compression::default(),
            Some(Duration::from_secs(30)),
            &ctx,
        );
        // Both directions' state, each with a write in progress: 3,728
        // bytes with this toolchain.
        let size = std::mem::size_of_val(&session);
        assert!(size <= 4096, "a relayed session's future is {size} bytes");
    }
}
