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
        if manager.get_database_backend() == DbBackend::Sqlite {
            restore_sqlite_outbox(db).await?;
        } else {
            for statement in [
                "ALTER TABLE outbox ADD COLUMN status varchar(16) NOT NULL DEFAULT 'published'",
                "ALTER TABLE outbox ADD COLUMN published_at_ms bigint NULL",
                "UPDATE outbox SET status = 'pending' WHERE id IN (SELECT id FROM outbox_pending)",
                "ALTER TABLE outbox ALTER COLUMN status DROP DEFAULT",
            ] {
                db.execute_unprepared(statement).await?;
            }
            manager.create_index(pending_index()).await?;
        }
        manager
            .drop_table(Table::drop().table(OutboxPending::Table).to_owned())
            .await
    }
}

fn pending_index() -> IndexCreateStatement {
    Index::create()
        .name(PENDING_INDEX)
        .table(Outbox::Table)
        .col(Outbox::Status)
        .col(Alias::new("id"))
        .to_owned()
}

/// SQLite adds columns only at the end of a table: the table is rebuilt with its columns in
/// their former order, then its indexes.
async fn restore_sqlite_outbox(db: &SchemaManagerConnection<'_>) -> Result<(), DbErr> {
    for statement in [
        "CREATE TABLE \"outbox_restored\" (\"id\" integer NOT NULL PRIMARY KEY AUTOINCREMENT, \
         \"topic\" varchar(255) NOT NULL, \"topic_seq\" integer NOT NULL, \
         \"event_type\" varchar(128) NOT NULL, \"data\" text NOT NULL, \
         \"publisher\" varchar(255) NOT NULL, \"status\" varchar(16) NOT NULL, \
         \"created_at_ms\" integer NOT NULL, \"published_at_ms\" integer NULL, \
         \"event_id\" varchar(64) NULL , \"body\" blob NULL)",
        "INSERT INTO outbox_restored (id, topic, topic_seq, event_type, data, publisher, status, \
         created_at_ms, event_id, body) \
         SELECT id, topic, topic_seq, event_type, data, publisher, \
         CASE WHEN id IN (SELECT id FROM outbox_pending) THEN 'pending' ELSE 'published' END, \
         created_at_ms, event_id, body FROM outbox",
        "DROP TABLE outbox",
        "ALTER TABLE outbox_restored RENAME TO outbox",
        "CREATE INDEX \"idx_outbox_created_at\" ON \"outbox\" (\"created_at_ms\")",
        "CREATE UNIQUE INDEX \"idx_outbox_topic_seq\" ON \"outbox\" (\"topic\", \"topic_seq\")",
        "CREATE INDEX \"idx_outbox_status_id\" ON \"outbox\" (\"status\", \"id\")",
    ] {
        db.execute_unprepared(statement).await?;
    }
    Ok(())
}
