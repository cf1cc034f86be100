//! Deployment monitoring (`herald.v1.Deployments`): a worker runs a deployment, watchers see
//! status and log in one ordered stream — catch-up, then live, ending at the terminal status.
//! Runs on the database `HERALD_TEST_DATABASE` selects (SQLite or PostgreSQL).

use herald_backend::history::PageBudget;
use herald_e2e::{PATIENCE, TestApp, edge::spawn_edge, spawn_app, spawn_app_with};
use herald_proto::v1::{
    Deployment, DeploymentEvent, DeploymentLogs, DeploymentStage, DeploymentState,
    DeploymentStatus, DeploymentsAppendLogBatchRequest, DeploymentsCancelRequest,
    DeploymentsCreateRequest, DeploymentsFinishRequest, DeploymentsGetRequest,
    DeploymentsListRequest, DeploymentsReportRequest, DeploymentsStartRequest, LogChunk, LogStream,
    StreamPosition, WatchDeploymentRequest, deployment_event::Event as Part,
    deployments_client::DeploymentsClient, event::Body, log_chunk::Line,
};
use serde_json::{Value, json};
use tonic::{Code, Request, Status, Streaming, transport::Channel};

/// A Deployments client for one token.
#[derive(Clone)]
struct Api {
    client: DeploymentsClient<Channel>,
    token: String,
}

async fn api(app: &TestApp, sub: &str, roles: &[&str]) -> Api {
    let channel = app.endpoint().connect().await.expect("connect");
    Api {
        client: DeploymentsClient::new(channel),
        token: app.token(sub, roles),
    }
}

/// The owner `alice` and the worker `builder`.
async fn people(app: &TestApp) -> (Api, Api) {
    (
        api(app, "alice", &[]).await,
        api(app, "builder", &["service"]).await,
    )
}

fn at(offset: u64, epoch: &str) -> StreamPosition {
    StreamPosition {
        offset,
        epoch: epoch.to_owned(),
    }
}

impl Api {
    fn req<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {}", self.token).parse().expect("ascii"),
        );
        request
    }

    async fn create(&self, application: &str) -> Deployment {
        self.client
            .clone()
            .create(self.req(DeploymentsCreateRequest {
                application: application.into(),
                git_ref: "main".into(),
                description: Some("a test deployment".into()),
            }))
            .await
            .expect("create")
            .into_inner()
            .deployment
            .expect("deployment")
    }

    async fn get(&self, id: u64) -> Result<Deployment, Status> {
        Ok(self
            .client
            .clone()
            .get(self.req(DeploymentsGetRequest { deployment_id: id }))
            .await?
            .into_inner()
            .deployment
            .expect("deployment"))
    }

    async fn start(&self, id: u64) -> Result<Deployment, Status> {
        Ok(self
            .client
            .clone()
            .start(self.req(DeploymentsStartRequest { deployment_id: id }))
            .await?
            .into_inner()
            .deployment
            .expect("deployment"))
    }

    async fn report(
        &self,
        id: u64,
        stage: DeploymentStage,
        progress: u32,
    ) -> Result<DeploymentStatus, Status> {
        self.report_raw(id, stage as i32, progress).await
    }

    async fn report_raw(
        &self,
        id: u64,
        stage: i32,
        progress: u32,
    ) -> Result<DeploymentStatus, Status> {
        Ok(self
            .client
            .clone()
            .report(self.req(DeploymentsReportRequest {
                deployment_id: id,
                stage,
                progress,
                message: format!("at {progress} %"),
            }))
            .await?
            .into_inner()
            .status
            .expect("status"))
    }

    async fn append(&self, id: u64, texts: Vec<String>) -> Result<u64, Status> {
        let lines = texts
            .into_iter()
            .map(|text| Line {
                text,
                stream: LogStream::Stdout as i32,
                time: None,
            })
            .collect();
        Ok(self
            .client
            .clone()
            .append_log_batch(self.req(DeploymentsAppendLogBatchRequest {
                chunk: Some(LogChunk {
                    deployment_id: id,
                    lines,
                }),
            }))
            .await?
            .into_inner()
            .last_line)
    }

    /// Appends lines `from..=to` as `line N`, `per_chunk` to a chunk.
    async fn append_range(&self, id: u64, from: u64, to: u64, per_chunk: u64) {
        let mut n = from;
        while n <= to {
            let last = (n + per_chunk - 1).min(to);
            self.append(id, (n..=last).map(|n| format!("line {n}")).collect())
                .await
                .expect("append");
            n = last + 1;
        }
    }

    async fn finish(
        &self,
        id: u64,
        result: DeploymentState,
        error: &str,
        code: Option<i32>,
    ) -> Result<Deployment, Status> {
        Ok(self
            .client
            .clone()
            .finish(self.req(DeploymentsFinishRequest {
                deployment_id: id,
                result: result as i32,
                error_message: error.into(),
                exit_code: code,
                message: None,
            }))
            .await?
            .into_inner()
            .deployment
            .expect("deployment"))
    }

    async fn succeed(&self, id: u64) -> Deployment {
        self.finish(id, DeploymentState::Success, "", Some(0))
            .await
            .expect("finish")
    }

    async fn cancel(&self, id: u64) -> Result<Deployment, Status> {
        Ok(self
            .client
            .clone()
            .cancel(self.req(DeploymentsCancelRequest { deployment_id: id }))
            .await?
            .into_inner()
            .deployment
            .expect("deployment"))
    }

    async fn try_watch(
        &self,
        id: u64,
        since: Option<StreamPosition>,
        tail_lines: Option<u32>,
    ) -> Result<Watch, Status> {
        let stream = self
            .client
            .clone()
            .watch(self.req(WatchDeploymentRequest {
                deployment_id: id,
                since,
                tail_lines,
            }))
            .await?
            .into_inner();
        Ok(Watch { stream })
    }

    async fn watch(&self, id: u64) -> Watch {
        self.try_watch(id, None, None).await.expect("watch")
    }
}

