//! sea-orm reads and writes of orders, on the connection they are given (a
//! [`crate::store::DomainTx`], a [`crate::store::ReadSnapshot`] or the pool). The schema lives
//! in `migrations/` (`m20261201_000030_shop_order` … `m20261201_000035_shop_offer`).

use herald_proto::v1::{CourierStatus, OrderStatus};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, sea_query::OnConflict,
};

use super::{
    events,
    rules::{NewOffer, NewOrder, Order, OrderId, PaymentInput, status_from_name, status_name},
    tracking::StoredFix,
};
use crate::store::StoreError;

/// `shop_order`: one row per order, its current state.
pub mod shop_order {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "shop_order")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        pub customer_id: String,
        pub courier_id: Option<String>,
        /// `placed` … `delivered`, `cancelled`.
        pub status: String,
        pub version: i64,
        /// The items as a JSON array.
        #[sea_orm(column_type = "Text")]
        pub items: String,
        pub currency: String,
        pub total_minor: i64,
        pub paid_minor: i64,
        #[sea_orm(column_type = "Text")]
        pub delivery_address: String,
        #[sea_orm(column_type = "Text")]
        pub note: String,
        #[sea_orm(column_type = "Text")]
        pub cancel_reason: String,
        /// `customer`, `admin`, `service` (empty unless cancelled).
        pub cancelled_by: String,
        pub created_at_ms: i64,
        pub updated_at_ms: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// `order_payment`: one row per payment, unique by reference.
pub mod order_payment {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "order_payment")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        pub reference: String,
        pub order_id: i64,
        pub amount_minor: i64,
        pub currency: String,
        pub method: String,
        pub recorded_by: String,
        /// The order's version after this payment.
        pub version: i64,
        /// The order's paid total after this payment.
        pub paid_minor: i64,
        pub received_at_ms: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// `order_location`: the last known fix per order (written at most every 10 s).
pub mod order_location {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "order_location")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub order_id: i64,
        pub courier_id: String,
        pub lat: f64,
        pub lng: f64,
        pub accuracy_m: f64,
        pub heading_deg: Option<f64>,
        pub speed_mps: Option<f64>,
        pub device_time_ms: i64,
        pub received_at_ms: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// `shop_status`: the business status, one row with id 1.
pub mod shop_status {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "shop_status")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: i32,
        pub status: String,
        #[sea_orm(column_type = "Text")]
        pub message: String,
        pub version: i64,
        pub changed_by: String,
        pub updated_at_ms: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// `shop_courier`: every courier that set a status.
pub mod shop_courier {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "shop_courier")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub courier_id: String,
        pub status: String,
        pub updated_at_ms: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// `shop_offer`: every published offer.
pub mod shop_offer {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "shop_offer")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        pub title: String,
        #[sea_orm(column_type = "Text")]
        pub text: String,
        pub valid_until_ms: i64,
        pub published_by: String,
        pub published_at_ms: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

fn to_u64(value: i64) -> u64 {
    u64::try_from(value).unwrap_or_default()
}

fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// A stored row in the rules' terms; a row Herald never wrote is a database error.
pub fn state_of(row: &shop_order::Model) -> Result<Order, StoreError> {
    let corrupt = |what: &str| {
        StoreError::Invalid(format!(
            "order {} has an unknown {what} in the database",
            row.id
        ))
    };
    Ok(Order {
        id: OrderId::new(to_u64(row.id)).map_err(|_| corrupt("id"))?,
        customer_id: row.customer_id.clone(),
        courier_id: row.courier_id.clone(),
        status: status_from_name(&row.status).ok_or_else(|| corrupt("status"))?,
        version: to_u64(row.version),
        currency: row.currency.clone(),
        total_minor: row.total_minor,
        paid_minor: row.paid_minor,
        cancel_reason: row.cancel_reason.clone(),
        cancelled_by: events::actor_from_name(&row.cancelled_by),
        updated_at_ms: row.updated_at_ms,
    })
}

/// Inserts a new order in PLACED at version 1 and returns its row.
pub async fn insert(
    conn: &impl ConnectionTrait,
    customer_id: &str,
    new: &NewOrder,
    now_ms: i64,
) -> Result<shop_order::Model, StoreError> {
    let items = serde_json::to_string(&new.items)
        .map_err(|e| StoreError::Invalid(format!("items: {e}")))?;
    let row = shop_order::ActiveModel {
        customer_id: Set(customer_id.to_owned()),
        courier_id: Set(None),
        status: Set(status_name(OrderStatus::Placed).to_owned()),
        version: Set(1),
        items: Set(items),
        currency: Set(new.currency.clone()),
        total_minor: Set(new.total_minor),
        paid_minor: Set(0),
        delivery_address: Set(new.delivery_address.clone()),
        note: Set(new.note.clone()),
        cancel_reason: Set(String::new()),
        cancelled_by: Set(String::new()),
        created_at_ms: Set(now_ms),
        updated_at_ms: Set(now_ms),
        ..Default::default()
    };
    Ok(shop_order::Entity::insert(row)
        .exec_with_returning(conn)
        .await?)
}

