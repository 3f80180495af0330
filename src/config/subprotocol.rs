//! The `subprotocols` keys of an echo or hub route: which
//! `Sec-WebSocket-Protocol` names the route answers, and what it does with
//! an offer that names none of them. (An upstream route answers with its
//! member's choice instead, so these keys are unknown there.)

use serde::{Deserialize, Serialize};

use super::reader::Section;
use super::value;

/// The subprotocol a hub route with `protocol = "json"` answers when its
/// route lists none of its own.
pub const HUB_JSON_SUBPROTOCOL: &str = "wsgate.json";
/// The same for `protocol = "raw"`.
pub const HUB_RAW_SUBPROTOCOL: &str = "wsgate.raw";

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Subprotocols {
    /// Names this route answers, in the route's order; the first of the
    /// client's offers found here is selected.
    pub subprotocols: Vec<String>,
    /// A client that offers subprotocols, none of them listed.
    pub unknown_subprotocol: UnknownSubprotocol,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnknownSubprotocol {
    /// 400, naming the route's list.
    Refuse,
    /// 101 without `Sec-WebSocket-Protocol` (a browser then fails the
    /// connection itself; other clients may carry on).
    Accept,
}

impl Subprotocols {
    /// Read the keys; `defaults` stand in when `subprotocols` is absent.
    pub(super) fn read(s: &mut Section<'_>, defaults: &[&str]) -> Subprotocols {
        let subprotocols = if s.has("subprotocols") {
            s.list("subprotocols", token)
        } else {
            defaults.iter().map(|d| d.to_string()).collect()
        };
        for (i, name) in subprotocols.iter().enumerate() {
            if subprotocols[..i].contains(name) {
                s.issue("subprotocols", format!("{name:?} is listed twice"));
            }
        }
        Subprotocols {
            subprotocols,
            unknown_subprotocol: s.get(
                "unknown_subprotocol",
                UnknownSubprotocol::Refuse,
                value::choice,
            ),
        }
    }
}

/// An RFC 7230 token, as `Sec-WebSocket-Protocol` values must be.
fn token(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if ok {
        Ok(s.to_owned())
    } else {
        Err("must be a token: letters, digits and !#$%&'*+-.^_`|~".into())
    }
}
