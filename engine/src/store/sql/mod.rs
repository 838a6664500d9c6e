//! The database (MySQL or SQLite) and the SQL templates run against it.
//!
//! Three connection pools, so that no path can take the connections another needs: the batch
//! writer's own (a statement that waits for a connection counts as an outage, and would send
//! writes to the spool while the database is fine); replays, which stream their rows at the pace
//! of slow subscribers (`pool_size`); and the rest (subscription statements, purge and trim,
//! `/health`, the schema checks).
//!
//! `mysql.server` may list several servers of one replicated database (Galera): each gets its
//! three pools, opened when first used, and statements go to one server at a time. When a
//! statement finds that server unreachable, the next one that answers (in the listed order,
//! wrapping around) takes over for the writer and the reads alike; the failed statement fails as
//! in any outage (the writer spools it, a replay is retried), so nothing is lost, and writes keyed
//! by the message id land once.
//!
//! Every value reaches SQL as a bound parameter; template text is the only SQL text, and it comes
//! from the operator's config, never from message data.

mod migrate;

use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::stream::{BoxStream, StreamExt};
use sqlx::mysql::{MySqlConnectOptions, MySqlConnection, MySqlPoolOptions, MySqlSslMode};
use sqlx::query::Query;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Arguments, AssertSqlSafe, Database, Encode, Executor, Row, SqlSafeStr, Statement, Type};

use super::{in_time, Batch, CheckError, Store, StoreError, ACK_VARS};
use crate::config::{Backend, MySqlConfig, SqliteConfig, SslVerify, Templates, WriteMode};
use crate::message::{Maintenance, Message, Properties, ReplayQuery, StoredMessage, Subscription};
use crate::private_files;
use crate::template::{
    Bindings, Dialect, SqlTemplate, TemplateError, Value, Var, DELIVERY_VARS, MESSAGE_VARS, PURGE_VARS,
    SELECT_MESSAGE_VARS, SUBSCRIPTION_VARS, TRIM_VARS,
};

/// Connections for the batch writer (one task, one transaction at a time; the second covers a
/// connection dropped by a timeout while it is replaced).
const WRITER_CONNECTIONS: u32 = 2;
/// Connections for subscription statements, maintenance, `/health` and the checks.
const SHARED_CONNECTIONS: u32 = 2;
/// SQLite serves readers in parallel (WAL); a few are enough on one disk.
const SQLITE_REPLAY_CONNECTIONS: u32 = 4;
/// Ids per `delete ... in (...)` statement.
const DELETES_PER_STATEMENT: usize = 1000;
/// Most placeholders one statement may carry: MySQL allows 65,535, SQLite (since 3.32) 32,766.
const MAX_PARAMS: usize = 32_766;
/// Payload bytes per multi-row statement, kept well under MySQL's default `max_allowed_packet` (16 MiB).
const MAX_STATEMENT_PAYLOAD: usize = 4 << 20;
/// How long a statement waits for a connection: an unreachable database is noticed this fast (the
/// writer then spools, replays fail and are retried).
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);
/// Room a single-row insert needs beside its payload (the statement, the other columns).
const ROW_OVERHEAD: usize = 64 << 10;
/// After looking for another server of `mysql.server`, failures within this time do not look again.
const FAILOVER_PAUSE: Duration = Duration::from_secs(1);

enum Pool {
    MySql(sqlx::MySqlPool),
    Sqlite(sqlx::SqlitePool),
}

/// Runs `$body` with `$p` bound to the concrete pool, so each backend gets statically typed code.
macro_rules! with_pool {
    ($pool:expr, $p:ident => $body:expr) => {
        match $pool {
            Pool::MySql($p) => $body,
            Pool::Sqlite($p) => $body,
        }
    };
}

mod admin;
pub use admin::{Admin, HistoryQuery};

/// The config keys of the templates, `mysql.` and `sqlite.`, in [`Statements`] order.
macro_rules! template_keys {
    ($($name:literal),*) => { ([$(concat!("mysql.", $name)),*], [$(concat!("sqlite.", $name)),*]) };
}
const TEMPLATE_KEYS: ([&str; 9], [&str; 9]) = template_keys!(
    "insert_message_sql",
    "delete_message_sql",
    "select_message_sql",
    "insert_subscription_sql",
    "select_subscriptions_sql",
    "delete_subscription_sql",
    "insert_delivery_sql",
    "purge_expired_sql",
    "trim_topic_sql"
);

/// The statements of a backend block, parsed and checked.
pub struct Statements {
    pub insert_message: SqlTemplate,
    pub delete_message: SqlTemplate,
    pub select_message: SqlTemplate,
    pub insert_subscription: SqlTemplate,
    pub select_subscriptions: SqlTemplate,
    pub delete_subscription: SqlTemplate,
    pub insert_delivery: SqlTemplate,
    pub purge_expired: SqlTemplate,
    pub trim_topic: SqlTemplate,
}

