//! Durable topics: catch-up from the database and resume after a restart, over gRPC and the
//! WebSocket edge, on SQLite or PostgreSQL.
//!
//! ```sh
//! cargo build --release -p herald-bench --example catchup
//! ./target/release/examples/catchup                                  # SQLite, temporary directory
//! ./target/release/examples/catchup --database-url postgres://postgres@127.0.0.1:54329/catchup
//! ./target/release/examples/catchup --phases grpc,ws                 # only the catch-ups
//! ./target/release/examples/catchup --phases resume --resumers 10000 # only the restart
//! ```
//!
//! One process: a backend on 127.0.0.1:0 (`Config::default()` with an HS256 secret), an edge
//! in front of it for the WebSocket phase, and the clients, all on the same runtime: every
//! figure is server and clients together, on the same cores. Phases:
//!
//! 1. **fill**: `--events` events on one durable topic (`order:catchup-<run>`), committed in
//!    transactions of `--batch`, then a wait until the relay has published every one (the
//!    broker's cache then holds the newest `retention.history_max_events`; everything older
//!    is read from the database).
//! 2. **grpc**: one `Rooms/Subscribe` with `since {0, epoch}` reads them all: events/s from
//!    the subscribe call to the last event; offsets 1..N checked (lost, duplicated, reordered).
//! 3. **ws**: the same through the edge on one WebSocket (`auth`, then `subscribe` with
//!    `since`), and whether the socket or the subscription was ever ended as slow (3001).
//! 4. **resume**: `--resumers` gRPC streams over `--resume-topics` durable topics,
//!    `--streams-per-connection` per HTTP/2 connection. Each reads `--before` events per
//!    topic and keeps its last position; the backend shuts down (every stream ends with
//!    "shutting down"), `--during` events per topic are committed while it is down, it starts
//!    again on the same database and address, and every stream resumes with `since` = its
//!    last position while `--after` more events per topic are committed. Reported: the time
//!    from the restart until every stream is subscribed again, until every stream has every
//!    event it missed while the backend was down, and until it has the later ones too; lost
//!    and duplicated events.
//!
//! Clients decode only what they check (offset, epoch; a JSON push's offset), as a lean
//! client would. The last line of output is one JSON object with every figure.

mod support;

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use herald_backend::{
    Config,
    store::{Store, StoreError, entity::outbox_pending},
    topic::Topic,
};
use herald_proto::{
    codec::HeraldCodec,
    codes::{RETRY_AFTER_TRAILER, close_code_of},
    v1::{CloseCode, StreamPosition, SubscribeRequest, Subscribed},
};
use sea_orm::{ConnectionTrait, EntityTrait, PaginatorTrait};
use serde_json::{Value, json};
use support::{BoxError, CpuClock, Edge, Server, json_number, load_average};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_tungstenite::tungstenite::Message;
use tonic::{
    Request, Status, Streaming,
    codegen::http::uri::PathAndQuery,
    transport::{Channel, Endpoint},
};

/// How long a phase may go without progress before it gives up and reports what is missing.
const STALL: Duration = Duration::from_secs(30);

