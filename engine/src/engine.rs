//! The engine: what a host calls when its broker publishes, acknowledges, subscribes, connects.
//!
//! It owns the store, the batch writer and the message-id generator. It knows no broker: hosts
//! convert their events into these calls, carry each stored message's id with its deliveries
//! (so that an ack names its row), and deliver replayed messages through a [`ReplaySink`].

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;

use crate::auth::{AuthConfig, PasswordChecker};
use crate::config::{Config, DeliveryMode, RestoreSubscriptions, WriteMode};
use crate::message::{DeliveryRecord, Message, Publish, ReplayQuery, StoredMessage, Subscription};
use crate::message_id::{random_node_id, MessageId, MessageIdGenerator};
use crate::metrics::{Gauges, Metrics};
use crate::outage::OutageLog;
use crate::spool::Spool;
use crate::store::{self, AckedMessage, Store, StoreError};
use crate::subscriptions::SubscriptionWriter;
use crate::topic::{is_sys_topic, parse_shared, TopicFilter};
use crate::writer::{BatchLimits, BatchWriter, DeadLetters};

/// Operations queued per batch in memory before publishers wait for the writer.
const QUEUE_BATCHES: usize = 16;

/// How often expired messages are purged and topics trimmed to `max_messages_per_topic`.
const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(1);
/// How long a replay waits for the writer to write what it holds before reading.
const REPLAY_FLUSH_WAIT: Duration = Duration::from_secs(10);

/// A replay with several writers (a cluster of nodes on one database). `id` order is commit order
/// per node, not across nodes: a page may pass a row that another node commits a moment later with
/// a smaller id, and the last page may come before a row another node still holds in its writer.
/// So once the last page is read, the replay waits `settle` and reads again from the last row it
/// read that was published more than `window` before the replay began (ids are handed out in time
/// order, so a row committed late has a larger id), skipping the rows it already read since. A
/// row read only then comes after newer ones it read before.
///
/// A read again that delivers rows shows that some node was still not routing to the new
/// subscription (in raft mode the subscription reaches the other nodes' routers through Raft, a
/// moment after its SUBACK, longer on a loaded machine): what those nodes publish meanwhile is only
/// stored. So the replay reads again, `settle` later each time, until a read delivers nothing (a
/// node that routes live sends its messages through the gate, and the replay skips their rows),
/// at most [`MAX_RECHECKS`] times.
#[derive(Clone, Copy, Debug)]
struct ReplayRecheck {
    settle: Duration,
    window: Duration,
}

impl ReplayRecheck {
    /// Another node holds a message in its writer for up to `batch_time` (the same config on
    /// every node), then commits it; on a loaded machine a commit may take a few hundred ms.
    fn for_batch_time(batch_time: Duration) -> ReplayRecheck {
        let settle = batch_time * 2 + Duration::from_millis(500);
        ReplayRecheck { settle, window: settle + Duration::from_secs(2) }
    }
}

/// Reads again of one replay at most (see [`ReplayRecheck`]): about 5 s with the default `batch_time`.
const MAX_RECHECKS: u32 = 10;

/// Rows per purge statement: short transactions, short locks.
const PURGE_BATCH: i64 = 1000;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{key}: {filter:?} is not a valid MQTT topic filter ({reason}); fix it in the config")]
    TopicFilter { key: String, filter: String, reason: String },
    #[error("auth.users: {0}; restart the broker to turn authentication on or off")]
    AuthToggle(&'static str),
    #[error(
        "{key}: cannot use the spool directory {path}: {cause}; give a writable directory (one per broker process)"
    )]
    Spool { key: String, path: String, cause: std::io::Error },
}

