//! The `herald` binary: it composes the backend (`herald-backend`) and the browser edge
//! (`herald-edge`), which know nothing of each other, and adds the tools around them.
//!
//! - this file: the command line (`serve`, `edge`, `token`, `migrate`, and the small gRPC
//!   clients `subscribe`, `publish` and `history` that let a newcomer watch events flow in two
//!   terminals) and how flags and `HERALD_*` variables override the file;
//! - [`config`]: the TOML file, split into the backend's part and the edge's `[edge]`;
//! - `serve`: binding listeners and running the backend, the edge, or both;
//! - `client`, `migrate`: the client commands and `herald migrate`;
//! - `deploy`: `herald demo deploy` (a build worker at human pace) and `herald watch` (a
//!   pretty printer for typed streams: a deployment's status line, then its log).
//! - `demo`: `herald demo inbox`, `herald demo reviews`, `herald demo chat` and `herald demo shop`, narrated
//!   scripts against a running server.
//!
//! `main.rs` only parses arguments, sets up tracing and signals, and calls in here.

pub mod config;

mod client;
mod demo;
mod deploy;
mod migrate;
mod serve;

pub use config::Settings;
pub use serve::{EdgeRuntime, serve, serve_edge};

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};
use herald_backend::{
    Config,
    auth::dev_key::{self, TokenClaims},
};

#[derive(Debug, Parser)]
#[command(
    name = "herald",
    version,
    about = "Herald: a real-time event backend. Ordered events per topic, gapless resume, JWT auth.",
    long_about = "Herald: a real-time event backend.\n\n\
        Apps publish events to topics (`kind:id`, for example `room:lobby`, `user:alice`, \
        `order:42`); Herald gives each event the topic's next offset, keeps recent history and \
        streams every event, in order and without gaps, to the subscribers allowed to see it.\n\n\
        Quick start:\n  herald serve                          # gRPC on 127.0.0.1:50051, data in ./herald-data\n  \
        herald subscribe room:lobby           # in a second terminal\n  \
        herald publish room:lobby --type chat.message --data '{\"text\":\"hi\"}'\n  \
        herald token --sub alice --role admin # a token for your own clients\n  \
        herald demo deploy                    # a build worker; then `herald watch deployment:1`\n  \
        herald demo inbox                     # watch a notification inbox work, step by step\n  \
        herald demo reviews                   # watch reviewers share an approval queue\n  \
        herald demo chat                      # simulated users chat; then `herald watch conv:1`\n  \
        herald demo shop                      # a shop day; then `herald watch order:1`\n\n\
        Settings come from flags, then HERALD_* environment variables, then the TOML file given \
        by --config, then defaults."
)]
pub struct Cli {
    /// A TOML configuration file; flags and HERALD_* variables override it.
    #[arg(long, global = true, env = "HERALD_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Log line format.
    #[arg(long, global = true, env = "HERALD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run Herald on this machine: the gRPC backend (SQLite, in-memory broker; or PostgreSQL
    /// and a shared Redis broker with --database-url and --broker for several backends) and
    /// the browser edge (WebSocket at /ws, grpc-web) next to it (--no-edge: the backend only).
    Serve(ServeArgs),
    /// Run only a browser edge in front of one or more remote backends.
    Edge(EdgeArgs),
    /// Print a signed token (JWT) that a server using the same data directory accepts.
    Token(TokenArgs),
    /// Stream a topic's events to stdout as JSON lines, resuming after disconnects.
    Subscribe(SubscribeArgs),
    /// Publish one event to a topic and print its position.
    Publish(PublishArgs),
    /// Print a topic's retained events as JSON.
    History(HistoryArgs),
    /// Watch a topic in human form: for `deployment:ID`, a status line, then the log line by
    /// line, until the deployment finishes; other topics, one line per event.
    Watch(WatchArgs),
    /// Demonstrations that act against a running server: a build worker, a notification
    /// inbox, a review queue, a shop day.
    #[command(
        subcommand,
        long_about = "Demonstrations that act against a running server as services and users, \
            so a newcomer can watch Herald work.\n\n\
            Start a server first, then run a demo in a second terminal:\n  \
            herald serve\n  \
            herald demo deploy\n  \
            herald demo inbox\n  \
            herald demo reviews\n  \
            herald demo chat\n  \
            herald demo shop\n\n\
            The demos sign their own tokens with the server's development key (in --data-dir) \
            or with the server's HS256 secret."
    )]
    Demo(DemoCommand),
    /// Apply, roll back or list database migrations (`serve` applies pending ones by itself).
    Migrate(MigrateArgs),
}

