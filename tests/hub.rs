//! The pub/sub hub: raw rooms, direct routing, presence, the JSON protocol,
//! resume, the HTTP API, slow consumers, and a large fan-out.

mod common;

use std::time::Duration;

use common::hub::{api, epoch_of, json_client, next_json, send_json, subscribe};
use common::{Gateway, Route, Running, next_data, within};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

const TOKEN: &str = "test-token-0123456789";

/// A gateway with the hub's API token, `history_size`, and its routes: raw
/// rooms (one fixed, one from the path), a JSON route with unique names and
/// presence, a fast route and a slow one.
fn hub_gateway(history_size: i64) -> Gateway {
    Gateway::builder()
        .hub(|h| {
            h.set("api_tokens", vec![TOKEN])
                .set("history_size", history_size)
        })
        .route(
            Route::hub("/room")
                .name("room")
                .key("protocol", "raw")
                .key("channel", "lobby")
                .key("direct_field", "dst"),
        )
        .route(
            Route::hub("/rooms")
                .name("rooms")
                .key("protocol", "raw")
                .key("channel_from_path", true),
        )
        .route(
            Route::hub("/hub")
                .name("hub")
                .key("names", "unique")
                .key("presence_events", true)
                .key("publish_rate", 100000)
                .key("publish_burst", 100000),
        )
        .route(
            Route::hub("/fast")
                .name("fast")
                .key("queue_messages", 100000)
                .key("queue_bytes", "1GiB")
                .key("publish_rate", 100000)
                .key("publish_burst", 100000),
        )
        .route(Route::hub("/slow").name("slow").key("queue_messages", 8))
}

#[tokio::test]
async fn a_raw_room_reaches_every_other_member_and_direct_frames_one() {
    within(20, async {
        let gw = hub_gateway(50).start().await;
        let mut ann = gw.ws("/room?name=ann").await;
        let mut bob = gw.ws("/room?name=bob").await;
        let mut cy = gw.ws("/room?name=cy").await;
        // One at a time, each waiting for the others to have it: a channel's
        // messages reach every member in the same order, so a client that got
        // its own message back would see it first.
        ann.send(Message::text("from ann")).await.unwrap();
        assert_eq!(next_data(&mut bob).await, Message::text("from ann"));
        assert_eq!(next_data(&mut cy).await, Message::text("from ann"));
        bob.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
        assert_eq!(next_data(&mut ann).await, Message::binary(vec![1u8, 2, 3]));
        assert_eq!(next_data(&mut cy).await, Message::binary(vec![1u8, 2, 3]));
        cy.send(Message::text("from cy")).await.unwrap();
        assert_eq!(next_data(&mut ann).await, Message::text("from cy"));
        assert_eq!(next_data(&mut bob).await, Message::text("from cy"));

        // A Qt chat client's direct frame goes, unchanged, to the one named.
        let direct = r#"{"src":"ann","dst":"cy","msg":"psst"}"#;
        ann.send(Message::text(direct)).await.unwrap();
        assert_eq!(next_data(&mut cy).await, Message::text(direct));
        ann.send(Message::text("to all")).await.unwrap();
        assert_eq!(
            next_data(&mut bob).await,
            Message::text("to all"),
            "bob never saw the direct frame"
        );
        assert_eq!(next_data(&mut cy).await, Message::text("to all"));

        // Rooms from the path are separate channels.
        let mut a = gw.ws("/rooms/blue?name=a").await;
        let mut b = gw.ws("/rooms/blue?name=b").await;
        let mut c = gw.ws("/rooms/red?name=c").await;
        a.send(Message::text("blue only")).await.unwrap();
        assert_eq!(next_data(&mut b).await, Message::text("blue only"));
        c.send(Message::text("red")).await.unwrap();
        b.send(Message::text("blue again")).await.unwrap();
        assert_eq!(
            next_data(&mut a).await,
            Message::text("blue again"),
            "a never saw red"
        );
    })
    .await
}

