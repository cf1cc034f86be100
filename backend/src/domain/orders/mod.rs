//! Order tracking and delivery: customers place orders and watch them move, admins drive
//! them, couriers take them and stream their position.
//!
//! - [`rules`]: the order state machine, totals, who may do what and who sees what (pure);
//! - [`events`]: the topics of each event (the distribution matrix), types and bodies;
//! - [`queries`]: the tables (`shop_order`, `order_payment`, `order_location`, `shop_status`,
//!   `shop_courier`, `shop_offer`);
//! - [`tracking`]: courier fixes — checked, throttled, fanned out as signals, stored now and
//!   then, staleness;
//! - [`watch`]: how `Watch` turns the order topic into `OrderEvent`s for one viewer;
//! - this file: every command as begin → load → authorize → decide → save → emit → commit,
//!   the reads as snapshot + position, and the policy's membership facts ([`Customers`]).

pub mod events;
pub mod queries;
pub mod rules;
pub mod tracking;
pub mod watch;

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use herald_proto::v1::{
    BusinessStatus, BusinessStatusChanged, CourierAssigned, CourierStatus, CourierStatusChanged,
    LocationFix, Offer, OrderCancelled, OrderEntry, OrderSnapshot, OrderStatus, PaymentReceived,
    StreamPosition,
};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::{
    auth::{ADMIN_ROLE, Principal, SERVICE_ROLE},
    authz::{Membership, MembershipError},
    clock::SharedClock,
    domain::inbox::rules::unix_ms,
    error::Error,
    node::Node,
    store::{Committed, DomainTx, Store, StoreError},
    subscription::EventStream,
    topic::{Topic, TopicError},
};
use queries::shop_order;
use rules::{
    Actor, Change, Command, NewOffer, Order, OrderId, PaymentInput, PlaceInput, RuleError, Viewer,
};
use tracking::{FixError, Offered, Timing, Tracker, TrackerConfig};
pub use watch::{WatchEnd, WatchFilter};

/// `[orders]` in the configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OrdersConfig {
    /// At most one `courier.location` signal per order per this interval; the newest fix of a
    /// window goes when it ends.
    #[serde(with = "herald_proto::support::duration")]
    pub location_throttle: Duration,
    /// The last known fix of an order is written to the database at most this often.
    #[serde(with = "herald_proto::support::duration")]
    pub location_store_interval: Duration,
    /// After this long without a fix, one `courier.location_stale` signal.
    #[serde(with = "herald_proto::support::duration")]
    pub location_stale_after: Duration,
    /// How often the tracker wakes to send held-back fixes and mark silence: the most a
    /// held-back fix waits beyond its window.
    #[serde(with = "herald_proto::support::duration")]
    pub location_timer: Duration,
    /// The most orders tracked at once on one node; fixes for more are refused
    /// (RESOURCE_EXHAUSTED) until some end.
    pub max_tracked_orders: usize,
}

impl Default for OrdersConfig {
    fn default() -> Self {
        OrdersConfig {
            location_throttle: Duration::from_secs(1),
            location_store_interval: Duration::from_secs(10),
            location_stale_after: Duration::from_secs(30),
            location_timer: Duration::from_millis(25),
            max_tracked_orders: 100_000,
        }
    }
}

