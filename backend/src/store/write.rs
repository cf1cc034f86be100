//! The two statements that write durable events: bump each topic's sequence (which takes the
//! topic's order lock) and insert the outbox rows, with their ids in the relay's queue
//! (`outbox_pending`).
//!
//! On PostgreSQL each is one statement over arrays (`UNNEST`), whatever the batch size: the
//! statement text never changes, so it is parsed and planned once per connection and then
//! only bound, and a batch of any size is one round trip. SQLite takes multi-row `VALUES`
//! in chunks (its bound-parameter limit), where a new text costs no server round trip.

use std::collections::BTreeMap;

use sea_orm::{
    ActiveValue::Set,
    ConnectionTrait, DatabaseTransaction, DbBackend, DbErr, EntityTrait, FromQueryResult,
    Statement, Value,
    sea_query::{Alias, ArrayType, Expr, ExprTrait, OnConflict},
};

use super::{
    OutboxId, ROWS_PER_STATEMENT,
    entity::{outbox, outbox_pending, outbox_topic},
};

/// One outbox row to insert, its offset fixed.
#[derive(Debug)]
pub(super) struct NewRow<'a> {
    pub(super) topic: &'a str,
    pub(super) topic_seq: i64,
    pub(super) event_type: &'a str,
    pub(super) data: &'a str,
    pub(super) publisher: &'a str,
    pub(super) created_at_ms: i64,
    pub(super) event_id: String,
    pub(super) body: Option<&'a [u8]>,
}

/// Topics in lock order (ascending), each with its sequence bumped by `count`.
const BUMP_TOPICS: &str = "INSERT INTO outbox_topic (topic, last_seq, epoch) \
    SELECT topic, count, $3 FROM UNNEST($1::text[], $2::int8[]) AS t(topic, count) \
    ON CONFLICT (topic) DO UPDATE SET last_seq = outbox_topic.last_seq + excluded.last_seq \
    RETURNING topic, last_seq, epoch";

/// The rows and their queue entries in one statement (a data-modifying `WITH`).
const INSERT_ROWS: &str = "WITH inserted AS (INSERT INTO outbox \
    (topic, topic_seq, event_type, data, publisher, created_at_ms, event_id, body) \
    SELECT topic, topic_seq, event_type, data, publisher, created_at_ms, event_id, \
    CASE WHEN has_body THEN body END \
    FROM UNNEST($1::text[], $2::int8[], $3::text[], $4::text[], $5::text[], $6::int8[], \
    $7::text[], $8::bytea[], $9::bool[]) \
    AS r(topic, topic_seq, event_type, data, publisher, created_at_ms, event_id, body, has_body) \
    RETURNING id) \
    INSERT INTO outbox_pending (id) SELECT id FROM inserted RETURNING id";

/// Adds each topic's count to its sequence (creating the topic at `epoch`), in topic order so
/// transactions writing to several topics lock them in the same order and cannot deadlock.
/// Returns each topic's row after the bump.
pub(super) async fn bump_topics(
    tx: &DatabaseTransaction,
    counts: &BTreeMap<&str, i64>,
    epoch: &str,
) -> Result<Vec<outbox_topic::Model>, DbErr> {
    if tx.get_database_backend() == DbBackend::Postgres {
        let topics = strings(counts.keys().copied());
        let values = bigints(counts.values().copied());
        let statement = Statement::from_sql_and_values(
            DbBackend::Postgres,
            BUMP_TOPICS,
            [topics, values, epoch.into()],
        );
        return outbox_topic::Model::find_by_statement(statement)
            .all(tx)
            .await;
    }
    let last_seq = || Expr::col((outbox_topic::Entity, outbox_topic::Column::LastSeq));
    let excluded = Expr::col((Alias::new("excluded"), outbox_topic::Column::LastSeq));
    let topics: Vec<(&&str, &i64)> = counts.iter().collect();
    let mut bumped = Vec::with_capacity(topics.len());
    // Statement after statement in topic order: the lock order stays the same.
    for chunk in topics.chunks(ROWS_PER_STATEMENT) {
        let rows = chunk
            .iter()
            .map(|(topic, count)| outbox_topic::ActiveModel {
                topic: Set((**topic).to_owned()),
                last_seq: Set(**count),
                epoch: Set(epoch.to_owned()),
            });
        bumped.extend(
            outbox_topic::Entity::insert_many(rows)
                .on_conflict(
                    OnConflict::column(outbox_topic::Column::Topic)
                        .value(
                            outbox_topic::Column::LastSeq,
                            last_seq().add(excluded.clone()),
                        )
                        .to_owned(),
                )
                .exec_with_returning(tx)
                .await?,
        );
    }
    Ok(bumped)
}

