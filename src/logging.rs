//! The binary's logs on stderr: `log.level` (or `RUST_LOG`) filters, `log.format` shapes them,
//! colour only on a terminal. SIGHUP can change the level of a running broker.

use std::io::IsTerminal;
use std::sync::Mutex;

use mqtt_offline_messages::config::{LogConfig, LogFormat};
use tracing_subscriber::layer::{Layered, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Layer, Registry};

type Filtered = Layered<reload::Layer<EnvFilter, Registry>, Registry>;

/// The installed subscriber's filter, to change it later.
pub struct Logging {
    handle: reload::Handle<EnvFilter, Registry>,
    /// `RUST_LOG` was set: it decides, not `log.level`.
    from_env: bool,
    /// The level in force, as written (`RUST_LOG`'s or `log.level`'s text).
    level: Mutex<String>,
}

/// A filter from `level`; the error names the key the text came from.
fn filter(level: &str, key: &str) -> Result<EnvFilter, String> {
    EnvFilter::try_new(level).map_err(|e| format!("{key}: {level:?} is not a log filter ({e}); write e.g. \"info\" or \"info,mqtt_offline_messages_engine=debug\""))
}

/// Installs the global subscriber; `default_level` applies when neither `RUST_LOG` nor
/// `log.level` says otherwise (`log` is `None` when the config could not be read).
pub fn init(log: Option<&LogConfig>, default_level: &str) -> Result<Logging, String> {
    let env = std::env::var("RUST_LOG").ok().filter(|v| !v.trim().is_empty());
    let (level, key) = match (&env, log.and_then(|l| l.level.as_deref())) {
        (Some(env), _) => (env.clone(), "RUST_LOG"),
        (None, Some(level)) => (level.to_owned(), "log.level"),
        (None, None) => (default_level.to_owned(), "the default log level"),
    };
    let (filter_layer, handle) = reload::Layer::new(filter(&level, key)?);
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let format: Box<dyn Layer<Filtered> + Send + Sync> = match log.map(|l| l.format).unwrap_or_default() {
        LogFormat::Text => fmt.with_ansi(std::io::stderr().is_terminal()).boxed(),
        LogFormat::Json => fmt.json().boxed(),
    };
    tracing_subscriber::registry().with(filter_layer).with(format).init();
    Ok(Logging { handle, from_env: env.is_some(), level: Mutex::new(level) })
}

impl Logging {
    /// Checks what a reload would set, without applying it: `Ok(None)` when nothing changes.
    pub fn prepare(&self, log: &LogConfig, default_level: &str) -> Result<Option<(String, EnvFilter)>, String> {
        if self.from_env {
            return Ok(None);
        }
        let level = log.level.as_deref().unwrap_or(default_level);
        if *self.level.lock().expect("log level lock") == level {
            return Ok(None);
        }
        Ok(Some((level.to_owned(), filter(level, "log.level")?)))
    }

    /// Applies what [`Logging::prepare`] made; returns the level it replaces.
    pub fn apply(&self, (level, filter): (String, EnvFilter)) -> String {
        if let Err(e) = self.handle.reload(filter) {
            tracing::error!(error = %e, "changing the log level failed");
        }
        std::mem::replace(&mut *self.level.lock().expect("log level lock"), level)
    }

    /// `RUST_LOG` decides the level, not `log.level`.
    pub fn from_env(&self) -> bool {
        self.from_env
    }
}
