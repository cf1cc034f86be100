//! The notification inbox (`herald.v1.Notifications`) over real gRPC and the edge's
//! WebSocket: typed notifications pushed whole on `user:<id>`, counts that commit with their
//! change, preferences, do-not-disturb, the mention rate limit, snooze, expiry and paging.
//! Time moves with the app's clock (`TestApp::clock`), never by waiting.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use herald_backend::clock::Clock;
use herald_e2e::{Client, Subscription, TestApp, edge::spawn_edge, spawn_app_with};
use herald_proto::{
    v1::{
        DoNotDisturb, Event, NotificationChange, NotificationContext, NotificationCounts,
        NotificationDeliveryOutcome as Outcome, NotificationPreferences, NotificationPriority,
        NotificationSender, NotificationType, NotificationsArchiveRequest,
        NotificationsCountsRequest, NotificationsCreateRequest, NotificationsCreateResponse,
        NotificationsDeleteRequest, NotificationsListRequest, NotificationsListResponse,
        NotificationsMarkAllReadRequest, NotificationsMarkReadRequest,
        NotificationsMarkSeenRequest, NotificationsSnoozeRequest, NotificationsUnsnoozeRequest,
        NotificationsUpdatePreferencesRequest, StreamPosition, event::Body,
        notifications_client::NotificationsClient,
    },
    wkt::Struct,
};
use sea_orm::{ConnectionTrait, Statement};
use serde_json::json;
use tonic::{Code, Status, transport::Channel};

/// An app whose inbox sweeper runs often, so a moved clock takes effect at once.
async fn app() -> TestApp {
    spawn_app_with(|config| {
        config.notifications.sweep_interval = Duration::from_millis(20);
    })
    .await
}

/// A `herald.v1.Notifications` client acting as one principal.
#[derive(Clone)]
struct Inbox {
    client: NotificationsClient<Channel>,
    who: Client,
}

impl Inbox {
    async fn of(app: &TestApp, user: &str, roles: &[&str]) -> Inbox {
        let who = app.client(user, roles).await;
        let channel = app.endpoint().connect().await.expect("connect");
        Inbox {
            client: NotificationsClient::new(channel),
            who,
        }
    }

    async fn service(app: &TestApp) -> Inbox {
        Inbox::of(app, "notifier", &["service"]).await
    }

    async fn create(
        &self,
        request: NotificationsCreateRequest,
    ) -> Result<NotificationsCreateResponse, Status> {
        let request = self.who.request(request);
        Ok(self.client.clone().create(request).await?.into_inner())
    }

    /// Creates and returns the outcome for each recipient.
    async fn send(&self, request: NotificationsCreateRequest) -> Vec<Outcome> {
        self.create(request)
            .await
            .expect("create")
            .deliveries
            .iter()
            .map(|d| d.outcome())
            .collect()
    }

    async fn list(
        &self,
        request: NotificationsListRequest,
    ) -> Result<NotificationsListResponse, Status> {
        let request = self.who.request(request);
        Ok(self.client.clone().list(request).await?.into_inner())
    }

    async fn counts(&self) -> (NotificationCounts, StreamPosition) {
        let request = self.who.request(NotificationsCountsRequest {});
        let response = self
            .client
            .clone()
            .counts(request)
            .await
            .expect("counts")
            .into_inner();
        (
            response.counts.expect("counts"),
            response.position.expect("position"),
        )
    }

    async fn mark_read(&self, ids: &[String]) -> Result<u32, Status> {
        let request = self
            .who
            .request(NotificationsMarkReadRequest { ids: ids.to_vec() });
        Ok(self
            .client
            .clone()
            .mark_read(request)
            .await?
            .into_inner()
            .changed)
    }

    async fn mark_seen(&self) -> u32 {
        let request = self.who.request(NotificationsMarkSeenRequest {});
        let response = self.client.clone().mark_seen(request).await;
        response.expect("mark seen").into_inner().changed
    }

    async fn mark_all_read(&self, kind: NotificationType) -> u32 {
        let request = self.who.request(NotificationsMarkAllReadRequest {
            r#type: kind.into(),
            conversation_id: String::new(),
        });
        let response = self.client.clone().mark_all_read(request).await;
        response.expect("mark all read").into_inner().changed
    }

    async fn archive(&self, ids: &[String]) -> u32 {
        let request = self
            .who
            .request(NotificationsArchiveRequest { ids: ids.to_vec() });
        let response = self.client.clone().archive(request).await;
        response.expect("archive").into_inner().changed
    }

    async fn delete(&self, ids: &[String]) -> u32 {
        let request = self
            .who
            .request(NotificationsDeleteRequest { ids: ids.to_vec() });
        let response = self.client.clone().delete(request).await;
        response.expect("delete").into_inner().changed
    }

    async fn snooze(&self, id: &str, until: SystemTime) -> Result<(), Status> {
        let request = self.who.request(NotificationsSnoozeRequest {
            id: id.to_owned(),
            until: Some(herald_proto::timestamp(until)),
        });
        self.client.clone().snooze(request).await?;
        Ok(())
    }

    async fn unsnooze(&self, id: &str) -> Result<(), Status> {
        let request = self
            .who
            .request(NotificationsUnsnoozeRequest { id: id.to_owned() });
        self.client.clone().unsnooze(request).await?;
        Ok(())
    }

    async fn set_preferences(&self, preferences: NotificationPreferences) -> Result<(), Status> {
        let request = self.who.request(NotificationsUpdatePreferencesRequest {
            preferences: Some(preferences),
        });
        self.client.clone().update_preferences(request).await?;
        Ok(())
    }

    async fn ids(&self) -> Vec<String> {
        let page = self.list(NotificationsListRequest::default()).await;
        let page = page.expect("list");
        page.notifications.into_iter().map(|n| n.id).collect()
    }
}

fn note(users: &[&str], kind: NotificationType, title: &str) -> NotificationsCreateRequest {
    NotificationsCreateRequest {
        user_ids: users.iter().map(|u| (*u).to_owned()).collect(),
        r#type: kind.into(),
        title: title.to_owned(),
        ..NotificationsCreateRequest::default()
    }
}