/// Inserts `rows`, queues them for the relay and returns their ids (in no particular order).
pub(super) async fn insert_rows(
    tx: &DatabaseTransaction,
    rows: &[NewRow<'_>],
) -> Result<Vec<OutboxId>, DbErr> {
    if tx.get_database_backend() == DbBackend::Postgres {
        // A NULL cannot travel in a bytea[] here: `has_body` says which bodies are absent.
        let values = [
            strings(rows.iter().map(|row| row.topic)),
            bigints(rows.iter().map(|row| row.topic_seq)),
            strings(rows.iter().map(|row| row.event_type)),
            strings(rows.iter().map(|row| row.data)),
            strings(rows.iter().map(|row| row.publisher)),
            bigints(rows.iter().map(|row| row.created_at_ms)),
            strings(rows.iter().map(|row| row.event_id.as_str())),
            Value::Array(
                ArrayType::Bytes,
                Some(Box::new(
                    rows.iter()
                        .map(|row| Value::Bytes(Some(row.body.unwrap_or_default().to_vec())))
                        .collect(),
                )),
            ),
            Value::Array(
                ArrayType::Bool,
                Some(Box::new(
                    rows.iter()
                        .map(|row| Value::Bool(Some(row.body.is_some())))
                        .collect(),
                )),
            ),
        ];
        let statement = Statement::from_sql_and_values(DbBackend::Postgres, INSERT_ROWS, values);
        let inserted = tx.query_all_raw(statement).await?;
        return inserted
            .iter()
            .map(|row| row.try_get::<i64>("", "id"))
            .collect();
    }
    let models: Vec<outbox::ActiveModel> = rows
        .iter()
        .map(|row| outbox::ActiveModel {
            topic: Set(row.topic.to_owned()),
            topic_seq: Set(row.topic_seq),
            event_type: Set(row.event_type.to_owned()),
            data: Set(row.data.to_owned()),
            publisher: Set(row.publisher.to_owned()),
            created_at_ms: Set(row.created_at_ms),
            event_id: Set(Some(row.event_id.clone())),
            body: Set(row.body.map(<[u8]>::to_vec)),
            ..Default::default()
        })
        .collect();
    let mut ids = Vec::with_capacity(models.len());
    for chunk in models.chunks(ROWS_PER_STATEMENT) {
        // Only the ids come back: the rows' data is what was just sent.
        let inserted = outbox::Entity::insert_many(chunk.iter().cloned())
            .exec_with_returning_keys(tx)
            .await?;
        outbox_pending::Entity::insert_many(
            inserted
                .iter()
                .map(|&id| outbox_pending::ActiveModel { id: Set(id) }),
        )
        .exec_without_returning(tx)
        .await?;
        ids.extend(inserted);
    }
    Ok(ids)
}

fn strings<'a>(values: impl Iterator<Item = &'a str>) -> Value {
    Value::Array(
        ArrayType::String,
        Some(Box::new(
            values
                .map(|value| Value::String(Some(value.to_owned())))
                .collect(),
        )),
    )
}

/// A PostgreSQL `int8[]` parameter.
pub(super) fn bigints(values: impl Iterator<Item = i64>) -> Value {
    Value::Array(
        ArrayType::BigInt,
        Some(Box::new(
            values.map(|value| Value::BigInt(Some(value))).collect(),
        )),
    )
}
