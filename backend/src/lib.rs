//! The Herald backend: a tonic gRPC server holding all of Herald's logic, as a library. The
//! `herald` binary (`cli/`, crate `herald-cli`) composes it with the browser edge, which this
//! crate knows nothing about; the close-code rules, trailer names and the small shared
//! helpers come from `herald_proto` ([`herald_proto::codes`], [`herald_proto::support`]).
//!
//! How the modules fit (dependencies point inward, to the core):
//!
//! ```text
//!  grpc::rooms ──► node ──► authz (policy)        transport: parse, call the node, map errors
//!                   │  ├──► broker (offsets, history, cross-node fan-out) ──► hub
//!                   │  ├──► presence
//!                   │  └──► subscription (EventStream: replay + live, ends with a CloseCode)
//!  auth (interceptor: JWT → Principal)   error (the one Error → Status mapping)
//!  topic (parse `kind:id` once)          config (the file minus `[edge]`), server (assembly)
//!  store (domain transactions + outbox) ──► store::relay ──► broker   (durable events)
//! ```
//!
//! Start with [`server::run`]: it binds nothing itself; callers pass a listener (tests bind
//! port 0) and a cancellation token for shutdown.

pub mod auth;
pub mod authz;
pub mod broker;
pub mod config;
pub mod error;
pub mod event;
pub mod grpc;
pub mod hub;
pub mod node;
pub mod presence;
pub mod server;
pub mod store;
pub mod subscription;
pub mod topic;

pub use config::Config;
pub use server::{Backend, ServeError, run};
