//! `chat_message`: one row per message, numbered `seq` 1, 2, 3… within its conversation
//! (unique). A deleted message keeps its row as a tombstone (`deleted_at_ms` set, `text`
//! emptied). `(conversation_id, author_id, client_message_id)` is unique, so a retried send
//! finds the first message; `mentions` is a JSON array of the user ids mentioned.

use sea_orm_migration::prelude::*;

#[derive(Debug, DeriveMigrationName)]
pub(crate) struct Migration;

#[derive(DeriveIden)]
enum ChatMessage {
    Table,
    Id,
    ConversationId,
    Seq,
    AuthorId,
    Text,
    ReplyToId,
    ClientMessageId,
    Version,
    Mentions,
    CreatedAtMs,
    EditedAtMs,
    DeletedAtMs,
}

const SEQ_INDEX: &str = "idx_chat_message_seq";
const CLIENT_INDEX: &str = "idx_chat_message_client_id";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        use ChatMessage as M;
        manager
            .create_table(
                Table::create()
                    .table(M::Table)
                    .col(
                        ColumnDef::new(M::Id)
                            .big_integer()
                            .not_null()
                            .auto_increment()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(M::ConversationId).big_integer().not_null())
                    .col(ColumnDef::new(M::Seq).big_integer().not_null())
                    .col(ColumnDef::new(M::AuthorId).string_len(128).not_null())
                    .col(ColumnDef::new(M::Text).text().not_null())
                    .col(ColumnDef::new(M::ReplyToId).big_integer().null())
                    .col(ColumnDef::new(M::ClientMessageId).string_len(512).null())
                    .col(ColumnDef::new(M::Version).integer().not_null())
                    .col(ColumnDef::new(M::Mentions).text().null())
                    .col(ColumnDef::new(M::CreatedAtMs).big_integer().not_null())
                    .col(ColumnDef::new(M::EditedAtMs).big_integer().null())
                    .col(ColumnDef::new(M::DeletedAtMs).big_integer().null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name(SEQ_INDEX)
                    .table(M::Table)
                    .col(M::ConversationId)
                    .col(M::Seq)
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name(CLIENT_INDEX)
                    .table(M::Table)
                    .col(M::ConversationId)
                    .col(M::AuthorId)
                    .col(M::ClientMessageId)
                    .unique()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(ChatMessage::Table).to_owned())
            .await
    }
}
