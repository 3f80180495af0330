//! A session's token expiry: a timer task that, at the token's `exp` (plus
//! the route's grace), cancels the session's own token, so every session
//! loop ends the way it ends on shutdown, and [`SessionCtx`] tells the two
//! apart (1008 `token expired`, not 1001). A fresh token moves the deadline.
//!
//! [`SessionCtx`]: crate::session::SessionCtx

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

/// One session's expiry. Dropping it stops the timer.
pub(crate) struct Expiry {
    /// A child of the gateway's shutdown token: the session's stop signal.
    pub(crate) token: CancellationToken,
    expired: Arc<AtomicBool>,
    deadline: watch::Sender<Instant>,
    grace: Duration,
}

impl Expiry {
    /// Start the timer for a token that expires at `exp` (Unix seconds).
    pub(crate) fn start(parent: &CancellationToken, exp: u64, grace: Duration) -> Expiry {
        let token = parent.child_token();
        let expired = Arc::new(AtomicBool::new(false));
        let (deadline, mut rx) = watch::channel(instant_of(exp, grace));
        let (stop, fired) = (token.clone(), expired.clone());
        tokio::spawn(async move {
            loop {
                let at = *rx.borrow_and_update();
                tokio::select! {
                    _ = sleep_until(at) => {
                        fired.store(true, Ordering::Release);
                        stop.cancel();
                        return;
                    }
                    changed = rx.changed() => if changed.is_err() { return },
                    _ = stop.cancelled() => return,
                }
            }
        });
        Expiry {
            token,
            expired,
            deadline,
            grace,
        }
    }

    /// Did the token run out (rather than the gateway shut down)?
    pub(crate) fn expired(&self) -> bool {
        self.expired.load(Ordering::Acquire)
    }

    /// A fresh token: the session now ends at its `exp`.
    pub(crate) fn extend(&self, exp: u64) {
        let _ = self.deadline.send(instant_of(exp, self.grace));
    }
}

/// `exp` (Unix seconds) plus `grace` on the runtime's clock.
fn instant_of(exp: u64, grace: Duration) -> Instant {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let left = Duration::from_secs(exp).saturating_sub(now);
    Instant::now() + left + grace
}