struct Watch {
    stream: Streaming<DeploymentEvent>,
}

impl Watch {
    /// The next message; `None` once the stream ended with OK.
    async fn next(&mut self) -> Result<Option<DeploymentEvent>, Status> {
        tokio::time::timeout(PATIENCE, self.stream.message())
            .await
            .expect("a watch message arrives in time")
    }

    async fn next_event(&mut self) -> DeploymentEvent {
        self.next()
            .await
            .expect("the watch goes on")
            .expect("the watch has not ended")
    }

    /// Everything until the stream ends, which must be with OK.
    async fn until_end(&mut self) -> Vec<DeploymentEvent> {
        let mut events = Vec::new();
        while let Some(event) = self.next().await.expect("the watch ends with OK") {
            events.push(event);
        }
        events
    }
}

fn status_of(event: &DeploymentEvent) -> Option<&DeploymentStatus> {
    match &event.event {
        Some(Part::Status(status)) => Some(status),
        _ => None,
    }
}

fn logs_of(event: &DeploymentEvent) -> Option<&DeploymentLogs> {
    match &event.event {
        Some(Part::Logs(logs)) => Some(logs),
        _ => None,
    }
}

fn line_numbers(events: &[DeploymentEvent]) -> Vec<u64> {
    events
        .iter()
        .filter_map(logs_of)
        .flat_map(|logs| logs.lines.iter().map(|line| line.number))
        .collect()
}

fn statuses(events: &[DeploymentEvent]) -> Vec<(i32, i32, u32)> {
    events
        .iter()
        .filter_map(status_of)
        .map(|s| (s.status, s.stage, s.progress))
        .collect()
}

fn position(event: &DeploymentEvent) -> StreamPosition {
    event
        .position
        .clone()
        .expect("every message has a position")
}

fn range(from: u64, to: u64) -> Vec<u64> {
    (from..=to).collect()
}

fn assert_code(result: Result<impl std::fmt::Debug, Status>, code: Code, needle: &str) {
    let status = result.expect_err("the call is refused");
    assert_eq!(status.code(), code, "{status:?}");
    assert!(
        status.message().contains(needle),
        "`{}` should mention `{needle}`",
        status.message()
    );
}

