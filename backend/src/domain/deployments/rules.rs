//! The rules of a deployment, as a pure state machine: [`decide`] takes the current
//! [`Deployment`], a [`Command`] and the [`Actor`] issuing it and answers the next state and
//! what changed, or the [`RuleError`] that refuses it. No database, no clock (times come in
//! with the command), no I/O: everything here is unit-tested on its own.
//!
//! ```text
//!   PENDING ──Start──► RUNNING ──Finish──► SUCCESS | FAILED
//!      │                  │  Report (stage only forward, progress never back), AppendLogs
//!      └──Cancel──────────┴──Cancel──► CANCELLED
//! ```
//!
//! Logs: [`Command::Append`] numbers the lines (1, 2, 3…), splits a line over
//! [`LINE_PIECE_BYTES`] into pieces with the continuation marker, and keeps the deployment
//! within its line limit: beyond it the first 10 % and the newest lines are kept and the lines
//! between are dropped, named by one truncation marker ([`LogState::dropped`]).

use herald_proto::v1::{DeploymentStage, DeploymentState, LogStream};

/// The most bytes of one stored log line; longer lines are split into pieces of this size.
pub const LINE_PIECE_BYTES: usize = 16 * 1024;
/// The longest application name.
pub const MAX_APPLICATION_LEN: usize = 100;
/// The longest git ref.
pub const MAX_GIT_REF_LEN: usize = 255;
/// The longest description.
pub const MAX_DESCRIPTION_LEN: usize = 1000;
/// The longest status message.
pub const MAX_MESSAGE_LEN: usize = 1000;
/// The longest error message of a failed deployment.
pub const MAX_ERROR_MESSAGE_LEN: usize = 4000;

/// Why a command is refused. Each message names the rule, the field or the current state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    /// The input can never be accepted (INVALID_ARGUMENT).
    #[error("{0}")]
    Invalid(String),
    /// The actor may not do this (PERMISSION_DENIED); the message says who may.
    #[error("{0}")]
    Forbidden(String),
    /// Not in the deployment's current state (FAILED_PRECONDITION); the message names it.
    #[error("{0}")]
    Precondition(String),
}

/// A deployment id: 1, 2, 3…
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeploymentId(u64);

impl DeploymentId {
    /// Parses a request's `deployment_id` (0 is the proto default: absent).
    pub fn new(id: u64) -> Result<DeploymentId, RuleError> {
        if id == 0 || i64::try_from(id).is_err() {
            return Err(RuleError::Invalid(format!(
                "deployment_id must be a deployment's id (1 to {}), not {id}",
                i64::MAX
            )));
        }
        Ok(DeploymentId(id))
    }

    /// Parses the id of a `deployment:<id>` topic.
    pub fn parse(text: &str) -> Result<DeploymentId, RuleError> {
        let id = text.parse::<u64>().map_err(|_| {
            RuleError::Invalid(format!(
                "`{text}` is not a deployment id: ids are decimal numbers from 1 (topic `deployment:<id>`)"
            ))
        })?;
        DeploymentId::new(id)
    }

    pub fn get(self) -> u64 {
        self.0
    }

    /// The id as the database stores it (always fits: checked at parse).
    pub fn as_i64(self) -> i64 {
        i64::try_from(self.0).unwrap_or(i64::MAX)
    }
}

impl std::fmt::Display for DeploymentId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// What a new deployment is created from, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDeployment {
    pub application: String,
    pub git_ref: String,
    pub description: String,
}

impl NewDeployment {
    pub fn parse(
        application: &str,
        git_ref: &str,
        description: Option<&str>,
    ) -> Result<NewDeployment, RuleError> {
        let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
        if application.is_empty()
            || application.len() > MAX_APPLICATION_LEN
            || !application.chars().all(valid)
        {
            return Err(RuleError::Invalid(format!(
                "application must be 1–{MAX_APPLICATION_LEN} characters of a–z A–Z 0–9 . _ -, for example `web-shop`"
            )));
        }
        if git_ref.is_empty()
            || git_ref.len() > MAX_GIT_REF_LEN
            || git_ref.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(RuleError::Invalid(format!(
                "git_ref must be 1–{MAX_GIT_REF_LEN} bytes without whitespace or control characters, for example `main` or `v1.4.2`"
            )));
        }
        let description = description.unwrap_or_default();
        check_len("description", description, MAX_DESCRIPTION_LEN)?;
        Ok(NewDeployment {
            application: application.to_owned(),
            git_ref: git_ref.to_owned(),
            description: description.to_owned(),
        })
    }
}

fn check_len(field: &str, text: &str, max: usize) -> Result<(), RuleError> {
    if text.len() > max {
        return Err(RuleError::Invalid(format!(
            "{field} is {} bytes; the limit is {max}",
            text.len()
        )));
    }
    Ok(())
}

