//! The node: the core every transport calls. It validates, authorizes through the
//! [`Policy`], and joins the hub, history, presence and signals into subscriptions with
//! gapless resume. Domain services add nothing here: they use the store, the policy and the
//! publish and attach API below.
//!
//! Attaching a subscriber, step by step (see [`Node::attach`]):
//! 1. register with the hub first ([`Node::register`]), so every event published from now
//!    on is queued for us — `attach` takes the registration as proof;
//! 2. read where `since` stands in history: a memory topic replays from the broker's window
//!    (at most `replay_cap` events), a durable topic pages from the broker cache or the
//!    database from `since` on, however far back retention reaches;
//! 3. replay, then stream live events, skipping offsets already replayed
//!    ([`crate::cursor::LiveCursor`]).
//!
//! Positions history cannot continue from (other epoch, purged or trimmed, beyond the top)
//! and memory gaps larger than the replay cap answer `recovered = false` with the current
//! top, never a partial replay.

use std::{sync::Arc, time::SystemTime};

use herald_proto::{
    rate::RateTable,
    v1::{PresenceMember, Signal, StreamPosition, Subscribed},
    wkt::{Struct, Timestamp},
};
use prost::Message;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::{
    auth::Principal,
    authz::{Action, Denied, Policy},
    broker::{Broker, BrokerError, EventDraft, HistoryStart, Published},
    connections::{Connections, Kill, Transport},
    cursor::LiveCursor,
    error::Error,
    event::{EventType, IdempotencyKey, MAX_IDEMPOTENCY_KEY_LEN, SharedEvent},
    history::{EventLog, History, HistoryError, PageBudget},
    hub::{Hub, HubItem, HubSubscription},
    lanes::Lanes,
    metrics::{EPHEMERAL, Limit, Metrics},
    presence::{Coalescing, Online, Presence, PresenceNotifier},
    subscription::{Attachment, EventStream, Replay},
    topic::{Topic, TopicKind},
};

/// The most events one `History` call returns.
pub const MAX_HISTORY_LIMIT: u32 = 1000;
/// The number of events `History` returns when no limit is given.
pub const DEFAULT_HISTORY_LIMIT: u32 = 100;
/// The most encoded bytes one `History` page returns; a page ends early at this budget (well
/// under the 4 MiB a default gRPC client accepts).
pub const MAX_HISTORY_BYTES: usize = 2 * 1024 * 1024;

/// Limits and switches of the core.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// How many events a subscriber may have queued before it is ended as a slow consumer
    /// (memory topics) or falls back to reading the database (durable topics).
    pub subscriber_queue: usize,
    /// The most events a memory topic's resume replays; a larger gap answers
    /// `recovered = false`. Durable topics have no cap.
    pub replay_cap: u64,
    /// The largest encoded `data` of one event or signal.
    pub max_event_data_bytes: usize,
    /// Topic kinds whose subscribers receive presence join/leave pushes.
    pub presence_events: Vec<String>,
    /// Presence changes of a topic are pushed together, at most once per this interval.
    #[serde(with = "herald_proto::support::duration")]
    pub presence_interval: std::time::Duration,
    /// Above this many members a topic's presence pushes carry counts only (no member list).
    pub presence_max_members: usize,
    /// `History` calls served at once; more answer RESOURCE_EXHAUSTED (retry shortly). Each
    /// holds at most one page (`MAX_HISTORY_BYTES`), so this bounds their memory.
    pub max_concurrent_history: usize,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            subscriber_queue: 1024,
            replay_cap: 1000,
            max_event_data_bytes: 64 * 1024,
            presence_events: vec!["room".into(), "conv".into(), "group".into()],
            presence_interval: std::time::Duration::from_millis(250),
            presence_max_members: 200,
            max_concurrent_history: 64,
        }
    }
}

impl NodeConfig {
    /// Checks the values and returns the parsed presence kinds.
    pub fn presence_kinds(&self) -> Result<Vec<TopicKind>, String> {
        self.presence_events
            .iter()
            .map(|kind| {
                kind.parse::<TopicKind>()
                    .map_err(|e| format!("node.presence_events: {e}"))
            })
            .collect()
    }
}

