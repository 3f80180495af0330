//! A hub client's session: one `select!` loop over its outbound queue, its
//! frames, the keepalive and idle clocks, and shutdown.

use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use serde_json::value::RawValue;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use super::protocol::{self, Body, Request};
use super::{Conn, Hub, HubError, Registration};
use crate::close::{SessionEnd, Side};
use crate::config::{HubProtocol, HubRoute};
use crate::names::check_channel_name;
use crate::rate::TokenBucket;
use crate::session::{SessionCtx, Timers};

/// A hub client as the handshake set it up, before its 101.
pub(crate) struct HubClient {
    /// Its place in the hub; dropping it leaves the hub (and tells presence
    /// listeners), so the session task drops it before the close handshake.
    pub(crate) registration: Registration,
    pub(crate) route: Arc<HubRoute>,
    /// The raw protocol's channel, joined at the handshake.
    pub(crate) room: Option<String>,
}

/// Run a hub session until the client leaves, breaks a rule, falls too far
/// behind, or the gateway drains; return how it ended.
pub(crate) async fn run<S>(
    ws: &mut WebSocketStream<S>,
    ctx: &SessionCtx<'_>,
    hub: &Hub,
    client: &HubClient,
) -> SessionEnd
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let conn = &client.registration.conn;
    let route = &*client.route;
    let room = client.room.as_deref();
    let metrics = ctx.metrics;
    // A raw client joined its room at the handshake, before its 101.
    if route.protocol == HubProtocol::Json {
        conn.reply(protocol::welcome(&conn.name));
    }
    let mut timers = Timers::new(ctx.limits);
    let mut bucket = TokenBucket::new(route.publish_rate, f64::from(route.publish_burst));
    loop {
        tokio::select! {
            biased;
            _ = ctx.cancel.cancelled() => return ctx.stopped(),
            _ = conn.queue.ready() => {
                if let Err(end) = drain(ws, conn, ctx, &mut timers).await {
                    return end;
                }
            }
            msg = ws.next() => {
                let msg = match msg {
                    None => return SessionEnd::Gone(Side::Client),
                    Some(Err(e)) => return SessionEnd::from_ws_error(Side::Client, &e),
                    Some(Ok(msg)) => msg,
                };
                match msg {
                    Message::Text(_) | Message::Binary(_) => {
                        metrics.count(Side::Client, msg.len() as u64);
                        timers.touch();
                        let handled = match (route.protocol, room) {
                            (HubProtocol::Json, _) => {
                                json_request(hub, conn, route, &mut bucket, msg);
                                Ok(())
                            }
                            (HubProtocol::Raw, Some(room)) => raw_frame(hub, conn, route, room, &mut bucket, msg),
                            (HubProtocol::Raw, None) => Ok(()),
                        };
                        if let Err(end) = handled {
                            return end;
                        }
                    }
                    Message::Pong(_) => timers.pong(),
                    Message::Close(frame) => return SessionEnd::Closed(Side::Client, frame),
                    // tungstenite queued the pong; the next flush sends it.
                    Message::Ping(_) | Message::Frame(_) => {
                        if let Err(end) = ctx.bounded(Side::Client, async {
                            ws.flush().await.map_err(|e| SessionEnd::from_ws_error(Side::Client, &e))
                        })
                        .await
                        {
                            return end;
                        }
                    }
                }
            }
            tick = timers.next() => {
                if let Err(end) = timers.handle(tick, ws, ctx.limits.send_timeout).await {
                    return end;
                }
            }
        }
    }
}

/// Write out everything queued for the client, batch after batch until the
/// queue is empty, one flush per batch. While a write is blocked on a client
/// that does not read, further pushes still wake this, so an overflow ends the
/// session at once instead of after `send_timeout`.
async fn drain<S>(
    ws: &mut WebSocketStream<S>,
    conn: &Conn,
    ctx: &SessionCtx<'_>,
    timers: &mut Timers,
) -> Result<(), SessionEnd>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        let batch = conn.queue.take();
        if batch.overflowed {
            return Err(SessionEnd::SlowConsumer);
        }
        if batch.items.is_empty() && batch.lagged == 0 {
            return Ok(());
        }
        let write = async {
            let err = |e| SessionEnd::from_ws_error(Side::Client, &e);
            if batch.lagged > 0 && conn.json {
                let text = format!(
                    "{} messages were dropped: this client reads too slowly",
                    batch.lagged
                );
                ws.feed(Message::Text(protocol::error("lagged", &text, None, None)))
                    .await
                    .map_err(err)?;
            }
            for frame in batch.items {
                ctx.metrics.count(Side::Upstream, frame.len() as u64);
                ws.feed(frame).await.map_err(err)?;
            }
            ws.flush().await.map_err(err)
        };
        let write = ctx.bounded(Side::Client, write);
        tokio::pin!(write);
        loop {
            tokio::select! {
                written = &mut write => {
                    written?;
                    break;
                }
                _ = conn.queue.ready() => {
                    if conn.queue.overflowed() {
                        return Err(SessionEnd::SlowConsumer);
                    }
                }
            }
        }
        timers.touch();
    }
}

