//! `shop_order`: one row per order (order tracking, `backend/src/domain/orders`). The row is
//! the order's current state; its history is the durable topic `order:<id>` (and the role
//! topics) in the outbox. (`order` is an SQL keyword, hence the prefix.)
//!
//! - `status`: the lowercase name of `OrderStatus` (`placed` … `cancelled`);
//! - `version`: 1 when placed, +1 with every change;
//! - `items`: the order's lines as a JSON array (immutable after Place);
//! - amounts are integers in the currency's minor unit;
//! - the indexes serve List: a customer's orders, a courier's, everyone's by creation time.

use sea_orm_migration::prelude::*;

#[derive(Debug, DeriveMigrationName)]
pub(crate) struct Migration;

#[derive(DeriveIden)]
enum ShopOrder {
    Table,
    Id,
    CustomerId,
    CourierId,
    Status,
    Version,
    Items,
    Currency,
    TotalMinor,
    PaidMinor,
    DeliveryAddress,
    Note,
    CancelReason,
    CancelledBy,
    CreatedAtMs,
    UpdatedAtMs,
}

const CUSTOMER_INDEX: &str = "idx_shop_order_customer";
const COURIER_INDEX: &str = "idx_shop_order_courier";
const CREATED_INDEX: &str = "idx_shop_order_created";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        use ShopOrder as O;
        manager
            .create_table(
                Table::create()
                    .table(O::Table)
                    .col(
                        ColumnDef::new(O::Id)
                            .big_integer()
                            .not_null()
                            .auto_increment()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(O::CustomerId).string_len(255).not_null())
                    .col(ColumnDef::new(O::CourierId).string_len(255).null())
                    .col(ColumnDef::new(O::Status).string_len(32).not_null())
                    .col(ColumnDef::new(O::Version).big_integer().not_null())
                    .col(ColumnDef::new(O::Items).text().not_null())
                    .col(ColumnDef::new(O::Currency).string_len(3).not_null())
                    .col(ColumnDef::new(O::TotalMinor).big_integer().not_null())
                    .col(ColumnDef::new(O::PaidMinor).big_integer().not_null())
                    .col(ColumnDef::new(O::DeliveryAddress).text().not_null())
                    .col(ColumnDef::new(O::Note).text().not_null())
                    .col(ColumnDef::new(O::CancelReason).text().not_null())
                    .col(ColumnDef::new(O::CancelledBy).string_len(16).not_null())
                    .col(ColumnDef::new(O::CreatedAtMs).big_integer().not_null())
                    .col(ColumnDef::new(O::UpdatedAtMs).big_integer().not_null())
                    .to_owned(),
            )
            .await?;
        for (name, column) in [
            (CUSTOMER_INDEX, O::CustomerId),
            (COURIER_INDEX, O::CourierId),
            (CREATED_INDEX, O::CreatedAtMs),
        ] {
            manager
                .create_index(
                    Index::create()
                        .name(name)
                        .table(O::Table)
                        .col(column)
                        .col(O::Id)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(ShopOrder::Table).to_owned())
            .await
    }
}
