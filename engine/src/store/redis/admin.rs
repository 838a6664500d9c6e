//! `history` on Redis: the stored messages of the topics a filter matches, in publish order, read
//! from the keys the store writes as the replay reads them. The topic list (`#topics`) is walked
//! with `SSCAN`, each matching topic's sorted set is read a few ids at a time (`ZRANGE ... BYSCORE
//! LIMIT`), the sets are merged in id order, and the hashes are read 100 per round trip: memory
//! grows with the number of topics the filter matches (a name and a few ids each), not with the
//! number of messages.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};

use futures_util::stream::{self, BoxStream, StreamExt};
use redis::Cmd;

use super::{id_score, ids_by_score, RedisStore};
use crate::message::Properties;
use crate::message_id::MessageId;
use crate::store::{HistoryRow, StoreError};
use crate::topic::TopicFilter;

/// Topics asked of each `SSCAN` step.
const TOPICS_PER_SCAN: usize = 1000;
/// Ids held in memory at most across the topics, unless [`MIN_IDS_PER_READ`] per topic is more.
const IDS_IN_MEMORY: usize = 20_000;
const MIN_IDS_PER_READ: usize = 10;
const MAX_IDS_PER_READ: usize = 200;
/// Commands per pipeline when each matching topic's set is first read.
const FIRST_READS_PER_ROUND_TRIP: usize = 500;
/// Hashes (`HGETALL`) read per round trip.
const HASHES_PER_READ: usize = 100;
/// How much later than its arrival (`ts`) a message's id, which orders and scores it, may have been
/// made: the host stamps a publish when it arrives and the engine names it when it takes it, after
/// the host's queue. Sets are read up to `--until` plus this; the rows are then cut on `ts` exactly.
const ID_AFTER_ARRIVAL_MS: i64 = 60_000;

/// What `history` asks of Redis; the counterpart of [`crate::store::HistoryQuery`], whose paging
/// the stream does itself here.
#[derive(Debug, Clone)]
pub struct RedisHistoryQuery {
    /// An MQTT topic filter; matched as a subscription would be.
    pub filter: TopicFilter,
    /// Arrival (`ts`, ms) at or after this.
    pub since_ms: Option<i64>,
    /// Arrival before this.
    pub until_ms: Option<i64>,
    /// The publisher's client id (`from`), exactly.
    pub sender: Option<String>,
}

/// One topic's ids not yet merged, read ahead in order.
struct TopicIds {
    key: String,
    /// The last id read from the set; nothing is read before the score `since`.
    after: Option<MessageId>,
    ids: VecDeque<MessageId>,
    /// The last read was full: the set may hold more.
    more: bool,
}

/// A history being read: the topics' ids merged in id order.
struct Merge {
    query: RedisHistoryQuery,
    topics: Vec<TopicIds>,
    /// The smallest unread id of each topic, with the topic's index.
    heap: BinaryHeap<Reverse<(MessageId, usize)>>,
    ready: VecDeque<HistoryRow>,
    ids_per_read: usize,
}

