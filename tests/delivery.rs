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
    // QoS 0 first: the broker handles a connection's packets in order, so the acknowledgements of
    // the QoS 1 and 2 publishes that follow say these were handled too.
    p.publish("ret/q0", 0, true, "a0").await;
    p.publish("ret/gone", 0, true, "x").await;
    p.publish("ret/gone", 0, true, "").await;
    p.publish("ret/q1", 1, true, "a1").await;
    p.publish("ret/q2", 2, true, "a2").await;
    p.publish("ret/q1", 1, true, "b1").await;
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

/// The id that rides with a stored message to its ack never reaches a client: live, replayed and
/// retained deliveries carry exactly the user properties their publisher set. A publisher cannot
/// set one either: a property under the plugin's key that names another row deletes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_carried_id_never_reaches_a_client_and_cannot_be_forged() {
    use rumqttc::v5::mqttbytes::v5::PublishProperties;
    let env = TestEnv::new(Backend::MySql).await;
    let _broker = env.start("").await;
    let mut p = Client5::connect(env.port, "id-pub", true, None).await;
    p.publish("victim/t", 1, false, "victim").await;
    env.wait_count("mqtt_msg", 1, LONG).await;
    let victim = env.messages().await.remove(0).msgid;

    let mut live = Client5::connect(env.port, "id-live", true, None).await;
    live.subscribe("ids/#", 1).await;
    let props = |extra: Vec<(String, String)>| PublishProperties {
        user_properties: [vec![("k".to_owned(), "v".to_owned())], extra].concat(),
        ..PublishProperties::default()
    };
    let forged = vec![("mqtt-offline-messages/id".to_owned(), victim.clone())];
    p.publish_with("ids/live", 1, false, "live", props(forged)).await;
    p.publish_with("ids/stored", 1, false, "stored", props(vec![])).await;
    p.publish_with("ids/retained", 1, true, "retained", props(vec![])).await;
    let got = live.recv(3, LONG).await;
    let user_props = |got: &[rumqttc::v5::mqttbytes::v5::Publish]| -> Vec<Vec<(String, String)>> {
        got.iter().map(|m| m.properties.clone().unwrap_or_default().user_properties).collect()
    };
    assert_eq!(user_props(&got), vec![vec![("k".to_owned(), "v".to_owned())]; 3], "live: the publisher's only");
    // The live subscriber acked all three, by their own ids: only the victim is left.
    env.wait_count("mqtt_msg", 1, LONG).await;
    assert_eq!(env.messages().await[0].msgid, victim, "a forged id deletes nothing");

    live.disconnect().await;
    p.publish_with("ids/stored", 1, false, "stored", props(vec![])).await;
    p.publish_with("ids/retained", 1, true, "retained 2", props(vec![])).await;
    env.wait_count("mqtt_msg", 3, LONG).await;
    let mut later = Client5::connect(env.port, "id-later", true, None).await;
    later.subscribe("ids/#", 1).await;
    let got = later.recv(2, LONG).await;
    let mut kinds: Vec<(Vec<u8>, bool)> = got.iter().map(|m| (m.payload.to_vec(), m.retain)).collect();
    kinds.sort();
    assert_eq!(kinds, [(b"retained 2".to_vec(), true), (b"stored".to_vec(), false)], "retained and replayed");
    assert_eq!(user_props(&got), vec![vec![("k".to_owned(), "v".to_owned())]; 2], "the publisher's only");
    env.wait_count("mqtt_msg", 1, LONG).await;
}

/// A delivery the client did not ack before it went away is sent again when its session resumes
/// (from the session's in-flight window, where the id was moved at the first delivery): that ack
/// deletes the row too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ack_of_a_redelivery_to_a_resumed_session_deletes_its_row() {
    let env = TestEnv::new(Backend::Sqlite).await;
    let _broker = env.start("").await;
    let mut s = Client::connect_with(env.port, "redelivered", false, true).await;
    s.subscribe("again/t", QoS::AtLeastOnce).await;
    let mut p = Client::connect(env.port, "again-pub", true).await;
    p.publish("again/t", QoS::AtLeastOnce, false, "once more").await;
    assert_eq!(&s.recv(1, LONG).await[0].payload[..], b"once more");
    s.disconnect().await;
    env.wait_count("mqtt_msg", 1, LONG).await;

    let mut s = Client::connect(env.port, "redelivered", false).await;
    let again = s.recv(1, LONG).await;
    assert!(again[0].dup, "a redelivery");
    env.wait_count("mqtt_msg", 0, LONG).await;
}

