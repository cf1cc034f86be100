//! The edge's Prometheus metrics, served at `/metrics` on its HTTP port: every metric it
//! serves is named here, and nowhere else.
//!
//! One registry per edge (not the `metrics` crate's global recorder), so an edge beside a
//! backend in one process never mixes their counts. Handles are registered once for each
//! value of their small closed label sets; recording is an atomic add, with no label
//! formatting and no allocation. No label ever carries a user id, a topic or a token.
//! docs/operations.md lists every metric and what to alert on.

use std::sync::Arc;

use herald_proto::metrics::{DELIVERY_LAG, LagHistogram, ShardedCount, TOPIC_KINDS};
use metrics::{Counter, Gauge, Key, KeyName, Label, Level, Metadata, Recorder, SharedString};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

/// The limits whose hits are counted, by configuration name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub(crate) enum Limit {
    Rate = 0,
    RateAbuse = 1,
    MaxSubscriptions = 2,
    MaxCallsInFlight = 3,
    MaxPerUser = 4,
    MaxConnections = 5,
    MaxPerIp = 6,
    MaxFrameBytes = 7,
    /// Counted once per accept that waited for the rate's next token.
    AcceptRate = 8,
}

const LIMIT_NAMES: [&str; 9] = [
    "edge.limits.rate_per_second",
    "edge.limits.rate_abuse_limit",
    "edge.limits.max_subscriptions",
    "edge.limits.max_calls_in_flight",
    "edge.connections.max_per_user",
    "edge.connections.max_connections",
    "edge.connections.max_per_ip",
    "edge.limits.max_frame_bytes",
    "edge.connections.accept_rate",
];

/// Why a socket's auth failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub(crate) enum AuthFailure {
    /// The backend refused the token.
    Refused = 0,
    /// No `auth` within `edge.limits.auth_timeout`.
    Timeout = 1,
}

const AUTH_REASONS: [&str; 2] = ["refused", "timeout"];

/// The kinds of pushes written to sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub(crate) enum Push {
    Event = 0,
}

pub(crate) struct EdgeMetrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    connections: Gauge,
    authenticated: Gauge,
    subscribes: [Counter; TOPIC_KINDS.len() + 1],
    deliveries: [Counter; 1],
    /// Counted here on the hot path, copied into `deliveries` when scraped.
    delivery_counts: [ShardedCount; 1],
    slow_consumers: Counter,
    auth_failures: [Counter; AUTH_REASONS.len()],
    limit_hits: [Counter; LIMIT_NAMES.len()],
    backend_errors: Counter,
    admin_disconnects: Counter,
    verify_calls: Counter,
    verified_tokens: Counter,
    lag: LagHistogram,
}

impl std::fmt::Debug for EdgeMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EdgeMetrics").finish_non_exhaustive()
    }
}

const METADATA: Metadata<'static> = Metadata::new("herald_edge", Level::INFO, None);

fn key(name: &'static str, labels: &[(&'static str, &'static str)]) -> Key {
    let labels: Vec<Label> = labels
        .iter()
        .map(|(key, value)| Label::new(*key, *value))
        .collect();
    Key::from_parts(name, labels)
}

