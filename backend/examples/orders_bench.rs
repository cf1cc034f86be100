//! Order tracking benchmark, on SQLite or PostgreSQL, against one in-process backend over real
//! gRPC: `--couriers` couriers (1,000) each stream one fix per `--fix-interval` (1 s) over a
//! `ReportLocation` stream to their own order, out for delivery; each order has a customer
//! watching it (`Orders/Watch`); `--admins` admins follow the dashboard feed (`role:admin`)
//! while customers keep placing `--place-rate` orders per second. It reports:
//!
//! - the server's CPU: the backend runs on its own runtime, whose threads (and the database
//!   driver's) are told apart from the load generator's by name in /proc;
//! - fix-to-watcher latency: from the moment the courier sends a fix to its arrival in the
//!   customer's Watch (the send time travels in the fix's `speed_mps`, a measuring trick), and
//!   from the fix's capture time (its device time: the courier's schedule, one per interval,
//!   like a phone's GPS) — both include the throttle's wait for a fix held back;
//! - database writes per second: last-known-fix writes (the tracker's counter) and the
//!   placed orders' transactions;
//! - the admin feed's commit-to-delivery latency.
//!
//! ```sh
//! cargo build --release -p herald-backend --example orders_bench
//! nice -n 19 ./target/release/examples/orders_bench                                   # SQLite
//! nice -n 19 ./target/release/examples/orders_bench --database-url postgres://…/bench # PostgreSQL
//! ```

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use clap::Parser;
use herald_backend::{
    Backend, Config,
    auth::dev_key::{self, TokenClaims},
};
use herald_proto::v1::{
    CourierStatus, LocationFix, OrderStatus, OrdersAssignCourierRequest, OrdersPlaceRequest,
    OrdersReportLocationRequest, OrdersSetCourierStatusRequest, OrdersUpdateStatusRequest,
    SubscribeRequest, WatchOrderRequest, order_event, orders_client::OrdersClient,
    orders_place_request::Item, rooms_client::RoomsClient, subscribe_response::Frame,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, transport::Channel};

const SECRET: &str = "bench-secret-bench-secret-bench-secret-0123";

#[derive(Debug, Parser)]
struct Args {
    /// PostgreSQL URL; default: a SQLite file in a temporary directory.
    #[arg(long)]
    database_url: Option<String>,
    /// Couriers, each delivering one order, each order watched by its customer.
    #[arg(long, default_value_t = 1000)]
    couriers: usize,
    /// The time between two fixes of one courier.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    fix_interval: Duration,
    /// Admins following `role:admin`.
    #[arg(long, default_value_t = 10)]
    admins: usize,
    /// New orders placed per second during the measurement (the admin feed's traffic).
    #[arg(long, default_value_t = 5)]
    place_rate: u32,
    /// Warm-up before measuring.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// How long to measure.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    measure: Duration,
    /// HTTP/2 connections the couriers share, and as many again for the watchers and admins
    /// (phones each have their own; the default puts about eight clients on one).
    #[arg(long, default_value_t = 128)]
    connections: usize,
    /// Worker threads of the backend's runtime.
    #[arg(long, default_value_t = 2)]
    server_threads: usize,
    /// The database server's main process (PostgreSQL's postmaster): its CPU and its
    /// children's (the connections' backends) is counted too.
    #[arg(long)]
    database_pid: Option<u32>,
}

