//! Live courier location: fixes from `Orders/ReportLocation`, checked, throttled and fanned
//! out on the signal lane (ephemeral: no offset, no history), with the last known fix stored
//! now and then so a map is never blank after a reconnect or a restart.
//!
//! Per order ([`Track`], pure, tested with plain numbers):
//! - a fix is checked ([`check_fix`], [`check_delivery`]): coordinates in range, accuracy ≥ 0,
//!   device time at most 30 s ahead, from the assigned courier, while OUT_FOR_DELIVERY;
//! - fan-out is throttled to one `courier.location` signal per `location_throttle` (1 s): a
//!   fix goes at once when a second passed since the last one went (server time), or when it
//!   is a second newer than that one (device time: the courier's own cadence) and at least
//!   half a second passed; otherwise it waits and only the newest (by device time) goes when
//!   the window ends, so watchers always end on the newest fix. Pacing on the courier's clock
//!   passes every fix of a courier sending once a second at once, whatever the network's
//!   jitter; a strict server-side interval equal to the courier's period would hold back
//!   about half of them and lag further behind after every delay;
//! - the last known fix is written to `order_location` at most every `location_store_interval`
//!   (10 s), not once per fix;
//! - after `location_stale_after` (30 s) without a fix, one `courier.location_stale` signal.
//!
//! The [`Tracker`] holds the tracks of this node and one task that wakes every
//! `location_timer` (25 ms) to send what a window held back, mark silent couriers stale and
//! store what is due. A delivery's first fix and a silent courier's last are written at once;
//! periodic writes go to a writer task that batches them, a transaction per batch, so a slow
//! database never delays a courier's stream. Its time is the domain clock ([`crate::clock`]), so tests freeze and
//! advance it instead of sleeping.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use herald_proto::{
    support::lock,
    v1::{CourierLocation, LocationFix, OrderStatus},
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{
    events, queries,
    rules::{Order, OrderId, RuleError, status_name},
};
use crate::{
    auth::{Principal, SERVICE_ROLE},
    clock::SharedClock,
    domain::inbox::{events::timestamp, rules::unix_ms},
    node::Node,
    store::{Store, StoreError},
};

/// How far ahead of the server's clock a fix's device time may be.
pub const MAX_FUTURE_SKEW_MS: i64 = 30_000;
/// How long a confirmed delivery (courier and status) is trusted before the database is asked
/// again: one read per order per 10 s. Status changes made on this node end it at once
/// ([`Tracker::forget`]); one made on another node is seen within this time.
pub const RECHECK_MS: i64 = 10_000;
/// A track without a fix for this long is dropped (its order is long over or abandoned).
pub const FORGET_AFTER_MS: i64 = 10 * 60_000;

/// A checked fix.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fix {
    pub lat: f64,
    pub lng: f64,
    pub accuracy_m: f64,
    pub heading_deg: Option<f64>,
    pub speed_mps: Option<f64>,
    pub device_time_ms: i64,
}

impl Fix {
    pub fn message(&self) -> LocationFix {
        LocationFix {
            lat: self.lat,
            lng: self.lng,
            accuracy_m: self.accuracy_m,
            heading_deg: self.heading_deg,
            speed_mps: self.speed_mps,
            device_time: Some(timestamp(self.device_time_ms)),
        }
    }
}

/// A fix as `order_location` stores it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredFix {
    pub order_id: OrderId,
    pub courier_id: String,
    pub fix: Fix,
    pub received_at_ms: i64,
}

impl StoredFix {
    pub fn location(&self) -> CourierLocation {
        CourierLocation {
            order_id: self.order_id.get(),
            courier_id: self.courier_id.clone(),
            fix: Some(self.fix.message()),
            received_at: Some(timestamp(self.received_at_ms)),
        }
    }
}

