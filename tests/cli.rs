//! The binary's start-up errors: one line, naming the key or flag, and what to do.

mod common;

use std::process::{Command, Output};

use common::{Backend, TestEnv, BIN};

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
