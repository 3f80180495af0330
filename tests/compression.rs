//! permessage-deflate on hub routes: the answer to a client's offer, its
//! compressed messages taken (inflated, bounded), large messages sent to
//! it compressed while a client without the extension in the same channel
//! gets them plain.

mod common;

use std::io::Write;

use common::hub::{json_client, next_json, send_json, subscribe};
use common::{Gateway, Route, read_until_close, upgrade_request, within};
use flate2::Compression;
use flate2::write::{DeflateDecoder, DeflateEncoder};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const OFFER: &str = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n";

fn gateway() -> Gateway {
    Gateway::builder()
        .limits(|l| l.set("max_message_size", "64KiB"))
        .route(Route::hub("/hub").name("hub").key("compression", "on"))
        .route(Route::hub("/plain").name("plain").key("namespace", "hub"))
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

/// One server frame: (RSV1 set, opcode, payload).
async fn read_frame<S: AsyncRead + Unpin>(io: &mut S) -> (bool, u8, Vec<u8>) {
    let b0 = io.read_u8().await.unwrap();
    let len = match io.read_u8().await.unwrap() & 0x7f {
        126 => u64::from(io.read_u16().await.unwrap()),
        127 => io.read_u64().await.unwrap(),
        n => u64::from(n),
    };
    let mut payload = vec![0; len as usize];
    io.read_exact(&mut payload).await.unwrap();
    (b0 & 0x40 != 0, b0 & 0x0f, payload)
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
