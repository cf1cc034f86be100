//! `Watch`: a subscription to `order:<id>` (the node's attach machinery: paged catch-up from
//! the database, then live, gapless, with the latest location signal right after
//! `subscribed`), seen through a [`WatchFilter`] that turns its events and signals into
//! `OrderEvent`s for one viewer.
//!
//! - Fresh (no `since`, or one history cannot continue): the snapshot read in the same
//!   database snapshot as the topic's position `P` comes first; the subscription starts at `P`.
//! - Resumed (`since` covered): the events after `since` first, then, once the replay reached
//!   `P`, the snapshot (the state they led to, and the courier's last fix), then live. Versions
//!   never go backwards along a Watch.
//! - The courier's projection leaves out payments, locations and staleness, and the watch
//!   ends ([`WatchEnd::Reassigned`]) when the order is assigned to another courier.
//! - A location older than the one already shown is left out (the signal board may greet the
//!   watch with the fix its snapshot already holds).
//! - The watch is over after DELIVERED or CANCELLED: after delivering it live, or, for an
//!   order already finished at the snapshot, right after the snapshot.

use std::collections::VecDeque;

use herald_proto::v1::{
    CourierLocation, Event, LocationStale, OrderEvent, OrderSnapshot, OrderStatus, Signal,
    StreamPosition, event::Body, order_event,
};

use super::{
    events,
    rules::{OrderId, Viewer, is_terminal},
};

/// Why a watch ended early.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEnd {
    /// The order now has another courier: the courier's watch ends (PERMISSION_DENIED).
    Reassigned(String),
}

/// Where a watch starts, decided from the snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Continue after `since` (covered by history); the snapshot follows the replay.
    Resume { since: StreamPosition },
    /// Start at the snapshot; `recovered` is false when a `since` could not be continued.
    Fresh { recovered: bool },
}

/// Turns the topic's frames into a watch's messages for one viewer.
#[derive(Debug)]
pub struct WatchFilter {
    order_id: OrderId,
    viewer: Viewer,
    /// The watching courier (the courier's projection).
    courier: Option<String>,
    epoch: String,
    recovered: bool,
    queued: VecDeque<OrderEvent>,
    /// The snapshot, until it is sent (resumed watches send it once the replay reached `at`).
    snapshot: Option<OrderSnapshot>,
    snapshot_at: u64,
    /// The offset of the last event seen.
    seen: u64,
    /// The received and device times (Unix ms) of the newest location shown, to leave out
    /// older ones.
    shown_location: (i64, i64),
    /// The snapshot said the order is finished.
    finished: bool,
    /// A terminal status was queued: end once the queue is sent.
    ending: bool,
    ended: Option<WatchEnd>,
}

impl WatchFilter {
    /// The filter of `plan` for `viewer` (`courier`: the watching courier's id) of order
    /// `order_id`, with the snapshot read at `top`, and the position to subscribe from.
    pub fn new(
        plan: Plan,
        viewer: Viewer,
        courier: Option<String>,
        order_id: OrderId,
        snapshot: OrderSnapshot,
        top: StreamPosition,
    ) -> (StreamPosition, WatchFilter) {
        let order = snapshot.order.clone().unwrap_or_default();
        let status = OrderStatus::try_from(order.status).unwrap_or_default();
        let shown_location = snapshot
            .last_location
            .as_ref()
            .map_or((i64::MIN, i64::MIN), location_times);
        let mut filter = WatchFilter {
            order_id,
            viewer,
            courier,
            epoch: top.epoch.clone(),
            recovered: true,
            queued: VecDeque::new(),
            snapshot: Some(snapshot),
            snapshot_at: top.offset,
            seen: top.offset,
            shown_location,
            finished: is_terminal(status),
            ending: false,
            ended: None,
        };
        let start = match plan {
            Plan::Fresh { recovered } => {
                filter.recovered = recovered;
                filter.send_snapshot();
                top.offset
            }
            Plan::Resume { since } => {
                filter.seen = since.offset;
                if since.offset >= top.offset {
                    filter.send_snapshot();
                }
                since.offset
            }
        };
        let position = StreamPosition {
            offset: start,
            epoch: top.epoch,
        };
        (position, filter)
    }

    fn position(&self, offset: u64) -> Option<StreamPosition> {
        Some(StreamPosition {
            offset,
            epoch: self.epoch.clone(),
        })
    }

    fn push(&mut self, event: order_event::Event, offset: u64) {
        self.queued.push_back(OrderEvent {
            event: Some(event),
            position: self.position(offset),
            recovered: self.recovered,
        });
    }

    fn send_snapshot(&mut self) {
        if let Some(snapshot) = self.snapshot.take() {
            let at = self.snapshot_at;
            self.push(order_event::Event::Snapshot(snapshot), at);
        }
    }

