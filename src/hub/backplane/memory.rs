//! The single-node backplane: a channel's stream is its sequence number,
//! epoch and bounded history, kept beside its subscribers under the
//! channel's lock; there are no other nodes to tell anything. This is the
//! hub as it always was, and the default.

use std::collections::VecDeque;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::time::Instant;

use super::{Backplane, Draft, Epoch, Position, Since};
use crate::hub::Msg;
use crate::hub::protocol::Body;

/// `[hub]`'s history bounds.
pub(crate) struct Memory {
    /// Messages a stream keeps for `since`.
    history_size: usize,
    /// How long a kept message stays resumable.
    history_ttl: Duration,
}

impl Memory {
    pub(crate) fn new(history_size: usize, history_ttl: Duration) -> Memory {
        Memory {
            history_size,
            history_ttl,
        }
    }

    /// Drop what is past the size or age bound, leaving room for `room`
    /// more messages.
    fn trim(&self, history: &mut VecDeque<Arc<Msg>>, room: usize, now: Instant) {
        let keep = self.history_size.saturating_sub(room);
        while history.len() > keep {
            history.pop_front();
        }
        while history
            .front()
            .is_some_and(|m| now.duration_since(m.at) > self.history_ttl)
        {
            history.pop_front();
        }
    }
}

/// A channel's whole stream.
pub(crate) struct MemoryStream {
    epoch: Epoch,
    seq: u64,
    history: VecDeque<Arc<Msg>>,
}

impl Backplane for Memory {
    type Stream = MemoryStream;

    fn open(&self) -> MemoryStream {
        MemoryStream {
            epoch: Epoch::random(),
            seq: 0,
            history: VecDeque::new(),
        }
    }

    fn position(&self, stream: &MemoryStream) -> Position {
        Position {
            seq: stream.seq,
            epoch: stream.epoch,
        }
    }

    fn publish(&self, stream: &mut MemoryStream, draft: Draft) -> Option<Arc<Msg>> {
        stream.seq += 1;
        let msg = Arc::new(Msg {
            seq: stream.seq,
            epoch: stream.epoch,
            at: draft.at,
            channel: draft.channel,
            from: draft.from,
            body: draft.body,
            envelope: OnceLock::new(),
            raw: OnceLock::new(),
        });
        self.trim(&mut stream.history, 1, draft.at);
        if self.history_size > 0 {
            stream.history.push_back(msg.clone());
        }
        Some(msg)
    }

    fn since<'s>(
        &self,
        stream: &'s mut MemoryStream,
        since: Since<'_>,
        now: Instant,
    ) -> Option<impl Iterator<Item = &'s Arc<Msg>> + 's> {
        self.trim(&mut stream.history, 0, now);
        let oldest = stream.history.front().map_or(stream.seq + 1, |m| m.seq);
        let other_epoch = since
            .epoch
            .is_some_and(|e| Epoch::parse(e) != Some(stream.epoch));
        if other_epoch || since.seq > stream.seq || since.seq + 1 < oldest {
            return None;
        }
        let after = since.seq;
        Some(stream.history.iter().filter(move |m| m.seq > after))
    }

    fn expired(&self, stream: &MemoryStream, now: Instant) -> bool {
        stream
            .history
            .back()
            .is_none_or(|m| now.duration_since(m.at) > self.history_ttl)
    }

    fn node_subscribe(&self, _channel: &str) {}

    fn node_unsubscribe(&self, _channel: &str) {}

    fn joined(&self, _channel: &str, _client: &str) {}

    fn left(&self, _channel: &str, _client: &str) {}

    fn present_elsewhere(&self, _channel: &str, _names: &mut Vec<String>) {}

    fn direct(&self, _to: &str, _ns: Option<&str>, _from: Option<&str>, _body: &Body) -> usize {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_tungstenite::tungstenite::Utf8Bytes;

    fn publish(memory: &Memory, stream: &mut MemoryStream, n: usize) {
        for _ in 0..n {
            let draft = Draft {
                channel: "c".into(),
                from: None,
                body: Body::Text(Utf8Bytes::from_static("x")),
                at: Instant::now(),
            };
            assert!(memory.publish(stream, draft).is_some(), "sequenced here");
        }
    }

    fn replay(memory: &Memory, stream: &mut MemoryStream, seq: u64) -> Option<Vec<u64>> {
        let epoch = stream.epoch.to_string();
        let since = Since {
            seq,
            epoch: Some(&epoch),
        };
        let missed = memory.since(stream, since, Instant::now())?;
        Some(missed.map(|m| m.seq).collect())
    }

    #[tokio::test(start_paused = true)]
    async fn since_replays_within_the_kept_history_else_a_gap() {
        let memory = Memory::new(3, Duration::from_secs(60));
        let mut stream = memory.open();
        publish(&memory, &mut stream, 10);
        assert_eq!(memory.position(&stream).seq, 10);
        assert_eq!(replay(&memory, &mut stream, 7), Some(vec![8, 9, 10]));
        assert_eq!(replay(&memory, &mut stream, 10), Some(vec![]));
        assert_eq!(
            replay(&memory, &mut stream, 6),
            None,
            "9 and older are gone"
        );
        assert_eq!(
            replay(&memory, &mut stream, 11),
            None,
            "ahead of the stream"
        );
        // Past the age bound nothing is resumable but the present.
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(memory.expired(&stream, Instant::now()));
        assert_eq!(replay(&memory, &mut stream, 9), None);
        assert_eq!(replay(&memory, &mut stream, 10), Some(vec![]));
    }

    #[test]
    fn without_history_only_the_present_resumes() {
        let memory = Memory::new(0, Duration::from_secs(60));
        let mut stream = memory.open();
        publish(&memory, &mut stream, 2);
        assert_eq!(replay(&memory, &mut stream, 2), Some(vec![]));
        assert_eq!(replay(&memory, &mut stream, 1), None);
        assert!(memory.expired(&stream, Instant::now()));
    }
}
