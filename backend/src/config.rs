//! The backend's configuration: the top level of the TOML file, every table except `[edge]`
//! (which is the edge's). Defaults, overridden by the file, overridden by `HERALD_*`
//! environment variables and command-line flags: the `herald` binary (`cli/`) reads and
//! merges them; this crate only says what the settings are.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use serde::Deserialize;

use crate::{
    auth::AuthConfig,
    authz::PolicyConfig,
    broker::memory::RetentionConfig,
    domain::{
        chat::ChatConfig, deployments::DeploymentsConfig, inbox::InboxConfig, orders::OrdersConfig,
        reviews::ReviewsConfig,
    },
    lanes::TopicsConfig,
    node::NodeConfig,
    store::StoreConfig,
};

/// Everything the backend needs. Every section and field is optional in the file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the gRPC server listens.
    pub grpc_addr: SocketAddr,
    /// Where `/metrics` (Prometheus text) is served over HTTP; off when absent.
    pub metrics_addr: Option<SocketAddr>,
    /// Where the SQLite database and the development signing key live.
    pub data_dir: PathBuf,
    /// A `postgres://` or `sqlite://` URL; default: SQLite in the data directory.
    pub database_url: Option<String>,
    /// How long open streams get to end after a shutdown signal.
    #[serde(with = "herald_proto::support::duration")]
    pub shutdown_grace: Duration,
    pub auth: AuthConfig,
    pub policy: PolicyConfig,
    pub node: NodeConfig,
    pub retention: RetentionConfig,
    /// Which broker fans events out: the in-memory one (this process only) unless `url` is
    /// set to a Redis server shared by every backend of the cluster.
    pub broker: BrokerConfig,
    pub grpc: GrpcConfig,
    /// The database pool, durable writes and the outbox relay.
    pub database: StoreConfig,
    /// Lanes per topic kind, durable retention, signals.
    pub topics: TopicsConfig,
    /// Deployment monitoring: log limits.
    pub deployments: DeploymentsConfig,
    /// The notification inbox: its sweeper (snoozes that end, expiry purge).
    pub notifications: InboxConfig,
    /// Review requests: the default reviewer role.
    pub reviews: ReviewsConfig,
    /// Messaging: group and membership bounds, typing.
    pub chat: ChatConfig,
    /// Order tracking: courier location throttle, storage and staleness.
    pub orders: OrdersConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], 50051)),
            metrics_addr: None,
            data_dir: PathBuf::from("herald-data"),
            database_url: None,
            shutdown_grace: Duration::from_secs(10),
            auth: AuthConfig::default(),
            policy: PolicyConfig::default(),
            node: NodeConfig::default(),
            retention: RetentionConfig::default(),
            broker: BrokerConfig::default(),
            grpc: GrpcConfig::default(),
            database: StoreConfig::default(),
            topics: TopicsConfig::default(),
            deployments: DeploymentsConfig::default(),
            notifications: InboxConfig::default(),
            reviews: ReviewsConfig::default(),
            chat: ChatConfig::default(),
            orders: OrdersConfig::default(),
        }
    }
}

/// The broker (`[broker]`; `--broker` / `HERALD_BROKER_URL` set `url`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerConfig {
    /// `redis://host:port/db`: offsets, memory-lane history, fan-out and presence live in
    /// this Redis, shared by every backend that names it. Unset: the in-memory broker and
    /// presence of this process (one backend only).
    pub url: Option<String>,
    /// Prefix of every Redis key and channel, so several clusters can share one Redis.
    pub prefix: String,
    /// How long a presence entry outlives its node's last refresh (a crashed backend's
    /// members disappear within it). Refreshed every third of it.
    #[serde(with = "herald_proto::support::duration")]
    pub presence_ttl: Duration,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            url: None,
            prefix: "herald".into(),
            presence_ttl: Duration::from_secs(15),
        }
    }
}

impl BrokerConfig {
    /// Checks the values: a URL must be `redis://` or `rediss://`, the prefix non-empty.
    pub fn check(&self) -> Result<(), String> {
        if let Some(url) = &self.url
            && !(url.starts_with("redis://") || url.starts_with("rediss://"))
        {
            return Err(format!(
                "broker.url (--broker, HERALD_BROKER_URL) must be a redis:// URL, got {url:?}"
            ));
        }
        if self.prefix.is_empty() || self.prefix.contains(char::is_whitespace) {
            return Err(format!(
                "broker.prefix must be non-empty without spaces, got {:?}",
                self.prefix
            ));
        }
        if self.presence_ttl < Duration::from_millis(300)
            || self.presence_ttl > Duration::from_secs(3600)
        {
            return Err(format!(
                "broker.presence_ttl must be between 300ms and 1h, got {:?}",
                self.presence_ttl
            ));
        }
        Ok(())
    }
}

