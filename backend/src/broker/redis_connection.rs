//! The command connection to Redis shared by a node's Redis parts (broker, presence): one
//! multiplexed connection, opened on first use and opened again after it broke.
//!
//! A multiplexed connection never recovers once its socket is gone (Redis restarted, the
//! connection killed, a timeout): every later command fails. So a command that failed on I/O
//! makes the next one open a fresh connection.

use std::time::Duration;

use redis::{AsyncConnectionConfig, RedisError, aio::MultiplexedConnection};
use tokio::sync::Mutex;

/// How long connecting, and each command, may take before it counts as failed.
pub(crate) const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug)]
pub(crate) struct Commands {
    client: redis::Client,
    slot: Mutex<Option<MultiplexedConnection>>,
}

impl Commands {
    pub(crate) fn new(client: redis::Client) -> Commands {
        Commands {
            client,
            slot: Mutex::new(None),
        }
    }

    /// The current connection, or a new one.
    pub(crate) async fn get(&self) -> Result<MultiplexedConnection, RedisError> {
        let mut slot = self.slot.lock().await;
        if let Some(connection) = slot.as_ref() {
            return Ok(connection.clone());
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(RESPONSE_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT));
        let connection = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        *slot = Some(connection.clone());
        Ok(connection)
    }

    /// Notes a failed command: after an I/O failure the next command reconnects.
    pub(crate) async fn failed(&self, error: &RedisError) {
        if broke(error) {
            *self.slot.lock().await = None;
        }
    }
}

/// Whether `error` means the connection is unusable (rather than a refused command).
pub(crate) fn broke(error: &RedisError) -> bool {
    error.is_io_error() || error.is_connection_dropped() || error.is_timeout()
}
