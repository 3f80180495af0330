//! A channel's stream as this node holds it: its epoch, its last sequence
//! number and a bounded history of messages for `since`. With the memory
//! engine it is the whole stream, sequenced here; with Redis it mirrors the
//! tail of the stream Redis keeps, appended to in sequence order.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::{Epoch, Position, Since};
use crate::hub::Msg;

/// `[hub]`'s history bounds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bounds {
    /// Messages a stream keeps for `since`.
    pub(crate) size: usize,
    /// How long a kept message stays resumable.
    pub(crate) ttl: Duration,
}

pub(crate) struct Stream {
    epoch: Epoch,
    seq: u64,
    history: VecDeque<Arc<Msg>>,
}

impl Stream {
    /// A stream that starts here, in a new epoch.
    pub(crate) fn new() -> Stream {
        Stream::at(Position {
            seq: 0,
            epoch: Epoch::random(),
        })
    }

    /// A stream whose last position is `at`, with nothing kept yet.
    pub(crate) fn at(at: Position) -> Stream {
        Stream {
            epoch: at.epoch,
            seq: at.seq,
            history: VecDeque::new(),
        }
    }

    /// The same history under another head (Redis's, which may be past
    /// the last message kept).
    pub(crate) fn with_head(mut self, at: Position) -> Stream {
        self.epoch = at.epoch;
        self.seq = at.seq;
        self
    }

    pub(crate) fn position(&self) -> Position {
        Position {
            seq: self.seq,
            epoch: self.epoch,
        }
    }

    /// The position the next message takes when sequenced here.
    pub(crate) fn next(&self) -> Position {
        Position {
            seq: self.seq + 1,
            epoch: self.epoch,
        }
    }

    /// Append the message at `next()` (sequenced here, or the next one
    /// Redis sequenced), keeping it within `bounds`.
    pub(crate) fn push(&mut self, msg: Arc<Msg>, bounds: Bounds) {
        self.seq = msg.seq;
        trim(&mut self.history, bounds, 1, msg.at);
        if bounds.size > 0 {
            self.history.push_back(msg);
        }
    }

    /// What a subscriber resuming from `since` missed, oldest first; `None`
    /// is a gap (another epoch, history too short, or `since` ahead).
    pub(crate) fn since(
        &mut self,
        since: Since<'_>,
        bounds: Bounds,
        now: Instant,
    ) -> Option<impl Iterator<Item = &Arc<Msg>> + '_> {
        trim(&mut self.history, bounds, 0, now);
        let oldest = self.history.front().map_or(self.seq + 1, |m| m.seq);
        let other_epoch = since
            .epoch
            .is_some_and(|e| Epoch::parse(e) != Some(self.epoch));
        if other_epoch || since.seq > self.seq || since.seq + 1 < oldest {
            return None;
        }
        let after = since.seq;
        Some(self.history.iter().filter(move |m| m.seq > after))
    }

    /// Whether everything after `seq` is here: `seq` is the head, or the
    /// next message after it is kept.
    pub(crate) fn covers(&self, seq: u64) -> bool {
        seq >= self.seq || self.history.front().is_some_and(|m| m.seq <= seq + 1)
    }

    /// The kept messages after `seq`, oldest first.
    pub(crate) fn after(&self, seq: u64) -> impl Iterator<Item = &Arc<Msg>> + '_ {
        self.history.iter().filter(move |m| m.seq > seq)
    }

    /// Nothing in the stream is resumable any more.
    pub(crate) fn expired(&self, bounds: Bounds, now: Instant) -> bool {
        self.history
            .back()
            .is_none_or(|m| now.duration_since(m.at) > bounds.ttl)
    }
}

/// Drop what is past the size or age bound, leaving room for `room` more.
fn trim(history: &mut VecDeque<Arc<Msg>>, bounds: Bounds, room: usize, now: Instant) {
    let keep = bounds.size.saturating_sub(room);
    while history.len() > keep {
        history.pop_front();
    }
    while history
        .front()
        .is_some_and(|m| now.duration_since(m.at) > bounds.ttl)
    {
        history.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::protocol::Body;
    use tokio_tungstenite::tungstenite::Utf8Bytes;

    fn publish(stream: &mut Stream, bounds: Bounds, n: usize) {
        for _ in 0..n {
            let msg = Msg::new(
                stream.next(),
                "c".into(),
                None,
                Body::Text(Utf8Bytes::from_static("x")),
                Instant::now(),
            );
            stream.push(Arc::new(msg), bounds);
        }
    }

    fn replay(stream: &mut Stream, bounds: Bounds, seq: u64) -> Option<Vec<u64>> {
        let epoch = stream.epoch.to_string();
        let since = Since {
            seq,
            epoch: Some(&epoch),
        };
        let missed = stream.since(since, bounds, Instant::now())?;
        Some(missed.map(|m| m.seq).collect())
    }

    #[tokio::test(start_paused = true)]
    async fn since_replays_within_the_kept_history_else_a_gap() {
        let bounds = Bounds {
            size: 3,
            ttl: Duration::from_secs(60),
        };
        let mut stream = Stream::new();
        publish(&mut stream, bounds, 10);
        assert_eq!(stream.position().seq, 10);
        assert_eq!(replay(&mut stream, bounds, 7), Some(vec![8, 9, 10]));
        assert_eq!(replay(&mut stream, bounds, 10), Some(vec![]));
        assert_eq!(replay(&mut stream, bounds, 6), None, "9 and older are gone");
        assert_eq!(replay(&mut stream, bounds, 11), None, "ahead of the stream");
        // Past the age bound nothing is resumable but the present.
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(stream.expired(bounds, Instant::now()));
        assert_eq!(replay(&mut stream, bounds, 9), None);
        assert_eq!(replay(&mut stream, bounds, 10), Some(vec![]));
    }

    #[test]
    fn without_history_only_the_present_resumes() {
        let bounds = Bounds {
            size: 0,
            ttl: Duration::from_secs(60),
        };
        let mut stream = Stream::new();
        publish(&mut stream, bounds, 2);
        assert_eq!(replay(&mut stream, bounds, 2), Some(vec![]));
        assert_eq!(replay(&mut stream, bounds, 1), None);
        assert!(stream.expired(bounds, Instant::now()));
    }
}