/// Checks one fix's values at `now_ms`.
pub fn check_fix(fix: Option<&LocationFix>, now_ms: i64) -> Result<Fix, RuleError> {
    let invalid = |message: String| Err(RuleError::Invalid(message));
    let Some(fix) = fix else {
        return invalid("fix is required".into());
    };
    if !fix.lat.is_finite() || !(-90.0..=90.0).contains(&fix.lat) {
        return invalid(format!(
            "fix.lat is {}; latitude is -90 to 90 degrees",
            fix.lat
        ));
    }
    if !fix.lng.is_finite() || !(-180.0..=180.0).contains(&fix.lng) {
        return invalid(format!(
            "fix.lng is {}; longitude is -180 to 180 degrees",
            fix.lng
        ));
    }
    if !fix.accuracy_m.is_finite() || fix.accuracy_m < 0.0 {
        return invalid(format!(
            "fix.accuracy_m is {}; the accuracy radius is 0 metres or more",
            fix.accuracy_m
        ));
    }
    if let Some(heading) = fix.heading_deg
        && (!heading.is_finite() || !(0.0..360.0).contains(&heading))
    {
        return invalid(format!(
            "fix.heading_deg is {heading}; the heading is 0 to less than 360 degrees"
        ));
    }
    if let Some(speed) = fix.speed_mps
        && (!speed.is_finite() || speed < 0.0)
    {
        return invalid(format!(
            "fix.speed_mps is {speed}; the speed is 0 metres per second or more"
        ));
    }
    let Some(device_time) = &fix.device_time else {
        return invalid("fix.device_time is required".into());
    };
    let device_time_ms = events::ms_of(device_time);
    if device_time_ms > now_ms + MAX_FUTURE_SKEW_MS {
        return invalid(format!(
            "fix.device_time is {} ms ahead of the server's clock; at most {MAX_FUTURE_SKEW_MS} \
             ms ahead is accepted (check the phone's clock)",
            device_time_ms - now_ms
        ));
    }
    Ok(Fix {
        lat: fix.lat,
        lng: fix.lng,
        accuracy_m: fix.accuracy_m,
        heading_deg: fix.heading_deg,
        speed_mps: fix.speed_mps,
        device_time_ms,
    })
}

/// Whether `courier` may report fixes for `order` now: its assigned courier, while it is out
/// for delivery.
pub fn check_delivery(order: &Order, courier: &str) -> Result<(), RuleError> {
    if order.courier_id.as_deref() != Some(courier) {
        return Err(RuleError::Forbidden(format!(
            "you are not the courier assigned to order {}: fixes come from its assigned courier",
            order.id
        )));
    }
    if order.status != OrderStatus::OutForDelivery {
        return Err(RuleError::Precondition(format!(
            "order {} is {}; fixes are accepted only while it is out for delivery",
            order.id,
            status_name(order.status)
        )));
    }
    Ok(())
}

/// The tracking intervals, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub throttle_ms: i64,
    pub store_every_ms: i64,
    pub stale_after_ms: i64,
}

/// What became of an accepted fix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offered {
    /// Older than a fix already received: the newest stays.
    Superseded,
    /// The newest fix: `send` it now (else it waits for the window's end), `store` it now.
    Newest { send: bool, store: bool },
}

/// What a track has due at a tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Due {
    /// Send the fix the window held back.
    pub send: bool,
    /// Send `courier.location_stale`.
    pub stale: bool,
    /// Store the newest fix.
    pub store: bool,
    /// Drop the track.
    pub forget: bool,
}

/// One order's tracking state (pure: `now` is passed in).
#[derive(Debug, Clone, PartialEq)]
pub struct Track {
    pub courier_id: String,
    /// When the delivery was last confirmed from the database.
    pub checked_at_ms: i64,
    /// The newest fix and when it was received.
    pub newest: Option<(Fix, i64)>,
    /// When the last fix was passed on (server time), and that moment on the courier's clock
    /// (the fix's device time, plus how long it was held back).
    sent_at_ms: Option<i64>,
    sent_device_ms: Option<i64>,
    /// The newest fix has not been sent.
    pending: bool,
    stored_at_ms: Option<i64>,
    /// The newest fix has not been stored.
    unsaved: bool,
    stale_sent: bool,
}

impl Track {
    pub fn new(courier_id: String, checked_at_ms: i64) -> Track {
        Track {
            courier_id,
            checked_at_ms,
            newest: None,
            sent_at_ms: None,
            sent_device_ms: None,
            pending: false,
            stored_at_ms: None,
            unsaved: false,
            stale_sent: false,
        }
    }

