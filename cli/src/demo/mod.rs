//! `herald demo inbox`, `herald demo reviews`, `herald demo chat` and `herald demo shop`:
//! narrated scripts that act against a running server as several principals (a service, users, reviewers), and print,
//! after every step, exactly the events that step pushed to the topics they watch. A newcomer runs
//! `herald serve` in one terminal and a demo in another.

mod chat;
mod inbox;
mod reviews;
mod shop;

use std::time::Duration;

use herald_backend::{
    Config,
    auth::dev_key::{self, TokenClaims},
};
use herald_client::Update;
use herald_proto::v1::{Event, StreamPosition, event::Body};
use tonic::{Request, Status, transport::Channel};

use crate::{CliError, DemoCommon};

pub(crate) use chat::run as chat;
pub(crate) use inbox::run as inbox;
pub(crate) use reviews::run as reviews;
pub(crate) use shop::{describe_signal, run as shop};

/// What the demos share: the connection, who may sign tokens, the pace.
struct Stage {
    channel: Channel,
    secret: String,
    pace: Duration,
    step: usize,
}

impl Stage {
    async fn open(common: &DemoCommon, config: &Config) -> Result<Stage, CliError> {
        let secret = match common
            .secret
            .clone()
            .or_else(|| config.auth.hs256_secret.clone())
        {
            Some(secret) => secret,
            None => dev_key::load(&config.data_dir).map_err(|e| {
                CliError::new(format!(
                    "{e}\n(the demo signs its tokens with the server's development key: run it \
                     with the same --data-dir as `herald serve`, or pass --secret)"
                ))
            })?,
        };
        let channel = Channel::from_shared(common.server.clone())
            .map_err(|e| {
                CliError::new(format!(
                    "--server `{}` is not a valid URL: {e}",
                    common.server
                ))
            })?
            .connect()
            .await
            .map_err(|e| {
                CliError::new(format!(
                    "cannot reach {}: {e}; start `herald serve` first",
                    common.server
                ))
            })?;
        Ok(Stage {
            channel,
            secret,
            pace: common.pace,
            step: 0,
        })
    }

    /// Someone acting in the demo.
    fn actor(&self, sub: &str, roles: &[&str]) -> Result<Actor, CliError> {
        let claims = TokenClaims::new(sub, roles, Duration::from_secs(3600));
        let token = dev_key::sign_hs256(&self.secret, &claims).map_err(CliError::new)?;
        Ok(Actor {
            name: sub.to_owned(),
            token,
        })
    }

    /// Prints the next step's title, after a pause so a reader can follow.
    async fn step(&mut self, title: &str) {
        if self.step > 0 {
            tokio::time::sleep(self.pace).await;
        }
        self.step += 1;
        println!("\n── {}. {title}", self.step);
    }
}

/// A principal: its name and token.
#[derive(Debug, Clone)]
struct Actor {
    name: String,
    token: String,
}

impl Actor {
    fn request<T>(&self, message: T) -> Result<Request<T>, CliError> {
        let mut request = Request::new(message);
        let value = format!("Bearer {}", self.token)
            .parse()
            .map_err(|_| CliError::new("a token with characters not allowed in metadata"))?;
        request.metadata_mut().insert("authorization", value);
        Ok(request)
    }
}

fn status_error(status: Status) -> CliError {
    CliError::new(format!("{:?}: {}", status.code(), status.message()))
}

/// A subscription whose events are printed, step by step, under a label. It is the SDK's
/// [`herald_client::Subscription`], so a demo survives the server restarting under it.
struct Watcher {
    label: String,
    feed: herald_client::Subscription,
    last: u64,
}

impl Watcher {
    /// Subscribes as `who` from `since` (a read's position: what the read already showed).
    async fn open(
        stage: &Stage,
        who: &Actor,
        label: &str,
        topic: &str,
        since: StreamPosition,
    ) -> Result<Watcher, CliError> {
        let mut feed = subscribe(stage, who, topic).since(since.clone());
        let label = label.to_owned();
        match next_update(&label, &mut feed).await? {
            Update::Subscribed { .. } => {}
            other => {
                return Err(CliError::new(format!(
                    "expected `subscribed`, got {other:?}"
                )));
            }
        }
        println!("   {label} watches {topic} from offset {}", since.offset);
        Ok(Watcher {
            label,
            feed,
            last: since.offset,
        })
    }

