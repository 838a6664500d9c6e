//! The engine's own message and subscription types; hosts convert their broker's types into these.

use bytes::Bytes;

use crate::message_id::MessageId;
use crate::template::{Bindings, Value, Var};

/// A published message the engine persists.
#[derive(Clone, Debug)]
pub struct Message {
    /// The message id in base62, the text the `msgid` column holds (`${id}`).
    pub msgid: String,
    /// Client id of the publisher (`${from}`).
    pub from: String,
    pub topic: String,
    pub qos: u8,
    pub retain: bool,
    pub payload: Bytes,
    /// Publish time, unix milliseconds (`${timestamp}`).
    pub timestamp_ms: i64,
}

impl Bindings for Message {
    fn value(&self, var: Var) -> Value<'_> {
        match var {
            Var::Id => Value::Text(&self.msgid),
            Var::From | Var::ClientId => Value::Text(&self.from),
            Var::Topic => Value::Text(&self.topic),
            Var::Qos => Value::Int(i64::from(self.qos)),
            Var::Retain => Value::Int(i64::from(self.retain)),
            Var::Payload => Value::Bytes(&self.payload),
            Var::Timestamp => Value::Int(self.timestamp_ms),
            // Not a message variable: templates that could ask for it are rejected at start-up.
            Var::TopicLike => Value::Text(&self.topic),
        }
    }
}

impl Message {
    pub fn new(
        id: MessageId,
        from: String,
        topic: String,
        qos: u8,
        retain: bool,
        payload: Bytes,
        timestamp_ms: i64,
    ) -> Self {
        Message { msgid: id.to_base62(), from, topic, qos, retain, payload, timestamp_ms }
    }
}

/// A message read back from the store for replay. Its id is the text of the `msgid` column.
#[derive(Clone, Debug)]
pub struct StoredMessage {
    pub msgid: String,
    pub from: String,
    pub topic: String,
    pub qos: u8,
    pub retain: bool,
    pub payload: Bytes,
}

/// One subscription of one client (`${clientid}`, `${topic}`, `${qos}` in templates).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subscription {
    pub client_id: String,
    pub filter: String,
    pub qos: u8,
}

impl Bindings for Subscription {
    fn value(&self, var: Var) -> Value<'_> {
        match var {
            Var::ClientId | Var::From => Value::Text(&self.client_id),
            Var::Topic => Value::Text(&self.filter),
            Var::Qos => Value::Int(i64::from(self.qos)),
            // Subscription templates are parsed with SUBSCRIPTION_VARS only, so these never occur.
            Var::Id | Var::Retain | Var::Payload | Var::Timestamp | Var::TopicLike => Value::Int(0),
        }
    }
}

/// What `select_message_sql` binds for a replay: the subscription, and its filter's LIKE pattern.
pub struct ReplayQuery<'a> {
    pub sub: &'a Subscription,
    /// [`crate::topic::TopicFilter::like_pattern`] of the filter (`${topic_like}`).
    pub topic_like: String,
}

impl Bindings for ReplayQuery<'_> {
    fn value(&self, var: Var) -> Value<'_> {
        match var {
            Var::TopicLike => Value::Text(&self.topic_like),
            other => self.sub.value(other),
        }
    }
}