/// Transport limits of the gRPC server, set explicitly rather than left to library defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrpcConfig {
    /// The largest request message accepted.
    pub max_decode_bytes: usize,
    /// The most concurrent streams on one HTTP/2 connection.
    pub max_concurrent_streams: u32,
    /// How often an idle connection is pinged.
    #[serde(with = "herald_proto::support::duration")]
    pub keepalive_interval: Duration,
    /// How long a ping may go unanswered before the connection is closed.
    #[serde(with = "herald_proto::support::duration")]
    pub keepalive_timeout: Duration,
    /// Calls that change stored state (sending a message, placing an order, marking read…)
    /// one user may make per minute over every connection, sustained; services are not
    /// limited. 0 for no limit. See `grpc::write_rate` for which methods count.
    pub user_writes_per_minute: u32,
    /// Such calls one user may make in a burst.
    pub user_write_burst: u32,
}

impl Default for GrpcConfig {
    fn default() -> Self {
        GrpcConfig {
            max_decode_bytes: 1024 * 1024,
            max_concurrent_streams: 10_000,
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(20),
            user_writes_per_minute: 100,
            user_write_burst: 100,
        }
    }
}

impl Config {
    /// The database URL in effect.
    pub fn database_url(&self) -> String {
        self.database_url.clone().unwrap_or_else(|| {
            format!(
                "sqlite://{}?mode=rwc",
                self.data_dir.join("herald.db").display()
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partial_file_keeps_the_other_defaults() {
        let config: Config = toml::from_str(
            r#"
            grpc_addr = "127.0.0.1:6000"
            [retention]
            history_max_age = "2m"
            [auth]
            issuer = "https://id.example"
            "#,
        )
        .unwrap();
        assert_eq!(config.grpc_addr.port(), 6000);
        assert_eq!(config.retention.history_max_age, Duration::from_secs(120));
        assert_eq!(config.retention.history_max_events, 1000);
        assert_eq!(config.auth.issuer.as_deref(), Some("https://id.example"));
        assert_eq!(config.node.replay_cap, 1000);
    }

    #[test]
    fn the_orders_table_sets_the_tracking_intervals_and_checks_them() {
        let config: Config = toml::from_str(
            r#"
            [orders]
            location_stale_after = "45s"
            max_tracked_orders = 10
            "#,
        )
        .unwrap();
        assert_eq!(config.orders.location_stale_after, Duration::from_secs(45));
        assert_eq!(config.orders.location_throttle, Duration::from_secs(1));
        assert!(config.orders.check().is_ok());
        let mut bad = config.orders.clone();
        bad.location_timer = Duration::from_secs(2);
        assert!(bad.check().unwrap_err().contains("orders.location_timer"));
    }

    #[test]
    fn the_broker_memory_caps_are_read_from_the_retention_table() {
        let config: Config = toml::from_str(
            r#"
            [retention]
            max_topics = 10
            max_history_bytes = 4096
            max_idempotency_keys = 20
            "#,
        )
        .unwrap();
        assert_eq!(config.retention.max_topics, 10);
        assert_eq!(config.retention.max_history_bytes, 4096);
        assert_eq!(config.retention.max_idempotency_keys, 20);
        let error = toml::from_str::<Config>("[retention]\nmax_topic = 1").unwrap_err();
        assert!(error.to_string().contains("max_topic"));
    }

    #[test]
    fn the_broker_table_names_a_redis_url_and_is_checked() {
        let config: Config = toml::from_str(
            r#"
            [broker]
            url = "redis://127.0.0.1:6379/0"
            presence_ttl = "5s"
            "#,
        )
        .unwrap();
        assert_eq!(
            config.broker.url.as_deref(),
            Some("redis://127.0.0.1:6379/0")
        );
        assert_eq!(config.broker.prefix, "herald");
        assert!(config.broker.check().is_ok());
        assert!(Config::default().broker.url.is_none());
        let mut bad = config.broker.clone();
        bad.url = Some("http://127.0.0.1:6379".into());
        assert!(bad.check().unwrap_err().contains("broker.url"));
    }

    #[test]
    fn unknown_fields_are_refused_by_name() {
        let error = toml::from_str::<Config>("grpc_adr = \"x\"").unwrap_err();
        assert!(error.to_string().contains("grpc_adr"));
    }
}
