//! `herald demo shop`: a shop day against a running server. The admin opens the shop and
//! publishes an offer, couriers start their shift, customers order, the kitchen prepares,
//! payments arrive, couriers are assigned and drive their routes (a fix every second along a
//! path), deliver, and the shop closes. Two live views print as it happens: the admin's
//! dashboard feed (`role:admin`) and the first customer's map (`Orders/Watch` of their order);
//! every order can be watched from another terminal with `herald watch order:ID`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use herald_backend::Config;
use herald_proto::{
    v1::{
        BusinessStatus, CourierStatus, Event, LocationFix, OrderStatus, OrdersAssignCourierRequest,
        OrdersCancelRequest, OrdersListRequest, OrdersPlaceRequest, OrdersPublishOfferRequest,
        OrdersRecordPaymentRequest, OrdersReportLocationRequest, OrdersSetBusinessStatusRequest,
        OrdersSetCourierStatusRequest, OrdersUpdateStatusRequest, PaymentMethod, StreamPosition,
        SubscribeRequest, WatchOrderRequest, event::Body, order_event, orders_client::OrdersClient,
        orders_place_request::Item, rooms_client::RoomsClient, subscribe_response::Frame,
    },
    wkt::Timestamp,
};
use tokio::{sync::mpsc, task::JoinHandle};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use super::{Actor, Stage, status_error};
use crate::{CliError, ShopDemoArgs};

/// Where the shop is (central Paris) and where its customers live, in degrees.
const SHOP: (f64, f64) = (48.8566, 2.3522);
const CUSTOMERS: [(&str, &str, (f64, f64)); 3] = [
    ("carol", "12 Rue de la Paix", (48.8692, 2.3316)),
    ("dave", "3 Quai de Bercy", (48.8386, 2.3820)),
    ("erin", "40 Boulevard Voltaire", (48.8631, 2.3724)),
];
const COURIERS: [&str; 2] = ["kim", "lee"];
/// (sku, name, unit price in cents)
const MENU: [(&str, &str, i64); 4] = [
    ("margherita", "Margherita", 850),
    ("diavola", "Diavola", 1050),
    ("tiramisu", "Tiramisu", 600),
    ("lemonade", "Lemonade", 350),
];

fn now_ms() -> i64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
}

fn timestamp(ms: i64) -> Timestamp {
    Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: i32::try_from(ms.rem_euclid(1000) * 1_000_000).unwrap_or(0),
    }
}

fn euros(minor: i64) -> String {
    format!("{}.{:02} EUR", minor / 100, minor % 100)
}

fn name(status: i32) -> String {
    OrderStatus::try_from(status)
        .map(|s| {
            s.as_str_name()
                .trim_start_matches("ORDER_STATUS_")
                .to_lowercase()
        })
        .unwrap_or_default()
}

/// The `n`-th of `count` points of a courier's route from the shop to `to`: a gentle curve,
/// as streets are never straight.
fn route_point(to: (f64, f64), n: u32, count: u32) -> (f64, f64) {
    let t = f64::from(n) / f64::from(count.max(2) - 1);
    let (dlat, dlng) = (to.0 - SHOP.0, to.1 - SHOP.1);
    let bend = (std::f64::consts::PI * t).sin() * 0.15;
    (
        SHOP.0 + dlat * t - dlng * bend,
        SHOP.1 + dlng * t + dlat * bend,
    )
}

