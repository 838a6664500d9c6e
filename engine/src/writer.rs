//! The batch writer: one task that turns queued inserts, ack-deletes and delivery records into
//! batched transactions.
//!
//! Operations are applied in the order they were queued, so a delete never overtakes the insert it
//! cancels, and batches commit in the order they were filled (the table's auto-increment id is then
//! publish order for each publisher). An ack that arrives while its insert is still queued cancels
//! both: the row is never written.
//!
//! When the database fails with an error that says "try again" (unreachable, restarting, locked),
//! the batch goes to the on-disk spool instead of being retried in memory, and so does everything
//! queued after it, so that publishers are not held up and memory stays bounded. Once the spool
//! holds something, the writer writes from it, oldest first, until it is empty, and only then
//! takes the queue directly again: the order is kept across the outage and across a restart.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, oneshot, Notify};
use tokio::time::{sleep, sleep_until, Instant};

use crate::encode::{base64, iso_time};
use crate::message::{DeliveryRecord, Message};
use crate::metrics::Metrics;
use crate::outage::OutageLog;
use crate::spool::{Spool, SpoolOp, SpoolPos};
use crate::store::{AckedMessage, Batch, Store, StoreError};

/// During an outage, the database is probed after this, then twice as long each time, up to
/// `PROBE_MAX`; the spool is written once a probe answers.
const PROBE_FIRST: Duration = Duration::from_millis(200);
const PROBE_MAX: Duration = Duration::from_secs(5);

/// Attempts at a batch before it goes to the spool when the database answers "try again" (a
/// deadlock, a lock wait pass quickly); an unreachable database sends it to the spool at once.
const TRIES_BEFORE_SPOOLING: u32 = 3;

/// Delivery records that may wait for room in a full queue, at least (see
/// [`BatchWriter::record_delivery`]).
const RECORDS_WAITING_MIN: usize = 10_000;

enum Op {
    Insert(Message),
    Delete(AckedMessage),
    Delivered(DeliveryRecord),
    Flush(oneshot::Sender<()>, FlushKind),
}

/// What a flush waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FlushKind {
    /// Everything before it is in the database (a replay is about to read it).
    Visible,
    /// Everything before it is durable: in the database, or synced to the spool (a `sync` PUBACK).
    Durable,
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
    /// Delivery records waiting for room in a full queue (see [`BatchWriter::record_delivery`]).
    records_waiting: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
    /// Rung when the writer must not wait out `batch_time`: a flush is queued, or a batch's worth
    /// of operations is (or the queue is full). Between rings the writer sleeps instead of waking
    /// for every message queued, which cost more CPU than writing the message.
    doorbell: Arc<Notify>,
    /// Queued operations that ring the doorbell.
    ring_at: usize,
}

impl BatchWriter {
    /// Starts the writer task. It ends when every handle is dropped, after writing what it holds.
    pub fn spawn(
        store: Arc<dyn Store>,
        limits: BatchLimits,
        metrics: Arc<Metrics>,
        dead_letters: DeadLetters,
        spool: Spool,
        outage_log: Arc<OutageLog>,
    ) -> BatchWriter {
        let (tx, rx) = mpsc::channel(limits.queue_capacity.max(1));
        let doorbell = Arc::new(Notify::new());
        if !spool.is_empty() {
            tracing::warn!(
                bytes = spool.unread_bytes(),
                "the spool holds operations from before; they are written first"
            );
        }
        Metrics::set(&metrics.spool_bytes, spool.unread_bytes());
        let task = WriterTask {
            store,
            limits,
            metrics: metrics.clone(),
            dead_letters,
            spool,
            waiting: Vec::new(),
            outage: None,
            outage_log,
            probe: None,
            probe_backoff: PROBE_FIRST,
            doorbell: doorbell.clone(),
        };
        tokio::spawn(task.run(rx));
        let ring_at = limits.batch_size.min(tx.max_capacity()).max(1);
        BatchWriter { tx, records_waiting: Arc::default(), metrics, doorbell, ring_at }
    }

    /// Queues a message; waits only while the queue is full.
    pub async fn insert(&self, m: Message) {
        self.send(Op::Insert(m)).await
    }

    /// Queues the delete of an acknowledged message.
    pub async fn delete(&self, a: AckedMessage) {
        self.send(Op::Delete(a)).await
    }

