//! The broker: where a topic's offsets are assigned, its history is kept, and its events are
//! fanned out to every node's [`Hub`](crate::hub::Hub).
//!
//! Implementations: [`memory::MemoryBroker`] (one node, embedded; history lives in this
//! process, so a restart starts new epochs). All implementations must pass the shared
//! conformance suite in [`conformance`]. [`redis::RedisBroker`] (several nodes sharing one
//! Redis: offsets, history and fan-out across the cluster).

pub mod memory;
pub mod redis;
pub(crate) mod redis_connection;
#[cfg(test)]
pub(crate) mod redis_server;

#[cfg(test)]
mod conformance;

use std::{fmt::Debug, sync::Arc, time::Duration};

use async_trait::async_trait;
use herald_proto::{
    v1::{Signal, StreamPosition},
    wkt::Struct,
};

use crate::{event::SharedEvent, hub::HubItem, topic::Topic};

/// An event before the broker gives it a place in its topic.
#[derive(Debug, Clone)]
pub struct EventDraft {
    pub topic: Topic,
    pub event_type: String,
    pub data: Option<Struct>,
    /// The `sub` of the principal publishing.
    pub publisher: String,
    /// A retry by the same publisher with the same key within the idempotency window
    /// publishes nothing new. Keys are scoped per (topic, publisher): nobody can claim
    /// another publisher's key.
    pub idempotency_key: Option<String>,
}

/// What [`Broker::append`] did with an event whose offset its transaction fixed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// Cached and handed to every node's hub.
    Delivered,
    /// The cache already had this offset (a relay retry): nothing was delivered again.
    AlreadyCached,
}

/// Where a published event landed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub position: StreamPosition,
    pub id: String,
    /// True when this was a retry of an earlier publish with the same idempotency key.
    pub duplicate: bool,
}

/// Where a history read starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HistoryStart {
    /// From the oldest retained event.
    Oldest,
    /// After this position (exclusive).
    After(StreamPosition),
}

/// A slice of a topic's history.
#[derive(Debug, Clone)]
pub struct HistoryPage {
    /// Events after the start, oldest first, consecutive offsets, at most `limit`.
    pub events: Vec<Arc<SharedEvent>>,
    /// The topic's current top (offset of its newest event, and its epoch).
    pub top: StreamPosition,
    /// False when history cannot continue from the start position: the epoch differs, the
    /// position is older than the oldest retained event, or it lies beyond the top. `events`
    /// is then empty: never a partial replay.
    pub covered: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The backing store is unreachable or failed.
    #[error("broker backend failed: {0}")]
    Backend(String),
    /// A global memory cap is reached and nothing could be freed for this write; the message
    /// names the cap and its setting.
    #[error("{0}")]
    AtCapacity(String),
}

/// What a broker holds, and how often its global caps were reached (for observability).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BrokerStats {
    /// Topic logs held.
    pub topics: u64,
    /// Encoded bytes of history held, all topics together.
    pub history_bytes: u64,
    /// Idempotency keys remembered, all topics together.
    pub idempotency_keys: u64,
    /// Logs evicted (least recently used, nobody listening) to stay within a cap.
    pub evicted_topics: u64,
    /// Events trimmed from histories to stay within the byte cap.
    pub trimmed_events: u64,
    /// Writes refused because a cap was reached and nothing could be freed.
    pub refused_at_capacity: u64,
    /// Idempotency keys forgotten early because their publisher reached its share
    /// (`retention.max_idempotency_keys_per_publisher`).
    pub evicted_keys: u64,
    /// Latest keyed signals kept (the in-memory broker; the Redis broker does not count what
    /// Redis holds).
    pub kept_signals: u64,
    /// Keyed signals delivered but not kept because a bound was reached
    /// (`topics.max_signal_keys_per_topic`, `topics.max_kept_signals`), by this node.
    pub unkept_signals: u64,
}

