//! The plugin loaded into Debian's real Mosquitto 2.0 (one `mosquitto -c` per test, on a free
//! port), with real clients (rumqttc, mosquitto_pub/mosquitto_sub), on MariaDB, SQLite and Redis.
//! The mosquitto.conf is the README's.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{payload, Backend, Client, PrivateMariaDb, TestEnv, LONG};
use rumqttc::QoS;

/// The library `cargo test` built beside this test binary (target/<profile>/deps/).
fn plugin_path() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe.parent().unwrap().join("libmqtt_offline_messages_mosquitto.so");
    assert!(path.exists(), "{} is missing: cargo test builds it", path.display());
    path
}

/// The README's mosquitto.conf lines (plus a listener, the log, and `user`: Mosquitto started as
/// root switches to user `mosquitto` unless told otherwise, and the test's files are root's).
fn mosquitto_conf(port: u16, dir: &Path, config: &Path) -> String {
    let acl = dir.join("mosquitto.acl");
    std::fs::write(&acl, "topic readwrite #\n").unwrap();
    let user = String::from_utf8(Command::new("id").arg("-un").output().unwrap().stdout).unwrap();
    format!(
        "listener {port} 127.0.0.1\nallow_anonymous true\nuser {}\nlog_dest stderr\nlog_type error\nlog_type warning\nlog_type notice\nlog_type information\n\
         max_queued_messages 0\nacl_file {}\nplugin {}\nplugin_opt_config {}\n",
        user.trim(),
        acl.display(),
        plugin_path().display(),
        config.display()
    )
}

/// Turns the README's mosquitto.conf into a test's.
type ConfEdit<'a> = dyn Fn(String) -> String + 'a;

/// A Mosquitto of the test's own; SIGTERM when dropped.
struct Mosquitto {
    child: Child,
    log: PathBuf,
}

const RUNNING: &str = "running";

impl Mosquitto {
    /// Starts Mosquitto with the plugin and `hocon` as our config file.
    async fn start(env: &TestEnv, hocon: &str) -> Mosquitto {
        Mosquitto::start_conf(env, hocon, &|conf| conf)
            .await
            .unwrap_or_else(|log| panic!("Mosquitto did not start:\n{log}"))
    }

    /// Starts it with the mosquitto.conf `edit` makes of the README's; `Err(log)` when it exits at
    /// start-up.
    async fn start_conf(env: &TestEnv, hocon: &str, edit: &ConfEdit<'_>) -> Result<Mosquitto, String> {
        let config = env.write_config(hocon);
        let conf = env.dir.path().join("mosquitto.conf");
        std::fs::write(&conf, edit(mosquitto_conf(env.port, env.dir.path(), &config))).unwrap();
        let log = env.dir.path().join("mosquitto.log");
        let _ = std::fs::remove_file(&log);
        let child = Command::new("/usr/sbin/mosquitto")
            .arg("-c")
            .arg(&conf)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("/usr/sbin/mosquitto (Debian package mosquitto)");
        let mut m = Mosquitto { child, log };
        let start = Instant::now();
        loop {
            if m.log_text().contains(&format!("{RUNNING}\n")) {
                return Ok(m);
            }
            if let Ok(Some(_)) = m.child.try_wait() {
                return Err(m.log_text());
            }
            assert!(start.elapsed() < LONG, "Mosquitto not running in {LONG:?}:\n{}", m.log_text());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn log_text(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// SIGTERM, and the exit code once it has exited.
    fn stop(&mut self) -> Option<i32> {
        common::terminate(&mut self.child, LONG)
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.stop();
        }
        if std::thread::panicking() {
            eprintln!("---- mosquitto log ----\n{}", self.log_text());
        }
    }
}

/// Publishes `messages` at QoS 1 through mosquitto_pub, one per line, on one connection.
fn publish_lines(port: u16, topic: &str, messages: &[String]) {
    let mut child = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1", "-i", "lines-pub", "-t", topic, "-l"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        for m in messages {
            writeln!(stdin, "{m}").unwrap();
        }
    }
    assert!(child.wait().unwrap().success());
}

