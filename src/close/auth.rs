//! An upgrade refused by a route's access rules: the HTTP status, the body
//! text and the `wsgate_auth_failures_total{route,reason}` label. 401 when
//! no usable token came, 403 when who came is not let in.

use http::StatusCode;

/// Why a route's access rules refused an upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// `Origin` is not in the route's `origins`.
    Origin,
    /// No `Origin`, and the route has `allow_no_origin = false`.
    NoOrigin,
    /// No token in the header, the cookie or the query.
    MissingToken,
    /// Not a JWT, a claim of the wrong type, or no `sub`.
    Malformed,
    /// The header names an algorithm other than the route's.
    Algorithm,
    /// The signature does not verify (or no key has the token's `kid`).
    Signature,
    /// Past `exp` (plus leeway).
    Expired,
    /// Before `nbf` (minus leeway).
    NotYetValid,
    /// `aud` is not one the route accepts.
    Audience,
    /// `iss` is not one the route accepts.
    Issuer,
    /// `?name=` on a route where a token or certificate names the client.
    NameGiven,
    /// A route with `client_cert = true`, and no verified certificate.
    NoClientCert,
    /// A raw hub room the client may not both subscribe and publish to.
    Channel,
}

impl AuthFailure {
    pub fn status(self) -> StatusCode {
        match self {
            AuthFailure::Origin
            | AuthFailure::NoOrigin
            | AuthFailure::NameGiven
            | AuthFailure::Channel => StatusCode::FORBIDDEN,
            AuthFailure::MissingToken
            | AuthFailure::NoClientCert
            | AuthFailure::Malformed
            | AuthFailure::Algorithm
            | AuthFailure::Signature
            | AuthFailure::Expired
            | AuthFailure::NotYetValid
            | AuthFailure::Audience
            | AuthFailure::Issuer => StatusCode::UNAUTHORIZED,
        }
    }

    /// Value of `wsgate_auth_failures_total{reason}`.
    pub fn label(self) -> &'static str {
        match self {
            AuthFailure::Origin => "origin",
            AuthFailure::NoOrigin => "no_origin",
            AuthFailure::MissingToken => "missing_token",
            AuthFailure::Malformed => "malformed_token",
            AuthFailure::Algorithm => "wrong_algorithm",
            AuthFailure::Signature => "bad_signature",
            AuthFailure::Expired => "expired",
            AuthFailure::NotYetValid => "not_yet_valid",
            AuthFailure::Audience => "wrong_audience",
            AuthFailure::Issuer => "wrong_issuer",
            AuthFailure::NameGiven => "name_given",
            AuthFailure::NoClientCert => "no_client_cert",
            AuthFailure::Channel => "forbidden_channel",
        }
    }

    /// Short body text: what to fix, never which key or what was expected.
    pub fn message(self) -> &'static str {
        match self {
            AuthFailure::Origin | AuthFailure::NoOrigin => "origin not allowed",
            AuthFailure::MissingToken => "a token is required",
            AuthFailure::Malformed
            | AuthFailure::Algorithm
            | AuthFailure::Signature
            | AuthFailure::Audience
            | AuthFailure::Issuer => "invalid token",
            AuthFailure::Expired => "token expired",
            AuthFailure::NotYetValid => "token not yet valid",
            AuthFailure::NameGiven => "the token names the client; ?name= is not allowed",
            AuthFailure::NoClientCert => "a client certificate is required",
            AuthFailure::Channel => "this client may not join that room",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_failure_table() {
        let table = [
            (AuthFailure::Origin, 403, "origin"),
            (AuthFailure::NoOrigin, 403, "no_origin"),
            (AuthFailure::MissingToken, 401, "missing_token"),
            (AuthFailure::Malformed, 401, "malformed_token"),
            (AuthFailure::Algorithm, 401, "wrong_algorithm"),
            (AuthFailure::Signature, 401, "bad_signature"),
            (AuthFailure::Expired, 401, "expired"),
            (AuthFailure::NotYetValid, 401, "not_yet_valid"),
            (AuthFailure::Audience, 401, "wrong_audience"),
            (AuthFailure::Issuer, 401, "wrong_issuer"),
            (AuthFailure::NameGiven, 403, "name_given"),
            (AuthFailure::NoClientCert, 401, "no_client_cert"),
            (AuthFailure::Channel, 403, "forbidden_channel"),
        ];
        for (f, status, label) in table {
            assert_eq!(f.status().as_u16(), status, "{f:?}");
            assert_eq!(f.label(), label, "{f:?}");
        }
    }
}
