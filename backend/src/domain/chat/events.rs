//! Messaging's events: the topics (`group:<id>`, `conv:<id>`, `user:<id>`), the event and
//! signal types (their strings live here and nowhere else) and the typed bodies, built from
//! the rows.

use herald_proto::{
    v1::{
        ChatConversation, ChatConversationCreated, ChatConversationKind, ChatGroup, ChatMember,
        ChatMemberChange, ChatMemberChanged, ChatMemberRole, ChatMembershipChanged, ChatMessage,
        ChatMessageChanged, ChatReaction, ChatReactionsChanged, ChatReadMoved, ChatUnreadChanged,
        Event, event::Body,
    },
    wkt::Timestamp,
};

use super::{
    queries::{conversation, group, group_member, message},
    rules::{EmojiCount, Role, count},
};
use crate::{
    domain::inbox::rules::from_unix_ms,
    event::EventType,
    topic::{Topic, TopicError, TopicKind},
};

/// On `group:` and `conv:` (body `chat_member_changed`).
pub const MEMBER_JOINED: &str = "chat.member_joined";
pub const MEMBER_LEFT: &str = "chat.member_left";
pub const MEMBER_REMOVED: &str = "chat.member_removed";
/// On `group:` only.
pub const MEMBER_ROLE_CHANGED: &str = "chat.member_role_changed";
/// On `group:` (body `chat_conversation_created`).
pub const CONVERSATION_CREATED: &str = "chat.conversation_created";
/// On `conv:` (body `chat_message_changed`).
pub const MESSAGE_CREATED: &str = "chat.message_created";
pub const MESSAGE_EDITED: &str = "chat.message_edited";
pub const MESSAGE_DELETED: &str = "chat.message_deleted";
/// On `conv:` (body `chat_reactions_changed`).
pub const REACTIONS_CHANGED: &str = "chat.reactions_changed";
/// On `conv:` (body `chat_read_moved`): a read receipt.
pub const READ: &str = "chat.read";
/// On `user:` (body `chat_membership_changed`).
pub const ADDED: &str = "chat.added";
pub const REMOVED: &str = "chat.removed";
/// On `user:` (body `chat_unread_changed`).
pub const UNREAD: &str = "chat.unread";

/// Signal on `conv:`: `{user_id, typing, reason}`, keyed by the user id.
pub const TYPING_SIGNAL: &str = "chat.typing";
/// Signal on `group:` and direct `conv:`: `{user_id, online, last_seen}`, keyed by the user.
pub const PRESENCE_SIGNAL: &str = "chat.presence";

/// A signal type, parsed once.
pub fn signal_type(name: &str) -> EventType {
    EventType::parse(name).expect("the chat signal types are valid event types")
}

pub fn group_topic(id: i64) -> Topic {
    Topic::new(TopicKind::Group, &id.to_string()).expect("a group id is a valid topic id")
}

pub fn conv_topic(id: i64) -> Topic {
    Topic::new(TopicKind::Conv, &id.to_string()).expect("a conversation id is a valid topic id")
}

pub fn user_topic(user_id: &str) -> Result<Topic, TopicError> {
    Topic::new(TopicKind::User, user_id)
}

/// The id of a `group:` or `conv:` topic, if it names one that could exist.
pub fn topic_id(topic: &Topic) -> Option<i64> {
    topic.id().parse::<i64>().ok().filter(|id| *id > 0)
}

fn typed(body: Body) -> Event {
    Event {
        body: Some(body),
        ..Event::default()
    }
}

pub fn timestamp(ms: i64) -> Timestamp {
    herald_proto::timestamp(from_unix_ms(ms))
}

fn id_of(id: i64) -> u64 {
    u64::try_from(id).unwrap_or_default()
}

pub fn role_message(role: Role) -> ChatMemberRole {
    match role {
        Role::Member => ChatMemberRole::Member,
        Role::Admin => ChatMemberRole::Admin,
    }
}

pub fn group_message(row: &group::Model, my_role: Option<Role>) -> ChatGroup {
    ChatGroup {
        id: id_of(row.id),
        name: row.name.clone(),
        creator_id: row.creator_id.clone(),
        create_time: Some(timestamp(row.created_at_ms)),
        member_count: count(i64::from(row.member_count)),
        conversation_count: count(i64::from(row.conversation_count)),
        my_role: my_role
            .map_or(ChatMemberRole::Unspecified, role_message)
            .into(),
    }
}

pub fn member_message(row: &group_member::Model) -> ChatMember {
    ChatMember {
        user_id: row.user_id.clone(),
        role: Role::parse(&row.role)
            .map_or(ChatMemberRole::Unspecified, role_message)
            .into(),
        join_time: Some(timestamp(row.joined_at_ms)),
    }
}

pub fn conversation_message(row: &conversation::Model) -> ChatConversation {
    let direct = row.group_id.is_none();
    ChatConversation {
        id: id_of(row.id),
        kind: if direct {
            ChatConversationKind::Direct
        } else {
            ChatConversationKind::Group
        }
        .into(),
        group_id: row.group_id.map_or(0, id_of),
        title: row.title.clone().unwrap_or_default(),
        member_ids: [&row.direct_a, &row.direct_b]
            .into_iter()
            .flatten()
            .cloned()
            .collect(),
        creator_id: row.creator_id.clone(),
        create_time: Some(timestamp(row.created_at_ms)),
    }
}