#[tokio::test]
async fn a_watcher_from_the_start_sees_every_status_and_every_line_in_order_then_the_stream_ends_ok()
 {
    let app = spawn_app().await;
    let (alice, worker) = people(&app).await;
    let deployment = alice.create("web-shop").await;
    assert_eq!(
        deployment.status.as_ref().unwrap().status,
        DeploymentState::Pending as i32
    );
    assert_eq!(deployment.owner, "alice");
    let id = deployment.id;
    let mut watch = alice.watch(id).await;
    let first = watch.next_event().await;
    assert!(first.recovered);
    assert_eq!(
        status_of(&first).unwrap().status,
        DeploymentState::Pending as i32
    );

    worker.start(id).await.unwrap();
    worker
        .report(id, DeploymentStage::Cloning, 5)
        .await
        .unwrap();
    worker.append_range(id, 1, 30, 10).await;
    worker
        .report(id, DeploymentStage::Building, 50)
        .await
        .unwrap();
    worker.append_range(id, 31, 60, 7).await;
    worker
        .report(id, DeploymentStage::Deploying, 90)
        .await
        .unwrap();
    let done = worker.succeed(id).await;
    let done_status = done.status.unwrap();
    assert!(
        done_status.duration.is_some(),
        "the server computes the duration"
    );
    assert!(done_status.started_at.is_some() && done_status.finished_at.is_some());

    let events = watch.until_end().await;
    assert_eq!(line_numbers(&events), range(1, 60));
    let texts: Vec<_> = events
        .iter()
        .filter_map(logs_of)
        .flat_map(|l| l.lines.iter().map(|l| l.text.clone()))
        .collect();
    assert_eq!(texts[59], "line 60");
    let running = DeploymentState::Running as i32;
    assert_eq!(
        statuses(&events),
        vec![
            (running, 0, 0),
            (running, DeploymentStage::Cloning as i32, 5),
            (running, DeploymentStage::Building as i32, 50),
            (running, DeploymentStage::Deploying as i32, 90),
            (
                DeploymentState::Success as i32,
                DeploymentStage::Deploying as i32,
                100
            ),
        ]
    );
    let offsets: Vec<u64> = events.iter().map(|e| position(e).offset).collect();
    assert!(
        offsets.windows(2).all(|w| w[0] < w[1]),
        "in topic order: {offsets:?}"
    );

    let replay = alice.watch(id).await.until_end().await;
    assert_eq!(
        status_of(&replay[0]).unwrap().status,
        DeploymentState::Success as i32,
        "a finished deployment replays: its status first"
    );
    assert_eq!(
        line_numbers(&replay),
        range(1, 60),
        "then its log, then the end"
    );
}

#[tokio::test]
async fn a_watcher_joining_mid_build_gets_the_catch_up_then_live_without_gap_or_duplicate() {
    let app = spawn_app().await;
    let (alice, worker) = people(&app).await;
    let id = alice.create("api").await.id;
    worker.start(id).await.unwrap();
    worker
        .report(id, DeploymentStage::Building, 10)
        .await
        .unwrap();
    worker.append_range(id, 1, 500, 25).await;

    let mut joined = alice.watch(id).await;
    let mut tail = alice.try_watch(id, None, Some(50)).await.unwrap();
    let writer = {
        let worker = worker.clone();
        tokio::spawn(async move {
            worker.append_range(id, 501, 900, 13).await;
            worker
                .report(id, DeploymentStage::Deploying, 95)
                .await
                .unwrap();
            worker.succeed(id).await;
        })
    };
    let events = joined.until_end().await;
    let opening = status_of(&events[0]).expect("the current status first");
    assert_eq!(opening.stage, DeploymentStage::Building as i32);
    assert_eq!(opening.log_lines, 500);
    assert_eq!(line_numbers(&events), range(1, 900), "no gap, no duplicate");
    assert_eq!(
        statuses(&events).last().unwrap().0,
        DeploymentState::Success as i32
    );

    let tailed = tail.until_end().await;
    assert_eq!(
        line_numbers(&tailed),
        range(451, 900),
        "the last 50 lines, then live"
    );
    writer.await.unwrap();
}

#[tokio::test]
async fn a_watcher_that_disconnects_and_resumes_with_since_misses_nothing() {
    let app = spawn_app().await;
    let (alice, worker) = people(&app).await;
    let id = alice.create("api").await.id;
    worker.start(id).await.unwrap();
    worker.append_range(id, 1, 100, 10).await;

    let mut watch = alice.watch(id).await;
    let mut seen = Vec::new();
    let mut last = None;
    while seen.len() < 40 {
        let event = watch.next_event().await;
        last = Some(position(&event));
        seen.extend(line_numbers(std::slice::from_ref(&event)));
    }
    drop(watch);
    worker.append_range(id, 101, 150, 10).await;
    worker.succeed(id).await;

    let mut resumed = alice
        .try_watch(id, last, None)
        .await
        .expect("resume with since");
    let rest = resumed.until_end().await;
    assert!(rest.iter().all(|e| e.recovered));
    seen.extend(line_numbers(&rest));
    assert_eq!(seen, range(1, 150), "every line exactly once");
    assert_eq!(
        statuses(&rest).last().unwrap().0,
        DeploymentState::Success as i32
    );

    // Get's position is a resume point too (snapshot + position).
    let got = alice.get(id).await.unwrap();
    let after = alice
        .try_watch(id, got.position, None)
        .await
        .unwrap()
        .until_end()
        .await;
    assert!(after.is_empty(), "nothing happened after the snapshot");
}

