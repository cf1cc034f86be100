//! Presence in Redis, shared by every node.
//!
//! A topic's members are a sorted set `{p}:p:{topic}`: one entry per connection,
//! `user \x1f node:connection \x1f joined-ms`, scored by when it expires (Redis time). Each
//! node refreshes the entries of its own connections every third of the TTL (adding back
//! any that Redis lost); a node that crashed stops refreshing, so its members disappear
//! within the TTL (no leave is announced for them). The command connection is opened again
//! after it broke, so presence goes on after a Redis restart. Every script first drops expired entries, so `members` never lists them.
//! Counting a user's connections scans the topic's set: cost per join/leave is the topic's
//! member count.
//!
//! Who is online ([`OnlineDirectory`]): `{p}:o:{user}` is a sorted set of the nodes with a
//! stream of the user, scored by when the record expires; `{p}:o` indexes users by their
//! latest expiry, so the users of a crashed node are found (their expiry passed) and claimed
//! by exactly one node, which announces them offline. Each node refreshes its users' records
//! with its presence entries. The scripts touch the keys of users they are given (keys are
//! computed inside the sweep, so this needs a single Redis, not Redis Cluster).

use std::{
    collections::HashMap,
    fmt,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use async_trait::async_trait;
use futures_util::StreamExt;
use herald_proto::{support::lock, v1::PresenceMember};
use redis::Script;
use tokio_util::sync::CancellationToken;

use super::{ConnectionId, OnlineDirectory, Presence};
use crate::{
    broker::{BrokerError, redis_connection::Commands},
    topic::Topic,
};

const SCRIPT: &str = r"
local key, op, user, member, ttl = KEYS[1], ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', key, '-inf', '(' .. string.format('%d', now))
local removed = 1
if op == 'join' then
  redis.call('ZADD', key, string.format('%d', now + ttl), member)
elseif op == 'refresh' then
  -- Added back too: after Redis lost its data the node's members reappear within a third
  -- of the TTL.
  redis.call('ZADD', key, string.format('%d', now + ttl), member)
elseif op == 'leave' then
  removed = redis.call('ZREM', key, member)
end
if op ~= 'members' and redis.call('EXISTS', key) == 1 then redis.call('PEXPIRE', key, ttl) end
if op == 'refresh' then return {1, 0, 0} end
local all = redis.call('ZRANGE', key, 0, -1)
if op == 'members' then return all end
local prefix = user .. '\31'
local count, since = 0, 0
for _, m in ipairs(all) do
  if string.sub(m, 1, #prefix) == prefix then
    count = count + 1
    local joined = tonumber(string.match(m, '\31(%d+)$'))
    if since == 0 or joined < since then since = joined end
  end
end
return {removed, count, since}
";

const ONLINE: &str = r"
local op, node, ttl, prefix = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local index = KEYS[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expired = '(' .. string.format('%d', now)
local function live(key)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', expired)
  return redis.call('ZCARD', key)
end
local function keep(user)
  local key = prefix .. user
  local until_ = string.format('%d', now + ttl)
  redis.call('ZADD', key, until_, node)
  redis.call('PEXPIRE', key, ttl)
  redis.call('ZADD', index, 'GT', until_, user)
end
if op == 'arrive' then
  local user = ARGV[5]
  local key = prefix .. user
  local others = live(key)
  if redis.call('ZSCORE', key, node) then others = others - 1 end
  keep(user)
  if others == 0 then return 1 end
  return 0
elseif op == 'depart' then
  local user = ARGV[5]
  local key = prefix .. user
  redis.call('ZREM', key, node)
  if live(key) == 0 then
    redis.call('DEL', key)
    return redis.call('ZREM', index, user)
  end
  return 0
elseif op == 'online' then
  local out = {}
  for i = 5, #ARGV do
    if live(prefix .. ARGV[i]) > 0 then out[#out + 1] = 1 else out[#out + 1] = 0 end
  end
  return out
end
-- refresh: keep this node's users, then claim the users whose every record expired
for i = 5, #ARGV do keep(ARGV[i]) end
local gone = {}
for _, user in ipairs(redis.call('ZRANGEBYSCORE', index, '-inf', expired, 'LIMIT', 0, 1000)) do
  local key = prefix .. user
  if live(key) == 0 then
    redis.call('DEL', key)
    redis.call('ZREM', index, user)
    gone[#gone + 1] = user
  else
    local newest = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
    redis.call('ZADD', index, newest[2], user)
  end
end
return gone
";

/// Presence refreshes a node keeps in flight at once.
const REFRESHES_IN_FLIGHT: usize = 64;

/// Users refreshed per script call.
const USERS_PER_REFRESH: usize = 500;

/// Presence in Redis (see the module header).
#[derive(Clone)]
pub struct RedisPresence {
    shared: Arc<Shared>,
}

struct Shared {
    /// Reconnected after it broke (a Redis restart), like the broker's.
    commands: Commands,
    prefix: String,
    node: String,
    ttl: Duration,
    script: Script,
    online: Script,
    /// This node's connections: (topic, user, connection) → the entry in Redis.
    local: Mutex<HashMap<(Topic, String, ConnectionId), String>>,
}

impl fmt::Debug for RedisPresence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisPresence")
            .field("node", &self.shared.node)
            .field("ttl", &self.shared.ttl)
            .finish_non_exhaustive()
    }
}

fn failed(error: &redis::RedisError) -> BrokerError {
    BrokerError::Backend(format!("redis presence: {error}"))
}

fn time_of(ms: u64) -> herald_proto::wkt::Timestamp {
    herald_proto::timestamp(SystemTime::UNIX_EPOCH + Duration::from_millis(ms))
}

impl RedisPresence {
    /// Connects and starts refreshing this node's entries every third of `ttl` until
    /// `shutdown` fires.
    pub async fn connect(
        url: &str,
        prefix: &str,
        ttl: Duration,
        shutdown: CancellationToken,
    ) -> Result<RedisPresence, BrokerError> {
        let client = redis::Client::open(url).map_err(|error| {
            BrokerError::Backend(format!("the broker URL {url:?} is invalid: {error}"))
        })?;
        let commands = Commands::new(client);
        // Connected at start: an unreachable Redis fails the start.
        commands.get().await.map_err(|error| failed(&error))?;
        let presence = RedisPresence {
            shared: Arc::new(Shared {
                commands,
                prefix: prefix.to_owned(),
                node: uuid::Uuid::new_v4().simple().to_string(),
                ttl: ttl.max(Duration::from_millis(30)),
                script: Script::new(SCRIPT),
                online: Script::new(ONLINE),
                local: Mutex::new(HashMap::new()),
            }),
        };
        tokio::spawn(refresh(presence.shared.clone(), shutdown));
        Ok(presence)
    }

    fn key(&self, topic: &Topic) -> String {
        format!("{}:p:{}", self.shared.prefix, topic.as_str())
    }

    async fn run(
        &self,
        topic: &Topic,
        op: &str,
        user: &str,
        member: &str,
    ) -> Result<(i64, u32, u64), BrokerError> {
        run(&self.shared, &self.key(topic), op, user, member).await
    }
}

async fn run(
    shared: &Shared,
    key: &str,
    op: &str,
    user: &str,
    member: &str,
) -> Result<(i64, u32, u64), BrokerError> {
    shared
        .invoke(
            shared
                .script
                .key(key)
                .arg(op)
                .arg(user)
                .arg(member)
                .arg(u64::try_from(shared.ttl.as_millis()).unwrap_or(u64::MAX)),
        )
        .await
}

impl Shared {
    /// Runs a script on the command connection; a connection that broke is replaced for the
    /// next call.
    async fn invoke<T: redis::FromRedisValue>(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<T, BrokerError> {
        let mut connection = self.commands.get().await.map_err(|error| failed(&error))?;
        match invocation.invoke_async(&mut connection).await {
            Ok(answer) => Ok(answer),
            Err(error) => {
                self.commands.failed(&error).await;
                Err(failed(&error))
            }
        }
    }
}

async fn refresh(shared: Arc<Shared>, shutdown: CancellationToken) {
    let mut ticker = tokio::time::interval(shared.ttl / 3);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let entries: Vec<_> = lock(&shared.local)
            .iter()
            .map(|(id, member)| (id.clone(), member.clone()))
            .collect();
        // Many in flight on the multiplexed connection: one round trip per entry would cap
        // a node at TTL / round trip entries.
        let refreshes = futures_util::stream::iter(entries)
            .map(|(id, member)| {
                let shared = &shared;
                async move {
                    // A connection that left since the list was taken is not added back.
                    if !lock(&shared.local).contains_key(&id) {
                        return Ok(());
                    }
                    let (topic, user, _) = &id;
                    let key = format!("{}:p:{}", shared.prefix, topic.as_str());
                    run(shared, &key, "refresh", user, &member).await.map(drop)
                }
            })
            .buffer_unordered(REFRESHES_IN_FLIGHT);
        futures_util::pin_mut!(refreshes);
        while let Some(result) = refreshes.next().await {
            if let Err(error) = result {
                tracing::warn!(%error, "refreshing presence in Redis failed");
                break;
            }
        }
    }
}

fn joined_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
        })
}

#[async_trait]
impl Presence for RedisPresence {
    async fn join(
        &self,
        topic: &Topic,
        user_id: &str,
        connection: ConnectionId,
    ) -> Result<Option<PresenceMember>, BrokerError> {
        let member = format!(
            "{user_id}\x1f{}:{}\x1f{}",
            self.shared.node,
            connection.0,
            joined_ms()
        );
        lock(&self.shared.local).insert(
            (topic.clone(), user_id.to_owned(), connection),
            member.clone(),
        );
        let (_, count, since) = self.run(topic, "join", user_id, &member).await?;
        Ok((count == 1).then(|| PresenceMember {
            user_id: user_id.to_owned(),
            connections: 1,
            since: Some(time_of(since)),
        }))
    }

    async fn leave(
        &self,
        topic: &Topic,
        user_id: &str,
        connection: ConnectionId,
    ) -> Result<Option<PresenceMember>, BrokerError> {
        let Some(member) =
            lock(&self.shared.local).remove(&(topic.clone(), user_id.to_owned(), connection))
        else {
            return Ok(None);
        };
        let (removed, count, _) = self.run(topic, "leave", user_id, &member).await?;
        let joined = member
            .rsplit('\x1f')
            .next()
            .and_then(|ms| ms.parse().ok())
            .unwrap_or(0);
        Ok((removed == 1 && count == 0).then(|| PresenceMember {
            user_id: user_id.to_owned(),
            connections: 0,
            since: Some(time_of(joined)),
        }))
    }

    fn online_directory(&self) -> Option<Arc<dyn OnlineDirectory>> {
        Some(Arc::new(self.clone()))
    }

    async fn members(&self, topic: &Topic) -> Result<Vec<PresenceMember>, BrokerError> {
        let entries: Vec<String> = self
            .shared
            .invoke(
                self.shared
                    .script
                    .key(self.key(topic))
                    .arg("members")
                    .arg("")
                    .arg("")
                    .arg(u64::try_from(self.shared.ttl.as_millis()).unwrap_or(u64::MAX)),
            )
            .await?;
        let mut by_user: HashMap<String, (u32, u64)> = HashMap::new();
        for entry in &entries {
            let mut parts = entry.split('\x1f');
            let (Some(user), Some(_), Some(joined)) = (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let joined: u64 = joined.parse().unwrap_or(0);
            let slot = by_user.entry(user.to_owned()).or_insert((0, joined));
            slot.0 += 1;
            slot.1 = slot.1.min(joined);
        }
        let mut members: Vec<PresenceMember> = by_user
            .into_iter()
            .map(|(user_id, (connections, since))| PresenceMember {
                user_id,
                connections,
                since: Some(time_of(since)),
            })
            .collect();
        members.sort_by(|a, b| a.user_id.cmp(&b.user_id));
        Ok(members)
    }
}

impl RedisPresence {
    async fn online_script<T: redis::FromRedisValue>(
        &self,
        op: &str,
        users: &[String],
    ) -> Result<T, BrokerError> {
        let shared = &self.shared;
        let mut invocation = shared.online.key(format!("{}:o", shared.prefix));
        invocation
            .arg(op)
            .arg(&shared.node)
            .arg(u64::try_from(shared.ttl.as_millis()).unwrap_or(u64::MAX))
            .arg(format!("{}:o:", shared.prefix));
        for user in users {
            invocation.arg(user);
        }
        shared.invoke(&invocation).await
    }
}

#[async_trait]
impl OnlineDirectory for RedisPresence {
    async fn arrived(&self, user_id: &str) -> Result<bool, BrokerError> {
        let first: i64 = self
            .online_script("arrive", std::slice::from_ref(&user_id.to_owned()))
            .await?;
        Ok(first == 1)
    }

    async fn departed(&self, user_id: &str) -> Result<bool, BrokerError> {
        let last: i64 = self
            .online_script("depart", std::slice::from_ref(&user_id.to_owned()))
            .await?;
        Ok(last == 1)
    }

    async fn online(&self, users: &[String]) -> Result<Vec<bool>, BrokerError> {
        let mut online = Vec::with_capacity(users.len());
        for chunk in users.chunks(USERS_PER_REFRESH) {
            let answers: Vec<i64> = self.online_script("online", chunk).await?;
            online.extend(answers.into_iter().map(|answer| answer == 1));
        }
        Ok(online)
    }

    async fn refresh(&self, users: &[String]) -> Result<Vec<String>, BrokerError> {
        let mut gone = Vec::new();
        // An empty call still sweeps the crashed nodes' users.
        let chunks: Vec<&[String]> = if users.is_empty() {
            vec![&[]]
        } else {
            users.chunks(USERS_PER_REFRESH).collect()
        };
        for chunk in chunks {
            let claimed: Vec<String> = self.online_script("refresh", chunk).await?;
            gone.extend(claimed);
        }
        Ok(gone)
    }

    fn refresh_every(&self) -> Duration {
        self.shared.ttl / 3
    }
}
