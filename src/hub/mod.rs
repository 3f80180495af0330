//! The pub/sub hub: channels with ordered, resumable history; a registry of
//! named clients for direct messages; presence. One namespace of channels
//! serves every hub route and the HTTP API. What must be the same on every
//! node (a channel's stream, where clients are, presence) belongs to the
//! backplane (`backplane/`); the hub keeps what is local to this process.
//!
//! Locking: the hub's maps are locked only to find or insert an entry; a
//! channel's own lock covers its sequence number, history and subscriber set,
//! and is held while a message is queued to each subscriber, so every
//! subscriber sees a channel's messages in sequence order. Queueing never
//! waits (a full queue trips that subscriber's slow-consumer policy), and no
//! lock is ever held across an `.await`.
//!
//! The map lock is released before a channel's lock is taken, so between
//! the two the sweeper may forget the channel. It marks a channel it forgets
//! `removed` under both locks, and only if the channel is still unused;
//! whoever then finds `removed` under the channel lock looks the name up
//! again (getting, or creating, the channel publishers now find), so no
//! subscriber waits on, and no publish goes into, a forgotten channel.
//!
//! With the Redis engine a channel also has a [`Follow`] state: whether its
//! stream is sequenced here or mirrors Redis's, and the subscribers that
//! wait for its history to load. What the engine's task brings back is
//! applied in `remote.rs`, under the same locks.

pub(crate) mod access;
pub(crate) mod admit;
pub(crate) mod api;
mod backplane;
mod conn;
mod direct;
pub(crate) mod member;
pub(crate) mod protocol;
mod queue;
mod remote;
pub(crate) mod session;
mod subscribe;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::sync::CancellationToken;

use crate::config::{BackplaneConfig, HubConfig, HubProtocol, HubRoute, NamePolicy};
use crate::metrics::HubMetrics;
use access::ChannelAccess;
use backplane::Stream;
pub(crate) use backplane::redis::{Done, Then};
use backplane::redis::{Incoming, Redis, encode_message};
use backplane::stream::Bounds;
pub(crate) use backplane::{Epoch, Position, Since};
use conn::{Compressing, raw_frame};
pub(crate) use conn::{Conn, Msg, text_frame};
use protocol::Body;
pub(crate) use queue::Queue;

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A cheap, cloneable handle to the hub.
#[derive(Clone)]
pub(crate) struct Hub(Arc<Inner>);

struct Inner {
    /// `[hub]`: history size and age, the channel limit, API tokens.
    config: HubConfig,
    /// Every channel by name: subscribed ones, and ones whose history is
    /// still resumable (the sweeper forgets the rest).
    channels: Mutex<HashMap<Arc<str>, Arc<Channel>>>,
    /// Connected clients by name, for direct messages; a list, as a route
    /// with shared names lets several connections use one name.
    clients: Mutex<HashMap<Arc<str>, Vec<Arc<Conn>>>>,
    /// Source of `Conn` ids (and of `guest-N` names): tells apart
    /// connections that share a name.
    next_id: AtomicU64,
    metrics: HubMetrics,
    /// `[hub]`'s history bounds.
    bounds: Bounds,
    /// The Redis engine (`[hub.backplane] kind = "redis"`); `None`: memory.
    redis: Option<Redis>,
}

pub(crate) struct Channel {
    name: Arc<str>,
    state: Mutex<ChannelState>,
}

struct ChannelState {
    /// Its stream: epoch, sequence number and history, as the backplane
    /// keeps them. A new channel (first publish or subscribe, and again
    /// after the sweeper forgot it) opens a new stream in a new epoch, so a
    /// `since` from before cannot be taken for a position in this one.
    stream: Stream,
    /// Where the stream is sequenced (here, or in Redis).
    follow: Follow,
    /// The last position of Redis's stream this node's subscribers were
    /// brought to (kept while Redis is away, to catch them up after).
    mirrored: Option<Position>,
    subscribers: HashMap<u64, Arc<Conn>>,
    /// The sweeper took this channel out of the map: nobody finds it any
    /// more, so nothing may be added to it (look the name up again).
    removed: bool,
}

