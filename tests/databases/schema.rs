//! Every migration goes up and down on both databases, and a database migrated step by step
//! (including a full roll-back) ends with exactly the schema of a fresh one.

use herald_e2e::TestDatabase;
use herald_migrations::{Migrator, MigratorTrait, POSTGRES_ONLY};
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, DbBackend, Statement};

async fn fresh(kind: TestDatabase, dir: &tempfile::TempDir, name: &str) -> DatabaseConnection {
    let url = match kind {
        TestDatabase::Sqlite => {
            format!("sqlite://{}?mode=rwc", dir.path().join(name).display())
        }
        TestDatabase::Postgres => kind.fresh_url(dir.path()).await,
    };
    Database::connect(url).await.unwrap()
}

/// The schema as comparable text: tables, columns with types, nullability and defaults,
/// and indexes; without the migration bookkeeping table.
async fn schema_of(db: &DatabaseConnection) -> Vec<String> {
    let backend = db.get_database_backend();
    let queries: &[&str] = match backend {
        DbBackend::Sqlite => &[
            "SELECT type || ' ' || name || ': ' || coalesce(sql, '') AS line \
             FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' AND tbl_name <> 'seaql_migrations' \
             ORDER BY type, name",
        ],
        _ => &[
            "SELECT table_name || '.' || column_name || ' ' || data_type || ' ' || is_nullable \
             || ' ' || coalesce(column_default, '') || ' ' || coalesce(character_maximum_length::text, '') AS line \
             FROM information_schema.columns WHERE table_schema = 'public' \
             AND table_name <> 'seaql_migrations' ORDER BY table_name, column_name",
            "SELECT indexdef AS line FROM pg_indexes WHERE schemaname = 'public' \
             AND tablename <> 'seaql_migrations' ORDER BY indexname",
            // Storage settings (autovacuum thresholds) are part of the schema too.
            "SELECT relname || ' ' || array_to_string(reloptions, ',') AS line FROM pg_class \
             WHERE relnamespace = 'public'::regnamespace AND reloptions IS NOT NULL ORDER BY relname",
        ],
    };
    let mut lines = vec![];
    for sql in queries {
        let rows = db
            .query_all_raw(Statement::from_string(backend, *sql))
            .await
            .unwrap();
        for row in rows {
            let line = row.try_get::<String>("", "line").unwrap();
            // SQLite keeps the text of ALTERed tables as written: compare it token by token.
            let line = line.split_whitespace().collect::<Vec<_>>().join(" ");
            lines.push(line.replace(" )", ")").replace("( ", "("));
        }
    }
    lines
}

async fn applied(db: &DatabaseConnection) -> usize {
    Migrator::get_applied_migrations(db).await.unwrap().len()
}

async fn every_migration_goes_up_and_down(kind: TestDatabase) {
    let dir = tempfile::tempdir().unwrap();
    let db = fresh(kind, &dir, "steps.db").await;
    let total = Migrator::migrations().len();
    assert!(total >= 2);
    let empty = schema_of(&db).await;
    let mut after_step = vec![empty.clone()];
    let names: Vec<String> = Migrator::migrations()
        .iter()
        .map(|m| m.name().to_owned())
        .collect();
    for step in 1..=total {
        Migrator::up(&db, Some(1)).await.unwrap();
        assert_eq!(applied(&db).await, step);
        after_step.push(schema_of(&db).await);
        let name = &names[step - 1];
        if kind == TestDatabase::Sqlite && POSTGRES_ONLY.contains(&name.as_str()) {
            assert_eq!(
                after_step[step],
                after_step[step - 1],
                "{name} is PostgreSQL-only"
            );
        } else {
            assert_ne!(
                after_step[step],
                after_step[step - 1],
                "migration {step} ({name}) changes the schema"
            );
        }
    }
    for step in (0..total).rev() {
        Migrator::down(&db, Some(1)).await.unwrap();
        assert_eq!(applied(&db).await, step);
        assert_eq!(
            schema_of(&db).await,
            after_step[step],
            "rolling back migration {} restores the schema before it",
            step + 1
        );
    }
    assert!(
        schema_of(&db).await.is_empty(),
        "nothing is left after a full roll-back"
    );
}

async fn a_migrated_database_matches_a_fresh_one(kind: TestDatabase) {
    let dir = tempfile::tempdir().unwrap();
    let fresh_db = fresh(kind, &dir, "fresh.db").await;
    Migrator::up(&fresh_db, None).await.unwrap();

    let migrated = fresh(kind, &dir, "migrated.db").await;
    for _ in Migrator::migrations() {
        Migrator::up(&migrated, Some(1)).await.unwrap();
    }
    Migrator::down(&migrated, None).await.unwrap();
    Migrator::up(&migrated, Some(1)).await.unwrap();
    Migrator::up(&migrated, None).await.unwrap();

    let expected = schema_of(&fresh_db).await;
    assert!(
        expected.iter().any(|line| line.contains("outbox")),
        "{expected:#?}"
    );
    assert_eq!(schema_of(&migrated).await, expected);
}

#[tokio::test]
async fn every_migration_goes_up_and_down_on_sqlite() {
    every_migration_goes_up_and_down(TestDatabase::Sqlite).await;
}

#[tokio::test]
async fn every_migration_goes_up_and_down_on_postgres() {
    every_migration_goes_up_and_down(TestDatabase::Postgres).await;
}

#[tokio::test]
async fn a_stepwise_migrated_sqlite_database_has_the_schema_of_a_fresh_one() {
    a_migrated_database_matches_a_fresh_one(TestDatabase::Sqlite).await;
}

#[tokio::test]
async fn a_stepwise_migrated_postgres_database_has_the_schema_of_a_fresh_one() {
    a_migrated_database_matches_a_fresh_one(TestDatabase::Postgres).await;
}

#[tokio::test]
async fn the_event_tables_vacuum_by_fixed_thresholds_on_postgres() {
    let dir = tempfile::tempdir().unwrap();
    let db = fresh(TestDatabase::Postgres, &dir, "vacuum.db").await;
    Migrator::up(&db, None).await.unwrap();
    let options = db
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT array_to_string(reloptions, ',') AS line FROM pg_class WHERE relname = 'outbox'",
        ))
        .await
        .unwrap()
        .and_then(|row| row.try_get::<String>("", "line").ok())
        .unwrap_or_default();
    for setting in [
        "autovacuum_vacuum_scale_factor=0",
        "autovacuum_vacuum_threshold=10000",
        "autovacuum_analyze_threshold=20000",
    ] {
        assert!(options.contains(setting), "outbox has {setting}: {options}");
    }
}
