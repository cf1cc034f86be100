//! Events: [`SharedEvent`], an event as the hub, history and every stream share it, and the
//! newtypes parsed once at the boundary ([`EventType`], [`IdempotencyKey`]).

use std::{ops::Deref, sync::OnceLock};

use herald_proto::{encoded::Encoded, v1::Event};
use prost::bytes::BytesMut;

/// An event plus its `SubscribeResponse` encoding, computed the first time a stream needs it
/// and then shared by every subscriber of the topic.
#[derive(Debug)]
pub struct SharedEvent {
    event: Event,
    frame: OnceLock<Encoded>,
}

/// Field number of `event` in `herald.v1.SubscribeResponse`.
const SUBSCRIBE_RESPONSE_EVENT_FIELD: u32 = 2;

impl SharedEvent {
    pub fn new(event: Event) -> SharedEvent {
        SharedEvent {
            event,
            frame: OnceLock::new(),
        }
    }

    /// `SubscribeResponse { event }`, encoded once.
    pub fn subscribe_frame(&self) -> &Encoded {
        self.frame.get_or_init(|| {
            let mut buf = BytesMut::new();
            prost::encoding::message::encode(SUBSCRIBE_RESPONSE_EVENT_FIELD, &self.event, &mut buf);
            Encoded::from_bytes(buf.freeze())
        })
    }

    pub fn event(&self) -> &Event {
        &self.event
    }
}

impl Deref for SharedEvent {
    type Target = Event;

    fn deref(&self) -> &Event {
        &self.event
    }
}

/// The longest event (or signal) type.
pub const MAX_EVENT_TYPE_LEN: usize = 128;
/// The longest idempotency key (or signal key).
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 256;

/// An application-defined event type: 1–128 characters of `A–Z a–z 0–9 . _ - : /`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventType(String);

impl EventType {
    /// Parses a type; the error says the rule, for the client to fix its input.
    pub fn parse(text: &str) -> Result<EventType, String> {
        let valid_char =
            |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':' | '/');
        if text.is_empty() || text.len() > MAX_EVENT_TYPE_LEN || !text.chars().all(valid_char) {
            return Err(format!(
                "event type must be 1–{MAX_EVENT_TYPE_LEN} characters of A–Z a–z 0–9 . _ - : /, for example `chat.message`"
            ));
        }
        Ok(EventType(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

/// A client's idempotency key: at most 256 bytes; empty means none.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// `None` for an absent or empty key.
    pub fn parse(key: Option<String>) -> Result<Option<IdempotencyKey>, String> {
        match key {
            None => Ok(None),
            Some(key) if key.is_empty() => Ok(None),
            Some(key) if key.len() > MAX_IDEMPOTENCY_KEY_LEN => Err(format!(
                "idempotency_key is {} bytes; the limit is {MAX_IDEMPOTENCY_KEY_LEN}",
                key.len()
            )),
            Some(key) => Ok(Some(IdempotencyKey(key))),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use herald_proto::v1::{SubscribeResponse, subscribe_response::Frame};
    use prost::Message;

    use super::*;

    #[test]
    fn event_types_and_keys_are_parsed_with_the_rule_they_break() {
        assert!(EventType::parse("chat.message").is_ok());
        assert!(EventType::parse("a/b:c-d_e").is_ok());
        for bad in ["", "has space", "é", &"x".repeat(129)] {
            let error = EventType::parse(bad).unwrap_err();
            assert!(error.contains("1–128 characters"), "{bad}: {error}");
        }
        assert_eq!(IdempotencyKey::parse(None), Ok(None));
        assert_eq!(IdempotencyKey::parse(Some(String::new())), Ok(None));
        assert!(IdempotencyKey::parse(Some("k".repeat(257))).is_err());
        assert_eq!(
            IdempotencyKey::parse(Some("k1".into()))
                .unwrap()
                .unwrap()
                .as_str(),
            "k1"
        );
    }

    #[test]
    fn the_shared_frame_is_a_subscribe_response_carrying_the_event() {
        let event = Event {
            topic: "room:a".into(),
            offset: 3,
            r#type: "t".into(),
            ..Event::default()
        };
        let shared = SharedEvent::new(event.clone());
        let wire = shared.subscribe_frame().encode_to_vec();
        let decoded = SubscribeResponse::decode(wire.as_slice()).unwrap();
        assert_eq!(decoded.frame, Some(Frame::Event(event)));
    }
}
