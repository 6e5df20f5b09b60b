//! Topics: name rules and the registry of topic configurations.
//!
//! Names follow RocketMQ: `^[%a-zA-Z0-9_-]+$`, at most 127 characters. Names reserved by
//! RocketMQ for its internals (`RMQ_SYS_*`, `TRANS_CHECK_MAX_TIME_TOPIC`, `SCHEDULE_TOPIC_XXXX`,
//! `%RETRY%…`) and our dead-letter topics (`%DLQ%<group>`) cannot be produced to directly.
//!
//! Lite topics: a LITE topic holds any number of lite topics, lightweight sub-topics that a
//! producer names on each message (a chat session, a device, an order's reply channel) and a
//! consumer subscribes to by name. Each lite topic is one queue of its topic, numbered from
//! [`LITE_QUEUE_BASE`] in order of creation (above any routed queue, which a LITE topic leaves
//! empty), so consumption state, receipt handles and retention work on it as on any queue. A
//! lite topic is created durably by the first message sent to it; in memory it costs its name
//! twice and a queue number.
//!
//! Owns: the topic registry and the durable topic records, the creation lock (two concurrent
//! auto-creates store one record) and the topic quota; the lite topics of LITE topics and
//! their quota. Never touches queues or messages: the caller readies a new topic's (or lite
//! topic's) queues through the `open` step of [`Topics::create`] / [`Topics::lite_queue_or_create`].

use crate::codec::Record;
use crate::codec::{CodecError, Decoder, Encoder};
use crate::error::{BrokerError, Result};
use crate::model::{Millis, TopicRecord, TopicType};
use crate::store::{scan_prefix, Batch, Committer, Key, Store};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// Longest topic name.
pub const MAX_TOPIC_LEN: usize = 127;

/// Prefix of dead-letter topics: `%DLQ%<consumer group>`.
pub const DLQ_PREFIX: &str = "%DLQ%";

/// The queue of a LITE topic's first lite topic; later ones follow in order of creation.
/// Above the most queues a topic can route (1024), so no routed queue is ever a lite topic.
pub const LITE_QUEUE_BASE: u32 = 1 << 16;

/// Longest lite topic name; the broker announces it to lite consumers (`max_lite_topic_size`).
pub const MAX_LITE_TOPIC_LEN: usize = 64;

/// Checks a lite topic name: 1 to 64 characters, the same characters as topic names.
pub fn validate_lite_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > MAX_LITE_TOPIC_LEN {
        return Err(BrokerError::IllegalLiteTopic(format!(
            "lite topic name must be 1 to {MAX_LITE_TOPIC_LEN} characters"
        )));
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '%' | '_' | '-'))) {
        return Err(BrokerError::IllegalLiteTopic(format!(
            "lite topic name {name:?} contains {c:?}; allowed are letters, digits, '%', '_' and '-'"
        )));
    }
    Ok(())
}

/// A lite topic as stored (under `Key::LiteTopic`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LiteRecord {
    pub queue: u32,
    pub created_at: Millis,
}

impl Record for LiteRecord {
    const KIND: &'static str = "lite topic record";
    const VERSION: u8 = 1;

    fn write(&self, e: &mut Encoder) {
        e.u32(self.queue).i64(self.created_at);
    }

    fn read(d: &mut Decoder<'_>, _version: u8) -> std::result::Result<Self, CodecError> {
        Ok(Self { queue: d.u32()?, created_at: d.i64()? })
    }
}

/// The lite topics of one LITE topic: name → queue, and queue → name (by queue order).
#[derive(Default)]
struct LiteTable {
    by_name: HashMap<Arc<str>, u32>,
    /// `names[q - LITE_QUEUE_BASE]`.
    names: Vec<Option<Arc<str>>>,
}

impl LiteTable {
    fn insert(&mut self, name: Arc<str>, queue: u32) {
        let i = (queue - LITE_QUEUE_BASE) as usize;
        if self.names.len() <= i {
            self.names.resize(i + 1, None);
        }
        self.names[i] = Some(name.clone());
        self.by_name.insert(name, queue);
    }

