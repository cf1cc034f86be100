//! Durable topics: the outbox becomes the history of record of durable topics.
//!
//! - `outbox.topic_seq` is the event's offset, given by the committing transaction; the
//!   broker-assigned `published_offset` / `published_epoch` go, and `published_event_id`
//!   becomes `event_id`, also fixed at commit.
//! - `outbox_topic.epoch`: a durable topic's epoch, stored with its counter so it survives
//!   restarts. Every topic gets the database's epoch (`server_meta` key `durable_epoch`).
//! - `publish_key`: idempotency keys of durable publishes, scoped per (topic, publisher).
//! - `outbox.body`: a typed event body (a domain's protobuf message), next to the JSON `data`.
//! - `idx_outbox_created_at`: the retention purge walks events by age.

use sea_orm_migration::prelude::*;

#[derive(Debug, DeriveMigrationName)]
pub(crate) struct Migration;

#[derive(DeriveIden)]
enum Outbox {
    Table,
    CreatedAtMs,
    PublishedOffset,
    PublishedEpoch,
    PublishedEventId,
    EventId,
    Body,
}

#[derive(DeriveIden)]
enum OutboxTopic {
    Table,
    Epoch,
}

#[derive(DeriveIden)]
enum PublishKey {
    Table,
    Topic,
    Publisher,
    Key,
    Offset,
    EventId,
    CreatedAtMs,
}

const CREATED_INDEX: &str = "idx_outbox_created_at";
const KEY_AGE_INDEX: &str = "idx_publish_key_created_at";
/// The `server_meta` key holding the epoch of every durable topic of this database.
pub const DURABLE_EPOCH_KEY: &str = "durable_epoch";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        let random_epoch = match manager.get_database_backend() {
            sea_orm::DatabaseBackend::Postgres => "substr(md5(random()::text), 1, 16)",
            _ => "lower(hex(randomblob(8)))",
        };
        db.execute_unprepared(&format!(
            "INSERT INTO server_meta (key, value) SELECT '{DURABLE_EPOCH_KEY}', {random_epoch} \
             WHERE NOT EXISTS (SELECT 1 FROM server_meta WHERE key = '{DURABLE_EPOCH_KEY}')"
        ))
        .await?;

        for column in [Outbox::PublishedOffset, Outbox::PublishedEpoch] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Outbox::Table)
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        manager
            .alter_table(
                Table::alter()
                    .table(Outbox::Table)
                    .rename_column(Outbox::PublishedEventId, Outbox::EventId)
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Outbox::Table)
                    .add_column(ColumnDef::new(Outbox::Body).blob().null())
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(OutboxTopic::Table)
                    .add_column(
                        ColumnDef::new(OutboxTopic::Epoch)
                            .string_len(64)
                            .not_null()
                            .default(""),
                    )
                    .to_owned(),
            )
            .await?;
        db.execute_unprepared(&format!(
            "UPDATE outbox_topic SET epoch = \
             (SELECT value FROM server_meta WHERE key = '{DURABLE_EPOCH_KEY}')"
        ))
        .await?;
        manager
            .create_index(
                Index::create()
                    .name(CREATED_INDEX)
                    .table(Outbox::Table)
                    .col(Outbox::CreatedAtMs)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(PublishKey::Table)
                    .col(ColumnDef::new(PublishKey::Topic).string_len(255).not_null())
                    .col(
                        ColumnDef::new(PublishKey::Publisher)
                            .string_len(255)
                            .not_null(),
                    )
                    .col(ColumnDef::new(PublishKey::Key).string_len(256).not_null())
                    .col(ColumnDef::new(PublishKey::Offset).big_integer().not_null())
                    .col(
                        ColumnDef::new(PublishKey::EventId)
                            .string_len(64)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(PublishKey::CreatedAtMs)
                            .big_integer()
                            .not_null(),
                    )
                    .primary_key(
                        Index::create()
                            .col(PublishKey::Topic)
                            .col(PublishKey::Publisher)
                            .col(PublishKey::Key),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name(KEY_AGE_INDEX)
                    .table(PublishKey::Table)
                    .col(PublishKey::CreatedAtMs)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(PublishKey::Table).to_owned())
            .await?;
        manager
            .drop_index(
                Index::drop()
                    .name(CREATED_INDEX)
                    .table(Outbox::Table)
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(OutboxTopic::Table)
                    .drop_column(OutboxTopic::Epoch)
                    .to_owned(),
            )
            .await?;
        // Event ids and bodies do not survive a rollback: the columns come back in their old
        // order.
        for column in [Outbox::Body, Outbox::EventId] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Outbox::Table)
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        for column in [
            ColumnDef::new(Outbox::PublishedOffset)
                .big_integer()
                .null()
                .to_owned(),
            ColumnDef::new(Outbox::PublishedEpoch)
                .string_len(64)
                .null()
                .to_owned(),
            ColumnDef::new(Outbox::PublishedEventId)
                .string_len(64)
                .null()
                .to_owned(),
        ] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Outbox::Table)
                        .add_column(column)
                        .to_owned(),
                )
                .await?;
        }
        manager
            .get_connection()
            .execute_unprepared(&format!(
                "DELETE FROM server_meta WHERE key = '{DURABLE_EPOCH_KEY}'"
            ))
            .await?;
        Ok(())
    }
}
