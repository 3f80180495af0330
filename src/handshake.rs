//! The HTTP side of the upgrade: a strict RFC 6455 check of the request,
//! route resolution, then `101 Switching Protocols` (and the session task) or
//! a short error response whose status comes from `close::Rejection`.
//!
//! The session task lives here too: it completes the upgrade, hands the
//! client to the route's loop (`echo`, `relay` or the hub's session), then
//! closes both sides. The loops know nothing of how a session was set up.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::admission::Ticket;
use base64::Engine;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use tokio::io::AsyncWriteExt;
use tokio::time::{Instant, timeout};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tracing::{Instrument, Span, debug, info};

use crate::auth::{self, Expiry};
use crate::close::Rejection;
use crate::config::Route;
use crate::deflate::{self, Agreed};
use crate::frame::ControlFrame;
use crate::http2::{ClientIo, StreamHandle, StreamHold};
use crate::hub::session::HubClient;
use crate::metrics::Protocol;
use crate::names::normalize_host;
use crate::relay::Compression;
use crate::route::RouteTable;
use crate::session::SessionCtx;
use crate::upstream::{DialError, Dialed};
use crate::{
    Body, RouteState, Shared, Target, echo, files, hub, metrics, relay, subprotocol, tunnel,
};

const SEC_WEBSOCKET_KEY: HeaderName = HeaderName::from_static("sec-websocket-key");
const SEC_WEBSOCKET_VERSION: HeaderName = HeaderName::from_static("sec-websocket-version");
const SEC_WEBSOCKET_ACCEPT: HeaderName = HeaderName::from_static("sec-websocket-accept");

/// Where a request came in.
#[derive(Debug, Clone)]
pub(crate) struct Front {
    /// The client's address (for a tunnelled request, the tunnel's client).
    pub(crate) peer: SocketAddr,
    /// Inside TLS (else plaintext, where only CONNECT is served).
    pub(crate) tls: bool,
    /// CONNECT is served here.
    pub(crate) connect: bool,
    /// The name in the client's verified TLS certificate, if it sent one,
    /// and the one host it counts for: the name of the config entry that
    /// verified it (`tls::Chosen::cert_host`; which CA verified it depends
    /// on that entry), `None` for none.
    pub(crate) client_cert: Option<(Arc<str>, Option<Arc<str>>)>,
    /// The SNI name the client asked for (lower case), if it sent one.
    pub(crate) sni: Option<Arc<str>>,
}

impl Front {
    /// The certificate's name, for a request to `req`'s host: only where
    /// that host is the SNI name the certificate was verified under, so a
    /// certificate from one SNI entry's CA never opens a route of another
    /// host, whatever the `Host` header says.
    fn client_cert_for<B>(&self, req: &Request<B>) -> Option<Arc<str>> {
        let (name, sni) = self.client_cert.as_ref()?;
        let host = req.headers().get(header::HOST)?.to_str().ok()?;
        let sni = sni.as_deref()?;
        (normalize_host(host) == sni).then(|| name.clone())
    }
}

/// Serve one request, over HTTP/1.1 or HTTP/2: an HTTP/1.1 CONNECT goes to
/// `tunnel`; anything else is upgraded (for an upstream
/// route, only once the upstream has answered 101) or refused. WebSocket
/// attempts are counted by protocol and result.
/// `stream`: over HTTP/2, the request's stream, counted open from the moment
/// hyper took it (and then by its session).
pub(crate) async fn handle(
    mut req: Request<Incoming>,
    shared: Arc<Shared>,
    permit: Arc<Ticket>,
    front: Front,
    stream: Option<StreamHandle>,
) -> Response<Body> {
    let protocol = if req.version() == Version::HTTP_2 {
        Protocol::Http2
    } else {
        Protocol::Http1
    };
    let websocket = asks_for_websocket(&req);
    // Over HTTP/2 a WebSocket is admitted as a connection of its own, so the
    // connection limits and rates bound sessions as they do over HTTP/1.1.
    let http2 = stream.map(|stream| {
        Box::new(StreamHold {
            stream,
            ticket: None,
        })
    });
    let upgrade = Upgrade { protocol, http2 };
    let mut response = match http2_as_http1(&mut req, &front, protocol) {
        Ok(()) => respond(req, shared, permit, front, upgrade).await,
        Err(rejection) => refuse(rejection, req.uri().path()),
    };
    if websocket {
        let accepted = match protocol {
            Protocol::Http1 => response.status() == StatusCode::SWITCHING_PROTOCOLS,
            Protocol::Http2 => response.status() == StatusCode::OK,
        };
        metrics::websocket_handshake(protocol, accepted);
    }
    if protocol == Protocol::Http2 {
        // HTTP/2 has no connection-level headers (RFC 9113 section 8.2.2).
        let headers = response.headers_mut();
        headers.remove(header::CONNECTION);
        headers.remove(header::UPGRADE);
    }
    response
}

