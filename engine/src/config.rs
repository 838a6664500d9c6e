//! `config.hocon` -> typed configuration: the reference plugin's keys, our defaults, and the errors
//! a user sees. Every error names the full key path (or the file) and what to do; no error and no
//! `Debug` output contains a password.
//!
//! The tree is walked by hand rather than serde-derived so that unknown keys and wrong types are
//! reported with their full path. Every block is checked, enabled or not, so a mistake in a
//! disabled block shows up now rather than on the day someone enables it.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hocon::{Hocon, HoconLoader};

use crate::auth::{AclRule, Action, AuthConfig, User};
pub use crate::spool::SpoolFull;

mod redis;
pub use redis::{RedisConfig, RedisType, DEFAULT_REDIS_MESSAGE_TTL};

type Map = linked_hash_map::LinkedHashMap<String, Hocon>;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the config file {path}: {reason}; check the path given with --config")]
    Read { path: String, reason: String },
    #[error(
        "not valid HOCON: parsing stops at line {line}; check the braces, brackets, quotes and `=` signs there{hint}"
    )]
    Syntax { line: usize, hint: &'static str },
    #[error("`include` is not supported: put every setting in this one file")]
    Include,
    #[error("{key}: unknown key{suggestion}; known keys {scope} are: {known}")]
    UnknownKey { key: String, suggestion: String, scope: String, known: String },
    #[error("{key}: expected {expected}, found {found}")]
    Type { key: String, expected: &'static str, found: &'static str },
    #[error("{key}: {reason}")]
    Invalid { key: String, reason: String },
    #[error(
        "{key}: ${{{var}}} is neither an environment variable nor a key of this file; set {var}, \
         or write ${{?{var}}} to keep the default when it is unset"
    )]
    Unresolved { key: String, var: String },
    #[error("no backend enabled: set `mysql.enable = true`, `sqlite.enable = true` or `redis.enable = true`")]
    NoBackend,
    #[error("{0} are true: enable exactly one backend block")]
    TwoBackends(String),
    /// Every problem of one file, found in one run, in file order.
    #[error("{} problems; fix them all, then run again:\n{}", .0.len(), list(.0))]
    Several(Vec<ConfigError>),
    /// Any of the above, found while loading a file.
    #[error("{path}: {error}")]
    InFile { path: String, error: Box<ConfigError> },
}

fn list(errors: &[ConfigError]) -> String {
    errors.iter().map(|e| format!("  - {e}")).collect::<Vec<_>>().join("\n")
}

/// A password: printed as `***`; [`Secret::expose`] is the only way to read it, so that neither a
/// logged config nor an error message can carry it.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

#[derive(Clone, Debug)]
pub struct Config {
    pub broker: BrokerConfig,
    pub log: LogConfig,
    pub backend: Backend,
    pub metrics: MetricsConfig,
    pub auth: AuthConfig,
}

/// How the binary logs (`log`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogConfig {
    /// A tracing filter such as `"info"` or `"info,mqtt_offline_messages=debug"` (`log.level`);
    /// `None`: the binary's default. `RUST_LOG`, when set, takes its place.
    pub level: Option<String>,
    pub format: LogFormat,
}

/// `log.format`: `text` for people, `json` (one object per line) for log shippers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// The HTTP endpoint with `/metrics` and `/health` (`metrics.bind`); off when unset.
#[derive(Clone, Debug, Default)]
pub struct MetricsConfig {
    pub bind: Option<SocketAddr>,
}

#[derive(Clone, Debug)]
pub struct BrokerConfig {
    /// The MQTT TCP listener (`broker.bind`, overridden by `--bind`).
    pub bind: SocketAddr,
    /// Node id in message ids (`broker.node_id`); random per process when unset.
    pub node_id: Option<u32>,
    /// Largest MQTT packet the listener accepts, bytes (`broker.max_packet_size`).
    pub max_packet_size: u32,
    /// A second listener, MQTT over TLS (`broker.tls`), when its `bind` is set.
    pub tls: Option<TlsListener>,
    /// How long SIGTERM waits for the writer and the spool to reach the database.
    pub shutdown_timeout: Duration,
    /// Messages a session's queue holds while its client is away or slow (`broker.max_mqueue_len`,
    /// rmqtt's name); beyond it rmqtt drops the oldest QoS 1/2 ones (and a new QoS 0 one).
    pub max_mqueue_len: usize,
    /// How long a message without an MQTT 5 Message Expiry Interval waits in a session's queue,
    /// and a retained one is kept (`broker.message_expiry_interval`, rmqtt's name; zero: for ever).
    /// `None`: as long as the backend keeps its row, `message_ttl`, for ever without one.
    pub message_expiry_interval: Option<Duration>,
    /// How long the broker keeps an MQTT 3.1.1 persistent session (clean session = false) after
    /// its client disconnects (`broker.session_expiry_interval`, rmqtt's name; zero: it ends with
    /// the connection). MQTT 5 clients ask for their own in CONNECT.
    pub session_expiry_interval: Duration,
    /// Several brokers as one (`broker.cluster`); a single broker when absent.
    pub cluster: Option<ClusterConfig>,
}

impl BrokerConfig {
    /// What the listener gets as `message_expiry_interval`: the configured one, or the backend's
    /// `message_ttl` (zero, for ever, without one).
    pub fn message_expiry_interval(&self, backend: &Backend) -> Duration {
        self.message_expiry_interval.or(backend.storage().message_ttl).unwrap_or(Duration::ZERO)
    }
}

/// `broker.cluster`: rmqtt's cluster plugins, with rmqtt's meanings. The node id is also the node
/// in this broker's message ids, so `broker.node_id`, when set, must be the same.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterConfig {
    pub mode: ClusterMode,
    /// This node's id (`broker.cluster.node_id`), 1 or more.
    pub node_id: u32,
    /// Every node's gRPC address, this one's included (`broker.cluster.nodes`).
    pub nodes: Vec<NodeAddr>,
    /// Every node's Raft address (`broker.cluster.raft_peers`); raft mode only.
    pub raft_peers: Vec<NodeAddr>,
}

impl ClusterConfig {
    /// This node's entry in `nodes`: where its gRPC server listens.
    pub fn this_node(&self) -> &NodeAddr {
        self.nodes.iter().find(|n| n.id == self.node_id).expect("checked when the config was read")
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClusterMode {
    /// Every node tells every other (rmqtt-cluster-broadcast).
    Broadcast,
    /// Routes and sessions agreed through Raft (rmqtt-cluster-raft).
    Raft,
}

/// `"ID@HOST:PORT"`, as rmqtt writes node addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeAddr {
    pub id: u32,
    pub addr: String,
}

impl std::fmt::Display for NodeAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.id, self.addr)
    }
}

#[derive(Clone, Debug)]
pub struct TlsListener {
    pub bind: SocketAddr,
    pub certfile: PathBuf,
    pub keyfile: PathBuf,
}

/// rmqtt's and EMQX's default: 1 MiB.
pub const DEFAULT_MAX_PACKET_SIZE: u32 = 1 << 20;
/// MQTT's own limit (the Remaining Length field): 256 MiB.
const MQTT_MAX_PACKET_SIZE: i64 = 268_435_455;

/// The one enabled backend block.
#[derive(Clone, Debug)]
pub enum Backend {
    MySql(MySqlConfig),
    Sqlite(SqliteConfig),
    Redis(RedisConfig),
}

impl Backend {
    pub fn storage(&self) -> &StorageConfig {
        match self {
            Backend::MySql(c) => &c.storage,
            Backend::Sqlite(c) => &c.storage,
            Backend::Redis(c) => &c.storage,
        }
    }

    pub fn storage_mut(&mut self) -> &mut StorageConfig {
        match self {
            Backend::MySql(c) => &mut c.storage,
            Backend::Sqlite(c) => &mut c.storage,
            Backend::Redis(c) => &mut c.storage,
        }
    }

    /// The block's name, which is also the prefix of its keys in errors.
    pub fn name(&self) -> &'static str {
        match self {
            Backend::MySql(_) => "mysql",
            Backend::Sqlite(_) => "sqlite",
            Backend::Redis(_) => "redis",
        }
    }
}

#[derive(Clone, Debug)]
pub struct MySqlConfig {
    /// "host:port", or "host" for port 3306: the servers of `mysql.server`, in the order they are
    /// tried (several for a replicated database: the store moves to the next when one goes away).
    pub servers: Vec<String>,
    pub username: String,
    pub password: Secret,
    pub database: String,
    pub pool_size: u32,
    pub ssl: SslConfig,
    pub storage: StorageConfig,
}

#[derive(Clone, Debug)]
pub struct SqliteConfig {
    pub path: PathBuf,
    pub storage: StorageConfig,
}

#[derive(Clone, Debug, Default)]
pub struct SslConfig {
    pub enable: bool,
    pub server_name_indication: Option<String>,
    pub verify: SslVerify,
    pub cacertfile: Option<PathBuf>,
    pub certfile: Option<PathBuf>,
    pub keyfile: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SslVerify {
    #[default]
    VerifyPeer,
    VerifyNone,
}

/// Keys every SQL backend block has.
#[derive(Clone, Debug)]
pub struct StorageConfig {
    /// MQTT topic filters whose messages are stored; empty stores nothing (as the reference).
    pub topics: Vec<String>,
    pub init_default_schema: bool,
    pub templates: Templates,
    pub batch_size: usize,
    pub batch_time: Duration,
    /// How long one statement may take before the database counts as unavailable (`query_timeout`):
    /// a write then goes to the spool, a read fails and is retried.
    pub query_timeout: Duration,
    pub delivery_mode: DeliveryMode,
    pub restore_subscriptions: RestoreSubscriptions,
    /// How long a message is kept; `None` keeps it until acknowledged (or forever in `fanout`).
    pub message_ttl: Option<Duration>,
    /// Stored messages kept per topic, oldest dropped first; `None`: no cap.
    pub max_messages_per_topic: Option<u64>,
    /// Rows one replay query reads; a replay reads page after page until it has them all.
    pub replay_page_size: u32,
    pub write_mode: WriteMode,
    /// Where messages the database refuses go, one JSON object per line (`dead_letter_file`).
    pub dead_letter_file: PathBuf,
    /// Operations the writer holds in memory (`max_buffered`); beyond it publishers wait while the
    /// database is up, and the spool takes them while it is not. `None`: 16 batches.
    pub max_buffered: Option<usize>,
    /// Where operations wait while the database is unavailable (`spool_dir`).
    pub spool_dir: PathBuf,
    pub spool_max_bytes: u64,
    pub spool_full: SpoolFull,
}

/// When a publisher gets its PUBACK / PUBREC (`write_mode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WriteMode {
    /// At once; the row is committed within about `batch_time`.
    #[default]
    Async,
    /// Once the row is committed (publishers waiting together share one commit).
    Sync,
}

/// What an acknowledgement does to a stored message (`delivery_mode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeliveryMode {
    /// The reference's: the first ack deletes the message for everybody.
    #[default]
    Queue,
    /// Rows stay; each subscriber gets every message once.
    Fanout,
}

