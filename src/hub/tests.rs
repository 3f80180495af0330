//! The hub's own locking, driven deterministically: a hook runs between a
//! channel's lookup in the map and the lock on the channel, where the
//! sweeper (or anyone) may act.

use std::cell::RefCell;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::access::ChannelAccess;
use super::protocol::Body;
use super::{Conn, Epoch, Hub, Position, Queue, Since};
use crate::config::{HubConfig, SlowConsumer};
use tokio_tungstenite::tungstenite::Utf8Bytes;

type Hook = Box<dyn FnOnce(&Hub)>;

thread_local! {
    static BETWEEN: RefCell<Option<Hook>> = RefCell::new(None);
}

/// Called by the hub between a channel's lookup and its lock: runs the
/// hook this thread set, once.
pub(super) fn between_lookup_and_lock(hub: &Hub) {
    if let Some(hook) = BETWEEN.with(|b| b.borrow_mut().take()) {
        hook(hub);
    }
}

fn between(hook: impl FnOnce(&Hub) + 'static) {
    BETWEEN.with(|b| *b.borrow_mut() = Some(Box::new(hook)));
}

pub(super) fn hub() -> Hub {
    Hub::new(HubConfig {
        api_tokens: Vec::new(),
        api_keys: Vec::new(),
        history_size: 100,
        history_ttl: Duration::from_secs(300),
        max_channels: 100,
        backplane: crate::config::BackplaneConfig::Memory,
    })
    .unwrap()
}

pub(super) fn conn(id: u64, name: &str) -> Arc<Conn> {
    Arc::new(Conn {
        id,
        name: name.into(),
        json: true,
        presence: false,
        namespace: "/hub".into(),
        access: ChannelAccess::default(),
        sender_field: None,
        refresh: None,
        queue: Queue::new(64, 1 << 20, SlowConsumer::Close),
        channels: Mutex::default(),
        deflate: None,
    })
}

fn json(text: &'static str) -> Body {
    Body::Json(Utf8Bytes::from_static(text))
}

impl Position {
    fn next(self) -> Position {
        Position {
            seq: self.seq + 1,
            ..self
        }
    }
}

/// A `since` in `epoch`, which the caller keeps alive as a string.
fn since(seq: u64, epoch: Epoch) -> Option<Since<'static>> {
    let epoch: &'static str = Box::leak(epoch.to_string().into_boxed_str());
    Some(Since {
        seq,
        epoch: Some(epoch),
    })
}

/// The text of every frame queued for `conn`.
pub(super) fn received(conn: &Conn) -> Vec<String> {
    conn.queue
        .take()
        .items
        .iter()
        // Small server frames: two header bytes, then the payload.
        .map(|f| String::from_utf8_lossy(&f[2..]).into_owned())
        .collect()
}