/// How a session's client connection came: its protocol, and over HTTP/2
/// its stream (boxed: an HTTP/1.1 session pays a pointer for it).
struct Upgrade {
    protocol: Protocol,
    http2: Option<Box<StreamHold>>,
}

/// A WebSocket attempt, valid or not: `Upgrade: websocket` over HTTP/1.1,
/// extended CONNECT with `:protocol websocket` over HTTP/2.
pub(crate) fn asks_for_websocket<B>(req: &Request<B>) -> bool {
    match req.version() {
        Version::HTTP_2 => {
            extended_connect(req).is_some_and(|p| p.eq_ignore_ascii_case("websocket"))
        }
        _ => has_token(req.headers(), &header::UPGRADE, "websocket"),
    }
}

/// The `:protocol` of an HTTP/2 extended CONNECT (RFC 8441), if it is one.
fn extended_connect<B>(req: &Request<B>) -> Option<&str> {
    let protocol = req.extensions().get::<hyper::ext::Protocol>()?;
    (req.method() == Method::CONNECT).then(|| protocol.as_str())
}

/// An HTTP/2 request in the shape the rest reads (RFC 9113 section 8.3.1):
/// `:authority` as its `Host` (a `Host` header naming another host makes it
/// malformed), and the cookie crumbs a browser sends as separate fields
/// joined into one `Cookie`, as HTTP/1.1 has it (section 8.2.3), for the
/// route's rules and the member's request. A request for a host other than
/// the connection's SNI name (a browser reusing a connection for another
/// name its certificate covers) gets 421, so it asks again on a connection
/// of its own, where that name's certificate and client-certificate rules
/// apply.
pub(crate) fn http2_as_http1<B>(
    req: &mut Request<B>,
    front: &Front,
    protocol: Protocol,
) -> Result<(), Rejection> {
    if protocol != Protocol::Http2 {
        return Ok(());
    }
    let cookies: Vec<&[u8]> = (req.headers().get_all(header::COOKIE).iter())
        .map(HeaderValue::as_bytes)
        .collect();
    if cookies.len() > 1 {
        let joined = HeaderValue::from_bytes(&cookies.join(&b"; "[..]))
            .map_err(|_| Rejection::BadRequest("unusable cookie"))?;
        req.headers_mut().insert(header::COOKIE, joined);
    }
    let Some(authority) = req.uri().authority().map(|a| a.as_str().to_owned()) else {
        return Ok(());
    };
    if let Some(sni) = &front.sni
        && normalize_host(&authority) != **sni
    {
        return Err(Rejection::Misdirected);
    }
    match req.headers().get(header::HOST) {
        Some(host) if host.as_bytes().eq_ignore_ascii_case(authority.as_bytes()) => Ok(()),
        Some(_) => Err(Rejection::BadRequest(
            ":authority and Host name different hosts",
        )),
        None => {
            let value = HeaderValue::from_str(&authority)
                .map_err(|_| Rejection::BadRequest("unusable :authority"))?;
            req.headers_mut().insert(header::HOST, value);
            Ok(())
        }
    }
}

