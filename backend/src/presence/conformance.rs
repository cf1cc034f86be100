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

async fn redis_node(redis: &RedisServer, shutdown: &CancellationToken) -> RedisPresence {
    RedisPresence::connect(&redis.url(), "herald", TTL, shutdown.clone())
        .await
        .unwrap()
}

#[tokio::test]
async fn the_online_directory_announces_each_user_once_for_the_whole_cluster() {
    use super::OnlineDirectory;

    let redis = RedisServer::start().await;
    let shutdown = CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    let one = redis_node(&redis, &shutdown).await;
    let two = redis_node(&redis, &shutdown).await;
    let users = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();

    assert!(
        one.arrived("alice").await.unwrap(),
        "the first node: online"
    );
    assert!(!two.arrived("alice").await.unwrap(), "already online");
    assert_eq!(
        two.online(&users(&["alice", "bob"])).await.unwrap(),
        [true, false]
    );
    assert!(!one.departed("alice").await.unwrap(), "still on node two");
    assert_eq!(one.online(&users(&["alice"])).await.unwrap(), [true]);
    assert!(
        two.departed("alice").await.unwrap(),
        "the last node: offline"
    );
    assert_eq!(one.online(&users(&["alice"])).await.unwrap(), [false]);

    // Node one records carol and then stops refreshing (it crashed); node two keeps dave.
    assert!(one.arrived("carol").await.unwrap());
    assert!(two.arrived("dave").await.unwrap());
    let until = tokio::time::Instant::now() + TTL * 2;
    let mut gone = Vec::new();
    while tokio::time::Instant::now() < until {
        gone.extend(two.refresh(&users(&["dave"])).await.unwrap());
        tokio::time::sleep(TTL / 6).await;
    }
    assert_eq!(gone, ["carol"], "carol is claimed once, dave never");
    assert!(two.refresh(&users(&["dave"])).await.unwrap().is_empty());
    assert_eq!(
        one.online(&users(&["carol", "dave"])).await.unwrap(),
        [false, true]
    );
}

/// The feed's next changes, or none within a while.
async fn next(feed: &super::OnlineFeed) -> Vec<super::OnlineChange> {
    tokio::time::timeout(TTL * 4, feed.next())
        .await
        .unwrap_or_default()
}

#[tokio::test]
async fn online_over_a_directory_is_announced_by_one_node_and_a_crashed_nodes_users_go_offline() {
    use super::{Online, OnlineChange};

    let redis = RedisServer::start().await;
    let shutdown = CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    let one = Online::with_directory(Arc::new(redis_node(&redis, &shutdown).await));
    let two = Online::with_directory(Arc::new(redis_node(&redis, &shutdown).await));
    let (feed_one, feed_two) = (one.feed(), two.feed());
    let states = |changes: Vec<OnlineChange>| {
        changes
            .into_iter()
            .map(|c| (c.user_id, c.online))
            .collect::<Vec<_>>()
    };

    one.opened("alice");
    assert_eq!(states(next(&feed_one).await), [("alice".into(), true)]);
    two.opened("alice");
    // Each node records its changes in its own time: wait until both have alice in Redis,
    // as they would have long before she closes one of them.
    let deadline = tokio::time::Instant::now() + TTL * 4;
    while redis.command(&["ZCARD", "herald:o:alice"]).await != redis::Value::Int(2) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "node two records alice"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    one.closed("alice");
    assert!(
        states(next(&feed_two).await).is_empty() && states(next(&feed_one).await).is_empty(),
        "alice is still online on node two: nobody announces anything"
    );
    assert_eq!(
        one.offline_among(&["alice".into()]).await,
        Vec::<String>::new()
    );
    two.closed("alice");
    assert_eq!(states(next(&feed_two).await), [("alice".into(), false)]);
    assert_eq!(one.offline_among(&["alice".into()]).await, ["alice"]);

    // Node three has carol and goes away without a word: node one announces her offline.
    let three = Online::with_directory(Arc::new(redis_node(&redis, &shutdown).await));
    three.opened("carol");
    assert_eq!(
        states(next(&feed_one).await),
        Vec::new(),
        "no node announces an arrival elsewhere"
    );
    tokio::time::sleep(TTL / 3).await;
    assert_eq!(
        two.offline_among(&["carol".into()]).await,
        Vec::<String>::new()
    );
    drop(three);
    let deadline = tokio::time::Instant::now() + TTL * 4;
    let mut seen = Vec::new();
    while seen.is_empty() && tokio::time::Instant::now() < deadline {
        let mut changes = states(next(&feed_one).await);
        changes.extend(states(next(&feed_two).await));
        seen = changes;
    }
    assert_eq!(
        seen,
        [("carol".into(), false)],
        "announced once, by one node"
    );
}

/// What a Redis restart without persistence does to a node: its connection breaks and every
/// key is gone. The node reconnects on its next call, and its members are back within the
/// TTL (its refresh adds them again); joins work as before.
#[tokio::test]
async fn redis_presence_reconnects_and_restores_its_members_after_redis_lost_everything() {
    let redis = RedisServer::start().await;
    let shutdown = CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    let presence = redis_node(&redis, &shutdown).await;
    presence
        .join(&room(), "alice", ConnectionId(1))
        .await
        .unwrap();
    redis.command(&["FLUSHALL"]).await;
    redis.command(&["CLIENT", "KILL", "TYPE", "normal"]).await;

    let deadline = tokio::time::Instant::now() + TTL * 3;
    let mut members = Vec::new();
    while tokio::time::Instant::now() < deadline {
        if let Ok(listed) = presence.members(&room()).await {
            members = listed.into_iter().map(|m| m.user_id).collect();
            if members == ["alice"] {
                break;
            }
        }
        tokio::time::sleep(TTL / 10).await;
    }
    assert_eq!(members, ["alice"], "alice is back after the refresh");
    let joined = presence
        .join(&room(), "bob", ConnectionId(2))
        .await
        .expect("joins work on the new connection");
    assert!(joined.is_some());
}
