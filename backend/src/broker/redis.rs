//! The Redis broker: offsets, history and fan-out shared by every node of a cluster.
//!
//! Keys (all under a prefix, `herald` by default; one Redis, not Redis Cluster):
//!
//! - `{p}:g` — the generation, `<run_id>:<random>`: the `run_id` of the Redis process that
//!   created it (random per start of `redis-server`) and a random value. Every script that
//!   reads it is given the `run_id` of the process its connection reached and replaces a
//!   generation of another process. So a flush, a restart without persistence, a restart
//!   that loaded a snapshot (RDB or AOF: the same keys with older tops) and a failover to a
//!   replica each begin a new generation, and with it new epochs for every memory topic.
//! - `{p}:t:{topic}:m` — a hash with the topic's `epoch` and `top` (its newest offset); `d`
//!   marks a durable topic (written by `append`). A memory topic's epoch is derived from the
//!   generation and the topic, so a topic never written to reports offset 0 of the epoch its
//!   first publish will have, and a read keeps nothing; a memory topic whose epoch is not the
//!   current generation's is of an older one and begins again (stream deleted, offset 1 of
//!   the new epoch). A durable topic's epoch and offsets come from the database: its stream
//!   is a cache, checked against its top by `append`. This key has no TTL: it is what keeps
//!   offsets from being reused. Run Redis with `maxmemory-policy noeviction` or a
//!   `volatile-*` policy (only keys with a TTL are evicted).
//! - `{p}:t:{topic}:s` — the capped stream of recent events. Entry ids are `0-<offset>`;
//!   fields `t` (Redis time in ms) and `m` (the message, as published). `MAXLEN` is
//!   `retention.history_max_events`; entries older than `retention.history_max_age` are
//!   trimmed by the next read or write, and the whole stream expires after that age of quiet.
//! - `{p}:i:{len}:{topic}:{len}:{publisher}:{key}` — an idempotency key with its first answer,
//!   expiring after `retention.idempotency_window`.
//! - `{p}:ip:{len}:{publisher}` — the publisher's share of idempotency keys
//!   (`retention.max_idempotency_keys_per_publisher`, all topics together): a sorted set of
//!   the names of its key entries above, scored by Redis time in µs. A publish with a new key
//!   drops the members older than the window, then, at the share, forgets the publisher's
//!   oldest keys (`ZPOPMIN` + `DEL`, counted as `evicted_keys`) before it adds its own; the set
//!   expires after a window of quiet. The script touches those key entries by name (one Redis,
//!   not Redis Cluster).
//! - `{p}:t:{topic}:k` — the latest keyed signals of a topic: a hash, field = the signal's key,
//!   value = `<expiry> <Signal bytes>` (expiry in µs of Redis time). One script keeps a signal:
//!   a new key at `topics.max_signal_keys_per_topic` first drops the expired fields and, still
//!   at the bound, is not kept (delivered, counted as `unkept_signals`); the hash's `PEXPIRE`
//!   is at least the TTL, so an idle topic's hash is gone one TTL after its last signal. A read
//!   is another script that returns the fields not expired and deletes the expired ones: it
//!   creates nothing.
//! - channel `{p}:c:{topic}` — live messages: `e<offset> <epoch> <Event bytes>` (the event's
//!   own offset and epoch fields are left empty in the bytes), `p<PresenceChange bytes>`,
//!   `s<Signal bytes>`.
//!
//! `publish` is one Lua script (idempotency, epoch, next offset, XADD, PUBLISH), so offsets
//! per topic are gapless and pub/sub order is offset order. `append` (the relay's durable
//! path) is another. A node holds one pub/sub connection and one channel subscription per
//! topic it has local subscribers for (the hub tells it, [`TopicWatcher`]); messages go into
//! the local hub. The node remembers the last offset it delivered per topic: a message past
//! the next offset, or a reconnect after the pub/sub connection dropped (Redis drops slow
//! pub/sub clients), makes it read the missing range from the stream and deliver it first; a
//! range the stream no longer covers reaches subscribers as a gap, which ends a memory
//! subscription with `Gap` (the client resumes, `recovered = false`) and sends a durable one
//! to the database. Never a silent gap.
//!
//! `history` waits until this node's channel subscription for the topic is confirmed when
//! the topic has local subscribers, which keeps the contract that a subscriber registered
//! with the hub before reading history misses nothing.
//!
//! Bounds: per topic, the stream's count and age, the idempotency window and the kept signal
//! keys; per publisher, its share of idempotency keys (as the memory broker); all topics
//! together, Redis's own `maxmemory`. A write Redis refuses for memory
//! (`OOM`) is [`BrokerError::AtCapacity`].

