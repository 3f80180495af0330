//! Compressing and inflating messages: with the thread's pooled codecs,
//! reset per message (no context kept), or with a connection's own, kept
//! from message to message (context takeover).

use std::cell::RefCell;
use std::collections::VecDeque;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use crate::config::Deflate;
use crate::frame::{OpCode, Violation, deflated_frame, server_frame};

/// What a sender appends to a flushed block and strips before sending
/// (RFC 7692 §7.2.1); the receiver puts it back.
pub(super) const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];
/// Output grows in steps of this while compressing or inflating.
const STEP: usize = 16 << 10;
/// Most decompressors a thread keeps for the next message.
const POOLED: usize = 8;

thread_local! {
    /// One compressor per level in use on this thread.
    static COMPRESS: RefCell<Vec<(u32, Compress)>> = const { RefCell::new(Vec::new()) };
    /// Decompressors between messages (each holds its 32 KiB window).
    static INFLATERS: RefCell<Vec<Decompress>> = const { RefCell::new(Vec::new()) };
}

/// `payload` compressed as one message (no context kept), the trailing
/// empty block stripped.
pub(crate) fn compress(payload: &[u8], level: u32) -> Vec<u8> {
    let level = level.min(9);
    COMPRESS.with(|cell| {
        let mut pool = cell.borrow_mut();
        let at = match pool.iter().position(|(l, _)| *l == level) {
            Some(at) => at,
            None => {
                pool.push((level, Compress::new(Compression::new(level), false)));
                pool.len() - 1
            }
        };
        let c = &mut pool[at].1;
        c.reset();
        compress_with(c, payload)
    })
}

/// `payload` through `c`, ended with a sync flush whose empty block is
/// stripped.
fn compress_with(c: &mut Compress, payload: &[u8]) -> Vec<u8> {
    // Room for the worst case (stored blocks, 5 bytes per 16 KiB, the
    // flush marker) in one call: a flush cut short by a full buffer is not
    // always resumed.
    let mut out = Vec::with_capacity(payload.len() + payload.len() / 8 + 128);
    let mut input = payload;
    loop {
        let before = c.total_in();
        if c.compress_vec(input, &mut out, FlushCompress::Sync)
            .is_err()
        {
            break;
        }
        input = &input[(c.total_in() - before) as usize..];
        // All taken, and the flush fitted: done.
        if input.is_empty() && out.len() < out.capacity() {
            break;
        }
        out.reserve(STEP.max(input.len()));
    }
    if out.ends_with(&TAIL) {
        out.truncate(out.len() - TAIL.len());
    }
    out
}

/// A whole server frame of a message: compressed (RSV1) with `compress`
/// when it is at least `min_size` bytes and shrinks, as it is otherwise.
pub(crate) fn frame(opcode: OpCode, payload: &[u8], compress: Option<Deflate>) -> Vec<u8> {
    if let Some(d) = compress
        && payload.len() >= d.min_size
    {
        let compressed = self::compress(payload, d.level);
        if compressed.len() < payload.len() {
            return deflated_frame(opcode, &compressed);
        }
    }
    server_frame(opcode, payload)
}

/// A connection's own compressor, when this server keeps its context:
/// each message it compresses may refer back to the ones before, so every
/// message it takes is sent compressed (the peer's window must hold the
/// same bytes), shorter or not.
pub(crate) struct Deflater {
    c: Compress,
    /// Messages shorter than this are sent as they are (not through `c`).
    min_size: usize,
}

impl Deflater {
    pub(crate) fn new(config: Deflate) -> Self {
        Deflater {
            c: Compress::new(Compression::new(config.level.min(9)), false),
            min_size: config.min_size,
        }
    }

    /// `payload` compressed after the messages before it, if it is at
    /// least the minimum size.
    pub(crate) fn compress(&mut self, payload: &[u8]) -> Option<Vec<u8>> {
        (payload.len() >= self.min_size).then(|| compress_with(&mut self.c, payload))
    }
}

/// Why a compressed message could not be taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Inflate {
    /// It inflates past the message limit (stopped there: 1009).
    TooBig,
    /// Not a deflate stream (1007).
    Corrupt,
}

/// The close code each calls for: 1009 and 1007.
impl From<Inflate> for Violation {
    fn from(e: Inflate) -> Violation {
        match e {
            Inflate::TooBig => Violation::TooBig,
            Inflate::Corrupt => Violation::InvalidUtf8,
        }
    }
}

/// Compressed messages inflated piece by piece as their frames arrive.
/// Without context (`Inflater::new`), one message: the decompressor is the
/// thread's for as long as the message lasts, then goes back to the pool
/// of whichever thread ends it. With context, a connection's for its
/// whole life. Past `max` bytes of one message's output it
/// stops.
pub(crate) struct Inflater {
    /// Always there until dropped.
    d: Option<Decompress>,
    max: usize,
    /// Bytes of the flush marker fed after the message's last piece.
    tail: usize,
    /// A final block ended the stream: what follows in the message is
    /// ignored, and the next starts a new stream.
    ended: bool,
    /// The decompressor's totals when this message began.
    base: (u64, u64),
    /// For a peer that keeps its context: the last [`WINDOW`] bytes
    /// inflated, to carry the window over a stream ended by a final block
    /// (RFC 7692 §7.2.3.4 allows one; the next message may still refer
    /// back).
    history: Option<VecDeque<u8>>,
}

/// The largest window a deflate stream may refer back into.
const WINDOW: usize = 32 << 10;

