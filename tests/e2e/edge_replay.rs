//! A socket resuming a durable topic through the edge while the relay lags: the edge's
//! shared stream opens at the database's top, above what the broker's cache (and so the live
//! stream) has yet, and the replay must bring the events in between from the database.

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
