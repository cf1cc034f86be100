//! The command connection to Redis shared by a node's Redis parts (broker, presence): one
//! multiplexed connection, opened on first use and opened again after it broke.
//!
//! A multiplexed connection never recovers once its socket is gone (Redis restarted, the
//! connection killed, a timeout): every later command fails. So a command that failed on I/O
//! makes the next one open a fresh connection.
//!
//! Each connection knows the `run_id` of the Redis process it reached (random per start of
//! `redis-server`), read before any other command is sent on it. The broker's scripts
//! compare it with the one stored next to the generation, which is how a Redis restarted
//! from an older snapshot is told apart from the one that wrote the keys (see
//! [`super::redis`]).

use std::{sync::Arc, time::Duration};

use redis::{AsyncConnectionConfig, RedisError, aio::MultiplexedConnection};
use tokio::sync::Mutex;

/// How long connecting, and each command, may take before it counts as failed.
pub(crate) const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);

/// A connection and the Redis process it reached.
#[derive(Debug, Clone)]
pub(crate) struct Connection {
    pub(crate) redis: MultiplexedConnection,
    pub(crate) run_id: Arc<str>,
}

#[derive(Debug)]
pub(crate) struct Commands {
    client: redis::Client,
    slot: Mutex<Option<Connection>>,
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
        Ok(self.connection().await?.redis)
    }

    /// The current connection with its Redis process's `run_id`, or a new one.
    pub(crate) async fn connection(&self) -> Result<Connection, RedisError> {
        let mut slot = self.slot.lock().await;
        if let Some(connection) = slot.as_ref() {
            return Ok(connection.clone());
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(RESPONSE_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT));
        let mut redis = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        let info: String = redis::cmd("INFO")
            .arg("server")
            .query_async(&mut redis)
            .await?;
        let run_id = run_id_of(&info).ok_or_else(|| {
            RedisError::from((
                redis::ErrorKind::UnexpectedReturnType,
                "INFO server has no run_id (is this Redis 7 or later?)",
            ))
        })?;
        let connection = Connection {
            redis,
            run_id: run_id.into(),
        };
        *slot = Some(connection.clone());
        Ok(connection)
    }

    /// Notes a failed command: after an I/O failure the next command reconnects.
    pub(crate) async fn failed(&self, error: &RedisError) {
        if broke(error) {
            self.forget().await;
        }
    }

    /// Drops the current connection: the next command opens a new one.
    pub(crate) async fn forget(&self) {
        *self.slot.lock().await = None;
    }
}

/// Whether `error` means the connection is unusable (rather than a refused command).
pub(crate) fn broke(error: &RedisError) -> bool {
    error.is_io_error() || error.is_connection_dropped() || error.is_timeout()
}

/// The `run_id` line of `INFO server`.
pub(crate) fn run_id_of(info: &str) -> Option<&str> {
    info.lines()
        .find_map(|line| line.strip_prefix("run_id:"))
        .map(str::trim)
        .filter(|run_id| !run_id.is_empty())
}

#[cfg(test)]
mod tests {
    use super::run_id_of;

    #[test]
    fn the_run_id_is_read_from_info_server() {
        let info = "# Server\r\nredis_version:7.0.15\r\nrun_id:4f1c0e\r\ntcp_port:6379\r\n";
        assert_eq!(run_id_of(info), Some("4f1c0e"));
        assert_eq!(run_id_of("# Server\r\nrun_id:\r\n"), None);
        assert_eq!(run_id_of("# Server\r\n"), None);
    }
}
