//! Feeds: one shared backend `Edge/Follow` stream per topic, fanned out to every socket of
//! this edge subscribed to the topic.
//!
//! A feed is a task owning its follow stream and its subscribers. Each event arrives once,
//! is encoded to JSON once, and is queued to every attached socket whose last offset is below
//! it. The backend still decides per socket: every attach carries the socket's own token.
//!
//! When the follow stream ends with a reconnect-class code (backend restart, shutdown, slow),
//! the feed reconnects, to any backend, with backoff, and re-attaches every subscriber with
//! `since` = the last offset it was sent: the sockets notice nothing. A subscriber the
//! backend cannot resume (history gone) gets `unsubscribed` with "insufficient state".

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use herald_proto::codes::close_code_of;
use herald_proto::v1::{
    CloseCode, FollowAttach, FollowDetach, FollowOpen, FollowRefresh, FollowRequest,
    FollowResponse, StreamPosition, edge_client::EdgeClient, follow_request::Action,
    follow_response::Frame,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Status, Streaming};

use crate::{
    backends::Backends,
    outbound::{Ended, OutItem, Outbound},
    protocol,
};

/// Commands queued for one feed at most before senders wait.
const COMMAND_QUEUE: usize = 1024;
/// Follow requests buffered towards the backend.
const REQUEST_QUEUE: usize = 1024;
/// Reconnect attempts before a feed gives up and ends its subscribers with "unavailable".
const MAX_RECONNECTS: u32 = 10;

/// A socket asking to follow a topic.
#[derive(Debug)]
pub struct AttachRequest {
    pub topic: Arc<str>,
    pub subscriber: u64,
    /// The socket's `subscribe` request id, answered by the feed (result or error) before any
    /// event of the topic, so replies always precede pushes.
    pub request_id: u64,
    pub token: Arc<str>,
    pub since: Option<StreamPosition>,
    pub out: Outbound,
}

#[derive(Debug)]
enum Command {
    Attach(AttachRequest),
    Detach { subscriber: u64 },
    Refresh { subscriber: u64, token: Arc<str> },
}

#[derive(Debug)]
pub struct Feeds {
    backends: Arc<Backends>,
    topics: Mutex<HashMap<Arc<str>, mpsc::Sender<Command>>>,
    next_subscriber: AtomicU64,
    shutdown: CancellationToken,
}

impl Feeds {
    pub fn new(backends: Arc<Backends>, shutdown: CancellationToken) -> Arc<Feeds> {
        Arc::new(Feeds {
            backends,
            topics: Mutex::new(HashMap::new()),
            next_subscriber: AtomicU64::new(1),
            shutdown,
        })
    }

    pub fn next_subscriber(&self) -> u64 {
        self.next_subscriber.fetch_add(1, Ordering::Relaxed)
    }

    /// How many topics this edge currently follows.
    pub fn topic_count(&self) -> usize {
        self.lock().len()
    }

    pub async fn attach(self: &Arc<Self>, request: AttachRequest) {
        let topic = request.topic.clone();
        self.send(&topic, Command::Attach(request), true).await;
    }

    pub async fn detach(self: &Arc<Self>, topic: &Arc<str>, subscriber: u64) {
        self.send(topic, Command::Detach { subscriber }, false)
            .await;
    }

    pub async fn refresh(self: &Arc<Self>, topic: &Arc<str>, subscriber: u64, token: Arc<str>) {
        self.send(topic, Command::Refresh { subscriber, token }, false)
            .await;
    }

    /// Each critical section is one map operation (see [`herald_proto::support::lock`]).
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, mpsc::Sender<Command>>> {
        herald_proto::support::lock(&self.topics)
    }

    /// Delivers a command to the topic's feed, starting the feed when `create` is set.
    async fn send(self: &Arc<Self>, topic: &Arc<str>, mut command: Command, create: bool) {
        loop {
            let sender = {
                let mut topics = self.lock();
                match topics.get(topic) {
                    Some(sender) => sender.clone(),
                    None if create => {
                        let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
                        topics.insert(topic.clone(), tx.clone());
                        let feed = Feed {
                            topic: topic.clone(),
                            feeds: self.clone(),
                            commands: rx,
                            subscribers: HashMap::new(),
                            epoch: String::new(),
                        };
                        tokio::spawn(feed.run());
                        tx
                    }
                    None => return,
                }
            };
            match sender.send(command).await {
                Ok(()) => return,
                Err(mpsc::error::SendError(returned)) => {
                    // That feed just ended; forget it and try again.
                    command = returned;
                    let mut topics = self.lock();
                    if topics.get(topic).is_some_and(|s| s.same_channel(&sender)) {
                        topics.remove(topic);
                    }
                }
            }
        }
    }
}

