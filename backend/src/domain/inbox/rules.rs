//! The inbox's rules as pure functions: no database, no clock of their own (every rule that
//! depends on time takes `now`), no I/O. `mod.rs` loads the state, asks here, and saves what
//! these functions return.
//!
//! - [`draft`]: a notification as a service asks for it → a checked, sanitised [`Draft`]
//!   (limits, plain text, preview, default priority, expiry);
//! - [`deliver`]: for one recipient, preferences → mention rate limit → do-not-disturb;
//! - [`decide`]: a state change of one notification (seen, read, archive, snooze, unsnooze,
//!   wake, delete, expire);
//! - [`counts`]: the badge, from the rows;
//! - [`preferences`], [`QuietHours::contains`]: preferences and the do-not-disturb window;
//! - [`Cursor`]: List's keyset cursor.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    sync::LazyLock,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

/// Title: 1–200 characters.
pub const TITLE_MAX_CHARS: usize = 200;
/// Content: at most 1,000 characters.
pub const CONTENT_MAX_CHARS: usize = 1000;
/// Data: at most 10 KiB of JSON.
pub const DATA_MAX_BYTES: usize = 10 * 1024;
/// The message text a preview is cut from: at most 10,000 characters.
pub const PREVIEW_SOURCE_MAX_CHARS: usize = 10_000;
/// A preview keeps this many words.
pub const PREVIEW_WORDS: usize = 25;
/// A sender's display name: at most 100 characters.
pub const SENDER_NAME_MAX_CHARS: usize = 100;
/// An avatar URL: at most 2,048 characters.
pub const AVATAR_URL_MAX_CHARS: usize = 2048;
/// User, sender and context ids: at most 128 characters.
pub const ID_MAX_CHARS: usize = 128;
/// Recipients of one Create.
pub const MAX_RECIPIENTS: usize = 10_000;
/// Ids in one MarkRead / Archive / Delete, and in one change event.
pub const MAX_IDS: usize = 100;
/// List's page size: default and most.
pub const LIST_DEFAULT: usize = 20;
pub const LIST_MAX: usize = 50;
/// At most this many `user_mentioned` per sender → recipient pair in [`MENTION_WINDOW`].
pub const MENTION_LIMIT: usize = 5;
pub const MENTION_WINDOW: Duration = Duration::from_secs(60);
/// A snooze ends at least 1 minute and at most 365 days ahead; an expiry at most 365 days.
pub const SNOOZE_MIN: Duration = Duration::from_secs(60);
pub const FURTHEST_AHEAD: Duration = Duration::from_secs(365 * 86_400);

