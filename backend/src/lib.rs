//! The Herald backend: a tonic gRPC server holding all of Herald's logic, as a library. The
//! `herald` binary (`cli/`, crate `herald-cli`) composes it with the browser edge, which this
//! crate knows nothing about; the close-code rules, trailer names and the small shared
//! helpers come from `herald_proto` ([`herald_proto::codes`], [`herald_proto::support`]).
//!
//! How the modules fit (dependencies point inward, to the core; no module imports form a
//! cycle):
//!
//! ```text
//!  grpc::{rooms, edge, auth}   transport: parse, call, map errors (error: the one Status mapping)
//!     │         └──► publish ── routes a publish by lane: memory → node, durable → store
//!     ▼
//!  node ──► authz (policy)   lanes (which kinds are durable)   signals (ephemeral lane)
//!   │  ├──► history ──► broker (memory offsets, durable cache, fan-out) ──► hub
//!   │  │       └──────► EventLog (trait; the database implements it)
//!   │  ├──► presence (store + notifier)
//!   │  └──► subscription (EventStream) ──► cursor (LiveCursor: deliver, skip, fill, end)
//!  store (DomainTx, snapshots, the EventLog, retention) ──► store::relay ──► broker
//!  auth (interceptor: JWT → Principal)   topic, event (parsed once)   config, server (assembly)
//!
//!  grpc::inbox ──► domain::inbox ──► store (DomainTx, ReadSnapshot)   clock (the rules' `now`)
//!  grpc::orders ──► domain::orders ──► store, node (Watch's subscription; courier fixes as signals)
//! ```
//!
//! **Rule for domain services** (reviews, inbox, orders, chat, deployments): they add nothing
//! to [`node::Node`]. They write rows and events in one [`store::DomainTx`], read with
//! [`store::ReadSnapshot`] (rows + position), ask [`authz::Policy`] who may do what, and
//! reach subscribers only through the publish and attach API the node already has.
//!
//! Start with [`server::run`]: it binds nothing itself; callers pass a listener (tests bind
//! port 0) and a cancellation token for shutdown.

pub mod admin_audit;
pub mod auth;
pub mod authz;
pub mod broker;
pub mod clock;
pub mod config;
pub mod connections;
pub mod cursor;
pub mod domain;
pub mod error;
pub mod event;
pub mod grpc;
pub mod history;
pub mod hub;
pub mod lanes;
pub mod metrics;
pub mod node;
pub mod presence;
pub mod publish;
pub mod server;
pub mod signals;
pub mod store;
pub mod subscription;
pub mod topic;

pub use config::Config;
pub use server::{Backend, ServeError, run};
