//! The per-user write rate: how many calls that change stored state one user (a token's `sub`)
//! may make per minute, over every service and every connection together.
//!
//! It wraps each service inside the authentication interceptor, so it sees the principal and
//! the method before the handler runs and refuses without touching the database. Services
//! (role `service`) are not limited: they bound their own work. Signals (`Rooms/Signal`,
//! `Chat/SetTyping`, `Orders/ReportLocation`) have their own rate (`topics.signal_rate`), and
//! `Rooms/Publish` and `Rooms/PublishBatch` are bounded per topic (`topics.publish_rate`, per
//! event) and per socket at the edge.

use std::{
    sync::Arc,
    task::{Context, Poll},
};

use futures_util::future::{Either, Ready, ready};
use herald_proto::{rate::RateTable, v1::CloseCode};
use tonic::{
    Code,
    codegen::{Service, http},
    server::NamedService,
};

use crate::{
    auth::Principal,
    error::with_code,
    metrics::{Limit, Metrics},
};

/// Every method that changes stored state on behalf of its caller. Everything else reads, or
/// has its own limit (see the module's doc); `every_method_is_classified` keeps this list
/// complete as services grow.
pub const WRITES: &[&str] = &[
    "/herald.v1.Admin/DisconnectUser",
    "/herald.v1.Chat/AddMember",
    "/herald.v1.Chat/CreateConversation",
    "/herald.v1.Chat/CreateGroup",
    "/herald.v1.Chat/DeleteMessage",
    "/herald.v1.Chat/EditMessage",
    "/herald.v1.Chat/Leave",
    "/herald.v1.Chat/MarkRead",
    "/herald.v1.Chat/React",
    "/herald.v1.Chat/RemoveMember",
    "/herald.v1.Chat/SendMessage",
    "/herald.v1.Deployments/AppendLogBatch",
    "/herald.v1.Deployments/AppendLogs",
    "/herald.v1.Deployments/Cancel",
    "/herald.v1.Deployments/Create",
    "/herald.v1.Deployments/Finish",
    "/herald.v1.Deployments/Report",
    "/herald.v1.Deployments/Start",
    "/herald.v1.Notifications/Archive",
    "/herald.v1.Notifications/Create",
    "/herald.v1.Notifications/Delete",
    "/herald.v1.Notifications/MarkAllRead",
    "/herald.v1.Notifications/MarkRead",
    "/herald.v1.Notifications/MarkSeen",
    "/herald.v1.Notifications/Snooze",
    "/herald.v1.Notifications/Unsnooze",
    "/herald.v1.Notifications/UpdatePreferences",
    "/herald.v1.Orders/AssignCourier",
    "/herald.v1.Orders/Cancel",
    "/herald.v1.Orders/Place",
    "/herald.v1.Orders/PublishOffer",
    "/herald.v1.Orders/RecordPayment",
    "/herald.v1.Orders/SetBusinessStatus",
    "/herald.v1.Orders/SetCourierStatus",
    "/herald.v1.Orders/UpdateStatus",
    "/herald.v1.Reviews/Approve",
    "/herald.v1.Reviews/Reject",
    "/herald.v1.Reviews/Submit",
];

/// The shared limiter: one bucket per user, `per_minute` refilled over a minute, `burst` at
/// once.
#[derive(Debug)]
pub struct UserWrites {
    per_minute: u32,
    burst: u32,
    /// `None` when the limit is off (`per_minute` 0).
    table: Option<RateTable<String>>,
    metrics: Arc<Metrics>,
}

impl UserWrites {
    pub fn new(per_minute: u32, burst: u32, metrics: Arc<Metrics>) -> Arc<UserWrites> {
        Arc::new(UserWrites {
            per_minute,
            burst,
            table: (per_minute > 0).then(|| RateTable::new(burst, f64::from(per_minute) / 60.0)),
            metrics,
        })
    }

    /// Wraps a service so its write methods count against their caller's rate.
    pub fn limit<S>(self: &Arc<Self>, service: S) -> WriteRate<S> {
        WriteRate {
            inner: service,
            writes: self.clone(),
        }
    }

    /// The refusal for a call to `method` by `who`, or `None` when it may go on.
    fn check(&self, method: &str, who: Option<&Principal>) -> Option<tonic::Status> {
        let table = self.table.as_ref()?;
        // Without a principal the interceptor refused the call already.
        let who = who?;
        if who.is_service() || !WRITES.contains(&method) || table.allow(who.user_id.as_str()) {
            return None;
        }
        self.metrics.limit_hit(Limit::UserWriteRate);
        Some(with_code(
            Code::ResourceExhausted,
            format!(
                "too many writes: at most {} per minute (bursts of {}) per user \
                 (grpc.user_writes_per_minute, grpc.user_write_burst); slow down and retry",
                self.per_minute, self.burst
            ),
            CloseCode::RateLimited,
        ))
    }
}

