//! The rmqtt host: registers the engine as an rmqtt plugin and translates rmqtt hooks.
//!
//! This is the only module that imports rmqtt. It converts rmqtt's types at the edge, paces
//! replays against the subscriber's session queue, and owns nothing else.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rmqtt::codec::types::Publish as CodecPublish;
use rmqtt::codec::v5::PublishProperties;
use rmqtt::codec::v5::SubscribeAckReason;
use rmqtt::context::ServerContext;
use rmqtt::hook::{Handler, HookResult, Parameter, Register, ReturnType, Type};
use rmqtt::plugin::{PackageInfo, Plugin};
use rmqtt::session::Session;
use rmqtt::subscribe::SharedSubscription;
use rmqtt::types::{
    AuthResult, ClientId, From, Id, IsOnline, NodeId, Publish, PublishAclResult, QoS, Reason, SharedGroup,
    SubsSearchParams, SubsSearchResult, Subscribe, SubscribeReturn, SubscriptionIdentifier, SubscriptionOptions,
    TopicName,
};
use tokio::sync::Notify;

use crate::config::RestoreSubscriptions;
use crate::engine::{Delivery, Engine, ReplayError, ReplaySink};
use crate::gate::{Gate, Gates};
use crate::message::{Properties, Publish as EnginePublish, StoredMessage, Subscription};
use crate::message_id::MessageId;
use crate::topic::TopicFilter;
use crate::writer::jitter;

mod broker;
mod carry;
#[cfg(feature = "cluster")]
mod cluster;
mod retain;
mod takeover;
pub use broker::{Broker, BrokerError};
pub use retain::keep_retained_without_expiry;
pub use takeover::take_over_ending_sessions;

/// A live message held back while a replay runs.
type Live = (From, Publish);

/// Plugin name in rmqtt's plugin manager.
pub const PLUGIN_NAME: &str = "mqtt-offline-messages";

/// Replayed messages carry a `From` with this listener id, so that their deliveries can be told
/// apart from live traffic when pacing.
const REPLAY_LISTENER_ID: u16 = u16::MAX;

/// Replayed messages one client may have waiting in its session queue. rmqtt drops what goes beyond
/// the queue's `max_mqueue_len` (1000 by default), so a replay stays well below it: at most a
/// quarter of it.
const REPLAY_WINDOW: usize = 200;

/// How long a replay waits for progress before it checks that its subscriber is still connected.
const REPLAY_STALL_CHECK: Duration = Duration::from_secs(1);
/// How often a replay looks again at a session queue that other messages keep half full.
const QUEUE_POLL: Duration = Duration::from_millis(50);

/// A replay that failed on a database error is tried again after this, then twice as long each
/// time, up to `REPLAY_RETRY_MAX`.
const REPLAY_RETRY_FIRST: Duration = Duration::from_secs(1);
const REPLAY_RETRY_MAX: Duration = Duration::from_secs(60);
/// How long a resumed session may take to get its subscriptions back from the broker.
const SESSION_TRANSFER_WAIT: Duration = Duration::from_secs(10);

/// A connected subscriber that takes nothing for this long ends its replay.
const REPLAY_STALL_LIMIT: Duration = Duration::from_secs(120);

/// Stopped replays remembered per session, whose rows still in its queue are dropped there: the
/// most recent ones (a session that unsubscribes more often during replays may get a few rows of
/// an older one after its UNSUBACK).
const STOPPED_KEPT: usize = 1024;

/// Replays owed to persistent sessions, over all clients. Beyond it a failed replay is not owed
/// (its rows stay stored, for the next subscribe), and a warning says so.
const MAX_OWED: usize = 100_000;

/// rmqtt ships shared subscriptions switched off (its default strategy says "not supported", so
/// `$share/group/filter` is a plain filter). This one turns them on: each message goes to one
/// member of the group, the next online member in turn.
#[derive(Default)]
pub struct RoundRobinSharedSubscription {
    next: AtomicUsize,
}

#[async_trait]
impl SharedSubscription for RoundRobinSharedSubscription {
    fn is_supported(&self) -> bool {
        true
    }

    async fn choice(
        &self,
        _scx: &ServerContext,
        _group: &SharedGroup,
        _publisher: &Id,
        _topic: &TopicName,
        members: &[(NodeId, ClientId, SubscriptionOptions, Option<Vec<SubscriptionIdentifier>>, Option<IsOnline>)],
    ) -> Option<(usize, IsOnline)> {
        if members.is_empty() {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let order = (0..members.len()).map(|i| (start + i) % members.len());
        let online = order.clone().find(|&i| members[i].4 != Some(false));
        // With nobody online the message waits in one offline member's session.
        Some(online.map_or((start % members.len(), false), |i| (i, true)))
    }
}

/// Turns on shared subscriptions in a broker built on `scx` (see [`RoundRobinSharedSubscription`]).
pub async fn enable_shared_subscriptions(scx: &ServerContext) {
    *scx.extends.shared_subscription_mut().await = Box::new(RoundRobinSharedSubscription::default());
}

/// Registers the plugin with rmqtt's plugin manager and starts it: use this to embed the plugin in
/// your own rmqtt-based broker, after installing its shared-subscription strategy, if any (the
/// plugin reads `$share/...` as the broker does then).
pub async fn register(scx: &ServerContext, engine: Arc<Engine>) -> rmqtt::Result<()> {
    engine.set_shared_subscriptions(scx.extends.shared_subscription().await.is_supported());
    let scx1 = scx.clone();
    scx.plugins
        .register(PLUGIN_NAME, true, false, move || -> rmqtt::plugin::DynPluginResult {
            let (scx, engine) = (scx1.clone(), engine.clone());
            Box::pin(async move { Ok(Box::new(OfflineMessagesPlugin::new(scx, engine)) as rmqtt::plugin::DynPlugin) })
        })
        .await
}

struct OfflineMessagesPlugin {
    register: Box<dyn Register>,
    hooks: Arc<Hooks>,
}

impl OfflineMessagesPlugin {
    fn new(scx: ServerContext, engine: Arc<Engine>) -> Self {
        let register = scx.extends.hook_mgr().register();
        let gates = Gates::new(engine.metrics().clone());
        let hooks = Arc::new(Hooks {
            scx,
            engine,
            windows: Mutex::default(),
            no_replay: Mutex::default(),
            gates,
            clients: Mutex::default(),
            next_serial: AtomicU64::new(1),
        });
        OfflineMessagesPlugin { register, hooks }
    }
}

impl PackageInfo for OfflineMessagesPlugin {
    fn name(&self) -> &str {
        PLUGIN_NAME
    }
    fn version(&self) -> &str {
        env!("CARGO_PKG_VERSION")
    }
    fn descr(&self) -> Option<&str> {
        Some(env!("CARGO_PKG_DESCRIPTION"))
    }
}

#[async_trait]
impl Plugin for OfflineMessagesPlugin {
    async fn init(&mut self) -> rmqtt::Result<()> {
        for typ in [
            Type::MessagePublish,
            Type::MessageAcked,
            Type::MessageDelivered,
            Type::MessageDropped,
            Type::MessageExpiryCheck,
            Type::ClientAuthenticate,
            Type::ClientSubscribeCheckAcl,
            Type::MessagePublishCheckAcl,
            Type::ClientSubscribe,
            Type::SessionSubscribed,
            Type::SessionUnsubscribed,
            Type::ClientConnected,
            Type::SessionTerminated,
            Type::ClientDisconnected,
        ] {
            self.register.add(typ, Box::new(HookHandler(self.hooks.clone()))).await;
        }
        Ok(())
    }

