//! The inbox's events: the topic (`user:<id>`), the event types (their strings live here and
//! nowhere else) and the typed bodies, plus the mapping between the rules' types and the
//! protobuf contract.

use herald_proto::{
    v1::{
        Event, Notification, NotificationChange, NotificationContext, NotificationCounts,
        NotificationCreated, NotificationPriority, NotificationPriorityCount, NotificationSender,
        NotificationType, NotificationTypeCount, NotificationsChanged, event::Body,
    },
    wkt::{Struct, Timestamp},
};

use super::{
    queries::notification,
    rules::{Counts, Kind, Priority, from_unix_ms},
};
use crate::topic::{Topic, TopicError, TopicKind};

/// A notification was created (body `notification_created`).
pub const CREATED: &str = "notification.created";
pub const SEEN: &str = "notification.seen";
pub const READ: &str = "notification.read";
pub const ARCHIVED: &str = "notification.archived";
pub const SNOOZED: &str = "notification.snoozed";
pub const UNSNOOZED: &str = "notification.unsnoozed";
pub const DELETED: &str = "notification.deleted";
pub const EXPIRED: &str = "notification.expired";
/// The badge after a change (body `notification_counts`), in the change's transaction.
pub const COUNTS: &str = "notification.counts";

/// The inbox of `user_id`: `user:<id>`.
pub fn inbox(user_id: &str) -> Result<Topic, TopicError> {
    Topic::new(TopicKind::User, user_id)
}

/// The event type of a change.
pub fn change_type(change: NotificationChange) -> &'static str {
    match change {
        NotificationChange::Seen => SEEN,
        NotificationChange::Read => READ,
        NotificationChange::Archived => ARCHIVED,
        NotificationChange::Snoozed => SNOOZED,
        NotificationChange::Unsnoozed => UNSNOOZED,
        NotificationChange::Deleted => DELETED,
        NotificationChange::Expired | NotificationChange::Unspecified => EXPIRED,
    }
}

pub fn created(notification: Notification, quiet: bool) -> Event {
    typed(Body::NotificationCreated(Box::new(NotificationCreated {
        notification: Some(notification),
        quiet,
    })))
}

pub fn changed(body: NotificationsChanged) -> Event {
    typed(Body::NotificationsChanged(body))
}

pub fn counts(counts: &Counts) -> Event {
    typed(Body::NotificationCounts(counts_message(counts)))
}

fn typed(body: Body) -> Event {
    Event {
        body: Some(body),
        ..Event::default()
    }
}

pub fn counts_message(counts: &Counts) -> NotificationCounts {
    NotificationCounts {
        total: counts.total,
        unseen: counts.unseen,
        unread: counts.unread,
        unread_by_type: counts
            .unread_by_type
            .iter()
            .map(|(kind, unread)| NotificationTypeCount {
                r#type: kind_message(*kind).into(),
                unread: *unread,
            })
            .collect(),
        unread_by_priority: counts
            .unread_by_priority
            .iter()
            .map(|(priority, unread)| NotificationPriorityCount {
                priority: priority_message(*priority).into(),
                unread: *unread,
            })
            .collect(),
    }
}

pub fn timestamp(ms: i64) -> Timestamp {
    herald_proto::timestamp(from_unix_ms(ms))
}

/// The contract's form of a stored notification.
pub fn notification_message(row: &notification::Model) -> Notification {
    let data = row.data.as_deref().and_then(|json| {
        serde_json::from_str::<Struct>(json)
            .inspect_err(|error| {
                tracing::error!(id = %row.id, %error, "a notification has unreadable data; sending none");
            })
            .ok()
    });
    let sender = row.sender_id.as_ref().map(|id| NotificationSender {
        id: id.clone(),
        display_name: row.sender_name.clone().unwrap_or_default(),
        avatar_url: row.sender_avatar_url.clone().unwrap_or_default(),
    });
    let context = (row.conversation_id.is_some()
        || row.message_id.is_some()
        || row.call_id.is_some())
    .then(|| NotificationContext {
        conversation_id: row.conversation_id.clone().unwrap_or_default(),
        message_id: row.message_id.clone().unwrap_or_default(),
        call_id: row.call_id.clone().unwrap_or_default(),
    });
    Notification {
        id: row.id.clone(),
        user_id: row.user_id.clone(),
        r#type: Kind::parse(&row.kind)
            .map_or(NotificationType::Unspecified, kind_message)
            .into(),
        priority: Priority::parse(&row.priority)
            .map_or(NotificationPriority::Unspecified, priority_message)
            .into(),
        title: row.title.clone(),
        content: row.content.clone(),
        data,
        sender,
        context,
        message_preview: row.message_preview.clone().unwrap_or_default(),
        seen: row.seen_at_ms.is_some(),
        seen_time: row.seen_at_ms.map(timestamp),
        read: row.read_at_ms.is_some(),
        read_time: row.read_at_ms.map(timestamp),
        archived: row.archived_at_ms.is_some(),
        archived_time: row.archived_at_ms.map(timestamp),
        snoozed_until: row.snoozed_until_ms.map(timestamp),
        create_time: Some(timestamp(row.created_at_ms)),
        expire_time: row.expires_at_ms.map(timestamp),
    }
}

pub fn kind_message(kind: Kind) -> NotificationType {
    match kind {
        Kind::NewMessage => NotificationType::NewMessage,
        Kind::MessageReply => NotificationType::MessageReply,
        Kind::UserMentioned => NotificationType::UserMentioned,
        Kind::MessageReaction => NotificationType::MessageReaction,
        Kind::ContactRequest => NotificationType::ContactRequest,
        Kind::ContactAccepted => NotificationType::ContactAccepted,
        Kind::NewConversationDirect => NotificationType::NewConversationDirect,
        Kind::NewConversationGroup => NotificationType::NewConversationGroup,
        Kind::MemberJoined => NotificationType::MemberJoined,
        Kind::MissedCall => NotificationType::MissedCall,
        Kind::System => NotificationType::System,
    }
}

/// `None` for UNSPECIFIED.
pub fn kind_of(message: NotificationType) -> Option<Kind> {
    Kind::ALL
        .into_iter()
        .find(|kind| kind_message(*kind) == message)
}

pub fn priority_message(priority: Priority) -> NotificationPriority {
    match priority {
        Priority::Low => NotificationPriority::Low,
        Priority::Normal => NotificationPriority::Normal,
        Priority::High => NotificationPriority::High,
        Priority::Urgent => NotificationPriority::Urgent,
    }
}

/// `None` for UNSPECIFIED.
pub fn priority_of(message: NotificationPriority) -> Option<Priority> {
    Priority::ALL
        .into_iter()
        .find(|priority| priority_message(*priority) == message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_and_priority_maps_to_the_contract_and_back() {
        for kind in Kind::ALL {
            assert_eq!(kind_of(kind_message(kind)), Some(kind));
        }
        assert_eq!(kind_of(NotificationType::Unspecified), None);
        for priority in Priority::ALL {
            assert_eq!(priority_of(priority_message(priority)), Some(priority));
        }
        assert_eq!(priority_of(NotificationPriority::Unspecified), None);
    }

    #[test]
    fn stored_type_names_are_the_contracts_names_in_lower_case() {
        for kind in Kind::ALL {
            let contract = kind_message(kind).as_str_name();
            assert_eq!(
                contract,
                format!("NOTIFICATION_TYPE_{}", kind.as_str().to_uppercase())
            );
        }
    }
}
