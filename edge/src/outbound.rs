//! A socket's outbound queue, bounded in bytes.
//!
//! Feeds push pre-encoded frames without waiting. When a socket's queued bytes would exceed
//! its limit, the frame is refused, the socket is marked slow and its session closes it with
//! the "slow" code: a slow browser never holds up the feed or other sockets.

use std::{
    collections::VecDeque,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
};

use axum::extract::ws::Utf8Bytes;
use tokio::sync::Notify;

/// Frames queued at most, whatever their size (the byte limit usually binds first).
const MAX_QUEUED_FRAMES: usize = 8192;
/// A drained queue keeps at most this much capacity, so idle sockets hold no buffer.
const IDLE_CAPACITY: usize = 16;

#[derive(Debug)]
pub enum OutItem {
    /// A text frame; cloning shares the bytes, so a push encoded once serves every socket.
    Text(Utf8Bytes),
    /// A live event's push, with the event's publish time (for the delivery lag metric).
    Event(Utf8Bytes, Option<std::time::SystemTime>),
    /// A frame that also ends one of the socket's subscriptions (an error reply to its
    /// `subscribe`, or an `unsubscribed` push).
    Ended(Box<Ended>),
}

/// Why a socket's queue gives no more frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// A frame did not fit under the socket's limit: the peer reads too slowly.
    Slow,
    /// An admin disconnected the socket's user.
    Disconnected,
}

#[derive(Debug)]
pub struct Ended {
    pub topic: Arc<str>,
    pub subscriber: u64,
    pub frame: Utf8Bytes,
}

impl OutItem {
    fn len(&self) -> usize {
        match self {
            OutItem::Text(text) | OutItem::Event(text, _) => text.as_str().len(),
            OutItem::Ended(ended) => ended.frame.as_str().len(),
        }
    }
}

/// The queue itself: a plain deque, so an idle socket costs no preallocated slots.
#[derive(Debug)]
struct Shared {
    queue: Mutex<VecDeque<OutItem>>,
    ready: Notify,
    receiver_gone: AtomicBool,
    queued_bytes: AtomicUsize,
    max_bytes: usize,
    slow: AtomicBool,
    /// Set while someone waits in [`Outbound::drained`]; the receiver then wakes it once the
    /// queue is down to a quarter of its limit (one flag check per frame otherwise).
    drain_waiting: AtomicBool,
    drained: Notify,
    /// The socket's id in this edge process (logs, `Admin/ListConnections`).
    socket: u64,
    /// An admin disconnected the socket's user: the session closes it.
    disconnected: AtomicBool,
}

/// Socket ids, unique in this process.
static NEXT_SOCKET: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl Shared {
    /// Each critical section is one deque operation (see [`herald_proto::support::lock`]).
    fn queue(&self) -> std::sync::MutexGuard<'_, VecDeque<OutItem>> {
        herald_proto::support::lock(&self.queue)
    }
}

/// The sending side; cheap to clone.
#[derive(Debug, Clone)]
pub struct Outbound {
    shared: Arc<Shared>,
}

/// The session's receiving side.
#[derive(Debug)]
pub struct OutboundReceiver {
    shared: Arc<Shared>,
}

pub fn channel(max_bytes: usize) -> (Outbound, OutboundReceiver) {
    let shared = Arc::new(Shared {
        queue: Mutex::new(VecDeque::new()),
        ready: Notify::new(),
        receiver_gone: AtomicBool::new(false),
        queued_bytes: AtomicUsize::new(0),
        max_bytes,
        slow: AtomicBool::new(false),
        drain_waiting: AtomicBool::new(false),
        drained: Notify::new(),
        socket: NEXT_SOCKET.fetch_add(1, Ordering::Relaxed),
        disconnected: AtomicBool::new(false),
    });
    (
        Outbound {
            shared: shared.clone(),
        },
        OutboundReceiver { shared },
    )
}

impl Outbound {
    /// Queues a frame without waiting. False when the socket is slow (now or already) or gone.
    pub fn push(&self, item: OutItem) -> bool {
        let shared = &self.shared;
        if shared.slow.load(Ordering::Relaxed) || shared.receiver_gone.load(Ordering::Relaxed) {
            return false;
        }
        let len = item.len();
        let before = shared.queued_bytes.fetch_add(len, Ordering::AcqRel);
        let mut queue = shared.queue();
        if before + len > shared.max_bytes || queue.len() >= MAX_QUEUED_FRAMES {
            drop(queue);
            shared.queued_bytes.fetch_sub(len, Ordering::AcqRel);
            self.mark_slow();
            return false;
        }
        queue.push_back(item);
        drop(queue);
        shared.ready.notify_one();
        true
    }

    /// The socket's id in this edge process.
    pub fn socket(&self) -> u64 {
        self.shared.socket
    }

