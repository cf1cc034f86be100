//! The review queue's tables (sea-orm entities; the schema is in `migrations/`) and every
//! read and write on them, each on the caller's transaction or snapshot.
//!
//! - `review_request`: one row per request; `status` pending → approved | rejected.
//! - `review_decision`: the audit trail, one row per decision (unique per request and
//!   reviewer).
//! - `review_queue`: one row per reviewer role, locked first by every write to the role's
//!   queue ([`lock_queue`]), so the pending count each event carries reflects every change
//!   before it, and of two reviewers deciding at once the second sees the first's decision.

use std::collections::HashMap;

use sea_orm::{
    ActiveValue::Set,
    ColumnTrait, Condition, ConnectionTrait, DbErr, EntityTrait, IntoActiveModel, PaginatorTrait,
    QueryFilter, QueryOrder, QuerySelect,
    sea_query::{Expr, ExprTrait, OnConflict},
};

use super::rules::{Decision, Review, Status, Verdict};
use crate::domain::inbox::rules::Cursor;

pub mod review_request {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "review_request")]
    pub struct Model {
        /// A UUIDv7.
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub applicant_name: String,
        /// Personal data: shown to reviewers, never logged.
        pub applicant_email: String,
        pub applicant_phone: Option<String>,
        pub applicant_user_id: Option<String>,
        pub requested_role: String,
        /// JSON object text.
        #[sea_orm(column_type = "Text", nullable)]
        pub details: Option<String>,
        pub reviewer_role: String,
        pub required_approvals: i32,
        /// `rules::Status::as_str`.
        pub status: String,
        pub submitted_by: String,
        pub created_at_ms: i64,
        pub decided_at_ms: Option<i64>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod review_decision {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "review_decision")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        pub review_id: String,
        pub reviewer_id: String,
        /// `rules::Verdict::as_str`.
        pub verdict: String,
        #[sea_orm(column_type = "Text", nullable)]
        pub reason: Option<String>,
        pub decided_at_ms: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod review_queue {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "review_queue")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub reviewer_role: String,
        /// Bumped by every write to the queue: the write takes this row's lock.
        pub version: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Takes the write lock of a reviewer role's queue (creating its row if needed).
pub async fn lock_queue(conn: &impl ConnectionTrait, role: &str) -> Result<(), DbErr> {
    use review_queue::{ActiveModel, Column, Entity};
    Entity::insert(ActiveModel {
        reviewer_role: Set(role.to_owned()),
        version: Set(1),
    })
    .on_conflict(
        OnConflict::column(Column::ReviewerRole)
            .value(Column::Version, Expr::col((Entity, Column::Version)).add(1))
            .to_owned(),
    )
    .exec_without_returning(conn)
    .await?;
    Ok(())
}

pub async fn insert_request(
    conn: &impl ConnectionTrait,
    row: review_request::Model,
) -> Result<(), DbErr> {
    review_request::Entity::insert(row.into_active_model())
        .exec_without_returning(conn)
        .await?;
    Ok(())
}

pub async fn find(
    conn: &impl ConnectionTrait,
    id: &str,
) -> Result<Option<review_request::Model>, DbErr> {
    review_request::Entity::find_by_id(id).one(conn).await
}

/// The decisions on each of `ids`, oldest first.
pub async fn decisions_of(
    conn: &impl ConnectionTrait,
    ids: &[String],
) -> Result<HashMap<String, Vec<review_decision::Model>>, DbErr> {
    use review_decision::{Column, Entity};
    let mut by_review: HashMap<String, Vec<review_decision::Model>> = HashMap::new();
    if ids.is_empty() {
        return Ok(by_review);
    }
    let rows = Entity::find()
        .filter(Column::ReviewId.is_in(ids.iter().cloned()))
        .order_by_asc(Column::Id)
        .all(conn)
        .await?;
    for row in rows {
        by_review
            .entry(row.review_id.clone())
            .or_default()
            .push(row);
    }
    Ok(by_review)
}

pub async fn insert_decision(
    conn: &impl ConnectionTrait,
    review_id: &str,
    decision: &Decision,
) -> Result<review_decision::Model, DbErr> {
    use review_decision::ActiveModel;
    review_decision::Entity::insert(ActiveModel {
        review_id: Set(review_id.to_owned()),
        reviewer_id: Set(decision.reviewer_id.clone()),
        verdict: Set(decision.verdict.as_str().to_owned()),
        reason: Set(decision.reason.clone()),
        decided_at_ms: Set(decision.at_ms),
        ..ActiveModel::default()
    })
    .exec_with_returning(conn)
    .await
}

pub async fn set_status(
    conn: &impl ConnectionTrait,
    id: &str,
    status: Status,
    decided_at_ms: Option<i64>,
) -> Result<(), DbErr> {
    use review_request::{Column, Entity};
    Entity::update_many()
        .col_expr(Column::Status, Expr::value(status.as_str()))
        .col_expr(Column::DecidedAtMs, Expr::value(decided_at_ms))
        .filter(Column::Id.eq(id))
        .exec(conn)
        .await?;
    Ok(())
}

/// How many requests of `role` are pending.
pub async fn pending_count(conn: &impl ConnectionTrait, role: &str) -> Result<u64, DbErr> {
    use review_request::{Column, Entity};
    Entity::find()
        .filter(Column::ReviewerRole.eq(role))
        .filter(Column::Status.eq(Status::Pending.as_str()))
        .count(conn)
        .await
}

/// One page of `role`'s pending requests, oldest first; one row more when there is a next
/// page.
pub async fn pending_page(
    conn: &impl ConnectionTrait,
    role: &str,
    after: Option<&Cursor>,
    limit: usize,
) -> Result<Vec<review_request::Model>, DbErr> {
    use review_request::{Column, Entity};
    let mut select = Entity::find()
        .filter(Column::ReviewerRole.eq(role))
        .filter(Column::Status.eq(Status::Pending.as_str()));
    if let Some(Cursor { created_at, id }) = after {
        select = select.filter(
            Condition::any()
                .add(Column::CreatedAtMs.gt(*created_at))
                .add(
                    Condition::all()
                        .add(Column::CreatedAtMs.eq(*created_at))
                        .add(Column::Id.gt(id.as_str())),
                ),
        );
    }
    select
        .order_by_asc(Column::CreatedAtMs)
        .order_by_asc(Column::Id)
        .limit(u64::try_from(limit).unwrap_or(u64::MAX) + 1)
        .all(conn)
        .await
}

/// One page of decisions, newest first, before the decision id `before`; one row more when
/// there is a next page.
pub async fn decisions_page(
    conn: &impl ConnectionTrait,
    review_id: Option<&str>,
    reviewer_id: Option<&str>,
    before: Option<i64>,
    limit: usize,
) -> Result<Vec<review_decision::Model>, DbErr> {
    use review_decision::{Column, Entity};
    let mut select = Entity::find();
    if let Some(review) = review_id {
        select = select.filter(Column::ReviewId.eq(review));
    }
    if let Some(reviewer) = reviewer_id {
        select = select.filter(Column::ReviewerId.eq(reviewer));
    }
    if let Some(before) = before {
        select = select.filter(Column::Id.lt(before));
    }
    select
        .order_by_desc(Column::Id)
        .limit(u64::try_from(limit).unwrap_or(u64::MAX) + 1)
        .all(conn)
        .await
}

pub fn decision_of(row: &review_decision::Model) -> Decision {
    Decision {
        reviewer_id: row.reviewer_id.clone(),
        verdict: Verdict::parse(&row.verdict).unwrap_or(Verdict::Reject),
        reason: row.reason.clone(),
        at_ms: row.decided_at_ms,
    }
}

/// What the rules need of a stored request.
pub fn review_of(row: &review_request::Model, decisions: &[review_decision::Model]) -> Review {
    Review {
        status: Status::parse(&row.status).unwrap_or(Status::Pending),
        required_approvals: u32::try_from(row.required_approvals).unwrap_or(1),
        applicant_user_id: row.applicant_user_id.clone(),
        decisions: decisions.iter().map(decision_of).collect(),
        decided_at_ms: row.decided_at_ms,
    }
}
