//! sea-orm reads and writes of deployments, on the connection they are given (a
//! [`crate::store::DomainTx`] or a [`crate::store::ReadSnapshot`]). The schema lives in
//! `migrations/` (`m20261201_000010_deployment`, `m20261201_000011_deployment_log_chunk`).

use herald_proto::v1::{DeploymentLogs, Event, event::Body};
use prost::Message;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, sea_query::Expr,
};

use super::rules::{
    Deployment, DeploymentId, LogState, stage_from_name, stage_name, state_from_name, state_name,
};
use crate::{
    store::{StoreError, entity::outbox},
    topic::Topic,
};

/// `deployment`: one row per deployment, its current state.
pub mod deployment {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "deployment")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        pub owner: String,
        pub application: String,
        pub git_ref: String,
        #[sea_orm(column_type = "Text")]
        pub description: String,
        /// `pending`, `running`, `success`, `failed`, `cancelled`.
        pub status: String,
        /// `none`, `cloning`, `building`, `deploying`.
        pub stage: String,
        pub progress: i32,
        #[sea_orm(column_type = "Text")]
        pub message: String,
        #[sea_orm(column_type = "Text")]
        pub error_message: String,
        pub exit_code: Option<i32>,
        pub worker: Option<String>,
        pub cancelled_by: Option<String>,
        pub created_at_ms: i64,
        pub started_at_ms: Option<i64>,
        pub finished_at_ms: Option<i64>,
        /// The number of the last line written.
        pub log_lines: i64,
        pub log_limit: i64,
        /// The dropped range, inclusive; both 0 while nothing was dropped.
        pub log_dropped_from: i64,
        pub log_dropped_to: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// `deployment_log_chunk`: where each chunk of lines landed on the topic.
pub mod log_chunk {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "deployment_log_chunk")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub deployment_id: i64,
        #[sea_orm(primary_key, auto_increment = false)]
        pub first_line: i64,
        pub last_line: i64,
        /// The offset of the chunk's `deployment.logs` event.
        pub topic_seq: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

fn to_u64(value: i64) -> u64 {
    u64::try_from(value).unwrap_or_default()
}

fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// A stored row in the rules' terms. A row Herald never wrote (an unknown status name) is a
/// database error, not a panic.
pub fn state_of(row: &deployment::Model) -> Result<Deployment, StoreError> {
    let corrupt = |what: &str| {
        StoreError::Invalid(format!(
            "deployment {} has an unknown {what} in the database",
            row.id
        ))
    };
    let id = DeploymentId::new(to_u64(row.id)).map_err(|_| corrupt("id"))?;
    Ok(Deployment {
        id,
        owner: row.owner.clone(),
        status: state_from_name(&row.status).ok_or_else(|| corrupt("status"))?,
        stage: stage_from_name(&row.stage).ok_or_else(|| corrupt("stage"))?,
        progress: u32::try_from(row.progress).unwrap_or_default(),
        message: row.message.clone(),
        error_message: row.error_message.clone(),
        exit_code: row.exit_code,
        worker: row.worker.clone(),
        cancelled_by: row.cancelled_by.clone(),
        created_at_ms: row.created_at_ms,
        started_at_ms: row.started_at_ms,
        finished_at_ms: row.finished_at_ms,
        log: LogState {
            lines: to_u64(row.log_lines),
            limit: to_u64(row.log_limit),
            dropped: (row.log_dropped_from > 0)
                .then(|| (to_u64(row.log_dropped_from), to_u64(row.log_dropped_to))),
        },
    })
}

