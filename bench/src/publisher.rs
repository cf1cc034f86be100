//! Publish loops: `--publishers` tasks, each with one publish in flight, so the number in
//! flight is bounded. With a rate, publish `n` (counted across all loops) is due at
//! `start + n / rate`; saturating loops publish again as soon as the last is acknowledged.
//! Publish `n` goes to topic `n % topics`. Herald is published to with `Rooms/Publish`
//! (for gRPC and WebSocket subscribers alike), the Socket.IO peer with an acknowledged
//! `publish` event on a socket of its own per loop.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use herald_proto::support::lock;
use herald_proto::v1::{PublishRequest, rooms_client::RoomsClient};
use tokio::time::Instant;
use tonic::{Request, metadata::AsciiMetadataValue, transport::Channel};

use crate::{engineio, histogram::Histogram, wire};

/// The event type of benchmark events.
const EVENT_TYPE: &str = "bench.tick";
/// How long a loop pauses after a failed publish, so that a refusing server is not spun on.
const ERROR_PAUSE: Duration = Duration::from_millis(10);
/// How often a closed-loop publisher re-checks its topic's slowest subscriber.
const LAG_POLL: Duration = Duration::from_millis(1);

/// Publishing state shared by the loops and the main task.
#[derive(Debug)]
pub(crate) struct Publishing {
    pub(crate) bearer: AsciiMetadataValue,
    pub(crate) topics: Vec<String>,
    /// Publishes per second in total, or `None` to saturate.
    pub(crate) rate: Option<f64>,
    /// Closed loop: hold a topic while `tops - floors` exceeds this.
    pub(crate) max_lag: Option<u64>,
    /// The highest acknowledged offset per topic.
    pub(crate) tops: Box<[AtomicU64]>,
    /// The slowest subscriber's last offset per topic, kept up to date by the main task when
    /// `max_lag` is set.
    pub(crate) floors: Box<[AtomicU64]>,
    pub(crate) acked: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) errors: Mutex<BTreeMap<String, u64>>,
    /// Publish round trips (µs) of publishes sent at or after this time (ns).
    pub(crate) window_start_ns: AtomicU64,
    pub(crate) round_trips: Mutex<Histogram>,
    next: AtomicU64,
}

impl Publishing {
    pub(crate) fn new(
        bearer: AsciiMetadataValue,
        topics: Vec<String>,
        rate: Option<f64>,
        max_lag: Option<u64>,
    ) -> Publishing {
        let zeros = || topics.iter().map(|_| AtomicU64::new(0)).collect();
        Publishing {
            bearer,
            rate,
            max_lag,
            tops: zeros(),
            floors: zeros(),
            topics,
            acked: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            errors: Mutex::new(BTreeMap::new()),
            window_start_ns: AtomicU64::new(u64::MAX),
            round_trips: Mutex::new(Histogram::default()),
            next: AtomicU64::new(0),
        }
    }

    /// Publish failures by gRPC code, with the first message of each.
    pub(crate) fn errors(&self) -> BTreeMap<String, u64> {
        lock(&self.errors).clone()
    }

    fn failed(&self, error: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        let mut errors = lock(&self.errors);
        *errors.entry(error).or_default() += 1;
    }

    /// Waits while the topic's slowest subscriber is more than `max_lag` behind; false when
    /// the deadline passed meanwhile.
    async fn wait_for_lag(&self, topic: usize, deadline: Instant) -> bool {
        let Some(max_lag) = self.max_lag else {
            return true;
        };
        loop {
            let top = self.tops[topic].load(Ordering::Relaxed);
            let floor = self.floors[topic].load(Ordering::Relaxed);
            if top.saturating_sub(floor) <= max_lag {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(LAG_POLL).await;
        }
    }
}

/// Where a loop publishes.
#[derive(Debug)]
pub(crate) enum Client {
    /// `herald.v1.Rooms/Publish`.
    Herald(RoomsClient<Channel>),
    /// The Socket.IO peer's acknowledged `publish` event.
    SocketIo(Box<engineio::Publisher>),
}

impl Client {
    /// Publishes a benchmark event sent at `sent` (ns); returns its offset.
    async fn publish(
        &mut self,
        publishing: &Publishing,
        topic: usize,
        sent: u64,
    ) -> Result<u64, String> {
        match self {
            Client::Herald(client) => {
                let mut request = Request::new(PublishRequest {
                    topic: publishing.topics[topic].clone(),
                    r#type: EVENT_TYPE.to_owned(),
                    data: Some(wire::event_data(sent)),
                    idempotency_key: None,
                    durable: false,
                });
                request
                    .metadata_mut()
                    .insert("authorization", publishing.bearer.clone());
                match client.publish(request).await {
                    Ok(response) => {
                        Ok(response.get_ref().position.as_ref().map_or(0, |p| p.offset))
                    }
                    Err(status) => Err(format!("{:?}: {}", status.code(), status.message())),
                }
            }
            Client::SocketIo(publisher) => {
                let data = serde_json::json!({ wire::SENT_NS: sent });
                publisher
                    .publish(&publishing.topics[topic], EVENT_TYPE, &data)
                    .await
            }
        }
    }
}

/// One publish loop; runs from `start` until `deadline`.
pub(crate) async fn run(
    publishing: Arc<Publishing>,
    mut client: Client,
    start: Instant,
    deadline: Instant,
) {
    let topics = publishing.topics.len() as u64;
    loop {
        let n = publishing.next.fetch_add(1, Ordering::Relaxed);
        if let Some(rate) = publishing.rate {
            let due = start + Duration::from_secs_f64(n as f64 / rate);
            if due >= deadline {
                return;
            }
            tokio::time::sleep_until(due).await;
        }
        // A server slower than the rate leaves publishes overdue: they are not made up after
        // the deadline.
        if Instant::now() >= deadline {
            return;
        }
        let topic = (n % topics) as usize;
        if !publishing.wait_for_lag(topic, deadline).await {
            return;
        }
        let sent = wire::now_ns();
        match client.publish(&publishing, topic, sent).await {
            Ok(offset) => {
                publishing.tops[topic].fetch_max(offset, Ordering::Relaxed);
                publishing.acked.fetch_add(1, Ordering::Relaxed);
                if sent >= publishing.window_start_ns.load(Ordering::Relaxed) {
                    let micros = wire::now_ns().saturating_sub(sent) / 1_000;
                    lock(&publishing.round_trips).record(micros);
                }
            }
            Err(error) => {
                publishing.failed(error);
                tokio::time::sleep(ERROR_PAUSE).await;
            }
        }
    }
}
