//! Durable events through the transactional outbox: commit order per topic, durable publish,
//! rolled-back transactions, and relays killed at each crash window. Runs on the database
//! `HERALD_TEST_DATABASE` selects (SQLite or PostgreSQL).

use std::collections::BTreeSet;

use herald_backend::{
    store::entity::{outbox, outbox_pending},
    topic::Topic,
};
use herald_e2e::{Subscription, TestApp, range, spawn_app};
use herald_proto::v1::Event;
use sea_orm::{EntityTrait, PaginatorTrait};
use serde_json::json;

fn topic(name: &str) -> Topic {
    Topic::parse(name).unwrap()
}

/// Commits one transaction per `n`, each emitting `{"n": n}` to `topic`.
async fn commit_each(app: &TestApp, name: &str, ns: impl IntoIterator<Item = u64>) {
    for n in ns {
        let mut tx = app.store.begin().await.unwrap();
        tx.emit(&topic(name), "test.event", json!({ "n": n }))
            .unwrap();
        tx.commit().await.unwrap();
    }
}

/// Waits until the relay handed every committed row to the broker and marked it.
async fn wait_until_relayed(app: &TestApp) {
    let deadline = tokio::time::Instant::now() + herald_e2e::PATIENCE;
    while pending_rows(app).await > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the relay did not catch up"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

fn n_of(event: &Event) -> u64 {
    let data = serde_json::to_value(event.data.clone().unwrap()).unwrap();
    data["n"].as_f64().unwrap() as u64
}

/// Reads `count` events; returns their `n`s and offsets.
async fn read(sub: &mut Subscription, count: usize) -> (Vec<u64>, Vec<u64>) {
    let mut ns = vec![];
    let mut offsets = vec![];
    for _ in 0..count {
        let event = sub.next_event().await;
        ns.push(n_of(&event));
        offsets.push(event.offset);
    }
    (ns, offsets)
}

async fn pending_rows(app: &TestApp) -> u64 {
    outbox_pending::Entity::find()
        .count(app.store.db())
        .await
        .unwrap()
}

#[tokio::test]
async fn committed_events_reach_subscribers_in_commit_order_with_consecutive_offsets() {
    let app = spawn_app().await;
    let mut sub = app.service().await.subscribe("order:orders").await;
    commit_each(&app, "order:orders", 1..=20).await;
    let (ns, offsets) = read(&mut sub, 20).await;
    assert_eq!(ns, range(1, 20));
    assert_eq!(offsets, range(1, 20));
}

#[tokio::test]
async fn one_transaction_can_change_rows_and_emit_to_several_topics_atomically() {
    let app = spawn_app().await;
    let service = app.service().await;
    let mut a = service.subscribe("order:a").await;
    let mut b = service.subscribe("order:b").await;
    let mut tx = app.store.begin().await.unwrap();
    use sea_orm::ConnectionTrait;
    tx.conn()
        .execute_unprepared("INSERT INTO server_meta (key, value) VALUES ('greeting', 'hello')")
        .await
        .unwrap();
    for n in 1..=3 {
        tx.emit(&topic("order:a"), "test.event", json!({ "n": n }))
            .unwrap();
        tx.emit(&topic("order:b"), "test.event", json!({ "n": n * 10 }))
            .unwrap();
    }
    let committed = tx.commit().await.unwrap();
    assert_eq!(committed.ids.len(), 6);
    assert_eq!(read(&mut a, 3).await.0, vec![1, 2, 3]);
    assert_eq!(read(&mut b, 3).await.0, vec![10, 20, 30]);
}

#[tokio::test]
async fn a_durable_publish_answers_with_the_position_its_subscribers_see() {
    let app = spawn_app().await;
    let service = app.service().await;
    let mut sub = service.subscribe("order:durable").await;
    for n in 1..=3 {
        let response = service
            .try_publish_durable("order:durable", "test.event", json!({ "n": n }))
            .await
            .unwrap();
        let position = response.position.unwrap();
        assert_eq!(position.offset, n);
        let event = sub.next_event().await;
        assert_eq!(event.offset, position.offset);
        assert_eq!(event.epoch, position.epoch);
        assert_eq!(event.id, response.id);
        assert_eq!(event.publisher, "test-service");
    }
    wait_until_relayed(&app).await;
}

#[tokio::test]
async fn a_rolled_back_transaction_never_publishes() {
    let app = spawn_app().await;
    let mut sub = app.service().await.subscribe("order:phantom").await;

    // Written to the outbox table, then rolled back explicitly.
    let mut tx = app.store.begin().await.unwrap();
    tx.emit(&topic("order:phantom"), "test.event", json!({ "n": 1 }))
        .unwrap();
    assert_eq!(tx.flush().await.unwrap().len(), 1);
    tx.rollback().await.unwrap();
    // Written, then dropped without a commit.
    let mut tx = app.store.begin().await.unwrap();
    tx.emit(&topic("order:phantom"), "test.event", json!({ "n": 2 }))
        .unwrap();
    tx.flush().await.unwrap();
    drop(tx);

    commit_each(&app, "order:phantom", [3]).await;
    let event = sub.next_event().await;
    assert_eq!(
        (n_of(&event), event.offset),
        (3, 1),
        "only the committed event"
    );
    let rows = outbox::Entity::find().all(app.store.db()).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].topic_seq, 1, "rolled-back events leave no gap");
}