use std::{
    collections::{HashMap, HashSet},
    fmt,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use async_trait::async_trait;
use futures_util::StreamExt;
use herald_proto::{
    support::lock,
    v1::{Event, PresenceChange, Signal, StreamPosition},
};
use prost::Message;
use redis::Script;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use super::{
    Appended, Broker, BrokerError, BrokerStats, EventDraft, HistoryPage, HistoryStart, Published,
    memory::RetentionConfig,
    redis_connection::{self, Commands, Connection},
};
use crate::{
    event::SharedEvent,
    hub::{Hub, HubItem, TopicWatcher},
    signals::SignalLimits,
    topic::Topic,
};

/// How long `history` waits for this node's channel subscription to be confirmed.
const SUBSCRIBE_WAIT: Duration = Duration::from_secs(5);
/// The most events one gap fill reads from the stream.
const FILL_LIMIT: usize = 10_000;

/// The generation of this Redis's data, `<run_id>:<random>`: kept while the stored run id
/// is the one of the process answering (`ARGV` of the caller, read when its connection was
/// opened), replaced otherwise, so a Redis restarted from a snapshot (same keys, older tops)
/// begins a new generation instead of handing out an offset again.
macro_rules! generation_lua {
    () => {
        r"
local function generation(gkey, run, fresh)
  local g = redis.call('GET', gkey)
  if g and string.sub(g, 1, #run + 1) == run .. ':' then return g end
  g = run .. ':' .. fresh
  redis.call('SET', gkey, g)
  return g
end
"
    };
}

const PUBLISH: &str = concat!(
    generation_lua!(),
    r"
local meta, stream, idem, gkey, share = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local evicted = 0
if ARGV[3] == '1' then
  local seen = redis.call('GET', idem)
  if seen then return {1, seen, 0} end
  local t = redis.call('TIME')
  local us = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local window = tonumber(ARGV[4])
  redis.call('ZREMRANGEBYSCORE', share, '-inf', string.format('%d', us - window * 1000))
  if not redis.call('ZSCORE', share, idem) then
    local over = redis.call('ZCARD', share) - tonumber(ARGV[10]) + 1
    if over > 0 then
      local oldest = redis.call('ZPOPMIN', share, over)
      for i = 1, #oldest, 2 do evicted = evicted + redis.call('DEL', oldest[i]) end
    end
  end
  redis.call('ZADD', share, string.format('%d', us), idem)
  redis.call('PEXPIRE', share, window)
end
local g = generation(gkey, ARGV[11], ARGV[7])
local epoch = string.sub(redis.sha1hex(g .. ':' .. ARGV[8]), 1, 20)
local top = 0
local kept = redis.call('HMGET', meta, 'epoch', 'top')
if kept[1] == epoch then
  top = tonumber(kept[2])
else
  redis.call('DEL', stream)
end
top = top + 1
local offset = string.format('%d', top)
redis.call('HSET', meta, 'epoch', epoch, 'top', offset)
local t = redis.call('TIME')
local now = string.format('%d', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
local msg = 'e' .. offset .. ' ' .. epoch .. ' ' .. ARGV[1]
redis.call('XADD', stream, 'MAXLEN', ARGV[5], '0-' .. offset, 't', now, 'm', msg)
redis.call('PEXPIRE', stream, ARGV[6])
local answer = offset .. ' ' .. epoch .. ' ' .. ARGV[2]
if ARGV[3] == '1' then redis.call('SET', idem, answer, 'PX', ARGV[4]) end
redis.call('PUBLISH', ARGV[9], msg)
return {0, answer, evicted}
"
);

const KEEP_SIGNAL: &str = r"
local hash, field = KEYS[1], ARGV[1]
local ttl, max = tonumber(ARGV[2]), tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
if redis.call('HEXISTS', hash, field) == 0 and redis.call('HLEN', hash) >= max then
  local all = redis.call('HGETALL', hash)
  for i = 1, #all, 2 do
    local space = string.find(all[i + 1], ' ', 1, true)
    if not space or tonumber(string.sub(all[i + 1], 1, space - 1)) <= now then
      redis.call('HDEL', hash, all[i])
    end
  end
  if redis.call('HLEN', hash) >= max then return 0 end
end
redis.call('HSET', hash, field, string.format('%d', now + ttl * 1000) .. ' ' .. ARGV[4])
if redis.call('PTTL', hash) < ttl then redis.call('PEXPIRE', hash, ttl) end
return 1
";

const LATEST_SIGNALS: &str = r"
local hash = KEYS[1]
local all = redis.call('HGETALL', hash)
if #all == 0 then return {} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local fresh = {}
for i = 1, #all, 2 do
  local space = string.find(all[i + 1], ' ', 1, true)
  if space and tonumber(string.sub(all[i + 1], 1, space - 1)) > now then
    fresh[#fresh + 1] = all[i + 1]
  else
    redis.call('HDEL', hash, all[i])
  end
end
return fresh
";

const APPEND: &str = r"
local meta, stream = KEYS[1], KEYS[2]
local epoch = redis.call('HGET', meta, 'epoch')
local top = tonumber(redis.call('HGET', meta, 'top') or '0')
local offset = tonumber(ARGV[1])
if epoch == ARGV[2] and offset <= top then return 0 end
if epoch ~= ARGV[2] or offset ~= top + 1 then redis.call('DEL', stream) end
redis.call('HSET', meta, 'epoch', ARGV[2], 'top', ARGV[1], 'd', '1')
local t = redis.call('TIME')
local now = string.format('%d', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
redis.call('XADD', stream, 'MAXLEN', ARGV[4], '0-' .. ARGV[1], 't', now, 'm', ARGV[3])
redis.call('PEXPIRE', stream, ARGV[5])
redis.call('PUBLISH', ARGV[6], ARGV[3])
return 1
";

const HISTORY: &str = concat!(
    generation_lua!(),
    r"
local meta, stream, gkey = KEYS[1], KEYS[2], KEYS[3]
local g = generation(gkey, ARGV[8], ARGV[7])
local derived = string.sub(redis.sha1hex(g .. ':' .. ARGV[6]), 1, 20)
local kept = redis.call('HMGET', meta, 'epoch', 'top', 'd')
local epoch = kept[1]
if epoch and epoch ~= derived and kept[3] ~= '1' then
  redis.call('DEL', meta, stream)
  epoch = nil
end
if not epoch then
  local covered = 1
  if ARGV[1] == 'after' and not (ARGV[3] == derived and tonumber(ARGV[2]) == 0) then covered = 0 end
  return {derived, 0, covered, {}}
end
local top = tonumber(kept[2])
local t = redis.call('TIME')
local cutoff = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) - tonumber(ARGV[5])
local oldest = top + 1
local from = '-'
local aged = false
while true do
  local batch = redis.call('XRANGE', stream, from, '+', 'COUNT', 64)
  if #batch == 0 then break end
  local found = false
  for _, entry in ipairs(batch) do
    local off = tonumber(string.sub(entry[1], 3))
    if tonumber(entry[2][2]) >= cutoff then oldest = off; found = true; break end
    aged = true
    from = '(' .. entry[1]
  end
  if found then break end
end
if aged then redis.call('XTRIM', stream, 'MINID', '0-' .. string.format('%d', oldest)) end
local first = oldest
if ARGV[1] == 'after' then
  local since = tonumber(ARGV[2])
  if ARGV[3] ~= epoch or since > top or since + 1 < oldest then return {epoch, top, 0, {}} end
  first = since + 1
end
local events = {}
local limit = tonumber(ARGV[4])
if limit > 0 and first <= top then
  local batch = redis.call('XRANGE', stream, '0-' .. string.format('%d', first), '+', 'COUNT', limit)
  for _, entry in ipairs(batch) do events[#events + 1] = entry[2][4] end
end
return {epoch, top, 1, events}
"
);

/// Where the Redis broker connects and how it names its keys.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `redis://host:port/db` (or `rediss://` when the client is built with TLS).
    pub url: String,
    /// Prefix of every key and channel, so several clusters can share one Redis.
    pub prefix: String,
    /// The bounds of the latest keyed signals (only the per-topic one applies here).
    pub signals: SignalLimits,
}

impl RedisConfig {
    pub fn new(url: impl Into<String>) -> RedisConfig {
        RedisConfig {
            url: url.into(),
            prefix: "herald".into(),
            signals: SignalLimits::default(),
        }
    }
}

/// One topic this node subscribes to on Redis.
#[derive(Debug, Default)]
struct TopicState {
    /// The channel subscription on the current pub/sub connection is confirmed.
    confirmed: bool,
    /// The last event delivered into the hub (epoch, offset).
    last: Option<(String, u64)>,
}

#[derive(Debug, Default)]
struct Counters {
    delivered: [AtomicU64; 3],
    refused: AtomicU64,
    evicted_keys: AtomicU64,
    unkept_signals: AtomicU64,
    fills: AtomicU64,
    reconnects: AtomicU64,
}

struct Shared {
    hub: Arc<Hub>,
    client: redis::Client,
    prefix: String,
    retention: RetentionConfig,
    signals: SignalLimits,
    commands: Commands,
    topics: Mutex<HashMap<Topic, TopicState>>,
    dirty: Mutex<HashSet<Topic>>,
    wake: Notify,
    /// Bumped whenever subscriptions were confirmed (waiters in `history` re-check).
    confirmed: watch::Sender<u64>,
    /// The pub/sub connection is up.
    connected: AtomicBool,
    counters: Counters,
    publish: Script,
    append: Script,
    history: Script,
    keep_signal: Script,
    latest_signals: Script,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBroker")
            .field("prefix", &self.prefix)
            .field("connected", &self.connected.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// The Redis broker (see the module header).
#[derive(Debug, Clone)]
pub struct RedisBroker {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Watcher(std::sync::Weak<Shared>);

impl TopicWatcher for Watcher {
    fn listeners_changed(&self, topic: &Topic) {
        if let Some(shared) = self.0.upgrade() {
            lock(&shared.dirty).insert(topic.clone());
            shared.wake.notify_one();
        }
    }
}

fn backend(error: &redis::RedisError) -> BrokerError {
    BrokerError::Backend(format!("redis: {error}"))
}

fn random_token() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

impl RedisBroker {
    /// Connects (the first command connection is opened here, so a wrong URL or an
    /// unreachable Redis fails at start) and starts this node's pub/sub task, which runs
    /// until `shutdown` fires.
    pub async fn connect(
        hub: Arc<Hub>,
        config: &RedisConfig,
        retention: RetentionConfig,
        shutdown: CancellationToken,
    ) -> Result<RedisBroker, BrokerError> {
        let client = redis::Client::open(config.url.as_str()).map_err(|error| {
            BrokerError::Backend(format!(
                "the broker URL {:?} is invalid: {error}",
                config.url
            ))
        })?;
        let shared = Arc::new(Shared {
            hub: hub.clone(),
            commands: Commands::new(client.clone()),
            client,
            prefix: config.prefix.clone(),
            retention,
            signals: config.signals,
            topics: Mutex::new(HashMap::new()),
            dirty: Mutex::new(HashSet::new()),
            wake: Notify::new(),
            confirmed: watch::channel(0).0,
            connected: AtomicBool::new(false),
            counters: Counters::default(),
            publish: Script::new(PUBLISH),
            append: Script::new(APPEND),
            history: Script::new(HISTORY),
            keep_signal: Script::new(KEEP_SIGNAL),
            latest_signals: Script::new(LATEST_SIGNALS),
        });
        let broker = RedisBroker { shared };
        broker.connection().await?;
        hub.set_watcher(Arc::new(Watcher(Arc::downgrade(&broker.shared))));
        tokio::spawn(pubsub_task(broker.shared.clone(), shutdown));
        Ok(broker)
    }

    /// Whether Redis answers and this node's pub/sub connection is up (readiness).
    pub async fn is_ready(&self) -> bool {
        if !self.shared.connected.load(Ordering::Relaxed) {
            return false;
        }
        let Ok(mut connection) = self.connection().await else {
            return false;
        };
        let pong: Result<String, _> = redis::cmd("PING").query_async(&mut connection.redis).await;
        if pong.is_err() {
            self.shared.commands.forget().await;
        }
        pong.is_ok()
    }

    /// Hub deliveries so far per lane ([`crate::metrics::LANES`] order).
    pub fn deliveries(&self) -> [u64; 3] {
        self.shared
            .counters
            .delivered
            .each_ref()
            .map(|count| count.load(Ordering::Relaxed))
    }

    /// Gap fills read from the stream, and pub/sub reconnects, so far.
    pub fn recoveries(&self) -> (u64, u64) {
        let c = &self.shared.counters;
        (
            c.fills.load(Ordering::Relaxed),
            c.reconnects.load(Ordering::Relaxed),
        )
    }

    async fn connection(&self) -> Result<Connection, BrokerError> {
        self.shared.connection().await
    }

    fn failed(&self, error: &redis::RedisError) -> BrokerError {
        if error.code() == Some("OOM") {
            self.shared.counters.refused.fetch_add(1, Ordering::Relaxed);
            return BrokerError::AtCapacity(format!(
                "Redis refused the write: it is at its maxmemory ({error}); retry shortly"
            ));
        }
        if redis_connection::broke(error) {
            let shared = self.shared.clone();
            tokio::spawn(async move { shared.commands.forget().await });
        }
        backend(error)
    }
}

impl Shared {
    async fn connection(&self) -> Result<Connection, BrokerError> {
        self.commands
            .connection()
            .await
            .map_err(|error| backend(&error))
    }

    fn topic_key(&self, topic: &Topic, suffix: &str) -> String {
        format!("{}:t:{}:{suffix}", self.prefix, topic.as_str())
    }

    fn channel(&self, topic: &Topic) -> String {
        format!("{}:c:{}", self.prefix, topic.as_str())
    }

    fn topic_of(&self, channel: &str) -> Option<Topic> {
        let name = channel.strip_prefix(&self.prefix)?.strip_prefix(":c:")?;
        Topic::parse(name).ok()
    }

    fn max_age_ms(&self) -> u64 {
        u64::try_from(self.retention.history_max_age.as_millis())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    async fn read_history(
        &self,
        topic: &Topic,
        start: &HistoryStart,
        limit: usize,
    ) -> Result<HistoryPage, redis::RedisError> {
        let mut connection = self.commands.connection().await?;
        let (mode, since_offset, since_epoch) = match start {
            HistoryStart::Oldest => ("oldest", 0, String::new()),
            HistoryStart::After(since) => ("after", since.offset, since.epoch.clone()),
        };
        let (epoch, top, covered, messages): (String, u64, i64, Vec<Vec<u8>>) = self
            .history
            .key(self.topic_key(topic, "m"))
            .key(self.topic_key(topic, "s"))
            .key(format!("{}:g", self.prefix))
            .arg(mode)
            .arg(since_offset)
            .arg(since_epoch)
            .arg(limit)
            .arg(self.max_age_ms())
            .arg(topic.as_str())
            .arg(random_token())
            .arg(&*connection.run_id)
            .invoke_async(&mut connection.redis)
            .await?;
        let events = messages
            .iter()
            .filter_map(|message| decode_event(topic, message))
            .collect();
        Ok(HistoryPage {
            events,
            top: StreamPosition { offset: top, epoch },
            covered: covered == 1,
        })
    }
}

/// Decodes `e<offset> <epoch> <Event bytes>` (`d…` for a durable event the relay appended).
fn decode_event(topic: &Topic, message: &[u8]) -> Option<Arc<SharedEvent>> {
    let rest = message
        .strip_prefix(b"e")
        .or_else(|| message.strip_prefix(b"d"))?;
    let space = rest.iter().position(|b| *b == b' ')?;
    let offset: u64 = std::str::from_utf8(&rest[..space]).ok()?.parse().ok()?;
    let rest = &rest[space + 1..];
    let space = rest.iter().position(|b| *b == b' ')?;
    let epoch = std::str::from_utf8(&rest[..space]).ok()?.to_owned();
    let mut event = match Event::decode(&rest[space + 1..]) {
        Ok(event) => event,
        Err(error) => {
            tracing::warn!(%topic, %error, "an undecodable event in Redis was skipped");
            return None;
        }
    };
    event.offset = offset;
    event.epoch = epoch;
    Some(Arc::new(SharedEvent::new(event)))
}

/// Decodes a kept signal, `<expiry> <Signal bytes>`, into its expiry and the signal.
fn decode_kept_signal(topic: &Topic, value: &[u8]) -> Option<(u64, Signal)> {
    let space = value.iter().position(|b| *b == b' ')?;
    let expiry = std::str::from_utf8(&value[..space]).ok()?.parse().ok()?;
    match Signal::decode(&value[space + 1..]) {
        Ok(signal) => Some((expiry, signal)),
        Err(error) => {
            tracing::warn!(%topic, %error, "an undecodable kept signal in Redis was skipped");
            None
        }
    }
}

fn encode_event(event: &Event, kind: char) -> Vec<u8> {
    let mut bare = event.clone();
    let offset = std::mem::take(&mut bare.offset);
    let epoch = std::mem::take(&mut bare.epoch);
    let mut message = format!("{kind}{offset} {epoch} ").into_bytes();
    bare.encode(&mut message).ok();
    message
}

fn length_prefixed(part: &str) -> String {
    format!("{}:{part}", part.len())
}

#[async_trait]
impl Broker for RedisBroker {
    async fn publish(&self, draft: EventDraft) -> Result<Published, BrokerError> {
        let shared = &self.shared;
        let id = uuid::Uuid::now_v7().to_string();
        let event = Event {
            topic: draft.topic.to_string(),
            offset: 0,
            epoch: String::new(),
            id: id.clone(),
            time: Some(herald_proto::timestamp(SystemTime::now())),
            r#type: draft.event_type,
            data: draft.data,
            publisher: draft.publisher.clone(),
            body: None,
        };
        let body = event.encode_to_vec();
        let idem = match &draft.idempotency_key {
            Some(key) => format!(
                "{}:i:{}:{}:{key}",
                shared.prefix,
                length_prefixed(draft.topic.as_str()),
                length_prefixed(&draft.publisher)
            ),
            None => format!("{}:i:-", shared.prefix),
        };
        let share = format!("{}:ip:{}", shared.prefix, length_prefixed(&draft.publisher));
        let window_ms = u64::try_from(shared.retention.idempotency_window.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let mut connection = self.connection().await?;
        let (duplicate, answer, evicted): (i64, String, u64) = shared
            .publish
            .key(shared.topic_key(&draft.topic, "m"))
            .key(shared.topic_key(&draft.topic, "s"))
            .key(idem)
            .key(format!("{}:g", shared.prefix))
            .key(share)
            .arg(body)
            .arg(&id)
            .arg(if draft.idempotency_key.is_some() {
                "1"
            } else {
                "0"
            })
            .arg(window_ms)
            .arg(shared.retention.history_max_events.max(1))
            .arg(shared.max_age_ms())
            .arg(random_token())
            .arg(draft.topic.as_str())
            .arg(shared.channel(&draft.topic))
            .arg(shared.retention.max_idempotency_keys_per_publisher.max(1))
            .arg(&*connection.run_id)
            .invoke_async(&mut connection.redis)
            .await
            .map_err(|error| self.failed(&error))?;
        if evicted > 0 {
            shared
                .counters
                .evicted_keys
                .fetch_add(evicted, Ordering::Relaxed);
        }
        let mut parts = answer.splitn(3, ' ');
        let (Some(offset), Some(epoch), Some(id)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(BrokerError::Backend(format!(
                "redis: the publish script answered {answer:?}"
            )));
        };
        Ok(Published {
            position: StreamPosition {
                offset: offset.parse().unwrap_or(0),
                epoch: epoch.to_owned(),
            },
            id: id.to_owned(),
            duplicate: duplicate == 1,
        })
    }

    async fn append(&self, event: Arc<SharedEvent>) -> Result<Appended, BrokerError> {
        let topic = Topic::parse(&event.topic)
            .map_err(|error| BrokerError::Backend(format!("append: {error}")))?;
        let shared = &self.shared;
        let mut connection = self.connection().await?;
        let delivered: i64 = shared
            .append
            .key(shared.topic_key(&topic, "m"))
            .key(shared.topic_key(&topic, "s"))
            .arg(event.offset)
            .arg(&event.epoch)
            .arg(encode_event(event.event(), 'd'))
            .arg(shared.retention.history_max_events.max(1))
            .arg(shared.max_age_ms())
            .arg(shared.channel(&topic))
            .invoke_async(&mut connection.redis)
            .await
            .map_err(|error| self.failed(&error))?;
        Ok(if delivered == 1 {
            Appended::Delivered
        } else {
            Appended::AlreadyCached
        })
    }

    async fn history(
        &self,
        topic: &Topic,
        start: HistoryStart,
        limit: usize,
    ) -> Result<HistoryPage, BrokerError> {
        let shared = &self.shared;
        if shared.hub.has_subscribers(topic) {
            self.await_subscription(topic).await?;
        }
        shared
            .read_history(topic, &start, limit)
            .await
            .map_err(|error| self.failed(&error))
    }

    async fn broadcast(&self, topic: &Topic, item: HubItem) -> Result<(), BrokerError> {
        let message = match &item {
            HubItem::Event(event) => encode_event(event.event(), 'e'),
            HubItem::Presence(change) => {
                let mut message = b"p".to_vec();
                change.encode(&mut message).ok();
                message
            }
            HubItem::Signal(signal) => {
                let mut message = b"s".to_vec();
                signal.encode(&mut message).ok();
                message
            }
        };
        let mut connection = self.connection().await?;
        redis::cmd("PUBLISH")
            .arg(self.shared.channel(topic))
            .arg(message)
            .query_async::<i64>(&mut connection.redis)
            .await
            .map_err(|error| self.failed(&error))?;
        Ok(())
    }

    async fn keep_signal(
        &self,
        topic: &Topic,
        signal: Arc<Signal>,
        ttl: Duration,
    ) -> Result<bool, BrokerError> {
        let shared = &self.shared;
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut connection = self.connection().await?;
        let kept: i64 = shared
            .keep_signal
            .key(shared.topic_key(topic, "k"))
            .arg(&signal.key)
            .arg(ttl_ms)
            .arg(shared.signals.max_keys_per_topic.max(1))
            .arg(signal.encode_to_vec())
            .invoke_async(&mut connection.redis)
            .await
            .map_err(|error| self.failed(&error))?;
        if kept != 1 {
            shared
                .counters
                .unkept_signals
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%topic, "the topic keeps its most signal keys; the signal is delivered but not kept");
        }
        Ok(kept == 1)
    }

    async fn latest_signals(
        &self,
        topic: &Topic,
        _ttl: Duration,
    ) -> Result<Vec<Signal>, BrokerError> {
        let shared = &self.shared;
        // As `history`: a signal kept after this read is broadcast after it, and reaches a
        // subscriber registered before it only once this node's channel subscription is up.
        if shared.hub.has_subscribers(topic) {
            self.await_subscription(topic).await?;
        }
        let mut connection = self.connection().await?;
        let values: Vec<Vec<u8>> = shared
            .latest_signals
            .key(shared.topic_key(topic, "k"))
            .invoke_async(&mut connection.redis)
            .await
            .map_err(|error| self.failed(&error))?;
        let mut fresh: Vec<(u64, Signal)> = values
            .iter()
            .filter_map(|value| decode_kept_signal(topic, value))
            .collect();
        fresh.sort_by_key(|(expiry, _)| *expiry);
        Ok(fresh.into_iter().map(|(_, signal)| signal).collect())
    }

    fn stats(&self) -> BrokerStats {
        let counters = &self.shared.counters;
        BrokerStats {
            topics: lock(&self.shared.topics).len() as u64,
            refused_at_capacity: counters.refused.load(Ordering::Relaxed),
            evicted_keys: counters.evicted_keys.load(Ordering::Relaxed),
            unkept_signals: counters.unkept_signals.load(Ordering::Relaxed),
            ..BrokerStats::default()
        }
    }

    fn deliveries(&self) -> [u64; 3] {
        RedisBroker::deliveries(self)
    }

    async fn is_ready(&self) -> bool {
        RedisBroker::is_ready(self).await
    }

    fn kind(&self) -> herald_proto::v1::Broker {
        herald_proto::v1::Broker::Redis
    }

    /// `<run_id>/<db>/<prefix>`: the Redis server process (its `run_id` is random per start),
    /// the database and the key prefix, which together decide who shares events.
    async fn cluster_id(&self) -> Result<Option<String>, BrokerError> {
        // Asked again rather than taken from the connection: a connection whose Redis just
        // restarted must fail here, not report the old process.
        let mut connection = self.connection().await?;
        let info: String = redis::cmd("INFO")
            .arg("server")
            .query_async(&mut connection.redis)
            .await
            .map_err(|error| self.failed(&error))?;
        let run_id = redis_connection::run_id_of(&info)
            .ok_or_else(|| BrokerError::Backend("redis: INFO server has no run_id".into()))?;
        let db = self
            .shared
            .client
            .get_connection_info()
            .redis_settings()
            .db();
        Ok(Some(format!("{run_id}/{db}/{}", self.shared.prefix)))
    }
}

impl RedisBroker {
    /// Waits until this node's channel subscription for `topic` is confirmed.
    async fn await_subscription(&self, topic: &Topic) -> Result<(), BrokerError> {
        let shared = &self.shared;
        let mut changes = shared.confirmed.subscribe();
        let wait = async {
            loop {
                let confirmed = lock(&shared.topics)
                    .get(topic)
                    .is_some_and(|state| state.confirmed);
                if confirmed || !shared.hub.has_subscribers(topic) {
                    return;
                }
                // A topic the task has not seen yet (the hub's notice may still be queued).
                lock(&shared.dirty).insert(topic.clone());
                shared.wake.notify_one();
                if changes.changed().await.is_err() {
                    return;
                }
            }
        };
        tokio::time::timeout(SUBSCRIBE_WAIT, wait)
            .await
            .map_err(|_| {
                BrokerError::Backend(format!(
                    "redis: the pub/sub subscription for {topic} was not confirmed within {SUBSCRIBE_WAIT:?}"
                ))
            })
    }
}

/// This node's pub/sub connection: subscribes to the channels of topics with local
/// subscribers, delivers their messages into the hub, fills gaps, and reconnects.
async fn pubsub_task(shared: Arc<Shared>, shutdown: CancellationToken) {
    let mut backoff = Duration::from_millis(50);
    let mut first = true;
    loop {
        let pubsub = tokio::select! {
            () = shutdown.cancelled() => return,
            connected = shared.client.get_async_pubsub() => connected,
        };
        let pubsub = match pubsub {
            Ok(pubsub) => pubsub,
            Err(error) => {
                tracing::warn!(%error, "the Redis pub/sub connection failed; retrying");
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        backoff = Duration::from_millis(50);
        if !first {
            shared.counters.reconnects.fetch_add(1, Ordering::Relaxed);
            tracing::info!("the Redis pub/sub connection is back; resubscribing and recovering");
        }
        first = false;
        let (mut sink, mut stream) = pubsub.split();
        // Everything known is resubscribed on the new connection.
        {
            let mut topics = lock(&shared.topics);
            let mut dirty = lock(&shared.dirty);
            for (topic, state) in topics.iter_mut() {
                state.confirmed = false;
                dirty.insert(topic.clone());
            }
        }
        shared.connected.store(true, Ordering::Relaxed);
        let mut lost = false;
        while !lost {
            let dirty: Vec<Topic> = lock(&shared.dirty).drain().collect();
            if !dirty.is_empty() {
                for topic in dirty {
                    if let Err(error) = reconcile(&shared, &mut sink, &topic).await {
                        tracing::warn!(%error, %topic, "a Redis pub/sub (un)subscribe failed");
                        lock(&shared.dirty).insert(topic);
                        lost = true;
                        break;
                    }
                }
                shared.confirmed.send_modify(|generation| *generation += 1);
                continue;
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = shared.wake.notified() => {}
                message = stream.next() => match message {
                    Some(message) => on_message(&shared, &message).await,
                    None => lost = true,
                },
            }
        }
        shared.connected.store(false, Ordering::Relaxed);
        tracing::warn!("the Redis pub/sub connection dropped; reconnecting");
    }
}

/// Brings the channel subscription of `topic` in line with whether it has local subscribers;
/// a topic subscribed again after a reconnect is recovered from the stream.
async fn reconcile(
    shared: &Shared,
    sink: &mut redis::aio::PubSubSink,
    topic: &Topic,
) -> redis::RedisResult<()> {
    let wanted = shared.hub.has_subscribers(topic);
    let (known, confirmed) = lock(&shared.topics)
        .get(topic)
        .map_or((false, false), |state| (true, state.confirmed));
    if wanted && !confirmed {
        sink.subscribe(shared.channel(topic)).await?;
        if !known {
            lock(&shared.topics).insert(topic.clone(), TopicState::default());
        }
        let last = {
            let mut topics = lock(&shared.topics);
            let state = topics.entry(topic.clone()).or_default();
            state.confirmed = true;
            state.last.clone()
        };
        if let Some((epoch, offset)) = last {
            // Resubscribed after the connection dropped: deliver what was published meanwhile.
            fill(shared, topic, &epoch, offset, None, 0).await;
        }
    } else if !wanted && known {
        lock(&shared.topics).remove(topic);
        sink.unsubscribe(shared.channel(topic)).await?;
    }
    Ok(())
}

/// Reads the events after `offset` of `epoch` from the stream (up to `until`, exclusive) and
/// delivers them; what the stream no longer covers reaches subscribers as a gap.
async fn fill(
    shared: &Shared,
    topic: &Topic,
    epoch: &str,
    offset: u64,
    until: Option<u64>,
    lane: usize,
) {
    let start = HistoryStart::After(StreamPosition {
        offset,
        epoch: epoch.to_owned(),
    });
    let limit = until.map_or(FILL_LIMIT, |until| {
        usize::try_from(until.saturating_sub(offset + 1))
            .unwrap_or(FILL_LIMIT)
            .min(FILL_LIMIT)
    });
    if limit == 0 {
        return;
    }
    shared.counters.fills.fetch_add(1, Ordering::Relaxed);
    match shared.read_history(topic, &start, limit).await {
        Ok(page) if page.covered => {
            for event in page.events {
                if until.is_some_and(|until| event.offset >= until) {
                    break;
                }
                deliver_event(shared, topic, event, lane);
            }
        }
        Ok(_) => {
            tracing::info!(%topic, offset, "the Redis stream no longer covers a gap; subscribers recover");
        }
        Err(error) => {
            tracing::warn!(%topic, %error, "a gap could not be read from the Redis stream");
        }
    }
}

fn deliver_event(shared: &Shared, topic: &Topic, event: Arc<SharedEvent>, lane: usize) {
    {
        let mut topics = lock(&shared.topics);
        let Some(state) = topics.get_mut(topic) else {
            return;
        };
        if let Some((epoch, last)) = &state.last
            && *epoch == event.epoch
            && event.offset <= *last
        {
            return;
        }
        state.last = Some((event.epoch.clone(), event.offset));
    }
    let delivered = shared.hub.deliver(topic, HubItem::Event(event));
    shared.counters.delivered[lane].fetch_add(delivered as u64, Ordering::Relaxed);
}

async fn on_message(shared: &Shared, message: &redis::Msg) {
    let Some(topic) = shared.topic_of(message.get_channel_name()) else {
        return;
    };
    let payload = message.get_payload_bytes();
    match payload.first() {
        Some(kind @ (b'e' | b'd')) => {
            let lane = usize::from(*kind == b'd');
            let Some(event) = decode_event(&topic, payload) else {
                return;
            };
            let last = lock(&shared.topics)
                .get(&topic)
                .and_then(|state| state.last.clone());
            if let Some((epoch, offset)) = last
                && epoch == event.epoch
                && event.offset > offset + 1
            {
                fill(shared, &topic, &epoch, offset, Some(event.offset), lane).await;
            }
            deliver_event(shared, &topic, event, lane);
        }
        Some(b'p') => {
            if let Ok(change) = PresenceChange::decode(&payload[1..]) {
                let delivered = shared
                    .hub
                    .deliver(&topic, HubItem::Presence(Arc::new(change)));
                shared.counters.delivered[2].fetch_add(delivered as u64, Ordering::Relaxed);
            }
        }
        Some(b's') => {
            if let Ok(signal) = Signal::decode(&payload[1..]) {
                let delivered = shared
                    .hub
                    .deliver(&topic, HubItem::Signal(Arc::new(signal)));
                shared.counters.delivered[2].fetch_add(delivered as u64, Ordering::Relaxed);
            }
        }
        _ => {}
    }
}