/// What a node is made of.
#[derive(Debug)]
pub struct NodeParts {
    pub hub: Arc<Hub>,
    pub broker: Arc<dyn Broker>,
    pub presence: Arc<dyn Presence>,
    pub policy: Policy,
    pub config: NodeConfig,
    pub lanes: Arc<Lanes>,
    /// The history of record of durable topics (the database); without one, durable topics
    /// read from the broker alone.
    pub log: Option<Arc<dyn EventLog>>,
}

#[derive(Debug)]
pub struct Node {
    hub: Arc<Hub>,
    broker: Arc<dyn Broker>,
    presence: Arc<PresenceNotifier>,
    policy: Policy,
    config: NodeConfig,
    history: History,
    signal_rate: RateTable<String>,
    /// `None` when `topics.publish_rate` is 0.
    publish_rate: Option<RateTable<Topic>>,
    history_reads: Arc<tokio::sync::Semaphore>,
    metrics: Arc<Metrics>,
    connections: Arc<Connections>,
}

impl Node {
    pub fn new(parts: NodeParts) -> Result<Arc<Node>, String> {
        let kinds = parts.config.presence_kinds()?;
        let topics = parts.lanes.config();
        let metrics = Arc::new(Metrics::new());
        let log = parts.log.map(|log| {
            Arc::new(CountedLog {
                inner: log,
                metrics: metrics.clone(),
            }) as Arc<dyn EventLog>
        });
        Ok(Arc::new(Node {
            signal_rate: RateTable::new(topics.signal_burst, f64::from(topics.signal_rate.max(1))),
            publish_rate: (topics.publish_rate > 0)
                .then(|| RateTable::new(topics.publish_burst, f64::from(topics.publish_rate))),
            presence: PresenceNotifier::new(
                parts.broker.clone(),
                parts.presence,
                kinds,
                Coalescing {
                    interval: parts.config.presence_interval,
                    max_members: parts.config.presence_max_members,
                },
            ),
            history: History::new(parts.broker.clone(), log, parts.lanes),
            metrics,
            connections: Connections::new(),
            history_reads: Arc::new(tokio::sync::Semaphore::new(
                parts.config.max_concurrent_history,
            )),
            hub: parts.hub,
            broker: parts.broker,
            policy: parts.policy,
            config: parts.config,
        }))
    }

    /// Who has streams open on this node (see [`crate::connections`]).
    pub fn connections(&self) -> &Arc<Connections> {
        &self.connections
    }

    /// A topic's presence, without a policy check (for `Admin/TopicInfo`, whose caller is
    /// checked for the admin role).
    pub async fn members(&self, topic: &Topic) -> Result<Vec<PresenceMember>, Error> {
        Ok(self.presence.store().members(topic).await?)
    }

    /// This node's metrics registry (see [`crate::metrics`]).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Where history is read from (transports page replays through it).
    pub fn history_reader(&self) -> &History {
        &self.history
    }

    pub fn lanes(&self) -> &Lanes {
        self.history.lanes()
    }

    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    /// What the broker holds (topics, history bytes, idempotency keys) and how often its
    /// global bounds were reached.
    pub fn broker_stats(&self) -> crate::broker::BrokerStats {
        self.broker.stats()
    }

    /// Which broker this node publishes through (`Edge/Describe`).
    pub fn broker_kind(&self) -> herald_proto::v1::Broker {
        self.broker.kind()
    }

    /// Which shared broker this node is on (see [`Broker::cluster_id`]).
    pub async fn broker_cluster_id(&self) -> Result<Option<String>, BrokerError> {
        self.broker.cluster_id().await
    }

    /// Whether the broker takes publishes now (readiness).
    pub async fn broker_ready(&self) -> bool {
        self.broker.is_ready().await
    }

    /// Presence pushes broadcast so far: one per topic per `presence_interval` with changes.
    pub fn presence_pushes(&self) -> u64 {
        self.presence.pushes()
    }

    /// The hub's counters (subscribers, deliveries, slow consumers).
    pub fn hub_stats(&self) -> crate::hub::HubStats {
        self.hub.stats()
    }

