//! Subprotocol selection for echo and hub routes: the first of the
//! client's `Sec-WebSocket-Protocol` offers that the route lists is the
//! answer. An offer naming none of them is refused (400, the body naming
//! the route's list) or, where the route says so, accepted without one.
//! Upstream routes answer with their member's choice and never come here.

use http::header::{self, HeaderMap, HeaderValue};

use crate::Body;
use crate::close::Rejection;
use crate::config::{Subprotocols, UnknownSubprotocol};

/// The client's offers, in its order: every comma-separated token of every
/// `Sec-WebSocket-Protocol` header. A value that is not text offers nothing.
pub(crate) fn offers(headers: &HeaderMap) -> Vec<&str> {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect()
}

/// Why an offer was refused, with what the response body says.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Refused {
    pub(crate) detail: String,
}

/// The subprotocol to answer with (`None`: answer without one).
pub(crate) fn choose(
    headers: &HeaderMap,
    route: &Subprotocols,
) -> Result<Option<HeaderValue>, Refused> {
    let offered = offers(headers);
    if offered.is_empty() {
        return Ok(None);
    }
    if let Some(name) = offered
        .iter()
        .find(|o| route.subprotocols.iter().any(|s| s == *o))
    {
        return Ok(HeaderValue::from_str(name).ok());
    }
    match route.unknown_subprotocol {
        UnknownSubprotocol::Accept => Ok(None),
        UnknownSubprotocol::Refuse => {
            let served = if route.subprotocols.is_empty() {
                "none (this route answers only clients that offer no subprotocol)".to_owned()
            } else {
                route.subprotocols.join(", ")
            };
            Err(Refused {
                detail: format!(
                    "offered: {}; this route serves: {served}",
                    offered.join(", ")
                ),
            })
        }
    }
}

/// The 400 for a refused offer: the shared refusal, its body naming both
/// lists.
pub(crate) fn refusal_body(refused: &Refused) -> Body {
    let rejection = Rejection::Subprotocol;
    Body::from(format!(
        "{} {}\n{}\n",
        rejection.status().as_u16(),
        rejection.message(),
        refused.detail
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(names: &[&str], unknown: UnknownSubprotocol) -> Subprotocols {
        Subprotocols {
            subprotocols: names.iter().map(|n| n.to_string()).collect(),
            unknown_subprotocol: unknown,
        }
    }

    fn offer(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(header::SEC_WEBSOCKET_PROTOCOL, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn the_clients_first_listed_offer_wins() {
        let r = route(&["v2", "chat", "v1"], UnknownSubprotocol::Refuse);
        let chosen = choose(&offer(&["x, v1", "chat"]), &r).unwrap().unwrap();
        assert_eq!(chosen, "v1");
        assert_eq!(choose(&offer(&[]), &r), Ok(None));
    }

    #[test]
    fn no_match_is_refused_naming_the_list_or_accepted_without() {
        let r = route(&["chat"], UnknownSubprotocol::Refuse);
        let refused = choose(&offer(&["v1.json"]), &r).unwrap_err();
        assert_eq!(refused.detail, "offered: v1.json; this route serves: chat");
        let none = route(&[], UnknownSubprotocol::Refuse);
        assert!(
            choose(&offer(&["a"]), &none)
                .unwrap_err()
                .detail
                .contains("none")
        );
        let lax = route(&["chat"], UnknownSubprotocol::Accept);
        assert_eq!(choose(&offer(&["v1.json"]), &lax), Ok(None));
    }
}
