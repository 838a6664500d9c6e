//! Redis: a single server, a master found through sentinels, or a cluster, with the reference
//! plugin's keys (a hash per message, a sorted set per topic, a hash of subscriptions per client)
//! and keys of ours, under the same prefixes, for what the reference lacks (see [`Keys`]).
//!
//! A batch is one `MULTI`/`EXEC` on a server or a sentinel's master. A cluster cannot run one
//! across slots: there every command of the batch is sent at once over the cluster connection,
//! which multiplexes them to their nodes (one round trip per node); each command is idempotent, so
//! a retried batch stores nothing twice.

mod admin;
mod conn;
mod keys;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{self, BoxStream, StreamExt};
use redis::{Cmd, ErrorKind, RedisError, ServerErrorKind};

use super::{Batch, CheckError, Store, StoreError};
use crate::config::RedisConfig;
use crate::message::{Properties, ReplayQuery, StoredMessage, Subscription};
use crate::message_id::MessageId;
use crate::topic::TopicFilter;
pub use admin::RedisHistoryQuery;
use conn::Connections;
pub use keys::Keys;

/// Message ids read from a topic's sorted set per request.
const IDS_PER_READ: usize = 200;
/// Messages (`HGETALL`) read per round trip of a replay.
const MESSAGES_PER_READ: usize = 100;
/// The key errors name: where the servers are configured.
const KEY: &str = "redis.servers";

pub struct RedisStore {
    conns: Connections,
    keys: Keys,
    /// `message_ttl`: how long a topic's sorted set keeps an id; `None`: until acknowledged.
    ttl: Option<Duration>,
    checked: OnceLock<()>,
    last_check_error: Mutex<Option<CheckError>>,
    /// Where the purge's walk over the topics stands (`SSCAN` cursor).
    purge_cursor: Mutex<u64>,
}

impl RedisStore {
    /// Builds the clients and runs the checks; a Redis that cannot be reached does not stop the
    /// start (the store starts unchecked and the writer spools), anything else does.
    pub async fn connect(cfg: &RedisConfig) -> Result<RedisStore, StoreError> {
        let storage = &cfg.storage;
        let store = RedisStore {
            conns: Connections::new(cfg, storage.query_timeout)?,
            keys: Keys::new(&cfg.message_key_prefix, &cfg.subscription_key_prefix),
            ttl: storage.message_ttl,
            checked: OnceLock::new(),
            last_check_error: Mutex::new(Some(CheckError::of(&StoreError::Unavailable))),
            purge_cursor: Mutex::new(0),
        };
        match store.check().await {
            Ok(()) => Ok(store),
            // The engine says so (once for the whole outage); the checks run when it answers.
            Err(e) if e.is_unreachable() => Ok(store),
            Err(e) => Err(e),
        }
    }

    fn ready(&self) -> Result<(), StoreError> {
        self.checked.get().copied().ok_or(StoreError::Unavailable)
    }

    /// `cmds` as one atomic write (see the module's doc for a cluster).
    async fn write(&self, cmds: Vec<Cmd>) -> Result<(), StoreError> {
        if cmds.is_empty() {
            return Ok(());
        }
        self.conns.write(KEY, cmds).await
    }