/// Who issues a command, as far as the rules care.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    pub user_id: String,
    pub admin: bool,
    /// Holds the `service` role: a build worker.
    pub service: bool,
}

/// Where a deployment's log stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LogState {
    /// The number of the last line written (0 before the first).
    pub lines: u64,
    /// The most lines kept (`deployments.max_log_lines` when it was created).
    pub limit: u64,
    /// The lines dropped to keep the limit, inclusive; `None` while none are.
    pub dropped: Option<(u64, u64)>,
}

impl LogState {
    pub fn new(limit: u64) -> LogState {
        LogState {
            lines: 0,
            limit,
            dropped: None,
        }
    }

    /// The last line of the kept head (10 % of the limit).
    pub fn head(&self) -> u64 {
        self.limit / 10
    }

    /// Whether line `number` is still kept.
    pub fn keeps(&self, number: u64) -> bool {
        self.dropped
            .is_none_or(|(first, last)| number < first || number > last)
    }
}

/// The state the rules decide on: a deployment's row, in domain types.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deployment {
    pub id: DeploymentId,
    pub owner: String,
    pub status: DeploymentState,
    pub stage: DeploymentStage,
    pub progress: u32,
    pub message: String,
    pub error_message: String,
    pub exit_code: Option<i32>,
    pub worker: Option<String>,
    pub cancelled_by: Option<String>,
    pub created_at_ms: i64,
    pub started_at_ms: Option<i64>,
    pub finished_at_ms: Option<i64>,
    pub log: LogState,
}

impl Deployment {
    /// A new deployment in PENDING.
    pub fn pending(id: DeploymentId, owner: &str, now_ms: i64, log_limit: u64) -> Deployment {
        Deployment {
            id,
            owner: owner.to_owned(),
            status: DeploymentState::Pending,
            stage: DeploymentStage::Unspecified,
            progress: 0,
            message: String::new(),
            error_message: String::new(),
            exit_code: None,
            worker: None,
            cancelled_by: None,
            created_at_ms: now_ms,
            started_at_ms: None,
            finished_at_ms: None,
            log: LogState::new(log_limit),
        }
    }

    pub fn is_finished(&self) -> bool {
        is_terminal(self.status)
    }

    /// finished − started, in milliseconds, once both are known.
    pub fn duration_ms(&self) -> Option<i64> {
        Some(
            self.finished_at_ms?
                .saturating_sub(self.started_at_ms?)
                .max(0),
        )
    }

    /// "running at stage building" — how refusals name the current state.
    fn describe(&self) -> String {
        format!(
            "deployment {} is {} at stage {}",
            self.id,
            state_name(self.status),
            stage_name(self.stage)
        )
    }
}

pub fn is_terminal(status: DeploymentState) -> bool {
    matches!(
        status,
        DeploymentState::Success | DeploymentState::Failed | DeploymentState::Cancelled
    )
}

/// The lowercase name of a status, as stored and as messages say it.
pub fn state_name(status: DeploymentState) -> &'static str {
    match status {
        DeploymentState::Unspecified => "unspecified",
        DeploymentState::Pending => "pending",
        DeploymentState::Running => "running",
        DeploymentState::Success => "success",
        DeploymentState::Failed => "failed",
        DeploymentState::Cancelled => "cancelled",
    }
}

/// The lowercase name of a stage, as stored and as messages say it.
pub fn stage_name(stage: DeploymentStage) -> &'static str {
    match stage {
        DeploymentStage::Unspecified => "none",
        DeploymentStage::Cloning => "cloning",
        DeploymentStage::Building => "building",
        DeploymentStage::Deploying => "deploying",
    }
}

pub fn state_from_name(name: &str) -> Option<DeploymentState> {
    [
        DeploymentState::Pending,
        DeploymentState::Running,
        DeploymentState::Success,
        DeploymentState::Failed,
        DeploymentState::Cancelled,
    ]
    .into_iter()
    .find(|s| state_name(*s) == name)
}

pub fn stage_from_name(name: &str) -> Option<DeploymentStage> {
    [
        DeploymentStage::Unspecified,
        DeploymentStage::Cloning,
        DeploymentStage::Building,
        DeploymentStage::Deploying,
    ]
    .into_iter()
    .find(|s| stage_name(*s) == name)
}

/// Parses a reported stage (the proto enum's number).
pub fn parse_stage(value: i32) -> Result<DeploymentStage, RuleError> {
    match DeploymentStage::try_from(value) {
        Ok(DeploymentStage::Unspecified) | Err(_) => Err(RuleError::Invalid(format!(
            "stage {value} is not a stage a worker reports: use DEPLOYMENT_STAGE_CLONING, \
             DEPLOYMENT_STAGE_BUILDING or DEPLOYMENT_STAGE_DEPLOYING"
        ))),
        Ok(stage) => Ok(stage),
    }
}

