//! The rules of orders, pure: what a new order is (its items and the total the server
//! computes), which transitions are legal and who may make them, what a courier sees, and the
//! shop's inputs (business status, offers, payments). No database, no clock: the caller
//! passes `now` in.
//!
//! The lifecycle is one step at a time: PLACED → ACCEPTED → PREPARING → READY →
//! OUT_FOR_DELIVERY → DELIVERED, with CANCELLED from any status before DELIVERED. Admins (and
//! services) make every step; the assigned courier marks the pick-up (READY →
//! OUT_FOR_DELIVERY) and the delivery; customers only cancel, while PLACED or ACCEPTED. Every
//! change adds one to the order's `version`.

use std::num::NonZeroU64;

use herald_proto::v1::{BusinessStatus, CourierStatus, OrderActor, OrderStatus, PaymentMethod};
use serde::{Deserialize, Serialize};

/// The most items one order holds.
pub const MAX_ITEMS: usize = 50;
/// The largest quantity of one item.
pub const MAX_QUANTITY: u32 = 99;
/// The largest unit price, in minor units (one million in major units).
pub const MAX_UNIT_PRICE_MINOR: i64 = 100_000_000;
pub const MAX_SKU_BYTES: usize = 64;
pub const MAX_ITEM_NAME_BYTES: usize = 200;
pub const MAX_ADDRESS_BYTES: usize = 500;
pub const MAX_NOTE_BYTES: usize = 500;
pub const MAX_REASON_BYTES: usize = 500;
pub const MAX_BUSINESS_MESSAGE_BYTES: usize = 280;
pub const MAX_OFFER_TITLE_BYTES: usize = 100;
pub const MAX_OFFER_TEXT_BYTES: usize = 1000;
/// How far ahead an offer may run.
pub const MAX_OFFER_DAYS: i64 = 90;
pub const MAX_REFERENCE_BYTES: usize = 128;
/// The longest user id (a token's `sub`) an order records.
pub const MAX_USER_ID_BYTES: usize = 255;

/// Why a command was refused. Each message names the rule, the field or the current status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    /// A malformed input (INVALID_ARGUMENT).
    #[error("{0}")]
    Invalid(String),
    /// The caller's role may not (PERMISSION_DENIED); the message says who may.
    #[error("{0}")]
    Forbidden(String),
    /// Not in the state the command needs (FAILED_PRECONDITION); the message names it.
    #[error("{0}")]
    Precondition(String),
}

type Result<T, E = RuleError> = std::result::Result<T, E>;

/// An order's id: 1, 2, 3… (topic `order:<id>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OrderId(NonZeroU64);

impl OrderId {
    pub fn new(id: u64) -> Result<OrderId> {
        match NonZeroU64::new(id) {
            Some(id) if i64::try_from(id.get()).is_ok() => Ok(OrderId(id)),
            _ => Err(RuleError::Invalid(format!(
                "order_id must be an order's id (1 to {}), not {id}",
                i64::MAX
            ))),
        }
    }

    /// An id as written in a topic or a page token.
    pub fn parse(text: &str) -> Result<OrderId> {
        let id = text.parse::<u64>().map_err(|_| {
            RuleError::Invalid(format!(
                "`{text}` is not an order id: ids are decimal numbers from 1 (topic `order:<id>`)"
            ))
        })?;
        OrderId::new(id)
    }

    pub fn get(self) -> u64 {
        self.0.get()
    }

    /// The id as the database stores it (always fits: checked at construction).
    pub fn as_i64(self) -> i64 {
        i64::try_from(self.0.get()).unwrap_or(i64::MAX)
    }
}

impl std::fmt::Display for OrderId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// The lowercase name of a status, as stored and as error messages say it.
pub fn status_name(status: OrderStatus) -> &'static str {
    match status {
        OrderStatus::Unspecified => "unspecified",
        OrderStatus::Placed => "placed",
        OrderStatus::Accepted => "accepted",
        OrderStatus::Preparing => "preparing",
        OrderStatus::Ready => "ready",
        OrderStatus::OutForDelivery => "out_for_delivery",
        OrderStatus::Delivered => "delivered",
        OrderStatus::Cancelled => "cancelled",
    }
}

/// The inverse of [`status_name`] (`None` for a name Herald never writes).
pub fn status_from_name(name: &str) -> Option<OrderStatus> {
    LIFECYCLE
        .into_iter()
        .chain([OrderStatus::Cancelled])
        .find(|status| status_name(*status) == name)
}

/// The statuses in order.
pub const LIFECYCLE: [OrderStatus; 6] = [
    OrderStatus::Placed,
    OrderStatus::Accepted,
    OrderStatus::Preparing,
    OrderStatus::Ready,
    OrderStatus::OutForDelivery,
    OrderStatus::Delivered,
];

pub fn is_terminal(status: OrderStatus) -> bool {
    matches!(status, OrderStatus::Delivered | OrderStatus::Cancelled)
}

