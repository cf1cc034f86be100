//! Token buckets, the one rate limiter both processes use: per socket and per accept loop on
//! the edge, per sender, per user and per topic on the backend.
//!
//! Time is tokio's clock, so tests run with paused time instead of sleeping.

use std::{collections::HashMap, hash::Hash, sync::Mutex, time::Duration};

use tokio::time::Instant;

use crate::support::lock;

/// `burst` tokens at once, refilled at `per_second`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    capacity: f64,
    per_second: f64,
    tokens: f64,
    refilled: Instant,
}

impl TokenBucket {
    /// A full bucket. A `burst` of 0 is taken as 1, so a bucket always lets something through.
    pub fn new(burst: u32, per_second: f64) -> TokenBucket {
        let capacity = f64::from(burst.max(1));
        TokenBucket {
            capacity,
            per_second: per_second.max(0.0),
            tokens: capacity,
            refilled: Instant::now(),
        }
    }

    /// Takes one token if there is one.
    pub fn try_take(&mut self) -> bool {
        self.refill(Instant::now());
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// How long until [`TokenBucket::try_take`] can succeed: zero when a token is there now.
    /// `None` when the bucket never refills (a rate of 0).
    pub fn wait(&mut self) -> Option<Duration> {
        self.refill(Instant::now());
        let missing = 1.0 - self.tokens;
        if missing <= 0.0 {
            Some(Duration::ZERO)
        } else if self.per_second > 0.0 {
            Some(Duration::from_secs_f64(missing / self.per_second))
        } else {
            None
        }
    }

    /// A full bucket behaves exactly like a new one, so a table may forget it.
    fn is_full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= self.capacity
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.capacity);
        self.refilled = now;
    }
}

/// A [`TokenBucket`] per key (a user, a sender, a topic), created full on first use.
///
/// Memory is bounded by the keys active within one refill time: a full bucket is the same as
/// none, so when the table has doubled since its last sweep it forgets every full one. The
/// sweep's cost is paid once per doubling, so a call stays O(1) amortized however many keys
/// are live.
#[derive(Debug)]
pub struct RateTable<K> {
    burst: u32,
    per_second: f64,
    state: Mutex<Table<K>>,
}

#[derive(Debug)]
struct Table<K> {
    buckets: HashMap<K, TokenBucket>,
    sweep_at: usize,
}

/// Keys tracked before the first sweep.
const FIRST_SWEEP: usize = 1024;

impl<K: Hash + Eq + Clone> RateTable<K> {
    pub fn new(burst: u32, per_second: f64) -> RateTable<K> {
        RateTable {
            burst,
            per_second,
            state: Mutex::new(Table {
                buckets: HashMap::new(),
                sweep_at: FIRST_SWEEP,
            }),
        }
    }

    /// Takes one token from `key`'s bucket; false when it is empty.
    pub fn allow<Q>(&self, key: &Q) -> bool
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let mut table = lock(&self.state);
        if let Some(bucket) = table.buckets.get_mut(key) {
            return bucket.try_take();
        }
        if table.buckets.len() >= table.sweep_at {
            let now = Instant::now();
            table.buckets.retain(|_, bucket| !bucket.is_full(now));
            table.sweep_at = (table.buckets.len() * 2).max(FIRST_SWEEP);
        }
        let mut bucket = TokenBucket::new(self.burst, self.per_second);
        let allowed = bucket.try_take();
        table.buckets.insert(key.to_owned(), bucket);
        allowed
    }

    /// Keys with a bucket right now (full ones may linger until the next sweep).
    pub fn tracked(&self) -> usize {
        lock(&self.state).buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_burst_is_allowed_then_the_sustained_rate() {
        let mut bucket = TokenBucket::new(5, 2.0);
        assert_eq!((0..10).filter(|_| bucket.try_take()).count(), 5);
        assert_eq!(bucket.wait(), Some(Duration::from_millis(500)));
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!(bucket.wait(), Some(Duration::ZERO));
        assert!(bucket.try_take(), "one token after half a second at 2/s");
        assert!(!bucket.try_take());
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(
            (0..10).filter(|_| bucket.try_take()).count(),
            5,
            "never above the burst"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_bucket_that_never_refills_says_so() {
        let mut bucket = TokenBucket::new(1, 0.0);
        assert!(bucket.try_take());
        assert_eq!(bucket.wait(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn each_key_has_its_own_bucket() {
        let table = RateTable::<String>::new(3, 1.0);
        assert_eq!((0..5).filter(|_| table.allow("alice")).count(), 3);
        assert!(table.allow("bob"), "alice's flood leaves bob alone");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(table.allow("alice"));
        assert!(!table.allow("alice"));
    }

    #[tokio::test(start_paused = true)]
    async fn idle_keys_are_forgotten_and_active_ones_kept() {
        let table = RateTable::<String>::new(2, 1.0);
        // One busy key, then many keys that each take one token and go idle.
        assert!(table.allow("busy"));
        assert!(table.allow("busy"));
        for n in 1..FIRST_SWEEP {
            table.allow(&format!("idle-{n}"));
        }
        assert_eq!(
            table.tracked(),
            FIRST_SWEEP,
            "no sweep before the table is full"
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        // The idle keys are full again; the busy one took one token back and stays empty-ish.
        assert!(table.allow("busy"));
        table.allow("one-more");
        assert_eq!(
            table.tracked(),
            2,
            "the sweep kept the busy key and the new one"
        );
        assert!(!table.allow("busy"), "the busy key kept its state");
    }

    #[tokio::test(start_paused = true)]
    async fn the_table_stays_bounded_by_the_keys_active_in_one_refill_time() {
        let table = RateTable::<u32>::new(1, 1.0);
        for round in 0..20u32 {
            for n in 0..2000 {
                table.allow(&(round * 2000 + n));
            }
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        assert!(
            table.tracked() <= 2 * 2000 + FIRST_SWEEP,
            "tracked {} keys after 40,000 distinct ones",
            table.tracked()
        );
    }
}