/// One line for an order-tracking event (also `herald watch` for order and role topics).
pub(crate) fn describe(event: &Event) -> Option<String> {
    Some(match event.body.as_ref()? {
        Body::OrderPlaced(placed) => {
            let order = placed.order.clone().unwrap_or_default();
            let items: Vec<String> = order
                .items
                .iter()
                .map(|item| format!("{}× {}", item.quantity, item.name))
                .collect();
            format!(
                "order {} by {}: {} = {}",
                order.id,
                order.customer_id,
                items.join(", "),
                euros(order.total_minor)
            )
        }
        Body::OrderStatusChanged(changed) => format!(
            "order {}: {} → {} by {} (v{})",
            changed.order_id,
            name(changed.from),
            name(changed.status),
            changed.changed_by,
            changed.version
        ),
        Body::OrderCancelled(cancelled) => format!(
            "order {} cancelled by {} while {}: “{}” (v{})",
            cancelled.order_id,
            cancelled.cancelled_by,
            name(cancelled.from),
            cancelled.reason,
            cancelled.version
        ),
        Body::OrderCourierAssigned(assigned) => format!(
            "order {}: courier {} (v{})",
            assigned.order_id, assigned.courier_id, assigned.version
        ),
        Body::OrderPaymentReceived(paid) => {
            let payment = paid.payment.clone().unwrap_or_default();
            format!(
                "order {}: {} paid ({}), {} of {}{}",
                paid.order_id,
                euros(payment.amount_minor),
                payment.reference,
                euros(paid.paid_minor),
                euros(paid.total_minor),
                if paid.fully_paid {
                    ", paid in full"
                } else {
                    ""
                }
            )
        }
        Body::CourierStatusChanged(courier) => format!(
            "courier {} is {}",
            courier.courier_id,
            CourierStatus::try_from(courier.status)
                .map(|s| s
                    .as_str_name()
                    .trim_start_matches("COURIER_STATUS_")
                    .to_lowercase())
                .unwrap_or_default()
        ),
        Body::BusinessStatusChanged(shop) => format!(
            "the shop is {}: “{}”",
            BusinessStatus::try_from(shop.status)
                .map(|s| s
                    .as_str_name()
                    .trim_start_matches("BUSINESS_STATUS_")
                    .to_lowercase())
                .unwrap_or_default(),
            shop.message
        ),
        Body::OfferPublished(published) => {
            let offer = published.offer.clone().unwrap_or_default();
            format!("offer “{}”: {}", offer.title, offer.text)
        }
        _ => return None,
    })
}

/// One line for a courier's location or staleness signal (`herald watch order:ID`).
pub(crate) fn describe_signal(signal: &herald_proto::v1::Signal) -> Option<String> {
    let data = serde_json::to_value(signal.data.as_ref()?).ok()?;
    let fix = |fix: &serde_json::Value| {
        format!(
            "{:.5}, {:.5} ±{:.0} m",
            fix["lat"].as_f64().unwrap_or_default(),
            fix["lng"].as_f64().unwrap_or_default(),
            fix["accuracyM"].as_f64().unwrap_or_default()
        )
    };
    match signal.r#type.as_str() {
        "courier.location" => Some(format!(
            "courier {} at {}",
            data["courierId"].as_str().unwrap_or_default(),
            fix(&data["fix"])
        )),
        "courier.location_stale" => Some(format!(
            "courier {} silent for {}; last seen at {}",
            data["courierId"].as_str().unwrap_or_default(),
            data["silentFor"].as_str().unwrap_or_default(),
            fix(&data["lastFix"])
        )),
        _ => None,
    }
}

/// The people of the demo and their connection.
struct Cast {
    client: OrdersClient<Channel>,
    admin: Actor,
    payments: Actor,
    customers: Vec<Actor>,
    couriers: Vec<Actor>,
}

/// One placed order of the demo.
#[derive(Debug, Clone)]
struct Placed {
    id: u64,
    customer: usize,
    cash: bool,
}

/// `who` moves order `id` to `status`.
async fn update(
    client: &OrdersClient<Channel>,
    who: &Actor,
    id: u64,
    status: OrderStatus,
) -> Result<(), CliError> {
    let request = who.request(OrdersUpdateStatusRequest {
        order_id: id,
        status: status as i32,
        ..OrdersUpdateStatusRequest::default()
    })?;
    client
        .clone()
        .update_status(request)
        .await
        .map_err(status_error)?;
    Ok(())
}

