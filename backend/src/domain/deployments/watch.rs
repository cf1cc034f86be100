//! `Watch`: a subscription to `deployment:<id>` (the node's own attach machinery: paged
//! catch-up from the database, then live, gapless), seen through a [`WatchFilter`] that turns
//! its events into `DeploymentEvent`s.
//!
//! Without `since` (a fresh watch), the snapshot that opened it decides the catch-up: the
//! current status comes first, then the lines so far (status events up to the snapshot are
//! skipped: the first message already says where the deployment stands), then everything
//! live. In the catch-up the truncation is applied as the snapshot knew it: dropped lines are
//! left out and one `truncated` marker stands where they were, whether a page came from the
//! database (where the dropped lines are already gone) or from the broker's cache of recent
//! events (where they may not be). With `tail_lines`, the subscription starts at the chunk
//! holding the first wanted line and earlier lines are left out.
//!
//! With a `since` the history still covers, every event after it is passed on as it is.
//!
//! Either way the watch ends after the terminal status: after delivering it live, or, for a
//! deployment already finished at the snapshot, once the replay reached the snapshot's top.

use std::collections::VecDeque;

use herald_proto::v1::{
    DeploymentEvent, DeploymentLogs, Event, StreamPosition, deployment_event, event::Body,
};

use super::{
    events,
    rules::{Deployment, is_terminal},
};

/// Where a watch starts, decided from the snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Continue after `since` (covered by history).
    Resume { since: StreamPosition },
    /// Start over: the current status, then the log from offset `start` on (lines from
    /// `first_line`), then live. `recovered` is what the watch reports (false when a `since`
    /// could not be continued).
    Fresh {
        start: u64,
        first_line: u64,
        recovered: bool,
    },
}

/// Turns the topic's events into a watch's messages, and says when the watch is over.
#[derive(Debug)]
pub struct WatchFilter {
    epoch: String,
    recovered: bool,
    /// Messages ready to send, in order.
    queued: VecDeque<DeploymentEvent>,
    /// Offsets up to this are the catch-up of a fresh watch (0: none).
    catch_up_until: u64,
    /// Lines below this are left out of the catch-up (tail_lines).
    first_line: u64,
    /// The dropped range the catch-up applies, and whether its marker was sent.
    dropped: Option<(u64, u64)>,
    limit: u64,
    marker_sent: bool,
    /// The watch is over once an event at or beyond this offset was seen (finished at the
    /// snapshot).
    end_at: Option<u64>,
    /// The offset of the last event seen.
    seen: u64,
    /// A terminal status was queued: end once the queue is sent.
    ending: bool,
}

impl WatchFilter {
    /// The filter of `plan` for the deployment as the snapshot saw it (`state`, at `top`), and
    /// the position to subscribe from.
    pub fn new(plan: Plan, state: &Deployment, top: StreamPosition) -> (StreamPosition, Self) {
        let finished = state.is_finished();
        let mut filter = WatchFilter {
            epoch: top.epoch.clone(),
            recovered: true,
            queued: VecDeque::new(),
            catch_up_until: 0,
            first_line: 1,
            dropped: None,
            limit: state.log.limit,
            marker_sent: false,
            end_at: finished.then_some(top.offset),
            seen: 0,
            ending: false,
        };
        let start = match plan {
            Plan::Resume { since } => {
                filter.seen = since.offset;
                since.offset
            }
            Plan::Fresh {
                start,
                first_line,
                recovered,
            } => {
                filter.recovered = recovered;
                filter.catch_up_until = top.offset;
                filter.first_line = first_line;
                filter.dropped = state.log.dropped.filter(|(_, last)| first_line <= *last);
                filter.seen = start;
                let status = events::status_of(state);
                filter.push(deployment_event::Event::Status(status), start);
                start
            }
        };
        let position = StreamPosition {
            offset: start,
            epoch: top.epoch,
        };
        (position, filter)
    }

    fn push(&mut self, event: deployment_event::Event, offset: u64) {
        self.queued.push_back(DeploymentEvent {
            event: Some(event),
            position: Some(StreamPosition {
                offset,
                epoch: self.epoch.clone(),
            }),
            recovered: self.recovered,
        });
    }

    /// The next message to send, if one is ready.
    pub fn next_ready(&mut self) -> Option<DeploymentEvent> {
        self.queued.pop_front()
    }

    /// Whether the watch is over (once nothing is queued any more).
    pub fn is_over(&self) -> bool {
        self.queued.is_empty() && (self.ending || self.end_at.is_some_and(|end| self.seen >= end))
    }

    /// Takes a live chunk of log lines (past the catch-up), which goes out unchanged: records
    /// it as seen and returns the position and `recovered` its message carries. `None` while
    /// catching up, where the chunk must go through [`WatchFilter::accept`] (tail and
    /// truncation apply), or when messages are still queued ahead of it.
    pub fn pass_live_logs(&mut self, offset: u64) -> Option<(StreamPosition, bool)> {
        if offset <= self.catch_up_until || !self.queued.is_empty() || self.ending {
            return None;
        }
        self.seen = self.seen.max(offset);
        let position = StreamPosition {
            offset,
            epoch: self.epoch.clone(),
        };
        Some((position, self.recovered))
    }

