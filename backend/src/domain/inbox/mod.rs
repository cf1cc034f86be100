//! The notification inbox: every user's notifications as one ordered stream, `user:<id>`.
//!
//! Every command runs the same way: begin → load (taking the inbox's write lock, see
//! [`queries::lock_users`]) → authorize → decide ([`rules`], with `now` from the clock) →
//! save → emit → commit. Each change emits its event and then a `notification.counts` event
//! counted from the rows *after* the change, in the same transaction; since writers of one
//! inbox are serialized by the lock and the topic's order is its commit order, the last
//! counts event a client has seen always equals the database.
//!
//! The [sweeper](Inbox::run_sweeper) wakes snoozed notifications whose time has come and
//! purges expired ones, in bounded batches of one short transaction each, pushing both.

pub mod events;
pub mod queries;
pub mod rules;

use std::{
    collections::{BTreeMap, HashMap},
    time::{Duration, SystemTime},
};

use herald_proto::v1::{NotificationChange, NotificationsChanged, StreamPosition};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::{
    auth::Principal,
    clock::SharedClock,
    store::{DomainTx, Store, StoreError},
    topic::TopicError,
};
use queries::notification;
use rules::{
    Command, Counts, Delivery, Draft, DraftInput, Kind, ListQuery, Preferences, RuleError,
    Transition, unix_ms,
};

/// `[notifications]` in the configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InboxConfig {
    /// How often the sweeper looks for snoozes that ended and notifications that expired.
    #[serde(with = "herald_proto::support::duration")]
    pub sweep_interval: Duration,
    /// The most notifications one sweeper transaction wakes or purges.
    pub sweep_batch: u64,
}

impl Default for InboxConfig {
    fn default() -> Self {
        InboxConfig {
            sweep_interval: Duration::from_secs(1),
            sweep_batch: 500,
        }
    }
}

/// Why an inbox command failed.
#[derive(Debug, thiserror::Error)]
pub enum InboxError {
    #[error(transparent)]
    Rule(#[from] RuleError),
    /// Not allowed; the message says who may.
    #[error("{0}")]
    Denied(String),
    #[error("notification `{0}` is not in your inbox")]
    NotFound(String),
    #[error("your token's `sub` cannot name an inbox: {0}")]
    Topic(#[from] TopicError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sea_orm::DbErr> for InboxError {
    fn from(error: sea_orm::DbErr) -> InboxError {
        InboxError::Store(StoreError::from(error))
    }
}

impl From<InboxError> for crate::error::Error {
    fn from(error: InboxError) -> crate::error::Error {
        use crate::error::Error;
        match error {
            InboxError::Rule(RuleError::State(message)) => Error::FailedPrecondition(message),
            InboxError::Rule(rule) => Error::InvalidArgument(rule.to_string()),
            InboxError::Denied(message) => Error::PermissionDenied(message),
            error @ InboxError::NotFound(_) => Error::NotFound(error.to_string()),
            error @ InboxError::Topic(_) => Error::InvalidArgument(error.to_string()),
            InboxError::Store(store) => Error::Store(store),
        }
    }
}

/// What Create did for one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub user_id: String,
    pub delivery: Delivery,
    /// The new notification's id, when created.
    pub id: Option<String>,
}

/// One page of List.
#[derive(Debug, Clone)]
pub struct Page {
    pub notifications: Vec<notification::Model>,
    pub next: Option<rules::Cursor>,
    pub position: StreamPosition,
}

/// What one sweep did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Swept {
    pub woken: u64,
    pub expired: u64,
}

/// The inbox service.
#[derive(Debug, Clone)]
pub struct Inbox {
    store: Store,
    clock: SharedClock,
    config: InboxConfig,
}

impl Inbox {
    pub fn new(store: Store, clock: SharedClock, config: InboxConfig) -> Inbox {
        Inbox {
            store,
            clock,
            config,
        }
    }

    pub fn now(&self) -> SystemTime {
        self.clock.now()
    }

