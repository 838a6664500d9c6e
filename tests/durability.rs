//! Durability: what a PUBACK promises in each `write_mode`, and what survives a killed broker.

#[macro_use]
mod common;

use std::collections::HashSet;

use common::{Backend, Client, TestEnv, LONG};
use rumqttc::QoS;

// `sync`: the PUBACK comes once the row is committed, not `batch_time` later.
on_both_backends!(sync_mode_acknowledges_a_publish_once_it_is_committed);
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
on_both_backends!(sigkill_in_sync_mode_loses_no_acknowledged_message);
async fn sigkill_in_sync_mode_loses_no_acknowledged_message(backend: Backend) {
    const PUBLISHERS: usize = 8;
    let env = TestEnv::new(backend).await;
    let mut broker = env.start("write_mode = sync").await;
    let mut tasks = Vec::new();
    for k in 0..PUBLISHERS {
        let mut c = Client::connect(env.port, &format!("kill-pub-{k}"), true).await;
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0.. {
                let payload = format!("{k}-{i}");
                if !c.try_publish("kill/t", payload.clone()).await {
                    break;
                }
                acked.push(payload);
            }
            acked
        }));
    }
    // Kill once some, but not all, acknowledgements are out.
    env.wait_count_at_least("mqtt_msg", 300, LONG).await;
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
    assert!(acked.len() >= 300, "the load ran");
    assert!(missing.is_empty(), "acknowledged but not stored: {missing:?}");
    assert_eq!(stored.len(), stored_set.len(), "no message stored twice");
}

// A batch written again (a commit whose answer was lost, then a retry) stores each message once:
// the default insert ignores a message id already stored.
on_both_backends!(a_batch_written_twice_stores_each_message_once);
async fn a_batch_written_twice_stores_each_message_once(backend: Backend) {
    use mqtt_offline_messages::message::{Message, Publish};
    use mqtt_offline_messages::message_id::MessageIdGenerator;
    use mqtt_offline_messages::store::{Batch, Store};
    let env = TestEnv::new(backend).await;
    let config = mqtt_offline_messages::config::Config::parse_str(&env.backend_block("")).unwrap();
    let store = Store::connect(&config.backend).await.unwrap();
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
    let (away, back) = match backend {
        Backend::MySql => ("rename table mqtt_msg to mqtt_msg_away", "rename table mqtt_msg_away to mqtt_msg"),
        Backend::Sqlite => {
            ("alter table mqtt_msg rename to mqtt_msg_away", "alter table mqtt_msg_away rename to mqtt_msg")
        }
    };
    env.execute(away).await;
    let mut s = Client::connect(env.port, "retry-sub", true).await;
    s.subscribe("retry/t", QoS::AtLeastOnce).await;
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert!(broker.log_text().contains("replay failed; retrying"), "the failure is logged");
    env.execute(back).await;
    let got: Vec<String> =
        s.recv(3, LONG).await.iter().map(|m| String::from_utf8_lossy(&m.payload).into_owned()).collect();
    assert_eq!(got, ["r1", "r2", "r3"], "replayed once the database answers again");
}
