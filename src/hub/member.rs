//! A hub member's connection on the frame layer: its frames read through a
//! small, shrinking buffer and checked as they arrive (`frame::Inbound`:
//! RFC 6455 rules, limits from the header, UTF-8 across fragments), whole
//! messages handed to the session; and what is queued for it written as it
//! was framed, several frames per vectored write, flushed once when nothing
//! more is ready.
//!
//! The session task holds this behind a pointer and nothing else of size:
//! an idle member costs its read buffer (256 B), an empty outbox and no
//! partial message.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::mem;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::close::{Fault, SessionEnd, Side};
use crate::config::Limits;
use crate::deflate::{Agreed, ContextSlot, Deflater, Inflater};
use crate::frame::{
    ControlFrame, Header, Inbound, OpCode, ReadBuffer, Rules, Sender, Step, Violation,
    deflated_frame, parse_close,
};
use crate::metrics::CompressionBytes;
use crate::session::{SessionCtx, close_frame, close_to_send};

/// Frames handed to the kernel in one vectored write, at most.
const MAX_SLICES: usize = 64;

/// A whole message from the member.
#[derive(Debug)]
pub(crate) enum Data {
    Text(Utf8Bytes),
    Binary(Bytes),
}

impl Data {
    pub(crate) fn len(&self) -> usize {
        match self {
            Data::Text(t) => t.len(),
            Data::Binary(b) => b.len(),
        }
    }
}

/// What the member sent, one at a time.
#[derive(Debug)]
pub(crate) enum Event {
    Message(Data),
    /// A pong, to any ping.
    Pong,
}

/// One member's stream and what is in flight each way.
pub(crate) struct Member<S> {
    io: Box<S>,
    buf: ReadBuffer,
    /// Bytes of `buf` already looked at.
    at: usize,
    frames: Inbound,
    /// The message in progress, when it came in more than one frame.
    message: Vec<u8>,
    /// The member sent a Close: it will send nothing more.
    sent_close: bool,
    /// Whole frames on their way out, the first `written` bytes of the
    /// first already written.
    outbox: VecDeque<Bytes>,
    written: usize,
    /// permessage-deflate, where agreed (boxed: a member without it pays
    /// a pointer).
    deflate: Option<Box<MemberDeflate>>,
}

/// permessage-deflate as agreed with a member: its compressed messages
/// inflated (with a decompressor of its own when it keeps context), and,
/// when this server keeps context, what goes out compressed by a
/// compressor of its own.
pub(crate) struct MemberDeflate {
    /// What its compressed messages come to is counted here.
    counted_in: CompressionBytes,
    /// The largest message, once inflated.
    max: usize,
    /// The member keeps its context: its messages build on each other.
    inflater: Option<Inflater>,
    /// This server keeps its context: every data message of at least the
    /// minimum size goes out through it (the hub and the echo hand this
    /// member plain frames), counted in `counted_out`.
    deflater: Option<Deflater>,
    counted_out: CompressionBytes,
    /// The session's place in the context budget, while it keeps context.
    _slot: Option<Arc<ContextSlot>>,
}

impl MemberDeflate {
    pub(crate) fn new(agreed: &Agreed, ctx: &SessionCtx<'_>) -> Self {
        let max = ctx.limits.max_message_size;
        MemberDeflate {
            counted_in: ctx.metrics.compression_in.clone(),
            max,
            inflater: agreed.client_context.then(|| Inflater::kept(max)),
            deflater: agreed
                .compress
                .filter(|_| agreed.server_context)
                .map(Deflater::new),
            counted_out: ctx.metrics.compression_out.clone(),
            _slot: agreed.slot.clone(),
        }
    }

    /// A compressed message inflated (at most the limit: past it, 1009),
    /// its text checked (1007), and counted.
    fn inflated(&mut self, message: Data, text: bool) -> Result<Data, SessionEnd> {
        let Data::Binary(compressed) = message else {
            return Ok(message);
        };
        let bytes = match &mut self.inflater {
            Some(inflater) => {
                inflater.next_message();
                inflater.whole(&compressed)
            }
            None => crate::deflate::inflate(&compressed, self.max),
        };
        let bytes =
            bytes.map_err(|e| SessionEnd::Broken(Side::Client, Fault::from(Violation::from(e))))?;
        self.counted_in
            .count(compressed.len() as u64, bytes.len() as u64);
        let bytes = Bytes::from(bytes);
        if !text {
            return Ok(Data::Binary(bytes));
        }
        Utf8Bytes::try_from(bytes)
            .map(Data::Text)
            .map_err(|_| SessionEnd::Broken(Side::Client, Fault::InvalidUtf8))
    }

