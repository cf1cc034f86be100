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
struct Shop {
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
struct Cast {
    carol: Shop,
    dave: Shop,
    ada: Shop,
    kim: Shop,
    payments: Shop,
}

async fn cast(app: &TestApp) -> Cast {
    Cast {
        carol: shop(app, "carol", &["customer"]).await,
        dave: shop(app, "dave", &["customer"]).await,
        ada: shop(app, "ada", &["admin"]).await,
        kim: shop(app, "kim", &["courier"]).await,
        payments: shop(app, "payments", &["service"]).await,
    }
}

fn now_ms() -> i64 {
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

fn fix(lat: f64, device_time_ms: i64) -> LocationFix {
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
    async fn report(
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
