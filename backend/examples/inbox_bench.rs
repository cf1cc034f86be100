//! Notification inbox benchmark, on SQLite or PostgreSQL, against one in-process backend over
//! real gRPC:
//!
//! - **batch create**: `Create` for `--recipients` users in one call (one transaction: the
//!   rows, a `notification.created` and a `notification.counts` event per recipient);
//! - **a big inbox**: one user with `--inbox` notifications (inserted directly, spread over
//!   four types, 40 % read), then the latency of `List` (first page; unread of one type; a
//!   walk of keyset pages), `Counts`, and of the changes that recount the inbox (`MarkRead`
//!   of one, `Create` of one).
//!
//! ```sh
//! cargo run --release -p herald-backend --example inbox_bench                      # SQLite
//! cargo run --release -p herald-backend --example inbox_bench -- \
//!     --database-url postgres://postgres@127.0.0.1:5432/bench                       # PostgreSQL
//! ```

use std::time::{Duration, Instant, SystemTime};

use clap::Parser;
use herald_backend::{
    Backend, Config,
    auth::dev_key::{self, TokenClaims},
    domain::inbox::{
        queries,
        rules::{self, DraftInput, Kind},
    },
};
use herald_proto::v1::{
    NotificationType, NotificationsCountsRequest, NotificationsCreateRequest,
    NotificationsListRequest, NotificationsMarkReadRequest,
    notifications_client::NotificationsClient,
};
use tokio_util::sync::CancellationToken;
use tonic::{Request, transport::Channel};

const SECRET: &str = "bench-secret-bench-secret-bench-secret-0123";

#[derive(Debug, Parser)]
struct Args {
    /// PostgreSQL URL; default: a SQLite file in a temporary directory.
    #[arg(long)]
    database_url: Option<String>,
    /// Recipients of each batch Create.
    #[arg(long, default_value_t = 10_000)]
    recipients: usize,
    /// How many batch Creates.
    #[arg(long, default_value_t = 3)]
    batches: usize,
    /// Notifications in the big inbox.
    #[arg(long, default_value_t = 100_000)]
    inbox: usize,
    /// Calls per measured read.
    #[arg(long, default_value_t = 200)]
    reads: usize,
    /// Calls per measured write.
    #[arg(long, default_value_t = 100)]
    writes: usize,
}