/// Why a request breaks a rule. Every message names the field or rule and the limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error("{field} is required")]
    Required { field: &'static str },
    #[error("{field} is {actual} {unit} long; the limit is {limit}")]
    TooLong {
        field: &'static str,
        limit: usize,
        actual: usize,
        unit: &'static str,
    },
    #[error("{field} is empty once markup is removed; it needs at least one visible character")]
    Empty { field: &'static str },
    #[error("{field} contains the control character U+{code:04X}; only plain text is accepted{also}", also = if *newlines_allowed { " (new lines and tabs are allowed)" } else { "" })]
    ControlCharacter {
        field: &'static str,
        code: u32,
        newlines_allowed: bool,
    },
    #[error("{field} has {actual} entries; the limit is {limit}")]
    TooMany {
        field: &'static str,
        limit: usize,
        actual: usize,
    },
    #[error("{field} contains `{value}` more than once")]
    Duplicate { field: &'static str, value: String },
    #[error("{field} {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("system notifications cannot be turned off (muted_types contains SYSTEM)")]
    SystemNotMutable,
    /// The notification's state does not allow the change.
    #[error("{0}")]
    State(String),
}

fn invalid(field: &'static str, reason: impl Into<String>) -> RuleError {
    RuleError::Invalid {
        field,
        reason: reason.into(),
    }
}

/// Milliseconds since the Unix epoch: how times are stored.
pub fn unix_ms(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The inverse of [`unix_ms`].
pub fn from_unix_ms(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

// ---------------------------------------------------------------------------------------
// Types and priorities

/// What a notification is about (`herald.v1.NotificationType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    NewMessage,
    MessageReply,
    UserMentioned,
    MessageReaction,
    ContactRequest,
    ContactAccepted,
    NewConversationDirect,
    NewConversationGroup,
    MemberJoined,
    MissedCall,
    System,
}

impl Kind {
    pub const ALL: [Kind; 11] = [
        Kind::NewMessage,
        Kind::MessageReply,
        Kind::UserMentioned,
        Kind::MessageReaction,
        Kind::ContactRequest,
        Kind::ContactAccepted,
        Kind::NewConversationDirect,
        Kind::NewConversationGroup,
        Kind::MemberJoined,
        Kind::MissedCall,
        Kind::System,
    ];

    /// The stored name (the issue's names).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::NewMessage => "new_message",
            Kind::MessageReply => "message_reply",
            Kind::UserMentioned => "user_mentioned",
            Kind::MessageReaction => "message_reaction",
            Kind::ContactRequest => "contact_request",
            Kind::ContactAccepted => "contact_accepted",
            Kind::NewConversationDirect => "new_conversation_direct",
            Kind::NewConversationGroup => "new_conversation_group",
            Kind::MemberJoined => "member_joined",
            Kind::MissedCall => "missed_call",
            Kind::System => "system",
        }
    }

    pub fn parse(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|kind| kind.as_str() == name)
    }

    /// The priority a notification of this type gets when Create names none.
    pub fn default_priority(self) -> Priority {
        match self {
            Kind::UserMentioned | Kind::MissedCall => Priority::High,
            Kind::MessageReaction | Kind::ContactAccepted | Kind::MemberJoined => Priority::Low,
            Kind::NewMessage
            | Kind::MessageReply
            | Kind::ContactRequest
            | Kind::NewConversationDirect
            | Kind::NewConversationGroup
            | Kind::System => Priority::Normal,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How much attention a notification asks for (`herald.v1.NotificationPriority`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Priority {
    Low,
    Normal,
    High,
    /// Delivered loudly even during do-not-disturb.
    Urgent,
}

impl Priority {
    pub const ALL: [Priority; 4] = [
        Priority::Low,
        Priority::Normal,
        Priority::High,
        Priority::Urgent,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Low => "low",
            Priority::Normal => "normal",
            Priority::High => "high",
            Priority::Urgent => "urgent",
        }
    }

    pub fn parse(name: &str) -> Option<Priority> {
        Priority::ALL.into_iter().find(|p| p.as_str() == name)
    }
}

// ---------------------------------------------------------------------------------------
// Plain text

/// Tags removed together with everything inside them (elsewhere only the tag goes and its
/// text stays).
const DROPPED_WITH_CONTENT: [&str; 13] = [
    "script", "style", "iframe", "noscript", "noembed", "noframes", "object", "template",
    "textarea", "title", "xmp", "svg", "math",
];

/// A sanitiser that allows no tag and no attribute at all: its output is text.
static CLEANER: LazyLock<ammonia::Builder<'static>> = LazyLock::new(|| {
    let mut builder = ammonia::Builder::empty();
    builder
        .clean_content_tags(DROPPED_WITH_CONTENT.into_iter().collect())
        .strip_comments(true);
    builder
});

/// Turns untrusted input into plain text: every tag and comment removed (scripts and styles
/// with their content), entities decoded, repeated until nothing changes — so text that only
/// becomes markup once decoded (`&lt;script&gt;`) or reassembled (`<scr<script>ipt>`) is
/// removed too, and the result contains nothing a browser would parse as markup.
pub fn strip_markup(input: &str) -> String {
    let mut text = input.to_owned();
    // Each pass that changes the text makes it shorter, so this ends; the bound is a guard.
    for _ in 0..16 {
        let cleaned = decode_serialized(&CLEANER.clean(&text).to_string());
        if cleaned == text {
            break;
        }
        text = cleaned;
    }
    text
}

/// Undoes the escaping of the sanitiser's serializer, which in text writes exactly `&amp;`,
/// `&lt;`, `&gt;` and `&nbsp;` (every other entity of the input is already a character).
fn decode_serialized(html: &str) -> String {
    const ENTITIES: [(&str, char); 5] = [
        ("&amp;", '&'),
        ("&lt;", '<'),
        ("&gt;", '>'),
        ("&nbsp;", '\u{a0}'),
        ("&quot;", '"'),
    ];
    let mut out = String::with_capacity(html.len());
    let mut rest = html;
    while let Some(at) = rest.find('&') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        match ENTITIES.iter().find(|(name, _)| rest.starts_with(name)) {
            Some((name, c)) => {
                out.push(*c);
                rest = &rest[name.len()..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Checks and sanitises one text field: at most `limit` characters as sent, no control
/// characters (new lines and tabs only where `multiline`), markup removed, trimmed.
pub fn plain_text(
    field: &'static str,
    raw: &str,
    limit: usize,
    multiline: bool,
) -> Result<String, RuleError> {
    let actual = raw.chars().count();
    if actual > limit {
        return Err(RuleError::TooLong {
            field,
            limit,
            actual,
            unit: "characters",
        });
    }
    let allowed = |c: char| multiline && matches!(c, '\n' | '\t' | '\r');
    if let Some(c) = raw.chars().find(|c| c.is_control() && !allowed(*c)) {
        return Err(RuleError::ControlCharacter {
            field,
            code: u32::from(c),
            newlines_allowed: multiline,
        });
    }
    Ok(strip_markup(raw).trim().to_owned())
}

/// The first [`PREVIEW_WORDS`] words of `text`, single-spaced, with "…" when cut.
pub fn preview(text: &str) -> String {
    let mut words = text.split_whitespace();
    let kept: Vec<&str> = words.by_ref().take(PREVIEW_WORDS).collect();
    let mut out = kept.join(" ");
    if words.next().is_some() {
        out.push('…');
    }
    out
}

/// An id (user, sender, context): 1–128 printable ASCII characters, no spaces (user ids
/// become topics, `user:<id>`).
pub fn id(field: &'static str, raw: &str) -> Result<String, RuleError> {
    if raw.is_empty() {
        return Err(RuleError::Required { field });
    }
    let actual = raw.chars().count();
    if actual > ID_MAX_CHARS {
        return Err(RuleError::TooLong {
            field,
            limit: ID_MAX_CHARS,
            actual,
            unit: "characters",
        });
    }
    if !raw.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid(
            field,
            "may only contain printable ASCII characters without spaces",
        ));
    }
    Ok(raw.to_owned())
}

/// An optional id: empty means none.
fn optional_id(field: &'static str, raw: &str) -> Result<Option<String>, RuleError> {
    if raw.is_empty() {
        Ok(None)
    } else {
        id(field, raw).map(Some)
    }
}

// ---------------------------------------------------------------------------------------
// A new notification

/// Who caused a notification, as sent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SenderInput {
    pub id: String,
    pub display_name: String,
    pub avatar_url: String,
}

/// A notification as a service asks for it (already out of protobuf, not yet checked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DraftInput {
    pub kind: Option<Kind>,
    pub priority: Option<Priority>,
    pub title: String,
    pub content: String,
    /// The data as JSON text, if any.
    pub data_json: Option<String>,
    pub sender: Option<SenderInput>,
    pub conversation_id: String,
    pub message_id: String,
    pub call_id: String,
    pub message_preview: String,
    pub expires_at: Option<SystemTime>,
}

/// A checked sender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sender {
    pub id: String,
    pub display_name: String,
    pub avatar_url: Option<String>,
}

/// A notification ready to store for any recipient: every limit checked, text sanitised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Draft {
    pub kind: Kind,
    pub priority: Priority,
    pub title: String,
    pub content: String,
    pub data_json: Option<String>,
    pub sender: Option<Sender>,
    pub conversation_id: Option<String>,
    pub message_id: Option<String>,
    pub call_id: Option<String>,
    pub message_preview: Option<String>,
    pub expires_at_ms: Option<i64>,
}

