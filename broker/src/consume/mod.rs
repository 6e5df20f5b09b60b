//! Consumption in RocketMQ 5's POP model ("simple consumer").
//!
//! A consumer group sees every message of the topics it receives from; within the group each
//! message goes to one consumer at a time. Receiving makes a message invisible to the group for
//! its invisible duration; an ack removes it for the group; if no ack comes in time it is
//! delivered again with `delivery_attempt + 1` and a new receipt handle (the old one is then
//! refused); after the group's attempt limit it moves to the dead-letter topic
//! `%DLQ%<group>`, which keeps the original topic and message id.
//!
//! FIFO messages: one message per message group is in flight at a time. Delay messages: not
//! delivered before their delivery time. Filters: tag expressions (`*`, `a||b`).
//!
//! Durability: acks, invisibility changes and dead-letter moves are fsynced before the RPC
//! answers; a receive's delivery records (in-flight entry, cursor) are queued for the next
//! group commit and the messages go out without waiting (a lost record means the message is
//! delivered again). The in-memory state is rebuilt from the store at start: acked messages
//! stay acked across restarts, un-acked ones come back.
//!
//! # Layout
//! - [`state`]: the pure per-(group, topic) state machine.
//! - [`service`]: [`Consumers`], the part that owns groups and their state: receive / ack /
//!   change-invisible / dead-letter over the store (async).
//! - [`admin`]: group statistics, dead-letter listing and resend.
//! - [`pull`]: pull consumers: offset reads of one queue and committed offsets.
//! - [`filter`], [`handle`]: tag filters and receipt handles.

pub mod admin;
pub mod filter;
pub mod handle;
pub mod lite;
pub mod pull;
pub mod service;
pub mod sql;
pub mod state;

pub use service::{ConsumeSettings, Consumers, Source};
pub use state::SCAN_BUDGET;

use crate::codec::{CodecError, Decoder, Encoder, Record};
use crate::error::{BrokerError, Result};
use crate::model::Millis;
use crate::store::{scan_prefix, Key, Store, StoreError};
use state::{GroupTopic, Inflight};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use tokio::sync::watch;

/// Longest consumer group name: `%DLQ%` + name must still be a valid topic name.
pub const MAX_GROUP_LEN: usize = 120;

/// Checks a consumer group name: letters, digits, `%`, `_`, `-`; at most 120 characters.
pub fn validate_group(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > MAX_GROUP_LEN {
        return Err(BrokerError::IllegalGroup(format!("group name must be 1 to {MAX_GROUP_LEN} characters")));
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '%' | '_' | '-'))) {
        return Err(BrokerError::IllegalGroup(format!("group name {name:?} contains {c:?}")));
    }
    Ok(())
}

/// Where a new consumer group starts reading a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    /// At the oldest retained message: nothing published before the first start is missed.
    Earliest,
    /// At the end: only messages stored after the group's first receive.
    Latest,
}

/// A consumer group as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupRecord {
    pub name: String,
    pub created_at: Millis,
}

impl Record for GroupRecord {
    const KIND: &'static str = "group record";
    const VERSION: u8 = 1;

    fn write(&self, e: &mut Encoder) {
        e.str(&self.name).i64(self.created_at);
    }

    fn read(d: &mut Decoder<'_>, _version: u8) -> std::result::Result<Self, CodecError> {
        Ok(GroupRecord { name: d.str()?, created_at: d.i64()? })
    }
}

/// One group's state on one topic plus a signal that wakes its long polls (acks free FIFO
/// groups, invisibility changes move due times).
pub struct Shared {
    pub state: Mutex<GroupTopic>,
    pub signal: watch::Sender<u64>,
}

impl Shared {
    fn new(state: GroupTopic) -> Self {
        Self { state: Mutex::new(state), signal: watch::channel(0).0 }
    }

    pub fn wake(&self) {
        self.signal.send_modify(|g| *g = g.wrapping_add(1));
    }
}

