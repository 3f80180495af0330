//! A hub client's session: one `select!` loop over its outbound queue, its
//! frames, the keepalive and idle clocks, and shutdown; what each message
//! asks of the hub.

use std::sync::Arc;

use serde_json::value::RawValue;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::member::{Data, Event, Member, MemberDeflate};
use super::protocol::{self, Body, Request};
use super::{Conn, Done, Hub, HubError, Registration, Since, Subscribed, Then, text_frame};
use crate::close::{SessionEnd, Side};
use crate::config::{HubProtocol, HubRoute};
use crate::deflate::Agreed;
use crate::names::check_channel_name;
use crate::rate::TokenBucket;
use crate::session::{SessionCtx, Timers, keepalive_ping};

/// A hub client as the handshake set it up, before its 101.
pub(crate) struct HubClient {
    /// Its place in the hub; dropping it leaves the hub (and tells presence
    /// listeners), so the session task drops it before the close handshake.
    pub(crate) registration: Registration,
    pub(crate) route: Arc<HubRoute>,
    /// The raw protocol's channel, joined at the handshake.
    pub(crate) room: Option<String>,
    /// permessage-deflate, as agreed (boxed: most of it is for the 101).
    pub(crate) deflate: Option<Box<Agreed>>,
}

/// The steady state of a hub member after its 101: run the session, leave
/// the hub (telling presence listeners) and carry out the close handshake.
/// Spawned on its own with the stream behind a pointer, so an idle member's
/// task holds a few hundred bytes.
pub(crate) async fn serve<S>(
    io: Box<S>,
    ctx: &SessionCtx<'_>,
    hub: &Hub,
    client: HubClient,
) -> SessionEnd
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let deflate = client.deflate.as_ref().map(|a| MemberDeflate::new(a, ctx));
    let mut member = Member::new(io, ctx.limits, deflate);
    let end = run(&mut member, ctx, hub, &client).await;
    drop(client);
    member.finish(&end, ctx.limits.close_timeout).await;
    end
}

/// Run a hub session until the client leaves, breaks a rule, falls too far
/// behind, or the gateway drains; return how it ended.
async fn run<S>(
    member: &mut Member<S>,
    ctx: &SessionCtx<'_>,
    hub: &Hub,
    client: &HubClient,
) -> SessionEnd
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let conn = &client.registration.conn;
    let route = &*client.route;
    // A raw client joined its room at the handshake, before its 101.
    if route.protocol == HubProtocol::Json {
        conn.reply(&protocol::welcome(&conn.name));
    }
    let mut timers = Timers::new(ctx.limits);
    let mut bucket = TokenBucket::new(route.publish_rate, f64::from(route.publish_burst));
    loop {
        let step = tokio::select! {
            biased;
            _ = ctx.cancel.cancelled() => Err(ctx.stopped()),
            _ = conn.queue.ready() => Box::pin(drain(member, conn, ctx, &mut timers)).await,
            read = member.read() => match read {
                Ok(()) => received(member, hub, client, &mut bucket, ctx, &mut timers).await,
                Err(end) => Err(end),
            },
            tick = timers.next() => match timers.due(tick) {
                Ok(true) => {
                    member.queue(keepalive_ping(timers.ping_payload()));
                    Box::pin(drain(member, conn, ctx, &mut timers)).await
                }
                Ok(false) => Ok(()),
                Err(end) => Err(end),
            },
        };
        if let Err(end) = step {
            return end;
        }
    }
}

/// Act on everything the client sent that was read; write the pongs its
/// pings asked for.
async fn received<S>(
    member: &mut Member<S>,
    hub: &Hub,
    client: &HubClient,
    bucket: &mut TokenBucket,
    ctx: &SessionCtx<'_>,
    timers: &mut Timers,
) -> Result<(), SessionEnd>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let conn = &client.registration.conn;
    let route = &*client.route;
    loop {
        let event = match member.event() {
            Ok(Some(event)) => event,
            Ok(None) => break,
            Err(end) => {
                // What was queued before a Close or a broken rule still goes.
                let _ = Box::pin(drain(member, conn, ctx, timers)).await;
                return Err(end);
            }
        };
        let data = match event {
            Event::Pong => {
                timers.pong();
                continue;
            }
            Event::Message(data) => data,
        };
        ctx.metrics.count(Side::Client, data.len() as u64);
        timers.touch();
        // Every message a member sends is handled here.
        match (route.protocol, client.room.as_deref()) {
            (HubProtocol::Json, _) => json_request(hub, conn, route, bucket, data),
            (HubProtocol::Raw, Some(room)) => raw_frame(hub, conn, route, room, bucket, data)?,
            (HubProtocol::Raw, None) => {}
        }
    }
    match member.has_output() {
        true => Box::pin(drain(member, conn, ctx, timers)).await,
        false => Ok(()),
    }
}

