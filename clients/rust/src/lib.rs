//! The Rust client of Herald.
//!
//! [`Client`] holds one HTTP/2 connection to a backend (reconnected by itself) and a
//! [`TokenSource`]; every call it makes carries a current token. On top of the generated
//! tonic clients it adds what every app would otherwise write again:
//!
//! - [`Client::subscribe`]: a topic's events that survive reconnects — exponential backoff
//!   with jitter following the close-code table (reconnect range → retry, terminal → stop),
//!   resume from the last offset, duplicates dropped, a fresh token after `TOKEN_EXPIRED`,
//!   and [`Update::Reload`] when history could not continue, so the app reloads its state;
//! - [`Client::live`]: load-then-follow — a `List`/`Get` and its `position`, then the changes
//!   after exactly that position (no gap, no duplicate);
//! - [`Client::watch_deployment`]: a deployment's status and log (`Deployments/Watch`),
//!   resumed after reconnects like a subscription;
//! - typed service clients ([`Client::orders`], [`Client::chat`], …) through the same auth.
//!
//! ```no_run
//! # async fn run() -> Result<(), herald_client::Error> {
//! use herald_client::{Client, Update};
//! let client = Client::connect("http://127.0.0.1:50051", "a JWT".to_owned())?;
//! let mut inbox = client.subscribe("user:alice");
//! while let Some(update) = inbox.next().await {
//!     match update? {
//!         Update::Event(event) => println!("{} {}", event.offset, event.r#type),
//!         Update::Reload { .. } => { /* reload what you show from its List call */ }
//!         _ => {}
//!     }
//! }
//! # Ok(())
//! # }
//! ```

mod backoff;
mod cursor;
mod deployment_watch;
mod live;
mod subscription;
mod token;

use std::sync::Arc;

use herald_proto::v1::{
    auth_client::AuthClient, chat_client::ChatClient, deployments_client::DeploymentsClient,
    notifications_client::NotificationsClient, orders_client::OrdersClient,
    reviews_client::ReviewsClient, rooms_client::RoomsClient,
};
use tonic::{
    Request, Status,
    metadata::MetadataValue,
    service::{Interceptor, interceptor::InterceptedService},
    transport::{Channel, Endpoint},
};

pub use backoff::Backoff;
pub use cursor::{Cursor, Verdict};
pub use deployment_watch::DeploymentWatch;
pub use live::Live;
pub use subscription::{Subscription, Update};
pub use token::{Refreshing, TokenSource, expires_at, refreshing};

/// What can go wrong in the client.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server URL cannot be used.
    #[error("`{url}` is not a usable server URL: {reason}")]
    Url { url: String, reason: String },
    /// The token source failed.
    #[error("no token: {0}")]
    Token(String),
    /// The server answered with an error that retrying will not fix (or a call failed).
    #[error("{}: {}", .0.code(), .0.message())]
    Status(Box<Status>),
}

impl From<Status> for Error {
    fn from(status: Status) -> Error {
        Error::Status(Box::new(status))
    }
}

/// A channel whose every request carries `authorization: Bearer <token>`.
pub type Authorized = InterceptedService<Channel, Authorize>;

/// Adds the token of the moment to each request.
#[derive(Clone)]
pub struct Authorize {
    tokens: Arc<dyn TokenSource>,
}

impl std::fmt::Debug for Authorize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Authorize")
    }
}

impl Interceptor for Authorize {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let token = self
            .tokens
            .token()
            .map_err(|e| Status::unauthenticated(format!("no token: {e}")))?;
        let value: MetadataValue<_> = format!("Bearer {token}").parse().map_err(|_| {
            Status::unauthenticated("the token contains characters not allowed in a header")
        })?;
        request.metadata_mut().insert("authorization", value);
        Ok(request)
    }
}

/// A connection to one Herald backend, shared by every call and subscription made from it.
/// Cheap to clone.
#[derive(Debug, Clone)]
pub struct Client {
    channel: Authorized,
}

impl Client {
    /// Prepares a client for `url` (for example `http://127.0.0.1:50051`). Nothing is sent
    /// until the first call; the connection is re-established by itself after a failure.
    pub fn connect(url: &str, tokens: impl TokenSource) -> Result<Client, Error> {
        let endpoint = Endpoint::from_shared(url.to_owned()).map_err(|e| Error::Url {
            url: url.to_owned(),
            reason: e.to_string(),
        })?;
        let endpoint = endpoint
            .tcp_nodelay(true)
            .http2_keep_alive_interval(std::time::Duration::from_secs(20))
            .keep_alive_while_idle(true);
        Ok(Client::with_channel(endpoint.connect_lazy(), tokens))
    }

    /// A client over an existing channel.
    pub fn with_channel(channel: Channel, tokens: impl TokenSource) -> Client {
        let authorize = Authorize {
            tokens: Arc::new(tokens),
        };
        Client {
            channel: InterceptedService::new(channel, authorize),
        }
    }

    /// The authorized channel, for any generated client of `herald.v1`.
    pub fn channel(&self) -> Authorized {
        self.channel.clone()
    }

    /// Follows `topic` from now on (see [`Subscription`]); `.since(position)` to resume.
    pub fn subscribe(&self, topic: &str) -> Subscription {
        Subscription::new(self.rooms(), topic)
    }

    /// Load-then-follow: runs `load` (a `List` or `Get` that returns its state and the
    /// `position` of `topic` it reflects), then follows `topic` from exactly that position.
    pub async fn live<T, F, Fut>(&self, topic: &str, load: F) -> Result<Live<T>, Error>
    where
        F: FnOnce(Client) -> Fut,
        Fut: std::future::Future<Output = Result<(T, herald_proto::v1::StreamPosition), Error>>,
    {
        let (state, position) = load(self.clone()).await?;
        let feed = self.subscribe(topic).since(position);
        Ok(Live { state, feed })
    }

    pub fn rooms(&self) -> RoomsClient<Authorized> {
        RoomsClient::new(self.channel())
    }

    pub fn auth(&self) -> AuthClient<Authorized> {
        AuthClient::new(self.channel())
    }

    pub fn notifications(&self) -> NotificationsClient<Authorized> {
        NotificationsClient::new(self.channel())
    }

    pub fn reviews(&self) -> ReviewsClient<Authorized> {
        ReviewsClient::new(self.channel())
    }

    pub fn orders(&self) -> OrdersClient<Authorized> {
        OrdersClient::new(self.channel())
    }

    pub fn chat(&self) -> ChatClient<Authorized> {
        ChatClient::new(self.channel())
    }

    pub fn deployments(&self) -> DeploymentsClient<Authorized> {
        DeploymentsClient::new(self.channel())
    }

    /// Follows deployment `id` (see [`DeploymentWatch`]); `.since(position)` to resume.
    pub fn watch_deployment(&self, id: u64) -> DeploymentWatch {
        DeploymentWatch::new(self.deployments(), id)
    }
}
