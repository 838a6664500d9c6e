//! Where messages and subscriptions are kept: the operations the engine needs (write a batch,
//! read a replay page, subscriptions, maintenance), behind one trait, so that the engine picks a
//! backend at start-up and never asks which it has.
//!
//! - [`sql`]: MySQL and SQLite, through the operator's SQL templates.
//! - [`redis`]: Redis (a server, sentinels, a cluster), with the reference plugin's keys.

mod history;
pub mod redis;
pub mod sql;

use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::BoxStream;

use crate::config::Backend;
use crate::message::{DeliveryRecord, Message, ReplayQuery, StoredMessage, Subscription};
use crate::template::{Bindings, TemplateError, Value, Var};

pub use history::HistoryRow;
pub use sql::{Admin, HistoryQuery, Statements};

/// What the engine, the batch writer and the subscription writer ask of a backend.
///
/// Every statement is bounded by the backend's `query_timeout` (a replay's next row too): past
/// it, the call fails with [`StoreError::Timeout`], which counts as unreachable.
#[async_trait::async_trait]
pub trait Store: Send + Sync {
    /// Connects and checks the schema and statements; once that has passed, the other calls run.
    /// Until then they fail with [`StoreError::Unavailable`] (the writer spools).
    async fn check(&self) -> Result<(), StoreError>;

    /// The checks have passed against the backend.
    fn is_checked(&self) -> bool;

    /// Why the checks have not passed, while they have not.
    fn check_error(&self) -> Option<CheckError>;

    /// `Err(limit)` when a payload is too large for any write of this backend: such a message
    /// would fail its whole batch, so the writer dead-letters it alone.
    fn check_payload(&self, len: usize) -> Result<(), usize>;

    /// Writes one batch atomically: inserts, deletes of acknowledged messages, delivery records.
    async fn write_batch(&self, batch: &Batch) -> Result<(), StoreError>;

    /// The config key a replay's errors name.
    fn replay_key(&self) -> &'static str;

    /// True when a replay reads page by page, after the greatest [`StoredMessage::position`] read;
    /// false when one read returns all.
    fn replay_pages(&self) -> bool;

    /// One page of a replay, in publish order; each row arrives within `query_timeout`.
    fn select_messages<'a>(&'a self, query: &ReplayQuery<'_>) -> BoxStream<'a, Result<StoredMessage, StoreError>>;

    async fn upsert_subscription(&self, sub: &Subscription) -> Result<(), StoreError>;

    async fn delete_subscription(&self, sub: &Subscription) -> Result<(), StoreError>;

    /// The stored subscriptions of one client.
    async fn select_subscriptions(&self, client_id: &str) -> Result<Vec<Subscription>, StoreError>;

    /// Deletes up to `limit` expired messages; returns how many.
    async fn purge_expired(&self, now_ms: i64, limit: i64) -> Result<u64, StoreError>;

    /// Deletes the oldest messages of `topic` beyond the newest `keep`; returns how many.
    async fn trim_topic(&self, topic: &str, keep: u64) -> Result<u64, StoreError>;

    /// Connections (in use, open), for the metrics.
    fn connections(&self) -> (u32, u32);

    /// A trivial request: does the backend answer?
    async fn ping(&self) -> Result<(), StoreError>;

    /// The same through the batch writer's own connections: can the writer write again?
    async fn ping_writer(&self) -> Result<(), StoreError>;

    /// Closes the connections the writer uses, once it is done.
    async fn close(&self);
}

/// Connects to the configured backend (see [`Store::check`] for a backend that cannot be reached
/// yet: it starts unchecked).
pub async fn connect(backend: &Backend) -> Result<Arc<dyn Store>, StoreError> {
    Ok(match backend {
        Backend::Redis(cfg) => Arc::new(redis::RedisStore::connect(cfg).await?),
        Backend::MySql(_) | Backend::Sqlite(_) => Arc::new(sql::SqlStore::connect(backend).await?),
    })
}

/// Why a store's checks have not passed: `reason` in words for `/health` (see
/// [`StoreError::reason`]), `detail` with the database's own text for the log.
#[derive(Clone, Debug)]
pub struct CheckError {
    pub reason: String,
    pub detail: String,
}

impl CheckError {
    pub fn of(e: &StoreError) -> CheckError {
        CheckError { reason: e.reason(), detail: e.to_string() }
    }
}

