//! permessage-deflate (RFC 7692): the offer a client makes and the
//! answer, the offer made to an upstream member and its answer, and the
//! budget of connections that may keep compression context.
//!
//! Without context takeover, no compressor or decompressor state outlives
//! a message: the state is per thread, reset for each message and shared
//! by every connection that thread serves, so an idle compressed
//! connection costs no more than an uncompressed one, and a message
//! compressed once (a hub broadcast) is the same bytes for every
//! recipient. A route may let connections keep context (a better ratio on
//! small messages, for a compressor and a decompressor per connection):
//! only as many as `[limits] compression_contexts` at once; the others get
//! the terms without. Inflating stops as soon as a message's output passes
//! the message limit: a deflate bomb costs at most the limit.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::config::Deflate;

pub(crate) mod codec;

#[cfg(test)]
use codec::Inflate;
pub(crate) use codec::{Deflater, Inflater, compress, frame, inflate};

/// The extension's token in `Sec-WebSocket-Extensions`.
const NAME: &str = "permessage-deflate";

/// The answer to a client's offers, when one is acceptable.
#[derive(Debug, Clone)]
pub(crate) struct Agreed {
    /// The `Sec-WebSocket-Extensions` value of the 101.
    pub(crate) response: String,
    /// How this server compresses to the client: `None` when the client
    /// limited this server's window below 15 bits. (Every message is
    /// compressed with a full window; such a client gets them
    /// uncompressed, which the extension allows.)
    pub(crate) compress: Option<Deflate>,
    /// The limit the client set on this server's window, if any: passed
    /// on to an upstream member, so what it compresses suits the client.
    pub(crate) server_window: Option<u8>,
    /// This server keeps its context from message to message: its
    /// messages to this client go through the connection's own compressor.
    pub(crate) server_context: bool,
    /// The client keeps its context: its messages are inflated by the
    /// connection's own decompressor.
    pub(crate) client_context: bool,
    /// The connection's place in the budget, while either side keeps
    /// context.
    pub(crate) slot: Option<Arc<ContextSlot>>,
}

impl Agreed {
    /// How this server compresses to the client with the thread's shared
    /// codecs (a message compressed once for all its recipients): not when
    /// it keeps a context of the connection's own.
    pub(crate) fn shared_compress(&self) -> Option<Deflate> {
        self.compress.filter(|_| !self.server_context)
    }
}

/// How many connections keep compression context now.
#[derive(Debug, Default)]
pub(crate) struct ContextBudget {
    held: AtomicUsize,
}

/// One connection's place among those that keep context; given back when
/// dropped.
#[derive(Debug)]
pub(crate) struct ContextSlot(Arc<ContextBudget>);

impl ContextBudget {
    /// A place, if fewer than `max` are taken.
    fn take(self: &Arc<Self>, max: usize) -> Option<ContextSlot> {
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        crate::metrics::compression_contexts(1.0);
        Some(ContextSlot(self.clone()))
    }
}

impl Drop for ContextSlot {
    fn drop(&mut self) {
        self.0.held.fetch_sub(1, Ordering::AcqRel);
        crate::metrics::compression_contexts(-1.0);
    }
}

/// One acceptable offer's parameters.
#[derive(Debug, Clone, Copy)]
struct Offer {
    server_no_context: bool,
    client_no_context: bool,
    /// `server_max_window_bits`, if the client set one.
    server_bits: Option<u8>,
    /// `client_max_window_bits` was offered without a value: the answer
    /// may set one.
    client_bits: bool,
}

/// Choose the first acceptable `permessage-deflate` offer among the
/// `Sec-WebSocket-Extensions` values, and answer it. An offer is declined
/// (RFC 7692 §5) if it has an unknown or repeated parameter or an invalid
/// value; other extensions are ignored. Context is kept where the route
/// allows it, the client does not refuse it, and `budget` has a place
/// among `max`.
pub(crate) fn negotiate<'h>(
    values: impl IntoIterator<Item = &'h str>,
    config: Deflate,
    budget: &Arc<ContextBudget>,
    max: usize,
) -> Option<Agreed> {
    let offer = values
        .into_iter()
        .flat_map(|v| v.split(','))
        .find_map(|offer| accept(offer.trim()))?;
    let full_window = offer.server_bits.is_none_or(|b| b == 15);
    let wants_context = (full_window && !offer.server_no_context) || !offer.client_no_context;
    let slot = (config.context_takeover && wants_context)
        .then(|| budget.take(max))
        .flatten();
    let kept = slot.is_some();
    let server_context = kept && full_window && !offer.server_no_context;
    let client_context = kept && !offer.client_no_context;
    // Without context, this server says so for itself, and asks it of the
    // client (§7.1.1.1 and §7.1.1.2 allow both unasked).
    let mut response = NAME.to_owned();
    if !server_context {
        response.push_str("; server_no_context_takeover");
    }
    if !client_context {
        response.push_str("; client_no_context_takeover");
    }
    if let Some(bits) = offer.server_bits {
        response.push_str(&format!("; server_max_window_bits={bits}"));
    }
    if offer.client_bits {
        // The client may then use any window; this server inflates with a
        // full one, which reads them all.
        response.push_str("; client_max_window_bits=15");
    }
    Some(Agreed {
        response,
        compress: full_window.then_some(config),
        server_window: offer.server_bits,
        server_context,
        client_context,
        slot: slot.map(Arc::new),
    })
}

