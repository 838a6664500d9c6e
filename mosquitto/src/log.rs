//! Our `tracing` logs, in Mosquitto's log (`log_dest`, `log_type`).
//!
//! `mosquitto_log_printf` may publish the line on `$SYS/broker/log/...`, so only the broker thread
//! may call it: lines logged on the engine's threads wait here, bounded, until the broker thread
//! prints them (each tick, at the end of start-up and at cleanup).

use std::collections::VecDeque;
use std::ffi::{c_int, CString};
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

use crate::ffi;

/// Lines held for the broker thread at most; beyond, new lines are counted and dropped.
const MAX_LINES: usize = 10_000;

static LINES: Mutex<VecDeque<(c_int, String)>> = Mutex::new(VecDeque::new());
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Sends `tracing` events to Mosquitto's log, filtered by `RUST_LOG`, else by `level` (`log.level`),
/// else `info`. A second call (a second plugin instance) keeps the first subscriber.
pub fn install(level: Option<&str>) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level.unwrap_or("info")))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .without_time()
        .with_target(false)
        .with_writer(MosquittoLog)
        .try_init();
}

/// Prints the waiting lines. Broker thread only.
pub fn drain() {
    let dropped = DROPPED.swap(0, Ordering::Relaxed);
    if dropped > 0 {
        print(ffi::MOSQ_LOG_WARNING, &format!("{dropped} log lines were dropped (the broker thread fell behind)"));
    }
    loop {
        // Popped one at a time, the lock released before printing: printing may re-enter the plugin.
        let line = LINES.lock().map(|mut l| l.pop_front()).unwrap_or(None);
        match line {
            Some((level, text)) => print(level, &text),
            None => return,
        }
    }
}

/// Prints one line at once. Broker thread only.
pub fn print(level: c_int, text: &str) {
    let Ok(line) = CString::new(format!("offline-messages: {}", text.trim())) else { return };
    // SAFETY: called on the broker thread only (see the module doc); the format is a valid
    // NUL-terminated "%s" and its one argument a valid C string that outlives the call.
    unsafe { ffi::mosquitto_log_printf(level, c"%s".as_ptr(), line.as_ptr()) };
}

struct MosquittoLog;

impl<'a> MakeWriter<'a> for MosquittoLog {
    type Writer = LineWriter;

    fn make_writer(&'a self) -> LineWriter {
        LineWriter { level: ffi::MOSQ_LOG_INFO, text: Vec::new() }
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> LineWriter {
        let level = match *meta.level() {
            tracing::Level::ERROR => ffi::MOSQ_LOG_ERR,
            tracing::Level::WARN => ffi::MOSQ_LOG_WARNING,
            tracing::Level::INFO => ffi::MOSQ_LOG_INFO,
            _ => ffi::MOSQ_LOG_DEBUG,
        };
        LineWriter { level, text: Vec::new() }
    }
}

/// One formatted event; queued for the broker thread when dropped.
struct LineWriter {
    level: c_int,
    text: Vec<u8>,
}

impl io::Write for LineWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.text.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        if self.text.is_empty() {
            return;
        }
        let text = String::from_utf8_lossy(&self.text).into_owned();
        let Ok(mut lines) = LINES.lock() else { return };
        if lines.len() >= MAX_LINES {
            DROPPED.fetch_add(1, Ordering::Relaxed);
        } else {
            lines.push_back((self.level, text));
        }
    }
}
