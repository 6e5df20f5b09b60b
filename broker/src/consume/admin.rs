//! Operator views of consumer groups and dead letters.

use super::state::Inflight;
use crate::broker::{now_ms, Broker};
use crate::error::{BrokerError, Result};
use crate::model::StoredMessage;
use crate::store::Batch;
use crate::topics::DLQ_PREFIX;

/// A group's position on one topic.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupTopicStats {
    pub topic: String,
    /// Stored messages never delivered to the group.
    pub backlog: u64,
    /// Delivered and not acked (including those waiting for redelivery).
    pub in_flight: u64,
    /// In flight after more than one delivery.
    pub retrying: u64,
    /// Delay messages held until their delivery time.
    pub deferred: u64,
}

/// A group and its positions.
#[derive(Debug, Clone)]
pub struct GroupStats {
    pub name: String,
    pub created_at: i64,
    pub topics: Vec<GroupTopicStats>,
    /// Messages in the group's dead-letter topic.
    pub dead_letters: u64,
}

impl Broker {
    /// The group's backlog, in-flight and dead-letter counts per topic.
    pub fn group_stats(&self, name: &str) -> Option<GroupStats> {
        let record = self.groups().group(name)?;
        let start = self.config().new_group_start;
        let mut topics = Vec::new();
        for (topic, shared) in self.groups().topics_of(name) {
            let Some(t) = self.topic(&topic) else { continue };
            let Ok(st) = shared.state.lock() else { continue };
            let mut s = GroupTopicStats { topic: topic.clone(), ..Default::default() };
            for q in self.queue_offsets(&t) {
                let from = st.cursor(q.queue).unwrap_or(match start {
                    super::StartAt::Earliest => q.min,
                    super::StartAt::Latest => q.durable,
                });
                s.backlog += q.durable.saturating_sub(from.max(q.min));
            }
            for (_, r) in st.inflight() {
                match r.attempt {
                    0 => s.deferred += 1,
                    1 => s.in_flight += 1,
                    _ => {
                        s.in_flight += 1;
                        s.retrying += 1;
                    }
                }
            }
            topics.push(s);
        }
        let dead_letters = self
            .topic(&format!("{DLQ_PREFIX}{name}"))
            .map(|t| self.queue_offsets(&t).iter().map(|q| q.durable - q.min).sum())
            .unwrap_or(0);
        Some(GroupStats { name: record.name, created_at: record.created_at, topics, dead_letters })
    }

    /// Messages in the group's dead-letter topic, oldest first.
    pub fn dead_letters(&self, group: &str, limit: usize) -> Result<Vec<StoredMessage>> {
        let Some(t) = self.topic(&format!("{DLQ_PREFIX}{group}")) else { return Ok(Vec::new()) };
        let mut out = Vec::new();
        for q in self.queue_offsets(&t) {
            for offset in q.min..q.durable {
                if out.len() >= limit {
                    return Ok(out);
                }
                if let Some(m) = self.log().read(&t.name, q.queue, offset)? {
                    out.push(m);
                }
            }
        }
        Ok(out)
    }

    /// Makes dead letters of `group` deliverable to it again: each original message is put
    /// back in flight for the group, due now, with its attempts starting over. The copies stay
    /// in the dead-letter topic as a record. Returns how many were resent.
    pub async fn resend_dead_letters(&self, group: &str, ids: &[String], all: bool) -> Result<usize> {
        let letters = self.dead_letters(group, 100_000)?;
        let mut resent = 0;
        for m in letters.into_iter().filter(|m| all || ids.contains(&m.msg.message_id)) {
            let Some(origin) = m.msg.origin_topic.clone() else { continue };
            let Some((queue, offset)) = self.log().locate(&origin, &m.msg.message_id)? else {
                tracing::warn!(
                    group,
                    topic = origin,
                    message_id = m.msg.message_id,
                    "original message is gone; not resent"
                );
                continue;
            };
            let shared = self.groups().get_or_create(group, &origin)?;
            let slot = self.committer().reserve().await?;
            let pending = {
                let mut st =
                    shared.state.lock().map_err(|_| BrokerError::Internal("group state lock poisoned".into()))?;
                let mut batch = Batch::new();
                let rec = Inflight {
                    attempt: 0,
                    visible_at: now_ms(),
                    nonce: 0,
                    message_group: m.msg.message_group.clone(),
                    client: String::new(),
                    auto_renew: false,
                    delivered_at: now_ms(),
                };
                st.deliver((queue, offset), rec, &mut batch);
                slot.submit(batch, None)
            };
            pending.durable().await?;
            shared.wake();
            resent += 1;
        }
        Ok(resent)
    }
}
