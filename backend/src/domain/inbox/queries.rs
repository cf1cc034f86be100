//! The inbox's tables (sea-orm entities; the schema is in `migrations/`) and every read and
//! write on them, each taking the connection of the caller's transaction or snapshot.
//!
//! - `notification`: one row per notification; times are Unix milliseconds, a state is set
//!   when its time is (`read_at_ms IS NULL` is unread).
//! - `notification_user`: one row per user who ever had a notification or preferences: the
//!   preferences, and the row every inbox write locks first ([`lock_users`]), which
//!   serializes the writers of one inbox so each counts event reflects every change before it.
//! - `notification_mention`: the mention rate limit's sliding window per sender → recipient.

use std::collections::{BTreeSet, HashMap};

use sea_orm::{
    ActiveValue::Set,
    ColumnTrait, Condition, ConnectionTrait, DbErr, EntityTrait, IntoActiveModel, QueryFilter,
    QueryOrder, QuerySelect,
    sea_query::{Expr, ExprTrait, Func, OnConflict},
};

use super::rules::{
    CountGroup, Counts, Cursor, Draft, Folder, Kind, ListQuery, MentionWindow, Preferences,
    Priority, QuietHours, State, counts,
};

pub mod notification {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "notification")]
    pub struct Model {
        /// A UUIDv7.
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub user_id: String,
        /// The stored type name (`rules::Kind::as_str`).
        pub kind: String,
        pub priority: String,
        pub title: String,
        #[sea_orm(column_type = "Text")]
        pub content: String,
        /// JSON object text.
        #[sea_orm(column_type = "Text", nullable)]
        pub data: Option<String>,
        pub sender_id: Option<String>,
        pub sender_name: Option<String>,
        #[sea_orm(column_type = "Text", nullable)]
        pub sender_avatar_url: Option<String>,
        pub conversation_id: Option<String>,
        pub message_id: Option<String>,
        pub call_id: Option<String>,
        #[sea_orm(column_type = "Text", nullable)]
        pub message_preview: Option<String>,
        pub seen_at_ms: Option<i64>,
        pub read_at_ms: Option<i64>,
        pub archived_at_ms: Option<i64>,
        pub snoozed_until_ms: Option<i64>,
        pub created_at_ms: i64,
        pub expires_at_ms: Option<i64>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod notification_user {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "notification_user")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub user_id: String,
        /// Stored type names turned off, comma-separated.
        #[sea_orm(column_type = "Text")]
        pub muted_types: String,
        /// Do-not-disturb: minutes after local midnight, and the IANA zone.
        pub dnd_start_minute: Option<i32>,
        pub dnd_end_minute: Option<i32>,
        pub dnd_time_zone: Option<String>,
        /// Bumped by every inbox write: the write takes this row's lock.
        pub version: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod notification_mention {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "notification_mention")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub sender_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub user_id: String,
        /// The admitted mentions' times (Unix ms), oldest first, comma-separated.
        pub recent_ms: String,
        /// The newest of them: windows older than a minute are deleted by the sweeper.
        pub last_at_ms: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Rows per multi-row statement, under both databases' parameter limits.
const CHUNK: usize = 400;

/// Takes the inbox write lock of every user (creating their row if needed), in id order so
/// that writers of several inboxes cannot deadlock, and returns their rows (preferences).
pub async fn lock_users(
    conn: &impl ConnectionTrait,
    users: &[String],
) -> Result<HashMap<String, notification_user::Model>, DbErr> {
    use notification_user::{ActiveModel, Column, Entity};
    let sorted: BTreeSet<&String> = users.iter().collect();
    let sorted: Vec<&String> = sorted.into_iter().collect();
    let mut locked = HashMap::with_capacity(sorted.len());
    for chunk in sorted.chunks(CHUNK) {
        let rows = Entity::insert_many(chunk.iter().map(|user| ActiveModel {
            user_id: Set((*user).clone()),
            muted_types: Set(String::new()),
            dnd_start_minute: Set(None),
            dnd_end_minute: Set(None),
            dnd_time_zone: Set(None),
            version: Set(1),
        }))
        .on_conflict(
            OnConflict::column(Column::UserId)
                .value(Column::Version, Expr::col((Entity, Column::Version)).add(1))
                .to_owned(),
        )
        .exec_with_returning(conn)
        .await?;
        locked.extend(rows.into_iter().map(|row| (row.user_id.clone(), row)));
    }
    Ok(locked)
}

/// The preferences a user row stores. A zone the tz database no longer knows means no quiet
/// window (logged), never a failed delivery.
pub fn preferences_of(row: &notification_user::Model) -> Preferences {
    let muted = row.muted_types.split(',').filter_map(Kind::parse).collect();
    let quiet = match (row.dnd_start_minute, row.dnd_end_minute, &row.dnd_time_zone) {
        (Some(start), Some(end), Some(zone)) => {
            let parsed = u16::try_from(start)
                .ok()
                .zip(u16::try_from(end).ok())
                .map(|(start, end)| QuietHours::from_minutes(start, end, zone));
            match parsed {
                Some(Ok(quiet)) => Some(quiet),
                _ => {
                    tracing::warn!(user = %row.user_id, zone, "stored do-not-disturb window is unreadable; ignoring it");
                    None
                }
            }
        }
        _ => None,
    };
    Preferences { muted, quiet }
}

/// Reads a user's preferences (defaults when the user has no row).
pub async fn preferences(conn: &impl ConnectionTrait, user: &str) -> Result<Preferences, DbErr> {
    Ok(notification_user::Entity::find_by_id(user)
        .one(conn)
        .await?
        .map(|row| preferences_of(&row))
        .unwrap_or_default())
}

/// Stores a user's preferences (the caller holds the user's lock).
pub async fn save_preferences(
    conn: &impl ConnectionTrait,
    user: &str,
    preferences: &Preferences,
) -> Result<(), DbErr> {
    use notification_user::{Column, Entity};
    let muted: Vec<&str> = preferences.muted.iter().map(|k| k.as_str()).collect();
    let quiet = preferences.quiet.as_ref();
    Entity::update_many()
        .col_expr(Column::MutedTypes, Expr::value(muted.join(",")))
        .col_expr(
            Column::DndStartMinute,
            Expr::value(quiet.map(|q| i32::from(q.start))),
        )
        .col_expr(
            Column::DndEndMinute,
            Expr::value(quiet.map(|q| i32::from(q.end))),
        )
        .col_expr(
            Column::DndTimeZone,
            Expr::value(quiet.map(|q| q.zone_name.clone())),
        )
        .filter(Column::UserId.eq(user))
        .exec(conn)
        .await?;
    Ok(())
}

/// The mention windows of `sender` towards each of `users`.
pub async fn mention_windows(
    conn: &impl ConnectionTrait,
    sender: &str,
    users: &[String],
) -> Result<HashMap<String, MentionWindow>, DbErr> {
    use notification_mention::{Column, Entity};
    let mut windows = HashMap::new();
    for chunk in users.chunks(CHUNK) {
        let rows = Entity::find()
            .filter(Column::SenderId.eq(sender))
            .filter(Column::UserId.is_in(chunk.iter().cloned()))
            .all(conn)
            .await?;
        for row in rows {
            let recent = row
                .recent_ms
                .split(',')
                .filter_map(|ms| ms.parse().ok())
                .collect();
            windows.insert(row.user_id, recent);
        }
    }
    Ok(windows)
}

pub async fn save_mention_windows(
    conn: &impl ConnectionTrait,
    sender: &str,
    windows: &[(String, MentionWindow)],
) -> Result<(), DbErr> {
    use notification_mention::{ActiveModel, Column, Entity};
    for chunk in windows.chunks(CHUNK) {
        Entity::insert_many(chunk.iter().map(|(user, recent)| {
            let text: Vec<String> = recent.iter().map(i64::to_string).collect();
            ActiveModel {
                sender_id: Set(sender.to_owned()),
                user_id: Set(user.clone()),
                recent_ms: Set(text.join(",")),
                last_at_ms: Set(recent.last().copied().unwrap_or_default()),
            }
        }))
        .on_conflict(
            OnConflict::columns([Column::SenderId, Column::UserId])
                .update_columns([Column::RecentMs, Column::LastAtMs])
                .to_owned(),
        )
        .exec_without_returning(conn)
        .await?;
    }
    Ok(())
}

/// Deletes up to `limit` mention windows whose newest mention is before `cutoff_ms`.
pub async fn delete_stale_windows(
    conn: &impl ConnectionTrait,
    cutoff_ms: i64,
    limit: u64,
) -> Result<u64, DbErr> {
    use notification_mention::{Column, Entity};
    let stale: Vec<(String, String)> = Entity::find()
        .select_only()
        .column(Column::SenderId)
        .column(Column::UserId)
        .filter(Column::LastAtMs.lt(cutoff_ms))
        .limit(limit)
        .into_tuple()
        .all(conn)
        .await?;
    if stale.is_empty() {
        return Ok(0);
    }
    let pairs = stale
        .into_iter()
        .fold(Condition::any(), |any, (sender, user)| {
            any.add(
                Condition::all()
                    .add(Column::SenderId.eq(sender))
                    .add(Column::UserId.eq(user)),
            )
        });
    let deleted = Entity::delete_many()
        .filter(pairs)
        .filter(Column::LastAtMs.lt(cutoff_ms))
        .exec(conn)
        .await?;
    Ok(deleted.rows_affected)
}

/// A new row for `user` from a checked draft.
pub fn new_row(id: String, user: &str, draft: &Draft, now_ms: i64) -> notification::Model {
    notification::Model {
        id,
        user_id: user.to_owned(),
        kind: draft.kind.as_str().to_owned(),
        priority: draft.priority.as_str().to_owned(),
        title: draft.title.clone(),
        content: draft.content.clone(),
        data: draft.data_json.clone(),
        sender_id: draft.sender.as_ref().map(|s| s.id.clone()),
        sender_name: draft.sender.as_ref().map(|s| s.display_name.clone()),
        sender_avatar_url: draft.sender.as_ref().and_then(|s| s.avatar_url.clone()),
        conversation_id: draft.conversation_id.clone(),
        message_id: draft.message_id.clone(),
        call_id: draft.call_id.clone(),
        message_preview: draft.message_preview.clone(),
        seen_at_ms: None,
        read_at_ms: None,
        archived_at_ms: None,
        snoozed_until_ms: None,
        created_at_ms: now_ms,
        expires_at_ms: draft.expires_at_ms,
    }
}

pub async fn insert(
    conn: &impl ConnectionTrait,
    rows: &[notification::Model],
) -> Result<(), DbErr> {
    for chunk in rows.chunks(CHUNK / 2) {
        notification::Entity::insert_many(chunk.iter().map(|row| row.clone().into_active_model()))
            .exec_without_returning(conn)
            .await?;
    }
    Ok(())
}

pub fn state_of(row: &notification::Model) -> State {
    State {
        seen_at: row.seen_at_ms,
        read_at: row.read_at_ms,
        archived_at: row.archived_at_ms,
        snoozed_until: row.snoozed_until_ms,
        expires_at: row.expires_at_ms,
    }
}

/// The row with `state` applied.
pub fn with_state(row: notification::Model, state: State) -> notification::Model {
    notification::Model {
        seen_at_ms: state.seen_at,
        read_at_ms: state.read_at,
        archived_at_ms: state.archived_at,
        snoozed_until_ms: state.snoozed_until,
        expires_at_ms: state.expires_at,
        ..row
    }
}

pub async fn save_state(conn: &impl ConnectionTrait, id: &str, state: State) -> Result<(), DbErr> {
    use notification::{Column, Entity};
    Entity::update_many()
        .col_expr(Column::SeenAtMs, Expr::value(state.seen_at))
        .col_expr(Column::ReadAtMs, Expr::value(state.read_at))
        .col_expr(Column::ArchivedAtMs, Expr::value(state.archived_at))
        .col_expr(Column::SnoozedUntilMs, Expr::value(state.snoozed_until))
        .filter(Column::Id.eq(id))
        .exec(conn)
        .await?;
    Ok(())
}

pub async fn delete(conn: &impl ConnectionTrait, ids: &[String]) -> Result<(), DbErr> {
    for chunk in ids.chunks(CHUNK) {
        notification::Entity::delete_many()
            .filter(notification::Column::Id.is_in(chunk.iter().cloned()))
            .exec(conn)
            .await?;
    }
    Ok(())
}

/// The notifications of `user` among `ids`.
pub async fn find_owned(
    conn: &impl ConnectionTrait,
    user: &str,
    ids: &[String],
) -> Result<Vec<notification::Model>, DbErr> {
    use notification::{Column, Entity};
    let mut rows = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(CHUNK) {
        rows.extend(
            Entity::find()
                .filter(Column::UserId.eq(user))
                .filter(Column::Id.is_in(chunk.iter().cloned()))
                .order_by_asc(Column::Id)
                .all(conn)
                .await?,
        );
    }
    Ok(rows)
}

/// MarkSeen: every unseen notification of `user` becomes seen. Returns how many.
pub async fn mark_all_seen(
    conn: &impl ConnectionTrait,
    user: &str,
    now_ms: i64,
) -> Result<u64, DbErr> {
    use notification::{Column, Entity};
    Ok(Entity::update_many()
        .col_expr(Column::SeenAtMs, Expr::value(now_ms))
        .filter(Column::UserId.eq(user))
        .filter(Column::SeenAtMs.is_null())
        .exec(conn)
        .await?
        .rows_affected)
}

/// MarkAllRead: every unread notification of `user` (of `kind`, in `conversation`, when
/// given) becomes read, and seen if it was not. Returns how many.
pub async fn mark_all_read(
    conn: &impl ConnectionTrait,
    user: &str,
    kind: Option<Kind>,
    conversation: Option<&str>,
    now_ms: i64,
) -> Result<u64, DbErr> {
    use notification::{Column, Entity};
    let mut update = Entity::update_many()
        .col_expr(Column::ReadAtMs, Expr::value(now_ms))
        .col_expr(
            Column::SeenAtMs,
            Func::coalesce([Expr::col(Column::SeenAtMs), Expr::value(now_ms)]).into(),
        )
        .filter(Column::UserId.eq(user))
        .filter(Column::ReadAtMs.is_null());
    if let Some(kind) = kind {
        update = update.filter(Column::Kind.eq(kind.as_str()));
    }
    if let Some(conversation) = conversation {
        update = update.filter(Column::ConversationId.eq(conversation));
    }
    Ok(update.exec(conn).await?.rows_affected)
}

/// The badges of `users` (every user gets one, zero when empty), counted from the rows.
pub async fn counts_of(
    conn: &impl ConnectionTrait,
    users: &[String],
) -> Result<HashMap<String, Counts>, DbErr> {
    use notification::{Column, Entity};
    let mut groups: HashMap<String, Vec<CountGroup>> = HashMap::with_capacity(users.len());
    for chunk in users.chunks(CHUNK) {
        let rows: Vec<(String, String, String, i64, i64, i64)> = Entity::find()
            .select_only()
            .column(Column::UserId)
            .column(Column::Kind)
            .column(Column::Priority)
            .column_as(Expr::cust("COUNT(*)"), "total")
            .column_as(
                Expr::cust("SUM(CASE WHEN seen_at_ms IS NULL THEN 1 ELSE 0 END)"),
                "unseen",
            )
            .column_as(
                Expr::cust("SUM(CASE WHEN read_at_ms IS NULL THEN 1 ELSE 0 END)"),
                "unread",
            )
            .filter(Column::UserId.is_in(chunk.iter().cloned()))
            .filter(Column::ArchivedAtMs.is_null())
            .filter(Column::SnoozedUntilMs.is_null())
            .group_by(Column::UserId)
            .group_by(Column::Kind)
            .group_by(Column::Priority)
            .into_tuple()
            .all(conn)
            .await?;
        for (user, kind, priority, total, unseen, unread) in rows {
            let (Some(kind), Some(priority)) = (Kind::parse(&kind), Priority::parse(&priority))
            else {
                tracing::error!(%user, %kind, %priority, "notification rows with an unknown type or priority; not counted");
                continue;
            };
            let count = |n: i64| u32::try_from(n).unwrap_or(u32::MAX);
            groups.entry(user).or_default().push(CountGroup {
                kind,
                priority,
                total: count(total),
                unseen: count(unseen),
                unread: count(unread),
            });
        }
    }
    Ok(users
        .iter()
        .map(|user| {
            let badge = counts(groups.remove(user).unwrap_or_default());
            (user.clone(), badge)
        })
        .collect())
}

/// One page of `user`'s notifications, newest first; one row more than the page when there
/// is a next page.
pub async fn list(
    conn: &impl ConnectionTrait,
    user: &str,
    query: &ListQuery,
) -> Result<Vec<notification::Model>, DbErr> {
    use notification::{Column, Entity};
    let mut select = Entity::find().filter(Column::UserId.eq(user));
    select = match query.folder {
        Folder::Inbox => select
            .filter(Column::ArchivedAtMs.is_null())
            .filter(Column::SnoozedUntilMs.is_null()),
        Folder::Archive => select.filter(Column::ArchivedAtMs.is_not_null()),
        Folder::Snoozed => select.filter(Column::SnoozedUntilMs.is_not_null()),
    };
    if let Some(kind) = query.kind {
        select = select.filter(Column::Kind.eq(kind.as_str()));
    }
    if query.unread_only {
        select = select.filter(Column::ReadAtMs.is_null());
    }
    if let Some(Cursor { created_at, id }) = &query.after {
        select = select.filter(
            Condition::any()
                .add(Column::CreatedAtMs.lt(*created_at))
                .add(
                    Condition::all()
                        .add(Column::CreatedAtMs.eq(*created_at))
                        .add(Column::Id.lt(id.as_str())),
                ),
        );
    }
    select
        .order_by_desc(Column::CreatedAtMs)
        .order_by_desc(Column::Id)
        .limit(u64::try_from(query.limit).unwrap_or(u64::MAX) + 1)
        .all(conn)
        .await
}

/// Up to `limit` (id, user) of notifications whose snooze ended at or before `now_ms`.
pub async fn due_snoozes(
    conn: &impl ConnectionTrait,
    now_ms: i64,
    limit: u64,
) -> Result<Vec<(String, String)>, DbErr> {
    use notification::{Column, Entity};
    Entity::find()
        .select_only()
        .column(Column::Id)
        .column(Column::UserId)
        .filter(Column::SnoozedUntilMs.lte(now_ms))
        .order_by_asc(Column::SnoozedUntilMs)
        .limit(limit)
        .into_tuple()
        .all(conn)
        .await
}

/// Up to `limit` (id, user) of notifications that expired at or before `now_ms`.
pub async fn expired(
    conn: &impl ConnectionTrait,
    now_ms: i64,
    limit: u64,
) -> Result<Vec<(String, String)>, DbErr> {
    use notification::{Column, Entity};
    Entity::find()
        .select_only()
        .column(Column::Id)
        .column(Column::UserId)
        .filter(Column::ExpiresAtMs.lte(now_ms))
        .order_by_asc(Column::ExpiresAtMs)
        .limit(limit)
        .into_tuple()
        .all(conn)
        .await
}