/// Parses a reported progress.
pub fn parse_progress(value: u32) -> Result<u32, RuleError> {
    if value > 100 {
        return Err(RuleError::Invalid(format!(
            "progress is {value}; progress is a percentage from 0 to 100"
        )));
    }
    Ok(value)
}

/// Parses a status message.
pub fn parse_message(field: &str, text: &str) -> Result<String, RuleError> {
    check_len(field, text, MAX_MESSAGE_LEN)?;
    Ok(text.to_owned())
}

/// How a worker ends a deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Success {
        exit_code: Option<i32>,
    },
    Failed {
        error_message: String,
        exit_code: i32,
    },
}

impl Outcome {
    /// Parses `Finish`'s result, error message and exit code.
    pub fn parse(
        result: i32,
        error_message: &str,
        exit_code: Option<i32>,
    ) -> Result<Outcome, RuleError> {
        match DeploymentState::try_from(result) {
            Ok(DeploymentState::Success) => {
                if !error_message.is_empty() {
                    return Err(RuleError::Invalid(
                        "error_message must be empty when result is DEPLOYMENT_STATE_SUCCESS"
                            .into(),
                    ));
                }
                Ok(Outcome::Success { exit_code })
            }
            Ok(DeploymentState::Failed) => {
                if error_message.trim().is_empty() {
                    return Err(RuleError::Invalid(
                        "error_message is required when result is DEPLOYMENT_STATE_FAILED: say why it failed"
                            .into(),
                    ));
                }
                check_len("error_message", error_message, MAX_ERROR_MESSAGE_LEN)?;
                let exit_code = exit_code.ok_or_else(|| {
                    RuleError::Invalid(
                        "exit_code is required when result is DEPLOYMENT_STATE_FAILED".into(),
                    )
                })?;
                Ok(Outcome::Failed {
                    error_message: error_message.to_owned(),
                    exit_code,
                })
            }
            _ => Err(RuleError::Invalid(format!(
                "result {result} is not how a deployment finishes: use DEPLOYMENT_STATE_SUCCESS or DEPLOYMENT_STATE_FAILED"
            ))),
        }
    }
}

/// One line as a worker sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputLine {
    pub text: String,
    pub stream: LogStream,
    /// When it was written, in Unix milliseconds.
    pub time_ms: i64,
}

/// A stored line: numbered, at most [`LINE_PIECE_BYTES`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NumberedLine {
    pub number: u64,
    pub text: String,
    pub stream: LogStream,
    pub time_ms: i64,
    /// The next line continues this one (the original was longer than a piece).
    pub continues: bool,
}

/// The bounds of one chunk of lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogLimits {
    /// The longest line accepted (it is split into pieces); longer is INVALID_ARGUMENT.
    pub max_line_bytes: usize,
    /// The most lines in one chunk.
    pub max_chunk_lines: usize,
}

/// What a worker or user asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Start {
        now_ms: i64,
    },
    Report {
        stage: DeploymentStage,
        progress: u32,
        message: String,
    },
    Append {
        lines: Vec<InputLine>,
        limits: LogLimits,
    },
    Finish {
        outcome: Outcome,
        message: Option<String>,
        now_ms: i64,
    },
    Cancel {
        now_ms: i64,
    },
}

/// What a command changed, in order: each becomes one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The status changed: emit the new state's status.
    Status,
    /// Lines were appended.
    Logs(Appended),
}

/// One appended chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// The chunk's lines that are kept (all of them unless the chunk alone overflows the
    /// tail), in number order.
    pub lines: Vec<NumberedLine>,
    /// The first and last number the chunk took (kept or not).
    pub first: u64,
    pub last: u64,
    /// The dropped range before this chunk, when this chunk widened it (so earlier stored
    /// chunks must drop lines).
    pub widened_from: Option<Option<(u64, u64)>>,
}

