//! Edge settings: where it listens, which backends it fronts, and the limits of every socket.

use std::{net::SocketAddr, time::Duration};

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EdgeConfig {
    /// Where the HTTP server (WebSocket at `/ws`, grpc-web, health) listens.
    pub http_addr: SocketAddr,
    /// Backend gRPC URLs; streams and calls are spread over them.
    pub backends: Vec<String>,
    /// Origins allowed to open sockets and make grpc-web calls, matched exactly
    /// (`https://app.example.com`). Same-origin requests and requests without an `Origin`
    /// header (non-browser clients) are always allowed. `"*"` allows every origin.
    pub allowed_origins: Vec<String>,
    /// How many backend HTTP/2 connections the edge opens per backend.
    pub connections_per_backend: usize,
    /// How long open sockets get to close after a shutdown signal.
    #[serde(with = "herald_proto::support::duration")]
    pub shutdown_grace: Duration,
    pub limits: SocketLimits,
    pub connections: ConnectionLimits,
    /// The web console's development sign-in (`/dev/token`). Never read from the file: the
    /// process that starts the edge sets it when the server signs with its development key.
    #[serde(skip)]
    pub dev_tokens: Option<crate::console::DevTokens>,
}

impl Default for EdgeConfig {
    fn default() -> Self {
        EdgeConfig {
            http_addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            backends: vec!["http://127.0.0.1:50051".into()],
            allowed_origins: Vec::new(),
            connections_per_backend: 2,
            shutdown_grace: Duration::from_secs(5),
            limits: SocketLimits::default(),
            connections: ConnectionLimits::default(),
            dev_tokens: None,
        }
    }
}

/// Limits applied to every WebSocket.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SocketLimits {
    /// Largest inbound frame; bigger ones close the socket with 1009.
    pub max_frame_bytes: usize,
    /// Most subscriptions one socket may hold.
    pub max_subscriptions: usize,
    /// A socket that has not authenticated by then is closed (stale).
    #[serde(with = "herald_proto::support::duration")]
    pub auth_timeout: Duration,
    /// How often the edge pings.
    #[serde(with = "herald_proto::support::duration")]
    pub ping_interval: Duration,
    /// A socket silent (no pong, no frame) for this long is closed (stale).
    #[serde(with = "herald_proto::support::duration")]
    pub idle_timeout: Duration,
    /// Most bytes queued for one socket before it is closed as slow.
    pub max_outbound_bytes: usize,
    /// A write the peer does not take within this long (a full TCP window) closes the socket
    /// as slow, so a peer that stops reading cannot hold its session, subscriptions and
    /// presence.
    #[serde(with = "herald_proto::support::duration")]
    pub write_timeout: Duration,
    /// Requests (subscribe, publish, call…) a socket may burst.
    pub rate_burst: u32,
    /// Requests per second a socket may sustain.
    pub rate_per_second: u32,
    /// Requests refused for rate in a row before the socket is closed.
    pub rate_abuse_limit: u32,
    /// Unary calls one socket may have in flight.
    pub max_calls_in_flight: usize,
}

impl Default for SocketLimits {
    fn default() -> Self {
        SocketLimits {
            max_frame_bytes: 64 * 1024,
            max_subscriptions: 128,
            auth_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(25),
            idle_timeout: Duration::from_secs(60),
            max_outbound_bytes: 1024 * 1024,
            write_timeout: Duration::from_secs(1),
            rate_burst: 50,
            rate_per_second: 20,
            rate_abuse_limit: 100,
            max_calls_in_flight: 16,
        }
    }
}

