//! `herald demo inbox`: a service notifies a user; the user's inbox stream shows every
//! creation, state change and badge, pushed in the transaction of its cause.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use herald_backend::Config;
use herald_proto::v1::{
    DoNotDisturb, NotificationContext, NotificationCounts, NotificationPreferences,
    NotificationPriority, NotificationSender, NotificationType, NotificationsArchiveRequest,
    NotificationsCountsRequest, NotificationsCreateRequest, NotificationsDeleteRequest,
    NotificationsListRequest, NotificationsMarkAllReadRequest, NotificationsMarkReadRequest,
    NotificationsMarkSeenRequest, NotificationsSnoozeRequest, NotificationsUnsnoozeRequest,
    NotificationsUpdatePreferencesRequest, StreamPosition, event::Body,
    notifications_client::NotificationsClient,
};
use tonic::transport::Channel;

use super::{Actor, Stage, Watcher, status_error};
use crate::{CliError, InboxDemoArgs};

struct Scene {
    stage: Stage,
    client: NotificationsClient<Channel>,
    service: Actor,
    user: Actor,
    watcher: Watcher,
    /// The last badge the stream pushed.
    badge: Option<NotificationCounts>,
}

impl Scene {
    async fn position(&mut self) -> Result<StreamPosition, CliError> {
        let request = self.user.request(NotificationsCountsRequest {})?;
        let response = self.client.counts(request).await.map_err(status_error)?;
        Ok(response.into_inner().position.unwrap_or_default())
    }

    /// Prints what the step pushed: every event up to the inbox's position now.
    async fn pushed(&mut self) -> Result<(), CliError> {
        let position = self.position().await?;
        for event in self.watcher.show_until(&position).await? {
            if let Some(Body::NotificationCounts(counts)) = event.body {
                self.badge = Some(counts);
            }
        }
        Ok(())
    }

    async fn create(
        &mut self,
        request: NotificationsCreateRequest,
    ) -> Result<Vec<String>, CliError> {
        let request = self.service.request(request)?;
        let response = self
            .client
            .create(request)
            .await
            .map_err(status_error)?
            .into_inner();
        let mut ids = vec![];
        for delivery in response.deliveries {
            let outcome = delivery.outcome();
            let outcome = outcome
                .as_str_name()
                .trim_start_matches("NOTIFICATION_DELIVERY_OUTCOME_")
                .to_lowercase();
            println!(
                "   Create → {}: {outcome}{}",
                delivery.user_id,
                if delivery.quiet { " (quiet)" } else { "" }
            );
            if !delivery.notification_id.is_empty() {
                ids.push(delivery.notification_id);
            }
        }
        Ok(ids)
    }

    fn note(&self, kind: NotificationType, title: &str) -> NotificationsCreateRequest {
        NotificationsCreateRequest {
            user_ids: vec![self.user.name.clone()],
            r#type: kind.into(),
            title: title.to_owned(),
            ..NotificationsCreateRequest::default()
        }
    }

    fn mention(&self, sender: &str) -> NotificationsCreateRequest {
        NotificationsCreateRequest {
            sender: Some(NotificationSender {
                id: sender.to_owned(),
                display_name: sender.to_owned(),
                avatar_url: String::new(),
            }),
            ..self.note(
                NotificationType::UserMentioned,
                &format!("{sender} mentioned you"),
            )
        }
    }

    async fn set_preferences(
        &mut self,
        preferences: NotificationPreferences,
    ) -> Result<(), CliError> {
        let request = self.user.request(NotificationsUpdatePreferencesRequest {
            preferences: Some(preferences),
        })?;
        self.client
            .update_preferences(request)
            .await
            .map_err(status_error)?;
        Ok(())
    }
}

