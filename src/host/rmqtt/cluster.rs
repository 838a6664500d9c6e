//! `broker.cluster`: rmqtt's own cluster plugins, started the way rmqtt's `rmqttd` starts them (the
//! node id in rmqtt's context, the node-to-node gRPC server, then the plugin, before serving).

use rmqtt::context::{CircuitBreakerConfig, ServerContext, ServerContextBuilder};

use super::BrokerError;
use crate::config::{ClusterConfig, ClusterMode, NodeAddr};

const BROADCAST: &str = "rmqtt-cluster-broadcast";
const RAFT: &str = "rmqtt-cluster-raft";
/// How long a node waits for another's answer.
const NODE_TIMEOUT: &str = "5s";

/// rmqtt's context for this node: its id and the plugin's settings (rmqtt reads plugin settings
/// as TOML).
pub fn configure(builder: ServerContextBuilder, cluster: &ClusterConfig) -> ServerContextBuilder {
    let list = |addrs: &[NodeAddr]| {
        let quoted: Vec<String> = addrs.iter().map(|a| format!("{:?}", a.to_string())).collect();
        format!("[{}]", quoted.join(", "))
    };
    // A publish waits for every node's answer (broadcast mode), a connect for the node that held
    // the session. With rmqtt's defaults (60 s; a breaker that opens after 10 failed calls within
    // 45 s), a dead node held every publish for a minute, and the breaker never opened for
    // publishers that each wait out one call after another. Now a call gives up after 5 s, and 3
    // failures open the breaker: calls to that node fail at once, and are tried again every 30 s.
    let grpc = format!("node_grpc_addrs = {}\nnode_grpc_client_timeout = \"{NODE_TIMEOUT}\"", list(&cluster.nodes));
    let breaker = CircuitBreakerConfig { minimum_number_of_calls: 3, ..CircuitBreakerConfig::default() };
    let builder = builder.node_id(cluster.node_id.into()).circuit_breaker_config(breaker);
    match cluster.mode {
        ClusterMode::Broadcast => builder.plugins_config_map_add(BROADCAST, grpc),
        // A node restarted right after a crash must not wait for its old connections' TIME_WAIT.
        ClusterMode::Raft => builder.plugins_config_map_add(
            RAFT,
            format!("{grpc}\nraft_peer_addrs = {}\n[raft]\ngrpc_reuseaddr = true", list(&cluster.raft_peers)),
        ),
    }
}

/// Starts the gRPC server on this node's address in `nodes`, then the cluster plugin. In raft
/// mode this returns once the node has joined a cluster with a leader that accepts proposals.
pub async fn start(scx: &ServerContext, cluster: &ClusterConfig) -> Result<(), BrokerError> {
    let this = cluster.this_node();
    let addr = tokio::net::lookup_host(this.addr.as_str()).await.ok().and_then(|mut a| a.next()).ok_or_else(|| {
        BrokerError::Cluster(format!(
            "broker.cluster.nodes: this node's address {} does not resolve; give an address this host has",
            this.addr
        ))
    })?;
    // rmqtt's gRPC server binds in a task of its own and only logs a failure: a taken port is
    // found here first, with the key to change.
    std::net::TcpListener::bind(addr).map_err(|e| {
        BrokerError::Cluster(format!(
            "broker.cluster.nodes: cannot listen on {addr} for the other nodes ({e}); change this node's entry ({this})"
        ))
    })?;
    scx.node.start_grpc_server(scx.clone(), addr, true, false);
    let (name, registered) = match cluster.mode {
        ClusterMode::Broadcast => (BROADCAST, rmqtt_cluster_broadcast::register(scx, true, false).await),
        ClusterMode::Raft => (RAFT, rmqtt_cluster_raft::register(scx, true, false).await),
    };
    registered.map_err(|e| BrokerError::Start { what: name, cause: format!("{e:#}") })?;
    tracing::info!(mode = ?cluster.mode, node_id = cluster.node_id, grpc = %addr, "cluster node started");
    Ok(())
}
