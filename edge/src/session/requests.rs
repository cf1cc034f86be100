//! What a session does with each request, and with each piece of work it finishes later
//! (a verified token, a call's reply). Nothing here touches the socket: answers go to the
//! outbound queue, refusals are [`RequestError`]s, and a reason to close the socket is
//! returned as a [`CloseReason`].

use std::{collections::VecDeque, pin::Pin, sync::Arc};

use herald_proto::v1::StreamPosition;
use serde_json::{Value, json};
use tonic::Status;

use super::{
    FeedCommand, Session,
    error::{CloseReason, RequestError},
};
use crate::{
    EdgeContext,
    feeds::AttachRequest,
    protocol::{self, Request},
};

/// Requests held while `auth` is being verified.
const MAX_HELD_REQUESTS: usize = 32;
/// `publish` is this call with the request's params.
const PUBLISH_RPC: &str = "herald.v1.Rooms/Publish";
/// Publishes queued behind a topic's in-flight one go together through this call, which
/// applies them in order.
const PUBLISH_BATCH_RPC: &str = "herald.v1.Rooms/PublishBatch";
/// The most publishes of one batch (the backend's bound).
const MAX_PUBLISH_BATCH: usize = 100;

pub(super) type Pending = Pin<Box<dyn Future<Output = Completion> + Send>>;

/// What a finished piece of asynchronous work asks the session to do.
pub(super) enum Completion {
    /// A unary call finished: write its reply.
    CallDone(String),
    /// A publish or a batch of them finished: write the replies, then start the topic's
    /// next queued publishes.
    PublishDone {
        topic: Arc<str>,
        frames: Vec<String>,
    },
    /// `auth` or `refresh` succeeded. `id` is `None` for the upgrade's bearer token.
    Authenticated {
        id: Option<u64>,
        token: String,
        identity: Value,
        refresh: bool,
    },
    /// `auth` or `refresh` failed: answer; a failed `auth` also closes the socket.
    AuthFailed {
        id: Option<u64>,
        refresh: bool,
        status: Status,
    },
}

/// The identity a socket authenticated as.
pub(super) struct Auth {
    token: Arc<str>,
}

/// Whether a request may run now.
enum Gate {
    Run,
    /// Wait for the `auth` in progress.
    Hold,
    Refuse(RequestError),
    Close(CloseReason),
}

impl<S> Session<S> {
    /// Handles one text frame; returns a close when the socket must end.
    pub(super) fn request(&mut self, text: &str) -> Result<(), CloseReason> {
        let (id, parsed) = protocol::parse(text);
        let request = match parsed {
            Ok(request) => request,
            Err(error) => {
                self.refuse(id, error.into());
                return Ok(());
            }
        };
        // `parse` only succeeds with an id.
        let id = id.unwrap_or_default();
        match self.gate(&request) {
            Gate::Run => {
                if let Err(error) = self.dispatch(id, request) {
                    self.refuse(Some(id), error);
                }
            }
            Gate::Hold => self.held.push(text.to_owned()),
            Gate::Refuse(error) => self.refuse(Some(id), error),
            Gate::Close(reason) => return Err(reason),
        }
        Ok(())
    }

    /// Authentication and the rate limit, for every request but `ping` and `auth`.
    fn gate(&mut self, request: &Request) -> Gate {
        if matches!(request, Request::Ping | Request::Auth { .. }) {
            return Gate::Run;
        }
        if self.auth.is_none() {
            if !self.authenticating {
                return Gate::Refuse(RequestError::NotAuthenticated);
            }
            // Clients may send requests right behind `auth`; they wait for its answer.
            if self.held.len() >= MAX_HELD_REQUESTS {
                return Gate::Refuse(RequestError::TooManyHeld);
            }
            return Gate::Hold;
        }
        if self.bucket.try_take() {
            self.strikes = 0;
            return Gate::Run;
        }
        self.strikes += 1;
        if self.strikes > self.ctx.config.limits.rate_abuse_limit {
            Gate::Close(CloseReason::RateAbuse)
        } else {
            Gate::Refuse(RequestError::RateLimited)
        }
    }