impl Statements {
    /// Parses every template of `backend`'s block (`"mysql"` or `"sqlite"`); errors name the full key.
    pub fn parse(backend: &'static str, t: &Templates) -> Result<Statements, TemplateError> {
        let (keys, dialect) =
            if backend == "mysql" { (TEMPLATE_KEYS.0, Dialect::MySql) } else { (TEMPLATE_KEYS.1, Dialect::Sqlite) };
        let parse = |key, text: &str, vars| SqlTemplate::parse(dialect, key, text, vars);
        let [insert_message, delete_message, select_message, insert_subscription, select_subscriptions, delete_subscription, insert_delivery, purge_expired, trim_topic] =
            keys;
        Ok(Statements {
            insert_message: parse(insert_message, &t.insert_message_sql, MESSAGE_VARS)?,
            delete_message: parse(delete_message, &t.delete_message_sql, ACK_VARS)?,
            select_message: parse(select_message, &t.select_message_sql, SELECT_MESSAGE_VARS)?,
            insert_subscription: parse(insert_subscription, &t.insert_subscription_sql, SUBSCRIPTION_VARS)?,
            select_subscriptions: parse(select_subscriptions, &t.select_subscriptions_sql, &[Var::ClientId])?,
            delete_subscription: parse(delete_subscription, &t.delete_subscription_sql, SUBSCRIPTION_VARS)?,
            insert_delivery: parse(insert_delivery, &t.insert_delivery_sql, DELIVERY_VARS)?,
            purge_expired: parse(purge_expired, &t.purge_expired_sql, PURGE_VARS)?,
            trim_topic: parse(trim_topic, &t.trim_topic_sql, TRIM_VARS)?,
        })
    }

    pub fn all(&self) -> [&SqlTemplate; 9] {
        [
            &self.insert_message,
            &self.delete_message,
            &self.select_message,
            &self.insert_subscription,
            &self.select_subscriptions,
            &self.delete_subscription,
            &self.insert_delivery,
            &self.purge_expired,
            &self.trim_topic,
        ]
    }
}

/// One server of `mysql.server` (with SQLite: the file), with its pools.
struct Server {
    /// "host:port", or the SQLite file's path.
    address: String,
    /// The batch writer's alone.
    writer: Pool,
    /// Subscription statements, purge and trim, `/health`, schema checks.
    shared: Pool,
    /// Replays (`select_message_sql`).
    replays: Pool,
}

/// A connected database with its checked statements.
pub struct SqlStore {
    /// The servers of `mysql.server` in its order (SQLite: one).
    servers: Vec<Server>,
    /// The server statements go to.
    current: AtomicUsize,
    /// One look for another server at a time; when the last one was.
    failover: tokio::sync::Mutex<Option<Instant>>,
    statements: Statements,
    /// Rows per insert statement: within the placeholder limit and `batch_size` (1 for a template
    /// that cannot take many rows).
    rows_per_statement: usize,
    /// `query_timeout`: how long one statement (or a replay's next row) may take.
    query_timeout: Duration,
    backend: Backend,
    /// What the checks found, once they passed against the database; until then every statement
    /// is refused with [`StoreError::Unavailable`] (the writer spools).
    checked: OnceLock<Checked>,
    /// Why the checks have not passed yet, for `/health`.
    last_check_error: Mutex<Option<CheckError>>,
    /// One check at a time: two would race to apply the same migration.
    check_lock: tokio::sync::Mutex<()>,
}

struct Checked {
    /// Payload bytes per multi-row statement.
    statement_payload: usize,
    /// The largest payload a statement can carry (MySQL's `max_allowed_packet`); `None`: no limit.
    max_payload: Option<usize>,
}

impl SqlStore {
    /// Opens the pools and runs the checks ([`Store::check`]), so that a broken template or a
    /// missing table stops start-up with the template's key. A database that cannot be reached
    /// does not: the store starts unchecked, refuses statements (the writer spools), and the
    /// caller runs the checks again until they pass.
    pub async fn connect(backend: &Backend) -> Result<SqlStore, StoreError> {
        let (name, storage) = (backend.name(), backend.storage());
        let statements = Statements::parse(name, &storage.templates)?;
        let servers = match backend {
            Backend::MySql(cfg) => cfg
                .servers
                .iter()
                .map(|address| {
                    Ok(Server {
                        address: address.clone(),
                        writer: Pool::MySql(lazy_mysql(cfg, address, WRITER_CONNECTIONS, Reads::AsTheyCome)?),
                        shared: Pool::MySql(lazy_mysql(cfg, address, SHARED_CONNECTIONS, Reads::AfterClusterWrites)?),
                        replays: Pool::MySql(lazy_mysql(cfg, address, cfg.pool_size, Reads::AfterClusterWrites)?),
                    })
                })
                .collect::<Result<Vec<_>, StoreError>>()?,
            Backend::Sqlite(cfg) => vec![Server {
                address: cfg.path.display().to_string(),
                shared: Pool::Sqlite(connect_sqlite(cfg, SHARED_CONNECTIONS).await?),
                replays: Pool::Sqlite(connect_sqlite(cfg, SQLITE_REPLAY_CONNECTIONS).await?),
                writer: Pool::Sqlite(lazy_sqlite(cfg, WRITER_CONNECTIONS)?),
            }],
            Backend::Redis(_) => return Err(StoreError::NotSql),
        };
        let insert = &statements.insert_message;
        let rows_per_statement = insert.max_rows_per_statement(MAX_PARAMS).min(storage.batch_size);
        let store = SqlStore {
            servers,
            current: AtomicUsize::new(0),
            failover: tokio::sync::Mutex::new(None),
            statements,
            rows_per_statement,
            query_timeout: storage.query_timeout,
            backend: backend.clone(),
            checked: OnceLock::new(),
            last_check_error: Mutex::new(Some(CheckError::of(&StoreError::Unavailable))),
            check_lock: tokio::sync::Mutex::new(()),
        };
        match store.check().await {
            Ok(()) => Ok(store),
            // The engine says so (once for the whole outage); the checks run when it answers.
            Err(e) if e.is_unreachable() => Ok(store),
            Err(e) => Err(e),
        }
    }

