//! The end-to-end test harness: [`spawn_app`] starts a real Herald backend in-process on
//! port 0 with a fresh data directory and a fresh database, and typed clients talk to it
//! over real gRPC connections, exactly as applications do.
//!
//! The database is a fresh SQLite file, or with `HERALD_TEST_DATABASE=postgres` a fresh
//! database on a real PostgreSQL cluster the harness starts ([`postgres`]); the same suite
//! runs on both (`tests/run.sh` runs it twice).

#![allow(missing_docs, unreachable_pub, missing_debug_implementations)]

pub mod baseline;
pub mod edge;
pub mod fault_proxy;
pub mod history_checker;
pub mod postgres;
pub mod process;
pub mod redis;
pub mod sdk;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use herald_backend::{
    Backend, Config, ServeError,
    auth::dev_key::{self, TokenClaims},
    clock::ShiftedClock,
    store::{RelayFaults, Store},
};
use herald_proto::{
    v1::{
        Event, HistoryRequest, HistoryResponse, PresenceRequest, PresenceResponse, PublishRequest,
        PublishResponse, StreamPosition, SubscribeRequest, SubscribeResponse, Subscribed,
        rooms_client::RoomsClient, subscribe_response::Frame,
    },
    wkt::Struct,
};
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use tonic::{
    Request, Status, Streaming,
    transport::{Channel, Endpoint},
};
pub use tonic_health::pb::{
    HealthCheckRequest, HealthCheckResponse, health_check_response::ServingStatus,
    health_client::HealthClient,
};

/// How long a test waits for something that should happen promptly before failing. A guard
/// against hangs, never a performance assertion.
pub const PATIENCE: Duration = Duration::from_secs(15);

/// The HS256 secret every test server is configured with.
pub const SECRET: &str = "test-secret-test-secret-test-secret-0123456789";

pub struct TestApp {
    pub addr: SocketAddr,
    pub config: Config,
    /// The app's database and outbox, as domain services use them.
    pub store: Store,
    /// Fault injection into the app's outbox relay.
    pub relay_faults: Arc<RelayFaults>,
    /// The app's core, for its observability counters.
    pub node: Arc<herald_backend::node::Node>,
    /// The wall clock of the app's domain rules: advance it to move past a rate-limit window,
    /// a snooze or an expiry without waiting. It survives [`TestApp::restart`].
    pub clock: Arc<ShiftedClock>,
    shutdown: CancellationToken,
    server: JoinHandle<Result<(), ServeError>>,
    data_dir: Arc<tempfile::TempDir>,
}

/// Which database a test app uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestDatabase {
    Sqlite,
    Postgres,
}

impl TestDatabase {
    /// `HERALD_TEST_DATABASE=postgres` selects PostgreSQL; SQLite otherwise.
    pub fn from_env() -> TestDatabase {
        match std::env::var("HERALD_TEST_DATABASE").as_deref() {
            Ok("postgres" | "postgresql") => TestDatabase::Postgres,
            _ => TestDatabase::Sqlite,
        }
    }

    /// A URL of a fresh, empty database of this kind (SQLite files go into `dir`).
    pub async fn fresh_url(self, dir: &std::path::Path) -> String {
        match self {
            TestDatabase::Sqlite => {
                format!("sqlite://{}?mode=rwc", dir.join("herald.db").display())
            }
            TestDatabase::Postgres => postgres::shared().fresh_database().await,
        }
    }
}

/// Starts a backend with default settings.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Starts a backend after `configure` adjusted its settings, on the database selected by
/// `HERALD_TEST_DATABASE` (a fresh one) unless `configure` set `database_url`.
pub async fn spawn_app_with(configure: impl FnOnce(&mut Config)) -> TestApp {
    spawn_app_on_at(TestDatabase::from_env(), "127.0.0.1:0", configure).await
}

/// Starts a backend on a given address (to restart one where its clients expect it).
pub async fn spawn_app_at(addr: &str, configure: impl FnOnce(&mut Config)) -> TestApp {
    spawn_app_on_at(TestDatabase::from_env(), addr, configure).await
}