/// The one status an order may move to next (none after the last, or when cancelled).
pub fn next_status(status: OrderStatus) -> Option<OrderStatus> {
    let at = LIFECYCLE.iter().position(|s| *s == status)?;
    LIFECYCLE.get(at + 1).copied()
}

/// The place of a status along the lifecycle (CANCELLED and UNSPECIFIED have none).
fn rank(status: OrderStatus) -> Option<usize> {
    LIFECYCLE.iter().position(|s| *s == status)
}

// ---------------------------------------------------------------------------------------
// Placing an order

/// One item as the customer's app sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemInput {
    pub sku: String,
    pub name: String,
    pub quantity: u32,
    pub unit_price_minor: i64,
}

/// Place as the customer's app sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlaceInput {
    pub items: Vec<ItemInput>,
    pub currency: String,
    pub delivery_address: String,
    pub note: String,
    pub client_total_minor: i64,
}

/// One checked line of an order, with its total (stored as JSON with the order).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    pub sku: String,
    pub name: String,
    pub quantity: u32,
    pub unit_price_minor: i64,
    pub line_total_minor: i64,
}

/// A checked new order: what Place stores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOrder {
    pub items: Vec<Item>,
    pub currency: String,
    pub delivery_address: String,
    pub note: String,
    pub total_minor: i64,
}

fn text(field: &str, value: &str, max: usize, required: bool) -> Result<String> {
    let value = value.trim();
    if required && value.is_empty() {
        return Err(RuleError::Invalid(format!("{field} is required")));
    }
    if value.len() > max {
        return Err(RuleError::Invalid(format!(
            "{field} is {} bytes; the limit is {max}",
            value.len()
        )));
    }
    if value
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return Err(RuleError::Invalid(format!(
            "{field} contains control characters (only line breaks and tabs are allowed)"
        )));
    }
    Ok(value.to_owned())
}

/// A code or id: 1 to `max` bytes, no whitespace or control characters.
fn token(field: &str, value: &str, max: usize) -> Result<String> {
    if value.is_empty() {
        return Err(RuleError::Invalid(format!("{field} is required")));
    }
    if value.len() > max {
        return Err(RuleError::Invalid(format!(
            "{field} is {} bytes; the limit is {max}",
            value.len()
        )));
    }
    if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(RuleError::Invalid(format!(
            "{field} `{}` contains whitespace or control characters",
            value.escape_debug()
        )));
    }
    Ok(value.to_owned())
}

/// An ISO 4217 code: three capital letters.
pub fn currency(field: &str, value: &str) -> Result<String> {
    if value.len() == 3 && value.chars().all(|c| c.is_ascii_uppercase()) {
        Ok(value.to_owned())
    } else {
        Err(RuleError::Invalid(format!(
            "{field} `{}` is not an ISO 4217 currency code (three capital letters, for example EUR)",
            value.escape_debug()
        )))
    }
}

/// Checks a new order and computes its total from the items; a client total that disagrees
/// is refused with both amounts.
pub fn place(input: PlaceInput) -> Result<NewOrder> {
    if input.items.is_empty() {
        return Err(RuleError::Invalid(
            "items is empty: an order needs at least one item".into(),
        ));
    }
    if input.items.len() > MAX_ITEMS {
        return Err(RuleError::Invalid(format!(
            "items holds {} items; an order holds at most {MAX_ITEMS}",
            input.items.len()
        )));
    }
    let currency = currency("currency", &input.currency)?;
    let mut items = Vec::with_capacity(input.items.len());
    let mut total: i64 = 0;
    for (n, item) in input.items.into_iter().enumerate() {
        let field = |name: &str| format!("items[{n}].{name}");
        let sku = token(&field("sku"), &item.sku, MAX_SKU_BYTES)?;
        let name = text(&field("name"), &item.name, MAX_ITEM_NAME_BYTES, true)?;
        if item.quantity == 0 || item.quantity > MAX_QUANTITY {
            return Err(RuleError::Invalid(format!(
                "{} is {}; it must be 1 to {MAX_QUANTITY}",
                field("quantity"),
                item.quantity
            )));
        }
        if !(0..=MAX_UNIT_PRICE_MINOR).contains(&item.unit_price_minor) {
            return Err(RuleError::Invalid(format!(
                "{} is {}; it must be 0 to {MAX_UNIT_PRICE_MINOR} (minor units)",
                field("unit_price_minor"),
                item.unit_price_minor
            )));
        }
        // Bounded: 99 × 10^8 × 50 items fits an i64 many times over.
        let line = item.unit_price_minor * i64::from(item.quantity);
        total += line;
        items.push(Item {
            sku,
            name,
            quantity: item.quantity,
            unit_price_minor: item.unit_price_minor,
            line_total_minor: line,
        });
    }
    if input.client_total_minor != total {
        return Err(RuleError::Invalid(format!(
            "client_total_minor is {} but the items add up to {total} {currency}: \
             the server computes the total from quantity × unit_price_minor",
            input.client_total_minor
        )));
    }
    Ok(NewOrder {
        items,
        currency,
        delivery_address: text(
            "delivery_address",
            &input.delivery_address,
            MAX_ADDRESS_BYTES,
            true,
        )?,
        note: text("note", &input.note, MAX_NOTE_BYTES, false)?,
        total_minor: total,
    })
}

