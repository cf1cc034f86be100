//! Review requests (`herald.v1.Reviews`) over real gRPC: a queue shared by a reviewer role on
//! `role:<role>`, where the first deciding commit wins, N-of-M approvals, no self-review, the
//! applicant told in their inbox, and applicant personal data kept out of the logs.

use std::{
    io::Write,
    sync::{Arc, Mutex},
};

use herald_e2e::{Client, Subscription, TestApp, spawn_app};
use herald_proto::{
    v1::{
        Event, NotificationType, NotificationsCountsRequest, Review, ReviewApplicant,
        ReviewDecided, ReviewStatus, ReviewVerdict, ReviewsApproveRequest,
        ReviewsCountPendingRequest, ReviewsListDecisionsRequest, ReviewsListDecisionsResponse,
        ReviewsListPendingRequest, ReviewsListPendingResponse, ReviewsRejectRequest,
        ReviewsSubmitRequest, StreamPosition, event::Body,
        notifications_client::NotificationsClient, reviews_client::ReviewsClient,
    },
    wkt::Struct,
};
use serde_json::json;
use tonic::{Code, Status, transport::Channel};

/// A `herald.v1.Reviews` client acting as one principal.
#[derive(Clone)]
struct Desk {
    client: ReviewsClient<Channel>,
    who: Client,
}

impl Desk {
    async fn of(app: &TestApp, user: &str, roles: &[&str]) -> Desk {
        let who = app.client(user, roles).await;
        let channel = app.endpoint().connect().await.expect("connect");
        Desk {
            client: ReviewsClient::new(channel),
            who,
        }
    }

    async fn signup(app: &TestApp) -> Desk {
        Desk::of(app, "signup-service", &["service"]).await
    }

    async fn submit(&self, request: ReviewsSubmitRequest) -> Result<Review, Status> {
        let request = self.who.request(request);
        let response = self.client.clone().submit(request).await?.into_inner();
        Ok(response.review.expect("review"))
    }

    async fn approve(&self, id: &str) -> Result<Review, Status> {
        let request = self
            .who
            .request(ReviewsApproveRequest { id: id.to_owned() });
        let response = self.client.clone().approve(request).await?.into_inner();
        Ok(response.review.expect("review"))
    }

    async fn reject(&self, id: &str, reason: &str) -> Result<Review, Status> {
        let request = self.who.request(ReviewsRejectRequest {
            id: id.to_owned(),
            reason: reason.to_owned(),
        });
        let response = self.client.clone().reject(request).await?.into_inner();
        Ok(response.review.expect("review"))
    }

    async fn pending(&self, role: &str) -> Result<ReviewsListPendingResponse, Status> {
        self.pending_page(role, 0, "").await
    }

    async fn pending_page(
        &self,
        role: &str,
        limit: u32,
        cursor: &str,
    ) -> Result<ReviewsListPendingResponse, Status> {
        let request = self.who.request(ReviewsListPendingRequest {
            reviewer_role: role.to_owned(),
            limit,
            cursor: cursor.to_owned(),
        });
        Ok(self
            .client
            .clone()
            .list_pending(request)
            .await?
            .into_inner())
    }

    async fn count(&self, role: &str) -> Result<(u32, StreamPosition), Status> {
        let request = self.who.request(ReviewsCountPendingRequest {
            reviewer_role: role.to_owned(),
        });
        let response = self
            .client
            .clone()
            .count_pending(request)
            .await?
            .into_inner();
        Ok((response.pending, response.position.expect("position")))
    }

    async fn decisions(
        &self,
        request: ReviewsListDecisionsRequest,
    ) -> Result<ReviewsListDecisionsResponse, Status> {
        let request = self.who.request(request);
        Ok(self
            .client
            .clone()
            .list_decisions(request)
            .await?
            .into_inner())
    }
}

const EMAIL: &str = "marie.curie.applicant@example.org";
const PHONE: &str = "+33 6 12 34 56 78";