    pub async fn authorize(
        &self,
        who: &Principal,
        action: Action,
        topic: &Topic,
    ) -> Result<(), Error> {
        self.policy
            .check(who, action, topic)
            .await
            .map_err(|denied| match denied {
                Denied::Forbidden(message) => Error::PermissionDenied(message),
                Denied::Unavailable(message) => Error::Unavailable(message),
            })
    }

    /// Registers with the hub: from now on every event of `topic` is queued for the holder.
    pub fn register(&self, topic: &Topic) -> Result<HubSubscription, Error> {
        self.hub.subscribe(topic).map_err(|_| shutting_down())
    }

    /// Subscribes `who` to `topic`, resuming after `since` when given.
    pub async fn subscribe(
        &self,
        who: &Principal,
        topic: Topic,
        since: Option<StreamPosition>,
    ) -> Result<EventStream, Error> {
        let live = self.register(&topic)?; // `attach` authorizes

        let attachment = self.attach(who, &topic, since, &live).await?;
        let expiry = Box::pin(tokio::time::sleep(who.time_left()));
        let disconnect = CancellationToken::new();
        let registration = self.connections.register(
            &who.user_id,
            &topic,
            Transport::Grpc,
            Kill::Stream(disconnect.clone()),
        );
        Ok(EventStream::new(
            topic,
            attachment,
            live,
            self.hub.clone(),
            self.history.clone(),
            expiry,
        )
        .with_disconnect(disconnect, registration))
    }

    /// Works out what a subscriber of `topic` resuming after `since` is replayed, and joins
    /// presence. `_registered` is the hub registration that must exist before history is
    /// read (the subscriber's own, or the shared one of an edge's follow stream).
    pub async fn attach(
        &self,
        who: &Principal,
        topic: &Topic,
        since: Option<StreamPosition>,
        _registered: &HubSubscription,
    ) -> Result<Attachment, Error> {
        // A member's access can end while it reads: its membership is checked only once the
        // start is fixed, so a removal is either seen by the check or committed after the
        // start, where the stream's `Revocation` meets it (see `authz::Revocation`).
        let as_member = self.policy.reads_as_member(who, topic);
        if !as_member {
            self.authorize(who, Action::Read, topic).await?;
        }
        let durable = self.lanes().is_durable(topic);
        let resuming = since.is_some();
        let (subscribed, start, replay) = match since {
            None => {
                let (top, _) = self
                    .history
                    .position(topic, None)
                    .await
                    .map_err(history_error)?;
                (subscribed(&top, true), top, Replay::Nothing)
            }
            Some(since) if durable => {
                let (top, covered) = self
                    .history
                    .position(topic, Some(&since))
                    .await
                    .map_err(history_error)?;
                if covered {
                    (subscribed(&top, true), since, Replay::Pages)
                } else {
                    (subscribed(&top, false), top, Replay::Nothing)
                }
            }
            Some(since) => self.memory_resume(topic, since).await?,
        };
        let revocation = if as_member {
            self.authorize(who, Action::Read, topic).await?;
            let checked_after = subscribed.position.as_ref().map_or(0, |top| top.offset);
            self.policy.revocation(who, topic, checked_after)
        } else {
            None
        };
        let signals = match self.lanes().signal_ttl(topic.kind()) {
            // Signals are at most once: a subscriber is not refused for want of them.
            Some(ttl) => self
                .broker
                .latest_signals(topic, ttl)
                .await
                .unwrap_or_else(|error| {
                    tracing::warn!(%topic, %error, "the latest signals could not be read; none sent");
                    Vec::new()
                }),
            None => Vec::new(),
        };
        let presence = self.presence.join(who, topic).await;
        if resuming {
            self.metrics.resumed(subscribed.recovered);
        }
        let counted = self
            .metrics
            .subscription(topic.kind(), self.lanes().lane(topic.kind()));
        Ok(Attachment {
            counted,
            subscribed,
            signals,
            cursor: LiveCursor::new(start, durable),
            replay,
            presence,
            revocation,
        })
    }

