//! The Redis backend beyond what every backend shares: the keys as another system reads them
//! (`redis-cli`), a user granted exactly the README's commands, a Redis killed mid-stream, a
//! sentinel failover, a cluster being resharded, and the tools. Each test runs its own
//! `redis-server` processes on free ports.

#[macro_use]
mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{free_port, Backend, Broker, Client, PrivateRedis, TestEnv, BIN, LONG};
use rumqttc::QoS;

/// Every command the plugin sends to Redis: the README's list, granted alone to the ACL user below.
const COMMANDS: &[&str] = &[
    "HSET",
    "HDEL",
    "HGETALL",
    "DEL",
    "EXPIRE",
    "PEXPIREAT",
    "ZADD",
    "ZRANGE",
    "ZREM",
    "ZREMRANGEBYSCORE",
    "ZCARD",
    "SADD",
    "SREM",
    "SMEMBERS",
    "SSCAN",
    "SMISMEMBER",
    "MULTI",
    "EXEC",
    "PING",
];

fn lines(text: &str) -> Vec<&str> {
    text.lines().collect()
}

/// `HGETALL` as redis-cli prints it: field, value, field, value, one a line.
fn hash(redis: &PrivateRedis, key: &str) -> std::collections::HashMap<String, String> {
    let out = redis.cli(&["HGETALL", key]);
    let l = lines(&out);
    l.chunks(2).map(|kv| (kv[0].to_owned(), kv.get(1).unwrap_or(&"").to_string())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_and_fields_are_the_references_as_redis_cli_reads_them() {
    let env = TestEnv::new(Backend::Redis).await;
    let redis = env.redis();
    let _broker = env.start("message_ttl = 100s").await;
    // Never acks: what it is sent stays stored.
    let mut sub = Client::connect_with(env.port, "lay-sub", false, true).await;
    sub.subscribe("lay/#", QoS::AtLeastOnce).await;
    let before = mqtt_offline_messages::engine::now_ms();
    let mut p = Client::connect(env.port, "lay-pub", true).await;
    p.publish("lay/a", QoS::AtLeastOnce, true, "first").await;
    p.publish("lay/a", QoS::ExactlyOnce, false, "second").await;
    // A topic with the shape of a message id.
    let idlike = "AbCdEfGhIjKlMnOpQrSt";
    p.publish(idlike, QoS::AtLeastOnce, false, "idlike").await;
    let after = mqtt_offline_messages::engine::now_ms();
    env.wait_count("mqtt_msg", 3, LONG).await;

    // The per-topic sorted set: ids in publish order, scored by publish time in milliseconds.
    let zset = redis.cli(&["ZRANGE", "mqtt:msg:lay/a", "0", "-1", "WITHSCORES"]);
    let z = lines(&zset);
    assert_eq!(z.len(), 4, "two ids with their scores: {zset}");
    for score in [z[1], z[3]] {
        let score: i64 = score.parse().unwrap();
        assert!((before..=after).contains(&score), "score {score} in {before}..{after}");
    }
    let (first, second) = (z[0], z[2]);
    assert!(first < second, "publish order");

    let h = hash(redis, &format!("mqtt:msg:{first}"));
    assert_eq!(h["id"], first);
    assert_eq!((h["from"].as_str(), h["topic"].as_str(), h["qos"].as_str()), ("lay-pub", "lay/a", "1"));
    assert_eq!((h["payload"].as_str(), h["retain"].as_str()), ("first", "1"));
    let ts: i64 = h["ts"].parse().unwrap();
    assert!((before..=after).contains(&ts));
    let expiry: i64 = h["expiry"].parse().unwrap();
    assert_eq!(expiry, ts + 100_000, "ours: when it expires (message_ttl)");
    let ttl: i64 = redis.cli(&["TTL", &format!("mqtt:msg:{first}")]).trim().parse().unwrap();
    assert!((90..=100).contains(&ttl), "EXPIRE from message_ttl: {ttl}");
    let h2 = hash(redis, &format!("mqtt:msg:{second}"));
    assert_eq!((h2["qos"].as_str(), h2["payload"].as_str(), h2["retain"].as_str()), ("2", "second", "0"));

    // The id-shaped topic's set is under `#topic:`, never the key of a message.
    assert_eq!(redis.cli(&["TYPE", &format!("mqtt:msg:{idlike}")]).trim(), "none");
    let ids = redis.cli(&["ZRANGE", &format!("mqtt:msg:#topic:{idlike}"), "0", "-1"]);
    assert_eq!(hash(redis, &format!("mqtt:msg:{}", ids.trim()))["payload"], "idlike");
    let mut topics =
        lines(&redis.cli(&["SMEMBERS", "mqtt:msg:#topics"])).iter().map(|s| s.to_string()).collect::<Vec<_>>();
    topics.sort();
    assert_eq!(topics, [idlike, "lay/a"]);

    assert_eq!(hash(redis, "mqtt:sub:lay-sub"), [("lay/#".to_owned(), "1".to_owned())].into());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_granted_exactly_the_listed_commands_works() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    assert!(readme.contains(&format!("`{}`", COMMANDS.join(" "))), "the README lists the commands granted here");
    let env = TestEnv::new(Backend::Redis).await;
    let redis = env.redis();
    let grants: Vec<String> = COMMANDS.iter().map(|c| format!("+{}", c.to_lowercase())).collect();
    let mut acl = vec!["ACL", "SETUSER", "om", "on", ">om-secret", "resetkeys", "~mqtt:*", "resetchannels", "-@all"];
    acl.extend(grants.iter().map(String::as_str));
    assert_eq!(redis.cli(&acl).trim(), "OK");
    let _broker =
        env.start("username = om, password = \"om-secret\", max_messages_per_topic = 3, message_ttl = 60s").await;
    // Stores (and trims to 3), replays through a wildcard, deletes on ack, takes the emptied topic
    // off the list; records a QoS 0 delivery; stores, deletes and restores subscriptions.
    let mut p = Client::connect(env.port, "acl-pub", true).await;
    for i in 0..5 {
        p.publish("acl/a", QoS::AtLeastOnce, false, format!("m{i}")).await;
    }
    env.wait_count("mqtt_msg", 3, LONG).await;
    let listed = history_json(&env.dir.path().join("config.hocon"), &["--topic", "acl/#"]);
    assert_eq!(listed.iter().map(|r| r["payload"].as_str().unwrap()).collect::<Vec<_>>(), ["m2", "m3", "m4"]);
    let mut q0 = Client::connect(env.port, "acl-q0", true).await;
    q0.subscribe("acl/+", QoS::AtMostOnce).await;
    assert_eq!(q0.recv(3, LONG).await.len(), 3);
    env.wait_count("mqtt_delivered", 3, LONG).await;
    let mut s = Client::connect(env.port, "acl-sub", false).await;
    s.subscribe("acl/#", QoS::AtLeastOnce).await;
    s.subscribe("acl/gone", QoS::AtLeastOnce).await;
    s.unsubscribe("acl/gone").await;
    let got: Vec<String> =
        s.recv(3, LONG).await.iter().map(|m| String::from_utf8_lossy(&m.payload).into_owned()).collect();
    assert_eq!(got, ["m2", "m3", "m4"]);
    env.wait_count("mqtt_msg", 0, LONG).await;
    let start = Instant::now();
    while !redis.cli(&["SMEMBERS", "mqtt:msg:#topics"]).trim().is_empty() {
        assert!(start.elapsed() < LONG, "the purge takes the emptied topic off the list");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    s.disconnect().await;
    let mut s = Client::connect(env.port, "acl-sub", false).await;
    p.publish("acl/a", QoS::AtLeastOnce, false, "after").await;
    assert_eq!(s.recv(1, LONG).await[0].payload.as_ref(), b"after");
    let subs = [("acl-q0".to_owned(), "acl/+".to_owned(), 0), ("acl-sub".to_owned(), "acl/#".to_owned(), 1)];
    assert_eq!(env.subscriptions().await, subs);
    assert_eq!(redis.cli(&["ACL", "LOG"]).trim(), "", "nothing was denied");
}

/// Redis with `appendfsync always`, SIGKILLed while `sync` publishers run, then restarted: every
/// acknowledged message is stored once (the spool held what came meanwhile).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_mid_stream_loses_nothing_acknowledged() {
    let mut env = TestEnv::with_redis(Backend::Redis, &["--appendonly", "yes", "--appendfsync", "always"]).await;
    let _broker = env.start("write_mode = sync").await;
    let (stop, tasks) = publish_until_stopped(env.port, "down", "down/t", 4).await;
    env.wait_count_at_least("mqtt_msg", 200, LONG).await;
    let redis = env.redis.as_mut().unwrap();
    redis.kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    redis.restart();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let acked = stop_publishers(stop, tasks).await;
    let stored = wait_for_all(|| env.redis().payloads(), &acked).await;
    println!("acknowledged {}, stored {}", acked.len(), stored.len());
    assert!(acked.len() > 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_failover_loses_nothing_the_old_master_had_replicated() {
    let dir = tempfile::tempdir().unwrap();
    let mut master = PrivateRedis::start(&dir.path().join("master"), &[]);
    let replica_of = master.port.to_string();
    let replica = PrivateRedis::start(&dir.path().join("replica"), &["--replicaof", "127.0.0.1", &replica_of]);
    let sentinels: Vec<PrivateRedis> =
        (0..3).map(|i| PrivateRedis::sentinel(&dir.path().join(format!("sentinel{i}")), master.port)).collect();
    let servers: Vec<String> = sentinels.iter().map(|s| format!("127.0.0.1:{}", s.port)).collect();
    let config = dir.path().join("config.hocon");
    std::fs::write(
        &config,
        format!(
            "redis {{ enable = true, servers = \"{}\", redis_type = sentinel, sentinel = mymaster, topics = [\"#\"], \
             write_mode = sync, spool_dir = \"{}\", dead_letter_file = \"{}\" }}",
            servers.join(","),
            dir.path().join("spool").display(),
            dir.path().join("dead.jsonl").display()
        ),
    )
    .unwrap();
    let port = free_port();
    let _broker = Broker::start(&config, port, dir.path().join("broker.log")).await;
    let (stop, tasks) = publish_until_stopped(port, "fo", "fo/t", 4).await;
    wait_until(|| master.count("mqtt_msg") >= 200, "200 messages on the master").await;

    // What is acknowledged by now is replicated once the replica has the master's offset.
    let replicated: HashSet<String> = tasks.iter().flat_map(|t| t.acked()).collect();
    let offset = |r: &PrivateRedis, field: &str| -> i64 {
        let info = r.cli(&["INFO", "replication"]);
        info.lines().find_map(|l| l.strip_prefix(field)).map_or(-1, |v| v.trim().parse().unwrap())
    };
    let target = offset(&master, "master_repl_offset:");
    wait_until(|| offset(&replica, "slave_repl_offset:") >= target, "the replica catches up").await;
    master.kill();
    let killed = Instant::now();
    wait_until(
        || sentinels[0].cli(&["SENTINEL", "get-master-addr-by-name", "mymaster"]).contains(&replica.port.to_string()),
        "a sentinel promotes the replica",
    )
    .await;
    // Published on the new master, through the plugin that followed it.
    let promoted = replica.count("mqtt_msg");
    wait_until(|| replica.count("mqtt_msg") > promoted + 100, "writes reach the new master").await;
    let acked_at = stop_publishers_timed(stop, tasks).await;
    let after_kill: HashSet<String> = acked_at
        .iter()
        .filter(|(_, at)| at.duration_since(killed) > Duration::from_secs(1))
        .map(|(m, _)| m.clone())
        .collect();
    let must_have: HashSet<String> = replicated.union(&after_kill).cloned().collect();
    let stored = wait_for_all(|| replica.payloads(), &must_have).await;
    let all: HashSet<String> = acked_at.into_iter().map(|(m, _)| m).collect();
    println!(
        "acknowledged {}, of which replicated before the kill {} and acknowledged after it {}; stored {}; \
         acknowledged in between and lost with the old master: {}",
        all.len(),
        replicated.len(),
        after_kill.len(),
        stored.len(),
        all.difference(&stored).count()
    );

    // A master name the sentinels do not know is a mistake in the config, said as such.
    let wrong = dir.path().join("wrong.hocon");
    let text = std::fs::read_to_string(&config).unwrap().replace("sentinel = mymaster", "sentinel = nosuchmaster");
    std::fs::write(&wrong, text).unwrap();
    let out = std::process::Command::new(BIN).args(["check-config", "--config"]).arg(&wrong).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(!out.status.success() && text.contains("FAIL connect") && text.contains("redis.sentinel"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_being_resharded_stores_and_replays_everything() {
    let dir = tempfile::tempdir().unwrap();
    let nodes: Vec<PrivateRedis> = (0..3)
        .map(|i| {
            PrivateRedis::start(
                &dir.path().join(format!("node{i}")),
                &["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "5000"],
            )
        })
        .collect();
    let addrs: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
    let create = std::process::Command::new("redis-cli")
        .args(["--cluster", "create"])
        .args(&addrs)
        .arg("--cluster-yes")
        .output()
        .unwrap();
    assert!(create.status.success(), "{}", String::from_utf8_lossy(&create.stdout));
    for n in &nodes {
        wait_until(|| n.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok"), "the cluster is up").await;
    }
    let config = dir.path().join("config.hocon");
    std::fs::write(
        &config,
        format!(
            "redis {{ enable = true, servers = \"{}\", redis_type = cluster, topics = [\"#\"], write_mode = sync, \
             spool_dir = \"{}\", dead_letter_file = \"{}\" }}",
            addrs[0],
            dir.path().join("spool").display(),
            dir.path().join("dead.jsonl").display()
        ),
    )
    .unwrap();
    let port = free_port();
    let broker = Broker::start(&config, port, dir.path().join("broker.log")).await;
    let (stop, tasks) = publish_until_stopped(port, "cl", "cl/t", 4).await;
    let count = || nodes.iter().map(|n| n.count("mqtt_msg")).sum::<i64>();
    wait_until(|| count() >= 200, "200 messages in the cluster").await;
    // Moves 2000 slots while the publishers run: MOVED and ASK replies on the way.
    let id = |n: &PrivateRedis| n.cli(&["CLUSTER", "MYID"]).trim().to_owned();
    let reshard = std::process::Command::new("redis-cli")
        .args(["--cluster", "reshard", &addrs[0], "--cluster-from", &id(&nodes[0]), "--cluster-to", &id(&nodes[1])])
        .args(["--cluster-slots", "2000", "--cluster-yes", "--cluster-pipeline", "10"])
        .output()
        .unwrap();
    assert!(reshard.status.success(), "{}", String::from_utf8_lossy(&reshard.stdout));
    let at_reshard_end = count();
    wait_until(|| count() > at_reshard_end + 100, "writes go on after the reshard").await;
    let acked = stop_publishers(stop, tasks).await;
    wait_until(|| count() as usize >= acked.len(), "every acknowledged message is in the cluster").await;
    for n in &nodes {
        assert!(n.count("mqtt_msg") > 0, "messages are spread over every node");
    }
    // `history` reads the cluster as the replay does: every stored message once, in publish order.
    let rows = history_json(&config, &["--topic", "cl/#"]);
    let listed: Vec<String> = rows.iter().map(|r| r["payload"].as_str().unwrap().to_owned()).collect();
    assert_eq!(listed.iter().collect::<HashSet<_>>().len(), listed.len(), "nothing twice");
    let listed: HashSet<String> = listed.into_iter().collect();
    assert!(acked.is_subset(&listed), "every acknowledged message");
    let msgids: Vec<&str> = rows.iter().map(|r| r["msgid"].as_str().unwrap()).collect();
    assert!(msgids.windows(2).all(|w| w[0] < w[1]), "in message id order");
    for k in 0..4 {
        let mine: Vec<u64> = rows
            .iter()
            .filter_map(|r| r["payload"].as_str().unwrap().strip_prefix(&format!("{k}-")).map(|i| i.parse().unwrap()))
            .collect();
        assert!(mine.windows(2).all(|w| w[0] < w[1]), "publisher {k} in order");
    }
    // Replayed to a wildcard subscriber, in order per publisher, then deleted by the acks.
    let mut s = Client::connect(port, "cl-sub", true).await;
    s.subscribe("cl/#", QoS::AtLeastOnce).await;
    let got: Vec<String> =
        s.recv(acked.len(), LONG).await.iter().map(|m| String::from_utf8_lossy(&m.payload).into_owned()).collect();
    assert_eq!(got.iter().collect::<HashSet<_>>().len(), got.len(), "nothing twice");
    assert_eq!(got.iter().cloned().collect::<HashSet<_>>(), acked, "every acknowledged message");
    for k in 0..4 {
        let mine: Vec<u64> =
            got.iter().filter_map(|m| m.strip_prefix(&format!("{k}-"))).map(|i| i.parse().unwrap()).collect();
        assert!(mine.windows(2).all(|w| w[0] < w[1]), "publisher {k} in order");
    }
    wait_until(|| count() == 0, "the acks delete every message").await;
    // The client crate may time out a request while it refreshes its slot map: that counts as an
    // outage (the writer spools, a replay is retried), never as a refused message.
    assert!(!dir.path().join("dead.jsonl").exists(), "{}", broker.log_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tools_on_redis() {
    let env = TestEnv::new(Backend::Redis).await;
    let config = env.write_config(&env.backend_block(""));
    let run = |args: &[&str], config: &std::path::Path| {
        std::process::Command::new(BIN).args(args).arg("--config").arg(config).output().unwrap()
    };
    let out = run(&["migrate"], &config);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("redis keeps no schema: nothing to migrate"));
    let out = run(&["check-config"], &config);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}");
    assert!(text.contains(&format!("ok   connect: redis (single) at 127.0.0.1:{}", env.redis().port)), "{text}");
    let out = run(&["history", "--topic", "#"], &config);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1, "the header; nothing stored");
    let nobody = free_port();
    let gone = env.write_config(&env.backend_block("").replace(&env.redis().port.to_string(), &nobody.to_string()));
    let out = run(&["history", "--topic", "#"], &gone);
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success());
    assert!(text.contains(&format!("cannot connect to redis at 127.0.0.1:{nobody} (redis.servers)")), "{text}");

    let wrong = env.write_config(&env.backend_block("username = nobody, password = \"wrong\""));
    let out = run(&["check-config"], &wrong);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(!out.status.success());
    assert!(text.contains("FAIL connect") && text.contains("redis.username and redis.password"), "{text}");
    assert!(!text.contains("wrong\""), "no password in the output: {text}");
}

/// Publishers on `topic`, each sending `{k}-{i}` at QoS 1 until told to stop.
async fn publish_until_stopped(port: u16, prefix: &str, topic: &str, n: usize) -> (Arc<AtomicBool>, Vec<Publisher>) {
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for k in 0..n {
        let mut c = Client::connect(port, &format!("{prefix}-pub-{k}"), true).await;
        let (stop, topic) = (stop.clone(), topic.to_owned());
        let acked = Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = acked.clone();
        let task = tokio::spawn(async move {
            for i in 0.. {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let payload = format!("{k}-{i}");
                if !c.try_publish(&topic, payload.clone()).await {
                    break;
                }
                log.lock().unwrap().push((payload, Instant::now()));
            }
            c.disconnect().await;
        });
        tasks.push(Publisher { task, acked });
    }
    (stop, tasks)
}

struct Publisher {
    task: tokio::task::JoinHandle<()>,
    acked: Arc<std::sync::Mutex<Vec<(String, Instant)>>>,
}

impl Publisher {
    fn acked(&self) -> Vec<String> {
        self.acked.lock().unwrap().iter().map(|(m, _)| m.clone()).collect()
    }
}

async fn stop_publishers_timed(stop: Arc<AtomicBool>, tasks: Vec<Publisher>) -> Vec<(String, Instant)> {
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for t in tasks {
        tokio::time::timeout(LONG, t.task).await.expect("a publisher stops").unwrap();
        all.extend(t.acked.lock().unwrap().drain(..));
    }
    all
}

async fn stop_publishers(stop: Arc<AtomicBool>, tasks: Vec<Publisher>) -> HashSet<String> {
    stop_publishers_timed(stop, tasks).await.into_iter().map(|(m, _)| m).collect()
}

/// Polls `stored` (payloads, one per stored message) until it holds all of `expected`; checks
/// that no payload is stored twice; returns the stored set.
async fn wait_for_all<F: Fn() -> Vec<String>>(stored: F, expected: &HashSet<String>) -> HashSet<String> {
    let start = Instant::now();
    loop {
        let all = stored();
        let set: HashSet<String> = all.iter().cloned().collect();
        assert_eq!(set.len(), all.len(), "no message stored twice");
        let missing = expected.difference(&set).count();
        if missing == 0 {
            return set;
        }
        assert!(start.elapsed() < LONG, "{missing} acknowledged messages are not stored");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn wait_until(mut done: impl FnMut() -> bool, what: &str) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < LONG, "not within {LONG:?}: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A key of another type under the prefix, in the way of a topic's set: that message is
/// dead-lettered, and the others of its batch are stored and replayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_of_another_type_in_the_way_dead_letters_that_message_alone() {
    let env = TestEnv::new(Backend::Redis).await;
    assert_eq!(env.redis().cli(&["SET", "mqtt:msg:clash", "not ours"]).trim(), "OK");
    let _broker = env.start("batch_time = 1s").await;
    let p = Client::connect(env.port, "wt-pub", true).await;
    for topic in ["ok/1", "clash", "ok/2"] {
        p.client.publish(topic, QoS::AtLeastOnce, false, topic.as_bytes().to_vec()).await.unwrap();
    }
    let start = Instant::now();
    while env.dead_letters().is_empty() {
        assert!(start.elapsed() < LONG, "nothing dead-lettered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let dead = env.dead_letters();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["topic"], "clash");
    assert!(dead[0]["reason"].as_str().unwrap().contains("WRONGTYPE"), "{dead:?}");
    let mut s = Client::connect(env.port, "wt-sub", true).await;
    s.subscribe("ok/#", QoS::AtLeastOnce).await;
    let got: Vec<Vec<u8>> = s.recv(2, LONG).await.into_iter().map(|m| m.payload.to_vec()).collect();
    assert_eq!(got, [b"ok/1".to_vec(), b"ok/2".to_vec()]);
    assert_eq!(env.redis().cli(&["GET", "mqtt:msg:clash"]).trim(), "not ours", "the other key is left alone");
}

/// A Redis that stops answering (SIGSTOP) counts as unavailable after `query_timeout`: publishes
/// are acknowledged from the spool, and written once it answers again (SIGCONT).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_redis_is_an_outage_after_query_timeout() {
    let env = TestEnv::new(Backend::Redis).await;
    let broker = env.start("write_mode = sync, query_timeout = 1s").await;
    let mut p = Client::connect(env.port, "frozen-pub", true).await;
    p.publish("frozen/t", QoS::AtLeastOnce, false, "before").await;
    env.redis().signal("STOP");
    for i in 0..5 {
        assert!(p.try_publish("frozen/t", format!("during-{i}")).await, "acknowledged from the spool");
    }
    broker.wait_for_log("writes go to the on-disk spool").await;
    env.redis().signal("CONT");
    let start = Instant::now();
    while env.count("mqtt_msg").await < 6 {
        assert!(start.elapsed() < LONG, "the spool reaches Redis");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut payloads = env.redis().payloads();
    payloads.sort();
    assert_eq!(payloads, ["before", "during-0", "during-1", "during-2", "during-3", "during-4"]);
}

/// `mqtt-offline-messages history ARGS --format json` on `config`: its rows.
fn history_json(config: &std::path::Path, args: &[&str]) -> Vec<serde_json::Value> {
    let out = std::process::Command::new(BIN)
        .arg("history")
        .args(args)
        .args(["--format", "json", "--config"])
        .arg(config)
        .output()
        .unwrap();
    assert!(out.status.success(), "history {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// `history` reads the keys the store writes: the topics a filter matches (through the topic list
/// for a wildcard), merged in publish order over many pages, with the flags it has on SQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_reads_the_keys_in_publish_order_page_by_page() {
    let env = TestEnv::new(Backend::Redis).await;
    let _broker = env.start("").await;
    let config = env.dir.path().join("config.hocon");
    let idlike = "AbCdEfGhIjKlMnOpQrSt";
    let mut a = Client::connect(env.port, "hist-a", true).await;
    let mut b = Client::connect(env.port, "hist-b", true).await;
    // (topic, sender, payload) in publish order: 400 messages on each of three topics, more than
    // one read of a topic's set (200 ids) and than one round trip of hashes (100).
    let mut topics: Vec<&str> = (0..1200).map(|i| ["h/1/t", "h/2/t", "h/3/x"][i % 3]).collect();
    // `h/#` matches `h` and not `hx`; a topic with glob characters; one shaped like a message id.
    topics.extend(["h", "hx", "h/[x]*/a", "h/x/a", idlike]);
    let mut sent: Vec<(String, String, String)> = Vec::new();
    for (i, topic) in topics.into_iter().enumerate() {
        let (c, who) = if i % 10 == 0 { (&mut b, "hist-b") } else { (&mut a, "hist-a") };
        c.publish(topic, QoS::AtLeastOnce, false, format!("{i}")).await;
        sent.push((topic.to_owned(), who.to_owned(), format!("{i}")));
    }
    env.wait_count("mqtt_msg", sent.len() as i64, LONG).await;
    let shown = |rows: &[serde_json::Value]| -> Vec<(String, String, String)> {
        rows.iter()
            .map(|r| {
                let field = |f: &str| r[f].as_str().unwrap().to_owned();
                (field("topic"), field("sender"), field("payload"))
            })
            .collect()
    };
    let expect = |keep: &dyn Fn(&(String, String, String)) -> bool| -> Vec<(String, String, String)> {
        sent.iter().filter(|m| keep(m)).cloned().collect()
    };

    let all = history_json(&config, &["--topic", "#"]);
    assert_eq!(shown(&all), sent, "every message, in publish order");
    let msgids: Vec<&str> = all.iter().map(|r| r["msgid"].as_str().unwrap()).collect();
    assert!(msgids.windows(2).all(|w| w[0] < w[1]), "in message id order");
    assert!(all.iter().all(|r| r["id"].is_null()), "no row number on Redis");
    for r in all.iter().step_by(97) {
        let hash = hash(env.redis(), &format!("mqtt:msg:{}", r["msgid"].as_str().unwrap()));
        assert_eq!(r["arrived_ms"].as_i64().unwrap().to_string(), hash["ts"], "arrival is the hash's ts");
        assert_eq!((r["qos"].as_i64(), r["retain"].as_bool()), (Some(1), Some(false)));
    }
    assert_eq!(shown(&history_json(&config, &["--topic", "h/+/t"])), expect(&|m| m.0.ends_with("/t")));
    assert_eq!(
        shown(&history_json(&config, &["--topic", "h/#"])),
        expect(&|m| m.0 == "h" || m.0.starts_with("h/")),
        "h/# matches h too, not hx"
    );
    assert_eq!(shown(&history_json(&config, &["--topic", "h/[x]*/#"])), expect(&|m| m.0 == "h/[x]*/a"));
    assert_eq!(shown(&history_json(&config, &["--topic", "h/3/x"])), expect(&|m| m.0 == "h/3/x"));
    assert_eq!(shown(&history_json(&config, &["--topic", idlike])), expect(&|m| m.0 == idlike));
    assert!(history_json(&config, &["--topic", "nothing/here/#"]).is_empty());
    assert_eq!(
        shown(&history_json(&config, &["--topic", "h/+/t", "--sender", "hist-b"])),
        expect(&|m| m.0.ends_with("/t") && m.1 == "hist-b")
    );
    assert_eq!(shown(&history_json(&config, &["--topic", "#", "--limit", "5"])), sent[..5]);
    // --since is inclusive and --until exclusive, in ms of arrival, as on SQL.
    let arrived: Vec<i64> = all.iter().map(|r| r["arrived_ms"].as_i64().unwrap()).collect();
    let (since, until) = (arrived[300], arrived[900]);
    let window: Vec<_> =
        shown(&all).into_iter().zip(&arrived).filter(|(_, t)| (since..until).contains(*t)).map(|(m, _)| m).collect();
    assert!(!window.is_empty() && window.len() < all.len());
    let (since, until) = (since.to_string(), until.to_string());
    assert_eq!(shown(&history_json(&config, &["--topic", "#", "--since", &since, "--until", &until])), window);
    assert!(history_json(&config, &["--topic", "#", "--until", "1h"]).is_empty());
    assert_eq!(history_json(&config, &["--topic", "#", "--since", "1h"]).len(), sent.len());

    // The table: a header and one line per message.
    let out = std::process::Command::new(BIN).args(["history", "--topic", "h/3/x", "--config"]).arg(&config).output();
    let table = String::from_utf8(out.unwrap().stdout).unwrap();
    assert_eq!(table.lines().count(), 401, "{table}");
    let first = table.lines().nth(1).unwrap();
    assert!(first.contains(" hist-a ") && first.contains(" h/3/x ") && first.ends_with(" 2"), "{table}");

    // Acknowledged (queue): deleted, so no longer listed.
    let mut s = Client::connect(env.port, "hist-sub", true).await;
    s.subscribe("h/3/x", QoS::AtLeastOnce).await;
    assert_eq!(s.recv(400, LONG).await.len(), 400);
    env.wait_count("mqtt_msg", sent.len() as i64 - 400, LONG).await;
    assert!(history_json(&config, &["--topic", "h/3/x"]).is_empty());
    assert_eq!(shown(&history_json(&config, &["--topic", "#"])), expect(&|m| m.0 != "h/3/x"));
}

/// 450 messages of one millisecond on one topic, written as another writer of the reference's keys
/// would (more than one read of the set at the same score): all listed, once, in id order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_lists_many_messages_of_one_millisecond_once_in_id_order() {
    use mqtt_offline_messages::message_id::MessageId;
    let env = TestEnv::new(Backend::Redis).await;
    let config = env.write_config(&env.backend_block(""));
    let ms = mqtt_offline_messages::engine::now_ms();
    let ids: Vec<String> =
        (0..450u128).map(|seq| MessageId(((ms as u128 * 1000 + 500) << 64) | (7 << 32) | seq).to_base62()).collect();
    let mut pipe = redis::pipe();
    // Added in reverse: the set orders them, not the writes.
    for (seq, id) in ids.iter().enumerate().rev() {
        pipe.cmd("HSET")
            .arg(format!("mqtt:msg:{id}"))
            .arg("id")
            .arg(id)
            .arg("from")
            .arg("other")
            .arg("qos")
            .arg(1)
            .arg("topic")
            .arg("same/t")
            .arg("retain")
            .arg(0)
            .arg("payload")
            .arg(seq.to_string())
            .arg("ts")
            .arg(ms)
            .ignore();
        pipe.cmd("ZADD").arg("mqtt:msg:same/t").arg(ms).arg(id).ignore();
    }
    pipe.cmd("SADD").arg("mqtt:msg:#topics").arg("same/t").ignore();
    let _: () = pipe.query(&mut env.redis().conn()).unwrap();
    for filter in ["same/t", "same/#"] {
        let rows = history_json(&config, &["--topic", filter]);
        let listed: Vec<&str> = rows.iter().map(|r| r["msgid"].as_str().unwrap()).collect();
        assert_eq!(listed, ids, "{filter}");
        let payloads: Vec<String> = rows.iter().map(|r| r["payload"].as_str().unwrap().to_owned()).collect();
        assert_eq!(payloads, (0..450).map(|i| i.to_string()).collect::<Vec<_>>());
    }
    // An expired hash whose id is still in the set (until the purge) is not listed.
    let expiring = format!("mqtt:msg:{}", ids[7]);
    assert_eq!(env.redis().cli(&["PEXPIRE", &expiring, "1"]).trim(), "1");
    wait_until(|| env.redis().cli(&["EXISTS", &expiring]).trim() == "0", "the hash expires").await;
    assert_eq!(env.redis().cli(&["ZSCORE", "mqtt:msg:same/t", &ids[7]]).trim(), ms.to_string(), "its id stays");
    let listed: Vec<String> =
        history_json(&config, &["--topic", "same/t"]).iter().map(|r| r["msgid"].as_str().unwrap().to_owned()).collect();
    assert_eq!(listed, [&ids[..7], &ids[8..]].concat());
}

/// Peak memory `history` may take for the 80 MB below: listing nothing takes the debug binary
/// about 20 MB; these 80 MB took it 22 MB.
const MAX_HISTORY_RSS_KB: u64 = 30_000;

/// `history` holds a few pages, not the messages: listing 80 MB of payloads (40,000 messages of
/// 2,000 bytes on 8 topics) peaks well below that (GNU time's maximum resident set size).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_lists_80_mb_of_messages_in_bounded_memory() {
    use mqtt_offline_messages::message_id::MessageIdGenerator;
    const N: usize = 40_000;
    let env = TestEnv::new(Backend::Redis).await;
    let config = env.write_config(&env.backend_block(""));
    let payload = "x".repeat(2000);
    let ids = MessageIdGenerator::new(9);
    let mut c = env.redis().conn();
    for chunk in 0..N / 1000 {
        let mut pipe = redis::pipe();
        for i in chunk * 1000..(chunk + 1) * 1000 {
            let id = ids.next_id();
            let (text, ms) = (id.to_base62(), (id.micros() / 1000) as i64);
            let topic = format!("mem/{}", i % 8);
            pipe.cmd("HSET")
                .arg(format!("mqtt:msg:{text}"))
                .arg("id")
                .arg(&text)
                .arg("from")
                .arg("mem-pub")
                .arg("qos")
                .arg(1)
                .arg("topic")
                .arg(&topic)
                .arg("payload")
                .arg(&payload)
                .arg("ts")
                .arg(ms)
                .arg("retain")
                .arg(0)
                .ignore();
            pipe.cmd("ZADD").arg(format!("mqtt:msg:{topic}")).arg(ms).arg(&text).ignore();
            pipe.cmd("SADD").arg("mqtt:msg:#topics").arg(&topic).ignore();
        }
        let _: () = pipe.query(&mut c).unwrap();
    }
    let out = std::process::Command::new("/usr/bin/time")
        .args(["-f", "max_rss_kb=%M", BIN, "history", "--topic", "mem/#", "--format", "json", "--config"])
        .arg(&config)
        .output()
        .expect("/usr/bin/time (Debian package time)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let text = String::from_utf8(out.stdout).unwrap();
    let msgids: Vec<String> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["msgid"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(msgids.len(), N);
    assert!(msgids.windows(2).all(|w| w[0] < w[1]), "in id order");
    let rss_kb: u64 = stderr.lines().find_map(|l| l.strip_prefix("max_rss_kb=")).unwrap().trim().parse().unwrap();
    println!("history listed {} bytes of JSON, peak RSS {rss_kb} kB", text.len());
    assert!(rss_kb < MAX_HISTORY_RSS_KB, "peak RSS {rss_kb} kB for {} bytes listed", text.len());
}

// Thousands of ids in one millisecond (a host that names a burst of publishes at once: Mosquitto's
// plugin after its event queue backed up), replayed a page at a time while each delivered message
// is acknowledged (deleted) at once, as `queue` mode does: every message comes once. Reading on
// through a millisecond by offset skipped ids whenever acks removed earlier ones between two reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_through_a_crowded_millisecond_misses_nothing_while_acks_delete() {
    use futures_util::StreamExt;
    use mqtt_offline_messages::config::{Backend as Configured, Config};
    use mqtt_offline_messages::message::{Message, Publish, ReplayQuery, Subscription};
    use mqtt_offline_messages::message_id::MessageId;
    use mqtt_offline_messages::store::redis::RedisStore;
    use mqtt_offline_messages::store::{AckedMessage, Batch, Store};

    const N: u64 = 3000;
    // Pages longer than the store's reads of a set (200 ids), acks landing while the next page reads.
    const PAGE: i64 = 300;
    let env = TestEnv::new(Backend::Redis).await;
    let config = Config::parse_str(&env.backend_block("")).unwrap();
    let Configured::Redis(cfg) = &config.backend else { panic!("the redis backend") };
    let store = Arc::new(RedisStore::connect(cfg).await.unwrap());
    store.check().await.unwrap();
    let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let inserts: Vec<Message> = (0..N)
        .map(|k| {
            let id = MessageId((u128::from(ms * 1000 + k % 1000) << 64) | u128::from(k));
            let p = Publish {
                from: "crowd-pub".into(),
                topic: "crowd/t".into(),
                qos: 1,
                payload: format!("{k}").into(),
                ..Publish::default()
            };
            Message::new(id, p, None)
        })
        .collect();
    let sent: Vec<String> = inserts.iter().map(|m| m.msgid.clone()).collect();
    let mut sorted = sent.clone();
    sorted.sort_by_key(|t| MessageId::from_base62(t).unwrap());
    store.write_batch(&Batch { inserts, ..Batch::default() }).await.unwrap();

    let sub = Subscription { client_id: "crowd-sub".into(), filter: "crowd/#".into(), qos: 1 };
    let (mut got, mut after, mut acks) = (Vec::new(), 0u128, Vec::new());
    loop {
        let query =
            ReplayQuery { sub: &sub, topic_like: "crowd/%".into(), now_ms: ms as i64 + 1000, after, limit: PAGE };
        let rows: Vec<_> = store.select_messages(&query).collect().await;
        let read = rows.len();
        for m in rows {
            let m = m.unwrap();
            after = after.max(m.position.unwrap());
            got.push(m.msgid.clone());
            let (store, acked) = (store.clone(), AckedMessage { msgid: m.msgid, from: m.from, topic: m.topic });
            let lag = Duration::from_micros(200 * (got.len() as u64 % 8));
            acks.push(tokio::spawn(async move {
                tokio::time::sleep(lag).await;
                store.write_batch(&Batch { deletes: vec![acked], ..Batch::default() }).await.unwrap()
            }));
        }
        if read < PAGE as usize {
            break;
        }
    }
    for a in acks {
        a.await.unwrap();
    }
    assert_eq!(got.len(), N as usize, "every message once");
    assert_eq!(got, sorted, "in id order, none missing, none twice");
}
