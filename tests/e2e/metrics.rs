//! `/metrics` on the backend's metrics port and on the edge's HTTP port: a scripted run
//! (connect, subscribe, publish, a bad token, a resume, a slow consumer) moves each counter
//! by exactly what it did, and no label value carries a user id, a topic or a token.

use std::{collections::HashMap, net::SocketAddr, time::Duration};

use herald_e2e::{
    Client, PATIENCE,
    edge::{WsClient, spawn_edge_with},
    range, spawn_app_with,
};
use herald_proto::v1::StreamPosition;
use serde_json::json;

/// A port nobody listens on right now, for the backend's `metrics_addr`.
fn free_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    listener.local_addr().expect("local address")
}

/// `GET /metrics` over HTTP/1.1: the body.
async fn scrape(addr: SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // The backend's metrics port is bound as the server starts, just after `spawn_app`.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut stream = loop {
        match tokio::net::TcpStream::connect(addr).await {
            Ok(stream) => break stream,
            Err(error) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "connect to the metrics port: {error}"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut response = Vec::new();
    tokio::time::timeout(PATIENCE, stream.read_to_end(&mut response))
        .await
        .expect("a response in time")
        .expect("read the response");
    let text = String::from_utf8(response).expect("UTF-8");
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let (_, body) = text.split_once("\r\n\r\n").expect("a body");
    // The edge's responses may be chunked: keep only the metric lines.
    body.lines()
        .filter(|line| line.starts_with("herald_") || line.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every sample, by its name and labels as written (`name{a="b"}`).
fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            Some((name.to_owned(), value.parse().ok()?))
        })
        .collect()
}

struct Scrapes {
    before: HashMap<String, f64>,
    after: HashMap<String, f64>,
}

impl Scrapes {
    fn moved(&self, sample: &str) -> f64 {
        let after = self
            .after
            .get(sample)
            .unwrap_or_else(|| panic!("`{sample}` is not served"));
        after - self.before.get(sample).copied().unwrap_or_default()
    }
}

async fn between(addr: SocketAddr, before: &mut HashMap<String, f64>) -> Scrapes {
    let after = samples(&scrape(addr).await);
    Scrapes {
        before: std::mem::replace(before, after.clone()),
        after,
    }
}

/// No label value of `text` contains any of `secrets`.
fn assert_no_label_carries(text: &str, secrets: &[&str]) {
    for line in text.lines().filter(|line| !line.starts_with('#')) {
        let Some((_, labels)) = line.split_once('{') else {
            continue;
        };
        for secret in secrets {
            assert!(
                !labels.contains(secret),
                "a label carries `{secret}`: {line}"
            );
        }
    }
}

