//! One WebSocket session: reads requests, writes replies and pushes, enforces the socket's
//! limits, and closes with a code from the close-code table when it must.
//!
//! The session is one task selecting over the socket, its outbound queue, pending calls and
//! its timer; nothing it does waits on another socket. Subscriptions are attached to the
//! topic feeds, which push frames into the outbound queue directly.
//!
//! This file drives the socket (the loop, the heartbeat, writing, closing); `requests`
//! answers each request; `error` maps refusals to error frames and closes to close frames,
//! once. The session only sees a `Sink` and a `Stream` of messages: the server passes the
//! two halves of a WebSocket, the tests pass channels.

mod error;
mod requests;
#[cfg(test)]
mod tests;

use std::{
    collections::{HashMap, VecDeque},
    error::Error as StdError,
    pin::Pin,
    sync::Arc,
    time::Duration,
};

use axum::extract::ws::Message;
use futures_util::{Sink, SinkExt, Stream, StreamExt, stream::FuturesUnordered};
use herald_proto::rate::TokenBucket;
use tokio::time::{Instant, Sleep};

use crate::{
    EdgeContext,
    config::SocketLimits,
    metrics::{AuthFailure, ConnectionGauge, Limit, Push},
    outbound::{self, OutItem, OutboundReceiver},
};
use error::{CloseReason, RequestError, SessionClose};
use requests::{Auth, Pending};

/// How long a closing socket may take to flush and send its close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// Queued frames written at most before one flush.
const MAX_BATCH: usize = 256;

/// Runs one socket's session until the peer leaves or the session closes the socket.
///
/// `bearer` is a token from the upgrade request's `Authorization` header; it is verified
/// before the first request is read, so requests never race it.
pub(crate) async fn run<S, R, E>(
    sink: S,
    mut stream: R,
    ctx: Arc<EdgeContext>,
    bearer: Option<String>,
) where
    S: Sink<Message> + Unpin,
    R: Stream<Item = Result<Message, E>> + Unpin,
    E: StdError + 'static,
{
    let (mut session, mut out_rx) = Session::new(sink, ctx);
    // One span per socket: its id on this edge, never its token or user. At DEBUG, like the
    // only events a session logs: at the default level an idle socket then holds no span
    // (about 480 bytes in the subscriber's registry).
    let span = tracing::debug_span!(
        "socket",
        connection = out_rx.socket(),
        transport = "websocket"
    );
    tracing::Instrument::instrument(
        async move {
            session_body(&mut session, &mut stream, &mut out_rx, bearer).await;
        },
        span,
    )
    .await;
}

async fn session_body<S, R, E>(
    session: &mut Session<S>,
    stream: &mut R,
    out_rx: &mut OutboundReceiver,
    bearer: Option<String>,
) where
    S: Sink<Message> + Unpin,
    R: Stream<Item = Result<Message, E>> + Unpin,
    E: StdError + 'static,
{
    let metrics = session.ctx.metrics.clone();
    let mut end = match bearer {
        Some(token) => session.authenticate_bearer(token).await,
        None => Ok(()),
    };
    if end.is_ok() {
        end = session.serve(stream, out_rx).await;
    }
    match end {
        Err(End::Close(reason)) => {
            match &reason {
                CloseReason::SlowConsumer => metrics.slow_consumer(),
                CloseReason::AuthTimeout => metrics.auth_failed(AuthFailure::Timeout),
                CloseReason::InvalidToken => metrics.auth_failed(AuthFailure::Refused),
                CloseReason::RateAbuse => metrics.limit_hit(Limit::RateAbuse),
                CloseReason::FrameTooBig { .. } => metrics.limit_hit(Limit::MaxFrameBytes),
                CloseReason::BackendUnavailable => metrics.backend_error(),
                CloseReason::DisconnectedByAdmin => metrics.admin_disconnect(),
                _ => {}
            }
            session.close(reason, stream, out_rx).await
        }
        Err(End::PeerClosed) => session.answer_close().await,
        _ => {}
    }
    session.detach_all().await;
}

/// Why the session loop stops.
#[derive(Debug)]
enum End {
    /// The peer closed the connection or it failed: nothing more can be sent.
    Gone,
    /// The peer sent a Close frame: the WebSocket layer has queued the answer (the peer's
    /// own code, RFC 6455 §5.5.1), which only has to be written out.
    PeerClosed,
    /// The session closes the socket.
    Close(CloseReason),
}

impl From<CloseReason> for End {
    fn from(reason: CloseReason) -> End {
        End::Close(reason)
    }
}

/// One timer per socket: the auth deadline until authenticated, then each ping.
struct Heartbeat {
    timer: Pin<Box<Sleep>>,
    pinging: bool,
    last_heard: Instant,
    ping_interval: Duration,
    idle_timeout: Duration,
}

