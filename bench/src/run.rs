//! The phases of a run: connect, open every stream, (publish: warm up, measure, drain),
//! stop, tally.

use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use herald_proto::support::lock;
use herald_proto::v1::rooms_client::RoomsClient;
use tokio::{sync::watch, task::JoinHandle, time::Instant};
use tonic::transport::{Channel, Endpoint};

use crate::{
    auth,
    cli::{Mode, Plan, Protocol},
    engineio,
    error::BenchError,
    net::Target,
    proc_stats,
    publisher::{self, Client, Publishing},
    report::Report,
    subscriber::{self, Outcome, Shared},
    wire,
};

/// How often progress is printed to stderr.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// How often the slowest subscriber per topic is recomputed for `--max-lag`.
const FLOOR_EVERY: Duration = Duration::from_millis(5);
/// Token lifetime beyond the planned run.
const TOKEN_MARGIN: Duration = Duration::from_secs(3600);

fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

/// Opens `count` HTTP/2 connections to `server` (given as `--{flag}`); a tonic `Channel`
/// from `connect` is exactly one.
async fn connect(flag: &str, server: &str, count: usize) -> Result<Vec<Channel>, BenchError> {
    let endpoint = Endpoint::from_shared(server.to_owned())
        .map_err(|e| BenchError::new(format!("--{flag} `{server}` is not a valid URL: {e}")))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true);
    let mut channels = Vec::with_capacity(count);
    for _ in 0..count {
        let channel = endpoint.connect().await.map_err(|e| {
            BenchError::new(format!(
                "cannot reach {server}: {}; is `herald serve` running there?",
                error_chain(&e)
            ))
        })?;
        channels.push(channel);
    }
    Ok(channels)
}

/// Resident memory of each server process; empty when no `--server-pid` was given.
fn server_rss(plan: &Plan) -> Result<Vec<u64>, BenchError> {
    proc_stats::rss_each_kib(&plan.server_pids)
}

/// CPU time of the server processes (if known) and of this process, in ns.
fn cpu_now(plan: &Plan) -> (Option<u64>, Option<u64>) {
    (
        (!plan.server_pids.is_empty())
            .then(|| proc_stats::cpu_ns_sum(&plan.server_pids).ok())
            .flatten(),
        proc_stats::cpu_ns(None).ok(),
    )
}

/// CPU time of each `--watch-pid` process, in order; `None` for one that cannot be read.
fn watched_cpu_now(plan: &Plan) -> Vec<Option<u64>> {
    plan.watch_pids
        .iter()
        .map(|watched| proc_stats::cpu_ns(Some(watched.pid)).ok())
        .collect()
}

/// Each watched process's CPU over `wall`, by name.
fn watched_percent(
    plan: &Plan,
    before: &[Option<u64>],
    after: &[Option<u64>],
    wall: Duration,
) -> Vec<(String, Option<f64>)> {
    plan.watch_pids
        .iter()
        .zip(before.iter().zip(after))
        .map(|(watched, (&before, &after))| (watched.name.clone(), percent(before, after, wall)))
        .collect()
}

fn percent(before: Option<u64>, after: Option<u64>, wall: Duration) -> Option<f64> {
    let used = after?.checked_sub(before?)?;
    (!wall.is_zero()).then(|| used as f64 / wall.as_nanos() as f64 * 100.0)
}

fn total_received(shared: &Shared) -> u64 {
    shared
        .progress
        .iter()
        .map(|p| p.received.load(Ordering::Relaxed))
        .sum()
}