    /// Takes a checked fix received at `now`.
    pub fn offer(&mut self, fix: Fix, now: i64, timing: Timing) -> Offered {
        if self
            .newest
            .is_some_and(|(newest, _)| fix.device_time_ms < newest.device_time_ms)
        {
            return Offered::Superseded;
        }
        self.newest = Some((fix, now));
        self.stale_sent = false;
        let send = match (self.sent_at_ms, self.sent_device_ms) {
            (Some(sent), Some(sent_device)) => {
                let server = now - sent;
                let courier = fix.device_time_ms - sent_device;
                server >= timing.throttle_ms
                    || (courier >= timing.throttle_ms && 2 * server >= timing.throttle_ms)
            }
            _ => true,
        };
        if send {
            self.sent_at_ms = Some(now);
            self.sent_device_ms = Some(fix.device_time_ms);
        }
        self.pending = !send;
        let store = self
            .stored_at_ms
            .is_none_or(|stored| now - stored >= timing.store_every_ms);
        if store {
            self.stored_at_ms = Some(now);
        }
        self.unsaved = !store;
        Offered::Newest { send, store }
    }

    /// What is due at `now`; the track counts it as done.
    pub fn due(&mut self, now: i64, timing: Timing) -> Due {
        let mut due = Due::default();
        let Some((newest, received)) = self.newest else {
            // A track is made just before its first fix is offered.
            due.forget = now - self.checked_at_ms >= FORGET_AFTER_MS;
            return due;
        };
        if self.pending
            && self
                .sent_at_ms
                .is_none_or(|sent| now - sent >= timing.throttle_ms)
        {
            self.pending = false;
            self.sent_at_ms = Some(now);
            // Held back since `received`: the courier's clock moved on as much, so the next
            // fix is not a second newer before a second has passed here.
            self.sent_device_ms = Some(newest.device_time_ms + (now - received));
            due.send = true;
        }
        if !self.stale_sent && now - received >= timing.stale_after_ms {
            self.stale_sent = true;
            due.stale = true;
        }
        let store_due = self
            .stored_at_ms
            .is_none_or(|stored| now - stored >= timing.store_every_ms);
        if self.unsaved && (store_due || due.stale) {
            self.unsaved = false;
            self.stored_at_ms = Some(now);
            due.store = true;
        }
        due.forget = now - received >= FORGET_AFTER_MS;
        due
    }

    /// Whether the fix shown at `now` is stale.
    pub fn is_stale(&self, now: i64, timing: Timing) -> bool {
        self.newest
            .is_some_and(|(_, received)| now - received >= timing.stale_after_ms)
    }
}

/// Why a fix was refused.
#[derive(Debug, thiserror::Error)]
pub enum FixError {
    #[error(transparent)]
    Rule(#[from] RuleError),
    #[error("no order {0}")]
    NotFound(OrderId),
    #[error(
        "too many orders are tracked on this server (at most {0}, orders.max_tracked_orders); retry later"
    )]
    Busy(usize),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl FixError {
    /// The gRPC code name this refusal alone would have had.
    pub fn code(&self) -> &'static str {
        match self {
            FixError::Rule(RuleError::Invalid(_)) => "INVALID_ARGUMENT",
            FixError::Rule(RuleError::Forbidden(_)) => "PERMISSION_DENIED",
            FixError::Rule(RuleError::Precondition(_)) => "FAILED_PRECONDITION",
            FixError::NotFound(_) => "NOT_FOUND",
            FixError::Busy(_) => "RESOURCE_EXHAUSTED",
            FixError::Store(StoreError::Unavailable(_)) => "UNAVAILABLE",
            FixError::Store(_) => "INTERNAL",
        }
    }
}

/// What the tracker is configured with.
#[derive(Debug, Clone, Copy)]
pub struct TrackerConfig {
    pub timing: Timing,
    /// How often the tracker's task wakes.
    pub timer: Duration,
    pub max_tracked: usize,
}

/// The tracks of this node and the task that sends what their windows held back (see the
/// module docs). Cheap to clone.
#[derive(Debug, Clone)]
pub struct Tracker {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    node: Arc<Node>,
    store: Store,
    clock: SharedClock,
    config: TrackerConfig,
    tracks: Mutex<HashMap<OrderId, Track>>,
    counters: Counters,
    /// Periodic writes of the last known fix, for the writer task ([`Tracker::run`]).
    writes: mpsc::Sender<StoredFix>,
    queued: Mutex<Option<mpsc::Receiver<StoredFix>>>,
}

