//! The browser WebSocket protocol: JSON text frames, parsed once into typed requests.
//! docs/protocol.md is the reference a third party writes a client from.
//!
//! Client → edge: `{"id": N, "method": "...", "params": {...}}`.
//! Edge → client: `{"id": N, "result": ...}`, `{"id": N, "error": {"code", "message"}}`,
//! event pushes `{"topic", "offset", "epoch", "event"}`, presence pushes
//! `{"topic", "presence"}`, and `{"unsubscribed": {"topic", "code", "message", "offset", "epoch"}}`.

use axum::extract::ws::Utf8Bytes;
use herald_proto::v1::{CloseCode, Event, PresenceChange, Signal, StreamPosition};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A parsed client request.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    Auth {
        token: String,
    },
    Subscribe {
        topic: String,
        since: Option<StreamPosition>,
    },
    Unsubscribe {
        topic: String,
    },
    Publish {
        params: Value,
    },
    Call {
        rpc: String,
        request: Value,
    },
    Refresh {
        token: String,
    },
    Ping,
}

/// Why a frame could not be understood; answered with an `invalid_argument` error frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FrameError(pub String);

#[derive(Deserialize)]
struct Envelope {
    id: Option<u64>,
    method: Option<String>,
    #[serde(default)]
    params: Value,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenParams {
    token: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubscribeParams {
    topic: String,
    since: Option<SinceParams>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SinceParams {
    /// A decimal string (proto3 JSON for uint64) or a number.
    offset: OffsetValue,
    epoch: String,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OffsetValue {
    Number(u64),
    Text(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TopicParams {
    topic: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CallParams {
    rpc: String,
    #[serde(default)]
    request: Value,
}

/// Parses one text frame. Returns the request id (when one could be read) with the outcome,
/// so even a malformed request gets an error frame carrying its id.
pub fn parse(text: &str) -> (Option<u64>, Result<Request, FrameError>) {
    let envelope: Envelope = match serde_json::from_str(text) {
        Ok(envelope) => envelope,
        Err(error) => {
            return (
                None,
                Err(FrameError(format!(
                    "the frame is not a JSON object of the form {{\"id\":1,\"method\":\"…\",\"params\":{{…}}}}: {error}"
                ))),
            );
        }
    };
    let id = envelope.id;
    if id.is_none() {
        return (
            None,
            Err(FrameError("every request needs a numeric `id`".into())),
        );
    }
    let Some(method) = envelope.method else {
        return (id, Err(FrameError("the request has no `method`".into())));
    };
    let params = envelope.params;
    let request = match method.as_str() {
        "auth" => {
            params_as::<TokenParams>(&method, params).map(|p| Request::Auth { token: p.token })
        }
        "refresh" => {
            params_as::<TokenParams>(&method, params).map(|p| Request::Refresh { token: p.token })
        }
        "subscribe" => params_as::<SubscribeParams>(&method, params).and_then(|p| {
            let since = p.since.map(position).transpose()?;
            Ok(Request::Subscribe {
                topic: p.topic,
                since,
            })
        }),
        "unsubscribe" => params_as::<TopicParams>(&method, params)
            .map(|p| Request::Unsubscribe { topic: p.topic }),
        "publish" => match params {
            Value::Object(_) => Ok(Request::Publish { params }),
            _ => Err(FrameError(
                "publish needs params {\"topic\", \"type\", \"data\", \"idempotency_key\"?}".into(),
            )),
        },
        "call" => params_as::<CallParams>(&method, params).map(|p| Request::Call {
            rpc: p.rpc,
            request: p.request,
        }),
        "ping" => Ok(Request::Ping),
        other => Err(FrameError(format!(
            "unknown method `{other}`; methods are auth, subscribe, unsubscribe, publish, call, refresh, ping"
        ))),
    };
    (id, request)
}

fn params_as<T: serde::de::DeserializeOwned>(method: &str, params: Value) -> Result<T, FrameError> {
    serde_json::from_value(params)
        .map_err(|error| FrameError(format!("bad params for `{method}`: {error}")))
}

fn position(since: SinceParams) -> Result<StreamPosition, FrameError> {
    let offset = match since.offset {
        OffsetValue::Number(n) => n,
        OffsetValue::Text(text) => text
            .parse()
            .map_err(|_| FrameError(format!("since.offset `{text}` is not a whole number")))?,
    };
    Ok(StreamPosition {
        offset,
        epoch: since.epoch,
    })
}

/// Error codes of error frames: the gRPC status names in snake case, plus `rate_limited`.
pub fn status_code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "ok",
        Cancelled => "cancelled",
        Unknown => "unknown",
        InvalidArgument => "invalid_argument",
        DeadlineExceeded => "deadline_exceeded",
        NotFound => "not_found",
        AlreadyExists => "already_exists",
        PermissionDenied => "permission_denied",
        ResourceExhausted => "resource_exhausted",
        FailedPrecondition => "failed_precondition",
        Aborted => "aborted",
        OutOfRange => "out_of_range",
        Unimplemented => "unimplemented",
        Internal => "internal",
        Unavailable => "unavailable",
        DataLoss => "data_loss",
        Unauthenticated => "unauthenticated",
    }
}

/// The `code` of an error frame for rate limiting (not a gRPC status).
pub const RATE_LIMITED: &str = "rate_limited";

#[derive(Serialize)]
struct ResultFrame<'a, T: Serialize> {
    id: u64,
    result: &'a T,
}

#[derive(Serialize)]
struct ErrorFrame<'a> {
    id: Option<u64>,
    error: ErrorBody<'a>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    code: &'a str,
    message: &'a str,
}

pub fn result<T: Serialize>(id: u64, result: &T) -> String {
    serde_json::to_string(&ResultFrame { id, result }).unwrap_or_else(|error| {
        // Serializing plain data cannot fail; if it ever does, the client still gets an answer.
        error_frame(
            Some(id),
            "internal",
            &format!("cannot encode the result: {error}"),
        )
    })
}

pub fn error_frame(id: Option<u64>, code: &str, message: &str) -> String {
    serde_json::to_string(&ErrorFrame {
        id,
        error: ErrorBody { code, message },
    })
    .unwrap_or_default()
}

/// The schema, for encoding messages in the proto3 JSON mapping.
static SCHEMA: std::sync::LazyLock<Option<prost_reflect::DescriptorPool>> =
    std::sync::LazyLock::new(|| {
        prost_reflect::DescriptorPool::decode(herald_proto::FILE_DESCRIPTOR_SET).ok()
    });

/// `message` in the proto3 JSON mapping, as `full_name` (e.g. `herald.v1.Event`) defines it.
///
/// Encoded through the schema (prost-reflect) rather than the generated serde code, whose
/// well-known `Timestamp` is written with a `+00:00` offset: the mapping requires UTC with a
/// `Z` and 0, 3, 6 or 9 fractional digits (`2026-12-01T10:00:00Z`, `…:00.120Z`).
pub fn to_json<M: prost::Message>(full_name: &str, message: &M) -> Option<serde_json::Value> {
    let descriptor = SCHEMA.as_ref()?.get_message_by_name(full_name)?;
    let dynamic =
        prost_reflect::DynamicMessage::decode(descriptor, message.encode_to_vec().as_slice())
            .ok()?;
    dynamic
        .serialize_with_options(
            serde_json::value::Serializer,
            &prost_reflect::SerializeOptions::new(),
        )
        .ok()
}

fn json_text<M: prost::Message>(full_name: &str, message: &M) -> String {
    to_json(full_name, message).map_or_else(|| "{}".into(), |value| value.to_string())
}

/// An event push, encoded once and shared by every socket that receives it.
pub fn event_push(event: &Event) -> Utf8Bytes {
    let body = json_text("herald.v1.Event", event);
    let frame = format!(
        "{{\"topic\":{},\"offset\":\"{}\",\"epoch\":{},\"event\":{body}}}",
        quote(&event.topic),
        event.offset,
        quote(&event.epoch),
    );
    Utf8Bytes::from(frame)
}

pub fn presence_push(change: &PresenceChange) -> Utf8Bytes {
    let body = json_text("herald.v1.PresenceChange", change);
    Utf8Bytes::from(format!(
        "{{\"topic\":{},\"presence\":{body}}}",
        quote(&change.topic)
    ))
}

/// A signal push: `{"topic":…,"signal":{…}}` (ephemeral: no offset).
pub fn signal_push(signal: &Signal) -> Utf8Bytes {
    let body = json_text("herald.v1.Signal", signal);
    Utf8Bytes::from(format!(
        "{{\"topic\":{},\"signal\":{body}}}",
        quote(&signal.topic)
    ))
}

#[derive(Serialize)]
struct Unsubscribed<'a> {
    unsubscribed: UnsubscribedBody<'a>,
}

#[derive(Serialize)]
struct UnsubscribedBody<'a> {
    topic: &'a str,
    code: i32,
    reason: &'a str,
    message: &'a str,
    offset: String,
    epoch: &'a str,
}

/// The push telling a client the server ended one of its subscriptions.
pub fn unsubscribed(topic: &str, code: CloseCode, message: &str, last: &StreamPosition) -> String {
    serde_json::to_string(&Unsubscribed {
        unsubscribed: UnsubscribedBody {
            topic,
            code: code as i32,
            reason: close_reason_name(code),
            message,
            offset: last.offset.to_string(),
            epoch: &last.epoch,
        },
    })
    .unwrap_or_default()
}

/// `CLOSE_CODE_SLOW_CONSUMER` → `slow_consumer`.
pub fn close_reason_name(code: CloseCode) -> &'static str {
    match code {
        CloseCode::Unspecified => "unspecified",
        CloseCode::Shutdown => "shutdown",
        CloseCode::SlowConsumer => "slow_consumer",
        CloseCode::TokenExpired => "token_expired",
        CloseCode::InsufficientState => "insufficient_state",
        CloseCode::Stale => "stale",
        CloseCode::Unavailable => "unavailable",
        CloseCode::Internal => "internal",
        CloseCode::InvalidToken => "invalid_token",
        CloseCode::PermissionDenied => "permission_denied",
        CloseCode::BadRequest => "bad_request",
        CloseCode::LimitExceeded => "limit_exceeded",
        CloseCode::RateLimited => "rate_limited",
        CloseCode::DisconnectedByAdmin => "disconnected_by_admin",
    }
}