    fn next_queue(&self) -> u32 {
        LITE_QUEUE_BASE + self.names.len() as u32
    }
}

/// Checks a topic name against RocketMQ's rules.
pub fn validate_name(name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(BrokerError::IllegalTopic("topic name is empty".into()));
    }
    if name.len() > MAX_TOPIC_LEN {
        return Err(BrokerError::IllegalTopic(format!(
            "topic name is {} characters long, the limit is {MAX_TOPIC_LEN}",
            name.len()
        )));
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '%' | '_' | '-'))) {
        return Err(BrokerError::IllegalTopic(format!(
            "topic name {name:?} contains {c:?}; allowed are letters, digits, '%', '_' and '-'"
        )));
    }
    Ok(())
}

/// True for names producers may not send to (system and dead-letter topics).
pub fn is_reserved(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    upper.starts_with("RMQ_SYS_")
        || upper.starts_with("%RETRY%")
        || upper.starts_with("%SYS%")
        || name.starts_with(DLQ_PREFIX)
        || upper == "TRANS_CHECK_MAX_TIME_TOPIC"
        || upper == "SCHEDULE_TOPIC_XXXX"
}

/// Every topic, loaded from the store at start; new ones stored durably before they are seen.
pub struct Topics {
    map: RwLock<HashMap<String, Arc<TopicRecord>>>,
    committer: Arc<Committer>,
    /// Serializes creation, so two concurrent auto-creates store one record.
    create_lock: tokio::sync::Mutex<()>,
    max_topics: usize,
    /// Lite topics by LITE topic name.
    lites: RwLock<HashMap<String, LiteTable>>,
    /// Serializes lite topic creation, so two concurrent first sends store one record.
    lite_lock: tokio::sync::Mutex<()>,
    max_lite_topics: usize,
}

/// Whether [`Topics::create`] may return a topic that exists already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IfExists {
    /// Fail with `TopicExists`.
    Fail,
    /// Return the existing topic.
    Use,
}

impl Topics {
    /// Loads every stored topic and lite topic; new ones are written through `committer`, at
    /// most `max_topics` topics in all and `max_lite_topics` lite topics per LITE topic.
    pub fn load(
        store: &dyn Store,
        committer: Arc<Committer>,
        max_topics: usize,
        max_lite_topics: usize,
    ) -> Result<Self> {
        let mut map = HashMap::new();
        // Topics are few (thousands at most); the scan is bounded anyway.
        for (key, value) in scan_prefix(store, &Key::topic_prefix(), 1_000_000, false)? {
            let record = TopicRecord::decode(&value)
                .map_err(|e| BrokerError::Store(crate::store::StoreError::Corrupt { key, detail: e.to_string() }))?;
            map.insert(record.name.clone(), Arc::new(record));
        }
        let mut lites: HashMap<String, LiteTable> = HashMap::new();
        for (key, value) in scan_prefix(store, &Key::lite_topic_prefix(), usize::MAX, false)? {
            let corrupt = |detail: String| crate::store::StoreError::Corrupt { key: key.clone(), detail };
            let Ok(Key::LiteTopic { topic, lite }) = Key::decode(&key) else {
                return Err(corrupt("not a lite topic key".into()).into());
            };
            let record = LiteRecord::decode(&value).map_err(|e| corrupt(e.to_string()))?;
            if record.queue < LITE_QUEUE_BASE {
                return Err(corrupt(format!("lite topic queue {} is below {LITE_QUEUE_BASE}", record.queue)).into());
            }
            lites.entry(topic).or_default().insert(lite.into(), record.queue);
        }
        Ok(Self {
            map: RwLock::new(map),
            committer,
            create_lock: tokio::sync::Mutex::new(()),
            max_topics,
            lites: RwLock::new(lites),
            lite_lock: tokio::sync::Mutex::new(()),
            max_lite_topics,
        })
    }

