//! Subscriptions: joining a channel (replaying what was missed since a
//! position, or waiting for the channel's history to load from Redis),
//! leaving it, and the join/leave events presence listeners get.

use std::sync::Arc;

use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::protocol;
use super::{
    Channel, ChannelState, Conn, Epoch, Follow, Hub, HubError, Pending, Since, Subscribed, lock,
    text_frame,
};

impl Hub {
    /// Subscribe `conn`, replaying what it missed after `since` first, and
    /// tell the channel's presence listeners. What `answer` makes of the
    /// result is queued to `conn` right after the replay, before any live
    /// message. `None`: the channel's history is loading from Redis; the
    /// subscription (and `answer`) completes when it has.
    pub(crate) fn subscribe(
        &self,
        conn: &Arc<Conn>,
        channel: &str,
        since: Option<Since<'_>>,
        max_per_client: usize,
        answer: impl FnOnce(&Subscribed) -> Option<Utf8Bytes> + Send + 'static,
    ) -> Result<Option<Subscribed>, HubError> {
        if !conn.access.may_subscribe(channel) {
            return Err(HubError::Forbidden);
        }
        {
            let channels = lock(&conn.channels);
            if let Some(ch) = channels.iter().find(|c| &*c.name == channel) {
                let mut state = lock(&ch.state);
                if let Follow::Loading { pending, .. } = &mut state.follow
                    && !pending.iter().any(|p| p.conn.id == conn.id && !p.join)
                {
                    // Answered once the channel has loaded (one such answer
                    // waits per connection; more are answered now).
                    let mut again = Pending::new(conn, None, Box::new(answer));
                    again.join = false;
                    pending.push(again);
                    return Ok(None);
                }
                let subscribed = Subscribed {
                    at: state.stream.position(),
                    gap: false,
                };
                if let Some(text) = answer(&subscribed) {
                    conn.reply(&text);
                }
                return Ok(Some(subscribed));
            }
            if channels.len() >= max_per_client {
                return Err(HubError::ChannelLimit);
            }
        }
        let (channel, subscribed) = self.with_live_channel(channel, |channel, state| {
            let redis = self.redis_up();
            let head = state.stream.position();
            let follow_redis = match &mut state.follow {
                Follow::Loading { pending, .. } => {
                    pending.push(Pending::new(conn, since, Box::new(answer)));
                    return (channel.clone(), None);
                }
                // A position past this node's mirror was seen on another
                // node, its message still on the way here: ask Redis.
                Follow::Mirror => since.is_some_and(|s| {
                    s.seq > head.seq && s.epoch.and_then(Epoch::parse) == Some(head.epoch)
                }),
                Follow::Local | Follow::Stale | Follow::Idle => redis.is_some(),
            };
            if let Some(redis) = redis.filter(|_| follow_redis) {
                let pending = vec![Pending::new(conn, since, Box::new(answer))];
                state.follow = Follow::Loading {
                    buffered: Vec::new(),
                    pending,
                    overflowed: false,
                };
                redis.watch(&channel.name);
                return (channel.clone(), None);
            }
            if matches!(state.follow, Follow::Idle) {
                self.go_local(channel, state);
            }
            let subscribed = self.subscribe_locked(conn, channel, state, since);
            // Under the channel's lock: the answer comes after the replay
            // and before any live message.
            if let Some(text) = answer(&subscribed) {
                conn.reply(&text);
            }
            (channel.clone(), Some(subscribed))
        })?;
        lock(&conn.channels).push(channel);
        self.0.metrics.subscriptions.increment(1.0);
        Ok(subscribed)
    }

    pub(super) fn subscribe_locked(
        &self,
        conn: &Arc<Conn>,
        channel: &Channel,
        state: &mut ChannelState,
        since: Option<Since<'_>>,
    ) -> Subscribed {
        let metrics = &self.0.metrics;
        let mut gap = false;
        if let Some(since) = since {
            match state.stream.since(since, self.0.bounds, Instant::now()) {
                Some(missed) => {
                    for msg in missed {
                        conn.push(msg.frame_for(conn), metrics);
                    }
                }
                None => gap = true,
            }
        }
        if let Some(redis) = &self.0.redis {
            let first = !state.subscribers.values().any(|s| s.name == conn.name);
            redis.present(&channel.name, &conn.name, true, first);
        }
        self.presence_event(state, "join", &channel.name, &conn.name);
        state.subscribers.insert(conn.id, conn.clone());
        Subscribed {
            at: state.stream.position(),
            gap,
        }
    }

    /// Tell the channel's presence listeners here that `client` joined or left.
    pub(super) fn presence_event(
        &self,
        state: &ChannelState,
        kind: &str,
        channel: &str,
        client: &str,
    ) {
        let mut listeners = state.subscribers.values().filter(|s| s.presence).peekable();
        if listeners.peek().is_none() {
            return;
        }
        let event = text_frame(&protocol::presence_event(kind, channel, client));
        for sub in listeners {
            sub.push(event.clone(), &self.0.metrics);
        }
    }

    pub(crate) fn unsubscribe(&self, conn: &Arc<Conn>, channel: &str) -> Result<(), HubError> {
        let found = {
            let mut channels = lock(&conn.channels);
            let pos = channels.iter().position(|c| &*c.name == channel);
            pos.map(|i| channels.swap_remove(i))
        };
        let channel = found.ok_or(HubError::NotSubscribed)?;
        self.leave(&channel, conn);
        Ok(())
    }

    pub(super) fn leave(&self, channel: &Channel, conn: &Conn) {
        let metrics = &self.0.metrics;
        let mut state = lock(&channel.state);
        let head = state.stream.position();
        if let Follow::Loading { pending, .. } = &mut state.follow
            && pending.iter().any(|p| p.conn.id == conn.id)
        {
            // Its waiting subscribes are answered before the unsubscribe's
            // ack, from what this node has.
            let (gone, waiting): (Vec<Pending>, Vec<Pending>) = std::mem::take(pending)
                .into_iter()
                .partition(|p| p.conn.id == conn.id);
            *pending = waiting;
            let subscribed = Subscribed {
                at: head,
                gap: false,
            };
            let joining = gone.iter().any(|p| p.join);
            for p in gone {
                if let Some(text) = (p.answer)(&subscribed) {
                    p.conn.reply(&text);
                }
            }
            if joining {
                // Never subscribed: nothing more to undo.
                self.unwatch_if_unused(channel, &mut state);
                drop(state);
                metrics.subscriptions.decrement(1.0);
                return;
            }
        }
        if state.subscribers.remove(&conn.id).is_none() {
            return;
        }
        if let Some(redis) = &self.0.redis {
            let last = !state.subscribers.values().any(|s| s.name == conn.name);
            redis.present(&channel.name, &conn.name, false, last);
            self.unwatch_if_unused(channel, &mut state);
        }
        self.presence_event(&state, "leave", &channel.name, &conn.name);
        drop(state);
        metrics.subscriptions.decrement(1.0);
    }
}
