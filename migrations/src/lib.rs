//! Every schema change of Herald, in order. The same migrations run on SQLite and
//! PostgreSQL; `herald serve` applies them at start.

pub use sea_orm_migration::{migrator::MigrationStatus, prelude::*};

mod m20261122_000001_create_server_meta;
mod m20261122_000002_create_outbox;
mod m20261201_000003_durable_topics;
mod m20261201_000010_deployment;
mod m20261201_000011_deployment_log_chunk;
mod m20261201_000020_notification;
mod m20261201_000021_notification_user;
mod m20261201_000022_notification_mention;
mod m20261201_000023_review_request;
mod m20261201_000024_review_decision;
mod m20261201_000025_review_queue;
mod m20261201_000030_shop_order;
mod m20261201_000031_order_payment;
mod m20261201_000032_order_location;
mod m20261201_000033_shop_status;
mod m20261201_000034_shop_courier;
mod m20261201_000035_shop_offer;
mod m20261201_000060_chat_group;
mod m20261201_000061_chat_group_member;
mod m20261201_000062_chat_conversation;
mod m20261201_000063_chat_conv_member;
mod m20261201_000064_chat_message;
mod m20261201_000065_chat_reaction;
mod m20261201_000070_outbox_autovacuum;
mod m20261201_000090_admin_audit;
mod m20261203_000100_outbox_pending;
mod m20261204_000110_outbox_pending_no_truncate;

pub use m20261201_000003_durable_topics::DURABLE_EPOCH_KEY;

/// Migrations that change nothing on SQLite (PostgreSQL storage settings).
pub const POSTGRES_ONLY: &[&str] = &[
    "m20261201_000070_outbox_autovacuum",
    "m20261204_000110_outbox_pending_no_truncate",
];

/// The ordered list of migrations.
#[derive(Debug)]
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261122_000001_create_server_meta::Migration),
            Box::new(m20261122_000002_create_outbox::Migration),
            Box::new(m20261201_000003_durable_topics::Migration),
            Box::new(m20261201_000010_deployment::Migration),
            Box::new(m20261201_000011_deployment_log_chunk::Migration),
            Box::new(m20261201_000020_notification::Migration),
            Box::new(m20261201_000021_notification_user::Migration),
            Box::new(m20261201_000022_notification_mention::Migration),
            Box::new(m20261201_000023_review_request::Migration),
            Box::new(m20261201_000024_review_decision::Migration),
            Box::new(m20261201_000025_review_queue::Migration),
            Box::new(m20261201_000030_shop_order::Migration),
            Box::new(m20261201_000031_order_payment::Migration),
            Box::new(m20261201_000032_order_location::Migration),
            Box::new(m20261201_000033_shop_status::Migration),
            Box::new(m20261201_000034_shop_courier::Migration),
            Box::new(m20261201_000035_shop_offer::Migration),
            Box::new(m20261201_000060_chat_group::Migration),
            Box::new(m20261201_000061_chat_group_member::Migration),
            Box::new(m20261201_000062_chat_conversation::Migration),
            Box::new(m20261201_000063_chat_conv_member::Migration),
            Box::new(m20261201_000064_chat_message::Migration),
            Box::new(m20261201_000065_chat_reaction::Migration),
            Box::new(m20261201_000070_outbox_autovacuum::Migration),
            Box::new(m20261201_000090_admin_audit::Migration),
            Box::new(m20261203_000100_outbox_pending::Migration),
            Box::new(m20261204_000110_outbox_pending_no_truncate::Migration),
        ]
    }
}