fn ms(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

impl OrdersConfig {
    /// Checks the values (called when the backend is built).
    pub fn check(&self) -> Result<(), String> {
        for (name, value) in [
            ("location_throttle", self.location_throttle),
            ("location_store_interval", self.location_store_interval),
            ("location_stale_after", self.location_stale_after),
            ("location_timer", self.location_timer),
        ] {
            if value.is_zero() {
                return Err(format!("orders.{name} must be longer than 0"));
            }
        }
        if self.location_timer > self.location_throttle {
            return Err(format!(
                "orders.location_timer ({:?}) must not be longer than orders.location_throttle ({:?})",
                self.location_timer, self.location_throttle
            ));
        }
        if self.max_tracked_orders == 0 {
            return Err("orders.max_tracked_orders must be positive".into());
        }
        Ok(())
    }

    fn tracker(&self) -> TrackerConfig {
        TrackerConfig {
            timing: Timing {
                throttle_ms: ms(self.location_throttle),
                store_every_ms: ms(self.location_store_interval),
                stale_after_ms: ms(self.location_stale_after),
            },
            timer: self.location_timer,
            max_tracked: self.max_tracked_orders,
        }
    }
}

/// The most orders one List page returns.
pub const MAX_PAGE_SIZE: u32 = 100;
/// The page size of a List without one.
pub const DEFAULT_PAGE_SIZE: u32 = 20;

/// Why an order command or read failed.
#[derive(Debug, thiserror::Error)]
pub enum OrderError {
    #[error(transparent)]
    Rule(#[from] RuleError),
    #[error("no order {0}: check the id (Place answers it, List shows yours)")]
    NotFound(OrderId),
    #[error("your token's `sub` cannot name a courier topic: {0}")]
    Topic(#[from] TopicError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Core(#[from] Error),
}

impl From<sea_orm::DbErr> for OrderError {
    fn from(error: sea_orm::DbErr) -> OrderError {
        OrderError::Store(StoreError::from(error))
    }
}

impl From<OrderError> for Error {
    fn from(error: OrderError) -> Error {
        match error {
            OrderError::Rule(RuleError::Invalid(message)) => Error::InvalidArgument(message),
            OrderError::Rule(RuleError::Forbidden(message)) => Error::PermissionDenied(message),
            OrderError::Rule(RuleError::Precondition(message)) => {
                Error::FailedPrecondition(message)
            }
            error @ OrderError::NotFound(_) => Error::NotFound(error.to_string()),
            error @ OrderError::Topic(_) => Error::InvalidArgument(error.to_string()),
            OrderError::Store(error) => Error::Store(error),
            OrderError::Core(error) => error,
        }
    }
}

type Result<T, E = OrderError> = std::result::Result<T, E>;

/// What List reads: the filters as parsed at the boundary.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    pub statuses: Vec<OrderStatus>,
    pub created_from_ms: Option<i64>,
    pub created_before_ms: Option<i64>,
    pub page_size: u32,
    pub page_token: String,
}

/// One page of List.
#[derive(Debug, Clone)]
pub struct ListPage {
    pub orders: Vec<OrderEntry>,
    pub next_page_token: String,
    pub feed: Option<(Topic, StreamPosition)>,
}

/// What RecordPayment answered.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub payment: PaymentReceived,
    pub duplicate: bool,
    pub order: OrderEntry,
}

/// The orders service: commands and reads over the store, watches through the node, courier
/// tracking on this node.
#[derive(Debug, Clone)]
pub struct Orders {
    store: Store,
    node: Arc<Node>,
    clock: SharedClock,
    tracker: Tracker,
}

fn actor(who: &Principal) -> Actor {
    Actor {
        user_id: who.user_id.clone(),
        admin: who.has_role(ADMIN_ROLE),
        service: who.is_service(),
    }
}

/// The position of the first event a commit made durable on `topic`.
fn position_on(committed: &Committed, ids: &[Topic], topic: &Topic) -> Option<StreamPosition> {
    ids.iter()
        .position(|t| t == topic)
        .and_then(|at| committed.events.get(at))
        .map(|event| event.position.clone())
}

/// An order as `viewer` may see it (couriers: without payments).
fn entry(row: &shop_order::Model, viewer: Viewer, position: StreamPosition) -> OrderEntry {
    let mut order = events::order_view(row);
    if viewer == Viewer::Courier {
        order.paid_minor = 0;
    }
    OrderEntry {
        order: Some(order),
        position: Some(position),
    }
}

/// Emits `event` to each topic and remembers the order, so the commit's positions can be
/// matched to topics.
struct Emitter<'a> {
    tx: &'a mut DomainTx,
    topics: Vec<Topic>,
}

impl Emitter<'_> {
    fn emit(
        &mut self,
        topics: &[Topic],
        event_type: &str,
        event: &herald_proto::v1::Event,
    ) -> Result<()> {
        for topic in topics {
            self.tx.emit_typed(topic, event_type, event)?;
            self.topics.push(topic.clone());
        }
        Ok(())
    }
}

impl Orders {
    pub fn new(store: Store, node: Arc<Node>, clock: SharedClock, config: OrdersConfig) -> Orders {
        let tracker = Tracker::new(node.clone(), store.clone(), clock.clone(), config.tracker());
        Orders {
            store,
            node,
            clock,
            tracker,
        }
    }

    /// The membership facts of `order:` topics (its customer), for the policy.
    pub fn customers(store: Store) -> Arc<dyn Membership> {
        Arc::new(Customers { store })
    }