    /// The replies of `cmds`, in order.
    async fn read<T: redis::FromRedisValue + Send + 'static>(&self, cmds: Vec<Cmd>) -> Result<Vec<T>, StoreError> {
        if cmds.is_empty() {
            return Ok(Vec::new());
        }
        self.conns.read(KEY, cmds).await
    }

    async fn read_one<T: redis::FromRedisValue + Send + 'static>(&self, cmd: Cmd) -> Result<T, StoreError> {
        Ok(self.read(vec![cmd]).await?.pop().expect("one reply per command"))
    }

    /// The topics a filter can match: itself without wildcards, else the known topics it matches.
    async fn topics_for(&self, filter: &str) -> Result<Vec<String>, StoreError> {
        let Ok(parsed) = TopicFilter::parse(filter) else { return Ok(Vec::new()) };
        if !parsed.has_wildcards() {
            return Ok(vec![filter.to_owned()]);
        }
        let all: Vec<String> = self.read_one(redis::cmd("SMEMBERS").arg(self.keys.topics()).clone()).await?;
        Ok(all.into_iter().filter(|t| parsed.matches(t)).collect())
    }

    /// Up to [`IDS_PER_READ`] ids of `topic` from `after`'s millisecond on (see [`Self::ids_past`]).
    fn ids_after(&self, topic: &str, after: MessageId) -> Cmd {
        let min = if after.0 == 0 { "-inf".to_owned() } else { id_score(after).to_string() };
        ids_by_score(&self.keys.topic(topic), &min, "+inf", IDS_PER_READ)
    }

    /// Reads the ids of one topic after its cursor.
    async fn refill(&self, t: &mut TopicIds, first: Option<Vec<String>>) -> Result<(), StoreError> {
        let first = match first {
            Some(members) => members,
            None => self.read_one(self.ids_after(&t.topic, t.after)).await?,
        };
        let after = Some(t.after).filter(|a| a.0 != 0);
        let (ids, more) = self.ids_past(&self.keys.topic(&t.topic), after, "+inf", IDS_PER_READ, first).await?;
        t.more = more;
        if let Some(last) = ids.last() {
            t.after = *last;
        }
        t.ids.extend(ids);
        Ok(())
    }

    /// The ids after `after` (all of them without one) in `first`, a read of up to `count` members
    /// of the sorted set `key` from `after`'s millisecond on (its ids at or before the cursor come
    /// again and are dropped), in order, and whether the set may hold more up to the score `max`.
    /// When `first` is full and holds none after the cursor (more than `count` ids share its
    /// millisecond), the rest of that millisecond is read whole, then the set from the next one:
    /// never by offset, which ids removed meanwhile (acknowledged) would shift past unread ones.
    pub(crate) async fn ids_past(
        &self,
        key: &str,
        after: Option<MessageId>,
        max: &str,
        count: usize,
        first: Vec<String>,
    ) -> Result<(Vec<MessageId>, bool), StoreError> {
        // Members that are not message ids (not written by a plugin) are left out.
        let past = |members: Vec<String>| -> Vec<MessageId> {
            members
                .iter()
                .filter_map(|m| MessageId::from_base62(m))
                .filter(|id| after.is_none_or(|a| *id > a))
                .collect()
        };
        let full = first.len() == count;
        let ids = past(first);
        let Some(cursor) = after.filter(|_| ids.is_empty() && full) else { return Ok((ids, full)) };
        let ms = id_score(cursor);
        let same: Vec<String> =
            self.read_one(redis::cmd("ZRANGE").arg(key).arg(ms).arg(ms).arg("BYSCORE").clone()).await?;
        let ids = past(same);
        if !ids.is_empty() {
            return Ok((ids, true));
        }
        let later: Vec<String> = self.read_one(ids_by_score(key, &format!("({ms}"), max, count)).await?;
        let full = later.len() == count;
        Ok((past(later), full))
    }

    /// One page of a replay; see [`Store::select_messages`].
    async fn page_state(&self, query: PageQuery) -> Result<Page, StoreError> {
        self.ready()?;
        let topics = self.topics_for(&query.filter).await?;
        let after = MessageId(query.after);
        let firsts: Vec<Vec<String>> = self.read(topics.iter().map(|t| self.ids_after(t, after)).collect()).await?;
        let mut page = Page { query, topics: Vec::new(), heap: BinaryHeap::new(), ready: VecDeque::new(), left: 0 };
        page.left = page.query.limit;
        for (topic, first) in topics.into_iter().zip(firsts) {
            let mut t = TopicIds { topic, after, ids: VecDeque::new(), more: true };
            self.refill(&mut t, Some(first)).await?;
            if let Some(id) = t.ids.pop_front() {
                page.heap.push(Reverse((id, page.topics.len())));
            }
            page.topics.push(t);
        }
        Ok(page)
    }

    /// The next messages of a page, in id order: up to [`MESSAGES_PER_READ`] ids, their hashes
    /// read in one round trip; gone ones (acknowledged, expired) and ones this client has had are left out.
    async fn next_messages(&self, page: &mut Page) -> Result<(), StoreError> {
        while page.ready.is_empty() && page.left > 0 && !page.heap.is_empty() {
            let mut ids = Vec::new();
            while ids.len() < MESSAGES_PER_READ.min(page.left) {
                let Some(Reverse((id, i))) = page.heap.pop() else { break };
                ids.push(id);
                let t = &mut page.topics[i];
                if t.ids.is_empty() && t.more {
                    self.refill(t, None).await?;
                }
                if let Some(next) = t.ids.pop_front() {
                    page.heap.push(Reverse((next, i)));
                }
            }
            let texts: Vec<String> = ids.iter().map(MessageId::to_base62).collect();
            let hashes: Vec<HashMap<String, Vec<u8>>> = self
                .read(texts.iter().map(|id| redis::cmd("HGETALL").arg(self.keys.message(id)).clone()).collect())
                .await?;
            let had: Vec<bool> = self
                .read_one(redis::cmd("SMISMEMBER").arg(self.keys.delivered(&page.query.client_id)).arg(&texts).clone())
                .await?;
            for ((id, text), (hash, had)) in ids.into_iter().zip(texts).zip(hashes.into_iter().zip(had)) {
                if had || page.left == 0 {
                    continue;
                }
                if let Some(m) = stored_message(id, text, hash) {
                    page.left -= 1;
                    page.ready.push_back(m);
                }
            }
        }
        Ok(())
    }
}

