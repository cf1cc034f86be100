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

/// A WebSocket opened by hand on a raw TCP connection, so a test can write frames no client
/// library would send.
struct RawSocket {
    tcp: TcpStream,
}

impl RawSocket {
    async fn open(edge: &herald_e2e::edge::TestEdge) -> RawSocket {
        use tokio::io::AsyncReadExt;
        let mut tcp = TcpStream::connect(edge.addr).await.expect("connect");
        let upgrade = format!(
            "GET /ws HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            edge.addr
        );
        tcp.write_all(upgrade.as_bytes()).await.expect("write");
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            let read = tokio::time::timeout(PATIENCE, tcp.read(&mut byte))
                .await
                .expect("the upgrade is answered in time")
                .expect("read");
            assert_eq!(read, 1, "the edge answered the upgrade");
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head);
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        RawSocket { tcp }
    }

    /// Writes one frame: `first` is FIN, RSV and opcode; the payload is masked when `masked`.
    async fn write_frame(&mut self, first: u8, payload: &[u8], masked: bool) {
        let mut frame = vec![first];
        let mask_bit = if masked { 0x80 } else { 0 };
        match payload.len() {
            len @ 0..=125 => frame.push(mask_bit | len as u8),
            len => {
                frame.push(mask_bit | 126);
                frame.extend_from_slice(&u16::try_from(len).expect("short").to_be_bytes());
            }
        }
        let key = [0x12, 0x34, 0x56, 0x78];
        if masked {
            frame.extend_from_slice(&key);
            frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        } else {
            frame.extend_from_slice(payload);
        }
        self.tcp.write_all(&frame).await.expect("write a frame");
    }

    /// Reads server frames until a Close: its code and reason (`None` if the connection ended
    /// without one).
    async fn close_frame(&mut self) -> Option<(u16, String)> {
        use tokio::io::AsyncReadExt;
        loop {
            let mut head = [0u8; 2];
            let read = tokio::time::timeout(PATIENCE, self.tcp.read_exact(&mut head))
                .await
                .expect("the edge answers in time");
            read.ok()?;
            let len = match head[1] & 0x7f {
                126 => {
                    let mut len = [0u8; 2];
                    self.tcp.read_exact(&mut len).await.ok()?;
                    usize::from(u16::from_be_bytes(len))
                }
                127 => {
                    let mut len = [0u8; 8];
                    self.tcp.read_exact(&mut len).await.ok()?;
                    usize::try_from(u64::from_be_bytes(len)).ok()?
                }
                len => usize::from(len),
            };
            let mut payload = vec![0u8; len];
            self.tcp.read_exact(&mut payload).await.ok()?;
            if head[0] & 0x0f == 0x8 {
                let code = u16::from_be_bytes([*payload.first()?, *payload.get(1)?]);
                return Some((code, String::from_utf8_lossy(&payload[2..]).into_owned()));
            }
        }
    }
}

/// One frame that breaks RFC 6455, sent after `auth`, and the close it must get.
struct Violation {
    case: &'static str,
    /// FIN, RSV and opcode.
    first: u8,
    payload: Vec<u8>,
    masked: bool,
    code: u16,
    /// A word the close reason must contain.
    word: &'static str,
}

impl Violation {
    fn masked(
        case: &'static str,
        first: u8,
        payload: &[u8],
        code: u16,
        word: &'static str,
    ) -> Self {
        Violation {
            case,
            first,
            payload: payload.to_vec(),
            masked: true,
            code,
            word,
        }
    }
}

#[tokio::test]
async fn websocket_framing_violations_are_closed_with_the_rfc_code_naming_the_rule() {
    let app = spawn_app().await;
    let edge = herald_e2e::edge::spawn_edge(&app).await;
    let mut watcher = edge.connect_as(&app.token("watcher", &[])).await;
    let reply = watcher
        .request("subscribe", serde_json::json!({ "topic": "room:control" }))
        .await;
    assert!(reply.get("result").is_some(), "{reply}");
    let auth = format!(
        r#"{{"id":1,"method":"auth","params":{{"token":"{}"}}}}"#,
        app.token("mallory", &[])
    );
    let cases = [
        Violation::masked("an unknown data opcode", 0x83, b"{}", 1002, "opcode"),
        Violation::masked("an unknown control opcode", 0x8b, b"", 1002, "opcode"),
        Violation::masked(
            "a ping over 125 bytes",
            0x89,
            &[b'p'; 200],
            1002,
            "control frame",
        ),
        Violation::masked("a fragmented ping", 0x09, b"ping", 1002, "fragmented"),
        Violation::masked(
            "invalid UTF-8 in a text frame",
            0x81,
            &[0xc3, 0x28],
            1007,
            "UTF-8",
        ),
        Violation {
            masked: false,
            ..Violation::masked("an unmasked frame", 0x81, b"{}", 1002, "unmasked")
        },
    ];
    for Violation {
        case,
        first,
        payload,
        masked,
        code,
        word,
    } in cases
    {
        let mut socket = RawSocket::open(&edge).await;
        socket.write_frame(0x81, auth.as_bytes(), true).await;
        socket.write_frame(first, &payload, masked).await;
        let close = socket.close_frame().await;
        let (got, reason) = close.unwrap_or_else(|| panic!("{case}: no close frame"));
        assert_eq!(got, code, "{case}: {reason}");
        assert!(
            reason.to_lowercase().contains(&word.to_lowercase()),
            "{case}: the reason names the rule: {reason}"
        );
    }
    // The well-behaved socket on the same edge goes on.
    app.service().await.publish("room:control", 1).await;
    assert_eq!(watcher.next_event().await["offset"], "1");
}
