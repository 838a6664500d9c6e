//! The engine's own message and subscription types; hosts convert their broker's types into these.

use bytes::Bytes;

use crate::message_id::MessageId;
use crate::template::{Bindings, Value, Var};

/// A published message the engine persists.
#[derive(Clone, Debug, PartialEq)]
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
    /// When it expires, unix milliseconds (`${expiry}`); `None`: never.
    pub expiry_ms: Option<i64>,
    /// MQTT 5 properties as JSON (`${properties}`), see [`Properties`].
    pub properties: Option<String>,
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
            Var::Expiry => self.expiry_ms.map_or(Value::Null, Value::Int),
            Var::Properties => self.properties.as_deref().map_or(Value::Null, Value::Text),
            // Not message variables: templates that could ask for them are rejected at start-up.
            Var::TopicLike | Var::Now | Var::AfterId | Var::Limit => Value::Null,
        }
    }
}

impl Message {
    /// What a host knows of a publish; the engine adds the id and the expiry.
    pub fn new(id: MessageId, p: Publish, expiry_ms: Option<i64>) -> Self {
        Message {
            msgid: id.to_base62(),
            from: p.from,
            topic: p.topic,
            qos: p.qos,
            retain: p.retain,
            payload: p.payload,
            timestamp_ms: p.timestamp_ms,
            expiry_ms,
            properties: p.properties.to_json(),
        }
    }
}

/// A publish as the host reports it.
#[derive(Clone, Debug, Default)]
pub struct Publish {
    pub from: String,
    pub topic: String,
    pub qos: u8,
    pub retain: bool,
    pub payload: Bytes,
    /// Publish time, unix milliseconds.
    pub timestamp_ms: i64,
    pub properties: Properties,
}

/// The MQTT 5 properties a stored message keeps, and gives back on replay. Stored as a JSON
/// object with the keys below, correlation data in hex; absent keys were not set.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Properties {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_format_indicator: Option<u8>,
    /// The Message Expiry Interval in seconds, as published.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_expiry_interval: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_topic: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "hex_bytes")]
    pub correlation_data: Option<Bytes>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub user_properties: Vec<(String, String)>,
}

impl Properties {
    /// `None` when no property is set, so that the column stays NULL for MQTT 3 messages.
    pub fn to_json(&self) -> Option<String> {
        (*self != Properties::default()).then(|| serde_json::to_string(self).expect("properties serialize"))
    }

    /// Reads the column back; text that is not ours (a user's own column) gives no properties.
    pub fn from_json(text: &str) -> Properties {
        serde_json::from_str(text).unwrap_or_default()
    }
}

mod hex_bytes {
    use bytes::Bytes;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(b: &Option<Bytes>, s: S) -> Result<S::Ok, S::Error> {
        let b = b.as_ref().expect("skipped when None");
        s.serialize_str(&b.iter().map(|x| format!("{x:02x}")).collect::<String>())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Bytes>, D::Error> {
        let text = String::deserialize(d)?;
        let bytes = (0..text.len())
            .step_by(2)
            .map(|i| text.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
            .collect::<Option<Vec<u8>>>()
            .ok_or_else(|| serde::de::Error::custom("correlation_data is not hex"))?;
        Ok(Some(Bytes::from(bytes)))
    }
}

/// A message read back from the store for replay. Its id is the text of the `msgid` column.
#[derive(Clone, Debug)]
pub struct StoredMessage {
    /// Where the message stands in its store's publish order, if the store tells: SQL's `id`
    /// column (when the select returns it), Redis's message id as a number. A replay reads the
    /// next page after the greatest position it has read.
    pub position: Option<u128>,
    pub msgid: String,
    pub from: String,
    pub topic: String,
    pub qos: u8,
    pub retain: bool,
    pub payload: Bytes,
    pub expiry_ms: Option<i64>,
    pub properties: Properties,
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
            _ => Value::Null,
        }
    }
}

/// What `select_message_sql` binds for one page of a replay.
pub struct ReplayQuery<'a> {
    pub sub: &'a Subscription,
    /// [`crate::topic::TopicFilter::like_pattern`] of the filter (`${topic_like}`).
    pub topic_like: String,
    pub now_ms: i64,
    /// The greatest [`StoredMessage::position`] read so far, 0 for the first page (`${after_id}`).
    pub after: u128,
    /// Rows per page (`${limit}`).
    pub limit: i64,
}

impl Bindings for ReplayQuery<'_> {
    fn value(&self, var: Var) -> Value<'_> {
        match var {
            Var::TopicLike => Value::Text(&self.topic_like),
            Var::Now => Value::Int(self.now_ms),
            // SQL positions come from its i64 `id` column.
            Var::AfterId => Value::Int(i64::try_from(self.after).unwrap_or(i64::MAX)),
            Var::Limit => Value::Int(self.limit),
            other => self.sub.value(other),
        }
    }
}

/// A client that has had a message (`insert_delivery_sql`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeliveryRecord {
    pub client_id: String,
    pub msgid: String,
}

impl Bindings for DeliveryRecord {
    fn value(&self, var: Var) -> Value<'_> {
        match var {
            Var::ClientId => Value::Text(&self.client_id),
            Var::Id => Value::Text(&self.msgid),
            _ => Value::Null,
        }
    }
}

/// What the background statements bind: the time, a row limit, a topic.
pub struct Maintenance<'a> {
    pub now_ms: i64,
    pub limit: i64,
    pub topic: &'a str,
}

impl Bindings for Maintenance<'_> {
    fn value(&self, var: Var) -> Value<'_> {
        match var {
            Var::Now => Value::Int(self.now_ms),
            Var::Limit => Value::Int(self.limit),
            Var::Topic => Value::Text(self.topic),
            _ => Value::Null,
        }
    }
}
