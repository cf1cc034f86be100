//! `herald.v1.Notifications`: principal → parse the request into the inbox's types → the
//! domain ([`crate::domain::inbox`]) → map errors through [`crate::error`].

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use herald_proto::{
    server::notifications_server::Notifications,
    v1::{
        DoNotDisturb, NotificationDelivery, NotificationDeliveryOutcome, NotificationPreferences,
        NotificationPriority, NotificationType, NotificationsArchiveRequest,
        NotificationsArchiveResponse, NotificationsCountsRequest, NotificationsCountsResponse,
        NotificationsCreateRequest, NotificationsCreateResponse, NotificationsDeleteRequest,
        NotificationsDeleteResponse, NotificationsGetPreferencesRequest,
        NotificationsGetPreferencesResponse, NotificationsListRequest, NotificationsListResponse,
        NotificationsMarkAllReadRequest, NotificationsMarkAllReadResponse,
        NotificationsMarkReadRequest, NotificationsMarkReadResponse, NotificationsMarkSeenRequest,
        NotificationsMarkSeenResponse, NotificationsSnoozeRequest, NotificationsSnoozeResponse,
        NotificationsUnsnoozeRequest, NotificationsUnsnoozeResponse,
        NotificationsUpdatePreferencesRequest, NotificationsUpdatePreferencesResponse,
    },
    wkt::Timestamp,
};
use tonic::{Request, Response, Status};

use crate::{
    auth::interceptor::principal,
    domain::inbox::{
        Inbox, InboxError, events,
        rules::{self, Delivery, DraftInput, Kind, Preferences, QuietHours, SenderInput},
    },
    error::Error,
};

#[derive(Debug, Clone)]
pub struct NotificationsService {
    inbox: Inbox,
}

impl NotificationsService {
    pub fn new(inbox: Inbox) -> Self {
        Self { inbox }
    }
}

fn status(error: InboxError) -> Status {
    Error::from(error).into()
}

fn invalid(message: String) -> Status {
    Error::InvalidArgument(message).into()
}

/// A type filter or field: UNSPECIFIED is `None`; an unknown number is refused.
fn kind(field: &str, value: i32) -> Result<Option<Kind>, Status> {
    let message = NotificationType::try_from(value)
        .map_err(|_| invalid(format!("{field} {value} is not a NotificationType")))?;
    Ok(events::kind_of(message))
}

fn priority(value: i32) -> Result<Option<rules::Priority>, Status> {
    let message = NotificationPriority::try_from(value)
        .map_err(|_| invalid(format!("priority {value} is not a NotificationPriority")))?;
    Ok(events::priority_of(message))
}

fn time(field: &str, at: &Timestamp) -> Result<SystemTime, Status> {
    let seconds =
        u64::try_from(at.seconds).map_err(|_| invalid(format!("{field} is before 1970")))?;
    let nanos = u32::try_from(at.nanos)
        .ok()
        .filter(|n| *n < 1_000_000_000)
        .ok_or_else(|| invalid(format!("{field} has nanos outside 0–999,999,999")))?;
    UNIX_EPOCH
        .checked_add(Duration::new(seconds, nanos))
        .ok_or_else(|| invalid(format!("{field} is too far in the future")))
}

fn preferences_message(preferences: &Preferences) -> NotificationPreferences {
    NotificationPreferences {
        muted_types: preferences
            .muted
            .iter()
            .map(|kind| events::kind_message(*kind).into())
            .collect(),
        do_not_disturb: preferences.quiet.as_ref().map(|quiet| DoNotDisturb {
            start: QuietHours::format(quiet.start),
            end: QuietHours::format(quiet.end),
            time_zone: quiet.zone_name.clone(),
        }),
    }
}

