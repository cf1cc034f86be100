//! The outbox relay: publishes committed outbox rows to the broker and marks them published.
//!
//! **Order.** A topic's outbox rows get their `topic_seq` under the topic's `outbox_topic`
//! row lock, held until commit, so a topic's rows become visible in sequence order and a
//! later row's id is allocated after the earlier row committed. The relay reads rows by
//! *status* (`pending`), never by "id above the last one seen": PostgreSQL sequence values
//! commit out of order across topics, and a cursor would skip a row whose transaction was
//! still open. It publishes in id order, which within a topic is commit order.
//!
//! **One relay at a time.** On PostgreSQL the relay of each node contends for a session
//! advisory lock on a dedicated connection; the holder relays for the whole cluster, the
//! others stand by and retry every few seconds. If the holder dies, its connection closes,
//! the lock is released and a standby takes over. A brief overlap (a holder that lost its
//! connection but is mid-batch) publishes rows twice at worst, and both relays publish in the
//! same order, so the idempotency key makes the second copy a no-op.
//!
//! **Crash windows.** Died after the commit and before publishing: the rows are pending and
//! the next relay publishes them. Died after publishing and before marking: the next relay
//! publishes them again with the same idempotency keys (`outbox:{id}`) and the broker returns
//! the first positions without delivering anything. `RelayFaults` kills a relay at either
//! point on purpose, for tests (compiled only with the `test-util` feature).
//!
//! **Wake-ups.** A local commit wakes the relay at once; on PostgreSQL, commits on other
//! nodes wake it through `NOTIFY herald_outbox`. A slow sweep (`relay_sweep`) is the safety
//! net, and also checks the leadership connection and purges old published rows.

#[cfg(feature = "test-util")]
use std::sync::atomic::{AtomicU64, Ordering};
use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, SystemTime},
};

use herald_proto::{v1::StreamPosition, wkt::Struct};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    TransactionTrait,
    sea_query::{CaseStatement, Expr, ExprTrait},
    sqlx::{self, PgConnection, PgPool, postgres::PgListener},
};
#[cfg(feature = "test-util")]
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{Store, StoreError, entity::outbox, idempotency_key, unix_ms};
use crate::{
    broker::{Broker, BrokerError, EventDraft, Published},
    topic::Topic,
};

/// Commits with outbox rows notify this channel (PostgreSQL).
pub const NOTIFY_CHANNEL: &str = "herald_outbox";
/// The relay notifies this channel after marking rows published, so nodes waiting for a
/// durable publish they did not relay themselves learn its position.
pub const DONE_CHANNEL: &str = "herald_outbox_done";
/// The advisory lock key of the cluster-wide relay (`'herald'` in ASCII).
const LEADER_LOCK_KEY: i64 = 0x6865_7261_6c64;

/// Fault injection for tests: makes the relay die at a chosen point of its next batch, as a
/// killed process would (its leadership, if any, is released and a fresh relay starts from
/// what the database says).
#[cfg(feature = "test-util")]
#[derive(Debug)]
pub struct RelayFaults {
    kill_before_publish: AtomicU64,
    kill_before_mark: AtomicU64,
    kills: watch::Sender<u64>,
}

#[cfg(feature = "test-util")]
impl Default for RelayFaults {
    fn default() -> Self {
        RelayFaults {
            kill_before_publish: AtomicU64::new(0),
            kill_before_mark: AtomicU64::new(0),
            kills: watch::Sender::new(0),
        }
    }
}

#[cfg(feature = "test-util")]
impl RelayFaults {
    /// The next `times` batches die after reading committed rows and before publishing any
    /// (`u64::MAX`: every batch, a relay that never gets further).
    pub fn kill_before_publish(&self, times: u64) {
        self.kill_before_publish.store(times, Ordering::SeqCst);
    }

    /// The next `times` batches die after publishing and before marking the rows published.
    pub fn kill_before_mark(&self, times: u64) {
        self.kill_before_mark.store(times, Ordering::SeqCst);
    }

    /// How many times a fault killed the relay.
    pub fn kills(&self) -> u64 {
        *self.kills.borrow()
    }

