//! The `herald.v1` contract, generated from `proto/herald/v1/*.proto` at build time.
//!
//! Every message has prost (binary protobuf) and serde (the canonical proto3 JSON mapping)
//! implementations, so gRPC, grpc-web and WebSocket clients all see the same shapes.
//! [`FILE_DESCRIPTOR_SET`] is the compiled schema, used by gRPC reflection and by the
//! edge's generic JSON transcoding.
//!
//! Next to the generated code: [`codes`], the rules of the close-code table (which codes
//! reconnect, the trailers that carry them), [`rate`], the token buckets, and [`support`], the
//! duration and lock helpers every Herald crate shares.

#![allow(missing_docs, unreachable_pub, missing_debug_implementations)]

pub mod codec;
pub mod codes;
pub mod encoded;
pub mod metrics;
pub mod rate;
pub mod support;

// Typed event bodies make `Event` large; its oneof frames are built once per event and shared,
// so boxing them would only add allocations.
#[allow(clippy::large_enum_variant)]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/herald.v1.rs"));
    include!(concat!(env!("OUT_DIR"), "/herald.v1.serde.rs"));
}

/// The server side of every herald service. Identical to the generated services in [`v1`]
/// except that `Rooms/Subscribe` streams [`encoded::Encoded`] frames.
#[allow(clippy::large_enum_variant)]
pub mod server {
    include!(concat!(env!("OUT_DIR"), "/server/herald.v1.rs"));
}

/// The encoded `FileDescriptorSet` of every herald proto file.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/herald_descriptor.bin"));

pub use pbjson_types as wkt;

/// Converts a wall-clock time into a protobuf `Timestamp`.
pub fn timestamp(time: std::time::SystemTime) -> wkt::Timestamp {
    let since_epoch = time
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    wkt::Timestamp {
        seconds: i64::try_from(since_epoch.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(since_epoch.subsec_nanos()).unwrap_or(0),
    }
}

/// Converts a protobuf `Timestamp` back into a wall-clock time (`None` before 1970).
pub fn system_time(timestamp: &wkt::Timestamp) -> Option<std::time::SystemTime> {
    let seconds = u64::try_from(timestamp.seconds).ok()?;
    let nanos = u32::try_from(timestamp.nanos).unwrap_or(0);
    std::time::UNIX_EPOCH.checked_add(std::time::Duration::new(seconds, nanos))
}
