//! The result of a run: a human-readable summary, then one JSON line with every figure.

use std::collections::BTreeMap;

use serde_json::json;

use crate::histogram::Histogram;

#[derive(Debug, Default)]
pub(crate) struct Report {
    pub(crate) scenario: String,
    pub(crate) protocol: String,
    pub(crate) mode: String,
    pub(crate) server: String,
    /// Where publishes went (`--publish-server`, else the server); `None` when nothing is
    /// published through Herald.
    pub(crate) publish_server: Option<String>,
    pub(crate) subscribers: usize,
    pub(crate) topics: usize,
    pub(crate) connections: usize,
    pub(crate) publishers: usize,
    pub(crate) target_rate: Option<f64>,
    pub(crate) max_lag: Option<u64>,
    pub(crate) open_secs: f64,
    /// The measurement window.
    pub(crate) window_secs: f64,
    pub(crate) window_publishes: u64,
    pub(crate) window_deliveries: u64,
    /// Latencies in µs of events published during the window.
    pub(crate) latency: Histogram,
    /// Publish round trips in µs (call to acknowledgement) of publishes sent in the window.
    pub(crate) publish_round_trip: Histogram,
    pub(crate) published: u64,
    pub(crate) publish_failures: u64,
    pub(crate) publish_errors: BTreeMap<String, u64>,
    pub(crate) expected: u64,
    pub(crate) received: u64,
    pub(crate) lost: u64,
    pub(crate) duplicated: u64,
    pub(crate) reordered: u64,
    pub(crate) resumes: u64,
    pub(crate) unrecovered: u64,
    pub(crate) closes: BTreeMap<String, u64>,
    pub(crate) trailer_mismatches: u64,
    pub(crate) subscriber_failures: usize,
    pub(crate) first_failure: Option<String>,
    pub(crate) drain_secs: f64,
    pub(crate) drained: bool,
    /// RSS of each server process (`--server-pid`, in order) before this run connected.
    pub(crate) server_rss_unconnected_kib: Vec<u64>,
    /// … with the gRPC connections open, before any subscription.
    pub(crate) server_rss_before_kib: Vec<u64>,
    /// … once every subscription was answered.
    pub(crate) server_rss_subscribed_kib: Vec<u64>,
    pub(crate) server_rss_end_kib: Vec<u64>,
    pub(crate) server_cpu_percent: Option<f64>,
    pub(crate) bench_cpu_percent: Option<f64>,
    /// CPU of each `--watch-pid` process during the window, by name, in order.
    pub(crate) watched_cpu_percent: Vec<(String, Option<f64>)>,
    pub(crate) bench_rss_kib: Option<u64>,
}

fn per_sec(count: u64, secs: f64) -> f64 {
    if secs > 0.0 { count as f64 / secs } else { 0.0 }
}

fn ms(micros: u64) -> f64 {
    micros as f64 / 1_000.0
}

fn round(value: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (value * scale).round() / scale
}

/// The sum of every process's figure; `None` when no process was watched.
fn total(each: &[u64]) -> Option<u64> {
    (!each.is_empty()).then(|| each.iter().sum())
}

impl Report {
    /// Server resident memory per subscription (all processes), from before opening to
    /// `after`.
    fn kib_per_stream(&self, after: &[u64]) -> Option<f64> {
        let before = total(&self.server_rss_before_kib)?;
        let after = total(after)?;
        Some(round(
            (after as f64 - before as f64) / self.subscribers.max(1) as f64,
            3,
        ))
    }

    /// The same, process by process, once subscribed.
    fn kib_per_stream_each(&self) -> Vec<f64> {
        self.server_rss_before_kib
            .iter()
            .zip(&self.server_rss_subscribed_kib)
            .map(|(&before, &after)| {
                round(
                    (after as f64 - before as f64) / self.subscribers.max(1) as f64,
                    3,
                )
            })
            .collect()
    }

