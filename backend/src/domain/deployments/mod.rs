//! Deployment monitoring: a user creates a deployment, a build worker runs it (stages,
//! progress, log lines, the result), and its owner and admins watch status and log in one
//! ordered stream, the durable topic `deployment:<id>`.
//!
//! - [`rules`]: the state machine (transitions, progress, who may, log numbering, splitting
//!   and truncation), pure and unit-tested;
//! - [`queries`]: the `deployment` and `deployment_log_chunk` tables;
//! - [`events`]: the event types and typed bodies;
//! - [`watch`]: how `Watch` turns the topic's subscription into `DeploymentEvent`s;
//! - this file: every command as begin → load → authorize → decide → save → emit → commit,
//!   the reads as snapshot + position, and the policy's membership facts ([`Owners`]).

pub mod events;
pub mod queries;
pub mod rules;
pub mod watch;

use std::{
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use async_trait::async_trait;
use herald_proto::v1::{Deployment as DeploymentView, DeploymentLogs, StreamPosition};
use serde::Deserialize;

use crate::{
    auth::{ADMIN_ROLE, Principal},
    authz::{Action, Membership, MembershipError},
    error::Error,
    node::Node,
    store::{Committed, DomainTx, ReadSnapshot, Store, StoreError},
    subscription::EventStream,
    topic::Topic,
};
use queries::deployment;
use rules::{
    Actor, Appended, Change, Command, Deployment, DeploymentId, InputLine, LogLimits, LogState,
    NewDeployment, RuleError,
};
pub use watch::WatchFilter;

/// `[deployments]` in the configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeploymentsConfig {
    /// The most log lines a deployment keeps: beyond it the first 10 % and the newest lines are
    /// kept, with one `truncated` marker where lines were dropped. Applies to deployments
    /// created after a change.
    pub max_log_lines: u64,
    /// The longest line a worker may send (it is stored in 16 KiB pieces); longer is
    /// INVALID_ARGUMENT.
    pub max_line_bytes: usize,
    /// The most lines in one chunk (one transaction, one event).
    pub max_chunk_lines: usize,
}

impl Default for DeploymentsConfig {
    fn default() -> Self {
        DeploymentsConfig {
            max_log_lines: 200_000,
            max_line_bytes: 256 * 1024,
            max_chunk_lines: 5_000,
        }
    }
}

impl DeploymentsConfig {
    /// Checks the values (called when the backend is built).
    pub fn check(&self) -> Result<(), String> {
        if self.max_log_lines < 10 {
            return Err(format!(
                "deployments.max_log_lines is {}; keep at least 10 lines",
                self.max_log_lines
            ));
        }
        if self.max_line_bytes == 0 || self.max_chunk_lines == 0 {
            return Err(
                "deployments.max_line_bytes and deployments.max_chunk_lines must be positive"
                    .into(),
            );
        }
        Ok(())
    }

    fn limits(&self) -> LogLimits {
        LogLimits {
            max_line_bytes: self.max_line_bytes,
            max_chunk_lines: self.max_chunk_lines,
        }
    }
}

/// The most deployments one List page returns.
pub const MAX_PAGE_SIZE: u32 = 100;
/// The page size of a List without one.
pub const DEFAULT_PAGE_SIZE: u32 = 20;

/// Why a deployment command or read failed.
#[derive(Debug, thiserror::Error)]
pub enum DeploymentError {
    #[error(transparent)]
    Rule(#[from] RuleError),
    #[error("no deployment {0}: check the id (Create answers it, List shows yours)")]
    NotFound(DeploymentId),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Core(#[from] Error),
}

impl From<DeploymentError> for Error {
    fn from(error: DeploymentError) -> Error {
        match error {
            DeploymentError::Rule(RuleError::Invalid(message)) => Error::InvalidArgument(message),
            DeploymentError::Rule(RuleError::Forbidden(message)) => {
                Error::PermissionDenied(message)
            }
            DeploymentError::Rule(RuleError::Precondition(message)) => {
                Error::FailedPrecondition(message)
            }
            DeploymentError::NotFound(id) => {
                Error::NotFound(DeploymentError::NotFound(id).to_string())
            }
            DeploymentError::Store(error) => Error::Store(error),
            DeploymentError::Core(error) => error,
        }
    }
}

type Result<T, E = DeploymentError> = std::result::Result<T, E>;

/// A log line as a worker sent it (the transport's form, before the rules parse it).
#[derive(Debug, Clone)]
pub struct LineInput {
    pub text: String,
    pub stream: i32,
    /// Unix milliseconds; `None` for "now".
    pub time_ms: Option<i64>,
}

/// What one stored chunk answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendOutcome {
    pub last_line: u64,
    pub log_truncated: bool,
    pub position: StreamPosition,
}

/// The deployments service: commands and reads over the store, watches through the node.
#[derive(Debug, Clone)]
pub struct Deployments {
    store: Store,
    node: Arc<Node>,
    config: DeploymentsConfig,
}

fn now_ms() -> i64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
}

