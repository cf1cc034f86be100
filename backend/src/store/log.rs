//! The database as the durable topics' [`EventLog`]: `outbox` rows are the events,
//! `outbox_topic` holds each topic's top and epoch.

use std::sync::Arc;

use async_trait::async_trait;
use herald_proto::{
    v1::{Event, StreamPosition},
    wkt::Struct,
};
use prost::Message;
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};

use super::{
    Store, StoreError,
    entity::{outbox, outbox_topic},
};
use crate::{
    event::SharedEvent,
    history::{EventLog, LogBounds, LogError},
    topic::Topic,
};

impl From<StoreError> for LogError {
    fn from(error: StoreError) -> LogError {
        match error {
            StoreError::Unavailable(cause) => LogError::Unavailable(cause.to_string()),
            other => LogError::Failed(other.to_string()),
        }
    }
}

impl From<sea_orm::DbErr> for LogError {
    fn from(error: sea_orm::DbErr) -> LogError {
        LogError::from(StoreError::from(error))
    }
}

impl Store {
    /// The top and epoch of `topic` as `conn` sees it (inside a snapshot, or not).
    pub(crate) async fn top_on(
        &self,
        conn: &impl ConnectionTrait,
        topic: &Topic,
    ) -> Result<StreamPosition, StoreError> {
        let row = outbox_topic::Entity::find_by_id(topic.as_str())
            .one(conn)
            .await?;
        Ok(match row {
            Some(row) => StreamPosition {
                offset: u64::try_from(row.last_seq).unwrap_or_default(),
                epoch: row.epoch,
            },
            None => StreamPosition {
                offset: 0,
                epoch: self.epoch().to_owned(),
            },
        })
    }
}

impl Store {
    /// [`Store::top_on`] of several topics in one query, in the order given.
    pub(crate) async fn tops_on(
        &self,
        conn: &impl ConnectionTrait,
        topics: &[Topic],
    ) -> Result<Vec<StreamPosition>, StoreError> {
        let mut found = std::collections::HashMap::with_capacity(topics.len());
        for chunk in topics.chunks(500) {
            let rows = outbox_topic::Entity::find()
                .filter(outbox_topic::Column::Topic.is_in(chunk.iter().map(Topic::as_str)))
                .all(conn)
                .await?;
            found.extend(rows.into_iter().map(|row| (row.topic.clone(), row)));
        }
        Ok(topics
            .iter()
            .map(|topic| match found.get(topic.as_str()) {
                Some(row) => StreamPosition {
                    offset: u64::try_from(row.last_seq).unwrap_or_default(),
                    epoch: row.epoch.clone(),
                },
                None => StreamPosition {
                    offset: 0,
                    epoch: self.epoch().to_owned(),
                },
            })
            .collect())
    }
}

#[async_trait]
impl EventLog for Store {
    async fn bounds(&self, topic: &Topic) -> Result<LogBounds, LogError> {
        let db = self.db();
        let top = self.top_on(db, topic).await?;
        let oldest: Option<i64> = outbox::Entity::find()
            .select_only()
            .column_as(outbox::Column::TopicSeq.min(), "oldest")
            .filter(outbox::Column::Topic.eq(topic.as_str()))
            .into_tuple()
            .one(db)
            .await?
            .flatten();
        let oldest = oldest.map_or(top.offset + 1, |o| u64::try_from(o).unwrap_or_default());
        Ok(LogBounds { top, oldest })
    }

    async fn read(
        &self,
        topic: &Topic,
        after: u64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<Arc<SharedEvent>>, LogError> {
        let db = self.db();
        let after = i64::try_from(after).unwrap_or(i64::MAX);
        let rows = outbox::Entity::find()
            .filter(outbox::Column::Topic.eq(topic.as_str()))
            .filter(outbox::Column::TopicSeq.gt(after))
            .order_by_asc(outbox::Column::TopicSeq)
            .limit(limit as u64)
            .all(db)
            .await?;
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let epoch = self.top_on(db, topic).await?.epoch;
        let mut events = Vec::with_capacity(rows.len());
        let mut bytes = 0usize;
        for row in rows {
            let event = event_of(row, &epoch);
            bytes += event.encoded_len();
            events.push(Arc::new(SharedEvent::new(event)));
            if bytes >= max_bytes {
                break;
            }
        }
        Ok(events)
    }
}

/// The event an outbox row records. Unreadable data (never written by Herald) becomes an
/// empty object rather than a hole in the topic's offsets.
pub(crate) fn event_of(row: outbox::Model, epoch: &str) -> Event {
    let typed = row.body.as_deref().map(|body| {
        Event::decode(body).unwrap_or_else(|error| {
            tracing::error!(id = row.id, %error, "outbox row has an unreadable body; delivering it empty");
            Event::default()
        })
    });
    let data = match typed {
        Some(_) => None,
        None => Some(serde_json::from_str::<Struct>(&row.data).unwrap_or_else(|error| {
            tracing::error!(id = row.id, %error, "outbox row has unreadable data; delivering it empty");
            Struct::default()
        })),
    };
    // Typed body fields come from the stored partial event; the rest from the row.
    let mut event = typed.unwrap_or_default();
    event.id = row.event_id.unwrap_or_else(|| format!("outbox-{}", row.id));
    event.topic = row.topic;
    event.offset = u64::try_from(row.topic_seq).unwrap_or_default();
    event.epoch = epoch.to_owned();
    event.time = Some(herald_proto::timestamp(
        std::time::UNIX_EPOCH
            + std::time::Duration::from_millis(u64::try_from(row.created_at_ms).unwrap_or(0)),
    ));
    event.r#type = row.event_type;
    event.data = data;
    event.publisher = row.publisher;
    event
}
