//! A hub client's admission, in the handshake before the 101: its name
//! (from the token or certificate, else `?name=`), its room on a raw
//! route, its channel rights, and its registration, so a taken name or a
//! forbidden room is an HTTP refusal, not a closed session.

use std::sync::Arc;

use http::Request;

use super::access::ChannelAccess;
use super::conn::Compressing;
use super::session::HubClient;
use super::{Hub, HubError};
use crate::RouteState;
use crate::auth::{self, Identity, Refresh};
use crate::close::{AuthFailure, Rejection};
use crate::config::{HubProtocol, HubRoute};
use crate::deflate::Agreed;
use crate::names::{check_channel_name, check_client_name};

/// Name and register a hub client (and find its room on a raw route)
/// before the 101, so a taken name or a bad room is an HTTP refusal.
/// `state`: the route's path and metrics.
pub(crate) fn admit<B>(
    req: &Request<B>,
    state: &RouteState,
    route: &Arc<HubRoute>,
    hub: &Hub,
    identity: Option<Identity>,
    refresh: Option<Refresh>,
    agreed: Option<&Agreed>,
) -> Result<HubClient, Rejection> {
    let asked = query_param(req.uri().query().unwrap_or(""), "name");
    let (name, claims) = auth::hub_name(identity, asked)?;
    if let Some(name) = &name
        && check_client_name(name).is_err()
    {
        return Err(Rejection::BadRequest(
            "name must be 1-64 of A-Z a-z 0-9 _ - . @",
        ));
    }
    let room = match route.protocol {
        HubProtocol::Json => None,
        HubProtocol::Raw if route.channel_from_path => {
            let room = req
                .uri()
                .path()
                .strip_prefix(state.path.as_str())
                .unwrap_or("")
                .trim_matches('/');
            if check_channel_name(room).is_err() {
                return Err(Rejection::BadRequest(
                    "the path must name a room: 1-128 of A-Z a-z 0-9 _ - . : /",
                ));
            }
            Some(room.to_owned())
        }
        HubProtocol::Raw => Some(route.channel.clone()),
    };
    let access = ChannelAccess::new(claims.as_ref(), route);
    // A raw room member both hears and speaks: it needs both permissions.
    if let Some(room) = &room
        && !(access.may_subscribe(room) && access.may_publish(room))
    {
        return Err(Rejection::Auth(AuthFailure::Channel));
    }
    // A client this server keeps context for is compressed to by its
    // session (`hub::member`), not here, once for all.
    let compress = agreed
        .and_then(Agreed::shared_compress)
        .map(|config| Compressing {
            config,
            counted: state.metrics.compression_out.clone(),
        });
    let registration = hub
        .register(name.as_deref(), route, access, refresh, compress)
        .map_err(|_| Rejection::NameTaken)?;
    // Join the room now, so a message sent right after this client's 101
    // reaches it.
    if let Some(room) = &room {
        match hub.subscribe(&registration.conn, room, None, usize::MAX, |_| None) {
            Ok(_) => {}
            Err(HubError::Forbidden) => return Err(Rejection::Auth(AuthFailure::Channel)),
            Err(_) => return Err(Rejection::HubFull),
        }
    }
    Ok(HubClient {
        registration,
        route: route.clone(),
        room,
        deflate: agreed.cloned().map(Box::new),
    })
}

/// The first value of `key` in a query string, percent-decoded.
fn query_param(query: &str, key: &str) -> Option<String> {
    let raw = query.split('&').find_map(|pair| {
        pair.strip_prefix(key)
            .and_then(|rest| rest.strip_prefix('='))
    })?;
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}