fn actor(who: &Principal) -> Actor {
    Actor {
        user_id: who.user_id.clone(),
        admin: who.has_role(ADMIN_ROLE),
        service: who.is_service(),
    }
}

/// The position of the last event a commit made durable.
fn last_position(committed: &Committed) -> Option<StreamPosition> {
    committed.events.last().map(|event| event.position.clone())
}

impl Deployments {
    pub fn new(store: Store, node: Arc<Node>, config: DeploymentsConfig) -> Deployments {
        Deployments {
            store,
            node,
            config,
        }
    }

    /// The membership facts of `deployment:` topics (its owner), for the policy.
    pub fn owners(store: Store) -> Arc<dyn Membership> {
        Arc::new(Owners { store })
    }

    /// Creates a deployment owned by `who`, in PENDING; its topic starts with its status.
    pub async fn create(&self, who: &Principal, new: NewDeployment) -> Result<DeploymentView> {
        let now = now_ms();
        let mut tx = self.store.begin_as(&who.user_id).await?;
        let row = queries::insert(
            tx.conn(),
            &who.user_id,
            &new.application,
            &new.git_ref,
            &new.description,
            now,
            self.config.max_log_lines,
        )
        .await?;
        let state = queries::state_of(&row)?;
        emit_status(&mut tx, &state)?;
        let committed = tx.commit().await?;
        Ok(view(&row, &state, last_position(&committed)))
    }

    /// One deployment with its topic's position, read in one snapshot.
    pub async fn get(&self, who: &Principal, id: DeploymentId) -> Result<DeploymentView> {
        let snapshot = self.store.snapshot().await?;
        let row = queries::find(snapshot.conn(), id)
            .await?
            .ok_or(DeploymentError::NotFound(id))?;
        let found = read_view(&snapshot, &row).await?;
        snapshot.end().await?;
        // After the snapshot: the owner check takes a pooled connection of its own.
        self.node
            .authorize(who, Action::Read, &events::topic(id))
            .await?;
        Ok(found)
    }

    /// A page of deployments, newest first: the caller's own (admins: everyone's), of one
    /// application or all. Answers the page and the next page's token.
    pub async fn list(
        &self,
        who: &Principal,
        application: Option<&str>,
        page_size: u32,
        page_token: &str,
    ) -> Result<(Vec<DeploymentView>, String)> {
        let size = match page_size {
            0 => DEFAULT_PAGE_SIZE,
            n if n > MAX_PAGE_SIZE => {
                return Err(RuleError::Invalid(format!(
                    "page_size is {n}; a page holds at most {MAX_PAGE_SIZE} deployments"
                ))
                .into());
            }
            n => n,
        };
        let before = match page_token {
            "" => None,
            token => Some(DeploymentId::parse(token).map_err(|_| {
                RuleError::Invalid(
                    "page_token is not one this server issued: pass next_page_token unchanged"
                        .into(),
                )
            })?),
        };
        if let Some(application) = application {
            NewDeployment::parse(application, "ref", None)?;
        }
        let owner = (!who.has_role(ADMIN_ROLE)).then_some(who.user_id.as_str());
        let snapshot = self.store.snapshot().await?;
        let mut rows = queries::list(
            snapshot.conn(),
            owner,
            application,
            before,
            u64::from(size) + 1,
        )
        .await?;
        let more = rows.len() > size as usize;
        rows.truncate(size as usize);
        let mut page = Vec::with_capacity(rows.len());
        for row in &rows {
            page.push(read_view(&snapshot, row).await?);
        }
        snapshot.end().await?;
        let next = match (more, page.last()) {
            (true, Some(last)) => last.id.to_string(),
            _ => String::new(),
        };
        Ok((page, next))
    }

