//! 50 concurrent writers on PostgreSQL whose transactions stay open for a while after their
//! events are written, so outbox ids commit out of order across topics. A relay that read
//! "id above the last seen" would skip rows; ours must deliver every committed event, each
//! topic's in commit order.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use herald_backend::{store::entity::outbox, topic::Topic};
use herald_e2e::{TestDatabase, spawn_app_on};
use sea_orm::{ConnectionTrait, EntityTrait};
use serde_json::json;

const WRITERS: u64 = 50;
const TOPICS: u64 = 5;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_slow_concurrent_writers_never_have_an_event_skipped_or_reordered_within_its_topic() {
    let app = spawn_app_on(TestDatabase::Postgres, |config| {
        config.database.max_connections = 80;
        config.database.acquire_timeout = Duration::from_secs(30);
        config.database.write_retry_budget = Duration::from_secs(30);
    })
    .await;
    let service = app.service().await;
    let mut subs = vec![];
    for t in 0..TOPICS {
        subs.push(service.subscribe(&format!("order:w{t}")).await);
    }

    let commit_order = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..WRITERS)
        .map(|writer| {
            let store = app.store.clone();
            let commit_order = commit_order.clone();
            tokio::spawn(async move {
                let topic = Topic::parse(&format!("order:w{}", writer % TOPICS)).unwrap();
                let mut tx = store.begin().await.unwrap();
                tx.emit(&topic, "test.write", json!({ "writer": writer }))
                    .unwrap();
                let ids = tx.flush().await.unwrap();
                // Deliberately slow: the row exists, uncommitted, while others commit.
                let pause = (writer * 37 % 11) as f64 * 0.01;
                tx.conn()
                    .execute_unprepared(&format!("SELECT pg_sleep({pause})"))
                    .await
                    .unwrap();
                tx.commit().await.unwrap();
                (ids[0], commit_order.fetch_add(1, Ordering::SeqCst))
            })
        })
        .collect();
    let mut commits = vec![];
    for writer in writers {
        commits.push(writer.await.unwrap());
    }
    commits.sort();
    assert!(
        commits.windows(2).any(|pair| pair[0].1 > pair[1].1),
        "some higher id committed before a lower one (the case this test is about)"
    );

    let rows: BTreeMap<i64, outbox::Model> = outbox::Entity::find()
        .all(app.store.db())
        .await
        .unwrap()
        .into_iter()
        .map(|row| (row.id, row))
        .collect();
    assert_eq!(rows.len() as u64, WRITERS);
    let writer_of = |row: &outbox::Model| {
        serde_json::from_str::<serde_json::Value>(&row.data).unwrap()["writer"]
            .as_u64()
            .unwrap()
    };
    for (t, sub) in subs.iter_mut().enumerate() {
        let name = format!("order:w{t}");
        // Commit order of this topic: its sequence numbers.
        let mut committed: Vec<&outbox::Model> =
            rows.values().filter(|row| row.topic == name).collect();
        committed.sort_by_key(|row| row.topic_seq);
        let seqs: Vec<i64> = committed.iter().map(|row| row.topic_seq).collect();
        assert_eq!(seqs, (1..=committed.len() as i64).collect::<Vec<_>>());
        let expected: Vec<u64> = committed.iter().map(|row| writer_of(row)).collect();

        let mut delivered = vec![];
        for offset in 1..=committed.len() as u64 {
            let event = sub.next_event().await;
            assert_eq!(event.offset, offset);
            let data = serde_json::to_value(event.data.unwrap()).unwrap();
            delivered.push(data["writer"].as_f64().unwrap() as u64);
        }
        assert_eq!(
            delivered.iter().collect::<BTreeSet<_>>(),
            expected.iter().collect::<BTreeSet<_>>(),
            "{name}: every committed event delivered"
        );
        assert_eq!(delivered, expected, "{name}: in commit order");
    }
}