#[derive(Debug, Parser)]
#[command(about = "Catch-up and resume of durable topics: gRPC, WebSocket, restart")]
struct Args {
    /// PostgreSQL URL (an empty database); default: SQLite in a temporary directory.
    #[arg(long)]
    database_url: Option<String>,
    /// Phases to run, comma-separated: grpc, ws, resume (grpc and ws share one fill).
    #[arg(long, value_delimiter = ',', default_value = "grpc,ws,resume")]
    phases: Vec<Phase>,
    /// Events on the catch-up topic.
    #[arg(long, default_value_t = 100_000)]
    events: u64,
    /// Events per transaction while filling.
    #[arg(long, default_value_t = 1000)]
    batch: u64,
    /// Streams that resume after the restart.
    #[arg(long, default_value_t = 10_000)]
    resumers: usize,
    /// Durable topics the resuming streams are spread over, round-robin.
    #[arg(long, default_value_t = 1000)]
    resume_topics: usize,
    /// Resuming streams per HTTP/2 connection.
    #[arg(long, default_value_t = 500)]
    streams_per_connection: usize,
    /// Streams opening at once before the restart (each until it has read `--before`).
    #[arg(long, default_value_t = 500)]
    open_in_flight: usize,
    /// Streams resuming at once after the restart (each until it is subscribed); 0: all of
    /// them at once, as clients reconnecting to a restarted server do.
    #[arg(long, default_value_t = 0)]
    resume_in_flight: usize,
    /// Events per resume topic before the restart (each stream reads them first).
    #[arg(long, default_value_t = 5)]
    before: u64,
    /// Events per resume topic committed while the backend is down.
    #[arg(long, default_value_t = 10)]
    during: u64,
    /// Events per resume topic committed right after the restart, while streams resume.
    #[arg(long, default_value_t = 5)]
    after: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Phase {
    Grpc,
    Ws,
    Resume,
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HERALD_LOG")
                // Warnings would print one line per refused subscribe in a reconnect storm;
                // the summary counts them. HERALD_LOG=warn shows them.
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .with_writer(std::io::stderr)
        .init();
    let dir = tempfile::tempdir()?;
    let config = support::config(args.database_url.clone(), dir.path());
    let database = if args.database_url.is_some() {
        "PostgreSQL"
    } else {
        "SQLite"
    };
    let token = support::token("bench", &["service"]);
    // Topic names unique per run, so a database used before still starts each topic at 1.
    let run = format!("{:x}", std::process::id() as u64 ^ now_ms());

    let mut server = Server::start(config.clone(), "127.0.0.1:0").await?;
    let epoch = server.store.epoch().to_owned();
    println!(
        "{database}: backend on {}, epoch {epoch}, {} cores, load average before: {}",
        server.addr,
        std::thread::available_parallelism().map_or(0, usize::from),
        load_average()
    );
    let mut report = json!({
        "bench": "catchup",
        "database": database,
        "commit": option_env!("HERALD_COMMIT").unwrap_or("unknown"),
        "load_average_before": load_average(),
        "cores": std::thread::available_parallelism().map_or(0, usize::from),
    });

    if args.phases.contains(&Phase::Grpc) || args.phases.contains(&Phase::Ws) {
        let topic = Topic::parse(&format!("order:catchup-{run}"))?;
        let fill = fill(&server.store, &topic, args.events, args.batch).await?;
        println!(
            "fill: {} events in transactions of {} committed in {:.2} s ({:.0} events/s), all relayed after {:.2} s",
            args.events,
            args.batch,
            fill.committed.as_secs_f64(),
            args.events as f64 / fill.committed.as_secs_f64(),
            fill.relayed.as_secs_f64()
        );
        report["fill"] = json!({
            "events": args.events,
            "batch": args.batch,
            "commit_s": fill.committed.as_secs_f64(),
            "commit_events_per_s": args.events as f64 / fill.committed.as_secs_f64(),
            "relayed_s": fill.relayed.as_secs_f64(),
            "data_bytes": event_data(args.events).to_string().len(),
        });
        if args.phases.contains(&Phase::Grpc) {
            let pages_before = server.page_counts();
            let result = grpc_catch_up(server.addr, &token, &topic, &epoch, args.events).await?;
            let (log_pages, cache_pages) = server.pages_since(pages_before);
            result.print("grpc", database);
            println!("grpc: {log_pages} pages from the database, {cache_pages} from the cache");
            report["grpc"] = result.json();
            report["grpc"]["log_pages"] = json!(log_pages);
            report["grpc"]["cache_pages"] = json!(cache_pages);
        }
        if args.phases.contains(&Phase::Ws) {
            let edge = Edge::start(server.addr).await?;
            let pages_before = server.page_counts();
            let result = ws_catch_up(edge.addr, &token, &topic, &epoch, args.events).await?;
            let (log_pages, cache_pages) = server.pages_since(pages_before);
            result.print("ws", database);
            println!("ws: {log_pages} pages from the database, {cache_pages} from the cache");
            report["ws"] = result.json();
            report["ws"]["log_pages"] = json!(log_pages);
            report["ws"]["cache_pages"] = json!(cache_pages);
            edge.stop().await;
        }
        report["history"] = json!({
            "largest_page_events": server.history_stats().largest_page_events(),
            "largest_page_bytes": server.history_stats().largest_page_bytes(),
        });
    }

    if args.phases.contains(&Phase::Resume) {
        let plan = ResumePlan {
            resumers: args.resumers,
            topics: (0..args.resume_topics.max(1))
                .map(|t| Topic::parse(&format!("order:resume-{run}-{t}")))
                .collect::<Result<_, _>>()?,
            streams_per_connection: args.streams_per_connection.max(1),
            open_in_flight: args.open_in_flight.max(1),
            resume_in_flight: args.resume_in_flight,
            before: args.before,
            during: args.during,
            after: args.after,
        };
        let (result, restarted) = resume(server, &config, &plan, &token, &epoch).await?;
        server = restarted;
        result.print(database, &plan);
        report["resume"] = result.json(&plan);
    }

    report["load_average_after"] = json!(load_average());
    server.stop().await?;
    println!("{report}");
    Ok(())
}

/// The data of every event: an order update of a realistic size.
fn event_data(n: u64) -> Value {
    json!({
        "seq": n,
        "status": "in_transit",
        "courier": "courier-0042",
        "eta_s": 540,
        "position": { "lat": 52.520_008, "lng": 13.404_954 },
    })
}

struct Fill {
    committed: Duration,
    relayed: Duration,
}

/// Commits `events` events to `topic` in transactions of `batch`, then waits for the relay.
async fn fill(store: &Store, topic: &Topic, events: u64, batch: u64) -> Result<Fill, BoxError> {
    let started = Instant::now();
    let mut n = 1;
    while n <= events {
        let mut tx = store.begin().await?;
        for _ in 0..batch.max(1).min(events - n + 1) {
            tx.emit(topic, "order.updated", event_data(n))?;
            n += 1;
        }
        tx.commit().await?;
    }
    let committed = started.elapsed();
    wait_relayed(store).await?;
    // PostgreSQL plans from table statistics, which autovacuum refreshes within a minute of a
    // bulk insert; until then a page read may scan the whole table. Measure the steady state.
    if store.db().get_database_backend() == sea_orm::DatabaseBackend::Postgres {
        store.db().execute_unprepared("ANALYZE outbox").await?;
    }
    Ok(Fill {
        committed,
        relayed: started.elapsed(),
    })
}

/// Waits until no outbox row is pending: the relay has handed every event to the broker.
async fn wait_relayed(store: &Store) -> Result<(), BoxError> {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let pending = outbox_pending::Entity::find().count(store.db()).await?;
        if pending == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("{pending} outbox rows still pending after 300 s").into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Which offsets arrived, how often and in which order, for one stream of `1..=expected`.
#[derive(Debug)]
struct Ledger {
    expected: u64,
    seen: Vec<bool>,
    distinct: u64,
    max: u64,
    duplicated: u64,
    reordered: u64,
    /// Offsets outside `1..=expected`, or of another epoch.
    unexpected: u64,
}

impl Ledger {
    fn new(expected: u64) -> Ledger {
        Ledger {
            expected,
            seen: vec![false; expected as usize + 1],
            distinct: 0,
            max: 0,
            duplicated: 0,
            reordered: 0,
            unexpected: 0,
        }
    }

    fn record(&mut self, offset: u64) {
        let Some(seen) = self.seen.get_mut(offset as usize).filter(|_| offset > 0) else {
            self.unexpected += 1;
            return;
        };
        if *seen {
            self.duplicated += 1;
            return;
        }
        *seen = true;
        self.distinct += 1;
        if offset < self.max {
            self.reordered += 1;
        } else {
            self.max = offset;
        }
    }

    fn complete(&self) -> bool {
        self.distinct == self.expected
    }

    fn lost(&self) -> u64 {
        self.expected - self.distinct
    }

    /// Every offset up to and including this one has arrived.
    fn contiguous(&self) -> u64 {
        self.seen[1..]
            .iter()
            .position(|seen| !seen)
            .map_or(self.expected, |gap| gap as u64)
    }
}

/// The result of one catch-up.
struct CatchUp {
    events: u64,
    /// From the subscribe request to the first event, and to the last.
    first_event: Option<Duration>,
    elapsed: Duration,
    ledger: Ledger,
    recovered: bool,
    /// CPU of the whole process (server and client) over the catch-up, 1.0 = one core.
    cpu_cores: f64,
    /// WebSocket only: slow-consumer endings (close 3001 or `unsubscribed` 3001), other
    /// endings, and the bytes of the event pushes.
    slow_endings: u64,
    other_endings: Vec<String>,
    push_bytes: u64,
}

impl CatchUp {
    fn events_per_s(&self) -> f64 {
        self.ledger.distinct as f64 / self.elapsed.as_secs_f64()
    }

    fn print(&self, lane: &str, database: &str) {
        println!(
            "{lane} catch-up ({database}): {} of {} events in {:.3} s = {:.0} events/s (first after {:.1} ms); \
             lost {} / duplicated {} / reordered {} / unexpected {}; recovered {}; CPU {:.0} %{}",
            self.ledger.distinct,
            self.events,
            self.elapsed.as_secs_f64(),
            self.events_per_s(),
            self.first_event.map_or(f64::NAN, |d| d.as_secs_f64() * 1e3),
            self.ledger.lost(),
            self.ledger.duplicated,
            self.ledger.reordered,
            self.ledger.unexpected,
            self.recovered,
            self.cpu_cores * 100.0,
            if lane == "ws" {
                format!(
                    "; slow-consumer endings {}, other endings {:?}, {:.0} bytes per push",
                    self.slow_endings,
                    self.other_endings,
                    self.push_bytes as f64 / self.ledger.distinct.max(1) as f64
                )
            } else {
                String::new()
            }
        );
    }

    fn json(&self) -> Value {
        json!({
            "events": self.events,
            "received": self.ledger.distinct,
            "elapsed_s": self.elapsed.as_secs_f64(),
            "events_per_s": self.events_per_s(),
            "first_event_ms": self.first_event.map(|d| d.as_secs_f64() * 1e3),
            "lost": self.ledger.lost(),
            "duplicated": self.ledger.duplicated,
            "reordered": self.ledger.reordered,
            "unexpected": self.ledger.unexpected,
            "recovered": self.recovered,
            "cpu_percent": self.cpu_cores * 100.0,
            "slow_consumer_endings": self.slow_endings,
            "other_endings": self.other_endings,
            "push_bytes_avg": (self.push_bytes > 0)
                .then(|| self.push_bytes as f64 / self.ledger.distinct.max(1) as f64),
        })
    }
}

/// `herald.v1.SubscribeResponse` read for what the benchmark checks: `subscribed`, and an
/// event's offset and epoch (every other field is skipped by the decoder).
#[derive(Clone, PartialEq, prost::Message)]
struct LeanFrame {
    #[prost(message, optional, tag = "1")]
    subscribed: Option<Subscribed>,
    #[prost(message, optional, tag = "2")]
    event: Option<LeanEvent>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct LeanEvent {
    #[prost(uint64, tag = "2")]
    offset: u64,
    #[prost(string, tag = "3")]
    epoch: String,
}

fn position(offset: u64, epoch: &str) -> StreamPosition {
    StreamPosition {
        offset,
        epoch: epoch.to_owned(),
    }
}

/// `Rooms/Subscribe` on `channel`, decoding [`LeanFrame`]s.
async fn subscribe(
    channel: Channel,
    token: &str,
    topic: &Topic,
    since: Option<StreamPosition>,
) -> Result<Streaming<LeanFrame>, Status> {
    let mut request = Request::new(SubscribeRequest {
        topic: topic.to_string(),
        since,
    });
    let bearer = format!("Bearer {token}")
        .parse()
        .map_err(|_| Status::invalid_argument("the token is not ASCII"))?;
    request.metadata_mut().insert("authorization", bearer);
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|error| Status::unavailable(format!("connection not ready: {error}")))?;
    let path = PathAndQuery::from_static("/herald.v1.Rooms/Subscribe");
    let codec = HeraldCodec::<SubscribeRequest, LeanFrame>::default();
    Ok(grpc
        .server_streaming(request, path, codec)
        .await?
        .into_inner())
}

async fn connect(addr: SocketAddr) -> Result<Channel, BoxError> {
    Ok(Endpoint::from_shared(format!("http://{addr}"))?
        .tcp_nodelay(true)
        .connect()
        .await?)
}

async fn grpc_catch_up(
    addr: SocketAddr,
    token: &str,
    topic: &Topic,
    epoch: &str,
    events: u64,
) -> Result<CatchUp, BoxError> {
    let channel = connect(addr).await?;
    let cpu = CpuClock::start();
    let started = Instant::now();
    let mut stream = subscribe(channel, token, topic, Some(position(0, epoch))).await?;
    let mut ledger = Ledger::new(events);
    let mut recovered = false;
    let mut first_event = None;
    let mut last_at = started;
    while !ledger.complete() {
        let frame = match tokio::time::timeout(STALL, stream.message()).await {
            Ok(Ok(Some(frame))) => frame,
            Ok(Ok(None)) => break,
            Ok(Err(status)) => {
                eprintln!("grpc catch-up ended: {status}");
                break;
            }
            Err(_) => {
                eprintln!("grpc catch-up stalled for {STALL:?}");
                break;
            }
        };
        if let Some(subscribed) = frame.subscribed {
            recovered = subscribed.recovered;
        }
        if let Some(event) = frame.event {
            first_event.get_or_insert_with(|| started.elapsed());
            if event.epoch == epoch {
                ledger.record(event.offset);
            } else {
                ledger.unexpected += 1;
            }
            last_at = Instant::now();
        }
    }
    Ok(CatchUp {
        events,
        first_event,
        elapsed: last_at - started,
        ledger,
        recovered,
        cpu_cores: cpu.cores(),
        slow_endings: 0,
        other_endings: Vec::new(),
        push_bytes: 0,
    })
}

async fn ws_catch_up(
    edge: SocketAddr,
    token: &str,
    topic: &Topic,
    epoch: &str,
    events: u64,
) -> Result<CatchUp, BoxError> {
    let (mut socket, _) = tokio_tungstenite::connect_async(format!("ws://{edge}/ws")).await?;
    let auth = json!({"id": 1, "method": "auth", "params": {"token": token}});
    let subscribe = json!({"id": 2, "method": "subscribe", "params": {
        "topic": topic.as_str(),
        "since": {"offset": "0", "epoch": epoch},
    }});
    socket.send(Message::text(auth.to_string())).await?;
    let cpu = CpuClock::start();
    let started = Instant::now();
    socket.send(Message::text(subscribe.to_string())).await?;
    let mut ledger = Ledger::new(events);
    let mut recovered = false;
    let mut first_event = None;
    let mut last_at = started;
    let mut slow_endings = 0;
    let mut other_endings = Vec::new();
    let mut push_bytes = 0;
    while !ledger.complete() {
        let message = match tokio::time::timeout(STALL, socket.next()).await {
            Ok(Some(Ok(message))) => message,
            Ok(Some(Err(error))) => {
                other_endings.push(format!("socket error: {error}"));
                break;
            }
            Ok(None) => {
                other_endings.push("socket ended without a close frame".to_owned());
                break;
            }
            Err(_) => {
                other_endings.push(format!("stalled for {STALL:?}"));
                break;
            }
        };
        let text = match message {
            Message::Text(text) => text,
            Message::Close(frame) => {
                let code = frame.as_ref().map_or(1005, |f| u16::from(f.code));
                if code == 3001 {
                    slow_endings += 1;
                }
                other_endings.push(format!("closed {code}"));
                break;
            }
            _ => continue,
        };
        if text.starts_with("{\"id\":") {
            let reply: Value = serde_json::from_str(&text)?;
            if let Some(error) = reply.get("error") {
                return Err(format!("the edge refused request {}: {error}", reply["id"]).into());
            }
            if reply["id"] == 2 {
                recovered = reply["result"]["recovered"] == true;
            }
            continue;
        }
        if text.contains("\"event\":") {
            first_event.get_or_insert_with(|| started.elapsed());
            push_bytes += text.len() as u64;
            match json_number(&text, "\"offset\":") {
                Some(offset) if text.contains(epoch) => ledger.record(offset),
                _ => ledger.unexpected += 1,
            }
            last_at = Instant::now();
        } else if text.contains("\"unsubscribed\":") {
            let push: Value = serde_json::from_str(&text)?;
            if push["unsubscribed"]["code"] == 3001 {
                slow_endings += 1;
            }
            other_endings.push(format!("unsubscribed: {}", push["unsubscribed"]));
            break;
        }
    }
    let _ = socket.close(None).await;
    Ok(CatchUp {
        events,
        first_event,
        elapsed: last_at - started,
        ledger,
        recovered,
        cpu_cores: cpu.cores(),
        slow_endings,
        other_endings,
        push_bytes,
    })
}

struct ResumePlan {
    resumers: usize,
    topics: Vec<Topic>,
    streams_per_connection: usize,
    open_in_flight: usize,
    resume_in_flight: usize,
    before: u64,
    during: u64,
    after: u64,
}

impl ResumePlan {
    fn total(&self) -> u64 {
        self.before + self.during + self.after
    }

    fn connections(&self) -> usize {
        self.resumers.div_ceil(self.streams_per_connection)
    }
}

/// Where the restart is, for the streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Before,
    /// The backend is shutting down: streams that end now are not retried.
    Stopping,
    /// The new backend listens: resume.
    Restarted,
}

/// Progress of the resuming streams, counted as it happens.
#[derive(Debug, Default)]
struct Progress {
    caught_up_before: AtomicUsize,
    ended_by_shutdown: AtomicUsize,
    ended_otherwise: AtomicUsize,
    changed: tokio::sync::Notify,
}

impl Progress {
    fn bump(&self, counter: &AtomicUsize) {
        counter.fetch_add(1, Ordering::Relaxed);
        self.changed.notify_waiters();
    }

