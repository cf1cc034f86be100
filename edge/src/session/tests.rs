//! Sessions driven through channels, as the server drives one through a WebSocket.
//!
//! The edge in these tests fronts an address where nothing listens: what needs a backend
//! (a verified token, subscriptions, calls) is covered by the end-to-end tests in `tests/`;
//! here is what a session decides by itself.

use std::{sync::Arc, time::Duration};

use axum::extract::ws::{CloseFrame, Message};
use serde_json::{Value, json};
use tokio::{sync::mpsc, task::JoinHandle, time::Instant};
use tokio_stream::wrappers::ReceiverStream;
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError};
use tokio_util::sync::{CancellationToken, PollSender};

use crate::{
    EdgeContext, backends::Backends, config::EdgeConfig, feeds::Feeds, transcode::Transcoder,
};

/// Longer than any deadline a session keeps, so a paused clock reaches the session's first.
const PATIENCE: Duration = Duration::from_secs(60);

/// The peer's side of a session under test.
struct Peer {
    to_session: mpsc::Sender<Result<Message, axum::Error>>,
    from_session: mpsc::Receiver<Message>,
    shutdown: CancellationToken,
    session: JoinHandle<()>,
}

/// A backend URL where nothing listens: every backend call fails as unavailable.
fn nowhere() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    let addr = listener.local_addr().expect("a bound address");
    format!("http://{addr}")
}

async fn connect() -> Peer {
    connect_with(|_| {}).await
}

/// Starts a session, without a bearer token, after `configure` adjusted the edge's settings.
async fn connect_with(configure: impl FnOnce(&mut EdgeConfig)) -> Peer {
    let mut config = EdgeConfig {
        backends: vec![nowhere()],
        ..EdgeConfig::default()
    };
    configure(&mut config);
    let shutdown = CancellationToken::new();
    let backends =
        Backends::new(&config.backends, 1, Arc::new(String::new)).expect("a valid backend URL");
    let backends = Arc::new(backends);
    let metrics = crate::metrics::EdgeMetrics::new();
    let ctx = Arc::new(EdgeContext {
        feeds: Feeds::new(backends.clone(), shutdown.clone()),
        verifier: crate::verify::Verifier::spawn(backends.clone(), metrics.clone()),
        transcoder: Transcoder::new(herald_proto::FILE_DESCRIPTOR_SET)
            .expect("the compiled descriptors"),
        backends,
        config,
        shutdown: shutdown.clone(),
        users: crate::slots::Slots::new(0),
        connections: std::sync::OnceLock::new(),
        metrics,
    });
    let (to_session, inbound) = mpsc::channel(16);
    let (outbound, from_session) = mpsc::channel(16);
    let sink = PollSender::new(outbound);
    let stream = ReceiverStream::new(inbound);
    let session = tokio::spawn(super::run(sink, stream, ctx, None));
    Peer {
        to_session,
        from_session,
        shutdown,
        session,
    }
}

impl Peer {
    async fn send(&self, message: Result<Message, axum::Error>) {
        self.to_session
            .send(message)
            .await
            .expect("the session reads its socket");
    }

    async fn send_text(&self, text: &str) {
        self.send(Ok(Message::Text(text.into()))).await;
    }

    /// Sends request `id` and returns the next frame, its reply.
    async fn request(&mut self, id: u64, method: &str, params: Value) -> Value {
        let request = json!({ "id": id, "method": method, "params": params });
        self.send_text(&request.to_string()).await;
        self.next_frame().await
    }

    async fn next(&mut self) -> Option<Message> {
        tokio::time::timeout(PATIENCE, self.from_session.recv())
            .await
            .expect("the session writes or ends in time")
    }

    async fn next_frame(&mut self) -> Value {
        match self.next().await {
            Some(Message::Text(text)) => serde_json::from_str(text.as_str()).expect("JSON frames"),
            other => panic!("expected a text frame, got {other:?}"),
        }
    }

    async fn close_frame(&mut self) -> CloseFrame {
        match self.next().await {
            Some(Message::Close(Some(frame))) => frame,
            other => panic!("expected a close frame, got {other:?}"),
        }
    }

    /// Answers the session's close frame, as a browser does, and waits for the session to end.
    async fn finish(self) {
        let _ = self.to_session.send(Ok(Message::Close(None))).await;
        tokio::time::timeout(PATIENCE, self.session)
            .await
            .expect("the session ends in time")
            .expect("the session does not panic");
    }
}

