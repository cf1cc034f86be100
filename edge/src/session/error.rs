//! What a session answers when it refuses something, and why it closes a socket.
//!
//! Both are mapped to the wire here and nowhere else: a [`RequestError`] becomes an error
//! frame (`{"id":N,"error":{"code","message"}}`) and the socket stays open; a [`CloseReason`]
//! becomes a [`SessionClose`], the code and reason of the socket's close frame.

use std::{error::Error as StdError, sync::Arc};

use axum::extract::ws::{CloseFrame, Utf8Bytes};
use herald_proto::{codes::close_code_of, v1::CloseCode};
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError, ProtocolError};
use tonic::{Code, Status};

use crate::protocol::{self, FrameError};

/// A request the session refuses; answered with an error frame, the socket stays open.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RequestError {
    #[error(transparent)]
    BadFrame(#[from] FrameError),
    #[error("binary frames are not supported; send JSON text frames")]
    BinaryFrame,
    #[error("send `auth` with a token first")]
    NotAuthenticated,
    #[error("too many requests sent before `auth` was answered")]
    TooManyHeld,
    #[error("too many requests; slow down")]
    RateLimited,
    #[error("already authenticated; use `refresh` to replace the token")]
    AlreadyAuthenticated,
    #[error("`auth` is already in progress")]
    AuthInProgress,
    #[error("already subscribed to `{0}`")]
    AlreadySubscribed(Arc<str>),
    #[error("not subscribed to `{0}`")]
    NotSubscribed(Arc<str>),
    #[error("a socket may hold at most {0} subscriptions")]
    TooManySubscriptions(usize),
    #[error("at most {0} calls may be in flight per socket")]
    TooManyCalls(usize),
    #[error(
        "this user holds its limit of {0} sockets on this edge (edge.connections.max_per_user)"
    )]
    TooManySockets(usize),
    /// A backend call failed, or could not be made: passed through by its status.
    #[error("{}", .0.message())]
    Backend(Status),
}

impl RequestError {
    /// The `code` of the error frame: a gRPC status name, or `rate_limited`.
    pub(crate) fn code(&self) -> &'static str {
        let code = match self {
            RequestError::BadFrame(_) | RequestError::BinaryFrame => Code::InvalidArgument,
            RequestError::NotAuthenticated => Code::Unauthenticated,
            RequestError::TooManyHeld
            | RequestError::TooManySubscriptions(_)
            | RequestError::TooManyCalls(_)
            | RequestError::TooManySockets(_) => Code::ResourceExhausted,
            RequestError::RateLimited => return protocol::RATE_LIMITED,
            RequestError::AlreadyAuthenticated | RequestError::AuthInProgress => {
                Code::FailedPrecondition
            }
            RequestError::AlreadySubscribed(_) => Code::AlreadyExists,
            RequestError::NotSubscribed(_) => Code::NotFound,
            // A backend rate (signals, a user's writes, a topic's publishes) reads like the
            // edge's own: the client backs off the same way.
            RequestError::Backend(status)
                if close_code_of(status) == Some(CloseCode::RateLimited) =>
            {
                return protocol::RATE_LIMITED;
            }
            RequestError::Backend(status) => status.code(),
        };
        protocol::status_code_name(code)
    }

    /// The error frame answering request `id` (`None` when the frame had no readable id).
    pub(crate) fn frame(&self, id: Option<u64>) -> String {
        protocol::error_frame(id, self.code(), &self.to_string())
    }
}

/// Why the session closes a socket. The text is the close frame's reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum CloseReason {
    #[error("shutdown: reconnect")]
    Shutdown,
    #[error("slow: the socket fell too far behind")]
    SlowConsumer,
    #[error("stale: no auth within the time limit")]
    AuthTimeout,
    #[error("stale: no pong within the time limit")]
    PongTimeout,
    #[error("rate limited: too many requests")]
    RateAbuse,
    #[error("invalid token")]
    InvalidToken,
    #[error("the backend is unavailable: reconnect")]
    BackendUnavailable,
    #[error(
        "frame too large: the frame is {size} bytes; the limit is {limit} bytes (edge.limits.max_frame_bytes)"
    )]
    FrameTooBig { size: usize, limit: usize },
    /// The peer broke RFC 6455's framing (an unmasked frame, an unknown opcode, a control
    /// frame over 125 bytes or fragmented, …): the text says which rule.
    #[error("protocol error: {0}")]
    ProtocolViolation(String),
    #[error("invalid UTF-8 in a text frame")]
    InvalidUtf8,
    #[error("limit exceeded: the user holds {0} sockets (edge.connections.max_per_user)")]
    TooManySockets(usize),
    #[error("disconnected by an administrator")]
    DisconnectedByAdmin,
}

