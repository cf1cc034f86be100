//! Lanes: which path a topic's events take, decided by its kind (`[topics]` in the config).
//!
//! - **durable**: every offset-bearing event is committed to the database, whose transaction
//!   gives it the topic's next offset; the database is the history of record and the broker a
//!   cache in front of it. Resume reaches back as far as retention keeps, across restarts.
//! - **memory**: the broker assigns offsets and keeps a bounded history (count and age); a
//!   restart starts a new epoch.
//!
//! Signals (ephemeral, no offset) are not a lane of a kind: any topic may carry them. Their
//! per-kind TTL for the latest keyed value lives here too, next to the other per-kind rules.

use std::{collections::BTreeMap, time::Duration};

use serde::{Deserialize, Deserializer};

use crate::topic::{Topic, TopicKind};

/// Where a topic's events go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    Durable,
    Memory,
}

/// How long a durable kind keeps its events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KindRetention {
    /// Events older than this are purged; `"forever"` keeps them (until the domain deletes
    /// them, as deployments do).
    #[serde(deserialize_with = "age_or_forever")]
    pub max_age: Option<Duration>,
    /// The most events kept per topic; 0 means no count limit.
    pub max_events: u64,
}

impl Default for KindRetention {
    fn default() -> Self {
        KindRetention {
            max_age: Some(Duration::from_secs(30 * 24 * 3600)),
            max_events: 0,
        }
    }
}

impl KindRetention {
    pub const FOREVER: KindRetention = KindRetention {
        max_age: None,
        max_events: 0,
    };
}

/// `[topics]`: lanes per kind, durable retention, and the signal lane's limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TopicsConfig {
    /// Kinds whose events are committed to the database.
    pub durable: Vec<String>,
    /// Kinds whose events live in the broker's bounded history only.
    pub memory: Vec<String>,
    /// Retention of durable kinds, by kind; kinds left out keep 30 days.
    pub retention: BTreeMap<String, KindRetention>,
    /// How long a durable publish's idempotency key is remembered.
    #[serde(with = "herald_proto::support::duration")]
    pub idempotency_window: Duration,
    /// How often the retention purge runs.
    #[serde(with = "herald_proto::support::duration")]
    pub purge_interval: Duration,
    /// The most events one purge statement deletes (the purge loops until done).
    pub purge_batch: u64,
    /// By kind: how long the latest keyed signal per (topic, key) is kept and sent to new
    /// subscribers. Kinds left out keep none.
    #[serde(deserialize_with = "durations_by_kind")]
    pub signal_ttl: BTreeMap<String, Duration>,
    /// Signals one sender (a token's `sub`) may send per second, sustained.
    pub signal_rate: u32,
    /// Signals one sender may send in a burst.
    pub signal_burst: u32,
    /// The most keyed signals the in-memory broker keeps, over all topics.
    pub max_kept_signals: usize,
    /// The most keys whose latest signal is kept per topic, on every broker (the Redis
    /// broker's bound: its total is this, the TTL and Redis's `maxmemory`).
    pub max_signal_keys_per_topic: usize,
    /// Publishes (`Rooms/Publish`, the edge's `publish`) one topic takes per second on this
    /// node, sustained, from every publisher together: what one hot topic may cost its
    /// subscribers. 0 for no limit.
    pub publish_rate: u32,
    /// Publishes one topic takes in a burst.
    pub publish_burst: u32,
}

impl Default for TopicsConfig {
    fn default() -> Self {
        TopicsConfig {
            durable: ["user", "role", "group", "conv", "order", "deployment"]
                .map(String::from)
                .to_vec(),
            memory: vec!["room".into()],
            retention: BTreeMap::from([("deployment".to_owned(), KindRetention::FOREVER)]),
            idempotency_window: Duration::from_secs(24 * 3600),
            purge_interval: Duration::from_secs(60),
            purge_batch: 1000,
            signal_ttl: BTreeMap::from([("order".to_owned(), Duration::from_secs(300))]),
            signal_rate: 20,
            signal_burst: 40,
            max_kept_signals: 100_000,
            max_signal_keys_per_topic: 1_000,
            publish_rate: 2_000,
            publish_burst: 4_000,
        }
    }
}

/// The parsed, checked form of [`TopicsConfig`]'s per-kind rules.
#[derive(Debug, Clone)]
pub struct Lanes {
    config: TopicsConfig,
    lane: [Lane; TopicKind::ALL.len()],
    retention: [KindRetention; TopicKind::ALL.len()],
    signal_ttl: [Option<Duration>; TopicKind::ALL.len()],
}

impl Default for Lanes {
    fn default() -> Self {
        Lanes::new(&TopicsConfig::default()).expect("the default topic lanes are valid")
    }
}

