//! [`EventStream`]: one subscription, as the named stream type every transport returns.
//!
//! It yields `subscribed`, then the replayed events (history after `since`), then live events
//! from the hub, skipping live events already replayed. It ends itself, with a status carrying
//! the [`CloseCode`] and the last offset it delivered, when the token expires, when the hub
//! ends it (slow consumer, shutdown) or when live delivery would leave a gap. Dropping it
//! unregisters the subscriber from the hub and from presence.

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    vec,
};

use futures_util::Stream;
use herald_proto::{
    encoded::Encoded,
    v1::{CloseCode, StreamPosition, SubscribeResponse, Subscribed, subscribe_response::Frame},
};
use tokio::time::Sleep;
use tonic::{Code, Status};

use crate::{
    error::stream_end,
    event::SharedEvent,
    hub::{CloseReason, HubItem, HubSubscription},
    presence::ConnectionId,
    topic::Topic,
};

/// Leaves presence when the subscription ends.
pub(crate) trait PresenceLeave: Send + Sync + 'static {
    fn leave(&self, topic: Topic, user_id: String, connection: ConnectionId);
}

pub(crate) struct PresenceGuard {
    pub(crate) leave: Arc<dyn PresenceLeave>,
    pub(crate) topic: Topic,
    pub(crate) user_id: String,
    pub(crate) connection: ConnectionId,
}

impl Drop for PresenceGuard {
    fn drop(&mut self) {
        self.leave.leave(
            self.topic.clone(),
            std::mem::take(&mut self.user_id),
            self.connection,
        );
    }
}

pub struct EventStream {
    subscribed: Option<Subscribed>,
    replay: vec::IntoIter<Arc<SharedEvent>>,
    live: HubSubscription,
    /// The last event delivered (or the top the subscription started from).
    last: StreamPosition,
    expiry: Pin<Box<Sleep>>,
    done: bool,
    _presence: Option<PresenceGuard>,
}

impl std::fmt::Debug for EventStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStream")
            .field("last", &self.last)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl EventStream {
    pub(crate) fn new(
        subscribed: Subscribed,
        replay: Vec<Arc<SharedEvent>>,
        live: HubSubscription,
        start: StreamPosition,
        expiry: Pin<Box<Sleep>>,
        presence: Option<PresenceGuard>,
    ) -> EventStream {
        EventStream {
            subscribed: Some(subscribed),
            replay: replay.into_iter(),
            live,
            last: start,
            expiry,
            done: false,
            _presence: presence,
        }
    }

    /// The position of the last event this stream delivered.
    pub fn last_position(&self) -> &StreamPosition {
        &self.last
    }

    fn end(
        &mut self,
        code: Code,
        close: CloseCode,
        message: &str,
    ) -> Poll<Option<Result<Encoded, Status>>> {
        self.done = true;
        Poll::Ready(Some(Err(stream_end(code, close, message, &self.last))))
    }

    fn event(&mut self, event: &SharedEvent) -> Poll<Option<Result<Encoded, Status>>> {
        self.last.offset = event.offset;
        Poll::Ready(Some(Ok(event.subscribe_frame().clone())))
    }
}

impl Stream for EventStream {
    /// Encoded `SubscribeResponse`s: events are encoded once per topic, not per subscriber.
    type Item = Result<Encoded, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        if let Some(subscribed) = this.subscribed.take() {
            return Poll::Ready(Some(Ok(frame(Frame::Subscribed(subscribed)))));
        }
        if let Some(event) = this.replay.next() {
            return this.event(&event);
        }
        if this.expiry.as_mut().poll(cx).is_ready() {
            return this.end(
                Code::Unauthenticated,
                CloseCode::TokenExpired,
                "token expired",
            );
        }
        loop {
            let Some(item) = std::task::ready!(this.live.receiver().poll_recv(cx)) else {
                return match this.live.close_reason() {
                    CloseReason::SlowConsumer => this.end(
                        Code::ResourceExhausted,
                        CloseCode::SlowConsumer,
                        "slow consumer: the subscription fell too far behind",
                    ),
                    CloseReason::Shutdown | CloseReason::Open => {
                        this.end(Code::Unavailable, CloseCode::Shutdown, "shutting down")
                    }
                };
            };
            match item {
                HubItem::Event(event) => {
                    if event.epoch != this.last.epoch {
                        return this.end(
                            Code::Unavailable,
                            CloseCode::InsufficientState,
                            "the topic's epoch changed",
                        );
                    }
                    if event.offset <= this.last.offset {
                        continue; // already replayed from history
                    }
                    if event.offset != this.last.offset + 1 {
                        return this.end(
                            Code::Unavailable,
                            CloseCode::InsufficientState,
                            "live delivery skipped an offset",
                        );
                    }
                    return this.event(&event);
                }
                HubItem::Presence(change) => {
                    return Poll::Ready(Some(Ok(frame(Frame::Presence((*change).clone())))));
                }
            }
        }
    }
}

fn frame(frame: Frame) -> Encoded {
    Encoded::new(&SubscribeResponse { frame: Some(frame) })
}