/// An unsubscribe stops the subscription's replay: no stored row reaches the client after its
/// UNSUBACK, and none is consumed (queue mode). A new subscribe to the same filter gets a replay of
/// its own, of what is still stored, once each and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsubscribe_stops_the_replay_and_a_resubscribe_gets_its_own() {
    const N: usize = 1000;
    let env = TestEnv::new(Backend::Sqlite).await;
    let _broker = env.start("").await;
    let p = Client::connect(env.port, "un-pub", true).await;
    for i in 0..N {
        p.client.publish("un/t", QoS::AtLeastOnce, false, format!("{i:04}")).await.unwrap();
    }
    env.wait_count("mqtt_msg", N as i64, LONG).await;

    // It acks nothing yet: the broker's in-flight window fills and the replay waits with rows
    // queued in the session.
    let mut s = Client::connect_with(env.port, "un-sub", true, true).await;
    s.subscribe("un/t", QoS::AtLeastOnce).await;
    let mut first = s.recv(1, LONG).await;
    first.extend(s.drain(Duration::from_secs(1)).await);
    assert!(first.len() < N, "the replay waits for acks");
    s.unsubscribe("un/t").await;
    for m in &first {
        s.client.ack(m).await.unwrap();
    }
    assert!(s.drain(Duration::from_secs(2)).await.is_empty(), "nothing after the UNSUBACK");
    let left = (N - first.len()) as i64;
    env.wait_count("mqtt_msg", left, LONG).await;

    s.subscribe("un/t", QoS::AtLeastOnce).await;
    let mut again = Vec::new();
    while again.len() < N - first.len() {
        let m = s.recv(1, LONG).await.remove(0);
        s.client.ack(&m).await.unwrap();
        again.push(String::from_utf8(m.payload.to_vec()).unwrap());
    }
    let expected: Vec<String> = (first.len()..N).map(|i| format!("{i:04}")).collect();
    assert_eq!(again, expected, "the rest, once each, in order");
    assert!(s.drain(Duration::from_secs(1)).await.is_empty(), "no second replay");
    env.wait_count("mqtt_msg", 0, LONG).await;
}

/// A replay owed to a persistent session is the session's alone: a new session under the same
/// client id (MQTT 5, clean start with a session expiry) does not get it when it is resumed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owed_replay_does_not_reach_a_new_session_of_the_same_client() {
    let env = TestEnv::new(Backend::Sqlite).await;
    let broker = env.start("").await;
    let mut p = Client::connect(env.port, "owed-pub", true).await;
    for m in ["o1", "o2", "o3"] {
        p.publish("owed/t", QoS::AtLeastOnce, false, m).await;
    }
    env.wait_count("mqtt_msg", 3, LONG).await;
    env.rename_table("mqtt_msg", "mqtt_msg_away").await;
    let mut a = Client5::connect(env.port, "owed-sub", false, Some(300)).await;
    a.subscribe("owed/t", 1).await;
    broker.wait_for_log("replay failed; retrying").await;
    a.disconnect().await;
    broker.wait_for_log("replay owed to the session").await;
    env.rename_table("mqtt_msg_away", "mqtt_msg").await;

    // A new session, which gets the rows from its own subscribe and does not ack them.
    let mut b = Client5::connect_with(env.port, "owed-sub", true, Some(300), true).await;
    b.subscribe("owed/t", 1).await;
    assert_eq!(b.recv(3, LONG).await.len(), 3);
    b.disconnect().await;
    // Resumed: the broker sends the three again (unacked); an owed replay would add three more.
    let mut c = Client5::connect_with(env.port, "owed-sub", false, Some(300), true).await;
    let again = c.recv(3, LONG).await;
    assert!(again.iter().all(|m| m.dup), "redeliveries");
    assert!(c.drain(Duration::from_secs(2)).await.is_empty(), "not the earlier session's owed replay");
}

