//! Presence benchmark: `--users` distinct users subscribe to one `room:` topic (presence
//! join/leave on, the default for rooms) over real gRPC streams against one in-process
//! backend, and every stream counts the presence frames it receives until the room's count
//! reaches everyone.
//!
//! ```sh
//! cargo run --release -p herald-backend --example presence_bench -- --users 10000
//! ```
//!
//! Reports: time until every stream is subscribed, time until every stream has seen the last
//! join, presence frames per stream (min / mean / max) and in all, and the process's CPU time
//! (user + system, from /proc/self/stat) over the run. `--interval` and `--max-members` set
//! `node.presence_interval` and `node.presence_max_members`.

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
};
use herald_proto::v1::{SubscribeRequest, rooms_client::RoomsClient, subscribe_response::Frame};
use tokio::sync::Barrier;
use tokio_util::sync::CancellationToken;

const SECRET: &str = "bench-secret-bench-secret-bench-secret-0123";

#[derive(Debug, Parser)]
struct Args {
    /// Distinct users joining the room, one stream each.
    #[arg(long, default_value_t = 10_000)]
    users: usize,
    /// HTTP/2 connections the streams are spread over.
    #[arg(long, default_value_t = 20)]
    connections: usize,
    /// `node.presence_interval`.
    #[arg(long, default_value = "250ms", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// `node.presence_max_members`.
    #[arg(long, default_value_t = 200)]
    max_members: usize,
}

/// CPU time (user + system) of this process so far, from /proc/self/stat (100 ticks per s).
fn cpu_time() -> Duration {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return Duration::ZERO;
    };
    // Fields after the command name (which ends with ')'): utime is the 12th, stime the 13th.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
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
        ..Config::default()
    };
    config.auth.hs256_secret = Some(SECRET.to_owned());
    config.node.presence_interval = args.interval;
    config.node.presence_max_members = args.max_members;
    let backend = Backend::build(config).await?;
    let node = backend.node().clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(backend.serve(listener, shutdown.clone()));

    let mut channels = Vec::new();
    for _ in 0..args.connections.max(1) {
        channels.push(
            tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
                .connect()
                .await?,
        );
    }
    let users = args.users;
    let subscribed = Arc::new(Barrier::new(users + 1));
    let frames = Arc::new(AtomicU64::new(0));
    let cpu_before = cpu_time();
    let started = Instant::now();
    let mut streams = Vec::with_capacity(users);
    for i in 0..users {
        let token = dev_key::sign_hs256(
            SECRET,
            &TokenClaims::new(&format!("user-{i}"), &[], Duration::from_secs(3600)),
        )?;
        let mut rooms = RoomsClient::new(channels[i % channels.len()].clone());
        let (subscribed, frames) = (subscribed.clone(), frames.clone());
        streams.push(tokio::spawn(async move {
            let mut request = tonic::Request::new(SubscribeRequest {
                topic: "room:bench".into(),
                since: None,
            });
            request.metadata_mut().insert(
                "authorization",
                format!("Bearer {token}").parse().expect("ascii token"),
            );
            let mut stream = rooms
                .subscribe(request)
                .await
                .expect("subscribe")
                .into_inner();
            let mut mine = 0u64;
            let mut waited = false;
            while let Ok(Some(message)) = stream.message().await {
                match message.frame {
                    Some(Frame::Subscribed(_)) if !waited => {
                        waited = true;
                        subscribed.wait().await;
                    }
                    Some(Frame::Presence(change)) => {
                        mine += 1;
                        if change.members as usize >= users {
                            break;
                        }
                    }
                    _ => {}
                }
            }
            frames.fetch_add(mine, Ordering::Relaxed);
            (mine, stream)
        }));
    }
    subscribed.wait().await;
    let all_subscribed = started.elapsed();
    let mut per_stream = Vec::with_capacity(users);
    let mut open = Vec::with_capacity(users);
    for stream in streams {
        let (mine, stream) = stream.await?;
        per_stream.push(mine);
        open.push(stream);
    }
    let settled = started.elapsed();
    let cpu = cpu_time().saturating_sub(cpu_before);
    per_stream.sort_unstable();
    let total: u64 = per_stream.iter().sum();
    println!(
        "presence: {users} distinct users join one room over {} connections \
         (presence_interval {:?}, presence_max_members {})",
        channels.len(),
        args.interval,
        args.max_members
    );
    println!("  all subscribed after        {all_subscribed:.2?}");
    println!("  every stream saw all joins  {settled:.2?}");
    println!(
        "  presence frames per stream  min {} / mean {:.1} / max {}",
        per_stream.first().copied().unwrap_or(0),
        total as f64 / users.max(1) as f64,
        per_stream.last().copied().unwrap_or(0)
    );
    println!(
        "  presence frames in all      {total} (one per join would be {})",
        users * (users + 1) / 2
    );
    println!("  pushes broadcast            {}", node.presence_pushes());
    println!("  CPU (user + system)         {cpu:.2?}");
    drop(open);
    shutdown.cancel();
    let _ = server.await;
    Ok(())
}
