//! Presence as subscribers see it: records joins and leaves in the [`Presence`] store and
//! announces the first join and the last leave of a user on topic kinds configured for it.
//! Every join and leave also counts in [`Online`], who is online at all.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use herald_proto::v1::{PresenceChange, PresenceMember, presence_change::Kind};

use super::{ConnectionId, Presence, online::Online};
use crate::{
    auth::Principal,
    broker::Broker,
    hub::HubItem,
    topic::{Topic, TopicKind},
};

#[derive(Debug)]
pub struct PresenceNotifier {
    broker: Arc<dyn Broker>,
    presence: Arc<dyn Presence>,
    kinds: Vec<TopicKind>,
    next_connection: AtomicU64,
    online: Arc<Online>,
}

impl PresenceNotifier {
    pub fn new(
        broker: Arc<dyn Broker>,
        presence: Arc<dyn Presence>,
        kinds: Vec<TopicKind>,
    ) -> Arc<PresenceNotifier> {
        Arc::new(PresenceNotifier {
            broker,
            presence,
            kinds,
            next_connection: AtomicU64::new(1),
            online: Arc::new(Online::new()),
        })
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
