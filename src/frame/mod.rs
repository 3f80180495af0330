//! RFC 6455 frames, without messages: the header codec, masking, and the
//! per-direction rules a frame must follow, checked from the header before
//! its payload is read.
//!
//! This is the layer the relay forwards with: it never reassembles a
//! message, so what a session holds is one header and one read buffer, not
//! the largest message a peer ever sent. Everything here is pure (no IO), so
//! each rule is tested on its own.

use std::fmt;

mod buffer;
mod inbound;
mod rules;
mod utf8;

pub use buffer::{MAX as MAX_READ, ReadBuffer};
pub use inbound::{Inbound, Step};
pub use rules::{Rules, Sender, close_code_allowed, parse_close};
pub use utf8::Utf8Stream;

/// Longest header: 2 bytes, 8 bytes of extended length, 4 bytes of mask.
pub const MAX_HEADER: usize = 14;
/// Longest control frame payload (RFC 6455 §5.5).
pub const MAX_CONTROL: usize = 125;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpCode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl OpCode {
    fn from_bits(bits: u8) -> Option<OpCode> {
        Some(match bits {
            0x0 => OpCode::Continuation,
            0x1 => OpCode::Text,
            0x2 => OpCode::Binary,
            0x8 => OpCode::Close,
            0x9 => OpCode::Ping,
            0xA => OpCode::Pong,
            _ => return None,
        })
    }

    fn bits(self) -> u8 {
        match self {
            OpCode::Continuation => 0x0,
            OpCode::Text => 0x1,
            OpCode::Binary => 0x2,
            OpCode::Close => 0x8,
            OpCode::Ping => 0x9,
            OpCode::Pong => 0xA,
        }
    }

    pub fn is_control(self) -> bool {
        matches!(self, OpCode::Close | OpCode::Ping | OpCode::Pong)
    }
}

/// One frame header as on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub fin: bool,
    /// RSV1-3 as the top three bits' values (`0b100` is RSV1).
    pub rsv: u8,
    pub opcode: OpCode,
    pub mask: Option<[u8; 4]>,
    pub len: u64,
}

/// Why a frame, or the message it belongs to, is refused. `close/` maps
/// each to the close code RFC 6455 prescribes (1002, 1007 or 1009).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Violation {
    /// An RSV bit set without an extension that defines it.
    ReservedBits,
    /// Opcode 3-7 or B-F.
    ReservedOpcode,
    /// A 64-bit length with its most significant bit set.
    LengthOverflow,
    /// A client frame without a mask, or a server frame with one.
    Masking,
    /// A control frame with FIN clear or over 125 bytes.
    BadControl,
    /// A continuation with no message in progress.
    UnexpectedContinuation,
    /// A new text or binary frame while a message is in progress.
    ExpectedContinuation,
    /// A Close payload of one byte, or with a code that may not be sent.
    BadClose,
    /// Text (or a Close reason) that is not UTF-8.
    InvalidUtf8,
    /// A frame or message over the configured limit.
    TooBig,
}

impl Violation {
    /// Short reason, for the log.
    pub fn reason(self) -> &'static str {
        match self {
            Violation::ReservedBits => "reserved bits set",
            Violation::ReservedOpcode => "reserved opcode",
            Violation::LengthOverflow => "frame length too large",
            Violation::Masking => "wrong masking",
            Violation::BadControl => "fragmented or oversized control frame",
            Violation::UnexpectedContinuation => "continuation without a message",
            Violation::ExpectedContinuation => "new message inside a fragmented one",
            Violation::BadClose => "invalid close frame",
            Violation::InvalidUtf8 => "invalid UTF-8",
            Violation::TooBig => "message too big",
        }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason())
    }
}