/// Where a channel's stream is sequenced, and how far this node follows it.
enum Follow {
    /// Here: the memory engine, or Redis unreachable (a local epoch).
    Local,
    /// Redis, not followed here (no local subscriber): the stream is stale.
    Idle,
    /// Redis: subscribed, its head and history being loaded; live messages
    /// and new subscribers wait here, bounded.
    Loading {
        buffered: Vec<Incoming>,
        pending: Vec<Pending>,
        /// Live messages were dropped past the bound: load again after.
        overflowed: bool,
    },
    /// Redis: the stream mirrors Redis's, message by message, in order.
    Mirror,
    /// Redis unreachable: the mirror as last seen. The first local publish
    /// starts a local epoch; when Redis is back, subscribers catch up from
    /// its history if the epoch is unchanged.
    Stale,
}

/// A subscriber waiting for a channel's history to load.
struct Pending {
    conn: Arc<Conn>,
    since: Option<(u64, Option<String>)>,
    answer: Answer,
    /// Subscribes it (else it only answers a repeated subscribe).
    join: bool,
}

/// What a subscriber is told once subscribed (queued before any live message).
type Answer = Box<dyn FnOnce(&Subscribed) -> Option<Utf8Bytes> + Send>;

/// Why a hub operation was refused; the JSON protocol's error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HubError {
    NameTaken,
    TooManyChannels,
    ChannelLimit,
    NotSubscribed,
    /// Not in the client's subscribe or publish permissions.
    Forbidden,
    /// The backplane's queue is full.
    Busy,
    /// Redis did not confirm the operation in time (it may have happened).
    Unavailable,
}

impl HubError {
    pub(crate) fn code(self) -> &'static str {
        match self {
            HubError::NameTaken => "name_taken",
            HubError::TooManyChannels => "too_many_channels",
            HubError::ChannelLimit => "channel_limit",
            HubError::NotSubscribed => "not_subscribed",
            HubError::Forbidden => "forbidden",
            HubError::Busy => "busy",
            HubError::Unavailable => "unavailable",
        }
    }

    pub(crate) fn message(self) -> &'static str {
        match self {
            HubError::NameTaken => "that name is already connected",
            HubError::TooManyChannels => "the hub is at its channel limit",
            HubError::ChannelLimit => {
                "this connection is subscribed to its maximum number of channels"
            }
            HubError::NotSubscribed => "not subscribed to that channel",
            HubError::Forbidden => "this client may not use that channel",
            HubError::Busy => "the hub is busy (its backplane queue is full): try again",
            HubError::Unavailable => {
                "the backplane did not confirm in time: it may or may not have been delivered"
            }
        }
    }
}

/// A subscription's starting point.
pub(crate) struct Subscribed {
    /// The channel's last position when the subscription began.
    pub(crate) at: Position,
    /// `since` could not be honoured: history does not reach back that far,
    /// `since` is ahead of the channel, or it was given in another epoch.
    /// The subscription is live from now.
    pub(crate) gap: bool,
}

/// A publish sequenced on this node: where it went in the stream, and to
/// how many local subscribers it was queued. (Sequenced in Redis, the
/// answer comes later, as a [`Done`].)
#[derive(Debug, Clone, Copy)]
pub(crate) struct Published {
    pub(crate) at: Position,
    pub(crate) delivered: usize,
}

/// The hub's part in `/readyz`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Readiness {
    Ready,
    /// Connecting to Redis for the first time (one attempt: a connection
    /// and a few commands, each under `command_timeout`): not ready yet.
    Starting,
    /// Redis unreachable: serving this node's clients alone. Still ready,
    /// so that every node losing Redis does not empty the load balancer.
    Degraded,
}

/// Channel listing for the API.
pub(crate) struct ChannelInfo {
    pub(crate) name: Arc<str>,
    pub(crate) subscribers: usize,
    pub(crate) last: Position,
}

/// Keeps a client registered; unregisters (and unsubscribes) on drop.
pub(crate) struct Registration {
    hub: Hub,
    pub(crate) conn: Arc<Conn>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.hub.unregister(&self.conn);
    }
}