    /// Cancel (owner or admin), Start, Report and Finish (the worker): one status change.
    pub async fn command(
        &self,
        who: &Principal,
        id: DeploymentId,
        command: Command,
    ) -> Result<DeploymentView> {
        let mut tx = self.store.begin_as(&who.user_id).await?;
        let row = queries::find_for_update(tx.conn(), id)
            .await?
            .ok_or(DeploymentError::NotFound(id))?;
        let state = queries::state_of(&row)?;
        let (next, changes) = rules::decide(&state, command, &actor(who))?;
        let row = queries::save(tx.conn(), row, &next).await?;
        for change in &changes {
            if let Change::Status = change {
                emit_status(&mut tx, &next)?;
            }
        }
        let committed = tx.commit().await?;
        Ok(view(&row, &next, last_position(&committed)))
    }

    /// Stores one chunk of lines from the worker: one transaction, one `deployment.logs`
    /// event; truncation rewrites the stored chunks whose lines it drops.
    pub async fn append(
        &self,
        who: &Principal,
        id: DeploymentId,
        lines: Vec<LineInput>,
    ) -> Result<AppendOutcome> {
        let now = now_ms();
        let lines = lines
            .into_iter()
            .map(|line| InputLine {
                text: line.text,
                stream: herald_proto::v1::LogStream::try_from(line.stream)
                    .unwrap_or(herald_proto::v1::LogStream::Stdout),
                time_ms: line.time_ms.unwrap_or(now),
            })
            .collect();
        let command = Command::Append {
            lines,
            limits: self.config.limits(),
        };
        let mut tx = self.store.begin_as(&who.user_id).await?;
        let row = queries::find_for_update(tx.conn(), id)
            .await?
            .ok_or(DeploymentError::NotFound(id))?;
        let state = queries::state_of(&row)?;
        let (next, changes) = rules::decide(&state, command, &actor(who))?;
        let topic = events::topic(id);
        for change in changes {
            let Change::Logs(appended) = change else {
                continue;
            };
            if let Some(before) = appended.widened_from {
                drop_stored_lines(&tx, &topic, id, before, next.log).await?;
            }
            emit_logs(&mut tx, &topic, id, &appended, next.log).await?;
            if appended.widened_from == Some(None) {
                // The first truncation: the status now says `log_truncated`.
                emit_status(&mut tx, &next)?;
            }
        }
        queries::save(tx.conn(), row, &next).await?;
        let committed = tx.commit().await?;
        let position = committed
            .events
            .first()
            .map(|event| event.position.clone())
            .unwrap_or_default();
        Ok(AppendOutcome {
            last_line: next.log.lines,
            log_truncated: next.log.dropped.is_some(),
            position,
        })
    }

    /// Opens a watch: the subscription to `deployment:<id>` and the filter that turns its
    /// events into `DeploymentEvent`s (see [`watch`]).
    pub async fn watch(
        &self,
        who: &Principal,
        id: DeploymentId,
        since: Option<StreamPosition>,
        tail_lines: Option<u32>,
    ) -> Result<(EventStream, WatchFilter)> {
        let topic = events::topic(id);
        let snapshot = self.store.snapshot().await?;
        let row = queries::find(snapshot.conn(), id)
            .await?
            .ok_or(DeploymentError::NotFound(id))?;
        let state = queries::state_of(&row)?;
        let top = snapshot.position(&topic).await?;
        let covered = since
            .as_ref()
            .filter(|since| since.epoch == top.epoch && since.offset <= top.offset);
        let plan = match covered {
            Some(since) => watch::Plan::Resume {
                since: since.clone(),
            },
            None => {
                let first_line = match tail_lines {
                    None => None,
                    Some(tail) => Some(state.log.lines.saturating_sub(u64::from(tail)) + 1),
                };
                let start = match first_line {
                    None => 0,
                    Some(first) if first > state.log.lines => top.offset,
                    Some(first) => queries::chunk_offset_of_line(snapshot.conn(), id, first)
                        .await?
                        .map_or(top.offset, |offset| offset.saturating_sub(1)),
                };
                watch::Plan::Fresh {
                    start,
                    first_line: first_line.unwrap_or(1),
                    recovered: since.is_none(),
                }
            }
        };
        snapshot.end().await?;
        // After the snapshot: the owner check takes a pooled connection of its own.
        self.node.authorize(who, Action::Read, &topic).await?;
        let (start, filter) = WatchFilter::new(plan, &state, top);
        let stream = self.node.subscribe(who, topic, Some(start)).await?;
        Ok((stream, filter))
    }
}

