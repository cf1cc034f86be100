//! Who is online: a user is online while any of their streams is open on this node, on any
//! topic and any transport (a `Rooms/Subscribe`, a socket's subscription through the edge);
//! offline, with the time it was last seen, once the last one ends. Services are not people
//! and are never counted.
//!
//! Domain services read it ([`Online::is_online`]: "notify the members who are offline") and
//! follow its changes through an [`OnlineFeed`]. A feed coalesces: it holds at most one
//! pending change per user (the latest), so a consumer that falls behind reads each user's
//! current state once rather than a backlog, and a feed's memory is bounded by the number of
//! users who changed.
//!
//! Scope: the count is per node. With several backends a user connected to two of them is
//! online on both, and each node reports its own transitions.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, Weak},
    time::SystemTime,
};

use herald_proto::support::lock;
use tokio::sync::Notify;

/// A user went online (first stream) or offline (last stream ended).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnlineChange {
    pub user_id: String,
    pub online: bool,
    /// When it happened: for an offline change, when the user was last seen.
    pub at: SystemTime,
}

/// The open-stream count of every online user of this node.
#[derive(Debug, Default)]
pub struct Online {
    inner: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    streams: HashMap<String, u64>,
    feeds: Vec<Weak<Feed>>,
}

#[derive(Debug, Default)]
struct Feed {
    pending: Mutex<HashMap<String, OnlineChange>>,
    notify: Notify,
}

/// One consumer's view of the changes (see the module docs). Dropping it unregisters it.
#[derive(Debug)]
pub struct OnlineFeed {
    feed: Arc<Feed>,
}

impl Online {
    pub fn new() -> Online {
        Online::default()
    }

    /// Whether `user_id` has a stream open on this node.
    pub fn is_online(&self, user_id: &str) -> bool {
        lock(&self.inner).streams.contains_key(user_id)
    }

    /// How many users are online on this node.
    pub fn users(&self) -> usize {
        lock(&self.inner).streams.len()
    }

    /// Follows the changes from now on.
    pub fn feed(&self) -> OnlineFeed {
        let feed = Arc::new(Feed::default());
        let mut state = lock(&self.inner);
        state.feeds.retain(|feed| feed.strong_count() > 0);
        state.feeds.push(Arc::downgrade(&feed));
        OnlineFeed { feed }
    }

    /// A stream of `user_id` opened.
    pub fn opened(&self, user_id: &str) {
        let mut state = lock(&self.inner);
        let streams = state.streams.entry(user_id.to_owned()).or_default();
        *streams += 1;
        if *streams == 1 {
            state.announce(user_id, true);
        }
    }

    /// A stream of `user_id` ended.
    pub fn closed(&self, user_id: &str) {
        let mut state = lock(&self.inner);
        let Some(streams) = state.streams.get_mut(user_id) else {
            return;
        };
        *streams -= 1;
        if *streams == 0 {
            state.streams.remove(user_id);
            state.announce(user_id, false);
        }
    }
}

impl State {
    fn announce(&mut self, user_id: &str, online: bool) {
        let change = OnlineChange {
            user_id: user_id.to_owned(),
            online,
            at: SystemTime::now(),
        };
        self.feeds.retain(|feed| match feed.upgrade() {
            Some(feed) => {
                lock(&feed.pending).insert(user_id.to_owned(), change.clone());
                feed.notify.notify_one();
                true
            }
            None => false,
        });
    }
}

impl OnlineFeed {
    /// Waits for changes and returns every pending one (each user's latest), in no particular
    /// order across users.
    pub async fn next(&self) -> Vec<OnlineChange> {
        loop {
            let changes: Vec<OnlineChange> = {
                let mut pending = lock(&self.feed.pending);
                pending.drain().map(|(_, change)| change).collect()
            };
            if !changes.is_empty() {
                return changes;
            }
            self.feed.notify.notified().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_user_is_online_from_the_first_stream_to_the_end_of_the_last() {
        let online = Online::new();
        let feed = online.feed();
        online.opened("alice");
        online.opened("alice");
        assert!(online.is_online("alice"));
        let changes = feed.next().await;
        assert_eq!(changes.len(), 1);
        assert!(changes[0].online);
        online.closed("alice");
        assert!(online.is_online("alice"), "one stream is still open");
        online.closed("alice");
        assert!(!online.is_online("alice"));
        let changes = feed.next().await;
        assert_eq!(
            (changes[0].user_id.as_str(), changes[0].online),
            ("alice", false)
        );
        assert_eq!(online.users(), 0);
    }

    #[tokio::test]
    async fn a_feed_that_fell_behind_reads_each_users_latest_state_once() {
        let online = Online::new();
        let feed = online.feed();
        for _ in 0..3 {
            online.opened("bob");
            online.closed("bob");
        }
        online.opened("carol");
        let mut changes = feed.next().await;
        changes.sort_by(|a, b| a.user_id.cmp(&b.user_id));
        let states: Vec<(&str, bool)> = changes
            .iter()
            .map(|c| (c.user_id.as_str(), c.online))
            .collect();
        assert_eq!(states, vec![("bob", false), ("carol", true)]);
    }

    #[test]
    fn a_dropped_feed_is_forgotten() {
        let online = Online::new();
        drop(online.feed());
        online.opened("dave");
        assert!(lock(&online.inner).feeds.is_empty());
    }
}