#[derive(Debug, Default)]
struct Counters {
    fixes: AtomicU64,
    signals: AtomicU64,
    stores: AtomicU64,
    store_transactions: AtomicU64,
}

/// Periodic writes waiting for the writer at most; more are skipped (the next one of the
/// order, 10 s later, writes a newer fix anyway).
const MAX_QUEUED_WRITES: usize = 10_000;
/// The most fixes the writer stores in one transaction.
const WRITE_BATCH: usize = 500;

/// What the tracker of this node did since it started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TrackerStats {
    /// Orders tracked now.
    pub tracked: usize,
    /// Fixes accepted.
    pub fixes: u64,
    /// Location and staleness signals sent.
    pub signals: u64,
    /// Rows of the last known fix written to the database.
    pub stores: u64,
    /// The transactions they took (periodic writes are batched).
    pub store_transactions: u64,
}

/// One order's work found due at a tick.
struct DueWork {
    stored: StoredFix,
    due: Due,
    silent_ms: i64,
}

impl Tracker {
    pub fn new(node: Arc<Node>, store: Store, clock: SharedClock, config: TrackerConfig) -> Self {
        let (writes, queued) = mpsc::channel(MAX_QUEUED_WRITES);
        Tracker {
            inner: Arc::new(Inner {
                node,
                store,
                clock,
                config,
                tracks: Mutex::new(HashMap::new()),
                counters: Counters::default(),
                writes,
                queued: Mutex::new(Some(queued)),
            }),
        }
    }

    fn now_ms(&self) -> i64 {
        unix_ms(self.inner.clock.now())
    }

    pub fn timing(&self) -> Timing {
        self.inner.config.timing
    }

    /// How many orders are tracked on this node.
    pub fn tracked(&self) -> usize {
        lock(&self.inner.tracks).len()
    }

    /// The tracker's counters.
    pub fn stats(&self) -> TrackerStats {
        let counters = &self.inner.counters;
        TrackerStats {
            tracked: self.tracked(),
            fixes: counters.fixes.load(Ordering::Relaxed),
            signals: counters.signals.load(Ordering::Relaxed),
            stores: counters.stores.load(Ordering::Relaxed),
            store_transactions: counters.store_transactions.load(Ordering::Relaxed),
        }
    }

    /// Takes one fix from `courier` for `order_id`: checks it, sends it on or holds it for
    /// the window's end, and stores it when due.
    pub async fn report(
        &self,
        courier: &str,
        order_id: OrderId,
        fix: Option<&LocationFix>,
    ) -> Result<Offered, FixError> {
        let now = self.now_ms();
        let fix = check_fix(fix, now)?;
        let confirmed = lock(&self.inner.tracks)
            .get(&order_id)
            .is_some_and(|track| {
                track.courier_id == courier && now - track.checked_at_ms < RECHECK_MS
            });
        if !confirmed {
            self.confirm(courier, order_id, now).await?;
        }
        let (offered, stored, first) = {
            let mut tracks = lock(&self.inner.tracks);
            let Some(track) = tracks.get_mut(&order_id) else {
                // Forgotten in between (the order changed on this node): ask again next time.
                return Err(FixError::Rule(RuleError::Precondition(format!(
                    "order {order_id} changed while the fix was checked; send the next one"
                ))));
            };
            let first = track.stored_at_ms.is_none();
            let offered = track.offer(fix, now, self.inner.config.timing);
            self.inner.counters.fixes.fetch_add(1, Ordering::Relaxed);
            let stored = StoredFix {
                order_id,
                courier_id: track.courier_id.clone(),
                fix,
                received_at_ms: now,
            };
            (offered, stored, first)
        };
        if let Offered::Newest { send, store } = offered {
            if send {
                self.send(events::LOCATION_SIGNAL, &stored, &stored.location())
                    .await;
            }
            // The first fix of a delivery is stored before the call goes on (a map is never
            // blank after that); later ones by the writer, off the courier's path.
            if store && first {
                self.save(std::slice::from_ref(&stored)).await;
            } else if store {
                self.queue(stored);
            }
        }
        Ok(offered)
    }