pub async fn find(
    conn: &impl ConnectionTrait,
    id: OrderId,
) -> Result<Option<shop_order::Model>, StoreError> {
    Ok(shop_order::Entity::find_by_id(id.as_i64())
        .one(conn)
        .await?)
}

/// Reads an order's row and locks it until the transaction ends (PostgreSQL; SQLite has one
/// writer at a time), so commands on one order apply one after the other.
pub async fn find_for_update(
    conn: &impl ConnectionTrait,
    id: OrderId,
) -> Result<Option<shop_order::Model>, StoreError> {
    Ok(shop_order::Entity::find_by_id(id.as_i64())
        .lock_exclusive()
        .one(conn)
        .await?)
}

/// Writes the rules' new state over the row.
pub async fn save(
    conn: &impl ConnectionTrait,
    row: shop_order::Model,
    state: &Order,
) -> Result<shop_order::Model, StoreError> {
    let mut active: shop_order::ActiveModel = row.into();
    active.courier_id = Set(state.courier_id.clone());
    active.status = Set(status_name(state.status).to_owned());
    active.version = Set(to_i64(state.version));
    active.paid_minor = Set(state.paid_minor);
    active.cancel_reason = Set(state.cancel_reason.clone());
    active.cancelled_by = Set(events::actor_name(state.cancelled_by).to_owned());
    active.updated_at_ms = Set(state.updated_at_ms);
    Ok(shop_order::Entity::update(active).exec(conn).await?)
}

/// Which orders a List reads.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub customer_id: Option<String>,
    pub courier_id: Option<String>,
    pub statuses: Vec<OrderStatus>,
    pub created_from_ms: Option<i64>,
    pub created_before_ms: Option<i64>,
    /// Ids below this one (the page token).
    pub before: Option<OrderId>,
}

/// One page of orders, newest (highest id) first.
pub async fn list(
    conn: &impl ConnectionTrait,
    filter: &ListFilter,
    limit: u64,
) -> Result<Vec<shop_order::Model>, StoreError> {
    let mut query = shop_order::Entity::find();
    if let Some(customer) = &filter.customer_id {
        query = query.filter(shop_order::Column::CustomerId.eq(customer.as_str()));
    }
    if let Some(courier) = &filter.courier_id {
        query = query.filter(shop_order::Column::CourierId.eq(courier.as_str()));
    }
    if !filter.statuses.is_empty() {
        query = query.filter(
            shop_order::Column::Status.is_in(filter.statuses.iter().map(|s| status_name(*s))),
        );
    }
    if let Some(from) = filter.created_from_ms {
        query = query.filter(shop_order::Column::CreatedAtMs.gte(from));
    }
    if let Some(before) = filter.created_before_ms {
        query = query.filter(shop_order::Column::CreatedAtMs.lt(before));
    }
    if let Some(before) = filter.before {
        query = query.filter(shop_order::Column::Id.lt(before.as_i64()));
    }
    Ok(query
        .order_by_desc(shop_order::Column::Id)
        .limit(limit)
        .all(conn)
        .await?)
}

/// Whether `user_id` is the customer of order `id` (the policy's membership of `order:<id>`).
pub async fn is_customer(
    conn: &impl ConnectionTrait,
    id: OrderId,
    user_id: &str,
) -> Result<bool, StoreError> {
    let customer: Option<String> = shop_order::Entity::find_by_id(id.as_i64())
        .select_only()
        .column(shop_order::Column::CustomerId)
        .into_tuple()
        .one(conn)
        .await?;
    Ok(customer.as_deref() == Some(user_id))
}

pub async fn payment_by_reference(
    conn: &impl ConnectionTrait,
    reference: &str,
) -> Result<Option<order_payment::Model>, StoreError> {
    Ok(order_payment::Entity::find()
        .filter(order_payment::Column::Reference.eq(reference))
        .one(conn)
        .await?)
}

/// Records a payment the rules accepted, with the order's version and paid total after it.
pub async fn insert_payment(
    conn: &impl ConnectionTrait,
    order: &Order,
    payment: &PaymentInput,
    recorded_by: &str,
    now_ms: i64,
) -> Result<order_payment::Model, StoreError> {
    let row = order_payment::ActiveModel {
        reference: Set(payment.reference.clone()),
        order_id: Set(order.id.as_i64()),
        amount_minor: Set(payment.amount_minor),
        currency: Set(payment.currency.clone()),
        method: Set(events::method_name(payment.method).to_owned()),
        recorded_by: Set(recorded_by.to_owned()),
        version: Set(to_i64(order.version)),
        paid_minor: Set(order.paid_minor),
        received_at_ms: Set(now_ms),
        ..Default::default()
    };
    Ok(order_payment::Entity::insert(row)
        .exec_with_returning(conn)
        .await?)
}

