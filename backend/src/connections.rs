//! Who is connected to this backend, for `herald.v1.Admin`: every open `Rooms/Subscribe`
//! stream and every socket subscription an edge attached to a follow stream, by user.
//!
//! An entry is registered when the stream or attachment starts and removed when its
//! [`Registration`] drops, so the registry holds exactly what is open. Each entry knows how to
//! end itself: a gRPC stream watches a cancellation token, an edge's attachment is detached by
//! its follow task (which tells the edge, which closes the socket). Nothing on the delivery
//! path reads the registry.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::SystemTime,
};

use herald_proto::support::lock;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::topic::Topic;

/// How a user is connected.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Transport {
    /// A `Rooms/Subscribe` stream.
    Grpc,
    /// A socket of an edge: the edge's principal and the socket's id on it.
    Edge { edge: Arc<str>, socket: u64 },
}

/// How an entry is ended.
#[derive(Debug, Clone)]
pub enum Kill {
    /// A gRPC stream ends when this is cancelled.
    Stream(CancellationToken),
    /// The follow task detaches `subscriber` when it receives it.
    Follow {
        tx: mpsc::UnboundedSender<u64>,
        subscriber: u64,
    },
}

#[derive(Debug)]
struct Entry {
    transport: Transport,
    topic: Topic,
    connected_at: SystemTime,
    kill: Kill,
}

/// One connection of a user: its streams grouped by transport (and socket).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionInfo {
    pub transport: Transport,
    pub connected_at: SystemTime,
    pub subscriptions: u32,
}

/// The registry (see the module docs).
#[derive(Debug, Default)]
pub struct Connections {
    users: Mutex<HashMap<String, HashMap<u64, Entry>>>,
    next: AtomicU64,
}

impl Connections {
    pub fn new() -> Arc<Connections> {
        Arc::new(Connections::default())
    }

    /// Registers an open stream of `user_id`; dropping the registration removes it.
    pub fn register(
        self: &Arc<Self>,
        user_id: &str,
        topic: &Topic,
        transport: Transport,
        kill: Kill,
    ) -> Registration {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let entry = Entry {
            transport,
            topic: topic.clone(),
            connected_at: SystemTime::now(),
            kill,
        };
        lock(&self.users)
            .entry(user_id.to_owned())
            .or_default()
            .insert(id, entry);
        Registration {
            connections: self.clone(),
            user_id: user_id.to_owned(),
            id,
        }
    }

    /// Ends every open stream of `user_id`; returns how many.
    pub fn disconnect(&self, user_id: &str) -> usize {
        let kills: Vec<Kill> = lock(&self.users)
            .get(user_id)
            .map(|entries| entries.values().map(|entry| entry.kill.clone()).collect())
            .unwrap_or_default();
        for kill in &kills {
            match kill {
                Kill::Stream(token) => token.cancel(),
                Kill::Follow { tx, subscriber } => {
                    let _ = tx.send(*subscriber);
                }
            }
        }
        kills.len()
    }

    /// The connections of `user_id`, oldest first, at most `limit`.
    pub fn list(&self, user_id: &str, limit: usize) -> Vec<ConnectionInfo> {
        let users = lock(&self.users);
        let Some(entries) = users.get(user_id) else {
            return Vec::new();
        };
        let mut grouped: HashMap<(&Transport, u64), ConnectionInfo> = HashMap::new();
        for (id, entry) in entries {
            // A gRPC stream is a connection of its own; an edge's socket groups its
            // subscriptions (socket 0, an edge that does not say: one per subscription).
            let apart = match entry.transport {
                Transport::Grpc | Transport::Edge { socket: 0, .. } => *id,
                Transport::Edge { .. } => 0,
            };
            let info = grouped
                .entry((&entry.transport, apart))
                .or_insert_with(|| ConnectionInfo {
                    transport: entry.transport.clone(),
                    connected_at: entry.connected_at,
                    subscriptions: 0,
                });
            info.subscriptions += 1;
            info.connected_at = info.connected_at.min(entry.connected_at);
        }
        let mut list: Vec<ConnectionInfo> = grouped.into_values().collect();
        list.sort_by_key(|info| info.connected_at);
        list.truncate(limit);
        list
    }

    /// Open streams of `topic` on this backend (gRPC streams and edges' attachments).
    pub fn subscribers(&self, topic: &Topic) -> usize {
        lock(&self.users)
            .values()
            .flat_map(HashMap::values)
            .filter(|entry| entry.topic == *topic)
            .count()
    }

    fn remove(&self, user_id: &str, id: u64) {
        let mut users = lock(&self.users);
        if let Some(entries) = users.get_mut(user_id) {
            entries.remove(&id);
            if entries.is_empty() {
                users.remove(user_id);
            }
        }
    }
}

/// An entry of the registry, removed on drop.
#[derive(Debug)]
pub struct Registration {
    connections: Arc<Connections>,
    user_id: String,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.connections.remove(&self.user_id, self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_groups_its_subscriptions_and_disconnect_ends_every_stream() {
        let connections = Connections::new();
        let room = Topic::parse("room:a").unwrap();
        let other = Topic::parse("room:b").unwrap();
        let token = CancellationToken::new();
        let _grpc =
            connections.register("alice", &room, Transport::Grpc, Kill::Stream(token.clone()));
        let (tx, mut rx) = mpsc::unbounded_channel();
        let socket = Transport::Edge {
            edge: Arc::from("edge-1"),
            socket: 7,
        };
        let _a = connections.register(
            "alice",
            &room,
            socket.clone(),
            Kill::Follow {
                tx: tx.clone(),
                subscriber: 1,
            },
        );
        let b = connections.register(
            "alice",
            &other,
            socket.clone(),
            Kill::Follow { tx, subscriber: 2 },
        );
        let list = connections.list("alice", 100);
        assert_eq!(list.len(), 2);
        assert_eq!(
            list.iter()
                .find(|info| info.transport == socket)
                .unwrap()
                .subscriptions,
            2
        );
        assert_eq!(connections.subscribers(&room), 2);
        assert_eq!(connections.disconnect("alice"), 3);
        assert!(token.is_cancelled());
        let mut detached = vec![rx.try_recv().unwrap(), rx.try_recv().unwrap()];
        detached.sort_unstable();
        assert_eq!(detached, vec![1, 2]);
        assert_eq!(connections.disconnect("bob"), 0);
        drop(b);
        assert_eq!(connections.subscribers(&other), 0);
    }
}
