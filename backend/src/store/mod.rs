//! Durable state: the database (sea-orm on SQLite or PostgreSQL), the history of record of
//! durable topics, and the transactional outbox that turns committed writes into delivered
//! events.
//!
//! A domain service changes rows and appends events **in one transaction**; the events are
//! rows of the `outbox` table, so they commit or roll back together with the change, and the
//! same transaction gives each event its topic's next offset (gapless in commit order, fixed
//! forever). After the commit the [relay](relay) hands them to the
//! [`Broker`](crate::broker::Broker) with those offsets and marks them published; a relay
//! that dies in between hands them over again and the broker ignores offsets it has.
//! The rows stay as the topics' history ([`EventLog`](crate::history::EventLog)) until
//! retention purges them.
//!
//! ```no_run
//! # use herald_backend::{store::{Store, StoreError}, topic::Topic};
//! # use sea_orm::ConnectionTrait;
//! # async fn approve(store: &Store) -> Result<(), StoreError> {
//! let reviewers = Topic::parse("role:admin").expect("a valid topic");
//! let mut tx = store.begin().await?;
//! // Any sea-orm write on `tx.conn()` is part of the transaction.
//! tx.conn()
//!     .execute_unprepared("UPDATE server_meta SET value = 'approved' WHERE key = 'signup:7'")
//!     .await?;
//! tx.emit(&reviewers, "signup.approved", serde_json::json!({ "signup": 7 }))?;
//! tx.commit().await?; // the change and the event are durable; the relay is woken
//! # Ok(())
//! # }
//! ```
//!
//! Reads that return rows *and* the position of the topics they reflect use one snapshot, so a
//! client subscribing with `since = position` sees each later change exactly once (see
//! [`ReadSnapshot`] for an example):
//!
//! ```no_run
//! # use herald_backend::{store::{Store, StoreError}, topic::Topic};
//! # async fn get(store: &Store, order: &Topic) -> Result<(), StoreError> {
//! let snapshot = store.snapshot().await?;
//! // … sea-orm reads on snapshot.conn() …
//! let position = snapshot.position(order).await?; // same snapshot as the rows
//! snapshot.end().await?;
//! # let _ = position;
//! # Ok(())
//! # }
//! ```
//!
//! Rules for callers:
//! - Emit only to durable topics (`topics.durable`); emitting to a memory topic is refused.
//! - Emit whenever it is convenient: events are buffered and written at commit (or at
//!   [`DomainTx::flush`]). From then until the commit the transaction holds each of its
//!   topics' `outbox_topic` row lock, which is what makes a topic's order its commit order.
//! - Dropping a [`DomainTx`] without committing rolls it back: nothing is published.
//! - Errors that mean "the database is unreachable or busy" are
//!   [`StoreError::Unavailable`]; they become gRPC UNAVAILABLE with a retry hint.

pub mod entity;
mod group;
mod log;
pub mod relay;
mod retention;
mod snapshot;
mod write;

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use herald_migrations::{DURABLE_EPOCH_KEY, Migrator, MigratorTrait};
use herald_proto::{v1::StreamPosition, wkt::Struct};
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DatabaseTransaction, DbBackend,
    DbErr, RuntimeErr, SqliteTransactionMode, Statement, TransactionOptions, TransactionTrait,
};
use serde::Deserialize;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};

use crate::{
    broker::Published,
    event::{EventType, IdempotencyKey},
    lanes::Lanes,
    topic::Topic,
};

#[cfg(feature = "test-util")]
pub use relay::RelayFaults;
pub use snapshot::ReadSnapshot;

