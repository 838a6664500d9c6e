//! rmqtt's retained-message storage, with a listener's `message_expiry_interval = 0` read as
//! rmqtt's session queues read it: never expire.
//!
//! rmqtt hands the retainer the publish's own expiry interval or, when it has none, the
//! listener's. Its delivery path treats a zero interval as "no expiry", its retainer as "expired
//! already": with a zero listener interval a retained message without an MQTT 5 expiry vanished
//! the moment it was set.

use std::time::Duration;

use async_trait::async_trait;
use rmqtt::context::ServerContext;
use rmqtt::retain::{DefaultRetainStorage, RetainStorage, RetainSyncMode};
use rmqtt::types::{Retain, TopicFilter, TopicName};
use rmqtt::utils::StatsMergeMode;

/// Wraps the broker's retain storage (install the retainer first): a zero expiry interval is
/// stored as none.
pub async fn keep_retained_without_expiry(scx: &ServerContext) {
    let mut storage = scx.extends.retain_mut().await;
    let inner = std::mem::replace(&mut *storage, Box::new(DefaultRetainStorage::new()));
    *storage = Box::new(ZeroIsForever(inner));
}

struct ZeroIsForever(Box<dyn RetainStorage>);

fn forever_if_zero(expiry: Option<Duration>) -> Option<Duration> {
    expiry.filter(|d| !d.is_zero())
}

#[async_trait]
impl RetainStorage for ZeroIsForever {
    fn enable(&self) -> bool {
        self.0.enable()
    }

    fn merge_on_read(&self) -> bool {
        self.0.merge_on_read()
    }

    fn need_sync(&self) -> bool {
        self.0.need_sync()
    }

    async fn set(&self, topic: &TopicName, retain: Retain, expiry: Option<Duration>) -> rmqtt::Result<()> {
        self.0.set(topic, retain, forever_if_zero(expiry)).await
    }

    async fn get(&self, filter: &TopicFilter) -> rmqtt::Result<Vec<(TopicName, Retain)>> {
        self.0.get(filter).await
    }

    async fn get_all_paginated(
        &self,
        offset: usize,
        limit: usize,
    ) -> rmqtt::Result<(Vec<(TopicName, Retain, Option<Duration>)>, bool)> {
        self.0.get_all_paginated(offset, limit).await
    }

    async fn count(&self) -> isize {
        self.0.count().await
    }

    async fn max(&self) -> isize {
        self.0.max().await
    }

    fn stats_merge_mode(&self) -> StatsMergeMode {
        self.0.stats_merge_mode()
    }

    fn retain_sync_mode(&self) -> RetainSyncMode {
        self.0.retain_sync_mode()
    }

    async fn sync_retain_topic(&self, topic: &TopicName, expiry: Option<Duration>, is_set: bool) -> rmqtt::Result<()> {
        self.0.sync_retain_topic(topic, forever_if_zero(expiry), is_set).await
    }
}
