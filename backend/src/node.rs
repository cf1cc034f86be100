//! The node: the core every transport calls. It validates, authorizes through the
//! [`Policy`], and joins the hub, the broker and presence into subscriptions with gapless
//! resume.
//!
//! Resume, step by step (see [`Node::subscribe`]):
//! 1. register with the hub first, so every event published from now on is queued for us;
//! 2. read history after `since` (the broker guarantees an event in the hub is in history);
//! 3. replay it, then stream live events, skipping offsets already replayed.
//!
//! Positions history cannot continue from (other epoch, trimmed, beyond the top) and gaps
//! larger than the replay cap answer `recovered = false` with the current top, never a
//! partial replay.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use herald_proto::{
    v1::{PresenceChange, PresenceMember, StreamPosition, Subscribed, presence_change::Kind},
    wkt::Struct,
};
use prost::Message;
use serde::Deserialize;

use crate::{
    auth::Principal,
    authz::{Action, Policy},
    broker::{Broker, EventDraft, HistoryPage, HistoryStart, Published},
    error::Error,
    event::SharedEvent,
    hub::{Hub, HubItem},
    presence::{ConnectionId, Presence},
    subscription::{EventStream, PresenceGuard, PresenceLeave},
    topic::{Topic, TopicKind},
};

/// The most events one `History` call returns.
pub const MAX_HISTORY_LIMIT: u32 = 1000;
/// The number of events `History` returns when no limit is given.
pub const DEFAULT_HISTORY_LIMIT: u32 = 100;
/// The longest event type.
pub const MAX_EVENT_TYPE_LEN: usize = 128;
/// The longest idempotency key.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 256;

/// Limits and switches of the core.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// How many events a subscriber may have queued before it is ended as a slow consumer.
    pub subscriber_queue: usize,
    /// The most events a resume replays; a larger gap answers `recovered = false`.
    pub replay_cap: u64,
    /// The largest encoded `data` of one event.
    pub max_event_data_bytes: usize,
    /// Topic kinds whose subscribers receive presence join/leave pushes.
    pub presence_events: Vec<String>,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            subscriber_queue: 1024,
            replay_cap: 1000,
            max_event_data_bytes: 64 * 1024,
            presence_events: vec!["room".into(), "conv".into(), "group".into()],
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

#[derive(Debug)]
pub struct Node {
    hub: Arc<Hub>,
    broker: Arc<dyn Broker>,
    presence: Arc<dyn Presence>,
    presence_notifier: Arc<PresenceNotifier>,
    policy: Policy,
    config: NodeConfig,
    next_connection: AtomicU64,
}

/// Announces presence changes on topics configured for them.
#[derive(Debug)]
struct PresenceNotifier {
    broker: Arc<dyn Broker>,
    presence: Arc<dyn Presence>,
    kinds: Vec<TopicKind>,
}

impl PresenceNotifier {
    async fn announce(&self, topic: &Topic, kind: Kind, member: PresenceMember) {
        if !self.kinds.contains(&topic.kind()) {
            return;
        }
        let change = PresenceChange {
            topic: topic.to_string(),
            kind: kind as i32,
            member: Some(member),
        };
        if let Err(error) = self
            .broker
            .broadcast(topic, HubItem::Presence(Arc::new(change)))
            .await
        {
            tracing::warn!(%topic, %error, "could not announce a presence change");
        }
    }
}

impl PresenceLeave for PresenceNotifier {
    fn leave(&self, topic: Topic, user_id: String, connection: ConnectionId) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return; // the runtime is gone: so is every subscriber that could be told
        };
        let presence = self.presence.clone();
        let notifier = PresenceNotifier {
            broker: self.broker.clone(),
            presence: self.presence.clone(),
            kinds: self.kinds.clone(),
        };
        runtime.spawn(async move {
            match presence.leave(&topic, &user_id, connection).await {
                Ok(Some(member)) => notifier.announce(&topic, Kind::Leave, member).await,
                Ok(None) => {}
                Err(error) => tracing::warn!(%topic, %error, "could not record a presence leave"),
            }
        });
    }
}