/// Settings of the database pool, the write path and the relay (`[database]` in the file).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// The most pooled connections (PostgreSQL; SQLite uses at most 4: one writer at a time).
    pub max_connections: u32,
    /// Connections kept open while idle.
    pub min_connections: u32,
    /// How long one attempt waits for a connection before it counts as a failure.
    #[serde(with = "herald_proto::support::duration")]
    pub acquire_timeout: Duration,
    /// How long a write keeps retrying transient failures (with backoff) before it answers
    /// UNAVAILABLE.
    #[serde(with = "herald_proto::support::duration")]
    pub write_retry_budget: Duration,
    /// How often readiness pings the database.
    #[serde(with = "herald_proto::support::duration")]
    pub health_interval: Duration,
    /// The most outbox rows the relay publishes per round trip.
    pub relay_batch: u64,
    /// The slow safety sweep of the relay (it is otherwise woken by commits and NOTIFY).
    #[serde(with = "herald_proto::support::duration")]
    pub relay_sweep: Duration,
    /// The most durable publishes (`Rooms/Publish` on durable topics) committed together in
    /// one transaction: publishes queued while a commit runs share the next one.
    pub publish_batch_max: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            max_connections: 16,
            min_connections: 1,
            acquire_timeout: Duration::from_secs(2),
            write_retry_budget: Duration::from_secs(3),
            health_interval: Duration::from_secs(1),
            relay_batch: 512,
            relay_sweep: Duration::from_secs(5),
            publish_batch_max: 512,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database is unreachable, restarting or too busy; retrying later can succeed.
    #[error("the database is unavailable: {0}")]
    Unavailable(#[source] DbErr),
    #[error("database error: {0}")]
    Database(#[source] DbErr),
    /// The caller passed something that can never be stored.
    #[error("{0}")]
    Invalid(String),
}

impl From<DbErr> for StoreError {
    fn from(error: DbErr) -> StoreError {
        if is_transient(&error) {
            StoreError::Unavailable(error)
        } else {
            StoreError::Database(error)
        }
    }
}

/// Whether a database error is about reachability or contention rather than the statement.
fn is_transient(error: &DbErr) -> bool {
    let runtime = match error {
        DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => return true,
        DbErr::Exec(runtime) | DbErr::Query(runtime) => runtime,
        _ => return false,
    };
    let RuntimeErr::SqlxError(sqlx) = runtime else {
        return false;
    };
    use sea_orm::sqlx::Error as E;
    match sqlx.as_ref() {
        E::Io(_) | E::Tls(_) | E::PoolTimedOut | E::PoolClosed | E::WorkerCrashed => true,
        E::Protocol(_) => true,
        E::Database(db) => {
            let code = db.code().unwrap_or_default();
            // PostgreSQL: connection exceptions (08), serialization failure and deadlock (40),
            // too many connections (53300), shutting down / starting up (57P01–57P03).
            // SQLite: SQLITE_BUSY (5) and SQLITE_LOCKED (6) with their extended codes.
            code.starts_with("08")
                || code.starts_with("40")
                || code == "53300"
                || code.starts_with("57P0")
                || matches!(code.parse::<i32>().map(|c| c & 0xff), Ok(5 | 6))
        }
        _ => false,
    }
}

/// The id of an outbox row.
pub type OutboxId = i64;

/// Rows per multi-row statement of a commit, so a transaction may emit any number of events
/// and stay under SQLite's 32,766 and PostgreSQL's 65,535 bound parameters.
const ROWS_PER_STATEMENT: usize = 1000;

/// The database handle shared by domain services, the relay and readiness.
#[derive(Debug, Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    db: DatabaseConnection,
    config: StoreConfig,
    relay_wake: Notify,
    health_nudge: Notify,
    ready: watch::Sender<bool>,
    /// The epoch every durable topic of this database is created with.
    epoch: String,
    lanes: Arc<Lanes>,
    /// SQLite has one writer at a time: writers queue here, in order, instead of in SQLite's
    /// busy handler, whose sleeps would add milliseconds of latency.
    writer: Option<Arc<Semaphore>>,
    /// Durable publishes waiting for their group commit ([`group`]).
    publishes: mpsc::Sender<group::Request>,
    /// Group commits of durable publishes so far.
    publish_batches: AtomicU64,
    /// Relay passes that published rows, and the rows (for `/metrics`).
    relay_batches: AtomicU64,
    relayed_events: AtomicU64,
}

