//! The key of everything the plugin keeps in Redis.
//!
//! The reference's keys: `{message_key_prefix}:{msgid}` (a message's hash),
//! `{message_key_prefix}:{topic}` (a topic's sorted set of ids), `{subscription_key_prefix}:{clientid}`
//! (a client's subscriptions). Ours hold a `#` right after the prefix: a published topic never
//! contains `#` and a message id is letters and digits, so no key of ours is a topic's or a
//! message's. A topic that has the shape of a message id (20 letters and digits) would share its
//! key with that message: its sorted set is `{message_key_prefix}:#topic:{topic}` instead.

pub struct Keys {
    messages: String,
    subscriptions: String,
}

/// Characters of every message id made between 1989 and 3180 (see [`crate::message_id::MessageId`]).
const ID_LEN: usize = 20;

impl Keys {
    pub fn new(message_prefix: &str, subscription_prefix: &str) -> Keys {
        Keys { messages: message_prefix.to_owned(), subscriptions: subscription_prefix.to_owned() }
    }

    /// A message's hash.
    pub fn message(&self, msgid: &str) -> String {
        format!("{}:{msgid}", self.messages)
    }

    /// A topic's sorted set of message ids, scored by publish time (ms).
    pub fn topic(&self, topic: &str) -> String {
        if looks_like_an_id(topic) {
            format!("{}:#topic:{topic}", self.messages)
        } else {
            format!("{}:{topic}", self.messages)
        }
    }

    /// The set of topics that have stored messages: a wildcard replay reads the ones it matches.
    pub fn topics(&self) -> String {
        format!("{}:#topics", self.messages)
    }

    /// The set of message ids a client has had (acknowledged in `fanout`, or delivered at QoS 0).
    pub fn delivered(&self, client_id: &str) -> String {
        format!("{}:#delivered:{client_id}", self.messages)
    }

    /// A key nothing uses, for the start-up checks.
    pub fn probe(&self) -> String {
        format!("{}:#check", self.messages)
    }

    /// A client's subscriptions: topic filter -> QoS.
    pub fn subscriptions(&self, client_id: &str) -> String {
        format!("{}:{client_id}", self.subscriptions)
    }
}

fn looks_like_an_id(topic: &str) -> bool {
    topic.len() == ID_LEN && topic.bytes().all(|b| b.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message_id::{MessageId, MessageIdGenerator};

    #[test]
    fn no_topic_shares_a_key_with_a_message_or_with_ours() {
        let keys = Keys::new("mqtt:msg", "mqtt:sub");
        let id = MessageIdGenerator::new(7).next_id().to_base62();
        assert!(looks_like_an_id(&id), "{id}");
        assert_eq!(keys.message(&id), format!("mqtt:msg:{id}"));
        assert_eq!(keys.topic(&id), format!("mqtt:msg:#topic:{id}"));
        assert_ne!(keys.topic(&id), keys.message(&id));
        assert_eq!(keys.topic("a/b"), "mqtt:msg:a/b", "the reference's key");
        assert_eq!(keys.topic("sensors"), "mqtt:msg:sensors");
        assert_eq!(keys.subscriptions("c1"), "mqtt:sub:c1");
        for ours in [keys.topics(), keys.delivered("c"), keys.probe(), keys.topic(&id)] {
            assert!(ours.starts_with("mqtt:msg:#"), "{ours}");
        }
    }

    #[test]
    fn every_message_id_has_the_shape() {
        for micros in [631_152_000_000_000u128, 1_800_000_000_000_000, 3_500_000_000_000_000] {
            for low in [0, u128::from(u64::MAX)] {
                assert!(looks_like_an_id(&MessageId(micros << 64 | low).to_base62()));
            }
        }
    }
}
