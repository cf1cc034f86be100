//! One task per subscriber stream: open, wait for `subscribed`, then count every event.
//!
//! Correctness is checked per stream against the contract of `herald.v1.Rooms/Subscribe`:
//! offsets arrive in order, without gaps or duplicates, and a stream the server ends with a
//! reconnect close code (3000–3499, for example SLOW_CONSUMER) is resumed with `since` = the
//! last offset received, after which nothing is missing. What was received is compared, at
//! the end, with the offsets publishers had acknowledged on the topic.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use herald_proto::v1::{CloseCode, StreamPosition, SubscribeRequest, Subscribed};
use tokio::sync::{Semaphore, watch};
use tonic::{
    Code, Request, Status, codec::Streaming, metadata::AsciiMetadataValue, transport::Channel,
};

use crate::{
    histogram::Histogram,
    wire::{self, Frame, LeanEvent},
};

const CLOSE_CODE_TRAILER: &str = "herald-close-code";
const OFFSET_TRAILER: &str = "herald-offset";
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
    pub(crate) bearer: AsciiMetadataValue,
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
        subscribers: usize,
        open_concurrency: usize,
    ) -> Shared {
        Shared {
            bearer,
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
        // A poisoned lock only means another subscriber panicked mid-record; counts stay valid.
        let mut histogram = self.latencies.lock().unwrap_or_else(|p| p.into_inner());
        for &micros in batch.iter() {
            histogram.record(micros);
        }
        batch.clear();
    }

    fn open_failed(&self, message: String) {
        self.open_failures.fetch_add(1, Ordering::AcqRel);
        let mut first = self
            .first_open_error
            .lock()
            .unwrap_or_else(|p| p.into_inner());
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

/// Per-stream offset bookkeeping.
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

    /// A resume's `subscribed`. Not recovered: the events after our last offset will never
    /// come; the stream continues from the top it reports.
    fn on_resubscribed(&mut self, subscribed: &Subscribed) {
        if subscribed.recovered {
            return;
        }
        let o = &mut self.outcome;
        o.unrecovered += 1;
        let top = subscribed.position.clone().unwrap_or_default();
        if top.epoch == self.epoch {
            o.missing += top.offset.saturating_sub(o.last);
        }
        // Another epoch: offsets restart and are not comparable; the run reports the count.
        o.last = top.offset;
        self.epoch = top.epoch;
    }

    fn position(&self) -> StreamPosition {
        StreamPosition {
            offset: self.outcome.last,
            epoch: self.epoch.clone(),
        }
    }

    fn finish(mut self) -> Outcome {
        self.outcome.missing += self.gaps.len() as u64;
        self.outcome
    }
}

/// How a stream ended, read from its status and trailers.
fn classify(status: &Status) -> (String, bool) {
    let close = status
        .metadata()
        .get(CLOSE_CODE_TRAILER)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    match close {
        Some(name) => {
            let reconnect = CloseCode::from_str_name(&name)
                .is_some_and(|code| (3000..3500).contains(&(code as i32)));
            (name, reconnect)
        }
        // No close code: a transport failure (connection reset, GOAWAY) is worth a retry.
        None => (
            format!("{:?} (no close code)", status.code()),
            matches!(status.code(), Code::Unavailable | Code::Unknown),
        ),
    }
}

async fn open(
    shared: &Shared,
    channel: &Channel,
    topic: &str,
    since: Option<StreamPosition>,
) -> Result<(Streaming<Frame>, Subscribed), Status> {
    // The semaphore is never closed.
    let _permit = shared
        .opening
        .acquire()
        .await
        .map_err(|_| Status::cancelled("the run is over"))?;
    let mut request = Request::new(SubscribeRequest {
        topic: topic.to_owned(),
        since,
    });
    request
        .metadata_mut()
        .insert("authorization", shared.bearer.clone());
    let mut stream = wire::subscribe(channel.clone(), request).await?;
    match stream.message().await? {
        Some(Frame {
            subscribed: Some(subscribed),
            ..
        }) => Ok((stream, subscribed)),
        Some(_) => Err(Status::internal(
            "contract violation: the first frame of the stream was not `subscribed`",
        )),
        None => Err(Status::unavailable("the stream ended before `subscribed`")),
    }
}

/// Runs subscriber `index` on `topic` until `stop` turns true.
pub(crate) async fn run(
    shared: Arc<Shared>,
    index: usize,
    topic_index: usize,
    topic: String,
    channel: Channel,
    mut stop: watch::Receiver<bool>,
) -> Outcome {
    let progress = &shared.progress[index];
    let mut tracker = Tracker::default();
    tracker.outcome.topic = topic_index;
    let mut batch: Vec<u64> = Vec::new();
    let stopped = stop.wait_for(|stop| *stop);
    tokio::pin!(stopped);
    let mut since: Option<StreamPosition> = None;
    let mut failures = 0u32;

    'streams: loop {
        let opened = tokio::select! {
            biased;
            _ = &mut stopped => break,
            opened = open(&shared, &channel, &topic, since.clone()) => opened,
        };
        let mut stream = match opened {
            Ok((stream, subscribed)) => {
                if since.is_none() {
                    let top = subscribed.position.unwrap_or_default();
                    tracker.outcome.start = top.offset;
                    tracker.outcome.last = top.offset;
                    tracker.epoch = top.epoch;
                    progress.last.store(top.offset, Ordering::Relaxed);
                    shared.opened.fetch_add(1, Ordering::AcqRel);
                } else {
                    tracker.outcome.resumes += 1;
                    tracker.on_resubscribed(&subscribed);
                    progress.last.store(tracker.outcome.last, Ordering::Relaxed);
                }
                stream
            }
            Err(status) if since.is_none() => {
                shared.open_failed(describe(&status));
                tracker.outcome.failure = Some(describe(&status));
                break;
            }
            Err(status) => {
                let (label, reconnect) = classify(&status);
                *tracker.outcome.closes.entry(label).or_default() += 1;
                failures += 1;
                if !reconnect || failures >= MAX_RESUME_FAILURES {
                    tracker.outcome.failure = Some(format!("resume failed: {}", describe(&status)));
                    break;
                }
                if backoff(failures, index, &mut stopped).await {
                    break;
                }
                continue;
            }
        };

        let received_before = tracker.outcome.received;
        let status = loop {
            let message = tokio::select! {
                biased;
                message = stream.message() => message,
                _ = &mut stopped => break 'streams,
            };
            match message {
                Ok(Some(Frame {
                    event: Some(event), ..
                })) => on_event(&shared, progress, &mut tracker, &mut batch, &event),
                Ok(Some(_)) => {} // presence, or a frame kind this benchmark does not know
                Ok(None) => {
                    break Status::unavailable("the server ended the stream without a status");
                }
                Err(status) => break status,
            }
        };

        shared.closes.fetch_add(1, Ordering::Relaxed);
        let (label, reconnect) = classify(&status);
        *tracker.outcome.closes.entry(label).or_default() += 1;
        if let Some(offset) = status
            .metadata()
            .get(OFFSET_TRAILER)
            .and_then(|value| value.to_str().ok())
            .and_then(|text| text.parse::<u64>().ok())
            && offset != tracker.outcome.last
        {
            tracker.outcome.trailer_mismatches += 1;
        }
        if !reconnect {
            tracker.outcome.failure = Some(format!("stream ended: {}", describe(&status)));
            break;
        }
        failures = if tracker.outcome.received > received_before {
            0
        } else {
            failures + 1
        };
        if failures >= MAX_RESUME_FAILURES {
            tracker.outcome.failure = Some(format!("gave up resuming: {}", describe(&status)));
            break;
        }
        if backoff(failures, index, &mut stopped).await {
            break;
        }
        since = Some(tracker.position());
    }

    shared.flush_latencies(&mut batch);
    tracker.finish()
}

