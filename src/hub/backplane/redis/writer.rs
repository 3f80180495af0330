//! The link's writing half: the hub's queued work sent as one pipeline per
//! round trip (each waiter told its answer, also when the link drops
//! mid-flight), the node's heartbeat, and its registry rewritten whole.

use std::sync::atomic::Ordering;

use ::redis::aio::MultiplexedConnection;
use ::redis::{RedisResult, Value};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::link::{BATCH, Broken, CHUNK, deadline};
use super::{Done, Op, Redis, Shared, Then};
use crate::hub::backplane::stream::Bounds;
use crate::hub::{Epoch, Hub, HubError, Position};

/// The writing half: the hub's queued work, the heartbeat, the registry.
pub(super) struct Writer<'a> {
    pub(super) redis: &'a Redis,
    pub(super) hub: &'a Hub,
    pub(super) bounds: Bounds,
}

impl Writer<'_> {
    fn shared(&self) -> &Shared {
        &self.redis.0
    }

    pub(super) async fn run(
        &self,
        mut conn: MultiplexedConnection,
        ops: &mut mpsc::Receiver<Op>,
    ) -> Result<(), Broken> {
        let shared = self.shared();
        let mut beat = tokio::time::interval(shared.config.node_ttl / 3);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            if shared.resync.swap(false, Ordering::AcqRel) {
                self.resync(&mut conn).await?;
            }
            tokio::select! {
                n = ops.recv_many(&mut batch, BATCH) => {
                    if n == 0 {
                        return Err("the hub stopped".to_owned());
                    }
                    self.send(&mut conn, &mut batch).await?;
                }
                _ = beat.tick() => self.heartbeat(&mut conn).await?,
                _ = shared.rewrite.notified() => {}
            }
        }
    }

    /// Send queued work as one pipeline and tell each waiter its answer.
    async fn send(
        &self,
        conn: &mut MultiplexedConnection,
        batch: &mut Vec<Op>,
    ) -> Result<(), Broken> {
        let shared = self.shared();
        let names = &shared.names;
        let node = shared.node.as_str();
        let mut pipe = ::redis::pipe();
        pipe.ignore_errors();
        let mut waiting = Waiting(Vec::with_capacity(batch.len()));
        for op in batch.drain(..) {
            match op {
                Op::Publish {
                    channel,
                    payload,
                    then,
                } => {
                    let (head, log) = names.stream(&channel);
                    let topic = format!("{}{channel}", names.topic);
                    pipe.cmd("EVALSHA")
                        .arg(self.shared().scripts.publish.get_hash())
                        .arg(2)
                        .arg(head)
                        .arg(log)
                        .arg(Epoch::random().to_string())
                        .arg(self.bounds.size)
                        .arg((self.bounds.ttl.as_millis() as u64).max(1))
                        .arg(shared.config.stream_ttl.as_millis() as u64)
                        .arg(topic)
                        .arg(payload);
                    waiting.0.push((Kind::Publish, then));
                }
                Op::Direct {
                    set,
                    member,
                    payload,
                    then,
                } => {
                    pipe.cmd("EVALSHA")
                        .arg(self.shared().scripts.direct.get_hash())
                        .arg(0)
                        .arg(&names.base)
                        .arg(node)
                        .arg(set)
                        .arg(member)
                        .arg(&names.inbox)
                        .arg(payload);
                    waiting.0.push((Kind::Direct, then));
                }
                Op::Named { set, member, add } => {
                    let key = format!("{}:n:{node}:{set}", names.base);
                    pipe.cmd(if add { "SADD" } else { "SREM" })
                        .arg(key)
                        .arg(member);
                    waiting.0.push((Kind::Registry, None));
                }
                Op::Present {
                    channel,
                    name,
                    add,
                    listed,
                } => {
                    let topic = format!("{}{channel}", names.topic);
                    pipe.cmd("EVALSHA")
                        .arg(self.shared().scripts.present.get_hash())
                        .arg(0)
                        .arg(&names.base)
                        .arg(node)
                        .arg(&*channel)
                        .arg(&*name)
                        .arg(if add { "1" } else { "0" })
                        .arg(if listed { "1" } else { "0" })
                        .arg(topic);
                    waiting.0.push((Kind::Registry, None));
                }
            }
        }
        let started = Instant::now();
        let answers = deadline(
            shared,
            "publish",
            pipe.query_async::<Vec<RedisResult<Value>>>(conn),
        )
        .await;
        let answers = match answers {
            Ok(answers) if answers.len() == waiting.0.len() => answers,
            other => {
                for (kind, then) in waiting.0.drain(..) {
                    kind.failed(shared);
                    if let Some(then) = then {
                        then(Err(HubError::Unavailable));
                    }
                }
                return Err(other
                    .err()
                    .unwrap_or_else(|| "a short pipeline reply".into()));
            }
        };
        shared.metrics.rtt.record(started.elapsed().as_secs_f64());
        let mut lost_scripts = false;
        for ((kind, then), answer) in waiting.0.drain(..).zip(answers) {
            let done = match answer {
                Ok(value) => kind.done(&value),
                Err(e) => {
                    lost_scripts |= e.code() == Some("NOSCRIPT");
                    tracing::warn!("backplane: Redis refused a command: {e}");
                    None
                }
            };
            match done {
                Some(_) if kind == Kind::Publish => shared.metrics.published_ok.increment(1),
                Some(_) => {}
                None => kind.failed(shared),
            }
            if let Some(then) = then {
                then(done.ok_or(HubError::Unavailable));
            }
        }
        match lost_scripts {
            true => Err("Redis lost the scripts (restarted or flushed)".to_owned()),
            false => Ok(()),
        }
    }

    /// Renew this node's entry; forget nodes that stopped renewing. A node
    /// that was itself forgotten writes its registry again.
    async fn heartbeat(&self, conn: &mut MultiplexedConnection) -> Result<(), Broken> {
        let shared = self.shared();
        let mut beat = self.shared().scripts.heartbeat.prepare_invoke();
        beat.arg(&shared.names.base)
            .arg(&shared.node)
            .arg(shared.config.node_ttl.as_millis() as u64)
            .arg(&shared.names.topic);
        let fresh: i64 = deadline(shared, "heartbeat", beat.invoke_async(conn)).await?;
        if fresh == 1 {
            // Forgotten while away: its subscribers were announced as
            // leaving, so they are announced joining again.
            shared.announce.store(true, Ordering::Release);
            shared.resync.store(true, Ordering::Release);
        }
        Ok(())
    }

    /// Write this node's registry from scratch: its names and, per
    /// channel, its subscribers' names.
    async fn resync(&self, conn: &mut MultiplexedConnection) -> Result<(), Broken> {
        let shared = self.shared();
        let (base, node) = (&shared.names.base, &shared.node);
        // Not listed: new, or dropped while away (and its subscribers
        // announced as leaving): announce them joining again below.
        let listed: Option<f64> = deadline(
            shared,
            "registry",
            ::redis::cmd("ZSCORE")
                .arg(format!("{base}:nodes"))
                .arg(node)
                .query_async(conn),
        )
        .await?;
        let announce = listed.is_none() | shared.announce.swap(false, Ordering::AcqRel);
        let registry = self.hub.registry();
        let mut pipe = ::redis::pipe();
        // One transaction: other nodes never see this node half-listed.
        pipe.atomic();
        pipe.cmd("EVALSHA")
            .arg(self.shared().scripts.leave.get_hash())
            .arg(0)
            .arg(base)
            .arg(node)
            .ignore();
        pipe.cmd("EVALSHA")
            .arg(self.shared().scripts.heartbeat.get_hash())
            .arg(0)
            .arg(base)
            .arg(node)
            .arg(shared.config.node_ttl.as_millis() as u64)
            .arg(&shared.names.topic)
            .ignore();
        for (set, members) in [("clients", &registry.clients), ("names", &registry.names)] {
            for chunk in members.chunks(CHUNK) {
                pipe.cmd("SADD")
                    .arg(format!("{base}:n:{node}:{set}"))
                    .arg(chunk)
                    .ignore();
            }
        }
        for (channel, names) in &registry.present {
            pipe.cmd("SADD")
                .arg(format!("{base}:n:{node}:ch"))
                .arg(&**channel)
                .ignore();
            let key = format!("{base}:p:{node}:{channel}");
            for chunk in names.chunks(CHUNK) {
                let chunk: Vec<&str> = chunk.iter().map(|n| &**n).collect();
                pipe.cmd("SADD").arg(&key).arg(chunk).ignore();
            }
            if announce {
                let topic = format!("{}{channel}", shared.names.topic);
                for name in names {
                    let event = format!("join {node} {name}");
                    pipe.cmd("PUBLISH").arg(&topic).arg(event).ignore();
                }
            }
        }
        deadline(shared, "registry", pipe.query_async::<()>(conn)).await
    }
}