impl EdgeMetrics {
    pub(crate) fn new() -> Arc<EdgeMetrics> {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let counter = |name, labels: &[(&'static str, &'static str)]| {
            recorder.register_counter(&key(name, labels), &METADATA)
        };
        let gauge = |name, labels: &[(&'static str, &'static str)]| {
            recorder.register_gauge(&key(name, labels), &METADATA)
        };
        let describe = |name: &'static str, help: &'static str, is_gauge: bool| {
            if is_gauge {
                recorder.describe_gauge(KeyName::from(name), None, SharedString::from(help));
            } else {
                recorder.describe_counter(KeyName::from(name), None, SharedString::from(help));
            }
        };
        describe(
            "herald_edge_connections",
            "WebSocket sockets open on this edge.",
            true,
        );
        describe(
            "herald_edge_authenticated_connections",
            "WebSocket sockets that have authenticated.",
            true,
        );
        describe(
            "herald_edge_subscribes_total",
            "Socket subscriptions requested, by topic kind (`other` for unknown prefixes).",
            false,
        );
        describe(
            "herald_edge_deliveries_total",
            "Live event pushes written to sockets.",
            false,
        );
        describe(
            "herald_edge_slow_consumer_endings_total",
            "Sockets closed because they fell too far behind (queue full or writes timing out).",
            false,
        );
        describe(
            "herald_edge_auth_failures_total",
            "Sockets whose auth failed, by reason.",
            false,
        );
        describe(
            "herald_edge_limit_hits_total",
            "Requests or connections refused by a limit or rate limit, by the limit's configuration name.",
            false,
        );
        describe(
            "herald_edge_backend_errors_total",
            "Calls to a backend that failed with UNAVAILABLE, DEADLINE_EXCEEDED or INTERNAL.",
            false,
        );
        describe(
            "herald_edge_admin_disconnects_total",
            "Sockets closed because an admin disconnected their user.",
            false,
        );
        describe(
            "herald_edge_verify_calls_total",
            "`Edge/Verify` calls sent to the backends, each carrying the tokens of the sockets that authenticated meanwhile.",
            false,
        );
        describe(
            "herald_edge_verified_tokens_total",
            "Socket tokens sent to the backends for verification (over `herald_edge_verify_calls_total`: tokens per call).",
            false,
        );
        let mut kinds = [""; TOPIC_KINDS.len() + 1];
        kinds[..TOPIC_KINDS.len()].copy_from_slice(&TOPIC_KINDS);
        kinds[TOPIC_KINDS.len()] = "other";
        Arc::new(EdgeMetrics {
            connections: gauge("herald_edge_connections", &[]),
            authenticated: gauge("herald_edge_authenticated_connections", &[]),
            subscribes: kinds
                .map(|kind| counter("herald_edge_subscribes_total", &[("kind", kind)])),
            deliveries: [counter("herald_edge_deliveries_total", &[])],
            delivery_counts: [ShardedCount::new()],
            slow_consumers: counter("herald_edge_slow_consumer_endings_total", &[]),
            auth_failures: AUTH_REASONS
                .map(|reason| counter("herald_edge_auth_failures_total", &[("reason", reason)])),
            limit_hits: LIMIT_NAMES
                .map(|limit| counter("herald_edge_limit_hits_total", &[("limit", limit)])),
            backend_errors: counter("herald_edge_backend_errors_total", &[]),
            admin_disconnects: counter("herald_edge_admin_disconnects_total", &[]),
            verify_calls: counter("herald_edge_verify_calls_total", &[]),
            verified_tokens: counter("herald_edge_verified_tokens_total", &[]),
            lag: LagHistogram::new(),
            handle,
            recorder,
        })
    }

    /// A socket opened; the guard counts it until dropped.
    pub(crate) fn connection(self: &Arc<Self>) -> ConnectionGauge {
        self.connections.increment(1.0);
        ConnectionGauge {
            metrics: self.clone(),
            authenticated: false,
        }
    }

    pub(crate) fn subscribed(&self, topic: &str) {
        let kind = herald_proto::metrics::kind_label(topic);
        let index = TOPIC_KINDS
            .iter()
            .position(|k| *k == kind)
            .unwrap_or(TOPIC_KINDS.len());
        self.subscribes[index].increment(1);
    }

    /// A push was written to a socket; `published` is an event's publish time.
    pub(crate) fn delivered(&self, push: Push, published: Option<std::time::SystemTime>) {
        self.delivery_counts[push as usize].add(1);
        if let Some(published) = published {
            self.lag.observe_since(published);
        }
    }

    pub(crate) fn slow_consumer(&self) {
        self.slow_consumers.increment(1);
    }

    pub(crate) fn auth_failed(&self, reason: AuthFailure) {
        self.auth_failures[reason as usize].increment(1);
    }

    pub(crate) fn limit_hit(&self, limit: Limit) {
        self.limit_hits[limit as usize].increment(1);
    }

    pub(crate) fn backend_error(&self) {
        self.backend_errors.increment(1);
    }

    pub(crate) fn admin_disconnect(&self) {
        self.admin_disconnects.increment(1);
    }

    /// One `Edge/Verify` call carrying `tokens` tokens was sent.
    pub(crate) fn verify_call(&self, tokens: usize) {
        self.verify_calls.increment(1);
        self.verified_tokens.increment(tokens as u64);
    }

    /// The Prometheus text of every metric.
    pub(crate) fn render(&self) -> String {
        let _ = &self.recorder;
        for (counter, count) in self.deliveries.iter().zip(&self.delivery_counts) {
            counter.absolute(count.get());
        }
        let mut text = self.handle.render();
        self.lag.render(
            DELIVERY_LAG,
            "Seconds from an event's publish time until its push is written to a socket.",
            &mut text,
        );
        text
    }
}

/// Counts one open socket (and, once authenticated, one authenticated socket).
pub(crate) struct ConnectionGauge {
    metrics: Arc<EdgeMetrics>,
    authenticated: bool,
}

impl ConnectionGauge {
    pub(crate) fn authenticated(&mut self) {
        if !self.authenticated {
            self.authenticated = true;
            self.metrics.authenticated.increment(1.0);
        }
    }
}

impl std::fmt::Debug for ConnectionGauge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionGauge").finish_non_exhaustive()
    }
}

impl Drop for ConnectionGauge {
    fn drop(&mut self) {
        self.metrics.connections.decrement(1.0);
        if self.authenticated {
            self.metrics.authenticated.decrement(1.0);
        }
    }
}
