//! The in-memory broker: one node, history in this process.
//!
//! Each topic has a log guarded by its own mutex; `publish` assigns the offset, appends to
//! history and delivers to the hub while holding it, which is what makes offsets gapless and
//! hub order equal to offset order.
//!
//! Memory is bounded globally, not only per topic: the number of topic logs, the encoded
//! bytes of history and the idempotency keys of all topics together each have a cap
//! ([`RetentionConfig`]). Only writes (`publish`, `append`) create a log; a read of a topic
//! without one answers from nothing and keeps nothing. When a cap is reached the least
//! recently used logs nobody listens to are evicted first (a memory topic's history is a cache
//! window: a resume from an evicted log answers `recovered = false`); then history of other
//! logs is trimmed oldest first; only what cannot be freed that way is refused, with
//! [`BrokerError::AtCapacity`] naming the setting.
//!
//! Epochs: a topic without a log reports offset 0 of the epoch its next log will have, so a
//! subscriber that attached before the first publish sees that publish in its own epoch. The
//! epoch is a hash of the topic, a per-process secret and a generation counter of the topic's
//! bucket, bumped whenever a log of that bucket is forgotten: a log created after another of
//! the same topic was evicted always starts a new epoch, and a restart starts new epochs for
//! every topic.

use std::{
    collections::{HashMap, VecDeque},
    fmt,
    hash::{BuildHasher, RandomState},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, SystemTime},
};

use async_trait::async_trait;
use herald_proto::{
    support::lock,
    v1::{Event, Signal, StreamPosition},
};
use prost::Message;
use serde::Deserialize;
use tokio::time::Instant;

use super::{
    Appended, Broker, BrokerError, BrokerStats, EventDraft, HistoryPage, HistoryStart, Published,
};
use crate::{
    event::SharedEvent,
    hub::{Hub, HubItem},
    signals::{SignalBoard, SignalLimits},
    topic::Topic,
};

/// How much history a topic keeps, for how long idempotency keys are remembered, and how much
/// all topics together may hold.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// The most events kept per topic.
    pub history_max_events: usize,
    /// Events older than this are trimmed.
    #[serde(with = "herald_proto::support::duration")]
    pub history_max_age: Duration,
    /// A publish retried with the same idempotency key within this window is not repeated.
    #[serde(with = "herald_proto::support::duration")]
    pub idempotency_window: Duration,
    /// The most topic logs kept at once, all topics together.
    pub max_topics: usize,
    /// The most encoded bytes of history kept, all topics together.
    pub max_history_bytes: usize,
    /// The most idempotency keys remembered, all topics together.
    pub max_idempotency_keys: usize,
    /// The most idempotency keys remembered for one publisher (token `sub`), all topics
    /// together. A publisher at its share that publishes with a new key forgets its own
    /// oldest key, so a flood of unique keys never pushes out other publishers' keys.
    pub max_idempotency_keys_per_publisher: usize,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            history_max_events: 1000,
            history_max_age: Duration::from_secs(600),
            idempotency_window: Duration::from_secs(300),
            max_topics: 100_000,
            max_history_bytes: 256 * 1024 * 1024,
            max_idempotency_keys: 1_000_000,
            max_idempotency_keys_per_publisher: 100_000,
        }
    }
}

/// Buckets of epoch generations (see the module header): a forgotten log changes the next
/// epoch of the topics of its bucket only.
const GENERATION_BUCKETS: usize = 1 << 16;

/// What all logs hold together, kept exact by every push, trim and eviction.
#[derive(Debug, Default)]
struct Totals {
    history_bytes: AtomicUsize,
    keys: AtomicUsize,
    evicted_topics: AtomicU64,
    trimmed_events: AtomicU64,
    refused: AtomicU64,
    /// Keys forgotten because their publisher reached its share.
    evicted_keys: AtomicU64,
    /// Keyed signals not kept because a bound was reached.
    unkept_signals: AtomicU64,
    /// Hub deliveries per lane: memory publishes, relayed durable events, broadcasts
    /// (signals, presence) — [`crate::metrics::LANES`] order.
    delivered: [AtomicU64; 3],
}

