//! History: where a topic's past events are read from, one bounded page at a time.
//!
//! A memory topic's history is its broker's window. A durable topic's history of record is
//! the [`EventLog`] (the database); the broker keeps a cache of recent events in front of it,
//! read first when it covers the range. Either way a reader holds one page in memory, never
//! the whole range: a page ends at `limit` events or once its byte budget is spent.

use std::{
    fmt::Debug,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
};

use async_trait::async_trait;
use herald_proto::v1::StreamPosition;
use prost::Message;

use crate::{
    broker::{Broker, BrokerError, HistoryStart},
    event::SharedEvent,
    lanes::Lanes,
    topic::Topic,
};

/// How far back a durable topic's log reaches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogBounds {
    /// The last committed offset and the topic's epoch (offset 0 before the first event).
    pub top: StreamPosition,
    /// The oldest retained offset; `top.offset + 1` when nothing is retained.
    pub oldest: u64,
}

impl LogBounds {
    /// Whether every event after `since` is still in the log.
    pub fn covers(&self, since: &StreamPosition) -> bool {
        since.epoch == self.top.epoch
            && since.offset <= self.top.offset
            && since.offset.saturating_add(1) >= self.oldest
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The database is unreachable or busy; retrying later can succeed.
    #[error("the event log is unavailable: {0}")]
    Unavailable(String),
    #[error("the event log failed: {0}")]
    Failed(String),
}

/// The history of record of durable topics.
///
/// - **Offsets** are those the committing transactions gave: consecutive per topic, in commit
///   order, never changed afterwards. An event visible here has every lower offset of its
///   topic visible too (or purged by retention, oldest first).
/// - **Epochs** are stored with the topic and survive restarts; a topic never written to
///   reports offset 0 with the epoch it will have.
/// - `read` returns events with offsets above `after`, oldest first, consecutive, at most
///   `limit` and stopping once `max_bytes` of encoded events are reached (always at least
///   one event when any exists). Reads never create state.
#[async_trait]
pub trait EventLog: Send + Sync + Debug + 'static {
    async fn bounds(&self, topic: &Topic) -> Result<LogBounds, LogError>;

    async fn read(
        &self,
        topic: &Topic,
        after: u64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<Arc<SharedEvent>>, LogError>;
}

/// How many events, and how many encoded bytes, one page holds at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageBudget {
    pub events: usize,
    pub bytes: usize,
}

impl PageBudget {
    /// What a replay reads per page: a few hundred events, at most 1 MiB.
    pub const REPLAY: PageBudget = PageBudget {
        events: 256,
        bytes: 1024 * 1024,
    };
}

/// One page of a topic's events.
#[derive(Debug)]
pub struct Page {
    /// Consecutive events after the requested position, oldest first.
    pub events: Vec<Arc<SharedEvent>>,
    /// False when the page stopped at its budget: more events may follow at once.
    pub reached_end: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error(transparent)]
    Log(#[from] LogError),
    /// The position is no longer covered (purged by retention, trimmed from the broker's
    /// window, or of another epoch).
    #[error("history no longer covers offset {} of epoch `{}`", .0.offset, .0.epoch)]
    Gone(StreamPosition),
}

/// A page being read on its own task, so the database works on the next page while the
/// reader sends the current one. Dropping it cancels the read.
#[derive(Debug)]
pub struct PageRead {
    after: StreamPosition,
    task: tokio::task::JoinHandle<Result<Page, HistoryError>>,
}

impl PageRead {
    /// Starts reading the page after `after`; with `through`, a reader that knows offsets
    /// up to `through` are committed (see [`History::page_through`]).
    pub fn start(
        history: &History,
        topic: &Topic,
        after: StreamPosition,
        budget: PageBudget,
        through: Option<u64>,
    ) -> PageRead {
        let (history, topic, from) = (history.clone(), topic.clone(), after.clone());
        PageRead {
            after,
            task: tokio::spawn(async move {
                history.page_through(&topic, &from, budget, through).await
            }),
        }
    }

