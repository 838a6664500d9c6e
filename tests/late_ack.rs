//! An ack names its row however late it comes. A file of its own: it persists 300,000 messages,
//! and `cargo test` runs test files one after the other, so it does not starve the others.

mod common;

use std::time::Duration;

use common::{Backend, Client, TestEnv, LONG};
use rumqttc::QoS;

/// An ack names its row by the message id carried with the delivery, however many messages were
/// persisted in between (an index of recent messages forgot it after 200,000).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ack_after_300000_newer_messages_still_deletes_its_row() {
    const NEWER: usize = 300_000;
    const PUBLISHERS: usize = 6;
    let env = TestEnv::new(Backend::Sqlite).await;
    let _broker = env.start("batch_size = 20000\nbatch_time = 50ms").await;
    let mut p = Client::connect(env.port, "old-pub", true).await;
    p.publish("keep/t", QoS::AtLeastOnce, false, "old").await;
    env.wait_count("mqtt_msg", 1, LONG).await;
    let mut s = Client::connect_with(env.port, "late-acker", true, true).await;
    s.subscribe("keep/t", QoS::AtLeastOnce).await;
    let held = s.recv(1, LONG).await.remove(0);
    assert_eq!(&held.payload[..], b"old");

    let mut tasks = Vec::new();
    for n in 0..PUBLISHERS {
        let port = env.port;
        tasks.push(tokio::spawn(async move {
            let c = Client::connect(port, &format!("flood-{n}"), true).await;
            for i in 0..NEWER / PUBLISHERS {
                c.client.publish("flood/t", QoS::AtLeastOnce, false, format!("{n}-{i}")).await.unwrap();
            }
            c
        }));
    }
    let mut flooders = Vec::new();
    for t in tasks {
        flooders.push(t.await.unwrap());
    }
    env.wait_count("mqtt_msg", 1 + NEWER as i64, Duration::from_secs(600)).await;

    s.client.ack(&held).await.unwrap();
    env.wait_count("mqtt_msg", NEWER as i64, LONG).await;
    assert_eq!(env.exec("select count(*) from mqtt_msg where topic = 'keep/t'").await, Some(0));
    for c in flooders {
        c.disconnect().await;
    }
}
