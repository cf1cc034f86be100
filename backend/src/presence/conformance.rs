//! The presence checks every [`Presence`] implementation must pass, and the Redis one's own
//! (several nodes, a crashed node's members expiring).

use std::{sync::Arc, time::Duration};

use tokio_util::sync::CancellationToken;

use super::{ConnectionId, Presence, memory::MemoryPresence, redis::RedisPresence};
use crate::{broker::redis_server::RedisServer, topic::Topic};

const TTL: Duration = Duration::from_millis(600);

async fn both() -> (
    Vec<(&'static str, Arc<dyn Presence>)>,
    RedisServer,
    CancellationToken,
) {
    let redis = RedisServer::start().await;
    let shutdown = CancellationToken::new();
    let on_redis = RedisPresence::connect(&redis.url(), "herald", TTL, shutdown.clone())
        .await
        .unwrap();
    (
        vec![
            (
                "memory",
                Arc::new(MemoryPresence::new()) as Arc<dyn Presence>,
            ),
            ("redis", Arc::new(on_redis)),
        ],
        redis,
        shutdown,
    )
}

fn room() -> Topic {
    Topic::parse("room:a").unwrap()
}

#[tokio::test]
async fn a_user_joins_once_and_leaves_with_its_last_connection() {
    let (presences, _redis, shutdown) = both().await;
    let _stop = shutdown.drop_guard();
    for (name, presence) in presences {
        let first = presence
            .join(&room(), "alice", ConnectionId(1))
            .await
            .unwrap();
        assert_eq!(first.unwrap().connections, 1, "{name}");
        assert!(
            presence
                .join(&room(), "alice", ConnectionId(2))
                .await
                .unwrap()
                .is_none(),
            "{name}"
        );
        presence
            .join(&room(), "bob", ConnectionId(3))
            .await
            .unwrap();
        let members = presence.members(&room()).await.unwrap();
        let listed: Vec<(&str, u32)> = members
            .iter()
            .map(|m| (m.user_id.as_str(), m.connections))
            .collect();
        assert_eq!(listed, vec![("alice", 2), ("bob", 1)], "{name}");
        assert!(
            presence
                .leave(&room(), "alice", ConnectionId(1))
                .await
                .unwrap()
                .is_none(),
            "{name}"
        );
        let left = presence
            .leave(&room(), "alice", ConnectionId(2))
            .await
            .unwrap();
        assert_eq!(left.unwrap().user_id, "alice", "{name}");
        presence
            .leave(&room(), "bob", ConnectionId(3))
            .await
            .unwrap();
        assert!(
            presence.members(&room()).await.unwrap().is_empty(),
            "{name}"
        );
    }
}

#[tokio::test]
async fn redis_presence_is_shared_by_nodes_and_a_crashed_nodes_members_expire_within_the_ttl() {
    let redis = RedisServer::start().await;
    let (alive, crashed) = (CancellationToken::new(), CancellationToken::new());
    let _stop = alive.clone().drop_guard();
    let a = RedisPresence::connect(&redis.url(), "herald", TTL, alive.clone())
        .await
        .unwrap();
    let b = RedisPresence::connect(&redis.url(), "herald", TTL, crashed.clone())
        .await
        .unwrap();
    assert!(
        a.join(&room(), "alice", ConnectionId(1))
            .await
            .unwrap()
            .is_some()
    );
    // The same user on another node is a second connection, not a second join.
    assert!(
        b.join(&room(), "alice", ConnectionId(1))
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        b.join(&room(), "bob", ConnectionId(2))
            .await
            .unwrap()
            .is_some()
    );
    let members = a.members(&room()).await.unwrap();
    assert_eq!(members.len(), 2);
    assert_eq!(members[0].connections, 2);
    // Node b stops refreshing (it crashed); node a keeps refreshing past several TTLs.
    crashed.cancel();
    tokio::time::sleep(TTL * 3).await;
    let members = a.members(&room()).await.unwrap();
    let listed: Vec<(&str, u32)> = members
        .iter()
        .map(|m| (m.user_id.as_str(), m.connections))
        .collect();
    assert_eq!(
        listed,
        vec![("alice", 1)],
        "b's connections expired, a's were refreshed"
    );
}
