//! `herald migrate up|down|status`: the schema, by hand. `herald serve` applies pending
//! migrations by itself; this is for rolling back and for looking.

use herald_backend::{Config, store};
use herald_migrations::{MigrationStatus, Migrator, MigratorTrait};

use crate::{CliError, MigrateAction, MigrateArgs};

pub(crate) async fn run(args: MigrateArgs, config: &Config) -> Result<(), CliError> {
    if config.database_url.is_none() {
        std::fs::create_dir_all(&config.data_dir).map_err(|e| {
            CliError::new(format!(
                "cannot use the data directory {}: {e}",
                config.data_dir.display()
            ))
        })?;
    }
    let db = store::connect(&config.database_url(), &config.database)
        .await
        .map_err(|e| {
            CliError::new(format!(
                "database: {e}; check --database-url (HERALD_DATABASE_URL)"
            ))
        })?;
    let failed = |e: sea_orm::DbErr| CliError::new(format!("migration failed: {e}"));
    match args.action {
        MigrateAction::Up => Migrator::up(&db, args.steps).await.map_err(failed)?,
        MigrateAction::Down => Migrator::down(&db, Some(args.steps.unwrap_or(1)))
            .await
            .map_err(failed)?,
        MigrateAction::Status => {}
    }
    for migration in Migrator::get_migration_with_status(&db)
        .await
        .map_err(failed)?
    {
        let status = match migration.status() {
            MigrationStatus::Applied => "applied",
            MigrationStatus::Pending => "pending",
        };
        println!("{status:<8} {}", migration.name());
    }
    Ok(())
}
