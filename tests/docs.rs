//! The documentation's promises: every example query in docs/schema.md runs on both databases and
//! returns what it says, docs/configuration.md documents every key the config parser accepts, and
//! the embedding example of docs/hosts.md runs a broker with the plugin.

#[macro_use]
mod common;

use std::collections::HashMap;

use common::{Backend, Client, TestEnv, LONG};
use rumqttc::QoS;
use sqlx::Row;

const SCHEMA_DOC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/schema.md");
const CONFIG_DOC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/configuration.md");

/// One example of docs/schema.md: the `###` heading it is under, and its SQL.
#[derive(Debug)]
struct Example {
    title: String,
    sql: String,
}

/// The blocks of docs/schema.md fenced exactly as ```sql <dialect>, in order.
fn examples(dialect: &str) -> Vec<Example> {
    let text = std::fs::read_to_string(SCHEMA_DOC).unwrap();
    let fence = format!("```sql {dialect}");
    let mut found = Vec::new();
    let mut title = String::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if let Some(heading) = line.strip_prefix("### ") {
            title = heading.trim().to_owned();
        } else if line.trim_end() == fence {
            let body: Vec<&str> = lines.by_ref().take_while(|l| !l.starts_with("```")).collect();
            found.push(Example { title: title.clone(), sql: body.join("\n").trim().to_owned() });
        }
    }
    found
}

/// The example under the heading that starts with `title`.
fn example<'a>(examples: &'a [Example], title: &str) -> &'a Example {
    examples
        .iter()
        .find(|e| e.title.starts_with(title))
        .unwrap_or_else(|| panic!("no example titled {title:?} in docs/schema.md"))
}

#[test]
fn every_schema_example_is_given_once_for_each_database() {
    let (mysql, sqlite) = (examples("mysql"), examples("sqlite"));
    assert!(!mysql.is_empty() && !sqlite.is_empty(), "no ```sql mysql / ```sql sqlite blocks found");
    let titles = |v: &[Example]| v.iter().map(|e| e.title.clone()).collect::<Vec<_>>();
    assert_eq!(titles(&mysql), titles(&sqlite), "each example has one block per dialect, in the same order");
    for e in mysql.iter().chain(&sqlite) {
        assert!(!e.title.is_empty(), "a block before the first ### heading: {}", e.sql);
        assert!(!e.sql.trim_end_matches(';').contains(';'), "one statement per block: {}", e.sql);
        assert!(!e.sql.contains('?') && !e.sql.contains("${"), "literal values, no placeholders: {}", e.sql);
    }
}

