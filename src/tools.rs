//! The operator's subcommands: `migrate`, `check-config`, `history`. They print to stdout (results)
//! and stderr (progress, notes). Part of the binary, not of the library, like `main`.

use std::io::{IsTerminal, Write};
use std::path::Path;

use futures_util::StreamExt;

use mqtt_offline_messages::config::{Backend, Config, DeliveryMode};
use mqtt_offline_messages::encode::{base64, iso_time};
use mqtt_offline_messages::store::redis::{RedisHistoryQuery, RedisStore};
use mqtt_offline_messages::store::{Admin, HistoryQuery, HistoryRow, Statements, Store};
use mqtt_offline_messages::topic::TopicFilter;

/// `migrate`: applies the schema migrations and says what it applied.
pub async fn migrate(config: &Config) -> anyhow::Result<()> {
    if let Backend::Redis(_) = &config.backend {
        println!("redis keeps no schema: nothing to migrate (its keys are made as messages are stored)");
        return Ok(());
    }
    let admin = Admin::connect(&config.backend).await?;
    // Which migration runs since when, drawn as each starts and every half second while it runs,
    // so that a long one (an index on a large table) shows it is still going.
    type Current = Option<(usize, usize, &'static str, std::time::Instant)>;
    let state: std::sync::Mutex<(Progress, Current)> = std::sync::Mutex::new((Progress::new(), None));
    let draw = |(progress, current): &mut (Progress, Current)| {
        if let Some((i, n, file, since)) = *current {
            let bar: String = (1..=n)
                .map(|k| {
                    if k < i {
                        '#'
                    } else if k == i {
                        '>'
                    } else {
                        '.'
                    }
                })
                .collect();
            progress.show(&format!("[{bar}] migration {i}/{n}: {file} ({}s)", since.elapsed().as_secs()));
        }
    };
    let on_start = |i, n, file| {
        let mut state = state.lock().expect("progress lock");
        state.1 = Some((i, n, file, std::time::Instant::now()));
        draw(&mut state);
    };
    let run = admin.migrate(&on_start);
    tokio::pin!(run);
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(500));
    let applied = loop {
        tokio::select! {
            result = &mut run => break result?,
            _ = tick.tick() => draw(&mut state.lock().expect("progress lock")),
        }
    };
    state.lock().expect("progress lock").0.done();
    if applied.is_empty() {
        println!("schema up to date: nothing to apply");
    }
    for file in applied {
        println!("applied {file}");
    }
    Ok(())
}

/// `check-config`: one line per check (`ok`, `FAIL`, or `skip`), true when none failed.
pub async fn check_config(path: &Path) -> bool {
    let mut failed = false;
    let mut line = |ok: Option<bool>, what: &str, detail: &str| {
        let tag = match ok {
            Some(true) => "ok  ",
            Some(false) => "FAIL",
            None => "skip",
        };
        failed |= ok == Some(false);
        println!("{tag} {what}{}{detail}", if detail.is_empty() { "" } else { ": " });
    };
    let config = match Config::load(path) {
        Ok(c) => {
            line(Some(true), "config", &path.display().to_string());
            c
        }
        Err(e) => {
            line(Some(false), "config", &e.to_string());
            return false;
        }
    };
    for warning in config.warnings() {
        line(None, "warning", &warning);
    }
    let backend = &config.backend;
    let storage = backend.storage();
    for filter in &storage.topics {
        if let Err(e) = TopicFilter::parse(filter) {
            line(Some(false), &format!("{}.topics", backend.name()), &format!("{filter:?}: {e}"));
        }
    }
    if let Backend::Redis(cfg) = backend {
        match RedisStore::connect(cfg).await {
            Ok(store) => match store.check().await {
                Ok(()) => line(Some(true), "connect", &target(backend)),
                Err(e) => line(Some(false), "connect", &e.to_string()),
            },
            Err(e) => line(Some(false), "connect", &e.to_string()),
        }
    } else {
        check_sql(backend, &mut line).await;
    }
    for (key, dir) in [
        ("dead_letter_file", storage.dead_letter_file.parent().filter(|d| !d.as_os_str().is_empty())),
        ("spool_dir", Some(storage.spool_dir.as_path())),
    ] {
        let dir = dir.unwrap_or(std::path::Path::new("."));
        match writable(dir) {
            Ok(()) => line(Some(true), &format!("{}.{key}", backend.name()), &format!("{} is writable", dir.display())),
            Err(e) => line(
                Some(false),
                &format!("{}.{key}", backend.name()),
                &format!(
                    "{} is not writable ({e}); point {}.{key} at a directory the broker may write",
                    dir.display(),
                    backend.name()
                ),
            ),
        }
    }
    !failed
}

