//! Subscription writes in the order the broker reported them, off the broker's own paths.
//!
//! A session that ends must not wait on the database: the broker keeps the ended session
//! registered until its hooks return, and a client that reconnects at once with the same client id
//! is refused while it is. So the delete is queued here and the hook returns. Every other
//! subscription write goes through the same queue, so a reconnect's subscribe lands after the
//! ended session's delete, and a read of the stored subscriptions waits for what is queued.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::message::Subscription;
use crate::store::{Store, StoreError};

enum Op {
    Upsert(Subscription, oneshot::Sender<Result<(), StoreError>>),
    Delete(Subscription, oneshot::Sender<Result<(), StoreError>>),
    /// Deletes every stored subscription of a client.
    Forget(String),
    Flush(oneshot::Sender<()>),
}

/// The handle; cheap to clone. The task ends when every handle is dropped.
#[derive(Clone)]
pub struct SubscriptionWriter {
    tx: mpsc::UnboundedSender<Op>,
}

impl SubscriptionWriter {
    pub fn spawn(store: Arc<Store>) -> SubscriptionWriter {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(store, rx));
        SubscriptionWriter { tx }
    }

    /// Stores a subscription once what was queued before it is written.
    pub async fn upsert(&self, sub: Subscription) -> Result<(), StoreError> {
        let (done, result) = oneshot::channel();
        self.send(Op::Upsert(sub, done));
        result.await.unwrap_or(Ok(()))
    }

    pub async fn delete(&self, sub: Subscription) -> Result<(), StoreError> {
        let (done, result) = oneshot::channel();
        self.send(Op::Delete(sub, done));
        result.await.unwrap_or(Ok(()))
    }

    /// Queues the delete of every subscription of `client_id`; does not wait for it.
    pub fn forget(&self, client_id: &str) {
        self.send(Op::Forget(client_id.to_owned()));
    }

    /// Returns once everything queued before is written.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        self.send(Op::Flush(done));
        let _ = wait.await;
    }

    fn send(&self, op: Op) {
        if self.tx.send(op).is_err() {
            tracing::error!("the subscription writer has stopped; a subscription change was not stored");
        }
    }
}

async fn run(store: Arc<Store>, mut rx: mpsc::UnboundedReceiver<Op>) {
    while let Some(op) = rx.recv().await {
        match op {
            Op::Upsert(sub, done) => {
                let _ = done.send(store.upsert_subscription(&sub).await);
            }
            Op::Delete(sub, done) => {
                let _ = done.send(store.delete_subscription(&sub).await);
            }
            Op::Forget(client_id) => forget(&store, &client_id).await,
            Op::Flush(done) => {
                let _ = done.send(());
            }
        }
    }
}

/// Nobody waits on a forget, so it is retried here a few times while the database fails, then
/// logged.
async fn forget(store: &Store, client_id: &str) {
    let mut backoff = Duration::from_millis(100);
    for attempt in 1..=5 {
        let result = async {
            for sub in store.select_subscriptions(client_id).await? {
                store.delete_subscription(&sub).await?;
            }
            Ok::<(), StoreError>(())
        }
        .await;
        match result {
            Ok(()) => {
                tracing::debug!(client_id, "stored subscriptions deleted");
                return;
            }
            Err(e) if attempt == 5 => {
                tracing::error!(client_id, error = %e, "deleting stored subscriptions failed; they stay stored")
            }
            Err(e) => {
                tracing::warn!(client_id, error = %e, attempt, "deleting stored subscriptions failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff *= 2;
            }
        }
    }
}
