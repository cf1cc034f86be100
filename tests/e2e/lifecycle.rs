//! How streams end: token expiry, slow consumers, shutdown, and presence as subscribers
//! come and go. Every ending carries a close code and the last offset, and resuming from it
//! loses nothing.

use std::time::Duration;

use herald_backend::auth::dev_key::TokenClaims;
use herald_e2e::{Client, range, spawn_app, spawn_app_with};
use herald_proto::{
    codes::{OFFSET_TRAILER, close_code_of},
    v1::{CloseCode, StreamPosition, presence_change::Kind, subscribe_response::Frame},
};
use serde_json::json;
use tonic::{Code, Status};

fn trailer_offset(status: &Status) -> u64 {
    status
        .metadata()
        .get(OFFSET_TRAILER)
        .expect("the herald-offset trailer")
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn a_token_expiring_mid_stream_ends_it_and_a_fresh_token_resumes_losslessly() {
    let app = spawn_app().await;
    let service = app.service().await;
    let short = app.sign(&TokenClaims::new("alice", &[], Duration::from_secs(2)));
    let alice = app.client_with_token(short).await;
    let mut sub = alice.subscribe("user:alice").await;
    service.publish("user:alice", 1).await;
    let epoch = sub.position().epoch;
    let (offsets, status) = sub.drain_until_end().await;
    assert_eq!(offsets, vec![1]);
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(
        status.message().starts_with("token expired"),
        "{}",
        status.message()
    );
    assert_eq!(close_code_of(&status), Some(CloseCode::TokenExpired));
    assert_eq!(trailer_offset(&status), 1);

    for n in 2..=4 {
        service.publish("user:alice", n).await;
    }
    let refreshed = app.client("alice", &[]).await;
    let mut resumed = refreshed
        .resume("user:alice", StreamPosition { offset: 1, epoch })
        .await;
    assert!(resumed.subscribed.recovered);
    assert_eq!(resumed.offsets(3).await, range(2, 4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_subscriber_that_never_reads_is_ended_as_slow_while_others_get_everything() {
    // Room for a reader that keeps up even on a busy machine; the stalled one overflows anyway.
    let app = spawn_app_with(|config| config.node.subscriber_queue = 64).await;
    let service = app.service().await;
    // A connection with small HTTP/2 windows fills up after a few events when not read.
    let stalled_endpoint = app
        .endpoint()
        .initial_stream_window_size(Some(65_535))
        .initial_connection_window_size(Some(65_535));
    let stalled = Client::connect(stalled_endpoint, app.token("stalled", &[])).await;
    let mut slow = stalled.subscribe("room:firehose").await;
    let epoch = slow.position().epoch;
    let mut fast = app
        .client("fast", &[])
        .await
        .subscribe("room:firehose")
        .await;
    let reader = tokio::spawn(async move { fast.offsets(300).await });

    let blob = "x".repeat(4096);
    for n in 0..300 {
        service
            .try_publish(
                "room:firehose",
                "test.blob",
                json!({ "n": n, "blob": blob }),
                None,
            )
            .await
            .unwrap();
    }
    assert_eq!(
        reader.await.unwrap(),
        range(1, 300),
        "the fast subscriber got everything"
    );

    let (prefix, status) = slow.drain_until_end().await;
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(close_code_of(&status), Some(CloseCode::SlowConsumer));
    assert!(!prefix.is_empty() && prefix.len() < 300);
    assert_eq!(
        prefix,
        range(1, prefix.len() as u64),
        "what it got was a gapless prefix"
    );
    let last = trailer_offset(&status);
    assert_eq!(
        last,
        prefix.len() as u64,
        "the status carries the last offset sent"
    );

    let mut resumed = stalled
        .resume(
            "room:firehose",
            StreamPosition {
                offset: last,
                epoch,
            },
        )
        .await;
    assert!(resumed.subscribed.recovered);
    assert_eq!(
        resumed.offsets(300 - prefix.len()).await,
        range(last + 1, 300)
    );
}

#[tokio::test]
async fn presence_lists_subscribers_while_connected_and_announces_joins_and_leaves() {
    let app = spawn_app().await;
    let alice = app.client("alice", &[]).await;
    let bob = app.client("bob", &[]).await;
    let mut watcher = alice.subscribe("room:party").await;
    let own_join = watcher.next_frame().await.unwrap();
    assert!(matches!(own_join, Frame::Presence(ref p) if p.kind == Kind::Join as i32));

    let bobs = bob.subscribe("room:party").await;
    let Frame::Presence(join) = watcher.next_frame().await.unwrap() else {
        panic!("expected bob's join");
    };
    assert_eq!(join.kind, Kind::Join as i32);
    assert_eq!(join.member.unwrap().user_id, "bob");
    let members = alice.presence("room:party").await.unwrap().members;
    let ids: Vec<&str> = members.iter().map(|m| m.user_id.as_str()).collect();
    assert_eq!(ids, vec!["alice", "bob"]);
    assert!(
        members
            .iter()
            .all(|m| m.connections == 1 && m.since.is_some())
    );

    drop(bobs);
    let Frame::Presence(leave) = watcher.next_frame().await.unwrap() else {
        panic!("expected bob's leave");
    };
    assert_eq!(leave.kind, Kind::Leave as i32);
    assert_eq!(leave.member.unwrap().user_id, "bob");
    let members = alice.presence("room:party").await.unwrap().members;
    assert_eq!(members.len(), 1);
    assert_eq!(members[0].user_id, "alice");
}

#[tokio::test]
async fn services_are_not_listed_in_presence() {
    let app = spawn_app().await;
    let service = app.service().await;
    let _sub = service.subscribe("room:quiet").await;
    assert!(
        service
            .presence("room:quiet")
            .await
            .unwrap()
            .members
            .is_empty()
    );
}

#[tokio::test]
async fn shutdown_ends_open_streams_with_unavailable_and_their_last_offset() {
    let app = spawn_app().await;
    let service = app.service().await;
    let alice = app.client("alice", &[]).await;
    let mut sub = alice.subscribe("room:bye").await;
    // A second subscriber on a stalled connection must not hold the shutdown beyond grace.
    let stalled = Client::connect(
        app.endpoint().initial_stream_window_size(Some(65_535)),
        app.token("stalled", &[]),
    )
    .await;
    let _stuck = stalled.subscribe("room:bye").await;
    for n in 1..=3 {
        service.publish("room:bye", n).await;
    }
    assert_eq!(sub.offsets(3).await, vec![1, 2, 3]);

    app.cancel();
    let (rest, status) = sub.drain_until_end().await;
    assert!(rest.is_empty());
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(close_code_of(&status), Some(CloseCode::Shutdown));
    assert_eq!(trailer_offset(&status), 3);
    assert!(
        status.message().contains("resume from offset 3"),
        "{}",
        status.message()
    );
    app.shutdown()
        .await
        .expect("the server stops cleanly within the grace period");
}