    /// Waits until faults killed the relay at least `count` times.
    pub async fn killed(&self, count: u64) {
        let mut kills = self.kills.subscribe();
        // The sender lives in `self`, so the channel cannot close while we wait.
        let _ = kills.wait_for(|kills| *kills >= count).await;
    }

    fn check(&self, armed: &AtomicU64, point: &'static str) -> Result<(), RelayError> {
        let fire = armed
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                left.checked_sub(1)
            })
            .is_ok();
        if fire {
            self.kills.send_modify(|kills| *kills += 1);
            return Err(RelayError::Killed(point));
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
enum RelayError {
    #[cfg(feature = "test-util")]
    #[error("killed by fault injection {0}")]
    Killed(&'static str),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error("lost the relay leadership connection: {0}")]
    Leadership(sqlx::Error),
}

impl From<sea_orm::DbErr> for RelayError {
    fn from(error: sea_orm::DbErr) -> RelayError {
        RelayError::Store(error.into())
    }
}

/// Runs the relay (and on PostgreSQL the NOTIFY listener) until `shutdown`. A relay that
/// fails starts over after a backoff; one killed by a fault starts over at once.
pub async fn run(
    store: Store,
    broker: Arc<dyn Broker>,
    #[cfg(feature = "test-util")] faults: Arc<RelayFaults>,
    shutdown: CancellationToken,
) {
    let listener = (store.backend() == DbBackend::Postgres)
        .then(|| tokio::spawn(listen(store.clone(), shutdown.clone())));
    let mut pause = Duration::from_millis(100);
    loop {
        let relay = Relay {
            store: store.clone(),
            broker: broker.clone(),
            #[cfg(feature = "test-util")]
            faults: faults.clone(),
        };
        let began = tokio::time::Instant::now();
        let result = relay.run(&shutdown).await;
        if began.elapsed() > Duration::from_secs(30) {
            pause = Duration::from_millis(100); // it had been healthy: a fresh failure
        }
        match result {
            Ok(()) => break,
            #[cfg(feature = "test-util")]
            Err(RelayError::Killed(point)) => {
                tracing::warn!(point, "relay killed by fault injection; starting over");
                // Like a restarted process: a fresh relay, at once but not in a hot loop.
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(10)) => {}
                }
                continue;
            }
            Err(error) => {
                tracing::warn!(%error, ?pause, "relay failed; starting over after a pause");
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(pause) => {}
            // A commit means the database is back: no need to wait out the backoff.
            _ = store.inner.relay_wake.notified() => store.wake_relay(),
        }
        pause = (pause * 2).min(Duration::from_secs(5));
    }
    if let Some(listener) = listener {
        listener.abort();
    }
}

struct Relay {
    store: Store,
    broker: Arc<dyn Broker>,
    #[cfg(feature = "test-util")]
    faults: Arc<RelayFaults>,
}

impl Relay {
    async fn run(&self, shutdown: &CancellationToken) -> Result<(), RelayError> {
        let config = self.store.config().clone();
        let mut leader = match self.store.backend() {
            DbBackend::Postgres => match self.lead(shutdown).await? {
                Some(connection) => Some(connection),
                None => return Ok(()), // shut down while standing by
            },
            _ => None,
        };
        let mut sweep = tokio::time::interval(config.relay_sweep);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let relayed = self.pass().await?;
            if relayed as u64 >= config.relay_batch {
                continue; // more are waiting
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = self.store.inner.relay_wake.notified() => {}
                _ = sweep.tick() => {
                    if let Some(connection) = &mut leader {
                        sqlx::query("SELECT 1")
                            .execute(&mut *connection)
                            .await
                            .map_err(RelayError::Leadership)?;
                    }
                    self.purge().await?;
                }
            }
        }
    }

    /// Waits until this node holds the cluster-wide relay lock; `None` if shut down first.
    async fn lead(&self, shutdown: &CancellationToken) -> Result<Option<PgConnection>, RelayError> {
        let pool = self.store.db().get_postgres_connection_pool();
        let retry = self.store.config().relay_sweep.min(Duration::from_secs(2));
        let mut announced = false;
        loop {
            if let Some(connection) = try_lock(pool).await.map_err(RelayError::Leadership)? {
                tracing::info!("this node relays the outbox for the cluster");
                return Ok(Some(connection));
            }
            if !announced {
                tracing::info!("another node relays the outbox; standing by");
                announced = true;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(None),
                _ = tokio::time::sleep(retry) => {}
            }
        }
    }

    /// Publishes one batch of pending rows in id order and marks them. Returns how many.
    async fn pass(&self) -> Result<usize, RelayError> {
        let db = self.store.db();
        let rows = outbox::Entity::find()
            .filter(outbox::Column::Status.eq(outbox::Status::Pending))
            .order_by_asc(outbox::Column::Id)
            .limit(self.store.config().relay_batch)
            .all(db)
            .await?;
        if rows.is_empty() {
            return Ok(0);
        }
        #[cfg(feature = "test-util")]
        self.faults
            .check(&self.faults.kill_before_publish, "before publish")?;

        let mut published = Vec::with_capacity(rows.len());
        let mut dead = Vec::new();
        for row in &rows {
            let Some(draft) = draft(row) else {
                dead.push(row.id);
                continue;
            };
            published.push((row.id, self.broker.publish(draft).await?));
        }
        #[cfg(feature = "test-util")]
        self.faults
            .check(&self.faults.kill_before_mark, "before mark")?;

        let turn = self.store.write_turn().await?;
        mark(db, &published, &dead).await?;
        drop(turn);
        let duplicates = published.iter().filter(|(_, p)| p.duplicate).count();
        tracing::debug!(
            relayed = published.len(),
            duplicates,
            dead = dead.len(),
            "relayed outbox rows"
        );
        for (id, position) in published {
            self.store.resolve(id, position);
        }
        Ok(rows.len())
    }

    /// Deletes published rows older than `published_retention`.
    async fn purge(&self) -> Result<(), RelayError> {
        let retention = self.store.config().published_retention;
        let cutoff = unix_ms(SystemTime::now() - retention);
        let _turn = self.store.write_turn().await?;
        let purged = outbox::Entity::delete_many()
            .filter(outbox::Column::Status.eq(outbox::Status::Published))
            .filter(outbox::Column::PublishedAtMs.lt(cutoff))
            .exec(self.store.db())
            .await?;
        if purged.rows_affected > 0 {
            tracing::debug!(
                purged = purged.rows_affected,
                "purged old published outbox rows"
            );
        }
        Ok(())
    }
}