/// Starts a backend on a fresh database of the given kind.
pub async fn spawn_app_on(database: TestDatabase, configure: impl FnOnce(&mut Config)) -> TestApp {
    spawn_app_on_at(database, "127.0.0.1:0", configure).await
}

async fn spawn_app_on_at(
    database: TestDatabase,
    addr: &str,
    configure: impl FnOnce(&mut Config),
) -> TestApp {
    let data_dir = tempfile::tempdir().expect("create a temporary data directory");
    let mut config = Config {
        data_dir: data_dir.path().to_owned(),
        database_url: Some(database.fresh_url(data_dir.path()).await),
        ..Config::default()
    };
    config.auth.hs256_secret = Some(SECRET.to_owned());
    config.shutdown_grace = Duration::from_secs(5);
    configure(&mut config);
    start(config, Arc::new(data_dir), addr, Arc::default()).await
}

async fn start(
    config: Config,
    data_dir: Arc<tempfile::TempDir>,
    addr: &str,
    clock: Arc<ShiftedClock>,
) -> TestApp {
    let backend = Backend::build(config.clone())
        .await
        .expect("the backend builds")
        .with_clock(clock.clone());
    let store = backend.store().clone();
    let relay_faults = backend.relay_faults().clone();
    let node = backend.node().clone();
    let listener = TcpListener::bind(addr)
        .await
        .expect("bind the backend address");
    let addr = listener.local_addr().expect("listener address");
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(backend.serve(listener, shutdown.clone()));
    TestApp {
        addr,
        config,
        store,
        relay_faults,
        node,
        clock,
        shutdown,
        server,
        data_dir,
    }
}

impl TestApp {
    /// Stops this app and starts a new one on the same database and data directory, as after
    /// a process restart (the in-memory broker starts empty).
    pub async fn restart(self) -> TestApp {
        let config = self.config.clone();
        let data_dir = self.data_dir.clone();
        let clock = self.clock.clone();
        self.shutdown().await.expect("the old app stops cleanly");
        start(config, data_dir, "127.0.0.1:0", clock).await
    }

    /// Like [`TestApp::restart`], on the same address: clients that reconnect by themselves
    /// find the new process where the old one was.
    pub async fn restart_in_place(self) -> TestApp {
        let (config, data_dir, clock) = (
            self.config.clone(),
            self.data_dir.clone(),
            self.clock.clone(),
        );
        let addr = self.addr.to_string();
        self.shutdown().await.expect("the old app stops cleanly");
        start(config, data_dir, &addr, clock).await
    }

    /// A grpc.health.v1 client on its own connection.
    pub async fn health(&self) -> HealthClient<Channel> {
        HealthClient::new(
            self.endpoint()
                .connect()
                .await
                .expect("connect to the test server"),
        )
    }

    /// A token for `sub` with `roles`, valid for an hour.
    pub fn token(&self, sub: &str, roles: &[&str]) -> String {
        self.sign(&TokenClaims::new(sub, roles, Duration::from_secs(3600)))
    }

    pub fn sign(&self, claims: &TokenClaims) -> String {
        dev_key::sign_hs256(SECRET, claims).expect("sign a token")
    }

    /// A client for `sub` with `roles`, on its own connection.
    pub async fn client(&self, sub: &str, roles: &[&str]) -> Client {
        self.client_with_token(self.token(sub, roles)).await
    }

    pub async fn client_with_token(&self, token: String) -> Client {
        Client::connect(self.endpoint(), token).await
    }

    pub fn endpoint(&self) -> Endpoint {
        Endpoint::from_shared(format!("http://{}", self.addr)).expect("valid endpoint")
    }

    /// A service client (role `service`): may publish anywhere.
    pub async fn service(&self) -> Client {
        self.client("test-service", &["service"]).await
    }

