//! sea-orm entities of the outbox tables (the schema itself lives in `migrations/`).

/// `outbox`: one row per durable event, from its transaction's commit until retention purges
/// it: the durable topics' history of record. Written once, never updated; what the relay
/// has yet to hand over is in [`outbox_pending`].
pub mod outbox {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "outbox")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        pub topic: String,
        /// The event's offset: 1, 2, 3… per topic in commit order (see `outbox_topic`).
        pub topic_seq: i64,
        pub event_type: String,
        /// The event data as a JSON object.
        #[sea_orm(column_type = "Text")]
        pub data: String,
        pub publisher: String,
        pub created_at_ms: i64,
        /// The event's id (UUIDv7), fixed at commit. Absent only on rows written before
        /// durable topics, whose id is derived from the row id.
        pub event_id: Option<String>,
        /// A typed body: an encoded `herald.v1.Event` carrying only its typed `body` fields,
        /// merged into the event when it is read. `None` for events with JSON `data` only.
        pub body: Option<Vec<u8>>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// `outbox_pending`: the relay's queue, the ids of committed `outbox` rows not yet handed to
/// the broker. Inserted with the row, deleted once relayed: one narrow row per event instead
/// of a second version of the whole event.
pub mod outbox_pending {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "outbox_pending")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// `outbox_topic`: the last offset handed out per durable topic, and its epoch. Its row lock,
/// held from a transaction's first event on the topic to its commit, orders the topic's
/// writers, which is what makes offsets gapless in commit order.
pub mod outbox_topic {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "outbox_topic")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub topic: String,
        pub last_seq: i64,
        /// The topic's epoch: stored, so it survives restarts.
        pub epoch: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// `publish_key`: the idempotency keys of durable publishes, per (topic, publisher, key).
pub mod publish_key {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "publish_key")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub topic: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub publisher: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub key: String,
        pub offset: i64,
        pub event_id: String,
        pub created_at_ms: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}
