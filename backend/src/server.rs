//! Assembles and runs the backend: database, auth, hub, broker, presence, node, and the tonic
//! server with reflection, health and explicit transport limits.

use std::{future::Future, sync::Arc};

use herald_proto::server::{
    admin_server::AdminServer, auth_server::AuthServer, chat_server::ChatServer,
    deployments_server::DeploymentsServer, edge_server::EdgeServer,
    notifications_server::NotificationsServer, orders_server::OrdersServer,
    reviews_server::ReviewsServer, rooms_server::RoomsServer,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[cfg(feature = "test-util")]
use crate::store::RelayFaults;
use crate::{
    auth::{AuthInterceptor, TokenVerifier, dev_key, verifier::AuthConfigError},
    authz::Policy,
    broker::{
        Broker,
        memory::MemoryBroker,
        redis::{RedisBroker, RedisConfig},
    },
    clock::{SharedClock, SystemClock},
    config::Config,
    domain::{
        chat::Chat, deployments::Deployments, inbox::Inbox, orders::Orders, reviews::Reviews,
    },
    grpc::{
        auth::AuthService, chat::ChatService, deployments::DeploymentsService, edge::EdgeService,
        inbox::NotificationsService, orders::OrdersService, reviews::ReviewsService,
        rooms::RoomsService, write_rate::UserWrites,
    },
    hub::Hub,
    lanes::Lanes,
    node::{Node, NodeParts},
    presence::{Presence, memory::MemoryPresence, redis::RedisPresence},
    publish::Publisher,
    signals::SignalLimits,
    store::{Store, StoreError, relay},
    topic::TopicKind,
};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot use the data directory {path}: {source}")]
    DataDir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("database: {0}; check --database-url (HERALD_DATABASE_URL)")]
    Database(#[from] sea_orm::DbErr),
    #[error("database: {0}; check --database-url (HERALD_DATABASE_URL)")]
    Store(#[from] StoreError),
    #[error("auth configuration: {0}")]
    Auth(#[from] AuthConfigError),
    #[error("configuration: {0}")]
    Config(String),
    #[error(
        "broker: {0}; check --broker (HERALD_BROKER_URL, broker.url): Redis must be reachable when a backend starts"
    )]
    Broker(#[from] crate::broker::BrokerError),
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// A backend ready to serve: built from configuration, not yet listening.
#[derive(Debug)]
pub struct Backend {
    config: Config,
    node: Arc<Node>,
    broker: Arc<dyn Broker>,
    /// The in-memory broker, when it is the one (its sweeper runs while serving).
    memory: Option<Arc<MemoryBroker>>,
    /// Stops the broker's and presence's own tasks (Redis pub/sub, presence refresh) when the
    /// backend stops serving.
    background: CancellationToken,
    verifier: Arc<TokenVerifier>,
    store: Store,
    /// The wall clock of the domain rules.
    clock: SharedClock,
    /// Order tracking (built here, so its tracker's counters are readable before serving).
    orders: Orders,
    /// `/metrics` on a listener bound by the caller, instead of `config.metrics_addr`.
    metrics_listener: Option<TcpListener>,
    #[cfg(feature = "test-util")]
    relay_faults: Arc<RelayFaults>,
}

impl Backend {
    /// Opens the data directory and database (running migrations) and wires the core.
    /// Without configured keys, the development signing key is loaded or created.
    pub async fn build(mut config: Config) -> Result<Backend, ServeError> {
        let data_dir = config.data_dir.clone();
        std::fs::create_dir_all(&data_dir).map_err(|source| ServeError::DataDir {
            path: data_dir.clone(),
            source,
        })?;
        let lanes = Arc::new(Lanes::new(&config.topics).map_err(ServeError::Config)?);
        config.deployments.check().map_err(ServeError::Config)?;
        config.chat.check().map_err(ServeError::Config)?;
        config.orders.check().map_err(ServeError::Config)?;
        crate::domain::reviews::rules::role("reviews.reviewer_role", &config.reviews.reviewer_role)
            .map_err(|e| ServeError::Config(e.to_string()))?;
        let store = Store::open(
            &config.database_url(),
            config.database.clone(),
            lanes.clone(),
        )
        .await?;

        if config.auth.hs256_secret.is_none() && config.auth.public_keys.is_empty() {
            let (secret, created) =
                dev_key::load_or_create(&data_dir).map_err(|source| ServeError::DataDir {
                    path: data_dir.clone(),
                    source,
                })?;
            if created {
                tracing::info!(
                    path = %dev_key::path(&data_dir).display(),
                    "created a development signing key; `herald token` signs with it. \
                     Configure auth keys for production"
                );
            }
            config.auth.hs256_secret = Some(secret);
        }
        let verifier = Arc::new(TokenVerifier::new(&config.auth)?);

        config.broker.check().map_err(ServeError::Config)?;
        let hub = Hub::new(config.node.subscriber_queue);
        let background = CancellationToken::new();
        let (broker, memory, presence): (Arc<dyn Broker>, _, Arc<dyn Presence>) =
            match &config.broker.url {
                None => {
                    let memory = Arc::new(
                        MemoryBroker::new(hub.clone(), config.retention.clone())
                            .with_signal_limits(SignalLimits::new(&config.topics)),
                    );
                    (
                        memory.clone(),
                        Some(memory),
                        Arc::new(MemoryPresence::new()),
                    )
                }
                Some(url) => {
                    let redis = RedisConfig {
                        url: url.clone(),
                        prefix: config.broker.prefix.clone(),
                        signals: SignalLimits::new(&config.topics),
                    };
                    let broker = RedisBroker::connect(
                        hub.clone(),
                        &redis,
                        config.retention.clone(),
                        background.clone(),
                    )
                    .await?;
                    let presence = RedisPresence::connect(
                        url,
                        &config.broker.prefix,
                        config.broker.presence_ttl,
                        background.clone(),
                    )
                    .await?;
                    tracing::info!(prefix = %config.broker.prefix, "broker: Redis");
                    (Arc::new(broker), None, Arc::new(presence))
                }
            };
        let node = Node::new(NodeParts {
            hub,
            broker: broker.clone(),
            presence,
            policy: Policy::new(config.policy.clone())
                .with_membership(TopicKind::Deployment, Deployments::owners(store.clone()))
                .with_membership(TopicKind::Group, Chat::members(store.clone()))
                .with_membership(TopicKind::Conv, Chat::members(store.clone()))
                .with_membership(TopicKind::Order, Orders::customers(store.clone())),
            config: config.node.clone(),
            lanes,
            log: Some(Arc::new(store.clone())),
        })
        .map_err(ServeError::Config)?;
        let clock: SharedClock = Arc::new(SystemClock);
        let orders = Orders::new(
            store.clone(),
            node.clone(),
            clock.clone(),
            config.orders.clone(),
        );
        Ok(Backend {
            config,
            node,
            broker,
            memory,
            background,
            verifier,
            store,
            clock,
            orders,
            metrics_listener: None,
            #[cfg(feature = "test-util")]
            relay_faults: Arc::new(RelayFaults::default()),
        })
    }

    /// Serves `/metrics` on `listener` (already bound, so a caller that binds it only when
    /// the port is free never races another process for it).
    pub fn with_metrics_listener(mut self, listener: TcpListener) -> Backend {
        self.metrics_listener = Some(listener);
        self
    }

    /// Replaces the wall clock the domain rules read (tests move time with a
    /// [`ShiftedClock`](crate::clock::ShiftedClock)).
    pub fn with_clock(mut self, clock: SharedClock) -> Backend {
        self.orders = Orders::new(
            self.store.clone(),
            self.node.clone(),
            clock.clone(),
            self.config.orders.clone(),
        );
        self.clock = clock;
        self
    }

    /// Order tracking, for its tracker's counters.
    pub fn orders(&self) -> &Orders {
        &self.orders
    }

    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }

    /// The database and outbox, for domain services (see [`crate::store`]).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Fault injection into the outbox relay (tests; the `test-util` feature).
    #[cfg(feature = "test-util")]
    pub fn relay_faults(&self) -> &Arc<RelayFaults> {
        &self.relay_faults
    }

    /// Serves gRPC on `listener` until `shutdown` is cancelled. Then every open stream ends
    /// with UNAVAILABLE "shutting down; resume from offset N", and the server waits for them
    /// at most `shutdown_grace`.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> Result<(), ServeError> {
        let Backend {
            config,
            node,
            broker,
            memory,
            background,
            verifier,
            store,
            clock,
            orders,
            metrics_listener,
            #[cfg(feature = "test-util")]
            relay_faults,
        } = self;
        let tracker = tokio_util::task::TaskTracker::new();
        let metrics_listener = match (metrics_listener, config.metrics_addr) {
            (Some(listener), _) => Some(listener),
            (None, Some(addr)) => Some(TcpListener::bind(addr).await.map_err(|source| {
                ServeError::Config(format!("metrics_addr {addr}: cannot listen: {source}"))
            })?),
            (None, None) => None,
        };
        if let Some(listener) = metrics_listener {
            let sources = crate::metrics::Sources {
                node: node.clone(),
                broker: broker.clone(),
                store: store.clone(),
                verifier: verifier.clone(),
            };
            tracker.spawn(crate::metrics::serve(listener, sources, shutdown.clone()));
        }
        if let Some(memory) = memory {
            tracker.spawn(memory.run_sweeper(std::time::Duration::from_secs(30), shutdown.clone()));
        }

        #[cfg(feature = "test-util")]
        let relay = relay::run(
            store.clone(),
            broker.clone(),
            relay_faults,
            shutdown.clone(),
        );
        #[cfg(not(feature = "test-util"))]
        let relay = relay::run(store.clone(), broker.clone(), shutdown.clone());
        tracker.spawn(relay);
        tracker.spawn(store.clone().run_health(shutdown.clone()));
        tracker.spawn(store.clone().run_retention(shutdown.clone()));
        let inbox = Inbox::new(store.clone(), clock.clone(), config.notifications.clone());
        tracker.spawn(inbox.clone().run_sweeper(shutdown.clone()));
        let reviews = Reviews::new(store.clone(), clock.clone(), config.reviews.clone());
        let chat = Chat::new(
            store.clone(),
            node.clone(),
            clock.clone(),
            config.chat.clone(),
        );
        tracker.spawn(chat.clone().run(shutdown.clone()));
        tracker.spawn(orders.clone().run_tracker(shutdown.clone()));

        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        health_reporter
            .set_serving::<RoomsServer<RoomsService>>()
            .await;
        tracker.spawn(report_readiness(
            store.ready(),
            broker.clone(),
            health_reporter,
            shutdown.clone(),
        ));
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(herald_proto::FILE_DESCRIPTOR_SET)
            .build_v1()
            .map_err(|e| ServeError::Config(format!("reflection: {e}")))?;

        let writes = UserWrites::new(
            config.grpc.user_writes_per_minute,
            config.grpc.user_write_burst,
            node.metrics().clone(),
        );
        let publisher = Publisher::new(node.clone(), store.clone());
        let rooms = RoomsServer::new(RoomsService::new(node.clone(), publisher))
            .max_decoding_message_size(config.grpc.max_decode_bytes);
        let rooms = tonic::service::interceptor::InterceptedService::new(
            rooms,
            AuthInterceptor::new(verifier.clone()),
        );
        let edge = EdgeServer::new(EdgeService::new(node.clone(), verifier.clone()))
            .max_decoding_message_size(config.grpc.max_decode_bytes);
        let edge = tonic::service::interceptor::InterceptedService::new(
            edge,
            AuthInterceptor::new(verifier.clone()),
        );
        let deployments = DeploymentsServer::new(DeploymentsService::new(Deployments::new(
            store.clone(),
            node.clone(),
            config.deployments.clone(),
        )))
        .max_decoding_message_size(config.grpc.max_decode_bytes);
        let deployments = tonic::service::interceptor::InterceptedService::new(
            writes.limit(deployments),
            AuthInterceptor::new(verifier.clone()),
        );
        let auth = tonic::service::interceptor::InterceptedService::new(
            AuthServer::new(AuthService),
            AuthInterceptor::new(verifier.clone()),
        );
        let notifications = tonic::service::interceptor::InterceptedService::new(
            writes.limit(
                NotificationsServer::new(NotificationsService::new(inbox))
                    .max_decoding_message_size(config.grpc.max_decode_bytes),
            ),
            AuthInterceptor::new(verifier.clone()),
        );
        let reviews = tonic::service::interceptor::InterceptedService::new(
            writes.limit(
                ReviewsServer::new(ReviewsService::new(reviews))
                    .max_decoding_message_size(config.grpc.max_decode_bytes),
            ),
            AuthInterceptor::new(verifier.clone()),
        );
        let chat = tonic::service::interceptor::InterceptedService::new(
            writes.limit(
                ChatServer::new(ChatService::new(chat))
                    .max_decoding_message_size(config.grpc.max_decode_bytes),
            ),
            AuthInterceptor::new(verifier.clone()),
        );
        let orders = tonic::service::interceptor::InterceptedService::new(
            writes.limit(
                OrdersServer::new(OrdersService::new(orders))
                    .max_decoding_message_size(config.grpc.max_decode_bytes),
            ),
            AuthInterceptor::new(verifier.clone()),
        );
        let admin = tonic::service::interceptor::InterceptedService::new(
            writes.limit(
                AdminServer::new(crate::grpc::admin::AdminService::new(
                    node.clone(),
                    store.clone(),
                ))
                .max_decoding_message_size(config.grpc.max_decode_bytes),
            ),
            AuthInterceptor::new(verifier),
        );

        let addr = listener.local_addr().ok();
        if let Some(addr) = addr {
            tracing::info!(grpc_addr = %addr, "herald backend listening");
        }

        let stop_node = {
            let node = node.clone();
            let shutdown = shutdown.clone();
            async move {
                shutdown.cancelled().await;
                tracing::info!("shutting down: ending open streams");
                node.shutdown();
            }
        };
        let server = tonic::transport::Server::builder()
            // One span per RPC and stream: the method only (never metadata: tokens).
            .trace_fn(|request| tracing::info_span!("rpc", method = request.uri().path()))
            .http2_keepalive_interval(Some(config.grpc.keepalive_interval))
            .http2_keepalive_timeout(Some(config.grpc.keepalive_timeout))
            .max_concurrent_streams(Some(config.grpc.max_concurrent_streams))
            .add_service(health_service)
            .add_service(reflection)
            .add_service(rooms)
            .add_service(edge)
            .add_service(deployments)
            .add_service(auth)
            .add_service(notifications)
            .add_service(reviews)
            .add_service(chat)
            .add_service(orders)
            .add_service(admin)
            .serve_with_incoming_shutdown(accepted(listener), stop_node);
        let result = with_grace(server, &shutdown, config.shutdown_grace).await;
        tracker.close();
        tracker.wait().await;
        background.cancel();
        result
    }
}

