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
    Status,
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
}

pub struct Backends {
    channels: Vec<Channel>,
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
        if urls.is_empty() {
            return Err(BackendError::NoBackends);
        }
        let mut channels = Vec::new();
        for url in urls {
            let endpoint = Endpoint::from_shared(url.clone())
                .map_err(|e| BackendError::BadUrl {
                    url: url.clone(),
                    reason: e.to_string(),
                })?
                .tcp_nodelay(true)
                .connect_timeout(Duration::from_secs(5))
                .http2_keep_alive_interval(Duration::from_secs(20))
                .keep_alive_timeout(Duration::from_secs(20))
                .initial_stream_window_size(Some(4 * 1024 * 1024))
                .initial_connection_window_size(Some(16 * 1024 * 1024));
            for _ in 0..connections_per_backend.max(1) {
                channels.push(endpoint.connect_lazy());
            }
        }
        let limits = ConnectionLimits::default();
        Ok(Backends {
            channels,
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
