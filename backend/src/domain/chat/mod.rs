//! Messaging: groups, direct and group conversations, messages, reactions, read watermarks
//! and unread counts, typing and presence, on the durable topics `group:<id>`, `conv:<id>`
//! and `user:<id>`.
//!
//! - [`rules`]: what a request may contain and what a change does, pure and unit-tested
//!   (with a property test of the unread counters against counts from the rows);
//! - [`queries`]: the `chat_*` tables and the lock order;
//! - [`events`]: the event and signal types and the typed bodies;
//! - [`typing`]: who is typing, the 2 s rate and the automatic stops;
//! - this file: every command as begin → lock → load → authorize → decide → save → emit →
//!   commit, the reads as snapshot + position, the membership facts the policy asks for
//!   ([`Chat::members`]), and the background task ([`Chat::run`]) that stops typing and pushes
//!   presence.
//!
//! Counters stay exact because every change of a conversation takes its row's lock first
//! (so its messages, reads and deletions take turns), and every change to a user's totals
//! takes that user's inbox row lock ([`inbox::queries::lock_users`], the user topic's writers'
//! turn) before reading the total: the last `chat.unread` of a user always equals the rows.

pub mod events;
pub mod queries;
pub mod rules;
pub mod typing;

use std::{
    collections::{BTreeSet, HashMap},
    sync::Arc,
    time::Duration,
};

use async_trait::async_trait;
use herald_proto::{
    v1::{
        ChatConversation, ChatConversationSummary, ChatGroup, ChatMember, ChatMemberChange,
        ChatMessage, ChatReaction, StreamPosition,
    },
    wkt::Struct,
};
use sea_orm::ActiveValue::Set;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::{
    auth::Principal,
    authz::{Action, Membership, MembershipError},
    clock::SharedClock,
    domain::inbox::{self, InboxError, rules as inbox_rules},
    error::Error,
    node::Node,
    presence::OnlineChange,
    store::{DomainTx, Store, StoreError},
    topic::{Topic, TopicError, TopicKind},
};
use queries::{conversation, message};
use rules::{
    ConversationCursor, GroupChange, GroupCommand, MessageChange, MessageCommand, Role, RuleError,
};
use typing::{StopReason, Typing, TypingSignal};

/// `[chat]` in the configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChatConfig {
    /// The most members of one group.
    pub max_group_members: usize,
    /// The most conversations of one group.
    pub max_group_conversations: usize,
    /// The most groups one user is in.
    pub max_groups_per_user: u64,
    /// The most conversations (direct and of groups) one user is in.
    pub max_conversations_per_user: u64,
    /// At most one "typing" signal per user and conversation per this.
    #[serde(with = "herald_proto::support::duration")]
    pub typing_interval: Duration,
    /// "Stopped" follows this long without a `SetTyping` refresh.
    #[serde(with = "herald_proto::support::duration")]
    pub typing_timeout: Duration,
    /// How often the typing timeouts are checked (the stop comes at most this late).
    #[serde(with = "herald_proto::support::duration")]
    pub typing_sweep: Duration,
    /// The most (conversation, user) typing states held in memory; beyond it new typists are
    /// absorbed.
    pub max_typists: usize,
}

impl Default for ChatConfig {
    fn default() -> Self {
        ChatConfig {
            max_group_members: 1_000,
            max_group_conversations: 100,
            max_groups_per_user: 100,
            max_conversations_per_user: 1_000,
            typing_interval: Duration::from_secs(2),
            typing_timeout: Duration::from_secs(6),
            typing_sweep: Duration::from_millis(250),
            max_typists: 100_000,
        }
    }
}

impl ChatConfig {
    /// Checks the values (called when the backend is built).
    pub fn check(&self) -> Result<(), String> {
        if self.max_group_members < 2 || self.max_group_conversations == 0 {
            return Err("chat.max_group_members must be at least 2 and \
                        chat.max_group_conversations at least 1"
                .into());
        }
        if self.max_groups_per_user == 0 || self.max_conversations_per_user == 0 {
            return Err(
                "chat.max_groups_per_user and chat.max_conversations_per_user must be \
                        positive"
                    .into(),
            );
        }
        if self.typing_timeout <= self.typing_interval || self.typing_sweep.is_zero() {
            return Err(
                "chat.typing_timeout must be longer than chat.typing_interval, and \
                        chat.typing_sweep positive"
                    .into(),
            );
        }
        Ok(())
    }
}

