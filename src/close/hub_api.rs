//! The hub HTTP API's errors: the status, the JSON body's `error` code and
//! its `message`. (`wsgate_hub_api_requests_total` counts by status.)

use std::borrow::Cow;

use http::StatusCode;

/// Why a hub API request failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    /// No `[hub] api_tokens` nor `api_keys`: the API is off.
    Off,
    /// No bearer token, or not one of `api_tokens`.
    Unauthorized,
    /// The endpoint exists; this is the method it takes.
    Method(&'static str),
    /// No such endpoint.
    NotFound,
    /// The channel name in the path is invalid; the text says why.
    BadChannel(String),
    /// The client name in the path is invalid; the text says why.
    BadName(String),
    /// The body is over this many bytes (or unreadable).
    TooLarge(usize),
    /// The body did not arrive within this long.
    SlowBody(std::time::Duration),
    /// A JSON or text body that is not UTF-8.
    NotUtf8,
    /// A JSON body that does not parse; the parser's complaint.
    NotJson(String),
    /// The hub refused (its error code and message), e.g. its channel limit.
    Hub(&'static str, &'static str),
    /// Presence of a channel that does not exist.
    NoSuchChannel,
    /// A direct message to a name nobody connected with.
    NoSuchClient,
    /// An `api_keys` token used outside its channels (or to send directly).
    Forbidden,
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Off
            | ApiError::NotFound
            | ApiError::NoSuchChannel
            | ApiError::NoSuchClient => StatusCode::NOT_FOUND,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Method(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::BadChannel(_)
            | ApiError::BadName(_)
            | ApiError::NotUtf8
            | ApiError::NotJson(_) => StatusCode::BAD_REQUEST,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::SlowBody(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::Hub(..) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Forbidden => StatusCode::FORBIDDEN,
        }
    }

    /// The JSON body's `error` field.
    pub fn label(&self) -> &'static str {
        match self {
            ApiError::Off => "api_off",
            ApiError::Unauthorized => "unauthorized",
            ApiError::Method(_) => "method",
            ApiError::NotFound => "not_found",
            ApiError::BadChannel(_) => "bad_channel",
            ApiError::BadName(_) => "bad_name",
            ApiError::TooLarge(_) => "too_large",
            ApiError::SlowBody(_) => "timeout",
            ApiError::NotUtf8 | ApiError::NotJson(_) => "bad_body",
            ApiError::Hub(code, _) => code,
            ApiError::NoSuchChannel => "no_such_channel",
            ApiError::NoSuchClient => "no_such_client",
            ApiError::Forbidden => "forbidden",
        }
    }

    /// The JSON body's `message` field.
    pub fn message(&self) -> Cow<'_, str> {
        match self {
            ApiError::Off => "the hub API is off: set [hub] api_tokens".into(),
            ApiError::Unauthorized => "a valid bearer token is required".into(),
            ApiError::Method(allow) => format!("use {allow}").into(),
            ApiError::NotFound => "no such API endpoint".into(),
            ApiError::BadChannel(why) | ApiError::BadName(why) => why.as_str().into(),
            ApiError::TooLarge(max) => {
                format!("body larger than {max} bytes (limits.max_message_size) or unreadable")
                    .into()
            }
            ApiError::SlowBody(within) => format!(
                "the body did not arrive within {} (limits.handshake_timeout)",
                humantime::format_duration(*within)
            )
            .into(),
            ApiError::NotUtf8 => "the body is not UTF-8".into(),
            ApiError::NotJson(e) => format!("the body is not JSON: {e}").into(),
            ApiError::Hub(_, message) => (*message).into(),
            ApiError::NoSuchChannel => "no such channel".into(),
            ApiError::NoSuchClient => "no client of that name is connected".into(),
            ApiError::Forbidden => "this token may not use that channel or endpoint".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_error_table() {
        let table = [
            (
                ApiError::Off,
                404,
                "api_off",
                "the hub API is off: set [hub] api_tokens",
            ),
            (
                ApiError::Unauthorized,
                401,
                "unauthorized",
                "a valid bearer token is required",
            ),
            (ApiError::Method("POST"), 405, "method", "use POST"),
            (ApiError::NotFound, 404, "not_found", "no such API endpoint"),
            (
                ApiError::BadChannel("why".into()),
                400,
                "bad_channel",
                "why",
            ),
            (ApiError::BadName("why".into()), 400, "bad_name", "why"),
            (
                ApiError::TooLarge(10),
                413,
                "too_large",
                "body larger than 10 bytes (limits.max_message_size) or unreadable",
            ),
            (
                ApiError::SlowBody(std::time::Duration::from_millis(1500)),
                408,
                "timeout",
                "the body did not arrive within 1s 500ms (limits.handshake_timeout)",
            ),
            (ApiError::NotUtf8, 400, "bad_body", "the body is not UTF-8"),
            (
                ApiError::NotJson("eof".into()),
                400,
                "bad_body",
                "the body is not JSON: eof",
            ),
            (
                ApiError::Hub("too_many_channels", "full"),
                503,
                "too_many_channels",
                "full",
            ),
            (
                ApiError::NoSuchChannel,
                404,
                "no_such_channel",
                "no such channel",
            ),
            (
                ApiError::NoSuchClient,
                404,
                "no_such_client",
                "no client of that name is connected",
            ),
            (
                ApiError::Forbidden,
                403,
                "forbidden",
                "this token may not use that channel or endpoint",
            ),
        ];
        for (e, status, label, message) in table {
            assert_eq!(e.status().as_u16(), status, "{e:?}");
            assert_eq!(e.label(), label, "{e:?}");
            assert_eq!(e.message(), message, "{e:?}");
        }
    }
}
