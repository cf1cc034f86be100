//! Presence as subscribers see it: records joins and leaves in the [`Presence`] store and
//! announces the first join and the last leave of a user on topic kinds configured for it.
//! Every join and leave also counts in [`Online`], who is online at all.
//!
//! Announcements are coalesced per topic: the first change of a topic starts a timer of
//! `presence_interval`; every change until it fires joins the same pending diff, and when it
//! fires one `PresenceChange` carries them all. So a room that N users join costs each
//! subscriber one frame per interval, not one per join (N² frames in all). Above
//! `presence_max_members` members a diff carries counts only. See `PresenceChange` in
//! `proto/herald/v1/events.proto` for the wire shape.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use herald_proto::{
    support::lock,
    v1::{PresenceChange, PresenceMember, presence_change::Kind},
};

use super::{ConnectionId, Presence, online::Online};
use crate::{
    auth::Principal,
    broker::Broker,
    hub::HubItem,
    topic::{Topic, TopicKind},
};

/// How presence pushes are batched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Coalescing {
    /// The longest a change waits for others to join its diff: at most one push per topic
    /// per interval.
    pub interval: Duration,
    /// Above this many members a diff carries counts only.
    pub max_members: usize,
}

/// One user's net change within a pending diff.
#[derive(Debug)]
struct Pending {
    /// What the user's first change in this interval was: a join followed by a leave cancels
    /// out, a leave followed by a join is a (re)join.
    first: Kind,
    last: Kind,
    member: PresenceMember,
}

#[derive(Debug, Default)]
struct TopicDiff {
    changes: HashMap<String, Pending>,
    joined: u32,
    left: u32,
}

#[derive(Debug, Default)]
struct Batches {
    /// Announced members per topic (joins minus leaves), for the counts and the threshold.
    members: HashMap<Topic, u32>,
    /// Diffs waiting for their timer; a topic is here exactly while its timer runs.
    pending: HashMap<Topic, TopicDiff>,
}

#[derive(Debug)]
pub struct PresenceNotifier {
    broker: Arc<dyn Broker>,
    presence: Arc<dyn Presence>,
    kinds: Vec<TopicKind>,
    next_connection: AtomicU64,
    online: Arc<Online>,
    coalescing: Coalescing,
    batches: Mutex<Batches>,
    pushes: AtomicU64,
}

impl PresenceNotifier {
    pub fn new(
        broker: Arc<dyn Broker>,
        presence: Arc<dyn Presence>,
        kinds: Vec<TopicKind>,
        coalescing: Coalescing,
    ) -> Arc<PresenceNotifier> {
        let online = match presence.online_directory() {
            Some(directory) => Online::with_directory(directory),
            None => Arc::new(Online::new()),
        };
        Arc::new(PresenceNotifier {
            broker,
            presence,
            kinds,
            next_connection: AtomicU64::new(1),
            online,
            coalescing,
            batches: Mutex::default(),
            pushes: AtomicU64::new(0),
        })
    }

    /// Presence pushes broadcast so far (one per topic per interval with changes).
    pub fn pushes(&self) -> u64 {
        self.pushes.load(Ordering::Relaxed)
    }

    pub fn store(&self) -> &Arc<dyn Presence> {
        &self.presence
    }

    /// Who has any stream open on this node.
    pub fn online(&self) -> &Arc<Online> {
        &self.online
    }

    /// Records `who` as present on `topic` (announcing a join if it is the user's first
    /// connection); dropping the guard leaves. Services are not recorded.
    pub async fn join(self: &Arc<Self>, who: &Principal, topic: &Topic) -> Option<PresenceGuard> {
        if who.is_service() {
            return None;
        }
        let connection = ConnectionId(self.next_connection.fetch_add(1, Ordering::Relaxed));
        self.online.opened(&who.user_id);
        let recorded = match self.presence.join(topic, &who.user_id, connection).await {
            Ok(joined) => {
                if let Some(member) = joined {
                    self.announce(topic, Kind::Join, member).await;
                }
                true
            }
            Err(error) => {
                tracing::warn!(%topic, %error, "could not record presence");
                false
            }
        };
        Some(PresenceGuard {
            notifier: self.clone(),
            topic: topic.clone(),
            user_id: who.user_id.clone(),
            connection,
            recorded,
        })
    }