/// Why a chat command or read failed.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    #[error(transparent)]
    Rule(#[from] RuleError),
    #[error("{0}")]
    NotFound(String),
    #[error("your token's `sub` cannot name a user topic: {0}")]
    Topic(#[from] TopicError),
    #[error(transparent)]
    Inbox(#[from] InboxError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Core(#[from] Error),
}

impl From<sea_orm::DbErr> for ChatError {
    fn from(error: sea_orm::DbErr) -> ChatError {
        ChatError::Store(StoreError::from(error))
    }
}

impl From<ChatError> for Error {
    fn from(error: ChatError) -> Error {
        match error {
            ChatError::Rule(RuleError::Invalid(message)) => Error::InvalidArgument(message),
            ChatError::Rule(RuleError::Forbidden(message)) => Error::PermissionDenied(message),
            ChatError::Rule(RuleError::Precondition(message)) => Error::FailedPrecondition(message),
            ChatError::NotFound(message) => Error::NotFound(message),
            error @ ChatError::Topic(_) => Error::InvalidArgument(error.to_string()),
            ChatError::Inbox(error) => error.into(),
            ChatError::Store(error) => Error::Store(error),
            ChatError::Core(error) => error,
        }
    }
}

type Result<T, E = ChatError> = std::result::Result<T, E>;

/// A sent message, as SendMessage answers it.
#[derive(Debug, Clone)]
pub struct Sent {
    pub message: ChatMessage,
    /// False for a retry that found the first message.
    pub created: bool,
    pub position: StreamPosition,
}

/// A read watermark after MarkRead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadState {
    pub moved: bool,
    pub read_seq: i64,
    pub unread: i64,
    pub total_unread: i64,
}

/// One page of ListMyConversations.
#[derive(Debug, Clone)]
pub struct ConversationPage {
    pub conversations: Vec<ChatConversationSummary>,
    pub total_unread: i64,
    pub next: Option<ConversationCursor>,
    pub position: StreamPosition,
}

/// One page of ListMessages.
#[derive(Debug, Clone)]
pub struct MessagePage {
    pub messages: Vec<ChatMessage>,
    pub next: Option<i64>,
    pub position: StreamPosition,
}

/// The messaging service.
#[derive(Debug, Clone)]
pub struct Chat {
    store: Store,
    node: Arc<Node>,
    clock: SharedClock,
    config: ChatConfig,
    typing: Arc<Typing>,
}

fn not_found_group(id: i64) -> ChatError {
    ChatError::NotFound(format!(
        "no group {id}: check the id (ListMyGroups shows yours)"
    ))
}

fn not_found_conversation(id: i64) -> ChatError {
    ChatError::NotFound(format!(
        "no conversation {id}: check the id (ListMyConversations shows yours)"
    ))
}

fn not_found_message(id: i64) -> ChatError {
    ChatError::NotFound(format!("no message {id}"))
}

fn not_member_of_conversation(user: &str, id: i64) -> ChatError {
    RuleError::Forbidden(format!(
        "you ({user}) are not a member of conversation {id}"
    ))
    .into()
}

fn not_member_of_group(user: &str, id: i64) -> ChatError {
    RuleError::Forbidden(format!("you ({user}) are not a member of group {id}")).into()
}

fn change_of(change: &GroupChange) -> ChatMemberChange {
    match change {
        GroupChange::Joined { .. } | GroupChange::Unchanged => ChatMemberChange::Joined,
        GroupChange::RoleChanged { .. } => ChatMemberChange::RoleChanged,
        GroupChange::Left { .. } => ChatMemberChange::Left,
        GroupChange::Removed { .. } => ChatMemberChange::Removed,
    }
}

fn member_view(user: &str, role: Role, joined_at_ms: i64) -> ChatMember {
    ChatMember {
        user_id: user.to_owned(),
        role: events::role_message(role).into(),
        join_time: Some(events::timestamp(joined_at_ms)),
    }
}

impl Chat {
    pub fn new(store: Store, node: Arc<Node>, clock: SharedClock, config: ChatConfig) -> Chat {
        let typing = Arc::new(Typing::new(
            config.typing_interval,
            config.typing_timeout,
            config.max_typists,
        ));
        Chat {
            store,
            node,
            clock,
            config,
            typing,
        }
    }

    /// The membership facts of `group:` and `conv:` topics, for the policy.
    pub fn members(store: Store) -> Arc<dyn Membership> {
        Arc::new(Members { store })
    }

    fn now_ms(&self) -> i64 {
        inbox_rules::unix_ms(self.clock.now())
    }

    // -----------------------------------------------------------------------------------
    // Groups

    /// CreateGroup: the caller as admin, `member_ids` as members.
    pub async fn create_group(
        &self,
        who: &Principal,
        name: &str,
        member_ids: Vec<String>,
    ) -> Result<(ChatGroup, StreamPosition)> {
        let me = rules::user_id("sub", &who.user_id)?;
        let name = rules::name("name", name)?;
        let others = rules::user_ids(
            "member_ids",
            member_ids,
            &me,
            self.config.max_group_members - 1,
        )?;
        let now = self.now_ms();
        let mut members = vec![(me.clone(), Role::Admin)];
        members.extend(others.iter().map(|u| (u.clone(), Role::Member)));
        let users: Vec<String> = members.iter().map(|(u, _)| u.clone()).collect();

        let mut tx = self.store.begin_as(&me).await?;
        let counts = queries::group_counts(tx.conn(), &users).await?;
        for user in &users {
            rules::check_memberships(
                user,
                "groups",
                counts.get(user).copied().unwrap_or_default(),
                1,
                self.config.max_groups_per_user,
                "chat.max_groups_per_user",
            )?;
        }
        let group = queries::insert_group(tx.conn(), &name, &me, now, members.len()).await?;
        queries::insert_group_members(tx.conn(), group.id, &members, now).await?;
        let topic = events::group_topic(group.id);
        for (index, (user, role)) in members.iter().enumerate() {
            let joined = events::member_changed(
                group.id,
                0,
                ChatMemberChange::Joined,
                member_view(user, *role, now),
                &me,
                index as i64 + 1,
                now,
            );
            tx.emit_typed(&topic, events::MEMBER_JOINED, &joined)?;
        }
        for (user, role) in &members {
            let added = events::membership_changed(
                ChatMemberChange::Joined,
                Some(events::group_message(&group, Some(*role))),
                Vec::new(),
                &me,
            );
            tx.emit_typed(&events::user_topic(user)?, events::ADDED, &added)?;
        }
        let committed = tx.commit().await?;
        let position = committed
            .events
            .get(members.len() - 1)
            .map(|e| e.position.clone())
            .unwrap_or_default();
        tracing::info!(group = group.id, members = members.len(), "group created");
        Ok((events::group_message(&group, Some(Role::Admin)), position))
    }

    /// AddMember (admins): adds `user` to the group and its conversations, or changes its
    /// role. Returns the member and whether anything changed.
    pub async fn add_member(
        &self,
        who: &Principal,
        group_id: u64,
        user: &str,
        admin: bool,
    ) -> Result<(ChatMember, bool)> {
        let group_id = rules::id("group_id", group_id)?;
        let user = rules::user_id("user_id", user)?;
        let role = if admin { Role::Admin } else { Role::Member };
        let command = GroupCommand::Add {
            user: user.clone(),
            role,
        };
        self.change_group(who, group_id, command).await
    }

    /// RemoveMember (admins).
    pub async fn remove_member(&self, who: &Principal, group_id: u64, user: &str) -> Result<()> {
        let group_id = rules::id("group_id", group_id)?;
        let user = rules::user_id("user_id", user)?;
        self.change_group(who, group_id, GroupCommand::Remove { user })
            .await
            .map(|_| ())
    }

    /// Leave: the caller leaves the group.
    pub async fn leave(&self, who: &Principal, group_id: u64) -> Result<()> {
        let group_id = rules::id("group_id", group_id)?;
        self.change_group(who, group_id, GroupCommand::Leave)
            .await
            .map(|_| ())
    }

    async fn change_group(
        &self,
        who: &Principal,
        group_id: i64,
        command: GroupCommand,
    ) -> Result<(ChatMember, bool)> {
        let me = who.user_id.clone();
        let target = match &command {
            GroupCommand::Add { user, .. } | GroupCommand::Remove { user } => user.clone(),
            GroupCommand::Leave => me.clone(),
        };
        let now = self.now_ms();
        let mut tx = self.store.begin_as(&me).await?;
        let mut group = queries::lock_group(tx.conn(), group_id)
            .await?
            .ok_or_else(|| not_found_group(group_id))?;
        let rows = queries::group_members(tx.conn(), group_id).await?;
        let joined_at: HashMap<String, i64> = rows
            .iter()
            .map(|m| (m.user_id.clone(), m.joined_at_ms))
            .collect();
        let state = rules::Group {
            members: rows
                .iter()
                .map(|m| {
                    let role = Role::parse(&m.role).unwrap_or(Role::Member);
                    (m.user_id.clone(), role)
                })
                .collect(),
        };
        let (next, change) =
            rules::decide_group(&state, command, &me, self.config.max_group_members)?;
        let member = match &change {
            GroupChange::Unchanged => {
                tx.rollback().await?;
                let role = state.members.get(&target).copied().unwrap_or(Role::Member);
                let joined = joined_at.get(&target).copied().unwrap_or(now);
                return Ok((member_view(&target, role, joined), false));
            }
            GroupChange::Joined { user, role } => {
                self.join_group(&mut tx, &mut group, user, *role, &me, now)
                    .await?
            }
            GroupChange::RoleChanged { user, role } => {
                queries::set_role(tx.conn(), group_id, user, *role).await?;
                let member = member_view(user, *role, joined_at.get(user).copied().unwrap_or(now));
                let changed = events::member_changed(
                    group_id,
                    0,
                    ChatMemberChange::RoleChanged,
                    member.clone(),
                    &me,
                    next.members.len() as i64,
                    now,
                );
                tx.emit_typed(
                    &events::group_topic(group_id),
                    events::MEMBER_ROLE_CHANGED,
                    &changed,
                )?;
                member
            }
            GroupChange::Left { user, role } | GroupChange::Removed { user, role } => {
                let member = member_view(user, *role, joined_at.get(user).copied().unwrap_or(now));
                self.part_group(&mut tx, &mut group, &member, change_of(&change), &me, now)
                    .await?;
                member
            }
        };
        tx.commit().await?;
        tracing::info!(group = group_id, change = ?change_of(&change), "group membership changed");
        Ok((member, true))
    }

    /// Adds `user` to the group (whose row is locked) and every conversation of it.
    async fn join_group(
        &self,
        tx: &mut DomainTx,
        group: &mut queries::group::Model,
        user: &str,
        role: Role,
        actor: &str,
        now: i64,
    ) -> Result<ChatMember> {
        let users = [user.to_owned()];
        let groups = queries::group_counts(tx.conn(), &users).await?;
        rules::check_memberships(
            user,
            "groups",
            groups.get(user).copied().unwrap_or_default(),
            1,
            self.config.max_groups_per_user,
            "chat.max_groups_per_user",
        )?;
        let conversations = queries::lock_group_conversations(tx.conn(), group.id).await?;
        let in_conversations = queries::conversation_counts(tx.conn(), &users).await?;
        rules::check_memberships(
            user,
            "conversations",
            in_conversations.get(user).copied().unwrap_or_default(),
            conversations.len() as u64,
            self.config.max_conversations_per_user,
            "chat.max_conversations_per_user",
        )?;
        queries::insert_group_members(tx.conn(), group.id, &[(user.to_owned(), role)], now).await?;
        group.member_count += 1;
        queries::save_group(tx.conn(), group.clone()).await?;
        let member = member_view(user, role, now);
        let count = i64::from(group.member_count);
        let joined = |conversation_id| {
            events::member_changed(
                group.id,
                conversation_id,
                ChatMemberChange::Joined,
                member.clone(),
                actor,
                count,
                now,
            )
        };
        tx.emit_typed(
            &events::group_topic(group.id),
            events::MEMBER_JOINED,
            &joined(0),
        )?;
        for conversation in &conversations {
            queries::insert_conv_members(
                tx.conn(),
                conversation.id,
                &users,
                conversation.last_seq,
                now,
            )
            .await?;
            tx.emit_typed(
                &events::conv_topic(conversation.id),
                events::MEMBER_JOINED,
                &joined(conversation.id),
            )?;
        }
        let added = events::membership_changed(
            ChatMemberChange::Joined,
            Some(events::group_message(group, Some(role))),
            conversations
                .iter()
                .map(events::conversation_message)
                .collect(),
            actor,
        );
        tx.emit_typed(&events::user_topic(user)?, events::ADDED, &added)?;
        Ok(member)
    }

    /// Takes `member` out of the group (whose row is locked) and its conversations: the
    /// events that end their streams, then their own `chat.removed` and unread totals.
    async fn part_group(
        &self,
        tx: &mut DomainTx,
        group: &mut queries::group::Model,
        member: &ChatMember,
        change: ChatMemberChange,
        actor: &str,
        now: i64,
    ) -> Result<()> {
        let user = member.user_id.as_str();
        let conversations = queries::lock_group_conversations(tx.conn(), group.id).await?;
        let ids: Vec<i64> = conversations.iter().map(|c| c.id).collect();
        inbox::queries::lock_users(tx.conn(), &[user.to_owned()]).await?;
        let removed = queries::delete_conv_memberships(tx.conn(), &ids, user).await?;
        queries::delete_group_member(tx.conn(), group.id, user).await?;
        group.member_count -= 1;
        queries::save_group(tx.conn(), group.clone()).await?;
        let count = i64::from(group.member_count);
        let event_type = events::member_type(change);
        let parted = |conversation_id| {
            events::member_changed(
                group.id,
                conversation_id,
                change,
                member.clone(),
                actor,
                count,
                now,
            )
        };
        tx.emit_typed(&events::group_topic(group.id), event_type, &parted(0))?;
        for conversation in &conversations {
            tx.emit_typed(
                &events::conv_topic(conversation.id),
                event_type,
                &parted(conversation.id),
            )?;
        }
        let own = events::user_topic(user)?;
        let gone = events::membership_changed(
            change,
            Some(events::group_message(group, None)),
            conversations
                .iter()
                .map(events::conversation_message)
                .collect(),
            actor,
        );
        tx.emit_typed(&own, events::REMOVED, &gone)?;
        let had_unread: Vec<&queries::conv_member::Model> =
            removed.iter().filter(|m| m.unread > 0).collect();
        if !had_unread.is_empty() {
            let totals = queries::unread_totals(tx.conn(), &[user.to_owned()]).await?;
            let total = totals.get(user).copied().unwrap_or_default();
            for membership in had_unread {
                let unread = events::unread_changed(
                    membership.conversation_id,
                    0,
                    total,
                    membership.read_seq,
                );
                tx.emit_typed(&own, events::UNREAD, &unread)?;
            }
        }
        for conversation in self.typing.left(user, &ids) {
            self.typing_stopped(conversation, user, StopReason::Left)
                .await;
        }
        Ok(())
    }

    /// ListMyGroups, with the position of `user:<caller>`.
    pub async fn my_groups(&self, who: &Principal) -> Result<(Vec<ChatGroup>, StreamPosition)> {
        let topic = events::user_topic(&who.user_id)?;
        let snapshot = self.store.snapshot().await?;
        let groups = queries::my_groups(snapshot.conn(), &who.user_id).await?;
        let position = snapshot.position(&topic).await?;
        snapshot.end().await?;
        Ok((
            groups
                .iter()
                .map(|(group, role)| events::group_message(group, Some(*role)))
                .collect(),
            position,
        ))
    }

    /// ListMembers (members), with the position of `group:<id>`.
    pub async fn members_of(
        &self,
        who: &Principal,
        group_id: u64,
    ) -> Result<(Vec<ChatMember>, StreamPosition)> {
        let group_id = rules::id("group_id", group_id)?;
        let snapshot = self.store.snapshot().await?;
        if queries::find_group(snapshot.conn(), group_id)
            .await?
            .is_none()
        {
            return Err(not_found_group(group_id));
        }
        let members = queries::group_members(snapshot.conn(), group_id).await?;
        if !members.iter().any(|m| m.user_id == who.user_id) {
            return Err(not_member_of_group(&who.user_id, group_id));
        }
        let position = snapshot.position(&events::group_topic(group_id)).await?;
        snapshot.end().await?;
        Ok((
            members.iter().map(events::member_message).collect(),
            position,
        ))
    }

    // -----------------------------------------------------------------------------------
    // Conversations

    /// CreateConversation, direct: the existing pair or a new one.
    pub async fn create_direct(
        &self,
        who: &Principal,
        other: &str,
    ) -> Result<(ChatConversation, bool)> {
        let me = rules::user_id("sub", &who.user_id)?;
        let (a, b) = rules::direct_pair(&me, other)?;
        if let Some(found) = queries::find_direct(self.store.db(), &a, &b).await? {
            return Ok((events::conversation_message(&found), false));
        }
        let now = self.now_ms();
        let mut tx = self.store.begin_as(&me).await?;
        if let Some(found) = queries::find_direct(tx.conn(), &a, &b).await? {
            tx.rollback().await?;
            return Ok((events::conversation_message(&found), false));
        }
        let users = vec![a.clone(), b.clone()];
        self.check_conversation_counts(&tx, &users, 1).await?;
        let row = conversation::ActiveModel {
            kind: Set(queries::DIRECT.to_owned()),
            group_id: Set(None),
            title: Set(None),
            direct_a: Set(Some(a.clone())),
            direct_b: Set(Some(b.clone())),
            creator_id: Set(me.clone()),
            created_at_ms: Set(now),
            last_seq: Set(0),
            activity_ms: Set(now),
            ..Default::default()
        };
        let inserted = match queries::insert_conversation(tx.conn(), row).await {
            Ok(row) => row,
            Err(error) if queries::is_duplicate(&error) => {
                // A concurrent create of the same pair committed first.
                drop(tx);
                let found = queries::find_direct(self.store.db(), &a, &b)
                    .await?
                    .ok_or(ChatError::Store(StoreError::from(error)))?;
                return Ok((events::conversation_message(&found), false));
            }
            Err(error) => return Err(error.into()),
        };
        queries::insert_conv_members(tx.conn(), inserted.id, &users, 0, now).await?;
        let view = events::conversation_message(&inserted);
        for user in &users {
            let added =
                events::membership_changed(ChatMemberChange::Joined, None, vec![view.clone()], &me);
            tx.emit_typed(&events::user_topic(user)?, events::ADDED, &added)?;
        }
        tx.commit().await?;
        Ok((view, true))
    }

    /// CreateConversation in a group (members).
    pub async fn create_in_group(
        &self,
        who: &Principal,
        group_id: u64,
        title: &str,
    ) -> Result<ChatConversation> {
        let me = who.user_id.clone();
        let group_id = rules::id("group_id", group_id)?;
        let title = rules::name("title", title)?;
        let now = self.now_ms();
        let mut tx = self.store.begin_as(&me).await?;
        let mut group = queries::lock_group(tx.conn(), group_id)
            .await?
            .ok_or_else(|| not_found_group(group_id))?;
        let members: Vec<String> = queries::group_members(tx.conn(), group_id)
            .await?
            .into_iter()
            .map(|m| m.user_id)
            .collect();
        if !members.contains(&me) {
            return Err(not_member_of_group(&me, group_id));
        }
        let existing = usize::try_from(group.conversation_count).unwrap_or_default();
        if existing >= self.config.max_group_conversations {
            return Err(RuleError::Precondition(format!(
                "group {group_id} has {existing} conversations; the limit is {} \
                 (chat.max_group_conversations)",
                self.config.max_group_conversations
            ))
            .into());
        }
        self.check_conversation_counts(&tx, &members, 1).await?;
        let row = conversation::ActiveModel {
            kind: Set(queries::GROUP.to_owned()),
            group_id: Set(Some(group_id)),
            title: Set(Some(title)),
            direct_a: Set(None),
            direct_b: Set(None),
            creator_id: Set(me.clone()),
            created_at_ms: Set(now),
            last_seq: Set(0),
            activity_ms: Set(now),
            ..Default::default()
        };
        let inserted = queries::insert_conversation(tx.conn(), row).await?;
        queries::insert_conv_members(tx.conn(), inserted.id, &members, 0, now).await?;
        group.conversation_count += 1;
        queries::save_group(tx.conn(), group).await?;
        let view = events::conversation_message(&inserted);
        tx.emit_typed(
            &events::group_topic(group_id),
            events::CONVERSATION_CREATED,
            &events::conversation_created(view.clone()),
        )?;
        for user in &members {
            let added =
                events::membership_changed(ChatMemberChange::Joined, None, vec![view.clone()], &me);
            tx.emit_typed(&events::user_topic(user)?, events::ADDED, &added)?;
        }
        tx.commit().await?;
        Ok(view)
    }

    async fn check_conversation_counts(
        &self,
        tx: &DomainTx,
        users: &[String],
        adding: u64,
    ) -> Result<()> {
        let counts = queries::conversation_counts(tx.conn(), users).await?;
        for user in users {
            rules::check_memberships(
                user,
                "conversations",
                counts.get(user).copied().unwrap_or_default(),
                adding,
                self.config.max_conversations_per_user,
                "chat.max_conversations_per_user",
            )?;
        }
        Ok(())
    }

    /// ListMyConversations: one page, most recently active first.
    pub async fn my_conversations(
        &self,
        who: &Principal,
        page_size: u32,
        page_token: &str,
    ) -> Result<ConversationPage> {
        let limit = rules::page_size(page_size)?;
        let cursor = ConversationCursor::parse(page_token)?;
        let own = events::user_topic(&who.user_id)?;
        let snapshot = self.store.snapshot().await?;
        let memberships = queries::my_memberships(snapshot.conn(), &who.user_id).await?;
        let total_unread: i64 = memberships.iter().map(|m| m.unread.max(0)).sum();
        let by_id: HashMap<i64, &queries::conv_member::Model> =
            memberships.iter().map(|m| (m.conversation_id, m)).collect();
        let ids: Vec<i64> = by_id.keys().copied().collect();
        let mut rows =
            queries::conversations_page(snapshot.conn(), &ids, cursor, limit + 1).await?;
        let next = (rows.len() > limit).then(|| {
            rows.truncate(limit);
            rows.last().map(|last| ConversationCursor {
                activity_ms: last.activity_ms,
                id: last.id,
            })
        });
        let places: Vec<(i64, i64)> = rows
            .iter()
            .filter(|c| c.last_seq > 0)
            .map(|c| (c.id, c.last_seq))
            .collect();
        let last: HashMap<i64, message::Model> = queries::messages_at(snapshot.conn(), &places)
            .await?
            .into_iter()
            .map(|m| (m.conversation_id, m))
            .collect();
        let last_ids: Vec<i64> = last.values().map(|m| m.id).collect();
        let summaries = queries::reaction_summaries(snapshot.conn(), &last_ids).await?;
        let mine = queries::my_reactions(snapshot.conn(), &last_ids, &who.user_id).await?;
        let mut topics: Vec<Topic> = rows.iter().map(|c| events::conv_topic(c.id)).collect();
        topics.push(own);
        let mut positions = snapshot.positions(&topics).await?;
        snapshot.end().await?;
        let position = positions.pop().unwrap_or_default();
        let conversations = rows
            .iter()
            .zip(positions)
            .map(|(row, position)| {
                let membership = by_id.get(&row.id);
                ChatConversationSummary {
                    conversation: Some(events::conversation_message(row)),
                    last_message: last.get(&row.id).map(|m| {
                        events::message_message(
                            m,
                            summaries.get(&m.id).map_or(&[][..], Vec::as_slice),
                            mine.get(&m.id).map_or(&[][..], Vec::as_slice),
                        )
                    }),
                    unread: rules::count(membership.map_or(0, |m| m.unread)),
                    read_seq: membership.map_or(0, |m| u64::try_from(m.read_seq).unwrap_or(0)),
                    position: Some(position),
                }
            })
            .collect();
        Ok(ConversationPage {
            conversations,
            total_unread,
            next: next.flatten(),
            position,
        })
    }

    /// MarkRead: the caller's watermark forward to `message_id`.
    pub async fn mark_read(
        &self,
        who: &Principal,
        conversation_id: u64,
        message_id: u64,
    ) -> Result<ReadState> {
        let conversation_id = rules::id("conversation_id", conversation_id)?;
        let message_id = rules::id("message_id", message_id)?;
        let me = who.user_id.clone();
        let now = self.now_ms();
        let mut tx = self.store.begin_as(&me).await?;
        queries::lock_conversation(tx.conn(), conversation_id)
            .await?
            .ok_or_else(|| not_found_conversation(conversation_id))?;
        let membership = queries::conv_member_of(tx.conn(), conversation_id, &me)
            .await?
            .ok_or_else(|| not_member_of_conversation(&me, conversation_id))?;
        let message = queries::find_message(tx.conn(), message_id)
            .await?
            .filter(|m| m.conversation_id == conversation_id)
            .ok_or_else(|| {
                ChatError::NotFound(format!(
                    "no message {message_id} in conversation {conversation_id}"
                ))
            })?;
        let Some(read_seq) = rules::read_to(membership.read_seq, message.seq) else {
            tx.rollback().await?;
            let totals = queries::unread_totals(self.store.db(), std::slice::from_ref(&me)).await?;
            return Ok(ReadState {
                moved: false,
                read_seq: membership.read_seq,
                unread: membership.unread,
                total_unread: totals.get(&me).copied().unwrap_or_default(),
            });
        };
        inbox::queries::lock_users(tx.conn(), std::slice::from_ref(&me)).await?;
        let unread = queries::unread_from_rows(tx.conn(), conversation_id, &me, read_seq).await?;
        queries::save_read(tx.conn(), conversation_id, &me, read_seq, unread).await?;
        let totals = queries::unread_totals(tx.conn(), std::slice::from_ref(&me)).await?;
        let total_unread = totals.get(&me).copied().unwrap_or_default();
        tx.emit_typed(
            &events::conv_topic(conversation_id),
            events::READ,
            &events::read_moved(&message, &me, now),
        )?;
        tx.emit_typed(
            &events::user_topic(&me)?,
            events::UNREAD,
            &events::unread_changed(conversation_id, unread, total_unread, read_seq),
        )?;
        tx.commit().await?;
        Ok(ReadState {
            moved: true,
            read_seq,
            unread,
            total_unread,
        })
    }

    // -----------------------------------------------------------------------------------
    // Messages

    /// SendMessage (members).
    pub async fn send(
        &self,
        who: &Principal,
        conversation_id: u64,
        text: &str,
        reply_to: u64,
        client_id: &str,
    ) -> Result<Sent> {
        let conversation_id = rules::id("conversation_id", conversation_id)?;
        let text = rules::text(text)?;
        let client_id = rules::client_id(client_id)?;
        let reply_to = (reply_to != 0)
            .then(|| rules::id("reply_to_id", reply_to))
            .transpose()?;
        let me = who.user_id.clone();
        let now_time = self.clock.now();
        let now = inbox_rules::unix_ms(now_time);
        let topic = events::conv_topic(conversation_id);

        let mut tx = self.store.begin_as(&me).await?;
        let conversation = queries::lock_conversation(tx.conn(), conversation_id)
            .await?
            .ok_or_else(|| not_found_conversation(conversation_id))?;
        let members = queries::conv_members(tx.conn(), conversation_id).await?;
        if !members.iter().any(|m| m.user_id == me) {
            return Err(not_member_of_conversation(&me, conversation_id));
        }
        if let Some(client_id) = &client_id
            && let Some(first) =
                queries::find_by_client_id(tx.conn(), conversation_id, &me, client_id).await?
        {
            let position = self.store.top_on(tx.conn(), &topic).await?;
            tx.rollback().await?;
            return Ok(Sent {
                message: self.with_reactions(&first, &me).await?,
                created: false,
                position,
            });
        }
        if let Some(reply_to) = reply_to {
            let replied = queries::find_message(tx.conn(), reply_to)
                .await?
                .filter(|m| m.conversation_id == conversation_id)
                .ok_or_else(|| {
                    ChatError::NotFound(format!(
                        "reply_to_id {reply_to} is no message of conversation {conversation_id}"
                    ))
                })?;
            if replied.deleted_at_ms.is_some() {
                return Err(RuleError::Precondition(format!(
                    "message {reply_to} was deleted; a reply needs a message that is still there"
                ))
                .into());
            }
        }
        let member_ids: BTreeSet<&str> = members.iter().map(|m| m.user_id.as_str()).collect();
        let mentions = rules::mentions(&text, &me, |id| member_ids.contains(id))?;
        let seq = conversation.last_seq + 1;
        let row = message::ActiveModel {
            conversation_id: Set(conversation_id),
            seq: Set(seq),
            author_id: Set(me.clone()),
            text: Set(text.clone()),
            reply_to_id: Set(reply_to),
            client_message_id: Set(client_id),
            version: Set(1),
            mentions: Set((!mentions.is_empty())
                .then(|| serde_json::to_string(&mentions).unwrap_or_default())),
            created_at_ms: Set(now),
            edited_at_ms: Set(None),
            deleted_at_ms: Set(None),
            ..Default::default()
        };
        let inserted = queries::insert_message(tx.conn(), row).await?;
        queries::advance_conversation(tx.conn(), conversation_id, seq, now).await?;
        tx.emit_typed(
            &topic,
            events::MESSAGE_CREATED,
            &events::message_changed(&inserted),
        )?;

        let others: Vec<&queries::conv_member::Model> = members
            .iter()
            .filter(|m| rules::counts_on_send(&m.user_id, &me))
            .collect();
        let other_ids: Vec<String> = others.iter().map(|m| m.user_id.clone()).collect();
        if !others.is_empty() {
            inbox::queries::lock_users(tx.conn(), &other_ids).await?;
            queries::count_new_message(tx.conn(), conversation_id, &me).await?;
            let totals = queries::unread_totals(tx.conn(), &other_ids).await?;
            for member in &others {
                let total = totals.get(&member.user_id).copied().unwrap_or_default();
                tx.emit_typed(
                    &events::user_topic(&member.user_id)?,
                    events::UNREAD,
                    &events::unread_changed(
                        conversation_id,
                        member.unread + 1,
                        total,
                        member.read_seq,
                    ),
                )?;
            }
        }
        self.notify_message(&mut tx, &conversation, &inserted, &mentions, &other_ids)
            .await?;
        let committed = tx.commit().await?;
        let position = committed
            .events
            .first()
            .map(|e| e.position.clone())
            .unwrap_or_default();
        Ok(Sent {
            message: events::message_message(&inserted, &[], &[]),
            created: true,
            position,
        })
    }

    /// The inbox's notifications of a new message, in its transaction: `user_mentioned` for
    /// the mentioned (the inbox applies its mention rate limit), `new_message` for the other
    /// recipients who have no stream open on any node.
    async fn notify_message(
        &self,
        tx: &mut DomainTx,
        conversation: &conversation::Model,
        row: &message::Model,
        mentions: &[String],
        recipients: &[String],
    ) -> Result<()> {
        let now = self.clock.now();
        let place = match &conversation.title {
            Some(title) => format!(" in {title}"),
            None => String::new(),
        };
        if !mentions.is_empty() {
            let draft = message_draft(
                inbox_rules::Kind::UserMentioned,
                format!("{} mentioned you{place}", row.author_id),
                row,
                now,
            )?;
            inbox::deliver_in(tx, &draft, mentions, now).await?;
        }
        let unmentioned: Vec<String> = recipients
            .iter()
            .filter(|user| !mentions.contains(user))
            .cloned()
            .collect();
        let offline = self.node.online().offline_among(&unmentioned).await;
        if !offline.is_empty() {
            let draft = message_draft(
                inbox_rules::Kind::NewMessage,
                format!("New message from {}{place}", row.author_id),
                row,
                now,
            )?;
            inbox::deliver_in(tx, &draft, &offline, now).await?;
        }
        Ok(())
    }

    /// EditMessage (author).
    pub async fn edit(&self, who: &Principal, message_id: u64, text: &str) -> Result<ChatMessage> {
        let text = rules::text(text)?;
        let (row, _) = self
            .change_message(who, message_id, MessageCommand::Edit, Some(text))
            .await?;
        self.with_reactions(&row, &who.user_id).await
    }

    /// DeleteMessage (author): the tombstone.
    pub async fn delete(&self, who: &Principal, message_id: u64) -> Result<ChatMessage> {
        let (row, _) = self
            .change_message(who, message_id, MessageCommand::Delete, None)
            .await?;
        Ok(events::message_message(&row, &[], &[]))
    }

    async fn change_message(
        &self,
        who: &Principal,
        message_id: u64,
        command: MessageCommand,
        text: Option<String>,
    ) -> Result<(message::Model, bool)> {
        let message_id = rules::id("message_id", message_id)?;
        let me = who.user_id.clone();
        let now = self.now_ms();
        let found = queries::find_message(self.store.db(), message_id)
            .await?
            .ok_or_else(|| not_found_message(message_id))?;
        let conversation_id = found.conversation_id;
        let mut tx = self.store.begin_as(&me).await?;
        queries::lock_conversation(tx.conn(), conversation_id)
            .await?
            .ok_or_else(|| not_found_message(message_id))?;
        if queries::conv_member_of(tx.conn(), conversation_id, &me)
            .await?
            .is_none()
        {
            return Err(not_member_of_conversation(&me, conversation_id));
        }
        let mut row = queries::find_message(tx.conn(), message_id)
            .await?
            .ok_or_else(|| not_found_message(message_id))?;
        let state = rules::Message {
            author: row.author_id.clone(),
            version: u32::try_from(row.version).unwrap_or_default(),
            deleted: row.deleted_at_ms.is_some(),
        };
        let version = match rules::decide_message(&state, command.clone(), &me)? {
            MessageChange::AlreadyDeleted => {
                tx.rollback().await?;
                return Ok((row, false));
            }
            MessageChange::Changed { version } => version,
        };
        row.version = i32::try_from(version).unwrap_or(i32::MAX);
        let topic = events::conv_topic(conversation_id);
        match command {
            MessageCommand::Edit => {
                row.text = text.unwrap_or_default();
                row.edited_at_ms = Some(now);
                let members: BTreeSet<String> = queries::conv_members(tx.conn(), conversation_id)
                    .await?
                    .into_iter()
                    .map(|m| m.user_id)
                    .collect();
                let mentions = rules::mentions(&row.text, &me, |id| members.contains(id))?;
                row.mentions = (!mentions.is_empty())
                    .then(|| serde_json::to_string(&mentions).unwrap_or_default());
                queries::save_message(tx.conn(), row.clone()).await?;
                tx.emit_typed(
                    &topic,
                    events::MESSAGE_EDITED,
                    &events::message_changed(&row),
                )?;
            }
            MessageCommand::Delete => {
                row.text = String::new();
                row.mentions = None;
                row.deleted_at_ms = Some(now);
                queries::save_message(tx.conn(), row.clone()).await?;
                queries::delete_reactions(tx.conn(), row.id).await?;
                tx.emit_typed(
                    &topic,
                    events::MESSAGE_DELETED,
                    &events::message_changed(&row),
                )?;
                let counted: Vec<queries::conv_member::Model> =
                    queries::conv_members(tx.conn(), conversation_id)
                        .await?
                        .into_iter()
                        .filter(|m| rules::counted_for(&m.user_id, m.read_seq, &me, row.seq))
                        .collect();
                let users: Vec<String> = counted.iter().map(|m| m.user_id.clone()).collect();
                if !users.is_empty() {
                    inbox::queries::lock_users(tx.conn(), &users).await?;
                    queries::uncount_message(tx.conn(), conversation_id, &users).await?;
                    let totals = queries::unread_totals(tx.conn(), &users).await?;
                    for member in &counted {
                        let total = totals.get(&member.user_id).copied().unwrap_or_default();
                        tx.emit_typed(
                            &events::user_topic(&member.user_id)?,
                            events::UNREAD,
                            &events::unread_changed(
                                conversation_id,
                                (member.unread - 1).max(0),
                                total,
                                member.read_seq,
                            ),
                        )?;
                    }
                }
            }
        }
        tx.commit().await?;
        Ok((row, true))
    }

    /// React (members): toggles the caller's `emoji` on a message.
    pub async fn react(
        &self,
        who: &Principal,
        message_id: u64,
        emoji: &str,
    ) -> Result<(bool, Vec<ChatReaction>)> {
        let message_id = rules::id("message_id", message_id)?;
        let emoji = rules::emoji(emoji)?;
        let me = who.user_id.clone();
        let now_time = self.clock.now();
        let now = inbox_rules::unix_ms(now_time);
        let found = queries::find_message(self.store.db(), message_id)
            .await?
            .ok_or_else(|| not_found_message(message_id))?;
        let conversation_id = found.conversation_id;
        let mut tx = self.store.begin_as(&me).await?;
        let conversation = queries::lock_conversation(tx.conn(), conversation_id)
            .await?
            .ok_or_else(|| not_found_message(message_id))?;
        if queries::conv_member_of(tx.conn(), conversation_id, &me)
            .await?
            .is_none()
        {
            return Err(not_member_of_conversation(&me, conversation_id));
        }
        let row = queries::find_message(tx.conn(), message_id)
            .await?
            .ok_or_else(|| not_found_message(message_id))?;
        if row.deleted_at_ms.is_some() {
            return Err(RuleError::Precondition(format!(
                "message {message_id} was deleted; a tombstone takes no reactions"
            ))
            .into());
        }
        let ids = [row.id];
        let summary = queries::reaction_summaries(tx.conn(), &ids)
            .await?
            .remove(&row.id)
            .unwrap_or_default();
        let mut mine = queries::my_reactions(tx.conn(), &ids, &me)
            .await?
            .remove(&row.id)
            .unwrap_or_default();
        let had = mine.contains(&emoji);
        let (added, summary) = rules::toggle(&summary, had, &emoji, now)?;
        queries::set_reaction(tx.conn(), row.id, &me, &emoji, added, now).await?;
        if added {
            mine.push(emoji.clone());
        } else {
            mine.retain(|e| *e != emoji);
        }
        tx.emit_typed(
            &events::conv_topic(conversation_id),
            events::REACTIONS_CHANGED,
            &events::reactions_changed(&row, &me, &emoji, added, &summary),
        )?;
        if added && row.author_id != me {
            let place = match &conversation.title {
                Some(title) => format!(" in {title}"),
                None => String::new(),
            };
            let draft = message_draft(
                inbox_rules::Kind::MessageReaction,
                format!("{me} reacted {emoji} to your message{place}"),
                &row,
                now_time,
            )?;
            inbox::deliver_in(
                &mut tx,
                &draft,
                std::slice::from_ref(&row.author_id),
                now_time,
            )
            .await?;
        }
        tx.commit().await?;
        Ok((added, events::reactions_message(&summary, &mine)))
    }

    /// ListMessages (members): newest first, with the position of `conv:<id>`.
    pub async fn messages(
        &self,
        who: &Principal,
        conversation_id: u64,
        page_size: u32,
        page_token: &str,
    ) -> Result<MessagePage> {
        let conversation_id = rules::id("conversation_id", conversation_id)?;
        let limit = rules::page_size(page_size)?;
        let before = rules::messages_cursor(page_token)?;
        let snapshot = self.store.snapshot().await?;
        if queries::find_conversation(snapshot.conn(), conversation_id)
            .await?
            .is_none()
        {
            return Err(not_found_conversation(conversation_id));
        }
        if queries::conv_member_of(snapshot.conn(), conversation_id, &who.user_id)
            .await?
            .is_none()
        {
            return Err(not_member_of_conversation(&who.user_id, conversation_id));
        }
        let mut rows =
            queries::messages_page(snapshot.conn(), conversation_id, before, limit + 1).await?;
        let next = (rows.len() > limit).then(|| {
            rows.truncate(limit);
            rows.last().map(|last| last.seq)
        });
        let ids: Vec<i64> = rows.iter().map(|m| m.id).collect();
        let summaries = queries::reaction_summaries(snapshot.conn(), &ids).await?;
        let mine = queries::my_reactions(snapshot.conn(), &ids, &who.user_id).await?;
        let position = snapshot
            .position(&events::conv_topic(conversation_id))
            .await?;
        snapshot.end().await?;
        Ok(MessagePage {
            messages: rows
                .iter()
                .map(|m| {
                    events::message_message(
                        m,
                        summaries.get(&m.id).map_or(&[][..], Vec::as_slice),
                        mine.get(&m.id).map_or(&[][..], Vec::as_slice),
                    )
                })
                .collect(),
            next: next.flatten(),
            position,
        })
    }

    /// A message with its reactions as `viewer` sees them.
    async fn with_reactions(&self, row: &message::Model, viewer: &str) -> Result<ChatMessage> {
        let ids = [row.id];
        let summaries = queries::reaction_summaries(self.store.db(), &ids).await?;
        let mine = queries::my_reactions(self.store.db(), &ids, viewer).await?;
        Ok(events::message_message(
            row,
            summaries.get(&row.id).map_or(&[][..], Vec::as_slice),
            mine.get(&row.id).map_or(&[][..], Vec::as_slice),
        ))
    }

    // -----------------------------------------------------------------------------------
    // Typing and presence

    /// SetTyping (members): whether a signal went out.
    pub async fn set_typing(
        &self,
        who: &Principal,
        conversation_id: u64,
        typing: bool,
    ) -> Result<bool> {
        let conversation_id = rules::id("conversation_id", conversation_id)?;
        let topic = events::conv_topic(conversation_id);
        self.node.authorize(who, Action::Signal, &topic).await?;
        let Some(signal) = self
            .typing
            .set(conversation_id, &who.user_id, typing, self.clock.now())
        else {
            return Ok(false);
        };
        let (typing, reason) = match signal {
            TypingSignal::Started => (true, None),
            TypingSignal::Stopped(reason) => (false, Some(reason)),
        };
        self.typing_signal(&topic, &who.user_id, typing, reason)
            .await?;
        Ok(true)
    }

    async fn typing_signal(
        &self,
        topic: &Topic,
        user: &str,
        typing: bool,
        reason: Option<StopReason>,
    ) -> Result<(), Error> {
        let mut data = serde_json::json!({ "user_id": user, "typing": typing });
        if let Some(reason) = reason {
            data["reason"] = reason.as_str().into();
        }
        self.node
            .service_signal(
                topic,
                &events::signal_type(events::TYPING_SIGNAL),
                Some(user.to_owned()),
                Some(to_struct(data)),
                user,
            )
            .await
            .map(|_| ())
    }

    async fn typing_stopped(&self, conversation: i64, user: &str, reason: StopReason) {
        let topic = events::conv_topic(conversation);
        if let Err(error) = self.typing_signal(&topic, user, false, Some(reason)).await {
            tracing::warn!(%topic, %error, "could not signal that typing stopped");
        }
    }

    /// Stops every typist whose timeout passed (the sweeper's step; tests call it too).
    pub async fn expire_typing(&self) {
        for (conversation, user) in self.typing.expire(self.clock.now()) {
            self.typing_stopped(conversation, &user, StopReason::Timeout)
                .await;
        }
    }

    /// A user went online or offline: their typing stops when offline, and every group and
    /// direct conversation they are in gets a `chat.presence` signal.
    async fn presence_changed(&self, change: OnlineChange) {
        if !change.online {
            for conversation in self.typing.disconnected(&change.user_id) {
                self.typing_stopped(conversation, &change.user_id, StopReason::Disconnected)
                    .await;
            }
        }
        let (groups, directs) = match queries::presence_topics_of(self.store.db(), &change.user_id)
            .await
        {
            Ok(found) => found,
            Err(error) => {
                tracing::warn!(user = %change.user_id, %error, "could not read where to push presence");
                return;
            }
        };
        let mut data = serde_json::json!({ "user_id": change.user_id, "online": change.online });
        if !change.online
            && let Ok(at) = jiff::Timestamp::try_from(change.at)
        {
            data["last_seen"] = at.to_string().into();
        }
        let data = to_struct(data);
        let topics = groups
            .into_iter()
            .map(events::group_topic)
            .chain(directs.into_iter().map(events::conv_topic));
        let signal = events::signal_type(events::PRESENCE_SIGNAL);
        for topic in topics {
            let sent = self
                .node
                .service_signal(
                    &topic,
                    &signal,
                    Some(change.user_id.clone()),
                    Some(data.clone()),
                    &change.user_id,
                )
                .await;
            if let Err(error) = sent {
                tracing::warn!(%topic, %error, "could not push presence");
            }
        }
    }

    /// Runs until `shutdown`: stops typing that timed out every `chat.typing_sweep`, and
    /// follows who goes online and offline.
    pub async fn run(self, shutdown: CancellationToken) {
        let feed = self.node.online().feed();
        let every = self.config.typing_sweep;
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticker.tick() => self.expire_typing().await,
                changes = feed.next() => {
                    for change in changes {
                        self.presence_changed(change).await;
                    }
                }
            }
        }
    }
}

