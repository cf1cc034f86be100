//! The backend's Prometheus metrics: every metric it serves is named here, and nowhere else.
//!
//! One registry per [`crate::node::Node`] (not the `metrics` crate's global recorder), so two
//! backends in one process — `herald serve` beside an edge, or the tests — never mix their
//! counts. Every handle is registered once, at start, for each value of its small closed
//! label sets (topic kind, lane, reason, limit): recording is an atomic add on a handle, with
//! no label formatting and no allocation. Values the core already counts (the hub's slow
//! consumers, the broker's deliveries, the relay's batches, the verifier's refusals) are
//! copied into the registry when `/metrics` is scraped; so are the gauges read from the
//! database (the outbox backlog). No label ever carries a user id, a topic or a token.
//!
//! docs/operations.md lists every metric, its labels and what to alert on.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use herald_proto::metrics::{DELIVERY_LAG, LagHistogram};
use metrics::{Counter, Gauge, Key, KeyName, Label, Level, Metadata, Recorder, SharedString};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

use crate::{lanes::Lane, topic::TopicKind};

/// The lanes as label values, in [`lane_index`] order.
pub const LANES: [&str; 3] = ["memory", "durable", "ephemeral"];

/// Index of a lane in [`LANES`].
pub fn lane_index(lane: Lane) -> usize {
    match lane {
        Lane::Memory => 0,
        Lane::Durable => 1,
    }
}

/// The lane of signals and presence pushes.
pub const EPHEMERAL: usize = 2;

/// Why a token was refused, as label values (see [`crate::auth::AuthError::reason`]).
pub const AUTH_REASONS: [&str; 9] = [
    "missing",
    "malformed",
    "algorithm",
    "unknown_key",
    "bad_signature",
    "expired",
    "not_yet_valid",
    "claims",
    "issuer_or_audience",
];

/// Limits whose hits are counted, by their configuration name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum Limit {
    /// `topics.signal_rate`: a sender's signals per second.
    SignalRate = 0,
    /// `node.max_concurrent_history`: `History` calls at once.
    ConcurrentHistory = 1,
    /// `broker.*` caps: a write refused because the memory broker is full.
    BrokerCapacity = 2,
    /// `topics.publish_rate`: publishes per topic per second.
    PublishRate = 3,
    /// `grpc.user_writes_per_minute`: a user's write calls.
    UserWriteRate = 4,
}

const LIMIT_NAMES: [&str; 5] = [
    "topics.signal_rate",
    "node.max_concurrent_history",
    "broker.capacity",
    "topics.publish_rate",
    "grpc.user_writes_per_minute",
];

/// Where an error came from, as label values.
const ERROR_SOURCES: [&str; 2] = ["database", "broker"];

/// Database and broker errors answered to clients, process-wide (they are counted where the
/// one `Error` → `Status` mapping happens, which has no registry at hand).
static ERRORS: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];

/// Counts a database error answered to a client.
pub fn database_error() {
    ERRORS[0].fetch_add(1, Ordering::Relaxed);
}

/// Counts a broker error answered to a client.
pub fn broker_error() {
    ERRORS[1].fetch_add(1, Ordering::Relaxed);
}

/// What is read from elsewhere when `/metrics` is scraped.
#[derive(Debug, Default, Clone, Copy)]
pub struct Scraped {
    pub online_users: u64,
    pub slow_consumers: u64,
    /// Hub deliveries per lane ([`LANES`] order).
    pub deliveries: [u64; 3],
    pub relay_batches: u64,
    pub relayed_events: u64,
    /// Pending outbox rows and the age of the oldest, when the database answered.
    pub outbox: Option<(u64, Option<Duration>)>,
    /// Token refusals per reason ([`AUTH_REASONS`] order).
    pub auth_failures: [u64; AUTH_REASONS.len()],
    pub broker_refusals: u64,
}

type PerKindLane<T> = [[T; 2]; TopicKind::ALL.len()];

