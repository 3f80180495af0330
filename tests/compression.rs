//! permessage-deflate on hub routes: the answer to a client's offer, its
//! compressed messages taken (inflated, bounded), large messages sent to
//! it compressed while a client without the extension in the same channel
//! gets them plain. Through the relay: compression terminated at the
//! gateway for a backend without it (and the reverse), and compressed
//! frames passed through byte for byte when both sides agreed.

mod common;

use std::io::Write;

use common::backend::Backend;
use common::hub::{json_client, next_json, send_json, subscribe};
use common::{Gateway, Route, Running, metric, read_until_close, upgrade_request, within};
use flate2::Compression;
use flate2::write::{DeflateDecoder, DeflateEncoder};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

const OFFER: &str = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n";

fn gateway() -> Gateway {
    Gateway::builder()
        .limits(|l| l.set("max_message_size", "64KiB"))
        .route(Route::hub("/hub").name("hub").key("compression", "on"))
        .route(
            Route::hub("/plain")
                .name("plain")
                .key("namespace", "hub")
                .key("compression", "off"),
        )
}

/// A gateway with one upstream route, `/relay`, to `addr`, as `route` sets
/// it up.
async fn relay(addr: std::net::SocketAddr, route: impl FnOnce(Route) -> Route) -> Running {
    let upstream = Route::upstream("/relay", [format!("ws://{addr}")]);
    Gateway::builder().route(route(upstream)).start().await
}

/// `path` upgraded with the extra header lines `extra`: the 101's head
/// and the stream.
async fn upgrade(gw: &Running, path: &str, extra: &str) -> (String, TlsStream<TcpStream>) {
    gw.raw_upgrade_with(upgrade_request(path, extra).as_bytes())
        .await
}

/// `payload` as the client's side of permessage-deflate compresses it.
fn deflate(payload: &[u8]) -> Vec<u8> {
    let mut encoder = DeflateEncoder::new(Vec::new(), Compression::default());
    encoder.write_all(payload).unwrap();
    let mut out = encoder.flush_finish().unwrap();
    if out.ends_with(&[0, 0, 0xff, 0xff]) {
        out.truncate(out.len() - 4);
    }
    out
}

/// A message as the client's side inflates it (it ends on a flush, not a
/// final block).
fn inflate(compressed: &[u8]) -> Vec<u8> {
    let mut decoder = DeflateDecoder::new(Vec::new());
    decoder.write_all(compressed).unwrap();
    decoder.write_all(&[0, 0, 0xff, 0xff]).unwrap();
    decoder.flush().unwrap();
    decoder.get_ref().clone()
}

/// A masked client frame, RSV1 set when `compressed`.
async fn send_frame<S: AsyncWrite + Unpin>(
    io: &mut S,
    opcode: u8,
    compressed: bool,
    payload: &[u8],
) {
    let mut frame = vec![0x80 | if compressed { 0x40 } else { 0 } | opcode];
    match payload.len() {
        n if n < 126 => frame.push(0x80 | n as u8),
        n if n < 65536 => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let mask = [7, 13, 21, 42];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    io.write_all(&frame).await.unwrap();
}

/// One frame, unmasked if it was masked: (RSV1 set, opcode, payload).
async fn read_frame<S: AsyncRead + Unpin>(io: &mut S) -> (bool, u8, Vec<u8>) {
    try_read_frame(io).await.expect("a frame")
}

/// The next frame, or `None` at the end of the stream.
async fn try_read_frame<S: AsyncRead + Unpin>(io: &mut S) -> Option<(bool, u8, Vec<u8>)> {
    let b0 = io.read_u8().await.ok()?;
    let b1 = io.read_u8().await.ok()?;
    let len = match b1 & 0x7f {
        126 => u64::from(io.read_u16().await.ok()?),
        127 => io.read_u64().await.ok()?,
        n => u64::from(n),
    };
    let mut mask = [0; 4];
    if b1 & 0x80 != 0 {
        io.read_exact(&mut mask).await.ok()?;
    }
    let mut payload = vec![0; len as usize];
    io.read_exact(&mut payload).await.ok()?;
    for (i, b) in payload.iter_mut().enumerate() {
        *b ^= mask[i % 4];
    }
    Some((b0 & 0x40 != 0, b0 & 0x0f, payload))
}

/// Read an upgrade request on `tcp` and answer it with a 101, with
/// `extensions` if it offered any; the offer.
async fn answer_upgrade(tcp: &mut tokio::net::TcpStream, extensions: &str) -> Option<String> {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(tcp.read_u8().await.unwrap());
    }
    let head = String::from_utf8(head).unwrap();
    let header = |name: &str| {
        head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    };
    let offer = header("sec-websocket-extensions");
    let key = header("sec-websocket-key").unwrap();
    let mut answer = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n",
        derive_accept_key(key.as_bytes())
    );
    if offer.is_some() {
        answer.push_str(&format!("Sec-WebSocket-Extensions: {extensions}\r\n"));
    }
    answer.push_str("\r\n");
    tcp.write_all(answer.as_bytes()).await.unwrap();
    offer
}