struct TopicLog {
    epoch: String,
    top: u64,
    history: VecDeque<(Instant, Arc<SharedEvent>)>,
    /// Encoded bytes of `history`.
    bytes: usize,
    /// Idempotency keys by (publisher, key).
    keys: HashMap<(String, String), (Instant, Published)>,
    /// The same keys oldest first, so expiry costs what expires, not what is kept.
    key_ages: VecDeque<(Instant, (String, String))>,
    touched: Instant,
}

impl TopicLog {
    fn new(epoch: String, now: Instant) -> TopicLog {
        TopicLog {
            epoch,
            top: 0,
            history: VecDeque::new(),
            bytes: 0,
            keys: HashMap::new(),
            key_ages: VecDeque::new(),
            touched: now,
        }
    }

    fn position(&self) -> StreamPosition {
        StreamPosition {
            offset: self.top,
            epoch: self.epoch.clone(),
        }
    }

    fn push(&mut self, now: Instant, event: Arc<SharedEvent>, totals: &Totals) {
        let size = event.encoded_len();
        self.bytes += size;
        totals.history_bytes.fetch_add(size, Ordering::Relaxed);
        self.history.push_back((now, event));
    }

    fn pop_oldest(&mut self, totals: &Totals) -> Option<usize> {
        let (_, event) = self.history.pop_front()?;
        let size = event.encoded_len();
        self.bytes -= size;
        totals.history_bytes.fetch_sub(size, Ordering::Relaxed);
        Some(size)
    }

    fn clear_history(&mut self, totals: &Totals) {
        while self.pop_oldest(totals).is_some() {}
    }

    fn remember(
        &mut self,
        now: Instant,
        key: (String, String),
        published: Published,
        totals: &Totals,
    ) {
        self.key_ages.push_back((now, key.clone()));
        if self.keys.insert(key, (now, published)).is_none() {
            totals.keys.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn trim(&mut self, retention: &RetentionConfig, now: Instant, totals: &Totals) {
        while self.history.len() > retention.history_max_events {
            self.pop_oldest(totals);
        }
        while let Some((at, _)) = self.history.front() {
            if now.duration_since(*at) <= retention.history_max_age {
                break;
            }
            self.pop_oldest(totals);
        }
        self.expire_keys(now, retention.idempotency_window, totals);
    }

    /// Forgets the keys older than `window`, oldest first, and returns how many entries it
    /// looked at: what expired plus the one that stopped it, never the keys still live.
    fn expire_keys(&mut self, now: Instant, window: Duration, totals: &Totals) -> usize {
        let mut examined = 0;
        while let Some((at, _)) = self.key_ages.front() {
            examined += 1;
            if now.duration_since(*at) < window {
                break;
            }
            if let Some((_, key)) = self.key_ages.pop_front()
                && self.keys.remove(&key).is_some()
            {
                totals.keys.fetch_sub(1, Ordering::Relaxed);
            }
        }
        examined
    }

    /// Gives back what this log counted in the totals (it is being forgotten).
    fn release(&mut self, totals: &Totals) {
        self.clear_history(totals);
        totals.keys.fetch_sub(self.keys.len(), Ordering::Relaxed);
        self.keys.clear();
        self.key_ages.clear();
    }

    /// The offset of the oldest retained event, or `top + 1` when nothing is retained.
    fn oldest(&self) -> u64 {
        self.history
            .front()
            .map_or(self.top + 1, |(_, event)| event.offset)
    }
}

/// Which cap a write needs room under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Room {
    /// One more topic log.
    Topic,
    /// This many more bytes of history.
    Bytes(usize),
    /// One more idempotency key.
    Key,
}

/// Per publisher, its keys oldest first: when each was claimed, on which topic, the key.
type PublisherKeys = HashMap<String, VecDeque<(Instant, Topic, String)>>;

pub struct MemoryBroker {
    hub: Arc<Hub>,
    retention: RetentionConfig,
    topics: Mutex<HashMap<Topic, Arc<Mutex<TopicLog>>>>,
    totals: Totals,
    /// Keys the epoch hash: epochs are unpredictable and differ after a restart.
    secret: RandomState,
    generations: Box<[AtomicU32]>,
    /// Each publisher's keys, oldest first (`max_idempotency_keys_per_publisher`). An entry
    /// may outlive its key (expired, or its log forgotten); such entries only count against
    /// their publisher's own share until the window drops them.
    publisher_keys: Mutex<PublisherKeys>,
    /// The latest keyed signals (`topics.max_kept_signals`, `max_signal_keys_per_topic`).
    signals: SignalBoard,
}

impl fmt::Debug for MemoryBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryBroker")
            .field("retention", &self.retention)
            .finish_non_exhaustive()
    }
}