/// The registry and its pre-registered handles.
pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    started: Instant,
    subscriptions: PerKindLane<Gauge>,
    subscribes: PerKindLane<Counter>,
    follow_streams: Gauge,
    online_users: Gauge,
    publishes: [Counter; 3],
    deliveries: [Counter; 3],
    resumes_recovered: Counter,
    resumes_not_recovered: Counter,
    catchup_pages: Counter,
    slow_consumers: Counter,
    auth_failures: [Counter; AUTH_REASONS.len()],
    limit_hits: [Counter; LIMIT_NAMES.len()],
    broker_refusals_seen: AtomicU64,
    outbox_backlog: Gauge,
    outbox_oldest_age: Gauge,
    errors: [Counter; 2],
    relay_batches: Counter,
    relayed_events: Counter,
    uptime: Gauge,
    admin_actions: Counter,
    lag: LagHistogram,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Builds handles against one recorder.
struct Registrar<'a>(&'a PrometheusRecorder);

const METADATA: Metadata<'static> = Metadata::new("herald", Level::INFO, None);

impl Registrar<'_> {
    fn labels(labels: &[(&'static str, &'static str)]) -> Vec<Label> {
        labels
            .iter()
            .map(|(key, value)| Label::new(*key, *value))
            .collect()
    }

    fn counter(&self, name: &'static str, labels: &[(&'static str, &'static str)]) -> Counter {
        self.0
            .register_counter(&Key::from_parts(name, Self::labels(labels)), &METADATA)
    }

    fn gauge(&self, name: &'static str, labels: &[(&'static str, &'static str)]) -> Gauge {
        self.0
            .register_gauge(&Key::from_parts(name, Self::labels(labels)), &METADATA)
    }

    fn describe_counter(&self, name: &'static str, help: &'static str) {
        self.0
            .describe_counter(KeyName::from(name), None, SharedString::from(help));
    }

    fn describe_gauge(&self, name: &'static str, help: &'static str) {
        self.0
            .describe_gauge(KeyName::from(name), None, SharedString::from(help));
    }

    fn per_kind_lane<T>(
        &self,
        make: impl Fn(&[(&'static str, &'static str)]) -> T,
    ) -> PerKindLane<T> {
        TopicKind::ALL
            .map(|kind| [0, 1].map(|lane| make(&[("kind", kind.as_str()), ("lane", LANES[lane])])))
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let r = Registrar(&recorder);
        r.describe_gauge(
            "herald_subscriptions",
            "Subscriptions open on this backend (Rooms/Subscribe streams and sockets attached through an edge), by topic kind and lane.",
        );
        r.describe_counter(
            "herald_subscribes_total",
            "Subscriptions started, by topic kind and lane.",
        );
        r.describe_gauge(
            "herald_follow_streams",
            "Edge/Follow streams open: one per (edge, topic).",
        );
        r.describe_gauge(
            "herald_online_users",
            "Users with at least one stream open on this backend.",
        );
        r.describe_counter(
            "herald_publishes_total",
            "Events and signals accepted for publishing, by lane.",
        );
        r.describe_counter(
            "herald_deliveries_total",
            "Items handed to subscriber queues on this backend (an edge's follow stream counts once per topic), by lane.",
        );
        r.describe_counter(
            "herald_resumes_total",
            "Subscriptions that asked to resume after a position, by whether history covered it.",
        );
        r.describe_counter(
            "herald_catchup_pages_total",
            "Pages of durable history read from the database (catch-ups, History, refills).",
        );
        r.describe_counter(
            "herald_slow_consumer_endings_total",
            "Subscribers removed because their queue overflowed.",
        );
        r.describe_counter(
            "herald_auth_failures_total",
            "Requests and attaches refused for their token, by reason.",
        );
        r.describe_counter(
            "herald_limit_hits_total",
            "Requests refused by a limit or rate limit, by the limit's configuration name.",
        );
        r.describe_gauge(
            "herald_outbox_backlog",
            "Committed durable events the relay has not published yet.",
        );
        r.describe_gauge(
            "herald_outbox_oldest_pending_age_seconds",
            "Age of the oldest unpublished outbox row (0 when none).",
        );
        r.describe_counter(
            "herald_errors_total",
            "Database and broker errors answered to clients (process-wide), by source.",
        );
        r.describe_counter(
            "herald_relay_batches_total",
            "Outbox relay passes that published at least one row.",
        );
        r.describe_counter(
            "herald_relayed_events_total",
            "Outbox rows the relay handed to the broker.",
        );
        r.describe_gauge(
            "herald_uptime_seconds",
            "Seconds since this backend started.",
        );
        r.describe_counter(
            "herald_admin_actions_total",
            "herald.v1.Admin calls that were carried out (each is in the audit log).",
        );
        Metrics {
            subscriptions: r.per_kind_lane(|labels| r.gauge("herald_subscriptions", labels)),
            subscribes: r.per_kind_lane(|labels| r.counter("herald_subscribes_total", labels)),
            follow_streams: r.gauge("herald_follow_streams", &[]),
            online_users: r.gauge("herald_online_users", &[]),
            publishes: LANES.map(|lane| r.counter("herald_publishes_total", &[("lane", lane)])),
            deliveries: LANES.map(|lane| r.counter("herald_deliveries_total", &[("lane", lane)])),
            resumes_recovered: r.counter("herald_resumes_total", &[("result", "recovered")]),
            resumes_not_recovered: r
                .counter("herald_resumes_total", &[("result", "not_recovered")]),
            catchup_pages: r.counter("herald_catchup_pages_total", &[]),
            slow_consumers: r.counter("herald_slow_consumer_endings_total", &[]),
            auth_failures: AUTH_REASONS
                .map(|reason| r.counter("herald_auth_failures_total", &[("reason", reason)])),
            limit_hits: LIMIT_NAMES
                .map(|limit| r.counter("herald_limit_hits_total", &[("limit", limit)])),
            broker_refusals_seen: AtomicU64::new(0),
            outbox_backlog: r.gauge("herald_outbox_backlog", &[]),
            outbox_oldest_age: r.gauge("herald_outbox_oldest_pending_age_seconds", &[]),
            errors: ERROR_SOURCES
                .map(|source| r.counter("herald_errors_total", &[("source", source)])),
            relay_batches: r.counter("herald_relay_batches_total", &[]),
            relayed_events: r.counter("herald_relayed_events_total", &[]),
            uptime: r.gauge("herald_uptime_seconds", &[]),
            admin_actions: r.counter("herald_admin_actions_total", &[]),
            lag: LagHistogram::new(),
            started: Instant::now(),
            handle,
            recorder,
        }
    }

    /// A subscription opened; the guard counts it until dropped.
    pub fn subscription(self: &Arc<Self>, kind: TopicKind, lane: Lane) -> SubscriptionGauge {
        let (kind, lane) = (kind_index(kind), lane_index(lane));
        self.subscribes[kind][lane].increment(1);
        self.subscriptions[kind][lane].increment(1.0);
        SubscriptionGauge {
            metrics: self.clone(),
            kind,
            lane,
        }
    }

    /// An edge's follow stream opened; the guard counts it until dropped.
    pub fn follow_stream(self: &Arc<Self>) -> FollowGauge {
        self.follow_streams.increment(1.0);
        FollowGauge(self.clone())
    }

    pub fn published(&self, lane: usize) {
        self.publishes[lane].increment(1);
    }

    pub fn resumed(&self, recovered: bool) {
        if recovered {
            self.resumes_recovered.increment(1);
        } else {
            self.resumes_not_recovered.increment(1);
        }
    }

    pub fn catchup_page(&self) {
        self.catchup_pages.increment(1);
    }

    pub fn limit_hit(&self, limit: Limit) {
        self.limit_hits[limit as usize].increment(1);
    }

    pub fn admin_action(&self) {
        self.admin_actions.increment(1);
    }

    /// The delivery lag (publish → written to a `Rooms/Subscribe` stream).
    pub fn lag(&self) -> &LagHistogram {
        &self.lag
    }

    /// Seconds since start.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// The Prometheus text of every metric, after copying in `scraped`.
    pub fn render(&self, scraped: &Scraped) -> String {
        self.online_users.set(scraped.online_users as f64);
        self.slow_consumers.absolute(scraped.slow_consumers);
        for (counter, value) in self.deliveries.iter().zip(scraped.deliveries) {
            counter.absolute(value);
        }
        self.relay_batches.absolute(scraped.relay_batches);
        self.relayed_events.absolute(scraped.relayed_events);
        if let Some((backlog, oldest)) = scraped.outbox {
            self.outbox_backlog.set(backlog as f64);
            self.outbox_oldest_age
                .set(oldest.map_or(0.0, |age| age.as_secs_f64()));
        }
        for (counter, value) in self.auth_failures.iter().zip(scraped.auth_failures) {
            counter.absolute(value);
        }
        let before = self
            .broker_refusals_seen
            .swap(scraped.broker_refusals, Ordering::Relaxed);
        self.limit_hits[Limit::BrokerCapacity as usize]
            .increment(scraped.broker_refusals.saturating_sub(before));
        for (counter, value) in self.errors.iter().zip(&ERRORS) {
            counter.absolute(value.load(Ordering::Relaxed));
        }
        self.uptime.set(self.started.elapsed().as_secs_f64());
        let _ = &self.recorder;
        let mut text = self.handle.render();
        self.lag.render(
            DELIVERY_LAG,
            "Seconds from an event's publish time until it is written to a Rooms/Subscribe stream.",
            &mut text,
        );
        text
    }
}

