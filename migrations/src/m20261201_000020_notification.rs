//! `notification`: one row per notification of a user's inbox. States are times (Unix ms,
//! NULL while not so): `read_at_ms IS NULL` is unread. The indexes serve the inbox's real
//! queries: unread newest first (user, read, created), one type's unread (user, type, read,
//! created), a conversation's unread (user, conversation, read), the inbox page (user,
//! archived, created), and the sweeper's snoozes that end and expiries.

use sea_orm_migration::prelude::*;

#[derive(Debug, DeriveMigrationName)]
pub(crate) struct Migration;

#[derive(DeriveIden, Clone, Copy)]
enum Notification {
    Table,
    Id,
    UserId,
    Kind,
    Priority,
    Title,
    Content,
    Data,
    SenderId,
    SenderName,
    SenderAvatarUrl,
    ConversationId,
    MessageId,
    CallId,
    MessagePreview,
    SeenAtMs,
    ReadAtMs,
    ArchivedAtMs,
    SnoozedUntilMs,
    CreatedAtMs,
    ExpiresAtMs,
}

/// (name, columns) of every index.
const INDEXES: [(&str, &[Notification]); 6] = [
    (
        "idx_notification_user_read_created",
        &[
            Notification::UserId,
            Notification::ReadAtMs,
            Notification::CreatedAtMs,
        ],
    ),
    (
        "idx_notification_user_type_read_created",
        &[
            Notification::UserId,
            Notification::Kind,
            Notification::ReadAtMs,
            Notification::CreatedAtMs,
        ],
    ),
    (
        "idx_notification_user_conversation_read",
        &[
            Notification::UserId,
            Notification::ConversationId,
            Notification::ReadAtMs,
        ],
    ),
    (
        "idx_notification_user_archived_created",
        &[
            Notification::UserId,
            Notification::ArchivedAtMs,
            Notification::CreatedAtMs,
        ],
    ),
    (
        "idx_notification_snoozed_until",
        &[Notification::SnoozedUntilMs],
    ),
    ("idx_notification_expires_at", &[Notification::ExpiresAtMs]),
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        use Notification as N;
        manager
            .create_table(
                Table::create()
                    .table(N::Table)
                    .col(
                        ColumnDef::new(N::Id)
                            .string_len(64)
                            .not_null()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(N::UserId).string_len(128).not_null())
                    .col(ColumnDef::new(N::Kind).string_len(32).not_null())
                    .col(ColumnDef::new(N::Priority).string_len(16).not_null())
                    .col(ColumnDef::new(N::Title).string_len(1024).not_null())
                    .col(ColumnDef::new(N::Content).text().not_null())
                    .col(ColumnDef::new(N::Data).text().null())
                    .col(ColumnDef::new(N::SenderId).string_len(128).null())
                    .col(ColumnDef::new(N::SenderName).string_len(512).null())
                    .col(ColumnDef::new(N::SenderAvatarUrl).text().null())
                    .col(ColumnDef::new(N::ConversationId).string_len(128).null())
                    .col(ColumnDef::new(N::MessageId).string_len(128).null())
                    .col(ColumnDef::new(N::CallId).string_len(128).null())
                    .col(ColumnDef::new(N::MessagePreview).text().null())
                    .col(ColumnDef::new(N::SeenAtMs).big_integer().null())
                    .col(ColumnDef::new(N::ReadAtMs).big_integer().null())
                    .col(ColumnDef::new(N::ArchivedAtMs).big_integer().null())
                    .col(ColumnDef::new(N::SnoozedUntilMs).big_integer().null())
                    .col(ColumnDef::new(N::CreatedAtMs).big_integer().not_null())
                    .col(ColumnDef::new(N::ExpiresAtMs).big_integer().null())
                    .to_owned(),
            )
            .await?;
        for (name, columns) in INDEXES {
            let mut index = Index::create();
            index.name(name).table(N::Table);
            for column in columns {
                index.col(*column);
            }
            manager.create_index(index.to_owned()).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(Notification::Table).to_owned())
            .await
    }
}