/// What a replay page needs of its query, owned by the stream.
struct PageQuery {
    filter: String,
    client_id: String,
    after: u128,
    limit: usize,
}

/// One topic's ids not yet merged into the page, read ahead in order.
struct TopicIds {
    topic: String,
    /// The last id read from the set.
    after: MessageId,
    ids: VecDeque<MessageId>,
    /// The last read was full: the set may hold more.
    more: bool,
}

/// A page being read: the matching topics' ids merged in id order (publish order).
struct Page {
    query: PageQuery,
    topics: Vec<TopicIds>,
    /// The smallest unread id of each topic, with the topic's index.
    heap: BinaryHeap<Reverse<(MessageId, usize)>>,
    ready: VecDeque<StoredMessage>,
    /// Messages the page may still return.
    left: usize,
}

/// The commands that write `batch`, in the order they run in its `MULTI`/`EXEC`: each message's
/// hash (with its expiry), one `ZADD` per topic of the batch's ids and one `SADD` of the batch's
/// topics; the deletes (each hash, one `ZREM` per topic); the delivery records (one `SADD` per
/// client, with its `EXPIRE`). Each command names one key, so that a cluster sends each to its
/// node; grouping by key makes Redis parse and answer about two commands per message, not four.
/// Public for the load harness, whose `ceiling` sends the same commands straight to Redis.
pub fn batch_commands(keys: &Keys, ttl: Option<Duration>, batch: &Batch) -> Vec<Cmd> {
    let mut cmds = Vec::with_capacity(batch.inserts.len() * 2 + batch.deletes.len() + 2);
    let mut sets = PerKey::new("ZADD");
    for m in &batch.inserts {
        let key = keys.message(&m.msgid);
        let data = key.len() + 2 * m.msgid.len() + m.from.len() + m.topic.len() + m.payload.len() + 96;
        let mut hset = Cmd::with_capacity(20, data);
        hset.arg("HSET")
            .arg(&key)
            .arg("id")
            .arg(&m.msgid)
            .arg("from")
            .arg(&m.from)
            .arg("qos")
            .arg(m.qos)
            .arg("topic")
            .arg(&m.topic)
            .arg("payload")
            .arg(m.payload.as_ref())
            .arg("ts")
            .arg(m.timestamp_ms)
            .arg("retain")
            .arg(u8::from(m.retain));
        if let Some(expiry) = m.expiry_ms {
            hset.arg("expiry").arg(expiry);
        }
        if let Some(properties) = &m.properties {
            hset.arg("properties").arg(properties);
        }
        cmds.push(hset);
        if let Some(expiry) = m.expiry_ms {
            // An absolute time: a batch written late (from the spool) keeps the message's expiry.
            let mut expire = redis::cmd("PEXPIREAT");
            expire.arg(&key).arg(expiry);
            cmds.push(expire);
        }
        sets.of(&m.topic, || keys.topic(&m.topic)).arg(score(&m.msgid)).arg(&m.msgid);
    }
    if !sets.is_empty() {
        let mut list = redis::cmd("SADD");
        list.arg(keys.topics()).arg(&sets.names);
        cmds.extend(sets.cmds);
        cmds.push(list);
    }
    let mut removes = PerKey::new("ZREM");
    for d in &batch.deletes {
        let mut del = redis::cmd("DEL");
        del.arg(keys.message(&d.msgid));
        cmds.push(del);
        removes.of(&d.topic, || keys.topic(&d.topic)).arg(&d.msgid);
    }
    cmds.extend(removes.cmds);
    let mut delivered = PerKey::new("SADD");
    for d in &batch.deliveries {
        delivered.of(&d.client_id, || keys.delivered(&d.client_id)).arg(&d.msgid);
    }
    let clients = delivered.names;
    cmds.extend(delivered.cmds);
    if let Some(ttl) = ttl {
        // A client's records outlive none of the messages they name by much.
        for client in clients {
            let mut expire = redis::cmd("EXPIRE");
            expire.arg(keys.delivered(client)).arg(ttl.as_secs().max(1));
            cmds.push(expire);
        }
    }
    cmds
}