async fn respond(
    mut req: Request<Incoming>,
    shared: Arc<Shared>,
    permit: Arc<Ticket>,
    front: Front,
    mut upgrade: Upgrade,
) -> Response<Body> {
    let peer = front.peer;
    if req.method() == Method::CONNECT && extended_connect(&req).is_none() {
        // Tunnels are an HTTP/1.1 proxy client's; over HTTP/2 only
        // extended CONNECT is served.
        if front.connect && upgrade.protocol == Protocol::Http1 {
            return tunnel::handle(req, shared, permit, peer).await;
        }
        return refuse(Rejection::ConnectDisabled, "CONNECT");
    }
    if !front.tls {
        return refuse(Rejection::PlainHttp, req.uri().path());
    }
    // The routes current now; a reload later does not touch this session.
    let live = shared.live.load_full();
    if let Some(site) = files::site_for(&req, &live.routes) {
        return files::serve(&req, &site).await;
    }
    let accepted = check(&req, &live.routes).and_then(|ok| {
        if shared.shutdown.token.is_cancelled() {
            Err(Rejection::Draining)
        } else {
            Ok(ok)
        }
    });
    let (route, state, accept_key) = match accepted {
        Ok(ok) => ok,
        Err(rejection) => return refuse(rejection, req.uri().path()),
    };
    // Over HTTP/2 a WebSocket is admitted as a connection of its own, so the
    // connection limits bound sessions as they do over HTTP/1.1.
    if let Some(http2) = upgrade.http2.as_mut() {
        match shared.admission.admit_stream(peer.ip()) {
            Ok(ticket) => http2.ticket = Some(ticket),
            Err(shed) => return refuse(Rejection::Shed(shed), req.uri().path()),
        }
    }
    let span = Span::current();
    span.record("route", route.name.as_str());
    let client_cert = front.client_cert_for(&req);
    let identity = match auth::check(
        &mut req,
        &route.name,
        state.auth.as_deref(),
        client_cert.as_deref(),
    ) {
        Ok(identity) => identity,
        Err(rejection) => return refuse(rejection, req.uri().path()),
    };
    let state = state.clone();
    let served = route.subprotocols.as_ref();
    let chosen = match served.map_or(Ok(None), |s| subprotocol::choose(req.headers(), s)) {
        Ok(chosen) => chosen,
        Err(refused) => {
            let mut response = refuse(Rejection::Subprotocol, req.uri().path());
            *response.body_mut() = subprotocol::refusal_body(&refused);
            return response;
        }
    };
    let expiry = auth::expiry(
        identity.as_ref(),
        state.auth.as_deref(),
        &shared.shutdown.token,
    );
    let expiry = expiry.map(Arc::new);
    // permessage-deflate, where the route has it and the client offers it.
    let agreed = route.deflate().and_then(|config| {
        let offers = req.headers().get_all(header::SEC_WEBSOCKET_EXTENSIONS);
        let offers = offers.iter().filter_map(|v| v.to_str().ok());
        let max = shared.limits.compression_contexts;
        deflate::negotiate(offers, config, &shared.contexts, max)
    });
    let extensions = agreed
        .as_ref()
        .and_then(|a| HeaderValue::from_str(&a.response).ok());
    let (peer_side, protocol) = match &state.target {
        Target::Echo => (Peer::Echo(agreed.map(Box::new)), chosen),
        Target::Upstream(pool) => {
            match pool
                .dial(req.uri(), req.headers(), peer.ip(), agreed.as_ref())
                .await
            {
                Ok(dialed) => {
                    let protocol = dialed.protocol.clone();
                    let compression = Compression {
                        client: agreed,
                        upstream: dialed.deflate,
                    };
                    (Peer::Upstream(dialed, Box::new(compression)), protocol)
                }
                Err(DialError::Rejected(rejection)) => return refuse(rejection, req.uri().path()),
                Err(DialError::Status(response)) => {
                    metrics::handshake_failed(Rejection::UpstreamStatus(response.status()));
                    return upstream_status(response);
                }
            }
        }
        Target::Static(_) => return refuse(Rejection::NoRoute, req.uri().path()),
        Target::Hub(hub_route) => {
            let refresh = auth::refresher(state.auth.as_ref(), expiry.as_ref(), identity.as_ref());
            let admitted = hub::admit::admit(
                &req,
                &state,
                hub_route,
                &shared.hub,
                identity,
                refresh,
                agreed.as_ref(),
            );
            match admitted {
                Ok(client) => (Peer::Hub(client), chosen),
                Err(rejection) => return refuse(rejection, req.uri().path()),
            }
        }
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let task = session(
        on_upgrade,
        upgrade,
        state,
        permit,
        shared.clone(),
        peer_side,
        expiry,
    );
    shared.shutdown.tracker.spawn(task.instrument(span));
    let mut response = upgraded(accept_key.as_deref(), protocol);
    if let Some(value) = extensions {
        response
            .headers_mut()
            .insert(header::SEC_WEBSOCKET_EXTENSIONS, value);
    }
    response
}

/// What a session's client is connected to, set up before the 101.
enum Peer {
    /// With permessage-deflate, when agreed (boxed, as below: every
    /// session's task holds a `Peer` until it ends).
    Echo(Option<Box<Agreed>>),
    /// With permessage-deflate on either side, as agreed.
    Upstream(Dialed, Box<Compression>),
    Hub(HubClient),
}

/// The task that owns an upgraded session: complete the upgrade, run the
/// route's loop, close both sides, count and log how it ended. `permit` is
/// the connection's admission slot, released when this returns.
async fn session(
    on_upgrade: OnUpgrade,
    mut upgrade: Upgrade,
    route: Arc<RouteState>,
    permit: Arc<Ticket>,
    shared: Arc<Shared>,
    peer: Peer,
    expiry: Option<Arc<Expiry>>,
) {
    let upgraded = match crate::conn::handed_off(on_upgrade, &shared).await {
        Ok(upgraded) => upgraded,
        Err(e) => {
            debug!(error = %e, "upgrade did not complete");
            if let Peer::Upstream(mut dialed, _) = peer {
                // Tell the member the client went away (a masked 1001).
                let bye = ControlFrame::close(Some(1001), "client gone", Some(rand::random()));
                let _ = timeout(shared.limits.close_timeout, async {
                    let _ = dialed.io.write_all(bye.as_bytes()).await;
                    let _ = dialed.io.shutdown().await;
                })
                .await;
            }
            return;
        }
    };
    // Boxed: the steady-state task keeps only pointers in its future.
    let stream = (upgrade.http2.take()).map(|hold| (hold, shared.limits.send_timeout));
    let client = Box::new(ClientIo::new(upgraded, stream));
    let limits = &shared.limits;
    let ctx = SessionCtx {
        metrics: &route.metrics,
        limits,
        cancel: expiry.as_ref().map_or(&shared.shutdown.token, |e| &e.token),
        expiry: expiry.as_deref(),
    };
    let started = Instant::now();
    ctx.metrics.opened.increment(1);
    ctx.metrics.active.increment(1.0);
    metrics::sessions_open(upgrade.protocol).increment(1.0);

    // Each kind's loop is boxed at its own size: the task's future holds a
    // pointer, so a connection pays only for its own kind's state.
    let end = match peer {
        Peer::Echo(agreed) => Box::pin(echo::serve(client, &ctx, agreed.map(|a| *a))).await,
        Peer::Hub(hub_client) => {
            Box::pin(hub::session::serve(client, &ctx, &shared.hub, hub_client)).await
        }
        Peer::Upstream(dialed, compression) => {
            let Dialed {
                mut io,
                early,
                ping_interval,
                ..
            } = dialed;
            let mut client = client;
            let compression = *compression;
            let run = relay::run(
                &mut client,
                &mut io,
                early,
                compression,
                ping_interval,
                &ctx,
            );
            Box::pin(run).await
        }
    };

    let elapsed = started.elapsed();
    metrics::sessions_open(upgrade.protocol).decrement(1.0);
    ctx.metrics.session_ended(&end, elapsed.as_secs_f64());
    info!(end = end.label(), code = ?end.client_code(), duration_ms = elapsed.as_millis() as u64, "session ended");
    drop((permit, upgrade));
}

pub(crate) fn refuse(rejection: Rejection, path: &str) -> Response<Body> {
    debug!(reason = rejection.label(), path, "upgrade refused");
    metrics::handshake_failed(rejection);
    rejection_response(rejection)
}

/// The upstream's own refusal (403, 401, 500, ...) as the client's answer:
/// its status, content type, and the body bytes that came with its head.
fn upstream_status(upstream: Response<Option<Vec<u8>>>) -> Response<Body> {
    const MAX_BODY: usize = 64 << 10;
    let (parts, body) = upstream.into_parts();
    let mut body = body.unwrap_or_default();
    body.truncate(MAX_BODY);
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = parts.status;
    if let Some(content_type) = parts.headers.get(header::CONTENT_TYPE) {
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, content_type.clone());
    }
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// The pure part: is this a valid WebSocket upgrade for a known route, over
/// HTTP/1.1 (RFC 6455 section 4.2.1) or HTTP/2 (RFC 8441 section 5)?
/// Returns the route and, over HTTP/1.1, the `Sec-WebSocket-Accept` value
/// (HTTP/2 has no key and no accept).
pub(crate) fn check<'t, B, T>(
    req: &Request<B>,
    routes: &'t RouteTable<T>,
) -> Result<(&'t Route, &'t Arc<T>, Option<String>), Rejection> {
    let headers = req.headers();
    let protocol = if req.version() == Version::HTTP_2 {
        Protocol::Http2
    } else {
        Protocol::Http1
    };
    let upgrade = asks_for_websocket(req);
    let host = single(headers, &header::HOST);
    let host = match host {
        Ok(host) => host.and_then(|h| h.to_str().ok()),
        Err(()) => return Err(Rejection::BadRequest("more than one Host header")),
    };
    let (route, state) = routes
        .resolve(host, req.uri().path())
        .ok_or(Rejection::NoRoute)?;
    if !upgrade {
        return Err(match *req.method() {
            // Over HTTP/2, a CONNECT for another `:protocol`.
            Method::GET | Method::HEAD | Method::CONNECT => Rejection::NotWebSocket,
            _ => Rejection::Method,
        });
    }
    match protocol {
        Protocol::Http1 if req.method() != Method::GET => return Err(Rejection::Method),
        Protocol::Http1 if req.version() != Version::HTTP_11 => {
            return Err(Rejection::BadRequest("a WebSocket upgrade needs HTTP/1.1"));
        }
        Protocol::Http1 if !has_token(headers, &header::CONNECTION, "upgrade") => {
            return Err(Rejection::BadRequest(
                "Connection header must include \"upgrade\"",
            ));
        }
        Protocol::Http2 if req.uri().scheme().is_none() => {
            return Err(Rejection::BadRequest(
                "an extended CONNECT needs :scheme, :path and :authority",
            ));
        }
        Protocol::Http1 | Protocol::Http2 => {}
    }
    if host.is_none() {
        return Err(Rejection::BadRequest("missing Host header"));
    }
    match single(headers, &SEC_WEBSOCKET_VERSION) {
        Ok(Some(v)) if v.as_bytes() == b"13" => {}
        _ => return Err(Rejection::Version),
    }
    let accept = match protocol {
        Protocol::Http2 => None,
        Protocol::Http1 => match single(headers, &SEC_WEBSOCKET_KEY) {
            Ok(Some(key)) if is_valid_key(key.as_bytes()) => {
                Some(derive_accept_key(key.as_bytes()))
            }
            _ => {
                return Err(Rejection::BadRequest(
                    "Sec-WebSocket-Key must be one base64 value of 16 bytes",
                ));
            }
        },
    };
    if crate::headers::has_body(headers) {
        return Err(Rejection::BadRequest(
            "an upgrade request must not have a body",
        ));
    }
    Ok((route, state, accept))
}

