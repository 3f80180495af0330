//! The upgrade request an upstream member gets for a client's: the client's
//! path and query under the member's, its end-to-end headers (subprotocols,
//! cookies, `Authorization`, ...), the forwarding headers, and a fresh
//! WebSocket key. Pure: no IO, so every rule is a unit test.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Uri};
use tokio_tungstenite::tungstenite::handshake::client::generate_key;

use crate::config::UpstreamUrl;

/// The upgrade request `member` gets for a client's request (`uri`,
/// `headers`, from `peer`): the client's path, less `strip_prefix` (the
/// route's path, when the route strips it), under the member's path, the
/// client's query after the member's, and the headers of [`headers_for`].
pub(crate) fn upgrade_request(
    member: &UpstreamUrl,
    strip_prefix: Option<&str>,
    uri: &Uri,
    headers: &HeaderMap,
    peer: IpAddr,
) -> Request<()> {
    let client_path = uri.path();
    let rest = match strip_prefix {
        Some(prefix) => client_path
            .strip_prefix(prefix.trim_end_matches('/'))
            .unwrap_or(client_path),
        None => client_path,
    };
    let mut target = member.path.clone();
    if !rest.starts_with('/') && !rest.is_empty() {
        target.push('/');
    }
    target.push_str(rest);
    if target.is_empty() {
        target.push('/');
    }
    match (member.query.as_deref(), uri.query()) {
        (Some(a), Some(b)) => target.extend(["?", a, "&", b]),
        (Some(q), None) | (None, Some(q)) => target.extend(["?", q]),
        (None, None) => {}
    }

    let out = headers_for(member, headers, peer);
    // tungstenite wants the absolute URI; only its path and query go on the wire.
    let scheme = if member.secure { "wss" } else { "ws" };
    let mut request = Request::new(());
    *request.uri_mut() = format!("{scheme}://{}{target}", member.authority)
        .parse()
        .unwrap_or_else(|_| Uri::from_static("/"));
    *request.headers_mut() = out;
    request
}

/// The member's headers: the client's end-to-end ones, `X-Forwarded-*` and
/// `Forwarded` for `peer`, and a fresh upgrade handshake to `member`.
fn headers_for(member: &UpstreamUrl, headers: &HeaderMap, peer: IpAddr) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(headers.len() + 8);
    let listed_in_connection: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .collect();
    for (name, value) in headers {
        if !is_hop_by_hop(name) && !listed_in_connection.iter().any(|t| t == name.as_str()) {
            out.append(name.clone(), value.clone());
        }
    }
    let client_host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    append_list(&mut out, X_FORWARDED_FOR, &peer.to_string());
    let for_ = match peer {
        IpAddr::V4(ip) => ip.to_string(),
        IpAddr::V6(ip) => format!("\"[{ip}]\""),
    };
    append_list(
        &mut out,
        header::FORWARDED,
        &format!("for={for_};host=\"{client_host}\";proto=https"),
    );
    insert(&mut out, X_FORWARDED_PROTO, "https");
    insert(&mut out, X_FORWARDED_HOST, client_host);
    insert(&mut out, header::HOST, &member.authority);
    insert(&mut out, header::CONNECTION, "Upgrade");
    insert(&mut out, header::UPGRADE, "websocket");
    insert(&mut out, header::SEC_WEBSOCKET_VERSION, "13");
    insert(&mut out, header::SEC_WEBSOCKET_KEY, &generate_key());
    out
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Headers that belong to one hop (RFC 9110 section 7.6.1), the client's
/// own upgrade handshake (the member gets a fresh one), extensions wsgate does
/// not relay (permessage-deflate), and the ones wsgate sets itself.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    const DROPPED: &[&str] = &[
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-extensions",
        "sec-websocket-accept",
        "x-forwarded-proto",
        "x-forwarded-host",
    ];
    DROPPED.contains(&name.as_str())
}

