//! [`EventStream`]: one subscription, as the named stream type every transport returns.
//!
//! It yields `subscribed`, the latest keyed signals, then the replay, then live items from
//! the hub. A memory topic's replay is the broker window read at attach; a durable topic's is
//! read page by page from the broker cache or the database as the client pulls, so a
//! 100,000-event catch-up holds two pages in memory: the one being sent and the next, read
//! ahead meanwhile so the database and the transport work at the same time. Every live event goes through the
//! [`LiveCursor`]: skipped when already replayed, delivered when next, and on a durable topic
//! a gap (or the hub dropping a subscriber that fell behind) sends the stream back to paging
//! from where it is. It ends itself, with a status carrying the close code and the last
//! offset it delivered, when the cursor says so, the token expires, or the event it just
//! delivered ended the subscriber's membership of the topic (a [`Revocation`]). Dropping it
//! unregisters the subscriber from the hub and from presence.

use std::{
    collections::VecDeque,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    vec,
};

use futures_util::Stream;
use herald_proto::{
    encoded::Encoded,
    v1::{Signal, StreamPosition, SubscribeResponse, Subscribed, subscribe_response::Frame},
};
use tokio::time::Sleep;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::Status;

use crate::{
    authz::Revocation,
    connections::Registration,
    cursor::{Ending, LiveCursor, Verdict},
    event::SharedEvent,
    history::{History, HistoryError, PageBudget, PageRead},
    hub::{CloseReason, Hub, HubItem, HubSubscription},
    metrics::SubscriptionGauge,
    presence::PresenceGuard,
    topic::Topic,
};

/// Everything a new subscriber needs, from [`crate::node::Node::attach`].
#[derive(Debug)]
pub struct Attachment {
    /// Counts the subscription in `herald_subscriptions` while held.
    pub counted: SubscriptionGauge,
    /// The first frame for the subscriber.
    pub subscribed: Subscribed,
    /// The latest keyed signals within their TTL, to send right after `subscribed`.
    pub signals: Vec<Signal>,
    /// Where the subscriber stands before the replay.
    pub cursor: LiveCursor,
    pub replay: Replay,
    /// Leaves presence when dropped.
    pub presence: Option<PresenceGuard>,
    /// For a subscriber reading as a member: the event that ends its membership ends the
    /// stream right after it.
    pub revocation: Option<Revocation>,
}

/// What a new subscriber is replayed before live events.
#[derive(Debug)]
pub enum Replay {
    /// Nothing: live from the cursor on.
    Nothing,
    /// These events (a memory topic's window, at most `replay_cap`).
    Events(Vec<Arc<SharedEvent>>),
    /// Pages of history from the cursor on, until caught up (durable topics).
    Pages,
}

/// Where the stream is in catching up.
enum CatchUp {
    /// Live: caught up.
    Live,
    /// A page must be read once the current one is sent.
    Due,
    /// The next page is being read (started when the previous one arrived, or now).
    Reading(PageRead),
}

pub struct EventStream {
    topic: Topic,
    history: History,
    hub: Arc<Hub>,
    /// `None` while a durable stream that fell behind catches up unregistered.
    live: Option<HubSubscription>,
    cursor: LiveCursor,
    /// `subscribed` and the latest signals: sent first.
    head: VecDeque<Encoded>,
    page: vec::IntoIter<Arc<SharedEvent>>,
    catch_up: CatchUp,
    expiry: Pin<Box<Sleep>>,
    revocation: Option<Revocation>,
    /// The event just delivered ended the subscriber's membership: end before anything else.
    revoked: bool,
    done: bool,
    _presence: Option<PresenceGuard>,
    counted: SubscriptionGauge,
    /// Completes when an admin disconnects the user (gRPC streams only).
    disconnected: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
    _registration: Option<Registration>,
}

