//! Subscribers: one task per stream or socket, whatever the protocol, counting every event
//! the same way.
//!
//! ```text
//!  grpc      herald.v1.Rooms/Subscribe streams over shared HTTP/2 connections
//!  ws        Herald's browser protocol: one WebSocket per subscriber, to the edge
//!  socketio  Socket.IO v5 over Engine.IO v4 WebSockets, to the peer in bench/peers/socketio
//!      └──► Tally (this module): offsets → lost / duplicated / reordered; send times → latency
//! ```
//!
//! Correctness is checked per subscriber against Herald's contract: offsets of a topic arrive
//! in order, without gaps or duplicates, and a subscription the server ends with a reconnect
//! close code (`CloseCode::should_reconnect`, e.g. slow consumer) is resumed with `since` =
//! the last offset received, after which nothing is missing. What was received is compared,
//! at the end, with the offsets publishers had acknowledged on the topic. Socket.IO has no
//! resume: a reconnected socket rejoins at the room's current offset and what it missed
//! counts as lost.

pub(crate) mod grpc;
pub(crate) mod socketio;
pub(crate) mod ws;

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{
        Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use herald_proto::support::lock;
use tokio::sync::Semaphore;
use tonic::metadata::AsciiMetadataValue;

use crate::{histogram::Histogram, wire};

/// Latency samples a subscriber keeps before adding them to the shared histogram.
const LATENCY_BATCH: usize = 128;
/// Gaps wider than this are counted as lost without remembering each missing offset.
const MAX_TRACKED_GAP: u64 = 100_000;
/// Consecutive failed resumes after which a subscriber gives up.
const MAX_RESUME_FAILURES: u32 = 20;

/// What the main task watches while a subscriber runs. One writer per field, so no
/// contention; aligned so that neighbours do not share a cache line.
#[derive(Debug, Default)]
#[repr(align(64))]
pub(crate) struct Progress {
    /// Event frames received, duplicates included.
    pub(crate) received: AtomicU64,
    /// The highest offset received (the `subscribed` top before any event).
    pub(crate) last: AtomicU64,
}

/// State shared by every subscriber task and the main task.
#[derive(Debug)]
pub(crate) struct Shared {
    /// `Bearer <JWT>`, for gRPC streams.
    pub(crate) bearer: AsciiMetadataValue,
    /// The bare JWT, for WebSocket `auth`.
    pub(crate) token: String,
    pub(crate) progress: Box<[Progress]>,
    /// Latencies (µs) of events sent at or after this time (ns); `u64::MAX` until measuring.
    pub(crate) window_start_ns: AtomicU64,
    pub(crate) latencies: Mutex<Histogram>,
    /// Bounds the streams being opened or resumed at once.
    pub(crate) opening: Semaphore,
    pub(crate) opened: AtomicUsize,
    pub(crate) open_failures: AtomicUsize,
    pub(crate) first_open_error: Mutex<Option<String>>,
    /// Streams the server ended, of any kind; the run prints it as it goes.
    pub(crate) closes: AtomicU64,
}

impl Shared {
    pub(crate) fn new(
        bearer: AsciiMetadataValue,
        token: String,
        subscribers: usize,
        open_concurrency: usize,
    ) -> Shared {
        Shared {
            bearer,
            token,
            progress: (0..subscribers).map(|_| Progress::default()).collect(),
            window_start_ns: AtomicU64::new(u64::MAX),
            latencies: Mutex::new(Histogram::default()),
            opening: Semaphore::new(open_concurrency),
            opened: AtomicUsize::new(0),
            open_failures: AtomicUsize::new(0),
            first_open_error: Mutex::new(None),
            closes: AtomicU64::new(0),
        }
    }

    fn flush_latencies(&self, batch: &mut Vec<u64>) {
        if batch.is_empty() {
            return;
        }
        let mut histogram = lock(&self.latencies);
        for &micros in batch.iter() {
            histogram.record(micros);
        }
        batch.clear();
    }

    fn open_failed(&self, message: String) {
        self.open_failures.fetch_add(1, Ordering::AcqRel);
        let mut first = lock(&self.first_open_error);
        first.get_or_insert(message);
    }
}

/// What one subscriber saw, for the final tally.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    pub(crate) topic: usize,
    /// The topic's top at the first `subscribed`.
    pub(crate) start: u64,
    /// The highest offset received.
    pub(crate) last: u64,
    pub(crate) received: u64,
    pub(crate) duplicates: u64,
    /// Offsets that arrived after a higher one (filling a gap).
    pub(crate) reordered: u64,
    /// Offsets known to be missing: gaps never filled, and events history could not replay
    /// after a resume (`recovered = false`).
    pub(crate) missing: u64,
    /// Streams the server ended, by close code (or gRPC code when it sent none).
    pub(crate) closes: BTreeMap<String, u64>,
    pub(crate) resumes: u64,
    /// Resumes answered with `recovered = false`.
    pub(crate) unrecovered: u64,
    /// Streams whose `herald-offset` trailer differed from the last offset received.
    pub(crate) trailer_mismatches: u64,
    /// Why the subscriber stopped before the end, if it did.
    pub(crate) failure: Option<String>,
}

