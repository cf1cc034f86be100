//! The in-memory broker: one node, history in this process.
//!
//! Each topic has a log guarded by its own mutex; `publish` assigns the offset, appends to
//! history and delivers to the hub while holding it, which is what makes offsets gapless and
//! hub order equal to offset order. Epochs are random per topic log, so a restart (or the
//! eviction of an idle topic) is visible to resuming clients as an epoch change.

use std::{
    collections::{HashMap, VecDeque},
    fmt,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use async_trait::async_trait;
use herald_proto::{
    support::lock,
    v1::{Event, StreamPosition},
};
use serde::Deserialize;
use tokio::time::Instant;

use super::{Appended, Broker, BrokerError, EventDraft, HistoryPage, HistoryStart, Published};
use crate::{
    event::SharedEvent,
    hub::{Hub, HubItem},
    topic::Topic,
};

/// How much history a topic keeps, and for how long idempotency keys are remembered.
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
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            history_max_events: 1000,
            history_max_age: Duration::from_secs(600),
            idempotency_window: Duration::from_secs(300),
        }
    }
}

struct TopicLog {
    epoch: String,
    top: u64,
    history: VecDeque<(Instant, Arc<SharedEvent>)>,
    /// Idempotency keys by (publisher, key).
    keys: HashMap<(String, String), (Instant, Published)>,
    /// The same keys oldest first, so expiry costs what expires, not what is kept.
    key_ages: VecDeque<(Instant, (String, String))>,
    touched: Instant,
}

impl TopicLog {
    fn new(now: Instant) -> TopicLog {
        TopicLog {
            epoch: format!("{:016x}", rand::random::<u64>()),
            top: 0,
            history: VecDeque::new(),
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

    fn trim(&mut self, retention: &RetentionConfig, now: Instant) {
        while self.history.len() > retention.history_max_events {
            self.history.pop_front();
        }
        while let Some((at, _)) = self.history.front() {
            if now.duration_since(*at) <= retention.history_max_age {
                break;
            }
            self.history.pop_front();
        }
        while let Some((at, _)) = self.key_ages.front() {
            if now.duration_since(*at) < retention.idempotency_window {
                break;
            }
            if let Some((_, key)) = self.key_ages.pop_front() {
                self.keys.remove(&key);
            }
        }
    }

    /// The offset of the oldest retained event, or `top + 1` when nothing is retained.
    fn oldest(&self) -> u64 {
        self.history
            .front()
            .map_or(self.top + 1, |(_, event)| event.offset)
    }
}

pub struct MemoryBroker {
    hub: Arc<Hub>,
    retention: RetentionConfig,
    topics: Mutex<HashMap<Topic, Arc<Mutex<TopicLog>>>>,
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
        }
    }

    fn log(&self, topic: &Topic) -> Arc<Mutex<TopicLog>> {
        lock(&self.topics)
            .entry(topic.clone())
            .or_insert_with(|| Arc::new(Mutex::new(TopicLog::new(Instant::now()))))
            .clone()
    }

    /// Trims every topic and forgets topics that are idle: nothing retained, no idempotency
    /// key remembered, no local subscriber, untouched for the history age. Their next use
    /// starts a new epoch.
    pub fn sweep(&self) -> usize {
        let now = Instant::now();
        let mut topics = lock(&self.topics);
        let before = topics.len();
        topics.retain(|topic, log| {
            // Someone else holds the log (a publish in progress): keep it this round.
            if Arc::strong_count(log) > 1 {
                return true;
            }
            let mut log = lock(log);
            log.trim(&self.retention, now);
            let idle = log.history.is_empty()
                && log.keys.is_empty()
                && now.duration_since(log.touched) > self.retention.history_max_age;
            !idle || self.hub.has_subscribers(topic)
        });
        before - topics.len()
    }

    /// Runs [`MemoryBroker::sweep`] periodically until `shutdown` fires.
    pub async fn run_sweeper(
        self: Arc<Self>,
        every: Duration,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        let mut ticker = tokio::time::interval(every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticker.tick() => {
                    let forgotten = self.sweep();
                    if forgotten > 0 {
                        tracing::debug!(forgotten, "forgot idle topics");
                    }
                }
            }
        }
    }
}

#[async_trait]
impl Broker for MemoryBroker {
    async fn publish(&self, draft: EventDraft) -> Result<Published, BrokerError> {
        let log = self.log(&draft.topic);
        let mut log = lock(&log);
        let now = Instant::now();
        log.touched = now;
        log.trim(&self.retention, now);
        let key = draft
            .idempotency_key
            .map(|key| (draft.publisher.clone(), key));
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
        log.history.push_back((now, event.clone()));
        log.trim(&self.retention, now);
        let published = Published {
            position: log.position(),
            id,
            duplicate: false,
        };
        if let Some(key) = key {
            log.key_ages.push_back((now, key.clone()));
            log.keys.insert(key, (now, published.clone()));
        }
        // Delivered while the log is locked: hub order is offset order.
        self.hub.deliver(&draft.topic, HubItem::Event(event));
        Ok(published)
    }

    async fn append(&self, event: Arc<SharedEvent>) -> Result<Appended, BrokerError> {
        let topic = match Topic::parse(&event.topic) {
            Ok(topic) => topic,
            Err(error) => return Err(BrokerError::Backend(format!("append: {error}"))),
        };
        let log = self.log(&topic);
        let mut log = lock(&log);
        let now = Instant::now();
        log.touched = now;
        if event.epoch == log.epoch && event.offset <= log.top {
            return Ok(Appended::AlreadyCached);
        }
        if event.epoch != log.epoch || event.offset != log.top + 1 {
            // Start over at this event: the cache covers from here on.
            log.epoch.clone_from(&event.epoch);
            log.history.clear();
        }
        log.top = event.offset;
        log.history.push_back((now, event.clone()));
        log.trim(&self.retention, now);
        self.hub.deliver(&topic, HubItem::Event(event));
        Ok(Appended::Delivered)
    }

    async fn history(
        &self,
        topic: &Topic,
        start: HistoryStart,
        limit: usize,
    ) -> Result<HistoryPage, BrokerError> {
        let log = self.log(topic);
        let mut log = lock(&log);
        let now = Instant::now();
        log.touched = now;
        log.trim(&self.retention, now);
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
        self.hub.deliver(topic, item);
        Ok(())
    }
}
