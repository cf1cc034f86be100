//! `shop_courier`: one row per courier that ever set a status (SetCourierStatus): their
//! availability, which AssignCourier checks.

use sea_orm_migration::prelude::*;

#[derive(Debug, DeriveMigrationName)]
pub(crate) struct Migration;

#[derive(DeriveIden)]
enum ShopCourier {
    Table,
    CourierId,
    Status,
    UpdatedAtMs,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        use ShopCourier as C;
        manager
            .create_table(
                Table::create()
                    .table(C::Table)
                    .col(
                        ColumnDef::new(C::CourierId)
                            .string_len(255)
                            .not_null()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(C::Status).string_len(16).not_null())
                    .col(ColumnDef::new(C::UpdatedAtMs).big_integer().not_null())
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(ShopCourier::Table).to_owned())
            .await
    }
}