    async fn start(&mut self) -> rmqtt::Result<()> {
        self.register.start().await;
        Ok(())
    }

    async fn stop(&mut self) -> rmqtt::Result<bool> {
        self.register.stop().await;
        Ok(true)
    }

    /// Everything `/metrics` serves (counters, gauges, histograms), as rmqtt's plugin API reports
    /// a plugin's state.
    async fn attrs(&self) -> serde_json::Value {
        self.hooks.engine.metrics_json()
    }
}

/// Per-client count of replayed messages handed to the session and not yet delivered.
#[derive(Default)]
struct ReplayWindow {
    outstanding: AtomicUsize,
    progress: Notify,
}

impl ReplayWindow {
    fn release(&self) {
        let _ = self.outstanding.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
        self.progress.notify_waiters();
    }
}

struct Hooks {
    scx: ServerContext,
    engine: Arc<Engine>,
    windows: Mutex<HashMap<String, Arc<ReplayWindow>>>,
    /// (client id, filter) of SUBSCRIBEs that get no replay: the session holds the filter already,
    /// or its shared-subscription group has other members.
    no_replay: Mutex<HashSet<(String, String)>>,
    /// Live messages held back while their subscription's replay runs.
    gates: Gates<Live>,
    /// The replays of each client id's session, while it lives.
    clients: Mutex<HashMap<String, ClientReplays>>,
    next_serial: AtomicU64,
}

/// One session's replays: running, stopped, owed. Forgotten when the session ends or a new one
/// starts under the same client id.
#[derive(Default)]
struct ClientReplays {
    /// The replay started last for each filter (as subscribed), while it runs.
    running: HashMap<String, Arc<ReplayRun>>,
    /// Serials of replays stopped while the session lives (at most [`STOPPED_KEPT`]): what they
    /// queued is dropped before it reaches the client.
    stopped: VecDeque<u64>,
    /// Replays that failed on a database error and were still owed when the client went away;
    /// the session gets them when it is resumed. One per filter.
    owed: Vec<OwedReplay>,
    /// The first and the last stored message the session's full queue dropped: the session gets
    /// what was published between them when it is resumed.
    overflowed: Option<(MessageId, MessageId)>,
}

impl ClientReplays {
    fn is_empty(&self) -> bool {
        self.running.is_empty() && self.stopped.is_empty() && self.owed.is_empty() && self.overflowed.is_none()
    }

    /// Stops every running replay; what they queued stays marked for dropping.
    fn stop_all(&mut self) {
        for (_, run) in self.running.drain() {
            run.stop();
            self.stopped.push_back(run.serial);
        }
        while self.stopped.len() > STOPPED_KEPT {
            self.stopped.pop_front();
        }
    }
}

/// One replay into one session, which an unsubscribe or the session's end stops.
struct ReplayRun {
    /// Tags what it queues into the session ([`carry::stamp_replayed`]).
    serial: u64,
    stopped: AtomicBool,
    progress: Arc<ReplayWindow>,
}

impl ReplayRun {
    fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        // A replay waiting for room in the session's queue notices at once.
        self.progress.progress.notify_waiters();
    }

    fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }
}

/// A replay still owed to a persistent session, limited to what it cannot have had otherwise.
struct OwedReplay {
    sub: Subscription,
    limits: ReplayLimits,
}

/// Which stored rows a replay delivers beyond its filter.
#[derive(Clone, Copy, Default)]
struct ReplayLimits {
    /// Only messages published before this (unix microseconds, from the message id): later ones
    /// reached the session live, or in the broker's own queue while the client was away.
    published_before_us: Option<u64>,
    /// Only messages after this position in the store's order: an earlier attempt delivered up to it.
    after_row: u128,
    /// Only messages with ids in this range (inclusive): those a full session queue dropped.
    ids: Option<(MessageId, MessageId)>,
}

struct HookHandler(Arc<Hooks>);