/// CPU time (ns) of `pid` and its children now, from /proc/PID/stat (user + system ticks, 100
/// a second).
fn cpu_of_tree(pid: Option<u32>) -> u64 {
    let Some(pid) = pid else { return 0 };
    let Ok(processes) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let mut ticks = 0;
    for process in processes.flatten() {
        let Ok(stat) = std::fs::read_to_string(process.path().join("stat")) else {
            continue;
        };
        let Some((head, tail)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = tail.split_whitespace().collect();
        let this: Option<u32> = head.split_whitespace().next().and_then(|p| p.parse().ok());
        let parent: Option<u32> = fields.get(1).and_then(|p| p.parse().ok());
        if this == Some(pid) || parent == Some(pid) {
            let field = |n: usize| fields.get(n).and_then(|t| t.parse::<u64>().ok());
            ticks += field(11).unwrap_or(0) + field(12).unwrap_or(0);
        }
    }
    ticks * 10_000_000
}

fn token(sub: &str, roles: &[&str]) -> String {
    dev_key::sign_hs256(
        SECRET,
        &TokenClaims::new(sub, roles, Duration::from_secs(24 * 3600)),
    )
    .expect("sign")
}

fn authorized<T>(token: &str, message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("ascii"),
    );
    request
}

fn now_us() -> i64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since.as_micros()).unwrap_or(i64::MAX)
}

fn micros_of(time: &pbjson_types::Timestamp) -> i64 {
    time.seconds * 1_000_000 + i64::from(time.nanos / 1000)
}

/// p50, p99 and max of samples in microseconds, in milliseconds.
fn summary(mut samples: Vec<i64>) -> String {
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

/// CPU time (ns) of this process's threads, split into the load generator's (named `load`,
/// and the main thread, which only waits) and everything else: the backend's runtime and the
/// database driver's threads.
fn cpu_split() -> (u64, u64) {
    let main = std::process::id().to_string();
    let (mut load, mut server) = (0, 0);
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return (0, 0);
    };
    for task in tasks.flatten() {
        let path = task.path();
        let name = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        let ns = std::fs::read_to_string(path.join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0);
        if name.starts_with("load") || task.file_name().to_string_lossy() == main {
            load += ns;
        } else {
            server += ns;
        }
    }
    (load, server)
}

/// The fixes and admin events received during the measurement.
#[derive(Debug, Default)]
struct Samples {
    /// From the courier's send to the watcher.
    fix_latency_us: Vec<i64>,
    /// From the fix's capture (device time) to the watcher.
    capture_latency_us: Vec<i64>,
    admin_latency_us: Vec<i64>,
}

/// The bench's send times ride in `speed_mps`: microseconds modulo this.
const SEND_CLOCK_WRAP: i64 = 1_000_000_000;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HERALD_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.server_threads)
        .thread_name("server")
        .enable_all()
        .build()?;
    let load_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("load")
        .enable_all()
        .build()?;
    let dir = tempfile::tempdir()?;
    let mut config = Config {
        data_dir: dir.path().to_owned(),
        database_url: args.database_url.clone(),
        ..Config::default()
    };
    config.auth.hs256_secret = Some(SECRET.to_owned());
    // Every courier is one sender of signals; the defaults already allow 1 per second.
    let shutdown = CancellationToken::new();
    let (addr, orders, database) = server_rt.block_on(async {
        let backend = Backend::build(config).await?;
        let orders = backend.orders().clone();
        let database = format!("{:?}", backend.store().backend());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(backend.serve(listener, shutdown.clone()));
        Ok::<_, Box<dyn std::error::Error>>((addr, orders, database))
    })?;
    let result = load_rt.block_on(run(args, addr, orders, database));
    shutdown.cancel();
    server_rt.shutdown_timeout(Duration::from_secs(5));
    result
}