impl Node {
    pub fn new(
        hub: Arc<Hub>,
        broker: Arc<dyn Broker>,
        presence: Arc<dyn Presence>,
        policy: Policy,
        config: NodeConfig,
    ) -> Result<Arc<Node>, String> {
        let kinds = config.presence_kinds()?;
        Ok(Arc::new(Node {
            presence_notifier: Arc::new(PresenceNotifier {
                broker: broker.clone(),
                presence: presence.clone(),
                kinds,
            }),
            hub,
            broker,
            presence,
            policy,
            config,
            next_connection: AtomicU64::new(1),
        }))
    }

    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    pub fn authorize(&self, who: &Principal, action: Action, topic: &Topic) -> Result<(), Error> {
        self.policy
            .check(who, action, topic)
            .map_err(|denied| Error::PermissionDenied(denied.0))
    }

    /// Subscribes `who` to `topic`, resuming after `since` when given.
    pub async fn subscribe(
        &self,
        who: &Principal,
        topic: Topic,
        since: Option<StreamPosition>,
    ) -> Result<EventStream, Error> {
        self.authorize(who, Action::Read, &topic)?;
        let live = self.hub.subscribe(&topic).map_err(|_| shutting_down())?;
        let resume = self.resume(&topic, since).await?;
        let presence = self.join_presence(who, &topic).await;
        let expiry = Box::pin(tokio::time::sleep(who.time_left()));
        Ok(EventStream::new(
            resume.subscribed,
            resume.replay,
            live,
            resume.start,
            expiry,
            presence,
        ))
    }

    /// Works out what a subscriber resuming after `since` must be replayed. Call it after
    /// registering with the hub, so nothing published meanwhile is missed.
    pub async fn resume(
        &self,
        topic: &Topic,
        since: Option<StreamPosition>,
    ) -> Result<Resume, Error> {
        let Some(since) = since else {
            let top = self.top(topic).await?;
            return Ok(Resume {
                subscribed: subscribed(&top, true),
                replay: Vec::new(),
                start: top,
            });
        };
        let cap = usize::try_from(self.config.replay_cap).unwrap_or(usize::MAX);
        let page = self
            .broker
            .history(topic, HistoryStart::After(since.clone()), cap)
            .await?;
        let gap = page.top.offset.saturating_sub(since.offset);
        Ok(if page.covered && gap <= self.config.replay_cap {
            Resume {
                subscribed: subscribed(&page.top, true),
                replay: page.events,
                start: since,
            }
        } else {
            Resume {
                subscribed: subscribed(&page.top, false),
                replay: Vec::new(),
                start: page.top,
            }
        })
    }

    /// The topic's current top.
    pub async fn top(&self, topic: &Topic) -> Result<StreamPosition, Error> {
        Ok(self
            .broker
            .history(topic, HistoryStart::Oldest, 0)
            .await?
            .top)
    }

    /// Records `who` as present on `topic` (announcing a join if it is the user's first
    /// connection); dropping the guard leaves. Services are not recorded.
    pub(crate) async fn join_presence(
        &self,
        who: &Principal,
        topic: &Topic,
    ) -> Option<PresenceGuard> {
        if who.is_service() {
            return None;
        }
        let connection = ConnectionId(self.next_connection.fetch_add(1, Ordering::Relaxed));
        match self.presence.join(topic, &who.user_id, connection).await {
            Ok(joined) => {
                if let Some(member) = joined {
                    self.presence_notifier
                        .announce(topic, Kind::Join, member)
                        .await;
                }
                Some(PresenceGuard {
                    leave: self.presence_notifier.clone(),
                    topic: topic.clone(),
                    user_id: who.user_id.clone(),
                    connection,
                })
            }
            Err(error) => {
                tracing::warn!(%topic, %error, "could not record presence");
                None
            }
        }
    }

    pub async fn publish(
        &self,
        who: &Principal,
        topic: Topic,
        event_type: String,
        data: Option<Struct>,
        idempotency_key: Option<String>,
    ) -> Result<Published, Error> {
        let idempotency_key =
            self.check_publish(who, &topic, &event_type, &data, idempotency_key)?;
        let published = self
            .broker
            .publish(EventDraft {
                topic,
                event_type,
                data,
                publisher: who.user_id.clone(),
                idempotency_key,
            })
            .await?;
        Ok(published)
    }

