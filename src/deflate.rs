//! permessage-deflate (RFC 7692) without context takeover: the offer a
//! client makes, the answer, and each message compressed or inflated on
//! its own.
//!
//! Without context takeover in either direction, no compressor or
//! decompressor state outlives a message: the state is per thread, reset
//! for each message and shared by every connection that thread serves, so
//! an idle compressed connection costs no more than an uncompressed one,
//! and a message compressed once (a hub broadcast) is the same bytes for
//! every recipient. Inflating stops as soon as the output passes the
//! message limit: a deflate bomb costs at most the limit.

use std::cell::RefCell;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use crate::config::Deflate;
use crate::frame::{OpCode, Violation, deflated_frame, server_frame};

/// The extension's token in `Sec-WebSocket-Extensions`.
const NAME: &str = "permessage-deflate";
/// What a sender appends to a flushed block and strips before sending
/// (RFC 7692 §7.2.1); the receiver puts it back.
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];
/// Output grows in steps of this while compressing or inflating.
const STEP: usize = 16 << 10;

/// The answer to a client's offers, when one is acceptable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Agreed {
    /// The `Sec-WebSocket-Extensions` value of the 101.
    pub(crate) response: String,
    /// How this server compresses to the client: `None` when the client
    /// limited this server's window below 15 bits. (Every message is
    /// compressed once, with a full window, for all its recipients; such a
    /// client gets them uncompressed, which the extension allows.)
    pub(crate) compress: Option<Deflate>,
    /// The limit the client set on this server's window, if any: passed
    /// on to an upstream member, so what it compresses suits the client.
    pub(crate) server_window: Option<u8>,
}

/// Choose the first acceptable `permessage-deflate` offer among the
/// `Sec-WebSocket-Extensions` values. An offer is declined (RFC 7692 §5)
/// if it has an unknown or repeated parameter or an invalid value. Other
/// extensions are ignored.
pub(crate) fn negotiate<'h>(
    values: impl IntoIterator<Item = &'h str>,
    config: Deflate,
) -> Option<Agreed> {
    values
        .into_iter()
        .flat_map(|v| v.split(','))
        .find_map(|offer| accept(offer.trim()))
        .map(|(response, server_window)| Agreed {
            response,
            compress: server_window.is_none_or(|b| b == 15).then_some(config),
            server_window,
        })
}

/// The parameters of one `permessage-deflate; param[=value]; ...`
/// element, lowercased, each once; `None` if it is another extension or
/// names a parameter twice.
fn params(element: &str) -> Option<Vec<(String, Option<&str>)>> {
    let mut parts = element.split(';').map(str::trim);
    if !parts.next()?.eq_ignore_ascii_case(NAME) {
        return None;
    }
    let mut params: Vec<(String, Option<&str>)> = Vec::new();
    for param in parts {
        let (name, value) = match param.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
            None => (param, None),
        };
        let name = name.to_ascii_lowercase();
        if params.iter().any(|(n, _)| *n == name) {
            return None;
        }
        params.push((name, value));
    }
    Some(params)
}

/// A window size parameter's value: 8 to 15.
fn bits(value: Option<&str>) -> Option<u8> {
    value
        .and_then(|v| v.parse::<u8>().ok())
        .filter(|b| (8..=15).contains(b))
}

/// One offer: the response, and the limit the client put on this
/// server's window.
fn accept(offer: &str) -> Option<(String, Option<u8>)> {
    let mut client_bits = false;
    let mut server_bits = None;
    for (name, value) in params(offer)? {
        match (name.as_str(), value) {
            ("server_no_context_takeover" | "client_no_context_takeover", None) => {}
            ("server_max_window_bits", v) => server_bits = Some(bits(v)?),
            ("client_max_window_bits", None) => client_bits = true,
            ("client_max_window_bits", v) => {
                bits(v)?;
            }
            _ => return None,
        }
    }
    // Neither side keeps context: this server says so for itself, and
    // asks it of the client (§7.1.1.2 lets the server add it unasked).
    let mut response = format!("{NAME}; server_no_context_takeover; client_no_context_takeover");
    if let Some(bits) = server_bits {
        response.push_str(&format!("; server_max_window_bits={bits}"));
    }
    if client_bits {
        // The client may then use any window; this server inflates with
        // a full one, which reads them all.
        response.push_str("; client_max_window_bits=15");
    }
    Some((response, server_bits))
}