/// When stored subscriptions are restored (`restore_subscriptions`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RestoreSubscriptions {
    /// MQTT's sessions: a clean start clears them; an ended session takes them along.
    #[default]
    Persistent,
    /// The reference's: kept until unsubscribed, restored on every connect.
    Always,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Templates {
    pub insert_message_sql: String,
    pub delete_message_sql: String,
    pub select_message_sql: String,
    pub insert_subscription_sql: String,
    pub select_subscriptions_sql: String,
    pub delete_subscription_sql: String,
    pub insert_delivery_sql: String,
    pub purge_expired_sql: String,
    pub trim_topic_sql: String,
}

const DELETE_MESSAGE_SQL: &str = "delete from mqtt_msg where msgid = ${id}";
/// Unexpired rows matching the filter's literal prefix that this client has not had yet, a page
/// at a time, in publish order.
const SELECT_MESSAGE_SQL: &str = "select * from mqtt_msg m where m.topic like ${topic_like} escape '!' \
and m.id > ${after_id} and (m.expiry is null or m.expiry > ${now}) \
and not exists (select 1 from mqtt_delivered d where d.clientid = ${clientid} and d.msgid = m.msgid) \
order by m.id limit ${limit}";
const SELECT_SUBSCRIPTIONS_SQL: &str = "select topic, qos from mqtt_sub where clientid = ${clientid}";
const DELETE_SUBSCRIPTION_SQL: &str = "delete from mqtt_sub where clientid = ${clientid} and topic = ${topic}";

impl Templates {
    /// The reference plugin's templates (MySQL dialect) with our columns (`expiry`, `properties`),
    /// and ours for what the reference lacks. The select reads the filter's literal prefix, pages,
    /// and leaves out expired rows and rows this client has had.
    pub fn mysql_default() -> Templates {
        Templates {
            // A batch retried after a lost commit must not store its rows twice: msgid is unique.
            insert_message_sql: "insert into mqtt_msg(msgid, sender, topic, qos, retain, payload, arrived, expiry, properties) values(${id}, ${from}, ${topic}, ${qos}, ${flags.retain}, ${payload}, FROM_UNIXTIME(${timestamp}/1000), ${expiry}, ${properties}) on duplicate key update msgid = msgid".into(),
            delete_message_sql: DELETE_MESSAGE_SQL.into(),
            select_message_sql: SELECT_MESSAGE_SQL.into(),
            insert_subscription_sql: "insert into mqtt_sub(clientid, topic, qos) values(${clientid}, ${topic}, ${qos}) on duplicate key update qos = ${qos}".into(),
            select_subscriptions_sql: SELECT_SUBSCRIPTIONS_SQL.into(),
            delete_subscription_sql: DELETE_SUBSCRIPTION_SQL.into(),
            // `ignore` also skips a message that is gone already (the foreign key).
            insert_delivery_sql: "insert ignore into mqtt_delivered(clientid, msgid) values(${clientid}, ${id})".into(),
            purge_expired_sql: "delete from mqtt_msg where expiry <= ${now} order by expiry limit ${limit}".into(),
            trim_topic_sql: "delete from mqtt_msg where topic = ${topic} and id <= (select id from (select id from mqtt_msg where topic = ${topic} order by id desc limit 1 offset ${limit}) newest)".into(),
        }
    }

    /// The same in SQLite's dialect (`arrived` holds unix milliseconds).
    pub fn sqlite_default() -> Templates {
        Templates {
            insert_message_sql: "insert into mqtt_msg(msgid, sender, topic, qos, retain, payload, arrived, expiry, properties) values(${id}, ${from}, ${topic}, ${qos}, ${flags.retain}, ${payload}, ${timestamp}, ${expiry}, ${properties}) on conflict(msgid) do nothing".into(),
            insert_subscription_sql: "insert into mqtt_sub(clientid, topic, qos) values(${clientid}, ${topic}, ${qos}) on conflict(clientid, topic) do update set qos = excluded.qos".into(),
            // SQLite's `or ignore` does not cover the foreign key: skip a message that is gone here.
            insert_delivery_sql: "insert or ignore into mqtt_delivered(clientid, msgid) select ${clientid}, ${id} where exists (select 1 from mqtt_msg where msgid = ${id})".into(),
            purge_expired_sql: "delete from mqtt_msg where id in (select id from mqtt_msg where expiry <= ${now} order by expiry limit ${limit})".into(),
            trim_topic_sql: "delete from mqtt_msg where topic = ${topic} and id <= (select id from mqtt_msg where topic = ${topic} order by id desc limit 1 offset ${limit})".into(),
            ..Templates::mysql_default()
        }
    }
}

/// Ours, not the reference's: its 1 row / 100 ms is one round trip per message. Provisional until
/// the benchmark picks them.
pub const DEFAULT_BATCH_SIZE: usize = 1000;
pub const DEFAULT_BATCH_TIME: Duration = Duration::from_millis(5);
pub const DEFAULT_QUERY_TIMEOUT: Duration = Duration::from_secs(10);
/// Large pages keep the cost of a broad filter low where the database sorts each page (SQLite
/// reads a prefix range through the topic index and sorts it by id, page after page).
pub const DEFAULT_REPLAY_PAGE_SIZE: u32 = 10_000;
pub const DEFAULT_DEAD_LETTER_FILE: &str = "data/dead-letters.jsonl";
pub const DEFAULT_SPOOL_DIR: &str = "data/spool";
pub const DEFAULT_SPOOL_MAX_BYTES: u64 = 1 << 30;

const MAX_BATCH_SIZE: i64 = 1_000_000;
const MAX_POOL_SIZE: i64 = 1024;
const MAX_REPLAY_PAGE_SIZE: i64 = 1_000_000;

const TOP_KEYS: &[&str] = &["broker", "log", "metrics", "auth", "mysql", "sqlite", "redis"];
const LOG_KEYS: &[&str] = &["level", "format"];
const AUTH_KEYS: &[&str] = &["users", "acl"];
const USER_KEYS: &[&str] = &["username", "password_hash"];
const ACL_KEYS: &[&str] = &["username", "action", "topic", "permission"];
const METRICS_KEYS: &[&str] = &["bind"];
const BROKER_KEYS: &[&str] = &[
    "bind",
    "node_id",
    "max_packet_size",
    "tls",
    "shutdown_timeout",
    "max_mqueue_len",
    "message_expiry_interval",
    "session_expiry_interval",
    "cluster",
];
/// rmqtt's defaults for the broker's session settings.
pub const DEFAULT_MAX_MQUEUE_LEN: usize = 1000;
pub const DEFAULT_SESSION_EXPIRY_INTERVAL: Duration = Duration::from_secs(2 * 3600);
const MAX_MQUEUE_LEN: i64 = 100_000_000;
const CLUSTER_KEYS: &[&str] = &["mode", "node_id", "nodes", "raft_peers"];
const TLS_LISTENER_KEYS: &[&str] = &["bind", "certfile", "keyfile"];
/// The keys of the `mysql` and `sqlite` blocks that Redis has no use for: the schema and the templates.
const SQL_STORAGE_KEYS: &[&str] = &[
    "init_default_schema",
    "insert_message_sql",
    "delete_message_sql",
    "select_message_sql",
    "insert_subscription_sql",
    "select_subscriptions_sql",
    "delete_subscription_sql",
    "insert_delivery_sql",
    "purge_expired_sql",
    "trim_topic_sql",
];
const STORAGE_KEYS: &[&str] = &[
    "enable",
    "topics",
    "batch_size",
    "batch_time",
    "query_timeout",
    "delivery_mode",
    "restore_subscriptions",
    "message_ttl",
    "max_messages_per_topic",
    "replay_page_size",
    "write_mode",
    "dead_letter_file",
    "max_buffered",
    "spool_dir",
    "spool_max_bytes",
    "spool_full",
];
const MYSQL_KEYS: &[&str] = &["server", "username", "password", "database", "pool_size", "ssl"];
const SQLITE_KEYS: &[&str] = &["path"];
const SSL_KEYS: &[&str] = &["enable", "server_name_indication", "verify", "cacertfile", "certfile", "keyfile"];

impl Config {
    /// Reads and checks the file; every error but [`ConfigError::Read`] is wrapped in
    /// [`ConfigError::InFile`] so that the message names the file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::Read { path: path.display().to_string(), reason: e.to_string() })?;
        Config::parse_str(&text)
            .map_err(|e| ConfigError::InFile { path: path.display().to_string(), error: Box::new(e) })
    }

    /// Checks the whole file: every unknown key and every bad value is reported (as
    /// [`ConfigError::Several`] when there are more than one), not only the first.
    pub fn parse_str(text: &str) -> Result<Config, ConfigError> {
        let tree = parse_tree(text)?;
        let Hocon::Hash(map) = &tree else { return Err(ConfigError::Syntax { line: 1, hint: "" }) };
        let errors = RefCell::new(Vec::new());
        let config = Self::from_tree(Table { path: String::new(), map: Some(map), source: text, errors: &errors });
        let mut errors = errors.into_inner();
        match config {
            Some(config) if errors.is_empty() => Ok(config),
            _ if errors.len() == 1 => Err(errors.remove(0)),
            _ => Err(ConfigError::Several(errors)),
        }
    }

    /// A block's value checks that fail are recorded and the block is skipped, so that the
    /// others are still checked; the keys' own checks record and go on with the default.
    fn from_tree(root: Table<'_>) -> Option<Config> {
        let root = root.checked(TOP_KEYS);
        let broker = root.kept(root.table("broker", BROKER_KEYS).and_then(|t| broker(&t)));
        let log = root.kept(root.table("log", LOG_KEYS).and_then(|t| {
            let format = t.choice("format", &[("text", LogFormat::Text), ("json", LogFormat::Json)])?;
            Ok(LogConfig { level: t.non_empty_string("level")?, format })
        }));
        let metrics = root.kept(root.table("metrics", METRICS_KEYS).and_then(|t| metrics(&t)));
        let mysql =
            root.kept(root.table("mysql", &[STORAGE_KEYS, SQL_STORAGE_KEYS, MYSQL_KEYS].concat()).and_then(|t| {
                let enable = t.enable()?;
                Ok((enable, mysql(&t)?))
            }));
        let sqlite =
            root.kept(root.table("sqlite", &[STORAGE_KEYS, SQL_STORAGE_KEYS, SQLITE_KEYS].concat()).and_then(|t| {
                let enable = t.enable()?;
                Ok((enable, sqlite(&t)?))
            }));
        let redis = root.kept(root.table("redis", &redis::redis_keys()).and_then(|t| redis::redis(&t)));
        let auth = root.kept(root.table("auth", AUTH_KEYS).and_then(|t| auth(&t)));
        // Which backend is enabled cannot be told from a broken block: its errors are recorded.
        let ((mysql_on, mysql), (sqlite_on, sqlite), (redis_on, redis)) = (mysql?, sqlite?, redis?);
        let enabled = [
            mysql_on?.then_some(("mysql", Backend::MySql(mysql))),
            sqlite_on?.then_some(("sqlite", Backend::Sqlite(sqlite))),
            redis_on?.then_some(("redis", Backend::Redis(redis))),
        ];
        let mut enabled: Vec<_> = enabled.into_iter().flatten().collect();
        let backend = root.kept(match enabled.len() {
            0 => Err(ConfigError::NoBackend),
            1 => Ok(enabled.remove(0).1),
            _ => {
                let names: Vec<_> = enabled.iter().map(|(name, _)| format!("`{name}.enable`")).collect();
                Err(ConfigError::TwoBackends(names.join(" and ")))
            }
        })?;
        let broker = broker?;
        if broker.cluster.is_some() && matches!(backend, Backend::Sqlite(_)) {
            root.kept::<()>(Err(ConfigError::Invalid {
                key: "broker.cluster".into(),
                reason: "needs the mysql backend: every node of a cluster stores into and replays from one database; \
                         enable the mysql block"
                    .into(),
            }))?;
        }
        Some(Config { broker, log: log?, backend, metrics: metrics?, auth: auth? })
    }

    /// Start-up warnings a valid config still deserves (the caller logs them).
    pub fn warnings(&self) -> Vec<String> {
        let (name, s) = (self.backend.name(), self.backend.storage());
        let mut w = Vec::new();
        if s.batch_size == 1 {
            w.push(format!(
                "{name}.batch_size = 1 writes one row per round trip, the slow path; the default is {DEFAULT_BATCH_SIZE}"
            ));
        }
        if let Backend::MySql(m) = &self.backend {
            if m.ssl.server_name_indication.is_some() {
                w.push("mysql.ssl.server_name_indication is accepted but not used: the name checked is the host of mysql.server".into());
            }
        }
        if let Backend::Redis(r) = &self.backend {
            w.extend(redis::warnings(r));
        }
        if s.topics.is_empty() {
            w.push(format!("{name}.topics is empty: no message will be stored (add filters, e.g. [\"#\"])"));
        }
        w
    }
}

