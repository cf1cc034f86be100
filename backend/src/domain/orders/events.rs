//! The events of order tracking: the topics each goes to (the distribution matrix lives here,
//! as the choice of topics), the event and signal types (the only place their strings live),
//! the typed bodies, and the contract's form of a stored order.
//!
//! | event                          | order:<id> | role:admin | role:courier | role:customer | user:<courier> |
//! |--------------------------------|------------|------------|--------------|---------------|----------------|
//! | `order.placed`                 |            | yes        | yes          |               |                |
//! | `order.status_changed`         | yes        | yes        |              |               | assigned       |
//! | `order.cancelled`              | yes        | yes        |              |               | assigned       |
//! | `order.courier_assigned`       | yes        | yes        |              |               | new and previous |
//! | `order.payment_received`       | yes        | yes        |              |               |                |
//! | `courier.status_changed`       |            | yes        |              |               |                |
//! | `shop.business_status_changed` |            | yes        | yes          | yes           |                |
//! | `shop.offer_published`         |            |            |              | yes           |                |
//! | signal `courier.location`, `courier.location_stale` | yes |  |              |               |                |
//!
//! Readers: `order:<id>` — its customer and admins (couriers follow their orders through
//! `Orders/Watch`, which leaves payments and locations out, and `user:<courier>`); `role:R`
//! — holders of role R.

use herald_proto::{
    v1::{
        BusinessStatus, BusinessStatusChanged, CourierAssigned, CourierLocation, CourierStatus,
        CourierStatusChanged, Event, LocationFix, LocationStale, Offer, OfferPublished,
        Order as OrderView, OrderActor, OrderCancelled, OrderItem, OrderPlaced, OrderStatus,
        OrderStatusChanged, Payment, PaymentMethod, PaymentReceived, event::Body,
    },
    wkt::{Struct, Timestamp},
};

use super::{
    queries::{order_location, order_payment, shop_offer, shop_order, shop_status},
    rules::{Item, Order, OrderId, status_from_name},
};
use crate::{
    auth::ADMIN_ROLE,
    domain::inbox::events::timestamp,
    topic::{Topic, TopicError, TopicKind},
};

/// The role of couriers: `role:courier`, SetCourierStatus, ReportLocation.
pub const COURIER_ROLE: &str = "courier";
/// The role whose topic carries what every customer sees (business status, offers).
pub const CUSTOMER_ROLE: &str = "customer";

/// A customer placed an order (body `order_placed`).
pub const PLACED: &str = "order.placed";
/// One step along the lifecycle (body `order_status_changed`).
pub const STATUS_CHANGED: &str = "order.status_changed";
/// The order was cancelled (body `order_cancelled`).
pub const CANCELLED: &str = "order.cancelled";
/// A courier was assigned (body `order_courier_assigned`).
pub const COURIER_ASSIGNED: &str = "order.courier_assigned";
/// A payment was recorded (body `order_payment_received`).
pub const PAYMENT_RECEIVED: &str = "order.payment_received";
/// A courier set their availability (body `courier_status_changed`).
pub const COURIER_STATUS_CHANGED: &str = "courier.status_changed";
/// The shop's business status changed (body `business_status_changed`).
pub const BUSINESS_STATUS_CHANGED: &str = "shop.business_status_changed";
/// An offer was published (body `offer_published`).
pub const OFFER_PUBLISHED: &str = "shop.offer_published";

/// Signal: the courier's newest fix on an order (data: `CourierLocation` as proto3 JSON).
pub const LOCATION_SIGNAL: &str = "courier.location";
/// Signal: no fix for `orders.location_stale_after` (data: `LocationStale` as proto3 JSON).
pub const STALE_SIGNAL: &str = "courier.location_stale";
/// The key of both signals: the board keeps the latest of them per order, so a new
/// subscriber is greeted by the last fix, or by the staleness that followed it.
pub const LOCATION_KEY: &str = "courier";

/// `order:<id>`.
pub fn order_topic(id: OrderId) -> Topic {
    Topic::new(TopicKind::Order, &id.to_string()).expect("`order:<number>` is a valid topic")
}

fn role(name: &str) -> Topic {
    Topic::new(TopicKind::Role, name).expect("the role names are valid topic ids")
}

/// `role:admin`: the admins' dashboard feed.
pub fn admins() -> Topic {
    role(ADMIN_ROLE)
}

/// `role:courier`: new orders and the business status, for every courier.
pub fn couriers() -> Topic {
    role(COURIER_ROLE)
}

/// `role:customer`: the business status and offers, for every customer.
pub fn customers() -> Topic {
    role(CUSTOMER_ROLE)
}

/// `user:<courier>`: one courier's assignments and the changes of its orders.
pub fn courier_feed(courier_id: &str) -> Result<Topic, TopicError> {
    Topic::new(TopicKind::User, courier_id)
}

