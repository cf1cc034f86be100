//! The review queue's rules as pure functions: [`submission`] checks a request as a service
//! submits it; [`decide`] is the state machine of one request under a reviewer's approval or
//! rejection (the first deciding commit wins; N-of-M approvals; no self-review).

use std::{fmt, time::SystemTime};

use crate::domain::inbox::rules::{plain_text, unix_ms};

/// Applicant name: 1–200 characters.
pub const NAME_MAX_CHARS: usize = 200;
/// Email: at most 254 characters (RFC 5321's path limit).
pub const EMAIL_MAX_CHARS: usize = 254;
/// Phone: at most 32 characters.
pub const PHONE_MAX_CHARS: usize = 32;
/// Role names (requested and reviewer): 1–64 characters of `a–z 0–9 _ -`.
pub const ROLE_MAX_CHARS: usize = 64;
/// User ids: at most 128 characters (they name an inbox, `user:<id>`).
pub const USER_ID_MAX_CHARS: usize = 128;
/// Details: at most 10 KiB of JSON.
pub const DETAILS_MAX_BYTES: usize = 10 * 1024;
/// A rejection's reason: 1–1,000 characters.
pub const REASON_MAX_CHARS: usize = 1000;
/// `required_approvals`: at most 10.
pub const MAX_APPROVALS: u32 = 10;
/// ListPending / ListDecisions page size: default and most.
pub const LIST_DEFAULT: usize = 20;
pub const LIST_MAX: usize = 50;

/// Why a review request or decision breaks a rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    /// A field is missing or out of bounds; the message names it and the limit.
    #[error("{0}")]
    Invalid(String),
    #[error("reviewers may not decide their own request")]
    SelfReview,
    /// The request was decided by an earlier commit.
    #[error("already {status} by {by} at {at}", by = by.join(", "), at = rfc3339(*at_ms))]
    AlreadyDecided {
        status: Status,
        by: Vec<String>,
        at_ms: i64,
    },
    #[error(
        "you already approved this request at {at}; it needs {required} approvals by different reviewers ({have} so far)",
        at = rfc3339(*at_ms)
    )]
    AlreadyApprovedByYou {
        at_ms: i64,
        required: u32,
        have: usize,
    },
}

impl RuleError {
    fn invalid(message: impl Into<String>) -> RuleError {
        RuleError::Invalid(message.into())
    }

    /// Whether this is a conflict with the request's state (FAILED_PRECONDITION) rather than
    /// bad input.
    pub fn is_state(&self) -> bool {
        matches!(
            self,
            RuleError::AlreadyDecided { .. } | RuleError::AlreadyApprovedByYou { .. }
        )
    }
}

/// A time as RFC 3339 in UTC, millisecond precision.
pub fn rfc3339(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms).map_or_else(|_| format!("{ms} ms"), |t| t.to_string())
}

/// Where a request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Pending,
    Approved,
    Rejected,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Approved => "approved",
            Status::Rejected => "rejected",
        }
    }

    pub fn parse(text: &str) -> Option<Status> {
        [Status::Pending, Status::Approved, Status::Rejected]
            .into_iter()
            .find(|s| s.as_str() == text)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What one reviewer decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Approve,
    Reject,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Approve => "approve",
            Verdict::Reject => "reject",
        }
    }

    pub fn parse(text: &str) -> Option<Verdict> {
        [Verdict::Approve, Verdict::Reject]
            .into_iter()
            .find(|v| v.as_str() == text)
    }
}

/// Who asks, as submitted. `Debug` never shows the email or the phone, so no log line can.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Applicant {
    pub name: String,
    pub email: String,
    pub phone: Option<String>,
    pub user_id: Option<String>,
}

impl fmt::Debug for Applicant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Applicant")
            .field("name", &self.name)
            .field("email", &"<redacted>")
            .field("phone", &self.phone.as_ref().map(|_| "<redacted>"))
            .field("user_id", &self.user_id)
            .finish()
    }
}

