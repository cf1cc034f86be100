//! Lean client-side decoding of event frames: gRPC `Subscribe` frames and JSON pushes.
//!
//! A subscriber in this benchmark needs an event's offset and the send time carried in its
//! data, nothing else. Decoding the full `herald.v1.Event` (topic, id, epoch, type, publisher
//! strings and a `Struct` map per frame) would make the load generator, which shares the
//! machine with the server, spend its CPU on allocations. These messages read the same wire
//! format and let prost skip every other field; JSON pushes (Herald's WebSocket protocol,
//! Socket.IO) are scanned for the two numbers without building a document.

use std::{
    collections::HashMap,
    time::{SystemTime, UNIX_EPOCH},
};

use herald_proto::{
    v1::{SubscribeRequest, Subscribed},
    wkt::{Struct, Value, value::Kind},
};
use tonic::{
    Request, Status, codec::Streaming, codegen::http::uri::PathAndQuery, transport::Channel,
};

/// The data key carrying the publish time, in nanoseconds since the Unix epoch.
pub(crate) const SENT_NS: &str = "sent_ns";

/// `herald.v1.SubscribeResponse`: the `frame` oneof read as optional fields. `presence`
/// (tag 3) is skipped.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Frame {
    #[prost(message, optional, tag = "1")]
    pub(crate) subscribed: Option<Subscribed>,
    #[prost(message, optional, tag = "2")]
    pub(crate) event: Option<LeanEvent>,
}

/// `herald.v1.Event` with only `offset` and `data`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct LeanEvent {
    #[prost(uint64, tag = "2")]
    pub(crate) offset: u64,
    #[prost(message, optional, tag = "7")]
    pub(crate) data: Option<LeanStruct>,
}

/// `google.protobuf.Struct`: its map entries, keys skipped. The benchmark publishes exactly
/// one field, [`SENT_NS`].
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct LeanStruct {
    #[prost(message, repeated, tag = "1")]
    pub(crate) fields: Vec<LeanEntry>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct LeanEntry {
    #[prost(message, optional, tag = "2")]
    pub(crate) value: Option<LeanValue>,
}

/// `google.protobuf.Value` read only as `number_value`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct LeanValue {
    #[prost(double, optional, tag = "2")]
    pub(crate) number_value: Option<f64>,
}

impl LeanEvent {
    /// The publish time the benchmark put in the event's data.
    pub(crate) fn sent_ns(&self) -> Option<u64> {
        let number = self
            .data
            .as_ref()?
            .fields
            .first()?
            .value
            .as_ref()?
            .number_value?;
        // An f64 holds today's nanosecond timestamps to within 256 ns: plenty for latency.
        (number.is_finite() && number >= 0.0).then_some(number as u64)
    }
}

/// The data of a benchmark event: `{"sent_ns": <now>}`.
pub(crate) fn event_data(sent_ns: u64) -> Struct {
    Struct {
        fields: HashMap::from([(
            SENT_NS.to_owned(),
            Value {
                kind: Some(Kind::NumberValue(sent_ns as f64)),
            },
        )]),
    }
}

/// Wall-clock nanoseconds since the Unix epoch; publisher and subscriber share the machine.
pub(crate) fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// The number after the first `field` (a quoted key and its colon, `"offset":`) in a JSON
/// text, quoted (`"18"`, as proto3 JSON writes 64-bit integers) or not. Enough for frames
/// whose producer this benchmark knows: the field must not also appear inside a string.
pub(crate) fn json_number<'a>(text: &'a str, field: &str) -> Option<&'a str> {
    number_at(&text[text.find(field)? + field.len()..])
}

/// Like [`json_number`], for the last occurrence: found sooner when the field is near the end.
pub(crate) fn json_number_last<'a>(text: &'a str, field: &str) -> Option<&'a str> {
    number_at(&text[text.rfind(field)? + field.len()..])
}

fn number_at(rest: &str) -> Option<&str> {
    let rest = rest.trim_start();
    let rest = rest.strip_prefix('"').unwrap_or(rest);
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '+' | '-')))
        .unwrap_or(rest.len());
    (end > 0).then(|| &rest[..end])
}

/// The `"offset":` field of a JSON frame.
pub(crate) const OFFSET_FIELD: &str = "\"offset\":";
const SENT_NS_FIELD: &str = "\"sent_ns\":";

