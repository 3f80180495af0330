//! An HTTP CONNECT's result: the answer's status, a refusal's body text,
//! and the `wsgate_tunnels_total{result}` label.

use http::StatusCode;

/// How a CONNECT request was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TunnelOutcome {
    /// A CONNECT to the gateway itself: the TLS front runs on the tunnel.
    Gateway,
    /// A tunnel to an allowed target, spliced.
    Spliced,
    /// Not `host:port` in authority form, or it has a body; the text says which.
    BadRequest(&'static str),
    /// `[tunnel] users` is set and the Basic credentials are missing or wrong.
    Unauthorized,
    /// No allow rule admits the target (before or after resolving it).
    Denied,
    /// The target name does not resolve (in time).
    Unresolved,
    /// Every allowed address refused or is unreachable.
    Unreachable,
    /// Dialling the target took longer than `connect_timeout`.
    Timeout,
}

impl TunnelOutcome {
    pub fn status(self) -> StatusCode {
        match self {
            TunnelOutcome::Gateway | TunnelOutcome::Spliced => StatusCode::OK,
            TunnelOutcome::BadRequest(_) => StatusCode::BAD_REQUEST,
            TunnelOutcome::Unauthorized => StatusCode::PROXY_AUTHENTICATION_REQUIRED,
            TunnelOutcome::Denied => StatusCode::FORBIDDEN,
            TunnelOutcome::Unresolved | TunnelOutcome::Unreachable => StatusCode::BAD_GATEWAY,
            TunnelOutcome::Timeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// Value of `wsgate_tunnels_total{result}`.
    pub fn label(self) -> &'static str {
        match self {
            TunnelOutcome::Gateway => "gateway",
            TunnelOutcome::Spliced => "spliced",
            TunnelOutcome::BadRequest(_) => "bad_request",
            TunnelOutcome::Unauthorized => "unauthorized",
            TunnelOutcome::Denied => "denied",
            TunnelOutcome::Unresolved => "unresolved",
            TunnelOutcome::Unreachable => "unreachable",
            TunnelOutcome::Timeout => "timeout",
        }
    }

    /// A refusal's body text; an established tunnel's answer has no body.
    pub fn message(self) -> &'static str {
        match self {
            TunnelOutcome::Gateway | TunnelOutcome::Spliced => "",
            TunnelOutcome::BadRequest(why) => why,
            TunnelOutcome::Unauthorized => "proxy credentials required",
            TunnelOutcome::Denied => "tunnelling to that target is not allowed",
            TunnelOutcome::Unresolved => "the target host does not resolve",
            TunnelOutcome::Unreachable => "the target refused or is unreachable",
            TunnelOutcome::Timeout => "the target did not answer in time",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tunnel_table() {
        let table = [
            (TunnelOutcome::Gateway, 200, "gateway"),
            (TunnelOutcome::Spliced, 200, "spliced"),
            (TunnelOutcome::BadRequest("x"), 400, "bad_request"),
            (TunnelOutcome::Unauthorized, 407, "unauthorized"),
            (TunnelOutcome::Denied, 403, "denied"),
            (TunnelOutcome::Unresolved, 502, "unresolved"),
            (TunnelOutcome::Unreachable, 502, "unreachable"),
            (TunnelOutcome::Timeout, 504, "timeout"),
        ];
        for (t, status, label) in table {
            assert_eq!(t.status().as_u16(), status, "{t:?}");
            assert_eq!(t.label(), label);
            assert_eq!(t.message().is_empty(), status == 200, "{t:?}");
        }
        assert_eq!(TunnelOutcome::BadRequest("why").message(), "why");
    }
}
