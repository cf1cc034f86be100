//! gRPC services: thin adapters that parse requests into core types, call the [`Node`], and
//! map errors through [`crate::error`].
//!
//! [`Node`]: crate::node::Node

pub mod admin;
pub mod auth;
pub mod chat;
pub mod deployments;
pub mod edge;
pub mod inbox;
pub mod orders;
pub mod reviews;
pub mod rooms;
pub mod write_rate;
