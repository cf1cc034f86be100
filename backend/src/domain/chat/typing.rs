//! Who is typing where: the state behind `SetTyping` and its automatic stops, in memory
//! only (typing is an ephemeral signal: never stored, never replayed).
//!
//! Per (conversation, user):
//! - a "typing" signal goes out at most once per `interval` (2 s): calls in between are
//!   absorbed and only keep the state alive;
//! - a "stopped" signal goes out when the user says so, when `timeout` (6 s) passes without a
//!   refresh ([`Typing::expire`], called by a sweeper), or at once when the user's last
//!   stream ends ([`Typing::disconnected`]) — but only after a "typing" went out, so every
//!   stop closes a start;
//! - the state is forgotten once stopped and out of the interval, so the board holds only
//!   users typing in the last few seconds, at most `max_typists` of them (beyond that new
//!   typists are absorbed).
//!
//! Time is the domain clock's `now`, passed in: tests move it instead of waiting.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, SystemTime},
};

use herald_proto::support::lock;

/// What the caller must signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TypingSignal {
    Started,
    Stopped(StopReason),
}

/// Why typing stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The user said so (`SetTyping(false)`).
    Stopped,
    /// No refresh within the timeout.
    Timeout,
    /// The user's last stream ended.
    Disconnected,
    /// The user left the conversation.
    Left,
}