    async fn run_checks(&self) -> Result<Checked, StoreError> {
        let (name, storage) = (self.backend.name(), self.backend.storage());
        if let Backend::MySql(cfg) = &self.backend {
            self.connect_first_answering(cfg).await?;
        }
        let pool = &self.server().1.shared;
        if storage.init_default_schema {
            with_pool!(pool, p => migrate::apply(p, migrate::for_backend(name), &|_, _, _| {}).await)?;
        }
        for t in self.statements.all() {
            let parameters = with_pool!(pool, p => p.prepare(AssertSqlSafe(t.sql()).into_sql_str()).await.map(|s| {
                s.parameters().map(|p| p.map_left(<[_]>::len).into_inner())
            }))
            .map_err(|cause| StoreError::Prepare { key: t.key(), cause })?;
            // What the lexer cannot know (a versioned `/*!` comment the server skips, SQLite's
            // `:name` parameters) shows here: every `?` must be one of the template's placeholders.
            match parameters {
                Some(database) if database != t.vars().len() => {
                    return Err(StoreError::Parameters { key: t.key(), placeholders: t.vars().len(), database })
                }
                _ => {}
            }
        }
        let max_packet = match pool {
            Pool::MySql(p) => Some(
                sqlx::query_scalar::<_, u64>("select @@max_allowed_packet")
                    .fetch_one(p)
                    .await
                    .map_err(|cause| StoreError::Query { key: "mysql.server", cause })? as usize,
            ),
            Pool::Sqlite(_) => None,
        };
        Ok(Checked {
            statement_payload: max_packet.map_or(MAX_STATEMENT_PAYLOAD, |m| MAX_STATEMENT_PAYLOAD.min(m / 2)),
            max_payload: max_packet.map(|m| m.saturating_sub(ROW_OVERHEAD)),
        })
    }

    fn ready(&self) -> Result<&Checked, StoreError> {
        self.checked.get().ok_or(StoreError::Unavailable)
    }

    /// The server statements go to now, with its index.
    fn server(&self) -> (usize, &Server) {
        let i = self.current.load(Ordering::Acquire);
        (i, &self.servers[i])
    }

    /// Statements go to `to` from now on, unless another task moved them off `from` already.
    fn move_to(&self, from: usize, to: usize) {
        if from != to && self.current.compare_exchange(from, to, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            let (from, to) = (&self.servers[from].address, &self.servers[to].address);
            tracing::warn!(from, to, "mysql.server: {from} does not answer; statements go to {to} now");
        }
    }

    /// Connects to the current server, or else to the next of `mysql.server` that answers, and
    /// makes it the current one.
    async fn connect_first_answering(&self, cfg: &MySqlConfig) -> Result<(), StoreError> {
        let from = self.current.load(Ordering::Acquire);
        let order: Vec<usize> = (0..self.servers.len()).map(|k| (from + k) % self.servers.len()).collect();
        let mut pools = Vec::with_capacity(order.len());
        for &i in &order {
            let Server { address, shared: Pool::MySql(pool), .. } = &self.servers[i] else {
                unreachable!("mysql.server names MySQL servers")
            };
            pools.push((address.as_str(), pool));
        }
        let k = first_answering(cfg, pools).await?;
        self.move_to(from, order[k]);
        Ok(())
    }

    /// What a statement on server `on` returned; when that server did not answer, first moves
    /// statements to the next server of `mysql.server` that does (if any), for the retries.
    async fn after<T>(&self, on: usize, result: Result<T, StoreError>) -> Result<T, StoreError> {
        if result.as_ref().is_err_and(StoreError::is_unreachable) {
            self.fail_over(on).await;
        }
        result
    }

    /// Looks for another server when `failed` (the current one) did not answer: the next in
    /// `mysql.server`'s order, wrapping around, that answers a trivial query takes over.
    async fn fail_over(&self, failed: usize) {
        if self.servers.len() < 2 {
            return;
        }
        let mut last_look = self.failover.lock().await;
        if self.current.load(Ordering::Acquire) != failed || last_look.is_some_and(|t| t.elapsed() < FAILOVER_PAUSE) {
            return;
        }
        for k in 1..self.servers.len() {
            let next = (failed + k) % self.servers.len();
            if ping(&self.servers[next].shared, self).await.is_ok() {
                self.move_to(failed, next);
                break;
            }
        }
        *last_look = Some(Instant::now());
    }