fn kind_index(kind: TopicKind) -> usize {
    TopicKind::ALL
        .iter()
        .position(|k| *k == kind)
        .unwrap_or_default()
}

/// Counts one open subscription in `herald_subscriptions` while it lives.
pub struct SubscriptionGauge {
    metrics: Arc<Metrics>,
    kind: usize,
    lane: usize,
}

impl SubscriptionGauge {
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }
}

impl std::fmt::Debug for SubscriptionGauge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubscriptionGauge").finish_non_exhaustive()
    }
}

impl Drop for SubscriptionGauge {
    fn drop(&mut self) {
        self.metrics.subscriptions[self.kind][self.lane].decrement(1.0);
    }
}

/// Counts one open follow stream while it lives.
pub struct FollowGauge(Arc<Metrics>);

impl std::fmt::Debug for FollowGauge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FollowGauge").finish_non_exhaustive()
    }
}

impl Drop for FollowGauge {
    fn drop(&mut self) {
        self.0.follow_streams.decrement(1.0);
    }
}

/// What `/metrics` reads when scraped.
#[derive(Debug, Clone)]
pub struct Sources {
    pub node: Arc<crate::node::Node>,
    pub broker: Arc<dyn crate::broker::Broker>,
    pub store: crate::store::Store,
    pub verifier: Arc<crate::auth::TokenVerifier>,
}

