//! The authorization policy: the one place that answers "may this principal do this on this
//! topic". Every transport and service asks here; none decides on its own.
//!
//! | topic          | subscribe (and read history / presence)     | publish                      |
//! |----------------|---------------------------------------------|------------------------------|
//! | `user:X`       | X itself, services                          | services                     |
//! | `role:R`       | holders of role R, services                 | services                     |
//! | `room:X`       | any authenticated user (configurable)       | any user (configurable), services |
//! | `order:N`      | admins, services, its members (the customer; its courier reads `Orders/Watch`) | services |
//! | `deployment:N` | admins, services, its members (owner)       | services                     |
//! | `conv:N`, `group:N` | services, their members                | services                     |
//!
//! Signals (`Action::Signal`, ephemeral): rooms — anyone who may read them; `deployment:`,
//! `conv:`, `group:` — whoever may read them; `order:`, `user:`, `role:` — services (a
//! courier's position reaches `order:` topics through `Orders/ReportLocation`, which checks
//! and throttles it, never as a raw signal).
//!
//! "Members" are facts only the domain's tables know: each domain registers a [`Membership`]
//! for its kind, and the policy asks it. A kind without one has no members (only admins and
//! services get in), so nothing opens up before its domain exists.

use std::{collections::HashMap, fmt::Debug, sync::Arc};

use async_trait::async_trait;
use serde::Deserialize;

use herald_proto::v1::Event;

use crate::{
    auth::{ADMIN_ROLE, Principal},
    topic::{Topic, TopicKind},
};

/// What a principal wants to do on a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Subscribe, read history or list presence.
    Read,
    /// Publish an event.
    Publish,
    /// Send an ephemeral signal (typing, a position). Separate from `Publish`, so members can
    /// signal where only services may publish events.
    Signal,
}

/// The configurable parts of the policy.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// Any authenticated user may subscribe to `room:` topics.
    pub rooms_public: bool,
    /// Any authenticated user may publish to `room:` topics.
    pub rooms_user_publish: bool,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            rooms_public: true,
            rooms_user_publish: true,
        }
    }
}

/// Why the policy said no.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// Not allowed; the message says who may.
    #[error("{0}")]
    Forbidden(String),
    /// The facts could not be read (the database is unreachable); retry later.
    #[error("{0}")]
    Unavailable(String),
}

/// Facts the policy cannot read from a token: who belongs to a topic (the customer and courier
/// of an order, the owner of a deployment, the members of a conversation). A domain module
/// implements it over its tables and registers it for its topic kind.
///
/// Contract: `is_member` answers for the topic's current state (a removed member is no longer
/// one), never creates state, and reports an unreachable database as an error rather than
/// `false`, so a refusal always means "not a member".
///
/// `ends_membership` says whether an event of the topic is the one that ends a user's
/// membership (a removal, a leave). It must be a pure function of the event, true for exactly
/// the events whose commit makes `is_member` false for that user: a live stream of that user
/// ends with PERMISSION_DENIED right after delivering it (see [`Revocation`]), so nothing
/// committed after the removal reaches a removed member, on any node or transport. Kinds
/// whose members never lose access keep the default.
#[async_trait]
pub trait Membership: Send + Sync + Debug + 'static {
    async fn is_member(&self, topic: &Topic, user_id: &str) -> Result<bool, MembershipError>;

    fn ends_membership(&self, _topic: &Topic, _event: &Event, _user_id: &str) -> bool {
        false
    }
}

/// One stream's watch for the event that ends its subscriber's membership.
///
/// `after` is the topic's offset read *before* the membership check that admitted the stream:
/// a removal at or below it happened before that check, so the subscriber was added again
/// since (or the check would have refused), and replaying it ends nothing. Any removal above
/// it ends the stream.
#[derive(Debug, Clone)]
pub struct Revocation {
    members: Arc<dyn Membership>,
    topic: Topic,
    user_id: String,
    after: u64,
}

impl Revocation {
    /// Whether the stream must end right after delivering `event`.
    pub fn ends_with(&self, event: &Event) -> bool {
        event.offset > self.after
            && self
                .members
                .ends_membership(&self.topic, event, &self.user_id)
    }

    pub fn user_id(&self) -> &str {
        &self.user_id
    }
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("membership could not be checked: {0}")]
pub struct MembershipError(pub String);

#[derive(Debug, Clone, Default)]
pub struct Policy {
    config: PolicyConfig,
    members: Arc<HashMap<TopicKind, Arc<dyn Membership>>>,
}

/// What the token alone decides.
enum Decision {
    Allow,
    Deny,
    /// Allowed if the principal is a member of the topic.
    AskMembers,
}

impl Policy {
    pub fn new(config: PolicyConfig) -> Policy {
        Policy {
            config,
            members: Arc::default(),
        }
    }

