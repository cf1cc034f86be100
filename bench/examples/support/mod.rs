//! What the in-process benchmarks share: a backend and an edge on 127.0.0.1:0, tokens, and
//! the process's CPU clock.

#![allow(dead_code)] // each example uses its own part

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use herald_backend::{
    Backend, Config, ServeError,
    auth::dev_key::{self, TokenClaims},
    store::Store,
};
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;

pub(crate) const SECRET: &str = "bench-secret-bench-secret-bench-secret-0123";

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// An HS256 token for `sub` with `roles`, valid for a day.
pub(crate) fn token(sub: &str, roles: &[&str]) -> String {
    dev_key::sign_hs256(
        SECRET,
        &TokenClaims::new(sub, roles, Duration::from_secs(24 * 3600)),
    )
    .unwrap_or_default()
}

/// `message` with `authorization: Bearer <token>`.
pub(crate) fn authorized<T>(token: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Ok(value) = format!("Bearer {token}").parse() {
        request.metadata_mut().insert("authorization", value);
    }
    request
}

/// `Config::default()` on `database_url` (else SQLite in `dir`) with the bench's secret.
pub(crate) fn config(database_url: Option<String>, dir: &std::path::Path) -> Config {
    let mut config = Config {
        data_dir: dir.to_owned(),
        database_url,
        ..Config::default()
    };
    config.auth.hs256_secret = Some(SECRET.to_owned());
    config
}

/// A backend serving on its own listener.
pub(crate) struct Server {
    pub(crate) addr: SocketAddr,
    pub(crate) store: Store,
    pub(crate) node: Arc<herald_backend::node::Node>,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), ServeError>>,
}

impl Server {
    pub(crate) async fn start(config: Config, addr: &str) -> Result<Server, BoxError> {
        let backend = Backend::build(config).await?;
        let store = backend.store().clone();
        let node = backend.node().clone();
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(backend.serve(listener, shutdown.clone()));
        Ok(Server {
            addr,
            store,
            node,
            shutdown,
            task,
        })
    }

    pub(crate) fn history_stats(&self) -> &herald_backend::history::HistoryStats {
        self.node.history_reader().stats()
    }

    /// History pages read so far: (from the database, from the broker's cache).
    pub(crate) fn page_counts(&self) -> (u64, u64) {
        let stats = self.history_stats();
        (stats.log_pages(), stats.cache_pages())
    }

    /// History pages read since `before` (a [`Server::page_counts`]).
    pub(crate) fn pages_since(&self, before: (u64, u64)) -> (u64, u64) {
        let (log, cache) = self.page_counts();
        (log - before.0, cache - before.1)
    }

    /// Ends every stream ("shutting down") and waits for the server to stop.
    pub(crate) async fn stop(self) -> Result<(), BoxError> {
        self.shutdown.cancel();
        self.task.await??;
        Ok(())
    }
}

/// An edge serving WebSockets in front of a backend.
pub(crate) struct Edge {
    pub(crate) addr: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), herald_edge::EdgeError>>,
}

impl Edge {
    pub(crate) async fn start(backend: SocketAddr) -> Result<Edge, BoxError> {
        let config = herald_edge::EdgeConfig {
            backends: vec![format!("http://{backend}")],
            ..herald_edge::EdgeConfig::default()
        };
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shutdown = CancellationToken::new();
        let service_token: herald_edge::ServiceToken =
            Arc::new(|| token("bench-edge", &["service"]));
        let task = tokio::spawn(herald_edge::run(
            listener,
            config,
            service_token,
            shutdown.clone(),
        ));
        Ok(Edge {
            addr,
            shutdown,
            task,
        })
    }

    pub(crate) async fn stop(self) {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(15), self.task).await;
    }
}

/// CPU time of this process (all threads) since `start`, in cores.
pub(crate) struct CpuClock {
    wall: Instant,
    cpu: Duration,
}

impl CpuClock {
    pub(crate) fn start() -> CpuClock {
        CpuClock {
            wall: Instant::now(),
            cpu: process_cpu(),
        }
    }

    pub(crate) fn cores(&self) -> f64 {
        (process_cpu().saturating_sub(self.cpu)).as_secs_f64() / self.wall.elapsed().as_secs_f64()
    }
}

/// utime + stime from /proc/self/stat (in USER_HZ = 100 ticks per second on Linux).
fn process_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let ticks: u64 = after_name
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|field| field.parse::<u64>().ok())
        .sum();
    Duration::from_millis(ticks * 10)
}

pub(crate) fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

/// p50, p99 and max of samples in microseconds, in milliseconds.
pub(crate) fn latency_summary(mut samples: Vec<i64>) -> String {
    if samples.is_empty() {
        return "no samples".into();
    }
    samples.sort_unstable();
    let at = |q: f64| {
        let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
        samples[i] as f64 / 1000.0
    };
    format!(
        "p50 {:.1} ms · p99 {:.1} ms · max {:.1} ms ({} samples)",
        at(0.5),
        at(0.99),
        at(1.0),
        samples.len()
    )
}

/// The number after `field` (`"offset":`) in a JSON text, quoted or not: the first occurrence
/// is the push's own offset, written by the edge before the event.
pub(crate) fn json_number(text: &str, field: &str) -> Option<u64> {
    let rest = &text[text.find(field)? + field.len()..];
    let rest = rest.trim_start();
    let rest = rest.strip_prefix('"').unwrap_or(rest);
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}
