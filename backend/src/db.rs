//! The database: a sea-orm connection (SQLite by default, PostgreSQL by URL) with every
//! migration applied at start. The pool settings, retries and the outbox live in
//! [`crate::store`]; this is the short way to a migrated connection.

use herald_migrations::{Migrator, MigratorTrait};
use sea_orm::{DatabaseConnection, DbErr};

use crate::store::{self, StoreConfig};

/// Connects with the default pool settings and migrates. SQLite runs in WAL mode with a busy
/// timeout so readers never block the writer.
pub async fn connect(url: &str) -> Result<DatabaseConnection, DbErr> {
    let db = store::connect(url, &StoreConfig::default()).await?;
    Migrator::up(&db, None).await?;
    Ok(db)
}