/// Write out everything queued for the client, batch after batch, and
/// flush once nothing more is ready. Callers box it: its state (write and
/// flush deadlines) then takes memory only while it runs, not in every idle
/// session's task. While a write is blocked on a client
/// that does not read, further pushes still wake this, so an overflow ends
/// the session at once instead of after `send_timeout`.
async fn drain<S>(
    member: &mut Member<S>,
    conn: &Conn,
    ctx: &SessionCtx<'_>,
    timers: &mut Timers,
) -> Result<(), SessionEnd>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut flushed = false;
    loop {
        let batch = conn.queue.take();
        if batch.overflowed {
            return Err(SessionEnd::SlowConsumer);
        }
        if batch.lagged > 0 && conn.json {
            let text = format!(
                "{} messages were dropped: this client reads too slowly",
                batch.lagged
            );
            member.queue(text_frame(&protocol::error("lagged", &text, None, None)));
        }
        let messages = batch.items.len() as u64;
        let bytes = member.take(batch.items);
        ctx.metrics.counted(Side::Upstream, messages, bytes);
        if !member.has_output() {
            if flushed {
                return Ok(());
            }
            watch(conn, ctx, member.flush()).await?;
            flushed = true;
            continue;
        }
        watch(conn, ctx, member.write_out()).await?;
        flushed = false;
        timers.touch();
    }
}

/// Run a write under `send_timeout`, ending the session as soon as the
/// client's queue overflows.
async fn watch(
    conn: &Conn,
    ctx: &SessionCtx<'_>,
    work: impl Future<Output = Result<(), SessionEnd>>,
) -> Result<(), SessionEnd> {
    let work = ctx.bounded(Side::Client, work);
    tokio::pin!(work);
    loop {
        tokio::select! {
            done = &mut work => return done,
            _ = conn.queue.ready() => {
                if conn.queue.overflowed() {
                    return Err(SessionEnd::SlowConsumer);
                }
            }
        }
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
    msg: Data,
) -> Result<(), SessionEnd> {
    if !bucket.take() {
        return Err(SessionEnd::RateLimited);
    }
    let body = match msg {
        Data::Text(text) => {
            if let Some(field) = &route.direct_field
                && let Some(to) = direct_target(&text, field)
            {
                if hub.send_from(conn, &to, Body::Json(text), || None) == Some(0) {
                    hub.metrics().dropped_no_recipient.increment(1);
                }
                return Ok(());
            }
            Body::Text(text)
        }
        Data::Binary(bytes) => Body::Binary(bytes),
    };
    // The room always exists for its members: a refusal here is the
    // hub-wide channel limit, or a full backplane queue (the message is
    // dropped, counted, and the session goes on).
    match hub.publish(room, Some(conn), body, route.echo, || None) {
        Ok(_) | Err(HubError::Busy) => Ok(()),
        Err(_) => Err(SessionEnd::Overloaded),
    }
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
    msg: Data,
) {
    let text = match msg {
        Data::Text(text) => text,
        Data::Binary(_) => {
            let why = "binary frames are not accepted on a json route";
            return conn.reply(&protocol::error("bad_request", why, None, None));
        }
    };
    let request: Request<'_> = match serde_json::from_str(&text) {
        Ok(request) => request,
        Err(e) => {
            let why = format!("not a request object with a \"type\": {e}");
            return conn.reply(&protocol::error("bad_request", &why, None, None));
        }
    };
    let id = request.id;
    // `None`: answered already (a subscribe answers under its channel's lock).
    let reply = match handle(hub, conn, route, bucket, &request) {
        Ok(reply) => reply,
        Err((code, why)) => Some(protocol::error(code, &why, id, None)),
    };
    if let Some(reply) = reply {
        conn.reply(&reply);
    }
}

/// For the fuzz target (`crate::fuzz::hub_json`): `lines` as JSON requests
/// from two clients of `route` in turn, each through [`json_request`] on a
/// fresh hub; `answer` gets every message queued to either client.
pub(crate) fn fuzz_requests<'a>(
    config: &crate::config::HubConfig,
    route: &HubRoute,
    lines: impl Iterator<Item = &'a str>,
    mut answer: impl FnMut(&str),
) {
    let Ok(hub) = Hub::new(config.clone()) else {
        return;
    };
    let access = |route| crate::hub::access::ChannelAccess::new(None, route);
    let clients =
        ["ann", "bob"].map(|name| hub.register(Some(name), route, access(route), None, None));
    let [Ok(ann), Ok(bob)] = clients else {
        return;
    };
    let mut bucket = TokenBucket::new(route.publish_rate, f64::from(route.publish_burst));
    for (i, line) in lines.enumerate() {
        let conn = if i % 2 == 0 { &ann.conn } else { &bob.conn };
        let text = Data::Text(Utf8Bytes::from(line.to_owned()));
        json_request(&hub, conn, route, &mut bucket, text);
        for queued in [&ann.conn, &bob.conn].map(|c| c.queue.take()) {
            for frame in queued.items {
                let Ok(Some((_, at))) = crate::frame::Header::parse(&frame) else {
                    panic!("the hub queued a frame it cannot parse: {frame:?}");
                };
                answer(std::str::from_utf8(&frame[at..]).expect("a text frame"));
            }
        }
    }
}

