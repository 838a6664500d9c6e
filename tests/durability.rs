//! Durability: what a PUBACK promises in each `write_mode`, and what survives a killed broker.

#[macro_use]
mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::{Backend, Client, TestEnv, LONG};
use rumqttc::QoS;

// `sync`: the PUBACK comes once the row is committed, not `batch_time` later.
on_every_backend!(sync_mode_acknowledges_a_publish_once_it_is_committed);
async fn sync_mode_acknowledges_a_publish_once_it_is_committed(backend: Backend) {
    let env = TestEnv::new(backend).await;
    // A writer that would otherwise hold rows for 30 s.
    let mut broker = env.start("write_mode = sync\nbatch_time = 30s").await;
    let mut p = Client::connect(env.port, "sync-pub", true).await;
    p.publish("sync/t", QoS::AtLeastOnce, false, "one").await;
    assert_eq!(env.count("mqtt_msg").await, 1, "stored before the PUBACK");
    p.publish("sync/t", QoS::ExactlyOnce, false, "two").await;
    assert_eq!(env.count("mqtt_msg").await, 2, "QoS 2 too (PUBREC)");
    p.disconnect().await;
    broker.stop();

    // The contrast: `async` acknowledges at once and writes within batch_time.
    let _broker = env.start("write_mode = async\nbatch_time = 30s").await;
    let mut p = Client::connect(env.port, "async-pub", true).await;
    p.publish("sync/t", QoS::AtLeastOnce, false, "three").await;
    assert_eq!(env.count("mqtt_msg").await, 2, "async: acknowledged before it is written");
}

// A broker killed with SIGKILL under load, in `sync` mode: every acknowledged message is stored,
// once.
on_every_backend!(sigkill_in_sync_mode_loses_no_acknowledged_message);
async fn sigkill_in_sync_mode_loses_no_acknowledged_message(backend: Backend) {
    const PUBLISHERS: usize = 8;
    let env = TestEnv::new(backend).await;
    let mut broker = env.start("write_mode = sync").await;
    let mut tasks = Vec::new();
    let acks = Arc::new(AtomicUsize::new(0));
    for k in 0..PUBLISHERS {
        let mut c = Client::connect(env.port, &format!("kill-pub-{k}"), true).await;
        let acks = acks.clone();
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0.. {
                let payload = format!("{k}-{i}");
                if !c.try_publish("kill/t", payload.clone()).await {
                    break;
                }
                acked.push(payload);
                acks.fetch_add(1, Ordering::Relaxed);
            }
            acked
        }));
    }
    // Kill once some, but not all, acknowledgements are out.
    let start = std::time::Instant::now();
    while acks.load(Ordering::Relaxed) < 300 {
        assert!(start.elapsed() < LONG, "no load: {} PUBACKs", acks.load(Ordering::Relaxed));
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    broker.kill();
    let mut acked = HashSet::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    let _restarted = env.start("write_mode = sync").await;
    let stored: Vec<String> = env.messages().await.into_iter().map(|r| String::from_utf8(r.payload).unwrap()).collect();
    let stored_set: HashSet<String> = stored.iter().cloned().collect();
    let missing: Vec<&String> = acked.iter().filter(|m| !stored_set.contains(*m)).collect();
    println!(
        "published and acknowledged {}, stored {}, acknowledged but missing {}",
        acked.len(),
        stored.len(),
        missing.len()
    );
    assert!(missing.is_empty(), "acknowledged but not stored: {missing:?}");
    assert_eq!(stored.len(), stored_set.len(), "no message stored twice");
}

// A batch written again (a commit whose answer was lost, then a retry) stores each message once:
// the default insert ignores a message id already stored.
on_every_backend!(a_batch_written_twice_stores_each_message_once);
async fn a_batch_written_twice_stores_each_message_once(backend: Backend) {
    use mqtt_offline_messages::message::{Message, Publish};
    use mqtt_offline_messages::message_id::MessageIdGenerator;
    use mqtt_offline_messages::store::{self, Batch};
    let env = TestEnv::new(backend).await;
    let config = mqtt_offline_messages::config::Config::parse_str(&env.backend_block("")).unwrap();
    let store = store::connect(&config.backend).await.unwrap();
    let ids = MessageIdGenerator::new(7);
    let message = |topic: &str| {
        let p = Publish {
            from: "twice".into(),
            topic: topic.into(),
            qos: 1,
            payload: "x".into(),
            timestamp_ms: 1,
            ..Publish::default()
        };
        Message::new(ids.next_id(), p, None)
    };
    let batch = Batch { inserts: vec![message("a"), message("b")], ..Batch::default() };
    store.write_batch(&batch).await.unwrap();
    store.write_batch(&batch).await.unwrap();
    assert_eq!(env.count("mqtt_msg").await, 2);
}