/// Why a replay ended before its last row.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The subscriber went away; its remaining rows stay stored.
    #[error("the subscriber is gone")]
    SubscriberGone,
    /// The subscriber unsubscribed (or its session ended); the remaining rows stay stored.
    #[error("the subscription is gone")]
    Unsubscribed,
    /// The subscriber stopped taking messages (no acknowledgements) for too long; its remaining
    /// rows stay stored, and the database connection the replay held is released.
    #[error("the subscriber took no message for {0:?}")]
    SubscriberStalled(std::time::Duration),
}

/// Where a replay delivers: the host's path to one client's session.
pub trait ReplaySink: Send {
    /// Delivers one stored message, waiting as long as the client needs room (pacing), with its
    /// `msgid` carried along as for a live delivery: its ack, or its delivery at QoS 0, is reported
    /// like any other ([`Engine::on_acked`], [`Engine::on_delivered_qos0`]). `timestamp_ms` is the
    /// time of reading; the message's `expiry_ms`, if any, is after it.
    fn deliver(
        &mut self,
        m: StoredMessage,
        timestamp_ms: i64,
    ) -> impl std::future::Future<Output = Result<(), ReplayError>> + Send;

    /// True when this stored row must not be delivered (the subscriber gets a live copy instead,
    /// see [`crate::gate`], or had it before).
    fn skip(&mut self, _m: &StoredMessage) -> bool {
        false
    }
}

/// A delivered stored message, as the host reports its ack or its QoS 0 delivery: the message id
/// the host carried with the delivery since [`Engine::on_publish`] (or the replay) gave it, and the
/// publisher and topic (which `delete_message_sql` may bind).
#[derive(Clone, Copy, Debug)]
pub struct Delivery<'a> {
    pub msgid: &'a str,
    pub from: &'a str,
    pub topic: &'a str,
}

/// The host-independent plugin.
pub struct Engine {
    store: Arc<dyn Store>,
    writer: BatchWriter,
    subscriptions: SubscriptionWriter,
    metrics: Arc<Metrics>,
    outage: Arc<OutageLog>,
    ids: MessageIdGenerator,
    /// `topics` and `auth`: replaced whole by [`Engine::reload`].
    topics: RwLock<Arc<Vec<TopicFilter>>>,
    mode: DeliveryMode,
    write_mode: WriteMode,
    restore: RestoreSubscriptions,
    shared_subscriptions: AtomicBool,
    message_ttl: Option<Duration>,
    page_size: u32,
    /// With several writers (`broker.cluster`): how a replay reads again for rows other nodes
    /// committed late.
    recheck: Option<ReplayRecheck>,
    /// Topics written since the last trim, when `max_messages_per_topic` is set.
    written_topics: Option<Mutex<HashSet<String>>>,
    maintenance: Mutex<Option<tokio::task::JoinHandle<()>>>,
    auth: RwLock<Arc<AuthConfig>>,
    passwords: PasswordChecker,
}

