//! Embedding the plugin in your own rmqtt-based broker: the few calls it takes.
//!
//! `cargo run --example embedded_broker -- config.hocon 127.0.0.1:1884` runs an rmqtt broker with
//! the retainer and the offline-messages plugin, configured from the plugin's `config.hocon`.
//! Your broker keeps its own listeners, plugins and settings; the plugin needs only:
//! 1. `Engine::start(&config)`: connects to the database, checks the templates, starts the writer;
//! 2. `host::rmqtt::register(&scx, engine)`: registers and starts the plugin in rmqtt;
//! 3. optionally `host::rmqtt::enable_shared_subscriptions(&scx)` (rmqtt ships them turned off);
//! 4. `engine.shutdown(..)` on the way out, so the writer flushes what it holds.

use std::time::Duration;

use anyhow::Context;
use mqtt_offline_messages::config::Config;
use mqtt_offline_messages::engine::Engine;
use mqtt_offline_messages::host;
use rmqtt::context::ServerContext;
use rmqtt::net::Builder;
use rmqtt::server::MqttServer;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_writer(std::io::stderr).init();
    let mut args = std::env::args().skip(1);
    let config_path = args.next().unwrap_or_else(|| "config.hocon".into());
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:1884".into()).parse().context("address as IP:PORT")?;
    let config = Config::load(config_path.as_ref())?;

    // Your broker's context: here, the retainer with its defaults.
    let scx = ServerContext::new().build().await;
    rmqtt_retainer::register(&scx, true, false).await.context("rmqtt's retainer")?;

    // The plugin.
    host::rmqtt::enable_shared_subscriptions(&scx).await;
    let engine = Engine::start(&config).await?;
    host::rmqtt::register(&scx, engine.clone()).await.context("the offline-messages plugin")?;

    // Your broker's listeners.
    let listener = Builder::new().name("external/tcp").laddr(addr).allow_anonymous(true).bind()?.tcp()?;
    tracing::info!(%addr, "embedded broker listening");
    let server = MqttServer::new(scx).listener(listener).build();
    tokio::select! {
        res = server.run() => res.context("the MQTT server stopped")?,
        _ = tokio::signal::ctrl_c() => {}
    }
    engine.shutdown(Duration::from_secs(30)).await;
    Ok(())
}
