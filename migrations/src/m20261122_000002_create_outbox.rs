//! The transactional outbox: `outbox` holds every durable event from the transaction that
//! wrote it until the relay has published it; `outbox_topic` hands out each topic's next
//! sequence number and, by its row lock, serializes a topic's writers from their first event
//! to their commit (so a topic's sequence order is its commit order).

use sea_orm_migration::prelude::*;

#[derive(Debug, DeriveMigrationName)]
pub(crate) struct Migration;

#[derive(DeriveIden)]
enum Outbox {
    Table,
    Id,
    Topic,
    TopicSeq,
    EventType,
    Data,
    Publisher,
    Status,
    CreatedAtMs,
    PublishedAtMs,
    PublishedOffset,
    PublishedEpoch,
    PublishedEventId,
}

#[derive(DeriveIden)]
enum OutboxTopic {
    Table,
    Topic,
    LastSeq,
}

const PENDING_INDEX: &str = "idx_outbox_status_id";
const TOPIC_SEQ_INDEX: &str = "idx_outbox_topic_seq";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(OutboxTopic::Table)
                    .col(
                        ColumnDef::new(OutboxTopic::Topic)
                            .string_len(255)
                            .not_null()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(OutboxTopic::LastSeq)
                            .big_integer()
                            .not_null(),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Outbox::Table)
                    .col(
                        ColumnDef::new(Outbox::Id)
                            .big_integer()
                            .not_null()
                            .auto_increment()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(Outbox::Topic).string_len(255).not_null())
                    .col(ColumnDef::new(Outbox::TopicSeq).big_integer().not_null())
                    .col(ColumnDef::new(Outbox::EventType).string_len(128).not_null())
                    .col(ColumnDef::new(Outbox::Data).text().not_null())
                    .col(ColumnDef::new(Outbox::Publisher).string_len(255).not_null())
                    .col(ColumnDef::new(Outbox::Status).string_len(16).not_null())
                    .col(ColumnDef::new(Outbox::CreatedAtMs).big_integer().not_null())
                    .col(ColumnDef::new(Outbox::PublishedAtMs).big_integer().null())
                    .col(ColumnDef::new(Outbox::PublishedOffset).big_integer().null())
                    .col(ColumnDef::new(Outbox::PublishedEpoch).string_len(64).null())
                    .col(
                        ColumnDef::new(Outbox::PublishedEventId)
                            .string_len(64)
                            .null(),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name(PENDING_INDEX)
                    .table(Outbox::Table)
                    .col(Outbox::Status)
                    .col(Outbox::Id)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name(TOPIC_SEQ_INDEX)
                    .table(Outbox::Table)
                    .col(Outbox::Topic)
                    .col(Outbox::TopicSeq)
                    .unique()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(Outbox::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(OutboxTopic::Table).to_owned())
            .await
    }
}