    /// [`ping`] on the current server's `pool`; when it does not answer and another server takes
    /// over, on that one.
    async fn ping_on(&self, pool: fn(&Server) -> &Pool) -> Result<(), StoreError> {
        let (on, server) = self.server();
        let result = ping(pool(server), self).await;
        match self.after(on, result).await {
            Err(_) if self.server().0 != on => ping(pool(self.server().1), self).await,
            result => result,
        }
    }

    /// `work`, bounded by `query_timeout`.
    async fn in_time<T>(
        &self,
        key: &'static str,
        work: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        in_time(key, self.backend.name(), self.query_timeout, work).await
    }

    /// Splits a batch into statements: at most `rows_per_statement` rows and about
    /// `statement_payload` payload bytes each (a single large row still gets its own statement),
    /// each of a size [`prepared_sizes`] allows.
    fn insert_chunks<'m>(&self, inserts: &'m [Message], statement_payload: usize) -> Vec<&'m [Message]> {
        let mut chunks = Vec::new();
        let (mut start, mut bytes) = (0, 0);
        for (i, m) in inserts.iter().enumerate() {
            let rows = i - start;
            if rows > 0 && (rows == self.rows_per_statement || bytes + m.payload.len() > statement_payload) {
                chunks.extend(prepared_sizes(&inserts[start..i], self.rows_per_statement));
                (start, bytes) = (i, 0);
            }
            bytes += m.payload.len();
        }
        chunks.extend(prepared_sizes(&inserts[start..], self.rows_per_statement));
        chunks
    }

    /// Runs one statement; returns the rows it changed.
    async fn execute<B: Bindings>(&self, t: &SqlTemplate, b: &B) -> Result<u64, StoreError> {
        let err = |cause| StoreError::Query { key: t.key(), cause };
        let (on, server) = self.server();
        let result = with_pool!(&server.shared, p => self.in_time(t.key(), async {
            bind_all(sqlx::query(AssertSqlSafe(t.sql())), t, b).execute(p).await.map(|r| r.rows_affected()).map_err(err)
        }).await);
        self.after(on, result).await
    }
}

#[async_trait::async_trait]
impl Store for SqlStore {
    /// Connects, applies the default schema when asked, prepares every template, and reads
    /// `max_allowed_packet`; once that has passed, statements run.
    async fn check(&self) -> Result<(), StoreError> {
        let _one_at_a_time = self.check_lock.lock().await;
        if self.is_checked() {
            return Ok(());
        }
        match self.run_checks().await {
            Ok(checked) => {
                let _ = self.checked.set(checked);
                *self.last_check_error.lock().expect("check error lock") = None;
                Ok(())
            }
            Err(e) => {
                *self.last_check_error.lock().expect("check error lock") = Some(CheckError::of(&e));
                Err(e)
            }
        }
    }

    /// The checks have passed against the database.
    fn is_checked(&self) -> bool {
        self.checked.get().is_some()
    }

    /// Why the checks have not passed, while they have not, in words.
    fn check_error(&self) -> Option<CheckError> {
        self.last_check_error.lock().expect("check error lock").clone()
    }

    /// `Err(limit)` when a payload is too large for any statement of this database: MySQL's
    /// `max_allowed_packet` caps every statement, and such a row would fail its whole batch.
    fn check_payload(&self, len: usize) -> Result<(), usize> {
        match self.checked.get().and_then(|c| c.max_payload) {
            Some(max) if len > max => Err(max),
            _ => Ok(()),
        }
    }

    /// Writes one batch in one transaction: the inserts (as multi-row statements when the template
    /// allows), the deletes of acknowledged messages, then the delivery records.
    async fn write_batch(&self, batch: &Batch) -> Result<(), StoreError> {
        let checked = self.ready()?;
        let (insert, delete) = (&self.statements.insert_message, &self.statements.delete_message);
        let record = &self.statements.insert_delivery;
        let insert_chunks = self.insert_chunks(&batch.inserts, checked.statement_payload);
        let delete_chunks =
            prepared_sizes(&batch.deletes, if delete.is_batchable() { DELETES_PER_STATEMENT } else { 1 });
        let record_chunks =
            prepared_sizes(&batch.deliveries, if record.is_batchable() { DELETES_PER_STATEMENT } else { 1 });
        /// One statement for a chunk of rows: the multi-row form of a batchable template.
        macro_rules! execute_chunk {
            ($p:expr, $tx:expr, $t:expr, $chunk:expr) => {{
                let sql = if $t.is_batchable() { $t.sql_for_rows($chunk.len()) } else { $t.sql().to_owned() };
                let err = |cause| StoreError::Query { key: $t.key(), cause };
                let args = arguments($p, $t, $chunk).map_err(err)?;
                sqlx::query_with(AssertSqlSafe(sql), args).execute(&mut *$tx).await.map_err(err)?;
            }};
        }
        let (on, server) = self.server();
        let result = with_pool!(&server.writer, p => self.in_time(insert.key(), async {
            let err = |cause| StoreError::Query { key: insert.key(), cause };
            let mut tx = p.begin().await.map_err(err)?;
            for chunk in &insert_chunks {
                execute_chunk!(p, tx, insert, *chunk);
            }
            for chunk in delete_chunks {
                execute_chunk!(p, tx, delete, chunk);
            }
            for chunk in record_chunks {
                execute_chunk!(p, tx, record, chunk);
            }
            tx.commit().await.map_err(err)
        }).await);
        self.after(on, result).await
    }