    /// Create (services only): one notification per recipient, in one transaction.
    pub async fn create(
        &self,
        who: &Principal,
        recipients: Vec<String>,
        input: DraftInput,
    ) -> Result<Vec<Report>, InboxError> {
        if !who.is_service() {
            return Err(InboxError::Denied(
                "only services (token role `service`) create notifications".to_owned(),
            ));
        }
        let now = self.now();
        let recipients = rules::recipients(recipients)?;
        let draft = rules::draft(input, now)?;
        let mut tx = self.store.begin_as(&who.user_id).await?;
        let reports = deliver_in(&mut tx, &draft, &recipients, now).await?;
        tx.commit().await?;
        Ok(reports)
    }

    /// List: one page of the caller's notifications, with the inbox's position in the same
    /// snapshot.
    pub async fn list(&self, who: &Principal, query: ListQuery) -> Result<Page, InboxError> {
        let topic = events::inbox(&who.user_id)?;
        let snapshot = self.store.snapshot().await?;
        let mut rows = queries::list(snapshot.conn(), &who.user_id, &query).await?;
        let position = snapshot.position(&topic).await?;
        snapshot.end().await?;
        let next = (rows.len() > query.limit).then(|| {
            rows.truncate(query.limit);
            rows.last().map(|last| rules::Cursor {
                created_at: last.created_at_ms,
                id: last.id.clone(),
            })
        });
        Ok(Page {
            notifications: rows,
            next: next.flatten(),
            position,
        })
    }

    /// Counts: the caller's badge, with the inbox's position in the same snapshot.
    pub async fn counts(&self, who: &Principal) -> Result<(Counts, StreamPosition), InboxError> {
        let topic = events::inbox(&who.user_id)?;
        let snapshot = self.store.snapshot().await?;
        let user = who.user_id.clone();
        let mut counts = queries::counts_of(snapshot.conn(), std::slice::from_ref(&user)).await?;
        let position = snapshot.position(&topic).await?;
        snapshot.end().await?;
        Ok((counts.remove(&user).unwrap_or_default(), position))
    }

    /// MarkSeen: the bell was opened.
    pub async fn mark_seen(&self, who: &Principal) -> Result<u32, InboxError> {
        let now = self.now();
        let user = who.user_id.clone();
        let topic = events::inbox(&user)?;
        let mut tx = self.store.begin_as(&user).await?;
        queries::lock_users(tx.conn(), std::slice::from_ref(&user)).await?;
        let changed = queries::mark_all_seen(tx.conn(), &user, unix_ms(now)).await?;
        if changed > 0 {
            let body = NotificationsChanged {
                change: NotificationChange::Seen.into(),
                all: true,
                time: Some(herald_proto::timestamp(now)),
                ..NotificationsChanged::default()
            };
            tx.emit_typed(&topic, events::SEEN, &events::changed(body))?;
            emit_counts(&mut tx, std::slice::from_ref(&user)).await?;
        }
        tx.commit().await?;
        Ok(count(changed))
    }

    /// MarkAllRead, optionally only of one type and/or one conversation.
    pub async fn mark_all_read(
        &self,
        who: &Principal,
        kind: Option<Kind>,
        conversation: Option<String>,
    ) -> Result<u32, InboxError> {
        let now = self.now();
        let user = who.user_id.clone();
        let topic = events::inbox(&user)?;
        let conversation = conversation
            .filter(|c| !c.is_empty())
            .map(|c| rules::id("conversation_id", &c))
            .transpose()?;
        let mut tx = self.store.begin_as(&user).await?;
        queries::lock_users(tx.conn(), std::slice::from_ref(&user)).await?;
        let changed = queries::mark_all_read(
            tx.conn(),
            &user,
            kind,
            conversation.as_deref(),
            unix_ms(now),
        )
        .await?;
        if changed > 0 {
            let body = NotificationsChanged {
                change: NotificationChange::Read.into(),
                all: true,
                r#type: kind.map_or(0, |k| events::kind_message(k).into()),
                conversation_id: conversation.unwrap_or_default(),
                time: Some(herald_proto::timestamp(now)),
                ..NotificationsChanged::default()
            };
            tx.emit_typed(&topic, events::READ, &events::changed(body))?;
            emit_counts(&mut tx, std::slice::from_ref(&user)).await?;
        }
        tx.commit().await?;
        Ok(count(changed))
    }

