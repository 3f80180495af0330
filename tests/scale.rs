//! The hub spread over several nodes sharing one real Redis
//! (`[hub.backplane] kind = "redis"`): publishes, direct messages and
//! presence cross nodes; resume works on any node and after every node
//! restarted; a node keeps serving its own clients while Redis is down and
//! rejoins when it is back; a killed node's clients leave presence.
//!
//! Nodes are in-process gateways, except where a test needs a process of its
//! own: a node killed with SIGKILL, and a node whose `/metrics` is read (the
//! metrics recorder is one per process, shared by every in-process node of
//! every test running at the same time).

mod common;

use std::future::Future;
use std::time::Duration;

use common::hub::{api, epoch_of, json_client, next_json_within, send_json, subscribe};
use common::{
    Binary, Gateway, Redis, Route, Running, Section, Ws, metric, next_data, start_binary,
    wait_for_readyz, within,
};
use futures_util::SinkExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

const TOKEN: &str = "scale-test-token-0123456789";
/// The JSON route every node serves.
const HUB: &str = "/hub";
/// How long any one expected message may take to arrive.
const MESSAGE_WITHIN: Duration = Duration::from_secs(5);

/// One node of the hub on `redis`: the API token, a JSON route on `/hub`
/// (shared names, no rate limit to speak of) and a raw Qt-style room on
/// `/room` whose `{"dst":..}` frames are direct messages.
fn node(redis: &Redis) -> Gateway {
    node_with(redis, |b| b)
}

/// A node with more `[hub.backplane]` keys.
fn node_with(redis: &Redis, backplane: impl FnOnce(Section) -> Section) -> Gateway {
    Gateway::builder()
        .hub(|h| {
            h.set("api_tokens", vec![TOKEN])
                .set("history_size", 50)
                .table("backplane", |b| {
                    backplane(b.set("kind", "redis").set("url", redis.url()))
                })
        })
        .route(
            Route::hub(HUB)
                .name("hub")
                .key("publish_rate", 100_000)
                .key("publish_burst", 100_000),
        )
        .route(
            Route::hub("/room")
                .name("room")
                .key("protocol", "raw")
                .key("channel", "lobby")
                .key("direct_field", "dst"),
        )
}

/// Start `gateway` in-process as node `name` and wait until it is part of
/// the hub.
async fn up(gateway: Gateway, name: &str) -> Running {
    let node = gateway.start().await;
    ready(&node, name).await;
    node
}

/// Wait until node `name`'s `/readyz` says `ready`: it has joined the hub
/// over Redis. (Until then a node that has just started is `degraded`, as
/// when Redis is away, and serves its own clients alone, in epochs of its
/// own.)
async fn ready(node: &Running, name: &str) {
    tokio::time::timeout(Duration::from_secs(5), wait_for_readyz(node, "ready"))
        .await
        .unwrap_or_else(|_| panic!("/readyz on node {name} never answered 200 ready"));
}

/// A node as the real binary, in a process of its own; returns the process
/// (killed when dropped), a handle for the client helpers, and the config
/// (which owns the certificates).
fn binary_node(
    gateway: Gateway,
    dir: &tempfile::TempDir,
    name: &str,
) -> (Binary, Running, Gateway) {
    let config = gateway.write_binary_config(dir.path().join(format!("{name}.toml")));
    let (process, addr, admin, _logs) = start_binary(&config);
    let running = Running::attach(addr, admin, gateway.certs());
    (process, running, gateway)
}

/// The next JSON message, which must come within `MESSAGE_WITHIN`.
async fn got(ws: &mut Ws, what: &str) -> Value {
    next_json_within(ws, MESSAGE_WITHIN)
        .await
        .unwrap_or_else(|| panic!("{what} never came (waited {MESSAGE_WITHIN:?})"))
}

