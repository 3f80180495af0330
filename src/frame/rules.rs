//! What each frame of one direction must be: RFC 6455's rules on
//! masking, reserved bits, control frames, message order and Close
//! payloads, and the configured size limits, all checked from the header.

use super::{Header, MAX_CONTROL, OpCode, Violation};

/// May a peer send this close code (RFC 6455 §7.4)?
pub fn close_code_allowed(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// Check a whole Close payload: empty, or a sendable code and a UTF-8
/// reason. Returns the code and reason.
pub fn parse_close(payload: &[u8]) -> Result<Option<(u16, &str)>, Violation> {
    match payload {
        [] => Ok(None),
        [_] => Err(Violation::BadClose),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !close_code_allowed(code) {
                return Err(Violation::BadClose);
            }
            let reason = std::str::from_utf8(reason).map_err(|_| Violation::InvalidUtf8)?;
            Ok(Some((code, reason)))
        }
    }
}

/// Who sent the frames a [`Rules`] checks: client frames must be masked,
/// server frames must not be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sender {
    Client,
    Server,
}

/// The rules of one direction of a connection: message order, limits and
/// masking, checked from each header before the payload is read.
#[derive(Debug, Clone)]
pub struct Rules {
    sender: Sender,
    max_frame: u64,
    max_message: u64,
    /// The message in progress: its opcode and bytes so far.
    open: Option<(OpCode, u64)>,
    /// permessage-deflate was agreed: RSV1 marks a compressed message.
    deflate: bool,
    /// The message of the last data frame is compressed.
    compressed: bool,
}

impl Rules {
    pub fn new(sender: Sender, max_frame: usize, max_message: usize) -> Self {
        Rules {
            sender,
            max_frame: max_frame as u64,
            max_message: max_message as u64,
            open: None,
            deflate: false,
            compressed: false,
        }
    }

    /// With permessage-deflate agreed: RSV1 on a message's first frame
    /// marks it compressed (the limits then count compressed bytes; the
    /// reader bounds what they inflate to).
    pub fn with_deflate(self) -> Self {
        Rules {
            deflate: true,
            ..self
        }
    }

    /// Is the message of the last data frame compressed?
    pub fn compressed(&self) -> bool {
        self.compressed
    }

    /// Check the next frame's header. For a data frame, returns the opcode
    /// of the message it belongs to (Text or Binary) and whether it ends it.
    pub fn check(&mut self, h: &Header) -> Result<Option<(OpCode, bool)>, Violation> {
        let rsv1 = h.rsv == 0b100;
        // RSV1 only with deflate, only on a data message's first frame.
        let first_data = !h.opcode.is_control() && h.opcode != OpCode::Continuation;
        if h.rsv != 0 && !(rsv1 && self.deflate && first_data) {
            return Err(Violation::ReservedBits);
        }
        if h.mask.is_some() != (self.sender == Sender::Client) {
            return Err(Violation::Masking);
        }
        if h.opcode.is_control() {
            if !h.fin || h.len > MAX_CONTROL as u64 {
                return Err(Violation::BadControl);
            }
            return Ok(None);
        }
        let (kind, so_far) = match (h.opcode, self.open) {
            (OpCode::Continuation, Some(open)) => open,
            (OpCode::Continuation, None) => return Err(Violation::UnexpectedContinuation),
            (_, Some(_)) => return Err(Violation::ExpectedContinuation),
            (opcode, None) => {
                self.compressed = rsv1;
                (opcode, 0)
            }
        };
        let total = so_far.saturating_add(h.len);
        if h.len > self.max_frame || total > self.max_message {
            return Err(Violation::TooBig);
        }
        self.open = (!h.fin).then_some((kind, total));
        Ok(Some((kind, h.fin)))
    }

    /// Is a fragmented message in progress?
    pub fn in_message(&self) -> bool {
        self.open.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::header;
    use super::*;

    #[test]
    fn close_payloads() {
        assert_eq!(parse_close(&[]), Ok(None));
        assert_eq!(parse_close(&[3]), Err(Violation::BadClose));
        assert_eq!(
            parse_close(&[0x03, 0xE8, b'o', b'k']),
            Ok(Some((1000, "ok")))
        );
        for bad in [0u16, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000] {
            let b = bad.to_be_bytes();
            assert_eq!(parse_close(&b), Err(Violation::BadClose), "{bad}");
        }
        for good in [1001u16, 1011, 1013, 3000, 4999] {
            assert!(parse_close(&good.to_be_bytes()).is_ok(), "{good}");
        }
        assert_eq!(
            parse_close(&[0x03, 0xE8, 0xFF]),
            Err(Violation::InvalidUtf8)
        );
    }

    #[test]
    fn rules_follow_rfc_6455() {
        let m = Some([0; 4]);
        let mut r = Rules::new(Sender::Client, 100, 150);
        assert_eq!(
            r.check(&header(true, OpCode::Text, None, 1)),
            Err(Violation::Masking)
        );
        assert_eq!(
            r.check(&header(false, OpCode::Text, m, 60)),
            Ok(Some((OpCode::Text, false)))
        );
        // Control frames may come between fragments.
        assert_eq!(r.check(&header(true, OpCode::Ping, m, 125)), Ok(None));
        assert_eq!(
            r.check(&header(true, OpCode::Ping, m, 126)),
            Err(Violation::BadControl)
        );
        assert_eq!(
            r.check(&header(false, OpCode::Pong, m, 0)),
            Err(Violation::BadControl)
        );
        assert_eq!(
            r.check(&header(true, OpCode::Binary, m, 1)),
            Err(Violation::ExpectedContinuation)
        );
        assert!(r.in_message());
        // 60 + 91 is over the message limit of 150.
        assert_eq!(
            r.clone().check(&header(true, OpCode::Continuation, m, 91)),
            Err(Violation::TooBig)
        );
        assert_eq!(
            r.check(&header(true, OpCode::Continuation, m, 90)),
            Ok(Some((OpCode::Text, true)))
        );
        assert!(!r.in_message());
        assert_eq!(
            r.check(&header(true, OpCode::Continuation, m, 1)),
            Err(Violation::UnexpectedContinuation)
        );
        assert_eq!(
            r.check(&header(true, OpCode::Binary, m, 101)),
            Err(Violation::TooBig)
        );
        let mut rsv = header(true, OpCode::Binary, m, 1);
        rsv.rsv = 0b100;
        assert_eq!(r.check(&rsv), Err(Violation::ReservedBits));
        let mut server = Rules::new(Sender::Server, 100, 100);
        assert_eq!(
            server.check(&header(true, OpCode::Binary, m, 1)),
            Err(Violation::Masking)
        );
        assert_eq!(
            server.check(&header(true, OpCode::Binary, None, 1)),
            Ok(Some((OpCode::Binary, true)))
        );
    }
}