fn draft(row: &outbox::Model) -> Option<EventDraft> {
    let topic = match Topic::parse(&row.topic) {
        Ok(topic) => topic,
        Err(error) => {
            tracing::error!(id = row.id, %error, "outbox row has an invalid topic; marking it dead");
            return None;
        }
    };
    let data = match serde_json::from_str::<Struct>(&row.data) {
        Ok(data) => data,
        Err(error) => {
            tracing::error!(id = row.id, %error, "outbox row has unreadable data; marking it dead");
            return None;
        }
    };
    Some(EventDraft {
        topic,
        event_type: row.event_type.clone(),
        data: Some(data),
        publisher: row.publisher.clone(),
        idempotency_key: Some(idempotency_key(row.id)),
    })
}

/// Marks rows published (with where they landed) and dead ones dead, in one transaction;
/// on PostgreSQL it also notifies nodes waiting for durable publishes.
async fn mark(
    db: &sea_orm::DatabaseConnection,
    published: &[(i64, Published)],
    dead: &[i64],
) -> Result<(), StoreError> {
    let tx = db.begin().await?;
    if tx.get_database_backend() == DbBackend::Postgres {
        // A lost mark only means the rows are published again, and the idempotency key
        // drops the copies: the relay need not wait for a disk flush here.
        tx.execute_unprepared("SET LOCAL synchronous_commit = off")
            .await?;
    }
    if !published.is_empty() {
        let id = || Expr::col((outbox::Entity, outbox::Column::Id));
        let mut offset = CaseStatement::new();
        let mut epoch = CaseStatement::new();
        let mut event_id = CaseStatement::new();
        for (row, landed) in published {
            let position = i64::try_from(landed.position.offset).unwrap_or(i64::MAX);
            offset = offset.case(id().eq(*row), position);
            epoch = epoch.case(id().eq(*row), landed.position.epoch.clone());
            event_id = event_id.case(id().eq(*row), landed.id.clone());
        }
        outbox::Entity::update_many()
            .col_expr(
                outbox::Column::Status,
                Expr::value(outbox::Status::Published),
            )
            .col_expr(
                outbox::Column::PublishedAtMs,
                Expr::value(unix_ms(SystemTime::now())),
            )
            .col_expr(outbox::Column::PublishedOffset, offset.into())
            .col_expr(outbox::Column::PublishedEpoch, epoch.into())
            .col_expr(outbox::Column::PublishedEventId, event_id.into())
            .filter(outbox::Column::Id.is_in(published.iter().map(|(id, _)| *id)))
            .exec(&tx)
            .await?;
    }
    if !dead.is_empty() {
        outbox::Entity::update_many()
            .col_expr(outbox::Column::Status, Expr::value(outbox::Status::Dead))
            .filter(outbox::Column::Id.is_in(dead.iter().copied()))
            .exec(&tx)
            .await?;
    }
    if tx.get_database_backend() == DbBackend::Postgres {
        tx.execute_unprepared(&format!("NOTIFY {DONE_CHANNEL}"))
            .await?;
    }
    tx.commit().await?;
    Ok(())
}