/// Decides `command` by `actor` on `state`: the next state and its changes, or why not.
pub fn decide(
    state: &Deployment,
    command: Command,
    actor: &Actor,
) -> Result<(Deployment, Vec<Change>), RuleError> {
    match command {
        Command::Cancel { now_ms } => cancel(state, actor, now_ms),
        Command::Start { now_ms } => {
            worker_may_act(state, actor, "start")?;
            if state.status != DeploymentState::Pending {
                return Err(RuleError::Precondition(format!(
                    "illegal transition: {}; only a pending deployment can be started",
                    state.describe()
                )));
            }
            let mut next = state.clone();
            next.status = DeploymentState::Running;
            next.worker = Some(actor.user_id.clone());
            next.started_at_ms = Some(now_ms);
            Ok((next, vec![Change::Status]))
        }
        Command::Report {
            stage,
            progress,
            message,
        } => {
            running_worker(state, actor, "report on")?;
            if stage < state.stage {
                return Err(RuleError::Precondition(format!(
                    "illegal transition: {}; stages only move forward (cloning → building → deploying), not back to {}",
                    state.describe(),
                    stage_name(stage)
                )));
            }
            if progress < state.progress {
                return Err(RuleError::Precondition(format!(
                    "progress never goes backwards: {} has progress {}, the report says {progress}",
                    state.describe(),
                    state.progress
                )));
            }
            let mut next = state.clone();
            next.stage = stage;
            next.progress = progress;
            next.message = message;
            Ok((next, vec![Change::Status]))
        }
        Command::Append { lines, limits } => {
            running_worker(state, actor, "append logs to")?;
            append(state, lines, limits)
        }
        Command::Finish {
            outcome,
            message,
            now_ms,
        } => {
            running_worker(state, actor, "finish")?;
            let mut next = state.clone();
            match outcome {
                Outcome::Success { exit_code } => {
                    next.status = DeploymentState::Success;
                    next.exit_code = exit_code;
                    next.progress = 100;
                }
                Outcome::Failed {
                    error_message,
                    exit_code,
                } => {
                    next.status = DeploymentState::Failed;
                    next.error_message = error_message;
                    next.exit_code = Some(exit_code);
                }
            }
            if let Some(message) = message {
                next.message = message;
            }
            next.finished_at_ms = Some(now_ms.max(state.started_at_ms.unwrap_or(now_ms)));
            Ok((next, vec![Change::Status]))
        }
    }
}

fn cancel(
    state: &Deployment,
    actor: &Actor,
    now_ms: i64,
) -> Result<(Deployment, Vec<Change>), RuleError> {
    if actor.user_id != state.owner && !actor.admin {
        return Err(RuleError::Forbidden(format!(
            "not allowed to cancel deployment {}: only its owner and admins may",
            state.id
        )));
    }
    if state.is_finished() {
        return Err(RuleError::Precondition(format!(
            "{} and can no longer be cancelled: only a pending or running deployment can",
            state.describe()
        )));
    }
    let mut next = state.clone();
    next.status = DeploymentState::Cancelled;
    next.cancelled_by = Some(actor.user_id.clone());
    next.finished_at_ms = Some(now_ms.max(state.started_at_ms.unwrap_or(now_ms)));
    Ok((next, vec![Change::Status]))
}

/// A worker command needs the service role and, once started, the worker that started it.
fn worker_may_act(state: &Deployment, actor: &Actor, verb: &str) -> Result<(), RuleError> {
    if !actor.service {
        return Err(RuleError::Forbidden(format!(
            "not allowed to {verb} deployment {}: only build workers (tokens with the `service` role) may",
            state.id
        )));
    }
    if let Some(worker) = &state.worker
        && worker != &actor.user_id
    {
        return Err(RuleError::Forbidden(format!(
            "not allowed to {verb} deployment {}: it is run by the worker `{worker}`, and only that worker may",
            state.id
        )));
    }
    Ok(())
}

/// Report, AppendLogs and Finish: the worker, on a running deployment.
fn running_worker(state: &Deployment, actor: &Actor, verb: &str) -> Result<(), RuleError> {
    worker_may_act(state, actor, verb)?;
    match state.status {
        DeploymentState::Running => Ok(()),
        DeploymentState::Cancelled => Err(RuleError::Precondition(format!(
            "cancelled: deployment {} was cancelled by `{}`; stop the build",
            state.id,
            state.cancelled_by.as_deref().unwrap_or("?")
        ))),
        DeploymentState::Pending | DeploymentState::Unspecified => {
            Err(RuleError::Precondition(format!(
                "illegal transition: {}; Start it before you {verb} it",
                state.describe()
            )))
        }
        DeploymentState::Success | DeploymentState::Failed => {
            Err(RuleError::Precondition(format!(
                "{} and already finished; nothing is accepted after the finish",
                state.describe()
            )))
        }
    }
}