// A replay that fails on a database error is not skipped: it is tried again while the client keeps
// its subscription.
on_both_backends!(a_replay_that_fails_on_a_database_error_is_retried);
async fn a_replay_that_fails_on_a_database_error_is_retried(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let broker = env.start("").await;
    let mut p = Client::connect(env.port, "retry-pub", true).await;
    for m in ["r1", "r2", "r3"] {
        p.publish("retry/t", QoS::AtLeastOnce, false, m).await;
    }
    env.wait_count("mqtt_msg", 3, LONG).await;
    env.rename_table("mqtt_msg", "mqtt_msg_away").await;
    let mut s = Client::connect(env.port, "retry-sub", true).await;
    s.subscribe("retry/t", QoS::AtLeastOnce).await;
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert!(broker.log_text().contains("replay failed; retrying"), "the failure is logged");
    env.rename_table("mqtt_msg_away", "mqtt_msg").await;
    let got: Vec<String> =
        s.recv(3, LONG).await.iter().map(|m| String::from_utf8_lossy(&m.payload).into_owned()).collect();
    assert_eq!(got, ["r1", "r2", "r3"], "replayed once the database answers again");
}

// A replay that fails on a database error while the client is connected, and is still owed when
// the client goes away: a resumed session (clean start = false) gets it on reconnect, without what
// it had from the broker's own queue meanwhile, and nothing twice.
on_both_backends!(a_replay_owed_to_a_persistent_session_comes_when_it_reconnects);
async fn a_replay_owed_to_a_persistent_session_comes_when_it_reconnects(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let broker = env.start("").await;
    let mut p = Client::connect(env.port, "owed-pub", true).await;
    for m in ["o1", "o2", "o3"] {
        p.publish("owed/t", QoS::AtLeastOnce, false, m).await;
    }
    env.wait_count("mqtt_msg", 3, LONG).await;
    env.rename_table("mqtt_msg", "mqtt_msg_away").await;
    let mut s = Client::connect(env.port, "owed-sub", false).await;
    s.subscribe("owed/t", QoS::AtLeastOnce).await;
    broker.wait_for_log("replay failed; retrying").await;
    s.disconnect().await;
    broker.wait_for_log("replay owed to the session").await;
    p.publish("owed/t", QoS::AtLeastOnce, false, "o4").await; // queued by the broker for the session
    env.rename_table("mqtt_msg_away", "mqtt_msg").await;
    let mut s = Client::connect(env.port, "owed-sub", false).await;
    let mut got: Vec<String> =
        s.recv(4, LONG).await.iter().map(|m| String::from_utf8_lossy(&m.payload).into_owned()).collect();
    got.sort();
    assert_eq!(got, ["o1", "o2", "o3", "o4"]);
    assert!(s.drain(std::time::Duration::from_secs(1)).await.is_empty(), "nothing twice");
}

/// The broker's backend block for a private MariaDB.
fn private_block(db: &common::PrivateMariaDb, extra: &str) -> String {
    format!(
        "mysql {{\n enable = true\n server = \"127.0.0.1:{}\"\n username = root\n database = t\n init_default_schema = true\n topics = [\"#\"]\n dead_letter_file = \"{}\"\n spool_dir = \"{}\"\n {extra}\n}}\n",
        db.port,
        db.dir.path().join("dead.jsonl").display(),
        db.dir.path().join("spool").display()
    )
}

