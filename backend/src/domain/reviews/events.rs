//! The review queue's events: the topic (`role:<reviewer role>`), the event types (their
//! strings live here and nowhere else) and the typed bodies, plus the contract's form of a
//! stored request.

use herald_proto::{
    v1::{
        Event, Review, ReviewApplicant, ReviewDecided, ReviewDecision, ReviewStatus,
        ReviewSubmitted, ReviewVerdict, event::Body,
    },
    wkt::Struct,
};

use super::{
    queries::{review_decision, review_request},
    rules::{Outcome, Status, Verdict},
};
use crate::{
    domain::inbox::events::timestamp,
    topic::{Topic, TopicError, TopicKind},
};

/// A request joined the queue (body `review_submitted`).
pub const SUBMITTED: &str = "review.submitted";
/// An approval short of `required_approvals` (body `review_decided`); still pending.
pub const APPROVAL_RECORDED: &str = "review.approval_recorded";
/// The final approval (body `review_decided`): the request leaves the queue.
pub const APPROVED: &str = "review.approved";
/// A rejection with its reason (body `review_decided`): the request leaves the queue.
pub const REJECTED: &str = "review.rejected";

/// The queue of a reviewer role: `role:<role>`.
pub fn queue(reviewer_role: &str) -> Result<Topic, TopicError> {
    Topic::new(TopicKind::Role, reviewer_role)
}

pub fn outcome_type(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::ApprovalRecorded => APPROVAL_RECORDED,
        Outcome::Approved => APPROVED,
        Outcome::Rejected => REJECTED,
    }
}

pub fn submitted(review: Review, pending: u32) -> Event {
    typed(Body::ReviewSubmitted(Box::new(ReviewSubmitted {
        review: Some(review),
        pending,
    })))
}

pub fn decided(review: Review, decision: ReviewDecision, pending: u32) -> Event {
    typed(Body::ReviewDecided(Box::new(ReviewDecided {
        review: Some(review),
        decision: Some(decision),
        pending,
    })))
}

fn typed(body: Body) -> Event {
    Event {
        body: Some(body),
        ..Event::default()
    }
}

pub fn decision_message(row: &review_decision::Model) -> ReviewDecision {
    ReviewDecision {
        review_id: row.review_id.clone(),
        reviewer_id: row.reviewer_id.clone(),
        verdict: match Verdict::parse(&row.verdict) {
            Some(Verdict::Approve) => ReviewVerdict::Approve,
            Some(Verdict::Reject) => ReviewVerdict::Reject,
            None => ReviewVerdict::Unspecified,
        }
        .into(),
        reason: row.reason.clone().unwrap_or_default(),
        time: Some(timestamp(row.decided_at_ms)),
    }
}

/// The contract's form of a stored request with its decisions (oldest first).
pub fn review_message(row: &review_request::Model, decisions: &[review_decision::Model]) -> Review {
    let details = row.details.as_deref().and_then(|json| {
        serde_json::from_str::<Struct>(json)
            .inspect_err(|error| {
                tracing::error!(review = %row.id, %error, "a review request has unreadable details; sending none");
            })
            .ok()
    });
    Review {
        id: row.id.clone(),
        applicant: Some(ReviewApplicant {
            name: row.applicant_name.clone(),
            email: row.applicant_email.clone(),
            phone: row.applicant_phone.clone().unwrap_or_default(),
            user_id: row.applicant_user_id.clone().unwrap_or_default(),
        }),
        requested_role: row.requested_role.clone(),
        details,
        reviewer_role: row.reviewer_role.clone(),
        required_approvals: u32::try_from(row.required_approvals).unwrap_or(1),
        status: match Status::parse(&row.status) {
            Some(Status::Pending) => ReviewStatus::Pending,
            Some(Status::Approved) => ReviewStatus::Approved,
            Some(Status::Rejected) => ReviewStatus::Rejected,
            None => ReviewStatus::Unspecified,
        }
        .into(),
        decisions: decisions.iter().map(decision_message).collect(),
        submitted_by: row.submitted_by.clone(),
        create_time: Some(timestamp(row.created_at_ms)),
        decide_time: row.decided_at_ms.map(timestamp),
    }
}