    fn replay_key(&self) -> &'static str {
        self.statements.select_message.key()
    }

    /// True when `select_message_sql` reads a page at a time (it uses `${after_id}`).
    fn replay_pages(&self) -> bool {
        self.statements.select_message.vars().contains(&Var::AfterId)
    }

    /// Streams the stored messages for one page of a replay (`select_message_sql`), in the order
    /// the template gives (the default orders by the table's auto-increment id: publish order).
    fn select_messages<'a>(&'a self, query: &ReplayQuery<'_>) -> BoxStream<'a, Result<StoredMessage, StoreError>> {
        let t = &self.statements.select_message;
        let key = t.key();
        let (on, server) = self.server();
        let rows = with_pool!(&server.replays, p => bind_all(sqlx::query(AssertSqlSafe(t.sql())), t, query)
            .fetch(p)
            .map(move |row| {
                let row = row.map_err(|cause| StoreError::Query { key, cause })?;
                Ok(StoredMessage {
                    position: int_column(&row, key, "id")?.map(|id| id.max(0) as u128),
                    msgid: column(&row, key, "msgid")?,
                    topic: column(&row, key, "topic")?,
                    from: optional_column::<_, String>(&row, key, "sender")?.unwrap_or_default(),
                    qos: int_column(&row, key, "qos")?.unwrap_or(1).clamp(0, 2) as u8,
                    retain: int_column(&row, key, "retain")?.unwrap_or(0) != 0,
                    payload: Bytes::from(optional_column::<_, Vec<u8>>(&row, key, "payload")?.unwrap_or_default()),
                    expiry_ms: int_column(&row, key, "expiry")?,
                    properties: optional_column::<_, String>(&row, key, "properties")?
                        .map(|t| Properties::from_json(&t))
                        .unwrap_or_default(),
                })
            })
            .boxed());
        // Each row within `query_timeout`; the stream ends after a timeout.
        let (backend, after) = (self.backend.name(), self.query_timeout);
        futures_util::stream::unfold(Some(rows), move |rows| async move {
            let mut rows = rows?;
            match tokio::time::timeout(after, rows.next()).await {
                Ok(Some(row)) => Some((row, Some(rows))),
                Ok(None) => None,
                Err(_) => Some((Err(StoreError::Timeout { key, backend, after }), None)),
            }
        })
        .then(move |row| self.after(on, row))
        .boxed()
    }

    async fn upsert_subscription(&self, sub: &Subscription) -> Result<(), StoreError> {
        self.execute(&self.statements.insert_subscription, sub).await.map(drop)
    }

    async fn delete_subscription(&self, sub: &Subscription) -> Result<(), StoreError> {
        self.execute(&self.statements.delete_subscription, sub).await.map(drop)
    }

    /// The stored subscriptions of one client (`select_subscriptions_sql`, columns `topic`, `qos`).
    async fn select_subscriptions(&self, client_id: &str) -> Result<Vec<Subscription>, StoreError> {
        let t = &self.statements.select_subscriptions;
        let key = t.key();
        let probe = Subscription { client_id: client_id.to_owned(), filter: String::new(), qos: 0 };
        let (on, server) = self.server();
        with_pool!(&server.shared, p => {
            let fetch = bind_all(sqlx::query(AssertSqlSafe(t.sql())), t, &probe).fetch_all(p);
            let rows = self.in_time(key, async { fetch.await.map_err(|cause| StoreError::Query { key, cause }) }).await;
            let rows = self.after(on, rows).await?;
            rows.iter()
                .map(|row| {
                    Ok(Subscription {
                        client_id: client_id.to_owned(),
                        filter: column(row, key, "topic")?,
                        qos: int_column(row, key, "qos")?.unwrap_or(0).clamp(0, 2) as u8,
                    })
                })
                .collect()
        })
    }

    /// Deletes up to `limit` expired messages (`purge_expired_sql`); returns how many.
    async fn purge_expired(&self, now_ms: i64, limit: i64) -> Result<u64, StoreError> {
        self.execute(&self.statements.purge_expired, &Maintenance { now_ms, limit, topic: "" }).await
    }

    /// Deletes the oldest messages of `topic` beyond the newest `keep` (`trim_topic_sql`).
    async fn trim_topic(&self, topic: &str, keep: u64) -> Result<u64, StoreError> {
        let limit = keep.min(i64::MAX as u64) as i64;
        self.execute(&self.statements.trim_topic, &Maintenance { now_ms: 0, limit, topic }).await
    }

    /// Connections in use and open, over the three pools of every server.
    fn connections(&self) -> (u32, u32) {
        let usage = |pool: &Pool| with_pool!(pool, p => (p.size() - p.num_idle() as u32, p.size()));
        self.servers
            .iter()
            .flat_map(|s| [&s.writer, &s.shared, &s.replays])
            .map(usage)
            .fold((0, 0), |(u, o), (a, b)| (u + a, o + b))
    }

    /// A trivial query on the shared pool: does the database answer? (With several servers: the
    /// current one, or the one that took over.)
    async fn ping(&self) -> Result<(), StoreError> {
        self.ping_on(|s| &s.shared).await
    }

    /// A trivial query on the writer's pool: can the writer write again?
    async fn ping_writer(&self) -> Result<(), StoreError> {
        self.ping_on(|s| &s.writer).await
    }

    /// Closes the writer's and the shared pools, waiting for their connections. Replays in
    /// progress are not waited for: a stalled one could hold its connection for minutes, and what
    /// it has not delivered stays stored.
    async fn close(&self) {
        for server in &self.servers {
            with_pool!(&server.writer, p => p.close().await);
            with_pool!(&server.shared, p => p.close().await)
        }
    }
}

