//! Pull consumers: offset-based reads of one queue (PullMessage), and the offsets a pull group
//! commits (UpdateOffset, GetOffset) or looks up (QueryOffset: beginning, end, by time).
//!
//! Owns (as part of [`Consumers`]): the committed offsets of pull groups, one per (group,
//! topic, queue), durable under `Key::PullOffset` and kept in memory. Pulling reads the log and
//! changes nothing: a pull group's position is what it commits, so it coexists with the POP
//! (receive/ack) state of other groups on the same topic and never touches it.

use super::filter::Filter;
use super::service::{Consumers, Source, MAX_BATCH, MAX_BATCH_BYTES};
use super::state::SCAN_BUDGET;
use super::validate_group;
use crate::error::{BrokerError, Result};
use crate::log::QueueOffsets;
use crate::model::{Millis, StoredMessage};
use crate::store::{scan_prefix, Batch, Key, Store, StoreError};
use std::collections::HashMap;
use std::sync::RwLock;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// A PullMessage call, validated.
pub struct PullRequest {
    pub group: String,
    pub topic: String,
    pub queue: u32,
    pub offset: u64,
    pub batch: usize,
    pub filter: Filter,
    /// How long to wait for a message when none is at `offset` yet.
    pub poll: Duration,
}

/// What a pull read: the messages (those the filter passed) and where to pull next.
#[derive(Debug)]
pub struct Pulled {
    pub messages: Vec<StoredMessage>,
    pub next_offset: u64,
}

/// Where QueryOffset looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetQuery {
    /// The lowest retained offset.
    Beginning,
    /// The offset the next stored message will get.
    End,
    /// The first message stored at or after this time (the end if none).
    Time(Millis),
}

/// Committed pull offsets, loaded at start.
#[derive(Default)]
pub(super) struct PullOffsets {
    map: RwLock<HashMap<(String, String, u32), u64>>,
}

impl PullOffsets {
    pub(super) fn load(store: &dyn Store) -> Result<Self> {
        let mut map = HashMap::new();
        for (k, v) in scan_prefix(store, &Key::pull_offset_prefix(), usize::MAX, false)? {
            let Ok(Key::PullOffset { group, topic, queue }) = Key::decode(&k) else {
                return Err(StoreError::Corrupt { key: k, detail: "not a pull-offset key".into() }.into());
            };
            let offset = <[u8; 8]>::try_from(v.as_slice())
                .map(u64::from_be_bytes)
                .map_err(|_| StoreError::Corrupt { key: k.clone(), detail: "pull offset is not 8 bytes".into() })?;
            map.insert((group, topic, queue), offset);
        }
        Ok(Self { map: RwLock::new(map) })
    }
}

/// The queue's offsets, or an error naming the queue.
fn queue(src: Source<'_>, topic: &str, queue: u32) -> Result<QueueOffsets> {
    let t = src.topics.get(topic).ok_or_else(|| BrokerError::TopicNotFound(topic.to_string()))?;
    if queue >= t.queue_count {
        return Err(BrokerError::BadRequest(format!("topic {topic} has queues 0 to {}", t.queue_count - 1)));
    }
    src.log.offsets(topic, queue).ok_or_else(|| BrokerError::Internal(format!("queue {queue} of {topic} is not open")))
}