    /// Registers the membership facts of one topic kind (done by its domain module).
    pub fn with_membership(mut self, kind: TopicKind, members: Arc<dyn Membership>) -> Policy {
        Arc::make_mut(&mut self.members).insert(kind, members);
        self
    }

    pub async fn check(
        &self,
        who: &Principal,
        action: Action,
        topic: &Topic,
    ) -> Result<(), Denied> {
        let allowed = match self.decide(who, action, topic) {
            Decision::Allow => true,
            Decision::Deny => false,
            Decision::AskMembers => match self.members.get(&topic.kind()) {
                Some(members) => members
                    .is_member(topic, &who.user_id)
                    .await
                    .map_err(|e| Denied::Unavailable(format!("{e}; retry with backoff")))?,
                None => false,
            },
        };
        if allowed {
            Ok(())
        } else {
            Err(Denied::Forbidden(refusal(action, topic)))
        }
    }

    /// Whether `who` reads `topic` by being one of its members (not by its token alone): then
    /// its membership may end while it reads, and [`Policy::revocation`] watches for that.
    pub fn reads_as_member(&self, who: &Principal, topic: &Topic) -> bool {
        matches!(self.decide(who, Action::Read, topic), Decision::AskMembers)
            && self.members.contains_key(&topic.kind())
    }

    /// The watch for the end of `who`'s membership of `topic`, for a stream admitted by a
    /// membership check made after the topic was at offset `after`; `None` when `who` does
    /// not read as a member.
    pub fn revocation(&self, who: &Principal, topic: &Topic, after: u64) -> Option<Revocation> {
        if !self.reads_as_member(who, topic) {
            return None;
        }
        let members = self.members.get(&topic.kind())?.clone();
        Some(Revocation {
            members,
            topic: topic.clone(),
            user_id: who.user_id.clone(),
            after,
        })
    }

    fn decide(&self, who: &Principal, action: Action, topic: &Topic) -> Decision {
        use Decision::{Allow, AskMembers, Deny};
        let yes = |allowed: bool| if allowed { Allow } else { Deny };
        if who.is_service() {
            return Allow;
        }
        match (action, topic.kind()) {
            (Action::Read, TopicKind::User) => yes(topic.id() == who.user_id),
            (Action::Read, TopicKind::Role) => yes(who.has_role(topic.id())),
            (Action::Read | Action::Signal, TopicKind::Room) => yes(self.config.rooms_public),
            (Action::Publish, TopicKind::Room) => yes(self.config.rooms_user_publish),
            (Action::Read, TopicKind::Order)
            | (Action::Read | Action::Signal, TopicKind::Deployment) => {
                if who.has_role(ADMIN_ROLE) {
                    Allow
                } else {
                    AskMembers
                }
            }
            (Action::Read | Action::Signal, TopicKind::Conv | TopicKind::Group) => AskMembers,
            (Action::Signal, TopicKind::User | TopicKind::Role | TopicKind::Order)
            | (Action::Publish, _) => Deny,
        }
    }
}

