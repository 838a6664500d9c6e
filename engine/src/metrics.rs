//! What the plugin counts, and the Prometheus text a scrape gets. Counters only go up; gauges
//! are read when scraped. Host-independent: a host exposes the same numbers its own way.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Counters and histograms, shared by the engine, the writer and the store.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Publishes that matched `topics` and were queued for the writer.
    pub matched: AtomicU64,
    pub persisted: AtomicU64,
    /// Rows the database refused on their own.
    pub refused: AtomicU64,
    /// Payloads larger than MySQL's max_allowed_packet.
    pub too_large: AtomicU64,
    /// Messages written to the dead-letter file instead of the database.
    pub dead_lettered: AtomicU64,
    /// Operations written to the on-disk spool while the database was unavailable.
    pub spooled: AtomicU64,
    /// Operations the full spool refused (`spool_full = drop_newest`), or lost to a spool error.
    pub spool_dropped: AtomicU64,
    /// Bytes of the oldest operations removed from a full spool (`spool_full = drop_oldest`).
    pub spool_dropped_bytes: AtomicU64,
    /// Messages refused by the database whose dead-letter line could not be written either.
    pub dead_letter_failed: AtomicU64,
    /// Operations still queued when the shutdown's time (`broker.shutdown_timeout`) ran out.
    pub shutdown_lost: AtomicU64,
    /// Delivery records dropped because the writer's queue was full and as many waited already.
    pub delivery_records_dropped: AtomicU64,
    /// Subscription changes dropped from those kept during an outage (beyond 100,000).
    pub subscription_changes_dropped: AtomicU64,
    /// Live messages a full replay gate let through ahead of the rest of the replay.
    pub gate_passed: AtomicU64,
    /// Bytes waiting in the spool (a gauge).
    pub spool_bytes: AtomicU64,
    /// Batches written again after a transient error.
    pub retried_batches: AtomicU64,
    /// Inserts an ack cancelled before they were written.
    pub cancelled: AtomicU64,
    /// Rows deleted because a subscriber acknowledged them (`queue` mode).
    pub deleted_on_ack: AtomicU64,
    /// Who-has-had-what records written (`fanout` acks, QoS 0 deliveries).
    pub deliveries_recorded: AtomicU64,
    pub replays: AtomicU64,
    pub replayed_messages: AtomicU64,
    /// Replays that ended on a database error.
    pub replay_failures: AtomicU64,
    pub purged_expired: AtomicU64,
    /// Packets the broker refused for being larger than its limit (the client is disconnected).
    pub packets_too_large: AtomicU64,
    pub trimmed: AtomicU64,
    /// Argon2 password verifications (CONNECTs with a username and password, unknown users included).
    pub password_checks: AtomicU64,
    /// Rows (inserts, deletes and records) per committed transaction.
    pub batch_size: Histogram,
    /// Seconds per committed transaction, retries included.
    pub flush_seconds: Histogram,
}

/// A Prometheus histogram with fixed upper bounds.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// One count per bound, plus +Inf; not cumulative (made so when rendered).
    counts: Vec<AtomicU64>,
    /// The sum, in millionths of the unit.
    sum_micros: AtomicU64,
}

