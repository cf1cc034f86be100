//! Order tracking and delivery (`herald.v1.Orders`): a checked lifecycle, each role's
//! subscriptions carrying exactly its column of the distribution matrix, live courier location
//! with the last known fix and staleness, payments idempotent on their reference, and order
//! streams that resume without loss, across restarts too. Runs on the database
//! `HERALD_TEST_DATABASE` selects (SQLite or PostgreSQL).

use std::{
    collections::BTreeSet,
    time::{Duration, SystemTime},
};

use herald_e2e::{Client, PATIENCE, Subscription, TestApp, edge::spawn_edge, spawn_app};
use herald_proto::{
    codes::close_code_of,
    v1::{
        BusinessStatus, CloseCode, CourierStatus, LocationFix, OrderEntry, OrderEvent,
        OrderSnapshot, OrderStatus, OrdersAssignCourierRequest, OrdersCancelRequest,
        OrdersGetRequest, OrdersListRequest, OrdersPlaceRequest, OrdersPublishOfferRequest,
        OrdersRecordPaymentRequest, OrdersRecordPaymentResponse, OrdersReportLocationRequest,
        OrdersReportLocationResponse, OrdersSetBusinessStatusRequest,
        OrdersSetCourierStatusRequest, OrdersUpdateStatusRequest, PaymentMethod, StreamPosition,
        WatchOrderRequest, event::Body, order_event::Event as Part, orders_client::OrdersClient,
        orders_place_request::Item, subscribe_response::Frame,
    },
};
use sea_orm::{ConnectionTrait, Statement};
use serde_json::json;
use tonic::{Code, Request, Status, Streaming, transport::Channel};

/// One principal with an Orders client and a Rooms client.
#[derive(Clone)]
pub(crate) struct Shop {
    orders: OrdersClient<Channel>,
    rooms: Client,
}

async fn shop(app: &TestApp, sub: &str, roles: &[&str]) -> Shop {
    let rooms = app.client(sub, roles).await;
    Shop {
        orders: OrdersClient::new(rooms.channel.clone()),
        rooms,
    }
}

/// The cast: two customers, an admin, a courier, the payment service.
pub(crate) struct Cast {
    pub(crate) carol: Shop,
    dave: Shop,
    ada: Shop,
    pub(crate) kim: Shop,
    payments: Shop,
}

pub(crate) async fn cast(app: &TestApp) -> Cast {
    Cast {
        carol: shop(app, "carol", &["customer"]).await,
        dave: shop(app, "dave", &["customer"]).await,
        ada: shop(app, "ada", &["admin"]).await,
        kim: shop(app, "kim", &["courier"]).await,
        payments: shop(app, "payments", &["service"]).await,
    }
}

pub(crate) fn now_ms() -> i64 {
    let since = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap();
    i64::try_from(since.as_millis()).unwrap()
}

fn timestamp(ms: i64) -> pbjson_types::Timestamp {
    pbjson_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: i32::try_from(ms.rem_euclid(1000) * 1_000_000).unwrap(),
    }
}

pub(crate) fn fix(lat: f64, device_time_ms: i64) -> LocationFix {
    LocationFix {
        lat,
        lng: 2.35,
        accuracy_m: 4.0,
        heading_deg: Some(90.0),
        speed_mps: Some(5.0),
        device_time: Some(timestamp(device_time_ms)),
    }
}

fn expect_code<T: std::fmt::Debug>(result: Result<T, Status>, code: Code, fragment: &str) {
    match result {
        Err(status) => {
            assert_eq!(status.code(), code, "{}", status.message());
            assert!(
                status.message().contains(fragment),
                "`{fragment}` not in `{}`",
                status.message()
            );
        }
        Ok(value) => panic!("expected {code:?}, got {value:?}"),
    }
}

fn order_id(entry: &OrderEntry) -> u64 {
    entry.order.as_ref().unwrap().id
}

impl Shop {
    fn req<T>(&self, message: T) -> Request<T> {
        self.rooms.request(message)
    }

    async fn try_place(
        &self,
        items: &[(&str, u32, i64)],
        total: i64,
    ) -> Result<OrderEntry, Status> {
        let request = OrdersPlaceRequest {
            items: items
                .iter()
                .map(|(sku, quantity, price)| Item {
                    sku: (*sku).into(),
                    name: format!("The {sku}"),
                    quantity: *quantity,
                    unit_price_minor: *price,
                })
                .collect(),
            currency: "EUR".into(),
            delivery_address: "12 Rue de la Paix, Paris".into(),
            note: "ring twice".into(),
            client_total_minor: total,
        };
        Ok(self
            .orders
            .clone()
            .place(self.req(request))
            .await?
            .into_inner()
            .order
            .unwrap())
    }

    /// Places two margheritas and a lemonade: 2 × 850 + 350 = 2050.
    async fn place(&self) -> OrderEntry {
        self.try_place(&[("margherita", 2, 850), ("lemonade", 1, 350)], 2050)
            .await
            .expect("place")
    }

    async fn get(&self, id: u64) -> Result<OrderEntry, Status> {
        Ok(self
            .orders
            .clone()
            .get(self.req(OrdersGetRequest { order_id: id }))
            .await?
            .into_inner()
            .order
            .unwrap())
    }

    async fn update(&self, id: u64, status: OrderStatus) -> Result<OrderEntry, Status> {
        self.update_with(id, status, "").await
    }

    async fn update_with(
        &self,
        id: u64,
        status: OrderStatus,
        reason: &str,
    ) -> Result<OrderEntry, Status> {
        Ok(self
            .orders
            .clone()
            .update_status(self.req(OrdersUpdateStatusRequest {
                order_id: id,
                status: status as i32,
                reason: reason.into(),
                expected_version: None,
            }))
            .await?
            .into_inner()
            .order
            .unwrap())
    }