impl Cast {
    async fn update(&self, who: &Actor, id: u64, status: OrderStatus) -> Result<(), CliError> {
        update(&self.client, who, id, status).await
    }

    async fn pay(
        &self,
        id: u64,
        amount: i64,
        method: PaymentMethod,
        reference: &str,
    ) -> Result<bool, CliError> {
        let request = self.payments.request(OrdersRecordPaymentRequest {
            order_id: id,
            amount_minor: amount,
            currency: "EUR".into(),
            method: method as i32,
            reference: reference.into(),
        })?;
        let answer = self
            .client
            .clone()
            .record_payment(request)
            .await
            .map_err(status_error)?
            .into_inner();
        Ok(answer.duplicate)
    }
}

/// Prints the admin dashboard feed (`role:admin`) as it arrives, until `until` is reached.
fn dashboard(
    channel: Channel,
    admin: Actor,
    since: StreamPosition,
    mut until: tokio::sync::watch::Receiver<u64>,
) -> JoinHandle<Result<u64, CliError>> {
    tokio::spawn(async move {
        let request = admin.request(SubscribeRequest {
            topic: "role:admin".into(),
            since: Some(since.clone()),
        })?;
        let mut stream = RoomsClient::new(channel)
            .subscribe(request)
            .await
            .map_err(status_error)?
            .into_inner();
        let (mut last, mut seen) = (since.offset, 0u64);
        loop {
            if *until.borrow() > 0 && last >= *until.borrow() {
                return Ok(seen);
            }
            tokio::select! {
                message = stream.message() => {
                    let Some(message) = message.map_err(status_error)? else {
                        return Ok(seen);
                    };
                    if let Some(Frame::Event(event)) = message.frame {
                        last = event.offset;
                        seen += 1;
                        println!(
                            "   dashboard ← #{:<3} {:<28} {}",
                            event.offset,
                            event.r#type,
                            describe(&event).unwrap_or_default()
                        );
                    }
                }
                _ = until.changed() => {}
            }
        }
    })
}

/// Prints a customer's Watch of their order until it ends; answers the positions it showed.
fn map(channel: Channel, customer: Actor, id: u64) -> JoinHandle<Result<u64, CliError>> {
    tokio::spawn(async move {
        let request = customer.request(WatchOrderRequest {
            order_id: id,
            since: None,
        })?;
        let mut stream = OrdersClient::new(channel)
            .watch(request)
            .await
            .map_err(status_error)?
            .into_inner();
        let mut positions = 0;
        let who = &customer.name;
        while let Some(event) = stream.message().await.map_err(status_error)? {
            let line = match event.event {
                Some(order_event::Event::Snapshot(snapshot)) => {
                    let order = snapshot.order.unwrap_or_default();
                    format!("snapshot: {} at v{}", name(order.status), order.version)
                }
                Some(order_event::Event::StatusChanged(changed)) => {
                    format!("{} (v{})", name(changed.status), changed.version)
                }
                Some(order_event::Event::CourierAssigned(assigned)) => {
                    format!("your courier is {}", assigned.courier_id)
                }
                Some(order_event::Event::PaymentReceived(paid)) => {
                    format!("payment received, {}", euros(paid.paid_minor))
                }
                Some(order_event::Event::CourierLocation(location)) => {
                    positions += 1;
                    let fix = location.fix.unwrap_or_default();
                    format!(
                        "courier at {:.5}, {:.5} (±{:.0} m)",
                        fix.lat, fix.lng, fix.accuracy_m
                    )
                }
                Some(order_event::Event::LocationStale(_)) => "courier location stale".into(),
                Some(order_event::Event::Cancelled(cancelled)) => {
                    format!("cancelled: {}", cancelled.reason)
                }
                None => continue,
            };
            println!("   {who}'s map ← {line}");
        }
        Ok(positions)
    })
}

