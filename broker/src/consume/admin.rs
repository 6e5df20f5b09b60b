//! Operator views of consumer groups and dead letters, and the dead-letter resend.

use super::filter::Filter;
use super::service::{Consumers, Source};
use super::state::Inflight;
use crate::clock::now_ms;
use crate::error::Result;
use crate::log::MessageLog;
use crate::model::Millis;
use crate::model::StoredMessage;
use crate::store::{Batch, Key};
use crate::topics::DLQ_PREFIX;

/// A group's position on one topic.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupTopicStats {
    pub topic: String,
    /// Stored messages never delivered to the group that its filter (that of its latest
    /// receive) accepts, and dead letters resent to it and not delivered yet. Counted by
    /// reading up to [`BACKLOG_SCAN`] undelivered messages; past them every message counts.
    pub backlog: u64,
    /// Delivered and not acked (including those waiting for redelivery).
    pub in_flight: u64,
    /// In flight after more than one delivery.
    pub retrying: u64,
    /// Delay messages held until their delivery time.
    pub deferred: u64,
    /// Per queue, in queue order.
    pub queues: Vec<GroupQueueStats>,
}

/// A group's position in one queue of a topic.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupQueueStats {
    pub queue: u32,
    /// Messages past the group's cursor (unfiltered).
    pub backlog: u64,
    /// When the oldest of them was stored (`None`: nothing waits, or it cannot be read).
    pub oldest_stored_at: Option<Millis>,
    pub in_flight: u64,
}

/// A message a group holds and has not acked, for operators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InflightView {
    pub topic: String,
    pub queue: u32,
    pub offset: u64,
    pub attempt: u32,
    pub visible_at: Millis,
    pub client: String,
    pub delivered_at: Millis,
}

/// Where one message stands for one group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessageState {
    /// Not delivered yet.
    Pending,
    /// A delay message not due yet.
    Deferred {
        visible_at: Millis,
    },
    InFlight {
        attempt: u32,
        client: String,
        visible_at: Millis,
    },
    /// The group's cursor passed it, it is not in flight and not in the group's dead-letter
    /// topic.
    Acked,
    /// Moved to the group's dead-letter topic.
    DeadLettered,
}

/// Messages `group_stats` reads per topic to count a filtered group's backlog; past them the
/// rest counts as backlog whole (an upper bound).
pub const BACKLOG_SCAN: u64 = 10_000;

/// Dead letters resent per durable step of `resend_dead_letters`.
pub const RESEND_PAGE: usize = 256;

/// A message in a dead-letter topic.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub message: StoredMessage,
    /// When an operator last resent it to its group.
    pub resent_at: Option<i64>,
}

impl DeadLetter {
    /// Whether a resend of `ids` (or of `all` not resent before) takes this dead letter.
    fn wanted(&self, ids: &[String], all: bool) -> bool {
        if all {
            self.resent_at.is_none()
        } else {
            ids.contains(&self.message.msg.message_id)
        }
    }
}

/// A group and its positions.
#[derive(Debug, Clone)]
pub struct GroupStats {
    pub name: String,
    pub created_at: i64,
    pub topics: Vec<GroupTopicStats>,
    /// Messages in the group's dead-letter topic.
    pub dead_letters: u64,
    /// Offsets its pull consumers committed: `(topic, queue, offset, end of the queue)`.
    pub pull_offsets: Vec<(String, u32, u64, u64)>,
}

/// Undelivered messages of `ranges` (`(queue, from, to)`) that `filter` accepts, reading at
/// most [`BACKLOG_SCAN`] of them; the unread rest counts whole.
fn filtered_backlog(log: &MessageLog, topic: &str, ranges: &[(u32, u64, u64)], filter: &Filter) -> u64 {
    let mut budget = BACKLOG_SCAN;
    let mut backlog = 0;
    for &(queue, from, to) in ranges {
        let mut at = from;
        while at < to && budget > 0 {
            // A message that cannot be read now (gone, recalled, unreadable) is not backlog.
            if let Ok(Some(m)) = log.read(topic, queue, at) {
                backlog += u64::from(filter.matches(&m.msg));
            }
            at += 1;
            budget -= 1;
        }
        backlog += to - at;
    }
    backlog
}

