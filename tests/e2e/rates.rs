//! The backend's rates, through gRPC and the edge's WebSocket the way clients meet them: a
//! user's writes per minute over every connection, a topic's publishes per second over every
//! publisher, and the edge's pace for new connections. Each refusal names its setting and
//! leaves everybody else alone; nothing refused is written.

use std::time::Duration;

use herald_e2e::{
    Client,
    edge::{http_get, spawn_edge, spawn_edge_with},
    spawn_app_with,
};
use herald_proto::{
    codes::close_code_of,
    v1::{
        CloseCode, NotificationType, NotificationsListRequest, NotificationsMarkAllReadRequest,
        notifications_client::NotificationsClient,
    },
};
use serde_json::json;
use tonic::{Code, Status};

async fn mark_all_read(client: &Client) -> Result<u32, Status> {
    let request = client.request(NotificationsMarkAllReadRequest {
        r#type: NotificationType::Unspecified.into(),
        conversation_id: String::new(),
    });
    let mut notifications = NotificationsClient::new(client.channel.clone());
    Ok(notifications
        .mark_all_read(request)
        .await?
        .into_inner()
        .changed)
}

#[tokio::test]
async fn a_user_over_the_write_rate_is_refused_with_the_setting_named_and_nobody_else_is() {
    let app = spawn_app_with(|config| {
        config.grpc.user_writes_per_minute = 1;
        config.grpc.user_write_burst = 3;
    })
    .await;
    let alice = app.client("alice", &[]).await;
    // Two connections of one user share one budget.
    let alice_again = app.client("alice", &[]).await;
    mark_all_read(&alice).await.expect("the first write");
    mark_all_read(&alice_again).await.expect("the second write");
    mark_all_read(&alice).await.expect("the third write");
    let refused = mark_all_read(&alice_again)
        .await
        .expect_err("the fourth write within the minute");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert_eq!(close_code_of(&refused), Some(CloseCode::RateLimited));
    assert!(
        refused.message().contains("grpc.user_writes_per_minute"),
        "names the setting: {}",
        refused.message()
    );

    // Reads go on, other users write, services are not counted.
    let request = alice.request(NotificationsListRequest::default());
    NotificationsClient::new(alice.channel.clone())
        .list(request)
        .await
        .expect("reads are not limited by the write rate");
    let bob = app.client("bob", &[]).await;
    mark_all_read(&bob).await.expect("bob has his own budget");
    let service = app.service().await;
    for _ in 0..10 {
        mark_all_read(&service)
            .await
            .expect("services are not limited");
    }

    // Through the edge, the refusal is an error frame, and the socket stays open.
    let edge = spawn_edge(&app).await;
    let mut socket = edge.connect_as(&app.token("alice", &[])).await;
    let reply = socket
        .request(
            "call",
            json!({ "rpc": "herald.v1.Notifications/MarkAllRead", "request": {} }),
        )
        .await;
    assert_eq!(reply["error"]["code"], "rate_limited", "{reply}");
    let reply = socket.request("ping", json!({})).await;
    assert_eq!(reply["result"], json!({}), "{reply}");
}

#[tokio::test]
async fn a_topic_over_its_publish_rate_refuses_every_publisher_and_other_topics_go_on() {
    let app = spawn_app_with(|config| {
        config.topics.publish_rate = 1;
        config.topics.publish_burst = 3;
    })
    .await;
    let alice = app.client("alice", &[]).await;
    let bob = app.client("bob", &[]).await;
    let mut watcher = app.client("carol", &[]).await.subscribe("room:hot").await;
    for n in 0..3 {
        alice
            .try_publish("room:hot", "note", json!({ "n": n }), None)
            .await
            .expect("within the burst");
    }
    let refused = bob
        .try_publish("room:hot", "note", json!({ "n": 3 }), None)
        .await
        .expect_err("the topic's budget is spent, whoever publishes");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert_eq!(close_code_of(&refused), Some(CloseCode::RateLimited));
    assert!(
        refused.message().contains("topics.publish_rate"),
        "names the setting: {}",
        refused.message()
    );
    bob.try_publish("room:cold", "note", json!({}), None)
        .await
        .expect("another topic has its own budget");

    // The refused publish was never written: subscribers see exactly the three.
    assert_eq!(watcher.offsets(3).await, vec![1, 2, 3]);
    watcher.assert_quiet(Duration::from_millis(200)).await;
    let history = alice.history("room:hot", None, 100).await.unwrap();
    assert_eq!(history.events.len(), 3);

    // Over the WebSocket the refusal is an error frame.
    let edge = spawn_edge(&app).await;
    let mut socket = edge.connect_as(&app.token("dave", &[])).await;
    let reply = socket
        .request(
            "publish",
            json!({ "topic": "room:hot", "type": "note", "data": {} }),
        )
        .await;
    assert_eq!(reply["error"]["code"], "rate_limited", "{reply}");
}

#[tokio::test]
async fn new_connections_beyond_the_accept_rate_wait_their_turn_instead_of_failing() {
    let app = spawn_app_with(|_| {}).await;
    let edge = spawn_edge_with(&app, |config| {
        config.connections.accept_rate = 4;
        config.connections.accept_burst = 2;
    })
    .await;
    let started = tokio::time::Instant::now();
    let answers =
        futures_util::future::join_all((0..6).map(|_| http_get(edge.addr, "/readyz"))).await;
    let elapsed = started.elapsed();
    for answer in &answers {
        assert!(
            answer.starts_with("HTTP/1.1 200") || answer.starts_with("HTTP/1.1 503"),
            "every connection is answered: {answer}"
        );
    }
    // Two at once, then four a second: the sixth waited for the fourth token after the burst.
    assert!(
        elapsed >= Duration::from_millis(900),
        "six connections at 4/s after a burst of 2 took only {elapsed:?}"
    );
    let metrics = http_get(edge.addr, "/metrics").await;
    let paced = metrics
        .lines()
        .find(|line| {
            line.starts_with("herald_edge_limit_hits_total")
                && line.contains("edge.connections.accept_rate")
        })
        .and_then(|line| line.rsplit_once(' '))
        .map(|(_, value)| value.parse::<f64>().unwrap())
        .expect("the accept rate's counter is exported");
    assert!(paced >= 4.0, "four accepts waited, counted {paced}");
}