fn quote(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_else(|_| "\"\"".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_into_typed_values() {
        assert_eq!(
            parse(r#"{"id":1,"method":"auth","params":{"token":"t"}}"#),
            (Some(1), Ok(Request::Auth { token: "t".into() }))
        );
        assert_eq!(
            parse(
                r#"{"id":2,"method":"subscribe","params":{"topic":"room:a","since":{"offset":"7","epoch":"e"}}}"#
            ),
            (
                Some(2),
                Ok(Request::Subscribe {
                    topic: "room:a".into(),
                    since: Some(StreamPosition {
                        offset: 7,
                        epoch: "e".into()
                    })
                })
            )
        );
        assert_eq!(
            parse(r#"{"id":3,"method":"ping"}"#),
            (Some(3), Ok(Request::Ping))
        );
    }

    #[test]
    fn malformed_frames_are_errors_that_keep_the_id_when_readable() {
        assert!(parse("not json").1.is_err());
        assert_eq!(parse("not json").0, None);
        let (id, outcome) = parse(r#"{"id":9,"method":"launch"}"#);
        assert_eq!(id, Some(9));
        assert!(outcome.unwrap_err().0.contains("unknown method `launch`"));
        let (id, outcome) = parse(r#"{"id":4,"method":"subscribe","params":{"topic":1}}"#);
        assert_eq!(id, Some(4));
        assert!(
            outcome
                .unwrap_err()
                .0
                .contains("bad params for `subscribe`")
        );
        assert!(parse(r#"{"method":"ping"}"#).1.is_err());
        let (_, outcome) = parse(
            r#"{"id":5,"method":"subscribe","params":{"topic":"room:a","since":{"offset":"x","epoch":"e"}}}"#,
        );
        assert!(outcome.unwrap_err().0.contains("not a whole number"));
    }

    #[test]
    fn pushes_use_the_proto3_json_mapping() {
        let event = Event {
            topic: "room:a".into(),
            offset: 18,
            epoch: "e1".into(),
            r#type: "chat.message".into(),
            ..Event::default()
        };
        let push: Value = serde_json::from_str(event_push(&event).as_str()).unwrap();
        assert_eq!(push["topic"], "room:a");
        assert_eq!(push["offset"], "18");
        assert_eq!(push["event"]["offset"], "18");
        assert_eq!(push["event"]["type"], "chat.message");
        let gone = unsubscribed(
            "room:a",
            CloseCode::SlowConsumer,
            "slow",
            &StreamPosition {
                offset: 3,
                epoch: "e1".into(),
            },
        );
        let gone: Value = serde_json::from_str(&gone).unwrap();
        assert_eq!(gone["unsubscribed"]["code"], 3001);
        assert_eq!(gone["unsubscribed"]["reason"], "slow_consumer");
        assert_eq!(gone["unsubscribed"]["offset"], "3");
    }

    /// Finding 14 of the hardening review: timestamps are Z-normalized with 0, 3, 6 or 9
    /// fractional digits, never `+00:00`.
    #[test]
    fn finding_14_timestamps_are_z_normalized_with_0_3_6_or_9_fractional_digits() {
        let cases = [
            (0, "2026-12-01T10:00:00Z"),
            (120_000_000, "2026-12-01T10:00:00.120Z"),
            (120_500_000, "2026-12-01T10:00:00.120500Z"),
            (1, "2026-12-01T10:00:00.000000001Z"),
        ];
        for (nanos, expected) in cases {
            let event = Event {
                topic: "room:a".into(),
                offset: 1,
                time: Some(herald_proto::wkt::Timestamp {
                    seconds: 1_796_119_200,
                    nanos,
                }),
                ..Event::default()
            };
            let push: Value = serde_json::from_str(event_push(&event).as_str()).unwrap();
            assert_eq!(push["event"]["time"], expected, "{push}");
        }
    }
}
