//! Embedding the plugin in your own rmqtt-based broker: the few calls it takes.
//!
//! `cargo run --example embedded_broker -- config.hocon 127.0.0.1:1884` runs an rmqtt broker with
//! rmqtt's retainer and the offline-messages plugin, configured from the plugin's `config.hocon`
//! (its `mysql` / `sqlite` block and `auth`; the listener is this program's). Your broker keeps its
//! own listeners, plugins and settings; the plugin needs:
//! 1. `host::rmqtt::enable_shared_subscriptions(&scx)`, optional: rmqtt ships `$share/...` turned off;
//! 2. `Engine::start(&config)`: connects to the database, applies the migrations when
//!    `init_default_schema` is set, checks every template, starts the writer;
//! 3. `host::rmqtt::register(&scx, engine)`: registers and starts the plugin in rmqtt;
//! 4. `engine.shutdown(..)` on the way out (SIGINT or SIGTERM), so that the writer flushes what it holds.
//!
//! `cargo test` builds this file, and `tests/docs.rs` runs it.

use std::net::SocketAddr;
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
    let config_path = args.next().context("usage: embedded_broker CONFIG.hocon [IP:PORT]")?;
    let addr: SocketAddr =
        args.next().as_deref().unwrap_or("127.0.0.1:1884").parse().context("the address must be IP:PORT")?;
    let config = Config::load(config_path.as_ref())?;
    for warning in config.warnings() {
        tracing::warn!("{warning}");
    }

    // Your broker's context, with its own plugins: here rmqtt's retainer.
    let scx = ServerContext::new().build().await;
    rmqtt_retainer::register(&scx, true, false).await.context("rmqtt's retainer")?;

    // The plugin.
    host::rmqtt::enable_shared_subscriptions(&scx).await;
    let engine = Engine::start(&config).await?;
    host::rmqtt::register(&scx, engine.clone()).await.context("the offline-messages plugin")?;

    // Your broker's listener. rmqtt lets a client without a username in without asking any plugin
    // when the listener allows anonymous clients, so it must not when `auth.users` is set.
    let listener = Builder::new()
        .name("external/tcp")
        .laddr(addr)
        .allow_anonymous(!config.auth.enabled())
        .max_packet_size(config.broker.max_packet_size)
        .bind()?
        .tcp()?;
    tracing::info!(%addr, "embedded broker listening");
    let server = MqttServer::new(scx).listener(listener).build();
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        res = server.run() => res.context("the MQTT server stopped")?,
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    engine.shutdown(Duration::from_secs(30)).await;
    Ok(())
}
