//! The engine of mqtt-offline-messages: persists MQTT messages to a database and replays them to subscribers.
//!
//! It knows no broker: a host adapter (the rmqtt one in the root package, the Mosquitto plugin) translates a broker's
//! events into [`engine::Engine`] calls.

pub mod auth;
pub mod config;
pub mod encode;
pub mod engine;
pub mod gate;
pub mod http;
pub mod message;
pub mod message_id;
pub mod metrics;
pub mod outage;
pub mod private_files;
pub mod spool;
pub mod store;
pub mod subscriptions;
pub mod template;
pub mod topic;
pub mod writer;