on_both_backends!(every_example_query_in_the_schema_doc_runs);
async fn every_example_query_in_the_schema_doc_runs(backend: Backend) {
    let env = TestEnv::new(backend).await;
    // fanout: rows stay after an ack, so the "not acknowledged yet" example has something to tell.
    let _broker = env.start("delivery_mode = fanout\nmessage_ttl = 30m").await;
    let mut publisher = Client::connect(env.port, "sensor-7", true).await;
    for i in 0..12 {
        publisher.publish("site/1/temp", QoS::AtLeastOnce, false, format!("t{i}")).await;
    }
    publisher.publish("site/2/hum", QoS::AtLeastOnce, false, "h").await;
    // One MQTT 5 publish with a content type, from a client nobody here wrote.
    let out = common::mosquitto(
        "mosquitto_pub",
        env.port,
        "config-tool",
        "cfg/x",
        &["-m", "{}", "-D", "publish", "content-type", "application/json"],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    env.wait_count("mqtt_msg", 14, LONG).await;
    // `dashboard` subscribes to site/2/#: its one message is replayed and acknowledged.
    let mut dashboard = Client::connect(env.port, "dashboard", false).await;
    dashboard.subscribe("site/2/#", QoS::AtLeastOnce).await;
    assert_eq!(dashboard.recv(1, LONG).await[0].payload.as_ref(), b"h");
    env.wait_count("mqtt_delivered", 1, LONG).await;

    let dialect = if backend == Backend::MySql { "mysql" } else { "sqlite" };
    let examples = examples(dialect);
    assert!(!examples.is_empty(), "no ```sql {dialect} block in docs/schema.md");
    let mut rows = HashMap::new();
    for e in &examples {
        let n = with_conn!(env, c => sqlx::raw_sql(sqlx::AssertSqlSafe(e.sql.clone())).fetch_all(&mut c).await
            .unwrap_or_else(|err| panic!("{dialect} example {:?} fails: {err}\n{}", e.title, e.sql)).len());
        rows.insert(e.title.as_str(), n);
    }
    let count = |title: &str| rows[example(&examples, title).title.as_str()];

    let last = &example(&examples, "The last 10 messages of a topic").sql;
    let payloads = with_conn!(env, c => sqlx::raw_sql(sqlx::AssertSqlSafe(last.clone())).fetch_all(&mut c).await.unwrap()
        .iter().map(|r| r.get::<Vec<u8>, _>("payload")).collect::<Vec<_>>());
    let expected: Vec<Vec<u8>> = (2..12).rev().map(|i| format!("t{i}").into_bytes()).collect();
    assert_eq!(payloads, expected, "the last 10 of site/1/temp, newest first");

    assert_eq!(count("Messages from one client"), 13, "everything sensor-7 sent is in the range");
    assert_eq!(count("Everything under a topic prefix"), 13);
    assert_eq!(count("What one subscription has not acknowledged"), 12, "dashboard acknowledged site/2/hum only");
    assert_eq!(count("Messages that expire within the next hour"), 14, "message_ttl = 30m");
    assert_eq!(count("Messages per topic"), 3, "three topics");
    assert_eq!(count("The subscriptions stored for a client"), 1, "dashboard's site/2/#");
    let mqtt5 = &example(&examples, "An MQTT 5 property").sql;
    let types = with_conn!(env, c => sqlx::raw_sql(sqlx::AssertSqlSafe(mqtt5.clone())).fetch_all(&mut c).await.unwrap()
        .iter().map(|r| r.get::<Option<String>, _>("content_type")).collect::<Vec<_>>());
    assert_eq!(types, [Some("application/json".to_owned())], "only the MQTT 5 publish has properties");
}

#[test]
fn the_configuration_reference_documents_every_key() {
    let doc = std::fs::read_to_string(CONFIG_DOC).unwrap();
    let missing: Vec<String> =
        mqtt_offline_messages::config::known_keys().into_iter().filter(|k| !doc.contains(&format!("`{k}`"))).collect();
    assert!(missing.is_empty(), "keys missing from docs/configuration.md (as `full.path`): {missing:?}");
}

/// docs/hosts.md's second path: the embedding example, built by `cargo test`, runs a broker that
/// stores what it is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedding_example_runs_a_broker_with_the_plugin() {
    let exe = std::env::current_exe().unwrap();
    let example = exe.parent().unwrap().parent().unwrap().join("examples/embedded_broker");
    assert!(example.exists(), "cargo test builds examples: {}", example.display());
    let env = TestEnv::new(Backend::Sqlite).await;
    let config = env.write_config(&env.backend_block(""));
    let mut child = std::process::Command::new(&example)
        .arg(&config)
        .arg(format!("127.0.0.1:{}", env.port))
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", env.port)).is_err() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the example exited before it listened: {status}");
        }
        assert!(start.elapsed() < LONG, "the example never listened");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let mut publisher = Client::connect(env.port, "embedded-pub", true).await;
    publisher.publish("embedded/t", QoS::AtLeastOnce, false, "hello").await;
    env.wait_count("mqtt_msg", 1, LONG).await;
    let mut subscriber = Client::connect(env.port, "embedded-sub", true).await;
    subscriber.subscribe("embedded/#", QoS::AtLeastOnce).await;
    assert_eq!(subscriber.recv(1, LONG).await[0].payload.as_ref(), b"hello", "replayed on subscribe");
    env.wait_count("mqtt_msg", 0, LONG).await;
    let _ = std::process::Command::new("kill").args(["-INT", &child.id().to_string()]).status();
    assert!(child.wait().unwrap().success(), "it stops cleanly on SIGINT");
}

