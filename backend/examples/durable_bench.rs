//! Durable events benchmark: throughput of the transactional outbox and commit-to-delivery
//! latency, with real gRPC subscribers, on SQLite or PostgreSQL.
//!
//! ```sh
//! cargo run --release -p herald-backend --example durable_bench                      # SQLite
//! cargo run --release -p herald-backend --example durable_bench -- \
//!     --database-url postgres://postgres@127.0.0.1:5432/bench                          # PostgreSQL
//! ```
//!
//! Two phases against one in-process backend: **throughput** (writers commit transactions of
//! `--batch` events as fast as they can; events/s from the first commit to the last delivery)
//! and **latency** (one event per transaction at `--rate` events/s; time from the commit's
//! start to the subscriber receiving it). Events are spread over `--topics` topics, each
//! with `--subscribers-per-topic` gRPC subscribers.
//!
//! With `--path publish`, every event is one durable publish (`Store::publish`, what
//! `Rooms/Publish` runs on a durable topic) instead of a domain transaction: `--writers`
//! concurrent publishers in the throughput phase, one publish per tick in the latency phase,
//! so concurrent publishes share group commits.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use clap::Parser;
use herald_backend::{
    Backend, Config,
    auth::dev_key::{self, TokenClaims},
    topic::Topic,
};
use herald_proto::v1::{SubscribeRequest, rooms_client::RoomsClient, subscribe_response::Frame};
use tokio_util::sync::CancellationToken;

const SECRET: &str = "bench-secret-bench-secret-bench-secret-0123";

#[derive(Debug, Parser)]
struct Args {
    /// PostgreSQL URL; default: a SQLite file in a temporary directory.
    #[arg(long)]
    database_url: Option<String>,
    #[arg(long, default_value_t = 100)]
    topics: usize,
    #[arg(long, default_value_t = 1)]
    subscribers_per_topic: usize,
    /// Events in the throughput phase.
    #[arg(long, default_value_t = 100_000)]
    events: u64,
    /// Events per transaction in the throughput phase.
    #[arg(long, default_value_t = 100)]
    batch: u64,
    /// Concurrent writers in the throughput phase.
    #[arg(long, default_value_t = 4)]
    writers: u64,
    /// Events per second in the latency phase (one per transaction).
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// `transaction`: domain transactions of `--batch` events; `publish`: one durable
    /// publish per event (group-committed).
    #[arg(long, value_enum, default_value_t = WritePath::Transaction)]
    path: WritePath,
    /// The most publishes one group commit takes (`database.publish_batch_max`).
    #[arg(long, default_value_t = 512)]
    publish_batch_max: usize,
    /// Length of the latency phase.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    latency_for: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum WritePath {
    Transaction,
    Publish,
}

