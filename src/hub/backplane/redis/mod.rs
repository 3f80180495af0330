//! The Redis engine: the hub across many nodes.
//!
//! - **Channels.** A publish is one script on the server ([`scripts`]):
//!   it takes the channel's next sequence number in its epoch, appends the
//!   message to the channel's history and publishes it to the channel's
//!   pub/sub topic, atomically, so every node receives every channel's
//!   messages in sequence order. A node subscribes to a channel's topic
//!   once, while it has a local subscriber, loads the channel's head and
//!   history when it starts to (and whenever it sees a hole), and mirrors
//!   the tail in its own [`Stream`](super::Stream).
//! - **Direct messages and presence.** Each node lists its clients' names
//!   and its channels' subscribers under its own keys and renews its entry
//!   in the set of live nodes every third of `node_ttl`; a node that stops
//!   renewing is dropped by the next heartbeat of any other, with
//!   everything it listed. A direct message goes to the inbox topic of
//!   every live node that has the name.
//! - **Never waiting on Redis.** The hub hands work to one task ([`link`])
//!   through a bounded queue (`queue`); a full queue refuses a publish
//!   (`busy`) and is never waited on. The task sends what is queued as one
//!   pipeline per round trip, in order, each under `command_timeout`.
//! - **Outages.** While Redis cannot be reached the hub serves its own
//!   node: publishes are sequenced locally, in a new local epoch per
//!   channel, and delivered to local subscribers. The task reconnects with
//!   backoff, writes this node's registry again, resubscribes and reloads
//!   every channel in use, and the hub follows Redis again.

mod link;
mod scripts;
mod wire;
mod writer;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, Semaphore, mpsc};

use super::Position;
use super::stream::Bounds;
use crate::config::RedisBackplane;
use crate::hub::HubError;
use crate::metrics::BackplaneMetrics;
pub(crate) use wire::{Direct, Incoming, Loaded, encode_direct, encode_message};

/// What the hub is told once Redis has answered for a publish or a direct
/// message: the message's position (publish) and how many nodes took it.
pub(crate) type Then = Box<dyn FnOnce(Result<Done, HubError>) + Send>;

#[derive(Debug, Clone, Copy)]
pub(crate) struct Done {
    pub(crate) at: Option<Position>,
    pub(crate) nodes: usize,
}

/// Most presence queries in flight at once; more are answered locally.
const QUERIES: usize = 256;

/// A cheap handle on the engine, held by the hub.
#[derive(Clone)]
pub(crate) struct Redis(Arc<Shared>);

struct Shared {
    config: RedisBackplane,
    client: ::redis::Client,
    /// This node's id: random per process, 16 hex digits.
    node: String,
    names: Names,
    up: AtomicBool,
    /// The first connection attempt has ended (in either way).
    tried: AtomicBool,
    ops: mpsc::Sender<Op>,
    /// Taken by the task when it starts.
    inbox: Mutex<Option<mpsc::Receiver<Op>>>,
    /// Channels whose subscription or history needs the task's attention;
    /// a set, so bounded by the hub's channel limit whatever happens.
    dirty: Mutex<HashSet<Arc<str>>>,
    /// This node's registry must be written again (work was dropped).
    resync: AtomicBool,
    /// ... and its subscribers announced joining (it had been forgotten).
    announce: AtomicBool,
    /// Wakes the reading half (channels to look at).
    wake: Notify,
    /// Wakes the writing half (the registry to rewrite).
    rewrite: Notify,
    queries: Semaphore,
    metrics: BackplaneMetrics,
    scripts: scripts::Scripts,
    /// The command connection while the link is up (for presence queries).
    conn: Mutex<Option<::redis::aio::MultiplexedConnection>>,
    /// `[hub]`'s history bounds, which the history in Redis keeps too.
    bounds: Bounds,
}

/// Key and topic names under the prefix.
struct Names {
    /// `{prefix}`: the registry keys (one hash slot).
    base: String,
    /// `prefix:DB:c:`: channel topics.
    topic: String,
    /// `prefix:DB:inbox:`: a node's direct messages.
    inbox: String,
    prefix: String,
}

impl Names {
    fn new(prefix: &str, db: i64) -> Names {
        Names {
            base: format!("{{{prefix}}}"),
            topic: format!("{prefix}:{db}:c:"),
            inbox: format!("{prefix}:{db}:inbox:"),
            prefix: prefix.to_owned(),
        }
    }

    /// A channel's head and history keys (one hash slot per channel).
    fn stream(&self, channel: &str) -> (String, String) {
        let tag = format!("{}:{{{channel}}}", self.prefix);
        (format!("{tag}:m"), format!("{tag}:l"))
    }
}

/// Work for the task, in the order the hub made it.
pub(crate) enum Op {
    Publish {
        channel: Arc<str>,
        payload: Vec<u8>,
        then: Option<Then>,
    },
    Direct {
        /// `clients` (`namespace\x1fname`) or `names` (any namespace).
        set: &'static str,
        member: String,
        payload: Vec<u8>,
        then: Option<Then>,
    },
    /// A name came to (`add`) or left this node.
    Named {
        set: &'static str,
        member: String,
        add: bool,
    },
    /// A client subscribed to, or left, a channel on this node; `listed`:
    /// the first (or last) of its name there.
    Present {
        channel: Arc<str>,
        name: Arc<str>,
        add: bool,
        listed: bool,
    },
}

/// `namespace\x1fname`: a name within its namespace, as the registry lists it.
pub(crate) fn member(namespace: &str, name: &str) -> String {
    format!("{namespace}\x1f{name}")
}