/// What every demo needs.
#[derive(Debug, Args)]
pub struct DemoCommon {
    /// The Herald gRPC server.
    #[arg(
        long,
        env = "HERALD_SERVER",
        default_value = "http://127.0.0.1:50051",
        value_name = "URL"
    )]
    pub server: String,

    /// The server's HS256 secret, to sign the demo's tokens [default: the development key in the data directory]
    #[arg(
        long,
        env = "HERALD_AUTH_HS256_SECRET",
        value_name = "SECRET",
        hide_env_values = true
    )]
    pub secret: Option<String>,

    /// The pause between steps, for example 0s, 500ms, 2s.
    #[arg(long, default_value = "800ms", value_parser = humantime::parse_duration)]
    pub pace: Duration,

    #[command(flatten)]
    pub data: DataDirArg,
}

#[derive(Debug, Args)]
pub struct InboxDemoArgs {
    /// The user whose inbox the demo fills.
    #[arg(long, default_value = "alice", value_name = "USER_ID")]
    pub user: String,

    #[command(flatten)]
    pub common: DemoCommon,
}

#[derive(Debug, Args)]
pub struct ReviewsDemoArgs {
    /// The applicant's user id (they get the decisions in their inbox).
    #[arg(long, default_value = "marie", value_name = "USER_ID")]
    pub applicant: String,

    #[command(flatten)]
    pub common: DemoCommon,
}

#[derive(Debug, Args)]
pub struct ChatDemoArgs {
    /// The name of the group the demo creates.
    #[arg(long, default_value = "demo team", value_name = "NAME")]
    pub group: String,

    #[command(flatten)]
    pub common: DemoCommon,
}

#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// What to do.
    #[arg(value_enum, default_value_t = MigrateAction::Status)]
    pub action: MigrateAction,

    /// How many migrations to apply or roll back [default: every pending one for `up`, the
    /// newest one for `down`]
    #[arg(long)]
    pub steps: Option<u32>,

    #[command(flatten)]
    pub data: DataDirArg,

    /// Database URL [default: SQLite in the data directory]
    #[arg(
        long,
        env = "HERALD_DATABASE_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    pub database_url: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MigrateAction {
    /// Apply pending migrations.
    Up,
    /// Roll back applied migrations, newest first.
    Down,
    /// List every migration and whether it is applied.
    Status,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address of the gRPC server [default: 127.0.0.1:50051]
    #[arg(long, env = "HERALD_GRPC_ADDR", value_name = "ADDR")]
    pub grpc_addr: Option<SocketAddr>,

    /// Address of the backend's Prometheus `/metrics` [default: 127.0.0.1:9464 without --config; with one, its `metrics_addr`, off when unset]
    #[arg(long, env = "HERALD_METRICS_ADDR", value_name = "ADDR")]
    pub metrics_addr: Option<SocketAddr>,

    #[command(flatten)]
    pub data: DataDirArg,

    /// Database URL, for example postgres://user:pass@host/db [default: SQLite in the data directory]
    #[arg(
        long,
        env = "HERALD_DATABASE_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    pub database_url: Option<String>,

    /// The Redis broker shared by every backend of a cluster, for example redis://127.0.0.1:6379/0 [default: the in-memory broker of this process, one backend only]
    #[arg(
        long = "broker",
        env = "HERALD_BROKER_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    pub broker_url: Option<String>,

    /// Shared HS256 secret for verifying tokens (at least 32 bytes) [default: the development key in the data directory]
    #[arg(
        long,
        env = "HERALD_AUTH_HS256_SECRET",
        value_name = "SECRET",
        hide_env_values = true
    )]
    pub hs256_secret: Option<String>,

    /// Address of the browser edge (the web console at /, WebSocket /ws, grpc-web, /healthz, /readyz) [default: 127.0.0.1:8080]
    #[arg(long, env = "HERALD_HTTP_ADDR", value_name = "ADDR")]
    pub http_addr: Option<SocketAddr>,

    /// Run the backend only, without the browser edge.
    #[arg(long)]
    pub no_edge: bool,

    /// Worker threads of the edge's own runtime [default: one per CPU]. The edge runs apart
    /// from the backend, so a saturated fan-out to sockets cannot queue the backend's
    /// publishes and database work behind it.
    #[arg(long, env = "HERALD_EDGE_THREADS", value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub edge_threads: Option<u16>,

    #[command(flatten)]
    pub edge_auth: EdgeAuthArgs,
}