impl Lanes {
    /// Checks that every kind is in exactly one lane and that per-kind tables name real kinds.
    pub fn new(config: &TopicsConfig) -> Result<Lanes, String> {
        let mut lane = [None; TopicKind::ALL.len()];
        for (names, which, key) in [
            (&config.durable, Lane::Durable, "topics.durable"),
            (&config.memory, Lane::Memory, "topics.memory"),
        ] {
            for name in names {
                let kind = parse_kind(name, key)?;
                if lane[index(kind)].replace(which).is_some() {
                    return Err(format!(
                        "topics: kind `{kind}` is listed twice (in topics.durable and topics.memory, or twice in one); give it one lane"
                    ));
                }
            }
        }
        let mut lanes = [Lane::Memory; TopicKind::ALL.len()];
        for kind in TopicKind::ALL {
            lanes[index(kind)] = lane[index(kind)].ok_or_else(|| {
                format!("topics: kind `{kind}` is in neither topics.durable nor topics.memory; add it to one")
            })?;
        }
        let mut retention = [KindRetention::default(); TopicKind::ALL.len()];
        for (name, kept) in &config.retention {
            let kind = parse_kind(name, "topics.retention")?;
            if lanes[index(kind)] != Lane::Durable {
                return Err(format!(
                    "topics.retention.{kind}: `{kind}` is a memory kind; its history is set by [retention]"
                ));
            }
            retention[index(kind)] = *kept;
        }
        let mut signal_ttl = [None; TopicKind::ALL.len()];
        for (name, ttl) in &config.signal_ttl {
            let kind = parse_kind(name, "topics.signal_ttl")?;
            signal_ttl[index(kind)] = (!ttl.is_zero()).then_some(*ttl);
        }
        Ok(Lanes {
            config: config.clone(),
            lane: lanes,
            retention,
            signal_ttl,
        })
    }

    /// The settings these lanes were built from (windows, purge, signal limits).
    pub fn config(&self) -> &TopicsConfig {
        &self.config
    }

    pub fn lane(&self, kind: TopicKind) -> Lane {
        self.lane[index(kind)]
    }

    pub fn is_durable(&self, topic: &Topic) -> bool {
        self.lane(topic.kind()) == Lane::Durable
    }

    pub fn retention(&self, kind: TopicKind) -> KindRetention {
        self.retention[index(kind)]
    }

    /// The durable kinds, with their retention.
    pub fn durable_kinds(&self) -> impl Iterator<Item = (TopicKind, KindRetention)> + '_ {
        TopicKind::ALL
            .into_iter()
            .filter(|kind| self.lane(*kind) == Lane::Durable)
            .map(|kind| (kind, self.retention(kind)))
    }

    pub fn signal_ttl(&self, kind: TopicKind) -> Option<Duration> {
        self.signal_ttl[index(kind)]
    }
}

fn index(kind: TopicKind) -> usize {
    TopicKind::ALL
        .iter()
        .position(|k| *k == kind)
        .expect("every kind is in TopicKind::ALL")
}

fn parse_kind(name: &str, key: &str) -> Result<TopicKind, String> {
    name.parse::<TopicKind>().map_err(|e| format!("{key}: {e}"))
}

fn age_or_forever<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let text = String::deserialize(d)?;
    if text == "forever" {
        return Ok(None);
    }
    herald_proto::support::duration::parse(&text)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

fn durations_by_kind<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, Duration>, D::Error> {
    BTreeMap::<String, String>::deserialize(d)?
        .into_iter()
        .map(|(kind, text)| Ok((kind, herald_proto::support::duration::parse(&text)?)))
        .collect::<Result<_, String>>()
        .map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lanes(toml_text: &str) -> Result<Lanes, String> {
        let config: TopicsConfig = toml::from_str(toml_text).map_err(|e| e.to_string())?;
        Lanes::new(&config)
    }

    #[test]
    fn by_default_domain_kinds_are_durable_and_rooms_are_memory() {
        let lanes = Lanes::default();
        for kind in TopicKind::ALL {
            let expected = if kind == TopicKind::Room {
                Lane::Memory
            } else {
                Lane::Durable
            };
            assert_eq!(lanes.lane(kind), expected, "{kind}");
        }
        assert_eq!(
            lanes.retention(TopicKind::User).max_age,
            Some(Duration::from_secs(30 * 24 * 3600))
        );
        assert_eq!(lanes.retention(TopicKind::Deployment).max_age, None);
        assert_eq!(
            lanes.signal_ttl(TopicKind::Order),
            Some(Duration::from_secs(300))
        );
        assert_eq!(lanes.signal_ttl(TopicKind::Room), None);
    }

    #[test]
    fn a_kind_may_move_lanes_and_get_its_own_retention() {
        let lanes = lanes(
            r#"
            durable = ["user", "role", "group", "conv", "order", "deployment", "room"]
            memory = []
            [retention.room]
            max_age = "2h"
            max_events = 500
            [signal_ttl]
            room = "30s"
            "#,
        )
        .unwrap();
        assert_eq!(lanes.lane(TopicKind::Room), Lane::Durable);
        assert_eq!(
            lanes.retention(TopicKind::Room),
            KindRetention {
                max_age: Some(Duration::from_secs(7200)),
                max_events: 500
            }
        );
        assert_eq!(
            lanes.signal_ttl(TopicKind::Room),
            Some(Duration::from_secs(30))
        );
    }

    #[test]
    fn every_kind_needs_exactly_one_lane() {
        let missing = lanes(r#"durable = ["user"]"#).unwrap_err();
        assert!(missing.contains("`role` is in neither"), "{missing}");
        let twice =
            lanes(r#"durable = ["user", "role", "group", "conv", "order", "deployment", "room"]"#)
                .unwrap_err();
        assert!(twice.contains("`room` is listed twice"), "{twice}");
        let unknown = lanes(r#"memory = ["room", "chan"]"#).unwrap_err();
        assert!(unknown.contains("topics.memory"), "{unknown}");
    }

    #[test]
    fn memory_kinds_take_no_durable_retention() {
        let error = lanes("[retention.room]\nmax_age = \"1h\"").unwrap_err();
        assert!(error.contains("memory kind"), "{error}");
    }
}
