//! Deployment monitoring: one build writing log lines to many watchers, and the catch-up of a
//! long log, over gRPC and the WebSocket edge, on SQLite or PostgreSQL.
//!
//! ```sh
//! cargo build --release -p herald-bench --example deployments
//! ./target/release/examples/deployments                                   # SQLite
//! ./target/release/examples/deployments --database-url postgres://postgres@127.0.0.1:54329/deploy
//! ./target/release/examples/deployments --phases live --rate 20000 --watchers 100
//! ```
//!
//! One process: a backend on 127.0.0.1:0, an edge in front of it for the WebSocket phase, and
//! the clients, all on the same runtime; every figure is server and clients together, on the
//! same cores. Phases:
//!
//! 1. **live**: a deployment is created and started; `--watchers` `Deployments/Watch` streams
//!    (over `--connections` HTTP/2 connections) follow it while the worker streams
//!    `AppendLogs` at `--rate` lines/s in `--chunks-per-second` chunks for `--measure`. Each
//!    line carries its send time in `time`; every watcher (a lean client: it decodes each
//!    line's number and time, not its text) checks the numbers of the lines it receives and
//!    takes the first line of each chunk as a latency sample (worker's send to the watcher's
//!    receipt: the worker's leg, the chunk's transaction, the relay, the fan-out). Reported:
//!    lines written/s, lines delivered/s (all watchers), whether every watcher got every line
//!    in order, the latency p50/p99/max, CPU.
//! 2. **catch-up**: a deployment with `--log-lines` lines (chunks of `--fill-chunk`), finished;
//!    then one `Watch` from the start reads the whole log until the stream ends OK (lines/s);
//!    then one WebSocket subscribes to `deployment:<id>` from offset 0 through the edge and
//!    reads every chunk event (lines/s).
//!
//! The last line of output is one JSON object with every figure.