fn emit_status(tx: &mut DomainTx, state: &Deployment) -> Result<()> {
    let topic = events::topic(state.id);
    tx.emit_typed(
        &topic,
        events::STATUS,
        &events::status_event(events::status_of(state)),
    )?;
    Ok(())
}

/// Emits one appended chunk and records where it landed.
async fn emit_logs(
    tx: &mut DomainTx,
    topic: &Topic,
    id: DeploymentId,
    appended: &Appended,
    log: LogState,
) -> Result<()> {
    let truncated = log
        .dropped
        .filter(|(first, _)| (appended.first..=appended.last).contains(first))
        .map(|dropped| events::truncation(dropped, log.limit));
    let body = DeploymentLogs {
        deployment_id: id.get(),
        lines: appended.lines.iter().map(events::log_line).collect(),
        truncated,
    };
    tx.emit_typed(topic, events::LOGS, &events::logs_event(body))?;
    let ids = tx.flush().await?;
    let outbox_id = ids
        .last()
        .copied()
        .ok_or_else(|| StoreError::Invalid("the logs event was not written".into()))?;
    let seq = queries::offset_of_event(tx.conn(), outbox_id).await?;
    queries::insert_chunk(tx.conn(), id, appended.first, appended.last, seq).await?;
    Ok(())
}

/// Rewrites the stored chunks holding lines that a widened dropped range now covers: their
/// dropped lines go, and the chunk holding the range's first line carries the one marker.
/// Events keep their offsets (history has no holes); only their bodies shrink.
async fn drop_stored_lines(
    tx: &DomainTx,
    topic: &Topic,
    id: DeploymentId,
    before: Option<(u64, u64)>,
    log: LogState,
) -> Result<()> {
    let Some((first, last)) = log.dropped else {
        return Ok(());
    };
    let newly_from = before.map_or(first, |(_, old_last)| old_last + 1);
    let mut chunks = queries::chunks_overlapping(tx.conn(), id, newly_from, last).await?;
    if before.is_some() {
        // The marker's chunk, whose range grows.
        for chunk in queries::chunks_overlapping(tx.conn(), id, first, first).await? {
            if !chunks.iter().any(|c| c.first_line == chunk.first_line) {
                chunks.insert(0, chunk);
            }
        }
    }
    for chunk in chunks {
        let Some(mut logs) = queries::logs_body(tx.conn(), topic, chunk.topic_seq).await? else {
            continue;
        };
        logs.lines.retain(|line| log.keeps(line.number));
        let range = (u64::try_from(chunk.first_line).unwrap_or_default())
            ..=(u64::try_from(chunk.last_line).unwrap_or_default());
        logs.truncated = range
            .contains(&first)
            .then(|| events::truncation((first, last), log.limit));
        queries::replace_body(tx.conn(), topic, chunk.topic_seq, &events::logs_event(logs)).await?;
    }
    Ok(())
}

/// A row as the API shows it, with the position read in the same snapshot.
async fn read_view(snapshot: &ReadSnapshot, row: &deployment::Model) -> Result<DeploymentView> {
    let state = queries::state_of(row)?;
    let position = snapshot.position(&events::topic(state.id)).await?;
    Ok(view(row, &state, Some(position)))
}

fn view(
    row: &deployment::Model,
    state: &Deployment,
    position: Option<StreamPosition>,
) -> DeploymentView {
    DeploymentView {
        id: state.id.get(),
        application: row.application.clone(),
        git_ref: row.git_ref.clone(),
        description: row.description.clone(),
        owner: row.owner.clone(),
        created_at: Some(events::timestamp_ms(row.created_at_ms)),
        status: Some(events::status_of(state)),
        position,
        worker: state.worker.clone().unwrap_or_default(),
    }
}

/// The members of `deployment:<id>`: its owner. Admins and services are let in by the policy
/// itself.
#[derive(Debug)]
struct Owners {
    store: Store,
}

#[async_trait]
impl Membership for Owners {
    async fn is_member(
        &self,
        topic: &Topic,
        user_id: &str,
    ) -> std::result::Result<bool, MembershipError> {
        let Ok(id) = DeploymentId::parse(topic.id()) else {
            return Ok(false);
        };
        queries::is_owner(self.store.db(), id, user_id)
            .await
            .map_err(|error| MembershipError(error.to_string()))
    }
}