/// A topic with quotes, a backslash, SQL and non-ASCII in it.
const HOSTILE: &str = "it's/\"quoted\"/back\\slash/'); drop table mqtt_msg; --/ü";

// QoS 1 and 2 publishes on configured topics are stored byte for byte (binary payload, hostile
// topic, publisher, QoS, retain); QoS 0 and topics outside `topics` are not.
async fn publishes_are_stored_verbatim(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let topics = format!("topics = [\"site/#\", {:?}]", HOSTILE);
    let _m = Mosquitto::start(&env, &env.backend_block(&topics)).await;
    let mut c = Client::connect(env.port, "verbatim-pub", true).await;
    c.publish(HOSTILE, QoS::AtLeastOnce, false, payload(1)).await;
    c.publish("site/a", QoS::ExactlyOnce, true, payload(2)).await;
    c.publish("site/b", QoS::AtMostOnce, false, payload(3)).await;
    c.publish("elsewhere/a", QoS::AtLeastOnce, false, payload(4)).await;
    c.publish("site/c", QoS::AtLeastOnce, false, Vec::new()).await;
    env.wait_count("mqtt_msg", 3, LONG).await;
    let rows = env.messages().await;
    let got: Vec<_> =
        rows.iter().map(|r| (r.topic.as_str(), r.sender.as_str(), r.qos, r.retain, r.payload.clone())).collect();
    assert_eq!(
        got,
        vec![
            (HOSTILE, "verbatim-pub", 1, 0, payload(1)),
            ("site/a", "verbatim-pub", 2, 1, payload(2)),
            ("site/c", "verbatim-pub", 1, 0, Vec::new()),
        ]
    );
}
on_every_backend!(publishes_are_stored_verbatim);

// A new subscriber gets the stored messages its filter matches, wildcards included, in publish
// order; in `queue` mode each row handed to its session is consumed, the others stay.
async fn a_new_subscriber_gets_the_backlog_in_order_and_consumes_it(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let _m = Mosquitto::start(&env, &env.backend_block("")).await;
    let mut publisher = Client::connect(env.port, "order-pub", true).await;
    let mut expected = Vec::new();
    for i in 0..60 {
        let topic = format!("site/{}/{}", i % 3, if i % 2 == 0 { "temp" } else { "hum" });
        publisher.publish(&topic, QoS::AtLeastOnce, false, payload(i)).await;
        if topic.ends_with("/temp") {
            expected.push((topic, payload(i)));
        }
    }
    env.wait_count("mqtt_msg", 60, LONG).await;
    let mut sub = Client::connect(env.port, "order-sub", true).await;
    sub.subscribe("site/+/temp", QoS::AtLeastOnce).await;
    let got: Vec<_> =
        sub.recv(expected.len(), LONG).await.into_iter().map(|p| (p.topic.clone(), p.payload.to_vec())).collect();
    assert_eq!(got, expected);
    // The 30 `hum` rows stay for whoever subscribes to them.
    env.wait_count("mqtt_msg", 30, LONG).await;
    assert!(sub.drain(Duration::from_millis(500)).await.is_empty(), "nothing beyond the backlog");
    let out = common::mosquitto("mosquitto_sub", env.port, "order-sub-2", "site/#", &["-C", "30", "-W", "30", "-N"]);
    assert!(out.status.success(), "mosquitto_sub: {}", String::from_utf8_lossy(&out.stderr));
    let hum: Vec<u8> = (0..60).filter(|i| i % 2 == 1).flat_map(payload).collect();
    assert_eq!(out.stdout, hum, "mosquitto_sub got the rest, in order");
    env.wait_count("mqtt_msg", 0, LONG).await;
}
on_every_backend!(a_new_subscriber_gets_the_backlog_in_order_and_consumes_it);