mod support;

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use herald_proto::v1::{
    DeploymentState, DeploymentsAppendLogsResponse, DeploymentsCreateRequest,
    DeploymentsFinishRequest, DeploymentsStartRequest, LogChunk, LogStream, WatchDeploymentRequest,
    deployments_client::DeploymentsClient, log_chunk::Line,
};
use serde_json::{Value, json};
use support::{
    BoxError, CpuClock, Edge, Server, authorized, json_number, latency_summary, load_average, token,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_tungstenite::tungstenite::Message;
use tonic::transport::Channel;

/// How long a phase may go without progress before it gives up and reports what is missing.
const STALL: Duration = Duration::from_secs(30);
const OWNER: &str = "alice";
const WORKER: &str = "bench-worker";

#[derive(Debug, Parser)]
#[command(about = "Deployment monitoring: live log fan-out and log catch-up")]
struct Args {
    /// PostgreSQL URL; default: SQLite in a temporary directory.
    #[arg(long)]
    database_url: Option<String>,
    /// Phases to run, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "live,catch-up")]
    phases: Vec<Phase>,
    /// Lines per second the worker writes in the live phase.
    #[arg(long, default_value_t = 20_000)]
    rate: u64,
    /// Chunks (transactions) per second the worker's lines are batched into.
    #[arg(long, default_value_t = 20)]
    chunks_per_second: u64,
    /// Watchers following the live build.
    #[arg(long, default_value_t = 100)]
    watchers: usize,
    /// HTTP/2 connections the watchers share.
    #[arg(long, default_value_t = 10)]
    connections: usize,
    /// How long the worker writes in the live phase.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    measure: Duration,
    /// Lines of the log the catch-up phase reads.
    #[arg(long, default_value_t = 100_000)]
    log_lines: u64,
    /// Lines per chunk while filling the catch-up log (a chunk is one event: with the default,
    /// more events than the broker caches, so the catch-up reads the database).
    #[arg(long, default_value_t = 50)]
    fill_chunk: u64,
    /// Bytes of text per line.
    #[arg(long, default_value_t = 80)]
    line_bytes: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Phase {
    Live,
    CatchUp,
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HERALD_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .with_writer(std::io::stderr)
        .init();
    let dir = tempfile::tempdir()?;
    let database = if args.database_url.is_some() {
        "PostgreSQL"
    } else {
        "SQLite"
    };
    let server = Server::start(
        support::config(args.database_url.clone(), dir.path()),
        "127.0.0.1:0",
    )
    .await?;
    println!(
        "# deployments benchmark on {database}, backend on {}, load average {}",
        server.addr,
        load_average()
    );
    let mut report = json!({ "database": database, "load_average_before": load_average() });
    if args.phases.contains(&Phase::Live) {
        let live = live(&args, &server).await?;
        println!("{}", live.describe(&args));
        report["live"] = live.json();
    }
    if args.phases.contains(&Phase::CatchUp) {
        let edge = Edge::start(server.addr).await?;
        let catch_up = catch_up(&args, &server, &edge).await?;
        println!("{}", catch_up.describe());
        report["catch_up"] = catch_up.json();
        edge.stop().await;
    }
    report["load_average_after"] = json!(load_average());
    println!("{report}");
    server.stop().await?;
    Ok(())
}

async fn connect(addr: std::net::SocketAddr) -> Result<Channel, BoxError> {
    Ok(Channel::from_shared(format!("http://{addr}"))?
        .tcp_nodelay(true)
        .connect()
        .await?)
}

/// `herald.v1.DeploymentEvent` read for what the benchmark checks: each line's number and
/// time (the text and the status are skipped by the decoder, as a lean client would).
#[derive(Clone, PartialEq, prost::Message)]
struct LeanWatchEvent {
    #[prost(message, optional, tag = "2")]
    logs: Option<LeanLogs>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct LeanLogs {
    #[prost(message, repeated, tag = "2")]
    lines: Vec<LeanLine>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct LeanLine {
    #[prost(uint64, tag = "1")]
    number: u64,
    #[prost(message, optional, tag = "4")]
    time: Option<pbjson_types::Timestamp>,
}

/// `Deployments/Watch` of `id` from the start, decoding [`LeanWatchEvent`]s.
async fn watch(
    channel: Channel,
    token: &str,
    id: u64,
) -> Result<tonic::Streaming<LeanWatchEvent>, tonic::Status> {
    let request = authorized(
        token,
        WatchDeploymentRequest {
            deployment_id: id,
            ..WatchDeploymentRequest::default()
        },
    );
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|error| tonic::Status::unavailable(format!("connection not ready: {error}")))?;
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/herald.v1.Deployments/Watch");
    let codec =
        herald_proto::codec::HeraldCodec::<WatchDeploymentRequest, LeanWatchEvent>::default();
    Ok(grpc
        .server_streaming(request, path, codec)
        .await?
        .into_inner())
}

/// A deployment created by the owner and started by the worker: its id.
async fn started(client: &mut DeploymentsClient<Channel>) -> Result<u64, BoxError> {
    let created = client
        .create(authorized(
            &token(OWNER, &[]),
            DeploymentsCreateRequest {
                application: "bench".into(),
                git_ref: "main".into(),
                description: None,
            },
        ))
        .await?
        .into_inner();
    let id = created.deployment.map(|d| d.id).ok_or("no deployment")?;
    client
        .start(authorized(
            &token(WORKER, &["service"]),
            DeploymentsStartRequest { deployment_id: id },
        ))
        .await?;
    Ok(id)
}

async fn finish(client: &mut DeploymentsClient<Channel>, id: u64) -> Result<(), BoxError> {
    client
        .finish(authorized(
            &token(WORKER, &["service"]),
            DeploymentsFinishRequest {
                deployment_id: id,
                result: DeploymentState::Success as i32,
                ..DeploymentsFinishRequest::default()
            },
        ))
        .await?;
    Ok(())
}

/// The worker's `AppendLogs` stream: chunks sent on the channel go out as they come; the task
/// answers once the channel is dropped and the stream ends.
fn append_logs(
    channel: Channel,
) -> (
    mpsc::Sender<LogChunk>,
    tokio::task::JoinHandle<Result<tonic::Response<DeploymentsAppendLogsResponse>, tonic::Status>>,
) {
    let (tx, rx) = mpsc::channel(16);
    let mut worker = DeploymentsClient::new(channel);
    let appending = tokio::spawn(async move {
        worker
            .append_logs(authorized(
                &token(WORKER, &["service"]),
                ReceiverStream::new(rx),
            ))
            .await
    });
    (tx, appending)
}

fn chunk(id: u64, lines: u64, text: &str) -> LogChunk {
    let time = herald_proto::timestamp(SystemTime::now());
    LogChunk {
        deployment_id: id,
        lines: (0..lines)
            .map(|_| Line {
                text: text.to_owned(),
                stream: LogStream::Stdout as i32,
                time: Some(time),
            })
            .collect(),
    }
}

fn micros_since(time: &pbjson_types::Timestamp) -> i64 {
    let now = herald_proto::timestamp(SystemTime::now());
    (now.seconds - time.seconds) * 1_000_000 + i64::from((now.nanos - time.nanos) / 1000)
}

/// What one watcher saw.
#[derive(Debug, Default)]
struct WatcherTally {
    lines: u64,
    /// Lines whose number was not the one after the previous line's.
    out_of_order: u64,
    ended_ok: bool,
    error: Option<String>,
}

#[derive(Debug)]
struct Live {
    written: u64,
    write_seconds: f64,
    delivered: u64,
    deliver_seconds: f64,
    watchers: usize,
    complete_watchers: usize,
    out_of_order: u64,
    errors: Vec<String>,
    latency_us: Vec<i64>,
    cpu_cores: f64,
}

async fn live(args: &Args, server: &Server) -> Result<Live, BoxError> {
    let channels = {
        let mut channels = Vec::new();
        for _ in 0..args.connections.max(1) {
            channels.push(connect(server.addr).await?);
        }
        channels
    };
    let mut client = DeploymentsClient::new(channels[0].clone());
    let id = started(&mut client).await?;
    let owner = token(OWNER, &[]);
    let latency = Arc::new(Mutex::new(Vec::new()));
    let measuring = Arc::new(AtomicBool::new(true));
    let subscribed = Arc::new(AtomicU64::new(0));
    let mut watchers = tokio::task::JoinSet::new();
    for n in 0..args.watchers {
        let channel = channels[n % channels.len()].clone();
        let (latency, measuring, subscribed, owner) = (
            latency.clone(),
            measuring.clone(),
            subscribed.clone(),
            owner.clone(),
        );
        watchers.spawn(async move {
            let mut tally = WatcherTally::default();
            let mut stream = match watch(channel, &owner, id).await {
                Ok(stream) => stream,
                Err(status) => {
                    subscribed.fetch_add(1, Ordering::Relaxed);
                    tally.error = Some(format!("{:?}: {}", status.code(), status.message()));
                    return tally;
                }
            };
            subscribed.fetch_add(1, Ordering::Relaxed);
            let mut samples = Vec::new();
            let mut next_line = 1;
            loop {
                match tokio::time::timeout(STALL, stream.next()).await {
                    Ok(Some(Ok(event))) => {
                        if let Some(logs) = event.logs {
                            if let Some(time) = logs.lines.first().and_then(|l| l.time.as_ref())
                                && measuring.load(Ordering::Relaxed)
                            {
                                samples.push(micros_since(time));
                            }
                            for line in &logs.lines {
                                if line.number != next_line {
                                    tally.out_of_order += 1;
                                }
                                next_line = line.number + 1;
                            }
                            tally.lines += logs.lines.len() as u64;
                        }
                    }
                    Ok(Some(Err(status))) => {
                        tally.error = Some(format!("{:?}: {}", status.code(), status.message()));
                        break;
                    }
                    Ok(None) => {
                        tally.ended_ok = true;
                        break;
                    }
                    Err(_) => {
                        tally.error = Some(format!("stalled for {STALL:?}"));
                        break;
                    }
                }
            }
            latency.lock().expect("not poisoned").extend(samples);
            tally
        });
    }
    // Every Watch answered (a refused one counts too: its tally says why).
    while subscribed.load(Ordering::Relaxed) < args.watchers as u64 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A moment for every Watch to pass its snapshot and go live.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let cpu = CpuClock::start();
    let per_chunk = (args.rate / args.chunks_per_second.max(1)).max(1);
    let chunks = args.measure.as_secs_f64() * args.chunks_per_second as f64;
    let chunks = chunks.round() as u64;
    let text = "x".repeat(args.line_bytes);
    let (tx, appending) = append_logs(connect(server.addr).await?);
    let started_at = Instant::now();
    let mut ticks = tokio::time::interval(Duration::from_secs(1) / args.chunks_per_second as u32);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    for _ in 0..chunks {
        ticks.tick().await;
        tx.send(chunk(id, per_chunk, &text)).await?;
    }
    drop(tx);
    let appended = appending.await??.into_inner();
    let write_seconds = started_at.elapsed().as_secs_f64();
    measuring.store(false, Ordering::Relaxed);
    finish(&mut client, id).await?;
    let mut delivered = 0;
    let mut complete_watchers = 0;
    let mut out_of_order = 0;
    let mut errors = Vec::new();
    let written = appended.last_line;
    while let Some(tally) = watchers.join_next().await {
        let tally = tally?;
        delivered += tally.lines;
        out_of_order += tally.out_of_order;
        if tally.ended_ok && tally.lines == written && tally.out_of_order == 0 {
            complete_watchers += 1;
        }
        errors.extend(tally.error);
    }
    let deliver_seconds = started_at.elapsed().as_secs_f64();
    let latency_us = std::mem::take(&mut *latency.lock().expect("not poisoned"));
    Ok(Live {
        written,
        write_seconds,
        delivered,
        deliver_seconds,
        watchers: args.watchers,
        complete_watchers,
        out_of_order,
        errors,
        latency_us,
        cpu_cores: cpu.cores(),
    })
}

impl Live {
    fn describe(&self, args: &Args) -> String {
        format!(
            "live: {} lines written in {:.1} s ({:.0} lines/s asked, {:.0} written) to {} watchers: \
             {:.0} lines/s delivered, {} of {} watchers got every line in order and ended OK \
             ({} out of order, errors {:?}); first line of a chunk, send to watcher: {}; CPU {:.2} cores",
            self.written,
            self.write_seconds,
            args.rate,
            self.written as f64 / self.write_seconds,
            self.watchers,
            self.delivered as f64 / self.deliver_seconds,
            self.complete_watchers,
            self.watchers,
            self.out_of_order,
            summarize(&self.errors),
            latency_summary(self.latency_us.clone()),
            self.cpu_cores,
        )
    }

    fn json(&self) -> Value {
        let mut sorted = self.latency_us.clone();
        sorted.sort_unstable();
        let at = |q: f64| {
            sorted
                .get(((sorted.len().max(1) - 1) as f64 * q).round() as usize)
                .map_or(0.0, |us| *us as f64 / 1000.0)
        };
        json!({
            "lines_written": self.written,
            "lines_written_per_s": self.written as f64 / self.write_seconds,
            "lines_delivered_per_s": self.delivered as f64 / self.deliver_seconds,
            "watchers": self.watchers,
            "complete_watchers": self.complete_watchers,
            "out_of_order": self.out_of_order,
            "errors": self.errors.len(),
            "latency_p50_ms": at(0.5),
            "latency_p99_ms": at(0.99),
            "latency_max_ms": at(1.0),
            "cpu_cores": self.cpu_cores,
        })
    }
}

fn summarize(messages: &[String]) -> Vec<(String, usize)> {
    let mut counts: Vec<(String, usize)> = Vec::new();
    for message in messages {
        match counts.iter_mut().find(|(m, _)| m == message) {
            Some((_, n)) => *n += 1,
            None => counts.push((message.clone(), 1)),
        }
    }
    counts
}

#[derive(Debug)]
struct CatchUp {
    lines: u64,
    fill_seconds: f64,
    grpc_lines: u64,
    grpc_seconds: f64,
    grpc_cpu: f64,
    ws_lines: u64,
    ws_seconds: f64,
    ws_cpu: f64,
    ws_ending: Option<String>,
    /// History pages each catch-up read: (database, cache).
    grpc_pages: (u64, u64),
    ws_pages: (u64, u64),
}

async fn catch_up(args: &Args, server: &Server, edge: &Edge) -> Result<CatchUp, BoxError> {
    let channel = connect(server.addr).await?;
    let mut client = DeploymentsClient::new(channel.clone());
    let id = started(&mut client).await?;
    let text = "x".repeat(args.line_bytes);
    let filling = Instant::now();
    let chunks = args.log_lines.div_ceil(args.fill_chunk.max(1));
    let (tx, appending) = append_logs(channel.clone());
    for n in 0..chunks {
        let lines = args.fill_chunk.min(args.log_lines - n * args.fill_chunk);
        tx.send(chunk(id, lines, &text)).await?;
    }
    drop(tx);
    let appended = appending.await??.into_inner();
    finish(&mut client, id).await?;
    let fill_seconds = filling.elapsed().as_secs_f64();
    let lines = appended.last_line;

    // gRPC: one Watch from the start, to its end after the terminal status.
    let pages = server.page_counts();
    let cpu = CpuClock::start();
    let started_at = Instant::now();
    let mut stream = watch(channel.clone(), &token(OWNER, &[]), id).await?;
    let mut grpc_lines = 0;
    while let Some(event) = tokio::time::timeout(STALL, stream.next()).await? {
        if let Some(logs) = event?.logs {
            grpc_lines += logs.lines.len() as u64;
        }
    }
    let grpc_seconds = started_at.elapsed().as_secs_f64();
    let grpc_cpu = cpu.cores();
    let grpc_pages = server.pages_since(pages);

    // The edge: one WebSocket subscribed to the deployment's topic from offset 0.
    let top = appended.position.ok_or("no position")?;
    let (mut socket, _) =
        tokio_tungstenite::connect_async(format!("ws://{}/ws", edge.addr)).await?;
    let auth = json!({"id": 1, "method": "auth", "params": {"token": token(OWNER, &[])}});
    let subscribe = json!({"id": 2, "method": "subscribe", "params": {
        "topic": format!("deployment:{id}"),
        "since": {"offset": "0", "epoch": top.epoch},
    }});
    socket.send(Message::text(auth.to_string())).await?;
    let pages = server.page_counts();
    let cpu = CpuClock::start();
    let started_at = Instant::now();
    socket.send(Message::text(subscribe.to_string())).await?;
    let mut ws_lines = 0;
    let mut ws_ending = None;
    let mut last_offset = 0;
    while last_offset < top.offset {
        let text = match tokio::time::timeout(STALL, socket.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => text,
            Ok(Some(Ok(Message::Close(frame)))) => {
                ws_ending = Some(format!("closed {frame:?}"));
                break;
            }
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(error))) => {
                ws_ending = Some(format!("socket error: {error}"));
                break;
            }
            Ok(None) => {
                ws_ending = Some("socket ended".into());
                break;
            }
            Err(_) => {
                ws_ending = Some(format!("stalled for {STALL:?}"));
                break;
            }
        };
        if text.starts_with("{\"id\":") {
            let reply: Value = serde_json::from_str(&text)?;
            if let Some(error) = reply.get("error") {
                return Err(format!("the edge refused request {}: {error}", reply["id"]).into());
            }
            continue;
        }
        if text.contains("\"event\":") {
            // A lean client: count the lines without building the JSON tree.
            ws_lines += text.matches("\"number\":").count() as u64;
            if let Some(offset) = json_number(&text, "\"offset\":") {
                last_offset = offset;
            }
        } else if text.contains("\"unsubscribed\":") {
            ws_ending = Some(text.to_string());
            break;
        }
    }
    let ws_seconds = started_at.elapsed().as_secs_f64();
    let ws_cpu = cpu.cores();
    let ws_pages = server.pages_since(pages);
    let _ = socket.close(None).await;
    Ok(CatchUp {
        lines,
        fill_seconds,
        grpc_lines,
        grpc_seconds,
        grpc_cpu,
        ws_lines,
        ws_seconds,
        ws_cpu,
        ws_ending,
        grpc_pages,
        ws_pages,
    })
}

impl CatchUp {
    fn describe(&self) -> String {
        format!(
            "catch-up of a {}-line log (filled in {:.1} s): gRPC Watch {} lines in {:.2} s = {:.0} lines/s \
             (CPU {:.2} cores, pages {} database + {} cache); WebSocket {} lines in {:.2} s = {:.0} lines/s \
             (CPU {:.2} cores, pages {} database + {} cache){}",
            self.lines,
            self.fill_seconds,
            self.grpc_lines,
            self.grpc_seconds,
            self.grpc_lines as f64 / self.grpc_seconds,
            self.grpc_cpu,
            self.grpc_pages.0,
            self.grpc_pages.1,
            self.ws_lines,
            self.ws_seconds,
            self.ws_lines as f64 / self.ws_seconds,
            self.ws_cpu,
            self.ws_pages.0,
            self.ws_pages.1,
            self.ws_ending
                .as_ref()
                .map(|e| format!("; ended early: {e}"))
                .unwrap_or_default(),
        )
    }

    fn json(&self) -> Value {
        json!({
            "lines": self.lines,
            "grpc_lines": self.grpc_lines,
            "grpc_lines_per_s": self.grpc_lines as f64 / self.grpc_seconds,
            "ws_lines": self.ws_lines,
            "ws_lines_per_s": self.ws_lines as f64 / self.ws_seconds,
            "ws_ended_early": self.ws_ending,
            "grpc_pages_database": self.grpc_pages.0,
            "ws_pages_database": self.ws_pages.0,
        })
    }
}