    /// Waits until `count()` reaches `target`, or until nothing changed for [`STALL`].
    async fn wait_for(&self, target: usize, count: impl Fn() -> usize) -> bool {
        loop {
            let changed = self.changed.notified();
            if count() >= target {
                return true;
            }
            if tokio::time::timeout(STALL, changed).await.is_err() {
                return count() >= target;
            }
        }
    }
}

/// What one resuming stream saw.
#[derive(Debug)]
struct ResumerReport {
    ledger: Ledger,
    /// Read the `before` events before the restart.
    caught_up: bool,
    /// `subscribed` after the restart, every event published while the backend was down, and
    /// every event.
    resumed_at: Option<Instant>,
    missed_at: Option<Instant>,
    done_at: Option<Instant>,
    /// Subscribe attempts before and after the restart that failed or ended early.
    retries_before: Vec<String>,
    retries: Vec<String>,
    not_recovered: u64,
}

struct ResumeResult {
    opened: Duration,
    shutdown: Duration,
    ended_by_shutdown: usize,
    ended_otherwise: usize,
    committed_while_down: Duration,
    listening: Duration,
    all_resumed: Option<Duration>,
    all_missed: Option<Duration>,
    all_done: Option<Duration>,
    committed_after: Option<Duration>,
    resumed: usize,
    with_missed: usize,
    done: usize,
    lost: u64,
    duplicated: u64,
    reordered: u64,
    unexpected: u64,
    not_recovered: u64,
    retries_before: Vec<String>,
    retries: Vec<String>,
    /// p50, p99, max from the restart to each stream's `subscribed`, and to its last missed event.
    resumed_ms: [f64; 3],
    missed_ms: [f64; 3],
    cpu_cores: f64,
    log_pages: u64,
    cache_pages: u64,
}

async fn resume(
    mut server: Server,
    config: &Config,
    plan: &ResumePlan,
    token: &str,
    epoch: &str,
) -> Result<(ResumeResult, Server), BoxError> {
    let addr = server.addr;
    commit_rounds(&server.store, &plan.topics, 1, plan.before).await?;
    wait_relayed(&server.store).await?;

    let mut channels = Vec::with_capacity(plan.connections());
    for _ in 0..plan.connections() {
        channels.push(connect(addr).await?);
    }
    let progress = Arc::new(Progress::default());
    let (stage_tx, stage) = watch::channel(Stage::Before);
    let opening = Instant::now();
    let open_permits = Arc::new(Semaphore::new(plan.open_in_flight));
    let resume_permits =
        (plan.resume_in_flight > 0).then(|| Arc::new(Semaphore::new(plan.resume_in_flight)));
    let mut streams = Vec::with_capacity(plan.resumers);
    for index in 0..plan.resumers {
        let resumer = Resumer {
            backoff: Backoff::new(index as u64 + 1),
            channel: channels[index / plan.streams_per_connection].clone(),
            token: token.to_owned(),
            topic: plan.topics[index % plan.topics.len()].clone(),
            epoch: epoch.to_owned(),
            before: plan.before,
            missed: plan.before + plan.during,
            total: plan.total(),
            progress: progress.clone(),
            stage: stage.clone(),
            open_permits: open_permits.clone(),
            resume_permits: resume_permits.clone(),
        };
        streams.push(tokio::spawn(resumer.run()));
    }
    let all = plan.resumers;
    if !progress
        .wait_for(all, || progress.caught_up_before.load(Ordering::Relaxed))
        .await
    {
        eprintln!(
            "resume: only {} of {all} streams caught up before the restart",
            progress.caught_up_before.load(Ordering::Relaxed)
        );
    }
    let opened = opening.elapsed();
    println!(
        "resume: {all} streams over {} connections subscribed and read {} events each in {:.2} s",
        plan.connections(),
        plan.before,
        opened.as_secs_f64()
    );

    stage_tx.send_replace(Stage::Stopping);
    let stopping = Instant::now();
    let old_store = server.store.clone();
    server.stop().await?;
    let shutdown = stopping.elapsed();
    let ended = || {
        progress.ended_by_shutdown.load(Ordering::Relaxed)
            + progress.ended_otherwise.load(Ordering::Relaxed)
    };
    progress.wait_for(all, ended).await;

    // While the backend is down, writers keep committing (to the same database).
    let down = Instant::now();
    commit_rounds(&old_store, &plan.topics, plan.before + 1, plan.during).await?;
    let committed_while_down = down.elapsed();
    drop(old_store);

    let cpu = CpuClock::start();
    let restart = Instant::now();
    server = Server::start(config.clone(), &addr.to_string()).await?;
    let listening = restart.elapsed();
    let pages_before = server.page_counts();
    stage_tx.send_replace(Stage::Restarted);
    let writer = {
        let (store, topics, first, rounds) = (
            server.store.clone(),
            plan.topics.clone(),
            plan.before + plan.during + 1,
            plan.after,
        );
        tokio::spawn(async move {
            commit_rounds(&store, &topics, first, rounds).await?;
            Ok::<_, StoreError>(restart.elapsed())
        })
    };

    let mut reports = Vec::with_capacity(all);
    for stream in streams {
        reports.push(stream.await?);
    }
    let cpu_cores = cpu.cores();
    let committed_after = writer.await?.ok();
    let (log_pages, cache_pages) = server.pages_since(pages_before);

    let latest = |at: fn(&ResumerReport) -> Option<Instant>| {
        let times: Option<Vec<Instant>> = reports.iter().map(at).collect();
        times.and_then(|t| t.into_iter().max()).map(|t| t - restart)
    };
    // p50, p99 and max over the streams of the time from the restart to `at`, in ms.
    let percentiles = |at: fn(&ResumerReport) -> Option<Instant>| {
        let mut ms: Vec<f64> = reports
            .iter()
            .filter_map(|r| at(r).map(|t| (t - restart).as_secs_f64() * 1e3))
            .collect();
        ms.sort_by(f64::total_cmp);
        [0.5, 0.99, 1.0].map(|p| {
            ms.get(((ms.len() as f64 * p) as usize).min(ms.len().saturating_sub(1)))
                .copied()
                .unwrap_or(f64::NAN)
        })
    };
    let sum = |f: fn(&Ledger) -> u64| reports.iter().map(|r| f(&r.ledger)).sum::<u64>();
    let result = ResumeResult {
        opened,
        shutdown,
        ended_by_shutdown: progress.ended_by_shutdown.load(Ordering::Relaxed),
        ended_otherwise: progress.ended_otherwise.load(Ordering::Relaxed),
        committed_while_down,
        listening,
        all_resumed: latest(|r| r.resumed_at),
        all_missed: latest(|r| r.missed_at),
        all_done: latest(|r| r.done_at),
        committed_after,
        resumed: reports.iter().filter(|r| r.resumed_at.is_some()).count(),
        with_missed: reports.iter().filter(|r| r.missed_at.is_some()).count(),
        done: reports.iter().filter(|r| r.done_at.is_some()).count(),
        lost: sum(Ledger::lost),
        duplicated: sum(|l| l.duplicated),
        reordered: sum(|l| l.reordered),
        unexpected: sum(|l| l.unexpected),
        not_recovered: reports.iter().map(|r| r.not_recovered).sum(),
        retries_before: reports
            .iter()
            .flat_map(|r| r.retries_before.clone())
            .collect(),
        retries: reports.iter().flat_map(|r| r.retries.clone()).collect(),
        resumed_ms: percentiles(|r| r.resumed_at),
        missed_ms: percentiles(|r| r.missed_at),
        cpu_cores,
        log_pages,
        cache_pages,
    };
    Ok((result, server))
}

/// Commits `rounds` events to every topic, one transaction per round (one event per topic),
/// numbered from `first`.
async fn commit_rounds(
    store: &Store,
    topics: &[Topic],
    first: u64,
    rounds: u64,
) -> Result<(), StoreError> {
    for n in first..first + rounds {
        let mut tx = store.begin().await?;
        for topic in topics {
            tx.emit(topic, "order.updated", event_data(n))?;
        }
        tx.commit().await?;
    }
    Ok(())
}

/// One gRPC stream that reads, is cut by the restart, and resumes.
struct Resumer {
    channel: Channel,
    token: String,
    topic: Topic,
    epoch: String,
    before: u64,
    missed: u64,
    total: u64,
    progress: Arc<Progress>,
    stage: watch::Receiver<Stage>,
    backoff: Backoff,
    open_permits: Arc<Semaphore>,
    resume_permits: Option<Arc<Semaphore>>,
}

impl Resumer {
    async fn run(mut self) -> ResumerReport {
        let mut report = ResumerReport {
            ledger: Ledger::new(self.total),
            caught_up: false,
            resumed_at: None,
            missed_at: None,
            done_at: None,
            retries_before: Vec::new(),
            retries: Vec::new(),
            not_recovered: 0,
        };
        // Before the restart: read `before` events (retrying what fails, as a client would),
        // then stay subscribed until the shutdown ends the stream.
        loop {
            // Held until this stream has read `before` (the semaphore is never closed).
            let mut permit = if report.caught_up {
                None
            } else {
                self.open_permits.clone().acquire_owned().await.ok()
            };
            let since = position(report.ledger.contiguous(), &self.epoch);
            let ended = match subscribe(self.channel.clone(), &self.token, &self.topic, Some(since))
                .await
            {
                Ok(stream) => self.read_until_end(stream, &mut report, &mut permit).await,
                Err(status) => status,
            };
            drop(permit);
            if *self.stage.borrow() != Stage::Before {
                let counter = if is_shutdown(&ended) {
                    &self.progress.ended_by_shutdown
                } else {
                    &self.progress.ended_otherwise
                };
                self.progress.bump(counter);
                break;
            }
            report.retries_before.push(describe(&ended));
            self.backoff.wait(&ended).await;
        }
        if self
            .stage
            .wait_for(|stage| *stage == Stage::Restarted)
            .await
            .is_err()
        {
            return report;
        }
        // After: resume from the last position, retrying what fails, until every event is in.
        self.backoff.reset();
        let deadline = Instant::now() + Duration::from_secs(300);
        while !report.ledger.complete() && Instant::now() < deadline {
            // Held until this stream is subscribed again.
            let mut permit = match &self.resume_permits {
                Some(permits) => permits.clone().acquire_owned().await.ok(),
                None => None,
            };
            let since = position(report.ledger.contiguous(), &self.epoch);
            let stream = subscribe(self.channel.clone(), &self.token, &self.topic, Some(since));
            let ended = match stream.await {
                Ok(stream) => self.read_resumed(stream, &mut report, &mut permit).await,
                Err(status) => Some(status),
            };
            drop(permit);
            if let Some(status) = ended {
                report.retries.push(describe(&status));
                self.backoff.wait(&status).await;
            }
        }
        report
    }