fn append(
    state: &Deployment,
    lines: Vec<InputLine>,
    limits: LogLimits,
) -> Result<(Deployment, Vec<Change>), RuleError> {
    if lines.is_empty() {
        return Err(RuleError::Invalid(
            "a log chunk needs at least one line".into(),
        ));
    }
    if lines.len() > limits.max_chunk_lines {
        return Err(RuleError::Invalid(format!(
            "a log chunk has {} lines; the limit is {} (deployments.max_chunk_lines): send more chunks",
            lines.len(),
            limits.max_chunk_lines
        )));
    }
    if let Some((index, line)) = lines
        .iter()
        .enumerate()
        .find(|(_, line)| line.text.len() > limits.max_line_bytes)
    {
        return Err(RuleError::Invalid(format!(
            "line {} of the chunk is {} bytes; a log line is at most {} bytes (deployments.max_line_bytes)",
            index + 1,
            line.text.len(),
            limits.max_line_bytes
        )));
    }
    let mut next = state.clone();
    let first = state.log.lines + 1;
    let mut pieces = Vec::with_capacity(lines.len());
    for line in lines {
        let text = strip_line_ending(&line.text);
        let parts = split_line(text, LINE_PIECE_BYTES);
        let count = parts.len();
        for (index, part) in parts.into_iter().enumerate() {
            next.log.lines += 1;
            pieces.push(NumberedLine {
                number: next.log.lines,
                text: part.to_owned(),
                stream: line.stream,
                time_ms: line.time_ms,
                continues: index + 1 < count,
            });
        }
    }
    let last = next.log.lines;
    let before = state.log.dropped;
    if next.log.lines > next.log.limit {
        let head = next.log.head();
        let tail = next.log.limit - head;
        next.log.dropped = Some((head + 1, next.log.lines - tail));
    }
    let widened_from = (next.log.dropped != before).then_some(before);
    pieces.retain(|line| next.log.keeps(line.number));
    Ok((
        next,
        vec![Change::Logs(Appended {
            lines: pieces,
            first,
            last,
            widened_from,
        })],
    ))
}

fn strip_line_ending(text: &str) -> &str {
    let text = text.strip_suffix('\n').unwrap_or(text);
    text.strip_suffix('\r').unwrap_or(text)
}

