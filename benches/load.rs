//! The load harness: the real broker binary, real MQTT clients (rumqttc), the real database, and
//! every comparison in one run so that the ratios come from one machine at one time.
//!
//! `cargo bench --bench load` runs the comparison on MariaDB (127.0.0.1:3306, root) and SQLite and
//! prints a table; `-- --sweep` adds the batch_size sweep behind the plot; `-- --quick` is a short
//! smoke run; `-- --backend mysql|sqlite|redis` picks one (Redis: a `redis-server` of the bench's
//! own, no snapshots, no AOF). Results also go to
//! `target/bench/results.csv` (read by `benches/plot.py`). The load can be changed with
//! `--publishers N --inflight N --messages N --payload BYTES --topics N --qos 1|2 --subscribers N`
//! (QoS 2 with `--inflight 16` or less, the broker's receive maximum)
//! (live QoS 1 subscribers to `bench/#`; with them the persisting scenarios run in `fanout` mode,
//! so that acknowledgements do not empty the table being counted).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};
use sqlx::{Connection, Executor};
use tokio::sync::Mutex;

const BIN: &str = env!("CARGO_BIN_EXE_mqtt-offline-messages");
const MYSQL: &str = "127.0.0.1:3306";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Db {
    MySql,
    Sqlite,
    Redis,
}

/// One MQTT load: `publishers` connections, each with up to `inflight` unacknowledged publishes,
/// `messages` in all, `payload`-byte payloads over `topics` topics per publisher (`bench/{k}/{i}`),
/// and `subscribers` live QoS 1 subscribers to `bench/#`.
#[derive(Clone, Copy)]
struct Load {
    publishers: usize,
    inflight: usize,
    messages: usize,
    /// Messages per second over all publishers; `None`: as fast as the broker takes them.
    rate: Option<f64>,
    payload: usize,
    topics: usize,
    qos: QoS,
    subscribers: usize,
}

impl Load {
    /// The load the command line asks for: `--publishers N --inflight N --messages N --payload
    /// BYTES --topics N --qos 1|2 --subscribers N`, each defaulting to `self`'s.
    fn with_args(self, args: &[String]) -> Load {
        let get = |flag: &str| {
            args.iter()
                .position(|a| a == flag)
                .and_then(|i| args.get(i + 1))
                .map(|v| v.parse::<usize>().unwrap_or_else(|_| panic!("{flag} takes a number, not {v:?}")))
        };
        Load {
            publishers: get("--publishers").unwrap_or(self.publishers).max(1),
            inflight: get("--inflight").unwrap_or(self.inflight).max(1),
            messages: get("--messages").unwrap_or(self.messages),
            payload: get("--payload").unwrap_or(self.payload),
            topics: get("--topics").unwrap_or(self.topics).max(1),
            qos: match get("--qos") {
                None => self.qos,
                Some(1) => QoS::AtLeastOnce,
                Some(2) => QoS::ExactlyOnce,
                Some(q) => panic!("--qos {q}: 1 or 2 (QoS 0 is never stored)"),
            },
            subscribers: get("--subscribers").unwrap_or(self.subscribers),
            rate: self.rate,
        }
        .checked()
    }

    /// rmqtt allows 16 unreleased QoS 2 messages per client (its receive maximum) and disconnects
    /// a client that sends more.
    fn checked(self) -> Load {
        assert!(self.qos != QoS::ExactlyOnce || self.inflight <= 16, "--qos 2 takes --inflight 16 or less");
        self
    }
}

/// What one scenario measured.
#[derive(Default, Clone)]
struct Outcome {
    scenario: String,
    db: &'static str,
    batch_size: usize,
    messages: usize,
    published_per_s: f64,
    persisted_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    cpu_us_per_msg: f64,
    /// CPU of the database server per message (MariaDB, Redis; 0 for SQLite, which runs inside the broker).
    db_cpu_us_per_msg: f64,
    /// Share of the machine's cores busy in broker + database + this load generator.
    cores_busy: f64,
    peak_rss_mib: f64,
    /// Replay: the broker's RSS before the subscriber came.
    rss_before_mib: f64,
    replay_per_s: f64,
}

/// A database of the bench's own, dropped at the end.
struct Store {
    db: Db,
    name: String,
    dir: PathBuf,
    redis: Option<RedisServer>,
}