#[async_trait]
impl Handler for HookHandler {
    async fn hook(&self, param: &Parameter, acc: Option<HookResult>) -> ReturnType {
        let hooks = &self.0;
        match param {
            Parameter::ClientAuthenticate(info) if hooks.engine.auth().enabled() => {
                let allowed = match (info.username(), info.password()) {
                    (Some(user), Some(password)) => hooks.engine.check_password(user, password).await,
                    _ => false,
                };
                let result = if allowed { AuthResult::Allow(false, None) } else { AuthResult::BadUsernameOrPassword };
                if !allowed {
                    tracing::info!(client_id = %info.id().client_id, username = ?info.username(), "authentication refused");
                }
                return (false, Some(HookResult::AuthResult(result)));
            }
            Parameter::ClientSubscribeCheckAcl(session, sub) if hooks.engine.auth().enabled() => {
                let result = if hooks.may_subscribe(&session.id, &sub.topic_filter) {
                    SubscribeReturn::new_success(sub.opts.qos(), None)
                } else {
                    tracing::info!(client_id = %session.id.client_id, topic = %sub.topic_filter, "subscription refused by the ACL");
                    SubscribeReturn::new_failure(SubscribeAckReason::NotAuthorized)
                };
                return (false, Some(HookResult::SubscribeAclResult(result)));
            }
            Parameter::MessagePublishCheckAcl(session, publish) if hooks.engine.auth().enabled() => {
                let result = if hooks.may_publish(&session.id, &publish.topic) {
                    PublishAclResult::allow()
                } else {
                    tracing::info!(client_id = %session.id.client_id, topic = %publish.topic, "publish refused by the ACL");
                    PublishAclResult::rejected(false, None)
                };
                return (false, Some(HookResult::PublishAclResult(result)));
            }
            // rmqtt runs this hook before its ACL check: a publish the ACL refuses is not stored.
            Parameter::MessagePublish(Some(session), _, publish)
                if hooks.engine.auth().enabled() && !hooks.may_publish(&session.id, &publish.topic) => {}
            Parameter::MessagePublish(_, from, publish) => {
                // An earlier handler may have changed the publish: that one is routed.
                let publish = match &acc {
                    Some(HookResult::Publish(p)) => p,
                    _ => publish,
                };
                let p = EnginePublish {
                    from: from.id.client_id.to_string(),
                    topic: publish.topic.to_string(),
                    qos: publish.qos.value(),
                    retain: publish.retain,
                    payload: publish.payload.clone(),
                    timestamp_ms: publish.create_time.unwrap_or_else(crate::engine::now_ms),
                    properties: publish.properties.as_ref().map(properties_of).unwrap_or_default(),
                };
                let msgid = hooks.engine.on_publish(p).await;
                if let Some(stamped) = carry::stamp(publish, msgid.as_deref()) {
                    return (true, Some(HookResult::Publish(stamped)));
                }
            }
            Parameter::MessageAcked(session, from, publish) => {
                if let Some(d) = delivery_of(from, publish) {
                    hooks.engine.on_acked(&session.id.client_id, d).await
                }
            }
            Parameter::MessageDelivered(session, from, publish) => {
                let publish = match &acc {
                    Some(HookResult::Publish(p)) => p,
                    _ => publish,
                };
                hooks.delivered(&session.id.client_id, from);
                let delivered = carry::for_delivery(publish);
                let out = delivered.as_ref().unwrap_or(publish);
                if out.qos == QoS::AtMostOnce {
                    if let Some(d) = delivery_of(from, out) {
                        hooks.engine.on_delivered_qos0(&session.id.client_id, d);
                    }
                }
                if let Some(p) = delivered {
                    return (true, Some(HookResult::Publish(p)));
                }
            }
            // The broker drops a held message here; the replay delivers it after the stored ones.
            // It drops the rows of a stopped replay here, too: they stay stored.
            Parameter::MessageExpiryCheck(session, from, publish)
                if hooks.hold(&session.id.client_id, from, publish)
                    || hooks.of_stopped_replay(&session.id.client_id, from, publish) =>
            {
                return (false, Some(HookResult::MessageExpiry));
            }
            Parameter::MessageDropped(Some(to), from, publish, reason) => {
                let stopped = hooks.of_stopped_replay(&to.client_id, from, publish);
                if from.id.lid == REPLAY_LISTENER_ID && !stopped {
                    tracing::warn!(client_id = %to.client_id, reason = %reason, "a replayed message was dropped by the broker; it stays stored");
                }
                if matches!(reason, Reason::MessageQueueFull) && !stopped {
                    hooks.overflowed(&to.client_id, publish);
                }
                hooks.delivered(&to.client_id, from);
            }
            Parameter::ClientSubscribe(session, sub) => hooks.subscribing(session, sub).await,
            Parameter::SessionSubscribed(session, sub) => hooks.subscribed(session, sub).await,
            Parameter::SessionUnsubscribed(session, unsub) => {
                let filter = as_subscribed(unsub.shared_group.as_ref(), &unsub.topic_filter);
                let sub = Subscription { client_id: session.id.client_id.to_string(), filter, qos: 0 };
                hooks.no_replay.lock().expect("no-replay lock").remove(&(sub.client_id.clone(), sub.filter.clone()));
                hooks.stop_replay(session, &sub.filter).await;
                if let Err(e) = hooks.engine.on_unsubscribed(&sub).await {
                    tracing::error!(client_id = %sub.client_id, topic = %sub.filter, error = %e, "deleting a stored subscription failed");
                }
            }
            Parameter::ClientConnected(session) => hooks.connected(session).await,
            Parameter::SessionTerminated(session, _) => hooks.terminated(session).await,
            Parameter::ClientDisconnected(session, reason) => {
                if let Some((packet_bytes, limit_bytes)) = packet_too_large(&reason.to_string()) {
                    hooks.engine.on_packet_too_large(&session.id.client_id, packet_bytes, limit_bytes);
                }
            }
            _ => {}
        }
        (true, acc)
    }
}

impl Hooks {
    fn may_publish(&self, id: &Id, topic: &str) -> bool {
        let user = id.username.as_deref().unwrap_or_default();
        self.engine.auth().may_publish(user, &id.client_id, topic)
    }

    fn may_subscribe(&self, id: &Id, filter: &str) -> bool {
        let user = id.username.as_deref().unwrap_or_default();
        self.engine.auth().may_subscribe(user, &id.client_id, filter)
    }

    fn delivered(&self, client_id: &str, from: &From) {
        if from.id.lid != REPLAY_LISTENER_ID {
            return;
        }
        if let Some(w) = self.windows.lock().expect("replay windows lock").get(client_id) {
            w.release();
        }
    }

    /// A message the plugin queued into `client_id`'s session for a replay that was stopped since.
    fn of_stopped_replay(&self, client_id: &str, from: &From, publish: &Publish) -> bool {
        if from.id.lid != REPLAY_LISTENER_ID {
            return false;
        }
        let Some(serial) = carry::replay_of(publish) else { return false };
        self.clients.lock().expect("replays lock").get(client_id).is_some_and(|c| c.stopped.contains(&serial))
    }

    /// The session's queue was full and rmqtt dropped `publish` from it: if it is stored, the
    /// session is owed it (see [`ClientReplays::overflowed`]).
    fn overflowed(&self, client_id: &str, publish: &Publish) {
        let Some(id) = carry::carried(publish).and_then(MessageId::from_base62) else { return };
        let mut clients = self.clients.lock().expect("replays lock");
        let c = clients.entry(client_id.to_owned()).or_default();
        if c.overflowed.is_none() {
            tracing::warn!(client_id, "the session's queue is full (broker.max_mqueue_len): the stored messages it drops are replayed when the session is resumed");
        }
        c.overflowed = Some(c.overflowed.map_or((id, id), |(first, last)| (first.min(id), last.max(id))));
    }