    fn dispatch(&mut self, id: u64, request: Request) -> Result<(), RequestError> {
        match request {
            Request::Ping => self.reply(protocol::result(id, &json!({}))),
            Request::Auth { token } => self.auth(id, token)?,
            Request::Refresh { token } => {
                self.pending
                    .push(verify(self.ctx.clone(), Some(id), token, true));
            }
            Request::Subscribe { topic, since } => self.subscribe(id, topic, since)?,
            Request::Unsubscribe { topic } => self.unsubscribe(id, topic)?,
            Request::Publish { params } => self.publish(id, params)?,
            Request::Call { rpc, request } => self.call(id, rpc, request)?,
        }
        Ok(())
    }

    fn auth(&mut self, id: u64, token: String) -> Result<(), RequestError> {
        if self.auth.is_some() {
            return Err(RequestError::AlreadyAuthenticated);
        }
        if self.authenticating {
            return Err(RequestError::AuthInProgress);
        }
        self.authenticating = true;
        self.pending
            .push(verify(self.ctx.clone(), Some(id), token, false));
        Ok(())
    }

    /// Attaches the socket to the topic's feed, which answers the request itself.
    fn subscribe(
        &mut self,
        id: u64,
        topic: String,
        since: Option<StreamPosition>,
    ) -> Result<(), RequestError> {
        let topic: Arc<str> = Arc::from(topic);
        if self.subscriptions.contains_key(&topic) {
            return Err(RequestError::AlreadySubscribed(topic));
        }
        let limit = self.ctx.config.limits.max_subscriptions;
        if self.subscriptions.len() >= limit {
            return Err(RequestError::TooManySubscriptions(limit));
        }
        let Some(auth) = &self.auth else {
            return Err(RequestError::NotAuthenticated);
        };
        let subscriber = self.ctx.feeds.next_subscriber();
        self.ctx.metrics.subscribed(&topic);
        self.subscriptions.insert(topic.clone(), subscriber);
        let request = AttachRequest {
            topic,
            subscriber,
            request_id: id,
            token: auth.token.clone(),
            since,
            out: self.out.clone(),
        };
        self.feed_commands.send(FeedCommand::Attach(request));
        Ok(())
    }

    fn unsubscribe(&mut self, id: u64, topic: String) -> Result<(), RequestError> {
        let topic: Arc<str> = Arc::from(topic);
        let Some(subscriber) = self.subscriptions.remove(&topic) else {
            return Err(RequestError::NotSubscribed(topic));
        };
        self.feed_commands.send(FeedCommand::Detach {
            topic,
            subscriber,
            reply: Some(id),
        });
        Ok(())
    }

    fn call(&mut self, id: u64, rpc: String, request: Value) -> Result<(), RequestError> {
        let limit = self.ctx.config.limits.max_calls_in_flight;
        if self.calls_in_flight >= limit {
            return Err(RequestError::TooManyCalls(limit));
        }
        let Some(auth) = &self.auth else {
            return Err(RequestError::NotAuthenticated);
        };
        self.calls_in_flight += 1;
        let token = auth.token.clone();
        let ctx = self.ctx.clone();
        self.pending.push(Box::pin(async move {
            let frame = match call(&ctx, &rpc, request, &token).await {
                Ok(result) => protocol::result(id, &result),
                Err(status) => RequestError::Backend(status).frame(Some(id)),
            };
            Completion::CallDone(frame)
        }));
        Ok(())
    }