// 20,000 stored messages reach one subscriber whole and in order with the README's
// mosquitto.conf (Mosquitto's default max_inflight_messages 20, max_queued_messages 0).
async fn a_20000_message_backlog_arrives_whole(backend: Backend) {
    const N: usize = 20_000;
    let env = TestEnv::new(backend).await;
    let _m = Mosquitto::start(&env, &env.backend_block("")).await;
    let sent: Vec<String> = (0..N).map(|i| format!("m{i}")).collect();
    publish_lines(env.port, "backlog/t", &sent);
    env.wait_count("mqtt_msg", N as i64, LONG).await;
    let mut sub = Client::connect(env.port, "backlog-sub", true).await;
    sub.subscribe("backlog/#", QoS::AtLeastOnce).await;
    let got: Vec<String> =
        sub.recv(N, LONG * 3).await.into_iter().map(|p| String::from_utf8(p.payload.to_vec()).unwrap()).collect();
    assert!(
        got == sent,
        "out of order or duplicated: first difference at {:?}",
        got.iter().zip(&sent).position(|(a, b)| a != b)
    );
    env.wait_count("mqtt_msg", 0, LONG).await;
}
on_every_backend!(a_20000_message_backlog_arrives_whole);

// Messages published while a replay runs reach the new subscriber after the stored ones, in
// publish order, each once: the plugin refuses them to it while the replay runs and the replay
// delivers them from the database.
async fn live_messages_during_a_replay_follow_it_in_order_once(backend: Backend) {
    const BACKLOG: usize = 3000;
    const LIVE: usize = 1500;
    let env = TestEnv::new(backend).await;
    let _m = Mosquitto::start(&env, &env.backend_block("")).await;
    let backlog: Vec<String> = (0..BACKLOG).map(|i| format!("b{i}")).collect();
    publish_lines(env.port, "seam/t", &backlog);
    env.wait_count("mqtt_msg", BACKLOG as i64, LONG).await;
    let (started_tx, started) = tokio::sync::oneshot::channel();
    let mut publisher = Client::connect(env.port, "seam-pub", true).await;
    let live = tokio::spawn(async move {
        let mut started_tx = Some(started_tx);
        for i in 0..LIVE {
            publisher.publish("seam/t", QoS::AtLeastOnce, false, format!("l{i}")).await;
            if i == 50 {
                let _ = started_tx.take().unwrap().send(());
            }
        }
    });
    started.await.unwrap();
    let mut sub = Client::connect(env.port, "seam-sub", true).await;
    sub.subscribe("seam/#", QoS::AtLeastOnce).await;
    live.await.unwrap();
    let got: Vec<String> = sub
        .recv(BACKLOG + 51, LONG * 2)
        .await
        .into_iter()
        .chain(sub.drain(Duration::from_secs(2)).await)
        .map(|p| String::from_utf8(p.payload.to_vec()).unwrap())
        .collect();
    // Everything published from when the subscribe was made on, each once, in order.
    let all: Vec<String> = backlog.into_iter().chain((0..LIVE).map(|i| format!("l{i}"))).collect();
    let first = all.iter().position(|m| *m == got[0]).expect("the first message is one of ours");
    assert_eq!(first, 0, "the backlog comes first");
    assert!(
        got.len() == all.len() && got == all,
        "got {} of {}; first difference at {:?}",
        got.len(),
        all.len(),
        got.iter().zip(&all).position(|(a, b)| a != b)
    );
}
on_every_backend!(live_messages_during_a_replay_follow_it_in_order_once);