impl Sources {
    /// Reads every source (one indexed query for the outbox backlog) and renders.
    pub async fn render(&self) -> String {
        let hub = self.node.hub_stats();
        let relay = self.store.relay_stats();
        let outbox = match self.store.outbox_backlog().await {
            Ok((backlog, oldest)) => {
                Some((backlog, oldest.map(|at| at.elapsed().unwrap_or_default())))
            }
            Err(error) => {
                tracing::warn!(%error, "metrics: cannot read the outbox backlog");
                None
            }
        };
        let scraped = Scraped {
            online_users: self.node.online().users() as u64,
            slow_consumers: hub.slow_consumers,
            deliveries: self.broker.deliveries(),
            relay_batches: relay.batches,
            relayed_events: relay.events,
            outbox,
            auth_failures: self.verifier.failures(),
            broker_refusals: self.node.broker_stats().refused_at_capacity,
        };
        self.node.metrics().render(&scraped)
    }
}

/// Serves `GET /metrics` on `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    sources: Sources,
    shutdown: tokio_util::sync::CancellationToken,
) {
    use axum::{Router, extract::State, http::header, response::IntoResponse, routing::get};
    async fn scrape(State(sources): State<Sources>) -> impl IntoResponse {
        (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            sources.render().await,
        )
    }
    let app = Router::new()
        .route("/metrics", get(scrape))
        .with_state(sources);
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(metrics_addr = %addr, "serving /metrics");
    }
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
    if let Err(error) = served {
        tracing::warn!(%error, "the metrics server stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_renders_with_closed_labels() {
        let metrics = Arc::new(Metrics::new());
        let gauge = metrics.subscription(TopicKind::Room, Lane::Memory);
        metrics.published(0);
        metrics.resumed(false);
        let text = metrics.render(&Scraped::default());
        assert!(
            text.contains("herald_subscriptions{kind=\"room\",lane=\"memory\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("herald_publishes_total{lane=\"memory\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("herald_resumes_total{result=\"not_recovered\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("herald_delivery_lag_seconds_count 0"),
            "{text}"
        );
        drop(gauge);
        let text = metrics.render(&Scraped::default());
        assert!(
            text.contains("herald_subscriptions{kind=\"room\",lane=\"memory\"} 0"),
            "{text}"
        );
    }
}
