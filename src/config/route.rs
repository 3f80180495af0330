//! `[[routes]]`: which requests go where. The keys every route has, then
//! the keys of its kind; a key of another kind is an unknown key.

use serde::Serialize;

use super::auth::Access;
use super::files::StaticRoute;
use super::hub::{HubRoute, NamePolicy};
use super::reader::Section;
use super::subprotocol::{HUB_JSON_SUBPROTOCOL, HUB_RAW_SUBPROTOCOL, Subprotocols};
use super::upstream::UpstreamConfig;
use super::value;
use crate::names::ServerName;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Route {
    /// Metric label and log field; defaults to the path.
    pub name: String,
    /// `example.com` or `*.example.com`; `None` matches any host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<ServerName>,
    /// Path prefix, starting with `/`.
    pub path: String,
    #[serde(flatten)]
    pub kind: RouteKind,
    /// Echo and hub routes: the subprotocols answered (`None` elsewhere).
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub subprotocols: Option<Subprotocols>,
    /// Origins and tokens let in (`config/auth.rs`).
    /// Static routes have none (`Access::default()`, not printed).
    #[serde(flatten, skip_serializing_if = "Access::is_none")]
    pub access: Access,
    /// permessage-deflate with the clients that offer it; `None` on kinds
    /// that send no WebSocket messages (static).
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub compression: Option<Compression>,
}

impl Route {
    /// How messages to clients are compressed, where the route has it on.
    pub fn deflate(&self) -> Option<Deflate> {
        match self.compression {
            Some(Compression::On(deflate)) => Some(deflate),
            Some(Compression::Off) | None => None,
        }
    }
}

/// `compression = "on" | "off"` and, when on, its two settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Off,
    On(Deflate),
}

/// Printed as the keys it is read from.
impl Serialize for Compression {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        match self {
            Compression::On(deflate) => deflate.serialize(s),
            Compression::Off => {
                let mut map = s.serialize_map(Some(1))?;
                map.serialize_entry("compression", "off")?;
                map.end()
            }
        }
    }
}

pub const DEFAULT_COMPRESSION_MIN_SIZE: usize = 256;
pub const DEFAULT_COMPRESSION_LEVEL: u32 = 1;

/// `compression = "on"`: how messages to the client are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deflate {
    /// Messages shorter than this go uncompressed.
    pub min_size: usize,
    /// zlib's level, 1 (fastest) to 9 (smallest).
    pub level: u32,
    /// Connections may keep compression context between messages (as
    /// many as `[limits] compression_contexts` at once).
    pub context_takeover: bool,
}

/// Printed as the keys it is read from.
impl Serialize for Deflate {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(4))?;
        map.serialize_entry("compression", "on")?;
        map.serialize_entry("compression_min_size", &self.min_size)?;
        map.serialize_entry("compression_level", &self.level)?;
        map.serialize_entry("compression_context_takeover", &self.context_takeover)?;
        map.end()
    }
}