/// What the outbox relay has done so far.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RelayStats {
    pub batches: u64,
    pub events: u64,
}

impl Store {
    /// Connects and applies every pending migration. SQLite runs in WAL mode with a busy
    /// timeout, so readers never block the writer and writers queue instead of failing.
    /// `lanes` says which topics are durable: only those take events.
    pub async fn open(
        url: &str,
        config: StoreConfig,
        lanes: Arc<Lanes>,
    ) -> Result<Store, StoreError> {
        let db = connect(url, &config).await?;
        Migrator::up(&db, None).await?;
        let epoch = durable_epoch(&db).await?;
        let writer =
            (db.get_database_backend() == DbBackend::Sqlite).then(|| Arc::new(Semaphore::new(1)));
        let (publishes, queue) = mpsc::channel(group::QUEUE);
        let batch_max = config.publish_batch_max;
        let inner = Arc::new(Inner {
            writer,
            db,
            config,
            relay_wake: Notify::new(),
            health_nudge: Notify::new(),
            ready: watch::Sender::new(true),
            epoch,
            lanes,
            publishes,
            publish_batches: AtomicU64::new(0),
            relay_batches: AtomicU64::new(0),
            relayed_events: AtomicU64::new(0),
        });
        tokio::spawn(group::run(Arc::downgrade(&inner), queue, batch_max));
        Ok(Store { inner })
    }

    /// What the relay has published so far.
    pub fn relay_stats(&self) -> RelayStats {
        use std::sync::atomic::Ordering::Relaxed;
        RelayStats {
            batches: self.inner.relay_batches.load(Relaxed),
            events: self.inner.relayed_events.load(Relaxed),
        }
    }

    pub(crate) fn count_relayed(&self, events: usize) {
        use std::sync::atomic::Ordering::Relaxed;
        self.inner.relay_batches.fetch_add(1, Relaxed);
        self.inner.relayed_events.fetch_add(events as u64, Relaxed);
    }

    /// How many outbox rows wait for the relay, and when the oldest was committed (the
    /// relay's queue is small unless the relay is behind).
    pub async fn outbox_backlog(&self) -> Result<(u64, Option<SystemTime>), StoreError> {
        let backend = self.backend();
        let row = self
            .db()
            .query_one_raw(Statement::from_string(
                backend,
                "SELECT COUNT(*) AS pending, MIN(o.created_at_ms) AS oldest \
                 FROM outbox_pending p JOIN outbox o ON o.id = p.id",
            ))
            .await?;
        let (count, oldest): (i64, Option<i64>) = match row {
            Some(row) => (row.try_get("", "pending")?, row.try_get("", "oldest")?),
            None => (0, None),
        };
        let oldest = oldest
            .and_then(|ms| u64::try_from(ms).ok())
            .map(|ms| UNIX_EPOCH + Duration::from_millis(ms));
        Ok((u64::try_from(count).unwrap_or_default(), oldest))
    }

    /// The epoch of this database's durable topics.
    pub fn epoch(&self) -> &str {
        &self.inner.epoch
    }

    pub fn lanes(&self) -> &Arc<Lanes> {
        &self.inner.lanes
    }

    /// The sea-orm connection, for reads outside a transaction.
    pub fn db(&self) -> &DatabaseConnection {
        &self.inner.db
    }

    pub fn config(&self) -> &StoreConfig {
        &self.inner.config
    }

    pub fn backend(&self) -> DbBackend {
        self.inner.db.get_database_backend()
    }

    /// Begins a transaction for a domain write; its events are published as `herald`.
    ///
    /// Transient failures (no connection, busy database) are retried with exponential
    /// backoff for `write_retry_budget`, then answered with [`StoreError::Unavailable`].
    pub async fn begin(&self) -> Result<DomainTx, StoreError> {
        self.begin_as("herald").await
    }