impl Outcome {
    /// Events acknowledged on the topic (up to `top`) that this subscriber never received.
    pub(crate) fn lost(&self, top: u64) -> u64 {
        self.missing + top.saturating_sub(self.last)
    }
}

/// Per-subscriber offset bookkeeping.
#[derive(Debug, Default)]
struct Tracker {
    outcome: Outcome,
    epoch: String,
    gaps: BTreeSet<u64>,
}

impl Tracker {
    fn on_event(&mut self, offset: u64) {
        let o = &mut self.outcome;
        o.received += 1;
        if offset == o.last + 1 {
            o.last = offset;
        } else if offset > o.last {
            let width = offset - o.last - 1;
            if width <= MAX_TRACKED_GAP {
                self.gaps.extend(o.last + 1..offset);
            } else {
                o.missing += width;
            }
            o.last = offset;
        } else if self.gaps.remove(&offset) {
            o.reordered += 1;
        } else {
            o.duplicates += 1;
        }
    }

    /// A resume's answer. Not recovered: the events after our last offset will never come;
    /// the subscription continues from the `top` it reports.
    fn on_resubscribed(&mut self, recovered: bool, top: u64, epoch: &str) {
        if recovered {
            return;
        }
        let o = &mut self.outcome;
        o.unrecovered += 1;
        if epoch == self.epoch {
            o.missing += top.saturating_sub(o.last);
        }
        // Another epoch: offsets restart and are not comparable; the run reports the count.
        o.last = top;
        epoch.clone_into(&mut self.epoch);
    }

    fn finish(mut self) -> Outcome {
        self.outcome.missing += self.gaps.len() as u64;
        self.outcome
    }
}

/// One subscriber's counting, shared by every protocol: offsets, progress for the main task,
/// latency samples.
#[derive(Debug)]
struct Tally<'a> {
    shared: &'a Shared,
    progress: &'a Progress,
    tracker: Tracker,
    batch: Vec<u64>,
}