impl MemoryBroker {
    pub fn new(hub: Arc<Hub>, retention: RetentionConfig) -> MemoryBroker {
        MemoryBroker {
            hub,
            retention,
            topics: Mutex::new(HashMap::new()),
            totals: Totals::default(),
            secret: RandomState::new(),
            generations: (0..GENERATION_BUCKETS).map(|_| AtomicU32::new(0)).collect(),
            publisher_keys: Mutex::new(HashMap::new()),
            signals: SignalBoard::with_limits(SignalLimits::default()),
        }
    }

    /// The same broker with these bounds of the kept signals (the default ones otherwise).
    #[must_use]
    pub fn with_signal_limits(mut self, limits: SignalLimits) -> MemoryBroker {
        self.signals = SignalBoard::with_limits(limits);
        self
    }

    /// Counts a new key against its publisher's share; at the share, forgets that
    /// publisher's oldest key (never another publisher's). Called before the write locks its
    /// own log, so the eviction may lock any log.
    fn claim_publisher_share(&self, topic: &Topic, publisher: &str, key: &str) {
        let now = Instant::now();
        let window = self.retention.idempotency_window;
        let share = self.retention.max_idempotency_keys_per_publisher.max(1);
        let mut evicted = Vec::new();
        {
            let mut all = lock(&self.publisher_keys);
            let queue = all.entry(publisher.to_owned()).or_default();
            while queue
                .front()
                .is_some_and(|(at, _, _)| now.duration_since(*at) >= window)
            {
                queue.pop_front();
            }
            while queue.len() >= share {
                if let Some(oldest) = queue.pop_front() {
                    evicted.push(oldest);
                }
            }
            queue.push_back((now, topic.clone(), key.to_owned()));
        }
        for (_, topic, key) in evicted {
            if let Some(log) = self.existing(&topic)
                && lock(&log)
                    .keys
                    .remove(&(publisher.to_owned(), key))
                    .is_some()
            {
                self.totals.keys.fetch_sub(1, Ordering::Relaxed);
                self.totals.evicted_keys.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Drops the per-publisher entries whose window has passed, and publishers left with none.
    fn sweep_publisher_keys(&self, now: Instant) {
        let window = self.retention.idempotency_window;
        lock(&self.publisher_keys).retain(|_, queue| {
            while queue
                .front()
                .is_some_and(|(at, _, _)| now.duration_since(*at) >= window)
            {
                queue.pop_front();
            }
            !queue.is_empty()
        });
    }

    fn generation(&self, topic: &Topic) -> &AtomicU32 {
        let bucket = self.secret.hash_one(("bucket", topic)) as usize % GENERATION_BUCKETS;
        &self.generations[bucket]
    }

    /// The epoch the next log of `topic` gets (and what a read of a topic without a log reports).
    fn fresh_epoch(&self, topic: &Topic) -> String {
        let generation = self.generation(topic).load(Ordering::Acquire);
        format!(
            "{:016x}",
            self.secret.hash_one(("epoch", topic, generation))
        )
    }

    /// The position a topic without a log reports.
    fn empty_top(&self, topic: &Topic) -> StreamPosition {
        StreamPosition {
            offset: 0,
            epoch: self.fresh_epoch(topic),
        }
    }

    /// Forgets a log nobody else holds: its totals are given back and its topic's next log
    /// starts a new epoch.
    fn forget(&self, topic: &Topic, log: &Mutex<TopicLog>) {
        lock(log).release(&self.totals);
        self.generation(topic).fetch_add(1, Ordering::AcqRel);
    }

    /// The log of `topic` when it has one; reads never create one.
    fn existing(&self, topic: &Topic) -> Option<Arc<Mutex<TopicLog>>> {
        lock(&self.topics).get(topic).cloned()
    }

    /// The log of `topic`, created for a write when the topic cap allows it (after evicting
    /// idle logs if needed).
    fn log_for_write(&self, topic: &Topic) -> Result<Arc<Mutex<TopicLog>>, BrokerError> {
        let mut topics = lock(&self.topics);
        if let Some(log) = topics.get(topic) {
            return Ok(log.clone());
        }
        if topics.len() >= self.retention.max_topics {
            self.make_room(&mut topics, Room::Topic);
            if topics.len() >= self.retention.max_topics {
                return Err(self.at_capacity(Room::Topic));
            }
        }
        let log = Arc::new(Mutex::new(TopicLog::new(
            self.fresh_epoch(topic),
            Instant::now(),
        )));
        topics.insert(topic.clone(), log.clone());
        Ok(log)
    }

    /// Makes room under the cap `room` names, beyond the need by a batch (1/64 of the cap) so
    /// the scan over all logs is paid once per many writes: first by evicting the least
    /// recently used logs nobody listens to or holds, then (for history bytes) by trimming
    /// the oldest events of the least recently used logs that are not held. Logs in use by a
    /// write right now are never touched.
    fn make_room(&self, topics: &mut HashMap<Topic, Arc<Mutex<TopicLog>>>, room: Room) {
        let retention = &self.retention;
        let enough = |topics: &HashMap<Topic, Arc<Mutex<TopicLog>>>| match room {
            Room::Topic => {
                topics.len() + 1 + retention.max_topics / 64 <= retention.max_topics.max(1)
            }
            Room::Bytes(_) => enough_bytes(&self.totals, retention, room),
            Room::Key => {
                self.totals.keys.load(Ordering::Relaxed) + 1 + retention.max_idempotency_keys / 64
                    <= retention.max_idempotency_keys.max(1)
            }
        };
        // Candidates: logs only the map holds, least recently used first.
        let mut candidates: Vec<(Instant, Topic, bool)> = topics
            .iter()
            .filter(|(_, log)| Arc::strong_count(log) == 1)
            .map(|(topic, log)| {
                let touched = lock(log).touched;
                (touched, topic.clone(), self.hub.has_subscribers(topic))
            })
            .collect();
        candidates.sort_unstable_by_key(|(touched, _, _)| *touched);
        let mut evicted = 0u64;
        for (_, topic, listened) in &candidates {
            if enough(topics) {
                break;
            }
            if *listened {
                continue;
            }
            if let Some(log) = topics.remove(topic) {
                self.forget(topic, &log);
                evicted += 1;
            }
        }
        self.totals
            .evicted_topics
            .fetch_add(evicted, Ordering::Relaxed);
        if evicted > 0 {
            tracing::debug!(
                evicted,
                ?room,
                "evicted idle topic logs to stay within the broker's caps"
            );
        }
        if !matches!(room, Room::Bytes(_)) {
            return;
        }
        // Trimming history never disturbs a live subscriber: only a resume from the trimmed
        // range answers `recovered = false`.
        let mut trimmed = 0u64;
        for (_, topic, _) in &candidates {
            if enough(topics) {
                break;
            }
            let Some(log) = topics.get(topic) else {
                continue;
            };
            let mut log = lock(log);
            while !enough_bytes(&self.totals, retention, room)
                && log.pop_oldest(&self.totals).is_some()
            {
                trimmed += 1;
            }
        }
        self.totals
            .trimmed_events
            .fetch_add(trimmed, Ordering::Relaxed);
    }

    fn at_capacity(&self, room: Room) -> BrokerError {
        self.totals.refused.fetch_add(1, Ordering::Relaxed);
        let r = &self.retention;
        let message = match room {
            Room::Topic => format!(
                "the broker holds {} topics, its limit (retention.max_topics), and every one is in use; \
                 retry shortly",
                r.max_topics
            ),
            Room::Bytes(_) => format!(
                "the broker's history holds {} bytes, its limit (retention.max_history_bytes), and none \
                 can be freed; retry shortly",
                r.max_history_bytes
            ),
            Room::Key => format!(
                "the broker remembers {} idempotency keys, its limit (retention.max_idempotency_keys); \
                 retry shortly or publish without an idempotency key",
                r.max_idempotency_keys
            ),
        };
        tracing::debug!(%message, "broker at capacity");
        BrokerError::AtCapacity(message)
    }

    /// Makes room for one more key (if the publish carries a new one) and `bytes` more history
    /// before a write locks its own log.
    fn reserve(&self, bytes: usize, new_key: bool) -> Result<(), BrokerError> {
        let r = &self.retention;
        if new_key && self.totals.keys.load(Ordering::Relaxed) >= r.max_idempotency_keys {
            self.make_room(&mut lock(&self.topics), Room::Key);
            if self.totals.keys.load(Ordering::Relaxed) >= r.max_idempotency_keys {
                return Err(self.at_capacity(Room::Key));
            }
        }
        if self.totals.history_bytes.load(Ordering::Relaxed) + bytes > r.max_history_bytes {
            self.make_room(&mut lock(&self.topics), Room::Bytes(bytes));
            if self.totals.history_bytes.load(Ordering::Relaxed) + bytes > r.max_history_bytes {
                return Err(self.at_capacity(Room::Bytes(bytes)));
            }
        }
        Ok(())
    }

    /// What the broker holds and how often its caps were reached.
    /// Hub deliveries so far per lane ([`crate::metrics::LANES`] order).
    pub fn deliveries(&self) -> [u64; 3] {
        self.totals
            .delivered
            .each_ref()
            .map(|count| count.load(Ordering::Relaxed))
    }

    pub fn stats(&self) -> BrokerStats {
        BrokerStats {
            topics: lock(&self.topics).len() as u64,
            history_bytes: self.totals.history_bytes.load(Ordering::Relaxed) as u64,
            idempotency_keys: self.totals.keys.load(Ordering::Relaxed) as u64,
            evicted_topics: self.totals.evicted_topics.load(Ordering::Relaxed),
            trimmed_events: self.totals.trimmed_events.load(Ordering::Relaxed),
            refused_at_capacity: self.totals.refused.load(Ordering::Relaxed),
            evicted_keys: self.totals.evicted_keys.load(Ordering::Relaxed),
            kept_signals: self.signals.kept() as u64,
            unkept_signals: self.totals.unkept_signals.load(Ordering::Relaxed),
        }
    }

    /// Trims every topic and forgets topics that are idle: nothing retained, no idempotency
    /// key remembered, no local subscriber, untouched for the history age. Their next use
    /// starts a new epoch.
    pub fn sweep(&self) -> usize {
        let now = Instant::now();
        self.sweep_publisher_keys(now);
        let mut topics = lock(&self.topics);
        let before = topics.len();
        topics.retain(|topic, log| {
            // Someone else holds the log (a publish in progress): keep it this round.
            if Arc::strong_count(log) > 1 {
                return true;
            }
            let idle = {
                let mut log = lock(log);
                log.trim(&self.retention, now, &self.totals);
                log.history.is_empty()
                    && log.keys.is_empty()
                    && now.duration_since(log.touched) > self.retention.history_max_age
            };
            let keep = !idle || self.hub.has_subscribers(topic);
            if !keep {
                self.forget(topic, log);
            }
            keep
        });
        before - topics.len()
    }

    /// Runs [`MemoryBroker::sweep`] periodically until `shutdown` fires; reports when a cap
    /// was reached since the last round.
    pub async fn run_sweeper(
        self: Arc<Self>,
        every: Duration,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        let mut ticker = tokio::time::interval(every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut reported = self.stats();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticker.tick() => {
                    let forgotten = self.sweep();
                    if forgotten > 0 {
                        tracing::debug!(forgotten, "forgot idle topics");
                    }
                    let stats = self.stats();
                    if stats.evicted_topics > reported.evicted_topics
                        || stats.trimmed_events > reported.trimmed_events
                        || stats.refused_at_capacity > reported.refused_at_capacity
                    {
                        tracing::warn!(
                            topics = stats.topics,
                            history_bytes = stats.history_bytes,
                            idempotency_keys = stats.idempotency_keys,
                            evicted = stats.evicted_topics - reported.evicted_topics,
                            trimmed = stats.trimmed_events - reported.trimmed_events,
                            refused = stats.refused_at_capacity - reported.refused_at_capacity,
                            "the broker reached its memory caps (retention.max_topics, \
                             max_history_bytes, max_idempotency_keys)"
                        );
                    }
                    reported = stats;
                }
            }
        }
    }
}

fn enough_bytes(totals: &Totals, retention: &RetentionConfig, room: Room) -> bool {
    let Room::Bytes(need) = room else { return true };
    totals.history_bytes.load(Ordering::Relaxed) + need + retention.max_history_bytes / 64
        <= retention.max_history_bytes
}

/// About what an event built from `draft` encodes to (its offset, id and time are not known
/// yet): enough to make room before the log is locked.
fn estimated_size(draft: &EventDraft) -> usize {
    draft.data.as_ref().map_or(0, Message::encoded_len)
        + draft.event_type.len()
        + draft.publisher.len()
        + draft.topic.as_str().len()
        + 96
}

#[async_trait]
impl Broker for MemoryBroker {
    async fn publish(&self, draft: EventDraft) -> Result<Published, BrokerError> {
        let log = self.log_for_write(&draft.topic)?;
        let key = draft
            .idempotency_key
            .clone()
            .map(|key| (draft.publisher.clone(), key));
        let known_key = key
            .as_ref()
            .is_some_and(|key| lock(&log).keys.contains_key(key));
        if !known_key {
            if let Some((publisher, key)) = &key {
                self.claim_publisher_share(&draft.topic, publisher, key);
            }
            self.reserve(estimated_size(&draft), key.is_some())?;
        }
        let mut log = lock(&log);
        let now = Instant::now();
        log.touched = now;
        log.trim(&self.retention, now, &self.totals);
        if let Some(key) = &key
            && let Some((_, first)) = log.keys.get(key)
        {
            return Ok(Published {
                duplicate: true,
                ..first.clone()
            });
        }

        log.top += 1;
        let id = uuid::Uuid::now_v7().to_string();
        let event = Arc::new(SharedEvent::new(Event {
            topic: draft.topic.to_string(),
            offset: log.top,
            epoch: log.epoch.clone(),
            id: id.clone(),
            time: Some(herald_proto::timestamp(SystemTime::now())),
            r#type: draft.event_type,
            data: draft.data,
            publisher: draft.publisher,
            body: None,
        }));
        log.push(now, event.clone(), &self.totals);
        log.trim(&self.retention, now, &self.totals);
        let published = Published {
            position: log.position(),
            id,
            duplicate: false,
        };
        if let Some(key) = key {
            log.remember(now, key, published.clone(), &self.totals);
        }
        // Delivered while the log is locked: hub order is offset order.
        let delivered = self.hub.deliver(&draft.topic, HubItem::Event(event));
        self.totals.delivered[0].fetch_add(delivered as u64, Ordering::Relaxed);
        Ok(published)
    }

    async fn append(&self, event: Arc<SharedEvent>) -> Result<Appended, BrokerError> {
        let topic = match Topic::parse(&event.topic) {
            Ok(topic) => topic,
            Err(error) => return Err(BrokerError::Backend(format!("append: {error}"))),
        };
        // The database holds the event: when the caps leave no room to cache it, it is still
        // delivered, and readers of the uncached range read the database.
        let log = match self.log_for_write(&topic) {
            Ok(log) => self.reserve(event.encoded_len(), false).ok().map(|()| log),
            Err(_) => None,
        };
        let Some(log) = log else {
            let delivered = self.hub.deliver(&topic, HubItem::Event(event));
            self.totals.delivered[1].fetch_add(delivered as u64, Ordering::Relaxed);
            return Ok(Appended::Delivered);
        };
        let mut log = lock(&log);
        let now = Instant::now();
        log.touched = now;
        if event.epoch == log.epoch && event.offset <= log.top {
            return Ok(Appended::AlreadyCached);
        }
        if event.epoch != log.epoch || event.offset != log.top + 1 {
            // Start over at this event: the cache covers from here on.
            log.epoch.clone_from(&event.epoch);
            log.clear_history(&self.totals);
        }
        log.top = event.offset;
        log.push(now, event.clone(), &self.totals);
        log.trim(&self.retention, now, &self.totals);
        let delivered = self.hub.deliver(&topic, HubItem::Event(event));
        self.totals.delivered[1].fetch_add(delivered as u64, Ordering::Relaxed);
        Ok(Appended::Delivered)
    }

    async fn history(
        &self,
        topic: &Topic,
        start: HistoryStart,
        limit: usize,
    ) -> Result<HistoryPage, BrokerError> {
        let Some(log) = self.existing(topic) else {
            // No log: nothing published here (or it was forgotten). Answer as an empty log of
            // the epoch the next one will have, and keep nothing.
            let top = self.empty_top(topic);
            let covered = match start {
                HistoryStart::Oldest => true,
                HistoryStart::After(since) => since.epoch == top.epoch && since.offset == 0,
            };
            return Ok(HistoryPage {
                events: Vec::new(),
                top,
                covered,
            });
        };
        let mut log = lock(&log);
        let now = Instant::now();
        log.touched = now;
        log.trim(&self.retention, now, &self.totals);
        let top = log.position();
        let first = match start {
            HistoryStart::Oldest => log.oldest(),
            HistoryStart::After(since) => {
                let covered = since.epoch == log.epoch
                    && since.offset <= log.top
                    && since.offset + 1 >= log.oldest();
                if !covered {
                    return Ok(HistoryPage {
                        events: Vec::new(),
                        top,
                        covered: false,
                    });
                }
                since.offset + 1
            }
        };
        let skip = usize::try_from(first - log.oldest()).unwrap_or(usize::MAX);
        let events = log
            .history
            .iter()
            .skip(skip)
            .take(limit)
            .map(|(_, event)| event.clone())
            .collect();
        Ok(HistoryPage {
            events,
            top,
            covered: true,
        })
    }

    async fn broadcast(&self, topic: &Topic, item: HubItem) -> Result<(), BrokerError> {
        let delivered = self.hub.deliver(topic, item);
        self.totals.delivered[2].fetch_add(delivered as u64, Ordering::Relaxed);
        Ok(())
    }

    async fn keep_signal(
        &self,
        topic: &Topic,
        signal: Arc<Signal>,
        ttl: Duration,
    ) -> Result<bool, BrokerError> {
        let kept = self.signals.keep(topic, signal, ttl);
        if !kept {
            self.totals.unkept_signals.fetch_add(1, Ordering::Relaxed);
        }
        Ok(kept)
    }

    async fn latest_signals(
        &self,
        topic: &Topic,
        ttl: Duration,
    ) -> Result<Vec<Signal>, BrokerError> {
        Ok(self.signals.latest(topic, ttl))
    }

    fn stats(&self) -> BrokerStats {
        MemoryBroker::stats(self)
    }

    fn deliveries(&self) -> [u64; 3] {
        MemoryBroker::deliveries(self)
    }

    fn kind(&self) -> herald_proto::v1::Broker {
        herald_proto::v1::Broker::Memory
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn published(offset: u64) -> Published {
        Published {
            position: StreamPosition {
                offset,
                epoch: "e".into(),
            },
            id: offset.to_string(),
            duplicate: false,
        }
    }

    /// Finding 8 of the hardening review: expiry once cost O(keys) under the topic's lock on
    /// every publish and read. It now costs what expires.
    #[tokio::test(start_paused = true)]
    async fn finding_8_expiry_looks_at_what_expires_not_at_every_live_key() {
        let totals = Totals::default();
        let window = Duration::from_secs(300);
        let mut log = TopicLog::new("e".into(), Instant::now());
        for n in 0..10 {
            log.remember(
                Instant::now(),
                ("old".into(), n.to_string()),
                published(n),
                &totals,
            );
        }
        tokio::time::advance(Duration::from_secs(200)).await;
        for n in 10..100_010 {
            log.remember(
                Instant::now(),
                ("live".into(), n.to_string()),
                published(n),
                &totals,
            );
        }
        tokio::time::advance(Duration::from_secs(150)).await;

        let examined = log.expire_keys(Instant::now(), window, &totals);
        assert_eq!(examined, 11, "the 10 expired keys and the first live one");
        assert_eq!(log.keys.len(), 100_000);
        assert_eq!(totals.keys.load(Ordering::Relaxed), 100_000);
        assert_eq!(
            log.expire_keys(Instant::now(), window, &totals),
            1,
            "with nothing expired, one look"
        );
    }
}
