//! rmqtt's session table, with a takeover that does not fail on a connection that is ending.
//!
//! A client that connects under a client id whose previous connection the broker still lists has
//! that connection kicked: rmqtt (`shared.rs`, `LockEntry::kick`) sends the old connection's task
//! a kick and waits for its answer. Once that task has read the client's end of the stream it no
//! longer reads its channel; for a clean session it tears the session down and drops the channel
//! (`session.rs`, `SessionState::run` and `clean`), kick included, unanswered. rmqtt then refuses
//! the new connection (CONNACK "server unavailable"), although the old one is gone: a client that
//! disconnects and connects again at once was refused now and then.
//!
//! Here a kick that was dropped unanswered is tried again once the old connection's channel is
//! closed: by then its task has ended, and the second kick removes what it left.

use std::time::Duration;

use async_trait::async_trait;
use rmqtt::context::ServerContext;
use rmqtt::session::Session;
use rmqtt::shared::{Entry, RetainLoadCallback, Shared};
use rmqtt::types::{
    ForwardedCount, ForwardedRecipients, From, HealthInfo, Id, IsAdmin, MsgID, NodeHealthStatus, NodeId,
    OfflineSession, Publish, Reason, Retain, SessionStatus, SubRelations, SubRelationsMap, SubsSearchParams,
    SubsSearchResult, Subscribe, SubscribeReturn, To, TopicFilter, TopicName, Tx, Unsubscribe,
};

/// How long a takeover waits for an ending connection's task to end: rmqtt's own wait for a kick.
const ENDING_WAIT: Duration = Duration::from_secs(5);

/// Wraps the broker's session table (install a cluster's table first): a takeover that meets a
/// connection while it ends waits for it to end instead of failing.
pub async fn take_over_ending_sessions(scx: &ServerContext) {
    let mut shared = scx.extends.shared_mut().await;
    let inner = std::mem::replace(&mut *shared, Box::new(rmqtt::shared::DefaultShared::new(None)));
    *shared = Box::new(TakeOver(inner));
}

struct TakeOver(Box<dyn Shared>);

struct TakeOverEntry(Box<dyn Entry>);