/// Commands of one name, one per key, in the order their keys were first named; each takes the
/// arguments given for its key.
struct PerKey<'a> {
    name: &'static str,
    /// What each key was named by (a topic, a client id), in order.
    names: Vec<&'a str>,
    at: HashMap<&'a str, usize>,
    cmds: Vec<Cmd>,
}

impl<'a> PerKey<'a> {
    fn new(name: &'static str) -> PerKey<'a> {
        PerKey { name, names: Vec::new(), at: HashMap::new(), cmds: Vec::new() }
    }

    fn is_empty(&self) -> bool {
        self.cmds.is_empty()
    }

    /// The command of the key named by `name` (`key` makes the key the first time).
    fn of(&mut self, name: &'a str, key: impl FnOnce() -> String) -> &mut Cmd {
        let i = match self.at.get(name) {
            Some(i) => *i,
            None => {
                let mut cmd = redis::cmd(self.name);
                cmd.arg(key());
                self.cmds.push(cmd);
                self.names.push(name);
                self.at.insert(name, self.cmds.len() - 1);
                self.cmds.len() - 1
            }
        };
        &mut self.cmds[i]
    }
}

/// Up to `count` members of the sorted set `key` with scores from `min` to `max` (Redis's score
/// range syntax), in order.
fn ids_by_score(key: &str, min: &str, max: &str, count: usize) -> Cmd {
    let mut cmd = redis::cmd("ZRANGE");
    cmd.arg(key).arg(min).arg(max).arg("BYSCORE").arg("LIMIT").arg(0).arg(count);
    cmd
}

/// The sorted-set score of a message: its publish time in milliseconds, as its id holds it, so
/// that the set's order (score, then the id's text, which sorts like its number) is id order.
fn score(msgid: &str) -> i64 {
    MessageId::from_base62(msgid).map_or(0, id_score)
}

fn id_score(id: MessageId) -> i64 {
    (id.micros() / 1000) as i64
}

/// A message hash as the replay delivers it; `None` when it is gone or not one of ours.
fn stored_message(id: MessageId, msgid: String, hash: HashMap<String, Vec<u8>>) -> Option<StoredMessage> {
    let text = |field: &str| hash.get(field).map(|v| String::from_utf8_lossy(v).into_owned());
    let int = |field: &str| text(field).and_then(|v| v.trim().parse::<i64>().ok());
    let topic = text("topic")?;
    Some(StoredMessage {
        position: Some(id.0),
        msgid,
        from: text("from").unwrap_or_default(),
        topic,
        qos: int("qos").unwrap_or(1).clamp(0, 2) as u8,
        retain: matches!(text("retain").as_deref(), Some("1" | "true")),
        payload: Bytes::from(hash.get("payload").cloned().unwrap_or_default()),
        expiry_ms: int("expiry"),
        properties: text("properties").map(|p| Properties::from_json(&p)).unwrap_or_default(),
    })
}

#[async_trait::async_trait]
impl Store for RedisStore {
    /// Redis answers `PING`, knows the commands of Redis 6.2 (`ZRANGE ... BYSCORE`, `SMISMEMBER`),
    /// and lets this user run them on the prefixes.
    async fn check(&self) -> Result<(), StoreError> {
        let probe = self.keys.probe();
        let result: Result<(), StoreError> = async {
            self.read_one::<String>(redis::cmd("PING")).await?;
            self.read_one::<Vec<String>>(
                redis::cmd("ZRANGE").arg(&probe).arg(0).arg(0).arg("BYSCORE").arg("LIMIT").arg(0).arg(1).clone(),
            )
            .await?;
            self.read_one::<Vec<bool>>(redis::cmd("SMISMEMBER").arg(&probe).arg("x").clone()).await?;
            Ok(())
        }
        .await;
        match &result {
            Ok(()) => {
                let _ = self.checked.set(());
                *self.last_check_error.lock().expect("check error lock") = None;
            }
            Err(e) => *self.last_check_error.lock().expect("check error lock") = Some(CheckError::of(e)),
        }
        result
    }

