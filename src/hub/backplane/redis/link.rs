//! The engine's one task: two connections to Redis (commands, and the
//! pub/sub subscriptions), the queue of work from the hub sent as one
//! pipeline per round trip, the node's heartbeat, one subscription per
//! channel in use, and the loads of channel history. Lose either
//! connection and the node serves alone until both are back.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ::redis::aio::{MultiplexedConnection, PubSubSink, PubSubStream};
use ::redis::{AsyncConnectionConfig, RedisResult, Value};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout};
use tokio_util::sync::CancellationToken;

use super::wire::{Direct, Incoming, Loaded, Presence, wall_us};
use super::writer::Writer;
use super::{Op, Redis, Shared};
use crate::hub::backplane::stream::Bounds;
use crate::hub::{Epoch, Hub, HubError, Position, lock};

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Most queued operations sent in one pipeline.
pub(super) const BATCH: usize = 512;
/// Most channels named in one SUBSCRIBE or UNSUBSCRIBE.
pub(super) const CHUNK: usize = 1000;
/// Most channel loads in flight (after a reconnect every channel in use
/// reloads; the rest wait their turn).
const LOADS: usize = 64;
/// A channel whose load failed is tried again after this.
const RELOAD_AFTER: Duration = Duration::from_secs(1);

/// Why a connection was given up.
pub(super) type Broken = String;

fn broken(what: &str, e: impl std::fmt::Display) -> Broken {
    format!("{what}: {e}")
}

/// Run `work` under the command deadline.
pub(super) async fn deadline<T>(
    shared: &Shared,
    what: &str,
    work: impl Future<Output = RedisResult<T>>,
) -> Result<T, Broken> {
    match timeout(shared.config.command_timeout, work).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(broken(what, e)),
        Err(_) => Err(broken(what, "no answer within command_timeout")),
    }
}

/// Keep the node connected until `cancel`; then leave Redis's registry.
pub(crate) async fn run(redis: Redis, hub: Hub, bounds: Bounds, cancel: CancellationToken) {
    let shared = &*redis.0;
    let Some(mut ops) = lock(&shared.inbox).take() else {
        return;
    };
    let mut backoff = BACKOFF_MIN;
    loop {
        let started = Instant::now();
        let mut link = Link {
            redis: &redis,
            hub: &hub,
            bounds,
            subscribed: HashSet::new(),
            loading: HashSet::new(),
            queued: std::collections::VecDeque::new(),
            stale: HashSet::new(),
        };
        let why = tokio::select! {
            _ = cancel.cancelled() => None,
            why = link.serve(&mut ops) => Some(why),
        };
        shared.tried.store(true, Ordering::Release);
        let was_up = shared.up.swap(false, Ordering::AcqRel);
        *lock(&shared.conn) = None;
        shared.metrics.up.set(0.0);
        if was_up {
            hub.backplane_down();
        }
        fail_queued(&mut ops, shared);
        let Some(why) = why else {
            link.leave().await;
            return;
        };
        match was_up {
            true => tracing::warn!(
                "backplane: lost Redis ({why}); serving this node alone, reconnecting"
            ),
            false => tracing::warn!("backplane: cannot reach Redis ({why}); retrying"),
        }
        if started.elapsed() > BACKOFF_MAX {
            backoff = BACKOFF_MIN;
        }
        // Jittered, so nodes that lost Redis together do not return together.
        let pause = backoff.mul_f64(rand::random_range(0.5..1.0));
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
        shared.metrics.reconnects.increment(1);
    }
}

/// Work queued while the link went down: publishes and direct messages
/// hear that Redis did not take them; registry changes are written again
/// from the hub's state on the next connection.
fn fail_queued(ops: &mut mpsc::Receiver<Op>, shared: &Shared) {
    while let Ok(op) = ops.try_recv() {
        let then = match op {
            Op::Publish { then, .. } => {
                shared.metrics.published_failed.increment(1);
                then
            }
            Op::Direct { then, .. } => then,
            Op::Named { .. } | Op::Present { .. } => None,
        };
        if let Some(then) = then {
            then(Err(HubError::Unavailable));
        }
    }
}

struct Link<'a> {
    redis: &'a Redis,
    hub: &'a Hub,
    bounds: Bounds,
    /// Channels this node's pub/sub connection is subscribed to.
    subscribed: HashSet<Arc<str>>,
    /// Channels whose history is being loaded, or waits to be.
    loading: HashSet<Arc<str>>,
    /// Loads waiting for a slot, with the position this node last saw.
    queued: std::collections::VecDeque<(Arc<str>, Position)>,
    /// Loads in flight for channels unsubscribed since: read before a
    /// later subscription existed, they are not installed.
    stale: HashSet<Arc<str>>,
}

