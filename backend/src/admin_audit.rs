//! The audit log of `herald.v1.Admin`: one `admin_audit` row per action (the schema lives in
//! `migrations/`), plus a structured log line. Ids only, never a token.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sea_orm::{ActiveModelTrait, ActiveValue::Set, EntityTrait, QueryOrder, QuerySelect};

use crate::store::{Store, StoreError};

pub mod entity {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "admin_audit")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        pub at_ms: i64,
        pub actor: String,
        pub action: String,
        pub target: String,
        #[sea_orm(column_type = "Text")]
        pub detail: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// One admin action, as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    pub at: SystemTime,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub detail: serde_json::Value,
}

/// Writes `entry` to the table and the log.
pub async fn record(store: &Store, entry: &AuditEntry) -> Result<(), StoreError> {
    let detail = entry.detail.to_string();
    tracing::info!(
        actor = %entry.actor,
        action = %entry.action,
        target = %entry.target,
        detail = %detail,
        "admin action"
    );
    let at_ms = entry
        .at
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    entity::ActiveModel {
        at_ms: Set(at_ms),
        actor: Set(entry.actor.clone()),
        action: Set(entry.action.clone()),
        target: Set(entry.target.clone()),
        detail: Set(detail),
        ..Default::default()
    }
    .insert(store.db())
    .await?;
    Ok(())
}

/// The newest `limit` entries, newest first.
pub async fn newest(store: &Store, limit: u64) -> Result<Vec<AuditEntry>, StoreError> {
    let rows = entity::Entity::find()
        .order_by_desc(entity::Column::Id)
        .limit(limit)
        .all(store.db())
        .await?;
    Ok(rows
        .into_iter()
        .map(|row| AuditEntry {
            at: UNIX_EPOCH + Duration::from_millis(u64::try_from(row.at_ms).unwrap_or_default()),
            actor: row.actor,
            action: row.action,
            target: row.target,
            detail: serde_json::from_str(&row.detail).unwrap_or_default(),
        })
        .collect())
}
