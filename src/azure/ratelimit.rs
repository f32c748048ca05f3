//! A per-vault token bucket: keeps every identity's requests to one vault,
//! together, under Key Vault's service limit with margin (4,000 GET/LIST per
//! 10 s per vault; kvsync allows 3,000 by default, bursts of 300).

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Requests allowed per second, on average.
pub const DEFAULT_RATE: f64 = 300.0;
/// Requests allowed at once after a quiet period.
pub const DEFAULT_BURST: f64 = 300.0;

/// A token bucket. Callers that find it empty take a token on credit and wait
/// for it, so waiting callers are served in order and the rate holds.
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl Default for RateLimiter {
    fn default() -> Self {
        Self::new(DEFAULT_RATE, DEFAULT_BURST)
    }
}

impl RateLimiter {
    /// A full bucket of `burst` tokens refilled at `rate` per second.
    pub fn new(rate: f64, burst: f64) -> Self {
        Self {
            rate,
            burst,
            state: Mutex::new((burst, Instant::now())),
        }
    }

    /// Takes one token at `now`; returns how long to wait before using it.
    pub fn reserve(&self, now: Instant) -> Duration {
        let mut state = self.state.lock().expect("rate limiter");
        let (tokens, last) = *state;
        let refilled = (tokens + now.saturating_duration_since(last).as_secs_f64() * self.rate)
            .min(self.burst);
        let left = refilled - 1.0;
        *state = (left, now.max(last));
        if left >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-left / self.rate)
        }
    }

    /// Waits for a token.
    pub async fn acquire(&self) {
        let wait = self.reserve(Instant::now());
        if !wait.is_zero() {
            tracing::debug!(?wait, "vault request budget reached; waiting");
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_then_holds_the_rate() {
        let l = RateLimiter::new(1.0, 3.0);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(l.reserve(t0), Duration::ZERO);
        }
        assert_eq!(l.reserve(t0), Duration::from_secs(1));
        assert_eq!(l.reserve(t0), Duration::from_secs(2));
    }

    #[test]
    fn refills_up_to_the_burst_only() {
        let l = RateLimiter::new(10.0, 5.0);
        let t0 = Instant::now();
        for _ in 0..5 {
            l.reserve(t0);
        }
        let later = t0 + Duration::from_secs(60);
        for _ in 0..5 {
            assert_eq!(l.reserve(later), Duration::ZERO);
        }
        assert!(
            l.reserve(later) > Duration::ZERO,
            "no more than the burst after a long pause"
        );
    }

    #[test]
    fn ten_seconds_never_exceed_the_key_vault_limit() {
        let l = RateLimiter::default();
        let t0 = Instant::now();
        // Everyone asks at once: count how many may go within 10 s.
        let within = (0..10_000)
            .filter(|_| l.reserve(t0) < Duration::from_secs(10))
            .count();
        assert!(within <= 3_300, "{within} requests in 10 s");
        assert!(within < 4_000);
    }
}
