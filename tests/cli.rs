//! The binary's start-up errors (one line, naming the key or flag, and what to do), its logs, and
//! what it says on the way out.

mod common;

use std::process::{Command, Output};

use common::{free_port, mosquitto, Backend, Broker, Client, TestEnv, BIN, LONG};
use rumqttc::QoS;

fn run_with(config: &std::path::Path, bind: &str) -> Output {
    Command::new(BIN)
        .args(["run", "--config"])
        .arg(config)
        .args(["--bind", bind])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

/// The last stderr line, which is the error the user reads.
fn error_line(out: &Output) -> String {
    assert!(!out.status.success(), "expected a failed start-up");
    String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn a_taken_port_names_the_address_and_the_flag() {
    let env = TestEnv::new(Backend::Sqlite).await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let line = error_line(&run_with(&env.write_config(&env.backend_block("")), &addr));
    assert!(line.starts_with("error: cannot listen on ") && line.contains(&addr) && line.contains("--bind"), "{line}");
}

#[tokio::test]
async fn an_unknown_template_variable_names_the_key_and_the_variable() {
    let env = TestEnv::new(Backend::Sqlite).await;
    let config =
        env.write_config(&env.backend_block(r#"select_message_sql = "select * from mqtt_msg where topic = ${topik}""#));
    let line = error_line(&run_with(&config, &format!("127.0.0.1:{}", env.port)));
    assert!(line.contains("sqlite.select_message_sql") && line.contains("${topik}"), "{line}");
}

#[tokio::test]
async fn missing_tables_without_init_default_schema_stop_start_up() {
    let env = TestEnv::new(Backend::MySql).await;
    let config = env.write_config(&env.backend_block("init_default_schema = false"));
    let line = error_line(&run_with(&config, &format!("127.0.0.1:{}", env.port)));
    assert!(
        line.contains("mysql.insert_message_sql") && line.contains("mqtt_msg") && line.contains("init_default_schema"),
        "{line}"
    );
}

#[tokio::test]
async fn a_wrong_password_is_reported_without_the_password() {
    let env = TestEnv::new(Backend::MySql).await;
    let config = env.write_config(&format!(
        "mysql {{ enable = true, database = {}, username = nobody_here, password = \"s3cret-Pa55\" }}",
        env.db_name
    ));
    let out = run_with(&config, &format!("127.0.0.1:{}", env.port));
    let line = error_line(&out);
    assert!(line.contains("cannot connect to mysql at 127.0.0.1:3306 (mysql.server)"), "{line}");
    assert!(!String::from_utf8_lossy(&out.stderr).contains("s3cret-Pa55"), "the password leaked");
}

#[tokio::test]
async fn config_errors_name_the_key() {
    let env = TestEnv::new(Backend::Sqlite).await;
    let both = env.write_config(&format!("{}\nmysql {{ enable = true }}", env.backend_block("")));
    assert!(error_line(&run_with(&both, "127.0.0.1:1")).contains("`mysql.enable` and `sqlite.enable`"));
    let typo = env.write_config(&env.backend_block("bach_size = 10"));
    assert!(error_line(&run_with(&typo, "127.0.0.1:1")).contains("sqlite.bach_size: unknown key"));
}

/// stderr to a file: no colour codes; `log.format = json`: one JSON object per line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_to_a_file_carry_no_colour_and_json_gives_one_object_per_line() {
    let env = TestEnv::new(Backend::Sqlite).await;
    let mut text = env.start("").await;
    text.stop();
    let log = text.log_text();
    assert!(log.contains("MQTT broker listening") && !log.contains('\x1b'), "{log:?}");

    let config = env.write_config(&format!("log {{ format = json }}\n{}", env.backend_block("")));
    let mut json = Broker::start(&config, env.port, env.dir.path().join("json.log")).await;
    json.stop();
    let log = json.log_text();
    let lines: Vec<serde_json::Value> =
        log.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect();
    let ready = lines.iter().find(|l| l["fields"]["message"] == "MQTT broker listening").expect("the ready line");
    assert_eq!(ready["level"], "INFO");
    assert_eq!(ready["fields"]["addr"], format!("127.0.0.1:{}", env.port));
}

/// A config whose MySQL server is a port where nothing listens, with `extra` blocks.
fn database_away(env: &TestEnv, extra: &str) -> String {
    format!(
        "{extra}\nmysql {{ enable = true, server = \"127.0.0.1:{}\", topics = [\"#\"], spool_dir = \"{}\", dead_letter_file = \"{}\" }}",
        free_port(),
        env.dir.path().join("spool").display(),
        env.dead_letter_path().display()
    )
}

/// A database that cannot be reached is one fact, logged once (one warning saying what follows
/// from it), however many parts meet it: start-up, the writer, the subscription writer, a replay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_database_is_one_warning() {
    let env = TestEnv::new(Backend::Sqlite).await;
    let metrics_port = free_port();
    let config = env.write_config(&database_away(
        &env,
        &format!("metrics {{ bind = \"127.0.0.1:{metrics_port}\" }}\nbroker {{ shutdown_timeout = 1s }}"),
    ));
    let log = env.dir.path().join("broker.log");
    let broker = Broker::start_logging(&config, env.port, log, "info,rmqtt=warn,rmqtt_retainer=warn").await;
    let mut publisher = Client::connect(env.port, "away-pub", true).await;
    publisher.publish("t", QoS::AtLeastOnce, false, "spooled").await;
    let mut subscriber = Client::connect(env.port, "away-sub", true).await;
    subscriber.subscribe("t", QoS::AtLeastOnce).await;
    // Each part has met the outage: a batch spooled, a replay failed (the subscription is kept).
    let url = format!("http://127.0.0.1:{metrics_port}/metrics");
    let start = std::time::Instant::now();
    loop {
        let text = common::curl(&url).1;
        let value =
            |name: &str| text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<u64>().ok());
        if value("offline_messages_spooled_total") >= Some(1)
            && value("offline_messages_replay_failures_total") >= Some(1)
        {
            break;
        }
        assert!(start.elapsed() < common::LONG, "no spooled batch and failed replay yet:\n{text}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let text = broker.log_text();
    let loud: Vec<&str> = text.lines().filter(|l| l.contains(" WARN ") || l.contains(" ERROR ")).collect();
    assert_eq!(loud.len(), 1, "one warning for the outage:\n{text}");
    assert!(
        loud[0].contains("the database cannot be reached; until it answers, writes go to the on-disk spool"),
        "{}",
        loud[0]
    );
    assert!(loud[0].contains("Connection refused"), "{}", loud[0]);
}

/// SIGTERM while the database is away: the broker says that it waits, for what, and until when,
/// then exits 0 once `broker.shutdown_timeout` has run out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_the_database_away_says_what_it_waits_for_and_until_when() {
    let env = TestEnv::new(Backend::Sqlite).await;
    let config = env.write_config(&database_away(&env, "broker { shutdown_timeout = 3s }"));
    let mut broker = Broker::start(&config, env.port, env.dir.path().join("broker.log")).await;
    let mut publisher = Client::connect(env.port, "away-pub", true).await;
    publisher.publish("t", QoS::AtLeastOnce, false, "kept in the spool").await;
    assert_eq!(broker.stop(), Some(0));
    let log = broker.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("waiting for the database to take the spool before exiting"))
        .unwrap_or_else(|| panic!("no waiting line:\n{log}"));
    assert!(line.contains("until broker.shutdown_timeout runs out") && line.contains("until=20"), "{line}");
    assert!(line.contains("spool_bytes="), "{line}");
}

/// A publish beyond `broker.max_packet_size`: the broker closes the connection, logs a warning
/// with the client id, the size and the key to raise, and counts it; on MQTT 3.1.1 (mosquitto_pub)
/// and on MQTT 5, from a client that ignores the Maximum Packet Size the CONNACK gives it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_beyond_max_packet_size_is_logged_with_client_size_and_key_and_counted() {
    use std::io::{Read, Write};
    let env = TestEnv::new(Backend::Sqlite).await;
    let metrics_port = free_port();
    let config = env.write_config(&format!(
        "broker {{ max_packet_size = 1000 }}\nmetrics {{ bind = \"127.0.0.1:{metrics_port}\" }}\n{}",
        env.backend_block("")
    ));
    let broker = Broker::start(&config, env.port, env.dir.path().join("broker.log")).await;
    let big = env.dir.path().join("big.bin");
    std::fs::write(&big, vec![b'x'; 2000]).unwrap();
    let big = big.display().to_string();

    let v3 = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &env.port.to_string(), "-V", "311", "-q", "1", "-i", "big-311", "-t", "big"])
        .args(["-f", &big])
        .output()
        .expect("mosquitto_pub (Debian package mosquitto-clients)");
    assert!(!v3.status.success(), "the connection is closed on the client");
    broker.wait_for_log("client_id=\"big-311\" packet_bytes=").await;

    // MQTT 5: the CONNACK says the limit (Maximum Packet Size, property 0x27); this client sends more.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", env.port)).unwrap();
    s.set_read_timeout(Some(common::LONG)).unwrap();
    let connect = [&[0x10, 17, 0, 4][..], b"MQTT", &[5, 2, 0, 60, 0, 0, 4], b"big5"].concat();
    s.write_all(&connect).unwrap();
    let mut connack = [0u8; 64];
    let n = s.read(&mut connack).unwrap();
    let limit = [&[0x27][..], &1000u32.to_be_bytes()].concat();
    assert!(
        connack[..n].windows(5).any(|w| w == limit),
        "CONNACK without Maximum Packet Size 1000: {:?}",
        &connack[..n]
    );
    // PUBLISH QoS 1 to "big", remaining length 2 + 3 + 2 + 1 + 2000 = 2008 (varint 0xd8 0x0f).
    let publish = [&[0x32, 0xd8, 0x0f, 0, 3][..], b"big", &[0, 1, 0], &[b'x'; 2000]].concat();
    let _ = s.write_all(&publish);
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest); // the broker closes the connection
    broker.wait_for_log("client_id=\"big5\" packet_bytes=").await;

    let log = broker.log_text();
    let warnings: Vec<&str> = log.lines().filter(|l| l.contains("larger than broker.max_packet_size")).collect();
    assert_eq!(warnings.len(), 2, "{log}");
    // The size is the packet's remaining length: MQTT 5's has one more byte (its properties' length).
    for (line, (client, size)) in warnings.iter().zip([("big-311", 2007), ("big5", 2008)]) {
        assert!(line.contains(" WARN "), "{line}");
        assert!(line.contains(&format!("client_id=\"{client}\"")), "{line}");
        assert!(line.contains(&format!("packet_bytes={size}")) && line.contains("limit_bytes=1000"), "{line}");
        assert!(line.contains("raise broker.max_packet_size"), "{line}");
    }
    let metrics = common::curl(&format!("http://127.0.0.1:{metrics_port}/metrics")).1;
    assert!(metrics.contains("\noffline_messages_packets_too_large_total 2\n"), "{metrics}");
    assert_eq!(env.count("mqtt_msg").await, 0);
}