async fn ping(pool: &Pool, store: &SqlStore) -> Result<(), StoreError> {
    let err = |cause| StoreError::Query { key: "health", cause };
    with_pool!(pool, p => store.in_time("health", async { sqlx::query("select 1").execute(p).await.map(drop).map_err(err) }).await)
}

/// `rows` in statements of `max` rows while that many remain, then of powers of two: a
/// connection keeps every statement it has run prepared (sqlx's statement cache), and with these
/// few sizes every batch finds its statements there. Preparing a multi-row statement costs more
/// than running it (the server describes each placeholder), and a batch of any other size needed
/// a new one: most batches, when they are cut by `batch_time`.
fn prepared_sizes<T>(mut rows: &[T], max: usize) -> impl Iterator<Item = &[T]> {
    std::iter::from_fn(move || {
        let n = match rows.len() {
            0 => return None,
            left if left >= max => max,
            left => 1 << left.ilog2(),
        };
        let (chunk, rest) = rows.split_at(n);
        rows = rest;
        Some(chunk)
    })
}

/// The values of a multi-row statement of `t` for `rows` (`pool` names the database), gathered
/// at once: binding them one by one moved the whole query nine times per row.
fn arguments<DB, B>(_pool: &sqlx::Pool<DB>, t: &SqlTemplate, rows: &[B]) -> Result<DB::Arguments, sqlx::Error>
where
    DB: Database,
    B: Bindings,
    for<'t> i64: Encode<'t, DB> + Type<DB>,
    for<'t> Option<i64>: Encode<'t, DB>,
    for<'t> &'t str: Encode<'t, DB> + Type<DB>,
    for<'t> &'t [u8]: Encode<'t, DB> + Type<DB>,
{
    let mut args = DB::Arguments::default();
    args.reserve(rows.len() * t.vars().len(), 0);
    for row in rows {
        for v in t.values(row) {
            match v {
                Value::Null => args.add(None::<i64>),
                Value::Int(i) => args.add(i),
                Value::Text(s) => args.add(s),
                Value::Bytes(bytes) => args.add(bytes),
            }
            .map_err(sqlx::Error::Encode)?;
        }
    }
    Ok(args)
}

/// Binds the template's variables, in placeholder order, from `b`.
fn bind_all<'q, DB, B>(mut q: Query<'q, DB, DB::Arguments>, t: &SqlTemplate, b: &B) -> Query<'q, DB, DB::Arguments>
where
    DB: Database,
    B: Bindings,
    for<'t> i64: Encode<'t, DB> + Type<DB>,
    for<'t> Option<i64>: Encode<'t, DB>,
    for<'t> &'t str: Encode<'t, DB> + Type<DB>,
    for<'t> &'t [u8]: Encode<'t, DB> + Type<DB>,
{
    for v in t.values(b) {
        q = match v {
            Value::Null => q.bind(None::<i64>),
            Value::Int(i) => q.bind(i),
            Value::Text(s) => q.bind(s),
            Value::Bytes(bytes) => q.bind(bytes),
        };
    }
    q
}

fn column<R, T>(row: &R, key: &'static str, column: &'static str) -> Result<T, StoreError>
where
    R: Row,
    for<'r> T: sqlx::Decode<'r, R::Database> + Type<R::Database>,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
{
    row.try_get(column).map_err(|cause| StoreError::Column { key, column, cause })
}

/// A column the select may leave out, or return as NULL.
fn optional_column<R, T>(row: &R, key: &'static str, column: &'static str) -> Result<Option<T>, StoreError>
where
    R: Row,
    for<'r> T: sqlx::Decode<'r, R::Database> + Type<R::Database>,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
{
    match row.try_get::<Option<T>, _>(column) {
        Err(sqlx::Error::ColumnNotFound(_)) => Ok(None),
        other => other.map_err(|cause| StoreError::Column { key, column, cause }),
    }
}

/// An integer column, signed or (MySQL) unsigned.
fn int_column<R>(row: &R, key: &'static str, column: &'static str) -> Result<Option<i64>, StoreError>
where
    R: Row,
    for<'r> i64: sqlx::Decode<'r, R::Database> + Type<R::Database>,
    for<'r> u64: sqlx::Decode<'r, R::Database> + Type<R::Database>,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
{
    match optional_column::<R, i64>(row, key, column) {
        Err(_) => Ok(optional_column::<R, u64>(row, key, column)?.map(|v| v.min(i64::MAX as u64) as i64)),
        ok => ok,
    }
}

