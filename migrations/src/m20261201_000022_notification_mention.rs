//! `notification_mention`: the mention rate limit's sliding window per sender → recipient
//! pair (the times of the latest admitted `user_mentioned` notifications). Windows whose
//! newest mention is older than the limit's minute are deleted by the inbox's sweeper
//! (`last_at_ms` index).

use sea_orm_migration::prelude::*;

#[derive(Debug, DeriveMigrationName)]
pub(crate) struct Migration;

#[derive(DeriveIden)]
enum NotificationMention {
    Table,
    SenderId,
    UserId,
    RecentMs,
    LastAtMs,
}

const LAST_INDEX: &str = "idx_notification_mention_last_at";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        use NotificationMention as M;
        manager
            .create_table(
                Table::create()
                    .table(M::Table)
                    .col(ColumnDef::new(M::SenderId).string_len(128).not_null())
                    .col(ColumnDef::new(M::UserId).string_len(128).not_null())
                    .col(ColumnDef::new(M::RecentMs).string_len(255).not_null())
                    .col(ColumnDef::new(M::LastAtMs).big_integer().not_null())
                    .primary_key(Index::create().col(M::SenderId).col(M::UserId))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name(LAST_INDEX)
                    .table(M::Table)
                    .col(M::LastAtMs)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(NotificationMention::Table).to_owned())
            .await
    }
}
