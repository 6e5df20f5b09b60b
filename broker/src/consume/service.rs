//! [`Consumers`]: receive, ack, change invisibility and dead-letter — the async shell around
//! [`GroupTopic`].
//!
//! Owns: consumer groups (records, their creation lock and quota) and every group's
//! consumption state (cursors, in-flight records, resend markers, pull offsets). Reads topics and queues
//! through a [`Source`] and appends only to dead-letter topics; never touches transactions or
//! another part's keys.
//!
//! Each operation reserves a place in the group-commit queue first, then changes the in-memory
//! state and submits its writes under the state's lock (so writes reach the store in the order
//! the state changed), and answers once they are durable — except a receive, whose delivery
//! records only need to reach the store before anything that depends on them (see `poll_once`).
//!
//! [`GroupTopic`]: super::state::GroupTopic

use super::filter::Filter;
use super::lite::{Evicted, LiteSubscriptions, SubscriptionView, SyncAction};
use super::state::{HandleError, PollRules, Pos};
use super::{handle, validate_group, GroupRecord, Groups, Shared, StartAt};
use crate::clock::now_ms;
use crate::codec::Record;
use crate::error::{BrokerError, Result};
use crate::log::{MessageLog, QueueOffsets, Target};
use crate::metrics::Metrics;
use crate::model::{dead_letter_index_id, Millis, StoredMessage, TopicRecord, TopicType};
use crate::store::{Batch, Committer, Key, Store};
use crate::topics::{self, IfExists, Topics, DLQ_PREFIX};

/// Property of a dead letter: why it was moved ("delivery attempts exhausted", "forwarded by
/// the consumer").
pub const DLQ_REASON: &str = "TXMQ_DLQ_REASON";
/// Property of a dead letter: deliveries to its group before the move.
pub const DLQ_ATTEMPTS: &str = "TXMQ_DLQ_ATTEMPTS";
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Invisibility the broker uses for `auto_renew` receives, renewed while the consumer lives.
const AUTO_RENEW_INVISIBLE_MS: Millis = 60_000;
/// Renewals stop after this long, and the message is redelivered.
const AUTO_RENEW_LIMIT_MS: Millis = 3 * 3600 * 1000;
/// Pause before a failed dead-letter move is tried again.
pub const DEAD_LETTER_RETRY_MS: Millis = 1000;
/// Longest invisible duration a receive may ask for.
pub const MAX_INVISIBLE: Duration = Duration::from_secs(12 * 3600);
/// Most messages one receive returns.
pub const MAX_BATCH: usize = 64;
/// Most message bytes (as delivered) one receive returns; each message is also its own gRPC
/// message, which input limits keep under the clients' 4 MiB.
pub const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;

/// The invisible-duration rule: between `min` (`--min-invisible` for receives; none for
/// ChangeInvisibleDuration, where 0 means "visible again now") and [`MAX_INVISIBLE`].
pub fn check_invisible(d: Duration, min: Duration) -> Result<()> {
    if d < min || d > MAX_INVISIBLE {
        return Err(BrokerError::IllegalInvisibleTime(format!("invisible duration {d:?} is outside {min:?} to 12 h")));
    }
    Ok(())
}

/// A receive call, validated.
pub struct ReceiveRequest<'a> {
    pub group: String,
    pub topic: String,
    pub filter: Filter,
    pub batch: usize,
    pub invisible: Duration,
    pub auto_renew: bool,
    /// How long to wait for a message when none is ready.
    pub poll: Duration,
    pub client: String,
    /// Whether a client is still connected (for `auto_renew` renewals).
    pub alive: &'a (dyn Fn(&str) -> bool + Sync),
}

/// Where a lite subscriber starts in a lite topic it subscribes to (SyncLiteSubscription's
/// `offset_option`); without one, the group goes on where it was, or from the lite topic's
/// oldest message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LiteStart {
    Oldest,
    End,
    Offset(u64),
    /// This many messages before the end.
    Tail(u64),
}

