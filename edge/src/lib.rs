//! The Herald edge: a thin, stateless process for browsers.
//!
//! ```text
//!  browser ──WebSocket /ws──► session ──► feeds (one Edge/Follow stream per topic) ──► backend
//!          │                        └──► transcode (JSON ⇄ protobuf, any unary RPC) ──► backend
//!          └──grpc-web────────► grpc_web (tonic-web + proxy) ───────────────────────► backend
//! ```
//!
//! It holds no business rule: the backend authenticates and authorizes every socket's
//! subscription and call with the socket's own token. `protocol` is the JSON frame format,
//! `outbound` a socket's byte-bounded queue, `backends` the connections to the backends,
//! `verify` the sockets' token checks (batched), [`EdgeConfig`] its settings (the `[edge]`
//! table of the configuration file), `console` the embedded web console (clients/web) and
//! its development sign-in. The edge does
//! not depend on the backend crate: the `herald` binary (`cli/`) runs it alone (`herald edge`)
//! or next to a backend (`herald serve`). Start with [`run`].

pub mod backends;
pub mod config;
mod connections;
pub mod console;
pub mod feeds;
pub mod grpc_web;
mod metrics;
pub mod outbound;
pub mod protocol;
mod server;
mod session;
mod slots;
pub mod transcode;
mod verify;

use std::sync::Arc;

pub use backends::ServiceToken;
pub use config::EdgeConfig;
pub use console::DevTokens;
pub use server::{EdgeError, run};

/// What every session and handler shares.
#[derive(Debug)]
pub(crate) struct EdgeContext {
    pub(crate) config: EdgeConfig,
    pub(crate) backends: Arc<backends::Backends>,
    pub(crate) feeds: Arc<feeds::Feeds>,
    /// Sockets' tokens, verified by a backend in batches.
    pub(crate) verifier: verify::Verifier,
    pub(crate) transcoder: transcode::Transcoder,
    pub(crate) shutdown: tokio_util::sync::CancellationToken,
    /// Authenticated sockets per user (`edge.connections.max_per_user`).
    pub(crate) users: Arc<slots::Slots<String>>,
    /// The connection cap's semaphore (`edge.connections.max_connections`), for `/statsz`.
    pub(crate) connections: std::sync::OnceLock<Arc<tokio::sync::Semaphore>>,
    /// This edge's metrics registry (`/metrics`).
    pub(crate) metrics: Arc<metrics::EdgeMetrics>,
}
