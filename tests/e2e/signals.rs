//! Signals, the ephemeral lane: at most once to current subscribers on gRPC and WebSocket,
//! never in history or a replay; the latest keyed signal greets new subscribers within its
//! TTL; permission and rate limits answer with their documented errors.

use std::time::Duration;

use herald_e2e::{Subscription, edge::spawn_edge, spawn_app, spawn_app_with};
use herald_proto::codes::close_code_of;
use herald_proto::v1::{CloseCode, Signal, StreamPosition, subscribe_response::Frame};
use serde_json::json;

async fn next_signal(sub: &mut Subscription) -> Signal {
    loop {
        match sub.next_frame().await {
            Ok(Frame::Signal(signal)) => return signal,
            Ok(Frame::Presence(_)) => continue,
            other => panic!("expected a signal, got {other:?}"),
        }
    }
}

fn number(signal: &Signal, field: &str) -> f64 {
    let data = serde_json::to_value(signal.data.clone().unwrap()).unwrap();
    data[field].as_f64().unwrap()
}

#[tokio::test]
async fn signals_reach_current_subscribers_on_grpc_and_websocket_but_never_history_or_a_replay() {
    // Only events and signals on these streams: presence diffs come on their own interval.
    let app = spawn_app_with(|config| config.node.presence_events.clear()).await;
    let edge = spawn_edge(&app).await;
    let alice = app.client("alice", &[]).await;
    let bob = app.client("bob", &[]).await;
    let mut grpc = alice.subscribe("room:chat").await;
    let mut ws = edge.connect_as(&app.token("carol", &[])).await;
    let reply = ws
        .request("subscribe", json!({ "topic": "room:chat" }))
        .await;
    assert!(reply.get("result").is_some(), "{reply}");

    let first = alice.publish("room:chat", 1).await;
    bob.signal("room:chat", "typing.start", None, json!({ "user": "bob" }))
        .await
        .unwrap();

    assert_eq!(grpc.next_event().await.offset, 1);
    let signal = next_signal(&mut grpc).await;
    assert_eq!(signal.r#type, "typing.start");
    assert_eq!(signal.publisher, "bob");
    assert!(signal.time.is_some());
    assert_eq!(ws.offsets(1).await, vec![1]);
    let push = ws.next_push().await;
    assert_eq!(push["topic"], "room:chat");
    assert_eq!(push["signal"]["type"], "typing.start", "{push}");
    assert!(
        push.get("offset").is_none(),
        "signals have no offset: {push}"
    );

    let history = alice.history("room:chat", None, 100).await.unwrap();
    assert_eq!(history.events.len(), 1, "history holds the event only");
    let mut replay = alice
        .resume(
            "room:chat",
            StreamPosition {
                offset: 0,
                epoch: first.epoch,
            },
        )
        .await;
    assert_eq!(replay.next_event().await.offset, 1);
    replay.assert_quiet(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn the_latest_keyed_signal_greets_a_new_subscriber_within_its_ttl_and_not_after() {
    let app = spawn_app_with(|config| {
        config
            .topics
            .signal_ttl
            .insert("room".into(), Duration::from_millis(800));
        config.node.presence_events.clear(); // only signals on these streams
    })
    .await;
    let edge = spawn_edge(&app).await;
    let courier = app.client("courier-7", &[]).await;
    for position in [1.0, 2.0] {
        courier
            .signal(
                "room:map",
                "courier.location",
                Some("courier-7"),
                json!({ "at": position }),
            )
            .await
            .unwrap();
    }

    let mut late = app.client("alice", &[]).await.subscribe("room:map").await;
    let greeting = next_signal(&mut late).await;
    assert_eq!(greeting.key, "courier-7");
    assert_eq!(number(&greeting, "at"), 2.0, "only the latest per key");
    late.assert_quiet(Duration::from_millis(100)).await;

    let mut ws = edge.connect_as(&app.token("bob", &[])).await;
    let reply = ws
        .request("subscribe", json!({ "topic": "room:map" }))
        .await;
    assert!(reply.get("result").is_some(), "{reply}");
    let push = ws.next_push().await;
    assert_eq!(push["signal"]["key"], "courier-7", "{push}");

    tokio::time::sleep(Duration::from_millis(1000)).await;
    let mut after_ttl = app.client("dave", &[]).await.subscribe("room:map").await;
    after_ttl.assert_quiet(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn a_signal_without_permission_is_refused() {
    let app = spawn_app().await;
    let alice = app.client("alice", &[]).await;
    for topic in ["user:bob", "order:1", "role:admin"] {
        let error = alice
            .signal(topic, "typing.start", None, json!({}))
            .await
            .unwrap_err();
        assert_eq!(error.code(), tonic::Code::PermissionDenied, "{topic}");
        assert_eq!(close_code_of(&error), Some(CloseCode::PermissionDenied));
    }
    let error = alice
        .signal("room:chat", "not a type", None, json!({}))
        .await
        .unwrap_err();
    assert_eq!(error.code(), tonic::Code::InvalidArgument);
    assert!(
        error.message().contains("signal type"),
        "{}",
        error.message()
    );
}

#[tokio::test]
async fn signals_over_the_rate_are_refused_with_the_limit_named() {
    let app = spawn_app_with(|config| {
        config.topics.signal_rate = 1;
        config.topics.signal_burst = 2;
    })
    .await;
    let alice = app.client("alice", &[]).await;
    for _ in 0..2 {
        alice
            .signal("room:chat", "cursor.move", None, json!({}))
            .await
            .unwrap();
    }
    let error = alice
        .signal("room:chat", "cursor.move", None, json!({}))
        .await
        .unwrap_err();
    assert_eq!(error.code(), tonic::Code::ResourceExhausted);
    assert_eq!(close_code_of(&error), Some(CloseCode::RateLimited));
    assert!(
        error.message().contains("topics.signal_rate"),
        "{}",
        error.message()
    );
    let bob = app.client("bob", &[]).await;
    bob.signal("room:chat", "cursor.move", None, json!({}))
        .await
        .expect("the limit is per sender");
}