/// Does any comma-separated value of `name` contain `token` (ASCII case-insensitive)?
fn has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|value| {
        value
            .as_bytes()
            .split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

/// The header's value if it appears at most once; `Err` if repeated.
fn single<'h>(headers: &'h HeaderMap, name: &HeaderName) -> Result<Option<&'h HeaderValue>, ()> {
    let mut values = headers.get_all(name).iter();
    let first = values.next();
    if values.next().is_some() {
        return Err(());
    }
    Ok(first)
}

fn is_valid_key(key: &[u8]) -> bool {
    key.len() == 24
        && base64::engine::general_purpose::STANDARD
            .decode(key)
            .is_ok_and(|raw| raw.len() == 16)
}

/// The answer to an accepted upgrade: `101 Switching Protocols` with the
/// accept value over HTTP/1.1, `200` over HTTP/2 (`accept` is `None`).
fn upgraded(accept: Option<&str>, protocol: Option<HeaderValue>) -> Response<Body> {
    let mut response = Response::new(Body::default());
    let headers = response.headers_mut();
    if let Some(accept) = accept {
        headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        if let Ok(value) = HeaderValue::from_str(accept) {
            headers.insert(SEC_WEBSOCKET_ACCEPT, value);
        }
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    }
    if let Some(protocol) = protocol {
        response
            .headers_mut()
            .insert(header::SEC_WEBSOCKET_PROTOCOL, protocol);
    }
    response
}