/// The SQL backends' checks: templates, connection, schema, indexes, keys.
async fn check_sql(backend: &Backend, line: &mut impl FnMut(Option<bool>, &str, &str)) {
    let storage = backend.storage();
    let statements = match Statements::parse(backend.name(), &storage.templates) {
        Ok(s) => Some(s),
        Err(e) => {
            line(Some(false), "templates", &e.to_string());
            None
        }
    };
    let admin = match Admin::connect(backend).await {
        Ok(a) => {
            line(Some(true), "connect", &target(backend));
            a
        }
        Err(e) => {
            line(Some(false), "connect", &e.to_string());
            return;
        }
    };
    match admin.pending_migrations().await {
        Some(p) if p.is_empty() => line(Some(true), "schema", "every migration applied"),
        Some(p) => line(
            Some(false),
            "schema",
            &format!("not applied: {}; run `migrate` or set init_default_schema = true", p.join(", ")),
        ),
        None if storage.init_default_schema => {
            line(None, "schema", "not created yet; init_default_schema creates it at start-up")
        }
        None => line(None, "schema", "no migration record (tables made by hand); the templates are checked below"),
    }
    if let Some(statements) = &statements {
        for t in statements.all() {
            match admin.prepare(t).await {
                Ok(()) => line(Some(true), t.key(), "prepared"),
                Err(e) => line(Some(false), t.key(), &e.to_string()),
            }
        }
    }
    // The default tables' indexes: the replay's prefix reads, the acks' deletes, the purge.
    let uses_default_table = storage.templates.select_message_sql.contains("mqtt_msg");
    match admin.indexes("mqtt_msg").await {
        Ok(found) if uses_default_table => {
            for index in ["topic_index", "msgid_unique", "expiry_index"] {
                let ok = found.iter().any(|f| f == index);
                line(
                    Some(ok),
                    &format!("index mqtt_msg.{index}"),
                    if ok { "exists" } else { "missing; run `migrate`" },
                );
            }
        }
        Ok(_) => line(None, "indexes", "select_message_sql does not read mqtt_msg"),
        Err(e) => line(Some(false), "indexes", &e.to_string()),
    }
    // The default subscription upsert and delivery insert-ignore keep one row per key only with it.
    let keyed = [
        ("mqtt_sub", &storage.templates.insert_subscription_sql, "insert_subscription_sql"),
        ("mqtt_delivered", &storage.templates.insert_delivery_sql, "insert_delivery_sql"),
    ];
    for (table, sql, key) in keyed {
        if !sql.contains(table) {
            continue;
        }
        match admin.has_unique_key(table).await {
            Ok(true) => line(Some(true), &format!("unique key {table}"), "exists"),
            Ok(false) => line(
                Some(false),
                &format!("unique key {table}"),
                &format!("missing: {key} would store duplicates; run `migrate`, or add a primary or unique key"),
            ),
            Err(e) => line(Some(false), &format!("unique key {table}"), &e.to_string()),
        }
    }
}

/// Creates `dir` if needed and a file in it, then removes the file.
fn writable(dir: &std::path::Path) -> std::io::Result<()> {
    mqtt_offline_messages::private_files::create_dir_all(dir)?;
    let probe = dir.join(format!(".check-config-{}", std::process::id()));
    std::fs::File::create(&probe)?;
    std::fs::remove_file(probe)
}

fn target(backend: &Backend) -> String {
    match backend {
        Backend::MySql(m) => format!("mysql at {} (database {})", m.servers.join(","), m.database),
        Backend::Sqlite(s) => format!("sqlite at {}", s.path.display()),
        Backend::Redis(r) => format!("redis ({:?}) at {}", r.redis_type, r.servers.join(",")).to_lowercase(),
    }
}

/// `history`'s options.
pub struct HistoryArgs {
    pub topic: String,
    pub since: Option<String>,
    pub until: Option<String>,
    pub sender: Option<String>,
    pub limit: Option<u64>,
    pub json: bool,
}

/// Rows per query: the output streams, page after page.
const HISTORY_PAGE: i64 = 1000;

