//! Replay that is right: delivery modes, QoS 0 subscribers, expiry, fidelity, shared subscriptions,
//! restore modes, retention, two brokers. Each test names the reference plugin's weakness it guards
//! against (the numbers of `shared/reference/emqx-offline-messages.md`).

#[macro_use]
mod common;

use std::time::Duration;

use common::{mosquitto, Backend, Broker, Client, TestEnv, LONG};
use rumqttc::QoS;

fn text(p: &rumqttc::Publish) -> String {
    String::from_utf8_lossy(&p.payload).into_owned()
}

async fn publish_all(env: &TestEnv, client_id: &str, topic: &str, payloads: &[&str]) {
    let mut p = Client::connect(env.port, client_id, true).await;
    for m in payloads {
        p.publish(topic, QoS::AtLeastOnce, false, *m).await;
    }
    p.disconnect().await;
}

// Weakness 5: the first ack deleted the message for every other subscriber.
on_every_backend!(fanout_gives_every_subscriber_every_message_once);
async fn fanout_gives_every_subscriber_every_message_once(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let _broker = env.start("delivery_mode = fanout").await;
    publish_all(&env, "fan-pub", "fan/t", &["a", "b", "c"]).await;
    env.wait_count("mqtt_msg", 3, LONG).await;
    for sub in ["fan-1", "fan-2"] {
        let mut s = Client::connect(env.port, sub, true).await;
        s.subscribe("fan/#", QoS::AtLeastOnce).await;
        let got: Vec<String> = s.recv(3, LONG).await.iter().map(text).collect();
        assert_eq!(got, ["a", "b", "c"], "{sub} gets every message");
        assert!(s.drain(Duration::from_millis(500)).await.is_empty());
        s.disconnect().await;
    }
    env.wait_count("mqtt_delivered", 6, LONG).await;
    assert_eq!(env.count("mqtt_msg").await, 3, "acks keep the rows: history stays queryable");

    // Each subscriber remembers what it has had: a new subscription gets only what is new.
    publish_all(&env, "fan-pub", "fan/t", &["d"]).await;
    env.wait_count("mqtt_msg", 4, LONG).await;
    let mut s = Client::connect(env.port, "fan-1", true).await;
    s.subscribe("fan/#", QoS::AtLeastOnce).await;
    assert_eq!(s.recv(1, LONG).await.iter().map(text).collect::<Vec<_>>(), ["d"]);
    assert!(s.drain(Duration::from_millis(700)).await.is_empty(), "nothing it acknowledged before");
    // A subscriber that never subscribed before starts from the oldest stored message.
    let mut s = Client::connect(env.port, "fan-3", true).await;
    s.subscribe("fan/t", QoS::AtLeastOnce).await;
    assert_eq!(s.recv(4, LONG).await.iter().map(text).collect::<Vec<_>>(), ["a", "b", "c", "d"]);
}

// Weakness 6: a QoS 0 subscriber never acks, so it got the same rows on every subscribe.
on_every_backend!(a_qos0_subscriber_gets_stored_rows_once_and_they_stay_for_others);
async fn a_qos0_subscriber_gets_stored_rows_once_and_they_stay_for_others(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let _broker = env.start("").await;
    publish_all(&env, "q0-pub", "q0/t", &["x", "y"]).await;
    env.wait_count("mqtt_msg", 2, LONG).await;
    let mut s = Client::connect(env.port, "q0-sub", true).await;
    s.subscribe("q0/t", QoS::AtMostOnce).await;
    assert_eq!(s.recv(2, LONG).await.iter().map(text).collect::<Vec<_>>(), ["x", "y"]);
    s.disconnect().await;
    env.wait_count("mqtt_delivered", 2, LONG).await;

    let mut s = Client::connect(env.port, "q0-sub", true).await;
    s.subscribe("q0/t", QoS::AtMostOnce).await;
    assert!(s.drain(Duration::from_secs(1)).await.is_empty(), "not again on the next subscribe");
    assert_eq!(env.count("mqtt_msg").await, 2, "the rows stay for subscribers that ack");

    // A live QoS 0 delivery counts too.
    s.subscribe("q0/live", QoS::AtMostOnce).await;
    publish_all(&env, "q0-pub", "q0/live", &["z"]).await;
    assert_eq!(s.recv(1, LONG).await.iter().map(text).collect::<Vec<_>>(), ["z"]);
    env.wait_count("mqtt_delivered", 3, LONG).await;
    s.disconnect().await;

    let mut q1 = Client::connect(env.port, "q1-sub", true).await;
    q1.subscribe("q0/#", QoS::AtLeastOnce).await;
    assert_eq!(q1.recv(3, LONG).await.iter().map(text).collect::<Vec<_>>(), ["x", "y", "z"]);
    env.wait_count("mqtt_msg", 0, LONG).await;
    // Redis keeps a client's records until its set expires (message_ttl): no foreign key there.
    if backend != Backend::Redis {
        assert_eq!(env.count("mqtt_delivered").await, 0, "delivery records go with their messages");
    }
}

