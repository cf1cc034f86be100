//! Finding 3 of the hardening issue: the in-memory broker's memory is bounded globally, and
//! clients who choose topic names cannot make it keep state for reads.

use futures_util::{StreamExt, stream};
use herald_e2e::{PATIENCE, edge::spawn_edge, spawn_app, spawn_app_with};
use serde_json::json;
use tonic::Code;

#[tokio::test]
async fn finding_3_reads_of_10000_topics_the_caller_may_not_read_leave_the_broker_unchanged() {
    let app = spawn_app_with(|config| config.policy.rooms_public = false).await;
    let alice = app.client("alice", &[]).await;
    let before = app.node.broker_stats().topics;
    stream::iter(0..10_000)
        .for_each_concurrent(32, |i| {
            let alice = alice.clone();
            async move {
                let topic = format!("room:probe-{i}");
                let status = if i % 2 == 0 {
                    alice.history(&topic, None, 10).await.err()
                } else {
                    alice.try_subscribe(&topic, None).await.err()
                };
                let status = status.expect("refused by the policy");
                assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
            }
        })
        .await;
    assert_eq!(app.node.broker_stats().topics, before);

    // Over the WebSocket edge (its shared Follow streams) as well.
    let edge = spawn_edge(&app).await;
    let mut socket = edge.connect_as(&app.token("alice", &[])).await;
    for i in 0..100 {
        let reply = socket
            .request(
                "subscribe",
                json!({ "topic": format!("room:ws-probe-{i}") }),
            )
            .await;
        assert!(reply.get("error").is_some(), "{reply}");
    }
    assert_eq!(app.node.broker_stats().topics, before);
}

#[tokio::test]
async fn finding_3_reads_of_topics_without_history_keep_nothing_and_a_later_publish_reaches_the_reader()
 {
    let app = spawn_app().await;
    let alice = app.client("alice", &[]).await;
    for i in 0..1000 {
        let history = alice
            .history(&format!("room:empty-{i}"), None, 10)
            .await
            .expect("an empty history");
        assert!(history.events.is_empty());
    }
    let mut waiting = alice.subscribe("room:empty-7").await;
    assert_eq!(app.node.broker_stats().topics, 0);
    let position = app.service().await.publish("room:empty-7", 1).await;
    assert_eq!(waiting.next_event().await.offset, 1);
    assert_eq!(
        waiting.subscribed.position.expect("a position").epoch,
        position.epoch,
        "the first publish keeps the epoch the reader was told"
    );
    assert_eq!(app.node.broker_stats().topics, 1);
}

#[tokio::test]
async fn finding_3_publishes_beyond_the_topic_cap_evict_idle_topics_then_are_refused_naming_the_limit()
 {
    let app = spawn_app_with(|config| config.retention.max_topics = 20).await;
    let service = app.service().await;
    for i in 0..200 {
        service.publish(&format!("room:many-{i}"), 1).await;
        assert!(app.node.broker_stats().topics <= 20);
    }
    assert!(app.node.broker_stats().evicted_topics >= 180);

    // Twenty topics with a subscriber each cannot be evicted: the next new topic is refused.
    let mut listening = Vec::new();
    for i in 0..20 {
        let topic = format!("room:busy-{i}");
        listening.push(service.subscribe(&topic).await);
        service.publish(&topic, 1).await;
    }
    let status = service
        .try_publish("room:one-more", "test.event", json!({}), None)
        .await
        .expect_err("refused at the cap");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("retention.max_topics"),
        "{}",
        status.message()
    );
    assert!(app.node.broker_stats().refused_at_capacity >= 1);
    drop(listening.pop());
    // The dropped subscription leaves the hub once its stream ends on the server; each
    // publish until then is refused the same way.
    tokio::time::timeout(PATIENCE, async {
        loop {
            match service
                .try_publish("room:one-more", "test.event", json!({}), None)
                .await
            {
                Ok(_) => break,
                Err(status) => assert_eq!(status.code(), Code::ResourceExhausted),
            }
        }
    })
    .await
    .expect("a topic nobody listens to any more is evicted");
}
