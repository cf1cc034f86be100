//! A WebSocket client that behaves like a user's SDK: it reconnects with exponential backoff
//! and full jitter, authenticates again, resubscribes every topic with `since` = the last
//! event it processed, and follows the protocol's documented answers (`unsubscribed` with a
//! reconnect-class code: resubscribe; `recovered = false`: the gap is reported). Every event it
//! receives goes to a [`HistoryChecker`]. [`Publisher`] publishes through a socket the same
//! way, retrying each publish with its idempotency key until it is acknowledged.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::history_checker::HistoryChecker;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Exponential backoff with full jitter: a random wait in `0..min(cap, base·2^attempt)`.
pub fn backoff(attempt: u32, base: Duration, cap: Duration) -> Duration {
    let ceiling = base
        .saturating_mul(1 << attempt.min(16))
        .min(cap)
        .as_millis()
        .max(1);
    Duration::from_millis(rand::random::<u64>() % u64::try_from(ceiling).unwrap_or(1) + 1)
}

/// What a client reports while it runs.
#[derive(Default, Debug)]
pub struct ClientState {
    /// Every topic is subscribed on the current socket.
    pub subscribed: AtomicBool,
    /// Sockets opened after the first.
    pub reconnects: AtomicU64,
    /// `recovered = false` answers to a resume.
    pub unrecovered: AtomicU64,
    /// `unsubscribed` pushes received.
    pub unsubscribed: AtomicU64,
}

pub struct SdkClient {
    pub name: String,
    pub url: String,
    pub token: String,
    pub topics: Vec<String>,
    pub checker: Arc<HistoryChecker>,
    pub state: Arc<ClientState>,
    /// Backoff of the reconnect loop.
    pub base: Duration,
    pub cap: Duration,
}

/// The last event processed on a topic.
#[derive(Clone, Debug)]
struct Last {
    offset: u64,
    epoch: String,
}

impl SdkClient {
    pub fn new(
        name: &str,
        url: &str,
        token: String,
        topics: &[&str],
        checker: Arc<HistoryChecker>,
    ) -> SdkClient {
        SdkClient {
            name: name.to_owned(),
            url: url.to_owned(),
            token,
            topics: topics.iter().map(|t| (*t).to_owned()).collect(),
            checker,
            state: Arc::default(),
            base: Duration::from_millis(100),
            cap: Duration::from_secs(2),
        }
    }

    /// Runs until `stop`: connects, subscribes, receives, and starts over after any failure.
    pub async fn run(self, stop: CancellationToken) {
        let mut last: HashMap<String, Last> = HashMap::new();
        let mut attempt = 0u32;
        let mut first = true;
        while !stop.is_cancelled() {
            if !first {
                self.state.reconnects.fetch_add(1, Ordering::Relaxed);
                tokio::select! {
                    () = tokio::time::sleep(backoff(attempt, self.base, self.cap)) => {}
                    () = stop.cancelled() => return,
                }
                attempt = attempt.saturating_add(1);
            }
            first = false;
            let socket = tokio::select! {
                socket = tokio_tungstenite::connect_async(self.url.as_str()) => socket,
                () = stop.cancelled() => return,
            };
            let Ok((socket, _)) = socket else { continue };
            if self.session(socket, &mut last, &stop).await {
                attempt = 0;
            }
        }
    }