    /// A memory topic's resume: the broker's window after `since`, within the replay cap.
    async fn memory_resume(
        &self,
        topic: &Topic,
        since: StreamPosition,
    ) -> Result<(Subscribed, StreamPosition, Replay), Error> {
        let cap = usize::try_from(self.config.replay_cap).unwrap_or(usize::MAX);
        let page = self
            .broker
            .history(topic, HistoryStart::After(since.clone()), cap)
            .await?;
        let gap = page.top.offset.saturating_sub(since.offset);
        Ok(if page.covered && gap <= self.config.replay_cap {
            (
                subscribed(&page.top, true),
                since,
                Replay::Events(page.events),
            )
        } else {
            (subscribed(&page.top, false), page.top, Replay::Nothing)
        })
    }

    /// Publishes to a memory topic (durable topics go through the store: see
    /// [`crate::publish`]).
    pub async fn publish(
        &self,
        who: &Principal,
        topic: Topic,
        event_type: String,
        data: Option<Struct>,
        idempotency_key: Option<String>,
    ) -> Result<Published, Error> {
        let (event_type, idempotency_key) = self
            .check_publish(who, &topic, &event_type, &data, idempotency_key)
            .await?;
        if self.lanes().is_durable(&topic) {
            return Err(Error::invalid(format!(
                "`{topic}` is a durable topic: its events are committed to the database first"
            )));
        }
        let published = self
            .broker
            .publish(EventDraft {
                topic,
                event_type: event_type.into_string(),
                data,
                publisher: who.user_id.clone(),
                idempotency_key: idempotency_key.map(|key| key.as_str().to_owned()),
            })
            .await?;
        if !published.duplicate {
            self.metrics.published(0);
        }
        Ok(published)
    }

    /// Authorizes and validates a publish on any lane; returns the parsed type and key.
    pub async fn check_publish(
        &self,
        who: &Principal,
        topic: &Topic,
        event_type: &str,
        data: &Option<Struct>,
        idempotency_key: Option<String>,
    ) -> Result<(EventType, Option<IdempotencyKey>), Error> {
        self.authorize(who, Action::Publish, topic).await?;
        let event_type = EventType::parse(event_type).map_err(Error::InvalidArgument)?;
        self.check_data_size(data)?;
        let key = IdempotencyKey::parse(idempotency_key).map_err(Error::InvalidArgument)?;
        if let Some(rate) = &self.publish_rate
            && !rate.allow(topic)
        {
            self.metrics.limit_hit(Limit::PublishRate);
            let topics = self.lanes().config();
            return Err(Error::RateLimited(format!(
                "`{topic}` takes at most {} publishes per second (bursts of {}) on this node \
                 (topics.publish_rate, topics.publish_burst); slow down and retry",
                topics.publish_rate, topics.publish_burst
            )));
        }
        Ok((event_type, key))
    }

    fn check_data_size(&self, data: &Option<Struct>) -> Result<(), Error> {
        let size = data.as_ref().map_or(0, Message::encoded_len);
        if size > self.config.max_event_data_bytes {
            return Err(Error::invalid(format!(
                "data is {size} bytes encoded; the limit is {} bytes (node.max_event_data_bytes)",
                self.config.max_event_data_bytes
            )));
        }
        Ok(())
    }

    /// Sends an ephemeral signal to the topic's current subscribers on every node. With a key
    /// and a TTL for the topic's kind, it is also kept as the latest of its key.
    pub async fn signal(
        &self,
        who: &Principal,
        topic: Topic,
        signal_type: &str,
        key: Option<String>,
        data: Option<Struct>,
    ) -> Result<Timestamp, Error> {
        self.authorize(who, Action::Signal, &topic).await?;
        let signal_type = EventType::parse(signal_type)
            .map_err(|e| Error::invalid(e.replace("event type", "signal type")))?;
        let key = key.unwrap_or_default();
        if key.len() > MAX_IDEMPOTENCY_KEY_LEN {
            return Err(Error::invalid(format!(
                "key is {} bytes; the limit is {MAX_IDEMPOTENCY_KEY_LEN}",
                key.len()
            )));
        }
        self.check_data_size(&data)?;
        if !self.signal_rate.allow(&who.user_id) {
            self.metrics.limit_hit(Limit::SignalRate);
            let topics = self.lanes().config();
            return Err(Error::RateLimited(format!(
                "too many signals: at most {} per second (bursts of {}) per sender \
                 (topics.signal_rate, topics.signal_burst); slow down and retry",
                topics.signal_rate, topics.signal_burst
            )));
        }
        self.send_signal(&topic, signal_type, key, data, &who.user_id)
            .await
    }

