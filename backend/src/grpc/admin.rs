//! `herald.v1.Admin`: principal (role `admin`) → parse → the node's registry and counters →
//! audit log (see [`crate::admin_audit`]). Every RPC checks the role before it reads the
//! request, and every call that passes the checks is audited before it answers.

use std::{sync::Arc, time::SystemTime};

use herald_proto::{
    server::admin_server::Admin,
    v1::{
        AuditEntry as AuditEntryPb, Connection, DisconnectUserRequest, DisconnectUserResponse,
        KindLane, ListAuditRequest, ListAuditResponse, ListConnectionsRequest,
        ListConnectionsResponse, ServerInfoRequest, ServerInfoResponse, TopicInfoRequest,
        TopicInfoResponse,
    },
};
use serde_json::json;
use tonic::{Request, Response, Status};

use crate::{
    admin_audit::{self, AuditEntry},
    auth::{Principal, interceptor::principal},
    connections::Transport,
    error::Error,
    lanes::Lane,
    node::Node,
    store::Store,
    topic::{Topic, TopicKind},
};

/// The role every Admin RPC requires.
pub const ADMIN_ROLE: &str = "admin";
/// The longest user id (a token's `sub` is at most this long too).
const MAX_USER_ID: usize = 255;
/// The longest `reason` of a disconnect.
const MAX_REASON: usize = 500;
/// The most connections or present members one answer lists.
const MAX_LISTED: usize = 1000;
/// The most audit entries one `ListAudit` returns, and the default.
const MAX_AUDIT: u32 = 100;
const DEFAULT_AUDIT: u32 = 20;

#[derive(Debug, Clone)]
pub struct AdminService {
    node: Arc<Node>,
    store: Store,
}

impl AdminService {
    pub fn new(node: Arc<Node>, store: Store) -> AdminService {
        AdminService { node, store }
    }

    async fn audit(
        &self,
        who: &Principal,
        action: &str,
        target: &str,
        detail: serde_json::Value,
    ) -> Result<(), Status> {
        self.node.metrics().admin_action();
        let entry = AuditEntry {
            at: SystemTime::now(),
            actor: who.user_id.clone(),
            action: action.to_owned(),
            target: target.to_owned(),
            detail,
        };
        admin_audit::record(&self.store, &entry)
            .await
            .map_err(|e| Status::from(Error::from(e)))
    }
}

fn admin<T>(request: &Request<T>, rpc: &str) -> Result<Principal, Status> {
    let who = principal(request)?;
    if !who.has_role(ADMIN_ROLE) {
        return Err(Error::PermissionDenied(format!(
            "Admin/{rpc} is for operators: call it with a token carrying the `{ADMIN_ROLE}` role"
        ))
        .into());
    }
    Ok(who)
}

fn user_id(user_id: &str) -> Result<&str, Status> {
    if user_id.is_empty() || user_id.len() > MAX_USER_ID {
        return Err(Error::invalid(format!(
            "user_id is {} bytes; it must be 1 to {MAX_USER_ID} bytes",
            user_id.len()
        ))
        .into());
    }
    Ok(user_id)
}

fn lane_name(lane: Lane) -> &'static str {
    match lane {
        Lane::Memory => "memory",
        Lane::Durable => "durable",
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn disconnect_user(
        &self,
        request: Request<DisconnectUserRequest>,
    ) -> Result<Response<DisconnectUserResponse>, Status> {
        let who = admin(&request, "DisconnectUser")?;
        let request = request.into_inner();
        let user = user_id(&request.user_id)?;
        if request.reason.len() > MAX_REASON {
            return Err(Error::invalid(format!(
                "reason is {} bytes; the limit is {MAX_REASON}",
                request.reason.len()
            ))
            .into());
        }
        let ended = self.node.connections().disconnect(user);
        self.audit(
            &who,
            "DisconnectUser",
            user,
            json!({ "reason": request.reason, "streams_ended": ended }),
        )
        .await?;
        Ok(Response::new(DisconnectUserResponse {
            streams_ended: u32::try_from(ended).unwrap_or(u32::MAX),
        }))
    }

    async fn list_connections(
        &self,
        request: Request<ListConnectionsRequest>,
    ) -> Result<Response<ListConnectionsResponse>, Status> {
        let who = admin(&request, "ListConnections")?;
        let request = request.into_inner();
        let user = user_id(&request.user_id)?;
        let connections = self
            .node
            .connections()
            .list(user, MAX_LISTED)
            .into_iter()
            .map(|info| {
                let (transport, edge, socket) = match info.transport {
                    Transport::Grpc => ("grpc", String::new(), 0),
                    Transport::Edge { edge, socket } => ("websocket", edge.to_string(), socket),
                };
                Connection {
                    transport: transport.to_owned(),
                    edge,
                    socket,
                    connected_at: Some(herald_proto::timestamp(info.connected_at)),
                    subscriptions: info.subscriptions,
                }
            })
            .collect::<Vec<_>>();
        self.audit(
            &who,
            "ListConnections",
            user,
            json!({ "connections": connections.len() }),
        )
        .await?;
        Ok(Response::new(ListConnectionsResponse { connections }))
    }

    async fn topic_info(
        &self,
        request: Request<TopicInfoRequest>,
    ) -> Result<Response<TopicInfoResponse>, Status> {
        let who = admin(&request, "TopicInfo")?;
        let request = request.into_inner();
        let topic = Topic::parse(&request.topic).map_err(|e| Status::from(Error::from(e)))?;
        let subscribers = self.node.connections().subscribers(&topic);
        let mut members = self.node.members(&topic).await?;
        members.truncate(MAX_LISTED);
        let lane = lane_name(self.node.lanes().lane(topic.kind()));
        self.audit(&who, "TopicInfo", topic.as_str(), json!({}))
            .await?;
        Ok(Response::new(TopicInfoResponse {
            subscribers: u32::try_from(subscribers).unwrap_or(u32::MAX),
            present_user_ids: members.into_iter().map(|m| m.user_id).collect(),
            lane: lane.to_owned(),
        }))
    }

    async fn server_info(
        &self,
        request: Request<ServerInfoRequest>,
    ) -> Result<Response<ServerInfoResponse>, Status> {
        let who = admin(&request, "ServerInfo")?;
        let lanes = TopicKind::ALL
            .iter()
            .map(|kind| KindLane {
                kind: kind.as_str().to_owned(),
                lane: lane_name(self.node.lanes().lane(*kind)).to_owned(),
            })
            .collect();
        self.audit(&who, "ServerInfo", "", json!({})).await?;
        Ok(Response::new(ServerInfoResponse {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            lanes,
            uptime_seconds: self.node.metrics().uptime().as_secs(),
        }))
    }

    async fn list_audit(
        &self,
        request: Request<ListAuditRequest>,
    ) -> Result<Response<ListAuditResponse>, Status> {
        admin(&request, "ListAudit")?;
        let limit = match request.get_ref().limit {
            0 => DEFAULT_AUDIT,
            n if n > MAX_AUDIT => {
                return Err(Error::invalid(format!(
                    "limit is {n}; the most one call returns is {MAX_AUDIT}"
                ))
                .into());
            }
            n => n,
        };
        let entries = admin_audit::newest(&self.store, u64::from(limit))
            .await
            .map_err(|e| Status::from(Error::from(e)))?
            .into_iter()
            .map(|entry| AuditEntryPb {
                at: Some(herald_proto::timestamp(entry.at)),
                actor: entry.actor,
                action: entry.action,
                target: entry.target,
                detail: entry.detail.to_string(),
            })
            .collect();
        Ok(Response::new(ListAuditResponse { entries }))
    }
}
