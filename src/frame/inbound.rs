//! One direction's incoming bytes, checked frame by frame as they pass,
//! without reassembling messages: what the relay forwards with.
//!
//! The caller reads into a buffer and asks [`Inbound::next`] what its first
//! bytes are. Data frames come out as runs of bytes to forward as they are
//! (header and as much payload as has arrived; masked payloads keep their
//! mask), so a frame of any size passes through a small buffer. Control
//! frames come out whole, unmasked, so the caller can answer, drop or pass
//! them.

use super::{Header, MAX_CONTROL, MAX_HEADER, OpCode, Rules, Utf8Stream, Violation, apply_mask};

/// What the start of the buffer is.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// More bytes are needed: an incomplete header or control frame.
    Need,
    /// The first `len` bytes are a checked piece of a data frame, to be
    /// forwarded as they are. `payload` of them are payload; `end` is set
    /// when they finish a message.
    Data {
        len: usize,
        payload: usize,
        end: bool,
    },
    /// The first `len` bytes are a whole control frame; its unmasked
    /// payload is [`Inbound::control`].
    Control { len: usize, opcode: OpCode },
}

/// The payload still to come of the data frame in progress.
#[derive(Debug, Clone, Copy)]
struct Payload {
    remaining: u64,
    /// Bytes of this frame's payload already seen: the mask offset.
    seen: u64,
    mask: Option<[u8; 4]>,
    /// A text message.
    text: bool,
    /// Its bytes go through the UTF-8 check (text, not compressed).
    check: bool,
    /// This frame ends its message.
    fin: bool,
}

/// The state of one direction.
#[derive(Debug)]
pub struct Inbound {
    rules: Rules,
    payload: Option<Payload>,
    utf8: Utf8Stream,
    control: [u8; MAX_CONTROL],
    control_len: u8,
    /// Leave data payload unmasked in the buffer (a reader that keeps the
    /// messages), instead of forwarding it as it came.
    unmask: bool,
    /// The message of the last data step is text.
    text: bool,
    /// The last data step's mask and its payload's offset in the frame.
    mask: Option<([u8; 4], u64)>,
}

// A compressed message's bytes are not text until inflated: its reader
// checks them then (`Rules::compressed`).

impl Inbound {
    pub fn new(rules: Rules) -> Self {
        Inbound {
            rules,
            payload: None,
            utf8: Utf8Stream::default(),
            control: [0; MAX_CONTROL],
            control_len: 0,
            unmask: false,
            text: false,
            mask: None,
        }
    }

    /// For a reader that keeps what it reads: data payload is left
    /// unmasked in the buffer (the last `payload` bytes of each
    /// [`Step::Data`]).
    pub fn unmasking(rules: Rules) -> Self {
        Inbound {
            unmask: true,
            ..Inbound::new(rules)
        }
    }

    /// Does the last [`Step::Data`] belong to a text message? (A
    /// compressed one's UTF-8 is checked by its reader, once inflated.)
    pub fn text(&self) -> bool {
        self.text
    }

    /// The mask of the last [`Step::Data`]'s payload bytes (left masked
    /// by a forwarding reader), and their offset in the frame's payload:
    /// for [`apply_mask`](super::apply_mask).
    pub fn mask(&self) -> Option<([u8; 4], u64)> {
        self.mask
    }

    /// Does the last [`Step::Data`] belong to a compressed message?
    pub fn compressed(&self) -> bool {
        self.rules.compressed()
    }

    /// The unmasked payload of the last [`Step::Control`].
    pub fn control(&self) -> &[u8] {
        &self.control[..usize::from(self.control_len)]
    }

    /// Has a data frame's header gone through without all of its payload?
    /// (Then nothing else may be written to where it goes.)
    pub fn in_frame(&self) -> bool {
        self.payload.is_some()
    }

    /// Is a message in progress (between its first frame and its last)?
    pub fn in_message(&self) -> bool {
        self.payload.is_some() || self.rules.in_message()
    }

    /// Look at the start of `buf`. Text payload is unmasked in place to be
    /// checked and masked again, so the bytes forwarded are the bytes read.
    pub fn next(&mut self, buf: &mut [u8]) -> Result<Step, Violation> {
        if let Some(p) = self.payload {
            return self.payload_step(buf, p, 0);
        }
        let Some((header, at)) = Header::parse(buf)? else {
            return Ok(Step::Need);
        };
        debug_assert!(at <= MAX_HEADER);
        let Some((kind, fin)) = self.rules.check(&header)? else {
            return self.control_step(buf, &header, at);
        };
        let p = Payload {
            remaining: header.len,
            seen: 0,
            mask: header.mask,
            text: kind == OpCode::Text,
            check: kind == OpCode::Text && !self.rules.compressed(),
            fin,
        };
        self.payload_step(buf, p, at)
    }