/// A raw frame: to the named client(s) if it is a JSON object carrying the
/// route's `direct_field`, else to the room.
fn raw_frame(
    hub: &Hub,
    conn: &Arc<Conn>,
    route: &HubRoute,
    room: &str,
    bucket: &mut TokenBucket,
    msg: Message,
) -> Result<(), SessionEnd> {
    if !bucket.take() {
        return Err(SessionEnd::RateLimited);
    }
    let body = match msg {
        Message::Text(text) => {
            if let Some(field) = &route.direct_field
                && let Some(to) = direct_target(&text, field)
            {
                if hub.send_from(conn, &to, Body::Json(text)) == 0 {
                    hub.metrics().dropped_no_recipient.increment(1);
                }
                return Ok(());
            }
            Body::Text(text)
        }
        Message::Binary(bytes) => Body::Binary(bytes),
        _ => return Ok(()),
    };
    // The room always exists for its members; a refusal here is only the
    // hub-wide channel limit.
    hub.publish(room, Some(conn), body, route.echo)
        .map(drop)
        .map_err(|_| SessionEnd::Overloaded)
}

/// The value of `field` if `text` is a JSON object with that string field.
fn direct_target(text: &str, field: &str) -> Option<String> {
    if !text.trim_start().starts_with('{') {
        return None;
    }
    let map: serde_json::Map<String, serde_json::Value> = serde_json::from_str(text).ok()?;
    map.get(field)?.as_str().map(str::to_owned)
}

/// One JSON request; the answer (ack, error, presence) goes to the client's
/// own queue, after anything already queued for it.
fn json_request(
    hub: &Hub,
    conn: &Arc<Conn>,
    route: &HubRoute,
    bucket: &mut TokenBucket,
    msg: Message,
) {
    let text = match msg {
        Message::Text(text) => text,
        _ => {
            let why = "binary frames are not accepted on a json route";
            return conn.reply(protocol::error("bad_request", why, None, None));
        }
    };
    let request: Request<'_> = match serde_json::from_str(&text) {
        Ok(request) => request,
        Err(e) => {
            let why = format!("not a request object with a \"type\": {e}");
            return conn.reply(protocol::error("bad_request", &why, None, None));
        }
    };
    let id = request.id;
    let reply = match handle(hub, conn, route, bucket, &request) {
        Ok(reply) => reply,
        Err((code, why)) => protocol::error(code, &why, id, None),
    };
    conn.reply(reply);
}

type Refusal = (&'static str, String);

fn handle(
    hub: &Hub,
    conn: &Arc<Conn>,
    route: &HubRoute,
    bucket: &mut TokenBucket,
    r: &Request<'_>,
) -> Result<Utf8Bytes, Refusal> {
    let id = r.id;
    let refused = |e: HubError| (e.code(), e.message().to_owned());
    match r.kind.as_str() {
        "subscribe" => {
            let channel = channel_of(r)?;
            let sub = hub
                .subscribe(conn, channel, r.since, route.max_channels_per_client)
                .map_err(refused)?;
            if sub.gap {
                let why = "history does not reach back to `since`: subscribed from now on, resync";
                return Ok(protocol::error("gap", why, id, Some((channel, sub.seq))));
            }
            Ok(protocol::ack(id, Some(channel), Some(sub.seq)))
        }
        "unsubscribe" => {
            let channel = channel_of(r)?;
            hub.unsubscribe(conn, channel).map_err(refused)?;
            Ok(protocol::ack(id, Some(channel), None))
        }
        "publish" => {
            let channel = channel_of(r)?;
            let data = data_of(r)?;
            if !bucket.take() {
                return Err(("rate_limited", "publishing too fast".to_owned()));
            }
            let (seq, _) = hub
                .publish(channel, Some(conn), data, false)
                .map_err(refused)?;
            Ok(protocol::ack(id, Some(channel), Some(seq)))
        }
        "send" => {
            let to =
                r.to.as_deref()
                    .ok_or(("bad_request", "\"to\" is required".to_owned()))?;
            let data = data_of(r)?;
            if !bucket.take() {
                return Err(("rate_limited", "sending too fast".to_owned()));
            }
            if hub.send_from(conn, to, data) == 0 {
                hub.metrics().dropped_no_recipient.increment(1);
                return Err((
                    "no_such_client",
                    format!("no client named {to:?} is connected"),
                ));
            }
            Ok(protocol::ack(id, None, None))
        }
        "refresh" => {
            super::access::refresh(conn, r.token.as_deref()).map(|()| protocol::ack(id, None, None))
        }
        "presence" => {
            let channel = channel_of(r)?;
            let clients = hub.presence(channel).unwrap_or_default();
            Ok(protocol::presence(channel, &clients, id))
        }
        other => Err(("bad_request", format!("unknown type {other:?}"))),
    }
}

fn channel_of<'r>(r: &'r Request<'_>) -> Result<&'r str, Refusal> {
    let channel = r
        .channel
        .as_deref()
        .ok_or(("bad_request", "\"channel\" is required".to_owned()))?;
    check_channel_name(channel).map_err(|why| ("bad_channel", why))?;
    Ok(channel)
}

fn data_of(r: &Request<'_>) -> Result<Body, Refusal> {
    let data: &RawValue = r
        .data
        .ok_or(("bad_request", "\"data\" is required".to_owned()))?;
    Ok(Body::Json(Utf8Bytes::from(data.get().to_owned())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direct_targets_need_an_object_with_a_string_field() {
        assert_eq!(
            direct_target(r#"{"src":"a","dst":"bob","msg":"hi"}"#, "dst").as_deref(),
            Some("bob")
        );
        assert_eq!(direct_target(r#"{"dst":7}"#, "dst"), None);
        assert_eq!(direct_target(r#"["dst"]"#, "dst"), None);
        assert_eq!(direct_target("hello dst", "dst"), None);
        assert_eq!(direct_target(r#"{"to":"bob"}"#, "dst"), None);
    }
}
