//! The authorization policy: the one place that answers "may this principal do this on this
//! topic". Every transport and service asks here; none decides on its own.
//!
//! | topic          | subscribe (and read history / presence)     | publish                      |
//! |----------------|---------------------------------------------|------------------------------|
//! | `user:X`       | X itself, services                          | services                     |
//! | `role:R`       | holders of role R, services                 | services                     |
//! | `room:X`       | any authenticated user (configurable)       | any user (configurable), services |
//! | `order:N`      | admins, services (customers and couriers come with orders) | services      |
//! | `deployment:N` | admins, services (owners come with deployments) | services                 |
//! | `conv:N`, `group:N` | services (members come with messaging)  | services                     |

use serde::Deserialize;

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

/// A refusal; the message says who may.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Denied(pub String);

#[derive(Debug, Clone, Default)]
pub struct Policy {
    config: PolicyConfig,
}

impl Policy {
    pub fn new(config: PolicyConfig) -> Policy {
        Policy { config }
    }

    pub fn check(&self, who: &Principal, action: Action, topic: &Topic) -> Result<(), Denied> {
        if who.is_service() {
            return Ok(());
        }
        let allowed = match (action, topic.kind()) {
            (Action::Read, TopicKind::User) => topic.id() == who.user_id,
            (Action::Read, TopicKind::Role) => who.has_role(topic.id()),
            (Action::Read, TopicKind::Room) => self.config.rooms_public,
            (Action::Publish, TopicKind::Room) => self.config.rooms_user_publish,
            (Action::Read, TopicKind::Order | TopicKind::Deployment) => who.has_role(ADMIN_ROLE),
            (Action::Read, TopicKind::Conv | TopicKind::Group) => false,
            (Action::Publish, _) => false,
        };
        if allowed {
            Ok(())
        } else {
            Err(Denied(refusal(action, topic)))
        }
    }
}

fn refusal(action: Action, topic: &Topic) -> String {
    let verb = match action {
        Action::Read => "subscribe to",
        Action::Publish => "publish to",
    };
    let rule = match (action, topic.kind()) {
        (Action::Publish, TopicKind::Room) => "publishing to rooms is disabled for users",
        (Action::Publish, _) => "only services publish to this kind of topic",
        (Action::Read, TopicKind::User) => "user topics are open to their own user and services",
        (Action::Read, TopicKind::Role) => "role topics are open to holders of the role",
        (Action::Read, TopicKind::Room) => "rooms are not public on this server",
        (Action::Read, TopicKind::Order | TopicKind::Deployment) => {
            "this topic is open to admins and services"
        }
        (Action::Read, TopicKind::Conv | TopicKind::Group) => {
            "this topic is open to its members; membership is not enabled on this server"
        }
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

    #[test]
    fn users_read_only_their_own_user_topic() {
        let policy = Policy::default();
        let alice = user("alice", &[]);
        assert!(
            policy
                .check(&alice, Action::Read, &topic("user:alice"))
                .is_ok()
        );
        let denied = policy
            .check(&alice, Action::Read, &topic("user:bob"))
            .unwrap_err();
        assert!(denied.0.contains("user:bob"));
        assert!(
            policy
                .check(&alice, Action::Publish, &topic("user:alice"))
                .is_err()
        );
    }

    #[test]
    fn role_topics_need_the_role() {
        let policy = Policy::default();
        assert!(
            policy
                .check(&user("a", &["admin"]), Action::Read, &topic("role:admin"))
                .is_ok()
        );
        assert!(
            policy
                .check(&user("a", &[]), Action::Read, &topic("role:admin"))
                .is_err()
        );
    }

    #[test]
    fn services_may_do_anything() {
        let policy = Policy::default();
        let service = user("billing", &["service"]);
        for t in ["user:bob", "role:admin", "conv:1", "order:9", "room:x"] {
            assert!(policy.check(&service, Action::Read, &topic(t)).is_ok());
            assert!(policy.check(&service, Action::Publish, &topic(t)).is_ok());
        }
    }

    #[test]
    fn rooms_follow_configuration() {
        let alice = user("alice", &[]);
        let open = Policy::default();
        assert!(
            open.check(&alice, Action::Read, &topic("room:lobby"))
                .is_ok()
        );
        assert!(
            open.check(&alice, Action::Publish, &topic("room:lobby"))
                .is_ok()
        );
        let closed = Policy::new(PolicyConfig {
            rooms_public: false,
            rooms_user_publish: false,
        });
        assert!(
            closed
                .check(&alice, Action::Read, &topic("room:lobby"))
                .is_err()
        );
        assert!(
            closed
                .check(&alice, Action::Publish, &topic("room:lobby"))
                .is_err()
        );
    }
}
