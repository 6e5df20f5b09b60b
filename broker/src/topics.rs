//! Topics: name rules and the registry of topic configurations.
//!
//! Names follow RocketMQ: `^[%a-zA-Z0-9_-]+$`, at most 127 characters. Names reserved by
//! RocketMQ for its internals (`RMQ_SYS_*`, `TRANS_CHECK_MAX_TIME_TOPIC`, `SCHEDULE_TOPIC_XXXX`,
//! `%RETRY%…`) and our dead-letter topics (`%DLQ%<group>`) cannot be produced to directly.
//!
//! Owns: the topic registry and the durable topic records, the creation lock (two concurrent
//! auto-creates store one record) and the topic quota. Never touches queues or messages: the
//! caller readies a new topic's queues through the `open` step of [`Topics::create`].

use crate::codec::Record;
use crate::error::{BrokerError, Result};
use crate::model::{Millis, TopicRecord, TopicType};
use crate::store::{scan_prefix, Batch, Committer, Key, Store};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// Longest topic name.
pub const MAX_TOPIC_LEN: usize = 127;

/// Prefix of dead-letter topics: `%DLQ%<consumer group>`.
pub const DLQ_PREFIX: &str = "%DLQ%";

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
    /// Loads every stored topic; new topics are written through `committer`, at most
    /// `max_topics` in all.
    pub fn load(store: &dyn Store, committer: Arc<Committer>, max_topics: usize) -> Result<Self> {
        let mut map = HashMap::new();
        // Topics are few (thousands at most); the scan is bounded anyway.
        for (key, value) in scan_prefix(store, &Key::topic_prefix(), 1_000_000, false)? {
            let record = TopicRecord::decode(&value)
                .map_err(|e| BrokerError::Store(crate::store::StoreError::Corrupt { key, detail: e.to_string() }))?;
            map.insert(record.name.clone(), Arc::new(record));
        }
        Ok(Self { map: RwLock::new(map), committer, create_lock: tokio::sync::Mutex::new(()), max_topics })
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