pub(crate) fn rejection_response(rejection: Rejection) -> Response<Body> {
    let body = format!("{} {}\n", rejection.status().as_u16(), rejection.message());
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = rejection.status();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    match rejection {
        Rejection::Version | Rejection::NotWebSocket => {
            headers.insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
            headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        }
        Rejection::Method => {
            headers.insert(header::ALLOW, HeaderValue::from_static("GET"));
        }
        Rejection::NoRoute
        | Rejection::BadRequest(_)
        | Rejection::Draining
        | Rejection::UpstreamsDown
        | Rejection::LocalResources
        | Rejection::UpstreamUnreachable
        | Rejection::UpstreamTimeout
        | Rejection::UpstreamBadHandshake
        | Rejection::UpstreamStatus(_)
        | Rejection::NameTaken
        | Rejection::HubFull
        | Rejection::Subprotocol
        | Rejection::Shed(_)
        | Rejection::Misdirected
        | Rejection::Busy
        | Rejection::PlainHttp => {}
        Rejection::Auth(failure) => {
            if failure.status() == StatusCode::UNAUTHORIZED {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
        }
        Rejection::ConnectDisabled => {
            headers.insert(header::ALLOW, HeaderValue::from_static("GET"));
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RouteKind;

    fn routes() -> RouteTable<()> {
        let echo = Route {
            name: "echo".into(),
            host: None,
            path: "/echo".into(),
            kind: RouteKind::Echo,
            subprotocols: None,
            access: Default::default(),
            compression: None,
        };
        RouteTable::new(&[echo], |_| ())
    }

    fn upgrade(path: &str) -> http::request::Builder {
        Request::get(path)
            .header("host", "localhost:8443")
            .header("connection", "keep-alive, Upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
    }

    fn status(req: Request<()>) -> Result<Option<String>, Rejection> {
        check(&req, &routes()).map(|(_, _, key)| key)
    }

    #[test]
    fn rfc_example_is_accepted() {
        // RFC 6455 section 1.3: this key gives this accept value.
        assert_eq!(
            status(upgrade("/echo?x=1").body(()).unwrap()),
            Ok(Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=".into()))
        );
    }

    #[test]
    fn each_defect_has_its_rejection() {
        let bad = |b: http::request::Builder| status(b.body(()).unwrap()).unwrap_err();
        assert_eq!(bad(upgrade("/nowhere")), Rejection::NoRoute);
        assert_eq!(
            bad(Request::get("/echo").header("host", "h")),
            Rejection::NotWebSocket
        );
        assert_eq!(
            bad(Request::post("/echo").header("host", "h")),
            Rejection::Method
        );
        assert_eq!(bad(upgrade("/echo").method("POST")), Rejection::Method);
        assert_eq!(
            bad(upgrade("/echo").version(Version::HTTP_10)),
            Rejection::BadRequest("a WebSocket upgrade needs HTTP/1.1")
        );
        assert!(matches!(
            bad(upgrade("/echo").header("host", "second")),
            Rejection::BadRequest(_)
        ));
        let mut no_conn = upgrade("/echo").body(()).unwrap();
        no_conn.headers_mut().remove("connection");
        assert!(matches!(status(no_conn), Err(Rejection::BadRequest(_))));
        let mut v8 = upgrade("/echo").body(()).unwrap();
        v8.headers_mut()
            .insert("sec-websocket-version", HeaderValue::from_static("8"));
        assert_eq!(status(v8), Err(Rejection::Version));
        for key in [
            "",
            "short",
            "dGhlIHNhbXBsZSBub25jZQ",
            "dGhlIHNhbXBsZSBub25jZXg=",
            "!!!!!!!!!!!!!!!!!!!!!!==",
        ] {
            let mut r = upgrade("/echo").body(()).unwrap();
            r.headers_mut()
                .insert("sec-websocket-key", HeaderValue::from_static(key));
            assert!(
                matches!(status(r), Err(Rejection::BadRequest(_))),
                "key {key:?}"
            );
        }
        assert!(matches!(
            bad(upgrade("/echo").header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")),
            Rejection::BadRequest(_)
        ));
        assert!(matches!(
            bad(upgrade("/echo").header("content-length", "5")),
            Rejection::BadRequest(_)
        ));
        assert!(matches!(
            bad(upgrade("/echo").header("transfer-encoding", "chunked")),
            Rejection::BadRequest(_)
        ));
    }

    #[test]
    fn tokens_are_case_insensitive_lists() {
        let r = Request::get("/echo")
            .header("host", "h")
            .header("connection", "keep-alive")
            .header("connection", "UPGRADE")
            .header("upgrade", "WebSocket")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .body(())
            .unwrap();
        assert!(status(r).is_ok());
    }

    #[test]
    fn an_http2_request_for_another_host_than_the_sni_is_misdirected() {
        let front = |sni: Option<&str>| Front {
            peer: "127.0.0.1:1".parse().unwrap(),
            tls: true,
            connect: false,
            client_cert: None,
            sni: sni.map(|s| Arc::from(crate::names::normalize_sni(s))),
        };
        let to = |authority: &str| {
            Request::connect(format!("https://{authority}/echo"))
                .version(Version::HTTP_2)
                .body(())
                .unwrap()
        };
        let mapped = |authority: &str, sni: Option<&str>| {
            let mut req = to(authority);
            http2_as_http1(&mut req, &front(sni), Protocol::Http2)
                .map(|()| req.headers()[header::HOST].to_str().unwrap().to_owned())
        };
        for (authority, sni) in [
            ("localhost:8443", Some("localhost")),
            ("LocalHost:8443", Some("localhost")),
            ("localhost", Some("localhost.")),
            ("[::1]:8443", None),
            ("anything.test", None),
        ] {
            assert_eq!(
                mapped(authority, sni),
                Ok(authority.to_owned()),
                "{authority} {sni:?}"
            );
        }
        assert_eq!(
            mapped("other.test", Some("localhost")),
            Err(Rejection::Misdirected)
        );
        // HTTP/1.1 requests are left as they are.
        let mut h1 = Request::get("/echo")
            .header("host", "other.test")
            .body(())
            .unwrap();
        assert_eq!(
            http2_as_http1(&mut h1, &front(Some("localhost")), Protocol::Http1),
            Ok(())
        );
    }

    #[test]
    fn a_certificate_counts_only_for_the_name_it_was_verified_under() {
        let front = |sni: Option<&str>| Front {
            peer: "127.0.0.1:1".parse().unwrap(),
            tls: true,
            connect: false,
            client_cert: Some(("alice".into(), sni.map(Arc::from))),
            sni: None,
        };
        let to = |host: &str| Request::get("/").header("host", host).body(()).unwrap();
        let secure = front(Some("secure.test"));
        assert_eq!(
            secure.client_cert_for(&to("Secure.Test:443")).as_deref(),
            Some("alice")
        );
        assert_eq!(secure.client_cert_for(&to("other.test")), None);
        assert_eq!(front(None).client_cert_for(&to("secure.test")), None);
    }
}
