//! `deployment_log_chunk`: where each chunk of a deployment's log landed — its first and last
//! line number and the offset of its `deployment.logs` event on `deployment:<id>`. Watch finds
//! where the last N lines start with it, and truncation finds the events whose lines it drops.

use sea_orm_migration::prelude::*;

#[derive(Debug, DeriveMigrationName)]
pub(crate) struct Migration;

#[derive(DeriveIden)]
enum DeploymentLogChunk {
    Table,
    DeploymentId,
    FirstLine,
    LastLine,
    TopicSeq,
}

const LAST_LINE_INDEX: &str = "idx_deployment_log_chunk_last_line";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(DeploymentLogChunk::Table)
                    .col(
                        ColumnDef::new(DeploymentLogChunk::DeploymentId)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(DeploymentLogChunk::FirstLine)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(DeploymentLogChunk::LastLine)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(DeploymentLogChunk::TopicSeq)
                            .big_integer()
                            .not_null(),
                    )
                    .primary_key(
                        Index::create()
                            .col(DeploymentLogChunk::DeploymentId)
                            .col(DeploymentLogChunk::FirstLine),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name(LAST_LINE_INDEX)
                    .table(DeploymentLogChunk::Table)
                    .col(DeploymentLogChunk::DeploymentId)
                    .col(DeploymentLogChunk::LastLine)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(DeploymentLogChunk::Table).to_owned())
            .await
    }
}