/// Splits `text` into pieces of at most `max` bytes at character boundaries (one piece for a
/// short or empty line).
pub fn split_line(text: &str, max: usize) -> Vec<&str> {
    let mut pieces = Vec::with_capacity(text.len() / max + 1);
    let mut rest = text;
    while rest.len() > max {
        let mut cut = max;
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        let (piece, tail) = rest.split_at(cut);
        pieces.push(piece);
        rest = tail;
    }
    pieces.push(rest);
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: LogLimits = LogLimits {
        max_line_bytes: 256 * 1024,
        max_chunk_lines: 100,
    };

    fn owner() -> Actor {
        Actor {
            user_id: "alice".into(),
            admin: false,
            service: false,
        }
    }

    fn worker(name: &str) -> Actor {
        Actor {
            user_id: name.into(),
            admin: false,
            service: true,
        }
    }

    fn pending(limit: u64) -> Deployment {
        Deployment::pending(DeploymentId::new(7).unwrap(), "alice", 1_000, limit)
    }

    fn running() -> Deployment {
        decide(
            &pending(1000),
            Command::Start { now_ms: 2_000 },
            &worker("w1"),
        )
        .unwrap()
        .0
    }

    fn report(stage: DeploymentStage, progress: u32) -> Command {
        Command::Report {
            stage,
            progress,
            message: String::new(),
        }
    }

    fn lines(texts: &[&str]) -> Command {
        Command::Append {
            lines: texts
                .iter()
                .map(|t| InputLine {
                    text: (*t).to_owned(),
                    stream: LogStream::Stdout,
                    time_ms: 5,
                })
                .collect(),
            limits: LIMITS,
        }
    }

    fn appended(changes: &[Change]) -> &Appended {
        match changes {
            [Change::Logs(appended)] => appended,
            other => panic!("expected one logs change, got {other:?}"),
        }
    }

    #[test]
    fn a_deployment_runs_through_its_stages_to_success_with_a_server_computed_duration() {
        let w = worker("w1");
        let state = running();
        assert_eq!(state.status, DeploymentState::Running);
        assert_eq!(state.worker.as_deref(), Some("w1"));
        let (state, _) = decide(&state, report(DeploymentStage::Cloning, 5), &w).unwrap();
        let (state, _) = decide(&state, report(DeploymentStage::Building, 40), &w).unwrap();
        let (state, _) = decide(&state, report(DeploymentStage::Building, 60), &w).unwrap();
        let (state, _) = decide(&state, report(DeploymentStage::Deploying, 90), &w).unwrap();
        let (state, changes) = decide(
            &state,
            Command::Finish {
                outcome: Outcome::Success { exit_code: None },
                message: Some("live".into()),
                now_ms: 9_500,
            },
            &w,
        )
        .unwrap();
        assert_eq!(changes, vec![Change::Status]);
        assert_eq!(state.status, DeploymentState::Success);
        assert_eq!(state.progress, 100);
        assert_eq!(state.message, "live");
        assert_eq!(state.duration_ms(), Some(7_500));
    }

    #[test]
    fn a_failure_keeps_its_error_message_and_exit_code() {
        let (state, _) = decide(
            &running(),
            Command::Finish {
                outcome: Outcome::parse(DeploymentState::Failed as i32, "tests failed", Some(2))
                    .unwrap(),
                message: None,
                now_ms: 3_000,
            },
            &worker("w1"),
        )
        .unwrap();
        assert_eq!(state.status, DeploymentState::Failed);
        assert_eq!(state.error_message, "tests failed");
        assert_eq!(state.exit_code, Some(2));
        assert!(state.is_finished());
    }

    #[test]
    fn finish_results_are_parsed_with_the_rule_they_break() {
        let failed = DeploymentState::Failed as i32;
        let success = DeploymentState::Success as i32;
        for (result, error, code, rule) in [
            (failed, "", Some(1), "error_message is required"),
            (failed, "boom", None, "exit_code is required"),
            (success, "boom", None, "must be empty"),
            (
                DeploymentState::Running as i32,
                "",
                None,
                "not how a deployment finishes",
            ),
            (99, "", None, "not how a deployment finishes"),
        ] {
            let error = Outcome::parse(result, error, code).unwrap_err();
            assert!(
                matches!(&error, RuleError::Invalid(m) if m.contains(rule)),
                "{error}"
            );
        }
        let long = "x".repeat(MAX_ERROR_MESSAGE_LEN + 1);
        assert!(Outcome::parse(failed, &long, Some(1)).is_err());
    }

    #[test]
    fn illegal_transitions_are_refused_naming_the_current_status_and_stage() {
        let w = worker("w1");
        let report_early = decide(&pending(10), report(DeploymentStage::Cloning, 1), &w);
        assert!(
            matches!(&report_early, Err(RuleError::Precondition(m)) if m.contains("is pending at stage none")),
            "{report_early:?}"
        );
        let twice = decide(&running(), Command::Start { now_ms: 1 }, &w).unwrap_err();
        assert!(matches!(&twice, RuleError::Precondition(m) if m.contains("is running")));
        let (state, _) = decide(&running(), report(DeploymentStage::Building, 10), &w).unwrap();
        let back = decide(&state, report(DeploymentStage::Cloning, 20), &w).unwrap_err();
        assert!(
            matches!(&back, RuleError::Precondition(m) if m.contains("at stage building") && m.contains("not back to cloning")),
            "{back}"
        );
    }

    #[test]
    fn progress_never_goes_backwards() {
        let w = worker("w1");
        let (state, _) = decide(&running(), report(DeploymentStage::Building, 50), &w).unwrap();
        let error = decide(&state, report(DeploymentStage::Deploying, 49), &w).unwrap_err();
        assert!(
            matches!(&error, RuleError::Precondition(m) if m.contains("progress never goes backwards") && m.contains("50")),
            "{error}"
        );
        assert!(decide(&state, report(DeploymentStage::Building, 50), &w).is_ok());
    }

    #[test]
    fn nothing_is_accepted_after_the_finish() {
        let w = worker("w1");
        let (done, _) = decide(
            &running(),
            Command::Finish {
                outcome: Outcome::Success { exit_code: Some(0) },
                message: None,
                now_ms: 3_000,
            },
            &w,
        )
        .unwrap();
        for command in [
            report(DeploymentStage::Deploying, 100),
            lines(&["late"]),
            Command::Finish {
                outcome: Outcome::Success { exit_code: None },
                message: None,
                now_ms: 4_000,
            },
            Command::Start { now_ms: 4_000 },
        ] {
            let error = decide(&done, command, &w).unwrap_err();
            assert!(
                matches!(&error, RuleError::Precondition(m) if m.contains("is success")),
                "{error}"
            );
        }
        let cancel = decide(&done, Command::Cancel { now_ms: 5 }, &owner()).unwrap_err();
        assert!(matches!(cancel, RuleError::Precondition(_)));
    }

    #[test]
    fn a_cancelled_deployment_tells_its_worker_on_the_next_call() {
        let (state, changes) =
            decide(&running(), Command::Cancel { now_ms: 3_000 }, &owner()).unwrap();
        assert_eq!(changes, vec![Change::Status]);
        assert_eq!(state.status, DeploymentState::Cancelled);
        assert_eq!(state.cancelled_by.as_deref(), Some("alice"));
        assert_eq!(state.duration_ms(), Some(1_000));
        for command in [report(DeploymentStage::Building, 50), lines(&["x"])] {
            let error = decide(&state, command, &worker("w1")).unwrap_err();
            assert!(
                matches!(&error, RuleError::Precondition(m) if m.starts_with("cancelled")),
                "{error}"
            );
        }
        let pending_cancelled = decide(&pending(10), Command::Cancel { now_ms: 3 }, &owner())
            .unwrap()
            .0;
        assert_eq!(pending_cancelled.duration_ms(), None, "it never started");
    }

    #[test]
    fn only_the_owner_and_admins_cancel_and_only_services_do_a_workers_job() {
        let bob = Actor {
            user_id: "bob".into(),
            admin: false,
            service: false,
        };
        let error = decide(&running(), Command::Cancel { now_ms: 1 }, &bob).unwrap_err();
        assert!(matches!(&error, RuleError::Forbidden(m) if m.contains("owner and admins")));
        let admin = Actor {
            admin: true,
            ..bob.clone()
        };
        assert!(decide(&running(), Command::Cancel { now_ms: 1 }, &admin).is_ok());

        let error = decide(&pending(10), Command::Start { now_ms: 1 }, &owner()).unwrap_err();
        assert!(matches!(&error, RuleError::Forbidden(m) if m.contains("`service` role")));
        let other = decide(
            &running(),
            report(DeploymentStage::Cloning, 1),
            &worker("w2"),
        )
        .unwrap_err();
        assert!(matches!(&other, RuleError::Forbidden(m) if m.contains("`w1`")));
    }

    #[test]
    fn lines_are_numbered_in_order_and_keep_colour_codes_verbatim() {
        let w = worker("w1");
        let (state, changes) = decide(
            &running(),
            lines(&["\u{1b}[32mok\u{1b}[0m\n", "two\r\n", ""]),
            &w,
        )
        .unwrap();
        let chunk = appended(&changes);
        assert_eq!((chunk.first, chunk.last), (1, 3));
        let texts: Vec<_> = chunk.lines.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(texts, ["\u{1b}[32mok\u{1b}[0m", "two", ""]);
        assert_eq!(state.log.lines, 3);
        let (_, changes) = decide(&state, lines(&["four"]), &w).unwrap();
        assert_eq!(appended(&changes).lines[0].number, 4);
    }

    #[test]
    fn a_line_over_16_kib_is_split_with_a_continuation_marker_at_character_boundaries() {
        let long = "é".repeat(LINE_PIECE_BYTES); // 2 bytes each: two full pieces
        let (state, changes) = decide(&running(), lines(&[&long, "next"]), &worker("w1")).unwrap();
        let chunk = appended(&changes);
        assert_eq!(chunk.lines.len(), 3);
        assert!(chunk.lines[0].continues && !chunk.lines[1].continues);
        assert!(chunk.lines.iter().all(|l| l.text.len() <= LINE_PIECE_BYTES));
        assert_eq!(chunk.lines[0].text.clone() + &chunk.lines[1].text, long);
        assert_eq!(chunk.lines[2].text, "next");
        assert_eq!(state.log.lines, 3);
        let odd = format!("a{}", "é".repeat(LINE_PIECE_BYTES / 2));
        let pieces = split_line(&odd, LINE_PIECE_BYTES);
        assert_eq!(pieces.concat(), odd);
        assert_eq!(
            pieces[0].len(),
            LINE_PIECE_BYTES - 1,
            "never inside a character"
        );
    }

    #[test]
    fn chunks_and_lines_have_bounds_named_in_the_refusal() {
        let w = worker("w1");
        let too_long = "x".repeat(LIMITS.max_line_bytes + 1);
        let error = decide(&running(), lines(&["ok", &too_long]), &w).unwrap_err();
        assert!(
            matches!(&error, RuleError::Invalid(m) if m.contains("line 2") && m.contains("deployments.max_line_bytes")),
            "{error}"
        );
        let many: Vec<&str> = vec!["x"; LIMITS.max_chunk_lines + 1];
        let error = decide(&running(), lines(&many), &w).unwrap_err();
        assert!(matches!(&error, RuleError::Invalid(m) if m.contains("max_chunk_lines")));
        assert!(matches!(
            decide(&running(), lines(&[]), &w),
            Err(RuleError::Invalid(_))
        ));
    }

    #[test]
    fn beyond_the_limit_the_head_and_the_newest_lines_are_kept_with_one_dropped_range() {
        let w = worker("w1");
        let mut state = decide(&pending(100), Command::Start { now_ms: 1 }, &w)
            .unwrap()
            .0;
        let ten: Vec<String> = (0..10).map(|n| format!("line {n}")).collect();
        let ten: Vec<&str> = ten.iter().map(String::as_str).collect();
        for _ in 0..10 {
            state = decide(&state, lines(&ten), &w).unwrap().0;
        }
        assert_eq!(state.log.dropped, None, "exactly at the limit");
        let (next, changes) = decide(&state, lines(&ten), &w).unwrap();
        let chunk = appended(&changes);
        assert_eq!(next.log.dropped, Some((11, 20)), "head 10 %, newest 90");
        assert_eq!(chunk.widened_from, Some(None));
        assert_eq!(chunk.lines.len(), 10, "the new lines are the newest: kept");
        let kept = (1..=next.log.lines).filter(|n| next.log.keeps(*n)).count();
        assert_eq!(kept, 100);
        let (next, changes) = decide(&next, lines(&ten), &w).unwrap();
        assert_eq!(next.log.dropped, Some((11, 30)), "one range that grows");
        assert_eq!(appended(&changes).widened_from, Some(Some((11, 20))));
    }

    #[test]
    fn a_chunk_larger_than_the_tail_keeps_only_its_newest_lines() {
        let w = worker("w1");
        let state = decide(&pending(20), Command::Start { now_ms: 1 }, &w)
            .unwrap()
            .0;
        let texts: Vec<String> = (1..=50).map(|n| n.to_string()).collect();
        let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
        let (next, changes) = decide(
            &state,
            Command::Append {
                lines: texts
                    .iter()
                    .map(|t| InputLine {
                        text: (*t).to_owned(),
                        stream: LogStream::Stderr,
                        time_ms: 1,
                    })
                    .collect(),
                limits: LIMITS,
            },
            &w,
        )
        .unwrap();
        let chunk = appended(&changes);
        assert_eq!(next.log.dropped, Some((3, 32)));
        let numbers: Vec<u64> = chunk.lines.iter().map(|l| l.number).collect();
        let expected: Vec<u64> = (1..=2).chain(33..=50).collect();
        assert_eq!(numbers, expected);
    }

    #[test]
    fn inputs_are_parsed_with_the_rule_they_break() {
        assert!(NewDeployment::parse("web-shop", "main", None).is_ok());
        for (app, git_ref) in [
            ("", "main"),
            ("has space", "main"),
            ("web", ""),
            ("web", "a b"),
        ] {
            assert!(matches!(
                NewDeployment::parse(app, git_ref, None),
                Err(RuleError::Invalid(_))
            ));
        }
        assert!(NewDeployment::parse("w", "m", Some(&"d".repeat(1001))).is_err());
        assert!(DeploymentId::new(0).is_err());
        assert!(DeploymentId::parse("abc").is_err());
        assert_eq!(DeploymentId::parse("12").unwrap().get(), 12);
        assert!(parse_stage(0).is_err());
        assert!(parse_stage(42).is_err());
        assert_eq!(parse_stage(2).unwrap(), DeploymentStage::Building);
        assert!(parse_progress(101).is_err());
        assert!(parse_message("message", &"m".repeat(1001)).is_err());
        for status in ["pending", "running", "success", "failed", "cancelled"] {
            assert_eq!(state_name(state_from_name(status).unwrap()), status);
        }
        for stage in ["none", "cloning", "building", "deploying"] {
            assert_eq!(stage_name(stage_from_name(stage).unwrap()), stage);
        }
    }

    proptest::proptest! {
        #[test]
        fn whatever_the_chunks_the_kept_lines_are_the_head_and_the_newest_within_the_limit(
            limit in 10u64..300,
            chunks in proptest::collection::vec(1usize..60, 1..40),
        ) {
            let w = worker("w1");
            let mut state = decide(&pending(limit), Command::Start { now_ms: 1 }, &w).unwrap().0;
            let mut kept_in_chunks = Vec::new();
            for size in chunks {
                let texts = vec!["x"; size];
                let (next, changes) = decide(&state, lines(&texts), &w).unwrap();
                let chunk = appended(&changes);
                proptest::prop_assert_eq!(chunk.last - chunk.first + 1, size as u64);
                kept_in_chunks.extend(chunk.lines.iter().map(|l| l.number));
                state = next;
            }
            let total = state.log.lines;
            let kept: Vec<u64> = (1..=total).filter(|n| state.log.keeps(*n)).collect();
            proptest::prop_assert_eq!(kept.len() as u64, total.min(limit));
            if let Some((first, last)) = state.log.dropped {
                proptest::prop_assert_eq!(first, limit / 10 + 1, "the head is 10 %");
                proptest::prop_assert_eq!(last, total - (limit - limit / 10), "the newest are kept");
            } else {
                proptest::prop_assert!(total <= limit);
            }
            // Every line kept now was kept when its chunk was stored.
            proptest::prop_assert!(kept.iter().all(|n| kept_in_chunks.contains(n)));
        }
    }
}