/// Limits on the edge's HTTP connections (every WebSocket and grpc-web client), so a slow or
/// greedy client cannot hold the process's connections, and on what the edge holds towards
/// the backends. See docs/limits.md for what each refusal looks like.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConnectionLimits {
    /// Open client connections (WebSockets included) per edge process; one more is answered
    /// `503` and closed. By default what the process can hold: its open-files limit less
    /// [`RESERVED_FILES`] (10,000 where the limit cannot be read).
    pub max_connections: usize,
    /// New connections accepted per second, after a burst of `accept_burst`; 0 for no limit.
    /// Above it the edge accepts more slowly rather than refusing: a reconnect storm waits in
    /// the kernel's listen backlog (and in the clients' SYN retries beyond it) instead of
    /// spending every core on handshakes and authentications at once.
    pub accept_rate: u32,
    pub accept_burst: u32,
    /// A request's head (request line and headers) must arrive within this long of the edge
    /// starting to wait for it, or the connection is closed without an answer. It also ends
    /// an idle keep-alive connection.
    #[serde(with = "herald_proto::support::duration")]
    pub header_read_timeout: Duration,
    /// A grpc-web request's body must arrive within this long after its head, or the call is
    /// answered DEADLINE_EXCEEDED and the connection closed.
    #[serde(with = "herald_proto::support::duration")]
    pub body_read_timeout: Duration,
    /// A new connection must send its first request within this long of being accepted and,
    /// when that request is a WebSocket upgrade, be upgraded within it; otherwise it is
    /// closed.
    #[serde(with = "herald_proto::support::duration")]
    pub handshake_timeout: Duration,
    /// Open connections from one client address; 0 (the default) for no limit, since an edge
    /// behind a load balancer or serving a NAT sees many users on one address. One more is
    /// answered `429` and closed.
    pub max_per_ip: usize,
    /// Authenticated WebSockets of one user (the token's `sub`) on this edge; one more has its
    /// `auth` refused and is closed with 3503 (limit exceeded). 0 (the default) for no limit
    /// beyond `max_connections`: services and load tests hold many sockets of one identity.
    pub max_per_user: usize,
    /// Streams this edge holds open towards the backends: topic feeds (`Edge/Follow`) and
    /// grpc-web calls. One more is refused RESOURCE_EXHAUSTED.
    pub max_backend_streams: usize,
    /// Every unary call the edge makes to a backend (`auth`, `refresh`, `call`, `publish`)
    /// is answered DEADLINE_EXCEEDED when the backend does not answer within this long.
    #[serde(with = "herald_proto::support::duration")]
    pub backend_call_timeout: Duration,
    /// How often the edge pings each backend connection while it has streams open, and how
    /// long it waits for the answer before it takes the connection for dead and fails its
    /// streams (the feeds reconnect and resume). A black-holed link is noticed within the
    /// sum of the two.
    #[serde(with = "herald_proto::support::duration")]
    pub backend_keepalive_interval: Duration,
    #[serde(with = "herald_proto::support::duration")]
    pub backend_keepalive_timeout: Duration,
}

/// Open files kept for what is not a client connection: listeners, connections to the
/// backends (and, in `herald serve`, the database's), log files.
pub const RESERVED_FILES: usize = 256;

/// The open-files limit less [`RESERVED_FILES`]: past it, accepting would fail with `EMFILE`
/// instead of answering `503`.
fn default_max_connections() -> usize {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|limits| open_files_limit(&limits))
        .map_or(10_000, |limit| limit.saturating_sub(RESERVED_FILES).max(1))
}

/// The soft `Max open files` of `/proc/self/limits` (`None` when unlimited or unreadable).
fn open_files_limit(limits: &str) -> Option<usize> {
    let line = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_connections: default_max_connections(),
            accept_rate: 5_000,
            accept_burst: 10_000,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            max_per_ip: 0,
            max_per_user: 0,
            max_backend_streams: 8192,
            backend_call_timeout: Duration::from_secs(10),
            backend_keepalive_interval: Duration::from_secs(20),
            backend_keepalive_timeout: Duration::from_secs(20),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::open_files_limit;

    #[test]
    fn the_open_files_limit_is_the_soft_one() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max processes             95534                95534                processes \n\
                      Max open files            20000                524288               files     \n";
        assert_eq!(open_files_limit(limits), Some(20_000));
        let unlimited =
            "Max open files            unlimited            unlimited            files\n";
        assert_eq!(open_files_limit(unlimited), None);
        assert_eq!(open_files_limit("Max processes 1 1 processes\n"), None);
    }
}
