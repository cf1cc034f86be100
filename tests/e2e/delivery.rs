//! Ordered fan-out, concurrency and idempotency, observed by real subscribers.

use herald_e2e::{range, spawn_app};

#[tokio::test]
async fn two_subscribers_receive_every_event_in_publish_order_with_consecutive_offsets() {
    let app = spawn_app().await;
    let alice = app.client("alice", &[]).await;
    let bob = app.client("bob", &[]).await;
    let mut a = alice.subscribe("room:lobby").await;
    let mut b = bob.subscribe("room:lobby").await;
    let publisher = app.service().await;
    for n in 1..=20 {
        let position = publisher.publish("room:lobby", n).await;
        assert_eq!(position.offset, n);
    }
    for sub in [&mut a, &mut b] {
        for n in 1..=20 {
            let event = sub.next_event().await;
            assert_eq!(event.offset, n);
            assert_eq!(event.topic, "room:lobby");
            assert_eq!(event.r#type, "test.event");
            assert_eq!(event.publisher, "test-service");
            assert_eq!(event.epoch, sub.position().epoch);
            let data = serde_json::to_value(event.data.unwrap()).unwrap();
            // JSON numbers travel as protobuf doubles.
            assert_eq!(data["n"].as_f64(), Some(n as f64), "publish order is kept");
            assert!(uuid_v7(&event.id), "event id {} is a UUIDv7", event.id);
        }
    }
}

fn uuid_v7(id: &str) -> bool {
    id.len() == 36 && id.as_bytes()[14] == b'7'
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_publishers_produce_the_same_gapless_order_for_every_subscriber() {
    let app = spawn_app().await;
    let mut subscribers = vec![];
    for name in ["s1", "s2", "s3"] {
        subscribers.push(app.client(name, &[]).await.subscribe("room:busy").await);
    }
    let mut publishers = vec![];
    for p in 0..8 {
        let client = app.client(&format!("p{p}"), &[]).await;
        publishers.push(tokio::spawn(async move {
            for n in 0..50 {
                client.publish("room:busy", p * 1000 + n).await;
            }
        }));
    }
    for publisher in publishers {
        publisher.await.unwrap();
    }
    let mut orders = vec![];
    for sub in &mut subscribers {
        let mut ids = vec![];
        let mut offsets = vec![];
        for _ in 0..400 {
            let event = sub.next_event().await;
            offsets.push(event.offset);
            ids.push(event.id);
        }
        assert_eq!(offsets, range(1, 400), "strictly increasing, no gap");
        orders.push(ids);
    }
    assert!(
        orders.windows(2).all(|w| w[0] == w[1]),
        "every subscriber sees the same order"
    );
}

#[tokio::test]
async fn the_same_idempotency_key_three_times_in_a_row_publishes_once() {
    let app = spawn_app().await;
    let service = app.service().await;
    let mut sub = service.subscribe("room:orders").await;
    let mut positions = vec![];
    for _ in 0..3 {
        let response = service
            .try_publish(
                "room:orders",
                "order.placed",
                serde_json::json!({}),
                Some("order-1"),
            )
            .await
            .unwrap();
        positions.push(response.position.unwrap().offset);
    }
    assert_eq!(positions, vec![1, 1, 1]);
    service.publish("room:orders", 2).await;
    assert_eq!(
        sub.offsets(2).await,
        vec![1, 2],
        "the retries delivered nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_same_idempotency_key_three_times_at_once_publishes_once() {
    let app = spawn_app().await;
    let service = app.service().await;
    let mut sub = service.subscribe("room:orders").await;
    let attempts: Vec<_> = (0..3)
        .map(|_| {
            let service = service.clone();
            tokio::spawn(async move {
                service
                    .try_publish(
                        "room:orders",
                        "order.placed",
                        serde_json::json!({}),
                        Some("k"),
                    )
                    .await
                    .unwrap()
                    .position
                    .unwrap()
                    .offset
            })
        })
        .collect();
    let mut offsets = vec![];
    for attempt in attempts {
        offsets.push(attempt.await.unwrap());
    }
    assert_eq!(offsets, vec![1, 1, 1]);
    service.publish("room:orders", 2).await;
    assert_eq!(sub.offsets(2).await, vec![1, 2]);
}

#[tokio::test]
async fn history_returns_retained_events_after_a_position() {
    let app = spawn_app().await;
    let service = app.service().await;
    for n in 1..=5 {
        service.publish("room:h", n).await;
    }
    let all = service.history("room:h", None, 0).await.unwrap();
    let offsets: Vec<u64> = all.events.iter().map(|e| e.offset).collect();
    assert_eq!(offsets, range(1, 5));
    let top = all.position.unwrap();
    assert_eq!(top.offset, 5);
    let since = herald_proto::v1::StreamPosition {
        offset: 3,
        epoch: top.epoch.clone(),
    };
    let after = service.history("room:h", Some(since), 1).await.unwrap();
    let offsets: Vec<u64> = after.events.iter().map(|e| e.offset).collect();
    assert_eq!(offsets, vec![4]);
}

#[tokio::test]
async fn the_backend_serves_grpc_health_and_reflection() {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };

    let app = spawn_app().await;
    let channel = app.endpoint().connect().await.unwrap();
    let health = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: "herald.v1.Rooms".into(),
        })
        .await
        .unwrap();
    assert_eq!(health.get_ref().status, ServingStatus::Serving as i32);

    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) =
        responses.message().await.unwrap().unwrap().message_response
    else {
        panic!("expected a service list");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in ["herald.v1.Rooms", "herald.v1.Auth", "herald.v1.Edge"] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} in {names:?}"
        );
    }
}