/// Writes one event the way `--path` says.
async fn write_one(
    store: &herald_backend::store::Store,
    path: WritePath,
    topic: &Topic,
    seq: u64,
) -> Result<(), herald_backend::store::StoreError> {
    let data = serde_json::json!({ "seq": seq });
    match path {
        WritePath::Transaction => {
            let mut tx = store.begin().await?;
            tx.emit(topic, "bench.durable", data)?;
            tx.commit().await?;
        }
        WritePath::Publish => {
            let event_type = herald_backend::event::EventType::parse("bench.durable")
                .map_err(herald_backend::store::StoreError::Invalid)?;
            let data = serde_json::from_value(data)
                .map_err(|e| herald_backend::store::StoreError::Invalid(e.to_string()))?;
            store
                .publish("bench", topic, &event_type, Some(data), None)
                .await?;
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HERALD_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let dir = tempfile::tempdir()?;
    let mut config = Config {
        data_dir: dir.path().to_owned(),
        database_url: args.database_url.clone(),
        ..Config::default()
    };
    config.auth.hs256_secret = Some(SECRET.to_owned());
    config.node.subscriber_queue = 1 << 16;
    config.database.publish_batch_max = args.publish_batch_max;
    let backend = Backend::build(config).await?;
    let store = backend.store().clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(backend.serve(listener, shutdown.clone()));
    let database = if args.database_url.is_some() {
        "PostgreSQL"
    } else {
        "SQLite"
    };

    let topics: Vec<Topic> = (0..args.topics)
        .map(|t| Topic::parse(&format!("order:bench{t}")))
        .collect::<Result<_, _>>()?;
    let token = dev_key::sign_hs256(
        SECRET,
        &TokenClaims::new("bench", &["service"], Duration::from_secs(3600)),
    )?;
    // Delivery times (ns since `origin`) per event sequence number, and commit times.
    let origin = Instant::now();
    let origin_wall = std::time::SystemTime::now();
    let total = args.events + args.rate * args.latency_for.as_secs() + 1;
    let committed_at: Arc<Vec<AtomicU64>> =
        Arc::new((0..total).map(|_| AtomicU64::new(0)).collect());
    // When each latency-phase write returned, and when its event arrived: the two halves of
    // commit-to-delivery (the commit, then the relay and the stream).
    let returned_at: Arc<Vec<AtomicU64>> =
        Arc::new((0..total).map(|_| AtomicU64::new(0)).collect());
    let arrived_at: Arc<Vec<AtomicU64>> = Arc::new((0..total).map(|_| AtomicU64::new(0)).collect());
    let delivered = Arc::new(AtomicU64::new(0));
    let latencies = Arc::new(std::sync::Mutex::new(Vec::<u64>::new()));
    let latency_from = Arc::new(AtomicU64::new(u64::MAX));

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    for topic in &topics {
        for _ in 0..args.subscribers_per_topic {
            let mut request = tonic::Request::new(SubscribeRequest {
                topic: topic.to_string(),
                since: None,
            });
            request
                .metadata_mut()
                .insert("authorization", format!("Bearer {token}").parse()?);
            let mut stream = RoomsClient::new(channel.clone())
                .subscribe(request)
                .await?
                .into_inner();
            let (delivered, committed_at, arrived_at, latencies, latency_from) = (
                delivered.clone(),
                committed_at.clone(),
                arrived_at.clone(),
                latencies.clone(),
                latency_from.clone(),
            );
            tokio::spawn(async move {
                while let Ok(Some(message)) = stream.message().await {
                    let Some(Frame::Event(event)) = message.frame else {
                        continue;
                    };
                    let now = origin.elapsed().as_nanos() as u64;
                    delivered.fetch_add(1, Ordering::Relaxed);
                    let seq = event
                        .data
                        .as_ref()
                        .and_then(|d| d.fields.get("seq"))
                        .and_then(|v| match v.kind {
                            Some(pbjson_types::value::Kind::NumberValue(n)) => Some(n as u64),
                            _ => None,
                        })
                        .unwrap_or(0);
                    if seq >= latency_from.load(Ordering::Relaxed) {
                        let at = committed_at[seq as usize].load(Ordering::Acquire);
                        arrived_at[seq as usize].store(now, Ordering::Release);
                        let latency = now.saturating_sub(at);
                        if let Ok(mut all) = latencies.lock() {
                            all.push(latency);
                        }
                    }
                }
            });
        }
    }
    let fanout = args.subscribers_per_topic as u64;

    // Throughput: writers commit batches as fast as they can.
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut writers = vec![];
    let batches_before = store.publish_batches();
    for _ in 0..args.writers {
        let (store, topics, next) = (store.clone(), topics.clone(), next.clone());
        let (events, batch, path) = (args.events, args.batch, args.path);
        writers.push(tokio::spawn(async move {
            if path == WritePath::Publish {
                loop {
                    let seq = next.fetch_add(1, Ordering::Relaxed);
                    if seq >= events {
                        return Ok(());
                    }
                    write_one(&store, path, &topics[seq as usize % topics.len()], seq).await?;
                }
            }
            loop {
                let first = next.fetch_add(batch, Ordering::Relaxed);
                if first >= events {
                    return Ok::<(), herald_backend::store::StoreError>(());
                }
                let mut tx = store.begin().await?;
                for seq in first..(first + batch).min(events) {
                    let topic = &topics[seq as usize % topics.len()];
                    tx.emit(topic, "bench.durable", serde_json::json!({ "seq": seq }))?;
                }
                tx.commit().await?;
            }
        }));
    }
    for writer in writers {
        writer.await??;
    }
    let committed = started.elapsed();
    wait_for(&delivered, args.events * fanout).await;
    let elapsed = started.elapsed();
    let shape = match args.path {
        WritePath::Transaction => format!("in transactions of {}", args.batch),
        WritePath::Publish => format!(
            "one publish each, {} group commits",
            store.publish_batches() - batches_before
        ),
    };
    println!(
        "{database}: throughput {:.0} durable events/s ({} events {shape}, {} writers, \
         {} topics × {} subscribers; commits took {:.2}s, all delivered after {:.2}s)",
        args.events as f64 / elapsed.as_secs_f64(),
        args.events,
        args.writers,
        args.topics,
        args.subscribers_per_topic,
        committed.as_secs_f64(),
        elapsed.as_secs_f64()
    );

    // Latency: one event per transaction at a steady rate.
    let first = args.events;
    latency_from.store(first, Ordering::Relaxed);
    let count = args.rate * args.latency_for.as_secs();
    let mut ticker = tokio::time::interval(Duration::from_nanos(1_000_000_000 / args.rate.max(1)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut pending = tokio::task::JoinSet::new();
    for seq in first..first + count {
        ticker.tick().await;
        let (store, topic, committed_at, returned_at) = (
            store.clone(),
            topics[seq as usize % topics.len()].clone(),
            committed_at.clone(),
            returned_at.clone(),
        );
        let path = args.path;
        pending.spawn(async move {
            // Measured from the start of the write (it includes the commit itself): the
            // relay may deliver before the write has returned here.
            committed_at[seq as usize].store(origin.elapsed().as_nanos() as u64, Ordering::Release);
            let written = write_one(&store, path, &topic, seq).await;
            returned_at[seq as usize].store(origin.elapsed().as_nanos() as u64, Ordering::Release);
            written
        });
        while pending.try_join_next().is_some() {}
    }
    while let Some(result) = pending.join_next().await {
        result??;
    }
    wait_for(&delivered, (args.events + count) * fanout).await;
    let all = latencies.lock().map(|l| l.clone()).unwrap_or_default();
    let all = Percentiles::of(all);
    println!(
        "{database}: commit-to-delivery at {} events/s: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} deliveries)",
        args.rate,
        all.at(0.50),
        all.at(0.99),
        all.at(1.0),
        all.len()
    );
    // The halves, per event (with one subscriber per topic, the event's one delivery).
    let range = first as usize..(first + count) as usize;
    let half = |from: &[AtomicU64], to: &[AtomicU64]| {
        Percentiles::of(
            range
                .clone()
                .map(|seq| {
                    let to = to[seq].load(Ordering::Acquire);
                    to.saturating_sub(from[seq].load(Ordering::Acquire))
                })
                .collect(),
        )
    };
    let slowest = range.clone().max_by_key(|&seq| {
        arrived_at[seq]
            .load(Ordering::Acquire)
            .saturating_sub(committed_at[seq].load(Ordering::Acquire))
    });
    if let Some(seq) = slowest {
        let at = origin_wall + Duration::from_nanos(committed_at[seq].load(Ordering::Acquire));
        let at = at.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        println!(
            "{database}: the slowest event was written at {}.{:03} (Unix time)",
            at.as_secs(),
            at.subsec_millis()
        );
    }
    let commit = half(&committed_at, &returned_at);
    let relay = half(&returned_at, &arrived_at);
    println!(
        "{database}: of which the publish call p50 {:.2} / p99 {:.2} / max {:.2} ms, \
         from its return to the delivery p50 {:.2} / p99 {:.2} / max {:.2} ms",
        commit.at(0.50),
        commit.at(0.99),
        commit.at(1.0),
        relay.at(0.50),
        relay.at(0.99),
        relay.at(1.0),
    );
    shutdown.cancel();
    let _ = server.await;
    Ok(())
}

/// Nanosecond samples, sorted, read in milliseconds.
struct Percentiles(Vec<u64>);

impl Percentiles {
    fn of(mut samples: Vec<u64>) -> Percentiles {
        samples.sort_unstable();
        Percentiles(samples)
    }

    fn at(&self, p: f64) -> f64 {
        let index = ((self.0.len() as f64 * p) as usize).min(self.0.len().saturating_sub(1));
        self.0.get(index).map_or(0.0, |ns| *ns as f64 / 1e6)
    }

    fn len(&self) -> usize {
        self.0.len()
    }
}

async fn wait_for(delivered: &AtomicU64, target: u64) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while delivered.load(Ordering::Relaxed) < target && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let got = delivered.load(Ordering::Relaxed);
    if got < target {
        eprintln!("warning: only {got} of {target} deliveries arrived");
    }
}
