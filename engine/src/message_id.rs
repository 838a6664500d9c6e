//! 128-bit message ids, unique across broker processes sharing one database.
//!
//! Layout: high 64 bits unix time in microseconds (never going backwards within a process), low
//! 64 bits the node id (32 bits) and a per-process sequence (32 bits). Written in base62 into
//! `msgid`, as the reference plugin does.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::{Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

/// One message id. Ids of one generator compare (as numbers) in the order they were made.
///
/// The base62 text (digits, then `A-Z`, then `a-z`) of every id made between 1989 and 3180 has 20
/// characters, so within that span the text sorts like the number too.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct MessageId(pub u128);

impl MessageId {
    pub fn to_base62(&self) -> String {
        base62::encode(self.0)
    }

    /// The id whose [`MessageId::to_base62`] is exactly `s`; `None` for anything else, including
    /// the same number written with leading zeros, so that one id has one text.
    pub fn from_base62(s: &str) -> Option<MessageId> {
        let id = MessageId(base62::decode(s).ok()?);
        (id.to_base62() == s).then_some(id)
    }

    /// The node id of the process that made this id.
    pub fn node(&self) -> u32 {
        (self.0 >> 32) as u32
    }

    /// When the id was made, unix microseconds; may run slightly ahead of the clock (see
    /// [`MessageIdGenerator::next_id`]).
    pub fn micros(&self) -> u64 {
        (self.0 >> 64) as u64
    }
}

impl std::fmt::Display for MessageId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", base62::encode_fmt(self.0))
    }
}

/// Hands out strictly increasing ids for one node; one generator is shared by all threads.
pub struct MessageIdGenerator {
    node_id: u32,
    /// Time part and sequence of the last id. A mutex rather than atomics: the two must move
    /// together, and the critical section is a few instructions.
    last: Mutex<(u64, u32)>,
}

impl MessageIdGenerator {
    pub fn new(node_id: u32) -> Self {
        MessageIdGenerator { node_id, last: Mutex::new((0, 0)) }
    }

    pub fn node_id(&self) -> u32 {
        self.node_id
    }

    /// A new id, greater than every id this generator made before.
    pub fn next_id(&self) -> MessageId {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64);
        // The state is whole after every assignment, so a poisoned lock is still usable.
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        let (micros, seq) = *last;
        // A new microsecond restarts the sequence. Within one (or while the clock is behind the
        // last id, after a step back) the sequence grows; when it would wrap, the time part moves
        // one microsecond ahead instead.
        *last = if now > micros {
            (now, 0)
        } else if let Some(next) = seq.checked_add(1) {
            (micros, next)
        } else {
            (micros + 1, 0)
        };
        let (micros, seq) = *last;
        MessageId(u128::from(micros) << 64 | u128::from(self.node_id) << 32 | u128::from(seq))
    }
}

/// A node id for a broker whose config sets none, different for every process: std's
/// `RandomState` is keyed randomly per process, and hashes the process id, the time and the
/// addresses of a stack and a heap value (which vary with address-space randomisation).
pub fn random_node_id() -> u32 {
    let mut h = RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u128(SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    let on_stack = 0u8;
    h.write_usize(std::ptr::addr_of!(on_stack) as usize);
    let on_heap = Box::new(0u8);
    h.write_usize(std::ptr::addr_of!(*on_heap) as usize);
    let v = h.finish();
    (v ^ (v >> 32)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_roundtrip_through_base62() {
        let g = MessageIdGenerator::new(0xdead_beef);
        for _ in 0..100 {
            let id = g.next_id();
            assert_eq!(MessageId::from_base62(&id.to_base62()), Some(id));
            assert_eq!(id.to_string(), id.to_base62());
            assert_eq!(id.node(), 0xdead_beef);
        }
        for n in [0, 1, 61, 62, u128::from(u64::MAX), u128::MAX] {
            assert_eq!(MessageId::from_base62(&MessageId(n).to_base62()), Some(MessageId(n)));
        }
        assert_eq!(MessageId(0).to_base62(), "0");
        assert_eq!(MessageId(61).to_base62(), "z");
    }

    #[test]
    fn only_canonical_base62_text_parses() {
        for bad in ["", "not base62!", "0z", "00", "é", "zzzzzzzzzzzzzzzzzzzzzzzzzzzzzz"] {
            assert_eq!(MessageId::from_base62(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn fields_come_back_out() {
        let id = MessageId(u128::from(1_700_000_000_000_000u64) << 64 | 0x0102_0304_u128 << 32 | 7);
        assert_eq!((id.micros(), id.node()), (1_700_000_000_000_000, 0x0102_0304));
        let g = MessageIdGenerator::new(9);
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_micros() as u64;
        let id = g.next_id();
        assert!(id.micros().abs_diff(now) < 60_000_000, "time part is the clock in microseconds");
        assert_eq!((id.node(), g.node_id()), (9, 9));
    }

    #[test]
    fn text_sorts_like_the_number_for_a_long_time() {
        let at = |micros: u64, low: u64| MessageId(u128::from(micros) << 64 | u128::from(low)).to_base62();
        let (y1990, y3000) = (631_152_000_000_000, 32_503_680_000_000_000);
        for s in [at(y1990, 0), at(y3000, u64::MAX)] {
            assert_eq!(s.len(), 20, "{s}");
        }
        assert!(at(y1990, u64::MAX) < at(y1990 + 1, 0));
    }

    #[test]
    fn ids_strictly_increase_across_threads() {
        let g = std::sync::Arc::new(MessageIdGenerator::new(7));
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let g = g.clone();
                std::thread::spawn(move || (0..20_000).map(|_| g.next_id()).collect::<Vec<_>>())
            })
            .collect();
        let mut all = Vec::new();
        for h in handles {
            let ids = h.join().unwrap();
            assert!(ids.windows(2).all(|w| w[0] < w[1]), "each thread sees increasing ids");
            all.extend(ids);
        }
        let n = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), n, "no id was handed out twice");
        // Strictly increasing in one global order: the last id made is above all of them.
        assert!(g.next_id() > *all.last().unwrap());
    }

    #[test]
    fn the_sequence_wrapping_moves_time_forward() {
        let g = MessageIdGenerator::new(1);
        let far_future = u64::MAX / 2;
        *g.last.lock().unwrap() = (far_future, u32::MAX - 1);
        let (a, b, c) = (g.next_id(), g.next_id(), g.next_id());
        assert_eq!((a.micros(), a.0 as u32), (far_future, u32::MAX));
        assert_eq!((b.micros(), b.0 as u32), (far_future + 1, 0));
        assert_eq!((c.micros(), c.0 as u32), (far_future + 1, 1));
        assert!(a < b && b < c);
    }

    #[test]
    fn different_nodes_never_collide() {
        let (a, b) = (MessageIdGenerator::new(1), MessageIdGenerator::new(2));
        let (x, y) = (a.next_id(), b.next_id());
        assert_ne!(x, y);
        assert_eq!((x.node(), y.node()), (1, 2));
    }

    #[test]
    fn random_node_ids_differ() {
        let ids: std::collections::HashSet<u32> = (0..64).map(|_| random_node_id()).collect();
        assert!(ids.len() > 60, "{} distinct of 64", ids.len());
    }
}
