//! Messages encoded once and sent many times.
//!
//! A topic's event goes to every subscriber of the topic. Encoding it per subscriber (and
//! cloning it first) would repeat the same work thousands of times, so the server side of
//! `Rooms/Subscribe` streams [`Encoded`] frames: protobuf bytes computed once and shared by
//! reference count. On the wire they are ordinary `SubscribeResponse` messages; clients decode
//! them with the generated types.

use bytes::{Buf, BufMut, Bytes};
use prost::{
    DecodeError, Message,
    encoding::{DecodeContext, WireType, skip_field},
};

/// An already-encoded protobuf message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Encoded(Bytes);

impl Encoded {
    pub fn new(message: &impl Message) -> Encoded {
        Encoded(Bytes::from(message.encode_to_vec()))
    }

    /// Wraps bytes that already are an encoded message.
    pub fn from_bytes(bytes: Bytes) -> Encoded {
        Encoded(bytes)
    }

    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }
}

impl Message for Encoded {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        buf.put_slice(&self.0);
    }

    /// Encoded frames are only ever sent; decoding one skips its fields.
    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        self.0.len()
    }

    fn clear(&mut self) {
        self.0 = Bytes::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::{Event, SubscribeResponse, subscribe_response::Frame};

    #[test]
    fn an_encoded_frame_decodes_as_the_original_message() {
        let response = SubscribeResponse {
            frame: Some(Frame::Event(Event {
                topic: "room:a".into(),
                offset: 7,
                ..Event::default()
            })),
        };
        let encoded = Encoded::new(&response);
        let wire = encoded.encode_to_vec();
        assert_eq!(
            SubscribeResponse::decode(wire.as_slice()).unwrap(),
            response
        );
    }
}