    /// MarkRead(ids).
    pub async fn mark_read(&self, who: &Principal, ids: Vec<String>) -> Result<u32, InboxError> {
        self.change_many(who, ids, Command::MarkRead, NotificationChange::Read)
            .await
    }

    /// Archive(ids).
    pub async fn archive(&self, who: &Principal, ids: Vec<String>) -> Result<u32, InboxError> {
        self.change_many(who, ids, Command::Archive, NotificationChange::Archived)
            .await
    }

    /// Delete(ids).
    pub async fn delete(&self, who: &Principal, ids: Vec<String>) -> Result<u32, InboxError> {
        self.change_many(who, ids, Command::Delete, NotificationChange::Deleted)
            .await
    }

    /// Snooze(id, until).
    pub async fn snooze(
        &self,
        who: &Principal,
        id: String,
        until: SystemTime,
    ) -> Result<notification::Model, InboxError> {
        self.change_one(
            who,
            id,
            Command::Snooze { until },
            NotificationChange::Snoozed,
        )
        .await
    }

    /// Unsnooze(id): back now, as new.
    pub async fn unsnooze(
        &self,
        who: &Principal,
        id: String,
    ) -> Result<notification::Model, InboxError> {
        self.change_one(who, id, Command::Unsnooze, NotificationChange::Unsnoozed)
            .await
    }

    async fn change_many(
        &self,
        who: &Principal,
        ids: Vec<String>,
        command: Command,
        change: NotificationChange,
    ) -> Result<u32, InboxError> {
        let ids = rules::ids(ids)?;
        let now = self.now();
        let user = who.user_id.clone();
        let mut tx = self.store.begin_as(&user).await?;
        queries::lock_users(tx.conn(), std::slice::from_ref(&user)).await?;
        let rows = queries::find_owned(tx.conn(), &user, &ids).await?;
        let applied = apply_in(&mut tx, &user, rows, command, change, now).await?;
        tx.commit().await?;
        Ok(count(applied.changed.len() as u64))
    }

    async fn change_one(
        &self,
        who: &Principal,
        id: String,
        command: Command,
        change: NotificationChange,
    ) -> Result<notification::Model, InboxError> {
        let id = rules::id("id", &id)?;
        let now = self.now();
        let user = who.user_id.clone();
        let mut tx = self.store.begin_as(&user).await?;
        queries::lock_users(tx.conn(), std::slice::from_ref(&user)).await?;
        let rows = queries::find_owned(tx.conn(), &user, std::slice::from_ref(&id)).await?;
        if rows.is_empty() {
            return Err(InboxError::NotFound(id));
        }
        let applied = apply_in(&mut tx, &user, rows, command, change, now).await?;
        tx.commit().await?;
        applied
            .after
            .into_iter()
            .next()
            .ok_or(InboxError::NotFound(id))
    }

    /// GetPreferences.
    pub async fn preferences(&self, who: &Principal) -> Result<Preferences, InboxError> {
        Ok(queries::preferences(self.store.db(), &who.user_id).await?)
    }

    /// UpdatePreferences: replaces the caller's preferences.
    pub async fn set_preferences(
        &self,
        who: &Principal,
        preferences: Preferences,
    ) -> Result<Preferences, InboxError> {
        let user = who.user_id.clone();
        events::inbox(&user)?;
        let tx = self.store.begin_as(&user).await?;
        queries::lock_users(tx.conn(), std::slice::from_ref(&user)).await?;
        queries::save_preferences(tx.conn(), &user, &preferences).await?;
        tx.commit().await?;
        Ok(preferences)
    }