// The reference restores stored subscriptions on every connect; `always` keeps that behaviour.
on_every_backend!(restore_always_brings_subscriptions_back_on_a_clean_start);
async fn restore_always_brings_subscriptions_back_on_a_clean_start(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let _broker = env.start("restore_subscriptions = always").await;
    // Another system provisions a subscription by inserting a row.
    env.provision_subscription("prov-1", "prov/#", 1).await;
    publish_all(&env, "prov-pub", "prov/a", &["one", "two"]).await;
    env.wait_count("mqtt_msg", 2, LONG).await;
    let mut c = Client::connect(env.port, "prov-1", true).await;
    assert_eq!(c.recv(2, LONG).await.iter().map(text).collect::<Vec<_>>(), ["one", "two"]);
    c.disconnect().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(env.subscriptions().await, vec![("prov-1".into(), "prov/#".into(), 1)], "kept after the session ends");

    publish_all(&env, "prov-pub", "prov/b", &["three"]).await;
    let mut c = Client::connect(env.port, "prov-1", true).await;
    assert_eq!(c.recv(1, LONG).await.iter().map(text).collect::<Vec<_>>(), ["three"]);
    // Live, too.
    publish_all(&env, "prov-pub", "prov/c", &["four"]).await;
    assert_eq!(c.recv(1, LONG).await.iter().map(text).collect::<Vec<_>>(), ["four"]);
    assert!(c.drain(Duration::from_millis(500)).await.is_empty());
}

// `always`, and a persistent session the broker still holds: a subscription provisioned in
// mqtt_sub while the client was away is restored (and replayed) on its reconnect, beside its own.
on_every_backend!(restore_always_adds_provisioned_subscriptions_to_a_resumed_session);
async fn restore_always_adds_provisioned_subscriptions_to_a_resumed_session(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let _broker = env.start("restore_subscriptions = always").await;
    let mut c = Client::connect(env.port, "prov-2", false).await;
    c.subscribe("own/t", QoS::AtLeastOnce).await;
    c.disconnect().await;
    env.provision_subscription("prov-2", "prov2/#", 1).await;
    publish_all(&env, "prov2-pub", "prov2/a", &["provisioned"]).await;
    publish_all(&env, "prov2-pub-b", "own/t", &["own"]).await; // queued by the broker for the session
    env.wait_count("mqtt_msg", 2, LONG).await;
    let mut c = Client::connect(env.port, "prov-2", false).await;
    let mut got = c.recv(2, LONG).await.iter().map(text).collect::<Vec<_>>();
    got.sort();
    assert_eq!(got, ["own", "provisioned"]);
    assert!(c.drain(Duration::from_millis(700)).await.is_empty(), "nothing twice");
}

