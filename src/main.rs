//! `mqtt-offline-messages`: an rmqtt broker with the offline-messages plugin loaded.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::bail;
use clap::{Parser, Subcommand};
use mqtt_offline_messages::config::Config;
use mqtt_offline_messages::engine::Engine;
use mqtt_offline_messages::{host, http};

mod tools;

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
    let default_filter = match cli.command {
        None | Some(Command::Run(_)) => "info,rmqtt=warn,rmqtt_retainer=warn",
        Some(_) => "warn",
    };
    if matches!(cli.command, Some(Command::HashPassword)) {
        return hash_password();
    }
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| default_filter.into()),
        )
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a tokio runtime");
    let result = runtime.block_on(async {
        match cli.command {
            None => run(cli.run).await,
            Some(Command::Run(args)) => run(args).await,
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

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let config = load_config(&args.config)?;
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
    tracing::info!(%addr, "MQTT broker listening");
    let stop = async { tracing::info!(signal = shutdown_signal().await, "shutting down") };
    let served = broker.serve(engine.clone(), stop).await;
    engine.shutdown(config.broker.shutdown_timeout).await;
    Ok(served?)
}

async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    }
}
