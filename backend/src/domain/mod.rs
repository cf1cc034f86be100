//! Domain services: business rules, one folder per job, no transport code. Each writes rows
//! and events in one [`crate::store::DomainTx`], reads with [`crate::store::ReadSnapshot`],
//! asks [`crate::authz::Policy`] who may read, and reaches subscribers only through the
//! node's publish and attach API (see the rule in the crate docs).

pub mod deployments;