    /// `{"name": percent, …}` of the watched processes (null where unreadable).
    fn watched_cpu_json(&self) -> serde_json::Map<String, serde_json::Value> {
        self.watched_cpu_percent
            .iter()
            .map(|(name, cpu)| (name.clone(), json!(cpu.map(|v| round(v, 1)))))
            .collect()
    }

    fn is_idle(&self) -> bool {
        self.mode == "idle"
    }

    pub(crate) fn print(&self) {
        println!("== herald-bench: {} ==", self.scenario);
        println!(
            "{} {}  subscribers {}  topics {}  connections {}  open {:.2}s ({:.0} connects+subscribes/s)",
            self.protocol,
            self.server,
            self.subscribers,
            self.topics,
            self.connections,
            self.open_secs,
            per_sec(self.subscribers as u64, self.open_secs),
        );
        if let Some(publish_server) = self
            .publish_server
            .as_ref()
            .filter(|&url| *url != self.server)
        {
            println!("publishing to {publish_server}");
        }
        if let (Some(before), Some(subscribed)) = (
            total(&self.server_rss_before_kib),
            total(&self.server_rss_subscribed_kib),
        ) {
            println!(
                "server RSS  unconnected {} KiB  connected {before} KiB  subscribed {subscribed} KiB  end {} KiB",
                total(&self.server_rss_unconnected_kib).map_or("?".into(), |v| v.to_string()),
                total(&self.server_rss_end_kib).map_or("?".into(), |v| v.to_string()),
            );
            println!(
                "server RSS per subscriber (growth since connected ÷ subscribers): {} KiB subscribed, {} KiB at end",
                self.kib_per_stream(&self.server_rss_subscribed_kib)
                    .unwrap_or(0.0),
                self.kib_per_stream(&self.server_rss_end_kib)
                    .map_or("?".into(), |v| v.to_string()),
            );
            if self.server_rss_before_kib.len() > 1 {
                println!(
                    "  per process (--server-pid order): {:?} KiB per subscriber",
                    self.kib_per_stream_each()
                );
            }
        }
        if !self.is_idle() {
            println!(
                "mode {}  publishers {}{}{}",
                self.mode,
                self.publishers,
                self.target_rate
                    .map_or(String::new(), |r| format!("  target {r} publishes/s")),
                self.max_lag
                    .map_or(String::new(), |l| format!("  max lag {l} events")),
            );
            println!(
                "window {:.2}s  publishes {:.0}/s  deliveries {:.0}/s",
                self.window_secs,
                per_sec(self.window_publishes, self.window_secs),
                per_sec(self.window_deliveries, self.window_secs),
            );
            println!(
                "latency publish→receive (events sent in the window, {} samples): p50 {} ms  \
                 p90 {} ms  p99 {} ms  p99.9 {} ms  max {} ms",
                self.latency.count(),
                ms(self.latency.quantile(0.50)),
                ms(self.latency.quantile(0.90)),
                ms(self.latency.quantile(0.99)),
                ms(self.latency.quantile(0.999)),
                ms(self.latency.max()),
            );
            println!(
                "publish round trip (call → ack): p50 {} ms  p99 {} ms  max {} ms",
                ms(self.publish_round_trip.quantile(0.50)),
                ms(self.publish_round_trip.quantile(0.99)),
                ms(self.publish_round_trip.max()),
            );
            println!(
                "published {} (failed {})  expected deliveries {}  received {}  \
                 lost {}  duplicated {}  reordered {}",
                self.published,
                self.publish_failures,
                self.expected,
                self.received,
                self.lost,
                self.duplicated,
                self.reordered,
            );
            println!(
                "drain {:.2}s{}",
                self.drain_secs,
                if self.drained {
                    ""
                } else {
                    " (timed out: some subscribers never caught up)"
                }
            );
        }
        println!(
            "streams ended by the server {}  resumes {}  unrecovered resumes {}  \
             trailer offset mismatches {}",
            self.closes.values().sum::<u64>(),
            self.resumes,
            self.unrecovered,
            self.trailer_mismatches,
        );
        for (code, count) in &self.closes {
            println!("  closed {count}× {code}");
        }
        for (error, count) in &self.publish_errors {
            println!("  publish failed {count}× {error}");
        }
        if self.subscriber_failures > 0 {
            println!(
                "subscribers that stopped early: {} (first: {})",
                self.subscriber_failures,
                self.first_failure.as_deref().unwrap_or("?")
            );
        }
        if let (Some(server), Some(bench)) = (self.server_cpu_percent, self.bench_cpu_percent) {
            let watched: String = self
                .watched_cpu_percent
                .iter()
                .map(|(name, cpu)| match cpu {
                    Some(cpu) => format!("  {name} {cpu:.0}%"),
                    None => format!("  {name} ?"),
                })
                .collect();
            println!(
                "CPU during the window: server {server:.0}%{watched}  bench {bench:.0}% (100% = one core)"
            );
        }
        println!("{}", self.json());
    }

