//! mqtt-offline-messages: persists MQTT messages to a database and replays them to subscribers.
//!
//! The engine ([`mqtt_offline_messages_engine`], re-exported here) knows no broker; [`host`] holds
//! the adapters that translate a broker's events into [`engine::Engine`] calls.

pub use mqtt_offline_messages_engine::*;

pub mod host;
