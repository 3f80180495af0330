//! One token bucket, for every rate limit in the gateway: new connections
//! per second at admission (global and per address) and publishes per hub
//! connection. A leaf: it imports nothing from the crate.
//!
//! Time is `tokio::time::Instant`, so tests run it under paused time; every
//! method also has an `_at(now)` form for callers that read the clock once
//! for several buckets.

use tokio::time::Instant;

/// `rate` tokens a second, holding at most `burst`; starts full.
#[derive(Debug, Clone)]
pub(crate) struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub(crate) fn new(rate: f64, burst: f64) -> Self {
        TokenBucket {
            rate,
            burst,
            tokens: burst,
            last: Instant::now(),
        }
    }

    fn refill(&mut self, now: Instant) {
        let refill = now.saturating_duration_since(self.last).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + refill).min(self.burst);
        self.last = now;
    }

    /// Take one token if there is one.
    pub(crate) fn take(&mut self) -> bool {
        self.take_at(Instant::now())
    }

    /// [`take`](Self::take) with the clock already read.
    pub(crate) fn take_at(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Back to a full burst by `now`: an idle bucket that can be forgotten.
    pub(crate) fn is_full_at(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= self.burst
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn the_bucket_refills_at_its_rate() {
        let mut b = TokenBucket::new(10.0, 3.0);
        assert!(b.take() && b.take() && b.take());
        assert!(!b.take());
        tokio::time::advance(Duration::from_millis(100)).await;
        assert!(b.take());
        assert!(!b.take());
    }

    #[test]
    fn refill_is_capped_at_the_burst_and_full_means_idle() {
        let start = Instant::now();
        let mut b = TokenBucket::new(2.0, 2.0);
        assert!(b.is_full_at(start));
        assert!(b.take_at(start) && b.take_at(start));
        assert!(!b.take_at(start));
        assert!(!b.is_full_at(start + Duration::from_millis(500)));
        // A long idle spell refills to the burst, not beyond it.
        let later = start + Duration::from_secs(60);
        assert!(b.is_full_at(later));
        assert!(b.take_at(later) && b.take_at(later));
        assert!(!b.take_at(later));
    }

    #[test]
    fn a_clock_read_before_the_last_one_does_not_panic() {
        let start = Instant::now();
        let mut b = TokenBucket::new(1.0, 1.0);
        assert!(b.take_at(start + Duration::from_secs(1)));
        assert!(!b.take_at(start));
    }
}
