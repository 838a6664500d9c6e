//! TLS to MySQL and to Redis: servers started by the test with TLS required and certificates the
//! test makes.

#[macro_use]
mod common;

use std::path::Path;
use std::process::Command;

use common::{free_port, Backend, Broker, Client, PrivateMariaDb, PrivateRedis, TestEnv, BIN, LONG};
use rumqttc::QoS;

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").current_dir(dir).args(args).output().expect("openssl");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A CA, a server certificate for 127.0.0.1 signed by it, a client certificate signed by it, and
/// a second CA that signed nothing.
fn make_certificates(dir: &Path) {
    let req = |key: &str, csr: &str, cn: &str| {
        ["req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr, "-subj", cn].map(str::to_owned)
    };
    for (name, cn) in [("ca", "/CN=test-ca"), ("other-ca", "/CN=other-ca")] {
        let (key, pem) = (format!("{name}.key"), format!("{name}.pem"));
        let self_signed = ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", cn];
        openssl(dir, &[&self_signed[..], &["-keyout", &key, "-out", &pem]].concat());
    }
    // Extensions make X.509 v3 certificates: rustls refuses v1.
    std::fs::write(dir.join("server.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    for (name, cn) in [("server", "/CN=127.0.0.1"), ("client", "/CN=om-client")] {
        let (key, csr, pem, ext) =
            (format!("{name}.key"), format!("{name}.csr"), format!("{name}.pem"), format!("{name}.ext"));
        openssl(dir, &req(&key, &csr, cn).iter().map(String::as_str).collect::<Vec<_>>());
        let sign = ["x509", "-req", "-in", &csr, "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial"];
        openssl(dir, &[&sign[..], &["-out", &pem, "-days", "2", "-extfile", &ext]].concat());
    }
}

fn mysql_block(db: &PrivateMariaDb, user: &str, ssl: &str) -> String {
    format!(
        "mysql {{\n enable = true\n server = \"127.0.0.1:{}\"\n username = {user}\n database = t\n init_default_schema = true\n topics = [\"#\"]\n dead_letter_file = \"{}\"\n spool_dir = \"{}\"\n ssl {{ {ssl} }}\n}}\n",
        db.port,
        db.dir.path().join("dead.jsonl").display(),
        db.dir.path().join("spool").display()
    )
}

fn check(config: &Path) -> (bool, String) {
    let out = Command::new(BIN).args(["check-config", "--config"]).arg(config).output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_mysql_verifies_the_server_and_presents_a_client_certificate() {
    let certs = tempfile::tempdir().unwrap();
    make_certificates(certs.path());
    let p = |f: &str| certs.path().join(f).display().to_string();
    let db = PrivateMariaDb::start(
        &[
            format!("--ssl-ca={}", p("ca.pem")),
            format!("--ssl-cert={}", p("server.pem")),
            format!("--ssl-key={}", p("server.key")),
            "--require-secure-transport=ON".into(),
        ],
        &["--ssl".into(), format!("--ssl-ca={}", p("ca.pem"))],
    )
    .await;
    db.sql_ok("CREATE DATABASE t; CREATE USER 'certuser'@'%' REQUIRE X509; GRANT ALL ON t.* TO 'certuser'@'%';");
    let env = TestEnv::new(Backend::Sqlite).await; // for its directory and port only
    let write = |name: &str, text: String| {
        let path = env.dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };

    // verify_peer with the right CA: the broker runs and stores over TLS.
    let good = write(
        "good.hocon",
        mysql_block(&db, "root", &format!("enable = true, verify = verify_peer, cacertfile = \"{}\"", p("ca.pem"))),
    );
    let mut broker = Broker::start(&good, env.port, env.dir.path().join("broker.log")).await;
    let mut c = Client::connect(env.port, "tls-pub", true).await;
    c.publish("tls/t", QoS::AtLeastOnce, false, "over tls").await;
    let start = std::time::Instant::now();
    while db.sql_ok("select count(*) from t.mqtt_msg") != "1" {
        assert!(start.elapsed() < LONG, "the message never landed");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    c.disconnect().await;
    broker.stop();

    // Without TLS the server refuses; with the wrong CA, verify_peer refuses the server.
    let (ok, out) = check(&write("plain.hocon", mysql_block(&db, "root", "enable = false")));
    assert!(!ok && out.contains("FAIL connect"), "{out}");
    let wrong_ca = format!("enable = true, verify = verify_peer, cacertfile = \"{}\"", p("other-ca.pem"));
    let (ok, out) = check(&write("wrong.hocon", mysql_block(&db, "root", &wrong_ca)));
    assert!(!ok && out.contains("(mysql.ssl)") && out.contains("mysql.ssl.cacertfile"), "{out}");
    // verify_peer checks the name as well: the certificate is for 127.0.0.1, not for `localhost`.
    let right_ca = format!("enable = true, verify = verify_peer, cacertfile = \"{}\"", p("ca.pem"));
    let by_name = mysql_block(&db, "root", &right_ca).replace("\"127.0.0.1:", "\"localhost:");
    let (ok, out) = check(&write("name.hocon", by_name.clone()));
    assert!(!ok && out.contains("(mysql.ssl)"), "{out}");
    let (ok, out) = check(&write("name-none.hocon", by_name.replace("verify_peer", "verify_none")));
    assert!(ok, "verify_none does not check the name: {out}");
    // verify_none encrypts without checking: the same wrong CA is accepted.
    let none = format!("enable = true, verify = verify_none, cacertfile = \"{}\"", p("other-ca.pem"));
    let (ok, out) = check(&write("none.hocon", mysql_block(&db, "root", &none)));
    assert!(ok, "{out}");

    // A user that must present a certificate: with certfile and keyfile it gets in, without not.
    let with_cert = format!(
        "enable = true, verify = verify_peer, cacertfile = \"{}\", certfile = \"{}\", keyfile = \"{}\"",
        p("ca.pem"),
        p("client.pem"),
        p("client.key")
    );
    let (ok, out) = check(&write("cert.hocon", mysql_block(&db, "certuser", &with_cert)));
    assert!(ok, "{out}");
    let without = format!("enable = true, verify = verify_peer, cacertfile = \"{}\"", p("ca.pem"));
    let (ok, out) = check(&write("nocert.hocon", mysql_block(&db, "certuser", &without)));
    assert!(!ok && out.contains("FAIL connect"), "{out}");

    // An unreadable TLS file is named by its key.
    let missing = format!("enable = true, cacertfile = \"{}\"", p("missing.pem"));
    let (ok, out) = check(&write("missing.hocon", mysql_block(&db, "root", &missing)));
    assert!(!ok && out.contains("mysql.ssl.cacertfile: cannot read"), "{out}");
    // And `run` stops on it at start-up, before it listens.
    let run = Command::new(BIN)
        .args(["run", "--config"])
        .arg(env.dir.path().join("missing.hocon"))
        .args(["--bind", &format!("127.0.0.1:{}", env.port)])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success() && err.contains("mysql.ssl.cacertfile: cannot read"), "{err}");
}

/// MQTT over TLS (broker.tls), with a client nobody here wrote: it checks the broker's certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_over_tls_reaches_the_store() {
    let certs = tempfile::tempdir().unwrap();
    make_certificates(certs.path());
    let p = |f: &str| certs.path().join(f).display().to_string();
    let env = TestEnv::new(Backend::Sqlite).await;
    let tls_port = common::free_port();
    let config = format!(
        "broker {{ tls {{ bind = \"127.0.0.1:{tls_port}\", certfile = \"{}\", keyfile = \"{}\" }} }}\n{}",
        p("server.pem"),
        p("server.key"),
        env.backend_block("")
    );
    let _broker = Broker::start(&env.write_config(&config), env.port, env.dir.path().join("broker.log")).await;
    let publish = |ca: &str, payload: &str| {
        Command::new("mosquitto_pub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &tls_port.to_string(),
                "--cafile",
                ca,
                "-q",
                "1",
                "-t",
                "tls/t",
                "-m",
                payload,
            ])
            .output()
            .unwrap()
    };
    let ok = publish(&p("ca.pem"), "secured");
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let refused = publish(&p("other-ca.pem"), "unchecked");
    assert!(!refused.status.success(), "a client that does not trust the certificate does not connect");
    env.wait_count("mqtt_msg", 1, LONG).await;
    assert_eq!(env.messages().await[0].payload, b"secured");
}

/// Redis with TLS on a port of its own that requires client certificates: the plugin verifies the
/// server against `cacertfile` and presents its certificate; another CA fails `check-config`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_redis_verifies_the_server_and_presents_a_client_certificate() {
    let certs = tempfile::tempdir().unwrap();
    make_certificates(certs.path());
    let p = |f: &str| certs.path().join(f).display().to_string();
    let tls_port = free_port().to_string();
    let (cert, key, ca) = (p("server.pem"), p("server.key"), p("ca.pem"));
    let redis = PrivateRedis::start(
        &certs.path().join("redis"),
        &["--tls-port", &tls_port, "--tls-cert-file", &cert, "--tls-key-file", &key, "--tls-ca-cert-file", &ca],
    );
    let block = |ca: &str, verify: &str| {
        format!(
            "redis {{ enable = true, servers = \"127.0.0.1:{tls_port}\", topics = [\"#\"], spool_dir = \"{}\", \
             dead_letter_file = \"{}\", ssl {{ enable = true, verify = {verify}, cacertfile = \"{ca}\", certfile = \"{}\", keyfile = \"{}\" }} }}",
            certs.path().join("spool").display(),
            certs.path().join("dead.jsonl").display(),
            p("client.pem"),
            p("client.key")
        )
    };
    let good = certs.path().join("good.hocon");
    std::fs::write(&good, block(&p("ca.pem"), "verify_peer")).unwrap();
    let (ok, text) = check(&good);
    assert!(ok, "{text}");
    let port = free_port();
    let broker = Broker::start(&good, port, certs.path().join("broker.log")).await;
    let mut c = Client::connect(port, "tls-redis-pub", true).await;
    c.publish("tlsr/t", QoS::AtLeastOnce, false, "secured").await;
    let start = std::time::Instant::now();
    while redis.payloads() != ["secured"] {
        assert!(start.elapsed() < LONG, "stored over TLS");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    drop(broker);

    let wrong = certs.path().join("wrong.hocon");
    std::fs::write(&wrong, block(&p("other-ca.pem"), "verify_peer")).unwrap();
    let (ok, text) = check(&wrong);
    assert!(!ok && text.contains("FAIL connect"), "{text}");
    // verify_none encrypts without checking the certificate.
    std::fs::write(&wrong, block(&p("other-ca.pem"), "verify_none")).unwrap();
    let (ok, text) = check(&wrong);
    assert!(ok, "{text}");
}