/// A service whose write methods are rate-limited per user; see [`UserWrites::limit`].
#[derive(Debug, Clone)]
pub struct WriteRate<S> {
    inner: S,
    writes: Arc<UserWrites>,
}

impl<S: NamedService> NamedService for WriteRate<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> Service<http::Request<B>> for WriteRate<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<Ready<Result<S::Response, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let refusal = self.writes.check(
            request.uri().path(),
            request.extensions().get::<Principal>(),
        );
        match refusal {
            Some(status) => Either::Left(ready(Ok(status.into_http()))),
            None => Either::Right(self.inner.call(request)),
        }
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;
    use prost_types::FileDescriptorSet;

    use super::*;

    /// Methods that read, or are limited elsewhere (see the module's doc).
    const NOT_WRITES: &[&str] = &[
        "/herald.v1.Admin/ListAudit",
        "/herald.v1.Admin/ListConnections",
        "/herald.v1.Admin/ServerInfo",
        "/herald.v1.Admin/TopicInfo",
        "/herald.v1.Auth/Whoami",
        "/herald.v1.Chat/ListMembers",
        "/herald.v1.Chat/ListMessages",
        "/herald.v1.Chat/ListMyConversations",
        "/herald.v1.Chat/ListMyGroups",
        "/herald.v1.Chat/SetTyping",
        "/herald.v1.Deployments/Get",
        "/herald.v1.Deployments/List",
        "/herald.v1.Deployments/Watch",
        "/herald.v1.Edge/Describe",
        "/herald.v1.Edge/Follow",
        "/herald.v1.Edge/Verify",
        "/herald.v1.Notifications/Counts",
        "/herald.v1.Notifications/GetPreferences",
        "/herald.v1.Notifications/List",
        "/herald.v1.Orders/Get",
        "/herald.v1.Orders/GetBusinessStatus",
        "/herald.v1.Orders/List",
        "/herald.v1.Orders/ReportLocation",
        "/herald.v1.Orders/Watch",
        "/herald.v1.Reviews/CountPending",
        "/herald.v1.Reviews/ListDecisions",
        "/herald.v1.Reviews/ListPending",
        "/herald.v1.Rooms/History",
        "/herald.v1.Rooms/Presence",
        "/herald.v1.Rooms/Publish",
        "/herald.v1.Rooms/PublishBatch",
        "/herald.v1.Rooms/Signal",
        "/herald.v1.Rooms/Subscribe",
    ];

    #[test]
    fn every_method_is_classified() {
        let set = FileDescriptorSet::decode(herald_proto::FILE_DESCRIPTOR_SET).unwrap();
        let mut methods = Vec::new();
        for file in set.file.iter().filter(|f| f.package() == "herald.v1") {
            for service in &file.service {
                for method in &service.method {
                    methods.push(format!("/herald.v1.{}/{}", service.name(), method.name()));
                }
            }
        }
        for method in &methods {
            let listed = WRITES.contains(&method.as_str()) as u8
                + NOT_WRITES.contains(&method.as_str()) as u8;
            assert_eq!(
                listed, 1,
                "{method} must be in exactly one of WRITES and NOT_WRITES"
            );
        }
        for listed in WRITES.iter().chain(NOT_WRITES) {
            assert!(methods.iter().any(|m| m == listed), "{listed} is no method");
        }
    }

    fn user(id: &str, roles: &[&str]) -> Principal {
        Principal::new(
            id,
            roles.iter().map(|r| (*r).to_owned()).collect(),
            u64::MAX,
        )
    }

    #[tokio::test(start_paused = true)]
    async fn a_user_gets_the_burst_then_the_rate_and_others_are_untouched() {
        let writes = UserWrites::new(60, 3, Arc::new(Metrics::new()));
        let send = "/herald.v1.Chat/SendMessage";
        let alice = user("alice", &[]);
        let refused = (0..5)
            .filter(|_| writes.check(send, Some(&alice)).is_some())
            .count();
        assert_eq!(refused, 2, "a burst of 3 out of 5");
        let status = writes.check(send, Some(&alice)).unwrap();
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert!(status.message().contains("grpc.user_writes_per_minute"));
        assert!(writes.check(send, Some(&user("bob", &[]))).is_none());
        assert!(
            writes
                .check("/herald.v1.Chat/ListMessages", Some(&alice))
                .is_none(),
            "reads are not counted"
        );
        assert!(
            writes
                .check(send, Some(&user("worker", &["service"])))
                .is_none(),
            "services are not counted"
        );
        tokio::time::advance(std::time::Duration::from_secs(1)).await;
        assert!(
            writes.check(send, Some(&alice)).is_none(),
            "one write a second at 60 a minute"
        );
    }

    #[test]
    fn zero_turns_the_limit_off() {
        let writes = UserWrites::new(0, 0, Arc::new(Metrics::new()));
        let alice = user("alice", &[]);
        assert!((0..1000).all(|_| {
            writes
                .check("/herald.v1.Chat/SendMessage", Some(&alice))
                .is_none()
        }));
    }
}