const README: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/README.md");

/// The first ```sh block after the heading `heading` in README.md, as lines.
fn readme_block(heading: &str) -> Vec<String> {
    let text = std::fs::read_to_string(README).unwrap();
    let after = text.split_once(&format!("\n{heading}\n")).unwrap_or_else(|| panic!("no {heading:?} in README.md")).1;
    let body = after.split_once("```sh\n").expect("a ```sh block").1;
    body.split_once("\n```").unwrap().0.lines().map(str::to_owned).collect()
}

/// README's metrics table and the endpoint agree: every metric served is documented with its type,
/// and every documented one is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_documents_every_metric_the_endpoint_serves() {
    let readme = std::fs::read_to_string(README).unwrap();
    let documented: std::collections::BTreeSet<(String, String)> = readme
        .lines()
        .filter_map(|l| l.strip_prefix("| `offline_messages_"))
        .map(|rest| {
            let (name, rest) = rest.split_once('`').unwrap();
            let kind = rest.trim_start_matches([' ', '|']).split_once(' ').unwrap().0;
            (format!("offline_messages_{name}"), kind.to_owned())
        })
        .collect();
    assert!(!documented.is_empty(), "no | `offline_messages_...` | rows in README.md");

    let env = TestEnv::new(Backend::Sqlite).await;
    let metrics_port = common::free_port();
    let config = format!("metrics {{ bind = \"127.0.0.1:{metrics_port}\" }}\n{}", env.backend_block(""));
    let _broker = common::Broker::start(&env.write_config(&config), env.port, env.dir.path().join("broker.log")).await;
    let (code, text) = common::curl(&format!("http://127.0.0.1:{metrics_port}/metrics"));
    assert_eq!(code, 200);
    let served: std::collections::BTreeSet<(String, String)> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| {
            let (name, kind) = l.split_once(' ').unwrap();
            (name.to_owned(), kind.to_owned())
        })
        .collect();
    let undocumented: Vec<_> = served.difference(&documented).collect();
    let unserved: Vec<_> = documented.difference(&served).collect();
    assert!(undocumented.is_empty(), "served but not in README's metrics table (name, type): {undocumented:?}");
    assert!(unserved.is_empty(), "in README's metrics table but not served (name, type): {unserved:?}");
}

/// The rows of `mqtt_msg` in a SQLite file, read with Debian's sqlite3 as a user would; -1 while
/// the table does not exist yet.
fn sqlite_count(db: &std::path::Path) -> i64 {
    let out = std::process::Command::new("sqlite3").arg(db).arg("select count(*) from mqtt_msg").output();
    String::from_utf8_lossy(&out.expect("sqlite3 (Debian package sqlite3)").stdout).trim().parse().unwrap_or(-1)
}