    /// Queues the record that a client has had a message, without waiting: the session that
    /// delivered it must not wait for the database. Records ride in the writer's batches (one
    /// multi-row statement each). When the queue is full, a record waits for room in a task of its
    /// own, in line behind what was queued before it (its message's insert included); with as many
    /// records waiting as the queue holds (at least `RECORDS_WAITING_MIN`), a further one is
    /// dropped and counted
    /// (`offline_messages_dropped_total{reason="delivery_record"}`): that client may get the message
    /// again from a later replay, a duplicate rather than a loss.
    pub fn record_delivery(&self, d: DeliveryRecord) {
        let op = match self.tx.try_send(Op::Delivered(d)) {
            Ok(()) => return,
            Err(mpsc::error::TrySendError::Closed(_)) => {
                return tracing::error!("the batch writer has stopped; a delivery record was not queued")
            }
            Err(mpsc::error::TrySendError::Full(op)) => op,
        };
        if self.records_waiting.fetch_add(1, Ordering::Relaxed) >= self.tx.max_capacity().max(RECORDS_WAITING_MIN) {
            self.records_waiting.fetch_sub(1, Ordering::Relaxed);
            Metrics::add(&self.metrics.delivery_records_dropped, 1);
            return;
        }
        let (tx, waiting) = (self.tx.clone(), self.records_waiting.clone());
        tokio::spawn(async move {
            let _ = tx.send(op).await;
            waiting.fetch_sub(1, Ordering::Relaxed);
        });
    }

    /// Returns once everything queued before this call is in the database (or given up on).
    pub async fn flush(&self) {
        self.flush_as(FlushKind::Visible).await
    }

    /// Returns once everything queued before this call is durable: committed, or, while the
    /// database is unavailable, synced to the spool.
    pub async fn flush_durable(&self) {
        self.flush_as(FlushKind::Durable).await
    }

    async fn flush_as(&self, kind: FlushKind) {
        let (done, wait) = oneshot::channel();
        self.send(Op::Flush(done, kind)).await;
        let _ = wait.await;
    }

    /// Operations waiting in the queue.
    pub fn queued(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    async fn send(&self, op: Op) {
        let urgent = matches!(op, Op::Flush(..));
        if self.tx.send(op).await.is_err() {
            tracing::error!("the batch writer has stopped; an operation was not queued");
        } else if urgent || self.queued() >= self.ring_at {
            self.doorbell.notify_one();
        }
    }
}

struct WriterTask {
    store: Arc<dyn Store>,
    limits: BatchLimits,
    metrics: Arc<Metrics>,
    dead_letters: DeadLetters,
    spool: Spool,
    /// Visible flushes waiting for the spool to be written up to a position.
    waiting: Vec<(SpoolPos, oneshot::Sender<()>)>,
    /// Since when the database has been failing, while it is.
    outage: Option<Instant>,
    outage_log: Arc<OutageLog>,
    /// During an outage: a background check of whether the database answers again.
    probe: Option<tokio::task::JoinHandle<bool>>,
    /// The wait before the next probe.
    probe_backoff: Duration,
    /// See [`BatchWriter::doorbell`].
    doorbell: Arc<Notify>,
}

impl WriterTask {
    async fn run(mut self, mut rx: mpsc::Receiver<Op>) {
        let is_insert = |o: &Op| matches!(o, Op::Insert(_));
        let mut ops = Vec::with_capacity(self.limits.batch_size);
        loop {
            if !self.spool.is_empty() {
                if !self.drain_spool(&mut rx, &mut ops).await {
                    break;
                }
                continue;
            }
            let Some(first) = rx.recv().await else { break };
            // Fill the batch until it is full, `batch_time` has passed, or someone waits on a flush
            // (what was queued after the flush may ride along: a flush only needs what came before).
            // Between looks at the queue the writer sleeps until the deadline or the doorbell.
            let deadline = Instant::now() + self.limits.batch_time;
            let (mut inserts, mut flush, mut late) = (0, false, false);
            let mut next = Some(first);
            loop {
                // Everything queued rides along, flushes included: `sync` publishers waiting on
                // one commit share the next.
                while let Some(op) = next.take().or_else(|| rx.try_recv().ok()) {
                    inserts += usize::from(is_insert(&op));
                    flush |= matches!(op, Op::Flush(..));
                    ops.push(op);
                    if inserts >= self.limits.batch_size {
                        break;
                    }
                }
                if flush || inserts >= self.limits.batch_size || late {
                    break;
                }
                tokio::select! {
                    () = self.doorbell.notified() => {}
                    () = sleep_until(deadline) => late = true,
                }
            }
            self.commit(&mut ops).await;
        }
        if self.spool.is_empty() {
            tracing::debug!("batch writer stopped");
        } else {
            tracing::warn!(
                bytes = self.spool.unread_bytes(),
                "the writer stops with operations in the spool; they are written at the next start"
            );
        }
    }

