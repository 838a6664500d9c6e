//! Test harness: a real database (its own MariaDB database, SQLite file or Redis server per test),
//! the real broker binary on a free port, and real MQTT clients.
#![allow(dead_code)]

use std::io::Read;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use redis::Commands;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, Publish, QoS};
use sqlx::{Connection, Row};
use tokio::sync::mpsc;

pub const MYSQL_SERVER: &str = "127.0.0.1:3306";

pub const LONG: Duration = Duration::from_secs(60);
/// How long a client waits for its CONNACK.
pub const CONNACK_WAIT: Duration = LONG;

/// Runs one scenario against MariaDB and against SQLite, as two tests.
#[macro_export]
macro_rules! on_both_backends {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn mysql() {
                super::$name(super::Backend::MySql).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name(super::Backend::Sqlite).await
            }
        }
    };
}

/// Runs one scenario against MariaDB, SQLite and a Redis server of its own, as three tests.
#[macro_export]
macro_rules! on_every_backend {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn mysql() {
                super::$name(super::Backend::MySql).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name(super::Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn redis() {
                super::$name(super::Backend::Redis).await
            }
        }
    };
}

/// Payload `i` of a sequence: binary, with NUL bytes and bytes that are not UTF-8.
pub fn payload(i: usize) -> Vec<u8> {
    let mut p = vec![0u8, 0xff, 0xfe, b'\'', b'\\', 0x80];
    p.extend_from_slice(format!("#{i}").as_bytes());
    p.push(0);
    p
}

/// `GET url` with curl: (status, body).
pub fn curl(url: &str) -> (u16, String) {
    let out =
        Command::new("curl").args(["-s", "-w", "\n%{http_code}", url]).output().expect("curl (Debian package curl)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

/// Runs Debian's `mosquitto_pub` or `mosquitto_sub` (package mosquitto-clients) against the
/// broker as an MQTT 5 client with QoS 1.
pub fn mosquitto(program: &str, port: u16, client_id: &str, topic: &str, extra: &[&str]) -> std::process::Output {
    std::process::Command::new(program)
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-V", "5", "-q", "1", "-i", client_id, "-t", topic])
        .args(extra)
        .output()
        .unwrap_or_else(|e| panic!("{program} (Debian package mosquitto-clients): {e}"))
}

/// The value of the sample `name` in Prometheus text.
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
        .parse()
        .unwrap()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    MySql,
    Sqlite,
    Redis,
}

/// A row of `mqtt_msg` as a test sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MsgRow {
    pub msgid: String,
    pub topic: String,
    pub sender: String,
    pub qos: i64,
    pub retain: i64,
    pub payload: Vec<u8>,
    pub arrived_ms: i64,
}

/// Runs `$body` with `$c` a fresh connection to the test's database, typed for its backend.
macro_rules! with_conn {
    ($env:expr, $c:ident => $body:expr) => {
        match $env.backend {
            Backend::MySql => {
                let mut $c = $env.mysql().await;
                $body
            }
            Backend::Sqlite => {
                let mut $c = $env.sqlite().await;
                $body
            }
            Backend::Redis => panic!("an SQL statement on the redis backend"),
        }
    };
}

/// One test's database and files; the database is dropped with it.
pub struct TestEnv {
    pub backend: Backend,
    pub dir: tempfile::TempDir,
    pub db_name: String,
    pub port: u16,
    /// The test's Redis server, on the redis backend.
    pub redis: Option<PrivateRedis>,
}

fn unique_name() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    format!("omtest_{}_{}_{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed), nanos % 100_000)
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A free port below Linux's ephemeral range (32768 and up), for a server that must get the same
/// port back when restarted: a port from [`free_port`] may meanwhile be the local end of some
/// outgoing connection.
pub fn free_fixed_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let hash = unique_name().bytes().fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(b.into()));
        let port = 10_000 + (hash % 22_000) as u16;
        let mut given = GIVEN.lock().unwrap();
        if !given.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.push(port);
            return port;
        }
    }
}

fn mysql_url(db: &str) -> String {
    format!("mysql://root@{MYSQL_SERVER}/{db}")
}

impl TestEnv {
    pub async fn new(backend: Backend) -> TestEnv {
        TestEnv::with_redis(backend, &[]).await
    }

    /// On the redis backend, its server gets `redis_args` (`--appendonly yes`, say).
    pub async fn with_redis(backend: Backend, redis_args: &[&str]) -> TestEnv {
        let dir = tempfile::tempdir().unwrap();
        let redis = (backend == Backend::Redis).then(|| PrivateRedis::start(&dir.path().join("redis"), redis_args));
        let env = TestEnv { backend, dir, db_name: unique_name(), port: free_port(), redis };
        if backend == Backend::MySql {
            let mut c = sqlx::MySqlConnection::connect(&mysql_url("mysql"))
                .await
                .expect("MariaDB on 127.0.0.1:3306 (root, no password)");
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE `{}`", env.db_name)))
                .execute(&mut c)
                .await
                .unwrap();
        }
        env
    }

    pub fn dead_letter_path(&self) -> PathBuf {
        self.dir.path().join("dead-letters.jsonl")
    }

    /// The dead-letter file's entries.
    pub fn dead_letters(&self) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(self.dead_letter_path()).unwrap_or_default();
        text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    pub fn sqlite_path(&self) -> PathBuf {
        self.dir.path().join("offline.db")
    }