/// Checks a new notification against every limit and turns its text into plain text.
pub fn draft(input: DraftInput, now: SystemTime) -> Result<Draft, RuleError> {
    let kind = input.kind.ok_or(RuleError::Required { field: "type" })?;
    let title = plain_text("title", &input.title, TITLE_MAX_CHARS, false)?;
    if title.is_empty() {
        return Err(RuleError::Empty { field: "title" });
    }
    let content = plain_text("content", &input.content, CONTENT_MAX_CHARS, true)?;
    if let Some(data) = &input.data_json
        && data.len() > DATA_MAX_BYTES
    {
        return Err(RuleError::TooLong {
            field: "data",
            limit: DATA_MAX_BYTES,
            actual: data.len(),
            unit: "bytes of JSON",
        });
    }
    let sender = match input.sender {
        None => None,
        Some(sender) if sender == SenderInput::default() => None,
        Some(sender) => Some(Sender {
            id: id("sender.id", &sender.id)?,
            display_name: plain_text(
                "sender.display_name",
                &sender.display_name,
                SENDER_NAME_MAX_CHARS,
                false,
            )?,
            avatar_url: avatar_url(&sender.avatar_url)?,
        }),
    };
    let preview_source = plain_text(
        "message_preview",
        &input.message_preview,
        PREVIEW_SOURCE_MAX_CHARS,
        true,
    )?;
    let message_preview = Some(preview(&preview_source)).filter(|p| !p.is_empty());
    let expires_at_ms = match input.expires_at {
        None => None,
        Some(at) if at <= now => {
            return Err(invalid("expire_time", "must be in the future"));
        }
        Some(at) if at > now + FURTHEST_AHEAD => {
            return Err(invalid("expire_time", "may be at most 365 days ahead"));
        }
        Some(at) => Some(unix_ms(at)),
    };
    Ok(Draft {
        kind,
        priority: input.priority.unwrap_or(kind.default_priority()),
        title,
        content,
        data_json: input.data_json,
        sender,
        conversation_id: optional_id("context.conversation_id", &input.conversation_id)?,
        message_id: optional_id("context.message_id", &input.message_id)?,
        call_id: optional_id("context.call_id", &input.call_id)?,
        message_preview,
        expires_at_ms,
    })
}

fn avatar_url(raw: &str) -> Result<Option<String>, RuleError> {
    const FIELD: &str = "sender.avatar_url";
    if raw.is_empty() {
        return Ok(None);
    }
    let actual = raw.chars().count();
    if actual > AVATAR_URL_MAX_CHARS {
        return Err(RuleError::TooLong {
            field: FIELD,
            limit: AVATAR_URL_MAX_CHARS,
            actual,
            unit: "characters",
        });
    }
    let scheme_ok = ["https://", "http://"]
        .iter()
        .any(|scheme| raw.len() > scheme.len() && raw[..scheme.len()].eq_ignore_ascii_case(scheme));
    if !scheme_ok || !raw.bytes().all(|b| b.is_ascii_graphic()) || raw.contains(['"', '<', '>']) {
        return Err(invalid(
            FIELD,
            "must be an http:// or https:// URL without spaces, quotes or angle brackets",
        ));
    }
    Ok(Some(raw.to_owned()))
}

/// The recipients of a Create: 1–10,000 distinct ids.
pub fn recipients(user_ids: Vec<String>) -> Result<Vec<String>, RuleError> {
    const FIELD: &str = "user_ids";
    if user_ids.is_empty() {
        return Err(RuleError::Required { field: FIELD });
    }
    if user_ids.len() > MAX_RECIPIENTS {
        return Err(RuleError::TooMany {
            field: FIELD,
            limit: MAX_RECIPIENTS,
            actual: user_ids.len(),
        });
    }
    let mut seen = BTreeSet::new();
    for user in &user_ids {
        id(FIELD, user)?;
        if !seen.insert(user.as_str()) {
            return Err(RuleError::Duplicate {
                field: FIELD,
                value: user.clone(),
            });
        }
    }
    Ok(user_ids)
}

/// The ids of a MarkRead / Archive / Delete: 1–100 (duplicates are harmless).
pub fn ids(raw: Vec<String>) -> Result<Vec<String>, RuleError> {
    const FIELD: &str = "ids";
    if raw.is_empty() {
        return Err(RuleError::Required { field: FIELD });
    }
    if raw.len() > MAX_IDS {
        return Err(RuleError::TooMany {
            field: FIELD,
            limit: MAX_IDS,
            actual: raw.len(),
        });
    }
    for one in &raw {
        id(FIELD, one)?;
    }
    let mut unique = raw;
    unique.sort();
    unique.dedup();
    Ok(unique)
}

// ---------------------------------------------------------------------------------------
// Preferences and do-not-disturb

/// A daily quiet window in a time zone. `start` is inside, `end` is not; `start > end`
/// crosses midnight.
#[derive(Debug, Clone, PartialEq)]
pub struct QuietHours {
    /// Minutes after local midnight.
    pub start: u16,
    pub end: u16,
    /// The IANA name, as stored.
    pub zone_name: String,
    zone: jiff::tz::TimeZone,
}

impl QuietHours {
    /// Parses `HH:MM`, `HH:MM` and an IANA zone name (from the bundled tz database).
    pub fn parse(start: &str, end: &str, zone: &str) -> Result<QuietHours, RuleError> {
        let start = minute_of_day("do_not_disturb.start", start)?;
        let end = minute_of_day("do_not_disturb.end", end)?;
        if start == end {
            return Err(invalid(
                "do_not_disturb",
                "start and end must differ (an empty or a 24-hour window is ambiguous)",
            ));
        }
        QuietHours::from_minutes(start, end, zone)
    }

    pub fn from_minutes(start: u16, end: u16, zone: &str) -> Result<QuietHours, RuleError> {
        const FIELD: &str = "do_not_disturb.time_zone";
        if zone.is_empty() {
            return Err(RuleError::Required { field: FIELD });
        }
        if start >= 24 * 60 || end >= 24 * 60 {
            return Err(invalid("do_not_disturb", "times must be before 24:00"));
        }
        let tz = jiff::tz::TimeZone::get(zone).map_err(|_| {
            invalid(
                FIELD,
                format!("`{zone}` is not an IANA time zone (for example Europe/Paris)"),
            )
        })?;
        Ok(QuietHours {
            start,
            end,
            zone_name: zone.to_owned(),
            zone: tz,
        })
    }

    /// Whether `now` falls in the window, in the window's zone.
    pub fn contains(&self, now: SystemTime) -> bool {
        let Ok(at) = jiff::Timestamp::try_from(now) else {
            return false;
        };
        let local = at.to_zoned(self.zone.clone());
        let minute = u16::try_from(i32::from(local.hour()) * 60 + i32::from(local.minute()))
            .unwrap_or_default();
        if self.start < self.end {
            self.start <= minute && minute < self.end
        } else {
            minute >= self.start || minute < self.end
        }
    }

    /// `HH:MM` of a minute of the day.
    pub fn format(minute: u16) -> String {
        format!("{:02}:{:02}", minute / 60, minute % 60)
    }
}

