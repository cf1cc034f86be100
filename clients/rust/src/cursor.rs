//! Where a subscription is in its topic, and what an arriving event means for it: the rules
//! that make a resumed stream gapless and duplicate-free, as a pure function.

use herald_proto::v1::StreamPosition;

/// The last position a subscriber has seen.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cursor {
    position: Option<StreamPosition>,
}

/// What to do with an event at (epoch, offset).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Next in order: hand it to the application.
    Deliver,
    /// Already delivered (a replay overlapping what was seen): drop it.
    Duplicate,
    /// From another epoch: the history the cursor refers to is gone, and the application must
    /// reload its state before this event means anything.
    NewEpoch,
}

impl Cursor {
    pub fn new(position: Option<StreamPosition>) -> Cursor {
        Cursor { position }
    }

    /// Where to resume from (`since` of the next subscribe).
    pub fn position(&self) -> Option<&StreamPosition> {
        self.position.as_ref()
    }

    /// Judges an event and, unless it is a duplicate, moves the cursor to it.
    pub fn accept(&mut self, epoch: &str, offset: u64) -> Verdict {
        let verdict = match &self.position {
            None => Verdict::Deliver,
            Some(seen) if seen.epoch != epoch => Verdict::NewEpoch,
            Some(seen) if offset <= seen.offset => return Verdict::Duplicate,
            Some(_) => Verdict::Deliver,
        };
        self.position = Some(StreamPosition {
            offset,
            epoch: epoch.to_owned(),
        });
        verdict
    }

    /// The server's `subscribed` frame: its position is the topic's top when the stream began.
    /// A fresh cursor starts there; `recovered = false` means the events after the cursor
    /// are gone, so the cursor restarts at the top and the application must reload.
    pub fn subscribed(&mut self, top: Option<&StreamPosition>, recovered: bool) {
        if self.position.is_none() || !recovered {
            self.position = top.cloned();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn events_in_order_are_delivered_and_a_replayed_overlap_is_dropped() {
        let mut cursor = Cursor::default();
        assert_eq!(cursor.accept("e", 1), Verdict::Deliver);
        assert_eq!(cursor.accept("e", 2), Verdict::Deliver);
        assert_eq!(cursor.accept("e", 2), Verdict::Duplicate);
        assert_eq!(cursor.accept("e", 1), Verdict::Duplicate);
        assert_eq!(cursor.accept("e", 3), Verdict::Deliver);
        assert_eq!(cursor.position().map(|p| p.offset), Some(3));
    }

    #[test]
    fn another_epoch_asks_for_a_reload_and_continues_there() {
        let mut cursor = Cursor::new(Some(StreamPosition {
            offset: 40,
            epoch: "old".into(),
        }));
        assert_eq!(cursor.accept("new", 1), Verdict::NewEpoch);
        assert_eq!(cursor.accept("new", 2), Verdict::Deliver);
    }

    #[test]
    fn a_stream_that_could_not_recover_restarts_the_cursor_at_the_top() {
        let top = StreamPosition {
            offset: 9,
            epoch: "e2".into(),
        };
        let mut cursor = Cursor::new(Some(StreamPosition {
            offset: 3,
            epoch: "e1".into(),
        }));
        cursor.subscribed(Some(&top), true);
        assert_eq!(
            cursor.position().map(|p| p.offset),
            Some(3),
            "recovered: keep"
        );
        cursor.subscribed(Some(&top), false);
        assert_eq!(cursor.position(), Some(&top));
        assert_eq!(cursor.accept("e2", 10), Verdict::Deliver);
    }

    proptest! {
        /// Whatever overlapping replays a flaky connection produces, the delivered offsets are
        /// exactly 1..=n, each once, in order.
        #[test]
        fn overlapping_replays_deliver_every_offset_once_in_order(
            cuts in proptest::collection::vec((1u64..60, 0u64..20), 0..12),
        ) {
            let n = 60;
            let mut cursor = Cursor::default();
            let mut delivered = vec![];
            let mut next: u64 = 1;
            for (upto, back) in cuts {
                // The server sends from some point at or before where the client was…
                let from = next.saturating_sub(back).max(1);
                for offset in from..=upto.max(from).min(n) {
                    if cursor.accept("e", offset) == Verdict::Deliver {
                        delivered.push(offset);
                    }
                }
                next = cursor.position().map_or(1, |p| p.offset + 1);
            }
            for offset in next.saturating_sub(3).max(1)..=n {
                if cursor.accept("e", offset) == Verdict::Deliver {
                    delivered.push(offset);
                }
            }
            prop_assert_eq!(delivered, (1..=n).collect::<Vec<_>>());
        }
    }
}