    /// Reads the order and starts (or renews) its track if `courier` may report on it.
    async fn confirm(&self, courier: &str, order_id: OrderId, now: i64) -> Result<(), FixError> {
        let row = queries::find(self.inner.store.db(), order_id)
            .await?
            .ok_or(FixError::NotFound(order_id))?;
        let order = queries::state_of(&row)?;
        if let Err(refused) = check_delivery(&order, courier) {
            lock(&self.inner.tracks).remove(&order_id);
            return Err(refused.into());
        }
        let mut tracks = lock(&self.inner.tracks);
        if let Some(track) = tracks.get_mut(&order_id)
            && track.courier_id == courier
        {
            track.checked_at_ms = now;
            return Ok(());
        }
        if !tracks.contains_key(&order_id) && tracks.len() >= self.inner.config.max_tracked {
            return Err(FixError::Busy(self.inner.config.max_tracked));
        }
        tracks.insert(order_id, Track::new(courier.to_owned(), now));
        Ok(())
    }

    /// Ends tracking of an order whose delivery changed on this node (delivered, cancelled,
    /// reassigned): its next fix is checked against the database again.
    pub fn forget(&self, order_id: OrderId) {
        lock(&self.inner.tracks).remove(&order_id);
    }

    /// The last known fix of an order (this node's newest, else the stored one), and whether
    /// it is stale at `now`.
    pub async fn last_known(
        &self,
        conn: &impl sea_orm::ConnectionTrait,
        order_id: OrderId,
    ) -> Result<Option<(CourierLocation, i64)>, StoreError> {
        let newest = lock(&self.inner.tracks).get(&order_id).and_then(|track| {
            track.newest.map(|(fix, received)| StoredFix {
                order_id,
                courier_id: track.courier_id.clone(),
                fix,
                received_at_ms: received,
            })
        });
        if let Some(newest) = newest {
            return Ok(Some((newest.location(), newest.received_at_ms)));
        }
        Ok(queries::location(conn, order_id)
            .await?
            .map(|row| (events::stored_location(&row), row.received_at_ms)))
    }

    /// The domain clock's now, in Unix milliseconds.
    pub fn now(&self) -> i64 {
        self.now_ms()
    }

    /// Sends a location or staleness signal on the order's topic, as the order's courier
    /// through the node (so the signal lane's rate limit applies per courier). A refused
    /// signal is logged: signals are at most once by contract.
    async fn send<T: serde::Serialize>(&self, kind: &str, fix: &StoredFix, body: &T) {
        let courier = Principal::new(
            fix.courier_id.clone(),
            vec![SERVICE_ROLE.to_owned()],
            u64::MAX,
        );
        let topic = events::order_topic(fix.order_id);
        self.inner.counters.signals.fetch_add(1, Ordering::Relaxed);
        if let Err(error) = self
            .inner
            .node
            .signal(
                &courier,
                topic,
                kind,
                Some(events::LOCATION_KEY.to_owned()),
                events::signal_data(body),
            )
            .await
        {
            tracing::debug!(order = %fix.order_id, %error, "a location signal was not sent");
        }
    }

    /// Stores fixes in one transaction (a failure is logged: the next write of the order
    /// stores a newer fix).
    async fn save(&self, fixes: &[StoredFix]) {
        if fixes.is_empty() {
            return;
        }
        let counters = &self.inner.counters;
        counters
            .stores
            .fetch_add(fixes.len() as u64, Ordering::Relaxed);
        counters.store_transactions.fetch_add(1, Ordering::Relaxed);
        let result = async {
            let tx = self.inner.store.begin_as("herald-tracker").await?;
            for fix in fixes {
                queries::save_location(tx.conn(), fix).await?;
            }
            tx.commit().await?;
            Ok::<_, StoreError>(())
        }
        .await;
        if let Err(error) = result {
            tracing::warn!(fixes = fixes.len(), %error, "could not store the last known fixes");
        }
    }

    /// Hands a periodic write to the writer task; skipped when its queue is full.
    fn queue(&self, fix: StoredFix) {
        if self.inner.writes.try_send(fix).is_err() {
            tracing::debug!("the last-known-fix writer is behind; a periodic write is skipped");
        }
    }

