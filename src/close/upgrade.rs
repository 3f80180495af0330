//! A WebSocket upgrade refused (HTTP status, body text, metric label), and
//! the failures before any HTTP request was read (metric label).

use http::StatusCode;

use super::{AuthFailure, Shed};

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
    /// Every pool member is in its failure backoff; nothing was dialled.
    UpstreamsDown,
    /// Dialling failed for want of a local resource (descriptors, buffers,
    /// ports): the gateway's fault, not the member's, which stays in service.
    LocalResources,
    /// The member refused or failed the connection or TLS (after failover).
    UpstreamUnreachable,
    /// Connecting to, or the upgrade answer from, the member took too long.
    UpstreamTimeout,
    /// The member answered the upgrade with something other than 101 that
    /// is not an HTTP error status (the error statuses pass through as they are).
    UpstreamBadHandshake,
    /// The member answered the upgrade with an HTTP error status; the client
    /// gets that status, with the member's content type and body.
    UpstreamStatus(StatusCode),
    /// A hub route with `names = "unique"`: that name is already connected.
    NameTaken,
    /// The hub is at `max_channels` and the room does not exist yet.
    HubFull,
    /// The client offered subprotocols and the route lists none of them
    /// (the body names the route's list).
    Subprotocol,
    /// Plain HTTP (not CONNECT) on the TLS port.
    PlainHttp,
    /// A CONNECT where tunnelling is off (or inside a tunnel already).
    ConnectDisabled,
    /// The route's origin or token rules refused it (401/403).
    Auth(AuthFailure),
    /// A WebSocket stream over HTTP/2, refused by the admission limits that
    /// count it as a connection.
    Shed(Shed),
    /// Over HTTP/2, a request for a host other than the connection's SNI
    /// name: 421, and the client asks again on a connection of its own.
    Misdirected,
    /// Over HTTP/2, a plain request that found no place among its
    /// connection's responses in progress within the handshake timeout.
    Busy,
}

impl Rejection {
    pub fn status(self) -> StatusCode {
        match self {
            Rejection::NoRoute => StatusCode::NOT_FOUND,
            Rejection::NotWebSocket | Rejection::Version => StatusCode::UPGRADE_REQUIRED,
            Rejection::Method => StatusCode::METHOD_NOT_ALLOWED,
            Rejection::BadRequest(_) => StatusCode::BAD_REQUEST,
            Rejection::Draining
            | Rejection::UpstreamsDown
            | Rejection::LocalResources
            | Rejection::HubFull => StatusCode::SERVICE_UNAVAILABLE,
            Rejection::UpstreamUnreachable | Rejection::UpstreamBadHandshake => {
                StatusCode::BAD_GATEWAY
            }
            Rejection::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Rejection::UpstreamStatus(status) => status,
            Rejection::NameTaken => StatusCode::CONFLICT,
            Rejection::PlainHttp | Rejection::Subprotocol => StatusCode::BAD_REQUEST,
            Rejection::ConnectDisabled => StatusCode::METHOD_NOT_ALLOWED,
            Rejection::Auth(failure) => failure.status(),
            Rejection::Misdirected => StatusCode::MISDIRECTED_REQUEST,
            Rejection::Busy => StatusCode::SERVICE_UNAVAILABLE,
            Rejection::Shed(Shed::Rate | Shed::RatePerIp) => StatusCode::TOO_MANY_REQUESTS,
            Rejection::Shed(Shed::Capacity | Shed::PerIp | Shed::AdminCapacity) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
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
            Rejection::UpstreamsDown => "upstreams_down",
            Rejection::LocalResources => "local_resources",
            Rejection::UpstreamUnreachable => "upstream_unreachable",
            Rejection::UpstreamTimeout => "upstream_timeout",
            Rejection::UpstreamBadHandshake => "upstream_bad_handshake",
            Rejection::UpstreamStatus(_) => "upstream_status",
            Rejection::NameTaken => "name_taken",
            Rejection::HubFull => "hub_full",
            Rejection::Subprotocol => "subprotocol",
            Rejection::PlainHttp => "plain_http",
            Rejection::ConnectDisabled => "connect_disabled",
            Rejection::Auth(_) => "auth",
            Rejection::Shed(shed) => shed.label(),
            Rejection::Misdirected => "misdirected",
            Rejection::Busy => "busy",
        }
    }