fn preferences_of(message: NotificationPreferences) -> Result<Preferences, Status> {
    let mut muted = Vec::with_capacity(message.muted_types.len());
    for value in message.muted_types {
        match kind("muted_types", value)? {
            Some(kind) => muted.push(kind),
            None => {
                return Err(invalid(
                    "muted_types may not contain NOTIFICATION_TYPE_UNSPECIFIED".to_owned(),
                ));
            }
        }
    }
    let quiet = message
        .do_not_disturb
        .map(|dnd| QuietHours::parse(&dnd.start, &dnd.end, &dnd.time_zone))
        .transpose()
        .map_err(|e| status(e.into()))?;
    rules::preferences(muted, quiet).map_err(|e| status(e.into()))
}

#[tonic::async_trait]
impl Notifications for NotificationsService {
    #[tracing::instrument(skip_all, fields(recipients = request.get_ref().user_ids.len()))]
    async fn create(
        &self,
        request: Request<NotificationsCreateRequest>,
    ) -> Result<Response<NotificationsCreateResponse>, Status> {
        let who = principal(&request)?;
        let request = request.into_inner();
        let data_json = request
            .data
            .map(|data| serde_json::to_string(&data))
            .transpose()
            .map_err(|e| invalid(format!("data cannot be written as JSON: {e}")))?;
        let context = request.context.unwrap_or_default();
        let input = DraftInput {
            kind: kind("type", request.r#type)?,
            priority: priority(request.priority)?,
            title: request.title,
            content: request.content,
            data_json,
            sender: request.sender.map(|sender| SenderInput {
                id: sender.id,
                display_name: sender.display_name,
                avatar_url: sender.avatar_url,
            }),
            conversation_id: context.conversation_id,
            message_id: context.message_id,
            call_id: context.call_id,
            message_preview: request.message_preview,
            expires_at: request
                .expire_time
                .as_ref()
                .map(|at| time("expire_time", at))
                .transpose()?,
        };
        let reports = self
            .inbox
            .create(&who, request.user_ids, input)
            .await
            .map_err(status)?;
        let deliveries = reports
            .into_iter()
            .map(|report| {
                let (outcome, quiet) = match report.delivery {
                    Delivery::Created { quiet } => (NotificationDeliveryOutcome::Created, quiet),
                    Delivery::SuppressedByPreference => {
                        (NotificationDeliveryOutcome::SuppressedByPreference, false)
                    }
                    Delivery::RateLimited => (NotificationDeliveryOutcome::RateLimited, false),
                };
                NotificationDelivery {
                    user_id: report.user_id,
                    outcome: outcome.into(),
                    notification_id: report.id.unwrap_or_default(),
                    quiet,
                }
            })
            .collect();
        Ok(Response::new(NotificationsCreateResponse { deliveries }))
    }

    async fn list(
        &self,
        request: Request<NotificationsListRequest>,
    ) -> Result<Response<NotificationsListResponse>, Status> {
        let who = principal(&request)?;
        let request = request.into_inner();
        let query = rules::list_query(
            request.limit,
            &request.cursor,
            kind("type", request.r#type)?,
            request.unread_only,
            request.archived,
            request.snoozed,
        )
        .map_err(|e| status(e.into()))?;
        let page = self.inbox.list(&who, query).await.map_err(status)?;
        Ok(Response::new(NotificationsListResponse {
            notifications: page
                .notifications
                .iter()
                .map(events::notification_message)
                .collect(),
            next_cursor: page.next.map(|c| c.encode()).unwrap_or_default(),
            position: Some(page.position),
        }))
    }

    async fn counts(
        &self,
        request: Request<NotificationsCountsRequest>,
    ) -> Result<Response<NotificationsCountsResponse>, Status> {
        let who = principal(&request)?;
        let (counts, position) = self.inbox.counts(&who).await.map_err(status)?;
        Ok(Response::new(NotificationsCountsResponse {
            counts: Some(events::counts_message(&counts)),
            position: Some(position),
        }))
    }

    async fn mark_seen(
        &self,
        request: Request<NotificationsMarkSeenRequest>,
    ) -> Result<Response<NotificationsMarkSeenResponse>, Status> {
        let who = principal(&request)?;
        let changed = self.inbox.mark_seen(&who).await.map_err(status)?;
        Ok(Response::new(NotificationsMarkSeenResponse { changed }))
    }

    async fn mark_read(
        &self,
        request: Request<NotificationsMarkReadRequest>,
    ) -> Result<Response<NotificationsMarkReadResponse>, Status> {
        let who = principal(&request)?;
        let ids = request.into_inner().ids;
        let changed = self.inbox.mark_read(&who, ids).await.map_err(status)?;
        Ok(Response::new(NotificationsMarkReadResponse { changed }))
    }

    async fn mark_all_read(
        &self,
        request: Request<NotificationsMarkAllReadRequest>,
    ) -> Result<Response<NotificationsMarkAllReadResponse>, Status> {
        let who = principal(&request)?;
        let request = request.into_inner();
        let kind = kind("type", request.r#type)?;
        let changed = self
            .inbox
            .mark_all_read(&who, kind, Some(request.conversation_id))
            .await
            .map_err(status)?;
        Ok(Response::new(NotificationsMarkAllReadResponse { changed }))
    }

    async fn archive(
        &self,
        request: Request<NotificationsArchiveRequest>,
    ) -> Result<Response<NotificationsArchiveResponse>, Status> {
        let who = principal(&request)?;
        let ids = request.into_inner().ids;
        let changed = self.inbox.archive(&who, ids).await.map_err(status)?;
        Ok(Response::new(NotificationsArchiveResponse { changed }))
    }

    async fn snooze(
        &self,
        request: Request<NotificationsSnoozeRequest>,
    ) -> Result<Response<NotificationsSnoozeResponse>, Status> {
        let who = principal(&request)?;
        let request = request.into_inner();
        let until = request
            .until
            .as_ref()
            .ok_or_else(|| invalid("until is required".to_owned()))
            .and_then(|at| time("until", at))?;
        let row = self
            .inbox
            .snooze(&who, request.id, until)
            .await
            .map_err(status)?;
        Ok(Response::new(NotificationsSnoozeResponse {
            notification: Some(events::notification_message(&row)),
        }))
    }

    async fn unsnooze(
        &self,
        request: Request<NotificationsUnsnoozeRequest>,
    ) -> Result<Response<NotificationsUnsnoozeResponse>, Status> {
        let who = principal(&request)?;
        let id = request.into_inner().id;
        let row = self.inbox.unsnooze(&who, id).await.map_err(status)?;
        Ok(Response::new(NotificationsUnsnoozeResponse {
            notification: Some(events::notification_message(&row)),
        }))
    }

    async fn delete(
        &self,
        request: Request<NotificationsDeleteRequest>,
    ) -> Result<Response<NotificationsDeleteResponse>, Status> {
        let who = principal(&request)?;
        let ids = request.into_inner().ids;
        let changed = self.inbox.delete(&who, ids).await.map_err(status)?;
        Ok(Response::new(NotificationsDeleteResponse { changed }))
    }

    async fn get_preferences(
        &self,
        request: Request<NotificationsGetPreferencesRequest>,
    ) -> Result<Response<NotificationsGetPreferencesResponse>, Status> {
        let who = principal(&request)?;
        let preferences = self.inbox.preferences(&who).await.map_err(status)?;
        Ok(Response::new(NotificationsGetPreferencesResponse {
            preferences: Some(preferences_message(&preferences)),
        }))
    }

    async fn update_preferences(
        &self,
        request: Request<NotificationsUpdatePreferencesRequest>,
    ) -> Result<Response<NotificationsUpdatePreferencesResponse>, Status> {
        let who = principal(&request)?;
        let preferences = preferences_of(request.into_inner().preferences.unwrap_or_default())?;
        let saved = self
            .inbox
            .set_preferences(&who, preferences)
            .await
            .map_err(status)?;
        Ok(Response::new(NotificationsUpdatePreferencesResponse {
            preferences: Some(preferences_message(&saved)),
        }))
    }
}