impl Consumers {
    /// Reads up to `req.batch` messages of one queue from `req.offset` (from the lowest
    /// retained offset if that one is gone), waiting up to `req.poll` when there is none yet.
    /// Messages the filter rejects are passed over; `next_offset` is past every message read.
    pub async fn pull(&self, src: Source<'_>, req: &PullRequest, shutdown: &CancellationToken) -> Result<Pulled> {
        validate_group(&req.group)?;
        let mut watch = src.log.topic_watch(&req.topic);
        let deadline = Instant::now() + req.poll;
        loop {
            watch.borrow_and_update();
            let offsets = queue(src, &req.topic, req.queue)?;
            if req.offset > offsets.durable {
                return Err(BrokerError::BadRequest(format!(
                    "offset {} is past the end of queue {} of {} ({})",
                    req.offset, req.queue, req.topic, offsets.durable
                )));
            }
            let start = req.offset.max(offsets.min);
            let (mut cur, mut bytes, mut messages) = (start, 0usize, Vec::new());
            // At most a budget of messages read, matching or not: `next_offset` tells the
            // client where to go on.
            let end = offsets.durable.min(start.saturating_add(SCAN_BUDGET as u64));
            while messages.len() < req.batch.clamp(1, MAX_BATCH) && cur < end {
                if let Some(m) = src.log.read(&req.topic, req.queue, cur)? {
                    if !messages.is_empty() && bytes + m.wire_len() > MAX_BATCH_BYTES {
                        break;
                    }
                    if req.filter.matches(&m.msg) {
                        bytes += m.wire_len();
                        messages.push(m);
                    }
                }
                cur += 1;
            }
            if cur > start || Instant::now() >= deadline {
                return Ok(Pulled { messages, next_offset: cur });
            }
            tokio::select! {
                _ = watch.changed() => {}
                _ = tokio::time::sleep_until(deadline) => {}
                _ = shutdown.cancelled() => return Ok(Pulled { messages, next_offset: cur }),
            }
        }
    }

    /// Commits a pull group's offset in one queue, durably (creating the group on first use).
    pub async fn update_offset(&self, src: Source<'_>, group: &str, topic: &str, q: u32, offset: u64) -> Result<()> {
        let offsets = queue(src, topic, q)?;
        if offset > offsets.durable {
            return Err(BrokerError::BadRequest(format!(
                "offset {offset} is past the end of queue {q} of {topic} ({})",
                offsets.durable
            )));
        }
        self.ensure_group(group).await?;
        let key = (group.to_string(), topic.to_string(), q);
        let mut batch = Batch::new();
        batch.put(
            &Key::PullOffset { group: key.0.clone(), topic: key.1.clone(), queue: q },
            offset.to_be_bytes().to_vec(),
        );
        self.committer.commit(batch).await?;
        crate::sync::write(&self.pull_offsets.map).insert(key, offset);
        Ok(())
    }

    /// The offset a pull group last committed in one queue.
    pub fn get_offset(&self, src: Source<'_>, group: &str, topic: &str, q: u32) -> Result<u64> {
        validate_group(group)?;
        queue(src, topic, q)?;
        crate::sync::read(&self.pull_offsets.map)
            .get(&(group.to_string(), topic.to_string(), q))
            .copied()
            .ok_or_else(|| BrokerError::NotFound(format!("group {group} committed no offset in queue {q} of {topic}")))
    }

    /// Committed pull offsets of a group, as `(topic, queue, offset)`, sorted.
    pub fn pull_offsets(&self, group: &str) -> Vec<(String, u32, u64)> {
        let mut v: Vec<_> = crate::sync::read(&self.pull_offsets.map)
            .iter()
            .filter(|((g, _, _), _)| g == group)
            .map(|((_, t, q), o)| (t.clone(), *q, *o))
            .collect();
        v.sort();
        v
    }
}

/// QueryOffset: the beginning or end of a queue, or the first message stored at or after a
/// time (a binary search over store times, which grow with offsets).
pub fn query_offset(src: Source<'_>, topic: &str, q: u32, at: OffsetQuery) -> Result<u64> {
    let offsets = queue(src, topic, q)?;
    let time = match at {
        OffsetQuery::Beginning => return Ok(offsets.min),
        OffsetQuery::End => return Ok(offsets.durable),
        OffsetQuery::Time(t) => t,
    };
    let (mut lo, mut hi) = (offsets.min, offsets.durable);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        // A message removed meanwhile (retention) counts as older than any time asked. Only the
        // record's header is read.
        let older = src.log.stored_at(topic, q, mid)?.is_none_or(|at| at < time);
        if older {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    Ok(lo)
}
