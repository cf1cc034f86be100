//! A history checker: records every acknowledged publish and every delivery each subscriber
//! saw, and classifies each expected event as ok, lost, duplicated or reordered.
//!
//! An event is known both by its position (topic and offset, as the server acknowledged it)
//! and by the publish's own id (a string the publisher put in its `data`), so a duplicate is
//! caught whether the server repeated an offset or gave the same publish a second offset, and a
//! delivery whose offset carries another publish's id is reported as a mismatch.
//!
//! A subscriber is expected to see, on each topic it [`HistoryChecker::expect`]s, every
//! publish acknowledged on it after the given offset, each once, in offset order. Deliveries
//! of publishes whose acknowledgement never arrived (a publish cut off by a fault may still
//! have been applied) are counted as unacknowledged, not as errors. Gaps a protocol documents
//! (a memory topic answering `recovered = false`) are declared with
//! [`HistoryChecker::forgive`] and then not counted as lost.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fmt,
    sync::Mutex,
};

/// How many offenders of each class a report lists.
const SHOWN: usize = 5;

#[derive(Default)]
pub struct HistoryChecker {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// topic → offset → publish id.
    acked: HashMap<String, BTreeMap<u64, String>>,
    /// (subscriber, topic) → the offset after which every acknowledged publish is expected.
    expected: BTreeMap<(String, String), u64>,
    /// (subscriber, topic) → deliveries in arrival order: (offset, publish id).
    delivered: HashMap<(String, String), Vec<(u64, String)>>,
    /// (subscriber, topic) → offset ranges (inclusive) a documented gap may skip.
    forgiven: HashMap<(String, String), Vec<(u64, u64)>>,
}

/// One offending event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offender {
    pub subscriber: String,
    pub topic: String,
    pub offset: u64,
    pub id: String,
}

impl fmt::Display for Offender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} on {} at offset {} (id {})",
            self.subscriber, self.topic, self.offset, self.id
        )
    }
}

/// The classification of everything recorded.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Classification {
    /// Expected events delivered once, in order.
    pub ok: u64,
    /// Expected events never delivered (and not forgiven).
    pub lost: Vec<Offender>,
    /// Deliveries of an event already delivered (same offset, or same id at another offset).
    pub duplicated: Vec<Offender>,
    /// Deliveries at an offset below one already delivered on the topic.
    pub reordered: Vec<Offender>,
    /// Deliveries whose offset was acknowledged for another publish id.
    pub mismatched: Vec<Offender>,
    /// Deliveries of publishes that were never acknowledged (not an error).
    pub unacknowledged: u64,
    /// Expected events skipped by a forgiven gap (not an error).
    pub forgiven: u64,
}

impl Classification {
    pub fn is_clean(&self) -> bool {
        self.lost.is_empty()
            && self.duplicated.is_empty()
            && self.reordered.is_empty()
            && self.mismatched.is_empty()
    }
}

impl fmt::Display for Classification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "ok {}, lost {}, duplicated {}, reordered {}, mismatched {}, unacknowledged {}, \
             forgiven {}",
            self.ok,
            self.lost.len(),
            self.duplicated.len(),
            self.reordered.len(),
            self.mismatched.len(),
            self.unacknowledged,
            self.forgiven
        )?;
        for (class, offenders) in [
            ("lost", &self.lost),
            ("duplicated", &self.duplicated),
            ("reordered", &self.reordered),
            ("mismatched", &self.mismatched),
        ] {
            for offender in offenders.iter().take(SHOWN) {
                writeln!(f, "  {class}: {offender}")?;
            }
            if offenders.len() > SHOWN {
                writeln!(f, "  {class}: … and {} more", offenders.len() - SHOWN)?;
            }
        }
        Ok(())
    }
}

impl HistoryChecker {
    pub fn new() -> HistoryChecker {
        HistoryChecker::default()
    }

    /// The server acknowledged the publish `id` at `offset` of `topic`.
    pub fn acked(&self, topic: &str, offset: u64, id: &str) {
        let mut state = self.state.lock().expect("checker lock");
        state
            .acked
            .entry(topic.to_owned())
            .or_default()
            .insert(offset, id.to_owned());
    }

