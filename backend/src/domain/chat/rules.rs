//! The rules of messaging, pure: what a request may contain, who may change a group, what an
//! edit, a deletion or a reaction does to a message, how read watermarks move and which
//! unread counters a change touches. No database, no clock: the caller loads the state, passes
//! it in and saves what comes out (see the module docs of [`super`]).

use std::collections::{BTreeMap, BTreeSet};

use crate::domain::inbox::rules as inbox_rules;

/// Group names and conversation titles: at most this many characters.
pub const NAME_MAX_CHARS: usize = 100;
/// Message text: at most this many characters (Unicode scalar values).
pub const TEXT_MAX_CHARS: usize = 4_000;
/// A client message id: at most this many characters.
pub const CLIENT_ID_MAX_CHARS: usize = 128;
/// An emoji (one reaction): at most this many bytes of UTF-8.
pub const EMOJI_MAX_BYTES: usize = 32;
/// Different emoji one message may carry.
pub const MAX_EMOJI_PER_MESSAGE: usize = 20;
/// Members one message may mention.
pub const MAX_MENTIONS: usize = 50;
/// Page sizes of ListMessages and ListMyConversations.
pub const PAGE_DEFAULT: usize = 50;
pub const PAGE_MAX: usize = 100;

/// Why a request breaks a rule. Every message names the field or rule and the limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    /// Malformed input: INVALID_ARGUMENT.
    #[error("{0}")]
    Invalid(String),
    /// Not allowed for this caller: PERMISSION_DENIED.
    #[error("{0}")]
    Forbidden(String),
    /// The state does not allow it: FAILED_PRECONDITION.
    #[error("{0}")]
    Precondition(String),
}

fn invalid(message: impl Into<String>) -> RuleError {
    RuleError::Invalid(message.into())
}

impl From<inbox_rules::RuleError> for RuleError {
    fn from(error: inbox_rules::RuleError) -> RuleError {
        RuleError::Invalid(error.to_string())
    }
}

// ---------------------------------------------------------------------------------------
// Input

/// An id of a group, conversation or message: 1, 2, 3…
pub fn id(field: &str, raw: u64) -> Result<i64, RuleError> {
    match i64::try_from(raw) {
        Ok(id) if id > 0 => Ok(id),
        _ => Err(invalid(format!(
            "{field} is {raw}; ids are 1 to {}",
            i64::MAX
        ))),
    }
}

/// A user id: 1–128 printable ASCII characters without spaces (it names `user:<id>`).
pub fn user_id(field: &'static str, raw: &str) -> Result<String, RuleError> {
    Ok(inbox_rules::id(field, raw)?)
}

/// Distinct user ids other than `me`, at most `limit`.
pub fn user_ids(
    field: &'static str,
    raw: Vec<String>,
    me: &str,
    limit: usize,
) -> Result<Vec<String>, RuleError> {
    let mut seen = BTreeSet::new();
    let mut ids = Vec::with_capacity(raw.len());
    for raw in raw {
        let id = user_id(field, &raw)?;
        if id != me && seen.insert(id.clone()) {
            ids.push(id);
        }
    }
    if ids.len() > limit {
        return Err(invalid(format!(
            "{field} names {} other users; a group holds at most {} members with you \
             (chat.max_group_members)",
            ids.len(),
            limit + 1
        )));
    }
    Ok(ids)
}

/// A group name or conversation title: plain text of 1–100 characters, no control
/// characters, trimmed. Stored as sent otherwise: clients render it as text.
pub fn name(field: &str, raw: &str) -> Result<String, RuleError> {
    let actual = raw.chars().count();
    if actual > NAME_MAX_CHARS {
        return Err(invalid(format!(
            "{field} is {actual} characters long; the limit is {NAME_MAX_CHARS}"
        )));
    }
    if let Some(c) = raw.chars().find(|c| c.is_control()) {
        return Err(invalid(format!(
            "{field} contains the control character U+{:04X}; names are one line of plain text",
            u32::from(c)
        )));
    }
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        return Err(invalid(format!(
            "{field} is required (1–{NAME_MAX_CHARS} characters)"
        )));
    }
    Ok(trimmed.to_owned())
}