/// The next channel message within `wait`, past any `gap` notice: when
/// Redis goes away, or comes back empty, a node may tell its subscribers
/// that the stream they were in has ended (the contract neither asks for
/// it nor forbids it; the messages carry their epoch either way).
async fn next_message_within(ws: &mut Ws, wait: Duration) -> Option<Value> {
    loop {
        let m = next_json_within(ws, wait).await?;
        if !(m["type"] == "error" && m["code"] == "gap") {
            return Some(m);
        }
    }
}

/// Ask `probe` until it answers `Ok`, for at most `wait` (each probe is a
/// real request; nothing sleeps); panics saying what never came, with the
/// last answer.
async fn eventually<T, F, Fut>(what: &str, wait: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let mut last = String::new();
    let asked = tokio::time::timeout(wait, async {
        loop {
            match probe().await {
                Ok(v) => return v,
                Err(answer) => last = answer,
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    asked.unwrap_or_else(|_| panic!("{what} never came within {wait:?}; last answer: {last}"))
}

/// Publish `data` to `channel` through `gw`'s HTTP API; returns the answer.
async fn api_publish(gw: &Running, channel: &str, data: Value) -> Value {
    common::hub::api_publish(gw, TOKEN, channel, &data).await
}

/// `GET /api/channels/{channel}/presence` on `gw`: the names, sorted, or
/// the status and body of any other answer.
async fn api_presence(gw: &Running, channel: &str) -> Result<Vec<String>, String> {
    let path = format!("/api/channels/{channel}/presence");
    let (status, body) = api(gw, "GET", &path, Some(TOKEN), "text/plain", b"").await;
    if status != 200 {
        return Err(format!("{status} {body}"));
    }
    let v: Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
    assert_eq!(v["channel"], channel, "{body}");
    sorted_names(&v["clients"]).ok_or_else(|| body.clone())
}

/// A JSON list of names, sorted (nodes answer in no particular order).
fn sorted_names(v: &Value) -> Option<Vec<String>> {
    let mut names = v
        .as_array()?
        .iter()
        .map(|n| n.as_str().map(str::to_owned))
        .collect::<Option<Vec<_>>>()?;
    names.sort();
    Some(names)
}

/// Poll `gw`'s API until `channel`'s presence is exactly `names`.
async fn presence_becomes(gw: &Running, node: &str, channel: &str, names: &[&str]) {
    eventually(
        &format!("presence of {channel} on node {node} listing exactly {names:?}"),
        Duration::from_millis(5000),
        || async {
            match api_presence(gw, channel).await {
                Ok(got) if got == names => Ok(()),
                Ok(got) => Err(format!("{got:?}")),
                Err(answer) => Err(answer),
            }
        },
    )
    .await
}

/// Another epoch of the same form as `epoch` (its first digit changed).
fn made_up_epoch(epoch: &str) -> String {
    let first = if epoch.starts_with('0') { "1" } else { "0" };
    format!("{first}{}", &epoch[1..])
}

#[tokio::test]
async fn a_publish_on_one_node_reaches_subscribers_on_every_node_in_order() {
    within(40, async {
        let Some(redis) = Redis::start() else {
            return;
        };
        let a = up(node(&redis), "A").await;
        let b = up(node(&redis), "B").await;
        let c = up(node(&redis), "C").await;

        // amy on A (beside the publisher), ben on B, cal on C: one stream,
        // one epoch, whichever node is asked.
        let mut subscribers = Vec::new();
        let mut epoch: Option<String> = None;
        for (gw, name) in [(&a, "amy"), (&b, "ben"), (&c, "cal")] {
            let mut ws = json_client(gw, HUB, name).await;
            let mut ack = subscribe(&mut ws, "ticks", 1).await;
            let e = epoch_of(&mut ack);
            assert_eq!(
                ack,
                json!({"type":"ack","id":1,"channel":"ticks","seq":0}),
                "{name}'s subscribe"
            );
            match &epoch {
                None => epoch = Some(e),
                Some(first) => assert_eq!(&e, first, "{name}'s node tells another epoch"),
            }
            subscribers.push((name, ws));
        }
        let epoch = epoch.expect("three subscribers");

        const COUNT: u64 = 200;
        let mut pat = json_client(&a, HUB, "pat").await;
        for n in 1..=COUNT {
            send_json(
                &mut pat,
                json!({"type":"publish","channel":"ticks","data":n,"id":n}),
            )
            .await;
        }
        // Each publish acked once, in the channel's epoch, at the seq its
        // subscribers will see it at: the publisher's order is kept.
        let mut acked = vec![None; COUNT as usize + 1];
        for _ in 1..=COUNT {
            let mut ack = got(&mut pat, "pat's next publish ack").await;
            assert_eq!(ack["type"], "ack", "{ack}");
            assert_eq!(epoch_of(&mut ack), epoch, "pat's ack {ack}");
            let id = ack["id"].as_u64().unwrap_or_else(|| panic!("{ack}"));
            assert!((1..=COUNT).contains(&id), "{ack}");
            assert_eq!(acked[id as usize], None, "publish {id} acked twice: {ack}");
            acked[id as usize] = ack["seq"].as_u64();
        }
        for n in 1..=COUNT {
            assert_eq!(acked[n as usize], Some(n), "the ack of pat's publish {n}");
        }
        for (name, ws) in &mut subscribers {
            for seq in 1..=COUNT {
                let mut m = got(ws, &format!("message seq {seq} to {name}")).await;
                assert_eq!(epoch_of(&mut m), epoch, "{name} got {m}");
                assert_eq!(
                    m,
                    json!({"type":"message","channel":"ticks","seq":seq,"from":"pat","data":seq}),
                    "{name}'s message {seq}"
                );
            }
        }
        // No duplicate after the last one: the next message anyone gets is
        // the next publish.
        send_json(
            &mut pat,
            json!({"type":"publish","channel":"ticks","data":"end"}),
        )
        .await;
        for (name, ws) in &mut subscribers {
            let m = got(ws, &format!("the closing message to {name}")).await;
            assert_eq!(
                (m["seq"].as_u64(), &m["data"]),
                (Some(COUNT + 1), &json!("end")),
                "{name}'s message after the {COUNT}: {m}"
            );
        }
    })
    .await
}

#[tokio::test]
async fn a_direct_message_crosses_nodes_and_a_name_no_node_has_is_an_error() {
    within(20, async {
        let Some(redis) = Redis::start() else {
            return;
        };
        let a = up(node(&redis), "A").await;
        let b = up(node(&redis), "B").await;

        let mut ann = json_client(&a, HUB, "ann").await;
        let mut bob = json_client(&b, HUB, "bob").await;
        send_json(
            &mut ann,
            json!({"type":"send","to":"bob","data":"hello bob","id":1}),
        )
        .await;
        assert_eq!(
            got(&mut bob, "ann's direct message to bob on node B").await,
            json!({"type":"direct","from":"ann","data":"hello bob"})
        );
        assert_eq!(
            got(&mut ann, "the ack of ann's send").await,
            json!({"type":"ack","id":1})
        );
        send_json(
            &mut bob,
            json!({"type":"send","to":"ann","data":{"re":"hi"},"id":"r1"}),
        )
        .await;
        assert_eq!(
            got(&mut ann, "bob's answer to ann on node A").await,
            json!({"type":"direct","from":"bob","data":{"re":"hi"}})
        );
        assert_eq!(
            got(&mut bob, "the ack of bob's send").await,
            json!({"type":"ack","id":"r1"})
        );

        send_json(
            &mut ann,
            json!({"type":"send","to":"nobody","data":1,"id":2}),
        )
        .await;
        let e = got(&mut ann, "the answer to a send to nobody").await;
        assert_eq!(
            (e["type"].as_str(), e["code"].as_str(), e["id"].as_u64()),
            (Some("error"), Some("no_such_client"), Some(2)),
            "{e}"
        );

        // A Qt chat client's direct frame on the raw route crosses nodes
        // unchanged, to the one named only.
        let mut qt_ann = a.ws("/room?name=qt-ann").await;
        let mut qt_bob = b.ws("/room?name=qt-bob").await;
        let mut qt_cy = b.ws("/room?name=qt-cy").await;
        let psst = r#"{"src":"qt-ann","dst":"qt-bob","msg":"psst"}"#;
        qt_ann.send(Message::text(psst)).await.unwrap();
        let frame = tokio::time::timeout(MESSAGE_WITHIN, next_data(&mut qt_bob))
            .await
            .expect("qt-ann's direct frame to qt-bob on node B never came");
        assert_eq!(frame, Message::text(psst));
        // qt-cy, on qt-bob's node, first hears what is sent to it: it
        // never had qt-bob's.
        let yours = r#"{"src":"qt-ann","dst":"qt-cy","msg":"yours"}"#;
        qt_ann.send(Message::text(yours)).await.unwrap();
        let frame = tokio::time::timeout(MESSAGE_WITHIN, next_data(&mut qt_cy))
            .await
            .expect("qt-ann's direct frame to qt-cy on node B never came");
        assert_eq!(frame, Message::text(yours), "qt-cy saw qt-bob's frame");
    })
    .await
}

#[tokio::test]
async fn presence_on_any_node_lists_the_subscribers_of_every_node() {
    within(20, async {
        let Some(redis) = Redis::start() else {
            return;
        };
        let a = up(node(&redis), "A").await;
        let b = up(node(&redis), "B").await;
        let mut ann = json_client(&a, HUB, "ann").await;
        let mut bob = json_client(&b, HUB, "bob").await;
        assert_eq!(subscribe(&mut ann, "room1", 1).await["type"], "ack");
        assert_eq!(subscribe(&mut bob, "room1", 1).await["type"], "ack");

        presence_becomes(&a, "A", "room1", &["ann", "bob"]).await;
        presence_becomes(&b, "B", "room1", &["ann", "bob"]).await;
        for (name, ws) in [("ann", &mut ann), ("bob", &mut bob)] {
            send_json(ws, json!({"type":"presence","channel":"room1","id":2})).await;
            let mut answer = got(ws, &format!("the presence answer to {name}")).await;
            let names =
                sorted_names(&answer["clients"]).unwrap_or_else(|| panic!("{name} got {answer}"));
            answer["clients"] = json!(names);
            assert_eq!(
                answer,
                json!({"type":"presence","channel":"room1","clients":["ann","bob"],"id":2}),
                "presence asked by {name}"
            );
        }
    })
    .await
}

#[tokio::test]
async fn a_client_resumes_on_another_node_and_another_epoch_is_a_gap() {
    within(30, async {
        let Some(redis) = Redis::start() else {
            return;
        };
        let a = up(node(&redis), "A").await;
        let b = up(node(&redis), "B").await;
        let c = up(node(&redis), "C").await;

        let mut ann = json_client(&a, HUB, "ann").await;
        let mut ack = subscribe(&mut ann, "feed", 1).await;
        let epoch = epoch_of(&mut ack);
        let mut pat = json_client(&a, HUB, "pat").await;
        for n in 1..=5u64 {
            send_json(
                &mut pat,
                json!({"type":"publish","channel":"feed","data":n,"id":n}),
            )
            .await;
            let mut ack = got(&mut pat, &format!("the ack of publish {n}")).await;
            assert_eq!(epoch_of(&mut ack), epoch, "{ack}");
            assert_eq!(ack, json!({"type":"ack","id":n,"channel":"feed","seq":n}));
        }
        for seq in 1..=5u64 {
            let mut m = got(&mut ann, &format!("message {seq} to ann")).await;
            assert_eq!(epoch_of(&mut m), epoch, "{m}");
            assert_eq!((m["seq"].as_u64(), &m["data"]), (Some(seq), &json!(seq)));
        }
        drop(ann);

        // Missed while away, published through node B's API.
        for n in 6..=10u64 {
            let mut answer = api_publish(&b, "feed", json!(n)).await;
            assert_eq!(epoch_of(&mut answer), epoch, "{answer}");
            assert_eq!(answer["seq"], n, "{answer}");
        }

        // Back, on node C: exactly 6..=10 in order, then the ack.
        let mut ann = json_client(&c, HUB, "ann").await;
        send_json(
            &mut ann,
            json!({"type":"subscribe","channel":"feed","since":5,"epoch":epoch,"id":2}),
        )
        .await;
        for seq in 6..=10u64 {
            let mut m = got(&mut ann, &format!("replayed message {seq} on node C")).await;
            assert_eq!(epoch_of(&mut m), epoch, "{m}");
            assert_eq!(
                m,
                json!({"type":"message","channel":"feed","seq":seq,"from":null,"data":seq})
            );
        }
        let mut ack = got(&mut ann, "the ack of the resume on node C").await;
        assert_eq!(epoch_of(&mut ack), epoch, "{ack}");
        assert_eq!(ack, json!({"type":"ack","id":2,"channel":"feed","seq":10}));
        // Live from there on.
        send_json(
            &mut pat,
            json!({"type":"publish","channel":"feed","data":11}),
        )
        .await;
        let m = got(&mut ann, "live message 11 on node C").await;
        assert_eq!(
            (m["seq"].as_u64(), &m["data"]),
            (Some(11), &json!(11)),
            "{m}"
        );

        // A since counted in an epoch the channel never had is a gap at
        // the channel's position.
        let mut cy = json_client(&c, HUB, "cy").await;
        send_json(
            &mut cy,
            json!({"type":"subscribe","channel":"feed","since":5,
                   "epoch":made_up_epoch(&epoch),"id":3}),
        )
        .await;
        let mut e = got(&mut cy, "the answer to a resume in a made-up epoch").await;
        assert_eq!(epoch_of(&mut e), epoch, "{e}");
        assert_eq!(
            (
                e["type"].as_str(),
                e["code"].as_str(),
                e["seq"].as_u64(),
                e["id"].as_u64()
            ),
            (Some("error"), Some("gap"), Some(11), Some(3)),
            "{e}"
        );
    })
    .await
}

#[tokio::test]
async fn a_client_resumes_after_every_node_restarted_in_the_same_epoch() {
    within(30, async {
        let Some(redis) = Redis::start() else {
            return;
        };
        let mut a = up(node(&redis), "A").await;
        let mut b = up(node(&redis), "B").await;
        let mut ann = json_client(&a, HUB, "ann").await;
        let mut ack = subscribe(&mut ann, "news", 1).await;
        let epoch = epoch_of(&mut ack);
        for n in 1..=3u64 {
            api_publish(&b, "news", json!(n)).await;
        }
        for seq in 1..=3u64 {
            let mut m = got(&mut ann, &format!("message {seq} to ann")).await;
            assert_eq!(epoch_of(&mut m), epoch, "{m}");
            assert_eq!(m["seq"], seq, "{m}");
        }
        drop(ann);
        for n in 4..=6u64 {
            api_publish(&a, "news", json!(n)).await;
        }

        for (name, gw) in [("A", &mut a), ("B", &mut b)] {
            gw.stop();
            (&mut gw.join)
                .await
                .expect("the node's task ends")
                .unwrap_or_else(|e| panic!("node {name} stopped with {e}"));
        }

        // Two new nodes on the same Redis: the channel is where it was.
        let a = up(node(&redis), "A (restarted)").await;
        let b = up(node(&redis), "B (restarted)").await;
        let mut ann = json_client(&b, HUB, "ann").await;
        send_json(
            &mut ann,
            json!({"type":"subscribe","channel":"news","since":3,"epoch":epoch,"id":2}),
        )
        .await;
        for seq in 4..=6u64 {
            let mut m = got(
                &mut ann,
                &format!("replayed message {seq} after the restart"),
            )
            .await;
            assert_eq!(epoch_of(&mut m), epoch, "{m}");
            assert_eq!(
                m,
                json!({"type":"message","channel":"news","seq":seq,"from":null,"data":seq})
            );
        }
        let mut ack = got(&mut ann, "the ack of the resume after the restart").await;
        assert_eq!(epoch_of(&mut ack), epoch, "the epoch outlives every node");
        assert_eq!(ack, json!({"type":"ack","id":2,"channel":"news","seq":6}));
        // The stream goes on from there, across the new nodes.
        let mut answer = api_publish(&a, "news", json!(7)).await;
        assert_eq!(epoch_of(&mut answer), epoch, "{answer}");
        assert_eq!(answer["seq"], 7, "{answer}");
        let mut m = got(&mut ann, "message 7 after the restart").await;
        assert_eq!(epoch_of(&mut m), epoch, "{m}");
        assert_eq!(m["seq"], 7, "{m}");
    })
    .await
}

#[tokio::test]
async fn while_redis_is_down_a_node_serves_its_own_clients_and_rejoins_when_it_is_back() {
    within(60, async {
        let Some(mut redis) = Redis::start() else {
            return;
        };
        // Node A in a process of its own: its /metrics are its own.
        let dir = tempfile::tempdir().unwrap();
        let (_process, a, _config) = binary_node(node(&redis), &dir, "a");
        ready(&a, "A").await;
        let b = up(node(&redis), "B").await;

        let mut amy = json_client(&a, HUB, "amy").await;
        let mut ack = subscribe(&mut amy, "alerts", 1).await;
        let epoch = epoch_of(&mut ack);
        let mut ben = json_client(&b, HUB, "ben").await;
        let mut ack = subscribe(&mut ben, "alerts", 1).await;
        assert_eq!(epoch_of(&mut ack), epoch, "{ack}");
        let mut pat = json_client(&a, HUB, "pat").await;
        send_json(
            &mut pat,
            json!({"type":"publish","channel":"alerts","data":1,"id":1}),
        )
        .await;
        let mut ack = got(&mut pat, "the ack of publish 1").await;
        assert_eq!(epoch_of(&mut ack), epoch, "{ack}");
        for (name, ws) in [("amy", &mut amy), ("ben", &mut ben)] {
            let mut m = got(ws, &format!("message 1 to {name}")).await;
            assert_eq!(epoch_of(&mut m), epoch, "{m}");
            assert_eq!(m["data"], 1, "{m}");
        }

        redis.kill();
        eventually(
            "/readyz on node A answering 200 degraded after Redis was killed",
            Duration::from_millis(10000),
            || async {
                match a.admin_get("/readyz").await {
                    (200, body) if body.starts_with("degraded") => Ok(()),
                    (status, body) => Err(format!("{status} {body}")),
                }
            },
        )
        .await;
        eventually(
            "wsgate_backplane_up 0 on node A",
            Duration::from_millis(10000),
            || async {
                let (_, scrape) = a.admin_get("/metrics").await;
                match metric(&scrape, "wsgate_backplane_up") {
                    Some(0.0) => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            },
        )
        .await;

        // A's own publishes still reach A's own subscribers, in an epoch of
        // A's own.
        send_json(
            &mut pat,
            json!({"type":"publish","channel":"alerts","data":2,"id":2}),
        )
        .await;
        let mut ack = got(&mut pat, "the answer to a publish while Redis is down").await;
        assert_eq!(
            (&ack["type"], &ack["id"]),
            (&json!("ack"), &json!(2)),
            "{ack}"
        );
        let local = epoch_of(&mut ack);
        assert_ne!(
            local, epoch,
            "a publish while Redis is down is in a local epoch"
        );
        let mut m = next_message_within(&mut amy, MESSAGE_WITHIN)
            .await
            .expect("a publish on A while Redis is down never reached amy on A");
        assert_eq!(epoch_of(&mut m), local, "{m}");
        assert_eq!((&m["from"], &m["data"]), (&json!("pat"), &json!(2)), "{m}");

        // Redis back (empty): publishes on A reach B again, in Redis's epoch.
        redis.restart();
        let mut tries = 0;
        let crossed = loop {
            tries += 1;
            assert!(
                tries <= 60,
                "no publish on A reached ben on B in {} tries after Redis came back",
                tries - 1
            );
            let n = 2 + tries;
            send_json(
                &mut pat,
                json!({"type":"publish","channel":"alerts","data":n,"id":n}),
            )
            .await;
            got(
                &mut pat,
                &format!("the answer to publish {n} after Redis came back"),
            )
            .await;
            if let Some(m) = next_message_within(&mut ben, Duration::from_millis(250)).await {
                break m;
            }
        };
        let mut m = crossed;
        assert_eq!(
            (&m["type"], &m["from"]),
            (&json!("message"), &json!("pat")),
            "{m}"
        );
        assert_ne!(
            epoch_of(&mut m),
            local,
            "a message that crossed nodes is in Redis's epoch, not A's local one"
        );
        eventually(
            "wsgate_backplane_up 1 on node A after Redis came back",
            Duration::from_millis(10000),
            || async {
                let (_, scrape) = a.admin_get("/metrics").await;
                match metric(&scrape, "wsgate_backplane_up") {
                    Some(1.0) => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            },
        )
        .await;
    })
    .await
}

#[tokio::test]
async fn a_killed_node_s_clients_leave_presence_within_node_ttl() {
    within(40, async {
        let Some(redis) = Redis::start() else {
            return;
        };
        const NODE_TTL: Duration = Duration::from_secs(1);
        let ttl = |b: Section| b.set("node_ttl", "1s");
        let dir = tempfile::tempdir().unwrap();
        let (mut process, b, _config) = binary_node(node_with(&redis, ttl), &dir, "b");
        ready(&b, "B").await;
        let a = up(node_with(&redis, ttl), "A").await;

        let mut dave = json_client(&a, HUB, "dave").await;
        assert_eq!(subscribe(&mut dave, "watch", 1).await["type"], "ack");
        let mut carol = json_client(&b, HUB, "carol").await;
        assert_eq!(subscribe(&mut carol, "watch", 1).await["type"], "ack");
        presence_becomes(&a, "A", "watch", &["carol", "dave"]).await;

        process.kill().expect("SIGKILL to node B");
        process.wait().expect("node B reaped");
        let killed = tokio::time::Instant::now();
        drop(carol);
        let gone_after = eventually(
            "carol leaving node A's presence of watch after node B was killed",
            Duration::from_millis(10000),
            || async {
                match api_presence(&a, "watch").await {
                    Ok(names) if names == ["dave"] => Ok(killed.elapsed()),
                    Ok(names) => Err(format!("{names:?} {:?} after the kill", killed.elapsed())),
                    Err(answer) => Err(answer),
                }
            },
        )
        .await;
        assert!(
            gone_after <= NODE_TTL + Duration::from_secs(2),
            "carol left presence {gone_after:?} after node B was killed (node_ttl {NODE_TTL:?})"
        );
    })
    .await
}

#[tokio::test]
async fn an_api_publish_on_one_node_reaches_a_subscriber_on_another_and_counts_nodes() {
    within(20, async {
        let Some(redis) = Redis::start() else {
            return;
        };
        let a = up(node(&redis), "A").await;
        let b = up(node(&redis), "B").await;
        let mut ann = json_client(&a, HUB, "ann").await;
        let mut ack = subscribe(&mut ann, "prices", 1).await;
        let epoch = epoch_of(&mut ack);

        let mut answer = api_publish(&b, "prices", json!({"px": 1.5})).await;
        assert_eq!(epoch_of(&mut answer), epoch, "{answer}");
        assert_eq!(
            answer,
            json!({"channel":"prices","seq":1,"nodes":1}),
            "node B's API answer (one node, A, had subscribers)"
        );
        let mut m = got(&mut ann, "node B's API publish, to ann on node A").await;
        assert_eq!(epoch_of(&mut m), epoch, "{m}");
        assert_eq!(
            m,
            json!({"type":"message","channel":"prices","seq":1,"from":null,"data":{"px":1.5}})
        );
    })
    .await
}
