//! [`SharedEvent`]: an event as the hub, history and every stream share it.

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

#[cfg(test)]
mod tests {
    use herald_proto::v1::{SubscribeResponse, subscribe_response::Frame};
    use prost::Message;

    use super::*;

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