/// A courier delivers its orders one after another: pick-up, a route of fixes, delivery.
fn drive(
    cast: &Cast,
    courier: usize,
    orders: Vec<Placed>,
    fixes: u32,
    every: Duration,
) -> JoinHandle<Result<(), CliError>> {
    let client = cast.client.clone();
    let who = cast.couriers[courier].clone();
    tokio::spawn(async move {
        for order in orders {
            update(&client, &who, order.id, OrderStatus::OutForDelivery).await?;
            println!(
                "   {} picked up order {} and drives off",
                who.name, order.id
            );
            let (tx, rx) = mpsc::channel(16);
            let request = who.request(ReceiverStream::new(rx))?;
            let mut stream_client = client.clone();
            let call = tokio::spawn(async move { stream_client.report_location(request).await });
            let to = CUSTOMERS[order.customer].2;
            for n in 0..fixes {
                let (lat, lng) = route_point(to, n, fixes);
                let fix = LocationFix {
                    lat,
                    lng,
                    accuracy_m: 4.0 + f64::from(n % 3),
                    heading_deg: Some(f64::from((n * 17) % 360)),
                    speed_mps: Some(6.5),
                    device_time: Some(timestamp(now_ms())),
                };
                let message = OrdersReportLocationRequest {
                    order_id: order.id,
                    fix: Some(fix),
                };
                if tx.send(message).await.is_err() {
                    break;
                }
                tokio::time::sleep(every).await;
            }
            drop(tx);
            let answer = call
                .await
                .map_err(|e| CliError::new(format!("the location stream failed: {e}")))?
                .map_err(status_error)?
                .into_inner();
            println!(
                "   {} sent {} fixes for order {} ({} refused); watchers got at most one a second, the newest",
                who.name, answer.accepted, order.id, answer.rejected
            );
            update(&client, &who, order.id, OrderStatus::Delivered).await?;
            println!("   {} delivered order {}", who.name, order.id);
        }
        Ok(())
    })
}

