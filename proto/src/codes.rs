//! The code table's rules, for every Rust client and server of `herald.v1`: which
//! [`CloseCode`]s ask for a reconnect, and the gRPC trailers that carry a code and the last
//! position of a stream Herald ended. The table itself is `herald/v1/codes.proto`.

use tonic::Status;

use crate::v1::CloseCode;

/// Trailer carrying the [`CloseCode`] name (`CLOSE_CODE_SLOW_CONSUMER`) of a stream or call
/// Herald ended.
pub const CLOSE_CODE_TRAILER: &str = "herald-close-code";
/// Trailer carrying the offset of the last event delivered on the ended stream.
pub const OFFSET_TRAILER: &str = "herald-offset";
/// Trailer carrying the epoch of the last event delivered on the ended stream.
pub const EPOCH_TRAILER: &str = "herald-epoch";
/// Trailer on UNAVAILABLE answers caused by the database: milliseconds to wait before retrying.
pub const RETRY_AFTER_TRAILER: &str = "herald-retry-after-ms";

/// The first reconnect-class code: 3000–3499 reconnect and resume, nothing is lost.
const RECONNECT_FROM: i32 = 3000;
/// The first terminal code: 3500–3999 must not be retried unchanged.
const TERMINAL_FROM: i32 = 3500;

impl CloseCode {
    /// Whether a client should reconnect (and resume with `since`) after a stream ended with
    /// this code. See [`reconnects`].
    pub fn should_reconnect(self) -> bool {
        reconnects(self as i32)
    }
}

/// Whether a close-code number asks the client to reconnect: 3000–3499 do, everything else
/// (3500–3999 terminal, WebSocket codes below 3000) does not. Decided by range, so a client
/// classifies codes newer than itself too.
pub fn reconnects(code: i32) -> bool {
    (RECONNECT_FROM..TERMINAL_FROM).contains(&code)
}

/// Reads the [`CloseCode`] that Herald put in a status's trailers; `None` when there is none
/// (a transport failure) or it names a code this build does not know.
pub fn close_code_of(status: &Status) -> Option<CloseCode> {
    let value = status.metadata().get(CLOSE_CODE_TRAILER)?.to_str().ok()?;
    CloseCode::from_str_name(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_codes_are_classified_by_their_number_range() {
        assert!(CloseCode::Shutdown.should_reconnect());
        assert!(CloseCode::SlowConsumer.should_reconnect());
        assert!(CloseCode::TokenExpired.should_reconnect());
        assert!(CloseCode::Internal.should_reconnect());
        assert!(!CloseCode::InvalidToken.should_reconnect());
        assert!(!CloseCode::PermissionDenied.should_reconnect());
        assert!(!CloseCode::Unspecified.should_reconnect());
    }

    #[test]
    fn unknown_numbers_are_classified_by_range_too() {
        assert!(reconnects(3499));
        assert!(!reconnects(3500));
        assert!(!reconnects(2999));
        assert!(!reconnects(1000));
    }

    #[test]
    fn the_close_code_is_read_from_its_trailer() {
        let mut status = Status::resource_exhausted("slow");
        status.metadata_mut().insert(
            CLOSE_CODE_TRAILER,
            CloseCode::SlowConsumer.as_str_name().parse().unwrap(),
        );
        assert_eq!(close_code_of(&status), Some(CloseCode::SlowConsumer));
        assert_eq!(close_code_of(&Status::unavailable("reset")), None);
    }
}