/// The contract's form of a message, with its reaction summary as `viewer` sees it.
pub fn message_message(
    row: &message::Model,
    reactions: &[EmojiCount],
    mine: &[String],
) -> ChatMessage {
    ChatMessage {
        id: id_of(row.id),
        conversation_id: id_of(row.conversation_id),
        seq: id_of(row.seq),
        author_id: row.author_id.clone(),
        text: row.text.clone(),
        reply_to_id: row.reply_to_id.map_or(0, id_of),
        client_message_id: row.client_message_id.clone().unwrap_or_default(),
        version: u32::try_from(row.version).unwrap_or_default(),
        create_time: Some(timestamp(row.created_at_ms)),
        edit_time: row.edited_at_ms.map(timestamp),
        deleted: row.deleted_at_ms.is_some(),
        delete_time: row.deleted_at_ms.map(timestamp),
        reactions: reactions_message(reactions, mine),
        mentions: row.mention_list(),
    }
}

pub fn reactions_message(reactions: &[EmojiCount], mine: &[String]) -> Vec<ChatReaction> {
    reactions
        .iter()
        .map(|e| ChatReaction {
            emoji: e.emoji.clone(),
            count: e.count,
            reacted: mine.contains(&e.emoji),
        })
        .collect()
}

/// A membership change of `member` in a group (`conversation` 0) or in one of its
/// conversations.
pub fn member_changed(
    group_id: i64,
    conversation_id: i64,
    change: ChatMemberChange,
    member: ChatMember,
    actor: &str,
    member_count: i64,
    now_ms: i64,
) -> Event {
    typed(Body::ChatMemberChanged(ChatMemberChanged {
        group_id: id_of(group_id),
        conversation_id: id_of(conversation_id),
        change: change.into(),
        member: Some(member),
        actor_id: actor.to_owned(),
        member_count: count(member_count),
        time: Some(timestamp(now_ms)),
    }))
}

/// The event type of a membership change.
pub fn member_type(change: ChatMemberChange) -> &'static str {
    match change {
        ChatMemberChange::Left => MEMBER_LEFT,
        ChatMemberChange::Removed => MEMBER_REMOVED,
        ChatMemberChange::RoleChanged => MEMBER_ROLE_CHANGED,
        ChatMemberChange::Joined | ChatMemberChange::Unspecified => MEMBER_JOINED,
    }
}

pub fn conversation_created(conversation: ChatConversation) -> Event {
    typed(Body::ChatConversationCreated(ChatConversationCreated {
        conversation: Some(conversation),
    }))
}

/// A message's new version or tombstone (without reactions: they have their own event).
pub fn message_changed(row: &message::Model) -> Event {
    typed(Body::ChatMessageChanged(Box::new(ChatMessageChanged {
        message: Some(message_message(row, &[], &[])),
    })))
}

pub fn reactions_changed(
    row: &message::Model,
    user_id: &str,
    emoji: &str,
    added: bool,
    summary: &[EmojiCount],
) -> Event {
    typed(Body::ChatReactionsChanged(ChatReactionsChanged {
        conversation_id: id_of(row.conversation_id),
        message_id: id_of(row.id),
        user_id: user_id.to_owned(),
        emoji: emoji.to_owned(),
        added,
        reactions: reactions_message(summary, &[]),
    }))
}

pub fn read_moved(row: &message::Model, user_id: &str, now_ms: i64) -> Event {
    typed(Body::ChatReadMoved(ChatReadMoved {
        conversation_id: id_of(row.conversation_id),
        user_id: user_id.to_owned(),
        message_id: id_of(row.id),
        seq: id_of(row.seq),
        read_time: Some(timestamp(now_ms)),
    }))
}

pub fn membership_changed(
    change: ChatMemberChange,
    group: Option<ChatGroup>,
    conversations: Vec<ChatConversation>,
    actor: &str,
) -> Event {
    typed(Body::ChatMembershipChanged(Box::new(
        ChatMembershipChanged {
            change: change.into(),
            group,
            conversations,
            actor_id: actor.to_owned(),
        },
    )))
}

pub fn unread_changed(conversation_id: i64, unread: i64, total: i64, read_seq: i64) -> Event {
    typed(Body::ChatUnreadChanged(ChatUnreadChanged {
        conversation_id: id_of(conversation_id),
        unread: count(unread),
        total_unread: count(total),
        read_seq: id_of(read_seq),
    }))
}

/// Whether `event` is the end of `user_id`'s membership of the topic it is on: a leave or a
/// removal naming them (see [`crate::authz::Membership::ends_membership`]).
pub fn ends_membership(event: &Event, user_id: &str) -> bool {
    let Some(Body::ChatMemberChanged(changed)) = &event.body else {
        return false;
    };
    matches!(
        changed.change(),
        ChatMemberChange::Left | ChatMemberChange::Removed
    ) && changed
        .member
        .as_ref()
        .is_some_and(|member| member.user_id == user_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(change: ChatMemberChange, user: &str) -> Event {
        member_changed(
            1,
            0,
            change,
            ChatMember {
                user_id: user.into(),
                ..ChatMember::default()
            },
            "admin",
            1,
            0,
        )
    }

    #[test]
    fn only_a_leave_or_removal_naming_the_user_ends_their_membership() {
        assert!(ends_membership(
            &change(ChatMemberChange::Removed, "bob"),
            "bob"
        ));
        assert!(ends_membership(
            &change(ChatMemberChange::Left, "bob"),
            "bob"
        ));
        assert!(!ends_membership(
            &change(ChatMemberChange::Removed, "bob"),
            "ann"
        ));
        assert!(!ends_membership(
            &change(ChatMemberChange::Joined, "bob"),
            "bob"
        ));
        assert!(!ends_membership(&Event::default(), "bob"));
    }

    #[test]
    fn the_signal_types_are_valid() {
        signal_type(TYPING_SIGNAL);
        signal_type(PRESENCE_SIGNAL);
    }
}