/// Message text: 1–4,000 characters, not only whitespace, no control characters but tab and
/// new lines. Kept exactly as sent.
pub fn text(raw: &str) -> Result<String, RuleError> {
    let actual = raw.chars().count();
    if actual > TEXT_MAX_CHARS {
        return Err(invalid(format!(
            "text is {actual} characters long; the limit is {TEXT_MAX_CHARS}"
        )));
    }
    if let Some(c) = raw
        .chars()
        .find(|c| c.is_control() && !matches!(c, '\n' | '\t' | '\r'))
    {
        return Err(invalid(format!(
            "text contains the control character U+{:04X}; only plain text is accepted \
             (new lines and tabs are allowed)",
            u32::from(c)
        )));
    }
    if raw.trim().is_empty() {
        return Err(invalid(format!(
            "text is required: 1–{TEXT_MAX_CHARS} characters, not only whitespace"
        )));
    }
    Ok(raw.to_owned())
}

/// A client message id: empty for none, else 1–128 printable ASCII characters.
pub fn client_id(raw: &str) -> Result<Option<String>, RuleError> {
    if raw.is_empty() {
        return Ok(None);
    }
    let actual = raw.chars().count();
    if actual > CLIENT_ID_MAX_CHARS {
        return Err(invalid(format!(
            "client_message_id is {actual} characters long; the limit is {CLIENT_ID_MAX_CHARS}"
        )));
    }
    if !raw.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid(
            "client_message_id may only contain printable ASCII characters without spaces",
        ));
    }
    Ok(Some(raw.to_owned()))
}

/// One reaction: a Unicode emoji (1–32 bytes, no whitespace or control characters, nothing
/// ASCII but the digit, `#` or `*` of a keycap like 1️⃣), or a shortcode `:name:` of 1–30
/// characters of `a–z 0–9 _ + -`.
pub fn emoji(raw: &str) -> Result<String, RuleError> {
    let rule = "emoji must be one emoji (for example 👍 or ❤️) or a shortcode like :party:, \
                at most 32 bytes";
    if raw.is_empty() || raw.len() > EMOJI_MAX_BYTES {
        return Err(invalid(rule));
    }
    if let Some(name) = raw.strip_prefix(':').and_then(|r| r.strip_suffix(':')) {
        let valid = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "_+-".contains(c);
        if (1..=30).contains(&name.len()) && name.chars().all(valid) {
            return Ok(raw.to_owned());
        }
        return Err(invalid(rule));
    }
    let chars: Vec<char> = raw.chars().collect();
    for (i, c) in chars.iter().enumerate() {
        if c.is_control() || c.is_whitespace() {
            return Err(invalid(rule));
        }
        if c.is_ascii() {
            let keycap = matches!(c, '0'..='9' | '#' | '*')
                && chars[i + 1..]
                    .iter()
                    .take(2)
                    .any(|next| *next == '\u{20E3}');
            if !keycap {
                return Err(invalid(rule));
            }
        }
    }
    Ok(raw.to_owned())
}

/// A page size: 0 is the default; more than [`PAGE_MAX`] is refused.
pub fn page_size(raw: u32) -> Result<usize, RuleError> {
    match usize::try_from(raw) {
        Ok(0) => Ok(PAGE_DEFAULT),
        Ok(n) if n <= PAGE_MAX => Ok(n),
        _ => Err(invalid(format!(
            "page_size is {raw}; a page holds at most {PAGE_MAX}"
        ))),
    }
}

/// Where a ListMessages page starts: before this message seq (`None`: the newest).
pub fn messages_cursor(token: &str) -> Result<Option<i64>, RuleError> {
    if token.is_empty() {
        return Ok(None);
    }
    token
        .parse::<i64>()
        .ok()
        .filter(|seq| *seq > 0)
        .map(Some)
        .ok_or_else(|| invalid("page_token is not a `next_page_token` returned by ListMessages"))
}

/// Where a ListMyConversations page starts: after this (activity, conversation id), in the
/// list's order (most recently active first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConversationCursor {
    pub activity_ms: i64,
    pub id: i64,
}

impl ConversationCursor {
    pub fn encode(&self) -> String {
        format!("{}.{}", self.activity_ms, self.id)
    }

    pub fn parse(token: &str) -> Result<Option<ConversationCursor>, RuleError> {
        if token.is_empty() {
            return Ok(None);
        }
        let parsed = token.split_once('.').and_then(|(activity, id)| {
            Some(ConversationCursor {
                activity_ms: activity.parse().ok()?,
                id: id.parse().ok()?,
            })
        });
        parsed.map(Some).ok_or_else(|| {
            invalid("page_token is not a `next_page_token` returned by ListMyConversations")
        })
    }
}