impl Heartbeat {
    fn new(limits: &SocketLimits) -> Heartbeat {
        Heartbeat {
            timer: Box::pin(tokio::time::sleep(limits.auth_timeout)),
            pinging: false,
            last_heard: Instant::now(),
            ping_interval: limits.ping_interval,
            idle_timeout: limits.idle_timeout,
        }
    }

    /// The socket authenticated: the auth deadline gives way to pings.
    fn authenticated(&mut self) {
        if !self.pinging {
            self.pinging = true;
            self.next_ping();
        }
    }

    fn heard(&mut self) {
        self.last_heard = Instant::now();
    }

    fn silent_too_long(&self) -> bool {
        self.last_heard.elapsed() > self.idle_timeout
    }

    fn next_ping(&mut self) {
        self.timer
            .as_mut()
            .reset(Instant::now() + self.ping_interval);
    }
}

struct Session<S> {
    sink: S,
    heartbeat: Heartbeat,
    ctx: Arc<EdgeContext>,
    out: outbound::Outbound,
    auth: Option<Auth>,
    /// topic → subscriber id at the feed.
    subscriptions: HashMap<Arc<str>, u64>,
    bucket: TokenBucket,
    strikes: u32,
    pending: InFlight,
    calls_in_flight: usize,
    /// Topics with a publish in flight, and the publishes queued behind it, in arrival order.
    publishing: HashMap<Arc<str>, VecDeque<(u64, serde_json::Value)>>,
    /// An `auth` is being verified.
    authenticating: bool,
    /// Requests that arrived while `auth` was being verified, handled once it is answered.
    held: Vec<String>,
    /// This socket's place among its user's sockets (`edge.connections.max_per_user`).
    user_slot: Option<crate::slots::Slot<String>>,
    /// Attach, detach and refresh go to the feeds in the order the socket asked for them.
    feed_commands: FeedCommands,
    /// Counts the socket in `herald_edge_connections` while it is open.
    counted: ConnectionGauge,
}

/// The socket's asynchronous work in flight (`auth`, calls, publishes); it holds no
/// allocation while there is none, as on every idle socket.
#[derive(Default)]
struct InFlight(Option<FuturesUnordered<Pending>>);

impl InFlight {
    fn push(&mut self, work: Pending) {
        self.0.get_or_insert_with(FuturesUnordered::new).push(work);
    }

    fn is_empty(&self) -> bool {
        self.0.as_ref().is_none_or(FuturesUnordered::is_empty)
    }

    /// The next piece of work to finish; cancel-safe.
    async fn next(&mut self) -> Option<requests::Completion> {
        let work = self.0.as_mut()?;
        let done = work.next().await;
        if work.is_empty() {
            self.0 = None;
        }
        done
    }
}

/// What a session asks of the topic feeds.
#[derive(Debug)]
enum FeedCommand {
    Attach(crate::feeds::AttachRequest),
    /// `reply`: the `unsubscribe` to answer once the feed has taken the detach.
    Detach {
        topic: Arc<str>,
        subscriber: u64,
        reply: Option<u64>,
    },
    Refresh {
        topic: Arc<str>,
        subscriber: u64,
        token: Arc<str>,
    },
}

/// A socket's [`FeedCommand`]s, delivered one after the other by the session itself. Run
/// side by side, a pipelined `subscribe` + `unsubscribe` could reach the feed as
/// detach-then-attach and leave an attachment no socket owns (a ghost in presence). The queue
/// is bounded by the socket's request rate limit and subscription limit.
///
/// Every idle socket holds this, so it owns no task, channel or buffer while idle: the
/// command in delivery is one boxed future polled by the session loop, and the queue behind
/// it gives its buffer back once empty.
struct FeedCommands {
    feeds: Arc<crate::feeds::Feeds>,
    out: outbound::Outbound,
    delivering: Option<Pin<Box<dyn std::future::Future<Output = ()> + Send>>>,
    queued: VecDeque<FeedCommand>,
}

impl FeedCommands {
    fn new(feeds: Arc<crate::feeds::Feeds>, out: outbound::Outbound) -> FeedCommands {
        FeedCommands {
            feeds,
            out,
            delivering: None,
            queued: VecDeque::new(),
        }
    }

    fn send(&mut self, command: FeedCommand) {
        if self.delivering.is_none() {
            self.delivering = Some(self.deliver(command));
        } else {
            self.queued.push_back(command);
        }
    }

    fn is_busy(&self) -> bool {
        self.delivering.is_some()
    }

