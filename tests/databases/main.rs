//! Tests of the persistence layer against real databases, run once per test command
//! (whatever `HERALD_TEST_DATABASE` says): migrations on SQLite and PostgreSQL, and the
//! PostgreSQL-only scenarios (concurrent slow writers, a database outage).

mod concurrency;
mod group_commit;
mod outage;
mod schema;
