//! What the relay does to one direction's data messages, by what each side
//! agreed about permessage-deflate (RFC 7692):
//!
//! - both sides, with parameters that suit each other, or neither: frames
//!   go on as they came ([`Codec::Pass`]; compressed ones keep RSV1, and
//!   the gateway neither inflates nor compresses);
//! - only the sender: its compressed messages are inflated, piece by piece
//!   as their frames arrive, and go on as plain frames, one per message up
//!   to 64 KiB ([`Codec::Inflate`]); the limit and the UTF-8 check apply to
//!   what is inflated; its messages sent plain pass as they came;
//! - only the receiver (a client, whose upstream sends plain): a message
//!   that comes as one frame of at least the route's minimum size, and at
//!   most one read buffer, is compressed on its way ([`Codec::Deflate`]);
//!   others go on plain, which the extension allows.
//!
//! Without context takeover no codec keeps anything between messages: a
//! decompressor is taken from the thread's pool for one message and given
//! back at its end. With it, the session keeps its own (in the context
//! budget).

use crate::config::Deflate;
use crate::deflate::{self, Deflater, Inflater};
use crate::frame::{self, Header, Inbound, MAX_HEADER, OpCode, Utf8Stream, Violation, apply_mask};

/// Inflated output goes in frames of at most this much: most messages in
/// one.
const PIECE: usize = 64 << 10;

/// Boxed: a session that passes frames (most) holds a tag.
pub(super) enum Codec {
    Pass,
    Inflate(Box<Inflating>),
    Deflate(Box<Deflating>),
}

impl Codec {
    /// Does this direction keep compression context from message to
    /// message?
    pub(super) fn keeps_context(&self) -> bool {
        match self {
            Codec::Pass => false,
            Codec::Deflate(deflating) => deflating.context.is_some(),
            Codec::Inflate(inflating) => inflating.kept,
        }
    }

    /// Is what goes on written over what was read?
    pub(super) fn in_place(&self) -> bool {
        match self {
            Codec::Pass => true,
            Codec::Deflate(deflating) => deflating.in_place(),
            Codec::Inflate(_) => false,
        }
    }
}

/// Compressing whole messages toward a client that agreed the extension.
pub(super) struct Deflating {
    config: Deflate,
    /// This server keeps its context with the client: the session's own
    /// compressor (what it compresses may grow, and must be sent).
    context: Option<Deflater>,
    /// The largest frame waited for, whole, to be compressed.
    wait_max: usize,
}

impl Deflating {
    pub(super) fn new(config: Deflate, context: bool, wait_max: usize) -> Self {
        Deflating {
            config,
            context: context.then(|| Deflater::new(config)),
            wait_max,
        }
    }

    /// Are frames written over what was read? Without context a compressed
    /// frame is never longer than the one it replaces; with context it may
    /// be (it must go compressed once compressed).
    pub(super) fn in_place(&self) -> bool {
        self.context.is_none()
    }

    /// If `data` starts a message that should be compressed and has not
    /// all arrived: how many bytes its frame needs.
    pub(super) fn wait_for(&self, data: &[u8], frames: &Inbound) -> Option<usize> {
        if frames.in_message() {
            return None;
        }
        let (header, at) = Header::parse(data).ok()??;
        let len = usize::try_from(header.len).ok()?;
        let whole = at + len;
        let data_frame = matches!(header.opcode, OpCode::Text | OpCode::Binary);
        let candidate = data_frame
            && header.fin
            && header.rsv == 0
            && len >= self.config.min_size
            && len <= self.wait_max;
        (candidate && data.len() < whole).then_some(whole)
    }

    /// `payload`, a whole message just read in one frame, compressed into
    /// a frame of its own if it is at least the minimum size (and, without
    /// context, if that makes it shorter: then the frame is never longer
    /// than the one it came in, an unmasked one, and can be written over
    /// it).
    pub(super) fn compress(&mut self, text: bool, payload: &[u8]) -> Option<Vec<u8>> {
        let opcode = if text { OpCode::Text } else { OpCode::Binary };
        if let Some(deflater) = &mut self.context {
            let compressed = deflater.compress(payload)?;
            return Some(frame::deflated_frame(opcode, &compressed));
        }
        if payload.len() < self.config.min_size {
            return None;
        }
        let compressed = deflate::compress(payload, self.config.level);
        (compressed.len() < payload.len()).then(|| frame::deflated_frame(opcode, &compressed))
    }
}

