//! Group commit of durable publishes: publishes that arrive while a commit is in flight share
//! the next transaction, so N concurrent publishes cost one transaction and one WAL flush
//! instead of N.
//!
//! There is no timer: the batching window is the previous commit's own duration. One publish
//! alone commits at once; under load the queue fills while a commit runs, and the next
//! transaction takes everything queued, up to `database.publish_batch_max` events. A batch keeps
//! arrival order, so per-topic offsets follow the order in which the publishes were queued.
//!
//! Idempotency keys keep their meaning inside a batch: a key already claimed answers with the
//! first event; the same key twice in one batch writes once. If another transaction (another
//! node) claims one of the batch's keys first, the batch rolls back and is written again, and
//! its next attempt finds that key.

use std::{
    collections::{HashMap, HashSet},
    sync::Weak,
};

use herald_proto::{v1::StreamPosition, wkt::Struct};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, Condition, ConnectionTrait, DbErr, EntityTrait, QueryFilter,
    TryInsertResult,
};
use tokio::sync::{mpsc, oneshot};

use super::{Inner, ROWS_PER_STATEMENT, Store, StoreError, entity::publish_key, unix_ms};
use crate::{
    broker::Published,
    event::{EventType, IdempotencyKey},
    topic::Topic,
};

/// Publishes waiting for the committer. A full queue answers UNAVAILABLE once the write retry
/// budget is spent, like a busy database.
pub(super) const QUEUE: usize = 8192;

/// Keys looked up per statement (three bound parameters each).
const KEYS_PER_STATEMENT: usize = 300;

/// How often a batch is written before a lost key race fails it.
const ATTEMPTS: usize = 3;

/// One durable publish waiting for its batch.
#[derive(Debug)]
pub(super) struct Request {
    pub(super) publisher: String,
    pub(super) topic: Topic,
    pub(super) event_type: EventType,
    pub(super) data: Option<Struct>,
    pub(super) key: Option<IdempotencyKey>,
    pub(super) reply: oneshot::Sender<Result<Published, StoreError>>,
}

impl Request {
    fn key_id(&self) -> Option<KeyId<'_>> {
        self.key
            .as_ref()
            .map(|key| (self.topic.as_str(), self.publisher.as_str(), key.as_str()))
    }
}

/// (topic, publisher, key): what an idempotency key is scoped to.
type KeyId<'a> = (&'a str, &'a str, &'a str);

/// What one request of a batch comes to.
#[derive(Debug)]
enum Outcome {
    /// Written in this batch as its `n`-th event.
    Written(usize),
    /// The same key as an earlier request of the batch, written as its `n`-th event.
    SameAs(usize),
    /// A retry of an event committed before.
    Earlier(Published),
    /// Refused before anything was written.
    Refused(String),
}

/// Commits queued publishes, batch after batch, until the store is gone.
pub(super) async fn run(store: Weak<Inner>, mut queue: mpsc::Receiver<Request>, max: usize) {
    let max = max.max(1);
    let mut batch = Vec::with_capacity(max);
    while queue.recv_many(&mut batch, max).await > 0 {
        let Some(inner) = store.upgrade() else {
            return;
        };
        commit(&Store { inner }, std::mem::take(&mut batch)).await;
    }
}

async fn commit(store: &Store, batch: Vec<Request>) {
    let mut attempt = 1;
    let result = loop {
        match write(store, &batch).await {
            Ok(Some(results)) => break Ok(results),
            Ok(None) if attempt < ATTEMPTS => attempt += 1,
            Ok(None) => {
                break Err(StoreError::Unavailable(DbErr::Custom(
                    "concurrent publishes kept claiming the same idempotency keys; retry".into(),
                )));
            }
            Err(error) => break Err(error),
        }
    };
    match result {
        Ok(results) => {
            for (request, result) in batch.into_iter().zip(results) {
                // A publisher that stopped waiting still has its event committed.
                let _ = request.reply.send(result);
            }
        }
        Err(error) => {
            for request in batch {
                let _ = request.reply.send(Err(share(&error)));
            }
        }
    }
}

