//! The relay's queue becomes its own narrow table: `outbox_pending` holds the id of every
//! committed event not yet handed to the broker, and the relay deletes the ids it handed over.
//!
//! Before, every event was inserted `status = 'pending'` and updated to `published` once
//! relayed: a second full-width row version per event, with new entries in every index of
//! `outbox`, which on PostgreSQL cost more than the insert itself. Deleting a one-column row
//! is a fraction of that, and `outbox` rows are written once and never changed. The
//! `status` and `published_at_ms` columns and their index go.

use sea_orm_migration::{prelude::*, sea_orm::DbBackend};

use crate::m20261201_000070_outbox_autovacuum::{NAMES, SETTINGS};

#[derive(Debug, DeriveMigrationName)]
pub(crate) struct Migration;

#[derive(DeriveIden)]
enum Outbox {
    Table,
    Status,
    PublishedAtMs,
}

#[derive(DeriveIden)]
enum OutboxPending {
    Table,
    Id,
}

const PENDING_INDEX: &str = "idx_outbox_status_id";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        manager
            .create_table(
                Table::create()
                    .table(OutboxPending::Table)
                    .col(
                        ColumnDef::new(OutboxPending::Id)
                            .big_integer()
                            .not_null()
                            .primary_key(),
                    )
                    .to_owned(),
            )
            .await?;
        db.execute_unprepared(
            "INSERT INTO outbox_pending (id) SELECT id FROM outbox WHERE status = 'pending'",
        )
        .await?;
        manager
            .drop_index(
                Index::drop()
                    .name(PENDING_INDEX)
                    .table(Outbox::Table)
                    .to_owned(),
            )
            .await?;
        for column in [Outbox::Status, Outbox::PublishedAtMs] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Outbox::Table)
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        if manager.get_database_backend() == DbBackend::Postgres {
            db.execute_unprepared(&format!("ALTER TABLE outbox_pending SET ({SETTINGS})"))
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        if manager.get_database_backend() == DbBackend::Postgres {
            db.execute_unprepared(&format!("ALTER TABLE outbox_pending RESET ({NAMES})"))
                .await?;
        }
        manager
            .alter_table(
                Table::alter()
                    .table(Outbox::Table)
                    .add_column(
                        ColumnDef::new(Outbox::Status)
                            .string_len(16)
                            .not_null()
                            .default("published"),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Outbox::Table)
                    .add_column(ColumnDef::new(Outbox::PublishedAtMs).big_integer().null())
                    .to_owned(),
            )
            .await?;
        db.execute_unprepared(
            "UPDATE outbox SET status = 'pending' WHERE id IN (SELECT id FROM outbox_pending)",
        )
        .await?;
        manager
            .create_index(
                Index::create()
                    .name(PENDING_INDEX)
                    .table(Outbox::Table)
                    .col(Outbox::Status)
                    .col(Alias::new("id"))
                    .to_owned(),
            )
            .await?;
        manager
            .drop_table(Table::drop().table(OutboxPending::Table).to_owned())
            .await
    }
}