#[derive(Debug)]
enum SubState {
    /// Waiting for the backend's `attached`. `request_id` is set for a socket's own subscribe
    /// (answered with a result frame) and unset for a re-attach after a reconnect.
    Pending {
        request_id: Option<u64>,
        since: Option<StreamPosition>,
    },
    Attached,
}

#[derive(Debug)]
struct Subscriber {
    out: Outbound,
    /// Shared with the socket's session: one copy of the token per socket.
    token: Arc<str>,
    /// The last offset this subscriber was sent.
    last: u64,
    state: SubState,
}

struct Feed {
    topic: Arc<str>,
    feeds: Arc<Feeds>,
    commands: mpsc::Receiver<Command>,
    subscribers: HashMap<u64, Subscriber>,
    epoch: String,
}

/// How a follow stream ended.
enum StreamEnd {
    /// The feed has no subscribers left.
    Idle,
    /// The edge is shutting down.
    Shutdown,
    /// The stream failed or the backend ended it.
    Failed(Status),
}

impl Feed {
    async fn run(mut self) {
        let mut failures = 0u32;
        loop {
            match self.follow().await {
                StreamEnd::Idle => {
                    if self.try_retire() {
                        return;
                    }
                }
                StreamEnd::Shutdown => return,
                StreamEnd::Failed(status) => {
                    let code = close_code_of(&status);
                    let reconnect = code.is_none_or(CloseCode::should_reconnect);
                    failures += 1;
                    if !reconnect || failures > MAX_RECONNECTS {
                        tracing::warn!(topic = %self.topic, status = ?status.code(), message = status.message(), "feed ended");
                        self.end_all(&status, code.unwrap_or(CloseCode::Unavailable));
                        if self.try_retire() {
                            return;
                        }
                        failures = 0;
                        continue;
                    }
                    let backoff = backoff(failures);
                    tracing::info!(topic = %self.topic, ?backoff, message = status.message(), "follow stream ended; reconnecting");
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = self.feeds.shutdown.cancelled() => return,
                    }
                }
            }
        }
    }

    /// Leaves the feed map if nothing is left to do. Commands that raced in are re-sent so
    /// that a fresh feed handles them.
    fn try_retire(&mut self) -> bool {
        if !self.subscribers.is_empty() {
            return false;
        }
        {
            let mut topics = self.feeds.lock();
            if !self.commands.is_empty() {
                return false;
            }
            self.commands.close();
            topics.remove(&self.topic);
        }
        while let Ok(command) = self.commands.try_recv() {
            let feeds = self.feeds.clone();
            let topic = self.topic.clone();
            tokio::spawn(async move {
                let create = matches!(command, Command::Attach(_));
                feeds.send(&topic, command, create).await;
            });
        }
        true
    }

    /// Runs one follow stream until it ends.
    async fn follow(&mut self) -> StreamEnd {
        if self.subscribers.is_empty() {
            // Wait for the first subscriber before opening anything.
            match self.next_command().await {
                Some(command) => {
                    self.queue_command(command);
                }
                None => return StreamEnd::Shutdown,
            }
            if self.subscribers.is_empty() {
                return StreamEnd::Idle;
            }
        }
        let (requests, request_rx) = mpsc::channel(REQUEST_QUEUE);
        let open = FollowRequest {
            action: Some(Action::Open(FollowOpen {
                topic: self.topic.to_string(),
            })),
        };
        if requests.try_send(open).is_err() {
            return StreamEnd::Failed(Status::internal("cannot queue the open request"));
        }
        let mut request = tonic::Request::new(ReceiverStream::new(request_rx));
        match format!("Bearer {}", self.feeds.backends.service_token()).parse() {
            Ok(value) => {
                request.metadata_mut().insert("authorization", value);
            }
            Err(_) => return StreamEnd::Failed(Status::unauthenticated("bad service token")),
        }
        let mut client =
            EdgeClient::new(self.feeds.backends.pick()).max_decoding_message_size(16 * 1024 * 1024);
        let shutdown = self.feeds.shutdown.clone();
        let mut stream: Streaming<FollowResponse> = tokio::select! {
            response = client.follow(request) => match response {
                Ok(response) => response.into_inner(),
                Err(status) => return StreamEnd::Failed(status),
            },
            () = shutdown.cancelled() => return StreamEnd::Shutdown,
        };

        // (Re-)attach everyone on the new stream.
        let ids: Vec<u64> = self.subscribers.keys().copied().collect();
        for id in ids {
            let Some(sub) = self.subscribers.get_mut(&id) else {
                continue;
            };
            let since = match &sub.state {
                SubState::Attached => Some(StreamPosition {
                    offset: sub.last,
                    epoch: self.epoch.clone(),
                }),
                SubState::Pending { since, .. } => since.clone(),
            };
            if let SubState::Attached = sub.state {
                sub.state = SubState::Pending {
                    request_id: None,
                    since: since.clone(),
                };
            }
            let attach = attach_request(id, &sub.token, since);
            if requests.send(attach).await.is_err() {
                return StreamEnd::Failed(Status::unavailable("the follow stream closed"));
            }
        }

        loop {
            tokio::select! {
                command = self.commands.recv() => {
                    let Some(command) = command else { return StreamEnd::Shutdown };
                    if let Some(request) = self.queue_command(command)
                        && requests.send(request).await.is_err()
                    {
                        return StreamEnd::Failed(Status::unavailable("the follow stream closed"));
                    }
                    if self.subscribers.is_empty() {
                        return StreamEnd::Idle;
                    }
                }
                message = stream.message() => match message {
                    Ok(Some(response)) => {
                        if let Some(frame) = response.frame {
                            let detach = self.handle(frame);
                            for subscriber in detach {
                                let request = FollowRequest { action: Some(Action::Detach(FollowDetach { subscriber })) };
                                let _ = requests.send(request).await;
                            }
                            if self.subscribers.is_empty() {
                                return StreamEnd::Idle;
                            }
                        }
                    }
                    Ok(None) => return StreamEnd::Failed(Status::unavailable("the backend closed the follow stream")),
                    Err(status) => return StreamEnd::Failed(status),
                },
                () = shutdown.cancelled() => return StreamEnd::Shutdown,
            }
        }
    }

    async fn next_command(&mut self) -> Option<Command> {
        tokio::select! {
            command = self.commands.recv() => command,
            () = self.feeds.shutdown.cancelled() => None,
        }
    }

    /// Applies a command to the subscriber table; returns what to tell the backend.
    fn queue_command(&mut self, command: Command) -> Option<FollowRequest> {
        match command {
            Command::Attach(request) => {
                let attach =
                    attach_request(request.subscriber, &request.token, request.since.clone());
                self.subscribers.insert(
                    request.subscriber,
                    Subscriber {
                        out: request.out,
                        token: request.token,
                        last: 0,
                        state: SubState::Pending {
                            request_id: Some(request.request_id),
                            since: request.since,
                        },
                    },
                );
                Some(attach)
            }
            Command::Detach { subscriber } => {
                self.subscribers.remove(&subscriber)?;
                Some(FollowRequest {
                    action: Some(Action::Detach(FollowDetach { subscriber })),
                })
            }
            Command::Refresh { subscriber, token } => {
                let sub = self.subscribers.get_mut(&subscriber)?;
                sub.token.clone_from(&token);
                Some(FollowRequest {
                    action: Some(Action::Refresh(FollowRefresh {
                        subscriber,
                        token: token.to_string(),
                    })),
                })
            }
        }
    }

    /// Handles one frame from the backend; returns subscribers to detach there.
    fn handle(&mut self, frame: Frame) -> Vec<u64> {
        let mut detach = Vec::new();
        match frame {
            Frame::Opened(opened) => {
                if let Some(position) = opened.position {
                    self.epoch = position.epoch;
                }
            }
            Frame::Attached(attached) => {
                let Some(sub) = self.subscribers.get_mut(&attached.subscriber) else {
                    return detach;
                };
                let subscribed = attached.subscribed.unwrap_or_default();
                let position = subscribed.position.clone().unwrap_or_default();
                let SubState::Pending { request_id, .. } = sub.state else {
                    return detach;
                };
                match request_id {
                    Some(id) => {
                        sub.out.text(protocol::result(id, &subscribed));
                    }
                    None if !subscribed.recovered => {
                        let last = StreamPosition {
                            offset: sub.last,
                            epoch: self.epoch.clone(),
                        };
                        let frame = protocol::unsubscribed(
                            &self.topic,
                            CloseCode::InsufficientState,
                            "the subscription could not be resumed after a backend restart: history no longer covers it; resubscribe and reload",
                            &last,
                        );
                        end(&self.topic, attached.subscriber, &sub.out, frame);
                        self.subscribers.remove(&attached.subscriber);
                        detach.push(attached.subscriber);
                        return detach;
                    }
                    None => {}
                }
                self.epoch = position.epoch;
                sub.last = position.offset;
                sub.state = SubState::Attached;
            }
            Frame::Replay(replay) => {
                if let Some(sub) = self.subscribers.get(&replay.subscriber) {
                    for event in &replay.events {
                        sub.out.push(OutItem::Text(protocol::event_push(event)));
                    }
                }
            }
            Frame::Event(event) => {
                let mut push = None;
                for sub in self.subscribers.values_mut() {
                    if matches!(sub.state, SubState::Attached) && sub.last < event.offset {
                        let frame = push.get_or_insert_with(|| protocol::event_push(&event));
                        sub.out.push(OutItem::Text(frame.clone()));
                        sub.last = event.offset;
                    }
                }
            }
            Frame::Presence(change) => {
                let push = protocol::presence_push(&change);
                for sub in self.subscribers.values() {
                    if matches!(sub.state, SubState::Attached) {
                        sub.out.push(OutItem::Text(push.clone()));
                    }
                }
            }
            Frame::Detached(detached) => {
                if let Some(sub) = self.subscribers.remove(&detached.subscriber) {
                    let status = Code::from_i32(detached.status);
                    let code = CloseCode::try_from(detached.code).unwrap_or(CloseCode::Internal);
                    let frame = match sub.state {
                        SubState::Pending {
                            request_id: Some(id),
                            ..
                        } => protocol::error_frame(
                            Some(id),
                            protocol::status_code_name(status),
                            &detached.message,
                        ),
                        _ => {
                            let last = StreamPosition {
                                offset: sub.last,
                                epoch: self.epoch.clone(),
                            };
                            protocol::unsubscribed(&self.topic, code, &detached.message, &last)
                        }
                    };
                    end(&self.topic, detached.subscriber, &sub.out, frame);
                }
            }
            Frame::Refreshed(_) => {}
        }
        detach
    }

    /// Ends every subscriber after the feed gave up on the backend.
    fn end_all(&mut self, status: &Status, code: CloseCode) {
        for (id, sub) in self.subscribers.drain() {
            let frame = match sub.state {
                SubState::Pending {
                    request_id: Some(request_id),
                    ..
                } => protocol::error_frame(
                    Some(request_id),
                    protocol::status_code_name(status.code()),
                    status.message(),
                ),
                _ => {
                    let last = StreamPosition {
                        offset: sub.last,
                        epoch: self.epoch.clone(),
                    };
                    protocol::unsubscribed(&self.topic, code, status.message(), &last)
                }
            };
            end(&self.topic, id, &sub.out, frame);
        }
    }
}

fn end(topic: &Arc<str>, subscriber: u64, out: &Outbound, frame: String) {
    out.push(OutItem::Ended(Box::new(Ended {
        topic: topic.clone(),
        subscriber,
        frame: frame.into(),
    })));
}

fn attach_request(subscriber: u64, token: &str, since: Option<StreamPosition>) -> FollowRequest {
    FollowRequest {
        action: Some(Action::Attach(FollowAttach {
            subscriber,
            token: token.to_owned(),
            since,
        })),
    }
}

/// Exponential backoff with jitter: 100 ms, 200 ms, … up to 5 s.
fn backoff(failures: u32) -> Duration {
    let base = 100u64.saturating_mul(1 << failures.min(6)).min(5000);
    let jitter = rand::random::<u64>() % (base / 2 + 1);
    Duration::from_millis(base / 2 + jitter)
}
