//! A database outage, said once: whichever part meets it first (start-up, the batch writer, the
//! subscription writer, a replay) logs one warning with everything that follows from it, and the
//! first to find the database back logs one line; the parts log their own steps at debug.

use std::fmt::Display;
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Debug, Default)]
pub struct OutageLog {
    down: AtomicBool,
}

impl OutageLog {
    /// The database could not be reached (`error` says how); logged if it is news.
    pub fn began(&self, error: &dyn Display) {
        if !self.down.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                error = %error,
                "the database cannot be reached; until it answers, writes go to the on-disk spool, subscription changes are kept in memory, replays are retried, and /health answers 503"
            );
        }
    }

    /// The database answered; logged if it was down.
    pub fn ended(&self) {
        if self.down.swap(false, Ordering::Relaxed) {
            tracing::info!("the database answers again");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_change_is_news_once() {
        let log = OutageLog::default();
        log.ended();
        assert!(!log.down.load(Ordering::Relaxed));
        log.began(&"refused");
        log.began(&"refused again");
        assert!(log.down.load(Ordering::Relaxed));
        log.ended();
        assert!(!log.down.load(Ordering::Relaxed));
    }
}
