//! Resume: a subscriber that comes back with `since` gets exactly what it missed, then live
//! events, with no gap and no duplicate; when history cannot cover the gap it is told so.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use herald_e2e::{history_checker::HistoryChecker, range, spawn_app, spawn_app_with};
use herald_proto::v1::StreamPosition;

#[tokio::test]
async fn resuming_after_offset_k_replays_exactly_the_missed_events_then_goes_live() {
    let app = spawn_app().await;
    let service = app.service().await;
    let alice = app.client("alice", &[]).await;
    let mut sub = alice.subscribe("room:r").await;
    for n in 1..=5 {
        service.publish("room:r", n).await;
    }
    let seen = sub.offsets(3).await;
    assert_eq!(seen, vec![1, 2, 3]);
    let last = StreamPosition {
        offset: 3,
        epoch: sub.position().epoch,
    };
    drop(sub);
    for n in 6..=8 {
        service.publish("room:r", n).await;
    }
    let mut resumed = alice.resume("room:r", last).await;
    assert!(resumed.subscribed.recovered);
    assert_eq!(resumed.position().offset, 8);
    assert_eq!(
        resumed.offsets(5).await,
        range(4, 8),
        "exactly the missed events"
    );
    service.publish("room:r", 9).await;
    assert_eq!(resumed.offsets(1).await, vec![9], "then live, no duplicate");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn resuming_while_publishers_keep_publishing_loses_and_repeats_nothing() {
    let app = spawn_app().await;
    let checker = Arc::new(HistoryChecker::new());
    let alice = app.client("alice", &[]).await;
    let mut sub = alice.subscribe("room:busy").await;
    checker.expect("alice", "room:busy", 0);
    let epoch = sub.position().epoch;
    let publishing = Arc::new(AtomicBool::new(true));
    let publisher = {
        let service = app.service().await;
        let publishing = publishing.clone();
        let checker = checker.clone();
        tokio::spawn(async move {
            let mut n = 0;
            while publishing.load(Ordering::Relaxed) || n < 300 {
                n += 1;
                let position = service.publish("room:busy", n).await;
                checker.acked("room:busy", position.offset, &format!("n{n}"));
            }
            n
        })
    };
    let mut received = 0;
    let mut last = 0;
    // Disconnect and resume three times while events keep flowing.
    for round in 0..4 {
        if round > 0 {
            drop(sub);
            let since = StreamPosition {
                offset: last,
                epoch: epoch.clone(),
            };
            sub = alice.resume("room:busy", since).await;
            assert!(sub.subscribed.recovered);
        }
        for _ in 0..50 {
            let event = sub.next_event().await;
            checker.delivered_event("alice", &event);
            last = event.offset;
            received += 1;
        }
    }
    publishing.store(false, Ordering::Relaxed);
    let total = publisher.await.unwrap();
    for _ in received..total {
        checker.delivered_event("alice", &sub.next_event().await);
    }
    checker.assert_clean();
    assert_eq!(checker.delivery_count("alice", "room:busy") as u64, total);
}

#[tokio::test]
async fn positions_history_cannot_cover_answer_recovered_false_with_the_current_position() {
    let app = spawn_app_with(|config| {
        config.retention.history_max_events = 10;
        config.node.replay_cap = 5;
    })
    .await;
    let service = app.service().await;
    let alice = app.client("alice", &[]).await;
    for n in 1..=20 {
        service.publish("room:r", n).await;
    }
    let epoch = alice.subscribe("room:r").await.position().epoch;
    let cases = [
        (
            StreamPosition {
                offset: 18,
                epoch: "not-the-epoch".into(),
            },
            "wrong epoch",
        ),
        (
            StreamPosition {
                offset: 5,
                epoch: epoch.clone(),
            },
            "older than history (oldest kept is 11)",
        ),
        (
            StreamPosition {
                offset: 12,
                epoch: epoch.clone(),
            },
            "gap of 8 above the replay cap of 5",
        ),
        (
            StreamPosition {
                offset: 25,
                epoch: epoch.clone(),
            },
            "beyond the top",
        ),
    ];
    let mut top = 20;
    for (since, why) in cases {
        let mut sub = alice.resume("room:r", since).await;
        assert!(!sub.subscribed.recovered, "{why}");
        assert_eq!(
            sub.position(),
            StreamPosition {
                offset: top,
                epoch: epoch.clone()
            },
            "{why}"
        );
        top = service.publish("room:r", 0).await.offset;
        let next = sub.next_event().await.offset;
        assert_eq!(
            next, top,
            "{why}: nothing is replayed, live continues after the top"
        );
    }
    // Within the cap, and retained: recovered.
    let top = alice.subscribe("room:r").await.position();
    let mut sub = alice
        .resume(
            "room:r",
            StreamPosition {
                offset: top.offset - 5,
                epoch,
            },
        )
        .await;
    assert!(sub.subscribed.recovered);
    assert_eq!(sub.offsets(5).await, range(top.offset - 4, top.offset));
}

#[tokio::test]
async fn history_refuses_positions_it_no_longer_covers_with_failed_precondition() {
    let app = spawn_app_with(|config| config.retention.history_max_events = 3).await;
    let service = app.service().await;
    for n in 1..=6 {
        service.publish("room:h", n).await;
    }
    let epoch = service
        .history("room:h", None, 0)
        .await
        .unwrap()
        .position
        .unwrap()
        .epoch;
    let status = service
        .history("room:h", Some(StreamPosition { offset: 1, epoch }), 10)
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    assert!(status.message().contains("reload"), "{}", status.message());
}
