//! A member session over an in-memory stream, the client's side written
//! and read as raw frames: pings, fragments, every close code, and the
//! size of what an idle member holds.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio_util::sync::CancellationToken;

use super::*;
use crate::config::{Config, ConfigSource, RouteKind};
use crate::frame::{Header, MAX_HEADER, apply_mask, server_frame};
use crate::hub::Hub;
use crate::hub::access::ChannelAccess;
use crate::hub::session::{HubClient, serve};
use crate::metrics::RouteMetrics;
use crate::session::SessionCtx;

const CONFIG: &str = r#"
    [tls]
    self_signed_if_missing = true
    cert = "/nonexistent/wsgate-test/cert.pem"
    key = "/nonexistent/wsgate-test/key.pem"
    [limits]
    max_message_size = 1000
    ping_interval = "off"
    close_timeout = "2s"
    [[routes]]
    path = "/chat"
    kind = "hub"
    protocol = "json"
"#;

struct Setup {
    config: Config,
    hub: Hub,
    metrics: RouteMetrics,
    cancel: CancellationToken,
}

fn setup() -> Setup {
    let config = Config::load(ConfigSource::Text(CONFIG), Some(HashMap::new())).unwrap();
    let hub = Hub::new(config.hub.clone()).unwrap();
    let metrics = RouteMetrics::new(&config.routes[0]);
    Setup {
        config,
        hub,
        metrics,
        cancel: CancellationToken::new(),
    }
}

impl Setup {
    fn ctx(&self) -> SessionCtx<'_> {
        SessionCtx {
            metrics: &self.metrics,
            limits: &self.config.limits,
            cancel: &self.cancel,
            expiry: None,
        }
    }

    fn client(&self, name: &str) -> HubClient {
        let RouteKind::Hub(route) = &self.config.routes[0].kind else {
            panic!("a hub route");
        };
        let route = Arc::new((**route).clone());
        HubClient {
            registration: self
                .hub
                .register(
                    Some(name),
                    &route,
                    ChannelAccess::new(None, &route),
                    None,
                    None,
                )
                .unwrap(),
            route,
            room: None,
            deflate: None,
        }
    }
}

/// A client frame: masked, FIN as given.
fn masked(fin: bool, opcode: OpCode, payload: &[u8]) -> Vec<u8> {
    let key = [0x37, 0xFA, 0x21, 0x3D];
    let header = Header {
        fin,
        rsv: 0,
        opcode,
        mask: Some(key),
        len: payload.len() as u64,
    };
    let mut head = [0; MAX_HEADER];
    let n = header.encode(&mut head);
    let mut body = payload.to_vec();
    apply_mask(&mut body, key, 0);
    [&head[..n], &body[..]].concat()
}

/// The next whole frame the gateway sent: opcode and payload.
async fn next_frame(io: &mut DuplexStream, held: &mut Vec<u8>) -> (OpCode, Vec<u8>) {
    loop {
        if let Some((h, at)) = Header::parse(held).unwrap() {
            let end = at + h.len as usize;
            if held.len() >= end {
                assert!(h.fin && h.mask.is_none());
                let payload = held[at..end].to_vec();
                held.drain(..end);
                return (h.opcode, payload);
            }
        }
        let mut chunk = [0; 4096];
        let n = io.read(&mut chunk).await.unwrap();
        assert!(n > 0, "the gateway closed the stream");
        held.extend_from_slice(&chunk[..n]);
    }
}

fn close_code(payload: &[u8]) -> u16 {
    u16::from_be_bytes([payload[0], payload[1]])
}