    /// The enabled backend block with `extra` keys appended (later keys override earlier ones).
    pub fn backend_block(&self, extra: &str) -> String {
        match self.backend {
            Backend::MySql => format!(
                "mysql {{\n enable = true\n server = \"{MYSQL_SERVER}\"\n username = root\n password = \"\"\n database = {}\n init_default_schema = true\n topics = [\"#\"]\n batch_time = 5ms\n dead_letter_file = \"{}\"\n spool_dir = \"{}\"\n {extra}\n}}\nsqlite {{ enable = false }}\n",
                self.db_name,
                self.dead_letter_path().display(),
                self.dir.path().join("spool").display()
            ),
            Backend::Sqlite => format!(
                "sqlite {{\n enable = true\n path = \"{}\"\n init_default_schema = true\n topics = [\"#\"]\n batch_time = 5ms\n dead_letter_file = \"{}\"\n spool_dir = \"{}\"\n {extra}\n}}\n",
                self.sqlite_path().display(),
                self.dead_letter_path().display(),
                self.dir.path().join("spool").display()
            ),
            Backend::Redis => format!(
                "redis {{\n enable = true\n servers = \"127.0.0.1:{}\"\n topics = [\"#\"]\n batch_time = 5ms\n dead_letter_file = \"{}\"\n spool_dir = \"{}\"\n {extra}\n}}\nsqlite {{ enable = false }}\n",
                self.redis().port,
                self.dead_letter_path().display(),
                self.dir.path().join("spool").display()
            ),
        }
    }

    pub fn redis(&self) -> &PrivateRedis {
        self.redis.as_ref().expect("the redis backend")
    }

    /// Stores a subscription as an operator provisions one, without the broker.
    pub async fn provision_subscription(&self, client_id: &str, filter: &str, qos: i64) {
        match self.backend {
            Backend::Redis => {
                let _: () = self.redis().conn().hset(format!("mqtt:sub:{client_id}"), filter, qos).unwrap();
            }
            _ => with_conn!(self, c => {
                sqlx::query("insert into mqtt_sub(clientid, topic, qos) values(?, ?, ?)")
                    .bind(client_id)
                    .bind(filter)
                    .bind(qos)
                    .execute(&mut c)
                    .await
                    .unwrap();
            }),
        }
    }

    /// Writes config.hocon for this test and returns its path.
    pub fn write_config(&self, text: &str) -> PathBuf {
        let path = self.dir.path().join("config.hocon");
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Starts another broker on the same database, on a port of its own: `(broker, port)`.
    pub async fn start_another(&self, name: &str, extra: &str) -> (Broker, u16) {
        let port = free_port();
        let config = self.dir.path().join(format!("config-{name}.hocon"));
        let spool = self.dir.path().join(format!("spool-{name}"));
        std::fs::write(&config, self.backend_block(&format!("spool_dir = \"{}\"\n{extra}", spool.display()))).unwrap();
        (Broker::start(&config, port, self.dir.path().join(format!("broker-{name}.log"))).await, port)
    }

    /// Starts the broker with the default backend block plus `extra` keys in it.
    pub async fn start(&self, extra: &str) -> Broker {
        let path = self.write_config(&self.backend_block(extra));
        Broker::start(&path, self.port, self.dir.path().join("broker.log")).await
    }

    pub async fn messages(&self) -> Vec<MsgRow> {
        if self.backend == Backend::Redis {
            return self.redis().messages();
        }
        let sql = match self.backend {
            Backend::MySql => "select msgid, topic, sender, qos, retain, payload, CAST(UNIX_TIMESTAMP(arrived) * 1000 AS SIGNED) as arrived_ms from mqtt_msg order by id",
            _ => "select msgid, topic, sender, qos, retain, payload, arrived as arrived_ms from mqtt_msg order by id",
        };
        with_conn!(self, c => sqlx::query(sql).fetch_all(&mut c).await.unwrap().iter().map(|r| MsgRow {
            msgid: r.get("msgid"),
            topic: r.get("topic"),
            sender: r.get("sender"),
            qos: r.get("qos"),
            retain: r.get("retain"),
            payload: r.get("payload"),
            arrived_ms: r.get("arrived_ms"),
        }).collect())
    }

    /// `(clientid, topic, qos)` of every stored subscription, sorted.
    pub async fn subscriptions(&self) -> Vec<(String, String, i64)> {
        if self.backend == Backend::Redis {
            return self.redis().subscriptions();
        }
        const SQL: &str = "select clientid, topic, qos from mqtt_sub order by clientid, topic";
        with_conn!(self, c => sqlx::query(SQL).fetch_all(&mut c).await.unwrap().iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect())
    }

    /// Runs a statement of the test's own (DDL, counting queries) and returns the first column of
    /// the first row as an integer, if any.
    pub async fn exec(&self, sql: &'static str) -> Option<i64> {
        with_conn!(self, c => sqlx::query(sql).fetch_optional(&mut c).await.unwrap().map(|r| r.get(0)))
    }

    /// Renames a table, in the backend's dialect (a way to make statements fail, then work again).
    pub async fn rename_table(&self, from: &str, to: &str) {
        let sql = match self.backend {
            Backend::MySql => format!("rename table {from} to {to}"),
            _ => format!("alter table {from} rename to {to}"),
        };
        with_conn!(self, c => { sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut c).await.unwrap(); })
    }