impl Hub {
    pub(crate) fn new(config: HubConfig) -> Result<Hub, String> {
        let bounds = Bounds {
            size: config.history_size,
            ttl: config.history_ttl,
        };
        let redis = match &config.backplane {
            BackplaneConfig::Memory => None,
            BackplaneConfig::Redis(redis) => Some(Redis::new(redis, bounds)?),
        };
        Ok(Hub(Arc::new(Inner {
            config,
            channels: Mutex::default(),
            clients: Mutex::default(),
            next_id: AtomicU64::new(1),
            metrics: HubMetrics::new(),
            bounds,
            redis,
        })))
    }

    /// Run the hub's own tasks (the sweeper; the Redis engine's link)
    /// until `cancel`. The link's task, to await: on its way out it takes
    /// this node out of Redis's registry.
    pub(crate) fn start(&self, cancel: &CancellationToken) -> Option<tokio::task::JoinHandle<()>> {
        tokio::spawn(self.clone().sweeper(cancel.clone()));
        let redis = self.0.redis.as_ref()?;
        Some(tokio::spawn(
            redis.clone().run(self.clone(), cancel.clone()),
        ))
    }

    pub(crate) fn config(&self) -> &HubConfig {
        &self.0.config
    }

    pub(crate) fn metrics(&self) -> &HubMetrics {
        &self.0.metrics
    }

    /// The Redis engine, if it is the engine and it is connected.
    fn redis_up(&self) -> Option<&Redis> {
        self.0.redis.as_ref().filter(|r| r.is_up())
    }

    /// For `/readyz`: whether the hub spans the nodes it should.
    pub(crate) fn readiness(&self) -> Readiness {
        match &self.0.redis {
            Some(redis) if !redis.is_up() && !redis.tried() => Readiness::Starting,
            Some(redis) if !redis.is_up() => Readiness::Degraded,
            _ => Readiness::Ready,
        }
    }

    /// Messages and bytes waiting in every client's queue now (for the
    /// scrape: one pass over the clients, each queue's lock taken alone).
    pub(crate) fn queued(&self) -> (usize, usize) {
        let conns: Vec<Arc<Conn>> = lock(&self.0.clients).values().flatten().cloned().collect();
        conns
            .iter()
            .map(|c| c.queue.depth())
            .fold((0, 0), |(m, b), (cm, cb)| (m + cm, b + cb))
    }

    /// Register a client of `route`, named or `guest-N`, with what it may
    /// do on channels.
    pub(crate) fn register(
        &self,
        name: Option<&str>,
        route: &HubRoute,
        access: ChannelAccess,
        refresh: Option<crate::auth::Refresh>,
        deflate: Option<Compressing>,
    ) -> Result<Registration, HubError> {
        let id = self.0.next_id.fetch_add(1, Ordering::Relaxed);
        let name: Arc<str> = match (name, &self.0.redis) {
            (Some(name), _) => name.into(),
            (None, None) => format!("guest-{id}").into(),
            // Unique across nodes: the node's id is in it.
            (None, Some(redis)) => format!("guest-{}-{id}", &redis.node()[..8]).into(),
        };
        let conn = Arc::new(Conn {
            id,
            name: name.clone(),
            json: route.protocol == HubProtocol::Json,
            presence: route.presence_events,
            namespace: route.namespace.as_str().into(),
            access,
            sender_field: route.sender_field.as_deref().map(Arc::from),
            refresh,
            queue: Queue::new(route.queue_messages, route.queue_bytes, route.slow_consumer),
            channels: Mutex::default(),
            deflate,
        });
        {
            let mut clients = lock(&self.0.clients);
            let entry = clients.entry(name).or_default();
            let taken = entry.iter().any(|c| c.namespace == conn.namespace);
            if route.names == NamePolicy::Unique && taken {
                return Err(HubError::NameTaken);
            }
            if let Some(redis) = &self.0.redis {
                // Under the map's lock, so Redis hears of names in order.
                if entry.is_empty() {
                    redis.named(None, &conn.name, true);
                }
                if !taken {
                    redis.named(Some(&conn.namespace), &conn.name, true);
                }
            }
            entry.push(conn.clone());
        }
        self.0.metrics.clients.increment(1.0);
        Ok(Registration {
            hub: self.clone(),
            conn,
        })
    }