/// Starts the broker with `broker` keys of its own and the default backend block.
async fn start_with_broker_keys(env: &TestEnv, keys: &str) -> common::Broker {
    let config = env.write_config(&format!("broker {{\n{keys}\n}}\n{}", env.backend_block("")));
    common::Broker::start(&config, env.port, env.dir.path().join("broker.log")).await
}

/// `broker.max_mqueue_len` sizes a session's queue; a persistent session whose queue overflowed
/// while its client was away loses nothing stored: on resuming it gets what the queue kept, then
/// the stored messages the queue dropped, each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_offline_queue_loses_nothing_stored() {
    const N: usize = 50;
    const QUEUE: usize = 10;
    let env = TestEnv::new(Backend::MySql).await;
    let _broker = start_with_broker_keys(&env, &format!("max_mqueue_len = {QUEUE}")).await;
    let mut s = Client::connect(env.port, "overflow-sub", false).await;
    s.subscribe("of/t", QoS::AtLeastOnce).await;
    s.disconnect().await;
    let mut p = Client::connect(env.port, "overflow-pub", true).await;
    for i in 0..N {
        p.publish("of/t", QoS::AtLeastOnce, false, format!("m{i:02}")).await;
    }
    env.wait_count("mqtt_msg", N as i64, LONG).await;

    let mut s = Client::connect(env.port, "overflow-sub", false).await;
    let got: Vec<String> =
        s.recv(N, LONG).await.iter().map(|m| String::from_utf8(m.payload.to_vec()).unwrap()).collect();
    let kept = (N - QUEUE..N).map(|i| format!("m{i:02}"));
    let dropped = (0..N - QUEUE).map(|i| format!("m{i:02}"));
    assert_eq!(got, kept.chain(dropped).collect::<Vec<_>>(), "the kept queue, then what it dropped");
    assert!(s.drain(Duration::from_secs(1)).await.is_empty(), "each once");
    env.wait_count("mqtt_msg", 0, LONG).await;
}

/// `broker.session_expiry_interval` ends an MQTT 3.1.1 persistent session (and its stored
/// subscriptions) that long after its client left; rmqtt's own default is 2 hours.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mqtt311_session_expires_after_the_configured_interval() {
    let env = TestEnv::new(Backend::Sqlite).await;
    let _broker = start_with_broker_keys(&env, "session_expiry_interval = 1s").await;
    let mut s = Client::connect(env.port, "short-lived", false).await;
    s.subscribe("exp/t", QoS::AtLeastOnce).await;
    env.wait_count("mqtt_sub", 1, LONG).await;
    s.disconnect().await;
    env.wait_count("mqtt_sub", 0, LONG).await;
    let s = Client::connect(env.port, "short-lived", false).await;
    s.client.publish("exp/t", QoS::AtLeastOnce, false, "x").await.unwrap();
    let mut s = s;
    assert!(s.drain(Duration::from_secs(1)).await.is_empty(), "a new session, without the subscription");
}

/// `broker.message_expiry_interval`: how long a message without an MQTT 5 expiry waits in an
/// offline session's queue. Its row stays (no `message_ttl`): a new subscription replays it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_messages_expire_after_the_configured_interval() {
    let env = TestEnv::new(Backend::Sqlite).await;
    let _broker = start_with_broker_keys(&env, "message_expiry_interval = 1s").await;
    let mut s = Client::connect(env.port, "away", false).await;
    s.subscribe("mx/t", QoS::AtLeastOnce).await;
    s.disconnect().await;
    let mut p = Client::connect(env.port, "mx-pub", true).await;
    p.publish("mx/t", QoS::AtLeastOnce, false, "stale").await;
    env.wait_count("mqtt_msg", 1, LONG).await;
    // Past the interval: the queued copy expires in the broker.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut s = Client::connect(env.port, "away", false).await;
    assert!(s.drain(Duration::from_secs(1)).await.is_empty(), "expired in the queue");
    s.subscribe("mx/#", QoS::AtLeastOnce).await;
    assert_eq!(&s.recv(1, LONG).await[0].payload[..], b"stale", "still stored");
}
