//! `[hub]` (shared by every hub route) and the keys of a `kind = "hub"`
//! route: how its clients speak and what bounds them.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::reader::Section;
use super::value::{self, show_duration, show_hidden};
use crate::names::check_channel_name;

pub const DEFAULT_HUB_HISTORY_SIZE: usize = 100;
pub const DEFAULT_HUB_HISTORY_TTL: Duration = Duration::from_secs(300);
pub const DEFAULT_HUB_MAX_CHANNELS: usize = 10_000;
pub const DEFAULT_HUB_MAX_CHANNELS_PER_CLIENT: usize = 64;
pub const DEFAULT_HUB_QUEUE_MESSAGES: usize = 1024;
pub const DEFAULT_HUB_QUEUE_BYTES: usize = 4 << 20;
pub const DEFAULT_HUB_PUBLISH_RATE: f64 = 100.0;
pub const DEFAULT_HUB_PUBLISH_BURST: u32 = 200;

/// Settings of the pub/sub hub shared by every hub route: channels are one
/// namespace across routes and the HTTP API.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HubConfig {
    /// Bearer tokens accepted by the HTTP API; empty: the API is off.
    #[serde(serialize_with = "show_hidden")]
    pub api_tokens: Vec<String>,
    /// Bearer tokens of the HTTP API limited to channel patterns.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub api_keys: Vec<ApiKey>,
    /// Messages a channel keeps for `since` resume.
    pub history_size: usize,
    /// How long a kept message stays resumable.
    #[serde(serialize_with = "show_duration")]
    pub history_ttl: Duration,
    /// Most channels at once (subscribed or holding history).
    pub max_channels: usize,
    /// `[hub.backplane]`: what carries the hub across nodes.
    pub backplane: BackplaneConfig,
}

pub const DEFAULT_BACKPLANE_PREFIX: &str = "wsgate";
pub const DEFAULT_BACKPLANE_NODE_TTL: Duration = Duration::from_secs(5);
pub const DEFAULT_BACKPLANE_COMMAND_TIMEOUT: Duration = Duration::from_secs(1);
pub const DEFAULT_BACKPLANE_QUEUE: usize = 10_000;
pub const DEFAULT_BACKPLANE_STREAM_TTL: Duration = Duration::from_secs(24 * 3600);

/// `[hub.backplane]`: the engine behind the hub.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum BackplaneConfig {
    /// One node: the hub's state lives in this process (the default).
    Memory,
    /// Many nodes sharing one Redis.
    Redis(RedisBackplane),
}

/// `kind = "redis"`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RedisBackplane {
    /// `redis://` or `rediss://` (TLS), with user, password and database
    /// (from `url`, or the environment variable `url_env` names).
    #[serde(serialize_with = "show_url")]
    pub url: String,
    /// `rediss://`: the CA (PEM) that signed the server's certificate,
    /// instead of the system's roots.
    pub tls_ca: Option<std::path::PathBuf>,
    /// Prefix of every key and pub/sub channel: nodes sharing one prefix on
    /// one Redis are one hub.
    pub prefix: String,
    /// A node that has not reported for this long is gone: its clients
    /// leave presence and direct messages stop going to it.
    #[serde(serialize_with = "show_duration")]
    pub node_ttl: Duration,
    /// Deadline of every Redis command and connection attempt.
    #[serde(serialize_with = "show_duration")]
    pub command_timeout: Duration,
    /// Bound on Redis work waiting to be sent; when full, a publish is
    /// refused (`busy`).
    pub queue: usize,
    /// How long a channel's epoch and sequence number outlive its last
    /// publish.
    #[serde(serialize_with = "show_duration")]
    pub stream_ttl: Duration,
}

/// A Redis URL with its password hidden.
fn show_url<S: serde::Serializer>(url: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hide_password(url))
}

/// `redis://user:secret@host` as `redis://user:(set)@host`.
pub fn hide_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (auth, host) = match rest.rsplit_once('@') {
        Some(parts) => parts,
        None => return url.to_owned(),
    };
    match auth.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:(set)@{host}"),
        None => format!("{scheme}://(set)@{host}"),
    }
}