    /// An unsubscribe stops the subscription's replay: it reads no further row, the rows it queued
    /// are dropped before they reach the client (they stay stored), and its gate closes, so that a
    /// new subscribe gets a gate and a replay of its own. The live messages the gate held were
    /// routed to the client before the unsubscribe: they go to it if it still subscribes to their
    /// topic through another filter.
    async fn stop_replay(&self, session: &Session, filter: &str) {
        let run = {
            let mut clients = self.clients.lock().expect("replays lock");
            let Some(c) = clients.get_mut(&*session.id.client_id) else { return };
            let Some(run) = c.running.remove(filter) else { return };
            run.stop();
            c.stopped.push_back(run.serial);
            if c.stopped.len() > STOPPED_KEPT {
                c.stopped.pop_front();
            }
            run
        };
        tracing::debug!(client_id = %session.id.client_id, topic = filter, serial = run.serial, "unsubscribed: replay stopped");
        let Some(gate) = self.gates.claim(&session.id.client_id, filter) else { return };
        self.gates.close(&gate);
        let Some(held) = self.gates.drain_or_close(&gate) else { return };
        let filters: Vec<TopicFilter> = match session.subscriptions().await {
            Ok(subs) => subs.to_topic_filters().await.iter().filter_map(|f| TopicFilter::parse(f).ok()).collect(),
            Err(_) => Vec::new(),
        };
        let entry = self.scx.extends.shared().await.entry(session.id.clone());
        for (from, publish) in held {
            if filters.iter().any(|f| f.matches(&publish.topic)) {
                let _ = entry.publish(from, publish).await;
            }
        }
    }

    /// Stops the client's replays and forgets what it was owed: its session ended (`ended`), or a
    /// new one started under its client id.
    fn end_replays(&self, client_id: &str, ended: bool) {
        let mut clients = self.clients.lock().expect("replays lock");
        let Some(c) = clients.get_mut(client_id) else { return };
        c.stop_all();
        c.owed.clear();
        c.overflowed = None;
        if ended {
            clients.remove(client_id);
        }
    }

    /// Before the broker adds a subscription: a new one gets a gate, so that its live messages wait
    /// for its replay. One the session already holds is noted: as the reference 2.0.1 does, a
    /// re-subscribe stores the new QoS but does not replay again. Nor does a member joining a
    /// shared-subscription group that has members already: a group gets its backlog once.
    async fn subscribing(&self, session: &Session, sub: &Subscribe) {
        let held = match session.subscriptions().await {
            Ok(subs) => subs.to_topic_filters().await.contains(&sub.topic_filter),
            Err(_) => false,
        };
        let filter = subscribed_filter(sub);
        if self.engine.auth().enabled() && !self.may_subscribe(&session.id, &sub.topic_filter) {
            return; // refused by the ACL check that follows: no replay, no gate
        }
        if held || self.group_has_members(session, sub).await {
            self.no_replay.lock().expect("no-replay lock").insert((session.id.client_id.to_string(), filter));
        } else {
            self.gates.open(&session.id.client_id, &filter, &sub.topic_filter);
        }
    }

    async fn subscribed(self: &Arc<Self>, session: &Session, sub: &Subscribe) {
        let filter = subscribed_filter(sub);
        let client_id = session.id.client_id.to_string();
        let no_replay = self.no_replay.lock().expect("no-replay lock").remove(&(client_id.clone(), filter.clone()));
        let sub = Subscription { client_id, filter, qos: sub.opts.qos().value() };
        if let Err(e) = self.engine.on_subscribed(&sub).await {
            tracing::error!(client_id = %sub.client_id, topic = %sub.filter, error = %e, "storing a subscription failed");
        }
        if !no_replay {
            let gate = self.gates.claim(&sub.client_id, &sub.filter);
            self.spawn_replay(session, sub, gate, ReplayLimits::default(), Vec::new());
        }
    }

    /// True for a shared subscription whose group already has another member (in a cluster, on
    /// any node).
    async fn group_has_members(&self, session: &Session, sub: &Subscribe) -> bool {
        let Some(group) = sub.opts.shared_group() else { return false };
        // Asked of the broker's shared state, which in a cluster asks the other nodes too.
        let query = SubsSearchParams {
            _limit: 2,
            topic: Some(sub.topic_filter.to_string()),
            share: Some(group.clone()),
            ..SubsSearchParams::default()
        };
        let members = self.scx.extends.shared().await.query_subscriptions(&query).await;
        members.iter().any(|m| m.clientid != session.id.client_id)
    }

    /// A live delivery to `client_id`: true if a running replay holds it back.
    fn hold(&self, client_id: &str, from: &From, publish: &Publish) -> bool {
        // Replayed messages pass; so do the retainer's, which a replay never delivers itself.
        if from.id.lid == REPLAY_LISTENER_ID || publish.retain {
            return false;
        }
        let live = (from.clone(), publish.clone());
        let payload_bytes = publish.payload.len();
        self.gates
            .hold(client_id, &publish.topic, payload_bytes, live, || carry::carried(publish).map(str::to_owned))
            .is_ok()
    }

    /// A client connected: a clean start clears its stored subscriptions; a persistent session the
    /// broker no longer holds (after a broker restart, or from another node) gets its stored
    /// subscriptions back, each replayed. With `restore_subscriptions = "always"` every connect
    /// without a session restores them, clean start included.
    async fn connected(self: &Arc<Self>, session: &Session) {
        let clean_start = match session.connect_info().await {
            Ok(info) => info.clean_start(),
            Err(e) => {
                tracing::warn!(client_id = %session.id.client_id, error = %e, "no connect info; subscriptions not restored");
                return;
            }
        };
        let client_id = session.id.client_id.to_string();
        // A SUBSCRIBE the broker refused leaves its mark behind; a new connection starts clean.
        self.no_replay.lock().expect("no-replay lock").retain(|(c, _)| *c != client_id);
        self.gates.close_client(&client_id);
        let resumed = !clean_start && session.session_present().await.unwrap_or(false);
        if !resumed {
            // A new session: what an earlier one was owed, or was being replayed, is not its own.
            self.end_replays(&client_id, false);
        }
        let always = self.engine.restore_subscriptions() == RestoreSubscriptions::Always;
        if clean_start && !always {
            self.engine.forget_subscriptions(&client_id).await;
            return;
        }
        // A resumed session (session present) gets its subscriptions back from the broker itself,
        // in a state transfer that runs after this hook; only a session the broker no longer has
        // (a clean start under `always`, a broker restart, another node) needs them from the store.
        if resumed {
            self.pay_owed_replays(session);
            if always {
                self.spawn_restore_unheld(session.clone());
            }
            return;
        }
        match self.engine.stored_subscriptions(&client_id).await {
            Ok(stored) => self.restore(session, stored).await,
            Err(e) => {
                tracing::error!(client_id, error = %e, "reading stored subscriptions failed; retrying while the client stays connected");
                self.spawn_restore_retry(session.clone());
            }
        }
    }

