//! `herald.v1.Edge/Follow`: one backend stream per (edge, topic), shared by every socket the
//! edge has on that topic; `Edge/Verify`: many sockets' tokens verified in one call.
//!
//! Each follow stream is one hub subscriber; its events go out once, and the edge fans them out
//! to its sockets. Per socket, the backend keeps every decision: each `attach` carries the
//! socket's token, which is verified and authorized here like a `Rooms/Subscribe`, counted in
//! presence, and ended with `detached` when its token expires. A resuming socket is replayed
//! one page at a time: the edge asks for the next page (`more`) once the socket drained the
//! last one, so a long catch-up never fills the socket's queue; the next page is read ahead
//! while the socket writes out the last. When the follow stream ends,
//! all its subscribers leave presence.
//!
//! A subscriber reading as a member (`conv:`, `group:`) is detached with PERMISSION_DENIED
//! right after the event that ends its membership, live or in its replay pages; the others
//! go on.
//!
//! The stream's own live position follows the same [`LiveCursor`] as `Rooms/Subscribe`: on a
//! durable topic a gap, or the hub dropping this stream for falling behind, is filled from
//! history and forwarded as ordinary `event`s.

use std::{collections::HashMap, pin::Pin, sync::Arc, time::Duration};

use futures_util::{Stream, StreamExt};
use herald_proto::codes::close_code_of;
use herald_proto::server::edge_server::Edge;
use herald_proto::v1::{
    CloseCode, DescribeRequest, DescribeResponse, FollowAttached, FollowDetached, FollowOpened,
    FollowRefreshed, FollowReplay, FollowRequest, FollowResponse, StreamPosition, TokenRefusal,
    VerifyOutcome, VerifyRequest, VerifyResponse, follow_request::Action, follow_response::Frame,
    verify_outcome::Outcome,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::time::{DelayQueue, delay_queue};
use tonic::{Request, Response, Status, Streaming};

use crate::{
    auth::{Principal, TokenVerifier, interceptor::principal},
    authz::{Action as PolicyAction, Revocation},
    connections::{Kill, Registration, Transport},
    cursor::{Ending, LiveCursor, Verdict},
    error::Error,
    event::SharedEvent,
    grpc::auth::identity,
    history::{HistoryError, PageBudget, PageRead},
    hub::{HubItem, HubSubscription},
    metrics::{FollowGauge, SubscriptionGauge},
    node::{Node, history_error},
    presence::PresenceGuard,
    subscription::Replay,
    topic::Topic,
};

/// How many frames may wait for the edge before the follow task itself waits.
const OUTBOUND_FRAMES: usize = 256;
/// Replayed events are sent in chunks of at most this many.
const REPLAY_CHUNK: usize = 100;
/// One replay page for a socket: small enough that its JSON fits the socket's queue.
const SOCKET_PAGE: PageBudget = PageBudget {
    events: 256,
    bytes: 256 * 1024,
};
/// Tokens one `Verify` call may carry (an edge sends at most 256).
pub const MAX_VERIFY_BATCH: usize = 1000;
/// Token lifetimes beyond this are timed as this (the timer wheel's range is ~2 years).
const MAX_EXPIRY: Duration = Duration::from_secs(365 * 24 * 3600);

#[derive(Debug, Clone)]
pub struct EdgeService {
    node: Arc<Node>,
    verifier: Arc<TokenVerifier>,
    /// This process's id for `Describe`.
    instance_id: Arc<str>,
}

impl EdgeService {
    pub fn new(node: Arc<Node>, verifier: Arc<TokenVerifier>) -> Self {
        Self {
            node,
            verifier,
            instance_id: uuid::Uuid::new_v4().to_string().into(),
        }
    }
}

/// The caller of `Edge/{method}`, refused PERMISSION_DENIED unless it has the `service` role:
/// the `Edge` service is for edges, never for a socket's or an app's own token.
fn require_service<T>(request: &Request<T>, method: &str) -> Result<Principal, Status> {
    let caller = principal(request)?;
    if !caller.is_service() {
        return Err(Error::PermissionDenied(format!(
            "Edge/{method} is for edges: call it with a token carrying the `service` role"
        ))
        .into());
    }
    Ok(caller)
}

/// The response stream of `Follow`.
pub type FollowStream = Pin<Box<dyn Stream<Item = Result<FollowResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Edge for EdgeService {
    type FollowStream = FollowStream;

    async fn describe(
        &self,
        request: Request<DescribeRequest>,
    ) -> Result<Response<DescribeResponse>, Status> {
        require_service(&request, "Describe")?;
        // Memory: events published on this backend reach its own subscribers only. Redis:
        // every backend on the same Redis delivers every event.
        let cluster_id = self
            .node
            .broker_cluster_id()
            .await
            .map_err(crate::error::Error::from)?
            .unwrap_or_default();
        Ok(Response::new(DescribeResponse {
            broker: self.node.broker_kind() as i32,
            instance_id: self.instance_id.to_string(),
            cluster_id,
        }))
    }

    async fn verify(
        &self,
        request: Request<VerifyRequest>,
    ) -> Result<Response<VerifyResponse>, Status> {
        require_service(&request, "Verify")?;
        let tokens = request.into_inner().tokens;
        if tokens.is_empty() || tokens.len() > MAX_VERIFY_BATCH {
            return Err(Error::invalid(format!(
                "Edge/Verify takes 1 to {MAX_VERIFY_BATCH} tokens, not {}; send them in several calls",
                tokens.len()
            ))
            .into());
        }
        let outcomes = tokens
            .iter()
            .map(|token| {
                let outcome = match self.verifier.verify(token.trim()) {
                    Ok(who) => Outcome::Identity(identity(who)),
                    Err(error) => {
                        let status = Status::from(error);
                        Outcome::Refused(TokenRefusal {
                            code: status.code() as i32,
                            message: status.message().to_owned(),
                        })
                    }
                };
                VerifyOutcome {
                    outcome: Some(outcome),
                }
            })
            .collect();
        Ok(Response::new(VerifyResponse { outcomes }))
    }

    async fn follow(
        &self,
        request: Request<Streaming<FollowRequest>>,
    ) -> Result<Response<FollowStream>, Status> {
        let edge = require_service(&request, "Follow")?;
        let mut inbound = request.into_inner();
        let topic = match inbound.message().await?.and_then(|r| r.action) {
            Some(Action::Open(open)) => {
                Topic::parse(&open.topic).map_err(|e| Status::from(Error::from(e)))?
            }
            _ => {
                return Err(
                    Error::invalid("the first Follow request must be `open {topic}`").into(),
                );
            }
        };
        let live = self.node.register(&topic)?;
        let (top, _) = self
            .node
            .history_reader()
            .position(&topic, None)
            .await
            .map_err(history_error)?;
        let (tx, rx) = mpsc::channel(OUTBOUND_FRAMES);
        let opened = frame(Frame::Opened(FollowOpened {
            position: Some(top.clone()),
        }));
        tx.send(Ok(opened))
            .await
            .map_err(|_| Status::cancelled("edge went away"))?;
        let durable = self.node.lanes().is_durable(&topic);
        let task = FollowTask {
            node: self.node.clone(),
            verifier: self.verifier.clone(),
            topic,
            live: Some(live),
            cursor: LiveCursor::new(top, durable),
            tx,
            subscribers: HashMap::new(),
            expiries: DelayQueue::new(),
            _counted: self.node.metrics().follow_stream(),
            edge: Arc::from(edge.user_id.as_str()),
            disconnects: mpsc::unbounded_channel(),
        };
        let span = tracing::info_span!("follow", kind = task.topic.kind().as_str());
        tokio::spawn(tracing::Instrument::instrument(task.run(inbound), span));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

struct Attached {
    user_id: String,
    expiry: delay_queue::Key,
    /// While the subscriber is replaying: where its next page starts. The rarely used parts
    /// are boxed: a follow stream holds one entry per socket of its topic.
    replay: Option<Box<Replaying>>,
    /// For a subscriber reading as a member: detached right after the event that ends its
    /// membership.
    revocation: Option<Box<Revocation>>,
    _presence: Option<Box<PresenceGuard>>,
    _counted: SubscriptionGauge,
    /// Lists the socket in `Admin/ListConnections`; `DisconnectUser` detaches it.
    _registration: Registration,
}

/// A replaying subscriber's next page.
struct Replaying {
    from: StreamPosition,
    /// That page, read ahead while the socket writes out the previous one.
    read_ahead: Option<PageRead>,
}

struct FollowTask {
    node: Arc<Node>,
    verifier: Arc<TokenVerifier>,
    topic: Topic,
    /// `None` only while refilling after the hub dropped this stream.
    live: Option<HubSubscription>,
    /// The last event forwarded on this stream.
    cursor: LiveCursor,
    tx: mpsc::Sender<Result<FollowResponse, Status>>,
    subscribers: HashMap<u64, Attached>,
    expiries: DelayQueue<u64>,
    _counted: FollowGauge,
    /// The edge's principal, for `Admin/ListConnections`.
    edge: Arc<str>,
    /// Subscribers an admin disconnected, to detach.
    disconnects: (mpsc::UnboundedSender<u64>, mpsc::UnboundedReceiver<u64>),
}

/// Why the follow task stops.
enum Stop {
    /// The edge went away or closed its side: nothing more to say.
    Quietly,
    /// End the stream with this status.
    With(Status),
}

impl FollowTask {
    async fn run(mut self, mut inbound: Streaming<FollowRequest>) {
        let stop = loop {
            if let Err(stop) = self.step(&mut inbound).await {
                break stop;
            }
        };
        if let Stop::With(status) = stop {
            let _ = self.tx.send(Err(status)).await;
        }
    }

    /// Waits for the next thing to do and does it.
    async fn step(&mut self, inbound: &mut Streaming<FollowRequest>) -> Result<(), Stop> {
        let Some(live) = self.live.as_mut() else {
            return self.refill().await;
        };
        tokio::select! {
            biased;
            () = self.tx.closed() => Err(Stop::Quietly),
            item = live.receiver().recv() => self.forward(item).await,
            Some(expired) = self.expiries.next() => {
                self.detach_with(expired.into_inner(), Ending::TokenExpired).await
            }
            Some(subscriber) = self.disconnects.1.recv() => {
                if let Some(gone) = self.subscribers.get(&subscriber) {
                    self.expiries.remove(&gone.expiry);
                }
                self.detach_with(subscriber, Ending::DisconnectedByAdmin).await
            }
            request = inbound.message() => match request {
                Ok(Some(request)) => self.handle(request).await,
                Ok(None) | Err(_) => Err(Stop::Quietly),
            },
        }
    }

    async fn send(&self, frame_: Frame) -> Result<(), Stop> {
        self.tx
            .send(Ok(frame(frame_)))
            .await
            .map_err(|_| Stop::Quietly)
    }

    fn end(&self, ending: Ending) -> Stop {
        Stop::With(ending.status(self.cursor.last()))
    }

    async fn forward(&mut self, item: Option<HubItem>) -> Result<(), Stop> {
        let Some(item) = item else {
            let reason = self.live.as_ref().map(HubSubscription::close_reason);
            return match reason.map(|reason| self.cursor.hub_closed(reason)) {
                Some(Verdict::End(ending)) => Err(self.end(ending)),
                _ => {
                    self.live = None; // fell behind on a durable topic: refill from history
                    Ok(())
                }
            };
        };
        match item {
            HubItem::Event(event) => match self.cursor.accept(&event) {
                Verdict::Deliver => {
                    self.cursor.advance(&event);
                    self.send(Frame::Event(event.event().clone())).await?;
                    self.revoke_after(&event).await
                }
                Verdict::Skip => Ok(()),
                Verdict::Fill => self.fill().await,
                Verdict::End(ending) => Err(self.end(ending)),
            },
            HubItem::Presence(change) => self.send(Frame::Presence((*change).clone())).await,
            HubItem::Signal(signal) => self.send(Frame::Signal((*signal).clone())).await,
        }
    }

    /// Registers with the hub again, then forwards what history holds after the cursor.
    async fn refill(&mut self) -> Result<(), Stop> {
        self.live = Some(
            self.node
                .register(&self.topic)
                .map_err(|_| self.end(Ending::Shutdown))?,
        );
        self.fill().await
    }

    /// Forwards history after the cursor, page by page, until caught up.
    async fn fill(&mut self) -> Result<(), Stop> {
        loop {
            let page = self
                .node
                .history_reader()
                .page(&self.topic, self.cursor.last(), PageBudget::REPLAY)
                .await
                .map_err(|error| self.end(page_ending(error)))?;
            for event in &page.events {
                if self.cursor.accept(event) == Verdict::Deliver {
                    self.cursor.advance(event);
                    self.send(Frame::Event(event.event().clone())).await?;
                    self.revoke_after(event).await?;
                }
            }
            if page.reached_end {
                return Ok(());
            }
        }
    }

    async fn handle(&mut self, request: FollowRequest) -> Result<(), Stop> {
        match request.action {
            Some(Action::Attach(attach)) => {
                match self
                    .attach(
                        attach.subscriber,
                        &attach.token,
                        attach.since,
                        attach.socket,
                    )
                    .await
                {
                    Ok(()) => Ok(()),
                    Err(error) => self.refuse(attach.subscriber, error).await,
                }
            }
            Some(Action::More(more)) => self.replay_page(more.subscriber).await,
            Some(Action::Detach(detach)) => {
                if let Some(gone) = self.subscribers.remove(&detach.subscriber) {
                    self.expiries.remove(&gone.expiry);
                }
                Ok(())
            }
            Some(Action::Refresh(refresh)) => {
                match self.refresh(refresh.subscriber, &refresh.token).await {
                    Ok(()) => {
                        let refreshed = FollowRefreshed {
                            subscriber: refresh.subscriber,
                        };
                        self.send(Frame::Refreshed(refreshed)).await
                    }
                    Err(error) => {
                        if let Some(gone) = self.subscribers.remove(&refresh.subscriber) {
                            self.expiries.remove(&gone.expiry);
                        }
                        self.refuse(refresh.subscriber, error).await
                    }
                }
            }
            Some(Action::Open(_)) | None => Err(Stop::With(
                Error::invalid("`open` may only be the first Follow request").into(),
            )),
        }
    }

    async fn verify(&self, token: &str) -> Result<Principal, Error> {
        let who = self.verifier.verify(token)?;
        self.node
            .authorize(&who, PolicyAction::Read, &self.topic)
            .await?;
        Ok(who)
    }

    async fn attach(
        &mut self,
        subscriber: u64,
        token: &str,
        since: Option<StreamPosition>,
        socket: u64,
    ) -> Result<(), Error> {
        if self.subscribers.contains_key(&subscriber) {
            return Err(Error::invalid(format!(
                "subscriber {subscriber} is already attached to this stream"
            )));
        }
        let who = self.verify(token).await?;
        let Some(live) = &self.live else {
            return Err(Error::Unavailable(
                "the stream is catching up; retry".into(),
            ));
        };
        let attachment = self.node.attach(&who, &self.topic, since, live).await?;
        let expiry = self
            .expiries
            .insert(subscriber, who.time_left().min(MAX_EXPIRY));
        let replaying = !matches!(attachment.replay, Replay::Nothing);
        let revocation = attachment.revocation;
        let registration = self.node.connections().register(
            &who.user_id,
            &self.topic,
            Transport::Edge {
                edge: self.edge.clone(),
                socket,
            },
            Kill::Follow {
                tx: self.disconnects.0.clone(),
                subscriber,
            },
        );
        self.subscribers.insert(
            subscriber,
            Attached {
                user_id: who.user_id,
                expiry,
                replay: matches!(attachment.replay, Replay::Pages).then(|| {
                    Box::new(Replaying {
                        from: attachment.cursor.last().clone(),
                        read_ahead: None,
                    })
                }),
                revocation: revocation.clone().map(Box::new),
                _presence: attachment.presence.map(Box::new),
                _counted: attachment.counted,
                _registration: registration,
            },
        );
        let attached = FollowAttached {
            subscriber,
            subscribed: Some(attachment.subscribed),
            signals: attachment.signals,
            replaying,
        };
        self.send(Frame::Attached(attached))
            .await
            .map_err(|_| gone())?;
        match attachment.replay {
            Replay::Nothing => Ok(()),
            Replay::Events(mut events) => {
                let revoked = cut_at_revocation(&mut events, revocation.as_ref());
                let chunks = events.chunks(REPLAY_CHUNK).count().max(1);
                for (index, chunk) in events.chunks(REPLAY_CHUNK).enumerate() {
                    let replay = FollowReplay {
                        subscriber,
                        events: chunk.iter().map(|e| e.event().clone()).collect(),
                        complete: index + 1 == chunks,
                    };
                    self.send(Frame::Replay(replay)).await.map_err(|_| gone())?;
                }
                if events.is_empty() {
                    let replay = FollowReplay {
                        subscriber,
                        events: Vec::new(),
                        complete: true,
                    };
                    self.send(Frame::Replay(replay)).await.map_err(|_| gone())?;
                }
                if revoked {
                    self.detach_with(subscriber, Ending::Revoked)
                        .await
                        .map_err(|_| gone())?;
                }
                Ok(())
            }
            Replay::Pages => self.replay_page(subscriber).await.map_err(|_| gone()),
        }
    }

    /// Sends a replaying subscriber its next page. `complete` once it reaches the stream's
    /// live position: every later `event` frame is then for it too.
    async fn replay_page(&mut self, subscriber: u64) -> Result<(), Stop> {
        let Some((from, read_ahead)) = self
            .subscribers
            .get_mut(&subscriber)
            .and_then(|s| s.replay.as_mut())
            .map(|replay| (replay.from.clone(), replay.read_ahead.take()))
        else {
            return Ok(()); // detached meanwhile, or not replaying: nothing to send
        };
        let read = match read_ahead {
            Some(read) if *read.after() == from => read,
            _ => PageRead::start(
                self.node.history_reader(),
                &self.topic,
                from.clone(),
                SOCKET_PAGE,
                Some(self.cursor.last().offset),
            ),
        };
        let page = match read.await {
            Ok(page) => page,
            Err(error) => {
                if let Some(gone) = self.subscribers.remove(&subscriber) {
                    self.expiries.remove(&gone.expiry);
                }
                let ending = page_ending(error);
                let (code, close, message) = ending.parts();
                let detached = FollowDetached {
                    subscriber,
                    status: code as i32,
                    code: close as i32,
                    message: message.to_owned(),
                };
                return self.send(Frame::Detached(detached)).await;
            }
        };
        let mut events = page.events;
        let revocation = self
            .subscribers
            .get(&subscriber)
            .and_then(|s| s.revocation.as_deref());
        let revoked = cut_at_revocation(&mut events, revocation);
        let end = events.last().map_or(from.offset, |event| event.offset);
        // Complete only once the page reaches what this stream has forwarded by now: the
        // socket's edge skips live events for a replaying subscriber, so a page that ended
        // below them (read ahead, before they arrived) would lose them. Such a page is
        // followed by another instead.
        let complete = revoked || end >= self.cursor.last().offset;
        if let Some(attached) = self.subscribers.get_mut(&subscriber) {
            attached.replay = (!complete).then(|| {
                let next = StreamPosition {
                    offset: end,
                    epoch: from.epoch.clone(),
                };
                // Through what this stream has seen: committed, though perhaps not yet in
                // the broker's cache (the stream opened at the database's top).
                let through = Some(self.cursor.last().offset);
                let read_ahead = PageRead::start(
                    self.node.history_reader(),
                    &self.topic,
                    next.clone(),
                    SOCKET_PAGE,
                    through,
                );
                Box::new(Replaying {
                    from: next,
                    read_ahead: Some(read_ahead),
                })
            });
        }
        let replay = FollowReplay {
            subscriber,
            events: events.iter().map(|e| e.event().clone()).collect(),
            complete,
        };
        self.send(Frame::Replay(replay)).await?;
        if revoked {
            return self.detach_with(subscriber, Ending::Revoked).await;
        }
        Ok(())
    }

    /// Detaches every live subscriber whose membership `event` (just forwarded) ended.
    /// Subscribers still replaying meet the event in their pages instead.
    async fn revoke_after(&mut self, event: &SharedEvent) -> Result<(), Stop> {
        let revoked: Vec<u64> = self
            .subscribers
            .iter()
            .filter(|(_, s)| s.replay.is_none())
            .filter(|(_, s)| s.revocation.as_ref().is_some_and(|r| r.ends_with(event)))
            .map(|(id, _)| *id)
            .collect();
        for subscriber in revoked {
            self.detach_with(subscriber, Ending::Revoked).await?;
        }
        Ok(())
    }

    async fn refresh(&mut self, subscriber: u64, token: &str) -> Result<(), Error> {
        let who = self.verify(token).await?;
        let Some(attached) = self.subscribers.get(&subscriber) else {
            return Err(Error::invalid(format!(
                "subscriber {subscriber} is not attached"
            )));
        };
        if attached.user_id != who.user_id {
            return Err(Error::PermissionDenied(
                "a refreshed token must be for the same user as the one it replaces".into(),
            ));
        }
        self.expiries
            .reset(&attached.expiry, who.time_left().min(MAX_EXPIRY));
        Ok(())
    }

    async fn refuse(&mut self, subscriber: u64, error: Error) -> Result<(), Stop> {
        let status = Status::from(error);
        let detached = FollowDetached {
            subscriber,
            status: status.code() as i32,
            code: close_code_of(&status).unwrap_or(CloseCode::Internal) as i32,
            message: status.message().to_owned(),
        };
        self.send(Frame::Detached(detached)).await
    }

    async fn detach_with(&mut self, subscriber: u64, ending: Ending) -> Result<(), Stop> {
        if self.subscribers.remove(&subscriber).is_none() {
            return Ok(());
        }
        let (code, close, message) = ending.parts();
        let detached = FollowDetached {
            subscriber,
            status: code as i32,
            code: close as i32,
            message: message.to_owned(),
        };
        self.send(Frame::Detached(detached)).await
    }
}

/// Cuts `events` right after the first one that ends the subscriber's membership; true when
/// one did (the subscriber is then detached after them).
fn cut_at_revocation(events: &mut Vec<Arc<SharedEvent>>, revocation: Option<&Revocation>) -> bool {
    let Some(revocation) = revocation else {
        return false;
    };
    match events.iter().position(|event| revocation.ends_with(event)) {
        Some(index) => {
            events.truncate(index + 1);
            true
        }
        None => false,
    }
}

fn page_ending(error: HistoryError) -> Ending {
    match error {
        HistoryError::Gone(_) => Ending::HistoryGone,
        error => {
            tracing::warn!(%error, "could not read history for a follow stream");
            Ending::Unavailable
        }
    }
}

fn frame(frame: Frame) -> FollowResponse {
    FollowResponse { frame: Some(frame) }
}

fn gone() -> Error {
    Error::Unavailable("the edge went away".into())
}