// `fanout`: rows stay, each subscriber gets every stored message once, and its deliveries are
// recorded, so subscribing again replays nothing.
async fn fanout_records_deliveries_and_keeps_rows(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let _m = Mosquitto::start(&env, &env.backend_block("delivery_mode = fanout")).await;
    let mut publisher = Client::connect(env.port, "fan-pub", true).await;
    for i in 0..10 {
        publisher.publish("fan/t", QoS::AtLeastOnce, false, payload(i)).await;
    }
    env.wait_count("mqtt_msg", 10, LONG).await;
    for id in ["fan-a", "fan-b"] {
        let mut sub = Client::connect(env.port, id, false).await;
        sub.subscribe("fan/#", QoS::AtLeastOnce).await;
        assert_eq!(sub.recv(10, LONG).await.len(), 10);
        sub.disconnect().await;
    }
    env.wait_count("mqtt_delivered", 20, LONG).await;
    assert_eq!(env.count("mqtt_msg").await, 10, "fanout keeps the rows");
    let mut again = Client::connect(env.port, "fan-a", true).await;
    again.subscribe("fan/#", QoS::AtLeastOnce).await;
    assert!(again.drain(Duration::from_secs(2)).await.is_empty(), "fan-a had them all");
}
on_every_backend!(fanout_records_deliveries_and_keeps_rows);

// mqtt_sub follows SUBSCRIBE and UNSUBSCRIBE (seen as ACL checks), and a clean session's
// subscriptions go when it disconnects; a persistent session's stay.
async fn stored_subscriptions_follow_the_sessions(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let _m = Mosquitto::start(&env, &env.backend_block("")).await;
    let mut clean = Client::connect(env.port, "subs-clean", true).await;
    clean.subscribe("a/#", QoS::AtLeastOnce).await;
    clean.subscribe("b/+", QoS::ExactlyOnce).await;
    let mut kept = Client::connect(env.port, "subs-kept", false).await;
    kept.subscribe("c/#", QoS::AtLeastOnce).await;
    let all = || {
        vec![
            ("subs-clean".to_owned(), "a/#".to_owned(), 1),
            ("subs-clean".to_owned(), "b/+".to_owned(), 2),
            ("subs-kept".to_owned(), "c/#".to_owned(), 1),
        ]
    };
    wait_for(|| async { env.subscriptions().await == all() }, "all three stored").await;
    clean.unsubscribe("a/#").await;
    wait_for(|| async { env.subscriptions().await.len() == 2 }, "a/# deleted").await;
    clean.disconnect().await;
    kept.disconnect().await;
    wait_for(|| async { env.subscriptions().await == vec![all()[2].clone()] }, "only the persistent one left").await;
}
on_every_backend!(stored_subscriptions_follow_the_sessions);

async fn wait_for<F: std::future::Future<Output = bool>>(mut check: impl FnMut() -> F, what: &str) {
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < LONG, "not within {LONG:?}: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// SIGTERM: Mosquitto calls the plugin's cleanup, which writes what the writer still holds.
async fn sigterm_flushes_what_the_plugin_holds(backend: Backend) {
    let env = TestEnv::new(backend).await;
    // The writer flushes only on size or after an hour: the rows are in memory when SIGTERM comes.
    let mut m = Mosquitto::start(&env, &env.backend_block("batch_size = 100000\n batch_time = 1h")).await;
    let messages: Vec<String> = (0..500).map(|i| format!("held-{i}")).collect();
    publish_lines(env.port, "held/t", &messages);
    assert_eq!(env.count("mqtt_msg").await, 0, "still in the writer");
    assert_eq!(m.stop(), Some(0), "{}", m.log_text());
    let stored: Vec<String> = env.messages().await.into_iter().map(|r| String::from_utf8(r.payload).unwrap()).collect();
    assert_eq!(stored, messages);
    assert!(m.log_text().contains("writer flushed"), "{}", m.log_text());
}
on_every_backend!(sigterm_flushes_what_the_plugin_holds);

// Our lines reach Mosquitto's log, filtered by `log.level`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_level_filters_our_lines_in_mosquittos_log() {
    let env = TestEnv::new(Backend::Sqlite).await;
    let mut m = Mosquitto::start(&env, &env.backend_block("")).await;
    assert_eq!(m.stop(), Some(0));
    assert!(m.log_text().contains("offline-messages: INFO offline-messages plugin loaded"), "{}", m.log_text());
    let mut m = Mosquitto::start(&env, &format!("log {{ level = warn }}\n{}", env.backend_block(""))).await;
    assert_eq!(m.stop(), Some(0));
    assert!(!m.log_text().contains("offline-messages: INFO"), "{}", m.log_text());
}

