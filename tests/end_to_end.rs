//! End to end: the real broker binary, real MQTT clients, real MariaDB (and SQLite).

#[macro_use]
mod common;

use std::time::Duration;

use common::{mosquitto, payload, Backend, Client, TestEnv, LONG};
use rumqttc::QoS;

on_every_backend!(publishes_are_stored_with_every_field);
async fn publishes_are_stored_with_every_field(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let _broker = env.start("").await;
    let mut publisher = Client::connect(env.port, "pub-1", true).await;
    let before = mqtt_offline_messages::engine::now_ms();
    for i in 0..20 {
        publisher.publish("sensors/a/temp", QoS::AtLeastOnce, false, payload(i)).await;
    }
    publisher.publish("sensors/b", QoS::ExactlyOnce, false, b"qos2".to_vec()).await;
    env.wait_count("mqtt_msg", 21, LONG).await;
    let rows = env.messages().await;
    for (i, row) in rows[..20].iter().enumerate() {
        assert_eq!(row.topic, "sensors/a/temp");
        assert_eq!(row.sender, "pub-1");
        assert_eq!(row.qos, 1);
        assert_eq!(row.retain, 0);
        assert_eq!(row.payload, payload(i), "row {i} is in publish order and binary-safe");
        assert!(
            row.arrived_ms >= before && row.arrived_ms <= mqtt_offline_messages::engine::now_ms(),
            "arrived {} (milliseconds)",
            row.arrived_ms
        );
    }
    assert_eq!((rows[20].topic.as_str(), rows[20].qos, rows[20].payload.as_slice()), ("sensors/b", 2, &b"qos2"[..]));
    let ids: std::collections::HashSet<_> = rows.iter().map(|r| r.msgid.clone()).collect();
    assert_eq!(ids.len(), 21, "message ids are unique");
}

// Weakness 4: no ORDER BY, so replay order was whatever the database returned.
on_every_backend!(replay_of_a_large_backlog_in_order_then_acks_delete);
async fn replay_of_a_large_backlog_in_order_then_acks_delete(backend: Backend) {
    // Far more than rmqtt's per-session queue (max_mqueue_len = 1000): the replay must be paced.
    const N: usize = 5000;
    let env = TestEnv::new(backend).await;
    // Pages of 997 rows: the replay reads page after page (the last one short) and loses none.
    let _broker = env.start("replay_page_size = 997").await;
    let publisher = Client::connect(env.port, "pub-big", true).await;
    for i in 0..N {
        publisher.client.publish("backlog/t", QoS::AtLeastOnce, false, format!("m{i}")).await.unwrap();
    }
    env.wait_count("mqtt_msg", N as i64, LONG).await;

    let mut sub = Client::connect(env.port, "sub-big", true).await;
    sub.subscribe("backlog/t", QoS::AtLeastOnce).await;
    let got = sub.recv(N, LONG).await;
    let payloads: Vec<String> = got.iter().map(|p| String::from_utf8(p.payload.to_vec()).unwrap()).collect();
    let expected: Vec<String> = (0..N).map(|i| format!("m{i}")).collect();
    assert_eq!(payloads, expected, "every stored message, once, in publish order");
    assert!(sub.drain(Duration::from_millis(500)).await.is_empty(), "nothing twice");
    // rumqttc acknowledges each one; the first ack deletes the row.
    env.wait_count("mqtt_msg", 0, LONG).await;

    let mut second = Client::connect(env.port, "sub-second", true).await;
    second.subscribe("backlog/t", QoS::AtLeastOnce).await;
    assert!(second.drain(Duration::from_secs(1)).await.is_empty(), "acknowledged messages are never replayed");
}