/// Append `value` to a comma-separated list header, merging repeats.
fn append_list(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    let existing: Vec<&str> = headers
        .get_all(&name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let joined = if existing.is_empty() {
        value.to_owned()
    } else {
        format!("{}, {value}", existing.join(", "))
    };
    insert(headers, name, &joined);
}

fn insert(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.insert(name, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(
        strip: bool,
        member: &str,
        route: &str,
        uri: &Uri,
        headers: &HeaderMap,
        peer: IpAddr,
    ) -> Request<()> {
        let member = UpstreamUrl::parse(member).unwrap();
        upgrade_request(&member, strip.then_some(route), uri, headers, peer)
    }

    fn target(strip: bool, member: &str, route: &str, client: &str) -> String {
        let uri: Uri = client.parse().unwrap();
        let peer = "10.0.0.1".parse().unwrap();
        let r = request(strip, member, route, &uri, &HeaderMap::new(), peer);
        r.uri().path_and_query().unwrap().to_string()
    }

    #[test]
    fn paths_and_queries_are_joined() {
        let cases = [
            (false, "ws://h:1/", "/app", "/app/room?x=1", "/app/room?x=1"),
            (true, "ws://h:1/", "/app", "/app/room?x=1", "/room?x=1"),
            (true, "ws://h:1/", "/app", "/app", "/"),
            (true, "ws://h:1/base", "/app", "/app", "/base"),
            (true, "ws://h:1/base/", "/app", "/app/x", "/base/x"),
            (
                false,
                "ws://h:1/base?k=v",
                "/",
                "/chat?x=1",
                "/base/chat?k=v&x=1",
            ),
            (true, "ws://h:1", "/", "/chat", "/chat"),
        ];
        for (strip, member, route, client, want) in cases {
            assert_eq!(
                target(strip, member, route, client),
                want,
                "{member} {route} {client} strip={strip}"
            );
        }
    }

    #[test]
    fn headers_are_forwarded_and_hop_by_hop_dropped() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("host", "gw.example:8443"),
            ("connection", "Upgrade, X-Secret"),
            ("x-secret", "hop"),
            ("upgrade", "websocket"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("sec-websocket-extensions", "permessage-deflate"),
            ("sec-websocket-protocol", "chat.v2, chat.v1"),
            ("cookie", "session=abc"),
            ("authorization", "Bearer t"),
            ("x-forwarded-for", "192.0.2.1"),
            ("x-forwarded-proto", "http"),
        ] {
            h.append(k, HeaderValue::from_static(v));
        }
        let uri: Uri = "/".parse().unwrap();
        let peer = "2001:db8::7".parse().unwrap();
        let r = request(false, "ws://backend:9000/", "/", &uri, &h, peer);
        let get = |k: &str| r.headers().get(k).map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(get("host").as_deref(), Some("backend:9000"));
        assert_eq!(get("x-secret"), None, "named in Connection");
        assert_eq!(get("sec-websocket-extensions"), None);
        assert_ne!(
            get("sec-websocket-key").as_deref(),
            Some("dGhlIHNhbXBsZSBub25jZQ==")
        );
        assert_eq!(
            get("sec-websocket-protocol").as_deref(),
            Some("chat.v2, chat.v1")
        );
        assert_eq!(get("cookie").as_deref(), Some("session=abc"));
        assert_eq!(get("authorization").as_deref(), Some("Bearer t"));
        assert_eq!(
            get("x-forwarded-for").as_deref(),
            Some("192.0.2.1, 2001:db8::7")
        );
        assert_eq!(get("x-forwarded-proto").as_deref(), Some("https"));
        assert_eq!(get("x-forwarded-host").as_deref(), Some("gw.example:8443"));
        assert_eq!(
            get("forwarded").as_deref(),
            Some("for=\"[2001:db8::7]\";host=\"gw.example:8443\";proto=https")
        );
        assert_eq!(get("connection").as_deref(), Some("Upgrade"));
    }
}