    /// Courier tracking on this node.
    pub fn tracker(&self) -> &Tracker {
        &self.tracker
    }

    /// Runs the tracker's timer until `shutdown`.
    pub async fn run_tracker(self, shutdown: CancellationToken) {
        self.tracker.run(shutdown).await;
    }

    fn now_ms(&self) -> i64 {
        unix_ms(self.clock.now())
    }

    /// Place: a new order of `who` in PLACED; `order.placed` to admins and couriers.
    pub async fn place(&self, who: &Principal, input: PlaceInput) -> Result<OrderEntry> {
        let new = rules::place(input)?;
        let now = self.now_ms();
        let mut tx = self.store.begin_as(&who.user_id).await?;
        let shop = queries::shop_status(tx.conn()).await?;
        let status = events::business_view(shop.as_ref());
        rules::check_open(
            BusinessStatus::try_from(status.status).unwrap_or_default(),
            &status.message,
        )?;
        let row = queries::insert(tx.conn(), &who.user_id, &new, now).await?;
        let placed = events::placed(events::order_view(&row));
        let mut out = Emitter {
            tx: &mut tx,
            topics: Vec::new(),
        };
        out.emit(
            &[events::admins(), events::couriers()],
            events::PLACED,
            &placed,
        )?;
        tx.commit().await?;
        let position = StreamPosition {
            offset: 0,
            epoch: self.store.epoch().to_owned(),
        };
        Ok(entry(&row, Viewer::Customer, position))
    }

    /// Get: one order with its topic's position, read in one snapshot.
    pub async fn get(&self, who: &Principal, id: OrderId) -> Result<OrderEntry> {
        let snapshot = self.store.snapshot().await?;
        let row = queries::find(snapshot.conn(), id)
            .await?
            .ok_or(OrderError::NotFound(id))?;
        let viewer = rules::viewer(&queries::state_of(&row)?, &actor(who))?;
        let position = snapshot.position(&events::order_topic(id)).await?;
        snapshot.end().await?;
        Ok(entry(&row, viewer, position))
    }

    /// List: admins and services every order, couriers their assigned ones, others their
    /// own; newest first, with each order's position and the caller's feed's, in one
    /// snapshot.
    pub async fn list(&self, who: &Principal, query: ListQuery) -> Result<ListPage> {
        let size = match query.page_size {
            0 => DEFAULT_PAGE_SIZE,
            n if n > MAX_PAGE_SIZE => {
                return Err(RuleError::Invalid(format!(
                    "page_size is {n}; a page holds at most {MAX_PAGE_SIZE} orders"
                ))
                .into());
            }
            n => n,
        };
        let before = match query.page_token.as_str() {
            "" => None,
            token => Some(OrderId::parse(token).map_err(|_| {
                RuleError::Invalid(
                    "page_token is not one this server issued: pass next_page_token unchanged"
                        .into(),
                )
            })?),
        };
        let mut filter = queries::ListFilter {
            statuses: query.statuses,
            created_from_ms: query.created_from_ms,
            created_before_ms: query.created_before_ms,
            before,
            ..queries::ListFilter::default()
        };
        let (viewer, feed) = if who.has_role(ADMIN_ROLE) || who.is_service() {
            (Viewer::Admin, Some(events::admins()))
        } else if who.has_role(events::COURIER_ROLE) {
            filter.courier_id = Some(who.user_id.clone());
            (Viewer::Courier, Some(events::courier_feed(&who.user_id)?))
        } else {
            filter.customer_id = Some(who.user_id.clone());
            (Viewer::Customer, None)
        };
        let snapshot = self.store.snapshot().await?;
        let mut rows = queries::list(snapshot.conn(), &filter, u64::from(size) + 1).await?;
        let more = rows.len() > size as usize;
        rows.truncate(size as usize);
        let mut orders = Vec::with_capacity(rows.len());
        for row in &rows {
            let id = queries::state_of(row)?.id;
            let position = snapshot.position(&events::order_topic(id)).await?;
            orders.push(entry(row, viewer, position));
        }
        let feed = match feed {
            Some(topic) => {
                let position = snapshot.position(&topic).await?;
                Some((topic, position))
            }
            None => None,
        };
        snapshot.end().await?;
        let next_page_token = match (more, rows.last()) {
            (true, Some(last)) => last.id.to_string(),
            _ => String::new(),
        };
        Ok(ListPage {
            orders,
            next_page_token,
            feed,
        })
    }

