//! Durable topics: offsets fixed at commit, the database as history of record, resume across
//! restarts, paged catch-up, retention, snapshot + position. Runs on the database
//! `HERALD_TEST_DATABASE` selects (SQLite or PostgreSQL).

use std::collections::BTreeSet;

use herald_backend::{history::PageBudget, lanes::KindRetention, topic::Topic};
use herald_e2e::{
    TestApp, edge::spawn_edge, history_checker::HistoryChecker, range, spawn_app, spawn_app_with,
};
use herald_proto::v1::StreamPosition;
use sea_orm::{ConnectionTrait, Statement};
use serde_json::json;

fn topic(name: &str) -> Topic {
    Topic::parse(name).unwrap()
}

fn at(offset: u64, epoch: &str) -> StreamPosition {
    StreamPosition {
        offset,
        epoch: epoch.to_owned(),
    }
}

/// Commits `count` events `{"n": first..}` to `name`, `per_tx` to a transaction.
async fn commit_many(app: &TestApp, name: &str, first: u64, count: u64, per_tx: u64) {
    let topic = topic(name);
    let mut n = first;
    while n < first + count {
        let mut tx = app.store.begin().await.unwrap();
        for _ in 0..per_tx.min(first + count - n) {
            tx.emit(&topic, "test.event", json!({ "n": n })).unwrap();
            n += 1;
        }
        tx.commit().await.unwrap();
    }
}

#[tokio::test]
async fn a_durable_topic_resumes_across_a_restart_with_its_offsets_and_epoch_and_a_memory_topic_cannot()
 {
    let app = spawn_app().await;
    let service = app.service().await;
    let first = service.publish("order:restart", 1).await;
    for n in 2..=3 {
        service.publish("order:restart", n).await;
    }
    let room = service.publish("room:restart", 1).await;
    assert_eq!(first.offset, 1);

    let app = app.restart().await;
    let service = app.service().await;
    let fourth = service.publish("order:restart", 4).await;
    assert_eq!(fourth.offset, 4, "offsets continue after the restart");
    assert_eq!(
        fourth.epoch, first.epoch,
        "the epoch is stored with the topic"
    );

    let mut sub = service.resume("order:restart", first.clone()).await;
    assert!(sub.subscribed.recovered);
    let checker = HistoryChecker::new();
    for (n, offset) in (1..=4).zip(1..) {
        checker.acked("order:restart", offset, &format!("n{n}"));
    }
    checker.expect("service", "order:restart", first.offset);
    let events: Vec<_> = [
        sub.next_event().await,
        sub.next_event().await,
        sub.next_event().await,
    ]
    .into();
    for event in &events {
        checker.delivered_event("service", event);
    }
    assert!(events.iter().all(|e| e.epoch == first.epoch));
    let fifth = service.publish("order:restart", 5).await;
    checker.acked("order:restart", fifth.offset, "n5");
    checker.delivered_event("service", &sub.next_event().await);
    checker.assert_clean();
    assert_eq!(checker.classify().ok, 4, "2, 3, 4, then live 5");

    let room_sub = service.resume("room:restart", room).await;
    assert!(
        !room_sub.subscribed.recovered,
        "a memory topic's history died with the process"
    );
}

#[tokio::test]
async fn a_hundred_thousand_event_catch_up_arrives_in_order_then_live_while_a_publisher_writes() {
    const BACKLOG: u64 = 100_000;
    const DURING: u64 = 300;
    let app = spawn_app().await;
    commit_many(&app, "order:big", 1, BACKLOG, 1000).await;
    // The relay hands the backlog to the broker first, so only the broker's cache (the newest
    // events) can serve the catch-up and everything older must come from the database. (A
    // relay still behind would deliver the rest live, and fewer pages would be read.)
    let deadline = tokio::time::Instant::now() + 4 * herald_e2e::PATIENCE;
    while app.store.outbox_backlog().await.unwrap().0 > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the relay did not publish the backlog in time"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let service = app.service().await;
    let mut sub = service.resume("order:big", at(0, app.store.epoch())).await;
    assert!(sub.subscribed.recovered);

    let writer = {
        let app_store = app.store.clone();
        tokio::spawn(async move {
            let topic = topic("order:big");
            for n in BACKLOG + 1..=BACKLOG + DURING {
                let mut tx = app_store.begin().await.unwrap();
                tx.emit(&topic, "test.event", json!({ "n": n })).unwrap();
                tx.commit().await.unwrap();
            }
        })
    };
    for expected in 1..=BACKLOG + DURING {
        let event = sub.next_event().await;
        assert_eq!(
            event.offset, expected,
            "no gap, no duplicate, no reordering"
        );
    }
    writer.await.unwrap();
    service.publish("order:big", 0).await;
    assert_eq!(sub.next_event().await.offset, BACKLOG + DURING + 1);

    let stats = app.node.history_reader().stats();
    assert!(
        stats.largest_page_events() <= PageBudget::REPLAY.events,
        "a reader held {} events at once",
        stats.largest_page_events()
    );
    assert!(stats.largest_page_bytes() <= PageBudget::REPLAY.bytes);
    let cached = app.config.retention.history_max_events as u64;
    assert!(
        stats.log_pages() >= (BACKLOG - cached) / PageBudget::REPLAY.events as u64,
        "the backlog beyond the broker's cache came from the database, page by page ({} pages)",
        stats.log_pages()
    );
}