fn error_code(reply: &Value) -> &str {
    reply["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("expected an error, got {reply}"))
}

#[tokio::test]
async fn ping_is_answered_with_an_empty_result_even_before_auth() {
    let mut peer = connect().await;
    let reply = peer.request(1, "ping", json!({})).await;
    assert_eq!(reply, json!({ "id": 1, "result": {} }));
    peer.finish().await;
}

#[tokio::test]
async fn a_request_before_auth_is_refused_and_the_socket_stays_open() {
    let mut peer = connect().await;
    let reply = peer
        .request(1, "subscribe", json!({ "topic": "room:a" }))
        .await;
    assert_eq!(reply["id"], 1);
    assert_eq!(error_code(&reply), "unauthenticated");
    assert_eq!(reply["error"]["message"], "send `auth` with a token first");
    let call = json!({ "rpc": "herald.v1.Auth/Whoami", "request": {} });
    let reply = peer.request(2, "call", call).await;
    assert_eq!(error_code(&reply), "unauthenticated");
    let reply = peer.request(3, "ping", json!({})).await;
    assert_eq!(reply["result"], json!({}), "{reply}");
    peer.finish().await;
}

#[tokio::test]
async fn a_frame_that_is_not_json_gets_an_invalid_argument_error_without_an_id() {
    let mut peer = connect().await;
    peer.send_text("this is not json").await;
    let reply = peer.next_frame().await;
    assert_eq!(error_code(&reply), "invalid_argument");
    assert_eq!(reply["id"], Value::Null);
    let reply = peer.request(4, "launch", json!({})).await;
    assert_eq!(reply["id"], 4, "a readable id is kept");
    assert_eq!(error_code(&reply), "invalid_argument");
    let message = reply["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("unknown method `launch`"), "{reply}");
    peer.finish().await;
}

#[tokio::test]
async fn a_binary_frame_gets_an_invalid_argument_error() {
    let mut peer = connect().await;
    peer.send(Ok(Message::Binary(vec![1, 2, 3].into()))).await;
    let reply = peer.next_frame().await;
    assert_eq!(error_code(&reply), "invalid_argument");
    assert_eq!(reply["id"], Value::Null);
    peer.finish().await;
}

#[tokio::test]
async fn an_oversize_frame_closes_the_socket_with_1009_and_names_the_configured_limit() {
    let mut peer = connect_with(|c| c.limits.max_frame_bytes = 1000).await;
    // What the WebSocket layer reports when a peer's frame exceeds `max_frame_bytes`.
    let too_long = CapacityError::MessageTooLong {
        size: 1500,
        max_size: 1000,
    };
    peer.send(Err(axum::Error::new(WsError::Capacity(too_long))))
        .await;
    let close = peer.close_frame().await;
    assert_eq!(close.code, 1009);
    assert_eq!(
        close.reason.as_str(),
        "frame too large: the frame is 1500 bytes; the limit is 1000 bytes (edge.limits.max_frame_bytes)"
    );
    peer.finish().await;
}

#[tokio::test(start_paused = true)]
async fn a_socket_that_does_not_authenticate_in_time_is_closed_as_stale() {
    let auth_timeout = Duration::from_secs(7);
    let started = Instant::now();
    let mut peer = connect_with(|c| c.limits.auth_timeout = auth_timeout).await;
    let close = peer.close_frame().await;
    assert_eq!(close.code, 3004);
    assert_eq!(
        close.reason.as_str(),
        "stale: no auth within the time limit"
    );
    assert!(started.elapsed() >= auth_timeout, "{:?}", started.elapsed());
    peer.finish().await;
}

#[tokio::test]
async fn auth_is_answered_unavailable_and_closes_the_socket_when_no_backend_answers() {
    let mut peer = connect().await;
    let reply = peer.request(1, "auth", json!({ "token": "t" })).await;
    assert_eq!(reply["id"], 1);
    assert_eq!(error_code(&reply), "unavailable", "{reply}");
    let close = peer.close_frame().await;
    assert_eq!(close.code, 3005);
    assert_eq!(
        close.reason.as_str(),
        "the backend is unavailable: reconnect"
    );
    peer.finish().await;
}

#[tokio::test]
async fn a_second_auth_while_the_first_is_verified_is_refused() {
    let mut peer = connect().await;
    for id in [1, 2] {
        let auth = json!({ "id": id, "method": "auth", "params": { "token": "t" } });
        peer.send_text(&auth.to_string()).await;
    }
    let reply = peer.next_frame().await;
    assert_eq!(reply["id"], 2, "the second is answered first: {reply}");
    assert_eq!(error_code(&reply), "failed_precondition");
    assert_eq!(reply["error"]["message"], "`auth` is already in progress");
    peer.finish().await;
}

#[tokio::test]
async fn shutdown_closes_the_socket_with_the_reconnect_code() {
    let mut peer = connect().await;
    peer.shutdown.cancel();
    let close = peer.close_frame().await;
    assert_eq!(close.code, 3000);
    assert_eq!(close.reason.as_str(), "shutdown: reconnect");
    peer.finish().await;
}

#[tokio::test]
async fn a_peer_that_goes_away_ends_the_session_without_a_close_frame() {
    let mut peer = connect().await;
    peer.send(Err(axum::Error::new(WsError::ConnectionClosed)))
        .await;
    assert!(
        peer.next().await.is_none(),
        "nothing is sent to a gone peer"
    );
    peer.finish().await;
}
