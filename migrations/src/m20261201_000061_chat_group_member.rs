//! `chat_group_member`: who is in which group, with their role (`admin` or `member`). The
//! membership the policy asks for at subscribe time on `group:<id>`; `idx_chat_group_member_user`
//! serves ListMyGroups and the presence fan-out.

use sea_orm_migration::prelude::*;

#[derive(Debug, DeriveMigrationName)]
pub(crate) struct Migration;

#[derive(DeriveIden)]
enum ChatGroupMember {
    Table,
    GroupId,
    UserId,
    Role,
    JoinedAtMs,
}

const USER_INDEX: &str = "idx_chat_group_member_user";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        use ChatGroupMember as M;
        manager
            .create_table(
                Table::create()
                    .table(M::Table)
                    .col(ColumnDef::new(M::GroupId).big_integer().not_null())
                    .col(ColumnDef::new(M::UserId).string_len(128).not_null())
                    .col(ColumnDef::new(M::Role).string_len(16).not_null())
                    .col(ColumnDef::new(M::JoinedAtMs).big_integer().not_null())
                    .primary_key(Index::create().col(M::GroupId).col(M::UserId))
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
            .drop_table(Table::drop().table(ChatGroupMember::Table).to_owned())
            .await
    }
}