fn minute_of_day(field: &'static str, raw: &str) -> Result<u16, RuleError> {
    let parsed = raw
        .split_once(':')
        .filter(|(h, m)| h.len() == 2 && m.len() == 2)
        .and_then(|(h, m)| Some((h.parse::<u16>().ok()?, m.parse::<u16>().ok()?)))
        .filter(|(h, m)| *h < 24 && *m < 60);
    match parsed {
        Some((h, m)) => Ok(h * 60 + m),
        None => Err(invalid(
            field,
            format!("`{raw}` is not a time of day written HH:MM (00:00–23:59)"),
        )),
    }
}

/// What a user receives.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Preferences {
    /// Types turned off.
    pub muted: BTreeSet<Kind>,
    pub quiet: Option<QuietHours>,
}

/// Checks preferences as a user sets them.
pub fn preferences(
    muted: impl IntoIterator<Item = Kind>,
    quiet: Option<QuietHours>,
) -> Result<Preferences, RuleError> {
    let muted: BTreeSet<Kind> = muted.into_iter().collect();
    if muted.contains(&Kind::System) {
        return Err(RuleError::SystemNotMutable);
    }
    Ok(Preferences { muted, quiet })
}

// ---------------------------------------------------------------------------------------
// Delivery: preferences → rate limit → do-not-disturb

/// What Create does for one recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Stored and pushed; `quiet` during do-not-disturb.
    Created {
        quiet: bool,
    },
    SuppressedByPreference,
    RateLimited,
}

/// The creation times (Unix ms) of the latest mentions admitted for one sender → recipient
/// pair, oldest first; at most [`MENTION_LIMIT`] of them matter.
pub type MentionWindow = Vec<i64>;

/// Decides delivery to one recipient. `mentions` is the pair's window when the notification
/// is a mention with a sender (rate-limited), `None` otherwise. Returns the window to store
/// when it changed.
pub fn deliver(
    draft: &Draft,
    preferences: &Preferences,
    mentions: Option<&[i64]>,
    now: SystemTime,
) -> (Delivery, Option<MentionWindow>) {
    if preferences.muted.contains(&draft.kind) {
        return (Delivery::SuppressedByPreference, None);
    }
    let mut window = None;
    if let Some(recent) = mentions {
        match admit_mention(recent, now) {
            Some(admitted) => window = Some(admitted),
            None => return (Delivery::RateLimited, None),
        }
    }
    let quiet = draft.priority != Priority::Urgent
        && preferences.quiet.as_ref().is_some_and(|q| q.contains(now));
    (Delivery::Created { quiet }, window)
}

/// A sliding window: admitted when fewer than [`MENTION_LIMIT`] mentions of the pair were
/// admitted in the last [`MENTION_WINDOW`]; returns the window with this one added.
pub fn admit_mention(recent: &[i64], now: SystemTime) -> Option<MentionWindow> {
    let now_ms = unix_ms(now);
    let window_ms = i64::try_from(MENTION_WINDOW.as_millis()).unwrap_or(i64::MAX);
    let mut kept: MentionWindow = recent
        .iter()
        .copied()
        .filter(|at| *at > now_ms - window_ms)
        .collect();
    if kept.len() >= MENTION_LIMIT {
        return None;
    }
    kept.push(now_ms);
    Some(kept)
}

// ---------------------------------------------------------------------------------------
// State changes of one notification

/// The mutable part of a notification (times in Unix ms).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct State {
    pub seen_at: Option<i64>,
    pub read_at: Option<i64>,
    pub archived_at: Option<i64>,
    pub snoozed_until: Option<i64>,
    pub expires_at: Option<i64>,
}

impl State {
    /// Whether it is in the counts: in the inbox, neither archived nor snoozed.
    pub fn counted(&self) -> bool {
        self.archived_at.is_none() && self.snoozed_until.is_none()
    }
}

/// A change a user (or the sweeper) asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    MarkSeen,
    /// Read implies seen.
    MarkRead,
    Archive,
    Snooze {
        until: SystemTime,
    },
    /// Back now, as new.
    Unsnooze,
    /// The sweeper: back as new once `snoozed_until` has come.
    Wake,
    Delete,
    /// The sweeper: removed once `expires_at` has come.
    Expire,
}

/// What a command does to one notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Nothing to do (already so): no event.
    Unchanged,
    Changed(State),
    Removed,
}

/// The state machine of one notification.
pub fn decide(state: &State, command: Command, now: SystemTime) -> Result<Transition, RuleError> {
    let now_ms = unix_ms(now);
    let changed = |next: State| {
        if next == *state {
            Transition::Unchanged
        } else {
            Transition::Changed(next)
        }
    };
    Ok(match command {
        Command::MarkSeen => changed(State {
            seen_at: state.seen_at.or(Some(now_ms)),
            ..*state
        }),
        Command::MarkRead => changed(State {
            seen_at: state.seen_at.or(Some(now_ms)),
            read_at: state.read_at.or(Some(now_ms)),
            ..*state
        }),
        Command::Archive => changed(State {
            archived_at: state.archived_at.or(Some(now_ms)),
            snoozed_until: None,
            ..*state
        }),
        Command::Snooze { until } => {
            if state.archived_at.is_some() {
                return Err(RuleError::State(
                    "an archived notification cannot be snoozed".to_owned(),
                ));
            }
            if until < now + SNOOZE_MIN {
                return Err(invalid("until", "must be at least 1 minute ahead"));
            }
            if until > now + FURTHEST_AHEAD {
                return Err(invalid("until", "may be at most 365 days ahead"));
            }
            changed(State {
                snoozed_until: Some(unix_ms(until)),
                ..*state
            })
        }
        Command::Unsnooze => back_as_new(state),
        Command::Wake => match state.snoozed_until {
            Some(until) if until <= now_ms => back_as_new(state),
            _ => Transition::Unchanged,
        },
        Command::Delete => Transition::Removed,
        Command::Expire => match state.expires_at {
            Some(at) if at <= now_ms => Transition::Removed,
            _ => Transition::Unchanged,
        },
    })
}

fn back_as_new(state: &State) -> Transition {
    if state.snoozed_until.is_none() {
        return Transition::Unchanged;
    }
    Transition::Changed(State {
        seen_at: None,
        read_at: None,
        snoozed_until: None,
        ..*state
    })
}

// ---------------------------------------------------------------------------------------
// Counts

/// The badge.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    pub total: u32,
    pub unseen: u32,
    pub unread: u32,
    /// Only types with unread notifications.
    pub unread_by_type: BTreeMap<Kind, u32>,
    pub unread_by_priority: BTreeMap<Priority, u32>,
}

