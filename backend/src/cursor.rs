//! The live cursor: the one place that decides, for every event a live stream receives,
//! whether to deliver it, skip it, fill a gap from history first, or end the stream — and how
//! an ended stream is worded on the wire. `Rooms/Subscribe` streams and the edge's shared
//! `Edge/Follow` streams both use it, so they end alike.
//!
//! The rules, with `last` the offset delivered last:
//! - an event of another epoch ends the stream (`insufficient_state`): offsets are not
//!   comparable across epochs;
//! - an offset at or below `last` was already delivered (from history): skip it;
//! - `last + 1` is delivered;
//! - anything further ahead is a gap. A memory topic cannot prove what was in it and ends
//!   the stream; a durable topic reads the gap from the database, then goes on.
//!
//! The hub ending a subscriber follows the same split: a slow consumer of a memory topic is
//! ended (it resumes from the broker's window), while a durable topic's stream simply falls
//! back to paged reads from the database: catching up is never slowness.

use herald_proto::v1::{CloseCode, Event, StreamPosition};
use tonic::{Code, Status};

use crate::{error::stream_end, hub::CloseReason};

/// What to do with the next live item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Deliver,
    Skip,
    /// Read history after `last` before going on (durable topics).
    Fill,
    End(Ending),
}

/// Why a live stream ends: each reason has one gRPC status, one close code, one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    SlowConsumer,
    Shutdown,
    TokenExpired,
    EpochChanged,
    Gap,
    /// History was purged under a reader that was catching up.
    HistoryGone,
    /// The history of record could not be read.
    Unavailable,
    /// The subscriber's membership of the topic ended with the event just delivered (a
    /// removal, a leave): see [`crate::authz::Revocation`].
    Revoked,
    /// An operator disconnected the user (`Admin/DisconnectUser`).
    DisconnectedByAdmin,
}

impl Ending {
    pub fn parts(self) -> (Code, CloseCode, &'static str) {
        match self {
            Ending::SlowConsumer => (
                Code::ResourceExhausted,
                CloseCode::SlowConsumer,
                "slow consumer: the subscription fell too far behind",
            ),
            Ending::Shutdown => (Code::Unavailable, CloseCode::Shutdown, "shutting down"),
            Ending::TokenExpired => (
                Code::Unauthenticated,
                CloseCode::TokenExpired,
                "token expired",
            ),
            Ending::EpochChanged => (
                Code::Unavailable,
                CloseCode::InsufficientState,
                "the topic's epoch changed",
            ),
            Ending::Gap => (
                Code::Unavailable,
                CloseCode::InsufficientState,
                "live delivery would skip an offset",
            ),
            Ending::HistoryGone => (
                Code::Unavailable,
                CloseCode::InsufficientState,
                "retention purged events this subscription had not yet received",
            ),
            Ending::Unavailable => (
                Code::Unavailable,
                CloseCode::Unavailable,
                "the event history is temporarily unavailable",
            ),
            Ending::Revoked => (
                Code::PermissionDenied,
                CloseCode::PermissionDenied,
                "you are no longer a member of this topic (the event before this end removed you)",
            ),
            Ending::DisconnectedByAdmin => (
                Code::PermissionDenied,
                CloseCode::DisconnectedByAdmin,
                "disconnected by an administrator; do not reconnect automatically",
            ),
        }
    }

    /// The status that ends the stream, with `last` in its trailers and message.
    pub fn status(self, last: &StreamPosition) -> Status {
        let (code, close, message) = self.parts();
        stream_end(code, close, message, last)
    }
}

/// A live stream's position and lane.
#[derive(Debug, Clone)]
pub struct LiveCursor {
    last: StreamPosition,
    durable: bool,
}

impl LiveCursor {
    pub fn new(start: StreamPosition, durable: bool) -> LiveCursor {
        LiveCursor {
            last: start,
            durable,
        }
    }

    /// The last position delivered (or the start).
    pub fn last(&self) -> &StreamPosition {
        &self.last
    }

    pub fn is_durable(&self) -> bool {
        self.durable
    }

    pub fn accept(&self, event: &Event) -> Verdict {
        if event.epoch != self.last.epoch {
            return Verdict::End(Ending::EpochChanged);
        }
        if event.offset <= self.last.offset {
            return Verdict::Skip;
        }
        if event.offset == self.last.offset + 1 {
            return Verdict::Deliver;
        }
        if self.durable {
            Verdict::Fill
        } else {
            Verdict::End(Ending::Gap)
        }
    }

    /// Records a delivered event. Call only after [`LiveCursor::accept`] said `Deliver`, or
    /// for consecutive events read from history.
    pub fn advance(&mut self, event: &Event) {
        self.last.offset = event.offset;
    }

    /// What to do once the hub stopped feeding the stream.
    pub fn hub_closed(&self, reason: CloseReason) -> Verdict {
        match reason {
            CloseReason::SlowConsumer if self.durable => Verdict::Fill,
            CloseReason::SlowConsumer => Verdict::End(Ending::SlowConsumer),
            CloseReason::Shutdown | CloseReason::Open => Verdict::End(Ending::Shutdown),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_proto::codes::close_code_of;

    fn event(offset: u64, epoch: &str) -> Event {
        Event {
            offset,
            epoch: epoch.into(),
            ..Event::default()
        }
    }

    fn cursor(last: u64, durable: bool) -> LiveCursor {
        LiveCursor::new(
            StreamPosition {
                offset: last,
                epoch: "e".into(),
            },
            durable,
        )
    }

    #[test]
    fn the_next_offset_is_delivered_and_older_ones_are_skipped() {
        for durable in [false, true] {
            let cursor = cursor(5, durable);
            assert_eq!(cursor.accept(&event(6, "e")), Verdict::Deliver);
            assert_eq!(cursor.accept(&event(5, "e")), Verdict::Skip);
            assert_eq!(cursor.accept(&event(1, "e")), Verdict::Skip);
            assert_eq!(
                cursor.accept(&event(6, "other")),
                Verdict::End(Ending::EpochChanged)
            );
        }
    }

    #[test]
    fn a_gap_ends_a_memory_stream_and_is_filled_on_a_durable_one() {
        assert_eq!(
            cursor(5, false).accept(&event(8, "e")),
            Verdict::End(Ending::Gap)
        );
        assert_eq!(cursor(5, true).accept(&event(8, "e")), Verdict::Fill);
    }

    #[test]
    fn a_slow_durable_stream_falls_back_to_history_instead_of_ending() {
        assert_eq!(
            cursor(0, false).hub_closed(CloseReason::SlowConsumer),
            Verdict::End(Ending::SlowConsumer)
        );
        assert_eq!(
            cursor(0, true).hub_closed(CloseReason::SlowConsumer),
            Verdict::Fill
        );
        assert_eq!(
            cursor(0, true).hub_closed(CloseReason::Shutdown),
            Verdict::End(Ending::Shutdown)
        );
    }

    #[test]
    fn every_ending_carries_its_close_code_and_the_last_offset() {
        let mut cursor = cursor(6, true);
        cursor.advance(&event(7, "e"));
        let status = Ending::SlowConsumer.status(cursor.last());
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(close_code_of(&status), Some(CloseCode::SlowConsumer));
        assert!(status.message().contains("resume from offset 7"));
        let status = Ending::TokenExpired.status(cursor.last());
        assert_eq!(status.code(), Code::Unauthenticated);
        assert_eq!(close_code_of(&status), Some(CloseCode::TokenExpired));
    }
}