impl Consumers {
    /// The group's backlog, in-flight and dead-letter counts per topic.
    pub fn group_stats(&self, src: Source<'_>, name: &str) -> Option<GroupStats> {
        let record = self.groups.group(name)?;
        let start = self.settings.new_group_start;
        let mut topics = Vec::new();
        for (topic, shared) in self.groups.topics_of(name) {
            let Some(t) = src.topics.get(&topic) else { continue };
            let mut s = GroupTopicStats { topic: topic.clone(), ..Default::default() };
            // Undelivered ranges under the lock; the filtered count reads messages after it.
            let (ranges, filter) = {
                let st = crate::sync::lock(&shared.state);
                let ranges: Vec<(u32, u64, u64)> = src
                    .queue_offsets(&t)
                    .into_iter()
                    .map(|q| {
                        let from = st.cursor(q.queue).unwrap_or_else(|| super::state::start_offset(start, &q));
                        (q.queue, from.max(q.min), q.durable)
                    })
                    .collect();
                (ranges, st.filter.clone().filter(|f| *f != Filter::All))
            };
            s.backlog = match filter {
                None => ranges.iter().map(|(_, from, to)| to.saturating_sub(*from)).sum(),
                Some(f) => filtered_backlog(src.log, &topic, &ranges, &f),
            };
            let st = crate::sync::lock(&shared.state);
            let now = now_ms();
            s.queues = ranges
                .iter()
                .map(|&(queue, from, to)| GroupQueueStats {
                    queue,
                    backlog: to.saturating_sub(from),
                    // The record's header alone (no body, no half message behind a reference).
                    oldest_stored_at: (from..to.min(from + 16))
                        .find_map(|at| src.log.stored_at(&topic, queue, at).ok().flatten()),
                    in_flight: 0,
                })
                .collect();
            for ((queue, _), r) in st.inflight() {
                if let Some(q) = s.queues.iter_mut().find(|q| q.queue == *queue) {
                    q.in_flight += 1;
                }
                match r.attempt {
                    // Attempt 0: waiting for a first delivery: a delay message not due yet, or
                    // (due now) one resent from the dead-letter topic, which is backlog.
                    0 if r.visible_at > now => s.deferred += 1,
                    0 => s.backlog += 1,
                    1 => s.in_flight += 1,
                    _ => {
                        s.in_flight += 1;
                        s.retrying += 1;
                    }
                }
            }
            topics.push(s);
        }
        let dead_letters = src
            .topics
            .get(&format!("{DLQ_PREFIX}{name}"))
            .map(|t| src.queue_offsets(&t).iter().map(|q| q.durable - q.min).sum())
            .unwrap_or(0);
        let pull_offsets = self
            .pull_offsets(name)
            .into_iter()
            .map(|(t, q, o)| {
                let end = src.log.offsets(&t, q).map_or(o, |x| x.durable);
                (t, q, o, end)
            })
            .collect();
        Some(GroupStats { name: record.name, created_at: record.created_at, topics, dead_letters, pull_offsets })
    }

    /// The group's in-flight messages, delivered longest ago first, at most `limit`.
    pub fn inflight_messages(&self, name: &str, limit: usize) -> Vec<InflightView> {
        let mut out = Vec::new();
        for (topic, shared) in self.groups.topics_of(name) {
            let st = crate::sync::lock(&shared.state);
            out.extend(st.inflight().map(|(&(queue, offset), r)| InflightView {
                topic: topic.clone(),
                queue,
                offset,
                attempt: r.attempt,
                visible_at: r.visible_at,
                client: r.client.clone(),
                delivered_at: r.delivered_at,
            }));
        }
        out.sort_by_key(|m| (m.delivered_at, m.queue, m.offset));
        out.truncate(limit);
        out
    }

    /// Where the message at `(queue, offset)` of `topic` stands for every group that consumes
    /// the topic, by group name.
    pub fn message_states(&self, src: Source<'_>, topic: &str, queue: u32, offset: u64) -> Vec<(String, MessageState)> {
        let start = self.settings.new_group_start;
        let now = now_ms();
        let mut out = Vec::new();
        for g in self.groups.list() {
            let Some((_, shared)) = self.groups.topics_of(&g.name).into_iter().find(|(t, _)| t == topic) else {
                continue;
            };
            // Under the lock: its in-flight record, or whether the cursor passed it; the
            // dead-letter lookup reads the log after.
            let held = {
                let st = crate::sync::lock(&shared.state);
                match st.get((queue, offset)) {
                    Some(r) if r.attempt == 0 && r.visible_at > now => {
                        Err(MessageState::Deferred { visible_at: r.visible_at })
                    }
                    Some(r) if r.attempt == 0 => Err(MessageState::Pending),
                    Some(r) => Err(MessageState::InFlight {
                        attempt: r.attempt,
                        client: r.client.clone(),
                        visible_at: r.visible_at,
                    }),
                    None => Ok(st.cursor(queue)),
                }
            };
            let state = match held {
                Err(state) => state,
                Ok(cursor) => {
                    let cursor =
                        cursor.or_else(|| src.log.offsets(topic, queue).map(|q| super::state::start_offset(start, &q)));
                    if cursor.is_none_or(|c| offset >= c) {
                        MessageState::Pending
                    } else if Self::already_dead_lettered(src.log, &g.name, topic, (queue, offset)).unwrap_or(false) {
                        MessageState::DeadLettered
                    } else {
                        MessageState::Acked
                    }
                }
            };
            out.push((g.name.clone(), state));
        }
        out
    }