#[tokio::test]
async fn a_relay_killed_after_commit_and_before_publish_delivers_every_event_exactly_once() {
    let app = spawn_app().await;
    let mut sub = app.service().await.subscribe("order:crash1").await;
    app.relay_faults.kill_before_publish(1);
    commit_each(&app, "order:crash1", 1..=10).await;
    app.relay_faults.killed(1).await;
    commit_each(&app, "order:crash1", [11]).await;

    let (ns, offsets) = read(&mut sub, 11).await;
    let delivered: BTreeSet<u64> = ns.iter().copied().collect();
    let committed: BTreeSet<u64> = (1..=11).collect();
    assert_eq!(delivered, committed);
    assert_eq!(ns, range(1, 11), "in commit order, each once");
    assert_eq!(offsets, range(1, 11));
    assert_eq!(app.relay_faults.kills(), 1);
    wait_until_relayed(&app).await;
}

#[tokio::test]
async fn a_relay_killed_after_publish_and_before_marking_delivers_every_event_exactly_once() {
    let app = spawn_app().await;
    let mut sub = app.service().await.subscribe("order:crash2").await;
    app.relay_faults.kill_before_mark(1);
    commit_each(&app, "order:crash2", 1..=10).await;
    app.relay_faults.killed(1).await;
    // Handed over once by the killed relay, again by the next one: the broker knows the
    // offsets already and delivers nothing twice.
    commit_each(&app, "order:crash2", [11]).await;

    let (ns, offsets) = read(&mut sub, 11).await;
    let delivered: BTreeSet<u64> = ns.iter().copied().collect();
    assert_eq!(delivered, (1..=11).collect::<BTreeSet<u64>>());
    assert_eq!(
        ns,
        range(1, 11),
        "no duplicate between the crash and the next event"
    );
    assert_eq!(offsets, range(1, 11));
    assert_eq!(app.relay_faults.kills(), 1);
    wait_until_relayed(&app).await;
    let history = app
        .service()
        .await
        .history("order:crash2", None, 100)
        .await
        .unwrap();
    assert_eq!(history.events.len(), 11, "history holds each event once");
}

#[tokio::test]
async fn events_committed_before_a_crash_are_published_after_the_restart() {
    let app = spawn_app().await;
    // This process's relay never gets to publish: as if it died right after the commits.
    app.relay_faults.kill_before_publish(u64::MAX);
    commit_each(&app, "order:restart", 1..=5).await;
    app.relay_faults.killed(1).await;
    assert_eq!(pending_rows(&app).await, 5);

    let app = app.restart().await;
    commit_each(&app, "order:restart", [6]).await;
    wait_until_relayed(&app).await;
    let history = app
        .service()
        .await
        .history("order:restart", None, 100)
        .await
        .unwrap();
    let ns: Vec<u64> = history.events.iter().map(n_of).collect();
    assert_eq!(ns, range(1, 6));
    wait_until_relayed(&app).await;
}