async fn try_lock(pool: &PgPool) -> Result<Option<PgConnection>, sqlx::Error> {
    let mut connection = pool.acquire().await?.detach();
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(LEADER_LOCK_KEY)
        .fetch_one(&mut connection)
        .await?;
    Ok(locked.then_some(connection))
}

/// Wakes the local relay on every commit notified by any node, and resolves local waiters
/// for rows another node's relay published. Reconnects by itself.
async fn listen(store: Store, shutdown: CancellationToken) {
    let pool = store.db().get_postgres_connection_pool().clone();
    loop {
        let result = async {
            let mut listener = PgListener::connect_with(&pool).await?;
            listener.listen_all([NOTIFY_CHANNEL, DONE_CHANNEL]).await?;
            // Whatever was committed while we were not listening.
            store.wake_relay();
            loop {
                match listener.try_recv().await? {
                    Some(notification) if notification.channel() == DONE_CHANNEL => {
                        resolve_remote(&store).await;
                    }
                    Some(_) => store.wake_relay(),
                    // The connection was lost; the next try_recv reconnects. Catch up.
                    None => store.wake_relay(),
                }
            }
            #[allow(unreachable_code)]
            Ok::<(), sqlx::Error>(())
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            result = result => {
                if let Err(error) = result {
                    tracing::warn!(%error, "outbox listener failed; reconnecting");
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// Reads the positions of rows this node waits for that some relay has published.
async fn resolve_remote(store: &Store) {
    let waiting = store.waiting_ids();
    if waiting.is_empty() {
        return;
    }
    let rows = outbox::Entity::find()
        .filter(outbox::Column::Id.is_in(waiting))
        .filter(outbox::Column::Status.eq(outbox::Status::Published))
        .all(store.db())
        .await;
    let rows = match rows {
        Ok(rows) => rows,
        Err(error) => {
            tracing::debug!(%error, "could not read published outbox rows");
            return;
        }
    };
    let mut landed: HashMap<i64, Published> = HashMap::new();
    for row in rows {
        if let (Some(offset), Some(epoch), Some(id)) = (
            row.published_offset,
            row.published_epoch,
            row.published_event_id,
        ) {
            let position = StreamPosition {
                offset: u64::try_from(offset).unwrap_or_default(),
                epoch,
            };
            landed.insert(
                row.id,
                Published {
                    position,
                    id,
                    duplicate: false,
                },
            );
        }
    }
    for (id, published) in landed {
        store.resolve(id, published);
    }
}