#[derive(Debug, Args)]
pub struct EdgeArgs {
    /// A backend's gRPC URL (repeatable; streams and calls are spread over them).
    #[arg(
        long = "backend",
        env = "HERALD_BACKENDS",
        value_delimiter = ',',
        value_name = "URL",
        required = true
    )]
    pub backends: Vec<String>,

    /// Address of the edge [default: 127.0.0.1:8080]
    #[arg(long, env = "HERALD_HTTP_ADDR", value_name = "ADDR")]
    pub http_addr: Option<SocketAddr>,

    /// An origin allowed to open sockets and call grpc-web, e.g. https://app.example.com (repeatable; `*` allows any)
    #[arg(
        long = "allowed-origin",
        env = "HERALD_ALLOWED_ORIGINS",
        value_delimiter = ',',
        value_name = "ORIGIN"
    )]
    pub allowed_origins: Vec<String>,

    #[command(flatten)]
    pub edge_auth: EdgeAuthArgs,

    /// Share the listening port with other edge processes (SO_REUSEPORT): the kernel spreads
    /// new connections over them, so one address serves more sockets than one process can hold.
    #[arg(long)]
    pub reuse_port: bool,

    /// Sign the edge's service tokens with this HS256 secret (the backends' secret).
    #[arg(
        long,
        env = "HERALD_AUTH_HS256_SECRET",
        value_name = "SECRET",
        hide_env_values = true
    )]
    pub hs256_secret: Option<String>,

    #[command(flatten)]
    pub data: DataDirArg,
}

/// How the edge authenticates its own shared streams to the backends. Sockets' requests always
/// carry the socket's own token.
#[derive(Debug, Args)]
pub struct EdgeAuthArgs {
    /// A token with the `service` role for the edge's shared streams [default: signed with the HS256 secret in effect]
    #[arg(
        long,
        env = "HERALD_EDGE_SERVICE_TOKEN",
        value_name = "JWT",
        hide_env_values = true
    )]
    pub edge_service_token: Option<String>,
}

#[derive(Debug, Args)]
pub struct DataDirArg {
    /// Directory for the SQLite database and the development signing key [default: ./herald-data]
    #[arg(long, env = "HERALD_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct TokenArgs {
    /// The user id (`sub` claim).
    #[arg(long)]
    pub sub: String,

    /// A role to grant (repeatable), for example `admin` or `service`.
    #[arg(long = "role", value_name = "ROLE")]
    pub roles: Vec<String>,

    /// Lifetime, for example 30m, 1h, 7d.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub ttl: Duration,

    /// `iss` claim to include.
    #[arg(long)]
    pub issuer: Option<String>,

    /// `aud` claim to include.
    #[arg(long)]
    pub audience: Option<String>,

    #[command(flatten)]
    pub data: DataDirArg,

    /// Sign with this HS256 secret instead of the development key.
    #[arg(
        long,
        env = "HERALD_AUTH_HS256_SECRET",
        value_name = "SECRET",
        hide_env_values = true
    )]
    pub secret: Option<String>,
}

#[derive(Debug, Args)]
pub struct ClientArgs {
    /// The Herald gRPC server.
    #[arg(
        long,
        env = "HERALD_SERVER",
        default_value = "http://127.0.0.1:50051",
        value_name = "URL"
    )]
    pub server: String,

    /// The token to present [default: a short-lived `service` token signed with the development key]
    #[arg(long, env = "HERALD_TOKEN", value_name = "JWT", hide_env_values = true)]
    pub token: Option<String>,

    #[command(flatten)]
    pub data: DataDirArg,
}

