//! A socket's outbound queue, bounded in bytes.
//!
//! Feeds push pre-encoded frames without waiting. When a socket's queued bytes would exceed
//! its limit, the frame is refused, the socket is marked slow and its session closes it with
//! the "slow" code: a slow browser never holds up the feed or other sockets.

use std::sync::{
    Arc,
    atomic::{AtomicBool, AtomicUsize, Ordering},
};

use axum::extract::ws::Utf8Bytes;
use tokio::sync::{Notify, mpsc};

/// Frames queued at most, whatever their size (the byte limit usually binds first).
const MAX_QUEUED_FRAMES: usize = 8192;

#[derive(Debug)]
pub enum OutItem {
    /// A text frame; cloning shares the bytes, so a push encoded once serves every socket.
    Text(Utf8Bytes),
    /// A frame that also ends one of the socket's subscriptions (an error reply to its
    /// `subscribe`, or an `unsubscribed` push).
    Ended {
        topic: Arc<str>,
        subscriber: u64,
        frame: Utf8Bytes,
    },
}

impl OutItem {
    fn len(&self) -> usize {
        match self {
            OutItem::Text(text) => text.as_str().len(),
            OutItem::Ended { frame, .. } => frame.as_str().len(),
        }
    }
}

#[derive(Debug)]
struct Shared {
    queued_bytes: AtomicUsize,
    max_bytes: usize,
    slow: AtomicBool,
    slow_notify: Notify,
}

/// The sending side; cheap to clone.
#[derive(Debug, Clone)]
pub struct Outbound {
    tx: mpsc::Sender<OutItem>,
    shared: Arc<Shared>,
}

/// The session's receiving side.
#[derive(Debug)]
pub struct OutboundReceiver {
    rx: mpsc::Receiver<OutItem>,
    shared: Arc<Shared>,
}

pub fn channel(max_bytes: usize) -> (Outbound, OutboundReceiver) {
    let (tx, rx) = mpsc::channel(MAX_QUEUED_FRAMES);
    let shared = Arc::new(Shared {
        queued_bytes: AtomicUsize::new(0),
        max_bytes,
        slow: AtomicBool::new(false),
        slow_notify: Notify::new(),
    });
    (
        Outbound {
            tx,
            shared: shared.clone(),
        },
        OutboundReceiver { rx, shared },
    )
}

impl Outbound {
    /// Queues a frame without waiting. False when the socket is slow (now or already) or gone.
    pub fn push(&self, item: OutItem) -> bool {
        if self.shared.slow.load(Ordering::Relaxed) {
            return false;
        }
        let len = item.len();
        let before = self.shared.queued_bytes.fetch_add(len, Ordering::AcqRel);
        if before + len > self.shared.max_bytes {
            self.shared.queued_bytes.fetch_sub(len, Ordering::AcqRel);
            self.mark_slow();
            return false;
        }
        match self.tx.try_send(item) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.shared.queued_bytes.fetch_sub(len, Ordering::AcqRel);
                self.mark_slow();
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.shared.queued_bytes.fetch_sub(len, Ordering::AcqRel);
                false
            }
        }
    }

    pub fn text(&self, frame: impl Into<Utf8Bytes>) -> bool {
        self.push(OutItem::Text(frame.into()))
    }

    fn mark_slow(&self) {
        if !self.shared.slow.swap(true, Ordering::AcqRel) {
            self.shared.slow_notify.notify_one();
        }
    }
}

impl OutboundReceiver {
    pub async fn recv(&mut self) -> Option<OutItem> {
        let item = self.rx.recv().await?;
        self.shared
            .queued_bytes
            .fetch_sub(item.len(), Ordering::AcqRel);
        Some(item)
    }

    pub fn try_recv(&mut self) -> Option<OutItem> {
        let item = self.rx.try_recv().ok()?;
        self.shared
            .queued_bytes
            .fetch_sub(item.len(), Ordering::AcqRel);
        Some(item)
    }

    /// A handle that completes once the socket has been marked slow.
    pub fn slow_signal(&self) -> SlowSignal {
        SlowSignal(self.shared.clone())
    }

    pub fn queued_bytes(&self) -> usize {
        self.shared.queued_bytes.load(Ordering::Relaxed)
    }
}

/// Completes once the socket has been marked slow.
#[derive(Debug)]
pub struct SlowSignal(Arc<Shared>);

impl SlowSignal {
    pub async fn wait(&self) {
        loop {
            let notified = self.0.slow_notify.notified();
            if self.0.slow.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_beyond_the_byte_limit_mark_the_socket_slow() {
        let (out, mut rx) = channel(10);
        assert!(out.text("12345"));
        assert!(out.text("12345"));
        assert!(!out.text("1"), "11 bytes exceed the limit of 10");
        rx.slow_signal().wait().await;
        assert!(!out.text("1"), "a slow socket gets nothing more");
        assert!(matches!(rx.recv().await, Some(OutItem::Text(_))));
        assert_eq!(rx.queued_bytes(), 5);
    }
}
