//! The Mosquitto host: the engine on threads of its own, fed by the broker thread's callbacks, and
//! the replay's deliveries published back on the broker thread at each tick.
//!
//! ```text
//! broker thread                                      engine threads (tokio)
//! MESSAGE / ACL_CHECK / DISCONNECT ──events (bounded)──> dispatcher: on_publish, subscriptions, replays
//! TICK: mosquitto_broker_publish <──deliveries (bounded)── replay (ReplaySink)
//! TICK, one tick later ──────────────accepted──────────> on_acked: the row is consumed (queue) or recorded (fanout)
//! ACL_CHECK (read) while a replay runs: refused; the replay delivers the message from the database
//! ```

use std::collections::{HashMap, HashSet};
use std::ffi::{c_int, c_void, CString};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use mqtt_offline_messages_engine::config::Config;
use mqtt_offline_messages_engine::engine::{Delivery, Engine, ReplayError, ReplaySink};
use mqtt_offline_messages_engine::message::{Publish, StoredMessage, Subscription};
use mqtt_offline_messages_engine::topic::{is_sys_topic, TopicFilter};
use mqtt_offline_messages_engine::writer::jitter;
use tokio::runtime::Runtime;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::ffi;
use crate::gate::{EventCounts, LiveGates};
use crate::setup::SetupError;

/// Events the broker thread hands over before it waits: when the engine falls this far behind
/// (the database takes writes slower than clients publish), the broker thread waits for room, as
/// our own broker makes publishers wait; nothing is dropped. While the database is away the writer
/// spools to disk instead, so that is no reason to wait.
const EVENT_QUEUE: usize = 10_000;

/// Replayed messages published per tick at most (and queued for the broker thread at most). A
/// tick comes at each turn of Mosquitto's loop, at least every 100 ms or so when it is idle.
const DELIVERIES_PER_TICK: usize = 1000;

/// A replay that failed on a database error is tried again after this, then twice as long each
/// time up to `REPLAY_RETRY_MAX`, while the client keeps the subscription.
const REPLAY_RETRY_FIRST: Duration = Duration::from_secs(1);
const REPLAY_RETRY_MAX: Duration = Duration::from_secs(60);

/// How often a replay looks whether the broker thread has taken what it handed over.
const TAKEN_POLL: Duration = Duration::from_millis(5);

/// How long cleanup waits for the events already handed over to reach the engine.
const DRAIN_WAIT: Duration = Duration::from_secs(10);

enum Event {
    Publish(Publish),
    /// With its session's number and its gate, if one opened.
    Subscribe(Subscription, u64, Option<u64>),
    Unsubscribe(Subscription),
    /// A clean session ended: its subscriptions end with it.
    SessionEnded(String),
}

/// One replayed message for the broker thread to publish.
struct Outgoing {
    client_id: String,
    session: u64,
    msgid: String,
    from: String,
    topic: String,
    payload: Bytes,
    qos: u8,
    /// Counts, for the replay that handed it over, what the broker thread has taken.
    taken: Arc<AtomicU64>,
}

/// The sessions that subscribed since they began, each with a number of its own: a delivery
/// carries the number of the session its replay was for, and one for a session that has ended (a
/// clean-session client disconnected) is not published.
#[derive(Default)]
struct Sessions {
    state: Mutex<SessionState>,
    next: AtomicU64,
}

#[derive(Default)]
struct SessionState {
    by_client: HashMap<String, u64>,
    /// (client id, filter) the client subscribed and has not unsubscribed.
    held: HashSet<(String, String)>,
}

impl Sessions {
    fn subscribe(&self, client_id: &str, filter: &str) -> u64 {
        let mut s = self.state.lock().expect("sessions lock");
        s.held.insert((client_id.to_owned(), filter.to_owned()));
        *s.by_client.entry(client_id.to_owned()).or_insert_with(|| self.next.fetch_add(1, Ordering::Relaxed))
    }

    fn unsubscribe(&self, client_id: &str, filter: &str) {
        self.state.lock().expect("sessions lock").held.remove(&(client_id.to_owned(), filter.to_owned()));
    }

    fn end(&self, client_id: &str) {
        let mut s = self.state.lock().expect("sessions lock");
        s.by_client.remove(client_id);
        s.held.retain(|(c, _)| c != client_id);
    }