    fn is_checked(&self) -> bool {
        self.checked.get().is_some()
    }

    fn check_error(&self) -> Option<CheckError> {
        self.last_check_error.lock().expect("check error lock").clone()
    }

    /// Redis takes values up to 512 MB, beyond any MQTT packet.
    fn check_payload(&self, _len: usize) -> Result<(), usize> {
        Ok(())
    }

    /// Inserts (the message hash with its expiry, the topic's sorted set, the topic list), deletes
    /// of acknowledged messages (hash and sorted-set entry), delivery records: [`batch_commands`].
    async fn write_batch(&self, batch: &Batch) -> Result<(), StoreError> {
        self.ready()?;
        self.write(batch_commands(&self.keys, self.ttl, batch)).await
    }

    fn replay_key(&self) -> &'static str {
        KEY
    }

    fn replay_pages(&self) -> bool {
        true
    }

    /// Up to `limit` messages after `after` (a message id), merged over the topics the filter
    /// matches, in id order, read a few at a time as the replay takes them.
    fn select_messages<'a>(&'a self, query: &ReplayQuery<'_>) -> BoxStream<'a, Result<StoredMessage, StoreError>> {
        let query = PageQuery {
            filter: query.sub.filter.clone(),
            client_id: query.sub.client_id.clone(),
            after: query.after,
            limit: usize::try_from(query.limit).unwrap_or(usize::MAX),
        };
        enum State {
            Start(PageQuery),
            Reading(Page),
            Done,
        }
        stream::unfold(State::Start(query), move |state| async move {
            let mut page = match state {
                State::Done => return None,
                State::Start(query) => match self.page_state(query).await {
                    Ok(page) => page,
                    Err(e) => return Some((Err(e), State::Done)),
                },
                State::Reading(page) => page,
            };
            if let Err(e) = self.next_messages(&mut page).await {
                return Some((Err(e), State::Done));
            }
            let m = page.ready.pop_front()?;
            Some((Ok(m), State::Reading(page)))
        })
        .boxed()
    }

    async fn upsert_subscription(&self, sub: &Subscription) -> Result<(), StoreError> {
        self.ready()?;
        let key = self.keys.subscriptions(&sub.client_id);
        self.write(vec![redis::cmd("HSET").arg(key).arg(&sub.filter).arg(sub.qos).clone()]).await
    }

