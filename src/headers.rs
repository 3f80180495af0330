//! Request checks that more than one front door makes: the WebSocket
//! upgrade and CONNECT both refuse a request with a body, and CONNECT's
//! Basic auth and the hub API's bearer token both compare a secret. A leaf:
//! it imports nothing from the crate, so every door can use it.

use http::HeaderMap;
use http::header;
use subtle::{Choice, ConstantTimeEq};

/// The token of an `Authorization: Bearer <token>` header: the scheme in
/// any case (RFC 7235), the token trimmed.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Does the request announce a body (any `Transfer-Encoding`, or a
/// `Content-Length` other than `0`)?
pub(crate) fn has_body(headers: &HeaderMap) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0")
}

/// Is `given` equal to one of `secrets`? Every secret is compared in full,
/// in constant time, so timing does not tell which one (or how much of it)
/// matched; only a length mismatch ends a comparison early.
pub(crate) fn matches_any<'s>(secrets: impl IntoIterator<Item = &'s [u8]>, given: &[u8]) -> bool {
    secrets
        .into_iter()
        .fold(Choice::from(0), |ok, secret| ok | secret.ct_eq(given))
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_is_a_transfer_encoding_or_a_nonzero_length() {
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut map = HeaderMap::new();
            for (name, value) in pairs {
                map.append(*name, http::HeaderValue::from_static(value));
            }
            map
        };
        assert!(!has_body(&headers(&[])));
        assert!(!has_body(&headers(&[("content-length", "0")])));
        assert!(has_body(&headers(&[("content-length", "3")])));
        assert!(has_body(&headers(&[("transfer-encoding", "chunked")])));
    }

    #[test]
    fn secrets_match_exactly() {
        let secrets = ["alice:pw".as_bytes(), b"bob:pw2"];
        assert!(matches_any(secrets, b"bob:pw2"));
        assert!(matches_any(secrets, b"alice:pw"));
        assert!(!matches_any(secrets, b"bob:pw"));
        assert!(!matches_any(secrets, b"bob:pw22"));
        assert!(!matches_any(secrets, b""));
        assert!(!matches_any([], b"alice:pw"));
    }
}
