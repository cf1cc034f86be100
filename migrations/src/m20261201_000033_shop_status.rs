//! `shop_status`: the shop's business status, one row (`id` = 1) written by the first
//! SetBusinessStatus; without it the shop is open at version 0.

use sea_orm_migration::prelude::*;

#[derive(Debug, DeriveMigrationName)]
pub(crate) struct Migration;

#[derive(DeriveIden)]
enum ShopStatus {
    Table,
    Id,
    Status,
    Message,
    Version,
    ChangedBy,
    UpdatedAtMs,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        use ShopStatus as S;
        manager
            .create_table(
                Table::create()
                    .table(S::Table)
                    .col(ColumnDef::new(S::Id).integer().not_null().primary_key())
                    .col(ColumnDef::new(S::Status).string_len(16).not_null())
                    .col(ColumnDef::new(S::Message).text().not_null())
                    .col(ColumnDef::new(S::Version).big_integer().not_null())
                    .col(ColumnDef::new(S::ChangedBy).string_len(255).not_null())
                    .col(ColumnDef::new(S::UpdatedAtMs).big_integer().not_null())
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(ShopStatus::Table).to_owned())
            .await
    }
}
