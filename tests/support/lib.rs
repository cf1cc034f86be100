//! The end-to-end test harness: [`spawn_app`] starts a real Herald backend in-process on
//! port 0 with a fresh data directory, and typed clients talk to it over real gRPC
//! connections, exactly as applications do.

#![allow(missing_docs, unreachable_pub, missing_debug_implementations)]

pub mod edge;
pub mod process;

use std::{net::SocketAddr, time::Duration};

use herald_backend::{
    Config, ServeError,
    auth::dev_key::{self, TokenClaims},
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

/// How long a test waits for something that should happen promptly before failing. A guard
/// against hangs, never a performance assertion.
pub const PATIENCE: Duration = Duration::from_secs(15);

/// The HS256 secret every test server is configured with.
pub const SECRET: &str = "test-secret-test-secret-test-secret-0123456789";

pub struct TestApp {
    pub addr: SocketAddr,
    pub config: Config,
    shutdown: CancellationToken,
    server: JoinHandle<Result<(), ServeError>>,
    _data_dir: tempfile::TempDir,
}

/// Starts a backend with default settings.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Starts a backend after `configure` adjusted its settings.
pub async fn spawn_app_with(configure: impl FnOnce(&mut Config)) -> TestApp {
    spawn_app_at("127.0.0.1:0", configure).await
}

/// Starts a backend on a given address (to restart one where its clients expect it).
pub async fn spawn_app_at(addr: &str, configure: impl FnOnce(&mut Config)) -> TestApp {
    let data_dir = tempfile::tempdir().expect("create a temporary data directory");
    let mut config = Config {
        data_dir: data_dir.path().to_owned(),
        ..Config::default()
    };
    config.auth.hs256_secret = Some(SECRET.to_owned());
    config.shutdown_grace = Duration::from_secs(5);
    configure(&mut config);
    let listener = TcpListener::bind(addr)
        .await
        .expect("bind the backend address");
    let addr = listener.local_addr().expect("listener address");
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(herald_backend::run(
        listener,
        config.clone(),
        shutdown.clone(),
    ));
    TestApp {
        addr,
        config,
        shutdown,
        server,
        _data_dir: data_dir,
    }
}

impl TestApp {
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
    pub token: String,
}

impl Client {
    pub async fn connect(endpoint: Endpoint, token: String) -> Client {
        let channel = endpoint
            .connect()
            .await
            .expect("connect to the test server");
        Client {
            rooms: RoomsClient::new(channel),
            token,
        }
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