    /// Stores `record` durably, then runs `open` (which readies its queues) and makes it
    /// visible. A topic of the same name is an error or the answer, as `if_exists` says.
    pub async fn create(
        &self,
        record: TopicRecord,
        if_exists: IfExists,
        open: impl FnOnce(&TopicRecord) -> Result<()>,
    ) -> Result<Arc<TopicRecord>> {
        let _guard = self.create_lock.lock().await;
        if let Some(t) = self.get(&record.name) {
            return match if_exists {
                IfExists::Use => Ok(t),
                IfExists::Fail => Err(BrokerError::TopicExists(record.name)),
            };
        }
        let max = self.max_topics;
        if self.len() >= max {
            return Err(BrokerError::QuotaExceeded(format!(
                "{max} topics exist (max-topics); {} was not created",
                record.name
            )));
        }
        let mut batch = Batch::new();
        batch.put(&Key::Topic(record.name.clone()), record.encode());
        self.committer.commit(batch).await?;
        open(&record)?;
        let record = Arc::new(record);
        crate::sync::write(&self.map).insert(record.name.clone(), record.clone());
        Ok(record)
    }

    /// Gives a topic `queue_count` queues (more than it has), durably, then runs `open` (which
    /// readies the new queues). Existing queues keep their messages; fewer queues are refused.
    pub async fn grow(
        &self,
        name: &str,
        queue_count: u32,
        open: impl FnOnce(&TopicRecord) -> Result<()>,
    ) -> Result<Arc<TopicRecord>> {
        let _guard = self.create_lock.lock().await;
        let old = self.get(name).ok_or_else(|| BrokerError::TopicNotFound(name.to_string()))?;
        if queue_count == old.queue_count {
            return Ok(old);
        }
        if queue_count < old.queue_count || queue_count > 1024 {
            return Err(BrokerError::BadRequest(format!(
                "topic {name} has {} queues; it can grow to at most 1024, never shrink",
                old.queue_count
            )));
        }
        if old.topic_type == TopicType::Lite {
            return Err(BrokerError::BadRequest(format!("topic {name} is LITE: its lite topics are its queues")));
        }
        let record = TopicRecord { queue_count, ..(*old).clone() };
        let mut batch = Batch::new();
        batch.put(&Key::Topic(record.name.clone()), record.encode());
        self.committer.commit(batch).await?;
        open(&record)?;
        let record = Arc::new(record);
        crate::sync::write(&self.map).insert(record.name.clone(), record.clone());
        Ok(record)
    }

    pub fn get(&self, name: &str) -> Option<Arc<TopicRecord>> {
        crate::sync::read(&self.map).get(name).cloned()
    }