    /// Publishes to one topic from one socket run one at a time, in the order they arrived, so
    /// they take offsets in that order; the client still pipelines them (no waiting for a
    /// reply), and publishes to other topics run side by side. Queued publishes count towards
    /// `max_calls_in_flight`.
    fn publish(&mut self, id: u64, params: Value) -> Result<(), RequestError> {
        let Some(topic) = params
            .get("topic")
            .and_then(Value::as_str)
            .map(Arc::<str>::from)
        else {
            return self.call(id, PUBLISH_RPC.into(), params); // the backend names what is wrong
        };
        let limit = self.ctx.config.limits.max_calls_in_flight;
        if self.calls_in_flight >= limit {
            return Err(RequestError::TooManyCalls(limit));
        }
        if self.auth.is_none() {
            return Err(RequestError::NotAuthenticated);
        }
        self.calls_in_flight += 1;
        match self.publishing.get_mut(&topic) {
            Some(queue) => queue.push_back((id, params)),
            None => {
                self.publishing.insert(topic.clone(), VecDeque::new());
                self.start_publish(topic, vec![(id, params)]);
            }
        }
        Ok(())
    }

    /// Sends one topic's publishes: one alone as `Publish`, several as one `PublishBatch`,
    /// which takes their offsets in this order without a round trip each.
    fn start_publish(&mut self, topic: Arc<str>, publishes: Vec<(u64, Value)>) {
        let Some(auth) = &self.auth else { return };
        let token = auth.token.clone();
        let ctx = self.ctx.clone();
        self.pending.push(Box::pin(async move {
            let frames = if let [(id, _)] = publishes[..] {
                let params = publishes.into_iter().next().map(|(_, p)| p);
                vec![
                    match call(&ctx, PUBLISH_RPC, params.unwrap_or_default(), &token).await {
                        Ok(result) => protocol::result(id, &result),
                        Err(status) => RequestError::Backend(status).frame(Some(id)),
                    },
                ]
            } else {
                publish_batch(&ctx, publishes, &token).await
            };
            Completion::PublishDone { topic, frames }
        }));
    }

    /// Applies finished work; returns a close when the socket must end.
    pub(super) fn complete(&mut self, done: Completion) -> Result<(), CloseReason> {
        match done {
            Completion::CallDone(frame) => {
                self.calls_in_flight = self.calls_in_flight.saturating_sub(1);
                self.reply(frame);
            }
            Completion::PublishDone { topic, frames } => {
                self.calls_in_flight = self.calls_in_flight.saturating_sub(frames.len());
                for frame in frames {
                    self.reply(frame);
                }
                let next: Vec<_> = match self.publishing.get_mut(&topic) {
                    Some(queue) => {
                        let take = queue.len().min(MAX_PUBLISH_BATCH);
                        queue.drain(..take).collect()
                    }
                    None => Vec::new(),
                };
                if next.is_empty() {
                    self.publishing.remove(&topic);
                } else {
                    self.start_publish(topic, next);
                }
            }
            Completion::Authenticated {
                id,
                token,
                identity,
                refresh,
            } => self.authenticated(id, token.into(), &identity, refresh)?,
            Completion::AuthFailed {
                id,
                refresh,
                status,
            } => {
                let close = CloseReason::auth_refused(&status);
                self.refuse(id, RequestError::Backend(status));
                // A failed `refresh` keeps the socket on its current token.
                if !refresh || self.auth.is_none() {
                    return Err(close);
                }
            }
        }
        Ok(())
    }

    /// A token was verified: adopt it (every subscription too, on `refresh`), answer, and
    /// run the requests held behind `auth`. `id` is `None` for the upgrade's bearer token (any
    /// request id, 0 included, gets its answer).
    fn authenticated(
        &mut self,
        id: Option<u64>,
        token: Arc<str>,
        identity: &Value,
        refresh: bool,
    ) -> Result<(), CloseReason> {
        let user = identity
            .get("userId")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if self
            .user_slot
            .as_ref()
            .is_none_or(|slot| slot.key() != user)
        {
            let Some(slot) = self.ctx.users.try_acquire(&user.to_owned()) else {
                let limit = self.ctx.users.max();
                self.refuse(id, RequestError::TooManySockets(limit));
                return Err(CloseReason::TooManySockets(limit));
            };
            self.user_slot = Some(slot);
        }
        if refresh {
            for (topic, subscriber) in &self.subscriptions {
                self.feed_commands.send(FeedCommand::Refresh {
                    topic: topic.clone(),
                    subscriber: *subscriber,
                    token: token.clone(),
                });
            }
        }
        self.auth = Some(Auth { token });
        self.counted.authenticated();
        self.authenticating = false;
        self.heartbeat.authenticated();
        if let Some(id) = id {
            self.reply(protocol::result(id, identity));
        }
        for text in std::mem::take(&mut self.held) {
            self.request(&text)?;
        }
        Ok(())
    }
}