    /// Like [`Store::begin`], with the events' `publisher` set to `publisher`.
    pub async fn begin_as(&self, publisher: &str) -> Result<DomainTx, StoreError> {
        let options = TransactionOptions {
            // One writer at a time: taking the write lock at BEGIN means a transaction that
            // reads first never fails to upgrade (SQLITE_BUSY without waiting).
            sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
            ..TransactionOptions::default()
        };
        let started = tokio::time::Instant::now();
        let writer = self.write_turn().await?;
        let mut pause = Duration::from_millis(20);
        loop {
            match self.inner.db.begin_with_options(options).await {
                Ok(tx) => {
                    return Ok(DomainTx {
                        store: self.clone(),
                        _writer: writer,
                        tx: Some(tx),
                        publisher: publisher.to_owned(),
                        buffered: Vec::new(),
                        written: Vec::new(),
                        events: Vec::new(),
                    });
                }
                Err(error) => {
                    let error = StoreError::from(error);
                    let retry = matches!(error, StoreError::Unavailable(_))
                        && started.elapsed() + pause < self.inner.config.write_retry_budget;
                    if !retry {
                        self.report(&error);
                        return Err(error);
                    }
                    tracing::debug!(%error, ?pause, "retrying a transaction begin");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(500));
                }
            }
        }
    }

    /// Waits for the writer's turn (SQLite only; `None` elsewhere). Hold it while writing.
    pub(crate) async fn write_turn(&self) -> Result<Option<OwnedSemaphorePermit>, StoreError> {
        let Some(writer) = &self.inner.writer else {
            return Ok(None);
        };
        let turn = tokio::time::timeout(
            self.inner.config.write_retry_budget,
            writer.clone().acquire_owned(),
        )
        .await;
        match turn {
            Ok(Ok(permit)) => Ok(Some(permit)),
            // The semaphore is never closed; a timeout means the database is too busy.
            _ => Err(StoreError::Unavailable(DbErr::ConnectionAcquire(
                sea_orm::error::ConnAcquireErr::Timeout,
            ))),
        }
    }

    /// Whether the database answered its last readiness ping.
    pub fn ready(&self) -> watch::Receiver<bool> {
        self.inner.ready.subscribe()
    }

    /// Wakes the relay: it publishes what is pending now rather than at its next sweep.
    pub fn wake_relay(&self) {
        self.inner.relay_wake.notify_one();
    }

    /// Pings the database every `health_interval` (and at once after a failed write) and
    /// publishes the result through [`Store::ready`] until `shutdown`.
    pub async fn run_health(self, shutdown: tokio_util::sync::CancellationToken) {
        let every = self.inner.config.health_interval;
        loop {
            let ping = tokio::time::timeout(
                self.inner.config.acquire_timeout + every,
                self.inner.db.ping(),
            )
            .await;
            let up = matches!(ping, Ok(Ok(())));
            let changed = self.inner.ready.send_if_modified(|ready| {
                let changed = *ready != up;
                *ready = up;
                changed
            });
            if changed {
                if up {
                    tracing::info!("database reachable again: ready");
                } else {
                    tracing::warn!(error = ?ping.ok().and_then(Result::err), "database unreachable: not ready");
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
                _ = self.inner.health_nudge.notified() => {}
            }
        }
    }

    /// Records a failure seen by a caller: an unavailable database is re-checked at once.
    fn report(&self, error: &StoreError) {
        if matches!(error, StoreError::Unavailable(_)) {
            self.inner.health_nudge.notify_one();
        }
    }

    /// How many transactions have committed durable publishes ([`Store::publish`]) so far;
    /// fewer than the publishes when concurrent ones shared a group commit.
    pub fn publish_batches(&self) -> u64 {
        self.inner.publish_batches.load(Ordering::Relaxed)
    }

    /// Publishes one event (what `Rooms/Publish` does on a durable topic). Concurrent
    /// publishes are committed together ([`group`]); each answers with its own position once
    /// its batch is durable. With a key, a retry by the same `publisher` on the same topic
    /// within `topics.idempotency_window` returns the first position and writes nothing.
    pub async fn publish(
        &self,
        publisher: &str,
        topic: &Topic,
        event_type: &EventType,
        data: Option<Struct>,
        key: Option<&IdempotencyKey>,
    ) -> Result<Published, StoreError> {
        let busy = || {
            StoreError::Unavailable(DbErr::Custom(
                "too many durable publishes are waiting for the database".into(),
            ))
        };
        let slot = tokio::time::timeout(
            self.inner.config.write_retry_budget,
            self.inner.publishes.reserve(),
        )
        .await
        .map_err(|_| busy())?
        .map_err(|_| busy())?;
        let (reply, answer) = oneshot::channel();
        slot.send(group::Request {
            publisher: publisher.to_owned(),
            topic: topic.clone(),
            event_type: event_type.clone(),
            data,
            key: key.cloned(),
            reply,
        });
        let result = answer.await.map_err(|_| busy())?;
        if let Err(error) = &result {
            self.report(error);
        }
        result
    }
}