pub async fn shop_status(
    conn: &impl ConnectionTrait,
) -> Result<Option<shop_status::Model>, StoreError> {
    Ok(shop_status::Entity::find_by_id(1).one(conn).await?)
}

/// Reads the shop's status row for a change, locking it (PostgreSQL).
pub async fn shop_status_for_update(
    conn: &impl ConnectionTrait,
) -> Result<Option<shop_status::Model>, StoreError> {
    Ok(shop_status::Entity::find_by_id(1)
        .lock_exclusive()
        .one(conn)
        .await?)
}

pub async fn save_shop_status(
    conn: &impl ConnectionTrait,
    row: shop_status::Model,
) -> Result<(), StoreError> {
    shop_status::Entity::insert(shop_status::ActiveModel {
        id: Set(row.id),
        status: Set(row.status),
        message: Set(row.message),
        version: Set(row.version),
        changed_by: Set(row.changed_by),
        updated_at_ms: Set(row.updated_at_ms),
    })
    .on_conflict(
        OnConflict::column(shop_status::Column::Id)
            .update_columns([
                shop_status::Column::Status,
                shop_status::Column::Message,
                shop_status::Column::Version,
                shop_status::Column::ChangedBy,
                shop_status::Column::UpdatedAtMs,
            ])
            .to_owned(),
    )
    .exec_without_returning(conn)
    .await?;
    Ok(())
}

/// A courier's availability as stored (`None`: never set).
pub async fn courier_status(
    conn: &impl ConnectionTrait,
    courier_id: &str,
) -> Result<Option<CourierStatus>, StoreError> {
    let status: Option<String> = shop_courier::Entity::find_by_id(courier_id.to_owned())
        .select_only()
        .column(shop_courier::Column::Status)
        .into_tuple()
        .one(conn)
        .await?;
    Ok(status.as_deref().map(events::courier_from_name))
}

pub async fn save_courier_status(
    conn: &impl ConnectionTrait,
    courier_id: &str,
    status: CourierStatus,
    now_ms: i64,
) -> Result<(), StoreError> {
    shop_courier::Entity::insert(shop_courier::ActiveModel {
        courier_id: Set(courier_id.to_owned()),
        status: Set(events::courier_name(status).to_owned()),
        updated_at_ms: Set(now_ms),
    })
    .on_conflict(
        OnConflict::column(shop_courier::Column::CourierId)
            .update_columns([
                shop_courier::Column::Status,
                shop_courier::Column::UpdatedAtMs,
            ])
            .to_owned(),
    )
    .exec_without_returning(conn)
    .await?;
    Ok(())
}

pub async fn insert_offer(
    conn: &impl ConnectionTrait,
    offer: &NewOffer,
    published_by: &str,
    now_ms: i64,
) -> Result<shop_offer::Model, StoreError> {
    Ok(shop_offer::Entity::insert(shop_offer::ActiveModel {
        title: Set(offer.title.clone()),
        text: Set(offer.text.clone()),
        valid_until_ms: Set(offer.valid_until_ms),
        published_by: Set(published_by.to_owned()),
        published_at_ms: Set(now_ms),
        ..Default::default()
    })
    .exec_with_returning(conn)
    .await?)
}

pub async fn location(
    conn: &impl ConnectionTrait,
    id: OrderId,
) -> Result<Option<order_location::Model>, StoreError> {
    Ok(order_location::Entity::find_by_id(id.as_i64())
        .one(conn)
        .await?)
}

/// Stores the last known fix of an order (one row per order, replaced).
pub async fn save_location(conn: &impl ConnectionTrait, fix: &StoredFix) -> Result<(), StoreError> {
    use order_location::Column as C;
    order_location::Entity::insert(order_location::ActiveModel {
        order_id: Set(fix.order_id.as_i64()),
        courier_id: Set(fix.courier_id.clone()),
        lat: Set(fix.fix.lat),
        lng: Set(fix.fix.lng),
        accuracy_m: Set(fix.fix.accuracy_m),
        heading_deg: Set(fix.fix.heading_deg),
        speed_mps: Set(fix.fix.speed_mps),
        device_time_ms: Set(fix.fix.device_time_ms),
        received_at_ms: Set(fix.received_at_ms),
    })
    .on_conflict(
        OnConflict::column(C::OrderId)
            .update_columns([
                C::CourierId,
                C::Lat,
                C::Lng,
                C::AccuracyM,
                C::HeadingDeg,
                C::SpeedMps,
                C::DeviceTimeMs,
                C::ReceivedAtMs,
            ])
            .to_owned(),
    )
    .exec_without_returning(conn)
    .await?;
    Ok(())
}