impl Header {
    /// Parse a header from the start of `buf`: `Ok(None)` when more bytes
    /// are needed, else the header and how many bytes it took.
    pub fn parse(buf: &[u8]) -> Result<Option<(Header, usize)>, Violation> {
        let [b0, b1, ..] = *buf else {
            return Ok(None);
        };
        let opcode = OpCode::from_bits(b0 & 0x0F).ok_or(Violation::ReservedOpcode)?;
        let masked = b1 & 0x80 != 0;
        let (len, mut at) = match b1 & 0x7F {
            126 => match buf.get(2..4) {
                Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
                None => return Ok(None),
            },
            127 => match buf.get(2..10) {
                Some(b) => {
                    let mut be = [0; 8];
                    be.copy_from_slice(b);
                    (u64::from_be_bytes(be), 10)
                }
                None => return Ok(None),
            },
            n => (u64::from(n), 2),
        };
        if len >> 63 != 0 {
            return Err(Violation::LengthOverflow);
        }
        let mask = if masked {
            let Some(key) = buf.get(at..at + 4) else {
                return Ok(None);
            };
            at += 4;
            Some([key[0], key[1], key[2], key[3]])
        } else {
            None
        };
        let header = Header {
            fin: b0 & 0x80 != 0,
            rsv: (b0 >> 4) & 0x07,
            opcode,
            mask,
            len,
        };
        Ok(Some((header, at)))
    }

    /// Write the header into `out`; returns its length.
    pub fn encode(&self, out: &mut [u8; MAX_HEADER]) -> usize {
        out[0] = u8::from(self.fin) << 7 | (self.rsv & 0x07) << 4 | self.opcode.bits();
        let mask_bit = if self.mask.is_some() { 0x80 } else { 0 };
        let mut at = match self.len {
            0..=125 => {
                out[1] = mask_bit | self.len as u8;
                2
            }
            126..=0xFFFF => {
                out[1] = mask_bit | 126;
                out[2..4].copy_from_slice(&(self.len as u16).to_be_bytes());
                4
            }
            _ => {
                out[1] = mask_bit | 127;
                out[2..10].copy_from_slice(&self.len.to_be_bytes());
                10
            }
        };
        if let Some(key) = self.mask {
            out[at..at + 4].copy_from_slice(&key);
            at += 4;
        }
        at
    }
}

/// XOR `buf` with the mask `key`, where `buf` starts `offset` bytes into the
/// payload (so a payload can be unmasked piece by piece as it arrives).
pub fn apply_mask(buf: &mut [u8], key: [u8; 4], offset: u64) {
    let mut key = key;
    key.rotate_left((offset % 4) as usize);
    let wide = u64::from_ne_bytes([
        key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3],
    ]);
    let mut chunks = buf.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut word = [0; 8];
        word.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(word) ^ wide).to_ne_bytes());
    }
    for (i, byte) in chunks.into_remainder().iter_mut().enumerate() {
        *byte ^= key[i % 4];
    }
}

/// A whole unmasked frame (a server's), header and payload in one buffer:
/// what is written as it is to every recipient of a message.
pub fn server_frame(opcode: OpCode, payload: &[u8]) -> Vec<u8> {
    framed(opcode, 0, payload)
}

/// A whole unmasked frame of a message compressed with permessage-deflate
/// (RSV1 set).
pub fn deflated_frame(opcode: OpCode, compressed: &[u8]) -> Vec<u8> {
    framed(opcode, 0b100, compressed)
}

fn framed(opcode: OpCode, rsv: u8, payload: &[u8]) -> Vec<u8> {
    let header = Header {
        fin: true,
        rsv,
        opcode,
        mask: None,
        len: payload.len() as u64,
    };
    let mut head = [0; MAX_HEADER];
    let at = header.encode(&mut head);
    let mut frame = Vec::with_capacity(at + payload.len());
    frame.extend_from_slice(&head[..at]);
    frame.extend_from_slice(payload);
    frame
}

/// A whole control frame as bytes: header and payload (at most 125 bytes,
/// masked with `mask` on the way to a server).
pub struct ControlFrame {
    bytes: [u8; MAX_HEADER + MAX_CONTROL],
    len: usize,
}

impl ControlFrame {
    pub fn new(opcode: OpCode, payload: &[u8], mask: Option<[u8; 4]>) -> Self {
        let payload = &payload[..payload.len().min(MAX_CONTROL)];
        let header = Header {
            fin: true,
            rsv: 0,
            opcode,
            mask,
            len: payload.len() as u64,
        };
        let mut bytes = [0; MAX_HEADER + MAX_CONTROL];
        let mut head = [0; MAX_HEADER];
        let at = header.encode(&mut head);
        bytes[..at].copy_from_slice(&head[..at]);
        bytes[at..at + payload.len()].copy_from_slice(payload);
        if let Some(key) = mask {
            apply_mask(&mut bytes[at..at + payload.len()], key, 0);
        }
        ControlFrame {
            bytes,
            len: at + payload.len(),
        }
    }