fn token(sub: &str, roles: &[&str]) -> String {
    dev_key::sign_hs256(
        SECRET,
        &TokenClaims::new(sub, roles, Duration::from_secs(3600)),
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

/// p50, p99 and max of `samples`, in milliseconds.
fn summary(mut samples: Vec<Duration>) -> String {
    samples.sort();
    let at = |q: f64| {
        let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
        samples[i].as_secs_f64() * 1000.0
    };
    format!(
        "p50 {:.2} ms · p99 {:.2} ms · max {:.2} ms",
        at(0.5),
        at(0.99),
        at(1.0)
    )
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
    config.grpc.max_decode_bytes = 8 * 1024 * 1024;
    let backend = Backend::build(config).await?;
    let store = backend.store().clone();
    let database = format!("{:?}", store.backend());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(backend.serve(listener, shutdown.clone()));
    let channel = Channel::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    let mut client = NotificationsClient::new(channel)
        .max_decoding_message_size(8 * 1024 * 1024)
        .max_encoding_message_size(8 * 1024 * 1024);
    let service = token("bench-service", &["service"]);
    let big = token("big", &[]);

    println!("# inbox benchmark on {database}\n");
    println!("| measure | result |\n|---|---|");

    // Batch create.
    let mut rates = vec![];
    for batch in 0..args.batches {
        let users: Vec<String> = (0..args.recipients)
            .map(|n| format!("member-{batch}-{n}"))
            .collect();
        let request = NotificationsCreateRequest {
            user_ids: users,
            r#type: NotificationType::NewConversationGroup.into(),
            title: "You were added to #launch".into(),
            content: "Say hello to the team".into(),
            ..NotificationsCreateRequest::default()
        };
        let started = Instant::now();
        client.create(authorized(&service, request)).await?;
        let took = started.elapsed();
        rates.push(args.recipients as f64 / took.as_secs_f64());
        println!(
            "| batch Create, {} recipients (run {}) | {:.0} ms, {:.0} notifications/s ({} events) |",
            args.recipients,
            batch + 1,
            took.as_secs_f64() * 1000.0,
            args.recipients as f64 / took.as_secs_f64(),
            args.recipients * 2
        );
    }

    // A big inbox, inserted directly (the rows a year of notifications leaves).
    let started = Instant::now();
    let now = SystemTime::now();
    let kinds = [
        Kind::NewMessage,
        Kind::UserMentioned,
        Kind::MessageReaction,
        Kind::MissedCall,
    ];
    let mut inserted = 0;
    while inserted < args.inbox {
        let tx = store.begin().await?;
        let end = (inserted + 20_000).min(args.inbox);
        let rows: Vec<_> = (inserted..end)
            .map(|n| {
                let draft = rules::draft(
                    DraftInput {
                        kind: Some(kinds[n % kinds.len()]),
                        priority: None,
                        title: format!("notification {n}"),
                        content: "a short line of content".into(),
                        data_json: None,
                        sender: None,
                        conversation_id: format!("c{}", n % 50),
                        message_id: String::new(),
                        call_id: String::new(),
                        message_preview: String::new(),
                        expires_at: None,
                    },
                    now,
                )
                .expect("a valid draft");
                let created = rules::unix_ms(now) - (args.inbox - n) as i64 * 1000;
                let mut row =
                    queries::new_row(uuid::Uuid::now_v7().to_string(), "big", &draft, created);
                if n % 5 < 2 {
                    row.seen_at_ms = Some(created);
                    row.read_at_ms = Some(created);
                }
                row
            })
            .collect();
        queries::insert(tx.conn(), &rows).await?;
        tx.commit().await?;
        inserted = end;
    }
    println!(
        "| fill one inbox with {} notifications (direct insert) | {:.1} s |",
        args.inbox,
        started.elapsed().as_secs_f64()
    );

    let mut measure = async |name: &str, calls: usize, request: NotificationsListRequest| {
        let mut samples = Vec::with_capacity(calls);
        for _ in 0..calls {
            let started = Instant::now();
            client
                .list(authorized(&big, request.clone()))
                .await
                .expect("list");
            samples.push(started.elapsed());
        }
        println!("| {name} | {} |", summary(samples));
    };
    measure(
        &format!("`List`, first page of 20, inbox of {}", args.inbox),
        args.reads,
        NotificationsListRequest::default(),
    )
    .await;
    measure(
        "`List`, unread of one type, page of 50",
        args.reads,
        NotificationsListRequest {
            limit: 50,
            unread_only: true,
            r#type: NotificationType::MissedCall.into(),
            ..NotificationsListRequest::default()
        },
    )
    .await;

    // A walk of keyset pages: each page costs the same however deep.
    let mut samples = vec![];
    let mut cursor = String::new();
    for _ in 0..args.reads {
        let started = Instant::now();
        let page = client
            .list(authorized(
                &big,
                NotificationsListRequest {
                    limit: 50,
                    cursor: cursor.clone(),
                    ..NotificationsListRequest::default()
                },
            ))
            .await?
            .into_inner();
        samples.push(started.elapsed());
        cursor = page.next_cursor;
    }
    println!(
        "| `List`, {} consecutive pages of 50 (keyset) | {} |",
        args.reads,
        summary(samples)
    );

    let mut samples = vec![];
    for _ in 0..args.reads {
        let started = Instant::now();
        client
            .counts(authorized(&big, NotificationsCountsRequest {}))
            .await?;
        samples.push(started.elapsed());
    }
    println!(
        "| `Counts`, inbox of {} | {} |",
        args.inbox,
        summary(samples)
    );

    let unread: Vec<String> = client
        .list(authorized(
            &big,
            NotificationsListRequest {
                limit: 50,
                unread_only: true,
                ..NotificationsListRequest::default()
            },
        ))
        .await?
        .into_inner()
        .notifications
        .into_iter()
        .map(|n| n.id)
        .collect();
    let mut samples = vec![];
    for id in unread.iter().cycle().take(args.writes.min(unread.len())) {
        let started = Instant::now();
        client
            .mark_read(authorized(
                &big,
                NotificationsMarkReadRequest {
                    ids: vec![id.clone()],
                },
            ))
            .await?;
        samples.push(started.elapsed());
    }
    println!(
        "| `MarkRead` of one (change + recount), inbox of {} | {} |",
        args.inbox,
        summary(samples)
    );
    let mut samples = vec![];
    for n in 0..args.writes {
        let started = Instant::now();
        client
            .create(authorized(
                &service,
                NotificationsCreateRequest {
                    user_ids: vec!["big".into()],
                    r#type: NotificationType::NewMessage.into(),
                    title: format!("live {n}"),
                    ..NotificationsCreateRequest::default()
                },
            ))
            .await?;
        samples.push(started.elapsed());
    }
    println!(
        "| `Create` of one into the inbox of {} (insert + recount) | {} |",
        args.inbox,
        summary(samples)
    );
    let mean = rates.iter().sum::<f64>() / rates.len() as f64;
    println!("\nbatch create mean: {mean:.0} notifications/s");

    shutdown.cancel();
    let _ = server.await;
    Ok(())
}