/// Place is refused while the shop is closed; the admin's message says why.
pub fn check_open(status: BusinessStatus, message: &str) -> Result<()> {
    if status == BusinessStatus::Closed {
        let why = if message.is_empty() {
            String::new()
        } else {
            format!(": {message}")
        };
        return Err(RuleError::Precondition(format!(
            "the shop is closed and takes no orders{why}"
        )));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Orders and commands

/// The part of an order the rules decide on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    pub id: OrderId,
    pub customer_id: String,
    pub courier_id: Option<String>,
    pub status: OrderStatus,
    pub version: u64,
    pub currency: String,
    pub total_minor: i64,
    pub paid_minor: i64,
    pub cancel_reason: String,
    pub cancelled_by: OrderActor,
    pub updated_at_ms: i64,
}

/// Who is asking, as the token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    pub user_id: String,
    pub admin: bool,
    pub service: bool,
}

impl Actor {
    /// Admins and services drive every order.
    fn drives(&self) -> bool {
        self.admin || self.service
    }

    fn is_assigned(&self, order: &Order) -> bool {
        order.courier_id.as_deref() == Some(self.user_id.as_str())
    }

    /// The role in which this actor acts on `order`.
    pub fn role_on(&self, order: &Order) -> OrderActor {
        if self.service {
            OrderActor::Service
        } else if self.admin {
            OrderActor::Admin
        } else if self.is_assigned(order) {
            OrderActor::Courier
        } else {
            OrderActor::Customer
        }
    }
}

/// A checked reason (cancellations): 1–500 bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reason(String);

impl Reason {
    pub fn parse(value: &str) -> Result<Reason> {
        text("reason", value, MAX_REASON_BYTES, true).map(Reason)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A checked payment, before the order decides on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentInput {
    pub amount_minor: i64,
    pub currency: String,
    pub method: PaymentMethod,
    pub reference: String,
}

impl PaymentInput {
    pub fn parse(amount_minor: i64, currency: &str, method: i32, reference: &str) -> Result<Self> {
        if amount_minor <= 0 {
            return Err(RuleError::Invalid(format!(
                "amount_minor is {amount_minor}; a payment is a positive amount"
            )));
        }
        let method = match PaymentMethod::try_from(method) {
            Ok(PaymentMethod::Unspecified) | Err(_) => {
                return Err(RuleError::Invalid(format!(
                    "method {method} is not a payment method: use PAYMENT_METHOD_CARD, _CASH, \
                     _WALLET or _OTHER"
                )));
            }
            Ok(method) => method,
        };
        Ok(PaymentInput {
            amount_minor,
            currency: self::currency("currency", currency)?,
            method,
            reference: token("reference", reference, MAX_REFERENCE_BYTES)?,
        })
    }
}

/// What a command asks of one order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// UpdateStatus to the next status (CANCELLED goes through [`Command::Cancel`]).
    Advance {
        to: OrderStatus,
        expected_version: Option<u64>,
    },
    /// Cancel (or UpdateStatus to CANCELLED).
    Cancel {
        reason: Reason,
        expected_version: Option<u64>,
    },
    /// AssignCourier, with the courier's availability as stored (`None`: never set).
    AssignCourier {
        courier_id: String,
        availability: Option<CourierStatus>,
    },
    /// RecordPayment (a reference not seen before).
    Pay(PaymentInput),
}

/// What a decided command changed; each becomes one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Status { from: OrderStatus, to: OrderStatus },
    Cancelled { from: OrderStatus, reason: String },
    CourierAssigned { previous: Option<String> },
    Paid(PaymentInput),
}

/// UpdateStatus's target, parsed: the next status, or CANCELLED with a reason.
pub fn parse_target(status: i32, reason: &str) -> Result<(OrderStatus, Option<Reason>)> {
    match OrderStatus::try_from(status) {
        Ok(OrderStatus::Cancelled) => Ok((OrderStatus::Cancelled, Some(Reason::parse(reason)?))),
        Ok(OrderStatus::Unspecified | OrderStatus::Placed) | Err(_) => {
            Err(RuleError::Invalid(format!(
                "status {status} is not a status an order moves to: use ORDER_STATUS_ACCEPTED, \
                 _PREPARING, _READY, _OUT_FOR_DELIVERY, _DELIVERED or _CANCELLED"
            )))
        }
        Ok(status) => Ok((status, None)),
    }
}

fn check_version(order: &Order, expected: Option<u64>) -> Result<()> {
    match expected {
        Some(expected) if expected != order.version => Err(RuleError::Precondition(format!(
            "order {} is at version {}, not {expected}: it changed since you read it; \
             reload it and decide again",
            order.id, order.version
        ))),
        _ => Ok(()),
    }
}