    /// The position the page starts after.
    pub fn after(&self) -> &StreamPosition {
        &self.after
    }
}

impl Future for PageRead {
    type Output = Result<Page, HistoryError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.task).poll(cx).map(|joined| {
            joined.unwrap_or_else(|join| Err(LogError::Failed(join.to_string()).into()))
        })
    }
}

impl Drop for PageRead {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads pages from the right source for each topic's lane.
#[derive(Debug, Clone)]
pub struct History {
    broker: Arc<dyn Broker>,
    log: Option<Arc<dyn EventLog>>,
    lanes: Arc<Lanes>,
    stats: Arc<HistoryStats>,
}

/// What history reads cost, for observability (and for tests that bound memory).
#[derive(Debug, Default)]
pub struct HistoryStats {
    cache_pages: AtomicU64,
    log_pages: AtomicU64,
    largest_page_events: AtomicUsize,
    largest_page_bytes: AtomicUsize,
}

impl HistoryStats {
    /// Pages served from the broker's cache or window.
    pub fn cache_pages(&self) -> u64 {
        self.cache_pages.load(Ordering::Relaxed)
    }

    /// Pages read from the event log (the database).
    pub fn log_pages(&self) -> u64 {
        self.log_pages.load(Ordering::Relaxed)
    }

    /// The most events one page held: the most a reader ever holds in memory.
    pub fn largest_page_events(&self) -> usize {
        self.largest_page_events.load(Ordering::Relaxed)
    }

    /// The most encoded bytes one page held.
    pub fn largest_page_bytes(&self) -> usize {
        self.largest_page_bytes.load(Ordering::Relaxed)
    }

    fn record(&self, from_log: bool, events: &[Arc<SharedEvent>]) -> usize {
        let counter = if from_log {
            &self.log_pages
        } else {
            &self.cache_pages
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let bytes = events.iter().map(|e| e.encoded_len()).sum();
        self.largest_page_events
            .fetch_max(events.len(), Ordering::Relaxed);
        self.largest_page_bytes.fetch_max(bytes, Ordering::Relaxed);
        bytes
    }
}

impl History {
    /// Without a `log`, every topic is read from the broker alone (durable topics then have
    /// no history of record; only tests of the core run so).
    pub fn new(broker: Arc<dyn Broker>, log: Option<Arc<dyn EventLog>>, lanes: Arc<Lanes>) -> Self {
        History {
            broker,
            log,
            lanes,
            stats: Arc::default(),
        }
    }

    pub fn stats(&self) -> &HistoryStats {
        &self.stats
    }

    pub fn lanes(&self) -> &Lanes {
        &self.lanes
    }

    fn log_of(&self, topic: &Topic) -> Option<&Arc<dyn EventLog>> {
        self.log.as_ref().filter(|_| self.lanes.is_durable(topic))
    }

    /// A durable topic's log bounds; `None` for a topic read from the broker alone.
    pub async fn bounds(&self, topic: &Topic) -> Result<Option<LogBounds>, HistoryError> {
        match self.log_of(topic) {
            Some(log) => Ok(Some(log.bounds(topic).await?)),
            None => Ok(None),
        }
    }

    /// The topic's top and whether history continues after `since` (always true without one).
    pub async fn position(
        &self,
        topic: &Topic,
        since: Option<&StreamPosition>,
    ) -> Result<(StreamPosition, bool), HistoryError> {
        if let Some(log) = self.log_of(topic) {
            let bounds = log.bounds(topic).await?;
            let covered = since.is_none_or(|since| bounds.covers(since));
            return Ok((bounds.top, covered));
        }
        let start = match since {
            Some(since) => HistoryStart::After(since.clone()),
            None => HistoryStart::Oldest,
        };
        let page = self.broker.history(topic, start, 0).await?;
        Ok((page.top, page.covered))
    }

    /// Events after `after` (same epoch), from the broker when it covers them, else from the
    /// log. `Gone` when neither does.
    pub async fn page(
        &self,
        topic: &Topic,
        after: &StreamPosition,
        budget: PageBudget,
    ) -> Result<Page, HistoryError> {
        self.page_through(topic, after, budget, None).await
    }