#[derive(Debug, Args)]
pub struct SubscribeArgs {
    /// The topic, `kind:id`: user, role, group, conv, order, deployment or room.
    pub topic: String,

    /// Resume after this position, written OFFSET:EPOCH (as printed in `subscribed`).
    #[arg(long, value_name = "OFFSET:EPOCH")]
    pub since: Option<String>,

    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct PublishArgs {
    /// The topic, `kind:id`.
    pub topic: String,

    /// The event type, for example chat.message.
    #[arg(long = "type", value_name = "TYPE")]
    pub event_type: String,

    /// The event data: a JSON object.
    #[arg(long, default_value = "{}", value_name = "JSON")]
    pub data: String,

    /// Retrying with the same key publishes nothing new (per publisher; remembered 5 minutes
    /// on memory topics, `topics.idempotency_window` on durable ones).
    #[arg(long, value_name = "KEY")]
    pub idempotency_key: Option<String>,

    /// Insist on a durable publish: refused for memory topics (`room:` by default). Publishes
    /// to durable kinds (user, role, group, conv, order, deployment) are always committed to
    /// the database first, with or without this flag.
    #[arg(long)]
    pub durable: bool,

    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// The topic, `kind:id`.
    pub topic: String,

    /// Only events after this position, written OFFSET:EPOCH.
    #[arg(long, value_name = "OFFSET:EPOCH")]
    pub since: Option<String>,

    /// At most this many events (1–1000).
    #[arg(long, default_value_t = 100)]
    pub limit: u32,

    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// The topic, `kind:id`, for example deployment:7 (or just the deployment's number).
    pub topic: String,

    /// Resume after this position, written OFFSET:EPOCH.
    #[arg(long, value_name = "OFFSET:EPOCH")]
    pub since: Option<String>,

    /// Deployments: show only the last N lines of the log so far, then live.
    #[arg(long, value_name = "N")]
    pub tail: Option<u32>,

    /// Never colour the output (also when NO_COLOR is set or stdout is not a terminal).
    #[arg(long)]
    pub no_color: bool,

    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Subcommand)]
pub enum DemoCommand {
    /// Act as a build worker: create a deployment as the user `demo`, then clone, build an
    /// image in several steps with a few hundred log lines (some in colour), deploy and
    /// succeed (or fail with --fail), over a few seconds. Watch it with the printed
    /// `herald watch deployment:ID`.
    Deploy(DemoDeployArgs),
    /// A service notifies a user: typed notifications pushed whole, the badge after every
    /// change, sanitising, the mention rate limit, preferences, do-not-disturb, snooze.
    #[command(
        long_about = "A service (role `service`) notifies one user, and the demo \
        watches the user's inbox, user:<USER>. Every step prints what it pushed: the whole \
        notification on creation (no refetch), each change (seen, read, archived, snoozed, \
        deleted) and, in the same transaction, the new badge.\n\n\
        Steps: a mention with a 25-word preview; HTML removed on the way in; 6 mentions from \
        one sender in a minute (5 created, 1 rate-limited); MarkSeen, MarkRead, MarkAllRead by \
        type; a type turned off (suppressed); do-not-disturb (quiet, except urgent); snooze \
        and unsnooze; archive and delete; a List page.\n\n\
        Watch the raw stream in a third terminal:\n  \
        herald subscribe user:alice --token $(herald token --sub alice)"
    )]
    Inbox(InboxDemoArgs),
    /// Signups queue for reviewers: every reviewer sees a request at once, the first decision
    /// wins, N-of-M approvals, the applicant told in their inbox.
    #[command(
        long_about = "A signup service submits requests to the `admin` review queue, \
        role:admin. Two reviewers, alice and bob, watch it, and the applicant watches their \
        inbox. Steps: a request appears for both reviewers with the pending count; both \
        approve at the same moment (one wins, the other gets FAILED_PRECONDITION \"already \
        approved by … at …\"); a request needing two approvals; a rejection with a reason \
        that reaches the applicant's inbox in the same transaction; self-review and a \
        non-reviewer refused; the audit trail."
    )]
    Reviews(ReviewsDemoArgs),
    /// Simulated users chat in a group: typing, messages, a reply with mentions, a reaction,
    /// a read receipt, an edit, a deletion, a member removed and added back.
    #[command(
        long_about = "Three users, ana (the group's admin), ben and cleo, chat in a group \
        conversation at a human pace, and the demo prints the conversation's stream as ana \
        sees it, typing signals and presence included. Steps: the group and its conversation; \
        ben and cleo open it; ben types, then sends; cleo replies and mentions ben and ana \
        (their inboxes are notified); ana reacts; ben reads (a read receipt); cleo edits; ben \
        deletes a message (a tombstone); ana removes cleo (cleo's stream ends right after the \
        removal with PERMISSION_DENIED) and adds her back; everyone's unread counts.\n\n\
        Watch it from a third terminal with the printed `herald watch conv:ID`."
    )]
    Chat(ChatDemoArgs),
    /// A shop day: customers order, the kitchen prepares, payments arrive, two couriers drive
    /// their routes streaming a fix every second, the shop closes.
    #[command(
        long_about = "A shop day against a running server. ada (admin) opens the shop and \
        publishes an offer; couriers kim and lee start their shift; customers carol, dave and \
        erin order (the server computes each total; a wrong one is refused); the kitchen \
        accepts and prepares; the payment service records card payments (a retried webhook is \
        a duplicate); couriers are assigned, pick up and drive a route streaming a fix every \
        second (ReportLocation), then deliver; the last order is paid in cash; the shop closes.\n\n\
        ada's dashboard (role:admin) and carol's map (Orders/Watch of her order) print live. \
        Watch any order from another terminal:\n  \
        herald watch order:1"
    )]
    Shop(ShopDemoArgs),
}