impl Redis {
    pub(crate) fn new(config: &RedisBackplane, bounds: Bounds) -> Result<Redis, String> {
        use ::redis::IntoConnectionInfo;
        // Small commands and messages, each waited on: no Nagle delay.
        let info = (config.url.as_str())
            .into_connection_info()
            .map_err(|e| e.to_string())?;
        let tcp = ::redis::io::tcp::TcpSettings::default().set_nodelay(true);
        let info = info.set_tcp_settings(tcp);
        let client = match &config.tls_ca {
            None => ::redis::Client::open(info),
            Some(ca) => {
                let pem = std::fs::read(ca).map_err(|e| format!("tls_ca {}: {e}", ca.display()))?;
                let certs = ::redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem),
                };
                ::redis::Client::build_with_tls(info, certs)
            }
        }
        .map_err(|e| e.to_string())?;
        let (ops, inbox) = mpsc::channel(config.queue);
        let metrics = BackplaneMetrics::new();
        metrics.up.set(0.0);
        // Pub/sub is server-wide, not per database: the topics name it.
        let db = client.get_connection_info().redis_settings().db();
        Ok(Redis(Arc::new(Shared {
            names: Names::new(&config.prefix, db),
            config: config.clone(),
            client,
            node: format!("{:016x}", rand::random::<u64>()),
            up: AtomicBool::new(false),
            tried: AtomicBool::new(false),
            ops,
            inbox: Mutex::new(Some(inbox)),
            dirty: Mutex::default(),
            resync: AtomicBool::new(false),
            announce: AtomicBool::new(false),
            wake: Notify::new(),
            rewrite: Notify::new(),
            queries: Semaphore::new(QUERIES),
            metrics,
            scripts: scripts::Scripts::new(),
            conn: Mutex::new(None),
            bounds,
        })))
    }

    pub(crate) fn node(&self) -> &str {
        &self.0.node
    }

    /// Run the engine's task until `cancel`, for `hub`.
    pub(crate) async fn run(
        self,
        hub: crate::hub::Hub,
        cancel: tokio_util::sync::CancellationToken,
    ) {
        let bounds = self.0.bounds;
        link::run(self, hub, bounds, cancel).await
    }

    /// Whether the first attempt to connect has ended: until then a node
    /// is starting, not yet serving alone.
    pub(crate) fn tried(&self) -> bool {
        self.0.tried.load(Ordering::Acquire)
    }

    /// Connected: publishes go through Redis.
    pub(crate) fn is_up(&self) -> bool {
        self.0.up.load(Ordering::Acquire)
    }

    pub(crate) fn metrics(&self) -> &BackplaneMetrics {
        &self.0.metrics
    }

    /// Queue work without waiting; `false` if the queue is full (counted).
    fn queue(&self, op: Op) -> Result<(), Op> {
        self.0.ops.try_send(op).map_err(|e| {
            self.0.metrics.dropped.increment(1);
            match e {
                mpsc::error::TrySendError::Full(op) | mpsc::error::TrySendError::Closed(op) => op,
            }
        })
    }

    /// Hand a publish to Redis; `busy` if the queue is full.
    pub(crate) fn publish(
        &self,
        channel: Arc<str>,
        payload: Vec<u8>,
        then: Option<Then>,
    ) -> Result<(), HubError> {
        self.queue(Op::Publish {
            channel,
            payload,
            then,
        })
        .map_err(|_| HubError::Busy)
    }

    /// Hand a direct message to Redis for the other nodes; `then` (if any)
    /// hears how many took it, or `busy`.
    pub(crate) fn direct(
        &self,
        namespace: Option<&str>,
        to: &str,
        payload: Vec<u8>,
        then: Option<Then>,
    ) {
        let (set, member) = match namespace {
            Some(ns) => ("clients", member(ns, to)),
            None => ("names", to.to_owned()),
        };
        let op = Op::Direct {
            set,
            member,
            payload,
            then,
        };
        if let Err(Op::Direct {
            then: Some(then), ..
        }) = self.queue(op)
        {
            then(Err(HubError::Busy));
        }
    }

    /// A name came to or left this node (in `namespace`, or at all).
    pub(crate) fn named(&self, namespace: Option<&str>, name: &str, add: bool) {
        if !self.is_up() {
            return;
        }
        let (set, member) = match namespace {
            Some(ns) => ("clients", member(ns, name)),
            None => ("names", name.to_owned()),
        };
        if self.queue(Op::Named { set, member, add }).is_err() {
            self.resync();
        }
    }

    /// A client subscribed to (`add`), or left, a channel on this node;
    /// `listed`: the first (or last) of its name there.
    pub(crate) fn present(&self, channel: &Arc<str>, name: &Arc<str>, add: bool, listed: bool) {
        if !self.is_up() {
            return;
        }
        let op = Op::Present {
            channel: channel.clone(),
            name: name.clone(),
            add,
            listed,
        };
        if self.queue(op).is_err() {
            self.resync();
        }
    }

    /// Write this node's registry again from the hub's own state.
    fn resync(&self) {
        self.0.resync.store(true, Ordering::Release);
        self.0.rewrite.notify_one();
    }

    /// The channel's subscription or history needs looking at.
    pub(crate) fn watch(&self, channel: &Arc<str>) {
        crate::hub::lock(&self.0.dirty).insert(channel.clone());
        self.0.wake.notify_one();
    }

    /// The names subscribed to `channel` on every live node; `None` if
    /// Redis is down, too many queries are running, or it did not answer.
    pub(crate) async fn presence(&self, channel: &str) -> Option<Vec<String>> {
        if !self.is_up() {
            return None;
        }
        let _permit = self.0.queries.try_acquire().ok()?;
        link::presence(&self.0, channel).await
    }
}