    /// A sink that delivers nothing, to ask what a session holds ([`SessionSink::still_subscribed`]).
    fn probe(&self, id: Id) -> SessionSink {
        let window = Arc::new(ReplayWindow::default());
        let run = Arc::new(ReplayRun { serial: 0, stopped: AtomicBool::new(false), progress: window.clone() });
        let limits = ReplayLimits::default();
        SessionSink {
            scx: self.scx.clone(),
            id,
            window,
            window_limit: 1,
            run,
            qos: 0,
            gate: None,
            limits,
            delivered_up_to: 0,
            yield_to: Vec::new(),
        }
    }

    /// A resumed session gets the replays that failed while its client was away, and the stored
    /// messages its full queue dropped, once the broker has handed it its subscriptions and queue
    /// again (so they come after what the queue kept).
    fn pay_owed_replays(self: &Arc<Self>, session: &Session) {
        let (owed, overflowed) = match self.clients.lock().expect("replays lock").get_mut(&*session.id.client_id) {
            Some(c) if !c.owed.is_empty() || c.overflowed.is_some() => {
                (std::mem::take(&mut c.owed), c.overflowed.take())
            }
            _ => return,
        };
        let hooks = self.clone();
        let session = session.clone();
        tokio::spawn(async move {
            let probe = hooks.probe(session.id.clone());
            let filters: Vec<&str> = owed.iter().map(|o| o.sub.filter.as_str()).collect();
            let held = probe.held_after_transfer(&filters).await;
            for (OwedReplay { sub, limits }, held) in owed.into_iter().zip(held) {
                if held {
                    hooks.spawn_replay(&session, sub, None, limits, Vec::new());
                } else {
                    tracing::info!(client_id = %sub.client_id, topic = %sub.filter, "the resumed session no longer holds the filter; its owed replay is dropped");
                }
            }
            if let Some(dropped) = overflowed {
                let subs = probe.subscriptions_after_transfer().await;
                hooks.replay_overflow(&session, subs, dropped);
            }
        });
    }

    /// Replays what a full queue dropped: for each filter the session holds, the stored messages
    /// published from the first dropped one to the last; a message two filters match comes once,
    /// through the first. Shared subscriptions are left out: their group shared those messages.
    fn replay_overflow(
        self: &Arc<Self>,
        session: &Session,
        subs: Vec<SubsSearchResult>,
        dropped: (MessageId, MessageId),
    ) {
        let mut earlier: Vec<TopicFilter> = Vec::new();
        for s in subs.into_iter().filter(|s| s.opts.shared_group().is_none()) {
            let filter = s.topic.to_string();
            let sub = Subscription { client_id: session.id.client_id.to_string(), filter, qos: s.opts.qos().value() };
            tracing::info!(client_id = %sub.client_id, topic = %sub.filter, "replaying what the full queue dropped");
            let limits = ReplayLimits { ids: Some(dropped), ..ReplayLimits::default() };
            let parsed = TopicFilter::parse(&sub.filter).ok();
            self.spawn_replay(session, sub, None, limits, earlier.clone());
            earlier.extend(parsed);
        }
    }

    /// `restore_subscriptions = "always"` and a resumed session: the stored subscriptions it does
    /// not hold (provisioned in `mqtt_sub` while it was away) are restored, once the broker has
    /// handed the session its own.
    fn spawn_restore_unheld(self: &Arc<Self>, session: Session) {
        let hooks = self.clone();
        tokio::spawn(async move {
            let stored = match hooks.engine.stored_subscriptions(&session.id.client_id).await {
                Ok(stored) => stored,
                Err(e) => {
                    tracing::error!(client_id = %session.id.client_id, error = %e, "reading stored subscriptions failed; the resumed session keeps its own");
                    return;
                }
            };
            let filters: Vec<&str> = stored.iter().map(|s| s.filter.as_str()).collect();
            let held = hooks.probe(session.id.clone()).held_after_transfer(&filters).await;
            let unheld = stored.iter().zip(held).filter(|(_, held)| !held).map(|(sub, _)| sub.clone()).collect();
            hooks.restore(&session, unheld).await;
        });
    }

    /// Reads the stored subscriptions again, 1 s, then twice as long each time up to 60 s (with jitter), until
    /// it succeeds or the client's connection (this session) is gone.
    fn spawn_restore_retry(self: &Arc<Self>, session: Session) {
        let hooks = self.clone();
        tokio::spawn(async move {
            let mut backoff = REPLAY_RETRY_FIRST;
            loop {
                tokio::time::sleep(backoff + jitter(backoff)).await;
                backoff = (backoff * 2).min(REPLAY_RETRY_MAX);
                let entry = hooks.scx.extends.shared().await.entry(session.id.clone());
                if entry.id_same() != Some(true) || !entry.is_connected().await {
                    return;
                }
                match hooks.engine.stored_subscriptions(&session.id.client_id).await {
                    Ok(stored) => return hooks.restore(&session, stored).await,
                    Err(e) => {
                        tracing::warn!(client_id = %session.id.client_id, error = %e, "reading stored subscriptions failed again")
                    }
                }
            }
        });
    }

