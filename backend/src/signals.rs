//! The ephemeral lane: signals (typing, a courier's position, cursors) have no offset and no
//! history. Two pieces of state support them, both bounded:
//!
//! - the latest keyed signal per (topic, key), kept for its kind's TTL, so a new subscriber
//!   sees the courier's last position at once. It is the broker's
//!   ([`Broker::keep_signal`](crate::broker::Broker::keep_signal)), so every node of a cluster
//!   sees the same; the in-memory broker keeps it in a [`SignalBoard`], the Redis broker in one
//!   hash per topic. Bounded by [`SignalLimits`]: at a bound, expired entries are dropped
//!   first; a new key that still finds no room is delivered but not kept (a signal is
//!   at-most-once by contract), and counted. A key already kept is always replaced in place.
//! - the per-sender rate (`topics.signal_rate`), a [`RateTable`](herald_proto::rate::RateTable)
//!   the node keeps, so one client cannot flood a topic.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use herald_proto::{support::lock, v1::Signal};
use tokio::time::Instant;

use crate::{lanes::TopicsConfig, topic::Topic};

/// The bounds of the kept signals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignalLimits {
    /// The most keys kept per topic (`topics.max_signal_keys_per_topic`), on every broker.
    pub max_keys_per_topic: usize,
    /// The most keys kept over all topics (`topics.max_kept_signals`): the in-memory broker's
    /// bound. The Redis broker's total is bounded by its per-topic bound, the TTL and Redis's
    /// `maxmemory`.
    pub max_kept: usize,
}

impl SignalLimits {
    pub fn new(topics: &TopicsConfig) -> SignalLimits {
        SignalLimits {
            max_keys_per_topic: topics.max_signal_keys_per_topic.max(1),
            max_kept: topics.max_kept_signals,
        }
    }
}

impl Default for SignalLimits {
    fn default() -> Self {
        SignalLimits::new(&TopicsConfig::default())
    }
}

#[derive(Debug)]
pub struct SignalBoard {
    max_kept: usize,
    max_per_topic: usize,
    inner: Mutex<Board>,
}

#[derive(Debug, Default)]
struct Board {
    topics: HashMap<Topic, HashMap<String, (Instant, Arc<Signal>)>>,
    kept: usize,
}

impl SignalBoard {
    /// A board of at most `max_kept` keys over all topics, with no per-topic bound below it.
    pub fn new(max_kept: usize) -> SignalBoard {
        SignalBoard::with_limits(SignalLimits {
            max_keys_per_topic: usize::MAX,
            max_kept,
        })
    }

    pub fn with_limits(limits: SignalLimits) -> SignalBoard {
        SignalBoard {
            max_kept: limits.max_kept,
            max_per_topic: limits.max_keys_per_topic.max(1),
            inner: Mutex::new(Board::default()),
        }
    }

    /// Keeps `signal` as the latest of its (topic, key) for `ttl`. False when a bound left no
    /// room for a new key: the signal is then not kept.
    pub fn keep(&self, topic: &Topic, signal: Arc<Signal>, ttl: Duration) -> bool {
        let now = Instant::now();
        let mut board = lock(&self.inner);
        if board.kept >= self.max_kept {
            board.sweep(now, ttl);
        }
        let held = board.topics.get(topic);
        let is_new = !held.is_some_and(|keys| keys.contains_key(&signal.key));
        if is_new && held.is_some_and(|keys| keys.len() >= self.max_per_topic) {
            board.sweep_topic(topic, now, ttl);
            if board
                .topics
                .get(topic)
                .is_some_and(|keys| keys.len() >= self.max_per_topic)
            {
                tracing::debug!(%topic, "the topic keeps its most signal keys; the signal is delivered but not kept");
                return false;
            }
        }
        if is_new && board.kept >= self.max_kept {
            tracing::debug!(%topic, "signal board full; the signal is delivered but not kept");
            return false;
        }
        let key = signal.key.clone();
        board
            .topics
            .entry(topic.clone())
            .or_default()
            .insert(key, (now, signal));
        if is_new {
            board.kept += 1;
        }
        true
    }