/// A pool on the first server of `mysql.server` that answers.
async fn connect_mysql(cfg: &MySqlConfig, connections: u32) -> Result<sqlx::MySqlPool, StoreError> {
    let mut pools = cfg
        .servers
        .iter()
        .map(|address| lazy_mysql(cfg, address, connections, Reads::AfterClusterWrites))
        .collect::<Result<Vec<_>, _>>()?;
    let k = first_answering(cfg, cfg.servers.iter().map(String::as_str).zip(&pools).collect()).await?;
    Ok(pools.swap_remove(k))
}

/// Which of `pools` (a server's address and pool, in the order to try) is the first to give a
/// connection. An error other than "unreachable" (a refused login) stops the search; when no
/// server answers: the first one's error, naming every server of `mysql.server`.
async fn first_answering<'p>(
    cfg: &MySqlConfig,
    pools: Vec<(&'p str, &'p sqlx::MySqlPool)>,
) -> Result<usize, StoreError> {
    let mut first_error = None;
    for (k, (address, pool)) in pools.into_iter().enumerate() {
        match acquire_mysql(pool, address).await {
            Ok(()) => return Ok(k),
            Err(e) if e.is_unreachable() => _ = first_error.get_or_insert(e),
            Err(e) => return Err(e),
        }
    }
    let mut e = first_error.expect("mysql.server lists a server");
    if let (StoreError::Connect { target, .. }, [_, _, ..]) = (&mut e, cfg.servers.as_slice()) {
        *target = cfg.servers.join(", ");
    }
    Err(e)
}

/// One connection from `pool`, or the reason there is none. The pool retries a failed connect
/// until its timeout and then says only that it timed out: one direct attempt then gives the
/// socket's or the server's own words ("Connection refused").
async fn acquire_mysql(pool: &sqlx::MySqlPool, address: &str) -> Result<(), StoreError> {
    let cause = match pool.acquire().await {
        Ok(_) => return Ok(()),
        Err(sqlx::Error::PoolTimedOut) => {
            match tokio::time::timeout(ACQUIRE_TIMEOUT, sqlx::ConnectOptions::connect(&*pool.connect_options())).await {
                Ok(Err(cause)) => cause,
                _ => sqlx::Error::PoolTimedOut,
            }
        }
        Err(cause) => cause,
    };
    Err(mysql_connect_error(address, cause))
}

/// Whether a connection's reads wait for what the rest of a Galera cluster has committed.
#[derive(Clone, Copy)]
enum Reads {
    /// The writer's: it only writes.
    AsTheyCome,
    /// Replays and subscription reads: see [`read_after_cluster_writes`].
    AfterClusterWrites,
}

/// A MySQL pool on `address` that connects when first used: the broker can start while the
/// server is down.
fn lazy_mysql(cfg: &MySqlConfig, address: &str, connections: u32, reads: Reads) -> Result<sqlx::MySqlPool, StoreError> {
    let connect_err =
        |cause| StoreError::Connect { backend: "mysql", key: "mysql.server", target: address.to_owned(), cause };
    let (host, port) = match address.rsplit_once(':') {
        Some((h, p)) => (
            h,
            p.parse::<u16>().map_err(|_| {
                connect_err(sqlx::Error::Configuration(
                    format!("port {p:?} is not a number; write mysql.server as \"host:port\"").into(),
                ))
            })?,
        ),
        None => (address, 3306),
    };
    let mut opts = MySqlConnectOptions::new()
        .host(host)
        .port(port)
        .username(&cfg.username)
        .database(&cfg.database)
        .charset("utf8mb4");
    if !cfg.password.expose().is_empty() {
        opts = opts.password(cfg.password.expose());
    }
    opts = if cfg.ssl.enable {
        let mode = match cfg.ssl.verify {
            SslVerify::VerifyPeer => MySqlSslMode::VerifyIdentity,
            SslVerify::VerifyNone => MySqlSslMode::Required,
        };
        let mut o = opts.ssl_mode(mode);
        let files = [
            ("mysql.ssl.cacertfile", &cfg.ssl.cacertfile),
            ("mysql.ssl.certfile", &cfg.ssl.certfile),
            ("mysql.ssl.keyfile", &cfg.ssl.keyfile),
        ];
        for (key, path) in files {
            if let Some(path) = path {
                std::fs::File::open(path).map_err(|cause| StoreError::TlsFile {
                    key,
                    path: path.display().to_string(),
                    cause,
                })?;
            }
        }
        if let Some(ca) = &cfg.ssl.cacertfile {
            o = o.ssl_ca(ca);
        }
        if let Some(cert) = &cfg.ssl.certfile {
            o = o.ssl_client_cert(cert);
        }
        if let Some(key) = &cfg.ssl.keyfile {
            o = o.ssl_client_key(key);
        }
        o
    } else {
        opts.ssl_mode(MySqlSslMode::Disabled)
    };
    let options = MySqlPoolOptions::new().max_connections(connections).acquire_timeout(ACQUIRE_TIMEOUT);
    let options = match reads {
        Reads::AsTheyCome => options,
        Reads::AfterClusterWrites => options.after_connect(|conn, _| Box::pin(read_after_cluster_writes(conn))),
    };
    Ok(options.connect_lazy_with(opts))
}