/// Waits until every stream received `subscribed`; fails on the first refused stream or
/// when `--open-timeout` passes.
async fn wait_open(shared: &Shared, plan: &Plan, started: Instant) -> Result<(), BenchError> {
    let mut next_print = started + PROGRESS_EVERY;
    loop {
        let opened = shared.opened.load(Ordering::Acquire);
        if shared.open_failures.load(Ordering::Acquire) > 0 {
            let first = lock(&shared.first_open_error).clone().unwrap_or_default();
            return Err(BenchError::new(format!(
                "the server refused a subscription after {opened} opened: {first}"
            )));
        }
        if opened == plan.subscribers {
            return Ok(());
        }
        let now = Instant::now();
        if now - started > plan.open_timeout {
            return Err(BenchError::new(format!(
                "only {opened} of {} streams received `subscribed` within {:?} (--open-timeout)",
                plan.subscribers, plan.open_timeout
            )));
        }
        if now >= next_print {
            eprintln!(
                "opening: {opened}/{} streams subscribed after {:.1}s",
                plan.subscribers,
                (now - started).as_secs_f64()
            );
            next_print += PROGRESS_EVERY;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sleeps until `until`, printing delivery and publish rates every second.
async fn watch_until(
    until: Instant,
    label: &str,
    shared: &Shared,
    publishing: Option<&Publishing>,
) {
    let mut last_time = Instant::now();
    let mut last_received = total_received(shared);
    let mut last_acked = publishing.map_or(0, |p| p.acked.load(Ordering::Relaxed));
    loop {
        let now = Instant::now();
        if now >= until {
            return;
        }
        tokio::time::sleep_until((now + PROGRESS_EVERY).min(until)).await;
        let now = Instant::now();
        let secs = (now - last_time).as_secs_f64();
        let received = total_received(shared);
        let acked = publishing.map_or(0, |p| p.acked.load(Ordering::Relaxed));
        eprintln!(
            "{label}: {:>10.0} deliveries/s  {:>8.0} publishes/s  {} streams ended by the server so far",
            (received - last_received) as f64 / secs,
            (acked - last_acked) as f64 / secs,
            shared.closes.load(Ordering::Relaxed),
        );
        (last_time, last_received, last_acked) = (now, received, acked);
    }
}

/// Keeps `publishing.floors` at each topic's slowest subscriber, for `--max-lag`.
async fn track_floors(
    shared: Arc<Shared>,
    publishing: Arc<Publishing>,
    topics: usize,
    mut stop: watch::Receiver<bool>,
) {
    let mut floors = vec![u64::MAX; topics];
    loop {
        floors.fill(u64::MAX);
        for (i, progress) in shared.progress.iter().enumerate() {
            let floor = &mut floors[i % topics];
            *floor = (*floor).min(progress.last.load(Ordering::Relaxed));
        }
        for (floor, value) in publishing.floors.iter().zip(&floors) {
            if *value != u64::MAX {
                floor.store(*value, Ordering::Relaxed);
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(FLOOR_EVERY) => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
    }
}

/// Waits until every live subscriber has received its topic's last acknowledged offset.
async fn drain(
    shared: &Shared,
    publishing: &Publishing,
    tasks: &[JoinHandle<Outcome>],
    plan: &Plan,
) -> (Duration, bool) {
    let started = Instant::now();
    loop {
        let behind = shared
            .progress
            .iter()
            .enumerate()
            .filter(|(i, progress)| {
                let top = publishing.tops[plan.topic_of(*i)].load(Ordering::Relaxed);
                progress.last.load(Ordering::Relaxed) < top && !tasks[*i].is_finished()
            })
            .count();
        let waited = started.elapsed();
        if behind == 0 {
            return (waited, true);
        }
        if waited >= plan.drain_timeout {
            eprintln!("drain: {behind} subscribers still behind after {waited:.1?}; giving up");
            return (waited, false);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub(crate) async fn run(plan: Plan) -> Result<Report, BenchError> {
    let ttl = plan.open_timeout + plan.warmup + plan.duration + plan.drain_timeout + TOKEN_MARGIN;
    // The Socket.IO peer takes no token.
    let token = if plan.protocol == Protocol::Socketio {
        String::new()
    } else {
        auth::token(&plan.credentials, ttl)?
    };
    let bearer = auth::bearer(&token)?;
    let idle = plan.mode == Mode::Idle;
    let mut targets = Vec::with_capacity(plan.ws_urls.len());
    for url in &plan.ws_urls {
        targets.push(Arc::new(Target::resolve(url).await?));
    }
    // Before any connection of ours, so connection overhead can be told apart from streams'.
    let server_rss_unconnected_kib = server_rss(&plan)?;
    let channels = if plan.protocol == Protocol::Grpc {
        connect("server", &plan.server, plan.connections).await?
    } else {
        Vec::new()
    };
    let publish_channels = if idle || plan.protocol == Protocol::Socketio {
        Vec::new()
    } else {
        let flag = if plan.publish_server == plan.server {
            "server"
        } else {
            "publish-server"
        };
        connect(flag, &plan.publish_server, plan.publish_connections).await?
    };

    let mut report = Report {
        scenario: plan.scenario.clone(),
        protocol: plan.protocol.name().to_owned(),
        mode: match plan.mode {
            Mode::Rate(_) => "rate",
            Mode::Saturate => "saturate",
            Mode::Idle => "idle",
        }
        .to_owned(),
        server: match plan.protocol {
            Protocol::Grpc => plan.server.clone(),
            Protocol::Ws | Protocol::Socketio => plan.ws_urls.join(" "),
        },
        publish_server: (!idle && plan.protocol != Protocol::Socketio)
            .then(|| plan.publish_server.clone()),
        subscribers: plan.subscribers,
        topics: plan.topics.len(),
        connections: match plan.protocol {
            Protocol::Grpc => plan.connections,
            Protocol::Ws | Protocol::Socketio => plan.subscribers,
        },
        publishers: if idle { 0 } else { plan.publishers },
        target_rate: match plan.mode {
            Mode::Rate(rate) => Some(rate),
            _ => None,
        },
        max_lag: plan.max_lag,
        server_rss_unconnected_kib,
        server_rss_before_kib: server_rss(&plan)?,
        ..Report::default()
    };

    let shared = Arc::new(Shared::new(
        bearer.clone(),
        token,
        plan.subscribers,
        plan.open_concurrency,
    ));
    let (stop_tx, stop_rx) = watch::channel(false);
    let started = Instant::now();
    let tasks: Vec<JoinHandle<Outcome>> = (0..plan.subscribers)
        .map(|i| {
            let topic = plan.topic_of(i);
            let name = plan.topics[topic].clone();
            let (shared, stop) = (shared.clone(), stop_rx.clone());
            let source =
                (!plan.source_ips.is_empty()).then(|| plan.source_ips[i % plan.source_ips.len()]);
            match plan.protocol {
                Protocol::Grpc => {
                    let channel = channels[i % channels.len()].clone();
                    tokio::spawn(subscriber::grpc::run(shared, i, topic, name, channel, stop))
                }
                Protocol::Ws => {
                    let target = targets[i % targets.len()].clone();
                    tokio::spawn(subscriber::ws::run(
                        shared, i, topic, name, target, source, stop,
                    ))
                }
                Protocol::Socketio => {
                    let target = targets[i % targets.len()].clone();
                    tokio::spawn(subscriber::socketio::run(
                        shared, i, topic, name, target, source, stop,
                    ))
                }
            }
        })
        .collect();
    wait_open(&shared, &plan, started).await?;
    report.open_secs = started.elapsed().as_secs_f64();
    report.server_rss_subscribed_kib = server_rss(&plan)?;
    eprintln!(
        "{} subscribed in {:.2}s over {} connections",
        plan.subscribers, report.open_secs, report.connections
    );

    let publishing = Arc::new(Publishing::new(
        bearer,
        plan.topics.clone(),
        match plan.mode {
            Mode::Rate(rate) => Some(rate),
            _ => None,
        },
        plan.max_lag,
    ));
    // Publishing starts from the tops the subscribers were told.
    for (i, progress) in shared.progress.iter().enumerate() {
        let last = progress.last.load(Ordering::Relaxed);
        let topic = plan.topic_of(i);
        publishing.tops[topic].fetch_max(last, Ordering::Relaxed);
        publishing.floors[topic].fetch_max(last, Ordering::Relaxed);
    }

    if idle {
        let cpu_before = cpu_now(&plan);
        let watched_before = watched_cpu_now(&plan);
        let window = Instant::now();
        watch_until(window + plan.duration, "idle", &shared, None).await;
        let cpu_after = cpu_now(&plan);
        report.watched_cpu_percent = watched_percent(
            &plan,
            &watched_before,
            &watched_cpu_now(&plan),
            window.elapsed(),
        );
        report.window_secs = window.elapsed().as_secs_f64();
        report.server_cpu_percent = percent(cpu_before.0, cpu_after.0, window.elapsed());
        report.bench_cpu_percent = percent(cpu_before.1, cpu_after.1, window.elapsed());
        report.drained = true;
    } else {
        if plan.max_lag.is_some() {
            tokio::spawn(track_floors(
                shared.clone(),
                publishing.clone(),
                plan.topics.len(),
                stop_rx.clone(),
            ));
        }
        let start = Instant::now();
        let window_start = start + plan.warmup;
        let deadline = window_start + plan.duration;
        let publishers: Vec<JoinHandle<()>> = (0..plan.publishers)
            .map(|p| {
                let client = match plan.protocol {
                    Protocol::Grpc | Protocol::Ws => Client::Herald(RoomsClient::new(
                        publish_channels[p % publish_channels.len()].clone(),
                    )),
                    Protocol::Socketio => Client::SocketIo(Box::new(engineio::Publisher::new(
                        (*targets[p % targets.len()]).clone(),
                        &plan.publish_key,
                    ))),
                };
                tokio::spawn(publisher::run(publishing.clone(), client, start, deadline))
            })
            .collect();
        watch_until(window_start, "warmup ", &shared, Some(&publishing)).await;

        let window_start_ns = wire::now_ns();
        shared
            .window_start_ns
            .store(window_start_ns, Ordering::Relaxed);
        publishing
            .window_start_ns
            .store(window_start_ns, Ordering::Relaxed);
        let t0 = Instant::now();
        let received0 = total_received(&shared);
        let acked0 = publishing.acked.load(Ordering::Relaxed);
        let cpu0 = cpu_now(&plan);
        let watched0 = watched_cpu_now(&plan);
        watch_until(deadline, "measure", &shared, Some(&publishing)).await;
        let window = t0.elapsed();
        let cpu1 = cpu_now(&plan);
        report.watched_cpu_percent =
            watched_percent(&plan, &watched0, &watched_cpu_now(&plan), window);
        report.window_deliveries = total_received(&shared) - received0;
        report.window_publishes = publishing.acked.load(Ordering::Relaxed) - acked0;
        report.window_secs = window.as_secs_f64();
        report.server_cpu_percent = percent(cpu0.0, cpu1.0, window);
        report.bench_cpu_percent = percent(cpu0.1, cpu1.1, window);

        for publisher in publishers {
            if let Err(error) = publisher.await {
                return Err(BenchError::new(format!("a publish loop failed: {error}")));
            }
        }
        let (drain_time, drained) = drain(&shared, &publishing, &tasks, &plan).await;
        report.drain_secs = drain_time.as_secs_f64();
        report.drained = drained;
    }

    // Read while the streams are still open.
    report.server_rss_end_kib = server_rss(&plan)?;
    report.bench_rss_kib = proc_stats::rss_kib(None).ok();
    // Ignored if every subscriber already stopped on its own.
    let _ = stop_tx.send(true);
    for task in tasks {
        let outcome = task
            .await
            .map_err(|error| BenchError::new(format!("a subscriber task failed: {error}")))?;
        let top = publishing.tops[outcome.topic].load(Ordering::Relaxed);
        report.expected += top.saturating_sub(outcome.start);
        report.received += outcome.received;
        report.lost += outcome.lost(top);
        report.duplicated += outcome.duplicates;
        report.reordered += outcome.reordered;
        report.resumes += outcome.resumes;
        report.unrecovered += outcome.unrecovered;
        report.trailer_mismatches += outcome.trailer_mismatches;
        for (code, count) in outcome.closes {
            *report.closes.entry(code).or_default() += count;
        }
        if let Some(failure) = outcome.failure {
            report.subscriber_failures += 1;
            report.first_failure.get_or_insert(failure);
        }
    }
    report.published = publishing.acked.load(Ordering::Relaxed);
    report.publish_failures = publishing.failed.load(Ordering::Relaxed);
    report.publish_errors = publishing.errors();
    report.publish_round_trip = lock(&publishing.round_trips).clone();
    report.latency = lock(&shared.latencies).clone();
    Ok(report)
}