#[tokio::test]
async fn a_hundred_watches_and_gets_opened_at_once_all_succeed_on_a_small_pool() {
    let app = spawn_app().await;
    let (alice, worker) = people(&app).await;
    let id = alice.create("api").await.id;
    worker.start(id).await.unwrap();
    worker.append_range(id, 1, 20, 10).await;
    let alice = std::sync::Arc::new(alice);
    let mut opening = tokio::task::JoinSet::new();
    for n in 0..100 {
        let alice = alice.clone();
        opening.spawn(async move {
            if n % 2 == 0 {
                alice.try_watch(id, None, None).await.map(|_| ())
            } else {
                alice.get(id).await.map(|_| ())
            }
        });
    }
    let mut refused = Vec::new();
    while let Some(opened) = opening.join_next().await {
        if let Err(status) = opened.unwrap() {
            refused.push(format!("{:?}: {}", status.code(), status.message()));
        }
    }
    assert!(
        refused.is_empty(),
        "every snapshot read is released before its authorization check takes a connection: {refused:?}"
    );
}

#[tokio::test]
async fn a_failure_carries_its_message_and_exit_code_to_the_watcher() {
    let app = spawn_app().await;
    let (alice, worker) = people(&app).await;
    let id = alice.create("api").await.id;
    let mut watch = alice.watch(id).await;
    worker.start(id).await.unwrap();
    worker
        .append(id, vec!["\u{1b}[31merror\u{1b}[0m: tests failed".into()])
        .await
        .unwrap();
    assert_code(
        worker
            .finish(id, DeploymentState::Failed, "", Some(1))
            .await,
        Code::InvalidArgument,
        "error_message is required",
    );
    let failed = worker
        .finish(id, DeploymentState::Failed, "3 tests failed", Some(101))
        .await
        .unwrap();
    assert_eq!(failed.status.as_ref().unwrap().exit_code, Some(101));
    let events = watch.until_end().await;
    let last = status_of(events.last().unwrap()).unwrap();
    assert_eq!(last.status, DeploymentState::Failed as i32);
    assert_eq!(last.error_message, "3 tests failed");
    assert_eq!(last.exit_code, Some(101));
    let colour = &logs_of(&events[events.len() - 2]).unwrap().lines[0].text;
    assert!(
        colour.starts_with("\u{1b}[31m"),
        "ANSI codes are kept verbatim"
    );
}

#[tokio::test]
async fn a_cancellation_is_seen_by_the_watcher_and_by_the_worker_on_its_next_call() {
    let app = spawn_app().await;
    let (alice, worker) = people(&app).await;
    let bob = api(&app, "bob", &[]).await;
    let id = alice.create("api").await.id;
    worker.start(id).await.unwrap();
    let mut watch = alice.watch(id).await;
    assert_code(
        bob.cancel(id).await,
        Code::PermissionDenied,
        "owner and admins",
    );
    let cancelled = alice.cancel(id).await.unwrap();
    assert_eq!(
        cancelled.status.as_ref().unwrap().status,
        DeploymentState::Cancelled as i32
    );
    let events = watch.until_end().await;
    let last = status_of(events.last().unwrap()).unwrap();
    assert_eq!(last.status, DeploymentState::Cancelled as i32);
    assert_eq!(last.cancelled_by, "alice");
    assert_code(
        worker.append(id, vec!["still building".into()]).await,
        Code::FailedPrecondition,
        "cancelled",
    );
    assert_code(
        worker.report(id, DeploymentStage::Building, 50).await,
        Code::FailedPrecondition,
        "cancelled",
    );
    assert_code(
        alice.cancel(id).await,
        Code::FailedPrecondition,
        "cancelled",
    );
    let admin = api(&app, "ops", &["admin"]).await;
    let other = alice.create("api").await.id;
    assert!(admin.cancel(other).await.is_ok(), "admins may cancel");
}