#[test]
fn a_subscriber_whose_new_channel_is_swept_before_it_locks_it_still_gets_publishes() {
    let hub = hub();
    let bob = conn(1, "bob");
    // The channel is new (no subscribers, no history): exactly what the
    // sweeper forgets.
    between(|hub| hub.sweep());
    let sub = hub
        .subscribe(&bob, "room", None, 8, |_| None)
        .unwrap()
        .unwrap();
    assert_eq!(sub.at.seq, 0);
    let published = hub
        .publish("room", None, json("1"), true, || None)
        .unwrap()
        .unwrap();
    assert_eq!(
        (published.at, published.delivered),
        (sub.at.next(), 1),
        "the publish found bob's channel"
    );
    let got = received(&bob);
    assert_eq!(got.len(), 1);
    assert!(got[0].contains(r#""seq":1"#), "{got:?}");
    assert_eq!(hub.presence("room"), Some(vec!["bob".to_owned()]));
}

#[test]
fn a_publish_whose_new_channel_is_swept_before_it_locks_it_stays_in_history() {
    let hub = hub();
    between(|hub| hub.sweep());
    let published = hub
        .publish("news", None, json("1"), true, || None)
        .unwrap()
        .unwrap();
    assert_eq!(published.at.seq, 1);
    let ann = conn(2, "ann");
    let sub = hub
        .subscribe(&ann, "news", since(0, published.at.epoch), 8, |_| None)
        .unwrap()
        .unwrap();
    assert_eq!(
        (sub.at, sub.gap),
        (published.at, false),
        "the channel kept seq 1"
    );
    let got = received(&ann);
    assert_eq!(got.len(), 1, "seq 1 replayed from history: {got:?}");
}

#[test]
fn the_sweeper_still_forgets_unused_channels() {
    let hub = hub();
    let bob = conn(1, "bob");
    hub.subscribe(&bob, "room", None, 8, |_| None)
        .unwrap()
        .unwrap();
    hub.unsubscribe(&bob, "room").unwrap();
    hub.sweep();
    assert!(hub.channels().is_empty());
}

#[test]
fn epochs_are_16_hex_digits_and_parse_back() {
    let e = Epoch::random();
    let text = e.to_string();
    assert_eq!(text.len(), 16);
    assert_eq!(Epoch::parse(&text), Some(e));
    for bad in [
        "",
        "xyz",
        "0123456789abcdef0",
        "+123456789abcdef",
        "0123456789abcdeg",
    ] {
        assert_eq!(Epoch::parse(bad), None, "{bad:?}");
    }
}

#[test]
fn a_since_in_another_epoch_is_a_gap_never_a_replay() {
    let hub = hub();
    for n in ["1", "2", "3"] {
        hub.publish(
            "feed",
            None,
            Body::Json(Utf8Bytes::from(n.to_owned())),
            true,
            || None,
        )
        .unwrap();
    }
    let now = hub.channels()[0].last;
    assert_eq!(now.seq, 3);
    let ann = conn(1, "ann");
    // The same position in the current epoch replays.
    let sub = hub
        .subscribe(&ann, "feed", since(1, now.epoch), 8, |_| None)
        .unwrap()
        .unwrap();
    assert_eq!((sub.at, sub.gap), (now, false));
    assert_eq!(received(&ann).len(), 2);
    hub.unsubscribe(&ann, "feed").unwrap();
    // Another epoch (a stream from before a restart), or one no hub wrote:
    // gap, live from now, nothing replayed.
    let other = Epoch(now.epoch.0 ^ 1);
    let garbage = Some(Since {
        seq: 1,
        epoch: Some("not-an-epoch"),
    });
    for resume in [since(1, other), since(0, other), garbage] {
        let sub = hub
            .subscribe(&ann, "feed", resume, 8, |_| None)
            .unwrap()
            .unwrap();
        assert_eq!((sub.at, sub.gap), (now, true));
        assert!(received(&ann).is_empty());
        hub.unsubscribe(&ann, "feed").unwrap();
    }
    // Without an epoch (older clients), `since` counts in the current one.
    let legacy = Some(Since {
        seq: 2,
        epoch: None,
    });
    let sub = hub
        .subscribe(&ann, "feed", legacy, 8, |_| None)
        .unwrap()
        .unwrap();
    assert!(!sub.gap);
    assert_eq!(received(&ann).len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_channel_the_sweeper_forgot_starts_a_new_epoch() {
    let hub = hub();
    let first = hub
        .publish("news", None, json("1"), true, || None)
        .unwrap()
        .unwrap()
        .at;
    // Its history expires unseen; the sweeper forgets the channel.
    hub.sweep();
    assert_eq!(
        hub.channels().len(),
        1,
        "kept while its history is resumable"
    );
    tokio::time::advance(Duration::from_secs(301)).await;
    hub.sweep();
    assert!(hub.channels().is_empty());
    let second = hub
        .publish("news", None, json("1"), true, || None)
        .unwrap()
        .unwrap()
        .at;
    assert_eq!(second.seq, 1);
    assert_ne!(second.epoch, first.epoch, "seq 1 again, but a new stream");
    let ann = conn(1, "ann");
    let sub = hub
        .subscribe(&ann, "news", since(1, first.epoch), 8, |_| None)
        .unwrap()
        .unwrap();
    assert!(
        sub.gap,
        "a since from the old stream is not matched against the new one"
    );
}

#[test]
fn a_subscribe_is_answered_after_its_replay_and_before_any_live_message() {
    let hub = hub();
    let first = hub
        .publish("feed", None, json("1"), true, || None)
        .unwrap()
        .unwrap()
        .at;
    hub.publish("feed", None, json("2"), true, || None)
        .unwrap()
        .unwrap();
    let ann = conn(1, "ann");
    // A publish racing the subscribe can only come before the replay
    // (then it is replayed) or after the answer: the answer is queued
    // under the channel's lock.
    hub.subscribe(&ann, "feed", since(0, first.epoch), 8, |sub| {
        Some(Utf8Bytes::from(format!("answer {}", sub.at.seq)))
    })
    .unwrap();
    hub.publish("feed", None, json("3"), true, || None)
        .unwrap()
        .unwrap();
    let got = received(&ann);
    assert_eq!(got.len(), 4, "{got:?}");
    assert!(got[0].contains(r#""seq":1"#) && got[1].contains(r#""seq":2"#));
    assert_eq!(got[2], "answer 2");
    assert!(got[3].contains(r#""seq":3"#), "{got:?}");
}
