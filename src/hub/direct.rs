//! Reaching clients by name, and who is where: direct messages (to this
//! node's connections of a name, and through Redis to other nodes') and
//! presence (this node's subscribers, and with Redis every live node's).

use std::sync::OnceLock;

use super::backplane::redis::encode_direct;
use super::protocol::{self, Body};
use super::{Conn, Hub, Then, access, conn, lock, raw_frame, text_frame};

impl Hub {
    /// Names subscribed to `channel` on this node, sorted, each once;
    /// `None` if no such channel.
    pub(crate) fn presence(&self, channel: &str) -> Option<Vec<String>> {
        let local = self.channel(channel, false).ok().flatten()?;
        let state = lock(&local.state);
        let mut names: Vec<String> = state
            .subscribers
            .values()
            .map(|s| s.name.to_string())
            .collect();
        drop(state);
        names.sort_unstable();
        names.dedup();
        Some(names)
    }

    /// Names subscribed to `channel` on every node (with Redis), sorted,
    /// each once; `None` if nobody is and this node has no such channel.
    /// While Redis is unreachable (or does not answer), this node's.
    pub(crate) async fn presence_everywhere(&self, channel: &str) -> Option<Vec<String>> {
        let local = self.presence(channel);
        let Some(redis) = self.redis_up() else {
            return local;
        };
        let Some(mut names) = redis.presence(channel).await else {
            return local;
        };
        if local.is_none() && names.is_empty() {
            return None;
        }
        names.extend(local.unwrap_or_default());
        names.sort_unstable();
        names.dedup();
        Some(names)
    }

    /// Hand `then` the names subscribed to `channel` everywhere: now
    /// (memory, or Redis down), or from a task once Redis answers.
    pub(crate) fn presence_then(
        &self,
        channel: &str,
        then: impl FnOnce(Vec<String>) + Send + 'static,
    ) {
        if self.redis_up().is_none() {
            return then(self.presence(channel).unwrap_or_default());
        }
        let (hub, channel) = (self.clone(), channel.to_owned());
        tokio::spawn(async move {
            then(hub.presence_everywhere(&channel).await.unwrap_or_default());
        });
    }

    /// A direct message from a client to every connection named `to` in
    /// its namespace (never beyond), with its real name stamped in where
    /// its route says. Returns how many connections it was queued to on
    /// this node; `None` if none here and it went to Redis, whose answer
    /// (how many other nodes took it) goes to what `later` makes.
    pub(crate) fn send_from(
        &self,
        from: &Conn,
        to: &str,
        body: Body,
        later: impl FnOnce() -> Option<Then>,
    ) -> Option<usize> {
        let body = match (&from.sender_field, body) {
            (Some(field), Body::Json(text)) => Body::Json(access::stamp(&text, field, &from.name)),
            (_, body) => body,
        };
        self.deliver(to, Some(&from.namespace), Some(&from.name), body, later)
    }

    /// A direct message (from the HTTP API) to every connection named `to`,
    /// in every namespace; as `send_from`.
    pub(crate) fn send(
        &self,
        to: &str,
        from: Option<&str>,
        body: Body,
        later: impl FnOnce() -> Option<Then>,
    ) -> Option<usize> {
        self.deliver(to, None, from, body, later)
    }

    fn deliver(
        &self,
        to: &str,
        namespace: Option<&str>,
        from: Option<&str>,
        body: Body,
        later: impl FnOnce() -> Option<Then>,
    ) -> Option<usize> {
        self.0.metrics.direct.increment(1);
        let delivered = self.deliver_here(to, namespace, from, &body);
        let Some(redis) = self.redis_up() else {
            return Some(delivered);
        };
        let payload = encode_direct(to, namespace, from, &body);
        if delivered > 0 {
            redis.direct(namespace, to, payload, None);
            return Some(delivered);
        }
        redis.direct(namespace, to, payload, later());
        None
    }

    /// Queue a direct message to this node's connections named `to`.
    pub(super) fn deliver_here(
        &self,
        to: &str,
        namespace: Option<&str>,
        from: Option<&str>,
        body: &Body,
    ) -> usize {
        let mut targets = lock(&self.0.clients).get(to).cloned().unwrap_or_default();
        if let Some(namespace) = namespace {
            targets.retain(|c| &*c.namespace == namespace);
        }
        let metrics = &self.0.metrics;
        let (envelope, raw) = (OnceLock::new(), OnceLock::new());
        let (envelope_deflated, raw_deflated) = (OnceLock::new(), OnceLock::new());
        let mut delivered = 0;
        for conn in targets {
            let frame = if conn.json {
                let plain = envelope.get_or_init(|| text_frame(&protocol::direct(from, body)));
                conn::for_conn(&conn, plain.clone(), &envelope_deflated)
            } else {
                let plain = raw.get_or_init(|| raw_frame(body));
                conn::for_conn(&conn, plain.clone(), &raw_deflated)
            };
            if conn.push(frame, metrics) {
                delivered += 1;
            }
        }
        metrics.delivered.increment(delivered as u64);
        delivered
    }
}