fn terminal_error(order: &Order) -> RuleError {
    RuleError::Precondition(format!(
        "order {} is {}: it cannot change any more",
        order.id,
        status_name(order.status)
    ))
}

/// Decides one command on `order` for `actor` at `now_ms`: the order after it and what
/// changed (nothing for a no-op), or why not.
pub fn decide(
    order: &Order,
    command: Command,
    actor: &Actor,
    now_ms: i64,
) -> Result<(Order, Vec<Change>)> {
    let mut next = order.clone();
    let change = match command {
        Command::Advance {
            to,
            expected_version,
        } => {
            may_touch(order, actor)?;
            check_version(order, expected_version)?;
            advance(order, to, actor)?;
            next.status = to;
            Change::Status {
                from: order.status,
                to,
            }
        }
        Command::Cancel {
            reason,
            expected_version,
        } => {
            may_touch(order, actor)?;
            check_version(order, expected_version)?;
            cancel(order, actor)?;
            next.status = OrderStatus::Cancelled;
            next.cancel_reason = reason.as_str().to_owned();
            next.cancelled_by = actor.role_on(order);
            Change::Cancelled {
                from: order.status,
                reason: reason.0,
            }
        }
        Command::AssignCourier {
            courier_id,
            availability,
        } => {
            if !actor.drives() {
                return Err(RuleError::Forbidden(
                    "only admins assign couriers".to_owned(),
                ));
            }
            if is_terminal(order.status) || rank(order.status) >= rank(OrderStatus::OutForDelivery)
            {
                return Err(RuleError::Precondition(format!(
                    "order {} is {}: couriers are assigned before the pick-up",
                    order.id,
                    status_name(order.status)
                )));
            }
            match availability {
                None => {
                    return Err(RuleError::Precondition(format!(
                        "`{courier_id}` is not a known courier: a courier sets a status \
                         (SetCourierStatus) before being assigned"
                    )));
                }
                Some(CourierStatus::Offline) => {
                    return Err(RuleError::Precondition(format!(
                        "courier `{courier_id}` is offline; assign an available or busy courier"
                    )));
                }
                Some(_) => {}
            }
            if order.courier_id.as_deref() == Some(courier_id.as_str()) {
                return Ok((next, Vec::new()));
            }
            next.courier_id = Some(courier_id);
            Change::CourierAssigned {
                previous: order.courier_id.clone(),
            }
        }
        Command::Pay(payment) => {
            if !actor.service {
                return Err(RuleError::Forbidden(
                    "only services (token role `service`) record payments".to_owned(),
                ));
            }
            if order.status == OrderStatus::Cancelled {
                return Err(terminal_error(order));
            }
            if payment.currency != order.currency {
                return Err(RuleError::Invalid(format!(
                    "currency is {}; order {} is in {}",
                    payment.currency, order.id, order.currency
                )));
            }
            let outstanding = order.total_minor - order.paid_minor;
            if payment.amount_minor > outstanding {
                return Err(RuleError::Precondition(format!(
                    "amount_minor {} exceeds the {outstanding} {} outstanding on order {}",
                    payment.amount_minor, order.currency, order.id
                )));
            }
            next.paid_minor += payment.amount_minor;
            Change::Paid(payment)
        }
    };
    next.version += 1;
    next.updated_at_ms = now_ms;
    Ok((next, vec![change]))
}

/// Whether `actor` may act on `order` at all: admins and services any, customers their own,
/// couriers the ones assigned to them.
fn may_touch(order: &Order, actor: &Actor) -> Result<()> {
    if actor.drives() || actor.is_assigned(order) || order.customer_id == actor.user_id {
        Ok(())
    } else {
        Err(RuleError::Forbidden(format!(
            "order {} is not yours: it may be changed by its customer, its assigned courier and admins",
            order.id
        )))
    }
}

fn advance(order: &Order, to: OrderStatus, actor: &Actor) -> Result<()> {
    if is_terminal(order.status) {
        return Err(terminal_error(order));
    }
    let next = next_status(order.status);
    if next != Some(to) {
        let next = next.map_or("none", status_name);
        return Err(RuleError::Precondition(format!(
            "order {} is {}; its next status is {next}, not {}",
            order.id,
            status_name(order.status),
            status_name(to)
        )));
    }
    if to == OrderStatus::OutForDelivery && order.courier_id.is_none() {
        return Err(RuleError::Precondition(format!(
            "order {} has no courier: assign one (AssignCourier) before it goes out for delivery",
            order.id
        )));
    }
    if actor.drives() {
        return Ok(());
    }
    let courier_step = matches!(to, OrderStatus::OutForDelivery | OrderStatus::Delivered);
    if actor.is_assigned(order) && courier_step {
        return Ok(());
    }
    if actor.is_assigned(order) {
        return Err(RuleError::Forbidden(format!(
            "couriers mark the pick-up (out_for_delivery) and the delivery; moving order {} to {} is for admins",
            order.id,
            status_name(to)
        )));
    }
    Err(RuleError::Forbidden(format!(
        "admins move orders along (the courier marks the pick-up and the delivery); customers may \
         only cancel order {}",
        order.id
    )))
}