    /// Runs statements, ignoring what they return.
    pub async fn execute(&self, sql: &'static str) {
        with_conn!(self, c => { sqlx::raw_sql(sql).execute(&mut c).await.unwrap(); })
    }

    /// Rows of `mqtt_msg`, `mqtt_sub` or `mqtt_delivered`; on Redis, what holds the same: message
    /// hashes, subscription hash fields, delivery-set members.
    pub async fn count(&self, table: &str) -> i64 {
        if self.backend == Backend::Redis {
            return self.redis().count(table);
        }
        let sql: &'static str = match table {
            "mqtt_msg" => "select count(*) from mqtt_msg",
            "mqtt_sub" => "select count(*) from mqtt_sub",
            "mqtt_delivered" => "select count(*) from mqtt_delivered",
            other => panic!("no count query for {other}"),
        };
        self.exec(sql).await.unwrap()
    }

    /// Polls until `count(table) == n`; panics with the last count after `timeout`.
    pub async fn wait_count(&self, table: &str, n: i64, timeout: Duration) {
        let start = Instant::now();
        loop {
            let c = self.count(table).await;
            if c == n {
                return;
            }
            assert!(start.elapsed() < timeout, "{table}: expected {n} rows, still {c} after {timeout:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Polls until `count(table) >= n`.
    pub async fn wait_count_at_least(&self, table: &str, n: i64, timeout: Duration) {
        let start = Instant::now();
        while self.count(table).await < n {
            assert!(start.elapsed() < timeout, "{table}: fewer than {n} rows after {timeout:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn mysql(&self) -> sqlx::MySqlConnection {
        sqlx::MySqlConnection::connect(&mysql_url(&self.db_name)).await.unwrap()
    }

    pub async fn sqlite(&self) -> sqlx::SqliteConnection {
        sqlx::SqliteConnection::connect(&format!("sqlite://{}?mode=rwc", self.sqlite_path().display())).await.unwrap()
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        if self.backend != Backend::MySql {
            return;
        }
        let db = self.db_name.clone();
        // Drop runs inside or outside a runtime: use a thread with a runtime of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                if let Ok(mut c) = sqlx::MySqlConnection::connect(&mysql_url("mysql")).await {
                    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS `{db}`")))
                        .execute(&mut c)
                        .await;
                }
            })
        })
        .join();
    }
}

/// Brokers as one cluster (`broker.cluster`, cargo feature `cluster`) on the test's database: node
/// `i` (from 1) has its own MQTT port, gRPC and Raft ports, spool, config file and log.
pub struct Cluster {
    nodes: Vec<Option<Broker>>,
    ports: Vec<u16>,
    configs: Vec<PathBuf>,
    logs: Vec<PathBuf>,
}

impl TestEnv {
    /// Starts `n` nodes in `mode` (`broadcast` or `raft`), one after the other (node 1 first, as an
    /// operator starts them), each with `extra` keys in its backend block, and waits until every
    /// node routes to every other.
    pub async fn start_cluster(&self, mode: &str, n: usize, extra: &str) -> Cluster {
        assert_eq!(self.backend, Backend::MySql, "a cluster shares one MariaDB database");
        let list = |ports: &[u16]| {
            let entries: Vec<String> =
                ports.iter().enumerate().map(|(i, p)| format!("\"{}@127.0.0.1:{p}\"", i + 1)).collect();
            format!("[{}]", entries.join(", "))
        };
        let grpc: Vec<u16> = (0..n).map(|_| free_fixed_port()).collect();
        let raft: Vec<u16> = (0..n).map(|_| free_fixed_port()).collect();
        let peers = if mode == "raft" { format!("raft_peers = {}", list(&raft)) } else { String::new() };
        let mut cluster = Cluster { nodes: Vec::new(), ports: Vec::new(), configs: Vec::new(), logs: Vec::new() };
        for node in 1..=n {
            let spool = self.dir.path().join(format!("spool-{node}"));
            let config = self.dir.path().join(format!("config-{node}.hocon"));
            let text = format!(
                "broker.cluster {{\n mode = {mode}\n node_id = {node}\n nodes = {}\n {peers}\n}}\n{}",
                list(&grpc),
                self.backend_block(&format!("spool_dir = \"{}\"\n{extra}", spool.display()))
            );
            std::fs::write(&config, text).unwrap();
            cluster.ports.push(free_fixed_port());
            cluster.configs.push(config);
            cluster.logs.push(self.dir.path().join(format!("broker-{node}.log")));
            cluster.nodes.push(None);
            cluster.restart(node).await;
        }
        cluster.wait_routing().await;
        cluster
    }
}

impl Cluster {
    /// Node `node`'s MQTT port.
    pub fn port(&self, node: usize) -> u16 {
        self.ports[node - 1]
    }

    pub fn node(&self, node: usize) -> &Broker {
        self.nodes[node - 1].as_ref().expect("the node runs")
    }

    /// SIGKILL to node `node`.
    pub fn kill(&mut self, node: usize) {
        if let Some(mut broker) = self.nodes[node - 1].take() {
            broker.kill();
        }
    }

    /// Starts node `node` (again), on its ports, config and log.
    pub async fn restart(&mut self, node: usize) {
        let i = node - 1;
        self.nodes[i] = Some(Broker::start(&self.configs[i], self.ports[i], self.logs[i].clone()).await);
    }