    /// The next message to send, if one is ready.
    pub fn next_ready(&mut self) -> Option<OrderEvent> {
        self.queued.pop_front()
    }

    /// Whether the watch is over (once nothing is queued any more), and how.
    pub fn is_over(&self) -> Option<Result<(), WatchEnd>> {
        if !self.queued.is_empty() {
            return None;
        }
        if let Some(end) = &self.ended {
            return Some(Err(end.clone()));
        }
        let caught_up = self.snapshot.is_none();
        (caught_up && (self.ending || self.finished)).then_some(Ok(()))
    }

    /// Takes one event of the topic.
    pub fn accept(&mut self, event: Event) {
        if self.ended.is_some() {
            return;
        }
        self.seen = self.seen.max(event.offset);
        let offset = event.offset;
        let courier_view = self.viewer == Viewer::Courier;
        match event.body {
            Some(Body::OrderStatusChanged(changed)) => {
                if OrderStatus::try_from(changed.status).is_ok_and(is_terminal) {
                    self.ending = true;
                }
                self.push(order_event::Event::StatusChanged(changed), offset);
            }
            Some(Body::OrderCancelled(cancelled)) => {
                self.ending = true;
                self.push(order_event::Event::Cancelled(cancelled), offset);
            }
            Some(Body::OrderCourierAssigned(assigned)) => {
                let reassigned = self
                    .courier
                    .as_deref()
                    .is_some_and(|me| assigned.courier_id != me);
                self.push(order_event::Event::CourierAssigned(assigned), offset);
                if reassigned && offset > self.snapshot_at {
                    self.ended = Some(WatchEnd::Reassigned(format!(
                        "order {} was assigned to another courier; you no longer watch it",
                        self.order_id
                    )));
                    return;
                }
            }
            Some(Body::OrderPaymentReceived(payment)) if !courier_view => {
                self.push(order_event::Event::PaymentReceived(payment), offset);
            }
            // Payments for a courier; other events on the topic (a service's own JSON events)
            // are not a watch's.
            _ => {}
        }
        if offset >= self.snapshot_at {
            self.send_snapshot();
        }
    }

    /// Takes one signal of the topic.
    pub fn accept_signal(&mut self, signal: Signal) {
        if self.viewer == Viewer::Courier || self.ended.is_some() {
            return;
        }
        let at = self.seen;
        match signal.r#type.as_str() {
            events::LOCATION_SIGNAL => {
                let Some(location) =
                    events::from_signal_data::<CourierLocation>(signal.data.as_ref())
                else {
                    return;
                };
                let times = location_times(&location);
                if times <= self.shown_location {
                    return;
                }
                self.shown_location = times;
                self.push(order_event::Event::CourierLocation(location), at);
            }
            events::STALE_SIGNAL => {
                let Some(stale) = events::from_signal_data::<LocationStale>(signal.data.as_ref())
                else {
                    return;
                };
                let last = stale.last_received_at.as_ref().map_or(0, events::ms_of);
                if last < self.shown_location.0 {
                    return; // a newer fix is already shown
                }
                self.push(order_event::Event::LocationStale(stale), at);
            }
            _ => {}
        }
    }
}

/// When a location was received and taken, to order locations newest last.
fn location_times(location: &CourierLocation) -> (i64, i64) {
    let received = location.received_at.as_ref().map_or(0, events::ms_of);
    let taken = location
        .fix
        .as_ref()
        .and_then(|fix| fix.device_time.as_ref())
        .map_or(0, events::ms_of);
    (received, taken)
}

#[cfg(test)]
mod tests {
    use herald_proto::v1::{
        CourierAssigned, Order, OrderStatusChanged, PaymentReceived, order_event::Event as E,
    };

    use super::*;
    use crate::domain::inbox::events::timestamp;

    fn top(offset: u64) -> StreamPosition {
        StreamPosition {
            offset,
            epoch: "e".into(),
        }
    }

    fn snapshot(status: OrderStatus, location_ms: Option<i64>) -> OrderSnapshot {
        OrderSnapshot {
            order: Some(Order {
                id: 9,
                status: status as i32,
                version: 4,
                ..Order::default()
            }),
            last_location: location_ms.map(|ms| CourierLocation {
                order_id: 9,
                received_at: Some(timestamp(ms)),
                ..CourierLocation::default()
            }),
            ..OrderSnapshot::default()
        }
    }

    fn status(offset: u64, to: OrderStatus) -> Event {
        Event {
            offset,
            body: Some(Body::OrderStatusChanged(OrderStatusChanged {
                order_id: 9,
                status: to as i32,
                ..OrderStatusChanged::default()
            })),
            ..Event::default()
        }
    }