#[tokio::test]
async fn a_long_catch_up_over_the_websocket_is_paced_by_the_socket_and_never_slow() {
    const BACKLOG: u64 = 20_000;
    let app = spawn_app().await;
    commit_many(&app, "order:ws-big", 1, BACKLOG, 1000).await;
    let edge = spawn_edge(&app).await;
    let mut ws = edge.connect_as(&app.token("ops", &["admin"])).await;
    let reply = ws
        .request(
            "subscribe",
            json!({ "topic": "order:ws-big", "since": { "offset": "0", "epoch": app.store.epoch() } }),
        )
        .await;
    assert_eq!(reply["result"]["recovered"], true, "{reply}");
    let offsets = ws.offsets(BACKLOG as usize).await;
    assert_eq!(offsets, range(1, BACKLOG), "every event once, in order");
    app.service().await.publish("order:ws-big", 0).await;
    assert_eq!(ws.offsets(1).await, vec![BACKLOG + 1], "then live");
}

#[tokio::test]
async fn a_read_with_its_position_and_a_subscribe_from_it_see_each_write_exactly_once() {
    const WRITERS: usize = 8;
    const WRITES: usize = 25;
    let app = spawn_app().await;
    let snap_topic = topic("order:snapshot");
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let store = app.store.clone();
            let snap_topic = snap_topic.clone();
            tokio::spawn(async move {
                for i in 0..WRITES {
                    let key = format!("item:{w}:{i}");
                    let mut tx = store.begin().await.unwrap();
                    tx.conn()
                        .execute_raw(Statement::from_sql_and_values(
                            tx.conn().get_database_backend(),
                            insert_sql(tx.conn().get_database_backend()),
                            [key.clone().into()],
                        ))
                        .await
                        .unwrap();
                    tx.emit(&snap_topic, "item.added", json!({ "key": key }))
                        .unwrap();
                    tx.commit().await.unwrap();
                }
            })
        })
        .collect();
    let mut reads = vec![];
    // Read while the writers write (and a few more times after).
    while reads.len() < 12 || !writers.iter().all(|w| w.is_finished()) {
        let snapshot = app.store.snapshot().await.unwrap();
        let rows = snapshot
            .conn()
            .query_all_raw(Statement::from_string(
                snapshot.conn().get_database_backend(),
                "SELECT key FROM server_meta WHERE key LIKE 'item:%'",
            ))
            .await
            .unwrap();
        let keys: BTreeSet<String> = rows
            .iter()
            .map(|row| row.try_get_by_index::<String>(0).unwrap())
            .collect();
        let position = snapshot.position(&snap_topic).await.unwrap();
        snapshot.end().await.unwrap();
        reads.push((keys, position));
        tokio::task::yield_now().await;
    }
    for writer in writers {
        writer.await.unwrap();
    }
    let all: BTreeSet<String> = (0..WRITERS)
        .flat_map(|w| (0..WRITES).map(move |i| format!("item:{w}:{i}")))
        .collect();
    let service = app.service().await;
    for (keys, position) in reads {
        let mut sub = service.resume("order:snapshot", position).await;
        assert!(sub.subscribed.recovered);
        let mut later = BTreeSet::new();
        for _ in keys.len()..all.len() {
            let event = sub.next_event().await;
            let data = serde_json::to_value(event.data.unwrap()).unwrap();
            let key = data["key"].as_str().unwrap().to_owned();
            assert!(
                !keys.contains(&key),
                "{key} is both in the rows and after the position"
            );
            later.insert(key);
        }
        let union: BTreeSet<String> = keys.union(&later).cloned().collect();
        assert_eq!(union, all, "every write is in the rows or delivered after");
        sub.assert_quiet(std::time::Duration::from_millis(100))
            .await;
    }
}