async fn run(
    args: Args,
    addr: std::net::SocketAddr,
    orders: herald_backend::domain::orders::Orders,
    database: String,
) -> Result<(), Box<dyn std::error::Error>> {
    let connections = args.connections.max(1);
    let mut channels = Vec::with_capacity(2 * connections);
    for _ in 0..2 * connections {
        channels.push(
            Channel::from_shared(format!("http://{addr}"))?
                .connect()
                .await?,
        );
    }
    // Couriers on the first half of the connections, watchers and admins on the second.
    let channel = |n: usize| channels[n % connections].clone();
    let watcher_channel = |n: usize| channels[connections + n % connections].clone();
    let admin = token("ada", &["admin"]);
    let client = |n: usize| OrdersClient::new(channel(n));

    // Setup: every courier available, one order each, prepared, assigned and picked up.
    let setup = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let ids = Arc::new(Mutex::new(vec![0u64; args.couriers]));
    let parallel = Arc::new(tokio::sync::Semaphore::new(8));
    for n in 0..args.couriers {
        let mut client = client(n);
        let admin = admin.clone();
        let ids = ids.clone();
        let parallel = parallel.clone();
        tasks.spawn(async move {
            let _turn = parallel.acquire().await.expect("open");
            let courier = token(&format!("courier-{n}"), &["courier"]);
            let customer = token(&format!("customer-{n}"), &["customer"]);
            client
                .set_courier_status(authorized(
                    &courier,
                    OrdersSetCourierStatusRequest {
                        status: CourierStatus::Available as i32,
                    },
                ))
                .await?;
            let placed = client
                .place(authorized(&customer, place_request()))
                .await?
                .into_inner();
            let id = placed.order.and_then(|e| e.order).map_or(0, |o| o.id);
            for status in [
                OrderStatus::Accepted,
                OrderStatus::Preparing,
                OrderStatus::Ready,
            ] {
                client
                    .update_status(authorized(&admin, step(id, status)))
                    .await?;
            }
            client
                .assign_courier(authorized(
                    &admin,
                    OrdersAssignCourierRequest {
                        order_id: id,
                        courier_id: format!("courier-{n}"),
                    },
                ))
                .await?;
            client
                .update_status(authorized(&courier, step(id, OrderStatus::OutForDelivery)))
                .await?;
            ids.lock().expect("not poisoned")[n] = id;
            Ok::<_, tonic::Status>(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    let ids: Vec<u64> = ids.lock().expect("not poisoned").clone();
    println!(
        "# order tracking benchmark on {database}\n\n{} orders out for delivery, set up in {:.1} s",
        ids.len(),
        setup.elapsed().as_secs_f64()
    );

    let measuring = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop = CancellationToken::new();
    let samples = Arc::new(Mutex::new(Samples::default()));

    // Customers watch their orders.
    for (n, id) in ids.iter().copied().enumerate() {
        let mut client = OrdersClient::new(watcher_channel(n));
        let customer = token(&format!("customer-{n}"), &["customer"]);
        let (measuring, stop, samples) = (measuring.clone(), stop.clone(), samples.clone());
        tokio::spawn(async move {
            let request = authorized(
                &customer,
                WatchOrderRequest {
                    order_id: id,
                    since: None,
                },
            );
            let Ok(response) = client.watch(request).await else {
                return;
            };
            let mut stream = response.into_inner();
            let (mut sent, mut captured) = (vec![], vec![]);
            loop {
                let message = tokio::select! {
                    _ = stop.cancelled() => break,
                    message = stream.message() => message,
                };
                let Ok(Some(event)) = message else { break };
                if let Some(order_event::Event::CourierLocation(location)) = event.event
                    && measuring.load(std::sync::atomic::Ordering::Relaxed)
                    && let Some(fix) = location.fix
                {
                    let now = now_us();
                    let at = fix.speed_mps.unwrap_or_default() as i64;
                    sent.push((now % SEND_CLOCK_WRAP - at).rem_euclid(SEND_CLOCK_WRAP));
                    if let Some(device) = fix.device_time {
                        captured.push(now - micros_of(&device));
                    }
                }
            }
            let mut samples = samples.lock().expect("not poisoned");
            samples.fix_latency_us.extend(sent);
            samples.capture_latency_us.extend(captured);
        });
    }
    // Admins follow the dashboard feed.
    for n in 0..args.admins {
        let mut rooms = RoomsClient::new(watcher_channel(n));
        let admin = token(&format!("admin-{n}"), &["admin"]);
        let (measuring, stop, samples) = (measuring.clone(), stop.clone(), samples.clone());
        tokio::spawn(async move {
            let request = authorized(
                &admin,
                SubscribeRequest {
                    topic: "role:admin".into(),
                    since: None,
                },
            );
            let Ok(response) = rooms.subscribe(request).await else {
                return;
            };
            let mut stream = response.into_inner();
            let mut mine = vec![];
            loop {
                let message = tokio::select! {
                    _ = stop.cancelled() => break,
                    message = stream.message() => message,
                };
                let Ok(Some(response)) = message else { break };
                if let Some(Frame::Event(event)) = response.frame
                    && measuring.load(std::sync::atomic::Ordering::Relaxed)
                    && let Some(time) = event.time
                {
                    mine.push(now_us() - micros_of(&time));
                }
            }
            samples
                .lock()
                .expect("not poisoned")
                .admin_latency_us
                .extend(mine);
        });
    }
    // Couriers stream their fixes, spread over the first interval.
    let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut couriers = Vec::with_capacity(ids.len());
    for (n, id) in ids.iter().copied().enumerate() {
        let mut client = client(n);
        let courier = token(&format!("courier-{n}"), &["courier"]);
        let (stop, sent) = (stop.clone(), sent.clone());
        let every = args.fix_interval;
        let offset = every.mul_f64(n as f64 / ids.len().max(1) as f64);
        couriers.push(tokio::spawn(async move {
            let (tx, rx) = mpsc::channel(4);
            let call = tokio::spawn(async move {
                client
                    .report_location(authorized(&courier, ReceiverStream::new(rx)))
                    .await
            });
            tokio::time::sleep(offset).await;
            let mut ticks = tokio::time::interval(every);
            // The capture schedule on the wall clock: one fix per interval, however late the
            // courier's task gets to send it.
            let (wall, start) = (SystemTime::now(), tokio::time::Instant::now());
            let mut lat = 48.80 + (n % 100) as f64 / 1000.0;
            loop {
                let scheduled = tokio::select! {
                    _ = stop.cancelled() => break,
                    at = ticks.tick() => at,
                };
                lat += 0.0001;
                let captured = wall + scheduled.duration_since(start);
                let fix = LocationFix {
                    lat,
                    lng: 2.35,
                    accuracy_m: 5.0,
                    heading_deg: Some(0.0),
                    speed_mps: Some((now_us() % SEND_CLOCK_WRAP) as f64),
                    device_time: Some(herald_proto::timestamp(captured)),
                };
                let message = OrdersReportLocationRequest {
                    order_id: id,
                    fix: Some(fix),
                };
                if tx.send(message).await.is_err() {
                    break;
                }
                sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            drop(tx);
            call.await.ok().and_then(Result::ok).map(|r| r.into_inner())
        }));
    }
    // Customers keep ordering: the admin feed's traffic and the orders' writes.
    let placed = Arc::new(std::sync::atomic::AtomicU64::new(0));
    if args.place_rate > 0 {
        let mut client = client(0);
        let (stop, placed) = (stop.clone(), placed.clone());
        let every = Duration::from_secs(1) / args.place_rate;
        tokio::spawn(async move {
            let customer = token("walk-in", &["customer"]);
            let mut ticks = tokio::time::interval(every);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = ticks.tick() => {}
                }
                if client
                    .place(authorized(&customer, place_request()))
                    .await
                    .is_ok()
                {
                    placed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        });
    }

    tokio::time::sleep(args.warmup).await;
    let database_before = cpu_of_tree(args.database_pid);
    let before = (
        cpu_split(),
        orders.tracker().stats(),
        sent.load(std::sync::atomic::Ordering::Relaxed),
        placed.load(std::sync::atomic::Ordering::Relaxed),
        Instant::now(),
    );
    measuring.store(true, std::sync::atomic::Ordering::Relaxed);
    tokio::time::sleep(args.measure).await;
    measuring.store(false, std::sync::atomic::Ordering::Relaxed);
    let database_after = cpu_of_tree(args.database_pid);
    let after = (
        cpu_split(),
        orders.tracker().stats(),
        sent.load(std::sync::atomic::Ordering::Relaxed),
        placed.load(std::sync::atomic::Ordering::Relaxed),
        Instant::now(),
    );
    stop.cancel();
    let mut rejected = 0;
    let mut codes = std::collections::BTreeMap::<String, u64>::new();
    for courier in couriers {
        if let Ok(Some(answer)) = courier.await {
            rejected += answer.rejected;
            for refusal in answer.rejections {
                *codes.entry(refusal.code).or_default() += 1;
            }
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await; // the watchers hand in their samples

    let seconds = after.4.duration_since(before.4).as_secs_f64();
    let per_second = |a: u64, b: u64| (b - a) as f64 / seconds;
    let cpu = |a: u64, b: u64| (b - a) as f64 / 1e9 / seconds * 100.0;
    let samples = std::mem::take(&mut *samples.lock().expect("not poisoned"));
    let distinct_watchers: HashSet<u64> = ids.iter().copied().collect();
    println!(
        "\n{} couriers streaming one fix per {:?} to {} watched orders, {} admins on role:admin, \
         {} new orders/s; measured for {:.0} s after {:.0} s of warm-up\n",
        ids.len(),
        args.fix_interval,
        distinct_watchers.len(),
        args.admins,
        args.place_rate,
        seconds,
        args.warmup.as_secs_f64()
    );
    println!("| measure | result |\n|---|---|");
    println!(
        "| server CPU (backend runtime + database threads) | {:.0} % of one core |",
        cpu(before.0.1, after.0.1)
    );
    if args.database_pid.is_some() {
        println!(
            "| database server CPU (PostgreSQL and its backends) | {:.0} % of one core |",
            cpu(database_before, database_after)
        );
    }
    println!(
        "| load generator CPU (same process) | {:.0} % of one core |",
        cpu(before.0.0, after.0.0)
    );
    println!(
        "| fixes sent / accepted | {:.0}/s / {:.0}/s ({rejected} refused{}) |",
        per_second(before.2, after.2),
        per_second(before.1.fixes, after.1.fixes),
        if codes.is_empty() {
            String::new()
        } else {
            format!(", first ones by code: {codes:?}")
        }
    );
    println!(
        "| location signals sent | {:.0}/s |",
        per_second(before.1.signals, after.1.signals)
    );
    println!(
        "| locations received by watchers | {:.0}/s |",
        samples.fix_latency_us.len() as f64 / seconds
    );
    println!(
        "| fix-to-watcher latency, from the courier's send | {} |",
        summary(samples.fix_latency_us)
    );
    println!(
        "| fix-to-watcher latency, from the fix's capture (device time) | {} |",
        summary(samples.capture_latency_us)
    );
    println!(
        "| database writes: last known fix | {:.0} rows/s in {:.1} transactions/s |",
        per_second(before.1.stores, after.1.stores),
        per_second(before.1.store_transactions, after.1.store_transactions)
    );
    println!(
        "| database writes: orders placed (one transaction, 2 events each) | {:.1}/s |",
        per_second(before.3, after.3)
    );
    println!(
        "| admin feed commit-to-delivery | {} |",
        summary(samples.admin_latency_us)
    );
    Ok(())
}

fn place_request() -> OrdersPlaceRequest {
    OrdersPlaceRequest {
        items: vec![Item {
            sku: "margherita".into(),
            name: "Margherita".into(),
            quantity: 2,
            unit_price_minor: 850,
        }],
        currency: "EUR".into(),
        delivery_address: "12 Rue de la Paix".into(),
        note: String::new(),
        client_total_minor: 1700,
    }
}

fn step(id: u64, status: OrderStatus) -> OrdersUpdateStatusRequest {
    OrdersUpdateStatusRequest {
        order_id: id,
        status: status as i32,
        ..OrdersUpdateStatusRequest::default()
    }
}
