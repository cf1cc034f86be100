//! Small helpers every Herald crate needs once: durations in configuration files, and locks
//! that survive a panic elsewhere.

use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Durations in configuration files are written like `10m`, `90s` or `1h 30m` (humantime).
///
/// ```
/// #[derive(serde::Deserialize)]
/// struct Limits {
///     #[serde(with = "herald_proto::support::duration")]
///     timeout: std::time::Duration,
/// }
/// ```
pub mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    /// Parses a humantime string into a [`Duration`].
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        parse(&text).map_err(serde::de::Error::custom)
    }

    /// Parses `text` (for custom deserializers); the error quotes it.
    pub fn parse(text: &str) -> Result<Duration, String> {
        humantime::parse_duration(text).map_err(|e| format!("`{text}`: {e}"))
    }
}

// Poison-tolerant guards. A lock is poisoned when a thread panicked while holding it; Herald's
// shared maps and queues are locked only for one operation at a time (an insert, a removal, a
// push) that leaves them consistent before anything in it can panic, so the data behind a
// poisoned lock is still valid and one panicked task must not take every later caller down
// with it. Use these only for locks whose critical sections keep that promise.

/// Locks `mutex`, ignoring poison (see the module's rule above).
pub fn lock<T: ?Sized>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Read-locks `lock`, ignoring poison (see the module's rule above).
pub fn read<T: ?Sized>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Write-locks `lock`, ignoring poison (see the module's rule above).
pub fn write<T: ?Sized>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, time::Duration};

    use super::*;

    #[test]
    fn durations_are_read_as_humantime() {
        let text = |s| serde::de::value::StrDeserializer::<serde::de::value::Error>::new(s);
        assert_eq!(
            duration::deserialize(text("1m 30s")).unwrap(),
            Duration::from_secs(90)
        );
        assert!(duration::deserialize(text("soon")).is_err());
    }

    #[test]
    fn a_poisoned_lock_still_hands_out_its_data() {
        let shared = Arc::new(Mutex::new(1));
        let poisoner = shared.clone();
        let _ = std::thread::spawn(move || {
            let _guard = poisoner.lock().unwrap();
            panic!("poison the lock");
        })
        .join();
        assert!(shared.is_poisoned());
        *lock(&shared) += 1;
        assert_eq!(*lock(&shared), 2);
    }
}
