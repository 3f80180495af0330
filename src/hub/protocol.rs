//! The JSON envelope protocol: request parsing and the server's messages.
//! Envelopes are written directly (strings escaped by serde_json), and a
//! message's `data` is spliced in as the raw JSON it arrived as, never
//! parsed into a tree and re-serialized.

use base64::Engine;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio_tungstenite::tungstenite::{Bytes, Utf8Bytes};

use super::Position;

/// A client request. Every field but `type` is optional here; each handler
/// checks what it needs, so any malformed request can still be answered
/// with its `id`.
#[derive(Debug, Deserialize)]
pub(crate) struct Request<'a> {
    #[serde(rename = "type")]
    pub(crate) kind: String,
    #[serde(borrow, default)]
    pub(crate) id: Option<&'a RawValue>,
    #[serde(default)]
    pub(crate) channel: Option<String>,
    #[serde(default)]
    pub(crate) since: Option<u64>,
    /// subscribe, with `since`: the epoch `since` counts in.
    #[serde(default)]
    pub(crate) epoch: Option<String>,
    #[serde(borrow, default)]
    pub(crate) data: Option<&'a RawValue>,
    #[serde(default)]
    pub(crate) to: Option<String>,
    /// `refresh`: a fresh token for this session.
    #[serde(default)]
    pub(crate) token: Option<String>,
}

/// A message body as it travels through the hub.
#[derive(Debug, Clone)]
pub(crate) enum Body {
    /// JSON text (a json client's `data`, an API JSON body, a raw direct frame).
    Json(Utf8Bytes),
    /// A text frame or text/* API body.
    Text(Utf8Bytes),
    /// A binary frame or other API body.
    Binary(Bytes),
}

impl Body {
    pub(crate) fn len(&self) -> usize {
        match self {
            Body::Json(t) | Body::Text(t) => t.len(),
            Body::Binary(b) => b.len(),
        }
    }

