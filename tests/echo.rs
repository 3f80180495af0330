//! The echo route over wss: message fidelity, limits, keepalive, close.

mod common;

use common::{Gateway, Ws, next_close, next_data, within};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};

/// The server's Close, which must carry a code.
async fn expect_close(ws: &mut Ws) -> CloseFrame {
    next_close(ws).await.expect("close without a code")
}

#[tokio::test]
async fn echoes_text_binary_empty_and_large_messages() {
    within(30, async {
        let gw = Gateway::builder().start().await;
        let mut ws = gw.ws("/echo").await;
        let large: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
        let messages = vec![
            Message::text("hello, wsgate"),
            Message::text("ünïcödé ✓"),
            Message::binary(vec![0u8, 1, 2, 255]),
            Message::text(""),
            Message::binary(Vec::new()),
            Message::binary(large),
        ];
        for msg in &messages {
            ws.send(msg.clone()).await.unwrap();
        }
        for msg in messages {
            assert_eq!(next_data(&mut ws).await, msg);
        }
        // Many small messages in one burst come back in order.
        for i in 0..500 {
            ws.feed(Message::text(i.to_string())).await.unwrap();
        }
        ws.flush().await.unwrap();
        for i in 0..500 {
            assert_eq!(next_data(&mut ws).await, Message::text(i.to_string()));
        }
    })
    .await
}

#[tokio::test]
async fn fragmented_messages_come_back_whole() {
    within(10, async {
        let gw = Gateway::builder().start().await;
        let mut ws = gw.ws("/echo").await;
        ws.send(Message::Frame(Frame::message(
            "frag",
            OpCode::Data(Data::Text),
            false,
        )))
        .await
        .unwrap();
        // A ping between fragments is allowed and answered.
        ws.send(Message::Ping("between".into())).await.unwrap();
        ws.send(Message::Frame(Frame::message(
            "men",
            OpCode::Data(Data::Continue),
            false,
        )))
        .await
        .unwrap();
        ws.send(Message::Frame(Frame::message(
            "ted",
            OpCode::Data(Data::Continue),
            true,
        )))
        .await
        .unwrap();
        ws.send(Message::Frame(Frame::message(
            vec![1u8],
            OpCode::Data(Data::Binary),
            false,
        )))
        .await
        .unwrap();
        ws.send(Message::Frame(Frame::message(
            vec![2u8],
            OpCode::Data(Data::Continue),
            true,
        )))
        .await
        .unwrap();
        let mut got = Vec::new();
        while got.len() < 3 {
            match ws.next().await.unwrap().unwrap() {
                Message::Ping(_) => {}
                m => got.push(m),
            }
        }
        assert_eq!(got[0], Message::Pong("between".into()));
        assert_eq!(got[1], Message::text("fragmented"));
        assert_eq!(got[2], Message::binary(vec![1u8, 2]));
    })
    .await
}

#[tokio::test]
async fn close_is_answered_with_the_same_code() {
    within(10, async {
        let gw = Gateway::builder().start().await;
        let mut ws = gw.ws("/echo").await;
        ws.send(Message::text("before")).await.unwrap();
        ws.close(Some(CloseFrame {
            code: CloseCode::Library(4000),
            reason: "bye".into(),
        }))
        .await
        .unwrap();
        assert_eq!(next_data(&mut ws).await, Message::text("before"));
        let frame = expect_close(&mut ws).await;
        assert_eq!(frame.code, CloseCode::Library(4000));
        assert_eq!(frame.reason.as_str(), "bye");
        // Then the server ends the connection.
        assert!(matches!(ws.next().await, None | Some(Err(_))));
    })
    .await
}

