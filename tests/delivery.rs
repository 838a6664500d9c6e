//! What reaches a subscriber and when its ack counts: retained messages, shared and literal
//! filters, acks matched by message id, unsubscribes during a replay, and the broker's own session
//! settings.

#[macro_use]
mod common;

use std::time::Duration;

use common::{Backend, Client, Client5, TestEnv, LONG};
use rumqttc::QoS;

/// A client of either MQTT version, for scenarios that must hold on both.
enum Mqtt {
    V3(Client),
    V5(Client5),
}

/// What a test compares of a received publish: topic, payload, retain flag.
type Got = (String, Vec<u8>, bool);

impl Mqtt {
    async fn connect(v5: bool, port: u16, id: &str) -> Mqtt {
        if v5 {
            Mqtt::V5(Client5::connect(port, id, true, None).await)
        } else {
            Mqtt::V3(Client::connect(port, id, true).await)
        }
    }

    async fn publish(&mut self, topic: &str, qos: u8, retain: bool, payload: &str) {
        match self {
            Mqtt::V3(c) => c.publish(topic, qos3(qos), retain, payload).await,
            Mqtt::V5(c) => c.publish(topic, qos, retain, payload).await,
        }
    }

    async fn subscribe(&mut self, filter: &str, qos: u8) {
        match self {
            Mqtt::V3(c) => c.subscribe(filter, qos3(qos)).await,
            Mqtt::V5(c) => c.subscribe(filter, qos).await,
        }
    }

    /// Everything that arrives until nothing has for `quiet`, sorted.
    async fn drain(&mut self, quiet: Duration) -> Vec<Got> {
        let mut got: Vec<Got> = match self {
            Mqtt::V3(c) => c.drain(quiet).await.into_iter().map(|p| (p.topic, p.payload.to_vec(), p.retain)).collect(),
            Mqtt::V5(c) => c
                .drain(quiet)
                .await
                .into_iter()
                .map(|p| (String::from_utf8(p.topic.to_vec()).unwrap(), p.payload.to_vec(), p.retain))
                .collect(),
        };
        got.sort();
        got
    }
}

fn qos3(qos: u8) -> QoS {
    rumqttc::qos(qos).unwrap()
}

fn got(topic: &str, payload: &str, retain: bool) -> Got {
    (topic.to_owned(), payload.as_bytes().to_vec(), retain)
}

/// What MQTT's interoperability suites check of retained messages, with a backend block that sets
/// no `message_ttl` (as every config moved over from the reference): retained messages at QoS 0,
/// 1 and 2 reach a later wildcard subscriber once each, a newer one replaces the older, an empty
/// payload clears one, and one that is also stored is not delivered a second time by the replay.
async fn retained_messages_without_message_ttl(backend: Backend, v5: bool) {
    let env = TestEnv::new(backend).await;
    let _broker = env.start("").await;
    let mut p = Mqtt::connect(v5, env.port, "ret-pub").await;
    p.publish("ret/q0", 0, true, "a0").await;
    p.publish("ret/q1", 1, true, "a1").await;
    p.publish("ret/q2", 2, true, "a2").await;
    p.publish("ret/q1", 1, true, "b1").await;
    p.publish("ret/gone", 0, true, "x").await;
    p.publish("ret/gone", 0, true, "").await;
    env.wait_count("mqtt_msg", 3, LONG).await;

    let mut s = Mqtt::connect(v5, env.port, "ret-sub").await;
    s.subscribe("ret/#", 2).await;
    let expected = [
        got("ret/q0", "a0", true),
        // Stored and no longer the retained one: the replay delivers it, as any stored message.
        got("ret/q1", "a1", false),
        got("ret/q1", "b1", true),
        got("ret/q2", "a2", true),
    ];
    let mut received = Vec::new();
    let start = std::time::Instant::now();
    while received.len() < expected.len() && start.elapsed() < LONG {
        received.extend(s.drain(Duration::from_millis(500)).await);
    }
    received.extend(s.drain(Duration::from_secs(1)).await);
    received.sort();
    assert_eq!(received, expected, "each once, the cleared topic not at all");
    env.wait_count("mqtt_msg", 0, LONG).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_messages_without_message_ttl_mqtt311() {
    retained_messages_without_message_ttl(Backend::MySql, false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_messages_without_message_ttl_mqtt5() {
    retained_messages_without_message_ttl(Backend::Sqlite, true).await
}

/// `$queue/x` is, to rmqtt 0.24 as to MQTT 5, the literal filter `$queue/x`, not a share of `x`:
/// a client that the ACL allows `$queue/#` and nothing else neither reads nor consumes the stored
/// rows of `secret/x`, and gets the rows of the topic `$queue/secret/x` its filter names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_prefix_is_a_literal_filter_and_does_not_open_other_topics() {
    let env = TestEnv::new(Backend::Sqlite).await;
    let hash = mqtt_offline_messages::auth::hash_password;
    let auth = format!(
        r##"auth {{
  users = [
    {{ username = "writer", password_hash = "{}" }}
    {{ username = "reader", password_hash = "{}" }}
  ]
  acl = [
    {{ username = "writer", action = publish, topic = "#", permission = allow }}
    {{ username = "writer", action = publish, topic = "$queue/#", permission = allow }}
    {{ username = "reader", action = subscribe, topic = "secret/#", permission = deny }}
    {{ username = "reader", action = subscribe, topic = "$queue/#", permission = allow }}
  ]
}}
"##,
        hash("writer-pw"),
        hash("reader-pw")
    );
    let config = env.write_config(&format!("{auth}{}", env.backend_block(r##"topics = ["#", "$queue/#"]"##)));
    let _broker = common::Broker::start(&config, env.port, env.dir.path().join("broker.log")).await;
    let mut w = Client::connect_as(env.port, "w", "writer", "writer-pw").await;
    w.publish("secret/x", QoS::AtLeastOnce, false, "secret").await;
    w.publish("$queue/secret/x", QoS::AtLeastOnce, false, "literal").await;
    env.wait_count("mqtt_msg", 2, LONG).await;

    let mut r = Client::connect_as(env.port, "r", "reader", "reader-pw").await;
    r.subscribe("$queue/secret/x", QoS::AtLeastOnce).await;
    let got = r.recv(1, LONG).await;
    assert_eq!((got[0].topic.as_str(), &got[0].payload[..]), ("$queue/secret/x", &b"literal"[..]));
    assert!(r.drain(Duration::from_secs(1)).await.is_empty(), "nothing of secret/x");
    env.wait_count("mqtt_msg", 1, LONG).await;
    let left: Vec<String> = env.messages().await.into_iter().map(|m| m.topic).collect();
    assert_eq!(left, ["secret/x"], "the secret row is not consumed");
}
