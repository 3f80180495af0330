//! What a hub client may do and who it is to others: channel permissions
//! (from its token's `channels` claim, else the route's `subscribe` and
//! `publish` defaults), and the sender's real name stamped into a raw
//! direct message.

use serde_json::{Map, Value};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::Conn;
use crate::auth::Claims;
use crate::config::HubRoute;

/// Channel patterns a client may subscribe to and publish on; `None`: any.
/// A pattern is a channel name, `prefix*` (`prices.*`), or `*`.
#[derive(Debug, Clone, Default)]
pub(crate) struct ChannelAccess {
    subscribe: Option<Vec<String>>,
    publish: Option<Vec<String>>,
}

impl ChannelAccess {
    /// From `claims["channels"]` (`{"subscribe": [...], "publish": [...]}`),
    /// each list falling back to the route's default when absent.
    pub(crate) fn new(claims: Option<&Claims>, route: &HubRoute) -> ChannelAccess {
        let granted = claims.and_then(|c| c.get("channels"));
        let list = |key: &str, default: &Option<Vec<String>>| match granted.and_then(|g| g.get(key))
        {
            Some(Value::Array(items)) => Some(
                items
                    .iter()
                    .filter_map(|p| p.as_str().map(str::to_owned))
                    .collect(),
            ),
            // A claim of another shape grants nothing.
            Some(_) => Some(Vec::new()),
            None => default.clone(),
        };
        ChannelAccess {
            subscribe: list("subscribe", &route.subscribe),
            publish: list("publish", &route.publish),
        }
    }

    pub(crate) fn may_subscribe(&self, channel: &str) -> bool {
        allowed(&self.subscribe, channel)
    }

    pub(crate) fn may_publish(&self, channel: &str) -> bool {
        allowed(&self.publish, channel)
    }
}

fn allowed(patterns: &Option<Vec<String>>, channel: &str) -> bool {
    match patterns {
        None => true,
        Some(patterns) => patterns.iter().any(|p| matches(p, channel)),
    }
}

/// `prices.*` matches `prices.eur`; `*` matches all; otherwise exact.
pub(crate) fn matches(pattern: &str, channel: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => channel.starts_with(prefix) && channel.len() > prefix.len(),
        None => pattern == channel,
    }
}

/// A `refresh` request: a fresh token extends the session.
pub(crate) fn refresh(conn: &Conn, token: Option<&str>) -> Result<(), (&'static str, String)> {
    let token = token.ok_or(("bad_request", "\"token\" is required".to_owned()))?;
    let refresh = (conn.refresh.as_ref()).ok_or((
        "bad_request",
        "this session has no token to refresh".to_owned(),
    ))?;
    refresh(token).map_err(|why| ("unauthorized", why.to_owned()))
}

/// `text` with `field` set to `name` if it is a JSON object; anything else
/// as it is.
pub(crate) fn stamp(text: &Utf8Bytes, field: &str, name: &str) -> Utf8Bytes {
    match serde_json::from_str::<Map<String, Value>>(text) {
        Ok(mut map) => {
            map.insert(field.to_owned(), Value::String(name.to_owned()));
            Value::Object(map).to_string().into()
        }
        Err(_) => text.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        assert!(matches("prices.*", "prices.eur"));
        assert!(!matches("prices.*", "prices."));
        assert!(!matches("prices.*", "pricesX"));
        assert!(matches("*", "anything"));
        assert!(matches("chat", "chat"));
        assert!(!matches("chat", "chat2"));
    }

    #[test]
    fn the_sender_field_is_overwritten() {
        let forged = Utf8Bytes::from(r#"{"src":"admin","dst":"bob","msg":"hi"}"#);
        let stamped: Value = serde_json::from_str(&stamp(&forged, "src", "eve")).unwrap();
        assert_eq!(stamped["src"], "eve");
        assert_eq!(stamped["msg"], "hi");
    }
}