/// `history`: stored messages matching a filter, oldest first, as a table or JSON lines.
pub async fn history(config: &Config, args: &HistoryArgs) -> anyhow::Result<()> {
    let filter = TopicFilter::parse(&args.topic).map_err(|e| anyhow::anyhow!("--topic {:?}: {e}", args.topic))?;
    let now = mqtt_offline_messages::engine::now_ms();
    let since =
        args.since.as_deref().map(|s| parse_time(s, now).map_err(|e| anyhow::anyhow!("--since: {e}"))).transpose()?;
    let until =
        args.until.as_deref().map(|s| parse_time(s, now).map_err(|e| anyhow::anyhow!("--until: {e}"))).transpose()?;
    if config.backend.storage().delivery_mode == DeliveryMode::Queue {
        eprintln!("note: delivery_mode = queue: only what no subscriber has acknowledged yet is stored");
    }
    let mut out = HistoryOutput::new(args)?;
    if let Backend::Redis(cfg) = &config.backend {
        let store = RedisStore::connect(cfg).await?;
        let query = RedisHistoryQuery { filter, since_ms: since, until_ms: until, sender: args.sender.clone() };
        let mut rows = store.history(query);
        while let Some(row) = rows.next().await {
            if !out.print(&row?)? {
                break;
            }
        }
        return out.done();
    }
    let admin = Admin::connect(&config.backend).await?;
    let mut after_id = 0;
    'pages: loop {
        let query = HistoryQuery {
            topic_like: filter.like_pattern(),
            after_id,
            since_ms: since,
            until_ms: until,
            sender: args.sender.clone(),
            limit: HISTORY_PAGE,
        };
        let mut rows = admin.history(&query);
        let mut read = 0;
        while let Some(row) = rows.next().await {
            let row = row?;
            read += 1;
            after_id = row.id.unwrap_or(after_id);
            if filter.matches(&row.topic) && !out.print(&row)? {
                break 'pages;
            }
        }
        if read < HISTORY_PAGE {
            break;
        }
    }
    out.done()
}

/// Where `history` prints: the rows as a table or JSON lines up to `--limit`, the count on the
/// progress line.
struct HistoryOutput {
    out: std::io::BufWriter<std::io::StdoutLock<'static>>,
    json: bool,
    shown: u64,
    limit: u64,
    progress: Progress,
}

impl HistoryOutput {
    fn new(args: &HistoryArgs) -> anyhow::Result<HistoryOutput> {
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        if !args.json {
            writeln!(out, "{:<24} {:<20} {:>3} {:<30} payload", "arrived (UTC)", "sender", "qos", "topic")?;
        }
        Ok(HistoryOutput {
            out,
            json: args.json,
            shown: 0,
            limit: args.limit.unwrap_or(u64::MAX),
            progress: Progress::new(),
        })
    }

    /// Prints `row`; false, printing nothing, once `--limit` rows are out.
    fn print(&mut self, row: &HistoryRow) -> anyhow::Result<bool> {
        if self.shown == self.limit {
            return Ok(false);
        }
        let line = if self.json { json_line(row) } else { table_line(row) };
        writeln!(self.out, "{line}")?;
        self.shown += 1;
        if self.shown.is_multiple_of(HISTORY_PAGE as u64) {
            self.progress.show(&format!("{} messages", self.shown));
        }
        Ok(true)
    }

    fn done(mut self) -> anyhow::Result<()> {
        self.out.flush()?;
        self.progress.done();
        Ok(())
    }
}

fn table_line(r: &HistoryRow) -> String {
    let payload = match std::str::from_utf8(&r.payload) {
        Ok(text) => text.replace(['\n', '\r'], " "),
        Err(_) => format!("base64:{}", base64(&r.payload)),
    };
    format!("{:<24} {:<20} {:>3} {:<30} {payload}", iso_time(r.arrived_ms), r.sender, r.qos, r.topic)
}

fn json_line(r: &HistoryRow) -> String {
    let (payload, encoding) = match std::str::from_utf8(&r.payload) {
        Ok(text) => (text.to_owned(), "utf8"),
        Err(_) => (base64(&r.payload), "base64"),
    };
    serde_json::json!({
        "id": r.id,
        "msgid": r.msgid,
        "topic": r.topic,
        "sender": r.sender,
        "qos": r.qos,
        "retain": r.retain,
        "arrived": iso_time(r.arrived_ms),
        "arrived_ms": r.arrived_ms,
        "expiry_ms": r.expiry_ms,
        "payload": payload,
        "payload_encoding": encoding,
        "properties": r.properties,
    })
    .to_string()
}

/// A progress line on stderr, redrawn in place; nothing when stderr is not a terminal.
struct Progress {
    on: bool,
    shown: bool,
}

impl Progress {
    fn new() -> Self {
        Progress { on: std::io::stderr().is_terminal(), shown: false }
    }

    fn show(&mut self, text: &str) {
        if self.on {
            eprint!("\r\x1b[2K{text}");
            self.shown = true;
        }
    }

