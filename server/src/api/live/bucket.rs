//! The rate limit of a WebSocket connection's messages.

use tokio::time::Instant;

use crate::LiveConfig;

/// A token bucket: `rate_burst` messages at once, `rate_per_sec` more each second.
pub(super) struct TokenBucket {
    capacity: f64,
    tokens: f64,
    per_sec: f64,
    last: Instant,
}

impl TokenBucket {
    pub(super) fn new(limits: &LiveConfig, now: Instant) -> Self {
        let capacity = f64::from(limits.rate_burst);
        TokenBucket {
            capacity,
            tokens: capacity,
            per_sec: limits.rate_per_sec.max(0.0),
            last: now,
        }
    }

    /// Takes a token if there is one.
    pub(super) fn take(&mut self, now: Instant) -> bool {
        let earned = now.saturating_duration_since(self.last).as_secs_f64() * self.per_sec;
        self.tokens = (self.tokens + earned).min(self.capacity);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn token_bucket_refills_at_its_rate() {
        let limits = LiveConfig {
            rate_burst: 3,
            rate_per_sec: 2.0,
            ..LiveConfig::default()
        };
        let start = Instant::now();
        let mut bucket = TokenBucket::new(&limits, start);
        let taken: Vec<bool> = (0..5).map(|_| bucket.take(start)).collect();
        assert_eq!(taken, [true, true, true, false, false]);
        // Half a second earns one token; ten seconds fill the bucket, no more.
        assert!(bucket.take(start + Duration::from_millis(500)));
        assert!(!bucket.take(start + Duration::from_millis(500)));
        let later = start + Duration::from_secs(10);
        let taken: Vec<bool> = (0..4).map(|_| bucket.take(later)).collect();
        assert_eq!(taken, [true, true, true, false]);
    }
}