    /// UpdateStatus, Cancel and AssignCourier: one change of one order.
    pub async fn command(
        &self,
        who: &Principal,
        id: OrderId,
        mut command: Command,
    ) -> Result<OrderEntry> {
        let now = self.now_ms();
        let actor = actor(who);
        let mut tx = self.store.begin_as(&who.user_id).await?;
        let row = queries::find_for_update(tx.conn(), id)
            .await?
            .ok_or(OrderError::NotFound(id))?;
        let order = queries::state_of(&row)?;
        rules::viewer(&order, &actor)?;
        if let Command::AssignCourier {
            courier_id,
            availability,
        } = &mut command
        {
            *availability = queries::courier_status(tx.conn(), courier_id).await?;
        }
        let (next, changes) = rules::decide(&order, command, &actor, now)?;
        let order_topic = events::order_topic(id);
        if changes.is_empty() {
            let position = self.store.top_on(tx.conn(), &order_topic).await?;
            tx.rollback().await?;
            return Ok(entry(&row, rules::viewer(&order, &actor)?, position));
        }
        let row = queries::save(tx.conn(), row, &next).await?;
        let role = actor.role_on(&order);
        let mut out = Emitter {
            tx: &mut tx,
            topics: Vec::new(),
        };
        for change in &changes {
            emit_change(&mut out, &order, &next, change, &who.user_id, role)?;
        }
        let topics = std::mem::take(&mut out.topics);
        let committed = tx.commit().await?;
        self.tracker.forget(id);
        let position = position_on(&committed, &topics, &order_topic).unwrap_or_default();
        let viewer = rules::viewer(&next, &actor).unwrap_or(Viewer::Customer);
        Ok(entry(&row, viewer, position))
    }

    /// RecordPayment (services): idempotent on the reference.
    pub async fn record_payment(
        &self,
        who: &Principal,
        id: OrderId,
        payment: PaymentInput,
    ) -> Result<Recorded> {
        if !who.is_service() {
            return Err(RuleError::Forbidden(
                "only services (token role `service`) record payments".into(),
            )
            .into());
        }
        let now = self.now_ms();
        let mut tx = self.store.begin_as(&who.user_id).await?;
        let row = queries::find_for_update(tx.conn(), id)
            .await?
            .ok_or(OrderError::NotFound(id))?;
        let order = queries::state_of(&row)?;
        let order_topic = events::order_topic(id);
        if let Some(first) = queries::payment_by_reference(tx.conn(), &payment.reference).await? {
            if first.order_id != id.as_i64() {
                return Err(RuleError::Precondition(format!(
                    "reference `{}` already records a payment for order {}; a reference \
                     names one payment",
                    payment.reference, first.order_id
                ))
                .into());
            }
            let position = self.store.top_on(tx.conn(), &order_topic).await?;
            tx.rollback().await?;
            return Ok(Recorded {
                payment: events::payment_view(&first, &order),
                duplicate: true,
                order: entry(&row, Viewer::Admin, position),
            });
        }
        let (next, _) = rules::decide(&order, Command::Pay(payment.clone()), &actor(who), now)?;
        let stored = queries::insert_payment(tx.conn(), &next, &payment, &who.user_id, now).await?;
        let row = queries::save(tx.conn(), row, &next).await?;
        let body = events::payment_view(&stored, &next);
        let mut out = Emitter {
            tx: &mut tx,
            topics: Vec::new(),
        };
        out.emit(
            &[order_topic.clone(), events::admins()],
            events::PAYMENT_RECEIVED,
            &events::payment_received(body.clone()),
        )?;
        let topics = std::mem::take(&mut out.topics);
        let committed = tx.commit().await?;
        let position = position_on(&committed, &topics, &order_topic).unwrap_or_default();
        Ok(Recorded {
            payment: body,
            duplicate: false,
            order: entry(&row, Viewer::Admin, position),
        })
    }

