//! Idempotency keys of durable publishes: a retry by the same publisher with the same key on
//! the same topic finds the first event instead of writing a second one.

use herald_proto::v1::StreamPosition;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, TryInsertResult,
};

use super::{StoreError, entity::publish_key, unix_ms};
use crate::{broker::Published, event::IdempotencyKey, topic::Topic};

/// The first publish with this key, if it is remembered.
pub(super) async fn find(
    conn: &impl ConnectionTrait,
    topic: &Topic,
    publisher: &str,
    key: &IdempotencyKey,
    epoch: &str,
) -> Result<Option<Published>, StoreError> {
    let row = publish_key::Entity::find()
        .filter(publish_key::Column::Topic.eq(topic.as_str()))
        .filter(publish_key::Column::Publisher.eq(publisher))
        .filter(publish_key::Column::Key.eq(key.as_str()))
        .one(conn)
        .await?;
    Ok(row.map(|row| Published {
        position: StreamPosition {
            offset: u64::try_from(row.offset).unwrap_or_default(),
            epoch: epoch.to_owned(),
        },
        id: row.event_id,
        duplicate: true,
    }))
}

/// Records the key for `published`; false when a concurrent publish claimed it first.
pub(super) async fn claim(
    conn: &impl ConnectionTrait,
    topic: &Topic,
    publisher: &str,
    key: &IdempotencyKey,
    published: &Published,
) -> Result<bool, StoreError> {
    let row = publish_key::ActiveModel {
        topic: Set(topic.to_string()),
        publisher: Set(publisher.to_owned()),
        key: Set(key.as_str().to_owned()),
        offset: Set(i64::try_from(published.position.offset).unwrap_or(i64::MAX)),
        event_id: Set(published.id.clone()),
        created_at_ms: Set(unix_ms(std::time::SystemTime::now())),
    };
    let inserted = publish_key::Entity::insert(row)
        .on_conflict_do_nothing_on([
            publish_key::Column::Topic,
            publish_key::Column::Publisher,
            publish_key::Column::Key,
        ])
        .exec_without_returning(conn)
        .await?;
    Ok(matches!(inserted, TryInsertResult::Inserted(n) if n > 0))
}
