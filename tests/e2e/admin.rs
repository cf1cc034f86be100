//! `herald.v1.Admin`: disconnecting a user everywhere (gRPC streams and WebSockets end with
//! CLOSE_CODE_DISCONNECTED_BY_ADMIN, other users' streams go on), listing connections, topic
//! and server info, role and input checks, and the audit log.

use herald_e2e::{Client, edge::spawn_edge, spawn_app};
use herald_proto::{
    codes::close_code_of,
    v1::{
        CloseCode, DisconnectUserRequest, ListAuditRequest, ListConnectionsRequest,
        ServerInfoRequest, TopicInfoRequest, admin_client::AdminClient,
    },
};
use serde_json::json;
use tonic::Code;

fn admin_of(client: &Client) -> AdminClient<tonic::transport::Channel> {
    AdminClient::new(client.channel.clone())
}

#[tokio::test]
async fn disconnect_user_ends_their_grpc_streams_and_sockets_and_leaves_others_alone() {
    let app = spawn_app().await;
    let edge = spawn_edge(&app).await;
    let operator = app.client("operator", &["admin"]).await;

    let mallory = app.client("mallory", &[]).await;
    let mut grpc = mallory.subscribe("room:admin-lobby").await;
    let mut socket = edge.connect_as(&app.token("mallory", &[])).await;
    let reply = socket
        .request("subscribe", json!({ "topic": "room:admin-lobby" }))
        .await;
    assert!(reply.get("result").is_some(), "{reply}");
    let bob = app.client("bob", &[]).await;
    let mut bobs = bob.subscribe("room:admin-lobby").await;
    let mut bob_socket = edge.connect_as(&app.token("bob", &[])).await;
    let reply = bob_socket
        .request("subscribe", json!({ "topic": "room:admin-lobby" }))
        .await;
    assert!(reply.get("result").is_some(), "{reply}");

    let listed = admin_of(&operator)
        .list_connections(operator.request(ListConnectionsRequest {
            user_id: "mallory".into(),
        }))
        .await
        .unwrap()
        .into_inner()
        .connections;
    let mut transports: Vec<&str> = listed.iter().map(|c| c.transport.as_str()).collect();
    transports.sort_unstable();
    assert_eq!(transports, ["grpc", "websocket"], "{listed:?}");
    assert!(listed.iter().all(|c| c.subscriptions == 1), "{listed:?}");
    let info = admin_of(&operator)
        .topic_info(operator.request(TopicInfoRequest {
            topic: "room:admin-lobby".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.subscribers, 4);
    assert_eq!(info.lane, "memory");

    let ended = admin_of(&operator)
        .disconnect_user(operator.request(DisconnectUserRequest {
            user_id: "mallory".into(),
            reason: "abuse report 42".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ended.streams_ended, 2);

    let (_, status) = grpc.drain_until_end().await;
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert_eq!(close_code_of(&status), Some(CloseCode::DisconnectedByAdmin));
    let closed = socket.closed().await;
    assert_eq!(
        closed.code,
        CloseCode::DisconnectedByAdmin as u16,
        "{closed:?}"
    );

    // Bob's streams go on.
    let service = app.service().await;
    service.publish("room:admin-lobby", 1).await;
    assert_eq!(bobs.offsets(1).await, vec![1]);
    assert_eq!(bob_socket.offsets(1).await, vec![1]);

    let audit = admin_of(&operator)
        .list_audit(operator.request(ListAuditRequest { limit: 10 }))
        .await
        .unwrap()
        .into_inner()
        .entries;
    let entry = audit
        .iter()
        .find(|e| e.action == "DisconnectUser")
        .expect("the disconnect is audited");
    assert_eq!(entry.actor, "operator");
    assert_eq!(entry.target, "mallory");
    let detail: serde_json::Value = serde_json::from_str(&entry.detail).unwrap();
    assert_eq!(detail["streams_ended"], 2);
    assert_eq!(detail["reason"], "abuse report 42");
    assert!(audit.iter().any(|e| e.action == "ListConnections"));
}

#[tokio::test]
async fn admin_rpcs_refuse_non_admins_and_name_the_invalid_field() {
    let app = spawn_app().await;
    let user = app.client("eve", &[]).await;
    let refused = admin_of(&user)
        .disconnect_user(user.request(DisconnectUserRequest {
            user_id: "bob".into(),
            reason: String::new(),
        }))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert!(refused.message().contains("`admin` role"), "{refused:?}");
    let refused = admin_of(&user)
        .server_info(user.request(ServerInfoRequest {}))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);

    let operator = app.client("operator", &["admin"]).await;
    let invalid = admin_of(&operator)
        .disconnect_user(operator.request(DisconnectUserRequest {
            user_id: String::new(),
            reason: String::new(),
        }))
        .await
        .unwrap_err();
    assert_eq!(invalid.code(), Code::InvalidArgument);
    assert!(invalid.message().contains("user_id"), "{invalid:?}");
    let invalid = admin_of(&operator)
        .topic_info(operator.request(TopicInfoRequest {
            topic: "no kind".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(invalid.code(), Code::InvalidArgument);

    let info = admin_of(&operator)
        .server_info(operator.request(ServerInfoRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert!(!info.version.is_empty());
    assert!(
        info.lanes
            .iter()
            .any(|l| l.kind == "room" && l.lane == "memory")
    );
    // Refused calls are not audited; the accepted one is.
    let audit = admin_of(&operator)
        .list_audit(operator.request(ListAuditRequest { limit: 0 }))
        .await
        .unwrap()
        .into_inner()
        .entries;
    let actions: Vec<&str> = audit.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["ServerInfo"]);
}

#[tokio::test]
async fn admin_is_reachable_through_the_edges_call() {
    let app = spawn_app().await;
    let edge = spawn_edge(&app).await;
    let mut socket = edge.connect_as(&app.token("operator", &["admin"])).await;
    let reply = socket
        .request(
            "call",
            json!({ "rpc": "herald.v1.Admin/ServerInfo", "request": {} }),
        )
        .await;
    assert!(
        reply["result"]["version"]
            .as_str()
            .is_some_and(|v| !v.is_empty()),
        "{reply}"
    );
    let mut user = edge.connect_as(&app.token("eve", &[])).await;
    let reply = user
        .request(
            "call",
            json!({ "rpc": "herald.v1.Admin/ServerInfo", "request": {} }),
        )
        .await;
    assert_eq!(reply["error"]["code"], "permission_denied", "{reply}");
}