type Load = std::pin::Pin<Box<dyn Future<Output = (Arc<str>, Result<Loaded, Broken>)> + Send>>;

impl Link<'_> {
    fn shared(&self) -> &Shared {
        &self.redis.0
    }

    /// One connection's life: connect, follow Redis, return why it ended.
    async fn serve(&mut self, ops: &mut mpsc::Receiver<Op>) -> Broken {
        let shared = self.redis.0.clone();
        let shared = &*shared;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(shared.config.command_timeout))
            .set_response_timeout(Some(shared.config.command_timeout));
        let connect = shared
            .client
            .get_multiplexed_async_connection_with_config(&config);
        let mut conn = match deadline(shared, "connect", connect).await {
            Ok(conn) => conn,
            Err(why) => return why,
        };
        let (mut sink, messages) =
            match deadline(shared, "connect", shared.client.get_async_pubsub()).await {
                Ok(pubsub) => pubsub.split(),
                Err(why) => return why,
            };
        for script in shared.scripts.all() {
            if let Err(why) = deadline(shared, "SCRIPT LOAD", script.load_async(&mut conn)).await {
                return why;
            }
        }
        let inbox = format!("{}{}", shared.names.inbox, shared.node);
        if let Err(why) = deadline(shared, "SUBSCRIBE", sink.subscribe(&inbox)).await {
            return why;
        }
        // Work that raced the last disconnect is not sent late.
        fail_queued(ops, shared);
        *lock(&shared.conn) = Some(conn.clone());
        shared.up.store(true, Ordering::Release);
        shared.tried.store(true, Ordering::Release);
        shared.metrics.up.set(1.0);
        tracing::info!("backplane: connected to Redis as node {}", shared.node);
        // Channels in use follow Redis again (subscribed and reloaded below).
        self.hub.backplane_up();
        shared.resync.store(true, Ordering::Release);
        let writer = Writer {
            redis: self.redis,
            hub: self.hub,
            bounds: self.bounds,
        };
        // Two halves, one task: delivering what arrives never waits for a
        // reply to what was sent, and the other way round.
        let ended = tokio::select! {
            ended = writer.run(conn.clone(), ops) => ended,
            ended = self.follow(sink, messages, conn) => ended,
        };
        ended.err().unwrap_or_default()
    }

    /// The reading half: subscriptions, what arrives on them, loads.
    async fn follow(
        &mut self,
        mut sink: PubSubSink,
        mut messages: PubSubStream,
        conn: MultiplexedConnection,
    ) -> Result<(), Broken> {
        let shared = self.redis.0.clone();
        let mut loads: FuturesUnordered<Load> = FuturesUnordered::new();
        loop {
            let dirty = std::mem::take(&mut *lock(&shared.dirty));
            if !dirty.is_empty() {
                self.reconcile(dirty, &mut sink, &conn, &mut loads).await?;
            }
            tokio::select! {
                msg = messages.next() => match msg {
                    Some(msg) => self.received(&msg),
                    None => return Err("the subscription connection closed".to_owned()),
                },
                Some((channel, loaded)) = loads.next(), if !loads.is_empty() => {
                    self.loading.remove(&channel);
                    match self.stale.remove(&channel) {
                        // Looked at again: loaded anew if still wanted.
                        true => self.redis.watch(&channel),
                        false => self.loaded(channel, loaded),
                    }
                    self.start_loads(&conn, &mut loads);
                }
                _ = shared.wake.notified() => {}
            }
        }
    }

    /// A channel's load came back: installed, or tried again shortly (the
    /// link stays up: one channel's trouble is not every channel's).
    fn loaded(&self, channel: Arc<str>, loaded: Result<Loaded, Broken>) {
        let shared = self.shared();
        match loaded {
            Ok(loaded) => {
                if loaded.unreadable > 0 {
                    shared.metrics.dropped.increment(loaded.unreadable as u64);
                    tracing::warn!(
                        "backplane: skipped {} unreadable messages in {channel}'s history",
                        loaded.unreadable
                    );
                }
                self.hub.install(&channel, loaded);
            }
            Err(why) => {
                tracing::warn!("backplane: loading {channel} failed ({why}); trying again");
                // Those waiting are not kept waiting on it: admitted from
                // what this node has, caught up when a load succeeds.
                self.hub.load_failed(&channel);
                let redis = self.redis.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(RELOAD_AFTER).await;
                    redis.watch(&channel);
                });
            }
        }
    }

    /// Start queued loads while there is a free slot.
    fn start_loads(&mut self, conn: &MultiplexedConnection, loads: &mut FuturesUnordered<Load>) {
        while loads.len() < LOADS {
            let Some((channel, seen)) = self.queued.pop_front() else {
                return;
            };
            let (mut conn, shared) = (conn.clone(), self.redis.0.clone());
            let (head, log) = shared.names.stream(&channel);
            let size = self.bounds.size;
            let head_ttl = (self.bounds.ttl.as_millis() as u64).clamp(1000, u64::MAX);
            loads.push(Box::pin(async move {
                let mut invocation = shared.scripts.load.prepare_invoke();
                invocation
                    .key(head)
                    .key(log)
                    .arg(Epoch::random().to_string())
                    .arg(size)
                    .arg(seen.epoch.to_string())
                    .arg(seen.seq)
                    .arg(head_ttl);
                let values = deadline(&shared, "load", invocation.invoke_async(&mut conn)).await;
                let loaded = values.and_then(|v: Vec<Value>| {
                    Loaded::parse(v).ok_or_else(|| "an unreadable channel head".to_owned())
                });
                (channel, loaded)
            }));
        }
    }

    /// A message on one of this node's subscriptions.
    fn received(&self, msg: &::redis::Msg) {
        let shared = self.shared();
        let topic = msg.get_channel_name();
        let payload = msg.get_payload_bytes();
        let sent_us = if let Some(channel) = topic.strip_prefix(&shared.names.topic) {
            if let Some(event) = Presence::parse(payload) {
                if event.node != shared.node {
                    self.hub.remote_presence(channel, event.join, event.name);
                }
                return;
            }
            let Some(incoming) = Incoming::parse(payload) else {
                return self.unreadable(topic);
            };
            let sent_us = incoming.sent_us;
            self.hub.remote_message(channel, incoming);
            sent_us
        } else {
            let Some(direct) = Direct::parse(payload) else {
                return self.unreadable(topic);
            };
            let sent_us = direct.sent_us;
            self.hub.remote_direct(direct);
            sent_us
        };
        shared.metrics.received.increment(1);
        let lag = wall_us().saturating_sub(sent_us);
        shared.metrics.lag.record(lag as f64 / 1e6);
    }

    fn unreadable(&self, topic: &str) {
        self.shared().metrics.dropped.increment(1);
        tracing::warn!("backplane: dropped an unreadable message on {topic}");
    }

    /// Subscribe to the channels now in use, unsubscribe from the rest,
    /// and load the history of those that wait for it.
    async fn reconcile(
        &mut self,
        dirty: HashSet<Arc<str>>,
        sink: &mut PubSubSink,
        conn: &MultiplexedConnection,
        loads: &mut FuturesUnordered<Load>,
    ) -> Result<(), Broken> {
        let shared = self.redis.0.clone();
        let (mut subscribe, mut unsubscribe) = (Vec::new(), Vec::new());
        for channel in dirty {
            let want = self.hub.wants(&channel);
            let topic = format!("{}{channel}", shared.names.topic);
            match (want.subscription, self.subscribed.contains(&channel)) {
                (true, false) => {
                    subscribe.push(topic);
                    self.subscribed.insert(channel.clone());
                }
                (false, true) => {
                    unsubscribe.push(topic);
                    self.subscribed.remove(&channel);
                    if self.loading.contains(&channel) {
                        self.stale.insert(channel.clone());
                    }
                }
                _ => {}
            }
            if let Some(seen) = want.load
                && self.loading.insert(channel.clone())
            {
                self.queued.push_back((channel, seen));
            }
        }
        // Subscriptions first: a load issued after the SUBSCRIBE is
        // confirmed misses nothing published since.
        for chunk in subscribe.chunks(CHUNK) {
            deadline(&shared, "SUBSCRIBE", sink.subscribe(chunk)).await?;
        }
        for chunk in unsubscribe.chunks(CHUNK) {
            deadline(&shared, "UNSUBSCRIBE", sink.unsubscribe(chunk)).await?;
        }
        self.start_loads(conn, loads);
        Ok(())
    }

    /// Leave the registry at shutdown (best effort, under the deadline).
    async fn leave(&self) {
        let shared = self.shared();
        let conn = self.shared().client.get_multiplexed_async_connection();
        let Ok(mut conn) = deadline(shared, "connect", conn).await else {
            return;
        };
        let mut leave = self.shared().scripts.leave.prepare_invoke();
        leave
            .arg(&shared.names.base)
            .arg(&shared.node)
            .arg(&shared.names.topic);
        let _: Result<i64, _> = deadline(shared, "leave", leave.invoke_async(&mut conn)).await;
    }
}

/// The names subscribed to `channel` on every live node.
pub(super) async fn presence(shared: &Shared, channel: &str) -> Option<Vec<String>> {
    let mut conn = lock(&shared.conn).clone()?;
    let mut query = shared.scripts.presence.prepare_invoke();
    query.arg(&shared.names.base).arg(channel);
    deadline(shared, "presence", query.invoke_async(&mut conn))
        .await
        .ok()
}