    async fn delete_subscription(&self, sub: &Subscription) -> Result<(), StoreError> {
        self.ready()?;
        let key = self.keys.subscriptions(&sub.client_id);
        self.write(vec![redis::cmd("HDEL").arg(key).arg(&sub.filter).clone()]).await
    }

    async fn select_subscriptions(&self, client_id: &str) -> Result<Vec<Subscription>, StoreError> {
        self.ready()?;
        let all: Vec<(String, String)> =
            self.read_one(redis::cmd("HGETALL").arg(self.keys.subscriptions(client_id)).clone()).await?;
        Ok(all
            .into_iter()
            .map(|(filter, qos)| Subscription {
                client_id: client_id.to_owned(),
                filter,
                qos: qos.trim().parse::<u8>().unwrap_or(0).min(2),
            })
            .collect())
    }

    /// One step of a walk over the topic list (`SSCAN`, about `limit` topics): drops the ids older
    /// than `message_ttl` from each topic's sorted set (their hashes have expired), and takes the
    /// topics whose set is empty off the list. Returns how many ids it dropped.
    async fn purge_expired(&self, now_ms: i64, limit: i64) -> Result<u64, StoreError> {
        self.ready()?;
        let cursor = *self.purge_cursor.lock().expect("purge cursor lock");
        let scan = redis::cmd("SSCAN").arg(self.keys.topics()).arg(cursor).arg("COUNT").arg(limit).clone();
        let (next, topics): (u64, Vec<String>) = self.read_one(scan).await?;
        *self.purge_cursor.lock().expect("purge cursor lock") = next;
        let mut dropped = 0;
        if let Some(ttl) = self.ttl {
            let before = now_ms.saturating_sub(ttl.as_millis() as i64);
            let trims = topics
                .iter()
                .map(|t| {
                    redis::cmd("ZREMRANGEBYSCORE").arg(self.keys.topic(t)).arg("-inf").arg(format!("({before}")).clone()
                })
                .collect();
            dropped = self.read::<u64>(trims).await?.into_iter().sum();
        }
        let sizes: Vec<u64> =
            self.read(topics.iter().map(|t| redis::cmd("ZCARD").arg(self.keys.topic(t)).clone()).collect()).await?;
        for (topic, _) in topics.iter().zip(sizes).filter(|(_, n)| *n == 0) {
            // A publish may add to the set between the count and the removal: count again after,
            // and put the topic back if so.
            self.write(vec![redis::cmd("SREM").arg(self.keys.topics()).arg(topic).clone()]).await?;
            let n: u64 = self.read_one(redis::cmd("ZCARD").arg(self.keys.topic(topic)).clone()).await?;
            if n > 0 {
                self.write(vec![redis::cmd("SADD").arg(self.keys.topics()).arg(topic).clone()]).await?;
            }
        }
        Ok(dropped)
    }

    /// Deletes the oldest messages of `topic` beyond the newest `keep`: their hashes and ids.
    async fn trim_topic(&self, topic: &str, keep: u64) -> Result<u64, StoreError> {
        self.ready()?;
        let last = -(keep.min(i64::MAX as u64 - 1) as i64) - 1;
        let key = self.keys.topic(topic);
        let old: Vec<String> = self.read_one(redis::cmd("ZRANGE").arg(&key).arg(0).arg(last).clone()).await?;
        if old.is_empty() {
            return Ok(0);
        }
        let mut cmds: Vec<Cmd> = old.iter().map(|id| redis::cmd("DEL").arg(self.keys.message(id)).clone()).collect();
        cmds.push(redis::cmd("ZREM").arg(&key).arg(&old).clone());
        self.write(cmds).await?;
        Ok(old.len() as u64)
    }

    fn connections(&self) -> (u32, u32) {
        self.conns.usage()
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.read_one::<String>(redis::cmd("PING")).await.map(drop)
    }

