//! The replay/live seam: while a new subscription's stored messages are replayed, live messages
//! for it are held back and delivered after them, so that nothing arrives twice or out of order.
//!
//! A gate opens before the broker adds the subscription, so every live message the subscription
//! receives passes through it. A held message that was also persisted is skipped by the replay
//! (by its message id), and a live message the replay has already delivered from its row is
//! dropped; once the replay has read its last row, the held messages follow in the order they
//! arrived, and the gate closes when nothing more is held. The gate is generic over the host's
//! message type: it knows no broker.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::message_id::MessageId;
use crate::metrics::Metrics;
use crate::topic::TopicFilter;

/// A message published this long before its gate opened has been routed by then: its row is never
/// met again as a live message, so the replay need not remember it.
const ROUTING_MARGIN_MICROS: u64 = 10_000_000;

/// A gate nobody claimed this long after it opened belongs to a subscribe the broker refused after
/// opening it (an ACL, a limit): it is closed when next met.
const UNCLAIMED_LIFETIME_MICROS: u64 = 5_000_000;

/// Bytes of live messages (topic, payload and [`HELD_OVERHEAD`] each) one gate holds at most.
/// Beyond it, live messages go straight to the subscriber (out of order with the replay, never
/// lost), a warning says so, and `offline_messages_gate_passed_total` counts them.
pub const MAX_HELD_BYTES: usize = 16 << 20;
/// What a held message costs beside its topic and payload (the message itself, its queue slot, its id).
pub const HELD_OVERHEAD: usize = 128;

/// The open gates of every client, by client id.
pub struct Gates<T> {
    clients: Mutex<HashMap<String, Vec<Arc<Gate<T>>>>>,
    /// Clients with open gates: every delivery asks, and nearly always none is open.
    open_clients: AtomicUsize,
    metrics: Arc<Metrics>,
}

pub struct Gate<T> {
    client_id: String,
    /// The filter as subscribed, `$share/group/` included.
    subscribed: String,
    filter: Option<TopicFilter>,
    opened_micros: u64,
    state: Mutex<Held<T>>,
}

struct Held<T> {
    messages: VecDeque<T>,
    /// What `messages` cost, as [`MAX_HELD_BYTES`] counts.
    bytes: usize,
    /// Message ids of held messages that are also stored: the replay skips those rows.
    ids: HashSet<String>,
    /// Message ids the replay delivered that may still arrive live (published around the opening).
    replayed: HashSet<String>,
    /// The subscription was added and its replay holds the gate.
    claimed: bool,
    overflowed: bool,
}