impl Engine {
    /// Connects to the configured backend, checks its templates, and starts the writer.
    pub async fn start(config: &Config) -> Result<Arc<Engine>, EngineError> {
        let backend = &config.backend;
        let storage = backend.storage();
        let topics = topic_filters(config)?;
        let store = store::connect(backend).await?;
        let limits = BatchLimits {
            batch_size: storage.batch_size,
            batch_time: storage.batch_time,
            queue_capacity: storage.max_buffered.unwrap_or(storage.batch_size.saturating_mul(QUEUE_BATCHES)),
        };
        let metrics = Arc::new(Metrics::new());
        let dead_letters = DeadLetters { path: storage.dead_letter_file.clone() };
        let spool = Spool::open(&storage.spool_dir, storage.spool_max_bytes, storage.spool_full).map_err(|cause| {
            EngineError::Spool {
                key: format!("{}.spool_dir", backend.name()),
                path: storage.spool_dir.display().to_string(),
                cause,
            }
        })?;
        let outage = Arc::new(OutageLog::default());
        if let (false, Some(e)) = (store.is_checked(), store.check_error()) {
            outage.began(&e.detail);
        }
        let writer = BatchWriter::spawn(store.clone(), limits, metrics.clone(), dead_letters, spool, outage.clone());
        let subscriptions =
            SubscriptionWriter::spawn(store.clone(), outage.clone(), limits.queue_capacity, metrics.clone());
        let node_id = config.broker.node_id.unwrap_or_else(random_node_id);
        tracing::info!(
            backend = backend.name(),
            node_id,
            topics = ?storage.topics,
            batch_size = limits.batch_size,
            batch_time_ms = limits.batch_time.as_millis() as u64,
            delivery_mode = ?storage.delivery_mode,
            write_mode = ?storage.write_mode,
            message_ttl_s = storage.message_ttl.map(|d| d.as_secs()),
            "offline-messages engine started"
        );
        let engine = Arc::new(Engine {
            store,
            writer,
            subscriptions,
            metrics: metrics.clone(),
            outage,
            ids: MessageIdGenerator::new(node_id),
            topics: RwLock::new(Arc::new(topics)),
            mode: storage.delivery_mode,
            write_mode: storage.write_mode,
            restore: storage.restore_subscriptions,
            shared_subscriptions: AtomicBool::new(true),
            message_ttl: storage.message_ttl,
            page_size: storage.replay_page_size,
            recheck: config.broker.cluster.as_ref().map(|_| ReplayRecheck::for_batch_time(storage.batch_time)),
            written_topics: storage.max_messages_per_topic.map(|_| Mutex::default()),
            maintenance: Mutex::default(),
            auth: RwLock::new(Arc::new(config.auth.clone())),
            passwords: PasswordChecker::new(metrics),
        });
        let task = tokio::spawn(maintain(Arc::downgrade(&engine), storage.max_messages_per_topic));
        *engine.maintenance.lock().expect("maintenance lock") = Some(task);
        Ok(engine)
    }

    /// True when `password` is `username`'s (see [`PasswordChecker`]: off the runtime's workers,
    /// and as slow for an unknown user as for a wrong password).
    pub async fn check_password(&self, username: &str, password: &[u8]) -> bool {
        self.passwords.verify(self.auth(), username, password).await
    }

    /// Users and ACL rules; hosts enforce them (`auth.enabled()` says whether to).
    pub fn auth(&self) -> Arc<AuthConfig> {
        self.auth.read().expect("auth lock").clone()
    }

    /// Applies a new config's `topics` and `auth` (users, ACL rules) to what comes next, all or
    /// nothing; returns what changed, one line per key. Authentication cannot be turned on or off
    /// this way (the listener decided at start whether anonymous clients may connect).
    pub fn reload(&self, config: &Config) -> Result<Vec<String>, EngineError> {
        let topics = topic_filters(config)?;
        let auth = self.auth();
        if auth.enabled() != config.auth.enabled() {
            return Err(EngineError::AuthToggle(if auth.enabled() { "no users any more" } else { "users added" }));
        }
        let mut changes = auth.changes_to(&config.auth);
        let old_topics =
            self.topics.read().expect("topics lock").iter().map(|f| f.as_str().to_owned()).collect::<Vec<_>>();
        if old_topics != config.backend.storage().topics {
            changes.push(format!(
                "{}.topics: {:?} (was {old_topics:?})",
                config.backend.name(),
                config.backend.storage().topics
            ));
        }
        *self.topics.write().expect("topics lock") = Arc::new(topics);
        *self.auth.write().expect("auth lock") = Arc::new(config.auth.clone());
        Ok(changes)
    }

    /// The broker refused a packet beyond its limit and closed the connection: nothing of it is
    /// stored, so the operator hears of it (logged and counted).
    pub fn on_packet_too_large(&self, client_id: &str, packet_bytes: u64, limit_bytes: u64) {
        Metrics::add(&self.metrics.packets_too_large, 1);
        tracing::warn!(
            client_id,
            packet_bytes,
            limit_bytes,
            "a packet larger than broker.max_packet_size was refused and the client disconnected; nothing of it is stored (raise broker.max_packet_size to accept such publishes)"
        );
    }