/// Opens the pool without migrating (what `herald migrate` uses).
pub async fn connect(url: &str, config: &StoreConfig) -> Result<DatabaseConnection, DbErr> {
    let sqlite = url.starts_with("sqlite:");
    let mut options = ConnectOptions::new(url.to_owned());
    options
        .max_connections(if sqlite {
            config.max_connections.clamp(1, 4)
        } else {
            std::cmp::max(config.max_connections, 2)
        })
        .min_connections(config.min_connections)
        .connect_timeout(config.acquire_timeout)
        .acquire_timeout(config.acquire_timeout)
        .idle_timeout(Duration::from_secs(300))
        .sqlx_logging(false)
        .map_sqlx_sqlite_opts(|options| {
            options
                .journal_mode(sea_orm::sqlx::sqlite::SqliteJournalMode::Wal)
                .synchronous(sea_orm::sqlx::sqlite::SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(5))
        });
    Database::connect(options).await
}

/// One domain transaction: sea-orm writes through [`DomainTx::conn`], events through
/// [`DomainTx::emit`], both made durable by [`DomainTx::commit`].
#[derive(Debug)]
pub struct DomainTx {
    store: Store,
    /// Held until the transaction ends (SQLite's single writer).
    _writer: Option<OwnedSemaphorePermit>,
    tx: Option<DatabaseTransaction>,
    publisher: String,
    buffered: Vec<PendingEvent>,
    written: Vec<OutboxId>,
    /// Where each written event landed, in emit order.
    events: Vec<Published>,
}

#[derive(Debug)]
struct PendingEvent {
    /// Who published it, when not the transaction's publisher.
    publisher: Option<String>,
    topic: Topic,
    event_type: String,
    data: String,
    body: Option<Vec<u8>>,
}

/// What a commit made durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// The outbox ids of the transaction's events, in emit order.
    pub ids: Vec<OutboxId>,
    /// Each event's position (offset and epoch, fixed by the commit) and id, in emit order.
    pub events: Vec<Published>,
}

impl DomainTx {
    /// The transaction, for sea-orm reads and writes.
    pub fn conn(&self) -> &DatabaseTransaction {
        // Only `commit`, `rollback` and `Drop` take the transaction, and they consume self.
        self.tx
            .as_ref()
            .expect("the transaction is present until commit or rollback")
    }

    /// Appends an event for `topic` (a JSON object, or null for no data). It becomes visible
    /// to subscribers after the commit, in commit order with the topic's other events. The
    /// topic must be of a durable kind (`topics.durable`).
    pub fn emit(
        &mut self,
        topic: &Topic,
        event_type: &str,
        data: serde_json::Value,
    ) -> Result<(), StoreError> {
        let data = match data {
            serde_json::Value::Null => None,
            serde_json::Value::Object(map) => Some(map),
            other => {
                return Err(StoreError::Invalid(format!(
                    "event data must be a JSON object, not {other}"
                )));
            }
        };
        self.push(topic, event_type, data.map(serde_json::Value::Object))
    }

