//! A token bucket per socket: `burst` requests at once, `per_second` sustained.

use tokio::time::Instant;

#[derive(Debug)]
pub struct TokenBucket {
    capacity: f64,
    per_second: f64,
    tokens: f64,
    refilled: Instant,
}

impl TokenBucket {
    pub fn new(burst: u32, per_second: u32) -> TokenBucket {
        TokenBucket {
            capacity: f64::from(burst.max(1)),
            per_second: f64::from(per_second),
            tokens: f64::from(burst.max(1)),
            refilled: Instant::now(),
        }
    }

    /// Takes one token if there is one.
    pub fn try_take(&mut self) -> bool {
        let now = Instant::now();
        let elapsed = now.duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.capacity);
        self.refilled = now;
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

    #[tokio::test(start_paused = true)]
    async fn a_burst_is_allowed_then_the_sustained_rate() {
        let mut bucket = TokenBucket::new(5, 2);
        assert_eq!((0..10).filter(|_| bucket.try_take()).count(), 5);
        tokio::time::advance(Duration::from_millis(500)).await;
        assert!(
            bucket.try_take(),
            "one token refilled after half a second at 2/s"
        );
        assert!(!bucket.try_take());
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(
            (0..10).filter(|_| bucket.try_take()).count(),
            5,
            "never above the burst"
        );
    }
}
