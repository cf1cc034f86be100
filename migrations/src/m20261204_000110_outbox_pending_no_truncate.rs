//! Vacuum never truncates the relay's queue (PostgreSQL; SQLite has no vacuum daemon).
//!
//! Each relay pass empties `outbox_pending` from its front, so after a burst the table's end
//! pages are empty and a vacuum, autovacuum's included, takes them back. That needs an
//! exclusive lock on the table, which blocks the committers' inserts for as long as the
//! vacuum holds it (its whole run was 50 – 150 ms after a 100,000-event burst, truncation
//! allowed), to shrink a table that fills again at once.

use sea_orm_migration::{prelude::*, sea_orm::DbBackend};

#[derive(Debug, DeriveMigrationName)]
pub(crate) struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() != DbBackend::Postgres {
            return Ok(());
        }
        manager
            .get_connection()
            .execute_unprepared("ALTER TABLE outbox_pending SET (vacuum_truncate = false)")
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() != DbBackend::Postgres {
            return Ok(());
        }
        manager
            .get_connection()
            .execute_unprepared("ALTER TABLE outbox_pending RESET (vacuum_truncate)")
            .await?;
        Ok(())
    }
}