    /// One step of writing from the spool: what is queued goes to the spool behind what is there,
    /// then the oldest spooled batch goes to the database. While the database still fails, waits
    /// (taking what is queued meanwhile). False when the queue is closed and the spool cannot drain.
    async fn drain_spool(&mut self, rx: &mut mpsc::Receiver<Op>, ops: &mut Vec<Op>) -> bool {
        while ops.len() < self.limits.batch_size {
            match rx.try_recv() {
                Ok(op) => ops.push(op),
                Err(_) => break,
            }
        }
        if !ops.is_empty() {
            self.commit(ops).await;
        }
        if self.outage.is_some() {
            // Until a probe finds the database back, keep taking what publishers send (a `sync`
            // PUBACK waits for it to reach the spool), instead of waiting on the database.
            let mut probe = self.probe.take().unwrap_or_else(|| {
                let (store, wait) = (self.store.clone(), self.probe_backoff);
                tokio::spawn(async move {
                    sleep(wait + jitter(wait)).await;
                    if store.is_checked() {
                        store.ping_writer().await.is_ok()
                    } else {
                        store.check().await.is_ok()
                    }
                })
            });
            tokio::select! {
                answered = &mut probe => {
                    if !answered.unwrap_or(false) {
                        self.probe_backoff = (self.probe_backoff * 2).min(PROBE_MAX);
                        return true;
                    }
                    self.probe_backoff = PROBE_FIRST;
                }
                op = rx.recv() => {
                    self.probe = Some(probe);
                    match op {
                        Some(op) => ops.push(op),
                        // Shutting down with the database away: the spool waits for the next start.
                        None => return false,
                    }
                    return true;
                }
            }
        }
        self.write_spooled().await;
        true
    }

    /// Writes the oldest spooled batch to the database; true when it was written.
    async fn write_spooled(&mut self) -> bool {
        let (spooled, pos) = match self.spool.read(self.limits.batch_size) {
            Ok(read) => read,
            Err(e) => {
                tracing::error!(error = %e, "reading the spool failed; retrying");
                sleep(Duration::from_secs(1)).await;
                return false;
            }
        };
        let mut batch = batch_of(spooled);
        self.refuse_too_large(&mut batch);
        // Not written: the whole spooled batch is tried again later (what of it did land is not
        // written twice: the message id is unique).
        let written = match self.write_or_fail(batch).await {
            Ok(()) => true,
            Err((e, _)) => {
                self.note_outage(&e);
                false
            }
        };
        if written {
            if let Err(e) = self.spool.consumed(pos) {
                tracing::error!(error = %e, "saving the spool's read position failed; a restart may write a batch twice (its ids are ignored the second time)");
            }
            Metrics::set(&self.metrics.spool_bytes, self.spool.unread_bytes());
            if let Some(since) = self.outage.take() {
                self.outage_log.ended();
                tracing::info!(down_ms = since.elapsed().as_millis() as u64, "writing the spool to the database");
            }
            let read = pos;
            let (ready, still): (Vec<_>, Vec<_>) =
                std::mem::take(&mut self.waiting).into_iter().partition(|(at, _)| *at <= read || self.spool.is_empty());
            self.waiting = still;
            for (_, done) in ready {
                let _ = done.send(());
            }
            if self.spool.is_empty() {
                tracing::info!("the spool is written; back to direct batches");
            }
        }
        written
    }

    /// A payload no statement can carry would fail every batch it is in: it is refused on its own
    /// and dead-lettered. (Before the checks have run, the limit is not known yet: the spooled
    /// batch is checked again when it is written.)
    fn refuse_too_large(&self, batch: &mut Batch) {
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
    }