/// The README's Mosquitto section: its mosquitto.conf lines and its config.hocon.
fn readme_blocks() -> (String, String) {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let section = readme.split_once("\n## Mosquitto 2.0 plugin\n").expect("the README's Mosquitto section").1;
    // The first block fenced `fence` after the text `after`.
    let block = |after: &str, fence: &str| {
        let from = section.find(after).unwrap_or_else(|| panic!("no {after:?}"));
        let rest = &section[from..];
        let start = rest.find(&format!("\n{fence}\n")).unwrap_or_else(|| panic!("no {fence} block")) + fence.len() + 2;
        rest[start..].split_once("\n```").unwrap().0.to_owned()
    };
    (block("In `mosquitto.conf`", "```"), block("`config.hocon` is ours", "```hocon"))
}

// The README's Mosquitto section works as written (its paths moved to the test's directory, its
// port to a free one): a message is stored and replayed to a subscriber.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readmes_mosquitto_section_works_as_written() {
    use std::os::unix::fs::PermissionsExt;
    let env = TestEnv::new(Backend::Sqlite).await;
    // Mosquitto started as root runs as user mosquitto: it must reach and write the directory.
    let dir = env.dir.path().join("data");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(env.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let (conf, hocon) = readme_blocks();
    let hocon = hocon.replace("/var/lib/mosquitto", &dir.display().to_string());
    let acl = dir.join("acl");
    std::fs::write(&acl, "topic readwrite #\n").unwrap();
    let conf = conf
        .replace("listener 1883", &format!("listener {} 127.0.0.1", env.port))
        .replace("/etc/mosquitto/acl", &acl.display().to_string())
        .replace("/path/to/libmqtt_offline_messages_mosquitto.so", &plugin_path().display().to_string());
    let readme_conf = |mine: String| {
        let config = mine.lines().find_map(|l| l.strip_prefix("plugin_opt_config ")).unwrap().to_owned();
        conf.replace("/path/to/config.hocon", &config)
    };
    let _m = Mosquitto::start_conf(&env, &hocon, &readme_conf).await.unwrap_or_else(|log| panic!("{log}"));
    let out = common::mosquitto("mosquitto_pub", env.port, "readme-pub", "greetings", &["-m", "hello"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_for(|| async { dir.join("offline-messages.db").exists() && readme_db_count(&dir).await == 1 }, "stored").await;
    let out = common::mosquitto("mosquitto_sub", env.port, "readme-sub", "greetings", &["-C", "1", "-W", "30"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\n");
}

/// Rows in the README config's SQLite file.
async fn readme_db_count(dir: &Path) -> i64 {
    use sqlx::Connection;
    let url = format!("sqlite://{}", dir.join("offline-messages.db").display());
    let Ok(mut c) = sqlx::SqliteConnection::connect(&url).await else { return -1 };
    sqlx::query_scalar("select count(*) from mqtt_msg").fetch_one(&mut c).await.unwrap_or(-1)
}

// A config the plugin cannot run with stops Mosquitto at start-up, with our one line in its log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_config_stops_mosquitto_at_start_up() {
    let env = TestEnv::new(Backend::Sqlite).await;
    let block = env.backend_block("");
    let readme = |conf: String| conf;
    let queue_limit = |conf: String| conf + "max_queued_messages 1000\n";
    let unknown_option = |conf: String| conf + "plugin_opt_colour blue\n";
    let per_listener = |conf: String| format!("per_listener_settings true\n{conf}");
    let no_config =
        |conf: String| conf.lines().filter(|l| !l.starts_with("plugin_opt_config")).map(|l| format!("{l}\n")).collect();
    let no_acl = |conf: String| conf.lines().filter(|l| !l.starts_with("acl_file")).map(|l| format!("{l}\n")).collect();
    // A copy of this plugin under another name stands for another plugin listed first.
    let other = env.dir.path().join("other_plugin.so");
    std::fs::copy(plugin_path(), &other).unwrap();
    let other_first = |conf: String| format!("plugin {}\n{conf}", other.display());
    let cases: Vec<(String, &ConfEdit<'_>, &str)> = vec![
        (
            format!("broker {{ bind = \"127.0.0.1:1\" }}\n{block}"),
            &readme,
            "the `broker` block configures our own broker; under Mosquitto, Mosquitto's own settings apply",
        ),
        (format!("auth {{ users = [] }}\n{block}"), &readme, "the `auth` block configures our own broker"),
        (
            env.backend_block("write_mode = sync"),
            &readme,
            "sqlite.write_mode = sync: under Mosquitto the broker thread cannot wait for a commit",
        ),
        (env.backend_block("batch_sise = 10"), &readme, "sqlite.batch_sise: unknown key"),
        (block.clone(), &queue_limit, "max_queued_messages is 1000: Mosquitto drops what goes beyond a client's queue"),
        (block.clone(), &unknown_option, "plugin_opt_colour is not an option of this plugin"),
        (
            block.clone(),
            &no_acl,
            "no acl_file and no plugin after this one: Mosquitto 2.0 denies every publish and subscribe",
        ),
        (block.clone(), &no_config, "plugin_opt_config is not set"),
        (block.clone(), &per_listener, "per_listener_settings true: Mosquitto 2.0 then sends plugins no tick"),
        (block.clone(), &other_first, "other_plugin.so comes before this one"),
    ];
    for (hocon, edit, expected) in cases {
        let log = match Mosquitto::start_conf(&env, &hocon, edit).await {
            Ok(m) => panic!("Mosquitto started with a bad config ({expected}):\n{}", m.log_text()),
            Err(log) => log,
        };
        let line =
            log.lines().find(|l| l.contains("offline-messages: ")).unwrap_or_else(|| panic!("no line of ours:\n{log}"));
        assert!(line.contains(expected), "expected {expected:?} in:\n{log}");
        assert!(log.contains("Plugin returned"), "Mosquitto stopped on it:\n{log}");
    }
}

// The database freezes, then dies mid-stream: Mosquitto keeps taking publishes, the spool holds them, /health
// says so, and once the database is back every acknowledged message is stored once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_frozen_and_killed_mid_stream_loses_nothing() {
    const EACH: usize = 1500;
    let mut db = PrivateMariaDb::start(&[], &[]).await;
    db.sql_ok("CREATE DATABASE t");
    let env = TestEnv::new(Backend::Sqlite).await; // for its directory and port
    let metrics = common::free_port();
    let hocon = format!(
        "metrics {{ bind = \"127.0.0.1:{metrics}\" }}\nmysql {{\n enable = true\n server = \"127.0.0.1:{}\"\n username = root\n database = t\n init_default_schema = true\n topics = [\"#\"]\n batch_time = 5ms\n query_timeout = 2s\n dead_letter_file = \"{}\"\n spool_dir = \"{}\"\n}}\n",
        db.port,
        env.dead_letter_path().display(),
        env.dir.path().join("spool").display()
    );
    let m = Mosquitto::start(&env, &hocon).await;
    let health = || common::curl(&format!("http://127.0.0.1:{metrics}/health"));
    assert_eq!(health().0, 200, "{:?}", health());
    let mut c = Client::connect(env.port, "fault-pub", true).await;
    let sent: Vec<String> = (0..EACH * 3).map(|i| format!("f{i}")).collect();
    for s in &sent[..EACH] {
        assert!(c.try_publish("fault/t", s.clone()).await);
    }
    // Frozen: statements hang until query_timeout, then the writer spools.
    db.signal("STOP");
    for s in &sent[EACH..EACH * 2] {
        assert!(c.try_publish("fault/t", s.clone()).await, "Mosquitto stopped taking publishes");
    }
    db.signal("CONT");
    db.kill();
    for s in &sent[EACH * 2..] {
        assert!(c.try_publish("fault/t", s.clone()).await, "Mosquitto stopped taking publishes");
    }
    wait_for(|| async { health().0 == 503 }, "/health reports the outage").await;
    db.restart().await;
    let start = Instant::now();
    loop {
        let stored = db.sql_ok("select payload from t.mqtt_msg order by id");
        let stored: Vec<&str> = stored.lines().collect();
        if stored.len() >= sent.len() {
            assert_eq!(stored, sent.iter().map(String::as_str).collect::<Vec<_>>(), "each once, in order");
            break;
        }
        assert!(start.elapsed() < LONG * 2, "stuck at {} of {} rows:\n{}", stored.len(), sent.len(), m.log_text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(health().0, 200, "{:?}", health());
    let (_, text) = common::curl(&format!("http://127.0.0.1:{metrics}/metrics"));
    assert_eq!(common::metric(&text, "offline_messages_persisted_total"), sent.len() as f64, "{text}");
}

// The same on Redis (AOF with `appendfsync always`, so that a killed Redis keeps what it
// acknowledged): frozen (SIGSTOP), then killed mid-stream; Mosquitto keeps taking publishes, the
// spool holds them, /health says so, and once Redis is back every acknowledged message is stored
// once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_frozen_and_killed_mid_stream_loses_nothing() {
    const EACH: usize = 1500;
    let mut env = TestEnv::with_redis(Backend::Redis, &["--appendonly", "yes", "--appendfsync", "always"]).await;
    let metrics = common::free_port();
    let hocon = format!("metrics {{ bind = \"127.0.0.1:{metrics}\" }}\n{}", env.backend_block("query_timeout = 2s"));
    let m = Mosquitto::start(&env, &hocon).await;
    let health = || common::curl(&format!("http://127.0.0.1:{metrics}/health"));
    assert_eq!(health().0, 200, "{:?}", health());
    let mut c = Client::connect(env.port, "fault-pub", true).await;
    let sent: Vec<String> = (0..EACH * 3).map(|i| format!("f{i}")).collect();
    for s in &sent[..EACH] {
        assert!(c.try_publish("fault/t", s.clone()).await);
    }
    // Frozen: requests hang until query_timeout, then the writer spools.
    env.redis().signal("STOP");
    for s in &sent[EACH..EACH * 2] {
        assert!(c.try_publish("fault/t", s.clone()).await, "Mosquitto stopped taking publishes");
    }
    env.redis().signal("CONT");
    env.redis.as_mut().unwrap().kill();
    for s in &sent[EACH * 2..] {
        assert!(c.try_publish("fault/t", s.clone()).await, "Mosquitto stopped taking publishes");
    }
    wait_for(|| async { health().0 == 503 }, "/health reports the outage").await;
    env.redis.as_mut().unwrap().restart();
    let start = Instant::now();
    loop {
        // Ordered by message id: publish order.
        let stored = env.redis().payloads();
        if stored.len() >= sent.len() {
            assert_eq!(stored, sent, "each once, in order");
            break;
        }
        assert!(start.elapsed() < LONG * 2, "stuck at {} of {} messages:\n{}", stored.len(), sent.len(), m.log_text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(health().0, 200, "{:?}", health());
    let (_, text) = common::curl(&format!("http://127.0.0.1:{metrics}/metrics"));
    assert_eq!(common::metric(&text, "offline_messages_persisted_total"), sent.len() as f64, "{text}");
}
