//! The hub: this node's fan-out from a topic to its local subscribers.
//!
//! Backpressure policy: every subscriber has a bounded queue, and delivery uses `try_send`,
//! so a publisher never waits for a subscriber. A subscriber whose queue is full is removed
//! at once and marked [`CloseReason::SlowConsumer`]; its stream drains what was queued (a
//! gapless prefix) and then ends with its last offset, so the client resumes from history.
//! Nothing is dropped silently.
//!
//! Ordering: the hub delivers items in the order `deliver` is called for a topic. Brokers
//! call it under their per-topic ordering (see [`crate::broker::Broker`]).

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering},
    },
};

use herald_proto::{
    support::{lock, read, write},
    v1::{PresenceChange, Signal},
};
use tokio::sync::mpsc;

use crate::{event::SharedEvent, topic::Topic};

/// What flows from the hub to a subscriber.
#[derive(Debug, Clone)]
pub enum HubItem {
    Event(Arc<SharedEvent>),
    Presence(Arc<PresenceChange>),
    Signal(Arc<Signal>),
}

/// Why the hub stopped feeding a subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum CloseReason {
    /// Still open, or the subscriber went away by itself.
    Open = 0,
    /// Its queue overflowed.
    SlowConsumer = 1,
    /// The node is shutting down.
    Shutdown = 2,
}

impl CloseReason {
    fn from_u8(value: u8) -> CloseReason {
        match value {
            1 => CloseReason::SlowConsumer,
            2 => CloseReason::Shutdown,
            _ => CloseReason::Open,
        }
    }
}

#[derive(Debug)]
struct Entry {
    tx: mpsc::Sender<HubItem>,
    reason: Arc<AtomicU8>,
}

type Subscribers = Mutex<HashMap<u64, Entry>>;

/// Told when a topic gains its first local subscriber or loses its last one (a broker that
/// subscribes per topic, such as the Redis broker). Called after the hub released its locks;
/// it must not block. The watcher reads [`Hub::has_subscribers`] for the current state.
pub trait TopicWatcher: Send + Sync + std::fmt::Debug {
    fn listeners_changed(&self, topic: &Topic);
}

/// Counters for observability.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct HubStats {
    pub subscribers: u64,
    pub topics: u64,
    pub delivered: u64,
    pub slow_consumers: u64,
}

#[derive(Debug)]
pub struct Hub {
    topics: RwLock<HashMap<Topic, Subscribers>>,
    queue_capacity: usize,
    next_id: AtomicU64,
    closed: AtomicBool,
    subscribers: AtomicU64,
    delivered: AtomicU64,
    slow_consumers: AtomicU64,
    watcher: std::sync::OnceLock<Arc<dyn TopicWatcher>>,
}

/// The hub is shutting down and takes no new subscribers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the server is shutting down")]
pub struct HubClosed;

impl Hub {
    /// `queue_capacity` is each subscriber's bound: how far it may fall behind before it is
    /// ended as a slow consumer.
    pub fn new(queue_capacity: usize) -> Arc<Hub> {
        Arc::new(Hub {
            topics: RwLock::new(HashMap::new()),
            queue_capacity: queue_capacity.max(1),
            next_id: AtomicU64::new(1),
            closed: AtomicBool::new(false),
            subscribers: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            slow_consumers: AtomicU64::new(0),
            watcher: std::sync::OnceLock::new(),
        })
    }

    /// Installs the one watcher told about topics gaining or losing local subscribers.
    pub fn set_watcher(&self, watcher: Arc<dyn TopicWatcher>) {
        if self.watcher.set(watcher).is_err() {
            tracing::warn!("the hub already has a topic watcher; the new one is ignored");
        }
    }

    fn listeners_changed(&self, topic: &Topic) {
        if let Some(watcher) = self.watcher.get() {
            watcher.listeners_changed(topic);
        }
    }

    /// Registers a subscriber; everything delivered to `topic` from now on reaches it.
    pub fn subscribe(self: &Arc<Hub>, topic: &Topic) -> Result<HubSubscription, HubClosed> {
        let (tx, rx) = mpsc::channel(self.queue_capacity);
        let reason = Arc::new(AtomicU8::new(CloseReason::Open as u8));
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let entry = Entry {
            tx,
            reason: reason.clone(),
        };
        {
            // The map lock is held while inserting so that `remove` (which needs the write
            // lock to drop an empty topic) can never orphan this entry.
            let topics = read(&self.topics);
            if self.closed.load(Ordering::Acquire) {
                return Err(HubClosed);
            }
            if let Some(subscribers) = topics.get(topic) {
                lock(subscribers).insert(id, entry);
            } else {
                drop(topics);
                let mut topics = write(&self.topics);
                if self.closed.load(Ordering::Acquire) {
                    return Err(HubClosed);
                }
                lock(topics.entry(topic.clone()).or_default()).insert(id, entry);
                drop(topics);
                self.listeners_changed(topic);
            }
        }
        self.subscribers.fetch_add(1, Ordering::Relaxed);
        Ok(HubSubscription {
            hub: self.clone(),
            topic: topic.clone(),
            id,
            reason,
            rx,
        })
    }