impl StopReason {
    pub fn as_str(self) -> &'static str {
        match self {
            StopReason::Stopped => "stopped",
            StopReason::Timeout => "timeout",
            StopReason::Disconnected => "disconnected",
            StopReason::Left => "left",
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Typist {
    /// A "typing" went out and no "stopped" yet.
    typing: bool,
    /// When the last "typing" went out.
    started: SystemTime,
    /// The last call that kept it alive.
    refreshed: SystemTime,
}

/// The typing board of this node.
#[derive(Debug)]
pub struct Typing {
    interval: Duration,
    timeout: Duration,
    max_typists: usize,
    typists: Mutex<HashMap<(i64, String), Typist>>,
}

impl Typing {
    pub fn new(interval: Duration, timeout: Duration, max_typists: usize) -> Typing {
        Typing {
            interval,
            timeout,
            max_typists,
            typists: Mutex::new(HashMap::new()),
        }
    }

    /// `user` says they are typing (or stopped) in `conversation` at `now`.
    pub fn set(
        &self,
        conversation: i64,
        user: &str,
        typing: bool,
        now: SystemTime,
    ) -> Option<TypingSignal> {
        let mut typists = lock(&self.typists);
        let key = (conversation, user.to_owned());
        if !typing {
            let typist = typists.get_mut(&key)?;
            typist.refreshed = now;
            if !typist.typing {
                return None;
            }
            typist.typing = false;
            return Some(TypingSignal::Stopped(StopReason::Stopped));
        }
        if let Some(typist) = typists.get_mut(&key) {
            typist.refreshed = now;
            let due = elapsed(typist.started, now) >= self.interval;
            if typist.typing && !due {
                return None; // absorbed: it only keeps the state alive
            }
            if !due {
                return None; // stopped less than an interval after the last start
            }
            typist.typing = true;
            typist.started = now;
            return Some(TypingSignal::Started);
        }
        if typists.len() >= self.max_typists {
            return None;
        }
        typists.insert(
            key,
            Typist {
                typing: true,
                started: now,
                refreshed: now,
            },
        );
        Some(TypingSignal::Started)
    }

    /// The typists whose timeout passed at `now`: each is stopped and returned once. Also
    /// forgets stopped typists whose interval is over.
    pub fn expire(&self, now: SystemTime) -> Vec<(i64, String)> {
        let mut typists = lock(&self.typists);
        let mut stopped = Vec::new();
        typists.retain(|(conversation, user), typist| {
            if typist.typing && elapsed(typist.refreshed, now) >= self.timeout {
                typist.typing = false;
                stopped.push((*conversation, user.clone()));
            }
            typist.typing || elapsed(typist.started, now) < self.interval
        });
        stopped
    }

    /// `user` has no stream open any more: the conversations where their typing stops now.
    pub fn disconnected(&self, user: &str) -> Vec<i64> {
        self.stop_where(user, |_| true)
    }

    /// `user` left these conversations: where their typing stops now.
    pub fn left(&self, user: &str, conversations: &[i64]) -> Vec<i64> {
        self.stop_where(user, |conversation| conversations.contains(&conversation))
    }

    fn stop_where(&self, user: &str, matches: impl Fn(i64) -> bool) -> Vec<i64> {
        let mut typists = lock(&self.typists);
        let mut stopped = Vec::new();
        for ((conversation, who), typist) in typists.iter_mut() {
            if who == user && typist.typing && matches(*conversation) {
                typist.typing = false;
                stopped.push(*conversation);
            }
        }
        stopped
    }

    /// How many (conversation, user) states are held.
    pub fn len(&self) -> usize {
        lock(&self.typists).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn elapsed(since: SystemTime, now: SystemTime) -> Duration {
    now.duration_since(since).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTERVAL: Duration = Duration::from_secs(2);
    const TIMEOUT: Duration = Duration::from_secs(6);

    fn board() -> Typing {
        Typing::new(INTERVAL, TIMEOUT, 100)
    }

    fn at(ms: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000) + Duration::from_millis(ms)
    }

    #[test]
    fn a_burst_of_calls_signals_at_most_once_per_interval() {
        let typing = board();
        let mut signals = Vec::new();
        // 20 calls within 1.9 s, then 20 more within the next 2 s.
        for i in 0..40u64 {
            if let Some(signal) = typing.set(7, "ann", true, at(i * 100)) {
                signals.push((i * 100, signal));
            }
        }
        assert_eq!(
            signals,
            vec![(0, TypingSignal::Started), (2000, TypingSignal::Started)]
        );
    }

    #[test]
    fn typing_stops_after_the_timeout_without_a_refresh_and_not_before() {
        let typing = board();
        assert_eq!(
            typing.set(7, "ann", true, at(0)),
            Some(TypingSignal::Started)
        );
        assert_eq!(typing.set(7, "ann", true, at(1500)), None, "a refresh");
        assert!(
            typing.expire(at(7499)).is_empty(),
            "6 s after the refresh, not the start"
        );
        assert_eq!(typing.expire(at(7500)), vec![(7, "ann".to_owned())]);
        assert!(typing.expire(at(9500)).is_empty(), "stopped once");
        assert!(typing.is_empty(), "forgotten once out of the interval");
    }

    #[test]
    fn a_stop_follows_only_a_start_and_a_restart_waits_for_the_interval() {
        let typing = board();
        assert_eq!(typing.set(7, "ann", false, at(0)), None, "never started");
        typing.set(7, "ann", true, at(0));
        assert_eq!(
            typing.set(7, "ann", false, at(500)),
            Some(TypingSignal::Stopped(StopReason::Stopped))
        );
        assert_eq!(
            typing.set(7, "ann", false, at(600)),
            None,
            "already stopped"
        );
        assert_eq!(
            typing.set(7, "ann", true, at(1000)),
            None,
            "within 2 s of the start"
        );
        assert_eq!(
            typing.set(7, "ann", true, at(2000)),
            Some(TypingSignal::Started)
        );
    }

    #[test]
    fn the_last_stream_ending_stops_typing_everywhere_at_once() {
        let typing = board();
        typing.set(7, "ann", true, at(0));
        typing.set(8, "ann", true, at(0));
        typing.set(7, "ben", true, at(0));
        let mut stopped = typing.disconnected("ann");
        stopped.sort_unstable();
        assert_eq!(stopped, vec![7, 8]);
        assert!(typing.disconnected("ann").is_empty());
        assert_eq!(typing.left("ben", &[8]), Vec::<i64>::new());
        assert_eq!(typing.left("ben", &[7]), vec![7]);
        assert!(typing.expire(at(10_000)).is_empty(), "no second stop");
    }

    #[test]
    fn a_full_board_absorbs_new_typists() {
        let typing = Typing::new(INTERVAL, TIMEOUT, 1);
        assert!(typing.set(1, "ann", true, at(0)).is_some());
        assert!(typing.set(2, "ben", true, at(0)).is_none());
        typing.expire(at(60_000));
        assert!(typing.set(2, "ben", true, at(60_000)).is_some());
    }
}