    pub fn restore_subscriptions(&self) -> RestoreSubscriptions {
        self.restore
    }

    /// Whether the host's broker reads `$share/{group}/{filter}` as a shared subscription (the
    /// default) or, with shared subscriptions off, as a literal filter. The plugin must read a
    /// filter as the broker does, or it would replay rows the broker never routes to that filter.
    pub fn set_shared_subscriptions(&self, on: bool) {
        self.shared_subscriptions.store(on, Ordering::Relaxed);
    }

    /// The filter the broker matches topics against for a subscription written `subscribed`: a
    /// shared subscription `$share/group/filter` gets what was published to `filter`.
    pub fn topic_filter_of<'a>(&self, subscribed: &'a str) -> &'a str {
        match parse_shared(subscribed) {
            Some(s) if self.shared_subscriptions.load(Ordering::Relaxed) => s.filter,
            _ => subscribed,
        }
    }

    /// True when a publish with this topic and QoS is persisted: QoS 1 or 2, not a `$SYS` topic,
    /// and matching one of the configured `topics`.
    fn persists(&self, topic: &str, qos: u8) -> bool {
        qos > 0 && !is_sys_topic(topic) && self.topics.read().expect("topics lock").iter().any(|f| f.matches(topic))
    }

    /// A client published: queue the message for the writer, if it is one we persist, and return
    /// its message id, which the host carries with every delivery of it (see [`Delivery`]). In
    /// `async` mode it never waits on the database (only, under overload, for room in the writer's
    /// queue); in `sync` mode it returns once the row is committed, and the host acknowledges the
    /// publish only then. Publishers waiting at the same time share one commit.
    pub async fn on_publish(&self, p: Publish) -> Option<String> {
        if !self.persists(&p.topic, p.qos) {
            return None;
        }
        let ts = p.timestamp_ms;
        let ttl_expiry = self.message_ttl.map(|ttl| ts.saturating_add(ttl.as_millis() as i64));
        let mqtt_expiry = p.properties.message_expiry_interval.map(|s| ts.saturating_add(i64::from(s) * 1000));
        let expiry = match (ttl_expiry, mqtt_expiry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Metrics::add(&self.metrics.matched, 1);
        let m = Message::new(self.ids.next_id(), p, expiry);
        let msgid = m.msgid.clone();
        if let Some(topics) = &self.written_topics {
            let mut topics = topics.lock().expect("written topics lock");
            if !topics.contains(&m.topic) {
                topics.insert(m.topic.clone());
            }
        }
        self.writer.insert(m).await;
        if self.write_mode == WriteMode::Sync {
            self.writer.flush_durable().await;
        }
        Some(msgid)
    }

    /// `subscriber` acknowledged a delivery of a stored message (PUBACK at QoS 1, PUBCOMP at QoS 2):
    /// in `queue` mode its row is deleted (the first ack removes it for everybody, as in the
    /// reference plugin); in `fanout` mode the subscriber is recorded as having had it.
    pub async fn on_acked(&self, subscriber: &str, d: Delivery<'_>) {
        if MessageId::from_base62(d.msgid).is_none() {
            return;
        }
        match self.mode {
            DeliveryMode::Queue => {
                let row =
                    AckedMessage { msgid: d.msgid.to_owned(), from: d.from.to_owned(), topic: d.topic.to_owned() };
                self.writer.delete(row).await;
            }
            DeliveryMode::Fanout => self.record_delivery(subscriber, d.msgid),
        }
    }

    /// A stored message went out to `subscriber` at QoS 0: no ack will come, so the delivery
    /// counts as one. The row stays for subscribers that ack; this one does not get it again. Never
    /// waits (see [`BatchWriter::record_delivery`]).
    pub fn on_delivered_qos0(&self, subscriber: &str, d: Delivery<'_>) {
        if MessageId::from_base62(d.msgid).is_some() {
            self.record_delivery(subscriber, d.msgid);
        }
    }

    fn record_delivery(&self, subscriber: &str, msgid: &str) {
        self.writer.record_delivery(DeliveryRecord { client_id: subscriber.to_owned(), msgid: msgid.to_owned() });
    }

    /// A client subscribed: store the subscription.
    pub async fn on_subscribed(&self, sub: &Subscription) -> Result<(), StoreError> {
        self.subscriptions.upsert(sub.clone()).await
    }

    /// A client unsubscribed: forget the subscription.
    pub async fn on_unsubscribed(&self, sub: &Subscription) -> Result<(), StoreError> {
        self.subscriptions.delete(sub.clone()).await
    }

    /// The subscriptions stored for a client, to restore when it connects without a clean start.
    pub async fn stored_subscriptions(&self, client_id: &str) -> Result<Vec<Subscription>, StoreError> {
        self.subscriptions.flush().await;
        self.store.select_subscriptions(client_id).await
    }

    /// A clean start or an ended session: no subscription of the client stays stored. Queued, not
    /// awaited, so the broker's session teardown never waits on the database (only, with the
    /// subscription queue full, for room in it).
    pub async fn forget_subscriptions(&self, client_id: &str) {
        if self.restore == RestoreSubscriptions::Persistent {
            self.subscriptions.forget(client_id).await;
        }
    }

    /// Replays the stored messages matching `sub` to `sink`, in the order of `select_message_sql`,
    /// a page of `replay_page_size` rows at a time (when the template pages). Messages still in the
    /// writer's queue are written first, so they are included, and acks still queued are applied
    /// first, so those messages are not. The select narrows the rows by the filter's literal
    /// prefix (`${topic_like}`); the MQTT match itself, wildcards and `$` topics included, is done
    /// here, so a case-insensitive collation cannot widen it. Expired rows are never delivered.
    pub async fn replay<S: ReplaySink>(&self, sub: &Subscription, sink: &mut S) -> Result<u64, ReplayError> {
        let text = self.topic_filter_of(&sub.filter);
        let Ok(filter) = TopicFilter::parse(text) else {
            tracing::warn!(client_id = %sub.client_id, topic = %sub.filter, "not a valid topic filter; nothing replayed");
            return Ok(0);
        };
        Metrics::add(&self.metrics.replays, 1);
        let result = self.replay_pages(sub, &filter, text, sink).await;
        if let Err(ReplayError::Store(e)) = &result {
            Metrics::add(&self.metrics.replay_failures, 1);
            if e.is_unreachable() {
                self.outage.began(e);
            }
        }
        result
    }

    async fn replay_pages<S: ReplaySink>(
        &self,
        sub: &Subscription,
        filter: &TopicFilter,
        text: &str,
        sink: &mut S,
    ) -> Result<u64, ReplayError> {
        let started_us = now_ms().saturating_mul(1000) as u64;
        // While the database is away the writer's flush waits for it: the replay fails instead
        // (and is retried), so that the subscriber's live messages are not held meanwhile.
        if tokio::time::timeout(REPLAY_FLUSH_WAIT, self.writer.flush()).await.is_err() {
            return Err(ReplayError::Store(StoreError::Unavailable));
        }
        let query_sub = Subscription { filter: text.to_owned(), ..sub.clone() };
        let limit = i64::from(self.page_size);
        let pages = self.store.replay_pages();
        let (mut after, mut delivered) = (0, 0);
        let recheck = self.recheck.filter(|_| pages);
        // For the reads again: where they start, the rows read since that they skip, how many
        // there were, and what the current one delivered.
        let (mut low_water, mut read_since, mut rechecks, mut found) = (0, HashSet::new(), 0, 0);
        loop {
            let query =
                ReplayQuery { sub: &query_sub, topic_like: filter.like_pattern(), now_ms: now_ms(), after, limit };
            let mut rows = self.store.select_messages(&query);
            let mut read = 0;
            while let Some(m) = rows.next().await.transpose()? {
                read += 1;
                match m.position {
                    Some(position) => after = after.max(position),
                    None if pages => return Err(ReplayError::Store(StoreError::NoId { key: self.store.replay_key() })),
                    None => {}
                }
                if let (Some(r), Some(position)) = (recheck, m.position) {
                    if rechecks > 0 {
                        if !read_since.insert(position) {
                            continue;
                        }
                    } else if published_us(&m.msgid).is_some_and(|p| p + r.window.as_micros() as u64 <= started_us) {
                        low_water = low_water.max(position);
                    } else {
                        read_since.insert(position);
                    }
                }
                let now = now_ms();
                if !filter.matches(&m.topic) || m.expiry_ms.is_some_and(|e| e <= now) || sink.skip(&m) {
                    continue;
                }
                sink.deliver(m, now).await?;
                Metrics::add(&self.metrics.replayed_messages, 1);
                delivered += 1;
                found += 1;
            }
            if !pages || read < limit {
                match recheck {
                    // The first read again; then again while the last one delivered rows.
                    Some(r) if rechecks == 0 || (found > 0 && rechecks < MAX_RECHECKS) => {
                        if rechecks > 0 {
                            tracing::debug!(
                                client_id = sub.client_id,
                                filter = text,
                                rechecks,
                                found,
                                "a replay's read again delivered rows that had not come live; reading again"
                            );
                        }
                        tokio::time::sleep(r.settle).await;
                        (rechecks, found, after) = (rechecks + 1, 0, low_water);
                    }
                    _ => return Ok(delivered),
                }
            }
        }
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The Prometheus text of everything counted so far, with the gauges read now.
    pub fn render_metrics(&self) -> String {
        let (pool_in_use, pool_open) = self.store.connections();
        self.metrics.render(Gauges {
            writer_queue: self.writer.queued(),
            subscription_queue: self.subscriptions.queued(),
            pool_in_use,
            pool_open,
        })
    }

    /// The same samples as [`Engine::render_metrics`], as one JSON object (`"name{labels}": value`),
    /// for hosts that report a plugin's state as JSON.
    pub fn metrics_json(&self) -> serde_json::Value {
        crate::metrics::samples_json(&self.render_metrics())
    }

    /// `Err(reason)` when the database does not answer a trivial query within `timeout`. The
    /// reason is in words, without the database's text; the error itself is logged.
    pub async fn health(&self, timeout: Duration) -> Result<(), String> {
        if let Some(e) = self.store.check_error() {
            return Err(e.reason);
        }
        match tokio::time::timeout(timeout, self.store.ping()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "/health: the database does not answer");
                Err(e.reason())
            }
            Err(_) => Err(format!("the database did not answer within {timeout:?}")),
        }
    }

    /// Makes everything queued durable (in the database, or in the spool while the database is
    /// away), then gives the spool until `deadline` to reach the database, and closes the pool.
    /// What the spool still holds then is written at the next start.
    pub async fn shutdown(&self, deadline: Duration) {
        if let Some(task) = self.maintenance.lock().expect("maintenance lock").take() {
            task.abort();
        }
        let queued = self.writer.queued();
        let started = tokio::time::Instant::now();
        if tokio::time::timeout(deadline, self.writer.flush_durable()).await.is_err() {
            Metrics::add(&self.metrics.shutdown_lost, self.writer.queued() as u64);
            tracing::error!(
                queued = self.writer.queued(),
                deadline_ms = deadline.as_millis() as u64,
                "the writer could not empty its queue in time; what it still held is lost"
            );
        } else {
            let left = deadline.saturating_sub(started.elapsed());
            let spool_bytes = self.metrics.spool_bytes.load(std::sync::atomic::Ordering::Relaxed);
            if spool_bytes > 0 {
                tracing::warn!(
                    spool_bytes,
                    until = %crate::encode::iso_time(now_ms().saturating_add(left.as_millis() as i64)),
                    "waiting for the database to take the spool before exiting, until broker.shutdown_timeout runs out; what the spool still holds then is written at the next start"
                );
            }
            match tokio::time::timeout(left, self.writer.flush()).await {
                Ok(()) => tracing::info!(queued, "writer flushed"),
                Err(_) => tracing::warn!(
                    deadline_ms = deadline.as_millis() as u64,
                    "the spool did not reach the database in time; it is written at the next start"
                ),
            }
        }
        let left = deadline.saturating_sub(started.elapsed());
        if tokio::time::timeout(left, self.subscriptions.flush()).await.is_err() {
            tracing::warn!("subscription changes still queued at shutdown are not stored");
        }
        self.store.close().await;
    }
}

