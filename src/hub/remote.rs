//! The hub's side of the Redis engine: what the engine's task brings back
//! (messages, direct messages, loaded history, the link going up or down)
//! applied under the same locks as everything else, and what the task
//! asks of the hub (which channels it wants, this node's registry).
//!
//! Per channel, messages from Redis are applied strictly in sequence: the
//! next one extends the mirror and goes to the subscribers; one already
//! applied is dropped; a hole (or another epoch) reloads the channel from
//! Redis, holding later messages and new subscribers until it has.

use std::sync::Arc;

use tokio::time::Instant;

use super::backplane::redis::{Direct, Incoming, Loaded};
use super::{
    Channel, ChannelState, Conn, Follow, Hub, Msg, Pending, Position, Since, Stream, Subscribed,
    lock,
};

/// Most live messages a loading channel holds; past it, the channel loads
/// again once it has loaded.
const BUFFERED: usize = 4096;

/// What the engine's task should do for a channel.
pub(crate) struct Want {
    /// Hold a Redis subscription for it.
    pub(crate) subscription: bool,
    /// Load its head and history, telling Redis the last position this
    /// node saw (Redis behind it means it lost messages: a new epoch).
    pub(crate) load: Option<Position>,
}

/// This node's entries in Redis's registry, from the hub's own state.
pub(crate) struct Registry {
    /// `namespace\x1fname` of every connected name.
    pub(crate) clients: Vec<String>,
    /// Every connected name.
    pub(crate) names: Vec<String>,
    /// Per channel, the names subscribed to it here.
    pub(crate) present: Vec<(Arc<str>, Vec<Arc<str>>)>,
}

impl Pending {
    pub(super) fn new(
        conn: &Arc<Conn>,
        since: Option<Since<'_>>,
        answer: super::Answer,
    ) -> Pending {
        Pending {
            conn: conn.clone(),
            since: since.map(|s| (s.seq, s.epoch.map(str::to_owned))),
            answer,
            join: true,
        }
    }
}

impl Hub {
    fn all_channels(&self) -> Vec<Arc<Channel>> {
        lock(&self.0.channels).values().cloned().collect()
    }

    fn node(&self) -> &str {
        self.0.redis.as_ref().map_or("", |r| r.node())
    }

    /// The link is up: every channel in use here follows Redis again.
    pub(crate) fn backplane_up(&self) {
        let Some(redis) = &self.0.redis else { return };
        for channel in self.all_channels() {
            let mut state = lock(&channel.state);
            if state.subscribers.is_empty() || matches!(state.follow, Follow::Loading { .. }) {
                continue;
            }
            state.follow = Follow::Loading {
                buffered: Vec::new(),
                pending: Vec::new(),
                overflowed: false,
            };
            redis.watch(&channel.name);
        }
    }

    /// The link is down: channels stop following Redis; subscribers
    /// waiting on a load are answered from what this node has.
    pub(crate) fn backplane_down(&self) {
        for channel in self.all_channels() {
            let mut state = lock(&channel.state);
            self.unfollow(&channel, &mut state);
        }
    }

    /// Stop following Redis (it is unreachable): a mirror goes stale.
    fn unfollow(&self, channel: &Channel, state: &mut ChannelState) {
        let was = std::mem::replace(&mut state.follow, Follow::Stale);
        match was {
            Follow::Loading { pending, .. } => {
                for p in pending {
                    self.admit(channel, state, p);
                }
            }
            Follow::Mirror | Follow::Stale => {}
            other @ (Follow::Local | Follow::Idle) => state.follow = other,
        }
    }

    /// Sequence the channel here from now on (Redis is unreachable): in a
    /// new local epoch, so no position of it is taken for one of Redis's.
    pub(super) fn go_local(&self, channel: &Channel, state: &mut ChannelState) {
        self.unfollow(channel, state);
        if !matches!(state.follow, Follow::Local) {
            state.stream = Stream::new();
            state.follow = Follow::Local;
        }
    }

    /// The last subscriber (or waiting subscriber) left: stop following.
    pub(super) fn unwatch_if_unused(&self, channel: &Channel, state: &mut ChannelState) {
        let Some(redis) = &self.0.redis else { return };
        let waiting = match &state.follow {
            Follow::Loading { pending, .. } => !pending.is_empty(),
            Follow::Mirror => false,
            Follow::Local | Follow::Idle | Follow::Stale => return,
        };
        if state.subscribers.is_empty() && !waiting {
            state.follow = Follow::Idle;
            state.mirrored = None;
            redis.watch(&channel.name);
        }
    }