/// One message handed to a consumer.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub message: StoredMessage,
    pub handle: String,
    pub attempt: u32,
    pub invisible_ms: Millis,
}

static NONCE: AtomicU64 = AtomicU64::new(0);

/// A fresh delivery nonce: time-seeded so that it differs across restarts.
fn next_nonce() -> u64 {
    let base = (now_ms() as u64) << 16;
    let n = NONCE.fetch_add(1, Ordering::Relaxed);
    base.wrapping_add(n) | 1
}

fn invalid_handle(e: HandleError) -> BrokerError {
    BrokerError::InvalidReceiptHandle(
        match e {
            HandleError::NotInFlight => "nothing in flight for this handle (acked already, dead-lettered or unknown)",
            HandleError::Stale => "the message was delivered again since this handle was issued",
        }
        .into(),
    )
}

/// The consumption settings of the broker's configuration.
#[derive(Debug, Clone)]
pub struct ConsumeSettings {
    pub max_groups: usize,
    /// Deliveries of one message to a group before it is dead-lettered.
    pub max_delivery_attempts: u32,
    pub new_group_start: StartAt,
    /// Lite topics subscribed at most, all lite consumers together.
    pub max_lite_subscriptions: usize,
    /// A lite topic has one subscriber per group at a time (see `consume::lite`).
    pub lite_exclusive: bool,
}

/// What consumption reads of the rest of the broker: the topics and their queues. It appends
/// only to dead-letter topics, which it may create.
#[derive(Clone, Copy)]
pub struct Source<'a> {
    pub topics: &'a Topics,
    pub log: &'a MessageLog,
}

impl Source<'_> {
    /// Offsets of every queue of a topic (a LITE topic's: of its lite topics).
    pub fn queue_offsets(&self, topic: &TopicRecord) -> Vec<QueueOffsets> {
        self.topics.queues(topic).into_iter().filter_map(|q| self.log.offsets(&topic.name, q)).collect()
    }

    /// The group's dead-letter topic, created (one queue) on first use.
    async fn dead_letter_topic(&self, group: &str) -> Result<Arc<TopicRecord>> {
        let name = format!("{DLQ_PREFIX}{group}");
        if let Some(t) = self.topics.get(&name) {
            return Ok(t);
        }
        let record = topics::new_record(&name, TopicType::Mixed, 1, now_ms(), true)?;
        self.topics.create(record, IfExists::Use, |r| self.log.open_topic(&r.name, r.queue_count)).await
    }
}

/// Every consumer group and its consumption state.
pub struct Consumers {
    pub(super) groups: Groups,
    pub(super) store: Arc<dyn Store>,
    pub(super) committer: Arc<Committer>,
    metrics: Arc<Metrics>,
    pub(super) settings: ConsumeSettings,
    pub(super) pull_offsets: super::pull::PullOffsets,
    pub(super) lite: LiteSubscriptions,
    /// Serializes group creation, so two concurrent first receives store one record.
    create_lock: tokio::sync::Mutex<()>,
}

impl Consumers {
    /// Loads every group's state from `store`; changes are written through `committer`.
    pub fn load(
        store: Arc<dyn Store>,
        committer: Arc<Committer>,
        metrics: Arc<Metrics>,
        settings: ConsumeSettings,
    ) -> Result<Self> {
        let groups = Groups::load(store.as_ref())?;
        let pull_offsets = super::pull::PullOffsets::load(store.as_ref())?;
        let lite = LiteSubscriptions::new(settings.max_lite_subscriptions, settings.lite_exclusive);
        Ok(Self {
            groups,
            store,
            committer,
            metrics,
            settings,
            pull_offsets,
            lite,
            create_lock: tokio::sync::Mutex::new(()),
        })
    }

    /// A group's record.
    pub fn group(&self, name: &str) -> Option<GroupRecord> {
        self.groups.group(name)
    }