#[tokio::test]
async fn append_logs_streams_chunks_each_stored_at_once_and_a_cancel_ends_the_stream() {
    let app = spawn_app().await;
    let (alice, worker) = people(&app).await;
    let id = alice.create("api").await.id;
    worker.start(id).await.unwrap();
    let mut watch = alice.watch(id).await;
    watch.next_event().await; // the current status
    let (chunks, receiver) = tokio::sync::mpsc::channel::<LogChunk>(4);
    let call = {
        let worker = worker.clone();
        tokio::spawn(async move {
            let stream = tokio_stream::wrappers::ReceiverStream::new(receiver);
            worker.client.clone().append_logs(worker.req(stream)).await
        })
    };
    let chunk = |from: u64| LogChunk {
        deployment_id: id,
        lines: (from..from + 10)
            .map(|n| Line {
                text: format!("line {n}"),
                stream: LogStream::Stderr as i32,
                time: None,
            })
            .collect(),
    };
    chunks.send(chunk(1)).await.unwrap();
    let first = watch.next_event().await;
    assert_eq!(
        line_numbers(std::slice::from_ref(&first)),
        range(1, 10),
        "a chunk is stored and delivered before the call ends"
    );
    assert_eq!(
        logs_of(&first).unwrap().lines[0].stream,
        LogStream::Stderr as i32
    );
    chunks.send(chunk(11)).await.unwrap();
    assert_eq!(line_numbers(&[watch.next_event().await]), range(11, 20));
    drop(chunks);
    let answer = call.await.unwrap().expect("the call succeeds").into_inner();
    assert_eq!((answer.chunks, answer.last_line), (2, 20));

    let (chunks, receiver) = tokio::sync::mpsc::channel::<LogChunk>(4);
    let call = {
        let worker = worker.clone();
        tokio::spawn(async move {
            let stream = tokio_stream::wrappers::ReceiverStream::new(receiver);
            worker.client.clone().append_logs(worker.req(stream)).await
        })
    };
    chunks.send(chunk(21)).await.unwrap();
    assert_eq!(line_numbers(&[watch.next_event().await]), range(21, 30));
    alice.cancel(id).await.unwrap();
    chunks.send(chunk(31)).await.unwrap();
    let refused = call.await.unwrap();
    assert_code(refused, Code::FailedPrecondition, "cancelled");
    let rest = watch.until_end().await;
    assert_eq!(
        status_of(rest.last().unwrap()).unwrap().status,
        DeploymentState::Cancelled as i32
    );
    assert!(line_numbers(&rest).is_empty(), "nothing after the cancel");
}

#[tokio::test]
async fn illegal_transitions_progress_regressions_and_reports_after_finish_are_failed_preconditions()
 {
    let app = spawn_app().await;
    let (alice, worker) = people(&app).await;
    let id = alice.create("api").await.id;
    assert_code(
        worker.report(id, DeploymentStage::Cloning, 1).await,
        Code::FailedPrecondition,
        "is pending at stage none",
    );
    worker.start(id).await.unwrap();
    assert_code(
        worker.start(id).await,
        Code::FailedPrecondition,
        "is running",
    );
    worker
        .report(id, DeploymentStage::Building, 40)
        .await
        .unwrap();
    assert_code(
        worker.report(id, DeploymentStage::Cloning, 50).await,
        Code::FailedPrecondition,
        "at stage building",
    );
    assert_code(
        worker.report(id, DeploymentStage::Building, 39).await,
        Code::FailedPrecondition,
        "progress never goes backwards",
    );
    worker.succeed(id).await;
    assert_code(
        worker.report(id, DeploymentStage::Deploying, 100).await,
        Code::FailedPrecondition,
        "already finished",
    );
    assert_code(
        worker.append(id, vec!["late".into()]).await,
        Code::FailedPrecondition,
        "already finished",
    );
}

#[tokio::test]
async fn refusals_name_who_may_and_the_rule_that_was_broken() {
    let app = spawn_app().await;
    let (alice, worker) = people(&app).await;
    let bob = api(&app, "bob", &[]).await;
    let id = alice.create("api").await.id;

    assert_code(
        bob.try_watch(id, None, None).await.map(|_| ()),
        Code::PermissionDenied,
        "deployment:",
    );
    assert_code(bob.get(id).await, Code::PermissionDenied, "deployment:");
    let admin = api(&app, "ops", &["admin"]).await;
    assert!(
        admin.get(id).await.is_ok(),
        "admins may read any deployment"
    );
    assert_code(
        alice.start(id).await,
        Code::PermissionDenied,
        "`service` role",
    );
    worker.start(id).await.unwrap();
    let other_worker = api(&app, "other-builder", &["service"]).await;
    assert_code(
        other_worker.append(id, vec!["x".into()]).await,
        Code::PermissionDenied,
        "`builder`",
    );

    assert_code(alice.get(0).await, Code::InvalidArgument, "deployment_id");
    assert_code(alice.get(999).await, Code::NotFound, "no deployment 999");
    assert_code(
        worker.append(id, vec!["x".repeat(256 * 1024 + 1)]).await,
        Code::InvalidArgument,
        "deployments.max_line_bytes",
    );
    assert_code(
        worker.report_raw(id, 0, 10).await,
        Code::InvalidArgument,
        "DEPLOYMENT_STAGE_CLONING",
    );
    assert_code(
        worker.report_raw(id, 17, 10).await,
        Code::InvalidArgument,
        "not a stage",
    );
    assert_code(
        worker.report(id, DeploymentStage::Building, 101).await,
        Code::InvalidArgument,
        "0 to 100",
    );
    let bad_app = alice
        .client
        .clone()
        .create(alice.req(DeploymentsCreateRequest {
            application: "no spaces".into(),
            git_ref: "main".into(),
            description: None,
        }))
        .await;
    assert_code(bad_app, Code::InvalidArgument, "application must be");
    // The malformed topic id: `deployment:abc` has no owner, so only admins and services in.
    let mut rooms = app.client("alice", &[]).await;
    let refused = rooms.try_subscribe("deployment:abc", None).await;
    assert_eq!(
        refused.err().map(|s| s.code()),
        Some(Code::PermissionDenied)
    );
    rooms.token = app.token("ops", &["admin"]);
    assert!(rooms.try_subscribe("deployment:abc", None).await.is_ok());
}