/// `Rooms/PublishBatch` applies its publishes in order, answers each on its own (a refused one
/// does not stop the ones after it) and refuses an empty or oversized batch.
#[tokio::test]
async fn a_publish_batch_takes_offsets_in_order_and_answers_each_publish() {
    use herald_proto::v1::{PublishBatchRequest, PublishRequest, publish_outcome::Outcome};
    let app = spawn_app().await;
    let mut watcher = app
        .client("watcher", &[])
        .await
        .subscribe("room:batch")
        .await;
    let alice = app.client("alice", &[]).await;
    let publish = |n: u64, event_type: &str| PublishRequest {
        topic: "room:batch".into(),
        r#type: event_type.into(),
        data: Some(serde_json::from_value(serde_json::json!({ "n": n })).unwrap()),
        idempotency_key: None,
        durable: false,
    };
    let batch = (0..5)
        .map(|n| publish(n, if n == 2 { "not a type!" } else { "test.event" }))
        .collect();
    let outcomes = alice
        .rooms
        .clone()
        .publish_batch(alice.request(PublishBatchRequest { publishes: batch }))
        .await
        .expect("the batch is answered")
        .into_inner()
        .outcomes;
    let answers: Vec<_> = outcomes
        .into_iter()
        .map(|outcome| match outcome.outcome {
            Some(Outcome::Published(published)) => Ok(published.position.unwrap().offset),
            Some(Outcome::Refused(refused)) => Err(refused.code),
            None => panic!("an outcome without a result"),
        })
        .collect();
    let invalid = tonic::Code::InvalidArgument as i32;
    assert_eq!(answers, [Ok(1), Ok(2), Err(invalid), Ok(3), Ok(4)]);
    for n in [0u64, 1, 3, 4] {
        let event = watcher.next_event().await;
        let data = serde_json::to_value(event.data.unwrap()).unwrap();
        assert_eq!(
            data["n"].as_f64(),
            Some(n as f64),
            "offset {}",
            event.offset
        );
    }

    for size in [0, 101] {
        let batch = (0..size).map(|n| publish(n, "test.event")).collect();
        let status = alice
            .rooms
            .clone()
            .publish_batch(alice.request(PublishBatchRequest { publishes: batch }))
            .await
            .expect_err("refused");
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains("1 to 100"), "{status:?}");
    }
}
