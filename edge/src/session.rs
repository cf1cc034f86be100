//! One WebSocket session: reads requests, writes replies and pushes, enforces the socket's
//! limits, and closes with a code from the close-code table when it must.
//!
//! The session is one task selecting over the socket, its outbound queue, pending calls and
//! its timers; nothing it does waits on another socket. Subscriptions are attached to the
//! topic feeds, which push frames into the outbound queue directly.

use std::{collections::HashMap, pin::Pin, sync::Arc, time::Duration};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::{
    SinkExt, StreamExt,
    stream::{FuturesUnordered, SplitSink},
};
use herald_proto::v1::{CloseCode, WhoamiRequest, auth_client::AuthClient};
use serde_json::{Value, json};
use tokio::time::Instant;
use tonic::Status;

use crate::{
    EdgeContext,
    feeds::AttachRequest,
    outbound::{self, OutItem, OutboundReceiver},
    protocol::{self, Request},
    ratelimit::TokenBucket,
};

/// Close code for a frame larger than the limit (RFC 6455 "message too big").
const CLOSE_TOO_BIG: u16 = 1009;
/// Requests held while `auth` is being verified.
const MAX_HELD_REQUESTS: usize = 32;
/// How long a closing socket may take to flush and send its close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

type Pending = Pin<Box<dyn Future<Output = Completion> + Send>>;

/// What a finished piece of asynchronous work asks the session to do.
enum Completion {
    /// Write this frame.
    Reply(String),
    /// A unary call finished: write its reply.
    CallDone(String),
    /// `auth` or `refresh` succeeded.
    Authenticated {
        id: u64,
        token: String,
        identity: Value,
        refresh: bool,
    },
    /// `auth` or `refresh` failed: answer; a failed `auth` also closes the socket.
    AuthFailed {
        refresh: bool,
        close: CloseCode,
        frame: String,
    },
    Nothing,
}

/// The identity a socket authenticated as.
struct Auth {
    token: Arc<str>,
}