#[tokio::test]
async fn a_placeholder_the_database_would_not_see_stops_start_up() {
    let env = TestEnv::new(Backend::MySql).await;
    let bind = format!("127.0.0.1:{}", env.port);
    // MySQL's `#` comment runs to the end of the line: the `?` there would never be bound.
    let hidden = r#"select_subscriptions_sql = "select topic, qos from mqtt_sub where clientid = ${clientid} # or clientid = ${clientid}""#;
    let line = error_line(&run_with(&env.write_config(&env.backend_block(hidden)), &bind));
    assert!(line.contains("mysql.select_subscriptions_sql") && line.contains("inside a comment (`#`"), "{line}");
    // MariaDB skips a `/*M!` comment for a version it is not: only the prepare can tell.
    let skipped = r#"select_subscriptions_sql = "select topic, qos from mqtt_sub where clientid = ${clientid} /*M!999999 or clientid = ${clientid} */""#;
    let line = error_line(&run_with(&env.write_config(&env.backend_block(skipped)), &bind));
    assert!(
        line.contains("mysql.select_subscriptions_sql: the database sees 1 parameters in this template, which has 2"),
        "{line}"
    );
}

#[tokio::test]
async fn a_parameter_of_the_templates_own_stops_start_up() {
    let env = TestEnv::new(Backend::Sqlite).await;
    let own = r#"select_subscriptions_sql = "select topic, qos from mqtt_sub where clientid = ${clientid} or clientid = :other""#;
    let line = error_line(&run_with(&env.write_config(&env.backend_block(own)), &format!("127.0.0.1:{}", env.port)));
    assert!(
        line.contains("sqlite.select_subscriptions_sql: the database sees 2 parameters in this template, which has 1"),
        "{line}"
    );
}