    /// Writes queued fixes, a batch per transaction (the newest per order), until `shutdown`;
    /// then what is still queued.
    async fn write(self, mut queued: mpsc::Receiver<StoredFix>, shutdown: CancellationToken) {
        loop {
            let first = tokio::select! {
                _ = shutdown.cancelled() => None,
                fix = queued.recv() => fix,
            };
            let Some(first) = first else { break };
            let mut batch: HashMap<OrderId, StoredFix> = HashMap::new();
            batch.insert(first.order_id, first);
            while batch.len() < WRITE_BATCH
                && let Ok(fix) = queued.try_recv()
            {
                batch.insert(fix.order_id, fix);
            }
            let batch: Vec<StoredFix> = batch.into_values().collect();
            self.save(&batch).await;
        }
        let mut rest = Vec::new();
        while let Ok(fix) = queued.try_recv() {
            rest.push(fix);
        }
        for batch in rest.chunks(WRITE_BATCH) {
            self.save(batch).await;
        }
    }

    /// Sends, marks stale and stores what is due at the domain clock's now.
    pub async fn tick(&self) {
        let now = self.now_ms();
        let timing = self.inner.config.timing;
        let work: Vec<DueWork> = {
            let mut tracks = lock(&self.inner.tracks);
            let mut work = Vec::new();
            tracks.retain(|order_id, track| {
                let due = track.due(now, timing);
                if let Some((fix, received)) = track.newest
                    && (due.send || due.stale || due.store)
                {
                    work.push(DueWork {
                        stored: StoredFix {
                            order_id: *order_id,
                            courier_id: track.courier_id.clone(),
                            fix,
                            received_at_ms: received,
                        },
                        due,
                        silent_ms: now - received,
                    });
                }
                !due.forget
            });
            work
        };
        // Held-back fixes first (watchers wait for them), then the stores, then staleness:
        // once a watcher sees `courier.location_stale`, the fix it names is stored.
        for item in work.iter().filter(|item| item.due.send) {
            self.send(
                events::LOCATION_SIGNAL,
                &item.stored,
                &item.stored.location(),
            )
            .await;
        }
        let silent: Vec<StoredFix> = work
            .iter()
            .filter(|item| item.due.store && item.due.stale)
            .map(|item| item.stored.clone())
            .collect();
        self.save(&silent).await;
        for item in work.iter().filter(|item| item.due.store && !item.due.stale) {
            self.queue(item.stored.clone());
        }
        for item in work.iter().filter(|item| item.due.stale) {
            let stale = events::stale(&item.stored.location(), item.silent_ms);
            self.send(events::STALE_SIGNAL, &item.stored, &stale).await;
        }
    }