#[tokio::test]
async fn oversize_messages_close_with_1009() {
    within(10, async {
        let gw = Gateway::builder()
            .limits(|l| l.set("max_message_size", "1KiB"))
            .start()
            .await;
        // One frame over the limit: refused from its header.
        let mut ws = gw.ws("/echo").await;
        ws.send(Message::binary(vec![7u8; 1024])).await.unwrap();
        assert_eq!(next_data(&mut ws).await, Message::binary(vec![7u8; 1024]));
        ws.send(Message::binary(vec![7u8; 1025])).await.unwrap();
        assert_eq!(expect_close(&mut ws).await.code, CloseCode::Size);

        // Fragments that add up to more than the limit.
        let mut ws = gw.ws("/echo").await;
        ws.send(Message::Frame(Frame::message(
            vec![1u8; 600],
            OpCode::Data(Data::Binary),
            false,
        )))
        .await
        .unwrap();
        ws.send(Message::Frame(Frame::message(
            vec![1u8; 600],
            OpCode::Data(Data::Continue),
            true,
        )))
        .await
        .unwrap();
        assert_eq!(expect_close(&mut ws).await.code, CloseCode::Size);
    })
    .await
}

#[tokio::test]
async fn pings_keep_an_answering_client_alive() {
    within(10, async {
        let gw = Gateway::builder()
            .limits(|l| l.set("ping_interval", "100ms"))
            .start()
            .await;
        let mut ws = gw.ws("/echo").await;
        // tungstenite answers each ping as it reads on; three pings means the
        // session outlived two ping deadlines.
        let mut pings = 0;
        while pings < 3 {
            if let Message::Ping(_) = ws.next().await.unwrap().unwrap() {
                pings += 1;
            }
        }
        ws.send(Message::text("still here")).await.unwrap();
        assert_eq!(next_data(&mut ws).await, Message::text("still here"));
    })
    .await
}

#[tokio::test]
async fn a_silent_peer_is_pinged_then_dropped() {
    within(10, async {
        let gw = Gateway::builder()
            .limits(|l| {
                l.set("ping_interval", "100ms")
                    .set("close_timeout", "200ms")
            })
            .start()
            .await;
        // A raw client: completes the upgrade, then never answers anything.
        let mut tls = gw.raw_upgrade("/echo").await;
        let (opcodes, close_code) = common::read_until_close(&mut tls).await;
        assert_eq!(opcodes[0], 0x9, "first frame is a ping");
        assert_eq!(close_code, 1011, "ping timeout closes with 1011");
        // And the connection is then closed (after close_timeout).
        let mut rest = Vec::new();
        let _ = tls.read_to_end(&mut rest).await;
    })
    .await
}

#[tokio::test]
async fn idle_sessions_are_closed_with_1001() {
    within(10, async {
        let gw = Gateway::builder()
            .limits(|l| l.set("idle_timeout", "200ms").set("ping_interval", "off"))
            .start()
            .await;
        let mut ws = gw.ws("/echo").await;
        ws.send(Message::text("x")).await.unwrap();
        assert_eq!(next_data(&mut ws).await, Message::text("x"));
        let frame = expect_close(&mut ws).await;
        assert_eq!(frame.code, CloseCode::Away);
        assert_eq!(frame.reason.as_str(), "idle timeout");
    })
    .await
}

/// Complete an upgrade by hand, send raw frame bytes, and return the close
/// code the gateway answers with.
async fn close_code_for(gw: &common::Running, frame: &[u8]) -> u16 {
    let mut tls = gw.raw_upgrade("/echo").await;
    tls.write_all(frame).await.unwrap();
    common::read_until_close(&mut tls).await.1
}

/// A masked client frame (mask key 0, so the payload reads as written).
fn masked(b0: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![b0, 0x80 | payload.len() as u8, 0, 0, 0, 0];
    f.extend_from_slice(payload);
    f
}

#[tokio::test]
async fn protocol_violations_close_1002_and_bad_utf8_1007() {
    within(10, async {
        let gw = Gateway::builder().start().await;
        // Unmasked client frame.
        assert_eq!(close_code_for(&gw, &[0x81, 0x02, b'h', b'i']).await, 1002);
        // Reserved bit set (no extension negotiated).
        assert_eq!(close_code_for(&gw, &masked(0xC1, b"hi")).await, 1002);
        // Reserved opcode 0x3.
        assert_eq!(close_code_for(&gw, &masked(0x83, b"hi")).await, 1002);
        // Fragmented control frame (ping without FIN).
        assert_eq!(close_code_for(&gw, &masked(0x09, b"hi")).await, 1002);
        // Invalid UTF-8 in a text message.
        assert_eq!(
            close_code_for(&gw, &masked(0x81, &[0xff, 0xfe])).await,
            1007
        );
    })
    .await
}
