//! The broker the binary runs: rmqtt with its retainer and this plugin, on the listeners the
//! config names. Its listeners are bound before the database is touched (a taken port is the
//! most common start-up failure and needs no database); it serves once the engine runs and, with
//! `broker.cluster`, once this node has joined its cluster.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use rmqtt::context::ServerContext;
use rmqtt::net::{Builder, Listener};
use rmqtt::server::MqttServer;

use crate::config::Config;
use crate::engine::Engine;

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error(
        "cannot listen on {addr}: {cause}; choose another address with --bind HOST:PORT (or broker.bind in the config)"
    )]
    Bind { addr: SocketAddr, cause: String },
    #[error(
        "cannot start the TLS listener on {addr} (broker.tls): {cause}; check broker.tls.bind, certfile and keyfile"
    )]
    Tls { addr: SocketAddr, cause: String },
    #[error("starting {what}: {cause}")]
    Start { what: &'static str, cause: String },
    #[error("the MQTT server stopped: {0}")]
    Stopped(String),
    #[error("{0}")]
    Cluster(String),
}

/// QoS 1 and 2 messages sent to a client and not yet acknowledged, per client (an MQTT 5 client's
/// Receive Maximum lowers it). rmqtt's default of 16 bounded a replay, and any busy subscriber,
/// to 16 messages per round trip.
const MAX_INFLIGHT: std::num::NonZeroU16 = std::num::NonZeroU16::new(128).expect("not zero");

/// rmqtt's context and the bound listeners, not serving yet.
pub struct Broker {
    scx: ServerContext,
    listeners: Vec<Listener>,
    #[cfg(feature = "cluster")]
    cluster: Option<crate::config::ClusterConfig>,
}

impl Broker {
    /// Builds rmqtt's context and binds the MQTT listener at `addr` (and the TLS one, with
    /// `broker.tls`).
    pub async fn bind(config: &Config, addr: SocketAddr) -> Result<Broker, BrokerError> {
        // The retainer keeps retained messages in memory, without limits (its defaults).
        let builder = ServerContext::new().plugins_config_map_add("rmqtt-retainer", "max_retained_messages = 0");
        #[cfg(feature = "cluster")]
        let builder = match &config.broker.cluster {
            Some(cluster) => super::cluster::configure(builder, cluster),
            None => builder,
        };
        #[cfg(not(feature = "cluster"))]
        if config.broker.cluster.is_some() {
            return Err(BrokerError::Cluster(
                "broker.cluster is set, but this binary was built without the cluster feature: build it with \
                 `cargo build --release --features cluster` (which needs protoc: Debian's protobuf-compiler), \
                 or remove broker.cluster to run a single broker"
                    .into(),
            ));
        }
        let scx = builder.build().await;
        // How long the broker keeps a message queued for an offline persistent session when the
        // message sets no MQTT 5 expiry: by default as long as the plugin keeps its row
        // (`message_ttl`; zero, for ever, when it has none), not rmqtt's 5 minutes, so that a
        // session away longer still gets it.
        let expiry = config.broker.message_expiry_interval(&config.backend);
        let builder = |name: &str, laddr: SocketAddr| {
            Builder::new()
                .name(name)
                .laddr(laddr)
                .allow_anonymous(!config.auth.enabled())
                .max_packet_size(config.broker.max_packet_size)
                .max_mqueue_len(config.broker.max_mqueue_len)
                .session_expiry_interval(config.broker.session_expiry_interval)
                .message_expiry_interval(expiry)
                .max_inflight(MAX_INFLIGHT)
                // A restart right after a crash must not wait for the old connections' TIME_WAIT.
                .reuseaddr(Some(true))
        };
        let tcp = builder("external/tcp", addr)
            .bind()
            .and_then(|l| l.tcp())
            .map_err(|e| BrokerError::Bind { addr, cause: format!("{e:#}") })?;
        let mut listeners = vec![tcp];
        if let Some(tls) = &config.broker.tls {
            let listener = builder("external/tls", tls.bind)
                .tls_cert(Some(tls.certfile.display().to_string()))
                .tls_key(Some(tls.keyfile.display().to_string()))
                .bind()
                .and_then(|l| l.tls())
                .map_err(|e| BrokerError::Tls { addr: tls.bind, cause: format!("{e:#}") })?;
            listeners.push(listener);
        }
        super::enable_shared_subscriptions(&scx).await;
        Ok(Broker {
            scx,
            listeners,
            #[cfg(feature = "cluster")]
            cluster: config.broker.cluster.clone(),
        })
    }

    /// Joins the cluster (with `broker.cluster`), starts rmqtt's retainer and the plugin on
    /// `engine`, then serves until `stop` completes.
    pub async fn serve(self, engine: Arc<Engine>, stop: impl Future<Output = ()>) -> Result<(), BrokerError> {
        let start = |what| move |e: rmqtt::Error| BrokerError::Start { what, cause: format!("{e:#}") };
        #[cfg(feature = "cluster")]
        if let Some(cluster) = &self.cluster {
            super::cluster::start(&self.scx, cluster).await?;
        }
        rmqtt_retainer::register(&self.scx, true, false).await.map_err(start("rmqtt's retainer"))?;
        super::keep_retained_without_expiry(&self.scx).await;
        super::take_over_ending_sessions(&self.scx).await;
        super::register(&self.scx, engine).await.map_err(start("the offline-messages plugin"))?;
        let mut server = MqttServer::new(self.scx);
        // The plain TCP listener comes first.
        let addr = self.listeners[0].cfg.laddr;
        for listener in self.listeners {
            tracing::info!(addr = %listener.cfg.laddr, name = %listener.cfg.name, "MQTT listener serving");
            server = server.listener(listener);
        }
        tracing::info!(%addr, "MQTT broker listening");
        tokio::select! {
            res = server.build().run() => res.map_err(|e| BrokerError::Stopped(format!("{e:#}"))),
            () = stop => Ok(()),
        }
    }
}
