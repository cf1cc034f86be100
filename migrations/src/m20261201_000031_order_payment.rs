//! `order_payment`: one row per payment recorded against an order. `reference` (the payment
//! provider's) is unique: recording it again finds this row instead of a second payment.

use sea_orm_migration::prelude::*;

#[derive(Debug, DeriveMigrationName)]
pub(crate) struct Migration;

#[derive(DeriveIden)]
enum OrderPayment {
    Table,
    Id,
    Reference,
    OrderId,
    AmountMinor,
    Currency,
    Method,
    RecordedBy,
    Version,
    PaidMinor,
    ReceivedAtMs,
}

const REFERENCE_INDEX: &str = "idx_order_payment_reference";
const ORDER_INDEX: &str = "idx_order_payment_order";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        use OrderPayment as P;
        manager
            .create_table(
                Table::create()
                    .table(P::Table)
                    .col(
                        ColumnDef::new(P::Id)
                            .big_integer()
                            .not_null()
                            .auto_increment()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(P::Reference).string_len(128).not_null())
                    .col(ColumnDef::new(P::OrderId).big_integer().not_null())
                    .col(ColumnDef::new(P::AmountMinor).big_integer().not_null())
                    .col(ColumnDef::new(P::Currency).string_len(3).not_null())
                    .col(ColumnDef::new(P::Method).string_len(16).not_null())
                    .col(ColumnDef::new(P::RecordedBy).string_len(255).not_null())
                    .col(ColumnDef::new(P::Version).big_integer().not_null())
                    .col(ColumnDef::new(P::PaidMinor).big_integer().not_null())
                    .col(ColumnDef::new(P::ReceivedAtMs).big_integer().not_null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name(REFERENCE_INDEX)
                    .table(P::Table)
                    .col(P::Reference)
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name(ORDER_INDEX)
                    .table(P::Table)
                    .col(P::OrderId)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(OrderPayment::Table).to_owned())
            .await
    }
}