/// The top-level keys the file sets (`broker`, `mysql`, ...), as written: a host running inside
/// another broker refuses the blocks that belong to ours.
pub fn top_level_keys(text: &str) -> Result<Vec<String>, ConfigError> {
    match parse_tree(text)? {
        Hocon::Hash(map) => Ok(map.keys().cloned().collect()),
        _ => Ok(Vec::new()),
    }
}

/// Every key the parser accepts, as full paths (`mysql.ssl.verify`): what the configuration
/// reference must document.
pub fn known_keys() -> Vec<String> {
    let block = |name: &str, keys: &[&str]| keys.iter().map(|k| format!("{name}.{k}")).collect::<Vec<_>>();
    let mut keys = TOP_KEYS.iter().map(|k| k.to_string()).collect::<Vec<_>>();
    keys.extend(block("broker", BROKER_KEYS));
    keys.extend(block("broker.tls", TLS_LISTENER_KEYS));
    keys.extend(block("log", LOG_KEYS));
    keys.extend(block("broker.cluster", CLUSTER_KEYS));
    keys.extend(block("metrics", METRICS_KEYS));
    keys.extend(block("auth", AUTH_KEYS));
    keys.extend(block("auth.users[]", USER_KEYS));
    keys.extend(block("auth.acl[]", ACL_KEYS));
    keys.extend(block("mysql", &[STORAGE_KEYS, SQL_STORAGE_KEYS, MYSQL_KEYS].concat()));
    keys.extend(block("mysql.ssl", SSL_KEYS));
    keys.extend(block("sqlite", &[STORAGE_KEYS, SQL_STORAGE_KEYS, SQLITE_KEYS].concat()));
    keys.extend(block("redis", &redis::redis_keys()));
    keys.extend(block("redis.ssl", SSL_KEYS));
    keys
}

/// Parses twice: strictly, only to catch syntax errors (the lax parser silently drops everything
/// from the first one on), then laxly, because the strict mode also rejects an unset `${?VAR}`
/// that has no earlier value, which must keep the key's default.
fn parse_tree(text: &str) -> Result<Hocon, ConfigError> {
    // The crate's strict mode rejects a last line of spaces or tabs.
    let text = text.trim_end();
    match HoconLoader::new().strict().load_str(text) {
        Ok(_) => {}
        Err(hocon::Error::IncludeNotAllowedFromStr | hocon::Error::Include { .. }) => return Err(ConfigError::Include),
        Err(_) => return Err(syntax_error(text)),
    }
    HoconLoader::new().load_str(text).and_then(|l| l.hocon()).map_err(|_| syntax_error(text))
}

/// The crate gives no position: the error is on the first line after the longest prefix of whole
/// lines that parses once its open blocks are closed. Never quotes the line (it may hold a password).
fn syntax_error(text: &str) -> ConfigError {
    const MAX_DEPTH: usize = 4;
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let parses = |n: usize| {
        let prefix = lines[..n].concat();
        let prefix = prefix.trim_end();
        (0..=MAX_DEPTH)
            .any(|depth| HoconLoader::new().strict().load_str(&(prefix.to_owned() + &"\n}".repeat(depth))).is_ok())
    };
    let good = (0..lines.len()).rev().find(|&n| parses(n)).unwrap_or(0);
    let is_blank = |l: &str| {
        let l = l.trim();
        l.is_empty() || l.starts_with('#') || l.starts_with("//")
    };
    let bad = (good..lines.len()).find(|&i| !is_blank(lines[i])).unwrap_or(good);
    let unquoted_colon = lines.get(bad).and_then(|l| l.split_once('=')).is_some_and(|(_, value)| {
        let value = value.trim_start();
        !value.starts_with('"') && value.contains(':')
    });
    let hint = if unquoted_colon { " (a value with `:` must be quoted, e.g. server = \"127.0.0.1:3306\")" } else { "" };
    ConfigError::Syntax { line: bad + 1, hint }
}

fn metrics(t: &Table<'_>) -> Result<MetricsConfig, ConfigError> {
    Ok(MetricsConfig { bind: t.addr("bind", "127.0.0.1:9090")? })
}

fn broker(t: &Table<'_>) -> Result<BrokerConfig, ConfigError> {
    let cluster = cluster(&t.table("cluster", CLUSTER_KEYS)?)?;
    let mut node_id = t.int("node_id", 0, u32::MAX.into())?.map(|n| n as u32);
    if let Some(c) = &cluster {
        match node_id {
            Some(id) if id != c.node_id => {
                return Err(t.invalid(
                    "node_id",
                    format!(
                        "is {id} but broker.cluster.node_id is {}: in a cluster the node id in message ids is the \
                         cluster's; remove broker.node_id or make them equal",
                        c.node_id
                    ),
                ))
            }
            _ => node_id = Some(c.node_id),
        }
    }
    Ok(BrokerConfig {
        bind: t.addr("bind", "127.0.0.1:1883")?.unwrap_or(SocketAddr::from(([127, 0, 0, 1], 1883))),
        node_id,
        max_packet_size: t
            .int("max_packet_size", 64, MQTT_MAX_PACKET_SIZE)?
            .map_or(DEFAULT_MAX_PACKET_SIZE, |n| n as u32),
        tls: tls_listener(&t.table("tls", TLS_LISTENER_KEYS)?)?,
        shutdown_timeout: t.duration("shutdown_timeout", Unit::Seconds)?.unwrap_or(Duration::from_secs(30)),
        max_mqueue_len: t.int("max_mqueue_len", 1, MAX_MQUEUE_LEN)?.map_or(DEFAULT_MAX_MQUEUE_LEN, |n| n as usize),
        message_expiry_interval: t.duration("message_expiry_interval", Unit::Seconds)?,
        session_expiry_interval: t
            .duration("session_expiry_interval", Unit::Seconds)?
            .unwrap_or(DEFAULT_SESSION_EXPIRY_INTERVAL),
        cluster,
    })
}

/// `broker.cluster`: absent for a single broker.
fn cluster(t: &Table<'_>) -> Result<Option<ClusterConfig>, ConfigError> {
    if t.map.is_none() {
        return Ok(None);
    }
    let mode = match t.string("mode")?.as_deref() {
        Some("broadcast") => ClusterMode::Broadcast,
        Some("raft") => ClusterMode::Raft,
        Some(other) => {
            return Err(t.invalid("mode", format!("{other:?} is not a cluster mode; write broadcast or raft")))
        }
        None => return Err(t.invalid("mode", "is required in broker.cluster: broadcast or raft".into())),
    };
    let Some(node_id) = t.int("node_id", 1, u32::MAX.into())? else {
        if t.get("node_id")?.is_none() {
            return Err(t.invalid("node_id", "is required in broker.cluster: this node's id, e.g. 1".into()));
        }
        return Ok(None); // a wrong value, recorded already
    };
    let node_id = node_id as u32;
    let nodes = node_addrs(t, "nodes", node_id)?
        .ok_or_else(|| t.invalid("nodes", "is required in broker.cluster: every node's gRPC address, e.g. [\"1@127.0.0.1:5363\", \"2@127.0.0.1:5364\"]".into()))?;
    let raft_peers = node_addrs(t, "raft_peers", node_id)?;
    let raft_peers = match (mode, raft_peers) {
        (ClusterMode::Raft, None) => {
            return Err(t.invalid(
                "raft_peers",
                "is required with mode = raft: every node's Raft address, e.g. [\"1@127.0.0.1:6003\", \"2@127.0.0.1:6004\"]".into(),
            ))
        }
        (ClusterMode::Broadcast, Some(_)) => {
            return Err(t.invalid("raft_peers", "is for mode = raft only; remove it or set mode = raft".into()))
        }
        (ClusterMode::Raft, Some(peers)) => {
            let ids = |l: &[NodeAddr]| l.iter().map(|n| n.id).collect::<std::collections::BTreeSet<_>>();
            if ids(&peers) != ids(&nodes) {
                return Err(t.invalid("raft_peers", "must name the same node ids as broker.cluster.nodes".into()));
            }
            peers
        }
        (ClusterMode::Broadcast, None) => Vec::new(),
    };
    Ok(Some(ClusterConfig { mode, node_id, nodes, raft_peers }))
}

/// A list of `"ID@HOST:PORT"`, ids unique, `node_id` among them.
fn node_addrs(t: &Table<'_>, key: &str, node_id: u32) -> Result<Option<Vec<NodeAddr>>, ConfigError> {
    let Some(items) = t.string_list(key)? else { return Ok(None) };
    let mut addrs: Vec<NodeAddr> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let entry = format!("{key}[{i}]");
        let bad = || t.invalid(&entry, format!("{item:?} is not \"ID@HOST:PORT\"; write e.g. \"1@127.0.0.1:5363\""));
        let (id, addr) = item.split_once('@').ok_or_else(bad)?;
        let id: u32 = id.trim().parse().ok().filter(|&id| id > 0).ok_or_else(bad)?;
        let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
        if host.is_empty() || port.parse::<u16>().is_err() {
            return Err(bad());
        }
        if addrs.iter().any(|a| a.id == id) {
            return Err(t.invalid(&entry, format!("node id {id} appears twice; give every node its own id")));
        }
        addrs.push(NodeAddr { id, addr: addr.to_owned() });
    }
    if !addrs.iter().any(|a| a.id == node_id) {
        return Err(t.invalid(key, format!("has no entry for this node (broker.cluster.node_id = {node_id})")));
    }
    Ok(Some(addrs))
}