/// Notifications of one type and priority, with how many of them are unseen and unread:
/// what the counting query returns per group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CountGroup {
    pub kind: Kind,
    pub priority: Priority,
    pub total: u32,
    pub unseen: u32,
    pub unread: u32,
}

/// The badge from the groups of counted notifications (see [`State::counted`]).
pub fn counts(groups: impl IntoIterator<Item = CountGroup>) -> Counts {
    let mut counts = Counts::default();
    for group in groups {
        counts.total += group.total;
        counts.unseen += group.unseen;
        counts.unread += group.unread;
        if group.unread > 0 {
            *counts.unread_by_type.entry(group.kind).or_default() += group.unread;
            *counts.unread_by_priority.entry(group.priority).or_default() += group.unread;
        }
    }
    counts
}

// ---------------------------------------------------------------------------------------
// List

/// Which notifications a List shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Folder {
    /// Neither archived nor snoozed.
    #[default]
    Inbox,
    Archive,
    Snoozed,
}

/// A checked List request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListQuery {
    pub folder: Folder,
    pub kind: Option<Kind>,
    pub unread_only: bool,
    pub limit: usize,
    pub after: Option<Cursor>,
}

pub fn list_query(
    limit: u32,
    cursor: &str,
    kind: Option<Kind>,
    unread_only: bool,
    archived: bool,
    snoozed: bool,
) -> Result<ListQuery, RuleError> {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    if limit > LIST_MAX {
        return Err(invalid(
            "limit",
            format!("is {limit}; a page holds at most {LIST_MAX}"),
        ));
    }
    let folder = match (archived, snoozed) {
        (false, false) => Folder::Inbox,
        (true, false) => Folder::Archive,
        (false, true) => Folder::Snoozed,
        (true, true) => {
            return Err(invalid(
                "archived",
                "and snoozed cannot both be set (archiving ends a snooze)",
            ));
        }
    };
    Ok(ListQuery {
        folder,
        kind,
        unread_only,
        limit: if limit == 0 { LIST_DEFAULT } else { limit },
        after: Some(cursor)
            .filter(|c| !c.is_empty())
            .map(Cursor::parse)
            .transpose()?,
    })
}

/// A keyset position in newest-first order: the last notification of the previous page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub created_at: i64,
    pub id: String,
}

impl Cursor {
    pub fn encode(&self) -> String {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(format!("{}/{}", self.created_at, self.id))
    }

