//! The documentation's promises: every example query in docs/schema.md runs on both databases,
//! and docs/configuration.md documents every key the config parser accepts.

#[macro_use]
mod common;

use common::{Backend, Client, TestEnv, LONG};
use rumqttc::QoS;
use sqlx::Row;

/// The SQL blocks of docs/schema.md fenced as ```sql <dialect>.
fn examples(dialect: &str) -> Vec<String> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/schema.md")).unwrap();
    let fence = format!("```sql {dialect}\n");
    text.split(fence.as_str()).skip(1).map(|rest| rest.split("```").next().unwrap().trim().to_owned()).collect()
}

on_both_backends!(every_example_query_in_the_schema_doc_runs);
async fn every_example_query_in_the_schema_doc_runs(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let _broker = env.start("delivery_mode = fanout").await;
    let mut p = Client::connect(env.port, "sensor-7", true).await;
    for i in 0..12 {
        p.publish("site/1/temp", QoS::AtLeastOnce, false, format!("t{i}")).await;
    }
    p.publish("site/2/hum", QoS::AtLeastOnce, false, "h").await;
    env.wait_count("mqtt_msg", 13, LONG).await;
    let dialect = if backend == Backend::MySql { "mysql" } else { "sqlite" };
    let queries = examples(dialect);
    assert!(queries.len() >= 6, "the examples are found: {queries:?}");
    let mut results = Vec::new();
    for sql in &queries {
        let rows = with_conn!(env, c => sqlx::raw_sql(sqlx::AssertSqlSafe(sql.clone())).fetch_all(&mut c).await
            .unwrap_or_else(|e| panic!("{sql}: {e}")).len());
        results.push(rows);
    }
    // The first example: the last 10 of site/1/temp, newest first.
    let last = with_conn!(env, c => sqlx::raw_sql(sqlx::AssertSqlSafe(queries[0].clone())).fetch_all(&mut c).await.unwrap()
        .iter().map(|r| r.get::<Vec<u8>, _>("payload")).collect::<Vec<_>>());
    let expected: Vec<Vec<u8>> = (2..12).rev().map(|i| format!("t{i}").into_bytes()).collect();
    assert_eq!(last, expected);
    assert_eq!(results[1], 13, "messages from sensor-7 in the range");
    assert_eq!(results[2], 13, "everything under site/");
    assert_eq!(results[3], 13, "dashboard has had nothing yet");
    assert_eq!(results[4], 2, "two topics");
}

#[test]
fn the_configuration_reference_documents_every_key() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/configuration.md")).unwrap();
    let missing: Vec<String> =
        mqtt_offline_messages::config::known_keys().into_iter().filter(|k| !doc.contains(&format!("`{k}`"))).collect();
    assert!(missing.is_empty(), "keys missing from docs/configuration.md: {missing:?}");
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
        assert!(start.elapsed() < LONG, "the example never listened");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let mut p = Client::connect(env.port, "embedded-pub", true).await;
    p.publish("embedded/t", QoS::AtLeastOnce, false, "hello").await;
    env.wait_count("mqtt_msg", 1, LONG).await;
    let _ = std::process::Command::new("kill").args(["-INT", &child.id().to_string()]).status();
    assert!(child.wait().unwrap().success(), "it stops cleanly on SIGINT");
}
