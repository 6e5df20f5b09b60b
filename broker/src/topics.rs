//! Topics: name rules and the registry of topic configurations.
//!
//! Names follow RocketMQ: `^[%a-zA-Z0-9_-]+$`, at most 127 characters. Names reserved by
//! RocketMQ for its internals (`RMQ_SYS_*`, `TRANS_CHECK_MAX_TIME_TOPIC`, `SCHEDULE_TOPIC_XXXX`,
//! `%RETRY%…`) and our dead-letter topics (`%DLQ%<group>`) cannot be produced to directly.

use crate::error::{BrokerError, Result};
use crate::model::{Millis, TopicRecord, TopicType};
use crate::store::{scan_prefix, Key, Store};
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

/// The in-memory view of every topic, loaded from the store at start.
#[derive(Debug, Default)]
pub struct Topics {
    map: RwLock<HashMap<String, Arc<TopicRecord>>>,
}

impl Topics {
    /// Loads every stored topic.
    pub fn load(store: &dyn Store) -> Result<Self> {
        let mut map = HashMap::new();
        // Topics are few (thousands at most); the scan is bounded anyway.
        for (key, value) in scan_prefix(store, &Key::topic_prefix(), 1_000_000, false)? {
            let record = TopicRecord::decode(&value)
                .map_err(|e| BrokerError::Store(crate::store::StoreError::Corrupt { key, detail: e.to_string() }))?;
            map.insert(record.name.clone(), Arc::new(record));
        }
        Ok(Self { map: RwLock::new(map) })
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

    /// Records a topic once it is durable.
    pub fn insert(&self, record: TopicRecord) -> Arc<TopicRecord> {
        let record = Arc::new(record);
        crate::sync::write(&self.map).insert(record.name.clone(), record.clone());
        record
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