pub(crate) async fn run(args: ShopDemoArgs, config: &Config) -> Result<(), CliError> {
    let mut stage = Stage::open(&args.common, config).await?;
    let cast = Cast {
        client: OrdersClient::new(stage.channel.clone()),
        admin: stage.actor("ada", &["admin"])?,
        payments: stage.actor("payments", &["service"])?,
        customers: CUSTOMERS
            .iter()
            .map(|(name, _, _)| stage.actor(name, &["customer"]))
            .collect::<Result<_, _>>()?,
        couriers: COURIERS
            .iter()
            .map(|name| stage.actor(name, &["courier"]))
            .collect::<Result<_, _>>()?,
    };
    let count = args.orders.clamp(1, 50);
    println!(
        "A shop day: ada runs the shop, {} order, {} deliver, the payment service records \
         payments. Below, ada's dashboard (role:admin) and carol's map (Orders/Watch) print \
         live; watch any order from another terminal with `herald watch order:ID`.",
        CUSTOMERS.map(|c| c.0).join(", "),
        COURIERS.join(" and ")
    );
    let listed = cast
        .client
        .clone()
        .list(cast.admin.request(OrdersListRequest {
            page_size: 1,
            ..OrdersListRequest::default()
        })?)
        .await
        .map_err(status_error)?
        .into_inner();
    let (until_tx, until_rx) = tokio::sync::watch::channel(0u64);
    let feed = dashboard(
        stage.channel.clone(),
        cast.admin.clone(),
        listed.feed_position.unwrap_or_default(),
        until_rx,
    );

    stage.step("The shop opens and publishes an offer").await;
    let request = cast.admin.request(OrdersSetBusinessStatusRequest {
        status: BusinessStatus::Open as i32,
        message: "Kitchen open until 22:00".into(),
    })?;
    cast.client
        .clone()
        .set_business_status(request)
        .await
        .map_err(status_error)?;
    let request = cast.admin.request(OrdersPublishOfferRequest {
        title: "Two for one".into(),
        text: "Second margherita free tonight".into(),
        valid_until: Some(timestamp(now_ms() + 4 * 3_600_000)),
    })?;
    cast.client
        .clone()
        .publish_offer(request)
        .await
        .map_err(status_error)?;
    println!("   (the offer goes to role:customer only: the dashboard does not show it)");

    stage.step("Couriers start their shift").await;
    for courier in &cast.couriers {
        let request = courier.request(OrdersSetCourierStatusRequest {
            status: CourierStatus::Available as i32,
        })?;
        cast.client
            .clone()
            .set_courier_status(request)
            .await
            .map_err(status_error)?;
    }

    stage
        .step("Customers order; the server computes every total")
        .await;
    let mut placed = Vec::new();
    for n in 0..count as usize {
        let customer = n % CUSTOMERS.len();
        let items: Vec<Item> = [(n % 2, 2), (2 + n % 2, 1)]
            .iter()
            .map(|(dish, quantity)| {
                let (sku, name, price) = MENU[*dish];
                Item {
                    sku: sku.into(),
                    name: name.into(),
                    quantity: *quantity,
                    unit_price_minor: price,
                }
            })
            .collect();
        let total = items
            .iter()
            .map(|i| i.unit_price_minor * i64::from(i.quantity))
            .sum();
        let who = &cast.customers[customer];
        let request = who.request(OrdersPlaceRequest {
            items,
            currency: "EUR".into(),
            delivery_address: CUSTOMERS[customer].1.into(),
            note: String::new(),
            client_total_minor: total,
        })?;
        let entry = cast
            .client
            .clone()
            .place(request)
            .await
            .map_err(status_error)?
            .into_inner()
            .order
            .unwrap_or_default();
        let id = entry.order.map(|o| o.id).unwrap_or_default();
        println!(
            "   {} placed order {id} ({}) · watch it: herald watch order:{id}",
            who.name,
            euros(total)
        );
        placed.push(Placed {
            id,
            customer,
            cash: n + 1 == count as usize && count > 1,
        });
    }
    let carols_map = map(
        stage.channel.clone(),
        cast.customers[placed[0].customer].clone(),
        placed[0].id,
    );
    let stale_total = cast.customers[1 % CUSTOMERS.len()].request(OrdersPlaceRequest {
        items: vec![Item {
            sku: "diavola".into(),
            name: "Diavola".into(),
            quantity: 1,
            unit_price_minor: 1050,
        }],
        currency: "EUR".into(),
        delivery_address: CUSTOMERS[1].1.into(),
        note: String::new(),
        client_total_minor: 990,
    })?;
    match cast.client.clone().place(stale_total).await {
        Err(status) => println!(
            "   dave's app shows yesterday's price → {:?}: {}",
            status.code(),
            status.message()
        ),
        Ok(_) => return Err(CliError::new("a wrong total was accepted")),
    }

    stage
        .step("The kitchen accepts and prepares every order")
        .await;
    for status in [
        OrderStatus::Accepted,
        OrderStatus::Preparing,
        OrderStatus::Ready,
    ] {
        for order in &placed {
            cast.update(&cast.admin, order.id, status).await?;
        }
        if status == OrderStatus::Preparing {
            let request = cast.customers[placed[0].customer].request(OrdersCancelRequest {
                order_id: placed[0].id,
                reason: "changed my mind".into(),
            })?;
            if let Err(status) = cast.client.clone().cancel(request).await {
                println!(
                    "   carol tries to cancel → {:?}: {}",
                    status.code(),
                    status.message()
                );
            }
        }
    }

    stage
        .step("Card payments arrive (a retried webhook changes nothing)")
        .await;
    for order in placed.iter().filter(|o| !o.cash) {
        let total = total_of(&cast, order.id).await?;
        let reference = format!("psp-{}-{}", order.id, now_ms());
        cast.pay(order.id, total, PaymentMethod::Card, &reference)
            .await?;
        if order.id == placed[0].id {
            let duplicate = cast
                .pay(order.id, total, PaymentMethod::Card, &reference)
                .await?;
            println!("   the payment webhook retried {reference}: duplicate = {duplicate}");
        }
    }

    stage
        .step("Couriers are assigned and drive (a fix every second)")
        .await;
    let mut routes: Vec<Vec<Placed>> = vec![Vec::new(); cast.couriers.len()];
    for (n, order) in placed.iter().enumerate() {
        let courier = n % cast.couriers.len();
        let request = cast.admin.request(OrdersAssignCourierRequest {
            order_id: order.id,
            courier_id: cast.couriers[courier].name.clone(),
        })?;
        cast.client
            .clone()
            .assign_courier(request)
            .await
            .map_err(status_error)?;
        routes[courier].push(order.clone());
    }
    let drives: Vec<_> = routes
        .into_iter()
        .enumerate()
        .filter(|(_, orders)| !orders.is_empty())
        .map(|(courier, orders)| drive(&cast, courier, orders, args.route_fixes, args.fix_interval))
        .collect();
    for driving in drives {
        driving
            .await
            .map_err(|e| CliError::new(format!("a courier stopped: {e}")))??;
    }
    for order in placed.iter().filter(|o| o.cash) {
        let total = total_of(&cast, order.id).await?;
        cast.pay(
            order.id,
            total,
            PaymentMethod::Cash,
            &format!("cash-{}-{}", order.id, now_ms()),
        )
        .await?;
        println!("   order {} paid in cash on delivery", order.id);
    }

    stage.step("Closing time").await;
    let request = cast.admin.request(OrdersSetBusinessStatusRequest {
        status: BusinessStatus::Closed as i32,
        message: "See you tomorrow".into(),
    })?;
    cast.client
        .clone()
        .set_business_status(request)
        .await
        .map_err(status_error)?;
    let top = cast
        .client
        .clone()
        .list(cast.admin.request(OrdersListRequest {
            page_size: 1,
            ..OrdersListRequest::default()
        })?)
        .await
        .map_err(status_error)?
        .into_inner()
        .feed_position
        .unwrap_or_default();
    let _ = until_tx.send(top.offset);
    let wait = |task: JoinHandle<Result<u64, CliError>>| async move {
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .map_err(|_| CliError::new("a live view did not finish in time"))?
            .map_err(|e| CliError::new(format!("a live view failed: {e}")))?
    };
    let seen = wait(feed).await?;
    let positions = wait(carols_map).await?;
    println!(
        "\n{count} orders delivered. The dashboard received {seen} events; carol's map showed \
         {positions} courier positions (at most one a second per order, always the newest)."
    );
    Ok(())
}

/// An order's total, as the server computed it.
async fn total_of(cast: &Cast, id: u64) -> Result<i64, CliError> {
    let request = cast
        .admin
        .request(herald_proto::v1::OrdersGetRequest { order_id: id })?;
    let entry = cast
        .client
        .clone()
        .get(request)
        .await
        .map_err(status_error)?
        .into_inner()
        .order
        .unwrap_or_default();
    Ok(entry.order.map(|o| o.total_minor).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_route_starts_at_the_shop_and_ends_at_the_customer() {
        let to = CUSTOMERS[0].2;
        let start = route_point(to, 0, 10);
        let end = route_point(to, 9, 10);
        assert!((start.0 - SHOP.0).abs() < 1e-9 && (start.1 - SHOP.1).abs() < 1e-9);
        assert!((end.0 - to.0).abs() < 1e-9 && (end.1 - to.1).abs() < 1e-9);
        for n in 0..10 {
            let (lat, lng) = route_point(to, n, 10);
            assert!((-90.0..=90.0).contains(&lat) && (-180.0..=180.0).contains(&lng));
        }
    }
}