/// Inserts a new deployment and returns its row (with the id the database gave it).
pub async fn insert(
    conn: &impl ConnectionTrait,
    owner: &str,
    application: &str,
    git_ref: &str,
    description: &str,
    now_ms: i64,
    log_limit: u64,
) -> Result<deployment::Model, StoreError> {
    let row = deployment::ActiveModel {
        owner: Set(owner.to_owned()),
        application: Set(application.to_owned()),
        git_ref: Set(git_ref.to_owned()),
        description: Set(description.to_owned()),
        status: Set(state_name(herald_proto::v1::DeploymentState::Pending).to_owned()),
        stage: Set(stage_name(herald_proto::v1::DeploymentStage::Unspecified).to_owned()),
        progress: Set(0),
        message: Set(String::new()),
        error_message: Set(String::new()),
        exit_code: Set(None),
        worker: Set(None),
        cancelled_by: Set(None),
        created_at_ms: Set(now_ms),
        started_at_ms: Set(None),
        finished_at_ms: Set(None),
        log_lines: Set(0),
        log_limit: Set(to_i64(log_limit)),
        log_dropped_from: Set(0),
        log_dropped_to: Set(0),
        ..Default::default()
    };
    Ok(deployment::Entity::insert(row)
        .exec_with_returning(conn)
        .await?)
}

/// Reads a deployment's row.
pub async fn find(
    conn: &impl ConnectionTrait,
    id: DeploymentId,
) -> Result<Option<deployment::Model>, StoreError> {
    Ok(deployment::Entity::find_by_id(id.as_i64())
        .one(conn)
        .await?)
}

/// Reads a deployment's row and locks it until the transaction ends (PostgreSQL; SQLite has
/// one writer at a time anyway), so commands on one deployment apply one after the other.
pub async fn find_for_update(
    conn: &impl ConnectionTrait,
    id: DeploymentId,
) -> Result<Option<deployment::Model>, StoreError> {
    Ok(deployment::Entity::find_by_id(id.as_i64())
        .lock_exclusive()
        .one(conn)
        .await?)
}

/// Writes the rules' new state over the row.
pub async fn save(
    conn: &impl ConnectionTrait,
    row: deployment::Model,
    state: &Deployment,
) -> Result<deployment::Model, StoreError> {
    let (dropped_from, dropped_to) = state.log.dropped.unwrap_or((0, 0));
    let mut active: deployment::ActiveModel = row.into();
    active.status = Set(state_name(state.status).to_owned());
    active.stage = Set(stage_name(state.stage).to_owned());
    active.progress = Set(i32::try_from(state.progress).unwrap_or(100));
    active.message = Set(state.message.clone());
    active.error_message = Set(state.error_message.clone());
    active.exit_code = Set(state.exit_code);
    active.worker = Set(state.worker.clone());
    active.cancelled_by = Set(state.cancelled_by.clone());
    active.started_at_ms = Set(state.started_at_ms);
    active.finished_at_ms = Set(state.finished_at_ms);
    active.log_lines = Set(to_i64(state.log.lines));
    active.log_dropped_from = Set(to_i64(dropped_from));
    active.log_dropped_to = Set(to_i64(dropped_to));
    Ok(deployment::Entity::update(active).exec(conn).await?)
}

/// One page of deployments, newest first: the owner's (or everyone's with `owner = None`),
/// of one application or all, with ids below `before`.
pub async fn list(
    conn: &impl ConnectionTrait,
    owner: Option<&str>,
    application: Option<&str>,
    before: Option<DeploymentId>,
    limit: u64,
) -> Result<Vec<deployment::Model>, StoreError> {
    let mut query = deployment::Entity::find();
    if let Some(owner) = owner {
        query = query.filter(deployment::Column::Owner.eq(owner));
    }
    if let Some(application) = application {
        query = query.filter(deployment::Column::Application.eq(application));
    }
    if let Some(before) = before {
        query = query.filter(deployment::Column::Id.lt(before.as_i64()));
    }
    Ok(query
        .order_by_desc(deployment::Column::Id)
        .limit(limit)
        .all(conn)
        .await?)
}

/// Records where a chunk of lines landed.
pub async fn insert_chunk(
    conn: &impl ConnectionTrait,
    id: DeploymentId,
    first: u64,
    last: u64,
    topic_seq: i64,
) -> Result<(), StoreError> {
    log_chunk::Entity::insert(log_chunk::ActiveModel {
        deployment_id: Set(id.as_i64()),
        first_line: Set(to_i64(first)),
        last_line: Set(to_i64(last)),
        topic_seq: Set(topic_seq),
    })
    .exec_without_returning(conn)
    .await?;
    Ok(())
}