    /// Admin: PLACED → ACCEPTED → PREPARING → READY.
    async fn prepare(&self, id: u64) {
        for status in [
            OrderStatus::Accepted,
            OrderStatus::Preparing,
            OrderStatus::Ready,
        ] {
            self.update(id, status).await.expect("an admin step");
        }
    }

    async fn cancel(&self, id: u64, reason: &str) -> Result<OrderEntry, Status> {
        Ok(self
            .orders
            .clone()
            .cancel(self.req(OrdersCancelRequest {
                order_id: id,
                reason: reason.into(),
            }))
            .await?
            .into_inner()
            .order
            .unwrap())
    }

    async fn assign(&self, id: u64, courier: &str) -> Result<OrderEntry, Status> {
        Ok(self
            .orders
            .clone()
            .assign_courier(self.req(OrdersAssignCourierRequest {
                order_id: id,
                courier_id: courier.into(),
            }))
            .await?
            .into_inner()
            .order
            .unwrap())
    }

    async fn business(&self, status: BusinessStatus, message: &str) -> Result<(), Status> {
        self.orders
            .clone()
            .set_business_status(self.req(OrdersSetBusinessStatusRequest {
                status: status as i32,
                message: message.into(),
            }))
            .await?;
        Ok(())
    }

    async fn offer(&self, title: &str) -> Result<(), Status> {
        self.orders
            .clone()
            .publish_offer(self.req(OrdersPublishOfferRequest {
                title: title.into(),
                text: "Two pizzas for the price of one, tonight only".into(),
                valid_until: Some(timestamp(now_ms() + 3_600_000)),
            }))
            .await?;
        Ok(())
    }

    async fn available(&self) -> Result<(), Status> {
        self.orders
            .clone()
            .set_courier_status(self.req(OrdersSetCourierStatusRequest {
                status: CourierStatus::Available as i32,
            }))
            .await?;
        Ok(())
    }

    async fn pay(
        &self,
        id: u64,
        amount: i64,
        reference: &str,
    ) -> Result<OrdersRecordPaymentResponse, Status> {
        Ok(self
            .orders
            .clone()
            .record_payment(self.req(OrdersRecordPaymentRequest {
                order_id: id,
                amount_minor: amount,
                currency: "EUR".into(),
                method: PaymentMethod::Card as i32,
                reference: reference.into(),
            }))
            .await?
            .into_inner())
    }

    /// One ReportLocation stream with these fixes; the answer once it is closed.
    pub(crate) async fn report(
        &self,
        fixes: Vec<(u64, LocationFix)>,
    ) -> Result<OrdersReportLocationResponse, Status> {
        let messages: Vec<_> = fixes
            .into_iter()
            .map(|(order_id, fix)| OrdersReportLocationRequest {
                order_id,
                fix: Some(fix),
            })
            .collect();
        Ok(self
            .orders
            .clone()
            .report_location(self.req(tokio_stream::iter(messages)))
            .await?
            .into_inner())
    }

    async fn try_watch(&self, id: u64, since: Option<StreamPosition>) -> Result<Watcher, Status> {
        let stream = self
            .orders
            .clone()
            .watch(self.req(WatchOrderRequest {
                order_id: id,
                since,
            }))
            .await?
            .into_inner();
        Ok(Watcher { stream })
    }

    async fn watch(&self, id: u64) -> Watcher {
        self.try_watch(id, None).await.expect("watch")
    }
}

/// An open Orders/Watch.
struct Watcher {
    stream: Streaming<OrderEvent>,
}

/// The name of a Watch message's kind.
fn part(event: &OrderEvent) -> &'static str {
    match &event.event {
        Some(Part::Snapshot(_)) => "snapshot",
        Some(Part::StatusChanged(_)) => "status_changed",
        Some(Part::Cancelled(_)) => "cancelled",
        Some(Part::CourierAssigned(_)) => "courier_assigned",
        Some(Part::CourierLocation(_)) => "courier_location",
        Some(Part::LocationStale(_)) => "location_stale",
        Some(Part::PaymentReceived(_)) => "payment_received",
        None => "none",
    }
}

impl Watcher {
    /// The next message; `None` when the watch ended with OK.
    async fn next(&mut self) -> Result<Option<OrderEvent>, Status> {
        tokio::time::timeout(PATIENCE, self.stream.message())
            .await
            .expect("a watch message arrives in time")
    }

    async fn expect(&mut self) -> OrderEvent {
        self.next()
            .await
            .expect("the watch goes on")
            .expect("the watch has not ended")
    }

    async fn snapshot(&mut self) -> OrderSnapshot {
        match self.expect().await.event {
            Some(Part::Snapshot(snapshot)) => snapshot,
            other => panic!("expected the snapshot, got {other:?}"),
        }
    }

    /// Every message until the watch ends with OK: the kinds of the changes, and the number of
    /// location messages (signals interleave with changes as they arrive).
    async fn until_end(&mut self) -> (Vec<&'static str>, usize) {
        let (mut changes, mut locations) = (vec![], 0);
        while let Some(event) = self.next().await.expect("the watch ends with OK") {
            match part(&event) {
                "courier_location" | "location_stale" => locations += 1,
                kind => changes.push(kind),
            }
        }
        (changes, locations)
    }
}

/// What a raw subscription received: event types in offset order, and signal types.
#[derive(Debug, Default)]
struct Received {
    events: Vec<String>,
    signals: Vec<String>,
}

