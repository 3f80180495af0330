//! What the relay does to one direction's data messages, by what each side
//! agreed about permessage-deflate (RFC 7692):
//!
//! - both sides, with parameters that suit each other, or neither: frames
//!   go on as they came ([`Codec::Pass`]; compressed ones keep RSV1, and
//!   the gateway neither inflates nor compresses);
//! - only the sender: its compressed messages are inflated, piece by piece
//!   as their frames arrive, and go on as plain frames
//!   ([`Codec::Inflate`]); the limit and the UTF-8 check apply to what is
//!   inflated;
//! - only the receiver (a client, whose upstream sends plain): a message
//!   that comes as one frame of at least the route's minimum size, and at
//!   most one read buffer, is compressed on its way ([`Codec::Deflate`]);
//!   others go on plain, which the extension allows.
//!
//! No codec keeps context between messages: a decompressor is taken from
//! the thread's pool for one message and given back at its end.

use crate::config::Deflate;
use crate::deflate::{self, Deflater, Inflater};
use crate::frame::{self, Header, Inbound, MAX_HEADER, OpCode, Utf8Stream, Violation, apply_mask};

/// Inflated output is cut into frames of at most this much.
const PIECE: usize = 16 << 10;

pub(super) enum Codec {
    Pass,
    Inflate(Inflating),
    Deflate(Deflating),
}

impl Codec {
    /// Is what goes on written over what was read?
    pub(super) fn in_place(&self) -> bool {
        match self {
            Codec::Pass => true,
            Codec::Deflate(deflating) => deflating.in_place(),
            Codec::Inflate(_) => false,
        }
    }

    /// The reader a direction needs: an inflating one keeps payloads
    /// unmasked (it frames them anew); the others forward what they read.
    pub(super) fn inbound(&self, rules: frame::Rules) -> Inbound {
        match self {
            Codec::Inflate(_) => Inbound::unmasking(rules),
            Codec::Pass | Codec::Deflate(_) => Inbound::new(rules),
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

/// Inflating what one side compressed, for a side that did not agree.
pub(super) struct Inflating {
    /// Mask what goes on (toward an upstream).
    mask: bool,
    /// The message limit, on inflated bytes.
    max: usize,
    /// The sender keeps its context: one decompressor for all its
    /// messages, here between them.
    kept: bool,
    context: Option<Inflater>,
    message: Option<Message>,
    /// One frame's inflated payload, before it is framed.
    plain: Vec<u8>,
    /// The payload bytes of the compressed messages ended since the last
    /// [`Inflating::take_counts`], and what they inflated to.
    counts: (u64, u64),
}

/// The message in progress.
struct Message {
    text: bool,
    /// Its first frame has gone on: the next are continuations.
    started: bool,
    /// Set for a compressed message.
    inflater: Option<Inflater>,
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

    /// Take the payload bytes in `input` (advancing it) of the data step
    /// just read by `frames`; `end`: they end the message. What goes on is
    /// appended to `out`, framed; returns `Ok(true)` once all of `input`
    /// is through, `Ok(false)` when `out` has grown past `limit`.
    pub(super) fn feed(
        &mut self,
        frames: &Inbound,
        input: &mut &[u8],
        end: bool,
        out: &mut Vec<u8>,
        limit: usize,
    ) -> Result<bool, Violation> {
        let (max, context) = (self.max, &mut self.context);
        let message = self.message.get_or_insert_with(|| Message {
            text: frames.text(),
            started: false,
            inflater: frames.compressed().then(|| match context.take() {
                Some(mut kept) => {
                    kept.next_message();
                    kept
                }
                None => Inflater::new(max),
            }),
            utf8: Utf8Stream::default(),
        });
        let Message {
            text,
            started,
            inflater,
            utf8,
        } = message;
        let mut head = Head {
            text: *text,
            started,
            mask: self.mask,
        };
        let done = match inflater {
            // Sent plain: it goes on as it is (checked by `frames`).
            None => {
                if !input.is_empty() || end {
                    head.emit(out, input, end);
                }
                *input = &[];
                true
            }
            Some(inflater) => {
                let plain = &mut self.plain;
                let mut done = false;
                while !done && out.len() < limit {
                    plain.clear();
                    done = inflater.feed(input, end, plain, PIECE)?;
                    if *text {
                        utf8.feed(plain)?;
                    }
                    let fin = done && end;
                    if fin && *text {
                        utf8.finish()?;
                    }
                    if !plain.is_empty() || fin {
                        head.emit(out, plain, fin);
                    }
                }
                done
            }
        };
        if done && end {
            if let Some(inflater) = self.message.take().and_then(|m| m.inflater) {
                let (compressed, inflated) = inflater.totals();
                self.counts.0 += compressed;
                self.counts.1 += inflated;
                if self.kept {
                    self.context = Some(inflater);
                }
            }
            // What one large message needed is not kept.
            if self.plain.capacity() > PIECE {
                self.plain = Vec::new();
            }
        }
        Ok(done)
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
