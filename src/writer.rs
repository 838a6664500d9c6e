//! The batch writer: one task that turns queued inserts, ack-deletes and delivery records into
//! batched transactions.
//!
//! Operations are applied in the order they were queued, so a delete never overtakes the insert it
//! cancels, and batches commit in the order they were filled (the table's auto-increment id is then
//! publish order for each publisher). An ack that arrives while its insert is still queued cancels
//! both: the row is never written.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, oneshot};
use tokio::time::{sleep, timeout_at, Instant};

use crate::encode::{base64, iso_time};
use crate::message::{DeliveryRecord, Message};
use crate::metrics::Metrics;
use crate::store::{AckedMessage, Batch, Store, StoreError};

enum Op {
    Insert(Message),
    Delete(AckedMessage),
    Delivered(DeliveryRecord),
    Flush(oneshot::Sender<()>),
}

/// Batching limits, from the backend block's `batch_size` and `batch_time`.
#[derive(Clone, Copy, Debug)]
pub struct BatchLimits {
    pub batch_size: usize,
    pub batch_time: Duration,
    /// Operations queued before `insert` waits for the writer (back-pressure on publishers).
    pub queue_capacity: usize,
}

/// The handle the engine queues work through; cheap to clone.
#[derive(Clone)]
pub struct BatchWriter {
    tx: mpsc::Sender<Op>,
}

impl BatchWriter {
    /// Starts the writer task. It ends when every handle is dropped, after writing what it holds.
    pub fn spawn(
        store: Arc<Store>,
        limits: BatchLimits,
        metrics: Arc<Metrics>,
        dead_letters: DeadLetters,
    ) -> BatchWriter {
        let (tx, rx) = mpsc::channel(limits.queue_capacity.max(1));
        let task = WriterTask { store, limits, metrics, dead_letters };
        tokio::spawn(task.run(rx));
        BatchWriter { tx }
    }

    /// Queues a message; waits only while the queue is full.
    pub async fn insert(&self, m: Message) {
        self.send(Op::Insert(m)).await
    }

    /// Queues the delete of an acknowledged message.
    pub async fn delete(&self, a: AckedMessage) {
        self.send(Op::Delete(a)).await
    }

    /// Queues the record that a client has had a message.
    pub async fn delivered(&self, d: DeliveryRecord) {
        self.send(Op::Delivered(d)).await
    }

    /// Returns once everything queued before this call is committed (or given up on).
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        self.send(Op::Flush(done)).await;
        let _ = wait.await;
    }

    /// Operations waiting in the queue.
    pub fn queued(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    async fn send(&self, op: Op) {
        if self.tx.send(op).await.is_err() {
            tracing::error!("the batch writer has stopped; an operation was not queued");
        }
    }
}

struct WriterTask {
    store: Arc<Store>,
    limits: BatchLimits,
    metrics: Arc<Metrics>,
    dead_letters: DeadLetters,
}