    /// Ticks every `location_timer` and writes queued fixes until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let queued = lock(&self.inner.queued).take();
        let writer =
            queued.map(|queued| tokio::spawn(self.clone().write(queued, shutdown.clone())));
        self.clone().tick_until(shutdown).await;
        if let Some(writer) = writer {
            let _ = writer.await;
        }
    }

    async fn tick_until(self, shutdown: CancellationToken) {
        let mut timer = tokio::time::interval(self.inner.config.timer);
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = timer.tick() => {}
            }
            if self.tracked() > 0 {
                self.tick().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use herald_proto::v1::OrderActor;

    use super::*;

    const TIMING: Timing = Timing {
        throttle_ms: 1_000,
        store_every_ms: 10_000,
        stale_after_ms: 30_000,
    };

    fn fix(device_time_ms: i64) -> Fix {
        Fix {
            lat: 48.85,
            lng: 2.35,
            accuracy_m: 5.0,
            heading_deg: None,
            speed_mps: None,
            device_time_ms,
        }
    }

    fn message(lat: f64, lng: f64, accuracy: f64, device_time_ms: i64) -> LocationFix {
        LocationFix {
            lat,
            lng,
            accuracy_m: accuracy,
            heading_deg: Some(90.0),
            speed_mps: Some(4.0),
            device_time: Some(timestamp(device_time_ms)),
        }
    }

    fn invalid(result: Result<Fix, RuleError>) -> String {
        match result {
            Err(RuleError::Invalid(message)) => message,
            other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
        }
    }

    #[test]
    fn fixes_outside_the_ranges_are_refused_with_the_field_and_the_range() {
        let now = 1_000_000;
        assert!(check_fix(Some(&message(48.0, 2.0, 0.0, now)), now).is_ok());
        assert!(
            invalid(check_fix(Some(&message(91.0, 2.0, 1.0, now)), now)).contains("fix.lat is 91")
        );
        assert!(
            invalid(check_fix(Some(&message(f64::NAN, 2.0, 1.0, now)), now)).contains("fix.lat")
        );
        assert!(
            invalid(check_fix(Some(&message(1.0, -180.5, 1.0, now)), now)).contains("-180 to 180")
        );
        assert!(invalid(check_fix(Some(&message(1.0, 1.0, -1.0, now)), now)).contains("accuracy"));
        let mut heading = message(1.0, 1.0, 1.0, now);
        heading.heading_deg = Some(360.0);
        assert!(invalid(check_fix(Some(&heading), now)).contains("heading"));
        let mut speed = message(1.0, 1.0, 1.0, now);
        speed.speed_mps = Some(-2.0);
        assert!(invalid(check_fix(Some(&speed), now)).contains("speed"));
        let mut untimed = message(1.0, 1.0, 1.0, now);
        untimed.device_time = None;
        assert!(invalid(check_fix(Some(&untimed), now)).contains("device_time is required"));
        assert!(check_fix(Some(&message(1.0, 1.0, 1.0, now + 30_000)), now).is_ok());
        assert!(
            invalid(check_fix(Some(&message(1.0, 1.0, 1.0, now + 30_001)), now)).contains("ahead")
        );
        assert!(invalid(check_fix(None, now)).contains("required"));
    }

    #[test]
    fn only_the_assigned_courier_reports_and_only_while_out_for_delivery() {
        let mut order = Order {
            id: OrderId::new(3).unwrap(),
            customer_id: "carol".into(),
            courier_id: Some("kim".into()),
            status: OrderStatus::OutForDelivery,
            version: 6,
            currency: "EUR".into(),
            total_minor: 100,
            paid_minor: 0,
            cancel_reason: String::new(),
            cancelled_by: OrderActor::Unspecified,
            updated_at_ms: 0,
        };
        assert!(check_delivery(&order, "kim").is_ok());
        assert!(matches!(
            check_delivery(&order, "lee"),
            Err(RuleError::Forbidden(_))
        ));
        order.status = OrderStatus::Delivered;
        let Err(RuleError::Precondition(message)) = check_delivery(&order, "kim") else {
            panic!()
        };
        assert!(message.contains("order 3 is delivered"), "{message}");
    }

    #[test]
    fn ten_fixes_a_second_go_out_once_a_second_ending_on_the_newest() {
        let mut track = Track::new("kim".into(), 0);
        let mut sent = vec![];
        // Fixes every 100 ms for 3 s, with a tick every 25 ms in between.
        for ms in (0..3_000).step_by(25) {
            if ms % 100 == 0
                && let Offered::Newest { send: true, .. } = track.offer(fix(ms), ms, TIMING)
            {
                sent.push((ms, ms));
            }
            if track.due(ms, TIMING).send {
                sent.push((ms, track.newest.unwrap().0.device_time_ms));
            }
        }
        let times: Vec<i64> = sent.iter().map(|(at, _)| *at).collect();
        assert_eq!(times, vec![0, 1_000, 2_000]);
        assert!(
            times.windows(2).all(|w| w[1] - w[0] >= 1_000),
            "at most one a second"
        );
        // The last fix (2,900 ms) is held back and goes when its window ends.
        assert!(!track.due(2_999, TIMING).send);
        assert!(track.due(3_000, TIMING).send);
        assert_eq!(track.newest.unwrap().0.device_time_ms, 2_900);
    }

    #[test]
    fn a_burst_sends_the_first_at_once_and_the_newest_at_the_end_of_the_window() {
        let mut track = Track::new("kim".into(), 0);
        assert_eq!(
            track.offer(fix(0), 0, TIMING),
            Offered::Newest {
                send: true,
                store: true
            }
        );
        for n in 1..10 {
            assert_eq!(
                track.offer(fix(n), 0, TIMING),
                Offered::Newest {
                    send: false,
                    store: false
                }
            );
        }
        assert_eq!(track.offer(fix(5), 0, TIMING), Offered::Superseded);
        assert_eq!(track.due(999, TIMING), Due::default());
        let due = track.due(1_000, TIMING);
        assert!(due.send && !due.stale);
        assert_eq!(
            track.newest.unwrap().0.device_time_ms,
            9,
            "always the newest"
        );
        assert!(
            !track.due(2_000, TIMING).send,
            "nothing new: nothing to send"
        );
    }

    #[test]
    fn a_fast_courier_between_ticks_is_passed_on_once_a_second_never_sooner() {
        let mut track = Track::new("kim".into(), 0);
        let mut sent = vec![];
        // Fixes every 100 ms, 10 ms after the tracker's ticks (every 25 ms), for 10 s.
        for ms in 0..10_000 {
            if ms % 100 == 10
                && let Offered::Newest { send: true, .. } = track.offer(fix(ms), ms, TIMING)
            {
                sent.push(ms);
            }
            if ms % 25 == 0 && track.due(ms, TIMING).send {
                sent.push(ms);
            }
        }
        assert!(sent.windows(2).all(|w| w[1] - w[0] >= 1_000), "{sent:?}");
        assert_eq!(sent.len(), 10, "{sent:?}");
        let mut fresh = Track::new("kim".into(), 0);
        assert!(
            !fresh.due(1_000, TIMING).forget,
            "a new track waits for its first fix"
        );
    }

    #[test]
    fn a_courier_sending_once_a_second_is_passed_on_at_once_whatever_the_network_jitter() {
        let mut track = Track::new("kim".into(), 0);
        for n in 0..60 {
            // Device time on the second; arrival up to 40 ms late, alternately.
            let device = n * 1_000;
            let arrival = device + if n % 2 == 0 { 40 } else { 0 };
            let offered = track.offer(fix(device), arrival, TIMING);
            assert!(
                matches!(offered, Offered::Newest { send: true, .. }),
                "fix {n} waited: {offered:?}"
            );
        }
    }

    #[test]
    fn a_backlog_arriving_at_once_sends_the_first_then_the_newest_a_second_later() {
        let mut track = Track::new("kim".into(), 0);
        // Thirty fixes a second apart (device time), uploaded together after a tunnel.
        let mut sent = 0;
        for n in 0..30 {
            if let Offered::Newest { send: true, .. } = track.offer(fix(n * 1_000), 30_000, TIMING)
            {
                sent += 1;
            }
        }
        assert_eq!(sent, 1, "never two within half a second");
        assert!(!track.due(30_999, TIMING).send);
        assert!(track.due(31_000, TIMING).send);
        assert_eq!(track.newest.unwrap().0.device_time_ms, 29_000);
    }

    #[test]
    fn the_last_fix_is_stored_at_most_every_ten_seconds() {
        let mut track = Track::new("kim".into(), 0);
        let mut stored = 0;
        for second in 0..60 {
            let ms = second * 1_000;
            if let Offered::Newest { store: true, .. } = track.offer(fix(ms), ms, TIMING) {
                stored += 1;
            }
            if track.due(ms, TIMING).store {
                stored += 1;
            }
        }
        assert_eq!(stored, 6, "60 fixes over a minute: 6 writes");
    }

    #[test]
    fn thirty_seconds_of_silence_mark_the_fix_stale_once_until_the_next_fix() {
        let mut track = Track::new("kim".into(), 0);
        track.offer(fix(0), 0, TIMING);
        track.offer(fix(1), 500, TIMING);
        assert!(!track.is_stale(29_999, TIMING));
        let due = track.due(30_500, TIMING);
        assert!(due.stale, "30 s after the last fix");
        assert!(
            due.store,
            "the newest unsaved fix is stored when the courier goes silent"
        );
        assert!(track.is_stale(30_500, TIMING));
        assert!(!track.due(40_000, TIMING).stale, "once");
        track.offer(fix(2), 41_000, TIMING);
        assert!(!track.is_stale(41_000, TIMING));
        assert!(
            track.due(71_000, TIMING).stale,
            "again after the next silence"
        );
        assert!(track.due(41_000 + FORGET_AFTER_MS, TIMING).forget);
    }
}
