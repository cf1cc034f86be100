//! A topic's events across reconnects: the loop every client would otherwise write.

use std::{collections::VecDeque, time::Duration};

use herald_proto::{
    codes::{RETRY_AFTER_TRAILER, close_code_of, reconnects},
    v1::{
        Event, PresenceChange, Signal, StreamPosition, SubscribeRequest, SubscribeResponse,
        rooms_client::RoomsClient, subscribe_response::Frame,
    },
};
use tonic::{Code, Status, Streaming};

use crate::{Authorized, Backoff, Cursor, Error, Verdict};

/// What a subscription yields.
#[derive(Debug, Clone, PartialEq)]
pub enum Update {
    /// The stream is live: first after the first connect (`resumed = false`), then after every
    /// reconnect that resumed with nothing lost (`resumed = true`). `position` is where the
    /// subscription stands.
    Subscribed {
        position: Option<StreamPosition>,
        resumed: bool,
    },
    /// The next event of the topic: in offset order, each once.
    Event(Box<Event>),
    /// An ephemeral signal (typing, a courier's location); never replayed.
    Signal(Signal),
    /// Someone joined or left the topic.
    Presence(PresenceChange),
    /// History could not continue from where the subscription was (retention, a restarted
    /// memory broker, a new epoch): events were missed. Reload the state from its source of
    /// truth; the subscription continues after `position`.
    Reload { position: Option<StreamPosition> },
}

/// A subscription to one topic that keeps itself alive: it reconnects with jittered
/// exponential backoff while the server's close codes say to (3000–3499, or the connection
/// failed), resumes from the last event it yielded, drops replayed duplicates, and ends with
/// an error only for a terminal answer (3500–3999, or a refused request). Pull it with
/// [`Subscription::next`].
#[derive(Debug)]
pub struct Subscription {
    rooms: RoomsClient<Authorized>,
    topic: String,
    cursor: Cursor,
    backoff: Backoff,
    stream: Option<Streaming<SubscribeResponse>>,
    connected: bool,
    ended: bool,
    pending: VecDeque<Update>,
}

impl Subscription {
    pub(crate) fn new(rooms: RoomsClient<Authorized>, topic: &str) -> Subscription {
        Subscription {
            rooms,
            topic: topic.to_owned(),
            cursor: Cursor::default(),
            backoff: Backoff::default(),
            stream: None,
            connected: false,
            ended: false,
            pending: VecDeque::new(),
        }
    }

    /// Resume after `position` (from an earlier subscription or a `List`/`Get`).
    pub fn since(mut self, position: StreamPosition) -> Subscription {
        self.cursor = Cursor::new(Some(position));
        self
    }