    /// Reads a stream until it ends; returns how it ended.
    async fn read_until_end(
        &self,
        mut stream: Streaming<LeanFrame>,
        report: &mut ResumerReport,
        permit: &mut Option<OwnedSemaphorePermit>,
    ) -> Status {
        loop {
            match stream.message().await {
                Ok(Some(frame)) => {
                    if let Some(event) = frame.event {
                        self.record(report, &event);
                    }
                    if !report.caught_up && report.ledger.contiguous() >= self.before {
                        report.caught_up = true;
                        permit.take();
                        self.progress.bump(&self.progress.caught_up_before);
                    }
                }
                Ok(None) => return Status::unknown("the stream finished without a status"),
                Err(status) => return status,
            }
        }
    }

    /// Reads a resumed stream until every event is in (`None`) or it ends (its status).
    async fn read_resumed(
        &self,
        mut stream: Streaming<LeanFrame>,
        report: &mut ResumerReport,
        permit: &mut Option<OwnedSemaphorePermit>,
    ) -> Option<Status> {
        loop {
            let frame = match tokio::time::timeout(STALL, stream.message()).await {
                Ok(Ok(Some(frame))) => frame,
                Ok(Ok(None)) => return Some(Status::unknown("finished without a status")),
                Ok(Err(status)) => return Some(status),
                Err(_) => return Some(Status::deadline_exceeded("no event for 30 s")),
            };
            if let Some(subscribed) = frame.subscribed {
                report.resumed_at.get_or_insert_with(Instant::now);
                permit.take();
                if !subscribed.recovered {
                    report.not_recovered += 1;
                }
            }
            if let Some(event) = frame.event {
                self.record(report, &event);
                let contiguous = report.ledger.contiguous();
                if contiguous >= self.missed {
                    report.missed_at.get_or_insert_with(Instant::now);
                }
                if contiguous >= self.total {
                    report.done_at.get_or_insert_with(Instant::now);
                    return None;
                }
            }
        }
    }