    /// Prints every event up to `position` (a read's position after the step).
    async fn show_until(&mut self, position: &StreamPosition) -> Result<Vec<Event>, CliError> {
        let mut events = vec![];
        while self.last < position.offset {
            match next_update(&self.label, &mut self.feed).await? {
                Update::Event(event) => {
                    self.last = event.offset;
                    println!("   {} ← #{} {}", self.label, event.offset, describe(&event));
                    events.push(*event);
                }
                Update::Reload { position } => {
                    println!("   {}: history could not continue; reloading", self.label);
                    self.last = position.map_or(self.last, |p| p.offset);
                }
                _ => {}
            }
        }
        Ok(events)
    }
}

/// `who`'s subscription to `topic` through the SDK, on the demo's connection.
fn subscribe(stage: &Stage, who: &Actor, topic: &str) -> herald_client::Subscription {
    herald_client::Client::with_channel(stage.channel.clone(), who.token.clone()).subscribe(topic)
}

/// The next update of `feed`, within 10 s; an error when it ended.
async fn next_update(
    label: &str,
    feed: &mut herald_client::Subscription,
) -> Result<Update, CliError> {
    match tokio::time::timeout(Duration::from_secs(10), feed.next()).await {
        Err(_) => Err(CliError::new(format!("{label}: nothing within 10 s"))),
        Ok(None) => Err(CliError::new(format!("{label}: the subscription ended"))),
        Ok(Some(Err(error))) => Err(CliError::new(format!("{label}: {error}"))),
        Ok(Some(Ok(update))) => Ok(update),
    }
}

