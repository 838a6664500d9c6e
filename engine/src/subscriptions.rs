//! Subscription writes in the order the broker reported them, off the broker's own paths.
//!
//! A session that ends must not wait on the database: the broker keeps the ended session
//! registered until its hooks return, and a client that reconnects at once with the same client id
//! is refused while it is. So the delete is queued here and the hook returns. Every other
//! subscription write goes through the same queue, so a reconnect's subscribe lands after the
//! ended session's delete, and a read of the stored subscriptions waits for what is queued.
//!
//! The queue is bounded (`max_buffered`, as the batch writer's): when it is full, callers wait for
//! room (a SUBACK, a connect or a session's end), so nothing is dropped and memory stays bounded.
//!
//! While the database cannot be reached, changes are kept in memory, in order, and written when it
//! answers again (retried with backoff), so a subscription made during an outage is stored once the
//! outage ends. They are not spooled to disk: a broker stopped during the outage loses them (logged);
//! beyond `MAX_KEPT` the oldest are dropped, logged and counted.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::message::Subscription;
use crate::metrics::Metrics;
use crate::outage::OutageLog;
use crate::store::{Store, StoreError};
use crate::writer::jitter;

/// Changes kept while the database is unreachable; beyond this the oldest are dropped (logged).
const MAX_KEPT: usize = 100_000;
const RETRY_FIRST: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(10);

enum Change {
    Upsert(Subscription),
    Delete(Subscription),
    /// Deletes every stored subscription of a client.
    Forget(String),
}

enum Op {
    Change(Change, Option<oneshot::Sender<Result<(), StoreError>>>),
    Flush(oneshot::Sender<()>),
}

/// The handle; cheap to clone. The task ends when every handle is dropped.
#[derive(Clone)]
pub struct SubscriptionWriter {
    tx: mpsc::Sender<Op>,
}

impl SubscriptionWriter {
    /// Starts the task, with room for `capacity` queued changes.
    pub fn spawn(
        store: Arc<dyn Store>,
        outage: Arc<OutageLog>,
        capacity: usize,
        metrics: Arc<Metrics>,
    ) -> SubscriptionWriter {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        tokio::spawn(run(store, outage, rx, metrics));
        SubscriptionWriter { tx }
    }

    /// Changes waiting in the queue.
    pub fn queued(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// Stores a subscription once what was queued before it is written. `Ok` also when the
    /// database is unreachable and the change is kept for when it answers; `Err` when it refused.
    pub async fn upsert(&self, sub: Subscription) -> Result<(), StoreError> {
        self.change(Change::Upsert(sub)).await
    }

    /// Deletes a stored subscription, as [`SubscriptionWriter::upsert`] stores one.
    pub async fn delete(&self, sub: Subscription) -> Result<(), StoreError> {
        self.change(Change::Delete(sub)).await
    }

    /// Queues the delete of every subscription of `client_id`; does not wait for it (only, with
    /// the queue full, for room).
    pub async fn forget(&self, client_id: &str) {
        self.send(Op::Change(Change::Forget(client_id.to_owned()), None)).await;
    }

    /// Returns once everything queued before is written, or kept for when the database answers.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        self.send(Op::Flush(done)).await;
        let _ = wait.await;
    }

    async fn change(&self, change: Change) -> Result<(), StoreError> {
        let (done, result) = oneshot::channel();
        self.send(Op::Change(change, Some(done))).await;
        result.await.unwrap_or(Ok(()))
    }

    async fn send(&self, op: Op) {
        if self.tx.send(op).await.is_err() {
            tracing::error!("the subscription writer has stopped; a subscription change was not stored");
        }
    }
}

async fn run(store: Arc<dyn Store>, outage: Arc<OutageLog>, mut rx: mpsc::Receiver<Op>, metrics: Arc<Metrics>) {
    // Changes that met an unreachable database, oldest first; new ones queue behind them.
    let mut kept: VecDeque<Change> = VecDeque::new();
    let mut backoff = RETRY_FIRST;
    loop {
        let op = if kept.is_empty() {
            rx.recv().await
        } else {
            tokio::select! {
                op = rx.recv() => op,
                _ = tokio::time::sleep(backoff + jitter(backoff)) => {
                    if write_kept(&*store, &mut kept).await {
                        backoff = RETRY_FIRST;
                        outage.ended();
                        tracing::info!("the subscription changes kept during the outage are stored");
                    } else {
                        backoff = (backoff * 2).min(RETRY_MAX);
                    }
                    continue;
                }
            }
        };
        let Some(op) = op else { break };
        match op {
            Op::Change(change, done) if kept.is_empty() => {
                let result = match apply(&*store, &change).await {
                    Err(e) if e.is_unreachable() => {
                        outage.began(&e);
                        tracing::debug!(error = %e, "subscription changes are kept in memory until the database answers");
                        kept.push_back(change);
                        Ok(())
                    }
                    other => other,
                };
                if let Err(e) = &result {
                    if done.is_none() {
                        tracing::error!(error = %e, "a subscription change failed");
                    }
                }
                if let Some(done) = done {
                    let _ = done.send(result);
                }
            }
            Op::Change(change, done) => {
                if kept.len() >= MAX_KEPT {
                    kept.pop_front();
                    Metrics::add(&metrics.subscription_changes_dropped, 1);
                    tracing::error!(
                        kept = MAX_KEPT,
                        "too many subscription changes kept during the outage; the oldest is dropped"
                    );
                }
                kept.push_back(change);
                if let Some(done) = done {
                    let _ = done.send(Ok(()));
                }
            }
            Op::Flush(done) => {
                let _ = done.send(());
            }
        }
    }
    if !kept.is_empty() && !write_kept(&*store, &mut kept).await {
        tracing::error!(changes = kept.len(), "subscription changes kept during the outage are lost at shutdown");
    }
}

/// Writes the kept changes in order; true once none is left. A change the database refuses
/// (rather than not answering) is logged and dropped: retrying it cannot help.
async fn write_kept(store: &dyn Store, kept: &mut VecDeque<Change>) -> bool {
    while let Some(change) = kept.front() {
        match apply(store, change).await {
            Err(e) if e.is_unreachable() => return false,
            Err(e) => tracing::error!(error = %e, "a kept subscription change was refused"),
            Ok(()) => {}
        }
        kept.pop_front();
    }
    true
}

async fn apply(store: &dyn Store, change: &Change) -> Result<(), StoreError> {
    match change {
        Change::Upsert(sub) => store.upsert_subscription(sub).await,
        Change::Delete(sub) => store.delete_subscription(sub).await,
        Change::Forget(client_id) => {
            for sub in store.select_subscriptions(client_id).await? {
                store.delete_subscription(&sub).await?;
            }
            tracing::debug!(client_id, "stored subscriptions deleted");
            Ok(())
        }
    }
}