#[derive(Debug, Args)]
pub struct ShopDemoArgs {
    /// How many orders the customers place (1–50).
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub orders: u32,

    /// How many fixes each courier sends along one route.
    #[arg(long, default_value_t = 12, value_name = "N")]
    pub route_fixes: u32,

    /// The time between two fixes of a courier, for example 1s or 100ms.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub fix_interval: Duration,

    #[command(flatten)]
    pub common: DemoCommon,
}

#[derive(Debug, Args)]
pub struct DemoDeployArgs {
    /// End with a failed build instead of success: a test fails, and the deployment finishes
    /// FAILED with an error message and exit code 101.
    #[arg(long)]
    pub fail: bool,

    /// How many log lines the build writes.
    #[arg(long, default_value_t = 300, value_name = "N")]
    pub lines: u32,

    /// The application deployed.
    #[arg(long, default_value = "web-shop", value_name = "NAME")]
    pub application: String,

    /// The git ref deployed.
    #[arg(long = "ref", default_value = "main", value_name = "REF")]
    pub git_ref: String,

    /// How long the whole demo takes, roughly, for example 6s or 30s.
    #[arg(long, default_value = "6s", value_parser = humantime::parse_duration)]
    pub duration: Duration,

    /// Wait this long after creating the deployment before the worker starts (time to open
    /// a watcher).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub start_after: Duration,

    #[command(flatten)]
    pub client: ClientArgs,
}

/// A command-line failure, printed as `error: …` with exit status 1.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CliError(pub String);

impl CliError {
    pub fn new(message: impl std::fmt::Display) -> CliError {
        CliError(message.to_string())
    }
}

/// Where `herald serve` without a configuration file serves the backend's `/metrics`.
pub const DEV_METRICS_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9464);

