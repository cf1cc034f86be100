//! Autovacuum settings for the event tables on PostgreSQL (SQLite has no vacuum daemon).
//!
//! `outbox` is a queue and a log at once: every row is inserted `pending` and updated to
//! `published` moments later, which leaves a dead tuple and a dead entry in the pending index
//! per event. With the defaults (vacuum at 20 % dead tuples), a table holding days of history
//! collects hundreds of thousands of dead entries after a burst, and the relay's
//! `status = 'pending'` scan walks them until autovacuum comes. Fixed thresholds instead of
//! fractions of the table make vacuum follow the write rate, not the retained history, and an
//! analyze after a bulk fill keeps the planner's row estimates current for history reads.

use sea_orm_migration::{prelude::*, sea_orm::DbBackend};

#[derive(Debug, DeriveMigrationName)]
pub(crate) struct Migration;

/// Every setting this migration changes, and the tables it changes them on.
pub(crate) const SETTINGS: &str = "autovacuum_vacuum_scale_factor = 0, \
     autovacuum_vacuum_threshold = 10000, \
     autovacuum_vacuum_insert_scale_factor = 0, \
     autovacuum_vacuum_insert_threshold = 50000, \
     autovacuum_analyze_scale_factor = 0, \
     autovacuum_analyze_threshold = 20000, \
     autovacuum_vacuum_cost_delay = 0";
pub(crate) const NAMES: &str = "autovacuum_vacuum_scale_factor, autovacuum_vacuum_threshold, \
     autovacuum_vacuum_insert_scale_factor, autovacuum_vacuum_insert_threshold, \
     autovacuum_analyze_scale_factor, autovacuum_analyze_threshold, autovacuum_vacuum_cost_delay";
const TABLES: [&str; 3] = ["outbox", "outbox_topic", "publish_key"];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() != DbBackend::Postgres {
            return Ok(());
        }
        for table in TABLES {
            manager
                .get_connection()
                .execute_unprepared(&format!("ALTER TABLE {table} SET ({SETTINGS})"))
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() != DbBackend::Postgres {
            return Ok(());
        }
        for table in TABLES {
            manager
                .get_connection()
                .execute_unprepared(&format!("ALTER TABLE {table} RESET ({NAMES})"))
                .await?;
        }
        Ok(())
    }
}