type Refusal = (&'static str, String);

fn handle(
    hub: &Hub,
    conn: &Arc<Conn>,
    route: &HubRoute,
    bucket: &mut TokenBucket,
    r: &Request<'_>,
) -> Result<Option<Utf8Bytes>, Refusal> {
    let id = r.id;
    let refused = |e: HubError| (e.code(), e.message().to_owned());
    match r.kind.as_str() {
        "subscribe" => {
            let channel = channel_of(r)?;
            // Where each change of subscription tells every presence
            // listener, it is paid for like a publish.
            if route.presence_events {
                charge(bucket, "subscribing")?;
            }
            let since = r.since.map(|seq| Since {
                seq,
                epoch: r.epoch.as_deref(),
            });
            let (owned_id, owned_channel) = (id.map(ToOwned::to_owned), channel.to_owned());
            let answer = move |sub: &Subscribed| {
                let (id, channel) = (owned_id.as_deref(), owned_channel.as_str());
                Some(match sub.gap {
                    true => {
                        let why = "history does not reach back to `since` in that epoch: \
                                   subscribed from now on, resync";
                        protocol::error("gap", why, id, Some((channel, sub.at)))
                    }
                    false => protocol::ack(id, Some(channel), Some(sub.at)),
                })
            };
            hub.subscribe(conn, channel, since, route.max_channels_per_client, answer)
                .map_err(refused)?;
            Ok(None)
        }
        "unsubscribe" => {
            let channel = channel_of(r)?;
            if route.presence_events {
                charge(bucket, "unsubscribing")?;
            }
            hub.unsubscribe(conn, channel).map_err(refused)?;
            Ok(Some(protocol::ack(id, Some(channel), None)))
        }
        "publish" => {
            let channel = channel_of(r)?;
            let data = data_of(r)?;
            charge(bucket, "publishing")?;
            let later = || Some(answer_later(conn, id, |done| Ok(done.at), Some(channel)));
            let published = hub
                .publish(channel, Some(conn), data, false, later)
                .map_err(refused)?;
            // `None`: sequenced in Redis, acknowledged once it is.
            Ok(published.map(|p| protocol::ack(id, Some(channel), Some(p.at))))
        }
        "send" => {
            let to =
                r.to.as_deref()
                    .ok_or(("bad_request", "\"to\" is required".to_owned()))?;
            let data = data_of(r)?;
            charge(bucket, "sending")?;
            let (dropped, owned_to) = (hub.metrics().dropped_no_recipient.clone(), to.to_owned());
            let reached = move |done: Done| match done.nodes {
                0 => {
                    dropped.increment(1);
                    Err(no_such_client(&owned_to))
                }
                _ => Ok(None),
            };
            match hub.send_from(conn, to, data, || {
                Some(answer_later(conn, id, reached, None))
            }) {
                Some(0) => {
                    hub.metrics().dropped_no_recipient.increment(1);
                    Err(no_such_client(to))
                }
                Some(_) => Ok(Some(protocol::ack(id, None, None))),
                // Not connected here: answered once Redis says where it went.
                None => Ok(None),
            }
        }
        "refresh" => super::access::refresh(conn, r.token.as_deref())
            .map(|()| Some(protocol::ack(id, None, None))),
        "presence" => {
            let channel = channel_of(r)?;
            // Across nodes it costs a query to Redis: paid for like a publish.
            charge(bucket, "asking for presence")?;
            if !conn.access.may_subscribe(channel) {
                return Err(refused(HubError::Forbidden));
            }
            let (conn, id, owned) = (conn.clone(), id.map(ToOwned::to_owned), channel.to_owned());
            hub.presence_then(channel, move |clients| {
                conn.reply(&protocol::presence(&owned, &clients, id.as_deref()));
            });
            Ok(None)
        }
        other => Err(("bad_request", format!("unknown type {other:?}"))),
    }
}

fn no_such_client(to: &str) -> Refusal {
    (
        "no_such_client",
        format!("no client named {to:?} is connected"),
    )
}

/// What the client is told once Redis has answered for its publish or
/// direct message: an ack (with the position `answer` gives, if any), or
/// the refusal.
fn answer_later(
    conn: &Arc<Conn>,
    id: Option<&RawValue>,
    answer: impl FnOnce(Done) -> Result<Option<super::Position>, Refusal> + Send + 'static,
    channel: Option<&str>,
) -> Then {
    let (conn, id) = (conn.clone(), id.map(ToOwned::to_owned));
    let channel = channel.map(str::to_owned);
    Box::new(move |result| {
        let id = id.as_deref();
        let reply = match result.map_err(|e| (e.code(), e.message().to_owned())) {
            Ok(done) => answer(done).map(|at| protocol::ack(id, channel.as_deref(), at)),
            Err(refusal) => Err(refusal),
        };
        conn.reply(&reply.unwrap_or_else(|(code, why)| protocol::error(code, &why, id, None)));
    })
}

/// One token from the client's bucket, or `rate_limited` for `what`.
fn charge(bucket: &mut TokenBucket, what: &str) -> Result<(), Refusal> {
    match bucket.take() {
        true => Ok(()),
        false => Err(("rate_limited", format!("{what} too fast"))),
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