/// The two users of a direct conversation, in id order.
pub fn direct_pair(me: &str, other: &str) -> Result<(String, String), RuleError> {
    let other = user_id("direct_user_id", other)?;
    if other == me {
        return Err(invalid(
            "direct_user_id is you; a direct conversation is between two different users",
        ));
    }
    Ok(if me < other.as_str() {
        (me.to_owned(), other)
    } else {
        (other, me.to_owned())
    })
}

/// The members `text` mentions as `@<user id>`: an `@` at the start or after a character
/// that is not a letter or digit (so `bob@example.com` mentions nobody), followed by the id
/// (letters, digits, `. _ -`; a final `.` is punctuation). Only `is_member`s other than the
/// author count, each once, in order; more than [`MAX_MENTIONS`] is refused.
pub fn mentions(
    text: &str,
    author: &str,
    is_member: impl Fn(&str) -> bool,
) -> Result<Vec<String>, RuleError> {
    let id_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    let mut found = Vec::new();
    let mut seen = BTreeSet::new();
    let mut previous: Option<char> = None;
    for (at, c) in text.char_indices() {
        let starts = c == '@' && previous.is_none_or(|p| !p.is_alphanumeric());
        previous = Some(c);
        if !starts {
            continue;
        }
        let rest = &text[at + 1..];
        let end = rest.find(|c: char| !id_char(c)).unwrap_or(rest.len());
        let candidate = rest[..end].trim_end_matches('.');
        if candidate.is_empty() || candidate == author || !is_member(candidate) {
            continue;
        }
        if seen.insert(candidate.to_owned()) {
            found.push(candidate.to_owned());
        }
    }
    if found.len() > MAX_MENTIONS {
        return Err(invalid(format!(
            "text mentions {} members; a message may mention at most {MAX_MENTIONS}",
            found.len()
        )));
    }
    Ok(found)
}

// ---------------------------------------------------------------------------------------
// Groups

/// A member's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Member,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Member => "member",
            Role::Admin => "admin",
        }
    }

    pub fn parse(name: &str) -> Option<Role> {
        [Role::Member, Role::Admin]
            .into_iter()
            .find(|role| role.as_str() == name)
    }
}

/// A group's members, as the rules need them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Group {
    pub members: BTreeMap<String, Role>,
}

impl Group {
    fn admins(&self) -> usize {
        self.members.values().filter(|r| **r == Role::Admin).count()
    }
}

/// A change to a group's members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupCommand {
    /// Add `user` (or set its role).
    Add {
        user: String,
        role: Role,
    },
    Remove {
        user: String,
    },
    Leave,
}

/// What a group command did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupChange {
    Joined {
        user: String,
        role: Role,
    },
    RoleChanged {
        user: String,
        role: Role,
    },
    Left {
        user: String,
        role: Role,
    },
    Removed {
        user: String,
        role: Role,
    },
    /// Already so: nothing to save or emit.
    Unchanged,
}

