//! `review_decision`: the audit trail, one row per reviewer's decision on a request (at most
//! one per request and reviewer). Indexes: a request's decisions, a reviewer's decisions.

use sea_orm_migration::prelude::*;

#[derive(Debug, DeriveMigrationName)]
pub(crate) struct Migration;

#[derive(DeriveIden)]
enum ReviewDecision {
    Table,
    Id,
    ReviewId,
    ReviewerId,
    Verdict,
    Reason,
    DecidedAtMs,
}

const ONE_PER_REVIEWER: &str = "idx_review_decision_review_reviewer";
const BY_REVIEWER: &str = "idx_review_decision_reviewer";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        use ReviewDecision as D;
        manager
            .create_table(
                Table::create()
                    .table(D::Table)
                    .col(
                        ColumnDef::new(D::Id)
                            .big_integer()
                            .not_null()
                            .auto_increment()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(D::ReviewId).string_len(64).not_null())
                    .col(ColumnDef::new(D::ReviewerId).string_len(255).not_null())
                    .col(ColumnDef::new(D::Verdict).string_len(16).not_null())
                    .col(ColumnDef::new(D::Reason).text().null())
                    .col(ColumnDef::new(D::DecidedAtMs).big_integer().not_null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name(ONE_PER_REVIEWER)
                    .table(D::Table)
                    .col(D::ReviewId)
                    .col(D::ReviewerId)
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name(BY_REVIEWER)
                    .table(D::Table)
                    .col(D::ReviewerId)
                    .col(D::Id)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(ReviewDecision::Table).to_owned())
            .await
    }
}