impl<T> Gates<T> {
    /// No gate open yet; what passes a full gate is counted in `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Gates { clients: Mutex::default(), open_clients: AtomicUsize::new(0), metrics }
    }

    /// Opens a gate for a subscription that is about to be added; a gate already open for the same
    /// client and filter is returned instead. `subscribed` is the filter as subscribed,
    /// `$share/group/` included; `filter` is what the broker matches topics against.
    pub fn open(&self, client_id: &str, subscribed: &str, filter: &str) -> Arc<Gate<T>> {
        self.open_at(client_id, subscribed, filter, now_micros())
    }

    fn open_at(&self, client_id: &str, subscribed: &str, filter: &str, opened_micros: u64) -> Arc<Gate<T>> {
        let mut clients = self.clients.lock().expect("gates lock");
        let gates = clients.entry(client_id.to_owned()).or_default();
        if let Some(g) = gates.iter().find(|g| g.subscribed == subscribed) {
            return g.clone();
        }
        if gates.is_empty() {
            self.open_clients.fetch_add(1, Ordering::SeqCst);
        }
        let gate = Arc::new(Gate {
            client_id: client_id.to_owned(),
            subscribed: subscribed.to_owned(),
            filter: TopicFilter::parse(filter).ok(),
            opened_micros,
            state: Mutex::new(Held {
                messages: VecDeque::new(),
                bytes: 0,
                ids: HashSet::new(),
                replayed: HashSet::new(),
                claimed: false,
                overflowed: false,
            }),
        });
        gates.push(gate.clone());
        gate
    }

    /// The open gate of a subscription the broker has added, for its replay.
    pub fn claim(&self, client_id: &str, subscribed: &str) -> Option<Arc<Gate<T>>> {
        let clients = self.clients.lock().expect("gates lock");
        let gate = clients.get(client_id)?.iter().find(|g| g.subscribed == subscribed).cloned()?;
        gate.state.lock().expect("gate lock").claimed = true;
        Some(gate)
    }

    /// Holds a live message for `client_id` on `topic` (with a payload of `payload_bytes`) if one of
    /// its gates is open for it, or drops it if the replay already delivered it; gives it back
    /// otherwise (deliver it now). `msgid` is the stored row's id, if it was persisted.
    pub fn hold(
        &self,
        client_id: &str,
        topic: &str,
        payload_bytes: usize,
        message: T,
        msgid: impl FnOnce() -> Option<String>,
    ) -> Result<(), T> {
        let mut clients = self.clients.lock().expect("gates lock");
        let Some(gates) = clients.get_mut(client_id) else { return Err(message) };
        let now = now_micros();
        gates.retain(|g| {
            g.state.lock().expect("gate lock").claimed || g.opened_micros + UNCLAIMED_LIFETIME_MICROS > now
        });
        let Some(gate) = gates.iter().find(|g| g.filter.as_ref().is_some_and(|f| f.matches(topic))).cloned() else {
            if gates.is_empty() {
                clients.remove(client_id);
                self.open_clients.fetch_sub(1, Ordering::SeqCst);
            }
            return Err(message);
        };
        drop(clients);
        let mut held = gate.state.lock().expect("gate lock");
        let msgid = msgid();
        if msgid.as_ref().is_some_and(|id| held.replayed.contains(id)) {
            return Ok(());
        }
        let bytes = topic.len() + payload_bytes + HELD_OVERHEAD;
        if held.bytes + bytes > MAX_HELD_BYTES {
            Metrics::add(&self.metrics.gate_passed, 1);
            if !held.overflowed {
                held.overflowed = true;
                tracing::warn!(client_id, topic = %gate.subscribed, held_bytes = held.bytes, "a replay is slower than live traffic; further live messages go out before the rest of the replay");
            }
            return Err(message);
        }
        if let Some(id) = msgid {
            held.ids.insert(id);
        }
        held.bytes += bytes;
        held.messages.push_back(message);
        Ok(())
    }

    /// Closes the gate if nothing is held, or hands over what is held (deliver it, then call again).
    pub fn drain_or_close(&self, gate: &Gate<T>) -> Option<VecDeque<T>> {
        // The clients lock first, as in `hold`, so no message slips in between the check and the close.
        let mut clients = self.clients.lock().expect("gates lock");
        let mut held = gate.state.lock().expect("gate lock");
        if held.messages.is_empty() {
            drop(held);
            self.remove(&mut clients, gate);
            return None;
        }
        held.ids.clear();
        held.replayed.clear();
        held.bytes = 0;
        Some(std::mem::take(&mut held.messages))
    }

    /// Closes every gate of a client (its session ended or it connected anew); what they hold is dropped.
    pub fn close_client(&self, client_id: &str) {
        if self.clients.lock().expect("gates lock").remove(client_id).is_some() {
            self.open_clients.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Closes one gate (its subscribe was refused or withdrawn); what it holds is dropped.
    pub fn close(&self, gate: &Gate<T>) {
        self.remove(&mut self.clients.lock().expect("gates lock"), gate);
    }

    fn remove(&self, clients: &mut HashMap<String, Vec<Arc<Gate<T>>>>, gate: &Gate<T>) {
        if let Some(gates) = clients.get_mut(&gate.client_id) {
            gates.retain(|g| !std::ptr::eq(Arc::as_ptr(g), gate));
            if gates.is_empty() {
                clients.remove(&gate.client_id);
                self.open_clients.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }
}

impl<T> Gate<T> {
    /// Called by the replay for each stored row: true when it must skip the row (a held live copy
    /// will be delivered). Otherwise the row is delivered, and noted if it may still arrive live.
    pub fn replaying(&self, msgid: &str) -> bool {
        let mut held = self.state.lock().expect("gate lock");
        if held.ids.contains(msgid) {
            return true;
        }
        let recent =
            MessageId::from_base62(msgid).is_none_or(|id| id.micros() + ROUTING_MARGIN_MICROS >= self.opened_micros);
        if recent {
            held.replayed.insert(msgid.to_owned());
        }
        false
    }
}

fn now_micros() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_only_matching_topics_of_the_gated_client() {
        let ids = crate::message_id::MessageIdGenerator::new(1);
        let (m1, m2) = (ids.next_id().to_base62(), ids.next_id().to_base62());
        let gates = Gates::new(Arc::new(Metrics::new()));
        let gate = gates.open("c", "a/+", "a/+");
        assert!(gates.claim("c", "a/+").is_some());
        assert_eq!(gates.hold("c", "a/1", 0, 1, || Some(m1.clone())), Ok(()));
        assert_eq!(gates.hold("c", "b/1", 0, 2, || None), Err(2));
        assert_eq!(gates.hold("other", "a/1", 0, 3, || None), Err(3));
        assert!(gate.replaying(&m1), "the row of a held message is skipped");
        assert!(!gate.replaying(&m2));
        assert_eq!(gates.hold("c", "a/2", 0, 5, || Some(m2.clone())), Ok(()), "already replayed: dropped");
        assert_eq!(gates.drain_or_close(&gate), Some(VecDeque::from([1])));
        assert_eq!(gates.drain_or_close(&gate), None);
        assert_eq!(gates.open_clients.load(Ordering::SeqCst), 0);
        assert_eq!(gates.hold("c", "a/1", 0, 4, || None), Err(4), "closed");
        assert!(gates.claim("c", "a/+").is_none());
    }

    #[test]
    fn old_rows_are_not_remembered() {
        let gates: Gates<u8> = Gates::new(Arc::new(Metrics::new()));
        let gate = gates.open("c", "#", "#");
        let old = crate::message_id::MessageId(((now_micros() - 2 * ROUTING_MARGIN_MICROS) as u128) << 64);
        assert!(!gate.replaying(&old.to_base62()));
        assert!(gate.state.lock().unwrap().replayed.is_empty());
    }

    #[test]
    fn an_unclaimed_gate_closes_after_a_while() {
        let gates = Gates::new(Arc::new(Metrics::new()));
        let _fresh = gates.open("c", "a/#", "a/#");
        assert_eq!(gates.hold("c", "a/1", 0, 1, || None), Ok(()), "a fresh gate holds before it is claimed");
        let gates = Gates::new(Arc::new(Metrics::new()));
        let _stale = gates.open_at("c", "a/#", "a/#", now_micros() - UNCLAIMED_LIFETIME_MICROS - 1);
        assert_eq!(gates.hold("c", "a/1", 0, 2, || None), Err(2));
        assert!(gates.clients.lock().unwrap().is_empty());
        assert_eq!(gates.open_clients.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_shared_subscription_gates_its_filter() {
        let gates = Gates::new(Arc::new(Metrics::new()));
        let _gate = gates.open("c", "$share/g/s/#", "s/#");
        assert_eq!(gates.hold("c", "s/x", 0, 1, || None), Ok(()));
    }

    #[test]
    fn holding_stops_at_the_byte_limit_and_counts_what_passes() {
        let metrics = Arc::new(Metrics::new());
        let gates = Gates::new(metrics.clone());
        let gate = gates.open("c", "#", "#");
        let mib = 1 << 20;
        let fits = MAX_HELD_BYTES / (mib + 1 + HELD_OVERHEAD);
        for i in 0..fits {
            assert_eq!(gates.hold("c", "t", mib, i, || None), Ok(()));
        }
        assert_eq!(gates.hold("c", "t", mib, fits, || None), Err(fits), "1 MiB more does not fit");
        assert_eq!(gates.hold("c", "t", 0, fits + 1, || None), Ok(()), "a small one still does");
        assert_eq!(metrics.gate_passed.load(Ordering::Relaxed), 1);
        assert_eq!(gates.drain_or_close(&gate).map(|h| h.len()), Some(fits + 1));
        assert_eq!(gates.hold("c", "t", mib, 0, || None), Ok(()), "drained: room again");
    }
}
