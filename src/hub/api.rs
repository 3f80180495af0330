//! The hub's HTTP API on the admin listener, for backends that do not speak
//! WebSocket. Bearer-token protected (`[hub] api_tokens`; none: the API is off).
//!
//! - `POST /api/channels/{channel}/publish`: the body is the message
//!   (`application/json` → JSON `data`; `text/*` → text; anything else → binary)
//! - `POST /api/clients/{name}/send`: a direct message, same body rules
//! - `GET /api/channels`: every channel with its subscribers and last seq
//! - `GET /api/channels/{channel}/presence`: the names subscribed

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde_json::value::RawValue;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::protocol::{Body, push_json_string, push_position};
use tokio::sync::oneshot;

use super::{Done, Hub, HubError, Then, access};
use crate::close::ApiError;
use crate::config::{BackplaneConfig, HubConfig};
use crate::names::{check_channel_name, check_client_name};

pub(crate) async fn handle(
    req: Request<Incoming>,
    hub: &Hub,
    body: BodyLimit,
) -> Response<Full<Bytes>> {
    let response = route(req, hub, body).await;
    hub.metrics().api_request(response.status());
    response
}

/// How much of a request body is read, and for how long.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BodyLimit {
    /// Bytes (`limits.max_message_size`).
    pub(crate) max: usize,
    /// From the end of the head (`limits.handshake_timeout`).
    pub(crate) within: Duration,
}