impl BackplaneConfig {
    fn read(mut s: Section<'_>) -> Self {
        let kind = s.string("kind").unwrap_or_else(|| "memory".to_owned());
        match kind.as_str() {
            "memory" => {
                s.hint_unknown(" (kind = \"memory\" takes no other keys)".to_owned());
                BackplaneConfig::Memory
            }
            "redis" => {
                let url = match (s.string("url"), s.string("url_env")) {
                    (Some(url), None) => Some(url),
                    (None, Some(var)) => match std::env::var(&var) {
                        Ok(url) => Some(url),
                        Err(_) => {
                            s.issue("url_env", format!("environment variable {var} is not set"));
                            None
                        }
                    },
                    _ => {
                        s.issue(
                            "url",
                            "exactly one of url, url_env is required with kind = \"redis\"",
                        );
                        None
                    }
                };
                let url = url.and_then(|url| match check_redis_url(&url) {
                    Ok(()) => Some(url),
                    Err(problem) => {
                        s.issue("url", format!("{problem}: {}", hide_password(&url)));
                        None
                    }
                });
                let prefix = s
                    .string("prefix")
                    .unwrap_or_else(|| DEFAULT_BACKPLANE_PREFIX.to_owned());
                if prefix.is_empty()
                    || !prefix
                        .bytes()
                        .all(|b| b.is_ascii_graphic() && b != b'{' && b != b'}')
                {
                    s.issue("prefix", "must be printable ASCII without spaces or braces");
                }
                let node_ttl = s.get("node_ttl", DEFAULT_BACKPLANE_NODE_TTL, value::duration);
                if node_ttl < Duration::from_secs(1) {
                    s.issue("node_ttl", "must be at least 1s");
                }
                let command_timeout = s.get(
                    "command_timeout",
                    DEFAULT_BACKPLANE_COMMAND_TIMEOUT.min(node_ttl / 2),
                    value::duration,
                );
                if command_timeout < Duration::from_millis(10) || command_timeout * 2 > node_ttl {
                    // A heartbeat waits behind at most one command.
                    s.issue(
                        "command_timeout",
                        "must be at least 10ms and at most half of node_ttl",
                    );
                }
                let stream_ttl = s.get("stream_ttl", DEFAULT_BACKPLANE_STREAM_TTL, value::duration);
                if stream_ttl < Duration::from_secs(1) {
                    s.issue("stream_ttl", "must be at least 1s");
                }
                let tls_ca = s.string("tls_ca").map(std::path::PathBuf::from);
                if tls_ca.is_some() && url.as_ref().is_some_and(|u| !u.starts_with("rediss://")) {
                    s.issue("tls_ca", "applies to rediss:// URLs only");
                }
                BackplaneConfig::Redis(RedisBackplane {
                    url: url.unwrap_or_default(),
                    tls_ca,
                    prefix,
                    node_ttl,
                    command_timeout,
                    queue: s.get("queue", DEFAULT_BACKPLANE_QUEUE, value::positive),
                    stream_ttl,
                })
            }
            other => {
                s.issue(
                    "kind",
                    format!("must be \"memory\" or \"redis\", not {other:?}"),
                );
                s.skip_rest();
                BackplaneConfig::Memory
            }
        }
    }
}

/// A URL the Redis client accepts, with a scheme it can speak.
fn check_redis_url(url: &str) -> Result<(), String> {
    if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
        return Err("must start with redis:// or rediss://".to_owned());
    }
    redis::Client::open(url)
        .map(drop)
        .map_err(|e| format!("not a Redis URL ({e})"))
}

/// `[[hub.api_keys]]`: a token that may publish to, and read the presence
/// of, only the channels its patterns match (and send no direct messages).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ApiKey {
    #[serde(serialize_with = "show_secret")]
    pub token: String,
    pub channels: Vec<String>,
}

fn show_secret<S: serde::Serializer>(_: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str("(set)")
}