    /// A subscriber that waited for the load joins now.
    fn admit(&self, channel: &Channel, state: &mut ChannelState, p: Pending) {
        let since = p.since.as_ref().map(|(seq, epoch)| Since {
            seq: *seq,
            epoch: epoch.as_deref(),
        });
        let subscribed = match p.join {
            true => self.subscribe_locked(&p.conn, channel, state, since),
            false => Subscribed {
                at: state.stream.position(),
                gap: false,
            },
        };
        if let Some(text) = (p.answer)(&subscribed) {
            p.conn.reply(&text);
        }
    }

    pub(crate) fn wants(&self, name: &str) -> Want {
        let channel = self.channel(name, false).ok().flatten();
        let Some(channel) = channel else {
            return Want {
                subscription: false,
                load: None,
            };
        };
        let state = lock(&channel.state);
        let loading = matches!(state.follow, Follow::Loading { .. });
        let seen = state.mirrored.unwrap_or_else(|| state.stream.position());
        Want {
            subscription: loading || matches!(state.follow, Follow::Mirror),
            load: loading.then_some(seen),
        }
    }

    /// A channel's head and history arrived: the mirror starts from them;
    /// subscribers here catch up on what they missed (or hear of a gap),
    /// those waiting are admitted (replayed from `since`, answered), and
    /// then all get the live messages that came meanwhile.
    pub(crate) fn install(&self, name: &str, loaded: Loaded) {
        let Some(channel) = self.channel(name, false).ok().flatten() else {
            return;
        };
        let mut state = lock(&channel.state);
        if state.removed || !matches!(state.follow, Follow::Loading { .. }) {
            return;
        }
        let Follow::Loading {
            buffered,
            pending,
            overflowed,
        } = std::mem::replace(&mut state.follow, Follow::Mirror)
        else {
            return;
        };
        // No stream in Redis yet: an empty one, whose epoch the first
        // message brings.
        let head = loaded.at.unwrap_or_else(|| Stream::new().position());
        let now = Instant::now();
        let mut stream = Stream::at(head);
        for (incoming, age) in loaded.kept {
            let when = now.checked_sub(age).unwrap_or(now);
            let msg = self.msg(&channel, incoming, when);
            stream.push(Arc::new(msg), self.0.bounds);
        }
        // `push` moved the head to the last kept message; the head is Redis's.
        let mut stream = stream.with_head(head);
        let replaced = state.mirrored.map(|p| p.epoch);
        if !state.subscribers.is_empty() {
            self.catch_up(&channel, &state, &stream);
        }
        std::mem::swap(&mut state.stream, &mut stream);
        state.mirrored = Some(head);
        // Admitted at the loaded head, they get what came meanwhile too.
        for p in pending {
            self.admit(&channel, &mut state, p);
        }
        for incoming in buffered {
            // Published in the stream the load replaced: never to be in
            // this one. (A later epoch's is a hole: loaded again.)
            if Some(incoming.at.epoch) == replaced && incoming.at.epoch != head.epoch {
                continue;
            }
            if let Err(hole) = self.apply(&channel, &mut state, incoming) {
                self.reload(&channel, &mut state, vec![hole]);
                return;
            }
        }
        if overflowed {
            // What was dropped is in Redis's history: fetch it.
            return self.reload(&channel, &mut state, Vec::new());
        }
        self.unwatch_if_unused(&channel, &mut state);
    }

    /// Bring this node's subscribers from where they were in Redis's
    /// stream to `stream`'s head: the kept messages they missed, and a gap
    /// notice where those cannot be all of them.
    fn catch_up(&self, channel: &Channel, state: &ChannelState, stream: &Stream) {
        let head = stream.position();
        let (from, complete) = match state.mirrored {
            // The same stream: what came after.
            Some(seen) if seen.epoch == head.epoch => (seen.seq, stream.covers(seen.seq)),
            // Saw nothing of any stream: all of this one, if it is all here.
            Some(seen) if seen.seq == 0 => (0, stream.covers(0)),
            // Another stream (Redis restarted, or failed over and lost
            // writes): all of it, but what the old one had after `seen` is lost.
            Some(_) => (0, false),
            // Subscribed while Redis was away (a local stream): from here.
            None => (head.seq, false),
        };
        for msg in stream.after(from) {
            self.fan_out(state, msg, msg.skip);
        }
        if !complete {
            self.gap_notice(channel, state, head);
        }
    }

    /// Load the channel again; `buffered` (and what comes meanwhile) waits.
    fn reload(&self, channel: &Channel, state: &mut ChannelState, buffered: Vec<Incoming>) {
        state.follow = Follow::Loading {
            buffered,
            pending: Vec::new(),
            overflowed: false,
        };
        if let Some(redis) = &self.0.redis {
            redis.watch(&channel.name);
        }
    }