    /// A Close with `code` and as much of `reason` as fits (cut at a
    /// character boundary); no code: an empty Close.
    pub fn close(code: Option<u16>, reason: &str, mask: Option<[u8; 4]>) -> Self {
        let mut payload = [0; MAX_CONTROL];
        let len = match code {
            None => 0,
            Some(code) => {
                payload[..2].copy_from_slice(&code.to_be_bytes());
                let mut cut = reason.len().min(MAX_CONTROL - 2);
                while !reason.is_char_boundary(cut) {
                    cut -= 1;
                }
                payload[2..2 + cut].copy_from_slice(&reason.as_bytes()[..cut]);
                2 + cut
            }
        };
        ControlFrame::new(OpCode::Close, &payload[..len], mask)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A header as the tests write them (no RSV bits).
    pub(super) fn header(fin: bool, opcode: OpCode, mask: Option<[u8; 4]>, len: u64) -> Header {
        Header {
            fin,
            rsv: 0,
            opcode,
            mask,
            len,
        }
    }

    #[test]
    fn headers_round_trip_at_every_length_form() {
        for len in [0, 125, 126, 0xFFFF, 0x1_0000, 1 << 40] {
            for mask in [None, Some([1, 2, 3, 4])] {
                let h = header(len % 2 == 0, OpCode::Binary, mask, len);
                let mut out = [0; MAX_HEADER];
                let n = h.encode(&mut out);
                assert_eq!(Header::parse(&out[..n]), Ok(Some((h, n))));
                // Every shorter prefix asks for more.
                for short in 0..n {
                    assert_eq!(Header::parse(&out[..short]), Ok(None), "{len} {short}");
                }
            }
        }
    }

    #[test]
    fn bad_headers_are_refused() {
        assert_eq!(Header::parse(&[0x83, 0]), Err(Violation::ReservedOpcode));
        let huge = [0x82, 127, 0x80, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(Header::parse(&huge), Err(Violation::LengthOverflow));
        let (h, _) = Header::parse(&[0xC2, 0]).unwrap().unwrap();
        assert_eq!(h.rsv, 0b100);
    }

    #[test]
    fn masking_is_its_own_inverse_at_any_offset() {
        let key = [0xA1, 0xB2, 0xC3, 0xD4];
        let plain: Vec<u8> = (0..=255).cycle().take(1000).collect();
        let mut whole = plain.clone();
        apply_mask(&mut whole, key, 0);
        let expected: Vec<u8> = plain
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ key[i % 4])
            .collect();
        assert_eq!(whole, expected);
        // Piece by piece, at odd offsets, gives the same bytes.
        let mut pieces = plain.clone();
        let mut at = 0;
        for size in [1, 3, 7, 8, 13, 500] {
            let end = (at + size).min(pieces.len());
            apply_mask(&mut pieces[at..end], key, at as u64);
            at = end;
        }
        apply_mask(&mut pieces[at..], key, at as u64);
        assert_eq!(pieces, expected);
    }

    #[test]
    fn control_frames_encode_and_parse_back() {
        let key = [1, 2, 3, 4];
        let long = "é".repeat(100);
        let frame = ControlFrame::close(Some(1001), &long, Some(key));
        let (h, at) = Header::parse(frame.as_bytes()).unwrap().unwrap();
        assert_eq!((h.opcode, h.fin, h.mask), (OpCode::Close, true, Some(key)));
        let mut payload = frame.as_bytes()[at..].to_vec();
        apply_mask(&mut payload, key, 0);
        let (code, reason) = parse_close(&payload).unwrap().unwrap();
        assert_eq!(code, 1001);
        assert!(
            long.starts_with(reason) && reason.len() == 122,
            "cut at a char boundary"
        );
        let ping = ControlFrame::new(OpCode::Ping, b"hi", None);
        assert_eq!(ping.as_bytes(), &[0x89, 2, b'h', b'i']);
        assert_eq!(ControlFrame::close(None, "", None).as_bytes(), &[0x88, 0]);
    }

    #[test]
    fn server_frames_are_one_unmasked_buffer() {
        for len in [0, 125, 126, 70_000] {
            let payload = vec![7u8; len];
            let frame = server_frame(OpCode::Text, &payload);
            let (h, at) = Header::parse(&frame).unwrap().unwrap();
            assert_eq!(h, header(true, OpCode::Text, None, len as u64));
            assert_eq!(&frame[at..], &payload[..]);
        }
    }
}