    /// One socket's life; true when it got as far as being subscribed.
    async fn session(
        &self,
        mut socket: Socket,
        last: &mut HashMap<String, Last>,
        stop: &CancellationToken,
    ) -> bool {
        let mut got_subscribed = false;
        let send = |id: u64, method: &str, params: Value| {
            Message::text(json!({ "id": id, "method": method, "params": params }).to_string())
        };
        if socket
            .send(send(1, "auth", json!({ "token": self.token })))
            .await
            .is_err()
        {
            return false;
        }
        // Request id → topic of each pending subscribe (ids from 2 up).
        let mut pending: HashMap<u64, (String, Option<Last>)> = HashMap::new();
        let mut next_id = 2u64;
        let subscribe = |pending: &mut HashMap<u64, (String, Option<Last>)>,
                         next_id: &mut u64,
                         socket_topic: &String,
                         last: &HashMap<String, Last>| {
            let id = *next_id;
            *next_id += 1;
            let since = last.get(socket_topic).cloned();
            let mut params = json!({ "topic": socket_topic });
            if let Some(since) = &since {
                params["since"] =
                    json!({ "offset": since.offset.to_string(), "epoch": since.epoch });
            }
            pending.insert(id, (socket_topic.clone(), since));
            send(id, "subscribe", params)
        };
        for topic in &self.topics {
            let frame = subscribe(&mut pending, &mut next_id, topic, last);
            if socket.send(frame).await.is_err() {
                return false;
            }
        }
        let mut live = 0usize;
        loop {
            let message = tokio::select! {
                message = socket.next() => message,
                () = stop.cancelled() => {
                    let _ = socket.close(None).await;
                    self.state.subscribed.store(false, Ordering::Relaxed);
                    return got_subscribed;
                }
            };
            let text = match message {
                Some(Ok(Message::Text(text))) => text,
                Some(Ok(Message::Close(_)) | Err(_)) | None => break,
                Some(Ok(_)) => continue,
            };
            let Ok(frame) = serde_json::from_str::<Value>(&text) else {
                continue;
            };
            if let Some(id) = frame.get("id").and_then(Value::as_u64) {
                if id == 1 {
                    if frame.get("error").is_some() {
                        break;
                    }
                    continue;
                }
                let Some((topic, since)) = pending.remove(&id) else {
                    continue;
                };
                let Some(result) = frame.get("result") else {
                    // Refused for now (unavailable, limits): start over with a new socket.
                    break;
                };
                let position = Last {
                    offset: result["position"]["offset"]
                        .as_str()
                        .and_then(|o| o.parse().ok())
                        .unwrap_or(0),
                    epoch: result["position"]["epoch"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                };
                match since {
                    None => {
                        self.checker.expect(&self.name, &topic, position.offset);
                        last.insert(topic, position);
                    }
                    Some(since) if result["recovered"] == false => {
                        // The protocol's answer when history cannot cover the gap: the client
                        // reloads from its source of truth and goes on from the top.
                        self.state.unrecovered.fetch_add(1, Ordering::Relaxed);
                        if position.epoch == since.epoch && position.offset > since.offset {
                            self.checker.forgive(
                                &self.name,
                                &topic,
                                since.offset + 1,
                                position.offset,
                            );
                        }
                        last.insert(topic, position);
                    }
                    Some(_) => {}
                }
                live += 1;
                if live == self.topics.len() {
                    got_subscribed = true;
                    self.state.subscribed.store(true, Ordering::Relaxed);
                }
                continue;
            }
            if frame.get("event").is_some() {
                self.checker.delivered_push(&self.name, &frame);
                if let (Some(topic), Some(offset)) = (
                    frame["topic"].as_str(),
                    frame["offset"].as_str().and_then(|o| o.parse().ok()),
                ) {
                    last.insert(
                        topic.to_owned(),
                        Last {
                            offset,
                            epoch: frame["epoch"].as_str().unwrap_or_default().to_owned(),
                        },
                    );
                }
            } else if let Some(gone) = frame.get("unsubscribed") {
                // Reconnect class: resubscribe on this socket from the last event processed.
                self.state.unsubscribed.fetch_add(1, Ordering::Relaxed);
                self.state.subscribed.store(false, Ordering::Relaxed);
                live = live.saturating_sub(1);
                let topic = gone["topic"].as_str().unwrap_or_default().to_owned();
                tokio::time::sleep(backoff(0, self.base, self.cap)).await;
                let frame = subscribe(&mut pending, &mut next_id, &topic, last);
                if socket.send(frame).await.is_err() {
                    break;
                }
            }
        }
        self.state.subscribed.store(false, Ordering::Relaxed);
        got_subscribed
    }
}

/// Publishes through a WebSocket like an SDK: each publish carries an idempotency key (its
/// id) and is retried — on a new socket if need be — until it is acknowledged.
pub struct Publisher {
    url: String,
    token: String,
    socket: Option<Socket>,
    next_id: u64,
    pub checker: Arc<HistoryChecker>,
    /// Publishes that needed more than one attempt.
    pub retried: u64,
}

impl Publisher {
    pub fn new(url: &str, token: String, checker: Arc<HistoryChecker>) -> Publisher {
        Publisher {
            url: url.to_owned(),
            token,
            socket: None,
            next_id: 1,
            checker,
            retried: 0,
        }
    }

    /// Publishes `{"id": id}` to `topic` until acknowledged (or `patience` is spent: then
    /// false). The acknowledgement is recorded in the checker.
    pub async fn publish(&mut self, topic: &str, id: &str, patience: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + patience;
        let mut attempt = 0;
        while tokio::time::Instant::now() < deadline {
            if attempt > 0 {
                self.retried += u64::from(attempt == 1);
                tokio::time::sleep(backoff(
                    attempt,
                    Duration::from_millis(50),
                    Duration::from_secs(1),
                ))
                .await;
            }
            attempt += 1;
            let Some(offset) = self.try_publish(topic, id, deadline).await else {
                continue;
            };
            self.checker.acked(topic, offset, id);
            return true;
        }
        false
    }

    async fn try_publish(
        &mut self,
        topic: &str,
        id: &str,
        deadline: tokio::time::Instant,
    ) -> Option<u64> {
        if self.socket.is_none() {
            let (mut socket, _) = tokio_tungstenite::connect_async(self.url.as_str())
                .await
                .ok()?;
            let auth = json!({ "id": 0, "method": "auth", "params": { "token": self.token } });
            socket.send(Message::text(auth.to_string())).await.ok()?;
            self.socket = Some(socket);
        }
        let request_id = self.next_id;
        self.next_id += 1;
        let request = json!({
            "id": request_id,
            "method": "publish",
            "params": { "topic": topic, "type": "test.event", "data": { "id": id }, "idempotencyKey": id },
        });
        let outcome = tokio::time::timeout_at(deadline, async {
            let socket = self.socket.as_mut()?;
            socket.send(Message::text(request.to_string())).await.ok()?;
            loop {
                match socket.next().await {
                    Some(Ok(Message::Text(text))) => {
                        let frame: Value = serde_json::from_str(&text).ok()?;
                        if frame["id"] == 0 && frame.get("error").is_some() {
                            return None;
                        }
                        if frame["id"].as_u64() != Some(request_id) {
                            continue;
                        }
                        return Some(
                            frame["result"]["position"]["offset"]
                                .as_str()
                                .and_then(|o| o.parse().ok()),
                        );
                    }
                    Some(Ok(Message::Close(_)) | Err(_)) | None => return None,
                    Some(Ok(_)) => {}
                }
            }
        })
        .await;
        match outcome {
            Ok(Some(offset)) => offset,
            // The socket failed or the call did not answer: start over on a new socket.
            _ => {
                self.socket = None;
                None
            }
        }
    }
}