/// A request as a service submits it (out of protobuf, not yet checked).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubmissionInput {
    pub applicant: Applicant,
    pub requested_role: String,
    pub details_json: Option<String>,
    /// Empty: the server's default.
    pub reviewer_role: String,
    /// 0: one.
    pub required_approvals: u32,
}

/// A checked request, ready to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submission {
    pub applicant: Applicant,
    pub requested_role: String,
    pub details_json: Option<String>,
    pub reviewer_role: String,
    pub required_approvals: u32,
}

/// A role name: 1–64 characters of `a–z 0–9 _ -`.
pub fn role(field: &str, raw: &str) -> Result<String, RuleError> {
    if raw.is_empty() {
        return Err(RuleError::invalid(format!("{field} is required")));
    }
    if raw.len() > ROLE_MAX_CHARS {
        return Err(RuleError::invalid(format!(
            "{field} is {} characters long; the limit is {ROLE_MAX_CHARS}",
            raw.len()
        )));
    }
    if !raw
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
    {
        return Err(RuleError::invalid(format!(
            "{field} `{raw}` may only contain a–z, 0–9, `_` and `-`"
        )));
    }
    Ok(raw.to_owned())
}

/// An id (a review's or a user's): 1–128 printable ASCII characters without spaces.
pub fn id(field: &str, raw: &str) -> Result<String, RuleError> {
    if raw.is_empty() {
        return Err(RuleError::invalid(format!("{field} is required")));
    }
    if raw.chars().count() > USER_ID_MAX_CHARS {
        return Err(RuleError::invalid(format!(
            "{field} is {} characters long; the limit is {USER_ID_MAX_CHARS}",
            raw.chars().count()
        )));
    }
    if !raw.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(RuleError::invalid(format!(
            "{field} may only contain printable ASCII characters without spaces"
        )));
    }
    Ok(raw.to_owned())
}

fn text(field: &'static str, raw: &str, limit: usize) -> Result<String, RuleError> {
    plain_text(field, raw, limit, false).map_err(|e| RuleError::Invalid(e.to_string()))
}

/// Checks a submitted request. Nothing in an error message repeats the email or the phone.
pub fn submission(
    input: SubmissionInput,
    default_reviewer_role: &str,
) -> Result<Submission, RuleError> {
    let name = text("applicant.name", &input.applicant.name, NAME_MAX_CHARS)?;
    if name.is_empty() {
        return Err(RuleError::invalid("applicant.name is required"));
    }
    let email = input.applicant.email.trim();
    let email_chars = email.chars().count();
    if email_chars > EMAIL_MAX_CHARS {
        return Err(RuleError::invalid(format!(
            "applicant.email is {email_chars} characters long; the limit is {EMAIL_MAX_CHARS}"
        )));
    }
    let valid_email = email.split_once('@').is_some_and(|(local, domain)| {
        !local.is_empty() && !domain.is_empty() && !domain.contains('@')
    }) && !email
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || "<>\"".contains(c));
    if !valid_email {
        return Err(RuleError::invalid(
            "applicant.email must be an address with one `@` and no spaces",
        ));
    }
    let phone = match input.applicant.phone.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(phone) => {
            if phone.chars().count() > PHONE_MAX_CHARS {
                return Err(RuleError::invalid(format!(
                    "applicant.phone is {} characters long; the limit is {PHONE_MAX_CHARS}",
                    phone.chars().count()
                )));
            }
            if !phone.chars().any(|c| c.is_ascii_digit())
                || !phone
                    .chars()
                    .all(|c| c.is_ascii_digit() || " +-().".contains(c))
            {
                return Err(RuleError::invalid(
                    "applicant.phone may only contain digits, spaces and `+ - ( ) .`",
                ));
            }
            Some(phone.to_owned())
        }
    };
    let user_id = match input.applicant.user_id.as_deref() {
        None | Some("") => None,
        Some(user) => Some(id("applicant.user_id", user)?),
    };
    if let Some(details) = &input.details_json
        && details.len() > DETAILS_MAX_BYTES
    {
        return Err(RuleError::invalid(format!(
            "details is {} bytes of JSON; the limit is {DETAILS_MAX_BYTES}",
            details.len()
        )));
    }
    let reviewer_role = if input.reviewer_role.is_empty() {
        default_reviewer_role.to_owned()
    } else {
        role("reviewer_role", &input.reviewer_role)?
    };
    let required_approvals = input.required_approvals.max(1);
    if required_approvals > MAX_APPROVALS {
        return Err(RuleError::invalid(format!(
            "required_approvals is {required_approvals}; the limit is {MAX_APPROVALS}"
        )));
    }
    Ok(Submission {
        applicant: Applicant {
            name,
            email: email.to_owned(),
            phone,
            user_id,
        },
        requested_role: role("requested_role", &input.requested_role)?,
        details_json: input.details_json,
        reviewer_role,
        required_approvals,
    })
}

