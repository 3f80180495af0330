//! What travels through Redis: a channel message as `SEQ EPOCH ` (written
//! by the publish script) followed by length-prefixed fields (`LEN:BYTES`,
//! binary-safe), and a direct message in the same fields. Anything that
//! does not parse is dropped and counted, never trusted.

use std::sync::Arc;

use bytes::Bytes;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::hub::protocol::Body;
use crate::hub::{Epoch, Position};

/// Microseconds since the Unix epoch, for the cross-node lag.
pub(super) fn wall_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

struct Fields(Vec<u8>);

impl Fields {
    fn with_capacity(n: usize) -> Fields {
        Fields(Vec::with_capacity(n + 64))
    }

    fn put(&mut self, bytes: &[u8]) -> &mut Self {
        self.0.extend_from_slice(bytes.len().to_string().as_bytes());
        self.0.push(b':');
        self.0.extend_from_slice(bytes);
        self
    }

    /// `None` as an empty field, `Some(x)` as `=x`.
    fn put_opt(&mut self, value: Option<&str>) -> &mut Self {
        match value {
            None => self.put(b""),
            Some(v) => {
                let mut field = Vec::with_capacity(v.len() + 1);
                field.push(b'=');
                field.extend_from_slice(v.as_bytes());
                self.put(&field)
            }
        }
    }

    fn put_body(&mut self, body: &Body) -> &mut Self {
        let (kind, bytes): (&[u8], &[u8]) = match body {
            Body::Json(t) => (b"j", t.as_bytes()),
            Body::Text(t) => (b"t", t.as_bytes()),
            Body::Binary(b) => (b"b", b),
        };
        self.put(kind).put(bytes)
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn field(&mut self) -> Option<&'a [u8]> {
        let colon = self.0.iter().position(|&b| b == b':')?;
        let len: usize = std::str::from_utf8(&self.0[..colon]).ok()?.parse().ok()?;
        let rest = &self.0[colon + 1..];
        let (field, rest) = (rest.get(..len)?, rest.get(len..)?);
        self.0 = rest;
        Some(field)
    }

    fn number(&mut self) -> Option<u64> {
        std::str::from_utf8(self.field()?).ok()?.parse().ok()
    }

    fn opt(&mut self) -> Option<Option<Arc<str>>> {
        match self.field()? {
            [] => Some(None),
            [b'=', name @ ..] => Some(Some(std::str::from_utf8(name).ok()?.into())),
            _ => None,
        }
    }

    fn body(&mut self) -> Option<Body> {
        let kind = self.field()?;
        let bytes = self.field()?;
        let text = || String::from_utf8(bytes.to_vec()).ok().map(Utf8Bytes::from);
        match kind {
            b"j" => text().map(Body::Json),
            b"t" => text().map(Body::Text),
            b"b" => Some(Body::Binary(Bytes::copy_from_slice(bytes))),
            _ => None,
        }
    }
}

/// A channel message as the publish script receives it (it prepends the
/// position): who sent it from which node, whether the sender gets it too.
pub(crate) fn encode_message(
    node: &str,
    conn: Option<u64>,
    echo: bool,
    from: Option<&str>,
    body: &Body,
) -> Vec<u8> {
    let mut f = Fields::with_capacity(body.len());
    f.put(node.as_bytes())
        .put(conn.unwrap_or(0).to_string().as_bytes())
        .put(if echo { b"1" } else { b"0" })
        .put(wall_us().to_string().as_bytes())
        .put_opt(from)
        .put_body(body);
    f.0
}

/// A channel message from Redis.
pub(crate) struct Incoming {
    pub(crate) at: Position,
    /// The publishing node, and its connection that sent it (0: none).
    pub(crate) node: Arc<str>,
    pub(crate) conn: u64,
    /// The sender receives its own message too.
    pub(crate) echo: bool,
    /// When it was published, by the publishing node's clock (µs).
    pub(crate) sent_us: u64,
    pub(crate) from: Option<Arc<str>>,
    pub(crate) body: Body,
}

impl Incoming {
    pub(crate) fn parse(payload: &[u8]) -> Option<Incoming> {
        let mut head = payload.splitn(3, |&b| b == b' ');
        let seq = std::str::from_utf8(head.next()?).ok()?.parse().ok()?;
        let epoch = Epoch::parse(std::str::from_utf8(head.next()?).ok()?)?;
        let mut r = Reader(head.next()?);
        let node = std::str::from_utf8(r.field()?).ok()?.into();
        Some(Incoming {
            at: Position { seq, epoch },
            node,
            conn: r.number()?,
            echo: r.field()? == b"1",
            sent_us: r.number()?,
            from: r.opt()?,
            body: r.body()?,
        })
    }
}

/// `join NODE NAME` / `leave NODE NAME` on a channel's topic.
pub(crate) struct Presence<'p> {
    pub(crate) join: bool,
    pub(crate) node: &'p str,
    pub(crate) name: &'p str,
}