fn cancel(order: &Order, actor: &Actor) -> Result<()> {
    if is_terminal(order.status) {
        return Err(terminal_error(order));
    }
    if actor.drives() {
        return Ok(());
    }
    if order.customer_id == actor.user_id {
        if matches!(order.status, OrderStatus::Placed | OrderStatus::Accepted) {
            return Ok(());
        }
        return Err(RuleError::Precondition(format!(
            "order {} is {}; customers may cancel only while it is placed or accepted (ask the shop)",
            order.id,
            status_name(order.status)
        )));
    }
    Err(RuleError::Forbidden(format!(
        "couriers cannot cancel order {}: its customer (while placed or accepted) and admins may",
        order.id
    )))
}

// ---------------------------------------------------------------------------------------
// Who sees what

/// Which projection of an order a reader gets (see the distribution matrix).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Viewer {
    /// Admins and services: everything.
    Admin,
    /// The order's customer: everything about their order.
    Customer,
    /// The assigned courier: status, cancellation and assignment; no payments, no locations.
    Courier,
}

/// The projection `actor` may read of `order`, or PERMISSION_DENIED.
pub fn viewer(order: &Order, actor: &Actor) -> Result<Viewer> {
    if actor.drives() {
        Ok(Viewer::Admin)
    } else if order.customer_id == actor.user_id {
        Ok(Viewer::Customer)
    } else if actor.is_assigned(order) {
        Ok(Viewer::Courier)
    } else {
        Err(RuleError::Forbidden(format!(
            "order {} is open to its customer, its assigned courier and admins",
            order.id
        )))
    }
}

// ---------------------------------------------------------------------------------------
// The shop

/// SetBusinessStatus's input, checked.
pub fn business_status(status: i32, message: &str) -> Result<(BusinessStatus, String)> {
    let status = match BusinessStatus::try_from(status) {
        Ok(BusinessStatus::Unspecified) | Err(_) => {
            return Err(RuleError::Invalid(format!(
                "status {status} is not a business status: use BUSINESS_STATUS_OPEN, _BUSY or _CLOSED"
            )));
        }
        Ok(status) => status,
    };
    Ok((
        status,
        text("message", message, MAX_BUSINESS_MESSAGE_BYTES, false)?,
    ))
}

/// SetCourierStatus's input, checked.
pub fn courier_status(status: i32) -> Result<CourierStatus> {
    match CourierStatus::try_from(status) {
        Ok(CourierStatus::Unspecified) | Err(_) => Err(RuleError::Invalid(format!(
            "status {status} is not a courier status: use COURIER_STATUS_AVAILABLE, _BUSY or _OFFLINE"
        ))),
        Ok(status) => Ok(status),
    }
}

/// A courier's id as AssignCourier names it.
pub fn courier_id(value: &str) -> Result<String> {
    token("courier_id", value, MAX_USER_ID_BYTES)
}

/// A checked offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOffer {
    pub title: String,
    pub text: String,
    pub valid_until_ms: i64,
}

