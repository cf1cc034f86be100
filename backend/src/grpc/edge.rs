//! `herald.v1.Edge/Follow`: one backend stream per (edge, topic), shared by every socket the
//! edge has on that topic.
//!
//! Each follow stream is one hub subscriber; its events go out once, and the edge fans them out
//! to its sockets. Per socket, the backend keeps every decision: each `attach` carries the
//! socket's token, which is verified and authorized here like a `Rooms/Subscribe`, replayed
//! from history on resume, counted in presence, and ended with `detached` when its token
//! expires. When the follow stream ends, all its subscribers leave presence.

use std::{collections::HashMap, pin::Pin, sync::Arc, time::Duration};

use futures_util::{Stream, StreamExt};
use herald_proto::codes::close_code_of;
use herald_proto::server::edge_server::Edge;
use herald_proto::v1::{
    CloseCode, FollowAttached, FollowDetached, FollowOpened, FollowRefreshed, FollowReplay,
    FollowRequest, FollowResponse, StreamPosition, follow_request::Action, follow_response::Frame,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::time::{DelayQueue, delay_queue};
use tonic::{Code, Request, Response, Status, Streaming};

use crate::{
    auth::{Principal, TokenVerifier, interceptor::principal},
    authz::Action as PolicyAction,
    error::{Error, stream_end},
    hub::{CloseReason, HubItem, HubSubscription},
    node::{Node, shutting_down},
    subscription::PresenceGuard,
    topic::Topic,
};

/// How many frames may wait for the edge before the follow task itself waits.
const OUTBOUND_FRAMES: usize = 256;
/// Replayed events are sent in chunks of at most this many.
const REPLAY_CHUNK: usize = 100;

#[derive(Debug, Clone)]
pub struct EdgeService {
    node: Arc<Node>,
    verifier: Arc<TokenVerifier>,
}

impl EdgeService {
    pub fn new(node: Arc<Node>, verifier: Arc<TokenVerifier>) -> Self {
        Self { node, verifier }
    }
}

/// The response stream of `Follow`.
pub type FollowStream = Pin<Box<dyn Stream<Item = Result<FollowResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Edge for EdgeService {
    type FollowStream = FollowStream;

    async fn follow(
        &self,
        request: Request<Streaming<FollowRequest>>,
    ) -> Result<Response<FollowStream>, Status> {
        let edge = principal(&request)?;
        if !edge.is_service() {
            return Err(Error::PermissionDenied(
                "Edge/Follow is for edges: call it with a token carrying the `service` role".into(),
            )
            .into());
        }
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
        let live = self
            .node
            .hub()
            .subscribe(&topic)
            .map_err(|_| shutting_down())?;
        let top = self.node.top(&topic).await?;
        let (tx, rx) = mpsc::channel(OUTBOUND_FRAMES);
        let opened = frame(Frame::Opened(FollowOpened {
            position: Some(top.clone()),
        }));
        tx.send(Ok(opened))
            .await
            .map_err(|_| Status::cancelled("edge went away"))?;
        let task = FollowTask {
            node: self.node.clone(),
            verifier: self.verifier.clone(),
            topic,
            live,
            last: top,
            tx,
            subscribers: HashMap::new(),
            expiries: DelayQueue::new(),
        };
        tokio::spawn(task.run(inbound));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

struct Attached {
    user_id: String,
    expiry: delay_queue::Key,
    _presence: Option<PresenceGuard>,
}

struct FollowTask {
    node: Arc<Node>,
    verifier: Arc<TokenVerifier>,
    topic: Topic,
    live: HubSubscription,
    /// The last event forwarded on this stream.
    last: StreamPosition,
    tx: mpsc::Sender<Result<FollowResponse, Status>>,
    subscribers: HashMap<u64, Attached>,
    expiries: DelayQueue<u64>,
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
            let step = tokio::select! {
                biased;
                () = self.tx.closed() => Err(Stop::Quietly),
                item = self.live.receiver().recv() => self.forward(item).await,
                Some(expired) = self.expiries.next() => {
                    let subscriber = expired.into_inner();
                    self.detach_with(subscriber, Code::Unauthenticated, CloseCode::TokenExpired, "token expired").await
                }
                request = inbound.message() => match request {
                    Ok(Some(request)) => self.handle(request).await,
                    Ok(None) | Err(_) => Err(Stop::Quietly),
                },
            };
            if let Err(stop) = step {
                break stop;
            }
        };
        if let Stop::With(status) = stop {
            let _ = self.tx.send(Err(status)).await;
        }
    }

    async fn send(&self, frame_: Frame) -> Result<(), Stop> {
        self.tx
            .send(Ok(frame(frame_)))
            .await
            .map_err(|_| Stop::Quietly)
    }

    async fn forward(&mut self, item: Option<HubItem>) -> Result<(), Stop> {
        let Some(item) = item else {
            let (code, close, message) = match self.live.close_reason() {
                CloseReason::SlowConsumer => (
                    Code::ResourceExhausted,
                    CloseCode::SlowConsumer,
                    "slow consumer: the edge fell too far behind",
                ),
                CloseReason::Shutdown | CloseReason::Open => {
                    (Code::Unavailable, CloseCode::Shutdown, "shutting down")
                }
            };
            return Err(Stop::With(stream_end(code, close, message, &self.last)));
        };
        match item {
            HubItem::Event(event) => {
                if event.epoch != self.last.epoch || event.offset > self.last.offset + 1 {
                    return Err(Stop::With(stream_end(
                        Code::Unavailable,
                        CloseCode::InsufficientState,
                        "live delivery would skip an offset",
                        &self.last,
                    )));
                }
                if event.offset <= self.last.offset {
                    return Ok(());
                }
                self.last.offset = event.offset;
                self.send(Frame::Event(event.event().clone())).await
            }
            HubItem::Presence(change) => self.send(Frame::Presence((*change).clone())).await,
        }
    }

    async fn handle(&mut self, request: FollowRequest) -> Result<(), Stop> {
        match request.action {
            Some(Action::Attach(attach)) => {
                match self
                    .attach(attach.subscriber, &attach.token, attach.since)
                    .await
                {
                    Ok(()) => Ok(()),
                    Err(error) => self.refuse(attach.subscriber, error).await,
                }
            }
            Some(Action::Detach(detach)) => {
                if let Some(gone) = self.subscribers.remove(&detach.subscriber) {
                    self.expiries.remove(&gone.expiry);
                }
                Ok(())
            }
            Some(Action::Refresh(refresh)) => {
                match self.refresh(refresh.subscriber, &refresh.token) {
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

    fn verify(&self, token: &str) -> Result<Principal, Error> {
        let who = self.verifier.verify(token)?;
        self.node.authorize(&who, PolicyAction::Read, &self.topic)?;
        Ok(who)
    }

    async fn attach(
        &mut self,
        subscriber: u64,
        token: &str,
        since: Option<StreamPosition>,
    ) -> Result<(), Error> {
        if self.subscribers.contains_key(&subscriber) {
            return Err(Error::invalid(format!(
                "subscriber {subscriber} is already attached to this stream"
            )));
        }
        let who = self.verify(token)?;
        let resume = self.node.resume(&self.topic, since).await?;
        let presence = self.node.join_presence(&who, &self.topic).await;
        let expiry = self.expiries.insert(subscriber, who.time_left());
        self.subscribers.insert(
            subscriber,
            Attached {
                user_id: who.user_id,
                expiry,
                _presence: presence,
            },
        );
        let attached = FollowAttached {
            subscriber,
            subscribed: Some(resume.subscribed),
        };
        self.send(Frame::Attached(attached))
            .await
            .map_err(|_| gone())?;
        for chunk in resume.replay.chunks(REPLAY_CHUNK) {
            let replay = FollowReplay {
                subscriber,
                events: chunk.iter().map(|e| e.event().clone()).collect(),
            };
            self.send(Frame::Replay(replay)).await.map_err(|_| gone())?;
        }
        Ok(())
    }

    fn refresh(&mut self, subscriber: u64, token: &str) -> Result<(), Error> {
        let who = self.verify(token)?;
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
            .reset(&attached.expiry, who.time_left().max(Duration::ZERO));
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

    async fn detach_with(
        &mut self,
        subscriber: u64,
        code: Code,
        close: CloseCode,
        message: &str,
    ) -> Result<(), Stop> {
        if self.subscribers.remove(&subscriber).is_none() {
            return Ok(());
        }
        let detached = FollowDetached {
            subscriber,
            status: code as i32,
            code: close as i32,
            message: message.to_owned(),
        };
        self.send(Frame::Detached(detached)).await
    }
}

fn frame(frame: Frame) -> FollowResponse {
    FollowResponse { frame: Some(frame) }
}

fn gone() -> Error {
    Error::Unavailable("the edge went away".into())
}