#[tokio::test]
async fn a_line_over_16_kib_is_split_into_pieces_with_a_continuation_marker() {
    let app = spawn_app().await;
    let (alice, worker) = people(&app).await;
    let id = alice.create("api").await.id;
    worker.start(id).await.unwrap();
    let long = format!("\u{1b}[33m{}\u{1b}[0m", "w".repeat(40 * 1024));
    assert_eq!(
        worker
            .append(id, vec![long.clone(), "after".into()])
            .await
            .unwrap(),
        4
    );
    worker.succeed(id).await;
    let events = alice.watch(id).await.until_end().await;
    let lines: Vec<_> = events
        .iter()
        .filter_map(logs_of)
        .flat_map(|l| l.lines.clone())
        .collect();
    assert_eq!(lines.len(), 4);
    assert!(
        lines[..2]
            .iter()
            .all(|l| l.continues && l.text.len() == 16 * 1024)
    );
    assert!(!lines[2].continues);
    let joined: String = lines[..3].iter().map(|l| l.text.as_str()).collect();
    assert_eq!(joined, long);
    assert_eq!(lines[3].text, "after");
}

#[tokio::test]
async fn list_pages_newest_first_and_each_deployment_carries_its_position() {
    let app = spawn_app().await;
    let (alice, _) = people(&app).await;
    let bob = api(&app, "bob", &[]).await;
    for application in ["web", "api", "web", "web"] {
        alice.create(application).await;
    }
    bob.create("web").await;
    let page = |api: &Api, application: Option<&str>, token: String| {
        let api = api.clone();
        let application = application.map(str::to_owned);
        async move {
            api.client
                .clone()
                .list(api.req(DeploymentsListRequest {
                    application,
                    page_size: 2,
                    page_token: token,
                }))
                .await
                .unwrap()
                .into_inner()
        }
    };
    let first = page(&alice, Some("web"), String::new()).await;
    assert_eq!(first.deployments.len(), 2);
    assert!(
        first.deployments[0].id > first.deployments[1].id,
        "newest first"
    );
    assert!(first.deployments.iter().all(|d| d.owner == "alice"));
    assert!(
        first
            .deployments
            .iter()
            .all(|d| d.position.as_ref().unwrap().offset == 1)
    );
    let second = page(&alice, Some("web"), first.next_page_token.clone()).await;
    assert_eq!(second.deployments.len(), 1);
    assert!(second.next_page_token.is_empty(), "the last page");
    let all = page(&alice, None, String::new()).await;
    assert!(!all.next_page_token.is_empty());
    let admin = api(&app, "ops", &["admin"]).await;
    let everyone = page(&admin, Some("web"), String::new()).await;
    assert_eq!(
        everyone.deployments[0].owner, "bob",
        "admins see everyone's"
    );
}

#[tokio::test]
async fn a_hundred_thousand_line_log_catches_up_one_page_at_a_time() {
    const LINES: u64 = 100_000;
    let app = spawn_app_with(|config| config.retention.history_max_events = 10).await;
    let (alice, worker) = people(&app).await;
    let id = alice.create("big").await.id;
    worker.start(id).await.unwrap();
    worker.append_range(id, 1, LINES, 200).await;
    worker.succeed(id).await;

    let mut watch = alice.watch(id).await;
    let mut next = 1;
    while let Some(event) = watch.next().await.expect("ends with OK") {
        for line in logs_of(&event).iter().flat_map(|l| l.lines.iter()) {
            assert_eq!(line.number, next, "in order, once");
            next += 1;
        }
    }
    assert_eq!(next, LINES + 1);
    let stats = app.node.history_reader().stats();
    assert!(
        stats.largest_page_events() <= PageBudget::REPLAY.events,
        "a reader held {} events at once",
        stats.largest_page_events()
    );
    // A page ends once its byte budget is reached: at most one chunk beyond it.
    let chunk_bytes = 200 * 64;
    assert!(
        stats.largest_page_bytes() <= PageBudget::REPLAY.bytes + chunk_bytes,
        "a reader held {} bytes at once",
        stats.largest_page_bytes()
    );
    let chunks = LINES / 200;
    assert!(
        stats.log_pages() >= (chunks - 10) / PageBudget::REPLAY.events as u64,
        "read from the database page by page ({} pages)",
        stats.log_pages()
    );
}