    /// Takes one event of the topic.
    pub fn accept(&mut self, event: Event) {
        self.seen = self.seen.max(event.offset);
        let offset = event.offset;
        let catching_up = offset <= self.catch_up_until;
        match event.body {
            Some(Body::DeploymentStatus(status)) => {
                if catching_up {
                    return; // the first message already said where it stands
                }
                let terminal = herald_proto::v1::DeploymentState::try_from(status.status)
                    .is_ok_and(is_terminal);
                self.push(deployment_event::Event::Status(status), offset);
                if terminal {
                    self.ending = true;
                }
            }
            Some(Body::DeploymentLogs(logs)) => {
                let logs = if catching_up {
                    self.catch_up_logs(logs)
                } else {
                    Some(logs)
                };
                if let Some(logs) = logs
                    && (!logs.lines.is_empty() || logs.truncated.is_some())
                {
                    self.push(deployment_event::Event::Logs(logs), offset);
                }
            }
            // Other events on the topic (a service's own JSON events) are not a watch's.
            _ => {}
        }
    }

    /// A chunk of the catch-up: tail and truncation applied, one marker.
    fn catch_up_logs(&mut self, mut logs: DeploymentLogs) -> Option<DeploymentLogs> {
        let first_line = self.first_line;
        logs.lines.retain(|line| line.number >= first_line);
        if let Some(stored) = logs.truncated.take()
            && stored.first_line <= stored.last_line
        {
            // The database's marker may name a wider range than the snapshot knew.
            self.dropped = Some(match self.dropped {
                Some((first, last)) => (first.min(stored.first_line), last.max(stored.last_line)),
                None => (stored.first_line, stored.last_line),
            });
        }
        if let Some((first, last)) = self.dropped {
            logs.lines
                .retain(|line| line.number < first || line.number > last);
            let past_marker = logs.lines.iter().any(|line| line.number > last);
            let at_marker = past_marker
                || logs
                    .lines
                    .last()
                    .is_some_and(|line| line.number + 1 == first);
            if !self.marker_sent && at_marker {
                self.marker_sent = true;
                logs.truncated = Some(events::truncation((first, last), self.limit));
            }
        }
        Some(logs)
    }
}

#[cfg(test)]
mod tests {
    use herald_proto::v1::{
        DeploymentLogs, DeploymentStage, DeploymentState, DeploymentStatus, LogLine,
        deployment_event::Event as E,
    };

    use super::*;
    use crate::domain::deployments::rules::{DeploymentId, LogState};

    fn state(status: DeploymentState, lines: u64, dropped: Option<(u64, u64)>) -> Deployment {
        let mut state = Deployment::pending(DeploymentId::new(1).unwrap(), "alice", 0, 100);
        state.status = status;
        state.stage = DeploymentStage::Building;
        state.log = LogState {
            lines,
            limit: 100,
            dropped,
        };
        state
    }

    fn top(offset: u64) -> StreamPosition {
        StreamPosition {
            offset,
            epoch: "e".into(),
        }
    }

    fn logs(offset: u64, numbers: std::ops::RangeInclusive<u64>) -> Event {
        Event {
            offset,
            body: Some(Body::DeploymentLogs(DeploymentLogs {
                deployment_id: 1,
                lines: numbers
                    .map(|number| LogLine {
                        number,
                        text: format!("line {number}"),
                        ..LogLine::default()
                    })
                    .collect(),
                truncated: None,
            })),
            ..Event::default()
        }
    }

    fn status(offset: u64, status: DeploymentState) -> Event {
        Event {
            offset,
            body: Some(Body::DeploymentStatus(DeploymentStatus {
                status: status as i32,
                ..DeploymentStatus::default()
            })),
            ..Event::default()
        }
    }

    fn drain(filter: &mut WatchFilter) -> Vec<DeploymentEvent> {
        std::iter::from_fn(|| filter.next_ready()).collect()
    }

    fn numbers(events: &[DeploymentEvent]) -> Vec<u64> {
        events
            .iter()
            .filter_map(|e| match &e.event {
                Some(E::Logs(logs)) => Some(logs.lines.iter().map(|l| l.number)),
                _ => None,
            })
            .flatten()
            .collect()
    }