    /// Sends a signal a domain service decided on and authorized itself (typing that stopped
    /// by itself, a user going offline), as `publisher`: no policy check and no per-sender
    /// rate, since the service bounds its own signals. Otherwise like [`Node::signal`].
    pub async fn service_signal(
        &self,
        topic: &Topic,
        signal_type: &EventType,
        key: Option<String>,
        data: Option<Struct>,
        publisher: &str,
    ) -> Result<Timestamp, Error> {
        self.check_data_size(&data)?;
        self.send_signal(
            topic,
            signal_type.clone(),
            key.unwrap_or_default(),
            data,
            publisher,
        )
        .await
    }

    async fn send_signal(
        &self,
        topic: &Topic,
        signal_type: EventType,
        key: String,
        data: Option<Struct>,
        publisher: &str,
    ) -> Result<Timestamp, Error> {
        let time = herald_proto::timestamp(SystemTime::now());
        let signal = Arc::new(Signal {
            topic: topic.to_string(),
            r#type: signal_type.into_string(),
            key,
            data,
            time: Some(time),
            publisher: publisher.to_owned(),
        });
        if !signal.key.is_empty()
            && let Some(ttl) = self.lanes().signal_ttl(topic.kind())
        {
            // Kept before it is broadcast (see the broker's contract); not kept, it is still
            // delivered: at most once.
            if let Err(error) = self.broker.keep_signal(topic, signal.clone(), ttl).await {
                tracing::warn!(%topic, %error, "a keyed signal could not be kept");
            }
        }
        self.broker
            .broadcast(topic, HubItem::Signal(signal))
            .await?;
        self.metrics.published(EPHEMERAL);
        Ok(time)
    }

    /// Who has a stream open on this node (see [`crate::presence::online`]).
    pub fn online(&self) -> &Arc<Online> {
        self.presence.online()
    }

    /// Retained events after `since` (oldest first, at most `limit` and about
    /// [`MAX_HISTORY_BYTES`]), with the topic's top.
    pub async fn history(
        &self,
        who: &Principal,
        topic: Topic,
        since: Option<StreamPosition>,
        limit: u32,
    ) -> Result<(Vec<Arc<SharedEvent>>, StreamPosition), Error> {
        self.authorize(who, Action::Read, &topic).await?;
        let limit = match limit {
            0 => DEFAULT_HISTORY_LIMIT,
            n if n > MAX_HISTORY_LIMIT => {
                return Err(Error::invalid(format!(
                    "limit is {n}; the most one call returns is {MAX_HISTORY_LIMIT}"
                )));
            }
            n => n,
        };
        let Ok(_reading) = self.history_reads.try_acquire() else {
            self.metrics.limit_hit(Limit::ConcurrentHistory);
            return Err(Error::Busy(format!(
                "too many History calls in progress (at most {}, node.max_concurrent_history); retry shortly",
                self.config.max_concurrent_history
            )));
        };
        let budget = PageBudget {
            events: limit as usize,
            bytes: MAX_HISTORY_BYTES,
        };
        let (top, covered) = self
            .history
            .position(&topic, since.as_ref())
            .await
            .map_err(history_error)?;
        if !covered {
            return Err(gone(since.as_ref(), &top));
        }
        let after = match since {
            Some(since) => since,
            None => self.oldest_start(&topic, &top).await?,
        };
        let through = Some(top.offset).filter(|_| top.epoch == after.epoch);
        match self
            .history
            .page_through(&topic, &after, budget, through)
            .await
        {
            Ok(page) => Ok((page.events, top)),
            Err(HistoryError::Gone(_)) => Err(gone(Some(&after), &top)),
            Err(error) => Err(history_error(error)),
        }
    }

