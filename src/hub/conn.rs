//! What the hub holds per connected client and per channel message: a
//! `Conn` (its name, protocol, rights, bounded queue and channels) and a
//! `Msg` (serialized and framed at most once per representation, the frame
//! shared by every recipient).

use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use tokio::time::Instant;

use super::access::ChannelAccess;
use super::protocol::{self, Body};
use super::queue::{Pushed, Queue};
use super::{Channel, Epoch, Position};
use crate::config::Deflate;
use crate::frame::{Header, OpCode, deflated_frame, server_frame};
use crate::hub::member::payload_len;
use crate::metrics::{CompressionBytes, HubMetrics};

/// A channel message: serialized and framed at most once per
/// representation; the frame is shared by every recipient.
pub(crate) struct Msg {
    pub(super) seq: u64,
    pub(super) epoch: Epoch,
    pub(super) at: Instant,
    pub(super) channel: Arc<str>,
    pub(super) from: Option<Arc<str>>,
    pub(super) body: Body,
    /// The connection on this node that sent it and does not get it back
    /// (kept for a message from Redis, which may be delivered again when a
    /// reload catches subscribers up).
    pub(super) skip: Option<u64>,
    /// The JSON envelope's frame.
    pub(super) envelope: OnceLock<Bytes>,
    /// The body's own frame, for raw clients.
    pub(super) raw: OnceLock<Bytes>,
    /// The same two compressed (permessage-deflate), for clients that
    /// agreed to it: compressed once, shared by all of them.
    pub(super) envelope_deflated: OnceLock<Bytes>,
    pub(super) raw_deflated: OnceLock<Bytes>,
}

impl Msg {
    pub(crate) fn new(
        at: Position,
        channel: Arc<str>,
        from: Option<Arc<str>>,
        body: Body,
        when: Instant,
    ) -> Msg {
        Msg {
            seq: at.seq,
            epoch: at.epoch,
            at: when,
            channel,
            from,
            body,
            skip: None,
            envelope: OnceLock::new(),
            raw: OnceLock::new(),
            envelope_deflated: OnceLock::new(),
            raw_deflated: OnceLock::new(),
        }
    }

    /// The frame `conn` gets: its representation, compressed if it agreed
    /// to permessage-deflate and the message is large enough.
    pub(super) fn frame_for(&self, conn: &Conn) -> Bytes {
        let plain = self.frame(conn.json);
        let deflated = match conn.json {
            true => &self.envelope_deflated,
            false => &self.raw_deflated,
        };
        for_conn(conn, plain, deflated)
    }

    pub(super) fn frame(&self, json: bool) -> Bytes {
        let frame = if json {
            self.envelope.get_or_init(|| {
                let at = Position {
                    seq: self.seq,
                    epoch: self.epoch,
                };
                let text = protocol::message(&self.channel, at, self.from.as_deref(), &self.body);
                text_frame(&text)
            })
        } else {
            self.raw.get_or_init(|| raw_frame(&self.body))
        };
        frame.clone()
    }
}

/// `plain` as `conn` takes it: compressed (once, kept in `deflated`) when
/// it agreed to permessage-deflate and the payload has `min_size` bytes;
/// as it is otherwise, or when compressing would not make it smaller.
pub(super) fn for_conn(conn: &Conn, plain: Bytes, deflated: &OnceLock<Bytes>) -> Bytes {
    let size = payload_len(&plain);
    match &conn.deflate {
        Some(c) if size >= c.config.min_size => {
            let frame = deflated
                .get_or_init(|| compressed_frame(&plain, c.config.level).unwrap_or(plain))
                .clone();
            if frame.first().is_some_and(|b| b & 0x40 != 0) {
                c.counted.count(payload_len(&frame) as u64, size as u64);
            }
            frame
        }
        _ => plain,
    }
}

/// A whole unmasked frame compressed, if that makes it smaller.
fn compressed_frame(plain: &[u8], level: u32) -> Option<Bytes> {
    let (header, at) = Header::parse(plain).ok()??;
    let compressed = crate::deflate::compress(&plain[at..], level);
    (compressed.len() < plain.len() - at)
        .then(|| Bytes::from(deflated_frame(header.opcode, &compressed)))
}

/// A whole text frame, to be queued as it is.
pub(crate) fn text_frame(text: &str) -> Bytes {
    Bytes::from(server_frame(OpCode::Text, text.as_bytes()))
}

/// A body as a raw client receives it: text stays text, binary binary.
pub(super) fn raw_frame(body: &Body) -> Bytes {
    match body {
        Body::Json(t) | Body::Text(t) => text_frame(t),
        Body::Binary(b) => Bytes::from(server_frame(OpCode::Binary, b)),
    }
}

/// One connected hub client.
pub(crate) struct Conn {
    pub(super) id: u64,
    pub(crate) name: Arc<str>,
    /// Speaks the JSON envelope protocol (else raw frames).
    pub(super) json: bool,
    /// Wants join/leave events.
    pub(super) presence: bool,
    /// Its route's namespace: direct messages reach only this one's names.
    pub(super) namespace: Arc<str>,
    /// Channels it may subscribe to and publish on.
    pub(super) access: ChannelAccess,
    /// raw: the field of its direct messages set to its name.
    pub(super) sender_field: Option<Arc<str>>,
    /// Takes a fresh token for the session (routes with tokens).
    pub(super) refresh: Option<crate::auth::Refresh>,
    pub(crate) queue: Queue,
    pub(super) channels: Mutex<Vec<Arc<Channel>>>,
    /// permessage-deflate was agreed: messages of `min_size` and more go
    /// compressed.
    pub(crate) deflate: Option<Compressing>,
}

/// How a client that agreed permessage-deflate is sent its messages.
#[derive(Debug, Clone)]
pub(crate) struct Compressing {
    pub(crate) config: Deflate,
    /// Its route's bytes compressed on the way to clients, and before.
    pub(crate) counted: CompressionBytes,
}

impl Conn {
    pub(super) fn push(&self, frame: Bytes, metrics: &HubMetrics) -> bool {
        match self.queue.push(frame) {
            Pushed::Queued => true,
            Pushed::DroppedOldest(n) => {
                metrics.dropped_lagged.increment(n);
                true
            }
            Pushed::Overflow => {
                metrics.dropped_slow.increment(1);
                false
            }
        }
    }

    /// Queue a reply to this client itself.
    pub(crate) fn reply(&self, text: &str) {
        let _ = self.queue.push(text_frame(text));
    }
}