/// The offset of the chunk holding line `number` (the first chunk ending at or after it).
pub async fn chunk_offset_of_line(
    conn: &impl ConnectionTrait,
    id: DeploymentId,
    number: u64,
) -> Result<Option<u64>, StoreError> {
    let row = log_chunk::Entity::find()
        .filter(log_chunk::Column::DeploymentId.eq(id.as_i64()))
        .filter(log_chunk::Column::LastLine.gte(to_i64(number)))
        .order_by_asc(log_chunk::Column::LastLine)
        .one(conn)
        .await?;
    Ok(row.map(|row| to_u64(row.topic_seq)))
}

/// The chunks holding any line in `first..=last`, oldest first.
pub async fn chunks_overlapping(
    conn: &impl ConnectionTrait,
    id: DeploymentId,
    first: u64,
    last: u64,
) -> Result<Vec<log_chunk::Model>, StoreError> {
    Ok(log_chunk::Entity::find()
        .filter(log_chunk::Column::DeploymentId.eq(id.as_i64()))
        .filter(log_chunk::Column::LastLine.gte(to_i64(first)))
        .filter(log_chunk::Column::FirstLine.lte(to_i64(last)))
        .order_by_asc(log_chunk::Column::FirstLine)
        .all(conn)
        .await?)
}

/// The offset of the outbox row with id `outbox_id` (an event this transaction just wrote).
pub async fn offset_of_event(
    conn: &impl ConnectionTrait,
    outbox_id: i64,
) -> Result<i64, StoreError> {
    let seq: Option<i64> = outbox::Entity::find_by_id(outbox_id)
        .select_only()
        .column(outbox::Column::TopicSeq)
        .into_tuple()
        .one(conn)
        .await?;
    seq.ok_or_else(|| StoreError::Invalid(format!("outbox row {outbox_id} vanished")))
}

/// The stored logs body of one event of `topic`.
pub async fn logs_body(
    conn: &impl ConnectionTrait,
    topic: &Topic,
    topic_seq: i64,
) -> Result<Option<DeploymentLogs>, StoreError> {
    let body: Option<Option<Vec<u8>>> = outbox::Entity::find()
        .select_only()
        .column(outbox::Column::Body)
        .filter(outbox::Column::Topic.eq(topic.as_str()))
        .filter(outbox::Column::TopicSeq.eq(topic_seq))
        .into_tuple()
        .one(conn)
        .await?;
    let Some(Some(body)) = body else {
        return Ok(None);
    };
    Ok(match Event::decode(body.as_slice()) {
        Ok(Event {
            body: Some(Body::DeploymentLogs(logs)),
            ..
        }) => Some(logs),
        _ => None,
    })
}

/// Replaces the stored body of one event of `topic` (truncation rewrites old chunks; the
/// event keeps its offset, so history has no holes).
pub async fn replace_body(
    conn: &impl ConnectionTrait,
    topic: &Topic,
    topic_seq: i64,
    body: &Event,
) -> Result<(), StoreError> {
    outbox::Entity::update_many()
        .col_expr(outbox::Column::Body, Expr::value(body.encode_to_vec()))
        .filter(outbox::Column::Topic.eq(topic.as_str()))
        .filter(outbox::Column::TopicSeq.eq(topic_seq))
        .exec(conn)
        .await?;
    Ok(())
}

/// Whether `user_id` owns deployment `id` (for the policy's membership facts).
pub async fn is_owner(
    conn: &impl ConnectionTrait,
    id: DeploymentId,
    user_id: &str,
) -> Result<bool, StoreError> {
    let owner: Option<String> = deployment::Entity::find_by_id(id.as_i64())
        .select_only()
        .column(deployment::Column::Owner)
        .into_tuple()
        .one(conn)
        .await?;
    Ok(owner.as_deref() == Some(user_id))
}