    /// The position just before the oldest retained event.
    async fn oldest_start(
        &self,
        topic: &Topic,
        top: &StreamPosition,
    ) -> Result<StreamPosition, Error> {
        if let Some(bounds) = self.history.bounds(topic).await.map_err(history_error)? {
            return Ok(StreamPosition {
                offset: bounds.oldest.saturating_sub(1),
                epoch: bounds.top.epoch,
            });
        }
        let page = self.broker.history(topic, HistoryStart::Oldest, 1).await?;
        let offset = page
            .events
            .first()
            .map_or(top.offset, |event| event.offset.saturating_sub(1));
        Ok(StreamPosition {
            offset,
            epoch: top.epoch.clone(),
        })
    }

    pub async fn presence(
        &self,
        who: &Principal,
        topic: Topic,
    ) -> Result<Vec<PresenceMember>, Error> {
        self.authorize(who, Action::Read, &topic).await?;
        Ok(self.presence.store().members(&topic).await?)
    }

    /// Ends every subscription with a "shutting down" status and refuses new ones.
    pub fn shutdown(&self) {
        self.hub.shutdown();
    }
}

/// The history of record, counting the pages read from it (`herald_catchup_pages_total`).
#[derive(Debug)]
struct CountedLog {
    inner: Arc<dyn EventLog>,
    metrics: Arc<Metrics>,
}

#[async_trait::async_trait]
impl EventLog for CountedLog {
    async fn bounds(
        &self,
        topic: &Topic,
    ) -> Result<crate::history::LogBounds, crate::history::LogError> {
        self.inner.bounds(topic).await
    }

    async fn read(
        &self,
        topic: &Topic,
        after: u64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<Arc<SharedEvent>>, crate::history::LogError> {
        self.metrics.catchup_page();
        self.inner.read(topic, after, limit, max_bytes).await
    }
}

pub(crate) fn shutting_down() -> Error {
    Error::Unavailable("the server is shutting down; reconnect and resume".into())
}

fn subscribed(top: &StreamPosition, recovered: bool) -> Subscribed {
    Subscribed {
        position: Some(top.clone()),
        recovered,
    }
}

fn gone(since: Option<&StreamPosition>, top: &StreamPosition) -> Error {
    let since = since.cloned().unwrap_or_default();
    Error::HistoryGone(format!(
        "history no longer covers offset {} of epoch `{}` (the topic is at offset {} of epoch `{}`); \
         reload your state and subscribe without `since`",
        since.offset, since.epoch, top.offset, top.epoch
    ))
}

pub(crate) fn history_error(error: HistoryError) -> Error {
    match error {
        HistoryError::Broker(error) => Error::Broker(error),
        HistoryError::Log(error) => Error::Log(error),
        HistoryError::Gone(since) => Error::HistoryGone(format!(
            "history no longer covers offset {} of epoch `{}`; reload your state and subscribe without `since`",
            since.offset, since.epoch
        )),
    }
}

#[cfg(test)]
mod tests {
    //! Model-based property tests of ordering and resume, on the core without a transport.

    use futures_util::StreamExt;
    use herald_proto::v1::{SubscribeResponse, subscribe_response::Frame};
    use proptest::prelude::*;
    use prost::Message;

    use super::*;
    use crate::{
        authz::PolicyConfig,
        broker::memory::{MemoryBroker, RetentionConfig},
        presence::memory::MemoryPresence,
    };

    fn node(history_max_events: usize, replay_cap: u64) -> Arc<Node> {
        let hub = Hub::new(100_000);
        let retention = RetentionConfig {
            history_max_events,
            ..RetentionConfig::default()
        };
        let broker = Arc::new(MemoryBroker::new(hub.clone(), retention));
        let config = NodeConfig {
            replay_cap,
            ..NodeConfig::default()
        };
        Node::new(NodeParts {
            hub,
            broker,
            presence: Arc::new(MemoryPresence::new()),
            policy: Policy::new(PolicyConfig::default()),
            config,
            lanes: Arc::new(Lanes::default()),
            log: None,
        })
        .unwrap()
    }