#[tokio::test]
async fn beyond_the_line_limit_the_head_and_the_tail_are_kept_with_one_truncated_marker() {
    let app = spawn_app_with(|config| config.deployments.max_log_lines = 100).await;
    let (alice, worker) = people(&app).await;
    let id = alice.create("noisy").await.id;
    worker.start(id).await.unwrap();
    let mut live = alice.watch(id).await;
    // A watcher that keeps up: each chunk reaches it before the next is written (a chunk the
    // relay has not handed over yet when truncation rewrites it arrives already cut).
    let mut live_events = Vec::new();
    for first in (1..=250).step_by(20) {
        let last = (first + 19).min(250);
        worker.append_range(id, first, last, 20).await;
        while line_numbers(&live_events).last() != Some(&last) {
            live_events.push(live.next_event().await);
        }
    }
    let status = alice.get(id).await.unwrap().status.unwrap();
    assert!(status.log_truncated, "never a silent cut");
    assert_eq!(status.log_lines, 250);
    worker.succeed(id).await;

    live_events.extend(live.until_end().await);
    assert_eq!(
        line_numbers(&live_events),
        range(1, 250),
        "a live watcher saw every line"
    );
    assert!(
        live_events
            .iter()
            .filter_map(status_of)
            .any(|s| s.log_truncated),
        "the status says the log was truncated"
    );

    // A later watcher (after a restart: nothing cached) gets the head, one marker, the tail.
    let app = app.restart().await;
    let (alice, _) = people(&app).await;
    let events = alice.watch(id).await.until_end().await;
    let expected: Vec<u64> = (1..=10).chain(161..=250).collect();
    assert_eq!(
        line_numbers(&events),
        expected,
        "first 10 %, then the newest"
    );
    let markers: Vec<_> = events
        .iter()
        .filter_map(logs_of)
        .filter_map(|l| l.truncated)
        .collect();
    assert_eq!(markers.len(), 1, "one explicit marker");
    assert_eq!((markers[0].first_line, markers[0].last_line), (11, 160));
    assert_eq!(markers[0].limit, 100);

    // And right after the cut, from the broker's cache, the same view.
    let cached = spawn_app_with(|config| config.deployments.max_log_lines = 100).await;
    let (alice, worker) = people(&cached).await;
    let id = alice.create("noisy").await.id;
    worker.start(id).await.unwrap();
    worker.append_range(id, 1, 250, 20).await;
    worker.succeed(id).await;
    let events = alice.watch(id).await.until_end().await;
    assert_eq!(line_numbers(&events), expected);
    let markers = events
        .iter()
        .filter_map(logs_of)
        .filter(|l| l.truncated.is_some());
    assert_eq!(markers.count(), 1);
}