fn insert_sql(backend: sea_orm::DbBackend) -> &'static str {
    match backend {
        sea_orm::DbBackend::Postgres => "INSERT INTO server_meta (key, value) VALUES ($1, 'x')",
        _ => "INSERT INTO server_meta (key, value) VALUES (?, 'x')",
    }
}

#[tokio::test]
async fn retention_purges_old_events_so_a_resume_from_before_them_reloads_and_one_after_gets_all() {
    let app = spawn_app_with(|config| {
        config.topics.retention.insert(
            "order".into(),
            KindRetention {
                max_age: None,
                max_events: 5,
            },
        );
    })
    .await;
    commit_many(&app, "order:kept", 1, 20, 1).await;
    let service = app.service().await;
    // Purge only touches relayed events: wait for the relay to hand them all over.
    let mut live = service
        .resume("order:kept", at(19, app.store.epoch()))
        .await;
    assert_eq!(live.next_event().await.offset, 20);
    wait_until_purged(&app, 16).await;

    let purged = service.resume("order:kept", at(3, app.store.epoch())).await;
    assert!(!purged.subscribed.recovered, "offsets 4..=15 are gone");
    assert_eq!(purged.position().offset, 20);
    let history = service
        .history("order:kept", Some(at(3, app.store.epoch())), 10)
        .await
        .unwrap_err();
    assert_eq!(history.code(), tonic::Code::FailedPrecondition);

    let mut kept = service
        .resume("order:kept", at(15, app.store.epoch()))
        .await;
    assert!(kept.subscribed.recovered);
    assert_eq!(kept.offsets(5).await, range(16, 20));
}