// The database stops (SIGSTOP) and dies (SIGKILL) while publishers publish: once it is back, every
// published message is stored exactly once, in order per publisher.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_stopped_and_killed_mid_stream_loses_and_duplicates_nothing() {
    const PUBLISHERS: usize = 4;
    const EACH: usize = 1500;
    let mut db = common::PrivateMariaDb::start(&[], &[]).await;
    db.sql_ok("CREATE DATABASE t");
    let env = TestEnv::new(Backend::Sqlite).await; // for its directory and port
    let config = env.write_config(&private_block(&db, "batch_time = 5ms"));
    let broker = common::Broker::start(&config, env.port, env.dir.path().join("broker.log")).await;
    let mut tasks = Vec::new();
    for k in 0..PUBLISHERS {
        let mut c = Client::connect(env.port, &format!("fault-pub-{k}"), true).await;
        tasks.push(tokio::spawn(async move {
            for i in 0..EACH {
                assert!(c.try_publish("fault/t", format!("{k}-{i}")).await, "publisher {k} cut off at {i}");
                tokio::time::sleep(std::time::Duration::from_micros(500)).await;
            }
        }));
    }
    let count = |db: &common::PrivateMariaDb| db.sql("select count(*) from t.mqtt_msg");
    let wait_for = |db: &common::PrivateMariaDb, n: usize| {
        let start = std::time::Instant::now();
        loop {
            let out = count(db);
            let stored: usize = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0);
            if stored >= n {
                return stored;
            }
            assert!(start.elapsed() < LONG, "stuck below {n} rows: {stored}");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    };
    wait_for(&db, 500);
    db.signal("STOP");
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    db.signal("CONT");
    let before_kill = wait_for(&db, 2500);
    db.kill_and_restart(std::time::Duration::from_secs(2)).await;
    for t in tasks {
        t.await.unwrap();
    }
    let total = PUBLISHERS * EACH;
    wait_for(&db, total);
    let rows = db.sql_ok("select payload from t.mqtt_msg order by id");
    let stored: Vec<&str> = rows.lines().collect();
    let dead = std::fs::read_to_string(db.dir.path().join("dead.jsonl")).unwrap_or_default().lines().count();
    println!(
        "published {total}, stored {}, stored before the kill {before_kill}, dead-lettered {dead}, retried batches logged: {}",
        stored.len(),
        broker.log_text().matches("writing a batch failed; retrying").count()
    );
    assert_eq!(stored.len(), total, "every message once");
    assert_eq!(dead, 0);
    for k in 0..PUBLISHERS {
        let mine: Vec<&str> = stored.iter().copied().filter(|p| p.starts_with(&format!("{k}-"))).collect();
        let expected: Vec<String> = (0..EACH).map(|i| format!("{k}-{i}")).collect();
        assert_eq!(mine, expected, "publisher {k}: in order, none missing, none twice");
    }
}