impl std::fmt::Debug for EventStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStream")
            .field("topic", &self.topic)
            .field("cursor", &self.cursor)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl EventStream {
    pub(crate) fn new(
        topic: Topic,
        attachment: Attachment,
        live: HubSubscription,
        hub: Arc<Hub>,
        history: History,
        expiry: Pin<Box<Sleep>>,
    ) -> EventStream {
        let mut head = VecDeque::with_capacity(1 + attachment.signals.len());
        head.push_back(frame(Frame::Subscribed(attachment.subscribed)));
        head.extend(
            attachment
                .signals
                .into_iter()
                .map(|signal| frame(Frame::Signal(signal))),
        );
        let (page, catch_up) = match attachment.replay {
            Replay::Nothing => (Vec::new(), CatchUp::Live),
            Replay::Events(events) => (events, CatchUp::Live),
            Replay::Pages => (Vec::new(), CatchUp::Due),
        };
        EventStream {
            topic,
            history,
            hub,
            live: Some(live),
            cursor: attachment.cursor,
            head,
            page: page.into_iter(),
            catch_up,
            expiry,
            revocation: attachment.revocation,
            revoked: false,
            done: false,
            _presence: attachment.presence,
            counted: attachment.counted,
            disconnected: None,
            _registration: None,
        }
    }

    /// Ends the stream with CLOSE_CODE_DISCONNECTED_BY_ADMIN once `token` is cancelled; the
    /// registration lists it in `Admin/ListConnections` while it is open.
    pub(crate) fn with_disconnect(
        mut self,
        token: CancellationToken,
        registration: Registration,
    ) -> EventStream {
        self.disconnected = Some(Box::pin(token.cancelled_owned()));
        self._registration = Some(registration);
        self
    }

    /// Delivers `event` (the cursor said so), noting whether it ends the membership.
    fn deliver(&mut self, event: &SharedEvent) -> Poll<Option<Result<Encoded, Status>>> {
        self.cursor.advance(event);
        self.revoked = self
            .revocation
            .as_ref()
            .is_some_and(|revocation| revocation.ends_with(event));
        Poll::Ready(Some(Ok(event.subscribe_frame().clone())))
    }

    /// The position of the last event this stream delivered.
    pub fn last_position(&self) -> &StreamPosition {
        self.cursor.last()
    }

    fn end(&mut self, ending: Ending) -> Poll<Option<Result<Encoded, Status>>> {
        self.done = true;
        Poll::Ready(Some(Err(ending.status(self.cursor.last()))))
    }

    /// Starts reading the next page after the cursor, registering with the hub first if the
    /// stream had dropped out of it.
    fn start_read(&mut self) -> Result<(), Ending> {
        match &self.live {
            Some(live) if live.close_reason() == CloseReason::Shutdown => {
                return Err(Ending::Shutdown);
            }
            Some(_) => {}
            None => {
                self.live = Some(
                    self.hub
                        .subscribe(&self.topic)
                        .map_err(|_| Ending::Shutdown)?,
                )
            }
        }
        let after = self.cursor.last().clone();
        self.catch_up = CatchUp::Reading(PageRead::start(
            &self.history,
            &self.topic,
            after,
            PageBudget::REPLAY,
            None,
        ));
        Ok(())
    }

    /// Polls the page being read; `Ready(Ok)` once the next page is in place.
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Ending>> {
        let CatchUp::Reading(read) = &mut self.catch_up else {
            return Poll::Ready(Ok(()));
        };
        let page = std::task::ready!(Pin::new(read).poll(cx)).map_err(|error| match error {
                HistoryError::Gone(_) => Ending::HistoryGone,
                error => {
                    tracing::warn!(topic = %self.topic, %error, "could not read history for a subscriber");
                    Ending::Unavailable
                }
            })?;
        self.catch_up = match page.events.last() {
            // More may follow at once: read the next page while this one is sent.
            Some(last) if !page.reached_end => {
                let after = StreamPosition {
                    offset: last.event().offset,
                    epoch: last.event().epoch.clone(),
                };
                CatchUp::Reading(PageRead::start(
                    &self.history,
                    &self.topic,
                    after,
                    PageBudget::REPLAY,
                    None,
                ))
            }
            _ if page.reached_end => CatchUp::Live,
            _ => CatchUp::Due,
        };
        self.page = page.events.into_iter();
        Poll::Ready(Ok(()))
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
        if let Some(head) = this.head.pop_front() {
            return Poll::Ready(Some(Ok(head)));
        }
        if this.revoked {
            return this.end(Ending::Revoked);
        }
        loop {
            if let Some(event) = this.page.next() {
                match this.cursor.accept(&event) {
                    Verdict::Deliver => return this.deliver(&event),
                    Verdict::Skip => continue,
                    Verdict::Fill | Verdict::End(_) => return this.end(Ending::Gap),
                }
            }
            if this.expiry.as_mut().poll(cx).is_ready() {
                return this.end(Ending::TokenExpired);
            }
            if let Some(disconnected) = &mut this.disconnected
                && disconnected.as_mut().poll(cx).is_ready()
            {
                return this.end(Ending::DisconnectedByAdmin);
            }
            match &this.catch_up {
                CatchUp::Due => {
                    if let Err(ending) = this.start_read() {
                        return this.end(ending);
                    }
                    continue;
                }
                CatchUp::Reading(_) => match std::task::ready!(this.poll_read(cx)) {
                    Ok(()) => continue,
                    Err(ending) => return this.end(ending),
                },
                CatchUp::Live => {}
            }
            let Some(live) = this.live.as_mut() else {
                this.catch_up = CatchUp::Due;
                continue;
            };
            let Some(item) = std::task::ready!(live.receiver().poll_recv(cx)) else {
                match this.cursor.hub_closed(live.close_reason()) {
                    Verdict::End(ending) => return this.end(ending),
                    _ => {
                        // Fell behind on a durable topic: page from the database instead.
                        this.live = None;
                        this.catch_up = CatchUp::Due;
                        continue;
                    }
                }
            };
            match item {
                HubItem::Event(event) => match this.cursor.accept(&event) {
                    Verdict::Deliver => {
                        // Live events only: a replayed one's age is the client's absence.
                        if let Some(published) = event
                            .event()
                            .time
                            .as_ref()
                            .and_then(herald_proto::system_time)
                        {
                            this.counted.metrics().lag().observe_since(published);
                        }
                        return this.deliver(&event);
                    }
                    Verdict::Skip => continue,
                    Verdict::Fill => this.catch_up = CatchUp::Due,
                    Verdict::End(ending) => return this.end(ending),
                },
                HubItem::Presence(change) => {
                    return Poll::Ready(Some(Ok(frame(Frame::Presence((*change).clone())))));
                }
                HubItem::Signal(signal) => {
                    return Poll::Ready(Some(Ok(frame(Frame::Signal((*signal).clone())))));
                }
            }
        }
    }
}

fn frame(frame: Frame) -> Encoded {
    Encoded::new(&SubscribeResponse { frame: Some(frame) })
}
