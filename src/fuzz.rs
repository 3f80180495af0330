//! Entry points for the fuzz targets (`fuzz/`, run with `cargo +nightly
//! fuzz`) and for the corpus test (`tests/fuzz_corpus.rs`, which runs every
//! seed and every past finding on stable). Each takes arbitrary bytes, runs
//! one parser on them the way the gateway runs it on a peer's (or an
//! operator's) input, and panics only where an invariant breaks: a crash,
//! a hang or a broken invariant is a finding.
//!
//! Not an API: hidden from the docs, stable only for the fuzz targets.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, OnceLock};

use http::{HeaderValue, Request, Version};

use crate::config::{Config, ConfigSource, Route, RouteKind};
use crate::deflate::{self, ContextBudget};
use crate::frame::{Inbound, OpCode, Rules, Sender, Step, parse_close};
use crate::route::RouteTable;

/// The routes and tunnel rules the request targets are checked against:
/// every route kind, subprotocols, compression, origins.
const CONFIG: &str = r#"
[tls]
cert = "/nonexistent/wsgate-fuzz/cert.pem"
key = "/nonexistent/wsgate-fuzz/key.pem"
self_signed_if_missing = true

[tunnel]
names = ["gw.example.com", "*.gw.example.com"]
allow = ["api.example.com:443", "*.internal:*", "10.1.0.0/16:8443", "[::1]:9000"]
users = ["ann:s3cret"]

[[routes]]
path = "/echo"
kind = "echo"
subprotocols = ["chat", "v2.json"]
compression_context_takeover = true

[[routes]]
host = "*.example.com"
path = "/up"
kind = "upstream"
upstreams = ["ws://127.0.0.1:9000/base?k=v", "wss://backend.internal:8443"]
strip_prefix = true
origins = ["https://app.example.com"]

[[routes]]
path = "/hub"
kind = "hub"
"#;

fn config() -> &'static Config {
    static CONFIG_: OnceLock<Config> = OnceLock::new();
    CONFIG_.get_or_init(|| {
        Config::load(ConfigSource::Text(CONFIG), Some(HashMap::new()))
            .expect("the fuzz config loads")
    })
}

/// An HTTP/1.1 request head as hyper would hand it over (httparse, at most
/// 64 headers), or `None` where hyper would answer 400 itself. A first line
/// ending in `HTTP/2.0` stands for an HTTP/2 request: its `x-protocol`
/// header becomes the `:protocol` of an extended CONNECT.
fn parse_head(data: &[u8]) -> Option<Request<()>> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut head = httparse::Request::new(&mut headers);
    let http2 = data.windows(10).any(|w| w == b" HTTP/2.0\r");
    let data = match http2 {
        true => {
            // httparse knows 1.x only: read it as 1.1.
            let at = data.windows(10).position(|w| w == b" HTTP/2.0\r")?;
            [&data[..at], b" HTTP/1.1\r", &data[at + 10..]].concat()
        }
        false => data.to_vec(),
    };
    head.parse(&data).ok()?;
    let mut builder = Request::builder()
        .method(head.method?)
        .uri(head.path?)
        .version(match (http2, head.version?) {
            (true, _) => Version::HTTP_2,
            (false, 0) => Version::HTTP_10,
            (false, _) => Version::HTTP_11,
        });
    for h in head.headers.iter() {
        if http2 && h.name.eq_ignore_ascii_case("x-protocol") {
            let protocol = std::str::from_utf8(h.value).ok()?;
            builder = builder.extension(hyper::ext::Protocol::from(protocol));
        }
        builder = builder.header(h.name, HeaderValue::from_bytes(h.value).ok()?);
    }
    builder.body(()).ok()
}