/// The parameters of one `permessage-deflate; param[=value]; ...`
/// element, lowercased, each once; `None` if it is another extension or
/// names a parameter twice.
fn params(element: &str) -> Option<Vec<(String, Option<&str>)>> {
    let mut parts = element.split(';').map(str::trim);
    if !parts.next()?.eq_ignore_ascii_case(NAME) {
        return None;
    }
    let mut params: Vec<(String, Option<&str>)> = Vec::new();
    for param in parts {
        let (name, value) = match param.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
            None => (param, None),
        };
        let name = name.to_ascii_lowercase();
        if params.iter().any(|(n, _)| *n == name) {
            return None;
        }
        params.push((name, value));
    }
    Some(params)
}

/// A window size parameter's value: 8 to 15.
fn bits(value: Option<&str>) -> Option<u8> {
    value
        .and_then(|v| v.parse::<u8>().ok())
        .filter(|b| (8..=15).contains(b))
}

/// One offer's parameters, if it is acceptable.
fn accept(offer: &str) -> Option<Offer> {
    let mut accepted = Offer {
        server_no_context: false,
        client_no_context: false,
        server_bits: None,
        client_bits: false,
    };
    for (name, value) in params(offer)? {
        match (name.as_str(), value) {
            ("server_no_context_takeover", None) => accepted.server_no_context = true,
            ("client_no_context_takeover", None) => accepted.client_no_context = true,
            ("server_max_window_bits", v) => accepted.server_bits = Some(bits(v)?),
            ("client_max_window_bits", None) => accepted.client_bits = true,
            // A value is the client's own limit: nothing to answer.
            ("client_max_window_bits", v) => {
                bits(v)?;
            }
            _ => return None,
        }
    }
    Some(accepted)
}

/// What wsgate offers an upstream member: the terms agreed with the
/// client (no context kept either way, unless the client keeps it), and
/// the client's limit on the server's window passed on, so that what the
/// member compresses can go to the client untouched. No
/// `client_max_window_bits`: the member may not shrink the window of what
/// the client compressed.
pub(crate) fn upstream_offer(client: Option<&Agreed>) -> String {
    let mut offer = NAME.to_owned();
    if !client.is_some_and(|a| a.server_context) {
        offer.push_str("; server_no_context_takeover");
    }
    if !client.is_some_and(|a| a.client_context) {
        offer.push_str("; client_no_context_takeover");
    }
    if let Some(bits) = client.and_then(|a| a.server_window) {
        offer.push_str(&format!("; server_max_window_bits={bits}"));
    }
    offer
}

/// What an upstream member agreed to [`upstream_offer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct UpstreamAgreed {
    /// It asks wsgate not to keep context: what a client that keeps
    /// context compresses cannot go to it untouched.
    pub(crate) client_no_context: bool,
    /// It keeps no context of its own.
    pub(crate) server_no_context: bool,
    /// Asked for a smaller window, it did not say it would use one (as
    /// RFC 7692 §7.1.2.1 says it must): what it compresses may not suit
    /// the client that asked, and is inflated for it.
    pub(crate) window_unsettled: bool,
}

/// The member's answer to `offer`, from its `Sec-WebSocket-Extensions`
/// values: none is a decline; one `permessage-deflate` within the offer is
/// an agreement; anything else breaks the handshake (RFC 6455 §4.1,
/// RFC 7692 §7.1).
pub(crate) fn upstream_agreed<'h>(
    values: impl IntoIterator<Item = &'h str>,
    offer: &str,
) -> Result<Option<UpstreamAgreed>, &'static str> {
    let mut elements = values.into_iter().flat_map(|v| v.split(','));
    let Some(element) = elements.next() else {
        return Ok(None);
    };
    if elements.next().is_some() {
        return Err("more than the one extension offered");
    }
    let answer = params(element.trim()).ok_or("an extension nobody asked for")?;
    let offered = params(offer).unwrap_or_default();
    let asked = |name: &str| offered.iter().find(|(n, _)| n == name);
    // A window below 15 asked for a client must be settled in the answer.
    let window = asked("server_max_window_bits").and_then(|(_, v)| bits(*v));
    let smaller = window.is_some_and(|b| b < 15);
    let mut agreed = UpstreamAgreed {
        client_no_context: false,
        server_no_context: false,
        window_unsettled: smaller,
    };
    for (name, value) in answer {
        match (name.as_str(), value) {
            ("server_no_context_takeover", None) => agreed.server_no_context = true,
            ("client_no_context_takeover", None) => agreed.client_no_context = true,
            ("server_max_window_bits", v) => match bits(v) {
                Some(b) if window.is_none_or(|a| b <= a) => agreed.window_unsettled = false,
                _ => return Err("a server window outside the offer"),
            },
            _ => return Err("a deflate parameter not offered"),
        }
    }
    if asked("server_no_context_takeover").is_some() && !agreed.server_no_context {
        return Err("deflate with context takeover, which was not offered");
    }
    Ok(Some(agreed))
}

#[cfg(test)]
mod tests;