    /// [`DomainTx::emit`] for data already in protobuf form.
    pub fn emit_struct(
        &mut self,
        topic: &Topic,
        event_type: &str,
        data: Option<Struct>,
    ) -> Result<(), StoreError> {
        let data = data
            .map(serde_json::to_value)
            .transpose()
            .map_err(|e| StoreError::Invalid(format!("event data: {e}")))?;
        self.push(topic, event_type, data)
    }

    /// [`DomainTx::emit_struct`] for an event published by `publisher` rather than the
    /// transaction's publisher (a group commit carries many publishers' events).
    fn emit_struct_as(
        &mut self,
        publisher: &str,
        topic: &Topic,
        event_type: &str,
        data: Option<Struct>,
    ) -> Result<(), StoreError> {
        self.emit_struct(topic, event_type, data)?;
        if let Some(event) = self.buffered.last_mut() {
            event.publisher = Some(publisher.to_owned());
        }
        Ok(())
    }

    /// Appends an event with a typed body: `typed` is an `Event` whose only set fields are its
    /// typed `body` (a domain's protobuf message); every other field is filled in here and at
    /// commit. Subscribers on every transport receive the body as part of the event.
    pub fn emit_typed(
        &mut self,
        topic: &Topic,
        event_type: &str,
        typed: &herald_proto::v1::Event,
    ) -> Result<(), StoreError> {
        use prost::Message;
        self.push(topic, event_type, None)?;
        if let Some(event) = self.buffered.last_mut() {
            event.body = Some(typed.encode_to_vec());
        }
        Ok(())
    }

    fn push(
        &mut self,
        topic: &Topic,
        event_type: &str,
        data: Option<serde_json::Value>,
    ) -> Result<(), StoreError> {
        EventType::parse(event_type).map_err(StoreError::Invalid)?;
        if !self.store.lanes().is_durable(topic) {
            return Err(StoreError::Invalid(format!(
                "`{topic}` is a memory topic: events committed with a transaction go to durable kinds; \
                 add `{}` to topics.durable or publish it without a transaction",
                topic.kind()
            )));
        }
        self.buffered.push(PendingEvent {
            publisher: None,
            topic: topic.clone(),
            event_type: event_type.to_owned(),
            data: data.map_or_else(|| "{}".to_owned(), |data| data.to_string()),
            body: None,
        });
        Ok(())
    }

    /// Writes the buffered events now (commit does this by itself) and returns their ids.
    /// From here to the commit, the transaction holds its topics' order locks.
    pub async fn flush(&mut self) -> Result<Vec<OutboxId>, StoreError> {
        let result = self.write_buffered().await;
        if let Err(error) = &result {
            self.store.report(error);
        }
        result
    }

