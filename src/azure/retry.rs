//! Capped exponential backoff with jitter for calls to Azure.

use std::time::Duration;

/// How often and how patiently a call to Azure is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// Delay before the first retry (doubled each time, then jittered).
    pub base_delay: Duration,
    /// Upper bound of one delay.
    pub max_delay: Duration,
    /// Longest `Retry-After` honoured; a longer one ends the retries.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 4,
            base_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(8),
            max_retry_after: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// Delay after failed attempt number `attempt` (1-based): exponential,
    /// capped, with "equal jitter" (between half and all of it).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exp = self
            .base_delay
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
        let capped = exp.min(self.max_delay);
        let half = capped / 2;
        half + half.mul_f64(jitter_fraction())
    }
}

/// A random fraction in [0, 1).
pub fn jitter_fraction() -> f64 {
    let mut bytes = [0u8; 8];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .expect("the system random source works");
    (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_stays_under_the_cap() {
        let p = RetryPolicy::default();
        for attempt in 1..=20 {
            let d = p.backoff(attempt);
            let full = p
                .base_delay
                .saturating_mul(1 << (attempt - 1).min(16))
                .min(p.max_delay);
            assert!(
                d >= full / 2 && d <= full,
                "attempt {attempt}: {d:?} vs {full:?}"
            );
        }
        assert!(p.backoff(20) <= p.max_delay);
    }
}