    /// Every group, sorted by name.
    pub fn list(&self) -> Vec<GroupRecord> {
        self.groups.list()
    }

    /// The group, created durably on first use.
    pub async fn ensure_group(&self, name: &str) -> Result<GroupRecord> {
        validate_group(name)?;
        if let Some(g) = self.groups.group(name) {
            return Ok(g);
        }
        let _guard = self.create_lock.lock().await;
        if let Some(g) = self.groups.group(name) {
            return Ok(g);
        }
        let max = self.settings.max_groups;
        if self.groups.len() >= max {
            return Err(BrokerError::QuotaExceeded(format!(
                "{max} consumer groups exist (max-groups); {name} was not created"
            )));
        }
        let g = GroupRecord { name: name.to_string(), created_at: now_ms() };
        let mut batch = Batch::new();
        batch.put(&Key::Group(name.to_string()), g.encode());
        self.committer.commit(batch).await?;
        tracing::info!(group = name, "consumer group created");
        self.groups.insert_group(g.clone());
        Ok(g)
    }

    /// Delivers up to `req.batch` messages, waiting up to `req.poll` for one to be ready.
    /// An empty answer means nothing was ready in time (or the broker is shutting down).
    pub async fn receive(
        &self,
        src: Source<'_>,
        req: &ReceiveRequest<'_>,
        shutdown: &CancellationToken,
    ) -> Result<Vec<Delivery>> {
        // The topic first: a receive from a topic that does not exist creates no group.
        let topic = src.topics.get(&req.topic).ok_or_else(|| BrokerError::TopicNotFound(req.topic.clone()))?;
        self.ensure_group(&req.group).await?;
        let shared = self.groups.get_or_create(&req.group, &req.topic)?;
        let mut topic_rx = src.log.topic_watch(&req.topic);
        let mut group_rx = shared.signal.subscribe();
        let deadline = Instant::now() + req.poll;
        let lite = topic.topic_type == TopicType::Lite;
        loop {
            topic_rx.borrow_and_update();
            group_rx.borrow_and_update();
            // A lite consumer reads the lite topics it subscribes to now (its set may change
            // while it waits); anyone else every queue of the topic.
            let queues = if lite { self.lite_queues(src, req) } else { src.topics.queues(&topic) };
            let (deliveries, dead, next_due, more) = self.poll_once(src.log, &shared, &topic, &queues, req).await?;
            // A failed move is reported and retried by a later poll; it must not fail this
            // consumer's receive. Nor may a receive cancelled during the moves (its deadline, or
            // the client gone) leave the messages not moved yet parked: `parked` makes them due.
            let mut parked = Parked::new(&shared, dead.iter().map(|(pos, _)| *pos).collect());
            for (pos, message) in dead {
                if self.dead_letter(src, &shared, pos, message, "delivery attempts exhausted").await.is_ok() {
                    parked.moved(pos);
                }
            }
            drop(parked);
            if !deliveries.is_empty() {
                self.metrics.messages_out.add(&[&req.group, &req.topic], deliveries.len() as u64);
                return Ok(deliveries);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(Vec::new());
            }
            if more {
                // The pass stopped at its budget with messages left to read: the next one goes
                // on after the other tasks on this thread have had their turn.
                tokio::task::yield_now().await;
                continue;
            }
            let mut wake = deadline;
            if let Some(due) = next_due {
                let wait = Duration::from_millis(due.saturating_sub(now_ms()).max(0) as u64);
                wake = wake.min(now + wait);
            }
            tokio::select! {
                _ = topic_rx.changed() => {}
                _ = group_rx.changed() => {}
                _ = tokio::time::sleep_until(wake) => {}
                _ = shutdown.cancelled() => return Ok(Vec::new()),
            }
        }
    }