const SIZE_BOUNDS: &[f64] = &[1.0, 10.0, 100.0, 500.0, 1000.0, 5000.0, 10000.0];
const SECONDS_BOUNDS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, value: f64) {
        let i = self.bounds.iter().position(|b| value <= *b).unwrap_or(self.bounds.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add((value * 1e6) as u64, Ordering::Relaxed);
    }

    pub fn observe_duration(&self, d: Duration) {
        self.observe(d.as_secs_f64());
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (i, bound) in self.bounds.iter().enumerate() {
            cumulative += self.counts[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        cumulative += self.counts[self.bounds.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let _ = writeln!(out, "{name}_sum {}", self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6);
        let _ = writeln!(out, "{name}_count {cumulative}");
    }
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram::new(SIZE_BOUNDS)
    }
}

/// Values read at scrape time.
#[derive(Debug, Default, Clone, Copy)]
pub struct Gauges {
    /// Operations waiting in the writer's queue.
    pub writer_queue: usize,
    /// Subscription changes waiting in their queue.
    pub subscription_queue: usize,
    /// Database connections in use, and open, over both pools.
    pub pool_in_use: u32,
    pub pool_open: u32,
}

impl Metrics {
    pub fn new() -> Self {
        Metrics { flush_seconds: Histogram::new(SECONDS_BOUNDS), ..Metrics::default() }
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn set(gauge: &AtomicU64, n: u64) {
        gauge.store(n, Ordering::Relaxed);
    }

    /// The Prometheus text exposition (version 0.0.4).
    pub fn render(&self, gauges: Gauges) -> String {
        let mut out = String::new();
        let counter = |out: &mut String, name: &str, help: &str, v: &AtomicU64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}", v.load(Ordering::Relaxed));
        };
        counter(
            &mut out,
            "offline_messages_matched_total",
            "Publishes that matched `topics` and were queued for storage.",
            &self.matched,
        );
        counter(&mut out, "offline_messages_persisted_total", "Messages written to the database.", &self.persisted);
        let _ = writeln!(
            out,
            "# HELP offline_messages_failed_total Messages not stored, by reason.\n# TYPE offline_messages_failed_total counter"
        );
        for (reason, v) in [("refused", &self.refused), ("too_large", &self.too_large)] {
            let _ = writeln!(out, "offline_messages_failed_total{{reason=\"{reason}\"}} {}", v.load(Ordering::Relaxed));
        }
        counter(
            &mut out,
            "offline_messages_dead_lettered_total",
            "Messages written to the dead-letter file.",
            &self.dead_lettered,
        );
        counter(
            &mut out,
            "offline_messages_spooled_total",
            "Operations written to the spool while the database was unavailable.",
            &self.spooled,
        );
        counter(
            &mut out,
            "offline_messages_spool_dropped_total",
            "Operations dropped because the spool was full.",
            &self.spool_dropped,
        );
        let _ = writeln!(
            out,
            "# HELP offline_messages_dropped_total Operations lost, by reason (spool_full: spool_full = drop_newest; dead_letter_failed: a refused row the dead-letter file did not take; shutdown_timeout: still queued when broker.shutdown_timeout ran out; delivery_record: a QoS 0 delivery or fanout ack not recorded, the writer's queue being full, so that client may get the message again; subscription_change: the oldest of the subscription changes kept during an outage, beyond 100,000).\n# TYPE offline_messages_dropped_total counter"
        );
        for (reason, v) in [
            ("spool_full", &self.spool_dropped),
            ("dead_letter_failed", &self.dead_letter_failed),
            ("shutdown_timeout", &self.shutdown_lost),
            ("delivery_record", &self.delivery_records_dropped),
            ("subscription_change", &self.subscription_changes_dropped),
        ] {
            let _ =
                writeln!(out, "offline_messages_dropped_total{{reason=\"{reason}\"}} {}", v.load(Ordering::Relaxed));
        }
        counter(
            &mut out,
            "offline_messages_spool_dropped_bytes_total",
            "Bytes of old operations removed from a full spool.",
            &self.spool_dropped_bytes,
        );
        counter(
            &mut out,
            "offline_messages_retried_batches_total",
            "Batches written again after a transient database error.",
            &self.retried_batches,
        );
        counter(
            &mut out,
            "offline_messages_cancelled_total",
            "Inserts an acknowledgement made unnecessary before they were written.",
            &self.cancelled,
        );
        counter(
            &mut out,
            "offline_messages_deleted_on_ack_total",
            "Rows deleted because a subscriber acknowledged them (queue mode).",
            &self.deleted_on_ack,
        );
        counter(
            &mut out,
            "offline_messages_deliveries_recorded_total",
            "Records that a client has had a message (fanout acks, QoS 0 deliveries).",
            &self.deliveries_recorded,
        );
        counter(&mut out, "offline_messages_replays_total", "Replays started.", &self.replays);
        counter(
            &mut out,
            "offline_messages_replayed_total",
            "Stored messages delivered by replays.",
            &self.replayed_messages,
        );
        counter(
            &mut out,
            "offline_messages_replay_failures_total",
            "Replays ended by a database error.",
            &self.replay_failures,
        );
        counter(&mut out, "offline_messages_purged_total", "Expired rows purged.", &self.purged_expired);
        counter(
            &mut out,
            "offline_messages_packets_too_large_total",
            "Packets refused for being larger than the broker's maximum packet size; the client was disconnected.",
            &self.packets_too_large,
        );
        counter(
            &mut out,
            "offline_messages_trimmed_total",
            "Rows dropped beyond max_messages_per_topic.",
            &self.trimmed,
        );
        counter(
            &mut out,
            "offline_messages_gate_passed_total",
            "Live messages delivered ahead of the rest of a replay because its gate held its limit in bytes.",
            &self.gate_passed,
        );
        counter(
            &mut out,
            "offline_messages_password_checks_total",
            "Password hashes verified for CONNECTs (unknown usernames included: they cost the same).",
            &self.password_checks,
        );
        self.batch_size.render(&mut out, "offline_messages_batch_rows", "Rows per committed transaction.");
        self.flush_seconds.render(
            &mut out,
            "offline_messages_flush_seconds",
            "Time to commit a batch, retries included.",
        );
        let gauge = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        gauge(
            &mut out,
            "offline_messages_spool_bytes",
            "Bytes waiting in the spool.",
            self.spool_bytes.load(Ordering::Relaxed),
        );
        gauge(
            &mut out,
            "offline_messages_writer_queue",
            "Operations waiting in the writer's queue.",
            gauges.writer_queue as u64,
        );
        gauge(
            &mut out,
            "offline_messages_subscription_queue",
            "Subscription changes waiting to be written.",
            gauges.subscription_queue as u64,
        );
        gauge(
            &mut out,
            "offline_messages_db_connections_in_use",
            "Database connections in use.",
            u64::from(gauges.pool_in_use),
        );
        gauge(
            &mut out,
            "offline_messages_db_connections_open",
            "Database connections open.",
            u64::from(gauges.pool_open),
        );
        out
    }
}

/// The samples of Prometheus text as one JSON object, `"name{labels}": value`.
pub fn samples_json(text: &str) -> serde_json::Value {
    let map = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter_map(|(name, value)| Some((name.to_owned(), serde_json::from_str::<serde_json::Value>(value).ok()?)))
        .collect();
    serde_json::Value::Object(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_json_form_has_every_sample() {
        let m = Metrics::new();
        Metrics::add(&m.persisted, 3);
        m.flush_seconds.observe(0.002);
        let text = m.render(Gauges { writer_queue: 7, pool_in_use: 1, pool_open: 2, ..Gauges::default() });
        let json = samples_json(&text);
        let samples = text.lines().filter(|l| !l.starts_with('#')).count();
        assert_eq!(json.as_object().unwrap().len(), samples, "{json}");
        assert_eq!(json["offline_messages_persisted_total"], 3);
        assert_eq!(json["offline_messages_writer_queue"], 7);
        assert_eq!(json["offline_messages_flush_seconds_bucket{le=\"0.0025\"}"], 1);
        assert_eq!(json["offline_messages_dropped_total{reason=\"spool_full\"}"], 0);
    }

    #[test]
    fn histograms_are_cumulative_with_sum_and_count() {
        let h = Histogram::new(&[1.0, 10.0]);
        for v in [0.5, 3.0, 7.0, 50.0] {
            h.observe(v);
        }
        let mut out = String::new();
        h.render(&mut out, "x", "help");
        assert!(out.contains("x_bucket{le=\"1\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"10\"} 3\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"+Inf\"} 4\n"), "{out}");
        assert!(out.contains("x_sum 60.5\n") && out.contains("x_count 4\n"), "{out}");
    }

    #[test]
    fn every_counter_is_typed_and_named_by_convention() {
        let m = Metrics::new();
        Metrics::add(&m.persisted, 3);
        let text = m.render(Gauges::default());
        assert!(text.contains("offline_messages_persisted_total 3\n"));
        for name in [
            "dead_lettered_total",
            "spooled_total",
            "spool_dropped_total",
            "spool_bytes",
            "failed_total{reason=\"too_large\"}",
            "dropped_total{reason=\"spool_full\"}",
            "dropped_total{reason=\"dead_letter_failed\"}",
            "dropped_total{reason=\"shutdown_timeout\"}",
        ] {
            assert!(text.contains(&format!("\noffline_messages_{name} ")), "{name} is exported");
        }
        for line in text.lines().filter(|l| l.starts_with("# TYPE")) {
            let parts: Vec<&str> = line.split(' ').collect();
            assert!(parts[2].starts_with("offline_messages_"), "{line}");
            assert_eq!(parts[3] == "counter", parts[2].ends_with("_total"), "{line}");
        }
    }
}