/// Runs the purge until the oldest retained event of `order:kept` is `oldest` (the relay may
/// still be marking some, and only relayed events are purged).
async fn wait_until_purged(app: &TestApp, oldest: u64) {
    use herald_backend::history::EventLog;
    let deadline = tokio::time::Instant::now() + herald_e2e::PATIENCE;
    loop {
        app.store.purge_once().await.unwrap();
        let bounds = app.store.bounds(&topic("order:kept")).await.unwrap();
        if bounds.oldest == oldest {
            return;
        }
        assert!(bounds.oldest < oldest, "purged too much: {bounds:?}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "still retained from {}",
            bounds.oldest
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_relay_killed_before_marking_delivers_each_event_once_with_the_offset_its_commit_gave() {
    let app = spawn_app().await;
    let service = app.service().await;
    let mut sub = service.subscribe("order:fixed").await;
    app.relay_faults.kill_before_mark(2);
    let mut committed = vec![];
    for n in 1..=10 {
        let mut tx = app.store.begin().await.unwrap();
        tx.emit(&topic("order:fixed"), "test.event", json!({ "n": n }))
            .unwrap();
        committed.extend(tx.commit().await.unwrap().events);
    }
    app.relay_faults.killed(2).await;
    for landed in &committed {
        let event = sub.next_event().await;
        assert_eq!(event.offset, landed.position.offset);
        assert_eq!(event.epoch, landed.position.epoch);
        assert_eq!(event.id, landed.id, "the id is fixed at commit too");
    }
    sub.assert_quiet(std::time::Duration::from_millis(200))
        .await;
}

#[tokio::test]
async fn a_durable_publish_key_is_scoped_to_its_publisher() {
    let app = spawn_app().await;
    let a = app.client("svc-a", &["service"]).await;
    let b = app.client("svc-b", &["service"]).await;
    let publish = |client: &herald_e2e::Client| {
        let client = client.clone();
        async move {
            client
                .try_publish("order:keys", "test.event", json!({}), Some("k1"))
                .await
                .unwrap()
        }
    };
    let first = publish(&a).await;
    let theirs = publish(&b).await;
    let retry = publish(&a).await;
    assert_eq!(
        retry.position, first.position,
        "a retry returns the first position"
    );
    assert_eq!(retry.id, first.id);
    assert_eq!(
        theirs.position.unwrap().offset,
        2,
        "another publisher's key is its own"
    );
    let history = a.history("order:keys", None, 10).await.unwrap();
    assert_eq!(history.events.len(), 2, "the retry wrote nothing");
}

#[tokio::test]
async fn a_durable_flag_on_a_memory_topic_is_refused_with_the_setting_to_change() {
    let app = spawn_app().await;
    let error = app
        .service()
        .await
        .try_publish_durable("room:lobby", "test.event", json!({}))
        .await
        .unwrap_err();
    assert_eq!(error.code(), tonic::Code::InvalidArgument);
    assert!(
        error.message().contains("topics.durable"),
        "{}",
        error.message()
    );
}

#[tokio::test]
async fn history_of_a_durable_topic_reads_the_database_after_a_restart() {
    let app = spawn_app().await;
    commit_many(&app, "user:alice", 1, 30, 10).await;
    let app = app.restart().await;
    let history = app
        .service()
        .await
        .history("user:alice", None, 100)
        .await
        .unwrap();
    let offsets: Vec<u64> = history.events.iter().map(|e| e.offset).collect();
    assert_eq!(offsets, range(1, 30));
    assert_eq!(history.position.unwrap().offset, 30);
    let sub = app.service().await.subscribe("user:alice").await;
    assert_eq!(
        sub.position().offset,
        30,
        "subscribed reports the database's top"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_durable_subscriber_that_stops_reading_falls_back_to_the_database_instead_of_ending() {
    let app = spawn_app_with(|config| config.node.subscriber_queue = 8).await;
    let service = app.service().await;
    // Small HTTP/2 windows: the unread stream stops being polled after a few events, its hub
    // queue overflows, and the memory lane would end it as a slow consumer.
    let stalled_endpoint = app
        .endpoint()
        .initial_stream_window_size(Some(65_535))
        .initial_connection_window_size(Some(65_535));
    let stalled = herald_e2e::Client::connect(stalled_endpoint, app.token("ops", &["admin"])).await;
    let mut slow = stalled.subscribe("order:firehose").await;
    let blob = "x".repeat(4096);
    for n in 0..300 {
        service
            .try_publish(
                "order:firehose",
                "test.blob",
                json!({ "n": n, "blob": blob }),
                None,
            )
            .await
            .unwrap();
    }
    assert!(
        app.node.hub_stats().slow_consumers > 0,
        "the hub dropped the stalled stream (the case this test is about)"
    );
    assert_eq!(
        slow.offsets(300).await,
        range(1, 300),
        "it reads on from the database, gapless, and stays open"
    );
    service.publish("order:firehose", 0).await;
    assert_eq!(slow.offsets(1).await, vec![301], "then live again");
}

#[tokio::test]
async fn history_reads_beyond_the_concurrency_bound_are_refused_with_the_setting_named() {
    let app = spawn_app_with(|config| config.node.max_concurrent_history = 0).await;
    let error = app
        .service()
        .await
        .history("order:any", None, 10)
        .await
        .unwrap_err();
    assert_eq!(error.code(), tonic::Code::ResourceExhausted);
    assert!(
        error.message().contains("node.max_concurrent_history"),
        "{}",
        error.message()
    );
}

#[tokio::test]
async fn a_history_page_ends_at_its_byte_budget_with_the_rest_still_readable() {
    let app = spawn_app().await;
    let topic = topic("order:bulky");
    let blob = "x".repeat(60 * 1024);
    for n in 0..100u64 {
        let mut tx = app.store.begin().await.unwrap();
        tx.emit(&topic, "test.blob", json!({ "n": n, "blob": blob }))
            .unwrap();
        tx.commit().await.unwrap();
    }
    let service = app.service().await;
    let first = service.history("order:bulky", None, 1000).await.unwrap();
    let count = first.events.len() as u64;
    assert!(
        (1..100).contains(&count),
        "about {} MiB fit in one page: got {count} events",
        herald_backend::node::MAX_HISTORY_BYTES >> 20
    );
    let next = service
        .history("order:bulky", Some(at(count, app.store.epoch())), 1000)
        .await
        .unwrap();
    assert_eq!(next.events.first().map(|e| e.offset), Some(count + 1));
}
