//! The backplane: what every wsgate node must agree on, so that many nodes
//! behind one load balancer serve one hub. The hub itself stays local
//! (connections, their queues, each channel's local subscribers and the
//! fan-out to them); the backplane owns a channel's stream (sequence
//! numbers, the epoch they count in, history for `since`), where a named
//! client is connected, and who is present.
//!
//! Two engines:
//!
//! - **memory** (the default): one node. A channel's [`Stream`] lives
//!   beside its subscribers under the channel's lock and is the whole
//!   truth; a publish is sequenced, kept and fanned out in one step, with
//!   no allocation, lock or await beyond the hub's own.
//! - **redis** ([`redis`]): many nodes. Redis sequences each channel's
//!   messages and keeps their history; every node with a local subscriber
//!   holds one Redis subscription for the channel and mirrors its tail in
//!   the same [`Stream`], fed in sequence order. Nothing in the hub awaits
//!   Redis: work goes to the engine's task through a bounded queue, and
//!   what comes back is applied under the channel's lock.

pub(crate) mod redis;
pub(crate) mod stream;

pub(crate) use stream::Stream;

/// The identity of one run of a channel's stream: a random 64-bit id,
/// written as 16 lowercase hex digits on the wire. A channel's stream
/// starts again (a new epoch, seq from 1) when it was forgotten or its
/// engine lost it; a position is only meaningful with its epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Epoch(pub(crate) u64);

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