/// `broker.tls`: off without `bind`; with it, a certificate chain and its key, both readable now.
fn tls_listener(t: &Table<'_>) -> Result<Option<TlsListener>, ConfigError> {
    let Some(bind) = t.addr("bind", "0.0.0.0:8883")? else { return Ok(None) };
    let file = |key: &str| -> Result<PathBuf, ConfigError> {
        let path = t
            .non_empty_string(key)?
            .ok_or_else(|| t.invalid(key, "is required with broker.tls.bind: a PEM file".into()))?;
        std::fs::File::open(&path).map_err(|e| t.invalid(key, format!("cannot read {path}: {e}")))?;
        Ok(PathBuf::from(path))
    };
    Ok(Some(TlsListener { bind, certfile: file("certfile")?, keyfile: file("keyfile")? }))
}

fn mysql(t: &Table<'_>) -> Result<MySqlConfig, ConfigError> {
    Ok(MySqlConfig {
        servers: host_list(t, "server", "127.0.0.1:3306")?,
        username: t.string("username")?.unwrap_or_else(|| "root".into()),
        password: t.secret("password")?.unwrap_or_default(),
        database: t.non_empty_string("database")?.unwrap_or_else(|| "mqtt".into()),
        pool_size: t.int("pool_size", 1, MAX_POOL_SIZE)?.unwrap_or(8) as u32,
        ssl: ssl(&t.table("ssl", SSL_KEYS)?)?,
        storage: storage(t, Templates::mysql_default())?,
    })
}

fn sqlite(t: &Table<'_>) -> Result<SqliteConfig, ConfigError> {
    Ok(SqliteConfig {
        path: t.non_empty_string("path")?.map(PathBuf::from).unwrap_or_else(|| "data/offline-messages.db".into()),
        storage: storage(t, Templates::sqlite_default())?,
    })
}

fn storage(t: &Table<'_>, defaults: Templates) -> Result<StorageConfig, ConfigError> {
    let sql =
        |key: &str, default: String| -> Result<String, ConfigError> { Ok(t.non_empty_string(key)?.unwrap_or(default)) };
    Ok(StorageConfig {
        topics: t.string_list("topics")?.unwrap_or_default(),
        init_default_schema: t.bool("init_default_schema")?.unwrap_or(false),
        templates: Templates {
            insert_message_sql: sql("insert_message_sql", defaults.insert_message_sql)?,
            delete_message_sql: sql("delete_message_sql", defaults.delete_message_sql)?,
            select_message_sql: sql("select_message_sql", defaults.select_message_sql)?,
            insert_subscription_sql: sql("insert_subscription_sql", defaults.insert_subscription_sql)?,
            select_subscriptions_sql: sql("select_subscriptions_sql", defaults.select_subscriptions_sql)?,
            delete_subscription_sql: sql("delete_subscription_sql", defaults.delete_subscription_sql)?,
            insert_delivery_sql: sql("insert_delivery_sql", defaults.insert_delivery_sql)?,
            purge_expired_sql: sql("purge_expired_sql", defaults.purge_expired_sql)?,
            trim_topic_sql: sql("trim_topic_sql", defaults.trim_topic_sql)?,
        },
        batch_size: t.int("batch_size", 1, MAX_BATCH_SIZE)?.map(|n| n as usize).unwrap_or(DEFAULT_BATCH_SIZE),
        batch_time: t.positive_duration("batch_time")?.unwrap_or(DEFAULT_BATCH_TIME),
        query_timeout: t.positive_duration("query_timeout")?.unwrap_or(DEFAULT_QUERY_TIMEOUT),
        delivery_mode: t
            .choice("delivery_mode", &[("queue", DeliveryMode::Queue), ("fanout", DeliveryMode::Fanout)])?,
        restore_subscriptions: t.choice(
            "restore_subscriptions",
            &[("persistent", RestoreSubscriptions::Persistent), ("always", RestoreSubscriptions::Always)],
        )?,
        // A bare number is seconds, as the reference's redis.message_ttl.
        message_ttl: t.duration("message_ttl", Unit::Seconds)?.filter(|d| !d.is_zero()),
        max_messages_per_topic: t.int("max_messages_per_topic", 0, i64::MAX)?.filter(|n| *n > 0).map(|n| n as u64),
        replay_page_size: t
            .int("replay_page_size", 1, MAX_REPLAY_PAGE_SIZE)?
            .map_or(DEFAULT_REPLAY_PAGE_SIZE, |n| n as u32),
        write_mode: t.choice("write_mode", &[("async", WriteMode::Async), ("sync", WriteMode::Sync)])?,
        dead_letter_file: t
            .non_empty_string("dead_letter_file")?
            .map_or_else(|| PathBuf::from(DEFAULT_DEAD_LETTER_FILE), PathBuf::from),
        max_buffered: t.int("max_buffered", 1, MAX_BATCH_SIZE * 100)?.map(|n| n as usize),
        spool_dir: t.non_empty_string("spool_dir")?.map_or_else(|| PathBuf::from(DEFAULT_SPOOL_DIR), PathBuf::from),
        spool_max_bytes: t.int("spool_max_bytes", 1 << 20, i64::MAX)?.map_or(DEFAULT_SPOOL_MAX_BYTES, |n| n as u64),
        spool_full: t
            .choice("spool_full", &[("drop_newest", SpoolFull::DropNewest), ("drop_oldest", SpoolFull::DropOldest)])?,
    })
}

fn auth(t: &Table<'_>) -> Result<AuthConfig, ConfigError> {
    let mut users = Vec::new();
    for u in t.objects("users", USER_KEYS)? {
        let username = u.non_empty_string("username")?.ok_or_else(|| u.invalid("username", "is missing".into()))?;
        let password_hash = u.non_empty_string("password_hash")?.ok_or_else(|| {
            u.invalid("password_hash", "is missing; make one with `mqtt-offline-messages hash-password`".into())
        })?;
        if argon2::password_hash::PasswordHash::new(&password_hash).is_err() {
            return Err(u.invalid(
                "password_hash",
                "is not a password hash; make one with `mqtt-offline-messages hash-password` (the password itself never goes in the file)".into(),
            ));
        }
        users.push(User { username, password_hash });
    }
    let mut acl = Vec::new();
    for r in t.objects("acl", ACL_KEYS)? {
        let action = r.choice(
            "action",
            &[("all", Action::All), ("publish", Action::Publish), ("subscribe", Action::Subscribe)],
        )?;
        let allow = match r.string("permission")?.as_deref() {
            Some("allow") => true,
            Some("deny") => false,
            other => return Err(r.invalid("permission", format!("{other:?}: write allow or deny"))),
        };
        let topic = r.non_empty_string("topic")?.ok_or_else(|| r.invalid("topic", "is missing".into()))?;
        crate::topic::TopicFilter::parse(&topic.replace("%u", "u").replace("%c", "c"))
            .map_err(|e| r.invalid("topic", format!("{topic:?}: {e}")))?;
        acl.push(AclRule { username: r.string("username")?.unwrap_or_else(|| "*".into()), action, topic, allow });
    }
    if users.is_empty() && !acl.is_empty() {
        return Err(t.invalid("acl", "applies only with auth.users; add users, or remove the rules".into()));
    }
    Ok(AuthConfig { users, acl })
}

fn ssl(t: &Table<'_>) -> Result<SslConfig, ConfigError> {
    Ok(SslConfig {
        enable: t.bool("enable")?.unwrap_or(false),
        server_name_indication: t.string("server_name_indication")?,
        verify: t
            .choice("verify", &[("verify_peer", SslVerify::VerifyPeer), ("verify_none", SslVerify::VerifyNone)])?,
        cacertfile: t.non_empty_string("cacertfile")?.map(PathBuf::from),
        certfile: t.non_empty_string("certfile")?.map(PathBuf::from),
        keyfile: t.non_empty_string("keyfile")?.map(PathBuf::from),
    })
}

/// A key holding one or several `host:port` (comma-separated, or a list of strings).
fn host_list(t: &Table<'_>, key: &str, default: &str) -> Result<Vec<String>, ConfigError> {
    let hosts = match t.get(key)? {
        None => vec![default.to_owned()],
        Some(Hocon::String(s)) => s.split(',').map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect(),
        Some(Hocon::Array(_)) => t.string_list(key)?.unwrap_or_default(),
        Some(other) => return Err(t.type_error(key, "\"host:port,host:port\" or a list of them", other)),
    };
    if hosts.is_empty() {
        return Err(t.invalid(key, format!("is empty; write e.g. {key} = \"{default}\"")));
    }
    for host in &hosts {
        check_host_port(t, key, host)?;
    }
    Ok(hosts)
}

/// "host:port" or "host"; the port, when given, must be a number.
fn check_host_port(t: &Table<'_>, key: &str, value: &str) -> Result<(), ConfigError> {
    let (host, port) = match value.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (value, None),
    };
    if host.is_empty() || port.is_some_and(|p| p.parse::<u16>().is_err()) {
        return Err(t.invalid(key, format!("{value:?} is not \"host:port\"; write e.g. \"127.0.0.1:3306\"")));
    }
    Ok(())
}

/// What a bare number means for a duration key.
#[derive(Clone, Copy)]
enum Unit {
    Millis,
    Seconds,
}

/// One HOCON object with its path, checked for unknown keys.
struct Table<'a> {
    path: String,
    /// `None` for an absent block: every key takes its default.
    map: Option<&'a Map>,
    /// The whole document, to tell an unset `${?VAR}` from an unset `${VAR}`.
    source: &'a str,
    /// What is wrong so far: a key's check records its error and the key takes its default, so
    /// that one run reports every problem.
    errors: &'a RefCell<Vec<ConfigError>>,
}

impl<'a> Table<'a> {
    fn key(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    /// A backend block's `enable` (default false); `None` when it is wrong (recorded).
    fn enable(&self) -> Result<Option<bool>, ConfigError> {
        let before = self.errors.borrow().len();
        let enable = self.bool("enable")?.unwrap_or(false);
        Ok((self.errors.borrow().len() == before).then_some(enable))
    }

    /// Records every unknown key.
    fn checked(self, known: &[&str]) -> Self {
        for unknown in self.map.into_iter().flat_map(|m| m.keys()).filter(|k| !known.contains(&k.as_str())) {
            let suggestion = closest(unknown, known).map(|k| format!(" (did you mean `{k}`?)")).unwrap_or_default();
            let scope = if self.path.is_empty() { "at the top level".to_owned() } else { format!("in {}", self.path) };
            let known = known.join(", ");
            self.record(ConfigError::UnknownKey { key: self.key(unknown), suggestion, scope, known });
        }
        self
    }

    fn record(&self, e: ConfigError) {
        self.errors.borrow_mut().push(e);
    }

    /// A key's value is wrong: recorded, and the key is left at its default.
    fn bad<T>(&self, e: ConfigError) -> Result<Option<T>, ConfigError> {
        self.record(e);
        Ok(None)
    }

    /// A block's result; its error is recorded.
    fn kept<T>(&self, result: Result<T, ConfigError>) -> Option<T> {
        result.map_err(|e| self.record(e)).ok()
    }

    /// One of `options`, by name; the first when the key is absent or wrong (wrong is recorded).
    fn choice<T: Copy>(&self, key: &str, options: &[(&str, T)]) -> Result<T, ConfigError> {
        let Some(value) = self.string(key)? else { return Ok(options[0].1) };
        if let Some((_, v)) = options.iter().find(|(name, _)| *name == value) {
            return Ok(*v);
        }
        let names: Vec<String> = options.iter().map(|(name, _)| format!("{name:?}")).collect();
        let names = match names.as_slice() {
            [a, b] => format!("neither {a} nor {b}"),
            _ => format!("none of {}", names.join(", ")),
        };
        self.record(self.invalid(key, format!("{value:?} is {names}")));
        Ok(options[0].1)
    }

    /// The value of `key`; `None` when absent, null, or an unset `${?VAR}` with no earlier value.
    fn get(&self, key: &str) -> Result<Option<&'a Hocon>, ConfigError> {
        match self.map.and_then(|m| m.get(key)) {
            None | Some(Hocon::Null) => Ok(None),
            // The crate gives an unset `${VAR}` and an unset `${?VAR}` the same value; only the
            // source tells them apart. A name used in both forms counts as optional.
            Some(Hocon::BadValue(hocon::Error::KeyNotFound { key: var })) => {
                if self.source.contains(&format!("${{?{var}}}")) {
                    Ok(None)
                } else {
                    self.bad(ConfigError::Unresolved { key: self.key(key), var: var.clone() })
                }
            }
            Some(Hocon::BadValue(e)) => self.bad(self.invalid(key, e.to_string())),
            Some(v) => Ok(Some(v)),
        }
    }