/// README's "Try it", run as written (its one port variable set to a free port), in a directory
/// holding the shipped config.hocon, with the built binary on PATH: the message is stored, then
/// replayed, then deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_try_it_stores_and_replays_a_message() {
    use std::io::Write;
    use std::os::unix::process::CommandExt;
    let lines = readme_block("### Try it");
    let port = common::free_port();
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(concat!(env!("CARGO_MANIFEST_DIR"), "/config.hocon"), dir.path().join("config.hocon")).unwrap();
    let bin_dir = std::path::Path::new(common::BIN).parent().unwrap();
    let mut shell = std::process::Command::new("bash")
        .current_dir(dir.path())
        .env("PATH", format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap()))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap();
    let group = shell.id();
    let kill_group = move || {
        let _ = std::process::Command::new("kill").args(["-KILL", "--", &format!("-{group}")]).status();
    };
    let mut stdin = shell.stdin.take().unwrap();
    let (first, rest) = lines.split_first().unwrap();
    assert!(first.starts_with("PORT="), "the block starts by choosing its one port: {first}");
    writeln!(stdin, "PORT={port}").unwrap();
    for line in rest {
        assert!(!line.contains("1883"), "a command that does not use $PORT: {line}");
        writeln!(stdin, "{line}").unwrap();
        if line.starts_with("mqtt-offline-messages run") {
            // A person types the next line once the broker is up; the test waits for its port.
            let start = std::time::Instant::now();
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                if start.elapsed() > LONG {
                    kill_group();
                    panic!("the broker never listened on {port}");
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
        if line.starts_with("mosquitto_pub") {
            // A person looks at the table after the publish: the test waits for the writer's commit
            // (async mode: within about batch_time, longer on a loaded machine).
            let db = dir.path().join("data/offline-messages.db");
            let start = std::time::Instant::now();
            while sqlite_count(&db) < 1 {
                if start.elapsed() > LONG {
                    kill_group();
                    panic!("the published message was never stored");
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
    drop(stdin);
    let start = std::time::Instant::now();
    while shell.try_wait().unwrap().is_none() {
        if start.elapsed() > LONG {
            kill_group();
            panic!("the block did not finish in {LONG:?}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let mut out = String::new();
    std::io::Read::read_to_string(&mut shell.stdout.take().unwrap(), &mut out).unwrap();
    let out: Vec<&str> = out.lines().collect();
    assert_eq!(out.len(), 2, "sqlite3's row, then mosquitto_sub's message: {out:?}");
    assert!(out[0].starts_with("greetings|") && out[0].ends_with("|hello"), "stored: {out:?}");
    assert_eq!(out[1], "hello", "replayed");
    // `kill %1` stops the broker; its last flush deletes the acknowledged row.
    let db = dir.path().join("data/offline-messages.db");
    let start = std::time::Instant::now();
    loop {
        let left = sqlite_count(&db);
        if left == 0 {
            break;
        }
        assert!(
            start.elapsed() < LONG,
            "the acknowledged row is still stored: {left}\n{}",
            std::fs::read_to_string(dir.path().join("broker.log")).unwrap_or_default()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(std::fs::read_to_string(dir.path().join("broker.log")).unwrap().contains("MQTT broker listening"));
}

/// The Debian package's conffile is the shipped config.hocon with its data under
/// /var/lib/mqtt-offline-messages, and nothing else changed.
#[test]
fn the_packaged_config_is_the_shipped_one_with_its_data_under_var_lib() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let shipped = std::fs::read_to_string(root.join("config.hocon")).unwrap();
    let packaged = std::fs::read_to_string(root.join("packaging/config.hocon")).unwrap();
    let expected: Vec<String> = shipped
        .lines()
        .map(|l| {
            if l.trim_start().starts_with('#') {
                l.to_owned()
            } else {
                l.replace("= \"data/", "= \"/var/lib/mqtt-offline-messages/")
            }
        })
        .collect();
    assert_eq!(packaged.lines().collect::<Vec<_>>(), expected, "regenerate packaging/config.hocon from config.hocon");
    let config = mqtt_offline_messages::config::Config::load(&root.join("packaging/config.hocon")).unwrap();
    let storage = config.backend.storage();
    let mqtt_offline_messages::config::Backend::Sqlite(sqlite) = &config.backend else {
        panic!("SQLite ships enabled")
    };
    for path in [&sqlite.path, &storage.spool_dir, &storage.dead_letter_file] {
        assert!(path.starts_with("/var/lib/mqtt-offline-messages/"), "{}", path.display());
    }
}