    /// Waits until the command in delivery has reached its feed, then starts the next.
    /// Cancel-safe: a delivery interrupted by another branch of the session loop resumes on
    /// the next call.
    async fn advance(&mut self) {
        if let Some(delivering) = &mut self.delivering {
            delivering.await;
        }
        self.delivering = self.queued.pop_front().map(|next| self.deliver(next));
        if self.queued.is_empty() && self.queued.capacity() > 0 {
            self.queued = VecDeque::new();
        }
    }

    /// Waits until every command sent so far has reached its feed.
    async fn finish(&mut self) {
        while self.is_busy() {
            self.advance().await;
        }
    }

    fn deliver(
        &self,
        command: FeedCommand,
    ) -> Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        let feeds = self.feeds.clone();
        let out = self.out.clone();
        Box::pin(async move {
            match command {
                FeedCommand::Attach(request) => feeds.attach(request).await,
                FeedCommand::Detach {
                    topic,
                    subscriber,
                    reply,
                } => {
                    feeds.detach(&topic, subscriber).await;
                    if let Some(id) = reply {
                        out.text(crate::protocol::result(id, &serde_json::json!({})));
                    }
                }
                FeedCommand::Refresh {
                    topic,
                    subscriber,
                    token,
                } => feeds.refresh(&topic, subscriber, token).await,
            }
        })
    }
}

impl<S> Session<S> {
    fn new(sink: S, ctx: Arc<EdgeContext>) -> (Session<S>, OutboundReceiver) {
        let limits = &ctx.config.limits;
        let (out, out_rx) = outbound::channel(limits.max_outbound_bytes);
        let feed_commands = FeedCommands::new(ctx.feeds.clone(), out.clone());
        let session = Session {
            sink,
            heartbeat: Heartbeat::new(limits),
            out,
            auth: None,
            subscriptions: HashMap::new(),
            bucket: TokenBucket::new(limits.rate_burst, f64::from(limits.rate_per_second)),
            strikes: 0,
            pending: InFlight::default(),
            calls_in_flight: 0,
            publishing: HashMap::new(),
            authenticating: false,
            held: Vec::new(),
            user_slot: None,
            feed_commands,
            counted: ctx.metrics.connection(),
            ctx,
        };
        (session, out_rx)
    }

    /// Queues an error frame answering request `id`.
    fn refuse(&self, id: Option<u64>, error: RequestError) {
        let limit = match &error {
            RequestError::RateLimited => Some(Limit::Rate),
            RequestError::TooManySubscriptions(_) => Some(Limit::MaxSubscriptions),
            RequestError::TooManyCalls(_) => Some(Limit::MaxCallsInFlight),
            RequestError::TooManySockets(_) => Some(Limit::MaxPerUser),
            _ => None,
        };
        if let Some(limit) = limit {
            self.ctx.metrics.limit_hit(limit);
        }
        self.reply(error.frame(id));
    }

    fn reply(&self, frame: impl Into<axum::extract::ws::Utf8Bytes>) {
        self.out.text(frame);
    }

    async fn detach_all(&mut self) {
        for (topic, subscriber) in self.subscriptions.drain() {
            self.feed_commands.send(FeedCommand::Detach {
                topic,
                subscriber,
                reply: None,
            });
        }
        self.feed_commands.finish().await;
    }
}

impl<S: Sink<Message> + Unpin> Session<S> {
    /// Verifies the upgrade request's bearer token; a refused token closes the socket.
    async fn authenticate_bearer(&mut self, token: String) -> Result<(), End> {
        let verified = requests::verify(self.ctx.clone(), None, token, false).await;
        self.complete(verified)?;
        Ok(())
    }