impl CloseReason {
    /// The close code, from Herald's table, or RFC 6455's for an oversize frame.
    pub(crate) fn code(&self) -> WireCloseCode {
        let code = match self {
            CloseReason::Shutdown => CloseCode::Shutdown,
            CloseReason::SlowConsumer => CloseCode::SlowConsumer,
            CloseReason::AuthTimeout | CloseReason::PongTimeout => CloseCode::Stale,
            CloseReason::RateAbuse => CloseCode::RateLimited,
            CloseReason::InvalidToken => CloseCode::InvalidToken,
            CloseReason::BackendUnavailable => CloseCode::Unavailable,
            CloseReason::TooManySockets(_) => CloseCode::LimitExceeded,
            CloseReason::DisconnectedByAdmin => CloseCode::DisconnectedByAdmin,
            CloseReason::FrameTooBig { .. } => return WireCloseCode::MessageTooBig,
            CloseReason::ProtocolViolation(_) => return WireCloseCode::ProtocolError,
            CloseReason::InvalidUtf8 => return WireCloseCode::InvalidPayload,
        };
        WireCloseCode::Herald(code)
    }

    /// Why a socket whose `auth` (or whose `refresh` before any `auth`) failed is closed.
    pub(crate) fn auth_refused(status: &Status) -> CloseReason {
        if status.code() == Code::Unauthenticated {
            CloseReason::InvalidToken
        } else {
            CloseReason::BackendUnavailable
        }
    }

    /// The close a failed socket read calls for: an oversize frame is closed with 1009 and
    /// the configured `limit`, a framing violation with 1002 naming the rule, invalid UTF-8
    /// with 1007 (RFC 6455 §7.4.1); any other failure means the peer is gone and gets no close.
    ///
    /// Matched by type through the error's source chain (axum wraps tungstenite's error).
    pub(crate) fn for_read_error(
        error: &(dyn StdError + 'static),
        limit: usize,
    ) -> Option<CloseReason> {
        let mut next = Some(error);
        while let Some(error) = next {
            match error.downcast_ref::<WsError>() {
                Some(WsError::Capacity(CapacityError::MessageTooLong { size, .. })) => {
                    return Some(CloseReason::FrameTooBig { size: *size, limit });
                }
                // The TCP connection ended without a close: nobody is left to tell.
                Some(WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake)) => {
                    return None;
                }
                Some(WsError::Protocol(violation)) => {
                    return Some(CloseReason::ProtocolViolation(violation.to_string()));
                }
                Some(WsError::Utf8(_)) => return Some(CloseReason::InvalidUtf8),
                _ => {}
            }
            next = error.source();
        }
        None
    }
}

/// A close code on the wire: one of Herald's (`herald.v1.CloseCode`), or one of RFC 6455's
/// own (1002, 1007, 1009), which belong to the WebSocket layer and are not in Herald's table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WireCloseCode {
    Herald(CloseCode),
    ProtocolError,
    InvalidPayload,
    MessageTooBig,
}

impl From<WireCloseCode> for u16 {
    fn from(code: WireCloseCode) -> u16 {
        match code {
            // The table's codes are 3000–3999 (RFC 6455's range for applications): they fit.
            WireCloseCode::Herald(code) => code as u16,
            WireCloseCode::ProtocolError => 1002,
            WireCloseCode::InvalidPayload => 1007,
            WireCloseCode::MessageTooBig => 1009,
        }
    }
}

/// How the session closes a socket: the close frame's code and reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SessionClose {
    pub(crate) code: WireCloseCode,
    pub(crate) reason: String,
}

/// RFC 6455 limits a close frame's reason to 123 bytes.
const MAX_REASON_BYTES: usize = 123;

impl From<CloseReason> for SessionClose {
    fn from(reason: CloseReason) -> SessionClose {
        let mut text = reason.to_string();
        if text.len() > MAX_REASON_BYTES {
            let mut end = MAX_REASON_BYTES;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
        }
        SessionClose {
            code: reason.code(),
            reason: text,
        }
    }
}

