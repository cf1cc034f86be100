//! Group commit of durable publishes (`Rooms/Publish` on durable topics), through the public
//! gRPC interface: concurrent publishes share transactions, and nothing of the one-at-a-time
//! contract changes — gapless offsets, idempotency keys per publisher, every event delivered
//! once and in order.

use std::collections::BTreeMap;

use futures_util::future::join_all;
use herald_backend::store::entity::outbox;
use herald_e2e::{TestApp, TestDatabase, spawn_app_on};
use sea_orm::EntityTrait;
use serde_json::json;

const PUBLISHES: usize = 400;
const TOPICS: usize = 4;

async fn app() -> TestApp {
    spawn_app_on(TestDatabase::from_env(), |_| {}).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_durable_publishes_share_transactions_and_keep_every_offset_gapless() {
    let app = app().await;
    let service = app.service().await;
    let mut subscriptions = vec![];
    for t in 0..TOPICS {
        subscriptions.push(service.subscribe(&format!("order:g{t}")).await);
    }
    let batches_before = app.store.publish_batches();

    let answers = join_all((0..PUBLISHES).map(|n| {
        let service = &service;
        async move {
            let topic = format!("order:g{}", n % TOPICS);
            let answer = service
                .try_publish(&topic, "test.group", json!({ "n": n }), None)
                .await
                .expect("a durable publish succeeds");
            (n, answer.position.expect("a position").offset)
        }
    }))
    .await;

    let batches = app.store.publish_batches() - batches_before;
    assert!(
        batches < PUBLISHES as u64,
        "{PUBLISHES} concurrent publishes took {batches} transactions: none was shared"
    );
    // Per topic: the answered offsets are exactly 1..=N, and the rows say the same.
    let mut answered: BTreeMap<usize, Vec<u64>> = BTreeMap::new();
    for (n, offset) in &answers {
        answered.entry(n % TOPICS).or_default().push(*offset);
    }
    let rows = outbox::Entity::find().all(app.store.db()).await.unwrap();
    for (t, mut offsets) in answered {
        offsets.sort_unstable();
        let expected: Vec<u64> = (1..=(PUBLISHES / TOPICS) as u64).collect();
        assert_eq!(offsets, expected, "order:g{t}: gapless offsets, each once");
        let stored = rows
            .iter()
            .filter(|row| row.topic == format!("order:g{t}"))
            .count();
        assert_eq!(
            stored,
            PUBLISHES / TOPICS,
            "order:g{t}: one row per publish"
        );
    }
    // Each subscriber receives its topic's events once, in offset order, with the data each
    // publish was answered for.
    let offset_of: BTreeMap<usize, u64> = answers.into_iter().collect();
    for (t, subscription) in subscriptions.iter_mut().enumerate() {
        for offset in 1..=(PUBLISHES / TOPICS) as u64 {
            let event = subscription.next_event().await;
            assert_eq!(event.offset, offset, "order:g{t}: in order");
            let data = serde_json::to_value(event.data.unwrap()).unwrap();
            let n = data["n"].as_f64().unwrap() as usize;
            assert_eq!(
                offset_of[&n], offset,
                "order:g{t}: the event answered at {offset}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_key_sent_many_times_at_once_writes_one_event_and_answers_every_retry_with_it() {
    let app = app().await;
    let service = app.service().await;
    let answers = join_all(
        (0..50).map(|_| service.try_publish("order:key", "test.keyed", json!({}), Some("pay-7"))),
    )
    .await;
    let answers: Vec<_> = answers
        .into_iter()
        .map(|answer| answer.expect("a keyed publish succeeds"))
        .collect();
    let first = answers[0].position.clone().expect("a position");
    assert!(
        answers
            .iter()
            .all(|a| a.position.as_ref() == Some(&first) && a.id == answers[0].id),
        "every retry answers with the one event's position and id"
    );
    let rows = outbox::Entity::find().all(app.store.db()).await.unwrap();
    assert_eq!(rows.iter().filter(|r| r.topic == "order:key").count(), 1);

    // Later, the same key is still the same event; another publisher's same key is not.
    let again = service
        .try_publish("order:key", "test.keyed", json!({}), Some("pay-7"))
        .await
        .unwrap();
    assert_eq!(
        (again.position, again.id),
        (Some(first), answers[0].id.clone())
    );
    let other = app.client("someone-else", &["service"]).await;
    let theirs = other
        .try_publish("order:key", "test.keyed", json!({}), Some("pay-7"))
        .await
        .unwrap();
    assert_eq!(
        theirs.position.unwrap().offset,
        2,
        "keys are scoped per publisher: another publisher's same key is a new event"
    );
}