fn refusal(action: Action, topic: &Topic) -> String {
    let verb = match action {
        Action::Read => "subscribe to",
        Action::Publish => "publish to",
        Action::Signal => "signal on",
    };
    let rule = match (action, topic.kind()) {
        (Action::Publish, TopicKind::Room) => "publishing to rooms is disabled for users",
        (Action::Publish, _) => "only services publish to this kind of topic",
        (Action::Signal, TopicKind::Room) => "rooms are not public on this server",
        (Action::Signal, TopicKind::Deployment) => {
            "signals on this topic are for its members, admins and services"
        }
        (Action::Signal, TopicKind::Order) => {
            "order topics take signals from services only; couriers report their position with \
             Orders/ReportLocation"
        }
        (Action::Signal, TopicKind::Conv | TopicKind::Group) => {
            "signals on this topic are for its members"
        }
        (Action::Signal, _) => "only services signal on this kind of topic",
        (Action::Read, TopicKind::User) => "user topics are open to their own user and services",
        (Action::Read, TopicKind::Role) => "role topics are open to holders of the role",
        (Action::Read, TopicKind::Room) => "rooms are not public on this server",
        (Action::Read, TopicKind::Order | TopicKind::Deployment) => {
            "this topic is open to its members, admins and services"
        }
        (Action::Read, TopicKind::Conv | TopicKind::Group) => "this topic is open to its members",
    };
    format!("not allowed to {verb} `{topic}`: {rule}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: &str, roles: &[&str]) -> Principal {
        Principal::new(
            id,
            roles.iter().map(|r| (*r).to_owned()).collect(),
            u64::MAX,
        )
    }

    fn topic(s: &str) -> Topic {
        Topic::parse(s).unwrap()
    }

    #[tokio::test]
    async fn users_read_only_their_own_user_topic() {
        let policy = Policy::default();
        let alice = user("alice", &[]);
        assert!(
            policy
                .check(&alice, Action::Read, &topic("user:alice"))
                .await
                .is_ok()
        );
        let denied = policy
            .check(&alice, Action::Read, &topic("user:bob"))
            .await
            .unwrap_err();
        assert!(denied.to_string().contains("user:bob"));
        assert!(
            policy
                .check(&alice, Action::Publish, &topic("user:alice"))
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn role_topics_need_the_role() {
        let policy = Policy::default();
        assert!(
            policy
                .check(&user("a", &["admin"]), Action::Read, &topic("role:admin"))
                .await
                .is_ok()
        );
        assert!(
            policy
                .check(&user("a", &[]), Action::Read, &topic("role:admin"))
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn services_may_do_anything() {
        let policy = Policy::default();
        let service = user("billing", &["service"]);
        for t in ["user:bob", "role:admin", "conv:1", "order:9", "room:x"] {
            assert!(
                policy
                    .check(&service, Action::Read, &topic(t))
                    .await
                    .is_ok()
            );
            assert!(
                policy
                    .check(&service, Action::Publish, &topic(t))
                    .await
                    .is_ok()
            );
        }
    }

    #[tokio::test]
    async fn rooms_follow_configuration() {
        let alice = user("alice", &[]);
        let open = Policy::default();
        assert!(
            open.check(&alice, Action::Read, &topic("room:lobby"))
                .await
                .is_ok()
        );
        assert!(
            open.check(&alice, Action::Publish, &topic("room:lobby"))
                .await
                .is_ok()
        );
        let closed = Policy::new(PolicyConfig {
            rooms_public: false,
            rooms_user_publish: false,
        });
        assert!(
            closed
                .check(&alice, Action::Read, &topic("room:lobby"))
                .await
                .is_err()
        );
        assert!(
            closed
                .check(&alice, Action::Publish, &topic("room:lobby"))
                .await
                .is_err()
        );
    }

    #[derive(Debug)]
    struct Owners(&'static [(&'static str, &'static str)]);

    #[async_trait]
    impl Membership for Owners {
        async fn is_member(&self, topic: &Topic, user_id: &str) -> Result<bool, MembershipError> {
            if topic.id() == "down" {
                return Err(MembershipError("database unreachable".into()));
            }
            Ok(self.0.contains(&(topic.as_str(), user_id)))
        }
    }

    /// Members of `conv:` whose removal is an event of type `removed` naming them.
    #[derive(Debug)]
    struct Removable;

    #[async_trait]
    impl Membership for Removable {
        async fn is_member(&self, _: &Topic, _: &str) -> Result<bool, MembershipError> {
            Ok(true)
        }

        fn ends_membership(&self, _: &Topic, event: &Event, user_id: &str) -> bool {
            event.r#type == "removed" && event.publisher == user_id
        }
    }

    #[test]
    fn only_a_member_is_watched_and_only_for_removals_after_its_check() {
        let policy = Policy::default().with_membership(TopicKind::Conv, Arc::new(Removable));
        let conv = topic("conv:1");
        let bob = user("bob", &[]);
        assert!(
            policy
                .revocation(&user("svc", &["service"]), &conv, 0)
                .is_none()
        );
        assert!(policy.revocation(&bob, &topic("user:bob"), 0).is_none());
        let watch = policy
            .revocation(&bob, &conv, 5)
            .expect("bob reads as a member");
        let removal = |offset: u64, of: &str| Event {
            offset,
            r#type: "removed".into(),
            publisher: of.into(),
            ..Event::default()
        };
        assert!(watch.ends_with(&removal(6, "bob")));
        assert!(
            !watch.ends_with(&removal(6, "ann")),
            "another member's removal"
        );
        assert!(
            !watch.ends_with(&removal(5, "bob")),
            "a removal before the check that admitted bob again"
        );
    }

    #[tokio::test]
    async fn members_come_from_the_registered_membership_of_their_kind() {
        let owners = Arc::new(Owners(&[("deployment:7", "alice")]));
        let policy = Policy::default().with_membership(TopicKind::Deployment, owners);
        let alice = user("alice", &[]);
        let bob = user("bob", &[]);
        let seven = topic("deployment:7");
        assert!(policy.check(&alice, Action::Read, &seven).await.is_ok());
        assert!(policy.check(&alice, Action::Signal, &seven).await.is_ok());
        assert!(matches!(
            policy.check(&bob, Action::Read, &seven).await,
            Err(Denied::Forbidden(_))
        ));
        assert!(
            policy.check(&alice, Action::Publish, &seven).await.is_err(),
            "members read; services publish"
        );
        assert!(
            policy
                .check(&user("ops", &["admin"]), Action::Read, &seven)
                .await
                .is_ok()
        );
        assert!(matches!(
            policy
                .check(&alice, Action::Read, &topic("deployment:down"))
                .await,
            Err(Denied::Unavailable(_))
        ));
        assert!(
            policy
                .check(&alice, Action::Read, &topic("conv:1"))
                .await
                .is_err(),
            "a kind without a registered membership has no members"
        );
    }
}