    /// One pass of the group's state machine ([`GroupTopic::poll`]) over the topic's queues.
    /// Returns deliveries, messages past their attempt limit (to dead-letter), the next due
    /// time, and whether the pass stopped at its budget with more to read.
    ///
    /// [`GroupTopic::poll`]: super::state::GroupTopic::poll
    async fn poll_once(
        &self,
        log: &MessageLog,
        shared: &Shared,
        record: &TopicRecord,
        serve: &[u32],
        req: &ReceiveRequest<'_>,
    ) -> Result<(Vec<Delivery>, Vec<(Pos, StoredMessage)>, Option<Millis>, bool)> {
        let slot = self.committer.reserve().await?;
        let now = now_ms();
        let invisible_ms = if req.auto_renew { AUTO_RENEW_INVISIBLE_MS } else { req.invisible.as_millis() as Millis };
        let topic = req.topic.as_str();
        let mut queues: Vec<_> = serve.iter().filter_map(|q| log.offsets(topic, *q)).collect();
        let accept = |m: &StoredMessage| req.filter.matches(&m.msg);
        let lite = record.topic_type == TopicType::Lite;
        // A LITE topic's queues are few per consumer: a sorted list is the cheapest lookup.
        let serving: Vec<u32> = if lite {
            let mut v = serve.to_vec();
            v.sort_unstable();
            v
        } else {
            Vec::new()
        };
        let serves = |q: u32| !lite || serving.binary_search(&q).is_ok();
        let rules = PollRules {
            now,
            batch: req.batch,
            max_bytes: MAX_BATCH_BYTES,
            max_attempts: self.settings.max_delivery_attempts,
            invisible_ms,
            auto_renew: req.auto_renew,
            renew_ms: AUTO_RENEW_INVISIBLE_MS,
            renew_limit_ms: AUTO_RENEW_LIMIT_MS,
            client: &req.client,
            // A lite topic is a mailbox: a group reads it from its oldest message.
            start: if lite { StartAt::Earliest } else { self.settings.new_group_start },
            alive: req.alive,
            accept: &accept,
            serves: &serves,
        };
        let mut batch = Batch::new();
        // New messages are read queue by queue: from a rotating start, so that every queue gets
        // its turn, or, on a PRIORITY topic, highest queue (priority) first.
        let rotate = if record.topic_type == TopicType::Priority {
            queues.reverse();
            0
        } else {
            (now as u64 % queues.len().max(1) as u64) as usize
        };
        let (poll, next_due) = {
            let mut st = crate::sync::lock(&shared.state);
            if st.filter.as_ref() != Some(&req.filter) {
                st.filter = Some(req.filter.clone());
            }
            let poll = st.poll(&rules, &queues, rotate, |(q, o)| log.read(topic, q, o), next_nonce, &mut batch)?;
            // The delivery records are queued for the next group commit, but the messages go
            // out without waiting for it: if the broker dies first, the records are lost and
            // the messages are simply delivered again (at least once), with the old receipt
            // handles refused. An ack or invisibility change of these deliveries is queued
            // after them, so it is never durable before the delivery it refers to.
            if !batch.is_empty() {
                slot.submit_unawaited(batch);
            }
            (poll, st.next_due_in(&serves))
        };
        for (queue, from, to) in &poll.skipped {
            tracing::warn!(group = req.group, topic, queue, from, to, "group is behind retention; skipping ahead");
        }
        let deliveries = poll
            .deliveries
            .into_iter()
            .map(|(pos, message, rec)| Delivery {
                handle: handle::encode(pos, rec.nonce),
                attempt: rec.attempt,
                invisible_ms,
                message,
            })
            .collect();
        Ok((deliveries, poll.dead, next_due, poll.more))
    }

    /// Moves a message that used up its attempts to `%DLQ%<group>` and forgets it for the group.
    /// The message must be parked (out of the due index) by the caller, under a [`Parked`]
    /// that makes it due again if the move does not succeed. A failure is counted and logged.
    async fn dead_letter(
        &self,
        src: Source<'_>,
        shared: &Shared,
        pos: Pos,
        message: StoredMessage,
        why: &str,
    ) -> Result<()> {
        let result = self.move_to_dead_letters(src, shared, pos, &message, why).await;
        if let Err(e) = &result {
            let group = crate::sync::lock(&shared.state).group.clone();
            self.metrics.dead_letter_failures.add(&[&group], 1);
            tracing::error!(
                group,
                message_id = message.msg.message_id,
                error = %e,
                "cannot move a message to the dead-letter topic; will retry"
            );
        }
        result
    }