/// What wsgate offers an upstream member on a route with compression: no
/// context kept either way, as with clients, and the client's limit on
/// the server's window passed on, so that what the member compresses can
/// go to the client untouched. No `client_max_window_bits`: the member may
/// not shrink the window of what the client compressed.
pub(crate) fn upstream_offer(client: Option<&Agreed>) -> String {
    let mut offer = format!("{NAME}; server_no_context_takeover; client_no_context_takeover");
    if let Some(bits) = client.and_then(|a| a.server_window) {
        offer.push_str(&format!("; server_max_window_bits={bits}"));
    }
    offer
}

/// Did the member agree to [`upstream_offer`]'s `offer`? Its
/// `Sec-WebSocket-Extensions` values: none is a decline; one
/// `permessage-deflate` within the offer is an agreement; anything else
/// breaks the handshake (RFC 6455 §4.1, RFC 7692 §7.1).
pub(crate) fn upstream_agreed<'h>(
    values: impl IntoIterator<Item = &'h str>,
    offer: &str,
) -> Result<bool, &'static str> {
    let mut elements = values.into_iter().flat_map(|v| v.split(','));
    let Some(element) = elements.next() else {
        return Ok(false);
    };
    if elements.next().is_some() {
        return Err("more than the one extension offered");
    }
    let answer = params(element.trim()).ok_or("an extension nobody asked for")?;
    let asked = params(offer).and_then(|offer| {
        offer
            .into_iter()
            .find(|(n, _)| n == "server_max_window_bits")
            .and_then(|(_, v)| bits(v))
    });
    let mut context_dropped = false;
    for (name, value) in answer {
        match (name.as_str(), value) {
            ("server_no_context_takeover", None) => context_dropped = true,
            ("client_no_context_takeover", None) => {}
            ("server_max_window_bits", v) => match bits(v) {
                Some(b) if asked.is_none_or(|a| b <= a) => {}
                _ => return Err("a server window outside the offer"),
            },
            _ => return Err("a deflate parameter not offered"),
        }
    }
    match context_dropped {
        true => Ok(true),
        false => Err("deflate with context takeover, which was not offered"),
    }
}

thread_local! {
    /// One compressor per level in use on this thread.
    static COMPRESS: RefCell<Vec<(u32, Compress)>> = const { RefCell::new(Vec::new()) };
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
        // Room for the worst case (stored blocks, 5 bytes per 16 KiB, the
        // flush marker) in one call: a flush cut short by a full buffer is
        // not always resumed.
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
    })
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

/// Most decompressors a thread keeps for the next message.
const POOLED: usize = 8;

thread_local! {
    /// Decompressors between messages (each holds its 32 KiB window).
    static INFLATERS: RefCell<Vec<Decompress>> = const { RefCell::new(Vec::new()) };
}

/// One compressed message being inflated, piece by piece as its frames
/// arrive: the decompressor is the thread's for as long as the message
/// lasts, then goes back to the pool of whichever thread ends it. Past
/// `max` bytes of output it stops.
pub(crate) struct Inflater {
    /// Always there until dropped.
    d: Option<Decompress>,
    max: usize,
    /// Bytes of the flush marker fed after the message's last piece.
    tail: usize,
    /// A final block ended the stream: what follows is ignored.
    ended: bool,
}

impl Inflater {
    pub(crate) fn new(max: usize) -> Self {
        let d = INFLATERS.with(|pool| pool.borrow_mut().pop());
        let mut d = d.unwrap_or_else(|| Decompress::new(false));
        d.reset(false);
        Inflater {
            d: Some(d),
            max,
            tail: 0,
            ended: false,
        }
    }