    /// As much of the frame's payload as `buf` holds after `at` header bytes.
    fn payload_step(
        &mut self,
        buf: &mut [u8],
        mut p: Payload,
        at: usize,
    ) -> Result<Step, Violation> {
        let available = buf.len() - at;
        let take = usize::try_from(p.remaining).map_or(available, |r| r.min(available));
        // Set even for a header alone: it starts its message.
        self.text = p.text;
        self.mask = p.mask.map(|key| (key, p.seen));
        if take == 0 && p.remaining > 0 {
            // A header alone: forward it now, the payload follows.
            self.payload = Some(p);
            return match at {
                0 => Ok(Step::Need),
                _ => Ok(Step::Data {
                    len: at,
                    payload: 0,
                    end: false,
                }),
            };
        }
        let bytes = &mut buf[at..at + take];
        if self.unmask {
            if let Some(key) = p.mask {
                apply_mask(bytes, key, p.seen);
            }
            if p.check {
                self.utf8.feed(bytes)?;
            }
        } else if p.check {
            match p.mask {
                Some(key) => {
                    apply_mask(bytes, key, p.seen);
                    let checked = self.utf8.feed(bytes);
                    apply_mask(bytes, key, p.seen);
                    checked?;
                }
                None => self.utf8.feed(bytes)?,
            }
        }
        p.remaining -= take as u64;
        p.seen += take as u64;
        let end = p.remaining == 0 && p.fin;
        if p.remaining == 0 {
            self.payload = None;
            if end && p.check {
                self.utf8.finish()?;
            }
        } else {
            self.payload = Some(p);
        }
        Ok(Step::Data {
            len: at + take,
            payload: take,
            end,
        })
    }

