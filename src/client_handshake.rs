//! The client side of a WebSocket upgrade, to an upstream member: write the
//! request, read the answer's head, check it. What the member sends after
//! its 101 in the same read (a greeting frame) is kept for the relay, which
//! then owns the raw stream.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// The largest response head accepted from a member.
const MAX_HEAD: usize = 16 << 10;
/// Most response headers accepted from a member.
const MAX_HEADERS: usize = 64;

/// The member's answer.
pub(crate) enum Answer {
    /// 101 with a valid accept key: the response, and the bytes that came
    /// after its head.
    Upgraded(Response<()>, Vec<u8>),
    /// Any other status: the response with the part of the body that came
    /// with the head.
    Refused(Response<Option<Vec<u8>>>),
}

/// Why the exchange failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UpgradeError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("the connection closed before a complete answer")]
    Closed,
    #[error("bad answer: {0}")]
    Bad(&'static str),
    /// A 101 whose answer to our permessage-deflate offer cannot be taken.
    #[error("bad permessage-deflate answer: {0}")]
    Extension(&'static str),
}

/// Send `request` (its path and query, its headers) on `io` and read the
/// answer. The caller bounds the time.
pub(crate) async fn upgrade<S>(io: &mut S, request: &Request<()>) -> Result<Answer, UpgradeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    io.write_all(&request_head(request)).await?;
    io.flush().await?;
    let mut buf = Vec::with_capacity(1024);
    loop {
        if buf.len() >= MAX_HEAD {
            return Err(UpgradeError::Bad("response head too large"));
        }
        let mut chunk = [0u8; 1024];
        let n = io.read(&mut chunk).await?;
        if n == 0 {
            return Err(UpgradeError::Closed);
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(answer) = parse(&buf, request.headers())? {
            return Ok(answer);
        }
    }
}

fn request_head(request: &Request<()>) -> Vec<u8> {
    let target = request.uri().path_and_query().map_or("/", |p| p.as_str());
    let mut head = Vec::with_capacity(512);
    head.extend_from_slice(format!("GET {target} HTTP/1.1\r\n").as_bytes());
    for (name, value) in request.headers() {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    head
}

/// The answer, once `buf` holds its whole head.
fn parse(buf: &[u8], sent: &HeaderMap) -> Result<Option<Answer>, UpgradeError> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut head = httparse::Response::new(&mut slots);
    let len = match head.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(UpgradeError::Bad("not an HTTP response")),
    };
    let status = head
        .code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or(UpgradeError::Bad("no status"))?;
    let mut headers = HeaderMap::with_capacity(head.headers.len());
    for h in head.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes());
        let value = HeaderValue::from_bytes(h.value);
        if let (Ok(name), Ok(value)) = (name, value) {
            headers.append(name, value);
        }
    }
    let rest = buf[len..].to_vec();
    if status != StatusCode::SWITCHING_PROTOCOLS {
        let mut response = Response::new((!rest.is_empty()).then_some(rest));
        *response.status_mut() = status;
        *response.headers_mut() = headers;
        return Ok(Some(Answer::Refused(response)));
    }
    check_upgrade(&headers, sent)?;
    let mut response = Response::new(());
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    Ok(Some(Answer::Upgraded(response, rest)))
}

/// RFC 6455 §4.1: the 101 must upgrade to websocket, carry the accept key
/// for our key, and choose no extension and no subprotocol we did not offer.
fn check_upgrade(got: &HeaderMap, sent: &HeaderMap) -> Result<(), UpgradeError> {
    let has_token = |name: header::HeaderName, token: &str| {
        got.get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    if !has_token(header::UPGRADE, "websocket") || !has_token(header::CONNECTION, "upgrade") {
        return Err(UpgradeError::Bad("not an upgrade to websocket"));
    }
    let expected = sent
        .get(header::SEC_WEBSOCKET_KEY)
        .map(|key| derive_accept_key(key.as_bytes()));
    let accept = got
        .get(header::SEC_WEBSOCKET_ACCEPT)
        .and_then(|v| v.to_str().ok());
    if expected.is_none() || accept != expected.as_deref() {
        return Err(UpgradeError::Bad("wrong Sec-WebSocket-Accept"));
    }
    let extensions = got.get_all(header::SEC_WEBSOCKET_EXTENSIONS);
    if extensions.iter().next().is_some() {
        let offer = sent
            .get(header::SEC_WEBSOCKET_EXTENSIONS)
            .and_then(|v| v.to_str().ok())
            .ok_or(UpgradeError::Bad("an extension nobody asked for"))?;
        let values = extensions.iter().map(|v| v.to_str().unwrap_or(","));
        crate::deflate::upstream_agreed(values, offer).map_err(UpgradeError::Extension)?;
    }
    if let Some(chosen) = got.get(header::SEC_WEBSOCKET_PROTOCOL) {
        let offered = sent
            .get_all(header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|p| chosen.to_str().is_ok_and(|c| p.trim() == c.trim()));
        if !offered {
            return Err(UpgradeError::Bad("a subprotocol nobody offered"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(protocols: Option<&'static str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::SEC_WEBSOCKET_KEY,
            HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ=="),
        );
        if let Some(p) = protocols {
            h.insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(p));
        }
        h
    }

    const GOOD: &str = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
        Connection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n";

    #[test]
    fn a_good_answer_keeps_what_follows_its_head() {
        let wire = format!("{GOOD}\r\n\u{81}\u{2}hi");
        assert!(
            parse(&wire.as_bytes()[..20], &sent(None))
                .unwrap()
                .is_none()
        );
        match parse(wire.as_bytes(), &sent(None)).unwrap() {
            Some(Answer::Upgraded(r, rest)) => {
                assert_eq!(r.status(), 101);
                assert_eq!(rest, "\u{81}\u{2}hi".as_bytes());
            }
            _ => panic!("not upgraded"),
        }
    }

    #[test]
    fn bad_answers_are_refused() {
        let wrong_key = GOOD.replace("s3pP", "AAAA") + "\r\n";
        let extension = format!("{GOOD}Sec-WebSocket-Extensions: permessage-deflate\r\n\r\n");
        let protocol = format!("{GOOD}Sec-WebSocket-Protocol: chat\r\n\r\n");
        for wire in [&wrong_key, &extension, &protocol] {
            assert!(
                matches!(
                    parse(wire.as_bytes(), &sent(None)),
                    Err(UpgradeError::Bad(_))
                ),
                "{wire}"
            );
        }
        // The offered subprotocol may be chosen.
        assert!(matches!(
            parse(protocol.as_bytes(), &sent(Some("v2, chat"))),
            Ok(Some(Answer::Upgraded(..)))
        ));
    }

    #[test]
    fn a_refusal_comes_with_its_body() {
        let wire = b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\n\r\nno";
        match parse(wire, &sent(None)).unwrap() {
            Some(Answer::Refused(r)) => {
                assert_eq!(r.status(), 403);
                assert_eq!(r.body().as_deref(), Some(&b"no"[..]));
            }
            _ => panic!("not refused"),
        }
    }
}