fn on_event(
    shared: &Shared,
    progress: &Progress,
    tracker: &mut Tracker,
    batch: &mut Vec<u64>,
    event: &LeanEvent,
) {
    tracker.on_event(event.offset);
    progress
        .received
        .store(tracker.outcome.received, Ordering::Relaxed);
    progress.last.store(tracker.outcome.last, Ordering::Relaxed);
    if let Some(sent) = event.sent_ns()
        && sent >= shared.window_start_ns.load(Ordering::Relaxed)
    {
        if batch.capacity() == 0 {
            batch.reserve_exact(LATENCY_BATCH);
        }
        batch.push(wire::now_ns().saturating_sub(sent) / 1_000);
        if batch.len() == LATENCY_BATCH {
            shared.flush_latencies(batch);
        }
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

fn describe(status: &Status) -> String {
    format!("{:?}: {}", status.code(), status.message())
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
        tracker.on_resubscribed(&Subscribed {
            position: Some(StreamPosition {
                offset: 1500,
                epoch: "e".into(),
            }),
            recovered: false,
        });
        tracker.on_event(1501);
        let outcome = tracker.finish();
        assert_eq!(outcome.unrecovered, 1);
        assert_eq!(outcome.lost(1501), 1499);
    }

    #[test]
    fn close_codes_decide_whether_to_resume() {
        let slow = {
            let mut status = Status::resource_exhausted("slow consumer");
            status.metadata_mut().insert(
                CLOSE_CODE_TRAILER,
                "CLOSE_CODE_SLOW_CONSUMER".parse().unwrap(),
            );
            status
        };
        assert_eq!(classify(&slow), ("CLOSE_CODE_SLOW_CONSUMER".into(), true));
        let denied = {
            let mut status = Status::permission_denied("no");
            status.metadata_mut().insert(
                CLOSE_CODE_TRAILER,
                "CLOSE_CODE_PERMISSION_DENIED".parse().unwrap(),
            );
            status
        };
        assert!(!classify(&denied).1);
        assert!(classify(&Status::unavailable("reset")).1);
    }
}
