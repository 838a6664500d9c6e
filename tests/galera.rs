//! The store on a replicated database: a three-node MariaDB Galera cluster on loopback (private
//! data directories, Debian's galera-4), one broker on each database node, one database node
//! killed mid-stream.

mod common;

use std::time::{Duration, Instant};

use common::*;

const GALERA: &str = "/usr/lib/galera/libgalera_smm.so";

/// Three MariaDB servers as one Galera cluster; node 1 bootstraps it.
struct Galera {
    nodes: Vec<PrivateMariaDb>,
}

impl Galera {
    async fn start() -> Galera {
        assert!(std::path::Path::new(GALERA).exists(), "{GALERA} (Debian package galera-4)");
        let gcomm: Vec<u16> = (0..3).map(|_| free_fixed_port()).collect();
        let address =
            format!("gcomm://{}", gcomm.iter().map(|p| format!("127.0.0.1:{p}")).collect::<Vec<_>>().join(","));
        let mut nodes = Vec::new();
        for (i, port) in gcomm.iter().enumerate() {
            let mut args = vec![
                "--wsrep-on=ON".to_owned(),
                format!("--wsrep-provider={GALERA}"),
                format!("--wsrep-cluster-address={address}"),
                format!("--wsrep-node-name=node{}", i + 1),
                "--wsrep-node-address=127.0.0.1".into(),
                format!("--wsrep-sst-receive-address=127.0.0.1:{}", free_fixed_port()),
                format!(
                    "--wsrep-provider-options=gmcast.listen_addr=tcp://127.0.0.1:{port};ist.recv_addr=127.0.0.1:{}",
                    free_fixed_port()
                ),
                "--wsrep-sst-method=rsync".into(),
                "--binlog-format=ROW".into(),
                "--innodb-autoinc-lock-mode=2".into(),
            ];
            if i == 0 {
                args.push("--wsrep-new-cluster".into());
            }
            let dir = PrivateMariaDb::install();
            // The state transfer's rsync daemon runs as nobody, and writes into the data directory.
            let opened = std::process::Command::new("chmod").args(["-R", "a+rwX"]).arg(dir.path()).status().unwrap();
            assert!(opened.success());
            nodes.push(PrivateMariaDb::start_in(dir, &args, &[]).await);
        }
        let galera = Galera { nodes };
        for i in 0..3 {
            galera.wait_synced(i).await;
        }
        galera
    }

