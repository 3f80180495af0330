//! How things end: the one place that maps a refused handshake to an HTTP
//! status and a session's end to a close code, a metric label and a log level.
//! Every match here is exhaustive, so a new variant cannot silently become a
//! 500 or a wrong close code.

use http::StatusCode;
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError, ProtocolError};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// Why an HTTP request was not upgraded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// No route matches host and path.
    NoRoute,
    /// A route matches, but the request is not a WebSocket upgrade.
    NotWebSocket,
    /// An upgrade with a method other than GET.
    Method,
    /// `Sec-WebSocket-Version` missing or not 13.
    Version,
    /// A malformed upgrade; the text says which part.
    BadRequest(&'static str),
    /// The gateway is shutting down.
    Draining,
}

impl Rejection {
    pub fn status(self) -> StatusCode {
        match self {
            Rejection::NoRoute => StatusCode::NOT_FOUND,
            Rejection::NotWebSocket | Rejection::Version => StatusCode::UPGRADE_REQUIRED,
            Rejection::Method => StatusCode::METHOD_NOT_ALLOWED,
            Rejection::BadRequest(_) => StatusCode::BAD_REQUEST,
            Rejection::Draining => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// Value of `wsgate_handshake_failures_total{reason}`.
    pub fn label(self) -> &'static str {
        match self {
            Rejection::NoRoute => "no_route",
            Rejection::NotWebSocket => "not_websocket",
            Rejection::Method => "method",
            Rejection::Version => "version",
            Rejection::BadRequest(_) => "bad_request",
            Rejection::Draining => "draining",
        }
    }

    /// Short body text. Says what is wrong with the request, nothing internal.
    pub fn message(self) -> &'static str {
        match self {
            Rejection::NoRoute => "no route for this host and path",
            Rejection::NotWebSocket => "this path serves WebSocket upgrades only",
            Rejection::Method => "a WebSocket upgrade must be a GET",
            Rejection::Version => "only WebSocket version 13 is supported",
            Rejection::BadRequest(why) => why,
            Rejection::Draining => "shutting down",
        }
    }
}

/// Failures before any HTTP request was read, counted by reason in
/// `wsgate_handshake_failures_total` / `wsgate_tls_handshake_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EarlyFailure {
    TlsTimeout,
    TlsError,
    HeadTimeout,
    HeadTooLarge,
    HeadMalformed,
}

impl EarlyFailure {
    pub fn label(self) -> &'static str {
        match self {
            EarlyFailure::TlsTimeout | EarlyFailure::HeadTimeout => "timeout",
            EarlyFailure::TlsError => "error",
            EarlyFailure::HeadTooLarge => "head_too_large",
            EarlyFailure::HeadMalformed => "malformed",
        }
    }

    pub fn is_tls(self) -> bool {
        matches!(self, EarlyFailure::TlsTimeout | EarlyFailure::TlsError)
    }
}

/// How an upgraded session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEnd {
    /// The client sent Close; its code (if any) was echoed back.
    ClientClosed(Option<u16>),
    /// The client's connection ended without a Close frame.
    ClientGone,
    /// The gateway is draining.
    Shutdown,
    /// No message either way for `idle_timeout`.
    Idle,
    /// A server ping was not answered before the next one was due.
    PingTimeout,
    /// A write to the client made no progress for `send_timeout`.
    SendTimeout,
    /// A message or frame over the configured size.
    TooBig,
    /// A frame that breaks RFC 6455.
    Protocol,
    /// A text message or close reason that is not UTF-8.
    InvalidUtf8,
    /// Transport error (reset, TLS failure) mid-session.
    Io,
}