/// The upgrade check and everything the gateway reads from an upgrade
/// request before it answers: `:authority`, the route, subprotocols,
/// permessage-deflate offers, the request a member would get.
pub fn request_head(data: &[u8]) {
    let Some(mut req) = parse_head(data) else {
        return;
    };
    let config = config();
    let routes = RouteTable::new(&config.routes, |_| ());
    let protocol = match req.version() {
        Version::HTTP_2 => crate::metrics::Protocol::Http2,
        _ => crate::metrics::Protocol::Http1,
    };
    let _ = crate::handshake::asks_for_websocket(&req);
    let front = crate::handshake::Front {
        peer: ([127, 0, 0, 1], 1).into(),
        tls: true,
        connect: false,
        client_cert: None,
        sni: Some("localhost".into()),
    };
    if crate::handshake::http2_as_http1(&mut req, &front, protocol).is_err() {
        return;
    }
    let Ok((route, _, accept)) = crate::handshake::check(&req, &routes) else {
        return;
    };
    if let Some(accept) = accept {
        assert_eq!(accept.len(), 28, "an accept value is 20 bytes in base64");
    }
    if let Some(served) = &route.subprotocols
        && let Ok(Some(chosen)) = crate::subprotocol::choose(req.headers(), served)
    {
        let chosen = chosen.to_str().expect("a chosen subprotocol is a token");
        assert!(
            served.subprotocols.iter().any(|s| s == chosen),
            "chose {chosen:?}, not served"
        );
    }
    if let Some(deflate) = route.deflate() {
        let offers = req
            .headers()
            .get_all(http::header::SEC_WEBSOCKET_EXTENSIONS);
        let offers = offers.iter().filter_map(|v| v.to_str().ok());
        let budget = Arc::new(ContextBudget::default());
        if let Some(agreed) = deflate::negotiate(offers, deflate, &budget, 4) {
            // The answer is one the gateway itself accepts as a client.
            let offer = deflate::upstream_offer(Some(&agreed));
            assert!(HeaderValue::from_str(&agreed.response).is_ok());
            let _ = deflate::upstream_agreed([agreed.response.as_str()], &offer);
        }
    }
    if let RouteKind::Upstream(upstream) = &route.kind {
        let peer = IpAddr::V4(Ipv4Addr::LOCALHOST);
        for member in &upstream.members {
            let strip = upstream.strip_prefix.then_some(route.path.as_str());
            let out =
                crate::forward::upgrade_request(member, strip, req.uri(), req.headers(), peer);
            assert_eq!(
                out.uri().authority().map(|a| a.as_str()),
                Some(member.authority.as_str()),
                "a member's request goes to that member"
            );
        }
    }
}

/// A CONNECT request: its target, the proxy credentials, and whether the
/// tunnel policy lets it through, with nothing dialled.
pub fn connect_request(data: &[u8]) {
    let Some(req) = parse_head(data) else {
        return;
    };
    let config = config();
    let listen: SocketAddr = ([127, 0, 0, 1], 8443).into();
    let admin: SocketAddr = ([127, 0, 0, 1], 9090).into();
    let policy = crate::tunnel::TunnelPolicy::new(config.tunnel.clone(), listen, admin);
    let _ = crate::tunnel::authorized(&req, &policy.config.users);
    let Ok((host, port)) = crate::tunnel::target(&req) else {
        return;
    };
    assert!(!host.is_empty());
    let sni = [crate::names::ServerName::Exact("secure.example.com".into())];
    let gateway = policy.is_gateway(&host, port, &sni);
    let could = policy.could_tunnel_to(&host, port);
    // What a name resolves to decides the rest: try the forms a hostile
    // resolver could give.
    for addr in [
        SocketAddr::from(([127, 0, 0, 1], port)),
        SocketAddr::from(([10, 1, 2, 3], port)),
        SocketAddr::from(([169, 254, 169, 254], port)),
        SocketAddr::from((admin.ip(), admin.port())),
    ] {
        let may = policy.may_tunnel_to(&host, addr);
        assert!(
            !may || could,
            "{host}:{port} may go to {addr} but could not go anywhere"
        );
        assert!(
            addr != admin || !may,
            "the admin listener is never a target"
        );
    }
    let _ = gateway;
}

