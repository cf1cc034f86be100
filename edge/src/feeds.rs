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
    collections::{HashMap, VecDeque},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use axum::extract::ws::Utf8Bytes;
use herald_proto::codes::close_code_of;
use herald_proto::v1::{
    CloseCode, Event, FollowAttach, FollowAttached, FollowDetach, FollowDetached, FollowMore,
    FollowOpen, FollowRefresh, FollowReplay, FollowRequest, FollowResponse, StreamPosition,
    edge_client::EdgeClient, follow_request::Action, follow_response::Frame,
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
/// Requests that may wait for the backend beyond that before the stream is given up (and
/// reconnected): attach, detach, refresh and `more` are small, so this bounds memory too.
const MAX_OUTGOING: usize = 16 * 1024;
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
    Detach {
        subscriber: u64,
    },
    Refresh {
        subscriber: u64,
        token: Arc<str>,
    },
    /// A replaying subscriber's socket drained its last page: ask for the next.
    More {
        subscriber: u64,
    },
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
                        // A feed holds one backend stream for as long as it lives.
                        let stream = match self.backends.try_stream() {
                            Ok(stream) => stream,
                            Err(status) => {
                                drop(topics);
                                refuse(topic, command, &status);
                                return;
                            }
                        };
                        let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
                        topics.insert(topic.clone(), tx.clone());
                        let feed = Feed {
                            topic: topic.clone(),
                            feeds: self.clone(),
                            commands: rx,
                            subscribers: HashMap::new(),
                            epoch: Arc::from(""),
                            _stream: stream,
                            healthy: false,
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
    /// Attached; while `replaying`, its events come in its own `replay` pages (asked for
    /// one at a time as the socket drains), not from the topic's `event` frames.
    Attached { replaying: bool },
}

#[derive(Debug)]
struct Subscriber {
    out: Outbound,
    /// Shared with the socket's session: one copy of the token per socket.
    token: Arc<str>,
    /// The last offset this subscriber was sent, and its epoch: a subscriber's own, since a
    /// feed reopened on a backend whose topic has a new epoch has subscribers whose last
    /// position is still in the old one.
    last: u64,
    epoch: Arc<str>,
    state: SubState,
}

impl Subscriber {
    fn is_live(&self) -> bool {
        matches!(self.state, SubState::Attached { replaying: false })
    }

    /// Where this subscriber is: what a resume starts after and an `unsubscribed` reports.
    fn position(&self) -> StreamPosition {
        StreamPosition {
            offset: self.last,
            epoch: self.epoch.to_string(),
        }
    }
}

/// `epoch` as an `Arc` shared through `cache`, so the subscribers of one epoch hold one copy
/// and a live event compares pointers rather than strings.
fn shared_epoch(cache: &mut Arc<str>, epoch: &str) -> Arc<str> {
    if **cache != *epoch {
        *cache = Arc::from(epoch);
    }
    cache.clone()
}

struct Feed {
    topic: Arc<str>,
    feeds: Arc<Feeds>,
    commands: mpsc::Receiver<Command>,
    subscribers: HashMap<u64, Subscriber>,
    /// The epoch of the latest attach or live event, shared by the subscribers in it.
    epoch: Arc<str>,
    /// This feed's place among the edge's backend streams.
    _stream: tokio::sync::OwnedSemaphorePermit,
    /// The current follow stream has carried a frame: the backend took it, so the failure
    /// that ends it starts a new count of reconnects.
    healthy: bool,
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
                    // Failures count in a row: a stream that worked resets the count, so
                    // restarts spread over a feed's life never add up to giving up.
                    if std::mem::take(&mut self.healthy) {
                        failures = 0;
                    }
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
        let mut raced = Vec::new();
        while let Ok(command) = self.commands.try_recv() {
            raced.push(command);
        }
        if !raced.is_empty() {
            // In their order: an attach and the detach right behind it must not swap.
            let feeds = self.feeds.clone();
            let topic = self.topic.clone();
            tokio::spawn(async move {
                for command in raced {
                    let create = matches!(command, Command::Attach(_));
                    feeds.send(&topic, command, create).await;
                }
            });
        }
        true
    }

    /// Runs one follow stream until it ends.
    async fn follow(&mut self) -> StreamEnd {
        if let Some(end) = self.wait_for_first_subscriber().await {
            return end;
        }
        let (requests, mut stream) = match self.open_stream().await {
            Ok(opened) => opened,
            Err(end) => return end,
        };
        let mut outgoing = self.reattach_all();
        self.pump(&requests, &mut stream, &mut outgoing).await
    }

    /// With no subscriber, waits for a first command before opening anything.
    async fn wait_for_first_subscriber(&mut self) -> Option<StreamEnd> {
        if !self.subscribers.is_empty() {
            return None;
        }
        let Some(command) = self.next_command().await else {
            return Some(StreamEnd::Shutdown);
        };
        self.queue_command(command);
        self.subscribers.is_empty().then_some(StreamEnd::Idle)
    }

    /// Opens `Edge/Follow` on some backend with the edge's service token.
    async fn open_stream(
        &mut self,
    ) -> Result<(mpsc::Sender<FollowRequest>, Streaming<FollowResponse>), StreamEnd> {
        let (requests, request_rx) = mpsc::channel(REQUEST_QUEUE);
        let open = FollowRequest {
            action: Some(Action::Open(FollowOpen {
                topic: self.topic.to_string(),
            })),
        };
        if requests.try_send(open).is_err() {
            return Err(StreamEnd::Failed(Status::internal(
                "cannot queue the open request",
            )));
        }
        let request = self
            .feeds
            .backends
            .as_service(ReceiverStream::new(request_rx))
            .map_err(StreamEnd::Failed)?;
        let mut client =
            EdgeClient::new(self.feeds.backends.pick()).max_decoding_message_size(16 * 1024 * 1024);
        let shutdown = self.feeds.shutdown.clone();
        tokio::select! {
            response = client.follow(request) => match response {
                Ok(response) => Ok((requests, response.into_inner())),
                Err(status) => Err(StreamEnd::Failed(status)),
            },
            () = shutdown.cancelled() => Err(StreamEnd::Shutdown),
        }
    }

    /// The attach requests that put every subscriber on a new stream, each resuming after
    /// the last offset it was sent.
    fn reattach_all(&mut self) -> VecDeque<FollowRequest> {
        let mut outgoing = VecDeque::with_capacity(self.subscribers.len());
        for (id, sub) in &mut self.subscribers {
            let since = match &sub.state {
                SubState::Attached { .. } => Some(sub.position()),
                SubState::Pending { since, .. } => since.clone(),
            };
            if let SubState::Attached { .. } = sub.state {
                sub.state = SubState::Pending {
                    request_id: None,
                    since: since.clone(),
                };
            }
            outgoing.push_back(attach_request(*id, &sub.token, since, sub.out.socket()));
        }
        outgoing
    }

    /// Moves commands to the backend and frames to the sockets until the stream ends. The two
    /// directions never wait for each other: requests the backend is slow to take wait in
    /// `outgoing` (bounded) while frames keep flowing, so a long replay on one side cannot
    /// stall the other.
    async fn pump(
        &mut self,
        requests: &mpsc::Sender<FollowRequest>,
        stream: &mut Streaming<FollowResponse>,
        outgoing: &mut VecDeque<FollowRequest>,
    ) -> StreamEnd {
        let shutdown = self.feeds.shutdown.clone();
        loop {
            if outgoing.len() > MAX_OUTGOING {
                return StreamEnd::Failed(Status::unavailable(
                    "the backend is not taking follow requests",
                ));
            }
            tokio::select! {
                permit = requests.reserve(), if !outgoing.is_empty() => match permit {
                    Ok(permit) => {
                        if let Some(request) = outgoing.pop_front() {
                            permit.send(request);
                        }
                    }
                    Err(_) => return StreamEnd::Failed(Status::unavailable("the follow stream closed")),
                },
                command = self.commands.recv() => {
                    let Some(command) = command else { return StreamEnd::Shutdown };
                    outgoing.extend(self.queue_command(command));
                    if self.subscribers.is_empty() {
                        return StreamEnd::Idle;
                    }
                }
                message = stream.message() => match message {
                    Ok(Some(response)) => {
                        self.healthy = true;
                        if let Some(frame) = response.frame {
                            if let Some(subscriber) = self.handle(frame) {
                                outgoing.push_back(FollowRequest {
                                    action: Some(Action::Detach(FollowDetach { subscriber })),
                                });
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
                let attach = attach_request(
                    request.subscriber,
                    &request.token,
                    request.since.clone(),
                    request.out.socket(),
                );
                self.subscribers.insert(
                    request.subscriber,
                    Subscriber {
                        out: request.out,
                        token: request.token,
                        // Set from the backend's answer; a pending subscriber resumes
                        // from its own `since`.
                        last: 0,
                        epoch: Arc::from(""),
                        state: SubState::Pending {
                            request_id: Some(request.request_id),
                            since: request.since,
                        },
                    },
                );
                Some(attach)
            }
            Command::Detach { subscriber } => {
                let sub = self.subscribers.remove(&subscriber)?;
                // Unsubscribed before the backend confirmed: the `subscribe` still gets its
                // answer (every request is answered once).
                if let SubState::Pending {
                    request_id: Some(id),
                    ..
                } = sub.state
                {
                    sub.out.text(protocol::error_frame(
                        Some(id),
                        protocol::status_code_name(Code::Cancelled),
                        "unsubscribed before the subscription started",
                    ));
                }
                Some(FollowRequest {
                    action: Some(Action::Detach(FollowDetach { subscriber })),
                })
            }
            Command::More { subscriber } => {
                let sub = self.subscribers.get(&subscriber)?;
                matches!(sub.state, SubState::Attached { replaying: true }).then_some(
                    FollowRequest {
                        action: Some(Action::More(FollowMore { subscriber })),
                    },
                )
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

    /// Handles one frame from the backend; returns a subscriber to detach there, if any.
    fn handle(&mut self, frame: Frame) -> Option<u64> {
        match frame {
            // Where the topic is on the new stream; each subscriber's own position is what
            // counts for it.
            Frame::Opened(_) => {}
            Frame::Attached(attached) => return self.on_attached(attached),
            Frame::Replay(replay) => self.on_replay(replay),
            Frame::Event(event) => self.on_event(&event),
            Frame::Presence(change) => self.to_attached(protocol::presence_push(&change)),
            Frame::Signal(signal) => self.to_attached(protocol::signal_push(&signal)),
            Frame::Detached(detached) => self.on_detached(detached),
            Frame::Refreshed(_) => {}
        }
        None
    }

    /// The backend accepted a subscriber: answer its `subscribe` (or, for a re-attach the
    /// backend could not resume, end it), greet it with the latest signals, and start it at
    /// `since` when pages follow, else at the top.
    fn on_attached(&mut self, attached: FollowAttached) -> Option<u64> {
        let sub = self.subscribers.get_mut(&attached.subscriber)?;
        let subscribed = attached.subscribed.unwrap_or_default();
        let position = subscribed.position.clone().unwrap_or_default();
        let SubState::Pending { request_id, since } = &sub.state else {
            return None;
        };
        let since = since.clone();
        match *request_id {
            Some(id) => {
                sub.out.text(protocol::result(id, &subscribed));
            }
            None if !subscribed.recovered => {
                let last = sub.position();
                let frame = protocol::unsubscribed(
                    &self.topic,
                    CloseCode::InsufficientState,
                    "the subscription could not be resumed on the backend (restarted, or its broker lost the history): resubscribe with `since` and reload",
                    &last,
                );
                end(&self.topic, attached.subscriber, &sub.out, frame);
                self.subscribers.remove(&attached.subscriber);
                return Some(attached.subscriber);
            }
            None => {}
        }
        for signal in &attached.signals {
            sub.out.push(OutItem::Text(protocol::signal_push(signal)));
        }
        sub.epoch = shared_epoch(&mut self.epoch, &position.epoch);
        sub.last = match since {
            Some(since) if attached.replaying => since.offset,
            _ => position.offset,
        };
        sub.state = SubState::Attached {
            replaying: attached.replaying,
        };
        None
    }

    /// One replay page for one subscriber; the next is asked for once its socket drained.
    fn on_replay(&mut self, replay: FollowReplay) {
        let Some(sub) = self.subscribers.get_mut(&replay.subscriber) else {
            return;
        };
        for event in &replay.events {
            if event.offset > sub.last {
                sub.out.push(OutItem::Text(protocol::event_push(event)));
                sub.last = event.offset;
            }
        }
        if replay.complete {
            sub.state = SubState::Attached { replaying: false };
        } else {
            let out = sub.out.clone();
            self.ask_more_when_drained(replay.subscriber, out);
        }
    }

    /// A live event: encoded once, queued to every live subscriber still below it.
    fn on_event(&mut self, event: &Event) {
        let mut push = None;
        let published = event.time.as_ref().and_then(herald_proto::system_time);
        for sub in self.subscribers.values_mut() {
            if sub.is_live() && sub.last < event.offset {
                let frame = push.get_or_insert_with(|| protocol::event_push(event));
                sub.out.push(OutItem::Event(frame.clone(), published));
                sub.last = event.offset;
            }
        }
    }

    /// A push without an offset (presence, signal) for every attached subscriber.
    fn to_attached(&self, push: Utf8Bytes) {
        for sub in self.subscribers.values() {
            if matches!(sub.state, SubState::Attached { .. }) {
                sub.out.push(OutItem::Text(push.clone()));
            }
        }
    }

    /// The backend refused or ended a subscriber: an error reply to a pending `subscribe`,
    /// or an `unsubscribed` push with its last offset.
    fn on_detached(&mut self, detached: FollowDetached) {
        let Some(sub) = self.subscribers.remove(&detached.subscriber) else {
            return;
        };
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
            _ => protocol::unsubscribed(&self.topic, code, &detached.message, &sub.position()),
        };
        end(&self.topic, detached.subscriber, &sub.out, frame);
        if code == CloseCode::DisconnectedByAdmin {
            // The user was disconnected everywhere: the socket closes too, with that code.
            sub.out.disconnect();
        }
    }

    /// Asks for a replaying subscriber's next page once its socket has drained this one.
    fn ask_more_when_drained(&self, subscriber: u64, out: Outbound) {
        let feeds = self.feeds.clone();
        let topic = self.topic.clone();
        tokio::spawn(async move {
            out.drained().await;
            feeds
                .send(&topic, Command::More { subscriber }, false)
                .await;
        });
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
                _ => protocol::unsubscribed(&self.topic, code, status.message(), &sub.position()),
            };
            end(&self.topic, id, &sub.out, frame);
        }
    }
}

/// Answers an attach that could not start a feed with an error reply to its `subscribe`.
fn refuse(topic: &Arc<str>, command: Command, status: &Status) {
    if let Command::Attach(request) = command {
        let frame = protocol::error_frame(
            Some(request.request_id),
            protocol::status_code_name(status.code()),
            status.message(),
        );
        end(topic, request.subscriber, &request.out, frame);
    }
}

fn end(topic: &Arc<str>, subscriber: u64, out: &Outbound, frame: String) {
    out.push(OutItem::Ended(Box::new(Ended {
        topic: topic.clone(),
        subscriber,
        frame: frame.into(),
    })));
}

fn attach_request(
    subscriber: u64,
    token: &str,
    since: Option<StreamPosition>,
    socket: u64,
) -> FollowRequest {
    FollowRequest {
        action: Some(Action::Attach(FollowAttach {
            subscriber,
            token: token.to_owned(),
            since,
            socket,
        })),
    }
}

/// Exponential backoff with jitter: 100 ms, 200 ms, … up to 5 s.
fn backoff(failures: u32) -> Duration {
    let base = 100u64.saturating_mul(1 << failures.min(6)).min(5000);
    let jitter = rand::random::<u64>() % (base / 2 + 1);
    Duration::from_millis(base / 2 + jitter)
}