/// Decides a group command by `actor` against the group as it is; `max_members` bounds it.
pub fn decide_group(
    group: &Group,
    command: GroupCommand,
    actor: &str,
    max_members: usize,
) -> Result<(Group, GroupChange), RuleError> {
    let Some(actor_role) = group.members.get(actor).copied() else {
        return Err(RuleError::Forbidden(format!(
            "you ({actor}) are not a member of this group"
        )));
    };
    let admin_only = |what: &str| {
        RuleError::Forbidden(format!(
            "only the group's admins {what}; you ({actor}) are a member"
        ))
    };
    let mut next = group.clone();
    let change = match command {
        GroupCommand::Add { user, role } => {
            if actor_role != Role::Admin {
                return Err(admin_only("add members or change roles"));
            }
            match group.members.get(&user).copied() {
                Some(current) if current == role => GroupChange::Unchanged,
                Some(current) => {
                    if current == Role::Admin && group.admins() == 1 {
                        return Err(RuleError::Precondition(format!(
                            "{user} is the group's only admin; make another member admin first"
                        )));
                    }
                    next.members.insert(user.clone(), role);
                    GroupChange::RoleChanged { user, role }
                }
                None => {
                    if group.members.len() >= max_members {
                        return Err(RuleError::Precondition(format!(
                            "the group has {} members; the limit is {max_members} \
                             (chat.max_group_members)",
                            group.members.len()
                        )));
                    }
                    next.members.insert(user.clone(), role);
                    GroupChange::Joined { user, role }
                }
            }
        }
        GroupCommand::Remove { user } => {
            if actor_role != Role::Admin {
                return Err(admin_only("remove members"));
            }
            if user == actor {
                return Err(invalid(
                    "you cannot remove yourself; call Leave to leave the group",
                ));
            }
            let Some(role) = next.members.remove(&user) else {
                return Err(RuleError::Precondition(format!(
                    "{user} is not a member of this group"
                )));
            };
            GroupChange::Removed { user, role }
        }
        GroupCommand::Leave => {
            if actor_role == Role::Admin && group.admins() == 1 && group.members.len() > 1 {
                return Err(RuleError::Precondition(
                    "you are the group's only admin and others remain: make another member \
                     admin first (AddMember with admin = true)"
                        .to_owned(),
                ));
            }
            next.members.remove(actor);
            GroupChange::Left {
                user: actor.to_owned(),
                role: actor_role,
            }
        }
    };
    Ok((next, change))
}

/// Whether a user who is in `current` groups or conversations may join `adding` more.
pub fn check_memberships(
    user: &str,
    what: &str,
    current: u64,
    adding: u64,
    limit: u64,
    setting: &str,
) -> Result<(), RuleError> {
    if current + adding > limit {
        return Err(RuleError::Precondition(format!(
            "{user} is in {current} {what}; the limit is {limit} ({setting})"
        )));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Messages

/// The part of a message the rules change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub author: String,
    pub version: u32,
    pub deleted: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessageCommand {
    Edit,
    Delete,
}

/// What a message command did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageChange {
    /// Saved with this version.
    Changed { version: u32 },
    /// Deleting a tombstone: nothing happens.
    AlreadyDeleted,
}

/// Decides an edit or deletion of `message` by `actor`.
pub fn decide_message(
    message: &Message,
    command: MessageCommand,
    actor: &str,
) -> Result<MessageChange, RuleError> {
    let verb = match command {
        MessageCommand::Edit => "edit",
        MessageCommand::Delete => "delete",
    };
    if message.author != actor {
        return Err(RuleError::Forbidden(format!(
            "only its author ({}) may {verb} a message",
            message.author
        )));
    }
    if message.deleted {
        return match command {
            MessageCommand::Delete => Ok(MessageChange::AlreadyDeleted),
            MessageCommand::Edit => Err(RuleError::Precondition(
                "the message was deleted; a tombstone cannot be edited".to_owned(),
            )),
        };
    }
    Ok(MessageChange::Changed {
        version: message.version.saturating_add(1),
    })
}

// ---------------------------------------------------------------------------------------
// Reactions

/// One emoji of a message's summary: how many reacted, and when the first did (the order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmojiCount {
    pub emoji: String,
    pub count: u32,
    pub first_ms: i64,
}

/// Toggles `emoji` of a user who `had` it on a message whose summary is `summary`: returns
/// whether it is now added, and the summary after (ordered by first reaction).
pub fn toggle(
    summary: &[EmojiCount],
    had: bool,
    emoji: &str,
    now_ms: i64,
) -> Result<(bool, Vec<EmojiCount>), RuleError> {
    let mut next: Vec<EmojiCount> = summary.to_vec();
    if had {
        if let Some(index) = next.iter().position(|e| e.emoji == emoji) {
            next[index].count = next[index].count.saturating_sub(1);
            if next[index].count == 0 {
                next.remove(index);
            }
        }
        return Ok((false, next));
    }
    match next.iter_mut().find(|e| e.emoji == emoji) {
        Some(entry) => entry.count += 1,
        None => {
            if next.len() >= MAX_EMOJI_PER_MESSAGE {
                return Err(RuleError::Precondition(format!(
                    "the message has {} different emoji; the limit is {MAX_EMOJI_PER_MESSAGE}: \
                     react with one of them",
                    next.len()
                )));
            }
            next.push(EmojiCount {
                emoji: emoji.to_owned(),
                count: 1,
                first_ms: now_ms,
            });
        }
    }
    next.sort_by(|a, b| (a.first_ms, &a.emoji).cmp(&(b.first_ms, &b.emoji)));
    Ok((true, next))
}