    /// Waits until node `i` (from 0) is a synced member of a three-node cluster.
    async fn wait_synced(&self, i: usize) {
        let start = Instant::now();
        loop {
            let state = self.nodes[i]
                .sql("show status where Variable_name in ('wsrep_cluster_size', 'wsrep_local_state_comment')");
            let text = String::from_utf8_lossy(&state.stdout).to_string();
            if text.contains("wsrep_cluster_size\t3") && text.contains("Synced") {
                return;
            }
            assert!(start.elapsed() < Duration::from_secs(180), "Galera node {} not synced: {text}", i + 1);
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// A node that joins gets the data by rsync (a state transfer), whose daemon runs as nobody and
/// writes into the node's data directory (the server, running as root, reads it all the same).
fn open_to_state_transfers(dir: &std::path::Path) {
    let run = |args: &[&str], path: &std::path::Path| {
        assert!(std::process::Command::new(args[0]).args(&args[1..]).arg(path).status().unwrap().success());
    };
    run(&["chmod", "a+rx"], dir);
    run(&["chown", "-R", "nobody"], &dir.join("data"));
}

/// A broker's config on the Galera cluster: `servers` is its `mysql.server`; `sync` mode (a PUBACK
/// means stored, or in the spool); `extra` keys in the `mysql` block.
fn broker_config(env: &TestEnv, i: usize, servers: &str, extra: &str) -> std::path::PathBuf {
    let config = env.dir.path().join(format!("config-{i}.hocon"));
    std::fs::write(
        &config,
        format!(
            "mysql {{\n enable = true\n server = \"{servers}\"\n username = root\n password = \"\"\n database = {}\n init_default_schema = true\n topics = [\"#\"]\n batch_time = 5ms\n write_mode = sync\n query_timeout = 3s\n spool_dir = \"{}\"\n dead_letter_file = \"{}\"\n {extra}\n}}\nsqlite {{ enable = false }}\n",
            env.db_name,
            env.dir.path().join(format!("spool-{i}")).display(),
            env.dir.path().join(format!("dead-{i}.jsonl")).display()
        ),
    )
    .unwrap();
    config
}

/// Rows of `mqtt_msg` on one database node (a causal read: once the node has applied what the
/// cluster committed before it).
fn count(db: &PrivateMariaDb, database: &str) -> i64 {
    db.sql(&format!("set session wsrep_sync_wait = 1; select count(*) from `{database}`.mqtt_msg"))
        .stdout
        .iter()
        .map(|&b| b as char)
        .collect::<String>()
        .trim()
        .parse()
        .unwrap_or(0)
}

/// Waits until `db` holds at least `n` rows of `mqtt_msg`, for `within` at most.
async fn wait_rows(db: &PrivateMariaDb, database: &str, n: usize, within: Duration) {
    let start = Instant::now();
    loop {
        let stored = count(db, database);
        if stored >= n as i64 {
            return;
        }
        assert!(start.elapsed() < within, "{stored} of {n} stored");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Publisher `i`: `n` messages `{i}-{k}` to `{prefix}/{i}`, each acknowledged.
fn publisher(port: u16, prefix: &'static str, i: usize, n: usize) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut c = Client::connect(port, &format!("{prefix}-pub-{i}"), true).await;
        for k in 0..n {
            assert!(c.try_publish(&format!("{prefix}/{i}"), format!("{i}-{k}")).await, "PUBACK for {i}-{k}");
        }
        c.disconnect().await;
    })
}

/// The payloads `{publisher}-{n}` stored on `db`, checked: `publishers` × `each`, once, in order per publisher.
fn assert_stored_once_in_order(db: &PrivateMariaDb, database: &str, publishers: usize, each: usize) {
    let rows =
        db.sql_ok(&format!("set session wsrep_sync_wait = 1; select payload from `{database}`.mqtt_msg order by id"));
    let payloads: Vec<&str> = rows.lines().collect();
    assert_eq!(payloads.len(), publishers * each, "stored once each");
    for i in 0..publishers {
        let mine: Vec<usize> = payloads.iter().filter_map(|p| p.strip_prefix(&format!("{i}-"))?.parse().ok()).collect();
        assert_eq!(mine, (0..each).collect::<Vec<_>>(), "publisher {i}: whole, once, in order");
    }
}

impl Drop for Galera {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for (i, db) in self.nodes.iter().enumerate() {
                let log = std::fs::read_to_string(db.dir.path().join("mariadbd.log")).unwrap_or_default();
                let trouble: Vec<&str> = log.lines().filter(|l| l.contains("ERROR") || l.contains("rsync")).collect();
                eprintln!("---- Galera node {} ----\n{}", i + 1, trouble.join("\n"));
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_per_galera_node_loses_nothing_when_a_database_node_is_killed() {
    const N: usize = 1500;
    let env = TestEnv::new(Backend::MySql).await;
    let mut galera = Galera::start().await;
    galera.nodes[0].sql_ok(&format!("CREATE DATABASE `{}`", env.db_name));
    // One broker per database node; `sync`: a PUBACK means stored (or in the spool).
    let mut brokers = Vec::new();
    let mut ports = Vec::new();
    for (i, db) in galera.nodes.iter().enumerate() {
        let config = broker_config(&env, i, &format!("127.0.0.1:{}", db.port), "");
        let port = free_port();
        brokers.push(Broker::start(&config, port, env.dir.path().join(format!("broker-{i}.log"))).await);
        ports.push(port);
    }

    let publishers: Vec<_> = ports.iter().enumerate().map(|(i, &port)| publisher(port, "gal", i, N)).collect();
    // Database node 2 dies mid-stream: its broker spools until it is back.
    wait_rows(&galera.nodes[0], &env.db_name, N / 2, LONG).await;
    galera.nodes[1].kill();
    brokers[1].wait_for_log("writes go to the on-disk spool").await;
    for p in publishers {
        p.await.unwrap();
    }
    open_to_state_transfers(galera.nodes[1].dir.path());
    galera.nodes[1].restart().await;
    galera.wait_synced(1).await;

    // Every acknowledged message stored once, in order per publisher, on every node.
    wait_rows(&galera.nodes[0], &env.db_name, 3 * N, Duration::from_secs(120)).await;
    for db in &galera.nodes {
        assert_stored_once_in_order(db, &env.db_name, 3, N);
    }
    brokers[1].wait_for_log("the spool is written; back to direct batches").await;
}

// One broker with every database node in `mysql.server`: the node it writes to is killed
// mid-stream; the writer spools, moves to the next node, and every acknowledged message is stored
// once, in order per publisher; a new subscriber's replay then reads from the node that took over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_moves_to_the_next_galera_node_when_its_node_is_killed() {
    const N: usize = 1500;
    let env = TestEnv::new(Backend::MySql).await;
    let mut galera = Galera::start().await;
    galera.nodes[0].sql_ok(&format!("CREATE DATABASE `{}`", env.db_name));
    let servers: Vec<String> = galera.nodes.iter().map(|db| format!("127.0.0.1:{}", db.port)).collect();
    // The replay reports its connection's `wsrep_sync_wait` as each message's QoS: 1 when the
    // read waited for the cluster's writes, 0 when not.
    let select = "select m.id, m.msgid, m.topic, m.sender, @@session.wsrep_sync_wait as qos, m.retain, m.payload, m.expiry, m.properties from mqtt_msg m where m.topic like ${topic_like} escape '!' and m.id > ${after_id} and (m.expiry is null or m.expiry > ${now}) order by m.id limit ${limit}";
    let config = broker_config(&env, 0, &servers.join(", "), &format!("select_message_sql = \"{select}\""));
    // A port picked now: the Galera nodes took ports of their own since `env` picked its port.
    let port = free_port();
    let broker = Broker::start(&config, port, env.dir.path().join("broker.log")).await;
    let publishers: Vec<_> = (0..2).map(|i| publisher(port, "move", i, N)).collect();
    wait_rows(&galera.nodes[1], &env.db_name, N / 2, LONG).await;
    galera.nodes[0].kill();
    // To node 2, or to node 3 when node 2 is slow to answer while the cluster evicts node 1.
    broker.wait_for_log(&format!("mysql.server: {} does not answer; statements go to", servers[0])).await;
    for p in publishers {
        p.await.unwrap();
    }
    wait_rows(&galera.nodes[1], &env.db_name, 2 * N, Duration::from_secs(120)).await;
    for db in &galera.nodes[1..] {
        assert_stored_once_in_order(db, &env.db_name, 2, N);
    }
    let mut s = Client::connect(port, "move-sub", false).await;
    s.subscribe("move/#", rumqttc::QoS::AtLeastOnce).await;
    let got = s.recv(2 * N, LONG).await;
    for i in 0..2 {
        let mine: Vec<String> = got
            .iter()
            .filter(|m| m.topic == format!("move/{i}"))
            .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
            .collect();
        assert_eq!(
            mine,
            (0..N).map(|n| format!("{i}-{n}")).collect::<Vec<_>>(),
            "publisher {i}: replayed whole, in order"
        );
    }
    let without_wait = got.iter().filter(|m| m.qos != rumqttc::QoS::AtLeastOnce).count();
    assert_eq!(without_wait, 0, "the replay's reads wait for the cluster (wsrep_sync_wait = 1)");
}
