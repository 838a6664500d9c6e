//! The database as the command-line tools see it (`migrate`, `check-config`, `history`): one small
//! pool, no writer. `history` reads the default schema (`mqtt_msg`) with its own statements; every
//! value is bound.

use futures_util::stream::{BoxStream, StreamExt};
use sqlx::{AssertSqlSafe, Row};

use super::{connect_mysql, connect_sqlite, migrate, Pool};
use crate::config::Backend;
use crate::message::Properties;
use crate::store::{HistoryRow, StoreError};
use crate::template::SqlTemplate;

pub struct Admin {
    pool: Pool,
    backend: &'static str,
}

/// What `history` asks for: one page.
#[derive(Debug, Clone)]
pub struct HistoryQuery {
    /// LIKE pattern of the filter's literal prefix; the exact match is the caller's.
    pub topic_like: String,
    pub after_id: i64,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    pub sender: Option<String>,
    pub limit: i64,
}

const MYSQL_HISTORY: &str = "select id, msgid, topic, sender, qos, retain, payload, \
     cast(unix_timestamp(arrived) * 1000 as signed) as arrived_ms, expiry, properties from mqtt_msg \
     where topic like ? escape '!' and id > ? \
     and (? is null or arrived >= from_unixtime(? / 1000)) and (? is null or arrived < from_unixtime(? / 1000)) \
     and (? is null or sender = ?) order by id limit ?";
const SQLITE_HISTORY: &str = "select id, msgid, topic, sender, qos, retain, payload, arrived as arrived_ms, \
     expiry, properties from mqtt_msg \
     where topic like ? escape '!' and id > ? \
     and (? is null or arrived >= ?) and (? is null or arrived < ?) \
     and (? is null or sender = ?) order by id limit ?";

impl Admin {
    pub async fn connect(backend: &Backend) -> Result<Admin, StoreError> {
        let pool = match backend {
            Backend::MySql(cfg) => Pool::MySql(connect_mysql(cfg, 1).await?),
            Backend::Sqlite(cfg) => Pool::Sqlite(connect_sqlite(cfg, 1).await?),
            Backend::Redis(_) => return Err(StoreError::NotSql),
        };
        Ok(Admin { pool, backend: backend.name() })
    }

    /// Applies the migrations not yet applied, telling `on_start` as each begins; returns their files.
    pub async fn migrate(&self, on_start: migrate::OnMigration<'_>) -> Result<Vec<&'static str>, StoreError> {
        let migrations = migrate::for_backend(self.backend);
        with_pool!(&self.pool, p => migrate::apply(p, migrations, on_start).await)
    }

    /// The migrations not applied yet; `None` when the database has no record of migrations.
    pub async fn pending_migrations(&self) -> Option<Vec<&'static str>> {
        let migrations = migrate::for_backend(self.backend);
        with_pool!(&self.pool, p => migrate::pending(p, migrations).await)
    }

    /// Has the database prepare the template: its tables and columns exist, its SQL is valid.
    pub async fn prepare(&self, t: &SqlTemplate) -> Result<(), StoreError> {
        use sqlx::{Executor, SqlSafeStr};
        with_pool!(&self.pool, p => p.prepare(AssertSqlSafe(t.sql()).into_sql_str()).await.map(drop))
            .map_err(|cause| StoreError::Prepare { key: t.key(), cause })
    }

    /// The names of the indexes on `table`.
    pub async fn indexes(&self, table: &str) -> Result<Vec<String>, StoreError> {
        let err = |cause| StoreError::Query { key: "indexes", cause };
        match &self.pool {
            Pool::MySql(p) => sqlx::query_scalar(
                "select distinct index_name from information_schema.statistics \
                 where table_schema = database() and table_name = ?",
            )
            .bind(table)
            .fetch_all(p)
            .await
            .map_err(err),
            Pool::Sqlite(p) => {
                sqlx::query_scalar("select name from pragma_index_list(?)").bind(table).fetch_all(p).await.map_err(err)
            }
        }
    }

    /// True when `table` has a primary or unique key (the default upserts and insert-ignores rely
    /// on one).
    pub async fn has_unique_key(&self, table: &str) -> Result<bool, StoreError> {
        let err = |cause| StoreError::Query { key: "indexes", cause };
        let n: i64 = match &self.pool {
            Pool::MySql(p) => sqlx::query_scalar(
                "select count(*) from information_schema.table_constraints \
                 where table_schema = database() and table_name = ? and constraint_type in ('PRIMARY KEY', 'UNIQUE')",
            )
            .bind(table)
            .fetch_one(p)
            .await
            .map_err(err)?,
            Pool::Sqlite(p) => sqlx::query_scalar("select count(*) from pragma_index_list(?) where \"unique\" = 1")
                .bind(table)
                .fetch_one(p)
                .await
                .map_err(err)?,
        };
        Ok(n > 0)
    }

    /// One page of stored messages, in publish (`id`) order.
    pub fn history<'a>(&'a self, q: &HistoryQuery) -> BoxStream<'a, Result<HistoryRow, StoreError>> {
        let err = |cause| StoreError::Query { key: "history", cause };
        macro_rules! page {
            ($p:expr, $sql:expr) => {
                sqlx::query($sql)
                    .bind(q.topic_like.clone())
                    .bind(q.after_id)
                    .bind(q.since_ms)
                    .bind(q.since_ms)
                    .bind(q.until_ms)
                    .bind(q.until_ms)
                    .bind(q.sender.clone())
                    .bind(q.sender.clone())
                    .bind(q.limit)
                    .fetch($p)
                    .map(move |row| {
                        let row = row.map_err(err)?;
                        let get = |cause| StoreError::Column { key: "history", column: "mqtt_msg", cause };
                        Ok(HistoryRow {
                            id: Some(
                                row.try_get::<i64, _>("id")
                                    .or_else(|_| row.try_get::<u64, _>("id").map(|v| v as i64))
                                    .map_err(get)?,
                            ),
                            msgid: row.try_get::<Option<String>, _>("msgid").map_err(get)?.unwrap_or_default(),
                            topic: row.try_get("topic").map_err(get)?,
                            sender: row.try_get::<Option<String>, _>("sender").map_err(get)?.unwrap_or_default(),
                            qos: row
                                .try_get::<i64, _>("qos")
                                .or_else(|_| row.try_get::<i8, _>("qos").map(i64::from))
                                .map_err(get)?,
                            retain: row
                                .try_get::<Option<i64>, _>("retain")
                                .or_else(|_| row.try_get::<Option<i8>, _>("retain").map(|v| v.map(i64::from)))
                                .map_err(get)?
                                .unwrap_or(0)
                                != 0,
                            payload: row.try_get::<Option<Vec<u8>>, _>("payload").map_err(get)?.unwrap_or_default(),
                            arrived_ms: row.try_get("arrived_ms").map_err(get)?,
                            expiry_ms: row.try_get("expiry").map_err(get)?,
                            properties: row
                                .try_get::<Option<String>, _>("properties")
                                .map_err(get)?
                                .map(|t| Properties::from_json(&t))
                                .unwrap_or_default(),
                        })
                    })
                    .boxed()
            };
        }
        match &self.pool {
            Pool::MySql(p) => page!(p, MYSQL_HISTORY),
            Pool::Sqlite(p) => page!(p, SQLITE_HISTORY),
        }
    }
}
