//! `mqtt-offline-messages`: an rmqtt broker with the offline-messages plugin loaded.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::bail;
use clap::{Parser, Subcommand};
use mqtt_offline_messages::config::{Config, LogConfig};
use mqtt_offline_messages::engine::Engine;
use mqtt_offline_messages::{host, http};

mod logging;
mod tools;

/// What `run` logs unless `log.level` or `RUST_LOG` says otherwise.
const RUN_LOG_LEVEL: &str = "info,rmqtt=warn,rmqtt_retainer=warn";

#[derive(Parser)]
#[command(
    version,
    about = "An MQTT broker (rmqtt) that stores QoS 1/2 messages in MySQL or SQLite and replays them to subscribers"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run the broker with the plugin (the default).
    Run(RunArgs),
    /// Apply the schema migrations to the configured database and say what was applied.
    Migrate(ConfigArg),
    /// Check the config, the connection, every template and the tables' indexes; one line per
    /// check, exit 1 on any failure.
    CheckConfig(ConfigArg),
    /// Print stored messages matching a topic filter, oldest first.
    History(HistoryArgs),
    /// Read a password from stdin and print its hash for `auth.users[].password_hash`.
    HashPassword,
}

#[derive(clap::Args, Clone)]
struct ConfigArg {
    /// The config file.
    #[arg(long, default_value = "config.hocon")]
    config: PathBuf,
}

#[derive(clap::Args, Clone)]
struct HistoryArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// An MQTT topic filter; wildcards allowed.
    #[arg(long)]
    topic: String,
    /// From this time on: 2026-11-23T04:00:00Z, 2026-11-23, unix milliseconds, or an age (15m, 2h, 7d).
    #[arg(long)]
    since: Option<String>,
    /// Before this time (same forms as --since).
    #[arg(long)]
    until: Option<String>,
    /// Only messages published by this client id.
    #[arg(long)]
    sender: Option<String>,
    /// At most this many messages.
    #[arg(long)]
    limit: Option<u64>,
    /// `table` for people, `json` for one JSON object per line (for jq).
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
}

#[derive(clap::ValueEnum, Clone, Copy, PartialEq, Eq)]
enum Format {
    Table,
    Json,
}

