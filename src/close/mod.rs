//! How things end: the one place that maps every refusal and every end to
//! what the peer sees (an HTTP status, a close code) and to a metric label.
//! One file per domain, one shape in each: an enum whose `status()`,
//! `label()` (and, where there is a body, `message()`) are exhaustive
//! matches with no `_` arm, so a new variant cannot be added without
//! deciding all of them, and a table test that pins every row.
//!
//! - [`upgrade`]: a refused WebSocket upgrade ([`Rejection`]) and failures
//!   before any request was read ([`EarlyFailure`]).
//! - [`auth`]: an upgrade refused by a route's access rules ([`AuthFailure`]).
//! - [`session`]: how an upgraded session ended ([`SessionEnd`]) and what
//!   each side is sent ([`ClosePlan`]).
//! - [`tunnel`]: the result of an HTTP CONNECT ([`TunnelOutcome`]).
//! - [`hub_api`]: the hub HTTP API's errors ([`ApiError`]).
//! - [`hub`]: hub messages not delivered ([`HubDrop`]).
//! - [`files`]: a `static` route's request not answered with a file
//!   ([`FileRefusal`]).
//! - [`admission`]: connections shed at accept ([`Shed`]).
//! - [`reload`]: the result of a config reload ([`Reload`]).

pub mod admission;
pub mod auth;
pub mod files;
pub mod hub;
pub mod hub_api;
pub mod reload;
pub mod session;
pub mod tunnel;
pub mod upgrade;

pub use admission::Shed;
pub use auth::AuthFailure;
pub use files::FileRefusal;
pub use hub::HubDrop;
pub use hub_api::ApiError;
pub use reload::Reload;
pub use session::{ClosePlan, Fault, SessionEnd, Side};
pub use tunnel::TunnelOutcome;
pub use upgrade::{EarlyFailure, Rejection};

/// Check a label-only table: every row's value has its label.
#[cfg(test)]
fn assert_labels<T: Copy + std::fmt::Debug>(rows: &[(T, &str)], label: fn(T) -> &'static str) {
    for (value, want) in rows {
        assert_eq!(label(*value), *want, "{value:?}");
    }
}
