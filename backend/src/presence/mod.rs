//! Presence: which users are subscribed to a topic right now.
//!
//! Presence counts users, not connections: a user with three tabs is one member with
//! `connections = 3`. A join is reported when a user's first subscription begins and a leave
//! when its last one ends; the node turns those into ephemeral `PresenceChange` pushes for
//! topic kinds configured to carry them. Services are not people and are never members.
//! [`Online`] counts a user's streams over every topic: online while any is open.

#[cfg(test)]
mod conformance;
pub mod memory;
mod notifier;
pub mod online;
pub mod redis;

pub use notifier::{Coalescing, PresenceGuard, PresenceNotifier};
pub use online::{Online, OnlineChange, OnlineDirectory, OnlineFeed};

use std::{fmt::Debug, sync::Arc};

use async_trait::async_trait;
use herald_proto::v1::PresenceMember;

use crate::{broker::BrokerError, topic::Topic};

/// Identifies one subscription for presence bookkeeping; unique per node and process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnectionId(pub u64);

/// The contract of a presence store.
///
/// - `join` and `leave` for one connection are called once each, in that order.
/// - `join` returns the member when this is the user's first connection on the topic (a
///   join to announce); `leave` returns it when this was the user's last (a leave).
/// - `members` lists each present user once, with its connection count and the time its
///   first current connection began.
#[async_trait]
pub trait Presence: Send + Sync + Debug + 'static {
    async fn join(
        &self,
        topic: &Topic,
        user_id: &str,
        connection: ConnectionId,
    ) -> Result<Option<PresenceMember>, BrokerError>;

    async fn leave(
        &self,
        topic: &Topic,
        user_id: &str,
        connection: ConnectionId,
    ) -> Result<Option<PresenceMember>, BrokerError>;

    async fn members(&self, topic: &Topic) -> Result<Vec<PresenceMember>, BrokerError>;

    /// Where this store's nodes record who is online, when it is shared by several nodes
    /// (see [`online`]); `None`: this node's own count is the whole truth.
    fn online_directory(&self) -> Option<Arc<dyn OnlineDirectory>> {
        None
    }
}
