//! A connection's outbound queue: bounded in messages and bytes, never
//! waited on by the publisher. Allocated lazily (an idle connection holds an
//! empty `VecDeque`), woken through a `Notify` that keeps one permit, so a
//! push while the session is busy is never lost. What it holds are whole
//! frames as they go on the wire, shared by every recipient of a message;
//! the byte bound counts them whole.

use std::collections::VecDeque;
use std::sync::Mutex;

use bytes::Bytes;
use tokio::sync::Notify;

use crate::config::SlowConsumer;

pub(crate) struct Queue {
    state: Mutex<State>,
    notify: Notify,
    max_messages: usize,
    max_bytes: usize,
    policy: SlowConsumer,
}

#[derive(Default)]
struct State {
    items: VecDeque<Bytes>,
    bytes: usize,
    /// Messages dropped (drop-oldest policy) since the session last looked.
    lagged: u64,
    /// The close policy tripped: the session must end with 1008.
    overflowed: bool,
}

/// What the session takes out of the queue in one go.
pub(crate) struct Batch {
    pub(crate) items: VecDeque<Bytes>,
    pub(crate) lagged: u64,
    pub(crate) overflowed: bool,
}

/// What a push did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Pushed {
    Queued,
    /// Queued after dropping this many older messages.
    DroppedOldest(u64),
    /// Not queued: the connection is over its bound and will be closed.
    Overflow,
}

impl Queue {
    pub(crate) fn new(max_messages: usize, max_bytes: usize, policy: SlowConsumer) -> Self {
        Queue {
            state: Mutex::new(State::default()),
            notify: Notify::new(),
            max_messages,
            max_bytes,
            policy,
        }
    }

    /// Queue `msg` without waiting; apply the slow-consumer policy if full.
    pub(crate) fn push(&self, msg: Bytes) -> Pushed {
        let len = msg.len();
        let pushed = {
            let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
            if s.overflowed {
                return Pushed::Overflow;
            }
            let fits =
                |s: &State| s.items.len() < self.max_messages && s.bytes + len <= self.max_bytes;
            if fits(&s) {
                s.bytes += len;
                s.items.push_back(msg);
                Pushed::Queued
            } else {
                match self.policy {
                    SlowConsumer::Close => {
                        s.overflowed = true;
                        s.items.clear();
                        s.bytes = 0;
                        Pushed::Overflow
                    }
                    SlowConsumer::DropOldest => {
                        let mut dropped = 0;
                        while !s.items.is_empty() && !fits(&s) {
                            if let Some(old) = s.items.pop_front() {
                                s.bytes -= old.len();
                                dropped += 1;
                            }
                        }
                        // A single message larger than the byte bound is the one dropped.
                        if fits(&s) {
                            s.bytes += len;
                            s.items.push_back(msg);
                        } else {
                            dropped += 1;
                        }
                        s.lagged += dropped;
                        Pushed::DroppedOldest(dropped)
                    }
                }
            }
        };
        self.notify.notify_one();
        pushed
    }

    /// Messages and bytes waiting now.
    pub(crate) fn depth(&self) -> (usize, usize) {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        (s.items.len(), s.bytes)
    }

    /// Everything queued so far, and what happened since the last take.
    pub(crate) fn take(&self) -> Batch {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.bytes = 0;
        Batch {
            items: std::mem::take(&mut s.items),
            lagged: std::mem::take(&mut s.lagged),
            overflowed: s.overflowed,
        }
    }

    /// Has the close policy tripped? (Without taking anything.)
    pub(crate) fn overflowed(&self) -> bool {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .overflowed
    }

    /// Resolves when something was pushed since the last call.
    pub(crate) async fn ready(&self) {
        self.notify.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(n: usize) -> Bytes {
        Bytes::from(vec![0u8; n])
    }

    #[test]
    fn close_policy_trips_on_messages_or_bytes() {
        let q = Queue::new(2, 100, SlowConsumer::Close);
        assert_eq!(q.push(msg(10)), Pushed::Queued);
        assert_eq!(q.push(msg(10)), Pushed::Queued);
        assert_eq!(q.push(msg(10)), Pushed::Overflow);
        assert!(q.take().overflowed);
        let q = Queue::new(10, 100, SlowConsumer::Close);
        assert_eq!(q.push(msg(60)), Pushed::Queued);
        assert_eq!(q.push(msg(60)), Pushed::Overflow);
    }

    #[test]
    fn drop_oldest_keeps_the_newest_and_counts() {
        let q = Queue::new(2, 1000, SlowConsumer::DropOldest);
        for n in 1..=5 {
            q.push(msg(n));
        }
        let batch = q.take();
        assert_eq!(batch.lagged, 3);
        let lens: Vec<usize> = batch.items.iter().map(Bytes::len).collect();
        assert_eq!(lens, [4, 5]);
        assert!(!batch.overflowed);
        assert_eq!(q.push(msg(2000)), Pushed::DroppedOldest(1));
        assert_eq!(q.take().items.len(), 0);
    }
}