    fn note_outage(&mut self, e: &StoreError) {
        if self.outage.is_none() {
            self.outage = Some(Instant::now());
            if e.is_unreachable() {
                self.outage_log.began(e);
                tracing::debug!(error = %e, "the writer spools until the database answers");
            } else {
                tracing::warn!(error = %e, "the database fails the writes; operations go to the spool until it takes them");
            }
        }
    }

    /// Writes the queued operations in one transaction, or appends them to the spool when it holds
    /// anything or the database is unavailable, and answers the flushes among them.
    async fn commit(&mut self, ops: &mut Vec<Op>) {
        let mut batch = Batch::default();
        let mut flushes = Vec::new();
        for op in ops.drain(..) {
            match op {
                Op::Insert(m) => batch.inserts.push(m),
                Op::Delete(a) => batch.deletes.push(a),
                Op::Delivered(d) => batch.deliveries.push(d),
                Op::Flush(done, kind) => flushes.push((done, kind)),
            }
        }
        self.refuse_too_large(&mut batch);
        // An ack for a message still in this batch: neither write is needed.
        let pending: HashSet<&str> = if batch.deletes.is_empty() {
            HashSet::new()
        } else {
            batch.inserts.iter().map(|m| m.msgid.as_str()).collect()
        };
        let cancelled: HashSet<String> =
            batch.deletes.iter().filter(|d| pending.contains(d.msgid.as_str())).map(|d| d.msgid.clone()).collect();
        if !cancelled.is_empty() {
            batch.inserts.retain(|m| !cancelled.contains(&m.msgid));
            batch.deletes.retain(|d| !cancelled.contains(&d.msgid));
            batch.deliveries.retain(|d| !cancelled.contains(&d.msgid));
            Metrics::add(&self.metrics.cancelled, cancelled.len() as u64);
        }
        if batch.is_empty() {
        } else if self.spool.is_empty() {
            if let Err((e, unwritten)) = self.write_or_fail(batch).await {
                self.note_outage(&e);
                self.spool_batch(unwritten).await;
            }
        } else {
            self.spool_batch(batch).await;
        }
        for (done, kind) in flushes {
            if kind == FlushKind::Visible && !self.spool.is_empty() {
                self.waiting.push((self.spool.end(), done));
            } else {
                let _ = done.send(());
            }
        }
    }