    /// The compressed bytes fed so far, and what they inflated to.
    pub(crate) fn totals(&self) -> (u64, u64) {
        let d = self.d.as_ref();
        let fed = d.map_or(0, Decompress::total_in);
        (fed - self.tail as u64, d.map_or(0, Decompress::total_out))
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
            if d.total_out() > self.max as u64 {
                return Err(Inflate::TooBig);
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

/// A compressed message inflated whole; past `max` bytes (checked every
/// 16 KiB of output) it stops.
pub(crate) fn inflate(compressed: &[u8], max: usize) -> Result<Vec<u8>, Inflate> {
    let mut inflater = Inflater::new(max);
    let mut out = Vec::with_capacity(compressed.len().saturating_mul(2).clamp(64, STEP));
    let mut input = compressed;
    loop {
        let limit = out.len() + STEP;
        if inflater.feed(&mut input, true, &mut out, limit)? {
            return Ok(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offers_are_accepted_declined_or_chosen_among() {
        let config = Deflate {
            min_size: 0,
            level: 1,
        };
        let answer = |v: &str| negotiate([v], config).map(|a| a.response);
        let plain = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";
        assert_eq!(answer("permessage-deflate").as_deref(), Some(plain));
        // What browsers send.
        assert_eq!(
            answer("permessage-deflate; client_max_window_bits").as_deref(),
            Some(&*format!("{plain}; client_max_window_bits=15"))
        );
        assert_eq!(
            answer("permessage-deflate; client_max_window_bits=10; server_no_context_takeover")
                .as_deref(),
            Some(plain)
        );
        // A smaller window for this server: agreed, and nothing compressed.
        let small = negotiate(["permessage-deflate; server_max_window_bits=10"], config);
        assert_eq!(
            small.as_ref().map(|a| a.response.as_str()),
            Some(&*format!("{plain}; server_max_window_bits=10"))
        );
        assert_eq!(small.and_then(|a| a.compress), None);
        let full = negotiate(["permessage-deflate; server_max_window_bits=15"], config);
        assert_eq!(full.and_then(|a| a.compress), Some(config));
        // Declined: unknown, repeated, bad values.
        for bad in [
            "permessage-deflate; foo",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; client_max_window_bits=16",
            "permessage-deflate; client_max_window_bits=x",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=7",
            "x-webkit-deflate-frame",
        ] {
            assert_eq!(answer(bad), None, "{bad}");
        }
        // The first acceptable of several offers, across header values.
        let chosen = negotiate(
            ["permessage-deflate; foo, permessage-deflate; client_max_window_bits"],
            config,
        );
        assert!(chosen.is_some_and(|a| a.response.ends_with("client_max_window_bits=15")));
        let chosen = negotiate(
            ["foo", "permessage-deflate; client_no_context_takeover"],
            config,
        );
        assert_eq!(chosen.map(|a| a.response).as_deref(), Some(plain));
    }

    #[test]
    fn a_message_survives_the_trip_and_compresses() {
        let text = br#"{"type":"message","channel":"prices","data":{"px":101.25}}"#.repeat(20);
        let small = compress(&text, 1);
        assert!(
            small.len() < text.len() / 4,
            "{} of {}",
            small.len(),
            text.len()
        );
        assert!(!small.ends_with(&TAIL));
        assert_eq!(inflate(&small, 1 << 20).unwrap(), text);
        // The same bytes every time: one compressed frame serves every recipient.
        assert_eq!(compress(&text, 1), small);
        assert_eq!(inflate(&compress(b"", 1), 10).unwrap(), b"");
    }

    #[test]
    fn poorly_compressible_messages_survive_whole() {
        // 5 bits of noise per byte: compressed to about 70 %, so the output
        // outgrows a half-size buffer; at these lengths a flush cut short by
        // it once went missing (the message came back shorter).
        let mut x: u32 = 12345;
        let noise: Vec<u8> = (0..200_000)
            .map(|_| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                (x >> 16) as u8 & 0x1f
            })
            .collect();
        for len in [100, 1000, 16_384, 58_971, 60_970, 65_536, 116_942, 200_000] {
            let payload = &noise[..len];
            for level in [1, 6, 9] {
                let compressed = compress(payload, level);
                assert_eq!(
                    inflate(&compressed, 1 << 20).unwrap(),
                    payload,
                    "{len} at {level}"
                );
            }
        }
    }

    #[test]
    fn a_bomb_stops_at_the_limit_and_garbage_is_refused() {
        let zeros = vec![0u8; 8 << 20];
        let bomb = compress(&zeros, 9);
        assert!(bomb.len() < 64 << 10);
        assert_eq!(inflate(&bomb, 1 << 20), Err(Inflate::TooBig));
        assert_eq!(inflate(&bomb, 8 << 20).map(|v| v.len()), Ok(8 << 20));
        assert_eq!(
            inflate(&[0xff, 0xff, 0xff, 0x00], 1 << 20),
            Err(Inflate::Corrupt)
        );
    }
}
