//! A stored message as the `history` tool shows it, whichever backend holds it (see
//! `sql/admin.rs` and `redis/admin.rs` for how each reads them).

use crate::message::Properties;

/// A stored message as `history` shows it.
#[derive(Debug, Clone)]
pub struct HistoryRow {
    /// The row's `id`; `None` on Redis, which keeps no row number (`msgid` names the message).
    pub id: Option<i64>,
    pub msgid: String,
    pub topic: String,
    pub sender: String,
    pub qos: i64,
    pub retain: bool,
    pub payload: Vec<u8>,
    pub arrived_ms: i64,
    pub expiry_ms: Option<i64>,
    pub properties: Properties,
}