    fn current(&self, client_id: &str, session: u64) -> bool {
        self.state.lock().expect("sessions lock").by_client.get(client_id) == Some(&session)
    }

    fn holds(&self, client_id: &str, filter: &str, session: u64) -> bool {
        let s = self.state.lock().expect("sessions lock");
        s.by_client.get(client_id) == Some(&session) && s.held.contains(&(client_id.to_owned(), filter.to_owned()))
    }
}

/// Everything the plugin holds between `mosquitto_plugin_init` and `mosquitto_plugin_cleanup`.
/// The broker thread reaches it through shared references only: a callback may run inside another
/// (logging from a tick can publish on `$SYS`, which checks ACLs).
pub struct Host {
    runtime: Option<Runtime>,
    engine: Arc<Engine>,
    sessions: Arc<Sessions>,
    gates: Arc<LiveGates>,
    counts: Arc<EventCounts>,
    /// The configured `topics`: which live messages a gate may hold back.
    stored_topics: Vec<TopicFilter>,
    events: Mutex<Option<mpsc::Sender<Event>>>,
    dispatcher: Mutex<Option<JoinHandle<()>>>,
    deliveries: Mutex<mpsc::Receiver<Outgoing>>,
    /// Published at the last tick: Mosquitto queues them into their sessions at the start of its
    /// next loop turn, so they count as accepted at the next tick.
    published: Mutex<Vec<Outgoing>>,
    accepted: Mutex<Option<mpsc::UnboundedSender<Outgoing>>>,
    acker: Mutex<Option<JoinHandle<()>>>,
    shutdown_timeout: Duration,
}