/// `work`, or [`StoreError::Timeout`] once it has taken `after`. A statement cut off this way may
/// still have committed: the writer's retry of it is absorbed by the unique message id.
pub(crate) async fn in_time<T>(
    key: &'static str,
    backend: &'static str,
    after: Duration,
    work: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(after, work).await.unwrap_or(Err(StoreError::Timeout { key, backend, after }))
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot connect to {backend} at {target} ({key}): {cause}; check that the database is running and reachable, and the connection keys in the `{backend}` block")]
    Connect { backend: &'static str, key: &'static str, target: String, cause: sqlx::Error },
    #[error("{key}: cannot read {path}: {cause}; give the path of a readable PEM file")]
    TlsFile { key: &'static str, path: String, cause: std::io::Error },
    #[error("cannot set up TLS to mysql at {target} (mysql.ssl): {cause}; check mysql.ssl.cacertfile (the CA that signed the server's certificate, whose name must match the host in mysql.server), or set mysql.ssl.verify = verify_none to encrypt without checking")]
    Tls { target: String, cause: sqlx::Error },
    #[error(transparent)]
    Template(#[from] TemplateError),
    #[error("{key}: the database cannot prepare this template: {cause}; fix the template, or create its tables (set `init_default_schema = true` for the default ones)")]
    Prepare { key: &'static str, cause: sqlx::Error },
    #[error("{key}: the database sees {database} parameters in this template, which has {placeholders} placeholders: a placeholder is where the database does not read it (a comment it skips), or the text has a parameter of its own (`?`, `:name`, `$name`); fix the template in config.hocon")]
    Parameters { key: &'static str, placeholders: usize, database: usize },
    #[error("schema migration {file} failed: {cause}")]
    Migrate { file: &'static str, cause: sqlx::Error },
    #[error(
        "schema migrations: another broker held the lock `{lock}` (GET_LOCK) for {waited_s} s while applying them; \
         check that broker's log, or apply them once with `mqtt-offline-messages migrate`"
    )]
    MigrationLocked { lock: &'static str, waited_s: i64 },
    #[error("{key}: {cause}")]
    Query { key: &'static str, cause: sqlx::Error },
    #[error("{key}: the database did not answer within {after:?} ({backend}.query_timeout); it counts as unavailable until it does")]
    Timeout { key: &'static str, backend: &'static str, after: Duration },
    #[error("{key}: the result has no usable column `{column}` ({cause}); the select must return it by that name")]
    Column { key: &'static str, column: &'static str, cause: sqlx::Error },
    #[error("{key}: the select uses ${{after_id}} to read page by page, so it must return the `id` column; add it, or drop the paging")]
    NoId { key: &'static str },
    #[error("the database is unavailable, or not checked yet: what the writer holds waits in the spool")]
    Unavailable,
    #[error("cannot create sqlite.path {path} or its directory: {cause}; give a path the broker may write")]
    SqliteDir { path: String, cause: std::io::Error },
    #[error("redis keeps no SQL tables: this needs the mysql or sqlite backend")]
    NotSql,
    #[error("cannot connect to redis at {target} (redis.servers): {cause}{}", redis::hint(cause))]
    RedisConnect { target: String, cause: ::redis::RedisError },
    #[error("{key}: {cause}{}", redis::hint(cause))]
    Redis { key: &'static str, cause: ::redis::RedisError },
}

impl StoreError {
    /// What went wrong, in words, without the database's own text (which may name the host, the
    /// user, the schema): for `/health`, which anybody who reaches it reads. The log has the rest.
    pub fn reason(&self) -> String {
        match self {
            StoreError::Connect { backend, key, .. } => format!("cannot connect to {backend} ({key})"),
            StoreError::TlsFile { key, .. } => format!("{key}: cannot read the file"),
            StoreError::Tls { .. } => "cannot set up TLS to the database (mysql.ssl)".into(),
            StoreError::Prepare { key, .. } => format!("{key}: the database cannot prepare this template"),
            StoreError::Migrate { file, .. } => format!("schema migration {file} failed"),
            StoreError::Query { key, .. } if self.is_unreachable() => format!("{key}: the database cannot be reached"),
            StoreError::Query { key, .. } => format!("{key}: the database refused the statement"),
            StoreError::Column { key, column, .. } => format!("{key}: the result has no usable column `{column}`"),
            StoreError::SqliteDir { .. } => "cannot create sqlite.path or its directory".into(),
            StoreError::RedisConnect { .. } => "cannot connect to redis (redis.servers)".into(),
            StoreError::Redis { key, .. } if self.is_unreachable() => format!("{key}: redis cannot be reached"),
            StoreError::Redis { key, .. } => format!("{key}: redis refused the request"),
            StoreError::Template(_)
            | StoreError::Parameters { .. }
            | StoreError::Timeout { .. }
            | StoreError::NoId { .. }
            | StoreError::MigrationLocked { .. }
            | StoreError::NotSql
            | StoreError::Unavailable => self.to_string(),
        }
    }

    /// The database could not be reached (down, restarting, out of connections), as opposed to
    /// refusing what was asked of it.
    pub fn is_unreachable(&self) -> bool {
        let cause = match self {
            StoreError::Connect { cause, .. }
            | StoreError::Query { cause, .. }
            | StoreError::Prepare { cause, .. }
            | StoreError::Migrate { cause, .. } => cause,
            StoreError::Unavailable | StoreError::Timeout { .. } => return true,
            StoreError::RedisConnect { cause, .. } | StoreError::Redis { cause, .. } => {
                return redis::is_unreachable(cause)
            }
            _ => return false,
        };
        matches!(
            cause,
            sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::WorkerCrashed
        )
    }
}

#[derive(Clone, Debug, Default)]
pub struct Batch {
    pub inserts: Vec<Message>,
    pub deletes: Vec<AckedMessage>,
    pub deliveries: Vec<DeliveryRecord>,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.inserts.is_empty() && self.deletes.is_empty() && self.deliveries.is_empty()
    }
}

/// What an ack knows of the message it acknowledges: the variables `delete_message_sql` may use.
pub const ACK_VARS: &[Var] = &[Var::Id, Var::From, Var::Topic];

/// An acknowledged message, for `delete_message_sql`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AckedMessage {
    pub msgid: String,
    pub from: String,
    pub topic: String,
}

impl Bindings for AckedMessage {
    fn value(&self, var: Var) -> Value<'_> {
        match var {
            Var::Id => Value::Text(&self.msgid),
            Var::From | Var::ClientId => Value::Text(&self.from),
            _ => Value::Text(&self.topic),
        }
    }
}