#[tokio::test]
async fn the_json_protocol_answers_every_request() {
    within(20, async {
        let gw = hub_gateway(50).start().await;
        let mut ann = json_client(&gw, "/hub", "ann").await;
        let mut bob = json_client(&gw, "/hub", "bob").await;

        let mut ack = subscribe(&mut ann, "prices", 1).await;
        let epoch = epoch_of(&mut ack);
        assert_eq!(ack, json!({"type":"ack","id":1,"channel":"prices","seq":0}));
        let mut ack = subscribe(&mut bob, "prices", 2).await;
        assert_eq!(epoch_of(&mut ack), epoch, "one stream, one epoch");
        assert_eq!(ack, json!({"type":"ack","id":2,"channel":"prices","seq":0}));
        // ann hears bob join (presence events on this route).
        assert_eq!(
            next_json(&mut ann).await,
            json!({"type":"join","channel":"prices","client":"bob"})
        );

        send_json(
            &mut ann,
            json!({"type":"publish","channel":"prices","data":{"px":1.5},"id":"p1"}),
        )
        .await;
        let mut ack = next_json(&mut ann).await;
        assert_eq!(epoch_of(&mut ack), epoch);
        assert_eq!(
            ack,
            json!({"type":"ack","id":"p1","channel":"prices","seq":1})
        );
        let mut message = next_json(&mut bob).await;
        assert_eq!(epoch_of(&mut message), epoch);
        assert_eq!(
            message,
            json!({"type":"message","channel":"prices","seq":1,"from":"ann","data":{"px":1.5}})
        );

        send_json(
            &mut ann,
            json!({"type":"send","to":"bob","data":"hello bob","id":3}),
        )
        .await;
        assert_eq!(next_json(&mut ann).await, json!({"type":"ack","id":3}));
        assert_eq!(
            next_json(&mut bob).await,
            json!({"type":"direct","from":"ann","data":"hello bob"})
        );

        send_json(
            &mut ann,
            json!({"type":"send","to":"nobody","data":1,"id":4}),
        )
        .await;
        let e = next_json(&mut ann).await;
        assert_eq!(
            (e["type"].as_str(), e["code"].as_str(), e["id"].as_u64()),
            (Some("error"), Some("no_such_client"), Some(4))
        );

        send_json(
            &mut ann,
            json!({"type":"presence","channel":"prices","id":5}),
        )
        .await;
        assert_eq!(
            next_json(&mut ann).await,
            json!({"type":"presence","channel":"prices","clients":["ann","bob"],"id":5})
        );

        send_json(
            &mut bob,
            json!({"type":"unsubscribe","channel":"prices","id":6}),
        )
        .await;
        assert_eq!(
            next_json(&mut bob).await,
            json!({"type":"ack","id":6,"channel":"prices"})
        );
        assert_eq!(
            next_json(&mut ann).await,
            json!({"type":"leave","channel":"prices","client":"bob"})
        );
        send_json(
            &mut bob,
            json!({"type":"unsubscribe","channel":"prices","id":7}),
        )
        .await;
        assert_eq!(next_json(&mut bob).await["code"], "not_subscribed");

        // Bad input gets an error and the connection stays.
        for (frame, code, id) in [
            (Message::text("{not json"), "bad_request", Value::Null),
            (
                Message::text(r#"{"type":"fly","id":8}"#),
                "bad_request",
                json!(8),
            ),
            (
                Message::text(r#"{"type":"subscribe","id":9}"#),
                "bad_request",
                json!(9),
            ),
            (
                Message::text(r#"{"type":"subscribe","channel":"no spaces","id":10}"#),
                "bad_channel",
                json!(10),
            ),
            (
                Message::text(r#"{"type":"publish","channel":"c","id":11}"#),
                "bad_request",
                json!(11),
            ),
            (Message::binary(vec![1u8]), "bad_request", Value::Null),
        ] {
            bob.send(frame).await.unwrap();
            let e = next_json(&mut bob).await;
            assert_eq!(
                (e["type"].as_str(), e["code"].as_str()),
                (Some("error"), Some(code)),
                "{e}"
            );
            assert_eq!(e.get("id").cloned().unwrap_or(Value::Null), id);
        }
        send_json(
            &mut bob,
            json!({"type":"presence","channel":"prices","id":12}),
        )
        .await;
        assert_eq!(next_json(&mut bob).await["clients"], json!(["ann"]));

        // Leaving by disconnecting is a leave too.
        send_json(&mut bob, json!({"type":"subscribe","channel":"prices"})).await;
        next_json(&mut bob).await;
        assert_eq!(next_json(&mut ann).await["type"], "join");
        drop(bob);
        assert_eq!(
            next_json(&mut ann).await,
            json!({"type":"leave","channel":"prices","client":"bob"})
        );

        // Names: unique on this route (409), and validated (400).
        let (status, taken) = gw.upgrade("/hub?name=ann").await;
        assert_eq!(status, 409, "{taken}");
        let (status, bad) = gw.upgrade("/hub?name=a%20b").await;
        assert_eq!(status, 400, "{bad}");
        // Without a name a client is a guest.
        let mut guest = gw.ws("/hub").await;
        let welcome = next_json(&mut guest).await;
        assert!(
            welcome["client"].as_str().unwrap().starts_with("guest-"),
            "{welcome}"
        );
    })
    .await
}

#[tokio::test]
async fn resume_replays_exactly_what_was_missed_or_reports_a_gap() {
    within(20, async {
        let gw = hub_gateway(50).start().await;
        let publish = |n: u64| {
            let gw = &gw;
            async move {
                let (status, body) = api(
                    gw,
                    "POST",
                    "/api/channels/feed/publish",
                    Some(TOKEN),
                    "application/json",
                    format!("{{\"n\":{n}}}").as_bytes(),
                )
                .await;
                assert_eq!(status, 200, "{body}");
            }
        };
        let mut ann = json_client(&gw, "/hub", "ann").await;
        subscribe(&mut ann, "feed", 1).await;
        for n in 1..=3 {
            publish(n).await;
        }
        for seq in 1..=3 {
            let m = next_json(&mut ann).await;
            assert_eq!(
                (m["seq"].as_u64(), m["data"]["n"].as_u64()),
                (Some(seq), Some(seq))
            );
            assert!(m["from"].is_null(), "published through the API");
        }
        drop(ann);
        for n in 4..=7 {
            publish(n).await;
        }
        // Back, resuming after seq 3: exactly 4..=7, in order, then the ack.
        let mut ann = json_client(&gw, "/hub", "ann").await;
        send_json(
            &mut ann,
            json!({"type":"subscribe","channel":"feed","since":3,"id":2}),
        )
        .await;
        for seq in 4..=7 {
            let m = next_json(&mut ann).await;
            assert_eq!(
                (m["type"].as_str(), m["seq"].as_u64()),
                (Some("message"), Some(seq)),
                "{m}"
            );
        }
        let mut ack = next_json(&mut ann).await;
        epoch_of(&mut ack);
        assert_eq!(ack, json!({"type":"ack","id":2,"channel":"feed","seq":7}));
        // Live from there on.
        publish(8).await;
        assert_eq!(next_json(&mut ann).await["seq"], 8);
    })
    .await
}

#[tokio::test]
async fn resume_names_its_epoch_and_another_epoch_is_a_gap() {
    within(20, async {
        let gw = hub_gateway(50).start().await;
        let mut ann = json_client(&gw, "/hub", "ann").await;
        let mut bob = json_client(&gw, "/hub", "bob").await;
        let mut ack = subscribe(&mut ann, "scores", 1).await;
        let epoch = epoch_of(&mut ack);
        for n in 1..=4 {
            send_json(
                &mut bob,
                json!({"type":"publish","channel":"scores","data":n,"id":n}),
            )
            .await;
            let mut ack = next_json(&mut bob).await;
            assert_eq!(epoch_of(&mut ack), epoch);
        }
        for seq in 1..=4 {
            let mut m = next_json(&mut ann).await;
            assert_eq!(
                (epoch_of(&mut m), m["seq"].as_u64()),
                (epoch.clone(), Some(seq))
            );
        }
        drop(ann);
        // Back (under another name: a unique name may still be leaving)
        // with since and the epoch it counts in: the rest, then the ack.
        let mut ann = json_client(&gw, "/hub", "ann-again").await;
        send_json(
            &mut ann,
            json!({"type":"subscribe","channel":"scores","since":2,"epoch":epoch,"id":2}),
        )
        .await;
        for seq in 3..=4 {
            assert_eq!(next_json(&mut ann).await["seq"], seq);
        }
        let mut ack = next_json(&mut ann).await;
        assert_eq!(epoch_of(&mut ack), epoch);
        assert_eq!(ack, json!({"type":"ack","id":2,"channel":"scores","seq":4}));
        // A since counted in another stream (as before a restart) is a gap,
        // however well its number fits this one; the error names the
        // current position, and the subscription is live from there.
        let carol_epoch = if epoch.starts_with('0') { "1" } else { "0" };
        let other = format!("{carol_epoch}{}", &epoch[1..]);
        let mut carol = json_client(&gw, "/hub", "carol").await;
        send_json(
            &mut carol,
            json!({"type":"subscribe","channel":"scores","since":2,"epoch":other,"id":3}),
        )
        .await;
        let mut e = next_json(&mut carol).await;
        assert_eq!(epoch_of(&mut e), epoch);
        assert_eq!(
            (e["code"].as_str(), e["seq"].as_u64(), e["id"].as_u64()),
            (Some("gap"), Some(4), Some(3)),
            "{e}"
        );
        send_json(
            &mut bob,
            json!({"type":"publish","channel":"scores","data":5}),
        )
        .await;
        let mut m = next_json(&mut carol).await;
        assert_eq!((epoch_of(&mut m), m["seq"].as_u64()), (epoch, Some(5)));
    })
    .await
}

/// Publish `n` through the HTTP API; returns the response's epoch.
async fn api_publish(gw: &Running, channel: &str, n: u64) -> String {
    let mut v = common::hub::api_publish(gw, TOKEN, channel, &json!(n)).await;
    epoch_of(&mut v)
}

#[tokio::test]
async fn after_a_restart_a_resume_from_the_old_stream_is_a_gap_even_where_its_seq_fits() {
    within(30, async {
        let mut before = hub_gateway(50).start().await;
        let mut ann = json_client(&before, "/hub", "ann").await;
        subscribe(&mut ann, "news", 1).await;
        for n in 1..=3 {
            api_publish(&before, "news", n).await;
        }
        let mut last = Value::Null;
        for _ in 1..=3 {
            last = next_json(&mut ann).await;
        }
        let old_epoch = epoch_of(&mut last);
        assert_eq!(last["seq"], 3);
        drop(ann);
        before.stop();
        before.join.await.unwrap().unwrap();

        // The restarted gateway's stream has passed seq 3 again.
        let after = hub_gateway(50).start().await;
        let mut new_epoch = String::new();
        for n in 1..=5 {
            new_epoch = api_publish(&after, "news", n).await;
        }
        assert_ne!(new_epoch, old_epoch, "a new stream, a new epoch");
        let mut ann = json_client(&after, "/hub", "ann").await;
        send_json(
            &mut ann,
            json!({"type":"subscribe","channel":"news","since":3,"epoch":old_epoch,"id":2}),
        )
        .await;
        let mut e = next_json(&mut ann).await;
        assert_eq!(epoch_of(&mut e), new_epoch);
        assert_eq!(
            (e["code"].as_str(), e["seq"].as_u64()),
            (Some("gap"), Some(5)),
            "{e}"
        );
        // Without its epoch the same `since` is matched against the new
        // stream (what clients that send no epoch get).
        send_json(&mut ann, json!({"type":"unsubscribe","channel":"news"})).await;
        next_json(&mut ann).await;
        send_json(
            &mut ann,
            json!({"type":"subscribe","channel":"news","since":3,"id":3}),
        )
        .await;
        assert_eq!(next_json(&mut ann).await["seq"], 4);
        assert_eq!(next_json(&mut ann).await["seq"], 5);
        assert_eq!(next_json(&mut ann).await["type"], "ack");
    })
    .await
}

#[tokio::test]
async fn a_since_older_than_the_history_is_a_gap() {
    within(20, async {
        let gw = hub_gateway(3).start().await;
        for n in 1..=10 {
            let body = format!("{n}");
            let (status, _) = api(
                &gw,
                "POST",
                "/api/channels/short/publish",
                Some(TOKEN),
                "application/json",
                body.as_bytes(),
            )
            .await;
            assert_eq!(status, 200);
        }
        let mut ann = json_client(&gw, "/hub", "ann").await;
        for since in [2, 50] {
            send_json(&mut ann, json!({"type":"unsubscribe","channel":"short"})).await;
            next_json(&mut ann).await;
            send_json(
                &mut ann,
                json!({"type":"subscribe","channel":"short","since":since,"id":since}),
            )
            .await;
            let e = next_json(&mut ann).await;
            assert_eq!(
                (e["code"].as_str(), e["seq"].as_u64(), e["id"].as_u64()),
                (Some("gap"), Some(10), Some(since)),
                "{e}"
            );
        }
        // Still subscribed, live from now.
        api(
            &gw,
            "POST",
            "/api/channels/short/publish",
            Some(TOKEN),
            "application/json",
            b"11",
        )
        .await;
        assert_eq!(next_json(&mut ann).await["seq"], 11);
        // A since inside the history replays from there.
        send_json(&mut ann, json!({"type":"unsubscribe","channel":"short"})).await;
        next_json(&mut ann).await;
        send_json(
            &mut ann,
            json!({"type":"subscribe","channel":"short","since":9}),
        )
        .await;
        assert_eq!(next_json(&mut ann).await["seq"], 10);
        assert_eq!(next_json(&mut ann).await["seq"], 11);
        assert_eq!(next_json(&mut ann).await["type"], "ack");
    })
    .await
}

#[tokio::test]
async fn the_http_api_needs_a_token_and_publishes_sends_and_lists() {
    within(20, async {
        let gw = hub_gateway(50).start().await;
        let mut ann = json_client(&gw, "/hub", "ann").await;
        subscribe(&mut ann, "ticker", 1).await;
        let mut raw = gw.ws("/room?name=rawbob").await;

        let (status, _) = api(
            &gw,
            "POST",
            "/api/channels/ticker/publish",
            None,
            "application/json",
            b"{}",
        )
        .await;
        assert_eq!(status, 401);
        let (status, _) = api(
            &gw,
            "POST",
            "/api/channels/ticker/publish",
            Some("wrong-token-0123456789"),
            "application/json",
            b"{}",
        )
        .await;
        assert_eq!(status, 401);

        let (status, body) = api(
            &gw,
            "POST",
            "/api/channels/ticker/publish",
            Some(TOKEN),
            "application/json",
            br#"{"sym":"ACME","px":12.5}"#,
        )
        .await;
        let mut published: Value = serde_json::from_str(&body).unwrap();
        let epoch = epoch_of(&mut published);
        assert_eq!(
            (status, published),
            (200, json!({"channel":"ticker","seq":1,"delivered":1}))
        );
        assert_eq!(
            next_json(&mut ann).await["data"],
            json!({"sym":"ACME","px":12.5})
        );
        let (status, _) = api(
            &gw,
            "POST",
            "/api/channels/ticker/publish",
            Some(TOKEN),
            "text/plain",
            b"plain words",
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(next_json(&mut ann).await["data"], "plain words");
        let (status, _) = api(
            &gw,
            "POST",
            "/api/channels/ticker/publish",
            Some(TOKEN),
            "application/json",
            b"{broken",
        )
        .await;
        assert_eq!(status, 400);

        // Binary to a raw room arrives as a binary frame, unchanged.
        let (status, _) = api(
            &gw,
            "POST",
            "/api/channels/lobby/publish",
            Some(TOKEN),
            "application/octet-stream",
            &[0, 159, 255],
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(
            next_data(&mut raw).await,
            Message::binary(vec![0u8, 159, 255])
        );

        let (status, body) = api(
            &gw,
            "POST",
            "/api/clients/ann/send",
            Some(TOKEN),
            "application/json",
            b"[1,2]",
        )
        .await;
        assert_eq!((status, body.as_str()), (200, r#"{"delivered":1}"#));
        assert_eq!(
            next_json(&mut ann).await,
            json!({"type":"direct","from":null,"data":[1,2]})
        );
        let (status, _) = api(
            &gw,
            "POST",
            "/api/clients/nobody/send",
            Some(TOKEN),
            "application/json",
            b"1",
        )
        .await;
        assert_eq!(status, 404);

        let (status, body) = api(&gw, "GET", "/api/channels", Some(TOKEN), "text/plain", b"").await;
        assert_eq!(status, 200);
        let channels: Value = serde_json::from_str(&body).unwrap();
        let mut ticker = channels["channels"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "ticker")
            .unwrap()
            .clone();
        assert_eq!(epoch_of(&mut ticker), epoch);
        assert_eq!(
            ticker,
            json!({"name":"ticker","subscribers":1,"last_seq":2})
        );
        let (status, body) = api(
            &gw,
            "GET",
            "/api/channels/lobby/presence",
            Some(TOKEN),
            "text/plain",
            b"",
        )
        .await;
        assert_eq!(
            (status, serde_json::from_str::<Value>(&body).unwrap()),
            (200, json!({"channel":"lobby","clients":["rawbob"]}))
        );
        let (status, _) = api(
            &gw,
            "GET",
            "/api/channels/nothing-here/presence",
            Some(TOKEN),
            "text/plain",
            b"",
        )
        .await;
        assert_eq!(status, 404);
    })
    .await
}

#[tokio::test]
async fn a_slow_consumer_is_closed_while_the_others_get_everything_in_order() {
    within(60, async {
        let gw = hub_gateway(50)
            .limits(|l| l.set("close_timeout", "30s"))
            .start()
            .await;
        let mut fast = json_client(&gw, "/fast", "fast").await;
        subscribe(&mut fast, "firehose", 1).await;
        // Never reads (for now); a small, fixed receive buffer.
        let mut slow = gw.ws_small_rcvbuf("/slow?name=slow").await;
        send_json(&mut slow, json!({"type":"subscribe","channel":"firehose"})).await;
        let mut publisher = json_client(&gw, "/fast", "pub").await;
        // Far more than the slow client's socket buffers and its 8-message
        // queue can hold.
        const COUNT: u64 = 1500;
        let payload = "x".repeat(8 << 10);
        for n in 1..=COUNT {
            send_json(
                &mut publisher,
                json!({"type":"publish","channel":"firehose","data":payload,"id":n}),
            )
            .await;
            assert_eq!(next_json(&mut publisher).await["seq"], n);
        }
        for seq in 1..=COUNT {
            assert_eq!(next_json(&mut fast).await["seq"], seq);
        }
        common::wait_for_metric(
            &gw,
            "wsgate_hub_dropped_total{reason=\"slow_consumer\"}",
            1.0,
        )
        .await;
        // Now the slow client reads: what it got is in order, then 1008.
        let mut last = 0;
        let code = loop {
            match slow.next().await.unwrap().unwrap() {
                Message::Text(t) => {
                    let v: Value = serde_json::from_str(&t).unwrap();
                    if let Some(seq) = v["seq"].as_u64().filter(|_| v["type"] == "message") {
                        assert_eq!(seq, last + 1, "in order, no gaps");
                        last = seq;
                    }
                }
                Message::Close(frame) => break frame.unwrap(),
                _ => {}
            }
        };
        assert_eq!(
            (code.code, code.reason.as_str()),
            (CloseCode::Policy, "slow consumer")
        );
        assert!(
            last < COUNT,
            "the slow client could not have had everything"
        );
    })
    .await
}

#[tokio::test]
async fn five_thousand_subscribers_all_receive_a_publish() {
    within(240, async {
        let gw = hub_gateway(50)
            .limits(|l| l.set("max_connections", 6000))
            .start()
            .await;
        const N: usize = 5000;
        let mut clients = Vec::with_capacity(N);
        for chunk in 0..N / 100 {
            let batch = futures_util::future::join_all((0..100).map(|i| {
                let gw = &gw;
                async move {
                    let mut ws = gw.ws(&format!("/fast?name=s{}", chunk * 100 + i)).await;
                    next_json(&mut ws).await; // welcome
                    send_json(&mut ws, json!({"type":"subscribe","channel":"big"})).await;
                    next_json(&mut ws).await; // ack
                    ws
                }
            }))
            .await;
            clients.extend(batch);
        }
        let (status, body) = api(
            &gw,
            "POST",
            "/api/channels/big/publish",
            Some(TOKEN),
            "application/json",
            b"\"hello, all\"",
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(
            serde_json::from_str::<Value>(&body).unwrap()["delivered"],
            N
        );
        let started = tokio::time::Instant::now();
        let received = futures_util::future::join_all(clients.iter_mut().map(|ws| async move {
            let m = next_json(ws).await;
            m["data"] == "hello, all"
        }))
        .await;
        assert!(received.iter().all(|ok| *ok));
        assert!(started.elapsed() < Duration::from_secs(60));
    })
    .await
}

#[tokio::test]
async fn per_client_limits_answer_with_errors_or_1008() {
    within(20, async {
        let gw = Gateway::builder()
            .route(
                Route::hub("/tight")
                    .name("tight")
                    .key("max_channels_per_client", 2)
                    .key("publish_rate", 0.001)
                    .key("publish_burst", 2),
            )
            .route(
                Route::hub("/echoroom")
                    .name("echoroom")
                    .key("protocol", "raw")
                    .key("echo", true)
                    .key("publish_rate", 0.001)
                    .key("publish_burst", 3),
            )
            .start()
            .await;
        let mut ann = json_client(&gw, "/tight", "ann").await;
        assert_eq!(subscribe(&mut ann, "a", 1).await["type"], "ack");
        assert_eq!(subscribe(&mut ann, "b", 2).await["type"], "ack");
        let e = subscribe(&mut ann, "c", 3).await;
        assert_eq!(
            (e["code"].as_str(), e["id"].as_u64()),
            (Some("channel_limit"), Some(3)),
            "{e}"
        );
        for id in 4..=5 {
            send_json(
                &mut ann,
                json!({"type":"publish","channel":"a","data":id,"id":id}),
            )
            .await;
            assert_eq!(next_json(&mut ann).await["type"], "ack");
        }
        send_json(
            &mut ann,
            json!({"type":"publish","channel":"a","data":6,"id":6}),
        )
        .await;
        let e = next_json(&mut ann).await;
        assert_eq!(
            (e["code"].as_str(), e["id"].as_u64()),
            (Some("rate_limited"), Some(6)),
            "{e}"
        );

        // A raw room with echo: the sender hears itself; past its rate it is closed 1008.
        let mut raw = gw.ws("/echoroom?name=solo").await;
        for n in 0..3 {
            raw.send(Message::text(format!("m{n}"))).await.unwrap();
            assert_eq!(next_data(&mut raw).await, Message::text(format!("m{n}")));
        }
        raw.send(Message::text("one too many")).await.unwrap();
        match raw.next().await {
            Some(Ok(Message::Close(Some(frame)))) => {
                assert_eq!(
                    (frame.code, frame.reason.as_str()),
                    (CloseCode::Policy, "rate limit exceeded")
                )
            }
            other => panic!("expected Close 1008, got {other:?}"),
        }
    })
    .await
}