/// On a Galera node, makes the connection's reads wait until the node has applied every write
/// the cluster committed before them (`wsrep_sync_wait = 1`): a replay on one node then sees the
/// rows a broker on another node has just committed. Elsewhere (no `wsrep_on`, or off) nothing changes.
async fn read_after_cluster_writes(conn: &mut MySqlConnection) -> Result<(), sqlx::Error> {
    let galera =
        sqlx::query_scalar::<_, i64>("select @@wsrep_on + 0").fetch_one(&mut *conn).await.is_ok_and(|on| on == 1);
    if galera {
        conn.execute("set session wsrep_sync_wait = 1").await?;
    }
    Ok(())
}

/// The error a user reads when connecting to `address` fails: TLS problems point at `mysql.ssl`,
/// the rest at `mysql.server` and the connection keys.
fn mysql_connect_error(address: &str, cause: sqlx::Error) -> StoreError {
    let target = address.to_owned();
    match &cause {
        sqlx::Error::Tls(_) => StoreError::Tls { target, cause },
        sqlx::Error::Io(_) | sqlx::Error::Protocol(_) if is_tls_failure(&cause) => StoreError::Tls { target, cause },
        _ => StoreError::Connect { backend: "mysql", key: "mysql.server", target, cause },
    }
}

/// rustls reports a refused certificate as an I/O error whose text names the certificate.
fn is_tls_failure(e: &sqlx::Error) -> bool {
    let text = e.to_string().to_ascii_lowercase();
    ["certificate", "tls", "handshake"].iter().any(|w| text.contains(w))
}

async fn connect_sqlite(cfg: &SqliteConfig, connections: u32) -> Result<sqlx::SqlitePool, StoreError> {
    let opts = sqlite_options(cfg)?;
    SqlitePoolOptions::new().max_connections(connections).connect_with(opts).await.map_err(|cause| {
        StoreError::Connect { backend: "sqlite", key: "sqlite.path", target: cfg.path.display().to_string(), cause }
    })
}

/// A pool that opens its connections when first used. A SQLite connection opened before the
/// migrations keeps the schema it read (a prepare then finds no table): the writer's pool opens
/// only once the checks have run.
fn lazy_sqlite(cfg: &SqliteConfig, connections: u32) -> Result<sqlx::SqlitePool, StoreError> {
    Ok(SqlitePoolOptions::new().max_connections(connections).connect_lazy_with(sqlite_options(cfg)?))
}

/// The file's options; creates its directory (0700) and the file (0600) if missing.
fn sqlite_options(cfg: &SqliteConfig) -> Result<SqliteConnectOptions, StoreError> {
    let path = cfg.path.display().to_string();
    if let Some(dir) = cfg.path.parent().filter(|d| !d.as_os_str().is_empty()) {
        private_files::create_dir_all(dir).map_err(|cause| StoreError::SqliteDir { path: path.clone(), cause })?;
    }
    // SQLite gives its WAL and shared-memory files the database file's permissions. Only a file
    // that does not exist yet is opened here: closing a descriptor of a file SQLite has open would
    // drop the process's locks on it (POSIX), and with them SQLite's guard against corruption.
    match private_files::options().write(true).create_new(true).open(&cfg.path) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
            return Err(StoreError::SqliteDir { path, cause: e })
        }
        _ => {}
    }
    let opts = SqliteConnectOptions::from_str("sqlite:")
        .expect("a constant URL")
        .filename(&cfg.path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        // In WAL mode NORMAL survives a crash of this process but may lose the last commits on a
        // power failure; `sync` mode promises durability, so it syncs every commit.
        .synchronous(if cfg.storage.write_mode == WriteMode::Sync {
            SqliteSynchronous::Full
        } else {
            SqliteSynchronous::Normal
        })
        .busy_timeout(Duration::from_secs(10))
        // Lets `topic like 'prefix%'` use the topic index (SQLite's LIKE folds ASCII case otherwise);
        // the exact match is done in Rust either way.
        .pragma("case_sensitive_like", "ON");
    Ok(opts)
}

#[cfg(test)]
mod tests {
    use super::prepared_sizes;

    #[test]
    fn batches_of_any_size_use_a_few_statement_sizes() {
        let rows: Vec<usize> = (0..2500).collect();
        let mut sizes = std::collections::BTreeSet::new();
        for n in 0..=rows.len() {
            let chunks: Vec<&[usize]> = prepared_sizes(&rows[..n], 1000).collect();
            assert_eq!(chunks.concat(), rows[..n], "every row once, in order");
            sizes.extend(chunks.iter().map(|c| c.len()));
        }
        // 1000, and 512, 256, ..., 1 for what is left: 11 statements for 2,501 batch sizes.
        assert_eq!(sizes.len(), 11, "{sizes:?}");
        assert_eq!(prepared_sizes(&rows[..600], 1000).map(<[usize]>::len).collect::<Vec<_>>(), [512, 64, 16, 8]);
        assert_eq!(prepared_sizes(&rows[..7], 1).count(), 7);
    }
}