    fn service() -> Principal {
        Principal::new("svc", vec!["service".into()], u64::MAX / 2)
    }

    async fn publish(node: &Node, topic: &Topic) -> u64 {
        node.publish(&service(), topic.clone(), "t".into(), None, None)
            .await
            .unwrap()
            .position
            .offset
    }

    async fn next(stream: &mut EventStream) -> Frame {
        // Decode the encoded frame as a client would.
        let encoded = stream.next().await.unwrap().unwrap();
        let response = SubscribeResponse::decode(encoded.as_bytes().clone()).unwrap();
        response.frame.unwrap()
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// However publishes from several tasks interleave over several topics, every
        /// subscriber of a topic sees 1, 2, 3… with no gap, duplicate or reordering.
        #[test]
        fn concurrent_publishes_reach_every_subscriber_gapless_in_order(
            schedule in prop::collection::vec(prop::collection::vec(0usize..3, 0..40), 1..6)
        ) {
            runtime().block_on(async {
                let node = node(10_000, 10_000);
                let topics: Vec<Topic> =
                    (0..3).map(|i| Topic::parse(&format!("room:t{i}")).unwrap()).collect();
                let mut streams = vec![];
                for topic in &topics {
                    for _ in 0..2 {
                        let mut s = node.subscribe(&service(), topic.clone(), None).await.unwrap();
                        assert!(matches!(next(&mut s).await, Frame::Subscribed(_)));
                        streams.push((topic.clone(), s));
                    }
                }
                let tasks: Vec<_> = schedule.iter().cloned().map(|plan| {
                    let node = node.clone();
                    let topics = topics.clone();
                    tokio::spawn(async move {
                        for t in plan {
                            publish(&node, &topics[t]).await;
                        }
                    })
                }).collect();
                for task in tasks {
                    task.await.unwrap();
                }
                for (topic, stream) in &mut streams {
                    let expected = schedule.iter().flatten().filter(|&&t| topics[t] == *topic).count() as u64;
                    for offset in 1..=expected {
                        let Frame::Event(event) = next(stream).await else { panic!("event expected") };
                        assert_eq!(event.offset, offset, "{topic}");
                    }
                }
            });
        }

        /// Resuming after `since` replays exactly the missed events when history covers them
        /// and the gap is within the cap; otherwise it answers recovered = false with the top
        /// and replays nothing. Either way live events follow without a gap.
        #[test]
        fn resume_replays_exactly_the_missed_events_or_reports_not_recovered(
            history in 1usize..30,
            cap in 1u64..30,
            published in 0u64..60,
            since in 0u64..65,
            right_epoch in prop::bool::weighted(0.8),
        ) {
            runtime().block_on(async {
                let node = node(history, cap);
                let topic = Topic::parse("room:resume").unwrap();
                for _ in 0..published {
                    publish(&node, &topic).await;
                }
                let epoch = node.history(&service(), topic.clone(), None, 1).await.unwrap().1.epoch;
                let position = StreamPosition {
                    offset: since,
                    epoch: if right_epoch { epoch.clone() } else { "stale".into() },
                };
                let oldest = published.saturating_sub(history as u64) + 1;
                let covered = right_epoch
                    && since <= published
                    && since + 1 >= oldest
                    && published - since <= cap;

                let mut stream = node.subscribe(&service(), topic.clone(), Some(position)).await.unwrap();
                let Frame::Subscribed(subscribed) = next(&mut stream).await else { panic!() };
                assert_eq!(subscribed.recovered, covered);
                assert_eq!(subscribed.position.unwrap().offset, published);
                let first_live = publish(&node, &topic).await;
                let expected: Vec<u64> = if covered {
                    (since + 1..=first_live).collect()
                } else {
                    vec![first_live]
                };
                for offset in expected {
                    let Frame::Event(event) = next(&mut stream).await else { panic!() };
                    assert_eq!(event.offset, offset);
                }
            });
        }
    }
}