    fn table(&self, key: &str, known: &[&str]) -> Result<Table<'a>, ConfigError> {
        let map = match self.get(key)? {
            None => None,
            Some(Hocon::Hash(m)) => Some(m),
            Some(other) => return Err(self.type_error(key, "an object { ... }", other)),
        };
        Ok(Table { path: self.key(key), map, source: self.source, errors: self.errors }.checked(known))
    }

    fn type_error(&self, key: &str, expected: &'static str, found: &Hocon) -> ConfigError {
        ConfigError::Type { key: self.key(key), expected, found: kind(found) }
    }

    fn invalid(&self, key: &str, reason: String) -> ConfigError {
        ConfigError::Invalid { key: self.key(key), reason }
    }

    /// An "IP:PORT" address; `example` is shown when it is not one.
    fn addr(&self, key: &str, example: &str) -> Result<Option<SocketAddr>, ConfigError> {
        match self.string(key)? {
            None => Ok(None),
            Some(s) => match s.parse() {
                Ok(addr) => Ok(Some(addr)),
                Err(_) => {
                    self.bad(self.invalid(key, format!("{s:?} is not IP:PORT; write e.g. {key} = \"{example}\"")))
                }
            },
        }
    }

    /// Strings too: a `${?VAR}` always gives one.
    fn bool(&self, key: &str) -> Result<Option<bool>, ConfigError> {
        match self.get(key)? {
            None => Ok(None),
            Some(Hocon::Boolean(b)) => Ok(Some(*b)),
            Some(Hocon::String(s)) if ["true", "yes", "on"].contains(&s.trim()) => Ok(Some(true)),
            Some(Hocon::String(s)) if ["false", "no", "off"].contains(&s.trim()) => Ok(Some(false)),
            Some(other) => self.bad(self.type_error(key, "true or false", other)),
        }
    }

    fn string(&self, key: &str) -> Result<Option<String>, ConfigError> {
        match self.get(key)? {
            None => Ok(None),
            Some(Hocon::String(s)) => Ok(Some(s.clone())),
            // An unquoted integer or boolean where a string is expected (e.g. `database = 2024`).
            Some(Hocon::Integer(i)) => Ok(Some(i.to_string())),
            Some(Hocon::Boolean(b)) => Ok(Some(b.to_string())),
            Some(other) => self.bad(self.type_error(key, "a string", other)),
        }
    }

    fn non_empty_string(&self, key: &str) -> Result<Option<String>, ConfigError> {
        match self.string(key)? {
            Some(s) if s.trim().is_empty() => {
                self.bad(self.invalid(key, "is empty; give a value or remove the key to use the default".into()))
            }
            s => Ok(s),
        }
    }

    /// Only a real string: an unquoted number would come back rewritten (`0123` is 123).
    fn secret(&self, key: &str) -> Result<Option<Secret>, ConfigError> {
        match self.get(key)? {
            None => Ok(None),
            Some(Hocon::String(s)) => Ok(Some(Secret(s.clone()))),
            Some(other) => self.bad(self.type_error(key, "a string in quotes", other)),
        }
    }

    /// Integers, integral reals (`1e3`) and strings of digits (what a `${?VAR}` gives).
    fn int(&self, key: &str, min: i64, max: i64) -> Result<Option<i64>, ConfigError> {
        let n = match self.get(key)? {
            None => return Ok(None),
            Some(Hocon::Integer(i)) => *i,
            Some(Hocon::Real(r)) if r.fract() == 0.0 && r.abs() < 9.0e15 => *r as i64,
            Some(v @ Hocon::String(s)) => match s.trim().parse() {
                Ok(n) => n,
                Err(_) => return self.bad(self.type_error(key, "an integer", v)),
            },
            Some(other) => return self.bad(self.type_error(key, "an integer", other)),
        };
        if n < min || n > max {
            return self.bad(self.invalid(key, format!("{n} is out of range; use {min} to {max}")));
        }
        Ok(Some(n))
    }

    /// A list of objects, each checked for unknown keys; its entries are named `key[i]` in errors.
    fn objects(&self, key: &str, known: &[&str]) -> Result<Vec<Table<'a>>, ConfigError> {
        let items = match self.get(key)? {
            None => return Ok(Vec::new()),
            Some(Hocon::Array(items)) => items,
            Some(other) => {
                self.record(self.type_error(key, "a list of objects [ { ... } ]", other));
                return Ok(Vec::new());
            }
        };
        let mut tables = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let path = self.key(&format!("{key}[{i}]"));
            match item {
                Hocon::Hash(map) => {
                    tables.push(Table { path, map: Some(map), source: self.source, errors: self.errors }.checked(known))
                }
                other => {
                    self.record(ConfigError::Type { key: path, expected: "an object { ... }", found: kind(other) })
                }
            }
        }
        Ok(tables)
    }

    fn string_list(&self, key: &str) -> Result<Option<Vec<String>>, ConfigError> {
        let items = match self.get(key)? {
            None => return Ok(None),
            Some(Hocon::Array(items)) => items,
            Some(other) => return self.bad(self.type_error(key, "a list of strings, e.g. [\"#\"]", other)),
        };
        let mut list = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            match item {
                Hocon::String(s) if !s.is_empty() => list.push(s.clone()),
                Hocon::String(_) => {
                    return self
                        .bad(self.invalid(&format!("{key}[{i}]"), "is empty; remove it or write a filter".into()))
                }
                other => {
                    return self.bad(self.type_error(&format!("{key}[{i}]"), "a string, e.g. \"sensors/#\"", other))
                }
            }
        }
        Ok(Some(list))
    }

    /// A number of `bare` units (milliseconds as the reference's `batch_time`, seconds as its
    /// `message_ttl`) or a string with a unit ("100ms", "5s", "5m", "1h", "2d").
    fn duration(&self, key: &str, bare: Unit) -> Result<Option<Duration>, ConfigError> {
        const EXPECTED: &str = "a duration: a number or a string such as \"100ms\", \"5s\", \"5m\", \"1h\", \"2d\"";
        let text = match self.get(key)? {
            None => return Ok(None),
            Some(Hocon::Integer(i)) => i.to_string(),
            Some(Hocon::Real(r)) => r.to_string(),
            Some(Hocon::String(s)) => s.clone(),
            Some(other) => return self.bad(self.type_error(key, EXPECTED, other)),
        };
        if text.trim_start().starts_with('-') {
            return self.bad(self.invalid(key, "is negative; give a duration such as \"5ms\"".into()));
        }
        match parse_duration(&text, bare) {
            Some(d) => Ok(Some(d)),
            None => self.bad(ConfigError::Type { key: self.key(key), expected: EXPECTED, found: "a string" }),
        }
    }

    /// `batch_time`: a bare number is milliseconds, and zero would spin the writer.
    fn positive_duration(&self, key: &str) -> Result<Option<Duration>, ConfigError> {
        match self.duration(key, Unit::Millis)? {
            Some(d) if d.is_zero() => self.bad(self.invalid(key, "must be more than 0; write e.g. \"5ms\"".into())),
            d => Ok(d),
        }
    }
}

/// HOCON's duration format: a decimal number, then optionally a unit (Lightbend config's names).
fn parse_duration(text: &str, bare: Unit) -> Option<Duration> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(text.len());
    let (number, unit) = (&text[..split], text[split..].trim());
    let nanos_per_unit: u128 = match unit {
        "" => match bare {
            Unit::Millis => 1_000_000,
            Unit::Seconds => 1_000_000_000,
        },
        "ns" | "nano" | "nanos" | "nanosecond" | "nanoseconds" => 1,
        "us" | "micro" | "micros" | "microsecond" | "microseconds" => 1_000,
        "ms" | "milli" | "millis" | "millisecond" | "milliseconds" => 1_000_000,
        "s" | "second" | "seconds" => 1_000_000_000,
        "m" | "minute" | "minutes" => 60_000_000_000,
        "h" | "hour" | "hours" => 3_600_000_000_000,
        "d" | "day" | "days" => 86_400_000_000_000,
        _ => return None,
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() || fraction.contains('.') || fraction.len() > 9 {
        return None;
    }
    let whole: u128 = if whole.is_empty() { 0 } else { whole.parse().ok()? };
    let fraction_nanos = if fraction.is_empty() {
        0
    } else {
        fraction.parse::<u128>().ok()? * nanos_per_unit / 10u128.pow(fraction.len() as u32)
    };
    let nanos = whole.checked_mul(nanos_per_unit)?.checked_add(fraction_nanos)?;
    Some(Duration::from_nanos(u64::try_from(nanos).ok()?))
}

/// A value's type for an error message (never the value: it may be a password).
fn kind(h: &Hocon) -> &'static str {
    match h {
        Hocon::Integer(_) => "an integer",
        Hocon::Real(_) => "a decimal number",
        Hocon::String(_) => "a string",
        Hocon::Boolean(_) => "a boolean",
        Hocon::Array(_) => "a list",
        Hocon::Hash(_) => "an object",
        Hocon::Null => "null",
        Hocon::BadValue(_) => "an unresolved value",
    }
}

