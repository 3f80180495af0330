//! The backplane: the engine behind the hub that owns what every wsgate
//! node must agree on, so that many nodes behind one load balancer serve
//! one hub. The hub itself stays local (connections, their queues, each
//! channel's local subscribers and the fan-out to them); the backplane
//! owns a channel's stream (sequence numbers, the epoch they count in,
//! history for `since`), which nodes want which channel, where a named
//! client is connected, and who is present.
//!
//! One engine is built in: [`Memory`], the single-node hub (the default),
//! whose stream is a few fields beside the channel's subscribers, so its
//! publish path has no allocation, lock or await beyond what the hub had
//! before the backplane existed. The second the design calls for is Redis
//! (issue 13); the trait is its contract:
//!
//! - **Nothing awaits.** Every method returns at once, called with a
//!   channel's lock held. An engine that talks to the network hands work to
//!   its own task through a bounded queue with a counted overflow, and
//!   feeds what other nodes publish back into the hub's local fan-out. No
//!   client session and no accept loop ever waits on it.
//! - **Sequencing.** `publish` gives back the sequenced message when the
//!   engine sequences it at once (memory): the hub delivers it locally at
//!   once. An engine that sequences remotely gives back `None`, and the
//!   message comes back, in sequence order with every other node's, to be
//!   delivered then; so every subscriber on every node sees one order.
//! - **One subscription per node per channel:** `node_subscribe` when a
//!   channel gets its first local subscriber, `node_unsubscribe` when its
//!   last one leaves; never per client.

mod memory;

pub(crate) use memory::Memory;

use std::sync::Arc;

use tokio::time::Instant;

use super::Msg;
use super::protocol::Body;

/// What the hub needs from the engine that carries channels between nodes.
pub(crate) trait Backplane: Send + Sync + 'static {
    /// A channel's stream as this node holds it: all of it (memory), or
    /// the tail this node has seen (an engine elsewhere).
    type Stream: Send;

    /// The stream of a channel this node starts to use (its epoch is
    /// chosen here, or learnt from the engine).
    fn open(&self) -> Self::Stream;

    /// The stream's last position.
    fn position(&self, stream: &Self::Stream) -> Position;

    /// Sequence a message published on this node. `Some`: it is in the
    /// stream, deliver it now. `None`: the engine sequences it and it comes
    /// back in order with every other node's.
    fn publish(&self, stream: &mut Self::Stream, draft: Draft) -> Option<Arc<Msg>>;

    /// What a subscriber resuming from `since` missed, oldest first; `None`
    /// is a gap (another epoch, history too short, or `since` ahead).
    fn since<'s>(
        &self,
        stream: &'s mut Self::Stream,
        since: Since<'_>,
        now: Instant,
    ) -> Option<impl Iterator<Item = &'s Arc<Msg>> + 's>;

    /// Nothing in the stream is resumable any more: with no subscriber
    /// either, the hub may forget the channel.
    fn expired(&self, stream: &Self::Stream, now: Instant) -> bool;

    /// The channel's first local subscriber came / its last one left.
    fn node_subscribe(&self, channel: &str);
    fn node_unsubscribe(&self, channel: &str);

    /// Presence: a client of this node joined / left a channel; the names
    /// subscribed to it on other nodes are added to `names`.
    fn joined(&self, channel: &str, client: &str);
    fn left(&self, channel: &str, client: &str);
    fn present_elsewhere(&self, channel: &str, names: &mut Vec<String>);

    /// A direct message for clients named `to` on other nodes; returns how
    /// many nodes it was handed to (memory: there are none).
    fn direct(&self, to: &str, namespace: Option<&str>, from: Option<&str>, body: &Body) -> usize;
}

/// A message published on this node, before it has a place in the stream.
pub(crate) struct Draft {
    pub(crate) channel: Arc<str>,
    pub(crate) from: Option<Arc<str>>,
    pub(crate) body: Body,
    pub(crate) at: Instant,
}

/// The identity of one run of a channel's stream: a random 64-bit id,
/// written as 16 lowercase hex digits on the wire. A channel's stream
/// starts again (a new epoch, seq from 1) when it was forgotten or its
/// engine lost it; a position is only meaningful with its epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Epoch(pub(super) u64);

impl Epoch {
    pub(crate) fn random() -> Epoch {
        Epoch(rand::random())
    }

    /// An epoch as a client gave it; `None` if it is not one this hub
    /// could have written (and so names no stream of it).
    pub(crate) fn parse(text: &str) -> Option<Epoch> {
        if text.len() != 16 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        u64::from_str_radix(text, 16).ok().map(Epoch)
    }
}

impl std::fmt::Display for Epoch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// A position in a channel's stream: a sequence number within an epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Position {
    pub(crate) seq: u64,
    pub(crate) epoch: Epoch,
}

/// Where a resuming subscriber left off.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Since<'r> {
    pub(crate) seq: u64,
    /// The epoch that `seq` counts in, as the client gave it; absent (older
    /// clients): `seq` is taken to count in the current epoch.
    pub(crate) epoch: Option<&'r str>,
}
