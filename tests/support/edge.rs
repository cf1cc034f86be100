//! Edge harness: [`spawn_edge`] starts a real edge in front of a [`TestApp`] on port 0, and
//! [`WsClient`] speaks the browser protocol over a real WebSocket.

use std::{collections::VecDeque, net::SocketAddr, sync::Arc, time::Duration};

use futures_util::{SinkExt, StreamExt};
use herald_backend::auth::dev_key::{self, TokenClaims};
use herald_edge::EdgeConfig;
use serde_json::{Value, json};
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream,
    tungstenite::{Message, client::IntoClientRequest, protocol::frame::coding::CloseCode},
};
use tokio_util::sync::CancellationToken;

use crate::{PATIENCE, SECRET, TestApp};

pub struct TestEdge {
    pub addr: SocketAddr,
    shutdown: CancellationToken,
    server: JoinHandle<Result<(), herald_edge::EdgeError>>,
}

/// Starts an edge in front of `app`, after `configure` adjusted its settings.
pub async fn spawn_edge_with(app: &TestApp, configure: impl FnOnce(&mut EdgeConfig)) -> TestEdge {
    spawn_edge_for(&[app.addr], configure).await
}

pub async fn spawn_edge(app: &TestApp) -> TestEdge {
    spawn_edge_with(app, |_| {}).await
}

/// Starts an edge in front of several backends.
pub async fn spawn_edge_for(
    backends: &[SocketAddr],
    configure: impl FnOnce(&mut EdgeConfig),
) -> TestEdge {
    let mut config = EdgeConfig {
        backends: backends.iter().map(|a| format!("http://{a}")).collect(),
        ..EdgeConfig::default()
    };
    configure(&mut config);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind port 0");
    let addr = listener.local_addr().expect("edge address");
    let shutdown = CancellationToken::new();
    let token: herald_edge::ServiceToken = Arc::new(|| {
        dev_key::sign_hs256(
            SECRET,
            &TokenClaims::new("test-edge", &["service"], Duration::from_secs(3600)),
        )
        .expect("sign the edge token")
    });
    let server = tokio::spawn(herald_edge::run(listener, config, token, shutdown.clone()));
    TestEdge {
        addr,
        shutdown,
        server,
    }
}

impl TestEdge {
    pub fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// A socket that has authenticated with `token`.
    pub async fn connect_as(&self, token: &str) -> WsClient {
        let mut client = WsClient::connect(&self.url()).await;
        let reply = client.request("auth", json!({ "token": token })).await;
        assert!(reply.get("result").is_some(), "auth failed: {reply}");
        client
    }

    pub async fn shutdown(self) {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(PATIENCE, self.server).await;
    }

    /// Waits for the edge to stop by itself (a refused configuration) and returns its end.
    pub async fn exit(self) -> Result<(), herald_edge::EdgeError> {
        tokio::time::timeout(PATIENCE, self.server)
            .await
            .expect("the edge stops in time")
            .expect("the edge task does not panic")
    }

    /// Stops the edge abruptly: its task is aborted, every socket drops without a close frame.
    pub fn kill(self) {
        self.server.abort();
    }
}

type Socket = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

/// A browser-protocol client over a real WebSocket.
pub struct WsClient {
    socket: Socket,
    next_id: u64,
    /// Pushes that arrived while waiting for a reply.
    pushes: VecDeque<Value>,
    /// Replies that arrived while waiting for something else.
    replies: Vec<Value>,
}

/// How a socket ended.
#[derive(Debug, PartialEq)]
pub struct Closed {
    pub code: u16,
    pub reason: String,
}

impl WsClient {
    pub async fn connect(url: &str) -> WsClient {
        Self::connect_with(url.into_client_request().expect("ws url")).await
    }

    pub async fn connect_with(request: http::Request<()>) -> WsClient {
        let (socket, _) = tokio_tungstenite::connect_async(request)
            .await
            .expect("connect to the edge");
        WsClient {
            socket,
            next_id: 1,
            pushes: VecDeque::new(),
            replies: Vec::new(),
        }
    }

    pub async fn send_text(&mut self, text: String) {
        self.socket
            .send(Message::text(text))
            .await
            .expect("send a frame");
    }