/// The known key a typo most likely meant: at most two edits away.
fn closest<'k>(unknown: &str, known: &[&'k str]) -> Option<&'k str> {
    fn edits(a: &str, b: &str) -> usize {
        let b: Vec<char> = b.chars().collect();
        let mut row: Vec<usize> = (0..=b.len()).collect();
        for (i, ca) in a.chars().enumerate() {
            let mut diagonal = row[0];
            row[0] = i + 1;
            for (j, cb) in b.iter().enumerate() {
                let next = (diagonal + usize::from(ca != *cb)).min(row[j] + 1).min(row[j + 1] + 1);
                diagonal = row[j + 1];
                row[j + 1] = next;
            }
        }
        row[b.len()]
    }
    known.iter().map(|k| (edits(unknown, k), *k)).filter(|(d, _)| *d <= 2).min_by_key(|(d, _)| *d).map(|(_, k)| k)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        Config::parse_str(text).unwrap_err().to_string()
    }

    fn sqlite_with(keys: &str) -> StorageConfig {
        Config::parse_str(&format!("sqlite {{ enable = true, {keys} }}")).unwrap().backend.storage().clone()
    }

    #[test]
    fn the_shipped_config_enables_sqlite_for_everything() {
        let c = Config::parse_str(include_str!("../../config.hocon")).unwrap();
        let Backend::Sqlite(s) = &c.backend else { panic!("sqlite expected") };
        assert_eq!(s.path, PathBuf::from("data/offline-messages.db"));
        assert_eq!(s.storage.topics, vec!["#"]);
        assert!(s.storage.init_default_schema);
        assert_eq!(s.storage.templates, Templates::sqlite_default());
        assert_eq!((s.storage.batch_size, s.storage.batch_time), (DEFAULT_BATCH_SIZE, DEFAULT_BATCH_TIME));
        assert_eq!(s.storage.query_timeout, DEFAULT_QUERY_TIMEOUT);
        assert_eq!(s.storage.message_ttl, Some(Duration::from_secs(7 * 24 * 3600)), "a finite TTL ships");
        assert_eq!((s.storage.delivery_mode, s.storage.restore_subscriptions), Default::default());
        assert_eq!((s.storage.max_messages_per_topic, s.storage.replay_page_size), (None, DEFAULT_REPLAY_PAGE_SIZE));
        assert_eq!(c.broker.bind, "127.0.0.1:1883".parse().unwrap());
        assert_eq!((c.broker.node_id, c.broker.max_packet_size), (None, DEFAULT_MAX_PACKET_SIZE));
        assert_eq!(
            (c.broker.max_mqueue_len, c.broker.session_expiry_interval),
            (DEFAULT_MAX_MQUEUE_LEN, DEFAULT_SESSION_EXPIRY_INTERVAL),
            "rmqtt's"
        );
        assert_eq!(c.broker.message_expiry_interval(&c.backend), Duration::from_secs(7 * 24 * 3600), "message_ttl");
        assert_eq!(c.metrics.bind, None, "the endpoint is off unless asked for");
        assert!(c.warnings().is_empty());
    }

    #[test]
    fn the_shipped_mysql_block_is_valid_once_enabled() {
        // Later keys override earlier ones, as a user's edit would.
        let text = format!("{}\nsqlite.enable = false\nmysql.enable = true\n", include_str!("../../config.hocon"));
        let c = Config::parse_str(&text).unwrap();
        let Backend::MySql(m) = &c.backend else { panic!("mysql expected: {text}") };
        assert_eq!(
            (m.servers.join(",").as_str(), m.username.as_str(), m.database.as_str()),
            ("127.0.0.1:3306", "root", "mqtt")
        );
        assert_eq!(m.storage.templates, Templates::mysql_default());
        assert_eq!(m.storage.topics, vec!["#"]);
        assert!(m.storage.init_default_schema);
        assert_eq!(m.ssl.verify, SslVerify::VerifyPeer);
        assert!(!m.ssl.enable);
    }

    #[test]
    fn a_block_may_hold_only_enable() {
        let c = Config::parse_str("mysql { enable = true }").unwrap();
        assert_eq!(c.broker.bind, SocketAddr::from(([127, 0, 0, 1], 1883)));
        assert_eq!(c.broker.message_expiry_interval(&c.backend), Duration::ZERO, "no message_ttl: for ever");
        let Backend::MySql(m) = &c.backend else { panic!() };
        assert_eq!(
            (m.servers.join(",").as_str(), m.username.as_str(), m.password.expose(), m.database.as_str(), m.pool_size),
            ("127.0.0.1:3306", "root", "", "mqtt", 8)
        );
        assert_eq!(m.storage.batch_size, DEFAULT_BATCH_SIZE);
        assert_eq!(m.storage.batch_time, DEFAULT_BATCH_TIME);
        assert_eq!(m.storage.templates, Templates::mysql_default());
        assert!(m.storage.topics.is_empty(), "as the reference");
        assert!(!m.storage.init_default_schema, "as the reference");
        assert!(!m.ssl.enable);
        assert_eq!(m.ssl.verify, SslVerify::VerifyPeer);
        assert_eq!(c.backend.name(), "mysql");

        let c = Config::parse_str("sqlite.enable = true\nmysql.enable = false\nredis.enable = false").unwrap();
        let Backend::Sqlite(s) = &c.backend else { panic!() };
        assert_eq!(s.path, PathBuf::from("data/offline-messages.db"));
        assert_eq!(s.storage.templates, Templates::sqlite_default());
        assert_eq!(c.backend.name(), "sqlite");
    }

    #[test]
    fn every_key_is_read() {
        let c = Config::parse_str(
            r#"
            broker { bind = "0.0.0.0:2883", node_id = 7, max_packet_size = 300000, max_mqueue_len = 50000
                     message_expiry_interval = 1h, session_expiry_interval = "7d" }
            metrics { bind = "127.0.0.1:9100" }
            sqlite { enable = false }
            mysql {
              enable = true
              server = "db.example:3307"
              username = app
              password = "pw"
              database = 2024
              pool_size = 3
              topics = ["a/#", "b/+/c"]
              init_default_schema = yes
              insert_message_sql = "insert ${id}"
              delete_message_sql = "delete ${id}"
              select_message_sql = "select ${topic}"
              insert_subscription_sql = "insert ${clientid}"
              select_subscriptions_sql = "select ${clientid}"
              delete_subscription_sql = "delete ${clientid}"
              batch_size = 50
              batch_time = 1s
              insert_delivery_sql = "insert ${clientid}"
              purge_expired_sql = "delete ${now}"
              trim_topic_sql = "delete ${topic}"
              delivery_mode = fanout
              restore_subscriptions = always
              message_ttl = 90
              max_messages_per_topic = 10
              replay_page_size = 20
              write_mode = sync
              dead_letter_file = "/var/lib/om/dead.jsonl"
              spool_dir = "/var/lib/om/spool"
              spool_max_bytes = 2000000
              spool_full = drop_oldest
              max_buffered = 5000
              ssl { enable = true, server_name_indication = "db", verify = verify_none,
                    cacertfile = "ca.pem", certfile = "c.pem", keyfile = "k.pem" }
            }
            "#,
        )
        .unwrap();
        assert_eq!(c.broker.bind, "0.0.0.0:2883".parse().unwrap());
        assert_eq!((c.broker.node_id, c.broker.max_packet_size), (Some(7), 300_000));
        assert_eq!(c.broker.max_mqueue_len, 50_000);
        assert_eq!(c.broker.message_expiry_interval(&c.backend), Duration::from_secs(3600), "not message_ttl");
        assert_eq!(c.broker.session_expiry_interval, Duration::from_secs(7 * 86_400));
        assert_eq!(c.metrics.bind, Some("127.0.0.1:9100".parse().unwrap()));
        let Backend::MySql(m) = &c.backend else { panic!() };
        assert_eq!(
            (m.servers.join(",").as_str(), m.username.as_str(), m.password.expose()),
            ("db.example:3307", "app", "pw")
        );
        assert_eq!((m.database.as_str(), m.pool_size), ("2024", 3));
        let s = &m.storage;
        assert_eq!(s.topics, vec!["a/#", "b/+/c"]);
        assert!(s.init_default_schema);
        assert_eq!(s.templates.insert_message_sql, "insert ${id}");
        assert_eq!(s.templates.delete_subscription_sql, "delete ${clientid}");
        assert_eq!((s.batch_size, s.batch_time), (50, Duration::from_secs(1)));
        assert_eq!(s.templates.insert_delivery_sql, "insert ${clientid}");
        assert_eq!(s.templates.purge_expired_sql, "delete ${now}");
        assert_eq!(s.templates.trim_topic_sql, "delete ${topic}");
        assert_eq!((s.delivery_mode, s.restore_subscriptions), (DeliveryMode::Fanout, RestoreSubscriptions::Always));
        assert_eq!(s.message_ttl, Some(Duration::from_secs(90)), "a bare number is seconds");
        assert_eq!((s.max_messages_per_topic, s.replay_page_size), (Some(10), 20));
        assert_eq!(s.write_mode, WriteMode::Sync);
        assert_eq!(s.dead_letter_file, PathBuf::from("/var/lib/om/dead.jsonl"));
        assert_eq!(
            (s.spool_dir.as_path(), s.spool_max_bytes, s.spool_full),
            (Path::new("/var/lib/om/spool"), 2_000_000, SpoolFull::DropOldest)
        );
        assert!(m.ssl.enable);
        assert_eq!(m.ssl.server_name_indication.as_deref(), Some("db"));
        assert_eq!(m.ssl.verify, SslVerify::VerifyNone);
        assert_eq!(m.ssl.cacertfile, Some(PathBuf::from("ca.pem")));
        assert_eq!(m.ssl.keyfile, Some(PathBuf::from("k.pem")));
        assert!(c.warnings().iter().any(|w| w.contains("server_name_indication")));
    }

    #[test]
    fn exactly_one_backend() {
        let both = err("mysql { enable = true }\nsqlite { enable = true }");
        assert!(both.contains("`mysql.enable` and `sqlite.enable`"), "{both}");
        for none in ["", "mysql { enable = false }", "mysql {}\nsqlite { enable = false }"] {
            let e = err(none);
            assert!(e.contains("mysql.enable") && e.contains("sqlite.enable"), "{e}");
        }
    }

    #[test]
    fn mysql_server_takes_several_servers_in_order() {
        for text in [r#"server = "db1:3306, db2:3307,db3""#, r#"server = ["db1:3306", "db2:3307", "db3"]"#] {
            let c = Config::parse_str(&format!("mysql {{ enable = true, {text} }}")).unwrap();
            let Backend::MySql(m) = &c.backend else { panic!("mysql expected") };
            assert_eq!(m.servers, ["db1:3306", "db2:3307", "db3"], "{text}");
        }
    }

    #[test]
    fn the_redis_block() {
        let e = err("sqlite { enable = true }\nredis { enable = true }");
        assert!(e.starts_with("`sqlite.enable` and `redis.enable` are true"), "{e}");
        let c = Config::parse_str(
            r##"redis { enable = true, servers = "a:6379, b:6380", redis_type = sentinel, sentinel = mymaster,
                    username = u, password = "p", database = 2, pool_size = 4, topics = ["#"],
                    message_key_prefix = "m", subscription_key_prefix = "s", message_ttl = 60,
                    batch_size = 10, batch_time = 100, write_mode = sync, delivery_mode = fanout,
                    replay_page_size = 7, ssl { enable = false, verify = verify_none } }"##,
        )
        .unwrap();
        let Backend::Redis(r) = &c.backend else { panic!("redis expected") };
        assert_eq!(r.servers, ["a:6379", "b:6380"]);
        assert_eq!(
            (r.redis_type, r.sentinel.as_str(), r.username.as_deref()),
            (RedisType::Sentinel, "mymaster", Some("u"))
        );
        assert_eq!((r.password.expose(), r.database, r.pool_size), ("p", 2, 4));
        assert_eq!((r.message_key_prefix.as_str(), r.subscription_key_prefix.as_str()), ("m", "s"));
        let s = &r.storage;
        assert_eq!(
            (s.message_ttl, s.batch_size, s.batch_time),
            (Some(Duration::from_secs(60)), 10, Duration::from_millis(100))
        );
        assert_eq!((s.write_mode, s.delivery_mode, s.replay_page_size), (WriteMode::Sync, DeliveryMode::Fanout, 7));

        let c = Config::parse_str("redis { enable = true }").unwrap();
        let Backend::Redis(r) = &c.backend else { panic!("redis expected") };
        assert_eq!((r.servers.as_slice(), r.redis_type), (&["127.0.0.1:6379".to_owned()][..], RedisType::Single));
        assert_eq!((r.message_key_prefix.as_str(), r.subscription_key_prefix.as_str()), ("mqtt:msg", "mqtt:sub"));
        assert_eq!(r.storage.message_ttl, Some(DEFAULT_REDIS_MESSAGE_TTL), "the reference's default");
        let c = Config::parse_str("redis { enable = true, message_ttl = 0 }").unwrap();
        assert_eq!(c.backend.storage().message_ttl, None, "0 keeps messages until acknowledged");
        let c = Config::parse_str("redis { enable = true, redis_type = cluster, servers = \"a:1,b:2\", database = 3 }")
            .unwrap();
        assert!(c.warnings().iter().any(|w| w.starts_with("redis.database = 3 is ignored")), "{:?}", c.warnings());

        assert!(err("sqlite.enable = true\nredis { redis_type = ring }").starts_with("redis.redis_type"));
        assert!(err("redis { enable = true, redis_type = sentinel }").starts_with("redis.sentinel: is required"));
        assert!(err("redis { enable = true, servers = \"a:1,b:2\" }").starts_with("redis.servers: lists 2 servers"));
        assert!(err("redis { enable = true, message_key_prefix = \"m#\" }").starts_with("redis.message_key_prefix"));
        assert!(
            err("redis { enable = true, select_message_sql = x }").starts_with("redis.select_message_sql: unknown key")
        );
        assert!(err("sqlite.enable = true\nredis { ssl { verfy = 1 } }").starts_with("redis.ssl.verfy: unknown key"));
        assert!(err("sqlite.enable = true\nredis { message_ttl = forever }").starts_with("redis.message_ttl: expected"));
        assert!(err("sqlite.enable = true\nredis { servers = \"a:b\" }").starts_with("redis.servers"));
    }

    const NODES: &str = r#"nodes = ["1@127.0.0.1:5363", "2@127.0.0.1:5364", "3@node3.local:5365"]"#;
    const PEERS: &str = r#"raft_peers = ["1@127.0.0.1:6003", "2@127.0.0.1:6004", "3@node3.local:6005"]"#;

    fn cluster_err(cluster: &str) -> String {
        err(&format!("broker {{ cluster {{ {cluster} }} }}\nmysql.enable = true"))
    }

    #[test]
    fn cluster_block_in_both_modes() {
        let c = Config::parse_str(&format!(
            "broker.cluster {{ mode = raft, node_id = 2\n{NODES}\n{PEERS} }}\nmysql.enable = true"
        ))
        .unwrap();
        let cluster = c.broker.cluster.as_ref().unwrap();
        assert_eq!(
            (cluster.mode, cluster.node_id, cluster.nodes.len(), cluster.raft_peers.len()),
            (ClusterMode::Raft, 2, 3, 3)
        );
        assert_eq!(cluster.this_node().to_string(), "2@127.0.0.1:5364");
        assert_eq!(cluster.nodes[2], NodeAddr { id: 3, addr: "node3.local:5365".into() });
        // The cluster's node id is the node in message ids.
        assert_eq!(c.broker.node_id, Some(2));
        let c = Config::parse_str(&format!(
            "broker {{ node_id = 3, cluster {{ mode = broadcast, node_id = 3\n{NODES} }} }}\nmysql.enable = true"
        ))
        .unwrap();
        assert_eq!((c.broker.cluster.unwrap().mode, c.broker.node_id), (ClusterMode::Broadcast, Some(3)));
        assert_eq!(Config::parse_str("mysql.enable = true").unwrap().broker.cluster, None);
    }

    #[test]
    fn cluster_mistakes_name_the_key() {
        let cases = [
            (format!("node_id = 1\n{NODES}"), "broker.cluster.mode: is required"),
            (format!("mode = ring, node_id = 1\n{NODES}"), "broker.cluster.mode: \"ring\" is not a cluster mode"),
            (format!("mode = broadcast\n{NODES}"), "broker.cluster.node_id: is required"),
            (format!("mode = broadcast, node_id = 0\n{NODES}"), "broker.cluster.node_id: 0 is out of range"),
            ("mode = broadcast, node_id = 1".into(), "broker.cluster.nodes: is required"),
            (format!("mode = broadcast, node_id = 4\n{NODES}"), "broker.cluster.nodes: has no entry for this node"),
            (
                r#"mode = broadcast, node_id = 1, nodes = ["127.0.0.1:5363"]"#.into(),
                "broker.cluster.nodes[0]: \"127.0.0.1:5363\" is not \"ID@HOST:PORT\"",
            ),
            (r#"mode = broadcast, node_id = 1, nodes = ["1@127.0.0.1"]"#.into(), "broker.cluster.nodes[0]: "),
            (r#"mode = broadcast, node_id = 1, nodes = ["x@127.0.0.1:1"]"#.into(), "broker.cluster.nodes[0]: "),
            (
                r#"mode = broadcast, node_id = 1, nodes = ["1@a:1", "1@b:2"]"#.into(),
                "broker.cluster.nodes[1]: node id 1 appears twice",
            ),
            (format!("mode = raft, node_id = 1\n{NODES}"), "broker.cluster.raft_peers: is required with mode = raft"),
            (
                format!("mode = broadcast, node_id = 1\n{NODES}\n{PEERS}"),
                "broker.cluster.raft_peers: is for mode = raft only",
            ),
            (
                format!("mode = raft, node_id = 1\n{NODES}\nraft_peers = [\"1@a:1\", \"2@b:2\"]"),
                "broker.cluster.raft_peers: must name the same node ids",
            ),
            (format!("mode = raft, node_id = 1, leader = 1\n{NODES}\n{PEERS}"), "broker.cluster.leader: unknown key"),
        ];
        for (cluster, expected) in cases {
            let e = cluster_err(&cluster);
            assert!(e.starts_with(expected), "{cluster}: {e}");
        }
        let e = err(&format!(
            "broker {{ node_id = 7, cluster {{ mode = broadcast, node_id = 1\n{NODES} }} }}\nmysql.enable = true"
        ));
        assert!(e.starts_with("broker.node_id: is 7 but broker.cluster.node_id is 1"), "{e}");
        let e = err(&format!("broker.cluster {{ mode = broadcast, node_id = 1\n{NODES} }}\nsqlite.enable = true"));
        assert!(e.starts_with("broker.cluster: needs the mysql backend"), "{e}");
    }

    #[test]
    fn unknown_keys_name_the_full_path() {
        let e = err("mysql { enable = true, bach_size = 5 }");
        assert!(
            e.starts_with(
                "mysql.bach_size: unknown key (did you mean `batch_size`?); known keys in mysql are: enable,"
            ),
            "{e}"
        );
        assert!(err("mysql { enable = true, ssl { verfy = verify_none } }").starts_with("mysql.ssl.verfy: unknown key"));
        let e = err("sqlite { enable = true }\nmqtt { port = 1 }");
        assert!(
            e.starts_with("mqtt: unknown key; known keys at the top level are: broker, log, metrics, auth, mysql"),
            "{e}"
        );
        assert!(err("sqlite { enable = true, ssl { enable = true } }").starts_with("sqlite.ssl: unknown key"));
        assert!(err("sqlite.enable = true\nbroker.port = 1").starts_with("broker.port: unknown key"));
    }

    #[test]
    fn wrong_types_name_key_and_type() {
        assert_eq!(
            err("sqlite { enable = true, batch_size = [1] }"),
            "sqlite.batch_size: expected an integer, found a list"
        );
        assert_eq!(
            err("sqlite { enable = true, batch_size = 2.5 }"),
            "sqlite.batch_size: expected an integer, found a decimal number"
        );
        assert!(err("sqlite { enable = true, batch_size = 0 }").starts_with("sqlite.batch_size: 0 is out of range"));
        assert!(err("sqlite { enable = true, batch_time = 0 }").starts_with("sqlite.batch_time: must be more than 0"));
        assert!(
            err("sqlite { enable = true, batch_time = \"0s\" }").starts_with("sqlite.batch_time: must be more than 0")
        );
        assert!(err("sqlite { enable = true, batch_time = -5 }").starts_with("sqlite.batch_time: is negative"));
        assert!(err("sqlite { enable = true, batch_time = \"5 parsecs\" }")
            .starts_with("sqlite.batch_time: expected a duration"));
        assert!(err("sqlite { enable = true, batch_time = [5] }").starts_with("sqlite.batch_time: expected a duration"));
        assert!(err("sqlite { enable = true, topics = \"#\" }").starts_with("sqlite.topics: expected a list"));
        assert!(err("sqlite { enable = true, topics = [\"#\", 1] }").starts_with("sqlite.topics[1]: expected a string"));
        assert!(err("sqlite { enable = true, topics = [\"\"] }").starts_with("sqlite.topics[0]: is empty"));
        assert!(err("sqlite { enable = maybe }").starts_with("sqlite.enable: expected true or false, found a string"));
        assert!(err("sqlite { enable = true, path = \"\" }").starts_with("sqlite.path: is empty"));
        assert!(err("sqlite { enable = true, select_message_sql = \"\" }")
            .starts_with("sqlite.select_message_sql: is empty"));
        assert!(err("sqlite = true").starts_with("sqlite: expected an object"));
        assert!(err("mysql { enable = true, ssl { verify = maybe } }").starts_with("mysql.ssl.verify"));
        assert!(err("mysql { enable = true, pool_size = 0 }").starts_with("mysql.pool_size: 0 is out of range"));
        assert!(err("mysql { enable = true, server = \"db:port\" }")
            .starts_with("mysql.server: \"db:port\" is not \"host:port\""));
        assert!(err("mysql { enable = true, server = \"a:3306, b:x\" }")
            .starts_with("mysql.server: \"b:x\" is not \"host:port\""));
        assert!(err("mysql { enable = true, server = \" , \" }").starts_with("mysql.server: is empty"));
        assert!(err("broker { bind = \"localhost\" }\nsqlite { enable = true }").starts_with("broker.bind"));
        assert!(err("metrics { bind = 9090 }\nsqlite { enable = true }").starts_with("metrics.bind"));
        assert!(err("broker { tls { bind = \"127.0.0.1:8883\" } }\nsqlite.enable = true")
            .starts_with("broker.tls.certfile: is required with broker.tls.bind"));
        assert!(err("broker { tls { bind = \"127.0.0.1:8883\", certfile = \"/no/such.pem\", keyfile = k } }\nsqlite.enable = true")
            .starts_with("broker.tls.certfile: cannot read /no/such.pem"));
        assert!(err("sqlite.enable = true\nauth { users = [{ username = a, password_hash = plain }] }")
            .starts_with("auth.users[0].password_hash: is not a password hash"));
        assert!(err("sqlite.enable = true\nauth { users = [{ username = a, pasword_hash = x }] }")
            .contains("\n  - auth.users[0].pasword_hash: unknown key (did you mean `password_hash`?)"));
        let hash = crate::auth::hash_password("pw");
        let bad_rule = format!(
            "sqlite.enable = true\nauth {{ users = [{{ username = a, password_hash = \"{hash}\" }}], acl = [{{ topic = \"a/#/b\", permission = allow }}] }}"
        );
        assert!(err(&bad_rule).starts_with("auth.acl[0].topic"), "{}", err(&bad_rule));
        assert!(err("sqlite.enable = true\nauth { acl = [{ topic = a, permission = allow }] }")
            .starts_with("auth.acl: applies only with auth.users"));
        assert!(
            err("broker { node_id = -1 }\nsqlite { enable = true }").starts_with("broker.node_id: -1 is out of range")
        );
        assert!(err("broker { node_id = 4294967296 }\nsqlite { enable = true }").starts_with("broker.node_id"));
        assert!(err("broker { max_mqueue_len = 0 }\nsqlite { enable = true }").starts_with("broker.max_mqueue_len"));
        assert!(err("broker { session_expiry_interval = -1 }\nsqlite { enable = true }")
            .starts_with("broker.session_expiry_interval: is negative"));
        assert_eq!(
            err("sqlite { enable = true, delivery_mode = broadcast }"),
            "sqlite.delivery_mode: \"broadcast\" is neither \"queue\" nor \"fanout\""
        );
        assert!(
            err("sqlite { enable = true, restore_subscriptions = never }").starts_with("sqlite.restore_subscriptions")
        );
        assert!(err("sqlite { enable = true, message_ttl = -1 }").starts_with("sqlite.message_ttl: is negative"));
        assert!(
            err("sqlite { enable = true, write_mode = later }").starts_with("sqlite.write_mode: \"later\" is neither")
        );
        assert!(err("sqlite { enable = true, replay_page_size = 0 }").starts_with("sqlite.replay_page_size: 0 is out"));
        assert!(
            err("sqlite { enable = true, max_messages_per_topic = -1 }").starts_with("sqlite.max_messages_per_topic")
        );
    }

    #[test]
    fn every_mistake_is_reported_in_one_run() {
        let text = "brokr { bind = x }\nbroker { max_packet_size = 1, bind = \"nowhere\" }\n\
                    metrics { bind = 9090 }\n\
                    sqlite { enable = true, batch_sise = 5, delivery_mode = broadcast, batch_time = -1, topics = [1] }\n\
                    mysql { pool_size = 0 }";
        let e = err(text);
        let expected = [
            "brokr: unknown key",
            "broker.bind: \"nowhere\" is not IP:PORT",
            "broker.max_packet_size: 1 is out of range",
            "metrics.bind: \"9090\" is not IP:PORT",
            "mysql.pool_size: 0 is out of range",
            "sqlite.batch_sise: unknown key (did you mean `batch_size`?)",
            "sqlite.topics[0]: expected a string",
            "sqlite.batch_time: is negative",
            "sqlite.delivery_mode: \"broadcast\" is neither",
        ];
        assert!(e.starts_with(&format!("{} problems; fix them all", expected.len())), "{e}");
        let lines: Vec<&str> = e.lines().skip(1).collect();
        assert_eq!(lines.len(), expected.len(), "{e}");
        for (line, want) in lines.iter().zip(expected) {
            assert!(line.starts_with(&format!("  - {want}")), "{line:?} should start with {want:?}\n{e}");
        }
        assert!(Config::load(Path::new("/nonexistent.hocon")).is_err());
    }

    #[test]
    fn a_disabled_block_is_checked_too() {
        assert!(
            err("sqlite.enable = true\nmysql { enable = false, batch_size = many }").starts_with("mysql.batch_size")
        );
        assert!(err("mysql.enable = true\nsqlite { topics = \"#\" }").starts_with("sqlite.topics"));
    }

    #[test]
    fn numbers_in_their_several_forms() {
        assert_eq!(sqlite_with("batch_size = 1e3").batch_size, 1000);
        assert_eq!(sqlite_with("batch_size = \"250\"").batch_size, 250);
        assert_eq!(sqlite_with("batch_size = 250").batch_size, 250);
        assert!(sqlite_with("init_default_schema = \"true\"").init_default_schema);
    }

    #[test]
    fn durations_in_both_forms() {
        let t = |v: &str| sqlite_with(&format!("batch_time = {v}")).batch_time;
        assert_eq!(t("100"), Duration::from_millis(100));
        assert_eq!(t("\"100\""), Duration::from_millis(100));
        assert_eq!(t("\"100ms\""), Duration::from_millis(100));
        assert_eq!(t("100ms"), Duration::from_millis(100));
        assert_eq!(t("5 ms"), Duration::from_millis(5));
        assert_eq!(t("5s"), Duration::from_secs(5));
        assert_eq!(t("\"5m\""), Duration::from_secs(300));
        assert_eq!(t("1h"), Duration::from_secs(3600));
        assert_eq!(t("2d"), Duration::from_secs(2 * 86_400));
        assert_eq!(t("\"2 seconds\""), Duration::from_secs(2));
        assert_eq!(t("1.5s"), Duration::from_millis(1500));
        assert_eq!(t("0.5"), Duration::from_micros(500));
        assert_eq!(t("250us"), Duration::from_micros(250));
        assert_eq!(parse_duration("7200", Unit::Seconds), Some(Duration::from_secs(7200)));
        assert_eq!(parse_duration("2h", Unit::Seconds), Some(Duration::from_secs(7200)));
        for bad in ["", "ms", "5x", "1.2.3s", ".s", "99999999999999999999d", "1.0000000001s"] {
            assert_eq!(parse_duration(bad, Unit::Millis), None, "{bad:?}");
        }
    }

    #[test]
    fn environment_substitution() {
        // Names no other test uses: tests run in parallel threads of one process.
        std::env::set_var("OM_CONFIG_TEST_PASSWORD", "hunter2-from-env");
        std::env::set_var("OM_CONFIG_TEST_BATCH", "64");
        std::env::set_var("OM_CONFIG_TEST_ENABLE", "true");
        let c = Config::parse_str(
            "mysql { enable = ${?OM_CONFIG_TEST_ENABLE}, password = \"\", password = ${?OM_CONFIG_TEST_PASSWORD}, \
             batch_size = ${?OM_CONFIG_TEST_BATCH} }",
        )
        .unwrap();
        let Backend::MySql(m) = &c.backend else { panic!() };
        assert_eq!(m.password.expose(), "hunter2-from-env");
        assert_eq!(m.storage.batch_size, 64, "an environment value is a string; numbers accept it");

        let unset = "OM_CONFIG_TEST_SURELY_UNSET";
        let c = Config::parse_str(&format!("mysql {{ enable = true, password = \"kept\", password = ${{?{unset}}} }}"))
            .unwrap();
        let Backend::MySql(m) = &c.backend else { panic!() };
        assert_eq!(m.password.expose(), "kept", "an unset ${{?VAR}} keeps the earlier value");
        let c = Config::parse_str(&format!("mysql {{ enable = true, pool_size = ${{?{unset}}} }}")).unwrap();
        let Backend::MySql(m) = &c.backend else { panic!() };
        assert_eq!(m.pool_size, 8, "an unset ${{?VAR}} alone keeps the default");

        let e = err(&format!("mysql {{ enable = true, password = \"x\", password = ${{{unset}}} }}"));
        assert!(e.starts_with(&format!("mysql.password: ${{{unset}}} is neither an environment variable")), "{e}");
    }

    #[test]
    fn passwords_never_print() {
        let c = Config::parse_str("mysql { enable = true, password = \"hunter2\" }").unwrap();
        assert!(!format!("{c:?}").contains("hunter2"), "Debug hides the password");
        let Backend::MySql(m) = &c.backend else { panic!() };
        assert_eq!((format!("{:?}", m.password), m.password.to_string()), ("***".into(), "***".into()));
        let e = err("mysql { enable = true, password = [\"hunter3\"] }");
        assert_eq!(e, "mysql.password: expected a string in quotes, found a list");
        let e = err("mysql { enable = true, password = 0123 }");
        assert!(e.starts_with("mysql.password: expected a string in quotes") && !e.contains("123"), "{e}");
        let e = err("sqlite.enable = true\nredis { password = 4567 }");
        assert!(e.starts_with("redis.password") && !e.contains("4567"), "{e}");
        let e = err("mysql {\n  enable = true\n  password = \"hunter4\n}");
        assert!(e.contains("line 3") && !e.contains("hunter4"), "{e}");
    }

    #[test]
    fn syntax_errors_give_a_line_instead_of_silently_dropping_the_rest() {
        assert_eq!(sqlite_with("batch_size = 7\n  \t").batch_size, 7, "a last line of blanks is no error");
        let e = err("sqlite { enable = true }\n\n# comment\nmysql { enable = }\nbroker { bind = \"0.0.0.0:1\" }");
        assert!(e.starts_with("not valid HOCON: parsing stops at line 4;"), "{e}");
        let e = err("sqlite {\n  enable = true\n  topics = [\"#\"\n}\n");
        assert!(e.contains("line 3;"), "{e}");
        let e = err("sqlite.enable = true\nmysql {\n  ssl {\n    enable = true\n    verify verify_none\n  }\n}");
        assert!(e.contains("line 5;"), "{e}");
        let e = err("sqlite.enable = true\nmysql {\n  server = 127.0.0.1:3306\n}");
        assert!(e.contains("line 3;") && e.contains("must be quoted"), "{e}");
        assert!(err("include \"other.conf\"\nsqlite.enable = true").starts_with("`include` is not supported"));
    }

    #[test]
    fn load_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.hocon");
        std::fs::write(&path, "sqlite { enable = true, bach_size = 1 }").unwrap();
        let e = Config::load(&path).unwrap_err().to_string();
        assert!(e.starts_with(&format!("{}: sqlite.bach_size: unknown key", path.display())), "{e}");
        let e = Config::load(&dir.path().join("missing.hocon")).unwrap_err().to_string();
        assert!(e.starts_with("cannot read the config file") && e.contains("missing.hocon"), "{e}");
        std::fs::write(&path, include_str!("../../config.hocon")).unwrap();
        assert_eq!(Config::load(&path).unwrap().backend.name(), "sqlite");
    }

    #[test]
    fn warnings() {
        let c = Config::parse_str("sqlite { enable = true, topics = [\"#\"], batch_size = 1 }").unwrap();
        assert_eq!(c.warnings().len(), 1);
        assert!(c.warnings()[0].starts_with("sqlite.batch_size = 1 writes one row per round trip"));
        let c = Config::parse_str("mysql { enable = true }").unwrap();
        assert_eq!(c.warnings().len(), 1);
        assert!(c.warnings()[0].starts_with("mysql.topics is empty: no message will be stored"));
    }

    #[test]
    fn typo_suggestions() {
        assert_eq!(closest("bach_size", STORAGE_KEYS), Some("batch_size"));
        assert_eq!(closest("passphrase", MYSQL_KEYS), None);
        assert_eq!(closest("pasword", MYSQL_KEYS), Some("password"));
    }
}