/// The frame layer on a peer's bytes, fed in reads of 1 to 32 bytes (the
/// first byte picks the direction, forwarding or keeping, permessage-deflate
/// and the read size). Invariants: every step makes progress within what
/// was read, and a forwarding reader forwards exactly the bytes it read.
/// Compressed messages kept are inflated under the message limit.
pub fn frames(data: &[u8]) {
    let Some((&knobs, input)) = data.split_first() else {
        return;
    };
    let sender = match knobs & 1 {
        0 => Sender::Client,
        _ => Sender::Server,
    };
    let keep = knobs & 2 != 0;
    let mut rules = Rules::new(sender, 1 << 10, 4 << 10);
    if knobs & 4 != 0 {
        rules = rules.with_deflate();
    }
    let read = usize::from(knobs >> 3) + 1;
    let mut inbound = match keep {
        true => Inbound::unmasking(rules),
        false => Inbound::new(rules),
    };
    let (mut buf, mut fed, mut forwarded) = (Vec::new(), 0, Vec::new());
    let mut message = Vec::new();
    while let Ok(step) = inbound.next(&mut buf) {
        let len = match step {
            Step::Need if fed == input.len() => break,
            Step::Need => {
                let end = (fed + read).min(input.len());
                buf.extend_from_slice(&input[fed..end]);
                fed = end;
                continue;
            }
            Step::Data { len, payload, end } => {
                assert!(payload <= len && len <= buf.len() && len > 0);
                if keep {
                    message.extend_from_slice(&buf[len - payload..len]);
                    assert!(message.len() <= 4 << 10, "past the message limit");
                    if end {
                        kept_message(&message, inbound.text(), inbound.compressed());
                        message.clear();
                    }
                }
                len
            }
            Step::Control { len, opcode } => {
                assert!(len <= buf.len() && len > 0);
                if opcode == OpCode::Close {
                    let _ = parse_close(inbound.control());
                }
                len
            }
        };
        forwarded.extend_from_slice(&buf[..len]);
        buf.drain(..len);
    }
    if !keep {
        assert_eq!(
            forwarded,
            input[..forwarded.len()],
            "forwarded bytes differ"
        );
    }
}

/// A whole message a keeping reader got: text is valid UTF-8; a compressed
/// one inflates within the limit or is refused.
fn kept_message(message: &[u8], text: bool, compressed: bool) {
    if !compressed {
        assert!(
            !text || std::str::from_utf8(message).is_ok(),
            "text not UTF-8"
        );
        return;
    }
    if let Ok(inflated) = deflate::codec::inflate(message, 16 << 10) {
        assert!(inflated.len() <= 16 << 10, "inflated past the limit");
    }
}

/// The config loader on operator input: TOML, then, after a 0xFF byte,
/// `WSGATE__KEY=value` lines as the environment. Either it loads, or every
/// issue names a key; a config that loads prints (check-config) and loads
/// back the same.
pub fn config_text(data: &[u8]) {
    let (toml, env) = match data.iter().position(|&b| b == 0xFF) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[][..]),
    };
    let Ok(toml) = std::str::from_utf8(toml) else {
        return;
    };
    let env: HashMap<String, String> = String::from_utf8_lossy(env)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    match Config::load(ConfigSource::Text(toml), Some(env)) {
        Ok(config) => {
            // What check-config prints loads back to the same config,
            // except where it hides a secret.
            let printed = config.to_string();
            if printed.contains("(set)") || printed.contains("(hidden)") {
                return;
            }
            let again = Config::load(ConfigSource::Text(&printed), Some(HashMap::new()));
            let again = again
                .unwrap_or_else(|e| panic!("the printed config does not load: {e}\n{printed}"));
            assert_eq!(again.to_string(), printed, "printing is not stable");
        }
        Err(e) => {
            for issue in &e.issues {
                assert!(!issue.key.is_empty(), "an issue without a key: {issue:?}");
            }
        }
    }
}

/// The hub's JSON protocol: newline-separated requests from two clients in
/// turn, through the real request handler on a real hub. Every answer the
/// hub queues is a JSON object with a `type`.
pub fn hub_json(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let config = config();
    let Some(route) = config.routes.iter().find_map(|r: &Route| match &r.kind {
        RouteKind::Hub(hub) => Some(hub),
        _ => None,
    }) else {
        return;
    };
    // Each field read as raw JSON, as the hub reads a client's `id` and
    // `data` (which come back as they were: any depth, any number).
    type Answer<'a> = std::collections::BTreeMap<String, &'a serde_json::value::RawValue>;
    crate::hub::session::fuzz_requests(&config.hub, route, text.lines().take(64), |answer| {
        let fields: Answer<'_> = serde_json::from_str(answer)
            .unwrap_or_else(|e| panic!("the hub answered with invalid JSON ({e}): {answer}"));
        let kind = fields.get("type").map(|t| t.get());
        assert!(
            kind.is_some_and(|t| t.starts_with('"')),
            "an answer without a type: {answer}"
        );
    });
}