    /// SetBusinessStatus (admins): pushed to admins, couriers and customers.
    pub async fn set_business_status(
        &self,
        who: &Principal,
        status: BusinessStatus,
        message: String,
    ) -> Result<BusinessStatusChanged> {
        if !actor(who).admin && !who.is_service() {
            return Err(RuleError::Forbidden("only admins set the business status".into()).into());
        }
        let now = self.now_ms();
        let mut tx = self.store.begin_as(&who.user_id).await?;
        let version = queries::shop_status_for_update(tx.conn())
            .await?
            .map_or(0, |row| row.version);
        let row = queries::shop_status::Model {
            id: 1,
            status: events::business_name(status).to_owned(),
            message,
            version: version + 1,
            changed_by: who.user_id.clone(),
            updated_at_ms: now,
        };
        queries::save_shop_status(tx.conn(), row.clone()).await?;
        let body = events::business_view(Some(&row));
        let mut out = Emitter {
            tx: &mut tx,
            topics: Vec::new(),
        };
        out.emit(
            &[events::admins(), events::couriers(), events::customers()],
            events::BUSINESS_STATUS_CHANGED,
            &events::business_status_changed(body.clone()),
        )?;
        tx.commit().await?;
        Ok(body)
    }

    /// GetBusinessStatus: the shop's status now.
    pub async fn business_status(&self) -> Result<BusinessStatusChanged> {
        let row = queries::shop_status(self.store.db()).await?;
        Ok(events::business_view(row.as_ref()))
    }

    /// PublishOffer (admins): pushed to customers.
    pub async fn publish_offer(
        &self,
        who: &Principal,
        title: &str,
        text: &str,
        valid_until_ms: Option<i64>,
    ) -> Result<Offer> {
        if !actor(who).admin && !who.is_service() {
            return Err(RuleError::Forbidden("only admins publish offers".into()).into());
        }
        let now = self.now_ms();
        let offer: NewOffer = rules::offer(title, text, valid_until_ms, now)?;
        let mut tx = self.store.begin_as(&who.user_id).await?;
        let row = queries::insert_offer(tx.conn(), &offer, &who.user_id, now).await?;
        let body = events::offer_view(&row);
        tx.emit_typed(
            &events::customers(),
            events::OFFER_PUBLISHED,
            &events::offer_published(body.clone()),
        )?;
        tx.commit().await?;
        Ok(body)
    }

    /// Whether `who` may act as a courier (SetCourierStatus, ReportLocation).
    pub fn check_courier(&self, who: &Principal) -> Result<()> {
        if !who.has_role(events::COURIER_ROLE) {
            return Err(RuleError::Forbidden(format!(
                "only couriers (token role `{}`) do this",
                events::COURIER_ROLE
            ))
            .into());
        }
        events::courier_feed(&who.user_id)?;
        Ok(())
    }

    /// SetCourierStatus (couriers): pushed to admins.
    pub async fn set_courier_status(
        &self,
        who: &Principal,
        status: CourierStatus,
    ) -> Result<CourierStatusChanged> {
        self.check_courier(who)?;
        let now = self.now_ms();
        let mut tx = self.store.begin_as(&who.user_id).await?;
        queries::save_courier_status(tx.conn(), &who.user_id, status, now).await?;
        let body = events::courier_status(&who.user_id, status, now);
        tx.emit_typed(
            &events::admins(),
            events::COURIER_STATUS_CHANGED,
            &events::courier_status_changed(body.clone()),
        )?;
        tx.commit().await?;
        Ok(body)
    }

    /// One fix of a ReportLocation stream (the caller was checked with [`Orders::check_courier`]).
    pub async fn report_location(
        &self,
        who: &Principal,
        order_id: OrderId,
        fix: Option<&LocationFix>,
    ) -> Result<Offered, FixError> {
        self.tracker.report(&who.user_id, order_id, fix).await
    }

