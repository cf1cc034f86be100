//! Load-then-follow: state from a `List`/`Get` and the changes after exactly its position.

use crate::Subscription;

/// What [`Client::live`](crate::Client::live) hands the app: the loaded state and the ordered
/// feed of every change after it. Apply each [`Update::Event`](crate::Update::Event) to
/// `state`; on [`Update::Reload`](crate::Update::Reload) history could not continue from the
/// state's position — load again.
#[derive(Debug)]
pub struct Live<T> {
    pub state: T,
    pub feed: Subscription,
}
