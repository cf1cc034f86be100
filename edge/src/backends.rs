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

use tonic::transport::{Channel, Endpoint};

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
        Ok(Backends {
            channels,
            next: AtomicUsize::new(rand::random::<u32>() as usize),
            service_token,
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