    /// Waits until a QoS 0 publish on every running node reaches a subscriber on every other: the
    /// cluster routes (raft mode needs a leader and its members first).
    pub async fn wait_routing(&self) {
        let running: Vec<usize> = (1..=self.nodes.len()).filter(|&n| self.nodes[n - 1].is_some()).collect();
        let start = Instant::now();
        for &to in &running {
            let mut sub = Client::connect(self.port(to), &format!("probe-sub-{to}"), true).await;
            sub.subscribe(&format!("probe/{to}"), QoS::AtMostOnce).await;
            for &from in running.iter().filter(|&&n| n != to) {
                let publisher = Client::connect(self.port(from), &format!("probe-pub-{from}"), true).await;
                loop {
                    publisher.client.publish(format!("probe/{to}"), QoS::AtMostOnce, false, "probe").await.unwrap();
                    if !sub.drain(Duration::from_millis(300)).await.is_empty() {
                        break;
                    }
                    assert!(
                        start.elapsed() < Duration::from_secs(180),
                        "node {from} does not route to node {to} after 180 s:\n{}",
                        self.node(from).log_text()
                    );
                }
                publisher.disconnect().await;
            }
            sub.disconnect().await;
        }
    }
}

/// The broker binary, running; stopped with SIGTERM when dropped.
pub struct Broker {
    child: Child,
    pub port: u16,
    pub log: PathBuf,
}

/// The line the broker logs once it accepts clients (a restart appends to the same log).
const READY: &str = "MQTT broker listening";

/// Our broker's binary; empty in the Mosquitto plugin's tests, which share this harness (they are
/// another package's, without the binary).
pub const BIN: &str = match option_env!("CARGO_BIN_EXE_mqtt-offline-messages") {
    Some(path) => path,
    None => "",
};

impl Broker {
    pub async fn start(config: &std::path::Path, port: u16, log: PathBuf) -> Broker {
        Broker::start_logging(config, port, log, "info,mqtt_offline_messages=debug").await
    }