fn typed(body: Body) -> Event {
    Event {
        body: Some(body),
        ..Event::default()
    }
}

pub fn placed(order: OrderView) -> Event {
    typed(Body::OrderPlaced(Box::new(OrderPlaced {
        order: Some(order),
    })))
}

pub fn status_changed(body: OrderStatusChanged) -> Event {
    typed(Body::OrderStatusChanged(body))
}

pub fn cancelled(body: OrderCancelled) -> Event {
    typed(Body::OrderCancelled(body))
}

pub fn courier_assigned(body: CourierAssigned) -> Event {
    typed(Body::OrderCourierAssigned(body))
}

pub fn payment_received(body: PaymentReceived) -> Event {
    typed(Body::OrderPaymentReceived(body))
}

pub fn courier_status(courier_id: &str, status: CourierStatus, at_ms: i64) -> CourierStatusChanged {
    CourierStatusChanged {
        courier_id: courier_id.to_owned(),
        status: status as i32,
        at: Some(timestamp(at_ms)),
    }
}

pub fn courier_status_changed(body: CourierStatusChanged) -> Event {
    typed(Body::CourierStatusChanged(body))
}

pub fn business_status_changed(body: BusinessStatusChanged) -> Event {
    typed(Body::BusinessStatusChanged(body))
}

pub fn offer_published(offer: Offer) -> Event {
    typed(Body::OfferPublished(OfferPublished { offer: Some(offer) }))
}

/// The items of a stored order (a corrupt column reads as none, never a panic).
pub fn items_of(row: &shop_order::Model) -> Vec<Item> {
    serde_json::from_str(&row.items).unwrap_or_default()
}

/// The contract's form of a stored order.
pub fn order_view(row: &shop_order::Model) -> OrderView {
    OrderView {
        id: u64::try_from(row.id).unwrap_or_default(),
        customer_id: row.customer_id.clone(),
        status: status_from_name(&row.status).unwrap_or_default() as i32,
        version: u64::try_from(row.version).unwrap_or_default(),
        items: items_of(row)
            .into_iter()
            .map(|item| OrderItem {
                sku: item.sku,
                name: item.name,
                quantity: item.quantity,
                unit_price_minor: item.unit_price_minor,
                line_total_minor: item.line_total_minor,
            })
            .collect(),
        currency: row.currency.clone(),
        total_minor: row.total_minor,
        delivery_address: row.delivery_address.clone(),
        note: row.note.clone(),
        courier_id: row.courier_id.clone().unwrap_or_default(),
        paid_minor: row.paid_minor,
        created_at: Some(timestamp(row.created_at_ms)),
        updated_at: Some(timestamp(row.updated_at_ms)),
        cancel_reason: row.cancel_reason.clone(),
        cancelled_by: actor_from_name(&row.cancelled_by) as i32,
    }
}

/// The stored name of an actor role.
pub fn actor_name(actor: OrderActor) -> &'static str {
    match actor {
        OrderActor::Unspecified => "",
        OrderActor::Customer => "customer",
        OrderActor::Admin => "admin",
        OrderActor::Courier => "courier",
        OrderActor::Service => "service",
    }
}

pub fn actor_from_name(name: &str) -> OrderActor {
    [
        OrderActor::Customer,
        OrderActor::Admin,
        OrderActor::Courier,
        OrderActor::Service,
    ]
    .into_iter()
    .find(|actor| actor_name(*actor) == name)
    .unwrap_or(OrderActor::Unspecified)
}

pub fn method_name(method: PaymentMethod) -> &'static str {
    match method {
        PaymentMethod::Unspecified => "",
        PaymentMethod::Card => "card",
        PaymentMethod::Cash => "cash",
        PaymentMethod::Wallet => "wallet",
        PaymentMethod::Other => "other",
    }
}

pub fn method_from_name(name: &str) -> PaymentMethod {
    [
        PaymentMethod::Card,
        PaymentMethod::Cash,
        PaymentMethod::Wallet,
        PaymentMethod::Other,
    ]
    .into_iter()
    .find(|method| method_name(*method) == name)
    .unwrap_or(PaymentMethod::Unspecified)
}

pub fn business_name(status: BusinessStatus) -> &'static str {
    match status {
        BusinessStatus::Unspecified | BusinessStatus::Open => "open",
        BusinessStatus::Busy => "busy",
        BusinessStatus::Closed => "closed",
    }
}

pub fn business_from_name(name: &str) -> BusinessStatus {
    match name {
        "busy" => BusinessStatus::Busy,
        "closed" => BusinessStatus::Closed,
        _ => BusinessStatus::Open,
    }
}