    /// Adds a change to the topic's pending diff, starting its timer if it has none.
    async fn announce(self: &Arc<Self>, topic: &Topic, kind: Kind, member: PresenceMember) {
        if !self.kinds.contains(&topic.kind()) {
            return;
        }
        let start_timer = {
            let mut batches = lock(&self.batches);
            let count = batches.members.entry(topic.clone()).or_insert(0);
            match kind {
                Kind::Leave => *count = count.saturating_sub(1),
                _ => *count = count.saturating_add(1),
            }
            if *count == 0 {
                batches.members.remove(topic);
            }
            let start_timer = !batches.pending.contains_key(topic);
            let diff = batches.pending.entry(topic.clone()).or_default();
            match kind {
                Kind::Leave => diff.left += 1,
                _ => diff.joined += 1,
            }
            match diff.changes.get_mut(&member.user_id) {
                Some(pending) if pending.first == Kind::Join && kind == Kind::Leave => {
                    diff.changes.remove(&member.user_id);
                }
                Some(pending) => {
                    pending.last = kind;
                    pending.member = member;
                }
                None => {
                    diff.changes.insert(
                        member.user_id.clone(),
                        Pending {
                            first: kind,
                            last: kind,
                            member,
                        },
                    );
                }
            }
            start_timer
        };
        if start_timer {
            let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                return;
            };
            let notifier = self.clone();
            let topic = topic.clone();
            runtime.spawn(async move {
                tokio::time::sleep(notifier.coalescing.interval).await;
                notifier.flush(&topic).await;
            });
        }
    }

    /// Broadcasts the topic's pending diff as one `PresenceChange`.
    async fn flush(&self, topic: &Topic) {
        let change = {
            let mut batches = lock(&self.batches);
            let Some(diff) = batches.pending.remove(topic) else {
                return;
            };
            let members = batches.members.get(topic).copied().unwrap_or(0);
            diff_change(topic, diff, members, self.coalescing.max_members)
        };
        let Some(change) = change else { return };
        self.pushes.fetch_add(1, Ordering::Relaxed);
        if let Err(error) = self
            .broker
            .broadcast(topic, HubItem::Presence(Arc::new(change)))
            .await
        {
            tracing::warn!(%topic, %error, "could not announce a presence change");
        }
    }

    fn leave(self: &Arc<Self>, topic: Topic, user_id: String, connection: ConnectionId) {
        self.online.closed(&user_id);
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return; // the runtime is gone: so is every subscriber that could be told
        };
        let notifier = self.clone();
        runtime.spawn(async move {
            match notifier.presence.leave(&topic, &user_id, connection).await {
                Ok(Some(member)) => notifier.announce(&topic, Kind::Leave, member).await,
                Ok(None) => {}
                Err(error) => tracing::warn!(%topic, %error, "could not record a presence leave"),
            }
        });
    }
}

/// One subscription's presence: dropping it leaves the topic.
#[derive(Debug)]
pub struct PresenceGuard {
    notifier: Arc<PresenceNotifier>,
    topic: Topic,
    user_id: String,
    connection: ConnectionId,
    /// Whether the store recorded the join (else only [`Online`] counted it).
    recorded: bool,
}

/// The push for one interval's diff; `None` when its changes cancelled out.
fn diff_change(
    topic: &Topic,
    diff: TopicDiff,
    members: u32,
    max_members: usize,
) -> Option<PresenceChange> {
    let mut change = PresenceChange {
        topic: topic.to_string(),
        kind: Kind::Diff as i32,
        members,
        joined: diff.joined,
        left: diff.left,
        ..PresenceChange::default()
    };
    if members as usize > max_members {
        return Some(change);
    }
    if diff.changes.is_empty() {
        return None;
    }
    let mut changes: Vec<Pending> = diff.changes.into_values().collect();
    if let [only] = changes.as_slice()
        && only.first == only.last
    {
        change.kind = only.last as i32;
        change.member = changes.pop().map(|pending| pending.member);
        return Some(change);
    }
    changes.sort_by(|a, b| a.member.user_id.cmp(&b.member.user_id));
    for pending in changes {
        match (pending.first, pending.last) {
            // Was present, left, came back: the client drops and re-adds it.
            (Kind::Leave, Kind::Join) => {
                change.leaves.push(pending.member.clone());
                change.joins.push(pending.member);
            }
            (_, Kind::Leave) => change.leaves.push(pending.member),
            _ => change.joins.push(pending.member),
        }
    }
    Some(change)
}