/// A rejection's reason: plain text, 1–1,000 characters.
pub fn reason(raw: &str) -> Result<String, RuleError> {
    let reason = plain_text("reason", raw, REASON_MAX_CHARS, true)
        .map_err(|e| RuleError::Invalid(e.to_string()))?;
    if reason.is_empty() {
        return Err(RuleError::invalid(
            "reason is required: a rejection says why (1–1000 characters)",
        ));
    }
    Ok(reason)
}

/// One recorded decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub reviewer_id: String,
    pub verdict: Verdict,
    /// Rejections only.
    pub reason: Option<String>,
    pub at_ms: i64,
}

/// What a decision needs to know of its request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Review {
    pub status: Status,
    pub required_approvals: u32,
    pub applicant_user_id: Option<String>,
    /// Every decision so far, oldest first.
    pub decisions: Vec<Decision>,
    pub decided_at_ms: Option<i64>,
}

/// A reviewer's command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Approve,
    /// With a checked [`reason`].
    Reject {
        reason: String,
    },
}

/// What a decision did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// An approval short of `required_approvals`: still pending.
    ApprovalRecorded,
    Approved,
    Rejected,
}

/// The state machine of one request: `reviewer` approves or rejects it at `now`.
pub fn decide(
    review: &Review,
    command: &Command,
    reviewer: &str,
    now: SystemTime,
) -> Result<(Review, Decision, Outcome), RuleError> {
    if review.status != Status::Pending {
        let wanted = match review.status {
            Status::Approved => Verdict::Approve,
            _ => Verdict::Reject,
        };
        let by = review
            .decisions
            .iter()
            .filter(|d| d.verdict == wanted)
            .map(|d| d.reviewer_id.clone())
            .collect();
        return Err(RuleError::AlreadyDecided {
            status: review.status,
            by,
            at_ms: review.decided_at_ms.unwrap_or_default(),
        });
    }
    if review.applicant_user_id.as_deref() == Some(reviewer) {
        return Err(RuleError::SelfReview);
    }
    let now_ms = unix_ms(now);
    let approvals = review
        .decisions
        .iter()
        .filter(|d| d.verdict == Verdict::Approve)
        .count();
    let (decision, outcome) = match command {
        Command::Approve => {
            if let Some(mine) = review
                .decisions
                .iter()
                .find(|d| d.reviewer_id == reviewer && d.verdict == Verdict::Approve)
            {
                return Err(RuleError::AlreadyApprovedByYou {
                    at_ms: mine.at_ms,
                    required: review.required_approvals,
                    have: approvals,
                });
            }
            let outcome = if approvals + 1 >= review.required_approvals as usize {
                Outcome::Approved
            } else {
                Outcome::ApprovalRecorded
            };
            let decision = Decision {
                reviewer_id: reviewer.to_owned(),
                verdict: Verdict::Approve,
                reason: None,
                at_ms: now_ms,
            };
            (decision, outcome)
        }
        Command::Reject { reason } => (
            Decision {
                reviewer_id: reviewer.to_owned(),
                verdict: Verdict::Reject,
                reason: Some(reason.clone()),
                at_ms: now_ms,
            },
            Outcome::Rejected,
        ),
    };
    let mut next = review.clone();
    next.decisions.push(decision.clone());
    match outcome {
        Outcome::ApprovalRecorded => {}
        Outcome::Approved => {
            next.status = Status::Approved;
            next.decided_at_ms = Some(now_ms);
        }
        Outcome::Rejected => {
            next.status = Status::Rejected;
            next.decided_at_ms = Some(now_ms);
        }
    }
    Ok((next, decision, outcome))
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    fn at(ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(ms)
    }

    /// 2026-12-01T10:00:00Z.
    const TEN: u64 = 1_796_119_200_000;

    fn input() -> SubmissionInput {
        SubmissionInput {
            applicant: Applicant {
                name: "Marie Curie".into(),
                email: "marie@example.com".into(),
                phone: Some("+33 1 23 45 67 89".into()),
                user_id: Some("marie".into()),
            },
            requested_role: "artisan".into(),
            details_json: None,
            reviewer_role: String::new(),
            required_approvals: 0,
        }
    }

    fn pending(required: u32) -> Review {
        Review {
            status: Status::Pending,
            required_approvals: required,
            applicant_user_id: Some("marie".into()),
            decisions: vec![],
            decided_at_ms: None,
        }
    }

    #[test]
    fn a_submission_gets_the_default_reviewer_role_and_one_approval() {
        let checked = submission(input(), "admin").unwrap();
        assert_eq!(checked.reviewer_role, "admin");
        assert_eq!(checked.required_approvals, 1);
        let custom = submission(
            SubmissionInput {
                reviewer_role: "moderator".into(),
                required_approvals: 2,
                ..input()
            },
            "admin",
        )
        .unwrap();
        assert_eq!(
            (custom.reviewer_role.as_str(), custom.required_approvals),
            ("moderator", 2)
        );
    }

    #[test]
    fn each_submission_limit_names_its_field_and_never_echoes_personal_data() {
        let with = |f: fn(&mut SubmissionInput)| {
            let mut i = input();
            f(&mut i);
            submission(i, "admin").unwrap_err().to_string()
        };
        assert_eq!(
            with(|i| i.applicant.name = "n".repeat(201)),
            "applicant.name is 201 characters long; the limit is 200"
        );
        assert_eq!(
            with(|i| i.applicant.name = " ".into()),
            "applicant.name is required"
        );
        let bad_email = with(|i| i.applicant.email = "secret-at-example.com".into());
        assert_eq!(
            bad_email,
            "applicant.email must be an address with one `@` and no spaces"
        );
        assert!(!bad_email.contains("secret"));
        assert!(
            with(|i| i.applicant.email = format!("{}@x.io", "a".repeat(250)))
                .contains("the limit is 254")
        );
        let bad_phone = with(|i| i.applicant.phone = Some("call 555-0101".into()));
        assert!(!bad_phone.contains("555"), "{bad_phone}");
        assert!(with(|i| i.applicant.phone = Some("1".repeat(33))).contains("the limit is 32"));
        assert_eq!(
            with(|i| i.requested_role = "Artisan!".into()),
            "requested_role `Artisan!` may only contain a–z, 0–9, `_` and `-`"
        );
        assert_eq!(
            with(|i| i.requested_role = String::new()),
            "requested_role is required"
        );
        assert_eq!(
            with(|i| i.required_approvals = 11),
            "required_approvals is 11; the limit is 10"
        );
        assert!(
            with(|i| i.details_json = Some(format!("\"{}\"", "x".repeat(10 * 1024))))
                .contains("the limit is 10240")
        );
        assert!(
            with(|i| i.applicant.user_id = Some("has space".into()))
                .contains("applicant.user_id may only contain")
        );
    }

    #[test]
    fn the_applicants_email_and_phone_never_appear_in_debug_output() {
        let checked = submission(input(), "admin").unwrap();
        let debug = format!("{checked:?} {:?}", input());
        assert!(!debug.contains("marie@example.com"), "{debug}");
        assert!(!debug.contains("45 67"), "{debug}");
        assert!(debug.contains("Marie Curie"));
    }

    #[test]
    fn one_approval_approves_and_a_second_decision_gets_who_and_when() {
        let (approved, decision, outcome) =
            decide(&pending(1), &Command::Approve, "alice", at(TEN)).unwrap();
        assert_eq!(outcome, Outcome::Approved);
        assert_eq!(approved.status, Status::Approved);
        assert_eq!(decision.reviewer_id, "alice");
        let late = decide(&approved, &Command::Approve, "bob", at(TEN + 5)).unwrap_err();
        assert!(late.is_state());
        assert_eq!(
            late.to_string(),
            "already approved by alice at 2026-12-01T10:00:00Z"
        );
        let late = decide(
            &approved,
            &Command::Reject {
                reason: "no".into(),
            },
            "bob",
            at(TEN + 5),
        )
        .unwrap_err();
        assert_eq!(
            late.to_string(),
            "already approved by alice at 2026-12-01T10:00:00Z"
        );
    }

    #[test]
    fn a_rejection_decides_at_once_with_its_reason() {
        let (rejected, decision, outcome) = decide(
            &pending(3),
            &Command::Reject {
                reason: "incomplete portfolio".into(),
            },
            "alice",
            at(TEN),
        )
        .unwrap();
        assert_eq!(outcome, Outcome::Rejected);
        assert_eq!(decision.reason.as_deref(), Some("incomplete portfolio"));
        assert_eq!(
            decide(&rejected, &Command::Approve, "bob", at(TEN + 1))
                .unwrap_err()
                .to_string(),
            "already rejected by alice at 2026-12-01T10:00:00Z"
        );
    }

    #[test]
    fn two_required_approvals_need_two_different_reviewers() {
        let (once, _, outcome) = decide(&pending(2), &Command::Approve, "alice", at(TEN)).unwrap();
        assert_eq!(outcome, Outcome::ApprovalRecorded);
        assert_eq!(once.status, Status::Pending);
        assert_eq!(
            decide(&once, &Command::Approve, "alice", at(TEN + 1000)),
            Err(RuleError::AlreadyApprovedByYou {
                at_ms: TEN as i64,
                required: 2,
                have: 1
            })
        );
        assert_eq!(
            decide(&once, &Command::Approve, "alice", at(TEN + 1000))
                .unwrap_err()
                .to_string(),
            "you already approved this request at 2026-12-01T10:00:00Z; it needs 2 approvals by different reviewers (1 so far)"
        );
        let (twice, _, outcome) =
            decide(&once, &Command::Approve, "bob", at(TEN + 60_000)).unwrap();
        assert_eq!(outcome, Outcome::Approved);
        assert_eq!(twice.decided_at_ms, Some(TEN as i64 + 60_000));
        assert_eq!(
            decide(&twice, &Command::Approve, "carol", at(TEN + 61_000))
                .unwrap_err()
                .to_string(),
            "already approved by alice, bob at 2026-12-01T10:01:00Z"
        );
    }

    #[test]
    fn an_applicant_may_not_decide_their_own_request() {
        assert_eq!(
            decide(&pending(1), &Command::Approve, "marie", at(TEN)),
            Err(RuleError::SelfReview)
        );
        let anonymous = Review {
            applicant_user_id: None,
            ..pending(1)
        };
        assert!(decide(&anonymous, &Command::Approve, "marie", at(TEN)).is_ok());
    }

    #[test]
    fn a_rejection_needs_a_plain_text_reason() {
        assert!(
            reason("")
                .unwrap_err()
                .to_string()
                .contains("reason is required")
        );
        assert!(reason("<b></b>").is_err());
        assert_eq!(reason("<i>missing</i> photos").unwrap(), "missing photos");
        assert!(
            reason(&"r".repeat(1001))
                .unwrap_err()
                .to_string()
                .contains("the limit is 1000")
        );
    }
}