/// Writes one batch in one transaction. `None`: another transaction claimed one of the keys
/// first, nothing was kept, and the batch should be written again.
async fn write(
    store: &Store,
    batch: &[Request],
) -> Result<Option<Vec<Result<Published, StoreError>>>, StoreError> {
    let mut tx = store.begin().await?;
    let earlier = find_keys(tx.conn(), batch, store.epoch()).await?;
    let mut outcomes = Vec::with_capacity(batch.len());
    // The event each key of the batch was first written as.
    let mut first_with_key: HashMap<KeyId<'_>, usize> = HashMap::new();
    // (request, event) pairs whose key this batch claims.
    let mut claims = Vec::new();
    let mut written = 0;
    for (index, request) in batch.iter().enumerate() {
        let key = request.key_id();
        if let Some(key) = key {
            if let Some(first) = earlier.get(&key) {
                outcomes.push(Outcome::Earlier(first.clone()));
                continue;
            }
            if let Some(&event) = first_with_key.get(&key) {
                outcomes.push(Outcome::SameAs(event));
                continue;
            }
        }
        let emitted = tx.emit_struct_as(
            &request.publisher,
            &request.topic,
            request.event_type.as_str(),
            request.data.clone(),
        );
        match emitted {
            Ok(()) => {
                if let Some(key) = key {
                    first_with_key.insert(key, written);
                    claims.push((index, written));
                }
                outcomes.push(Outcome::Written(written));
                written += 1;
            }
            Err(error) => outcomes.push(Outcome::Refused(error.to_string())),
        }
    }
    tx.flush().await?;
    let events = tx.events.clone();
    if !claim_keys(tx.conn(), batch, &claims, &events).await? {
        tx.rollback().await?;
        return Ok(None);
    }
    tx.commit().await?;
    store
        .inner
        .publish_batches
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let results = outcomes
        .into_iter()
        .map(|outcome| match outcome {
            Outcome::Written(n) => Ok(events[n].clone()),
            Outcome::SameAs(n) => Ok(Published {
                duplicate: true,
                ..events[n].clone()
            }),
            Outcome::Earlier(first) => Ok(first),
            Outcome::Refused(message) => Err(StoreError::Invalid(message)),
        })
        .collect();
    Ok(Some(results))
}

/// The batch's keys that earlier publishes claimed, with what those published.
async fn find_keys<'a>(
    conn: &impl ConnectionTrait,
    batch: &'a [Request],
    epoch: &str,
) -> Result<HashMap<KeyId<'a>, Published>, StoreError> {
    let keys: HashSet<KeyId<'a>> = batch.iter().filter_map(Request::key_id).collect();
    let keys: Vec<KeyId<'a>> = keys.into_iter().collect();
    let mut found = HashMap::new();
    for chunk in keys.chunks(KEYS_PER_STATEMENT) {
        let any = chunk
            .iter()
            .fold(Condition::any(), |any, (topic, publisher, key)| {
                any.add(
                    Condition::all()
                        .add(publish_key::Column::Topic.eq(*topic))
                        .add(publish_key::Column::Publisher.eq(*publisher))
                        .add(publish_key::Column::Key.eq(*key)),
                )
            });
        for row in publish_key::Entity::find().filter(any).all(conn).await? {
            let id = chunk.iter().find(|(topic, publisher, key)| {
                *topic == row.topic && *publisher == row.publisher && *key == row.key
            });
            if let Some(id) = id {
                let position = StreamPosition {
                    offset: u64::try_from(row.offset).unwrap_or_default(),
                    epoch: epoch.to_owned(),
                };
                let first = Published {
                    position,
                    id: row.event_id,
                    duplicate: true,
                };
                found.insert(*id, first);
            }
        }
    }
    Ok(found)
}

/// Records the keys of the events this batch wrote; false when a concurrent transaction
/// claimed any of them in the meantime.
async fn claim_keys(
    conn: &impl ConnectionTrait,
    batch: &[Request],
    claims: &[(usize, usize)],
    events: &[Published],
) -> Result<bool, StoreError> {
    let now = unix_ms(std::time::SystemTime::now());
    for chunk in claims.chunks(ROWS_PER_STATEMENT) {
        let rows = chunk.iter().map(|&(request, event)| {
            let request = &batch[request];
            let published = &events[event];
            publish_key::ActiveModel {
                topic: Set(request.topic.to_string()),
                publisher: Set(request.publisher.clone()),
                key: Set(request
                    .key
                    .as_ref()
                    .map(|key| key.as_str().to_owned())
                    .unwrap_or_default()),
                offset: Set(i64::try_from(published.position.offset).unwrap_or(i64::MAX)),
                event_id: Set(published.id.clone()),
                created_at_ms: Set(now),
            }
        });
        let inserted = publish_key::Entity::insert_many(rows)
            .on_conflict_do_nothing_on([
                publish_key::Column::Topic,
                publish_key::Column::Publisher,
                publish_key::Column::Key,
            ])
            .exec_without_returning(conn)
            .await?;
        let claimed_all =
            matches!(inserted, TryInsertResult::Inserted(n) if n == chunk.len() as u64);
        if !claimed_all {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The same failure for every publish of a batch (database errors are not `Clone`).
fn share(error: &StoreError) -> StoreError {
    match error {
        StoreError::Unavailable(e) => StoreError::Unavailable(DbErr::Custom(e.to_string())),
        StoreError::Database(e) => StoreError::Database(DbErr::Custom(e.to_string())),
        StoreError::Invalid(message) => StoreError::Invalid(message.clone()),
    }
}
