//! The replay/live seam under Mosquitto. While a new subscription's replay runs, Mosquitto would
//! deliver live messages to the client at once, before older stored ones, and a message published
//! during the replay could come twice. So a gate opens at the subscribe: the client's read check
//! refuses it the live messages the engine stores (QoS 1/2, a configured topic, not retained) that
//! the filter matches, and the replay delivers them from the database after the older ones. A pass
//! of the replay covers what was refused before it began; the gate closes after a pass during which
//! nothing was refused (and once the broker thread has published what the replay handed over), so
//! what was refused is delivered, in order, once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use mqtt_offline_messages_engine::topic::{parse_shared, TopicFilter};
use tokio::sync::Notify;

/// How far the dispatcher is: events the broker thread handed over, and events the engine has taken
/// (a publish is taken once it is in the writer's queue).
#[derive(Default)]
pub struct EventCounts {
    pub sent: AtomicU64,
    pub taken: AtomicU64,
    pub progress: Notify,
}

impl EventCounts {
    /// Waits until the engine has taken the first `n` events.
    pub async fn wait_taken(&self, n: u64) {
        loop {
            let progressed = self.progress.notified();
            if self.taken.load(Ordering::Acquire) >= n {
                return;
            }
            progressed.await;
        }
    }
}

/// The open gates (see the module doc).
#[derive(Default)]
pub struct LiveGates {
    state: Mutex<GateState>,
    /// Gates open: every read check asks, and nearly always none is.
    open: AtomicUsize,
}

#[derive(Default)]
struct GateState {
    next: u64,
    gates: HashMap<u64, Gate>,
}

pub struct Gate {
    pub client_id: String,
    pub subscribed: String,
    filter: TopicFilter,
    refused: u64,
    /// `refused` when the running pass began.
    refused_before_pass: u64,
}

impl LiveGates {
    /// True while a gate is open: only then may a read check be refused.
    pub fn any_open(&self) -> bool {
        self.open.load(Ordering::Acquire) > 0
    }

    pub fn open(&self, client_id: &str, subscribed: &str) -> Option<u64> {
        let text = parse_shared(subscribed).map_or(subscribed, |s| s.filter);
        let filter = TopicFilter::parse(text).ok()?;
        let mut s = self.state.lock().expect("gates lock");
        let id = s.next;
        s.next += 1;
        let gate = Gate {
            client_id: client_id.to_owned(),
            subscribed: subscribed.to_owned(),
            filter,
            refused: 0,
            refused_before_pass: 0,
        };
        s.gates.insert(id, gate);
        self.open.store(s.gates.len(), Ordering::Release);
        Some(id)
    }

    /// A read check: true (and counted) when a gate of the client matches the topic.
    pub fn refuse(&self, client_id: impl FnOnce() -> String, topic: &str) -> bool {
        let client_id = client_id();
        let mut s = self.state.lock().expect("gates lock");
        let mut refused = false;
        for gate in s.gates.values_mut().filter(|g| g.client_id == client_id && g.filter.matches(topic)) {
            gate.refused += 1;
            refused = true;
        }
        refused
    }

    /// After a pass: closes the gate if nothing was refused since the pass began (`None`), or
    /// starts the next pass: `Some(n)`, where the events up to `n` hold every message refused so far.
    pub fn close_or_next_pass(&self, id: u64, counts: &EventCounts) -> Option<u64> {
        let mut s = self.state.lock().expect("gates lock");
        let gate = s.gates.get_mut(&id)?;
        if gate.refused == gate.refused_before_pass {
            s.gates.remove(&id);
            self.open.store(s.gates.len(), Ordering::Release);
            return None;
        }
        gate.refused_before_pass = gate.refused;
        // Read under the lock: a refusal counted before this has had its event counted too.
        Some(counts.sent.load(Ordering::Acquire))
    }

    pub fn close_where(&self, closes: impl Fn(u64, &Gate) -> bool) {
        let mut s = self.state.lock().expect("gates lock");
        s.gates.retain(|id, g| !closes(*id, g));
        self.open.store(s.gates.len(), Ordering::Release);
    }
}
