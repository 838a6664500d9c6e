//! Start-up checks: the plugin's options, our config file (what applies under Mosquitto), and the
//! Mosquitto settings a whole replay depends on. Every error is one line that names the setting and
//! what to do; Mosquitto prints it and stops.

use std::path::{Path, PathBuf};

use mqtt_offline_messages_engine::config::{top_level_keys, Config, ConfigError, WriteMode};

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(
        "plugin_opt_config is not set: add `plugin_opt_config /path/to/config.hocon` after the `plugin` line in mosquitto.conf"
    )]
    NoConfig,
    #[error("plugin_opt_{0} is not an option of this plugin: the only one is plugin_opt_config")]
    UnknownOption(String),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(
        "{path}: the `{block}` block configures our own broker; under Mosquitto, Mosquitto's own settings apply \
         ({instead} in mosquitto.conf): remove the block"
    )]
    OwnBroker { path: String, block: String, instead: &'static str },
    #[error(
        "{path}: {backend}.write_mode = sync: under Mosquitto the broker thread cannot wait for a commit; remove the \
         key (async is the default)"
    )]
    SyncWrites { path: String, backend: &'static str },
    #[error(
        "mosquitto.conf{file}: {key} is {value}: Mosquitto drops what goes beyond a client's queue without telling \
         plugins, so a replay could lose messages; set `{key} 0` in mosquitto.conf"
    )]
    QueueLimit { file: String, key: &'static str, value: String },
    #[error(
        "mosquitto.conf{file}: per_listener_settings true: Mosquitto 2.0 then sends plugins no tick, which replays need; \
         remove it"
    )]
    PerListener { file: String },
    #[error(
        "mosquitto.conf{file}: no acl_file and no plugin after this one: Mosquitto 2.0 denies every publish and \
         subscribe that all plugins leave undecided, and this plugin decides none; add `acl_file` (for an open broker, \
         a file with the line `topic readwrite #`) or an auth plugin after this one"
    )]
    NoAcl { file: String },
    #[error(
        "mosquitto.conf{file}: the plugin {other} comes before this one: Mosquitto asks plugins in order, and one \
         that decides a subscribe hides it from this plugin; list this plugin first"
    )]
    NotFirst { file: String, other: String },
    #[error("metrics.bind = {addr}: cannot listen ({cause}); choose a free address or remove the key")]
    MetricsBind { addr: std::net::SocketAddr, cause: std::io::Error },
    #[error("cannot start the engine: {0}")]
    Engine(#[from] mqtt_offline_messages_engine::engine::EngineError),
    #[error("cannot start the engine's threads: {0}")]
    Threads(std::io::Error),
}

/// The path of `plugin_opt_config`.
pub fn config_path(options: &[(String, String)]) -> Result<PathBuf, SetupError> {
    let mut path = None;
    for (key, value) in options {
        match key.as_str() {
            "config" => path = Some(PathBuf::from(value)),
            other => return Err(SetupError::UnknownOption(other.to_owned())),
        }
    }
    path.ok_or(SetupError::NoConfig)
}

/// Reads our config file and refuses what cannot apply inside Mosquitto.
pub fn load(path: &Path) -> Result<Config, SetupError> {
    let config = Config::load(path)?;
    let shown = path.display().to_string();
    // Config::load read it already: a second read that fails now is as good as the first error.
    let text = std::fs::read_to_string(path).unwrap_or_default();
    for key in top_level_keys(&text).unwrap_or_default() {
        let instead = match key.as_str() {
            "broker" => "listener, max_packet_size",
            "auth" => "password_file, acl_file or an auth plugin",
            _ => continue,
        };
        return Err(SetupError::OwnBroker { path: shown, block: key, instead });
    }
    if config.backend.storage().write_mode == WriteMode::Sync {
        return Err(SetupError::SyncWrites { path: shown, backend: config.backend.name() });
    }
    Ok(config)
}

/// The name of this plugin's file: how its `plugin` line is recognised in mosquitto.conf.
const OUR_FILE: &str = "libmqtt_offline_messages_mosquitto.so";

/// Mosquitto's settings this plugin needs: no limit on a client's queue (`max_queued_messages 0`,
/// `max_queued_bytes 0`), ticks (`per_listener_settings false`), to see every subscribe first (its
/// `plugin` line before any other), and an ACL that decides what it defers (`acl_file`, or an auth
/// plugin after it).
/// Read from the file Mosquitto was started with (`-c`) and its `include_dir`, as Mosquitto reads
/// them: the last value wins.
pub fn check_mosquitto_conf() -> Result<(), SetupError> {
    let args = std::fs::read("/proc/self/cmdline").unwrap_or_default();
    let args: Vec<String> = args.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
    let file = args.iter().position(|a| a == "-c" || a == "--config-file").and_then(|i| args.get(i + 1));
    let (shown, lines) = match file {
        Some(file) => (format!(" ({file})"), conf_lines(Path::new(file))),
        None => (" (none: Mosquitto runs on its defaults)".to_owned(), Vec::new()),
    };
    check_conf_lines(&shown, &lines)
}

fn check_conf_lines(shown: &str, lines: &[String]) -> Result<(), SetupError> {
    let last = |key: &str| {
        lines.iter().rev().find_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some(key)).then(|| words.next().unwrap_or_default().to_owned())
        })
    };
    for (key, default) in [("max_queued_messages", "1000 (the default)"), ("max_queued_bytes", "0")] {
        let value = last(key).unwrap_or_else(|| default.to_owned());
        if value != "0" {
            return Err(SetupError::QueueLimit { file: shown.to_owned(), key, value });
        }
    }
    if last("per_listener_settings").as_deref() == Some("true") {
        return Err(SetupError::PerListener { file: shown.to_owned() });
    }
    let plugins: Vec<&str> = lines
        .iter()
        .filter_map(|l| match l.split_once(char::is_whitespace) {
            Some(("plugin" | "auth_plugin", path)) => Some(path.trim()),
            _ => None,
        })
        .collect();
    let ours = plugins.iter().position(|p| p.ends_with(OUR_FILE));
    if let Some(other) = plugins.iter().take(ours.unwrap_or(0)).next() {
        return Err(SetupError::NotFirst { file: shown.to_owned(), other: (*other).to_owned() });
    }
    let after_ours = ours.map_or(0, |i| plugins.len() - i - 1);
    if last("acl_file").is_none() && after_ours == 0 {
        return Err(SetupError::NoAcl { file: shown.to_owned() });
    }
    Ok(())
}

/// The lines of a mosquitto.conf with the `.conf` files of its `include_dir`s in their place
/// (Mosquitto reads those in name order).
fn conf_lines(file: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let mut lines = Vec::new();
    for line in text.lines().map(str::trim) {
        if let Some(dir) = line.strip_prefix("include_dir").map(str::trim) {
            let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
                .map(|d| d.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|e| e == "conf")).collect())
                .unwrap_or_default();
            files.sort();
            for f in files {
                lines.extend(std::fs::read_to_string(f).unwrap_or_default().lines().map(|l| l.trim().to_owned()));
            }
        } else {
            lines.push(line.to_owned());
        }
    }
    lines
}