pub fn courier_name(status: CourierStatus) -> &'static str {
    match status {
        CourierStatus::Unspecified | CourierStatus::Available => "available",
        CourierStatus::Busy => "busy",
        CourierStatus::Offline => "offline",
    }
}

pub fn courier_from_name(name: &str) -> CourierStatus {
    match name {
        "busy" => CourierStatus::Busy,
        "offline" => CourierStatus::Offline,
        _ => CourierStatus::Available,
    }
}

/// The shop's status as stored (no row yet: open, version 0).
pub fn business_view(row: Option<&shop_status::Model>) -> BusinessStatusChanged {
    match row {
        None => BusinessStatusChanged {
            status: BusinessStatus::Open as i32,
            ..BusinessStatusChanged::default()
        },
        Some(row) => BusinessStatusChanged {
            status: business_from_name(&row.status) as i32,
            message: row.message.clone(),
            version: u64::try_from(row.version).unwrap_or_default(),
            at: Some(timestamp(row.updated_at_ms)),
            changed_by: row.changed_by.clone(),
        },
    }
}

pub fn offer_view(row: &shop_offer::Model) -> Offer {
    Offer {
        id: u64::try_from(row.id).unwrap_or_default(),
        title: row.title.clone(),
        text: row.text.clone(),
        valid_until: Some(timestamp(row.valid_until_ms)),
        published_at: Some(timestamp(row.published_at_ms)),
        published_by: row.published_by.clone(),
    }
}

/// A stored payment as the `order.payment_received` body it was pushed with.
pub fn payment_view(row: &order_payment::Model, order: &Order) -> PaymentReceived {
    PaymentReceived {
        order_id: u64::try_from(row.order_id).unwrap_or_default(),
        payment: Some(Payment {
            reference: row.reference.clone(),
            amount_minor: row.amount_minor,
            currency: row.currency.clone(),
            method: method_from_name(&row.method) as i32,
            received_at: Some(timestamp(row.received_at_ms)),
            recorded_by: row.recorded_by.clone(),
        }),
        paid_minor: row.paid_minor,
        total_minor: order.total_minor,
        fully_paid: row.paid_minor >= order.total_minor,
        version: u64::try_from(row.version).unwrap_or_default(),
    }
}

/// The stored last known fix of an order.
pub fn stored_location(row: &order_location::Model) -> CourierLocation {
    CourierLocation {
        order_id: u64::try_from(row.order_id).unwrap_or_default(),
        courier_id: row.courier_id.clone(),
        fix: Some(LocationFix {
            lat: row.lat,
            lng: row.lng,
            accuracy_m: row.accuracy_m,
            heading_deg: row.heading_deg,
            speed_mps: row.speed_mps,
            device_time: Some(timestamp(row.device_time_ms)),
        }),
        received_at: Some(timestamp(row.received_at_ms)),
    }
}

/// A signal's data: the proto3 JSON of `message`, so WebSocket clients read the same shape
/// as the typed message.
pub fn signal_data<T: serde::Serialize>(message: &T) -> Option<Struct> {
    serde_json::to_value(message)
        .ok()
        .and_then(|value| serde_json::from_value(value).ok())
}

/// The typed message of a signal's data (`None` for data Herald did not write).
pub fn from_signal_data<T: serde::de::DeserializeOwned>(data: Option<&Struct>) -> Option<T> {
    let value = serde_json::to_value(data?).ok()?;
    serde_json::from_value(value).ok()
}

/// Milliseconds since the Unix epoch of a protobuf timestamp.
pub fn ms_of(time: &Timestamp) -> i64 {
    time.seconds
        .saturating_mul(1000)
        .saturating_add(i64::from(time.nanos / 1_000_000))
}

/// An `OrderStatusChanged` of a decided step.
pub fn step(
    order: &Order,
    from: OrderStatus,
    changed_by: &str,
    actor: OrderActor,
) -> OrderStatusChanged {
    OrderStatusChanged {
        order_id: order.id.get(),
        from: from as i32,
        status: order.status as i32,
        version: order.version,
        changed_by: changed_by.to_owned(),
        actor: actor as i32,
        at: Some(timestamp(order.updated_at_ms)),
        courier_id: order.courier_id.clone().unwrap_or_default(),
    }
}

/// A `LocationStale` after `silent_ms` without a fix.
pub fn stale(location: &CourierLocation, silent_ms: i64) -> LocationStale {
    LocationStale {
        order_id: location.order_id,
        courier_id: location.courier_id.clone(),
        last_fix: location.fix,
        last_received_at: location.received_at,
        silent_for: Some(herald_proto::wkt::Duration {
            seconds: silent_ms / 1000,
            nanos: i32::try_from((silent_ms % 1000) * 1_000_000).unwrap_or(0),
        }),
    }
}