/// PublishOffer's input: a title, a text, and an end in the future within 90 days.
pub fn offer(
    title: &str,
    body: &str,
    valid_until_ms: Option<i64>,
    now_ms: i64,
) -> Result<NewOffer> {
    let title = text("title", title, MAX_OFFER_TITLE_BYTES, true)?;
    let body = text("text", body, MAX_OFFER_TEXT_BYTES, true)?;
    let Some(until) = valid_until_ms else {
        return Err(RuleError::Invalid("valid_until is required".into()));
    };
    if until <= now_ms {
        return Err(RuleError::Invalid(
            "valid_until is in the past: an offer runs until a time in the future".into(),
        ));
    }
    if until - now_ms > MAX_OFFER_DAYS * 86_400_000 {
        return Err(RuleError::Invalid(format!(
            "valid_until is more than {MAX_OFFER_DAYS} days ahead"
        )));
    }
    Ok(NewOffer {
        title,
        text: body,
        valid_until_ms: until,
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn item(sku: &str, quantity: u32, price: i64) -> ItemInput {
        ItemInput {
            sku: sku.into(),
            name: format!("Item {sku}"),
            quantity,
            unit_price_minor: price,
        }
    }

    fn input(items: Vec<ItemInput>, total: i64) -> PlaceInput {
        PlaceInput {
            items,
            currency: "EUR".into(),
            delivery_address: "1 Main Street".into(),
            note: String::new(),
            client_total_minor: total,
        }
    }

    fn order(status: OrderStatus, courier: Option<&str>) -> Order {
        Order {
            id: OrderId::new(7).unwrap(),
            customer_id: "carol".into(),
            courier_id: courier.map(str::to_owned),
            status,
            version: 3,
            currency: "EUR".into(),
            total_minor: 2500,
            paid_minor: 0,
            cancel_reason: String::new(),
            cancelled_by: OrderActor::Unspecified,
            updated_at_ms: 0,
        }
    }

    fn admin() -> Actor {
        Actor {
            user_id: "ada".into(),
            admin: true,
            service: false,
        }
    }

    fn customer() -> Actor {
        Actor {
            user_id: "carol".into(),
            admin: false,
            service: false,
        }
    }

    fn courier(id: &str) -> Actor {
        Actor {
            user_id: id.into(),
            admin: false,
            service: false,
        }
    }

    fn service() -> Actor {
        Actor {
            user_id: "payments".into(),
            admin: false,
            service: true,
        }
    }

    fn advance_to(to: OrderStatus) -> Command {
        Command::Advance {
            to,
            expected_version: None,
        }
    }

    fn cancel_with(reason: &str) -> Command {
        Command::Cancel {
            reason: Reason::parse(reason).unwrap(),
            expected_version: None,
        }
    }

    fn precondition(result: Result<(Order, Vec<Change>)>) -> String {
        match result {
            Err(RuleError::Precondition(message)) => message,
            other => panic!("expected FAILED_PRECONDITION, got {other:?}"),
        }
    }

    fn forbidden(result: Result<(Order, Vec<Change>)>) -> String {
        match result {
            Err(RuleError::Forbidden(message)) => message,
            other => panic!("expected PERMISSION_DENIED, got {other:?}"),
        }
    }

    #[test]
    fn the_total_is_computed_from_the_items_and_a_disagreeing_client_total_shows_both() {
        let placed = place(input(vec![item("a", 2, 450), item("b", 1, 1200)], 2100)).unwrap();
        assert_eq!(placed.total_minor, 2100);
        assert_eq!(placed.items[0].line_total_minor, 900);
        let error = place(input(vec![item("a", 2, 450)], 1000)).unwrap_err();
        let RuleError::Invalid(message) = error else {
            panic!("{error:?}")
        };
        assert!(
            message.contains("1000") && message.contains("900"),
            "{message}"
        );
    }

    #[test]
    fn every_field_of_a_new_order_is_bounded() {
        let cases = [
            (input(vec![], 0), "at least one item"),
            (input(vec![item("a", 1, 1); 51], 51), "at most 50"),
            (input(vec![item("a", 0, 1)], 0), "items[0].quantity is 0"),
            (input(vec![item("a", 100, 1)], 100), "1 to 99"),
            (
                input(vec![item("a", 1, -5)], -5),
                "items[0].unit_price_minor",
            ),
            (input(vec![item("a b", 1, 5)], 5), "items[0].sku"),
            (
                PlaceInput {
                    currency: "eur".into(),
                    ..input(vec![item("a", 1, 5)], 5)
                },
                "ISO 4217",
            ),
            (
                PlaceInput {
                    delivery_address: "  ".into(),
                    ..input(vec![item("a", 1, 5)], 5)
                },
                "delivery_address is required",
            ),
            (
                PlaceInput {
                    note: "x".repeat(501),
                    ..input(vec![item("a", 1, 5)], 5)
                },
                "note is 501 bytes; the limit is 500",
            ),
        ];
        for (case, expected) in cases {
            let error = place(case).unwrap_err().to_string();
            assert!(error.contains(expected), "`{expected}` not in `{error}`");
        }
    }

    #[test]
    fn admins_move_an_order_one_step_at_a_time_and_each_step_adds_a_version() {
        let mut current = order(OrderStatus::Placed, None);
        for to in [
            OrderStatus::Accepted,
            OrderStatus::Preparing,
            OrderStatus::Ready,
        ] {
            let (next, changes) = decide(&current, advance_to(to), &admin(), 10).unwrap();
            assert_eq!(next.status, to);
            assert_eq!(next.version, current.version + 1);
            assert_eq!(
                changes,
                vec![Change::Status {
                    from: current.status,
                    to
                }]
            );
            current = next;
        }
        let message = precondition(decide(
            &current,
            advance_to(OrderStatus::OutForDelivery),
            &admin(),
            10,
        ));
        assert!(message.contains("has no courier"), "{message}");
    }

    #[test]
    fn an_illegal_transition_names_the_current_status() {
        let message = precondition(decide(
            &order(OrderStatus::Placed, None),
            advance_to(OrderStatus::Ready),
            &admin(),
            0,
        ));
        assert!(
            message.contains("order 7 is placed; its next status is accepted, not ready"),
            "{message}"
        );
        let message = precondition(decide(
            &order(OrderStatus::Delivered, Some("kim")),
            advance_to(OrderStatus::Delivered),
            &admin(),
            0,
        ));
        assert!(message.contains("order 7 is delivered"), "{message}");
        let message = precondition(decide(
            &order(OrderStatus::Preparing, None),
            advance_to(OrderStatus::Accepted),
            &admin(),
            0,
        ));
        assert!(message.contains("is preparing"), "{message}");
    }

    #[test]
    fn the_assigned_courier_marks_the_pick_up_and_the_delivery_and_nothing_else() {
        let ready = order(OrderStatus::Ready, Some("kim"));
        let (out, _) = decide(
            &ready,
            advance_to(OrderStatus::OutForDelivery),
            &courier("kim"),
            1,
        )
        .unwrap();
        let (delivered, _) =
            decide(&out, advance_to(OrderStatus::Delivered), &courier("kim"), 2).unwrap();
        assert_eq!(delivered.status, OrderStatus::Delivered);

        let message = forbidden(decide(
            &order(OrderStatus::Accepted, Some("kim")),
            advance_to(OrderStatus::Preparing),
            &courier("kim"),
            0,
        ));
        assert!(message.contains("for admins"), "{message}");
        let message = forbidden(decide(
            &ready,
            advance_to(OrderStatus::OutForDelivery),
            &courier("lee"),
            0,
        ));
        assert!(message.contains("not yours"), "{message}");
        forbidden(decide(
            &ready,
            advance_to(OrderStatus::OutForDelivery),
            &customer(),
            0,
        ));
    }

    #[test]
    fn customers_cancel_only_while_placed_or_accepted_and_admins_until_delivered() {
        for status in [OrderStatus::Placed, OrderStatus::Accepted] {
            let (next, changes) = decide(
                &order(status, None),
                cancel_with("changed my mind"),
                &customer(),
                5,
            )
            .unwrap();
            assert_eq!(next.status, OrderStatus::Cancelled);
            assert_eq!(next.cancelled_by, OrderActor::Customer);
            assert!(matches!(&changes[0], Change::Cancelled { from, .. } if *from == status));
        }
        let message = precondition(decide(
            &order(OrderStatus::Preparing, None),
            cancel_with("too slow"),
            &customer(),
            5,
        ));
        assert!(
            message.contains(
                "order 7 is preparing; customers may cancel only while it is placed or accepted"
            ),
            "{message}"
        );
        let (next, _) = decide(
            &order(OrderStatus::OutForDelivery, Some("kim")),
            cancel_with("address unreachable"),
            &admin(),
            5,
        )
        .unwrap();
        assert_eq!(next.cancelled_by, OrderActor::Admin);
        precondition(decide(
            &order(OrderStatus::Delivered, Some("kim")),
            cancel_with("late"),
            &admin(),
            5,
        ));
        forbidden(decide(
            &order(OrderStatus::Ready, Some("kim")),
            cancel_with("no"),
            &courier("kim"),
            5,
        ));
        assert!(Reason::parse("").is_err());
        assert!(Reason::parse(&"x".repeat(501)).is_err());
    }

    #[test]
    fn a_stale_expected_version_is_refused_with_both_versions() {
        let message = precondition(decide(
            &order(OrderStatus::Placed, None),
            Command::Advance {
                to: OrderStatus::Accepted,
                expected_version: Some(2),
            },
            &admin(),
            0,
        ));
        assert!(message.contains("at version 3, not 2"), "{message}");
    }

    #[test]
    fn couriers_are_assigned_by_admins_before_the_pick_up_when_they_are_not_offline() {
        let assign = |id: &str, availability| Command::AssignCourier {
            courier_id: id.into(),
            availability,
        };
        let placed = order(OrderStatus::Placed, None);
        let (next, changes) = decide(
            &placed,
            assign("kim", Some(CourierStatus::Available)),
            &admin(),
            0,
        )
        .unwrap();
        assert_eq!(next.courier_id.as_deref(), Some("kim"));
        assert_eq!(changes, vec![Change::CourierAssigned { previous: None }]);
        let (again, changes) =
            decide(&next, assign("kim", Some(CourierStatus::Busy)), &admin(), 0).unwrap();
        assert!(changes.is_empty(), "the same courier again changes nothing");
        assert_eq!(again.version, next.version);
        let (_, changes) =
            decide(&next, assign("lee", Some(CourierStatus::Busy)), &admin(), 0).unwrap();
        assert_eq!(
            changes,
            vec![Change::CourierAssigned {
                previous: Some("kim".into())
            }]
        );
        precondition(decide(&placed, assign("kim", None), &admin(), 0));
        let message = precondition(decide(
            &placed,
            assign("kim", Some(CourierStatus::Offline)),
            &admin(),
            0,
        ));
        assert!(message.contains("offline"), "{message}");
        precondition(decide(
            &order(OrderStatus::OutForDelivery, Some("kim")),
            assign("lee", Some(CourierStatus::Available)),
            &admin(),
            0,
        ));
        forbidden(decide(
            &placed,
            assign("kim", Some(CourierStatus::Available)),
            &customer(),
            0,
        ));
    }

    #[test]
    fn services_record_payments_in_the_orders_currency_up_to_what_is_outstanding() {
        let pay = |amount, currency: &str| {
            Command::Pay(
                PaymentInput::parse(amount, currency, PaymentMethod::Card as i32, "ref-1").unwrap(),
            )
        };
        let placed = order(OrderStatus::Placed, None);
        let (paid, _) = decide(&placed, pay(1000, "EUR"), &service(), 0).unwrap();
        assert_eq!(paid.paid_minor, 1000);
        assert_eq!(paid.version, 4);
        let message = precondition(decide(&paid, pay(1600, "EUR"), &service(), 0));
        assert!(message.contains("1500 EUR outstanding"), "{message}");
        assert!(matches!(
            decide(&placed, pay(100, "USD"), &service(), 0),
            Err(RuleError::Invalid(_))
        ));
        forbidden(decide(&placed, pay(100, "EUR"), &admin(), 0));
        precondition(decide(
            &order(OrderStatus::Cancelled, None),
            pay(100, "EUR"),
            &service(),
            0,
        ));
        assert!(PaymentInput::parse(0, "EUR", 1, "r").is_err());
        assert!(PaymentInput::parse(5, "EUR", 0, "r").is_err());
        assert!(PaymentInput::parse(5, "EUR", 1, "").is_err());
    }

    #[test]
    fn readers_get_their_projection_and_strangers_none() {
        let order = order(OrderStatus::OutForDelivery, Some("kim"));
        assert_eq!(viewer(&order, &admin()), Ok(Viewer::Admin));
        assert_eq!(viewer(&order, &service()), Ok(Viewer::Admin));
        assert_eq!(viewer(&order, &customer()), Ok(Viewer::Customer));
        assert_eq!(viewer(&order, &courier("kim")), Ok(Viewer::Courier));
        assert!(matches!(
            viewer(&order, &courier("lee")),
            Err(RuleError::Forbidden(_))
        ));
    }

    #[test]
    fn the_shop_refuses_orders_while_closed_and_offers_run_into_the_future() {
        assert!(check_open(BusinessStatus::Busy, "").is_ok());
        let error = check_open(BusinessStatus::Closed, "back at 18:00").unwrap_err();
        assert!(error.to_string().contains("back at 18:00"));
        assert!(business_status(0, "").is_err());
        assert!(business_status(1, &"x".repeat(281)).is_err());
        assert!(courier_status(9).is_err());
        let now = 1_000_000;
        assert!(offer("2 for 1", "Pizzas", Some(now + 3_600_000), now).is_ok());
        assert!(offer("2 for 1", "Pizzas", Some(now - 1), now).is_err());
        assert!(offer("2 for 1", "Pizzas", Some(now + 91 * 86_400_000), now).is_err());
        assert!(offer("", "Pizzas", Some(now + 1), now).is_err());
        assert!(offer("t", "Pizzas", None, now).is_err());
    }

    #[test]
    fn status_names_round_trip() {
        for status in LIFECYCLE.into_iter().chain([OrderStatus::Cancelled]) {
            assert_eq!(status_from_name(status_name(status)), Some(status));
        }
        assert_eq!(status_from_name("lost"), None);
    }

    fn any_command() -> impl Strategy<Value = (Command, Actor)> {
        let actor = prop_oneof![
            Just(admin()),
            Just(customer()),
            Just(courier("kim")),
            Just(courier("lee")),
            Just(service()),
        ];
        let status = prop::sample::select(LIFECYCLE.to_vec());
        let command = prop_oneof![
            status.prop_map(advance_to),
            Just(cancel_with("because")),
            prop::sample::select(vec!["kim", "lee"]).prop_map(|id| Command::AssignCourier {
                courier_id: id.into(),
                availability: Some(CourierStatus::Available),
            }),
            (1i64..1500).prop_map(|amount| Command::Pay(PaymentInput {
                amount_minor: amount,
                currency: "EUR".into(),
                method: PaymentMethod::Cash,
                reference: "r".into(),
            })),
        ];
        (command, actor)
    }

    proptest! {
        /// Whatever is asked in whatever order: the version grows by one per change and never
        /// otherwise, the status only moves forward along the lifecycle (or to CANCELLED), a
        /// terminal order's status never changes, payments never exceed the total, and an order out for
        /// delivery always has a courier.
        #[test]
        fn random_command_sequences_keep_the_invariants(steps in prop::collection::vec(any_command(), 0..40)) {
            let mut current = order(OrderStatus::Placed, None);
            current.version = 1;
            for (n, (command, actor)) in steps.into_iter().enumerate() {
                let now = i64::try_from(n).unwrap();
                let Ok((next, changes)) = decide(&current, command, &actor, now) else {
                    continue;
                };
                if is_terminal(current.status) {
                    prop_assert_eq!(next.status, current.status);
                }
                prop_assert_eq!(next.version, current.version + changes.len() as u64);
                if next.status != current.status {
                    prop_assert!(
                        next.status == OrderStatus::Cancelled
                            || rank(next.status) == rank(current.status).map(|r| r + 1)
                    );
                }
                prop_assert!(next.paid_minor <= next.total_minor);
                if next.status == OrderStatus::OutForDelivery {
                    prop_assert!(next.courier_id.is_some());
                }
                current = next;
            }
        }
    }
}