impl WriterTask {
    async fn run(self, mut rx: mpsc::Receiver<Op>) {
        let is_insert = |o: &Op| matches!(o, Op::Insert(_));
        let mut ops = Vec::with_capacity(self.limits.batch_size);
        while let Some(first) = rx.recv().await {
            // Fill the batch until it is full, `batch_time` has passed, or someone waits on a flush
            // (what was queued after the flush may ride along: a flush only needs what came before).
            let deadline = Instant::now() + self.limits.batch_time;
            let mut inserts = usize::from(is_insert(&first));
            let mut flush = matches!(first, Op::Flush(_));
            ops.push(first);
            while !flush && inserts < self.limits.batch_size {
                let before = ops.len();
                match timeout_at(deadline, rx.recv_many(&mut ops, self.limits.batch_size - inserts)).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        inserts += ops[before..].iter().filter(|o| is_insert(o)).count();
                        flush = ops[before..].iter().any(|o| matches!(o, Op::Flush(_)));
                    }
                }
            }
            self.commit(&mut ops).await;
        }
        tracing::debug!("batch writer stopped");
    }

    /// Writes the queued operations in one transaction and answers the flushes among them.
    async fn commit(&self, ops: &mut Vec<Op>) {
        let mut batch = Batch::default();
        let mut flushes = Vec::new();
        for op in ops.drain(..) {
            match op {
                Op::Insert(m) => batch.inserts.push(m),
                Op::Delete(a) => batch.deletes.push(a),
                Op::Delivered(d) => batch.deliveries.push(d),
                Op::Flush(done) => flushes.push(done),
            }
        }
        // A payload no statement can carry would fail every batch it is in: refused on its own.
        batch.inserts.retain(|m| match self.store.check_payload(m.payload.len()) {
            Ok(()) => true,
            Err(limit) => {
                Metrics::add(&self.metrics.too_large, 1);
                let reason = format!("payload of {} bytes is beyond what the database takes ({limit} bytes: max_allowed_packet)", m.payload.len());
                self.dead_letter(m, &reason);
                tracing::error!(msgid = %m.msgid, topic = %m.topic, client_id = %m.from, payload_bytes = m.payload.len(), limit_bytes = limit, "payload too large for the database's max_allowed_packet; this message goes to the dead-letter file (raise max_allowed_packet on the MySQL server to store such messages)");
                false
            }
        });
        // An ack for a message still in this batch: neither write is needed.
        let pending: HashSet<&str> = batch.inserts.iter().map(|m| m.msgid.as_str()).collect();
        let cancelled: HashSet<String> =
            batch.deletes.iter().filter(|d| pending.contains(d.msgid.as_str())).map(|d| d.msgid.clone()).collect();
        if !cancelled.is_empty() {
            batch.inserts.retain(|m| !cancelled.contains(&m.msgid));
            batch.deletes.retain(|d| !cancelled.contains(&d.msgid));
            batch.deliveries.retain(|d| !cancelled.contains(&d.msgid));
            Metrics::add(&self.metrics.cancelled, cancelled.len() as u64);
        }
        if !batch.is_empty() {
            self.write_with_retry(batch).await;
        }
        for done in flushes {
            let _ = done.send(());
        }
    }

    async fn write_with_retry(&self, batch: Batch) {
        let started = Instant::now();
        let mut backoff = Duration::from_millis(50);
        let mut failures = 0u32;
        let rows = batch.inserts.len();
        loop {
            match self.store.write_batch(&batch).await {
                Ok(()) => {
                    self.record(&batch);
                    let total = batch.inserts.len() + batch.deletes.len() + batch.deliveries.len();
                    self.metrics.batch_size.observe(total as f64);
                    self.metrics.flush_seconds.observe_duration(started.elapsed());
                    if failures > 0 {
                        tracing::info!(rows, failures, "batch written after retries");
                    }
                    tracing::debug!(
                        rows,
                        deletes = batch.deletes.len(),
                        deliveries = batch.deliveries.len(),
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "batch committed"
                    );
                    return;
                }
                Err(StoreError::Query { cause: sqlx::Error::Database(db), key }) if !is_transient(db.as_ref()) => {
                    // The database refused the content, not the connection: retrying the same
                    // batch cannot help, so write row by row and report the rows it refuses.
                    tracing::warn!(template = key, rows, error = %db, "batch refused; writing its rows one by one");
                    self.write_one_by_one(batch).await;
                    return;
                }
                Err(e) => {
                    failures += 1;
                    Metrics::add(&self.metrics.retried_batches, 1);
                    if failures == 1 || failures.is_power_of_two() {
                        tracing::warn!(rows, failures, retry_in_ms = backoff.as_millis() as u64, error = %e, "writing a batch failed; retrying");
                    }
                    sleep(backoff + jitter(backoff)).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    async fn write_one_by_one(&self, batch: Batch) {
        for m in batch.inserts {
            let one = Batch { inserts: vec![m], ..Batch::default() };
            match self.write_alone(&one).await {
                Ok(()) => self.record(&one),
                Err(e) => {
                    let m = &one.inserts[0];
                    let (msgid, topic, from) = (&m.msgid, &m.topic, &m.from);
                    Metrics::add(&self.metrics.refused, 1);
                    self.dead_letter(m, &e.to_string());
                    tracing::error!(msgid, topic, client_id = from, error = %e, "the database refused this message; it goes to the dead-letter file");
                }
            }
        }
        for d in batch.deletes {
            let msgid = d.msgid.clone();
            let one = Batch { deletes: vec![d], ..Batch::default() };
            match self.write_alone(&one).await {
                Ok(()) => self.record(&one),
                Err(e) => tracing::error!(msgid, error = %e, "deleting an acknowledged message failed"),
            }
        }
        for d in batch.deliveries {
            let (msgid, client_id) = (d.msgid.clone(), d.client_id.clone());
            let one = Batch { deliveries: vec![d], ..Batch::default() };
            match self.write_alone(&one).await {
                Ok(()) => self.record(&one),
                Err(e) => {
                    tracing::error!(msgid, client_id, error = %e, "recording a delivery failed; the client may get this message again")
                }
            }
        }
    }

    /// One row on its own, retried a few times while the database says "try again".
    async fn write_alone(&self, batch: &Batch) -> Result<(), StoreError> {
        let mut backoff = Duration::from_millis(50);
        for _ in 0..5 {
            match self.store.write_batch(batch).await {
                Err(StoreError::Query { cause: sqlx::Error::Database(db), .. }) if is_transient(db.as_ref()) => {
                    sleep(backoff + jitter(backoff)).await;
                    backoff *= 2;
                }
                other => return other,
            }
        }
        self.store.write_batch(batch).await
    }

    fn dead_letter(&self, m: &Message, reason: &str) {
        match self.dead_letters.append(m, reason) {
            Ok(()) => Metrics::add(&self.metrics.dead_lettered, 1),
            Err(e) => {
                tracing::error!(msgid = %m.msgid, file = %self.dead_letters.path.display(), error = %e, "writing the dead-letter file failed; this message is lost")
            }
        }
    }

    fn record(&self, written: &Batch) {
        Metrics::add(&self.metrics.persisted, written.inserts.len() as u64);
        Metrics::add(&self.metrics.deleted_on_ack, written.deletes.len() as u64);
        Metrics::add(&self.metrics.deliveries_recorded, written.deliveries.len() as u64);
    }
}

/// The dead-letter file: messages the database refused, one JSON object per line, with the reason,
/// so that nothing is lost silently and an operator can load them once the cause is fixed.
pub struct DeadLetters {
    pub path: PathBuf,
}

impl DeadLetters {
    /// Appends one message and syncs the file: a dead letter is the only copy.
    fn append(&self, m: &Message, reason: &str) -> std::io::Result<()> {
        use std::io::Write;
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let line = serde_json::json!({
            "refused_at": iso_time(crate::engine::now_ms()),
            "reason": reason,
            "msgid": m.msgid,
            "sender": m.from,
            "topic": m.topic,
            "qos": m.qos,
            "retain": m.retain,
            "timestamp_ms": m.timestamp_ms,
            "expiry_ms": m.expiry_ms,
            "properties": m.properties.as_deref().map(serde_json::from_str::<serde_json::Value>).and_then(Result::ok),
            "payload_base64": base64(&m.payload),
        });
        let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&self.path)?;
        writeln!(file, "{line}")?;
        file.sync_data()
    }
}

/// Database errors that say "try again" rather than "this row is wrong": deadlocks, lock waits,
/// a busy SQLite file, a server going away mid-statement.
fn is_transient(e: &dyn sqlx::error::DatabaseError) -> bool {
    if let Some(mysql) = e.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>() {
        // lock wait timeout, deadlock, too many connections, shutdown in progress, gone away, lost
        return matches!(mysql.number(), 1205 | 1213 | 1040 | 1053 | 2006 | 2013);
    }
    // SQLite (extended codes keep the primary code in the low byte): BUSY, LOCKED.
    e.code().and_then(|c| c.parse::<i32>().ok()).is_some_and(|c| matches!(c & 0xff, 5 | 6))
}

/// Up to a quarter of `base`, so that brokers sharing a database do not retry in step.
fn jitter(base: Duration) -> Duration {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    base / 4 * (nanos % 1000) / 1000
}