    /// All topics, sorted by name.
    pub fn list(&self) -> Vec<Arc<TopicRecord>> {
        let mut v: Vec<_> = crate::sync::read(&self.map).values().cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    pub fn len(&self) -> usize {
        crate::sync::read(&self.map).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The queues that hold `topic`'s messages: its routed queues, or a LITE topic's lite
    /// topics' queues.
    pub fn queues(&self, topic: &TopicRecord) -> Vec<u32> {
        if topic.topic_type != TopicType::Lite {
            return (0..topic.queue_count).collect();
        }
        let lites = crate::sync::read(&self.lites);
        let Some(table) = lites.get(&topic.name) else { return Vec::new() };
        table.names.iter().enumerate().filter(|(_, n)| n.is_some()).map(|(i, _)| LITE_QUEUE_BASE + i as u32).collect()
    }

    /// The queue of a lite topic, if it exists.
    pub fn lite_queue(&self, topic: &str, lite: &str) -> Option<u32> {
        crate::sync::read(&self.lites).get(topic)?.by_name.get(lite).copied()
    }

    /// The lite topic a queue of `topic` holds, if it is one.
    pub fn lite_name(&self, topic: &str, queue: u32) -> Option<Arc<str>> {
        let i = queue.checked_sub(LITE_QUEUE_BASE)? as usize;
        crate::sync::read(&self.lites).get(topic)?.names.get(i)?.clone()
    }

    /// How many lite topics `topic` has.
    pub fn lite_count(&self, topic: &str) -> usize {
        crate::sync::read(&self.lites).get(topic).map_or(0, |t| t.by_name.len())
    }

    /// Up to `limit` lite topics of `topic` with their queues, by name.
    pub fn lite_topics(&self, topic: &str, limit: usize) -> Vec<(Arc<str>, u32)> {
        let lites = crate::sync::read(&self.lites);
        let Some(table) = lites.get(topic) else { return Vec::new() };
        let mut v: Vec<_> = table.by_name.iter().map(|(n, q)| (n.clone(), *q)).collect();
        v.sort();
        v.truncate(limit);
        v
    }

    /// The queue of lite topic `lite` of the LITE topic `topic`, created durably (then readied
    /// by `open`) on first use. Refused past the lite topic quota.
    pub async fn lite_queue_or_create(
        &self,
        topic: &TopicRecord,
        lite: &str,
        now: Millis,
        open: impl FnOnce(u32) -> Result<()>,
    ) -> Result<u32> {
        if let Some(q) = self.lite_queue(&topic.name, lite) {
            return Ok(q);
        }
        validate_lite_name(lite)?;
        let _guard = self.lite_lock.lock().await;
        if let Some(q) = self.lite_queue(&topic.name, lite) {
            return Ok(q);
        }
        let (count, queue) = {
            let lites = crate::sync::read(&self.lites);
            let table = lites.get(&topic.name);
            (table.map_or(0, |t| t.by_name.len()), table.map_or(LITE_QUEUE_BASE, LiteTable::next_queue))
        };
        let max = self.max_lite_topics;
        if count >= max || queue == u32::MAX {
            return Err(BrokerError::LiteTopicQuotaExceeded(format!(
                "topic {} has {count} lite topics (max-lite-topics is {max}); {lite} was not created",
                topic.name
            )));
        }
        let mut batch = Batch::new();
        let key = Key::LiteTopic { topic: topic.name.clone(), lite: lite.to_string() };
        batch.put(&key, LiteRecord { queue, created_at: now }.encode());
        self.committer.commit(batch).await?;
        open(queue)?;
        crate::sync::write(&self.lites).entry(topic.name.clone()).or_default().insert(lite.into(), queue);
        Ok(queue)
    }
}

/// A new topic record, validated.
pub fn new_record(name: &str, topic_type: TopicType, queue_count: u32, now: Millis, auto: bool) -> Result<TopicRecord> {
    validate_name(name)?;
    if !(1..=1024).contains(&queue_count) {
        return Err(BrokerError::BadRequest(format!("queue count {queue_count} is outside 1..=1024")));
    }
    Ok(TopicRecord { name: name.to_string(), topic_type, queue_count, created_at: now, auto_created: auto })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_rocketmq_rules() {
        assert!(validate_name("orders_v2-%x").is_ok());
        assert!(matches!(validate_name(""), Err(BrokerError::IllegalTopic(_))));
        assert!(matches!(validate_name("a b"), Err(BrokerError::IllegalTopic(_))));
        assert!(matches!(validate_name("a.b"), Err(BrokerError::IllegalTopic(_))));
        assert!(validate_name(&"a".repeat(127)).is_ok());
        assert!(matches!(validate_name(&"a".repeat(128)), Err(BrokerError::IllegalTopic(_))));
    }

    #[test]
    fn system_and_dead_letter_topics_are_reserved() {
        assert!(is_reserved("RMQ_SYS_TRANS_HALF_TOPIC"));
        assert!(is_reserved("%DLQ%group"));
        assert!(is_reserved("%RETRY%group"));
        assert!(!is_reserved("orders"));
    }
}
