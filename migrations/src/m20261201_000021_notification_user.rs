//! `notification_user`: a user's notification preferences (types turned off, the
//! do-not-disturb window and zone), and the row every write to the user's inbox locks first,
//! so that one inbox's writers take turns and each counts event follows every change before
//! it.

use sea_orm_migration::prelude::*;

#[derive(Debug, DeriveMigrationName)]
pub(crate) struct Migration;

#[derive(DeriveIden)]
enum NotificationUser {
    Table,
    UserId,
    MutedTypes,
    DndStartMinute,
    DndEndMinute,
    DndTimeZone,
    Version,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        use NotificationUser as U;
        manager
            .create_table(
                Table::create()
                    .table(U::Table)
                    .col(
                        ColumnDef::new(U::UserId)
                            .string_len(128)
                            .not_null()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(U::MutedTypes).text().not_null())
                    .col(ColumnDef::new(U::DndStartMinute).integer().null())
                    .col(ColumnDef::new(U::DndEndMinute).integer().null())
                    .col(ColumnDef::new(U::DndTimeZone).string_len(64).null())
                    .col(ColumnDef::new(U::Version).big_integer().not_null())
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(NotificationUser::Table).to_owned())
            .await
    }
}