// ---------------------------------------------------------------------------------------
// Read watermarks and unread counters
//
// A member's unread count of a conversation is the number of messages that are by someone
// else, not deleted, and above the member's watermark. The database keeps it as a counter per
// member, changed only under the conversation's lock, by these rules:

/// A send by `author` counts for every member but the author.
pub fn counts_on_send(member: &str, author: &str) -> bool {
    member != author
}

/// A deletion takes the message off the count of every member for whom it was counted: not
/// its author, watermark below it.
pub fn counted_for(member: &str, read_seq: i64, author: &str, seq: i64) -> bool {
    member != author && read_seq < seq
}

/// Where a watermark moves when its member reads up to `seq`: forward only.
pub fn read_to(read_seq: i64, seq: i64) -> Option<i64> {
    (seq > read_seq).then_some(seq)
}

/// The saturating `u32` of a stored count.
pub fn count(n: i64) -> u32 {
    u32::try_from(n.max(0)).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn text_is_kept_as_sent_within_its_limits() {
        assert_eq!(text("  hi <b>there</b>\n").unwrap(), "  hi <b>there</b>\n");
        assert!(text(&"é".repeat(TEXT_MAX_CHARS)).is_ok());
        let long = text(&"é".repeat(TEXT_MAX_CHARS + 1)).unwrap_err();
        assert!(long.to_string().contains("4001 characters"), "{long}");
        assert!(text(" \n\t").unwrap_err().to_string().contains("required"));
        assert!(text("a\u{7}b").unwrap_err().to_string().contains("U+0007"));
    }

    #[test]
    fn names_are_one_trimmed_line() {
        assert_eq!(name("name", "  Team  ").unwrap(), "Team");
        assert!(name("name", "a\nb").is_err());
        assert!(name("title", "").unwrap_err().to_string().contains("title"));
        assert!(name("name", &"x".repeat(101)).is_err());
    }

    #[test]
    fn an_emoji_is_one_emoji_or_a_shortcode() {
        for good in ["👍", "❤️", "👍🏽", "🇫🇷", "1️⃣", "#️⃣", ":party:", ":+1:"]
        {
            assert!(emoji(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "a",
            "ok",
            "👍 ",
            ":Party:",
            "::",
            "<b>",
            &"👍".repeat(9),
        ] {
            assert!(emoji(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn mentions_resolve_to_members_other_than_the_author_once_each() {
        let members = ["alice", "bob", "carol.x"];
        let is_member = |id: &str| members.contains(&id);
        let found = mentions(
            "@bob hi, @carol.x. and @bob again; @dave is no member, mail bob@alice or @alice",
            "alice",
            is_member,
        )
        .unwrap();
        assert_eq!(found, vec!["bob", "carol.x"]);
    }

    #[test]
    fn too_many_mentions_are_refused() {
        let text: String = (0..=MAX_MENTIONS).map(|i| format!("@u{i} ")).collect();
        let error = mentions(&text, "me", |_| true).unwrap_err();
        assert!(error.to_string().contains("at most 50"), "{error}");
    }

    #[test]
    fn a_direct_pair_is_two_different_users_in_order() {
        assert_eq!(
            direct_pair("bob", "alice").unwrap(),
            ("alice".into(), "bob".into())
        );
        assert!(direct_pair("bob", "bob").is_err());
        assert!(direct_pair("bob", "has space").is_err());
    }

    fn group(members: &[(&str, Role)]) -> Group {
        Group {
            members: members.iter().map(|(u, r)| ((*u).to_owned(), *r)).collect(),
        }
    }

    #[test]
    fn only_admins_add_and_remove_and_adding_twice_changes_nothing() {
        let g = group(&[("ann", Role::Admin), ("ben", Role::Member)]);
        let add = |user: &str, role| GroupCommand::Add {
            user: user.into(),
            role,
        };
        let (next, change) = decide_group(&g, add("cal", Role::Member), "ann", 10).unwrap();
        assert_eq!(
            change,
            GroupChange::Joined {
                user: "cal".into(),
                role: Role::Member
            }
        );
        assert_eq!(next.members.len(), 3);
        assert_eq!(
            decide_group(&g, add("ben", Role::Member), "ann", 10)
                .unwrap()
                .1,
            GroupChange::Unchanged
        );
        assert!(matches!(
            decide_group(&g, add("cal", Role::Member), "ben", 10),
            Err(RuleError::Forbidden(_))
        ));
        assert!(matches!(
            decide_group(&g, GroupCommand::Remove { user: "ann".into() }, "ben", 10),
            Err(RuleError::Forbidden(_))
        ));
        assert!(matches!(
            decide_group(&g, add("cal", Role::Member), "zed", 10),
            Err(RuleError::Forbidden(_))
        ));
        assert!(matches!(
            decide_group(&g, add("cal", Role::Member), "ann", 2),
            Err(RuleError::Precondition(_))
        ));
    }

    #[test]
    fn a_group_keeps_an_admin_while_it_has_members() {
        let g = group(&[("ann", Role::Admin), ("ben", Role::Member)]);
        assert!(matches!(
            decide_group(&g, GroupCommand::Leave, "ann", 10),
            Err(RuleError::Precondition(_))
        ));
        let demote = GroupCommand::Add {
            user: "ann".into(),
            role: Role::Member,
        };
        assert!(matches!(
            decide_group(&g, demote, "ann", 10),
            Err(RuleError::Precondition(_))
        ));
        let (_, left) = decide_group(&g, GroupCommand::Leave, "ben", 10).unwrap();
        assert_eq!(
            left,
            GroupChange::Left {
                user: "ben".into(),
                role: Role::Member
            }
        );
        let alone = group(&[("ann", Role::Admin)]);
        let (next, _) = decide_group(&alone, GroupCommand::Leave, "ann", 10).unwrap();
        assert!(next.members.is_empty(), "the last member may leave");
        assert!(decide_group(&g, GroupCommand::Remove { user: "ann".into() }, "ann", 10).is_err());
    }

    #[test]
    fn only_the_author_edits_or_deletes_and_a_tombstone_stays_one() {
        let live = Message {
            author: "ann".into(),
            version: 1,
            deleted: false,
        };
        assert_eq!(
            decide_message(&live, MessageCommand::Edit, "ann").unwrap(),
            MessageChange::Changed { version: 2 }
        );
        assert!(matches!(
            decide_message(&live, MessageCommand::Delete, "ben"),
            Err(RuleError::Forbidden(_))
        ));
        let gone = Message {
            deleted: true,
            ..live
        };
        assert_eq!(
            decide_message(&gone, MessageCommand::Delete, "ann").unwrap(),
            MessageChange::AlreadyDeleted
        );
        assert!(matches!(
            decide_message(&gone, MessageCommand::Edit, "ann"),
            Err(RuleError::Precondition(_))
        ));
    }

    #[test]
    fn reactions_toggle_and_keep_their_first_order_within_the_emoji_bound() {
        let (added, summary) = toggle(&[], false, "👍", 10).unwrap();
        assert!(added);
        let (_, summary) = toggle(&summary, false, "❤️", 20).unwrap();
        let (_, summary) = toggle(&summary, false, "👍", 30).unwrap();
        assert_eq!(
            summary
                .iter()
                .map(|e| (e.emoji.as_str(), e.count))
                .collect::<Vec<_>>(),
            vec![("👍", 2), ("❤️", 1)]
        );
        let (added, summary) = toggle(&summary, true, "❤️", 40).unwrap();
        assert!(!added);
        assert_eq!(summary.len(), 1);
        let full: Vec<EmojiCount> = (0..MAX_EMOJI_PER_MESSAGE)
            .map(|i| EmojiCount {
                emoji: format!(":e{i}:"),
                count: 1,
                first_ms: i as i64,
            })
            .collect();
        assert!(matches!(
            toggle(&full, false, ":new:", 99),
            Err(RuleError::Precondition(_))
        ));
        assert!(toggle(&full, false, ":e3:", 99).is_ok());
    }

    #[test]
    fn cursors_round_trip_and_foreign_tokens_are_refused() {
        let cursor = ConversationCursor {
            activity_ms: 1_700_000_000_000,
            id: 42,
        };
        assert_eq!(
            ConversationCursor::parse(&cursor.encode()).unwrap(),
            Some(cursor)
        );
        assert!(ConversationCursor::parse("x").is_err());
        assert_eq!(messages_cursor("17").unwrap(), Some(17));
        assert!(messages_cursor("-1").is_err());
        assert_eq!(page_size(0).unwrap(), PAGE_DEFAULT);
        assert!(page_size(101).is_err());
    }

    // ------------------------------------------------------------------------------------
    // Unread counters against counts computed from the rows

    /// A conversation as rows: messages (author, deleted) numbered 1, 2, 3…, and members
    /// with their watermark and counter, changed only through the rules above.
    #[derive(Debug, Default)]
    struct Model {
        messages: Vec<(usize, bool)>,
        members: BTreeMap<usize, (i64, i64)>,
    }

    #[derive(Debug, Clone)]
    enum Op {
        Send(usize),
        Delete(usize),
        /// A member reads up to a message (from one of its devices: several devices of one
        /// member race, in any order).
        Read(usize, usize),
        Remove(usize),
        Add(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0usize..4).prop_map(Op::Send),
            1 => (0usize..64).prop_map(Op::Delete),
            3 => (0usize..4, 0usize..64).prop_map(|(m, s)| Op::Read(m, s)),
            1 => (0usize..4).prop_map(Op::Remove),
            1 => (0usize..4).prop_map(Op::Add),
        ]
    }

    fn name_of(member: usize) -> String {
        format!("u{member}")
    }

    impl Model {
        fn apply(&mut self, op: &Op) {
            match *op {
                Op::Send(author) => {
                    if !self.members.contains_key(&author) {
                        return;
                    }
                    self.messages.push((author, false));
                    for (member, (_, unread)) in self.members.iter_mut() {
                        if counts_on_send(&name_of(*member), &name_of(author)) {
                            *unread += 1;
                        }
                    }
                }
                Op::Delete(index) => {
                    let Some((author, deleted)) = self.messages.get(index).copied() else {
                        return;
                    };
                    let check = Message {
                        author: name_of(author),
                        version: 1,
                        deleted,
                    };
                    if decide_message(&check, MessageCommand::Delete, &name_of(author))
                        != Ok(MessageChange::Changed { version: 2 })
                    {
                        return;
                    }
                    self.messages[index].1 = true;
                    let seq = index as i64 + 1;
                    for (member, (read_seq, unread)) in self.members.iter_mut() {
                        if counted_for(&name_of(*member), *read_seq, &name_of(author), seq) {
                            *unread -= 1;
                        }
                    }
                }
                Op::Read(member, index) => {
                    if index >= self.messages.len() {
                        return;
                    }
                    let Some((read_seq, _)) = self.members.get(&member).copied() else {
                        return;
                    };
                    if let Some(to) = read_to(read_seq, index as i64 + 1) {
                        // What the database counts from the rows when the watermark moves.
                        let unread = self.counted_from_rows(member, to);
                        self.members.insert(member, (to, unread));
                    }
                }
                Op::Remove(member) => {
                    self.members.remove(&member);
                }
                Op::Add(member) => {
                    let top = self.messages.len() as i64;
                    self.members.entry(member).or_insert((top, 0));
                }
            }
        }

        fn counted_from_rows(&self, member: usize, read_seq: i64) -> i64 {
            self.messages
                .iter()
                .enumerate()
                .filter(|(i, (author, deleted))| {
                    !deleted && *author != member && (*i as i64 + 1) > read_seq
                })
                .count() as i64
        }
    }

    proptest! {
        /// However sends, deletions, reads (from racing devices), removals and re-additions
        /// interleave, every member's counter equals the unread messages counted from the
        /// rows, and the total is the sum.
        #[test]
        fn unread_counters_equal_the_counts_computed_from_the_rows(
            ops in prop::collection::vec(op(), 0..80)
        ) {
            let mut model = Model::default();
            for member in 0..3 {
                model.members.insert(member, (0, 0));
            }
            for op in &ops {
                model.apply(op);
                for (member, (read_seq, unread)) in &model.members {
                    prop_assert!(*unread >= 0);
                    prop_assert_eq!(*unread, model.counted_from_rows(*member, *read_seq), "after {:?}", op);
                }
            }
            let total: i64 = model.members.values().map(|(_, u)| u).sum();
            let recomputed: i64 = model
                .members
                .iter()
                .map(|(m, (r, _))| model.counted_from_rows(*m, *r))
                .sum();
            prop_assert_eq!(total, recomputed);
        }
    }
}