/// The waiters of a pipeline in flight. Dropped unanswered (the link went
/// down while it was on its way), each hears that Redis did not confirm.
struct Waiting(Vec<(Kind, Option<Then>)>);

impl Drop for Waiting {
    fn drop(&mut self) {
        for (_, then) in self.0.drain(..) {
            if let Some(then) = then {
                then(Err(HubError::Unavailable));
            }
        }
    }
}

/// What a pipelined command was, to read its answer.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Publish,
    Direct,
    Registry,
}

impl Kind {
    fn done(self, value: &Value) -> Option<Done> {
        match (self, value) {
            (Kind::Publish, Value::Array(v)) => {
                let (Some(Value::Int(seq)), Some(Value::BulkString(epoch)), Some(Value::Int(n))) =
                    (v.first(), v.get(1), v.get(2))
                else {
                    return None;
                };
                let epoch = Epoch::parse(std::str::from_utf8(epoch).ok()?)?;
                Some(Done {
                    at: Some(Position {
                        seq: u64::try_from(*seq).ok()?,
                        epoch,
                    }),
                    nodes: usize::try_from(*n).ok()?,
                })
            }
            (Kind::Direct, Value::Int(n)) => Some(Done {
                at: None,
                nodes: usize::try_from(*n).ok()?,
            }),
            (Kind::Registry, _) => Some(Done { at: None, nodes: 0 }),
            _ => None,
        }
    }

    fn failed(self, shared: &Shared) {
        match self {
            Kind::Publish => shared.metrics.published_failed.increment(1),
            Kind::Direct => shared.metrics.dropped.increment(1),
            // Written again from the hub's state.
            Kind::Registry => shared.resync.store(true, Ordering::Release),
        }
    }
}
