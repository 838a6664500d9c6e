//! The adapter that compiles this plugin into a stock `rmqttd` (docs/hosts.md, path 3).
//!
//! rmqttd links its plugins at compile time: its build script reads the
//! `[package.metadata.plugins]` table of its `Cargo.toml` and calls each plugin crate's
//! `register_named(&scx, name, default_startup, immutable)` at start-up, the function rmqtt's
//! `register!` macro writes. This file is that crate's `lib.rs`: copy it into a crate of your own
//! that depends on `rmqtt = "=0.24.0"` and `mqtt-offline-messages`. `cargo test` compiles it here
//! (as a library example), so its calls stay in step with this crate and rmqtt 0.24.0.

use mqtt_offline_messages::config::Config;
use mqtt_offline_messages::engine::Engine;
use mqtt_offline_messages::host;
use rmqtt::context::ServerContext;

/// Where the plugin's HOCON file is, unless `OFFLINE_MESSAGES_CONFIG` says.
const DEFAULT_CONFIG: &str = "offline-messages.hocon";

/// Called by rmqttd's generated start-up code with the signature of rmqtt's `register!` macro.
/// The plugin reads its own HOCON file (its `mysql` / `sqlite` block and `auth`), connects to the
/// database, checks its templates and registers itself; an error stops rmqttd's start-up.
pub async fn register_named(
    scx: &ServerContext,
    _name: &'static str,
    _default_startup: bool,
    _immutable: bool,
) -> rmqtt::Result<()> {
    let path = std::env::var("OFFLINE_MESSAGES_CONFIG").unwrap_or_else(|_| DEFAULT_CONFIG.into());
    let config = Config::load(path.as_ref())?;
    for warning in config.warnings() {
        tracing::warn!("{warning}");
    }
    host::rmqtt::enable_shared_subscriptions(scx).await;
    let engine = Engine::start(&config).await?;
    host::rmqtt::register(scx, engine).await
}