    /// `subscriber` is expected to see every publish acknowledged on `topic` after `offset`
    /// (0: all of them). Expecting a topic again keeps the lower offset.
    pub fn expect(&self, subscriber: &str, topic: &str, after: u64) {
        let mut state = self.state.lock().expect("checker lock");
        let entry = state
            .expected
            .entry((subscriber.to_owned(), topic.to_owned()))
            .or_insert(after);
        *entry = (*entry).min(after);
    }

    /// `subscriber` received the publish `id` at `offset` of `topic`.
    pub fn delivered(&self, subscriber: &str, topic: &str, offset: u64, id: &str) {
        let mut state = self.state.lock().expect("checker lock");
        state
            .delivered
            .entry((subscriber.to_owned(), topic.to_owned()))
            .or_default()
            .push((offset, id.to_owned()));
    }

    /// A documented gap: `subscriber` may miss offsets `from..=to` of `topic`.
    pub fn forgive(&self, subscriber: &str, topic: &str, from: u64, to: u64) {
        let mut state = self.state.lock().expect("checker lock");
        state
            .forgiven
            .entry((subscriber.to_owned(), topic.to_owned()))
            .or_default()
            .push((from, to));
    }

    /// Records a WebSocket event push (`{"topic", "offset", "event": {"data": {…}}}`).
    pub fn delivered_push(&self, subscriber: &str, push: &serde_json::Value) {
        let topic = push["topic"].as_str().expect("a push names its topic");
        let offset = push["offset"]
            .as_str()
            .and_then(|o| o.parse().ok())
            .expect("a push's offset is a decimal string");
        self.delivered(
            subscriber,
            topic,
            offset,
            &payload_id(&push["event"]["data"]),
        );
    }

    /// Records an event received over gRPC.
    pub fn delivered_event(&self, subscriber: &str, event: &herald_proto::v1::Event) {
        let data = serde_json::to_value(&event.data).unwrap_or_default();
        self.delivered(subscriber, &event.topic, event.offset, &payload_id(&data));
    }

    /// How many deliveries `subscriber` has had on `topic`.
    pub fn delivery_count(&self, subscriber: &str, topic: &str) -> usize {
        let state = self.state.lock().expect("checker lock");
        state
            .delivered
            .get(&(subscriber.to_owned(), topic.to_owned()))
            .map_or(0, Vec::len)
    }

    /// How many publishes were acknowledged on `topic`.
    pub fn acked_count(&self, topic: &str) -> usize {
        let state = self.state.lock().expect("checker lock");
        state.acked.get(topic).map_or(0, BTreeMap::len)
    }

    /// Whether every expected event has been delivered at least once (to wait on).
    pub fn caught_up(&self) -> bool {
        let state = self.state.lock().expect("checker lock");
        state.expected.iter().all(|(key, after)| {
            let seen: HashSet<u64> = state
                .delivered
                .get(key)
                .map(|d| d.iter().map(|(offset, _)| *offset).collect())
                .unwrap_or_default();
            let forgiven = state.forgiven.get(key);
            state.acked.get(&key.1).is_none_or(|acked| {
                acked.range(after + 1..).all(|(offset, _)| {
                    seen.contains(offset)
                        || forgiven.is_some_and(|ranges| {
                            ranges.iter().any(|(a, b)| (a..=b).contains(&offset))
                        })
                })
            })
        })
    }

