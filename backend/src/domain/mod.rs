//! Domain services: the business rules of each job, one folder per job, no tonic imports.
//! Each has `rules.rs` (pure, tested without a database), `queries.rs` (sea-orm reads and
//! writes on the caller's transaction), `events.rs` (topics, event types, typed bodies) and
//! `mod.rs` (every command: begin → load → authorize → decide → save → emit → commit).

pub mod inbox;
pub mod reviews;