    fn payment(offset: u64) -> Event {
        Event {
            offset,
            body: Some(Body::OrderPaymentReceived(PaymentReceived {
                order_id: 9,
                ..PaymentReceived::default()
            })),
            ..Event::default()
        }
    }

    fn assigned(offset: u64, courier: &str) -> Event {
        Event {
            offset,
            body: Some(Body::OrderCourierAssigned(CourierAssigned {
                order_id: 9,
                courier_id: courier.into(),
                ..CourierAssigned::default()
            })),
            ..Event::default()
        }
    }

    fn location(received_ms: i64) -> Signal {
        let body = CourierLocation {
            order_id: 9,
            courier_id: "kim".into(),
            received_at: Some(timestamp(received_ms)),
            ..CourierLocation::default()
        };
        Signal {
            r#type: events::LOCATION_SIGNAL.into(),
            data: events::signal_data(&body),
            ..Signal::default()
        }
    }

    fn drain(filter: &mut WatchFilter) -> Vec<OrderEvent> {
        std::iter::from_fn(|| filter.next_ready()).collect()
    }

    fn kinds(events: &[OrderEvent]) -> Vec<&'static str> {
        events
            .iter()
            .map(|e| match &e.event {
                Some(E::Snapshot(_)) => "snapshot",
                Some(E::StatusChanged(_)) => "status",
                Some(E::Cancelled(_)) => "cancelled",
                Some(E::CourierAssigned(_)) => "assigned",
                Some(E::CourierLocation(_)) => "location",
                Some(E::LocationStale(_)) => "stale",
                Some(E::PaymentReceived(_)) => "payment",
                None => "none",
            })
            .collect()
    }

    #[test]
    fn a_fresh_watch_starts_with_the_snapshot_then_every_change_and_ends_when_delivered() {
        let (start, mut filter) = WatchFilter::new(
            Plan::Fresh { recovered: true },
            Viewer::Customer,
            None,
            OrderId::new(9).unwrap(),
            snapshot(OrderStatus::OutForDelivery, Some(1_000)),
            top(5),
        );
        assert_eq!(start.offset, 5);
        filter.accept_signal(location(1_000));
        filter.accept_signal(location(2_000));
        filter.accept(payment(6));
        assert!(filter.is_over().is_none());
        filter.accept(status(7, OrderStatus::Delivered));
        let sent = drain(&mut filter);
        assert_eq!(kinds(&sent), ["snapshot", "location", "payment", "status"]);
        assert_eq!(sent[0].position.as_ref().unwrap().offset, 5);
        assert_eq!(
            sent[1].position.as_ref().unwrap().offset,
            5,
            "a signal keeps the last position"
        );
        assert_eq!(sent[3].position.as_ref().unwrap().offset, 7);
        assert_eq!(filter.is_over(), Some(Ok(())));
    }

    #[test]
    fn a_resumed_watch_replays_the_missed_changes_then_sends_the_snapshot() {
        let (start, mut filter) = WatchFilter::new(
            Plan::Resume { since: top(2) },
            Viewer::Admin,
            None,
            OrderId::new(9).unwrap(),
            snapshot(OrderStatus::Ready, None),
            top(4),
        );
        assert_eq!(start.offset, 2);
        assert!(drain(&mut filter).is_empty(), "nothing before the replay");
        filter.accept(status(3, OrderStatus::Preparing));
        filter.accept(status(4, OrderStatus::Ready));
        filter.accept(payment(5));
        assert_eq!(
            kinds(&drain(&mut filter)),
            ["status", "status", "snapshot", "payment"]
        );
    }

    #[test]
    fn the_courier_sees_no_payments_or_locations_and_loses_the_order_when_reassigned() {
        let (_, mut filter) = WatchFilter::new(
            Plan::Fresh { recovered: true },
            Viewer::Courier,
            Some("kim".into()),
            OrderId::new(9).unwrap(),
            snapshot(OrderStatus::Ready, None),
            top(3),
        );
        filter.accept(payment(4));
        filter.accept_signal(location(5_000));
        filter.accept(assigned(5, "lee"));
        assert_eq!(kinds(&drain(&mut filter)), ["snapshot", "assigned"]);
        assert!(matches!(
            filter.is_over(),
            Some(Err(WatchEnd::Reassigned(_)))
        ));
    }

    #[test]
    fn a_finished_order_sends_its_snapshot_and_ends() {
        let (_, mut filter) = WatchFilter::new(
            Plan::Fresh { recovered: false },
            Viewer::Customer,
            None,
            OrderId::new(9).unwrap(),
            snapshot(OrderStatus::Delivered, None),
            top(8),
        );
        let sent = drain(&mut filter);
        assert_eq!(kinds(&sent), ["snapshot"]);
        assert!(!sent[0].recovered);
        assert_eq!(filter.is_over(), Some(Ok(())));
    }
}
