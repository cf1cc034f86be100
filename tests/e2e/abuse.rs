//! HTTP/2 abuse against the backend: a hostile client on its own connection, a control client
//! on another that must keep receiving every event, in order, throughout — and nothing the
//! hostile client opened may stay behind once it is gone.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use herald_e2e::{PATIENCE, Subscription, TestApp, range, spawn_app};
use herald_proto::v1::SubscribeRequest;
use prost::Message;
use tokio::{io::AsyncWriteExt, net::TcpStream, task::JoinHandle};

/// A subscriber to `room:control` and a publisher that keeps publishing to it until stopped.
struct Control {
    subscription: Subscription,
    publishing: Arc<AtomicBool>,
    publisher: JoinHandle<u64>,
}

impl Control {
    async fn start(app: &TestApp) -> Control {
        let subscription = app
            .client("watcher", &[])
            .await
            .subscribe("room:control")
            .await;
        let publishing = Arc::new(AtomicBool::new(true));
        let service = app.service().await;
        let running = publishing.clone();
        let publisher = tokio::spawn(async move {
            let mut n = 0;
            while running.load(Ordering::Relaxed) || n < 20 {
                n += 1;
                service.publish("room:control", n).await;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            n
        });
        Control {
            subscription,
            publishing,
            publisher,
        }
    }

    /// Stops publishing and checks the control subscriber got every event, in order.
    async fn assert_every_event_arrived(mut self) {
        self.publishing.store(false, Ordering::Relaxed);
        let published = self.publisher.await.expect("the publisher ran");
        let received = self
            .subscription
            .offsets(usize::try_from(published).expect("small"))
            .await;
        assert_eq!(
            received,
            range(1, published),
            "the control subscriber lost nothing"
        );
    }
}

/// One gRPC message frame: the uncompressed flag, the length, the message.
fn grpc_frame(message: &impl Message) -> Bytes {
    let body = message.encode_to_vec();
    let mut frame = Vec::with_capacity(5 + body.len());
    frame.push(0);
    frame.extend_from_slice(&u32::try_from(body.len()).expect("small").to_be_bytes());
    frame.extend_from_slice(&body);
    Bytes::from(frame)
}

/// Waits until the hub holds exactly `expected` subscribers.
async fn subscribers_settle_at(app: &TestApp, expected: u64) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let now = app.node.hub_stats().subscribers;
        if now == expected {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{now} subscribers are left in the hub; {expected} expected once the hostile \
             connection is gone"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn rapid_resets_end_only_their_own_streams_and_leave_no_subscription_behind() {
    const STREAMS: usize = 3_000;
    let app = spawn_app().await;
    let control = Control::start(&app).await;
    let baseline = app.node.hub_stats().subscribers;

    let tcp = TcpStream::connect(app.addr).await.expect("connect");
    let (client, connection) = h2::client::handshake(tcp).await.expect("HTTP/2 handshake");
    let connection = tokio::spawn(connection);
    let bearer = format!("Bearer {}", app.token("mallory", &[]));
    let mut client = Some(client);
    let mut opened = 0;
    let mut answered = Vec::new();
    for n in 0..STREAMS {
        let Some(ready) = client.take() else { break };
        let mut ready = match ready.ready().await {
            Ok(ready) => ready,
            Err(_) => break, // the server ended the connection (GOAWAY): its right
        };
        let request = http::Request::builder()
            .method("POST")
            .uri(format!("http://{}/herald.v1.Rooms/Subscribe", app.addr))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("authorization", bearer.as_str())
            .body(())
            .expect("a request");
        let Ok((response, mut body)) = ready.send_request(request, false) else {
            break;
        };
        opened += 1;
        let frame = grpc_frame(&SubscribeRequest {
            topic: format!("room:abuse-{}", n % 10),
            since: None,
        });
        match n % 3 {
            // Reset right after the headers: the classic rapid reset.
            0 => body.send_reset(h2::Reason::CANCEL),
            // Reset after the request, while the server subscribes.
            1 => {
                let _ = body.send_data(frame, false);
                body.send_reset(h2::Reason::CANCEL);
            }
            // Subscribed, then dropped: the response stream is reset by the client.
            _ => {
                let _ = body.send_data(frame, true);
                if let Ok(Ok(response)) = tokio::time::timeout(PATIENCE, response).await {
                    answered.push(response.status());
                }
            }
        }
        client = Some(ready);
    }
    drop(client);
    let _ = tokio::time::timeout(PATIENCE, connection).await;

    assert!(opened > 0, "the hostile client opened streams");
    assert!(
        answered.iter().all(|status| status.is_success()),
        "subscriptions that were answered were answered as gRPC: {answered:?}"
    );
    subscribers_settle_at(&app, baseline).await;
    control.assert_every_event_arrived().await;
    // And the server still takes new clients.
    let mut fresh = app
        .client("after", &[])
        .await
        .subscribe("room:abuse-1")
        .await;
    app.service().await.publish("room:abuse-1", 1).await;
    assert_eq!(fresh.next_event().await.offset, 1);
}

#[tokio::test]
async fn a_ping_flood_does_not_stop_other_clients_and_its_connection_leaves_nothing_behind() {
    const PINGS: usize = 200_000;
    let app = spawn_app().await;
    let control = Control::start(&app).await;
    let baseline = app.node.hub_stats().subscribers;

    // Raw frames: the connection preface, empty SETTINGS, then PING after PING, never reading
    // the acknowledgements.
    let mut tcp = TcpStream::connect(app.addr).await.expect("connect");
    let mut flood = Vec::with_capacity(24 + 9 + PINGS * 17);
    flood.extend_from_slice(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
    flood.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    for n in 0..PINGS {
        flood.extend_from_slice(&[0, 0, 8, 6, 0, 0, 0, 0, 0]);
        flood.extend_from_slice(&(n as u64).to_be_bytes());
    }
    // The server may stop reading (backpressure) or close the connection: either is fine, so
    // the write is bounded by time and its outcome is not asserted.
    let _ = tokio::time::timeout(Duration::from_secs(3), tcp.write_all(&flood)).await;

    // While the flood sits on its connection, others are served.
    let mut health = app.health().await;
    let check = tokio::time::timeout(
        PATIENCE,
        health.check(tonic_health::pb::HealthCheckRequest::default()),
    )
    .await
    .expect("a health check answers during the flood");
    assert!(check.is_ok(), "{check:?}");
    drop(tcp);

    subscribers_settle_at(&app, baseline).await;
    control.assert_every_event_arrived().await;
}