    /// The kept signals of `topic` younger than `ttl`, oldest first.
    pub fn latest(&self, topic: &Topic, ttl: Duration) -> Vec<Signal> {
        let now = Instant::now();
        let mut board = lock(&self.inner);
        let Some(keys) = board.topics.get_mut(topic) else {
            return Vec::new();
        };
        let before = keys.len();
        keys.retain(|_, (at, _)| now.duration_since(*at) < ttl);
        let removed = before - keys.len();
        let mut fresh: Vec<_> = keys.values().cloned().collect();
        if keys.is_empty() {
            board.topics.remove(topic);
        }
        board.kept -= removed;
        fresh.sort_by_key(|(at, _)| *at);
        fresh.into_iter().map(|(_, s)| (*s).clone()).collect()
    }

    pub fn kept(&self) -> usize {
        lock(&self.inner).kept
    }
}

impl Board {
    /// Drops entries older than `ttl` (the TTL of the topic being written: a conservative
    /// bound, since every entry of a shorter TTL is older than it is allowed to be anyway).
    fn sweep(&mut self, now: Instant, ttl: Duration) {
        let mut removed = 0;
        self.topics.retain(|_, keys| {
            let before = keys.len();
            keys.retain(|_, (at, _)| now.duration_since(*at) < ttl);
            removed += before - keys.len();
            !keys.is_empty()
        });
        self.kept -= removed;
    }

    /// Drops the entries of `topic` older than `ttl`.
    fn sweep_topic(&mut self, topic: &Topic, now: Instant, ttl: Duration) {
        let Some(keys) = self.topics.get_mut(topic) else {
            return;
        };
        let before = keys.len();
        keys.retain(|_, (at, _)| now.duration_since(*at) < ttl);
        let removed = before - keys.len();
        if keys.is_empty() {
            self.topics.remove(topic);
        }
        self.kept -= removed;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signal(key: &str, n: f64) -> Arc<Signal> {
        Arc::new(Signal {
            topic: "order:1".into(),
            r#type: "courier.location".into(),
            key: key.into(),
            data: Some(herald_proto::wkt::Struct {
                fields: [(
                    "n".to_owned(),
                    herald_proto::wkt::Value {
                        kind: Some(herald_proto::wkt::value::Kind::NumberValue(n)),
                    },
                )]
                .into(),
            }),
            ..Signal::default()
        })
    }

    fn topic() -> Topic {
        Topic::parse("order:1").unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn the_latest_signal_per_key_is_kept_for_its_ttl_and_not_after() {
        let board = SignalBoard::new(10);
        let ttl = Duration::from_secs(30);
        board.keep(&topic(), signal("courier-7", 1.0), ttl);
        board.keep(&topic(), signal("courier-7", 2.0), ttl);
        let latest = board.latest(&topic(), ttl);
        assert_eq!(latest.len(), 1);
        assert_eq!(latest[0], *signal("courier-7", 2.0));
        tokio::time::advance(Duration::from_secs(31)).await;
        assert!(board.latest(&topic(), ttl).is_empty());
        assert_eq!(board.kept(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_board_keeps_no_new_keys_until_old_ones_expire() {
        let board = SignalBoard::new(2);
        let ttl = Duration::from_secs(10);
        board.keep(&topic(), signal("a", 1.0), ttl);
        board.keep(&topic(), signal("b", 1.0), ttl);
        board.keep(&topic(), signal("c", 1.0), ttl);
        assert_eq!(board.latest(&topic(), ttl).len(), 2);
        board.keep(&topic(), signal("a", 2.0), ttl);
        assert_eq!(board.kept(), 2, "an existing key is replaced in place");
        tokio::time::advance(Duration::from_secs(11)).await;
        board.keep(&topic(), signal("c", 1.0), ttl);
        assert_eq!(board.latest(&topic(), ttl).len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_topic_at_its_key_bound_keeps_no_new_key_and_other_topics_still_keep() {
        let board = SignalBoard::with_limits(SignalLimits {
            max_keys_per_topic: 2,
            max_kept: 10,
        });
        let ttl = Duration::from_secs(10);
        assert!(board.keep(&topic(), signal("a", 1.0), ttl));
        assert!(board.keep(&topic(), signal("b", 1.0), ttl));
        assert!(!board.keep(&topic(), signal("c", 1.0), ttl), "not kept");
        assert!(
            board.keep(&topic(), signal("a", 2.0), ttl),
            "replaced in place"
        );
        let other = Topic::parse("order:2").unwrap();
        assert!(board.keep(&other, signal("c", 1.0), ttl));
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(
            board.keep(&topic(), signal("c", 1.0), ttl),
            "room again after the TTL"
        );
        assert_eq!(board.latest(&topic(), ttl).len(), 1);
    }
}