    fn unregister(&self, conn: &Arc<Conn>) {
        let channels = std::mem::take(&mut *lock(&conn.channels));
        for channel in channels {
            self.leave(&channel, conn);
        }
        let mut clients = lock(&self.0.clients);
        if let Some(list) = clients.get_mut(&conn.name) {
            list.retain(|c| c.id != conn.id);
            if let Some(redis) = &self.0.redis {
                if !list.iter().any(|c| c.namespace == conn.namespace) {
                    redis.named(Some(&conn.namespace), &conn.name, false);
                }
                if list.is_empty() {
                    redis.named(None, &conn.name, false);
                }
            }
            if list.is_empty() {
                clients.remove(&conn.name);
            }
        }
        drop(clients);
        self.0.metrics.clients.decrement(1.0);
    }

    /// Find a channel, creating it (within `max_channels`) if `create`.
    fn channel(&self, name: &str, create: bool) -> Result<Option<Arc<Channel>>, HubError> {
        self.channel_in(&mut lock(&self.0.channels), name, create)
    }

    fn channel_in(
        &self,
        channels: &mut HashMap<Arc<str>, Arc<Channel>>,
        name: &str,
        create: bool,
    ) -> Result<Option<Arc<Channel>>, HubError> {
        if let Some(channel) = channels.get(name) {
            return Ok(Some(channel.clone()));
        }
        if !create {
            return Ok(None);
        }
        if channels.len() >= self.0.config.max_channels {
            self.sweep_locked(channels);
            if channels.len() >= self.0.config.max_channels {
                return Err(HubError::TooManyChannels);
            }
        }
        let name: Arc<str> = name.into();
        let channel = Arc::new(Channel {
            name: name.clone(),
            state: Mutex::new(ChannelState {
                stream: Stream::new(),
                follow: match self.0.redis {
                    None => Follow::Local,
                    Some(_) => Follow::Idle,
                },
                subscribers: HashMap::new(),
                mirrored: None,
                removed: false,
            }),
        });
        channels.insert(name, channel.clone());
        self.0.metrics.channels.set(channels.len() as f64);
        Ok(Some(channel))
    }

    /// Publish to a channel, to every subscriber but `from` (unless
    /// `include_sender`). Sequenced here: `Some`, delivered to this node's
    /// subscribers already. Sequenced in Redis: `None`; what `later` makes
    /// hears the position once Redis has it, and every node (this one too)
    /// delivers the message when it comes back, in order.
    pub(crate) fn publish(
        &self,
        channel: &str,
        from: Option<&Conn>,
        body: Body,
        include_sender: bool,
        later: impl FnOnce() -> Option<Then>,
    ) -> Result<Option<Published>, HubError> {
        // A raw client's room was checked (both ways) when it joined.
        if let Some(conn) = from
            && conn.json
            && !conn.access.may_publish(channel)
        {
            return Err(HubError::Forbidden);
        }
        let to_redis = |redis: &Redis, body: &Body, later: Option<Then>| {
            let payload = encode_message(
                redis.node(),
                from.map(|c| c.id),
                include_sender,
                from.map(|c| &*c.name),
                body,
            );
            redis.publish(channel.into(), payload, later)?;
            self.0.metrics.published.increment(1);
            Ok(None)
        };
        if let Some(redis) = self.redis_up() {
            return to_redis(redis, &body, later());
        }
        self.with_live_channel(channel, |channel, state| {
            // Redis may be back by now: taken under the channel's lock, this
            // decision orders with the hub following Redis again.
            if let Some(redis) = self.redis_up() {
                return to_redis(redis, &body, later());
            }
            if let Some(redis) = &self.0.redis {
                self.go_local(channel, state);
                redis.metrics().published_local.increment(1);
            }
            Ok(Some(self.publish_locked(
                channel,
                state,
                from,
                body,
                include_sender,
            )))
        })?
    }