impl RedisStore {
    /// The stored messages `query` selects, oldest first (publish order, as a replay delivers
    /// them), read a page at a time as the caller takes them. A row's `id` is `None`: Redis keeps
    /// no row number; its `msgid` names it and orders it.
    pub fn history(&self, query: RedisHistoryQuery) -> BoxStream<'_, Result<HistoryRow, StoreError>> {
        enum State {
            Start(RedisHistoryQuery),
            Reading(Merge),
            Done,
        }
        stream::unfold(State::Start(query), move |state| async move {
            let mut merge = match state {
                State::Done => return None,
                State::Start(query) => match self.history_start(query).await {
                    Ok(merge) => merge,
                    Err(e) => return Some((Err(e), State::Done)),
                },
                State::Reading(merge) => merge,
            };
            if let Err(e) = self.history_next(&mut merge).await {
                return Some((Err(e), State::Done));
            }
            let row = merge.ready.pop_front()?;
            Some((Ok(row), State::Reading(merge)))
        })
        .boxed()
    }

    /// The topics the filter matches: itself without wildcards, else those of the topic list that
    /// it matches, asked by the filter's literal prefix (`SSCAN ... MATCH`).
    async fn history_topics(&self, filter: &TopicFilter) -> Result<Vec<String>, StoreError> {
        if !filter.has_wildcards() {
            return Ok(vec![filter.as_str().to_owned()]);
        }
        let pattern = format!("{}*", glob_escape(search_prefix(filter)));
        let (mut cursor, mut topics) = (0u64, Vec::new());
        loop {
            let scan = redis::cmd("SSCAN")
                .arg(self.keys.topics())
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(TOPICS_PER_SCAN)
                .clone();
            let (next, found): (u64, Vec<String>) = self.read_one(scan).await?;
            topics.extend(found.into_iter().filter(|t| filter.matches(t)));
            if next == 0 {
                break;
            }
            cursor = next;
        }
        // SSCAN may return a member twice.
        topics.sort_unstable();
        topics.dedup();
        Ok(topics)
    }

    async fn history_start(&self, query: RedisHistoryQuery) -> Result<Merge, StoreError> {
        let topics = self.history_topics(&query.filter).await?;
        let ids_per_read = (IDS_IN_MEMORY / topics.len().max(1)).clamp(MIN_IDS_PER_READ, MAX_IDS_PER_READ);
        let mut merge =
            Merge { query, topics: Vec::new(), heap: BinaryHeap::new(), ready: VecDeque::new(), ids_per_read };
        let mut topics = topics.into_iter().map(|t| TopicIds {
            key: self.keys.topic(&t),
            after: None,
            ids: VecDeque::new(),
            more: true,
        });
        loop {
            let chunk: Vec<TopicIds> = topics.by_ref().take(FIRST_READS_PER_ROUND_TRIP).collect();
            if chunk.is_empty() {
                break;
            }
            let cmds = chunk.iter().map(|t| ids_cmd(t, &merge.query, ids_per_read)).collect();
            let firsts: Vec<Vec<String>> = self.read(cmds).await?;
            for (mut t, first) in chunk.into_iter().zip(firsts) {
                self.history_refill(&mut t, &merge.query, ids_per_read, Some(first)).await?;
                if let Some(id) = t.ids.pop_front() {
                    merge.heap.push(Reverse((id, merge.topics.len())));
                    merge.topics.push(t);
                }
            }
        }
        Ok(merge)
    }

    /// Reads a topic's ids after its cursor ([`RedisStore::ids_past`]).
    async fn history_refill(
        &self,
        t: &mut TopicIds,
        q: &RedisHistoryQuery,
        count: usize,
        first: Option<Vec<String>>,
    ) -> Result<(), StoreError> {
        let first = match first {
            Some(members) => members,
            None => self.read_one(ids_cmd(t, q, count)).await?,
        };
        let (ids, more) = self.ids_past(&t.key, t.after, &max_score(q), count, first).await?;
        t.more = more;
        if let Some(last) = ids.last() {
            t.after = Some(*last);
        }
        t.ids.extend(ids);
        Ok(())
    }

    /// The next rows, in id order: up to [`HASHES_PER_READ`] ids, their hashes read in one round
    /// trip; gone ones (acknowledged, expired) and ones the query leaves out are skipped.
    async fn history_next(&self, merge: &mut Merge) -> Result<(), StoreError> {
        while merge.ready.is_empty() && !merge.heap.is_empty() {
            let mut ids = Vec::new();
            while ids.len() < HASHES_PER_READ {
                let Some(Reverse((id, i))) = merge.heap.pop() else { break };
                ids.push(id);
                let t = &mut merge.topics[i];
                if t.ids.is_empty() && t.more {
                    self.history_refill(t, &merge.query, merge.ids_per_read, None).await?;
                }
                if let Some(next) = t.ids.pop_front() {
                    merge.heap.push(Reverse((next, i)));
                }
            }
            let texts: Vec<String> = ids.iter().map(MessageId::to_base62).collect();
            let hashes: Vec<HashMap<String, Vec<u8>>> = self
                .read(texts.iter().map(|id| redis::cmd("HGETALL").arg(self.keys.message(id)).clone()).collect())
                .await?;
            for ((id, msgid), hash) in ids.into_iter().zip(texts).zip(hashes) {
                if let Some(row) = history_row(id, msgid, hash).filter(|r| selected(&merge.query, r)) {
                    merge.ready.push_back(row);
                }
            }
        }
        Ok(())
    }
}

/// What the walk over the topic list asks for: the filter's literal prefix, without the separator
/// before a last `#` (`a/#` also matches `a`).
fn search_prefix(filter: &TopicFilter) -> &str {
    let prefix = filter.literal_prefix();
    if filter.as_str()[prefix.len()..].starts_with('#') {
        prefix.strip_suffix('/').unwrap_or(prefix)
    } else {
        prefix
    }
}