fn signup(user_id: &str) -> ReviewsSubmitRequest {
    let details: Struct =
        serde_json::from_value(json!({ "trade": "cabinet maker", "years": 12 })).unwrap();
    ReviewsSubmitRequest {
        applicant: Some(ReviewApplicant {
            name: "Marie Curie".into(),
            email: EMAIL.into(),
            phone: PHONE.into(),
            user_id: user_id.into(),
        }),
        requested_role: "artisan".into(),
        details: Some(details),
        reviewer_role: String::new(),
        required_approvals: 0,
    }
}

fn decided(event: &Event) -> ReviewDecided {
    match &event.body {
        Some(Body::ReviewDecided(body)) => (**body).clone(),
        other => panic!("a decision body, got {other:?}"),
    }
}

fn expect_code<T: std::fmt::Debug>(
    result: Result<T, Status>,
    code: Code,
    fragment: &str,
) -> Status {
    let status = result.expect_err("the call is refused");
    assert_eq!(status.code(), code, "{status:?}");
    assert!(
        status.message().contains(fragment),
        "`{}` should mention `{fragment}`",
        status.message()
    );
    status
}

/// Subscribes to a role's queue from the position CountPending answers (empty: the default).
async fn subscribe_from_count(desk: &Desk, role: &str) -> Subscription {
    let (_, position) = desk.count(role).await.unwrap();
    let topic = if role.is_empty() { "admin" } else { role };
    desk.who.resume(&format!("role:{topic}"), position).await
}