impl Compression {
    /// `compression = "on" | "off"` (on by default), `compression_min_size`,
    /// `compression_level`, `compression_context_takeover`.
    fn read(s: &mut Section<'_>) -> Compression {
        let on = match s.string("compression").as_deref() {
            Some("off") => false,
            None | Some("on") => true,
            Some(other) => {
                s.issue(
                    "compression",
                    format!("must be \"off\" or \"on\", not {other:?}"),
                );
                false
            }
        };
        let min_size = s.get(
            "compression_min_size",
            DEFAULT_COMPRESSION_MIN_SIZE,
            value::size,
        );
        let level = s.get(
            "compression_level",
            DEFAULT_COMPRESSION_LEVEL,
            value::positive_u32,
        );
        if !(1..=9).contains(&level) {
            s.issue("compression_level", "must be 1 to 9");
        }
        let context_takeover = s.get("compression_context_takeover", false, value::boolean);
        match on {
            true => Compression::On(Deflate {
                min_size,
                level,
                context_takeover,
            }),
            false => Compression::Off,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum RouteKind {
    /// Every text and binary message comes back as it is.
    Echo,
    /// Each session is bridged to a member of an upstream pool.
    Upstream(Box<UpstreamConfig>),
    /// wsgate itself serves pub/sub: channels, direct messages, presence.
    Hub(Box<HubRoute>),
    /// Files over HTTPS (not a WebSocket route): the chat page, or a directory.
    Static(Box<StaticRoute>),
}

impl RouteKind {
    const NAMES: [&'static str; 4] = ["echo", "upstream", "hub", "static"];

    pub fn as_str(&self) -> &'static str {
        match self {
            RouteKind::Echo => "echo",
            RouteKind::Upstream(_) => "upstream",
            RouteKind::Hub(_) => "hub",
            RouteKind::Static(_) => "static",
        }
    }
}

/// Every `[[routes]]` entry; names and host + path pairs must be unique.
pub(super) fn read_all(s: &mut Section<'_>) -> Vec<Route> {
    if s.count("routes") == 0 {
        s.issue("routes", "at least one [[routes]] entry is required");
    }
    let mut routes: Vec<Route> = Vec::new();
    s.each_table("routes", |mut r| {
        let Some(route) = Route::read(&mut r) else {
            return;
        };
        if let Some(j) = routes.iter().position(|o| o.name == route.name) {
            let problem = format!(
                "{:?} is already used by routes[{j}] (names label metrics)",
                route.name
            );
            r.issue("name", problem);
        }
        if let Some(j) = routes
            .iter()
            .position(|o| o.host == route.host && o.path == route.path)
        {
            r.issue("path", format!("same host and path as routes[{j}]"));
        }
        if let Some(j) = named_otherwise_in_namespace(&routes, &route) {
            let problem = format!(
                "shared with routes[{j}], which names its clients another way (routes of one \
                 namespace need the same jwt, client_cert, names and sender_field)"
            );
            r.issue("namespace", problem);
        }
        routes.push(route);
    });
    routes
}

/// The first earlier hub route in `route`'s namespace whose clients are
/// named or stamped another way. Names and direct messages are shared
/// across a namespace, so one open route in it would let anyone take a name
/// a token gives, and one route without `sender_field` would let anyone
/// write another's `src`.
fn named_otherwise_in_namespace(routes: &[Route], route: &Route) -> Option<usize> {
    fn naming(r: &Route) -> Option<(&String, bool, bool, NamePolicy, Option<&String>)> {
        match &r.kind {
            RouteKind::Hub(hub) => Some((
                &hub.namespace,
                r.access.jwt.is_some(),
                r.access.client_cert,
                hub.names,
                hub.sender_field.as_ref(),
            )),
            _ => None,
        }
    }
    let mine = naming(route)?;
    routes
        .iter()
        .position(|other| naming(other).is_some_and(|theirs| theirs.0 == mine.0 && theirs != mine))
}

impl Route {
    fn read(s: &mut Section<'_>) -> Option<Route> {
        let name = s.string("name");
        let path = s.required("path");
        if let Some(p) = &path {
            if !p.starts_with('/') {
                s.issue("path", format!("must start with '/' (got {p:?})"));
            } else if p.contains(['?', '#'])
                || p.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                s.issue("path", format!("must be a plain path prefix (got {p:?})"));
            }
        }
        let host = s.opt("host", ServerName::parse);
        let kind = match s.required("kind").as_deref() {
            Some("echo") => Some(RouteKind::Echo),
            Some("upstream") => Some(RouteKind::Upstream(Box::new(UpstreamConfig::read(s)))),
            Some("hub") => {
                let channel = name.clone().or_else(|| path.clone()).unwrap_or_default();
                Some(RouteKind::Hub(Box::new(HubRoute::read(s, &channel))))
            }
            Some("static") => Some(RouteKind::Static(Box::new(StaticRoute::read(s)))),
            Some(other) => {
                let problem = format!(
                    "unknown kind {other:?}; expected one of {:?}",
                    RouteKind::NAMES
                );
                s.issue("kind", problem);
                None
            }
            None => None,
        };
        let Some(kind) = kind else {
            // Without a kind, which other keys belong cannot be told.
            s.skip_rest();
            return None;
        };
        s.hint_unknown(format!(" for kind = \"{}\"", kind.as_str()));
        // A static route serves files before any upgrade: access keys there
        // would protect nothing, so they are unknown keys.
        let access = match kind {
            RouteKind::Static(_) => Access::default(),
            _ => super::auth::read(s),
        };
        let subprotocols = match &kind {
            RouteKind::Echo => Some(Subprotocols::read(s, &[])),
            RouteKind::Hub(hub) => {
                let own = match hub.protocol {
                    super::HubProtocol::Json => HUB_JSON_SUBPROTOCOL,
                    super::HubProtocol::Raw => HUB_RAW_SUBPROTOCOL,
                };
                Some(Subprotocols::read(s, &[own]))
            }
            RouteKind::Upstream(_) | RouteKind::Static(_) => None,
        };
        let compression = match &kind {
            RouteKind::Echo | RouteKind::Hub(_) | RouteKind::Upstream(_) => {
                Some(Compression::read(s))
            }
            RouteKind::Static(_) => None,
        };
        let path = path?;
        let name = name.unwrap_or_else(|| path.clone());
        if name.is_empty() || name.len() > 64 || !name.chars().all(|c| c.is_ascii_graphic()) {
            s.issue("name", "must be 1-64 printable ASCII characters");
        }
        Some(Route {
            name,
            host,
            path,
            kind,
            subprotocols,
            access,
            compression,
        })
    }
}