fn to_struct(data: serde_json::Value) -> Struct {
    serde_json::from_value(data).unwrap_or_default()
}

/// An inbox notification about a message.
fn message_draft(
    kind: inbox_rules::Kind,
    title: String,
    row: &message::Model,
    now: std::time::SystemTime,
) -> Result<inbox_rules::Draft> {
    let input = inbox_rules::DraftInput {
        kind: Some(kind),
        priority: None,
        title: title.chars().take(inbox_rules::TITLE_MAX_CHARS).collect(),
        content: String::new(),
        data_json: None,
        sender: Some(inbox_rules::SenderInput {
            id: row.author_id.clone(),
            display_name: row.author_id.clone(),
            avatar_url: String::new(),
        }),
        conversation_id: row.conversation_id.to_string(),
        message_id: row.id.to_string(),
        call_id: String::new(),
        message_preview: row.text.clone(),
        expires_at: None,
    };
    Ok(inbox_rules::draft(input, now).map_err(InboxError::from)?)
}

/// The members of `group:<id>` and `conv:<id>`, from the chat tables; a leave or removal
/// event ends their membership.
#[derive(Debug)]
struct Members {
    store: Store,
}

#[async_trait]
impl Membership for Members {
    async fn is_member(
        &self,
        topic: &Topic,
        user_id: &str,
    ) -> std::result::Result<bool, MembershipError> {
        let Some(id) = events::topic_id(topic) else {
            return Ok(false);
        };
        let db = self.store.db();
        let found = match topic.kind() {
            TopicKind::Group => queries::group_member_of(db, id, user_id)
                .await
                .map(|m| m.is_some()),
            TopicKind::Conv => queries::conv_member_of(db, id, user_id)
                .await
                .map(|m| m.is_some()),
            _ => Ok(false),
        };
        found.map_err(|error| MembershipError(error.to_string()))
    }

    fn ends_membership(
        &self,
        _topic: &Topic,
        event: &herald_proto::v1::Event,
        user_id: &str,
    ) -> bool {
        events::ends_membership(event, user_id)
    }
}
