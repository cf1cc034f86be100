//! The backends an edge fronts: a few HTTP/2 connections to each, used round-robin, plus the
//! edge's own service credentials for `Edge/Follow`.
//!
//! Connections are lazy and reconnect by themselves; a backend that goes away fails the
//! streams on it, and their owners pick another backend on retry.

use std::{
    fmt,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::{
    Request, Status,
    metadata::AsciiMetadataValue,
    transport::{Channel, Endpoint},
};

use crate::config::ConnectionLimits;

/// Produces a token with the `service` role for the edge's own calls (minted on demand, so it
/// can be renewed). Sockets' calls never use it: they carry the socket's token.
pub type ServiceToken = Arc<dyn Fn() -> String + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("no backend configured: pass at least one --backend URL")]
    NoBackends,
    #[error("backend URL `{url}` is invalid: {reason}")]
    BadUrl { url: String, reason: String },
    #[error(
        "the edge is configured with {count} backends ({urls}), but they run the in-memory broker, which delivers an event only to the subscribers of the backend it was published on, so events would be lost: start every backend with the shared Redis broker (--broker redis://… / HERALD_BROKER_URL / broker.url, the same Redis for all), or give this edge one backend (one --backend URL / edge.backends entry) and run one edge per backend"
    )]
    SeveralMemoryBrokers { count: usize, urls: String },
    #[error(
        "the edge's backends are on different Redis brokers ({brokers}), so each would see only the events published through its own: give every backend the same Redis URL and broker.prefix, or run one edge per cluster"
    )]
    DifferentRedis { brokers: String },
    #[error(
        "cannot ask backend `{url}` which broker it runs: {reason}; an edge with several backends checks them all at start"
    )]
    Undescribed { url: String, reason: String },
}

/// The `authorization` value carrying `token`; UNAUTHENTICATED when the token holds characters
/// a header cannot carry, so a socket's call with it could never reach a backend.
pub(crate) fn bearer(token: &str) -> Result<AsciiMetadataValue, Status> {
    format!("Bearer {token}").parse().map_err(|_| {
        Status::unauthenticated("the token contains characters not allowed in a header")
    })
}

/// `message` as a request carrying `token` as its credentials.
pub(crate) fn authorized<T>(message: T, token: &str) -> Result<Request<T>, Status> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", bearer(token)?);
    Ok(request)
}

pub struct Backends {
    channels: Vec<Channel>,
    /// Each backend's URL and the index of its first connection.
    urls: Vec<(String, usize)>,
    next: AtomicUsize,
    service_token: ServiceToken,
    /// Streams held towards the backends (`edge.connections.max_backend_streams`).
    streams: Arc<Semaphore>,
    max_streams: usize,
    /// `edge.connections.backend_call_timeout`.
    call_timeout: Duration,
}

impl fmt::Debug for Backends {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Backends")
            .field("connections", &self.channels.len())
            .finish_non_exhaustive()
    }
}

impl Backends {
    pub fn new(
        urls: &[String],
        connections_per_backend: usize,
        service_token: ServiceToken,
    ) -> Result<Backends, BackendError> {
        Self::with_keepalive(
            urls,
            connections_per_backend,
            service_token,
            &ConnectionLimits::default(),
        )
    }

    /// Like [`Backends::new`], with the keep-alive of `limits`
    /// (`edge.connections.backend_keepalive_interval` and `_timeout`).
    pub fn with_keepalive(
        urls: &[String],
        connections_per_backend: usize,
        service_token: ServiceToken,
        limits: &ConnectionLimits,
    ) -> Result<Backends, BackendError> {
        if urls.is_empty() {
            return Err(BackendError::NoBackends);
        }
        let mut channels = Vec::new();
        let mut firsts = Vec::new();
        for url in urls {
            firsts.push((url.clone(), channels.len()));
            let endpoint = Endpoint::from_shared(url.clone())
                .map_err(|e| BackendError::BadUrl {
                    url: url.clone(),
                    reason: e.to_string(),
                })?
                .tcp_nodelay(true)
                .connect_timeout(Duration::from_secs(5))
                .http2_keep_alive_interval(limits.backend_keepalive_interval)
                .keep_alive_timeout(limits.backend_keepalive_timeout)
                .initial_stream_window_size(Some(4 * 1024 * 1024))
                .initial_connection_window_size(Some(16 * 1024 * 1024));
            for _ in 0..connections_per_backend.max(1) {
                channels.push(endpoint.connect_lazy());
            }
        }
        Ok(Backends {
            channels,
            urls: firsts,
            next: AtomicUsize::new(rand::random::<u32>() as usize),
            service_token,
            streams: Arc::new(Semaphore::new(limits.max_backend_streams)),
            max_streams: limits.max_backend_streams,
            call_timeout: limits.backend_call_timeout,
        })
    }

    /// Applies the stream bound and the unary deadline of `limits`.
    pub fn with_limits(mut self, limits: &ConnectionLimits) -> Backends {
        self.streams = Arc::new(Semaphore::new(limits.max_backend_streams));
        self.max_streams = limits.max_backend_streams;
        self.call_timeout = limits.backend_call_timeout;
        self
    }

