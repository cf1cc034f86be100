//! Snapshot + position: a domain read returns its rows together with the position of the
//! topics they reflect, read in one database snapshot. A client that then subscribes with
//! `since = position` sees exactly the changes after its snapshot: none twice, none missing,
//! because a domain write changes its rows and takes its event offsets in one transaction.
//!
//! ```no_run
//! # use herald_backend::{store::{Store, StoreError}, topic::Topic};
//! # use sea_orm::{ConnectionTrait, Statement};
//! # async fn list_orders(store: &Store) -> Result<(), StoreError> {
//! let topic = Topic::parse("order:42").expect("a valid topic");
//! let snapshot = store.snapshot().await?;
//! // Every read on `snapshot.conn()` sees the same committed state…
//! let rows = snapshot
//!     .conn()
//!     .query_all_raw(Statement::from_string(
//!         snapshot.conn().get_database_backend(),
//!         "SELECT key, value FROM server_meta",
//!     ))
//!     .await?;
//! // …and so does the position: the last offset whose change those rows include.
//! let position = snapshot.position(&topic).await?;
//! snapshot.end().await?;
//! // Answer `rows` with `position`; the client subscribes with `since = position`.
//! # let _ = (rows, position);
//! # Ok(())
//! # }
//! ```

use herald_proto::v1::StreamPosition;
use sea_orm::{
    AccessMode, DatabaseTransaction, DbBackend, IsolationLevel, SqliteTransactionMode,
    TransactionOptions, TransactionTrait,
};

use super::{Store, StoreError};
use crate::topic::Topic;

/// One read-only snapshot of the database (SQLite: one read transaction; PostgreSQL:
/// REPEATABLE READ, READ ONLY). Ending or dropping it releases the snapshot.
///
/// It holds one pooled connection until then: never wait for another one while holding it
/// (an authorization check, a store call), or as many concurrent readers as the pool has
/// connections each hold one and wait for a second until the pool times out. Read what the
/// snapshot must see, end it, then check or write.
#[derive(Debug)]
pub struct ReadSnapshot {
    store: Store,
    tx: DatabaseTransaction,
}

impl Store {
    /// Opens a read snapshot for a domain read (see the module docs).
    pub async fn snapshot(&self) -> Result<ReadSnapshot, StoreError> {
        let options = match self.backend() {
            DbBackend::Sqlite => TransactionOptions {
                // The snapshot is taken by the first read; nothing waits for the writer.
                sqlite_transaction_mode: Some(SqliteTransactionMode::Deferred),
                ..TransactionOptions::default()
            },
            _ => TransactionOptions {
                isolation_level: Some(IsolationLevel::RepeatableRead),
                access_mode: Some(AccessMode::ReadOnly),
                sqlite_transaction_mode: None,
            },
        };
        let tx = self
            .db()
            .begin_with_options(options)
            .await
            .map_err(|error| {
                let error = StoreError::from(error);
                self.report(&error);
                error
            })?;
        Ok(ReadSnapshot {
            store: self.clone(),
            tx,
        })
    }
}

impl ReadSnapshot {
    /// The snapshot's connection, for sea-orm reads.
    pub fn conn(&self) -> &DatabaseTransaction {
        &self.tx
    }

    /// The topic's position in this snapshot: its last committed offset and its epoch.
    pub async fn position(&self, topic: &Topic) -> Result<StreamPosition, StoreError> {
        self.store.top_on(&self.tx, topic).await
    }

    /// The positions of several topics in this snapshot (one query), in the order given.
    pub async fn positions(&self, topics: &[Topic]) -> Result<Vec<StreamPosition>, StoreError> {
        self.store.tops_on(&self.tx, topics).await
    }

    /// Releases the snapshot.
    pub async fn end(self) -> Result<(), StoreError> {
        Ok(self.tx.commit().await?)
    }
}