    /// Starts it with `rust_log` as its `RUST_LOG`.
    pub async fn start_logging(config: &std::path::Path, port: u16, log: PathBuf, rust_log: &str) -> Broker {
        let ready_before = std::fs::read_to_string(&log).unwrap_or_default().matches(READY).count();
        let log_file = std::fs::OpenOptions::new().create(true).append(true).open(&log).unwrap();
        let child = Command::new(BIN)
            .args(["run", "--config"])
            .arg(config)
            .args(["--bind", &format!("127.0.0.1:{port}")])
            .env("RUST_LOG", rust_log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .unwrap();
        let mut broker = Broker { child, port, log };
        let start = Instant::now();
        loop {
            if broker.log_text().matches(READY).count() > ready_before {
                return broker;
            }
            if let Ok(Some(status)) = broker.child.try_wait() {
                panic!("broker exited with {status} at start-up:\n{}", broker.log_text());
            }
            // A cluster node in raft mode serves once it has joined a cluster with a leader.
            assert!(start.elapsed() < Duration::from_secs(120), "broker not ready in 120 s:\n{}", broker.log_text());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the broker's log holds `text`.
    pub async fn wait_for_log(&self, text: &str) {
        let start = Instant::now();
        while !self.log_text().contains(text) {
            assert!(start.elapsed() < LONG, "not logged within {LONG:?}: {text}\n{}", self.log_text());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn log_text(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// Sends a signal (`HUP`, `TERM`) and returns at once.
    pub fn signal(&self, name: &str) {
        let sent = Command::new("kill").args([&format!("-{name}"), &self.child.id().to_string()]).status().unwrap();
        assert!(sent.success(), "kill -{name}");
    }

    /// SIGKILL: the process gets no chance to flush anything.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits for a clean exit; returns the exit code.
    pub fn stop(&mut self) -> Option<i32> {
        terminate(&mut self.child, Duration::from_secs(40))
    }
}

/// SIGTERM to `child`, then its exit code once it exits within `within`; past that it is killed
/// (`None`).
pub fn terminate(child: &mut Child, within: Duration) -> Option<i32> {
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let start = Instant::now();
    while start.elapsed() < within {
        if let Ok(Some(status)) = child.try_wait() {
            return status.code();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.stop();
        }
        if std::thread::panicking() {
            eprintln!("---- broker log ----\n{}", self.log_text());
        }
    }
}

/// A real MQTT 3.1.1 client (rumqttc) whose received publishes are collected.
pub struct Client {
    pub client: AsyncClient,
    publishes: mpsc::UnboundedReceiver<Publish>,
    acks: mpsc::UnboundedReceiver<Packet>,
    task: tokio::task::JoinHandle<()>,
}

impl Client {
    pub async fn connect(port: u16, id: &str, clean: bool) -> Client {
        Client::connect_with(port, id, clean, false).await
    }

    /// With `manual_acks`, received QoS 1/2 messages are never acknowledged (a stuck subscriber).
    pub async fn connect_with(port: u16, id: &str, clean: bool, manual_acks: bool) -> Client {
        Client::connect_opts(port, id, clean, manual_acks, 1 << 20, None).await.unwrap_or_else(|e| panic!("{e}"))
    }

    /// A clean-start client that may send and receive packets up to `max_packet` bytes.
    pub async fn connect_with_max_packet(port: u16, id: &str, max_packet: usize) -> Client {
        Client::connect_opts(port, id, true, false, max_packet, None).await.unwrap_or_else(|e| panic!("{e}"))
    }

    /// A clean-start client that logs in.
    pub async fn connect_as(port: u16, id: &str, username: &str, password: &str) -> Client {
        Client::connect_opts(port, id, true, false, 1 << 20, Some((username, password)))
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    async fn connect_opts(
        port: u16,
        id: &str,
        clean: bool,
        manual_acks: bool,
        max_packet: usize,
        credentials: Option<(&str, &str)>,
    ) -> Result<Client, String> {
        let mut opts = MqttOptions::new(id, "127.0.0.1", port);
        if let Some((user, password)) = credentials {
            opts.set_credentials(user, password);
        }
        opts.set_manual_acks(manual_acks);
        opts.set_clean_session(clean)
            .set_keep_alive(Duration::from_secs(30))
            .set_max_packet_size(max_packet, max_packet);
        let (client, mut eventloop) = AsyncClient::new(opts, 10_000);
        // rumqttc gives up on a CONNACK after 5 s by default; the wait below decides.
        eventloop.network_options.set_connection_timeout(CONNACK_WAIT.as_secs());
        let (ptx, publishes) = mpsc::unbounded_channel();
        let (atx, mut acks) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let _ = ptx.send(p);
                    }
                    Ok(Event::Incoming(
                        p @ (Packet::ConnAck(_)
                        | Packet::SubAck(_)
                        | Packet::UnsubAck(_)
                        | Packet::PubAck(_)
                        | Packet::PubComp(_)),
                    )) => {
                        let _ = atx.send(p);
                    }
                    // rumqttc reconnects on its own: a client that said goodbye must stay gone.
                    Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        });
        let mut c = Client { client, publishes, acks: mpsc::unbounded_channel().1, task };
        match tokio::time::timeout(CONNACK_WAIT, acks.recv()).await {
            Ok(Some(Packet::ConnAck(_))) => {}
            other => {
                c.task.abort();
                return Err(format!("no CONNACK for {id}: {other:?}"));
            }
        }
        c.acks = acks;
        Ok(c)
    }

    /// Connects again and again, as a real client does, until the broker accepts within `within`.
    pub async fn connect_retrying(port: u16, id: &str, clean: bool, within: Duration) -> Client {
        let start = Instant::now();
        loop {
            match Client::connect_opts(port, id, clean, false, 1 << 20, None).await {
                Ok(c) => return c,
                Err(e) => assert!(start.elapsed() < within, "{e} within {within:?}"),
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    async fn next_ack(&mut self, what: &str) -> Packet {
        tokio::time::timeout(Duration::from_secs(30), self.acks.recv())
            .await
            .unwrap_or_else(|_| panic!("no {what} in 30 s"))
            .unwrap_or_else(|| panic!("connection closed waiting for {what}"))
    }

    pub async fn subscribe(&mut self, filter: &str, qos: QoS) {
        let codes = self.try_subscribe(filter, qos).await;
        assert!(
            codes.iter().all(|c| matches!(c, rumqttc::SubscribeReasonCode::Success(_))),
            "SUBACK refused {filter}: {codes:?}"
        );
    }

    /// Subscribes and returns the SUBACK's return codes.
    pub async fn try_subscribe(&mut self, filter: &str, qos: QoS) -> Vec<rumqttc::SubscribeReasonCode> {
        self.client.subscribe(filter, qos).await.unwrap();
        match self.next_ack("SUBACK").await {
            Packet::SubAck(ack) => ack.return_codes,
            other => panic!("expected a SUBACK, got {other:?}"),
        }
    }

    pub async fn unsubscribe(&mut self, filter: &str) {
        self.client.unsubscribe(filter).await.unwrap();
        assert!(matches!(self.next_ack("UNSUBACK").await, Packet::UnsubAck(_)));
    }

    /// Publishes and, for QoS 1/2, waits for the broker's acknowledgement.
    pub async fn publish(&mut self, topic: &str, qos: QoS, retain: bool, payload: impl Into<Vec<u8>>) {
        self.client.publish(topic, qos, retain, payload.into()).await.unwrap();
        if qos != QoS::AtMostOnce {
            self.next_ack("PUBACK/PUBCOMP").await;
        }
    }

    /// Waits for `n` PUBACKs (or PUBCOMPs) of publishes sent without waiting.
    pub async fn wait_acks(&mut self, n: usize) {
        for _ in 0..n {
            self.next_ack("PUBACK/PUBCOMP").await;
        }
    }

    /// Publishes at QoS 1 and waits for the PUBACK: false when the connection ends first.
    pub async fn try_publish(&mut self, topic: &str, payload: impl Into<Vec<u8>>) -> bool {
        if self.client.publish(topic, QoS::AtLeastOnce, false, payload.into()).await.is_err() {
            return false;
        }
        matches!(tokio::time::timeout(Duration::from_secs(30), self.acks.recv()).await, Ok(Some(_)))
    }

    /// Receives exactly `n` publishes (panics if they do not come within `timeout`).
    pub async fn recv(&mut self, n: usize, timeout: Duration) -> Vec<Publish> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut got = Vec::with_capacity(n);
        while got.len() < n {
            match tokio::time::timeout_at(deadline, self.publishes.recv()).await {
                Ok(Some(p)) => got.push(p),
                _ => panic!("received {} of {n} publishes in {timeout:?}", got.len()),
            }
        }
        got
    }

    /// Everything that arrives within `quiet`.
    pub async fn drain(&mut self, quiet: Duration) -> Vec<Publish> {
        let mut got = Vec::new();
        while let Ok(Some(p)) = tokio::time::timeout(quiet, self.publishes.recv()).await {
            got.push(p);
        }
        got
    }

    pub async fn disconnect(self) {
        let _ = self.client.disconnect().await;
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
    }
}

/// A tmpfs of a given size mounted on a temporary directory (the tests run as root), for a disk
/// that fills up; unmounted when dropped.
pub struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    pub fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"])
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "mount -t tmpfs (needs root): {}", String::from_utf8_lossy(&out.stderr));
        Tmpfs { dir }
    }

    pub fn path(&self) -> &std::path::Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

/// A MariaDB server of the test's own, in a temporary data directory on a free port (for TLS and
/// fault injection, never the shared one). Killed when dropped.
pub struct PrivateMariaDb {
    pub dir: tempfile::TempDir,
    pub port: u16,
    child: Child,
    /// `mariadb` client options that reach it (TLS when it requires TLS).
    client_args: Vec<String>,
    server_args: Vec<String>,
}

impl PrivateMariaDb {
    /// Starts it with `extra` server options (TLS files, say) and waits until it answers.
    pub async fn start(extra: &[String], client_args: &[String]) -> PrivateMariaDb {
        PrivateMariaDb::start_in(PrivateMariaDb::install(), extra, client_args).await
    }

    /// A temporary directory with a new data directory in `data/`.
    pub fn install() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        // A temporary directory of its own: servers bootstrapping at once in the shared /tmp failed
        // now and then ("Could not remove temporary table", then "Unknown table").
        std::fs::create_dir_all(dir.path().join("tmp")).unwrap();
        let install = Command::new("mariadb-install-db")
            .args(["--no-defaults", "--user=root", "--auth-root-authentication-method=normal", "--skip-test-db"])
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--tmpdir={}", dir.path().join("tmp").display()))
            .output()
            .expect("mariadb-install-db (Debian package mariadb-server)");
        assert!(
            install.status.success(),
            "mariadb-install-db: {}{}",
            String::from_utf8_lossy(&install.stdout),
            String::from_utf8_lossy(&install.stderr)
        );
        dir
    }

    /// Starts a server on the data directory of `dir` (from [`PrivateMariaDb::install`]).
    pub async fn start_in(dir: tempfile::TempDir, extra: &[String], client_args: &[String]) -> PrivateMariaDb {
        let data = dir.path().join("data");
        let port = free_port();
        let mut server_args = vec![
            "--no-defaults".to_owned(),
            "--user=root".into(),
            "--bind-address=127.0.0.1".into(),
            "--skip-log-bin".into(),
            format!("--datadir={}", data.display()),
            format!("--tmpdir={}", dir.path().join("tmp").display()),
            format!("--socket={}", dir.path().join("sock").display()),
            format!("--port={port}"),
        ];
        server_args.extend(extra.iter().cloned());
        let child = Self::spawn(dir.path(), &server_args);
        let mut db = PrivateMariaDb { dir, port, child, client_args: client_args.to_vec(), server_args };
        db.wait_ready().await;
        db
    }

    fn spawn(dir: &std::path::Path, args: &[String]) -> Child {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("mariadbd.log")).unwrap();
        Command::new("/usr/sbin/mariadbd").args(args).stdout(Stdio::null()).stderr(log).spawn().unwrap()
    }

    async fn wait_ready(&mut self) {
        let start = Instant::now();
        while !self.sql("select 1").status.success() {
            if start.elapsed() > Duration::from_secs(60) {
                let log = std::fs::read_to_string(self.dir.path().join("mariadbd.log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(30).collect();
                panic!(
                    "private MariaDB did not start; its log ends:\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Sends a signal (`STOP`, `CONT`) to the server.
    pub fn signal(&self, name: &str) {
        let ok = Command::new("kill").args([&format!("-{name}"), &self.child.id().to_string()]).status().unwrap();
        assert!(ok.success());
    }

    /// SIGKILL, and a new server on the same data directory and port once `down` has passed.
    pub async fn kill_and_restart(&mut self, down: Duration) {
        self.kill();
        tokio::time::sleep(down).await;
        self.restart().await;
    }

    /// SIGKILL: the server is gone until [`PrivateMariaDb::restart`].
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// A new server on the same data directory and port.
    pub async fn restart(&mut self) {
        self.child = Self::spawn(self.dir.path(), &self.server_args);
        self.wait_ready().await;
    }

    /// Runs SQL through the `mariadb` client as root.
    pub fn sql(&self, sql: &str) -> std::process::Output {
        Command::new("mariadb")
            .args(["--no-defaults", "-h127.0.0.1", "-uroot", "-N"])
            .arg(format!("-P{}", self.port))
            .args(&self.client_args)
            .args(["-e", sql])
            .output()
            .unwrap()
    }

    pub fn sql_ok(&self, sql: &str) -> String {
        let out = self.sql(sql);
        assert!(out.status.success(), "{sql}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Drop for PrivateMariaDb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A real MQTT 5 client (rumqttc's v5) whose received publishes are collected, properties
/// included.
pub struct Client5 {
    pub client: rumqttc::v5::AsyncClient,
    publishes: mpsc::UnboundedReceiver<rumqttc::v5::mqttbytes::v5::Publish>,
    acks: mpsc::UnboundedReceiver<rumqttc::v5::mqttbytes::v5::Packet>,
    task: tokio::task::JoinHandle<()>,
}

impl Client5 {
    /// `session_expiry`: seconds the broker keeps the session after a disconnect (`None`: 0).
    pub async fn connect(port: u16, id: &str, clean_start: bool, session_expiry: Option<u32>) -> Client5 {
        Client5::connect_with(port, id, clean_start, session_expiry, false).await
    }

    /// With `manual_acks`, received QoS 1/2 messages are acknowledged only by `client.ack`.
    pub async fn connect_with(
        port: u16,
        id: &str,
        clean_start: bool,
        session_expiry: Option<u32>,
        manual_acks: bool,
    ) -> Client5 {
        use rumqttc::v5::mqttbytes::v5::Packet as P;
        use rumqttc::v5::{Event as E, MqttOptions};
        let mut opts = MqttOptions::new(id, "127.0.0.1", port);
        opts.set_clean_start(clean_start).set_keep_alive(Duration::from_secs(30)).set_manual_acks(manual_acks);
        opts.set_connection_timeout(CONNACK_WAIT.as_secs()); // as for `Client`
        opts.set_session_expiry_interval(session_expiry);
        let (client, mut eventloop) = rumqttc::v5::AsyncClient::new(opts, 10_000);
        let (ptx, publishes) = mpsc::unbounded_channel();
        let (atx, mut acks) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(E::Incoming(P::Publish(p))) => {
                        let _ = ptx.send(p);
                    }
                    Ok(E::Incoming(
                        p @ (P::ConnAck(_) | P::SubAck(_) | P::UnsubAck(_) | P::PubAck(_) | P::PubComp(_)),
                    )) => {
                        let _ = atx.send(p);
                    }
                    Ok(E::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        });
        match tokio::time::timeout(CONNACK_WAIT, acks.recv()).await {
            Ok(Some(P::ConnAck(_))) => {}
            other => panic!("no CONNACK for {id}: {other:?}"),
        }
        Client5 { client, publishes, acks, task }
    }

    async fn next_ack(&mut self, what: &str) -> rumqttc::v5::mqttbytes::v5::Packet {
        tokio::time::timeout(Duration::from_secs(30), self.acks.recv())
            .await
            .unwrap_or_else(|_| panic!("no {what} in 30 s"))
            .unwrap_or_else(|| panic!("connection closed waiting for {what}"))
    }

    pub async fn subscribe(&mut self, filter: &str, qos: u8) {
        use rumqttc::v5::mqttbytes::v5::{Packet, SubscribeReasonCode};
        self.client.subscribe(filter, rumqttc::v5::mqttbytes::qos(qos).unwrap()).await.unwrap();
        match self.next_ack("SUBACK").await {
            Packet::SubAck(ack) => assert!(
                ack.return_codes.iter().all(|c| matches!(c, SubscribeReasonCode::Success(_))),
                "SUBACK refused {filter}: {ack:?}"
            ),
            other => panic!("expected a SUBACK, got {other:?}"),
        }
    }

    /// Publishes and, for QoS 1/2, waits for the broker's acknowledgement.
    pub async fn publish(&mut self, topic: &str, qos: u8, retain: bool, payload: impl Into<Vec<u8>>) {
        self.publish_with(topic, qos, retain, payload, Default::default()).await
    }

    /// [`Client5::publish`] with MQTT 5 properties.
    pub async fn publish_with(
        &mut self,
        topic: &str,
        qos: u8,
        retain: bool,
        payload: impl Into<Vec<u8>>,
        properties: rumqttc::v5::mqttbytes::v5::PublishProperties,
    ) {
        let q = rumqttc::v5::mqttbytes::qos(qos).unwrap();
        self.client.publish_with_properties(topic, q, retain, payload.into(), properties).await.unwrap();
        if qos > 0 {
            self.next_ack("PUBACK/PUBCOMP").await;
        }
    }

    /// Receives exactly `n` publishes (panics if they do not come within `timeout`).
    pub async fn recv(&mut self, n: usize, timeout: Duration) -> Vec<rumqttc::v5::mqttbytes::v5::Publish> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut got = Vec::with_capacity(n);
        while got.len() < n {
            match tokio::time::timeout_at(deadline, self.publishes.recv()).await {
                Ok(Some(p)) => got.push(p),
                _ => panic!("received {} of {n} publishes in {timeout:?}", got.len()),
            }
        }
        got
    }

    /// Everything that arrives within `quiet`.
    pub async fn drain(&mut self, quiet: Duration) -> Vec<rumqttc::v5::mqttbytes::v5::Publish> {
        let mut got = Vec::new();
        while let Ok(Some(p)) = tokio::time::timeout(quiet, self.publishes.recv()).await {
            got.push(p);
        }
        got
    }

    pub async fn disconnect(self) {
        let _ = self.client.disconnect().await;
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
    }
}

/// A `redis-server` of the test's own, in a temporary directory on a free port (never the shared
/// one). Killed when dropped.
pub struct PrivateRedis {
    pub dir: PathBuf,
    pub port: u16,
    child: Child,
    args: Vec<String>,
}

impl PrivateRedis {
    /// Starts it with `extra` options (`--appendonly yes`, `--replicaof ...`) and waits until it answers.
    pub fn start(dir: &std::path::Path, extra: &[&str]) -> PrivateRedis {
        Self::start_on(dir, free_port(), extra)
    }

    pub fn start_on(dir: &std::path::Path, port: u16, extra: &[&str]) -> PrivateRedis {
        std::fs::create_dir_all(dir).unwrap();
        let mut args: Vec<String> = vec![
            "--port".into(),
            port.to_string(),
            "--bind".into(),
            "127.0.0.1".into(),
            "--dir".into(),
            dir.display().to_string(),
            "--save".into(),
            "".into(),
            "--logfile".into(),
            dir.join("redis.log").display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let child = Self::spawn(&args);
        let redis = PrivateRedis { dir: dir.to_owned(), port, child, args };
        redis.wait_ready();
        redis
    }

    /// A sentinel (`redis-server --sentinel`) watching the master at `master_port` as `mymaster`,
    /// quick to fail over: down after 1 s, a quorum of 2.
    pub fn sentinel(dir: &std::path::Path, master_port: u16) -> PrivateRedis {
        std::fs::create_dir_all(dir).unwrap();
        let port = free_port();
        let conf = dir.join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {}\nlogfile {}\nsentinel monitor mymaster 127.0.0.1 {master_port} 2\n\
                 sentinel down-after-milliseconds mymaster 1000\nsentinel failover-timeout mymaster 10000\n",
                dir.display(),
                dir.join("sentinel.log").display()
            ),
        )
        .unwrap();
        let args = vec![conf.display().to_string(), "--sentinel".to_owned()];
        let redis = PrivateRedis { dir: dir.to_owned(), port, child: Self::spawn(&args), args };
        redis.wait_ready();
        redis
    }

    fn spawn(args: &[String]) -> Child {
        Command::new("redis-server")
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (Debian package redis-server)")
    }

    fn wait_ready(&self) {
        let start = Instant::now();
        while self.cli(&["PING"]).trim() != "PONG" {
            assert!(start.elapsed() < Duration::from_secs(30), "redis-server on {} did not start", self.port);
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL: the server is gone until [`PrivateRedis::restart`].
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends a signal (`STOP`, `CONT`) to the server.
    pub fn signal(&self, name: &str) {
        let ok = Command::new("kill").args([&format!("-{name}"), &self.child.id().to_string()]).status().unwrap();
        assert!(ok.success());
    }

    /// A new server with the same options, directory and port.
    pub fn restart(&mut self) {
        self.child = Self::spawn(&self.args);
        self.wait_ready();
    }

    /// `redis-cli` against it: what another system reading the keys sees (stdout, trimmed of nothing).
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli (Debian package redis-tools)");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn conn(&self) -> redis::Connection {
        redis::Client::open(format!("redis://127.0.0.1:{}/", self.port)).unwrap().get_connection().unwrap()
    }

    /// Keys matching `pattern` of one type.
    pub fn keys(&self, pattern: &str, kind: &str) -> Vec<String> {
        let mut c = self.conn();
        let mut keys: Vec<String> = Vec::new();
        let mut cursor = 0u64;
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(1000)
                .arg("TYPE")
                .arg(kind)
                .query(&mut c)
                .unwrap();
            keys.extend(batch);
            if next == 0 {
                keys.sort();
                return keys;
            }
            cursor = next;
        }
    }

    /// Every message hash as a row, in publish order (their ids sort so).
    pub fn messages(&self) -> Vec<MsgRow> {
        let mut c = self.conn();
        let mut rows: Vec<MsgRow> = self
            .keys("mqtt:msg:*", "hash")
            .iter()
            .map(|key| {
                let h: std::collections::HashMap<String, Vec<u8>> = c.hgetall(key).unwrap();
                let text =
                    |f: &str| String::from_utf8(h.get(f).unwrap_or_else(|| panic!("{key}: no {f}")).clone()).unwrap();
                MsgRow {
                    msgid: text("id"),
                    topic: text("topic"),
                    sender: text("from"),
                    qos: text("qos").parse().unwrap(),
                    retain: text("retain").parse().unwrap(),
                    payload: h["payload"].clone(),
                    arrived_ms: text("ts").parse().unwrap(),
                }
            })
            .collect();
        rows.sort_by(|a, b| a.msgid.cmp(&b.msgid));
        rows
    }

    /// The payloads of every message hash, as text.
    pub fn payloads(&self) -> Vec<String> {
        self.messages().into_iter().map(|r| String::from_utf8_lossy(&r.payload).into_owned()).collect()
    }

    pub fn subscriptions(&self) -> Vec<(String, String, i64)> {
        let mut c = self.conn();
        let mut subs = Vec::new();
        for key in self.keys("mqtt:sub:*", "hash") {
            let h: std::collections::HashMap<String, i64> = c.hgetall(&key).unwrap();
            subs.extend(h.into_iter().map(|(topic, qos)| (key["mqtt:sub:".len()..].to_owned(), topic, qos)));
        }
        subs.sort();
        subs
    }

    pub fn count(&self, table: &str) -> i64 {
        let mut c = self.conn();
        match table {
            "mqtt_msg" => self.keys("mqtt:msg:*", "hash").len() as i64,
            "mqtt_sub" => self.keys("mqtt:sub:*", "hash").iter().map(|k| c.hlen::<_, i64>(k).unwrap()).sum(),
            "mqtt_delivered" => {
                self.keys("mqtt:msg:#delivered:*", "set").iter().map(|k| c.scard::<_, i64>(k).unwrap()).sum()
            }
            other => panic!("no redis count for {other}"),
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
