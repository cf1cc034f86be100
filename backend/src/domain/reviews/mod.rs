//! Review requests: an approval queue shared by a reviewer role, `role:<role>`.
//!
//! Every command runs the same way: begin → load (taking the queue's write lock, see
//! [`queries::lock_queue`]) → authorize → decide ([`rules`], with `now` from the clock) →
//! save → emit → commit. The queue's writers take turns, so of two reviewers deciding at once
//! the second loads the first's committed decision and gets FAILED_PRECONDITION "already
//! approved by <reviewer> at <time>", and each event's pending count is the database's.
//! A final decision on a request whose applicant has a user id also lands in the applicant's
//! inbox ([`crate::domain::inbox`]), in the same transaction.
//!
//! Applicant email and phone are personal data: they reach reviewers (reads and the role
//! topic) and are never written to a log line; [`rules::Applicant`]'s `Debug` redacts them.

pub mod events;
pub mod queries;
pub mod rules;

use std::time::SystemTime;

use herald_proto::v1::{Review, ReviewDecision, StreamPosition};
use serde::Deserialize;

use crate::{
    auth::{ADMIN_ROLE, Principal},
    clock::SharedClock,
    domain::inbox::{self, InboxError},
    store::{Store, StoreError},
    topic::TopicError,
};
use inbox::rules::unix_ms;
use queries::review_request;
use rules::{Command, Outcome, RuleError, Status, Submission, SubmissionInput};

/// `[reviews]` in the configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReviewsConfig {
    /// The reviewer role of requests submitted without one.
    pub reviewer_role: String,
}

impl Default for ReviewsConfig {
    fn default() -> Self {
        ReviewsConfig {
            reviewer_role: ADMIN_ROLE.to_owned(),
        }
    }
}