// Weakness 9: a persistent session got a message from its own queue and again from the replay.
on_every_backend!(subscriptions_are_stored_restored_and_cleared);
async fn subscriptions_are_stored_restored_and_cleared(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let mut broker = env.start("").await;
    let mut client = Client::connect(env.port, "dev-1", false).await;
    client.subscribe("cmd/dev-1", QoS::AtLeastOnce).await;
    client.subscribe("cmd/all", QoS::AtLeastOnce).await;
    assert_eq!(
        env.subscriptions().await,
        vec![("dev-1".into(), "cmd/all".into(), 1), ("dev-1".into(), "cmd/dev-1".into(), 1)]
    );
    client.unsubscribe("cmd/all").await;
    assert_eq!(env.subscriptions().await, vec![("dev-1".into(), "cmd/dev-1".into(), 1)], "unsubscribe removes the row");
    client.disconnect().await;

    // Stored while the persistent session is offline: delivered on reconnect, once.
    let mut publisher = Client::connect(env.port, "ctl", true).await;
    publisher.publish("cmd/dev-1", QoS::AtLeastOnce, false, "reboot").await;
    let mut client = Client::connect(env.port, "dev-1", false).await;
    let got = client.recv(1, LONG).await;
    assert_eq!(got[0].payload.as_ref(), b"reboot");
    assert!(client.drain(Duration::from_millis(700)).await.is_empty(), "not again from the replay");
    env.wait_count("mqtt_msg", 0, LONG).await;
    client.disconnect().await;

    // A broker restart loses rmqtt's in-memory sessions: the subscription comes back from mqtt_sub.
    publisher.disconnect().await;
    assert_eq!(broker.stop(), Some(0), "SIGTERM exits cleanly");
    let broker2 = env.start("").await;
    let mut publisher = Client::connect(env.port, "ctl", true).await;
    publisher.publish("cmd/dev-1", QoS::AtLeastOnce, false, "after-restart-1").await;
    let mut client = Client::connect(env.port, "dev-1", false).await;
    let got = client.recv(1, LONG).await;
    assert_eq!(got[0].payload.as_ref(), b"after-restart-1", "replayed through the restored subscription");
    // The restored subscription is live too.
    publisher.publish("cmd/dev-1", QoS::AtLeastOnce, false, "after-restart-2").await;
    let got = client.recv(1, LONG).await;
    assert_eq!(got[0].payload.as_ref(), b"after-restart-2");
    client.disconnect().await;

    // A clean start is a new session with no subscriptions, and what it subscribes ends with it.
    let mut client = Client::connect(env.port, "dev-1", true).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(env.subscriptions().await.is_empty(), "a clean start clears the stored subscriptions");
    client.subscribe("cmd/clean", QoS::AtLeastOnce).await;
    assert_eq!(env.subscriptions().await, vec![("dev-1".into(), "cmd/clean".into(), 1)]);
    client.disconnect().await;
    env.wait_count("mqtt_sub", 0, LONG).await;
    drop(broker2);
}

// MQTT allows client ids and topics of 65,535 bytes; the reference's MySQL schema stopped at 64
// and 180 characters, dead-lettering such messages and losing such subscriptions.
on_every_backend!(long_client_ids_and_topics_are_stored_replayed_and_restored);
async fn long_client_ids_and_topics_are_stored_replayed_and_restored(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let topic = format!("long/{}", "t".repeat(395));
    let (subscriber, publisher) = (format!("s{}", "c".repeat(149)), format!("p{}", "c".repeat(149)));
    assert_eq!((topic.len(), subscriber.len(), publisher.len()), (400, 150, 150));
    let mut broker = env.start("").await;
    let mut s = Client::connect(env.port, &subscriber, false).await;
    s.subscribe(&topic, QoS::AtLeastOnce).await;
    assert_eq!(env.subscriptions().await, vec![(subscriber.clone(), topic.clone(), 1)]);
    s.disconnect().await;
    let mut p = Client::connect(env.port, &publisher, true).await;
    p.publish(&topic, QoS::AtLeastOnce, false, "stored").await;
    env.wait_count("mqtt_msg", 1, LONG).await;
    let rows = env.messages().await;
    assert_eq!((rows[0].topic.as_str(), rows[0].sender.as_str()), (topic.as_str(), publisher.as_str()));
    p.disconnect().await;

    // A restart: the session is gone, the subscription comes back from mqtt_sub and replays.
    assert_eq!(broker.stop(), Some(0));
    let _broker = env.start("").await;
    let mut s = Client::connect(env.port, &subscriber, false).await;
    let got = s.recv(1, LONG).await;
    assert_eq!((got[0].topic.as_str(), got[0].payload.as_ref()), (topic.as_str(), &b"stored"[..]));
    let mut p = Client::connect(env.port, &publisher, true).await;
    p.publish(&topic, QoS::AtLeastOnce, false, "live").await;
    assert_eq!(s.recv(1, LONG).await[0].payload.as_ref(), b"live", "the restored subscription is live");
    env.wait_count("mqtt_msg", 0, LONG).await;
    assert!(env.dead_letters().is_empty(), "{:?}", env.dead_letters());
}

