//! The hub's own locking, driven deterministically: a hook runs between a
//! channel's lookup in the map and the lock on the channel, where the
//! sweeper (or anyone) may act.

use std::cell::RefCell;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::access::ChannelAccess;
use super::protocol::Body;
use super::{Conn, Hub, Queue};
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
    })
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
    })
}

fn json(text: &'static str) -> Body {
    Body::Json(Utf8Bytes::from_static(text))
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
    let sub = hub.subscribe(&bob, "room", None, 8).unwrap();
    assert_eq!(sub.seq, 0);
    let (seq, delivered) = hub.publish("room", None, json("1"), true).unwrap();
    assert_eq!((seq, delivered), (1, 1), "the publish found bob's channel");
    let got = received(&bob);
    assert_eq!(got.len(), 1);
    assert!(got[0].contains(r#""seq":1"#), "{got:?}");
    assert_eq!(hub.presence("room"), Some(vec!["bob".to_owned()]));
}

#[test]
fn a_publish_whose_new_channel_is_swept_before_it_locks_it_stays_in_history() {
    let hub = hub();
    between(|hub| hub.sweep());
    let (seq, _) = hub.publish("news", None, json("1"), true).unwrap();
    assert_eq!(seq, 1);
    let ann = conn(2, "ann");
    let sub = hub.subscribe(&ann, "news", Some(0), 8).unwrap();
    assert_eq!((sub.seq, sub.gap), (1, false), "the channel kept seq 1");
    let got = received(&ann);
    assert_eq!(got.len(), 1, "seq 1 replayed from history: {got:?}");
}

#[test]
fn the_sweeper_still_forgets_unused_channels() {
    let hub = hub();
    let bob = conn(1, "bob");
    hub.subscribe(&bob, "room", None, 8).unwrap();
    hub.unsubscribe(&bob, "room").unwrap();
    hub.sweep();
    assert!(hub.channels().is_empty());
}