    /// A frame on its way out: a whole data message goes through the
    /// connection's own compressor, if this server keeps context.
    fn outgoing(&mut self, frame: Bytes) -> Bytes {
        let Some(deflater) = &mut self.deflater else {
            return frame;
        };
        let Ok(Some((header, at))) = Header::parse(&frame) else {
            return frame;
        };
        let data = matches!(header.opcode, OpCode::Text | OpCode::Binary);
        if !data || !header.fin || header.rsv != 0 {
            return frame;
        }
        match deflater.compress(&frame[at..]) {
            Some(compressed) => {
                let plain = frame.len() - at;
                self.counted_out
                    .count(compressed.len() as u64, plain as u64);
                Bytes::from(deflated_frame(header.opcode, &compressed))
            }
            None => frame,
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Member<S> {
    /// `deflate`: permessage-deflate was agreed.
    pub(crate) fn new(io: Box<S>, limits: &Limits, deflate: Option<MemberDeflate>) -> Self {
        let rules = Rules::new(
            Sender::Client,
            limits.max_frame_size,
            limits.max_message_size,
        );
        let rules = match deflate {
            Some(_) => rules.with_deflate(),
            None => rules,
        };
        Member {
            io,
            buf: ReadBuffer::default(),
            at: 0,
            frames: Inbound::unmasking(rules),
            message: Vec::new(),
            sent_close: false,
            outbox: VecDeque::new(),
            written: 0,
            deflate: deflate.map(Box::new),
        }
    }

    /// Read what the member sent next (cancel safe: nothing is lost if
    /// this is dropped while waiting). The end of its stream, or a broken
    /// one, ends the session.
    pub(crate) async fn read(&mut self) -> Result<(), SessionEnd> {
        match self.buf.read_from(&mut *self.io).await {
            Ok(0) => Err(SessionEnd::Gone(Side::Client)),
            Ok(_) => Ok(()),
            Err(e) => Err(SessionEnd::io(Side::Client, &e)),
        }
    }

    /// The next message or pong among what was read; `None` when more must
    /// be read. A ping queues its pong; a Close or a broken rule ends the
    /// session.
    pub(crate) fn event(&mut self) -> Result<Option<Event>, SessionEnd> {
        let broken = |v| SessionEnd::Broken(Side::Client, Fault::from(v));
        let Member {
            buf, at, frames, ..
        } = self;
        let data = buf.data();
        while *at < data.len() {
            let start = *at;
            match frames.next(&mut data[start..]).map_err(broken)? {
                Step::Need => break,
                Step::Data { len, payload, end } => {
                    *at += len;
                    let piece = &data[start + len - payload..start + len];
                    if !end {
                        self.message.extend_from_slice(piece);
                        continue;
                    }
                    let (text, compressed) = (frames.text(), frames.compressed());
                    let mut message = whole(&mut self.message, piece, text && !compressed)?;
                    if compressed && let Some(deflate) = &mut self.deflate {
                        message = deflate.inflated(message, text)?;
                    }
                    return Ok(Some(Event::Message(message)));
                }
                Step::Control { len, opcode } => {
                    *at += len;
                    match opcode {
                        OpCode::Ping => {
                            let pong = ControlFrame::new(OpCode::Pong, frames.control(), None);
                            self.outbox
                                .push_back(Bytes::copy_from_slice(pong.as_bytes()));
                        }
                        OpCode::Pong => return Ok(Some(Event::Pong)),
                        _ => {
                            self.sent_close = true;
                            return Err(match parse_close(frames.control()) {
                                Ok(close) => {
                                    SessionEnd::Closed(Side::Client, close.map(close_frame))
                                }
                                Err(v) => broken(v),
                            });
                        }
                    }
                }
            }
        }
        buf.consume(mem::take(at));
        Ok(None)
    }

    /// Queue a frame to go out after what is already on its way.
    pub(crate) fn queue(&mut self, frame: Bytes) {
        let frame = match &mut self.deflate {
            Some(deflate) => deflate.outgoing(frame),
            None => frame,
        };
        self.outbox.push_back(frame);
    }

    /// Take frames queued elsewhere, after what is already on its way;
    /// their payload bytes, as they go out (compressed here or not).
    pub(crate) fn take(&mut self, frames: VecDeque<Bytes>) -> u64 {
        if let Some(deflate) = self.deflate.as_mut().filter(|d| d.deflater.is_some()) {
            let before = self.outbox.len();
            let frames = frames.into_iter().map(|f| deflate.outgoing(f));
            self.outbox.extend(frames);
            return payload_bytes(self.outbox.range(before..));
        }
        let bytes = payload_bytes(&frames);
        if self.outbox.is_empty() {
            self.outbox = frames;
        } else {
            self.outbox.extend(frames);
        }
        bytes
    }

    pub(crate) fn has_output(&self) -> bool {
        !self.outbox.is_empty()
    }

    /// Write everything in the outbox, several frames per call. Cancel
    /// safe: what was written is recorded as it goes, so a frame cut short
    /// can still be finished.
    pub(crate) async fn write_out(&mut self) -> Result<(), SessionEnd> {
        while !self.outbox.is_empty() {
            // The slices live only while polled, not in the task's state.
            let written = std::future::poll_fn(|cx| {
                let mut slices = [IoSlice::new(&[]); MAX_SLICES];
                let mut count = 0;
                for (slot, frame) in slices.iter_mut().zip(&self.outbox) {
                    let skip = if count == 0 { self.written } else { 0 };
                    *slot = IoSlice::new(&frame[skip..]);
                    count += 1;
                }
                Pin::new(&mut *self.io).poll_write_vectored(cx, &slices[..count])
            })
            .await;
            match written {
                Ok(0) => return Err(SessionEnd::Broken(Side::Client, Fault::Io)),
                Err(e) => return Err(SessionEnd::io(Side::Client, &e)),
                Ok(n) => self.advance(n),
            }
        }
        // Give the memory of a large batch back.
        if self.outbox.capacity() > MAX_SLICES {
            self.outbox = VecDeque::new();
        }
        Ok(())
    }

    fn advance(&mut self, mut n: usize) {
        while let Some(front) = self.outbox.front() {
            let left = front.len() - self.written;
            if n < left {
                self.written += n;
                return;
            }
            n -= left;
            self.written = 0;
            self.outbox.pop_front();
        }
    }

    pub(crate) async fn flush(&mut self) -> Result<(), SessionEnd> {
        self.io
            .flush()
            .await
            .map_err(|e| SessionEnd::io(Side::Client, &e))
    }

    /// The member's part of the end, within `limit`: finish a frame cut
    /// short, then send our Close (or answer theirs with their own code);
    /// when we spoke first, wait for theirs; then close TLS and TCP.
    pub(crate) async fn finish(&mut self, end: &SessionEnd, limit: std::time::Duration) {
        let _ = timeout(limit, async {
            if let Some((frame, wait)) = close_to_send(end.plan(Side::Client), end, None) {
                // Only the frame already begun goes before the Close.
                self.outbox.truncate(usize::from(self.written > 0));
                self.outbox
                    .push_back(Bytes::copy_from_slice(frame.as_bytes()));
                let sent = match self.write_out().await {
                    Ok(()) => self.flush().await,
                    Err(end) => Err(end),
                };
                if sent.is_ok() && wait && !self.sent_close {
                    self.await_close().await;
                }
            }
            let _ = self.io.shutdown().await;
        })
        .await;
    }

    /// Read (and drop) what the member still sends until its Close, the end
    /// of its stream, or a frame that breaks the rules.
    async fn await_close(&mut self) {
        loop {
            loop {
                match self.event() {
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(_) => return,
                }
            }
            self.outbox.clear();
            if self.read().await.is_err() {
                return;
            }
        }
    }

    /// What the member's side holds, for the size checks.
    #[cfg(test)]
    pub(crate) fn read_capacity(&self) -> usize {
        self.buf.capacity()
    }
}

/// A message's last piece and what came before it, as one message.
fn whole(message: &mut Vec<u8>, piece: &[u8], text: bool) -> Result<Data, SessionEnd> {
    let bytes = if message.is_empty() {
        Bytes::copy_from_slice(piece)
    } else {
        message.extend_from_slice(piece);
        Bytes::from(mem::take(message))
    };
    if !text {
        return Ok(Data::Binary(bytes));
    }
    // Checked as it came; this only changes the type.
    Utf8Bytes::try_from(bytes)
        .map(Data::Text)
        .map_err(|_| SessionEnd::Broken(Side::Client, Fault::InvalidUtf8))
}

/// The payload bytes of whole frames as queued (for the byte counts).
fn payload_bytes<'f>(frames: impl IntoIterator<Item = &'f Bytes>) -> u64 {
    frames.into_iter().map(|f| payload_len(f) as u64).sum()
}

/// The payload length of a whole frame as queued (for the byte counts).
pub(crate) fn payload_len(frame: &[u8]) -> usize {
    match frame.get(1).map(|b| b & 0x7F) {
        Some(126) => frame.len().saturating_sub(4),
        Some(127) => frame.len().saturating_sub(10),
        Some(_) => frame.len().saturating_sub(2),
        None => 0,
    }
}

#[cfg(test)]
#[path = "member_tests.rs"]
mod tests;
