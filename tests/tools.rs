//! The operator's side: `migrate`, `check-config`, `history`, and the metrics endpoint, run as a user
//! runs them (the binary, real databases, curl).

#[macro_use]
mod common;

use std::process::{Command, Output};

use common::{curl, free_port, metric, Backend, Client, TestEnv, BIN, LONG, MYSQL_SERVER};
use rumqttc::QoS;

fn tool(args: &[&str], config: &std::path::Path) -> Output {
    Command::new(BIN).args(args).arg("--config").arg(config).output().unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The backend block without `init_default_schema`, so that only `migrate` makes the tables.
fn bare_block(env: &TestEnv, extra: &str) -> String {
    env.backend_block(&format!("init_default_schema = false\n{extra}"))
}

/// On a terminal (`script` gives it one), `migrate` draws which migration runs.
#[tokio::test]
async fn migrate_shows_its_progress_on_a_terminal() {
    let env = TestEnv::new(Backend::Sqlite).await;
    let config = env.write_config(&bare_block(&env, ""));
    let command = format!("{BIN} migrate --config {}", config.display());
    let out = Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let screen = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{screen}");
    assert!(screen.contains("[>..] migration 1/3: migrations/sqlite/0001_default_schema.sql"), "{screen}");
    assert!(screen.contains("[##>] migration 3/3"), "{screen}");
}

on_both_backends!(migrate_applies_each_migration_once);
async fn migrate_applies_each_migration_once(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let config = env.write_config(&bare_block(&env, ""));
    let out = tool(&["migrate"], &config);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let dir = if backend == Backend::MySql { "mysql" } else { "sqlite" };
    let mut files = vec!["0001_default_schema.sql", "0002_msgid_index.sql", "0003_fidelity_expiry_deliveries.sql"];
    if backend == Backend::MySql {
        // SQLite compares text byte for byte already, and its TEXT has no length.
        files.extend(["0004_binary_collation.sql", "0005_mqtt_lengths.sql"]);
    }
    assert_eq!(
        stdout(&out).lines().collect::<Vec<_>>(),
        files.iter().map(|f| format!("applied migrations/{dir}/{f}")).collect::<Vec<_>>()
    );
    assert!(!String::from_utf8_lossy(&out.stderr).contains('\x1b'), "no progress bar when stderr is not a terminal");
    let again = tool(&["migrate"], &config);
    assert!(again.status.success());
    assert_eq!(stdout(&again).trim(), "schema up to date: nothing to apply");
    assert_eq!(env.count("mqtt_msg").await, 0, "the tables exist");
}

/// Several nodes starting at once on one MySQL database: the migrations run once, under a lock.
#[tokio::test]
async fn migrations_started_at_once_by_several_processes_run_once() {
    let env = TestEnv::new(Backend::MySql).await;
    let config = env.write_config(&bare_block(&env, ""));
    let children: Vec<_> = (0..4)
        .map(|_| {
            Command::new(BIN)
                .args(["migrate", "--config"])
                .arg(&config)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outs: Vec<Output> = children.into_iter().map(|c| c.wait_with_output().unwrap()).collect();
    for out in &outs {
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let mut applied: Vec<String> = outs
        .iter()
        .flat_map(|o| stdout(o).lines().filter(|l| l.starts_with("applied")).map(str::to_owned).collect::<Vec<_>>())
        .collect();
    let files = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/engine/migrations/mysql")).unwrap().count();
    applied.sort();
    applied.dedup();
    assert_eq!(applied.len(), files, "each migration: {applied:?}");
    let total: usize = outs.iter().map(|o| stdout(o).lines().filter(|l| l.starts_with("applied")).count()).sum();
    assert_eq!(total, files, "each migration once: {applied:?}");
}

on_both_backends!(check_config_passes_a_good_config_and_names_what_is_wrong);
async fn check_config_passes_a_good_config_and_names_what_is_wrong(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let name = if backend == Backend::MySql { "mysql" } else { "sqlite" };

    // No tables yet: the templates cannot be prepared and the schema is not there.
    let config = env.write_config(&bare_block(&env, ""));
    let out = tool(&["check-config"], &config);
    assert!(!out.status.success());
    let text = stdout(&out);
    assert!(text.contains(&format!("FAIL {name}.insert_message_sql")), "{text}");

    assert!(tool(&["migrate"], &config).status.success());
    let out = tool(&["check-config"], &config);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.lines().all(|l| l.starts_with("ok ")), "{text}");
    assert!(text.contains("ok   index mqtt_msg.topic_index"), "{text}");
    assert_eq!(text.lines().filter(|l| l.contains("_sql: prepared")).count(), 9, "one line per template: {text}");

    // A template that names a column the table lacks.
    let config =
        env.write_config(&bare_block(&env, r#"delete_message_sql = "delete from mqtt_msg where nope = ${id}""#));
    let out = tool(&["check-config"], &config);
    assert!(!out.status.success());
    let text = stdout(&out);
    assert!(text.contains(&format!("FAIL {name}.delete_message_sql")), "{text}");
    assert_eq!(text.lines().filter(|l| l.starts_with("FAIL")).count(), 1, "only that one: {text}");

    // A config that does not parse: one failing line, exit 1.
    let config = env.write_config(&format!("{}\n{name} {{ batch_size = lots }}", bare_block(&env, "")));
    let out = tool(&["check-config"], &config);
    assert!(!out.status.success());
    assert!(stdout(&out).starts_with("FAIL config:") && stdout(&out).contains("batch_size"), "{}", stdout(&out));

    // A spool directory nobody can create (beneath a file).
    let config = env.write_config(&bare_block(&env, r#"spool_dir = "/dev/null/spool""#));
    let out = tool(&["check-config"], &config);
    assert!(!out.status.success());
    assert!(stdout(&out).contains(&format!("FAIL {name}.spool_dir")), "{}", stdout(&out));

    // mqtt_sub without its unique key: the upsert would store a subscription twice.
    match backend {
        Backend::MySql => env.execute("alter table mqtt_sub drop index sub_unique").await,
        Backend::Sqlite => {
            env.execute("create table sub_copy as select * from mqtt_sub; drop table mqtt_sub; alter table sub_copy rename to mqtt_sub")
                .await
        }
        Backend::Redis => unreachable!("an SQL-only test"),
    }
    let config = env.write_config(&bare_block(&env, ""));
    let out = tool(&["check-config"], &config);
    assert!(!out.status.success());
    let text = stdout(&out);
    assert!(text.contains("FAIL unique key mqtt_sub") && text.contains("insert_subscription_sql"), "{text}");
    assert!(text.contains("ok   unique key mqtt_delivered"), "{text}");
}

#[tokio::test]
async fn check_config_reports_a_refused_login_without_the_password() {
    let env = TestEnv::new(Backend::MySql).await;
    let block = format!(
        "mysql {{ enable = true, server = \"{MYSQL_SERVER}\", username = nobody_here, password = \"s3cret-pw\", database = {} }}",
        env.db_name
    );
    let out = tool(&["check-config"], &env.write_config(&block));
    assert!(!out.status.success());
    let all = format!("{}{}", stdout(&out), String::from_utf8_lossy(&out.stderr));
    assert!(all.contains("FAIL connect"), "{all}");
    assert!(!all.contains("s3cret-pw"), "the password never prints: {all}");
}

/// Nothing listens on the port: both tools say what the socket said, with the address and the key
/// (not the pool's "timed out while waiting for an open connection").
#[tokio::test]
async fn check_config_and_migrate_say_connection_refused() {
    let env = TestEnv::new(Backend::Sqlite).await;
    let server = format!("127.0.0.1:{}", free_port());
    let config = env.write_config(&format!(
        "mysql {{ enable = true, server = \"{server}\", database = x, spool_dir = \"{}\" }}",
        env.dir.path().join("spool").display()
    ));
    for tool_args in [&["check-config"][..], &["migrate"]] {
        let out = tool(tool_args, &config);
        assert!(!out.status.success());
        let all = format!("{}{}", stdout(&out), String::from_utf8_lossy(&out.stderr));
        let expected = format!(
            "cannot connect to mysql at {server} (mysql.server): error communicating with database: Connection refused"
        );
        assert!(all.contains(&expected), "{tool_args:?}: {all}");
    }
}

on_every_backend!(history_streams_stored_messages_as_a_table_or_json_lines);
async fn history_streams_stored_messages_as_a_table_or_json_lines(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let _broker = env.start("").await;
    let mut a = Client::connect(env.port, "hist-a", true).await;
    let mut b = Client::connect(env.port, "hist-b", true).await;
    a.publish("site/1/temp", QoS::AtLeastOnce, false, "21.5").await;
    b.publish("site/2/temp", QoS::AtLeastOnce, false, vec![0xff, 0x00, 0x01]).await;
    a.publish("site/1/hum", QoS::AtLeastOnce, false, "40").await;
    a.publish("other/x", QoS::AtLeastOnce, false, "no").await;
    env.wait_count("mqtt_msg", 4, LONG).await;
    let config = env.dir.path().join("config.hocon");

    let json = |args: &[&str]| -> Vec<serde_json::Value> {
        let out = Command::new(BIN)
            .arg("history")
            .args(args)
            .arg("--config")
            .arg(&config)
            .args(["--format", "json"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stderr).contains("queue"), "it says what the table holds in queue mode");
        stdout(&out).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    };
    let rows = json(&["--topic", "site/+/temp"]);
    assert_eq!(rows.len(), 2);
    assert_eq!((rows[0]["topic"].as_str(), rows[0]["payload"].as_str()), (Some("site/1/temp"), Some("21.5")));
    assert_eq!(rows[0]["payload_encoding"], "utf8");
    assert_eq!((rows[1]["payload"].as_str(), rows[1]["payload_encoding"].as_str()), (Some("/wAB"), Some("base64")));
    assert_eq!(rows[1]["sender"], "hist-b");
    assert_eq!(json(&["--topic", "site/#", "--sender", "hist-a"]).len(), 2);
    assert_eq!(json(&["--topic", "#", "--limit", "3"]).len(), 3);
    assert_eq!(json(&["--topic", "#", "--since", "1h"]).len(), 4);
    assert_eq!(json(&["--topic", "#", "--until", "1h"]).len(), 0);
    let all = json(&["--topic", "#"]);
    let payloads: Vec<&str> = all.iter().map(|r| r["payload"].as_str().unwrap()).collect();
    assert_eq!(payloads, ["21.5", "/wAB", "40", "no"], "publish order");
    let msgids: Vec<&str> = all.iter().map(|r| r["msgid"].as_str().unwrap()).collect();
    assert!(msgids.windows(2).all(|w| w[0] < w[1]), "message ids grow in publish order: {msgids:?}");
    for r in &all {
        // Redis keeps no row number: the message id names a message there.
        assert!(if backend == Backend::Redis { r["id"].is_null() } else { r["id"].is_i64() }, "{r}");
    }
    let arrived: Vec<i64> = all.iter().map(|r| r["arrived_ms"].as_i64().unwrap()).collect();
    let since = arrived[2];
    let expected = arrived.iter().filter(|a| **a >= since).count();
    assert_eq!(json(&["--topic", "#", "--since", &since.to_string()]).len(), expected, "--since is inclusive, in ms");

    let out = Command::new(BIN).args(["history", "--topic", "site/#", "--config"]).arg(&config).output().unwrap();
    let table = stdout(&out);
    assert_eq!(table.lines().count(), 4, "a header and three rows: {table}");
    assert!(table.contains("base64:/wAB") && table.contains("21.5"), "{table}");
}

on_every_backend!(the_metrics_endpoint_counts_real_traffic_and_reports_health);
async fn the_metrics_endpoint_counts_real_traffic_and_reports_health(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let metrics_port = free_port();
    let config = format!("metrics {{ bind = \"127.0.0.1:{metrics_port}\" }}\n{}", env.backend_block(""));
    let _broker = common::Broker::start(&env.write_config(&config), env.port, env.dir.path().join("broker.log")).await;
    let base = format!("http://127.0.0.1:{metrics_port}");
    let (code, before) = curl(&format!("{base}/metrics"));
    assert_eq!(code, 200);
    assert_eq!(metric(&before, "offline_messages_persisted_total"), 0.0);

    let mut p = Client::connect(env.port, "m-pub", true).await;
    for i in 0..5 {
        p.publish("m/t", QoS::AtLeastOnce, false, format!("{i}")).await;
    }
    env.wait_count("mqtt_msg", 5, LONG).await;
    let mut s = Client::connect(env.port, "m-sub", true).await;
    s.subscribe("m/t", QoS::AtLeastOnce).await;
    s.recv(5, LONG).await;
    env.wait_count("mqtt_msg", 0, LONG).await;

    let (_, after) = curl(&format!("{base}/metrics"));
    assert_eq!(metric(&after, "offline_messages_matched_total"), 5.0);
    assert_eq!(metric(&after, "offline_messages_persisted_total"), 5.0);
    assert_eq!(metric(&after, "offline_messages_replays_total"), 1.0);
    assert_eq!(metric(&after, "offline_messages_replayed_total"), 5.0);
    assert_eq!(metric(&after, "offline_messages_deleted_on_ack_total"), 5.0);
    assert!(metric(&after, "offline_messages_flush_seconds_count") >= 2.0, "{after}");
    assert!(metric(&after, "offline_messages_db_connections_open") >= 1.0);
    assert_eq!(curl(&format!("{base}/health")), (200, "ok\n".to_owned()));
    assert_eq!(curl(&format!("{base}/nothing")).0, 404);
}

/// `/health` says 503, with the reason, when the database stops answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_503_when_the_database_refuses() {
    let env = TestEnv::new(Backend::MySql).await;
    let user = format!("{}_u", env.db_name);
    let admin = |sql: String| {
        let out = Command::new("mariadb").args(["-h127.0.0.1", "-uroot", "-e", &sql]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    admin(format!("CREATE USER '{user}'@'%' IDENTIFIED BY 'pw'; GRANT ALL ON `{}`.* TO '{user}'@'%';", env.db_name));
    let metrics_port = free_port();
    let block = env.backend_block(&format!("username = \"{user}\"\n password = pw"));
    let config = format!("metrics {{ bind = \"127.0.0.1:{metrics_port}\" }}\n{block}");
    let broker = common::Broker::start(&env.write_config(&config), env.port, env.dir.path().join("broker.log")).await;
    let health = format!("http://127.0.0.1:{metrics_port}/health");
    assert_eq!(curl(&health).0, 200);

    // The account goes away and its connections are cut: every new query is refused.
    admin(format!("DROP USER '{user}'@'%'"));
    let kill = Command::new("mariadb")
        .args([
            "-h127.0.0.1",
            "-uroot",
            "-N",
            "-e",
            &format!("SELECT id FROM information_schema.processlist WHERE user = '{user}'"),
        ])
        .output()
        .unwrap();
    for id in stdout(&kill).split_whitespace() {
        admin(format!("KILL {id}"));
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let (code, body) = loop {
        let (code, body) = curl(&health);
        if code == 503 || std::time::Instant::now() > deadline {
            break (code, body);
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert_eq!(code, 503, "{body}");
    assert!(body.starts_with("database: "), "{body}");
    // The reason in words; the database's own text (which names the user and the host) is in the
    // log only.
    assert!(!body.contains(&user) && !body.contains("127.0.0.1") && !body.contains("localhost"), "{body}");
    broker.wait_for_log(&user).await;
}

/// Neither the database password nor an MQTT user's appears in any log line, error or tool
/// output, at any log level (the broker and the tools run at `trace`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_password_never_reaches_logs_or_output() {
    const PASSWORD: &str = "Pw-9f3K-never-print";
    let env = TestEnv::new(Backend::MySql).await;
    let user = format!("{}_p", env.db_name);
    let admin = |sql: String| {
        let out = Command::new("mariadb").args(["-h127.0.0.1", "-uroot", "-e", &sql]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    admin(format!(
        "CREATE USER '{user}'@'%' IDENTIFIED BY '{PASSWORD}'; GRANT ALL ON `{}`.* TO '{user}'@'%';",
        env.db_name
    ));
    const MQTT_PASSWORD: &str = "Mq-7c1Z-never-print";
    let auth = format!(
        "auth {{ users = [ {{ username = pw-user, password_hash = \"{}\" }} ], acl = [ {{ username = pw-user, action = all, topic = \"#\", permission = allow }} ] }}\n",
        mqtt_offline_messages::auth::hash_password(MQTT_PASSWORD)
    );
    let block = env.backend_block(&format!("username = \"{user}\"\n password = \"{PASSWORD}\""));
    let config = env.write_config(&format!("{auth}{block}"));
    let mut outputs = String::new();
    {
        let log = env.dir.path().join("broker.log");
        let mut broker = common::Broker::start_logging(&config, env.port, log, "trace").await;
        let mut p = Client::connect_as(env.port, "pw-pub", "pw-user", MQTT_PASSWORD).await;
        p.publish("pw/t", QoS::AtLeastOnce, false, "x").await;
        env.wait_count("mqtt_msg", 1, LONG).await;
        p.disconnect().await;
        broker.stop();
        outputs.push_str(&broker.log_text());
    }
    for args in [&["check-config"][..], &["migrate"], &["history", "--topic", "#"]] {
        let out = Command::new(BIN).args(args).arg("--config").arg(&config).env("RUST_LOG", "trace").output().unwrap();
        outputs.push_str(&String::from_utf8_lossy(&out.stdout));
        outputs.push_str(&String::from_utf8_lossy(&out.stderr));
    }
    // A refused login, logged at trace level.
    admin(format!("DROP USER '{user}'@'%'"));
    let out =
        Command::new(BIN).args(["check-config", "--config"]).arg(&config).env("RUST_LOG", "trace").output().unwrap();
    assert!(!out.status.success());
    outputs.push_str(&String::from_utf8_lossy(&out.stdout));
    outputs.push_str(&String::from_utf8_lossy(&out.stderr));
    assert!(outputs.len() > 1000, "the broker and the tools said something");
    assert!(!outputs.contains(PASSWORD), "the database password leaked");
    assert!(!outputs.contains(MQTT_PASSWORD), "an MQTT password leaked");
}