on_every_backend!(only_matching_qos1_and_2_non_sys_topics_are_stored);
async fn only_matching_qos1_and_2_non_sys_topics_are_stored(backend: Backend) {
    let env = TestEnv::new(backend).await;
    // `$SYS/#` matches the $SYS publish below: only the plugin's own rule keeps it out.
    let _broker = env.start(r#"topics = ["keep/#", "+/exact", "$SYS/#"]"#).await;
    let mut p = Client::connect(env.port, "filter-pub", true).await;
    p.publish("keep/a", QoS::AtMostOnce, false, "qos0").await;
    p.publish("drop/a", QoS::AtLeastOnce, false, "no match").await;
    p.publish("$SYS/keep/x", QoS::AtLeastOnce, false, "sys").await;
    p.publish("keep/b", QoS::AtLeastOnce, false, "yes1").await;
    p.publish("x/exact", QoS::ExactlyOnce, false, "yes2").await;
    env.wait_count("mqtt_msg", 2, LONG).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let topics: Vec<String> = env.messages().await.into_iter().map(|r| r.topic).collect();
    assert_eq!(topics, vec!["keep/b", "x/exact"]);
}

// Topics and client ids are case-sensitive in MQTT, and so are the stored rows: `case/A` and
// `case/a` are two subscriptions, clients `Dev1` and `dev1` two subscribers (MariaDB's default
// collation made each pair one row).
on_every_backend!(topics_and_client_ids_differing_in_case_are_different_rows);
async fn topics_and_client_ids_differing_in_case_are_different_rows(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let _broker = env.start("").await;
    let mut upper = Client::connect(env.port, "Dev1", false).await;
    upper.subscribe("case/A", QoS::AtLeastOnce).await;
    upper.subscribe("case/a", QoS::AtLeastOnce).await;
    let mut lower = Client::connect(env.port, "dev1", false).await;
    lower.subscribe("case/a", QoS::AtLeastOnce).await;
    let mut subs = env.subscriptions().await;
    subs.sort();
    let expected: Vec<(String, String, i64)> = [("Dev1", "case/A"), ("Dev1", "case/a"), ("dev1", "case/a")]
        .iter()
        .map(|(c, t)| (c.to_string(), t.to_string(), 1))
        .collect();
    assert_eq!(subs, expected);
    upper.unsubscribe("case/A").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(env.subscriptions().await.len(), 2, "unsubscribing case/A leaves case/a");
}

on_every_backend!(hostile_topic_and_client_id_are_stored_verbatim);
async fn hostile_topic_and_client_id_are_stored_verbatim(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let _broker = env.start("").await;
    let client_id = r#"x'); DROP TABLE mqtt_sub; -- "\"#;
    let topic = r#"a/'; DELETE FROM mqtt_msg; --/"quoted"/back\slash/select * from"#;
    let mut c = Client::connect(env.port, client_id, false).await;
    c.subscribe(topic, QoS::AtLeastOnce).await;
    c.publish(topic, QoS::AtLeastOnce, false, "payload'\\").await;
    c.recv(1, LONG).await;
    env.wait_count("mqtt_msg", 0, LONG).await;
    env.wait_count("mqtt_sub", 1, LONG).await;
    // Offline now: the next message stays stored (its persistent session queues it unacknowledged).
    c.disconnect().await;
    assert_eq!(env.subscriptions().await, vec![(client_id.to_string(), topic.to_string(), 1)]);
    let mut p = Client::connect(env.port, "other", true).await;
    p.publish(topic, QoS::AtLeastOnce, false, "second").await;
    env.wait_count("mqtt_msg", 1, LONG).await;
    let rows = env.messages().await;
    assert_eq!((rows[0].topic.as_str(), rows[0].sender.as_str()), (topic, "other"));
    assert_eq!(env.count("mqtt_sub").await, 1, "both tables intact");
}

on_both_backends!(a_users_own_insert_template_is_used);
async fn a_users_own_insert_template_is_used(backend: Backend) {
    let env = TestEnv::new(backend).await;
    match backend {
        Backend::MySql => env.exec("create table my_log (topic varchar(200) not null, body blob)").await,
        Backend::Sqlite => env.exec("create table my_log (topic text not null, body blob)").await,
        Backend::Redis => unreachable!("an SQL-only test"),
    };
    let _broker =
        env.start(r#"insert_message_sql = "insert into my_log (topic, body) values (${topic}, ${payload})""#).await;
    let mut p = Client::connect(env.port, "tmpl-pub", true).await;
    for i in 0..3 {
        p.publish("custom/t", QoS::AtLeastOnce, false, format!("b{i}")).await;
    }
    let start = std::time::Instant::now();
    while env.exec("select count(*) from my_log").await != Some(3) {
        assert!(start.elapsed() < LONG, "rows never reached my_log");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(env.count("mqtt_msg").await, 0, "the default table is not written");
}

on_every_backend!(a_retained_message_reaches_a_new_subscriber_once);
async fn a_retained_message_reaches_a_new_subscriber_once(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let _broker = env.start("").await;
    let mut p = Client::connect(env.port, "ret-pub", true).await;
    p.publish("state/door", QoS::AtLeastOnce, false, "opened").await;
    p.publish("state/door", QoS::AtLeastOnce, true, "closed").await;
    env.wait_count("mqtt_msg", 2, LONG).await;
    let retain: Vec<i64> = env.messages().await.into_iter().map(|r| r.retain).collect();
    assert_eq!(retain, [0, 1], "the retain flag is stored");
    let mut s = Client::connect(env.port, "ret-sub", true).await;
    s.subscribe("state/door", QoS::AtLeastOnce).await;
    let mut got: Vec<Vec<u8>> = s.recv(2, LONG).await.into_iter().map(|p| p.payload.to_vec()).collect();
    got.extend(s.drain(Duration::from_millis(700)).await.into_iter().map(|p| p.payload.to_vec()));
    got.sort();
    assert_eq!(got, vec![b"closed".to_vec(), b"opened".to_vec()], "the stored message and the retained one, each once");
    env.wait_count("mqtt_msg", 0, LONG).await;
}

/// A client nobody here wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_clients_publish_and_receive_the_replay() {
    let env = TestEnv::new(Backend::MySql).await;
    let _broker = env.start("").await;
    let port = env.port;
    for i in 0..3 {
        // One client id per run: rmqtt 0.24 refuses a reconnect that races the teardown of the
        // same client's previous session ("Server unavailable"), which is not what this tests.
        let out = mosquitto("mosquitto_pub", port, &format!("mosq-pub-{i}"), "mosq/t", &["-m", &format!("hello {i}")]);
        assert!(out.status.success(), "mosquitto_pub: {}", String::from_utf8_lossy(&out.stderr));
    }
    env.wait_count("mqtt_msg", 3, LONG).await;
    let out = tokio::task::spawn_blocking(move || {
        mosquitto("mosquitto_sub", port, "mosq-sub", "mosq/t", &["-C", "3", "-W", "30"])
    })
    .await
    .unwrap();
    assert!(out.status.success(), "mosquitto_sub: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello 0\nhello 1\nhello 2\n");
    env.wait_count("mqtt_msg", 0, LONG).await;
    // mosquitto_sub's session was a clean one: its subscription ended with it.
    env.wait_count("mqtt_sub", 0, LONG).await;
}

on_every_backend!(an_ack_before_the_flush_still_deletes);
async fn an_ack_before_the_flush_still_deletes(backend: Backend) {
    let env = TestEnv::new(backend).await;
    // The writer holds messages for up to 3 s, so the live subscriber acks long before the insert.
    let _broker = env.start(r#"batch_time = 3s"#).await;
    let mut live = Client::connect(env.port, "live-sub", true).await;
    live.subscribe("fast/t", QoS::AtLeastOnce).await;
    let mut p = Client::connect(env.port, "fast-pub", true).await;
    p.publish("fast/t", QoS::AtLeastOnce, false, "acked-early").await;
    assert_eq!(live.recv(1, LONG).await[0].payload.as_ref(), b"acked-early");
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A new subscriber's replay flushes the writer first: the acked message must not come back.
    let mut late = Client::connect(env.port, "late-sub", true).await;
    late.subscribe("fast/t", QoS::AtLeastOnce).await;
    assert!(late.drain(Duration::from_secs(1)).await.is_empty(), "an acknowledged message is never replayed");
    assert_eq!(env.count("mqtt_msg").await, 0);
}

on_every_backend!(sigterm_flushes_what_the_writer_holds);
async fn sigterm_flushes_what_the_writer_holds(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let mut broker = env.start(r#"batch_time = 60s"#).await;
    let mut p = Client::connect(env.port, "late-flush", true).await;
    for i in 0..3 {
        p.publish("flush/t", QoS::AtLeastOnce, false, format!("f{i}")).await;
    }
    assert_eq!(env.count("mqtt_msg").await, 0, "still in the writer's buffer");
    p.disconnect().await;
    assert_eq!(broker.stop(), Some(0));
    assert_eq!(
        env.messages().await.iter().map(|r| r.payload.clone()).collect::<Vec<_>>(),
        vec![b"f0".to_vec(), b"f1".to_vec(), b"f2".to_vec()]
    );
}

// Weakness 3: `topic = ${topic}` compared the filter text, so wildcards replayed nothing.
on_every_backend!(wildcard_subscriptions_replay_every_matching_message_in_order);
async fn wildcard_subscriptions_replay_every_matching_message_in_order(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let _broker = env.start("").await;
    let mut p = Client::connect(env.port, "wild-pub", true).await;
    // Topics chosen against the traps: LIKE's own wildcards and escape, case, the parent of `#`.
    let topics =
        ["home", "home/kitchen/temp", "office/1", "home/hall", "Home/x", "home%_!/a", "homeX/a", "home%_!/b/c"];
    for (i, t) in topics.iter().enumerate() {
        p.publish(t, QoS::AtLeastOnce, false, format!("{i}")).await;
    }
    env.wait_count("mqtt_msg", topics.len() as i64, LONG).await;

    let replayed = |got: Vec<rumqttc::Publish>| -> Vec<String> {
        got.into_iter().map(|p| format!("{}={}", p.topic, String::from_utf8_lossy(&p.payload))).collect()
    };
    let mut s = Client::connect(env.port, "wild-sub-1", true).await;
    s.subscribe("home%_!/+", QoS::AtLeastOnce).await;
    assert_eq!(replayed(s.drain(Duration::from_millis(700)).await), vec!["home%_!/a=5"]);
    s.subscribe("home/#", QoS::AtLeastOnce).await;
    assert_eq!(
        replayed(s.drain(Duration::from_millis(700)).await),
        vec!["home=0", "home/kitchen/temp=1", "home/hall=3"]
    );
    s.subscribe("+/1", QoS::AtLeastOnce).await;
    assert_eq!(replayed(s.drain(Duration::from_millis(700)).await), vec!["office/1=2"]);
    s.subscribe("#", QoS::AtLeastOnce).await;
    assert_eq!(replayed(s.drain(Duration::from_millis(700)).await), vec!["Home/x=4", "homeX/a=6", "home%_!/b/c=7"]);
    env.wait_count("mqtt_msg", 0, LONG).await;
}

/// MySQL: the only backend with a `pool_size` to exhaust.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_subscriber_does_not_stop_the_writer() {
    let env = TestEnv::new(Backend::MySql).await;
    // One replay connection: the stuck replay holds it for as long as it waits.
    let mut broker = env.start("pool_size = 1").await;
    let p = Client::connect(env.port, "stuck-pub", true).await;
    for i in 0..400 {
        p.client.publish("stuck/t", QoS::AtLeastOnce, false, format!("{i}")).await.unwrap();
    }
    env.wait_count("mqtt_msg", 400, LONG).await;
    // Never acknowledges: the broker stops after its inflight window, the replay waits for room.
    let mut stuck = Client::connect_with(env.port, "stuck-sub", true, true).await;
    stuck.subscribe("stuck/t", QoS::AtLeastOnce).await;
    stuck.recv(10, LONG).await;
    for i in 0..50 {
        p.client.publish("other/t", QoS::AtLeastOnce, false, format!("{i}")).await.unwrap();
    }
    env.wait_count("mqtt_msg", 450, LONG).await;
    drop(stuck);
    assert_eq!(broker.stop(), Some(0), "shutdown does not wait for the stuck replay");
}

// Weakness 9: a re-subscribe replayed the backlog a second time.
on_every_backend!(a_resubscribe_does_not_replay_the_backlog_again);
async fn a_resubscribe_does_not_replay_the_backlog_again(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let _broker = env.start("").await;
    let mut p = Client::connect(env.port, "resub-pub", true).await;
    for i in 0..5 {
        p.publish("resub/t", QoS::AtLeastOnce, false, format!("{i}")).await;
    }
    env.wait_count("mqtt_msg", 5, LONG).await;
    // QoS 1 without acks: the rows stay, and nothing records that this subscriber had them, so
    // only the "already held" rule keeps a second replay away.
    let mut s = Client::connect_with(env.port, "resub-sub", true, true).await;
    s.subscribe("resub/t", QoS::AtLeastOnce).await;
    assert_eq!(s.recv(5, LONG).await.len(), 5);
    s.subscribe("resub/t", QoS::AtLeastOnce).await;
    assert!(s.drain(Duration::from_secs(1)).await.is_empty(), "the same filter again: no second replay");
    assert_eq!(env.count("mqtt_msg").await, 5);
}

on_both_backends!(a_row_the_database_refuses_does_not_fail_its_batch);
async fn a_row_the_database_refuses_does_not_fail_its_batch(backend: Backend) {
    let env = TestEnv::new(backend).await;
    env.exec("create table short_log (topic varchar(100) not null check (length(topic) <= 8), body blob)").await;
    // A long batch_time puts all five in one batch.
    let broker = env.start(r#"insert_message_sql = "insert into short_log (topic, body) values (${topic}, ${payload})", batch_time = 1s"#).await;
    let p = Client::connect(env.port, "refused-pub", true).await;
    for t in ["ok/1", "ok/2", "far/too/long/topic", "ok/3", "ok/4"] {
        p.client.publish(t, QoS::AtLeastOnce, false, t.as_bytes().to_vec()).await.unwrap();
    }
    let start = std::time::Instant::now();
    while env.exec("select count(*) from short_log").await != Some(4) {
        assert!(start.elapsed() < LONG, "the four good rows never landed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(broker.log_text().contains("the database refused this message"), "the refused row is logged");
    let dead = env.dead_letters();
    assert_eq!(dead.len(), 1, "the refused row is in the dead-letter file: {dead:?}");
    assert_eq!(
        (dead[0]["topic"].as_str(), dead[0]["sender"].as_str()),
        (Some("far/too/long/topic"), Some("refused-pub"))
    );
    assert!(dead[0]["reason"].as_str().unwrap().contains("insert_message_sql"), "{dead:?}");
    let payload = mqtt_offline_messages::encode::base64(b"far/too/long/topic");
    assert_eq!(dead[0]["payload_base64"].as_str(), Some(payload.as_str()));
}

// A database that fails the work itself (here a missing table; a read-only server or a revoked
// login alike) is an outage: the batch waits in the spool, it is not dead-lettered as a bad row.
on_both_backends!(a_missing_table_is_an_outage_not_a_bad_row);
async fn a_missing_table_is_an_outage_not_a_bad_row(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let broker = env.start("").await;
    env.rename_table("mqtt_msg", "mqtt_msg_away").await;
    let mut p = Client::connect(env.port, "outage-pub", true).await;
    let sent: Vec<String> = (0..20).map(|i| format!("m{i}")).collect();
    for m in &sent {
        p.publish("outage/t", QoS::AtLeastOnce, false, m.as_bytes().to_vec()).await;
    }
    broker.wait_for_log("operations go to the spool until it takes them").await;
    env.rename_table("mqtt_msg_away", "mqtt_msg").await;
    env.wait_count("mqtt_msg", 20, LONG).await;
    let stored: Vec<Vec<u8>> = env.messages().await.into_iter().map(|r| r.payload).collect();
    assert_eq!(stored, sent.iter().map(|m| m.as_bytes().to_vec()).collect::<Vec<_>>(), "all, once, in order");
    assert!(env.dead_letters().is_empty(), "nothing dead-lettered: {:?}", env.dead_letters());
}

// Reference weakness 9: a publish racing a subscribe came twice, or before older stored messages.
on_every_backend!(messages_published_during_a_replay_follow_it_once_each);
async fn messages_published_during_a_replay_follow_it_once_each(backend: Backend) {
    const BACKLOG: usize = 3000;
    let env = TestEnv::new(backend).await;
    let _broker = env.start("").await;
    let mut p = Client::connect(env.port, "seam-pub", true).await;
    for i in 0..BACKLOG {
        p.publish("seam/t", QoS::AtLeastOnce, false, i.to_string()).await;
    }
    env.wait_count("mqtt_msg", BACKLOG as i64, LONG).await;
    // The publisher goes on until well after the subscribe, however fast the machine is.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let publishing = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut i = BACKLOG;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) || i < BACKLOG + 1000 {
                p.publish("seam/t", QoS::AtLeastOnce, false, i.to_string()).await;
                i += 1;
            }
            i - BACKLOG
        }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut s = Client::connect(env.port, "seam-sub", true).await;
    s.subscribe("seam/#", QoS::AtLeastOnce).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let live = publishing.await.unwrap();
    let got: Vec<usize> = s
        .recv(BACKLOG + live, LONG)
        .await
        .iter()
        .map(|m| std::str::from_utf8(&m.payload).unwrap().parse().unwrap())
        .collect();
    let extra = s.drain(Duration::from_secs(1)).await.len();
    let out_of_order = got.windows(2).filter(|w| w[0] >= w[1]).count();
    let breaks: Vec<_> =
        got.windows(2).enumerate().filter(|(_, w)| w[0] >= w[1]).map(|(i, w)| (i, w[0], w[1])).collect();
    assert_eq!(out_of_order, 0, "every message after the one before it: {breaks:?}");
    assert_eq!(got, (0..BACKLOG + live).collect::<Vec<_>>());
    assert_eq!(extra, 0, "no message twice");
    env.wait_count("mqtt_msg", 0, LONG).await;
}

/// A client that connects again with its client id the moment it has disconnected (clean session)
/// is accepted every time. rmqtt refused it (CONNACK "server unavailable") when its takeover of the
/// old connection met that connection's teardown: the old task no longer read the kick.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_reconnects_at_once_is_accepted() {
    let env = TestEnv::new(Backend::Sqlite).await;
    let _broker = env.start("").await;
    for i in 0..200 {
        let mut c = Client::connect(env.port, "again", true).await;
        c.publish("again/t", QoS::AtLeastOnce, false, i.to_string()).await;
        c.disconnect().await;
    }
    env.wait_count("mqtt_msg", 200, LONG).await;
}

/// rmqtt lets a client have 16 unacknowledged QoS 1 messages by default: a replay (and any busy
/// subscriber) got 16 messages per round trip. Our broker allows 128.
#[tokio::test]
async fn a_subscriber_may_have_more_than_16_unacknowledged_messages() {
    let env = TestEnv::new(Backend::Sqlite).await;
    let _broker = env.start("").await;
    let mut s = Client::connect_with(env.port, "window-sub", true, true).await; // never acks
    s.subscribe("window/t", QoS::AtLeastOnce).await;
    let p = Client::connect(env.port, "window-pub", true).await;
    for i in 0..100 {
        p.client.publish("window/t", QoS::AtLeastOnce, false, format!("{i}")).await.unwrap();
    }
    s.recv(100, LONG).await;
}