/// `text` as a Redis glob pattern that matches it literally.
fn glob_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn selected(q: &RedisHistoryQuery, r: &HistoryRow) -> bool {
    q.filter.matches(&r.topic)
        && q.since_ms.is_none_or(|s| r.arrived_ms >= s)
        && q.until_ms.is_none_or(|u| r.arrived_ms < u)
        && q.sender.as_ref().is_none_or(|s| *s == r.sender)
}

/// A message hash as `history` shows it; `None` when it is gone or not one of ours. A hash
/// without `ts` shows the time its id holds.
fn history_row(id: MessageId, msgid: String, hash: HashMap<String, Vec<u8>>) -> Option<HistoryRow> {
    let text = |field: &str| hash.get(field).map(|v| String::from_utf8_lossy(v).into_owned());
    let int = |field: &str| text(field).and_then(|v| v.trim().parse::<i64>().ok());
    Some(HistoryRow {
        id: None,
        topic: text("topic")?,
        msgid,
        sender: text("from").unwrap_or_default(),
        qos: int("qos").unwrap_or(1),
        retain: matches!(text("retain").as_deref(), Some("1" | "true")),
        arrived_ms: int("ts").unwrap_or_else(|| id_score(id)),
        expiry_ms: int("expiry"),
        properties: text("properties").map(|p| Properties::from_json(&p)).unwrap_or_default(),
        payload: hash.get("payload").cloned().unwrap_or_default(),
    })
}

/// Up to `count` ids of a topic's set from its cursor (inclusive: ids of the cursor's millisecond
/// come again and are dropped), or from `since`, up to the last score `until` can select.
fn ids_cmd(t: &TopicIds, q: &RedisHistoryQuery, count: usize) -> Cmd {
    let min = match (t.after, q.since_ms) {
        (Some(after), _) => id_score(after).to_string(),
        (None, Some(since)) => since.to_string(),
        (None, None) => "-inf".to_owned(),
    };
    ids_by_score(&t.key, &min, &max_score(q), count)
}

/// The last score `until` can select (`+inf` without one).
fn max_score(q: &RedisHistoryQuery) -> String {
    q.until_ms.map_or("+inf".to_owned(), |u| format!("({}", u.saturating_add(ID_AFTER_ARRIVAL_MS)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_topic_list_is_searched_by_the_filters_literal_prefix() {
        let prefix = |f: &str| glob_escape(search_prefix(&TopicFilter::parse(f).unwrap()));
        assert_eq!(prefix("#"), "");
        assert_eq!(prefix("a/#"), "a", "a/# also matches a");
        assert_eq!(prefix("a/+/c"), "a/");
        assert_eq!(prefix("a*b?/[x]\\/+"), "a\\*b\\?/\\[x\\]\\\\/");
    }

    #[test]
    fn rows_take_the_hashs_fields_and_skip_what_is_not_a_message() {
        let id = crate::message_id::MessageIdGenerator::new(1).next_id();
        let hash: HashMap<String, Vec<u8>> = [
            ("topic", &b"a/b"[..]),
            ("from", b"c1"),
            ("qos", b"2"),
            ("retain", b"1"),
            ("ts", b"1700000000000"),
            ("payload", &[0xff, 0]),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_vec()))
        .collect();
        let row = history_row(id, id.to_base62(), hash).unwrap();
        assert_eq!((row.id, row.topic.as_str(), row.sender.as_str(), row.qos), (None, "a/b", "c1", 2));
        assert_eq!((row.retain, row.arrived_ms, row.payload), (true, 1_700_000_000_000, vec![0xff, 0]));
        assert!(history_row(id, id.to_base62(), HashMap::new()).is_none(), "gone (expired, acknowledged)");
        let q = RedisHistoryQuery {
            filter: TopicFilter::parse("a/+").unwrap(),
            since_ms: Some(1_700_000_000_000),
            until_ms: Some(1_700_000_000_001),
            sender: Some("c1".into()),
        };
        let mut row = history_row(id, id.to_base62(), [("topic".to_owned(), b"a/b".to_vec())].into()).unwrap();
        (row.sender, row.arrived_ms) = ("c1".into(), 1_700_000_000_000);
        assert!(selected(&q, &row));
        assert!(
            !selected(&RedisHistoryQuery { until_ms: Some(1_700_000_000_000), ..q.clone() }, &row),
            "until is exclusive"
        );
        assert!(!selected(&RedisHistoryQuery { sender: Some("c2".into()), ..q.clone() }, &row));
        row.topic = "a/b/c".into();
        assert!(!selected(&q, &row));
    }
}