#[tokio::test]
async fn a_restart_mid_build_resumes_watchers_with_recovered_and_a_complete_log_and_status() {
    let app = spawn_app().await;
    let (alice, worker) = people(&app).await;
    let id = alice.create("api").await.id;
    worker.start(id).await.unwrap();
    worker
        .report(id, DeploymentStage::Building, 30)
        .await
        .unwrap();
    worker.append_range(id, 1, 120, 10).await;
    let mut watch = alice.watch(id).await;
    let mut seen = Vec::new();
    let mut last = None;
    while seen.len() < 120 {
        let event = watch.next_event().await;
        seen.extend(line_numbers(std::slice::from_ref(&event)));
        last = Some(position(&event));
    }

    let app = app.restart().await;
    let ended = watch.next().await;
    assert!(
        matches!(&ended, Err(status) if status.code() == Code::Unavailable),
        "the old stream ends with a reconnect code: {ended:?}"
    );
    let (alice, worker) = people(&app).await;
    let mut resumed = alice.try_watch(id, last.clone(), None).await.unwrap();
    worker.append_range(id, 121, 200, 10).await;
    worker
        .report(id, DeploymentStage::Deploying, 90)
        .await
        .unwrap();
    worker.succeed(id).await;
    let rest = resumed.until_end().await;
    assert!(rest.iter().all(|e| e.recovered), "recovered = true");
    seen.extend(line_numbers(&rest));
    assert_eq!(seen, range(1, 200), "the log is complete");
    let final_status = status_of(rest.last().unwrap()).unwrap();
    assert_eq!(final_status.status, DeploymentState::Success as i32);
    assert_eq!(final_status.log_lines, 200);

    // The typed bodies came back from the database: a raw subscriber sees them too.
    let rooms = app.client("alice", &[]).await;
    let mut sub = rooms
        .resume(&format!("deployment:{id}"), last.unwrap())
        .await;
    assert!(sub.subscribed.recovered);
    let event = sub.next_event().await;
    assert_eq!(event.r#type, "deployment.logs");
    assert!(event.data.is_none());
    let Some(Body::DeploymentLogs(logs)) = event.body else {
        panic!("a typed body, got {event:?}");
    };
    assert_eq!(logs.lines[0].number, 121);
}

#[tokio::test]
async fn the_rust_sdks_deployment_watch_resumes_across_a_restart_with_every_line_once() {
    let app = spawn_app().await;
    let (alice, worker) = people(&app).await;
    let id = alice.create("sdk").await.id;
    worker.start(id).await.unwrap();
    worker.append_range(id, 1, 50, 10).await;
    let client =
        herald_client::Client::connect(&format!("http://{}", app.addr), app.token("alice", &[]))
            .expect("a client");
    let mut watch = client
        .watch_deployment(id)
        .with_backoff(herald_client::Backoff::new(
            std::time::Duration::from_millis(20),
            std::time::Duration::from_millis(200),
        ));
    let mut seen = Vec::new();
    while seen.len() < 50 {
        let event = tokio::time::timeout(PATIENCE, watch.next())
            .await
            .expect("an event in time")
            .expect("the watch is open")
            .expect("no error");
        seen.extend(line_numbers(std::slice::from_ref(&event)));
    }

    let app = app.restart_in_place().await;
    let (_, worker) = people(&app).await;
    worker.append_range(id, 51, 100, 10).await;
    worker.succeed(id).await;
    let mut last_status = None;
    while let Some(event) = tokio::time::timeout(PATIENCE, watch.next())
        .await
        .expect("the watch goes on, then ends")
    {
        let event = event.expect("no error: the restart is retried");
        seen.extend(line_numbers(std::slice::from_ref(&event)));
        last_status = status_of(&event).cloned().or(last_status);
    }
    assert_eq!(seen, range(1, 100), "every line once, in order");
    assert_eq!(
        last_status.expect("a status").status,
        DeploymentState::Success as i32,
        "and the watch ends after the final status"
    );
}

#[tokio::test]
async fn the_same_deployment_over_the_websocket_shows_the_same_events_as_over_grpc() {
    let app = spawn_app().await;
    let (alice, worker) = people(&app).await;
    let id = alice.create("web").await.id;
    worker.start(id).await.unwrap();
    worker
        .report(id, DeploymentStage::Cloning, 10)
        .await
        .unwrap();
    worker.append_range(id, 1, 25, 10).await;
    worker.succeed(id).await;

    let epoch = app.store.epoch().to_owned();
    let grpc = alice
        .try_watch(id, Some(at(0, &epoch)), None)
        .await
        .unwrap()
        .until_end()
        .await;
    let edge = spawn_edge(&app).await;
    let mut ws = edge.connect_as(&app.token("alice", &[])).await;
    let reply = ws
        .request(
            "subscribe",
            json!({ "topic": format!("deployment:{id}"), "since": { "offset": "0", "epoch": epoch } }),
        )
        .await;
    assert_eq!(reply["result"]["recovered"], true, "{reply}");
    let mut pushed = Vec::new();
    for _ in 0..grpc.len() {
        pushed.push(ws.next_event().await);
    }
    for (over_grpc, over_ws) in grpc.iter().zip(&pushed) {
        assert_eq!(
            over_ws["offset"].as_str(),
            Some(position(over_grpc).offset.to_string().as_str())
        );
        let (key, body): (&str, Value) = match &over_grpc.event {
            // In the proto3 JSON mapping, as the edge writes it (timestamps with `Z`).
            Some(Part::Status(s)) => (
                "deploymentStatus",
                herald_edge::protocol::to_json("herald.v1.DeploymentStatus", s).unwrap(),
            ),
            Some(Part::Logs(l)) => (
                "deploymentLogs",
                herald_edge::protocol::to_json("herald.v1.DeploymentLogs", l).unwrap(),
            ),
            None => panic!("empty watch message"),
        };
        assert_eq!(over_ws["event"][key], body, "{over_ws}");
    }
    assert_eq!(line_numbers(&grpc), range(1, 25));
}