impl<'p> Presence<'p> {
    pub(crate) fn parse(payload: &'p [u8]) -> Option<Presence<'p>> {
        if !(payload.starts_with(b"join ") || payload.starts_with(b"leave ")) {
            return None;
        }
        let text = std::str::from_utf8(payload).ok()?;
        let (join, rest) = match text.split_once(' ')? {
            ("join", rest) => (true, rest),
            ("leave", rest) => (false, rest),
            _ => return None,
        };
        let (node, name) = rest.split_once(' ')?;
        Some(Presence { join, node, name })
    }
}

/// A direct message for the named clients of another node.
pub(crate) fn encode_direct(
    to: &str,
    namespace: Option<&str>,
    from: Option<&str>,
    body: &Body,
) -> Vec<u8> {
    let mut f = Fields::with_capacity(body.len() + to.len());
    f.put(to.as_bytes())
        .put_opt(namespace)
        .put_opt(from)
        .put(wall_us().to_string().as_bytes())
        .put_body(body);
    f.0
}

pub(crate) struct Direct {
    pub(crate) to: Arc<str>,
    pub(crate) namespace: Option<Arc<str>>,
    pub(crate) from: Option<Arc<str>>,
    pub(crate) sent_us: u64,
    pub(crate) body: Body,
}

impl Direct {
    pub(crate) fn parse(payload: &[u8]) -> Option<Direct> {
        let mut r = Reader(payload);
        Some(Direct {
            to: std::str::from_utf8(r.field()?).ok()?.into(),
            namespace: r.opt()?,
            from: r.opt()?,
            sent_us: r.number()?,
            body: r.body()?,
        })
    }
}

/// A channel's head and kept history, as the load script returns them.
pub(crate) struct Loaded {
    /// `None`: the channel has no stream in Redis yet.
    pub(crate) at: Option<Position>,
    /// Each kept message with its age on the server, oldest first.
    pub(crate) kept: Vec<(Incoming, std::time::Duration)>,
    /// Kept entries that did not parse (skipped, counted).
    pub(crate) unreadable: usize,
}

impl Loaded {
    pub(crate) fn parse(values: Vec<::redis::Value>) -> Option<Loaded> {
        use ::redis::Value;
        let text = |v: &Value| -> Option<String> {
            match v {
                Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
                Value::SimpleString(s) => Some(s.clone()),
                Value::Int(i) => Some(i.to_string()),
                _ => None,
            }
        };
        let mut it = values.into_iter();
        let epoch = text(&it.next()?)?;
        let seq: u64 = text(&it.next()?)?.parse().ok()?;
        let now: u64 = text(&it.next()?)?.parse().ok()?;
        let at = match epoch.as_str() {
            "" => None,
            epoch => Some(Position {
                seq,
                epoch: Epoch::parse(epoch)?,
            }),
        };
        let (mut kept, mut unreadable) = (Vec::new(), 0);
        while let (Some(id), Some(payload)) = (it.next(), it.next()) {
            let entry = text(&id).and_then(|id| {
                let ms: u64 = id.split('-').next()?.parse().ok()?;
                let Value::BulkString(payload) = payload else {
                    return None;
                };
                let age = std::time::Duration::from_millis(now.saturating_sub(ms));
                Some((Incoming::parse(&payload)?, age))
            });
            match entry {
                Some(entry) => kept.push(entry),
                // What is older is dropped with it: the history kept is
                // always whole from its first message to the head.
                None => {
                    unreadable += 1 + kept.len();
                    kept.clear();
                }
            }
        }
        Some(Loaded {
            at,
            kept,
            unreadable,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_and_direct_messages_survive_the_trip() {
        let body = Body::Binary(Bytes::from_static(b"a:1 \x00\xff"));
        let mut payload = b"42 00000000000000ab ".to_vec();
        payload.extend(encode_message("n1", Some(7), false, Some("bob:x"), &body));
        let m = Incoming::parse(&payload).unwrap();
        assert_eq!(
            (m.at.seq, m.at.epoch.to_string()),
            (42, "00000000000000ab".into())
        );
        assert_eq!((&*m.node, m.conn, m.echo), ("n1", 7, false));
        assert_eq!(m.from.as_deref(), Some("bob:x"));
        assert!(matches!(m.body, Body::Binary(b) if &b[..] == b"a:1 \x00\xff"));

        let text = Body::Json(Utf8Bytes::from_static(r#"{"x":"1:2"}"#));
        let d = Direct::parse(&encode_direct("ann", None, None, &text)).unwrap();
        assert_eq!((&*d.to, d.namespace, d.from), ("ann", None, None));
        assert!(matches!(d.body, Body::Json(t) if t.as_str() == r#"{"x":"1:2"}"#));
    }

    #[test]
    fn what_does_not_parse_is_refused() {
        for bad in [
            &b""[..],
            b"1 nothex ",
            b"1 00000000000000ab 2:n1",
            b"1 00000000000000ab 99:short",
            b"x 00000000000000ab ",
        ] {
            assert!(Incoming::parse(bad).is_none(), "{bad:?}");
        }
        assert!(Direct::parse(b"3:ann1:x").is_none(), "namespace without =");
    }
}