    pub fn parse(raw: &str) -> Result<Cursor, RuleError> {
        use base64::Engine;
        let bad = || invalid("cursor", "is not a `next_cursor` returned by this RPC");
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(raw)
            .map_err(|_| bad())?;
        let text = String::from_utf8(bytes).map_err(|_| bad())?;
        let (created_at, id) = text.split_once('/').ok_or_else(bad)?;
        Ok(Cursor {
            created_at: created_at.parse().map_err(|_| bad())?,
            id: self::id("cursor", id).map_err(|_| bad())?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(unix_s: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(unix_s)
    }

    /// 2026-12-01T00:00:00Z.
    const DEC_1: u64 = 1_796_083_200;

    fn input() -> DraftInput {
        DraftInput {
            kind: Some(Kind::UserMentioned),
            priority: None,
            title: "Ada mentioned you".into(),
            content: "in #general".into(),
            data_json: None,
            sender: Some(SenderInput {
                id: "ada".into(),
                display_name: "Ada".into(),
                avatar_url: "https://example.com/ada.png".into(),
            }),
            conversation_id: "c1".into(),
            message_id: "m1".into(),
            call_id: String::new(),
            message_preview: String::new(),
            expires_at: None,
        }
    }

    fn ok(input: DraftInput) -> Draft {
        draft(input, at(DEC_1)).unwrap()
    }

    fn err(input: DraftInput) -> RuleError {
        draft(input, at(DEC_1)).unwrap_err()
    }

    #[test]
    fn script_tags_are_removed_with_their_content() {
        assert_eq!(
            strip_markup("hi <script>alert(1)</script>there"),
            "hi there"
        );
        assert_eq!(strip_markup("<style>p{}</style>ok"), "ok");
        assert_eq!(strip_markup("<SCRIPT SRC=//x.js></SCRIPT>ok"), "ok");
    }

    #[test]
    fn event_handler_attributes_go_with_their_tags() {
        assert_eq!(strip_markup(r#"<img src=x onerror="alert(1)">cat"#), "cat");
        assert_eq!(
            strip_markup(r#"<a href="javascript:alert(1)" onclick=x>link</a>"#),
            "link"
        );
        assert_eq!(strip_markup(r#"<b onmouseover=alert(1)>bold</b>"#), "bold");
    }

    #[test]
    fn entities_are_decoded_into_plain_text() {
        assert_eq!(strip_markup("Tom &amp; Jerry"), "Tom & Jerry");
        assert_eq!(strip_markup("caf&eacute; &#233; &#x41;"), "café é A");
        assert_eq!(strip_markup("5 < 6 and 7 > 3"), "5 < 6 and 7 > 3");
        assert_eq!(strip_markup("a&nbsp;b"), "a\u{a0}b");
        assert_eq!(strip_markup("say \"hi\""), "say \"hi\"");
        assert_eq!(strip_markup("&unknown; & &"), "&unknown; & &");
    }

    #[test]
    fn markup_hidden_in_entities_or_split_tags_is_removed_too() {
        assert_eq!(strip_markup("&lt;script&gt;alert(1)&lt;/script&gt;x"), "x");
        assert_eq!(
            strip_markup("&amp;lt;img src=x onerror=alert(1)&amp;gt;y"),
            "y"
        );
        let nested = strip_markup("<scr<script>x</script>ipt>alert(1)</script>");
        assert!(!nested.contains('<'), "{nested}");
        assert!(!strip_markup("<<b>img src=x onerror=alert(1)>").contains("<img"));
        assert_eq!(strip_markup("<!-- <script>x</script> -->ok"), "ok");
        assert_eq!(
            strip_markup("<textarea><script>x</script></textarea>ok"),
            "ok"
        );
        assert_eq!(strip_markup("<svg><script>x</script></svg>ok"), "ok");
    }

    #[test]
    fn plain_text_is_left_alone() {
        let text = "Lunch at 12? Bring 2 € & a smile :) — ok\nsecond line";
        assert_eq!(strip_markup(text), text);
    }

    #[test]
    fn a_draft_is_sanitised_and_gets_the_default_priority_of_its_type() {
        let draft = ok(DraftInput {
            title: "<b>Ada</b> mentioned you".into(),
            content: "<p onclick=x>look</p>".into(),
            ..input()
        });
        assert_eq!(draft.title, "Ada mentioned you");
        assert_eq!(draft.content, "look");
        assert_eq!(draft.priority, Priority::High);
        let reaction = ok(DraftInput {
            kind: Some(Kind::MessageReaction),
            ..input()
        });
        assert_eq!(reaction.priority, Priority::Low);
        let urgent = ok(DraftInput {
            priority: Some(Priority::Urgent),
            ..input()
        });
        assert_eq!(urgent.priority, Priority::Urgent);
    }

    #[test]
    fn every_type_has_a_default_priority_and_a_stored_name_that_parses_back() {
        for kind in Kind::ALL {
            assert_eq!(Kind::parse(kind.as_str()), Some(kind));
            assert_ne!(kind.default_priority(), Priority::Urgent);
        }
        for priority in Priority::ALL {
            assert_eq!(Priority::parse(priority.as_str()), Some(priority));
        }
    }

    #[test]
    fn each_limit_names_its_field_and_limit() {
        let e = err(DraftInput {
            title: "x".repeat(201),
            ..input()
        });
        assert_eq!(
            e,
            RuleError::TooLong {
                field: "title",
                limit: 200,
                actual: 201,
                unit: "characters"
            }
        );
        assert_eq!(
            e.to_string(),
            "title is 201 characters long; the limit is 200"
        );
        assert!(
            draft(
                DraftInput {
                    title: "é".repeat(200),
                    ..input()
                },
                at(DEC_1)
            )
            .is_ok(),
            "limits count characters, not bytes"
        );
        assert!(matches!(
            err(DraftInput {
                content: "x".repeat(1001),
                ..input()
            }),
            RuleError::TooLong {
                field: "content",
                limit: 1000,
                actual: 1001,
                ..
            }
        ));
        let data = format!("{{\"k\":\"{}\"}}", "x".repeat(10 * 1024));
        let e = err(DraftInput {
            data_json: Some(data.clone()),
            ..input()
        });
        assert!(matches!(
            e,
            RuleError::TooLong {
                field: "data",
                limit: 10240,
                ..
            }
        ));
        assert_eq!(
            e.to_string(),
            format!(
                "data is {} bytes of JSON long; the limit is 10240",
                data.len()
            )
        );
        assert!(matches!(
            err(DraftInput {
                message_preview: "w ".repeat(5001),
                ..input()
            }),
            RuleError::TooLong {
                field: "message_preview",
                limit: 10_000,
                ..
            }
        ));
        let mut sender = input().sender.unwrap();
        sender.display_name = "n".repeat(101);
        assert!(matches!(
            err(DraftInput {
                sender: Some(sender),
                ..input()
            }),
            RuleError::TooLong {
                field: "sender.display_name",
                limit: 100,
                ..
            }
        ));
        let mut sender = input().sender.unwrap();
        sender.avatar_url = format!("https://x/{}", "a".repeat(2048));
        assert!(matches!(
            err(DraftInput {
                sender: Some(sender),
                ..input()
            }),
            RuleError::TooLong {
                field: "sender.avatar_url",
                limit: 2048,
                ..
            }
        ));
        assert!(matches!(
            err(DraftInput {
                conversation_id: "c".repeat(129),
                ..input()
            }),
            RuleError::TooLong {
                field: "context.conversation_id",
                limit: 128,
                ..
            }
        ));
    }

    #[test]
    fn a_title_needs_a_type_and_visible_text() {
        assert_eq!(
            err(DraftInput {
                kind: None,
                ..input()
            }),
            RuleError::Required { field: "type" }
        );
        assert_eq!(
            err(DraftInput {
                title: "<script>x</script>  ".into(),
                ..input()
            }),
            RuleError::Empty { field: "title" }
        );
    }

    #[test]
    fn control_characters_are_refused_but_content_may_have_new_lines() {
        let e = err(DraftInput {
            title: "a\u{7}b".into(),
            ..input()
        });
        assert_eq!(
            e.to_string(),
            "title contains the control character U+0007; only plain text is accepted"
        );
        assert!(matches!(
            err(DraftInput {
                title: "two\nlines".into(),
                ..input()
            }),
            RuleError::ControlCharacter {
                field: "title",
                code: 10,
                ..
            }
        ));
        assert!(matches!(
            err(DraftInput {
                content: "nul\0".into(),
                ..input()
            }),
            RuleError::ControlCharacter {
                field: "content",
                code: 0,
                newlines_allowed: true
            }
        ));
        assert!(matches!(
            err(DraftInput {
                content: "c1 \u{85}".into(),
                ..input()
            }),
            RuleError::ControlCharacter {
                field: "content",
                code: 0x85,
                ..
            }
        ));
        assert_eq!(
            ok(DraftInput {
                content: "line 1\n\tline 2".into(),
                ..input()
            })
            .content,
            "line 1\n\tline 2"
        );
    }

    #[test]
    fn avatar_urls_are_http_urls_without_tricks() {
        for bad in [
            "javascript:alert(1)",
            "ftp://x",
            "https://x/a b",
            "https://x/\"onerror",
            "https://",
        ] {
            let mut sender = input().sender.unwrap();
            sender.avatar_url = bad.into();
            assert!(
                matches!(
                    err(DraftInput {
                        sender: Some(sender),
                        ..input()
                    }),
                    RuleError::Invalid {
                        field: "sender.avatar_url",
                        ..
                    }
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_preview_keeps_twenty_five_words_and_ends_with_an_ellipsis_when_cut() {
        let words: Vec<String> = (1..=30).map(|n| format!("w{n}")).collect();
        let cut = preview(&words.join("  \n "));
        assert_eq!(cut, format!("{}…", words[..25].join(" ")));
        let exact = preview(&words[..25].join(" "));
        assert_eq!(
            exact,
            words[..25].join(" "),
            "no ellipsis when nothing is cut"
        );
        assert_eq!(preview("  "), "");
        let draft = ok(DraftInput {
            message_preview: format!("<i>{}</i>", words.join(" ")),
            ..input()
        });
        assert_eq!(draft.message_preview.unwrap(), cut);
    }

    #[test]
    fn an_expiry_is_in_the_future_and_within_a_year() {
        let now = at(DEC_1);
        assert!(matches!(
            err(DraftInput {
                expires_at: Some(now),
                ..input()
            }),
            RuleError::Invalid {
                field: "expire_time",
                ..
            }
        ));
        assert!(matches!(
            err(DraftInput {
                expires_at: Some(now + FURTHEST_AHEAD + Duration::from_secs(1)),
                ..input()
            }),
            RuleError::Invalid {
                field: "expire_time",
                ..
            }
        ));
        let draft = ok(DraftInput {
            expires_at: Some(now + Duration::from_secs(60)),
            ..input()
        });
        assert_eq!(draft.expires_at_ms, Some(unix_ms(now) + 60_000));
    }

    #[test]
    fn recipients_are_one_to_ten_thousand_distinct_ids() {
        assert_eq!(
            recipients(vec![]),
            Err(RuleError::Required { field: "user_ids" })
        );
        let many: Vec<String> = (0..10_001).map(|n| format!("u{n}")).collect();
        assert_eq!(
            recipients(many.clone()).unwrap_err().to_string(),
            "user_ids has 10001 entries; the limit is 10000"
        );
        assert!(recipients(many[..10_000].to_vec()).is_ok());
        assert_eq!(
            recipients(vec!["a".into(), "b".into(), "a".into()]),
            Err(RuleError::Duplicate {
                field: "user_ids",
                value: "a".into()
            })
        );
        assert!(matches!(
            recipients(vec!["a b".into()]),
            Err(RuleError::Invalid {
                field: "user_ids",
                ..
            })
        ));
        assert!(matches!(
            ids((0..101).map(|n| n.to_string()).collect()),
            Err(RuleError::TooMany {
                field: "ids",
                limit: 100,
                actual: 101
            })
        ));
    }

    fn paris(start: &str, end: &str) -> QuietHours {
        QuietHours::parse(start, end, "Europe/Paris").unwrap()
    }

    /// A UTC time on 2026-12-01 (Paris is UTC+1 in winter).
    fn utc(hour: u64, minute: u64) -> SystemTime {
        at(DEC_1 + hour * 3600 + minute * 60)
    }

    #[test]
    fn do_not_disturb_crosses_midnight_in_the_users_zone() {
        let night = paris("22:00", "07:00");
        assert!(!night.contains(utc(20, 59)), "21:59 in Paris");
        assert!(
            night.contains(utc(21, 0)),
            "22:00 in Paris: start is inside"
        );
        assert!(
            night.contains(utc(23, 30)),
            "00:30 in Paris, after midnight"
        );
        assert!(night.contains(utc(5, 59)), "06:59 in Paris");
        assert!(!night.contains(utc(6, 0)), "07:00 in Paris: end is outside");
        let lunch = paris("12:00", "13:00");
        assert!(lunch.contains(utc(11, 30)));
        assert!(!lunch.contains(utc(12, 0)));
    }

    #[test]
    fn the_same_window_is_quiet_at_different_instants_in_two_zones() {
        let paris = paris("22:00", "07:00");
        let tokyo = QuietHours::parse("22:00", "07:00", "Asia/Tokyo").unwrap();
        // 21:30 UTC: 22:30 in Paris, 06:30 next day in Tokyo.
        assert!(paris.contains(utc(21, 30)) && tokyo.contains(utc(21, 30)));
        // 12:00 UTC: 13:00 in Paris, 21:00 in Tokyo.
        assert!(!paris.contains(utc(12, 0)) && !tokyo.contains(utc(12, 0)));
        // 13:30 UTC: 14:30 in Paris, 22:30 in Tokyo.
        assert!(!paris.contains(utc(13, 30)) && tokyo.contains(utc(13, 30)));
        // Summer time: 2026-07-01 20:30 UTC is 22:30 in Paris (UTC+2).
        assert!(paris.contains(at(1_782_864_000 + 20 * 3600 + 30 * 60)));
    }

    #[test]
    fn quiet_hours_are_checked_when_set() {
        assert!(matches!(
            QuietHours::parse("22:00", "22:00", "Europe/Paris"),
            Err(RuleError::Invalid {
                field: "do_not_disturb",
                ..
            })
        ));
        for bad in ["24:00", "7:00", "07:60", "0700", ""] {
            assert!(
                matches!(
                    QuietHours::parse(bad, "08:00", "UTC"),
                    Err(RuleError::Invalid {
                        field: "do_not_disturb.start",
                        ..
                    })
                ),
                "{bad}"
            );
        }
        let e = QuietHours::parse("22:00", "07:00", "Mars/Olympus").unwrap_err();
        assert_eq!(
            e.to_string(),
            "do_not_disturb.time_zone `Mars/Olympus` is not an IANA time zone (for example Europe/Paris)"
        );
        assert_eq!(QuietHours::format(22 * 60 + 5), "22:05");
    }

    #[test]
    fn system_notifications_cannot_be_muted() {
        assert_eq!(
            preferences([Kind::System], None),
            Err(RuleError::SystemNotMutable)
        );
        assert!(preferences([Kind::MessageReaction, Kind::MemberJoined], None).is_ok());
    }

    fn mention() -> Draft {
        ok(input())
    }

    #[test]
    fn a_muted_type_is_suppressed_before_anything_else() {
        let prefs = preferences([Kind::UserMentioned], None).unwrap();
        assert_eq!(
            deliver(&mention(), &prefs, Some(&[]), at(DEC_1)),
            (Delivery::SuppressedByPreference, None)
        );
    }

    #[test]
    fn six_mentions_in_a_minute_admit_five_and_the_window_slides() {
        let prefs = Preferences::default();
        let start = at(DEC_1);
        let mut window: MentionWindow = vec![];
        let mut outcomes = vec![];
        for n in 0..6 {
            let now = start + Duration::from_secs(n * 10);
            let (delivery, next) = deliver(&mention(), &prefs, Some(&window), now);
            outcomes.push(delivery);
            if let Some(next) = next {
                window = next;
            }
        }
        assert_eq!(outcomes[..5], [Delivery::Created { quiet: false }; 5]);
        assert_eq!(outcomes[5], Delivery::RateLimited);
        assert_eq!(window.len(), 5);
        // The first one leaves the window 60 s after it was admitted.
        let almost = start + MENTION_WINDOW - Duration::from_millis(1);
        let (still, _) = deliver(&mention(), &prefs, Some(&window), almost);
        assert_eq!(still, Delivery::RateLimited, "a mention counts for 60 s");
        let (later, next) = deliver(&mention(), &prefs, Some(&window), start + MENTION_WINDOW);
        assert_eq!(later, Delivery::Created { quiet: false });
        assert_eq!(next.unwrap().len(), 5);
    }

    #[test]
    fn do_not_disturb_delivers_quietly_except_urgent() {
        let prefs = preferences([], Some(paris("22:00", "07:00"))).unwrap();
        let night = utc(23, 0);
        let normal = ok(DraftInput {
            kind: Some(Kind::NewMessage),
            ..input()
        });
        assert_eq!(
            deliver(&normal, &prefs, None, night).0,
            Delivery::Created { quiet: true }
        );
        assert_eq!(
            deliver(&normal, &prefs, None, utc(12, 0)).0,
            Delivery::Created { quiet: false }
        );
        let urgent = Draft {
            priority: Priority::Urgent,
            ..normal
        };
        assert_eq!(
            deliver(&urgent, &prefs, None, night).0,
            Delivery::Created { quiet: false }
        );
    }

    fn now() -> SystemTime {
        at(DEC_1)
    }

    #[test]
    fn reading_implies_seeing_and_doing_it_twice_changes_nothing() {
        let fresh = State::default();
        let Transition::Changed(read) = decide(&fresh, Command::MarkRead, now()).unwrap() else {
            panic!("a fresh notification becomes read");
        };
        assert_eq!(read.read_at, Some(unix_ms(now())));
        assert_eq!(read.seen_at, Some(unix_ms(now())));
        assert_eq!(
            decide(&read, Command::MarkRead, now()).unwrap(),
            Transition::Unchanged
        );
        assert_eq!(
            decide(&read, Command::MarkSeen, now()).unwrap(),
            Transition::Unchanged
        );
    }

    #[test]
    fn a_snooze_is_one_minute_to_a_year_ahead_and_leaves_the_counts() {
        let fresh = State::default();
        assert!(matches!(
            decide(
                &fresh,
                Command::Snooze {
                    until: now() + Duration::from_secs(59)
                },
                now()
            ),
            Err(RuleError::Invalid { field: "until", .. })
        ));
        assert!(matches!(
            decide(
                &fresh,
                Command::Snooze {
                    until: now() + FURTHEST_AHEAD + Duration::from_secs(1)
                },
                now()
            ),
            Err(RuleError::Invalid { field: "until", .. })
        ));
        let until = now() + Duration::from_secs(600);
        let Transition::Changed(snoozed) =
            decide(&fresh, Command::Snooze { until }, now()).unwrap()
        else {
            panic!("snoozed");
        };
        assert!(!snoozed.counted());
        assert_eq!(
            decide(&snoozed, Command::Wake, now()).unwrap(),
            Transition::Unchanged,
            "not before its time"
        );
        let Transition::Changed(back) = decide(&snoozed, Command::Wake, until).unwrap() else {
            panic!("woken at `until`");
        };
        assert!(back.counted());
        assert_eq!(back, State::default());
    }

    #[test]
    fn unsnooze_brings_it_back_as_new_and_archiving_ends_a_snooze() {
        let read_and_snoozed = State {
            seen_at: Some(1),
            read_at: Some(1),
            snoozed_until: Some(unix_ms(now()) + 600_000),
            ..State::default()
        };
        let Transition::Changed(back) =
            decide(&read_and_snoozed, Command::Unsnooze, now()).unwrap()
        else {
            panic!("unsnoozed");
        };
        assert_eq!(
            (back.seen_at, back.read_at, back.snoozed_until),
            (None, None, None)
        );
        assert_eq!(
            decide(&back, Command::Unsnooze, now()).unwrap(),
            Transition::Unchanged
        );
        let Transition::Changed(archived) =
            decide(&read_and_snoozed, Command::Archive, now()).unwrap()
        else {
            panic!("archived");
        };
        assert_eq!(archived.snoozed_until, None);
        assert!(!archived.counted());
        assert_eq!(
            decide(
                &archived,
                Command::Snooze {
                    until: now() + SNOOZE_MIN
                },
                now()
            ),
            Err(RuleError::State(
                "an archived notification cannot be snoozed".into()
            ))
        );
    }

    #[test]
    fn expiry_removes_only_what_has_expired() {
        let expiring = State {
            expires_at: Some(unix_ms(now()) + 1000),
            ..State::default()
        };
        assert_eq!(
            decide(&expiring, Command::Expire, now()).unwrap(),
            Transition::Unchanged
        );
        assert_eq!(
            decide(&expiring, Command::Expire, now() + Duration::from_secs(1)).unwrap(),
            Transition::Removed
        );
        assert_eq!(
            decide(&State::default(), Command::Expire, now()).unwrap(),
            Transition::Unchanged
        );
        assert_eq!(
            decide(&State::default(), Command::Delete, now()).unwrap(),
            Transition::Removed
        );
    }

    #[test]
    fn counts_add_up_groups_and_list_only_types_with_unread() {
        let counts = counts([
            CountGroup {
                kind: Kind::NewMessage,
                priority: Priority::Normal,
                total: 3,
                unseen: 2,
                unread: 1,
            },
            CountGroup {
                kind: Kind::MissedCall,
                priority: Priority::High,
                total: 2,
                unseen: 0,
                unread: 0,
            },
            CountGroup {
                kind: Kind::NewMessage,
                priority: Priority::Urgent,
                total: 1,
                unseen: 1,
                unread: 1,
            },
        ]);
        assert_eq!((counts.total, counts.unseen, counts.unread), (6, 3, 2));
        assert_eq!(
            counts.unread_by_type,
            BTreeMap::from([(Kind::NewMessage, 2)])
        );
        assert_eq!(
            counts.unread_by_priority,
            BTreeMap::from([(Priority::Normal, 1), (Priority::Urgent, 1)])
        );
    }

    #[test]
    fn list_limits_and_cursors_are_checked() {
        let query = list_query(0, "", None, false, false, false).unwrap();
        assert_eq!((query.limit, query.folder), (LIST_DEFAULT, Folder::Inbox));
        assert_eq!(
            list_query(51, "", None, false, false, false)
                .unwrap_err()
                .to_string(),
            "limit is 51; a page holds at most 50"
        );
        assert!(list_query(10, "", None, false, true, true).is_err());
        let cursor = Cursor {
            created_at: 1_796_083_200_000,
            id: "0190-abc".into(),
        };
        assert_eq!(Cursor::parse(&cursor.encode()).unwrap(), cursor);
        for bad in ["", "!!", "bm9wZQ"] {
            assert!(
                matches!(
                    Cursor::parse(bad),
                    Err(RuleError::Invalid {
                        field: "cursor",
                        ..
                    })
                ),
                "{bad}"
            );
        }
    }
}