    /// Subscribes the session to its stored subscriptions that the ACL allows, each replayed.
    async fn restore(self: &Arc<Self>, session: &Session, stored: Vec<Subscription>) {
        let client_id = session.id.client_id.to_string();
        // Read as the broker reads a SUBSCRIBE: `$share/...` is a share only where shares are on.
        let shared = self.scx.extends.shared_subscription().await.is_supported();
        for sub in stored {
            let qos = QoS::try_from(sub.qos).unwrap_or(QoS::AtLeastOnce);
            let subscribe = match Subscribe::from_v3(&sub.filter.as_str().into(), qos, shared, false) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(client_id, topic = %sub.filter, error = %e, "a stored subscription is not a valid filter; skipped");
                    continue;
                }
            };
            if self.engine.auth().enabled() && !self.may_subscribe(&session.id, &subscribe.topic_filter) {
                tracing::warn!(client_id, topic = %sub.filter, "a stored subscription the ACL refuses is not restored");
                continue;
            }
            let replay = !self.group_has_members(session, &subscribe).await;
            let gate = replay.then(|| self.gates.open(&client_id, &sub.filter, &subscribe.topic_filter));
            let entry = self.scx.extends.shared().await.entry(session.id.clone());
            match entry.subscribe(&subscribe).await {
                Ok(_) => {
                    tracing::info!(client_id, topic = %sub.filter, "restored a stored subscription");
                    if replay {
                        let gate = self.gates.claim(&client_id, &sub.filter);
                        self.spawn_replay(session, sub, gate, ReplayLimits::default(), Vec::new());
                    }
                }
                Err(e) => {
                    if let Some(gate) = gate {
                        self.gates.close(&gate);
                    }
                    tracing::warn!(client_id, topic = %sub.filter, error = %e, "restoring a stored subscription failed")
                }
            }
        }
    }

    /// A session ended (a clean session disconnected, or a persistent one expired): its
    /// subscriptions end with it, as MQTT says. A broker shutdown ends no session, so the stored
    /// subscriptions of persistent sessions survive a restart.
    async fn terminated(&self, session: &Session) {
        // A newer connection of the same client took over: its subscriptions are not ours to drop.
        if self.scx.extends.shared().await.entry(session.id.clone()).id_same() == Some(false) {
            return;
        }
        self.gates.close_client(&session.id.client_id);
        self.end_replays(&session.id.client_id, true);
        tracing::debug!(client_id = %session.id.client_id, "session ended; its stored subscriptions go");
        self.engine.forget_subscriptions(&session.id.client_id).await;
    }

    /// Replays in a task of its own: the hook runs on the client's task, which must keep running
    /// to send SUBACK and deliver what the replay queues. The live messages the gate held back
    /// follow the stored ones.
    /// `yield_to`: filters whose rows this replay leaves to another.
    fn spawn_replay(
        self: &Arc<Self>,
        session: &Session,
        sub: Subscription,
        gate: Option<Arc<Gate<Live>>>,
        limits: ReplayLimits,
        yield_to: Vec<TopicFilter>,
    ) {
        let hooks = self.clone();
        let id = session.id.clone();
        let window_limit = (session.listen_cfg().max_mqueue_len / 4).clamp(1, REPLAY_WINDOW);
        // Taken once the subscription is in place: anything published before may be owed to it.
        let started_us =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64);
        let window =
            self.windows.lock().expect("replay windows lock").entry(sub.client_id.clone()).or_default().clone();
        let serial = self.next_serial.fetch_add(1, Ordering::Relaxed);
        let run = Arc::new(ReplayRun { serial, stopped: AtomicBool::new(false), progress: window.clone() });
        // Registered before the hook returns, so that an UNSUBSCRIBE that follows finds it.
        self.clients
            .lock()
            .expect("replays lock")
            .entry(sub.client_id.clone())
            .or_default()
            .running
            .insert(sub.filter.clone(), run.clone());
        tokio::spawn(async move {
            let delivered_up_to = limits.after_row;
            let mut sink = SessionSink {
                scx: hooks.scx.clone(),
                id,
                window,
                window_limit,
                run,
                qos: sub.qos,
                gate,
                limits,
                delivered_up_to,
                yield_to,
            };
            let mut result = hooks.engine.replay(&sub, &mut sink).await;
            log_replay(&sub, &result);
            if let Some(gate) = sink.gate.take() {
                if matches!(result, Err(ReplayError::SubscriberGone | ReplayError::Unsubscribed)) {
                    hooks.gates.close(&gate);
                } else {
                    sink.release_held(&hooks.gates, &gate).await;
                }
            }
            // A database error does not skip the replay: it is tried again while the client keeps
            // the subscription (acknowledged messages are gone from the table by then, and what
            // the client has had live in fanout mode is recorded).
            let mut backoff = REPLAY_RETRY_FIRST;
            while matches!(result, Err(ReplayError::Store(_))) && sink.still_subscribed(&sub.filter).await {
                tokio::time::sleep(backoff + jitter(backoff)).await;
                backoff = (backoff * 2).min(REPLAY_RETRY_MAX);
                if !sink.still_subscribed(&sub.filter).await {
                    break;
                }
                sink.limits.after_row = sink.delivered_up_to;
                result = hooks.engine.replay(&sub, &mut sink).await;
                log_replay(&sub, &result);
            }
            if matches!(result, Err(ReplayError::Store(_))) && !sink.run.is_stopped() {
                // The client went away before the database answered: owed to its session, if it
                // comes back to it (what was published after the subscribe reaches it anyway).
                let limits = ReplayLimits {
                    published_before_us: Some(sink.limits.published_before_us.unwrap_or(started_us)),
                    after_row: sink.delivered_up_to,
                    ..sink.limits
                };
                hooks.owe(OwedReplay { sub: sub.clone(), limits }, &sink.run);
            }
            hooks.finished(&sub, &sink.run);
            drop(sink);
            let mut windows = hooks.windows.lock().expect("replay windows lock");
            if windows.get(&sub.client_id).is_some_and(|w| Arc::strong_count(w) == 1) {
                windows.remove(&sub.client_id);
            }
        });
    }
}

impl Hooks {
    /// Keeps a replay for the client's session to get when it is resumed; a later failure of the
    /// same filter's replay replaces an earlier one.
    fn owe(&self, owed: OwedReplay, run: &Arc<ReplayRun>) {
        let mut clients = self.clients.lock().expect("replays lock");
        let total: usize = clients.values().map(|c| c.owed.len()).sum();
        let Some(c) = clients.get_mut(&owed.sub.client_id) else { return };
        // Ended with its session (or a new one started) while the replay ran: owed to nobody.
        if !c.running.get(&owed.sub.filter).is_some_and(|r| Arc::ptr_eq(r, run)) {
            return;
        }
        c.owed.retain(|o| o.sub.filter != owed.sub.filter);
        if total >= MAX_OWED {
            tracing::warn!(client_id = %owed.sub.client_id, topic = %owed.sub.filter, limit = MAX_OWED, "too many owed replays: this one is not kept; its rows stay stored");
            return;
        }
        tracing::warn!(client_id = %owed.sub.client_id, topic = %owed.sub.filter, "replay owed to the session until the client reconnects");
        c.owed.push(owed);
    }