impl Host {
    /// Starts the engine's threads, the engine, and the metrics endpoint.
    pub fn start(config: Config) -> Result<Host, SetupError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("offline-messages")
            .enable_all()
            .build()
            .map_err(SetupError::Threads)?;
        for warning in config.warnings() {
            tracing::warn!("{warning}");
        }
        let engine = runtime.block_on(async {
            let engine = Engine::start(&config).await?;
            if let Some(addr) = config.metrics.bind {
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|cause| SetupError::MetricsBind { addr, cause })?;
                tracing::info!(%addr, "serving /metrics and /health");
                tokio::spawn(mqtt_offline_messages_engine::http::serve(listener, engine.clone()));
            }
            Ok::<_, SetupError>(engine)
        })?;
        let stored_topics = config.backend.storage().topics.iter().filter_map(|f| TopicFilter::parse(f).ok()).collect();
        let shared =
            Shared { engine: engine.clone(), sessions: Arc::default(), gates: Arc::default(), counts: Arc::default() };
        let (events, events_rx) = mpsc::channel(EVENT_QUEUE);
        let (deliveries_tx, deliveries) = mpsc::channel(DELIVERIES_PER_TICK);
        let (accepted, accepted_rx) = mpsc::unbounded_channel();
        let dispatcher = runtime.spawn(dispatch(shared.clone(), deliveries_tx, events_rx));
        let acker = runtime.spawn(acknowledge(engine.clone(), accepted_rx));
        Ok(Host {
            runtime: Some(runtime),
            engine,
            sessions: shared.sessions,
            gates: shared.gates,
            counts: shared.counts,
            stored_topics,
            events: Mutex::new(Some(events)),
            dispatcher: Mutex::new(Some(dispatcher)),
            deliveries: Mutex::new(deliveries),
            published: Mutex::default(),
            accepted: Mutex::new(Some(accepted)),
            acker: Mutex::new(Some(acker)),
            shutdown_timeout: config.broker.shutdown_timeout,
        })
    }

    /// Hands an event to the engine; waits only while the engine is `EVENT_QUEUE` events behind.
    fn send(&self, event: Event) {
        let events = self.events.lock().expect("events lock").clone();
        if let Some(events) = events {
            if events.blocking_send(event).is_err() {
                tracing::error!("the engine has stopped; an event was not handed over");
            }
            self.counts.sent.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// MESSAGE: a client published (after Mosquitto's ACL check).
    pub fn on_message(&self, from: &str, topic: &str, payload: &[u8], qos: u8, retain: bool) {
        if qos == 0 {
            return; // never stored: no need to copy it over
        }
        self.send(Event::Publish(Publish {
            from: from.to_owned(),
            topic: topic.to_owned(),
            qos,
            retain,
            payload: Bytes::copy_from_slice(payload),
            timestamp_ms: mqtt_offline_messages_engine::engine::now_ms(),
            properties: Default::default(),
        }));
    }

    /// ACL_CHECK for MOSQ_ACL_SUBSCRIBE, once per filter, before Mosquitto adds it.
    pub fn on_subscribe(&self, client_id: &str, filter: &str, qos: u8) {
        let session = self.sessions.subscribe(client_id, filter);
        let gate = self.gates.open(client_id, filter);
        let sub = Subscription { client_id: client_id.to_owned(), filter: filter.to_owned(), qos };
        self.send(Event::Subscribe(sub, session, gate));
    }

    /// True while a replay's gate is open: only then may a read check be refused.
    pub fn replaying(&self) -> bool {
        self.gates.any_open()
    }

    /// ACL_CHECK for MOSQ_ACL_READ, a live message about to be queued for a client: true when a
    /// replay's gate holds it back (see [`crate::gate`]).
    pub fn refuses_live(&self, client_id: impl FnOnce() -> String, topic: &str, qos: u8, retain: bool) -> bool {
        let stored = qos > 0 && !retain && !is_sys_topic(topic) && self.stored_topics.iter().any(|f| f.matches(topic));
        stored && self.gates.refuse(client_id, topic)
    }

    /// ACL_CHECK for MOSQ_ACL_UNSUBSCRIBE.
    pub fn on_unsubscribe(&self, client_id: &str, filter: &str) {
        self.sessions.unsubscribe(client_id, filter);
        self.gates.close_where(|_, g| g.client_id == client_id && g.subscribed == filter);
        let sub = Subscription { client_id: client_id.to_owned(), filter: filter.to_owned(), qos: 0 };
        self.send(Event::Unsubscribe(sub));
    }

    /// DISCONNECT: a clean session ends with its connection; a persistent one stays in Mosquitto,
    /// which keeps queueing what is published to it.
    pub fn on_disconnect(&self, client_id: &str, clean_session: bool) {
        if clean_session {
            self.sessions.end(client_id);
            self.gates.close_where(|_, g| g.client_id == client_id);
            self.send(Event::SessionEnded(client_id.to_owned()));
        }
    }

    /// TICK: what was published at the last tick is in its session now (accepted); then up to
    /// `DELIVERIES_PER_TICK` replayed messages are published.
    pub fn on_tick(&self) {
        let accepted = std::mem::take(&mut *self.published.lock().expect("published lock"));
        if let Some(tx) = self.accepted.lock().expect("accepted lock").as_ref() {
            for o in accepted {
                let _ = tx.send(o);
            }
        }
        let mut published = Vec::new();
        {
            let mut deliveries = self.deliveries.lock().expect("deliveries lock");
            while published.len() < DELIVERIES_PER_TICK {
                let Ok(o) = deliveries.try_recv() else { break };
                let ok = self.sessions.current(&o.client_id, o.session) && publish(&o);
                o.taken.fetch_add(1, Ordering::AcqRel);
                if ok {
                    published.push(o);
                }
            }
        }
        self.published.lock().expect("published lock").extend(published);
    }

    /// Stops taking events, hands what was taken to the engine, makes it durable
    /// (`Engine::shutdown`), and joins the engine's threads. Deliveries published at the last tick
    /// are not counted as accepted: Mosquitto stops before it queues them, and their rows stay.
    pub fn shutdown(mut self) {
        let Some(runtime) = self.runtime.take() else { return };
        self.events.lock().expect("events lock").take();
        self.accepted.lock().expect("accepted lock").take();
        let dispatcher = self.dispatcher.lock().expect("dispatcher lock").take();
        let acker = self.acker.lock().expect("acker lock").take();
        let engine = self.engine.clone();
        let deadline = self.shutdown_timeout;
        runtime.block_on(async move {
            for task in [dispatcher, acker].into_iter().flatten() {
                if tokio::time::timeout(DRAIN_WAIT, task).await.is_err() {
                    tracing::error!("events handed over before the shutdown did not reach the engine in time");
                }
            }
            engine.shutdown(deadline).await;
        });
        runtime.shutdown_timeout(Duration::from_secs(5));
    }
}

/// Publishes one replayed message into its client's session. Broker thread only.
fn publish(o: &Outgoing) -> bool {
    let (Ok(client_id), Ok(topic)) = (CString::new(o.client_id.as_str()), CString::new(o.topic.as_str())) else {
        return false; // MQTT strings hold no NUL: not reached
    };
    let Ok(len) = c_int::try_from(o.payload.len()) else { return false };
    // SAFETY: called on the broker thread only (the TICK callback); the strings are valid C strings
    // and the payload `len` readable bytes, all alive for the call; the broker copies all three and
    // takes no ownership (properties: none).
    let rc = unsafe {
        ffi::mosquitto_broker_publish_copy(
            client_id.as_ptr(),
            topic.as_ptr(),
            len,
            o.payload.as_ptr().cast::<c_void>(),
            c_int::from(o.qos),
            false,
            std::ptr::null_mut(),
        )
    };
    if rc != ffi::MOSQ_ERR_SUCCESS {
        tracing::warn!(client_id = %o.client_id, topic = %o.topic, rc, "Mosquitto refused a replayed message; it stays stored");
    }
    rc == ffi::MOSQ_ERR_SUCCESS
}

/// What the dispatcher and the replays share.
#[derive(Clone)]
struct Shared {
    engine: Arc<Engine>,
    sessions: Arc<Sessions>,
    gates: Arc<LiveGates>,
    counts: Arc<EventCounts>,
}

/// Feeds the engine the broker's events, in the order they came: a replay starts after every
/// publish handed over before its subscribe is in the writer, so it includes them.
async fn dispatch(shared: Shared, deliveries: mpsc::Sender<Outgoing>, mut events: mpsc::Receiver<Event>) {
    let engine = shared.engine.clone();
    while let Some(event) = events.recv().await {
        match event {
            Event::Publish(p) => {
                engine.on_publish(p).await;
            }
            Event::Subscribe(sub, session, gate) => {
                let (shared, deliveries) = (shared.clone(), deliveries.clone());
                start_in_order(async move {
                    if let Err(e) = shared.engine.on_subscribed(&sub).await {
                        tracing::error!(client_id = %sub.client_id, topic = %sub.filter, error = %e, "storing a subscription failed");
                    }
                    replay(&shared, deliveries, sub, session, gate).await;
                })
                .await
            }
            Event::Unsubscribe(sub) => {
                let engine = engine.clone();
                start_in_order(async move {
                    if let Err(e) = engine.on_unsubscribed(&sub).await {
                        tracing::error!(client_id = %sub.client_id, topic = %sub.filter, error = %e, "deleting a stored subscription failed");
                    }
                })
                .await
            }
            Event::SessionEnded(client_id) => engine.forget_subscriptions(&client_id).await,
        }
        shared.counts.taken.fetch_add(1, Ordering::AcqRel);
        shared.counts.progress.notify_waiters();
    }
}

/// Runs `task` up to its first wait here, then on a task of its own. The engine queues a
/// subscription change before its first wait, so changes keep the order of their events while
/// the dispatcher does not wait for the database.
async fn start_in_order(task: impl Future<Output = ()> + Send + 'static) {
    let mut task: Pin<Box<dyn Future<Output = ()> + Send>> = Box::pin(task);
    let pending = std::future::poll_fn(|cx| Poll::Ready(task.as_mut().poll(cx).is_pending())).await;
    if pending {
        tokio::spawn(task);
    }
}

/// Replays a new subscription's stored messages, pass after pass while its gate refuses live
/// messages (see [`crate::gate`]); after a database error, again (from where it stopped) while the
/// session holds the subscription.
async fn replay(
    shared: &Shared,
    deliveries: mpsc::Sender<Outgoing>,
    sub: Subscription,
    session: u64,
    gate: Option<u64>,
) {
    let sessions = shared.sessions.clone();
    let mut sink = BrokerSink {
        sub: sub.clone(),
        session,
        sessions: sessions.clone(),
        deliveries,
        after: 0,
        handed: 0,
        taken: Arc::default(),
    };
    let mut delivered = 0;
    let result = loop {
        match replay_pass(&shared.engine, &sessions, &mut sink).await {
            Ok(n) => delivered += n,
            Err(e) => break Err(e),
        }
        // A live message let through now must queue behind what this replay handed over.
        while sink.taken.load(Ordering::Acquire) < sink.handed {
            tokio::time::sleep(TAKEN_POLL).await;
        }
        let Some(next) = gate.and_then(|id| shared.gates.close_or_next_pass(id, &shared.counts)) else { break Ok(()) };
        shared.counts.wait_taken(next).await;
    };
    if let Some(id) = gate {
        shared.gates.close_where(|g, _| g == id);
    }
    match result {
        Ok(()) if delivered == 0 => {
            tracing::debug!(client_id = %sub.client_id, topic = %sub.filter, "nothing stored to replay")
        }
        Ok(()) => tracing::info!(client_id = %sub.client_id, topic = %sub.filter, messages = delivered, "replay done"),
        Err(e) => {
            tracing::info!(client_id = %sub.client_id, topic = %sub.filter, reason = %e, "replay stopped; the rest stays stored")
        }
    }
}

/// One pass over the stored rows after the sink's last; retried after a database error while the
/// session holds the subscription.
async fn replay_pass(engine: &Engine, sessions: &Sessions, sink: &mut BrokerSink) -> Result<u64, ReplayError> {
    let sub = sink.sub.clone();
    let mut backoff = REPLAY_RETRY_FIRST;
    loop {
        match engine.replay(&sub, sink).await {
            Err(e @ ReplayError::Store(_)) if sessions.holds(&sub.client_id, &sub.filter, sink.session) => {
                tracing::error!(client_id = %sub.client_id, topic = %sub.filter, error = %e, "replay failed; retrying while the client keeps the subscription");
                tokio::time::sleep(backoff + jitter(backoff)).await;
                backoff = (backoff * 2).min(REPLAY_RETRY_MAX);
            }
            result => return result,
        }
    }
}

/// Hands replayed messages to the broker thread, as fast as it publishes them
/// (`DELIVERIES_PER_TICK` a tick).
struct BrokerSink {
    sub: Subscription,
    session: u64,
    sessions: Arc<Sessions>,
    deliveries: mpsc::Sender<Outgoing>,
    /// The position of the last message handed over: a retry after a database error starts after it.
    after: u128,
    /// Messages handed over, and how many of them the broker thread has taken.
    handed: u64,
    taken: Arc<AtomicU64>,
}

impl ReplaySink for BrokerSink {
    async fn deliver(&mut self, m: StoredMessage, _read_ms: i64) -> Result<(), ReplayError> {
        if !self.sessions.holds(&self.sub.client_id, &self.sub.filter, self.session) {
            return Err(ReplayError::SubscriberGone);
        }
        let o = Outgoing {
            client_id: self.sub.client_id.clone(),
            session: self.session,
            msgid: m.msgid,
            from: m.from,
            topic: m.topic,
            payload: m.payload,
            qos: m.qos.min(self.sub.qos),
            taken: self.taken.clone(),
        };
        self.deliveries.send(o).await.map_err(|_| ReplayError::SubscriberGone)?;
        self.handed += 1;
        if let Some(position) = m.position {
            self.after = self.after.max(position);
        }
        Ok(())
    }

    fn skip(&mut self, m: &StoredMessage) -> bool {
        m.position.is_some_and(|position| position <= self.after)
    }
}

/// A replayed message is in its client's session: in `queue` mode its row is consumed, in
/// `fanout` mode the delivery is recorded; at QoS 0 it is recorded in both, as a QoS 0 delivery
/// is by our broker.
async fn acknowledge(engine: Arc<Engine>, mut accepted: mpsc::UnboundedReceiver<Outgoing>) {
    while let Some(o) = accepted.recv().await {
        let d = Delivery { msgid: &o.msgid, from: &o.from, topic: &o.topic };
        if o.qos == 0 {
            engine.on_delivered_qos0(&o.client_id, d);
        } else {
            engine.on_acked(&o.client_id, d).await;
        }
    }
}