/// An event's offset and send time read from a JSON push: the first `"offset"` (the push's
/// own, before the event) and the `"sent_ns"` of its data, at the end.
pub(crate) fn json_event(text: &str) -> Option<(u64, Option<u64>)> {
    let offset = json_number(text, OFFSET_FIELD)?.parse().ok()?;
    let sent_ns = json_number_last(text, SENT_NS_FIELD)
        .and_then(|n| n.parse::<f64>().ok())
        .filter(|n| n.is_finite() && *n >= 0.0)
        .map(|n| n as u64);
    Some((offset, sent_ns))
}

/// Calls `herald.v1.Rooms/Subscribe`, decoding responses as [`Frame`]s.
pub(crate) async fn subscribe(
    channel: Channel,
    request: Request<SubscribeRequest>,
) -> Result<Streaming<Frame>, Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|error| Status::unavailable(format!("connection not ready: {error}")))?;
    // Herald's own codec: small initial buffers, as on the server.
    let codec = herald_proto::codec::HeraldCodec::<SubscribeRequest, Frame>::default();
    let path = PathAndQuery::from_static("/herald.v1.Rooms/Subscribe");
    Ok(grpc
        .server_streaming(request, path, codec)
        .await?
        .into_inner())
}

#[cfg(test)]
mod tests {
    use herald_proto::v1::{Event, StreamPosition, SubscribeResponse, subscribe_response};
    use prost::Message;

    use super::*;

    #[test]
    fn a_full_event_frame_decodes_to_its_offset_and_send_time() {
        let full = SubscribeResponse {
            frame: Some(subscribe_response::Frame::Event(Event {
                topic: "room:bench-0".into(),
                offset: 42,
                epoch: "abc".into(),
                id: "id".into(),
                r#type: "bench.tick".into(),
                data: Some(event_data(1_700_000_000_123_456_789)),
                publisher: "herald-bench".into(),
                ..Event::default()
            })),
        };
        let lean = Frame::decode(full.encode_to_vec().as_slice()).unwrap();
        let event = lean.event.unwrap();
        assert_eq!(event.offset, 42);
        let sent = event.sent_ns().unwrap();
        assert!(sent.abs_diff(1_700_000_000_123_456_789) < 1_000);
        assert!(lean.subscribed.is_none());
    }

    #[test]
    fn a_herald_push_yields_its_offset_and_send_time() {
        // As the edge writes it (edge/src/protocol.rs, event_push).
        let push = r#"{"topic":"room:bench-0","offset":"18","epoch":"3f9a0c2d11e4b7a8","event":{"topic":"room:bench-0","offset":"18","epoch":"3f9a0c2d11e4b7a8","id":"019aa8","time":"2026-11-22T06:20:01.120Z","type":"bench.tick","data":{"sent_ns":1.7637970123456788e18},"publisher":"herald-bench"}}"#;
        let (offset, sent) = json_event(push).unwrap();
        assert_eq!(offset, 18);
        assert!(sent.unwrap().abs_diff(1_763_797_012_345_678_800) < 1_000);
    }

    #[test]
    fn a_socketio_event_yields_its_offset_and_send_time() {
        let packet = r#"42["event",{"topic":"room:bench-3","offset":7,"id":"x","time":"t","type":"bench.tick","data":{"sent_ns":1763797012345678800},"publisher":"herald-bench"}]"#;
        assert_eq!(
            json_event(packet),
            Some((7, Some(1_763_797_012_345_678_848)))
        );
    }

    #[test]
    fn keys_inside_strings_or_other_keys_are_not_numbers() {
        assert_eq!(
            json_number(r#"{"my_offset":3,"offset":"9"}"#, OFFSET_FIELD),
            Some("9")
        );
        assert_eq!(json_number(r#"{"offset":"abc"}"#, OFFSET_FIELD), None);
        assert_eq!(
            json_number_last(r#"{"a":{"n":1},"b":{"n":2}}"#, "\"n\":"),
            Some("2")
        );
        assert_eq!(json_event(r#"{"id":1,"result":{}}"#), None);
    }

    #[test]
    fn a_subscribed_frame_decodes_with_its_position() {
        let full = SubscribeResponse {
            frame: Some(subscribe_response::Frame::Subscribed(Subscribed {
                position: Some(StreamPosition {
                    offset: 7,
                    epoch: "e".into(),
                }),
                recovered: true,
            })),
        };
        let lean = Frame::decode(full.encode_to_vec().as_slice()).unwrap();
        assert_eq!(lean.subscribed.unwrap().position.unwrap().offset, 7);
        assert!(lean.event.is_none());
    }
}