    /// The dead-letter move itself. Idempotent: the copy is filed under its message id and
    /// origin topic, so a repeat after a crash or a lost reply stores nothing new. The copy
    /// carries why it was moved and after how many deliveries ([`DLQ_REASON`],
    /// [`DLQ_ATTEMPTS`]).
    async fn move_to_dead_letters(
        &self,
        src: Source<'_>,
        shared: &Shared,
        pos: Pos,
        message: &StoredMessage,
        why: &str,
    ) -> Result<()> {
        let (group, topic, attempts) = {
            let st = crate::sync::lock(&shared.state);
            (st.group.clone(), st.topic.clone(), st.get(pos).map_or(0, |r| r.attempt))
        };
        let dlq_topic = src.dead_letter_topic(&group).await?;
        let dlq = dlq_topic.name.clone();
        let mut copy = message.msg.clone();
        copy.origin_topic = Some(copy.origin_topic.take().unwrap_or_else(|| topic.clone()));
        copy.user_properties.insert(DLQ_REASON.into(), why.into());
        copy.user_properties.insert(DLQ_ATTEMPTS.into(), attempts.to_string());
        copy.topic = dlq.clone();
        let placed = src
            .log
            .append(&dlq, Target::Spread(dlq_topic.queue_count), vec![copy], &message.producer, now_ms(), Batch::new())
            .await?;
        let slot = self.committer.reserve().await?;
        let pending = {
            let mut st = crate::sync::lock(&shared.state);
            let mut batch = Batch::new();
            st.remove(pos, &mut batch);
            // Dead again after a resend: the existing copy is the record again, no longer resent.
            for p in placed.iter().filter(|p| p.duplicate) {
                batch.delete(&Key::DeadLetterResent { topic: dlq.clone(), queue: p.queue, offset: p.offset });
            }
            slot.submit(batch, None)
        };
        pending.durable().await?;
        shared.wake();
        self.metrics.dead_letters.add(&[&group, &topic], 1);
        tracing::warn!(group, topic, message_id = message.msg.message_id, "message dead-lettered to {dlq}");
        Ok(())
    }

    /// Whether the message at `pos` of `topic` already sits in `group`'s dead-letter topic.
    pub(super) fn already_dead_lettered(log: &MessageLog, group: &str, topic: &str, pos: Pos) -> Result<bool> {
        let Some(message) = log.read(topic, pos.0, pos.1)? else { return Ok(false) };
        let id = dead_letter_index_id(&message.msg.message_id, topic);
        Ok(log.locate(&format!("{DLQ_PREFIX}{group}"), &id)?.is_some())
    }

    fn shared_for(&self, group: &str, topic: &str) -> Result<Arc<Shared>> {
        self.groups.get(group, topic).ok_or_else(|| {
            BrokerError::InvalidReceiptHandle(format!("group {group} has received nothing from {topic}"))
        })
    }

    /// Acknowledges deliveries; one result per `(message id, handle)`, in order.
    pub async fn ack(&self, group: &str, topic: &str, handles: &[String]) -> Result<Vec<Result<()>>> {
        let shared = self.shared_for(group, topic)?;
        let slot = self.committer.reserve().await?;
        let mut results = Vec::with_capacity(handles.len());
        let pending = {
            let mut st = crate::sync::lock(&shared.state);
            let mut batch = Batch::new();
            for h in handles {
                results.push(match handle::decode(h) {
                    None => Err(BrokerError::InvalidReceiptHandle(format!("{h:?} is not a receipt handle"))),
                    Some((pos, nonce)) => st.ack(pos, nonce, &mut batch).map_err(invalid_handle),
                });
            }
            (!batch.is_empty()).then(|| slot.submit(batch, None))
        };
        if let Some(p) = pending {
            p.durable().await?;
            shared.wake();
        }
        let acked = results.iter().filter(|r| r.is_ok()).count() as u64;
        self.metrics.acks.add(&[group, topic], acked);
        Ok(results)
    }