    /// Sends a request and returns its reply frame (`result` or `error`).
    pub async fn request(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        self.send_text(json!({ "id": id, "method": method, "params": params }).to_string())
            .await;
        self.reply_to(id).await
    }

    /// Waits for the reply to `id`, keeping pushes and other replies for later.
    pub async fn reply_to(&mut self, id: u64) -> Value {
        loop {
            let is_reply = |frame: &Value| frame.get("id").and_then(Value::as_u64) == Some(id);
            if let Some(index) = self.replies.iter().position(is_reply) {
                return self.replies.swap_remove(index);
            }
            self.read_one("a reply").await;
        }
    }

    /// The next push (event, presence or unsubscribed), keeping replies for later.
    pub async fn next_push(&mut self) -> Value {
        loop {
            if let Some(push) = self.pushes.pop_front() {
                return push;
            }
            self.read_one("a push").await;
        }
    }

    /// Reads one frame and files it as a reply (it has an `id`) or a push.
    async fn read_one(&mut self, waiting_for: &str) {
        let frame = self.next_frame().await.unwrap_or_else(|closed| {
            panic!("socket closed while waiting for {waiting_for}: {closed:?}")
        });
        if frame.get("id").is_some() {
            self.replies.push(frame);
        } else {
            self.pushes.push_back(frame);
        }
    }

    /// The next event push, skipping presence pushes.
    pub async fn next_event(&mut self) -> Value {
        loop {
            let push = self.next_push().await;
            if push.get("event").is_some() {
                return push;
            }
            assert!(
                push.get("presence").is_some(),
                "expected an event, got {push}"
            );
        }
    }

    /// The next `n` event offsets.
    pub async fn offsets(&mut self, n: usize) -> Vec<u64> {
        let mut offsets = Vec::with_capacity(n);
        for _ in 0..n {
            let push = self.next_event().await;
            offsets.push(
                push["offset"]
                    .as_str()
                    .and_then(|o| o.parse().ok())
                    .expect("offset is a decimal string"),
            );
        }
        offsets
    }

    /// The next text frame as JSON, or how the socket closed.
    pub async fn next_frame(&mut self) -> Result<Value, Closed> {
        loop {
            let message = tokio::time::timeout(PATIENCE, self.socket.next())
                .await
                .expect("a frame arrives in time");
            match message {
                Some(Ok(Message::Text(text))) => {
                    return Ok(serde_json::from_str(&text).expect("frames are JSON"));
                }
                Some(Ok(Message::Close(frame))) => {
                    return Err(frame.map_or(
                        Closed {
                            code: 1005,
                            reason: String::new(),
                        },
                        |f| Closed {
                            code: u16::from(f.code),
                            reason: f.reason.to_string(),
                        },
                    ));
                }
                Some(Ok(_)) => continue,
                Some(Err(error)) => {
                    return Err(Closed {
                        code: 1006,
                        reason: error.to_string(),
                    });
                }
                None => {
                    return Err(Closed {
                        code: 1006,
                        reason: "stream ended".into(),
                    });
                }
            }
        }
    }

    /// Reads until the socket closes and returns the close code, ignoring other frames.
    pub async fn closed(&mut self) -> Closed {
        loop {
            if let Err(closed) = self.next_frame().await {
                return closed;
            }
        }
    }

    pub async fn close(&mut self) {
        let _ = self
            .socket
            .close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
                code: CloseCode::Normal,
                reason: "bye".into(),
            }))
            .await;
    }
}

/// GETs `path` from `addr` with a bare HTTP/1.1 request (`connection: close`) and returns the
/// whole answer: status line, headers and body.
pub async fn http_get(addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send the request");
    let mut response = Vec::new();
    tokio::time::timeout(PATIENCE, stream.read_to_end(&mut response))
        .await
        .expect("a response in time")
        .expect("read the response");
    String::from_utf8_lossy(&response).into_owned()
}

/// GETs `path` from `addr` and returns the status code.
pub async fn http_status(addr: SocketAddr, path: &str) -> u16 {
    let text = http_get(addr, path).await;
    text.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {text}"))
}
