//! The `redis` block: the reference plugin's keys, plus ours that apply to Redis (everything of
//! [`StorageConfig`] but the SQL templates and `init_default_schema`).

use std::time::Duration;

use super::{host_list, ssl, storage, ConfigError, Secret, SslConfig, StorageConfig, Table, Templates};
use super::{MAX_POOL_SIZE, SSL_KEYS, STORAGE_KEYS};

/// The reference's keys.
const REFERENCE_KEYS: &[&str] = &[
    "enable",
    "servers",
    "redis_type",
    "sentinel",
    "username",
    "password",
    "database",
    "pool_size",
    "topics",
    "message_key_prefix",
    "subscription_key_prefix",
    "message_ttl",
    "batch_size",
    "batch_time",
    "ssl",
];

/// The reference's `message_ttl`.
pub const DEFAULT_REDIS_MESSAGE_TTL: Duration = Duration::from_secs(7200);

/// Every key the `redis` block accepts.
pub(super) fn redis_keys() -> Vec<&'static str> {
    let ours = STORAGE_KEYS.iter().filter(|k| !REFERENCE_KEYS.contains(k));
    REFERENCE_KEYS.iter().chain(ours).copied().collect()
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RedisType {
    #[default]
    Single,
    /// `servers` are sentinels, `sentinel` names the master.
    Sentinel,
    /// `servers` are some of the cluster's nodes; the others are discovered.
    Cluster,
}

#[derive(Clone, Debug)]
pub struct RedisConfig {
    /// `host:port` each: the server (single), the sentinels (sentinel) or cluster nodes (cluster).
    pub servers: Vec<String>,
    pub redis_type: RedisType,
    /// The master's name the sentinels know (`sentinel`).
    pub sentinel: String,
    pub username: Option<String>,
    pub password: Secret,
    /// The database number; cluster mode has only database 0.
    pub database: u32,
    /// Connections (each multiplexes many requests).
    pub pool_size: u32,
    pub message_key_prefix: String,
    pub subscription_key_prefix: String,
    pub ssl: SslConfig,
    /// The keys shared with the SQL blocks; its `templates` are not used.
    pub storage: StorageConfig,
}

/// Reads the `redis` block; returns `redis.enable` with it (`None` when it is wrong, recorded).
pub(super) fn redis(t: &Table<'_>) -> Result<(Option<bool>, RedisConfig), ConfigError> {
    let enable = t.enable()?;
    let servers = host_list(t, "servers", "127.0.0.1:6379")?;
    let redis_type = t.choice(
        "redis_type",
        &[("single", RedisType::Single), ("sentinel", RedisType::Sentinel), ("cluster", RedisType::Cluster)],
    )?;
    let sentinel = t.string("sentinel")?.unwrap_or_default();
    if redis_type == RedisType::Sentinel && sentinel.trim().is_empty() {
        return Err(t.invalid(
            "sentinel",
            "is required with redis_type = sentinel: the name the sentinels know the master by (e.g. \"mymaster\")"
                .into(),
        ));
    }
    if redis_type == RedisType::Single && servers.len() > 1 {
        return Err(t.invalid(
            "servers",
            format!(
                "lists {} servers with redis_type = single; give one, or set redis_type = sentinel or cluster",
                servers.len()
            ),
        ));
    }
    let prefix = |key: &str, default: &str| -> Result<String, ConfigError> {
        let p = t.non_empty_string(key)?.unwrap_or_else(|| default.to_owned());
        if p.contains('#') {
            // `#` marks the keys of ours under a prefix (see the store): a prefix must not hold one.
            return Err(t.invalid(key, format!("{p:?} contains `#`; choose a prefix without it")));
        }
        Ok(p)
    };
    let mut storage = storage(t, Templates::mysql_default())?;
    // The reference's default TTL; 0 keeps messages until acknowledged.
    if t.get("message_ttl")?.is_none() {
        storage.message_ttl = Some(DEFAULT_REDIS_MESSAGE_TTL);
    }
    let config = RedisConfig {
        servers,
        redis_type,
        sentinel,
        username: t.string("username")?.filter(|u| !u.is_empty()),
        password: t.secret("password")?.unwrap_or_default(),
        database: t.int("database", 0, i64::from(u32::MAX))?.unwrap_or(0) as u32,
        pool_size: t.int("pool_size", 1, MAX_POOL_SIZE)?.unwrap_or(8) as u32,
        message_key_prefix: prefix("message_key_prefix", "mqtt:msg")?,
        subscription_key_prefix: prefix("subscription_key_prefix", "mqtt:sub")?,
        ssl: ssl(&t.table("ssl", SSL_KEYS)?)?,
        storage,
    };
    Ok((enable, config))
}

/// Start-up warnings for the `redis` block.
pub(super) fn warnings(c: &RedisConfig) -> Vec<String> {
    let mut w = Vec::new();
    if c.redis_type == RedisType::Cluster && c.database != 0 {
        w.push(format!(
            "redis.database = {} is ignored with redis_type = cluster: a cluster has only database 0",
            c.database
        ));
    }
    if c.ssl.server_name_indication.is_some() {
        w.push(
            "redis.ssl.server_name_indication is accepted but not used: the name checked is the host of redis.servers"
                .into(),
        );
    }
    w
}