impl Drop for PresenceGuard {
    fn drop(&mut self) {
        if !self.recorded {
            self.notifier.online.closed(&self.user_id);
            return;
        }
        self.notifier.leave(
            self.topic.clone(),
            std::mem::take(&mut self.user_id),
            self.connection,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        broker::memory::{MemoryBroker, RetentionConfig},
        hub::{Hub, HubSubscription},
        presence::memory::MemoryPresence,
    };

    fn notifier(hub: &Arc<Hub>, max_members: usize) -> Arc<PresenceNotifier> {
        let broker = Arc::new(MemoryBroker::new(hub.clone(), RetentionConfig::default()));
        PresenceNotifier::new(
            broker,
            Arc::new(MemoryPresence::new()),
            vec![TopicKind::Room],
            Coalescing {
                interval: Duration::from_millis(250),
                max_members,
            },
        )
    }

    fn user(name: &str) -> Principal {
        Principal::new(name, vec![], u64::MAX / 2)
    }

    fn pushes(subscription: &mut HubSubscription) -> Vec<Arc<PresenceChange>> {
        let mut changes = Vec::new();
        while let Ok(item) = subscription.receiver().try_recv() {
            if let HubItem::Presence(change) = item {
                changes.push(change);
            }
        }
        changes
    }

    #[tokio::test(start_paused = true)]
    async fn finding_15_joins_of_one_interval_reach_each_subscriber_as_one_diff() {
        let hub = Hub::new(100_000);
        let notifier = notifier(&hub, 1000);
        let room = Topic::parse("room:big").unwrap();
        let mut watcher = hub.subscribe(&room).unwrap();
        let mut guards = Vec::new();
        for i in 0..500 {
            guards.push(notifier.join(&user(&format!("u{i}")), &room).await);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let changes = pushes(&mut watcher);
        assert_eq!(changes.len(), 1, "one frame for 500 joins");
        assert_eq!(changes[0].kind, Kind::Diff as i32);
        assert_eq!(changes[0].joins.len(), 500);
        assert_eq!(changes[0].members, 500);
        assert_eq!(notifier.pushes(), 1);

        // One change alone keeps the single-member shape.
        drop(guards.pop());
        tokio::time::sleep(Duration::from_millis(300)).await;
        let changes = pushes(&mut watcher);
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].kind, Kind::Leave as i32);
        assert_eq!(changes[0].member.as_ref().unwrap().user_id, "u499");
        assert_eq!(changes[0].members, 499);

        // A join and a leave within one interval cancel out: nothing is pushed.
        let guard = notifier.join(&user("brief"), &room).await;
        drop(guard);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(pushes(&mut watcher).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn finding_15_above_the_member_threshold_only_counts_are_pushed() {
        let hub = Hub::new(100_000);
        let notifier = notifier(&hub, 10);
        let room = Topic::parse("room:huge").unwrap();
        let mut watcher = hub.subscribe(&room).unwrap();
        let mut guards = Vec::new();
        for round in 0..5 {
            for i in 0..20 {
                guards.push(notifier.join(&user(&format!("u{round}-{i}")), &room).await);
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let changes = pushes(&mut watcher);
        assert_eq!(changes.len(), 5, "one frame per interval");
        for (round, change) in changes.iter().enumerate() {
            assert_eq!(change.kind, Kind::Diff as i32);
            assert!(change.joins.is_empty() && change.leaves.is_empty() && change.member.is_none());
            assert_eq!(change.joined, 20);
            assert_eq!(change.members as usize, 20 * (round + 1));
        }
    }
}
