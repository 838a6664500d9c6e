//! Host adapters: each translates one broker's events into [`crate::engine::Engine`] calls.

pub mod rmqtt;