/// Inflating what one side compressed, for a side that did not agree. Its
/// messages sent plain are not this codec's: they pass as they came.
pub(super) struct Inflating {
    /// Mask what goes on (toward an upstream).
    mask: bool,
    /// The message limit, on inflated bytes.
    max: usize,
    /// The sender keeps its context: one decompressor for all its
    /// messages, here between them.
    kept: bool,
    context: Option<Inflater>,
    /// The compressed message in progress.
    message: Option<Message>,
    /// Inflated bytes not yet framed: a message goes on as one frame up to
    /// [`PIECE`], in frames of that size beyond. Held only while a
    /// message is in progress.
    plain: Vec<u8>,
    /// The payload bytes of the compressed messages ended since the last
    /// [`Inflating::take_counts`], and what they inflated to.
    counts: (u64, u64),
}

/// The compressed message in progress.
struct Message {
    text: bool,
    /// Its first frame has gone on: the next are continuations.
    started: bool,
    inflater: Inflater,
    utf8: Utf8Stream,
}

impl Inflating {
    pub(super) fn new(mask: bool, max: usize, kept: bool) -> Self {
        Inflating {
            mask,
            max,
            kept,
            context: None,
            message: None,
            plain: Vec::new(),
            counts: (0, 0),
        }
    }

    /// Compressed and inflated bytes of the messages ended since last asked.
    pub(super) fn take_counts(&mut self) -> (u64, u64) {
        std::mem::take(&mut self.counts)
    }

    /// Take the unmasked payload bytes in `input` (advancing it) of a
    /// compressed message (`text` or not); `end`: they end it. What goes
    /// on is appended to `out`, framed; returns `Ok(true)` once all of
    /// `input` is through, `Ok(false)` when `out` has grown past `limit`
    /// (write it out and call again).
    pub(super) fn feed(
        &mut self,
        text: bool,
        input: &mut &[u8],
        end: bool,
        out: &mut Vec<u8>,
        limit: usize,
    ) -> Result<bool, Violation> {
        let (max, context) = (self.max, &mut self.context);
        let message = self.message.get_or_insert_with(|| Message {
            text,
            started: false,
            inflater: match context.take() {
                Some(mut kept) => {
                    kept.next_message();
                    kept
                }
                None if self.kept => Inflater::kept(max),
                None => Inflater::new(max),
            },
            utf8: Utf8Stream::default(),
        });
        let plain = &mut self.plain;
        let mut head = Head {
            text: message.text,
            started: &mut message.started,
            mask: self.mask,
        };
        loop {
            if out.len() >= limit {
                return Ok(false);
            }
            let before = plain.len();
            let done = message.inflater.feed(input, end, plain, PIECE)?;
            if message.text {
                message.utf8.feed(&plain[before..])?;
            }
            let fin = done && end;
            if fin && message.text {
                message.utf8.finish()?;
            }
            if plain.len() >= PIECE || fin {
                head.emit(out, plain, fin);
                plain.clear();
            }
            if done {
                break;
            }
        }
        if end && let Some(message) = self.message.take() {
            let (compressed, inflated) = message.inflater.totals();
            self.counts.0 += compressed;
            self.counts.1 += inflated;
            if self.kept {
                self.context = Some(message.inflater);
            }
            // Nothing is held between messages.
            self.plain = Vec::new();
        }
        Ok(true)
    }
}

/// How the frames of the message in progress start.
struct Head<'m> {
    text: bool,
    /// Its first frame has gone on: the next are continuations.
    started: &'m mut bool,
    /// Masked (toward an upstream).
    mask: bool,
}

impl Head<'_> {
    /// The message's next frame, with `payload`, appended to `out`.
    fn emit(&mut self, out: &mut Vec<u8>, payload: &[u8], fin: bool) {
        let opcode = match (*self.started, self.text) {
            (true, _) => OpCode::Continuation,
            (false, true) => OpCode::Text,
            (false, false) => OpCode::Binary,
        };
        *self.started = true;
        let key = self.mask.then(rand::random::<[u8; 4]>);
        let header = Header {
            fin,
            rsv: 0,
            opcode,
            mask: key,
            len: payload.len() as u64,
        };
        let mut head = [0; MAX_HEADER];
        let at = header.encode(&mut head);
        out.extend_from_slice(&head[..at]);
        let start = out.len();
        out.extend_from_slice(payload);
        if let Some(key) = key {
            apply_mask(&mut out[start..], key, 0);
        }
    }
}