/// Every group's consumption state, loaded from the store at start.
#[derive(Default)]
pub struct Groups {
    groups: RwLock<HashMap<String, GroupRecord>>,
    states: RwLock<HashMap<(String, String), Arc<Shared>>>,
}

fn corrupt(key: Vec<u8>, e: impl std::fmt::Display) -> BrokerError {
    StoreError::Corrupt { key, detail: e.to_string() }.into()
}

impl Groups {
    /// Loads groups, cursors and in-flight records.
    pub fn load(store: &dyn Store) -> Result<Self> {
        let mut groups = HashMap::new();
        let mut states: HashMap<(String, String), GroupTopic> = HashMap::new();
        for (k, v) in scan_prefix(store, &Key::group_prefix(), usize::MAX, false)? {
            let g = GroupRecord::decode(&v).map_err(|e| corrupt(k.clone(), e))?;
            for (k, v) in scan_prefix(store, &Key::cursor_prefix(&g.name), usize::MAX, false)? {
                let Ok(Key::Cursor { group, topic, queue }) = Key::decode(&k) else {
                    return Err(corrupt(k, "not a cursor key"));
                };
                let next = Decoder::new(&v).u64().map_err(|e| corrupt(k.clone(), e))?;
                states
                    .entry((group.clone(), topic.clone()))
                    .or_insert_with(|| GroupTopic::new(&group, &topic))
                    .load_cursor(queue, next);
            }
            for (k, v) in scan_prefix(store, &Key::inflight_prefix(&g.name), usize::MAX, false)? {
                let Ok(Key::Inflight { group, topic, queue, offset }) = Key::decode(&k) else {
                    return Err(corrupt(k, "not an in-flight key"));
                };
                let rec = Inflight::decode(&v).map_err(|e| corrupt(k.clone(), e))?;
                states
                    .entry((group.clone(), topic.clone()))
                    .or_insert_with(|| GroupTopic::new(&group, &topic))
                    .load_inflight((queue, offset), rec);
            }
            groups.insert(g.name.clone(), g);
        }
        let states = states.into_iter().map(|(k, s)| (k, Arc::new(Shared::new(s)))).collect();
        Ok(Self { groups: RwLock::new(groups), states: RwLock::new(states) })
    }

    pub fn group(&self, name: &str) -> Option<GroupRecord> {
        crate::sync::read(&self.groups).get(name).cloned()
    }

    pub fn insert_group(&self, g: GroupRecord) {
        crate::sync::write(&self.groups).insert(g.name.clone(), g);
    }

    /// Number of groups.
    pub fn len(&self) -> usize {
        crate::sync::read(&self.groups).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// All groups, sorted by name.
    pub fn list(&self) -> Vec<GroupRecord> {
        let mut v: Vec<_> = crate::sync::read(&self.groups).values().cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// The state of `group` on `topic`, if it has received from it.
    pub fn get(&self, group: &str, topic: &str) -> Option<Arc<Shared>> {
        crate::sync::read(&self.states).get(&(group.to_string(), topic.to_string())).cloned()
    }

    /// The state of `group` on `topic`, created empty when new.
    pub fn get_or_create(&self, group: &str, topic: &str) -> Result<Arc<Shared>> {
        if let Some(s) = self.get(group, topic) {
            return Ok(s);
        }
        let mut m = crate::sync::write(&self.states);
        Ok(m.entry((group.to_string(), topic.to_string()))
            .or_insert_with(|| Arc::new(Shared::new(GroupTopic::new(group, topic))))
            .clone())
    }

    /// Topics a group has state on.
    pub fn topics_of(&self, group: &str) -> Vec<(String, Arc<Shared>)> {
        let m = crate::sync::read(&self.states);
        let mut v: Vec<_> =
            m.iter().filter(|((g, _), _)| g == group).map(|((_, t), s)| (t.clone(), s.clone())).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
}
