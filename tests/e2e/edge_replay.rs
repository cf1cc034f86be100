//! Replays through the edge's shared stream for a topic: a socket resuming a durable topic
//! while the relay lags (the stream opens at the database's top, above what the broker's
//! cache and so the live stream has yet, and the replay must bring the events in between from
//! the database), and many large replays on one stream at once.

use herald_e2e::{edge::spawn_edge, range, spawn_app};
use serde_json::json;

#[tokio::test]
async fn a_socket_resuming_while_the_relay_lags_receives_the_committed_events_the_cache_lacks() {
    let app = spawn_app().await;
    let edge = spawn_edge(&app).await;
    let service = app.service().await;
    let mut relayed = service.subscribe("order:lag").await;
    let mut last = None;
    for n in 1..=18 {
        last = Some(service.publish("order:lag", n).await);
    }
    assert_eq!(
        relayed.offsets(18).await,
        range(1, 18),
        "1..18 are in the cache"
    );
    let epoch = last.unwrap().epoch;

    // 19..22 commit while the relay cannot hand anything to the broker.
    app.relay_faults.kill_before_publish(u64::MAX);
    for n in 19..=22 {
        service.publish("order:lag", n).await;
    }
    let mut socket = edge.connect_as(&app.token("reader", &["service"])).await;
    let reply = socket
        .request(
            "subscribe",
            json!({ "topic": "order:lag", "since": { "offset": "18", "epoch": epoch } }),
        )
        .await;
    assert_eq!(reply["result"]["recovered"], true, "{reply}");
    assert_eq!(reply["result"]["position"]["offset"], "22", "{reply}");

    app.relay_faults.kill_before_publish(0);
    service.publish("order:lag", 23).await;
    assert_eq!(
        socket.offsets(5).await,
        range(19, 23),
        "nothing skipped, nothing twice"
    );
}

/// Finding 6 of the hardening review: the edge's shared stream for a topic once awaited
/// sending a request to the backend inside the loop that reads its frames, while the backend
/// awaited sending frames counted, not sized, so many large replays attached to one feed at
/// once could stall it and every socket on it. Now the two directions never wait for each
/// other and replays are paged by bytes.
#[tokio::test]
async fn finding_6_many_large_replays_on_one_feed_stall_neither_it_nor_its_live_sockets() {
    const EVENTS: u64 = 400;
    const REPLAYS: usize = 16;
    let app = spawn_app().await;
    let edge = spawn_edge(&app).await;
    let service = app.service().await;
    let topic = "order:big";
    // 400 events of 4 KiB each: every replay is 1.6 MB, several pages of the socket's budget.
    let filler = "x".repeat(4 * 1024);
    for chunk in (1..=EVENTS).collect::<Vec<_>>().chunks(50) {
        let publishes = chunk.iter().map(|n| {
            service.try_publish(
                topic,
                "test.event",
                json!({ "n": n, "filler": filler }),
                None,
            )
        });
        for published in futures_util::future::join_all(publishes).await {
            published.expect("publish");
        }
    }

    let token = app.token("reader", &["service"]);
    let mut live = edge.connect_as(&token).await;
    let reply = live.request("subscribe", json!({ "topic": topic })).await;
    assert_eq!(reply["result"]["position"]["offset"], "400", "{reply}");
    let epoch = reply["result"]["position"]["epoch"].clone();

    // Every replay attaches to the one feed at once; each socket reads as it arrives.
    let mut readers = Vec::new();
    for _ in 0..REPLAYS {
        let mut socket = edge.connect_as(&token).await;
        let reply = socket
            .request(
                "subscribe",
                json!({ "topic": topic, "since": { "offset": "0", "epoch": epoch } }),
            )
            .await;
        assert_eq!(reply["result"]["recovered"], true, "{reply}");
        readers.push(tokio::spawn(async move {
            socket.offsets(EVENTS as usize + 1).await
        }));
    }
    service.publish(topic, EVENTS + 1).await;
    assert_eq!(
        live.offsets(1).await,
        vec![EVENTS + 1],
        "the live socket is not held up by the replays"
    );
    for reader in readers {
        assert_eq!(
            reader.await.expect("the reader ran"),
            range(1, EVENTS + 1),
            "every replay completes, then the live event, each once"
        );
    }
}