// A statement that hangs (here: behind a table lock another session holds; a frozen server or a
// cut cable alike) is given up after `query_timeout`: publishers keep getting their PUBACK, far
// beyond the writer's memory bound (`max_buffered`), because what it held goes to the spool; once
// the database answers, every message is stored once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_statement_is_given_up_and_publishers_go_on() {
    use sqlx::Connection;
    let db = common::PrivateMariaDb::start(&[], &[]).await;
    db.sql_ok("CREATE DATABASE t");
    let env = TestEnv::new(Backend::Sqlite).await; // for its directory and port
    let config = env.write_config(&private_block(&db, "query_timeout = 1s\n max_buffered = 100"));
    let broker = common::Broker::start(&config, env.port, env.dir.path().join("broker.log")).await;
    let mut c = Client::connect(env.port, "hang-pub", true).await;
    let sent: Vec<String> = (0..500).map(|i| format!("h{i}")).collect();
    for m in &sent[..100] {
        assert!(c.try_publish("hang/t", m.clone()).await);
    }
    let stored = |db: &common::PrivateMariaDb| db.sql_ok("select payload from t.mqtt_msg order by id");
    let start = std::time::Instant::now();
    while stored(&db).lines().count() < 100 {
        assert!(start.elapsed() < LONG, "the first 100 never landed");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let url = format!("mysql://root@127.0.0.1:{}/t", db.port);
    let mut locker = sqlx::MySqlConnection::connect(&url).await.unwrap();
    sqlx::raw_sql("LOCK TABLES mqtt_msg WRITE").execute(&mut locker).await.unwrap();
    for (i, m) in sent[100..].iter().enumerate() {
        assert!(
            c.try_publish("hang/t", m.clone()).await,
            "no PUBACK for message {} while the table is locked",
            i + 100
        );
    }
    let log = broker.log_text();
    sqlx::raw_sql("UNLOCK TABLES").execute(&mut locker).await.unwrap();
    assert!(log.contains("query_timeout") && log.contains("writes go to the on-disk spool"), "not given up: {log}");
    let start = std::time::Instant::now();
    while stored(&db).lines().count() < sent.len() {
        assert!(start.elapsed() < LONG, "the spool was not written");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let rows = stored(&db);
    println!("published {}, stored {}", sent.len(), rows.lines().count());
    assert_eq!(rows.lines().collect::<Vec<_>>(), sent, "every message once, in order");
}

// A subscription made while the database is down is kept and stored once it answers, so that a
// broker restart after the outage still restores it; an unsubscribe during the outage keeps its
// place in the order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_changes_during_an_outage_are_stored_when_the_database_returns() {
    let mut db = common::PrivateMariaDb::start(&[], &[]).await;
    db.sql_ok("CREATE DATABASE t");
    let env = TestEnv::new(Backend::Sqlite).await; // for its directory and port
    let config = env.write_config(&private_block(&db, "query_timeout = 2s"));
    let broker = common::Broker::start(&config, env.port, env.dir.path().join("broker.log")).await;
    db.kill();
    let mut c = Client::connect(env.port, "outage-sub", false).await;
    c.subscribe("kept/a", QoS::AtLeastOnce).await;
    c.subscribe("kept/b", QoS::AtLeastOnce).await;
    c.unsubscribe("kept/b").await;
    db.restart().await;
    let start = std::time::Instant::now();
    loop {
        let rows = db.sql_ok("select clientid, topic from t.mqtt_sub order by topic");
        if rows == "outage-sub\tkept/a" {
            break;
        }
        assert!(start.elapsed() < LONG, "the subscription made during the outage was not stored: {rows:?}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(broker.log_text().contains("subscription changes are kept in memory"), "the outage is logged");
}

// Started while the database is away, with a template the database cannot prepare: when the
// database answers, the failing check is logged loudly, `/health` names it, and the writes stay in
// the spool (none is written by a template that was never checked, none is lost).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_that_fails_when_the_database_first_answers_keeps_the_spool() {
    let mut db = common::PrivateMariaDb::start(&[], &[]).await;
    db.sql_ok("CREATE DATABASE t");
    db.kill();
    let env = TestEnv::new(Backend::Sqlite).await; // for its directory and port
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config = env.write_config(&format!(
        "metrics {{ bind = \"127.0.0.1:{metrics_port}\" }}\n{}",
        private_block(&db, r#"delete_message_sql = "delete from no_such_table where msgid = ${id}""#)
    ));
    let broker = common::Broker::start(&config, env.port, env.dir.path().join("broker.log")).await;
    let mut p = Client::connect(env.port, "check-pub", true).await;
    for i in 0..10 {
        assert!(p.try_publish("check/t", format!("{i}")).await, "PUBACK {i} with the database away");
    }
    db.restart().await;
    broker.wait_for_log("the database answers but the checks fail").await;
    let out = std::process::Command::new("curl")
        .args(["-s", "-w", "\n%{http_code}", &format!("http://127.0.0.1:{metrics_port}/health")])
        .output()
        .unwrap();
    let health = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(health.ends_with("503") && health.contains("mysql.delete_message_sql"), "{health}");
    assert_eq!(db.sql_ok("select count(*) from t.mqtt_msg"), "0", "nothing written before the checks pass");
    assert!(std::fs::read_dir(db.dir.path().join("spool")).unwrap().count() > 0, "the writes wait in the spool");
}

// SIGKILL in `sync` mode while the database is down: what got a PUBACK was synced to the spool,
// and a new broker writes it once the database is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_spooling_in_sync_mode_loses_no_acknowledged_message() {
    let mut db = common::PrivateMariaDb::start(&[], &[]).await;
    db.sql_ok("CREATE DATABASE t");
    let env = TestEnv::new(Backend::Sqlite).await; // for its directory and port
    let config = env.write_config(&private_block(&db, "write_mode = sync"));
    let mut broker = common::Broker::start(&config, env.port, env.dir.path().join("broker.log")).await;
    let mut c = Client::connect(env.port, "spool-kill-pub", true).await;
    assert!(c.try_publish("spool-kill/t", "before").await);
    db.kill();
    let mut acked = vec!["before".to_owned()];
    for i in 0..300 {
        let m = format!("down-{i}");
        assert!(c.try_publish("spool-kill/t", m.clone()).await, "PUBACK {i} with the database down");
        acked.push(m);
    }
    broker.kill();
    db.restart().await;
    let _restarted = common::Broker::start(&config, env.port, env.dir.path().join("broker.log")).await;
    let stored = || db.sql_ok("select payload from t.mqtt_msg order by id");
    let start = std::time::Instant::now();
    while stored().lines().count() < acked.len() {
        assert!(
            start.elapsed() < LONG,
            "acknowledged messages missing: {} of {}",
            stored().lines().count(),
            acked.len()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let rows = stored();
    println!("acknowledged {}, stored {}", acked.len(), rows.lines().count());
    assert_eq!(rows.lines().collect::<Vec<_>>(), acked, "each once, in order");
}

// Restoring stored subscriptions on connect is retried, too, when the database fails.
on_both_backends!(a_restore_that_fails_on_a_database_error_is_retried);
async fn a_restore_that_fails_on_a_database_error_is_retried(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let broker = env.start("restore_subscriptions = always").await;
    env.provision_subscription("rr", "rr/#", 1).await;
    let mut p = Client::connect(env.port, "rr-pub", true).await;
    for m in ["a", "b"] {
        p.publish("rr/t", QoS::AtLeastOnce, false, m).await;
    }
    env.wait_count("mqtt_msg", 2, LONG).await;
    env.rename_table("mqtt_sub", "mqtt_sub_away").await;
    let mut c = Client::connect(env.port, "rr", true).await;
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert!(broker.log_text().contains("reading stored subscriptions failed; retrying"), "the failure is logged");
    env.rename_table("mqtt_sub_away", "mqtt_sub").await;
    let got: Vec<String> =
        c.recv(2, LONG).await.iter().map(|m| String::from_utf8_lossy(&m.payload).into_owned()).collect();
    assert_eq!(got, ["a", "b"], "restored and replayed once the database answers again");
}

// The database goes away and stays away: publishes are acknowledged through the on-disk spool, the
// broker is stopped with the spool full, a new broker starts while the database is still away (and
// says so in /health), and once the database is back the spool is written: every message once, in
// order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_goes_to_the_spool_which_outlives_the_broker_and_a_start_without_the_database() {
    let mut db = common::PrivateMariaDb::start(&[], &[]).await;
    db.sql_ok("CREATE DATABASE t");
    let env = TestEnv::new(Backend::Sqlite).await; // for its directory and port
    let metrics_port = common::free_port();
    let config = env.write_config(&format!(
        "broker {{ shutdown_timeout = 6s }}\nmetrics {{ bind = \"127.0.0.1:{metrics_port}\" }}\n{}",
        private_block(&db, "")
    ));
    let mut broker = common::Broker::start(&config, env.port, env.dir.path().join("broker.log")).await;
    let stored = |db: &common::PrivateMariaDb| db.sql_ok("select count(*) from t.mqtt_msg").parse::<usize>().unwrap();
    let mut p = Client::connect(env.port, "spool-pub", true).await;
    for i in 0..100 {
        p.publish("spool/t", QoS::AtLeastOnce, false, format!("{i}")).await;
    }
    let start = std::time::Instant::now();
    while stored(&db) < 100 {
        assert!(start.elapsed() < LONG);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    db.kill();
    // With the database gone, publishes are still acknowledged: they go to the spool.
    let outage = std::time::Instant::now();
    for i in 100..1100 {
        assert!(p.try_publish("spool/t", format!("{i}")).await, "PUBACK {i} during the outage");
    }
    println!("1000 publishes acknowledged during the outage in {:?}", outage.elapsed());
    p.disconnect().await;
    assert_eq!(broker.stop(), Some(0), "SIGTERM with the database away still exits cleanly");
    let log = broker.log_text();
    assert_eq!(log.matches("writes go to the on-disk spool").count(), 1, "the outage is logged once: {log}");
    assert!(log.contains("written at the next start"));

    // A broker started while the database is still away starts, and spools.
    let mut broker = common::Broker::start(&config, env.port, env.dir.path().join("broker.log")).await;
    assert!(broker.log_text().contains("the database cannot be reached; until it answers"));
    let health = format!("http://127.0.0.1:{metrics_port}/health");
    let health_code = || {
        let out = std::process::Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", &health])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(health_code(), "503", "health says the database is away");
    let mut p = Client::connect(env.port, "spool-pub", true).await;
    for i in 1100..1200 {
        assert!(
            p.try_publish("spool/t", format!("{i}")).await,
            "PUBACK {i} from a broker started without its database"
        );
    }

    db.restart().await;
    let start = std::time::Instant::now();
    while stored(&db) < 1200 {
        assert!(start.elapsed() < LONG, "the spool was not written: {}", stored(&db));
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(broker.log_text().contains("schema and templates checked"));
    assert_eq!(health_code(), "200");
    let metrics = std::process::Command::new("curl")
        .args(["-s", &format!("http://127.0.0.1:{metrics_port}/metrics")])
        .output()
        .unwrap();
    let metrics = String::from_utf8_lossy(&metrics.stdout).into_owned();
    let value =
        |name: &str| metrics.lines().find_map(|l| l.strip_prefix(&format!("{name} "))).unwrap_or("?").to_owned();
    println!(
        "published 1200, stored {}, spooled by the second broker {}, dead-lettered {}",
        stored(&db),
        value("offline_messages_spooled_total"),
        value("offline_messages_dead_lettered_total")
    );
    let rows = db.sql_ok("select payload from t.mqtt_msg order by id");
    let payloads: Vec<usize> = rows.lines().map(|l| l.parse().unwrap()).collect();
    assert_eq!(payloads, (0..1200).collect::<Vec<_>>(), "every message once, in order");
    p.disconnect().await;
    broker.stop();
}

// In `sync` mode during an outage, a PUBACK means "synced to the spool", and the spool reaches the
// database when it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_mode_acknowledges_from_the_spool_during_an_outage() {
    let mut db = common::PrivateMariaDb::start(&[], &[]).await;
    db.sql_ok("CREATE DATABASE t");
    let env = TestEnv::new(Backend::Sqlite).await; // for its directory and port
    let config = env.write_config(&private_block(&db, "write_mode = sync"));
    let broker = common::Broker::start(&config, env.port, env.dir.path().join("broker.log")).await;
    let mut p = Client::connect(env.port, "sync-spool-pub", true).await;
    assert!(p.try_publish("sync/t", "before").await);
    db.kill();
    for i in 0..50 {
        assert!(p.try_publish("sync/t", format!("{i}")).await, "PUBACK {i} while the database is away");
    }
    assert!(broker.log_text().contains("writes go to the on-disk spool"));
    db.restart().await;
    let start = std::time::Instant::now();
    while db.sql_ok("select count(*) from t.mqtt_msg") != "51" {
        assert!(start.elapsed() < LONG, "the spool was not written");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

// The spool and the dead-letter file hold payloads: created 0600, in directories created 0700,
// whatever the umask.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spool_and_dead_letter_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let env = TestEnv::new(Backend::MySql).await;
    let private = env.dir.path().join("private");
    let (spool, dead) = (private.join("spool"), private.join("dead/letters.jsonl"));
    let files = format!("spool_dir = \"{}\"\ndead_letter_file = \"{}\"", spool.display(), dead.display());

    // A database that does not answer: the publish goes to the spool.
    let nobody = common::free_port();
    let mut broker = env.start(&format!("{files}\nserver = \"127.0.0.1:{nobody}\"")).await;
    let mut p = Client::connect(env.port, "private-pub", true).await;
    p.publish("private/t", QoS::AtLeastOnce, false, "spooled").await;
    let start = std::time::Instant::now();
    let segment = loop {
        let seg =
            std::fs::read_dir(&spool).unwrap().flatten().find(|e| e.path().extension().is_some_and(|x| x == "seg"));
        if let Some(seg) = seg.filter(|s| s.metadata().unwrap().len() > 0) {
            break seg.path();
        }
        assert!(start.elapsed() < LONG, "nothing spooled");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!((mode(&private), mode(&spool), mode(&segment), mode(&spool.join("lock"))), (0o700, 0o700, 0o600, 0o600));
    p.disconnect().await;
    broker.kill();

    // A row the database refuses (NULL in a NOT NULL column) goes to the dead-letter file.
    std::fs::remove_dir_all(&spool).unwrap();
    let refused = "insert_message_sql = \"insert into mqtt_msg(msgid, sender, topic, qos, retain, payload, arrived) values(${id}, ${from}, null, ${qos}, ${flags.retain}, ${payload}, now())\"";
    let _broker = env.start(&format!("{files}\n{refused}")).await;
    let mut p = Client::connect(env.port, "private-pub", true).await;
    p.publish("private/t", QoS::AtLeastOnce, false, "refused").await;
    let start = std::time::Instant::now();
    while !dead.exists() {
        assert!(start.elapsed() < LONG, "nothing dead-lettered");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!((mode(dead.parent().unwrap()), mode(&dead)), (0o700, 0o600));
}

// The spool's disk fills up during an outage: the append that fails is taken back (no fragment in
// front of later records), the batch waits in memory behind the spool, and once the database is
// back everything is written, once each, in publish order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spool_on_a_full_disk_loses_nothing_and_keeps_the_order() {
    const TOTAL: usize = 40;
    let mut db = common::PrivateMariaDb::start(&[], &[]).await;
    db.sql_ok("CREATE DATABASE t");
    let env = TestEnv::new(Backend::Sqlite).await; // for its directory and port
    let disk = common::Tmpfs::mount("2m");
    let config = env.write_config(&private_block(
        &db,
        &format!("spool_dir = \"{}\"\nbatch_size = 4\nmax_buffered = 8", disk.path().join("spool").display()),
    ));
    let broker = common::Broker::start(&config, env.port, env.dir.path().join("broker.log")).await;
    let p = Client::connect(env.port, "full-pub", true).await;
    db.kill();
    // 100 KiB each: twice what the disk holds. rumqttc queues them; PUBACKs come as the writer takes them.
    for i in 0..TOTAL {
        let mut payload = format!("{i:04}").into_bytes();
        payload.resize(100 << 10, b'.');
        p.client.publish("full/t", QoS::AtLeastOnce, false, payload).await.unwrap();
    }
    broker.wait_for_log("writing the spool failed").await;
    db.restart().await;
    let stored = || db.sql_ok("select count(*) from t.mqtt_msg").parse::<usize>().unwrap();
    let start = std::time::Instant::now();
    while stored() < TOTAL {
        assert!(start.elapsed() < 2 * LONG, "{} of {TOTAL} stored", stored());
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let order = db.sql_ok("select cast(left(payload, 4) as char) from t.mqtt_msg order by id");
    let expected: Vec<String> = (0..TOTAL).map(|i| format!("{i:04}")).collect();
    assert_eq!(order.lines().collect::<Vec<_>>(), expected, "each once, in publish order");
    drop(broker);
}

// The batch writer has connections of its own: with every other connection of the broker held by
// subscription statements waiting on a lock (clients connecting with persistent sessions while
// mqtt_sub is locked), publishes are still written at once, none through the spool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_subscription_statements_do_not_push_writes_into_the_spool() {
    use sqlx::Connection;
    const MESSAGES: i64 = 200;
    let env = TestEnv::new(Backend::MySql).await;
    let metrics_port = common::free_port();
    let config = env.write_config(&format!(
        "metrics {{ bind = \"127.0.0.1:{metrics_port}\" }}\n{}",
        env.backend_block("query_timeout = 120s")
    ));
    let _broker = common::Broker::start(&config, env.port, env.dir.path().join("broker.log")).await;
    let mut p = Client::connect(env.port, "busy-pub", true).await;

    let mut lock = env.mysql().await;
    sqlx::raw_sql("LOCK TABLES mqtt_sub WRITE").execute(&mut lock).await.unwrap();
    let port = env.port;
    let blocked: Vec<_> = (0..4)
        .map(|k| tokio::spawn(async move { Client::connect(port, &format!("busy-sub-{k}"), false).await }))
        .collect();
    let start = std::time::Instant::now();
    let waiting = format!(
        "select count(*) from information_schema.processlist where db = '{}' and state like '%lock%'",
        env.db_name
    );
    loop {
        let mut c = env.mysql().await;
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(waiting.clone())).fetch_one(&mut c).await.unwrap();
        if n >= 2 {
            break;
        }
        assert!(start.elapsed() < LONG, "the subscription reads never waited on the lock");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    for i in 0..MESSAGES {
        p.publish("busy/t", QoS::AtLeastOnce, false, i.to_string()).await;
    }
    env.wait_count("mqtt_msg", MESSAGES, LONG).await;
    let (_, metrics) = common::curl(&format!("http://127.0.0.1:{metrics_port}/metrics"));
    assert_eq!(common::metric(&metrics, "offline_messages_spooled_total"), 0.0, "written directly");
    lock.close().await.unwrap();
    for b in blocked {
        b.await.unwrap().disconnect().await;
    }
}

// A QoS 0 delivery of a stored message is recorded without the subscriber's session waiting for
// the writer: with the writer stuck on a locked table and its queue full, QoS 0 subscribers to `#`
// still get other traffic, and once the lock goes every delivery record lands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos0_delivery_records_never_hold_up_the_subscriber() {
    use sqlx::Connection;
    const SUBSCRIBERS: usize = 3;
    const STORED: i64 = 12;
    let env = TestEnv::new(Backend::MySql).await;
    let metrics_port = common::free_port();
    let config = env.write_config(&format!(
        "metrics {{ bind = \"127.0.0.1:{metrics_port}\" }}\n{}",
        env.backend_block("batch_size = 2\nmax_buffered = 4\nquery_timeout = 300s")
    ));
    let _broker = common::Broker::start(&config, env.port, env.dir.path().join("broker.log")).await;
    let mut subscribers = Vec::new();
    for k in 0..SUBSCRIBERS {
        let mut s = Client::connect(env.port, &format!("q0-sub-{k}"), true).await;
        s.subscribe("#", QoS::AtMostOnce).await;
        subscribers.push(s);
    }
    let stored_pub = Client::connect(env.port, "q0-pub", true).await;
    let mut live_pub = Client::connect(env.port, "q0-live", true).await;

    let mut lock = env.mysql().await;
    sqlx::raw_sql("LOCK TABLES mqtt_msg WRITE").execute(&mut lock).await.unwrap();
    for i in 0..STORED {
        stored_pub.client.publish("q0/stored", QoS::AtLeastOnce, false, i.to_string()).await.unwrap();
    }
    // The writer waits on the lock with its first batch, and its queue fills up.
    let start = std::time::Instant::now();
    loop {
        let (_, text) = common::curl(&format!("http://127.0.0.1:{metrics_port}/metrics"));
        if common::metric(&text, "offline_messages_writer_queue") >= 4.0 {
            break;
        }
        assert!(start.elapsed() < LONG, "the writer's queue never filled");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    live_pub.publish("q0/live", QoS::AtMostOnce, false, "ping").await;
    for s in &mut subscribers {
        while !s.recv(1, LONG).await.iter().any(|m| m.topic == "q0/live") {}
    }

    lock.close().await.unwrap();
    env.wait_count("mqtt_msg", STORED, LONG).await;
    env.wait_count("mqtt_delivered", STORED * SUBSCRIBERS as i64, LONG).await;
    let (_, text) = common::curl(&format!("http://127.0.0.1:{metrics_port}/metrics"));
    assert_eq!(common::metric(&text, "offline_messages_spooled_total"), 0.0);
}

// The subscription queue holds at most `max_buffered` changes: with mqtt_sub locked, clean-session
// connects (each queues the delete of the client's stored subscriptions) wait for room instead of
// growing the queue, and once the lock goes every client connects and its subscription is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_subscription_queue_is_bounded_and_loses_nothing() {
    use sqlx::Connection;
    const CLIENTS: usize = 12;
    let env = TestEnv::new(Backend::MySql).await;
    let metrics_port = common::free_port();
    let config = env.write_config(&format!(
        "metrics {{ bind = \"127.0.0.1:{metrics_port}\" }}\n{}",
        env.backend_block("max_buffered = 4\nquery_timeout = 300s")
    ));
    let _broker = common::Broker::start(&config, env.port, env.dir.path().join("broker.log")).await;
    let queued = || {
        let (_, text) = common::curl(&format!("http://127.0.0.1:{metrics_port}/metrics"));
        common::metric(&text, "offline_messages_subscription_queue")
    };
    let mut lock = env.mysql().await;
    sqlx::raw_sql("LOCK TABLES mqtt_sub WRITE").execute(&mut lock).await.unwrap();
    let port = env.port;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|k| {
            tokio::spawn(async move {
                let mut c = Client::connect(port, &format!("bq-{k}"), true).await;
                c.subscribe(&format!("bq/{k}"), QoS::AtLeastOnce).await;
                c
            })
        })
        .collect();
    let start = std::time::Instant::now();
    while queued() < 4.0 {
        assert!(start.elapsed() < LONG, "the subscription queue never filled");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(queued(), 4.0, "never more than max_buffered");
    lock.close().await.unwrap();
    for c in clients {
        c.await.unwrap();
    }
    env.wait_count("mqtt_sub", CLIENTS as i64, LONG).await;
    assert_eq!(queued(), 0.0);
}

// `mysql.server` lists several servers: the store connects to the first that answers (here the
// first listed is down), says so once, and stores and replays there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_server_of_mysql_server_that_answers_is_used() {
    let env = TestEnv::new(Backend::MySql).await;
    let down = common::free_port();
    let servers = format!("server = \"127.0.0.1:{down}, {}\"", common::MYSQL_SERVER);
    let broker = env.start(&servers).await;
    broker
        .wait_for_log(&format!(
            "mysql.server: 127.0.0.1:{down} does not answer; statements go to {} now",
            common::MYSQL_SERVER
        ))
        .await;
    let mut p = Client::connect(env.port, "first-pub", true).await;
    for i in 0..20 {
        p.publish("first/t", QoS::AtLeastOnce, false, format!("m{i}")).await;
    }
    env.wait_count("mqtt_msg", 20, LONG).await;
    let mut s = Client::connect(env.port, "first-sub", false).await;
    s.subscribe("first/#", QoS::AtLeastOnce).await;
    let got: Vec<String> =
        s.recv(20, LONG).await.iter().map(|m| String::from_utf8_lossy(&m.payload).into_owned()).collect();
    assert_eq!(got, (0..20).map(|i| format!("m{i}")).collect::<Vec<_>>(), "replayed from the server that answered");
}