    /// Classifies everything recorded so far.
    pub fn classify(&self) -> Classification {
        let state = self.state.lock().expect("checker lock");
        let mut result = Classification::default();
        for ((subscriber, topic), after) in &state.expected {
            let key = (subscriber.clone(), topic.clone());
            let offender = |offset: u64, id: &str| Offender {
                subscriber: subscriber.clone(),
                topic: topic.clone(),
                offset,
                id: id.to_owned(),
            };
            let empty = BTreeMap::new();
            let acked = state.acked.get(topic).unwrap_or(&empty);
            let acked_ids: HashSet<&str> = acked.values().map(String::as_str).collect();
            let mut seen_offsets = HashSet::new();
            let mut seen_ids = HashSet::new();
            let mut highest = None;
            let mut reordered = HashSet::new();
            for (offset, id) in state.delivered.get(&key).into_iter().flatten() {
                if *offset <= *after {
                    continue;
                }
                match acked.get(offset) {
                    Some(expected) if expected != id => {
                        result.mismatched.push(offender(*offset, id));
                        continue;
                    }
                    None if !acked_ids.contains(id.as_str()) => result.unacknowledged += 1,
                    _ => {}
                }
                let repeated_id = !id.is_empty() && !seen_ids.insert(id.as_str());
                if !seen_offsets.insert(*offset) || repeated_id {
                    result.duplicated.push(offender(*offset, id));
                    continue;
                }
                if highest.is_some_and(|h| *offset < h) {
                    result.reordered.push(offender(*offset, id));
                    reordered.insert(*offset);
                }
                highest = highest.max(Some(*offset));
            }
            let forgiven = state.forgiven.get(&key);
            for (offset, id) in acked.range(after + 1..) {
                if seen_offsets.contains(offset) {
                    if !reordered.contains(offset) {
                        result.ok += 1;
                    }
                } else if forgiven
                    .is_some_and(|ranges| ranges.iter().any(|(a, b)| (a..=b).contains(&offset)))
                {
                    result.forgiven += 1;
                } else {
                    result.lost.push(offender(*offset, id));
                }
            }
        }
        result
    }

    /// The classification as text: counts, then the first few offenders of each class.
    pub fn report(&self) -> String {
        self.classify().to_string()
    }

    /// Panics with the report unless every expected event arrived once and in order.
    pub fn assert_clean(&self) {
        let classification = self.classify();
        assert!(
            classification.is_clean(),
            "the history checker found offenders:\n{classification}"
        );
    }

    /// Waits (up to `patience`) until every expected event was delivered, then asserts the
    /// history is clean.
    pub async fn assert_clean_within(&self, patience: std::time::Duration) {
        let deadline = tokio::time::Instant::now() + patience;
        while !self.caught_up() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        self.assert_clean();
    }
}