pub(crate) async fn run(args: InboxDemoArgs, config: &Config) -> Result<(), CliError> {
    let stage = Stage::open(&args.common, config).await?;
    let service = stage.actor("demo-notifier", &["service"])?;
    let user = stage.actor(&args.user, &[])?;
    let mut client = NotificationsClient::new(stage.channel.clone());
    let topic = format!("user:{}", args.user);

    println!(
        "The inbox of `{}` is one ordered stream, {topic}: every creation and change is an \
         event, followed by the new badge in the same transaction.\n\
         Watch the raw stream too: herald subscribe {topic} --token $(herald token --sub {})",
        args.user, args.user
    );
    let counts = client
        .counts(user.request(NotificationsCountsRequest {})?)
        .await
        .map_err(status_error)?
        .into_inner();
    let position = counts.position.unwrap_or_default();
    let badge = counts.counts.unwrap_or_default();
    println!(
        "   Counts now: total {} · unseen {} · unread {} (at offset {})",
        badge.total, badge.unseen, badge.unread, position.offset
    );
    let watcher = Watcher::open(&stage, &user, &args.user, &topic, position).await?;
    let mut scene = Scene {
        stage,
        client,
        service,
        user,
        watcher,
        badge: None,
    };

    scene
        .stage
        .step("A mention arrives whole: no refetch needed; the preview is cut to 25 words")
        .await;
    let long: Vec<String> = (1..=40).map(|n| format!("word{n}")).collect();
    let first = scene
        .create(NotificationsCreateRequest {
            context: Some(NotificationContext {
                conversation_id: "general".into(),
                message_id: "m-1".into(),
                call_id: String::new(),
            }),
            message_preview: long.join(" "),
            ..scene.mention("ada")
        })
        .await?;
    scene.pushed().await?;

    scene
        .stage
        .step("HTML is removed on the way in (a script tag, an event handler, entities)")
        .await;
    let html = scene
        .create(scene.note(
            NotificationType::System,
            r#"<img src=x onerror="alert(1)">Welcome &amp; <b>thanks</b><script>steal()</script>"#,
        ))
        .await?;
    scene.pushed().await?;

    scene
        .stage
        .step("The mention rate limit: 6 mentions from one sender within a minute")
        .await;
    for _ in 0..6 {
        scene.create(scene.mention("eager-bot")).await?;
    }
    scene.pushed().await?;

    scene.stage.step("The bell is opened (MarkSeen), one is read, then all system ones (MarkAllRead by type)").await;
    let request = scene.user.request(NotificationsMarkSeenRequest {})?;
    scene
        .client
        .mark_seen(request)
        .await
        .map_err(status_error)?;
    let request = scene
        .user
        .request(NotificationsMarkReadRequest { ids: first.clone() })?;
    scene
        .client
        .mark_read(request)
        .await
        .map_err(status_error)?;
    let request = scene.user.request(NotificationsMarkAllReadRequest {
        r#type: NotificationType::System.into(),
        conversation_id: String::new(),
    })?;
    scene
        .client
        .mark_all_read(request)
        .await
        .map_err(status_error)?;
    scene.pushed().await?;

    scene
        .stage
        .step("Reactions turned off: the next one is suppressed, nothing is stored or pushed")
        .await;
    scene
        .set_preferences(NotificationPreferences {
            muted_types: vec![NotificationType::MessageReaction.into()],
            do_not_disturb: None,
        })
        .await?;
    scene
        .create(scene.note(NotificationType::MessageReaction, "ada reacted 👍"))
        .await?;
    scene.pushed().await?;

    scene.stage.step("Do-not-disturb around this hour (UTC): stored and counted, pushed quietly — except urgent").await;
    let hour = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
        / 3600
        % 24;
    let at = |h: u64| format!("{:02}:00", h % 24);
    scene
        .set_preferences(NotificationPreferences {
            muted_types: vec![],
            do_not_disturb: Some(DoNotDisturb {
                start: at(hour + 23),
                end: at(hour + 1),
                time_zone: "UTC".into(),
            }),
        })
        .await?;
    scene
        .create(scene.note(NotificationType::MissedCall, "Missed call from Bob"))
        .await?;
    scene
        .create(NotificationsCreateRequest {
            priority: NotificationPriority::Urgent.into(),
            ..scene.note(
                NotificationType::System,
                "New sign-in from an unknown device",
            )
        })
        .await?;
    scene.pushed().await?;
    scene
        .set_preferences(NotificationPreferences::default())
        .await?;

    scene
        .stage
        .step("Snooze one for an hour: it leaves the badge; Unsnooze brings it back as new")
        .await;
    if let Some(id) = html.first() {
        let until = SystemTime::now() + Duration::from_secs(3600);
        let request = scene.user.request(NotificationsSnoozeRequest {
            id: id.clone(),
            until: Some(herald_proto::timestamp(until)),
        })?;
        scene.client.snooze(request).await.map_err(status_error)?;
        scene.pushed().await?;
        let request = scene
            .user
            .request(NotificationsUnsnoozeRequest { id: id.clone() })?;
        scene.client.unsnooze(request).await.map_err(status_error)?;
        scene.pushed().await?;
    }

    scene
        .stage
        .step("Archive the first mention, delete the welcome")
        .await;
    let request = scene
        .user
        .request(NotificationsArchiveRequest { ids: first })?;
    scene.client.archive(request).await.map_err(status_error)?;
    let request = scene
        .user
        .request(NotificationsDeleteRequest { ids: html })?;
    scene.client.delete(request).await.map_err(status_error)?;
    scene.pushed().await?;

    scene
        .stage
        .step("The first page of the inbox, newest first (List, with its position)")
        .await;
    let request = scene.user.request(NotificationsListRequest {
        limit: 5,
        ..NotificationsListRequest::default()
    })?;
    let page = scene
        .client
        .list(request)
        .await
        .map_err(status_error)?
        .into_inner();
    for n in &page.notifications {
        println!(
            "   {} {}{}",
            if n.read { "  " } else { "● " },
            n.title,
            if n.seen { "" } else { " (new)" }
        );
    }
    println!(
        "   …at offset {}; more: {}",
        page.position.unwrap_or_default().offset,
        if page.next_cursor.is_empty() {
            "no"
        } else {
            "yes (pass next_cursor)"
        }
    );
    let counts = scene
        .client
        .counts(scene.user.request(NotificationsCountsRequest {})?)
        .await
        .map_err(status_error)?
        .into_inner()
        .counts
        .unwrap_or_default();
    let same = scene.badge.as_ref() == Some(&counts);
    println!(
        "\nCounts from the database: total {} · unseen {} · unread {} — {}",
        counts.total,
        counts.unseen,
        counts.unread,
        if same {
            "equal to the last badge pushed"
        } else {
            "NOT equal to the last badge pushed"
        }
    );
    Ok(())
}