    fn record(&self, report: &mut ResumerReport, event: &LeanEvent) {
        if event.epoch == self.epoch {
            report.ledger.record(event.offset);
        } else {
            report.ledger.unexpected += 1;
        }
    }
}

/// Whether a stream was ended by the server shutting down (close code `shutdown`).
fn is_shutdown(status: &Status) -> bool {
    close_code_of(status) == Some(CloseCode::Shutdown)
}

/// A status's code and the first clause of its message (offsets and hints vary).
fn describe(status: &Status) -> String {
    let message = status.message();
    let clause = message.split("; ").next().unwrap_or(message);
    format!("{:?}: {clause}", status.code())
}

/// A client's retry policy: exponential backoff with jitter from 100 ms up to 5 s, never
/// sooner than the server's `herald-retry-after-ms` hint.
struct Backoff {
    failures: u32,
    state: u64,
}

impl Backoff {
    fn new(seed: u64) -> Backoff {
        Backoff {
            failures: 0,
            state: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
        }
    }

    fn reset(&mut self) {
        self.failures = 0;
    }

    async fn wait(&mut self, status: &Status) {
        let hint = status
            .metadata()
            .get(RETRY_AFTER_TRAILER)
            .and_then(|value| value.to_str().ok()?.parse::<u64>().ok())
            .unwrap_or(0);
        let base = (100u64 << self.failures.min(6)).min(5000).max(hint);
        self.failures += 1;
        // xorshift64: jitter without a dependency.
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        let wait = base / 2 + self.state % (base / 2 + 1);
        tokio::time::sleep(Duration::from_millis(wait)).await;
    }
}

impl ResumeResult {
    fn print(&self, database: &str, plan: &ResumePlan) {
        let secs = |d: Option<Duration>| d.map_or(f64::NAN, |d| d.as_secs_f64());
        println!(
            "resume ({database}): {} streams over {} topics and {} connections, resuming {}; shutdown took {:.2} s \
             ({} streams ended by it, {} otherwise); {} events committed while down in {:.2} s",
            plan.resumers,
            plan.topics.len(),
            plan.connections(),
            if plan.resume_in_flight == 0 {
                "all at once".to_owned()
            } else {
                format!("{} at a time", plan.resume_in_flight)
            },
            self.shutdown.as_secs_f64(),
            self.ended_by_shutdown,
            self.ended_otherwise,
            plan.during * plan.topics.len() as u64,
            self.committed_while_down.as_secs_f64(),
        );
        println!(
            "resume ({database}): from the restart: listening after {:.3} s; all {} resumed after {:.3} s \
             (per stream p50 {:.0} ms, p99 {:.0} ms); all {} have every event missed while down after {:.3} s \
             (p50 {:.0} ms, p99 {:.0} ms); all {} have the {} later events too after {:.3} s (committed by {:.3} s)",
            self.listening.as_secs_f64(),
            self.resumed,
            secs(self.all_resumed),
            self.resumed_ms[0],
            self.resumed_ms[1],
            self.with_missed,
            secs(self.all_missed),
            self.missed_ms[0],
            self.missed_ms[1],
            self.done,
            plan.after,
            secs(self.all_done),
            secs(self.committed_after),
        );
        println!(
            "resume ({database}): lost {} / duplicated {} / reordered {} / unexpected {}; not recovered {}; \
             retries before the restart {} {:?}, after {} {:?}; {} pages from the database, {} from the cache; \
             CPU {:.0} %",
            self.lost,
            self.duplicated,
            self.reordered,
            self.unexpected,
            self.not_recovered,
            self.retries_before.len(),
            summarize(&self.retries_before),
            self.retries.len(),
            summarize(&self.retries),
            self.log_pages,
            self.cache_pages,
            self.cpu_cores * 100.0
        );
    }

