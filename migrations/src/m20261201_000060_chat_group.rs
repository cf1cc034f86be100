//! `chat_group`: one row per messaging group (`backend/src/domain/chat`). Its members are in
//! `chat_group_member`, its conversations in `chat_conversation`; the counts are kept with
//! every change, and every change to a group takes this row's lock first, so one group's
//! writers take turns.

use sea_orm_migration::prelude::*;

#[derive(Debug, DeriveMigrationName)]
pub(crate) struct Migration;

#[derive(DeriveIden)]
enum ChatGroup {
    Table,
    Id,
    Name,
    CreatorId,
    CreatedAtMs,
    MemberCount,
    ConversationCount,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        use ChatGroup as G;
        manager
            .create_table(
                Table::create()
                    .table(G::Table)
                    .col(
                        ColumnDef::new(G::Id)
                            .big_integer()
                            .not_null()
                            .auto_increment()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(G::Name).string_len(400).not_null())
                    .col(ColumnDef::new(G::CreatorId).string_len(128).not_null())
                    .col(ColumnDef::new(G::CreatedAtMs).big_integer().not_null())
                    .col(ColumnDef::new(G::MemberCount).integer().not_null())
                    .col(ColumnDef::new(G::ConversationCount).integer().not_null())
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(ChatGroup::Table).to_owned())
            .await
    }
}
