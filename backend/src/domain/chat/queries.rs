//! Messaging's tables (sea-orm entities; the schema is in `migrations/`,
//! `m20261201_000060`–`65`) and every read and write on them, each on the connection of the
//! caller's transaction or snapshot.
//!
//! Lock order, so that writers never deadlock: a group's row, then its conversations' rows
//! in id order (membership changes); or one conversation's row (messages, reactions, reads);
//! then the inbox's user rows (in id order, by the inbox) and at commit the topics' order
//! rows (in topic order, by the store). Nothing locks a group after a conversation.

use std::collections::HashMap;

use sea_orm::{
    ActiveModelTrait,
    ActiveValue::Set,
    ColumnTrait, Condition, ConnectionTrait, DbErr, EntityTrait, IntoActiveModel, QueryFilter,
    QueryOrder, QuerySelect,
    sea_query::{Expr, ExprTrait},
};

use super::rules::{ConversationCursor, EmojiCount, Role};

pub mod group {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "chat_group")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        pub name: String,
        pub creator_id: String,
        pub created_at_ms: i64,
        pub member_count: i32,
        pub conversation_count: i32,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod group_member {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "chat_group_member")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub group_id: i64,
        #[sea_orm(primary_key, auto_increment = false)]
        pub user_id: String,
        /// `admin` or `member` (`rules::Role::as_str`).
        pub role: String,
        pub joined_at_ms: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod conversation {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "chat_conversation")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        /// `direct` or `group`.
        pub kind: String,
        pub group_id: Option<i64>,
        pub title: Option<String>,
        /// A direct conversation's users, `direct_a < direct_b`.
        pub direct_a: Option<String>,
        pub direct_b: Option<String>,
        pub creator_id: String,
        pub created_at_ms: i64,
        /// The seq of the newest message (0 before the first).
        pub last_seq: i64,
        /// The creation or the newest message.
        pub activity_ms: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod conv_member {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "chat_conv_member")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub conversation_id: i64,
        #[sea_orm(primary_key, auto_increment = false)]
        pub user_id: String,
        /// The read watermark: a message seq.
        pub read_seq: i64,
        /// Messages of others, not deleted, above the watermark.
        pub unread: i64,
        pub joined_at_ms: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod message {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "chat_message")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        pub conversation_id: i64,
        pub seq: i64,
        pub author_id: String,
        #[sea_orm(column_type = "Text")]
        pub text: String,
        pub reply_to_id: Option<i64>,
        pub client_message_id: Option<String>,
        pub version: i32,
        /// A JSON array of user ids.
        #[sea_orm(column_type = "Text", nullable)]
        pub mentions: Option<String>,
        pub created_at_ms: i64,
        pub edited_at_ms: Option<i64>,
        pub deleted_at_ms: Option<i64>,
    }

    impl Model {
        pub fn mention_list(&self) -> Vec<String> {
            self.mentions
                .as_deref()
                .and_then(|json| serde_json::from_str(json).ok())
                .unwrap_or_default()
        }
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod reaction {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "chat_reaction")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub message_id: i64,
        #[sea_orm(primary_key, auto_increment = false)]
        pub user_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub emoji: String,
        pub created_at_ms: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Rows (or ids) per statement, under both databases' parameter limits.
const CHUNK: usize = 400;

pub const DIRECT: &str = "direct";
pub const GROUP: &str = "group";

// ---------------------------------------------------------------------------------------
// Groups

pub async fn insert_group(
    conn: &impl ConnectionTrait,
    name: &str,
    creator: &str,
    now_ms: i64,
    member_count: usize,
) -> Result<group::Model, DbErr> {
    group::Entity::insert(group::ActiveModel {
        name: Set(name.to_owned()),
        creator_id: Set(creator.to_owned()),
        created_at_ms: Set(now_ms),
        member_count: Set(i32::try_from(member_count).unwrap_or(i32::MAX)),
        conversation_count: Set(0),
        ..Default::default()
    })
    .exec_with_returning(conn)
    .await
}

/// The group's row, locked until the transaction ends.
pub async fn lock_group(
    conn: &impl ConnectionTrait,
    id: i64,
) -> Result<Option<group::Model>, DbErr> {
    group::Entity::find_by_id(id)
        .lock_exclusive()
        .one(conn)
        .await
}

pub async fn find_group(
    conn: &impl ConnectionTrait,
    id: i64,
) -> Result<Option<group::Model>, DbErr> {
    group::Entity::find_by_id(id).one(conn).await
}

pub async fn save_group(conn: &impl ConnectionTrait, row: group::Model) -> Result<(), DbErr> {
    let mut active = row.into_active_model();
    active.reset(group::Column::MemberCount);
    active.reset(group::Column::ConversationCount);
    group::Entity::update(active).exec(conn).await?;
    Ok(())
}

/// A group's members, in joining order.
pub async fn group_members(
    conn: &impl ConnectionTrait,
    group_id: i64,
) -> Result<Vec<group_member::Model>, DbErr> {
    use group_member::{Column, Entity};
    Entity::find()
        .filter(Column::GroupId.eq(group_id))
        .order_by_asc(Column::JoinedAtMs)
        .order_by_asc(Column::UserId)
        .all(conn)
        .await
}

pub async fn group_member_of(
    conn: &impl ConnectionTrait,
    group_id: i64,
    user: &str,
) -> Result<Option<group_member::Model>, DbErr> {
    group_member::Entity::find_by_id((group_id, user.to_owned()))
        .one(conn)
        .await
}

pub async fn insert_group_members(
    conn: &impl ConnectionTrait,
    group_id: i64,
    members: &[(String, Role)],
    now_ms: i64,
) -> Result<(), DbErr> {
    for chunk in members.chunks(CHUNK) {
        group_member::Entity::insert_many(chunk.iter().map(|(user, role)| {
            group_member::ActiveModel {
                group_id: Set(group_id),
                user_id: Set(user.clone()),
                role: Set(role.as_str().to_owned()),
                joined_at_ms: Set(now_ms),
            }
        }))
        .exec(conn)
        .await?;
    }
    Ok(())
}

pub async fn set_role(
    conn: &impl ConnectionTrait,
    group_id: i64,
    user: &str,
    role: Role,
) -> Result<(), DbErr> {
    use group_member::{Column, Entity};
    Entity::update_many()
        .col_expr(Column::Role, Expr::value(role.as_str()))
        .filter(Column::GroupId.eq(group_id))
        .filter(Column::UserId.eq(user))
        .exec(conn)
        .await?;
    Ok(())
}

pub async fn delete_group_member(
    conn: &impl ConnectionTrait,
    group_id: i64,
    user: &str,
) -> Result<(), DbErr> {
    group_member::Entity::delete_by_id((group_id, user.to_owned()))
        .exec(conn)
        .await?;
    Ok(())
}

/// How many groups each user is in (users in none are absent).
pub async fn group_counts(
    conn: &impl ConnectionTrait,
    users: &[String],
) -> Result<HashMap<String, u64>, DbErr> {
    use group_member::{Column, Entity};
    let mut counts = HashMap::new();
    for chunk in users.chunks(CHUNK) {
        let rows: Vec<(String, i64)> = Entity::find()
            .select_only()
            .column(Column::UserId)
            .column_as(Expr::cust("COUNT(*)"), "n")
            .filter(Column::UserId.is_in(chunk.iter().cloned()))
            .group_by(Column::UserId)
            .into_tuple()
            .all(conn)
            .await?;
        counts.extend(
            rows.into_iter()
                .map(|(user, n)| (user, u64::try_from(n).unwrap_or_default())),
        );
    }
    Ok(counts)
}

/// The user's groups with their role, newest first.
pub async fn my_groups(
    conn: &impl ConnectionTrait,
    user: &str,
) -> Result<Vec<(group::Model, Role)>, DbErr> {
    use group_member::{Column, Entity};
    let memberships = Entity::find()
        .filter(Column::UserId.eq(user))
        .all(conn)
        .await?;
    let roles: HashMap<i64, Role> = memberships
        .iter()
        .map(|m| (m.group_id, Role::parse(&m.role).unwrap_or(Role::Member)))
        .collect();
    let mut groups = Vec::with_capacity(roles.len());
    let ids: Vec<i64> = roles.keys().copied().collect();
    for chunk in ids.chunks(CHUNK) {
        groups.extend(
            group::Entity::find()
                .filter(group::Column::Id.is_in(chunk.iter().copied()))
                .all(conn)
                .await?,
        );
    }
    groups.sort_by_key(|g| std::cmp::Reverse(g.id));
    Ok(groups
        .into_iter()
        .map(|g| {
            let role = roles.get(&g.id).copied().unwrap_or(Role::Member);
            (g, role)
        })
        .collect())
}

// ---------------------------------------------------------------------------------------
// Conversations

/// A group's conversations, locked (in id order) until the transaction ends.
pub async fn lock_group_conversations(
    conn: &impl ConnectionTrait,
    group_id: i64,
) -> Result<Vec<conversation::Model>, DbErr> {
    use conversation::{Column, Entity};
    Entity::find()
        .filter(Column::GroupId.eq(group_id))
        .order_by_asc(Column::Id)
        .lock_exclusive()
        .all(conn)
        .await
}

pub async fn find_direct(
    conn: &impl ConnectionTrait,
    a: &str,
    b: &str,
) -> Result<Option<conversation::Model>, DbErr> {
    use conversation::{Column, Entity};
    Entity::find()
        .filter(Column::DirectA.eq(a))
        .filter(Column::DirectB.eq(b))
        .one(conn)
        .await
}

pub async fn insert_conversation(
    conn: &impl ConnectionTrait,
    row: conversation::ActiveModel,
) -> Result<conversation::Model, DbErr> {
    conversation::Entity::insert(row)
        .exec_with_returning(conn)
        .await
}

/// The conversation's row, locked until the transaction ends.
pub async fn lock_conversation(
    conn: &impl ConnectionTrait,
    id: i64,
) -> Result<Option<conversation::Model>, DbErr> {
    conversation::Entity::find_by_id(id)
        .lock_exclusive()
        .one(conn)
        .await
}

pub async fn find_conversation(
    conn: &impl ConnectionTrait,
    id: i64,
) -> Result<Option<conversation::Model>, DbErr> {
    conversation::Entity::find_by_id(id).one(conn).await
}

/// Records a new newest message.
pub async fn advance_conversation(
    conn: &impl ConnectionTrait,
    id: i64,
    seq: i64,
    now_ms: i64,
) -> Result<(), DbErr> {
    use conversation::{Column, Entity};
    Entity::update_many()
        .col_expr(Column::LastSeq, Expr::value(seq))
        .col_expr(Column::ActivityMs, Expr::value(now_ms))
        .filter(Column::Id.eq(id))
        .exec(conn)
        .await?;
    Ok(())
}

/// One page of the conversations among `ids`, most recently active first, after `cursor`;
/// at most `limit` rows.
pub async fn conversations_page(
    conn: &impl ConnectionTrait,
    ids: &[i64],
    cursor: Option<ConversationCursor>,
    limit: usize,
) -> Result<Vec<conversation::Model>, DbErr> {
    use conversation::{Column, Entity};
    let mut rows = Vec::new();
    for chunk in ids.chunks(CHUNK) {
        let mut query = Entity::find().filter(Column::Id.is_in(chunk.iter().copied()));
        if let Some(cursor) = cursor {
            query = query.filter(
                Condition::any()
                    .add(Column::ActivityMs.lt(cursor.activity_ms))
                    .add(
                        Condition::all()
                            .add(Column::ActivityMs.eq(cursor.activity_ms))
                            .add(Column::Id.lt(cursor.id)),
                    ),
            );
        }
        rows.extend(
            query
                .order_by_desc(Column::ActivityMs)
                .order_by_desc(Column::Id)
                .limit(limit as u64)
                .all(conn)
                .await?,
        );
    }
    rows.sort_by_key(|c| std::cmp::Reverse((c.activity_ms, c.id)));
    rows.truncate(limit);
    Ok(rows)
}

// ---------------------------------------------------------------------------------------
// Conversation members: watermarks and unread counters

pub async fn conv_member_of(
    conn: &impl ConnectionTrait,
    conversation_id: i64,
    user: &str,
) -> Result<Option<conv_member::Model>, DbErr> {
    conv_member::Entity::find_by_id((conversation_id, user.to_owned()))
        .one(conn)
        .await
}

pub async fn conv_members(
    conn: &impl ConnectionTrait,
    conversation_id: i64,
) -> Result<Vec<conv_member::Model>, DbErr> {
    use conv_member::{Column, Entity};
    Entity::find()
        .filter(Column::ConversationId.eq(conversation_id))
        .order_by_asc(Column::UserId)
        .all(conn)
        .await
}

/// Adds members to a conversation with their watermark at `read_seq` and nothing unread.
pub async fn insert_conv_members(
    conn: &impl ConnectionTrait,
    conversation_id: i64,
    users: &[String],
    read_seq: i64,
    now_ms: i64,
) -> Result<(), DbErr> {
    for chunk in users.chunks(CHUNK) {
        conv_member::Entity::insert_many(chunk.iter().map(|user| conv_member::ActiveModel {
            conversation_id: Set(conversation_id),
            user_id: Set(user.clone()),
            read_seq: Set(read_seq),
            unread: Set(0),
            joined_at_ms: Set(now_ms),
        }))
        .exec(conn)
        .await?;
    }
    Ok(())
}

/// Removes `user` from the conversations and returns their rows as they were.
pub async fn delete_conv_memberships(
    conn: &impl ConnectionTrait,
    conversation_ids: &[i64],
    user: &str,
) -> Result<Vec<conv_member::Model>, DbErr> {
    use conv_member::{Column, Entity};
    let mut removed = Vec::new();
    for chunk in conversation_ids.chunks(CHUNK) {
        let filter = Condition::all()
            .add(Column::UserId.eq(user))
            .add(Column::ConversationId.is_in(chunk.iter().copied()));
        removed.extend(Entity::find().filter(filter.clone()).all(conn).await?);
        Entity::delete_many().filter(filter).exec(conn).await?;
    }
    Ok(removed)
}

/// How many conversations each user is in (users in none are absent).
pub async fn conversation_counts(
    conn: &impl ConnectionTrait,
    users: &[String],
) -> Result<HashMap<String, u64>, DbErr> {
    use conv_member::{Column, Entity};
    let mut counts = HashMap::new();
    for chunk in users.chunks(CHUNK) {
        let rows: Vec<(String, i64)> = Entity::find()
            .select_only()
            .column(Column::UserId)
            .column_as(Expr::cust("COUNT(*)"), "n")
            .filter(Column::UserId.is_in(chunk.iter().cloned()))
            .group_by(Column::UserId)
            .into_tuple()
            .all(conn)
            .await?;
        counts.extend(
            rows.into_iter()
                .map(|(user, n)| (user, u64::try_from(n).unwrap_or_default())),
        );
    }
    Ok(counts)
}

/// Every conversation membership of `user`.
pub async fn my_memberships(
    conn: &impl ConnectionTrait,
    user: &str,
) -> Result<Vec<conv_member::Model>, DbErr> {
    use conv_member::{Column, Entity};
    Entity::find()
        .filter(Column::UserId.eq(user))
        .all(conn)
        .await
}

/// Each user's unread total over all their conversations (0 for users in none).
pub async fn unread_totals(
    conn: &impl ConnectionTrait,
    users: &[String],
) -> Result<HashMap<String, i64>, DbErr> {
    use conv_member::{Column, Entity};
    let mut totals: HashMap<String, i64> = users.iter().map(|u| (u.clone(), 0)).collect();
    for chunk in users.chunks(CHUNK) {
        let rows: Vec<(String, i64)> = Entity::find()
            .select_only()
            .column(Column::UserId)
            .column_as(
                Expr::cust("CAST(COALESCE(SUM(unread), 0) AS BIGINT)"),
                "total",
            )
            .filter(Column::UserId.is_in(chunk.iter().cloned()))
            .group_by(Column::UserId)
            .into_tuple()
            .all(conn)
            .await?;
        totals.extend(rows);
    }
    Ok(totals)
}

/// A new message of `author`: one more unread for every other member.
pub async fn count_new_message(
    conn: &impl ConnectionTrait,
    conversation_id: i64,
    author: &str,
) -> Result<(), DbErr> {
    use conv_member::{Column, Entity};
    Entity::update_many()
        .col_expr(Column::Unread, Expr::col(Column::Unread).add(1))
        .filter(Column::ConversationId.eq(conversation_id))
        .filter(Column::UserId.ne(author))
        .exec(conn)
        .await?;
    Ok(())
}

/// A deleted message no longer counts for `users`.
pub async fn uncount_message(
    conn: &impl ConnectionTrait,
    conversation_id: i64,
    users: &[String],
) -> Result<(), DbErr> {
    use conv_member::{Column, Entity};
    for chunk in users.chunks(CHUNK) {
        Entity::update_many()
            .col_expr(Column::Unread, Expr::col(Column::Unread).sub(1))
            .filter(Column::ConversationId.eq(conversation_id))
            .filter(Column::UserId.is_in(chunk.iter().cloned()))
            .filter(Column::Unread.gt(0))
            .exec(conn)
            .await?;
    }
    Ok(())
}

pub async fn save_read(
    conn: &impl ConnectionTrait,
    conversation_id: i64,
    user: &str,
    read_seq: i64,
    unread: i64,
) -> Result<(), DbErr> {
    use conv_member::{Column, Entity};
    Entity::update_many()
        .col_expr(Column::ReadSeq, Expr::value(read_seq))
        .col_expr(Column::Unread, Expr::value(unread))
        .filter(Column::ConversationId.eq(conversation_id))
        .filter(Column::UserId.eq(user))
        .exec(conn)
        .await?;
    Ok(())
}

/// `user`'s unread count above `read_seq`, counted from the message rows.
pub async fn unread_from_rows(
    conn: &impl ConnectionTrait,
    conversation_id: i64,
    user: &str,
    read_seq: i64,
) -> Result<i64, DbErr> {
    use message::{Column, Entity};
    let n: Option<i64> = Entity::find()
        .select_only()
        .column_as(Expr::cust("COUNT(*)"), "n")
        .filter(Column::ConversationId.eq(conversation_id))
        .filter(Column::Seq.gt(read_seq))
        .filter(Column::AuthorId.ne(user))
        .filter(Column::DeletedAtMs.is_null())
        .into_tuple()
        .one(conn)
        .await?;
    Ok(n.unwrap_or_default())
}

/// The groups a user is in and their direct conversations: where their presence goes.
pub async fn presence_topics_of(
    conn: &impl ConnectionTrait,
    user: &str,
) -> Result<(Vec<i64>, Vec<i64>), DbErr> {
    let groups: Vec<i64> = group_member::Entity::find()
        .select_only()
        .column(group_member::Column::GroupId)
        .filter(group_member::Column::UserId.eq(user))
        .into_tuple()
        .all(conn)
        .await?;
    let directs: Vec<i64> = conversation::Entity::find()
        .select_only()
        .column(conversation::Column::Id)
        .filter(
            Condition::any()
                .add(conversation::Column::DirectA.eq(user))
                .add(conversation::Column::DirectB.eq(user)),
        )
        .into_tuple()
        .all(conn)
        .await?;
    Ok((groups, directs))
}

// ---------------------------------------------------------------------------------------
// Messages

pub async fn find_message(
    conn: &impl ConnectionTrait,
    id: i64,
) -> Result<Option<message::Model>, DbErr> {
    message::Entity::find_by_id(id).one(conn).await
}

pub async fn find_by_client_id(
    conn: &impl ConnectionTrait,
    conversation_id: i64,
    author: &str,
    client_id: &str,
) -> Result<Option<message::Model>, DbErr> {
    use message::{Column, Entity};
    Entity::find()
        .filter(Column::ConversationId.eq(conversation_id))
        .filter(Column::AuthorId.eq(author))
        .filter(Column::ClientMessageId.eq(client_id))
        .one(conn)
        .await
}

pub async fn insert_message(
    conn: &impl ConnectionTrait,
    row: message::ActiveModel,
) -> Result<message::Model, DbErr> {
    message::Entity::insert(row).exec_with_returning(conn).await
}

pub async fn save_message(conn: &impl ConnectionTrait, row: message::Model) -> Result<(), DbErr> {
    let mut active = row.into_active_model();
    for column in [
        message::Column::Text,
        message::Column::Version,
        message::Column::EditedAtMs,
        message::Column::DeletedAtMs,
        message::Column::Mentions,
    ] {
        active.reset(column);
    }
    message::Entity::update(active).exec(conn).await?;
    Ok(())
}

/// A page of a conversation's messages, newest first, below `before` (a seq); `limit` rows.
pub async fn messages_page(
    conn: &impl ConnectionTrait,
    conversation_id: i64,
    before: Option<i64>,
    limit: usize,
) -> Result<Vec<message::Model>, DbErr> {
    use message::{Column, Entity};
    let mut query = Entity::find().filter(Column::ConversationId.eq(conversation_id));
    if let Some(before) = before {
        query = query.filter(Column::Seq.lt(before));
    }
    query
        .order_by_desc(Column::Seq)
        .limit(limit as u64)
        .all(conn)
        .await
}

/// The messages at these (conversation, seq) places.
pub async fn messages_at(
    conn: &impl ConnectionTrait,
    places: &[(i64, i64)],
) -> Result<Vec<message::Model>, DbErr> {
    use message::{Column, Entity};
    let mut rows = Vec::with_capacity(places.len());
    for chunk in places.chunks(CHUNK / 2) {
        let mut any = Condition::any();
        for (conversation_id, seq) in chunk {
            any = any.add(
                Condition::all()
                    .add(Column::ConversationId.eq(*conversation_id))
                    .add(Column::Seq.eq(*seq)),
            );
        }
        rows.extend(Entity::find().filter(any).all(conn).await?);
    }
    Ok(rows)
}

// ---------------------------------------------------------------------------------------
// Reactions

/// The reaction summary of each message (emoji in first-reaction order); messages without
/// reactions are absent.
pub async fn reaction_summaries(
    conn: &impl ConnectionTrait,
    message_ids: &[i64],
) -> Result<HashMap<i64, Vec<EmojiCount>>, DbErr> {
    use reaction::{Column, Entity};
    let mut summaries: HashMap<i64, Vec<EmojiCount>> = HashMap::new();
    for chunk in message_ids.chunks(CHUNK) {
        let rows: Vec<(i64, String, i64, i64)> = Entity::find()
            .select_only()
            .column(Column::MessageId)
            .column(Column::Emoji)
            .column_as(Expr::cust("COUNT(*)"), "n")
            .column_as(Column::CreatedAtMs.min(), "first_ms")
            .filter(Column::MessageId.is_in(chunk.iter().copied()))
            .group_by(Column::MessageId)
            .group_by(Column::Emoji)
            .into_tuple()
            .all(conn)
            .await?;
        for (message_id, emoji, n, first_ms) in rows {
            summaries.entry(message_id).or_default().push(EmojiCount {
                emoji,
                count: u32::try_from(n).unwrap_or(u32::MAX),
                first_ms,
            });
        }
    }
    for summary in summaries.values_mut() {
        summary.sort_by(|a, b| (a.first_ms, &a.emoji).cmp(&(b.first_ms, &b.emoji)));
    }
    Ok(summaries)
}

/// The emoji `user` reacted with, per message.
pub async fn my_reactions(
    conn: &impl ConnectionTrait,
    message_ids: &[i64],
    user: &str,
) -> Result<HashMap<i64, Vec<String>>, DbErr> {
    use reaction::{Column, Entity};
    let mut mine: HashMap<i64, Vec<String>> = HashMap::new();
    for chunk in message_ids.chunks(CHUNK) {
        let rows = Entity::find()
            .filter(Column::MessageId.is_in(chunk.iter().copied()))
            .filter(Column::UserId.eq(user))
            .all(conn)
            .await?;
        for row in rows {
            mine.entry(row.message_id).or_default().push(row.emoji);
        }
    }
    Ok(mine)
}

/// Adds or takes back one reaction.
pub async fn set_reaction(
    conn: &impl ConnectionTrait,
    message_id: i64,
    user: &str,
    emoji: &str,
    added: bool,
    now_ms: i64,
) -> Result<(), DbErr> {
    if added {
        reaction::Entity::insert(reaction::ActiveModel {
            message_id: Set(message_id),
            user_id: Set(user.to_owned()),
            emoji: Set(emoji.to_owned()),
            created_at_ms: Set(now_ms),
        })
        .exec(conn)
        .await?;
    } else {
        reaction::Entity::delete_by_id((message_id, user.to_owned(), emoji.to_owned()))
            .exec(conn)
            .await?;
    }
    Ok(())
}

/// A tombstone keeps no reactions.
pub async fn delete_reactions(conn: &impl ConnectionTrait, message_id: i64) -> Result<(), DbErr> {
    use reaction::{Column, Entity};
    Entity::delete_many()
        .filter(Column::MessageId.eq(message_id))
        .exec(conn)
        .await?;
    Ok(())
}

/// Whether `error` is a unique index refusing a second row (a concurrent create of the same
/// direct pair or client message id).
pub fn is_duplicate(error: &DbErr) -> bool {
    matches!(
        error.sql_err(),
        Some(sea_orm::SqlErr::UniqueConstraintViolation(_))
    )
}