    /// How many dead letters [`Consumers::resend_dead_letters`] would resend with these
    /// arguments, resending nothing.
    pub fn count_resendable(&self, src: Source<'_>, group: &str, ids: &[String], all: bool) -> Result<usize> {
        let mut n = 0;
        self.for_each_dead_letter(src, group, |letter| {
            n += usize::from(letter.wanted(ids, all) && letter.message.msg.origin_topic.is_some());
            true
        })?;
        Ok(n)
    }

    /// Messages in the group's dead-letter topic, oldest first, at most `limit`, each with
    /// when it was last resent (if it was).
    pub fn dead_letters(&self, src: Source<'_>, group: &str, limit: usize) -> Result<Vec<DeadLetter>> {
        let mut out = Vec::new();
        self.for_each_dead_letter(src, group, |letter| {
            out.push(letter);
            out.len() < limit
        })?;
        Ok(out)
    }

    /// Visits the group's dead letters oldest first, reading one message at a time so that
    /// memory stays bounded whatever their number; stops when `visit` returns false.
    fn for_each_dead_letter(
        &self,
        src: Source<'_>,
        group: &str,
        mut visit: impl FnMut(DeadLetter) -> bool,
    ) -> Result<()> {
        let Some(t) = src.topics.get(&format!("{DLQ_PREFIX}{group}")) else { return Ok(()) };
        for q in src.queue_offsets(&t) {
            for offset in q.min..q.durable {
                if let Some(letter) = self.dead_letter_at(src, &t.name, q.queue, offset)? {
                    if !visit(letter) {
                        return Ok(());
                    }
                }
            }
        }
        Ok(())
    }

    fn dead_letter_at(&self, src: Source<'_>, dlq: &str, queue: u32, offset: u64) -> Result<Option<DeadLetter>> {
        let Some(message) = src.log.read(dlq, queue, offset)? else { return Ok(None) };
        let marker = Key::DeadLetterResent { topic: dlq.to_string(), queue, offset };
        let resent_at = self
            .store
            .get(&marker.encode())?
            .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
            .map(i64::from_be_bytes);
        Ok(Some(DeadLetter { message, resent_at }))
    }

    /// Makes dead letters of `group` deliverable to it again: each original message is put
    /// back in flight for the group, due now, with its attempts starting over, and its copy in
    /// the dead-letter topic is marked resent (it stays there as a record until retention).
    /// `all` resends every dead letter not resent before; `ids` names messages to resend
    /// whether or not they were. Reads at most [`RESEND_PAGE`] messages, resends them durably,
    /// then reads the next page. Returns how many were resent.
    pub async fn resend_dead_letters(&self, src: Source<'_>, group: &str, ids: &[String], all: bool) -> Result<usize> {
        let Some(t) = src.topics.get(&format!("{DLQ_PREFIX}{group}")) else { return Ok(0) };
        let mut resent = 0;
        for q in src.queue_offsets(&t) {
            let mut from = q.min;
            while from < q.durable {
                let to = q.durable.min(from + RESEND_PAGE as u64);
                let mut page = Vec::with_capacity(RESEND_PAGE);
                for offset in from..to {
                    let Some(letter) = self.dead_letter_at(src, &t.name, q.queue, offset)? else { continue };
                    if letter.wanted(ids, all) {
                        page.push(letter.message);
                    }
                }
                for m in page {
                    if self.resend_one(src.log, group, m).await? {
                        resent += 1;
                    }
                }
                from = to;
            }
        }
        Ok(resent)
    }

    /// Puts the original of one dead letter back in flight for `group` and marks the copy.
    async fn resend_one(&self, log: &MessageLog, group: &str, dead: StoredMessage) -> Result<bool> {
        let Some(origin) = dead.msg.origin_topic.clone() else { return Ok(false) };
        let Some((queue, offset)) = log.locate(&origin, &dead.msg.message_id)? else {
            tracing::warn!(
                group,
                topic = origin,
                message_id = dead.msg.message_id,
                "original message is gone; not resent"
            );
            return Ok(false);
        };
        let shared = self.groups.get_or_create(group, &origin)?;
        let slot = self.committer.reserve().await?;
        let pending = {
            let mut st = crate::sync::lock(&shared.state);
            let mut batch = Batch::new();
            let now = now_ms();
            let rec = Inflight {
                attempt: 0,
                visible_at: now,
                nonce: 0,
                message_group: dead.msg.message_group.clone(),
                client: String::new(),
                auto_renew: false,
                delivered_at: now,
            };
            st.deliver((queue, offset), rec, &mut batch);
            let marker =
                Key::DeadLetterResent { topic: dead.msg.topic.clone(), queue: dead.queue, offset: dead.offset };
            batch.put(&marker, now.to_be_bytes().to_vec());
            slot.submit(batch, None)
        };
        pending.durable().await?;
        shared.wake();
        Ok(true)
    }
}
