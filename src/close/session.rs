//! A session's end: what each side is sent (a close code, the other side's
//! forwarded Close, or nothing) and the metric label.

use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError, ProtocolError};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::frame::Violation;

/// The two ends of a session. An echo session has only a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Upstream,
}

/// What broke a side's stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// A message or frame over the configured size.
    TooBig,
    /// A frame that breaks RFC 6455.
    Protocol,
    /// A text message or close reason that is not UTF-8.
    InvalidUtf8,
    /// Transport error (reset, TLS failure) mid-session.
    Io,
}

/// How an upgraded session ended.
#[derive(Debug, Clone, PartialEq)]
pub enum SessionEnd {
    /// That side sent Close (tungstenite queued the reply); the frame goes on
    /// to the other side as it came.
    Closed(Side, Option<CloseFrame>),
    /// That side's connection ended without a Close frame.
    Gone(Side),
    /// That side sent something that breaks the protocol or a limit.
    Broken(Side, Fault),
    /// A write to that side made no progress for `send_timeout`.
    SendTimeout(Side),
    /// The gateway is draining.
    Shutdown,
    /// No message either way for `idle_timeout`.
    Idle,
    /// A server ping to the client was not answered before the next was due.
    PingTimeout,
    /// The upstream member neither answered a ping nor sent anything else
    /// before the next was due.
    UpstreamPingTimeout,
    /// A hub client's outbound queue overflowed (slow-consumer policy `close`).
    SlowConsumer,
    /// A raw hub client published faster than its route allows.
    RateLimited,
    /// The gateway cannot take this session now (hub channel limit).
    Overloaded,
    /// The client's token ran out (after the route's grace) and no fresh
    /// one came.
    TokenExpired,
}

/// What to send one side at the end.
#[derive(Debug, Clone, PartialEq)]
pub enum ClosePlan {
    /// Our own Close with this code and reason.
    Send(CloseCode, &'static str),
    /// The other side's Close, passed through (code and reason as they came).
    Forward(Option<CloseFrame>),
    /// This side closed first; flush the reply tungstenite queued.
    Reply,
    /// Nothing can or should be sent; just close the connection.
    Nothing,
}

impl From<Violation> for Fault {
    /// What the frame layer refused, as the fault it is.
    fn from(violation: Violation) -> Fault {
        match violation {
            Violation::TooBig => Fault::TooBig,
            Violation::InvalidUtf8 => Fault::InvalidUtf8,
            Violation::ReservedBits
            | Violation::ReservedOpcode
            | Violation::LengthOverflow
            | Violation::Masking
            | Violation::BadControl
            | Violation::UnexpectedContinuation
            | Violation::ExpectedContinuation
            | Violation::BadClose => Fault::Protocol,
        }
    }
}

impl SessionEnd {
    /// A read or write on `side` failed with `e`: a peer that went away
    /// (the connection ended without TLS close_notify, or was reset) is
    /// gone, like one whose stream ended; anything else is an I/O error.
    pub fn io(side: Side, e: &std::io::Error) -> SessionEnd {
        use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset, UnexpectedEof};
        match e.kind() {
            UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe => {
                SessionEnd::Gone(side)
            }
            _ => SessionEnd::Broken(side, Fault::Io),
        }
    }