    /// Appends a batch to the spool and syncs it (a `sync` PUBACK may be waiting on it).
    async fn spool_batch(&mut self, batch: Batch) {
        let ops = spool_ops(batch);
        let count = ops.len() as u64;
        match self.append_to_spool(&ops) {
            Ok(()) => {}
            Err(e) => {
                // Nothing is dropped for a failing spool: this batch waits in memory (publishers
                // wait with it, the queue being full) behind what the spool holds, which is older
                // and goes to the database first. Appending it is tried again meanwhile: the disk
                // may have room again.
                tracing::error!(error = %e, operations = count, spool_dir = %self.spool.dir().display(), "writing the spool failed; this batch waits in memory behind the spool");
                let mut batch = batch_of(ops);
                let mut backoff = Duration::from_millis(100);
                loop {
                    if self.spool.is_empty() {
                        match self.write_or_fail(batch).await {
                            Ok(()) => break,
                            Err((e, unwritten)) => {
                                self.note_outage(&e);
                                batch = unwritten;
                            }
                        }
                    } else if self.write_spooled().await {
                        backoff = Duration::from_millis(100);
                        continue;
                    } else {
                        let ops = spool_ops(batch.clone());
                        if self.append_to_spool(&ops).is_ok() {
                            tracing::info!(operations = ops.len(), "the spool takes writes again");
                            break;
                        }
                    }
                    sleep(backoff + jitter(backoff)).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        Metrics::set(&self.metrics.spool_bytes, self.spool.unread_bytes());
    }

    /// Appends and syncs `ops` (all or none of them), counting what a full spool drops.
    fn append_to_spool(&mut self, ops: &[SpoolOp]) -> std::io::Result<()> {
        let outcome = self.spool.append(ops)?;
        self.spool.sync()?;
        Metrics::add(&self.metrics.spooled, ops.len() as u64 - outcome.dropped_newest);
        if outcome.dropped_newest > 0 || outcome.dropped_oldest_bytes > 0 {
            Metrics::add(&self.metrics.spool_dropped, outcome.dropped_newest);
            Metrics::add(&self.metrics.spool_dropped_bytes, outcome.dropped_oldest_bytes);
            tracing::error!(
                dropped_new = outcome.dropped_newest,
                dropped_old_bytes = outcome.dropped_oldest_bytes,
                "the spool is full (spool_max_bytes): operations were dropped (spool_full says which)"
            );
        }
        Ok(())
    }

    /// Writes a batch; a row the database refuses is isolated and dead-lettered; a deadlock or a
    /// lock wait is retried a few times. Any other failure (unreachable, timed out, a missing
    /// table, a read-only server, a refused login) returns what was not written: the caller spools.
    async fn write_or_fail(&self, batch: Batch) -> Result<(), (StoreError, Batch)> {
        let started = Instant::now();
        let rows = batch.inserts.len();
        let mut backoff = Duration::from_millis(50);
        for attempt in 1.. {
            match self.store.write_batch(&batch).await {
                Ok(()) => {
                    self.record(&batch);
                    let total = batch.inserts.len() + batch.deletes.len() + batch.deliveries.len();
                    self.metrics.batch_size.observe(total as f64);
                    self.metrics.flush_seconds.observe_duration(started.elapsed());
                    tracing::debug!(
                        rows,
                        deletes = batch.deletes.len(),
                        deliveries = batch.deliveries.len(),
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "batch committed"
                    );
                    return Ok(());
                }
                Err(e) if refuses_a_row(&e) => {
                    // The database refused the content, not the work: retrying the same batch
                    // cannot help, so write row by row and report the rows it refuses.
                    tracing::warn!(rows, error = %e, "batch refused; writing its rows one by one");
                    return self.write_one_by_one(batch).await;
                }
                Err(e) if attempt < TRIES_BEFORE_SPOOLING && says_try_again(&e) => {
                    Metrics::add(&self.metrics.retried_batches, 1);
                    tracing::debug!(rows, attempt, error = %e, "writing a batch failed; retrying");
                    sleep(backoff + jitter(backoff)).await;
                    backoff *= 2;
                }
                Err(e) => return Err((e, batch)),
            }
        }
        unreachable!("the loop returns")
    }

    /// Writes a refused batch row by row, dead-lettering the rows the database refuses. When the
    /// database fails otherwise on the way, returns that and what is not written yet.
    async fn write_one_by_one(&self, batch: Batch) -> Result<(), (StoreError, Batch)> {
        let Batch { inserts, deletes, deliveries } = batch;
        let mut inserts = inserts.into_iter();
        while let Some(m) = inserts.next() {
            let one = Batch { inserts: vec![m], ..Batch::default() };
            match self.write_alone(&one).await {
                Ok(()) => self.record(&one),
                Err(e) if refuses_a_row(&e) => {
                    let m = &one.inserts[0];
                    let (msgid, topic, from) = (&m.msgid, &m.topic, &m.from);
                    Metrics::add(&self.metrics.refused, 1);
                    self.dead_letter(m, &e.to_string());
                    tracing::error!(msgid, topic, client_id = from, error = %e, "the database refused this message; it goes to the dead-letter file");
                }
                Err(e) => {
                    let inserts = one.inserts.into_iter().chain(inserts).collect();
                    return Err((e, Batch { inserts, deletes, deliveries }));
                }
            }
        }
        let mut deletes = deletes.into_iter();
        while let Some(d) = deletes.next() {
            let one = Batch { deletes: vec![d], ..Batch::default() };
            match self.write_alone(&one).await {
                Ok(()) => self.record(&one),
                Err(e) if refuses_a_row(&e) => {
                    tracing::error!(msgid = one.deletes[0].msgid, error = %e, "deleting an acknowledged message failed")
                }
                Err(e) => {
                    let deletes = one.deletes.into_iter().chain(deletes).collect();
                    return Err((e, Batch { inserts: Vec::new(), deletes, deliveries }));
                }
            }
        }
        let mut deliveries = deliveries.into_iter();
        while let Some(d) = deliveries.next() {
            let one = Batch { deliveries: vec![d], ..Batch::default() };
            match self.write_alone(&one).await {
                Ok(()) => self.record(&one),
                Err(e) if refuses_a_row(&e) => {
                    let d = &one.deliveries[0];
                    tracing::error!(msgid = d.msgid, client_id = d.client_id, error = %e, "recording a delivery failed; the client may get this message again")
                }
                Err(e) => {
                    let deliveries = one.deliveries.into_iter().chain(deliveries).collect();
                    return Err((e, Batch { deliveries, ..Batch::default() }));
                }
            }
        }
        Ok(())
    }

    /// One row on its own, retried a few times while the database says "try again".
    async fn write_alone(&self, batch: &Batch) -> Result<(), StoreError> {
        let mut backoff = Duration::from_millis(50);
        for _ in 0..5 {
            match self.store.write_batch(batch).await {
                Err(e) if says_try_again(&e) => {
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
                Metrics::add(&self.metrics.dead_letter_failed, 1);
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

/// A batch as spooled operations, in the order it is written.
fn spool_ops(batch: Batch) -> Vec<SpoolOp> {
    let Batch { inserts, deletes, deliveries } = batch;
    inserts
        .into_iter()
        .map(SpoolOp::Insert)
        .chain(deletes.into_iter().map(SpoolOp::Delete))
        .chain(deliveries.into_iter().map(SpoolOp::Delivered))
        .collect()
}

/// Spooled operations as one batch: inserts, then deletes, then delivery records, as a batch is
/// written.
fn batch_of(ops: Vec<SpoolOp>) -> Batch {
    let mut batch = Batch::default();
    for op in ops {
        match op {
            SpoolOp::Insert(m) => batch.inserts.push(m),
            SpoolOp::Delete(a) => batch.deletes.push(a),
            SpoolOp::Delivered(d) => batch.deliveries.push(d),
        }
    }
    batch
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
            crate::private_files::create_dir_all(dir)?;
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
        let mut file = crate::private_files::options().create(true).append(true).open(&self.path)?;
        writeln!(file, "{line}")?;
        file.sync_data()
    }
}

/// The database refused what a row holds (a value out of range or too long, a constraint, a
/// payload beyond `max_allowed_packet`, a Redis key of another type in the way), as opposed to failing to do the work at all (unreachable,
/// timed out, read-only, a missing table, a refused login, a full disk): that row is dead-lettered,
/// where any other failure sends the batch to the spool.
fn refuses_a_row(e: &StoreError) -> bool {
    if let StoreError::Redis { cause, .. } = e {
        return crate::store::redis::refuses_content(cause);
    }
    let StoreError::Query { cause: sqlx::Error::Database(db), .. } = e else { return false };
    if let Some(mysql) = db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>() {
        // null in a not-null column, duplicate key, packet too large, truncated / out of range /
        // incorrect values, data too long, foreign keys, check constraints (MySQL, MariaDB)
        return matches!(
            mysql.number(),
            1048 | 1062 | 1153 | 1263 | 1264 | 1265 | 1292 | 1366 | 1406 | 1451 | 1452 | 1690 | 3819 | 4025
        );
    }
    // SQLite (extended codes keep the primary code in the low byte): TOOBIG, CONSTRAINT, MISMATCH.
    sqlite_code(db.as_ref()).is_some_and(|c| matches!(c & 0xff, 18 | 19 | 20))
}

/// A failure that passes when tried again at once: a deadlock, a lock wait, a busy SQLite file.
fn says_try_again(e: &StoreError) -> bool {
    let StoreError::Query { cause: sqlx::Error::Database(db), .. } = e else { return false };
    if let Some(mysql) = db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>() {
        return matches!(mysql.number(), 1205 | 1213);
    }
    sqlite_code(db.as_ref()).is_some_and(|c| matches!(c & 0xff, 5 | 6))
}

fn sqlite_code(e: &dyn sqlx::error::DatabaseError) -> Option<i32> {
    e.code().and_then(|c| c.parse::<i32>().ok())
}

/// Up to a quarter of `base`, so that brokers (and clients) sharing a database do not retry in step.
pub fn jitter(base: Duration) -> Duration {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    base / 4 * (nanos % 1000) / 1000
}