/// An echo backend whose answer to a permessage-deflate offer breaks the
/// extension's rules (a `client_max_window_bits` nobody offered); without
/// an offer it is a plain echo. Counts the upgrades it answered.
async fn bad_answer_backend() -> (std::net::SocketAddr, mpsc::Receiver<bool>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (offered_tx, offered) = mpsc::channel(16);
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let offered_tx = offered_tx.clone();
            tokio::spawn(async move {
                let offer =
                    answer_upgrade(&mut tcp, "permessage-deflate; client_max_window_bits=10")
                        .await
                        .is_some();
                offered_tx.send(offer).await.unwrap();
                while let Some((_, opcode, payload)) = try_read_frame(&mut tcp).await {
                    if opcode == 8 {
                        return;
                    }
                    let _ = tcp.write_all(&server_frame(opcode, false, &payload)).await;
                }
            });
        }
    });
    (addr, offered)
}

/// A backend that agrees permessage-deflate when offered (no context
/// kept), reports the offer and each frame it reads, and sends what it is
/// given as server frames (already framed: RSV1 is the test's to set).
async fn deflate_backend() -> (
    std::net::SocketAddr,
    mpsc::Receiver<(Option<String>, (bool, u8, Vec<u8>))>,
    mpsc::Sender<Vec<u8>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (seen_tx, seen) = mpsc::channel(16);
    let (send, mut to_send) = mpsc::channel::<Vec<u8>>(16);
    tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.unwrap();
        let offer =
            answer_upgrade(&mut tcp, "permessage-deflate; server_no_context_takeover").await;
        let (mut rd, mut wr) = tcp.into_split();
        tokio::spawn(async move {
            while let Some(frame) = to_send.recv().await {
                wr.write_all(&frame).await.unwrap();
            }
        });
        loop {
            let frame = read_frame(&mut rd).await;
            if seen_tx.send((offer.clone(), frame)).await.is_err() {
                return;
            }
        }
    });
    (addr, seen, send)
}

/// One side's codecs when both sides keep compression context: each
/// message builds on the ones before.
struct Context {
    compress: flate2::Compress,
    inflate: flate2::Decompress,
}

impl Context {
    fn new() -> Self {
        Context {
            compress: flate2::Compress::new(Compression::fast(), false),
            inflate: flate2::Decompress::new(false),
        }
    }

    fn deflate(&mut self, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(payload.len() + 1024);
        self.compress
            .compress_vec(payload, &mut out, flate2::FlushCompress::Sync)
            .unwrap();
        assert!(out.ends_with(&[0, 0, 0xff, 0xff]));
        out.truncate(out.len() - 4);
        out
    }

    fn inflate(&mut self, compressed: &[u8]) -> Vec<u8> {
        let mut input = compressed.to_vec();
        input.extend_from_slice(&[0, 0, 0xff, 0xff]);
        let mut out = Vec::with_capacity(1 << 20);
        self.inflate
            .decompress_vec(&input, &mut out, flate2::FlushDecompress::Sync)
            .unwrap();
        out
    }
}