    /// Runs [`Inbox::sweep_once`] every `sweep_interval` until `shutdown`.
    pub async fn run_sweeper(self, shutdown: CancellationToken) {
        let every = self.config.sweep_interval.max(Duration::from_millis(10));
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticker.tick() => {}
            }
            match self.sweep_once().await {
                Ok(swept) if swept == Swept::default() => {}
                Ok(swept) => tracing::debug!(
                    woken = swept.woken,
                    expired = swept.expired,
                    "notification sweep"
                ),
                Err(error) => tracing::warn!(%error, "notification sweep failed; retrying later"),
            }
        }
    }

    /// One pass: wakes every snooze that has ended, purges every expired notification (each
    /// in transactions of at most `sweep_batch` notifications) and forgets mention windows
    /// older than the rate limit's window.
    pub async fn sweep_once(&self) -> Result<Swept, InboxError> {
        let batch = self.config.sweep_batch.max(1);
        let mut swept = Swept::default();
        loop {
            let now = self.now();
            let due = queries::due_snoozes(self.store.db(), unix_ms(now), batch).await?;
            let found = due.len() as u64;
            swept.woken += self
                .sweep_batch(due, Command::Wake, NotificationChange::Unsnoozed, now)
                .await?;
            if found < batch {
                break;
            }
            tokio::task::yield_now().await;
        }
        loop {
            let now = self.now();
            let due = queries::expired(self.store.db(), unix_ms(now), batch).await?;
            let found = due.len() as u64;
            swept.expired += self
                .sweep_batch(due, Command::Expire, NotificationChange::Expired, now)
                .await?;
            if found < batch {
                break;
            }
            tokio::task::yield_now().await;
        }
        let cutoff = unix_ms(self.now()) - rules::MENTION_WINDOW.as_millis() as i64;
        loop {
            let turn = self.store.begin().await?;
            let deleted = queries::delete_stale_windows(turn.conn(), cutoff, batch).await?;
            turn.commit().await?;
            if deleted < batch {
                break;
            }
        }
        Ok(swept)
    }

    /// Applies a sweeper command to the given notifications, grouped by inbox, in one
    /// transaction; rows that changed meanwhile are decided again from their current state.
    async fn sweep_batch(
        &self,
        due: Vec<(String, String)>,
        command: Command,
        change: NotificationChange,
        now: SystemTime,
    ) -> Result<u64, InboxError> {
        if due.is_empty() {
            return Ok(0);
        }
        let mut by_user: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (id, user) in due {
            by_user.entry(user).or_default().push(id);
        }
        let users: Vec<String> = by_user.keys().cloned().collect();
        let mut tx = self.store.begin().await?;
        queries::lock_users(tx.conn(), &users).await?;
        let mut done = 0;
        for (user, ids) in &by_user {
            let rows = queries::find_owned(tx.conn(), user, ids).await?;
            let applied = apply_in(&mut tx, user, rows, command, change, now).await?;
            done += applied.changed.len() as u64;
        }
        tx.commit().await?;
        Ok(done)
    }
}