    fn done(&mut self) {
        if self.shown {
            eprintln!();
            self.shown = false;
        }
    }
}

/// A time given on the command line, as unix milliseconds: RFC 3339 (`2026-11-23T04:00:00Z`,
/// `2026-11-23T06:00:00+02:00`, `2026-11-23 04:00:00` as UTC), a date (`2026-11-23`, midnight
/// UTC), unix milliseconds, or an age (`90s`, `15m`, `2h`, `7d`: that long before `now_ms`).
pub fn parse_time(text: &str, now_ms: i64) -> Result<i64, String> {
    let t = text.trim();
    let bad = || {
        format!(
            "{text:?} is not a time: write 2026-11-23T04:00:00Z, 2026-11-23, unix milliseconds, or an age such as 15m"
        )
    };
    if let Ok(ms) = t.parse::<i64>() {
        return Ok(ms);
    }
    if let Some(unit) = t.chars().last().filter(|c| "smhd".contains(*c)) {
        if let Ok(n) = t[..t.len() - 1].parse::<i64>() {
            let ms = n * match unit {
                's' => 1000,
                'm' => 60_000,
                'h' => 3_600_000,
                _ => 86_400_000,
            };
            return Ok(now_ms - ms);
        }
    }
    let num = |s: &str| s.parse::<i64>().map_err(|_| bad());
    let (date, rest) = t.split_at(t.len().min(10));
    let parts: Vec<&str> = date.split('-').collect();
    if parts.len() != 3 || parts[0].len() != 4 {
        return Err(bad());
    }
    let days = days_from_civil(num(parts[0])?, num(parts[1])?, num(parts[2])?).ok_or_else(bad)?;
    let mut ms = days * 86_400_000;
    if rest.is_empty() {
        return Ok(ms);
    }
    let rest = rest.strip_prefix(['T', 't', ' ']).ok_or_else(bad)?;
    let (clock, offset_ms) = match rest.find(['Z', 'z', '+', '-']) {
        Some(i) => {
            let zone = &rest[i..];
            let offset = if zone.eq_ignore_ascii_case("z") {
                0
            } else {
                let sign = if zone.starts_with('-') { -1 } else { 1 };
                let (h, m) = zone[1..].split_once(':').ok_or_else(bad)?;
                sign * (num(h)? * 3_600_000 + num(m)? * 60_000)
            };
            (&rest[..i], offset)
        }
        None => (rest, 0),
    };
    let fields: Vec<&str> = clock.split(':').collect();
    if fields.len() < 2 || fields.len() > 3 {
        return Err(bad());
    }
    let (h, m) = (num(fields[0])?, num(fields[1])?);
    let seconds: f64 = fields.get(2).map_or(Ok(0.0), |s| s.parse().map_err(|_| bad()))?;
    if !(0..24).contains(&h) || !(0..60).contains(&m) || !(0.0..61.0).contains(&seconds) {
        return Err(bad());
    }
    ms += h * 3_600_000 + m * 60_000 + (seconds * 1000.0).round() as i64;
    Ok(ms - offset_ms)
}

/// Days since 1970-01-01 of a proleptic Gregorian date; `None` for a date that does not exist.
fn days_from_civil(y: i64, m: i64, d: i64) -> Option<i64> {
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let month_days = [31, if leap { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    if !(1..=12).contains(&m) || d < 1 || d > month_days[(m - 1) as usize] {
        return None;
    }
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some(era * 146_097 + doe - 719_468)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_time_round_trips() {
        for ms in [0, 951_868_800_500, 1_795_404_901_725, -86_400_001] {
            assert_eq!(parse_time(&iso_time(ms), 0), Ok(ms), "{}", iso_time(ms));
        }
    }

    #[test]
    fn times_in_every_accepted_form() {
        let now = 1_795_400_000_000;
        assert_eq!(parse_time("1795400000000", now), Ok(1_795_400_000_000));
        assert_eq!(parse_time("15m", now), Ok(now - 900_000));
        assert_eq!(parse_time("1970-01-02", now), Ok(86_400_000));
        assert_eq!(parse_time("2000-03-01T00:00:00Z", now), Ok(951_868_800_000));
        assert_eq!(parse_time("2000-03-01T02:00:00+02:00", now), Ok(951_868_800_000));
        assert_eq!(parse_time("2000-02-29 23:00:00.5-01:00", now), Ok(951_868_800_500));
        assert!(parse_time("2001-02-29", now).is_err(), "no such day");
        assert!(parse_time("yesterday", now).unwrap_err().contains("yesterday"));
        assert!(parse_time("2000-03-01T25:00Z", now).is_err());
    }
}
