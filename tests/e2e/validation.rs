//! Bad input gets INVALID_ARGUMENT with a message naming the rule or limit, and changes
//! nothing.

use herald_e2e::{spawn_app, spawn_app_with};
use serde_json::json;
use tonic::Code;

#[tokio::test]
async fn malformed_topics_are_invalid_arguments_naming_the_rule() {
    let app = spawn_app().await;
    let service = app.service().await;
    let long = format!("room:{}", "x".repeat(251));
    let cases = [
        ("", "empty"),
        (long.as_str(), "255"),
        ("room:café", "ASCII"),
        (
            "chan:1",
            "kinds are user, role, group, conv, order, deployment, room",
        ),
        ("lobby", "kind:id"),
        ("room:", "empty id"),
    ];
    for (topic, rule) in cases {
        let status = service.try_subscribe(topic, None).await.err().unwrap();
        assert_eq!(status.code(), Code::InvalidArgument, "subscribe {topic:?}");
        assert!(
            status.message().contains(rule),
            "subscribe {topic:?}: {}",
            status.message()
        );
        let status = service
            .try_publish(topic, "x", json!({}), None)
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "publish {topic:?}");
        assert!(
            status.message().contains(rule),
            "publish {topic:?}: {}",
            status.message()
        );
        let status = service.history(topic, None, 0).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "history {topic:?}");
        let status = service.presence(topic).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "presence {topic:?}");
    }
}

#[tokio::test]
async fn event_data_over_the_limit_is_refused_naming_the_limit_and_publishes_nothing() {
    let app = spawn_app().await;
    let service = app.service().await;
    let mut sub = service.subscribe("room:big").await;
    let big = json!({ "blob": "x".repeat(64 * 1024) });
    let status = service
        .try_publish("room:big", "x", big, None)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("65536"), "{}", status.message());
    let fits = json!({ "blob": "x".repeat(60 * 1024) });
    let position = service
        .try_publish("room:big", "x", fits, None)
        .await
        .unwrap()
        .position
        .unwrap();
    assert_eq!(position.offset, 1, "the refused event took no offset");
    assert_eq!(sub.next_event().await.offset, 1);
}

#[tokio::test]
async fn the_data_limit_is_configurable() {
    let app = spawn_app_with(|config| config.node.max_event_data_bytes = 100).await;
    let service = app.service().await;
    let status = service
        .try_publish("room:a", "x", json!({ "blob": "x".repeat(200) }), None)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("limit is 100 bytes"),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn bad_event_types_history_limits_and_oversized_messages_are_refused() {
    let app = spawn_app().await;
    let service = app.service().await;
    for event_type in ["", "has space", &"t".repeat(129)] {
        let status = service
            .try_publish("room:a", event_type, json!({}), None)
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "type {event_type:?}");
        assert!(
            status.message().contains("event type"),
            "{}",
            status.message()
        );
    }
    let status = service.history("room:a", None, 1001).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("1000"));
    // Over the 1 MiB decode limit: refused by the transport, and the server stays up.
    let huge = json!({ "blob": "x".repeat(2 * 1024 * 1024) });
    let status = service
        .try_publish("room:a", "x", huge, None)
        .await
        .unwrap_err();
    assert_ne!(status.code(), Code::Ok);
    assert_eq!(service.publish("room:a", 1).await.offset, 1);
}
