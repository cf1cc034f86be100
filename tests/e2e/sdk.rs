//! The Rust SDK (`herald-client`) against a real backend: resume across a restart, reload
//! when history cannot continue, terminal refusals, token renewal, load-then-follow.

use std::time::Duration;

use herald_backend::auth::dev_key::{self, TokenClaims};
use herald_client::{Client, Error, Subscription, Update, refreshing};
use herald_e2e::{SECRET, TestApp, spawn_app};
use herald_proto::v1::HistoryRequest;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);

fn sdk(app: &TestApp, sub: &str, roles: &[&str]) -> Client {
    Client::connect(&format!("http://{}", app.addr), app.token(sub, roles)).expect("a client")
}

async fn next(feed: &mut Subscription) -> Update {
    tokio::time::timeout(WAIT, feed.next())
        .await
        .expect("an update in time")
        .expect("the subscription is open")
        .expect("no error")
}

/// Reads updates until `count` events arrived; returns their offsets and the other updates.
async fn events(feed: &mut Subscription, count: usize) -> (Vec<u64>, Vec<Update>) {
    let (mut offsets, mut others) = (vec![], vec![]);
    while offsets.len() < count {
        match next(feed).await {
            Update::Event(event) => offsets.push(event.offset),
            other => others.push(other),
        }
    }
    (offsets, others)
}

async fn publish_n(app: &TestApp, topic: &str, range: std::ops::Range<u64>) {
    let service = app.service().await;
    for n in range {
        service
            .try_publish(topic, "test.sdk", json!({ "n": n }), None)
            .await
            .expect("publish");
    }
}

#[tokio::test]
async fn the_rust_sdk_resumes_a_durable_topic_across_a_backend_restart_with_no_gap_and_no_duplicate()
 {
    let app = spawn_app().await;
    let client = sdk(&app, "sdk-reader", &["service"]);
    let mut feed = client
        .subscribe("order:sdk")
        .with_backoff(herald_client::Backoff::new(
            Duration::from_millis(20),
            Duration::from_millis(200),
        ));
    assert!(matches!(
        next(&mut feed).await,
        Update::Subscribed { resumed: false, .. }
    ));
    publish_n(&app, "order:sdk", 0..20).await;
    let (before, _) = events(&mut feed, 20).await;

    let app = app.restart_in_place().await;
    publish_n(&app, "order:sdk", 20..40).await;
    let (after, others) = events(&mut feed, 20).await;

    let all: Vec<u64> = before.into_iter().chain(after).collect();
    assert_eq!(
        all,
        (1..=40).collect::<Vec<_>>(),
        "every offset once, in order"
    );
    assert!(
        others
            .iter()
            .any(|u| matches!(u, Update::Subscribed { resumed: true, .. })),
        "the reconnect resumed: {others:?}"
    );
    assert!(
        !others.iter().any(|u| matches!(u, Update::Reload { .. })),
        "a durable topic never asks for a reload here"
    );
}

#[tokio::test]
async fn a_memory_room_after_a_restart_tells_the_app_to_reload_and_then_continues() {
    let app = spawn_app().await;
    let client = sdk(&app, "sdk-reader", &["service"]);
    let mut feed = client
        .subscribe("room:sdk")
        .with_backoff(herald_client::Backoff::new(
            Duration::from_millis(20),
            Duration::from_millis(200),
        ));
    next(&mut feed).await;
    publish_n(&app, "room:sdk", 0..3).await;
    events(&mut feed, 3).await;

    let app = app.restart_in_place().await;
    // The new process has a new epoch for memory topics: what was missed cannot be replayed.
    loop {
        match next(&mut feed).await {
            Update::Reload { .. } => break,
            Update::Subscribed { .. } => panic!("resumed a memory topic across a restart"),
            _ => {}
        }
    }
    publish_n(&app, "room:sdk", 3..4).await;
    let (offsets, _) = events(&mut feed, 1).await;
    assert_eq!(
        offsets,
        [1],
        "the new epoch's first event follows the reload"
    );
}

#[tokio::test]
async fn a_terminal_refusal_ends_the_subscription_with_its_error() {
    let app = spawn_app().await;
    let client = sdk(&app, "mallory", &[]);
    let mut feed = client.subscribe("user:alice");
    let ended = tokio::time::timeout(WAIT, feed.next())
        .await
        .expect("an answer in time");
    match ended {
        Some(Err(Error::Status(status))) => {
            assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
        }
        other => panic!("expected PERMISSION_DENIED, got {other:?}"),
    }
    assert!(feed.next().await.is_none(), "nothing after a terminal end");
}

#[tokio::test]
async fn an_expiring_token_is_renewed_and_the_subscription_misses_nothing() {
    let app = spawn_app().await;
    // Every token lives 2 s: the stream ends with TOKEN_EXPIRED and comes back with a new one.
    let tokens = refreshing(|| {
        let claims = TokenClaims::new("sdk-reader", &["service"], Duration::from_secs(2));
        dev_key::sign_hs256(SECRET, &claims).map_err(|e| e.to_string())
    });
    let client = Client::connect(&format!("http://{}", app.addr), tokens).expect("a client");
    let mut feed = client
        .subscribe("order:expiry")
        .with_backoff(herald_client::Backoff::new(
            Duration::from_millis(20),
            Duration::from_millis(200),
        ));
    next(&mut feed).await;
    let mut offsets = vec![];
    for round in 0..3u64 {
        publish_n(&app, "order:expiry", round * 5..round * 5 + 5).await;
        offsets.extend(events(&mut feed, 5).await.0);
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    assert_eq!(offsets, (1..=15).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn load_then_follow_under_concurrent_writers_has_no_gap_and_no_duplicate() {
    let app = spawn_app().await;
    let client = sdk(&app, "sdk-reader", &["service"]);
    let mut services = vec![];
    for _ in 0..4 {
        services.push(app.service().await);
    }
    let writers: Vec<_> = services
        .into_iter()
        .enumerate()
        .map(|(w, service)| {
            tokio::spawn(async move {
                for n in 0..50 {
                    service
                        .try_publish("order:live", "test.sdk", json!({ "w": w, "n": n }), None)
                        .await
                        .expect("publish");
                }
            })
        })
        .collect();
    // Load while the writers write: the History page and its position are one snapshot.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut live = client
        .live("order:live", |client| async move {
            let history = client
                .rooms()
                .history(HistoryRequest {
                    topic: "order:live".into(),
                    since: None,
                    limit: 1000,
                })
                .await?
                .into_inner();
            let position = history.position.unwrap_or_default();
            let offsets: Vec<u64> = history.events.iter().map(|e| e.offset).collect();
            Ok((offsets, position))
        })
        .await
        .expect("load");
    for writer in writers {
        writer.await.unwrap();
    }
    let loaded = live.state.len();
    let (followed, _) = events(&mut live.feed, 200 - loaded).await;
    let all: Vec<u64> = live.state.iter().copied().chain(followed).collect();
    assert_eq!(
        all,
        (1..=200).collect::<Vec<_>>(),
        "loaded + followed = every event once"
    );
}
