//! A WebSocket text frame as a client sends it: parsed into a request, and a `call`'s JSON
//! transcoded to protobuf for its RPC. The same bytes are also decoded as a backend's
//! response of a few RPCs and written back as JSON. Nothing may panic.

#![no_main]

use std::sync::LazyLock;

use herald_edge::{
    protocol::{self, Request},
    transcode::Transcoder,
};
use libfuzzer_sys::fuzz_target;

static TRANSCODER: LazyLock<Transcoder> = LazyLock::new(|| {
    Transcoder::new(herald_proto::FILE_DESCRIPTOR_SET).expect("the compiled schema loads")
});

/// Unary RPCs whose responses carry the most varied types (events, Struct, Timestamp, maps).
const RESPONSES: &[&str] = &[
    "herald.v1.Rooms/History",
    "herald.v1.Deployments/Get",
    "herald.v1.Notifications/List",
    "herald.v1.Orders/Get",
];

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let (_id, request) = protocol::parse(text);
        if let Ok(Request::Call { rpc, request }) = request
            && let Ok(method) = TRANSCODER.method(&rpc)
        {
            let _ = TRANSCODER.encode_request(&method, request);
        }
    }
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let rpc = RESPONSES[usize::from(pick) % RESPONSES.len()];
    if let Ok(method) = TRANSCODER.method(rpc) {
        let _ = TRANSCODER.decode_response(&method, bytes::Bytes::copy_from_slice(body));
    }
});
