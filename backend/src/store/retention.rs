//! Retention of durable topics: a background job deletes events older than their kind's
//! `max_age` and beyond its `max_events`, and idempotency keys older than the window, in
//! bounded batches (one short write transaction each), so the purge never holds the writer
//! for long. Only relayed rows are purged: a pending event is always delivered first.
//!
//! A resume from before the purged range answers `recovered = false`; offsets never restart,
//! since `outbox_topic` keeps each topic's counter.

use std::time::{Duration, SystemTime};

use sea_orm::{ConnectionTrait, Statement, Value};
use tokio_util::sync::CancellationToken;

use super::{Store, StoreError, sql, unix_ms};

impl Store {
    /// Purges every `purge_interval` until `shutdown`.
    pub async fn run_retention(self, shutdown: CancellationToken) {
        let every = self.lanes().config().purge_interval;
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticker.tick() => {}
            }
            match self.purge_once().await {
                Ok(0) => {}
                Ok(purged) => tracing::debug!(purged, "retention purged durable events"),
                Err(error) => tracing::warn!(%error, "retention purge failed; retrying later"),
            }
        }
    }

    /// One full purge pass; returns how many events (and keys) it deleted.
    pub async fn purge_once(&self) -> Result<u64, StoreError> {
        let batch = self.lanes().config().purge_batch.max(1);
        let now = SystemTime::now();
        let mut purged = 0;
        let kinds: Vec<_> = self.lanes().durable_kinds().collect();
        for (kind, retention) in kinds {
            let pattern = format!("{kind}:%");
            if let Some(max_age) = retention.max_age {
                let cutoff = unix_ms(now.checked_sub(max_age).unwrap_or(std::time::UNIX_EPOCH));
                purged += self
                    .delete_batched(
                        "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox \
                         WHERE created_at_ms < $1 AND topic LIKE $2 \
                         AND id NOT IN (SELECT id FROM outbox_pending) \
                         ORDER BY id LIMIT $3)",
                        vec![cutoff.into(), pattern.clone().into()],
                        batch,
                    )
                    .await?;
            }
            if retention.max_events > 0 {
                let keep = i64::try_from(retention.max_events).unwrap_or(i64::MAX);
                purged += self
                    .delete_batched(
                        "DELETE FROM outbox WHERE id IN (SELECT o.id FROM outbox o \
                         JOIN outbox_topic t ON t.topic = o.topic \
                         WHERE o.topic LIKE $1 AND o.topic_seq <= t.last_seq - $2 \
                         AND o.id NOT IN (SELECT id FROM outbox_pending) ORDER BY o.id LIMIT $3)",
                        vec![pattern.into(), keep.into()],
                        batch,
                    )
                    .await?;
            }
        }
        let window = self.lanes().config().idempotency_window;
        let cutoff = unix_ms(now.checked_sub(window).unwrap_or(std::time::UNIX_EPOCH));
        purged += self
            .delete_batched(
                "DELETE FROM publish_key WHERE created_at_ms < $1",
                vec![cutoff.into()],
                u64::MAX,
            )
            .await?;
        Ok(purged)
    }

    /// Runs a `DELETE … LIMIT $n` (the limit is appended as the last parameter when the
    /// statement has one) until it deletes fewer than `batch` rows.
    async fn delete_batched(
        &self,
        statement: &str,
        mut values: Vec<Value>,
        batch: u64,
    ) -> Result<u64, StoreError> {
        let limited = statement.contains("LIMIT");
        if limited {
            values.push(i64::try_from(batch).unwrap_or(i64::MAX).into());
        }
        let backend = self.backend();
        let text = sql(backend, statement);
        let mut total = 0;
        loop {
            let turn = self.write_turn().await?;
            let deleted = self
                .db()
                .execute_raw(Statement::from_sql_and_values(
                    backend,
                    &text,
                    values.clone(),
                ))
                .await?
                .rows_affected();
            drop(turn);
            total += deleted;
            if !limited || deleted < batch {
                return Ok(total);
            }
            // Let writers in between batches.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}