    /// Signals shutdown and waits for the server to stop.
    pub async fn shutdown(self) -> Result<(), ServeError> {
        self.shutdown.cancel();
        tokio::time::timeout(PATIENCE, self.server)
            .await
            .expect("server stops within the grace period")
            .expect("server task did not panic")
    }

    pub fn cancel(&self) {
        self.shutdown.cancel();
    }
}

#[derive(Clone)]
pub struct Client {
    pub rooms: RoomsClient<Channel>,
    /// The connection, for clients of other services (`FooClient::new(client.channel.clone())`).
    pub channel: Channel,
    pub token: String,
}

impl Client {
    pub async fn connect(endpoint: Endpoint, token: String) -> Client {
        let channel = endpoint
            .connect()
            .await
            .expect("connect to the test server");
        Client {
            rooms: RoomsClient::new(channel.clone()),
            channel,
            token,
        }
    }

    /// `Auth/Whoami` with this client's token.
    pub async fn whoami(&self) -> Result<herald_proto::v1::WhoamiResponse, Status> {
        let request = self.request(herald_proto::v1::WhoamiRequest {});
        Ok(
            herald_proto::v1::auth_client::AuthClient::new(self.channel.clone())
                .whoami(request)
                .await?
                .into_inner(),
        )
    }

    pub fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {}", self.token)
                .parse()
                .expect("ascii token"),
        );
        request
    }

    pub async fn try_subscribe(
        &self,
        topic: &str,
        since: Option<StreamPosition>,
    ) -> Result<Subscription, Status> {
        let request = self.request(SubscribeRequest {
            topic: topic.to_owned(),
            since,
        });
        let mut stream = self.rooms.clone().subscribe(request).await?.into_inner();
        let first = tokio::time::timeout(PATIENCE, stream.message())
            .await
            .expect("the subscribed frame arrives")?;
        match first.and_then(|f| f.frame) {
            Some(Frame::Subscribed(subscribed)) => Ok(Subscription { stream, subscribed }),
            other => panic!("the first frame must be `subscribed`, got {other:?}"),
        }
    }

    pub async fn subscribe(&self, topic: &str) -> Subscription {
        self.try_subscribe(topic, None).await.expect("subscribe")
    }

    pub async fn resume(&self, topic: &str, since: StreamPosition) -> Subscription {
        self.try_subscribe(topic, Some(since))
            .await
            .expect("resume")
    }

    pub async fn try_publish(
        &self,
        topic: &str,
        event_type: &str,
        data: serde_json::Value,
        idempotency_key: Option<&str>,
    ) -> Result<PublishResponse, Status> {
        let data: Struct = serde_json::from_value(data).expect("data is a JSON object");
        let request = self.request(PublishRequest {
            topic: topic.to_owned(),
            r#type: event_type.to_owned(),
            data: Some(data),
            idempotency_key: idempotency_key.map(str::to_owned),
            durable: false,
        });
        Ok(self.rooms.clone().publish(request).await?.into_inner())
    }

    /// A durable publish (transactional outbox): answers once committed and published.
    pub async fn try_publish_durable(
        &self,
        topic: &str,
        event_type: &str,
        data: serde_json::Value,
    ) -> Result<PublishResponse, Status> {
        let data: Struct = serde_json::from_value(data).expect("data is a JSON object");
        let request = self.request(PublishRequest {
            topic: topic.to_owned(),
            r#type: event_type.to_owned(),
            data: Some(data),
            idempotency_key: None,
            durable: true,
        });
        Ok(self.rooms.clone().publish(request).await?.into_inner())
    }

    /// Publishes `{"n": n}` as a `test.event` and returns its position.
    pub async fn publish(&self, topic: &str, n: u64) -> StreamPosition {
        self.try_publish(topic, "test.event", serde_json::json!({ "n": n }), None)
            .await
            .expect("publish")
            .position
            .expect("position")
    }

    pub async fn history(
        &self,
        topic: &str,
        since: Option<StreamPosition>,
        limit: u32,
    ) -> Result<HistoryResponse, Status> {
        let request = self.request(HistoryRequest {
            topic: topic.to_owned(),
            since,
            limit,
        });
        Ok(self.rooms.clone().history(request).await?.into_inner())
    }

    /// Sends an ephemeral signal.
    pub async fn signal(
        &self,
        topic: &str,
        signal_type: &str,
        key: Option<&str>,
        data: serde_json::Value,
    ) -> Result<herald_proto::v1::SignalResponse, Status> {
        let data: Struct = serde_json::from_value(data).expect("data is a JSON object");
        let request = self.request(herald_proto::v1::SignalRequest {
            topic: topic.to_owned(),
            r#type: signal_type.to_owned(),
            key: key.map(str::to_owned),
            data: Some(data),
        });
        Ok(self.rooms.clone().signal(request).await?.into_inner())
    }

    pub async fn presence(&self, topic: &str) -> Result<PresenceResponse, Status> {
        let request = self.request(PresenceRequest {
            topic: topic.to_owned(),
        });
        Ok(self.rooms.clone().presence(request).await?.into_inner())
    }
}