    /// `"data":...` as it appears in an envelope.
    fn write_data(&self, out: &mut String) {
        match self {
            Body::Json(raw) => {
                out.push_str(r#""data":"#);
                out.push_str(raw.as_str());
            }
            Body::Text(text) => {
                out.push_str(r#""data":"#);
                push_json_string(out, text.as_str());
            }
            Body::Binary(bytes) => {
                out.push_str(r#""encoding":"base64","data":""#);
                base64::engine::general_purpose::STANDARD.encode_string(bytes, out);
                out.push('"');
            }
        }
    }
}

pub(crate) fn push_json_string(out: &mut String, s: &str) {
    // Writing a &str as JSON cannot fail.
    out.push_str(&serde_json::to_string(s).unwrap_or_default());
}

fn finish(out: String) -> Utf8Bytes {
    Utf8Bytes::from(out)
}

/// `{"type":"message","channel":..,"seq":..,"epoch":..,"from":..,"data":..}`
pub(crate) fn message(channel: &str, at: Position, from: Option<&str>, body: &Body) -> Utf8Bytes {
    let mut out = String::with_capacity(96 + channel.len() + body.len());
    out.push_str(r#"{"type":"message","channel":"#);
    push_json_string(&mut out, channel);
    push_position(&mut out, at);
    from_and_data(out, from, body)
}

/// `,"seq":..,"epoch":".."`
pub(crate) fn push_position(out: &mut String, at: Position) {
    use std::fmt::Write;
    // Writing to a String cannot fail.
    let _ = write!(out, r#","seq":{},"epoch":"{}""#, at.seq, at.epoch);
}

/// `{"type":"direct","from":..,"data":..}`
pub(crate) fn direct(from: Option<&str>, body: &Body) -> Utf8Bytes {
    let mut out = String::with_capacity(48 + body.len());
    out.push_str(r#"{"type":"direct""#);
    from_and_data(out, from, body)
}

/// `,"from":..,"data":..}`: the end of a message or direct envelope.
fn from_and_data(mut out: String, from: Option<&str>, body: &Body) -> Utf8Bytes {
    out.push_str(r#","from":"#);
    match from {
        Some(from) => push_json_string(&mut out, from),
        None => out.push_str("null"),
    }
    out.push(',');
    body.write_data(&mut out);
    out.push('}');
    finish(out)
}

pub(crate) fn welcome(client: &str) -> Utf8Bytes {
    let mut out = String::from(r#"{"type":"welcome","client":"#);
    push_json_string(&mut out, client);
    out.push('}');
    finish(out)
}

/// `{"type":"join"|"leave","channel":..,"client":..}`
pub(crate) fn presence_event(kind: &str, channel: &str, client: &str) -> Utf8Bytes {
    let mut out = format!(r#"{{"type":"{kind}","channel":"#);
    push_json_string(&mut out, channel);
    out.push_str(r#","client":"#);
    push_json_string(&mut out, client);
    out.push('}');
    finish(out)
}

pub(crate) fn presence(channel: &str, clients: &[String], id: Option<&RawValue>) -> Utf8Bytes {
    let mut out = String::from(r#"{"type":"presence","channel":"#);
    push_json_string(&mut out, channel);
    out.push_str(r#","clients":"#);
    out.push_str(&serde_json::to_string(clients).unwrap_or_else(|_| "[]".into()));
    push_id(&mut out, id);
    out.push('}');
    finish(out)
}

/// `{"type":"ack","id":..}` plus the channel and its position.
pub(crate) fn ack(id: Option<&RawValue>, channel: Option<&str>, at: Option<Position>) -> Utf8Bytes {
    let mut out = String::from(r#"{"type":"ack""#);
    push_id(&mut out, id);
    if let Some(channel) = channel {
        out.push_str(r#","channel":"#);
        push_json_string(&mut out, channel);
    }
    if let Some(at) = at {
        push_position(&mut out, at);
    }
    out.push('}');
    finish(out)
}

/// `{"type":"error","code":..,"message":..,"id":..}` plus the channel and
/// its last position for `gap`.
pub(crate) fn error(
    code: &str,
    message: &str,
    id: Option<&RawValue>,
    channel: Option<(&str, Position)>,
) -> Utf8Bytes {
    let mut out = String::from(r#"{"type":"error","code":"#);
    push_json_string(&mut out, code);
    out.push_str(r#","message":"#);
    push_json_string(&mut out, message);
    push_id(&mut out, id);
    if let Some((channel, at)) = channel {
        out.push_str(r#","channel":"#);
        push_json_string(&mut out, channel);
        push_position(&mut out, at);
    }
    out.push('}');
    finish(out)
}

fn push_id(out: &mut String, id: Option<&RawValue>) {
    if let Some(id) = id {
        out.push_str(r#","id":"#);
        out.push_str(id.get());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> serde_json::Value {
        serde_json::from_str(s).unwrap()
    }

    fn at(seq: u64) -> Position {
        Position {
            seq,
            epoch: super::super::Epoch::parse("00000000000000ab").unwrap(),
        }
    }

    #[test]
    fn envelopes_are_valid_json() {
        let body = Body::Json(Utf8Bytes::from(r#"{"px":1.5}"#.to_owned()));
        let m = parse(message("prices", at(42), Some("bo\"b"), &body).as_str());
        assert_eq!(m["type"], "message");
        assert_eq!(m["seq"], 42);
        assert_eq!(m["epoch"], "00000000000000ab");
        assert_eq!(m["from"], "bo\"b");
        assert_eq!(m["data"]["px"], 1.5);
        let m = parse(
            message(
                "room",
                at(1),
                None,
                &Body::Binary(Bytes::from_static(&[1, 2, 3])),
            )
            .as_str(),
        );
        assert_eq!(
            (m["encoding"].as_str(), m["data"].as_str()),
            (Some("base64"), Some("AQID"))
        );
        assert!(m["from"].is_null());
        let m = parse(
            direct(
                Some("ann"),
                &Body::Text(Utf8Bytes::from_static("hi \n there")),
            )
            .as_str(),
        );
        assert_eq!(m["data"], "hi \n there");
        let id = RawValue::from_string("7".into()).unwrap();
        let e = parse(error("gap", "too old", Some(&id), Some(("c", at(9)))).as_str());
        assert_eq!(
            (e["id"].as_u64(), e["seq"].as_u64(), e["code"].as_str()),
            (Some(7), Some(9), Some("gap"))
        );
        assert_eq!(e["epoch"], "00000000000000ab");
        let a = parse(ack(Some(&id), Some("c"), Some(at(3))).as_str());
        assert_eq!(
            (a["seq"].as_u64(), a["epoch"].as_str()),
            (Some(3), Some("00000000000000ab"))
        );
        let p = parse(presence("room", &["a".into(), "b".into()], None).as_str());
        assert_eq!(p["clients"][1], "b");
    }

    #[test]
    fn requests_parse_with_or_without_fields() {
        let r: Request<'_> = serde_json::from_str(
            r#"{"type":"publish","channel":"c","data":{"x":[1,2]},"id":"a-1"}"#,
        )
        .unwrap();
        assert_eq!(
            (r.kind.as_str(), r.channel.as_deref()),
            ("publish", Some("c"))
        );
        assert_eq!(r.data.unwrap().get(), r#"{"x":[1,2]}"#);
        assert_eq!(r.id.unwrap().get(), r#""a-1""#);
        let r: Request<'_> = serde_json::from_str(r#"{"type":"bogus"}"#).unwrap();
        assert!(r.id.is_none() && r.data.is_none());
        assert!(serde_json::from_str::<Request<'_>>(r#"{"no":"type"}"#).is_err());
    }
}