/// Reads `sub` until its topic's top as the service sees it now.
async fn received(app: &TestApp, sub: &mut Subscription, topic: &str) -> Received {
    let service = app.service().await;
    let top = service
        .history(topic, None, 1)
        .await
        .unwrap()
        .position
        .unwrap()
        .offset;
    let mut got = Received::default();
    let mut last = sub.position().offset;
    while last < top {
        match sub.next_frame().await {
            Ok(Frame::Event(event)) => {
                last = event.offset;
                got.events.push(event.r#type);
            }
            Ok(Frame::Signal(signal)) => got.signals.push(signal.r#type),
            Ok(_) => {}
            Err(end) => panic!("{topic}: the subscription ended: {end:?}"),
        }
    }
    got
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

async fn refused(client: &Client, topic: &str) {
    let Err(status) = client.try_subscribe(topic, None).await else {
        panic!("subscribing to {topic} must be refused");
    };
    assert_eq!(
        status.code(),
        Code::PermissionDenied,
        "{topic}: {}",
        status.message()
    );
}

// ---------------------------------------------------------------------------------------
// The distribution matrix

#[tokio::test]
async fn each_role_receives_exactly_its_column_of_the_matrix_over_a_full_shop_day() {
    let app = spawn_app().await;
    let Cast {
        carol,
        dave,
        ada,
        kim,
        payments,
    } = cast(&app).await;

    // What each role may subscribe to from the start…
    let mut carol_shop = carol.rooms.subscribe("role:customer").await;
    let mut dave_shop = dave.rooms.subscribe("role:customer").await;
    let mut ada_feed = ada.rooms.subscribe("role:admin").await;
    let mut kim_jobs = kim.rooms.subscribe("role:courier").await;
    let mut kim_own = kim.rooms.subscribe("user:kim").await;
    // …and what it may not.
    for topic in ["role:admin", "role:courier", "user:kim"] {
        refused(&carol.rooms, topic).await;
    }
    for topic in ["role:customer", "role:courier"] {
        refused(&ada.rooms, topic).await;
    }
    for topic in ["role:admin", "role:customer"] {
        refused(&kim.rooms, topic).await;
    }

    ada.business(BusinessStatus::Open, "Kitchen open until 22:00")
        .await
        .unwrap();
    ada.offer("2 for 1").await.unwrap();
    kim.available().await.unwrap();
    let a = carol.place().await; // delivered by kim
    let b = dave.place().await; // cancelled by dave while placed
    let c = carol.place().await; // assigned to kim, then cancelled by the shop
    let (a_id, b_id, c_id) = (order_id(&a), order_id(&b), order_id(&c));

    // Each order's topic from its Place position (snapshot + position).
    let mut carol_a = carol
        .rooms
        .resume(&format!("order:{a_id}"), a.position.clone().unwrap())
        .await;
    let mut carol_c = carol
        .rooms
        .resume(&format!("order:{c_id}"), c.position.clone().unwrap())
        .await;
    let mut dave_b = dave
        .rooms
        .resume(&format!("order:{b_id}"), b.position.clone().unwrap())
        .await;
    let mut ada_a = ada
        .rooms
        .resume(&format!("order:{a_id}"), a.position.clone().unwrap())
        .await;
    let mut carol_watch = carol.watch(a_id).await;
    assert_eq!(
        carol_watch.snapshot().await.order.unwrap().status,
        OrderStatus::Placed as i32
    );
    refused(&carol.rooms, &format!("order:{b_id}")).await;
    refused(&dave.rooms, &format!("order:{a_id}")).await;
    refused(&kim.rooms, &format!("order:{a_id}")).await;

    ada.prepare(a_id).await;
    ada.assign(a_id, "kim").await.unwrap();
    let mut kim_watch = kim.watch(a_id).await;
    assert_eq!(kim_watch.snapshot().await.order.unwrap().courier_id, "kim");
    payments.pay(a_id, 2050, "psp-1").await.unwrap();
    kim.update(a_id, OrderStatus::OutForDelivery).await.unwrap();
    let answer = kim
        .report(vec![(a_id, fix(48.86, now_ms()))])
        .await
        .unwrap();
    assert_eq!((answer.accepted, answer.rejected), (1, 0));
    kim.update(a_id, OrderStatus::Delivered).await.unwrap();
    dave.cancel(b_id, "ordered by mistake").await.unwrap();
    ada.update(c_id, OrderStatus::Accepted).await.unwrap();
    ada.assign(c_id, "kim").await.unwrap();
    ada.update_with(c_id, OrderStatus::Cancelled, "out of mozzarella")
        .await
        .unwrap();
    ada.business(BusinessStatus::Closed, "See you tomorrow")
        .await
        .unwrap();

    // The customer column.
    let business = "shop.business_status_changed";
    let mut customer = BTreeSet::new();
    for shop_feed in [&mut carol_shop, &mut dave_shop] {
        let got = received(&app, shop_feed, "role:customer").await;
        assert_eq!(
            got.events,
            strings(&[business, "shop.offer_published", business])
        );
        customer.extend(got.events);
    }
    let order_a = strings(&[
        "order.status_changed",
        "order.status_changed",
        "order.status_changed",
        "order.courier_assigned",
        "order.payment_received",
        "order.status_changed",
        "order.status_changed",
    ]);
    let got = received(&app, &mut carol_a, &format!("order:{a_id}")).await;
    assert_eq!(got.events, order_a);
    assert_eq!(got.signals, strings(&["courier.location"]));
    customer.extend(got.events.into_iter().chain(got.signals));
    let got = received(&app, &mut carol_c, &format!("order:{c_id}")).await;
    assert_eq!(
        got.events,
        strings(&[
            "order.status_changed",
            "order.courier_assigned",
            "order.cancelled"
        ])
    );
    customer.extend(got.events);
    let got = received(&app, &mut dave_b, &format!("order:{b_id}")).await;
    assert_eq!(got.events, strings(&["order.cancelled"]));
    assert!(got.signals.is_empty());
    let (changes, locations) = carol_watch.until_end().await;
    assert_eq!(
        changes,
        [
            "status_changed",
            "status_changed",
            "status_changed",
            "courier_assigned",
            "payment_received",
            "status_changed",
            "status_changed"
        ]
    );
    assert_eq!(locations, 1);
    assert_eq!(
        customer,
        [
            business,
            "shop.offer_published",
            "order.status_changed",
            "order.cancelled",
            "order.courier_assigned",
            "courier.location",
            "order.payment_received",
        ]
        .map(String::from)
        .into(),
        "no order.placed, no courier.status_changed"
    );

    // The admin column.
    let mut admin = BTreeSet::new();
    let got = received(&app, &mut ada_feed, "role:admin").await;
    assert_eq!(
        got.events,
        strings(&[
            business,
            "courier.status_changed",
            "order.placed",
            "order.placed",
            "order.placed",
            "order.status_changed", // a: accepted
            "order.status_changed", // a: preparing
            "order.status_changed", // a: ready
            "order.courier_assigned",
            "order.payment_received",
            "order.status_changed", // a: out for delivery
            "order.status_changed", // a: delivered
            "order.cancelled",      // b
            "order.status_changed", // c: accepted
            "order.courier_assigned",
            "order.cancelled", // c
            business,
        ])
    );
    admin.extend(got.events);
    let got = received(&app, &mut ada_a, &format!("order:{a_id}")).await;
    assert_eq!(got.events, order_a);
    assert_eq!(
        got.signals,
        strings(&["courier.location"]),
        "admins see the courier move"
    );
    admin.extend(got.events.into_iter().chain(got.signals));
    assert_eq!(
        admin,
        [
            business,
            "order.placed",
            "order.status_changed",
            "order.cancelled",
            "order.courier_assigned",
            "courier.status_changed",
            "courier.location",
            "order.payment_received",
        ]
        .map(String::from)
        .into(),
        "no shop.offer_published"
    );

    // The courier column: new orders and the business status for every courier; status and
    // cancellation of its own orders; never courier status, locations, payments or offers.
    let mut courier = BTreeSet::new();
    let got = received(&app, &mut kim_jobs, "role:courier").await;
    assert_eq!(
        got.events,
        strings(&[
            business,
            "order.placed",
            "order.placed",
            "order.placed",
            business
        ])
    );
    courier.extend(got.events);
    let got = received(&app, &mut kim_own, "user:kim").await;
    assert_eq!(
        got.events,
        strings(&[
            "order.courier_assigned", // a
            "order.status_changed",   // a: out for delivery
            "order.status_changed",   // a: delivered
            "order.courier_assigned", // c
            "order.cancelled",        // c
        ])
    );
    assert!(got.signals.is_empty());
    courier.extend(got.events);
    let (changes, locations) = kim_watch.until_end().await;
    assert_eq!(changes, ["status_changed", "status_changed"], "no payment");
    assert_eq!(locations, 0, "couriers do not receive locations");
    assert_eq!(
        courier,
        [
            business,
            "order.placed",
            "order.status_changed",
            "order.cancelled",
            "order.courier_assigned",
        ]
        .map(String::from)
        .into(),
        "no courier.status_changed, courier.location, order.payment_received or offers"
    );
}

// ---------------------------------------------------------------------------------------
// Rules and errors

/// An order of carol's, accepted, prepared, ready, assigned to kim and picked up.
pub(crate) async fn out_for_delivery(cast: &Cast) -> u64 {
    cast.kim.available().await.unwrap();
    let id = order_id(&cast.carol.place().await);
    cast.ada.prepare(id).await;
    cast.ada.assign(id, "kim").await.unwrap();
    cast.kim
        .update(id, OrderStatus::OutForDelivery)
        .await
        .unwrap();
    id
}

#[tokio::test]
async fn illegal_transitions_late_cancels_and_wrong_totals_get_the_documented_errors() {
    let app = spawn_app().await;
    let cast = cast(&app).await;
    let (carol, ada, kim) = (&cast.carol, &cast.ada, &cast.kim);

    expect_code(
        carol.try_place(&[("margherita", 2, 850)], 1600).await,
        Code::InvalidArgument,
        "client_total_minor is 1600 but the items add up to 1700 EUR",
    );
    expect_code(
        carol.try_place(&[("margherita", 0, 850)], 0).await,
        Code::InvalidArgument,
        "items[0].quantity is 0",
    );
    let id = order_id(&carol.place().await);
    expect_code(
        ada.update(id, OrderStatus::Ready).await,
        Code::FailedPrecondition,
        &format!("order {id} is placed; its next status is accepted, not ready"),
    );
    expect_code(
        carol.update(id, OrderStatus::Accepted).await,
        Code::PermissionDenied,
        "customers may only cancel",
    );
    expect_code(
        kim.update(id, OrderStatus::Accepted).await,
        Code::PermissionDenied,
        "open to its customer, its assigned courier and admins",
    );
    ada.update(id, OrderStatus::Accepted).await.unwrap();
    ada.update(id, OrderStatus::Preparing).await.unwrap();
    expect_code(
        carol.cancel(id, "too slow").await,
        Code::FailedPrecondition,
        &format!(
            "order {id} is preparing; customers may cancel only while it is placed or accepted"
        ),
    );
    expect_code(
        carol.cancel(id, "").await,
        Code::InvalidArgument,
        "reason is required",
    );
    expect_code(
        ada.update_with(id, OrderStatus::Cancelled, "").await,
        Code::InvalidArgument,
        "reason is required",
    );
    ada.update(id, OrderStatus::Ready).await.unwrap();
    expect_code(
        ada.update(id, OrderStatus::OutForDelivery).await,
        Code::FailedPrecondition,
        "has no courier",
    );
    expect_code(
        ada.assign(id, "lee").await,
        Code::FailedPrecondition,
        "not a known courier",
    );
    expect_code(
        carol.assign(id, "kim").await,
        Code::PermissionDenied,
        "only admins assign couriers",
    );
    expect_code(ada.get(4242).await, Code::NotFound, "no order 4242");

    // Stale versions: two admins cannot both move one order.
    let version = ada.get(id).await.unwrap().order.unwrap().version;
    let stale = ada
        .orders
        .clone()
        .update_status(ada.req(OrdersUpdateStatusRequest {
            order_id: id,
            status: OrderStatus::Cancelled as i32,
            reason: "duplicate".into(),
            expected_version: Some(version - 1),
        }))
        .await;
    expect_code(
        stale,
        Code::FailedPrecondition,
        &format!("at version {version}, not {}", version - 1),
    );

    // Delivered is the end.
    let out = out_for_delivery(&cast).await;
    kim.update(out, OrderStatus::Delivered).await.unwrap();
    expect_code(
        ada.update_with(out, OrderStatus::Cancelled, "late").await,
        Code::FailedPrecondition,
        &format!("order {out} is delivered: it cannot change any more"),
    );

    // The shop closed: no orders.
    ada.business(BusinessStatus::Closed, "Back at 18:00")
        .await
        .unwrap();
    expect_code(
        carol.try_place(&[("margherita", 1, 850)], 850).await,
        Code::FailedPrecondition,
        "the shop is closed and takes no orders: Back at 18:00",
    );
    expect_code(
        carol.business(BusinessStatus::Open, "").await,
        Code::PermissionDenied,
        "only admins",
    );
    expect_code(
        carol.offer("free pizza").await,
        Code::PermissionDenied,
        "only admins",
    );
    expect_code(
        carol.available().await,
        Code::PermissionDenied,
        "token role `courier`",
    );
}

#[tokio::test]
async fn fixes_from_a_courier_not_assigned_after_delivery_or_malformed_are_refused_and_the_stream_goes_on()
 {
    let app = spawn_app().await;
    let cast = cast(&app).await;
    let lee = shop(&app, "lee", &["courier"]).await;
    let id = out_for_delivery(&cast).await;
    let now = now_ms();

    let answer = cast
        .kim
        .report(vec![
            (id, fix(91.0, now)),
            (id, fix(48.85, now)),
            (
                id,
                LocationFix {
                    lng: 200.0,
                    ..fix(48.85, now + 1)
                },
            ),
            (
                id,
                LocationFix {
                    accuracy_m: -1.0,
                    ..fix(48.85, now + 2)
                },
            ),
            (id, fix(48.85, now + 3_600_000)),
            (4242, fix(48.85, now + 3)),
            (id, fix(48.86, now + 4)),
        ])
        .await
        .unwrap();
    assert_eq!((answer.accepted, answer.rejected), (2, 5), "{answer:?}");
    let codes: Vec<(u64, &str)> = answer
        .rejections
        .iter()
        .map(|r| (r.index, r.code.as_str()))
        .collect();
    assert_eq!(
        codes,
        [
            (0, "INVALID_ARGUMENT"),
            (2, "INVALID_ARGUMENT"),
            (3, "INVALID_ARGUMENT"),
            (4, "INVALID_ARGUMENT"),
            (5, "NOT_FOUND"),
        ]
    );
    assert!(
        answer.rejections[0]
            .message
            .contains("fix.lat is 91; latitude is -90 to 90")
    );
    assert!(
        answer.rejections[3]
            .message
            .contains("ahead of the server's clock")
    );

    let answer = lee.report(vec![(id, fix(48.85, now))]).await.unwrap();
    assert_eq!(answer.rejected, 1);
    assert_eq!(answer.rejections[0].code, "PERMISSION_DENIED");
    assert!(
        answer.rejections[0]
            .message
            .contains("you are not the courier assigned to order"),
        "{:?}",
        answer.rejections[0]
    );

    cast.kim.update(id, OrderStatus::Delivered).await.unwrap();
    let answer = cast
        .kim
        .report(vec![(id, fix(48.87, now + 10))])
        .await
        .unwrap();
    assert_eq!(answer.rejected, 1);
    assert_eq!(answer.rejections[0].code, "FAILED_PRECONDITION");
    assert!(
        answer.rejections[0].message.contains(&format!(
            "order {id} is delivered; fixes are accepted only while it is out for delivery"
        )),
        "{:?}",
        answer.rejections[0]
    );

    expect_code(
        cast.carol.report(vec![(id, fix(48.85, now))]).await,
        Code::PermissionDenied,
        "only couriers",
    );
    // A courier's position reaches an order topic only through ReportLocation.
    let raw = cast
        .kim
        .rooms
        .signal(
            &format!("order:{id}"),
            "courier.location",
            Some("courier"),
            json!({}),
        )
        .await;
    let status = raw.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(close_code_of(&status), Some(CloseCode::PermissionDenied));
    assert!(
        status.message().contains("Orders/ReportLocation"),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn a_customer_cannot_watch_get_or_subscribe_to_another_customers_order() {
    let app = spawn_app().await;
    let cast = cast(&app).await;
    let id = order_id(&cast.carol.place().await);
    let Err(status) = cast.dave.try_watch(id, None).await else {
        panic!("dave must not watch carol's order");
    };
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(
        status.message().contains(&format!(
            "order {id} is open to its customer, its assigned courier and admins"
        )),
        "{}",
        status.message()
    );
    expect_code(
        cast.dave.get(id).await,
        Code::PermissionDenied,
        "is open to its customer",
    );
    refused(&cast.dave.rooms, &format!("order:{id}")).await;
    let Err(status) = cast.kim.try_watch(id, None).await else {
        panic!("a courier not assigned must not watch");
    };
    assert_eq!(status.code(), Code::PermissionDenied);
    // Lists show each customer their own orders only.
    let page = cast
        .dave
        .orders
        .clone()
        .list(cast.dave.req(OrdersListRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert!(page.orders.is_empty());
    assert_eq!(page.feed_topic, "");
}

#[tokio::test]
async fn a_duplicate_payment_reference_records_one_payment_and_pushes_one_event() {
    let app = spawn_app().await;
    let cast = cast(&app).await;
    let id = order_id(&cast.carol.place().await);
    let other = order_id(&cast.dave.place().await);
    let mut admins = cast.ada.rooms.subscribe("role:admin").await;

    let first = cast.payments.pay(id, 2050, "psp-77").await.unwrap();
    assert!(!first.duplicate);
    let body = first.payment.clone().unwrap();
    assert!(body.fully_paid);
    assert_eq!(body.paid_minor, 2050);
    let again = cast.payments.pay(id, 2050, "psp-77").await.unwrap();
    assert!(again.duplicate);
    assert_eq!(
        again.payment, first.payment,
        "the first payment, as first recorded"
    );
    assert_eq!(
        again
            .order
            .as_ref()
            .unwrap()
            .order
            .as_ref()
            .unwrap()
            .version,
        first
            .order
            .as_ref()
            .unwrap()
            .order
            .as_ref()
            .unwrap()
            .version
    );
    expect_code(
        cast.payments.pay(other, 2050, "psp-77").await,
        Code::FailedPrecondition,
        &format!("already records a payment for order {id}"),
    );
    expect_code(
        cast.payments.pay(other, 5000, "psp-78").await,
        Code::FailedPrecondition,
        "exceeds the 2050 EUR outstanding",
    );
    expect_code(
        cast.ada.pay(other, 100, "psp-79").await,
        Code::PermissionDenied,
        "only services",
    );

    let history = cast
        .payments
        .rooms
        .history(&format!("order:{id}"), None, 100)
        .await
        .unwrap();
    let payments: Vec<_> = history
        .events
        .iter()
        .filter(|e| e.r#type == "order.payment_received")
        .collect();
    assert_eq!(payments.len(), 1, "one payment event on the order");
    let Some(Body::OrderPaymentReceived(pushed)) = &payments[0].body else {
        panic!("a typed body: {:?}", payments[0]);
    };
    assert_eq!(pushed.payment.as_ref().unwrap().reference, "psp-77");
    let got = received(&app, &mut admins, "role:admin").await;
    assert_eq!(got.events, strings(&["order.payment_received"]));
}

// ---------------------------------------------------------------------------------------
// Live location

#[tokio::test]
async fn ten_fixes_a_second_reach_watchers_once_a_second_the_newest_last_and_silence_turns_stale() {
    let app = spawn_app().await;
    app.clock.freeze(); // the tracker's time moves only when the test says so
    let cast = cast(&app).await;
    let id = out_for_delivery(&cast).await;
    let mut carol_watch = cast.carol.watch(id).await;
    let snapshot = carol_watch.snapshot().await;
    assert!(snapshot.last_location.is_none(), "no fix yet");

    // Ten fixes within one second (device time 100 ms apart), in one stream.
    let start = now_ms();
    let fixes: Vec<_> = (0..10)
        .map(|n| {
            (
                id,
                fix(48.80 + f64::from(n) / 100.0, start + i64::from(n) * 100),
            )
        })
        .collect();
    let answer = cast.kim.report(fixes).await.unwrap();
    assert_eq!((answer.accepted, answer.rejected), (10, 0));
    let lat = |event: OrderEvent| match event.event {
        Some(Part::CourierLocation(location)) => location.fix.unwrap().lat,
        other => panic!("expected a location, got {other:?}"),
    };
    let first = lat(carol_watch.expect().await);
    assert!(
        (first - 48.80).abs() < 1e-9,
        "the first fix goes at once: {first}"
    );
    let stored = || async {
        let db = app.store.db();
        let row = db
            .query_one_raw(Statement::from_string(
                db.get_database_backend(),
                format!("SELECT lat FROM order_location WHERE order_id = {id}"),
            ))
            .await
            .unwrap()
            .expect("a stored fix");
        row.try_get_by_index::<f64>(0).unwrap()
    };
    assert!(
        (stored().await - 48.80).abs() < 1e-9,
        "stored once, not per fix"
    );

    // The window ends: the newest of the nine held back goes, and nothing in between did.
    app.clock.advance(Duration::from_secs(1));
    let newest = lat(carol_watch.expect().await);
    assert!((newest - 48.89).abs() < 1e-9, "always the newest: {newest}");
    assert!(
        (stored().await - 48.80).abs() < 1e-9,
        "passing a fix on does not store it"
    );

    // A new watcher gets the last fix and its age at once; so does a raw subscriber.
    let mut ada_watch = cast.ada.watch(id).await;
    let snapshot = ada_watch.snapshot().await;
    let last = snapshot.last_location.expect("the last fix");
    assert!((last.fix.unwrap().lat - 48.89).abs() < 1e-9);
    assert_eq!(snapshot.last_location_age.unwrap().seconds, 1);
    assert!(!snapshot.location_stale);
    let mut raw = cast.carol.rooms.subscribe(&format!("order:{id}")).await;
    match raw.next_frame().await {
        Ok(Frame::Signal(signal)) => {
            assert_eq!(signal.r#type, "courier.location");
            let data = serde_json::to_value(signal.data.unwrap()).unwrap();
            assert_eq!(data["fix"]["lat"], json!(48.89), "{data}");
        }
        other => panic!("the latest fix greets a new subscriber: {other:?}"),
    }

    // 30 s of silence: `location stale`, once, with the last fix; it is stored by then.
    app.clock.advance(Duration::from_secs(30));
    let stale = match carol_watch.expect().await.event {
        Some(Part::LocationStale(stale)) => stale,
        other => panic!("expected location_stale, got {other:?}"),
    };
    assert!((stale.last_fix.unwrap().lat - 48.89).abs() < 1e-9);
    assert_eq!(stale.silent_for.unwrap().seconds, 31);
    assert!(matches!(
        ada_watch.expect().await.event,
        Some(Part::LocationStale(_))
    ));
    assert!(
        (stored().await - 48.89).abs() < 1e-9,
        "the newest fix is stored"
    );
    let snapshot = cast.ada.watch(id).await.snapshot().await;
    assert!(snapshot.location_stale);

    // The courier moves again: fresh, and sent at once (its window ended long ago).
    let answer = cast
        .kim
        .report(vec![(id, fix(48.90, start + 31_000))])
        .await
        .unwrap();
    assert_eq!(answer.accepted, 1);
    assert!((lat(carol_watch.expect().await) - 48.90).abs() < 1e-9);

    // After a restart the stored fix still shows: no blank map.
    let app = app.restart().await;
    let ada = shop(&app, "ada", &["admin"]).await;
    let snapshot = ada.watch(id).await.snapshot().await;
    let last = snapshot
        .last_location
        .expect("the stored fix survives a restart");
    assert!(
        (last.fix.unwrap().lat - 48.89).abs() < 1e-9,
        "the last stored one"
    );
}

// ---------------------------------------------------------------------------------------
// Resume and restart

#[tokio::test]
async fn a_watch_resumed_after_a_disconnect_misses_nothing_and_ends_with_the_snapshot() {
    let app = spawn_app().await;
    let cast = cast(&app).await;
    let id = order_id(&cast.carol.place().await);
    let got = cast.carol.get(id).await.unwrap();
    let mut watch = cast
        .carol
        .try_watch(id, got.position.clone())
        .await
        .unwrap();
    // Resumed at the Get position with nothing missed: the snapshot first.
    let snapshot = watch.snapshot().await;
    assert_eq!(snapshot.order.unwrap().version, 1);
    cast.ada.update(id, OrderStatus::Accepted).await.unwrap();
    let accepted = watch.expect().await;
    assert_eq!(part(&accepted), "status_changed");
    let last = accepted.position.clone().unwrap();
    drop(watch);

    cast.ada.update(id, OrderStatus::Preparing).await.unwrap();
    cast.payments.pay(id, 1000, "psp-1").await.unwrap();
    let mut watch = cast.carol.try_watch(id, Some(last.clone())).await.unwrap();
    let mut versions = vec![];
    let mut kinds = vec![];
    for _ in 0..3 {
        let event = watch.expect().await;
        assert!(event.recovered);
        kinds.push(part(&event));
        versions.push(match &event.event {
            Some(Part::StatusChanged(s)) => s.version,
            Some(Part::PaymentReceived(p)) => p.version,
            Some(Part::Snapshot(s)) => s.order.as_ref().unwrap().version,
            other => panic!("{other:?}"),
        });
    }
    assert_eq!(kinds, ["status_changed", "payment_received", "snapshot"]);
    assert_eq!(versions, [3, 4, 4], "versions never go backwards");
    cast.ada.update(id, OrderStatus::Ready).await.unwrap();
    assert_eq!(part(&watch.expect().await), "status_changed", "then live");

    // A position of another epoch cannot be continued: a fresh snapshot, recovered = false.
    let mut watch = cast
        .carol
        .try_watch(
            id,
            Some(StreamPosition {
                offset: 1,
                epoch: "another-epoch".into(),
            }),
        )
        .await
        .unwrap();
    let first = watch.expect().await;
    assert_eq!(part(&first), "snapshot");
    assert!(!first.recovered);
}

#[tokio::test]
async fn an_order_stream_resumed_after_a_herald_serve_restart_loses_no_event() {
    use herald_e2e::process::spawn_serve_process;
    let data = tempfile::tempdir().unwrap();
    let herald = spawn_serve_process(data.path()).await;
    let connect = |herald: &herald_e2e::process::ServeProcess, sub: &str, roles: &[&str]| {
        let endpoint = tonic::transport::Endpoint::from_shared(herald.grpc_url()).unwrap();
        let token = herald_backend::auth::dev_key::sign_hs256(
            herald_e2e::SECRET,
            &herald_backend::auth::dev_key::TokenClaims::new(sub, roles, Duration::from_secs(3600)),
        )
        .unwrap();
        async move {
            let rooms = Client::connect(endpoint, token).await;
            Shop {
                orders: OrdersClient::new(rooms.channel.clone()),
                rooms,
            }
        }
    };
    let carol = connect(&herald, "carol", &["customer"]).await;
    let ada = connect(&herald, "ada", &["admin"]).await;
    let id = order_id(&carol.place().await);
    let mut watch = carol.watch(id).await;
    watch.snapshot().await;
    ada.update(id, OrderStatus::Accepted).await.unwrap();
    let last = watch.expect().await.position.unwrap();
    ada.update(id, OrderStatus::Preparing).await.unwrap(); // committed, never seen by carol

    herald.kill9().await;
    let herald = spawn_serve_process(data.path()).await;
    let carol = connect(&herald, "carol", &["customer"]).await;
    let ada = connect(&herald, "ada", &["admin"]).await;
    ada.update(id, OrderStatus::Ready).await.unwrap(); // while carol was away

    let mut watch = carol.try_watch(id, Some(last.clone())).await.unwrap();
    let mut statuses = vec![];
    for _ in 0..2 {
        let event = watch.expect().await;
        assert!(event.recovered, "resumed from the database: no reload");
        let Some(Part::StatusChanged(changed)) = event.event else {
            panic!("the missed changes first, with their typed bodies: {event:?}");
        };
        assert_eq!(
            event.position.unwrap().offset,
            last.offset + 1 + statuses.len() as u64
        );
        statuses.push(changed.status);
    }
    assert_eq!(
        statuses,
        [OrderStatus::Preparing as i32, OrderStatus::Ready as i32]
    );
    let snapshot = watch.snapshot().await;
    assert_eq!(snapshot.order.unwrap().status, OrderStatus::Ready as i32);
    herald.kill9().await;
}

// ---------------------------------------------------------------------------------------
// Lists and the browser

#[tokio::test]
async fn lists_page_by_role_with_filters_and_the_feed_position_of_the_same_snapshot() {
    let app = spawn_app().await;
    let cast = cast(&app).await;
    cast.kim.available().await.unwrap();
    let mut ids = vec![];
    for n in 0..5 {
        let who = if n % 2 == 0 { &cast.carol } else { &cast.dave };
        ids.push(order_id(&who.place().await));
    }
    cast.ada
        .update(ids[0], OrderStatus::Accepted)
        .await
        .unwrap();
    cast.ada.assign(ids[0], "kim").await.unwrap();
    cast.ada
        .update(ids[4], OrderStatus::Accepted)
        .await
        .unwrap();

    let list = |shop: &Shop, request: OrdersListRequest| {
        let shop = shop.clone();
        async move {
            shop.orders
                .clone()
                .list(shop.req(request))
                .await
                .map(tonic::Response::into_inner)
        }
    };
    let page = list(
        &cast.ada,
        OrdersListRequest {
            page_size: 2,
            ..OrdersListRequest::default()
        },
    )
    .await
    .unwrap();
    let first: Vec<u64> = page.orders.iter().map(order_id).collect();
    assert_eq!(first, [ids[4], ids[3]], "newest first");
    assert_eq!(page.feed_topic, "role:admin");
    let mut feed = cast
        .ada
        .rooms
        .resume("role:admin", page.feed_position.clone().unwrap())
        .await;
    let rest = list(
        &cast.ada,
        OrdersListRequest {
            page_size: 10,
            page_token: page.next_page_token.clone(),
            ..OrdersListRequest::default()
        },
    )
    .await
    .unwrap();
    let rest: Vec<u64> = rest.orders.iter().map(order_id).collect();
    assert_eq!(rest, [ids[2], ids[1], ids[0]]);
    let accepted = list(
        &cast.ada,
        OrdersListRequest {
            statuses: vec![OrderStatus::Accepted as i32],
            ..OrdersListRequest::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        accepted.orders.iter().map(order_id).collect::<Vec<_>>(),
        [ids[4], ids[0]]
    );
    let later = list(
        &cast.ada,
        OrdersListRequest {
            created_after: Some(timestamp(now_ms() + 60_000)),
            ..OrdersListRequest::default()
        },
    )
    .await
    .unwrap();
    assert!(later.orders.is_empty());
    let mine = list(&cast.carol, OrdersListRequest::default())
        .await
        .unwrap();
    assert_eq!(
        mine.orders.iter().map(order_id).collect::<Vec<_>>(),
        [ids[4], ids[2], ids[0]]
    );
    let jobs = list(&cast.kim, OrdersListRequest::default()).await.unwrap();
    assert_eq!(
        jobs.orders.iter().map(order_id).collect::<Vec<_>>(),
        [ids[0]]
    );
    assert_eq!(jobs.feed_topic, "user:kim");
    assert_eq!(jobs.orders[0].order.as_ref().unwrap().paid_minor, 0);
    expect_code(
        list(
            &cast.ada,
            OrdersListRequest {
                page_size: 101,
                ..OrdersListRequest::default()
            },
        )
        .await,
        Code::InvalidArgument,
        "at most 100",
    );
    expect_code(
        list(
            &cast.ada,
            OrdersListRequest {
                page_token: "x".into(),
                ..OrdersListRequest::default()
            },
        )
        .await,
        Code::InvalidArgument,
        "page_token",
    );

    // The feed continues exactly after the list's snapshot.
    cast.ada
        .update(ids[1], OrderStatus::Accepted)
        .await
        .unwrap();
    let event = feed.next_event().await;
    assert_eq!(event.r#type, "order.status_changed");
    assert_eq!(event.offset, page.feed_position.unwrap().offset + 1);
}

#[tokio::test]
async fn a_browser_customer_sees_typed_order_events_and_the_courier_moving_and_a_browser_courier_cannot_subscribe()
 {
    let app = spawn_app().await;
    let edge = spawn_edge(&app).await;
    let cast = cast(&app).await;
    let id = out_for_delivery(&cast).await;
    let position = cast.carol.get(id).await.unwrap().position.unwrap();

    let mut customer = edge.connect_as(&app.token("carol", &["customer"])).await;
    let reply = customer
        .request(
            "subscribe",
            json!({ "topic": format!("order:{id}"), "since": { "offset": position.offset.to_string(), "epoch": position.epoch } }),
        )
        .await;
    assert!(reply.get("result").is_some(), "{reply}");
    let mut courier = edge.connect_as(&app.token("kim", &["courier"])).await;
    let reply = courier
        .request("subscribe", json!({ "topic": format!("order:{id}") }))
        .await;
    assert_eq!(reply["error"]["code"], "permission_denied", "{reply}");

    cast.kim
        .report(vec![(id, fix(48.85, now_ms()))])
        .await
        .unwrap();
    let push = customer.next_push().await;
    assert_eq!(push["signal"]["type"], "courier.location", "{push}");
    assert_eq!(push["signal"]["data"]["fix"]["lat"], json!(48.85), "{push}");
    cast.kim.update(id, OrderStatus::Delivered).await.unwrap();
    let push = customer.next_event().await;
    assert_eq!(push["event"]["type"], "order.status_changed");
    assert_eq!(
        push["event"]["orderStatusChanged"]["status"], "ORDER_STATUS_DELIVERED",
        "{push}"
    );
}

#[tokio::test]
async fn the_shop_demo_runs_a_shop_day_against_a_herald_serve() {
    use herald_e2e::process::{herald_binary, spawn_serve_process};
    let data = tempfile::tempdir().unwrap();
    let herald = spawn_serve_process(data.path()).await;
    let output = tokio::process::Command::new(herald_binary())
        .args(["demo", "shop", "--pace", "0s", "--fix-interval", "50ms"])
        .args(["--route-fixes", "4", "--server"])
        .arg(herald.grpc_url())
        .env("HERALD_AUTH_HS256_SECRET", herald_e2e::SECRET)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for expected in [
        "dashboard ← #1   shop.business_status_changed",
        "order.placed",
        "watch it: herald watch order:1",
        "client_total_minor is 990 but the items add up to 1050 EUR",
        "customers may cancel only while it is placed or accepted",
        "duplicate = true",
        "carol's map ← your courier is kim",
        "carol's map ← courier at",
        "kim delivered order 1",
        "paid in cash on delivery",
        "the shop is closed",
        "3 orders delivered",
    ] {
        assert!(
            stdout.contains(expected),
            "`{expected}` missing from:\n{stdout}"
        );
    }
    herald.kill9().await;
}
