//! When to try again: exponential backoff with full jitter, reset by progress.

use std::time::Duration;

use rand::Rng;

/// Reconnect delays: the n-th consecutive failure waits a random time in
/// `[0, min(cap, base · 2ⁿ)]` ("full jitter"), so clients cut off together do not come back
/// together. Progress (an event received) starts the sequence over.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    failures: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(Duration::from_millis(100), Duration::from_secs(10))
    }
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Backoff {
        Backoff {
            base,
            cap: cap.max(base),
            failures: 0,
        }
    }

    /// The ceiling of the next delay.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.failures.min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// The delay before the next attempt; counts a failure.
    pub fn next_delay(&mut self, rng: &mut impl Rng) -> Duration {
        let ceiling = self.ceiling();
        self.failures = self.failures.saturating_add(1);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rng.random_range(0..=nanos))
    }

    /// The connection made progress: the next failure waits little again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::{SeedableRng, rngs::StdRng};

    #[test]
    fn the_ceiling_doubles_up_to_the_cap_and_a_reset_starts_over() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let mut rng = StdRng::seed_from_u64(7);
        let ceilings: Vec<u128> = (0..6)
            .map(|_| {
                let ceiling = backoff.ceiling().as_millis();
                backoff.next_delay(&mut rng);
                ceiling
            })
            .collect();
        assert_eq!(ceilings, [100, 200, 400, 800, 1000, 1000]);
        backoff.reset();
        assert_eq!(backoff.ceiling(), Duration::from_millis(100));
    }

    proptest! {
        #[test]
        fn every_delay_is_within_its_ceiling(seed: u64, failures in 0u32..80) {
            let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(10));
            let mut rng = StdRng::seed_from_u64(seed);
            for _ in 0..failures {
                let ceiling = backoff.ceiling();
                let delay = backoff.next_delay(&mut rng);
                prop_assert!(delay <= ceiling);
                prop_assert!(ceiling <= Duration::from_secs(10));
            }
        }
    }
}
