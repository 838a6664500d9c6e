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
        let config = env.dir.path().join(format!("config-{i}.hocon"));
        std::fs::write(
            &config,
            format!(
                "mysql {{\n enable = true\n server = \"127.0.0.1:{}\"\n username = root\n password = \"\"\n database = {}\n init_default_schema = true\n topics = [\"#\"]\n batch_time = 5ms\n write_mode = sync\n query_timeout = 3s\n spool_dir = \"{}\"\n dead_letter_file = \"{}\"\n}}\nsqlite {{ enable = false }}\n",
                db.port,
                env.db_name,
                env.dir.path().join(format!("spool-{i}")).display(),
                env.dir.path().join(format!("dead-{i}.jsonl")).display()
            ),
        )
        .unwrap();
        let port = free_port();
        brokers.push(Broker::start(&config, port, env.dir.path().join(format!("broker-{i}.log"))).await);
        ports.push(port);
    }

    let publishers: Vec<_> = ports
        .iter()
        .enumerate()
        .map(|(i, &port)| {
            tokio::spawn(async move {
                let mut c = Client::connect(port, &format!("gal-pub-{i}"), true).await;
                for n in 0..N {
                    assert!(c.try_publish(&format!("gal/{i}"), format!("{i}-{n}")).await, "PUBACK for {i}-{n}");
                }
                c.disconnect().await;
            })
        })
        .collect();
    // Database node 2 dies mid-stream: its broker spools until it is back.
    let count = |db: &PrivateMariaDb| -> i64 {
        db.sql(&format!("select count(*) from `{}`.mqtt_msg", env.db_name))
            .stdout
            .iter()
            .map(|&b| b as char)
            .collect::<String>()
            .trim()
            .parse()
            .unwrap_or(0)
    };
    let start = Instant::now();
    while count(&galera.nodes[0]) < N as i64 / 2 {
        assert!(start.elapsed() < LONG, "nothing stored");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    galera.nodes[1].kill();
    brokers[1].wait_for_log("writes go to the on-disk spool").await;
    for p in publishers {
        p.await.unwrap();
    }
    open_to_state_transfers(galera.nodes[1].dir.path());
    galera.nodes[1].restart().await;
    galera.wait_synced(1).await;

    // Every acknowledged message stored once, in order per publisher, on every node.
    let start = Instant::now();
    while count(&galera.nodes[0]) < 3 * N as i64 {
        assert!(start.elapsed() < Duration::from_secs(120), "{} of {} stored", count(&galera.nodes[0]), 3 * N);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for db in &galera.nodes {
        let rows = db.sql_ok(&format!("select payload from `{}`.mqtt_msg order by id", env.db_name));
        let payloads: Vec<&str> = rows.lines().collect();
        assert_eq!(payloads.len(), 3 * N, "stored once each");
        for i in 0..3 {
            let mine: Vec<usize> =
                payloads.iter().filter_map(|p| p.strip_prefix(&format!("{i}-"))?.parse().ok()).collect();
            assert_eq!(mine, (0..N).collect::<Vec<_>>(), "publisher {i}: whole, once, in order");
        }
    }
    brokers[1].wait_for_log("the spool is written; back to direct batches").await;
}