/// `broker.cluster` needs a binary built with the `cluster` feature: one built without it says how.
#[cfg(not(feature = "cluster"))]
#[tokio::test]
async fn a_cluster_config_without_the_cluster_feature_says_how_to_build_it() {
    let env = TestEnv::new(Backend::MySql).await;
    let config = env.write_config(&format!(
        "broker.cluster {{ mode = broadcast, node_id = 1, nodes = [\"1@127.0.0.1:{}\"] }}\n{}",
        common::free_port(),
        env.backend_block("")
    ));
    let line = error_line(&run_with(&config, &format!("127.0.0.1:{}", env.port)));
    assert!(
        line.contains("broker.cluster") && line.contains("--features cluster") && line.contains("protobuf-compiler"),
        "{line}"
    );
}

/// With the feature, a taken gRPC port names the key to change.
#[cfg(feature = "cluster")]
#[tokio::test]
async fn a_taken_cluster_port_names_the_key() {
    let env = TestEnv::new(Backend::MySql).await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let config = env.write_config(&format!(
        "broker.cluster {{ mode = broadcast, node_id = 1, nodes = [\"1@{addr}\", \"2@127.0.0.1:1\"] }}\n{}",
        env.backend_block("")
    ));
    let line = error_line(&run_with(&config, &format!("127.0.0.1:{}", env.port)));
    assert!(line.contains("broker.cluster.nodes: cannot listen on") && line.contains(&addr.to_string()), "{line}");
}

/// With `RUST_LOG=warn` the broker once stopped as soon as it served (the shutdown signal was
/// awaited inside an `info!` that the filter skipped): clients got `Connection reset by peer`.
#[tokio::test]
async fn a_quiet_log_level_keeps_the_broker_serving() {
    let env = TestEnv::new(Backend::Sqlite).await;
    let port = free_port();
    let mut child = Command::new(BIN)
        .args(["run", "--config"])
        .arg(env.write_config(&env.backend_block("")))
        .args(["--bind", &format!("127.0.0.1:{port}")])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    let mut published = 0;
    while published < 2 {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the broker stopped on its own ({status}) after {published} publishes");
        }
        assert!(start.elapsed() < LONG, "no publish went through within {LONG:?}");
        if mosquitto("mosquitto_pub", port, "quiet-log", "t", &["-m", "x"]).status.success() {
            published += 1;
        } else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
    assert!(matches!(child.try_wait(), Ok(None)), "the broker stopped on its own");
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let _ = child.wait();
}