    /// [`History::page`] for a reader that was told `through` is committed: the broker's cache
    /// trails the log by the relay's lag, so a cache page that ends short of `through` is read
    /// from the log instead. A subscriber needs no such bound (the live stream carries what the
    /// cache has not seen yet); a `History` call does, or it would answer a position past its
    /// last event and the caller would skip the events in between. Events committed after
    /// `through` are left out, so the page and `through` describe one moment: a caller that
    /// answers `through` as the position never hands out an event beyond it (a client
    /// following from that position would receive such an event twice).
    pub async fn page_through(
        &self,
        topic: &Topic,
        after: &StreamPosition,
        budget: PageBudget,
        through: Option<u64>,
    ) -> Result<Page, HistoryError> {
        let cached = self
            .broker
            .history(topic, HistoryStart::After(after.clone()), budget.events)
            .await?;
        let full = cached.events.len() >= budget.events;
        let lags = through.is_some_and(|through| cached.top.offset < through);
        if cached.covered && (full || !lags) {
            let mut events = cached.events;
            let beyond = trim_to(&mut events, through);
            let trimmed = trim_to_bytes(&mut events, budget.bytes);
            self.stats.record(false, &events);
            return Ok(Page {
                events,
                reached_end: (beyond || !full) && !trimmed,
            });
        }
        let Some(log) = self.log_of(topic) else {
            return Err(HistoryError::Gone(after.clone()));
        };
        let mut events = log
            .read(topic, after.offset, budget.events, budget.bytes)
            .await?;
        if let Some(first) = events.first()
            && (first.epoch != after.epoch || first.offset != after.offset + 1)
        {
            // Purged (or another epoch) between the caller's check and this read.
            return Err(HistoryError::Gone(after.clone()));
        }
        if events.is_empty() {
            let bounds = log.bounds(topic).await?;
            if !bounds.covers(after) {
                return Err(HistoryError::Gone(after.clone()));
            }
        }
        let beyond = trim_to(&mut events, through);
        let bytes = self.stats.record(true, &events);
        let reached_end = beyond || (events.len() < budget.events && bytes < budget.bytes);
        Ok(Page {
            events,
            reached_end,
        })
    }
}

/// Drops the events after offset `through`; true if it dropped any.
fn trim_to(events: &mut Vec<Arc<SharedEvent>>, through: Option<u64>) -> bool {
    let Some(through) = through else {
        return false;
    };
    let keep = events.partition_point(|event| event.event().offset <= through);
    let dropped = keep < events.len();
    events.truncate(keep);
    dropped
}

/// Keeps the longest prefix within `max_bytes` (at least one event); true if it cut any.
fn trim_to_bytes(events: &mut Vec<Arc<SharedEvent>>, max_bytes: usize) -> bool {
    let mut total = 0usize;
    for (index, event) in events.iter().enumerate() {
        total += event.encoded_len();
        if total > max_bytes && index > 0 {
            events.truncate(index);
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn position(offset: u64, epoch: &str) -> StreamPosition {
        StreamPosition {
            offset,
            epoch: epoch.into(),
        }
    }

    #[test]
    fn bounds_cover_exactly_the_retained_range_of_their_epoch() {
        let bounds = LogBounds {
            top: position(10, "e"),
            oldest: 4,
        };
        assert!(bounds.covers(&position(3, "e")), "4..=10 are all retained");
        assert!(bounds.covers(&position(10, "e")), "nothing is missing");
        assert!(!bounds.covers(&position(2, "e")), "3 was purged");
        assert!(!bounds.covers(&position(11, "e")), "beyond the top");
        assert!(!bounds.covers(&position(5, "x")), "another epoch");
        let empty = LogBounds {
            top: position(10, "e"),
            oldest: 11,
        };
        assert!(empty.covers(&position(10, "e")));
        assert!(!empty.covers(&position(9, "e")));
    }

    /// A log holding offsets `1..=top` of `order:lag` in epoch `db`.
    #[derive(Debug)]
    struct FixedLog {
        top: u64,
    }

    #[async_trait]
    impl EventLog for FixedLog {
        async fn bounds(&self, _topic: &Topic) -> Result<LogBounds, LogError> {
            Ok(LogBounds {
                top: position(self.top, "db"),
                oldest: 1,
            })
        }

        async fn read(
            &self,
            _topic: &Topic,
            after: u64,
            limit: usize,
            _max_bytes: usize,
        ) -> Result<Vec<Arc<SharedEvent>>, LogError> {
            Ok((after + 1..=self.top).take(limit).map(logged).collect())
        }
    }

    fn logged(offset: u64) -> Arc<SharedEvent> {
        Arc::new(SharedEvent::new(herald_proto::v1::Event {
            topic: "order:lag".into(),
            offset,
            epoch: "db".into(),
            ..Default::default()
        }))
    }

    fn offsets(page: &Page) -> Vec<u64> {
        page.events.iter().map(|event| event.offset).collect()
    }

    #[tokio::test]
    async fn a_bounded_read_passes_a_cache_that_trails_the_log_and_a_subscriber_read_does_not() {
        let broker = Arc::new(crate::broker::memory::MemoryBroker::new(
            crate::hub::Hub::new(16),
            crate::broker::memory::RetentionConfig::default(),
        ));
        broker.append(logged(1)).await.unwrap();
        let lanes = Arc::new(Lanes::new(&crate::lanes::TopicsConfig::default()).unwrap());
        let history = History::new(broker, Some(Arc::new(FixedLog { top: 3 })), lanes);
        let topic = Topic::parse("order:lag").unwrap();
        let start = position(0, "db");
        let budget = PageBudget::REPLAY;

        let bounded = history
            .page_through(&topic, &start, budget, Some(3))
            .await
            .unwrap();
        assert_eq!(offsets(&bounded), vec![1, 2, 3], "2 and 3 are committed");
        assert_eq!(history.stats().log_pages(), 1);

        let live = history.page(&topic, &start, budget).await.unwrap();
        assert_eq!(offsets(&live), vec![1], "the live stream brings 2 and 3");
        assert_eq!(history.stats().cache_pages(), 1);

        let one = PageBudget {
            events: 1,
            ..budget
        };
        let full = history
            .page_through(&topic, &start, one, Some(3))
            .await
            .unwrap();
        assert_eq!(
            offsets(&full),
            vec![1],
            "a full cache page needs no log read"
        );
        assert_eq!(history.stats().cache_pages(), 2);
    }

    #[tokio::test]
    async fn a_bounded_read_leaves_out_events_committed_after_its_bound() {
        let broker = Arc::new(crate::broker::memory::MemoryBroker::new(
            crate::hub::Hub::new(16),
            crate::broker::memory::RetentionConfig::default(),
        ));
        let lanes = Arc::new(Lanes::new(&crate::lanes::TopicsConfig::default()).unwrap());
        // The log has 5 events; the caller read the top when it was 3.
        let history = History::new(broker, Some(Arc::new(FixedLog { top: 5 })), lanes);
        let topic = Topic::parse("order:lag").unwrap();
        let page = history
            .page_through(&topic, &position(0, "db"), PageBudget::REPLAY, Some(3))
            .await
            .unwrap();
        assert_eq!(
            offsets(&page),
            vec![1, 2, 3],
            "nothing beyond the answered top"
        );
        assert!(page.reached_end);
    }

    #[test]
    fn a_page_is_cut_at_its_byte_budget_but_never_empty() {
        let event = |offset| {
            Arc::new(SharedEvent::new(herald_proto::v1::Event {
                offset,
                r#type: "x".repeat(100),
                ..Default::default()
            }))
        };
        let mut events: Vec<_> = (1..=10).map(event).collect();
        let one = events[0].encoded_len();
        assert!(trim_to_bytes(&mut events, one * 3 + 1));
        assert_eq!(events.len(), 3);
        let mut single = vec![event(1)];
        assert!(!trim_to_bytes(&mut single, 1));
        assert_eq!(single.len(), 1);
    }
}