    /// Hands `item` to every subscriber of `topic` without waiting; returns how many got it.
    pub fn deliver(&self, topic: &Topic, item: HubItem) -> usize {
        let topics = read(&self.topics);
        let Some(subscribers) = topics.get(topic) else {
            return 0;
        };
        let mut subscribers = lock(subscribers);
        let mut delivered = 0;
        subscribers.retain(|_, entry| match entry.tx.try_send(item.clone()) {
            Ok(()) => {
                delivered += 1;
                true
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                entry
                    .reason
                    .store(CloseReason::SlowConsumer as u8, Ordering::Release);
                self.slow_consumers.fetch_add(1, Ordering::Relaxed);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        });
        self.delivered
            .fetch_add(delivered as u64, Ordering::Relaxed);
        delivered
    }

    /// Whether anyone on this node listens to `topic`.
    pub fn has_subscribers(&self, topic: &Topic) -> bool {
        read(&self.topics)
            .get(topic)
            .is_some_and(|subscribers| !lock(subscribers).is_empty())
    }

    /// Ends every subscription with [`CloseReason::Shutdown`] and refuses new ones. Streams
    /// still drain what was queued for them first.
    pub fn shutdown(&self) {
        let mut topics = write(&self.topics);
        self.closed.store(true, Ordering::Release);
        for (_, subscribers) in topics.drain() {
            for (_, entry) in lock(&subscribers).drain() {
                entry
                    .reason
                    .store(CloseReason::Shutdown as u8, Ordering::Release);
            }
        }
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    pub fn stats(&self) -> HubStats {
        HubStats {
            subscribers: self.subscribers.load(Ordering::Relaxed),
            topics: read(&self.topics).len() as u64,
            delivered: self.delivered.load(Ordering::Relaxed),
            slow_consumers: self.slow_consumers.load(Ordering::Relaxed),
        }
    }

    fn remove(&self, topic: &Topic, id: u64) {
        self.subscribers.fetch_sub(1, Ordering::Relaxed);
        let now_empty = {
            let topics = read(&self.topics);
            let Some(subscribers) = topics.get(topic) else {
                return;
            };
            let mut subscribers = lock(subscribers);
            subscribers.remove(&id);
            subscribers.is_empty()
        };
        if now_empty {
            let mut topics = write(&self.topics);
            if topics.get(topic).is_some_and(|s| lock(s).is_empty()) {
                topics.remove(topic);
                drop(topics);
                self.listeners_changed(topic);
            }
        }
    }
}

/// One subscriber's end of the hub. Dropping it unregisters the subscriber.
#[derive(Debug)]
pub struct HubSubscription {
    hub: Arc<Hub>,
    topic: Topic,
    id: u64,
    reason: Arc<AtomicU8>,
    rx: mpsc::Receiver<HubItem>,
}

impl HubSubscription {
    pub fn receiver(&mut self) -> &mut mpsc::Receiver<HubItem> {
        &mut self.rx
    }

    /// Why the hub stopped feeding this subscriber; meaningful once the receiver returned `None`.
    pub fn close_reason(&self) -> CloseReason {
        CloseReason::from_u8(self.reason.load(Ordering::Acquire))
    }
}

impl Drop for HubSubscription {
    fn drop(&mut self) {
        self.hub.remove(&self.topic, self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(offset: u64) -> HubItem {
        HubItem::Event(Arc::new(SharedEvent::new(herald_proto::v1::Event {
            offset,
            ..Default::default()
        })))
    }

    fn topic() -> Topic {
        Topic::parse("room:t").unwrap()
    }

    #[tokio::test]
    async fn a_full_queue_ends_only_that_subscriber_after_draining_what_it_had() {
        let hub = Hub::new(2);
        let mut slow = hub.subscribe(&topic()).unwrap();
        let mut fast = hub.subscribe(&topic()).unwrap();
        for offset in 1..=3 {
            hub.deliver(&topic(), event(offset));
            let Some(HubItem::Event(e)) = fast.receiver().recv().await else {
                panic!("fast subscriber missed {offset}");
            };
            assert_eq!(e.offset, offset);
        }
        let mut drained = vec![];
        while let Some(HubItem::Event(e)) = slow.receiver().recv().await {
            drained.push(e.offset);
        }
        assert_eq!(drained, vec![1, 2]);
        assert_eq!(slow.close_reason(), CloseReason::SlowConsumer);
        assert_eq!(fast.close_reason(), CloseReason::Open);
        assert_eq!(hub.stats().slow_consumers, 1);
    }

    #[tokio::test]
    async fn shutdown_closes_every_subscriber_and_refuses_new_ones() {
        let hub = Hub::new(8);
        let mut sub = hub.subscribe(&topic()).unwrap();
        hub.deliver(&topic(), event(1));
        hub.shutdown();
        assert!(matches!(
            sub.receiver().recv().await,
            Some(HubItem::Event(_))
        ));
        assert!(sub.receiver().recv().await.is_none());
        assert_eq!(sub.close_reason(), CloseReason::Shutdown);
        assert_eq!(hub.subscribe(&topic()).unwrap_err(), HubClosed);
    }

    #[tokio::test]
    async fn dropping_the_last_subscriber_forgets_the_topic() {
        let hub = Hub::new(8);
        let a = hub.subscribe(&topic()).unwrap();
        let b = hub.subscribe(&topic()).unwrap();
        drop(a);
        assert!(hub.has_subscribers(&topic()));
        drop(b);
        assert!(!hub.has_subscribers(&topic()));
        assert_eq!(hub.stats().topics, 0);
        assert_eq!(hub.stats().subscribers, 0);
    }
}