/// Why a review command failed.
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error(transparent)]
    Rule(#[from] RuleError),
    /// Not allowed; the message says who may.
    #[error("{0}")]
    Denied(String),
    #[error("no review request `{0}`")]
    NotFound(String),
    #[error("`{0}` cannot name a reviewer topic: {1}")]
    Topic(String, TopicError),
    #[error(transparent)]
    Inbox(#[from] InboxError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sea_orm::DbErr> for ReviewError {
    fn from(error: sea_orm::DbErr) -> ReviewError {
        ReviewError::Store(StoreError::from(error))
    }
}

impl From<ReviewError> for crate::error::Error {
    fn from(error: ReviewError) -> crate::error::Error {
        use crate::error::Error;
        match error {
            ReviewError::Rule(rule @ RuleError::SelfReview) => {
                Error::PermissionDenied(rule.to_string())
            }
            ReviewError::Rule(rule) if rule.is_state() => {
                Error::FailedPrecondition(rule.to_string())
            }
            ReviewError::Rule(rule) => Error::InvalidArgument(rule.to_string()),
            ReviewError::Denied(message) => Error::PermissionDenied(message),
            error @ ReviewError::NotFound(_) => Error::NotFound(error.to_string()),
            error @ ReviewError::Topic(..) => Error::InvalidArgument(error.to_string()),
            ReviewError::Inbox(inbox) => inbox.into(),
            ReviewError::Store(store) => Error::Store(store),
        }
    }
}

/// One page of ListPending.
#[derive(Debug, Clone)]
pub struct PendingPage {
    pub reviews: Vec<Review>,
    pub next: Option<inbox::rules::Cursor>,
    pub pending: u64,
    pub position: StreamPosition,
}

/// One page of ListDecisions.
#[derive(Debug, Clone)]
pub struct DecisionPage {
    pub decisions: Vec<ReviewDecision>,
    /// The id of the last decision returned, when there are more.
    pub next: Option<i64>,
}

/// The review service.
#[derive(Debug, Clone)]
pub struct Reviews {
    store: Store,
    clock: SharedClock,
    config: ReviewsConfig,
}

fn topic(role: &str) -> Result<crate::topic::Topic, ReviewError> {
    events::queue(role).map_err(|e| ReviewError::Topic(format!("role:{role}"), e))
}

fn count(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl Reviews {
    pub fn new(store: Store, clock: SharedClock, config: ReviewsConfig) -> Reviews {
        Reviews {
            store,
            clock,
            config,
        }
    }

    /// The role whose queue a read names: the given one or the configured default.
    fn role_of(&self, given: &str) -> Result<String, ReviewError> {
        if given.is_empty() {
            Ok(self.config.reviewer_role.clone())
        } else {
            Ok(rules::role("reviewer_role", given)?)
        }
    }

    /// Reads of a queue: holders of its role, and services.
    fn may_read(who: &Principal, role: &str) -> Result<(), ReviewError> {
        if who.has_role(role) || who.is_service() {
            Ok(())
        } else {
            Err(ReviewError::Denied(format!(
                "only holders of the role `{role}` (and services) see its review requests"
            )))
        }
    }

    /// Submit (services only).
    pub async fn submit(
        &self,
        who: &Principal,
        input: SubmissionInput,
    ) -> Result<Review, ReviewError> {
        if !who.is_service() {
            return Err(ReviewError::Denied(
                "only services (token role `service`) submit review requests".to_owned(),
            ));
        }
        let Submission {
            applicant,
            requested_role,
            details_json,
            reviewer_role,
            required_approvals,
        } = rules::submission(input, &self.config.reviewer_role)?;
        let topic = topic(&reviewer_role)?;
        let row = review_request::Model {
            id: uuid::Uuid::now_v7().to_string(),
            applicant_name: applicant.name,
            applicant_email: applicant.email,
            applicant_phone: applicant.phone,
            applicant_user_id: applicant.user_id,
            requested_role,
            details: details_json,
            reviewer_role,
            required_approvals: i32::try_from(required_approvals).unwrap_or(1),
            status: Status::Pending.as_str().to_owned(),
            submitted_by: who.user_id.clone(),
            created_at_ms: unix_ms(self.clock.now()),
            decided_at_ms: None,
        };
        let mut tx = self.store.begin_as(&who.user_id).await?;
        queries::lock_queue(tx.conn(), &row.reviewer_role).await?;
        queries::insert_request(tx.conn(), row.clone()).await?;
        let pending = queries::pending_count(tx.conn(), &row.reviewer_role).await?;
        let review = events::review_message(&row, &[]);
        tx.emit_typed(
            &topic,
            events::SUBMITTED,
            &events::submitted(review.clone(), count(pending)),
        )?;
        tx.commit().await?;
        tracing::info!(review = %review.id, reviewer_role = %review.reviewer_role, "review request submitted");
        Ok(review)
    }

    /// ListPending: one page of the role's queue, oldest first, with the pending count and
    /// the role topic's position, all in one snapshot.
    pub async fn list_pending(
        &self,
        who: &Principal,
        role: &str,
        limit: u32,
        cursor: &str,
    ) -> Result<PendingPage, ReviewError> {
        let role = self.role_of(role)?;
        Self::may_read(who, &role)?;
        let limit = page_size(limit)?;
        let after = Some(cursor)
            .filter(|c| !c.is_empty())
            .map(inbox::rules::Cursor::parse)
            .transpose()
            .map_err(|_| {
                RuleError::Invalid(
                    "cursor is not a `next_cursor` returned by ListPending".to_owned(),
                )
            })?;
        let topic = topic(&role)?;
        let snapshot = self.store.snapshot().await?;
        let mut rows = queries::pending_page(snapshot.conn(), &role, after.as_ref(), limit).await?;
        let more = rows.len() > limit;
        rows.truncate(limit);
        let ids: Vec<String> = rows.iter().map(|r| r.id.clone()).collect();
        let decisions = queries::decisions_of(snapshot.conn(), &ids).await?;
        let pending = queries::pending_count(snapshot.conn(), &role).await?;
        let position = snapshot.position(&topic).await?;
        snapshot.end().await?;
        let next = more
            .then(|| rows.last())
            .flatten()
            .map(|last| inbox::rules::Cursor {
                created_at: last.created_at_ms,
                id: last.id.clone(),
            });
        let reviews = rows
            .iter()
            .map(|row| {
                events::review_message(row, decisions.get(&row.id).map_or(&[][..], Vec::as_slice))
            })
            .collect();
        Ok(PendingPage {
            reviews,
            next,
            pending,
            position,
        })
    }

    /// CountPending: the role's badge with its position.
    pub async fn count_pending(
        &self,
        who: &Principal,
        role: &str,
    ) -> Result<(u64, StreamPosition), ReviewError> {
        let role = self.role_of(role)?;
        Self::may_read(who, &role)?;
        let topic = topic(&role)?;
        let snapshot = self.store.snapshot().await?;
        let pending = queries::pending_count(snapshot.conn(), &role).await?;
        let position = snapshot.position(&topic).await?;
        snapshot.end().await?;
        Ok((pending, position))
    }

    /// Approve.
    pub async fn approve(&self, who: &Principal, id: &str) -> Result<Review, ReviewError> {
        self.decide(who, id, Command::Approve).await
    }

    /// Reject, with a reason.
    pub async fn reject(
        &self,
        who: &Principal,
        id: &str,
        reason: &str,
    ) -> Result<Review, ReviewError> {
        let reason = rules::reason(reason)?;
        self.decide(who, id, Command::Reject { reason }).await
    }

    async fn decide(
        &self,
        who: &Principal,
        id: &str,
        command: Command,
    ) -> Result<Review, ReviewError> {
        let id = rules::id("id", id)?;
        // The role of a request never changes: read it to know which queue to lock.
        let role = queries::find(self.store.db(), &id)
            .await?
            .ok_or_else(|| ReviewError::NotFound(id.clone()))?
            .reviewer_role;
        if !who.has_role(&role) {
            return Err(ReviewError::Denied(format!(
                "only holders of the role `{role}` decide this request"
            )));
        }
        let topic = topic(&role)?;
        let now = self.clock.now();

        let mut tx = self.store.begin_as(&who.user_id).await?;
        queries::lock_queue(tx.conn(), &role).await?;
        let row = queries::find(tx.conn(), &id)
            .await?
            .ok_or_else(|| ReviewError::NotFound(id.clone()))?;
        let mut decisions = queries::decisions_of(tx.conn(), std::slice::from_ref(&id))
            .await?
            .remove(&id)
            .unwrap_or_default();
        let review = queries::review_of(&row, &decisions);
        let (next, decision, outcome) = rules::decide(&review, &command, &who.user_id, now)?;

        let recorded = queries::insert_decision(tx.conn(), &id, &decision).await?;
        if next.status != review.status {
            queries::set_status(tx.conn(), &id, next.status, next.decided_at_ms).await?;
        }
        let row = review_request::Model {
            status: next.status.as_str().to_owned(),
            decided_at_ms: next.decided_at_ms,
            ..row
        };
        decisions.push(recorded.clone());
        let pending = queries::pending_count(tx.conn(), &role).await?;
        let message = events::review_message(&row, &decisions);
        tx.emit_typed(
            &topic,
            events::outcome_type(outcome),
            &events::decided(
                message.clone(),
                events::decision_message(&recorded),
                count(pending),
            ),
        )?;
        if outcome != Outcome::ApprovalRecorded
            && let Some(applicant) = &row.applicant_user_id
        {
            let draft = applicant_notice(&row, &decision, now)?;
            inbox::deliver_in(&mut tx, &draft, std::slice::from_ref(applicant), now).await?;
        }
        tx.commit().await?;
        tracing::info!(review = %id, reviewer = %who.user_id, outcome = ?outcome, "review decision");
        Ok(message)
    }

    /// ListDecisions (admins): the audit trail, newest first.
    pub async fn list_decisions(
        &self,
        who: &Principal,
        review_id: &str,
        reviewer_id: &str,
        limit: u32,
        cursor: &str,
    ) -> Result<DecisionPage, ReviewError> {
        if !who.has_role(ADMIN_ROLE) {
            return Err(ReviewError::Denied(format!(
                "only admins (token role `{ADMIN_ROLE}`) read the decision audit trail"
            )));
        }
        let limit = page_size(limit)?;
        let before = Some(cursor)
            .filter(|c| !c.is_empty())
            .map(|c| {
                c.parse::<i64>().map_err(|_| {
                    RuleError::Invalid(
                        "cursor is not a `next_cursor` returned by ListDecisions".to_owned(),
                    )
                })
            })
            .transpose()?;
        let review_id = Some(review_id)
            .filter(|r| !r.is_empty())
            .map(|r| rules::id("review_id", r))
            .transpose()?;
        let reviewer_id = Some(reviewer_id)
            .filter(|r| !r.is_empty())
            .map(|r| rules::id("reviewer_id", r))
            .transpose()?;
        let mut rows = queries::decisions_page(
            self.store.db(),
            review_id.as_deref(),
            reviewer_id.as_deref(),
            before,
            limit,
        )
        .await?;
        let more = rows.len() > limit;
        rows.truncate(limit);
        Ok(DecisionPage {
            next: more.then(|| rows.last().map(|r| r.id)).flatten(),
            decisions: rows.iter().map(events::decision_message).collect(),
        })
    }
}

fn page_size(limit: u32) -> Result<usize, ReviewError> {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    if limit > rules::LIST_MAX {
        return Err(RuleError::Invalid(format!(
            "limit is {limit}; a page holds at most {}",
            rules::LIST_MAX
        ))
        .into());
    }
    Ok(if limit == 0 {
        rules::LIST_DEFAULT
    } else {
        limit
    })
}

/// The notification that tells the applicant the decision.
fn applicant_notice(
    row: &review_request::Model,
    decision: &rules::Decision,
    now: SystemTime,
) -> Result<inbox::rules::Draft, ReviewError> {
    let (verb, status) = match decision.verdict {
        rules::Verdict::Approve => ("approved", Status::Approved),
        rules::Verdict::Reject => ("rejected", Status::Rejected),
    };
    let data = serde_json::json!({
        "review_id": row.id,
        "status": status.as_str(),
        "requested_role": row.requested_role,
    });
    let input = inbox::rules::DraftInput {
        kind: Some(inbox::rules::Kind::System),
        priority: Some(inbox::rules::Priority::High),
        title: format!(
            "Your request for the {} role was {verb}",
            row.requested_role
        ),
        content: decision.reason.clone().unwrap_or_default(),
        data_json: Some(data.to_string()),
        sender: None,
        conversation_id: String::new(),
        message_id: String::new(),
        call_id: String::new(),
        message_preview: String::new(),
        expires_at: None,
    };
    Ok(inbox::rules::draft(input, now).map_err(InboxError::from)?)
}
