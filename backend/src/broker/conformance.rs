//! The conformance suite every [`Broker`] implementation must pass. Each check runs against
//! every implementation ([`BROKERS`]); the Redis broker's against a `redis-server` the test
//! starts. Checks of the in-memory broker's own global caps, and of ages under paused time,
//! run against it alone ([`MEMORY`]); the Redis broker's global bound is Redis's `maxmemory`.

use std::{sync::Arc, time::Duration};

use herald_proto::v1::{Signal, StreamPosition};
use tokio_util::sync::{CancellationToken, DropGuard};

use super::{
    Appended, Broker, BrokerError, EventDraft, HistoryStart, Published, memory::RetentionConfig,
    redis::RedisBroker, redis::RedisConfig, redis_server::RedisServer,
};
use crate::{
    event::SharedEvent,
    hub::{Hub, HubItem},
    signals::SignalLimits,
    topic::Topic,
};

const BROKERS: &[&str] = &["memory", "redis"];
const MEMORY: &[&str] = &["memory"];

/// What keeps a broker's backing alive for the test: its Redis and its pub/sub task.
#[derive(Debug)]
#[allow(dead_code)]
struct Backing {
    redis: Option<RedisServer>,
    task: Option<DropGuard>,
}

async fn make(name: &str, hub: Arc<Hub>, retention: RetentionConfig) -> (Arc<dyn Broker>, Backing) {
    make_with(name, hub, retention, SignalLimits::default()).await
}

async fn make_with(
    name: &str,
    hub: Arc<Hub>,
    retention: RetentionConfig,
    signals: SignalLimits,
) -> (Arc<dyn Broker>, Backing) {
    match name {
        "memory" => (
            Arc::new(super::memory::MemoryBroker::new(hub, retention).with_signal_limits(signals)),
            Backing {
                redis: None,
                task: None,
            },
        ),
        _ => {
            let (broker, redis, task) = redis_broker_with(hub, retention, signals).await;
            (
                Arc::new(broker),
                Backing {
                    redis: Some(redis),
                    task: Some(task),
                },
            )
        }
    }
}

async fn redis_broker(
    hub: Arc<Hub>,
    retention: RetentionConfig,
) -> (RedisBroker, RedisServer, DropGuard) {
    redis_broker_with(hub, retention, SignalLimits::default()).await
}

async fn redis_broker_with(
    hub: Arc<Hub>,
    retention: RetentionConfig,
    signals: SignalLimits,
) -> (RedisBroker, RedisServer, DropGuard) {
    let redis = RedisServer::start().await;
    let shutdown = CancellationToken::new();
    let broker = RedisBroker::connect(
        hub,
        &RedisConfig {
            signals,
            ..RedisConfig::new(redis.url())
        },
        retention,
        shutdown.clone(),
    )
    .await
    .unwrap();
    (broker, redis, shutdown.drop_guard())
}

/// Registers with the hub the way a node does: history is read after, so the broker has
/// the topic's fan-out in place before anything is published.
async fn subscribe(
    hub: &Arc<Hub>,
    broker: &Arc<dyn Broker>,
    topic: &Topic,
) -> crate::hub::HubSubscription {
    let sub = hub.subscribe(topic).unwrap();
    broker
        .history(topic, HistoryStart::Oldest, 0)
        .await
        .unwrap();
    sub
}

/// The offsets of the events delivered to `sub` so far: a marker is broadcast after them
/// (hub order is publish order on every broker) and events are collected until it arrives.
async fn drain(
    broker: &Arc<dyn Broker>,
    topic: &Topic,
    sub: &mut crate::hub::HubSubscription,
) -> Vec<u64> {
    let marker = Signal {
        topic: topic.to_string(),
        r#type: "marker".into(),
        ..Default::default()
    };
    broker
        .broadcast(topic, HubItem::Signal(Arc::new(marker)))
        .await
        .unwrap();
    let mut offsets = vec![];
    loop {
        let item = tokio::time::timeout(Duration::from_secs(10), sub.receiver().recv())
            .await
            .expect("the marker arrives");
        match item {
            Some(HubItem::Event(event)) => offsets.push(event.offset),
            Some(HubItem::Signal(signal)) if signal.r#type == "marker" => return offsets,
            Some(_) => {}
            None => panic!("hub stream ended early"),
        }
    }
}

fn draft(topic: &Topic, key: Option<&str>) -> EventDraft {
    EventDraft {
        topic: topic.clone(),
        event_type: "test".into(),
        data: None,
        publisher: "tester".into(),
        idempotency_key: key.map(str::to_owned),
    }
}

fn topic() -> Topic {
    Topic::parse("room:conformance").unwrap()
}