#[derive(clap::Args, Clone)]
struct RunArgs {
    /// The config file.
    #[arg(long, default_value = "config.hocon")]
    config: PathBuf,
    /// The MQTT TCP listener, overriding broker.bind (default 127.0.0.1:1883).
    #[arg(long, value_name = "HOST:PORT")]
    bind: Option<SocketAddr>,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // The broker logs what it does; the tools print their results and log only trouble.
    let (config_path, is_run) = match &cli.command {
        Some(Command::HashPassword) => return hash_password(),
        None => (&cli.run.config, true),
        Some(Command::Run(args)) => (&args.config, true),
        Some(Command::Migrate(args) | Command::CheckConfig(args)) => (&args.config, false),
        Some(Command::History(args)) => (&args.config.config, false),
    };
    // Read here only for the logs' shape; the command reads (and reports on) the config itself.
    let log = Config::load(config_path).ok().map(|c| if is_run { c.log } else { LogConfig { level: None, ..c.log } });
    let logging = match logging::init(log.as_ref(), if is_run { RUN_LOG_LEVEL } else { "warn" }) {
        Ok(logging) => logging,
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a tokio runtime");
    let result = runtime.block_on(async {
        match cli.command {
            None => run(cli.run, logging).await,
            Some(Command::Run(args)) => run(args, logging).await,
            Some(Command::Migrate(args)) => tools::migrate(&load_config(&args.config)?).await,
            Some(Command::CheckConfig(args)) => {
                if tools::check_config(&args.config).await {
                    Ok(())
                } else {
                    bail!("check-config found problems (the FAIL lines above)")
                }
            }
            Some(Command::HashPassword) => unreachable!("handled before the runtime starts"),
            Some(Command::History(args)) => {
                let config = load_config(&args.config.config)?;
                let history = tools::HistoryArgs {
                    topic: args.topic,
                    since: args.since,
                    until: args.until,
                    sender: args.sender,
                    limit: args.limit,
                    json: args.format == Format::Json,
                };
                tools::history(&config, &history).await
            }
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The password is read from stdin (one line), never from the command line, where other users and
/// the shell history could see it.
fn hash_password() -> std::process::ExitCode {
    let mut line = String::new();
    if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        eprint!("password: ");
    }
    match std::io::stdin().read_line(&mut line) {
        Ok(_) if !line.trim_end_matches(['\n', '\r']).is_empty() => {
            println!("{}", mqtt_offline_messages::auth::hash_password(line.trim_end_matches(['\n', '\r'])));
            std::process::ExitCode::SUCCESS
        }
        _ => {
            eprintln!("error: no password on stdin; e.g. `read -rs PW && printf '%s\\n' \"$PW\" | mqtt-offline-messages hash-password`");
            std::process::ExitCode::FAILURE
        }
    }
}

fn load_config(path: &Path) -> anyhow::Result<Config> {
    if !path.exists() {
        bail!("no config file at {}; pass --config PATH (the repository ships config.hocon)", path.display());
    }
    let config = Config::load(path)?;
    for warning in config.warnings() {
        tracing::warn!("{warning}");
    }
    Ok(config)
}

async fn run(args: RunArgs, logging: logging::Logging) -> anyhow::Result<()> {
    let mut config = load_config(&args.config)?;
    let addr = args.bind.unwrap_or(config.broker.bind);

    // Bind first: a taken port is the most common start-up failure and needs no database.
    let broker = host::rmqtt::Broker::bind(&config, addr).await?;
    let metrics_listener = match config.metrics.bind {
        Some(addr) => Some(tokio::net::TcpListener::bind(addr).await.map_err(|e| {
            anyhow::anyhow!("cannot listen on {addr} for metrics: {e}; change metrics.bind in the config")
        })?),
        None => None,
    };
    if !config.auth.enabled() && !addr.ip().is_loopback() {
        tracing::warn!(%addr, "listening beyond localhost without authentication: anyone who reaches this address can publish and subscribe; configure auth.users");
    }
    let engine = Engine::start(&config).await?;
    if let Some(listener) = metrics_listener {
        tracing::info!(addr = %listener.local_addr()?, "metrics endpoint listening (/metrics, /health)");
        tokio::spawn(http::serve(listener, engine.clone()));
    }
    let shutdown_timeout = config.broker.shutdown_timeout;
    let stop = async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("a SIGTERM handler");
        let mut hup = signal(SignalKind::hangup()).expect("a SIGHUP handler");
        let signal = loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break "SIGINT",
                _ = term.recv() => break "SIGTERM",
                _ = hup.recv() => reload(&args.config, &mut config, &engine, &logging),
            }
        };
        tracing::info!(signal, "shutting down");
    };
    let served = broker.serve(engine.clone(), stop).await;
    engine.shutdown(shutdown_timeout).await;
    Ok(served?)
}

/// SIGHUP: applies what can change without dropping clients (`topics`, users and ACL rules,
/// `log.level`) and logs what changed; a file that does not load changes nothing.
fn reload(path: &Path, running: &mut Config, engine: &Engine, logging: &logging::Logging) {
    const KEPT: &str = "SIGHUP: the config is not reloaded; the running one stays";
    let new = match Config::load(path) {
        Ok(new) => new,
        Err(e) => return tracing::error!(error = %e, "{KEPT}"),
    };
    let level = match logging.prepare(&new.log, RUN_LOG_LEVEL) {
        Ok(level) => level,
        Err(e) => return tracing::error!(error = %e, "{KEPT}"),
    };
    let mut changes = match engine.reload(&new) {
        Ok(changes) => changes,
        Err(e) => return tracing::error!(error = %e, "{KEPT}"),
    };
    if let Some(level) = level {
        let to = level.0.clone();
        changes.push(format!("log.level: {to:?} (was {:?})", logging.apply(level)));
    }
    let restart = restart_only_changes(running, &new);
    if !restart.is_empty() {
        tracing::warn!(keys = ?restart, "SIGHUP: these changes apply at the next start, not now");
    }
    if logging.from_env() && new.log.level != running.log.level {
        tracing::warn!("SIGHUP: log.level is not applied: RUST_LOG is set and takes its place");
    }
    if changes.is_empty() {
        tracing::info!("SIGHUP: config reloaded; nothing that can change while running has changed");
    } else {
        tracing::info!(changes = ?changes, "SIGHUP: config reloaded");
    }
    running.backend.storage_mut().topics = new.backend.storage().topics.clone();
    running.auth = new.auth;
    running.log.level = new.log.level;
}

/// The blocks of `new` that differ from `running` in what only a restart applies.
fn restart_only_changes(running: &Config, new: &Config) -> Vec<&'static str> {
    // Debug text compares the blocks whole (a password prints as ***: a new one is not seen).
    let text = |c: &Config| {
        let mut backend = c.backend.clone();
        backend.storage_mut().topics.clear();
        [format!("{:?}", c.broker), format!("{:?}", backend), format!("{:?}", c.metrics), format!("{:?}", c.log.format)]
    };
    let names = ["broker", running.backend.name(), "metrics", "log.format"];
    let (old, new) = (text(running), text(new));
    names.into_iter().zip(old.iter().zip(&new)).filter(|(_, (a, b))| a != b).map(|(name, _)| name).collect()
}