    /// Replace the reconnect policy (the default waits up to 100 ms · 2ⁿ, at most 10 s).
    pub fn with_backoff(mut self, backoff: Backoff) -> Subscription {
        self.backoff = backoff;
        self
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The position of the last event yielded: what a later subscription resumes from.
    pub fn position(&self) -> Option<&StreamPosition> {
        self.cursor.position()
    }

    /// The next update; `None` once the subscription has ended (after yielding its error).
    pub async fn next(&mut self) -> Option<Result<Update, Error>> {
        loop {
            if let Some(update) = self.pending.pop_front() {
                return Some(Ok(update));
            }
            if self.ended {
                return None;
            }
            let received = match &mut self.stream {
                Some(stream) => stream.message().await,
                None => match self.open().await {
                    Ok(stream) => {
                        self.stream = Some(stream);
                        continue;
                    }
                    Err(status) => Err(status),
                },
            };
            match received {
                Ok(Some(response)) => {
                    if let Some(update) = self.handle(response) {
                        return Some(Ok(update));
                    }
                }
                // The server closed the stream without a status: it is going away.
                Ok(None) => {
                    self.stream = None;
                    self.pause(None).await;
                }
                Err(status) => {
                    self.stream = None;
                    if let Err(error) = self.retry(status).await {
                        self.ended = true;
                        return Some(Err(error));
                    }
                }
            }
        }
    }

    async fn open(&mut self) -> Result<Streaming<SubscribeResponse>, Status> {
        let request = SubscribeRequest {
            topic: self.topic.clone(),
            since: self.cursor.position().cloned(),
        };
        Ok(self.rooms.subscribe(request).await?.into_inner())
    }

    fn handle(&mut self, response: SubscribeResponse) -> Option<Update> {
        match response.frame? {
            Frame::Subscribed(subscribed) => {
                let resuming = self.cursor.position().is_some();
                self.cursor
                    .subscribed(subscribed.position.as_ref(), subscribed.recovered);
                let position = self.cursor.position().cloned();
                if resuming && !subscribed.recovered {
                    self.connected = true;
                    return Some(Update::Reload { position });
                }
                let resumed = std::mem::replace(&mut self.connected, true);
                Some(Update::Subscribed { position, resumed })
            }
            Frame::Event(event) => match self.cursor.accept(&event.epoch, event.offset) {
                Verdict::Deliver => {
                    self.backoff.reset();
                    Some(Update::Event(Box::new(event)))
                }
                Verdict::Duplicate => None,
                Verdict::NewEpoch => {
                    let position = self.cursor.position().cloned();
                    self.pending.push_back(Update::Event(Box::new(event)));
                    Some(Update::Reload { position })
                }
            },
            Frame::Signal(signal) => Some(Update::Signal(signal)),
            Frame::Presence(presence) => Some(Update::Presence(presence)),
        }
    }

    async fn retry(&mut self, status: Status) -> Result<(), Error> {
        wait_to_retry(&mut self.backoff, status, &self.topic).await
    }

    async fn pause(&mut self, at_least: Option<Duration>) {
        pause(&mut self.backoff, at_least).await;
    }
}

/// Waits before the next attempt of the stream `what` when `status` says to retry; the error
/// to end with otherwise.
pub(crate) async fn wait_to_retry(
    backoff: &mut Backoff,
    status: Status,
    what: &str,
) -> Result<(), Error> {
    if !should_retry(&status) {
        return Err(status.into());
    }
    tracing::debug!(stream = what, code = ?status.code(), message = status.message(), "stream ended; reconnecting");
    pause(backoff, retry_after(&status)).await;
    Ok(())
}

async fn pause(backoff: &mut Backoff, at_least: Option<Duration>) {
    let delay = backoff.next_delay(&mut rand::rng());
    tokio::time::sleep(delay.max(at_least.unwrap_or_default())).await;
}

/// Whether a stream that ended with `status` should be opened again: Herald's close code says
/// so (3000–3499), or there is none and the failure was the connection's, not the request's.
pub(crate) fn should_retry(status: &Status) -> bool {
    match close_code_of(status) {
        Some(code) => reconnects(code as i32),
        None => {
            matches!(
                status.code(),
                Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded
            ) || (status.code() == Code::Internal && status.message().contains("h2"))
        }
    }
}

/// The server's hint of how long to wait (UNAVAILABLE caused by its database).
fn retry_after(status: &Status) -> Option<Duration> {
    let millis = status.metadata().get(RETRY_AFTER_TRAILER)?.to_str().ok()?;
    millis.parse().ok().map(Duration::from_millis)
}

#[cfg(test)]
mod tests {
    use herald_proto::codes::CLOSE_CODE_TRAILER;
    use tonic::metadata::MetadataMap;

    use super::*;

    fn with_code(code: Code, close: &str) -> Status {
        let mut metadata = MetadataMap::new();
        metadata.insert(CLOSE_CODE_TRAILER, close.parse().unwrap());
        Status::with_metadata(code, "ended", metadata)
    }

    #[test]
    fn the_code_table_decides_and_transport_failures_retry() {
        assert!(should_retry(&with_code(
            Code::ResourceExhausted,
            "CLOSE_CODE_SLOW_CONSUMER"
        )));
        assert!(should_retry(&with_code(
            Code::Unauthenticated,
            "CLOSE_CODE_TOKEN_EXPIRED"
        )));
        assert!(!should_retry(&with_code(
            Code::PermissionDenied,
            "CLOSE_CODE_PERMISSION_DENIED"
        )));
        assert!(should_retry(&Status::unavailable("connection refused")));
        assert!(!should_retry(&Status::permission_denied("not yours")));
        assert!(!should_retry(&Status::invalid_argument("bad topic")));
        assert!(!should_retry(&Status::unauthenticated("bad token")));
    }

    #[test]
    fn the_retry_hint_is_read_from_its_trailer() {
        let mut metadata = MetadataMap::new();
        metadata.insert(RETRY_AFTER_TRAILER, "1000".parse().unwrap());
        let status = Status::with_metadata(Code::Unavailable, "database", metadata);
        assert_eq!(retry_after(&status), Some(Duration::from_millis(1000)));
        assert_eq!(retry_after(&Status::unavailable("x")), None);
    }
}