/// One line for an event, from its typed body (also `herald watch` for notification and
/// review topics).
pub(crate) fn describe(event: &Event) -> String {
    use herald_proto::v1::{NotificationPriority, NotificationType};
    let kind = |t: i32| {
        NotificationType::try_from(t)
            .map(|t| {
                t.as_str_name()
                    .trim_start_matches("NOTIFICATION_TYPE_")
                    .to_lowercase()
            })
            .unwrap_or_default()
    };
    let priority = |p: i32| {
        NotificationPriority::try_from(p)
            .map(|p| {
                p.as_str_name()
                    .trim_start_matches("NOTIFICATION_PRIORITY_")
                    .to_lowercase()
            })
            .unwrap_or_default()
    };
    let short = |id: &str| {
        id.chars()
            .rev()
            .take(6)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<String>()
    };
    let detail = match &event.body {
        Some(Body::NotificationCreated(created)) => {
            let n = created.notification.clone().unwrap_or_default();
            format!(
                "[{} {}] “{}”{}{} (id …{})",
                priority(n.priority),
                kind(n.r#type),
                n.title,
                if n.message_preview.is_empty() {
                    String::new()
                } else {
                    format!(" — “{}”", n.message_preview)
                },
                if created.quiet {
                    " quietly (do-not-disturb)"
                } else {
                    ""
                },
                short(&n.id)
            )
        }
        Some(Body::NotificationsChanged(change)) => {
            if change.all {
                let only = match kind(change.r#type).as_str() {
                    "" | "unspecified" => String::new(),
                    k => format!(" of type {k}"),
                };
                format!("every notification{only}")
            } else {
                let ids: Vec<String> = change
                    .ids
                    .iter()
                    .map(|id| format!("…{}", short(id)))
                    .collect();
                ids.join(", ")
            }
        }
        Some(Body::NotificationCounts(c)) => {
            let by_type: Vec<String> = c
                .unread_by_type
                .iter()
                .map(|t| format!("{} {}", kind(t.r#type), t.unread))
                .collect();
            format!(
                "badge: total {} · unseen {} · unread {}{}",
                c.total,
                c.unseen,
                c.unread,
                if by_type.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", by_type.join(", "))
                }
            )
        }
        Some(Body::ReviewSubmitted(s)) => {
            let review = s.review.clone().unwrap_or_default();
            format!(
                "{} asks for `{}` (needs {} approval{}) · {} pending",
                review.applicant.map(|a| a.name).unwrap_or_default(),
                review.requested_role,
                review.required_approvals,
                if review.required_approvals == 1 {
                    ""
                } else {
                    "s"
                },
                s.pending
            )
        }
        Some(Body::ReviewDecided(d)) => {
            let decision = d.decision.clone().unwrap_or_default();
            let reason = if decision.reason.is_empty() {
                String::new()
            } else {
                format!(": “{}”", decision.reason)
            };
            format!(
                "by {}{reason} · {} pending",
                decision.reviewer_id, d.pending
            )
        }
        Some(body) => {
            chat_detail(body).unwrap_or_else(|| shop::describe(event).unwrap_or_default())
        }
        None => String::new(),
    };
    format!("{:<26} {detail}", event.r#type)
}

/// The detail of a messaging event.
/// A chat body described in one line; `None` for the bodies of other jobs.
fn chat_detail(body: &Body) -> Option<String> {
    use herald_proto::v1::ChatMemberChange;
    let quote = |text: &str| {
        let short: String = text.chars().take(60).collect();
        if short.len() < text.len() {
            format!("“{short}…”")
        } else {
            format!("“{short}”")
        }
    };
    Some(match body {
        Body::ChatMessageChanged(changed) => {
            let m = changed.message.clone().unwrap_or_default();
            if m.deleted {
                format!(
                    "message {} by {} (deleted; v{})",
                    m.id, m.author_id, m.version
                )
            } else {
                let reply = if m.reply_to_id == 0 {
                    String::new()
                } else {
                    format!(" ↩ {}", m.reply_to_id)
                };
                let mentions = if m.mentions.is_empty() {
                    String::new()
                } else {
                    format!(" (mentions {})", m.mentions.join(", "))
                };
                format!(
                    "{}: {}{reply}{mentions} [message {} #{} v{}]",
                    m.author_id,
                    quote(&m.text),
                    m.id,
                    m.seq,
                    m.version
                )
            }
        }
        Body::ChatReactionsChanged(changed) => {
            let summary: Vec<String> = changed
                .reactions
                .iter()
                .map(|r| format!("{} {}", r.emoji, r.count))
                .collect();
            format!(
                "{} {} {} on message {} → {}",
                changed.user_id,
                if changed.added { "added" } else { "took back" },
                changed.emoji,
                changed.message_id,
                if summary.is_empty() {
                    "no reactions".to_owned()
                } else {
                    summary.join(" · ")
                }
            )
        }
        Body::ChatReadMoved(read) => format!(
            "{} read up to message {} (#{})",
            read.user_id, read.message_id, read.seq
        ),
        Body::ChatMemberChanged(changed) => {
            let member = changed.member.clone().unwrap_or_default();
            let what = match changed.change() {
                ChatMemberChange::Joined => "joined",
                ChatMemberChange::Left => "left",
                ChatMemberChange::Removed => "was removed",
                ChatMemberChange::RoleChanged => "changed role",
                ChatMemberChange::Unspecified => "changed",
            };
            format!(
                "{} {what} (by {}) · {} members",
                member.user_id, changed.actor_id, changed.member_count
            )
        }
        Body::ChatConversationCreated(created) => {
            let c = created.conversation.clone().unwrap_or_default();
            format!("conv:{} “{}” by {}", c.id, c.title, c.creator_id)
        }
        Body::ChatMembershipChanged(changed) => {
            let group = changed
                .group
                .as_ref()
                .map(|g| format!("group:{} “{}”", g.id, g.name));
            let conversations: Vec<String> = changed
                .conversations
                .iter()
                .map(|c| format!("conv:{}", c.id))
                .collect();
            group
                .into_iter()
                .chain(conversations)
                .collect::<Vec<_>>()
                .join(", ")
        }
        Body::ChatUnreadChanged(unread) => format!(
            "conv:{}: {} unread · {} in total",
            unread.conversation_id, unread.unread, unread.total_unread
        ),
        _ => return None,
    })
}
