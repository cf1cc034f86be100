//! `review_request`: one row per request in a reviewer role's queue (applicant, requested
//! role, details, required approvals, status pending → approved | rejected). The index
//! serves the queue's reads: a role's pending requests, oldest first.

use sea_orm_migration::prelude::*;

#[derive(Debug, DeriveMigrationName)]
pub(crate) struct Migration;

#[derive(DeriveIden)]
enum ReviewRequest {
    Table,
    Id,
    ApplicantName,
    ApplicantEmail,
    ApplicantPhone,
    ApplicantUserId,
    RequestedRole,
    Details,
    ReviewerRole,
    RequiredApprovals,
    Status,
    SubmittedBy,
    CreatedAtMs,
    DecidedAtMs,
}

const QUEUE_INDEX: &str = "idx_review_request_role_status_created";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        use ReviewRequest as R;
        manager
            .create_table(
                Table::create()
                    .table(R::Table)
                    .col(
                        ColumnDef::new(R::Id)
                            .string_len(64)
                            .not_null()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(R::ApplicantName).string_len(1024).not_null())
                    .col(ColumnDef::new(R::ApplicantEmail).string_len(254).not_null())
                    .col(ColumnDef::new(R::ApplicantPhone).string_len(32).null())
                    .col(ColumnDef::new(R::ApplicantUserId).string_len(128).null())
                    .col(ColumnDef::new(R::RequestedRole).string_len(64).not_null())
                    .col(ColumnDef::new(R::Details).text().null())
                    .col(ColumnDef::new(R::ReviewerRole).string_len(64).not_null())
                    .col(ColumnDef::new(R::RequiredApprovals).integer().not_null())
                    .col(ColumnDef::new(R::Status).string_len(16).not_null())
                    .col(ColumnDef::new(R::SubmittedBy).string_len(255).not_null())
                    .col(ColumnDef::new(R::CreatedAtMs).big_integer().not_null())
                    .col(ColumnDef::new(R::DecidedAtMs).big_integer().null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name(QUEUE_INDEX)
                    .table(R::Table)
                    .col(R::ReviewerRole)
                    .col(R::Status)
                    .col(R::CreatedAtMs)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(ReviewRequest::Table).to_owned())
            .await
    }
}