    /// Makes a delivery visible again after `invisible` from now; returns its new handle.
    pub async fn change_invisible(
        &self,
        group: &str,
        topic: &str,
        receipt: &str,
        invisible: Duration,
    ) -> Result<String> {
        check_invisible(invisible, Duration::ZERO)?;
        let shared = self.shared_for(group, topic)?;
        let (pos, nonce) = handle::decode(receipt)
            .ok_or_else(|| BrokerError::InvalidReceiptHandle(format!("{receipt:?} is not a receipt handle")))?;
        let slot = self.committer.reserve().await?;
        let new_nonce = next_nonce();
        let pending = {
            let mut st = crate::sync::lock(&shared.state);
            let mut batch = Batch::new();
            let visible_at = now_ms() + invisible.as_millis() as Millis;
            st.change_invisible(pos, nonce, visible_at, new_nonce, &mut batch).map_err(invalid_handle)?;
            slot.submit(batch, None)
        };
        pending.durable().await?;
        shared.wake();
        Ok(handle::encode(pos, new_nonce))
    }

    /// Moves a delivered message to the group's dead-letter topic now (consumer's decision).
    pub async fn forward_to_dead_letter(&self, src: Source<'_>, group: &str, topic: &str, receipt: &str) -> Result<()> {
        let shared = self.shared_for(group, topic)?;
        let (pos, nonce) = handle::decode(receipt)
            .ok_or_else(|| BrokerError::InvalidReceiptHandle(format!("{receipt:?} is not a receipt handle")))?;
        let checked = {
            let mut st = crate::sync::lock(&shared.state);
            match st.check(pos, nonce) {
                Ok(_) => Ok(st.park(pos)),
                Err(e) => Err(e),
            }
        };
        let parked_from = match checked {
            Ok(at) => at,
            // A retry after a lost reply: the first call moved it already.
            Err(HandleError::NotInFlight) if Self::already_dead_lettered(src.log, group, topic, pos)? => return Ok(()),
            Err(e) => return Err(invalid_handle(e)),
        };
        let Some(message) = src.log.read(topic, pos.0, pos.1)? else {
            let slot = self.committer.reserve().await?;
            let pending = {
                let mut st = crate::sync::lock(&shared.state);
                let mut batch = Batch::new();
                st.remove(pos, &mut batch);
                slot.submit(batch, None)
            };
            return pending.durable().await.map_err(Into::into);
        };
        // Failed or cancelled, the message is back where it was: the consumer gets the error
        // (or nothing) and may retry with the same handle.
        let mut parked = Parked::new(&shared, vec![pos]);
        parked.due = parked_from;
        let result = self.move_to_dead_letters(src, &shared, pos, &message, "forwarded by the consumer").await;
        if result.is_ok() {
            parked.moved(pos);
        }
        result
    }
}

/// Messages parked for a dead-letter move (out of the due index). Those not [`Parked::moved`]
/// when it is dropped (their move failed, or the call was cancelled at an await) are due again:
/// at `due`, else after [`DEAD_LETTER_RETRY_MS`], when a later poll retries the move (a FIFO
/// group waits behind it, as it must, but not until a restart).
struct Parked<'a> {
    shared: &'a Shared,
    left: Vec<Pos>,
    due: Option<Millis>,
}

impl<'a> Parked<'a> {
    fn new(shared: &'a Shared, left: Vec<Pos>) -> Self {
        Parked { shared, left, due: None }
    }

    fn moved(&mut self, pos: Pos) {
        self.left.retain(|p| *p != pos);
    }
}

