//! The default schema, applied when `init_default_schema = true`: numbered SQL files from
//! `migrations/<backend>/`, compiled into the binary, each applied once and recorded in
//! `offline_messages_schema`.

use sqlx::{Database, Executor, Pool};

use crate::store::StoreError;

pub struct Migration {
    pub version: i64,
    pub file: &'static str,
    pub sql: &'static str,
}

macro_rules! migration {
    ($version:expr, $backend:literal, $name:literal) => {
        Migration {
            version: $version,
            file: concat!("migrations/", $backend, "/", $name),
            sql: include_str!(concat!("../../../migrations/", $backend, "/", $name)),
        }
    };
}

const MYSQL: &[Migration] = &[
    migration!(1, "mysql", "0001_default_schema.sql"),
    migration!(2, "mysql", "0002_msgid_index.sql"),
    migration!(3, "mysql", "0003_fidelity_expiry_deliveries.sql"),
    migration!(4, "mysql", "0004_binary_collation.sql"),
    migration!(5, "mysql", "0005_mqtt_lengths.sql"),
];
const SQLITE: &[Migration] = &[
    migration!(1, "sqlite", "0001_default_schema.sql"),
    migration!(2, "sqlite", "0002_msgid_index.sql"),
    migration!(3, "sqlite", "0003_fidelity_expiry_deliveries.sql"),
];

pub fn for_backend(backend: &str) -> &'static [Migration] {
    if backend == "mysql" {
        MYSQL
    } else {
        SQLITE
    }
}

/// Tells which migration starts: its number among those to apply (from 1), how many, its file.
pub type OnMigration<'a> = &'a (dyn Fn(usize, usize, &'static str) + Sync);

/// Applies the migrations not yet recorded, in order; returns the files it applied.
pub async fn apply<DB>(
    pool: &Pool<DB>,
    migrations: &'static [Migration],
    on_start: OnMigration<'_>,
) -> Result<Vec<&'static str>, StoreError>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'t> i64: sqlx::Encode<'t, DB> + sqlx::Type<DB> + sqlx::Decode<'t, DB>,
    for<'t> &'t str: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
    for<'a> &'a str: sqlx::ColumnIndex<DB::Row>,
    usize: sqlx::ColumnIndex<DB::Row>,
    DB::Arguments: sqlx::IntoArguments<DB>,
{
    let err = |file| move |cause| StoreError::Migrate { file, cause };
    let mut conn = pool.acquire().await.map_err(err(TABLE))?;
    // Several brokers starting at once on one MySQL database (a cluster): one applies the
    // migrations, the others wait for it, then find them applied. The lock is the connection's.
    let locked = DB::NAME == "MySQL";
    if locked {
        let got: Option<i64> = sqlx::query_scalar("SELECT GET_LOCK(?, ?)")
            .bind(LOCK)
            .bind(LOCK_WAIT_S)
            .fetch_one(&mut *conn)
            .await
            .map_err(err(TABLE))?;
        if got != Some(1) {
            return Err(StoreError::MigrationLocked { lock: LOCK, waited_s: LOCK_WAIT_S });
        }
    }
    let result = apply_locked(&mut *conn, migrations, on_start).await;
    if locked {
        // A pooled connection would keep the lock: released whatever happened.
        let released =
            sqlx::query_scalar::<_, Option<i64>>("SELECT RELEASE_LOCK(?)").bind(LOCK).fetch_one(&mut *conn).await;
        if released.is_err() {
            conn.detach();
        }
    }
    result
}

/// Where the applied migrations are recorded.
const TABLE: &str = "offline_messages_schema";

/// The name of the lock that migrations take on MySQL (`GET_LOCK`), and how long a broker waits
/// for another that holds it.
const LOCK: &str = "mqtt_offline_messages.migrate";
const LOCK_WAIT_S: i64 = 120;

async fn apply_locked<DB>(
    conn: &mut DB::Connection,
    migrations: &'static [Migration],
    on_start: OnMigration<'_>,
) -> Result<Vec<&'static str>, StoreError>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'t> i64: sqlx::Encode<'t, DB> + sqlx::Type<DB> + sqlx::Decode<'t, DB>,
    for<'t> &'t str: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
    DB::Arguments: sqlx::IntoArguments<DB>,
{
    let err = |file| move |cause| StoreError::Migrate { file, cause };
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS offline_messages_schema (version BIGINT NOT NULL PRIMARY KEY, file VARCHAR(255) NOT NULL)",
    )
    .execute(&mut *conn)
    .await
    .map_err(err(TABLE))?;
    let applied: Vec<i64> = sqlx::query_scalar("SELECT version FROM offline_messages_schema")
        .fetch_all(&mut *conn)
        .await
        .map_err(err(TABLE))?;
    let mut done = Vec::new();
    let todo: Vec<&Migration> = migrations.iter().filter(|m| !applied.contains(&m.version)).collect();
    for (i, m) in todo.iter().enumerate() {
        on_start(i + 1, todo.len(), m.file);
        // DDL commits implicitly on MySQL, so each file runs on its own and is recorded after it.
        sqlx::raw_sql(m.sql).execute(&mut *conn).await.map_err(err(m.file))?;
        sqlx::query("INSERT INTO offline_messages_schema (version, file) VALUES (?, ?)")
            .bind(m.version)
            .bind(m.file)
            .execute(&mut *conn)
            .await
            .map_err(err(m.file))?;
        tracing::info!(file = m.file, "applied schema migration");
        done.push(m.file);
    }
    Ok(done)
}

/// The migrations not yet applied; `None` when the database has no record of any (it was not set
/// up by `init_default_schema` or `migrate`).
pub async fn pending<DB>(pool: &Pool<DB>, migrations: &'static [Migration]) -> Option<Vec<&'static str>>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'t> i64: sqlx::Type<DB> + sqlx::Decode<'t, DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
    DB::Arguments: sqlx::IntoArguments<DB>,
{
    let mut conn = pool.acquire().await.ok()?;
    let applied: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM offline_messages_schema").fetch_all(&mut *conn).await.ok()?;
    Some(migrations.iter().filter(|m| !applied.contains(&m.version)).map(|m| m.file).collect())
}
