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

/// The extension's token in `Sec-WebSocket-Extensions`.
const NAME: &str = "permessage-deflate";
/// What a sender appends to a flushed block and strips before sending
/// (RFC 7692 §7.2.1); the receiver puts it back.
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];
/// Output grows in steps of this while compressing or inflating.
const STEP: usize = 16 << 10;

/// The answer to a client's offers: the response header value, when one
/// offer is acceptable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Agreed {
    pub(crate) response: String,
}

/// Choose the first acceptable `permessage-deflate` offer among the
/// `Sec-WebSocket-Extensions` values. An offer is declined (RFC 7692 §5)
/// if it has an unknown or repeated parameter or an invalid value, or
/// limits this server's window below 15 bits (it always compresses with a
/// full window, once per message, so that one compressed message serves
/// every recipient). Other extensions are ignored.
pub(crate) fn negotiate<'h>(values: impl IntoIterator<Item = &'h str>) -> Option<Agreed> {
    values
        .into_iter()
        .flat_map(|v| v.split(','))
        .find_map(|offer| accept(offer.trim()))
}

/// One offer: `permessage-deflate; param[=value]; ...`.
fn accept(offer: &str) -> Option<Agreed> {
    let mut parts = offer.split(';').map(str::trim);
    if !parts.next()?.eq_ignore_ascii_case(NAME) {
        return None;
    }
    let mut seen: Vec<String> = Vec::new();
    let mut client_bits = false;
    for param in parts {
        let (name, value) = match param.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
            None => (param, None),
        };
        let name = name.to_ascii_lowercase();
        if seen.contains(&name) {
            return None;
        }
        let bits = |v: Option<&str>| {
            v.and_then(|v| v.parse::<u8>().ok())
                .filter(|b| (8..=15).contains(b))
        };
        match (name.as_str(), value) {
            ("server_no_context_takeover" | "client_no_context_takeover", None) => {}
            // Any window the client allows this server but the full one
            // would mean compressing per recipient: declined.
            ("server_max_window_bits", v) => {
                if bits(v) != Some(15) {
                    return None;
                }
            }
            ("client_max_window_bits", None) => client_bits = true,
            ("client_max_window_bits", v) => {
                bits(v)?;
            }
            _ => return None,
        }
        seen.push(name);
    }
    // Neither side keeps context: this server says so for itself, and
    // asks it of the client (§7.1.1.2 lets the server add it unasked).
    let mut response = format!("{NAME}; server_no_context_takeover; client_no_context_takeover");
    if client_bits {
        // The client may then use any window; this server inflates with
        // a full one, which reads them all.
        response.push_str("; client_max_window_bits=15");
    }
    Some(Agreed { response })
}

thread_local! {
    /// One compressor per level in use on this thread.
    static COMPRESS: RefCell<Vec<(u32, Compress)>> = const { RefCell::new(Vec::new()) };
    static INFLATE: RefCell<Option<Decompress>> = const { RefCell::new(None) };
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
        let mut out = Vec::with_capacity(payload.len() / 2 + 64);
        let mut input = payload;
        loop {
            if out.capacity() - out.len() < 64 {
                out.reserve(STEP);
            }
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
        }
        if out.ends_with(&TAIL) {
            out.truncate(out.len() - TAIL.len());
        }
        out
    })
}

/// Why a compressed message could not be taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Inflate {
    /// It inflates past the message limit (stopped there: 1009).
    TooBig,
    /// Not a deflate stream (1007).
    Corrupt,
}

/// A compressed message inflated; past `max` bytes (checked every 16 KiB
/// of output) it stops.
pub(crate) fn inflate(compressed: &[u8], max: usize) -> Result<Vec<u8>, Inflate> {
    INFLATE.with(|cell| {
        let mut cell = cell.borrow_mut();
        let d = cell.get_or_insert_with(|| Decompress::new(false));
        d.reset(false);
        let mut out = Vec::with_capacity(compressed.len().saturating_mul(2).clamp(64, STEP));
        for part in [compressed, &TAIL[..]] {
            let mut input = part;
            loop {
                if out.len() > max {
                    return Err(Inflate::TooBig);
                }
                if out.len() == out.capacity() {
                    out.reserve(STEP);
                }
                let (in_before, out_before) = (d.total_in(), out.len());
                let status = d
                    .decompress_vec(input, &mut out, FlushDecompress::None)
                    .map_err(|_| Inflate::Corrupt)?;
                input = &input[(d.total_in() - in_before) as usize..];
                let room = out.len() < out.capacity();
                match status {
                    // A final block: nothing may follow in this message.
                    Status::StreamEnd => break,
                    _ if input.is_empty() && room => break,
                    _ if room && out.len() == out_before && d.total_in() == in_before => {
                        return Err(Inflate::Corrupt);
                    }
                    _ => {}
                }
            }
        }
        if out.len() > max {
            return Err(Inflate::TooBig);
        }
        Ok(out)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offers_are_accepted_declined_or_chosen_among() {
        let answer = |v: &str| negotiate([v]).map(|a| a.response);
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
        // Declined: unknown, repeated, bad values, a smaller server window.
        for bad in [
            "permessage-deflate; foo",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; client_max_window_bits=16",
            "permessage-deflate; client_max_window_bits=x",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=10",
            "x-webkit-deflate-frame",
        ] {
            assert_eq!(answer(bad), None, "{bad}");
        }
        // The first acceptable of several offers, across header values.
        let chosen = negotiate([
            "permessage-deflate; server_max_window_bits=9, permessage-deflate; client_max_window_bits",
        ]);
        assert!(chosen.is_some_and(|a| a.response.ends_with("client_max_window_bits=15")));
        let chosen = negotiate(["foo", "permessage-deflate; server_max_window_bits=15"]);
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