impl SessionEnd {
    /// Classify an error from the client side of a session.
    pub fn from_ws_error(err: &WsError) -> SessionEnd {
        match err {
            WsError::ConnectionClosed | WsError::AlreadyClosed => SessionEnd::ClientGone,
            WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
                SessionEnd::ClientGone
            }
            WsError::Protocol(_) => SessionEnd::Protocol,
            WsError::Capacity(CapacityError::MessageTooLong { .. }) => SessionEnd::TooBig,
            WsError::Capacity(CapacityError::TooManyHeaders) => SessionEnd::Protocol,
            WsError::Utf8(_) => SessionEnd::InvalidUtf8,
            WsError::Io(_) | WsError::Tls(_) => SessionEnd::Io,
            // Cannot happen on an established server-side stream; treat as a
            // broken transport rather than inventing a close code.
            WsError::WriteBufferFull(_)
            | WsError::Url(_)
            | WsError::Http(_)
            | WsError::HttpFormat(_)
            | WsError::AttackAttempt => SessionEnd::Io,
        }
    }

    /// The close code the gateway sends, or `None` when no Close frame can or
    /// should be sent (the peer is gone, or already sent Close and got it back).
    pub fn close_code(&self) -> Option<CloseCode> {
        match self {
            SessionEnd::ClientClosed(_)
            | SessionEnd::ClientGone
            | SessionEnd::SendTimeout
            | SessionEnd::Io => None,
            SessionEnd::Shutdown | SessionEnd::Idle => Some(CloseCode::Away),
            SessionEnd::PingTimeout => Some(CloseCode::Error),
            SessionEnd::TooBig => Some(CloseCode::Size),
            SessionEnd::Protocol => Some(CloseCode::Protocol),
            SessionEnd::InvalidUtf8 => Some(CloseCode::Invalid),
        }
    }

    /// Close reason text sent with [`Self::close_code`].
    pub fn reason(&self) -> &'static str {
        match self {
            SessionEnd::ClientClosed(_)
            | SessionEnd::ClientGone
            | SessionEnd::SendTimeout
            | SessionEnd::Io => "",
            SessionEnd::Shutdown => "server shutting down",
            SessionEnd::Idle => "idle timeout",
            SessionEnd::PingTimeout => "ping timeout",
            SessionEnd::TooBig => "message too big",
            SessionEnd::Protocol => "protocol error",
            SessionEnd::InvalidUtf8 => "invalid utf-8",
        }
    }

    /// Metric label and log field.
    pub fn label(&self) -> &'static str {
        match self {
            SessionEnd::ClientClosed(_) => "client_closed",
            SessionEnd::ClientGone => "client_gone",
            SessionEnd::Shutdown => "shutdown",
            SessionEnd::Idle => "idle_timeout",
            SessionEnd::PingTimeout => "ping_timeout",
            SessionEnd::SendTimeout => "send_timeout",
            SessionEnd::TooBig => "too_big",
            SessionEnd::Protocol => "protocol_error",
            SessionEnd::InvalidUtf8 => "invalid_utf8",
            SessionEnd::Io => "io_error",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejection_table() {
        let table = [
            (Rejection::NoRoute, 404, "no_route"),
            (Rejection::NotWebSocket, 426, "not_websocket"),
            (Rejection::Method, 405, "method"),
            (Rejection::Version, 426, "version"),
            (Rejection::BadRequest("x"), 400, "bad_request"),
            (Rejection::Draining, 503, "draining"),
        ];
        for (r, status, label) in table {
            assert_eq!(r.status().as_u16(), status, "{r:?}");
            assert_eq!(r.label(), label);
        }
    }

    #[test]
    fn session_end_table() {
        let table: [(SessionEnd, Option<u16>); 10] = [
            (SessionEnd::ClientClosed(Some(1000)), None),
            (SessionEnd::ClientGone, None),
            (SessionEnd::Shutdown, Some(1001)),
            (SessionEnd::Idle, Some(1001)),
            (SessionEnd::PingTimeout, Some(1011)),
            (SessionEnd::SendTimeout, None),
            (SessionEnd::TooBig, Some(1009)),
            (SessionEnd::Protocol, Some(1002)),
            (SessionEnd::InvalidUtf8, Some(1007)),
            (SessionEnd::Io, None),
        ];
        for (end, code) in table {
            assert_eq!(end.close_code().map(u16::from), code, "{end:?}");
            assert_eq!(
                end.close_code().is_some(),
                !end.reason().is_empty(),
                "{end:?}"
            );
        }
    }

    #[test]
    fn ws_errors_classify() {
        let too_long = WsError::Capacity(CapacityError::MessageTooLong {
            size: 2,
            max_size: 1,
        });
        assert_eq!(SessionEnd::from_ws_error(&too_long), SessionEnd::TooBig);
        let unmasked = WsError::Protocol(ProtocolError::UnmaskedFrameFromClient);
        assert_eq!(SessionEnd::from_ws_error(&unmasked), SessionEnd::Protocol);
        assert_eq!(
            SessionEnd::from_ws_error(&WsError::ConnectionClosed),
            SessionEnd::ClientGone
        );
    }
}