    /// Opens a watch: the subscription to `order:<id>` and the filter that turns it into
    /// `OrderEvent`s for the caller's projection (see [`watch`]).
    pub async fn watch(
        &self,
        who: &Principal,
        id: OrderId,
        since: Option<StreamPosition>,
    ) -> Result<(EventStream, WatchFilter)> {
        let topic = events::order_topic(id);
        let snapshot = self.store.snapshot().await?;
        let row = queries::find(snapshot.conn(), id)
            .await?
            .ok_or(OrderError::NotFound(id))?;
        let order = queries::state_of(&row)?;
        let viewer = rules::viewer(&order, &actor(who))?;
        let top = snapshot.position(&topic).await?;
        let last = match viewer {
            Viewer::Courier => None,
            _ => self.tracker.last_known(snapshot.conn(), id).await?,
        };
        snapshot.end().await?;
        let now = self.tracker.now();
        let stale_after = self.tracker.timing().stale_after_ms;
        let age_ms = last.as_ref().map(|(_, received)| (now - received).max(0));
        let order_snapshot = OrderSnapshot {
            order: entry(&row, viewer, top.clone()).order,
            last_location: last.map(|(location, _)| location),
            last_location_age: age_ms.map(|ms| herald_proto::wkt::Duration {
                seconds: ms / 1000,
                nanos: i32::try_from((ms % 1000) * 1_000_000).unwrap_or(0),
            }),
            location_stale: age_ms.is_some_and(|ms| ms >= stale_after),
        };
        let covered = since
            .as_ref()
            .filter(|since| since.epoch == top.epoch && since.offset <= top.offset);
        let plan = match covered {
            Some(since) => watch::Plan::Resume {
                since: since.clone(),
            },
            None => watch::Plan::Fresh {
                recovered: since.is_none(),
            },
        };
        let courier = (viewer == Viewer::Courier).then(|| who.user_id.clone());
        let (start, filter) = WatchFilter::new(plan, viewer, courier, id, order_snapshot, top);
        // The policy lets the customer and admins read the topic; the courier's projection is
        // the domain's to serve, so its subscription is the service's, for the courier.
        let reader = match viewer {
            Viewer::Courier => Principal::new(
                who.user_id.clone(),
                vec![SERVICE_ROLE.to_owned()],
                who.expires_at,
            ),
            _ => who.clone(),
        };
        let stream = self.node.subscribe(&reader, topic, Some(start)).await?;
        Ok((stream, filter))
    }
}

/// Emits the events of one decided change on the topics whose readers may see it.
fn emit_change(
    out: &mut Emitter<'_>,
    before: &Order,
    after: &Order,
    change: &Change,
    by: &str,
    role: herald_proto::v1::OrderActor,
) -> Result<()> {
    let order_topic = events::order_topic(after.id);
    let mut readers = vec![order_topic, events::admins()];
    match change {
        Change::Status { from, .. } => {
            if let Some(courier) = &after.courier_id {
                readers.push(events::courier_feed(courier)?);
            }
            let body = events::step(after, *from, by, role);
            out.emit(
                &readers,
                events::STATUS_CHANGED,
                &events::status_changed(body),
            )
        }
        Change::Cancelled { from, reason } => {
            if let Some(courier) = &after.courier_id {
                readers.push(events::courier_feed(courier)?);
            }
            let body = OrderCancelled {
                order_id: after.id.get(),
                from: *from as i32,
                reason: reason.clone(),
                version: after.version,
                cancelled_by: by.to_owned(),
                actor: role as i32,
                at: Some(crate::domain::inbox::events::timestamp(after.updated_at_ms)),
            };
            out.emit(&readers, events::CANCELLED, &events::cancelled(body))
        }
        Change::CourierAssigned { previous } => {
            if let Some(courier) = &after.courier_id {
                readers.push(events::courier_feed(courier)?);
            }
            if let Some(previous) = previous {
                readers.push(events::courier_feed(previous)?);
            }
            let body = CourierAssigned {
                order_id: after.id.get(),
                courier_id: after.courier_id.clone().unwrap_or_default(),
                previous_courier_id: before.courier_id.clone().unwrap_or_default(),
                version: after.version,
                assigned_by: by.to_owned(),
                at: Some(crate::domain::inbox::events::timestamp(after.updated_at_ms)),
            };
            out.emit(
                &readers,
                events::COURIER_ASSIGNED,
                &events::courier_assigned(body),
            )
        }
        // Payments are recorded by `Orders::record_payment`, which stores the payment row too.
        Change::Paid(_) => Ok(()),
    }
}

/// The members of `order:<id>` for the policy: its customer. Admins and services are let in
/// by the policy itself; the assigned courier reads its projection through `Orders/Watch`.
#[derive(Debug)]
struct Customers {
    store: Store,
}

#[async_trait]
impl Membership for Customers {
    async fn is_member(
        &self,
        topic: &Topic,
        user_id: &str,
    ) -> std::result::Result<bool, MembershipError> {
        let Ok(id) = OrderId::parse(topic.id()) else {
            return Ok(false);
        };
        queries::is_customer(self.store.db(), id, user_id)
            .await
            .map_err(|error| MembershipError(error.to_string()))
    }
}