/// The backend block's `topics`, parsed.
fn topic_filters(config: &Config) -> Result<Vec<TopicFilter>, EngineError> {
    let backend = &config.backend;
    backend
        .storage()
        .topics
        .iter()
        .map(|f| {
            TopicFilter::parse(f).map_err(|e| EngineError::TopicFilter {
                key: format!("{}.topics", backend.name()),
                filter: f.clone(),
                reason: e.to_string(),
            })
        })
        .collect()
}

/// Runs the store's checks while they have not passed (a start with the database away), then
/// purges expired messages and trims topics beyond `max_messages_per_topic`, in short statements,
/// until the engine is gone.
async fn maintain(engine: std::sync::Weak<Engine>, max_per_topic: Option<u64>) {
    let mut tick = tokio::time::interval(MAINTENANCE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_check_error: Option<String> = None;
    loop {
        tick.tick().await;
        let Some(engine) = engine.upgrade() else { return };
        if !engine.store.is_checked() {
            // Started while the database was away: check schema and templates once it answers.
            match engine.store.check().await {
                Ok(()) => {
                    engine.outage.ended();
                    tracing::info!("schema and templates checked; the spool is written now")
                }
                Err(e) if e.is_unreachable() => {}
                Err(e) => {
                    if last_check_error.as_deref() != Some(&e.to_string()) {
                        tracing::error!(error = %e, "the database answers but the checks fail: writes stay in the spool until this is fixed");
                        last_check_error = Some(e.to_string());
                    }
                }
            }
            continue;
        }
        let mut purged = 0;
        loop {
            match engine.store.purge_expired(now_ms(), PURGE_BATCH).await {
                Ok(n) => {
                    purged += n;
                    Metrics::add(&engine.metrics.purged_expired, n);
                    if n < PURGE_BATCH as u64 {
                        break;
                    }
                    // Room for other statements between the purge's short transactions.
                    tokio::task::yield_now().await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "purging expired messages failed; retrying later");
                    break;
                }
            }
        }
        if purged > 0 {
            tracing::debug!(rows = purged, "purged expired messages");
        }
        if let (Some(keep), Some(written)) = (max_per_topic, &engine.written_topics) {
            let topics = std::mem::take(&mut *written.lock().expect("written topics lock"));
            for topic in topics {
                match engine.store.trim_topic(&topic, keep).await {
                    Ok(0) => {}
                    Ok(n) => {
                        tracing::debug!(topic, rows = n, "dropped the oldest messages beyond max_messages_per_topic")
                    }
                    Err(e) => tracing::warn!(topic, error = %e, "trimming a topic failed; retrying later"),
                }
            }
        }
    }
}

/// When a stored message was published (unix microseconds), from its message id.
fn published_us(msgid: &str) -> Option<u64> {
    MessageId::from_base62(msgid).map(|id| id.micros())
}

pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}