fn retention(max_events: usize) -> RetentionConfig {
    RetentionConfig {
        history_max_events: max_events,
        ..RetentionConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_publishers_get_gapless_offsets_and_the_hub_sees_them_in_order() {
    for name in BROKERS {
        let hub = Hub::new(10_000);
        let (broker, _backing) = make(name, hub.clone(), retention(10_000)).await;
        let mut sub = subscribe(&hub, &broker, &topic()).await;
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let broker = broker.clone();
                tokio::spawn(async move {
                    for _ in 0..250 {
                        broker.publish(draft(&topic(), None)).await.unwrap();
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        for expected in 1..=2000 {
            let Some(HubItem::Event(event)) = sub.receiver().recv().await else {
                panic!("{name}: hub stream ended early");
            };
            assert_eq!(event.offset, expected, "{name}: hub order");
        }
        let page = broker
            .history(&topic(), HistoryStart::Oldest, 5000)
            .await
            .unwrap();
        let offsets: Vec<u64> = page.events.iter().map(|e| e.offset).collect();
        assert_eq!(offsets, (1..=2000).collect::<Vec<_>>(), "{name}: history");
        assert_eq!(page.top.offset, 2000);
    }
}

#[tokio::test]
async fn history_after_a_position_returns_exactly_what_followed_it() {
    for name in BROKERS {
        let (broker, _backing) = make(name, Hub::new(16), retention(100)).await;
        for _ in 0..10 {
            broker.publish(draft(&topic(), None)).await.unwrap();
        }
        let top = broker
            .history(&topic(), HistoryStart::Oldest, 0)
            .await
            .unwrap()
            .top;
        let since = StreamPosition {
            offset: 6,
            epoch: top.epoch.clone(),
        };
        let page = broker
            .history(&topic(), HistoryStart::After(since.clone()), 100)
            .await
            .unwrap();
        assert!(page.covered, "{name}");
        let offsets: Vec<u64> = page.events.iter().map(|e| e.offset).collect();
        assert_eq!(offsets, vec![7, 8, 9, 10], "{name}");
        let limited = broker
            .history(&topic(), HistoryStart::After(since), 2)
            .await
            .unwrap();
        assert_eq!(limited.events.len(), 2, "{name}");
    }
}

#[tokio::test]
async fn positions_history_cannot_continue_from_are_reported_not_covered() {
    for name in BROKERS {
        let (broker, _backing) = make(name, Hub::new(16), retention(5)).await;
        for _ in 0..10 {
            broker.publish(draft(&topic(), None)).await.unwrap();
        }
        let epoch = broker
            .history(&topic(), HistoryStart::Oldest, 0)
            .await
            .unwrap()
            .top
            .epoch;
        let cases = [
            (
                StreamPosition {
                    offset: 8,
                    epoch: "other".into(),
                },
                "wrong epoch",
            ),
            (
                StreamPosition {
                    offset: 2,
                    epoch: epoch.clone(),
                },
                "older than history",
            ),
            (
                StreamPosition {
                    offset: 11,
                    epoch: epoch.clone(),
                },
                "beyond the top",
            ),
        ];
        for (since, why) in cases {
            let page = broker
                .history(&topic(), HistoryStart::After(since), 100)
                .await
                .unwrap();
            assert!(!page.covered, "{name}: {why}");
            assert!(page.events.is_empty(), "{name}: {why}");
            assert_eq!(page.top.offset, 10, "{name}: {why}");
        }
        // The oldest retained is 6, so resuming after 5 is still complete.
        let page = broker
            .history(
                &topic(),
                HistoryStart::After(StreamPosition { offset: 5, epoch }),
                100,
            )
            .await
            .unwrap();
        assert!(page.covered, "{name}");
        assert_eq!(page.events.len(), 5, "{name}");
    }
}

#[tokio::test]
async fn a_repeated_idempotency_key_returns_the_first_position() {
    for name in BROKERS {
        let hub = Hub::new(16);
        let (broker, _backing) = make(name, hub.clone(), retention(100)).await;
        let mut sub = subscribe(&hub, &broker, &topic()).await;
        let first = broker.publish(draft(&topic(), Some("k1"))).await.unwrap();
        let again = broker.publish(draft(&topic(), Some("k1"))).await.unwrap();
        assert!(!first.duplicate && again.duplicate, "{name}");
        assert_eq!(first.position, again.position, "{name}");
        assert_eq!(first.id, again.id, "{name}");
        let other = broker.publish(draft(&topic(), Some("k2"))).await.unwrap();
        assert_eq!(other.position.offset, 2, "{name}");
        let offsets = drain(&broker, &topic(), &mut sub).await;
        assert_eq!(offsets, vec![1, 2], "{name}: the retry delivered nothing");
    }
}

#[tokio::test(start_paused = true)]
async fn history_and_idempotency_keys_expire_with_age() {
    for name in MEMORY {
        let retention = RetentionConfig {
            history_max_events: 100,
            history_max_age: Duration::from_secs(60),
            idempotency_window: Duration::from_secs(30),
            ..RetentionConfig::default()
        };
        let (broker, _backing) = make(name, Hub::new(16), retention).await;
        let first = broker.publish(draft(&topic(), Some("k"))).await.unwrap();
        tokio::time::advance(Duration::from_secs(31)).await;
        let retried = broker.publish(draft(&topic(), Some("k"))).await.unwrap();
        assert!(!retried.duplicate, "{name}: the key expired");
        tokio::time::advance(Duration::from_secs(40)).await;
        let page = broker
            .history(&topic(), HistoryStart::Oldest, 100)
            .await
            .unwrap();
        let offsets: Vec<u64> = page.events.iter().map(|e| e.offset).collect();
        assert_eq!(offsets, vec![2], "{name}: event 1 aged out");
        let page = broker
            .history(&topic(), HistoryStart::After(first.position), 100)
            .await
            .unwrap();
        assert!(
            page.covered,
            "{name}: offset 1 was delivered; 2 is retained"
        );
    }
}

#[tokio::test]
async fn an_idempotency_key_is_scoped_to_its_publisher() {
    for name in BROKERS {
        let (broker, _backing) = make(name, Hub::new(16), retention(100)).await;
        let mine = broker.publish(draft(&topic(), Some("k"))).await.unwrap();
        let theirs = broker
            .publish(EventDraft {
                publisher: "someone-else".into(),
                ..draft(&topic(), Some("k"))
            })
            .await
            .unwrap();
        assert!(
            !theirs.duplicate,
            "{name}: another publisher's key is not mine"
        );
        assert_eq!(theirs.position.offset, mine.position.offset + 1, "{name}");
    }
}

fn fixed(offset: u64, epoch: &str) -> Arc<SharedEvent> {
    Arc::new(SharedEvent::new(herald_proto::v1::Event {
        topic: "order:conformance".into(),
        offset,
        epoch: epoch.into(),
        id: format!("e{offset}"),
        ..Default::default()
    }))
}

fn durable_topic() -> Topic {
    Topic::parse("order:conformance").unwrap()
}

#[tokio::test]
async fn appended_events_keep_their_offsets_and_a_retry_delivers_nothing() {
    for name in BROKERS {
        let hub = Hub::new(16);
        let (broker, _backing) = make(name, hub.clone(), retention(100)).await;
        let mut sub = subscribe(&hub, &broker, &durable_topic()).await;
        for offset in 1..=3 {
            let appended = broker.append(fixed(offset, "db")).await.unwrap();
            assert_eq!(appended, Appended::Delivered, "{name}");
        }
        let retry = broker.append(fixed(2, "db")).await.unwrap();
        assert_eq!(retry, Appended::AlreadyCached, "{name}");
        assert_eq!(
            drain(&broker, &durable_topic(), &mut sub).await,
            vec![1, 2, 3],
            "{name}"
        );
        let since = StreamPosition {
            offset: 1,
            epoch: "db".into(),
        };
        let page = broker
            .history(&durable_topic(), HistoryStart::After(since), 10)
            .await
            .unwrap();
        assert!(page.covered, "{name}");
        let offsets: Vec<u64> = page.events.iter().map(|e| e.offset).collect();
        assert_eq!(offsets, vec![2, 3], "{name}");
        assert_eq!(page.top.offset, 3, "{name}");
        assert_eq!(page.top.epoch, "db", "{name}");
    }
}

#[tokio::test]
async fn an_event_ahead_of_the_cache_restarts_it_there_and_is_still_delivered() {
    for name in BROKERS {
        let hub = Hub::new(16);
        let (broker, _backing) = make(name, hub.clone(), retention(100)).await;
        let mut sub = subscribe(&hub, &broker, &durable_topic()).await;
        broker.append(fixed(1, "db")).await.unwrap();
        broker.append(fixed(7, "db")).await.unwrap();
        assert_eq!(
            drain(&broker, &durable_topic(), &mut sub).await,
            vec![1, 7],
            "{name}: the gap is the reader's to fill"
        );
        let before_gap = StreamPosition {
            offset: 1,
            epoch: "db".into(),
        };
        let page = broker
            .history(&durable_topic(), HistoryStart::After(before_gap), 10)
            .await
            .unwrap();
        assert!(!page.covered, "{name}: 2–6 are not cached");
        let at_gap = StreamPosition {
            offset: 6,
            epoch: "db".into(),
        };
        let page = broker
            .history(&durable_topic(), HistoryStart::After(at_gap), 10)
            .await
            .unwrap();
        assert!(page.covered, "{name}");
        assert_eq!(page.events.len(), 1, "{name}");
        broker.append(fixed(8, "other")).await.unwrap();
        assert_eq!(
            drain(&broker, &durable_topic(), &mut sub).await,
            vec![8],
            "{name}: a new epoch restarts the cache too"
        );
    }
}

// Finding 3 of the hardening issue: broker memory is bounded globally, and reads keep nothing.

fn room(i: usize) -> Topic {
    Topic::parse(&format!("room:bounded-{i}")).unwrap()
}

fn capped(
    max_topics: usize,
    max_history_bytes: usize,
    max_idempotency_keys: usize,
) -> RetentionConfig {
    RetentionConfig {
        max_topics,
        max_history_bytes,
        max_idempotency_keys,
        ..RetentionConfig::default()
    }
}

#[tokio::test]
async fn finding_3_reads_of_topics_without_history_keep_no_state_and_agree_with_the_first_publish()
{
    for name in MEMORY {
        let (broker, _backing) = make(name, Hub::new(16), RetentionConfig::default()).await;
        let mut tops = Vec::new();
        for i in 0..10_000 {
            let page = broker
                .history(&room(i), HistoryStart::Oldest, 10)
                .await
                .unwrap();
            assert!(page.covered && page.events.is_empty(), "{name}");
            tops.push(page.top);
        }
        assert_eq!(broker.stats().topics, 0, "{name}: reads created no topic");
        // A reader that saw offset 0 before the first publish sees that publish in its epoch.
        let published = broker.publish(draft(&room(7), None)).await.unwrap();
        assert_eq!(published.position.epoch, tops[7].epoch, "{name}");
        let page = broker
            .history(&room(7), HistoryStart::After(tops[7].clone()), 10)
            .await
            .unwrap();
        assert!(page.covered, "{name}");
        assert_eq!(page.events.len(), 1, "{name}");
        assert_eq!(broker.stats().topics, 1, "{name}");
    }
}

#[tokio::test]
async fn finding_3_publishes_beyond_the_topic_cap_evict_idle_topics_and_are_refused_when_all_are_listened_to()
 {
    for name in MEMORY {
        let hub = Hub::new(16);
        let (broker, _backing) = make(name, hub.clone(), capped(10, usize::MAX, usize::MAX)).await;
        let evicted = broker.publish(draft(&room(0), None)).await.unwrap();
        for i in 1..100 {
            broker.publish(draft(&room(i), None)).await.unwrap();
            assert!(broker.stats().topics <= 10, "{name}: at most 10 topics");
        }
        assert!(broker.stats().evicted_topics >= 90, "{name}");
        // An evicted topic's next log is a new epoch: a resume from the old one is not covered.
        let again = broker.publish(draft(&room(0), None)).await.unwrap();
        assert_ne!(again.position.epoch, evicted.position.epoch, "{name}");
        assert_eq!(again.position.offset, 1, "{name}");

        // Ten topics with a subscriber each: none may be evicted, so an eleventh is refused.
        let held: Vec<_> = (200..210)
            .map(|i| hub.subscribe(&room(i)).unwrap())
            .collect();
        for i in 200..210 {
            broker.publish(draft(&room(i), None)).await.unwrap();
        }
        let refused = broker.publish(draft(&room(300), None)).await.unwrap_err();
        assert!(
            matches!(refused, super::BrokerError::AtCapacity(_)),
            "{name}"
        );
        assert!(
            refused.to_string().contains("retention.max_topics"),
            "{name}: {refused}"
        );
        assert_eq!(broker.stats().refused_at_capacity, 1, "{name}");
        drop(held);
        broker.publish(draft(&room(300), None)).await.unwrap();
    }
}

#[tokio::test]
async fn finding_3_the_idempotency_keys_of_all_topics_stay_within_their_cap() {
    for name in MEMORY {
        let hub = Hub::new(16);
        let (broker, _backing) = make(name, hub.clone(), capped(usize::MAX, usize::MAX, 64)).await;
        // Keys on many idle topics: the least recently used topics are evicted with their keys.
        for i in 0..1000 {
            broker
                .publish(draft(&room(i), Some(&format!("k{i}"))))
                .await
                .unwrap();
            assert!(broker.stats().idempotency_keys <= 64, "{name}");
        }
        // Keys on one topic that is listened to cannot be freed: refused at the cap, naming it.
        let _listening = hub.subscribe(&room(5000)).unwrap();
        let mut refused = None;
        for i in 0..100 {
            match broker
                .publish(draft(&room(5000), Some(&format!("own{i}"))))
                .await
            {
                Ok(_) => {}
                Err(error) => {
                    refused = Some(error);
                    break;
                }
            }
            assert!(broker.stats().idempotency_keys <= 64, "{name}");
        }
        let refused = refused.expect("the key cap is reached");
        assert!(
            refused
                .to_string()
                .contains("retention.max_idempotency_keys"),
            "{name}: {refused}"
        );
        // A retry of a key already remembered still answers, and a publish without a key passes.
        assert!(
            broker
                .publish(draft(&room(5000), Some("own0")))
                .await
                .unwrap()
                .duplicate,
            "{name}"
        );
        broker.publish(draft(&room(5000), None)).await.unwrap();
    }
}

#[tokio::test]
async fn finding_3_history_bytes_of_all_topics_stay_within_their_cap() {
    for name in MEMORY {
        let hub = Hub::new(100_000);
        let cap = 64 * 1024;
        let (broker, _backing) = make(name, hub.clone(), capped(usize::MAX, cap, usize::MAX)).await;
        // Idle topics are evicted, listened-to topics trimmed oldest first; nothing refused.
        let _listening: Vec<_> = (2..20).map(|i| hub.subscribe(&room(i)).unwrap()).collect();
        for i in 0..2000 {
            broker.publish(draft(&room(i % 20), None)).await.unwrap();
            assert!(broker.stats().history_bytes as usize <= cap, "{name}");
        }
        let stats = broker.stats();
        assert!(
            stats.evicted_topics > 0 && stats.trimmed_events > 0,
            "{name}: {stats:?}"
        );
        assert_eq!(stats.refused_at_capacity, 0, "{name}");
    }
}

#[tokio::test]
async fn a_publisher_flooding_unique_keys_evicts_only_its_own_keys_within_its_share() {
    for name in BROKERS {
        let hub = Hub::new(16);
        let (broker, backing) = make(
            name,
            hub.clone(),
            RetentionConfig {
                max_idempotency_keys_per_publisher: 10,
                ..capped(usize::MAX, usize::MAX, 100)
            },
        )
        .await;
        let _listening = hub.subscribe(&topic()).unwrap();
        let by = |publisher: &str, key: &str| EventDraft {
            publisher: publisher.into(),
            ..draft(&topic(), Some(key))
        };
        let first = broker.publish(by("alice", "order-1")).await.unwrap();
        // Far more unique keys than the global cap, on the same topic and on others.
        for i in 0..1000 {
            let flood = EventDraft {
                topic: room(i % 7),
                ..by("mallory", &format!("flood-{i}"))
            };
            broker.publish(flood).await.unwrap();
            broker
                .publish(by("mallory", &format!("same-{i}")))
                .await
                .unwrap();
            if backing.redis.is_none() || i % 50 == 0 || i == 999 {
                let remembered = remembered_keys(&broker, &backing).await;
                assert!(remembered <= 11, "{name}: {remembered} keys remembered");
            }
        }
        let retry = broker.publish(by("alice", "order-1")).await.unwrap();
        assert!(retry.duplicate, "{name}: alice's key survived the flood");
        assert_eq!(retry.position, first.position, "{name}");
        assert!(broker.stats().evicted_keys >= 1990, "{name}");
        assert_eq!(broker.stats().refused_at_capacity, 0, "{name}");
        // The flooder's newest keys are still remembered; its oldest are not.
        assert!(
            broker
                .publish(by("mallory", "same-999"))
                .await
                .unwrap()
                .duplicate,
            "{name}"
        );
        assert!(
            !broker
                .publish(by("mallory", "same-0"))
                .await
                .unwrap()
                .duplicate,
            "{name}"
        );
    }
}

/// The idempotency keys a broker remembers: the in-memory broker counts them, the Redis
/// broker's are counted in Redis.
async fn remembered_keys(broker: &Arc<dyn Broker>, backing: &Backing) -> u64 {
    match &backing.redis {
        None => broker.stats().idempotency_keys,
        Some(redis) => match redis.command(&["KEYS", "herald:i:*"]).await {
            redis::Value::Array(keys) => keys.len() as u64,
            other => panic!("KEYS answered {other:?}"),
        },
    }
}

// Latest keyed signals: the broker's, so every node greets a subscriber with the same.

fn keyed(key: &str, n: f64) -> Arc<Signal> {
    Arc::new(Signal {
        topic: durable_topic().to_string(),
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

fn keys_of(signals: &[Signal]) -> Vec<&str> {
    signals.iter().map(|signal| signal.key.as_str()).collect()
}

const SIGNAL_TTL: Duration = Duration::from_secs(60);

#[tokio::test]
async fn a_kept_signal_is_the_latest_of_its_key_and_keys_come_oldest_first() {
    for name in BROKERS {
        let (broker, _backing) = make(name, Hub::new(16), retention(10)).await;
        let order = durable_topic();
        for (key, n) in [("courier-7", 1.0), ("courier-7", 2.0), ("courier-8", 1.0)] {
            let kept = broker
                .keep_signal(&order, keyed(key, n), SIGNAL_TTL)
                .await
                .unwrap();
            assert!(kept, "{name}");
        }
        let latest = broker.latest_signals(&order, SIGNAL_TTL).await.unwrap();
        assert_eq!(
            latest,
            vec![
                (*keyed("courier-7", 2.0)).clone(),
                (*keyed("courier-8", 1.0)).clone()
            ],
            "{name}: one per key, the latest, oldest first"
        );
        assert!(
            broker
                .latest_signals(&topic(), SIGNAL_TTL)
                .await
                .unwrap()
                .is_empty(),
            "{name}: another topic keeps none"
        );
    }
}

#[tokio::test]
async fn a_kept_signal_is_not_returned_after_its_ttl() {
    for name in BROKERS {
        let (broker, _backing) = make(name, Hub::new(16), retention(10)).await;
        let order = durable_topic();
        let short = Duration::from_millis(300);
        broker
            .keep_signal(&order, keyed("courier-7", 1.0), short)
            .await
            .unwrap();
        let latest = broker.latest_signals(&order, short).await.unwrap();
        assert_eq!(keys_of(&latest), ["courier-7"], "{name}");
        // Waiting past the signal's TTL.
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(
            broker
                .latest_signals(&order, short)
                .await
                .unwrap()
                .is_empty(),
            "{name}: expired"
        );
        broker
            .keep_signal(&order, keyed("courier-8", 1.0), short)
            .await
            .unwrap();
        let latest = broker.latest_signals(&order, short).await.unwrap();
        assert_eq!(keys_of(&latest), ["courier-8"], "{name}");
    }
}

#[tokio::test]
async fn the_kept_keys_of_a_topic_stay_within_their_bound_and_expired_keys_make_room() {
    for name in BROKERS {
        let limits = SignalLimits {
            max_keys_per_topic: 3,
            max_kept: usize::MAX,
        };
        let (broker, _backing) = make_with(name, Hub::new(16), retention(10), limits).await;
        let order = durable_topic();
        let keep = |topic: Topic, key: &'static str, ttl: Duration| {
            let broker = broker.clone();
            async move {
                broker
                    .keep_signal(&topic, keyed(key, 1.0), ttl)
                    .await
                    .unwrap()
            }
        };
        for key in ["a", "b", "c"] {
            assert!(keep(order.clone(), key, SIGNAL_TTL).await, "{name}");
        }
        assert!(
            !keep(order.clone(), "d", SIGNAL_TTL).await,
            "{name}: not kept"
        );
        assert_eq!(broker.stats().unkept_signals, 1, "{name}: counted");
        assert!(
            keep(order.clone(), "a", SIGNAL_TTL).await,
            "{name}: a kept key is replaced in place"
        );
        let latest = broker.latest_signals(&order, SIGNAL_TTL).await.unwrap();
        assert_eq!(keys_of(&latest), ["b", "c", "a"], "{name}");
        assert!(
            keep(topic(), "d", SIGNAL_TTL).await,
            "{name}: the bound is per topic"
        );

        // Keys past their TTL make room for new ones.
        let short = Duration::from_millis(300);
        let other = room(1);
        for key in ["a", "b", "c"] {
            assert!(keep(other.clone(), key, short).await, "{name}");
        }
        // Waiting past the TTL of a, b and c.
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(keep(other.clone(), "d", short).await, "{name}");
        let latest = broker.latest_signals(&other, short).await.unwrap();
        assert_eq!(keys_of(&latest), ["d"], "{name}");
    }
}

// The Redis broker alone: what Redis itself can lose or drop.

fn redis_draft(topic: &Topic) -> EventDraft {
    draft(topic, None)
}

async fn receive(sub: &mut crate::hub::HubSubscription) -> Arc<SharedEvent> {
    loop {
        let item = tokio::time::timeout(Duration::from_secs(10), sub.receiver().recv())
            .await
            .expect("an event arrives")
            .expect("the hub stream is open");
        if let HubItem::Event(event) = item {
            return event;
        }
    }
}

#[tokio::test]
async fn redis_reads_of_topics_without_history_keep_nothing_in_redis() {
    let (broker, redis, _task) = redis_broker(Hub::new(16), RetentionConfig::default()).await;
    let mut tops = Vec::new();
    for i in 0..1000 {
        let page = broker
            .history(&room(i), HistoryStart::Oldest, 10)
            .await
            .unwrap();
        assert!(page.covered && page.events.is_empty());
        tops.push(page.top);
    }
    // Only the generation key exists.
    assert_eq!(redis.command(&["DBSIZE"]).await, redis::Value::Int(1));
    let published = broker.publish(draft(&room(7), None)).await.unwrap();
    assert_eq!(published.position.epoch, tops[7].epoch);
    assert_eq!(published.position.offset, 1);
}

#[tokio::test]
async fn redis_a_flushed_redis_starts_new_epochs_and_never_reuses_an_offset() {
    let hub = Hub::new(64);
    let (broker, redis, _task) = redis_broker(hub.clone(), retention(100)).await;
    let before = broker.publish(redis_draft(&topic())).await.unwrap();
    broker.publish(redis_draft(&topic())).await.unwrap();
    redis.command(&["FLUSHALL"]).await;
    let after = broker.publish(redis_draft(&topic())).await.unwrap();
    assert_ne!(after.position.epoch, before.position.epoch);
    assert_eq!(after.position.offset, 1);
    let page = broker
        .history(&topic(), HistoryStart::After(before.position), 10)
        .await
        .unwrap();
    assert!(
        !page.covered,
        "a resume from the old epoch is not recovered"
    );
    assert!(page.events.is_empty());
}

/// Retries `publish` while the broker's connection to a restarted Redis is replaced.
async fn publish_after_restart(broker: &RedisBroker, topic: &Topic) -> Published {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match broker.publish(redis_draft(topic)).await {
            Ok(published) => return published,
            Err(error) if tokio::time::Instant::now() < deadline => {
                assert!(matches!(error, BrokerError::Backend(_)), "{error:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(error) => panic!("publishes still fail 10 s after the restart: {error:?}"),
        }
    }
}

#[tokio::test]
async fn redis_restarted_from_an_older_snapshot_starts_new_epochs_and_never_reuses_an_offset() {
    let hub = Hub::new(64);
    let (broker, mut redis, _task) = redis_broker(hub.clone(), retention(100)).await;
    broker.publish(redis_draft(&topic())).await.unwrap();
    let saved = broker.publish(redis_draft(&topic())).await.unwrap();
    for offset in 1..=2 {
        broker.append(fixed(offset, "db")).await.unwrap();
    }
    // The snapshot holds offset 2 of both topics; what follows is lost by the restart.
    redis.command(&["SAVE"]).await;
    let mut last = saved.clone();
    for _ in 0..3 {
        last = broker.publish(redis_draft(&topic())).await.unwrap();
    }
    for offset in 3..=5 {
        broker.append(fixed(offset, "db")).await.unwrap();
    }
    assert_eq!(last.position.offset, 5);
    redis.restart().await;
    assert_eq!(
        redis
            .command(&["EXISTS", "herald:t:room:conformance:m"])
            .await,
        redis::Value::Int(1),
        "the restarted Redis loaded the snapshot"
    );

    let after = publish_after_restart(&broker, &topic()).await;
    assert_ne!(
        after.position.epoch, saved.position.epoch,
        "the snapshot's epoch is not continued"
    );
    assert_eq!(
        after.position.offset, 1,
        "offsets begin again in the new epoch"
    );
    for since in [saved.position, last.position] {
        let page = broker
            .history(&topic(), HistoryStart::After(since.clone()), 10)
            .await
            .unwrap();
        assert!(!page.covered, "a resume from {since:?} is not recovered");
        assert!(page.events.is_empty());
        assert_eq!(page.top, after.position);
    }

    // A durable topic's offsets come from the database: its cache starts over at the next one.
    assert_eq!(
        broker.append(fixed(6, "db")).await.unwrap(),
        Appended::Delivered
    );
    let from = |offset| StreamPosition {
        offset,
        epoch: "db".into(),
    };
    let page = broker
        .history(&durable_topic(), HistoryStart::After(from(5)), 10)
        .await
        .unwrap();
    assert!(page.covered);
    assert_eq!(
        page.events.iter().map(|e| e.offset).collect::<Vec<_>>(),
        [6]
    );
    let page = broker
        .history(&durable_topic(), HistoryStart::After(from(2)), 10)
        .await
        .unwrap();
    assert!(
        !page.covered,
        "the cache does not claim 3..=5, which it lost"
    );
}

#[tokio::test]
async fn redis_a_dropped_pubsub_connection_is_recovered_from_the_stream_without_a_gap() {
    let hub = Hub::new(1000);
    let (broker, redis, _task) = redis_broker(hub.clone(), retention(1000)).await;
    let broker: Arc<dyn Broker> = Arc::new(broker);
    let mut sub = subscribe(&hub, &broker, &topic()).await;
    for _ in 0..5 {
        broker.publish(redis_draft(&topic())).await.unwrap();
    }
    for expected in 1..=5 {
        assert_eq!(receive(&mut sub).await.offset, expected);
    }
    redis.command(&["CLIENT", "KILL", "TYPE", "pubsub"]).await;
    // Published while this node's pub/sub connection is down or coming back.
    for _ in 0..20 {
        broker.publish(redis_draft(&topic())).await.unwrap();
    }
    for expected in 6..=25 {
        assert_eq!(
            receive(&mut sub).await.offset,
            expected,
            "no gap, no repeat"
        );
    }
    broker.publish(redis_draft(&topic())).await.unwrap();
    assert_eq!(receive(&mut sub).await.offset, 26, "live again");
}

#[tokio::test]
async fn redis_two_nodes_share_offsets_history_and_fan_out() {
    let redis = RedisServer::start().await;
    let shutdown = CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    let node = |hub: Arc<Hub>| {
        let url = redis.url();
        let shutdown = shutdown.clone();
        async move {
            Arc::new(
                RedisBroker::connect(hub, &RedisConfig::new(url), retention(100), shutdown)
                    .await
                    .unwrap(),
            ) as Arc<dyn Broker>
        }
    };
    let (hub_a, hub_b) = (Hub::new(100), Hub::new(100));
    let (a, b) = (node(hub_a.clone()).await, node(hub_b.clone()).await);
    let mut on_a = subscribe(&hub_a, &a, &topic()).await;
    for _ in 0..10 {
        b.publish(redis_draft(&topic())).await.unwrap();
    }
    for expected in 1..=10 {
        assert_eq!(receive(&mut on_a).await.offset, expected);
    }
    let page = a
        .history(&topic(), HistoryStart::Oldest, 100)
        .await
        .unwrap();
    assert_eq!(page.events.len(), 10);
    let first = a.publish(draft(&topic(), Some("k"))).await.unwrap();
    let again = b.publish(draft(&topic(), Some("k"))).await.unwrap();
    assert!(again.duplicate, "idempotency holds across nodes");
    assert_eq!(first.position, again.position);
}

#[tokio::test]
async fn redis_history_and_idempotency_keys_expire_with_age() {
    let retention = RetentionConfig {
        history_max_events: 100,
        history_max_age: Duration::from_millis(600),
        idempotency_window: Duration::from_millis(300),
        ..RetentionConfig::default()
    };
    let (broker, _redis, _task) = redis_broker(Hub::new(16), retention).await;
    let first = broker.publish(draft(&topic(), Some("k"))).await.unwrap();
    // Waiting past the idempotency TTL.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let retried = broker.publish(draft(&topic(), Some("k"))).await.unwrap();
    assert!(!retried.duplicate, "the key expired");
    // Waiting past event 1's age.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let page = broker
        .history(&topic(), HistoryStart::Oldest, 100)
        .await
        .unwrap();
    let offsets: Vec<u64> = page.events.iter().map(|e| e.offset).collect();
    assert_eq!(offsets, vec![2], "event 1 aged out");
    let page = broker
        .history(&topic(), HistoryStart::After(first.position), 100)
        .await
        .unwrap();
    assert!(page.covered, "offset 1 was delivered; 2 is retained");
}

#[tokio::test]
async fn redis_a_paused_redis_makes_the_broker_unready_and_it_is_ready_again_after() {
    let hub = Hub::new(64);
    let (broker, redis, _task) = redis_broker(hub.clone(), retention(100)).await;
    let broker = Arc::new(broker);
    let dyn_broker: Arc<dyn Broker> = broker.clone();
    let mut sub = subscribe(&hub, &dyn_broker, &topic()).await;
    assert!(broker.is_ready().await);
    broker.publish(redis_draft(&topic())).await.unwrap();
    assert_eq!(receive(&mut sub).await.offset, 1);
    redis.signal("STOP");
    assert!(
        !broker.is_ready().await,
        "unready while Redis does not answer"
    );
    assert!(broker.publish(redis_draft(&topic())).await.is_err());
    redis.signal("CONT");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !broker.is_ready().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "ready again within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let published = loop {
        match broker.publish(redis_draft(&topic())).await {
            Ok(published) => break published,
            Err(_) => assert!(
                tokio::time::Instant::now() < deadline,
                "publishing again within 10 s"
            ),
        }
    };
    // The publish refused during the pause may or may not have landed (a timeout is not a
    // refusal); whatever landed arrives in order, once.
    let mut offsets = vec![];
    while offsets.last() != Some(&published.position.offset) {
        offsets.push(receive(&mut sub).await.offset);
    }
    let expected: Vec<u64> = (2..=published.position.offset).collect();
    assert_eq!(offsets, expected);
}

#[tokio::test]
async fn redis_a_signal_kept_through_one_node_is_read_on_another() {
    let redis = RedisServer::start().await;
    let shutdown = CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    let node = || {
        let config = RedisConfig::new(redis.url());
        let shutdown = shutdown.clone();
        async move {
            RedisBroker::connect(Hub::new(16), &config, retention(10), shutdown)
                .await
                .unwrap()
        }
    };
    let (one, two) = (node().await, node().await);
    let order = durable_topic();
    assert!(
        one.keep_signal(&order, keyed("courier-7", 3.0), SIGNAL_TTL)
            .await
            .unwrap()
    );
    let latest = two.latest_signals(&order, SIGNAL_TTL).await.unwrap();
    assert_eq!(latest, vec![(*keyed("courier-7", 3.0)).clone()]);
}

#[tokio::test]
async fn redis_reads_of_signals_keep_nothing_and_an_idle_topic_costs_nothing_after_its_ttl() {
    let (broker, redis, _task) = redis_broker(Hub::new(16), retention(10)).await;
    for i in 0..1000 {
        let latest = broker.latest_signals(&room(i), SIGNAL_TTL).await.unwrap();
        assert!(latest.is_empty());
    }
    assert_eq!(redis.command(&["DBSIZE"]).await, redis::Value::Int(0));

    let short = Duration::from_millis(300);
    broker
        .keep_signal(&room(1), keyed("courier-7", 1.0), short)
        .await
        .unwrap();
    let key = "herald:t:room:bounded-1:k";
    let redis::Value::Int(pttl) = redis.command(&["PTTL", key]).await else {
        panic!("PTTL answers an integer");
    };
    assert!(
        pttl > 0 && pttl <= 300,
        "the hash expires with the TTL: {pttl}"
    );
    // Waiting past the TTL.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(redis.command(&["EXISTS", key]).await, redis::Value::Int(0));
}
