//! `admin_audit`: one row per `herald.v1.Admin` call that passed the role and input checks:
//! who (the admin's id), what (the RPC), on what (a user id or topic, or empty), when (Unix
//! ms), and details as JSON. Read newest first (`at_ms` index); never a token.

use sea_orm_migration::prelude::*;

#[derive(Debug, DeriveMigrationName)]
pub(crate) struct Migration;

#[derive(DeriveIden)]
enum AdminAudit {
    Table,
    Id,
    AtMs,
    Actor,
    Action,
    Target,
    Detail,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        use AdminAudit as A;
        manager
            .create_table(
                Table::create()
                    .table(A::Table)
                    .col(
                        ColumnDef::new(A::Id)
                            .big_integer()
                            .not_null()
                            .auto_increment()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(A::AtMs).big_integer().not_null())
                    .col(ColumnDef::new(A::Actor).string_len(255).not_null())
                    .col(ColumnDef::new(A::Action).string_len(64).not_null())
                    .col(ColumnDef::new(A::Target).string_len(255).not_null())
                    .col(ColumnDef::new(A::Detail).text().not_null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_admin_audit_at")
                    .table(A::Table)
                    .col(A::AtMs)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(AdminAudit::Table).to_owned())
            .await
    }
}