    /// Classify an error from one side's stream.
    pub fn from_ws_error(side: Side, err: &WsError) -> SessionEnd {
        let fault = match err {
            WsError::ConnectionClosed | WsError::AlreadyClosed => return SessionEnd::Gone(side),
            WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
                return SessionEnd::Gone(side);
            }
            WsError::Protocol(_) | WsError::Capacity(CapacityError::TooManyHeaders) => {
                Fault::Protocol
            }
            WsError::Capacity(CapacityError::MessageTooLong { .. }) => Fault::TooBig,
            WsError::Utf8(_) => Fault::InvalidUtf8,
            WsError::Io(_) | WsError::Tls(_) => Fault::Io,
            // Cannot happen on an established stream; treat as a broken
            // transport rather than inventing a close code.
            WsError::WriteBufferFull(_)
            | WsError::Url(_)
            | WsError::Http(_)
            | WsError::HttpFormat(_)
            | WsError::AttackAttempt => Fault::Io,
        };
        SessionEnd::Broken(side, fault)
    }

    /// What `side` is sent. The relay rules: a Close passes through; a side
    /// that vanishes is reported to the other as 1001 (client gone) or 1011
    /// (upstream gone); a side that breaks the protocol is told why.
    pub fn plan(&self, side: Side) -> ClosePlan {
        let other_gone = |culprit: Side| match culprit {
            Side::Client => ClosePlan::Send(CloseCode::Away, "client gone"),
            Side::Upstream => ClosePlan::Send(CloseCode::Error, "upstream gone"),
        };
        match self {
            SessionEnd::Closed(by, _) if *by == side => ClosePlan::Reply,
            SessionEnd::Closed(_, frame) => ClosePlan::Forward(frame.clone()),
            SessionEnd::Gone(by) | SessionEnd::SendTimeout(by) if *by == side => ClosePlan::Nothing,
            SessionEnd::Gone(by) | SessionEnd::SendTimeout(by) => other_gone(*by),
            SessionEnd::Broken(by, fault) if *by == side => match fault {
                Fault::TooBig => ClosePlan::Send(CloseCode::Size, "message too big"),
                Fault::Protocol => ClosePlan::Send(CloseCode::Protocol, "protocol error"),
                Fault::InvalidUtf8 => ClosePlan::Send(CloseCode::Invalid, "invalid utf-8"),
                Fault::Io => ClosePlan::Nothing,
            },
            SessionEnd::Broken(by, _) => other_gone(*by),
            SessionEnd::Shutdown => ClosePlan::Send(CloseCode::Away, "server shutting down"),
            SessionEnd::Idle => ClosePlan::Send(CloseCode::Away, "idle timeout"),
            SessionEnd::PingTimeout => match side {
                Side::Client => ClosePlan::Send(CloseCode::Error, "ping timeout"),
                Side::Upstream => ClosePlan::Send(CloseCode::Away, "client gone"),
            },
            // A member that does not answer is not waited for.
            SessionEnd::UpstreamPingTimeout => match side {
                Side::Client => ClosePlan::Send(CloseCode::Error, "upstream not answering"),
                Side::Upstream => ClosePlan::Nothing,
            },
            SessionEnd::TokenExpired => match side {
                Side::Client => ClosePlan::Send(CloseCode::Policy, "token expired"),
                Side::Upstream => ClosePlan::Send(CloseCode::Away, "token expired"),
            },
            SessionEnd::SlowConsumer | SessionEnd::RateLimited | SessionEnd::Overloaded
                if side == Side::Upstream =>
            {
                ClosePlan::Send(CloseCode::Away, "client gone")
            }
            SessionEnd::SlowConsumer => ClosePlan::Send(CloseCode::Policy, "slow consumer"),
            SessionEnd::RateLimited => ClosePlan::Send(CloseCode::Policy, "rate limit exceeded"),
            SessionEnd::Overloaded => ClosePlan::Send(CloseCode::Again, "try again later"),
        }
    }

    /// Metric label and log field.
    pub fn label(&self) -> &'static str {
        use Side::{Client, Upstream};
        match self {
            SessionEnd::Closed(Client, _) => "client_closed",
            SessionEnd::Closed(Upstream, _) => "upstream_closed",
            SessionEnd::Gone(Client) => "client_gone",
            SessionEnd::Gone(Upstream) => "upstream_gone",
            SessionEnd::SendTimeout(Client) => "client_send_timeout",
            SessionEnd::SendTimeout(Upstream) => "upstream_send_timeout",
            SessionEnd::Broken(Client, Fault::TooBig) => "client_too_big",
            SessionEnd::Broken(Client, Fault::Protocol) => "client_protocol_error",
            SessionEnd::Broken(Client, Fault::InvalidUtf8) => "client_invalid_utf8",
            SessionEnd::Broken(Client, Fault::Io) => "client_io_error",
            SessionEnd::Broken(Upstream, Fault::TooBig) => "upstream_too_big",
            SessionEnd::Broken(Upstream, Fault::Protocol) => "upstream_protocol_error",
            SessionEnd::Broken(Upstream, Fault::InvalidUtf8) => "upstream_invalid_utf8",
            SessionEnd::Broken(Upstream, Fault::Io) => "upstream_io_error",
            SessionEnd::Shutdown => "shutdown",
            SessionEnd::Idle => "idle_timeout",
            SessionEnd::PingTimeout => "ping_timeout",
            SessionEnd::UpstreamPingTimeout => "upstream_ping_timeout",
            SessionEnd::SlowConsumer => "slow_consumer",
            SessionEnd::RateLimited => "rate_limited",
            SessionEnd::Overloaded => "overloaded",
            SessionEnd::TokenExpired => "token_expired",
        }
    }

    /// The close code the client was sent or sent itself, for the log line.
    pub fn client_code(&self) -> Option<u16> {
        match self.plan(Side::Client) {
            ClosePlan::Send(code, _) => Some(code.into()),
            ClosePlan::Forward(frame) => frame.map(|f| f.code.into()),
            ClosePlan::Reply => match self {
                SessionEnd::Closed(_, frame) => frame.as_ref().map(|f| f.code.into()),
                _ => None,
            },
            ClosePlan::Nothing => None,
        }
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use Side::{Client, Upstream};

    fn code(plan: ClosePlan) -> Option<u16> {
        match plan {
            ClosePlan::Send(code, _) => Some(code.into()),
            ClosePlan::Forward(frame) => frame.map(|f| f.code.into()),
            ClosePlan::Reply | ClosePlan::Nothing => None,
        }
    }

    #[test]
    fn session_end_table() {
        let bye = CloseFrame {
            code: CloseCode::Library(4001),
            reason: "bye".into(),
        };
        // (end, what the client gets, what the upstream gets)
        let table: Vec<(SessionEnd, Option<u16>, Option<u16>)> = vec![
            (
                SessionEnd::Closed(Client, Some(bye.clone())),
                None,
                Some(4001),
            ),
            (SessionEnd::Closed(Upstream, Some(bye)), Some(4001), None),
            (SessionEnd::Gone(Client), None, Some(1001)),
            (SessionEnd::Gone(Upstream), Some(1011), None),
            (SessionEnd::SendTimeout(Client), None, Some(1001)),
            (
                SessionEnd::Broken(Client, Fault::TooBig),
                Some(1009),
                Some(1001),
            ),
            (
                SessionEnd::Broken(Client, Fault::Protocol),
                Some(1002),
                Some(1001),
            ),
            (
                SessionEnd::Broken(Client, Fault::InvalidUtf8),
                Some(1007),
                Some(1001),
            ),
            (SessionEnd::Broken(Client, Fault::Io), None, Some(1001)),
            (
                SessionEnd::Broken(Upstream, Fault::TooBig),
                Some(1011),
                Some(1009),
            ),
            (
                SessionEnd::Broken(Upstream, Fault::Protocol),
                Some(1011),
                Some(1002),
            ),
            (SessionEnd::Shutdown, Some(1001), Some(1001)),
            (SessionEnd::Idle, Some(1001), Some(1001)),
            (SessionEnd::PingTimeout, Some(1011), Some(1001)),
            (SessionEnd::UpstreamPingTimeout, Some(1011), None),
            (SessionEnd::SlowConsumer, Some(1008), Some(1001)),
            (SessionEnd::RateLimited, Some(1008), Some(1001)),
            (SessionEnd::Overloaded, Some(1013), Some(1001)),
            (SessionEnd::TokenExpired, Some(1008), Some(1001)),
        ];
        for (end, client, upstream) in table {
            assert_eq!(code(end.plan(Client)), client, "client side of {end:?}");
            assert_eq!(
                code(end.plan(Upstream)),
                upstream,
                "upstream side of {end:?}"
            );
        }
        assert_eq!(
            SessionEnd::Closed(Client, None).plan(Client),
            ClosePlan::Reply
        );
        assert_eq!(SessionEnd::Gone(Client).plan(Client), ClosePlan::Nothing);
    }

    #[test]
    fn ws_errors_classify() {
        let too_long = WsError::Capacity(CapacityError::MessageTooLong {
            size: 2,
            max_size: 1,
        });
        assert_eq!(
            SessionEnd::from_ws_error(Client, &too_long),
            SessionEnd::Broken(Client, Fault::TooBig)
        );
        let unmasked = WsError::Protocol(ProtocolError::UnmaskedFrameFromClient);
        assert_eq!(
            SessionEnd::from_ws_error(Client, &unmasked),
            SessionEnd::Broken(Client, Fault::Protocol)
        );
        assert_eq!(
            SessionEnd::from_ws_error(Upstream, &WsError::ConnectionClosed),
            SessionEnd::Gone(Upstream)
        );
    }

    #[test]
    fn violation_faults() {
        use Violation::*;
        let table = [
            (TooBig, Fault::TooBig),
            (InvalidUtf8, Fault::InvalidUtf8),
            (ReservedBits, Fault::Protocol),
            (ReservedOpcode, Fault::Protocol),
            (LengthOverflow, Fault::Protocol),
            (Masking, Fault::Protocol),
            (BadControl, Fault::Protocol),
            (UnexpectedContinuation, Fault::Protocol),
            (ExpectedContinuation, Fault::Protocol),
            (BadClose, Fault::Protocol),
        ];
        for (violation, fault) in table {
            assert_eq!(Fault::from(violation), fault, "{violation:?}");
        }
    }
}