async fn route(req: Request<Incoming>, hub: &Hub, body_limit: BodyLimit) -> Response<Full<Bytes>> {
    let config = hub.config();
    if config.api_tokens.is_empty() && config.api_keys.is_empty() {
        return error(ApiError::Off);
    }
    let Some(grant) = authorized(&req, config) else {
        let mut r = error(ApiError::Unauthorized);
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer realm=\"wsgate\""),
        );
        return r;
    };
    let path = req.uri().path().to_owned();
    let Some(endpoint) = Endpoint::parse(&path) else {
        return error(ApiError::NotFound);
    };
    let (method, allow) = endpoint.method();
    if req.method() != method {
        return not_allowed(allow);
    }
    if !grant.allows(&endpoint) {
        return error(ApiError::Forbidden);
    }
    match endpoint {
        Endpoint::Channels => channels(hub, &grant),
        Endpoint::Presence(channel) => match hub.presence_everywhere(channel).await {
            Some(clients) => {
                let mut out = String::from(r#"{"channel":"#);
                push_json_string(&mut out, channel);
                out.push_str(r#","clients":"#);
                out.push_str(&serde_json::to_string(&clients).unwrap_or_else(|_| "[]".into()));
                out.push('}');
                ok(out)
            }
            None => error(ApiError::NoSuchChannel),
        },
        Endpoint::Publish(channel) => {
            let name_ok = check_channel_name(channel).map_err(ApiError::BadChannel);
            let body = match named_body(req, body_limit, name_ok).await {
                Ok(body) => body,
                Err(response) => return response,
            };
            let (later, rx) = answer_channel();
            let (at, count) = match hub.publish(channel, None, body, true, later) {
                Ok(Some(published)) => (published.at, ("delivered", published.delivered)),
                Ok(None) => match redis_answer(hub, rx).await {
                    Ok(Done {
                        at: Some(at),
                        nodes,
                    }) => (at, ("nodes", nodes)),
                    Ok(_) => {
                        return error(ApiError::Hub(
                            "unavailable",
                            HubError::Unavailable.message(),
                        ));
                    }
                    Err(e) => return error(ApiError::Hub(e.code(), e.message())),
                },
                Err(e) => return error(ApiError::Hub(e.code(), e.message())),
            };
            let mut out = String::from(r#"{"channel":"#);
            push_json_string(&mut out, channel);
            push_position(&mut out, at);
            out.push_str(&format!(r#","{}":{}}}"#, count.0, count.1));
            ok(out)
        }
        Endpoint::Send(name) => {
            let name_ok = check_client_name(name).map_err(ApiError::BadName);
            let body = match named_body(req, body_limit, name_ok).await {
                Ok(body) => body,
                Err(response) => return response,
            };
            let (later, rx) = answer_channel();
            let count = match hub.send(name, None, body, later) {
                Some(delivered) => ("delivered", delivered),
                None => match redis_answer(hub, rx).await {
                    Ok(done) => ("nodes", done.nodes),
                    Err(e) => return error(ApiError::Hub(e.code(), e.message())),
                },
            };
            match count.1 {
                0 => error(ApiError::NoSuchClient),
                n => ok(format!(r#"{{"{}":{n}}}"#, count.0)),
            }
        }
    }
}

/// A waiter for Redis's answer, and where it arrives.
fn answer_channel() -> (
    impl FnOnce() -> Option<Then>,
    oneshot::Receiver<Result<Done, HubError>>,
) {
    let (tx, rx) = oneshot::channel();
    let later = move || -> Option<Then> {
        Some(Box::new(move |answer| {
            let _ = tx.send(answer);
        }))
    };
    (later, rx)
}

/// Redis's answer for a publish or direct message, within twice the
/// command deadline (it waits in the engine's queue first).
async fn redis_answer(
    hub: &Hub,
    rx: oneshot::Receiver<Result<Done, HubError>>,
) -> Result<Done, HubError> {
    let wait = match &hub.config().backplane {
        BackplaneConfig::Redis(redis) => redis.command_timeout * 2,
        BackplaneConfig::Memory => std::time::Duration::ZERO,
    };
    match tokio::time::timeout(wait, rx).await {
        Ok(Ok(answer)) => answer,
        _ => Err(HubError::Unavailable),
    }
}

/// The API's endpoints, by path.
enum Endpoint<'p> {
    Channels,
    Publish(&'p str),
    Presence(&'p str),
    Send(&'p str),
}

impl<'p> Endpoint<'p> {
    fn parse(path: &'p str) -> Option<Self> {
        if path == "/api/channels" {
            return Some(Endpoint::Channels);
        }
        if let Some(rest) = path.strip_prefix("/api/channels/") {
            return match rest.strip_suffix("/publish") {
                Some(channel) => Some(Endpoint::Publish(channel)),
                None => rest.strip_suffix("/presence").map(Endpoint::Presence),
            };
        }
        path.strip_prefix("/api/clients/")
            .and_then(|p| p.strip_suffix("/send"))
            .map(Endpoint::Send)
    }

    /// The one method the endpoint answers, and its `Allow` value.
    fn method(&self) -> (Method, &'static str) {
        match self {
            Endpoint::Channels | Endpoint::Presence(_) => (Method::GET, "GET"),
            Endpoint::Publish(_) | Endpoint::Send(_) => (Method::POST, "POST"),
        }
    }
}

/// What a request's bearer token may do.
enum Grant<'c> {
    /// An `api_tokens` token: everything.
    All,
    /// An `api_keys` token: these channel patterns.
    Channels(&'c [String]),
}

impl Grant<'_> {
    fn channel(&self, channel: &str) -> bool {
        match self {
            Grant::All => true,
            Grant::Channels(patterns) => patterns.iter().any(|p| access::matches(p, channel)),
        }
    }

    fn allows(&self, endpoint: &Endpoint<'_>) -> bool {
        match endpoint {
            Endpoint::Channels => true,
            Endpoint::Publish(channel) | Endpoint::Presence(channel) => self.channel(channel),
            Endpoint::Send(_) => matches!(self, Grant::All),
        }
    }
}

/// The grant of the request's bearer token. Every token is compared in
/// full, in constant time, whichever matches.
fn authorized<'c, B>(req: &Request<B>, config: &'c HubConfig) -> Option<Grant<'c>> {
    let given = crate::headers::bearer(req.headers())?.as_bytes();
    let tokens = config.api_tokens.iter().map(|t| t.as_bytes());
    let full = crate::headers::matches_any(tokens, given);
    let mut limited = None;
    for key in &config.api_keys {
        if crate::headers::matches_any([key.token.as_bytes()], given) {
            limited = Some(Grant::Channels(&key.channels));
        }
    }
    if full { Some(Grant::All) } else { limited }
}

/// The body of a request whose path names a channel or client, once the
/// name is known to be good.
async fn named_body(
    req: Request<Incoming>,
    limit: BodyLimit,
    name_ok: Result<(), ApiError>,
) -> Result<Body, Response<Full<Bytes>>> {
    name_ok.map_err(error)?;
    read_body(req, limit).await
}

/// The body as a message: JSON, text or binary by content type; bounded
/// in size and in time.
async fn read_body(
    req: Request<Incoming>,
    limit: BodyLimit,
) -> Result<Body, Response<Full<Bytes>>> {
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let read = Limited::new(req.into_body(), limit.max).collect();
    let bytes = match tokio::time::timeout(limit.within, read).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(_)) => return Err(error(ApiError::TooLarge(limit.max))),
        Err(_) => return Err(error(ApiError::SlowBody(limit.within))),
    };
    let is_json = content_type == "application/json" || content_type.ends_with("+json");
    if is_json || content_type.starts_with("text/") {
        let text = String::from_utf8(bytes.to_vec()).map_err(|_| error(ApiError::NotUtf8))?;
        if is_json {
            serde_json::from_str::<&RawValue>(&text)
                .map_err(|e| error(ApiError::NotJson(e.to_string())))?;
            return Ok(Body::Json(Utf8Bytes::from(text)));
        }
        return Ok(Body::Text(Utf8Bytes::from(text)));
    }
    Ok(Body::Binary(bytes))
}

fn channels(hub: &Hub, grant: &Grant<'_>) -> Response<Full<Bytes>> {
    let mut out = String::from(r#"{"channels":["#);
    let visible = hub
        .channels()
        .into_iter()
        .filter(|c| grant.channel(&c.name));
    for (i, c) in visible.enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(r#"{"name":"#);
        push_json_string(&mut out, &c.name);
        out.push_str(&format!(
            r#","subscribers":{},"last_seq":{},"epoch":"{}"}}"#,
            c.subscribers, c.last.seq, c.last.epoch
        ));
    }
    out.push_str("]}");
    ok(out)
}

fn json(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}

/// A 200 with a JSON body.
fn ok(body: String) -> Response<Full<Bytes>> {
    json(StatusCode::OK, body)
}

/// `{"error": code, "message": text}` with the error's status.
fn error(e: ApiError) -> Response<Full<Bytes>> {
    let mut out = String::from(r#"{"error":"#);
    push_json_string(&mut out, e.label());
    out.push_str(r#","message":"#);
    push_json_string(&mut out, &e.message());
    out.push('}');
    json(e.status(), out)
}

fn not_allowed(allow: &'static str) -> Response<Full<Bytes>> {
    let mut r = error(ApiError::Method(allow));
    r.headers_mut()
        .insert(header::ALLOW, header::HeaderValue::from_static(allow));
    r
}