/// How often readiness asks the broker whether it takes publishes (a Redis broker pings).
const BROKER_READINESS_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

/// Readiness follows the database and the broker: NOT_SERVING (overall and for
/// `herald.v1.Rooms`) while either is unreachable (Redis down, paused or its pub/sub
/// connection lost), SERVING again as soon as both answer.
async fn report_readiness(
    mut ready: tokio::sync::watch::Receiver<bool>,
    broker: Arc<dyn Broker>,
    reporter: tonic_health::server::HealthReporter,
    shutdown: CancellationToken,
) {
    use tonic::server::NamedService;
    use tonic_health::ServingStatus;
    let mut ticker = tokio::time::interval(BROKER_READINESS_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = None;
    loop {
        let database = *ready.borrow_and_update();
        let status = if database && broker.is_ready().await {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        if last != Some(status) {
            if last.is_some() {
                tracing::info!(?status, database, "readiness changed");
            }
            reporter.set_service_status("", status).await;
            reporter
                .set_service_status(<RoomsServer<RoomsService> as NamedService>::NAME, status)
                .await;
            last = Some(status);
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = ready.changed() => if changed.is_err() { return },
            _ = ticker.tick() => {}
        }
    }
}

/// The listener's connections with `TCP_NODELAY` set. The builder's own `tcp_nodelay` applies
/// only to a socket it binds itself, and without it Nagle's algorithm holds each small HTTP/2
/// frame of a long stream until the peer's delayed ACK (40 ms on Linux): a replay of a
/// thousand pages would take a minute instead of a second.
fn accepted(listener: TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true))
}

async fn with_grace(
    server: impl Future<Output = Result<(), tonic::transport::Error>>,
    shutdown: &CancellationToken,
    grace: std::time::Duration,
) -> Result<(), ServeError> {
    tokio::pin!(server);
    tokio::select! {
        result = &mut server => return Ok(result?),
        _ = shutdown.cancelled() => {}
    }
    match tokio::time::timeout(grace, &mut server).await {
        Ok(result) => Ok(result?),
        Err(_) => {
            tracing::warn!(
                ?grace,
                "shutdown grace expired; closing the remaining connections"
            );
            Ok(())
        }
    }
}

/// Builds and serves in one call: what `herald serve` and the tests use.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    Backend::build(config)
        .await?
        .serve(listener, shutdown)
        .await
}