    async fn write_buffered(&mut self) -> Result<Vec<OutboxId>, StoreError> {
        if self.buffered.is_empty() {
            return Ok(Vec::new());
        }
        let events = std::mem::take(&mut self.buffered);
        let tx = self.conn();

        // Next sequence numbers: one upsert for all topics, rows in topic order, so
        // transactions that emit to several topics lock them in the same order and cannot
        // deadlock each other.
        let mut counts: BTreeMap<&str, i64> = BTreeMap::new();
        for event in &events {
            *counts.entry(event.topic.as_str()).or_default() += 1;
        }
        let epoch = self.store.epoch().to_owned();
        let bumped = write::bump_topics(tx, &counts, &epoch).await?;
        let mut next_seq: HashMap<&str, (i64, &str)> = HashMap::new();
        for row in &bumped {
            if let Some((topic, count)) = counts.get_key_value(row.topic.as_str()) {
                next_seq.insert(topic, (row.last_seq - count + 1, row.epoch.as_str()));
            }
        }

        let now = unix_ms(SystemTime::now());
        let mut landed = Vec::with_capacity(events.len());
        let rows: Vec<_> = events
            .iter()
            .map(|event| {
                let (seq, epoch) = next_seq
                    .entry(event.topic.as_str())
                    .or_insert((1, self.store.epoch()));
                let offset = *seq;
                *seq += 1;
                let id = uuid::Uuid::now_v7().to_string();
                landed.push(Published {
                    position: StreamPosition {
                        offset: u64::try_from(offset).unwrap_or_default(),
                        epoch: (*epoch).to_owned(),
                    },
                    id: id.clone(),
                    duplicate: false,
                });
                write::NewRow {
                    topic: event.topic.as_str(),
                    topic_seq: offset,
                    event_type: &event.event_type,
                    data: &event.data,
                    publisher: event.publisher.as_deref().unwrap_or(&self.publisher),
                    created_at_ms: now,
                    event_id: id,
                    body: event.body.as_deref(),
                }
            })
            .collect();
        let mut ids = write::insert_rows(tx, &rows).await?;
        // Each INSERT assigns ids in row order, and later statements higher ones.
        ids.sort_unstable();
        self.written.extend_from_slice(&ids);
        self.events.extend(landed);
        Ok(ids)
    }

    /// Commits the writes and events, then wakes the relay (and, on PostgreSQL, the relays
    /// of other nodes through NOTIFY). Once this returns, the events are delivered even if
    /// the process dies at once; [`Committed::events`] says where each landed.
    pub async fn commit(mut self) -> Result<Committed, StoreError> {
        let store = self.store.clone();
        let result = async {
            self.write_buffered().await?;
            let tx = self
                .tx
                .take()
                .expect("the transaction is present until commit or rollback");
            if !self.written.is_empty() && tx.get_database_backend() == DbBackend::Postgres {
                // Delivered to listeners when (and only if) the transaction commits.
                tx.execute_unprepared(&format!("NOTIFY {}", relay::NOTIFY_CHANNEL))
                    .await?;
            }
            tx.commit().await?;
            Ok(Committed {
                ids: std::mem::take(&mut self.written),
                events: std::mem::take(&mut self.events),
            })
        }
        .await;
        match result {
            Ok(committed) => {
                if !committed.ids.is_empty() {
                    store.wake_relay();
                }
                Ok(committed)
            }
            Err(error) => {
                store.report(&error);
                Err(error)
            }
        }
    }

    /// Rolls back: nothing written in the transaction is kept, no event is published.
    pub async fn rollback(mut self) -> Result<(), StoreError> {
        match self.tx.take() {
            Some(tx) => Ok(tx.rollback().await?),
            None => Ok(()),
        }
    }
}

pub(crate) fn unix_ms(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Reads the epoch the migrations gave this database's durable topics.
async fn durable_epoch(db: &DatabaseConnection) -> Result<String, StoreError> {
    let row = db
        .query_one_raw(sea_orm::Statement::from_sql_and_values(
            db.get_database_backend(),
            sql(
                db.get_database_backend(),
                "SELECT value FROM server_meta WHERE key = $1",
            ),
            [DURABLE_EPOCH_KEY.into()],
        ))
        .await?
        .ok_or_else(|| {
            StoreError::Invalid(format!(
                "server_meta has no `{DURABLE_EPOCH_KEY}`; run `herald migrate up`"
            ))
        })?;
    Ok(row.try_get_by_index::<String>(0)?)
}

/// SQL written with PostgreSQL's `$n` placeholders, in the dialect of `backend`.
pub(crate) fn sql(backend: DbBackend, text: &str) -> String {
    if backend != DbBackend::Sqlite {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '$' && chars.peek().is_some_and(char::is_ascii_digit) {
            while chars.peek().is_some_and(char::is_ascii_digit) {
                chars.next();
            }
            out.push('?');
        } else {
            out.push(c);
        }
    }
    out
}
