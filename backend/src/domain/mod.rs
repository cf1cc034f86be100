//! Domain services: business rules, one folder per job, no transport code. Each writes rows
//! and events in one [`crate::store::DomainTx`], reads with [`crate::store::ReadSnapshot`],
//! asks [`crate::authz::Policy`] who may read, and reaches subscribers only through the
//! node's publish and attach API (see the rule in the crate docs). Each has `rules.rs` (pure,
//! tested without a database), `queries.rs` (sea-orm reads and writes on the caller's
//! transaction), `events.rs` (topics, event types, typed bodies) and `mod.rs` (every
//! command: begin → load → authorize → decide → save → emit → commit).

pub mod chat;
pub mod deployments;
pub mod inbox;
pub mod orders;
pub mod reviews;
