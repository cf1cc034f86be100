//! The outbox relay: hands committed outbox rows to the broker, with the offsets their
//! transactions gave them, and marks them published.
//!
//! **Order.** A topic's rows get their offsets (`topic_seq`) under the topic's `outbox_topic`
//! row lock, held until commit, so a topic's rows become visible in offset order and a later
//! row's id is allocated after the earlier row committed. The relay reads the rows queued in
//! `outbox_pending` (committed with them), never by "id above the last one seen": PostgreSQL
//! sequence values commit out of order across topics, and a cursor would skip a row whose
//! transaction was still open. It hands them over in id order, which within a topic is
//! offset order, then deletes their queue entries.
//!
//! **Exactly once, by offset.** The broker never renumbers a durable event and ignores an
//! offset it already has ([`Broker::append`]), so a relay that dies after handing rows over
//! and before marking them hands them over again harmlessly, however long the database was
//! away: no idempotency key, no window. Subscribers also skip offsets they already have, so
//! even a restarted broker cache that sees a row twice delivers nothing twice.
//!
//! **One relay at a time.** On PostgreSQL the relay of each node contends for a session
//! advisory lock on a dedicated connection; the holder relays for the whole cluster, the
//! others stand by and retry every few seconds. If the holder dies, its connection closes,
//! the lock is released and a standby takes over.
//!
//! **Crash windows.** Died after the commit and before handing over: the rows are pending and
//! the next relay hands them over. Died after handing over and before marking: see above.
//! `RelayFaults` kills a relay at either point on purpose, for tests (compiled only with the
//! `test-util` feature).
//!
//! **Wake-ups.** A local commit wakes the relay at once; on PostgreSQL, commits on other
//! nodes wake it through `NOTIFY herald_outbox`. A slow sweep (`relay_sweep`) is the safety
//! net, and also checks the leadership connection.

#[cfg(feature = "test-util")]
use std::sync::atomic::{AtomicU64, Ordering};
use std::{collections::HashMap, sync::Arc, time::Duration};

use sea_orm::{
    ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, FromQueryResult, QueryFilter, Statement,
    TransactionTrait,
    sqlx::{self, PgConnection, PgPool, postgres::PgListener},
};
#[cfg(feature = "test-util")]
use tokio::sync::watch;
use tokio_util::{sync::CancellationToken, task::AbortOnDropHandle};

use super::{
    Store, StoreError,
    entity::{outbox, outbox_pending, outbox_topic},
    log::event_of,
};
use crate::{
    broker::{Appended, Broker, BrokerError},
    event::SharedEvent,
};

/// Commits with outbox rows notify this channel (PostgreSQL).
pub const NOTIFY_CHANNEL: &str = "herald_outbox";
/// Queue entries deleted between two vacuums of the queue (PostgreSQL).
const VACUUM_EVERY: usize = 10_000;
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
        let mut since_vacuum = 0;
        // The queue's vacuum runs beside the relay, never in its way; one at a time.
        let mut vacuum: Option<AbortOnDropHandle<()>> = None;
        loop {
            let relayed = self.pass().await?;
            since_vacuum += relayed;
            let vacuuming = vacuum.as_ref().is_some_and(|task| !task.is_finished());
            if since_vacuum >= VACUUM_EVERY
                && !vacuuming
                && self.store.backend() == DbBackend::Postgres
            {
                let db = self.store.db().clone();
                vacuum = Some(AbortOnDropHandle::new(tokio::spawn(vacuum_queue(db))));
                since_vacuum = 0;
            }
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

    /// Hands one batch of queued rows to the broker in id order and takes them off the
    /// queue. Returns how many.
    async fn pass(&self) -> Result<usize, RelayError> {
        let db = self.store.db();
        let backend = db.get_database_backend();
        let limit = i64::try_from(self.store.config().relay_batch).unwrap_or(i64::MAX);
        let queued = match backend {
            DbBackend::Postgres => QUEUED_ROWS_POSTGRES,
            _ => QUEUED_ROWS_SQLITE,
        };
        let rows = outbox::Model::find_by_statement(Statement::from_sql_and_values(
            backend,
            queued,
            [limit.into()],
        ))
        .all(db)
        .await?;
        if rows.is_empty() {
            return Ok(0);
        }
        #[cfg(feature = "test-util")]
        self.faults
            .check(&self.faults.kill_before_publish, "before publish")?;

        let epochs = self.epochs(&rows).await?;
        let ids: Vec<i64> = rows.iter().map(|row| row.id).collect();
        let mut already = 0;
        for row in rows {
            let epoch = epochs
                .get(&row.topic)
                .map_or(self.store.epoch(), String::as_str)
                .to_owned();
            let event = Arc::new(SharedEvent::new(event_of(row, &epoch)));
            if self.broker.append(event).await? == Appended::AlreadyCached {
                already += 1;
            }
        }
        // Counted once handed over, before the mark (a row seen published is counted).
        self.store.count_relayed(ids.len());
        #[cfg(feature = "test-util")]
        self.faults
            .check(&self.faults.kill_before_mark, "before mark")?;

        let turn = self.store.write_turn().await?;
        dequeue(db, &ids).await?;
        drop(turn);
        tracing::debug!(relayed = ids.len(), already, "relayed outbox rows");
        Ok(ids.len())
    }

    /// The epochs of the batch's topics.
    async fn epochs(&self, rows: &[outbox::Model]) -> Result<HashMap<String, String>, RelayError> {
        let mut topics: Vec<&str> = rows.iter().map(|row| row.topic.as_str()).collect();
        topics.sort_unstable();
        topics.dedup();
        Ok(outbox_topic::Entity::find()
            .filter(outbox_topic::Column::Topic.is_in(topics))
            .all(self.store.db())
            .await?
            .into_iter()
            .map(|row| (row.topic, row.epoch))
            .collect())
    }
}