/// A `kind = "hub"` route: how its clients speak and what bounds them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HubRoute {
    pub protocol: HubProtocol,
    /// raw: the channel every client of the route is in (default: the route name).
    pub channel: String,
    /// raw: the channel is the path below the route's prefix (`/chat/{room}`).
    pub channel_from_path: bool,
    /// raw: the sender gets its own frames too.
    pub echo: bool,
    /// raw: a text frame that is a JSON object with this string field goes
    /// only to the client(s) of that name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub direct_field: Option<String>,
    /// raw, with `direct_field`: the field of a direct message set to the
    /// sender's real name, whatever the client wrote there.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sender_field: Option<String>,
    /// Names and direct messages live here: clients of routes with the
    /// same namespace see each other (default: the route's name).
    pub namespace: String,
    /// Channels a client may subscribe to / publish on when its token does
    /// not say (`channels` claim); absent: any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subscribe: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub publish: Option<Vec<String>>,
    pub names: NamePolicy,
    /// Send this route's clients join/leave events for their channels.
    pub presence_events: bool,
    pub max_channels_per_client: usize,
    /// Outbound queue bound per connection, in messages and bytes.
    pub queue_messages: usize,
    pub queue_bytes: usize,
    pub slow_consumer: SlowConsumer,
    /// Token bucket per connection for publish/send: messages per second
    /// and burst.
    pub publish_rate: f64,
    pub publish_burst: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HubProtocol {
    /// Frames go to the room unchanged.
    Raw,
    /// The JSON envelope protocol.
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NamePolicy {
    /// A name connected anywhere cannot connect again (409).
    Unique,
    /// Several connections may share a name; direct messages reach them all.
    Shared,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SlowConsumer {
    /// Close the connection with 1008 "slow consumer".
    Close,
    /// Drop the oldest queued messages and tell the client (`lagged`).
    DropOldest,
}

impl HubConfig {
    pub(super) fn read(mut s: Section<'_>) -> Self {
        HubConfig {
            api_tokens: s.list("api_tokens", api_token),
            api_keys: read_api_keys(&mut s),
            history_size: s.get("history_size", DEFAULT_HUB_HISTORY_SIZE, value::whole),
            history_ttl: s.get("history_ttl", DEFAULT_HUB_HISTORY_TTL, value::duration),
            max_channels: s.get("max_channels", DEFAULT_HUB_MAX_CHANNELS, value::positive),
            backplane: BackplaneConfig::read(s.section("backplane")),
        }
    }
}

fn api_token(token: &str) -> Result<String, String> {
    if token.len() < 16 || !token.chars().all(|c| c.is_ascii_graphic()) {
        return Err("must be at least 16 printable ASCII characters".to_owned());
    }
    Ok(token.to_owned())
}

fn read_api_keys(s: &mut Section<'_>) -> Vec<ApiKey> {
    let mut keys = Vec::new();
    s.each_table("api_keys", |mut k| {
        let token = k
            .required("token")
            .and_then(|t| api_token(t.trim()).map_err(|p| k.issue("token", p)).ok());
        if !k.has("channels") {
            k.issue("channels", "is required (patterns like \"prices.*\")");
        }
        let channels = k.list("channels", pattern);
        if let Some(token) = token {
            keys.push(ApiKey { token, channels });
        }
    });
    keys
}

impl HubRoute {
    /// The hub keys of a route; `route_name` is the default raw channel.
    pub(super) fn read(s: &mut Section<'_>, route_name: &str) -> Self {
        let route = HubRoute {
            protocol: s.get("protocol", HubProtocol::Json, value::choice),
            channel: s
                .string("channel")
                .unwrap_or_else(|| route_name.trim_start_matches('/').to_owned()),
            channel_from_path: s.get("channel_from_path", false, value::boolean),
            echo: s.get("echo", false, value::boolean),
            direct_field: s.string("direct_field"),
            sender_field: s.string("sender_field"),
            namespace: s
                .string("namespace")
                .unwrap_or_else(|| route_name.to_owned()),
            subscribe: s.has("subscribe").then(|| s.list("subscribe", pattern)),
            publish: s.has("publish").then(|| s.list("publish", pattern)),
            names: s.get("names", NamePolicy::Shared, value::choice),
            presence_events: s.get("presence_events", false, value::boolean),
            max_channels_per_client: s.get(
                "max_channels_per_client",
                DEFAULT_HUB_MAX_CHANNELS_PER_CLIENT,
                value::positive,
            ),
            queue_messages: s.get(
                "queue_messages",
                DEFAULT_HUB_QUEUE_MESSAGES,
                value::positive,
            ),
            queue_bytes: s.get("queue_bytes", DEFAULT_HUB_QUEUE_BYTES, value::size),
            slow_consumer: s.get("slow_consumer", SlowConsumer::Close, value::choice),
            publish_rate: s.get("publish_rate", DEFAULT_HUB_PUBLISH_RATE, value::rate),
            publish_burst: s.get(
                "publish_burst",
                DEFAULT_HUB_PUBLISH_BURST,
                value::positive_u32,
            ),
        };
        if let Err(problem) = check_channel_name(&route.channel) {
            s.issue("channel", problem);
        }
        if route.protocol == HubProtocol::Json {
            for (key, set) in [
                ("channel_from_path", route.channel_from_path),
                ("echo", route.echo),
                ("direct_field", route.direct_field.is_some()),
                ("sender_field", route.sender_field.is_some()),
            ] {
                if set {
                    s.issue(key, "only applies to protocol = \"raw\"");
                }
            }
        }
        if route.sender_field.is_some() && route.direct_field.is_none() {
            s.issue("sender_field", "needs direct_field");
        }
        route
    }
}

/// A channel pattern: a channel name, `prefix*`, or `*`.
fn pattern(p: &str) -> Result<String, String> {
    let name = p.strip_suffix('*').unwrap_or(p);
    if !name.is_empty() {
        check_channel_name(name)?;
    }
    Ok(p.to_owned())
}