impl<'a> Tally<'a> {
    fn new(shared: &'a Shared, index: usize, topic: usize) -> Tally<'a> {
        let mut tracker = Tracker::default();
        tracker.outcome.topic = topic;
        Tally {
            shared,
            progress: &shared.progress[index],
            tracker,
            batch: Vec::new(),
        }
    }

    /// The first subscription answered: the topic stood at `top`.
    fn subscribed(&mut self, top: u64, epoch: String) {
        self.tracker.outcome.start = top;
        self.tracker.outcome.last = top;
        self.tracker.epoch = epoch;
        self.progress.last.store(top, Ordering::Relaxed);
        self.shared.opened.fetch_add(1, Ordering::AcqRel);
    }

    /// A resumed (or, for Socket.IO, re-joined) subscription answered.
    fn resubscribed(&mut self, recovered: bool, top: u64, epoch: &str) {
        self.tracker.outcome.resumes += 1;
        self.tracker.on_resubscribed(recovered, top, epoch);
        self.progress
            .last
            .store(self.tracker.outcome.last, Ordering::Relaxed);
    }

    fn event(&mut self, offset: u64, sent_ns: Option<u64>) {
        let tracker = &mut self.tracker;
        tracker.on_event(offset);
        self.progress
            .received
            .store(tracker.outcome.received, Ordering::Relaxed);
        self.progress
            .last
            .store(tracker.outcome.last, Ordering::Relaxed);
        if let Some(sent) = sent_ns
            && sent >= self.shared.window_start_ns.load(Ordering::Relaxed)
        {
            if self.batch.capacity() == 0 {
                self.batch.reserve_exact(LATENCY_BATCH);
            }
            self.batch.push(wire::now_ns().saturating_sub(sent) / 1_000);
            if self.batch.len() == LATENCY_BATCH {
                self.shared.flush_latencies(&mut self.batch);
            }
        }
    }

    /// The server ended the subscription; `label` names how.
    fn closed(&mut self, label: String) {
        self.shared.closes.fetch_add(1, Ordering::Relaxed);
        self.close_attempt(label);
    }

    /// A resume attempt failed; counted by `label` but not as a server-ended stream.
    fn close_attempt(&mut self, label: String) {
        *self.tracker.outcome.closes.entry(label).or_default() += 1;
    }

    /// A stream's `herald-offset` trailer named another offset than the last received.
    fn trailer_mismatch(&mut self) {
        self.tracker.outcome.trailer_mismatches += 1;
    }

    fn open_failed(&mut self, message: String) {
        self.shared.open_failed(message.clone());
        self.tracker.outcome.failure = Some(message);
    }

    fn fail(&mut self, message: String) {
        self.tracker.outcome.failure = Some(message);
    }

    fn received(&self) -> u64 {
        self.tracker.outcome.received
    }

    fn last(&self) -> u64 {
        self.tracker.outcome.last
    }

    fn epoch(&self) -> &str {
        &self.tracker.epoch
    }

    fn finish(mut self) -> Outcome {
        self.shared.flush_latencies(&mut self.batch);
        self.tracker.finish()
    }
}

/// Waits before retry `failures` (none for the first), spread by subscriber so that
/// thousands of streams ended together do not come back in one burst. True when `stopped`
/// fired meanwhile.
async fn backoff<F: Future + Unpin>(failures: u32, index: usize, stopped: &mut F) -> bool {
    if failures == 0 {
        return false;
    }
    let base = 50u64.saturating_mul(1 << failures.min(6)).min(2_000);
    let jitter = (index as u64 * 7) % 50;
    tokio::select! {
        _ = tokio::time::sleep(Duration::from_millis(base + jitter)) => false,
        _ = stopped => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracker_at(start: u64) -> Tracker {
        let mut tracker = Tracker::default();
        tracker.outcome.start = start;
        tracker.outcome.last = start;
        tracker.epoch = "e".into();
        tracker
    }

    #[test]
    fn in_order_events_are_neither_lost_nor_duplicated() {
        let mut tracker = tracker_at(10);
        for offset in 11..=20 {
            tracker.on_event(offset);
        }
        let outcome = tracker.finish();
        assert_eq!(outcome.lost(20), 0);
        assert_eq!((outcome.duplicates, outcome.reordered), (0, 0));
    }

    #[test]
    fn a_gap_filled_later_is_reordered_not_lost_and_a_repeat_is_a_duplicate() {
        let mut tracker = tracker_at(0);
        for offset in [1, 3, 2, 3, 4] {
            tracker.on_event(offset);
        }
        let outcome = tracker.finish();
        assert_eq!(outcome.reordered, 1);
        assert_eq!(outcome.duplicates, 1);
        assert_eq!(outcome.lost(4), 0);
    }

    #[test]
    fn unfilled_gaps_and_a_short_tail_are_lost() {
        let mut tracker = tracker_at(0);
        for offset in [1, 2, 5] {
            tracker.on_event(offset);
        }
        assert_eq!(tracker.finish().lost(7), 4); // 3, 4, 6, 7
    }

    #[test]
    fn a_resume_that_history_cannot_cover_counts_the_skipped_events_as_lost() {
        let mut tracker = tracker_at(0);
        tracker.on_event(1);
        tracker.on_resubscribed(false, 1500, "e");
        tracker.on_event(1501);
        let outcome = tracker.finish();
        assert_eq!(outcome.unrecovered, 1);
        assert_eq!(outcome.lost(1501), 1499);
    }
}