// MQTT's sessions (restore_subscriptions = persistent): a session that expires by its Session
// Expiry Interval takes its stored subscriptions with it.
on_every_backend!(an_expired_session_takes_its_stored_subscriptions_along);
async fn an_expired_session_takes_its_stored_subscriptions_along(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let _broker = env.start("").await;
    let port = env.port;
    // A persistent MQTT 5 session (-c) that expires 2 s after the client leaves (-x 2).
    let out = tokio::task::spawn_blocking(move || {
        mosquitto("mosquitto_sub", port, "exp-1", "exp/t", &["-c", "-x", "2", "-W", "1"])
    })
    .await
    .unwrap();
    assert!(!String::from_utf8_lossy(&out.stderr).contains("rror"), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(env.subscriptions().await, vec![("exp-1".into(), "exp/t".into(), 1)], "kept while the session lives");
    env.wait_count("mqtt_sub", 0, LONG).await;
}

// Weakness 7: rows never expired.
on_every_backend!(expired_messages_are_never_replayed_and_are_purged);
async fn expired_messages_are_never_replayed_and_are_purged(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let _broker = env.start("message_ttl = 3s").await;
    publish_all(&env, "ttl-pub", "ttl/t", &["old-1", "old-2"]).await;
    env.wait_count("mqtt_msg", 2, LONG).await;
    tokio::time::sleep(Duration::from_millis(3200)).await;
    publish_all(&env, "ttl-pub", "ttl/t", &["fresh"]).await;
    let mut s = Client::connect(env.port, "ttl-sub", true).await;
    s.subscribe("ttl/t", QoS::AtLeastOnce).await;
    assert_eq!(s.recv(1, LONG).await.iter().map(text).collect::<Vec<_>>(), ["fresh"]);
    assert!(s.drain(Duration::from_millis(500)).await.is_empty(), "expired rows are not replayed");
    // The background purge removes expired rows even when nobody subscribes.
    publish_all(&env, "ttl-pub", "ttl/other", &["unread"]).await;
    env.wait_count("mqtt_msg", 1, LONG).await;
    env.wait_count("mqtt_msg", 0, LONG).await;
}

// The replay itself leaves expired rows out, whether or not the purge has removed them yet (here
// it never does: its template deletes nothing).
on_both_backends!(an_expired_row_still_in_the_table_is_not_replayed);
async fn an_expired_row_still_in_the_table_is_not_replayed(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let _broker = env
        .start(r#"message_ttl = 1s, purge_expired_sql = "delete from mqtt_msg where 1 = 0 and expiry <= ${now}""#)
        .await;
    publish_all(&env, "ttl2-pub", "ttl2/t", &["old"]).await;
    env.wait_count("mqtt_msg", 1, LONG).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    publish_all(&env, "ttl2-pub", "ttl2/t", &["fresh"]).await;
    env.wait_count("mqtt_msg", 2, LONG).await;
    let mut s = Client::connect(env.port, "ttl2-sub", true).await;
    s.subscribe("ttl2/t", QoS::AtLeastOnce).await;
    assert_eq!(s.recv(1, LONG).await.iter().map(text).collect::<Vec<_>>(), ["fresh"]);
    assert!(s.drain(Duration::from_millis(500)).await.is_empty(), "the expired row is not replayed");
    assert_eq!(env.count("mqtt_msg").await, 1, "the expired row is still there, unpurged");
}

// MQTT 4.7.2: a filter starting with a wildcard does not match topics starting with `$`; the
// replay follows the same rule (the reference replayed nothing for wildcards at all).
on_every_backend!(dollar_topics_are_not_replayed_to_a_leading_wildcard);
async fn dollar_topics_are_not_replayed_to_a_leading_wildcard(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let _broker = env.start(r##"topics = ["#", "$app/#"]"##).await;
    publish_all(&env, "dollar-pub", "$app/x", &["dollar"]).await;
    publish_all(&env, "plain-pub", "app/x", &["plain"]).await;
    env.wait_count("mqtt_msg", 2, LONG).await;
    for (id, filter) in [("dollar-hash", "#"), ("dollar-plus", "+/x")] {
        let mut s = Client::connect_with(env.port, id, true, true).await; // never acks: rows stay
        s.subscribe(filter, QoS::AtLeastOnce).await;
        assert_eq!(s.recv(1, LONG).await.iter().map(text).collect::<Vec<_>>(), ["plain"], "{filter}");
        assert!(s.drain(Duration::from_millis(500)).await.is_empty(), "{filter} gets no $-topic");
    }
    let mut s = Client::connect(env.port, "dollar-named", true).await;
    s.subscribe("$app/#", QoS::AtLeastOnce).await;
    assert_eq!(s.recv(1, LONG).await.iter().map(text).collect::<Vec<_>>(), ["dollar"]);
}

// A message accepted before the subscribe but still in the writer's buffer is part of the replay.
on_every_backend!(messages_still_in_the_writers_buffer_are_replayed);
async fn messages_still_in_the_writers_buffer_are_replayed(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let _broker = env.start("batch_time = 30s").await;
    let mut p = Client::connect(env.port, "buf-pub", true).await;
    for m in ["b1", "b2", "b3"] {
        p.publish("buf/t", QoS::AtLeastOnce, false, m).await;
    }
    assert_eq!(env.count("mqtt_msg").await, 0, "still buffered: batch_time is 30 s");
    let mut s = Client::connect(env.port, "buf-sub", true).await;
    s.subscribe("buf/#", QoS::AtLeastOnce).await;
    let got: Vec<Vec<u8>> = s.recv(3, LONG).await.into_iter().map(|m| m.payload.to_vec()).collect();
    assert_eq!(got, [b"b1".to_vec(), b"b2".to_vec(), b"b3".to_vec()], "all, in publish order");
}

// Weaknesses 7 and 8: MQTT 5 expiry was ignored and MQTT 5 properties were lost.
on_every_backend!(mqtt5_properties_and_the_remaining_expiry_come_back_on_replay);
async fn mqtt5_properties_and_the_remaining_expiry_come_back_on_replay(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let _broker = env.start("").await;
    let port = env.port;
    let props: &[&str] = &[
        "-D",
        "publish",
        "content-type",
        "text/plain",
        "-D",
        "publish",
        "user-property",
        "k1",
        "v1",
        "-D",
        "publish",
        "user-property",
        "k2",
        "v2",
        "-D",
        "publish",
        "response-topic",
        "reply/here",
        "-D",
        "publish",
        "correlation-data",
        "abc123",
        "-D",
        "publish",
        "payload-format-indicator",
        "1",
        "-D",
        "publish",
        "message-expiry-interval",
        "120",
    ];
    // The short-lived one first: replayed in publish order, it would be the one mosquitto_sub takes.
    let out = mosquitto(
        "mosquitto_pub",
        port,
        "p5-pub-2",
        "p5/b",
        &["-m", "short-lived", "-D", "publish", "message-expiry-interval", "1"],
    );
    assert!(out.status.success());
    let out = mosquitto("mosquitto_pub", port, "p5-pub", "p5/a", &[&["-m", "hello"], props].concat());
    assert!(out.status.success(), "mosquitto_pub: {}", String::from_utf8_lossy(&out.stderr));
    env.wait_count("mqtt_msg", 2, LONG).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let out = tokio::task::spawn_blocking(move || {
        mosquitto("mosquitto_sub", port, "p5-sub", "p5/#", &["-C", "1", "-W", "30", "-F", "%t|%p|%C|%E|%R|%D|%P|%F"])
    })
    .await
    .unwrap();
    assert!(out.status.success(), "mosquitto_sub: {}", String::from_utf8_lossy(&out.stderr));
    let line = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let fields: Vec<&str> = line.split('|').collect();
    assert_eq!(
        (fields[0], fields[1], fields[2], fields[4], fields[5], fields[6], fields[7]),
        ("p5/a", "hello", "text/plain", "reply/here", "abc123", "k1:v1 k2:v2", "1"),
        "{line}"
    );
    let remaining: u32 = fields[3].parse().unwrap();
    assert!((100..=118).contains(&remaining), "the expiry left goes out, not the 120 s published: {line}");
    // The expired one, published first, was not replayed: the first message out is p5/a.
    env.wait_count("mqtt_msg", 0, LONG).await;
}

// Weakness 8: `blob` cut payloads at 64 KiB and `datetime` dropped the milliseconds.
on_every_backend!(large_payloads_and_millisecond_times_are_kept);
async fn large_payloads_and_millisecond_times_are_kept(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let _broker = env.start("").await;
    let big: Vec<u8> = (0..600_000u32).map(|i| (i % 251) as u8).collect();
    let before = mqtt_offline_messages::engine::now_ms();
    publish_all_bytes(&env, "big-pub", "big/t", &big).await;
    let after = mqtt_offline_messages::engine::now_ms();
    env.wait_count("mqtt_msg", 1, LONG).await;
    let row = env.messages().await.remove(0);
    assert_eq!(row.payload.len(), big.len(), "the whole payload is stored");
    assert!(row.payload == big);
    assert!(
        row.arrived_ms >= before && row.arrived_ms <= after,
        "millisecond time: {} in {before}..{after}",
        row.arrived_ms
    );
    let mut s = Client::connect(env.port, "big-sub", true).await;
    s.subscribe("big/t", QoS::AtLeastOnce).await;
    assert!(s.recv(1, LONG).await[0].payload.as_ref() == big.as_slice(), "and replayed whole");
}

async fn publish_all_bytes(env: &TestEnv, client_id: &str, topic: &str, payload: &[u8]) {
    let mut p = Client::connect(env.port, client_id, true).await;
    p.publish(topic, QoS::AtLeastOnce, false, payload.to_vec()).await;
    p.disconnect().await;
}

/// A payload beyond MySQL's max_allowed_packet (16 MiB here) fails alone, not its batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payload_beyond_max_allowed_packet_is_refused_alone() {
    let env = TestEnv::new(Backend::MySql).await;
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config = format!(
        "broker {{ max_packet_size = 40000000 }}\nmetrics {{ bind = \"127.0.0.1:{metrics_port}\" }}\n{}",
        env.backend_block("batch_time = 300ms")
    );
    let broker = Broker::start(&env.write_config(&config), env.port, env.dir.path().join("broker.log")).await;
    let mut p = Client::connect_with_max_packet(env.port, "huge-pub", 40_000_000).await;
    p.publish("huge/t", QoS::AtLeastOnce, false, "before").await;
    p.publish("huge/t", QoS::AtLeastOnce, false, vec![7u8; 17 << 20]).await;
    p.publish("huge/t", QoS::AtLeastOnce, false, "after").await;
    env.wait_count("mqtt_msg", 2, LONG).await;
    let payloads: Vec<Vec<u8>> = env.messages().await.into_iter().map(|r| r.payload).collect();
    assert_eq!(payloads, [b"before".to_vec(), b"after".to_vec()]);
    let log = broker.log_text();
    assert!(log.contains("max_allowed_packet"), "the log says why: {log}");
    let dead = env.dead_letters();
    assert_eq!(dead.len(), 1);
    assert!(dead[0]["reason"].as_str().unwrap().contains("max_allowed_packet"), "{:?}", dead[0]["reason"]);
    assert_eq!(
        dead[0]["payload_base64"].as_str().unwrap().len(),
        (17usize << 20).div_ceil(3) * 4,
        "the whole payload is kept"
    );
    let out = std::process::Command::new("curl")
        .args(["-s", &format!("http://127.0.0.1:{metrics_port}/metrics")])
        .output()
        .unwrap();
    let metrics = String::from_utf8_lossy(&out.stdout);
    for line in ["offline_messages_failed_total{reason=\"too_large\"} 1", "offline_messages_dead_lettered_total 1"] {
        assert!(metrics.lines().any(|l| l == line), "{line} in:\n{metrics}");
    }
}

// Weaknesses 3 and 9 for shared subscriptions: a group gets its backlog once, not once per member.
on_every_backend!(a_shared_subscription_group_gets_the_backlog_once);
async fn a_shared_subscription_group_gets_the_backlog_once(backend: Backend) {
    let env = TestEnv::new(backend).await;
    // Fanout keeps the rows, so a second replay would find them.
    let _broker = env.start("delivery_mode = fanout").await;
    publish_all(&env, "sh-pub", "sh/t", &["1", "2", "3"]).await;
    env.wait_count("mqtt_msg", 3, LONG).await;
    let mut m1 = Client::connect(env.port, "sh-m1", true).await;
    m1.subscribe("$share/g/sh/#", QoS::AtLeastOnce).await;
    assert_eq!(m1.recv(3, LONG).await.iter().map(text).collect::<Vec<_>>(), ["1", "2", "3"]);
    let mut m2 = Client::connect(env.port, "sh-m2", true).await;
    m2.subscribe("$share/g/sh/#", QoS::AtLeastOnce).await;
    assert!(m2.drain(Duration::from_secs(1)).await.is_empty(), "the group had its backlog");
    assert!(m1.drain(Duration::from_millis(300)).await.is_empty());
    // Another group, or a plain subscriber, has its own.
    let mut other = Client::connect(env.port, "sh-other", true).await;
    other.subscribe("$share/h/sh/#", QoS::AtLeastOnce).await;
    assert_eq!(other.recv(3, LONG).await.len(), 3);
}

// Retention: `max_messages_per_topic` keeps the newest.
on_every_backend!(max_messages_per_topic_drops_the_oldest);
async fn max_messages_per_topic_drops_the_oldest(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let _broker = env.start("max_messages_per_topic = 3").await;
    let many: Vec<String> = (0..10).map(|i| i.to_string()).collect();
    publish_all(&env, "cap-pub", "cap/a", &many.iter().map(String::as_str).collect::<Vec<_>>()).await;
    publish_all(&env, "cap-pub", "cap/b", &["b0", "b1"]).await;
    let expected = [("cap/a", "7"), ("cap/a", "8"), ("cap/a", "9"), ("cap/b", "b0"), ("cap/b", "b1")]
        .map(|(t, p)| (t.to_owned(), p.to_owned()));
    // The writer's batches land one after the other and the trim runs every second, so the count
    // may pass 5 on its way up: wait for the rows themselves.
    let start = std::time::Instant::now();
    let kept = loop {
        let kept: Vec<(String, String)> =
            env.messages().await.into_iter().map(|r| (r.topic, String::from_utf8(r.payload).unwrap())).collect();
        if kept == expected || start.elapsed() > LONG {
            break kept;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(kept, expected);
}

// More than one broker on one database: published on one, replayed on the other; acked there.
on_every_backend!(two_brokers_share_one_database);
async fn two_brokers_share_one_database(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let broker_a = env.start("").await;
    let (broker_b, port_b) = env.start_another("b", "").await;

    let mut pa = Client::connect(env.port, "two-pub-a", true).await;
    let mut pb = Client::connect(port_b, "two-pub-b", true).await;
    for i in 0..20 {
        pa.publish("two/t", QoS::AtLeastOnce, false, format!("a{i}")).await;
        pb.publish("two/t", QoS::AtLeastOnce, false, format!("b{i}")).await;
    }
    env.wait_count("mqtt_msg", 40, LONG).await;
    let ids: std::collections::HashSet<String> = env.messages().await.into_iter().map(|r| r.msgid).collect();
    assert_eq!(ids.len(), 40, "no message id collides");

    let mut s = Client::connect(port_b, "two-sub", true).await;
    s.subscribe("two/#", QoS::AtLeastOnce).await;
    let got: Vec<String> = s.recv(40, LONG).await.iter().map(text).collect();
    for publisher in ["a", "b"] {
        let mine: Vec<&String> = got.iter().filter(|m| m.starts_with(publisher)).collect();
        let expected: Vec<String> = (0..20).map(|i| format!("{publisher}{i}")).collect();
        assert_eq!(mine, expected.iter().collect::<Vec<_>>(), "in order per publisher");
    }
    // The acks on broker B delete what broker A stored.
    env.wait_count("mqtt_msg", 0, LONG).await;
    drop((broker_a, broker_b));
}

// In fanout mode, what a subscriber has had on one broker counts on the other.
on_every_backend!(two_brokers_in_fanout_mode_share_what_each_subscriber_has_had);
async fn two_brokers_in_fanout_mode_share_what_each_subscriber_has_had(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let _broker_a = env.start("delivery_mode = fanout").await;
    let (_broker_b, port_b) = env.start_another("b", "delivery_mode = fanout").await;

    publish_all(&env, "fb-pub", "fb/t", &["1", "2"]).await;
    env.wait_count("mqtt_msg", 2, LONG).await;
    let mut s = Client::connect(env.port, "fb-sub", true).await;
    s.subscribe("fb/t", QoS::AtLeastOnce).await;
    assert_eq!(s.recv(2, LONG).await.iter().map(text).collect::<Vec<_>>(), ["1", "2"]);
    s.disconnect().await;
    env.wait_count("mqtt_delivered", 2, LONG).await;

    let mut p = Client::connect(port_b, "fb-pub-b", true).await;
    p.publish("fb/t", QoS::AtLeastOnce, false, "3").await;
    env.wait_count("mqtt_msg", 3, LONG).await;
    let mut s = Client::connect(port_b, "fb-sub", true).await;
    s.subscribe("fb/t", QoS::AtLeastOnce).await;
    assert_eq!(s.recv(1, LONG).await.iter().map(text).collect::<Vec<_>>(), ["3"], "only what it has not had");
    assert!(s.drain(Duration::from_millis(700)).await.is_empty());
    assert_eq!(env.count("mqtt_msg").await, 3);
}

/// The plan the database picks for the default `select_message_sql` with `values` bound.
async fn plan(env: &TestEnv, values: (&str, i64, i64, &str, i64)) -> String {
    use mqtt_offline_messages::config::Templates;
    use mqtt_offline_messages::template::{Dialect, SqlTemplate, SELECT_MESSAGE_VARS};
    use sqlx::Row;
    let (like, after, now, client, limit) = values;
    let (templates, explain, dialect) = match env.backend {
        Backend::MySql => (Templates::mysql_default(), "EXPLAIN ", Dialect::MySql),
        Backend::Sqlite => (Templates::sqlite_default(), "EXPLAIN QUERY PLAN ", Dialect::Sqlite),
        Backend::Redis => unreachable!("an SQL-only test"),
    };
    let t =
        SqlTemplate::parse(dialect, "select_message_sql", &templates.select_message_sql, SELECT_MESSAGE_VARS).unwrap();
    let sql = sqlx::AssertSqlSafe(format!("{explain}{}", t.sql()));
    // The default's placeholders, in order: topic_like, after_id, now, clientid, limit.
    macro_rules! rows {
        ($c:expr) => {
            sqlx::query(sql).bind(like).bind(after).bind(now).bind(client).bind(limit).fetch_all($c).await.unwrap()
        };
    }
    match env.backend {
        Backend::MySql => {
            let mut c = env.mysql().await;
            let rows = rows!(&mut c);
            rows.iter()
                .map(|r| format!("{}:{:?}", r.get::<String, _>("table"), r.get::<Option<String>, _>("key")))
                .collect::<Vec<_>>()
                .join(" ")
        }
        Backend::Sqlite => {
            let mut c = env.sqlite().await;
            sqlx::raw_sql("PRAGMA case_sensitive_like = ON").execute(&mut c).await.unwrap();
            let rows = rows!(&mut c);
            rows.iter().map(|r| r.get::<String, _>("detail")).collect::<Vec<_>>().join(" | ")
        }
        Backend::Redis => unreachable!("an SQL-only test"),
    }
}

// Weakness 3, the cost side: a filter with a literal prefix reads only that prefix's rows.
on_both_backends!(the_default_select_reads_a_prefix_through_the_topic_index);
async fn the_default_select_reads_a_prefix_through_the_topic_index(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let broker = env.start("").await;
    drop(broker);
    let fill = match backend {
        Backend::MySql => "insert into mqtt_msg(msgid, topic, sender, qos, payload, arrived) select concat('m', seq), concat('t', seq mod 200, '/x/', seq mod 7), 's', 1, 'p', now() from seq_1_to_20000",
        Backend::Sqlite => "with recursive n(i) as (select 1 union all select i + 1 from n where i < 20000) insert into mqtt_msg(msgid, topic, sender, qos, payload, arrived) select 'm' || i, 't' || (i % 200) || '/x/' || (i % 7), 's', 1, 'p', 0 from n",
        Backend::Redis => unreachable!("an SQL-only test"),
    };
    env.execute(fill).await;
    env.execute(if backend == Backend::MySql { "analyze table mqtt_msg" } else { "analyze" }).await;
    let p = plan(&env, ("t17/%", 0, 0, "c", 1000)).await;
    assert!(p.contains("topic_index"), "the prefix is read through topic_index: {p}");
}
