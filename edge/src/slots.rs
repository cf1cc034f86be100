//! Counted slots per key (a user, a client address): at most `max` held at once per key,
//! each released when its [`Slot`] is dropped.

use std::{
    collections::HashMap,
    fmt,
    hash::Hash,
    sync::{Arc, Mutex},
};

pub(crate) struct Slots<K> {
    held: Mutex<HashMap<K, usize>>,
    /// 0: no limit.
    max: usize,
}

impl<K> fmt::Debug for Slots<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Slots")
            .field("max", &self.max)
            .finish_non_exhaustive()
    }
}

impl<K: Hash + Eq + Clone> Slots<K> {
    pub(crate) fn new(max: usize) -> Arc<Slots<K>> {
        Arc::new(Slots {
            held: Mutex::new(HashMap::new()),
            max,
        })
    }

    pub(crate) fn max(&self) -> usize {
        self.max
    }

    /// A slot for `key`, or `None` when `key` holds `max` already.
    pub(crate) fn try_acquire(self: &Arc<Self>, key: &K) -> Option<Slot<K>> {
        if self.max == 0 {
            return Some(Slot {
                slots: None,
                key: key.clone(),
            });
        }
        let mut held = herald_proto::support::lock(&self.held);
        let count = held.entry(key.clone()).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(Slot {
            slots: Some(self.clone()),
            key: key.clone(),
        })
    }
}

/// One held slot; dropping it frees it.
pub(crate) struct Slot<K: Hash + Eq> {
    slots: Option<Arc<Slots<K>>>,
    key: K,
}

impl<K: Hash + Eq> Slot<K> {
    pub(crate) fn key(&self) -> &K {
        &self.key
    }
}

impl<K: Hash + Eq> fmt::Debug for Slot<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Slot").finish_non_exhaustive()
    }
}

impl<K: Hash + Eq> Drop for Slot<K> {
    fn drop(&mut self) {
        let Some(slots) = &self.slots else { return };
        let mut held = herald_proto::support::lock(&slots.held);
        if let Some(count) = held.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                held.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_holds_at_most_max_slots_and_dropping_one_frees_it() {
        let slots = Slots::new(2);
        let a = slots.try_acquire(&"a").unwrap();
        let _b = slots.try_acquire(&"a").unwrap();
        assert!(slots.try_acquire(&"a").is_none());
        assert!(slots.try_acquire(&"other").is_some());
        drop(a);
        assert!(slots.try_acquire(&"a").is_some());
        let unlimited = Slots::new(0);
        let all: Vec<_> = (0..10)
            .map(|_| unlimited.try_acquire(&1).unwrap())
            .collect();
        assert_eq!(all.len(), 10);
    }
}