/// Run a member session against `script` (frames from the client) and
/// return the frames it was sent up to its Close, and how it ended.
async fn session(script: Vec<u8>) -> (Vec<(OpCode, Vec<u8>)>, SessionEnd) {
    let s = setup();
    let (gateway, mut client) = tokio::io::duplex(1 << 16);
    let ctx = s.ctx();
    let serving = serve(Box::new(gateway), &ctx, &s.hub, s.client("alice"));
    let talking = async {
        client.write_all(&script).await.unwrap();
        let (mut held, mut frames) = (Vec::new(), Vec::new());
        loop {
            let frame = next_frame(&mut client, &mut held).await;
            let close = frame.0 == OpCode::Close;
            frames.push(frame);
            if close {
                // Our side of the close handshake, as a client does it.
                let _ = client.write_all(&masked(true, OpCode::Close, &[])).await;
                return frames;
            }
        }
    };
    let within = std::time::Duration::from_secs(10);
    let (end, frames) = tokio::time::timeout(within, async { tokio::join!(serving, talking) })
        .await
        .expect("the session ends");
    (frames, end)
}

#[tokio::test]
async fn pings_fragments_and_a_close_from_the_client() {
    let request = br#"{"type":"presence","channel":"lobby","id":7}"#;
    let mut script = masked(true, OpCode::Ping, b"p1");
    script.extend(masked(false, OpCode::Text, &request[..10]));
    script.extend(masked(true, OpCode::Ping, b"p2"));
    script.extend(masked(true, OpCode::Continuation, &request[10..]));
    script.extend(masked(true, OpCode::Close, &[0x0F, 0xA0, b'b', b'y', b'e']));
    let (frames, end) = session(script).await;
    assert!(matches!(end, SessionEnd::Closed(Side::Client, Some(_))));
    let texts: Vec<String> = frames
        .iter()
        .filter(|(op, _)| *op == OpCode::Text)
        .map(|(_, p)| String::from_utf8(p.clone()).unwrap())
        .collect();
    assert!(texts[0].contains(r#""type":"welcome""#), "{texts:?}");
    assert!(texts[1].contains(r#""id":7"#), "{texts:?}");
    let pongs: Vec<&[u8]> = frames
        .iter()
        .filter(|(op, _)| *op == OpCode::Pong)
        .map(|(_, p)| &p[..])
        .collect();
    assert_eq!(pongs, [&b"p1"[..], b"p2"]);
    // Their Close comes back with their code and reason.
    let (op, payload) = frames.last().unwrap();
    assert_eq!(
        (*op, &payload[..]),
        (OpCode::Close, &[0x0F, 0xA0, b'b', b'y', b'e'][..])
    );
}

#[tokio::test]
async fn broken_rules_get_their_close_codes() {
    let cases: [(Vec<u8>, u16); 5] = [
        (masked(true, OpCode::Text, &[b'a', 0xC0, 0xAF]), 1007),
        (masked(true, OpCode::Binary, &[0; 1001]), 1009),
        (masked(true, OpCode::Continuation, b"x"), 1002),
        (masked(true, OpCode::Close, &[0x03, 0xED]), 1002),
        (server_frame(OpCode::Text, b"unmasked"), 1002),
    ];
    for (script, code) in cases {
        let (frames, end) = session(script).await;
        assert!(
            matches!(end, SessionEnd::Broken(Side::Client, _)),
            "{end:?}"
        );
        let (op, payload) = frames.last().unwrap();
        assert_eq!((*op, close_code(payload)), (OpCode::Close, code));
    }
}

#[tokio::test]
async fn an_idle_member_holds_little() {
    let s = setup();
    let (gateway, _client) = tokio::io::duplex(64);
    let ctx = s.ctx();
    let member = Member::new(Box::new(gateway), ctx.limits, None);
    assert!(member.read_capacity() <= 256);
    assert!(size_of_val(&member) <= 384, "{}", size_of_val(&member));
    let (gateway, _client) = tokio::io::duplex(64);
    let task = serve(Box::new(gateway), &ctx, &s.hub, s.client("bob"));
    let size = size_of_val(&task);
    // About 1.2 KiB: the member's state (320 B) and the loop's waits;
    // a write's deadlines are boxed only while it runs.
    assert!(size <= 1280, "the session's future is {size} bytes");
}

#[test]
fn payload_lengths_of_queued_frames() {
    for len in [0, 125, 126, 70_000] {
        let frame = Bytes::from(server_frame(OpCode::Binary, &vec![1; len]));
        assert_eq!(payload_len(&frame), len);
    }
}