/// An unmasked server frame, RSV1 set when `compressed`.
fn server_frame(opcode: u8, compressed: bool, payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![0x80 | if compressed { 0x40 } else { 0 } | opcode];
    match payload.len() {
        n if n < 126 => frame.push(n as u8),
        n => {
            frame.push(126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
    }
    frame.extend_from_slice(payload);
    frame
}

/// The next text message, inflated if it came compressed, and whether it did.
async fn read_json<S: AsyncRead + Unpin>(io: &mut S) -> (bool, Value) {
    let (compressed, opcode, payload) = read_frame(io).await;
    assert_eq!(opcode, 1, "a text frame");
    let text = if compressed {
        inflate(&payload)
    } else {
        payload
    };
    (compressed, serde_json::from_slice(&text).unwrap())
}

#[tokio::test]
async fn a_compressing_client_and_a_plain_one_share_a_channel() {
    within(30, async {
        let gw = gateway().start().await;
        // Offered by a browser: accepted, neither side keeping context.
        let request = upgrade_request("/hub?name=zed", OFFER);
        let (head, mut zed) = gw.raw_upgrade_with(request.as_bytes()).await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        assert!(
            head.to_ascii_lowercase().contains(
                "sec-websocket-extensions: permessage-deflate; server_no_context_takeover; \
                 client_no_context_takeover; client_max_window_bits=15\r\n"
            ),
            "{head}"
        );
        // Small messages go as they are.
        let (compressed, welcome) = read_json(&mut zed).await;
        assert_eq!(
            (compressed, welcome["type"].as_str()),
            (false, Some("welcome"))
        );
        // A compressed request is inflated and answered.
        let request = json!({"type": "subscribe", "channel": "news", "id": 1}).to_string();
        send_frame(&mut zed, 1, true, &deflate(request.as_bytes())).await;
        let (_, ack) = read_json(&mut zed).await;
        assert_eq!(
            (ack["type"].as_str(), ack["id"].as_u64()),
            (Some("ack"), Some(1))
        );

        // A client without the extension, on a route without it.
        let mut pat = json_client(&gw, "/plain", "pat").await;
        assert_eq!(subscribe(&mut pat, "news", 1).await["type"], "ack");
        let story = "the quick brown fox jumps over the lazy dog; ".repeat(40);
        send_frame(
            &mut zed,
            1,
            true,
            &deflate(
                json!({"type": "publish", "channel": "news", "id": 2, "data": story})
                    .to_string()
                    .as_bytes(),
            ),
        )
        .await;
        let (_, ack) = read_json(&mut zed).await;
        assert_eq!(ack["seq"], 1);
        let plain = next_json(&mut pat).await;
        assert_eq!(plain["data"].as_str(), Some(story.as_str()));
        // Pat publishes it back: Zed gets it compressed, and much smaller.
        send_json(
            &mut pat,
            json!({"type": "publish", "channel": "news", "id": 3, "data": story}),
        )
        .await;
        assert_eq!(next_json(&mut pat).await["type"], "ack");
        let (compressed, opcode, payload) = read_frame(&mut zed).await;
        assert!(compressed && opcode == 1);
        assert!(
            payload.len() * 4 < story.len(),
            "{} bytes for {}",
            payload.len(),
            story.len()
        );
        let message: Value = serde_json::from_slice(&inflate(&payload)).unwrap();
        assert_eq!(
            (message["seq"].as_u64(), message["data"].as_str()),
            (Some(2), Some(story.as_str()))
        );
        // What compression saved, both ways, in the route's counts.
        let scrape = gw.admin_get("/metrics").await.1;
        for direction in ["client_to_upstream", "upstream_to_client"] {
            let series = |form: &str| {
                let labels = format!("route=\"hub\",direction=\"{direction}\",form=\"{form}\"");
                metric(
                    &scrape,
                    &format!("wsgate_compression_bytes_total{{{labels}}}"),
                )
                .unwrap_or(0.0)
            };
            let (compressed, uncompressed) = (series("compressed"), series("uncompressed"));
            assert!(
                compressed > 0.0 && compressed * 4.0 < uncompressed,
                "{scrape}"
            );
        }
    })
    .await
}

#[tokio::test]
async fn a_deflate_bomb_is_closed_with_1009_and_a_route_without_compression_declines() {
    within(30, async {
        let gw = gateway().start().await;
        let (head, mut bomber) = gw
            .raw_upgrade_with(upgrade_request("/hub?name=bomber", OFFER).as_bytes())
            .await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        read_json(&mut bomber).await;
        // 600 bytes that inflate to 1 MiB, over the 64 KiB message limit.
        let bomb = deflate(&vec![b'a'; 1 << 20]);
        assert!(bomb.len() < 4096);
        send_frame(&mut bomber, 1, true, &bomb).await;
        let (_, code) = read_until_close(&mut bomber).await;
        assert_eq!(code, 1009);
        // RSV1 without the extension is a protocol error.
        let (head, mut plain) = gw
            .raw_upgrade_with(upgrade_request("/plain?name=pat", OFFER).as_bytes())
            .await;
        assert!(
            !head
                .to_ascii_lowercase()
                .contains("sec-websocket-extensions"),
            "{head}"
        );
        read_json(&mut plain).await;
        send_frame(&mut plain, 1, true, &deflate(b"{}")).await;
        let (_, code) = read_until_close(&mut plain).await;
        assert_eq!(code, 1002);
    })
    .await
}

#[tokio::test]
async fn the_relay_terminates_compression_for_a_backend_without_it() {
    within(30, async {
        let mut backend = Backend::plain().await;
        let gw = Gateway::builder()
            .limits(|l| l.set("max_message_size", "64KiB"))
            .route(Route::upstream("/relay", [format!("ws://{}", backend.addr)]).name("terminated"))
            .start()
            .await;
        let (head, mut client) = gw
            .raw_upgrade_with(upgrade_request("/relay", OFFER).as_bytes())
            .await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        assert!(
            head.to_ascii_lowercase().contains(
                "sec-websocket-extensions: permessage-deflate; server_no_context_takeover"
            ),
            "{head}"
        );
        // The backend (tokio-tungstenite, without the extension) was
        // offered it, declined, and gets plain frames.
        let (_, headers) = backend.next_upgrade().await;
        assert_eq!(
            headers["sec-websocket-extensions"],
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        );
        // A compressed message in two frames: inflated on the way up (the
        // backend would close on RSV1), and its echo compressed on the
        // way down.
        let story = "the quick brown fox jumps over the lazy dog; ".repeat(40);
        let compressed = deflate(story.as_bytes());
        let (first, rest) = compressed.split_at(compressed.len() / 2);
        let mut frames = Vec::new();
        for (opcode, fin, part) in [(1u8, false, first), (0, true, rest)] {
            let mut one = Vec::new();
            send_frame(&mut one, opcode, opcode == 1, part).await;
            if !fin {
                one[0] &= 0x7f;
            }
            frames.extend(one);
        }
        client.write_all(&frames).await.unwrap();
        let (compressed, opcode, payload) = read_frame(&mut client).await;
        assert!(compressed && opcode == 1);
        assert!(payload.len() * 4 < story.len(), "{}", payload.len());
        assert_eq!(inflate(&payload), story.as_bytes());
        // Both ways counted: what went on the wire, and what it was.
        let scrape = gw.admin_get("/metrics").await.1;
        for direction in ["client_to_upstream", "upstream_to_client"] {
            let series = |form: &str| {
                let labels =
                    format!("route=\"terminated\",direction=\"{direction}\",form=\"{form}\"");
                metric(
                    &scrape,
                    &format!("wsgate_compression_bytes_total{{{labels}}}"),
                )
            };
            assert_eq!(series("uncompressed"), Some(story.len() as f64), "{scrape}");
            let compressed = series("compressed").unwrap_or(0.0);
            assert!(
                compressed > 0.0 && compressed * 4.0 < story.len() as f64,
                "{scrape}"
            );
        }
        // A small message goes plain both ways.
        send_frame(&mut client, 1, false, b"hello").await;
        assert_eq!(read_frame(&mut client).await, (false, 1, b"hello".to_vec()));
        // Text is checked once inflated: 1007.
        send_frame(&mut client, 1, true, &deflate(&[b'a', 0xC0, 0xAF])).await;
        let (_, code) = read_until_close(&mut client).await;
        assert_eq!(code, 1007);

        // A deflate bomb is stopped at the limit: 1009.
        let (_, mut bomber) = gw
            .raw_upgrade_with(upgrade_request("/relay", OFFER).as_bytes())
            .await;
        send_frame(&mut bomber, 2, true, &deflate(&vec![0; 1 << 20])).await;
        let (_, code) = read_until_close(&mut bomber).await;
        assert_eq!(code, 1009);
    })
    .await
}

#[tokio::test]
async fn compressed_frames_pass_through_untouched_when_both_sides_agree() {
    within(30, async {
        let (addr, mut seen, send) = deflate_backend().await;
        // Compression is on by default, offered upstream when the client
        // agreed it.
        let gw = relay(addr, |r| r).await;
        let (head, mut client) = upgrade(&gw, "/relay", OFFER).await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        let story = "pass me through, as I am; ".repeat(50);
        let up = deflate(story.as_bytes());
        send_frame(&mut client, 1, true, &up).await;
        let (offer, frame) = seen.recv().await.unwrap();
        assert!(offer.is_some_and(|o| o.starts_with("permessage-deflate")));
        // The backend got the client's compressed bytes as sent.
        assert_eq!(frame, (true, 1, up.clone()));
        let down = deflate(format!("and back: {story}").as_bytes());
        send.send(server_frame(1, true, &down)).await.unwrap();
        assert_eq!(read_frame(&mut client).await, (true, 1, down));
    })
    .await
}

#[tokio::test]
async fn a_plain_client_gets_a_compressing_backend_inflated() {
    within(30, async {
        let (addr, mut seen, send) = deflate_backend().await;
        let gw = relay(addr, |r| r.key("upstream_compression", "always")).await;
        // No offer from this client (a Qt one): with "always", the backend
        // is offered the extension and agrees.
        let (head, mut client) = upgrade(&gw, "/relay", "").await;
        assert!(
            !head
                .to_ascii_lowercase()
                .contains("sec-websocket-extensions"),
            "{head}"
        );
        let story = "plain up, compressed down; ".repeat(50);
        send_frame(&mut client, 1, false, story.as_bytes()).await;
        let (offer, frame) = seen.recv().await.unwrap();
        assert!(offer.is_some());
        assert_eq!(frame, (false, 1, story.as_bytes().to_vec()));
        // Compressed by the backend, inflated for the client: one frame up
        // to 64 KiB, frames of 64 KiB beyond.
        let big: String = (0..15_000).map(|i| format!("{i},")).collect();
        assert!(big.len() > 64 << 10);
        for message in [story.clone(), big] {
            send.send(server_frame(1, true, &deflate(message.as_bytes())))
                .await
                .unwrap();
            let mut got = Vec::new();
            loop {
                let (compressed, opcode, payload) = read_frame(&mut client).await;
                assert!(!compressed);
                assert_eq!(opcode, if got.is_empty() { 1 } else { 0 });
                got.extend(payload);
                if got.len() >= message.len() {
                    break;
                }
            }
            assert_eq!(got, message.as_bytes());
        }
    })
    .await
}

#[tokio::test]
async fn with_upstream_compression_off_the_gateway_inflates_for_the_backend() {
    within(30, async {
        let (addr, mut seen, _send) = deflate_backend().await;
        let gw = relay(addr, |r| r.key("upstream_compression", "off")).await;
        let (head, mut client) = upgrade(&gw, "/relay", OFFER).await;
        assert!(
            head.to_ascii_lowercase().contains("permessage-deflate"),
            "{head}"
        );
        let story = "inflated at the edge; ".repeat(50);
        send_frame(&mut client, 1, true, &deflate(story.as_bytes())).await;
        let (offer, frame) = seen.recv().await.unwrap();
        assert_eq!(offer, None);
        assert_eq!(frame, (false, 1, story.into_bytes()));
        // A message the client sent plain, in two frames, goes on as it
        // came: the same two frames.
        let mut frames = Vec::new();
        send_frame(&mut frames, 2, false, b"first half, ").await;
        frames[0] &= 0x7f;
        send_frame(&mut frames, 0, false, b"second half").await;
        client.write_all(&frames).await.unwrap();
        assert_eq!(
            seen.recv().await.unwrap().1,
            (false, 2, b"first half, ".to_vec())
        );
        assert_eq!(
            seen.recv().await.unwrap().1,
            (false, 0, b"second half".to_vec())
        );
    })
    .await
}

// One test: the gauge of places taken is the process's.
#[tokio::test]
async fn context_is_kept_within_the_budget_on_echo_relay_and_hub() {
    within(30, async {
        let backend = Backend::plain().await;
        let gw = Gateway::builder()
            .limits(|l| l.set("compression_contexts", 1))
            .route(
                Route::echo("/echo")
                    .name("kept")
                    .key("compression_context_takeover", true),
            )
            .route(
                Route::upstream("/relay", [format!("ws://{}", backend.addr)])
                    .key("compression_context_takeover", true),
            )
            .start()
            .await;
        let offer = "Sec-WebSocket-Extensions: permessage-deflate\r\n";
        let message = br#"{"type":"quote","symbol":"ACME","bid":101.25,"ask":101.5}"#.repeat(6);
        for route in ["/echo", "/relay"] {
            let (head, mut client) = gw
                .raw_upgrade_with(upgrade_request(route, offer).as_bytes())
                .await;
            // Context both ways: nothing to say but the name.
            assert!(
                head.to_ascii_lowercase()
                    .contains("sec-websocket-extensions: permessage-deflate\r\n"),
                "{head}"
            );
            let scrape = gw.admin_get("/metrics").await.1;
            assert_eq!(metric(&scrape, "wsgate_compression_contexts"), Some(1.0));
            // The budget (1) is spent: a second client gets the terms
            // without context, at once.
            let (head, other) = gw
                .raw_upgrade_with(upgrade_request(route, offer).as_bytes())
                .await;
            assert!(
                head.contains("server_no_context_takeover; client_no_context_takeover"),
                "{head}"
            );
            drop(other);
            let mut ours = Context::new();
            let mut sizes = Vec::new();
            for _ in 0..3 {
                let sent = ours.deflate(&message);
                sizes.push(sent.len());
                send_frame(&mut client, 1, true, &sent).await;
                let (compressed, opcode, payload) = read_frame(&mut client).await;
                assert!(compressed && opcode == 1);
                assert_eq!(ours.inflate(&payload), message);
                sizes.push(payload.len());
            }
            // Each side's repeats refer back: a fraction of the first.
            assert!(
                sizes[2] * 3 < sizes[0] && sizes[3] * 3 < sizes[1],
                "{route}: {sizes:?}"
            );
            send_frame(&mut client, 8, false, &[0x03, 0xe8]).await;
            let (_, code) = read_until_close(&mut client).await;
            assert_eq!(code, 1000);
            // Given back when the session ends.
            let mut freed = false;
            for _ in 0..1000 {
                let scrape = gw.admin_get("/metrics").await.1;
                if metric(&scrape, "wsgate_compression_contexts") == Some(0.0) {
                    freed = true;
                    break;
                }
                tokio::task::yield_now().await;
            }
            assert!(freed, "{route}: the place was given back");
        }
        a_hub_client_with_context_gets_its_own_compression().await;
    })
    .await
}

/// A hub client whose context this server keeps gets its messages
/// compressed by its own session (a channel message compressed once for
/// all would not build on its earlier ones).
async fn a_hub_client_with_context_gets_its_own_compression() {
    {
        let gw = Gateway::builder()
            .route(
                Route::hub("/hub")
                    .key("namespace", "kept")
                    .key("compression_context_takeover", true),
            )
            .route(
                Route::hub("/plain")
                    .key("namespace", "kept")
                    .key("compression", "off"),
            )
            .start()
            .await;
        let offer = "Sec-WebSocket-Extensions: permessage-deflate\r\n";
        let (head, mut kay) = gw
            .raw_upgrade_with(upgrade_request("/hub?name=kay", offer).as_bytes())
            .await;
        assert!(
            head.to_ascii_lowercase()
                .contains("sec-websocket-extensions: permessage-deflate\r\n"),
            "{head}"
        );
        let mut ours = Context::new();
        // Small messages go plain (and do not touch the context).
        let (compressed, _, welcome) = read_frame(&mut kay).await;
        assert!(!compressed, "{}", String::from_utf8_lossy(&welcome));
        let request = json!({"type": "subscribe", "channel": "news", "id": 1}).to_string();
        send_frame(&mut kay, 1, true, &ours.deflate(request.as_bytes())).await;
        let (compressed, _, ack) = read_frame(&mut kay).await;
        assert!(!compressed, "{}", String::from_utf8_lossy(&ack));
        let mut pat = json_client(&gw, "/plain", "pat").await;
        let story = "the quick brown fox jumps over the lazy dog; ".repeat(20);
        let mut sizes = Vec::new();
        for id in 1..=2 {
            send_json(
                &mut pat,
                json!({"type": "publish", "channel": "news", "id": id, "data": story}),
            )
            .await;
            assert_eq!(next_json(&mut pat).await["type"], "ack");
            let (compressed, opcode, payload) = read_frame(&mut kay).await;
            assert!(compressed && opcode == 1);
            sizes.push(payload.len());
            let message: Value = serde_json::from_slice(&ours.inflate(&payload)).unwrap();
            assert_eq!(message["data"].as_str(), Some(story.as_str()));
        }
        // The second refers back to the first.
        assert!(sizes[1] * 2 < sizes[0], "{sizes:?}");
    }
}

#[tokio::test]
async fn a_member_that_does_not_settle_the_asked_window_is_inflated_for_the_client() {
    within(30, async {
        let (addr, mut seen, send) = deflate_backend().await;
        let gw = relay(addr, |r| r).await;
        // The client limits the server's window; the member's answer says
        // nothing of it (it may use a full window).
        let offer = "Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=10\r\n";
        let (head, mut client) = upgrade(&gw, "/relay", offer).await;
        assert!(head.contains("server_max_window_bits=10"), "{head}");
        // Up: both agreed, the client's frames pass as sent.
        let up = deflate(b"up as it was sent, up as it was sent");
        send_frame(&mut client, 1, true, &up).await;
        let (offer, frame) = seen.recv().await.unwrap();
        assert!(offer.is_some_and(|o| o.contains("server_max_window_bits=10")));
        assert_eq!(frame, (true, 1, up));
        // Down: inflated, so the client never has to read a larger window.
        let story = "down, inflated for the client; ".repeat(30);
        send.send(server_frame(1, true, &deflate(story.as_bytes())))
            .await
            .unwrap();
        assert_eq!(
            read_frame(&mut client).await,
            (false, 1, story.into_bytes())
        );
    })
    .await
}

#[tokio::test]
async fn a_member_that_answers_the_offer_wrongly_is_dialled_again_without_it() {
    within(30, async {
        let (addr, mut offered) = bad_answer_backend().await;
        let gw = relay(addr, |r| r.name("redial")).await;
        for round in 0..2 {
            let (head, mut client) = upgrade(&gw, "/relay", OFFER).await;
            assert!(head.starts_with("HTTP/1.1 101"), "{head}");
            assert!(head.contains("permessage-deflate"), "{head}");
            // Offered, refused by the gateway, dialled again plain.
            assert_eq!(offered.recv().await, Some(true), "round {round}");
            assert_eq!(offered.recv().await, Some(false), "round {round}");
            let story = "relayed plain to the member; ".repeat(30);
            send_frame(&mut client, 1, true, &deflate(story.as_bytes())).await;
            let (compressed, opcode, payload) = read_frame(&mut client).await;
            assert!(compressed && opcode == 1);
            assert_eq!(inflate(&payload), story.as_bytes());
        }
        // Not counted as the member failing.
        let scrape = gw.admin_get("/metrics").await.1;
        assert_eq!(
            metric(
                &scrape,
                &format!("wsgate_upstream_healthy{{route=\"redial\",upstream=\"ws://{addr}\"}}")
            ),
            Some(1.0),
            "{scrape}"
        );
    })
    .await
}
