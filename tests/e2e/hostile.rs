//! Hostile input in one table per transport: each row is an input and the exact error frame,
//! close code, HTTP status or gRPC status it must get; after each table a control client on
//! the same server still receives. Raw RFC 6455 framing violations (unmasked frames, unknown
//! opcodes, oversized or fragmented control frames, invalid UTF-8 in a text frame) are the
//! table in `abuse.rs`; slow request heads and bodies are the `finding_11` tests in `edge.rs`.

use std::time::Duration;

use bytes::Bytes;
use herald_e2e::{
    PATIENCE, TestApp,
    baseline::Baseline,
    edge::{TestEdge, WsClient, spawn_edge_with},
    spawn_app,
};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// What a row sends on its socket.
enum Input {
    /// A raw text frame.
    Text(String),
    /// A request `{"id", "method", "params"}`.
    Request(&'static str, Value),
}

/// What it must get back.
enum Expect {
    /// An error frame with this code whose message contains the word.
    Error(&'static str, &'static str),
    /// The socket closed with this code.
    Close(u16),
}

struct Row {
    case: &'static str,
    /// Authenticate the socket first.
    authed: bool,
    /// Requests sent (and answered) before the input.
    before: Vec<(&'static str, Value)>,
    input: Input,
    expect: Expect,
}

fn row(case: &'static str, authed: bool, input: Input, expect: Expect) -> Row {
    Row {
        case,
        authed,
        before: Vec::new(),
        input,
        expect,
    }
}

async fn control(app: &TestApp, edge: &TestEdge) -> WsClient {
    let mut watcher = edge.connect_as(&app.token("watcher", &[])).await;
    let reply = watcher
        .request("subscribe", json!({ "topic": "room:control" }))
        .await;
    assert!(reply.get("result").is_some(), "{reply}");
    watcher
}

async fn control_receives(app: &TestApp, watcher: &mut WsClient) {
    let position = app.service().await.publish("room:control", 1).await;
    let push = watcher.next_event().await;
    assert_eq!(push["offset"], position.offset.to_string(), "{push}");
}

#[tokio::test]
async fn hostile_websocket_messages_get_the_documented_error_frame_or_close_code() {
    let app = spawn_app().await;
    let edge = spawn_edge_with(&app, |_| {}).await;
    let mut watcher = control(&app, &edge).await;
    let baseline = Baseline::of_edge(&edge).await;
    let alice = app.token("alice", &[]);
    let big = json!({ "topic": "room:a", "type": "x", "data": { "b": "x".repeat(70 * 1024) } });
    let rows = [
        row(
            "bad JSON",
            false,
            Input::Text("this is not json".into()),
            Expect::Error("invalid_argument", ""),
        ),
        row(
            "JSON that is not a request object",
            true,
            Input::Text("[1, 2, 3]".into()),
            Expect::Error("invalid_argument", ""),
        ),
        row(
            "a command before auth",
            false,
            Input::Request("subscribe", json!({ "topic": "room:a" })),
            Expect::Error("unauthenticated", ""),
        ),
        row(
            "an unknown command",
            true,
            Input::Request("teleport", json!({})),
            Expect::Error("invalid_argument", "unknown method"),
        ),
        row(
            "a wrong field type",
            true,
            Input::Request("subscribe", json!({ "topic": 1 })),
            Expect::Error("invalid_argument", ""),
        ),
        row(
            "a wrong type in since",
            true,
            Input::Request(
                "subscribe",
                json!({ "topic": "room:a", "since": { "offset": "x", "epoch": "e" } }),
            ),
            Expect::Error("invalid_argument", ""),
        ),
        row(
            "auth twice",
            true,
            Input::Request("auth", json!({ "token": alice })),
            Expect::Error("failed_precondition", ""),
        ),
        Row {
            before: vec![("subscribe", json!({ "topic": "room:a" }))],
            ..row(
                "a duplicate subscribe",
                true,
                Input::Request("subscribe", json!({ "topic": "room:a" })),
                Expect::Error("already_exists", ""),
            )
        },
        row(
            "an unsubscribe of a topic not subscribed",
            true,
            Input::Request("unsubscribe", json!({ "topic": "room:zzz" })),
            Expect::Error("not_found", ""),
        ),
        row(
            "a topic the caller may not read",
            true,
            Input::Request("subscribe", json!({ "topic": "user:bob" })),
            Expect::Error("permission_denied", ""),
        ),
        row(
            "an unknown topic kind",
            true,
            Input::Request("subscribe", json!({ "topic": "chan:1" })),
            Expect::Error("invalid_argument", ""),
        ),
        row(
            "a bad event type",
            true,
            Input::Request(
                "publish",
                json!({ "topic": "room:a", "type": "bad type", "data": {} }),
            ),
            Expect::Error("invalid_argument", "event type"),
        ),
        row(
            "an internal service through call",
            true,
            Input::Request(
                "call",
                json!({ "rpc": "herald.v1.Edge/Describe", "request": {} }),
            ),
            Expect::Error("not_found", ""),
        ),
        row(
            "a bad token",
            false,
            Input::Request("auth", json!({ "token": "garbage" })),
            Expect::Close(3500),
        ),
        row(
            "an oversize frame (over 64 KiB)",
            true,
            Input::Request("publish", big),
            Expect::Close(1009),
        ),
    ];
    for Row {
        case,
        authed,
        before,
        input,
        expect,
    } in rows
    {
        let mut socket = if authed {
            edge.connect_as(&alice).await
        } else {
            WsClient::connect(&edge.url()).await
        };
        for (method, params) in before {
            let reply = socket.request(method, params).await;
            assert!(reply.get("result").is_some(), "{case}: setup {reply}");
        }
        let reply = match input {
            Input::Text(text) => {
                socket.send_text(text).await;
                socket.next_frame().await
            }
            Input::Request(method, params) => {
                socket
                    .send_text(json!({ "id": 7, "method": method, "params": params }).to_string())
                    .await;
                socket.next_frame().await
            }
        };
        match expect {
            Expect::Error(code, word) => {
                let reply = reply.unwrap_or_else(|closed| panic!("{case}: closed {closed:?}"));
                assert_eq!(reply["error"]["code"], code, "{case}: {reply}");
                let message = reply["error"]["message"].as_str().unwrap_or_default();
                assert!(message.contains(word), "{case}: {reply}");
            }
            Expect::Close(code) => {
                let closed = match reply {
                    Err(closed) => closed,
                    Ok(_) => socket.closed().await,
                };
                assert_eq!(closed.code, code, "{case}: {closed:?}");
            }
        }
    }
    control_receives(&app, &mut watcher).await;
    baseline.assert_edge_returns(&edge).await;
}

/// Sends `head` on a raw connection to `addr`; the HTTP status of the answer, or `None` when
/// the connection was closed without one.
async fn raw_answer(addr: std::net::SocketAddr, head: Vec<u8>) -> Option<u16> {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    // The peer may stop reading and close: a failed write is an answer too.
    let _ = tcp.write_all(&head).await;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(PATIENCE, tcp.read_to_end(&mut answer))
        .await
        .expect("the edge answers or closes in time");
    if read.is_err() && answer.is_empty() {
        return None;
    }
    let text = String::from_utf8_lossy(&answer);
    text.split_whitespace().nth(1).and_then(|c| c.parse().ok())
}

fn upgrade_head(addr: std::net::SocketAddr, extra: &str) -> Vec<u8> {
    format!(
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
    .into_bytes()
}

#[tokio::test]
async fn hostile_websocket_upgrades_are_refused_without_harm_to_other_sockets() {
    let app = spawn_app().await;
    let edge = spawn_edge_with(&app, |config| {
        config.connections.handshake_timeout = Duration::from_secs(1);
    })
    .await;
    let mut watcher = control(&app, &edge).await;
    let baseline = Baseline::of_edge(&edge).await;
    let huge = format!("X-Huge: {}\r\n", "h".repeat(1024 * 1024));
    let many: String = (0..500).map(|n| format!("X-Many-{n}: v\r\n")).collect();
    let mut slow = upgrade_head(edge.addr, "");
    slow.truncate(40);
    let rows: [(&str, Vec<u8>, Option<u16>); 4] = [
        ("a 1 MiB header", upgrade_head(edge.addr, &huge), Some(431)),
        ("500 headers", upgrade_head(edge.addr, &many), Some(431)),
        // Never finished: closed at the handshake deadline without an answer.
        ("a head that stops half way (slow handshake)", slow, None),
        (
            "an upgrade without the WebSocket key",
            format!(
                "GET /ws HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Version: 13\r\n\r\n",
                edge.addr
            )
            .into_bytes(),
            Some(400),
        ),
    ];
    for (case, head, expected) in rows {
        let answer = raw_answer(edge.addr, head).await;
        assert_eq!(answer, expected, "{case}");
    }
    control_receives(&app, &mut watcher).await;
    baseline.assert_edge_returns(&edge).await;
}

/// Sends one raw gRPC message body to `path` and returns the call's `grpc-status`.
async fn raw_grpc(app: &TestApp, path: &str, body: Bytes) -> i32 {
    let tcp = TcpStream::connect(app.addr).await.expect("connect");
    let (client, connection) = h2::client::handshake(tcp).await.expect("HTTP/2 handshake");
    tokio::spawn(connection);
    let mut client = client.ready().await.expect("ready");
    let request = http::Request::builder()
        .method("POST")
        .uri(format!("http://{}{path}", app.addr))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header(
            "authorization",
            format!("Bearer {}", app.token("mallory", &["service"])),
        )
        .body(())
        .expect("a request");
    let (response, mut stream) = client.send_request(request, false).expect("send");
    stream.send_data(body, true).expect("send the body");
    let response = tokio::time::timeout(PATIENCE, response)
        .await
        .expect("answered in time")
        .expect("a response");
    let status_of = |headers: &http::HeaderMap| {
        headers
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
    };
    if let Some(status) = status_of(response.headers()) {
        return status;
    }
    let mut body = response.into_body();
    while let Some(chunk) = body.data().await {
        let _ = chunk;
    }
    let trailers = body
        .trailers()
        .await
        .expect("trailers")
        .expect("a grpc-status trailer");
    status_of(&trailers).expect("a grpc-status trailer")
}

fn framed(flag: u8, declared: u32, bytes: &[u8]) -> Bytes {
    let mut frame = vec![flag];
    frame.extend_from_slice(&declared.to_be_bytes());
    frame.extend_from_slice(bytes);
    Bytes::from(frame)
}

#[tokio::test]
async fn hostile_protobuf_bytes_on_a_grpc_method_get_a_status_and_the_server_goes_on() {
    let app = spawn_app().await;
    let mut control = app
        .client("watcher", &[])
        .await
        .subscribe("room:control")
        .await;
    let garbage = [0xff, 0xff, 0xff, 0xff, 0x0f, 0x12];
    let rows: [(&str, Bytes, tonic::Code); 4] = [
        (
            "bytes that are not a protobuf message",
            framed(0, garbage.len() as u32, &garbage),
            tonic::Code::Internal,
        ),
        (
            "a wrong wire type for a field (topic as a varint)",
            framed(0, 2, &[0x08, 0x01]),
            tonic::Code::Internal,
        ),
        (
            "a message cut short of its declared length",
            framed(0, 100, b"\x0a\x05room"),
            tonic::Code::Internal,
        ),
        (
            "a compressed flag without a negotiated encoding",
            framed(1, 2, &[0x0a, 0x00]),
            tonic::Code::Internal,
        ),
    ];
    for (case, body, code) in rows {
        let status = raw_grpc(&app, "/herald.v1.Rooms/Publish", body).await;
        assert_eq!(status, code as i32, "{case}");
    }
    app.service().await.publish("room:control", 1).await;
    assert_eq!(control.next_event().await.offset, 1);
}
