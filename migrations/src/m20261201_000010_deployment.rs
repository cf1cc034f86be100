//! `deployment`: one row per deployment (deployment monitoring, `backend/src/domain/deployments`).
//! The row is the deployment's current state; its history is the durable topic
//! `deployment:<id>` in the outbox.
//!
//! - `status`, `stage`: the lowercase names of `DeploymentState` / `DeploymentStage`;
//! - `log_lines`: the number of the last line written; `log_dropped_from`..`log_dropped_to`:
//!   the lines dropped by truncation (both 0 while none are);
//! - `idx_deployment_owner` and `idx_deployment_application` serve List (newest first).

use sea_orm_migration::prelude::*;

#[derive(Debug, DeriveMigrationName)]
pub(crate) struct Migration;

#[derive(DeriveIden)]
enum Deployment {
    Table,
    Id,
    Owner,
    Application,
    GitRef,
    Description,
    Status,
    Stage,
    Progress,
    Message,
    ErrorMessage,
    ExitCode,
    Worker,
    CancelledBy,
    CreatedAtMs,
    StartedAtMs,
    FinishedAtMs,
    LogLines,
    LogLimit,
    LogDroppedFrom,
    LogDroppedTo,
}

const OWNER_INDEX: &str = "idx_deployment_owner";
const APPLICATION_INDEX: &str = "idx_deployment_application";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Deployment::Table)
                    .col(
                        ColumnDef::new(Deployment::Id)
                            .big_integer()
                            .not_null()
                            .auto_increment()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(Deployment::Owner).string_len(255).not_null())
                    .col(
                        ColumnDef::new(Deployment::Application)
                            .string_len(100)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(Deployment::GitRef)
                            .string_len(255)
                            .not_null(),
                    )
                    .col(ColumnDef::new(Deployment::Description).text().not_null())
                    .col(ColumnDef::new(Deployment::Status).string_len(16).not_null())
                    .col(ColumnDef::new(Deployment::Stage).string_len(16).not_null())
                    .col(ColumnDef::new(Deployment::Progress).integer().not_null())
                    .col(ColumnDef::new(Deployment::Message).text().not_null())
                    .col(ColumnDef::new(Deployment::ErrorMessage).text().not_null())
                    .col(ColumnDef::new(Deployment::ExitCode).integer().null())
                    .col(ColumnDef::new(Deployment::Worker).string_len(255).null())
                    .col(
                        ColumnDef::new(Deployment::CancelledBy)
                            .string_len(255)
                            .null(),
                    )
                    .col(
                        ColumnDef::new(Deployment::CreatedAtMs)
                            .big_integer()
                            .not_null(),
                    )
                    .col(ColumnDef::new(Deployment::StartedAtMs).big_integer().null())
                    .col(
                        ColumnDef::new(Deployment::FinishedAtMs)
                            .big_integer()
                            .null(),
                    )
                    .col(
                        ColumnDef::new(Deployment::LogLines)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(Deployment::LogLimit)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(Deployment::LogDroppedFrom)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(Deployment::LogDroppedTo)
                            .big_integer()
                            .not_null(),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name(OWNER_INDEX)
                    .table(Deployment::Table)
                    .col(Deployment::Owner)
                    .col(Deployment::Id)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name(APPLICATION_INDEX)
                    .table(Deployment::Table)
                    .col(Deployment::Application)
                    .col(Deployment::Id)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(Deployment::Table).to_owned())
            .await
    }
}