impl Drop for Parked<'_> {
    fn drop(&mut self) {
        if self.left.is_empty() {
            return;
        }
        let due = self.due.unwrap_or_else(|| now_ms() + DEAD_LETTER_RETRY_MS);
        let mut st = crate::sync::lock(&self.shared.state);
        for pos in self.left.drain(..) {
            st.unpark(pos, due);
        }
        drop(st);
        self.shared.wake();
    }
}

/// Lite consumers (see `consume::lite`).
impl Consumers {
    /// Applies a lite consumer's SyncLiteSubscription. The topic must be a LITE topic; the group
    /// is created on first use. With `start`, the group's position in each lite topic the call
    /// adds (that exists) moves there, durably. Returns the subscriptions other consumers lost
    /// to this one (exclusive mode), to be told to them.
    #[allow(clippy::too_many_arguments)]
    pub async fn sync_lite(
        &self,
        src: Source<'_>,
        client: &str,
        group: &str,
        topic: &str,
        action: SyncAction,
        lites: &[String],
        version: Option<i64>,
        start: Option<LiteStart>,
    ) -> Result<Vec<Evicted>> {
        let record = src.topics.get(topic).ok_or_else(|| BrokerError::TopicNotFound(topic.into()))?;
        if record.topic_type != TopicType::Lite {
            return Err(BrokerError::TypeConflict(format!(
                "topic {topic} is {}, not LITE: it has no lite topics",
                record.topic_type.as_str()
            )));
        }
        for lite in lites {
            topics::validate_lite_name(lite)?;
        }
        self.ensure_group(group).await?;
        let before = self.lite.subscribed(client, group, topic);
        let evicted = self.lite.sync(client, group, topic, action, lites, version)?;
        // A receive of this consumer waiting now reads its new set.
        if let Some(shared) = self.groups.get(group, topic) {
            shared.wake();
        }
        let Some(start) = start.filter(|_| matches!(action, SyncAction::PartialAdd | SyncAction::CompleteAdd)) else {
            return Ok(evicted);
        };
        let shared = self.groups.get_or_create(group, topic)?;
        let slot = self.committer.reserve().await?;
        let pending = {
            let mut st = crate::sync::lock(&shared.state);
            let mut batch = Batch::new();
            for lite in lites.iter().filter(|l| !before.contains(l)) {
                let Some(q) = src.topics.lite_queue(topic, lite) else { continue };
                let Some(o) = src.log.offsets(topic, q) else { continue };
                let at = match start {
                    LiteStart::Oldest => o.min,
                    LiteStart::End => o.durable,
                    LiteStart::Offset(n) => n.clamp(o.min, o.durable),
                    LiteStart::Tail(n) => o.durable.saturating_sub(n).max(o.min),
                };
                st.reset_cursor(q, at, &mut batch);
            }
            slot.submit(batch, None)
        };
        pending.durable().await?;
        shared.wake();
        Ok(evicted)
    }

    /// The queues of the lite topics a lite consumer subscribes to now (those that exist).
    fn lite_queues(&self, src: Source<'_>, req: &ReceiveRequest<'_>) -> Vec<u32> {
        let names = self.lite.subscribed(&req.client, &req.group, &req.topic);
        names.iter().filter_map(|l| src.topics.lite_queue(&req.topic, l)).collect()
    }

    /// What each lite consumer of `group` subscribes to.
    pub fn lite_subscriptions(&self, group: &str) -> Vec<SubscriptionView> {
        self.lite.of_group(group)
    }

    /// A group's next never-delivered offset in one queue, if it read the queue.
    pub fn cursor(&self, group: &str, topic: &str, queue: u32) -> Option<u64> {
        let shared = self.groups.get(group, topic)?;
        let st = crate::sync::lock(&shared.state);
        st.cursor(queue)
    }

    /// Forgets a client's lite subscription (it terminated).
    pub fn forget_client(&self, client: &str) {
        self.lite.forget(client);
    }
}