/// The oldest queued rows, in id order. On PostgreSQL the ids are taken first, as an array,
/// so the rows are always fetched by primary key: a join lets the planner, misled by a queue
/// whose size swings from empty to thousands, scan all of `outbox`.
/// (Columns named: SQLite re-prepares a cached `*` against a changed schema under a column
/// list that no longer matches.)
const QUEUED_ROWS_POSTGRES: &str = "SELECT id, topic, topic_seq, event_type, data, publisher, \
    created_at_ms, event_id, body FROM outbox \
    WHERE id = ANY(ARRAY(SELECT id FROM outbox_pending ORDER BY id LIMIT $1)) ORDER BY id";
const QUEUED_ROWS_SQLITE: &str = "SELECT id, topic, topic_seq, event_type, data, publisher, \
    created_at_ms, event_id, body FROM outbox \
    WHERE id IN (SELECT id FROM outbox_pending ORDER BY id LIMIT ?) ORDER BY id";

/// Vacuums the relay's queue. Every pass reads the queue from its lowest id, so the entries of
/// rows it deleted, which stay in the index until a vacuum, pile up exactly where each pass
/// starts: after a burst, milliseconds per pass. Autovacuum looks at a table at most once a
/// minute. It runs beside the relay (50 – 150 ms after a burst, awaited it stalled every
/// delivery that long) and never truncates: taking the emptied end pages back needs a lock
/// that blocks the committers' inserts, for a table that fills again at once.
async fn vacuum_queue(db: sea_orm::DatabaseConnection) {
    let vacuumed = db
        .execute_unprepared("VACUUM (SKIP_LOCKED, TRUNCATE false) outbox_pending")
        .await;
    if let Err(error) = vacuumed {
        tracing::warn!(%error, "vacuuming the relay's queue failed; autovacuum will do it");
    }
}

/// Takes handed-over rows off the relay's queue.
async fn dequeue(db: &sea_orm::DatabaseConnection, ids: &[i64]) -> Result<(), StoreError> {
    let tx = db.begin().await?;
    if tx.get_database_backend() == DbBackend::Postgres {
        // A lost dequeue only means the rows are handed over again, which delivers nothing
        // twice: the relay need not wait for a disk flush here. One statement over an array
        // whatever the batch size, so it is planned once per connection.
        tx.execute_unprepared("SET LOCAL synchronous_commit = off")
            .await?;
        tx.execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "DELETE FROM outbox_pending WHERE id = ANY($1::int8[])",
            [super::write::bigints(ids.iter().copied())],
        ))
        .await?;
    } else {
        for chunk in ids.chunks(super::ROWS_PER_STATEMENT) {
            outbox_pending::Entity::delete_many()
                .filter(outbox_pending::Column::Id.is_in(chunk.iter().copied()))
                .exec(&tx)
                .await?;
        }
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

/// Wakes the local relay on every commit notified by any node. Reconnects by itself.
async fn listen(store: Store, shutdown: CancellationToken) {
    let pool = store.db().get_postgres_connection_pool().clone();
    loop {
        let result = async {
            let mut listener = PgListener::connect_with(&pool).await?;
            listener.listen(NOTIFY_CHANNEL).await?;
            // Whatever was committed while we were not listening.
            store.wake_relay();
            loop {
                // `None`: the connection was lost; the next try_recv reconnects. Catch up.
                listener.try_recv().await?;
                store.wake_relay();
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