    /// With several backends, asks each which broker it runs (`Edge/Describe`) and refuses
    /// when they are separate processes and any of them has an in-memory broker: a socket's
    /// subscription on one backend would never see the events published on another.
    /// Backends that all run the Redis broker pass when they report the same cluster id (one
    /// Redis server, database and prefix). A backend that does not answer within `patience`
    /// (retried while it is unavailable) fails the check too.
    pub async fn check_brokers(&self, patience: Duration) -> Result<(), BackendError> {
        use herald_proto::v1::{Broker, DescribeRequest, edge_client::EdgeClient};
        if self.urls.len() < 2 {
            return Ok(());
        }
        let mut instances = std::collections::HashSet::new();
        let mut clusters = std::collections::BTreeMap::<String, Vec<&str>>::new();
        let mut memory = false;
        for (url, first) in &self.urls {
            let deadline = tokio::time::Instant::now() + patience;
            let described = loop {
                let mut client = EdgeClient::new(self.channels[*first].clone());
                let answer = match self.as_service(DescribeRequest {}) {
                    Ok(request) => {
                        tokio::time::timeout(Duration::from_secs(2), client.describe(request))
                            .await
                            .unwrap_or_else(|_| Err(Status::unavailable("no answer")))
                    }
                    Err(status) => Err(status),
                };
                match answer {
                    Ok(response) => break response.into_inner(),
                    Err(status)
                        if status.code() == tonic::Code::Unavailable
                            && tokio::time::Instant::now() < deadline =>
                    {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    Err(status) => {
                        return Err(BackendError::Undescribed {
                            url: url.clone(),
                            reason: format!("{:?}: {}", status.code(), status.message()),
                        });
                    }
                }
            };
            // Unspecified: a backend from before Describe, which has only the memory broker.
            memory |= matches!(described.broker(), Broker::Memory | Broker::Unspecified);
            instances.insert(described.instance_id);
            // Empty: a backend from before the cluster id, which cannot be checked.
            if !described.cluster_id.is_empty() {
                clusters
                    .entry(described.cluster_id)
                    .or_default()
                    .push(url.as_str());
            }
        }
        if !memory && clusters.len() > 1 {
            return Err(BackendError::DifferentRedis {
                brokers: clusters
                    .iter()
                    .map(|(id, urls)| format!("{} on {id}", urls.join(", ")))
                    .collect::<Vec<_>>()
                    .join("; "),
            });
        }
        if memory && instances.len() > 1 {
            return Err(BackendError::SeveralMemoryBrokers {
                count: self.urls.len(),
                urls: self
                    .urls
                    .iter()
                    .map(|(url, _)| url.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        Ok(())
    }

    /// Streams held towards the backends now.
    pub fn streams_held(&self) -> usize {
        self.max_streams
            .saturating_sub(self.streams.available_permits())
    }

    /// A place for one more stream towards the backends, held until dropped; refused
    /// RESOURCE_EXHAUSTED when the edge holds its limit.
    pub fn try_stream(&self) -> Result<OwnedSemaphorePermit, Status> {
        self.streams.clone().try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!(
                "the edge holds its limit of {} streams to the backends (edge.connections.max_backend_streams); retry shortly",
                self.max_streams
            ))
        })
    }

    /// Runs one unary backend call within the deadline; a backend that does not answer in
    /// time is answered DEADLINE_EXCEEDED naming the setting. Dropping the call resets its
    /// HTTP/2 stream, so the backend stops working on it too.
    pub async fn unary<T>(
        &self,
        call: impl Future<Output = Result<T, Status>>,
    ) -> Result<T, Status> {
        tokio::time::timeout(self.call_timeout, call)
            .await
            .unwrap_or_else(|_| {
                Err(Status::deadline_exceeded(format!(
                    "the backend did not answer within {} ms (edge.connections.backend_call_timeout)",
                    self.call_timeout.as_millis()
                )))
            })
    }

    /// The next connection, round-robin over every backend.
    pub fn pick(&self) -> Channel {
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.channels.len();
        self.channels[index].clone()
    }

    pub fn service_token(&self) -> String {
        (self.service_token)()
    }

    /// `message` as a request carrying the edge's service token, for the edge's own calls
    /// (`Edge/Describe`, `Edge/Follow`, `Edge/Verify`).
    pub(crate) fn as_service<T>(&self, message: T) -> Result<Request<T>, Status> {
        authorized(message, &self.service_token()).map_err(|_| {
            Status::internal("the edge's service token contains characters not allowed in a header")
        })
    }

    /// Whether at least one backend answers its health check as SERVING.
    pub async fn any_ready(&self) -> bool {
        use tonic_health::pb::{
            HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
        };
        for channel in &self.channels {
            let mut client = HealthClient::new(channel.clone());
            let check = client.check(HealthCheckRequest {
                service: String::new(),
            });
            if let Ok(Ok(response)) = tokio::time::timeout(Duration::from_secs(1), check).await
                && response.get_ref().status == ServingStatus::Serving as i32
            {
                return true;
            }
        }
        false
    }
}