    #[test]
    fn a_fresh_watch_sends_the_current_status_then_the_lines_and_skips_old_statuses() {
        let fresh = Plan::Fresh {
            start: 0,
            first_line: 1,
            recovered: true,
        };
        let (start, mut filter) =
            WatchFilter::new(fresh, &state(DeploymentState::Running, 4, None), top(4));
        assert_eq!(start.offset, 0);
        for event in [
            status(1, DeploymentState::Pending),
            status(2, DeploymentState::Running),
            logs(3, 1..=2),
            logs(4, 3..=4),
        ] {
            filter.accept(event);
        }
        let sent = drain(&mut filter);
        assert!(
            matches!(&sent[0].event, Some(E::Status(s)) if s.status == DeploymentState::Running as i32)
        );
        assert_eq!(
            sent[0].position.as_ref().unwrap().offset,
            0,
            "resume point: the start"
        );
        assert_eq!(numbers(&sent), vec![1, 2, 3, 4]);
        assert_eq!(sent.len(), 3);
        assert!(!filter.is_over());
        filter.accept(status(5, DeploymentState::Success));
        assert!(!filter.is_over(), "the terminal status is sent first");
        let last = drain(&mut filter);
        assert_eq!(last.len(), 1);
        assert!(filter.is_over());
    }

    #[test]
    fn live_chunks_pass_unchanged_only_past_the_catch_up_and_behind_nothing_queued() {
        let fresh = Plan::Fresh {
            start: 0,
            first_line: 1,
            recovered: false,
        };
        let (_, mut filter) =
            WatchFilter::new(fresh, &state(DeploymentState::Running, 2, None), top(3));
        assert_eq!(
            filter.pass_live_logs(4),
            None,
            "the opening status is queued"
        );
        drain(&mut filter);
        assert_eq!(filter.pass_live_logs(3), None, "3 is in the catch-up");
        let (position, recovered) = filter.pass_live_logs(4).expect("4 is live");
        assert_eq!((position.offset, position.epoch.as_str()), (4, "e"));
        assert!(!recovered, "the watch's own recovered flag");
        filter.accept(status(5, DeploymentState::Success));
        drain(&mut filter);
        assert_eq!(
            filter.pass_live_logs(6),
            None,
            "nothing follows the terminal status"
        );

        let resume = Plan::Resume { since: top(7) };
        let (_, mut filter) =
            WatchFilter::new(resume, &state(DeploymentState::Running, 2, None), top(9));
        let (position, recovered) = filter.pass_live_logs(8).expect("a resume has no catch-up");
        assert_eq!(position.offset, 8);
        assert!(recovered);
    }

    #[test]
    fn a_finished_deployment_replays_to_the_snapshot_and_ends() {
        let fresh = Plan::Fresh {
            start: 0,
            first_line: 1,
            recovered: true,
        };
        let (_, mut filter) =
            WatchFilter::new(fresh, &state(DeploymentState::Failed, 2, None), top(4));
        filter.accept(logs(3, 1..=2));
        assert!(!filter.is_over());
        filter.accept(status(4, DeploymentState::Failed));
        assert_eq!(numbers(&drain(&mut filter)), vec![1, 2]);
        assert!(filter.is_over());
    }

    #[test]
    fn the_catch_up_leaves_dropped_lines_out_with_one_marker_even_from_a_stale_cache() {
        let fresh = Plan::Fresh {
            start: 0,
            first_line: 1,
            recovered: true,
        };
        let (_, mut filter) = WatchFilter::new(
            fresh,
            &state(DeploymentState::Running, 40, Some((3, 30))),
            top(10),
        );
        for (offset, first) in (1..=4).zip([1, 11, 21, 31]) {
            filter.accept(logs(offset, first..=first + 9));
        }
        let sent = drain(&mut filter);
        let expected: Vec<u64> = (1..=2).chain(31..=40).collect();
        assert_eq!(numbers(&sent), expected);
        let markers: Vec<_> = sent
            .iter()
            .filter_map(|e| match &e.event {
                Some(E::Logs(l)) => l.truncated,
                _ => None,
            })
            .collect();
        assert_eq!(markers.len(), 1);
        assert_eq!((markers[0].first_line, markers[0].last_line), (3, 30));
    }

    #[test]
    fn tail_lines_leave_out_earlier_lines_and_a_resume_passes_everything_on() {
        let fresh = Plan::Fresh {
            start: 2,
            first_line: 8,
            recovered: true,
        };
        let (start, mut filter) =
            WatchFilter::new(fresh, &state(DeploymentState::Running, 12, None), top(4));
        assert_eq!(start.offset, 2);
        filter.accept(logs(3, 5..=10));
        filter.accept(logs(4, 11..=12));
        filter.accept(logs(5, 13..=13));
        assert_eq!(numbers(&drain(&mut filter)), (8..=13).collect::<Vec<_>>());

        let (start, mut filter) = WatchFilter::new(
            Plan::Resume { since: top(2) },
            &state(DeploymentState::Running, 12, None),
            top(4),
        );
        assert_eq!(start.offset, 2);
        filter.accept(status(3, DeploymentState::Running));
        filter.accept(logs(4, 1..=3));
        let sent = drain(&mut filter);
        assert_eq!(sent.len(), 2, "nothing is skipped after `since`");
        assert!(sent.iter().all(|e| e.recovered));
    }
}