impl SessionClose {
    pub(crate) fn frame(&self) -> CloseFrame {
        CloseFrame {
            code: self.code.into(),
            reason: Utf8Bytes::from(self.reason.as_str()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;

    /// What the backend answers over one of its rates: RESOURCE_EXHAUSTED carrying close code
    /// RATE_LIMITED in its trailers.
    fn rate_limited_by_the_backend() -> Status {
        let mut metadata = tonic::metadata::MetadataMap::new();
        metadata.insert(
            herald_proto::codes::CLOSE_CODE_TRAILER,
            tonic::metadata::AsciiMetadataValue::from_static(CloseCode::RateLimited.as_str_name()),
        );
        Status::with_metadata(Code::ResourceExhausted, "too many writes", metadata)
    }

    #[test]
    fn each_refusal_has_its_documented_code() {
        let cases = [
            (
                RequestError::from(FrameError("x".into())),
                "invalid_argument",
            ),
            (RequestError::BinaryFrame, "invalid_argument"),
            (RequestError::NotAuthenticated, "unauthenticated"),
            (RequestError::TooManyHeld, "resource_exhausted"),
            (RequestError::RateLimited, "rate_limited"),
            (RequestError::AlreadyAuthenticated, "failed_precondition"),
            (RequestError::AuthInProgress, "failed_precondition"),
            (
                RequestError::AlreadySubscribed("room:a".into()),
                "already_exists",
            ),
            (RequestError::NotSubscribed("room:a".into()), "not_found"),
            (RequestError::TooManySubscriptions(3), "resource_exhausted"),
            (RequestError::TooManyCalls(16), "resource_exhausted"),
            (
                RequestError::Backend(rate_limited_by_the_backend()),
                "rate_limited",
            ),
            (
                RequestError::Backend(Status::resource_exhausted("full")),
                "resource_exhausted",
            ),
            (
                RequestError::Backend(Status::permission_denied("no")),
                "permission_denied",
            ),
        ];
        for (error, code) in cases {
            assert_eq!(error.code(), code, "{error:?}");
        }
    }

    #[test]
    fn an_error_frame_carries_the_id_code_and_message() {
        let frame = RequestError::TooManySubscriptions(3).frame(Some(7));
        assert_eq!(
            frame,
            r#"{"id":7,"error":{"code":"resource_exhausted","message":"a socket may hold at most 3 subscriptions"}}"#
        );
        let frame = RequestError::BinaryFrame.frame(None);
        assert!(frame.starts_with(r#"{"id":null,"error":{"code":"invalid_argument""#));
    }

    #[test]
    fn close_reasons_use_the_close_code_table_and_1009_for_oversize_frames() {
        let code = |reason: CloseReason| u16::from(SessionClose::from(reason).code);
        assert_eq!(code(CloseReason::Shutdown), 3000);
        assert_eq!(code(CloseReason::SlowConsumer), 3001);
        assert_eq!(code(CloseReason::AuthTimeout), 3004);
        assert_eq!(code(CloseReason::PongTimeout), 3004);
        assert_eq!(code(CloseReason::BackendUnavailable), 3005);
        assert_eq!(code(CloseReason::InvalidToken), 3500);
        assert_eq!(code(CloseReason::RateAbuse), 3504);
        assert_eq!(code(CloseReason::FrameTooBig { size: 2, limit: 1 }), 1009);
        assert_eq!(code(CloseReason::ProtocolViolation("x".into())), 1002);
        assert_eq!(code(CloseReason::InvalidUtf8), 1007);
    }

    #[test]
    fn framing_violations_and_bad_utf8_are_named_but_a_reset_is_a_peer_gone() {
        let unmasked = axum::Error::new(WsError::Protocol(ProtocolError::UnmaskedFrameFromClient));
        let reason = CloseReason::for_read_error(&unmasked, 1).expect("a close");
        assert_eq!(u16::from(reason.code()), 1002);
        assert!(reason.to_string().contains("unmasked"), "{reason}");
        let utf8 = axum::Error::new(WsError::Utf8("bad".into()));
        assert_eq!(
            CloseReason::for_read_error(&utf8, 1),
            Some(CloseReason::InvalidUtf8)
        );
        let reset = axum::Error::new(WsError::Protocol(
            ProtocolError::ResetWithoutClosingHandshake,
        ));
        assert_eq!(CloseReason::for_read_error(&reset, 1), None);
    }

    #[test]
    fn an_oversize_read_is_recognised_by_its_type_and_reports_the_configured_limit() {
        let too_long = axum::Error::new(WsError::Capacity(CapacityError::MessageTooLong {
            size: 70_000,
            max_size: 65_536,
        }));
        let reason = CloseReason::for_read_error(&too_long, 65_536);
        assert_eq!(
            reason.map(|r| r.to_string()).as_deref(),
            Some(
                "frame too large: the frame is 70000 bytes; the limit is 65536 bytes (edge.limits.max_frame_bytes)"
            )
        );
    }

    #[test]
    fn other_read_failures_are_a_peer_gone_whatever_their_text_says() {
        let reset = axum::Error::new(WsError::ConnectionClosed);
        assert_eq!(CloseReason::for_read_error(&reset, 1), None);
        let lookalike = axum::Error::new(io::Error::other("message too long: capacity too big"));
        assert_eq!(CloseReason::for_read_error(&lookalike, 1), None);
    }

    #[test]
    fn a_reason_longer_than_a_close_frame_allows_is_cut_to_123_bytes() {
        let close = SessionClose::from(CloseReason::FrameTooBig {
            size: usize::MAX,
            limit: usize::MAX,
        });
        assert!(close.reason.len() <= 123, "{}", close.reason);
        assert!(close.reason.starts_with("frame too large: the frame is"));
    }
}