    fn json(&self, plan: &ResumePlan) -> Value {
        let secs = |d: Option<Duration>| d.map(|d| d.as_secs_f64());
        json!({
            "resumers": plan.resumers,
            "topics": plan.topics.len(),
            "connections": plan.connections(),
            "open_in_flight": plan.open_in_flight,
            "resume_in_flight": plan.resume_in_flight,
            "events_per_topic": { "before": plan.before, "during": plan.during, "after": plan.after },
            "opened_s": self.opened.as_secs_f64(),
            "shutdown_s": self.shutdown.as_secs_f64(),
            "ended_by_shutdown": self.ended_by_shutdown,
            "ended_otherwise": self.ended_otherwise,
            "committed_while_down_s": self.committed_while_down.as_secs_f64(),
            "restart_to_listening_s": self.listening.as_secs_f64(),
            "restart_to_all_resumed_s": secs(self.all_resumed),
            "restart_to_all_missed_s": secs(self.all_missed),
            "restart_to_all_done_s": secs(self.all_done),
            "after_committed_s": secs(self.committed_after),
            "resumed": self.resumed,
            "with_every_missed_event": self.with_missed,
            "with_every_event": self.done,
            "resumed_ms": { "p50": self.resumed_ms[0], "p99": self.resumed_ms[1], "max": self.resumed_ms[2] },
            "missed_ms": { "p50": self.missed_ms[0], "p99": self.missed_ms[1], "max": self.missed_ms[2] },
            "lost": self.lost,
            "duplicated": self.duplicated,
            "reordered": self.reordered,
            "unexpected": self.unexpected,
            "not_recovered": self.not_recovered,
            "retries_before_restart": self.retries_before.len(),
            "retry_causes_before_restart": summarize(&self.retries_before),
            "retries": self.retries.len(),
            "retry_causes": summarize(&self.retries),
            "cpu_percent": self.cpu_cores * 100.0,
            "log_pages": self.log_pages,
            "cache_pages": self.cache_pages,
        })
    }
}

/// Distinct messages with their counts.
fn summarize(messages: &[String]) -> Vec<(String, usize)> {
    let mut counts = std::collections::BTreeMap::<&str, usize>::new();
    for message in messages {
        *counts.entry(message).or_default() += 1;
    }
    counts
        .into_iter()
        .map(|(message, count)| (message.to_owned(), count))
        .collect()
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