    /// The session loop: returns how it ended.
    async fn serve<R, E>(
        &mut self,
        stream: &mut R,
        out_rx: &mut OutboundReceiver,
    ) -> Result<(), End>
    where
        R: Stream<Item = Result<Message, E>> + Unpin,
        E: StdError + 'static,
    {
        let shutdown = self.ctx.shutdown.clone();
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return Err(CloseReason::Shutdown.into()),
                next = out_rx.recv() => match next {
                    // Boxed, like `beat`: the loop's own state is held by every idle socket,
                    // and one allocation per batch of frames is small beside its system call.
                    Ok(item) => Box::pin(self.write_in_time(item, out_rx)).await?,
                    Err(outbound::Cut::Slow) => return Err(CloseReason::SlowConsumer.into()),
                    Err(outbound::Cut::Disconnected) => {
                        return Err(CloseReason::DisconnectedByAdmin.into());
                    }
                },
                Some(done) = self.pending.next(), if !self.pending.is_empty() => {
                    self.complete(done)?;
                }
                () = self.feed_commands.advance(), if self.feed_commands.is_busy() => {}
                message = stream.next() => self.receive(message)?,
                () = &mut self.heartbeat.timer => Box::pin(self.beat()).await?,
            }
        }
    }

    /// Handles one message from the peer.
    fn receive<E>(&mut self, message: Option<Result<Message, E>>) -> Result<(), End>
    where
        E: StdError + 'static,
    {
        self.heartbeat.heard();
        match message {
            Some(Ok(Message::Text(text))) => self.request(text.as_str())?,
            Some(Ok(Message::Binary(_))) => self.refuse(None, RequestError::BinaryFrame),
            // The WebSocket layer answers pings itself; a pong only proves the peer is there.
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            Some(Ok(Message::Close(_))) => return Err(End::PeerClosed),
            None => return Err(End::Gone),
            Some(Err(error)) => {
                let limit = self.ctx.config.limits.max_frame_bytes;
                return Err(match CloseReason::for_read_error(&error, limit) {
                    Some(reason) => End::Close(reason),
                    None => {
                        tracing::debug!(%error, "socket read failed");
                        End::Gone
                    }
                });
            }
        }
        Ok(())
    }

    /// The timer fired: the auth deadline passed, or it is time to ping.
    async fn beat(&mut self) -> Result<(), End> {
        if self.auth.is_none() {
            return Err(CloseReason::AuthTimeout.into());
        }
        if self.heartbeat.silent_too_long() {
            return Err(CloseReason::PongTimeout.into());
        }
        let ping = self.sink.send(Message::Ping(Default::default()));
        match tokio::time::timeout(self.ctx.config.limits.write_timeout, ping).await {
            Ok(sent) => sent.map_err(|_| End::Gone)?,
            Err(_) => return Err(CloseReason::SlowConsumer.into()),
        }
        self.heartbeat.next_ping();
        Ok(())
    }

    /// Closes the socket for `reason`, within a grace period.
    async fn close<R, E>(
        &mut self,
        reason: CloseReason,
        stream: &mut R,
        out_rx: &mut OutboundReceiver,
    ) where
        R: Stream<Item = Result<Message, E>> + Unpin,
    {
        // Deliver what is already queued (replies, a final unsubscribed) unless the socket is
        // too slow to take it; a peer that reads nothing cannot hold the session.
        let deliver_queued = reason != CloseReason::SlowConsumer;
        let close = SessionClose::from(reason);
        let closing = async {
            while deliver_queued && let Some(item) = out_rx.try_recv() {
                self.write_one(item).await.map_err(|_| End::Gone)?;
            }
            let frame = Message::Close(Some(close.frame()));
            self.sink.send(frame).await.map_err(|_| End::Gone)?;
            // Complete the closing handshake: wait for the peer's close frame, so the peer
            // reads ours before the connection goes away.
            while let Some(Ok(message)) = stream.next().await {
                if let Message::Close(_) = message {
                    break;
                }
            }
            Ok::<(), End>(())
        };
        let _ = tokio::time::timeout(CLOSE_GRACE, closing).await;
    }

    /// Writes out the Close frame that answers the peer's, within the close grace.
    async fn answer_close(&mut self) {
        let _ = tokio::time::timeout(CLOSE_GRACE, self.sink.flush()).await;
    }

    /// Writes one item, then whatever else is already queued, with a single flush.
    /// Writes within `write_timeout`; a peer that does not take the bytes is closed as slow.
    async fn write_in_time(&mut self, item: OutItem, rx: &mut OutboundReceiver) -> Result<(), End> {
        let limit = self.ctx.config.limits.write_timeout;
        match tokio::time::timeout(limit, self.write(item, rx)).await {
            Ok(written) => written.map_err(|_| End::Gone),
            Err(_) => Err(CloseReason::SlowConsumer.into()),
        }
    }

    async fn write(&mut self, item: OutItem, rx: &mut OutboundReceiver) -> Result<(), S::Error> {
        self.feed_one(item).await?;
        for _ in 0..MAX_BATCH {
            let Some(item) = rx.try_recv() else { break };
            self.feed_one(item).await?;
        }
        self.sink.flush().await
    }

    async fn write_one(&mut self, item: OutItem) -> Result<(), S::Error> {
        self.feed_one(item).await?;
        self.sink.flush().await
    }

    async fn feed_one(&mut self, item: OutItem) -> Result<(), S::Error> {
        let text = match item {
            OutItem::Text(text) => text,
            OutItem::Event(text, published) => {
                self.ctx.metrics.delivered(Push::Event, published);
                text
            }
            OutItem::Ended(ended) => {
                if self.subscriptions.get(&ended.topic) == Some(&ended.subscriber) {
                    self.subscriptions.remove(&ended.topic);
                }
                ended.frame
            }
        };
        self.sink.feed(Message::Text(text)).await
    }
}