    /// A whole control frame, or [`Step::Need`] until it has arrived.
    fn control_step(&mut self, buf: &[u8], header: &Header, at: usize) -> Result<Step, Violation> {
        // `Rules::check` has bounded the length to 125.
        let len = header.len as usize;
        let Some(payload) = buf.get(at..at + len) else {
            // Checked again when the rest arrives: undo nothing, the rules
            // hold no state for control frames.
            return Ok(Step::Need);
        };
        self.control[..len].copy_from_slice(payload);
        if let Some(key) = header.mask {
            apply_mask(&mut self.control[..len], key, 0);
        }
        self.control_len = len as u8;
        Ok(Step::Control {
            len: at + len,
            opcode: header.opcode,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::Sender;
    use super::*;

    fn frame(fin: bool, opcode: OpCode, mask: Option<[u8; 4]>, payload: &[u8]) -> Vec<u8> {
        let h = Header {
            fin,
            rsv: 0,
            opcode,
            mask,
            len: payload.len() as u64,
        };
        let mut head = [0; MAX_HEADER];
        let n = h.encode(&mut head);
        let mut out = head[..n].to_vec();
        let mut body = payload.to_vec();
        if let Some(key) = mask {
            apply_mask(&mut body, key, 0);
        }
        out.extend_from_slice(&body);
        out
    }

    /// What a relay did with a stream: bytes forwarded, control frames seen,
    /// messages ended.
    type Relayed = (Vec<u8>, Vec<(OpCode, Vec<u8>)>, usize);

    /// Feed `wire` in pieces of `chunk` bytes as a relay would; returns the
    /// bytes forwarded, the control frames seen and the message ends.
    fn run(inbound: &mut Inbound, wire: &[u8], chunk: usize) -> Result<Relayed, Violation> {
        let (mut buf, mut out, mut controls, mut ends) = (Vec::new(), Vec::new(), Vec::new(), 0);
        for piece in wire.chunks(chunk) {
            buf.extend_from_slice(piece);
            loop {
                match inbound.next(&mut buf)? {
                    Step::Need => break,
                    Step::Data { len, end, .. } => {
                        out.extend(buf.drain(..len));
                        ends += usize::from(end);
                    }
                    Step::Control { len, opcode } => {
                        controls.push((opcode, inbound.control().to_vec()));
                        buf.drain(..len);
                    }
                }
                if buf.is_empty() {
                    break;
                }
            }
        }
        assert!(buf.is_empty(), "bytes left over");
        Ok((out, controls, ends))
    }

    #[test]
    fn data_passes_unchanged_in_any_chunking_and_controls_come_out_whole() {
        let key = Some([9, 8, 7, 6]);
        let text = "héllo wörld, 😀 ".repeat(40);
        let mut wire = frame(false, OpCode::Text, key, &text.as_bytes()[..101]);
        wire.extend(frame(true, OpCode::Ping, key, b"are you there"));
        wire.extend(frame(
            true,
            OpCode::Continuation,
            key,
            &text.as_bytes()[101..],
        ));
        wire.extend(frame(true, OpCode::Binary, key, &[0xFF; 3000]));
        wire.extend(frame(true, OpCode::Close, key, &[0x03, 0xE8]));
        let data_only: Vec<u8> = [
            frame(false, OpCode::Text, key, &text.as_bytes()[..101]),
            frame(true, OpCode::Continuation, key, &text.as_bytes()[101..]),
            frame(true, OpCode::Binary, key, &[0xFF; 3000]),
        ]
        .concat();
        for chunk in [1, 2, 3, 7, 14, 100, 4096, wire.len()] {
            let mut inbound = Inbound::new(Rules::new(Sender::Client, 1 << 20, 1 << 20));
            let (out, controls, ends) = run(&mut inbound, &wire, chunk).unwrap();
            assert_eq!(out, data_only, "chunk {chunk}");
            assert_eq!(ends, 2, "chunk {chunk}");
            assert_eq!(
                controls,
                vec![
                    (OpCode::Ping, b"are you there".to_vec()),
                    (OpCode::Close, vec![0x03, 0xE8])
                ]
            );
        }
    }

    #[test]
    fn text_is_checked_across_fragments_and_chunks() {
        // "€" split across two frames is fine; a bad byte is not.
        let euro = "€".as_bytes();
        let mut wire = frame(false, OpCode::Text, None, &euro[..1]);
        wire.extend(frame(true, OpCode::Continuation, None, &euro[1..]));
        for chunk in [1, 3, wire.len()] {
            let mut inbound = Inbound::new(Rules::new(Sender::Server, 100, 100));
            assert!(run(&mut inbound, &wire, chunk).is_ok());
        }
        let bad = frame(true, OpCode::Text, Some([1, 2, 3, 4]), &[b'a', 0xC0, 0xAF]);
        let mut inbound = Inbound::new(Rules::new(Sender::Client, 100, 100));
        assert_eq!(run(&mut inbound, &bad, 2), Err(Violation::InvalidUtf8));
        let truncated = frame(true, OpCode::Text, None, &euro[..2]);
        let mut inbound = Inbound::new(Rules::new(Sender::Server, 100, 100));
        assert_eq!(
            run(&mut inbound, &truncated, 1),
            Err(Violation::InvalidUtf8)
        );
    }

    #[test]
    fn a_header_alone_already_tells_its_message_kind_and_mask() {
        let key = [1, 2, 3, 4];
        let mut inbound = Inbound::new(Rules::new(Sender::Client, 100, 100));
        let mut wire = frame(true, OpCode::Binary, Some(key), &[7; 3]);
        wire.extend(frame(true, OpCode::Text, Some(key), b"hello"));
        let mut buf = wire.clone();
        assert!(matches!(
            inbound.next(&mut buf),
            Ok(Step::Data { end: true, .. })
        ));
        assert!(!inbound.text());
        // The text frame's header ends a read.
        let header_end = wire.len() - 5;
        let at = header_end - 6;
        let step = inbound.next(&mut buf[at..header_end]);
        assert_eq!(
            step,
            Ok(Step::Data {
                len: 6,
                payload: 0,
                end: false
            })
        );
        assert!(inbound.text());
        assert_eq!(inbound.mask(), Some((key, 0)));
        let step = inbound.next(&mut buf[header_end..header_end + 2]);
        assert_eq!(
            step,
            Ok(Step::Data {
                len: 2,
                payload: 2,
                end: false
            })
        );
        let step = inbound.next(&mut buf[header_end + 2..]);
        assert_eq!(
            step,
            Ok(Step::Data {
                len: 3,
                payload: 3,
                end: true
            })
        );
        assert_eq!(inbound.mask(), Some((key, 2)));
    }

    #[test]
    fn limits_apply_from_the_header() {
        let mut inbound = Inbound::new(Rules::new(Sender::Server, 10, 10));
        // Only the header has arrived: refused before any payload.
        let wire = frame(true, OpCode::Binary, None, &[0; 11]);
        assert_eq!(
            inbound.next(&mut wire[..2].to_vec()),
            Err(Violation::TooBig)
        );
    }

    #[test]
    fn an_unmasking_reader_gets_the_plain_payload_and_the_message_kind() {
        let key = Some([9, 8, 7, 6]);
        let text = "héllo wörld 😀".repeat(9);
        let mut wire = frame(false, OpCode::Text, key, &text.as_bytes()[..50]);
        wire.extend(frame(
            true,
            OpCode::Continuation,
            key,
            &text.as_bytes()[50..],
        ));
        wire.extend(frame(true, OpCode::Binary, key, &[1, 2, 3]));
        for chunk in [1, 5, 64, wire.len()] {
            let mut inbound = Inbound::unmasking(Rules::new(Sender::Client, 1000, 1000));
            let (mut buf, mut messages, mut message) = (Vec::new(), Vec::new(), Vec::new());
            for piece in wire.chunks(chunk) {
                buf.extend_from_slice(piece);
                while let Step::Data { len, payload, end } = inbound.next(&mut buf).unwrap() {
                    message.extend_from_slice(&buf[len - payload..len]);
                    buf.drain(..len);
                    if end {
                        messages.push((inbound.text(), std::mem::take(&mut message)));
                    }
                    if buf.is_empty() {
                        break;
                    }
                }
            }
            assert_eq!(
                messages,
                vec![(true, text.as_bytes().to_vec()), (false, vec![1, 2, 3])],
                "chunk {chunk}"
            );
        }
    }
}