    /// The writer shares the multiplexed connections (a busy one never makes another request
    /// wait for a connection), so its ping is the ping.
    async fn ping_writer(&self) -> Result<(), StoreError> {
        self.ping().await
    }

    /// Connections close when the store is dropped; nothing is left to flush.
    async fn close(&self) {}
}

/// Redis could not be reached or cannot take writes for now: refused or dropped connections,
/// timeouts, a server still loading its data, a replica (`READONLY`, during a failover), a
/// cluster that is down or moving slots. Sentinels that do not know `redis.sentinel` are a mistake
/// in the config, not an outage (during a failover they still name the old master).
pub fn is_unreachable(e: &RedisError) -> bool {
    if e.is_io_error() || e.is_connection_refusal() || e.is_timeout() || e.is_connection_dropped() {
        return true;
    }
    match e.kind() {
        ErrorKind::Server(kind) => matches!(
            kind,
            ServerErrorKind::BusyLoading
                | ServerErrorKind::ReadOnly
                | ServerErrorKind::MasterDown
                | ServerErrorKind::ClusterDown
                | ServerErrorKind::TryAgain
                | ServerErrorKind::Moved
                | ServerErrorKind::Ask
        ),
        ErrorKind::ClusterConnectionNotFound | ErrorKind::NoValidReplicasFoundBySentinel => true,
        _ => false,
    }
}

/// Redis refused what a message holds, not the work: a key of another type (not ours) has the name
/// of its hash or its topic's set. The writer dead-letters such a message alone.
pub fn refuses_content(e: &RedisError) -> bool {
    e.clone()
        .into_server_errors()
        .is_some_and(|errs| !errs.is_empty() && errs.iter().all(|(_, err)| err.code() == "WRONGTYPE"))
}