impl TakeOverEntry {
    /// The old connection's channel is closed (its task has ended), or no connection is listed.
    async fn wait_for_the_old_task(&self) -> bool {
        let start = tokio::time::Instant::now();
        while self.0.tx().is_some_and(|tx| !tx.is_closed()) {
            if start.elapsed() > ENDING_WAIT {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }
}

#[async_trait]
impl Entry for TakeOverEntry {
    async fn try_lock(&self) -> rmqtt::Result<Box<dyn Entry>> {
        Ok(Box::new(TakeOverEntry(self.0.try_lock().await?)))
    }

    fn id(&self) -> Id {
        self.0.id()
    }

    fn id_same(&self) -> Option<bool> {
        self.0.id_same()
    }

    async fn set(&mut self, session: Session, tx: Tx) -> rmqtt::Result<()> {
        self.0.set(session, tx).await
    }

    async fn remove(&mut self) -> rmqtt::Result<Option<(Session, Tx)>> {
        self.0.remove().await
    }

    async fn remove_with(&mut self, id: &Id) -> rmqtt::Result<Option<(Session, Tx)>> {
        self.0.remove_with(id).await
    }

    async fn kick(
        &mut self,
        clean_start: bool,
        clear_subscriptions: bool,
        is_admin: IsAdmin,
    ) -> rmqtt::Result<OfflineSession> {
        match self.0.kick(clean_start, clear_subscriptions, is_admin).await {
            Err(e) => {
                if !self.wait_for_the_old_task().await {
                    return Err(e);
                }
                tracing::debug!(client_id = %self.0.id().client_id, error = %e, "the connection taken over was ending; taking it over again");
                self.0.kick(clean_start, clear_subscriptions, is_admin).await
            }
            done => done,
        }
    }

    async fn online(&self) -> bool {
        self.0.online().await
    }

    async fn is_connected(&self) -> bool {
        self.0.is_connected().await
    }

    fn session(&self) -> Option<Session> {
        self.0.session()
    }

    fn exist(&self) -> bool {
        self.0.exist()
    }

    fn tx(&self) -> Option<Tx> {
        self.0.tx()
    }

    async fn subscribe(&self, subscribe: &Subscribe) -> rmqtt::Result<SubscribeReturn> {
        self.0.subscribe(subscribe).await
    }

    async fn unsubscribe(&self, unsubscribe: &Unsubscribe) -> rmqtt::Result<bool> {
        self.0.unsubscribe(unsubscribe).await
    }

    async fn publish(&self, from: From, p: Publish) -> Result<(), (From, Publish, Reason)> {
        self.0.publish(from, p).await
    }

    async fn subscriptions(&self) -> Option<Vec<SubsSearchResult>> {
        self.0.subscriptions().await
    }
}

type Failed = Vec<(To, From, Publish, Reason)>;

#[async_trait]
impl Shared for TakeOver {
    fn entry(&self, id: Id) -> Box<dyn Entry> {
        Box::new(TakeOverEntry(self.0.entry(id)))
    }

    fn exist(&self, client_id: &str) -> bool {
        self.0.exist(client_id)
    }

    async fn forwards(
        &self,
        msg_id: Option<MsgID>,
        from: From,
        publish: Publish,
    ) -> Result<ForwardedCount, (ForwardedCount, Failed)> {
        self.0.forwards(msg_id, from, publish).await
    }

    async fn forwards_and_get_shareds(
        &self,
        from: From,
        publish: Publish,
    ) -> Result<(SubRelationsMap, ForwardedRecipients), (ForwardedRecipients, Failed)> {
        self.0.forwards_and_get_shareds(from, publish).await
    }

    async fn forwards_to(
        &self,
        from: From,
        publish: &Publish,
        relations: SubRelations,
        msg_id: Option<MsgID>,
    ) -> Result<ForwardedRecipients, (ForwardedRecipients, Failed)> {
        self.0.forwards_to(from, publish, relations, msg_id).await
    }

    fn iter(&self) -> Box<dyn Iterator<Item = Box<dyn Entry>> + Sync + Send + '_> {
        self.0.iter()
    }

    fn random_session(&self) -> Option<Session> {
        self.0.random_session()
    }

    async fn session_status(&self, client_id: &str) -> Option<SessionStatus> {
        self.0.session_status(client_id).await
    }

    async fn client_states_count(&self) -> usize {
        self.0.client_states_count().await
    }

    fn sessions_count(&self) -> usize {
        self.0.sessions_count()
    }

    async fn query_subscriptions(&self, q: &SubsSearchParams) -> Vec<SubsSearchResult> {
        self.0.query_subscriptions(q).await
    }

    async fn subscriptions_count(&self) -> usize {
        self.0.subscriptions_count().await
    }

    fn grpc_enable(&self) -> bool {
        self.0.grpc_enable()
    }

    fn node_name(&self, id: NodeId) -> String {
        self.0.node_name(id)
    }

    async fn check_health(&self) -> rmqtt::Result<HealthInfo> {
        self.0.check_health().await
    }

    async fn health_status(&self) -> rmqtt::Result<NodeHealthStatus> {
        self.0.health_status().await
    }

    fn operation_is_busy(&self) -> bool {
        self.0.operation_is_busy()
    }

    async fn retain_load_with(
        &self,
        topic_filter: &TopicFilter,
        cb: std::sync::Arc<dyn RetainLoadCallback>,
    ) -> rmqtt::Result<Vec<(NodeId, MsgID)>> {
        self.0.retain_load_with(topic_filter, cb).await
    }

    // rmqtt's `msgstore` feature, which its cluster plugins turn on (our `cluster` feature).
    #[cfg(feature = "cluster")]
    async fn message_load(
        &self,
        client_id: &str,
        topic_filter: &str,
        group: Option<&rmqtt::types::SharedGroup>,
    ) -> rmqtt::Result<Vec<(MsgID, From, Publish)>> {
        self.0.message_load(client_id, topic_filter, group).await
    }

    #[cfg(feature = "cluster")]
    async fn message_mark_forwarded(
        &self,
        from_node_id: NodeId,
        msg_id: MsgID,
        recipients: ForwardedRecipients,
    ) -> rmqtt::Result<()> {
        self.0.message_mark_forwarded(from_node_id, msg_id, recipients).await
    }

    async fn retain_set_broadcast(
        &self,
        topic: &TopicName,
        retain: &Retain,
        expiry_interval: Option<Duration>,
    ) -> rmqtt::Result<()> {
        self.0.retain_set_broadcast(topic, retain, expiry_interval).await
    }
}
