//! The one mapping from Herald's errors to gRPC statuses, with the trailers
//! ([`herald_proto::codes`]) that carry a [`CloseCode`] when Herald ends a stream.
//!
//! Modules keep their own typed errors; they convert into [`Error`], and [`Error`] converts
//! into [`tonic::Status`] here and nowhere else. Internal causes reach the log in full and the
//! wire as a generic message.

use herald_proto::{
    codes::{CLOSE_CODE_TRAILER, EPOCH_TRAILER, OFFSET_TRAILER, RETRY_AFTER_TRAILER},
    v1::{CloseCode, StreamPosition},
};
use tonic::{Code, Status, metadata::MetadataMap};

use crate::{
    auth::AuthError, broker::BrokerError, history::LogError, store::StoreError, topic::TopicError,
};

/// The wait suggested to clients when the database is unavailable.
pub const DATABASE_RETRY_AFTER_MS: u32 = 1000;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    InvalidArgument(String),
    #[error(transparent)]
    Topic(#[from] TopicError),
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    Unavailable(String),
    /// History no longer reaches back to the requested position.
    #[error("{0}")]
    HistoryGone(String),
    /// Too many requests of one kind from one sender; retry later.
    #[error("{0}")]
    RateLimited(String),
    /// Not in the state the request needs (an illegal transition, a review already
    /// decided); the message names the state.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The request names something that does not exist (or that the caller may not see).
    #[error("{0}")]
    NotFound(String),
    /// A shared bound of the server is reached (not the caller's fault); retry shortly.
    #[error("{0}")]
    Busy(String),
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Log(#[from] LogError),
}

impl Error {
    pub fn invalid(message: impl Into<String>) -> Error {
        Error::InvalidArgument(message.into())
    }
}

impl From<Error> for Status {
    fn from(error: Error) -> Status {
        match error {
            Error::InvalidArgument(message) => {
                with_code(Code::InvalidArgument, message, CloseCode::BadRequest)
            }
            Error::Topic(error) => with_code(
                Code::InvalidArgument,
                error.to_string(),
                CloseCode::BadRequest,
            ),
            Error::Auth(error) => error.into(),
            Error::PermissionDenied(message) => {
                with_code(Code::PermissionDenied, message, CloseCode::PermissionDenied)
            }
            Error::Unavailable(message) => {
                with_code(Code::Unavailable, message, CloseCode::Unavailable)
            }
            Error::HistoryGone(message) => with_code(
                Code::FailedPrecondition,
                message,
                CloseCode::InsufficientState,
            ),
            Error::Broker(BrokerError::AtCapacity(message)) => {
                with_code(Code::ResourceExhausted, message, CloseCode::Unavailable)
            }
            Error::Broker(error) => {
                crate::metrics::broker_error();
                tracing::error!(error = %error, "broker failed");
                with_code(
                    Code::Unavailable,
                    "the event broker is temporarily unavailable; retry with backoff".to_owned(),
                    CloseCode::Unavailable,
                )
            }
            Error::RateLimited(message) => {
                with_code(Code::ResourceExhausted, message, CloseCode::RateLimited)
            }
            Error::FailedPrecondition(message) => {
                with_code(Code::FailedPrecondition, message, CloseCode::BadRequest)
            }
            Error::NotFound(message) => with_code(Code::NotFound, message, CloseCode::BadRequest),
            Error::Busy(message) => {
                with_code(Code::ResourceExhausted, message, CloseCode::Unavailable)
            }
            Error::Store(error) => store_status(error),
            Error::Log(LogError::Unavailable(cause)) => {
                store_status(StoreError::Unavailable(sea_orm::DbErr::Custom(cause)))
            }
            Error::Log(LogError::Failed(cause)) => {
                crate::metrics::database_error();
                tracing::error!(error = %cause, "event log failed");
                Status::internal("internal database error")
            }
        }
    }
}

fn store_status(error: StoreError) -> Status {
    match error {
        StoreError::Unavailable(cause) => {
            crate::metrics::database_error();
            tracing::warn!(error = %cause, "database unavailable");
            let mut status = with_code(
                Code::Unavailable,
                format!(
                    "the database is temporarily unavailable; retry in {DATABASE_RETRY_AFTER_MS} ms with backoff"
                ),
                CloseCode::Unavailable,
            );
            status
                .metadata_mut()
                .insert(RETRY_AFTER_TRAILER, DATABASE_RETRY_AFTER_MS.into());
            status
        }
        StoreError::Invalid(message) => {
            with_code(Code::InvalidArgument, message, CloseCode::BadRequest)
        }
        StoreError::Database(cause) => {
            crate::metrics::database_error();
            tracing::error!(error = %cause, "database failed");
            Status::internal("internal database error")
        }
    }
}

impl From<AuthError> for Status {
    fn from(error: AuthError) -> Status {
        let code = if matches!(error, AuthError::Expired) {
            CloseCode::TokenExpired
        } else {
            CloseCode::InvalidToken
        };
        with_code(Code::Unauthenticated, error.to_string(), code)
    }
}

/// A status whose trailers name the [`CloseCode`].
pub fn with_code(code: Code, message: String, close: CloseCode) -> Status {
    let mut metadata = MetadataMap::new();
    metadata.insert(CLOSE_CODE_TRAILER, close_code_value(close));
    Status::with_metadata(code, message, metadata)
}

/// The status that ends a stream Herald closes, carrying the last position it delivered so the
/// client resumes from there.
pub fn stream_end(code: Code, close: CloseCode, message: &str, last: &StreamPosition) -> Status {
    let mut metadata = MetadataMap::new();
    metadata.insert(CLOSE_CODE_TRAILER, close_code_value(close));
    metadata.insert(OFFSET_TRAILER, last.offset.into());
    if let Ok(epoch) = last.epoch.parse() {
        metadata.insert(EPOCH_TRAILER, epoch);
    }
    let message = format!(
        "{message}; resume from offset {} (epoch {})",
        last.offset, last.epoch
    );
    Status::with_metadata(code, message, metadata)
}

fn close_code_value(close: CloseCode) -> tonic::metadata::AsciiMetadataValue {
    // Enum names are ASCII identifiers, so this cannot fail.
    tonic::metadata::AsciiMetadataValue::from_static(close.as_str_name())
}

#[cfg(test)]
mod tests {
    use herald_proto::codes::close_code_of;

    use super::*;

    #[test]
    fn a_stream_end_carries_the_last_position_in_trailers_and_message() {
        let last = StreamPosition {
            offset: 42,
            epoch: "e1".into(),
        };
        let status = stream_end(
            Code::Unavailable,
            CloseCode::Shutdown,
            "shutting down",
            &last,
        );
        assert_eq!(close_code_of(&status), Some(CloseCode::Shutdown));
        assert_eq!(status.metadata().get(OFFSET_TRAILER).unwrap(), "42");
        assert_eq!(status.metadata().get(EPOCH_TRAILER).unwrap(), "e1");
        assert!(status.message().contains("resume from offset 42"));
    }
}
