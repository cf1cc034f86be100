//! Who is online: a user is online while any of their streams is open, on any topic and any
//! transport (a `Rooms/Subscribe`, a socket's subscription through the edge); offline, with
//! the time it was last seen, once the last one ends. Services are not people and are never
//! counted.
//!
//! Domain services read it ([`Online::offline_among`]: "notify the members who are offline")
//! and follow its changes through an [`OnlineFeed`]. A feed coalesces: it holds at most one
//! pending change per user (the latest), so a consumer that falls behind reads each user's
//! current state once rather than a backlog, and a feed's memory is bounded by the number of
//! users who changed.
//!
//! Scope: each node counts its own streams. With an [`OnlineDirectory`] (the Redis broker),
//! a node records there the users it has streams of, so "online" means a stream on any node,
//! and each change is announced by exactly one node: the one whose first stream made the user
//! online anywhere, the one whose last stream left them offline everywhere, or, for the users
//! of a node that crashed, the one node that finds their records expired. Without one, the
//! node's own count is the whole truth (one backend).

use std::{
    collections::{HashMap, HashSet},
    fmt::Debug,
    sync::{Arc, Mutex, Weak},
    time::{Duration, SystemTime},
};

use async_trait::async_trait;
use herald_proto::support::lock;
use tokio::sync::Notify;

use crate::broker::BrokerError;

/// Where nodes record which users they have streams of (see the module docs).
#[async_trait]
pub trait OnlineDirectory: Send + Sync + Debug + 'static {
    /// This node has its first stream of `user_id`: true when no other node had one (the
    /// user came online).
    async fn arrived(&self, user_id: &str) -> Result<bool, BrokerError>;

    /// This node's last stream of `user_id` ended: true when no node has one now (the user
    /// went offline).
    async fn departed(&self, user_id: &str) -> Result<bool, BrokerError>;

    /// Whether each of `users` has a stream on any node, in the same order.
    async fn online(&self, users: &[String]) -> Result<Vec<bool>, BrokerError>;

    /// Keeps this node's records of `users` alive, and returns the users whose records all
    /// expired (their nodes stopped refreshing: crashed); each such user is returned to one
    /// caller in the whole cluster.
    async fn refresh(&self, users: &[String]) -> Result<Vec<String>, BrokerError>;

    /// How often [`OnlineDirectory::refresh`] must run for records to stay alive.
    fn refresh_every(&self) -> Duration;
}

/// A user went online (first stream) or offline (last stream ended).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnlineChange {
    pub user_id: String,
    pub online: bool,
    /// When it happened: for an offline change, when the user was last seen.
    pub at: SystemTime,
}

/// The open-stream count of every online user of this node, and, with a directory, what
/// every node has.
#[derive(Debug, Default)]
pub struct Online {
    inner: Mutex<State>,
    directory: Option<Directory>,
}

#[derive(Debug)]
struct Directory {
    directory: Arc<dyn OnlineDirectory>,
    /// This node's latest local state of each user whose change the directory has not seen
    /// yet: one entry per user, so bounded by the users of this node.
    changed: Arc<Changed>,
}

#[derive(Debug, Default)]
struct Changed {
    pending: Mutex<HashMap<String, bool>>,
    notify: Notify,
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
    /// Online on this node only (one backend).
    pub fn new() -> Online {
        Online::default()
    }

    /// Online across the nodes sharing `directory`; starts the task that records this node's
    /// changes there, in order, and refreshes its records. The task ends with the `Online`.
    pub fn with_directory(directory: Arc<dyn OnlineDirectory>) -> Arc<Online> {
        let changed = Arc::new(Changed::default());
        let online = Arc::new(Online {
            inner: Mutex::default(),
            directory: Some(Directory {
                directory: directory.clone(),
                changed: changed.clone(),
            }),
        });
        tokio::spawn(record(Arc::downgrade(&online), directory, changed));
        online
    }

    /// Whether `user_id` has a stream open on this node.
    pub fn is_online(&self, user_id: &str) -> bool {
        lock(&self.inner).streams.contains_key(user_id)
    }

    /// The users of `users` with no stream open on any node. If the directory cannot be
    /// asked, this node's own view answers (a notification too many rather than none).
    pub async fn offline_among(&self, users: &[String]) -> Vec<String> {
        let here = |user: &String| self.is_online(user);
        let elsewhere = match &self.directory {
            Some(directory) if !users.is_empty() => match directory.directory.online(users).await {
                Ok(online) => online,
                Err(error) => {
                    tracing::warn!(%error, "could not ask who is online on other nodes");
                    vec![false; users.len()]
                }
            },
            _ => vec![false; users.len()],
        };
        users
            .iter()
            .zip(elsewhere)
            .filter(|(user, elsewhere)| !elsewhere && !here(user))
            .map(|(user, _)| user.clone())
            .collect()
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
            match &self.directory {
                Some(directory) => directory.changed.record(user_id, true),
                None => state.announce(user_id, true),
            }
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
            match &self.directory {
                Some(directory) => directory.changed.record(user_id, false),
                None => state.announce(user_id, false),
            }
        }
    }

    fn announce(&self, user_id: &str, online: bool) {
        lock(&self.inner).announce(user_id, online);
    }
}

impl Changed {
    fn record(&self, user_id: &str, online: bool) {
        lock(&self.pending).insert(user_id.to_owned(), online);
        self.notify.notify_one();
    }
}

/// Records this node's changes in the directory, in order, announcing those that changed the
/// user's state across the cluster; refreshes this node's records and announces the users
/// of crashed nodes. Ends once the `Online` is gone.
async fn record(online: Weak<Online>, directory: Arc<dyn OnlineDirectory>, changed: Arc<Changed>) {
    let mut recorded: HashSet<String> = HashSet::new();
    let mut ticker = tokio::time::interval(directory.refresh_every());
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let refresh = tokio::select! {
            () = changed.notify.notified() => false,
            _ = ticker.tick() => true,
        };
        let Some(online) = online.upgrade() else {
            return;
        };
        let changes: Vec<(String, bool)> = lock(&changed.pending).drain().collect();
        for (user, now_online) in changes {
            if now_online == recorded.contains(&user) {
                continue; // opened and closed again (or the reverse) before it was recorded
            }
            let result = if now_online {
                recorded.insert(user.clone());
                directory.arrived(&user).await
            } else {
                recorded.remove(&user);
                directory.departed(&user).await
            };
            match result {
                Ok(true) => online.announce(&user, now_online),
                Ok(false) => {}
                Err(error) => {
                    tracing::warn!(%error, "could not record who is online; announcing this node's view");
                    online.announce(&user, now_online);
                }
            }
        }
        if refresh {
            let users: Vec<String> = recorded.iter().cloned().collect();
            match directory.refresh(&users).await {
                Ok(gone) => {
                    for user in gone.iter().filter(|user| !recorded.contains(*user)) {
                        online.announce(user, false);
                    }
                }
                Err(error) => tracing::warn!(%error, "could not refresh who is online"),
            }
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