#[tokio::test]
async fn a_request_appears_for_every_reviewer_at_once_and_disappears_for_all_when_one_decides() {
    let app = spawn_app().await;
    let service = Desk::signup(&app).await;
    let alice = Desk::of(&app, "alice", &["admin"]).await;
    let bob = Desk::of(&app, "bob", &["admin"]).await;
    let mut alice_sub = subscribe_from_count(&alice, "").await;
    let mut bob_sub = subscribe_from_count(&bob, "admin").await;

    let review = service.submit(signup("marie")).await.unwrap();
    assert_eq!(review.status(), ReviewStatus::Pending);
    assert_eq!(review.reviewer_role, "admin", "the default reviewer role");
    assert_eq!(review.required_approvals, 1);
    assert_eq!(review.submitted_by, "signup-service");
    for sub in [&mut alice_sub, &mut bob_sub] {
        let event = sub.next_event().await;
        assert_eq!(event.r#type, "review.submitted");
        let Some(Body::ReviewSubmitted(body)) = &event.body else {
            panic!("a typed body: {event:?}");
        };
        assert_eq!(body.review.as_ref(), Some(&review));
        assert_eq!(body.pending, 1, "the badge comes with the event");
    }
    let page = bob.pending("").await.unwrap();
    assert_eq!(page.reviews, vec![review.clone()]);
    assert_eq!(page.pending, 1);
    assert_eq!(
        page.reviews[0].applicant.as_ref().unwrap().email,
        EMAIL,
        "reviewers see who applies"
    );

    let approved = alice.approve(&review.id).await.unwrap();
    assert_eq!(approved.status(), ReviewStatus::Approved);
    for sub in [&mut alice_sub, &mut bob_sub] {
        let event = sub.next_event().await;
        assert_eq!(event.r#type, "review.approved");
        let body = decided(&event);
        assert_eq!(body.pending, 0);
        let decision = body.decision.unwrap();
        assert_eq!(decision.reviewer_id, "alice");
        assert_eq!(decision.verdict(), ReviewVerdict::Approve);
        assert!(decision.time.is_some());
    }
    let page = bob.pending("admin").await.unwrap();
    assert!(page.reviews.is_empty());
    assert_eq!(page.pending, 0);
    assert_eq!(bob.count("").await.unwrap().0, 0);

    let late = expect_code(
        bob.approve(&review.id).await,
        Code::FailedPrecondition,
        "already approved by alice at 20",
    );
    assert!(late.message().ends_with('Z'), "{}", late.message());
    expect_code(
        bob.reject(&review.id, "too late").await,
        Code::FailedPrecondition,
        "already approved by alice at",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_reviewers_approving_at_once_one_wins_and_the_other_gets_the_conflict() {
    let app = spawn_app().await;
    let service = Desk::signup(&app).await;
    let alice = Desk::of(&app, "alice", &["admin"]).await;
    let bob = Desk::of(&app, "bob", &["admin"]).await;
    let mut watcher = subscribe_from_count(&alice, "admin").await;
    for round in 0..10 {
        let review = service.submit(signup("")).await.unwrap();
        assert_eq!(watcher.next_event().await.r#type, "review.submitted");
        let barrier = Arc::new(tokio::sync::Barrier::new(2));
        let race = |desk: Desk| {
            let barrier = barrier.clone();
            let id = review.id.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                desk.approve(&id).await
            })
        };
        let (a, b) = (race(alice.clone()), race(bob.clone()));
        let (a, b) = (a.await.unwrap(), b.await.unwrap());
        let (winner, loser) = match (&a, &b) {
            (Ok(_), Err(status)) => ("alice", status),
            (Err(status), Ok(_)) => ("bob", status),
            other => panic!("round {round}: exactly one approval wins, got {other:?}"),
        };
        assert_eq!(loser.code(), Code::FailedPrecondition);
        assert!(
            loser
                .message()
                .starts_with(&format!("already approved by {winner} at ")),
            "{}",
            loser.message()
        );
        let event = watcher.next_event().await;
        assert_eq!(event.r#type, "review.approved", "one decision per request");
        assert_eq!(decided(&event).decision.unwrap().reviewer_id, winner);
    }
    assert_eq!(alice.count("admin").await.unwrap().0, 0);
    let trail = alice
        .decisions(ReviewsListDecisionsRequest {
            limit: 50,
            ..ReviewsListDecisionsRequest::default()
        })
        .await
        .unwrap();
    assert_eq!(
        trail.decisions.len(),
        10,
        "only the winning decisions are recorded"
    );
}

#[tokio::test]
async fn two_required_approvals_need_two_different_reviewers() {
    let app = spawn_app().await;
    let service = Desk::signup(&app).await;
    let alice = Desk::of(&app, "alice", &["admin"]).await;
    let bob = Desk::of(&app, "bob", &["admin"]).await;
    let review = service
        .submit(ReviewsSubmitRequest {
            required_approvals: 2,
            ..signup("")
        })
        .await
        .unwrap();
    let mut sub = subscribe_from_count(&alice, "admin").await;

    let once = alice.approve(&review.id).await.unwrap();
    assert_eq!(once.status(), ReviewStatus::Pending);
    let event = sub.next_event().await;
    assert_eq!(event.r#type, "review.approval_recorded");
    assert_eq!(decided(&event).pending, 1, "still in the queue");
    assert_eq!(
        alice.pending("").await.unwrap().reviews[0].decisions.len(),
        1
    );
    expect_code(
        alice.approve(&review.id).await,
        Code::FailedPrecondition,
        "you already approved this request at",
    );

    let twice = bob.approve(&review.id).await.unwrap();
    assert_eq!(twice.status(), ReviewStatus::Approved);
    assert_eq!(twice.decisions.len(), 2);
    let event = sub.next_event().await;
    assert_eq!(event.r#type, "review.approved");
    assert_eq!(decided(&event).pending, 0);
    expect_code(
        Desk::of(&app, "carol", &["admin"])
            .await
            .approve(&review.id)
            .await,
        Code::FailedPrecondition,
        "already approved by alice, bob at",
    );
}

#[tokio::test]
async fn a_decision_reaches_the_applicants_inbox_in_the_same_transaction() {
    let app = spawn_app().await;
    let service = Desk::signup(&app).await;
    let alice = Desk::of(&app, "alice", &["admin"]).await;
    let marie = app.client("marie", &[]).await;
    let mut inbox = marie.subscribe("user:marie").await;
    let review = service.submit(signup("marie")).await.unwrap();

    expect_code(
        alice.reject(&review.id, " ").await,
        Code::InvalidArgument,
        "reason is required",
    );
    let rejected = alice
        .reject(&review.id, "Please add <b>photos</b> of your work")
        .await
        .unwrap();
    assert_eq!(rejected.status(), ReviewStatus::Rejected);
    assert_eq!(
        rejected.decisions[0].reason,
        "Please add photos of your work"
    );

    // Already in the database when Reject answered: the decision and the notice committed
    // together.
    let channel = app.endpoint().connect().await.unwrap();
    let counts = NotificationsClient::new(channel)
        .counts(marie.request(NotificationsCountsRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(counts.counts.unwrap().unread, 1);

    let event = inbox.next_event().await;
    assert_eq!(event.r#type, "notification.created");
    assert_eq!(event.publisher, "alice");
    let Some(Body::NotificationCreated(body)) = &event.body else {
        panic!("a notification: {event:?}");
    };
    let notice = body.notification.clone().unwrap();
    assert_eq!(notice.r#type(), NotificationType::System);
    assert_eq!(
        notice.title,
        "Your request for the artisan role was rejected"
    );
    assert_eq!(notice.content, "Please add photos of your work");
    let data = serde_json::to_value(notice.data.unwrap()).unwrap();
    assert_eq!(data["review_id"], review.id);
    assert_eq!(data["status"], "rejected");
    assert_eq!(inbox.next_event().await.r#type, "notification.counts");
}

#[tokio::test]
async fn a_non_reviewer_cannot_list_count_or_decide_and_a_reviewer_cannot_decide_their_own_request()
{
    let app = spawn_app().await;
    let service = Desk::signup(&app).await;
    let mallory = Desk::of(&app, "mallory", &["artisan"]).await;
    expect_code(
        mallory.submit(signup("mallory")).await,
        Code::PermissionDenied,
        "only services (token role `service`) submit review requests",
    );
    let review = service.submit(signup("marie")).await.unwrap();
    expect_code(
        mallory.pending("").await,
        Code::PermissionDenied,
        "only holders of the role `admin` (and services) see its review requests",
    );
    expect_code(
        mallory.count("admin").await,
        Code::PermissionDenied,
        "only holders of the role `admin`",
    );
    expect_code(
        mallory.approve(&review.id).await,
        Code::PermissionDenied,
        "only holders of the role `admin` decide this request",
    );
    expect_code(
        mallory.reject(&review.id, "no").await,
        Code::PermissionDenied,
        "only holders of the role `admin` decide this request",
    );
    let refused = mallory.who.try_subscribe("role:admin", None).await;
    assert_eq!(
        refused.err().map(|s| s.code()),
        Some(Code::PermissionDenied)
    );
    expect_code(
        mallory
            .decisions(ReviewsListDecisionsRequest::default())
            .await,
        Code::PermissionDenied,
        "only admins (token role `admin`) read the decision audit trail",
    );

    // Marie became an admin meanwhile; her own request is still not hers to decide.
    let marie = Desk::of(&app, "marie", &["admin"]).await;
    expect_code(
        marie.approve(&review.id).await,
        Code::PermissionDenied,
        "reviewers may not decide their own request",
    );
    expect_code(
        marie.approve("no-such-review").await,
        Code::NotFound,
        "no review request `no-such-review`",
    );
    assert_eq!(marie.count("").await.unwrap().0, 1, "still pending");
}

#[tokio::test]
async fn every_submission_limit_is_refused_with_the_field_and_the_limit() {
    let app = spawn_app().await;
    let service = Desk::signup(&app).await;
    let with = |f: fn(&mut ReviewsSubmitRequest)| {
        let mut request = signup("");
        f(&mut request);
        request
    };
    let cases: Vec<(ReviewsSubmitRequest, &str)> = vec![
        (
            with(|r| r.applicant.as_mut().unwrap().name = "n".repeat(201)),
            "applicant.name is 201 characters long; the limit is 200",
        ),
        (
            with(|r| r.applicant.as_mut().unwrap().email = "nobody".into()),
            "applicant.email must be an address with one `@` and no spaces",
        ),
        (
            with(|r| r.applicant.as_mut().unwrap().phone = "call me".into()),
            "applicant.phone may only contain digits",
        ),
        (
            with(|r| r.requested_role = String::new()),
            "requested_role is required",
        ),
        (
            with(|r| r.reviewer_role = "Admins!".into()),
            "reviewer_role `Admins!` may only contain",
        ),
        (
            with(|r| r.required_approvals = 11),
            "required_approvals is 11; the limit is 10",
        ),
        (
            with(|r| {
                r.details =
                    Some(serde_json::from_value(json!({ "cv": "x".repeat(10 * 1024) })).unwrap())
            }),
            "the limit is 10240",
        ),
    ];
    for (request, message) in cases {
        let status = expect_code(
            service.submit(request).await,
            Code::InvalidArgument,
            message,
        );
        assert!(!status.message().contains(EMAIL) && !status.message().contains(PHONE));
    }
    let admin = Desk::of(&app, "alice", &["admin"]).await;
    expect_code(
        admin.pending_page("", 51, "").await,
        Code::InvalidArgument,
        "limit is 51; a page holds at most 50",
    );
    expect_code(
        admin.pending_page("", 5, "garbage").await,
        Code::InvalidArgument,
        "cursor is not a `next_cursor` returned by ListPending",
    );
}

#[tokio::test]
async fn a_custom_reviewer_role_has_its_own_queue_and_pages_oldest_first() {
    let app = spawn_app().await;
    let service = Desk::signup(&app).await;
    let moderator = Desk::of(&app, "mo", &["moderator"]).await;
    let admin = Desk::of(&app, "alice", &["admin"]).await;
    let mut ids = vec![];
    for _ in 0..5 {
        let review = service
            .submit(ReviewsSubmitRequest {
                reviewer_role: "moderator".into(),
                ..signup("")
            })
            .await
            .unwrap();
        ids.push(review.id);
    }
    assert_eq!(
        admin.count("").await.unwrap().0,
        0,
        "the admin queue is apart"
    );
    expect_code(
        admin.approve(&ids[0]).await,
        Code::PermissionDenied,
        "only holders of the role `moderator` decide this request",
    );
    let mut seen = vec![];
    let mut cursor = String::new();
    loop {
        let page = moderator
            .pending_page("moderator", 2, &cursor)
            .await
            .unwrap();
        assert_eq!(page.pending, 5);
        seen.extend(page.reviews.into_iter().map(|r| r.id));
        if page.next_cursor.is_empty() {
            break;
        }
        cursor = page.next_cursor;
    }
    assert_eq!(seen, ids, "every pending request once, oldest first");
    moderator.approve(&ids[2]).await.unwrap();
    assert_eq!(moderator.count("moderator").await.unwrap().0, 4);
}

#[tokio::test]
async fn every_decision_is_an_audit_record_for_admins() {
    let app = spawn_app().await;
    let service = Desk::signup(&app).await;
    let alice = Desk::of(&app, "alice", &["admin"]).await;
    let bob = Desk::of(&app, "bob", &["admin"]).await;
    let first = service
        .submit(ReviewsSubmitRequest {
            required_approvals: 2,
            ..signup("")
        })
        .await
        .unwrap();
    let second = service.submit(signup("")).await.unwrap();
    alice.approve(&first.id).await.unwrap();
    bob.approve(&first.id).await.unwrap();
    bob.reject(&second.id, "duplicate account").await.unwrap();

    let all = alice
        .decisions(ReviewsListDecisionsRequest::default())
        .await
        .unwrap();
    let trail: Vec<(&str, &str, ReviewVerdict)> = all
        .decisions
        .iter()
        .map(|d| (d.review_id.as_str(), d.reviewer_id.as_str(), d.verdict()))
        .collect();
    assert_eq!(
        trail,
        [
            (second.id.as_str(), "bob", ReviewVerdict::Reject),
            (first.id.as_str(), "bob", ReviewVerdict::Approve),
            (first.id.as_str(), "alice", ReviewVerdict::Approve),
        ],
        "newest first"
    );
    assert_eq!(all.decisions[0].reason, "duplicate account");
    let by_bob = alice
        .decisions(ReviewsListDecisionsRequest {
            reviewer_id: "bob".into(),
            limit: 1,
            ..ReviewsListDecisionsRequest::default()
        })
        .await
        .unwrap();
    assert_eq!(by_bob.decisions.len(), 1);
    let rest = alice
        .decisions(ReviewsListDecisionsRequest {
            reviewer_id: "bob".into(),
            cursor: by_bob.next_cursor,
            ..ReviewsListDecisionsRequest::default()
        })
        .await
        .unwrap();
    assert_eq!(rest.decisions.len(), 1);
    assert_eq!(rest.decisions[0].review_id, first.id);
    assert!(rest.next_cursor.is_empty());
    let of_first = alice
        .decisions(ReviewsListDecisionsRequest {
            review_id: first.id.clone(),
            ..ReviewsListDecisionsRequest::default()
        })
        .await
        .unwrap();
    assert_eq!(of_first.decisions.len(), 2);
}

#[tokio::test]
async fn the_reviews_demo_runs_against_a_herald_serve() {
    use herald_e2e::process::{herald_binary, spawn_serve_process};
    let data = tempfile::tempdir().unwrap();
    let herald = spawn_serve_process(data.path()).await;
    let output = tokio::process::Command::new(herald_binary())
        .args(["demo", "reviews", "--pace", "0s", "--server"])
        .arg(herald.grpc_url())
        .env("HERALD_AUTH_HS256_SECRET", herald_e2e::SECRET)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for expected in [
        "review.submitted",
        "FailedPrecondition: already approved by",
        "review.approval_recorded",
        "you already approved this request",
        "“Your request for the artisan role was rejected”",
        "reviewers may not decide their own request",
        "PermissionDenied: only holders of the role `admin`",
    ] {
        assert!(
            stdout.contains(expected),
            "`{expected}` missing from:\n{stdout}"
        );
    }
    herald.kill9().await;
}

/// Everything logged while it is the thread's default subscriber.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;

    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

// A current-thread runtime: the server's tasks run on this thread, so the thread's default
// subscriber sees every line the backend logs, at every level.
#[tokio::test(flavor = "current_thread")]
async fn applicant_email_and_phone_never_appear_in_the_logs() {
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(captured.clone())
        .with_ansi(false)
        .finish();
    // tracing caches each callsite's interest for the whole process. While only one
    // dispatcher exists it asks just the *current thread's* default, so a callsite first
    // reached on another test's thread would be cached as "never" and this thread would miss
    // it. A second, silent dispatcher makes every decision ask all live dispatchers.
    let _second = tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default());
    let _guard = tracing::subscriber::set_default(subscriber);

    let app = spawn_app().await;
    let service = Desk::signup(&app).await;
    let alice = Desk::of(&app, "alice", &["admin"]).await;
    let mut sub = subscribe_from_count(&alice, "admin").await;
    let review = service.submit(signup("marie")).await.unwrap();
    sub.next_event().await;
    alice.pending("").await.unwrap();
    alice.approve(&review.id).await.unwrap();
    sub.next_event().await;
    let rejected = service.submit(signup("marie")).await.unwrap();
    alice.reject(&rejected.id, "no").await.unwrap();
    let _ = service
        .submit(ReviewsSubmitRequest {
            requested_role: "BAD ROLE".into(),
            ..signup("")
        })
        .await;
    drop(sub);
    app.shutdown().await.unwrap();

    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("review request submitted"),
        "the capture works: {} bytes",
        logs.len()
    );
    assert!(!logs.contains(EMAIL), "the email reached a log line");
    assert!(
        !logs.contains("applicant@example"),
        "part of the email reached a log line"
    );
    assert!(!logs.contains(PHONE), "the phone reached a log line");
    assert!(
        !logs.contains("12 34 56"),
        "part of the phone reached a log line"
    );
}
