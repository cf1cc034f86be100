//! Topics: `kind:id` strings parsed once, at the boundary, into a typed [`Topic`].

use std::{fmt, str::FromStr, sync::Arc};

/// The longest topic accepted, in bytes.
pub const MAX_TOPIC_LEN: usize = 255;

/// What a topic is about; decides who may subscribe (see [`crate::authz`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TopicKind {
    /// `user:ID` — one user's inbox, on all their sessions.
    User,
    /// `role:NAME` — everyone whose token carries the role.
    Role,
    /// `group:ID` — members of a group.
    Group,
    /// `conv:ID` — members of a conversation.
    Conv,
    /// `order:ID` — its customer, its assigned courier, admins.
    Order,
    /// `deployment:ID` — its owner and admins.
    Deployment,
    /// `room:NAME` — free-form application rooms.
    Room,
}

impl TopicKind {
    pub const ALL: [TopicKind; 7] = [
        TopicKind::User,
        TopicKind::Role,
        TopicKind::Group,
        TopicKind::Conv,
        TopicKind::Order,
        TopicKind::Deployment,
        TopicKind::Room,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TopicKind::User => "user",
            TopicKind::Role => "role",
            TopicKind::Group => "group",
            TopicKind::Conv => "conv",
            TopicKind::Order => "order",
            TopicKind::Deployment => "deployment",
            TopicKind::Room => "room",
        }
    }
}

impl fmt::Display for TopicKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TopicKind {
    type Err = TopicError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TopicKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == s)
            .ok_or_else(|| TopicError::UnknownKind(s.to_owned()))
    }
}

/// Why a string is not a topic. Each message names the rule, so a client can fix its input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("topic is empty; a topic is `kind:id`, for example `room:lobby`")]
    Empty,
    #[error("topic is {0} bytes long; the limit is 255")]
    TooLong(usize),
    #[error(
        "topic contains a character outside printable ASCII (no spaces, no control or non-ASCII characters)"
    )]
    InvalidChar,
    #[error("topic `{0}` has no kind; a topic is `kind:id`, for example `room:lobby`")]
    MissingKind(String),
    #[error(
        "topic kind `{0}` is unknown; kinds are user, role, group, conv, order, deployment, room"
    )]
    UnknownKind(String),
    #[error("topic `{0}` has an empty id after the colon")]
    EmptyId(String),
}

/// A parsed topic. Cheap to clone: the text is shared.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Topic {
    kind: TopicKind,
    text: Arc<str>,
}

impl Topic {
    pub fn parse(s: &str) -> Result<Topic, TopicError> {
        if s.is_empty() {
            return Err(TopicError::Empty);
        }
        if s.len() > MAX_TOPIC_LEN {
            return Err(TopicError::TooLong(s.len()));
        }
        if !s.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(TopicError::InvalidChar);
        }
        let Some((kind, id)) = s.split_once(':') else {
            return Err(TopicError::MissingKind(s.to_owned()));
        };
        let kind: TopicKind = kind.parse()?;
        if id.is_empty() {
            return Err(TopicError::EmptyId(s.to_owned()));
        }
        Ok(Topic {
            kind,
            text: Arc::from(s),
        })
    }

    /// Builds `kind:id` for an id known to be valid (for example a user's `sub`).
    pub fn new(kind: TopicKind, id: &str) -> Result<Topic, TopicError> {
        Topic::parse(&format!("{kind}:{id}"))
    }

    pub fn kind(&self) -> TopicKind {
        self.kind
    }

    /// The part after `kind:`.
    pub fn id(&self) -> &str {
        &self.text[self.kind.as_str().len() + 1..]
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Topic({})", self.text)
    }
}

impl FromStr for Topic {
    type Err = TopicError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Topic::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_parses_and_keeps_its_id() {
        for kind in TopicKind::ALL {
            let topic = Topic::parse(&format!("{kind}:abc-1")).unwrap();
            assert_eq!(topic.kind(), kind);
            assert_eq!(topic.id(), "abc-1");
        }
    }

    #[test]
    fn ids_may_contain_colons() {
        let topic = Topic::parse("room:a:b").unwrap();
        assert_eq!(topic.id(), "a:b");
    }

    #[test]
    fn malformed_topics_are_rejected_with_the_rule_they_break() {
        assert_eq!(Topic::parse(""), Err(TopicError::Empty));
        let long = format!("room:{}", "x".repeat(251));
        assert_eq!(Topic::parse(&long), Err(TopicError::TooLong(256)));
        assert_eq!(Topic::parse("room:café"), Err(TopicError::InvalidChar));
        assert_eq!(Topic::parse("room:a b"), Err(TopicError::InvalidChar));
        assert!(matches!(
            Topic::parse("lobby"),
            Err(TopicError::MissingKind(_))
        ));
        assert!(matches!(Topic::parse("chan:1"), Err(TopicError::UnknownKind(k)) if k == "chan"));
        assert!(matches!(Topic::parse("user:"), Err(TopicError::EmptyId(_))));
    }

    #[test]
    fn the_longest_allowed_topic_parses() {
        let topic = format!("room:{}", "x".repeat(250));
        assert_eq!(topic.len(), 255);
        assert!(Topic::parse(&topic).is_ok());
    }
}
