//! `chat_conv_member`: who is in which conversation (for a group conversation: a copy of the
//! group's members, kept in the same transactions), with the member's read watermark
//! (`read_seq`, a message seq) and unread counter (messages of others, not deleted, above the
//! watermark), both changed only under the conversation's lock. The membership the policy
//! asks for at subscribe time on `conv:<id>`; `idx_chat_conv_member_user` serves
//! ListMyConversations and the unread totals.

use sea_orm_migration::prelude::*;

#[derive(Debug, DeriveMigrationName)]
pub(crate) struct Migration;

#[derive(DeriveIden)]
enum ChatConvMember {
    Table,
    ConversationId,
    UserId,
    ReadSeq,
    Unread,
    JoinedAtMs,
}

const USER_INDEX: &str = "idx_chat_conv_member_user";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        use ChatConvMember as M;
        manager
            .create_table(
                Table::create()
                    .table(M::Table)
                    .col(ColumnDef::new(M::ConversationId).big_integer().not_null())
                    .col(ColumnDef::new(M::UserId).string_len(128).not_null())
                    .col(ColumnDef::new(M::ReadSeq).big_integer().not_null())
                    .col(ColumnDef::new(M::Unread).big_integer().not_null())
                    .col(ColumnDef::new(M::JoinedAtMs).big_integer().not_null())
                    .primary_key(Index::create().col(M::ConversationId).col(M::UserId))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name(USER_INDEX)
                    .table(M::Table)
                    .col(M::UserId)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(ChatConvMember::Table).to_owned())
            .await
    }
}
