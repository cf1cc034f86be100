//! `chat_conversation`: one row per conversation, `direct` (its two users in `direct_a` <
//! `direct_b`, unique: creating an existing pair finds it) or `group` (`group_id`; its members
//! are the group's). `last_seq` numbers the conversation's messages; every message and every
//! read takes this row's lock first, so one conversation's writers take turns and its unread
//! counters stay exact. `activity_ms` (the creation or the last message) orders
//! ListMyConversations.

use sea_orm_migration::prelude::*;

#[derive(Debug, DeriveMigrationName)]
pub(crate) struct Migration;

#[derive(DeriveIden)]
enum ChatConversation {
    Table,
    Id,
    Kind,
    GroupId,
    Title,
    DirectA,
    DirectB,
    CreatorId,
    CreatedAtMs,
    LastSeq,
    ActivityMs,
}

const DIRECT_INDEX: &str = "idx_chat_conversation_direct";
const GROUP_INDEX: &str = "idx_chat_conversation_group";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        use ChatConversation as C;
        manager
            .create_table(
                Table::create()
                    .table(C::Table)
                    .col(
                        ColumnDef::new(C::Id)
                            .big_integer()
                            .not_null()
                            .auto_increment()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(C::Kind).string_len(16).not_null())
                    .col(ColumnDef::new(C::GroupId).big_integer().null())
                    .col(ColumnDef::new(C::Title).string_len(400).null())
                    .col(ColumnDef::new(C::DirectA).string_len(128).null())
                    .col(ColumnDef::new(C::DirectB).string_len(128).null())
                    .col(ColumnDef::new(C::CreatorId).string_len(128).not_null())
                    .col(ColumnDef::new(C::CreatedAtMs).big_integer().not_null())
                    .col(ColumnDef::new(C::LastSeq).big_integer().not_null())
                    .col(ColumnDef::new(C::ActivityMs).big_integer().not_null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name(DIRECT_INDEX)
                    .table(C::Table)
                    .col(C::DirectA)
                    .col(C::DirectB)
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name(GROUP_INDEX)
                    .table(C::Table)
                    .col(C::GroupId)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(ChatConversation::Table).to_owned())
            .await
    }
}
