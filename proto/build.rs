//! Compiles proto/herald/v1/*.proto with protox (no system protoc), then generates the
//! prost messages, the tonic services, the proto3-JSON (pbjson) serde impls and the
//! descriptor set that reflection and the edge's transcoder load.

use std::{env, fs, path::PathBuf};

use prost::Message;

const PROTOS: &[&str] = &[
    "herald/v1/codes.proto",
    "herald/v1/events.proto",
    "herald/v1/rooms.proto",
    "herald/v1/edge.proto",
    "herald/v1/auth.proto",
    "herald/v1/deployment_events.proto",
    "herald/v1/deployments.proto",
    "herald/v1/notification_events.proto",
    "herald/v1/notifications.proto",
    "herald/v1/review_events.proto",
    "herald/v1/reviews.proto",
    "herald/v1/chat_events.proto",
    "herald/v1/chat.proto",
    "herald/v1/orders_events.proto",
    "herald/v1/orders.proto",
    "herald/v1/admin.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let descriptor_path = out_dir.join("herald_descriptor.bin");

    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let fds = protox::compile(PROTOS, ["."])?;
    fs::write(&descriptor_path, fds.encode_to_vec())?;

    tonic_prost_build::configure()
        .build_server(false)
        // Well-known types come from pbjson-types (which adds their proto3-JSON mapping), so
        // prost's default mapping to prost-types is turned off.
        .compile_well_known_types(true)
        .codec_path("crate::codec::HeraldCodec")
        .extern_path(".google.protobuf", "::pbjson_types")
        // Large typed bodies are boxed, so every `Event` (held per subscriber queue and in
        // the broker's caches) stays small whatever the domain.
        .boxed(".herald.v1.Event.body.notification_created")
        .boxed(".herald.v1.Event.body.review_submitted")
        .boxed(".herald.v1.Event.body.review_decided")
        .boxed(".herald.v1.Event.body.chat_message_changed")
        .boxed(".herald.v1.Event.body.chat_membership_changed")
        .boxed(".herald.v1.Event.body.order_placed")
        .compile_fds(fds.clone())?;

    // The server side of the services again, streaming `Rooms/Subscribe` responses as frames
    // encoded once per event and `Deployments/Watch` messages spliced from them (see
    // src/encoded.rs); every other message type is the one above.
    let server_dir = out_dir.join("server");
    fs::create_dir_all(&server_dir)?;
    tonic_prost_build::configure()
        .build_client(false)
        .compile_well_known_types(true)
        .codec_path("crate::codec::HeraldCodec")
        .extern_path(".google.protobuf", "::pbjson_types")
        .extern_path(".herald.v1.SubscribeResponse", "crate::encoded::Encoded")
        .extern_path(".herald.v1.DeploymentEvent", "crate::encoded::Encoded")
        .extern_path(".herald.v1", "crate::v1")
        .out_dir(&server_dir)
        .compile_fds(fds)?;

    pbjson_build::Builder::new()
        .register_descriptors(&fs::read(&descriptor_path)?)?
        .extern_path(".google.protobuf", "::pbjson_types")
        .build(&[".herald"])?;
    Ok(())
}