pub(crate) async fn run(socket: WebSocket, ctx: Arc<EdgeContext>, bearer: Option<String>) {
    let (sink, mut stream) = socket.split();
    let limits = ctx.config.limits.clone();
    let (out, mut out_rx) = outbound::channel(limits.max_outbound_bytes);
    let mut session = Session {
        sink,
        ctx: ctx.clone(),
        out,
        auth: None,
        subscriptions: HashMap::new(),
        bucket: TokenBucket::new(limits.rate_burst, limits.rate_per_second),
        strikes: 0,
        pending: FuturesUnordered::new(),
        calls_in_flight: 0,
        authenticating: false,
        held: Vec::new(),
    };
    if let Some(token) = bearer {
        // Verified before the first request is read, so requests never race the header.
        let verified = verify(ctx.clone(), None, token, false).await;
        if let Some((code, reason)) = session.complete(verified) {
            if let Some(item) = out_rx.try_recv() {
                let _ = session.write_one(item).await;
            }
            let frame = CloseFrame {
                code,
                reason: Utf8Bytes::from_static(reason),
            };
            let _ = session.sink.send(Message::Close(Some(frame))).await;
            return;
        }
    }
    // One timer per socket: the auth deadline until authenticated, then each ping.
    let mut pinging = session.auth.is_some();
    let first = if pinging {
        limits.ping_interval
    } else {
        limits.auth_timeout
    };
    let mut timer = Box::pin(tokio::time::sleep(first));
    let mut last_heard = Instant::now();
    let shutdown = ctx.shutdown.clone();
    let slow = out_rx.slow_signal();

    let close: Option<(u16, &'static str)> = loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break Some((CloseCode::Shutdown as u16, "shutdown: reconnect")),
            () = slow.wait() => break Some((CloseCode::SlowConsumer as u16, "slow: the socket fell too far behind")),
            item = out_rx.recv() => {
                if session.write(item, &mut out_rx).await.is_err() {
                    break None;
                }
            }
            Some(done) = session.pending.next(), if !session.pending.is_empty() => {
                if let Some(close) = session.complete(done) {
                    break Some(close);
                }
                if !pinging && session.auth.is_some() {
                    pinging = true;
                    timer.as_mut().reset(Instant::now() + limits.ping_interval);
                }
            }
            message = stream.next() => {
                last_heard = Instant::now();
                match message {
                    Some(Ok(Message::Text(text))) => {
                        if let Some(close) = session.request(text.as_str()) {
                            break Some(close);
                        }
                    }
                    Some(Ok(Message::Binary(_))) => {
                        session.out.text(protocol::error_frame(None, "invalid_argument", "binary frames are not supported; send JSON text frames"));
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                    Some(Ok(Message::Close(_))) | None => break None,
                    Some(Err(error)) => {
                        let too_big = error.to_string().to_lowercase().contains("too long")
                            || error.to_string().to_lowercase().contains("too big")
                            || error.to_string().to_lowercase().contains("capacity");
                        if too_big {
                            break Some((CLOSE_TOO_BIG, "frame too large: the limit is 64 KiB"));
                        }
                        break None;
                    }
                }
            }
            () = &mut timer => {
                if session.auth.is_none() {
                    break Some((CloseCode::Stale as u16, "stale: no auth within the time limit"));
                }
                if last_heard.elapsed() > limits.idle_timeout {
                    break Some((CloseCode::Stale as u16, "stale: no pong within the time limit"));
                }
                if session.sink.send(Message::Ping(Default::default())).await.is_err() {
                    break None;
                }
                timer.as_mut().reset(Instant::now() + limits.ping_interval);
            }
        }
    };

    if let Some((code, reason)) = close {
        // Deliver what is already queued (replies, a final unsubscribed) unless the socket is
        // too slow to take it, then close; a peer that reads nothing cannot hold the session.
        let deliver_queued = code != CloseCode::SlowConsumer as u16;
        let closing = async {
            while deliver_queued && let Some(item) = out_rx.try_recv() {
                if session.write_one(item).await.is_err() {
                    return;
                }
            }
            let frame = CloseFrame {
                code,
                reason: Utf8Bytes::from_static(reason),
            };
            if session
                .sink
                .send(Message::Close(Some(frame)))
                .await
                .is_err()
            {
                return;
            }
            // Complete the closing handshake: wait for the peer's close frame, so the peer
            // reads ours before the connection goes away.
            while let Some(Ok(message)) = stream.next().await {
                if let Message::Close(_) = message {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(CLOSE_GRACE, closing).await;
    }
    session.detach_all().await;
}

struct Session {
    sink: SplitSink<WebSocket, Message>,
    ctx: Arc<EdgeContext>,
    out: outbound::Outbound,
    auth: Option<Auth>,
    /// topic → subscriber id at the feed.
    subscriptions: HashMap<Arc<str>, u64>,
    bucket: TokenBucket,
    strikes: u32,
    pending: FuturesUnordered<Pending>,
    calls_in_flight: usize,
    /// An `auth` is being verified.
    authenticating: bool,
    /// Requests that arrived while `auth` was being verified, handled once it is answered.
    held: Vec<String>,
}

impl Session {
    /// Writes one item, then whatever else is already queued, with a single flush.
    async fn write(&mut self, item: OutItem, rx: &mut OutboundReceiver) -> Result<(), axum::Error> {
        self.feed_one(item).await?;
        for _ in 0..256 {
            let Some(item) = rx.try_recv() else { break };
            self.feed_one(item).await?;
        }
        self.sink.flush().await
    }

    async fn write_one(&mut self, item: OutItem) -> Result<(), axum::Error> {
        self.feed_one(item).await?;
        self.sink.flush().await
    }

    async fn feed_one(&mut self, item: OutItem) -> Result<(), axum::Error> {
        let text = match item {
            OutItem::Text(text) => text,
            OutItem::Ended(ended) => {
                if self.subscriptions.get(&ended.topic) == Some(&ended.subscriber) {
                    self.subscriptions.remove(&ended.topic);
                }
                ended.frame
            }
        };
        self.sink.feed(Message::Text(text)).await
    }

    fn reply(&self, frame: String) {
        self.out.text(frame);
    }

    /// Handles one text frame; returns a close when the socket must end.
    fn request(&mut self, text: &str) -> Option<(u16, &'static str)> {
        let (id, parsed) = protocol::parse(text);
        let request = match parsed {
            Ok(request) => request,
            Err(error) => {
                self.reply(protocol::error_frame(id, "invalid_argument", &error.0));
                return None;
            }
        };
        // `parse` only succeeds with an id.
        let id = id.unwrap_or_default();
        if !matches!(request, Request::Ping | Request::Auth { .. }) {
            if self.auth.is_none() && self.authenticating {
                // Clients may send requests right behind `auth`; they wait for its answer.
                if self.held.len() >= MAX_HELD_REQUESTS {
                    self.reply(protocol::error_frame(
                        Some(id),
                        "resource_exhausted",
                        "too many requests sent before `auth` was answered",
                    ));
                } else {
                    self.held.push(text.to_owned());
                }
                return None;
            }
            if self.auth.is_none() {
                self.reply(protocol::error_frame(
                    Some(id),
                    "unauthenticated",
                    "send `auth` with a token first",
                ));
                return None;
            }
            if !self.bucket.try_take() {
                self.strikes += 1;
                if self.strikes > self.ctx.config.limits.rate_abuse_limit {
                    return Some((
                        CloseCode::RateLimited as u16,
                        "rate limited: too many requests",
                    ));
                }
                self.reply(protocol::error_frame(
                    Some(id),
                    protocol::RATE_LIMITED,
                    "too many requests; slow down",
                ));
                return None;
            }
            self.strikes = 0;
        }
        match request {
            Request::Ping => self.reply(protocol::result(id, &json!({}))),
            Request::Auth { token } => {
                if self.auth.is_some() {
                    self.reply(protocol::error_frame(
                        Some(id),
                        "failed_precondition",
                        "already authenticated; use `refresh` to replace the token",
                    ));
                } else if self.authenticating {
                    self.reply(protocol::error_frame(
                        Some(id),
                        "failed_precondition",
                        "`auth` is already in progress",
                    ));
                } else {
                    self.authenticating = true;
                    self.pending
                        .push(verify(self.ctx.clone(), Some(id), token, false));
                }
            }
            Request::Refresh { token } => {
                self.pending
                    .push(verify(self.ctx.clone(), Some(id), token, true));
            }
            Request::Subscribe { topic, since } => self.subscribe(id, topic, since),
            Request::Unsubscribe { topic } => {
                let topic: Arc<str> = Arc::from(topic);
                match self.subscriptions.remove(&topic) {
                    Some(subscriber) => {
                        let feeds = self.ctx.feeds.clone();
                        self.pending.push(Box::pin(async move {
                            feeds.detach(&topic, subscriber).await;
                            Completion::Reply(protocol::result(id, &json!({})))
                        }));
                    }
                    None => self.reply(protocol::error_frame(
                        Some(id),
                        "not_found",
                        &format!("not subscribed to `{topic}`"),
                    )),
                }
            }
            Request::Publish { params } => self.call(id, "herald.v1.Rooms/Publish".into(), params),
            Request::Call { rpc, request } => self.call(id, rpc, request),
        }
        None
    }

    fn subscribe(
        &mut self,
        id: u64,
        topic: String,
        since: Option<herald_proto::v1::StreamPosition>,
    ) {
        let topic: Arc<str> = Arc::from(topic);
        if self.subscriptions.contains_key(&topic) {
            self.reply(protocol::error_frame(
                Some(id),
                "already_exists",
                &format!("already subscribed to `{topic}`"),
            ));
            return;
        }
        let limit = self.ctx.config.limits.max_subscriptions;
        if self.subscriptions.len() >= limit {
            self.reply(protocol::error_frame(
                Some(id),
                "resource_exhausted",
                &format!("a socket may hold at most {limit} subscriptions"),
            ));
            return;
        }
        let Some(auth) = &self.auth else { return };
        let subscriber = self.ctx.feeds.next_subscriber();
        self.subscriptions.insert(topic.clone(), subscriber);
        let request = AttachRequest {
            topic,
            subscriber,
            request_id: id,
            token: auth.token.clone(),
            since,
            out: self.out.clone(),
        };
        let feeds = self.ctx.feeds.clone();
        self.pending.push(Box::pin(async move {
            feeds.attach(request).await;
            Completion::Nothing
        }));
    }

    fn call(&mut self, id: u64, rpc: String, request: Value) {
        let limit = self.ctx.config.limits.max_calls_in_flight;
        if self.calls_in_flight >= limit {
            self.reply(protocol::error_frame(
                Some(id),
                "resource_exhausted",
                &format!("at most {limit} calls may be in flight per socket"),
            ));
            return;
        }
        let Some(auth) = &self.auth else { return };
        self.calls_in_flight += 1;
        let token = auth.token.clone();
        let ctx = self.ctx.clone();
        self.pending.push(Box::pin(async move {
            let frame = match call(&ctx, &rpc, request, &token).await {
                Ok(result) => protocol::result(id, &result),
                Err(status) => protocol::error_frame(
                    Some(id),
                    protocol::status_code_name(status.code()),
                    status.message(),
                ),
            };
            Completion::CallDone(frame)
        }));
    }

    fn complete(&mut self, done: Completion) -> Option<(u16, &'static str)> {
        match done {
            Completion::Reply(frame) => self.reply(frame),
            Completion::CallDone(frame) => {
                self.calls_in_flight = self.calls_in_flight.saturating_sub(1);
                self.reply(frame);
            }
            Completion::Authenticated {
                id,
                token,
                identity,
                refresh,
            } => {
                let token: Arc<str> = Arc::from(token);
                if refresh {
                    for (topic, subscriber) in &self.subscriptions {
                        let feeds = self.ctx.feeds.clone();
                        let (topic, subscriber, token) =
                            (topic.clone(), *subscriber, token.clone());
                        self.pending.push(Box::pin(async move {
                            feeds.refresh(&topic, subscriber, token).await;
                            Completion::Nothing
                        }));
                    }
                }
                self.auth = Some(Auth { token });
                self.authenticating = false;
                if id != 0 {
                    self.reply(protocol::result(id, &identity));
                }
                for text in std::mem::take(&mut self.held) {
                    if let Some(close) = self.request(&text) {
                        return Some(close);
                    }
                }
            }
            Completion::AuthFailed {
                refresh,
                close,
                frame,
            } => {
                self.reply(frame);
                if !refresh || self.auth.is_none() {
                    let reason = if close == CloseCode::InvalidToken {
                        "invalid token"
                    } else {
                        "the backend is unavailable: reconnect"
                    };
                    return Some((close as u16, reason));
                }
            }
            Completion::Nothing => {}
        }
        None
    }

    async fn detach_all(&mut self) {
        for (topic, subscriber) in self.subscriptions.drain() {
            self.ctx.feeds.detach(&topic, subscriber).await;
        }
    }
}

/// Asks a backend who `token` names. The backend verifies; the edge holds no keys.
fn verify(ctx: Arc<EdgeContext>, id: Option<u64>, token: String, refresh: bool) -> Pending {
    Box::pin(async move {
        let mut client = AuthClient::new(ctx.backends.pick());
        let mut request = tonic::Request::new(WhoamiRequest {});
        let outcome = match format!("Bearer {token}").parse() {
            Ok(value) => {
                request.metadata_mut().insert("authorization", value);
                tokio::time::timeout(Duration::from_secs(10), client.whoami(request))
                    .await
                    .unwrap_or_else(|_| {
                        Err(Status::unavailable("the backend did not answer in time"))
                    })
            }
            Err(_) => Err(Status::unauthenticated(
                "the token contains characters not allowed in a header",
            )),
        };
        match outcome {
            Ok(response) => {
                let identity = serde_json::to_value(response.get_ref()).unwrap_or_default();
                Completion::Authenticated {
                    id: id.unwrap_or_default(),
                    token,
                    identity,
                    refresh,
                }
            }
            Err(status) => Completion::AuthFailed {
                refresh,
                close: if status.code() == tonic::Code::Unauthenticated {
                    CloseCode::InvalidToken
                } else {
                    CloseCode::Unavailable
                },
                frame: protocol::error_frame(
                    id,
                    protocol::status_code_name(status.code()),
                    status.message(),
                ),
            },
        }
    })
}

async fn call(ctx: &EdgeContext, rpc: &str, request: Value, token: &str) -> Result<Value, Status> {
    let method = ctx
        .transcoder
        .method(rpc)
        .map_err(|e| Status::not_found(e.to_string()))?;
    let body = ctx
        .transcoder
        .encode_request(&method, request)
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    let response = crate::transcode::call_unary(ctx.backends.pick(), &method, body, token).await?;
    ctx.transcoder.decode_response(&method, response)
}