    /// Tell the channel's JSON subscribers here that they may have missed
    /// messages: the stream continues from `at`; resync.
    fn gap_notice(&self, channel: &Channel, state: &ChannelState, at: Position) {
        let why = "the channel's stream was interrupted (the backplane lost or replaced it): \
                   messages may have been missed; live from here, resync";
        let notice = super::text_frame(&super::protocol::error(
            "gap",
            why,
            None,
            Some((&channel.name, at)),
        ));
        for sub in state.subscribers.values().filter(|s| s.json) {
            sub.push(notice.clone(), &self.0.metrics);
        }
    }

    /// A load of the channel failed (it is tried again): subscribers
    /// waiting on it are admitted from what this node has.
    pub(crate) fn load_failed(&self, name: &str) {
        let Some(channel) = self.channel(name, false).ok().flatten() else {
            return;
        };
        let mut state = lock(&channel.state);
        let Follow::Loading { pending, .. } = &mut state.follow else {
            return;
        };
        for p in std::mem::take(pending) {
            self.admit(&channel, &mut state, p);
        }
    }

    /// A channel message from Redis.
    pub(crate) fn remote_message(&self, name: &str, incoming: Incoming) {
        let Some(channel) = self.channel(name, false).ok().flatten() else {
            return;
        };
        let mut state = lock(&channel.state);
        if state.removed {
            return;
        }
        match &mut state.follow {
            Follow::Loading {
                buffered,
                overflowed,
                ..
            } => match buffered.len() < BUFFERED {
                true => buffered.push(incoming),
                // Dropped here, fetched from history after the install.
                false => *overflowed = true,
            },
            Follow::Mirror => {
                if let Err(hole) = self.apply(&channel, &mut state, incoming) {
                    self.reload(&channel, &mut state, vec![hole]);
                }
            }
            Follow::Local | Follow::Idle | Follow::Stale => {}
        }
    }

    /// Extend the mirror with the next message and deliver it; one already
    /// applied is dropped; anything else is a hole, handed back.
    fn apply(
        &self,
        channel: &Channel,
        state: &mut ChannelState,
        incoming: Incoming,
    ) -> Result<(), Incoming> {
        let mut next = state.stream.next();
        if next.seq == 1 && incoming.at.seq == 1 {
            // An empty mirror takes the epoch its first message brings.
            state.stream = Stream::at(Position {
                seq: 0,
                epoch: incoming.at.epoch,
            });
            next.epoch = incoming.at.epoch;
        }
        if incoming.at.epoch == next.epoch && incoming.at.seq < next.seq {
            return Ok(());
        }
        if incoming.at != next {
            return Err(incoming);
        }
        let msg = Arc::new(self.msg(channel, incoming, Instant::now()));
        state.stream.push(msg.clone(), self.0.bounds);
        state.mirrored = Some(state.stream.position());
        self.fan_out(state, &msg, msg.skip);
        Ok(())
    }

    /// A message from Redis as the hub keeps it; one this node's client
    /// sent without echo skips that client.
    fn msg(&self, channel: &Channel, incoming: Incoming, when: Instant) -> Msg {
        let mut msg = Msg::new(
            incoming.at,
            channel.name.clone(),
            incoming.from,
            incoming.body,
            when,
        );
        msg.skip = (!incoming.echo && *incoming.node == *self.node()).then_some(incoming.conn);
        msg
    }

    /// A client of another node joined or left a channel followed here.
    pub(crate) fn remote_presence(&self, name: &str, join: bool, client: &str) {
        let Some(channel) = self.channel(name, false).ok().flatten() else {
            return;
        };
        let state = lock(&channel.state);
        let kind = if join { "join" } else { "leave" };
        self.presence_event(&state, kind, name, client);
    }

    /// A direct message another node handed to this one's clients.
    pub(crate) fn remote_direct(&self, direct: Direct) {
        let delivered = self.deliver_here(
            &direct.to,
            direct.namespace.as_deref(),
            direct.from.as_deref(),
            &direct.body,
        );
        if delivered == 0 {
            self.0.metrics.dropped_no_recipient.increment(1);
        }
    }

    /// This node's registry, as Redis should list it.
    pub(crate) fn registry(&self) -> Registry {
        let (mut clients, mut names) = (Vec::new(), Vec::new());
        for (name, conns) in lock(&self.0.clients).iter() {
            names.push(name.to_string());
            let mut spaces: Vec<&str> = conns.iter().map(|c| &*c.namespace).collect();
            spaces.sort_unstable();
            spaces.dedup();
            clients.extend(
                spaces
                    .into_iter()
                    .map(|ns| super::backplane::redis::member(ns, name)),
            );
        }
        let mut present = Vec::new();
        for channel in self.all_channels() {
            let state = lock(&channel.state);
            let mut here: Vec<Arc<str>> =
                state.subscribers.values().map(|c| c.name.clone()).collect();
            drop(state);
            if here.is_empty() {
                continue;
            }
            here.sort_unstable();
            here.dedup();
            present.push((channel.name.clone(), here));
        }
        Registry {
            clients,
            names,
            present,
        }
    }
}
