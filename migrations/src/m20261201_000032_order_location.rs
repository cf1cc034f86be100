//! `order_location`: the last known courier fix of an order, written at most every
//! `orders.location_store_interval` (10 s) per order rather than once per fix, so a watcher
//! joining later (or after a restart) still sees where the courier was.

use sea_orm_migration::prelude::*;

#[derive(Debug, DeriveMigrationName)]
pub(crate) struct Migration;

#[derive(DeriveIden)]
enum OrderLocation {
    Table,
    OrderId,
    CourierId,
    Lat,
    Lng,
    AccuracyM,
    HeadingDeg,
    SpeedMps,
    DeviceTimeMs,
    ReceivedAtMs,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        use OrderLocation as L;
        manager
            .create_table(
                Table::create()
                    .table(L::Table)
                    .col(
                        ColumnDef::new(L::OrderId)
                            .big_integer()
                            .not_null()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(L::CourierId).string_len(255).not_null())
                    .col(ColumnDef::new(L::Lat).double().not_null())
                    .col(ColumnDef::new(L::Lng).double().not_null())
                    .col(ColumnDef::new(L::AccuracyM).double().not_null())
                    .col(ColumnDef::new(L::HeadingDeg).double().null())
                    .col(ColumnDef::new(L::SpeedMps).double().null())
                    .col(ColumnDef::new(L::DeviceTimeMs).big_integer().not_null())
                    .col(ColumnDef::new(L::ReceivedAtMs).big_integer().not_null())
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(OrderLocation::Table).to_owned())
            .await
    }
}