/// A publish's own id in its `data`: the string `id`, else `n<number>` from the numeric `n`
/// the harness's [`crate::Client::publish`] sends.
pub fn payload_id(data: &serde_json::Value) -> String {
    if let Some(id) = data["id"].as_str() {
        return id.to_owned();
    }
    data["n"]
        .as_f64()
        .map_or_else(String::new, |n| format!("n{n}"))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn published(checker: &HistoryChecker, topic: &str, n: u64) {
        for offset in 1..=n {
            checker.acked(topic, offset, &format!("p{offset}"));
        }
    }

    #[test]
    fn a_run_where_every_event_arrives_once_in_order_is_clean() {
        let checker = HistoryChecker::new();
        published(&checker, "room:a", 5);
        checker.expect("s", "room:a", 0);
        for offset in 1..=5 {
            checker.delivered("s", "room:a", offset, &format!("p{offset}"));
        }
        let c = checker.classify();
        assert!(c.is_clean(), "{c}");
        assert_eq!(c.ok, 5);
        checker.assert_clean();
    }

    #[test]
    fn an_event_never_delivered_is_lost() {
        let checker = HistoryChecker::new();
        published(&checker, "room:a", 3);
        checker.expect("s", "room:a", 0);
        checker.delivered("s", "room:a", 1, "p1");
        checker.delivered("s", "room:a", 3, "p3");
        let c = checker.classify();
        assert_eq!(c.lost.len(), 1);
        assert_eq!(c.lost[0].offset, 2);
        assert_eq!(c.ok, 2);
        assert!(checker.report().contains("lost: s on room:a at offset 2"));
    }

    #[test]
    fn the_same_offset_twice_or_the_same_id_at_a_new_offset_is_a_duplicate() {
        let checker = HistoryChecker::new();
        published(&checker, "room:a", 2);
        checker.expect("s", "room:a", 0);
        checker.delivered("s", "room:a", 1, "p1");
        checker.delivered("s", "room:a", 1, "p1");
        checker.delivered("s", "room:a", 2, "p2");
        // The same publish again under a new, unacknowledged offset (a republish).
        checker.delivered("s", "room:a", 3, "p2");
        let c = checker.classify();
        assert_eq!(c.duplicated.len(), 2, "{c}");
        assert!(c.lost.is_empty());
    }

    #[test]
    fn a_lower_offset_after_a_higher_one_is_reordered() {
        let checker = HistoryChecker::new();
        published(&checker, "room:a", 3);
        checker.expect("s", "room:a", 0);
        checker.delivered("s", "room:a", 1, "p1");
        checker.delivered("s", "room:a", 3, "p3");
        checker.delivered("s", "room:a", 2, "p2");
        let c = checker.classify();
        assert_eq!(c.reordered.len(), 1, "{c}");
        assert_eq!(c.reordered[0].offset, 2);
        assert!(c.lost.is_empty() && c.duplicated.is_empty());
        assert_eq!(c.ok, 2);
    }

    #[test]
    fn another_publishs_id_at_an_offset_is_a_mismatch_and_forgiven_gaps_are_not_lost() {
        let checker = HistoryChecker::new();
        published(&checker, "room:a", 4);
        checker.expect("s", "room:a", 0);
        checker.delivered("s", "room:a", 1, "intruder");
        checker.delivered("s", "room:a", 4, "p4");
        checker.forgive("s", "room:a", 1, 3);
        let c = checker.classify();
        assert_eq!(c.mismatched.len(), 1);
        assert_eq!(c.forgiven, 3);
        assert!(c.lost.is_empty());
    }

    #[test]
    fn events_before_the_expected_offset_and_unacknowledged_deliveries_are_not_errors() {
        let checker = HistoryChecker::new();
        published(&checker, "room:a", 4);
        checker.expect("s", "room:a", 2);
        checker.delivered("s", "room:a", 3, "p3");
        checker.delivered("s", "room:a", 4, "p4");
        checker.delivered("s", "room:a", 5, "cut-off");
        let c = checker.classify();
        assert!(c.is_clean(), "{c}");
        assert_eq!((c.ok, c.unacknowledged), (2, 1));
        assert!(checker.caught_up());
    }

    proptest! {
        /// Delivering a shuffled, thinned, repeated version of a clean history is classified
        /// exactly: every missing offset lost, every repeat a duplicate, every descent a
        /// reorder.
        #[test]
        fn the_classifier_counts_what_was_done_to_a_clean_history(
            n in 1u64..60,
            dropped in proptest::collection::hash_set(1u64..60, 0..10),
            repeated in proptest::collection::vec(1u64..60, 0..10),
            swaps in proptest::collection::vec((0usize..60, 0usize..60), 0..5),
        ) {
            let checker = HistoryChecker::new();
            published(&checker, "room:p", n);
            checker.expect("s", "room:p", 0);
            let mut order: Vec<u64> = (1..=n).filter(|o| !dropped.contains(o)).collect();
            for (a, b) in swaps {
                if !order.is_empty() {
                    let len = order.len();
                    order.swap(a % len, b % len);
                }
            }
            let repeats: Vec<u64> = repeated.into_iter().filter(|o| order.contains(o)).collect();
            order.extend(&repeats);
            for offset in &order {
                checker.delivered("s", "room:p", *offset, &format!("p{offset}"));
            }
            let c = checker.classify();
            let lost = (1..=n).filter(|o| dropped.contains(o)).count();
            prop_assert_eq!(c.lost.len(), lost);
            prop_assert_eq!(c.duplicated.len(), repeats.len());
            let mut highest = 0;
            let mut descents = 0;
            for offset in &order[..order.len() - repeats.len()] {
                if *offset < highest { descents += 1; }
                highest = highest.max(*offset);
            }
            prop_assert_eq!(c.reordered.len(), descents);
            prop_assert_eq!(c.ok as usize, order.len() - repeats.len() - descents);
            prop_assert_eq!(c.is_clean(), lost == 0 && repeats.is_empty() && descents == 0);
        }
    }
}