    /// Publishes through the transactional outbox: commits the event, then waits (at most
    /// `wait`) for the relay to publish it. See [`crate::store`].
    pub async fn publish_durable(
        &self,
        store: &crate::store::Store,
        who: &Principal,
        topic: Topic,
        event_type: String,
        data: Option<Struct>,
        wait: std::time::Duration,
    ) -> Result<Published, Error> {
        self.check_publish(who, &topic, &event_type, &data, None)?;
        let mut tx = store.begin_as(&who.user_id).await?;
        tx.emit_struct(&topic, &event_type, data)?;
        let mut published = tx.commit_and_wait(wait).await?;
        published
            .pop()
            .ok_or_else(|| Error::Unavailable("the durable publish produced no event".into()))
    }

    /// Authorizes and validates a publish; returns the idempotency key in effect.
    fn check_publish(
        &self,
        who: &Principal,
        topic: &Topic,
        event_type: &str,
        data: &Option<Struct>,
        idempotency_key: Option<String>,
    ) -> Result<Option<String>, Error> {
        self.authorize(who, Action::Publish, topic)?;
        validate_event_type(event_type)?;
        let size = data.as_ref().map_or(0, Message::encoded_len);
        if size > self.config.max_event_data_bytes {
            return Err(Error::invalid(format!(
                "event data is {size} bytes encoded; the limit is {} bytes (node.max_event_data_bytes)",
                self.config.max_event_data_bytes
            )));
        }
        let idempotency_key = idempotency_key.filter(|key| !key.is_empty());
        if let Some(key) = &idempotency_key
            && key.len() > MAX_IDEMPOTENCY_KEY_LEN
        {
            return Err(Error::invalid(format!(
                "idempotency_key is {} bytes; the limit is {MAX_IDEMPOTENCY_KEY_LEN}",
                key.len()
            )));
        }
        Ok(idempotency_key)
    }

    pub async fn history(
        &self,
        who: &Principal,
        topic: Topic,
        since: Option<StreamPosition>,
        limit: u32,
    ) -> Result<HistoryPage, Error> {
        self.authorize(who, Action::Read, &topic)?;
        let limit = match limit {
            0 => DEFAULT_HISTORY_LIMIT,
            n if n > MAX_HISTORY_LIMIT => {
                return Err(Error::invalid(format!(
                    "limit is {n}; the most one call returns is {MAX_HISTORY_LIMIT}"
                )));
            }
            n => n,
        };
        let start = match &since {
            Some(since) => HistoryStart::After(since.clone()),
            None => HistoryStart::Oldest,
        };
        let page = self.broker.history(&topic, start, limit as usize).await?;
        if !page.covered {
            let since = since.unwrap_or_default();
            return Err(Error::HistoryGone(format!(
                "history no longer covers offset {} of epoch `{}` (the topic is at offset {} of epoch `{}`); \
                 reload your state and subscribe without `since`",
                since.offset, since.epoch, page.top.offset, page.top.epoch
            )));
        }
        Ok(page)
    }

    pub async fn presence(
        &self,
        who: &Principal,
        topic: Topic,
    ) -> Result<Vec<PresenceMember>, Error> {
        self.authorize(who, Action::Read, &topic)?;
        Ok(self.presence.members(&topic).await?)
    }

    /// Ends every subscription with a "shutting down" status and refuses new ones.
    pub fn shutdown(&self) {
        self.hub.shutdown();
    }
}

/// Where a (re)subscription starts.
#[derive(Debug)]
pub struct Resume {
    /// The first frame for the subscriber.
    pub subscribed: Subscribed,
    /// Events to replay before live ones, in offset order.
    pub replay: Vec<Arc<SharedEvent>>,
    /// The position the subscriber is at before the replay: live events at or below it
    /// are skipped.
    pub start: StreamPosition,
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

pub(crate) fn validate_event_type(event_type: &str) -> Result<(), Error> {
    let valid_char =
        |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':' | '/');
    if event_type.is_empty()
        || event_type.len() > MAX_EVENT_TYPE_LEN
        || !event_type.chars().all(valid_char)
    {
        return Err(Error::invalid(format!(
            "event type must be 1–{MAX_EVENT_TYPE_LEN} characters of A–Z a–z 0–9 . _ - : /, for example `chat.message`"
        )));
    }
    Ok(())
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
        Node::new(
            hub,
            broker,
            Arc::new(MemoryPresence::new()),
            Policy::new(PolicyConfig::default()),
            config,
        )
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
                let epoch = node.history(&service(), topic.clone(), None, 1).await.unwrap().top.epoch;
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