/// The configuration in effect: defaults, then the file, then flags and environment.
pub fn load_config(cli: &Cli) -> Result<Settings, CliError> {
    let mut settings = match &cli.config {
        Some(path) => Settings::from_file(path).map_err(CliError::new)?,
        None => Settings::default(),
    };
    let Settings {
        backend: config,
        edge,
        dev_metrics,
    } = &mut settings;
    if let Command::Serve(args) = &cli.command {
        if let Some(addr) = args.grpc_addr {
            config.grpc_addr = addr;
        }
        match args.metrics_addr {
            Some(addr) => config.metrics_addr = Some(addr),
            // `herald serve` without a file is the development setup: metrics on, unless
            // the port is taken (another local server), which only costs the metrics.
            None if cli.config.is_none() => *dev_metrics = true,
            None => {}
        }
        if let Some(url) = &args.database_url {
            config.database_url = Some(url.clone());
        }
        if let Some(url) = &args.broker_url {
            config.broker.url = Some(url.clone());
        }
        if let Some(secret) = &args.hs256_secret {
            config.auth.hs256_secret = Some(secret.clone());
        }
    }
    if let Command::Serve(ServeArgs {
        http_addr: Some(addr),
        ..
    })
    | Command::Edge(EdgeArgs {
        http_addr: Some(addr),
        ..
    }) = &cli.command
    {
        edge.http_addr = *addr;
    }
    if let Command::Edge(args) = &cli.command {
        edge.backends.clone_from(&args.backends);
        if !args.allowed_origins.is_empty() {
            edge.allowed_origins.clone_from(&args.allowed_origins);
        }
        if let Some(secret) = &args.hs256_secret {
            config.auth.hs256_secret = Some(secret.clone());
        }
    }
    if let Command::Migrate(args) = &cli.command
        && let Some(url) = &args.database_url
    {
        config.database_url = Some(url.clone());
    }
    let data_dir = match &cli.command {
        Command::Serve(args) => &args.data.data_dir,
        Command::Edge(args) => &args.data.data_dir,
        Command::Token(args) => &args.data.data_dir,
        Command::Subscribe(SubscribeArgs { client, .. })
        | Command::Publish(PublishArgs { client, .. })
        | Command::History(HistoryArgs { client, .. })
        | Command::Watch(WatchArgs { client, .. })
        | Command::Demo(DemoCommand::Deploy(DemoDeployArgs { client, .. })) => {
            &client.data.data_dir
        }
        Command::Migrate(args) => &args.data.data_dir,
        Command::Demo(
            DemoCommand::Inbox(InboxDemoArgs { common, .. })
            | DemoCommand::Reviews(ReviewsDemoArgs { common, .. })
            | DemoCommand::Chat(ChatDemoArgs { common, .. })
            | DemoCommand::Shop(ShopDemoArgs { common, .. }),
        ) => &common.data.data_dir,
    };
    if let Some(dir) = data_dir {
        config.data_dir = dir.clone();
    }
    Ok(settings)
}

/// Runs a client or token command (everything except `serve` and `edge`), with the
/// backend's part of the configuration: where the data directory and the keys are.
pub async fn run_tool(cli: Cli, config: Config) -> Result<(), CliError> {
    match cli.command {
        Command::Serve(_) | Command::Edge(_) => Err(CliError::new("servers are run by main")),
        Command::Token(args) => {
            let token = sign_token(&args, &config)?;
            println!("{token}");
            Ok(())
        }
        Command::Subscribe(args) => client::subscribe(args, &config).await,
        Command::Publish(args) => client::publish(args, &config).await,
        Command::History(args) => client::history(args, &config).await,
        Command::Watch(args) => deploy::watch(args, &config).await,
        Command::Demo(DemoCommand::Deploy(args)) => deploy::demo(args, &config).await,
        Command::Migrate(args) => migrate::run(args, &config).await,
        Command::Demo(DemoCommand::Inbox(args)) => demo::inbox(args, &config).await,
        Command::Demo(DemoCommand::Reviews(args)) => demo::reviews(args, &config).await,
        Command::Demo(DemoCommand::Chat(args)) => demo::chat(args, &config).await,
        Command::Demo(DemoCommand::Shop(args)) => demo::shop(args, &config).await,
    }
}

fn sign_token(args: &TokenArgs, config: &Config) -> Result<String, CliError> {
    let secret = match args
        .secret
        .clone()
        .or_else(|| config.auth.hs256_secret.clone())
    {
        Some(secret) => secret,
        None => dev_key::load(&config.data_dir).map_err(CliError::new)?,
    };
    let roles: Vec<&str> = args.roles.iter().map(String::as_str).collect();
    let mut claims = TokenClaims::new(&args.sub, &roles, args.ttl);
    claims.iss = args.issuer.clone().or_else(|| config.auth.issuer.clone());
    claims.aud = args
        .audience
        .clone()
        .or_else(|| config.auth.audience.clone());
    dev_key::sign_hs256(&secret, &claims).map_err(CliError::new)
}