    /// Short body text. Says what is wrong, nothing internal. (An upstream
    /// status goes out with the member's own body instead.)
    pub fn message(self) -> &'static str {
        match self {
            Rejection::NoRoute => "no route for this host and path",
            Rejection::NotWebSocket => "this path serves WebSocket upgrades only",
            Rejection::Method => "a WebSocket upgrade must be a GET",
            Rejection::Version => "only WebSocket version 13 is supported",
            Rejection::BadRequest(why) => why,
            Rejection::Draining => "shutting down",
            Rejection::UpstreamsDown => "no upstream available",
            Rejection::LocalResources => "the gateway is out of resources, try again",
            Rejection::UpstreamUnreachable => "upstream unreachable",
            Rejection::UpstreamTimeout => "upstream timed out",
            Rejection::UpstreamBadHandshake | Rejection::UpstreamStatus(_) => {
                "upstream refused the WebSocket upgrade"
            }
            Rejection::NameTaken => "that name is already connected",
            Rejection::HubFull => "the hub is at its channel limit",
            Rejection::Subprotocol => "none of the offered subprotocols is served here",
            Rejection::PlainHttp => {
                "this port speaks TLS (https://, wss://); plain HTTP is for CONNECT only"
            }
            Rejection::ConnectDisabled => "CONNECT is not served here",
            Rejection::Auth(failure) => failure.message(),
            Rejection::Misdirected => "this connection is for another host name",
            Rejection::Busy => "too many responses in progress on this connection",
            Rejection::Shed(Shed::Rate | Shed::RatePerIp) => "too many new connections, slow down",
            Rejection::Shed(Shed::Capacity | Shed::PerIp | Shed::AdminCapacity) => {
                "too many connections, try again later"
            }
        }
    }
}

/// Failures before any HTTP request was read, counted by reason in
/// `wsgate_handshake_failures_total` / `wsgate_tls_handshake_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EarlyFailure {
    TlsTimeout,
    /// Nothing in common: protocol version, cipher suite, key exchange
    /// group, signature scheme (rustls' `PeerIncompatible`).
    TlsIncompatible,
    /// The client refused this server's certificate (an alert saying so).
    TlsBadCertificate,
    /// The connection ended in the middle of the handshake (a client that
    /// refuses the certificate without saying why, a port scanner).
    TlsEof,
    /// Any other handshake failure.
    TlsError,
    HeadTimeout,
    HeadTooLarge,
    HeadMalformed,
}