fn mention(users: &[&str], sender: &str) -> NotificationsCreateRequest {
    NotificationsCreateRequest {
        sender: Some(NotificationSender {
            id: sender.to_owned(),
            display_name: sender.to_owned(),
            avatar_url: String::new(),
        }),
        ..note(users, NotificationType::UserMentioned, "You were mentioned")
    }
}

fn counts_in(event: &Event) -> Option<NotificationCounts> {
    match &event.body {
        Some(Body::NotificationCounts(counts)) => Some(counts.clone()),
        _ => None,
    }
}

/// Reads events up to the next counts frame; returns the events before it and the counts.
async fn until_counts(sub: &mut Subscription) -> (Vec<Event>, NotificationCounts) {
    let mut before = vec![];
    loop {
        let event = sub.next_event().await;
        if let Some(counts) = counts_in(&event) {
            assert_eq!(event.r#type, "notification.counts");
            return (before, counts);
        }
        before.push(event);
    }
}

fn expect_code(result: Result<impl std::fmt::Debug, Status>, code: Code, fragment: &str) {
    let status = result.expect_err("the call is refused");
    assert_eq!(status.code(), code, "{status:?}");
    assert!(
        status.message().contains(fragment),
        "`{}` should mention `{fragment}`",
        status.message()
    );
}

#[tokio::test]
async fn a_created_notification_is_pushed_whole_and_its_counts_commit_with_it() {
    let app = app().await;
    let service = Inbox::service(&app).await;
    let alice = Inbox::of(&app, "alice", &[]).await;
    let (_, position) = alice.counts().await;
    let mut sub = alice.who.resume("user:alice", position).await;

    let data: Struct = serde_json::from_value(json!({ "thread": 7 })).unwrap();
    let response = service
        .create(NotificationsCreateRequest {
            content: "See <b>the</b> thread".into(),
            data: Some(data.clone()),
            context: Some(NotificationContext {
                conversation_id: "c1".into(),
                message_id: "m9".into(),
                call_id: String::new(),
            }),
            message_preview: "a b c".into(),
            ..mention(&["alice"], "ada")
        })
        .await
        .unwrap();
    let delivery = &response.deliveries[0];
    assert_eq!(delivery.outcome(), Outcome::Created);

    let (before, counts) = until_counts(&mut sub).await;
    assert_eq!(before.len(), 1);
    let created = &before[0];
    assert_eq!(created.r#type, "notification.created");
    assert_eq!(created.publisher, "notifier");
    let Some(Body::NotificationCreated(body)) = &created.body else {
        panic!("a typed body: {created:?}");
    };
    assert!(!body.quiet);
    let notification = body.notification.clone().unwrap();
    assert_eq!(notification.id, delivery.notification_id);
    assert_eq!(notification.user_id, "alice");
    assert_eq!(notification.r#type(), NotificationType::UserMentioned);
    assert_eq!(
        notification.priority(),
        NotificationPriority::High,
        "the type's default priority"
    );
    assert_eq!(notification.content, "See the thread");
    assert_eq!(notification.data, Some(data));
    assert_eq!(notification.sender.unwrap().id, "ada");
    assert_eq!(notification.context.unwrap().message_id, "m9");
    assert_eq!(notification.message_preview, "a b c");
    assert!(!notification.seen && !notification.read && !notification.archived);
    assert_eq!((counts.total, counts.unseen, counts.unread), (1, 1, 1));
    assert_eq!(counts.unread_by_type.len(), 1);
    assert_eq!(
        counts.unread_by_type[0].r#type(),
        NotificationType::UserMentioned
    );
    assert_eq!(
        counts.unread_by_priority[0].priority(),
        NotificationPriority::High
    );

    let (now, position) = alice.counts().await;
    assert_eq!(now, counts, "the pushed badge equals the database");
    assert_eq!(position.offset, created.offset + 1);
    let page = alice
        .list(NotificationsListRequest::default())
        .await
        .unwrap();
    assert_eq!(page.notifications, vec![body.notification.clone().unwrap()]);
    assert_eq!(page.position, Some(position));
}

#[tokio::test]
async fn only_services_create_notifications_and_users_read_only_their_own_inbox() {
    let app = app().await;
    let alice = Inbox::of(&app, "alice", &["admin"]).await;
    expect_code(
        alice
            .create(note(&["bob"], NotificationType::System, "hi"))
            .await,
        Code::PermissionDenied,
        "only services (token role `service`) create notifications",
    );
    let refused = alice.who.try_subscribe("user:bob", None).await;
    expect_code(refused.map(|_| ()), Code::PermissionDenied, "user:bob");
}

#[tokio::test]
async fn every_limit_is_refused_with_the_field_and_the_limit() {
    let app = app().await;
    let service = Inbox::service(&app).await;
    let base = || note(&["alice"], NotificationType::System, "ok");
    let cases: Vec<(NotificationsCreateRequest, &str)> = vec![
        (
            NotificationsCreateRequest {
                title: "t".repeat(201),
                ..base()
            },
            "title is 201 characters long; the limit is 200",
        ),
        (
            NotificationsCreateRequest {
                content: "c".repeat(1001),
                ..base()
            },
            "content is 1001 characters long; the limit is 1000",
        ),
        (
            NotificationsCreateRequest {
                data: Some(
                    serde_json::from_value(json!({ "blob": "x".repeat(10 * 1024) })).unwrap(),
                ),
                ..base()
            },
            "the limit is 10240",
        ),
        (
            NotificationsCreateRequest {
                title: "bell\u{7}".into(),
                ..base()
            },
            "title contains the control character U+0007",
        ),
        (
            NotificationsCreateRequest {
                title: "<script>alert(1)</script>".into(),
                ..base()
            },
            "title is empty once markup is removed",
        ),
        (
            NotificationsCreateRequest {
                r#type: 0,
                ..base()
            },
            "type is required",
        ),
        (
            NotificationsCreateRequest {
                r#type: 99,
                ..base()
            },
            "type 99 is not a NotificationType",
        ),
        (
            NotificationsCreateRequest {
                user_ids: vec![],
                ..base()
            },
            "user_ids is required",
        ),
        (
            NotificationsCreateRequest {
                user_ids: vec!["a".into(), "a".into()],
                ..base()
            },
            "user_ids contains `a` more than once",
        ),
        (
            NotificationsCreateRequest {
                user_ids: (0..10_001).map(|n| format!("u{n}")).collect(),
                ..base()
            },
            "user_ids has 10001 entries; the limit is 10000",
        ),
        (
            NotificationsCreateRequest {
                expire_time: Some(herald_proto::timestamp(app.clock.now())),
                ..base()
            },
            "expire_time must be in the future",
        ),
        (
            NotificationsCreateRequest {
                sender: Some(NotificationSender {
                    id: "ada".into(),
                    display_name: "Ada".into(),
                    avatar_url: "javascript:alert(1)".into(),
                }),
                ..base()
            },
            "sender.avatar_url must be an http:// or https:// URL",
        ),
    ];
    for (request, message) in cases {
        expect_code(
            service.create(request).await,
            Code::InvalidArgument,
            message,
        );
    }
    let alice = Inbox::of(&app, "alice", &[]).await;
    assert!(alice.ids().await.is_empty(), "nothing was stored");
    let ids: Vec<String> = (0..101).map(|n| n.to_string()).collect();
    expect_code(
        alice.mark_read(&ids).await,
        Code::InvalidArgument,
        "ids has 101 entries; the limit is 100",
    );
    expect_code(
        alice
            .list(NotificationsListRequest {
                limit: 51,
                ..NotificationsListRequest::default()
            })
            .await,
        Code::InvalidArgument,
        "limit is 51; a page holds at most 50",
    );
}

#[tokio::test]
async fn markup_is_removed_before_anything_is_stored() {
    let app = app().await;
    let service = Inbox::service(&app).await;
    let id = service
        .create(NotificationsCreateRequest {
            title: r#"<img src=x onerror="alert(1)">Hi &amp; <b onclick=x>welcome</b>"#.into(),
            content: "&lt;script&gt;steal()&lt;/script&gt;<scr<script>x</script>ipt>ok".into(),
            message_preview: "<a href=\"javascript:x\">click</a> here".into(),
            ..note(&["alice"], NotificationType::System, "")
        })
        .await
        .unwrap()
        .deliveries[0]
        .notification_id
        .clone();
    let row = app
        .store
        .db()
        .query_one_raw(Statement::from_sql_and_values(
            app.store.backend(),
            match app.store.backend() {
                sea_orm::DbBackend::Postgres => {
                    "SELECT title, content, message_preview FROM notification WHERE id = $1"
                }
                _ => "SELECT title, content, message_preview FROM notification WHERE id = ?",
            },
            [id.into()],
        ))
        .await
        .unwrap()
        .unwrap();
    let title: String = row.try_get("", "title").unwrap();
    let content: String = row.try_get("", "content").unwrap();
    let preview: String = row.try_get("", "message_preview").unwrap();
    assert_eq!(title, "Hi & welcome");
    assert!(
        !content.contains('<') && !content.contains("steal"),
        "{content}"
    );
    assert!(content.ends_with("ok"), "{content}");
    assert_eq!(preview, "click here");
}

#[tokio::test]
async fn six_mentions_in_a_minute_create_five_and_the_pair_is_allowed_again_after_the_window() {
    let app = app().await;
    let service = Inbox::service(&app).await;
    let mut outcomes = vec![];
    for _ in 0..6 {
        outcomes.extend(service.send(mention(&["alice"], "spammer")).await);
        app.clock.advance(Duration::from_secs(5));
    }
    assert_eq!(outcomes[..5], [Outcome::Created; 5]);
    assert_eq!(outcomes[5], Outcome::RateLimited);

    assert_eq!(
        service.send(mention(&["alice", "bob"], "ada")).await,
        [Outcome::Created, Outcome::Created],
        "another sender to the same recipient is its own pair"
    );
    assert_eq!(
        service.send(mention(&["bob"], "spammer")).await,
        [Outcome::Created],
        "the same sender to another recipient is its own pair"
    );
    assert_eq!(
        service
            .send(note(
                &["alice"],
                NotificationType::NewMessage,
                "not a mention"
            ))
            .await,
        [Outcome::Created],
        "only mentions are limited"
    );
    let alice = Inbox::of(&app, "alice", &[]).await;
    assert_eq!(
        alice.ids().await.len(),
        5 + 1 + 1,
        "the limited one was not stored"
    );

    app.clock.advance(Duration::from_secs(31));
    assert_eq!(
        service.send(mention(&["alice"], "spammer")).await,
        [Outcome::Created],
        "a minute after the first mention the window has room again"
    );
    assert_eq!(
        service.send(mention(&["alice"], "spammer")).await,
        [Outcome::RateLimited],
        "the other four are still inside the window"
    );
}

#[tokio::test]
async fn a_type_turned_off_is_suppressed_and_system_notifications_cannot_be_turned_off() {
    let app = app().await;
    let service = Inbox::service(&app).await;
    let alice = Inbox::of(&app, "alice", &[]).await;
    alice
        .set_preferences(NotificationPreferences {
            muted_types: vec![NotificationType::MessageReaction.into()],
            do_not_disturb: None,
        })
        .await
        .unwrap();
    assert_eq!(
        service
            .send(note(
                &["alice", "bob"],
                NotificationType::MessageReaction,
                "👍"
            ))
            .await,
        [Outcome::SuppressedByPreference, Outcome::Created]
    );
    assert!(alice.ids().await.is_empty());
    expect_code(
        alice
            .set_preferences(NotificationPreferences {
                muted_types: vec![NotificationType::System.into()],
                do_not_disturb: None,
            })
            .await,
        Code::InvalidArgument,
        "system notifications cannot be turned off",
    );
    expect_code(
        alice
            .set_preferences(NotificationPreferences {
                muted_types: vec![],
                do_not_disturb: Some(DoNotDisturb {
                    start: "22:00".into(),
                    end: "07:00".into(),
                    time_zone: "Europe/Atlantis".into(),
                }),
            })
            .await,
        Code::InvalidArgument,
        "`Europe/Atlantis` is not an IANA time zone",
    );
}

/// A window around the current hour in `zone` (±2 h), as local `HH:00` times.
fn window_around_now(zone_offset_hours: i64) -> (String, String) {
    let unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let hour = ((unix / 3600) + zone_offset_hours).rem_euclid(24);
    let at = |h: i64| format!("{:02}:00", h.rem_euclid(24));
    (at(hour - 2), at(hour + 2))
}

#[tokio::test]
async fn during_do_not_disturb_notifications_are_stored_and_counted_but_pushed_quietly_unless_urgent()
 {
    let app = app().await;
    let service = Inbox::service(&app).await;
    // Asia/Kolkata is UTC+5:30 all year; a ±2 h window around its current hour contains now.
    let (start, end) = window_around_now(5);
    let dreamer = Inbox::of(&app, "dreamer", &[]).await;
    dreamer
        .set_preferences(NotificationPreferences {
            muted_types: vec![],
            do_not_disturb: Some(DoNotDisturb {
                start: start.clone(),
                end: end.clone(),
                time_zone: "Asia/Kolkata".into(),
            }),
        })
        .await
        .unwrap();
    // The same local window in a zone 12 hours away does not contain now.
    let awake = Inbox::of(&app, "awake", &[]).await;
    awake
        .set_preferences(NotificationPreferences {
            muted_types: vec![],
            do_not_disturb: Some(DoNotDisturb {
                start,
                end,
                time_zone: "America/Chicago".into(),
            }),
        })
        .await
        .unwrap();
    let mut sub = dreamer.who.subscribe("user:dreamer").await;

    let normal = service
        .create(note(
            &["dreamer", "awake"],
            NotificationType::MissedCall,
            "Missed call",
        ))
        .await
        .unwrap();
    let quiet: Vec<bool> = normal.deliveries.iter().map(|d| d.quiet).collect();
    assert_eq!(quiet, [true, false]);
    let (events, counts) = until_counts(&mut sub).await;
    let Some(Body::NotificationCreated(body)) = &events[0].body else {
        panic!("created");
    };
    assert!(body.quiet, "pushed quietly");
    assert_eq!(counts.unread, 1, "and counted");

    let urgent = service
        .create(NotificationsCreateRequest {
            priority: NotificationPriority::Urgent.into(),
            ..note(&["dreamer"], NotificationType::System, "Account locked")
        })
        .await
        .unwrap();
    assert!(!urgent.deliveries[0].quiet);
    let (events, counts) = until_counts(&mut sub).await;
    let Some(Body::NotificationCreated(body)) = &events[0].body else {
        panic!("created");
    };
    assert!(!body.quiet, "urgent is never quiet");
    assert_eq!(counts.unread, 2);
}

#[tokio::test]
async fn a_change_on_one_session_appears_on_the_others_over_grpc_and_websocket() {
    let app = app().await;
    let edge = spawn_edge(&app).await;
    let service = Inbox::service(&app).await;
    let phone = Inbox::of(&app, "alice", &[]).await;
    let mut phone_sub = phone.who.subscribe("user:alice").await;
    let mut browser = edge.connect_as(&app.token("alice", &[])).await;
    let reply = browser
        .request("subscribe", json!({ "topic": "user:alice" }))
        .await;
    assert!(reply.get("result").is_some(), "{reply}");

    let created = service
        .create(note(&["alice"], NotificationType::NewMessage, "Hello"))
        .await
        .unwrap();
    let id = created.deliveries[0].notification_id.clone();
    let push = browser.next_event().await;
    assert_eq!(push["event"]["type"], "notification.created");
    assert_eq!(
        push["event"]["notificationCreated"]["notification"]["title"], "Hello",
        "the typed body reaches the browser as JSON: {push}"
    );
    assert_eq!(
        push["event"]["notificationCreated"]["notification"]["type"],
        "NOTIFICATION_TYPE_NEW_MESSAGE"
    );
    let push = browser.next_event().await;
    assert_eq!(push["event"]["notificationCounts"]["unread"], 1, "{push}");
    until_counts(&mut phone_sub).await;

    // The browser reads it; the phone sees the change and the new badge.
    let reply = browser
        .request(
            "call",
            json!({ "rpc": "herald.v1.Notifications/MarkRead", "request": { "ids": [id] } }),
        )
        .await;
    assert_eq!(reply["result"]["changed"], 1, "{reply}");
    let (events, counts) = until_counts(&mut phone_sub).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].r#type, "notification.read");
    let Some(Body::NotificationsChanged(change)) = &events[0].body else {
        panic!("a change body");
    };
    assert_eq!(change.change(), NotificationChange::Read);
    assert_eq!(change.ids, std::slice::from_ref(&id));
    assert_eq!((counts.unread, counts.unseen, counts.total), (0, 0, 1));

    // The phone archives it; the browser sees it.
    assert_eq!(phone.archive(std::slice::from_ref(&id)).await, 1);
    let push = browser.next_event().await;
    assert_eq!(push["event"]["type"], "notification.read");
    let push = browser.next_event().await;
    assert_eq!(push["event"]["type"], "notification.counts");
    let push = browser.next_event().await;
    assert_eq!(push["event"]["type"], "notification.archived");
    assert_eq!(
        push["event"]["notificationsChanged"]["change"],
        "NOTIFICATION_CHANGE_ARCHIVED"
    );
    let push = browser.next_event().await;
    assert_eq!(push["event"]["type"], "notification.counts");
    assert!(
        push["event"]["notificationCounts"]
            .get("total")
            .is_none_or(|t| t == 0),
        "an empty badge: {push}"
    );
}

#[tokio::test]
async fn mark_seen_and_mark_all_read_by_type_change_only_what_they_name() {
    let app = app().await;
    let service = Inbox::service(&app).await;
    let alice = Inbox::of(&app, "alice", &[]).await;
    for kind in [
        NotificationType::NewMessage,
        NotificationType::NewMessage,
        NotificationType::MissedCall,
    ] {
        service.send(note(&["alice"], kind, "x")).await;
    }
    let (_, position) = alice.counts().await;
    let mut sub = alice.who.resume("user:alice", position).await;

    assert_eq!(alice.mark_seen().await, 3);
    let (events, counts) = until_counts(&mut sub).await;
    let Some(Body::NotificationsChanged(change)) = &events[0].body else {
        panic!("a change");
    };
    assert_eq!(change.change(), NotificationChange::Seen);
    assert!(change.all);
    assert_eq!((counts.unseen, counts.unread), (0, 3));
    assert_eq!(alice.mark_seen().await, 0, "nothing left to see");

    assert_eq!(alice.mark_all_read(NotificationType::NewMessage).await, 2);
    let (events, counts) = until_counts(&mut sub).await;
    let Some(Body::NotificationsChanged(change)) = &events[0].body else {
        panic!("a change");
    };
    assert!(change.all);
    assert_eq!(change.r#type(), NotificationType::NewMessage);
    assert_eq!(counts.unread, 1);
    assert_eq!(
        counts.unread_by_type[0].r#type(),
        NotificationType::MissedCall,
        "the filter was honoured"
    );
    assert_eq!(alice.mark_all_read(NotificationType::NewMessage).await, 0);
    assert_eq!(alice.mark_all_read(NotificationType::Unspecified).await, 1);
    let (_, counts) = until_counts(&mut sub).await;
    assert_eq!(counts.unread, 0);
    sub.assert_quiet(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn a_snoozed_notification_leaves_the_counts_and_comes_back_as_new_when_its_time_comes() {
    let app = app().await;
    let service = Inbox::service(&app).await;
    let alice = Inbox::of(&app, "alice", &[]).await;
    service
        .send(note(&["alice"], NotificationType::ContactRequest, "Bob"))
        .await;
    let id = alice.ids().await.remove(0);
    alice.mark_read(std::slice::from_ref(&id)).await.unwrap();
    let (_, position) = alice.counts().await;
    let mut sub = alice.who.resume("user:alice", position).await;

    expect_code(
        alice
            .snooze(&id, app.clock.now() + Duration::from_secs(30))
            .await,
        Code::InvalidArgument,
        "until must be at least 1 minute ahead",
    );
    expect_code(
        alice
            .snooze("nope", app.clock.now() + Duration::from_secs(600))
            .await,
        Code::NotFound,
        "notification `nope` is not in your inbox",
    );
    alice
        .snooze(&id, app.clock.now() + Duration::from_secs(600))
        .await
        .unwrap();
    let (events, counts) = until_counts(&mut sub).await;
    assert_eq!(events[0].r#type, "notification.snoozed");
    assert_eq!(counts.total, 0, "a snoozed notification leaves the counts");
    let page = alice
        .list(NotificationsListRequest {
            snoozed: true,
            ..NotificationsListRequest::default()
        })
        .await
        .unwrap();
    assert_eq!(page.notifications.len(), 1);
    assert!(page.notifications[0].snoozed_until.is_some());
    assert!(alice.ids().await.is_empty(), "not in the inbox meanwhile");

    app.clock.advance(Duration::from_secs(601));
    let (events, counts) = until_counts(&mut sub).await;
    assert_eq!(events[0].r#type, "notification.unsnoozed");
    assert_eq!(events[0].publisher, "herald", "the sweeper brought it back");
    assert_eq!(
        (counts.total, counts.unseen, counts.unread),
        (1, 1, 1),
        "back as new"
    );

    alice
        .snooze(&id, app.clock.now() + Duration::from_secs(600))
        .await
        .unwrap();
    until_counts(&mut sub).await;
    alice.unsnooze(&id).await.unwrap();
    let (events, counts) = until_counts(&mut sub).await;
    assert_eq!(events[0].r#type, "notification.unsnoozed");
    assert_eq!(counts.unread, 1);

    assert_eq!(alice.archive(std::slice::from_ref(&id)).await, 1);
    until_counts(&mut sub).await;
    expect_code(
        alice
            .snooze(&id, app.clock.now() + Duration::from_secs(600))
            .await,
        Code::FailedPrecondition,
        "an archived notification cannot be snoozed",
    );
    assert_eq!(alice.delete(std::slice::from_ref(&id)).await, 1);
    let (events, counts) = until_counts(&mut sub).await;
    assert_eq!(events[0].r#type, "notification.deleted");
    assert_eq!(counts, NotificationCounts::default());
}

#[tokio::test]
async fn expired_notifications_vanish_and_their_removal_is_pushed() {
    let app = app().await;
    let service = Inbox::service(&app).await;
    let alice = Inbox::of(&app, "alice", &[]).await;
    let expiring = service
        .create(NotificationsCreateRequest {
            expire_time: Some(herald_proto::timestamp(
                app.clock.now() + Duration::from_secs(120),
            )),
            ..note(&["alice", "bob"], NotificationType::System, "Code 123456")
        })
        .await
        .unwrap();
    service
        .send(note(&["alice"], NotificationType::System, "Welcome"))
        .await;
    let (_, position) = alice.counts().await;
    let mut sub = alice.who.resume("user:alice", position).await;

    app.clock.advance(Duration::from_secs(121));
    let (events, counts) = until_counts(&mut sub).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].r#type, "notification.expired");
    let Some(Body::NotificationsChanged(change)) = &events[0].body else {
        panic!("a change");
    };
    assert_eq!(change.change(), NotificationChange::Expired);
    assert_eq!(change.ids, [expiring.deliveries[0].notification_id.clone()]);
    assert_eq!(counts.total, 1, "the other notification stays");
    assert_eq!(alice.ids().await.len(), 1);
    let bob = Inbox::of(&app, "bob", &[]).await;
    assert!(bob.ids().await.is_empty(), "every recipient's copy expires");
}

#[tokio::test]
async fn pages_have_no_duplicates_or_skips_while_new_notifications_arrive_between_them() {
    let app = app().await;
    let service = Inbox::service(&app).await;
    let alice = Inbox::of(&app, "alice", &[]).await;
    for n in 0..23 {
        service
            .send(note(
                &["alice"],
                NotificationType::NewMessage,
                &format!("old {n}"),
            ))
            .await;
    }
    let expected = {
        let page = alice
            .list(NotificationsListRequest {
                limit: 50,
                ..NotificationsListRequest::default()
            })
            .await
            .unwrap();
        page.notifications
            .into_iter()
            .map(|n| n.id)
            .collect::<Vec<_>>()
    };
    assert_eq!(expected.len(), 23);

    let mut seen = vec![];
    let mut cursor = String::new();
    let mut arrivals = 0;
    loop {
        let page = alice
            .list(NotificationsListRequest {
                limit: 5,
                cursor: cursor.clone(),
                ..NotificationsListRequest::default()
            })
            .await
            .unwrap();
        seen.extend(page.notifications.iter().map(|n| n.id.clone()));
        // New notifications arrive between every two pages.
        for _ in 0..2 {
            arrivals += 1;
            service
                .send(note(
                    &["alice"],
                    NotificationType::NewMessage,
                    &format!("new {arrivals}"),
                ))
                .await;
        }
        if page.next_cursor.is_empty() {
            break;
        }
        cursor = page.next_cursor;
    }
    assert_eq!(seen, expected, "every old notification once, newest first");
    let unique: BTreeSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len());
    expect_code(
        alice
            .list(NotificationsListRequest {
                cursor: "not-a-cursor".into(),
                ..NotificationsListRequest::default()
            })
            .await,
        Code::InvalidArgument,
        "cursor is not a `next_cursor`",
    );
}

#[tokio::test]
async fn a_session_resumes_the_inbox_after_a_restart_without_reloading_and_typed_bodies_survive() {
    let app = app().await;
    let service = Inbox::service(&app).await;
    let alice = Inbox::of(&app, "alice", &[]).await;
    service
        .send(note(&["alice"], NotificationType::NewMessage, "before"))
        .await;
    let (_, position) = alice.counts().await;
    let mut sub = alice.who.resume("user:alice", position.clone()).await;
    service
        .send(note(&["alice"], NotificationType::MissedCall, "missed"))
        .await;
    let (events, _) = until_counts(&mut sub).await;
    let created_offset = events[0].offset;
    drop(sub);

    let app = app.restart().await;
    let service = Inbox::service(&app).await;
    let alice = Inbox::of(&app, "alice", &[]).await;
    service
        .send(note(&["alice"], NotificationType::System, "after"))
        .await;
    let mut sub = alice.who.resume("user:alice", position).await;
    assert!(
        sub.subscribed.recovered,
        "everything since the position is replayed: no reload"
    );
    let (events, counts) = until_counts(&mut sub).await;
    assert_eq!(events[0].offset, created_offset);
    let Some(Body::NotificationCreated(body)) = &events[0].body else {
        panic!(
            "the typed body was read back from the database: {:?}",
            events[0]
        );
    };
    assert_eq!(body.notification.as_ref().unwrap().title, "missed");
    assert_eq!(counts.total, 2);
    let (events, counts) = until_counts(&mut sub).await;
    let Some(Body::NotificationCreated(body)) = &events[0].body else {
        panic!("created after the restart");
    };
    assert_eq!(body.notification.as_ref().unwrap().title, "after");
    assert_eq!(counts.total, 3);
    assert_eq!(alice.counts().await.0, counts);
}

#[tokio::test]
async fn a_batch_of_the_most_recipients_reaches_each_in_request_order_and_a_bad_one_stores_nothing()
{
    let app = app().await;
    let service = Inbox::service(&app).await;
    // 10,000 recipients: 20,000 events on 10,000 topics in one transaction.
    let users: Vec<String> = (0..10_000).map(|n| format!("member-{n}")).collect();
    let refs: Vec<&str> = users.iter().map(String::as_str).collect();
    let response = service
        .create(note(
            &refs,
            NotificationType::NewConversationGroup,
            "Welcome",
        ))
        .await
        .unwrap();
    let order: Vec<&str> = response
        .deliveries
        .iter()
        .map(|d| d.user_id.as_str())
        .collect();
    assert_eq!(order, refs);
    assert!(
        response
            .deliveries
            .iter()
            .all(|d| d.outcome() == Outcome::Created)
    );
    let last = Inbox::of(&app, "member-9999", &[]).await;
    assert_eq!(last.counts().await.0.unread, 1);
    assert_eq!(
        last.counts().await.1.offset,
        2,
        "created, then its counts, on every recipient's inbox"
    );

    let mut bad = refs.clone();
    bad[0] = "not valid";
    expect_code(
        service
            .create(note(&bad, NotificationType::NewConversationGroup, "Again"))
            .await,
        Code::InvalidArgument,
        "user_ids may only contain printable ASCII characters without spaces",
    );
    assert_eq!(
        last.counts().await.0.unread,
        1,
        "the batch is all or nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_of_one_inbox_end_with_a_pushed_badge_equal_to_the_database() {
    let app = app().await;
    let service = Inbox::service(&app).await;
    let alice = Inbox::of(&app, "alice", &[]).await;
    for n in 0..24 {
        service
            .send(note(&["alice"], KINDS[n % KINDS.len()], "seed"))
            .await;
    }
    let ids = alice
        .list(NotificationsListRequest {
            limit: 50,
            ..NotificationsListRequest::default()
        })
        .await
        .unwrap()
        .notifications
        .into_iter()
        .map(|n| n.id)
        .collect::<Vec<_>>();
    let mut sub = alice.who.subscribe("user:alice").await;

    let mut tasks = tokio::task::JoinSet::new();
    for kind in KINDS {
        let service = service.clone();
        tasks.spawn(async move {
            for _ in 0..5 {
                service.send(note(&["alice"], kind, "concurrent")).await;
            }
        });
    }
    for chunk in ids.chunks(6).map(<[String]>::to_vec) {
        let alice = alice.clone();
        tasks.spawn(async move {
            for id in &chunk[..3] {
                alice.mark_read(std::slice::from_ref(id)).await.unwrap();
            }
            alice.archive(&chunk[3..5]).await;
            alice.delete(&chunk[5..]).await;
        });
    }
    {
        let alice = alice.clone();
        tasks.spawn(async move {
            alice.mark_seen().await;
            alice.mark_all_read(NotificationType::MissedCall).await;
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }

    let (answered, position) = alice.counts().await;
    let mut pushed = None;
    let mut last = sub.position().offset;
    while last < position.offset {
        let event = sub.next_event().await;
        assert_eq!(event.offset, last + 1, "no gap, no duplicate");
        last = event.offset;
        pushed = counts_in(&event).or(pushed);
    }
    assert_eq!(answered, counts_from_rows(&app, "alice").await);
    assert_eq!(
        pushed,
        Some(answered),
        "the last pushed badge is the database's"
    );
}

/// A token signed with the test secret, as `herald serve` processes verify them.
fn process_token(sub: &str, roles: &[&str]) -> String {
    use herald_backend::auth::dev_key::{TokenClaims, sign_hs256};
    sign_hs256(
        herald_e2e::SECRET,
        &TokenClaims::new(sub, roles, Duration::from_secs(3600)),
    )
    .unwrap()
}

async fn notify_process(grpc_url: String, title: &str) {
    let endpoint = tonic::transport::Endpoint::from_shared(grpc_url).unwrap();
    let service = Client::connect(endpoint.clone(), process_token("notifier", &["service"])).await;
    let mut client = NotificationsClient::new(endpoint.connect().await.unwrap());
    let response = client
        .create(service.request(note(&["alice"], NotificationType::NewMessage, title)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.deliveries[0].outcome(), Outcome::Created);
}

#[tokio::test]
async fn a_browser_session_reconnecting_after_a_herald_serve_restart_resumes_its_inbox_without_reloading()
 {
    use herald_e2e::{edge::WsClient, process::spawn_serve_process};
    let data = tempfile::tempdir().unwrap();
    let herald = spawn_serve_process(data.path()).await;
    let connect = |url: String| async move {
        let mut socket = WsClient::connect(&url).await;
        let reply = socket
            .request("auth", json!({ "token": process_token("alice", &[]) }))
            .await;
        assert!(reply.get("result").is_some(), "{reply}");
        socket
    };
    let mut socket = connect(herald.ws_url()).await;
    let reply = socket
        .request("subscribe", json!({ "topic": "user:alice" }))
        .await;
    assert!(reply.get("result").is_some(), "{reply}");
    notify_process(herald.grpc_url(), "before the restart").await;
    let created = socket.next_event().await;
    assert_eq!(created["event"]["type"], "notification.created");
    let counts = socket.next_event().await;
    assert_eq!(counts["event"]["type"], "notification.counts");
    let last = json!({ "offset": counts["offset"], "epoch": counts["epoch"] });

    herald.kill9().await;
    socket.closed().await;
    let herald = spawn_serve_process(data.path()).await;
    notify_process(herald.grpc_url(), "while the page was away").await;

    let mut socket = connect(herald.ws_url()).await;
    let reply = socket
        .request("subscribe", json!({ "topic": "user:alice", "since": last }))
        .await;
    assert_eq!(
        reply["result"]["recovered"], true,
        "the inbox resumes from where the page was, no reload: {reply}"
    );
    let missed = socket.next_event().await;
    assert_eq!(
        missed["event"]["notificationCreated"]["notification"]["title"], "while the page was away",
        "{missed}"
    );
    let offset =
        |push: &serde_json::Value| push["offset"].as_str().unwrap().parse::<u64>().unwrap();
    assert_eq!(
        offset(&missed),
        offset(&counts) + 1,
        "nothing missed, nothing twice"
    );
    let badge = socket.next_event().await;
    assert_eq!(badge["event"]["notificationCounts"]["unread"], 2, "{badge}");
    herald.kill9().await;
}

#[tokio::test]
async fn the_inbox_demo_runs_against_a_herald_serve_and_ends_with_the_badge_equal_to_the_database()
{
    use herald_e2e::process::{herald_binary, spawn_serve_process};
    let data = tempfile::tempdir().unwrap();
    let herald = spawn_serve_process(data.path()).await;
    let output = tokio::process::Command::new(herald_binary())
        .args(["demo", "inbox", "--pace", "0s", "--server"])
        .arg(herald.grpc_url())
        .env("HERALD_AUTH_HS256_SECRET", herald_e2e::SECRET)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for expected in [
        "notification.created",
        "“Welcome & thanks”",
        "rate_limited",
        "suppressed_by_preference",
        "quietly (do-not-disturb)",
        "notification.unsnoozed",
        "equal to the last badge pushed",
    ] {
        assert!(
            stdout.contains(expected),
            "`{expected}` missing from:\n{stdout}"
        );
    }
    herald.kill9().await;
}

// ---------------------------------------------------------------------------------------
// Counts never drift: random operation sequences

#[derive(Debug, Clone)]
enum Op {
    Create {
        kind: usize,
        priority: usize,
        expiring: bool,
    },
    Seen,
    Read(usize),
    ReadAll(usize),
    Archive(usize),
    Snooze(usize),
    Unsnooze(usize),
    Delete(usize),
    Expire,
}

fn op() -> impl proptest::strategy::Strategy<Value = Op> {
    use proptest::prelude::*;
    prop_oneof![
        4 => (0..4usize, 0..5usize, proptest::bool::weighted(0.3))
            .prop_map(|(kind, priority, expiring)| Op::Create { kind, priority, expiring }),
        1 => Just(Op::Seen),
        2 => any::<usize>().prop_map(Op::Read),
        1 => (0..5usize).prop_map(Op::ReadAll),
        1 => any::<usize>().prop_map(Op::Archive),
        1 => any::<usize>().prop_map(Op::Snooze),
        1 => any::<usize>().prop_map(Op::Unsnooze),
        1 => any::<usize>().prop_map(Op::Delete),
        1 => Just(Op::Expire),
    ]
}

const KINDS: [NotificationType; 4] = [
    NotificationType::NewMessage,
    NotificationType::UserMentioned,
    NotificationType::MissedCall,
    NotificationType::System,
];

/// The badge computed by the test itself from the user's rows.
async fn counts_from_rows(app: &TestApp, user: &str) -> NotificationCounts {
    let sql = match app.store.backend() {
        sea_orm::DbBackend::Postgres => {
            "SELECT kind, priority, seen_at_ms, read_at_ms, archived_at_ms, snoozed_until_ms \
             FROM notification WHERE user_id = $1"
        }
        _ => {
            "SELECT kind, priority, seen_at_ms, read_at_ms, archived_at_ms, snoozed_until_ms \
             FROM notification WHERE user_id = ?"
        }
    };
    let rows = app
        .store
        .db()
        .query_all_raw(Statement::from_sql_and_values(
            app.store.backend(),
            sql,
            [user.into()],
        ))
        .await
        .unwrap();
    let mut counts = NotificationCounts::default();
    let mut by_type: BTreeMap<i32, u32> = BTreeMap::new();
    let mut by_priority: BTreeMap<i32, u32> = BTreeMap::new();
    for row in rows {
        let set = |column: &str| row.try_get::<Option<i64>>("", column).unwrap().is_some();
        if set("archived_at_ms") || set("snoozed_until_ms") {
            continue;
        }
        counts.total += 1;
        if !set("seen_at_ms") {
            counts.unseen += 1;
        }
        if !set("read_at_ms") {
            counts.unread += 1;
            let kind: String = row.try_get("", "kind").unwrap();
            let priority: String = row.try_get("", "priority").unwrap();
            let kind = NotificationType::from_str_name(&format!(
                "NOTIFICATION_TYPE_{}",
                kind.to_uppercase()
            ))
            .unwrap();
            let priority = NotificationPriority::from_str_name(&format!(
                "NOTIFICATION_PRIORITY_{}",
                priority.to_uppercase()
            ))
            .unwrap();
            *by_type.entry(kind.into()).or_default() += 1;
            *by_priority.entry(priority.into()).or_default() += 1;
        }
    }
    counts.unread_by_type = by_type
        .into_iter()
        .map(|(r#type, unread)| herald_proto::v1::NotificationTypeCount { r#type, unread })
        .collect();
    counts.unread_by_priority = by_priority
        .into_iter()
        .map(|(priority, unread)| herald_proto::v1::NotificationPriorityCount { priority, unread })
        .collect();
    counts
}

/// Runs one sequence on a fresh user; after every step, Counts = the rows = the last pushed
/// counts frame.
async fn run_sequence(app: &TestApp, user: &str, ops: &[Op]) -> Result<(), String> {
    let service = Inbox::service(app).await;
    let inbox = Inbox::of(app, user, &[]).await;
    let mut sub = inbox.who.subscribe(&format!("user:{user}")).await;
    let mut last_offset = sub.position().offset;
    let mut pushed = NotificationCounts::default();
    let mut expiring: BTreeSet<String> = BTreeSet::new();
    let mut known: Vec<String> = vec![];
    let pick = |known: &[String], n: usize| -> Vec<String> {
        if known.is_empty() {
            vec!["missing".to_owned()]
        } else {
            vec![known[n % known.len()].clone()]
        }
    };
    for (step, op) in ops.iter().enumerate() {
        let mut wait_for_expiry = false;
        match op {
            Op::Create {
                kind,
                priority,
                expiring: expires,
            } => {
                let request = NotificationsCreateRequest {
                    priority: *priority as i32,
                    expire_time: expires.then(|| {
                        herald_proto::timestamp(app.clock.now() + Duration::from_secs(60))
                    }),
                    ..note(&[user], KINDS[*kind], "step")
                };
                let id = service.create(request).await.unwrap().deliveries[0]
                    .notification_id
                    .clone();
                if *expires {
                    expiring.insert(id.clone());
                }
                known.push(id);
            }
            Op::Seen => {
                inbox.mark_seen().await;
            }
            Op::Read(n) => {
                inbox.mark_read(&pick(&known, *n)).await.unwrap();
            }
            Op::ReadAll(n) => {
                let kind = KINDS
                    .get(*n)
                    .copied()
                    .unwrap_or(NotificationType::Unspecified);
                inbox.mark_all_read(kind).await;
            }
            Op::Archive(n) => {
                inbox.archive(&pick(&known, *n)).await;
            }
            Op::Snooze(n) => {
                // Far beyond every clock advance of the sequence: only Unsnooze ends it.
                let until = app.clock.now() + Duration::from_secs(200 * 86_400);
                let result = inbox.snooze(&pick(&known, *n)[0], until).await;
                if let Err(status) = result {
                    assert!(
                        matches!(status.code(), Code::NotFound | Code::FailedPrecondition),
                        "{status:?}"
                    );
                }
            }
            Op::Unsnooze(n) => {
                let result = inbox.unsnooze(&pick(&known, *n)[0]).await;
                if let Err(status) = result {
                    assert_eq!(status.code(), Code::NotFound, "{status:?}");
                }
            }
            Op::Delete(n) => {
                let ids = pick(&known, *n);
                inbox.delete(&ids).await;
                known.retain(|id| !ids.contains(id));
                expiring.retain(|id| !ids.contains(id));
            }
            Op::Expire => {
                app.clock.advance(Duration::from_secs(61));
                wait_for_expiry = !expiring.is_empty();
            }
        }
        // Drain what the step pushed: up to the position Counts answers with, and through
        // the expiry the sweeper pushes.
        loop {
            let (answered, position) = inbox.counts().await;
            let mut expired_now = vec![];
            while last_offset < position.offset {
                let event = sub.next_event().await;
                last_offset = event.offset;
                if let Some(counts) = counts_in(&event) {
                    pushed = counts;
                }
                if let Some(Body::NotificationsChanged(change)) = &event.body
                    && change.change() == NotificationChange::Expired
                {
                    expired_now.extend(change.ids.clone());
                }
            }
            for id in &expired_now {
                expiring.remove(id);
                known.retain(|k| k != id);
            }
            if wait_for_expiry && !expiring.is_empty() {
                // The sweeper has not run yet: its events are next on the stream.
                let event = sub.next_event().await;
                last_offset = event.offset;
                if let Some(Body::NotificationsChanged(change)) = &event.body {
                    for id in &change.ids {
                        expiring.remove(id);
                        known.retain(|k| k != id);
                    }
                }
                continue;
            }
            let rows = counts_from_rows(app, user).await;
            if answered != rows || pushed != rows {
                return Err(format!(
                    "step {step} ({op:?}): Counts {answered:?}, rows {rows:?}, pushed {pushed:?}"
                ));
            }
            break;
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_equal_the_rows_and_the_last_pushed_frame_after_every_step_of_random_sequences() {
    use proptest::{
        collection::vec,
        test_runner::{Config, TestCaseError, TestRunner},
    };
    let app = app().await;
    let handle = tokio::runtime::Handle::current();
    let mut runner = TestRunner::new(Config {
        cases: 12,
        max_shrink_iters: 64,
        failure_persistence: None,
        ..Config::default()
    });
    let case = std::sync::atomic::AtomicUsize::new(0);
    let result = tokio::task::block_in_place(|| {
        runner.run(&vec(op(), 1..30), |ops| {
            let user = format!(
                "prop-{}",
                case.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            );
            handle
                .block_on(run_sequence(&app, &user, &ops))
                .map_err(TestCaseError::fail)
        })
    });
    if let Err(error) = result {
        panic!("{error}");
    }
}