/// A `redis-server` of the bench's own on a free port, killed when dropped.
struct RedisServer {
    child: Child,
    port: u16,
}

impl RedisServer {
    async fn start(dir: &Path) -> RedisServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server");
        let server = RedisServer { child, port };
        let start = Instant::now();
        while server.conn().is_err() {
            assert!(start.elapsed() < Duration::from_secs(30), "redis-server did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        server
    }

    fn conn(&self) -> redis::RedisResult<redis::Connection> {
        let mut c = redis::Client::open(format!("redis://127.0.0.1:{}/", self.port))?.get_connection()?;
        redis::cmd("PING").query::<String>(&mut c)?;
        Ok(c)
    }

    /// Stored messages: the ids in the topics' sorted sets (written with their hashes).
    fn count(&self) -> i64 {
        let mut c = self.conn().unwrap();
        let topics: Vec<String> = redis::cmd("SMEMBERS").arg("mqtt:msg:#topics").query(&mut c).unwrap();
        topics.iter().map(|t| redis::cmd("ZCARD").arg(format!("mqtt:msg:{t}")).query::<i64>(&mut c).unwrap()).sum()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Store {
    async fn new(db: Db, dir: &Path, n: usize) -> Store {
        let name = format!("ombench_{}_{n}", std::process::id());
        if db == Db::MySql {
            let mut c = sqlx::MySqlConnection::connect(&format!("mysql://root@{MYSQL}/mysql"))
                .await
                .expect("MariaDB on 127.0.0.1:3306");
            c.execute(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS `{name}`"))).await.unwrap();
            c.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE `{name}`"))).await.unwrap();
        }
        let dir = dir.join(&name);
        std::fs::create_dir_all(&dir).unwrap();
        let redis = if db == Db::Redis { Some(RedisServer::start(&dir).await) } else { None };
        Store { db, name, dir, redis }
    }

    fn block(&self, extra: &str) -> String {
        let extra = format!(
            "dead_letter_file = \"{}\"\n spool_dir = \"{}\"\n {extra}",
            self.dir.join("dead.jsonl").display(),
            self.dir.join("spool").display()
        );
        match self.db {
            Db::MySql => format!(
                "mysql {{\n enable = true\n server = \"{MYSQL}\"\n username = root\n database = {}\n init_default_schema = true\n topics = [\"#\"]\n {extra}\n}}\n",
                self.name
            ),
            Db::Sqlite => format!(
                "sqlite {{\n enable = true\n path = \"{}\"\n init_default_schema = true\n topics = [\"#\"]\n {extra}\n}}\n",
                self.dir.join("bench.db").display()
            ),
            Db::Redis => format!(
                "redis {{\n enable = true\n servers = \"127.0.0.1:{}\"\n topics = [\"#\"]\n {extra}\n}}\nsqlite {{ enable = false }}\n",
                self.redis.as_ref().expect("a redis store").port
            ),
        }
    }

    /// CPU seconds of the database server: MariaDB's, this store's Redis, none for SQLite.
    fn server_cpu_seconds(&self) -> f64 {
        match (self.db, &self.redis) {
            (Db::MySql, _) => mariadb_cpu_seconds(),
            (Db::Redis, Some(r)) => cpu_seconds(&r.child.id().to_string()),
            _ => 0.0,
        }
    }

    async fn count(&self) -> i64 {
        match self.db {
            Db::MySql => {
                let mut c =
                    sqlx::MySqlConnection::connect(&format!("mysql://root@{MYSQL}/{}", self.name)).await.unwrap();
                sqlx::query_scalar("select count(*) from mqtt_msg").fetch_one(&mut c).await.unwrap()
            }
            Db::Sqlite => {
                let url = format!("sqlite://{}", self.dir.join("bench.db").display());
                let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
                sqlx::query_scalar("select count(*) from mqtt_msg").fetch_one(&mut c).await.unwrap()
            }
            Db::Redis => self.redis.as_ref().expect("a redis store").count(),
        }
    }

    /// Polls until the table holds `n` rows; the time it took from `since`.
    async fn wait_rows(&self, n: usize, since: Instant) -> Duration {
        loop {
            if self.count().await >= n as i64 {
                return since.elapsed();
            }
            assert!(since.elapsed() < Duration::from_secs(600), "rows never reached {n}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn drop_db(&self) {
        if self.db == Db::MySql {
            let mut c = sqlx::MySqlConnection::connect(&format!("mysql://root@{MYSQL}/mysql")).await.unwrap();
            let _ = c.execute(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS `{}`", self.name))).await;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

struct Broker {
    child: Child,
    port: u16,
}

impl Broker {
    async fn start(store: &Store, extra: &str) -> Broker {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let config = store.dir.join("config.hocon");
        std::fs::write(&config, store.block(extra)).unwrap();
        let log = std::fs::File::create(store.dir.join("broker.log")).unwrap();
        let child = Command::new(BIN)
            .args(["run", "--config"])
            .arg(&config)
            .args(["--bind", &format!("127.0.0.1:{port}")])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(start.elapsed() < Duration::from_secs(30), "broker did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Broker { child, port }
    }

    fn cpu_seconds(&self) -> f64 {
        cpu_seconds(&self.child.id().to_string())
    }

    /// The broker's peak resident memory (VmHWM), MiB.
    fn peak_rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    }

    fn stop(mut self) {
        let _ = Command::new("kill").arg(self.child.id().to_string()).status();
        let _ = self.child.wait();
    }
}

/// CPU seconds (user + system) a process has used, from /proc (`pid` may be "self").
fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, r)| r.split_whitespace().collect()).unwrap_or_default();
    let ticks: f64 = fields.get(11).and_then(|u| u.parse().ok()).unwrap_or(0.0)
        + fields.get(12).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    ticks / 100.0
}

/// The MariaDB server's CPU seconds (0 when it cannot be found).
fn mariadb_cpu_seconds() -> f64 {
    let out = Command::new("pgrep").args(["-o", "mariadbd|mysqld"]).output().ok();
    let pid = out.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned()).unwrap_or_default();
    if pid.is_empty() {
        0.0
    } else {
        cpu_seconds(&pid)
    }
}

/// Runs `load` against the broker; returns (elapsed, PUBACK latencies in ms).
async fn publish(port: u16, load: Load) -> (Duration, Vec<f64>) {
    let per = load.messages / load.publishers;
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(load.messages)));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for k in 0..load.publishers {
        let latencies = latencies.clone();
        tasks.push(tokio::spawn(async move {
            let mut opts = MqttOptions::new(format!("bench-pub-{k}"), "127.0.0.1", port);
            opts.set_inflight(load.inflight as u16).set_keep_alive(Duration::from_secs(60));
            let (client, mut eventloop) = AsyncClient::new(opts, load.inflight.max(1));
            let producer = tokio::spawn(async move {
                let payload = vec![b'x'; load.payload];
                let started = tokio::time::Instant::now();
                for i in 0..per {
                    if let Some(rate) = load.rate {
                        let due = started + Duration::from_secs_f64(i as f64 * load.publishers as f64 / rate);
                        tokio::time::sleep_until(due).await;
                    }
                    let topic = format!("bench/{k}/{}", i % load.topics);
                    client.publish(topic, load.qos, false, payload.clone()).await.unwrap();
                }
                client
            });
            let mut sent: HashMap<u16, Instant> = HashMap::new();
            let mut mine = Vec::with_capacity(per);
            while mine.len() < per {
                match eventloop.poll().await {
                    Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                        sent.insert(pkid, Instant::now());
                    }
                    // QoS 1 ends with PUBACK, QoS 2 with PUBCOMP.
                    Ok(Event::Incoming(Packet::PubAck(rumqttc::PubAck { pkid, .. })))
                    | Ok(Event::Incoming(Packet::PubComp(rumqttc::PubComp { pkid, .. }))) => {
                        if let Some(t) = sent.remove(&pkid) {
                            mine.push(t.elapsed().as_secs_f64() * 1000.0);
                        }
                    }
                    Ok(_) => {}
                    Err(e) => panic!("publisher {k}: {e}"),
                }
            }
            let client = producer.await.unwrap();
            let _ = client.disconnect().await;
            latencies.lock().await.extend(mine);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = start.elapsed();
    let mut l = std::mem::take(&mut *latencies.lock().await);
    l.sort_by(f64::total_cmp);
    (elapsed, l)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// `n` QoS 1 subscribers to `bench/#` that take every message; dropped (aborted) with the result.
async fn subscribe_all(port: u16, n: usize) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    for k in 0..n {
        let mut opts = MqttOptions::new(format!("bench-live-sub-{k}"), "127.0.0.1", port);
        opts.set_keep_alive(Duration::from_secs(60));
        let (client, mut eventloop) = AsyncClient::new(opts, 100);
        client.subscribe("bench/#", QoS::AtLeastOnce).await.unwrap();
        loop {
            if let Ok(Event::Incoming(Packet::SubAck(_))) = eventloop.poll().await {
                break;
            }
        }
        tasks.push(tokio::spawn(async move {
            let _client = client;
            while eventloop.poll().await.is_ok() {}
        }));
    }
    tasks
}

/// A scenario through the broker: start it with `extra`, run the load, wait for the rows.
async fn through_broker(
    db: Db,
    dir: &Path,
    n: usize,
    scenario: &str,
    extra: &str,
    load: Load,
    persists: bool,
) -> Outcome {
    let store = Store::new(db, dir, n).await;
    // Live subscribers consume in queue mode: fanout keeps the rows the persisted count waits for.
    let extra =
        if load.subscribers > 0 && persists { format!("{extra}\ndelivery_mode = fanout") } else { extra.to_owned() };
    let broker = Broker::start(&store, &extra).await;
    let subscribers = subscribe_all(broker.port, load.subscribers).await;
    let (cpu_before, db_before, self_before) = (broker.cpu_seconds(), store.server_cpu_seconds(), cpu_seconds("self"));
    let start = Instant::now();
    let (elapsed, lat) = publish(broker.port, load).await;
    let persisted = if persists { store.wait_rows(load.messages, start).await } else { elapsed };
    let wall = start.elapsed().as_secs_f64();
    let cpu = broker.cpu_seconds() - cpu_before;
    let db_cpu = store.server_cpu_seconds() - db_before;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let cores_busy = (cpu + db_cpu + cpu_seconds("self") - self_before) / wall / cores;
    let outcome = Outcome {
        scenario: scenario.into(),
        db: name(db),
        batch_size: batch_size_of(&extra),
        messages: load.messages,
        published_per_s: load.messages as f64 / elapsed.as_secs_f64(),
        persisted_per_s: if persists { load.messages as f64 / persisted.as_secs_f64() } else { 0.0 },
        p50_ms: percentile(&lat, 0.5),
        p99_ms: percentile(&lat, 0.99),
        max_ms: lat.last().copied().unwrap_or(0.0),
        cpu_us_per_msg: cpu * 1e6 / load.messages as f64,
        db_cpu_us_per_msg: db_cpu * 1e6 / load.messages as f64,
        cores_busy,
        peak_rss_mib: broker.peak_rss_mib(),
        ..Outcome::default()
    };
    subscribers.iter().for_each(|t| t.abort());
    broker.stop();
    store.drop_db().await;
    outcome
}

fn batch_size_of(extra: &str) -> usize {
    extra
        .lines()
        .find_map(|l| l.trim().strip_prefix("batch_size = "))
        .and_then(|v| v.parse().ok())
        .unwrap_or(mqtt_offline_messages::config::DEFAULT_BATCH_SIZE)
}

fn name(db: Db) -> &'static str {
    match db {
        Db::MySql => "mariadb",
        Db::Sqlite => "sqlite",
        Db::Redis => "redis",
    }
}

/// Writes `rows` messages straight into the default schema with 1000-row INSERTs from one
/// connection (the schema made by the broker's own migrations); returns rows/s.
async fn fill_directly(store: &Store, load: Load) -> f64 {
    if let Some(redis) = &store.redis {
        return fill_redis_directly(redis, load);
    }
    let rows = load.messages;
    // The schema comes from the broker's migrations: start it once, stop it.
    let broker = Broker::start(store, "").await;
    broker.stop();
    const CHUNK: usize = 1000;
    let payload = vec![b'x'; load.payload];
    let mut sql = String::from(
        "insert into mqtt_msg(msgid, sender, topic, qos, retain, payload, arrived, expiry, properties) values ",
    );
    for i in 0..CHUNK {
        let arrived = if store.db == Db::MySql { "FROM_UNIXTIME(?/1000)" } else { "?" };
        let _ = write!(sql, "{}(?, ?, ?, 1, 0, ?, {arrived}, NULL, NULL)", if i > 0 { "," } else { "" });
    }
    let start = Instant::now();
    macro_rules! fill {
        ($c:expr) => {{
            let mut c = $c;
            for chunk in 0..rows / CHUNK {
                let mut tx = c.begin().await.unwrap();
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.clone()));
                for i in 0..CHUNK {
                    let n = chunk * CHUNK + i;
                    q = q
                        .bind(format!("direct-{n}"))
                        .bind("bench")
                        .bind(format!("bench/{}/{}", n % load.publishers, n % load.topics))
                        .bind(payload.clone())
                        .bind(1_795_000_000_000i64 + n as i64);
                }
                q.execute(&mut *tx).await.unwrap();
                tx.commit().await.unwrap();
            }
        }};
    }
    match store.db {
        Db::MySql => {
            fill!(sqlx::MySqlConnection::connect(&format!("mysql://root@{MYSQL}/{}", store.name)).await.unwrap())
        }
        Db::Sqlite => {
            fill!(sqlx::SqliteConnection::connect(&format!("sqlite://{}", store.dir.join("bench.db").display()))
                .await
                .unwrap())
        }
        Db::Redis => unreachable!("filled above"),
    }
    rows as f64 / start.elapsed().as_secs_f64()
}

/// The plugin's keys written straight into Redis from one connection, one `MULTI`/`EXEC` of 1000
/// messages at a time (what the plugin sends per batch); returns messages/s.
fn fill_redis_directly(redis: &RedisServer, load: Load) -> f64 {
    const CHUNK: usize = 1000;
    let ids = mqtt_offline_messages::message_id::MessageIdGenerator::new(1);
    let payload = vec![b'x'; load.payload];
    let mut c = redis.conn().unwrap();
    let start = Instant::now();
    for chunk in 0..load.messages / CHUNK {
        let mut pipe = redis::pipe();
        pipe.atomic();
        for i in 0..CHUNK {
            let n = chunk * CHUNK + i;
            let id = ids.next_id();
            let (msgid, ts) = (id.to_base62(), (id.micros() / 1000) as i64);
            let topic = format!("bench/{}/{}", n % load.publishers, n % load.topics);
            let key = format!("mqtt:msg:{msgid}");
            pipe.cmd("HSET").arg(&key).arg("id").arg(&msgid).arg("from").arg("bench").arg("qos").arg(1);
            pipe.arg("topic").arg(&topic).arg("payload").arg(&payload).arg("ts").arg(ts).arg("retain").arg(0);
            pipe.arg("expiry").arg(ts + 7_200_000).ignore();
            pipe.cmd("PEXPIREAT").arg(&key).arg(ts + 7_200_000).ignore();
            pipe.cmd("ZADD").arg(format!("mqtt:msg:{topic}")).arg(ts).arg(&msgid).ignore();
            pipe.cmd("SADD").arg("mqtt:msg:#topics").arg(&topic).ignore();
        }
        pipe.query::<()>(&mut c).unwrap();
    }
    load.messages as f64 / start.elapsed().as_secs_f64()
}

async fn ceiling(db: Db, dir: &Path, n: usize, load: Load) -> Outcome {
    let rows = load.messages;
    let store = Store::new(db, dir, n).await;
    let (db_before, self_before) = (store.server_cpu_seconds(), cpu_seconds("self"));
    let start = Instant::now();
    let rate = fill_directly(&store, load).await;
    let wall = start.elapsed().as_secs_f64();
    let db_cpu = store.server_cpu_seconds() - db_before;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    store.drop_db().await;
    Outcome {
        scenario: "ceiling".into(),
        db: name(db),
        batch_size: 1000,
        messages: rows,
        persisted_per_s: rate,
        db_cpu_us_per_msg: db_cpu * 1e6 / rows as f64,
        cores_busy: (db_cpu + cpu_seconds("self") - self_before) / wall / cores,
        ..Outcome::default()
    }
}

/// A stored backlog, then one QoS 1 subscriber: the time until it has every message.
async fn replay(db: Db, dir: &Path, n: usize, load: Load) -> Outcome {
    let rows = load.messages;
    let store = Store::new(db, dir, n).await;
    fill_directly(&store, load).await;
    let broker = Broker::start(&store, "").await;
    let rss_idle = broker.peak_rss_mib();
    let mut opts = MqttOptions::new("bench-sub", "127.0.0.1", broker.port);
    opts.set_keep_alive(Duration::from_secs(60));
    let (client, mut eventloop) = AsyncClient::new(opts, 100);
    let start = Instant::now();
    client.subscribe("bench/#", QoS::AtLeastOnce).await.unwrap();
    let mut got = 0;
    while got < rows {
        match tokio::time::timeout(Duration::from_secs(60), eventloop.poll()).await {
            Ok(Ok(Event::Incoming(Packet::Publish(_)))) => got += 1,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("subscriber: {e}"),
            Err(_) => panic!("replay stalled at {got} of {rows}"),
        }
    }
    let elapsed = start.elapsed();
    let outcome = Outcome {
        scenario: "replay".into(),
        db: name(db),
        batch_size: 0,
        messages: rows,
        replay_per_s: rows as f64 / elapsed.as_secs_f64(),
        peak_rss_mib: broker.peak_rss_mib(),
        rss_before_mib: rss_idle,
        ..Outcome::default()
    };
    broker.stop();
    store.drop_db().await;
    outcome
}

fn print_table(rows: &[Outcome]) {
    println!(
        "\n{:<15} {:<8} {:>5} {:>7} {:>10} {:>10} {:>7} {:>7} {:>6} {:>7} {:>7} {:>5} {:>8} {:>9}",
        "scenario",
        "db",
        "batch",
        "msgs",
        "publish/s",
        "persist/s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "us/msg",
        "db us",
        "busy",
        "peak MiB",
        "replay/s"
    );
    for o in rows {
        println!(
            "{:<15} {:<8} {:>5} {:>7} {:>10.0} {:>10.0} {:>7.2} {:>7.2} {:>6.1} {:>7.1} {:>7.1} {:>4.0}% {:>8.1} {:>9.0}",
            o.scenario,
            o.db,
            o.batch_size,
            o.messages,
            o.published_per_s,
            o.persisted_per_s,
            o.p50_ms,
            o.p99_ms,
            o.max_ms,
            o.cpu_us_per_msg,
            o.db_cpu_us_per_msg,
            o.cores_busy * 100.0,
            o.peak_rss_mib,
            o.replay_per_s
        );
    }
}

fn ratios(rows: &[Outcome], db: &str) {
    let get = |s: &str| rows.iter().find(|o| o.scenario == s && o.db == db);
    let (Some(ceiling), Some(only), Some(asy), Some(syn)) =
        (get("ceiling"), get("broker-only"), get("async"), get("sync-64"))
    else {
        return;
    };
    println!("\n{db}: goals as ratios measured in this run");
    println!(
        "  async persisted / ceiling          = {:.2} (goal >= 0.7)",
        asy.persisted_per_s / ceiling.persisted_per_s
    );
    println!("  async cpu per msg / broker-only    = {:.2} (goal <= 1.5)", asy.cpu_us_per_msg / only.cpu_us_per_msg);
    println!("  async PUBACK p99 / broker-only p99 = {:.2} (goal <= 2)", asy.p99_ms / only.p99_ms);
    if let (Some(o), Some(a)) = (get("broker-only@40k"), get("async@40k")) {
        println!(
            "  at 40k msg/s: PUBACK p99 ratio     = {:.2} (async {:.2} ms, broker-only {:.2} ms); cpu ratio {:.2}",
            a.p99_ms / o.p99_ms,
            a.p99_ms,
            o.p99_ms,
            a.cpu_us_per_msg / o.cpu_us_per_msg
        );
    }
    println!(
        "  sync-64 persisted / ceiling        = {:.2} (goal >= 0.5)",
        syn.persisted_per_s / ceiling.persisted_per_s
    );
    println!("  sync-64 PUBACK p99                 = {:.2} ms (goal <= batch_time + 5 ms = 10 ms)", syn.p99_ms);
    println!(
        "  async peak RSS - broker-only       = {:.1} MiB (goal <= 50 MiB + the configured buffer)",
        asy.peak_rss_mib - only.peak_rss_mib
    );
    if let Some(r) = get("replay") {
        println!(
            "  replay                             = {:.0} msg/s (goal >= 50000), RSS {:.1} -> {:.1} MiB",
            r.replay_per_s, r.rss_before_mib, r.peak_rss_mib
        );
    }
}

fn write_csv(rows: &[Outcome]) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("results.csv");
    let mut text = String::from(
        "scenario,db,batch_size,messages,published_per_s,persisted_per_s,p50_ms,p99_ms,max_ms,cpu_us_per_msg,\
         db_cpu_us_per_msg,cores_busy,peak_rss_mib,rss_before_mib,replay_per_s\n",
    );
    for o in rows {
        let _ = writeln!(
            text,
            "{},{},{},{},{:.1},{:.1},{:.3},{:.3},{:.3},{:.2},{:.2},{:.2},{:.1},{:.1},{:.1}",
            o.scenario,
            o.db,
            o.batch_size,
            o.messages,
            o.published_per_s,
            o.persisted_per_s,
            o.p50_ms,
            o.p99_ms,
            o.max_ms,
            o.cpu_us_per_msg,
            o.db_cpu_us_per_msg,
            o.cores_busy,
            o.peak_rss_mib,
            o.rss_before_mib,
            o.replay_per_s
        );
    }
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let sweep = args.iter().any(|a| a == "--sweep");
    let only = args.iter().position(|a| a == "--backend").and_then(|i| args.get(i + 1)).cloned();
    let dbs: Vec<Db> = [Db::MySql, Db::Sqlite, Db::Redis]
        .into_iter()
        .filter(|d| only.as_deref().is_none_or(|o| o == name(*d) || (o == "mysql" && *d == Db::MySql)))
        .collect();
    let scale = if quick { 20 } else { 1 };
    let defaults = Load {
        publishers: 8,
        inflight: 64,
        messages: 200_000 / scale,
        rate: None,
        payload: 100,
        topics: 10,
        qos: QoS::AtLeastOnce,
        subscribers: 0,
    };
    let throughput = defaults.with_args(&args);
    // The same publishers at a rate both the broker and the database take: latency without backlog.
    let paced = Load { messages: 100_000 / scale, rate: Some(40_000.0), ..throughput };
    let sync64 = Load { publishers: 64, inflight: 1, messages: 64_000 / scale, ..throughput };
    let reference = Load { messages: 20_000 / scale, ..throughput };
    let backlog = 100_000 / scale;
    let dir = tempfile::tempdir().unwrap();
    let mut rows = Vec::new();
    let mut n = 0;
    let mut next = || {
        n += 1;
        n
    };
    for db in dbs {
        eprintln!("{}: ceiling", name(db));
        rows.push(ceiling(db, dir.path(), next(), throughput).await);
        eprintln!("{}: broker-only", name(db));
        rows.push(through_broker(db, dir.path(), next(), "broker-only", "topics = []", throughput, false).await);
        eprintln!("{}: reference-like", name(db));
        rows.push(
            through_broker(
                db,
                dir.path(),
                next(),
                "reference-like",
                "batch_size = 1\nwrite_mode = sync",
                reference,
                true,
            )
            .await,
        );
        eprintln!("{}: async", name(db));
        rows.push(through_broker(db, dir.path(), next(), "async", "", throughput, true).await);
        eprintln!("{}: broker-only and async at 40,000 msg/s", name(db));
        rows.push(through_broker(db, dir.path(), next(), "broker-only@40k", "topics = []", paced, false).await);
        rows.push(through_broker(db, dir.path(), next(), "async@40k", "", paced, true).await);
        eprintln!("{}: sync-64", name(db));
        rows.push(through_broker(db, dir.path(), next(), "sync-64", "write_mode = sync", sync64, true).await);
        eprintln!("{}: replay", name(db));
        rows.push(replay(db, dir.path(), next(), Load { messages: backlog, ..throughput }).await);
        if sweep {
            for batch in [1, 10, 100, 1000, 10000] {
                for (mode, load) in [("async", throughput), ("sync", sync64)] {
                    eprintln!("{}: sweep {mode} batch_size = {batch}", name(db));
                    let load = if batch == 1 { Load { messages: load.messages / 10, ..load } } else { load };
                    let extra = format!("write_mode = {mode}\nbatch_size = {batch}");
                    rows.push(
                        through_broker(db, dir.path(), next(), &format!("sweep-{mode}"), &extra, load, true).await,
                    );
                }
            }
        }
    }
    print_table(&rows);
    for db in ["mariadb", "sqlite", "redis"] {
        ratios(&rows, db);
    }
    println!("\nresults: {}", write_csv(&rows).display());
}