/// Asks a backend who `token` names (batched with other sockets' `auth`s). The backend
/// verifies; the edge holds no keys.
pub(super) fn verify(
    ctx: Arc<EdgeContext>,
    id: Option<u64>,
    token: String,
    refresh: bool,
) -> Pending {
    Box::pin(async move {
        match ctx.verifier.verify(token.clone()).await {
            Ok(identity) => Completion::Authenticated {
                id,
                token,
                identity: protocol::to_json("herald.v1.WhoamiResponse", &identity)
                    .unwrap_or_default(),
                refresh,
            },
            Err(status) => Completion::AuthFailed {
                id,
                refresh,
                status,
            },
        }
    })
}

/// One `PublishBatch` for `publishes`, answered as each would have been alone. A publish the
/// edge cannot encode is refused on its own, so it does not fail the others.
async fn publish_batch(
    ctx: &EdgeContext,
    publishes: Vec<(u64, Value)>,
    token: &str,
) -> Vec<String> {
    let mut frames: Vec<Option<String>> = vec![None; publishes.len()];
    let mut sent = Vec::with_capacity(publishes.len());
    let mut items = Vec::with_capacity(publishes.len());
    let single = ctx.transcoder.method(PUBLISH_RPC);
    for (slot, (id, params)) in publishes.into_iter().enumerate() {
        let encodes = single
            .as_ref()
            .map_err(|e| e.to_string())
            .and_then(|method| {
                ctx.transcoder
                    .encode_request(method, params.clone())
                    .map(drop)
                    .map_err(|e| e.to_string())
            });
        match encodes {
            Ok(()) => {
                sent.push((slot, id));
                items.push(params);
            }
            Err(error) => {
                let status = Status::invalid_argument(error);
                frames[slot] = Some(RequestError::Backend(status).frame(Some(id)));
            }
        }
    }
    if !items.is_empty() {
        match call(ctx, PUBLISH_BATCH_RPC, json!({ "publishes": items }), token).await {
            Ok(answer) => {
                let outcomes = answer["outcomes"].as_array().cloned().unwrap_or_default();
                for (n, (slot, id)) in sent.into_iter().enumerate() {
                    frames[slot] = Some(outcome_frame(id, outcomes.get(n)));
                }
            }
            Err(status) => {
                for (slot, id) in sent {
                    frames[slot] = Some(RequestError::Backend(status.clone()).frame(Some(id)));
                }
            }
        }
    }
    frames.into_iter().flatten().collect()
}

/// The reply to one publish of a batch, from its `PublishOutcome`.
fn outcome_frame(id: u64, outcome: Option<&Value>) -> String {
    if let Some(published) = outcome.and_then(|o| o.get("published")) {
        return protocol::result(id, published);
    }
    let status = match outcome.and_then(|o| o.get("refused")) {
        Some(refused) => Status::new(
            tonic::Code::from_i32(
                refused["code"]
                    .as_i64()
                    .and_then(|c| i32::try_from(c).ok())
                    .unwrap_or(2),
            ),
            refused["message"].as_str().unwrap_or_default(),
        ),
        None => Status::internal("the backend's batch answer has no outcome for this publish"),
    };
    RequestError::Backend(status).frame(Some(id))
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
    let channel = ctx.backends.pick();
    let response = ctx
        .backends
        .unary(crate::transcode::call_unary(channel, &method, body, token))
        .await?;
    ctx.transcoder.decode_response(&method, response)
}
