//! Deployment monitoring benchmark (docs/deployments.md, "Benchmark"): one build writing
//! `--rate` lines/s to `--watchers` gRPC watchers (lines delivered/s, append-to-delivery
//! latency), then the catch-up of the whole log by one new watcher over gRPC and over the
//! edge's WebSocket (lines/s). Everything runs in this process on loopback; the database is
//! the one `HERALD_TEST_DATABASE` selects (SQLite, or a throwaway PostgreSQL cluster).
//!
//! ```sh
//! cargo run --release -p herald-e2e --example deploy_bench                                # SQLite
//! HERALD_TEST_DATABASE=postgres cargo run --release -p herald-e2e --example deploy_bench  # PostgreSQL
//! ```
//!
//! Bounded: the build writes for `--seconds` and every phase stops by itself.

use std::time::{Duration, Instant, SystemTime};

use futures_util::{SinkExt, StreamExt};
use herald_e2e::{TestApp, edge::spawn_edge, spawn_app_with};
use herald_proto::v1::{
    DeploymentState, DeploymentsAppendLogBatchRequest, DeploymentsCreateRequest,
    DeploymentsFinishRequest, DeploymentsStartRequest, LogChunk, LogStream, WatchDeploymentRequest,
    deployment_event::Event as Part, deployments_client::DeploymentsClient, log_chunk::Line,
};
use tokio_tungstenite::tungstenite::Message;
use tonic::{Request, transport::Channel};

struct Args {
    watchers: usize,
    rate: u64,
    chunk: u64,
    seconds: u64,
}

fn args() -> Args {
    let mut args = Args {
        watchers: 100,
        rate: 20_000,
        chunk: 1_000,
        seconds: 10,
    };
    let mut given = std::env::args().skip(1);
    while let Some(flag) = given.next() {
        let value: u64 = given
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{flag} needs a number"));
        match flag.as_str() {
            "--watchers" => args.watchers = value as usize,
            "--rate" => args.rate = value,
            "--chunk" => args.chunk = value,
            "--seconds" => args.seconds = value,
            other => panic!("unknown flag {other}: --watchers --rate --chunk --seconds"),
        }
    }
    args
}

fn authorized<T>(token: &str, message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("ascii"),
    );
    request
}

async fn client(app: &TestApp) -> DeploymentsClient<Channel> {
    DeploymentsClient::new(app.endpoint().connect().await.expect("connect"))
        .max_decoding_message_size(16 * 1024 * 1024)
}

fn now_ms() -> i64 {
    let since = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
}