fn count(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// What [`apply_in`] did.
struct Applied {
    /// Ids that changed or were removed.
    changed: Vec<String>,
    /// Every given row after the command (removed rows excluded).
    after: Vec<notification::Model>,
}

/// Decides `command` for each of `user`'s `rows`, saves the changes and emits them (at most
/// [`rules::MAX_IDS`] ids per event) followed by the counts — only if anything changed. The
/// caller holds the inbox's lock.
async fn apply_in(
    tx: &mut DomainTx,
    user: &str,
    rows: Vec<notification::Model>,
    command: Command,
    change: NotificationChange,
    now: SystemTime,
) -> Result<Applied, InboxError> {
    let mut changed = Vec::new();
    let mut removed = Vec::new();
    let mut after = Vec::with_capacity(rows.len());
    let mut snoozed_until = None;
    for row in rows {
        match rules::decide(&queries::state_of(&row), command, now)? {
            Transition::Unchanged => after.push(row),
            Transition::Changed(state) => {
                queries::save_state(tx.conn(), &row.id, state).await?;
                snoozed_until = state.snoozed_until.or(snoozed_until);
                changed.push(row.id.clone());
                after.push(queries::with_state(row, state));
            }
            Transition::Removed => removed.push(row.id),
        }
    }
    queries::delete(tx.conn(), &removed).await?;
    changed.extend(removed);
    if changed.is_empty() {
        return Ok(Applied { changed, after });
    }
    let topic = events::inbox(user)?;
    for ids in changed.chunks(rules::MAX_IDS) {
        let body = NotificationsChanged {
            change: change.into(),
            ids: ids.to_vec(),
            time: Some(herald_proto::timestamp(now)),
            snoozed_until: (change == NotificationChange::Snoozed)
                .then(|| snoozed_until.map(events::timestamp))
                .flatten(),
            ..NotificationsChanged::default()
        };
        tx.emit_typed(&topic, events::change_type(change), &events::changed(body))?;
    }
    emit_counts(tx, &[user.to_owned()]).await?;
    Ok(Applied { changed, after })
}

/// Emits each user's counts, read from the rows as this transaction sees them.
async fn emit_counts(tx: &mut DomainTx, users: &[String]) -> Result<(), InboxError> {
    let counts = queries::counts_of(tx.conn(), users).await?;
    for user in users {
        let badge = counts.get(user).cloned().unwrap_or_default();
        tx.emit_typed(
            &events::inbox(user)?,
            events::COUNTS,
            &events::counts(&badge),
        )?;
    }
    Ok(())
}

/// Delivers a checked draft to `recipients` inside `tx` (which the caller commits): locks
/// their inboxes, decides per recipient (preferences → mention rate limit → do-not-disturb),
/// stores the notifications and emits, per created one, `notification.created` and the
/// recipient's counts. Other domains use it to notify in their own transaction (a review's
/// decision reaches the applicant's inbox with the decision).
pub(crate) async fn deliver_in(
    tx: &mut DomainTx,
    draft: &Draft,
    recipients: &[String],
    now: SystemTime,
) -> Result<Vec<Report>, InboxError> {
    let users = queries::lock_users(tx.conn(), recipients).await?;
    let mention_sender = match (&draft.kind, &draft.sender) {
        (Kind::UserMentioned, Some(sender)) => Some(sender.id.clone()),
        _ => None,
    };
    let windows = match &mention_sender {
        Some(sender) => queries::mention_windows(tx.conn(), sender, recipients).await?,
        None => HashMap::new(),
    };
    let now_ms = unix_ms(now);
    let mut reports = Vec::with_capacity(recipients.len());
    let mut rows = Vec::new();
    let mut quiet = Vec::new();
    let mut new_windows = Vec::new();
    for user in recipients {
        let preferences = users
            .get(user)
            .map(queries::preferences_of)
            .unwrap_or_default();
        let window = mention_sender
            .as_ref()
            .map(|_| windows.get(user).map_or(&[][..], Vec::as_slice));
        let (delivery, next) = rules::deliver(draft, &preferences, window, now);
        if let Some(next) = next {
            new_windows.push((user.clone(), next));
        }
        let id = match delivery {
            Delivery::Created { quiet: q } => {
                let id = uuid::Uuid::now_v7().to_string();
                rows.push(queries::new_row(id.clone(), user, draft, now_ms));
                quiet.push(q);
                Some(id)
            }
            Delivery::SuppressedByPreference | Delivery::RateLimited => None,
        };
        reports.push(Report {
            user_id: user.clone(),
            delivery,
            id,
        });
    }
    queries::insert(tx.conn(), &rows).await?;
    if let Some(sender) = &mention_sender {
        queries::save_mention_windows(tx.conn(), sender, &new_windows).await?;
    }
    let created: Vec<String> = rows.iter().map(|row| row.user_id.clone()).collect();
    let counts = queries::counts_of(tx.conn(), &created).await?;
    for (row, quiet) in rows.iter().zip(quiet) {
        let topic = events::inbox(&row.user_id)?;
        let created = events::created(events::notification_message(row), quiet);
        tx.emit_typed(&topic, events::CREATED, &created)?;
        let badge = counts.get(&row.user_id).cloned().unwrap_or_default();
        tx.emit_typed(&topic, events::COUNTS, &events::counts(&badge))?;
    }
    Ok(reports)
}