impl Inflater {
    /// A pooled decompressor, for one message.
    pub(crate) fn new(max: usize) -> Self {
        let d = INFLATERS.with(|pool| pool.borrow_mut().pop());
        let mut d = d.unwrap_or_else(|| Decompress::new(false));
        d.reset(false);
        Inflater {
            d: Some(d),
            max,
            tail: 0,
            ended: false,
            base: (0, 0),
            history: None,
        }
    }

    /// For every message of a peer that keeps its context, each after
    /// [`Inflater::next_message`].
    pub(crate) fn kept(max: usize) -> Self {
        let mut inflater = Inflater::new(max);
        inflater.history = Some(VecDeque::with_capacity(WINDOW));
        inflater
    }

    /// The next message begins: it builds on the window of those before,
    /// unless the last ended its stream with a final block.
    pub(crate) fn next_message(&mut self) {
        if let Some(d) = self.d.as_mut() {
            if self.ended {
                d.reset(false);
                if let Some(history) = self.history.as_mut() {
                    restore(d, history.make_contiguous());
                }
            }
            self.base = (d.total_in(), d.total_out());
        }
        self.tail = 0;
        self.ended = false;
    }

    /// This message's compressed bytes fed so far, and what they inflated to.
    pub(crate) fn totals(&self) -> (u64, u64) {
        let Some(d) = self.d.as_ref() else {
            return (0, 0);
        };
        let fed = d.total_in() - self.base.0;
        (
            fed.saturating_sub(self.tail as u64),
            d.total_out() - self.base.1,
        )
    }

    /// Inflate what `input` holds (advancing it), appending to `out` until
    /// it holds about `limit` bytes. `last`: the message ends with this
    /// input (the flush marker the sender stripped is put back). `Ok(true)`
    /// when everything fed so far is inflated into `out`; `Ok(false)`
    /// when `out` is full: take from it, and call again.
    pub(crate) fn feed(
        &mut self,
        input: &mut &[u8],
        last: bool,
        out: &mut Vec<u8>,
        limit: usize,
    ) -> Result<bool, Inflate> {
        let Some(d) = self.d.as_mut() else {
            return Err(Inflate::Corrupt);
        };
        loop {
            if self.ended {
                *input = &[];
                return Ok(true);
            }
            if out.len() >= limit {
                return Ok(false);
            }
            out.reserve_exact(limit - out.len());
            let from_input = !input.is_empty() || !last;
            let src: &[u8] = if from_input {
                input
            } else {
                &TAIL[self.tail..]
            };
            let (in_before, out_before) = (d.total_in(), out.len());
            let status = d
                .decompress_vec(src, out, FlushDecompress::None)
                .map_err(|_| Inflate::Corrupt)?;
            let used = (d.total_in() - in_before) as usize;
            match from_input {
                true => *input = &input[used..],
                false => self.tail += used,
            }
            if d.total_out() - self.base.1 > self.max as u64 {
                return Err(Inflate::TooBig);
            }
            if let Some(history) = self.history.as_mut() {
                let new = &out[out_before..];
                let new = &new[new.len().saturating_sub(WINDOW)..];
                let excess = (history.len() + new.len()).saturating_sub(WINDOW);
                history.drain(..excess);
                history.extend(new);
            }
            if status == Status::StreamEnd {
                self.ended = true;
                continue;
            }
            let room = out.len() < out.capacity();
            let fed = input.is_empty() && (!last || self.tail == TAIL.len());
            if room && fed {
                return Ok(true);
            }
            if room && used == 0 && out.len() == out_before {
                return Err(Inflate::Corrupt);
            }
        }
    }

    /// A whole compressed message, inflated.
    pub(crate) fn whole(&mut self, compressed: &[u8]) -> Result<Vec<u8>, Inflate> {
        let mut out = Vec::with_capacity(compressed.len().saturating_mul(2).clamp(64, STEP));
        let mut input = compressed;
        loop {
            let limit = out.len() + STEP;
            if self.feed(&mut input, true, &mut out, limit)? {
                return Ok(out);
            }
        }
    }
}

/// Give a fresh decompressor `window` as what came before: one stored
/// block holding it, its output thrown away.
fn restore(d: &mut Decompress, window: &[u8]) {
    let len = window.len().min(WINDOW) as u16;
    let mut block = Vec::with_capacity(5 + usize::from(len));
    // BFINAL 0, BTYPE 00 (stored), then LEN and its complement.
    block.push(0);
    block.extend_from_slice(&len.to_le_bytes());
    block.extend_from_slice(&(!len).to_le_bytes());
    block.extend_from_slice(&window[window.len() - usize::from(len)..]);
    let mut sink = Vec::with_capacity(usize::from(len) + 64);
    let _ = d.decompress_vec(&block, &mut sink, FlushDecompress::None);
}

impl Drop for Inflater {
    fn drop(&mut self) {
        if let Some(d) = self.d.take() {
            // Not at all while the thread is ending.
            let _ = INFLATERS.try_with(|pool| {
                let mut pool = pool.borrow_mut();
                if pool.len() < POOLED {
                    pool.push(d);
                }
            });
        }
    }
}

/// A compressed message inflated whole, without context; past `max`
/// bytes (checked every 16 KiB of output) it stops.
pub(crate) fn inflate(compressed: &[u8], max: usize) -> Result<Vec<u8>, Inflate> {
    Inflater::new(max).whole(compressed)
}
