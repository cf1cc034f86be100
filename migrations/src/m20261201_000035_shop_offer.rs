//! `shop_offer`: one row per offer an admin published (PublishOffer); customers receive it on
//! `role:customer`.

use sea_orm_migration::prelude::*;

#[derive(Debug, DeriveMigrationName)]
pub(crate) struct Migration;

#[derive(DeriveIden)]
enum ShopOffer {
    Table,
    Id,
    Title,
    Text,
    ValidUntilMs,
    PublishedBy,
    PublishedAtMs,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        use ShopOffer as F;
        manager
            .create_table(
                Table::create()
                    .table(F::Table)
                    .col(
                        ColumnDef::new(F::Id)
                            .big_integer()
                            .not_null()
                            .auto_increment()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(F::Title).string_len(100).not_null())
                    .col(ColumnDef::new(F::Text).text().not_null())
                    .col(ColumnDef::new(F::ValidUntilMs).big_integer().not_null())
                    .col(ColumnDef::new(F::PublishedBy).string_len(255).not_null())
                    .col(ColumnDef::new(F::PublishedAtMs).big_integer().not_null())
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(ShopOffer::Table).to_owned())
            .await
    }
}