    pub(crate) fn json(&self) -> serde_json::Value {
        json!({
            "scenario": self.scenario,
            "protocol": self.protocol,
            "server": self.server,
            "publish_server": self.publish_server,
            "mode": self.mode,
            "subscribers": self.subscribers,
            "topics": self.topics,
            "connections": self.connections,
            "publishers": self.publishers,
            "target_rate": self.target_rate,
            "max_lag": self.max_lag,
            "open_secs": round(self.open_secs, 3),
            "subscribes_per_sec": round(per_sec(self.subscribers as u64, self.open_secs), 1),
            "window_secs": round(self.window_secs, 3),
            "publishes_per_sec": round(per_sec(self.window_publishes, self.window_secs), 1),
            "deliveries_per_sec": round(per_sec(self.window_deliveries, self.window_secs), 1),
            "latency_samples": self.latency.count(),
            "p50_ms": ms(self.latency.quantile(0.50)),
            "p90_ms": ms(self.latency.quantile(0.90)),
            "p99_ms": ms(self.latency.quantile(0.99)),
            "p999_ms": ms(self.latency.quantile(0.999)),
            "max_ms": ms(self.latency.max()),
            "publish_p50_ms": ms(self.publish_round_trip.quantile(0.50)),
            "publish_p99_ms": ms(self.publish_round_trip.quantile(0.99)),
            "published": self.published,
            "publish_failures": self.publish_failures,
            "expected_deliveries": self.expected,
            "received": self.received,
            "lost": self.lost,
            "duplicated": self.duplicated,
            "reordered": self.reordered,
            "server_closes": self.closes,
            "resumes": self.resumes,
            "unrecovered_resumes": self.unrecovered,
            "trailer_mismatches": self.trailer_mismatches,
            "subscriber_failures": self.subscriber_failures,
            "drain_secs": round(self.drain_secs, 3),
            "drained": self.drained,
            "server_rss_unconnected_kib": total(&self.server_rss_unconnected_kib),
            "server_rss_before_kib": total(&self.server_rss_before_kib),
            "server_rss_subscribed_kib": total(&self.server_rss_subscribed_kib),
            "server_rss_end_kib": total(&self.server_rss_end_kib),
            "kib_per_stream": self.kib_per_stream(&self.server_rss_subscribed_kib),
            "kib_per_stream_end": self.kib_per_stream(&self.server_rss_end_kib),
            "kib_per_stream_each": self.kib_per_stream_each(),
            "server_cpu_percent": self.server_cpu_percent.map(|v| round(v, 1)),
            "bench_cpu_percent": self.bench_cpu_percent.map(|v| round(v, 1)),
            "watched_cpu_percent": self.watched_cpu_json(),
            "bench_rss_kib": self.bench_rss_kib,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watched_processes_appear_by_name_in_the_json() {
        let report = Report {
            server: "http://a:1".into(),
            publish_server: Some("http://b:2".into()),
            watched_cpu_percent: vec![("redis".into(), Some(12.345)), ("gone".into(), None)],
            ..Report::default()
        };
        let json = report.json();
        assert_eq!(json["watched_cpu_percent"]["redis"], 12.3);
        assert!(json["watched_cpu_percent"]["gone"].is_null());
        assert_eq!(json["publish_server"], "http://b:2");
    }
}
