//! What the backend's and the edge's metrics share: the topic kinds used as label values, and
//! the delivery lag histogram (publish → socket write), which both processes record on their
//! hottest path.
//!
//! The histogram is fixed buckets of atomics rather than the exporter's histogram handle: that
//! one keeps every sample until the next scrape, and at a million deliveries per second that
//! is megabytes per second. Here a sample is a bucket search over a dozen bounds and two
//! relaxed atomic adds, with no allocation, and memory is constant.
//!
//! The atomics are sharded by thread ([`ShardedCount`], and the histogram's shards): every
//! worker thread adds to its own cache line, and a scrape sums the shards. One shared line,
//! written by every thread for every delivery, bounced between the cores at each add.

use std::{
    cell::Cell,
    fmt::Write as _,
    sync::atomic::{AtomicU64, AtomicUsize, Ordering},
    time::SystemTime,
};

/// Shards per counter: more than the worker threads of a small machine, few enough that a
/// scrape's sum is a handful of loads.
const SHARDS: usize = 8;

/// The calling thread's shard, handed out round robin at its first count.
fn shard_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: Cell<Option<usize>> = const { Cell::new(None) };
    }
    SHARD.with(|shard| match shard.get() {
        Some(index) => index,
        None => {
            let index = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
            shard.set(Some(index));
            index
        }
    })
}

/// A value on a cache line of its own (two lines: adjacent-line prefetch pairs them).
#[derive(Debug, Default)]
#[repr(align(128))]
struct Padded<T>(T);

/// A monotonic count added to from many threads on a hot path; read by summing its shards.
#[derive(Debug, Default)]
pub struct ShardedCount {
    shards: [Padded<AtomicU64>; SHARDS],
}

impl ShardedCount {
    pub fn new() -> ShardedCount {
        ShardedCount::default()
    }

    pub fn add(&self, n: u64) {
        self.shards[shard_index()].0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.shards
            .iter()
            .map(|shard| shard.0.load(Ordering::Relaxed))
            .sum()
    }
}

/// The topic kinds, the only values of a `kind` label; a topic of any other prefix is
/// counted as `other`.
pub const TOPIC_KINDS: [&str; 7] = [
    "user",
    "role",
    "group",
    "conv",
    "order",
    "deployment",
    "room",
];

/// The `kind` label of a topic name (`room:lobby` → `room`); never the topic itself.
pub fn kind_label(topic: &str) -> &'static str {
    let prefix = topic.split_once(':').map_or("", |(kind, _)| kind);
    TOPIC_KINDS
        .iter()
        .find(|kind| **kind == prefix)
        .copied()
        .unwrap_or("other")
}

/// Name of the delivery lag histogram, the same in both processes (each serves its own).
pub const DELIVERY_LAG: &str = "herald_delivery_lag_seconds";

/// Bucket bounds of [`LagHistogram`], in seconds.
pub const LAG_BUCKETS: [f64; 14] = [
    0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A Prometheus histogram of seconds with fixed [`LAG_BUCKETS`].
#[derive(Debug, Default)]
pub struct LagHistogram {
    shards: [Padded<LagShard>; SHARDS],
}

/// One thread's share of a [`LagHistogram`].
#[derive(Debug, Default)]
struct LagShard {
    /// Per bucket (not cumulative), the last one for samples above every bound; the count
    /// of samples is their sum.
    buckets: [AtomicU64; LAG_BUCKETS.len() + 1],
    /// The sum of all samples, in microseconds.
    sum_micros: AtomicU64,
}

impl LagHistogram {
    pub fn new() -> LagHistogram {
        LagHistogram::default()
    }

    /// Records the time from `published` until now; a `published` in the future (clock skew
    /// between processes) counts as zero.
    pub fn observe_since(&self, published: SystemTime) {
        let seconds = SystemTime::now()
            .duration_since(published)
            .map_or(0.0, |lag| lag.as_secs_f64());
        self.observe(seconds);
    }

    pub fn observe(&self, seconds: f64) {
        let index = LAG_BUCKETS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(LAG_BUCKETS.len());
        let shard = &self.shards[shard_index()].0;
        shard.buckets[index].fetch_add(1, Ordering::Relaxed);
        shard
            .sum_micros
            .fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        (0..=LAG_BUCKETS.len())
            .map(|index| self.bucket(index))
            .sum()
    }

    /// Samples in bucket `index`, over every shard.
    fn bucket(&self, index: usize) -> u64 {
        self.total(|shard| &shard.buckets[index])
    }

    /// One of the shards' atomics, summed over every shard.
    fn total(&self, field: impl Fn(&LagShard) -> &AtomicU64) -> u64 {
        self.shards
            .iter()
            .map(|shard| field(&shard.0).load(Ordering::Relaxed))
            .sum()
    }

    /// Appends the histogram in the Prometheus text format under `name`.
    pub fn render(&self, name: &str, help: &str, out: &mut String) {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        let mut cumulative = 0;
        for (index, bound) in LAG_BUCKETS.iter().enumerate() {
            cumulative += self.bucket(index);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        cumulative += self.bucket(LAG_BUCKETS.len());
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let sum = self.total(|shard| &shard.sum_micros) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {cumulative}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_a_closed_set() {
        assert_eq!(kind_label("room:lobby"), "room");
        assert_eq!(kind_label("user:alice"), "user");
        assert_eq!(kind_label("secret-topic"), "other");
        assert_eq!(kind_label("weird:x"), "other");
    }

    #[test]
    fn the_histogram_renders_cumulative_buckets() {
        let histogram = LagHistogram::new();
        histogram.observe(0.000_1);
        histogram.observe(0.003);
        histogram.observe(60.0);
        let mut text = String::new();
        histogram.render("lag_seconds", "help", &mut text);
        assert!(
            text.contains("lag_seconds_bucket{le=\"0.0005\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("lag_seconds_bucket{le=\"0.005\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("lag_seconds_bucket{le=\"10\"} 2\n"), "{text}");
        assert!(
            text.contains("lag_seconds_bucket{le=\"+Inf\"} 3\n"),
            "{text}"
        );
        assert!(text.contains("lag_seconds_count 3\n"), "{text}");
    }

    #[test]
    fn counts_from_many_threads_add_up_across_shards() {
        let count = ShardedCount::new();
        let histogram = LagHistogram::new();
        std::thread::scope(|scope| {
            for _ in 0..3 * SHARDS {
                scope.spawn(|| {
                    for _ in 0..1_000 {
                        count.add(2);
                        histogram.observe(0.002);
                    }
                });
            }
        });
        let samples = 3 * SHARDS as u64 * 1_000;
        assert_eq!(count.get(), 2 * samples);
        assert_eq!(histogram.count(), samples);
        let mut text = String::new();
        histogram.render("lag_seconds", "help", &mut text);
        assert!(
            text.contains("lag_seconds_bucket{le=\"0.001\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains(&format!("lag_seconds_bucket{{le=\"0.0025\"}} {samples}\n")),
            "{text}"
        );
        assert!(
            text.contains(&format!("lag_seconds_count {samples}\n")),
            "{text}"
        );
    }
}