    /// Run `f` on the channel named `name` (created if need be) under its
    /// lock, once it is the channel the map holds. One the sweeper removed
    /// after it was looked up is looked up again, and this time locked
    /// before the map is let go (the sweeper's own order, map then
    /// channel), so no sweep can come between: one retry at most.
    fn with_live_channel<R>(
        &self,
        name: &str,
        f: impl FnOnce(&Arc<Channel>, &mut ChannelState) -> R,
    ) -> Result<R, HubError> {
        let channel = self.channel(name, true)?.ok_or(HubError::TooManyChannels)?;
        #[cfg(test)]
        tests::between_lookup_and_lock(self);
        let mut state = lock(&channel.state);
        if !state.removed {
            return Ok(f(&channel, &mut state));
        }
        drop(state);
        let mut channels = lock(&self.0.channels);
        let channel =
            (self.channel_in(&mut channels, name, true)?).ok_or(HubError::TooManyChannels)?;
        let mut state = lock(&channel.state);
        drop(channels);
        Ok(f(&channel, &mut state))
    }

    fn publish_locked(
        &self,
        channel: &Channel,
        state: &mut ChannelState,
        from: Option<&Conn>,
        body: Body,
        include_sender: bool,
    ) -> Published {
        let at = state.stream.next();
        let from_name = from.map(|c| c.name.clone());
        let msg = Arc::new(Msg::new(
            at,
            channel.name.clone(),
            from_name,
            body,
            Instant::now(),
        ));
        state.stream.push(msg.clone(), self.0.bounds);
        self.0.metrics.published.increment(1);
        let skip = from.filter(|_| !include_sender).map(|c| c.id);
        let delivered = self.fan_out(state, &msg, skip);
        Published { at, delivered }
    }

    /// Queue a sequenced message to the channel's subscribers (but `skip`);
    /// how many took it.
    fn fan_out(&self, state: &ChannelState, msg: &Msg, skip: Option<u64>) -> usize {
        let metrics = &self.0.metrics;
        let mut delivered = 0;
        for sub in state.subscribers.values() {
            if Some(sub.id) == skip {
                continue;
            }
            if sub.push(msg.frame_for(sub), metrics) {
                delivered += 1;
            }
        }
        metrics.delivered.increment(delivered as u64);
        delivered
    }

    pub(crate) fn channels(&self) -> Vec<ChannelInfo> {
        let channels: Vec<Arc<Channel>> = lock(&self.0.channels).values().cloned().collect();
        let mut list: Vec<ChannelInfo> = channels
            .iter()
            .map(|c| {
                let state = lock(&c.state);
                ChannelInfo {
                    name: c.name.clone(),
                    subscribers: state.subscribers.len(),
                    last: state.stream.position(),
                }
            })
            .collect();
        list.sort_by(|a, b| a.name.cmp(&b.name));
        list
    }

    /// Forget channels nobody here is subscribed to whose history has
    /// expired (or, with Redis, that this node no longer follows).
    fn sweep(&self) {
        self.sweep_locked(&mut lock(&self.0.channels));
    }

    fn sweep_locked(&self, channels: &mut HashMap<Arc<str>, Arc<Channel>>) {
        let now = Instant::now();
        channels.retain(|_, channel| {
            let mut state = lock(&channel.state);
            let keep = !state.subscribers.is_empty()
                || match state.follow {
                    Follow::Loading { .. } => true,
                    Follow::Idle | Follow::Mirror => false,
                    Follow::Local | Follow::Stale => !state.stream.expired(self.0.bounds, now),
                };
            state.removed = !keep;
            keep
        });
        self.0.metrics.channels.set(channels.len() as f64);
    }

    /// Sweep now and then until cancelled.
    async fn sweeper(self, cancel: CancellationToken) {
        let period =
            (self.0.config.history_ttl / 2).clamp(Duration::from_secs(1), Duration::from_secs(60));
        let mut tick = tokio::time::interval(period);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => self.sweep(),
            }
        }
    }
}

#[cfg(test)]
mod tests;
