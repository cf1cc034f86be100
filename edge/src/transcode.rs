//! Generic JSON ↔ protobuf transcoding, driven by the descriptor set: any unary RPC of the
//! herald services can be called from a WebSocket `call` frame with no edge code per RPC.

use std::collections::HashMap;

use bytes::{Buf, BufMut, Bytes};
use prost::Message;
use prost_reflect::{
    DescriptorPool, DeserializeOptions, DynamicMessage, MethodDescriptor, SerializeOptions,
};
use serde_json::Value;
use tonic::{
    Status,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    transport::Channel,
};

/// Services browsers must not reach through the edge.
const INTERNAL_SERVICES: &[&str] = &["herald.v1.Edge"];

#[derive(Debug, thiserror::Error)]
pub enum TranscodeError {
    #[error("the descriptor set is invalid: {0}")]
    Descriptors(String),
    #[error(
        "unknown rpc `{0}`; use `package.Service/Method`, for example `herald.v1.Rooms/Publish`"
    )]
    UnknownRpc(String),
    #[error("`{0}` is a streaming rpc; subscribe to topics with `subscribe` instead")]
    Streaming(String),
    #[error("the request does not match {message}: {reason}")]
    BadRequest { message: String, reason: String },
}

#[derive(Debug)]
pub struct Transcoder {
    methods: HashMap<String, MethodDescriptor>,
}

impl Transcoder {
    pub fn new(descriptor_set: &[u8]) -> Result<Transcoder, TranscodeError> {
        let pool = DescriptorPool::decode(descriptor_set)
            .map_err(|e| TranscodeError::Descriptors(e.to_string()))?;
        let methods = pool
            .services()
            .filter(|service| !INTERNAL_SERVICES.contains(&service.full_name()))
            .flat_map(|service| {
                let name = service.full_name().to_owned();
                service
                    .methods()
                    .map(move |method| (format!("{name}/{}", method.name()), method))
                    .collect::<Vec<_>>()
            })
            .collect();
        Ok(Transcoder { methods })
    }

    /// Finds a unary method by `package.Service/Method`.
    pub fn method(&self, rpc: &str) -> Result<MethodDescriptor, TranscodeError> {
        let method = self
            .methods
            .get(rpc.trim_start_matches('/'))
            .ok_or_else(|| TranscodeError::UnknownRpc(rpc.to_owned()))?;
        if method.is_client_streaming() || method.is_server_streaming() {
            return Err(TranscodeError::Streaming(rpc.to_owned()));
        }
        Ok(method.clone())
    }

    /// Encodes a proto3-JSON request for `method`.
    pub fn encode_request(
        &self,
        method: &MethodDescriptor,
        request: Value,
    ) -> Result<Bytes, TranscodeError> {
        let request = if request.is_null() {
            Value::Object(Default::default())
        } else {
            request
        };
        let options = DeserializeOptions::new().deny_unknown_fields(true);
        let message = DynamicMessage::deserialize_with_options(method.input(), request, &options)
            .map_err(|e| TranscodeError::BadRequest {
            message: method.input().full_name().to_owned(),
            reason: e.to_string(),
        })?;
        Ok(Bytes::from(message.encode_to_vec()))
    }

    /// Decodes a response of `method` into proto3 JSON.
    pub fn decode_response(
        &self,
        method: &MethodDescriptor,
        bytes: Bytes,
    ) -> Result<Value, Status> {
        let message = DynamicMessage::decode(method.output(), bytes)
            .map_err(|e| Status::internal(format!("cannot decode the backend's response: {e}")))?;
        message
            .serialize_with_options(serde_json::value::Serializer, &SerializeOptions::new())
            .map_err(|e| Status::internal(format!("cannot encode the response as JSON: {e}")))
    }
}

/// Calls a unary method with pre-encoded request bytes, carrying the caller's token.
pub async fn call_unary(
    channel: Channel,
    method: &MethodDescriptor,
    body: Bytes,
    token: &str,
) -> Result<Bytes, Status> {
    let path = format!("/{}/{}", method.parent_service().full_name(), method.name());
    let path = http::uri::PathAndQuery::try_from(path)
        .map_err(|e| Status::internal(format!("bad method path: {e}")))?;
    let request = crate::backends::authorized(body, token)?;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(format!("the backend is unreachable: {e}")))?;
    Ok(grpc.unary(request, path, RawCodec).await?.into_inner())
}

/// A codec passing already-encoded protobuf bytes through.
#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transcoder() -> Transcoder {
        Transcoder::new(herald_proto::FILE_DESCRIPTOR_SET).unwrap()
    }

    #[test]
    fn a_json_request_round_trips_through_protobuf() {
        let t = transcoder();
        let method = t.method("herald.v1.Rooms/Publish").unwrap();
        let json = serde_json::json!({"topic": "room:a", "type": "x", "data": {"k": [1, "two"]}, "idempotencyKey": "k1"});
        let bytes = t.encode_request(&method, json).unwrap();
        let decoded = herald_proto::v1::PublishRequest::decode(bytes).unwrap();
        assert_eq!(decoded.topic, "room:a");
        assert_eq!(decoded.idempotency_key.as_deref(), Some("k1"));
        let data = serde_json::to_value(decoded.data.unwrap()).unwrap();
        assert_eq!(data, serde_json::json!({"k": [1.0, "two"]}));
    }

    #[test]
    fn unknown_streaming_and_internal_rpcs_and_bad_fields_are_refused() {
        let t = transcoder();
        assert!(matches!(
            t.method("herald.v1.Rooms/Nope"),
            Err(TranscodeError::UnknownRpc(_))
        ));
        assert!(matches!(
            t.method("herald.v1.Rooms/Subscribe"),
            Err(TranscodeError::Streaming(_))
        ));
        assert!(matches!(
            t.method("herald.v1.Edge/Follow"),
            Err(TranscodeError::UnknownRpc(_))
        ));
        let method = t.method("herald.v1.Rooms/Publish").unwrap();
        let error = t
            .encode_request(&method, serde_json::json!({"topik": "x"}))
            .unwrap_err();
        assert!(error.to_string().contains("topik"), "{error}");
    }

    #[test]
    fn responses_use_the_same_json_as_the_generated_types() {
        let t = transcoder();
        let method = t.method("herald.v1.Rooms/Publish").unwrap();
        let response = herald_proto::v1::PublishResponse {
            position: Some(herald_proto::v1::StreamPosition {
                offset: 18,
                epoch: "e".into(),
            }),
            id: "i".into(),
        };
        let json = t
            .decode_response(&method, Bytes::from(response.encode_to_vec()))
            .unwrap();
        assert_eq!(json, serde_json::to_value(&response).unwrap());
    }
}
