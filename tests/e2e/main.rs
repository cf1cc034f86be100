//! End-to-end tests: each starts a real backend on port 0 and talks to it over gRPC.

mod abuse;
mod admin;
mod auth;
mod broker_bounds;
mod chat;
mod cluster;
mod delivery;
mod deployments;
mod durable;
mod durable_publish_bounds;
mod edge;
mod edge_replay;
mod faults;
mod hostile;
mod lifecycle;
mod metrics;
mod notifications;
mod orders;
mod outbox;
mod presence;
mod rates;
mod resume;
mod reviews;
mod sdk;
mod signals;
mod validation;