/// An open subscription whose `subscribed` frame has been read.
pub struct Subscription {
    pub stream: Streaming<SubscribeResponse>,
    pub subscribed: Subscribed,
}

/// What ended a stream.
#[derive(Debug)]
pub enum End {
    /// The server closed the stream cleanly.
    Finished,
    Status(Status),
}

impl Subscription {
    pub fn position(&self) -> StreamPosition {
        self.subscribed
            .position
            .clone()
            .expect("subscribed carries a position")
    }

    /// The next frame, or how the stream ended.
    pub async fn next_frame(&mut self) -> Result<Frame, End> {
        match tokio::time::timeout(PATIENCE, self.stream.message())
            .await
            .expect("a frame arrives in time")
        {
            Ok(Some(response)) => Ok(response.frame.expect("frame is set")),
            Ok(None) => Err(End::Finished),
            Err(status) => Err(End::Status(status)),
        }
    }

    /// The next event, skipping presence frames.
    pub async fn next_event(&mut self) -> Event {
        loop {
            match self.next_frame().await {
                Ok(Frame::Event(event)) => return event,
                Ok(Frame::Presence(_)) => continue,
                Ok(other) => panic!("unexpected frame {other:?}"),
                Err(end) => panic!("stream ended while waiting for an event: {end:?}"),
            }
        }
    }

    /// The next `count` events' offsets.
    pub async fn offsets(&mut self, count: usize) -> Vec<u64> {
        let mut offsets = Vec::with_capacity(count);
        for _ in 0..count {
            offsets.push(self.next_event().await.offset);
        }
        offsets
    }

    /// Reads events until the stream ends; returns their offsets and the ending status.
    pub async fn drain_until_end(&mut self) -> (Vec<u64>, Status) {
        let mut offsets = vec![];
        loop {
            match self.next_frame().await {
                Ok(Frame::Event(event)) => offsets.push(event.offset),
                Ok(_) => {}
                Err(End::Status(status)) => return (offsets, status),
                Err(End::Finished) => panic!("stream finished without a status"),
            }
        }
    }

    /// Asserts that nothing arrives within a short while (used after a refusal).
    pub async fn assert_quiet(&mut self, wait: Duration) {
        if let Ok(frame) = tokio::time::timeout(wait, self.stream.message()).await {
            panic!("expected no frame, got {frame:?}");
        }
    }
}

/// `1..=n` as a vector, for comparing offsets.
pub fn range(from: u64, to: u64) -> Vec<u64> {
    (from..=to).collect()
}

/// Polls `done` until it holds, failing after a generous deadline.
pub async fn eventually(what: &str, done: impl Fn() -> bool) {
    eventually_within(what, PATIENCE * 2, done).await;
}

/// Like [`eventually`], with a deadline of `patience`.
pub async fn eventually_within(what: &str, patience: Duration, done: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + patience;
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