    /// An admin disconnected the socket's user: its session closes the socket with
    /// CLOSE_CODE_DISCONNECTED_BY_ADMIN.
    pub fn disconnect(&self) {
        if !self.shared.disconnected.swap(true, Ordering::AcqRel) {
            self.shared.ready.notify_one();
        }
    }

    pub fn text(&self, frame: impl Into<Utf8Bytes>) -> bool {
        self.push(OutItem::Text(frame.into()))
    }

    /// Waits until the socket has written out all but a quarter of its queue limit (or is
    /// gone or slow): how a replay is paced by the socket.
    pub async fn drained(&self) {
        let shared = &self.shared;
        loop {
            let notified = shared.drained.notified();
            shared.drain_waiting.store(true, Ordering::Release);
            if shared.queued_bytes.load(Ordering::Acquire) <= shared.max_bytes / 4
                || shared.slow.load(Ordering::Acquire)
                || shared.receiver_gone.load(Ordering::Acquire)
            {
                return;
            }
            notified.await;
        }
    }

    fn mark_slow(&self) {
        if !self.shared.slow.swap(true, Ordering::AcqRel) {
            self.shared.ready.notify_one();
        }
    }
}

impl OutboundReceiver {
    /// The next queued frame, waiting for one; or why the socket gets no more. One waiter
    /// serves both, so an idle socket's session waits on one notification, not two.
    pub async fn recv(&mut self) -> Result<OutItem, Cut> {
        loop {
            if self.shared.disconnected.load(Ordering::Acquire) {
                return Err(Cut::Disconnected);
            }
            if self.shared.slow.load(Ordering::Acquire) {
                return Err(Cut::Slow);
            }
            if let Some(item) = self.try_recv() {
                return Ok(item);
            }
            self.shared.ready.notified().await;
        }
    }

    pub fn try_recv(&mut self) -> Option<OutItem> {
        let mut queue = self.shared.queue();
        let item = queue.pop_front();
        if queue.is_empty() && queue.capacity() > IDLE_CAPACITY {
            queue.shrink_to(0);
        }
        drop(queue);
        let item = item?;
        let shared = &self.shared;
        let left = shared.queued_bytes.fetch_sub(item.len(), Ordering::AcqRel) - item.len();
        if left <= shared.max_bytes / 4 && shared.drain_waiting.load(Ordering::Acquire) {
            shared.drain_waiting.store(false, Ordering::Release);
            shared.drained.notify_waiters();
        }
        Some(item)
    }

    /// The socket's id in this edge process.
    pub fn socket(&self) -> u64 {
        self.shared.socket
    }

    pub fn queued_bytes(&self) -> usize {
        self.shared.queued_bytes.load(Ordering::Relaxed)
    }
}

impl Drop for OutboundReceiver {
    fn drop(&mut self) {
        self.shared.receiver_gone.store(true, Ordering::Relaxed);
        self.shared.queue().clear();
        self.shared.drained.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_waiter_for_drain_wakes_once_the_queue_is_down_to_a_quarter() {
        let (out, mut rx) = channel(100);
        for _ in 0..9 {
            assert!(out.text("0123456789"));
        }
        let waiter = tokio::spawn({
            let out = out.clone();
            async move { out.drained().await }
        });
        tokio::task::yield_now().await;
        for _ in 0..6 {
            rx.recv().await.expect("a queued frame");
            assert!(
                !waiter.is_finished(),
                "{} bytes still queued",
                rx.queued_bytes()
            );
        }
        rx.recv().await.expect("a queued frame"); // 20 bytes left: at most a quarter of 100
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .unwrap();
    }

    #[tokio::test]
    async fn frames_beyond_the_byte_limit_mark_the_socket_slow() {
        let (out, mut rx) = channel(10);
        assert!(out.text("12345"));
        assert!(out.text("12345"));
        assert!(!out.text("1"), "11 bytes exceed the limit of 10");
        assert_eq!(rx.recv().await.err(), Some(Cut::Slow));
        assert!(!out.text("1"), "a slow socket gets nothing more");
        assert!(matches!(rx.try_recv(), Some(OutItem::Text(_))));
        assert_eq!(rx.queued_bytes(), 5);
    }
    #[tokio::test]
    async fn a_disconnect_ends_the_queue_before_frames_still_queued() {
        let (out, mut rx) = channel(100);
        assert!(out.text("hello"));
        out.disconnect();
        assert_eq!(rx.recv().await.err(), Some(Cut::Disconnected));
    }

    #[tokio::test]
    async fn a_waiting_receiver_learns_its_socket_is_slow() {
        let (out, mut rx) = channel(4);
        let waiting = tokio::spawn(async move { rx.recv().await.err() });
        tokio::task::yield_now().await;
        assert!(!out.text("12345"), "5 bytes exceed the limit of 4");
        let cut = tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("woken")
            .unwrap();
        assert_eq!(cut, Some(Cut::Slow));
    }
}
