//! `chat_reaction`: one row per (message, user, emoji) reaction; toggling deletes or inserts
//! it under the message's lock, so the summary computed in that transaction is exact.

use sea_orm_migration::prelude::*;

#[derive(Debug, DeriveMigrationName)]
pub(crate) struct Migration;

#[derive(DeriveIden)]
enum ChatReaction {
    Table,
    MessageId,
    UserId,
    Emoji,
    CreatedAtMs,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        use ChatReaction as R;
        manager
            .create_table(
                Table::create()
                    .table(R::Table)
                    .col(ColumnDef::new(R::MessageId).big_integer().not_null())
                    .col(ColumnDef::new(R::UserId).string_len(128).not_null())
                    .col(ColumnDef::new(R::Emoji).string_len(64).not_null())
                    .col(ColumnDef::new(R::CreatedAtMs).big_integer().not_null())
                    .primary_key(
                        Index::create()
                            .col(R::MessageId)
                            .col(R::UserId)
                            .col(R::Emoji),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(ChatReaction::Table).to_owned())
            .await
    }
}