/// The contract every broker keeps.
///
/// - **Offsets.** `publish` gives each event on a topic the next offset (1, 2, 3…) of the
///   topic's current epoch, appends it to history and hands it to every node's hub, as one
///   atomic step per topic: concurrent publishers never produce a gap, a duplicate offset, or
///   a hub delivery order that differs from offset order.
/// - **Visibility.** An event delivered to a hub is already readable through `history`
///   (until it is trimmed). A subscriber that registers with the hub *before* reading history
///   therefore misses nothing: every event is in the history it reads or arrives live after.
/// - **Epochs.** A topic's epoch changes whenever its history or offsets were lost (restart of
///   an in-memory broker, eviction of an idle topic). Offsets restart at 1 in a new epoch. A
///   topic nothing was published to reports offset 0 of the epoch its first publish will have.
/// - **Reads keep nothing.** `history` of a topic never written to creates no state: any
///   number of reads of distinct names costs the broker nothing it keeps.
/// - **Global bounds.** What all topics hold together is bounded (topics, history bytes,
///   idempotency keys). At a bound the broker frees what is safe to free (history is a cache
///   window; logs nobody listens to can be evicted, which starts a new epoch) and refuses a
///   publish only when nothing can be freed, with [`BrokerError::AtCapacity`].
/// - **Retention.** History is bounded per topic by count and age; `history` reports
///   `covered = false` rather than skipping trimmed events.
/// - **Idempotency.** A publish whose idempotency key was seen on the topic *from the same
///   publisher* within the window returns the first `Published` (with `duplicate = true`) and
///   delivers nothing.
/// - **Idempotency share.** Each publisher (token `sub`) has a share of the keys remembered,
///   all topics together (`retention.max_idempotency_keys_per_publisher`): a publisher at its
///   share that publishes with a new key forgets its own oldest key first, never another
///   publisher's; each key forgotten so is counted (`evicted_keys`).
/// - **Ephemeral items.** `broadcast` fans an item (a presence change, a signal) out to every
///   node's hub without an offset or history.
/// - **Latest keyed signals.** `keep_signal` keeps a signal as the latest of its (topic, key)
///   for a TTL, for every node: `latest_signals` on any node returns the kept signals of a
///   topic that are younger than their TTL, one per key, oldest first. Expired signals are
///   never returned and cost nothing after their TTL. At most
///   `topics.max_signal_keys_per_topic` keys per topic (the in-memory broker also bounds all
///   topics together, `topics.max_kept_signals`): at a bound a new key is not kept (answered
///   `false` and counted in `unkept_signals`; the signal is still delivered: at most once), a
///   kept key is replaced in place. `latest_signals` keeps nothing. Like `history`, it sees
///   every signal kept before it was called, or the subscriber registered before it gets the
///   signal live (`keep_signal` comes before the signal's `broadcast`).
/// - **Durable topics: a cache in front of the database.** `append` takes an event whose
///   offset and epoch its database transaction fixed (the relay calls it in offset order per
///   topic). The broker never renumbers it:
///   - an offset at or below the cached top of the same epoch is already known: nothing is
///     delivered (`AlreadyCached`), so a relay that retries after a crash cannot duplicate;
///   - the next offset (top + 1) is cached and delivered;
///   - an offset further ahead, or another epoch (the cache restarted, or missed events), makes
///     the cache start over at this event: older cached events are dropped, the event is
///     delivered, and subscribers that see the gap read the missing range from the database.
///
///   `history` then covers only the cached range; a durable reader falls back to the
///   database (the history of record) whenever `covered` is false.
#[async_trait]
pub trait Broker: Send + Sync + Debug + 'static {
    async fn publish(&self, draft: EventDraft) -> Result<Published, BrokerError>;

    async fn append(&self, event: Arc<SharedEvent>) -> Result<Appended, BrokerError>;

    async fn history(
        &self,
        topic: &Topic,
        start: HistoryStart,
        limit: usize,
    ) -> Result<HistoryPage, BrokerError>;

    async fn broadcast(&self, topic: &Topic, item: HubItem) -> Result<(), BrokerError>;

    /// Keeps `signal` (its `key` is not empty) as the latest of its (topic, key) for `ttl`.
    /// False when a bound left no room for its key (see the trait docs).
    async fn keep_signal(
        &self,
        topic: &Topic,
        signal: Arc<Signal>,
        ttl: Duration,
    ) -> Result<bool, BrokerError>;

    /// The kept signals of `topic` younger than `ttl` (the kind's TTL, as given to
    /// `keep_signal`; the Redis broker fixes each signal's expiry when it is kept), one per
    /// key, oldest first.
    async fn latest_signals(
        &self,
        topic: &Topic,
        ttl: Duration,
    ) -> Result<Vec<Signal>, BrokerError>;

    /// What the broker holds and how often its bounds were reached.
    fn stats(&self) -> BrokerStats;

    /// Hub deliveries so far per lane ([`crate::metrics::LANES`] order).
    fn deliveries(&self) -> [u64; 3];

    /// Whether the broker can take publishes now (readiness). An in-memory broker always can;
    /// a Redis broker only while Redis answers and its pub/sub connection is up.
    async fn is_ready(&self) -> bool {
        true
    }

    /// Which broker this is, as an edge is told (`Edge/Describe`).
    fn kind(&self) -> herald_proto::v1::Broker;

    /// Which shared broker this is: backends that report the same id deliver each other's
    /// events (`Edge/Describe`). `None` for a broker only this process uses.
    async fn cluster_id(&self) -> Result<Option<String>, BrokerError> {
        Ok(None)
    }
}