    /// A replay ended: it no longer runs for its filter.
    fn finished(&self, sub: &Subscription, run: &Arc<ReplayRun>) {
        let mut clients = self.clients.lock().expect("replays lock");
        let Some(c) = clients.get_mut(&sub.client_id) else { return };
        if c.running.get(&sub.filter).is_some_and(|r| Arc::ptr_eq(r, run)) {
            c.running.remove(&sub.filter);
        }
        if c.is_empty() {
            clients.remove(&sub.client_id);
        }
    }
}

fn log_replay(sub: &Subscription, result: &Result<u64, ReplayError>) {
    match result {
        Ok(0) => tracing::debug!(client_id = %sub.client_id, topic = %sub.filter, "nothing stored to replay"),
        Ok(n) => tracing::info!(client_id = %sub.client_id, topic = %sub.filter, messages = n, "replay done"),
        Err(e @ (ReplayError::SubscriberGone | ReplayError::Unsubscribed | ReplayError::SubscriberStalled(_))) => {
            tracing::info!(client_id = %sub.client_id, topic = %sub.filter, reason = %e, "replay stopped; the rest stays stored")
        }
        // The engine has said the database is away (once for the outage).
        Err(ReplayError::Store(e)) if e.is_unreachable() => {
            tracing::debug!(client_id = %sub.client_id, topic = %sub.filter, error = %e, "replay failed; retrying while the client keeps the subscription")
        }
        Err(e) => {
            tracing::error!(client_id = %sub.client_id, topic = %sub.filter, error = %e, "replay failed; retrying while the client keeps the subscription")
        }
    }
}

/// rmqtt closes a connection that sends a packet beyond the listener's `max_packet_size` with this
/// reason (rmqtt-codec's `DecodeError::MaxSizeExceeded`, which reaches the hook only as text):
/// `(remaining length, limit)`.
fn packet_too_large(reason: &str) -> Option<(u64, u64)> {
    let rest = reason.split_once("Max size exceeded: size=")?.1;
    let (size, rest) = rest.split_once(", max=")?;
    let max = rest.split(|c: char| !c.is_ascii_digit()).next()?;
    Some((size.parse().ok()?, max.parse().ok()?))
}

/// The stored message a delivery or an ack is about; `None` for one not stored.
fn delivery_of<'a>(from: &'a From, publish: &'a Publish) -> Option<Delivery<'a>> {
    Some(Delivery { msgid: carry::carried(publish)?, from: &from.id.client_id, topic: &publish.topic })
}

fn properties_of(p: &PublishProperties) -> Properties {
    Properties {
        payload_format_indicator: p.is_utf8_payload.then_some(1),
        message_expiry_interval: p.message_expiry_interval.map(|s| s.get()),
        content_type: p.content_type.as_ref().map(|s| s.to_string()),
        response_topic: p.response_topic.as_ref().map(|s| s.to_string()),
        correlation_data: p.correlation_data.clone(),
        user_properties: p.user_properties.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
    }
}

/// The properties a replayed message goes out with: the stored ones, and the expiry left
/// (`remaining`, seconds) in place of the interval published. `None` when there are none, as for
/// an MQTT 3 publish.
fn codec_properties(p: &Properties, remaining: Option<u32>) -> Option<PublishProperties> {
    if *p == Properties::default() && remaining.is_none() {
        return None;
    }
    Some(PublishProperties {
        is_utf8_payload: p.payload_format_indicator == Some(1),
        message_expiry_interval: remaining.and_then(std::num::NonZeroU32::new),
        content_type: p.content_type.as_deref().map(Into::into),
        response_topic: p.response_topic.as_deref().map(Into::into),
        correlation_data: p.correlation_data.clone(),
        user_properties: p.user_properties.iter().map(|(k, v)| (k.as_str().into(), v.as_str().into())).collect(),
        ..PublishProperties::default()
    })
}

/// The filter a SUBSCRIBE names, `$share/group/` included.
fn subscribed_filter(sub: &Subscribe) -> String {
    as_subscribed(sub.opts.shared_group(), &sub.topic_filter)
}

/// rmqtt keeps a shared subscription's group apart from its filter; the store keeps the filter as
/// the client wrote it.
fn as_subscribed(group: Option<&SharedGroup>, filter: &str) -> String {
    match group {
        Some(group) => format!("$share/{group}/{filter}"),
        None => filter.to_owned(),
    }
}

/// Delivers replayed messages into one client's session, at most `window_limit` ahead of what the
/// session has sent on.
struct SessionSink {
    scx: ServerContext,
    id: Id,
    window: Arc<ReplayWindow>,
    /// Replayed messages it keeps in the session's queue at most.
    window_limit: usize,
    run: Arc<ReplayRun>,
    qos: u8,
    gate: Option<Arc<Gate<Live>>>,
    /// Which rows this replay leaves out.
    limits: ReplayLimits,
    /// Rows these match are left to another replay.
    yield_to: Vec<TopicFilter>,
    /// The largest table id delivered: where a retry starts (an attempt may deliver a row with a
    /// smaller id after a larger one, when it reads again for rows other nodes committed late).
    delivered_up_to: u128,
}

impl ReplaySink for SessionSink {
    async fn deliver(&mut self, m: StoredMessage, timestamp_ms: i64) -> Result<(), ReplayError> {
        if self.run.is_stopped() {
            return Err(ReplayError::Unsubscribed);
        }
        if self.retainer_delivers(&m).await {
            return Ok(());
        }
        let qos = QoS::try_from(m.qos.min(self.qos)).unwrap_or(QoS::AtLeastOnce);
        // The expiry left, rounded up to whole seconds as MQTT counts it.
        let remaining = m.expiry_ms.map(|e| ((e - timestamp_ms).max(1) as u64).div_ceil(1000) as u32);
        let publish = Publish::from(CodecPublish {
            dup: false,
            retain: false,
            qos,
            topic: m.topic.as_str().into(),
            packet_id: None,
            payload: m.payload,
            properties: codec_properties(&m.properties, remaining),
        })
        .create_time(timestamp_ms);
        let publish = carry::stamp_replayed(&publish, &m.msgid, self.run.serial);
        self.forward(&m.from, publish).await?;
        if let Some(position) = m.position {
            self.delivered_up_to = self.delivered_up_to.max(position);
        }
        Ok(())
    }

