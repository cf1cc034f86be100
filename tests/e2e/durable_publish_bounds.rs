//! Finding 16 of the hardening issue, backend parts: a cancelled durable publish leaves
//! nothing behind, and a token `sub` is bounded at verification so it always fits the
//! `publisher` column (on SQLite and PostgreSQL: run with `HERALD_TEST_DATABASE=postgres`).

use std::time::Duration;

use herald_backend::auth::dev_key::TokenClaims;
use herald_e2e::{PATIENCE, range, spawn_app};
use serde_json::json;
use tonic::Code;

#[tokio::test]
async fn finding_16_cancelled_durable_publishes_leave_nothing_waiting_and_later_publishes_go_on() {
    let app = spawn_app().await;
    let service = app.service().await;
    let mut watcher = service.subscribe("user:watched").await;
    let subscribers = app.node.hub_stats().subscribers;
    // Publishes given up by the client at every stage: before sending, in flight, while the
    // transaction runs. Each is either committed whole or not at all.
    for i in 0..200u64 {
        let _ = tokio::time::timeout(
            Duration::from_micros(50 * (i % 40)),
            service.try_publish_durable("user:watched", "test.cancelled", json!({ "i": i })),
        )
        .await;
    }
    let last = tokio::time::timeout(
        PATIENCE,
        service.try_publish_durable("user:watched", "test.after", json!({})),
    )
    .await
    .expect("a durable publish after the cancelled ones is not left waiting")
    .expect("published")
    .position
    .expect("a position");
    // What was committed is delivered once each, gapless, the later publish last.
    assert_eq!(
        watcher.offsets(last.offset as usize).await,
        range(1, last.offset)
    );
    assert_eq!(app.node.hub_stats().subscribers, subscribers);
}

#[tokio::test]
async fn finding_16_a_sub_of_255_bytes_publishes_durably_and_a_longer_one_is_refused_at_verification()
 {
    let app = spawn_app().await;
    let longest = "s".repeat(255);
    let token = app.sign(&TokenClaims::new(
        &longest,
        &["service"],
        Duration::from_secs(600),
    ));
    let client = app.client_with_token(token).await;
    let mut watcher = app.service().await.subscribe("user:publisher-column").await;
    client
        .try_publish_durable("user:publisher-column", "test.long_sub", json!({}))
        .await
        .expect("a 255-byte sub fits the publisher column");
    assert_eq!(watcher.next_event().await.publisher, longest);

    let too_long = "s".repeat(256);
    let token = app.sign(&TokenClaims::new(
        &too_long,
        &["service"],
        Duration::from_secs(600),
    ));
    let status = app
        .client_with_token(token)
        .await
        .try_publish_durable("user:publisher-column", "test.long_sub", json!({}))
        .await
        .expect_err("refused before any database write");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(
        status.message().contains("`sub`") && status.message().contains("255"),
        "{}",
        status.message()
    );
}