#[tokio::test]
async fn the_backend_metrics_move_by_exactly_what_a_scripted_run_did() {
    let metrics = free_port();
    let app = spawn_app_with(|config| {
        config.metrics_addr = Some(metrics);
        config.node.subscriber_queue = 64;
    })
    .await;
    let topic = "room:metrics-secret-topic";
    let mut last = samples(&scrape(metrics).await);

    // Connect, subscribe, publish.
    let alice = app.client("metrics-user-alice", &[]).await;
    let service = app.service().await;
    let mut subscription = alice.subscribe(topic).await;
    let mut position = StreamPosition::default();
    for n in 1..=3 {
        position = service.publish(topic, n).await;
    }
    assert_eq!(subscription.offsets(3).await, range(1, 3));
    let run = between(metrics, &mut last).await;
    assert_eq!(
        run.moved(r#"herald_subscribes_total{kind="room",lane="memory"}"#),
        1.0
    );
    assert_eq!(
        run.after[r#"herald_subscriptions{kind="room",lane="memory"}"#],
        1.0
    );
    assert_eq!(run.after["herald_online_users"], 1.0);
    assert_eq!(run.moved(r#"herald_publishes_total{lane="memory"}"#), 3.0);
    assert_eq!(run.moved(r#"herald_deliveries_total{lane="memory"}"#), 3.0);
    assert_eq!(run.moved("herald_delivery_lag_seconds_count"), 3.0);
    assert_eq!(
        run.moved(r#"herald_delivery_lag_seconds_bucket{le="+Inf"}"#),
        3.0
    );

    // A bad token.
    let token = "not-a-token-secret-value";
    let stranger = app.client_with_token(token.to_owned()).await;
    assert!(stranger.whoami().await.is_err());
    let run = between(metrics, &mut last).await;
    assert_eq!(
        run.moved(r#"herald_auth_failures_total{reason="malformed"}"#),
        1.0
    );
    assert_eq!(
        run.moved(r#"herald_auth_failures_total{reason="expired"}"#),
        0.0
    );

    // A resume that history covers, and one it cannot (another epoch).
    drop(subscription);
    for n in 4..=5 {
        service.publish(topic, n).await;
    }
    let mut resumed = alice.resume(topic, position.clone()).await;
    assert_eq!(resumed.offsets(2).await, range(4, 5));
    let stale = StreamPosition {
        offset: 1,
        epoch: "another-epoch".into(),
    };
    let _fresh = alice.resume(topic, stale).await;
    let run = between(metrics, &mut last).await;
    assert_eq!(
        run.moved(r#"herald_resumes_total{result="recovered"}"#),
        1.0
    );
    assert_eq!(
        run.moved(r#"herald_resumes_total{result="not_recovered"}"#),
        1.0
    );
    assert_eq!(
        run.moved(r#"herald_subscribes_total{kind="room",lane="memory"}"#),
        2.0
    );
    assert_eq!(run.moved(r#"herald_publishes_total{lane="memory"}"#), 2.0);

    // A slow consumer: a connection with small HTTP/2 windows that reads nothing.
    let stalled_endpoint = app
        .endpoint()
        .initial_stream_window_size(Some(65_535))
        .initial_connection_window_size(Some(65_535));
    let stalled = Client::connect(stalled_endpoint, app.token("metrics-user-slow", &[])).await;
    let mut slow = stalled.subscribe("room:metrics-firehose").await;
    let blob = "x".repeat(4096);
    for n in 0..300 {
        service
            .try_publish(
                "room:metrics-firehose",
                "test.blob",
                json!({ "n": n, "blob": blob }),
                None,
            )
            .await
            .unwrap();
    }
    let (_, status) = slow.drain_until_end().await;
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    let run = between(metrics, &mut last).await;
    assert_eq!(run.moved("herald_slow_consumer_endings_total"), 1.0);
    assert_eq!(run.moved(r#"herald_publishes_total{lane="memory"}"#), 300.0);

    let text = scrape(metrics).await;
    assert_no_label_carries(
        &text,
        &[
            "metrics-user",
            "metrics-secret-topic",
            "metrics-firehose",
            token,
            &app.token("metrics-user-alice", &[]),
        ],
    );
}

#[tokio::test]
async fn a_durable_publish_is_counted_on_its_lane_and_the_outbox_drains() {
    let metrics = free_port();
    let app = spawn_app_with(|config| config.metrics_addr = Some(metrics)).await;
    let mut last = samples(&scrape(metrics).await);
    let service = app.service().await;
    let mut inbox = service.subscribe("user:metrics-durable").await;
    service
        .try_publish_durable("user:metrics-durable", "note", json!({}))
        .await
        .unwrap();
    assert_eq!(inbox.offsets(1).await, range(1, 1));
    // The relay marks a row published (and counts it) just after handing it over.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while samples(&scrape(metrics).await)["herald_outbox_backlog"] != 0.0 {
        assert!(tokio::time::Instant::now() < deadline, "the outbox drains");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let run = between(metrics, &mut last).await;
    assert_eq!(run.moved(r#"herald_publishes_total{lane="durable"}"#), 1.0);
    assert_eq!(run.moved(r#"herald_deliveries_total{lane="durable"}"#), 1.0);
    assert_eq!(
        run.moved(r#"herald_subscribes_total{kind="user",lane="durable"}"#),
        1.0
    );
    assert!(run.moved("herald_relay_batches_total") >= 1.0);
    assert_eq!(run.moved("herald_relayed_events_total"), 1.0);
    assert_eq!(run.after["herald_outbox_backlog"], 0.0);
    assert_eq!(run.after["herald_outbox_oldest_pending_age_seconds"], 0.0);
}

#[tokio::test]
async fn the_edge_metrics_move_by_exactly_what_a_scripted_run_did() {
    let app = spawn_app_with(|_| {}).await;
    let edge = spawn_edge_with(&app, |c| {
        c.limits.max_outbound_bytes = 256 * 1024;
        c.limits.write_timeout = Duration::from_secs(120);
    })
    .await;
    let topic = "room:edge-secret-topic";
    let mut last = samples(&scrape(edge.addr).await);

    // Connect, subscribe, publish.
    let alice_token = app.token("edge-user-alice", &[]);
    let mut alice = edge.connect_as(&alice_token).await;
    let reply = alice.request("subscribe", json!({ "topic": topic })).await;
    assert!(reply.get("result").is_some(), "{reply}");
    let service = app.service().await;
    for n in 1..=2 {
        service.publish(topic, n).await;
    }
    assert_eq!(alice.offsets(2).await, range(1, 2));
    let run = between(edge.addr, &mut last).await;
    assert_eq!(run.after["herald_edge_connections"], 1.0);
    assert_eq!(run.after["herald_edge_authenticated_connections"], 1.0);
    assert_eq!(
        run.moved(r#"herald_edge_subscribes_total{kind="room"}"#),
        1.0
    );
    assert_eq!(run.moved("herald_edge_deliveries_total"), 2.0);
    assert_eq!(run.moved("herald_delivery_lag_seconds_count"), 2.0);

    // A bad token.
    let token = "not-a-token-edge-secret";
    let mut stranger = WsClient::connect(&edge.url()).await;
    stranger
        .send_text(json!({ "id": 1, "method": "auth", "params": { "token": token } }).to_string())
        .await;
    assert_eq!(stranger.closed().await.code, 3500);
    let run = between(edge.addr, &mut last).await;
    assert_eq!(
        run.moved(r#"herald_edge_auth_failures_total{reason="refused"}"#),
        1.0
    );

    // A socket that reads nothing is closed as slow.
    let mut slow = edge.connect_as(&app.token("edge-user-slow", &[])).await;
    let reply = slow
        .request("subscribe", json!({ "topic": "room:edge-firehose" }))
        .await;
    assert!(reply.get("result").is_some());
    let blob = "x".repeat(8 * 1024);
    for n in 0..1500 {
        service
            .try_publish(
                "room:edge-firehose",
                "blob",
                json!({ "n": n, "blob": blob }),
                None,
            )
            .await
            .unwrap();
    }
    assert_eq!(slow.closed().await.code, 3001);
    let run = between(edge.addr, &mut last).await;
    assert_eq!(run.moved("herald_edge_slow_consumer_endings_total"), 1.0);

    let text = scrape(edge.addr).await;
    assert_no_label_carries(
        &text,
        &[
            "edge-user",
            "edge-secret-topic",
            "edge-firehose",
            token,
            &alice_token,
        ],
    );
}