    fn skip(&mut self, m: &StoredMessage) -> bool {
        let limits = self.limits;
        m.position.is_some_and(|position| position <= limits.after_row)
            || limits
                .ids
                .is_some_and(|(first, last)| MessageId::from_base62(&m.msgid).is_none_or(|id| id < first || id > last))
            || self.yield_to.iter().any(|f| f.matches(&m.topic))
            || limits
                .published_before_us
                .is_some_and(|before| MessageId::from_base62(&m.msgid).is_some_and(|id| id.micros() >= before))
            || self.gate.as_ref().is_some_and(|g| g.replaying(&m.msgid))
    }
}

impl SessionSink {
    /// Which of `filters` the session holds once the broker has handed a resumed session its
    /// subscriptions (it does so after the connect hook): checked until it holds one of them, or
    /// for [`SESSION_TRANSFER_WAIT`].
    async fn held_after_transfer(&self, filters: &[&str]) -> Vec<bool> {
        let start = tokio::time::Instant::now();
        loop {
            let mut held = Vec::with_capacity(filters.len());
            for filter in filters {
                held.push(self.still_subscribed(filter).await);
            }
            if held.is_empty() || held.contains(&true) || start.elapsed() > SESSION_TRANSFER_WAIT {
                return held;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The subscriptions of a resumed session, once the broker has handed them over (it has
    /// queued the session's kept messages by then), or none after [`SESSION_TRANSFER_WAIT`].
    async fn subscriptions_after_transfer(&self) -> Vec<SubsSearchResult> {
        let start = tokio::time::Instant::now();
        loop {
            let entry = self.scx.extends.shared().await.entry(self.id.clone());
            let subs = entry.subscriptions().await.unwrap_or_default();
            if !subs.is_empty() || start.elapsed() > SESSION_TRANSFER_WAIT {
                return subs;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The client is connected and still holds `filter` (as subscribed, `$share/...` included).
    async fn still_subscribed(&self, filter: &str) -> bool {
        let entry = self.scx.extends.shared().await.entry(self.id.clone());
        if !entry.is_connected().await {
            return false;
        }
        entry
            .subscriptions()
            .await
            .is_some_and(|subs| subs.iter().any(|s| as_subscribed(s.opts.shared_group(), &s.topic) == filter))
    }

    /// Queues one message into the session, from `publisher` through the replay's listener id,
    /// once the session has room for it.
    async fn forward(&mut self, publisher: &str, publish: Publish) -> Result<(), ReplayError> {
        self.wait_below(self.window_limit).await?;
        let from =
            From::from_custom(Id::new(self.scx.node.id(), REPLAY_LISTENER_ID, None, None, publisher.into(), None));
        self.window.outstanding.fetch_add(1, Ordering::AcqRel);
        let entry = self.scx.extends.shared().await.entry(self.id.clone());
        if entry.publish(from, publish).await.is_err() {
            self.window.release();
            return Err(ReplayError::SubscriberGone);
        }
        Ok(())
    }

    /// Waits until fewer than `limit` forwarded messages are still in the session's queue, and the
    /// queue is less than half full: rmqtt drops the oldest message of a full queue, which may be
    /// one it kept for a resumed session, or a live one.
    async fn wait_below(&self, limit: usize) -> Result<(), ReplayError> {
        let waiting_since = tokio::time::Instant::now();
        loop {
            if self.run.is_stopped() {
                return Err(ReplayError::Unsubscribed);
            }
            let progressed = self.window.progress.notified();
            let entry = self.scx.extends.shared().await.entry(self.id.clone());
            let queue_full =
                entry.session().is_some_and(|s| s.deliver_queue().len() >= s.listen_cfg().max_mqueue_len / 2);
            let ahead = self.window.outstanding.load(Ordering::Acquire) >= limit;
            if !ahead && !queue_full {
                return Ok(());
            }
            // Replayed deliveries wake it; a queue of other messages is looked at again soon.
            let wait = if ahead { REPLAY_STALL_CHECK } else { QUEUE_POLL };
            if tokio::time::timeout(wait, progressed).await.is_ok() {
                continue;
            }
            if !entry.is_connected().await {
                return Err(ReplayError::SubscriberGone);
            }
            if waiting_since.elapsed() > REPLAY_STALL_LIMIT {
                return Err(ReplayError::SubscriberStalled(REPLAY_STALL_LIMIT));
            }
        }
    }

    /// Delivers what the gate held back while the replay ran, until it holds nothing and closes.
    /// The gate checks a live message when it leaves the session's queue, so it closes only once
    /// everything forwarded has left it: a live message queued behind the replay is held, too.
    async fn release_held(&mut self, gates: &Gates<Live>, gate: &Gate<Live>) {
        loop {
            let result = match self.wait_below(1).await {
                Ok(()) => match gates.drain_or_close(gate) {
                    None => return,
                    Some(held) => self.forward_all(held).await,
                },
                Err(e) => Err(e),
            };
            match result {
                Ok(()) => {}
                // The unsubscribe took over what the gate held.
                Err(ReplayError::Unsubscribed) => return gates.close(gate),
                Err(e) => {
                    tracing::info!(client_id = %self.id.client_id, reason = %e, "live messages held during a replay were not delivered; the persisted ones stay stored");
                    return gates.close(gate);
                }
            }
        }
    }

    async fn forward_all(&mut self, held: VecDeque<Live>) -> Result<(), ReplayError> {
        for (from, publish) in held {
            self.forward(&from.id.client_id, publish).await?;
        }
        Ok(())
    }

    /// A stored retained message that is still the topic's retained message reaches the new
    /// subscriber from the broker's retainer; replaying it too would deliver it twice.
    async fn retainer_delivers(&self, m: &StoredMessage) -> bool {
        if !m.retain {
            return false;
        }
        let retained = match self.scx.extends.retain().await.get(&m.topic.as_str().into()).await {
            Ok(r) => r,
            Err(_) => return false,
        };
        retained.iter().any(|(_, r)| r.publish.payload == m.payload && r.from.id.client_id.as_ref() == m.from)
    }
}