fn percentile(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() {
    let args = args();
    let total_lines = args.rate * args.seconds;
    let app = spawn_app_with(|config| {
        config.deployments.max_log_lines = total_lines + 1;
        config.node.subscriber_queue = 4096;
    })
    .await;
    let owner = app.token("alice", &[]);
    let worker = app.token("builder", &["service"]);
    let mut api = client(&app).await;
    let id = api
        .create(authorized(
            &owner,
            DeploymentsCreateRequest {
                application: "bench".into(),
                git_ref: "main".into(),
                description: None,
            },
        ))
        .await
        .expect("create")
        .into_inner()
        .deployment
        .expect("deployment")
        .id;
    api.start(authorized(
        &worker,
        DeploymentsStartRequest { deployment_id: id },
    ))
    .await
    .expect("start");

    // Phase 1: live fan-out.
    let mut watchers = Vec::with_capacity(args.watchers);
    for _ in 0..args.watchers {
        let mut watch_client = client(&app).await;
        let mut stream = watch_client
            .watch(authorized(
                &owner,
                WatchDeploymentRequest {
                    deployment_id: id,
                    since: None,
                    tail_lines: None,
                },
            ))
            .await
            .expect("watch")
            .into_inner();
        watchers.push(tokio::spawn(async move {
            let mut lines = 0u64;
            let mut latencies = Vec::new();
            while let Ok(Some(event)) = stream.message().await {
                if let Some(Part::Logs(logs)) = event.event {
                    let received = now_ms();
                    if let Some(first) = logs.lines.first().and_then(|l| l.time.as_ref()) {
                        latencies.push(
                            received - (first.seconds * 1000 + i64::from(first.nanos / 1_000_000)),
                        );
                    }
                    lines += logs.lines.len() as u64;
                }
            }
            (lines, latencies, Instant::now())
        }));
    }
    let started = Instant::now();
    let chunks = total_lines / args.chunk;
    let every = Duration::from_secs_f64(args.chunk as f64 / args.rate as f64);
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut number = 0u64;
    for _ in 0..chunks {
        ticker.tick().await;
        let time = Some(herald_proto::timestamp(SystemTime::now()));
        let lines = (0..args.chunk)
            .map(|_| {
                number += 1;
                Line {
                    text: format!("\u{1b}[32m   Compiling\u{1b}[0m crate-{number} v1.0.{number}"),
                    stream: LogStream::Stdout as i32,
                    time,
                }
            })
            .collect();
        api.append_log_batch(authorized(
            &worker,
            DeploymentsAppendLogBatchRequest {
                chunk: Some(LogChunk {
                    deployment_id: id,
                    lines,
                }),
            },
        ))
        .await
        .expect("append");
    }
    let written_in = started.elapsed();
    api.finish(authorized(
        &worker,
        DeploymentsFinishRequest {
            deployment_id: id,
            result: DeploymentState::Success as i32,
            error_message: String::new(),
            exit_code: Some(0),
            message: None,
        },
    ))
    .await
    .expect("finish");
    let mut delivered = 0u64;
    let mut latencies = Vec::new();
    let mut last_done = started;
    for watcher in watchers {
        let (lines, mut l, done) = watcher.await.expect("watcher");
        delivered += lines;
        latencies.append(&mut l);
        last_done = last_done.max(done);
    }
    latencies.sort_unstable();
    let span = last_done.duration_since(started).as_secs_f64();
    println!("database: {:?}", herald_e2e::TestDatabase::from_env());
    println!(
        "live: {} lines written in {:.2}s ({:.0} lines/s offered), {} watchers, {} lines delivered \
         ({:.0} lines/s), {} complete watchers; append-to-delivery p50 {} ms, p99 {} ms, max {} ms",
        total_lines,
        written_in.as_secs_f64(),
        total_lines as f64 / written_in.as_secs_f64(),
        args.watchers,
        delivered,
        delivered as f64 / span,
        delivered / total_lines.max(1),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or_default(),
    );

    // Phase 2: catch-up of the whole log over gRPC.
    let started = Instant::now();
    let mut watch_client = client(&app).await;
    let mut stream = watch_client
        .watch(authorized(
            &owner,
            WatchDeploymentRequest {
                deployment_id: id,
                since: None,
                tail_lines: None,
            },
        ))
        .await
        .expect("watch")
        .into_inner();
    let mut lines = 0u64;
    while let Ok(Some(event)) = stream.message().await {
        if let Some(Part::Logs(logs)) = event.event {
            lines += logs.lines.len() as u64;
        }
    }
    let took = started.elapsed().as_secs_f64();
    println!(
        "catch-up over gRPC (Watch): {lines} lines in {took:.2}s = {:.0} lines/s",
        lines as f64 / took
    );

    // Phase 3: catch-up over the edge's WebSocket (raw topic subscription from offset 0).
    let edge = spawn_edge(&app).await;
    let (mut socket, _) = tokio_tungstenite::connect_async(edge.url())
        .await
        .expect("connect to the edge");
    let send = |value: serde_json::Value| Message::text(value.to_string());
    socket
        .send(send(
            serde_json::json!({"id": 1, "method": "auth", "params": {"token": owner}}),
        ))
        .await
        .expect("auth");
    let started = Instant::now();
    socket
        .send(send(
            serde_json::json!({"id": 2, "method": "subscribe", "params": {
                "topic": format!("deployment:{id}"),
                "since": {"offset": "0", "epoch": app.store.epoch()},
            }}),
        ))
        .await
        .expect("subscribe");
    let mut lines = 0u64;
    let deadline = Instant::now() + Duration::from_secs(300);
    while Instant::now() < deadline {
        let Some(Ok(Message::Text(text))) = socket.next().await else {
            break;
        };
        let frame: serde_json::Value = serde_json::from_str(&text).expect("JSON");
        let event = &frame["event"];
        if let Some(chunk) = event["deploymentLogs"]["lines"].as_array() {
            lines += chunk.len() as u64;
        }
        if event["deploymentStatus"]["status"] == "DEPLOYMENT_STATE_SUCCESS" {
            break;
        }
    }
    let took = started.elapsed().as_secs_f64();
    println!(
        "catch-up over the edge (WebSocket JSON): {lines} lines in {took:.2}s = {:.0} lines/s",
        lines as f64 / took
    );
    edge.shutdown().await;
    app.shutdown().await.expect("stop");
}