impl EarlyFailure {
    pub fn label(self) -> &'static str {
        match self {
            EarlyFailure::TlsTimeout | EarlyFailure::HeadTimeout => "timeout",
            EarlyFailure::TlsIncompatible => "incompatible",
            EarlyFailure::TlsBadCertificate => "bad_certificate",
            EarlyFailure::TlsEof => "eof",
            EarlyFailure::TlsError => "error",
            EarlyFailure::HeadTooLarge => "head_too_large",
            EarlyFailure::HeadMalformed => "malformed",
        }
    }

    pub fn is_tls(self) -> bool {
        matches!(
            self,
            EarlyFailure::TlsTimeout
                | EarlyFailure::TlsIncompatible
                | EarlyFailure::TlsBadCertificate
                | EarlyFailure::TlsEof
                | EarlyFailure::TlsError
        )
    }

    /// A failed TLS handshake, by what rustls (or the connection) said.
    pub fn tls(e: &std::io::Error) -> EarlyFailure {
        use rustls::AlertDescription as Alert;
        use std::io::ErrorKind::{ConnectionAborted, ConnectionReset, UnexpectedEof};
        if matches!(
            e.kind(),
            UnexpectedEof | ConnectionReset | ConnectionAborted
        ) {
            return EarlyFailure::TlsEof;
        }
        match e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            Some(rustls::Error::PeerIncompatible(_)) => EarlyFailure::TlsIncompatible,
            // decrypt_error: a signature the client could not verify, in
            // a server's handshake that of its certificate chain (rustls
            // clients send it for a chain signed by another CA of the same
            // name).
            Some(rustls::Error::AlertReceived(
                Alert::BadCertificate
                | Alert::UnsupportedCertificate
                | Alert::CertificateRevoked
                | Alert::CertificateExpired
                | Alert::CertificateUnknown
                | Alert::UnknownCA
                | Alert::DecryptError,
            )) => EarlyFailure::TlsBadCertificate,
            _ => EarlyFailure::TlsError,
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
            (Rejection::UpstreamsDown, 503, "upstreams_down"),
            (Rejection::LocalResources, 503, "local_resources"),
            (Rejection::UpstreamUnreachable, 502, "upstream_unreachable"),
            (Rejection::UpstreamTimeout, 504, "upstream_timeout"),
            (
                Rejection::UpstreamBadHandshake,
                502,
                "upstream_bad_handshake",
            ),
            (
                Rejection::UpstreamStatus(StatusCode::FORBIDDEN),
                403,
                "upstream_status",
            ),
            (Rejection::NameTaken, 409, "name_taken"),
            (Rejection::HubFull, 503, "hub_full"),
            (Rejection::Subprotocol, 400, "subprotocol"),
            (Rejection::PlainHttp, 400, "plain_http"),
            (Rejection::ConnectDisabled, 405, "connect_disabled"),
            (Rejection::Auth(AuthFailure::MissingToken), 401, "auth"),
            (Rejection::Auth(AuthFailure::Origin), 403, "auth"),
        ];
        for (r, status, label) in table {
            assert_eq!(r.status().as_u16(), status, "{r:?}");
            assert_eq!(r.label(), label);
        }
    }

    #[test]
    fn tls_failures_are_told_apart() {
        use std::io::{Error, ErrorKind};
        let rustls = |e: rustls::Error| Error::new(ErrorKind::InvalidData, e);
        let table = [
            (
                rustls(rustls::PeerIncompatible::NoCipherSuitesInCommon.into()),
                EarlyFailure::TlsIncompatible,
            ),
            (
                rustls(rustls::Error::AlertReceived(
                    rustls::AlertDescription::UnknownCA,
                )),
                EarlyFailure::TlsBadCertificate,
            ),
            (
                rustls(rustls::Error::AlertReceived(
                    rustls::AlertDescription::BadCertificate,
                )),
                EarlyFailure::TlsBadCertificate,
            ),
            (Error::from(ErrorKind::UnexpectedEof), EarlyFailure::TlsEof),
            (
                Error::from(ErrorKind::ConnectionReset),
                EarlyFailure::TlsEof,
            ),
            (
                rustls(rustls::Error::AlertReceived(
                    rustls::AlertDescription::DecodeError,
                )),
                EarlyFailure::TlsError,
            ),
            (
                rustls(rustls::Error::General("x".into())),
                EarlyFailure::TlsError,
            ),
        ];
        for (e, failure) in table {
            assert_eq!(EarlyFailure::tls(&e), failure, "{e}");
        }
    }

    #[test]
    fn early_failure_table() {
        let table = [
            (EarlyFailure::TlsTimeout, "timeout", true),
            (EarlyFailure::TlsIncompatible, "incompatible", true),
            (EarlyFailure::TlsBadCertificate, "bad_certificate", true),
            (EarlyFailure::TlsEof, "eof", true),
            (EarlyFailure::TlsError, "error", true),
            (EarlyFailure::HeadTimeout, "timeout", false),
            (EarlyFailure::HeadTooLarge, "head_too_large", false),
            (EarlyFailure::HeadMalformed, "malformed", false),
        ];
        for (f, label, tls) in table {
            assert_eq!(f.label(), label, "{f:?}");
            assert_eq!(f.is_tls(), tls, "{f:?}");
        }
    }
}
