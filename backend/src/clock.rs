//! The wall clock of the domain services: what time it is for a rule (a rate-limit window,
//! do-not-disturb, a snooze, an expiry). Rules never read the clock themselves; their caller
//! passes `now` in, read from a [`Clock`], so tests move time without waiting.
//!
//! Production uses [`SystemClock`]. [`ShiftedClock`] is the system clock plus an offset that
//! tests advance: time still flows, and jumps forward on demand (past a rate-limit window, to
//! a snooze's end); frozen, it moves only when advanced (a throttle window that must not end
//! by itself). Timers of the runtime (`tokio::time`) are a different clock and are not
//! affected.

use std::{
    fmt::Debug,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

/// A source of the current wall-clock time.
pub trait Clock: Send + Sync + Debug + 'static {
    fn now(&self) -> SystemTime;
}

/// The clock the domain services share.
pub type SharedClock = Arc<dyn Clock>;

/// The operating system's clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// The system clock moved forward by an offset that only grows, optionally frozen (see the
/// module docs).
#[derive(Debug, Default)]
pub struct ShiftedClock {
    ahead_ms: AtomicU64,
    /// The system time the clock stopped at.
    frozen: Mutex<Option<SystemTime>>,
}

impl ShiftedClock {
    pub fn new() -> ShiftedClock {
        ShiftedClock::default()
    }

    /// Moves the clock forward by `by` (millisecond precision).
    pub fn advance(&self, by: Duration) {
        let by = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        self.ahead_ms.fetch_add(by, Ordering::SeqCst);
    }

    /// Stops the clock where it is: from now on it moves only by [`ShiftedClock::advance`].
    pub fn freeze(&self) {
        let mut frozen = herald_proto::support::lock(&self.frozen);
        frozen.get_or_insert_with(SystemTime::now);
    }

    /// How far ahead of the system clock this clock is.
    pub fn ahead(&self) -> Duration {
        Duration::from_millis(self.ahead_ms.load(Ordering::SeqCst))
    }
}

impl Clock for ShiftedClock {
    fn now(&self) -> SystemTime {
        let base = (*herald_proto::support::lock(&self.frozen)).unwrap_or_else(SystemTime::now);
        base + self.ahead()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shifted_clock_jumps_forward_by_what_it_is_advanced() {
        let clock = ShiftedClock::new();
        let before = SystemTime::now();
        clock.advance(Duration::from_secs(3600));
        let now = clock.now();
        assert!(now >= before + Duration::from_secs(3600));
        assert!(now < SystemTime::now() + Duration::from_secs(3601));
        assert_eq!(clock.ahead(), Duration::from_secs(3600));
    }

    #[test]
    fn a_frozen_clock_moves_only_when_advanced() {
        let clock = ShiftedClock::new();
        clock.freeze();
        let at = clock.now();
        while SystemTime::now() <= at {
            std::hint::spin_loop(); // until the system clock has moved on
        }
        assert_eq!(clock.now(), at);
        clock.advance(Duration::from_secs(1));
        assert_eq!(clock.now(), at + Duration::from_secs(1));
    }
}