/// What to do about a Redis error, after its text.
pub fn hint(e: &RedisError) -> &'static str {
    match e.kind() {
        ErrorKind::Server(ServerErrorKind::NoPerm) => {
            "; the Redis user lacks a command or key: grant it the commands and key patterns the README's Redis section lists"
        }
        ErrorKind::AuthenticationFailed => "; check redis.username and redis.password",
        ErrorKind::Server(ServerErrorKind::ResponseError) if e.to_string().contains("syntax") => {
            "; this Redis is too old: the plugin needs Redis 6.2 or later"
        }
        ErrorKind::Server(ServerErrorKind::ResponseError) if e.to_string().contains("unknown command") => {
            "; this Redis is too old: the plugin needs Redis 6.2 or later"
        }
        ErrorKind::MasterNameNotFoundBySentinel => "; check redis.sentinel, the master's name the sentinels know",
        _ if refuses_content(e) => {
            "; a key of another type, not written by this plugin, has the name of this message's hash or topic's set (README, Redis: keys)"
        }
        _ if is_unreachable(e) => "; check that Redis is running and reachable (redis.servers, redis.redis_type)",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{DeliveryRecord, Message, Publish};
    use crate::store::AckedMessage;

    /// Each command as its words.
    fn words(cmds: &[Cmd]) -> Vec<Vec<String>> {
        cmds.iter()
            .map(|c| {
                c.args_iter()
                    .map(|a| match a {
                        redis::Arg::Simple(b) => String::from_utf8_lossy(b).into_owned(),
                        _ => "<not a word>".to_owned(),
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn a_batch_is_a_hash_and_an_expiry_per_message_and_one_command_per_other_key() {
        let keys = Keys::new("m", "s");
        let ids = crate::message_id::MessageIdGenerator::new(3);
        let message = |topic: &str| {
            let p =
                Publish { from: "c".into(), topic: topic.into(), qos: 1, payload: "x".into(), ..Publish::default() };
            Message::new(ids.next_id(), p, Some(9))
        };
        let inserts = vec![message("a"), message("b"), message("a")];
        let (i0, i1, i2) = (inserts[0].msgid.clone(), inserts[1].msgid.clone(), inserts[2].msgid.clone());
        let acked =
            |msgid: &str, topic: &str| AckedMessage { msgid: msgid.into(), from: "c".into(), topic: topic.into() };
        let delivered = |client: &str, msgid: &str| DeliveryRecord { client_id: client.into(), msgid: msgid.into() };
        let batch = Batch {
            inserts,
            deletes: vec![acked("d1", "a"), acked("d2", "a")],
            deliveries: vec![delivered("k", "d3"), delivered("k", "d4")],
        };
        let cmds = words(&batch_commands(&keys, Some(Duration::from_secs(60)), &batch));
        let names: Vec<&str> = cmds.iter().map(|c| c[0].as_str()).collect();
        assert_eq!(
            names,
            [
                "HSET",
                "PEXPIREAT",
                "HSET",
                "PEXPIREAT",
                "HSET",
                "PEXPIREAT",
                "ZADD",
                "ZADD",
                "SADD",
                "DEL",
                "DEL",
                "ZREM",
                "SADD",
                "EXPIRE"
            ]
        );
        assert_eq!(cmds[0][..4], ["HSET".to_owned(), format!("m:{i0}"), "id".into(), i0.clone()]);
        assert_eq!(cmds[1], ["PEXPIREAT".to_owned(), format!("m:{i0}"), "9".into()]);
        let (s0, s1, s2) = (score(&i0).to_string(), score(&i1).to_string(), score(&i2).to_string());
        assert_eq!(cmds[6], ["ZADD", "m:a", &s0, &i0, &s2, &i2]);
        assert_eq!(cmds[7], ["ZADD", "m:b", &s1, &i1]);
        assert_eq!(cmds[8], ["SADD", "m:#topics", "a", "b"]);
        assert_eq!(cmds[11], ["ZREM", "m:a", "d1", "d2"]);
        assert_eq!(cmds[12], ["SADD", "m:#delivered:k", "d3", "d4"]);
        assert_eq!(cmds[13], ["EXPIRE", "m:#delivered:k", "60"]);
        assert!(batch_commands(&keys, None, &Batch::default()).is_empty());
    }

    #[test]
    fn outages_and_failovers_are_unreachable_and_refusals_are_not() {
        let io = |kind| RedisError::from(std::io::Error::new(kind, "x"));
        let server = |kind| RedisError::from((ErrorKind::Server(kind), "x"));
        for e in [
            io(std::io::ErrorKind::ConnectionRefused),
            io(std::io::ErrorKind::ConnectionReset),
            io(std::io::ErrorKind::TimedOut),
            server(ServerErrorKind::BusyLoading),
            server(ServerErrorKind::ReadOnly),
            server(ServerErrorKind::Moved),
            server(ServerErrorKind::Ask),
            server(ServerErrorKind::TryAgain),
            server(ServerErrorKind::ClusterDown),
            server(ServerErrorKind::MasterDown),
            RedisError::from((ErrorKind::ClusterConnectionNotFound, "x")),
        ] {
            assert!(is_unreachable(&e), "{e:?}");
            assert!(StoreError::Redis { key: KEY, cause: e }.is_unreachable());
        }
        for e in [
            server(ServerErrorKind::NoPerm),
            server(ServerErrorKind::ResponseError),
            server(ServerErrorKind::CrossSlot),
            RedisError::from((ErrorKind::AuthenticationFailed, "x")),
            RedisError::from((ErrorKind::UnexpectedReturnType, "x")),
            RedisError::from((ErrorKind::MasterNameNotFoundBySentinel, "x")),
        ] {
            assert!(!is_unreachable(&e), "{e:?}");
        }
        assert!(hint(&server(ServerErrorKind::NoPerm)).contains("README"));
    }

    #[test]
    fn scores_order_like_the_ids() {
        let ids = crate::message_id::MessageIdGenerator::new(3);
        let (a, b) = (ids.next_id(), ids.next_id());
        assert!(a < b && a.to_base62() < b.to_base62());
        assert!(id_score(a) <= id_score(b));
        assert_eq!(score(&a.to_base62()), (a.micros() / 1000) as i64);
    }
}
