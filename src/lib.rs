//! mqtt-offline-messages: persists MQTT messages to a SQL database and replays them to subscribers.
//!
//! The engine (everything but [`host`]) knows no broker; a host adapter translates a broker's
//! events into [`engine::Engine`] calls.

pub mod auth;
pub mod config;
pub mod encode;
pub mod engine;
pub mod gate;
pub mod host;
pub mod http;
pub mod message;
pub mod message_id;
pub mod metrics;
pub mod spool;
pub mod store;
pub mod subscriptions;
pub mod template;
pub mod topic;
pub mod writer;
